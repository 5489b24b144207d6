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
    let out = tokio::process::Command::new("sh")
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
    let out = tokio::process::Command::new(bin("kakehashi-gateway"))
        .args(["demo", "--dir", "x"])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("kakehashi-demo"), "{err}");
}
