//! Latency of `decide` on the default policy: 1,000,000 decisions over a mixed
//! set of requests (every level × class, both segments, mynumber, plans, BCP,
//! blocked devices, non-owners, evenings and weekends), timed one by one.
//!
//! ```text
//! cargo run --release -p kakehashi-policy --example decide_latency
//! ```

use std::hint::black_box;
use std::time::Instant;

use kakehashi_policy::*;
use time::macros::{date, datetime};
use time::OffsetDateTime;

fn main() {
    let policy = Policy::default();
    let times: Vec<OffsetDateTime> = vec![
        datetime!(2026-01-15 10:00 +09:00),
        datetime!(2026-01-15 08:29 +09:00),
        datetime!(2026-01-15 17:14 +09:00),
        datetime!(2026-01-15 20:00 +09:00),
        datetime!(2026-01-17 11:00 +09:00),
    ];
    let mut requests = Vec::new();
    for (i, level) in Level::ALL.into_iter().enumerate() {
        for (j, class) in TerminalClass::ALL.iter().copied().enumerate() {
            for (k, segment) in Segment::ALL.iter().copied().enumerate() {
                for variant in 0..4 {
                    let n = i * 100 + j * 10 + k + variant;
                    requests.push(Request {
                        user: UserCtx {
                            id: format!("user-{}", n % 7),
                            department: "企画課".into(),
                            roles: vec![Role::Staff],
                        },
                        device: DeviceCtx {
                            id: format!("dev-{n}"),
                            class,
                            status: if n % 23 == 0 {
                                DeviceStatus::Blocked
                            } else {
                                DeviceStatus::Active
                            },
                        },
                        desk: DeskCtx {
                            id: format!("DESK-{n}"),
                            level,
                            segment,
                            department: "企画課".into(),
                            owners: if variant == 3 {
                                vec!["someone-else".into()]
                            } else {
                                vec![format!("user-{}", n % 7)]
                            },
                        },
                        plan: (variant != 1).then_some(PlanCtx {
                            date: date!(2026 - 01 - 15),
                            start_min: 510,
                            end_min: 1035,
                            approved: variant != 2,
                        }),
                        bcp: if variant == 2 {
                            vec![BcpCtx {
                                scope: BcpScope::All,
                                relax: policy.bcp_default_relax.clone(),
                                until: datetime!(2026-01-16 00:00 +09:00),
                            }]
                        } else {
                            Vec::new()
                        },
                        mfa_age_secs: Some((n as u64 * 997) % (11 * 3600)),
                        step_up: n % 2 == 0,
                    });
                }
            }
        }
    }

    const N: usize = 1_000_000;
    let mut samples = Vec::with_capacity(N);
    let mut allowed = 0usize;
    // Warm up.
    for i in 0..10_000 {
        black_box(decide(
            &requests[i % requests.len()],
            &policy,
            times[i % times.len()],
        ));
    }
    let total = Instant::now();
    for i in 0..N {
        let r = &requests[i % requests.len()];
        let now = times[(i / requests.len()) % times.len()];
        let t = Instant::now();
        let d = decide(black_box(r), black_box(&policy), black_box(now));
        let ns = t.elapsed().as_nanos() as u64;
        allowed += usize::from(d.is_allow());
        black_box(d);
        samples.push(ns);
    }
    let wall = total.elapsed();
    samples.sort_unstable();
    let pct = |p: f64| samples[((N as f64 * p) as usize).min(N - 1)];
    println!(
        "decide: {N} decisions over {} requests × {} times ({:.1}% allowed), default policy ({} rules)",
        requests.len(),
        times.len(),
        100.0 * allowed as f64 / N as f64,
        policy.rules.len()
    );
    println!(
        "p50 {} ns, p99 {} ns, p99.9 {} ns, max {} ns; mean {:.0} ns including timer overhead",
        pct(0.50),
        pct(0.99),
        pct(0.999),
        samples[N - 1],
        wall.as_nanos() as f64 / N as f64
    );
}
