//! `rdpfilter-bench`: what the RDP channel filter costs a session, side by side.
//!
//! One process, loopback TCP: a stand-in RDP client and server (TLS security,
//! canned X.224 and MCS handshake from `kakehashi_rdpfilter::canned`, then
//! fast-path PDUs as a real server sends graphics) talk through a middle hop
//! that is either
//!
//! - `pass-through`: a plain splice (the agent without `[rdp]`, or with an
//!   allow-everything ticket): the client's TLS goes end to end; or
//! - `filter`: the agent's [`kakehashi_agent::rdp::serve`] with a deny-all ticket:
//!   client TLS terminated, pinned TLS to the server, every PDU through the filter.
//!
//! Measured: bulk throughput server → client (fast-path output PDUs of 16,000
//! bytes) and round-trip latency of one small fast-path input PDU answered by the
//! server (p50 / p99 / max). The gateway and tunnel are not in the path: this is
//! the filter's own cost.
//!
//! ```sh
//! cargo run --release -p kakehashi-benches --bin rdpfilter-bench -- --mib 512 --pings 5000
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::Parser;
use kakehashi_agent::config::RdpConfig;
use kakehashi_agent::rdp::{self, RdpTls, Reporter, Timeouts};
use kakehashi_pki::{CaDir, InitOptions, IssueRequest, Subject};
use kakehashi_proto::Controls;
use kakehashi_rdpfilter::canned;
use kakehashi_rdpfilter::SecurityProtocol;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

#[derive(Parser, Debug)]
#[command(about = "RDP filter cost: throughput and latency, filter vs pass-through")]
struct Args {
    /// MiB the server sends in the bulk phase.
    #[arg(long, default_value_t = 256)]
    mib: usize,
    /// Round trips in the latency phase.
    #[arg(long, default_value_t = 2000)]
    pings: usize,
    /// Runs per mode (the best throughput and the median latency are kept).
    #[arg(long, default_value_t = 3)]
    runs: usize,
}

const PDU: usize = 16_000;
const CHANNELS: &[&str] = &["cliprdr", "rdpdr", "rdpsnd", "drdynvc"];

#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    PassThrough,
    Filter,
}

struct Setup {
    server_tls: TlsAcceptor,
    client_tls: TlsConnector,
    rdp: RdpTls,
    _dir: tempfile::TempDir,
}

fn setup() -> anyhow::Result<Setup> {
    let dir = tempfile::tempdir()?;
    let mut ca = CaDir::init(&dir.path().join("pki"), &InitOptions::default())?;
    let issued = ca.issue(&IssueRequest::new(Subject::Gateway {
        name: "localhost".into(),
        ips: vec!["127.0.0.1".parse()?],
    }))?;
    let chain = kakehashi_transport::tls::load_certs(&issued.cert_path)?;
    let key = kakehashi_transport::tls::load_key(&issued.key_path)?;
    let provider = kakehashi_transport::tls::provider();
    let server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain.clone(), key.clone_key())?;
    let ca_certs = kakehashi_transport::tls::load_certs(&ca.ca_cert_path())?;
    let roots = kakehashi_transport::tls::roots(&ca_certs)?;
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let rdp = RdpTls::new(&RdpConfig {
        chain,
        key: Arc::new(key),
    })?;
    Ok(Setup {
        server_tls: TlsAcceptor::from(Arc::new(server)),
        client_tls: TlsConnector::from(Arc::new(client)),
        rdp,
        _dir: dir,
    })
}

async fn read_tpkt<R: AsyncRead + Unpin>(r: &mut R) -> anyhow::Result<Vec<u8>> {
    let mut h = [0u8; 4];
    r.read_exact(&mut h).await?;
    if h[0] != 3 {
        bail!("not a tpkt: {h:02x?}");
    }
    let len = usize::from(u16::from_be_bytes([h[2], h[3]]));
    let mut v = h.to_vec();
    v.resize(len, 0);
    r.read_exact(&mut v[4..]).await?;
    Ok(v)
}

fn fastpath(len: usize, fill: u8) -> Vec<u8> {
    assert!((3..0x8000).contains(&len));
    let mut v = vec![0x00, 0x80 | (len >> 8) as u8, (len & 0xff) as u8];
    v.resize(len, fill);
    v
}

/// The stand-in RDP server: one session.
async fn server(l: TcpListener, tls: TlsAcceptor, bulk: usize, pings: usize) -> anyhow::Result<()> {
    let (mut tcp, _) = l.accept().await?;
    tcp.set_nodelay(true)?;
    read_tpkt(&mut tcp).await?;
    tcp.write_all(&canned::connection_confirm(SecurityProtocol::SSL))
        .await?;
    let mut s = tls.accept(tcp).await?;
    read_tpkt(&mut s).await?;
    s.write_all(&canned::connect_response(CHANNELS.len()))
        .await?;
    s.write_all(&canned::attach_user_confirm()).await?;
    s.flush().await?;
    let pdu = fastpath(PDU, 0x5a);
    for _ in 0..bulk {
        s.write_all(&pdu).await?;
    }
    s.flush().await?;
    let pong = fastpath(8, 0x01);
    let mut ping = [0u8; 8];
    for _ in 0..pings {
        s.read_exact(&mut ping).await?;
        s.write_all(&pong).await?;
        s.flush().await?;
    }
    let _ = s.shutdown().await;
    Ok(())
}

/// The middle hop: a splice, or the agent's filter.
async fn middle(l: TcpListener, server: SocketAddr, mode: Mode, rdp: RdpTls) -> anyhow::Result<()> {
    let (mut c, _) = l.accept().await?;
    c.set_nodelay(true)?;
    let mut s = TcpStream::connect(server).await?;
    s.set_nodelay(true)?;
    match mode {
        Mode::PassThrough => {
            kakehashi_transport::splice::splice(&mut c, &mut s).await?;
        }
        Mode::Filter => {
            let mut reporter = Reporter::new("s-bench".into(), None);
            let timeouts = Timeouts {
                first_bytes: Duration::from_secs(10),
                step: Duration::from_secs(10),
            };
            let name = ServerName::try_from("localhost")?;
            match rdp::serve(
                c,
                s,
                name,
                Controls::default(),
                &rdp,
                timeouts,
                &mut reporter,
            )
            .await
            {
                rdp::Ended::Closed { .. } => {}
                other => bail!("filtered session ended badly: {other:?}"),
            }
        }
    }
    Ok(())
}

struct Sample {
    mib_per_s: f64,
    rtt_us: Vec<f64>,
}

async fn client<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    bulk: usize,
    pings: usize,
) -> anyhow::Result<Sample> {
    s.write_all(&canned::connect_initial(CHANNELS)).await?;
    s.flush().await?;
    read_tpkt(&mut s).await?;
    read_tpkt(&mut s).await?;
    let total = bulk * PDU;
    let mut buf = vec![0u8; 64 * 1024];
    let mut got = 0;
    let start = Instant::now();
    while got < total {
        let n = s.read(&mut buf[..(total - got).min(64 * 1024)]).await?;
        if n == 0 {
            bail!("server closed after {got} of {total} bytes");
        }
        got += n;
    }
    let secs = start.elapsed().as_secs_f64();
    let ping = fastpath(8, 0x02);
    let mut pong = [0u8; 8];
    let mut rtt_us = Vec::with_capacity(pings);
    for _ in 0..pings {
        let t = Instant::now();
        s.write_all(&ping).await?;
        s.flush().await?;
        s.read_exact(&mut pong).await?;
        rtt_us.push(t.elapsed().as_secs_f64() * 1e6);
    }
    Ok(Sample {
        mib_per_s: total as f64 / (1 << 20) as f64 / secs,
        rtt_us,
    })
}

async fn run_once(setup: &Setup, mode: Mode, bulk: usize, pings: usize) -> anyhow::Result<Sample> {
    let sl = TcpListener::bind("127.0.0.1:0").await?;
    let saddr = sl.local_addr()?;
    let ml = TcpListener::bind("127.0.0.1:0").await?;
    let maddr = ml.local_addr()?;
    let srv = tokio::spawn(server(sl, setup.server_tls.clone(), bulk, pings));
    let mid = tokio::spawn(middle(ml, saddr, mode, setup.rdp.clone()));
    let mut tcp = TcpStream::connect(maddr).await?;
    tcp.set_nodelay(true)?;
    tcp.write_all(&canned::connection_request(SecurityProtocol::SSL))
        .await?;
    read_tpkt(&mut tcp).await?;
    let tls = setup
        .client_tls
        .connect(ServerName::try_from("localhost")?, tcp)
        .await
        .context("client tls")?;
    let sample = client(tls, bulk, pings).await?;
    srv.await??;
    mid.await??;
    Ok(sample)
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let setup = setup()?;
    let bulk = args.mib * (1 << 20) / PDU;
    println!(
        "rdpfilter-bench: {} MiB bulk in {PDU}-byte fast-path PDUs, {} round trips, best of {} runs",
        args.mib, args.pings, args.runs
    );
    println!(
        "| mode | throughput MiB/s | RTT p50 µs | RTT p99 µs | RTT max µs |\n|---|---|---|---|---|"
    );
    for mode in [Mode::PassThrough, Mode::Filter] {
        let mut best = 0.0f64;
        let mut rtts = Vec::new();
        for _ in 0..args.runs {
            let s = run_once(&setup, mode, bulk, args.pings).await?;
            best = best.max(s.mib_per_s);
            rtts.extend(s.rtt_us);
        }
        rtts.sort_by(f64::total_cmp);
        println!(
            "| {} | {:.0} | {:.0} | {:.0} | {:.0} |",
            match mode {
                Mode::PassThrough => "pass-through (splice, end-to-end TLS)",
                Mode::Filter => "filter (deny-all: TLS terminated + pinned, every PDU parsed)",
            },
            best,
            pct(&rtts, 0.5),
            pct(&rtts, 0.99),
            rtts.last().copied().unwrap_or(0.0)
        );
    }
    Ok(())
}
