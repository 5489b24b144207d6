//! `login-storm` (P10, issue 18 item 8): full logins per second through the
//! portal, with real WebAuthn ceremonies and redeems over mutual TLS, against
//! one gateway and spread over three gateways on one PostgreSQL, side by side
//! (alternating rounds) on one server with fsync on, optionally with a delay
//! added to every fsync (`--preload` of `benches/fsync-delay.c`, which
//! `benches/login-storm.sh` builds).
//!
//! One login is what `kakehashi login` does with a software authenticator
//! (`kakehashi_client::login::run`), made of the client library's own
//! pieces: a PKCE verifier and a loopback callback, the portal's
//! `/api/login/start`, the assertion of the user's enrolled software passkey
//! (`webauthn-authenticator-rs` softpasskey, as the demo uses),
//! `/api/login/finish` and its redirect to the callback (`client::soft`),
//! then the one-time code redeemed for a login token over a fresh
//! connection of the laptop's device certificate
//! (`client::failover::Gateways::establish`, QUIC as the client's `auto`
//! picks, then `Dialer::redeem`). Only the printing and the token file of
//! `login::run` are left out.
//!
//! Setup: three `kakehashi-gateway` processes (each with its portal), `--users`
//! staff each with a personal laptop certificate and a passkey enrolled
//! through the first gateway's portal. All laptops share 127.0.0.1, as staff
//! behind one NAT do, so the portals' per-address API rate is raised
//! (`api_rate_per_source`; the shipped 50 a second would cap the storm at
//! 25 logins a second per gateway). Prints one line per round and a JSON
//! summary with the CPU each process used.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::Parser;
use kakehashi_benches::procstat::cpu_secs;
use kakehashi_benches::stats::{summary, Errors, Hist};
use kakehashi_client::login::{login_url, random_b64, Callback, Pkce};
use kakehashi_client::{Config, SessionError};
use kakehashi_pki::TerminalClass;
use kakehashi_proto::message::Secret;
use kakehashi_tests::browser::free_port;
use kakehashi_tests::{GatewayOpts, GatewayProc, Pki};
use kakehashi_transport::TransportChoice;
use serde_json::json;

#[derive(Parser, Debug)]
#[command(
    name = "login-storm",
    about = "P10: full portal logins per second, one gateway against three"
)]
struct Args {
    /// Staff, each with a laptop and an enrolled software passkey (at least `--concurrency`).
    #[arg(long, default_value_t = 64)]
    users: usize,
    /// Logins in flight at once.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Logins per round.
    #[arg(long, default_value_t = 600)]
    logins: u64,
    /// Rounds per configuration, alternating one gateway / three gateways.
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// Microseconds added to every fsync of PostgreSQL (0: none).
    #[arg(long, default_value_t = 0)]
    fsync_delay_us: u64,
    /// The shim that adds the delay (built by benches/login-storm.sh).
    #[arg(long)]
    preload: Option<PathBuf>,
    /// Redeem over TLS/TCP instead of QUIC.
    #[arg(long)]
    tcp: bool,
}

/// One staff member: the laptop's client configuration per gateway.
struct Staff {
    device: String,
    configs: Vec<Config>,
}

async fn gateway(pki: &Pki, name: &str, url: &str) -> anyhow::Result<(GatewayProc, String)> {
    let port = free_port();
    let portal = format!("https://localhost:{port}");
    let policy = pki.path().join("open-policy.toml");
    std::fs::write(&policy, kakehashi_tests::OPEN_POLICY)?;
    let identity = format!(
        "[store]\nurl = \"{url}\"\n[identity]\nrequire_login = true\n[policy]\nfile = \"{}\"\n\
         [portal]\nlisten = \"127.0.0.1:{port}\"\nrp_id = \"localhost\"\norigin = \"{portal}\"\n\
         api_rate_per_source = 1000000\n",
        policy.display()
    );
    let gw = kakehashi_tests::start_gateway(
        pki,
        GatewayOpts {
            name: Some(name.into()),
            identity: Some(identity),
            shipped_keepalive: true,
            ..Default::default()
        },
    )
    .await;
    gw.proc
        .wait_log("Portal listening", Duration::from_secs(20))
        .await?;
    Ok((gw, portal))
}

/// Seed `n` staff: user, personal laptop certificate, software passkey
/// enrolled through `portal` with a code from `admin user enroll-code`.
async fn seed(
    pki: &mut Pki,
    store: &kakehashi_store::Store,
    admin_config: &Path,
    portals: &[(&GatewayProc, String)],
    n: usize,
    tcp: bool,
) -> anyhow::Result<Vec<Staff>> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let user = format!("u-storm-{i:04}");
        let device = format!("LT-STORM-{i:04}");
        kakehashi_tests::add_user(store, &user).await;
        let text = kakehashi_tests::browser::admin(
            admin_config,
            &["user", "enroll-code", "--id", user.as_str()],
        )
        .await;
        let code = text
            .lines()
            .find_map(|l| l.strip_prefix(&format!("enrollment code for {user}: ")))
            .with_context(|| format!("no enrollment code in {text:?}"))?
            .trim()
            .to_owned();
        let key = pki.path().join(format!("passkey-{i}.cbor"));
        kakehashi_client::soft::enroll(&portals[0].1, &pki.ca.ca_cert_path(), &user, &code, &key)
            .await
            .with_context(|| format!("enrolling {user}"))?;
        let dev = pki.personal_device(&device, TerminalClass::Home, &user);
        let configs = portals
            .iter()
            .map(|(gw, portal)| Config {
                tcp: gw.addrs.terminal_tcp.to_string(),
                quic: gw.addrs.terminal_quic.to_string(),
                server_name: "localhost".into(),
                ca: pki.ca.ca_cert_path(),
                cert: dev.cert.clone(),
                key: dev.key.clone(),
                crl: None,
                transport: if tcp {
                    TransportChoice::Tcp
                } else {
                    TransportChoice::Quic
                },
                portal: Some(portal.clone()),
                token_file: pki.path().join(format!("token-{i}.json")),
                soft_authenticator: Some(key.clone()),
                user: Some(user.clone()),
                fallback: Vec::new(),
                fallback_server_name: None,
            })
            .collect();
        out.push(Staff { device, configs });
    }
    Ok(out)
}

/// The kind of a failed login, for the error table: the portal's or the
/// gateway's reason code when there is one.
fn error_kind(stage: &str, e: &anyhow::Error) -> String {
    if let Some(SessionError::Refused(r)) = e.downcast_ref::<SessionError>() {
        return format!("{stage}:{}", r.code);
    }
    let text = format!("{e:#}");
    if let Some(code) = text
        .split_once("portal refused the login [")
        .and_then(|(_, rest)| rest.split_once(']'))
        .map(|(c, _)| c.to_owned())
    {
        return format!("{stage}:{code}");
    }
    let short: String = text.chars().take(60).collect();
    format!("{stage}:{short}")
}

/// One full login of `cfg`'s user on laptop `device`, as `kakehashi login`.
async fn login(cfg: &Config, device: &str) -> Result<(), String> {
    let portal = cfg.portal.as_deref().unwrap_or_default();
    let key = cfg.soft_authenticator.clone().unwrap_or_default();
    let pkce = Pkce::new();
    let state = random_b64(16);
    let cb = Callback::bind()
        .await
        .map_err(|e| error_kind("callback", &e))?;
    let url = login_url(portal, &cb.redirect_uri, &state, &pkce.challenge, device)
        .map_err(|e| error_kind("url", &e))?;
    let waiter = tokio::spawn(cb.wait_owned(state, Duration::from_secs(60)));
    if let Err(e) = kakehashi_client::soft::login(&url, &key, cfg).await {
        waiter.abort();
        return Err(error_kind("portal", &e));
    }
    let code = waiter
        .await
        .map_err(|e| format!("callback:{e}"))?
        .map_err(|e| error_kind("callback", &e))?;
    let (gws, _) = kakehashi_client::failover::Gateways::establish(cfg.clone(), cfg.transport)
        .await
        .map_err(|e| error_kind("establish", &anyhow::Error::new(e)))?;
    gws.dialer()
        .await
        .redeem(Secret(code), Secret(pkce.verifier))
        .await
        .map_err(|e| error_kind("redeem", &anyhow::Error::new(e)))?;
    Ok(())
}

/// CPU seconds so far of PostgreSQL (the postmaster and its children).
fn pg_cpu(postmaster: u32) -> f64 {
    let mut total = cpu_secs(postmaster).unwrap_or(0.0);
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return total;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let ppid = stat
            .rfind(')')
            .and_then(|i| stat[i + 2..].split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(postmaster) {
            total += cpu_secs(pid).unwrap_or(0.0);
        }
    }
    total
}

/// Busy and total CPU seconds of the whole machine (`/proc/stat`).
fn machine_cpu() -> (f64, f64) {
    let s = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<f64> = s
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: f64 = v.iter().sum();
    // idle and iowait
    let idle = v.get(3).copied().unwrap_or(0.0) + v.get(4).copied().unwrap_or(0.0);
    let tck = kakehashi_benches::procstat::clk_tck();
    ((total - idle) / tck, total / tck)
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// CPU seconds so far of: PostgreSQL, each gateway, this process.
fn cpu_now(pg: u32, gws: &[u32]) -> Vec<f64> {
    let mut v = vec![pg_cpu(pg)];
    v.extend(gws.iter().map(|p| cpu_secs(*p).unwrap_or(0.0)));
    v.push(cpu_secs(std::process::id()).unwrap_or(0.0));
    v
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    if a.users < a.concurrency {
        bail!("--users must be at least --concurrency (a passkey signs one login at a time)");
    }
    let pg = kakehashi_benches::pgserver::start(a.fsync_delay_us, a.preload.as_deref()).await?;
    let url = pg.url();
    let mut pki = Pki::new();
    let mut gws = Vec::new();
    for name in ["gw1", "gw2", "gw3"] {
        gws.push(gateway(&pki, name, &url).await?);
    }
    let store = kakehashi_store::Store::open(&url).await?;
    let admin_config = gws[0].0.config.clone();
    let portals: Vec<(&GatewayProc, String)> = gws.iter().map(|(g, p)| (g, p.clone())).collect();
    let t = Instant::now();
    let staff = Arc::new(seed(&mut pki, &store, &admin_config, &portals, a.users, a.tcp).await?);
    eprintln!(
        "PostgreSQL with fsync on, {} µs added to each fsync; {} staff enrolled in {:.1} s; {} logins per round, {} in flight; load average {}",
        a.fsync_delay_us,
        a.users,
        t.elapsed().as_secs_f64(),
        a.logins,
        a.concurrency,
        load_average()
    );
    let gw_pids: Vec<u32> = gws.iter().map(|(g, _)| g.proc.pid()).collect();
    let mut rows = Vec::new();
    for r in 0..a.rounds {
        for spread in [1usize, 3] {
            let next = Arc::new(AtomicU64::new(0));
            let hist = Arc::new(Hist::default());
            let errors = Arc::new(Errors::default());
            let cpu0 = cpu_now(pg.pid(), &gw_pids);
            let m0 = machine_cpu();
            let load0 = load_average();
            let t0 = Instant::now();
            let mut tasks = Vec::new();
            for w in 0..a.concurrency {
                let (next, hist, errors, staff) =
                    (next.clone(), hist.clone(), errors.clone(), staff.clone());
                let total = a.logins;
                let c = a.concurrency;
                tasks.push(tokio::spawn(async move {
                    // Worker w signs with staff w, w + c, w + 2c, … in turn:
                    // one passkey is never used by two logins at once.
                    let mine: Vec<usize> = (w..staff.len()).step_by(c).collect();
                    let mut k = 0usize;
                    loop {
                        let n = next.fetch_add(1, Ordering::Relaxed);
                        if n >= total {
                            break;
                        }
                        let s = &staff[mine[k % mine.len()]];
                        k += 1;
                        let via = usize::try_from(n).unwrap_or(0) % spread;
                        let t = Instant::now();
                        match login(&s.configs[via], &s.device).await {
                            Ok(()) => hist.record(t.elapsed()),
                            Err(kind) => errors.add(kind),
                        }
                    }
                }));
            }
            for t in tasks {
                t.await?;
            }
            let secs = t0.elapsed().as_secs_f64();
            let cpu1 = cpu_now(pg.pid(), &gw_pids);
            let m1 = machine_cpu();
            let used: Vec<f64> = cpu1.iter().zip(&cpu0).map(|(b, a)| b - a).collect();
            let s = summary(&hist.snapshot());
            #[allow(clippy::cast_precision_loss)] // counts of logins
            let rate = s.count as f64 / secs;
            let pct = |x: f64| x / secs * 100.0;
            let row = json!({
                "gateways": spread,
                "round": r + 1,
                "logins": s.count,
                "errors": errors.snapshot(),
                "secs": secs,
                "logins_per_sec": rate,
                "p50_ms": s.p50_us / 1000,
                "p99_ms": s.p99_us / 1000,
                "max_ms": s.max_us / 1000,
                // Percent of one core over the round.
                "cpu_pct": {
                    "postgres": pct(used[0]),
                    "gw1": pct(used[1]), "gw2": pct(used[2]), "gw3": pct(used[3]),
                    "bench": pct(used[4]),
                    "machine_busy": pct(m1.0 - m0.0),
                    "machine_total": pct(m1.1 - m0.1),
                },
                "load_average_before": load0,
            });
            eprintln!("round {} {row}", r + 1);
            rows.push(row);
        }
    }
    let best = |g: u64| {
        rows.iter()
            .filter(|r| r["gateways"] == g)
            .map(|r| r["logins_per_sec"].as_f64().unwrap_or(0.0))
            .fold(0.0f64, f64::max)
    };
    println!(
        "{}",
        json!({
            "fsync_delay_us": a.fsync_delay_us,
            "users": a.users,
            "concurrency": a.concurrency,
            "transport": if a.tcp { "tcp" } else { "quic" },
            "rounds": rows,
            "one_gateway_best": best(1),
            "three_gateways_best": best(3),
            "load_average_after": load_average(),
        })
    );
    store.close().await;
    drop(gws);
    drop(pg);
    Ok(())
}
