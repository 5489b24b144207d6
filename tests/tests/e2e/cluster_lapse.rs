//! A gateway cut off from PostgreSQL while the others still reach it (a
//! partial partition): the others close its session rows as `gateway_lost`
//! once its membership lapses, yet its laptops and agents still reach it and
//! the sessions go on. When it reaches the database again it re-claims the
//! rows (`session.resume`), and the sessions' real ends are recorded.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kakehashi_tests::*;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use kakehashi_tests::cluster::{echo, echo_session};

use super::cluster::{desk1_over, gateway, only_open_session, wait_agent};

/// A TCP forwarder between one gateway and PostgreSQL that can cut the
/// gateway off: every forwarded connection is dropped, and new ones are
/// closed at once, until it is joined again.
struct DbLink {
    addr: SocketAddr,
    up: Arc<AtomicBool>,
    cut: watch::Sender<u64>,
}

impl DbLink {
    async fn to(db: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let up = Arc::new(AtomicBool::new(true));
        let (cut, _) = watch::channel(0u64);
        let (up2, cut2) = (up.clone(), cut.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                if !up2.load(Ordering::SeqCst) {
                    continue; // dropped: closed at once
                }
                let mut cuts = cut2.subscribe();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(db).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cuts.changed() => {}
                    }
                });
            }
        });
        Self { addr, up, cut }
    }

    fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.cut.send_modify(|n| *n += 1);
    }

    fn join(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

/// `url` with its host and port replaced by `addr`.
fn url_via(url: &str, addr: SocketAddr) -> String {
    let (scheme_user, rest) = url.split_once('@').unwrap();
    let (_, db) = rest.split_once('/').unwrap();
    format!("{scheme_user}@{addr}/{db}")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gateway_cut_off_from_the_database_re_claims_its_live_sessions_rows() {
    cut_off(Agent::Configured, "tcp").await;
}

/// The agent knows the cut-off gateway from the member list only, which
/// drops it while it lapsed: over QUIC, where a tunnel carries its
/// sessions' streams, the agent keeps the tunnel while it carries one.
#[tokio::test(flavor = "multi_thread")]
async fn an_agent_keeps_a_lapsed_members_tunnel_while_it_carries_sessions() {
    cut_off(Agent::Learned, "quic").await;
}

/// How the desk's agent knows gw1, the gateway cut off the database.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Agent {
    /// gw1 is in its configuration.
    Configured,
    /// gw1 is learned from the member list (the agent is configured with gw2).
    Learned,
}

async fn cut_off(agent: Agent, transport: &str) {
    let url = pg::cluster().create_database().await;
    let db: SocketAddr = url
        .split_once('@')
        .unwrap()
        .1
        .split_once('/')
        .unwrap()
        .0
        .parse()
        .unwrap();
    let link = DbLink::to(db).await;
    let mut pki = Pki::new();
    // gw1 reaches the database through the link; gw2 directly.
    let gw1 = gateway(&pki, "gw1", &url_via(&url, link.addr)).await;
    let gw2 = gateway(&pki, "gw2", &url).await;
    let order = match agent {
        Agent::Configured => [&gw1, &gw2],
        Agent::Learned => [&gw2, &gw1],
    };
    let d = desk1_over(&mut pki, &url, &order, transport).await;
    let store = &d.store;

    let client = d.client_over(&pki, &gw1, "", transport).await;
    let mut s = echo_session(&client, &[1u8; 1000]).await;
    let row = only_open_session(store).await;
    assert_eq!(row.gateway.as_deref(), Some("gw1"));

    // Cut gw1 off the database. Its membership lapses, and gw2 closes the
    // row of the session gw1 still carries.
    link.cut();
    let cut = Instant::now();
    let closed = loop {
        let r = store.get_session(&row.id).await.unwrap().unwrap();
        if r.ended_at.is_some() {
            break r;
        }
        assert!(
            cut.elapsed() < Duration::from_secs(40),
            "gw2 did not close the lapsed member's row"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(closed.end_reason.as_deref(), Some("gateway_lost"));
    eprintln!("gw1's row closed by gw2 {:?} after the cut", cut.elapsed());
    if agent == Agent::Learned {
        // gw2's member list left gw1 out; the agent keeps its tunnel.
        crate::e2e::rdp::wait_log_line(
            &d.agent,
            &["no longer in the member list", "gw1"],
            Duration::from_secs(20),
        )
        .await
        .expect("the agent was not told gw1 lapsed");
    }
    // The session goes on: gw1, its agent tunnel and the laptop are fine.
    echo(&mut s, &[2u8; 1000]).await;

    // gw1 reaches the database again and re-claims the row.
    link.join();
    let joined = Instant::now();
    loop {
        let r = store.get_session(&row.id).await.unwrap().unwrap();
        if r.ended_at.is_none() {
            break;
        }
        assert!(
            joined.elapsed() < Duration::from_secs(30),
            "gw1 did not re-claim its live session's row: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "gw1 re-claimed the row {:?} after reaching the database again",
        joined.elapsed()
    );
    echo(&mut s, &[3u8; 1000]).await;
    wait_agent(&gw2, "DESK-1").await;
    if agent == Agent::Learned {
        crate::e2e::rdp::wait_log_line(
            &d.agent,
            &["back in the member list", "gw1"],
            Duration::from_secs(20),
        )
        .await
        .expect("gw1 is listed again, and its tunnel kept");
        assert!(!d.agent.log_text().contains("Cluster member dropped"));
    }

    // The session ends for real: its row takes the real end and the bytes.
    drop(s);
    let ended = loop {
        let r = store.get_session(&row.id).await.unwrap().unwrap();
        if r.ended_at.is_some() {
            break r;
        }
        assert!(
            joined.elapsed() < Duration::from_secs(60),
            "the real end was not recorded"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_ne!(
        ended.end_reason.as_deref(),
        Some("gateway_lost"),
        "{ended:?}"
    );
    assert!(
        ended.bytes_up >= 3000 && ended.bytes_down >= 3000,
        "every byte relayed, the ones after the cut included: {ended:?}"
    );

    // The audit log tells it in order: closed by gw2, resumed by gw1, ended.
    let log = sealed_audit(store).await;
    let story: Vec<(String, String)> = log
        .iter()
        .filter(|r| r.subject == row.id && r.action != "session.start")
        .map(|r| (r.action.clone(), r.reason.clone()))
        .collect();
    // (A survivor's closing that raced gw1's return is re-claimed once more.)
    let lost = ("session.end".to_string(), "gateway_lost".to_string());
    let back = ("session.resume".to_string(), "gateway_back".to_string());
    assert!(story.len() >= 3 && story.len() % 2 == 1, "{story:?}");
    for pair in story[..story.len() - 1].chunks(2) {
        assert_eq!(pair, [lost.clone(), back.clone()], "{story:?}");
    }
    let last = story.last().unwrap();
    assert_eq!(last.0, "session.end", "{story:?}");
    assert_ne!(last.1, "gateway_lost", "{story:?}");
    let (ok, out) =
        gateway_cli(&["audit", "verify", "--config", gw2.config.to_str().unwrap()]).await;
    assert!(ok, "{out}");
    drop(client);
    drop((gw1, gw2));
}
