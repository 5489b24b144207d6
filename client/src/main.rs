//! `kakehashi`: the laptop client.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use kakehashi_client::{check_desk, describe, Config, Dialer, SessionError};
use kakehashi_transport::splice::splice;
use kakehashi_transport::TransportChoice;
use tokio::net::TcpListener;
use tracing::{info, warn};

#[derive(Parser, Debug)]
#[command(
    name = "kakehashi",
    version,
    about = "Kakehashi client (架け橋): reach your desk PC from a loaned laptop"
)]
struct Cli {
    /// Configuration file (default: $KAKEHASHI_CONFIG or ~/.config/kakehashi/client.toml).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Open a local port that leads to your desk PC.
    Connect {
        /// The desk id (for example DESK-1234).
        desk: String,
        /// Local address to listen on.
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        /// auto (QUIC, TCP when UDP is blocked), quic or tcp.
        #[arg(long)]
        transport: Option<TransportChoice>,
        /// Carry one session over standard input and output instead of a
        /// local port (like `nc`; status lines go to standard error).
        #[arg(long, conflicts_with = "listen")]
        stdio: bool,
    },
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    kakehashi_transport::init_tracing(false);
    match run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            match e.downcast_ref::<SessionError>() {
                Some(SessionError::Refused(r)) => {
                    eprintln!("接続できません / cannot connect:\n{}", describe(r))
                }
                _ => eprintln!("error: {e:#}"),
            }
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let path = cli
        .config
        .unwrap_or_else(kakehashi_client::config::default_path);
    let cfg = Config::load(&path)?;
    match cli.cmd {
        Cmd::Connect {
            desk,
            listen,
            transport,
            stdio,
        } => {
            check_desk(&desk)?;
            let choice = transport.unwrap_or(cfg.transport);
            let (dialer, note) = Dialer::establish(cfg, choice).await?;
            if stdio {
                eprintln!("transport: {note}");
                let (mut remote, accepted) = dialer.session(&desk).await?;
                eprintln!("session {} open", accepted.session_id);
                let mut local = tokio::io::join(tokio::io::stdin(), tokio::io::stdout());
                splice(&mut local, &mut remote).await?;
                return Ok(());
            }
            println!("transport: {note}");
            let dialer = Arc::new(dialer);
            let listener = TcpListener::bind(listen)
                .await
                .map_err(|e| anyhow::anyhow!("cannot listen on {listen}: {e}"))?;
            println!("listening on {}", listener.local_addr()?);
            println!("(point your RDP client or any TCP client at that address; Ctrl-C to stop)");
            loop {
                let (mut local, peer) = tokio::select! {
                    r = listener.accept() => match r {
                        Ok(x) => x,
                        Err(e) => { warn!(error = %e, "Accept failed"); tokio::time::sleep(std::time::Duration::from_millis(100)).await; continue }
                    },
                    _ = kakehashi_transport::shutdown_signal() => return Ok(()),
                };
                let _ = local.set_nodelay(true);
                let dialer = dialer.clone();
                let desk = desk.clone();
                tokio::spawn(async move {
                    match dialer.session(&desk).await {
                        Ok((mut remote, accepted)) => {
                            info!(session = %accepted.session_id, %peer, "Session open");
                            match splice(&mut local, &mut remote).await {
                                Ok((up, down)) => {
                                    info!(session = %accepted.session_id, bytes_up = up, bytes_down = down, "Session closed")
                                }
                                Err(e) => {
                                    info!(session = %accepted.session_id, error = %e, "Session ended")
                                }
                            }
                        }
                        Err(SessionError::Refused(r)) => {
                            eprintln!("接続できません / cannot connect:\n{}", describe(&r))
                        }
                        Err(e) => eprintln!("error: {e}"),
                    }
                });
            }
        }
    }
}
