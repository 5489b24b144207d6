//! Agent restart and gateway restart: the tunnel comes back by itself.

use std::time::Duration;

use kakehashi_pki::TerminalClass;
use kakehashi_tests::*;

#[tokio::test(flavor = "multi_thread")]
async fn agent_restart_and_gateway_restart() {
    for transport in ["quic", "tcp"] {
        let mut pki = Pki::new();
        // One agent at one a second: the restart notice asks it to spread
        // its return over 1 s.
        let mut gw = start_gateway(
            &pki,
            GatewayOpts {
                limits: "agent_return_rate = 1\n".into(),
                ..Default::default()
            },
        )
        .await;
        let addrs = gw.addrs;
        let desk = echo_server().await;
        let files = pki.agent("DESK-RS");
        let mut agent = start_agent_with(&pki, &files, &addrs, desk, transport);
        let dev = pki.device("LAPTOP-RS", TerminalClass::Home);
        let cfg = client_config(&pki, &dev, addrs.terminal_tcp, addrs.terminal_quic);
        let client = start_client(&pki, &cfg, "DESK-RS", transport)
            .await
            .unwrap();
        wait_echo(client.listen, Duration::from_secs(20))
            .await
            .unwrap();

        // Agent restart.
        agent.kill().await;
        let _agent2 = start_agent_with(&pki, &files, &addrs, desk, transport);
        wait_echo(client.listen, Duration::from_secs(20))
            .await
            .unwrap();

        // Gateway restart on the same ports (SIGTERM: graceful stop).
        gw.proc.terminate();
        let status = gw.proc.wait_exit(Duration::from_secs(10)).await.unwrap();
        assert!(
            status.success(),
            "graceful stop exits 0: {status:?}\n{}",
            gw.proc.log_text()
        );
        let told = gw.proc.plain_log();
        assert!(told.contains("Gateway stopped"));
        // Every task ends with the stop: none holds it for the linger.
        assert!(!told.contains("Tasks still running"), "{told}");
        assert!(
            told.lines()
                .any(|l| l.contains("Told the agents this gateway is restarting")
                    && l.contains("return_within_ms=1000")),
            "{told}"
        );
        // The agent leaves it alone 5 s plus a moment drawn in that second.
        let needle = "the gateway is restarting";
        crate::e2e::rdp::wait_log_line(&_agent2, &[needle], Duration::from_secs(10))
            .await
            .expect("the agent did not hear the restart notice");
        let log = _agent2.plain_log();
        let line = log.lines().find(|l| l.contains(needle)).unwrap();
        assert!(line.contains("return_within_ms=1000"), "{line}");
        let pause = log_field(line, "pause_ms").expect("pause_ms");
        assert!((5000..6000).contains(&pause), "{line}");
        let gw2 = start_gateway(
            &pki,
            GatewayOpts {
                addrs: Some(addrs),
                ..Default::default()
            },
        )
        .await;
        // The agent reconnects with backoff; the client redials on its next session.
        wait_echo(client.listen, Duration::from_secs(30))
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "{transport}: {e:#}\nagent log:\n{}\ngateway log:\n{}",
                    _agent2.log_text(),
                    gw2.proc.log_text()
                )
            });
        // The agent came back with an abbreviated handshake: the new gateway
        // opened a ticket the old one issued (keys kept on disk, 0600).
        let (_, text) = http_get(gw2.addrs.admin, "/metrics").await.unwrap();
        let resumed = metric(&text, "kakehashi_tls_tickets_total{result=\"resumed\"}");
        assert!(resumed >= 1.0, "{transport}: no resumed handshake\n{text}");
        let keys = pki
            .ca
            .ticket_key_path()
            .with_file_name("tls-resumption.keys");
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&keys).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600, "{}", keys.display());
    }
}

/// The number after `name=` in a log line.
fn log_field(line: &str, name: &str) -> Option<u64> {
    let at = line.find(&format!("{name}="))? + name.len() + 1;
    let digits: String = line[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// An idle agent's QUIC tunnel stays up on the shipped keep-alive (1 s,
/// idle timeout 4 s) for more than twice the idle timeout. A gateway that
/// stopped pinging once saw this tunnel time out every 4 s (a build whose
/// failure later runs of the same change did not reproduce:
/// benches/RESULTS.md, "P7 per core"); this guards any change to who pings.
#[tokio::test(flavor = "multi_thread")]
async fn an_idle_quic_tunnel_stays_up() {
    let mut pki = Pki::new();
    let gw = start_gateway(
        &pki,
        GatewayOpts {
            shipped_keepalive: true,
            ..Default::default()
        },
    )
    .await;
    let desk = echo_server().await;
    let files = pki.agent("DESK-IDLE");
    let agent = start_agent_with(&pki, &files, &gw.addrs, desk, "quic");
    agent
        .wait_log("Tunnel up", Duration::from_secs(20))
        .await
        .unwrap();
    tokio::time::sleep(2 * kakehashi_transport::IDLE_TIMEOUT + Duration::from_secs(1)).await;
    let log = agent.plain_log();
    let ups = log.lines().filter(|l| l.contains("Tunnel up")).count();
    assert_eq!(ups, 1, "the idle tunnel went down:\n{log}");
    assert!(!log.contains("Tunnel down"), "{log}");
}
