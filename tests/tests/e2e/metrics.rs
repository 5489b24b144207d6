//! `/metrics` on the admin listener reports exactly the sessions that are
//! open, and counts end reasons and denials after they close.

use std::time::Duration;

use kakehashi_pki::TerminalClass;
use kakehashi_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn scrape(gw: &GatewayProc) -> String {
    let (status, body) = http_get(gw.addrs.admin, "/metrics").await.unwrap();
    assert_eq!(status, 200);
    body
}

async fn open_sessions(addr: std::net::SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut v = Vec::new();
    for _ in 0..n {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"x").await.unwrap();
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await.unwrap();
        v.push(s);
    }
    v
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_match_the_open_sessions() {
    let mut pki = Pki::new();
    let gw = start_gateway(
        &pki,
        GatewayOpts {
            max_sessions: Some(100),
            ..Default::default()
        },
    )
    .await;
    let desk = echo_server().await;
    let _a = start_agent(&mut pki, "DESK-MET", &gw.addrs, desk, "quic");
    let home = pki.device("LAPTOP-HOME", TerminalClass::Home);
    let sat = pki.device("LAPTOP-SAT", TerminalClass::Satellite);
    let cfg_home = client_config(&pki, &home, gw.addrs.terminal_tcp, gw.addrs.terminal_quic);
    let cfg_sat = client_config(&pki, &sat, gw.addrs.terminal_tcp, gw.addrs.terminal_quic);
    let c_home = start_client(&pki, &cfg_home, "DESK-MET", "quic")
        .await
        .unwrap();
    let c_sat = start_client(&pki, &cfg_sat, "DESK-MET", "tcp")
        .await
        .unwrap();
    wait_echo(c_home.listen, Duration::from_secs(20))
        .await
        .unwrap();
    wait_echo(c_sat.listen, Duration::from_secs(20))
        .await
        .unwrap();
    let base = scrape(&gw).await;
    let closed0 = metric(&base, "kakehashi_sessions_ended_total{reason=\"closed\"}");

    let home_series = "kakehashi_sessions_active{class=\"home\",dept=\"unknown\",level=\"unknown\",transport=\"quic\"}";
    let sat_series = "kakehashi_sessions_active{class=\"satellite\",dept=\"unknown\",level=\"unknown\",transport=\"tcp\"}";
    let a = open_sessions(c_home.listen, 3).await;
    let b = open_sessions(c_sat.listen, 2).await;
    let text = scrape(&gw).await;
    assert_eq!(metric(&text, home_series), 3.0, "{text}");
    assert_eq!(metric(&text, sat_series), 2.0, "{text}");
    assert_eq!(
        metric(&text, "kakehashi_agents_online{transport=\"quic\"}"),
        1.0
    );
    assert_eq!(metric(&text, "kakehashi_sessions_max"), 100.0);
    assert!(
        (metric(&text, "kakehashi_capacity_used_ratio") - 0.05).abs() < 1e-9,
        "{text}"
    );
    assert!(
        metric(
            &text,
            "kakehashi_certificate_expiry_timestamp_seconds{cert=\"gateway\"}"
        ) > 1.7e9
    );

    // Close them: the gauges return, the ends are counted with their reason.
    drop(a);
    drop(b);
    let mut text = String::new();
    for _ in 0..100 {
        text = scrape(&gw).await;
        if metric(&text, home_series) == 0.0 && metric(&text, sat_series) == 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(metric(&text, home_series), 0.0, "{text}");
    assert_eq!(metric(&text, sat_series), 0.0, "{text}");
    let ended = metric(&text, "kakehashi_sessions_ended_total{reason=\"closed\"}")
        + metric(
            &text,
            "kakehashi_sessions_ended_total{reason=\"peer_error\"}",
        );
    assert!(ended - closed0 >= 5.0, "{text}");
    assert!(metric(&text, "kakehashi_bytes_total{direction=\"up\"}") >= 5.0);

    // A denial is counted by its reason.
    let c_off = start_client(&pki, &cfg_home, "DESK-NOWHERE", "quic")
        .await
        .unwrap();
    assert!(refused(c_off.listen).await);
    let text = scrape(&gw).await;
    assert_eq!(
        metric(&text, "kakehashi_denials_total{reason=\"desk_offline\"}"),
        1.0,
        "{text}"
    );
    // Every family carries the prefix; health check answers.
    assert!(text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .all(|l| l.starts_with("kakehashi_")));
    assert_eq!(http_get(gw.addrs.admin, "/healthz").await.unwrap().0, 200);
}
