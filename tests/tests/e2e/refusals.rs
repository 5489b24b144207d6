//! Refusals end to end through the real binaries, each with its stable
//! reason code (issue 16 item 10): a gateway whose certificate is not from
//! our CA, a laptop certificate posing as a desk, a gateway without a store,
//! an expired login token, a full gateway, a gateway shutting down, and a
//! desk whose RDP server is not there.

use std::net::SocketAddr;
use std::time::Duration;

use kakehashi_pki::TerminalClass;
use kakehashi_proto::message::{Message, Secret, SessionRequest};
use kakehashi_proto::{FrameKind, Refusal};
use kakehashi_store::{Audit, Hash256, NewLoginToken, Store};
use kakehashi_tests::*;

fn request(desk: &str, token: Option<&str>) -> SessionRequest {
    SessionRequest {
        desk: desk.into(),
        token: token.map(|t| Secret(t.into())),
    }
}

/// The refusal code of a session request from `dev` over TLS/TCP.
async fn refused(pki: &Pki, dev: &CertFiles, gw: &GatewayProc, m: &SessionRequest) -> String {
    let (_s, f) = ask_terminal(pki, dev, gw.addrs.terminal_tcp, m).await;
    assert_eq!(f.kind, FrameKind::Refused, "not refused: {:?}", f.kind);
    Refusal::from_frame(&f).unwrap().code
}

/// An echo desk `desk` whose agent's tunnel is QUIC and up, and the laptop
/// `laptop`'s own QUIC connection to `gw` (raw: the test speaks the
/// protocol itself).
async fn quic_laptop_and_desk(
    pki: &mut Pki,
    gw: &GatewayProc,
    desk: &str,
    laptop: &str,
) -> (Proc, CertFiles, quinn::Endpoint, quinn::Connection) {
    let echo = echo_server().await;
    let agent = start_agent(pki, desk, &gw.addrs, echo, "quic");
    let dev = pki.device(laptop, TerminalClass::Home);
    wait_online(&agent).await;
    let (ep, conn) = raw_quic(
        pki,
        &dev,
        gw.addrs.terminal_quic,
        kakehashi_proto::ALPN_TERMINAL,
    )
    .await
    .unwrap();
    (agent, dev, ep, conn)
}

/// Waits until the desk's agent has its tunnel up.
async fn wait_online(agent: &Proc) {
    agent
        .wait_log("Tunnel up", Duration::from_secs(20))
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", agent.log_text()));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_laptop_and_an_agent_refuse_a_gateway_not_from_our_ca() {
    let mut ours = Pki::new();
    let theirs = Pki::new();
    // A gateway with a certificate from another CA, on the addresses our
    // laptop and agent are configured with.
    let gw = start_gateway(&theirs, GatewayOpts::default()).await;
    let dev = ours.device("LAPTOP-U", TerminalClass::Home);
    let cfg = client_config(&ours, &dev, gw.addrs.terminal_tcp, gw.addrs.terminal_quic);
    for transport in ["tcp", "quic"] {
        let mut p = Proc::spawn(
            &bin("kakehashi"),
            &[
                "--config",
                cfg.to_str().unwrap(),
                "connect",
                "DESK-U",
                "--transport",
                transport,
            ],
            ours.path().join(format!("untrusted-{transport}.log")),
            &[],
        );
        let status = p.wait_exit(Duration::from_secs(20)).await.unwrap();
        assert!(!status.success());
        let log = p.log_text();
        assert!(log.contains("gateway_untrusted"), "{transport}: {log}");
    }
    let echo = echo_server().await;
    let agent = start_agent(&mut ours, "DESK-U", &gw.addrs, echo, "tcp");
    agent
        .wait_log("gateway_untrusted", Duration::from_secs(20))
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", agent.log_text()));
    assert!(!gw.proc.log_text().contains("Agent registered"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_laptop_certificate_cannot_pose_as_a_desk() {
    let mut pki = Pki::new();
    let gw = start_gateway(&pki, GatewayOpts::default()).await;
    let laptop = pki.device("LAPTOP-AS-DESK", TerminalClass::Home);
    let echo = echo_server().await;
    let agent = start_agent_with(&pki, &laptop, &gw.addrs, echo, "tcp");
    // The agent itself stops at start: a device certificate is not a desk's.
    let mut agent = agent;
    let status = agent.wait_exit(Duration::from_secs(20)).await;
    let log = agent.log_text();
    assert!(
        status.is_ok_and(|s| !s.success()) && log.contains("not an agent certificate"),
        "{log}"
    );
    // And on the wire, the gateway refuses it on the agent listener.
    let (mut s, f) = {
        let mut s = raw_tls(
            &pki,
            &laptop,
            gw.addrs.agent_tcp,
            kakehashi_proto::ALPN_AGENT,
        )
        .await
        .unwrap();
        let f = tokio::time::timeout(
            Duration::from_secs(10),
            kakehashi_proto::io::read_frame(&mut s),
        )
        .await
        .expect("an answer")
        .unwrap();
        (s, f)
    };
    let _ = &mut s;
    assert_eq!(f.kind, FrameKind::Refused);
    assert_eq!(
        Refusal::from_frame(&f).unwrap().code,
        "wrong_certificate_kind"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gateway_without_a_store_refuses_every_session() {
    let mut pki = Pki::new();
    let gw = start_gateway(
        &pki,
        GatewayOpts {
            // No [store], no [testing] relay: nothing to decide with.
            identity: Some("[identity]\nrequire_login = false\n".into()),
            ..Default::default()
        },
    )
    .await;
    let echo = echo_server().await;
    let agent = start_agent(&mut pki, "DESK-N", &gw.addrs, echo, "tcp");
    let dev = pki.device("LAPTOP-N", TerminalClass::Satellite);
    wait_online(&agent).await;
    assert_eq!(
        refused(&pki, &dev, &gw, &request("DESK-N", None)).await,
        "policy_unavailable"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expired_login_token_is_refused() {
    let mut pki = Pki::new();
    let db = pki.path().join("expired.db");
    let gw = start_gateway(
        &pki,
        GatewayOpts {
            identity: Some(login_sections(&db)),
            ..Default::default()
        },
    )
    .await;
    let store = Store::open(db.to_str().unwrap()).await.unwrap();
    add_desk(&store, "DESK-E", 1, &["u-exp"]).await;
    let dev = pki.device("LAPTOP-E", TerminalClass::Satellite);
    let now = kakehashi_store::unix_now();
    store
        .upsert_device(
            &kakehashi_store::DeviceSpec {
                id: "LAPTOP-E".into(),
                class: kakehashi_store::DeviceClass::Satellite,
                loaned_to: Some("u-exp".into()),
                cert_serial: Some(dev.serial.clone()),
            },
            Audit::new(now - 200, "test", "device.register").subject("LAPTOP-E"),
        )
        .await
        .unwrap();
    let token = "khs1.expired-token-for-the-test-0000000000000000";
    store
        .create_login_token(
            &NewLoginToken {
                token_hash: Hash256::digest(token),
                user_id: "u-exp".into(),
                device_id: "LAPTOP-E".into(),
                cert_serial: dev.serial.clone(),
                expires_at: now - 10,
            },
            Audit::new(now - 100, "test", "login").subject("u-exp"),
        )
        .await
        .unwrap();
    assert_eq!(
        refused(&pki, &dev, &gw, &request("DESK-E", Some(token))).await,
        "token_expired"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_gateway_refuses_the_next_session() {
    let mut pki = Pki::new();
    let gw = start_gateway(
        &pki,
        GatewayOpts {
            max_sessions: Some(1),
            ..Default::default()
        },
    )
    .await;
    let echo = echo_server().await;
    let agent = start_agent(&mut pki, "DESK-F", &gw.addrs, echo, "tcp");
    let dev = pki.device("LAPTOP-F", TerminalClass::Home);
    wait_online(&agent).await;
    // One live session (its stream held open), then the next.
    let (held, f) = ask_terminal(&pki, &dev, gw.addrs.terminal_tcp, &request("DESK-F", None)).await;
    assert_eq!(f.kind, FrameKind::SessionAccepted);
    assert_eq!(
        refused(&pki, &dev, &gw, &request("DESK-F", None)).await,
        "capacity_full"
    );
    drop(held);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gateway_shutting_down_refuses_new_sessions_on_open_connections() {
    let mut pki = Pki::new();
    let gw = start_gateway(&pki, GatewayOpts::default()).await;
    let (_agent, _dev, _ep, conn) = quic_laptop_and_desk(&mut pki, &gw, "DESK-S", "LAPTOP-S").await;
    // A live session keeps the gateway in its grace period.
    let (mut tx, mut rx) = conn.open_bi().await.unwrap();
    tx.write_all(&request("DESK-S", None).to_frame().unwrap())
        .await
        .unwrap();
    let f = kakehashi_proto::io::read_frame(&mut rx).await.unwrap();
    assert_eq!(f.kind, FrameKind::SessionAccepted);
    gw.proc.terminate();
    gw.proc
        .wait_log("Shutting down", Duration::from_secs(10))
        .await
        .unwrap();
    let (mut tx2, mut rx2) = conn.open_bi().await.unwrap();
    tx2.write_all(&request("DESK-S", None).to_frame().unwrap())
        .await
        .unwrap();
    let f = tokio::time::timeout(
        Duration::from_secs(10),
        kakehashi_proto::io::read_frame(&mut rx2),
    )
    .await
    .expect("an answer")
    .unwrap();
    assert_eq!(f.kind, FrameKind::Refused);
    assert_eq!(Refusal::from_frame(&f).unwrap().code, "restarting");
    drop((tx, rx));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_desk_whose_server_is_not_there_is_target_unreachable() {
    let mut pki = Pki::new();
    let gw = start_gateway(&pki, GatewayOpts::default()).await;
    // A port that was free a moment ago: nothing listens there.
    let nothing: SocketAddr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let agent = start_agent(&mut pki, "DESK-T", &gw.addrs, nothing, "tcp");
    let dev = pki.device("LAPTOP-T", TerminalClass::Home);
    wait_online(&agent).await;
    // The refusal may come in place of the acceptance or as the session's end.
    let (mut s, f) =
        ask_terminal(&pki, &dev, gw.addrs.terminal_tcp, &request("DESK-T", None)).await;
    let code = if f.kind == FrameKind::Refused {
        Refusal::from_frame(&f).unwrap().code
    } else {
        let _ = &mut s;
        panic!(
            "accepted a session to a desk whose server is not there: {:?}",
            f.kind
        );
    };
    assert_eq!(code, "target_unreachable");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_silent_laptop_or_agent_is_refused_with_timeout() {
    // Both finish the TLS handshake, then say nothing: the gateway answers
    // `timeout` after its handshake time-out (5 s in tests) and closes.
    let mut pki = Pki::new();
    let gw = start_gateway(&pki, GatewayOpts::default()).await;
    let dev = pki.device("LAPTOP-SILENT", TerminalClass::Home);
    let agent = pki.agent("DESK-SILENT");
    let mut laptop = raw_tls(
        &pki,
        &dev,
        gw.addrs.terminal_tcp,
        kakehashi_proto::ALPN_TERMINAL,
    )
    .await
    .unwrap();
    let mut desk = raw_tls(
        &pki,
        &agent,
        gw.addrs.agent_tcp,
        kakehashi_proto::ALPN_AGENT,
    )
    .await
    .unwrap();
    for (who, s) in [("laptop", &mut laptop), ("agent", &mut desk)] {
        let f = tokio::time::timeout(Duration::from_secs(20), kakehashi_proto::io::read_frame(s))
            .await
            .unwrap_or_else(|_| panic!("{who}: no answer"))
            .unwrap();
        assert_eq!(f.kind, FrameKind::Refused, "{who}");
        let r = Refusal::from_frame(&f).unwrap();
        assert_eq!(r.code, "timeout", "{who}");
        assert!(r.ja.contains("時間内"), "{who}: {}", r.ja);
        assert!(
            closed_within(s, Duration::from_secs(5)).await,
            "{who}: still open"
        );
    }
}

/// One session request on a new stream of a laptop's QUIC connection: the
/// stream and the gateway's answer.
async fn quic_session(
    conn: &quinn::Connection,
    desk: &str,
) -> (quinn::SendStream, quinn::RecvStream, kakehashi_proto::Frame) {
    let (mut tx, mut rx) = conn.open_bi().await.unwrap();
    tx.write_all(&request(desk, None).to_frame().unwrap())
        .await
        .unwrap();
    let f = tokio::time::timeout(
        Duration::from_secs(10),
        kakehashi_proto::io::read_frame(&mut rx),
    )
    .await
    .expect("an answer")
    .unwrap();
    (tx, rx, f)
}

/// Issue 19 item 1: a gateway whose budget of bytes in flight is spent
/// refuses the next session with `gateway_busy` (over QUIC and over
/// TLS/TCP, counted), while the live sessions go on carrying bytes; a
/// session that ends gives its share back.
#[tokio::test(flavor = "multi_thread")]
async fn a_busy_gateway_refuses_new_sessions_and_keeps_carrying_the_live_ones() {
    let mut pki = Pki::new();
    // 1 MiB: three sessions over QUIC on both legs (288 KiB each at the
    // default 64 KiB window), and 160 KiB to spare: less than a fourth
    // over QUIC (288 KiB) or over TLS/TCP to a QUIC desk (211 KiB).
    let gw = start_gateway(
        &pki,
        GatewayOpts {
            limits: "memory_budget_mib = 1\n".into(),
            ..Default::default()
        },
    )
    .await;
    let (_agent, dev, _ep, conn) = quic_laptop_and_desk(&mut pki, &gw, "DESK-B", "LAPTOP-B").await;
    let mut live = Vec::new();
    for _ in 0..3 {
        let (tx, rx, f) = quic_session(&conn, "DESK-B").await;
        assert_eq!(
            f.kind,
            FrameKind::SessionAccepted,
            "{:?}",
            Refusal::from_frame(&f)
        );
        live.push((tx, rx));
    }
    let (_tx, _rx, f) = quic_session(&conn, "DESK-B").await;
    assert_eq!(f.kind, FrameKind::Refused);
    let r = Refusal::from_frame(&f).unwrap();
    assert_eq!(r.code, "gateway_busy");
    assert!(
        r.ja.contains("混み合って") && r.en.contains("too busy"),
        "{r:?}"
    );
    assert_eq!(
        refused(&pki, &dev, &gw, &request("DESK-B", None)).await,
        "gateway_busy"
    );
    let (status, text) = http_get(gw.addrs.admin, "/metrics").await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(
        metric(&text, "kakehashi_denials_total{reason=\"gateway_busy\"}"),
        2.0
    );
    assert_eq!(metric(&text, "kakehashi_memory_budget_bytes"), 1048576.0);
    assert_eq!(
        metric(&text, "kakehashi_memory_reserved_bytes"),
        3.0 * 288.0 * 1024.0
    );
    // The live sessions carry 1 MiB each way, far more than their windows.
    let mut carried = tokio::task::JoinSet::new();
    for (i, (mut tx, mut rx)) in live.drain(..).enumerate() {
        carried.spawn(async move {
            let data: Vec<u8> = (0..1 << 20)
                .map(|n: u32| (n * 7 + i as u32) as u8)
                .collect();
            let send = data.clone();
            let writer = async {
                tx.write_all(&send).await.unwrap();
            };
            let mut back = vec![0u8; data.len()];
            let reader = async {
                rx.read_exact(&mut back).await.unwrap();
            };
            tokio::time::timeout(Duration::from_secs(60), async {
                tokio::join!(writer, reader)
            })
            .await
            .expect("the live session carried its bytes");
            assert!(back == data, "session {i} echoed other bytes");
            (tx, rx)
        });
    }
    while let Some(r) = carried.join_next().await {
        live.push(r.unwrap());
    }
    // One session ends: its share comes back and the next one is admitted.
    let (mut tx, mut rx) = live.pop().unwrap();
    tx.finish().unwrap();
    let rest = rx.read_to_end(1 << 20).await.unwrap();
    assert!(rest.is_empty());
    let admitted = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let (tx, rx, f) = quic_session(&conn, "DESK-B").await;
            match f.kind {
                FrameKind::SessionAccepted => break (tx, rx),
                // The ended session's record is still being written.
                _ => assert_eq!(Refusal::from_frame(&f).unwrap().code, "gateway_busy"),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("a session after one ended");
    drop((admitted, live));
}

/// A `gateway_busy` refusal is audited as `session.denied`, before the
/// login token is looked at: here a budget (1 MiB) smaller than one
/// session's share (1 MiB QUIC windows: 2 MiB for the desk's leg alone).
#[tokio::test(flavor = "multi_thread")]
async fn a_gateway_busy_refusal_is_audited() {
    let mut pki = Pki::new();
    let db = pki.path().join("busy.db");
    let gw = start_gateway(
        &pki,
        GatewayOpts {
            identity: Some(login_sections(&db)),
            limits: "memory_budget_mib = 1\nquic_window_kib = 1024\n".into(),
            ..Default::default()
        },
    )
    .await;
    let dev = pki.device("LAPTOP-BUSY", TerminalClass::Home);
    assert_eq!(
        refused(&pki, &dev, &gw, &request("DESK-BUSY", None)).await,
        "gateway_busy"
    );
    let store = Store::open(db.to_str().unwrap()).await.unwrap();
    let denied = denials(&store, "gateway_busy").await;
    assert_eq!(denied.len(), 1, "{denied:?}");
    let d = denied[0].detail_json().unwrap();
    assert_eq!(denied[0].subject, "DESK-BUSY");
    assert_eq!(d["device"], "LAPTOP-BUSY");
    assert_eq!(d["rule"], "memory_budget");
    assert_eq!(d["budget_bytes"], 1 << 20);
    assert_eq!(d["share_bytes"], (32 + 51 + 2048) * 1024);
    assert!(store.verify_audit().await.unwrap().is_intact());
}

/// A `capacity_full` refusal comes after admission allowed the session, so
/// it is audited (`session.denied`) with the cap: the officer reading the
/// log sees why an allowed session did not start.
#[tokio::test(flavor = "multi_thread")]
async fn a_capacity_full_refusal_is_audited() {
    let mut pki = Pki::new();
    let db = pki.path().join("full.db");
    let gw = start_gateway(
        &pki,
        GatewayOpts {
            identity: Some(login_sections(&db)),
            max_sessions: Some(1),
            ..Default::default()
        },
    )
    .await;
    let store = Store::open(db.to_str().unwrap()).await.unwrap();
    add_desk(&store, "DESK-FULL", 1, &["u-full"]).await;
    let echo = echo_server().await;
    let agent = start_agent(&mut pki, "DESK-FULL", &gw.addrs, echo, "tcp");
    wait_online(&agent).await;
    let dev = pki.device("LAPTOP-FULL", TerminalClass::Home);
    let token = redeem_login(&pki, &dev, gw.addrs.terminal_tcp, &store, "u-full").await;
    let ask = kakehashi_proto::message::SessionRequest {
        desk: "DESK-FULL".into(),
        token: Some(kakehashi_proto::message::Secret(token.clone())),
    };
    // One live session (its stream held open), then the next.
    let (held, f) = ask_terminal(&pki, &dev, gw.addrs.terminal_tcp, &ask).await;
    assert_eq!(f.kind, FrameKind::SessionAccepted);
    let refusal = request_session(&pki, &dev, &gw, "DESK-FULL", &token)
        .await
        .expect_err("a second session past max_sessions = 1");
    assert_eq!(refusal.code, "capacity_full");
    let denied = denials(&store, "capacity_full").await;
    assert_eq!(denied.len(), 1, "{denied:?}");
    assert_eq!(denied[0].subject, "DESK-FULL");
    assert_eq!(denied[0].actor, "user:u-full");
    let d = denied[0].detail_json().unwrap();
    assert_eq!(d["device"], "LAPTOP-FULL");
    assert_eq!(d["max_sessions"], 1);
    assert!(store.verify_audit().await.unwrap().is_intact());
    drop(held);
}

/// The `session.denied` records of `store` with `reason`, oldest first.
async fn denials(store: &Store, reason: &str) -> Vec<kakehashi_store::AuditRecord> {
    store
        .audit_between(0, i64::MAX)
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.action == "session.denied" && r.reason == reason)
        .collect()
}

/// A gateway with a store and `limits`, a desk echoing behind a TCP agent,
/// a logged-in laptop and one live session (asked for until admitted: a
/// loaded test machine may make even an idle gateway busy now and then).
struct BusyFixture {
    pki: Pki,
    gw: GatewayProc,
    store: Store,
    dev: CertFiles,
    token: String,
    desk: String,
    live: Option<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
    _agent: Proc,
}

impl BusyFixture {
    async fn start(name: &str, limits: &str) -> Self {
        let mut pki = Pki::new();
        let db = pki.path().join(format!("{name}.db"));
        let gw = start_gateway(
            &pki,
            GatewayOpts {
                identity: Some(login_sections(&db)),
                limits: limits.into(),
                ..Default::default()
            },
        )
        .await;
        let store = Store::open(db.to_str().unwrap()).await.unwrap();
        let (desk, user) = (format!("DESK-{name}"), format!("u-{name}"));
        add_desk(&store, &desk, 1, &[&user]).await;
        let echo = echo_server().await;
        let agent = start_agent(&mut pki, &desk, &gw.addrs, echo, "tcp");
        wait_online(&agent).await;
        let dev = pki.device(&format!("LAPTOP-{name}"), TerminalClass::Home);
        let token = redeem_login(&pki, &dev, gw.addrs.terminal_tcp, &store, &user).await;
        let ask = SessionRequest {
            desk: desk.clone(),
            token: Some(Secret(token.clone())),
        };
        let live = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                let (s, f) = ask_terminal(&pki, &dev, gw.addrs.terminal_tcp, &ask).await;
                if f.kind == FrameKind::SessionAccepted {
                    break s;
                }
                let r = Refusal::from_frame(&f).unwrap();
                assert_eq!(r.code, "gateway_busy", "{r:?}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
        .await
        .expect("a live session");
        Self {
            pki,
            gw,
            store,
            dev,
            token,
            desk,
            live: Some(live),
            _agent: agent,
        }
    }

    /// A new session on the desk, on a new connection.
    async fn ask(&self) -> Result<String, Refusal> {
        request_session(&self.pki, &self.dev, &self.gw, &self.desk, &self.token).await
    }

    /// The first `gateway_busy` denial's detail, with the audit chain checked.
    async fn busy_denial(&self) -> serde_json::Value {
        let denied = denials(&self.store, "gateway_busy").await;
        assert!(!denied.is_empty());
        assert!(self.store.verify_audit().await.unwrap().is_intact());
        denied[0].detail_json().unwrap()
    }
}

/// Issue 19 item 1, the scheduling delay: a gateway that runs its tasks
/// late (here stopped for 1.5 s with SIGSTOP, as a gateway starved by other
/// processes is) refuses new sessions with `gateway_busy`, audited with the
/// rule (`busy_delay`) and the delay it measured, keeps carrying its live
/// session, and admits again once it has caught up.
#[tokio::test(flavor = "multi_thread")]
async fn a_gateway_running_late_refuses_new_sessions_until_it_catches_up() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut f = BusyFixture::start("late", "busy_delay = \"5ms\"\n").await;
    let signal = |sig: &str| {
        let ok = std::process::Command::new("kill")
            .args([sig, &f.gw.proc.pid().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig}");
    };
    signal("-STOP");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    signal("-CONT");
    // The probe wakes first thing; the stall stays in its one-second mean
    // for the next hundred probes (at least a second).
    tokio::time::sleep(Duration::from_millis(100)).await;
    let refusal = f.ask().await.expect_err("a session right after the stall");
    assert_eq!(refusal.code, "gateway_busy");

    // The live session was not cut.
    let live = f.live.as_mut().unwrap();
    live.write_all(b"still here").await.unwrap();
    let mut back = [0u8; 10];
    tokio::time::timeout(Duration::from_secs(10), live.read_exact(&mut back))
        .await
        .expect("an echo")
        .unwrap();
    assert_eq!(&back, b"still here");

    // Caught up: admitted again.
    let admitted = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match f.ask().await {
                Ok(id) => break id,
                Err(r) => assert_eq!(r.code, "gateway_busy", "{r:?}"),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .expect("a session once the gateway has caught up");
    assert!(!admitted.is_empty());

    let d = f.busy_denial().await;
    assert_eq!(d["rule"], "busy_delay", "{d}");
    assert_eq!(d["device"], "LAPTOP-late");
    assert_eq!(d["busy_delay_ms"], 5.0);
    assert!(d["scheduling_delay_ms"].as_f64().unwrap() > 5.0, "{d}");
    let (status, text) = http_get(f.gw.addrs.admin, "/metrics").await.unwrap();
    assert_eq!(status, 200);
    assert!(
        text.contains("kakehashi_scheduling_delay_seconds "),
        "{text}"
    );
}

/// Issue 19 item 1, the CPU rule: a gateway whose CPU is in use past
/// `busy_cpu_percent` (here 1 %, reached by a live session carrying bytes
/// as fast as it can) refuses new sessions with `gateway_busy`, audited
/// with the rule and the figure, and new QUIC laptop connections before
/// their handshake, while the live session goes on.
#[tokio::test(flavor = "multi_thread")]
async fn a_gateway_short_of_cpu_refuses_new_sessions_and_keeps_the_live_one() {
    use std::sync::atomic::Ordering::Relaxed;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut f = BusyFixture::start("cpu", "busy_cpu_percent = 1\n").await;
    let live = f.live.take().unwrap();
    // The live session echoes 64 KiB blocks until told to stop, then reads
    // back what it sent.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let pump = tokio::spawn({
        let stop = stop.clone();
        async move {
            let (mut rx, mut tx) = tokio::io::split(live);
            let sent = std::sync::atomic::AtomicU64::new(0);
            let done = std::sync::atomic::AtomicBool::new(false);
            let block = vec![0x5au8; 64 * 1024];
            let writer = async {
                while !stop.load(Relaxed) {
                    tx.write_all(&block).await.unwrap();
                    sent.fetch_add(block.len() as u64, Relaxed);
                }
                done.store(true, Relaxed);
                tx
            };
            let reader = async {
                let mut carried = 0u64;
                let mut buf = vec![0u8; 64 * 1024];
                while !(done.load(Relaxed) && carried >= sent.load(Relaxed)) {
                    // Timed, so that the reader sees `done` set after it
                    // had read everything.
                    let read = rx.read(&mut buf);
                    if let Ok(n) = tokio::time::timeout(Duration::from_millis(200), read).await {
                        let n = n.unwrap();
                        assert!(n > 0, "the live session ended");
                        carried += n as u64;
                    }
                }
                carried
            };
            let (tx, carried) = tokio::join!(writer, reader);
            drop(tx);
            carried
        }
    });
    let refusal = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match f.ask().await {
                Err(r) => break r,
                Ok(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    })
    .await
    .expect("a refusal while the gateway's CPU is in use");
    assert_eq!(refusal.code, "gateway_busy", "{refusal:?}");
    // A new laptop connection over QUIC is refused before its handshake
    // (CONNECTION_REFUSED), which the client explains as `gateway_busy`.
    let dial_refused = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let dial = raw_quic(
                &f.pki,
                &f.dev,
                f.gw.addrs.terminal_quic,
                kakehashi_proto::ALPN_TERMINAL,
            )
            .await;
            match dial {
                Err(e) => break e,
                Ok(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    })
    .await
    .expect("a QUIC dial refused while the gateway's CPU is in use");
    assert_eq!(
        kakehashi_transport::explain::chain_reason(&dial_refused),
        Some(kakehashi_proto::Reason::GatewayBusy),
        "{dial_refused:#}"
    );
    stop.store(true, Relaxed);
    let carried = tokio::time::timeout(Duration::from_secs(30), pump)
        .await
        .expect("the pump stops")
        .unwrap();
    assert!(
        carried > 1 << 20,
        "the live session carried {carried} bytes"
    );

    let d = f.busy_denial().await;
    assert_eq!(d["rule"], "busy_cpu_percent", "{d}");
    assert_eq!(d["busy_cpu_percent"], 1.0);
    assert!(d["cpu_percent"].as_f64().unwrap() >= 1.0, "{d}");
    let (_, text) = http_get(f.gw.addrs.admin, "/metrics").await.unwrap();
    assert!(metric(&text, "kakehashi_cpu_used_ratio") >= 0.0, "{text}");
    assert!(
        metric(
            &text,
            "kakehashi_handshakes_limited_total{kind=\"busy\",role=\"terminal\"}"
        ) >= 1.0,
        "{text}"
    );
}
