//! The portal under an anonymous flood before login (issue 16 items 1 and
//! 2), measured against any `kakehashi-gateway` binary, so a build from
//! before the fix and one from after run side by side:
//!
//! 1. `--silent` TCP connections that never send a byte, then more at
//!    `--flood-rate` a second for as long as the measurement lasts (an
//!    attacker who keeps going; each is dropped after 30 s), and `--half`
//!    requests that stop half-way through their headers, from 127.0.0.2 and
//!    127.0.0.3; meanwhile `--requests` real HTTPS requests from 127.0.0.1,
//!    one after another: their p50/p99 and how many took longer than 10 s.
//!    Then how many half-sent requests are still open 20 s later.
//! 2. `--starts` WebAuthn ceremony starts for one enrolled user from
//!    127.0.0.4, then one start for that user from 127.0.0.1: its answer.
//!
//! ```text
//! cargo run --release -p kakehashi-benches --bin portal-flood -- \
//!     --gateway target/release/kakehashi-gateway
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use kakehashi_tests::browser::free_port;
use kakehashi_tests::{connect_from, Pki, Proc};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

#[derive(Parser, Debug)]
struct Args {
    /// The gateway binary to measure.
    #[arg(long)]
    gateway: PathBuf,
    /// Silent TCP connections.
    #[arg(long, default_value_t = 1000)]
    silent: usize,
    /// New silent connections per second while measuring.
    #[arg(long, default_value_t = 200)]
    flood_rate: u32,
    /// Half-sent requests (TLS done, half a header).
    #[arg(long, default_value_t = 300)]
    half: usize,
    /// Real requests measured during the flood.
    #[arg(long, default_value_t = 20)]
    requests: usize,
    /// Ceremony starts for one user.
    #[arg(long, default_value_t = 10_000)]
    starts: usize,
}

async fn status_of<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, req: &str) -> anyhow::Result<u16> {
    s.write_all(req.as_bytes()).await?;
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw).await;
    let text = String::from_utf8_lossy(&raw);
    Ok(text
        .split_whitespace()
        .nth(1)
        .context("no answer")?
        .parse()?)
}

fn post(path: &str, body: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let pki = Pki::new();
    let g = pki.gateway_cert();
    let db = pki.path().join("flood.db");
    let port = free_port();
    let cfg = format!(
        r#"name = "flood"
[tls]
ca = "{ca}"
cert = "{cert}"
key = "{key}"
crl = "{crl}"
ticket_key = "{ticket}"
[relay.terminals]
tcp = "127.0.0.1:0"
[relay.agents]
tcp = "127.0.0.1:0"
[store]
url = "sqlite://{db}"
[identity]
require_login = true
[portal]
listen = "127.0.0.1:{port}"
rp_id = "localhost"
origin = "https://localhost:{port}"
"#,
        ca = pki.ca.ca_cert_path().display(),
        cert = g.cert.display(),
        key = g.key.display(),
        crl = pki.ca.crl_path().display(),
        ticket = pki.ca.ticket_key_path().display(),
        db = db.display(),
    );
    let path = pki.path().join("gateway.toml");
    std::fs::write(&path, cfg)?;
    let mut gw = Proc::spawn(
        &a.gateway,
        &["run", "--config", path.to_str().unwrap_or_default()],
        pki.path().join("gateway.log"),
        &[],
    );
    gw.wait_line("listening portal ", Duration::from_secs(30))
        .await?;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let roots = kakehashi_transport::tls::roots(&kakehashi_transport::tls::load_certs(
        &pki.ca.ca_cert_path(),
    )?)?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(
        rustls::ClientConfig::builder_with_provider(kakehashi_transport::tls::provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth(),
    ));
    let name = kakehashi_transport::tls::server_name("localhost")?;

    // 1. Silent and half-sent connections, and real requests meanwhile.
    let mut silent = Vec::new();
    for _ in 0..a.silent {
        if let Ok(s) = connect_from([127, 0, 0, 2], addr).await {
            silent.push(s);
        }
    }
    let mut half = Vec::new();
    for _ in 0..a.half {
        let Ok(Ok(tcp)) =
            tokio::time::timeout(Duration::from_secs(2), connect_from([127, 0, 0, 3], addr)).await
        else {
            continue;
        };
        let Ok(Ok(mut s)) =
            tokio::time::timeout(Duration::from_secs(2), tls.connect(name.clone(), tcp)).await
        else {
            continue;
        };
        if s.write_all(b"GET /enroll HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
            .await
            .is_ok()
        {
            half.push(s);
        }
    }
    let flood = tokio::spawn({
        let rate = a.flood_rate.max(1);
        async move {
            let mut open = std::collections::VecDeque::new();
            let mut tick = tokio::time::interval(Duration::from_secs(1) / rate);
            loop {
                tick.tick().await;
                if let Ok(Ok(s)) = tokio::time::timeout(
                    Duration::from_millis(200),
                    connect_from([127, 0, 0, 2], addr),
                )
                .await
                {
                    open.push_back((Instant::now(), s));
                }
                while open
                    .front()
                    .is_some_and(|(t, _)| t.elapsed() > Duration::from_secs(30))
                {
                    open.pop_front();
                }
            }
        }
    });
    let mut took = Vec::new();
    let mut timed_out = 0;
    for _ in 0..a.requests {
        let t = Instant::now();
        let r = tokio::time::timeout(Duration::from_secs(10), async {
            let tcp = connect_from([127, 0, 0, 1], addr).await?;
            let s = tls.connect(name.clone(), tcp).await?;
            status_of(
                s,
                "GET /enroll HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
            )
            .await
        })
        .await;
        match r {
            Ok(Ok(200)) => took.push(t.elapsed()),
            _ => timed_out += 1,
        }
    }
    took.sort();
    let pct = |p: usize| {
        took.get((took.len() * p / 100).min(took.len().saturating_sub(1)))
            .map_or("-".into(), |d| format!("{:.1} ms", d.as_secs_f64() * 1e3))
    };
    flood.abort();
    println!(
        "real requests with {} silent (+{}/s more) and {} half-sent connections: {} answered, p50 {}, p99 {}, {} failed or over 10 s",
        silent.len(),
        a.flood_rate,
        half.len(),
        took.len(),
        pct(50),
        pct(99),
        timed_out
    );
    tokio::time::sleep(Duration::from_secs(20)).await;
    let mut open = 0;
    for s in &mut half {
        let mut b = [0u8; 256];
        if tokio::time::timeout(Duration::from_millis(5), s.read(&mut b))
            .await
            .is_err()
        {
            open += 1;
        }
    }
    println!(
        "half-sent requests still open 20 s later: {open} of {}",
        half.len()
    );
    drop(silent);
    drop(half);

    // 2. Ceremony starts for one enrolled user.
    let admin = |args: &[&str]| {
        std::process::Command::new(&a.gateway)
            .args(["admin", "--config", path.to_str().unwrap_or_default()])
            .args(args)
            .output()
    };
    admin(&[
        "user", "add", "--id", "u-flood", "--name", "Flood", "--dept", "somu",
    ])?;
    let out = admin(&["user", "enroll-code", "--id", "u-flood"])?;
    let text = String::from_utf8_lossy(&out.stdout);
    let code = text
        .lines()
        .find_map(|l| l.strip_prefix("enrollment code for u-flood: "))
        .context("no enrollment code")?
        .trim()
        .to_owned();
    kakehashi_client::soft::enroll(
        &format!("https://localhost:{port}"),
        &pki.ca.ca_cert_path(),
        "u-flood",
        &code,
        &pki.path().join("passkey.cbor"),
    )
    .await?;
    let start = r#"{"user":"u-flood"}"#;
    let t = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..8 {
        let (tls, name) = (tls.clone(), name.clone());
        let n = a.starts / 8 + usize::from(i < a.starts % 8);
        tasks.push(tokio::spawn(async move {
            let mut codes = std::collections::BTreeMap::<u16, usize>::new();
            for _ in 0..n {
                let r = async {
                    let tcp = connect_from([127, 0, 0, 4], addr).await?;
                    let s = tls.connect(name.clone(), tcp).await?;
                    status_of(s, &post("/api/login/start", start)).await
                }
                .await
                .unwrap_or(0);
                *codes.entry(r).or_default() += 1;
            }
            codes
        }));
    }
    let mut codes = std::collections::BTreeMap::<u16, usize>::new();
    for t in tasks {
        for (k, v) in t.await? {
            *codes.entry(k).or_default() += v;
        }
    }
    println!(
        "{} ceremony starts for one user from one address in {:.1} s: answers {codes:?}",
        a.starts,
        t.elapsed().as_secs_f64()
    );
    let tcp = connect_from([127, 0, 0, 1], addr).await?;
    let s = tls.connect(name.clone(), tcp).await?;
    let status = status_of(s, &post("/api/login/start", start)).await?;
    println!("then the user's own login start from another address: HTTP {status} (503 = busy)");
    gw.kill().await;
    Ok(())
}
