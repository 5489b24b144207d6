//! `kakehashi-demo`: a complete Kakehashi on loopback — a throw-away CA, a
//! gateway with its portal, one desk agent and a demo desk — printing what
//! to open and run next. A separate program so that the production
//! `kakehashi-gateway` links neither the agent, the client nor the
//! software authenticator the demo enrolls with. With `--gateways N`, a
//! cluster instead: a throw-away PostgreSQL and N gateway processes on it.

mod cluster;
mod demo;
mod pg;
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
    /// Run a cluster: a throw-away PostgreSQL in DIR/pg and this many
    /// `kakehashi-gateway` processes on it (2–9; the program must be built
    /// next to this one), the agent on all of them, and a client.toml
    /// listing them all. 1 (the default): one gateway in this process, on SQLite.
    #[arg(long, default_value_t = 1, value_name = "N",
          value_parser = clap::value_parser!(u8).range(1..=i64::from(demo::MAX_GATEWAYS)))]
    gateways: u8,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    kakehashi_transport::init_tracing(cli.log_json);
    let result = match cli.gateways {
        1 => demo::run(&cli.dir, cli.rdp).await,
        _ if cli.rdp => Err(anyhow::anyhow!(
            "--rdp runs with one gateway only (not with --gateways) / --rdp は --gateways と併用できません"
        )),
        n => cluster::run(&cli.dir, n).await,
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
