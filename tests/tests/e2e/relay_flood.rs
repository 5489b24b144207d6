//! The laptop listeners under a flood of stalled handshakes (issue 16
//! item 1): one address holds at most `handshakes_per_source` of them, so it
//! cannot take the connection cap from authenticated laptops; with many
//! handshakes in progress QUIC peers prove their address with a Retry first.

use std::time::Duration;

use kakehashi_pki::TerminalClass;
use kakehashi_tests::*;

#[tokio::test(flavor = "multi_thread")]
async fn stalled_handshakes_from_one_address_leave_room_for_laptops() {
    let mut pki = Pki::new();
    let gw = start_gateway(
        &pki,
        GatewayOpts {
            terminal_max_connections: Some(40),
            // Every QUIC peer proves its address first.
            terminals_extra: "handshakes_per_source = 10\nquic_retry_above = 0\n".into(),
            ..Default::default()
        },
    )
    .await;
    // 60 silent TCP connections from one address: before, they took all 40
    // places (the cap is shared by handshakes and laptops) for the whole
    // handshake time-out and the laptop below was refused.
    let mut silent = Vec::new();
    for _ in 0..60 {
        silent.push(
            connect_from([127, 0, 0, 2], gw.addrs.terminal_tcp)
                .await
                .unwrap(),
        );
    }
    let mut closed = 0;
    for s in &mut silent {
        if closed_within(s, Duration::from_millis(200)).await {
            closed += 1;
        }
    }
    assert_eq!(closed, 50, "all but handshakes_per_source closed at once");

    let desk = echo_server().await;
    let _agent = start_agent(&mut pki, "DESK-F", &gw.addrs, desk, "quic");
    let dev = pki.device("LAPTOP-F", TerminalClass::Home);
    let cfg = client_config(&pki, &dev, gw.addrs.terminal_tcp, gw.addrs.terminal_quic);
    for transport in ["tcp", "quic"] {
        let client = start_client(&pki, &cfg, "DESK-F", transport).await.unwrap();
        assert_eq!(client.transport, transport);
        wait_echo(client.listen, Duration::from_secs(20))
            .await
            .unwrap_or_else(|e| panic!("{transport}: {e:#}\n{}", client.proc.log_text()));
    }
    let (_, metrics) = http_get(gw.addrs.admin, "/metrics").await.unwrap();
    let per_source = metric(
        &metrics,
        r#"kakehashi_handshakes_limited_total{kind="per_source",role="terminal"}"#,
    );
    let retries = metric(
        &metrics,
        r#"kakehashi_handshakes_limited_total{kind="quic_retry",role="terminal"}"#,
    );
    assert_eq!(per_source, 50.0, "{metrics}");
    assert!(
        retries >= 1.0,
        "the QUIC laptop answered a Retry: {retries}"
    );
    drop(silent);
}
