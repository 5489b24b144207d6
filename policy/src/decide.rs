//! The pure decision: `decide` and `explain` share one code path.

use std::fmt;

use serde::{Deserialize, Serialize};
use time::{OffsetDateTime, Time};

use crate::model::{BcpScope, Request};
use crate::reason::ReasonCode;
use crate::rules::{Controls, DeskAccess, Effect, Hours, Policy, Rule};
use crate::vocab::{DeviceStatus, Level, Segment, TerminalClass};

/// Time limits of an allowed session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Limits {
    /// Unix time (seconds) at which the gateway ends the session: the earliest
    /// of the end of the hour window (no overtime), the end of the plan, the
    /// end of a BCP relaxation that was needed, the MFA becoming too old, and
    /// the start plus the maximum duration. `None`: no end.
    pub end_at: Option<u64>,
    /// Longest session, seconds.
    pub max_duration_secs: Option<u64>,
    /// Idle timeout, seconds.
    pub idle_timeout_secs: Option<u32>,
    /// Oldest accepted multi-factor authentication, seconds.
    pub mfa_max_age_secs: Option<u64>,
    /// The rule required a step-up assertion for this session.
    pub step_up_required: bool,
}

impl Limits {
    /// The part of the limits the session ticket carries.
    pub fn to_ticket(&self) -> kakehashi_proto::Limits {
        kakehashi_proto::Limits {
            end_at: self.end_at,
            idle_timeout_secs: self.idle_timeout_secs,
        }
    }
}

/// The outcome of a policy evaluation.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Decision {
    /// The session may start, with these controls and limits.
    Allow {
        /// Id of the rule that allowed it.
        rule: String,
        /// Controls the agent enforces.
        controls: Controls,
        /// Limits the gateway enforces.
        limits: Limits,
    },
    /// The session is refused.
    Deny {
        /// Stable reason code.
        reason: ReasonCode,
        /// Japanese sentence (same as `reason.ja()`).
        ja: &'static str,
        /// English sentence (same as `reason.en()`).
        en: &'static str,
        /// Id of the rule that decided, when one did.
        rule: Option<String>,
    },
}

impl Decision {
    fn deny(reason: ReasonCode, rule: Option<&Rule>) -> Decision {
        Decision::Deny {
            reason,
            ja: reason.ja(),
            en: reason.en(),
            rule: rule.map(|r| r.id.clone()),
        }
    }

    /// Allowed?
    pub fn is_allow(&self) -> bool {
        matches!(self, Decision::Allow { .. })
    }

    /// The reason of a denial.
    pub fn reason(&self) -> Option<ReasonCode> {
        match self {
            Decision::Deny { reason, .. } => Some(*reason),
            Decision::Allow { .. } => None,
        }
    }

    /// The rule that decided, if any.
    pub fn rule(&self) -> Option<&str> {
        match self {
            Decision::Allow { rule, .. } => Some(rule),
            Decision::Deny { rule, .. } => rule.as_deref(),
        }
    }

    /// The rule, controls and limits of an allowed session.
    pub fn allowed(&self) -> Option<(&str, &Controls, &Limits)> {
        match self {
            Decision::Allow {
                rule,
                controls,
                limits,
            } => Some((rule, controls, limits)),
            Decision::Deny { .. } => None,
        }
    }

    /// A denial as the refusal the client receives.
    pub fn refusal(&self) -> Option<kakehashi_proto::reason::Refusal> {
        match self {
            Decision::Allow { .. } => None,
            Decision::Deny { reason, rule, .. } => Some(reason.refusal(rule.as_deref())),
        }
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Decision::Allow { rule, .. } => write!(f, "allow (rule {rule})"),
            Decision::Deny { reason, rule, .. } => match rule {
                Some(r) => write!(f, "deny {reason} (rule {r})"),
                None => write!(f, "deny {reason}"),
            },
        }
    }
}

/// Whether a step is a fixed check or a rule of the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum StepKind {
    /// A fixed check (`segment`, `device`, `owner`, `effect`, `bcp`, `hours`,
    /// `plan`, `step_up`, `mfa`).
    Check,
    /// A rule, named by its id.
    Rule,
}

/// One step of an evaluation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    /// Check or rule.
    pub kind: StepKind,
    /// Rule id, or check name.
    pub rule: String,
    /// Matched / passed.
    pub matched: bool,
    /// Why, in English.
    pub why: String,
}

/// A decision with every step that led to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explanation {
    /// The decision, identical to what [`decide`] returns.
    pub decision: Decision,
    /// Checks and rules in evaluation order; rules after the first match are
    /// listed as not evaluated.
    pub steps: Vec<Step>,
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for s in &self.steps {
            let mark = if s.matched { "✓" } else { "✗" };
            let kind = match s.kind {
                StepKind::Check => "check",
                StepKind::Rule => "rule ",
            };
            writeln!(f, "  {mark} {kind} {:<20} {}", s.rule, s.why)?;
        }
        Ok(())
    }
}

/// Why a device in `status` may not be used: `None` for an active one. The
/// login check uses it too, so a lost laptop hears `device_lost` wherever it
/// is refused.
pub fn device_reason(status: DeviceStatus) -> Option<ReasonCode> {
    match status {
        DeviceStatus::Active => None,
        DeviceStatus::Blocked => Some(ReasonCode::DeviceBlocked),
        DeviceStatus::Lost => Some(ReasonCode::DeviceLost),
        DeviceStatus::Revoked => Some(ReasonCode::DeviceRevoked),
    }
}

/// Decide a request. Pure: no clock, no I/O; `now` is passed in.
///
/// Order: the My Number segment; the device status; the first rule matching
/// level × class × department; desk ownership (owners only unless that rule
/// says `desk_access = "department"`); the rule's effect; hours; plan;
/// step-up; MFA freshness. BCP declarations waive the hours and/or plan
/// checks they are configured for, until they expire.
pub fn decide(req: &Request, policy: &Policy, now: OffsetDateTime) -> Decision {
    evaluate(req, policy, now, &mut NoTrace)
}

/// Decide a request and say why, step by step. `explain(..).decision` is
/// always `decide(..)`: both run the same code.
pub fn explain(req: &Request, policy: &Policy, now: OffsetDateTime) -> Explanation {
    let mut steps = Vec::new();
    let decision = evaluate(req, policy, now, &mut steps);
    Explanation { decision, steps }
}

/// Where the steps go. `decide` passes a tracer that drops them without ever
/// formatting a sentence.
trait Tracer {
    /// Are steps kept? (Lets `decide` skip work only `explain` needs.)
    const TRACING: bool;
    fn note(&mut self, kind: StepKind, name: &str, matched: bool, why: impl FnOnce() -> String);
}

struct NoTrace;

impl Tracer for NoTrace {
    const TRACING: bool = false;
    #[inline(always)]
    fn note(&mut self, _: StepKind, _: &str, _: bool, _: impl FnOnce() -> String) {}
}

impl Tracer for Vec<Step> {
    const TRACING: bool = true;
    fn note(&mut self, kind: StepKind, name: &str, matched: bool, why: impl FnOnce() -> String) {
        self.push(Step {
            kind,
            rule: name.to_owned(),
            matched,
            why: why(),
        });
    }
}

fn check<T: Tracer>(t: &mut T, name: &str, ok: bool, why: impl FnOnce() -> String) {
    t.note(StepKind::Check, name, ok, why);
}

fn list<I: IntoIterator<Item = D>, D: fmt::Display>(items: I) -> String {
    let v: Vec<String> = items.into_iter().map(|i| i.to_string()).collect();
    format!("[{}]", v.join(", "))
}

fn fmt_unix(t: i64, policy: &Policy) -> String {
    match OffsetDateTime::from_unix_timestamp(t)
        .ok()
        .and_then(|d| d.checked_to_offset(policy.timezone))
    {
        Some(d) => format!("{} {:02}:{:02}", d.date(), d.hour(), d.minute()),
        None => format!("unix {t}"),
    }
}

/// Local view of `now` in the policy's time zone.
struct Local {
    day: crate::rules::Day,
    date: time::Date,
    minute: u16,
    /// Unix time of local midnight starting `date`.
    midnight: i64,
}

fn local(now: OffsetDateTime, policy: &Policy) -> Option<Local> {
    let l = now.checked_to_offset(policy.timezone)?;
    Some(Local {
        day: l.weekday().into(),
        date: l.date(),
        minute: u16::from(l.hour()) * 60 + u16::from(l.minute()),
        midnight: l.replace_time(Time::MIDNIGHT).unix_timestamp(),
    })
}

/// What the applicable BCP declarations waive, and until when.
#[derive(Default)]
struct Waivers {
    hours_until: Option<i64>,
    plan_until: Option<i64>,
}

fn bcp_waivers<T: Tracer>(req: &Request, policy: &Policy, now_unix: i64, t: &mut T) -> Waivers {
    let mut w = Waivers::default();
    if req.bcp.is_empty() {
        check(t, "bcp", false, || "no BCP declaration".into());
        return w;
    }
    let (level, class) = (req.desk.level, req.device.class);
    let mut notes = Vec::new();
    for d in &req.bcp {
        let until = d.until.unix_timestamp();
        let scope = match &d.scope {
            BcpScope::All => "all".to_owned(),
            BcpScope::Dept(x) => format!("dept {x}"),
        };
        let in_scope = match &d.scope {
            BcpScope::All => true,
            BcpScope::Dept(x) => *x == req.desk.department,
        };
        let why = if now_unix >= until {
            Some(format!("expired at {}", fmt_unix(until, policy)))
        } else if !in_scope {
            Some(format!(
                "desk department {:?} out of scope",
                req.desk.department
            ))
        } else if !d.relax.covers(level, class) {
            Some(if level == Level::L3 && class == TerminalClass::Home {
                "BCP never relaxes level 3 from home".to_owned()
            } else {
                format!(
                    "covers levels {} × classes {}, not level {level} × {class}",
                    list(&d.relax.levels),
                    list(&d.relax.classes)
                )
            })
        } else if !d.relax.plan && !d.relax.hours {
            Some("relaxes nothing".to_owned())
        } else {
            if d.relax.hours {
                w.hours_until = Some(w.hours_until.map_or(until, |u| u.max(until)));
            }
            if d.relax.plan {
                w.plan_until = Some(w.plan_until.map_or(until, |u| u.max(until)));
            }
            None
        };
        if T::TRACING {
            notes.push(match why {
                Some(why) => format!("declaration ({scope}) does not apply: {why}"),
                None => format!(
                    "declaration ({scope}) waives {} until {}",
                    match (d.relax.hours, d.relax.plan) {
                        (true, true) => "hours and plan",
                        (true, false) => "hours",
                        _ => "plan",
                    },
                    fmt_unix(until, policy)
                ),
            });
        }
    }
    let applies = w.hours_until.is_some() || w.plan_until.is_some();
    check(t, "bcp", applies, || notes.join("; "));
    w
}

fn min_opt(a: Option<i64>, b: i64) -> Option<i64> {
    Some(a.map_or(b, |a| a.min(b)))
}

fn evaluate<T: Tracer>(req: &Request, policy: &Policy, now: OffsetDateTime, t: &mut T) -> Decision {
    let now_unix = now.unix_timestamp();
    let (level, class) = (req.desk.level, req.device.class);

    // 1. The My Number segment: never, whatever the rules or BCP say.
    if req.desk.segment == Segment::Mynumber {
        check(t, "segment", false, || {
            "mynumber segment: never reachable remotely (rules and BCP are not consulted)".into()
        });
        return Decision::deny(ReasonCode::SegmentMynumber, None);
    }
    check(t, "segment", true, || {
        format!("{} segment", req.desk.segment)
    });

    // 2. The device.
    let device_reason = device_reason(req.device.status);
    check(t, "device", device_reason.is_none(), || {
        format!("device {} is {}", req.device.id, req.device.status)
    });
    if let Some(r) = device_reason {
        return Decision::deny(r, None);
    }

    // 3. The first matching rule.
    let mut matched: Option<&Rule> = None;
    for rule in &policy.rules {
        if let Some(first) = matched {
            if !T::TRACING {
                break;
            }
            t.note(StepKind::Rule, &rule.id, false, || {
                format!("not evaluated: rule {} matched first", first.id)
            });
            continue;
        }
        let ok = rule.matches(level, class, &req.desk.department);
        t.note(StepKind::Rule, &rule.id, ok, || rule_why(rule, req));
        if ok {
            matched = Some(rule);
        }
    }

    // 4. Desk ownership. No role bypasses it; a rule may open the desk to its
    // department.
    let owner = req.desk.owners.contains(&req.user.id);
    if owner {
        check(t, "owner", true, || {
            format!("user {} owns desk {}", req.user.id, req.desk.id)
        });
    } else {
        let opened = matched.is_some_and(|r| {
            r.desk_access == DeskAccess::Department
                && !req.desk.department.is_empty()
                && req.user.department == req.desk.department
        });
        check(t, "owner", opened, || {
            if opened {
                format!(
                    "user {} is not an owner, but rule opens the desk to department {}",
                    req.user.id, req.desk.department
                )
            } else {
                format!(
                    "user {} is not an owner of desk {}",
                    req.user.id, req.desk.id
                )
            }
        });
        if !opened {
            return Decision::deny(ReasonCode::NotDeskOwner, matched);
        }
    }

    let Some(rule) = matched else {
        check(t, "effect", false, || {
            format!("no rule matches level {level} × {class}: deny by default")
        });
        return Decision::deny(ReasonCode::NoRule, None);
    };

    // 5. The rule's effect.
    check(t, "effect", rule.effect == Effect::Allow, || {
        let effect = match rule.effect {
            Effect::Allow => "allow",
            Effect::Deny => "deny",
        };
        format!("rule {} says {effect}", rule.id)
    });
    if rule.effect == Effect::Deny {
        return Decision::deny(ReasonCode::LevelNotPermitted, Some(rule));
    }

    let waivers = bcp_waivers(req, policy, now_unix, t);
    let local = local(now, policy);
    let mut end_at: Option<i64> = None;

    // 6. Hours.
    match rule.hours {
        Hours::Always => check(t, "hours", true, || "rule is not hour-limited".into()),
        Hours::WorkHours => {
            let wh = &policy.work_hours;
            let inside = local.as_ref().filter(|l| wh.contains(l.day, l.minute));
            let window_end = inside.map(|l| l.midnight + i64::from(wh.end.minutes()) * 60);
            let bound = match (window_end, waivers.hours_until) {
                (Some(e), Some(u)) => Some(e.max(u)),
                (Some(e), None) => Some(e),
                (None, u) => u,
            };
            check(t, "hours", bound.is_some(), || {
                let when = local.as_ref().map_or("out of range".to_owned(), |l| {
                    format!("{} {:02}:{:02}", l.day, l.minute / 60, l.minute % 60)
                });
                let window = format!("{} {}–{}", list(&wh.days), wh.start, wh.end);
                match (window_end, waivers.hours_until) {
                    (Some(_), _) => format!("{when} is inside {window}"),
                    (None, Some(_)) => format!("{when} is outside {window}, waived by BCP"),
                    (None, None) => format!("{when} is outside {window}"),
                }
            });
            match bound {
                Some(b) => end_at = min_opt(end_at, b),
                None => return Decision::deny(ReasonCode::OutsideHours, Some(rule)),
            }
        }
    }

    // 7. Plan.
    if rule.require_plan {
        let normal: Result<i64, ReasonCode> = match (&req.plan, &local) {
            (None, _) => Err(ReasonCode::PlanRequired),
            (Some(p), _) if !p.approved => Err(ReasonCode::PlanNotApproved),
            (Some(_), None) => Err(ReasonCode::PlanOtherDay),
            (Some(p), Some(l)) if p.date != l.date => Err(ReasonCode::PlanOtherDay),
            (Some(p), Some(l)) if !(p.start_min <= l.minute && l.minute < p.end_min) => {
                Err(ReasonCode::PlanOutsideWindow)
            }
            (Some(p), Some(l)) => Ok(l.midnight + i64::from(p.end_min.min(1440)) * 60),
        };
        let bound = match (normal, waivers.plan_until) {
            (Ok(e), Some(u)) => Ok(e.max(u)),
            (Ok(e), None) => Ok(e),
            (Err(_), Some(u)) => Ok(u),
            (Err(r), None) => Err(r),
        };
        check(t, "plan", bound.is_ok(), || {
            match (normal, waivers.plan_until) {
                (Ok(_), _) => "approved plan for today covers the time".into(),
                (Err(r), Some(_)) => format!("{r}, waived by BCP"),
                (Err(r), None) => r.to_string(),
            }
        });
        match bound {
            Ok(b) => end_at = min_opt(end_at, b),
            Err(r) => return Decision::deny(r, Some(rule)),
        }
    } else {
        check(t, "plan", true, || "rule does not require a plan".into());
    }

    // 8. Step-up.
    if rule.step_up {
        check(t, "step_up", req.step_up, || {
            if req.step_up {
                "a WebAuthn assertion was made for this session".into()
            } else {
                "rule requires a WebAuthn assertion for this session".into()
            }
        });
        if !req.step_up {
            return Decision::deny(ReasonCode::StepUpRequired, Some(rule));
        }
    }

    // 9. MFA freshness.
    if let Some(max_mins) = rule.mfa_max_age_mins {
        let max = u64::from(max_mins) * 60;
        let verdict = match req.mfa_age_secs {
            None => Err(ReasonCode::MfaRequired),
            Some(a) if a > max => Err(ReasonCode::MfaTooOld),
            Some(a) => Ok(max - a),
        };
        check(t, "mfa", verdict.is_ok(), || match req.mfa_age_secs {
            None => "no multi-factor authentication".into(),
            Some(a) => format!(
                "authenticated {} min ago, rule accepts up to {max_mins} min",
                a / 60
            ),
        });
        match verdict {
            Ok(left) => {
                let left = i64::try_from(left).unwrap_or(i64::MAX);
                end_at = min_opt(end_at, now_unix.saturating_add(left));
            }
            Err(r) => return Decision::deny(r, Some(rule)),
        }
    } else {
        check(t, "mfa", true, || "rule sets no MFA age limit".into());
    }

    let max_duration_secs = rule.max_duration_mins.map(|m| u64::from(m) * 60);
    if let Some(d) = max_duration_secs {
        let d = i64::try_from(d).unwrap_or(i64::MAX);
        end_at = min_opt(end_at, now_unix.saturating_add(d));
    }
    Decision::Allow {
        rule: rule.id.clone(),
        controls: rule.controls,
        limits: Limits {
            end_at: end_at.map(|e| u64::try_from(e).unwrap_or(0)),
            max_duration_secs,
            idle_timeout_secs: rule.idle_timeout_mins.map(|m| m.saturating_mul(60)),
            mfa_max_age_secs: rule.mfa_max_age_mins.map(|m| u64::from(m) * 60),
            step_up_required: rule.step_up,
        },
    }
}

fn rule_why(rule: &Rule, req: &Request) -> String {
    let (level, class) = (req.desk.level, req.device.class);
    let mut parts = Vec::new();
    let lv = rule.levels.contains(&level);
    parts.push(format!(
        "level {level} {} {}",
        if lv { "in" } else { "not in" },
        list(&rule.levels)
    ));
    let cl = rule.classes.contains(&class);
    parts.push(format!(
        "class {class} {} {}",
        if cl { "in" } else { "not in" },
        list(&rule.classes)
    ));
    match &rule.departments {
        None => parts.push("any department".into()),
        Some(d) => {
            let ok = d.contains(&req.desk.department);
            parts.push(format!(
                "department {:?} {} {}",
                req.desk.department,
                if ok { "in" } else { "not in" },
                list(d)
            ));
        }
    }
    parts.join(", ")
}

#[cfg(test)]
mod tests;
