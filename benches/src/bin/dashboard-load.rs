//! The ops dashboard with many live sessions (issue: Operations — "it must
//! stay responsive with 20,000 live sessions; aggregate on the server").
//!
//! A release gateway with its store and portal runs as a bare relay (no
//! logins: the sessions come from the load generator's in-process laptops,
//! one QUIC connection each, and agents that echo, so 20,000 sessions need
//! no file descriptor in this process). An
//! operator signs in with Debian's chromium (a CDP virtual authenticator,
//! `tests/browser/portal.mjs`); its portal cookie then opens the event stream
//! (`/ops/events`) directly, so what is timed is the server: each probe
//! opens a new stream and waits for its first snapshot. Measured side by
//! side with the same gateway holding no sessions (the baseline):
//!
//! - time to the first snapshot, p50 and p99 over `--probes` streams, with
//!   no filter, with a filter that matches every session and with one that
//!   matches none (the whole list is scanned);
//! - the snapshot's size (bounded by the 200-row list, not by the sessions);
//! - the gateway's CPU with `--viewers` dashboards open (each re-renders its
//!   snapshot every second);
//! - session set-up time through the same laptop with those viewers open.
//!
//! `benches/dashboard-load.sh [SESSIONS] [VIEWERS]` builds release binaries;
//! it installs nothing (run `tests/run.sh` once for chromium and node).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use std::sync::{Arc, Mutex};

use anyhow::{bail, Context as _};
use http_body_util::{BodyExt as _, Empty};
use hyper::body::Bytes;
use hyper::header;
use kakehashi_benches::fleet::{self, Agent, AgentTarget, Ctx, DeviceConfig, Laptop};
use kakehashi_benches::traffic::DeskMode;
use kakehashi_pki::TerminalClass;
use kakehashi_tests::browser::{admin, prerequisites, start_portal_gateway_with, Browser};
use kakehashi_tests::*;
use kakehashi_transport::tls::TlsFiles;
use kakehashi_transport::BoxIo;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// Desks (simulated agents) the sessions are spread over.
const DESKS: usize = 8;
/// Device certificates the simulated laptops share.
const DEVICES: usize = 8;

/// A stream's first snapshot: how long it took and its size.
struct First {
    ms: f64,
    bytes: usize,
}

/// `GET path` (the event stream) with the operator's cookie, as a browser's
/// `EventSource` asks for it.
fn events_request(
    portal: SocketAddr,
    cookie: &str,
    path: &str,
) -> anyhow::Result<hyper::Request<Empty<Bytes>>> {
    Ok(hyper::Request::get(path)
        .header(header::HOST, format!("localhost:{}", portal.port()))
        .header(header::COOKIE, cookie)
        .header(header::ACCEPT, "text/event-stream")
        .body(Empty::new())?)
}

/// Opens `/ops/events?q=FILTER` with the operator's cookie and reads up to
/// the end of the first `snapshot` event.
async fn first_snapshot(portal: SocketAddr, cookie: &str, filter: &str) -> anyhow::Result<First> {
    let start = Instant::now();
    let resp = http_send(
        portal,
        events_request(portal, cookie, &format!("/ops/events?q={filter}"))?,
    )
    .await?;
    if resp.status() != hyper::StatusCode::OK {
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        bail!(
            "/ops/events refused: {status} {}",
            String::from_utf8_lossy(&body)
        );
    }
    let mut body = resp.into_body();
    let mut buf = Vec::with_capacity(64 * 1024);
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(20), body.frame())
            .await
            .context("no snapshot within 20 s")?;
        let Some(frame) = frame else {
            bail!("the event stream closed: {}", String::from_utf8_lossy(&buf));
        };
        if let Ok(data) = frame?.into_data() {
            buf.extend_from_slice(&data);
        }
        let text = String::from_utf8_lossy(&buf);
        // The event ends at a blank line after its data.
        if let Some(at) = text.find("event: snapshot") {
            if let Some(end) = text[at..].find("\n\n") {
                return Ok(First {
                    ms: start.elapsed().as_secs_f64() * 1e3,
                    bytes: end,
                });
            }
        }
    }
}

/// An open dashboard: reads and discards its events.
fn viewer(portal: SocketAddr, cookie: String) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let Ok(req) = events_request(portal, &cookie, "/ops/events") else {
            return;
        };
        let Ok(resp) = http_send(portal, req).await else {
            return;
        };
        let mut body = resp.into_body();
        while let Some(Ok(_)) = body.frame().await {}
    })
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i.min(v.len() - 1)]
}

/// p50 / p99 of time to the first snapshot and the largest snapshot, over `probes` streams.
async fn probe(
    portal: SocketAddr,
    cookie: &str,
    filter: &str,
    probes: usize,
) -> anyhow::Result<(f64, f64, usize)> {
    let mut ms = Vec::with_capacity(probes);
    let mut bytes = 0;
    for _ in 0..probes {
        let f = first_snapshot(portal, cookie, filter).await?;
        ms.push(f.ms);
        bytes = bytes.max(f.bytes);
    }
    Ok((percentile(&mut ms, 0.5), percentile(&mut ms, 0.99), bytes))
}

/// CPU seconds (user + system) the process has used.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which ends at the last ')'): utime is the 12th, stime the 13th.
    let rest = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// The gateway's CPU share (of one core) over `secs`.
async fn cpu_over(pid: u32, secs: u64) -> f64 {
    let c0 = cpu_secs(pid);
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    (cpu_secs(pid) - c0) / t0.elapsed().as_secs_f64() * 100.0
}

/// A session from `laptop` to `desk` that has carried one echo.
async fn echoed_session(laptop: &Laptop, desk: &str) -> anyhow::Result<BoxIo> {
    let mut io = laptop
        .session(desk)
        .await
        .map_err(|e| anyhow::anyhow!("session refused: {e}"))?;
    io.write_all(b"x").await?;
    let mut b = [0u8; 1];
    tokio::time::timeout(Duration::from_secs(30), io.read_exact(&mut b)).await??;
    Ok(io)
}

/// p50 / p99 set-up time (ms) of `n` new sessions, one after another.
async fn setup_times(laptop: &Laptop, n: usize) -> anyhow::Result<(f64, f64)> {
    let mut ms = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        drop(echoed_session(laptop, &desk(i)).await?);
        ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    Ok((percentile(&mut ms, 0.5), percentile(&mut ms, 0.99)))
}

fn desk(i: usize) -> String {
    format!("DESK-DASH-{}", i % DESKS)
}

struct Row {
    sessions: usize,
    probes: [(f64, f64, usize); 3],
    cpu_idle: f64,
    cpu_viewers: f64,
    setup_alone: (f64, f64),
    setup_viewers: (f64, f64),
}

async fn measure(
    portal: SocketAddr,
    cookie: &str,
    gw_pid: u32,
    laptop: &Laptop,
    sessions: usize,
    viewers: usize,
    probes: usize,
) -> anyhow::Result<Row> {
    eprintln!("[{sessions} live] first snapshot, {probes} streams per filter …");
    let all = probe(portal, cookie, "", probes).await?;
    let every = probe(portal, cookie, "DESK-DASH", probes).await?;
    let none = probe(portal, cookie, "zz-no-such", probes).await?;
    eprintln!("[{sessions} live] CPU without and with {viewers} dashboards open …");
    let cpu_idle = cpu_over(gw_pid, 5).await;
    let setup_alone = setup_times(laptop, 200).await?;
    let open: Vec<_> = (0..viewers)
        .map(|_| viewer(portal, cookie.to_string()))
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let cpu_viewers = cpu_over(gw_pid, 10).await;
    let setup_viewers = setup_times(laptop, 200).await?;
    for v in open {
        v.abort();
    }
    Ok(Row {
        sessions,
        probes: [all, every, none],
        cpu_idle,
        cpu_viewers,
        setup_alone,
        setup_viewers,
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let n: usize = args
        .next()
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(20_000);
    let viewers: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(20);
    let probes = 30;
    let chromium = prerequisites();
    let mut pki = Pki::new();
    let db = pki.path().join("kakehashi.db");
    // A bare relay with a store (for the operator) and the portal.
    let sections = format!(
        "[store]\nurl = \"sqlite://{}\"\n[identity]\nrequire_login = false\n\
         [testing]\nrelay_without_policy = true\nnon_rdp_desks = true\n",
        db.display()
    );
    let pg = start_portal_gateway_with(
        &pki,
        sections,
        GatewayOpts {
            max_sessions: Some(n + 1000),
            terminal_max_connections: Some(n + 1000),
            limits: "terminal_quic_streams = 64\n".into(),
            ..Default::default()
        },
    )
    .await;
    let gw = &pg.gw;
    let port: u16 = pg.portal.rsplit(':').next().unwrap().parse()?;
    let portal: SocketAddr = ([127, 0, 0, 1], port).into();

    // The operator, signed in with a real browser.
    let config = gw.config.clone();
    admin(
        &config,
        &[
            "user",
            "add",
            "--id",
            "ops-bench",
            "--name",
            "運用 担当",
            "--dept",
            "情報政策課",
            "--role",
            "operator",
        ],
    )
    .await;
    let out = admin(&config, &["user", "enroll-code", "--id", "ops-bench"]).await;
    let code = out
        .lines()
        .find_map(|l| l.strip_prefix("enrollment code for ops-bench: "))
        .context("no enrollment code")?
        .trim()
        .to_string();
    let mut browser = Browser::start(&chromium, pki.path().join("browser.log")).await?;
    browser
        .ask(json!({ "cmd": "enroll", "url": format!("{}/enroll", pg.portal), "user": "ops-bench", "code": code }))
        .await?;
    browser
        .ask(json!({ "cmd": "portal_login", "url": format!("{}/ops", pg.portal), "user": "ops-bench" }))
        .await?;
    let cookie = browser
        .ask(json!({ "cmd": "cookie_header", "url": pg.portal }))
        .await?["cookie"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    // The browser's own dashboard stays open throughout, as an operator's would.

    // Simulated agents (echo desks) and laptops, in this process.
    let ticket_pub = kakehashi_pki::load_ticket_public_key(&pki.ca.ticket_public_path())?;
    let ctx = Ctx::new(DeskMode::Echo, ticket_pub);
    let target = Arc::new(Mutex::new(AgentTarget {
        quic: gw.addrs.agent_quic,
        tcp: gw.addrs.agent_tcp,
    }));
    let stop = CancellationToken::new();
    let ca = pki.ca.ca_cert_path();
    let material = |files: CertFiles| {
        TlsFiles {
            ca: ca.clone(),
            cert: files.cert,
            key: files.key,
            crl: None,
        }
        .load()
    };
    let agent_transport = fleet::quic_transport((n / DESKS + 1000) as u32);
    for i in 0..DESKS {
        let m = material(pki.agent(&desk(i)))?;
        let ep = fleet::endpoints(1)?.remove(0);
        let agent = Agent::new(desk(i), &m, Some((ep, agent_transport.clone())))?;
        tokio::spawn(agent.run(ctx.clone(), target.clone(), stop.clone(), None));
    }
    let devices: Vec<DeviceConfig> = (0..DEVICES)
        .map(|i| {
            let m = material(pki.device(&format!("LAPTOP-DASH-{i}"), TerminalClass::Satellite))?;
            let cfg =
                kakehashi_transport::tls::client_config(&m, None, kakehashi_proto::ALPN_TERMINAL)?;
            Ok(DeviceConfig {
                quic: fleet::quic_client(cfg.clone(), fleet::quic_transport(0))?,
                tls: Arc::new(cfg),
                token: None,
            })
        })
        .collect::<anyhow::Result<_>>()?;
    let eps = fleet::endpoints(n.div_ceil(64))?;
    let laptop = |i: usize| {
        Laptop::new(
            &devices[i % DEVICES],
            gw.addrs.terminal_quic,
            Some(eps[i % eps.len()].clone()),
        )
    };
    // The laptop that times set-ups (its sessions are streams on one connection).
    let timer = laptop(0);
    let t = Instant::now();
    while echoed_session(&timer, &desk(DESKS - 1)).await.is_err() {
        if t.elapsed() > Duration::from_secs(30) {
            bail!("the simulated desks never came online");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let base = measure(portal, &cookie, gw.proc.pid(), &timer, 0, viewers, probes).await?;

    // N laptops, one session each, 64 set-ups at a time.
    let gate = Arc::new(tokio::sync::Semaphore::new(64));
    let t = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let permit = gate.clone().acquire_owned().await?;
        let l = laptop(i);
        tasks.push(tokio::spawn(async move {
            let r = echoed_session(&l, &desk(i)).await.map(|io| (l, io));
            drop(permit);
            r
        }));
        if (i + 1) % 2000 == 0 {
            eprintln!(
                "{} sessions asked for ({:.0} s)",
                i + 1,
                t.elapsed().as_secs_f64()
            );
        }
    }
    let mut open = Vec::with_capacity(n);
    for task in tasks {
        open.push(task.await??);
    }
    eprintln!("{n} sessions open in {:.0} s", t.elapsed().as_secs_f64());
    let m = http_get(gw.addrs.admin, "/metrics").await?.1;
    let live: f64 = m
        .lines()
        .filter(|l| l.starts_with("kakehashi_sessions_active{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    eprintln!("{live} sessions live according to /metrics");
    if (live as usize) < n {
        bail!("only {live} of {n} sessions are live");
    }
    let full = measure(portal, &cookie, gw.proc.pid(), &timer, n, viewers, probes).await?;
    drop(open);
    stop.cancel();
    browser.quit().await;

    println!("ops dashboard, {viewers} dashboards open for the CPU and set-up rows; {probes} new event streams per filter");
    println!("| live sessions | first snapshot p50 / p99 ms (all · filter matching all · matching none) | snapshot bytes | gateway CPU idle → with viewers | session set-up p50 / p99 ms alone → with viewers |");
    println!("|---|---|---|---|---|");
    for r in [&base, &full] {
        let [a, e, z] = r.probes;
        println!(
            "| {} | {:.2}/{:.2} · {:.2}/{:.2} · {:.2}/{:.2} | {} | {:.1} % → {:.1} % | {:.2}/{:.2} → {:.2}/{:.2} |",
            r.sessions, a.0, a.1, e.0, e.1, z.0, z.1, a.2.max(e.2), r.cpu_idle, r.cpu_viewers,
            r.setup_alone.0, r.setup_alone.1, r.setup_viewers.0, r.setup_viewers.1
        );
    }
    let ratio = |x: f64, y: f64| if y > 0.0 { x / y } else { f64::NAN };
    println!(
        "ratios {n} live / none: first snapshot p99 {:.2}× (all) {:.2}× (scan, no match); set-up p99 with viewers {:.2}×",
        ratio(full.probes[0].1, base.probes[0].1),
        ratio(full.probes[2].1, base.probes[2].1),
        ratio(full.setup_viewers.1, base.setup_viewers.1),
    );
    Ok(())
}
