//! kill -9 with nothing lost (issue 19 item 3), on SQLite and on
//! PostgreSQL, as real processes:
//!
//! - the gateway killed with SIGKILL under 1,000 live sessions and started
//!   again on the same store and ports: its agents come back, the audit
//!   chain verifies, no session row is left open (the starting gateway
//!   closes its previous run's rows with `gateway_restart` and the bytes
//!   its heartbeats had saved), every session in the table has its start
//!   and its one end in the audit log and the other way round, and laptops
//!   go on with the login tokens they had (no new login);
//! - an agent killed with SIGKILL during a session: the desk's service sees
//!   its connection end, the laptop's stream ends, and the gateway records
//!   the session's end with a reason; the agent started again serves the
//!   desk (the Windows policy layer's restore at the agent's next start,
//!   after a real SIGKILL, is `agent/src/windows_policy.rs`'s
//!   `an_agent_killed_mid_session_is_restored_at_the_next_start`).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use kakehashi_pki::TerminalClass;
use kakehashi_proto::io::{read_frame, write_message};
use kakehashi_proto::message::{Message, Secret, SessionAccepted, SessionRequest};
use kakehashi_proto::{FrameKind, Refusal, ALPN_TERMINAL};
use kakehashi_store::Store;
use kakehashi_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// Live sessions when the gateway is killed.
const SESSIONS: usize = 1000;
/// Laptops (each with its own certificate and login) carrying them.
const LAPTOPS: usize = 10;
/// Desks, each with its own real agent: the first half on QUIC, the rest
/// on TLS over TCP.
const DESKS: usize = 4;
/// Sessions opened at once while setting up.
const PARALLEL: usize = 32;
/// Bytes each session sends (and gets back) before the kill.
const MSG: usize = 1024;

#[derive(Debug, Clone, Copy)]
enum Db {
    Sqlite,
    Postgres,
}

/// A store URL for `db`: a SQLite file in `pki`'s directory, or a fresh
/// database on the PostgreSQL test cluster.
async fn store_url(pki: &Pki, db: Db) -> String {
    match db {
        Db::Sqlite => format!("sqlite://{}", pki.path().join("kakehashi.db").display()),
        Db::Postgres => pg::cluster().create_database().await,
    }
}

/// A gateway named `gw-k9` on `url` (logins required, [`OPEN_POLICY`]),
/// on `addrs` when given.
async fn gateway(pki: &Pki, url: &str, addrs: Option<GatewayAddrs>) -> GatewayProc {
    let policy = pki.path().join("open-policy.toml");
    std::fs::write(&policy, OPEN_POLICY).unwrap();
    let identity = format!(
        "[store]\nurl = \"{url}\"\n[identity]\nrequire_login = true\n[policy]\nwatch = \"500ms\"\nfile = \"{}\"\n",
        policy.display()
    );
    start_gateway(
        pki,
        GatewayOpts {
            name: Some("gw-k9".into()),
            identity: Some(identity),
            addrs,
            ..Default::default()
        },
    )
    .await
}

/// Wait until `gw`'s log says every desk of `desks` is online.
async fn wait_agents(gw: &GatewayProc, desks: &[String], within: Duration) {
    for desk in desks {
        let quoted = format!("\"{desk}\"");
        crate::e2e::rdp::wait_log_line(&gw.proc, &["Agent online", &quoted], within)
            .await
            .unwrap();
    }
}

/// One laptop of the test process: its certificate's TLS config (shared by
/// its sessions) and the login token it holds.
struct Laptop {
    tls: Arc<rustls::ClientConfig>,
    token: String,
}

impl Laptop {
    /// Laptop `LT-K9-nn`, logged in as `u-k9-nn`.
    async fn new(pki: &mut Pki, n: usize, terminal_tcp: SocketAddr, store: &Store) -> Self {
        let dev = pki.device(&format!("LT-K9-{n:02}"), TerminalClass::Home);
        let token = redeem_login(pki, &dev, terminal_tcp, store, &format!("u-k9-{n:02}")).await;
        Self {
            tls: tls_client(pki, &dev, ALPN_TERMINAL).unwrap(),
            token,
        }
    }

    /// A session to `desk` through `terminal_tcp` with this laptop's token,
    /// after one echo round trip of [`MSG`] bytes: the stream and the
    /// session id.
    async fn session(
        &self,
        terminal_tcp: SocketAddr,
        desk: &str,
    ) -> anyhow::Result<(TlsStream<TcpStream>, String)> {
        let mut s = kakehashi_transport::dial::tls_connect(
            &terminal_tcp.to_string(),
            "localhost",
            self.tls.clone(),
            Duration::from_secs(10),
            Duration::from_secs(10),
        )
        .await?;
        let req = SessionRequest {
            desk: desk.into(),
            token: Some(Secret(self.token.clone())),
        };
        write_message(&mut s, &req).await?;
        let f = tokio::time::timeout(Duration::from_secs(20), read_frame(&mut s))
            .await
            .context("no answer to the session request")??;
        let id = match f.kind {
            FrameKind::SessionAccepted => SessionAccepted::from_frame(&f)?.session_id,
            FrameKind::Refused => bail!("refused: {:?}", Refusal::from_frame(&f)),
            k => bail!("unexpected {k:?}"),
        };
        let msg = vec![b'k'; MSG];
        s.write_all(&msg).await?;
        let mut back = vec![0u8; MSG];
        tokio::time::timeout(Duration::from_secs(20), s.read_exact(&mut back))
            .await
            .context("no echo")??;
        anyhow::ensure!(back == msg, "the echo differs");
        Ok((s, id))
    }
}

/// Poll `store` until every open row has saved at least [`MSG`] bytes each
/// way (the gateway's heartbeat saves them every 2 s), with `n` rows open.
async fn wait_progress_saved(store: &Store, n: usize) {
    let start = Instant::now();
    loop {
        let open = store.open_sessions().await.unwrap();
        let saved = open
            .iter()
            .filter(|r| r.bytes_up >= MSG as u64 && r.bytes_down >= MSG as u64)
            .count();
        if open.len() == n && saved == n {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{} open rows, {saved} with their bytes saved, expected {n}",
            open.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every session row agrees with the audit log: one `session.start` and
/// exactly one `session.end` per row, with the row's end reason, and no
/// audited session without a row. Returns the rows by id.
async fn sessions_agree_with_audit(
    store: &Store,
) -> HashMap<String, kakehashi_store::SessionRecord> {
    let rows: HashMap<_, _> = store
        .sessions_between(0, i64::MAX)
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.id.clone(), r))
        .collect();
    let log = sealed_log(store).await;
    let mut starts = HashSet::new();
    let mut ends: HashMap<String, String> = HashMap::new();
    for r in &log {
        match r.action.as_str() {
            "session.start" => assert!(starts.insert(r.subject.clone()), "two starts: {r:?}"),
            "session.end" => assert!(
                ends.insert(r.subject.clone(), r.reason.clone()).is_none(),
                "two ends recorded for one session: {r:?}"
            ),
            _ => {}
        }
    }
    let ids: HashSet<String> = rows.keys().cloned().collect();
    assert_eq!(starts, ids, "session.start records vs session rows");
    assert_eq!(
        ends.keys().cloned().collect::<HashSet<_>>(),
        ids,
        "session.end records vs session rows"
    );
    for (id, row) in &rows {
        assert!(row.ended_at.is_some(), "left open: {row:?}");
        assert_eq!(row.end_reason.as_ref(), ends.get(id), "{row:?}");
    }
    rows
}

async fn audit_verify(gw: &GatewayProc) {
    let (ok, out) =
        gateway_cli(&["audit", "verify", "--config", gw.config.to_str().unwrap()]).await;
    assert!(ok, "audit verify failed: {out}");
}

/// Open files this test process (and the gateway and agents it starts,
/// which inherit the limit) may hold: a few per session. The soft limit is
/// raised to the hard one when it is lower (`prlimit`, util-linux), as the
/// gateway's systemd unit does (`LimitNOFILE`).
fn enough_open_files(need: u64) {
    let limits = || -> (u64, u64) {
        let text = std::fs::read_to_string("/proc/self/limits").unwrap();
        let line = text
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .unwrap()
            .to_owned();
        let mut v = line
            .split_whitespace()
            .skip(3)
            .map(|x| x.parse::<u64>().unwrap_or(u64::MAX));
        (v.next().unwrap(), v.next().unwrap())
    };
    let (soft, hard) = limits();
    if soft < need && hard > soft {
        let hard = if hard == u64::MAX {
            "unlimited".to_string()
        } else {
            hard.to_string()
        };
        let ok = std::process::Command::new("prlimit")
            .arg(format!("--pid={}", std::process::id()))
            .arg(format!("--nofile={hard}:{hard}"))
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "prlimit failed");
    }
    let (soft, _) = limits();
    assert!(
        soft >= need,
        "this test needs {need} open files; the limit is {soft}"
    );
}

async fn gateway_killed_under_load_loses_nothing(db: Db) {
    let t0 = Instant::now();
    enough_open_files(4 * SESSIONS as u64);
    let mut pki = Pki::new();
    let url = store_url(&pki, db).await;
    let gw = gateway(&pki, &url, None).await;
    let addrs = gw.addrs;
    let store = Store::open(&url).await.unwrap();

    // DESKS desks, each with a real agent in front of an echo service.
    let laptop_users: Vec<String> = (0..LAPTOPS).map(|n| format!("u-k9-{n:02}")).collect();
    let owners: Vec<&str> = laptop_users.iter().map(String::as_str).collect();
    let desks: Vec<String> = (0..DESKS).map(|n| format!("DESK-K9-{n}")).collect();
    let echo = echo_server().await;
    let mut agents = Vec::new();
    for (n, desk) in desks.iter().enumerate() {
        add_desk(&store, desk, 1, &owners).await;
        let transport = if n < DESKS / 2 { "quic" } else { "tcp" };
        agents.push(start_agent(&mut pki, desk, &addrs, echo, transport));
    }
    wait_agents(&gw, &desks, Duration::from_secs(20)).await;

    // LAPTOPS laptops, each logged in once.
    let mut laptops = Vec::new();
    for n in 0..LAPTOPS {
        laptops.push(Arc::new(
            Laptop::new(&mut pki, n, addrs.terminal_tcp, &store).await,
        ));
    }
    // And one real `kakehashi connect`, logged in as the first laptop's
    // user with its own certificate and token file.
    let dev = pki.device("LT-K9-CLI", TerminalClass::Home);
    let cli_token = redeem_login(&pki, &dev, addrs.terminal_tcp, &store, "u-k9-00").await;
    let cli_cfg = client_config_logged_in(&pki, &dev, &addrs, "u-k9-00", &cli_token);
    let client = start_client(&pki, &cli_cfg, &desks[0], "tcp")
        .await
        .unwrap();
    wait_echo(client.listen, Duration::from_secs(20))
        .await
        .unwrap();

    // SESSIONS live sessions, spread over the laptops and the desks.
    let setup = Instant::now();
    let gate = Arc::new(tokio::sync::Semaphore::new(PARALLEL));
    let mut opening = tokio::task::JoinSet::new();
    for i in 0..SESSIONS {
        let laptop = laptops[i % LAPTOPS].clone();
        let desk = desks[i % DESKS].clone();
        let gate = gate.clone();
        opening.spawn(async move {
            let _p = gate.acquire_owned().await.unwrap();
            // A burst of 1,000 set-ups on a busy machine can keep a store
            // step past its 2 s bound: the gateway then refuses with
            // `store_unavailable` (fail closed), and a laptop asks again.
            let mut tries = 0;
            loop {
                match laptop.session(addrs.terminal_tcp, &desk).await {
                    Err(e) if tries < 5 && format!("{e:#}").contains("store_unavailable") => {
                        tries += 1;
                        tokio::time::sleep(Duration::from_millis(200 * tries)).await;
                    }
                    r => break r,
                }
            }
        });
    }
    let mut live = Vec::new();
    while let Some(r) = opening.join_next().await {
        live.push(
            r.unwrap()
                .unwrap_or_else(|e| panic!("a session failed to open: {e:#}")),
        );
    }
    let live_ids: HashSet<String> = live.iter().map(|(_, id)| id.clone()).collect();
    assert_eq!(live_ids.len(), SESSIONS);
    eprintln!("{db:?}: {SESSIONS} sessions open in {:?}", setup.elapsed());
    wait_progress_saved(&store, SESSIONS).await;
    let logins_before = sealed_log(&store)
        .await
        .iter()
        .filter(|r| r.action == "login.redeem")
        .count();

    // kill -9, and start it again on the same store and ports.
    let mut gw = gw;
    gw.proc.kill().await;
    let killed = Instant::now();
    // Every laptop's stream ends with it.
    for (s, id) in &mut live {
        assert!(
            closed_within(s, Duration::from_secs(10)).await,
            "session {id} outlived its gateway"
        );
    }
    let gw2 = gateway(&pki, &url, Some(addrs)).await;
    let serving = killed.elapsed();
    wait_agents(&gw2, &desks, Duration::from_secs(30)).await;
    let agents_back = killed.elapsed();
    eprintln!(
        "{db:?}: after the kill: gateway serving again in {serving:?}, all {DESKS} agents back in {agents_back:?}"
    );

    // No row left open: the starting gateway closes its previous run's
    // rows (while serving), with the bytes its heartbeats had saved.
    loop {
        let open = store.open_sessions().await.unwrap();
        if open.is_empty() {
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(60),
            "{} rows left open: {:?}",
            open.len(),
            open[0]
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "{db:?}: all {SESSIONS} rows closed {:?} after the kill",
        killed.elapsed()
    );
    audit_verify(&gw2).await;
    let rows = sessions_agree_with_audit(&store).await;
    for id in &live_ids {
        let row = &rows[id];
        assert_eq!(
            row.end_reason.as_deref(),
            Some("gateway_restart"),
            "{row:?}"
        );
        assert!(
            row.bytes_up >= MSG as u64 && row.bytes_down >= MSG as u64,
            "the bytes saved before the kill are lost: {row:?}"
        );
    }
    gw2.proc
        .wait_log("previous run left open", Duration::from_secs(5))
        .await
        .unwrap();

    // The laptops go on with the tokens they had: every one opens a session
    // through the restarted gateway, and the real client's next connection
    // is carried (no login in between).
    let mut again = Vec::new();
    for (n, laptop) in laptops.iter().enumerate() {
        let (s, _) = laptop
            .session(addrs.terminal_tcp, &desks[n % DESKS])
            .await
            .unwrap_or_else(|e| panic!("laptop {n} after the restart: {e:#}"));
        again.push(s);
    }
    wait_echo(client.listen, Duration::from_secs(20))
        .await
        .unwrap();
    let log = sealed_log(&store).await;
    let logins_after = log.iter().filter(|r| r.action == "login.redeem").count();
    assert_eq!(logins_after, logins_before, "a laptop had to log in again");

    // Closed cleanly now, and the table and the log still agree.
    drop(again);
    let start = Instant::now();
    while !store.open_sessions().await.unwrap().is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "sessions still open"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    sessions_agree_with_audit(&store).await;
    audit_verify(&gw2).await;
    eprintln!("{db:?}: whole test {:?}", t0.elapsed());
}

#[tokio::test(flavor = "multi_thread")]
async fn gateway_kill_9_under_1000_sessions_loses_nothing_on_sqlite() {
    gateway_killed_under_load_loses_nothing(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn gateway_kill_9_under_1000_sessions_loses_nothing_on_postgres() {
    gateway_killed_under_load_loses_nothing(Db::Postgres).await;
}

/// A stand-in desk service that echoes, and tells on the returned channel
/// each time one of its connections ends (end of stream or an error).
async fn watched_service() -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<()>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if s.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    }
                }
                let _ = tx.send(());
            });
        }
    });
    (addr, rx)
}

async fn agent_killed_mid_session_ends_it_everywhere(db: Db) {
    let mut pki = Pki::new();
    let url = store_url(&pki, db).await;
    let gw = gateway(&pki, &url, None).await;
    let store = Store::open(&url).await.unwrap();
    let laptop = Laptop::new(&mut pki, 0, gw.addrs.terminal_tcp, &store).await;
    for transport in ["quic", "tcp"] {
        let desk = format!("DESK-A9-{transport}");
        add_desk(&store, &desk, 1, &["u-k9-00"]).await;
        let (service, mut ended) = watched_service().await;
        let files = pki.agent(&desk);
        let mut agent = start_agent_with(&pki, &files, &gw.addrs, service, transport);
        wait_agents(&gw, std::slice::from_ref(&desk), Duration::from_secs(20)).await;
        let (mut s, id) = laptop.session(gw.addrs.terminal_tcp, &desk).await.unwrap();

        agent.kill().await;
        let killed = Instant::now();
        // The desk's service sees its connection end (the agent's socket
        // closed by the kernel)...
        tokio::time::timeout(Duration::from_secs(10), ended.recv())
            .await
            .unwrap_or_else(|_| {
                panic!("{transport}: the desk's service never saw the session end")
            });
        // ...the laptop's stream ends...
        assert!(
            closed_within(&mut s, Duration::from_secs(30)).await,
            "{transport}: the laptop's session outlived its agent"
        );
        let laptop_cut = killed.elapsed();
        // ...and the gateway records the end, with a reason.
        let rec = loop {
            let r = store.get_session(&id).await.unwrap().unwrap();
            if r.ended_at.is_some() {
                break r;
            }
            assert!(
                killed.elapsed() < Duration::from_secs(30),
                "{transport}: the session's end was never recorded: {r:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        eprintln!(
            "{db:?}/{transport}: agent killed: laptop's stream ended after {laptop_cut:?}, recorded as {:?} after {:?}",
            rec.end_reason,
            killed.elapsed()
        );
        let reason = rec.end_reason.clone().unwrap();
        assert!(!reason.is_empty(), "{rec:?}");
        assert!(
            rec.bytes_up >= MSG as u64 && rec.bytes_down >= MSG as u64,
            "{rec:?}"
        );
        let log = sealed_log(&store).await;
        let end = log
            .iter()
            .find(|r| r.action == "session.end" && r.subject == id)
            .expect("the end is audited");
        assert_eq!(end.reason, reason);

        // The agent started again serves the desk again.
        let _agent = start_agent_with(&pki, &files, &gw.addrs, service, transport);
        let start = Instant::now();
        let (_s, _) = loop {
            match laptop.session(gw.addrs.terminal_tcp, &desk).await {
                Ok(s) => break s,
                Err(e) => assert!(
                    start.elapsed() < Duration::from_secs(20),
                    "{transport}: the restarted agent never served: {e:#}"
                ),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
    }
    audit_verify(&gw).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn agent_kill_9_mid_session_is_seen_by_the_desk_and_recorded_on_sqlite() {
    agent_killed_mid_session_ends_it_everywhere(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn agent_kill_9_mid_session_is_seen_by_the_desk_and_recorded_on_postgres() {
    agent_killed_mid_session_ends_it_everywhere(Db::Postgres).await;
}

/// The whole audit log, once what waits for the sealer (PostgreSQL: the
/// gateways seal sessions' and logins' records every 100 ms) is sealed.
async fn sealed_log(store: &Store) -> Vec<kakehashi_store::AuditRecord> {
    sealed_audit(store).await
}
