//! The soak (issue Resilience, item 4): one gateway process for a long run
//! under steady churn, watched for leaks.
//!
//! - Admission through a seeded SQLite store, as P5 runs it (login token
//!   checked, the default policy under a BCP declaration, every session's
//!   start and end written with their audit records).
//! - `sessions` slots, each keeping one session open: a session lives a
//!   random 30–300 s (uniform), then closes, its laptop leaves (the QUIC
//!   connection closes) and a new laptop opens the next session to the
//!   slot's desk: about `sessions / 165` session opens a second. The first
//!   session of each slot draws its life from the steady state's residual
//!   distribution, so the churn is steady from the start rather than
//!   arriving in waves.
//! - Light office traffic per session: by default one request every 2 s
//!   answered with a 5 KB screen update (20 kbit/s), no bursts.
//! - Every agent drops its tunnel at a random moment 0.5–1.5 × 5 minutes
//!   after each welcome and dials again through its usual backoff; the
//!   sessions on that tunnel end with it (counted apart from errors) and
//!   their slots reopen once the desk is back.
//! - Expired login codes and tokens (past the prune's 7-day grace) seeded
//!   beforehand, to see the gateway's first prune (a minute after its start)
//!   delete them.
//! - Every 10 s: the gateway's RSS, open descriptors (`/proc/PID/fd`), CPU,
//!   and the store's file sizes, pages and row counts; one progress line
//!   each.
//!
//! The verdict reads the last 20 minutes (at most two thirds of the run):
//! the least-squares slope of RSS, in % of its mean per 10 minutes, must be
//! under 1 %; descriptors must stay within [`fd_bound`] of each other; the
//! slots must have held their sessions (mean live ≥ 95 % of `sessions`);
//! and the expired codes and tokens must be gone.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use kakehashi_store::{Audit, Hash256, NewLoginCode, NewLoginToken, Store};
use serde::Serialize;
use serde_json::{json, Value};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::fleet::{self, Agent, AgentTarget, Ctx, DeviceConfig, Laptop, Transport};
use crate::gateway::{self, GatewayOpts};
use crate::pki::BenchPki;
use crate::procstat;
use crate::seed;
use crate::stats::{summary, Hist};
use crate::traffic::{self, DeskMode, Profile};

/// The gateway keeps expired codes and tokens this long before pruning them
/// (`PRUNE_GRACE_SECS` in relay/src/cluster.rs).
const PRUNE_GRACE_SECS: i64 = 7 * 86_400;

/// Settings of a soak.
#[derive(clap::Args, Debug, Clone)]
pub struct SoakArgs {
    /// Transport of both legs.
    #[arg(long, value_enum, default_value = "quic")]
    pub transport: Transport,
    /// Minutes of soak once every slot has opened its first session.
    #[arg(long, default_value_t = 30.0)]
    pub minutes: f64,
    /// Sessions open at any time (slots; each reopens when its session ends).
    #[arg(long, default_value_t = 5000)]
    pub sessions: usize,
    /// Desk agents (default: one per session; slot `j` uses desk `j % agents`).
    #[arg(long)]
    pub agents: Option<usize>,
    /// Shortest session life, seconds.
    #[arg(long, default_value_t = 30.0)]
    pub life_min: f64,
    /// Longest session life, seconds.
    #[arg(long, default_value_t = 300.0)]
    pub life_max: f64,
    /// Requests (and screen updates) per second per session. One every
    /// 2 s keeps the load generator (both legs of 5,000 sessions, QUIC)
    /// under a core of this 2-core machine; 500 sessions at 1/s took 10 %.
    #[arg(long, default_value_t = 0.5)]
    pub hz: f64,
    /// Desk-to-laptop rate of a session, kbit/s.
    #[arg(long, default_value_t = 20.0)]
    pub kbps: f64,
    /// Input-event bytes per request.
    #[arg(long, default_value_t = 64)]
    pub up_bytes: u32,
    /// Mean seconds between an agent's deliberate redials (0: never).
    #[arg(long, default_value_t = 300.0)]
    pub redial_every: f64,
    /// Seconds between samples.
    #[arg(long, default_value_t = 10.0)]
    pub sample_every: f64,
    /// Minutes at the end of the run the verdict reads (at most two thirds
    /// of the run).
    #[arg(long, default_value_t = 20.0)]
    pub window: f64,
    /// Pass bar: RSS slope over the window, % of its mean per 10 minutes.
    #[arg(long, default_value_t = 1.0)]
    pub max_rss_slope: f64,
    /// Sessions opened per second while the slots fill.
    #[arg(long, default_value_t = 100.0)]
    pub ramp: f64,
    /// Login codes, and as many login tokens, seeded already expired past
    /// the prune's grace (5,000 is a day of logins in a large city).
    #[arg(long, default_value_t = 1000)]
    pub expired_logins: usize,
    /// QUIC connections per client UDP socket in the load generator.
    #[arg(long, default_value_t = 64)]
    pub conns_per_socket: usize,
}

/// One sample, every `--sample-every` seconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Sample {
    /// Seconds since the gateway started.
    pub t: f64,
    /// Gateway RSS, KiB.
    pub rss_kib: u64,
    /// Gateway open file descriptors.
    pub fds: u64,
    /// Gateway CPU since the previous sample, % of one core.
    pub gw_cpu_pct: f64,
    /// Load generator CPU since the previous sample, % of one core.
    pub lg_cpu_pct: f64,
    /// Sessions open (laptop side).
    pub live: u64,
    /// Agents with a tunnel.
    pub agents_up: u64,
    /// Sessions opened so far.
    pub opened: u64,
    /// Errors so far (not counting sessions ended by their agent's redial).
    pub errors: u64,
    /// The store's files and pages.
    pub store: StoreStats,
}

/// Size of the SQLite store and its rows.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct StoreStats {
    /// The database file, bytes.
    pub file_bytes: u64,
    /// Its write-ahead log, bytes.
    pub wal_bytes: u64,
    /// Pages in the database (committed, WAL included).
    pub pages: u64,
    /// Of which free (reused before the file grows).
    pub free_pages: u64,
    /// Bytes in pages in use.
    pub used_bytes: u64,
    /// Rows of `sessions`.
    pub session_rows: u64,
    /// Rows of `audit`.
    pub audit_rows: u64,
    /// Rows of `login_tokens`.
    pub login_tokens: u64,
    /// Rows of `login_codes`.
    pub login_codes: u64,
    /// Codes and tokens expired past the prune's grace.
    pub expired_past_grace: u64,
}

/// The verdict over the last part of the run.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Verdict {
    /// Seconds of run the verdict reads.
    pub window_secs: f64,
    /// Samples in it.
    pub samples: usize,
    /// Mean RSS over it, KiB.
    pub rss_mean_kib: f64,
    /// Least-squares slope of RSS, % of the mean per 10 minutes.
    pub rss_slope_pct_per_10min: f64,
    /// Fewest descriptors.
    pub fd_min: u64,
    /// Most descriptors.
    pub fd_max: u64,
    /// Largest spread counted as flat ([`fd_bound`]).
    pub fd_bound: u64,
    /// Least-squares slope of descriptors, per 10 minutes (for the record).
    pub fd_slope_per_10min: f64,
    /// Mean sessions open.
    pub live_mean: f64,
    /// RSS slope under the bar.
    pub rss_flat: bool,
    /// Descriptors within the bound.
    pub fds_flat: bool,
    /// Mean sessions open ≥ 95 % of the slots.
    pub load_held: bool,
}

/// The largest spread of descriptor counts over the window that still
/// counts as flat, for a mean of `mean` descriptors: 32, plus 2 % of the
/// mean. Over QUIC the gateway's descriptors do not depend on connections
/// (a few UDP sockets); what moves is the store's connection pool (each
/// SQLite connection holds the database and its WAL) and short-lived
/// admin or log files: a few dozen at most. Over TLS/TCP each session
/// holds two (laptop, data channel) and each agent one, and at any moment
/// some slots are between sessions and some agents are redialing: well
/// under 2 % of the total at this churn. A leak of one descriptor per
/// thousand sessions at the default churn (30 opens a second) adds 36 in
/// 20 minutes over QUIC.
pub fn fd_bound(mean: f64) -> u64 {
    32 + (mean * 0.02).round() as u64
}

/// Least-squares slope of `y` over `x` (0 for fewer than two points or no
/// spread in `x`).
pub fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    if points.len() < 2 {
        return 0.0;
    }
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    if sxx == 0.0 {
        0.0
    } else {
        sxy / sxx
    }
}

/// The verdict over samples with `t` in the last `window_secs` of the run
/// (which ends at the last sample).
pub fn verdict(s: &[Sample], window_secs: f64, max_rss_slope: f64, slots: usize) -> Verdict {
    let end = s.last().map_or(0.0, |x| x.t);
    let w: Vec<&Sample> = s.iter().filter(|x| x.t >= end - window_secs).collect();
    let n = w.len().max(1) as f64;
    let rss_mean = w.iter().map(|x| x.rss_kib as f64).sum::<f64>() / n;
    let rss: Vec<(f64, f64)> = w.iter().map(|x| (x.t, x.rss_kib as f64)).collect();
    let fds: Vec<(f64, f64)> = w.iter().map(|x| (x.t, x.fds as f64)).collect();
    let rss_slope = if rss_mean > 0.0 {
        slope(&rss) * 600.0 / rss_mean * 100.0
    } else {
        0.0
    };
    let fd_min = w.iter().map(|x| x.fds).min().unwrap_or(0);
    let fd_max = w.iter().map(|x| x.fds).max().unwrap_or(0);
    let fd_mean = w.iter().map(|x| x.fds as f64).sum::<f64>() / n;
    let bound = fd_bound(fd_mean);
    let live_mean = w.iter().map(|x| x.live as f64).sum::<f64>() / n;
    // Two samples make a line through any noise: a verdict wants a few.
    let enough = w.len() >= 3;
    Verdict {
        window_secs,
        samples: w.len(),
        rss_mean_kib: rss_mean,
        rss_slope_pct_per_10min: rss_slope,
        fd_min,
        fd_max,
        fd_bound: bound,
        fd_slope_per_10min: slope(&fds) * 600.0,
        live_mean,
        rss_flat: enough && rss_slope < max_rss_slope,
        fds_flat: enough && fd_max - fd_min <= bound,
        load_held: enough && live_mean >= 0.95 * slots as f64,
    }
}

/// A session's life in seconds, uniform in `[min, max]`.
fn life(min: f64, max: f64) -> f64 {
    min + (max - min) * rand::random::<f64>()
}

/// The remaining life of a session seen at a random moment of the steady
/// state (lives uniform in `[min, max]`): density proportional to the
/// chance a life exceeds it, drawn by rejection.
fn residual_life(min: f64, max: f64) -> f64 {
    loop {
        let x = max * rand::random::<f64>();
        let keep = if x < min {
            1.0
        } else {
            (max - x) / (max - min).max(f64::MIN_POSITIVE)
        };
        if rand::random::<f64>() < keep {
            return x.max(1.0);
        }
    }
}

/// Open descriptors of `pid` (0 when unreadable).
pub fn fd_count(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count() as u64)
}

fn file_len(p: &Path) -> u64 {
    std::fs::metadata(p).map_or(0, |m| m.len())
}

fn with_suffix(p: &Path, suffix: &str) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// A read connection to the store the gateway writes.
async fn open_reader(db: &Path) -> anyhow::Result<sqlx::SqlitePool> {
    let opts = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(db)
        .create_if_missing(false)
        .busy_timeout(Duration::from_secs(5));
    sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(opts)
        .await
        .with_context(|| format!("cannot read the store {}", db.display()))
}

async fn store_stats(pool: &sqlx::SqlitePool, db: &Path) -> StoreStats {
    let now = kakehashi_store::unix_now();
    let one = |sql: &'static str| async move {
        sqlx::query_scalar::<_, i64>(sql)
            .fetch_one(pool)
            .await
            .map_or(0, |v| u64::try_from(v).unwrap_or(0))
    };
    let page_size = one("PRAGMA page_size").await;
    let pages = one("PRAGMA page_count").await;
    let free_pages = one("PRAGMA freelist_count").await;
    let expired = sqlx::query_scalar::<_, i64>(
        "SELECT (SELECT COUNT(*) FROM login_codes WHERE expires_at < $1) \
              + (SELECT COUNT(*) FROM login_tokens WHERE expires_at < $1)",
    )
    .bind(now - PRUNE_GRACE_SECS)
    .fetch_one(pool)
    .await
    .map_or(0, |v| u64::try_from(v).unwrap_or(0));
    StoreStats {
        file_bytes: file_len(db),
        wal_bytes: file_len(&with_suffix(db, "-wal")),
        pages,
        free_pages,
        used_bytes: pages.saturating_sub(free_pages) * page_size,
        session_rows: one("SELECT COUNT(*) FROM sessions").await,
        audit_rows: one("SELECT COUNT(*) FROM audit").await,
        login_tokens: one("SELECT COUNT(*) FROM login_tokens").await,
        login_codes: one("SELECT COUNT(*) FROM login_codes").await,
        expired_past_grace: expired,
    }
}

/// `n` login codes and `n` login tokens for the bench's people and laptops,
/// issued 9 days ago and expired 8 days ago (past the 7-day grace), through
/// the store's own calls (each with its audit record, dated then).
async fn seed_expired_logins(db: &Path, n: usize) -> anyhow::Result<()> {
    if n == 0 {
        return Ok(());
    }
    let store = Store::open(&format!("sqlite://{}", db.display())).await?;
    let then = kakehashi_store::unix_now() - 9 * 86_400;
    let expires_at = then + 86_400;
    for i in 0..n {
        let (user, device) = (seed::user_of(i), seed::device_of(i));
        store
            .create_login_code(
                &NewLoginCode {
                    code_hash: Hash256::digest(format!("soak-expired-code-{i}")),
                    user_id: user.clone(),
                    pkce_challenge: "A".repeat(43),
                    device_id: device.clone(),
                    expires_at: then + 300,
                },
                Audit::new(then, "portal", "login.code"),
            )
            .await?;
        store
            .create_login_token(
                &NewLoginToken {
                    token_hash: Hash256::digest(format!("soak-expired-token-{i}")),
                    user_id: user,
                    device_id: device,
                    cert_serial: "00".into(),
                    expires_at,
                },
                Audit::new(then, "bench", "login"),
            )
            .await?;
    }
    store.close().await;
    Ok(())
}

/// What the slots share.
struct Shared {
    ctx: Arc<Ctx>,
    agents: Vec<Arc<Agent>>,
    devices: Vec<DeviceConfig>,
    laddr: std::net::SocketAddr,
    leps: Vec<quinn::Endpoint>,
    profile: Profile,
    life: (f64, f64),
    stop: CancellationToken,
    setup: Hist,
    rtt: Hist,
    window: Hist,
    opened: AtomicU64,
    closed: AtomicU64,
    /// Sessions that ended because their agent redialed on purpose.
    ended_by_redial: AtomicU64,
    /// Opens that failed while their desk's agent was redialing.
    refused_by_redial: AtomicU64,
}

/// One slot: keep a session open to desk `j % agents`, one after another.
async fn slot(sh: Arc<Shared>, j: usize, gate: Arc<Semaphore>) {
    let k = j % sh.agents.len();
    let agent = sh.agents[k].clone();
    let device = &sh.devices[seed::laptop_for_desk(k)];
    let ep = (!sh.leps.is_empty()).then(|| sh.leps[j % sh.leps.len()].clone());
    let mut first = true;
    while !sh.stop.is_cancelled() {
        // The desk's tunnel is being redialed: wait for it.
        while !agent.is_up() {
            tokio::select! {
                _ = sh.stop.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
        let epoch = agent.redials();
        let laptop = Laptop::new(device, sh.laddr, ep.clone());
        let t = Instant::now();
        let opened = {
            // Only the ramp is gated (its permits are many later on).
            let _permit = gate.acquire().await;
            tokio::select! {
                _ = sh.stop.cancelled() => { laptop.close().await; return; }
                r = laptop.session(agent.desk()) => r,
            }
        };
        let io = match opened {
            Ok(io) => io,
            Err(kind) => {
                laptop.close().await;
                if agent.redials() != epoch || !agent.is_up() {
                    sh.refused_by_redial.fetch_add(1, Ordering::Relaxed);
                } else {
                    sh.ctx.errors.add(kind);
                }
                tokio::select! {
                    _ = sh.stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                continue;
            }
        };
        sh.setup.record(t.elapsed());
        sh.opened.fetch_add(1, Ordering::Relaxed);
        sh.ctx.sessions_up.fetch_add(1, Ordering::Relaxed);
        let secs = if first {
            residual_life(sh.life.0, sh.life.1)
        } else {
            life(sh.life.0, sh.life.1)
        };
        first = false;
        let stop = sh.stop.child_token();
        let record = |us| {
            sh.rtt.record_us(us);
            sh.window.record_us(us);
        };
        let kbps = sh.profile.kbps;
        let drive = traffic::drive_rdp(io, kbps, sh.profile, stop.clone(), &sh.ctx.flow, record);
        tokio::pin!(drive);
        let end = tokio::select! {
            e = &mut drive => e,
            _ = tokio::time::sleep(Duration::from_secs_f64(secs)) => {
                stop.cancel();
                drive.await
            }
        };
        sh.ctx.sessions_up.fetch_sub(1, Ordering::Relaxed);
        match end.error_kind() {
            None => {
                sh.closed.fetch_add(1, Ordering::Relaxed);
            }
            Some(_) if agent.redials() != epoch => {
                sh.ended_by_redial.fetch_add(1, Ordering::Relaxed);
            }
            Some(kind) => sh.ctx.errors.add(kind),
        }
        laptop.close().await;
    }
}

/// Run a soak; the JSON summary carries `pass`.
pub async fn run(
    pki: &Arc<BenchPki>,
    work: &Path,
    log: &str,
    a: &SoakArgs,
) -> anyhow::Result<Value> {
    if a.sessions == 0 || a.minutes <= 0.0 || a.sample_every <= 0.0 {
        bail!("--sessions, --minutes and --sample-every must be positive");
    }
    if !(a.life_min > 0.0 && a.life_max >= a.life_min) {
        bail!("session lives need 0 < --life-min <= --life-max");
    }
    let n_agents = a.agents.unwrap_or(a.sessions).max(1);
    let desks: Vec<String> = (0..n_agents).map(|i| format!("LG-DESK-{i:05}")).collect();
    let t = Instant::now();
    let certs = pki.agents(&desks).await?;
    let db = work.join(format!("soak-{}.db", std::process::id()));
    let tokens = seed::seed(&db, pki, &desks).await?;
    seed_expired_logins(&db, a.expired_logins).await?;
    eprintln!(
        "{n_agents} agent certificates and the store ({}, {} expired codes and tokens each) in {:.1}s",
        db.display(),
        a.expired_logins,
        t.elapsed().as_secs_f64()
    );
    let reader = open_reader(&db).await?;
    let store_seeded = store_stats(&reader, &db).await;

    let opts = GatewayOpts {
        max_sessions: a.sessions + a.sessions / 10 + 100,
        // Terminals: a connection per laptop; agents: a tunnel each, and
        // over TLS/TCP a data channel per session.
        max_connections: n_agents + a.sessions + 1000,
        log: log.to_string(),
        addrs: None,
        store: Some(db.clone()),
        // The shipped default: the soak runs what a gateway ships with.
        memory_budget_mib: 4096,
        busy_delay_ms: None,
        busy_cpu_percent: None,
        agent_return_rate: None,
    };
    let mut gw = gateway::start(&pki.files, &opts, work).await?;
    let pid = gw.proc.pid();
    let t0 = Instant::now();

    let ticket_pub = kakehashi_pki::load_ticket_public_key(&pki.files.ticket_pub)?;
    let ctx = Ctx::new(DeskMode::Rdp, ticket_pub);
    let stop = CancellationToken::new();
    let target = Arc::new(std::sync::Mutex::new(AgentTarget {
        quic: gw.addrs.agent_quic,
        tcp: gw.addrs.agent_tcp,
    }));
    let quic = a.transport == Transport::Quic;
    let eps = if quic {
        fleet::endpoints(n_agents.div_ceil(a.conns_per_socket))?
    } else {
        Vec::new()
    };
    // Room for a desk's sessions while the old ones close.
    let qt = fleet::quic_transport(fleet::agent_streams(2 * a.sessions, n_agents));
    let redial = (a.redial_every > 0.0).then(|| Duration::from_secs_f64(a.redial_every));
    let gate = Arc::new(Semaphore::new(64));
    let mut agents = Vec::with_capacity(n_agents);
    let mut waits = Vec::with_capacity(n_agents);
    for (i, (desk, m)) in desks.iter().zip(certs.iter()).enumerate() {
        let ep = quic.then(|| (eps[i % eps.len()].clone(), qt.clone()));
        let agent = Agent::redialing(desk.clone(), m, ep, redial)?;
        waits.push(fleet::launch(agent.clone(), &ctx, &target, &stop, &gate).await?);
        agents.push(agent);
    }
    drop(certs);
    let agents_ok = fleet::count_up(waits).await;
    eprintln!(
        "{agents_ok}/{n_agents} agents up in {:.1}s",
        t0.elapsed().as_secs_f64()
    );
    if agents_ok < n_agents {
        bail!("only {agents_ok} of {n_agents} agents reached the gateway");
    }

    let mut devices = fleet::device_configs(pki)?;
    for (d, t) in devices.iter_mut().zip(tokens) {
        d.token = Some(t);
    }
    let (laddr, leps) = if quic {
        (
            gw.addrs.terminal_quic,
            fleet::endpoints(a.sessions.div_ceil(a.conns_per_socket))?,
        )
    } else {
        (gw.addrs.terminal_tcp, Vec::new())
    };
    let profile = Profile {
        hz: a.hz,
        kbps: a.kbps,
        heavy_frac: 0.0,
        idle_frac: 0.0,
        heavy_kbps: a.kbps,
        burst_every_secs: 0.0,
        burst_secs: 0.0,
        burst_factor: 1.0,
        up_bytes: a.up_bytes,
    };
    let sh = Arc::new(Shared {
        ctx: ctx.clone(),
        agents,
        devices,
        laddr,
        leps,
        profile,
        life: (a.life_min, a.life_max),
        stop: stop.clone(),
        setup: Hist::default(),
        rtt: Hist::default(),
        window: Hist::default(),
        opened: AtomicU64::new(0),
        closed: AtomicU64::new(0),
        ended_by_redial: AtomicU64::new(0),
        refused_by_redial: AtomicU64::new(0),
    });

    // Sampling, from now to the end.
    let samples = Arc::new(std::sync::Mutex::new(Vec::<Sample>::new()));
    let sampler = {
        let (sh, samples, stop, db, every) = (
            sh.clone(),
            samples.clone(),
            stop.clone(),
            db.clone(),
            Duration::from_secs_f64(a.sample_every),
        );
        let me = std::process::id();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut last: Option<(Instant, f64, f64, u64)> = None;
            loop {
                tokio::select! { _ = stop.cancelled() => return, _ = tick.tick() => {} }
                let now = Instant::now();
                let (gc, lc) = (
                    procstat::cpu_secs(pid).unwrap_or(0.0),
                    procstat::cpu_secs(me).unwrap_or(0.0),
                );
                let opened = sh.opened.load(Ordering::Relaxed);
                let (gw_cpu, lg_cpu, opens_per_sec) = match last {
                    Some((lt, lgc, llc, lo)) => {
                        let d = now.duration_since(lt).as_secs_f64().max(1e-3);
                        (
                            (gc - lgc) / d * 100.0,
                            (lc - llc) / d * 100.0,
                            (opened - lo) as f64 / d,
                        )
                    }
                    None => (f64::NAN, f64::NAN, f64::NAN),
                };
                last = Some((now, gc, lc, opened));
                let s = Sample {
                    t: t0.elapsed().as_secs_f64(),
                    rss_kib: procstat::rss_kib(pid),
                    fds: fd_count(pid),
                    gw_cpu_pct: if gw_cpu.is_nan() { 0.0 } else { gw_cpu },
                    lg_cpu_pct: if lg_cpu.is_nan() { 0.0 } else { lg_cpu },
                    live: sh.ctx.sessions_up.load(Ordering::Relaxed) as u64,
                    agents_up: sh.ctx.agents_up.load(Ordering::Relaxed) as u64,
                    opened,
                    errors: sh.ctx.errors.total(),
                    store: store_stats(&reader, &db).await,
                };
                let w = summary(&sh.window.take());
                eprintln!(
                    "[{:>6.0}s] rss={:.1}MiB fds={} live={} agents={} opens/s={:.1} redials={} ended_by_redial={} errors={} rtt_p99={:.1}ms gw_cpu={:.0}% loadgen_cpu={:.0}% store: used={}KiB file={}KiB wal={}KiB sessions={} audit={} expired_codes_tokens={}",
                    s.t,
                    s.rss_kib as f64 / 1024.0,
                    s.fds,
                    s.live,
                    s.agents_up,
                    opens_per_sec,
                    sh.ctx.redials.load(Ordering::Relaxed),
                    sh.ended_by_redial.load(Ordering::Relaxed),
                    s.errors,
                    w.p99_us as f64 / 1000.0,
                    s.gw_cpu_pct,
                    s.lg_cpu_pct,
                    s.store.used_bytes / 1024,
                    s.store.file_bytes / 1024,
                    s.store.wal_bytes / 1024,
                    s.store.session_rows,
                    s.store.audit_rows,
                    s.store.expired_past_grace,
                );
                samples.lock().expect("samples").push(s);
            }
        })
    };

    // Fill the slots at the ramp's pace, then soak.
    let t_ramp = Instant::now();
    let ramp_gate = Arc::new(Semaphore::new(256));
    let mut slots = tokio::task::JoinSet::new();
    let pace = Duration::from_secs_f64(1.0 / a.ramp.max(1.0));
    let mut next = tokio::time::Instant::now();
    for j in 0..a.sessions {
        slots.spawn(slot(sh.clone(), j, ramp_gate.clone()));
        next += pace;
        tokio::time::sleep_until(next).await;
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while (sh.opened.load(Ordering::Relaxed) as usize) < a.sessions && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Past the ramp, the gate only bounds set-ups in flight.
    ramp_gate.add_permits(Semaphore::MAX_PERMITS / 2);
    let ramp_secs = t_ramp.elapsed().as_secs_f64();
    eprintln!(
        "{}/{} sessions open in {ramp_secs:.1}s; soaking for {} minutes",
        sh.ctx.sessions_up.load(Ordering::Relaxed),
        a.sessions,
        a.minutes
    );
    let soak_from = t0.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs_f64(a.minutes * 60.0)).await;

    let prune_line = gw
        .proc
        .log_text()
        .lines()
        .find(|l| l.contains("Deleted expired codes"))
        .map(str::to_string);
    stop.cancel();
    let _ = sampler.await;
    let _ = tokio::time::timeout(Duration::from_secs(15), async {
        while slots.join_next().await.is_some() {}
    })
    .await;
    slots.abort_all();
    gw.proc.terminate();
    let _ = gw.proc.wait_exit(Duration::from_secs(30)).await;

    let samples = samples.lock().expect("samples").clone();
    let run_secs = samples.last().map_or(0.0, |s| s.t) - soak_from;
    let window_secs = (a.window * 60.0).min(run_secs * 2.0 / 3.0).max(0.0);
    let v = verdict(&samples, window_secs, a.max_rss_slope, a.sessions);
    let first = samples
        .iter()
        .find(|s| s.t >= soak_from)
        .copied()
        .unwrap_or_default();
    let end = samples.last().copied().unwrap_or_default();
    let opened = sh.opened.load(Ordering::Relaxed);
    let during = end.opened.saturating_sub(first.opened);
    let per_1000 = |d: i64| {
        if during == 0 {
            0.0
        } else {
            d as f64 * 1000.0 / during as f64
        }
    };
    let diff = |f: fn(&StoreStats) -> u64| f(&end.store) as i64 - f(&first.store) as i64;
    let pruned = a.expired_logins == 0 || end.store.expired_past_grace == 0;
    let pass = v.rss_flat && v.fds_flat && v.load_held && pruned;
    let cpu = |f: fn(&Sample) -> f64| {
        let w: Vec<f64> = samples.iter().filter(|s| s.t >= soak_from).map(f).collect();
        w.iter().sum::<f64>() / w.len().max(1) as f64
    };
    Ok(json!({
        "bench": "soak",
        "pass": pass,
        "transport": a.transport,
        "sessions": a.sessions,
        "agents": n_agents,
        "minutes": a.minutes,
        "ramp_secs": ramp_secs,
        "life_secs": [a.life_min, a.life_max],
        "expected_opens_per_sec": a.sessions as f64 / ((a.life_min + a.life_max) / 2.0),
        "redial_every_secs": a.redial_every,
        "profile": profile,
        "verdict": v,
        "pruned_expired_logins": pruned,
        "sessions_opened": opened,
        "sessions_closed": sh.closed.load(Ordering::Relaxed),
        "sessions_ended_by_redial": sh.ended_by_redial.load(Ordering::Relaxed),
        "opens_refused_while_redialing": sh.refused_by_redial.load(Ordering::Relaxed),
        "agent_redials": ctx.redials.load(Ordering::Relaxed),
        "tickets_verified": ctx.tickets_ok.load(Ordering::Relaxed),
        "errors": ctx.errors.snapshot(),
        "errors_total": ctx.errors.total(),
        "setup": summary(&sh.setup.snapshot()),
        "rtt": summary(&sh.rtt.snapshot()),
        "gateway_cpu_mean_pct_of_core": cpu(|s| s.gw_cpu_pct),
        "loadgen_cpu_mean_pct_of_core": cpu(|s| s.lg_cpu_pct),
        "store": {
            "seeded": store_seeded,
            "soak_start": first.store,
            "end": end.store,
            "sessions_opened_during_soak": during,
            "per_1000_sessions": {
                "used_bytes": per_1000(diff(|s| s.used_bytes)),
                "file_bytes": per_1000(diff(|s| s.file_bytes)),
                "session_rows": per_1000(diff(|s| s.session_rows)),
                "audit_rows": per_1000(diff(|s| s.audit_rows)),
            },
            "prune_log": prune_line,
        },
        "samples": samples,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_of(f: impl Fn(f64) -> (u64, u64)) -> Vec<Sample> {
        (0..=180)
            .map(|i| {
                let t = i as f64 * 10.0;
                let (rss_kib, fds) = f(t);
                Sample {
                    t,
                    rss_kib,
                    fds,
                    live: 5000,
                    ..Sample::default()
                }
            })
            .collect()
    }

    #[test]
    fn a_flat_run_passes_and_a_leak_of_one_percent_fails() {
        // Noise of ±2 % around 400 MiB, no trend.
        let noisy = run_of(|t| {
            let wobble = ((t / 10.0) as u64 % 5) as f64 - 2.0;
            ((409_600.0 * (1.0 + wobble / 100.0)) as u64, 40)
        });
        let v = verdict(&noisy, 1200.0, 1.0, 5000);
        assert!(v.rss_flat && v.fds_flat && v.load_held, "{v:?}");
        assert_eq!(v.samples, 121);
        // 1.2 % per 10 minutes: 0.002 % a second of 400 MiB.
        let leak = run_of(|t| ((409_600.0 * (1.0 + 0.00002 * t)) as u64, 40));
        let v = verdict(&leak, 1200.0, 1.0, 5000);
        assert!(!v.rss_flat, "{v:?}");
        assert!(v.rss_slope_pct_per_10min > 1.0 && v.rss_slope_pct_per_10min < 1.3);
        // Growth before the window does not count: a warm-up.
        let warm = run_of(|t| ((409_600.0 + 10.0 * (600.0 - t).max(0.0)) as u64, 40));
        assert!(verdict(&warm, 1200.0, 1.0, 5000).rss_flat);
    }

    #[test]
    fn descriptors_that_creep_or_jump_are_not_flat() {
        let creep = run_of(|t| (400_000, 40 + (t / 30.0) as u64));
        let v = verdict(&creep, 1200.0, 1.0, 5000);
        assert!(!v.fds_flat, "{v:?}");
        assert!(v.fd_slope_per_10min > 15.0);
        let jump = run_of(|t| (400_000, if t > 1500.0 { 80 } else { 40 }));
        assert!(!verdict(&jump, 1200.0, 1.0, 5000).fds_flat);
        // TLS/TCP: 11,000 descriptors moving by a hundred with the churn.
        let tcp = run_of(|t| (400_000, 11_000 + (t as u64 / 10 % 7) * 15));
        assert!(verdict(&tcp, 1200.0, 1.0, 5000).fds_flat);
    }

    #[test]
    fn a_run_that_lost_its_sessions_or_has_too_few_samples_fails() {
        let mut s = run_of(|_| (400_000, 40));
        for x in &mut s {
            x.live = 4000;
        }
        assert!(!verdict(&s, 1200.0, 1.0, 5000).load_held);
        let short = run_of(|_| (400_000, 40));
        let v = verdict(&short[..2], 1200.0, 1.0, 5000);
        assert!(!v.rss_flat && !v.fds_flat && !v.load_held);
    }

    #[test]
    fn session_lives_stay_in_range_and_the_residual_is_shorter() {
        let n = 20_000;
        let lives: Vec<f64> = (0..n).map(|_| life(30.0, 300.0)).collect();
        assert!(lives.iter().all(|&x| (30.0..=300.0).contains(&x)));
        let mean = lives.iter().sum::<f64>() / n as f64;
        assert!((mean - 165.0).abs() < 5.0, "{mean}");
        // Residual of a uniform life on [a, b]: mean E[L²] / 2E[L]
        // = (a² + ab + b²) / 3(a + b) = 100.9 s.
        let res: Vec<f64> = (0..n).map(|_| residual_life(30.0, 300.0)).collect();
        assert!(res.iter().all(|&x| (1.0..=300.0).contains(&x)));
        let mean = res.iter().sum::<f64>() / n as f64;
        assert!((mean - 100.9).abs() < 4.0, "{mean}");
    }
}
