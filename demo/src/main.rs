//! `kakehashi-demo`: a complete Kakehashi on loopback — a throw-away CA, a
//! gateway with its portal, one desk agent and a demo desk — printing what
//! to open and run next. A separate program so that the production
//! `kakehashi-gateway` links neither the agent, the client nor the
//! software authenticator the demo enrolls with.

mod demo;
mod rdp;

use std::path::PathBuf;

use clap::Parser;

#[derive(Parser, Debug)]
#[command(
    name = "kakehashi-demo",
    version,
    about = "Kakehashi demo on loopback (架け橋 デモ): throw-away CA, gateway, agent and a demo desk"
)]
struct Cli {
    /// Log as JSON lines.
    #[arg(long)]
    log_json: bool,
    /// Directory for the demo's certificates and configuration files.
    #[arg(long, default_value = "kakehashi-demo")]
    dir: PathBuf,
    /// Make the demo desk a real RDP server (freerdp-shadow-cli on Xvfb, NLA)
    /// whose sessions the agent filters; prints the `connect --launch` line.
    #[arg(long)]
    rdp: bool,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    kakehashi_transport::init_tracing(cli.log_json);
    match demo::run(&cli.dir, cli.rdp).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
