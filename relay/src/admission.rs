//! Deciding sessions: the live policy, and a [`kakehashi_policy::Request`]
//! built from the store for whoever asks.
//!
//! The policy crate is pure; this module is its I/O side. The same
//! [`Asker`] is re-decided whenever something it depends on changes (see
//! `server::watch_changes`), so the admission decision and the live
//! re-evaluation cannot drift apart.

use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;

use anyhow::Context as _;
use kakehashi_policy::{self as pol, Decision, Policy};
use kakehashi_proto::{Reason, Refusal};
use kakehashi_store::localtime::{parse_date_opt, ymd};
use kakehashi_store::{Audit, PlanStatus, Store};
use time::OffsetDateTime;
use tracing::{info, warn};

/// A fresh login counts as the step-up assertion a level-3 rule asks for,
/// for one session started within this many seconds of it.
pub const STEP_UP_WINDOW_SECS: i64 = 300;

/// The policy in force and its version in the store.
#[derive(Debug)]
pub struct Loaded {
    /// The parsed policy.
    pub policy: Policy,
    /// Its version in the store's policy history.
    pub version: i64,
}

/// The live policy, swapped as a whole when an officer saves a new version.
#[derive(Debug)]
pub struct PolicyHolder {
    current: ArcSwap<Loaded>,
}

impl PolicyHolder {
    /// Hold `loaded`.
    pub fn new(loaded: Loaded) -> Self {
        Self {
            current: ArcSwap::from_pointee(loaded),
        }
    }

    /// The policy in force now (no lock: every session request reads it).
    pub fn get(&self) -> Arc<Loaded> {
        self.current.load_full()
    }

    /// Put a newer version in force. Returns false (and keeps the current
    /// one) when `loaded` is not newer.
    pub fn replace(&self, loaded: Loaded) -> bool {
        let new = Arc::new(loaded);
        let before = self.current.rcu(|cur| {
            if new.version > cur.version {
                new.clone()
            } else {
                cur.clone()
            }
        });
        before.version < new.version
    }
}

/// Read and validate a policy file, with every problem and its line.
pub fn read_policy_file(path: &Path) -> anyhow::Result<(String, Policy)> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read policy file {}", path.display()))?;
    let policy = parse_policy(&text).with_context(|| format!("policy file {}", path.display()))?;
    Ok((text, policy))
}

/// Parse a policy text; on error, list every diagnostic with line and field.
pub fn parse_policy(text: &str) -> anyhow::Result<Policy> {
    match Policy::from_toml(text) {
        Ok(p) => Ok(p),
        Err(e) => {
            let diags: Vec<String> = pol::check(text)
                .iter()
                .filter(|d| d.severity == pol::Severity::Error)
                .map(|d| format!("line {} col {} {}: {}", d.line, d.col, d.field, d.message))
                .collect();
            if diags.is_empty() {
                Err(anyhow::anyhow!("invalid policy: {e}"))
            } else {
                Err(anyhow::anyhow!("invalid policy:\n  {}", diags.join("\n  ")))
            }
        }
    }
}

/// The policy to start with. The store's policy is the one in force; an
/// empty store is seeded once — from the `[policy] file` when one is
/// configured, else with the shipped default — in one transaction, so
/// gateways starting together seed it once. After that the file never
/// overrides the store: an officer's change made on the portal or with the
/// CLI stands across restarts. When the file differs from the policy in
/// force, a warning says how to put it in force
/// (`kakehashi-gateway policy import FILE`, audited).
pub async fn load_initial(store: &Store, file: Option<&Path>) -> anyhow::Result<Loaded> {
    let current = store
        .current_policy()
        .await
        .context("cannot read the policy from the store")?;
    let from_file = match file {
        Some(path) => Some((path, read_policy_file(path)?)),
        None => None,
    };
    let doc = match current {
        Some(doc) => doc,
        None => {
            let now = kakehashi_store::unix_now();
            let (text, a) = match &from_file {
                Some((path, (text, _))) => (
                    text.as_str(),
                    Audit::new(now, "gateway", "policy.import")
                        .subject("policy")
                        .reason("config_file")
                        .detail(serde_json::json!({ "file": path.display().to_string() })),
                ),
                None => (
                    pol::default_policy_toml(),
                    Audit::new(now, "gateway", "policy.import")
                        .subject("policy")
                        .reason("shipped_default"),
                ),
            };
            let (doc, seeded) = store.seed_policy(text, a).await?;
            if seeded {
                match &from_file {
                    Some((path, _)) => {
                        info!(version = doc.version, file = %path.display(), "Empty store: seeded the access policy from [policy] file")
                    }
                    None => info!(
                        version = doc.version,
                        "Empty store: the shipped default policy is in force"
                    ),
                }
            }
            doc
        }
    };
    if let Some((path, (text, _))) = &from_file {
        if *text != doc.text {
            warn!(
                file = %path.display(),
                version = doc.version,
                author = %doc.author,
                "[policy] file differs from the policy in force, which stays (the file only seeds an empty store). To put the file in force: kakehashi-gateway policy import {}",
                path.display()
            );
        }
    }
    let policy = parse_policy(&doc.text)
        .with_context(|| format!("policy version {} in the store", doc.version))?;
    Ok(Loaded {
        policy,
        version: doc.version,
    })
}

/// Who asks for which desk, from which laptop: everything needed to build
/// the policy request again at any time.
#[derive(Debug, Clone)]
pub struct Asker {
    /// User id (from the login token).
    pub user: String,
    /// When the user's WebAuthn login happened (unix seconds).
    pub login_at: i64,
    /// Device id (from the certificate).
    pub device: String,
    /// Terminal class (from the certificate).
    pub class: pol::TerminalClass,
    /// The desk asked for.
    pub desk: String,
    /// The login was fresh enough to count as this session's step-up.
    pub step_up: bool,
}

/// The outcome of deciding one [`Asker`].
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Allowed by `rule`.
    Allow {
        /// The rule.
        rule: String,
        /// Session controls.
        controls: kakehashi_proto::Controls,
        /// Time limits.
        limits: pol::Limits,
        /// The desk's level and department (for metrics and the session record).
        desk: DeskFacts,
    },
    /// Refused.
    Deny {
        /// What the client is told.
        refusal: Refusal,
        /// The deciding rule, if one did.
        rule: Option<String>,
    },
}

/// What the session path needs to know about the desk after a decision.
#[derive(Debug, Clone)]
pub struct DeskFacts {
    /// Confidentiality level 1..=3.
    pub level: u8,
    /// Department.
    pub department: String,
    /// What it serves: an RDP desk needs an agent that enforces restricting
    /// controls; a non-RDP one is admitted without.
    pub service: kakehashi_store::DeskService,
}

fn internal(what: &str, e: impl std::fmt::Display) -> Refusal {
    warn!(error = %e, "Store error while deciding a session ({what}); refusing");
    Refusal::new(Reason::Internal)
}

/// A store read failed while deciding a session: `store_unavailable` when
/// the database cannot be reached, else an internal error.
pub(crate) fn store_error(what: &str, e: kakehashi_store::Error) -> Refusal {
    if e.is_unavailable() {
        warn!(error = %e, "Store unreachable while deciding a session ({what}); refusing");
        return Refusal::new(Reason::StoreUnavailable);
    }
    internal(what, e)
}

fn refused(reason: Reason) -> Refusal {
    Refusal::new(reason)
}

/// Build the request for `a` from the store and decide it. Fails closed:
/// a store error is a refusal.
pub async fn decide(store: &Store, a: &Asker, policy: &Policy, now: OffsetDateTime) -> Outcome {
    outcome(request(store, a, policy, now).await, policy, now)
}

/// The policy request for `a`, built from the store's current facts (and
/// what the session path needs to know of the desk). The refusals here come
/// before the policy: unknown or disabled user, unknown device or desk.
pub async fn request(
    store: &Store,
    a: &Asker,
    policy: &Policy,
    now: OffsetDateTime,
) -> Result<(pol::Request, DeskFacts), Refusal> {
    let user = store
        .get_user(&a.user)
        .await
        .map_err(|e| store_error("user", e))?;
    let device = store
        .get_device(&a.device)
        .await
        .map_err(|e| store_error("device", e))?;
    let desk = store
        .get_desk(&a.desk)
        .await
        .map_err(|e| store_error("desk", e))?;
    let since = plan_window_start(now, policy);
    let plans: Vec<_> = store
        .plans_for_user(&a.user)
        .await
        .map_err(|e| store_error("plans", e))?
        .into_iter()
        .filter(|p| p.date >= since)
        .collect();
    let bcp = store
        .active_bcp(now.unix_timestamp())
        .await
        .map_err(|e| store_error("bcp", e))?;
    build(
        a,
        Facts {
            user: user.as_ref(),
            device: device.as_ref(),
            desk: desk.as_ref(),
            plans: &plans,
            bcp: &bcp,
        },
        policy,
        now,
    )
}

/// The store's facts about one request.
struct Facts<'a> {
    user: Option<&'a kakehashi_store::User>,
    device: Option<&'a kakehashi_store::Device>,
    desk: Option<&'a kakehashi_store::Desk>,
    /// The person's plans from [`plan_window_start`] on.
    plans: &'a [kakehashi_store::Plan],
    /// Declarations in force.
    bcp: &'a [kakehashi_store::Bcp],
}

/// Plans older than this (a month before the local date) play no part in a
/// decision, so both paths read the same window.
fn plan_window_start(now: OffsetDateTime, policy: &Policy) -> String {
    ymd((now.to_offset(policy.timezone) - time::Duration::days(31)).date())
}

/// The one place a policy request is put together from the store's facts,
/// for admission and for re-evaluation alike.
fn build(
    a: &Asker,
    f: Facts<'_>,
    policy: &Policy,
    now: OffsetDateTime,
) -> Result<(pol::Request, DeskFacts), Refusal> {
    let now_unix = now.unix_timestamp();
    let user = match f.user {
        Some(u) if !u.disabled => u,
        _ => return Err(refused(Reason::UserDisabled)),
    };
    let status = match f.device {
        Some(d) => d
            .status
            .as_str()
            .parse::<pol::DeviceStatus>()
            .map_err(|e| internal("device status", e))?,
        // Devices are registered at their first login; none means no login.
        None => return Err(refused(Reason::DeviceBlocked)),
    };
    let Some(desk) = f.desk else {
        return Err(refused(Reason::DeskUnknown));
    };
    let (level, segment) = match (
        pol::Level::try_from(i64::from(desk.level)),
        desk.segment.as_str().parse::<pol::Segment>(),
    ) {
        (Ok(l), Ok(s)) => (l, s),
        (Err(e), _) | (_, Err(e)) => return Err(internal("desk level/segment", e)),
    };
    let plan = pick_plan(f.plans, now.to_offset(policy.timezone));
    let bcp = f
        .bcp
        .iter()
        .filter(|b| b.is_active(now_unix))
        .map(|b| pol::BcpCtx {
            scope: match &b.scope {
                kakehashi_store::BcpScope::All => pol::BcpScope::All,
                kakehashi_store::BcpScope::Department(d) => pol::BcpScope::Dept(d.clone()),
            },
            relax: serde_json::from_value(b.relax.clone()).unwrap_or_else(|e| {
                warn!(bcp = %b.id, error = %e, "BCP relaxation unreadable; using the policy's default");
                policy.bcp_default_relax.clone()
            }),
            until: OffsetDateTime::from_unix_timestamp(
                b.ends_at.min(b.ended_at.unwrap_or(i64::MAX)),
            )
            .unwrap_or(now),
        })
        .collect();
    let req = pol::Request {
        user: pol::UserCtx {
            id: user.id.clone(),
            department: user.department.clone(),
            roles: user
                .roles
                .iter()
                .filter_map(|r| r.as_str().parse().ok())
                .collect(),
        },
        device: pol::DeviceCtx {
            id: a.device.clone(),
            class: a.class,
            status,
        },
        desk: pol::DeskCtx {
            id: desk.id.clone(),
            level,
            segment,
            department: desk.department.clone(),
            owners: desk.owners.iter().cloned().collect(),
        },
        plan,
        bcp,
        mfa_age_secs: u64::try_from(now_unix.saturating_sub(a.login_at)).ok(),
        step_up: a.step_up,
    };
    let facts = DeskFacts {
        level: desk.level,
        department: desk.department.clone(),
        service: desk.service,
    };
    Ok((req, facts))
}

/// Everything the store knows that decisions read, loaded in a handful of
/// bulk queries: re-deciding every live session then costs one pure
/// decision each instead of five queries each.
#[derive(Debug, Default)]
pub struct Snapshot {
    users: std::collections::HashMap<String, kakehashi_store::User>,
    devices: std::collections::HashMap<String, kakehashi_store::Device>,
    desks: std::collections::HashMap<String, kakehashi_store::Desk>,
    plans: std::collections::HashMap<String, Vec<kakehashi_store::Plan>>,
    bcp: Vec<kakehashi_store::Bcp>,
}

impl Snapshot {
    /// Load the snapshot for decisions at `now`.
    pub async fn load(
        store: &Store,
        policy: &Policy,
        now: OffsetDateTime,
    ) -> kakehashi_store::Result<Self> {
        let mut plans: std::collections::HashMap<String, Vec<kakehashi_store::Plan>> =
            std::collections::HashMap::new();
        for p in store.plans_since(&plan_window_start(now, policy)).await? {
            plans.entry(p.user_id.clone()).or_default().push(p);
        }
        Ok(Self {
            users: store
                .list_users()
                .await?
                .into_iter()
                .map(|u| (u.id.clone(), u))
                .collect(),
            devices: store
                .list_devices()
                .await?
                .into_iter()
                .map(|d| (d.id.clone(), d))
                .collect(),
            desks: store
                .list_desks()
                .await?
                .into_iter()
                .map(|d| (d.id.clone(), d))
                .collect(),
            plans,
            bcp: store.active_bcp(now.unix_timestamp()).await?,
        })
    }

    /// Decide `a` on this snapshot: the same result as [`decide`] on the
    /// store the snapshot was loaded from.
    pub fn decide(&self, a: &Asker, policy: &Policy, now: OffsetDateTime) -> Outcome {
        let f = Facts {
            user: self.users.get(&a.user),
            device: self.devices.get(&a.device),
            desk: self.desks.get(&a.desk),
            plans: self.plans.get(&a.user).map_or(&[], Vec::as_slice),
            bcp: &self.bcp,
        };
        outcome(build(a, f, policy, now), policy, now)
    }
}

/// The decision on a built request (or the refusal that came before it).
fn outcome(
    built: Result<(pol::Request, DeskFacts), Refusal>,
    policy: &Policy,
    now: OffsetDateTime,
) -> Outcome {
    let (req, facts) = match built {
        Ok(x) => x,
        Err(refusal) => {
            return Outcome::Deny {
                refusal,
                rule: None,
            }
        }
    };
    match pol::decide(&req, policy, now) {
        Decision::Allow {
            rule,
            controls,
            limits,
        } => Outcome::Allow {
            rule,
            controls,
            limits,
            desk: facts,
        },
        d => Outcome::Deny {
            refusal: d
                .refusal()
                .unwrap_or_else(|| Refusal::new(Reason::Internal)),
            rule: match d {
                Decision::Deny { rule, .. } => rule,
                _ => None,
            },
        },
    }
}

/// The person's plan for the policy's local date of `local`: an approved one
/// covering the time, else any approved one that day, else a pending one
/// (→ `plan_not_approved`), else the latest approved plan of another day
/// (→ `plan_other_day`). Rejected plans count as none.
fn pick_plan(plans: &[kakehashi_store::Plan], local: OffsetDateTime) -> Option<pol::PlanCtx> {
    let today = ymd(local.date());
    let minute = u16::from(local.hour()) * 60 + u16::from(local.minute());
    let usable = || plans.iter().filter(|p| p.status != PlanStatus::Rejected);
    let todays = || usable().filter(|p| p.date == today);
    let chosen = todays()
        .find(|p| p.covers(minute))
        .or_else(|| todays().find(|p| p.status == PlanStatus::Approved))
        .or_else(|| todays().next())
        .or_else(|| {
            usable()
                .filter(|p| p.status == PlanStatus::Approved)
                .max_by(|a, b| a.date.cmp(&b.date))
        })?;
    let date = parse_date_opt(&chosen.date)?;
    Some(pol::PlanCtx {
        date,
        start_min: chosen.start_min,
        end_min: chosen.end_min,
        approved: chosen.status == PlanStatus::Approved,
    })
}

/// Map the certificate's terminal class to the policy's.
pub fn class_of(c: kakehashi_pki::TerminalClass) -> pol::TerminalClass {
    match c.as_str().parse() {
        Ok(c) => c,
        // The pki crate and the policy crate name the same three classes; a
        // new class must be added to both. Home is the most restricted.
        Err(_) => pol::TerminalClass::Home,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kakehashi_store::{BcpSpec, Desk, DeviceClass, DeviceSpec, NewUser, PlanSpec, Role};

    fn code(o: &Outcome) -> String {
        match o {
            Outcome::Allow { rule, .. } => format!("allow {rule}"),
            Outcome::Deny { refusal, rule } => format!("deny {} {rule:?}", refusal.code),
        }
    }

    /// The snapshot used for live re-evaluation decides exactly like the
    /// per-request path used at admission, on every kind of fact.
    #[tokio::test]
    async fn snapshot_and_store_decide_alike() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&format!("sqlite://{}", dir.path().join("t.db").display()))
            .await
            .unwrap();
        let now = time::OffsetDateTime::now_utc();
        let t = now.unix_timestamp();
        let a = || Audit::new(t, "test", "seed");
        let policy = Policy::default();
        let local = now.to_offset(policy.timezone);
        let day = |d: i64| ymd((local + time::Duration::days(d)).date());
        for i in 0..6 {
            let id = format!("u{i}");
            store
                .add_user(
                    &NewUser {
                        id: id.clone(),
                        name: id.clone(),
                        department: format!("d{}", i % 2),
                        roles: [Role::Staff].into(),
                    },
                    a(),
                )
                .await
                .unwrap();
            for (j, class) in [
                DeviceClass::Home,
                DeviceClass::Mobile,
                DeviceClass::Satellite,
            ]
            .into_iter()
            .enumerate()
            {
                store
                    .upsert_device(
                        &DeviceSpec {
                            id: format!("PC-{i}-{j}"),
                            class,
                            loaned_to: Some(id.clone()),
                            cert_serial: None,
                        },
                        a(),
                    )
                    .await
                    .unwrap();
            }
            store
                .add_desk(
                    &Desk {
                        id: format!("DESK-{i}"),
                        department: format!("d{}", i % 2),
                        level: u8::try_from(i % 3 + 1).expect("1 to 3"),
                        segment: if i == 5 {
                            kakehashi_store::Segment::Mynumber
                        } else {
                            kakehashi_store::Segment::Lgwan
                        },
                        service: kakehashi_store::DeskService::Rdp,
                        owners: [id.clone()].into(),
                    },
                    a(),
                )
                .await
                .unwrap();
            // Plans: today approved, today pending, another day, none.
            let (date, approve) = match i % 4 {
                0 => (day(0), true),
                1 => (day(0), false),
                2 => (day(-3), true),
                _ => continue,
            };
            let p = store
                .submit_plan(
                    &PlanSpec {
                        user_id: id.clone(),
                        date,
                        start_min: 0,
                        end_min: 1440,
                        place: "自宅".into(),
                    },
                    a(),
                )
                .await
                .unwrap();
            if approve {
                store.decide_plan(&p.id, true, a()).await.unwrap();
            }
        }
        store
            .set_device_status("PC-3-2", kakehashi_store::DeviceStatus::Blocked, a())
            .await
            .unwrap();
        store.set_user_disabled("u4", true, a()).await.unwrap();
        store
            .declare_bcp(
                &BcpSpec {
                    scope: kakehashi_store::BcpScope::Department("d1".into()),
                    reason: "snow".into(),
                    relax: serde_json::to_value(&policy.bcp_default_relax).unwrap(),
                    starts_at: t - 10,
                    ends_at: t + 3600,
                },
                a(),
            )
            .await
            .unwrap();
        let snap = Snapshot::load(&store, &policy, now).await.unwrap();
        let classes = [
            pol::TerminalClass::Home,
            pol::TerminalClass::Mobile,
            pol::TerminalClass::Satellite,
        ];
        let mut seen = std::collections::BTreeSet::new();
        for u in 0..7 {
            for d in 0..7 {
                for (j, class) in classes.iter().enumerate() {
                    for (login_age, step_up) in [(60, true), (60, false), (40_000, false)] {
                        let asker = Asker {
                            user: format!("u{u}"),
                            login_at: t - login_age,
                            device: format!("PC-{u}-{j}"),
                            class: *class,
                            desk: format!("DESK-{d}"),
                            step_up,
                        };
                        let a = code(&decide(&store, &asker, &policy, now).await);
                        let b = code(&snap.decide(&asker, &policy, now));
                        assert_eq!(a, b, "{asker:?}");
                        seen.insert(a.split(' ').take(2).collect::<Vec<_>>().join(" "));
                    }
                }
            }
        }
        // The grid reaches allows and the pre-policy and policy refusals.
        for want in [
            "deny user_disabled",
            "deny device_blocked",
            "deny desk_unknown",
            "deny not_desk_owner",
            "deny segment_mynumber",
            "deny level_not_permitted",
            "deny step_up_required",
            "deny mfa_too_old",
        ] {
            assert!(seen.contains(want), "{want} not reached: {seen:?}");
        }
        assert!(seen.iter().any(|s| s.starts_with("allow")), "{seen:?}");
    }
}
