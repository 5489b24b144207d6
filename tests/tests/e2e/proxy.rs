//! A load balancer in front of the TLS/TCP listener: real HAProxy, run with
//! `deploy/haproxy.example.cfg` itself (only its addresses, log target,
//! chroot/user lines and maxconn changed), sends PROXY protocol v2 headers to a gateway
//! that lists it in `[relay] proxy_protocol_from`; the audit log records the
//! laptop's own address. A PROXY header from an unlisted address, a
//! malformed one or none at all from a listed balancer closes the
//! connection; a balancer's LOCAL health check closes without a log line.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kakehashi_pki::TerminalClass;
use kakehashi_proto::io::{read_frame, write_message, write_raw};
use kakehashi_proto::message::{
    LoginResult, Message, RedeemLogin, Secret, SessionAccepted, SessionRequest,
};
use kakehashi_proto::{frame, FrameKind, ALPN_TERMINAL};
use kakehashi_store::Store;
use kakehashi_tests::*;
use kakehashi_transport::proxy;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const HAPROXY: &str = "/usr/sbin/haproxy";

/// `deploy/haproxy.example.cfg` for a test: laptops at `front`, every
/// gateway of the example at `gateway`, logs to HAProxy's stderr, no
/// chroot or user switch, a smaller maxconn. Every line changed must be in
/// the example.
fn haproxy_config(front: SocketAddr, gateway: SocketAddr) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/haproxy.example.cfg");
    let mut cfg = std::fs::read_to_string(&path).unwrap();
    let gw = gateway.to_string();
    for (from, to) in [
        (
            "    log /dev/log local0\n",
            "    log stderr format raw local0\n",
        ),
        ("    chroot /var/lib/haproxy\n", ""),
        ("    user haproxy\n", ""),
        ("    group haproxy\n", ""),
        // 40,000 connections need 80,000 descriptors, more than a test
        // process may open.
        ("    maxconn 40000\n", "    maxconn 1000\n"),
        ("    bind :443\n", &format!("    bind {front}\n")),
        ("server gw1 10.0.1.11:443", &format!("server gw1 {gw}")),
        ("server gw2 10.0.1.12:443", &format!("server gw2 {gw}")),
        ("server gw3 10.0.1.13:443", &format!("server gw3 {gw}")),
    ] {
        assert!(cfg.contains(from), "{from:?} is not in {}", path.display());
        cfg = cfg.replacen(from, to, 1);
    }
    cfg
}

/// A free port on 127.0.0.1 for HAProxy's front (HAProxy cannot report
/// the port it bound).
fn free_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// HAProxy in the foreground (`-db`), killed when dropped (a [`Proc`]),
/// in front of `gw`'s laptop listener; returns once its health checks
/// reach the gateway (it binds its front before it starts checking), so
/// no test connection of ours shows in the gateway's log.
async fn start_haproxy(pki: &Pki, gw: &GatewayProc) -> (Proc, SocketAddr) {
    let front = free_port();
    let cfg = pki.path().join("haproxy.cfg");
    std::fs::write(&cfg, haproxy_config(front, gw.addrs.terminal_tcp)).unwrap();
    let check = command(HAPROXY)
        .args(["-c", "-f", cfg.to_str().unwrap()])
        .output()
        .await
        .expect("run haproxy -c (Debian package haproxy; tests/run.sh installs it)");
    assert!(
        check.status.success(),
        "haproxy -c refuses the example: {}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    let mut p = Proc::spawn(
        Path::new(HAPROXY),
        &["-db", "-f", cfg.to_str().unwrap()],
        pki.path().join("haproxy.log"),
        &[],
    );
    let local = proxy_series("terminal", "local");
    let start = Instant::now();
    while metric(&metrics(gw).await, &local) < 1.0 {
        let exited = p.child.try_wait().unwrap();
        assert!(
            exited.is_none() && start.elapsed() < Duration::from_secs(20),
            "no health check from HAProxy (exit {exited:?}): {}",
            p.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (p, front)
}

fn tls_config(pki: &Pki, dev: &CertFiles) -> Arc<rustls::ClientConfig> {
    tls_client(pki, dev, ALPN_TERMINAL).unwrap()
}

/// The laptop's TLS on `tcp` (after whatever was written on it already).
async fn tls_on(
    pki: &Pki,
    dev: &CertFiles,
    tcp: TcpStream,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let name = kakehashi_transport::tls::server_name("localhost").unwrap();
    tokio::time::timeout(
        Duration::from_secs(10),
        tokio_rustls::TlsConnector::from(tls_config(pki, dev)).connect(name, tcp),
    )
    .await
    .map_err(|_| std::io::Error::other("TLS handshake timed out"))?
}

/// One message on a TLS connection from `from` to `to`; the stream (the
/// session's bytes follow an accepted session), the answer and the
/// connection's own address (what a balancer names).
async fn ask_from<M: Message>(
    pki: &Pki,
    dev: &CertFiles,
    from: [u8; 4],
    to: SocketAddr,
    m: &M,
) -> (
    tokio_rustls::client::TlsStream<TcpStream>,
    kakehashi_proto::Frame,
    SocketAddr,
) {
    let tcp = connect_from(from, to).await.unwrap();
    let local = tcp.local_addr().unwrap();
    let mut s = tls_on(pki, dev, tcp).await.unwrap();
    write_message(&mut s, m).await.unwrap();
    let f = tokio::time::timeout(Duration::from_secs(10), read_frame(&mut s))
        .await
        .expect("no answer through the balancer")
        .unwrap();
    (s, f, local)
}

async fn metrics(gw: &GatewayProc) -> String {
    http_get(gw.addrs.admin, "/metrics").await.unwrap().1
}

fn proxy_series(role: &str, result: &str) -> String {
    format!("kakehashi_proxy_headers_total{{result=\"{result}\",role=\"{role}\"}}")
}

/// Wait until the gateway has counted `n` connections with PROXY `result`.
async fn wait_counted(gw: &GatewayProc, result: &str, n: f64) {
    let series = proxy_series("terminal", result);
    let start = Instant::now();
    loop {
        let text = metrics(gw).await;
        let v = metric(&text, &series);
        if v >= n {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{series} = {v}, waiting for {n}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn records<'a>(
    audit: &'a [serde_json::Value],
    action: &str,
) -> impl Iterator<Item = &'a serde_json::Value> {
    let action = action.to_string();
    audit.iter().filter(move |r| r["action"] == action.as_str())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_laptop_through_haproxy_is_audited_with_its_own_address() {
    let mut pki = Pki::new();
    let db = pki.path().join("kakehashi.db");
    // HAProxy reaches the gateway from 127.0.0.1; laptops come from
    // 127.0.0.2 (through HAProxy) and 127.0.0.1 (the real client).
    let gw = start_gateway(
        &pki,
        GatewayOpts {
            identity: Some(login_sections(&db)),
            relay: "proxy_protocol_from = [\"127.0.0.1\"]".into(),
            ..Default::default()
        },
    )
    .await;
    let store = Store::open(db.to_str().unwrap()).await.unwrap();
    add_desk(&store, "DESK-P", 1, &["u-proxy"]).await;
    let desk = echo_server().await;
    // The agent dials the gateway itself, over QUIC (no balancer).
    let _agent = start_agent(&mut pki, "DESK-P", &gw.addrs, desk, "quic");
    let (haproxy, front) = start_haproxy(&pki, &gw).await;
    // HAProxy's health checks are PROXY v2 LOCAL headers: counted, no log
    // line, no handshake failure.
    wait_counted(&gw, "local", 3.0).await;
    let log = gw.proc.log_text();
    assert!(
        !log.contains("PROXY header refused") && !log.contains("TLS handshake"),
        "health checks were logged:\n{log}"
    );

    let dev = pki.device("LAPTOP-P", TerminalClass::Home);
    let device = device_id(&dev);
    // Log in through HAProxy from 127.0.0.2.
    let seed = seed_login(&store, "u-proxy", &device).await;
    let (_, f, login_from) = ask_from(
        &pki,
        &dev,
        [127, 0, 0, 2],
        front,
        &RedeemLogin {
            code: Secret(seed.code),
            code_verifier: Secret(seed.verifier),
        },
    )
    .await;
    let token = LoginResult::from_frame(&f)
        .expect("login through HAProxy")
        .token;
    // A session through HAProxy from 127.0.0.2, its bytes echoed by the desk.
    let mut session = None;
    let start = Instant::now();
    while session.is_none() {
        let (s, f, from) = ask_from(
            &pki,
            &dev,
            [127, 0, 0, 2],
            front,
            &SessionRequest {
                desk: "DESK-P".into(),
                token: Some(token.clone()),
            },
        )
        .await;
        match f.kind {
            FrameKind::SessionAccepted => {
                session = Some((s, SessionAccepted::from_frame(&f).unwrap().session_id, from))
            }
            // The agent may still be dialling in.
            _ if start.elapsed() < Duration::from_secs(20) => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            k => panic!("session refused through HAProxy: {k:?}"),
        }
    }
    let (mut s, id, session_from) = session.unwrap();
    s.write_all(b"through the balancer").await.unwrap();
    let mut echo = [0u8; 20];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut echo))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&echo, b"through the balancer");
    drop(s);

    // The audit log has the laptop's address and port as HAProxy saw them,
    // not HAProxy's own (127.0.0.1).
    let audit = audit_export(&gw).await;
    let start = records(&audit, "session.start")
        .find(|r| r["subject"] == id.as_str())
        .unwrap_or_else(|| panic!("no session.start for {id}: {audit:#?}"));
    assert_eq!(audit_detail(start)["source"], session_from.to_string());
    assert!(session_from.ip().to_string() == "127.0.0.2");
    let login = records(&audit, "login")
        .find(|r| audit_detail(r)["device"] == device.as_str())
        .unwrap_or_else(|| panic!("no login record: {audit:#?}"));
    assert_eq!(audit_detail(login)["peer"], login_from.to_string());

    // The real client through HAProxy (TLS over TCP): its session works
    // and its start record names a 127.0.0.1 port that is not the
    // gateway's view of HAProxy.
    let mut via = gw.addrs;
    via.terminal_tcp = front;
    let cfg = client_config_logged_in(&pki, &dev, &via, "u-proxy", token.expose());
    let client = start_client(&pki, &cfg, "DESK-P", "tcp").await.unwrap();
    wait_echo(client.listen, Duration::from_secs(20))
        .await
        .unwrap();
    let audit = audit_export(&gw).await;
    let sources: Vec<String> = records(&audit, "session.start")
        .map(|r| audit_detail(r)["source"].as_str().unwrap_or("").to_string())
        .collect();
    assert!(
        sources.iter().any(|s| s.starts_with("127.0.0.1:")),
        "{sources:?}"
    );
    drop(client);
    drop(haproxy);
}

#[tokio::test(flavor = "multi_thread")]
async fn proxy_headers_are_trusted_only_from_listed_balancers_and_only_when_well_formed() {
    let mut pki = Pki::new();
    let gw = start_gateway(
        &pki,
        GatewayOpts {
            relay: "proxy_protocol_from = [\"127.0.0.9\"]".into(),
            ..Default::default()
        },
    )
    .await;
    let to = gw.addrs.terminal_tcp;
    let dev = pki.device("LAPTOP-Q", TerminalClass::Mobile);
    let header = |from: SocketAddr| proxy::encode(Some((from, to)));
    let laptop: SocketAddr = "198.51.100.7:50000".parse().unwrap();
    let closed =
        |mut s: TcpStream| async move { closed_within(&mut s, Duration::from_secs(5)).await };

    // The listed balancer's health check: LOCAL, closed, counted, not logged.
    let mut s = connect_from([127, 0, 0, 9], to).await.unwrap();
    s.write_all(&proxy::encode(None)).await.unwrap();
    assert!(closed(s).await, "a LOCAL connection stays open");
    wait_counted(&gw, "local", 1.0).await;
    assert!(!gw.proc.log_text().contains("PROXY header refused"));

    // A header from an address that is not a listed balancer is never
    // believed: closed before TLS.
    let mut s = connect_from([127, 0, 0, 1], to).await.unwrap();
    s.write_all(&header(laptop)).await.unwrap();
    assert!(closed(s).await, "an unlisted PROXY header was served");
    wait_counted(&gw, "proxy_untrusted", 1.0).await;
    // Version 1 (text) from an unlisted address: the same.
    let mut s = connect_from([127, 0, 0, 1], to).await.unwrap();
    s.write_all(b"PROXY TCP4 198.51.100.7 127.0.0.1 50000 443\r\n")
        .await
        .unwrap();
    assert!(closed(s).await);
    wait_counted(&gw, "proxy_untrusted", 2.0).await;

    // A malformed header from the listed balancer: version 3.
    let mut bad = header(laptop);
    bad[12] = 0x31;
    let mut s = connect_from([127, 0, 0, 9], to).await.unwrap();
    s.write_all(&bad).await.unwrap();
    assert!(closed(s).await, "a malformed header was served");
    wait_counted(&gw, "proxy_header_invalid", 1.0).await;
    // One announcing more than the gateway reads.
    let mut big = header(laptop);
    big[14..16].copy_from_slice(&4096u16.to_be_bytes());
    let mut s = connect_from([127, 0, 0, 9], to).await.unwrap();
    s.write_all(&big).await.unwrap();
    assert!(closed(s).await, "an oversized header was served");
    wait_counted(&gw, "proxy_header_too_large", 1.0).await;
    // UDP instead of TCP.
    let mut udp = header(laptop);
    udp[13] = 0x12;
    let mut s = connect_from([127, 0, 0, 9], to).await.unwrap();
    s.write_all(&udp).await.unwrap();
    assert!(closed(s).await);
    wait_counted(&gw, "proxy_address_unsupported", 1.0).await;
    // No header at all from the listed balancer: TLS straight away fails.
    let tcp = connect_from([127, 0, 0, 9], to).await.unwrap();
    assert!(tls_on(&pki, &dev, tcp).await.is_err());
    wait_counted(&gw, "proxy_header_missing", 1.0).await;
    let log = gw.proc.log_text();
    for code in [
        "proxy_untrusted",
        "proxy_header_invalid",
        "proxy_header_too_large",
        "proxy_address_unsupported",
        "proxy_header_missing",
    ] {
        assert!(log.contains(code), "{code} is not logged:\n{log}");
    }

    // A well-formed header from the listed balancer, then the laptop's TLS:
    // served, and the connection's log lines carry the laptop's address.
    let ping = frame::encode(FrameKind::Ping, &[]).unwrap();
    let mut tcp = connect_from([127, 0, 0, 9], to).await.unwrap();
    tcp.write_all(&header(laptop)).await.unwrap();
    let mut s = tls_on(&pki, &dev, tcp).await.unwrap();
    write_raw(&mut s, &ping).await.unwrap();
    let f = read_frame(&mut s).await.unwrap();
    assert_eq!(f.kind, FrameKind::Pong);
    wait_counted(&gw, "accepted", 1.0).await;
    // A laptop connecting directly from an unlisted address is served as
    // before.
    let tcp = connect_from([127, 0, 0, 3], to).await.unwrap();
    let mut s = tls_on(&pki, &dev, tcp).await.unwrap();
    write_raw(&mut s, &ping).await.unwrap();
    assert_eq!(read_frame(&mut s).await.unwrap().kind, FrameKind::Pong);
    let text = metrics(&gw).await;
    assert_eq!(metric(&text, &proxy_series("terminal", "accepted")), 1.0);
    assert_eq!(metric(&text, &proxy_series("terminal", "local")), 1.0);
}
