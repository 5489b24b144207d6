//! `kakehashi-gateway policy …`: print the default policy, check a file,
//! explain a decision (offline or live against the store), import, export and
//! list the versions.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use clap::Subcommand;
use kakehashi_policy as pol;
use kakehashi_store::Audit;
use serde_json::json;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::{actor, local, open_store, parse_time};

/// `policy …`
#[derive(Subcommand, Debug)]
pub enum PolicyCmd {
    /// Print the shipped default policy as commented TOML, to start from.
    Default,
    /// Check a policy file; every error with its line and field.
    Check {
        /// The policy file.
        file: PathBuf,
    },
    /// What would be decided, and why: every rule considered.
    /// Offline: `--policy FILE --level N --class C --segment S --at T`.
    /// Live: `--config F --user U --device D --desk K` (the store's facts);
    /// live whenever a configuration is given (`--config` or `KAKEHASHI_CONFIG`).
    Explain(Box<ExplainCli>),
    /// Put a policy file in force (validated first; audited).
    Import {
        /// The policy file.
        file: PathBuf,
        /// Why (kept in the audit log).
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Print the policy in force (or an earlier version).
    Export {
        /// A version from `policy history`.
        #[arg(long)]
        version: Option<i64>,
    },
    /// List the saved versions: who saved each, and when.
    History,
}

/// `policy explain` arguments.
#[derive(clap::Args, Debug)]
pub struct ExplainCli {
    /// Offline: the policy file to evaluate (not with `--config`).
    #[arg(long)]
    policy: Option<PathBuf>,
    /// Offline: confidentiality level 1, 2 or 3.
    #[arg(long)]
    level: Option<String>,
    /// Offline: terminal class home, mobile or satellite.
    #[arg(long)]
    class: Option<String>,
    /// Offline: segment lgwan, internet or mynumber.
    #[arg(long, default_value = "lgwan")]
    segment: String,
    /// When, RFC 3339 (default: now).
    #[arg(long)]
    at: Option<String>,
    /// Offline: approved or none.
    #[arg(long, default_value = "none")]
    plan: String,
    /// Offline: a BCP declaration for everyone with the default relaxation.
    #[arg(long)]
    bcp: bool,
    /// Offline: the department of the desk and the person.
    #[arg(long)]
    dept: Option<String>,
    /// Offline: minutes since the multi-factor login (default 0).
    #[arg(long)]
    mfa_age: Option<u64>,
    /// Live (with `--config`): user id.
    #[arg(long)]
    user: Option<String>,
    /// Live (with `--config`): device id.
    #[arg(long)]
    device: Option<String>,
    /// Live (with `--config`): desk id.
    #[arg(long)]
    desk: Option<String>,
    /// Live: count the request as having made a step-up assertion.
    #[arg(long)]
    step_up: bool,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

impl PolicyCmd {
    /// Whether the command works on the gateway's store, so needs `--config`.
    pub fn needs_config(&self) -> bool {
        matches!(
            self,
            Self::Import { .. } | Self::Export { .. } | Self::History
        )
    }
}

impl ExplainCli {
    /// What is wrong with these arguments, given whether a configuration is
    /// given (which makes the explanation live): what clap checked when
    /// `--config` was an argument of `explain`.
    pub fn usage_error(&self, config: bool) -> Option<&'static str> {
        if config && self.policy.is_some() {
            return Some("the argument '--policy <POLICY>' cannot be used with '--config <FILE>' (also from KAKEHASHI_CONFIG)");
        }
        if !config && (self.user.is_some() || self.device.is_some() || self.desk.is_some()) {
            return Some("the arguments '--user', '--device' and '--desk' need '--config <FILE>'");
        }
        None
    }
}

/// Run a `policy` command; `config` is the gateway's configuration file
/// (needed by import, export and history; it makes `explain` live).
/// Returns whether the policy (file) is without errors.
pub async fn run(cmd: PolicyCmd, config: Option<&Path>) -> anyhow::Result<bool> {
    let need = || config.context("--config <FILE> (or KAKEHASHI_CONFIG) is needed");
    match cmd {
        PolicyCmd::Default => {
            print!("{}", pol::default_policy_toml());
            Ok(true)
        }
        PolicyCmd::Check { file } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let (out, ok) = pol::check_cli(&text);
            print!("{out}");
            Ok(ok)
        }
        PolicyCmd::Explain(e) => explain(*e, config).await,
        PolicyCmd::Import { file, reason } => {
            let (_, store) = open_store(need()?).await?;
            let (text, p) = kakehashi_relay::admission::read_policy_file(&file)?;
            let a = Audit::new(kakehashi_store::unix_now(), actor(), "policy.import")
                .subject("policy")
                .reason(&reason)
                .detail(json!({ "file": file.display().to_string(), "rules": p.rules.len() }));
            let doc = store.put_policy(&text, a).await?;
            println!(
                "policy version {} in force ({} rules); running gateways re-decide live sessions within a second",
                doc.version,
                p.rules.len()
            );
            Ok(true)
        }
        PolicyCmd::Export { version } => {
            let (_, store) = open_store(need()?).await?;
            let doc = match version {
                Some(v) => store.policy_version(v).await?,
                None => store.current_policy().await?,
            };
            match doc {
                Some(d) => {
                    print!("{}", d.text);
                    Ok(true)
                }
                None => {
                    bail!("no policy saved yet (a gateway saves the default at its first start)")
                }
            }
        }
        PolicyCmd::History => {
            let (cfg, store) = open_store(need()?).await?;
            let Some(cur) = store.current_policy().await? else {
                println!("no policy saved yet");
                return Ok(true);
            };
            println!("{:<8} {:<26} author", "version", "saved");
            for v in (1..=cur.version).rev() {
                if let Some(d) = store.policy_version(v).await? {
                    println!(
                        "{:<8} {:<26} {}",
                        d.version,
                        local(d.created, cfg.relay.identity.utc_offset_secs),
                        d.author
                    );
                }
            }
            Ok(true)
        }
    }
}

async fn explain(e: ExplainCli, config: Option<&Path>) -> anyhow::Result<bool> {
    if let Some(msg) = e.usage_error(config.is_some()) {
        bail!("{msg}");
    }
    if let Some(config) = config {
        let (Some(user), Some(device), Some(desk)) = (&e.user, &e.device, &e.desk) else {
            bail!("the live form needs --user, --device and --desk");
        };
        let (_, store) = open_store(config).await?;
        let doc = store
            .current_policy()
            .await?
            .context("no policy saved yet")?;
        let policy = kakehashi_relay::admission::parse_policy(&doc.text)?;
        let at = match &e.at {
            Some(t) => parse_time("--at", t)?,
            None => OffsetDateTime::now_utc(),
        };
        let dev = store
            .get_device(device)
            .await?
            .with_context(|| format!("no device {device:?} (it registers at its first login)"))?;
        let class: pol::TerminalClass = dev
            .class
            .as_str()
            .parse()
            .map_err(|e: String| anyhow::anyhow!(e))?;
        // The live request as the gateway would build it; the MFA age is
        // that of the user's newest login token on this device.
        let login_at = store
            .login_tokens_for_user(user)
            .await?
            .into_iter()
            .filter(|t| t.device_id == *device)
            .map(|t| t.issued_at)
            .max();
        let asker = kakehashi_relay::admission::Asker {
            user: user.clone(),
            login_at: login_at.unwrap_or(i64::MIN / 2),
            device: device.clone(),
            class,
            desk: desk.clone(),
            step_up: e.step_up,
        };
        let req = match kakehashi_relay::admission::request(&store, &asker, &policy, at).await {
            Ok((mut req, _)) => {
                if login_at.is_none() {
                    req.mfa_age_secs = None;
                }
                req
            }
            Err(r) => {
                if e.json {
                    println!(
                        "{}",
                        json!({ "allow": false, "reason": r.code, "ja": r.ja, "en": r.en, "controls": null, "limits": null, "rule": null, "policy_version": doc.version })
                    );
                } else {
                    println!("deny {}\n{}\n{}", r.code, r.ja, r.en);
                }
                return Ok(true);
            }
        };
        let ex = pol::explain(&req, &policy, at);
        if e.json {
            let v = match &ex.decision {
                pol::Decision::Allow {
                    rule,
                    controls,
                    limits,
                } => {
                    json!({ "allow": true, "reason": null, "controls": controls, "limits": limits, "rule": rule, "policy_version": doc.version })
                }
                d => {
                    let r = d.refusal();
                    json!({ "allow": false, "reason": r.as_ref().map(|r| r.code.clone()), "controls": null, "limits": null, "rule": r.and_then(|r| r.detail), "policy_version": doc.version })
                }
            };
            println!("{v}");
        } else {
            print!("{}", pol::decision_text(&ex, &policy));
            println!("ポリシー版 / policy version {}", doc.version);
            println!("評価 / Steps:");
            print!("{ex}");
        }
        return Ok(true);
    }
    let (Some(file), Some(level), Some(class)) = (&e.policy, &e.level, &e.class) else {
        bail!("the offline form needs --policy FILE --level N --class C (or use --config with --user --device --desk)");
    };
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let args = pol::ExplainArgs {
        policy_text: text,
        level: level.parse().map_err(|e: String| anyhow::anyhow!(e))?,
        class: class.parse().map_err(|e: String| anyhow::anyhow!(e))?,
        segment: e.segment.parse().map_err(|e: String| anyhow::anyhow!(e))?,
        at: e.at.clone().unwrap_or_else(|| {
            OffsetDateTime::now_utc()
                .format(&Rfc3339)
                .unwrap_or_default()
        }),
        plan: e.plan.parse().map_err(|e: String| anyhow::anyhow!(e))?,
        bcp: e.bcp,
        dept: e.dept.clone(),
        mfa_age_mins: e.mfa_age,
        json: e.json,
    };
    match pol::explain_cli(args) {
        Ok(out) => {
            print!("{out}");
            Ok(true)
        }
        Err(err) => bail!("{err}"),
    }
}
