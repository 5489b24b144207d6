//! `kakehashi-gateway`: run the gateway, and the administration commands
//! on its store. The demo is its own program, `kakehashi-demo`.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::error::ErrorKind;
use clap::{CommandFactory as _, Parser, Subcommand};
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
    /// The gateway's configuration file (TOML; see
    /// deploy/gateway.example.toml): for `run`, and the [store] of the
    /// commands on it. Before or after the command.
    #[arg(long, global = true, env = "KAKEHASHI_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run the gateway with a configuration file (`--config`).
    Run,
    /// Moved: the demo is `kakehashi-demo` (`cargo run --release -p kakehashi-demo`).
    #[command(hide = true)]
    Demo {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
        args: Vec<String>,
    },
    /// The access policy: print the default, check a file, explain a
    /// decision (offline or live), import, export, history.
    Policy {
        #[command(subcommand)]
        cmd: kakehashi_gateway::cli::policy::PolicyCmd,
    },
    /// BCP mode (snow day, pandemic): declare, end, list.
    Bcp {
        #[command(subcommand)]
        cmd: kakehashi_gateway::cli::bcp::BcpCmd,
    },
    /// Administration on the gateway's store: users, enrollment codes,
    /// devices, desks, telework plans.
    Admin {
        #[command(subcommand)]
        cmd: kakehashi_gateway::cli::admin::AdminCmd,
    },
    /// The audit log.
    Audit {
        #[command(subcommand)]
        cmd: AuditCmd,
    },
    /// The gateways sharing this store: members, sessions, agents, feed lag.
    Cluster {
        #[command(subcommand)]
        cmd: kakehashi_gateway::cli::cluster::ClusterCmd,
    },
    /// Reports for section chiefs (attendance).
    Report {
        #[command(subcommand)]
        cmd: kakehashi_gateway::cli::report::ReportCmd,
    },
}

#[derive(Subcommand, Debug)]
enum AuditCmd {
    /// Walk the hash chain; exit 1 and name the first broken record if any.
    /// With --file, verify exported JSON-lines files offline instead.
    /// One of --config (the gateway's store) and --file.
    Verify {
        /// An `audit export --format jsonl` file; repeat for consecutive exports, in order.
        #[arg(long)]
        file: Vec<PathBuf>,
        /// With --file: the hash the last record must have (printed by `audit export`).
        #[arg(long, requires = "file")]
        last_hash: Option<String>,
        /// With --config: the checkpoint public key (`audit-checkpoint.pub`) to
        /// check the signed checkpoints with, instead of the gateway's key
        /// file; repeat for several gateways.
        #[arg(long)]
        checkpoint_key: Vec<PathBuf>,
        /// With --config: the checkpoint file to check against, instead of
        /// the configured one (e.g. a copy kept off the host).
        #[arg(long)]
        checkpoints: Option<PathBuf>,
    },
    /// Write the audit log (or a time window of it) as JSON lines or CSV.
    Export(kakehashi_gateway::cli::audit::ExportArgs),
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    kakehashi_transport::init_tracing(cli.log_json);
    let log_json = cli.log_json;
    match run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) if log_json => {
            eprintln!(
                "{}",
                serde_json::json!({ "level": "ERROR", "fields": { "message": "Exiting on error", "error": format!("{e:#}") } })
            );
            std::process::ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Exits with a usage error, as clap does for the arguments it checks itself.
fn usage(kind: ErrorKind, msg: &str) -> ! {
    Cli::command().error(kind, msg).exit()
}

/// The configuration file a command needs: `--config` (before or after the
/// command) or `KAKEHASHI_CONFIG`.
fn need_config(config: Option<&Path>) -> &Path {
    config.unwrap_or_else(|| {
        usage(
            ErrorKind::MissingRequiredArgument,
            "the following required arguments were not provided:\n  --config <FILE> (or KAKEHASHI_CONFIG)",
        )
    })
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let config = cli.config.as_deref();
    match cli.cmd {
        Cmd::Run => {
            let cfg = kakehashi_gateway::Config::load(need_config(config))?;
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
                match addr {
                    // Under --log-json every line of output is JSON (journald mixes stdout in).
                    // (Fixed key order: tests and scripts match the prefix.)
                    Some(addr) if cli.log_json => {
                        println!(r#"{{"listening":"{what}","address":"{addr}"}}"#)
                    }
                    Some(addr) => println!("listening {what} {addr}"),
                    None => {}
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
        Cmd::Policy { cmd } => {
            use kakehashi_gateway::cli::policy::PolicyCmd;
            if cmd.needs_config() {
                need_config(config);
            }
            if let PolicyCmd::Explain(e) = &cmd {
                if let Some(msg) = e.usage_error(config.is_some()) {
                    usage(ErrorKind::ArgumentConflict, msg);
                }
            }
            if kakehashi_gateway::cli::policy::run(cmd, config).await? {
                Ok(())
            } else {
                anyhow::bail!("the policy has errors (see above)")
            }
        }
        Cmd::Bcp { cmd } => kakehashi_gateway::cli::bcp::run(need_config(config), cmd).await,
        Cmd::Admin { cmd } => kakehashi_gateway::cli::admin::run(need_config(config), cmd).await,
        Cmd::Cluster { cmd } => {
            kakehashi_gateway::cli::cluster::run(need_config(config), cmd).await
        }
        Cmd::Audit {
            cmd:
                AuditCmd::Verify {
                    file,
                    last_hash,
                    checkpoint_key,
                    checkpoints,
                },
        } => match config {
            // What the argument group `--config | --file` checked when
            // `--config` was an argument of `verify`.
            Some(_) if !file.is_empty() => usage(
                ErrorKind::ArgumentConflict,
                "the argument '--config <FILE>' (also from KAKEHASHI_CONFIG) cannot be used with '--file <FILE>'",
            ),
            Some(config) => {
                if kakehashi_gateway::cli::audit::verify_store_cmd(
                    config,
                    &checkpoint_key,
                    checkpoints.as_deref(),
                )
                .await?
                {
                    Ok(())
                } else {
                    anyhow::bail!("the audit log has been tampered with (see above)")
                }
            }
            None if file.is_empty() => usage(
                ErrorKind::MissingRequiredArgument,
                "the following required arguments were not provided:\n  <--config <FILE>|--file <FILE>>",
            ),
            None if !checkpoint_key.is_empty() || checkpoints.is_some() => usage(
                ErrorKind::MissingRequiredArgument,
                "--checkpoint-key and --checkpoints need '--config <FILE>'",
            ),
            None => {
                if kakehashi_gateway::cli::audit::verify_files_cmd(&file, last_hash.as_deref())? {
                    Ok(())
                } else {
                    anyhow::bail!("the exported audit log has been tampered with (see above)")
                }
            }
        },
        Cmd::Audit {
            cmd: AuditCmd::Export(a),
        } => kakehashi_gateway::cli::audit::export_cmd(need_config(config), a).await,
        Cmd::Report { cmd } => {
            kakehashi_gateway::cli::report::run(need_config(config), cmd).await
        }
        Cmd::Demo { .. } => anyhow::bail!(
            "the demo is its own program now: run `kakehashi-demo` (from a source tree: `cargo run --release -p kakehashi-demo`); the production gateway does not carry the demo's agent, client and software authenticator"
        ),
    }
}
