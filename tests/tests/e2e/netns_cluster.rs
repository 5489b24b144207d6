//! Issue 18's cluster tests with each gateway on a host of its own: three
//! gateways (a fourth joins in one test), each in its own network namespace
//! (`ip netns`, a veth pair on a bridge: `kakehashi_tests::netns`), on one
//! PostgreSQL listening on the bridge; 20 real agents, each serving its own
//! echo desk, and laptops (`kakehashi connect`) on this host dialling the
//! namespaces' addresses. What a loopback test cannot show: a gateway killed
//! with SIGKILL takes its addresses' sockets with it while its kernel stays,
//! and every member is a distinct address the agents learn from the member
//! list and check against the gateway's certificate.
//!
//! The figures the issue states ("within 5 s", "within 2 s", "within 15 s")
//! are behaviour and are asserted; each test prints what it measured.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use kakehashi_pki::TerminalClass;
use kakehashi_store::{SessionRecord, Store};
use kakehashi_tests::cluster::{echo, echo_session, pg_sections};
use kakehashi_tests::netns::Netns;
use kakehashi_tests::pg::PgCluster;
use kakehashi_tests::*;
use tokio::net::TcpStream;

/// Agents, each the only one of its desk.
const DESKS: usize = 20;
/// Gateways a test may run (certificates name every one's address).
const MAX_GATEWAYS: usize = 4;

/// `DESK-01` … `DESK-20`; the first ten are level 1, the others level 2.
fn desk(i: usize) -> String {
    format!("DESK-{:02}", i + 1)
}

fn level(i: usize) -> u8 {
    if i < DESKS / 2 {
        1
    } else {
        2
    }
}

fn gw_name(i: usize) -> String {
    format!("gw-{}", char::from(b'a' + u8::try_from(i).unwrap()))
}

/// A laptop with its user's login token (valid on every gateway).
struct Laptop {
    dev: CertFiles,
    id: String,
    user: String,
    token: String,
}

/// Gateways in namespaces, PostgreSQL, the agents. Fields drop in this
/// order: the processes first, the namespaces last.
struct Cluster {
    gws: Vec<GatewayProc>,
    agents: Vec<Proc>,
    store: Store,
    watch: String,
    url: String,
    pki: Pki,
    pg: PgCluster,
    net: Netns,
}

/// `n` gateways (`gw-a`, `gw-b`, …), their change feeds polled every
/// `watch`, and [`DESKS`] agents, agent `i` configured with gateway
/// `i % n` alone; returns once every agent is online on every gateway.
async fn cluster(n: usize, watch: &str) -> Cluster {
    let net = Netns::new(n);
    let pki = Pki::with_gateway_ips(&net.addrs(MAX_GATEWAYS));
    let pg = PgCluster::start_for_network(net.host().into(), &net.cidr()).unwrap();
    let url = pg.create_database().await;
    let store = Store::open(&url).await.unwrap();
    let mut c = Cluster {
        gws: Vec::new(),
        agents: Vec::new(),
        store,
        watch: watch.into(),
        url,
        pki,
        pg,
        net,
    };
    for i in 0..n {
        c.start_gateway(i).await;
    }
    let echo = echo_server().await;
    let t = Instant::now();
    for i in 0..DESKS {
        add_desk(&c.store, &desk(i), level(i), &["u-kato", "u-sato"]).await;
        let files = c.pki.agent(&desk(i));
        let agent = start_agent_with(&c.pki, &files, &c.gws[i % n].addrs, echo, "tcp");
        c.agents.push(agent);
    }
    for gw in &c.gws {
        wait_agents(gw, Duration::from_secs(60)).await;
    }
    eprintln!(
        "{DESKS} agents online on {n} gateways {:?} after they started",
        t.elapsed()
    );
    c
}

impl Cluster {
    /// Starts gateway `i` in namespace `i`, every listener on the
    /// namespace's address.
    async fn start_gateway(&mut self, i: usize) {
        assert_eq!(i, self.gws.len());
        let at = SocketAddr::from((self.net.addr(i), 0));
        let gw = start_gateway(
            &self.pki,
            GatewayOpts {
                name: Some(gw_name(i)),
                identity: Some(pg_sections(&self.pki, &self.url, &self.watch)),
                addrs: Some(GatewayAddrs {
                    terminal_quic: at,
                    terminal_tcp: at,
                    agent_quic: at,
                    agent_tcp: at,
                    admin: at,
                }),
                netns: Some(self.net.name(i).into()),
                shipped_keepalive: true,
                ..Default::default()
            },
        )
        .await;
        assert_eq!(gw.addrs.terminal_tcp.ip(), self.net.addr(i));
        self.gws.push(gw);
    }

    /// Laptop `id` of `user`, logged in through gateway 0.
    async fn laptop(&mut self, id: &str, user: &str) -> Laptop {
        let dev = self.pki.device(id, TerminalClass::Home);
        let token = redeem_login(
            &self.pki,
            &dev,
            self.gws[0].addrs.terminal_tcp,
            &self.store,
            user,
        )
        .await;
        Laptop {
            dev,
            id: id.into(),
            user: user.into(),
            token,
        }
    }

    /// `kakehashi connect DESK` on `laptop` through gateway `via`, then
    /// each of `fallback` (`[gateway] fallback`), over TLS/TCP.
    async fn connect(
        &self,
        laptop: &Laptop,
        desk: &str,
        via: usize,
        fallback: &[usize],
    ) -> ClientProc {
        let cfg = client_config_logged_in(
            &self.pki,
            &laptop.dev,
            &self.gws[via].addrs,
            &laptop.user,
            &laptop.token,
        );
        let list: Vec<String> = fallback
            .iter()
            .map(|&i| format!("\"{}\"", self.gws[i].addrs.terminal_tcp))
            .collect();
        let text = std::fs::read_to_string(&cfg).unwrap().replacen(
            "[tls]",
            &format!("fallback = [{}]\n[tls]", list.join(", ")),
            1,
        );
        std::fs::write(&cfg, text).unwrap();
        start_client(&self.pki, &cfg, desk, "tcp").await.unwrap()
    }

    /// `kakehashi-gateway ARGS… --config` gateway `i`'s configuration.
    async fn cli(&self, i: usize, args: &[&str]) -> String {
        let mut all = args.to_vec();
        all.extend(["--config", self.gws[i].config.to_str().unwrap()]);
        let (ok, out) = gateway_cli(&all).await;
        assert!(ok, "kakehashi-gateway {args:?}: {out}");
        out
    }

    /// The open session rows, by id.
    async fn open_rows(&self) -> HashMap<String, SessionRecord> {
        let open = self.store.open_sessions().await.unwrap();
        open.into_iter().map(|r| (r.id.clone(), r)).collect()
    }
}

/// Waits until every desk's agent is online on `gw`; how long it took.
async fn wait_agents(gw: &GatewayProc, within: Duration) -> Duration {
    let t = Instant::now();
    loop {
        let log = gw.proc.log_text();
        let online: Vec<&str> = log.lines().filter(|l| l.contains("Agent online")).collect();
        let missing: Vec<String> = (0..DESKS)
            .map(desk)
            .filter(|d| !online.iter().any(|l| l.contains(d.as_str())))
            .collect();
        if missing.is_empty() {
            return t.elapsed();
        }
        assert!(
            t.elapsed() < within,
            "not online on {} within {within:?}: {missing:?}",
            gw.addrs.agent_tcp
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `n` live sessions through `client`, `parallel` being opened at a time,
/// each after one echo round trip.
async fn open_sessions(client: SocketAddr, n: usize, parallel: usize) -> Vec<TcpStream> {
    let mut all = Vec::with_capacity(n);
    while all.len() < n {
        let batch = parallel.min(n - all.len());
        let mut set = tokio::task::JoinSet::new();
        for k in 0..batch {
            let at = client;
            set.spawn(async move {
                let mut s = TcpStream::connect(at).await.unwrap();
                echo(&mut s, format!("session {k}").as_bytes()).await;
                s
            });
        }
        while let Some(s) = set.join_next().await {
            all.push(s.unwrap());
        }
    }
    all
}

/// Whether the stream ends (end of stream or an error) within `within`.
async fn ends_within(s: &mut TcpStream, within: Duration) -> bool {
    closed_within(s, within).await
}

/// The process `pid` runs the gateway binary itself (`ip netns exec`
/// execs), so a signal to it hits the gateway.
fn is_gateway_process(pid: u32) -> bool {
    std::fs::read_link(format!("/proc/{pid}/exe"))
        .is_ok_and(|p| p.file_name().is_some_and(|n| n == "kakehashi-gateway"))
}

/// Every session row, by id.
async fn rows(store: &Store, ids: &[String]) -> Vec<SessionRecord> {
    let mut out = Vec::new();
    for id in ids {
        out.push(store.get_session(id).await.unwrap().expect("a row"));
    }
    out
}

/// How many `session.end` records each session has in the audit log.
async fn ends_recorded(store: &Store) -> HashMap<String, usize> {
    let mut ends = HashMap::new();
    for r in sealed_audit(store).await {
        if r.action == "session.end" {
            *ends.entry(r.subject.clone()).or_insert(0) += 1;
        }
    }
    ends
}

/// Issue 18, Tests, 1: `kill -9` of the gateway holding 300 sessions. Every
/// agent is served by the survivors within 5 s (a session to each desk
/// through each survivor), every laptop's next session opens through a
/// survivor with the same login, the dead gateway's rows are closed
/// (`gateway_lost`) once its membership lapses and no row is left open,
/// and `audit verify` passes.
#[tokio::test(flavor = "multi_thread")]
async fn netns_kill9_of_the_gateway_holding_300_sessions() {
    const LAPTOPS: usize = 5;
    const PER_LAPTOP: usize = 60;
    let mut c = cluster(3, "100ms").await;
    let mut laptops = Vec::new();
    for k in 0..LAPTOPS {
        laptops.push(c.laptop(&format!("LT-{k:02}"), "u-kato").await);
    }
    let mut clients = Vec::new();
    for (k, l) in laptops.iter().enumerate() {
        clients.push(c.connect(l, &desk(k), 0, &[1, 2]).await);
    }
    let t = Instant::now();
    let opening: Vec<_> = clients
        .iter()
        .map(|cl| tokio::spawn(open_sessions(cl.listen, PER_LAPTOP, 10)))
        .collect();
    let mut streams: Vec<TcpStream> = Vec::new();
    for o in opening {
        streams.extend(o.await.unwrap());
    }
    let on_a = c.store.open_sessions_of(Some("gw-a")).await.unwrap();
    eprintln!(
        "{} sessions open through gw-a in {:?} ({LAPTOPS} laptops, 10 at a time each)",
        streams.len(),
        t.elapsed()
    );
    assert_eq!(on_a.len(), LAPTOPS * PER_LAPTOP);
    assert_eq!(c.open_rows().await.len(), LAPTOPS * PER_LAPTOP);
    let dead: Vec<String> = on_a.iter().map(|r| r.id.clone()).collect();

    let pid = c.gws[0].proc.pid();
    assert!(is_gateway_process(pid), "pid {pid} is not the gateway");
    c.gws[0].proc.kill().await;
    let killed = Instant::now();

    // Every agent is served by the survivors: a session to every desk
    // through gw-b and through gw-c.
    let mut pending: Vec<(usize, usize)> = (0..DESKS).flat_map(|d| [(d, 1), (d, 2)]).collect();
    let l0 = &laptops[0];
    while !pending.is_empty() {
        let mut left = Vec::new();
        for (d, g) in pending {
            if let Err(r) = request_session(&c.pki, &l0.dev, &c.gws[g], &desk(d), &l0.token).await {
                assert!(
                    killed.elapsed() < Duration::from_secs(5),
                    "{} not served by {} within 5 s of the kill: {r:?}",
                    desk(d),
                    gw_name(g)
                );
                left.push((d, g));
            }
        }
        pending = left;
    }
    let served = killed.elapsed();

    // The sessions through gw-a were cut with it.
    for s in &mut streams {
        assert!(ends_within(s, Duration::from_secs(10)).await);
    }
    drop(streams);
    // Each laptop's next session opens through a survivor, with its login.
    let mut next = Vec::new();
    for cl in &clients {
        let mut s = TcpStream::connect(cl.listen).await.unwrap();
        echo(&mut s, b"after the kill").await;
        next.push(s);
    }
    let reopened = killed.elapsed();
    // (`connect` cannot log in by itself: the token file it was given is
    // what opened these.)
    for cl in &clients {
        cl.proc
            .wait_log("now through", Duration::from_secs(5))
            .await
            .unwrap();
        let log = cl.proc.log_text();
        assert!(log.contains("切り替えました"), "{log}");
    }
    // (gw-a's rows stay open until its membership lapses, below.)
    let survivors: Vec<SessionRecord> = c
        .open_rows()
        .await
        .into_values()
        .filter(|r| r.gateway.as_deref() != Some("gw-a"))
        .collect();
    assert_eq!(survivors.len(), LAPTOPS, "{survivors:?}");
    assert!(
        survivors
            .iter()
            .all(|r| matches!(r.gateway.as_deref(), Some("gw-b" | "gw-c"))),
        "{survivors:?}"
    );

    // A survivor closes the dead gateway's rows once its membership lapses.
    let reaped = loop {
        let left = c.store.open_sessions_of(Some("gw-a")).await.unwrap();
        if left.is_empty() {
            break killed.elapsed();
        }
        assert!(
            killed.elapsed() < Duration::from_secs(40),
            "{} of gw-a's rows still open",
            left.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    for r in rows(&c.store, &dead).await {
        assert_eq!(r.end_reason.as_deref(), Some("gateway_lost"), "{r:?}");
    }
    // The laptops' sessions end; then no row is open anywhere.
    drop(next);
    let t = Instant::now();
    while !c.open_rows().await.is_empty() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "rows left open: {:?}",
            c.open_rows().await.keys().take(10).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ends = ends_recorded(&c.store).await;
    for id in &dead {
        assert_eq!(ends.get(id), Some(&1), "session.end records of {id}");
    }
    let out = c.cli(1, &["audit", "verify"]).await;
    eprintln!(
        "gw-a killed with {} sessions: every desk served by gw-b and gw-c after {served:?}, \
         every laptop's next session open after {reopened:?}, gw-a's rows closed after {reaped:?}",
        dead.len()
    );
    eprintln!("{}", out.trim());
}

/// The open rows of laptop `device`, waiting until there are `n`.
async fn open_rows_of(c: &Cluster, device: &str, n: usize) -> Vec<SessionRecord> {
    let t = Instant::now();
    loop {
        let rows: Vec<SessionRecord> = c
            .open_rows()
            .await
            .into_values()
            .filter(|r| r.device_id == device)
            .collect();
        if rows.len() == n || t.elapsed() > Duration::from_secs(10) {
            assert_eq!(rows.len(), n, "{rows:?}");
            return rows;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Session row `id` once it is closed.
async fn ended_row(store: &Store, id: &str) -> SessionRecord {
    let t = Instant::now();
    loop {
        let r = store.get_session(id).await.unwrap().expect("a row");
        if r.ended_at.is_some() {
            return r;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "not closed: {r:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Issue 18, Tests, 2: a device blocked through gateway A ends its session
/// on gateway C within 2 s, and a policy import through B ends the sessions
/// it no longer allows on A and C (and only those). Every change feed polls
/// only every 5 s (the longest `[policy] watch`): PostgreSQL's NOTIFY,
/// across the namespaces, must carry the changes. A poll may still fall
/// inside a 2 s window by chance (2 in 5), so the block is made for
/// [`BLOCKED`] laptops one after the other: without NOTIFY all of them and
/// the import pass with a chance of about 0.4⁵ ≈ 1 % (checked: with the
/// LISTEN broken the test failed).
#[tokio::test(flavor = "multi_thread")]
async fn netns_a_block_on_a_and_a_policy_import_on_b_end_sessions_on_the_others() {
    const BLOCKED: usize = 4;
    let mut c = cluster(3, "5s").await;
    let sato = c.laptop("LT-SATO", "u-sato").await;
    // BLOCKED laptops with a session each through gw-c.
    let mut blocked = Vec::new();
    for k in 0..BLOCKED {
        let l = c.laptop(&format!("LT-K{k}"), "u-kato").await;
        let cl = c.connect(&l, &desk(k), 2, &[]).await;
        let s = echo_session(&cl, b"on gw-c").await;
        let row = open_rows_of(&c, &l.id, 1).await.remove(0);
        assert_eq!(row.gateway.as_deref(), Some("gw-c"));
        blocked.push((l, cl, s, row));
    }
    // LT-SATO: a level-1 and a level-2 desk through gw-a and through gw-c.
    let mut others = Vec::new();
    for (d, g) in [(1, 0), (DESKS / 2 + 1, 0), (2, 2), (DESKS / 2 + 2, 2)] {
        let cl = c.connect(&sato, &desk(d), g, &[]).await;
        let s = echo_session(&cl, b"sato").await;
        others.push((d, g, cl, s));
    }
    let sato_rows = open_rows_of(&c, &sato.id, others.len()).await;
    // Past the first poll after the sessions started.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let (mut cli_took, mut block_took) = (Duration::ZERO, Duration::ZERO);
    for k in 0..BLOCKED {
        let (l, _, s, row) = &mut blocked[k];
        let asked = Instant::now();
        block_device(&c.gws[0], &l.id).await;
        cli_took = cli_took.max(asked.elapsed());
        let t = Instant::now();
        assert!(
            ends_within(s, Duration::from_secs(2)).await,
            "{}'s session on gw-c was not ended within 2 s of the block through gw-a",
            l.id
        );
        block_took = block_took.max(t.elapsed());
        let r = ended_row(&c.store, &row.id).await;
        assert_eq!(r.end_reason.as_deref(), Some("device_blocked"), "{r:?}");
        // Only that laptop's.
        for (_, _, s, _) in &mut blocked[k + 1..] {
            echo(s, b"not blocked yet").await;
        }
        for (_, _, _, s) in &mut others {
            echo(s, b"still here").await;
        }
    }

    // Through gw-b: level 1 only.
    let file = c.pki.path().join("level-1-only.toml");
    let policy = OPEN_POLICY.replace("levels = [1, 2, 3]", "levels = [1]");
    assert_ne!(policy, OPEN_POLICY);
    std::fs::write(&file, policy).unwrap();
    let asked = Instant::now();
    c.cli(
        1,
        &[
            "policy",
            "import",
            file.to_str().unwrap(),
            "--reason",
            "level 2 stays in the office",
        ],
    )
    .await;
    let import_cli = asked.elapsed();
    let t = Instant::now();
    let mut import_took = Duration::ZERO;
    for (d, g, _, s) in &mut others {
        if level(*d) == 2 {
            assert!(
                ends_within(s, Duration::from_secs(2)).await,
                "the level-2 session on {} went on after the import",
                gw_name(*g)
            );
            import_took = import_took.max(t.elapsed());
        }
    }
    for (d, g, _, s) in &mut others {
        if level(*d) == 1 {
            echo(s, b"level 1 goes on").await;
        }
        let row = sato_rows
            .iter()
            .find(|r| r.desk_id == desk(*d))
            .expect("a row");
        assert_eq!(row.gateway.as_deref(), Some(gw_name(*g).as_str()));
        if level(*d) == 2 {
            let r = ended_row(&c.store, &row.id).await;
            assert_eq!(r.end_reason.as_deref(), Some("no_rule"), "{r:?}");
        } else {
            let r = c.store.get_session(&row.id).await.unwrap().unwrap();
            assert_eq!(r.ended_at, None, "{r:?}");
        }
    }
    eprintln!(
        "block through gw-a → the laptop's session on gw-c ended at most {block_took:?} after the \
         command returned ({BLOCKED} laptops; the command took up to {cli_took:?}); policy import \
         through gw-b → the level-2 sessions on gw-a and gw-c ended {import_took:?} after it \
         returned (it took {import_cli:?})"
    );
}

/// How a live session fared under [`keep_echoing`].
enum Fate {
    /// Still up when told to stop, with its stream.
    Alive(TcpStream),
    /// Ended (end of stream or an error) after this many round trips.
    Ended,
}

/// Echo round trips on `s` every 200 ms until `stop`, or until the stream
/// ends; how many, and how it ended.
async fn keep_echoing(
    mut s: TcpStream,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> (usize, Fate) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut rounds = 0;
    let mut buf = [0u8; 32];
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let msg = format!("round {rounds}");
        if s.write_all(msg.as_bytes()).await.is_err() {
            return (rounds, Fate::Ended);
        }
        let n = msg.len();
        match tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut buf[..n])).await {
            Ok(Ok(_)) if &buf[..n] == msg.as_bytes() => rounds += 1,
            Ok(Ok(_)) => panic!("wrong echo"),
            Ok(Err(_)) => return (rounds, Fate::Ended),
            Err(_) => panic!("no echo within 10 s"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    (rounds, Fate::Alive(s))
}

/// Issue 18, Tests, 3: PostgreSQL restarted (immediate stop, as a crash)
/// under load — 60 live sessions echoing on three gateways and new sessions
/// asked for all along. The gateways reconnect; a block made right after
/// the restart ends exactly the blocked laptop's sessions, each once; the
/// other live sessions are untouched; every session row agrees with what
/// happened (the rows of the sessions that ended, short ones and five the
/// laptop closed while PostgreSQL was down, are closed, each with one
/// `session.end`); `audit verify` passes.
#[tokio::test(flavor = "multi_thread")]
async fn netns_postgres_restarted_under_load() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    const PER_CLIENT: usize = 10;
    let mut c = cluster(3, "1s").await;
    let kato = c.laptop("LT-KATO", "u-kato").await;
    let sato = c.laptop("LT-SATO", "u-sato").await;
    let mut clients = Vec::new();
    let mut streams = Vec::new();
    for g in 0..3 {
        for (k, l) in [&kato, &sato].into_iter().enumerate() {
            let cl = c.connect(l, &desk(2 * g + k), g, &[]).await;
            for s in open_sessions(cl.listen, PER_CLIENT, PER_CLIENT).await {
                streams.push((l.id.clone(), s));
            }
            clients.push(cl);
        }
    }
    let kato_ids: Vec<String> = open_rows_of(&c, &kato.id, 3 * PER_CLIENT)
        .await
        .into_iter()
        .map(|r| r.id)
        .collect();
    let sato_ids: Vec<String> = open_rows_of(&c, &sato.id, 3 * PER_CLIENT)
        .await
        .into_iter()
        .map(|r| r.id)
        .collect();
    // Five more of LT-SATO's, which the laptop ends while PostgreSQL is down.
    let ending = open_sessions(clients[1].listen, 5, 5).await;
    let ending_ids: Vec<String> = open_rows_of(&c, &sato.id, 3 * PER_CLIENT + 5)
        .await
        .into_iter()
        .map(|r| r.id)
        .filter(|id| !sato_ids.contains(id))
        .collect();

    let stop = Arc::new(AtomicBool::new(false));
    let load: Vec<_> = streams
        .into_iter()
        .map(|(dev, s)| (dev, tokio::spawn(keep_echoing(s, stop.clone()))))
        .collect();
    // New sessions all along, on every gateway (the connection closes on
    // return, which ends an accepted one).
    let churning = AtomicBool::new(true);
    let churn = async {
        let (mut accepted, mut refused) = (Vec::new(), 0);
        while churning.load(Ordering::Relaxed) {
            for gw in &c.gws {
                match request_session(&c.pki, &sato.dev, gw, &desk(DESKS - 1), &sato.token).await {
                    Ok(id) => accepted.push(id),
                    Err(r) => {
                        assert_eq!(r.code, "store_unavailable", "{r:?}");
                        refused += 1;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        (accepted, refused)
    };
    let scenario = async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        c.pg.stop_now();
        tokio::time::sleep(Duration::from_secs(1)).await;
        drop(ending);
        tokio::time::sleep(Duration::from_secs(2)).await;
        c.pg.start_again();
        let back = Instant::now();
        block_device(&c.gws[1], &kato.id).await;
        let blocked = back.elapsed();
        // Every LT-KATO session ends; LT-SATO's go on.
        for (dev, h) in &load {
            if *dev == kato.id {
                while !h.is_finished() {
                    assert!(
                        back.elapsed() < Duration::from_secs(20),
                        "a blocked session still open 20 s after the restart"
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        let ended = back.elapsed();
        // More load after it, then stop.
        tokio::time::sleep(Duration::from_secs(2)).await;
        churning.store(false, Ordering::Relaxed);
        (blocked, ended)
    };
    let ((accepted, refused), (blocked, ended)) = tokio::join!(churn, scenario);
    stop.store(true, Ordering::Relaxed);
    let mut live = Vec::new();
    let mut rounds = 0;
    for (dev, h) in load {
        let (n, fate) = h.await.unwrap();
        rounds += n;
        match (dev == kato.id, fate) {
            (true, Fate::Ended) => {}
            (true, Fate::Alive(_)) => panic!("a blocked session is still up"),
            (false, Fate::Alive(s)) => live.push(s),
            (false, Fate::Ended) => panic!("a live session was cut after {n} round trips"),
        }
    }
    assert_eq!(live.len(), 3 * PER_CLIENT);
    assert!(
        !accepted.is_empty() && refused > 0,
        "{accepted:?} {refused}"
    );

    // The rows: LT-SATO's live ones open, LT-KATO's closed as blocked, the
    // short sessions all closed.
    for id in &kato_ids {
        let r = ended_row(&c.store, id).await;
        assert_eq!(r.end_reason.as_deref(), Some("device_blocked"), "{r:?}");
    }
    for id in accepted.iter().chain(&ending_ids) {
        ended_row(&c.store, id).await;
    }
    let open = c.open_rows().await;
    let mut open_ids: Vec<&String> = open.keys().collect();
    let mut want: Vec<&String> = sato_ids.iter().collect();
    open_ids.sort();
    want.sort();
    assert_eq!(open_ids, want, "the open rows are the live sessions");
    // Each end recorded once; the block once.
    let ends = ends_recorded(&c.store).await;
    for id in kato_ids.iter().chain(&accepted).chain(&ending_ids) {
        assert_eq!(ends.get(id), Some(&1), "session.end records of {id}");
    }
    for id in &sato_ids {
        assert_eq!(ends.get(id), None, "a live session has a session.end");
    }
    let blocks = c
        .store
        .audit_between(0, i64::MAX)
        .await
        .unwrap()
        .iter()
        .filter(|r| r.action == "device.block")
        .count();
    assert_eq!(blocks, 1);
    for s in &mut live {
        echo(s, b"after it all").await;
    }
    let out = c.cli(0, &["audit", "verify"]).await;
    eprintln!(
        "PostgreSQL stopped 3 s under load ({rounds} echo round trips on 60 live sessions, \
         {} short sessions accepted and {refused} refused): block made {blocked:?} after the \
         restart, the blocked laptop's 30 sessions ended {ended:?} after it",
        accepted.len()
    );
    eprintln!("{}", out.trim());
}

/// Issue 18, Tests, 4: a fourth gateway joins (its own namespace, the same
/// database): every agent, configured with one of the first three only,
/// dials it within 15 s of its start, and every desk is served through it.
#[tokio::test(flavor = "multi_thread")]
async fn netns_a_fourth_gateway_joins_and_every_agent_dials_it_within_15_s() {
    let mut c = cluster(3, "100ms").await;
    let kato = c.laptop("LT-KATO", "u-kato").await;
    assert_eq!(c.net.add(), 3);
    let t = Instant::now();
    c.start_gateway(3).await;
    let listening = t.elapsed();
    wait_agents(&c.gws[3], Duration::from_secs(15).saturating_sub(listening)).await;
    let took = t.elapsed();
    for d in 0..DESKS {
        request_session(&c.pki, &kato.dev, &c.gws[3], &desk(d), &kato.token)
            .await
            .unwrap_or_else(|r| panic!("{} through gw-d: {r:?}", desk(d)));
    }
    for a in &c.agents {
        let log = a.log_text();
        assert!(
            log.lines()
                .any(|l| l.contains("Cluster member added") && l.contains("gw-d")),
            "{log}"
        );
    }
    eprintln!(
        "gw-d started; listening after {listening:?}, all {DESKS} agents online on it after {took:?}"
    );
}

/// Issue 18, Tests, 1 (second part): xfreerdp (`+auto-reconnect`) to
/// freerdp-shadow through the three-gateway cluster; `kill -9` of the
/// gateway carrying the desktop, and the desktop comes back through
/// another member, with no new login.
#[tokio::test(flavor = "multi_thread")]
async fn netns_an_rdp_desktop_comes_back_when_its_gateway_is_killed() {
    use crate::e2e::rdp::{install_peers, rdp_client_holding, start_rdp_server, PASSWORD};
    install_peers().await;
    let mut c = cluster(3, "1s").await;
    let (_rdp_server, rdp_addr) = start_rdp_server(&mut c.pki).await;
    add_desk(&c.store, "DESK-RDP", 1, &["u-kato"]).await;
    let files = c.pki.agent("DESK-RDP");
    let agent = start_agent_with(&c.pki, &files, &c.gws[0].addrs, rdp_addr, "tcp");
    for gw in &c.gws {
        crate::e2e::rdp::wait_log_line(
            &gw.proc,
            &["Agent online", "DESK-RDP"],
            Duration::from_secs(30),
        )
        .await
        .unwrap();
    }
    let kato = c.laptop("LT-KATO", "u-kato").await;
    let client = c.connect(&kato, "DESK-RDP", 0, &[1, 2]).await;
    let rdp = rdp_client_holding(
        &c.pki,
        "netns-failover",
        client.listen,
        PASSWORD,
        "15",
        &["+auto-reconnect", "/auto-reconnect-max-retries:20"],
    );
    let gw_a = c.gws[0].proc.pid();
    assert!(is_gateway_process(gw_a), "pid {gw_a} is not the gateway");
    let failover = async {
        crate::e2e::rdp::wait_log_line(&agent, &["Session started"], Duration::from_secs(30))
            .await
            .unwrap();
        // The agent logs the start before the gateway writes the row.
        let mut first = Vec::new();
        for _ in 0..100 {
            first = c.store.open_sessions().await.unwrap();
            if !first.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(first.len(), 1, "{first:?}");
        assert_eq!(first[0].gateway.as_deref(), Some("gw-a"));
        tokio::time::sleep(Duration::from_secs(3)).await;
        let killed_ok = std::process::Command::new("kill")
            .args(["-KILL", &gw_a.to_string()])
            .status()
            .unwrap()
            .success();
        assert!(killed_ok);
        let killed = Instant::now();
        loop {
            let open = c.store.open_sessions().await.unwrap();
            if let Some(r) = open.iter().find(|r| r.gateway.as_deref() != Some("gw-a")) {
                eprintln!(
                    "the RDP client's reconnection opened a session through {} {:?} after gw-a was killed",
                    r.gateway.as_deref().unwrap_or("?"),
                    killed.elapsed()
                );
                break;
            }
            assert!(
                killed.elapsed() < Duration::from_secs(20),
                "the reconnection never reached gw-b or gw-c"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let ((code, out), ()) = tokio::join!(rdp, failover);
    let log = std::fs::read_to_string(c.pki.path().join("rdp-xfreerdp-netns-failover.log"))
        .unwrap_or_default();
    // Only the first reconnection is judged (FreeRDP 2's sound channel
    // loop after it: see the loopback test in cluster.rs).
    let cut = log.find("Network disconnect!");
    let active_again = cut.is_some_and(|at| log[at..].contains("--> CONNECTION_STATE_ACTIVE"));
    assert!(
        active_again,
        "xfreerdp did not reach the desktop again after the cut (exit {code}):\n{out}\nconnect:\n{}",
        client.proc.log_text()
    );
    assert!(client.proc.log_text().contains("now through"));
}
