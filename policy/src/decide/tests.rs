//! Case tables for `decide`: every cell of the default policy, then the
//! edges of each check.

use rstest::rstest;
use time::format_description::well_known::Rfc3339;
use time::macros::date;
use time::OffsetDateTime;

use super::*;
use crate::model::*;
use crate::rules::*;
use crate::vocab::*;

/// Thursday 2026-01-15, local time `hm` (+09:00).
fn thu(hm: &str) -> OffsetDateTime {
    at(&format!("2026-01-15T{hm}:00+09:00"))
}

fn at(s: &str) -> OffsetDateTime {
    OffsetDateTime::parse(s, &Rfc3339).unwrap()
}

fn plan_today() -> Option<PlanCtx> {
    Some(PlanCtx {
        date: date!(2026 - 01 - 15),
        start_min: 8 * 60 + 30,
        end_min: 17 * 60 + 15,
        approved: true,
    })
}

/// The owner of an active terminal, fresh login (1 h), step-up made, with an
/// approved plan for Thursday 2026-01-15 08:30–17:15.
fn req(level: Level, class: TerminalClass, segment: Segment) -> Request {
    Request {
        user: UserCtx {
            id: "u1".into(),
            department: "企画課".into(),
            roles: vec![Role::Staff],
        },
        device: DeviceCtx {
            id: "d1".into(),
            class,
            status: DeviceStatus::Active,
        },
        desk: DeskCtx {
            id: "DESK-1".into(),
            level,
            segment,
            department: "企画課".into(),
            owners: vec!["u1".into()],
        },
        plan: plan_today(),
        bcp: Vec::new(),
        mfa_age_secs: Some(3600),
        step_up: true,
    }
}

fn bcp(until: OffsetDateTime) -> BcpCtx {
    BcpCtx {
        scope: BcpScope::All,
        relax: Policy::default().bcp_default_relax,
        until,
    }
}

#[track_caller]
fn assert_deny(d: &Decision, want: ReasonCode) {
    assert_eq!(d.reason(), Some(want), "{d:?}");
}

fn run(r: &Request, now: OffsetDateTime) -> Decision {
    let p = Policy::default();
    let d = decide(r, &p, now);
    assert_eq!(explain(r, &p, now).decision, d);
    d
}

use Clipboard::{Both, ToRemote};
use Level::{L1, L2, L3};
use Segment::{Internet, Lgwan};
use TerminalClass::{Home, Mobile, Satellite};

/// Every cell of DESIGN.md section 5, on both reachable segments, on a
/// Thursday at 10:00 with an approved plan and a step-up.
#[rstest]
#[case(L3, Home, Lgwan, Err(("l3-home-mobile", ReasonCode::LevelNotPermitted)))]
#[case(L3, Home, Internet, Err(("l3-home-mobile", ReasonCode::LevelNotPermitted)))]
#[case(L3, Mobile, Lgwan, Err(("l3-home-mobile", ReasonCode::LevelNotPermitted)))]
#[case(L3, Mobile, Internet, Err(("l3-home-mobile", ReasonCode::LevelNotPermitted)))]
#[case(L3, Satellite, Lgwan, Ok(("l3-satellite", ToRemote, true)))]
#[case(L3, Satellite, Internet, Ok(("l3-satellite", ToRemote, true)))]
#[case(L2, Home, Lgwan, Ok(("l2-home", ToRemote, false)))]
#[case(L2, Home, Internet, Ok(("l2-home", ToRemote, false)))]
#[case(L2, Mobile, Lgwan, Ok(("l2-mobile", ToRemote, false)))]
#[case(L2, Mobile, Internet, Ok(("l2-mobile", ToRemote, false)))]
#[case(L2, Satellite, Lgwan, Ok(("l2-satellite", Both, true)))]
#[case(L2, Satellite, Internet, Ok(("l2-satellite", Both, true)))]
#[case(L1, Home, Lgwan, Ok(("l1-home", Both, false)))]
#[case(L1, Home, Internet, Ok(("l1-home", Both, false)))]
#[case(L1, Mobile, Lgwan, Ok(("l1-mobile", Both, false)))]
#[case(L1, Mobile, Internet, Ok(("l1-mobile", Both, false)))]
#[case(L1, Satellite, Lgwan, Ok(("l1-satellite", Both, true)))]
#[case(L1, Satellite, Internet, Ok(("l1-satellite", Both, true)))]
fn default_policy_cell(
    #[case] level: Level,
    #[case] class: TerminalClass,
    #[case] segment: Segment,
    #[case] want: Result<(&str, Clipboard, bool), (&str, ReasonCode)>,
) {
    let d = run(&req(level, class, segment), thu("10:00"));
    match (want, &d) {
        (
            Ok((rule, clipboard, printer)),
            Decision::Allow {
                rule: r,
                controls,
                limits,
            },
        ) => {
            assert_eq!(r, rule);
            assert_eq!(controls.clipboard, clipboard);
            assert_eq!(controls.printer, printer);
            assert!(
                !controls.drive && !controls.usb && !controls.ports,
                "{controls:?}"
            );
            assert!(!controls.audio && !controls.smartcard, "{controls:?}");
            assert_eq!(limits.step_up_required, level == L3);
            assert_eq!(limits.mfa_max_age_secs, Some(600 * 60));
        }
        (
            Err((rule, reason)),
            Decision::Deny {
                reason: got,
                rule: r,
                ja,
                en,
            },
        ) => {
            assert_eq!(*got, reason);
            assert_eq!(r.as_deref(), Some(rule));
            assert_eq!((*ja, *en), (reason.ja(), reason.en()));
        }
        (want, got) => panic!("want {want:?}, got {got:?}"),
    }
}

/// The window is [08:30, 17:15): 08:30 is inside, 17:15 is not.
#[rstest]
#[case(Mobile, "08:29", false)]
#[case(Mobile, "08:30", true)]
#[case(Mobile, "17:14", true)]
#[case(Mobile, "17:15", false)]
#[case(Mobile, "17:16", false)]
#[case(Home, "08:29", false)]
#[case(Home, "08:30", true)]
#[case(Home, "17:15", false)]
#[case(Home, "17:16", false)]
#[case(Satellite, "03:00", true)]
#[case(Satellite, "23:59", true)]
fn hours_edges(#[case] class: TerminalClass, #[case] hm: &str, #[case] allowed: bool) {
    let mut r = req(L2, class, Lgwan);
    r.plan = Some(PlanCtx {
        start_min: 0,
        end_min: 1440,
        ..plan_today().unwrap()
    });
    let d = run(&r, thu(hm));
    if allowed {
        assert!(d.is_allow(), "{hm}: {d:?}");
    } else {
        assert_deny(&d, ReasonCode::OutsideHours);
    }
}

#[test]
fn seconds_before_the_window_are_outside() {
    let d = run(&req(L1, Mobile, Lgwan), at("2026-01-15T08:29:59+09:00"));
    assert_deny(&d, ReasonCode::OutsideHours);
    assert!(run(&req(L1, Mobile, Lgwan), at("2026-01-15T17:14:59+09:00")).is_allow());
}

#[test]
fn the_window_is_local_time_not_utc() {
    // 01:00 UTC is 10:00 in Tokyo.
    assert!(run(&req(L1, Mobile, Lgwan), at("2026-01-15T01:00:00Z")).is_allow());
    // 10:00 UTC is 19:00 in Tokyo.
    assert_deny(
        &run(&req(L1, Mobile, Lgwan), at("2026-01-15T10:00:00Z")),
        ReasonCode::OutsideHours,
    );
}

#[rstest]
#[case("2026-01-17T10:00:00+09:00")] // Saturday
#[case("2026-01-18T10:00:00+09:00")] // Sunday
fn weekends_are_outside_hours(#[case] when: &str) {
    let mut r = req(L1, Mobile, Lgwan);
    r.plan = None;
    assert_deny(&run(&r, at(when)), ReasonCode::OutsideHours);
    // Satellite offices are not hour-limited.
    assert!(run(&req(L1, Satellite, Lgwan), at(when)).is_allow());
}

fn plan(date: time::Date, approved: bool, start: u16, end: u16) -> Option<PlanCtx> {
    Some(PlanCtx {
        date,
        start_min: start,
        end_min: end,
        approved,
    })
}

#[rstest]
#[case(L2, None, Some(ReasonCode::PlanRequired))]
#[case(L1, None, Some(ReasonCode::PlanRequired))]
#[case(L2, plan(date!(2026 - 01 - 15), false, 510, 1035), Some(ReasonCode::PlanNotApproved))]
#[case(L2, plan(date!(2026 - 01 - 14), true, 510, 1035), Some(ReasonCode::PlanOtherDay))]
#[case(L1, plan(date!(2026 - 01 - 16), true, 510, 1035), Some(ReasonCode::PlanOtherDay))]
#[case(L2, plan(date!(2026 - 01 - 15), true, 780, 1035), Some(ReasonCode::PlanOutsideWindow))]
#[case(L2, plan(date!(2026 - 01 - 15), true, 510, 600), Some(ReasonCode::PlanOutsideWindow))]
#[case(L2, plan(date!(2026 - 01 - 15), true, 510, 601), None)]
#[case(L1, plan(date!(2026 - 01 - 15), true, 600, 601), None)]
fn plans_from_home(
    #[case] level: Level,
    #[case] plan: Option<PlanCtx>,
    #[case] want: Option<ReasonCode>,
) {
    let mut r = req(level, Home, Lgwan);
    r.plan = plan;
    let d = run(&r, thu("10:00"));
    assert_eq!(d.reason(), want, "{d:?}");
    // Mobile needs no plan at all.
    let mut m = req(level, Mobile, Lgwan);
    m.plan = plan;
    assert!(run(&m, thu("10:00")).is_allow());
}

#[test]
fn plan_end_bounds_the_session() {
    let mut r = req(L2, Home, Lgwan);
    r.plan = plan(date!(2026 - 01 - 15), true, 510, 12 * 60);
    let Decision::Allow { limits, .. } = run(&r, thu("10:00")) else {
        panic!()
    };
    assert_eq!(limits.end_at, Some(thu("12:00").unix_timestamp() as u64));
}

#[rstest]
fn mynumber_is_always_denied(
    #[values(L1, L2, L3)] level: Level,
    #[values(Home, Mobile, Satellite)] class: TerminalClass,
    #[values(false, true)] with_bcp: bool,
) {
    let mut r = req(level, class, Segment::Mynumber);
    if with_bcp {
        r.bcp.push(BcpCtx {
            scope: BcpScope::All,
            relax: BcpRelax {
                plan: true,
                hours: true,
                levels: Level::ALL.to_vec(),
                classes: TerminalClass::ALL.to_vec(),
            },
            until: thu("23:00"),
        });
    }
    // Even with a policy that allows everything at any time.
    let mut open = Policy::default();
    let mut all = Rule::new("all", Effect::Allow, &Level::ALL, TerminalClass::ALL);
    all.hours = Hours::Always;
    open.rules.insert(0, all);
    for p in [Policy::default(), open] {
        let d = decide(&r, &p, thu("10:00"));
        assert_deny(&d, ReasonCode::SegmentMynumber);
        assert_eq!(d.rule(), None);
    }
}

#[test]
fn bcp_waives_plan_and_hours_until_it_expires() {
    let mut r = req(L2, Home, Lgwan);
    r.plan = None;
    let evening = thu("20:00");
    assert_deny(&run(&r, evening), ReasonCode::OutsideHours);
    r.bcp.push(bcp(thu("22:00")));
    let Decision::Allow { rule, limits, .. } = run(&r, evening) else {
        panic!()
    };
    assert_eq!(rule, "l2-home");
    // The session ends when the declaration does.
    assert_eq!(limits.end_at, Some(thu("22:00").unix_timestamp() as u64));
    // Expired: at and after `until` it no longer applies.
    assert_deny(&run(&r, thu("22:00")), ReasonCode::OutsideHours);
    assert_deny(&run(&r, thu("23:00")), ReasonCode::OutsideHours);
    // Inside work hours an expired BCP leaves the plan requirement in place.
    r.bcp = vec![bcp(thu("09:00"))];
    assert_deny(&run(&r, thu("10:00")), ReasonCode::PlanRequired);
}

#[test]
fn bcp_inside_hours_keeps_the_later_end() {
    // Inside the window with a plan, a BCP until 12:00 must not cut the
    // session short: it ends at 17:15.
    let mut r = req(L2, Home, Lgwan);
    r.bcp.push(bcp(thu("12:00")));
    let Decision::Allow { limits, .. } = run(&r, thu("10:00")) else {
        panic!()
    };
    assert_eq!(limits.end_at, Some(thu("17:15").unix_timestamp() as u64));
    // Without a plan, the BCP waiver is needed and ends the session.
    r.plan = None;
    let Decision::Allow { limits, .. } = run(&r, thu("10:00")) else {
        panic!()
    };
    assert_eq!(limits.end_at, Some(thu("12:00").unix_timestamp() as u64));
}

#[test]
fn bcp_relaxes_only_what_it_is_configured_for() {
    let mut r = req(L1, Home, Lgwan);
    r.plan = None;
    let mut only_plan = bcp(thu("23:00"));
    only_plan.relax.hours = false;
    r.bcp.push(only_plan);
    assert!(run(&r, thu("10:00")).is_allow());
    assert_deny(&run(&r, thu("20:00")), ReasonCode::OutsideHours);
    // Not covering level 2.
    let mut r2 = req(L2, Home, Lgwan);
    r2.plan = None;
    let mut l1_only = bcp(thu("23:00"));
    l1_only.relax.levels = vec![L1];
    r2.bcp.push(l1_only);
    assert_deny(&run(&r2, thu("10:00")), ReasonCode::PlanRequired);
    // Never MFA or step-up.
    let mut r3 = req(L2, Mobile, Lgwan);
    r3.mfa_age_secs = Some(11 * 3600);
    r3.bcp.push(bcp(thu("23:00")));
    assert_deny(&run(&r3, thu("10:00")), ReasonCode::MfaTooOld);
}

#[test]
fn bcp_scope_is_the_desk_department() {
    let mut r = req(L2, Home, Lgwan);
    r.plan = None;
    let mut d = bcp(thu("23:00"));
    d.scope = BcpScope::Dept("税務課".into());
    r.bcp.push(d.clone());
    assert_deny(&run(&r, thu("10:00")), ReasonCode::PlanRequired);
    d.scope = BcpScope::Dept("企画課".into());
    r.bcp = vec![d];
    assert!(run(&r, thu("10:00")).is_allow());
}

#[test]
fn bcp_never_allows_level_3_from_home() {
    // A policy that would allow level 3 from home in work hours with a plan.
    let mut p = Policy::default();
    let mut l3home = Rule::new("l3-home-allow", Effect::Allow, &[L3], &[Home]);
    l3home.require_plan = true;
    p.rules.insert(0, l3home);
    let mut r = req(L3, Home, Lgwan);
    r.plan = None;
    r.bcp.push(BcpCtx {
        scope: BcpScope::All,
        relax: BcpRelax {
            plan: true,
            hours: true,
            levels: Level::ALL.to_vec(),
            classes: TerminalClass::ALL.to_vec(),
        },
        until: thu("23:00"),
    });
    assert_deny(&decide(&r, &p, thu("10:00")), ReasonCode::PlanRequired);
    assert_deny(&decide(&r, &p, thu("20:00")), ReasonCode::OutsideHours);
    // And with the default policy it stays the level-3 denial.
    assert_deny(&run(&r, thu("10:00")), ReasonCode::LevelNotPermitted);
}

#[test]
fn department_scoped_rules() {
    let mut p = Policy::default();
    let mut deny = Rule::new("zeimu-no-mobile", Effect::Deny, &[L2], &[Mobile]);
    deny.departments = Some(vec!["税務課".into()]);
    p.rules.insert(0, deny);
    let mut r = req(L2, Mobile, Lgwan);
    assert_eq!(decide(&r, &p, thu("10:00")).rule(), Some("l2-mobile"));
    r.desk.department = "税務課".into();
    let d = decide(&r, &p, thu("10:00"));
    assert_deny(&d, ReasonCode::LevelNotPermitted);
    assert_eq!(d.rule(), Some("zeimu-no-mobile"));
    // Level 1 is not in the rule.
    let mut r1 = req(L1, Mobile, Lgwan);
    r1.desk.department = "税務課".into();
    assert!(decide(&r1, &p, thu("10:00")).is_allow());
}

#[test]
fn ownership() {
    let mut r = req(L1, Mobile, Lgwan);
    r.user.id = "someone-else".into();
    r.user.roles = vec![Role::Officer, Role::Chief, Role::Operator];
    let d = run(&r, thu("10:00"));
    assert_deny(&d, ReasonCode::NotDeskOwner);
    assert_eq!(d.rule(), Some("l1-mobile"));
    // A rule may open the desk to its department, and only to it.
    let mut p = Policy::default();
    for rule in &mut p.rules {
        rule.desk_access = DeskAccess::Department;
    }
    assert!(decide(&r, &p, thu("10:00")).is_allow());
    r.user.department = "税務課".into();
    assert_deny(&decide(&r, &p, thu("10:00")), ReasonCode::NotDeskOwner);
    // Not the owner comes before no rule.
    let empty = Policy {
        rules: Vec::new(),
        ..Policy::default()
    };
    assert_deny(&decide(&r, &empty, thu("10:00")), ReasonCode::NotDeskOwner);
}

#[test]
fn no_rule_denies_by_default() {
    let mut p = Policy::default();
    p.rules.retain(|r| r.id != "l1-mobile");
    let d = decide(&req(L1, Mobile, Lgwan), &p, thu("10:00"));
    assert_deny(&d, ReasonCode::NoRule);
    assert_eq!(d.rule(), None);
}

#[rstest]
#[case(DeviceStatus::Blocked, ReasonCode::DeviceBlocked)]
#[case(DeviceStatus::Lost, ReasonCode::DeviceLost)]
#[case(DeviceStatus::Revoked, ReasonCode::DeviceRevoked)]
fn inactive_devices(#[case] status: DeviceStatus, #[case] want: ReasonCode) {
    for class in TerminalClass::ALL {
        let mut r = req(L1, *class, Lgwan);
        r.device.status = status;
        assert_deny(&run(&r, thu("10:00")), want);
    }
}

#[rstest]
#[case(L2, Mobile, Some(600 * 60), true, None)]
#[case(L2, Mobile, Some(600 * 60 + 1), true, Some(ReasonCode::MfaTooOld))]
#[case(L1, Home, Some(601 * 60), true, Some(ReasonCode::MfaTooOld))]
#[case(L1, Satellite, None, true, Some(ReasonCode::MfaRequired))]
#[case(L3, Satellite, Some(60), false, Some(ReasonCode::StepUpRequired))]
#[case(L3, Satellite, Some(11 * 3600), false, Some(ReasonCode::StepUpRequired))]
#[case(L3, Satellite, Some(0), true, None)]
#[case(L2, Satellite, Some(60), false, None)]
fn mfa_and_step_up(
    #[case] level: Level,
    #[case] class: TerminalClass,
    #[case] mfa_age_secs: Option<u64>,
    #[case] step_up: bool,
    #[case] want: Option<ReasonCode>,
) {
    let mut r = req(level, class, Lgwan);
    r.mfa_age_secs = mfa_age_secs;
    r.step_up = step_up;
    let d = run(&r, thu("10:00"));
    assert_eq!(d.reason(), want, "{d:?}");
}

#[test]
fn end_at_for_home_is_the_end_of_the_window() {
    let now = thu("10:00");
    let Decision::Allow { limits, .. } = run(&req(L2, Home, Lgwan), now) else {
        panic!()
    };
    let end = thu("17:15").unix_timestamp() as u64;
    assert_eq!(limits.end_at, Some(end));
    assert_eq!(limits.to_ticket().end_at, Some(end));
    // The MFA getting too old comes first when the login is old.
    let mut r = req(L1, Mobile, Lgwan);
    r.mfa_age_secs = Some(9 * 3600);
    let Decision::Allow { limits, .. } = run(&r, now) else {
        panic!()
    };
    assert_eq!(limits.end_at, Some(thu("11:00").unix_timestamp() as u64));
    // Satellite: only the MFA age bounds it.
    let Decision::Allow { limits, .. } = run(&req(L1, Satellite, Lgwan), now) else {
        panic!()
    };
    assert_eq!(
        limits.end_at,
        Some((now.unix_timestamp() + 9 * 3600) as u64)
    );
}

#[test]
fn max_duration_and_idle_timeout() {
    let mut p = Policy::default();
    for r in &mut p.rules {
        r.max_duration_mins = Some(30);
        r.idle_timeout_mins = Some(15);
    }
    let now = thu("10:00");
    let Decision::Allow { limits, .. } = decide(&req(L2, Home, Lgwan), &p, now) else {
        panic!()
    };
    assert_eq!(limits.end_at, Some(thu("10:30").unix_timestamp() as u64));
    assert_eq!(limits.max_duration_secs, Some(1800));
    assert_eq!(limits.idle_timeout_secs, Some(900));
    assert_eq!(limits.to_ticket().idle_timeout_secs, Some(900));
}

#[test]
fn explain_lists_every_rule() {
    let p = Policy::default();
    let ex = explain(&req(L2, Mobile, Lgwan), &p, thu("10:00"));
    let rules: Vec<&str> = ex
        .steps
        .iter()
        .filter(|s| s.kind == StepKind::Rule)
        .map(|s| s.rule.as_str())
        .collect();
    let all: Vec<&str> = p.rules.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(rules, all);
    let matched: Vec<&Step> = ex
        .steps
        .iter()
        .filter(|s| s.kind == StepKind::Rule && s.matched)
        .collect();
    assert_eq!(matched.len(), 1);
    assert_eq!(matched[0].rule, "l2-mobile");
    let after = ex.steps.iter().find(|s| s.rule == "l1-home").unwrap();
    assert!(after.why.contains("not evaluated"), "{after:?}");
    let before = ex.steps.iter().find(|s| s.rule == "l3-satellite").unwrap();
    assert!(before.why.contains("level 2 not in [3]"), "{before:?}");
    let text = ex.to_string();
    assert!(text.contains("✓ check hours"), "{text}");
}

#[test]
fn refusal_for_the_client() {
    let d = run(&req(L3, Home, Lgwan), thu("10:00"));
    let r = d.refusal().unwrap();
    assert_eq!(r.code, "level_not_permitted");
    assert_eq!(r.ja, ReasonCode::LevelNotPermitted.ja());
    assert_eq!(r.detail.as_deref(), Some("rule l3-home-mobile"));
    assert!(run(&req(L1, Satellite, Lgwan), thu("10:00"))
        .refusal()
        .is_none());
}

#[test]
fn extreme_times_do_not_panic() {
    for t in [
        OffsetDateTime::UNIX_EPOCH,
        time::PrimitiveDateTime::MIN.assume_utc(),
        time::PrimitiveDateTime::MAX.assume_utc(),
    ] {
        for class in TerminalClass::ALL {
            let _ = run(&req(L2, *class, Lgwan), t);
        }
    }
}
