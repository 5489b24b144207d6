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
