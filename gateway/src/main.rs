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
        Cmd::Demo { dir } => kakehashi_gateway::demo::run(&dir).await,
    }
}
