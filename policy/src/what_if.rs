//! What-if questions about a policy, answered offline: how would this request
//! be decided at this instant ([`what_if_request`], [`explain_cli`]), and is this
//! policy file sound ([`check_cli`]). No database and no clock: the gateway's
//! `policy explain` / `policy check` commands and the officer portal's what-if
//! page pass everything in and print the result.

use std::fmt::Write as _;
use std::str::FromStr;

use time::format_description::well_known::Rfc3339;
use time::{Duration, OffsetDateTime};

use crate::decide::{explain, Decision, Explanation};
use crate::file::{check, PolicyError, Severity};
use crate::model::{BcpCtx, BcpScope, DeskCtx, DeviceCtx, PlanCtx, Request, UserCtx};
use crate::rules::{Controls, Policy};
use crate::vocab::{DeviceStatus, Level, Role, Segment, TerminalClass};

/// `--plan approved|none`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PlanArg {
    /// An approved plan for the day, covering the time asked about.
    Approved,
    /// No plan.
    #[default]
    None,
}

impl FromStr for PlanArg {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "approved" => Ok(PlanArg::Approved),
            "none" => Ok(PlanArg::None),
            other => Err(format!("unknown plan {other:?}: expected approved or none")),
        }
    }
}

/// A hypothetical request for the officer's what-if.
#[derive(Debug, Clone)]
pub struct ExplainArgs {
    /// The policy file's text.
    pub policy_text: String,
    /// `--level`.
    pub level: Level,
    /// `--class`.
    pub class: TerminalClass,
    /// `--segment`.
    pub segment: Segment,
    /// `--at`, RFC 3339 (`2026-01-15T09:00:00+09:00`).
    pub at: String,
    /// `--plan`.
    pub plan: PlanArg,
    /// `--bcp`: a BCP declaration for every department with the policy's
    /// default relaxation, valid for a day after `at`.
    pub bcp: bool,
    /// `--dept`: the department of the desk and of the person.
    pub dept: Option<String>,
    /// `--mfa-age`: minutes since the multi-factor login (default 0).
    pub mfa_age_mins: Option<u64>,
    /// `--json`.
    pub json: bool,
}

/// The hypothetical request: the person owns the desk, the device is active,
/// a step-up assertion is made when the rule asks for one.
pub fn what_if_request(args: &ExplainArgs, policy: &Policy, at: OffsetDateTime) -> Request {
    let dept = args.dept.clone().unwrap_or_default();
    let local_date = at
        .checked_to_offset(policy.timezone)
        .map_or(at.date(), |l| l.date());
    Request {
        user: UserCtx {
            id: "what-if-user".into(),
            department: dept.clone(),
            roles: vec![Role::Staff],
        },
        device: DeviceCtx {
            id: "what-if-device".into(),
            class: args.class,
            status: DeviceStatus::Active,
        },
        desk: DeskCtx {
            id: "what-if-desk".into(),
            level: args.level,
            segment: args.segment,
            department: dept,
            owners: vec!["what-if-user".into()],
        },
        plan: match args.plan {
            PlanArg::Approved => Some(PlanCtx {
                date: local_date,
                start_min: 0,
                end_min: 1440,
                approved: true,
            }),
            PlanArg::None => None,
        },
        bcp: if args.bcp {
            vec![BcpCtx {
                scope: BcpScope::All,
                relax: policy.bcp_default_relax.clone(),
                until: at.saturating_add(Duration::days(1)),
            }]
        } else {
            Vec::new()
        },
        mfa_age_secs: Some(args.mfa_age_mins.unwrap_or(0).saturating_mul(60)),
        step_up: true,
    }
}

/// Evaluate a hypothetical request against a policy file: human-readable
/// text, or with `json` exactly `{"allow", "reason", "controls", "limits",
/// "rule"}` (`reason` is null when allowed; `controls` and `limits` are null
/// when denied).
pub fn explain_cli(args: ExplainArgs) -> Result<String, PolicyError> {
    let policy = Policy::from_toml(&args.policy_text)?;
    let at =
        OffsetDateTime::parse(args.at.trim(), &Rfc3339).map_err(|e| PolicyError::Argument {
            field: "at",
            message: format!(
                "{:?} is not an RFC 3339 time such as 2026-01-15T09:00:00+09:00: {e}",
                args.at
            ),
        })?;
    let req = what_if_request(&args, &policy, at);
    let ex = explain(&req, &policy, at);

    if args.json {
        let v = match &ex.decision {
            Decision::Allow {
                rule,
                controls,
                limits,
            } => serde_json::json!({
                "allow": true,
                "reason": null,
                "controls": controls,
                "limits": limits,
                "rule": rule,
            }),
            Decision::Deny { reason, rule, .. } => serde_json::json!({
                "allow": false,
                "reason": reason.code(),
                "controls": null,
                "limits": null,
                "rule": rule,
            }),
        };
        return Ok(format!("{v}\n"));
    }

    let mut out = decision_text(&ex, &policy);
    let _ = writeln!(
        out,
        "仮定 / Request: level {}, class {}, segment {}, at {}, plan {}, bcp {}, dept {}, mfa age {} min",
        args.level,
        args.class,
        args.segment,
        at.checked_to_offset(policy.timezone)
            .and_then(|t| t.format(&Rfc3339).ok())
            .unwrap_or_else(|| args.at.clone()),
        match args.plan {
            PlanArg::Approved => "approved",
            PlanArg::None => "none",
        },
        if args.bcp { "declared (all, default relaxation)" } else { "none" },
        args.dept.as_deref().unwrap_or("-"),
        args.mfa_age_mins.unwrap_or(0),
    );
    let _ = writeln!(
        out,
        "  (the person owns the desk, the device is active, a step-up is made when asked)"
    );
    let _ = writeln!(out, "評価 / Steps:");
    out.push_str(&ex.to_string());
    Ok(out)
}

/// The decision of `ex` as `policy explain` prints it: allow with the rule,
/// the controls and the limits (times in the policy's time zone), or deny
/// with the reason and its sentences.
pub fn decision_text(ex: &Explanation, policy: &Policy) -> String {
    let mut out = String::new();
    let local = |unix: u64| {
        i64::try_from(unix)
            .ok()
            .and_then(|u| OffsetDateTime::from_unix_timestamp(u).ok())
            .and_then(|t| t.checked_to_offset(policy.timezone))
            .and_then(|t| t.format(&Rfc3339).ok())
            .unwrap_or_else(|| unix.to_string())
    };
    let opt = |v: Option<u64>, unit: &str| v.map_or("-".to_owned(), |v| format!("{v} {unit}"));
    match &ex.decision {
        Decision::Allow {
            rule,
            controls,
            limits,
        } => {
            let _ = writeln!(out, "判定 / Decision: 許可 / ALLOW  (rule {rule})");
            let _ = writeln!(out, "  制御 / controls: {}", controls_line(controls));
            let _ = writeln!(
                out,
                "  制限 / limits: end_at {}, max duration {}, idle timeout {}, mfa max age {}, step-up {}",
                limits.end_at.map_or("-".to_owned(), local),
                opt(limits.max_duration_secs.map(|s| s / 60), "min"),
                opt(limits.idle_timeout_secs.map(|s| u64::from(s) / 60), "min"),
                opt(limits.mfa_max_age_secs.map(|s| s / 60), "min"),
                if limits.step_up_required { "required" } else { "no" },
            );
        }
        Decision::Deny {
            reason,
            ja,
            en,
            rule,
        } => {
            let _ = writeln!(
                out,
                "判定 / Decision: 拒否 / DENY  [{reason}]{}",
                rule.as_ref()
                    .map_or(String::new(), |r| format!("  (rule {r})"))
            );
            let _ = writeln!(out, "  {ja}");
            let _ = writeln!(out, "  {en}");
        }
    }
    out
}

fn controls_line(c: &Controls) -> String {
    let yn = |b: bool| if b { "yes" } else { "no" };
    format!(
        "clipboard {}, drive {}, printer {}, ports {}, usb {}, audio {}, smartcard {}",
        serde_json::to_value(c.clipboard)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default(),
        yn(c.drive),
        yn(c.printer),
        yn(c.ports),
        yn(c.usb),
        yn(c.audio),
        yn(c.smartcard)
    )
}

/// `policy check`: the report to print, and whether the policy is usable
/// (no errors; warnings allowed).
pub fn check_cli(text: &str) -> (String, bool) {
    let diags = check(text);
    let errors = diags
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .count();
    let warnings = diags.len() - errors;
    let mut out = String::new();
    for d in &diags {
        let _ = writeln!(out, "{d}");
    }
    if errors == 0 {
        let rules = Policy::from_toml(text).map_or(0, |p| p.rules.len());
        let _ = writeln!(
            out,
            "OK: ルール{rules}件、エラーなし、警告{warnings}件 / rules: {rules}, errors: 0, warnings: {warnings}"
        );
    } else {
        let _ = writeln!(
            out,
            "NG: エラー{errors}件、警告{warnings}件 / errors: {errors}, warnings: {warnings}"
        );
    }
    (out, errors == 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::default::default_policy_toml;

    fn args(level: u8, class: &str, at: &str) -> ExplainArgs {
        ExplainArgs {
            policy_text: default_policy_toml().to_owned(),
            level: level.to_string().parse().unwrap(),
            class: class.parse().unwrap(),
            segment: Segment::Lgwan,
            at: at.into(),
            plan: PlanArg::None,
            bcp: false,
            dept: None,
            mfa_age_mins: None,
            json: true,
        }
    }

    fn json(a: ExplainArgs) -> serde_json::Value {
        serde_json::from_str(&explain_cli(a).unwrap()).unwrap()
    }

    #[test]
    fn json_has_exactly_the_documented_keys() {
        let mut a = args(2, "home", "2026-01-15T10:00:00+09:00");
        a.plan = PlanArg::Approved;
        let v = json(a.clone());
        let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["allow", "controls", "limits", "reason", "rule"]);
        assert_eq!(v["allow"], true);
        assert_eq!(v["reason"], serde_json::Value::Null);
        assert_eq!(v["rule"], "l2-home");
        assert_eq!(v["controls"]["clipboard"], "to-remote");
        assert_eq!(v["controls"]["printer"], false);
        // 17:15 +09:00 that day.
        assert_eq!(v["limits"]["end_at"], 1_768_464_900u64);
        assert_eq!(v["limits"]["step_up_required"], false);

        a.plan = PlanArg::None;
        let v = json(a);
        assert_eq!(v["allow"], false);
        assert_eq!(v["reason"], "plan_required");
        assert_eq!(v["controls"], serde_json::Value::Null);
        assert_eq!(v["limits"], serde_json::Value::Null);
        assert_eq!(v["rule"], "l2-home");
    }

    #[test]
    fn what_if_flags() {
        let v = json(args(3, "home", "2026-01-15T10:00:00+09:00"));
        assert_eq!(
            (v["reason"].as_str(), v["rule"].as_str()),
            (Some("level_not_permitted"), Some("l3-home-mobile"))
        );
        let v = json(args(3, "satellite", "2026-01-17T22:00:00+09:00"));
        assert_eq!(v["allow"], true);
        assert_eq!(v["limits"]["step_up_required"], true);
        let mut a = args(1, "home", "2026-01-17T10:00:00+09:00");
        assert_eq!(json(a.clone())["reason"], "outside_hours");
        a.bcp = true;
        assert_eq!(json(a.clone())["allow"], true);
        a.segment = Segment::Mynumber;
        assert_eq!(json(a.clone())["reason"], "segment_mynumber");
        let mut m = args(2, "mobile", "2026-01-15T10:00:00+09:00");
        m.mfa_age_mins = Some(601);
        assert_eq!(json(m)["reason"], "mfa_too_old");
    }

    #[test]
    fn dept_scoped_what_if() {
        let rule = "[[rules]]\nid = \"l2-mobile-zeimu-deny\"\nlevels = [2]\nclasses = [\"mobile\"]\ndepartments = [\"税務課\"]\neffect = \"deny\"\n\n";
        let mut a = args(2, "mobile", "2026-01-15T10:00:00+09:00");
        a.policy_text = default_policy_toml().replacen("[[rules]]", &format!("{rule}[[rules]]"), 1);
        a.dept = Some("税務課".into());
        let v = json(a.clone());
        assert_eq!(
            (v["reason"].as_str(), v["rule"].as_str()),
            (Some("level_not_permitted"), Some("l2-mobile-zeimu-deny"))
        );
        a.dept = Some("企画課".into());
        assert_eq!(json(a.clone())["rule"], "l2-mobile");
        a.dept = None;
        assert_eq!(json(a)["rule"], "l2-mobile");
    }

    #[test]
    fn human_output_is_bilingual_and_lists_steps() {
        let mut a = args(2, "home", "2026-01-15T18:00:00+09:00");
        a.json = false;
        let out = explain_cli(a).unwrap();
        assert!(
            out.starts_with("判定 / Decision: 拒否 / DENY  [outside_hours]  (rule l2-home)"),
            "{out}"
        );
        assert!(
            out.contains(ReasonCode::OutsideHours.ja())
                && out.contains(ReasonCode::OutsideHours.en())
        );
        assert!(out.contains("✓ rule  l2-home"), "{out}");
        assert!(out.contains("✗ check hours"), "{out}");
        let mut b = args(1, "satellite", "2026-01-15T18:00:00+09:00");
        b.json = false;
        let out = explain_cli(b).unwrap();
        assert!(
            out.contains("許可 / ALLOW") && out.contains("clipboard both, drive no, printer yes"),
            "{out}"
        );
    }

    #[test]
    fn bad_arguments_and_files_are_errors() {
        let a = args(1, "home", "yesterday");
        assert!(matches!(
            explain_cli(a),
            Err(PolicyError::Argument { field: "at", .. })
        ));
        let mut b = args(1, "home", "2026-01-15T10:00:00+09:00");
        b.policy_text = "[[rules]]\nid = 1\n".into();
        let e = explain_cli(b).unwrap_err();
        assert!(e.to_string().contains("line 2"), "{e}");
        assert!("4".parse::<Level>().is_err());
        assert!("office".parse::<TerminalClass>().is_err());
        assert!("maybe".parse::<PlanArg>().is_err());
    }

    #[test]
    fn check_cli_reports() {
        let (out, ok) = check_cli(default_policy_toml());
        assert!(ok, "{out}");
        assert!(out.contains("rules: 8, errors: 0"), "{out}");
        let (out, ok) =
            check_cli(&default_policy_toml().replacen("levels = [3]", "levels = [4]", 1));
        assert!(!ok);
        assert!(out.starts_with("line "), "{out}");
        assert!(
            out.contains("rules[0].levels[0]") && out.contains("errors: 1,"),
            "{out}"
        );
    }

    #[test]
    fn reason_json_codes_match_reason_enum() {
        for r in ReasonCode::ALL {
            assert_eq!(
                serde_json::Value::from(r.code()),
                serde_json::Value::from(r.to_string())
            );
        }
    }

    use crate::reason::ReasonCode;
}
