//! `audit-seal`: the store's side of a login storm on PostgreSQL (issue 18
//! item 8, the store layer of P10), with the audit chain taken by every
//! write ("inline", as SQLite and PostgreSQL did before) against the
//! records sealed in batches by a sealer ("sealed", `Store::seal_later`),
//! side by side on the same server, optionally with a delay added to every
//! fsync of the server (an LD_PRELOAD shim, `benches/fsync-delay.c`, which
//! `benches/audit-seal.sh` builds and passes in `--preload`).
//!
//! One login is the four audited writes a real one makes after its WebAuthn
//! checks: the signature counter (`update_credential`), the one-time code
//! (`create_login_code`), the code spent (`consume_login_code`) and the
//! token (`create_login_token`). `--gateways N` opens N stores (each its own
//! connection pool and sealer, as N gateways would); workers spread over
//! them. Prints a progress line per round and a JSON summary; the chain is
//! verified after every round.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::Parser;
use kakehashi_benches::stats::Hist;
use kakehashi_store::{
    Audit, DeviceClass, DeviceSpec, Hash256, NewCredential, NewLoginCode, NewLoginToken, NewUser,
    Store,
};
use serde_json::json;

#[derive(Parser, Debug)]
#[command(
    name = "audit-seal",
    about = "Login writes per second: audit chain inline vs sealed"
)]
struct Args {
    /// Logins per round.
    #[arg(long, default_value_t = 3000)]
    logins: u64,
    /// Logins in flight at once (a gateway's pool holds 16 connections).
    #[arg(long, default_value_t = 48)]
    workers: usize,
    /// Stores (gateways) the workers spread over.
    #[arg(long, default_value_t = 3)]
    gateways: usize,
    /// Rounds per mode, alternating inline / sealed.
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// Microseconds added to every fsync of the server (0: none).
    #[arg(long, default_value_t = 0)]
    fsync_delay_us: u64,
    /// The shim that adds the delay (built by benches/audit-seal.sh).
    #[arg(long)]
    preload: Option<PathBuf>,
}

fn audit(action: &str) -> Audit {
    Audit::new(kakehashi_store::unix_now(), "bench", action)
}

/// A database with one user, one laptop and one credential per worker.
async fn seed(url: &str, workers: usize) -> anyhow::Result<()> {
    let s = Store::open(url).await?;
    for w in 0..workers {
        let user = format!("u{w}");
        s.add_user(
            &NewUser {
                id: user.clone(),
                name: "bench".into(),
                department: "d".into(),
                roles: Default::default(),
            },
            audit("user.add").subject(&user),
        )
        .await?;
        s.upsert_device(
            &DeviceSpec {
                id: format!("PC-{w}"),
                class: DeviceClass::Home,
                loaned_to: None,
                cert_serial: Some("01".into()),
            },
            audit("device.add"),
        )
        .await?;
        s.add_credential(
            &NewCredential {
                cred_id: format!("cred-{w}").into_bytes(),
                user_id: user.clone(),
                passkey: "{}".into(),
                counter: 0,
                attested: false,
            },
            audit("credential.add").subject(&user),
        )
        .await?;
    }
    s.close().await;
    Ok(())
}

/// One login's four audited writes for worker `w`'s `n`th login.
async fn login(s: &Store, w: usize, n: u64, tag: &str, counter: u32) -> anyhow::Result<()> {
    let user = format!("u{w}");
    s.update_credential(
        format!("cred-{w}").as_bytes(),
        counter,
        "{}",
        audit("login.assertion").subject(&user),
    )
    .await?;
    let code = Hash256::digest(format!("code-{tag}-{w}-{n}"));
    let now = kakehashi_store::unix_now();
    s.create_login_code(
        &NewLoginCode {
            code_hash: code,
            user_id: user.clone(),
            pkce_challenge: "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM".into(),
            device_id: format!("PC-{w}"),
            expires_at: now + 60,
        },
        audit("login.code").subject(&user),
    )
    .await?;
    s.consume_login_code(&code, audit("login.code.redeem").subject(&user))
        .await?;
    s.create_login_token(
        &NewLoginToken {
            token_hash: Hash256::digest(format!("token-{tag}-{w}-{n}")),
            user_id: user.clone(),
            device_id: format!("PC-{w}"),
            cert_serial: "01".into(),
            expires_at: now + 36_000,
        },
        audit("login.token").subject(&user),
    )
    .await?;
    Ok(())
}

async fn round(
    a: &Args,
    url: &str,
    sealed: bool,
    tag: &str,
    counters: &[AtomicU64],
) -> anyhow::Result<serde_json::Value> {
    let mut stores = Vec::new();
    for _ in 0..a.gateways.max(1) {
        stores.push(kakehashi_store::Store::open(url).await?.seal_later(sealed));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let mut sealers = Vec::new();
    if sealed {
        for s in &stores {
            let (s, stop) = (s.clone(), stop.clone());
            sealers.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    if let Err(e) = s.seal_pending().await {
                        eprintln!("seal: {e}");
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }));
        }
    }
    let next = Arc::new(AtomicU64::new(0));
    let hist = Arc::new(Hist::default());
    let errors = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..a.workers {
        let s = stores[w % stores.len()].clone();
        let next = next.clone();
        let total = a.logins;
        let start_counter = counters[w].load(Ordering::Relaxed);
        let (hist, errors, tag) = (hist.clone(), errors.clone(), tag.to_owned());
        tasks.push(tokio::spawn(async move {
            let mut counter = u32::try_from(start_counter).unwrap_or(u32::MAX);
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= total {
                    break;
                }
                counter += 1;
                let t = Instant::now();
                match login(&s, w, n, &tag, counter).await {
                    Ok(()) => hist.record(t.elapsed()),
                    // What a gateway answers `store_unavailable` for (no
                    // connection within 1.5 s).
                    Err(e) => {
                        if errors.fetch_add(1, Ordering::Relaxed) < 3 {
                            eprintln!("login failed: {e:#}");
                        }
                    }
                }
            }
            counter
        }));
    }
    for (w, t) in tasks.into_iter().enumerate() {
        let c = t.await?;
        counters[w].store(u64::from(c), Ordering::Relaxed);
    }
    let secs = t0.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for s in sealers {
        s.await?;
    }
    let sealed_after = stores[0].seal_pending().await?;
    let report = stores[0].verify_audit().await?;
    if !report.is_intact() {
        bail!("the chain is broken: {report:?}");
    }
    for s in stores {
        s.close().await;
    }
    let s = kakehashi_benches::stats::summary(&hist.snapshot());
    #[allow(clippy::cast_precision_loss)] // counts of logins
    let rate = s.count as f64 / secs;
    Ok(json!({
        "mode": if sealed { "sealed" } else { "inline" },
        "logins": s.count,
        "errors": errors.load(Ordering::Relaxed),
        "secs": secs,
        "logins_per_sec": rate,
        "p50_ms": s.p50_us / 1000,
        "p99_ms": s.p99_us / 1000,
        "left_for_last_seal": sealed_after,
        "chain_records": report.records,
    }))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let pg = kakehashi_benches::pgserver::start(a.fsync_delay_us, a.preload.as_deref()).await?;
    let url = pg.url();
    seed(&url, a.workers).await?;
    eprintln!(
        "PostgreSQL with fsync on, {} µs added to each fsync; {} logins per round, {} in flight over {} store(s)",
        a.fsync_delay_us, a.logins, a.workers, a.gateways
    );
    let counters: Vec<AtomicU64> = (0..a.workers).map(|_| AtomicU64::new(0)).collect();
    let mut rows = Vec::new();
    for r in 0..a.rounds {
        for sealed in [false, true] {
            let row = round(&a, &url, sealed, &format!("{r}-{sealed}"), &counters).await?;
            eprintln!("round {} {}", r + 1, row);
            rows.push(row);
        }
    }
    let best = |mode: &str| {
        rows.iter()
            .filter(|r| r["mode"] == mode)
            .map(|r| r["logins_per_sec"].as_f64().unwrap_or(0.0))
            .fold(0.0f64, f64::max)
    };
    let (inline, sealed) = (best("inline"), best("sealed"));
    let summary = json!({
        "fsync_delay_us": a.fsync_delay_us,
        "gateways": a.gateways,
        "workers": a.workers,
        "rounds": rows,
        "inline_logins_per_sec": inline,
        "sealed_logins_per_sec": sealed,
        "ratio": if inline > 0.0 { sealed / inline } else { 0.0 },
    });
    println!("{summary}");
    drop(pg);
    Ok(())
}
