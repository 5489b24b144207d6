//! `kakehashi-loadgen` against a gateway it did not start (issue
//! Resilience, item 7): `remote-config` writes the directory a gateway on
//! another machine runs from; here that gateway runs on loopback under
//! another name, and `sessions --remote` drives it, reading the gateway's
//! CPU and memory from its metrics alone.

use std::time::Duration;

use kakehashi_tests::{bin, Proc};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_load_generator_drives_a_gateway_it_did_not_start() {
    let tmp = tempfile::tempdir().unwrap();
    let (pki, out) = (tmp.path().join("pki"), tmp.path().join("remote"));
    let (laptops, agents, metrics) = (free_port(), free_port(), free_port());
    let loadgen = bin("kakehashi-loadgen");
    let status = tokio::process::Command::new(&loadgen)
        .args(["--pki-dir", pki.to_str().unwrap(), "remote-config"])
        .args([
            "--gateway-name",
            "gw.bench.test",
            "--out",
            out.to_str().unwrap(),
        ])
        .args(["--metrics-listen", &format!("127.0.0.1:{metrics}")])
        .args(["--laptop-port", &laptops.to_string()])
        .args(["--agent-port", &agents.to_string()])
        .args(["--max-sessions", "100"])
        .status()
        .await
        .unwrap();
    assert!(status.success());
    // The gateway reads its files relative to its configuration, and holds
    // a certificate for its own name, not localhost.
    let config = out.join("gateway.toml");
    let mut gw = Proc::spawn(
        &bin("kakehashi-gateway"),
        &["run", "--config", config.to_str().unwrap()],
        tmp.path().join("gateway.log"),
        &[("RUST_LOG", "info")],
    );
    gw.wait_line("listening admin ", Duration::from_secs(20))
        .await
        .unwrap();
    for transport in ["tcp", "quic"] {
        let run = tokio::process::Command::new(&loadgen)
            .args(["--pki-dir", pki.to_str().unwrap(), "sessions"])
            .args(["--remote", "gw.bench.test", "--remote-address", "127.0.0.1"])
            .args(["--remote-laptop-port", &laptops.to_string()])
            .args(["--remote-agent-port", &agents.to_string()])
            .args([
                "--remote-metrics",
                &format!("http://127.0.0.1:{metrics}/metrics"),
            ])
            .args([
                "--transport",
                transport,
                "--sessions",
                "20",
                "--duration",
                "3",
            ])
            .output()
            .await
            .unwrap();
        let err = String::from_utf8_lossy(&run.stderr);
        assert!(run.status.success(), "{transport}: {err}");
        let v: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
        assert_eq!(v["gateway"], "remote gw.bench.test", "{v}");
        assert_eq!(v["sessions_opened"], 20, "{transport}: {v}\n{err}");
        assert_eq!(v["errors_total"], 0, "{transport}: {v}\n{err}");
        // The gateway's figures, from its metrics: it used CPU to relay,
        // and holds memory.
        assert!(v["gateway_steady"]["samples"].as_u64().unwrap() >= 1, "{v}");
        assert!(
            v["gateway_steady"]["cpu_mean_pct"].as_f64().unwrap() > 0.0,
            "{v}"
        );
        assert!(v["gateway_rss_kib"]["end"].as_u64().unwrap() > 1024, "{v}");
        assert!(v["steady_answers_per_sec"].as_f64().unwrap() > 0.0, "{v}");
    }
    // Without the metrics, a remote run says what is missing.
    let run = tokio::process::Command::new(&loadgen)
        .args(["--pki-dir", pki.to_str().unwrap(), "sessions"])
        .args(["--remote", "gw.bench.test", "--remote-address", "127.0.0.1"])
        .output()
        .await
        .unwrap();
    assert!(!run.status.success());
    assert!(
        String::from_utf8_lossy(&run.stderr).contains("--remote-metrics"),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    gw.terminate();
}
