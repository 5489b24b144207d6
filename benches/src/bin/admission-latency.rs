//! Latency of the gateway's admission decision, side by side with the pure
//! policy decision it wraps:
//!
//! * **admission**: `kakehashi_relay::admission::decide` — the policy
//!   request built from the store (user, device, desk with owners, the
//!   person's plans, BCP declarations in force; SQLite on local disk, WAL)
//!   and decided with the live policy. This is what a session request costs
//!   at the gateway between the login check and the ticket, and what the
//!   live re-evaluation costs per session.
//! * **decide**: `kakehashi_policy::decide` on the same requests, already built.
//!
//! ```text
//! cargo run --release -p kakehashi-benches --bin admission-latency -- --users 4000 --requests 20000
//! ```

use std::time::Instant;

use anyhow::Context as _;
use clap::Parser;
use hdrhistogram::Histogram;
use kakehashi_policy as pol;
use kakehashi_relay::admission::{self, Asker};
use kakehashi_store::{
    Audit, BcpScope, BcpSpec, Desk, DeviceClass, DeviceSpec, NewUser, PlanSpec, Role, Segment,
    Store,
};

#[derive(Parser, Debug)]
struct Args {
    /// Staff, each with a laptop and a desk.
    #[arg(long, default_value_t = 4000)]
    users: usize,
    /// Decisions timed.
    #[arg(long, default_value_t = 20000)]
    requests: usize,
    /// PostgreSQL URL instead of a temporary SQLite file.
    #[arg(long)]
    store: Option<String>,
}

fn pct(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let dir = tempfile::tempdir()?;
    let url = args
        .store
        .clone()
        .unwrap_or_else(|| format!("sqlite://{}", dir.path().join("bench.db").display()));
    let store = Store::open(&url).await.context("open store")?;
    let now = kakehashi_store::unix_now();
    let t = Instant::now();
    let classes = [
        (DeviceClass::Home, pol::TerminalClass::Home),
        (DeviceClass::Mobile, pol::TerminalClass::Mobile),
        (DeviceClass::Satellite, pol::TerminalClass::Satellite),
    ];
    let today = {
        let l = time::OffsetDateTime::now_utc().to_offset(time::UtcOffset::from_hms(9, 0, 0)?);
        kakehashi_store::localtime::ymd(l.date())
    };
    for i in 0..args.users {
        let id = format!("u{i:05}");
        let dept = format!("dept-{:02}", i % 40);
        let a = || Audit::new(now, "bench", "seed");
        store
            .add_user(
                &NewUser {
                    id: id.clone(),
                    name: id.clone(),
                    department: dept.clone(),
                    roles: [Role::Staff].into(),
                },
                a(),
            )
            .await?;
        store
            .upsert_device(
                &DeviceSpec {
                    id: format!("PC-{i:05}"),
                    class: classes[i % 3].0,
                    loaned_to: Some(id.clone()),
                    cert_serial: None,
                },
                a(),
            )
            .await?;
        store
            .add_desk(
                &Desk {
                    id: format!("DESK-{i:05}"),
                    department: dept,
                    level: (i % 3 + 1) as u8,
                    segment: Segment::Lgwan,
                    service: kakehashi_store::DeskService::Rdp,
                    owners: [id.clone()].into(),
                },
                a(),
            )
            .await?;
        if i % 2 == 0 {
            let p = store
                .submit_plan(
                    &PlanSpec {
                        user_id: id.clone(),
                        date: today.clone(),
                        start_min: 510,
                        end_min: 1035,
                        place: "自宅".into(),
                    },
                    a(),
                )
                .await?;
            store.decide_plan(&p.id, true, a()).await?;
        }
    }
    store
        .declare_bcp(
            &BcpSpec {
                scope: BcpScope::Department("dept-07".into()),
                reason: "bench".into(),
                relax: serde_json::to_value(&pol::Policy::default().bcp_default_relax)?,
                starts_at: now,
                ends_at: now + 86_400,
            },
            Audit::new(now, "bench", "bcp.declare"),
        )
        .await?;
    eprintln!(
        "seeded {} users, devices and desks in {:.1}s ({url})",
        args.users,
        t.elapsed().as_secs_f64()
    );

    let policy = pol::Policy::default();
    let at = time::OffsetDateTime::now_utc();
    let askers: Vec<Asker> = (0..args.requests)
        .map(|n| {
            let i = (n * 7919) % args.users;
            Asker {
                user: format!("u{i:05}"),
                login_at: now - 3600,
                device: format!("PC-{i:05}"),
                class: classes[i % 3].1,
                desk: format!("DESK-{i:05}"),
                step_up: n % 2 == 0,
            }
        })
        .collect();
    // Warm up (page cache, statement cache).
    for a in askers.iter().take(1000) {
        std::hint::black_box(admission::decide(&store, a, &policy, at).await);
    }
    let mut full = Histogram::<u64>::new(3)?;
    let mut requests = Vec::with_capacity(askers.len());
    let (mut allowed, mut denied) = (0u64, 0u64);
    for a in &askers {
        let t = Instant::now();
        let out = admission::decide(&store, a, &policy, at).await;
        full.record(t.elapsed().as_nanos() as u64)?;
        match out {
            admission::Outcome::Allow { .. } => allowed += 1,
            admission::Outcome::Deny { .. } => denied += 1,
        }
        if let Ok((req, _)) = admission::request(&store, a, &policy, at).await {
            requests.push(req);
        }
    }
    let mut pure = Histogram::<u64>::new(3)?;
    for _ in 0..10 {
        for r in &requests {
            let t = Instant::now();
            std::hint::black_box(pol::decide(std::hint::black_box(r), &policy, at));
            pure.record(t.elapsed().as_nanos() as u64)?;
        }
    }
    println!(
        "admission (store + decide): p50 {:.1} µs  p99 {:.1} µs  max {:.1} µs  ({} decisions: {allowed} allowed, {denied} denied)",
        pct(&full, 0.5),
        pct(&full, 0.99),
        full.max() as f64 / 1000.0,
        full.len()
    );
    println!(
        "decide (pure):              p50 {:.3} µs  p99 {:.3} µs  ({} decisions)",
        pct(&pure, 0.5),
        pct(&pure, 0.99),
        pure.len()
    );
    // Live re-evaluation: one snapshot of the store, then every session.
    let mut agree = 0usize;
    let t = Instant::now();
    let snap = admission::Snapshot::load(&store, &policy, at).await?;
    let loaded = t.elapsed();
    for a in &askers {
        let s = snap.decide(a, &policy, at);
        let d = admission::decide(&store, a, &policy, at).await;
        if std::mem::discriminant(&s) == std::mem::discriminant(&d) {
            agree += 1;
        }
    }
    assert_eq!(agree, askers.len(), "snapshot and store decisions differ");
    let t = Instant::now();
    for a in &askers {
        std::hint::black_box(snap.decide(a, &policy, at));
    }
    let each = t.elapsed();
    println!(
        "re-evaluation of {} live sessions: snapshot load {:.1} ms + decisions {:.1} ms = {:.1} ms (one by one from the store: ~{:.0} ms at p50)",
        askers.len(),
        loaded.as_secs_f64() * 1e3,
        each.as_secs_f64() * 1e3,
        (loaded + each).as_secs_f64() * 1e3,
        pct(&full, 0.5) * askers.len() as f64 / 1e3
    );
    Ok(())
}
