//! Property tests: invariants that must hold for every policy, request and
//! time, not only for the cases in the tables.

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::subsequence;
use time::{Duration, OffsetDateTime, UtcOffset};

use crate::*;

/// Thursday 2026-01-15 00:00 +09:00.
const BASE: i64 = 1_768_402_800;

fn level() -> impl Strategy<Value = Level> {
    prop::sample::select(Level::ALL.to_vec())
}
fn class() -> impl Strategy<Value = TerminalClass> {
    prop::sample::select(TerminalClass::ALL.to_vec())
}
/// Mostly reachable segments, so that later checks get exercised.
fn segment() -> impl Strategy<Value = Segment> {
    prop_oneof![4 => Just(Segment::Lgwan), 4 => Just(Segment::Internet), 1 => Just(Segment::Mynumber)]
}
fn status() -> impl Strategy<Value = DeviceStatus> {
    prop_oneof![12 => Just(DeviceStatus::Active), 1 => prop::sample::select(DeviceStatus::ALL.to_vec())]
}
fn dept() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "企画課".to_owned(),
        "税務課".to_owned(),
        String::new(),
    ])
}

/// Whole seconds within a week around BASE, in a random offset.
fn near_time() -> impl Strategy<Value = OffsetDateTime> {
    (-3 * 86_400i64..4 * 86_400, -12i8..=14).prop_map(|(s, h)| {
        let t = OffsetDateTime::from_unix_timestamp(BASE + s).unwrap();
        t.to_offset(UtcOffset::from_hms(h, 0, 0).unwrap())
    })
}

/// Any representable instant.
fn any_time() -> impl Strategy<Value = OffsetDateTime> {
    let (lo, hi) = (
        time::PrimitiveDateTime::MIN.assume_utc().unix_timestamp(),
        time::PrimitiveDateTime::MAX.assume_utc().unix_timestamp(),
    );
    prop_oneof![
        (lo..=hi, 0u32..1_000_000_000, -86_399i32..86_400).prop_map(|(s, ns, off)| {
            let t = OffsetDateTime::from_unix_timestamp(s).unwrap();
            let t = t.replace_nanosecond(ns).unwrap_or(t);
            UtcOffset::from_whole_seconds(off)
                .ok()
                .and_then(|o| t.checked_to_offset(o))
                .unwrap_or(t)
        }),
        near_time(),
    ]
}

fn relax() -> impl Strategy<Value = BcpRelax> {
    (
        any::<bool>(),
        any::<bool>(),
        subsequence(Level::ALL.to_vec(), 0..=3),
        subsequence(TerminalClass::ALL.to_vec(), 0..=3),
    )
        .prop_map(|(plan, hours, levels, classes)| BcpRelax {
            plan,
            hours,
            levels,
            classes,
        })
}

fn bcp_ctx() -> impl Strategy<Value = BcpCtx> {
    (
        prop_oneof![Just(BcpScope::All), dept().prop_map(BcpScope::Dept)],
        relax(),
        near_time(),
    )
        .prop_map(|(scope, relax, until)| BcpCtx {
            scope,
            relax,
            until,
        })
}

fn request() -> impl Strategy<Value = Request> {
    let plan = proptest::option::of(
        (-2i64..=2, 0u16..=1440, 0u16..=1440, any::<bool>()).prop_map(|(d, a, b, approved)| {
            PlanCtx {
                date: time::macros::date!(2026 - 01 - 15) + Duration::days(d),
                start_min: a.min(b),
                end_min: a.max(b),
                approved,
            }
        }),
    );
    (
        (
            prop_oneof![4 => Just("u1"), 1 => Just("u2")],
            dept(),
            dept(),
        ),
        (class(), status()),
        (
            level(),
            segment(),
            prop_oneof![4 => Just(vec!["u1"]), 1 => subsequence(vec!["u1", "u2"], 0..=2)],
        ),
        plan,
        vec(bcp_ctx(), 0..3),
        prop_oneof![1 => Just(None), 6 => (0u64..12 * 3600).prop_map(Some)],
        any::<bool>(),
    )
        .prop_map(
            |(
                (user, udept, ddept),
                (class, status),
                (level, segment, owners),
                plan,
                bcp,
                mfa,
                step_up,
            )| {
                Request {
                    user: UserCtx {
                        id: user.into(),
                        department: udept,
                        roles: vec![Role::Staff],
                    },
                    device: DeviceCtx {
                        id: "d".into(),
                        class,
                        status,
                    },
                    desk: DeskCtx {
                        id: "k".into(),
                        level,
                        segment,
                        department: ddept,
                        owners: owners.into_iter().map(str::to_owned).collect(),
                    },
                    plan,
                    bcp,
                    mfa_age_secs: mfa,
                    step_up,
                }
            },
        )
}

fn rule(id: String) -> impl Strategy<Value = Rule> {
    (
        (
            subsequence(Level::ALL.to_vec(), 1..=3),
            subsequence(TerminalClass::ALL.to_vec(), 1..=3),
            proptest::option::of(subsequence(
                vec!["企画課".to_owned(), "税務課".to_owned()],
                1..=2,
            )),
            prop_oneof![3 => Just(Effect::Allow), 1 => Just(Effect::Deny)],
            prop_oneof![Just(Hours::WorkHours), Just(Hours::Always)],
        ),
        (
            any::<bool>(),
            proptest::option::of(1u32..=MAX_MINUTES),
            any::<bool>(),
            proptest::option::of(1u32..=MAX_MINUTES),
            proptest::option::of(1u32..=1440),
            prop_oneof![Just(DeskAccess::Owners), Just(DeskAccess::Department)],
        ),
        (
            prop::sample::select(vec![
                Clipboard::None,
                Clipboard::ToRemote,
                Clipboard::ToLocal,
                Clipboard::Both,
            ]),
            any::<[bool; 6]>(),
            "[a-zA-Z0-9 機密性レベル\"'\\\\#\n]{0,20}",
        ),
    )
        .prop_map(move |(m, c, (clipboard, b, description))| Rule {
            id: id.clone(),
            description,
            levels: m.0,
            classes: m.1,
            departments: m.2,
            effect: m.3,
            hours: m.4,
            require_plan: c.0,
            mfa_max_age_mins: c.1,
            step_up: c.2,
            max_duration_mins: c.3,
            idle_timeout_mins: c.4,
            desk_access: c.5,
            controls: Controls {
                clipboard,
                drive: b[0],
                printer: b[1],
                ports: b[2],
                usb: b[3],
                audio: b[4],
                smartcard: b[5],
            },
        })
}

fn policy() -> impl Strategy<Value = Policy> {
    let random = (
        (0usize..6).prop_flat_map(|n| (0..n).map(|i| rule(format!("r{i}"))).collect::<Vec<_>>()),
        subsequence(Day::ALL.to_vec(), 1..=7),
        (0u16..1440, 1u16..=1440),
        -12i8..=14,
        relax(),
    )
        .prop_map(|(rules, days, (a, b), tz, bcp_default_relax)| {
            let (start, end) = if a < b {
                (a, b)
            } else {
                (b.saturating_sub(1), a.max(1))
            };
            let start = start.min(end - 1);
            Policy {
                rules,
                work_hours: WorkHours {
                    days,
                    start: TimeOfDay::hm(start / 60, start % 60).unwrap(),
                    end: TimeOfDay::hm(end / 60, end % 60).unwrap(),
                },
                timezone: UtcOffset::from_hms(tz, 0, 0).unwrap(),
                bcp_default_relax,
            }
        });
    prop_oneof![1 => Just(Policy::default()), 3 => random]
}

fn deny_rule() -> impl Strategy<Value = Rule> {
    rule("inserted-deny".into()).prop_map(|mut r| {
        r.effect = Effect::Deny;
        r
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn explain_and_decide_agree(p in policy(), r in request(), now in any_time()) {
        prop_assert_eq!(explain(&r, &p, now).decision, decide(&r, &p, now));
    }

    #[test]
    fn adding_a_deny_rule_never_allows_more(
        p in policy(), r in request(), now in near_time(), extra in deny_rule(), pos in any::<prop::sample::Index>(),
    ) {
        let before = decide(&r, &p, now);
        for at in [0, pos.index(p.rules.len() + 1)] {
            let mut q = p.clone();
            q.rules.insert(at, extra.clone());
            let after = decide(&r, &q, now);
            if after.is_allow() {
                prop_assert_eq!(&after, &before);
            }
        }
    }

    #[test]
    fn bcp_never_allows_mynumber(p in policy(), mut r in request(), now in any_time(), b in vec(bcp_ctx(), 1..4)) {
        r.desk.segment = Segment::Mynumber;
        r.bcp = b;
        prop_assert_eq!(decide(&r, &p, now).reason(), Some(ReasonCode::SegmentMynumber));
    }

    #[test]
    fn bcp_never_allows_level_3_from_home(p in policy(), mut r in request(), now in near_time(), b in vec(bcp_ctx(), 1..4)) {
        r.desk.level = Level::L3;
        r.device.class = TerminalClass::Home;
        r.bcp = b;
        let with = decide(&r, &p, now);
        let mut without = r.clone();
        without.bcp.clear();
        prop_assert_eq!(&with, &decide(&without, &p, now));
        prop_assert!(!decide(&r, &Policy::default(), now).is_allow());
    }

    #[test]
    fn allowed_sessions_stay_allowed_until_end_at(
        p in policy(), r in request(), now in near_time(), frac in 0.0f64..1.0,
    ) {
        if let Decision::Allow { limits, .. } = decide(&r, &p, now) {
            let start = now.unix_timestamp();
            let end = limits.end_at.map_or(start + 2 * 86_400, |e| e as i64);
            prop_assert!(end > start, "end_at {end} not after now {start}");
            // A fraction of the window, rounded down: truncation is the point.
            #[allow(clippy::cast_possible_truncation, reason = "floor of a fraction of an i64 span")]
            let later = start + ((end - start - 1) as f64 * frac) as i64;
            let mut r2 = r.clone();
            r2.mfa_age_secs = r.mfa_age_secs.map(|a| a + (later - start) as u64);
            let t = OffsetDateTime::from_unix_timestamp(later).unwrap();
            let d = decide(&r2, &p, t);
            prop_assert!(d.is_allow(), "allowed at {now}, end_at {end}, but at {t}: {d:?}");
        }
    }

    #[test]
    fn toml_round_trip(p in policy()) {
        if p.validate().is_ok() {
            let text = p.to_toml().unwrap();
            prop_assert_eq!(Policy::from_toml(&text).unwrap(), p, "{}", text);
        }
    }

    #[test]
    fn check_never_panics(text in "[a-z_\\[\\]=\" 0-9.\n#-]{0,200}") {
        let _ = check(&text);
        let _ = check_cli(&text);
    }

    #[test]
    fn check_never_panics_on_mutated_default(pos in any::<prop::sample::Index>(), junk in "[\\[\\]=\"\n0-9a-z]{1,4}") {
        let base = default_policy_toml();
        let mut at = pos.index(base.len());
        while !base.is_char_boundary(at) { at -= 1; }
        let text = format!("{}{}{}", &base[..at], junk, &base[at..]);
        for d in check(&text) {
            prop_assert!(d.line >= 1 && d.col >= 1, "{:?}", d);
        }
    }
}
