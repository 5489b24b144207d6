//! `kakehashi-demo` works as its printed instructions say.

use std::time::Duration;

use kakehashi_tests::*;

#[tokio::test(flavor = "multi_thread")]
async fn demo_works_as_printed() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("demo");
    let mut demo = start_demo(tmp.path(), &[]).await;
    let metrics_addr = demo_metrics_addr(&mut demo).await;
    let (status, body) = http_get(metrics_addr, "/metrics").await.unwrap();
    assert_eq!(status, 200);
    assert!(
        body.contains("kakehashi_agents_online{transport=\"quic\"} 1"),
        "{body}"
    );
    // Log in as printed: a real WebAuthn ceremony with the demo's software authenticator.
    let out = demo_login(&mut demo).await;
    assert!(out.contains("logged in: demo-user"), "{out}");
    demo.wait_line("Next, in another terminal", Duration::from_secs(5))
        .await
        .unwrap();
    // The printed `connect … --listen 127.0.0.1:PORT` command, run as printed.
    let connect = demo
        .stdout
        .lock()
        .unwrap()
        .last()
        .cloned()
        .unwrap_or_default();
    let connect = demo
        .wait_line("  ", Duration::from_secs(5))
        .await
        .map(|l| if l.contains(" connect ") { l } else { connect })
        .unwrap();
    assert!(
        connect.contains("connect demo-desk --listen 127.0.0.1:"),
        "{connect}"
    );
    let port = connect.rsplit(':').next().unwrap().trim().to_string();
    let _client = run_printed_connect(&connect, tmp.path().join("client.log")).await;
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    assert_eq!(
        roundtrip(addr, "架け橋 demo".as_bytes()).await.unwrap(),
        "架け橋 demo".as_bytes()
    );

    // The one-line form without nc.
    let line = demo
        .wait_line("  echo こんにちは | ", Duration::from_secs(5))
        .await
        .unwrap();
    let out = command("sh")
        .arg("-c")
        .arg(format!("echo こんにちは | {line}"))
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "こんにちは\n");
    assert!(String::from_utf8_lossy(&out.stderr).contains("transport: quic"));

    // The echo desk is registered as non-RDP and its agent passes through: the
    // sessions are audited as not enforced, never as enforced.
    let store = kakehashi_store::Store::open(dir.join("kakehashi.db").to_str().unwrap())
        .await
        .unwrap();
    let starts: Vec<_> = store
        .audit_between(0, i64::MAX)
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.action == "session.start")
        .collect();
    assert!(starts.len() >= 2, "{starts:?}");
    for r in &starts {
        let d = r.detail_json().unwrap();
        assert_eq!(d["enforced"], false, "{d}");
        assert_eq!(
            d["enforcement"], "controls not enforced: non-RDP desk",
            "{d}"
        );
    }

    // The client config it wrote is a normal file a person can reuse.
    assert!(
        dir.join("client.toml").exists()
            && dir.join("gateway.toml").exists()
            && dir.join("agent.toml").exists()
    );
    // Ctrl-C (SIGTERM here) stops it cleanly.
    demo.terminate();
    assert!(
        demo.wait_exit(Duration::from_secs(15))
            .await
            .unwrap()
            .success(),
        "{}",
        demo.log_text()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_gateway_binary_points_to_the_demo_program() {
    // The production gateway carries no demo (and with it no agent, client
    // or software authenticator); the old subcommand says where it went.
    let out = command(bin("kakehashi-gateway"))
        .args(["demo", "--dir", "x"])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("kakehashi-demo"), "{err}");
}

/// `(pid, start time)` of every live descendant of `pid`, from `/proc`:
/// the start time tells a process from a later one that reuses its pid.
fn descendants(pid: u32) -> Vec<(u32, u64)> {
    let mut all = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Some((state, ppid, start)) = stat(p) {
            if state != "Z" {
                all.push((p, ppid, start));
            }
        }
    }
    let mut out: Vec<(u32, u64)> = Vec::new();
    let mut parents = vec![pid];
    while let Some(parent) = parents.pop() {
        for &(p, ppid, start) in &all {
            if ppid == parent && !out.iter().any(|&(q, _)| q == p) {
                out.push((p, start));
                parents.push(p);
            }
        }
    }
    out
}

/// State, parent pid and start time of `pid` (`/proc/PID/stat` fields 3, 4, 22).
fn stat(pid: u32) -> Option<(String, u32, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = s.rsplit_once(')')?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some((f[0].to_owned(), f[1].parse().ok()?, f[19].parse().ok()?))
}

/// Whether the process `pid` that started at `start` still runs (a zombie
/// waiting for its new parent to reap it does not).
fn running(pid: u32, start: u64) -> bool {
    stat(pid).is_some_and(|(state, _, s)| s == start && state != "Z")
}

/// Kills, when dropped, those of the processes that still run.
struct KillOnDrop(Vec<(u32, u64)>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        for &(pid, start) in &self.0 {
            if running(pid, start) {
                let _ = std::process::Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            }
        }
    }
}

/// `kakehashi-demo --rdp` killed with SIGKILL: it cannot drop anything, and
/// its RDP desk (Xvfb, freerdp-shadow-cli, the xterm on its display) still
/// ends within a few seconds, because each child is tied to it with
/// PR_SET_PDEATHSIG. A fresh-clone test run once left the desk running
/// after the suite.
#[tokio::test(flavor = "multi_thread")]
async fn demo_rdp_children_die_with_it_on_sigkill() {
    super::rdp::install_peers().await;
    let tmp = tempfile::tempdir().unwrap();
    let mut demo = start_demo(tmp.path(), &["--rdp"]).await;
    let pid = demo.pid();
    let children = descendants(pid);
    let names: Vec<String> = children
        .iter()
        .map(|&(p, _)| {
            std::fs::read_to_string(format!("/proc/{p}/comm"))
                .unwrap_or_default()
                .trim()
                .to_owned()
        })
        .collect();
    // Should the assertions below fail, the children are still stopped.
    let _leftovers = KillOnDrop(children.clone());
    // (`comm` is cut to 15 bytes: "freerdp-shadow-".)
    for want in ["Xvfb", "freerdp-shadow"] {
        assert!(
            names.iter().any(|n| n.starts_with(want)),
            "no {want} among the demo's children: {names:?}"
        );
    }
    // SIGKILL, not the Child's own kill: the same signal, sent the way an
    // operator or a harness timeout sends it.
    let killed = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    demo.wait_exit(Duration::from_secs(5)).await.unwrap();
    let start = std::time::Instant::now();
    loop {
        let left: Vec<(u32, &String)> = children
            .iter()
            .zip(&names)
            .filter(|((p, s), _)| running(*p, *s))
            .map(|((p, _), n)| (*p, n))
            .collect();
        if left.is_empty() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "still running 5 s after the demo was killed: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One `gateway N: pid P, laptops ADDR, agents ADDR, metrics URL` line of
/// `kakehashi-demo --gateways N`.
#[derive(Debug)]
struct PrintedGateway {
    pid: u32,
    laptops: std::net::SocketAddr,
    agents: std::net::SocketAddr,
    admin: std::net::SocketAddr,
}

/// Waits for and parses the demo's `gateway N: …` line.
async fn printed_gateway(demo: &mut Proc, n: u32) -> PrintedGateway {
    let rest = demo
        .wait_line(&format!("gateway {n}: "), Duration::from_secs(5))
        .await
        .unwrap();
    let field = |name: &str| {
        rest.split(", ")
            .find_map(|f| f.strip_prefix(name))
            .unwrap_or_else(|| panic!("no {name:?} in {rest:?}"))
            .trim()
            .to_owned()
    };
    let metrics = field("metrics ");
    PrintedGateway {
        pid: field("pid ").parse().unwrap(),
        laptops: field("laptops ").parse().unwrap(),
        agents: field("agents ").parse().unwrap(),
        admin: metrics
            .strip_prefix("http://")
            .and_then(|m| m.strip_suffix("/metrics"))
            .unwrap_or_else(|| panic!("{metrics}"))
            .parse()
            .unwrap(),
    }
}

/// `kakehashi-demo --gateways 3` in `tmp`, with PostgreSQL installed first
/// and, as root, `tmp` opened to the `postgres` user the server runs as.
async fn start_cluster_demo(tmp: &std::path::Path) -> (Proc, Vec<PrintedGateway>) {
    kakehashi_tests::pg::ensure_postgres_installed().unwrap();
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let mut demo = start_demo(tmp, &["--gateways", "3"]).await;
    let mut gws = Vec::new();
    for n in 1..=3 {
        gws.push(printed_gateway(&mut demo, n).await);
    }
    (demo, gws)
}

/// `comm` of `pid` (cut to 15 bytes by the kernel).
fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_owned()
}

/// The demo's descendants, checked to hold its three gateways (children of
/// the demo itself) and a PostgreSQL server.
fn cluster_processes(demo: u32, gws: &[PrintedGateway]) -> Vec<(u32, u64)> {
    let all = descendants(demo);
    for g in gws {
        assert!(
            all.iter().any(|&(p, _)| p == g.pid) && stat(g.pid).unwrap().1 == demo,
            "gateway pid {} is not the demo's child: {all:?}",
            g.pid
        );
        assert_eq!(comm(g.pid), "kakehashi-gatew");
    }
    assert!(
        all.iter().any(|&(p, _)| comm(p) == "postgres"),
        "no PostgreSQL among the demo's processes"
    );
    all
}

/// Waits until none of `procs` runs (5 s); names those still running.
async fn all_gone(procs: &[(u32, u64)], what: &str) {
    let start = std::time::Instant::now();
    loop {
        let left: Vec<(u32, String)> = procs
            .iter()
            .filter(|&&(p, s)| running(p, s))
            .map(|&(p, _)| (p, comm(p)))
            .collect();
        if left.is_empty() {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "still running 5 s after the demo {what}: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `echo MSG | kakehashi --config CFG connect demo-desk --stdio`: the echo
/// and the client's standard error.
async fn stdio_session(client: &str, cfg: &std::path::Path, msg: &str) -> (String, String) {
    let out = command("sh")
        .arg("-c")
        .arg(format!(
            "echo {msg} | {client} --config {} connect demo-desk --stdio",
            cfg.display()
        ))
        .output()
        .await
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{err}");
    (String::from_utf8_lossy(&out.stdout).into_owned(), err)
}

/// `kakehashi-demo --gateways 3`: three gateway processes on a throw-away
/// PostgreSQL, printed one per line; the client.toml it writes lists all
/// three; a session goes through gateway 2 alone; after `kill -9` of
/// gateway 1 sessions go on through the others; and SIGTERM stops every
/// process it started.
#[tokio::test(flavor = "multi_thread")]
async fn demo_with_three_gateways_survives_one_killed_and_stops_them_all() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("demo");
    let (mut demo, gws) = start_cluster_demo(tmp.path()).await;
    let procs = cluster_processes(demo.pid(), &gws);
    let _leftovers = KillOnDrop(procs.clone());

    // Three distinct gateways, each with the demo's agent online.
    for (i, g) in gws.iter().enumerate() {
        for h in &gws[i + 1..] {
            assert!(g.pid != h.pid && g.laptops != h.laptops && g.agents != h.agents);
        }
        let (status, body) = http_get(g.admin, "/metrics").await.unwrap();
        assert_eq!(status, 200);
        let agents = metric(&body, "kakehashi_agents_online{transport=\"quic\"}")
            + metric(&body, "kakehashi_agents_online{transport=\"tcp\"}");
        assert_eq!(agents, 1.0, "gateway {}: {body}", i + 1);
    }

    // The client.toml, read as the client reads it, lists all three.
    let client_toml = dir.join("client.toml");
    let cfg = kakehashi_client::Config::load(&client_toml).unwrap();
    assert_eq!(cfg.tcp, gws[0].laptops.to_string());
    assert_eq!(
        cfg.fallback,
        vec![gws[1].laptops.to_string(), gws[2].laptops.to_string()]
    );

    // Log in as printed (through gateway 1's portal), then a session
    // through gateway 2 alone: the same file naming only gateway 2, beside
    // it so that it shares the login token.
    let out = demo_login(&mut demo).await;
    assert!(out.contains("logged in: demo-user"), "{out}");
    let line = demo
        .wait_line("  echo こんにちは | ", Duration::from_secs(5))
        .await
        .unwrap();
    let client = line.split(" --config ").next().unwrap().to_owned();
    let only = |n: usize| {
        let text = std::fs::read_to_string(&client_toml).unwrap();
        let first = format!("address = \"{}\"", gws[0].laptops);
        assert!(text.contains(&first), "{text}");
        let text = text
            .replace(&first, &format!("address = \"{}\"", gws[n - 1].laptops))
            .lines()
            .filter(|l| !l.starts_with("fallback"))
            .collect::<Vec<_>>()
            .join("\n");
        let path = dir.join(format!("client-gw{n}.toml"));
        std::fs::write(&path, text).unwrap();
        path
    };
    let (echoed, _) = stdio_session(&client, &only(2), "gw2").await;
    assert_eq!(echoed, "gw2\n");

    // kill -9 gateway 1: the demo says so and goes on; the printed client
    // configuration moves to gateway 2, and gateway 3 serves too.
    let gw1_start = stat(gws[0].pid).unwrap().2;
    let killed = std::process::Command::new("kill")
        .args(["-KILL", &gws[0].pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    all_gone(&[(gws[0].pid, gw1_start)], "killed gateway 1").await;
    demo.wait_log(
        &format!("gateway 1 (pid {}) exited", gws[0].pid),
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    let (echoed, err) = stdio_session(&client, &client_toml, "こんにちは").await;
    assert_eq!(echoed, "こんにちは\n");
    assert!(err.contains(&gws[1].laptops.to_string()), "{err}");
    let (echoed, _) = stdio_session(&client, &only(3), "gw3").await;
    assert_eq!(echoed, "gw3\n");

    // SIGTERM (as Ctrl-C): the demo stops the gateways and PostgreSQL, and
    // exits cleanly; none of the processes it started is left.
    demo.terminate();
    let status = demo.wait_exit(Duration::from_secs(60)).await.unwrap();
    assert!(status.success(), "{status}: {}", demo.log_text());
    all_gone(&procs, "stopped").await;
    assert!(
        demo.log_text().contains("Stopping the demo"),
        "{}",
        demo.log_text()
    );
}

/// `kakehashi-demo --gateways 3` killed with SIGKILL: it can stop nothing,
/// and still its gateways and PostgreSQL (the server and every process of
/// it) end, each tied to it with PR_SET_PDEATHSIG.
#[tokio::test(flavor = "multi_thread")]
async fn demo_with_three_gateways_leaves_nothing_when_killed() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut demo, gws) = start_cluster_demo(tmp.path()).await;
    let procs = cluster_processes(demo.pid(), &gws);
    let _leftovers = KillOnDrop(procs.clone());
    let killed = std::process::Command::new("kill")
        .args(["-KILL", &demo.pid().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    demo.wait_exit(Duration::from_secs(5)).await.unwrap();
    all_gone(&procs, "was killed").await;
}
