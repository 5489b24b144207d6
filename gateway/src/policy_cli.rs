//! What security officers do from the gateway machine: desks and their
//! confidentiality levels (`admin desk`), telework plans (`admin plan`),
//! the access policy (`policy`) and BCP mode (`bcp`). Every change is one
//! store transaction with its audit record (who: the operating-system user;
//! why: `--reason`). A running gateway sees each change in its audit feed
//! within `[policy] watch_ms` and re-decides the live sessions it affects.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use clap::Subcommand;
use kakehashi_policy as pol;
use kakehashi_store::{
    Audit, BcpScope, BcpSpec, Desk, DeskService, PlanSpec, PlanStatus, Segment, Store,
};
use serde_json::json;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::admin_cli::{actor, open};
use crate::config::Config;

/// `admin desk …`
#[derive(Subcommand, Debug)]
pub enum DeskCmd {
    /// Register a desk PC with its confidentiality level, segment, department and owners.
    Add {
        /// Desk id (the agent certificate's desk id, e.g. DESK-1234).
        #[arg(long)]
        id: String,
        /// Confidentiality level (機密性レベル) 1, 2 or 3.
        #[arg(long)]
        level: u8,
        /// Network segment: lgwan, internet or mynumber.
        #[arg(long, default_value = "lgwan")]
        segment: String,
        /// What the desk serves: `rdp` (a desk PC's RDP server; its agent must
        /// enforce session controls, or sessions that restrict anything are
        /// refused with desk_not_enforcing) or `other` (a service that is not
        /// RDP: sessions are admitted without enforcement and audited so).
        #[arg(long, default_value = "rdp")]
        service: String,
        /// Department (所属).
        #[arg(long)]
        dept: String,
        /// Owner user id (repeatable).
        #[arg(long = "owner")]
        owners: Vec<String>,
        /// Why (kept in the audit log).
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Change a desk: live sessions it no longer allows end within a second.
    Set {
        /// Desk id.
        #[arg(long)]
        id: String,
        /// New confidentiality level.
        #[arg(long)]
        level: Option<u8>,
        /// New segment.
        #[arg(long)]
        segment: Option<String>,
        /// New service: `rdp` or `other` (not RDP; controls are not enforced).
        #[arg(long)]
        service: Option<String>,
        /// New department.
        #[arg(long)]
        dept: Option<String>,
        /// Replace the owners with these (repeatable).
        #[arg(long = "owner")]
        owners: Vec<String>,
        /// Why (kept in the audit log).
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// List desks.
    List,
}

/// `admin plan …`
#[derive(Subcommand, Debug)]
pub enum PlanCmd {
    /// Record a telework plan (as staff would submit it on the portal).
    Add {
        /// Whose plan.
        #[arg(long)]
        user: String,
        /// Local date, YYYY-MM-DD.
        #[arg(long)]
        date: String,
        /// Start, HH:MM local time.
        #[arg(long)]
        start: String,
        /// End, HH:MM local time (24:00 for the end of the day).
        #[arg(long)]
        end: String,
        /// Where (自宅, サテライトオフィス名…).
        #[arg(long, default_value = "自宅")]
        place: String,
        /// Record it as approved (the section chief's decision, e.g. from HR).
        #[arg(long)]
        approved: bool,
    },
    /// Import plans from CSV: `user_id,date,start,end,place[,status]` with a
    /// header line; status is submitted (default), approved or rejected.
    Import {
        /// The CSV file (UTF-8, with or without BOM).
        file: PathBuf,
    },
    /// Approve or reject a submitted plan.
    Decide {
        /// Plan id.
        #[arg(long)]
        id: String,
        /// Reject instead of approve.
        #[arg(long)]
        reject: bool,
    },
    /// List a user's plans.
    List {
        /// User id.
        #[arg(long)]
        user: String,
    },
}

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
    /// Live: `--config F --user U --device D --desk K` (the store's facts).
    Explain(Box<ExplainCli>),
    /// Put a policy file in force (validated first; audited).
    Import {
        /// The gateway's configuration file (its [store] is used).
        #[arg(long)]
        config: PathBuf,
        /// The policy file.
        file: PathBuf,
        /// Why (kept in the audit log).
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Print the policy in force (or an earlier version).
    Export {
        /// The gateway's configuration file (its [store] is used).
        #[arg(long)]
        config: PathBuf,
        /// A version from `policy history`.
        #[arg(long)]
        version: Option<i64>,
    },
    /// List the saved versions: who saved each, and when.
    History {
        /// The gateway's configuration file (its [store] is used).
        #[arg(long)]
        config: PathBuf,
    },
}

/// `policy explain` arguments.
#[derive(clap::Args, Debug)]
pub struct ExplainCli {
    /// Offline: the policy file to evaluate.
    #[arg(long, conflicts_with = "config")]
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
    /// Live: the gateway's configuration file.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Live: user id.
    #[arg(long, requires = "config")]
    user: Option<String>,
    /// Live: device id.
    #[arg(long, requires = "config")]
    device: Option<String>,
    /// Live: desk id.
    #[arg(long, requires = "config")]
    desk: Option<String>,
    /// Live: count the request as having made a step-up assertion.
    #[arg(long)]
    step_up: bool,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// `bcp …`
#[derive(Subcommand, Debug)]
pub enum BcpCmd {
    /// Declare BCP mode (大雪, 感染症…): relaxes what the policy's
    /// `bcp_default_relax` says, never level 3 from home, never My Number.
    Declare {
        /// The gateway's configuration file (its [store] is used).
        #[arg(long)]
        config: PathBuf,
        /// `all`, or one department.
        #[arg(long)]
        scope: String,
        /// Why (shown in the banner and kept in the audit log).
        #[arg(long)]
        reason: String,
        /// When it ends on its own, RFC 3339 (e.g. 2026-01-15T18:00:00+09:00).
        #[arg(long)]
        until: String,
    },
    /// End BCP mode now: one declaration, or every one in force.
    End {
        /// The gateway's configuration file (its [store] is used).
        #[arg(long)]
        config: PathBuf,
        /// Declaration id (default: all in force).
        #[arg(long)]
        id: Option<String>,
    },
    /// List declarations.
    List {
        /// The gateway's configuration file (its [store] is used).
        #[arg(long)]
        config: PathBuf,
    },
}

fn parse_hhmm(what: &str, s: &str) -> anyhow::Result<u16> {
    let (h, m) = s
        .split_once(':')
        .with_context(|| format!("{what} {s:?}: expected HH:MM"))?;
    let (h, m): (u16, u16) = (
        h.trim().parse().with_context(|| format!("{what} {s:?}"))?,
        m.trim().parse().with_context(|| format!("{what} {s:?}"))?,
    );
    if m >= 60 || h * 60 + m > 1440 {
        bail!("{what} {s:?} is not a time of day");
    }
    Ok(h * 60 + m)
}

fn hhmm(min: u16) -> String {
    format!("{:02}:{:02}", min / 60, min % 60)
}

fn parse_time(what: &str, s: &str) -> anyhow::Result<OffsetDateTime> {
    OffsetDateTime::parse(s.trim(), &Rfc3339).with_context(|| {
        format!("{what} {s:?} is not an RFC 3339 time such as 2026-01-15T18:00:00+09:00")
    })
}

fn local(t: i64) -> String {
    OffsetDateTime::from_unix_timestamp(t)
        .ok()
        .and_then(|d| d.format(&Rfc3339).ok())
        .unwrap_or_else(|| t.to_string())
}

fn check_service(service: &str) -> anyhow::Result<DeskService> {
    service
        .parse::<DeskService>()
        .map_err(|e| anyhow::anyhow!("{e} (rdp, or other for a service that is not RDP)"))
}

fn check_desk_fields(level: u8, segment: &str) -> anyhow::Result<Segment> {
    if !(1..=3).contains(&level) {
        bail!("level must be 1, 2 or 3 (機密性レベル)");
    }
    segment
        .parse::<Segment>()
        .map_err(|e| anyhow::anyhow!("{e} (lgwan, internet or mynumber)"))
}

/// Run an `admin desk` command.
pub async fn desk(cfg: &Config, cmd: DeskCmd) -> anyhow::Result<()> {
    let store = open(cfg).await?;
    let now = kakehashi_store::unix_now();
    let who = actor();
    match cmd {
        DeskCmd::Add {
            id,
            level,
            segment,
            service,
            dept,
            owners,
            reason,
        } => {
            let segment = check_desk_fields(level, &segment)?;
            let service = check_service(&service)?;
            for o in &owners {
                if store.get_user(o).await?.is_none() {
                    bail!("owner {o:?} is not a user (add them with `admin user add` first)");
                }
            }
            let d = Desk {
                id: id.clone(),
                department: dept,
                level,
                segment,
                service,
                owners: owners.into_iter().collect(),
            };
            let a = Audit::new(now, &who, "desk.add")
                .subject(&id)
                .reason(&reason)
                .detail(json!(d));
            store.add_desk(&d, a).await?;
            println!(
                "desk {id} added: level {level}, {}, service {}, {}, owners {:?}",
                d.segment.as_str(),
                d.service.as_str(),
                d.department,
                d.owners
            );
        }
        DeskCmd::Set {
            id,
            level,
            segment,
            service,
            dept,
            owners,
            reason,
        } => {
            let mut d = store
                .get_desk(&id)
                .await?
                .with_context(|| format!("no desk {id:?} (see `admin desk list`)"))?;
            let before = json!(d);
            if let Some(l) = level {
                d.level = l;
            }
            let seg = segment.unwrap_or_else(|| d.segment.as_str().to_string());
            d.segment = check_desk_fields(d.level, &seg)?;
            if let Some(service) = service {
                d.service = check_service(&service)?;
            }
            if let Some(dept) = dept {
                d.department = dept;
            }
            if !owners.is_empty() {
                for o in &owners {
                    if store.get_user(o).await?.is_none() {
                        bail!("owner {o:?} is not a user");
                    }
                }
                d.owners = owners.into_iter().collect::<BTreeSet<_>>();
            }
            let a = Audit::new(now, &who, "desk.set")
                .subject(&id)
                .reason(&reason)
                .detail(json!({ "before": before, "after": d }));
            store.set_desk(&d, a).await?;
            println!("desk {id} changed: level {}, {}, service {}, {}, owners {:?}; live sessions are re-decided within a second",
                d.level, d.segment.as_str(), d.service.as_str(), d.department, d.owners);
        }
        DeskCmd::List => {
            println!(
                "{:<20} {:<5} {:<9} {:<7} {:<16} owners",
                "id", "level", "segment", "service", "dept"
            );
            for d in store.list_desks().await? {
                let owners: Vec<&str> = d.owners.iter().map(String::as_str).collect();
                println!(
                    "{:<20} {:<5} {:<9} {:<7} {:<16} {}",
                    d.id,
                    d.level,
                    d.segment.as_str(),
                    d.service.as_str(),
                    d.department,
                    owners.join(",")
                );
            }
        }
    }
    Ok(())
}

/// Run an `admin plan` command.
pub async fn plan(cfg: &Config, cmd: PlanCmd) -> anyhow::Result<()> {
    let store = open(cfg).await?;
    let now = kakehashi_store::unix_now();
    let who = actor();
    match cmd {
        PlanCmd::Add {
            user,
            date,
            start,
            end,
            place,
            approved,
        } => {
            let spec = PlanSpec {
                user_id: user.clone(),
                date,
                start_min: parse_hhmm("start", &start)?,
                end_min: parse_hhmm("end", &end)?,
                place,
            };
            let id = add_plan(
                &store,
                &who,
                now,
                &spec,
                approved.then_some(PlanStatus::Approved),
            )
            .await?;
            println!(
                "plan {id} for {user} on {}: {}–{} ({})",
                spec.date,
                hhmm(spec.start_min),
                hhmm(spec.end_min),
                if approved { "approved" } else { "submitted" }
            );
        }
        PlanCmd::Import { file } => {
            let n = import_plans(&store, &who, &file).await?;
            println!("{n} plan(s) imported from {}", file.display());
        }
        PlanCmd::Decide { id, reject } => {
            let a = Audit::new(
                now,
                &who,
                if reject {
                    "plan.reject"
                } else {
                    "plan.approve"
                },
            )
            .subject(&id);
            let p = store.decide_plan(&id, !reject, a).await?;
            println!("plan {id}: {}", p.status.as_str());
        }
        PlanCmd::List { user } => {
            println!(
                "{:<22} {:<10} {:<11} {:<10} place",
                "id", "date", "hours", "status"
            );
            for p in store.plans_for_user(&user).await? {
                println!(
                    "{:<22} {:<10} {}–{} {:<10} {}",
                    p.id,
                    p.date,
                    hhmm(p.start_min),
                    hhmm(p.end_min),
                    p.status.as_str(),
                    p.place
                );
            }
        }
    }
    Ok(())
}

async fn add_plan(
    store: &Store,
    who: &str,
    now: i64,
    spec: &PlanSpec,
    status: Option<PlanStatus>,
) -> anyhow::Result<String> {
    if store.get_user(&spec.user_id).await?.is_none() {
        bail!("user {:?} does not exist", spec.user_id);
    }
    let a = Audit::new(now, who, "plan.submit")
        .subject(&spec.user_id)
        .detail(json!({ "date": spec.date, "start": hhmm(spec.start_min), "end": hhmm(spec.end_min), "place": spec.place }));
    let p = store.submit_plan(spec, a).await?;
    match status {
        Some(PlanStatus::Approved) | Some(PlanStatus::Rejected) => {
            let approve = status == Some(PlanStatus::Approved);
            let a = Audit::new(
                now,
                who,
                if approve {
                    "plan.approve"
                } else {
                    "plan.reject"
                },
            )
            .subject(&p.id)
            .reason("imported");
            store.decide_plan(&p.id, approve, a).await?;
        }
        _ => {}
    }
    Ok(p.id)
}

/// CSV import: every line checked before anything is written, so a bad
/// file changes nothing.
async fn import_plans(store: &Store, who: &str, file: &Path) -> anyhow::Result<usize> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let text = text.trim_start_matches('\u{feff}');
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let line = line.trim();
        if line.is_empty() || (n == 1 && line.starts_with("user")) {
            continue;
        }
        let f: Vec<&str> = line.split(',').map(str::trim).collect();
        if !(5..=6).contains(&f.len()) {
            bail!(
                "{}:{n}: expected user_id,date,start,end,place[,status]",
                file.display()
            );
        }
        let status = match f.get(5).copied().unwrap_or("submitted") {
            "submitted" | "" => None,
            "approved" => Some(PlanStatus::Approved),
            "rejected" => Some(PlanStatus::Rejected),
            other => bail!("{}:{n}: unknown status {other:?}", file.display()),
        };
        let spec = PlanSpec {
            user_id: f[0].to_string(),
            date: f[1].to_string(),
            start_min: parse_hhmm("start", f[2])
                .with_context(|| format!("{}:{n}", file.display()))?,
            end_min: parse_hhmm("end", f[3]).with_context(|| format!("{}:{n}", file.display()))?,
            place: f[4].to_string(),
        };
        if spec.start_min >= spec.end_min {
            bail!("{}:{n}: start must be before end", file.display());
        }
        rows.push((n, spec, status));
    }
    let now = kakehashi_store::unix_now();
    for (n, spec, status) in &rows {
        add_plan(store, who, now, spec, *status)
            .await
            .with_context(|| format!("{}:{n}", file.display()))?;
    }
    Ok(rows.len())
}

/// Run a `policy` command.
pub async fn policy(cmd: PolicyCmd) -> anyhow::Result<bool> {
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
        PolicyCmd::Explain(e) => explain(*e).await,
        PolicyCmd::Import {
            config,
            file,
            reason,
        } => {
            let cfg = Config::load(&config)?;
            let store = open(&cfg).await?;
            let (text, p) = crate::admission::read_policy_file(&file)?;
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
        PolicyCmd::Export { config, version } => {
            let cfg = Config::load(&config)?;
            let store = open(&cfg).await?;
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
        PolicyCmd::History { config } => {
            let cfg = Config::load(&config)?;
            let store = open(&cfg).await?;
            let Some(cur) = store.current_policy().await? else {
                println!("no policy saved yet");
                return Ok(true);
            };
            println!("{:<8} {:<26} author", "version", "saved");
            for v in (1..=cur.version).rev() {
                if let Some(d) = store.policy_version(v).await? {
                    println!("{:<8} {:<26} {}", d.version, local(d.created), d.author);
                }
            }
            Ok(true)
        }
    }
}

async fn explain(e: ExplainCli) -> anyhow::Result<bool> {
    if let Some(config) = &e.config {
        let (Some(user), Some(device), Some(desk)) = (&e.user, &e.device, &e.desk) else {
            bail!("the live form needs --user, --device and --desk");
        };
        let cfg = Config::load(config)?;
        let store = open(&cfg).await?;
        let doc = store
            .current_policy()
            .await?
            .context("no policy saved yet")?;
        let policy = crate::admission::parse_policy(&doc.text)?;
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
        let asker = crate::admission::Asker {
            user: user.clone(),
            login_at: login_at.unwrap_or(i64::MIN / 2),
            device: device.clone(),
            class,
            desk: desk.clone(),
            step_up: e.step_up,
        };
        let req = match crate::admission::request(&store, &asker, &policy, at).await {
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
            println!("policy version {}", doc.version);
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

/// Run a `bcp` command.
pub async fn bcp(cmd: BcpCmd) -> anyhow::Result<()> {
    match cmd {
        BcpCmd::Declare {
            config,
            scope,
            reason,
            until,
        } => {
            let cfg = Config::load(&config)?;
            let store = open(&cfg).await?;
            let now = kakehashi_store::unix_now();
            let until = parse_time("--until", &until)?.unix_timestamp();
            if until <= now {
                bail!("--until must be in the future");
            }
            let doc = store
                .current_policy()
                .await?
                .context("no policy saved yet (start the gateway once)")?;
            let policy = crate::admission::parse_policy(&doc.text)?;
            let scope = match scope.as_str() {
                "all" | "*" => BcpScope::All,
                d => BcpScope::Department(d.to_string()),
            };
            let relax = serde_json::to_value(&policy.bcp_default_relax)?;
            let spec = BcpSpec {
                scope,
                reason: reason.clone(),
                relax: relax.clone(),
                starts_at: now,
                ends_at: until,
            };
            let a = Audit::new(now, actor(), "bcp.declare")
                .subject(match &spec.scope {
                    BcpScope::All => "all",
                    BcpScope::Department(d) => d,
                })
                .reason(&reason)
                .detail(json!({ "until": until, "relax": relax }));
            let b = store.declare_bcp(&spec, a).await?;
            println!(
                "BCP declared ({}): until {}; relaxes {relax}",
                b.id,
                local(b.ends_at)
            );
        }
        BcpCmd::End { config, id } => {
            let cfg = Config::load(&config)?;
            let store = open(&cfg).await?;
            let now = kakehashi_store::unix_now();
            let ids: Vec<String> = match id {
                Some(id) => vec![id],
                None => store
                    .active_bcp(now)
                    .await?
                    .into_iter()
                    .map(|b| b.id)
                    .collect(),
            };
            if ids.is_empty() {
                println!("no BCP declaration in force");
            }
            for id in ids {
                let a = Audit::new(now, actor(), "bcp.end").subject(&id);
                store.end_bcp(&id, a).await?;
                println!("BCP {id} ended; sessions it allowed are re-decided within a second");
            }
        }
        BcpCmd::List { config } => {
            let cfg = Config::load(&config)?;
            let store = open(&cfg).await?;
            let now = kakehashi_store::unix_now();
            println!(
                "{:<22} {:<6} {:<12} {:<26} reason",
                "id", "state", "scope", "until"
            );
            for b in store.list_bcp().await? {
                println!(
                    "{:<22} {:<6} {:<12} {:<26} {}",
                    b.id,
                    if b.is_active(now) { "active" } else { "ended" },
                    match &b.scope {
                        BcpScope::All => "all",
                        BcpScope::Department(d) => d,
                    },
                    local(b.ended_at.unwrap_or(b.ends_at).min(b.ends_at)),
                    b.reason
                );
            }
        }
    }
    Ok(())
}
