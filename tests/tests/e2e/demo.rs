//! `kakehashi-gateway demo` works as its printed instructions say.

use std::time::Duration;

use kakehashi_tests::*;

#[tokio::test(flavor = "multi_thread")]
async fn demo_works_as_printed() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("demo");
    let mut demo = Proc::spawn(
        &bin("kakehashi-gateway"),
        &["demo", "--dir", dir.to_str().unwrap()],
        tmp.path().join("demo.log"),
        &[],
    );
    demo.wait_line("Kakehashi demo is running", Duration::from_secs(30))
        .await
        .unwrap();
    let metrics = demo
        .wait_line("  metrics       ", Duration::from_secs(5))
        .await
        .unwrap();
    let metrics_addr: std::net::SocketAddr = metrics
        .trim_start_matches("http://")
        .trim_end_matches("/metrics")
        .parse()
        .unwrap();
    let (status, body) = http_get(metrics_addr, "/metrics").await.unwrap();
    assert_eq!(status, 200);
    assert!(
        body.contains("kakehashi_agents_online{transport=\"quic\"} 1"),
        "{body}"
    );
    // Log in as printed: a real WebAuthn ceremony with the demo's software authenticator.
    demo.wait_line("First log in", Duration::from_secs(5))
        .await
        .unwrap();
    let login = demo.wait_line("  ", Duration::from_secs(5)).await.unwrap();
    assert!(login.ends_with(" login"), "{login}");
    let out = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(&login)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("logged in: demo-user"));
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
    let mut client = Proc::spawn(
        std::path::Path::new("sh"),
        &["-c", &format!("exec {connect}")], // exec: killing the shell kills the client
        tmp.path().join("client.log"),
        &[],
    );
    client
        .wait_line("listening on 127.0.0.1:", Duration::from_secs(20))
        .await
        .unwrap();
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
