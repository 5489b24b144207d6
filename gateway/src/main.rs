//! `kakehashi-gateway`: run the gateway, or a complete demo on loopback.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

#[derive(Parser, Debug)]
#[command(
    name = "kakehashi-gateway",
    version,
    about = "Kakehashi gateway (架け橋 ゲートウェイ)"
)]
struct Cli {
    /// Log as JSON lines.
    #[arg(long, global = true)]
    log_json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run the gateway with a configuration file.
    Run {
        /// Configuration file (TOML); see deploy/gateway.example.toml.
        #[arg(long)]
        config: PathBuf,
    },
    /// Run a complete demo on loopback: throw-away CA, gateway, agent and a
    /// demo desk, and print what to run next.
    Demo {
        /// Directory for the demo's certificates and configuration files.
        #[arg(long, default_value = "kakehashi-demo")]
        dir: PathBuf,
        /// Make the demo desk a real RDP server (freerdp-shadow-cli on Xvfb, NLA)
        /// whose sessions the agent filters; prints the `connect --launch` line.
        #[arg(long)]
        rdp: bool,
    },
    /// Administration on the gateway's store: users, enrollment codes, devices.
    Admin {
        /// The gateway's configuration file (its [store] is used).
        #[arg(long)]
        config: PathBuf,
        #[command(subcommand)]
        cmd: kakehashi_gateway::admin_cli::AdminCmd,
    },
    /// The audit log.
    Audit {
        #[command(subcommand)]
        cmd: AuditCmd,
    },
}

#[derive(Subcommand, Debug)]
enum AuditCmd {
    /// Walk the hash chain; exit 1 and name the first broken record if any.
    Verify {
        /// The gateway's configuration file (its [store] is used).
        #[arg(long)]
        config: PathBuf,
    },
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    kakehashi_transport::init_tracing(cli.log_json);
    match run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.cmd {
        Cmd::Run { config } => {
            let cfg = kakehashi_gateway::Config::load(&config)?;
            let gw = kakehashi_gateway::Gateway::bind(cfg)
                .await
                .context("cannot start the gateway")?;
            let a = gw.addrs();
            for (what, addr) in [
                ("terminal-quic", a.terminal_quic),
                ("terminal-tcp", a.terminal_tcp),
                ("agent-quic", a.agent_quic),
                ("agent-tcp", a.agent_tcp),
                ("admin", a.admin),
                ("portal", a.portal),
            ] {
                if let Some(addr) = addr {
                    println!("listening {what} {addr}");
                }
            }
            let stop = CancellationToken::new();
            let s2 = stop.clone();
            tokio::spawn(async move {
                kakehashi_gateway::shutdown_signal().await;
                s2.cancel();
            });
            gw.serve(stop).await
        }
        Cmd::Admin { config, cmd } => {
            let cfg = kakehashi_gateway::Config::load(&config)?;
            kakehashi_gateway::admin_cli::run(&cfg, cmd).await
        }
        Cmd::Audit {
            cmd: AuditCmd::Verify { config },
        } => {
            let cfg = kakehashi_gateway::Config::load(&config)?;
            if kakehashi_gateway::admin_cli::verify(&cfg).await? {
                Ok(())
            } else {
                anyhow::bail!("the audit log has been tampered with (see above)")
            }
        }
        Cmd::Demo { dir, rdp } => kakehashi_gateway::demo::run(&dir, rdp).await,
    }
}
