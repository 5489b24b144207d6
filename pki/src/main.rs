//! `kakehashi-pki`: command line for the Kakehashi private CA.
//!
//! A thin layer over the `kakehashi_pki` library: parse arguments, call the
//! library, print one English line per result. Errors go to stderr with their
//! whole chain and exit code 1.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, Result};
use clap::{Args, Parser, Subcommand};
use kakehashi_pki::{
    CaDir, InitOptions, IssueRequest, Issued, Record, RevokeReason, Subject, TerminalClass,
    Validity,
};
use time::OffsetDateTime;

/// Private CA for Kakehashi: gateway, agent (desk) and device (terminal) certificates.
#[derive(Debug, Parser)]
#[command(name = "kakehashi-pki", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Where the CA lives, for every subcommand but `init`.
#[derive(Debug, Args)]
struct DirArg {
    /// CA directory.
    #[arg(
        long,
        value_name = "DIR",
        env = "KAKEHASHI_PKI_DIR",
        default_value = "./pki"
    )]
    dir: PathBuf,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create a new CA (and the gateway's ticket signing key) in DIR.
    Init {
        /// Directory to create the CA in.
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// Organization (O) in the CA's name.
        #[arg(long, value_name = "O", default_value = "Kakehashi")]
        org: String,
        /// Common name (CN) of the CA.
        #[arg(long, value_name = "CN", default_value = "Kakehashi Private CA")]
        cn: String,
    },
    /// Issue a certificate and its private key.
    Issue {
        #[command(subcommand)]
        what: IssueCommand,
    },
    /// Revoke a certificate and rewrite the CRL.
    Revoke {
        /// Serial of the certificate (hex, as shown by `list`).
        #[arg(
            long,
            value_name = "S",
            required_unless_present = "cert",
            conflicts_with = "cert"
        )]
        serial: Option<String>,
        /// The certificate file (PEM) to revoke.
        #[arg(long, value_name = "FILE")]
        cert: Option<PathBuf>,
        /// unspecified, key-compromise (or lost, stolen), affiliation-changed,
        /// superseded, cessation-of-operation.
        #[arg(long, value_name = "R")]
        reason: RevokeReason,
        #[command(flatten)]
        dir: DirArg,
    },
    /// A new ticket signing key pair beside the current one, for a key
    /// change with an overlap: `ticket-NAME.key` (gateways) and
    /// `ticket-NAME.pub` (agents). `ticket.key` and `ticket.pub` are left as
    /// they are.
    TicketKey {
        /// Name of the pair, e.g. the date: 2027-04 gives ticket-2027-04.key.
        #[arg(long, value_name = "NAME")]
        name: String,
        #[command(flatten)]
        dir: DirArg,
    },
    /// Rewrite the CRL (run at least weekly: it is valid seven days).
    Crl {
        #[command(flatten)]
        dir: DirArg,
    },
    /// List issued certificates.
    List {
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        dir: DirArg,
    },
}

/// Options shared by every `issue` subcommand.
#[derive(Debug, Args)]
struct IssueOpts {
    /// Validity in days (default: 397 gateway, 730 agent, 365 device).
    #[arg(long, value_name = "N")]
    days: Option<u32>,
    /// Directory to write the certificate and key to (default: the CA directory).
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    #[command(flatten)]
    dir: DirArg,
}

#[derive(Debug, Subcommand)]
enum IssueCommand {
    /// Server certificate for a gateway.
    Gateway {
        /// DNS name clients and agents dial.
        #[arg(long, value_name = "HOST")]
        name: String,
        /// IP address to include (repeatable).
        #[arg(long = "ip", value_name = "ADDR")]
        ips: Vec<IpAddr>,
        #[command(flatten)]
        opts: IssueOpts,
    },
    /// Client certificate for the agent on a desk PC.
    Agent {
        /// Desk id.
        #[arg(long, value_name = "ID")]
        desk: String,
        #[command(flatten)]
        opts: IssueOpts,
    },
    /// Client certificate for a loaned terminal.
    Device {
        /// Device id (asset tag).
        #[arg(long, value_name = "ID")]
        id: String,
        /// Where the terminal is used: home, mobile or satellite.
        #[arg(long, value_name = "CLASS")]
        class: TerminalClass,
        /// Person the terminal is lent to.
        #[arg(long, value_name = "USER")]
        user: Option<String>,
        #[command(flatten)]
        opts: IssueOpts,
    },
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // Usage errors exit 1 like every other error; --help and --version exit 0.
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kakehashi-pki: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn open(dir: &Path) -> Result<CaDir> {
    CaDir::open(dir).with_context(|| format!("cannot open the CA in {}", dir.display()))
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Init { dir, org, cn } => {
            let opts = InitOptions {
                organization: org,
                common_name: cn,
            };
            let ca = CaDir::init(&dir, &opts)
                .with_context(|| format!("cannot create a CA in {}", dir.display()))?;
            println!(
                "created CA \"{}\" (O={}), valid until {}: {}",
                opts.common_name,
                opts.organization,
                ca.ca_not_after().date(),
                ca.ca_cert_path().display()
            );
            println!(
                "ticket signing key for the gateway: {} (public key for agents: {})",
                ca.ticket_key_path().display(),
                ca.ticket_public_path().display()
            );
            println!("empty CRL: {}", ca.crl_path().display());
        }
        Command::Issue { what } => issue(what)?,
        Command::Revoke {
            serial,
            cert,
            reason,
            dir,
        } => {
            let mut ca = open(&dir.dir)?;
            let record = match (serial, cert) {
                (Some(serial), _) => ca
                    .revoke(&serial, reason)
                    .with_context(|| format!("cannot revoke serial {serial}"))?,
                (None, Some(cert)) => ca
                    .revoke_cert_file(&cert, reason)
                    .with_context(|| format!("cannot revoke {}", cert.display()))?,
                (None, None) => anyhow::bail!("give --serial S or --cert FILE"),
            };
            println!(
                "revoked {} {}, serial {} ({reason})",
                record.kind, record.id, record.serial
            );
            let crl = ca.write_crl().context("cannot write the CRL")?;
            println!(
                "CRL #{} rewritten: {} (copy it to every gateway and agent)",
                ca.crl_number(),
                crl.display()
            );
        }
        Command::TicketKey { name, dir } => {
            kakehashi_pki::validate_id("--name", &name)?;
            let ca = open(&dir.dir)?;
            let key = ca.dir().join(format!("ticket-{name}.key"));
            let public = ca.dir().join(format!("ticket-{name}.pub"));
            if key.exists() || public.exists() {
                anyhow::bail!("{} already exists: choose another --name", key.display());
            }
            kakehashi_pki::generate_ticket_key(&key, &public)
                .context("cannot write the ticket key pair")?;
            println!(
                "new ticket signing key: {} (for the gateways, mode 0600); its public key: {} (for the agents)",
                key.display(),
                public.display()
            );
            println!("add the .pub to every agent's [tickets] public_keys first, then give the gateways the .key (admin guide, section 17.3)");
        }
        Command::Crl { dir } => {
            let mut ca = open(&dir.dir)?;
            let crl = ca.write_crl().context("cannot write the CRL")?;
            let revoked = ca.records().iter().filter(|r| r.revoked.is_some()).count();
            println!(
                "CRL #{} with {revoked} revoked certificate(s), valid {} days: {}",
                ca.crl_number(),
                kakehashi_pki::CRL_VALIDITY_DAYS,
                crl.display()
            );
        }
        Command::List { json, dir } => {
            let ca = open(&dir.dir)?;
            if json {
                println!("{}", serde_json::to_string_pretty(ca.records())?);
            } else {
                print!(
                    "{}",
                    table(ca.records(), OffsetDateTime::now_utc().unix_timestamp())
                );
            }
        }
    }
    Ok(())
}

fn issue(what: IssueCommand) -> Result<()> {
    let (subject, opts) = match what {
        IssueCommand::Gateway { name, ips, opts } => (Subject::Gateway { name, ips }, opts),
        IssueCommand::Agent { desk, opts } => (Subject::Agent { desk }, opts),
        IssueCommand::Device {
            id,
            class,
            user,
            opts,
        } => (Subject::Device { id, class, user }, opts),
    };
    let mut ca = open(&opts.dir.dir)?;
    let req = IssueRequest {
        validity: opts.days.map(Validity::Days),
        out_dir: opts.out,
        subject,
    };
    let issued = ca.issue(&req).with_context(|| {
        format!(
            "cannot issue a {} certificate for {}",
            req.subject.kind(),
            req.subject.id()
        )
    })?;
    println!("{}", issued_line(&req.subject, &issued));
    println!(
        "private key: {} (mode 0600; install it with the certificate, never copy it elsewhere)",
        issued.key_path.display()
    );
    Ok(())
}

fn issued_line(subject: &Subject, issued: &Issued) -> String {
    let detail = match subject {
        Subject::Gateway { ips, .. } if !ips.is_empty() => {
            let ips: Vec<String> = ips.iter().map(ToString::to_string).collect();
            format!(" (ip {})", ips.join(", "))
        }
        Subject::Device { class, user, .. } => match user {
            Some(user) => format!(" (class {class}, user {user})"),
            None => format!(" (class {class})"),
        },
        _ => String::new(),
    };
    format!(
        "issued {} {}{detail}, serial {}, valid until {}: {}",
        subject.kind(),
        subject.id(),
        issued.serial,
        issued.not_after.date(),
        issued.cert_path.display()
    )
}

fn status(record: &Record, now: i64) -> String {
    match &record.revoked {
        Some(rev) => format!("revoked ({})", rev.reason),
        None if record.not_after <= now => "expired".to_owned(),
        None => "valid".to_owned(),
    }
}

fn date(unix: i64) -> String {
    OffsetDateTime::from_unix_timestamp(unix)
        .map(|t| t.date().to_string())
        .unwrap_or_else(|_| unix.to_string())
}

/// An aligned table of the records, one line each, with a header.
fn table(records: &[Record], now: i64) -> String {
    if records.is_empty() {
        return "no certificates issued yet\n".to_owned();
    }
    let header = ["SERIAL", "KIND", "ID", "CLASS", "USER", "EXPIRES", "STATUS"].map(String::from);
    let rows: Vec<[String; 7]> = records
        .iter()
        .map(|r| {
            [
                r.serial.clone(),
                r.kind.clone(),
                r.id.clone(),
                r.class.map_or_else(|| "-".to_owned(), |c| c.to_string()),
                r.user.clone().unwrap_or_else(|| "-".to_owned()),
                date(r.not_after),
                status(r, now),
            ]
        })
        .collect();
    let mut widths = header.clone().map(|h| h.len());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(&header).chain(&rows) {
        let cells: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;
    use kakehashi_pki::Revocation;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parses_the_documented_commands() {
        let cli = Cli::try_parse_from([
            "kakehashi-pki",
            "issue",
            "device",
            "--id",
            "LAPTOP-001",
            "--class",
            "home",
            "--dir",
            "/tmp/x",
        ])
        .unwrap();
        assert!(matches!(
            cli.command,
            Command::Issue {
                what: IssueCommand::Device {
                    class: TerminalClass::Home,
                    ..
                }
            }
        ));
        assert!(Cli::try_parse_from([
            "kakehashi-pki",
            "issue",
            "device",
            "--id",
            "X",
            "--class",
            "office"
        ])
        .is_err());
        assert!(Cli::try_parse_from(["kakehashi-pki", "revoke", "--reason", "lost"]).is_err());
        assert!(Cli::try_parse_from([
            "kakehashi-pki",
            "revoke",
            "--serial",
            "01",
            "--cert",
            "a.crt",
            "--reason",
            "lost"
        ])
        .is_err());
        let cli = Cli::try_parse_from([
            "kakehashi-pki",
            "issue",
            "gateway",
            "--name",
            "gw",
            "--ip",
            "192.0.2.1",
            "--ip",
            "::1",
        ])
        .unwrap();
        match cli.command {
            Command::Issue {
                what: IssueCommand::Gateway { ips, .. },
            } => assert_eq!(ips.len(), 2),
            other => panic!("{other:?}"),
        }
        // init needs an explicit --dir.
        assert!(Cli::try_parse_from(["kakehashi-pki", "init"]).is_err());
    }

    #[test]
    fn a_new_ticket_key_goes_beside_the_current_one() {
        let dir = tempfile::tempdir().unwrap();
        let ca_dir = dir.path().join("ca");
        CaDir::init(&ca_dir, &InitOptions::default()).unwrap();
        let before = std::fs::read(ca_dir.join("ticket.key")).unwrap();
        let cmd = |name: &str| {
            run(Cli::try_parse_from([
                "kakehashi-pki",
                "ticket-key",
                "--name",
                name,
                "--dir",
                ca_dir.to_str().unwrap(),
            ])
            .unwrap())
        };
        cmd("2027-04").unwrap();
        let pair =
            kakehashi_pki::load_ticket_signing_key(&ca_dir.join("ticket-2027-04.key")).unwrap();
        let public =
            kakehashi_pki::load_ticket_public_key(&ca_dir.join("ticket-2027-04.pub")).unwrap();
        use ring::signature::KeyPair as _;
        assert_eq!(pair.public_key().as_ref(), public);
        assert_eq!(std::fs::read(ca_dir.join("ticket.key")).unwrap(), before);
        assert!(cmd("2027-04").is_err(), "never overwritten");
        assert!(cmd("a/b").is_err());
    }

    #[test]
    fn table_is_aligned() {
        let records = vec![
            Record {
                serial: "3fa2".into(),
                kind: "device".into(),
                id: "LAPTOP-001".into(),
                class: Some(TerminalClass::Home),
                user: Some("tanaka".into()),
                not_after: 2_000_000_000,
                revoked: None,
            },
            Record {
                serial: "0102030405".into(),
                kind: "agent".into(),
                id: "D1".into(),
                class: None,
                user: None,
                not_after: 1_000,
                revoked: None,
            },
            Record {
                serial: "77".into(),
                kind: "gateway".into(),
                id: "gw".into(),
                class: None,
                user: None,
                not_after: 2_000_000_000,
                revoked: Some(Revocation {
                    at: 5,
                    reason: "superseded".into(),
                }),
            },
        ];
        let text = table(&records, 1_700_000_000);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4);
        let col = lines[0].find("KIND").unwrap();
        assert!(lines
            .iter()
            .skip(1)
            .all(|l| l[col..].starts_with(|c: char| c.is_ascii_lowercase())));
        assert!(lines[1].contains("valid") && lines[1].contains("2033-05-18"));
        assert!(lines[2].ends_with("expired"));
        assert!(lines[3].ends_with("revoked (superseded)"));
    }
}
