//! Agent restart and gateway restart: the tunnel comes back by itself.

use std::time::Duration;

use kakehashi_pki::TerminalClass;
use kakehashi_tests::*;

#[tokio::test(flavor = "multi_thread")]
async fn agent_restart_and_gateway_restart() {
    for transport in ["quic", "tcp"] {
        let mut pki = Pki::new();
        let mut gw = start_gateway(&pki, GatewayOpts::default()).await;
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
        assert!(gw.proc.log_text().contains("Gateway stopped"));
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
