//! `kakehashi-agent`: the desk PC's agent.

use std::path::PathBuf;

use clap::error::ErrorKind;
use clap::{CommandFactory as _, Parser, Subcommand};
use tokio_util::sync::CancellationToken;

#[derive(Parser, Debug)]
#[command(
    name = "kakehashi-agent",
    version,
    about = "Kakehashi desk agent (架け橋 エージェント)"
)]
struct Cli {
    /// Log as JSON lines.
    #[arg(long, global = true)]
    log_json: bool,
    /// Configuration file (TOML; see deploy/agent.example.toml). Before or
    /// after the command.
    #[arg(long, global = true, env = "KAKEHASHI_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Dial the configured gateways and serve sessions until stopped (`--config`).
    Run,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    kakehashi_transport::init_tracing(cli.log_json);
    let Cmd::Run = cli.cmd;
    let Some(config) = cli.config else {
        Cli::command()
            .error(
                ErrorKind::MissingRequiredArgument,
                "the following required arguments were not provided:\n  --config <FILE> (or KAKEHASHI_CONFIG)",
            )
            .exit()
    };
    let agent = match kakehashi_agent::Config::load(&config).and_then(kakehashi_agent::Agent::new) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e:#}");
            return std::process::ExitCode::FAILURE;
        }
    };
    println!("agent for desk {}", agent.desk());
    let stop = CancellationToken::new();
    let s2 = stop.clone();
    tokio::spawn(async move {
        kakehashi_transport::shutdown_signal().await;
        s2.cancel();
    });
    agent.run(stop).await;
    std::process::ExitCode::SUCCESS
}
