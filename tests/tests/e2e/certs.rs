//! Certificates the gateway must refuse at the handshake, with a clear
//! reason on the client, a log line on the gateway, and nothing crashing.

use std::time::Duration;

use kakehashi_pki::{CaDir, InitOptions, IssueRequest, Subject, TerminalClass};
use kakehashi_tests::*;

/// Run `kakehashi connect` expecting it to fail; returns its stderr.
async fn connect_fails(pki: &Pki, cfg: &std::path::Path, transport: &str) -> String {
    let mut p = Proc::spawn(
        &bin("kakehashi"),
        &[
            "--config",
            cfg.to_str().unwrap(),
            "connect",
            "DESK-C",
            "--transport",
            transport,
        ],
        pki.path()
            .join(format!("fail-{}.log", rand::random::<u32>())),
        &[],
    );
    let status = p
        .wait_exit(Duration::from_secs(20))
        .await
        .expect("client should give up");
    assert!(!status.success(), "client must fail");
    p.log_text()
}

/// A gateway with a working desk, and a healthy laptop proving it still serves.
struct World {
    pki: Pki,
    gw: GatewayProc,
    _agent: Proc,
    good: ClientProc,
}

async fn world() -> World {
    let mut pki = Pki::new();
    let gw = start_gateway(&pki, GatewayOpts::default()).await;
    let desk = echo_server().await;
    let agent = start_agent(&mut pki, "DESK-C", &gw.addrs, desk, "auto");
    let dev = pki.device("LAPTOP-GOOD", TerminalClass::Home);
    let cfg = client_config(&pki, &dev, gw.addrs.terminal_tcp, gw.addrs.terminal_quic);
    let good = start_client(&pki, &cfg, "DESK-C", "quic").await.unwrap();
    wait_echo(good.listen, Duration::from_secs(20))
        .await
        .unwrap();
    World {
        pki,
        gw,
        _agent: agent,
        good,
    }
}

async fn still_serves(w: &World) {
    assert_eq!(
        roundtrip(w.good.listen, b"still here").await.unwrap(),
        b"still here"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn revoked_device_is_refused_on_both_transports_and_crl_reloads() {
    let mut w = world().await;
    let dev = w.pki.device("LAPTOP-LOST", TerminalClass::Home);
    let cfg = client_config(
        &w.pki,
        &dev,
        w.gw.addrs.terminal_tcp,
        w.gw.addrs.terminal_quic,
    );
    // Works before revocation…
    let before = start_client(&w.pki, &cfg, "DESK-C", "tcp").await.unwrap();
    wait_echo(before.listen, Duration::from_secs(10))
        .await
        .unwrap();
    let before_quic = start_client(&w.pki, &cfg, "DESK-C", "quic").await.unwrap();
    wait_echo(before_quic.listen, Duration::from_secs(10))
        .await
        .unwrap();
    // A session that is open when the revocation lands.
    let mut open_session = tokio::net::TcpStream::connect(before_quic.listen)
        .await
        .unwrap();
    {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        open_session.write_all(b"open").await.unwrap();
        let mut b = [0u8; 4];
        open_session.read_exact(&mut b).await.unwrap();
    }
    // …and is refused once the CRL file changes, without restarting the gateway.
    w.pki.revoke(&dev.serial);
    w.gw.proc
        .wait_log("CRL reloaded", Duration::from_secs(5))
        .await
        .unwrap();
    // The open session is ended by the gateway.
    {
        use tokio::io::AsyncReadExt as _;
        let mut b = [0u8; 16];
        let n = tokio::time::timeout(Duration::from_secs(5), open_session.read(&mut b))
            .await
            .expect("ended at once");
        assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
        w.gw.proc
            .wait_log("certificate_revoked", Duration::from_secs(2))
            .await
            .unwrap();
        w.gw.proc
            .wait_log("Session ended by the gateway", Duration::from_secs(2))
            .await
            .unwrap();
    }
    for transport in ["tcp", "quic"] {
        let err = connect_fails(&w.pki, &cfg, transport).await;
        assert!(err.contains("certificate_revoked"), "{transport}: {err}");
        assert!(err.contains("失効"), "Japanese sentence first: {err}");
    }
    // Even the already-running client's new sessions are refused now.
    // (TLS resumption would skip the certificate check; the gateway re-checks.)
    // Over TCP the new connection resumes its TLS session; over QUIC the
    // connection made before the revocation is still open. Both are refused.
    for c in [&before, &before_quic] {
        assert!(refused(c.listen).await, "{}", c.transport);
        c.proc
            .wait_log("certificate_revoked", Duration::from_secs(5))
            .await
            .unwrap();
    }
    assert!(w.gw.proc.log_text().contains("handshake refused"));
    still_serves(&w).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn certificate_from_another_ca_is_refused() {
    let w = world().await;
    // Same CA name as ours (the harder case: the names chain, the signature does not).
    impostor_ca(&w, InitOptions::default()).await;
    // A CA with another name altogether.
    impostor_ca(
        &w,
        InitOptions {
            organization: "Elsewhere".into(),
            common_name: "Some Other CA".into(),
        },
    )
    .await;
    still_serves(&w).await;
}

async fn impostor_ca(w: &World, opts: InitOptions) {
    let mut other = CaDir::init(
        &w.pki
            .path()
            .join(format!("other-ca-{}", opts.common_name.len())),
        &opts,
    )
    .unwrap();
    let i = other
        .issue(&IssueRequest::new(Subject::Device {
            id: "LAPTOP-X".into(),
            class: TerminalClass::Home,
            user: None,
        }))
        .unwrap();
    let dev = CertFiles {
        cert: i.cert_path,
        key: i.key_path,
        serial: i.serial,
    };
    let cfg = client_config(
        &w.pki,
        &dev,
        w.gw.addrs.terminal_tcp,
        w.gw.addrs.terminal_quic,
    );
    for transport in ["tcp", "quic"] {
        let err = connect_fails(&w.pki, &cfg, transport).await;
        assert!(err.contains("certificate_unknown_ca"), "{transport}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn expired_device_certificate_is_refused() {
    let mut w = world().await;
    let dev = w.pki.expired_device("LAPTOP-OLD");
    let cfg = client_config(
        &w.pki,
        &dev,
        w.gw.addrs.terminal_tcp,
        w.gw.addrs.terminal_quic,
    );
    for transport in ["tcp", "quic"] {
        let err = connect_fails(&w.pki, &cfg, transport).await;
        assert!(err.contains("certificate_expired"), "{transport}: {err}");
    }
    still_serves(&w).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn agent_certificate_cannot_be_used_as_a_laptop() {
    let mut w = world().await;
    let agent_cert = w.pki.agent("DESK-OTHER");
    let cfg = client_config(
        &w.pki,
        &agent_cert,
        w.gw.addrs.terminal_tcp,
        w.gw.addrs.terminal_quic,
    );
    let err = connect_fails(&w.pki, &cfg, "tcp").await;
    assert!(err.contains("wrong_certificate_kind"), "{err}");
    still_serves(&w).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn revoking_a_connected_agent_drops_its_tunnel() {
    let mut w = world().await;
    let files = w.pki.agent("DESK-LIVE");
    let desk = echo_server().await;
    let _agent = start_agent_with(&w.pki, &files, &w.gw.addrs, desk, "quic");
    let dev = w.pki.device("LAPTOP-L", TerminalClass::Home);
    let cfg = client_config(
        &w.pki,
        &dev,
        w.gw.addrs.terminal_tcp,
        w.gw.addrs.terminal_quic,
    );
    let c = start_client(&w.pki, &cfg, "DESK-LIVE", "quic")
        .await
        .unwrap();
    wait_echo(c.listen, Duration::from_secs(20)).await.unwrap();
    w.pki.revoke(&files.serial);
    w.gw.proc
        .wait_log(
            "Dropping the tunnel of a revoked agent",
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    assert!(refused(c.listen).await);
    c.proc
        .wait_log("desk_offline", Duration::from_secs(5))
        .await
        .unwrap();
    still_serves(&w).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn revoked_agent_cannot_register() {
    let mut w = world().await;
    let files = w.pki.agent("DESK-REVOKED");
    w.pki.revoke(&files.serial);
    w.gw.proc
        .wait_log("CRL reloaded", Duration::from_secs(5))
        .await
        .unwrap();
    let desk = echo_server().await;
    let agent = start_agent_with(&w.pki, &files, &w.gw.addrs, desk, "tcp");
    agent
        .wait_log("certificate_revoked", Duration::from_secs(10))
        .await
        .unwrap();
    // The laptop asking for that desk is told it is offline.
    let dev = w.pki.device("LAPTOP-R", TerminalClass::Home);
    let cfg = client_config(
        &w.pki,
        &dev,
        w.gw.addrs.terminal_tcp,
        w.gw.addrs.terminal_quic,
    );
    let mut c = Proc::spawn(
        &bin("kakehashi"),
        &[
            "--config",
            cfg.to_str().unwrap(),
            "connect",
            "DESK-REVOKED",
            "--transport",
            "tcp",
        ],
        w.pki.path().join("client-r.log"),
        &[],
    );
    let listen: std::net::SocketAddr = c
        .wait_line("listening on ", Duration::from_secs(10))
        .await
        .unwrap()
        .parse()
        .unwrap();
    assert!(refused(listen).await);
    c.wait_log("desk_offline", Duration::from_secs(5))
        .await
        .unwrap();
    assert!(w.gw.proc.log_text().contains("handshake refused"));
    still_serves(&w).await;
}

/// The gateway's `kakehashi_crl_next_update_timestamp_seconds` once it equals `want`.
async fn wait_crl_metric(w: &World, want: i64) {
    let line = format!("kakehashi_crl_next_update_timestamp_seconds {want}");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, text) = http_get(w.gw.addrs.admin, "/metrics").await.unwrap();
        if text.lines().any(|l| l == line) {
            assert!(
                text.lines()
                    .any(|l| l.starts_with("kakehashi_crl_age_seconds ")),
                "{text}"
            );
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no `{line}` in:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Issue the CRL as if `days_ago` days ago; returns its `nextUpdate`.
fn crl_issued_days_ago(w: &mut World, days_ago: i64) -> i64 {
    let at = time::OffsetDateTime::now_utc() - time::Duration::days(days_ago);
    let path = w.pki.ca.write_crl_issued_at(at).unwrap();
    kakehashi_transport::crl::CrlFile::read(&path)
        .unwrap()
        .dates
        .next_update
        .expect("our CA writes nextUpdate")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stale_crl_fails_closed_after_its_grace_and_a_current_one_reopens() {
    let mut w = world().await;
    let dev = w.pki.device("LAPTOP-CRL", TerminalClass::Home);
    // The gateway alone checks the CRL here: the laptop's config names none.
    let cfg = client_config(
        &w.pki,
        &dev,
        w.gw.addrs.terminal_tcp,
        w.gw.addrs.terminal_quic,
    );

    // A day past nextUpdate (issued 8 days ago, valid 7): inside the 72 h
    // grace, still served, and the gateway warns.
    let next = crl_issued_days_ago(&mut w, 8);
    wait_crl_metric(&w, next).await;
    w.gw.proc
        .wait_log("The CRL is past nextUpdate", Duration::from_secs(5))
        .await
        .unwrap();
    let c = start_client(&w.pki, &cfg, "DESK-C", "tcp").await.unwrap();
    wait_echo(c.listen, Duration::from_secs(10)).await.unwrap();
    drop(c);

    // Four days past: stale. New sessions and agents are refused with the reason.
    let next = crl_issued_days_ago(&mut w, 11);
    wait_crl_metric(&w, next).await;
    w.gw.proc
        .wait_log("crl_stale", Duration::from_secs(5))
        .await
        .unwrap();
    for transport in ["tcp", "quic"] {
        let err = connect_fails(&w.pki, &cfg, transport).await;
        assert!(err.contains("crl_stale"), "{transport}: {err}");
        assert!(err.contains("失効リスト"), "Japanese sentence first: {err}");
    }
    // The running laptop's next session too.
    assert!(refused(w.good.listen).await);
    // An agent holding the stale CRL dials no gateway, and says why.
    let desk = echo_server().await;
    let agent = start_agent(&mut w.pki, "DESK-STALE", &w.gw.addrs, desk, "tcp");
    agent
        .wait_log("crl_stale", Duration::from_secs(10))
        .await
        .unwrap();
    // A laptop holding the stale CRL refuses on its own side, before any traffic.
    let with_crl = client_config(
        &w.pki,
        &dev,
        w.gw.addrs.terminal_tcp,
        w.gw.addrs.terminal_quic,
    );
    {
        use std::io::Write as _;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&with_crl)
            .unwrap();
        writeln!(f, "crl = \"{}\"", w.pki.ca.crl_path().display()).unwrap();
    }
    let err = connect_fails(&w.pki, &with_crl, "tcp").await;
    assert!(err.contains("crl_stale"), "{err}");

    // The CA's current CRL: served again without a restart, the agent too.
    let next = crl_issued_days_ago(&mut w, 0);
    wait_crl_metric(&w, next).await;
    // The stale CRL dropped the desks' tunnels too (fail closed); their
    // agents come back at their next attempt.
    wait_echo(w.good.listen, Duration::from_secs(20))
        .await
        .unwrap();
    let c = start_client(&w.pki, &cfg, "DESK-STALE", "tcp")
        .await
        .unwrap();
    wait_echo(c.listen, Duration::from_secs(20)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_certificate_presented_by_a_laptop_is_rejected() {
    // Our CA issued it, it is current and not revoked, but it is for server
    // authentication only: the gateway refuses it in the handshake, and the
    // laptop says so with `certificate_rejected`, not a raw TLS alert.
    let w = world().await;
    let server = w.pki.gateway_cert();
    let cfg = client_config(
        &w.pki,
        &server,
        w.gw.addrs.terminal_tcp,
        w.gw.addrs.terminal_quic,
    );
    for transport in ["tcp", "quic"] {
        let err = connect_fails(&w.pki, &cfg, transport).await;
        assert!(err.contains("certificate_rejected"), "{transport}: {err}");
        assert!(err.contains("受け付けませんでした"), "{transport}: {err}");
    }
    still_serves(&w).await;
}

/// The gateway certificate renewed on disk (revoked as superseded, a new
/// one issued for the same name into the same files) is presented to new
/// handshakes within seconds, without a restart, while a session opened
/// before goes on (issue 20: rotation without cutting sessions).
#[tokio::test(flavor = "multi_thread")]
async fn a_renewed_gateway_certificate_is_presented_without_a_restart() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut w = world().await;
    let mut live = tokio::net::TcpStream::connect(w.good.listen).await.unwrap();
    live.write_all(b"before").await.unwrap();
    let mut buf = [0u8; 6];
    live.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"before");

    let peek = w.pki.device("LAPTOP-PEEK", TerminalClass::Home);
    let old = w.pki.gateway_cert();
    let addr = w.gw.addrs.terminal_tcp;
    assert_eq!(presented_serial(&w.pki, &peek, addr).await, old.serial);

    w.pki
        .ca
        .revoke(&old.serial, kakehashi_pki::RevokeReason::Superseded)
        .unwrap();
    let new = w
        .pki
        .ca
        .issue(&IssueRequest::new(Subject::Gateway {
            name: "localhost".into(),
            ips: vec![],
        }))
        .unwrap();
    assert_eq!(
        new.cert_path, old.cert,
        "renewed into the files the gateway reads"
    );
    w.gw.proc
        .wait_log("Gateway certificate reloaded", Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(
        presented_serial(&w.pki, &peek, addr).await,
        new.serial,
        "new handshakes get the new certificate"
    );
    // The session opened before the renewal goes on.
    live.write_all(b"after!").await.unwrap();
    live.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"after!");
    still_serves(&w).await;
}

/// The serial of the certificate the gateway at `addr` presents.
async fn presented_serial(pki: &Pki, dev: &CertFiles, addr: std::net::SocketAddr) -> String {
    let s = raw_tls(pki, dev, addr, kakehashi_proto::ALPN_TERMINAL)
        .await
        .unwrap();
    let der = s.get_ref().1.peer_certificates().unwrap()[0].clone();
    let facts = kakehashi_transport::tls::PeerCertFacts::from_der(&der).unwrap();
    kakehashi_pki::hex_serial_bytes(&facts.serial)
}
