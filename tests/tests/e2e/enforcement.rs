//! Fail closed when the desk does not enforce (issue 16 item 7): an agent
//! tells the gateway in its hello whether its RDP filter enforces session
//! controls. A session whose controls restrict anything is refused
//! (`desk_not_enforcing`, audited) when the desk's agent passes sessions
//! through — or is an older agent that does not say — unless an officer
//! registered the desk as a non-RDP service; then it is admitted and audited
//! as "controls not enforced: non-RDP desk". An agent without `[rdp]` and
//! without the explicit pass-through switch does not start.

use std::time::Duration;

use kakehashi_pki::TerminalClass;
use kakehashi_proto::{frame, FrameKind};
use kakehashi_store::{AuditRecord, Store};
use kakehashi_tests::*;

use crate::e2e::rdp::{rdp_server_cert, wait_log_line};

/// The audit records of `action` about `desk` (the subject of a refusal, the
/// `desk` of a session start).
async fn records(store: &Store, action: &str, desk: &str) -> Vec<AuditRecord> {
    store
        .audit_between(0, i64::MAX)
        .await
        .unwrap()
        .into_iter()
        .filter(|r| {
            r.action == action
                && (r.subject == desk || r.detail_json().unwrap()["desk"].as_str() == Some(desk))
        })
        .collect()
}

async fn agent_online(gw: &GatewayProc, desk: &str) {
    wait_log_line(&gw.proc, &["Agent online", desk], Duration::from_secs(20))
        .await
        .unwrap();
}

/// The shipped restricting controls ([`OPEN_POLICY`] grants no redirection)
/// reach three RDP desks: one whose agent passes through, one whose agent
/// enforces, one behind an older agent whose hello does not say. Then the
/// first desk is registered as non-RDP.
#[tokio::test(flavor = "multi_thread")]
async fn restricting_sessions_need_an_enforcing_agent_or_a_non_rdp_desk() {
    let mut pki = Pki::new();
    let db = pki.path().join("kakehashi.db");
    let gw = start_gateway(
        &pki,
        GatewayOpts {
            identity: Some(login_sections(&db)),
            ..Default::default()
        },
    )
    .await;
    let store = Store::open(db.to_str().unwrap()).await.unwrap();
    let echo = echo_server().await;
    for desk in ["DESK-PT", "DESK-EN", "DESK-OLD"] {
        add_rdp_desk(&store, desk, 2, &["u-ito"]).await;
    }
    // A pass-through agent ([rdp] enforce = false) for an RDP desk.
    let _pt = start_agent(&mut pki, "DESK-PT", &gw.addrs, echo, "quic");
    // An enforcing agent ([rdp] with the RDP server's key pair).
    let rdp = rdp_server_cert(&mut pki);
    let _en = start_agent_rdp(&mut pki, "DESK-EN", &gw.addrs, echo, "tcp", &rdp);
    // An older agent: its hello says nothing about enforcing.
    let old = pki.agent("DESK-OLD");
    let mut old_tunnel = raw_tls(&pki, &old, gw.addrs.agent_tcp, kakehashi_proto::ALPN_AGENT)
        .await
        .unwrap();
    let hello = frame::encode(
        FrameKind::AgentHello,
        br#"{"software":"kakehashi-agent/0.9"}"#,
    )
    .unwrap();
    kakehashi_proto::io::write_raw(&mut old_tunnel, &hello)
        .await
        .unwrap();
    let welcome = kakehashi_proto::io::read_frame(&mut old_tunnel)
        .await
        .unwrap();
    assert_eq!(welcome.kind, FrameKind::AgentWelcome);
    for desk in ["DESK-PT", "DESK-EN", "DESK-OLD"] {
        agent_online(&gw, desk).await;
    }

    let dev = pki.device("LAPTOP-ITO", TerminalClass::Satellite);
    let token = redeem_login(&pki, &dev, gw.addrs.terminal_tcp, &store, "u-ito").await;

    // The laptop's `kakehashi connect` to the pass-through desk is refused.
    let cfg = client_config_logged_in(&pki, &dev, &gw.addrs, "u-ito", &token);
    let client = start_client(&pki, &cfg, "DESK-PT", "tcp").await.unwrap();
    assert!(
        refused(client.listen).await,
        "a restricting session reached a pass-through agent"
    );
    client
        .proc
        .wait_log("desk_not_enforcing", Duration::from_secs(10))
        .await
        .unwrap();
    let r = request_session(&pki, &dev, &gw, "DESK-PT", &token)
        .await
        .unwrap_err();
    assert_eq!(r.code, "desk_not_enforcing", "{r:?}");
    assert!(
        !r.ja.is_ascii() && r.en.contains("does not enforce"),
        "{r:?}"
    );
    // …and so is the older agent's desk: silence is not enforcement.
    let r = request_session(&pki, &dev, &gw, "DESK-OLD", &token)
        .await
        .unwrap_err();
    assert_eq!(r.code, "desk_not_enforcing", "{r:?}");
    // The refusals are audited with their reason; no session started.
    for desk in ["DESK-PT", "DESK-OLD"] {
        let denied = records(&store, "session.denied", desk).await;
        assert!(
            denied
                .iter()
                .any(|d| d.reason == "desk_not_enforcing" && d.actor == "user:u-ito"),
            "{desk}: {denied:?}"
        );
        assert!(records(&store, "session.start", desk).await.is_empty());
    }

    // The enforcing agent's desk is admitted, and the record says enforced.
    let id = request_session(&pki, &dev, &gw, "DESK-EN", &token)
        .await
        .unwrap();
    let start = records(&store, "session.start", "DESK-EN").await;
    let start = start
        .iter()
        .find(|r| r.subject == id)
        .expect("session.start");
    let d = start.detail_json().unwrap();
    assert_eq!(d["enforced"], true, "{d}");
    assert_eq!(d["controls"]["clipboard"], "none", "{d}");

    // An officer registers the pass-through desk as a non-RDP service: its
    // sessions are admitted without enforcement, and audited so.
    let (ok, out) = gateway_cli(&[
        "admin",
        "--config",
        gw.config.to_str().unwrap(),
        "desk",
        "set",
        "--id",
        "DESK-PT",
        "--service",
        "other",
        "--reason",
        "an echo service, not a desk PC",
    ])
    .await;
    assert!(ok, "{out}");
    wait_echo(client.listen, Duration::from_secs(10))
        .await
        .unwrap();
    let starts = records(&store, "session.start", "DESK-PT").await;
    assert!(!starts.is_empty());
    for s in &starts {
        let d = s.detail_json().unwrap();
        assert_eq!(d["enforced"], false, "{d}");
        assert_eq!(
            d["enforcement"], "controls not enforced: non-RDP desk",
            "{d}"
        );
    }
    // The older agent's desk is still an RDP desk: still refused.
    let r = request_session(&pki, &dev, &gw, "DESK-OLD", &token)
        .await
        .unwrap_err();
    assert_eq!(r.code, "desk_not_enforcing", "{r:?}");
    drop(old_tunnel);
}

/// A session to a desk registered as non-RDP runs through a pass-through
/// agent; registering the desk as RDP again ends it within a second, with
/// `desk_not_enforcing`.
#[tokio::test(flavor = "multi_thread")]
async fn a_desk_registered_as_rdp_again_ends_its_unenforced_sessions() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut pki = Pki::new();
    let db = pki.path().join("kakehashi.db");
    let gw = start_gateway(
        &pki,
        GatewayOpts {
            identity: Some(login_sections(&db)),
            ..Default::default()
        },
    )
    .await;
    let store = Store::open(db.to_str().unwrap()).await.unwrap();
    add_desk(&store, "DESK-ECHO", 2, &["u-kato"]).await;
    let echo = echo_server().await;
    let _agent = start_agent(&mut pki, "DESK-ECHO", &gw.addrs, echo, "tcp");
    agent_online(&gw, "DESK-ECHO").await;
    let dev = pki.device("LAPTOP-KATO", TerminalClass::Satellite);
    let token = redeem_login(&pki, &dev, gw.addrs.terminal_tcp, &store, "u-kato").await;
    let cfg = client_config_logged_in(&pki, &dev, &gw.addrs, "u-kato", &token);
    let client = start_client(&pki, &cfg, "DESK-ECHO", "quic").await.unwrap();
    let mut s = tokio::net::TcpStream::connect(client.listen).await.unwrap();
    s.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut buf))
        .await
        .expect("no echo")
        .unwrap();
    let (ok, out) = gateway_cli(&[
        "admin",
        "--config",
        gw.config.to_str().unwrap(),
        "desk",
        "set",
        "--id",
        "DESK-ECHO",
        "--service",
        "rdp",
    ])
    .await;
    assert!(ok, "{out}");
    let mut rest = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut rest)).await;
    assert!(ended.is_ok(), "the unenforced session kept running");
    // The client asks why once both sides of the splice are closed.
    drop(s);
    client
        .proc
        .wait_log("desk_not_enforcing", Duration::from_secs(10))
        .await
        .unwrap();
    let log = store.audit_between(0, i64::MAX).await.unwrap();
    assert!(
        log.iter()
            .any(|r| r.action == "session.end" && r.reason == "desk_not_enforcing"),
        "{log:?}"
    );
}

/// An agent configuration without `[rdp]` and without the pass-through switch
/// is refused at start, with a message naming both fixes.
#[tokio::test(flavor = "multi_thread")]
async fn agent_without_rdp_section_does_not_start() {
    let mut pki = Pki::new();
    let files = pki.agent("DESK-NO-RDP");
    // Nothing listens there: the agent must stop before dialling.
    let nowhere: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
    let gw = GatewayAddrs {
        terminal_quic: nowhere,
        terminal_tcp: nowhere,
        agent_quic: nowhere,
        agent_tcp: nowhere,
        admin: nowhere,
    };
    let mut agent = start_agent_extra(&pki, &files, &gw, nowhere, "tcp", "");
    let status = agent.wait_exit(Duration::from_secs(20)).await.unwrap();
    assert!(!status.success());
    let log = agent.log_text();
    assert!(log.contains("no [rdp] section"), "{log}");
    assert!(log.contains("server_cert and server_key"), "{log}");
    assert!(log.contains("enforce = false"), "{log}");
    // With the explicit switch the same agent starts (and keeps dialling).
    let mut agent = start_agent_extra(&pki, &files, &gw, nowhere, "tcp", PASS_THROUGH);
    assert!(
        agent.wait_exit(Duration::from_secs(2)).await.is_err(),
        "{}",
        agent.log_text()
    );
}
