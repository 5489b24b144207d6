//! `kakehashi`: the laptop client.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use kakehashi_client::failover::Gateways;
use kakehashi_client::{check_desk, describe, Config, SessionError};
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
    /// Configuration file (default: ~/.config/kakehashi/client.toml). Before
    /// or after the command.
    #[arg(long, global = true, env = "KAKEHASHI_CONFIG", value_name = "FILE")]
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
        /// Start the RDP client (xfreerdp; mstsc on Windows) with redirections
        /// matching the session's controls; stop when it exits.
        #[arg(long, conflicts_with = "stdio")]
        launch: bool,
        /// User name for the RDP client (`--launch`).
        #[arg(long, requires = "launch")]
        rdp_user: Option<String>,
    },
    /// Log in: WebAuthn in the browser (security key, Windows Hello…), then
    /// a login token bound to this laptop, valid for the working day.
    Login {
        /// Print the URL instead of opening a browser.
        #[arg(long)]
        no_browser: bool,
    },
    /// Log out: revoke this laptop's login token at the gateway and forget it.
    Logout,
    /// Show the login token kept on this laptop (who, until when); it is not
    /// checked with the gateway (`connect` says if it was revoked).
    Status,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    kakehashi_transport::init_tracing(false);
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let code = rt.block_on(async {
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
    });
    // A read of standard input still blocked in its thread (`connect
    // --stdio` ended by the gateway) must not hold the exit.
    rt.shutdown_background();
    code
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let path = cli
        .config
        .unwrap_or_else(kakehashi_client::config::default_path);
    let cfg = Config::load(&path)?;
    let stored = kakehashi_client::token::load(&cfg.token_file)?;
    // A token made before this laptop's certificate was renewed is bound to
    // the old certificate: say so rather than let the gateway refuse it.
    let serial = kakehashi_client::token::cert_serial(&cfg.cert);
    let stale = stored
        .as_ref()
        .and_then(|t| t.for_certificate(serial.as_deref()).err());
    let token = stored
        .as_ref()
        .filter(|_| stale.is_none())
        .map(|t| t.token.clone());
    match cli.cmd {
        Cmd::Login { no_browser } => kakehashi_client::login::run(cfg, no_browser).await,
        Cmd::Logout => {
            let Some(t) = stored else {
                println!("ログインしていません / not logged in");
                return Ok(());
            };
            let choice = cfg.transport;
            let file = cfg.token_file.clone();
            match Gateways::establish(cfg, choice).await {
                Ok((gateways, _)) => match gateways.dialer().await.logout(t.token).await {
                    Ok(()) => println!("ログアウトしました / logged out ({})", t.user),
                    Err(e) => eprintln!("warning: the gateway did not confirm the logout: {e}"),
                },
                Err(e) => eprintln!(
                    "warning: gateway unreachable, the token is only forgotten locally: {e}"
                ),
            }
            kakehashi_client::token::remove(&file)
        }
        Cmd::Status => {
            match stored {
                Some(_) if stale.is_some() => {
                    println!("{}", stale.as_ref().map_or("", |s| s.message()))
                }
                // The file says nothing of what the gateway did since (an
                // officer may have revoked the login, or blocked the laptop).
                Some(t) if t.expires_at > kakehashi_transport::unix_now() => println!(
                    "ログイン情報あり (ゲートウェイでは未確認): {} (有効期限 {}) / login token present (not checked with the gateway): {} (until {}); `kakehashi connect` reports a revoked login (token_revoked)",
                    t.user,
                    kakehashi_client::login::local_time(t.expires_at),
                    t.user,
                    kakehashi_client::login::local_time(t.expires_at)
                ),
                Some(t) => println!(
                    "ログインの有効期限切れ / login expired: {} (at {}); run `kakehashi login`",
                    t.user,
                    kakehashi_client::login::local_time(t.expires_at)
                ),
                None => println!("ログインしていません / not logged in; run `kakehashi login`"),
            }
            Ok(())
        }
        Cmd::Connect {
            desk,
            listen,
            transport,
            stdio,
            launch,
            rdp_user,
        } => {
            check_desk(&desk)?;
            if let Some(s) = &stale {
                anyhow::bail!("{}", s.message());
            }
            let choice = transport.unwrap_or(cfg.transport);
            let (gateways, note) = Gateways::establish(cfg, choice).await?;
            if stdio {
                eprintln!("transport: {note}");
                let (mut remote, accepted, dialer) =
                    gateways.session(&desk, token.as_ref()).await?;
                eprintln!("session {} open", accepted.session_id);
                let spliced = stdio_session(&mut remote).await;
                if let Some(r) = dialer.end_reason(&accepted.session_id).await {
                    eprintln!("{}", ended_by_gateway(&r));
                    return Err(SessionError::Refused(r).into());
                }
                spliced?;
                return Ok(());
            }
            println!("transport: {note}");
            let gateways = Arc::new(gateways);
            let listener = match (launch, listen.port()) {
                // A stable port per desk, so the RDP client's trust on first use holds.
                (true, 0) => {
                    let stable =
                        SocketAddr::new(listen.ip(), kakehashi_client::launch::stable_port(&desk));
                    match TcpListener::bind(stable).await {
                        Ok(l) => Ok(l),
                        Err(_) => TcpListener::bind(listen).await,
                    }
                }
                _ => TcpListener::bind(listen).await,
            }
            .map_err(|e| anyhow::anyhow!("cannot listen on {listen}: {e}"))?;
            let local_addr = listener.local_addr()?;
            println!("listening on {local_addr}");
            // --launch: open the first session now, so its controls shape the RDP
            // client's arguments, then hand it to the RDP client's first connection.
            let mut first = None;
            let mut rdp_client = None;
            if launch {
                let (remote, accepted, dialer) = gateways.session(&desk, token.as_ref()).await?;
                println!(
                    "session {} open; controls: {:?}",
                    accepted.session_id, accepted.controls
                );
                let child = kakehashi_client::launch::spawn(
                    local_addr.port(),
                    accepted.controls,
                    rdp_user.as_deref(),
                    &std::env::temp_dir(),
                )?;
                println!("rdp client started (pid {})", child.id().unwrap_or(0));
                first = Some((remote, accepted, dialer));
                rdp_client = Some(child);
            } else {
                println!(
                    "(point your RDP client or any TCP client at that address; Ctrl-C to stop)"
                );
            }
            loop {
                let (mut local, peer) = tokio::select! {
                    r = listener.accept() => match r {
                        Ok(x) => x,
                        Err(e) => { warn!(error = %e, "Accept failed"); tokio::time::sleep(std::time::Duration::from_millis(100)).await; continue }
                    },
                    status = child_exit(&mut rdp_client) => {
                        println!("rdp client exited ({status})");
                        return Ok(());
                    }
                    _ = kakehashi_transport::shutdown_signal() => return Ok(()),
                };
                let _ = local.set_nodelay(true);
                let gateways = gateways.clone();
                let desk = desk.clone();
                let token = token.clone();
                let ready = first.take();
                tokio::spawn(async move {
                    let opened = match ready {
                        Some(s) => Ok(s),
                        None => gateways.session(&desk, token.as_ref()).await,
                    };
                    match opened {
                        Ok((mut remote, accepted, dialer)) => {
                            info!(session = %accepted.session_id, %peer, "Session open");
                            match splice(&mut local, &mut remote).await {
                                Ok((up, down)) => {
                                    info!(session = %accepted.session_id, bytes_up = up, bytes_down = down, "Session closed")
                                }
                                Err(e) => {
                                    info!(session = %accepted.session_id, error = %e, "Session ended")
                                }
                            }
                            if let Some(r) = dialer.end_reason(&accepted.session_id).await {
                                eprintln!("{}", ended_by_gateway(&r));
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

/// What the person reads when the gateway ended their session.
fn ended_by_gateway(r: &kakehashi_proto::Refusal) -> String {
    format!(
        "セッションはゲートウェイにより終了しました / the gateway ended the session:\n{}",
        describe(r)
    )
}

/// Waits for the launched RDP client to exit; never, when there is none.
async fn child_exit(child: &mut Option<tokio::process::Child>) -> String {
    match child {
        Some(c) => match c.wait().await {
            Ok(status) => status.to_string(),
            Err(e) => e.to_string(),
        },
        None => std::future::pending().await,
    }
}

/// `connect --stdio`: standard input to the desk and the desk to standard
/// output, until the desk's side ends. The end of standard input is passed
/// on (a write shutdown) and the desk may still answer; but when the gateway
/// ends the session (or the desk closes), this ends at once, even while
/// standard input stays open: a session never outlives its stream.
async fn stdio_session(remote: &mut kakehashi_transport::BoxIo) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt as _;
    let (mut from_desk, mut to_desk) = tokio::io::split(remote);
    let mut stdout = tokio::io::stdout();
    let down = async {
        tokio::io::copy(&mut from_desk, &mut stdout).await?;
        stdout.flush().await
    };
    let up = async {
        tokio::io::copy(&mut tokio::io::stdin(), &mut to_desk).await?;
        to_desk.shutdown().await?;
        // Standard input is done: wait for the desk's side.
        std::future::pending::<std::io::Result<()>>().await
    };
    tokio::select! {
        r = down => r,
        r = up => r,
    }
}
