//! Bad input on the gateway's listeners: the stream is closed with a reason,
//! other sessions carry on, and handshakes and caps are bounded.

use std::time::Duration;

use kakehashi_pki::TerminalClass;
use kakehashi_proto::io::read_frame;
use kakehashi_proto::message::Message;
use kakehashi_proto::{FrameKind, Refusal, ALPN_TERMINAL};
use kakehashi_tests::*;
use kakehashi_transport::stream::QuicStream;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// Send `bytes`, then expect a Refused frame with `code` and the end of the stream.
async fn expect_refusal<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    bytes: &[u8],
    close_after: bool,
    code: &str,
) {
    s.write_all(bytes).await.unwrap();
    s.flush().await.unwrap();
    if close_after {
        s.shutdown().await.unwrap();
    }
    let f = tokio::time::timeout(Duration::from_secs(10), read_frame(s))
        .await
        .expect("gateway answers")
        .expect("a frame");
    assert_eq!(f.kind, FrameKind::Refused);
    let r = Refusal::from_frame(&f).unwrap();
    assert_eq!(r.code, code, "{r}");
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest))
        .await
        .expect("stream closed");
    assert!(rest.is_empty());
}

fn cases() -> Vec<(&'static str, Vec<u8>, bool)> {
    let mut too_big = vec![1, 0x10];
    too_big.extend_from_slice(&(16 * 1024 + 1u32).to_be_bytes());
    let mut truncated = vec![1, 0x10, 0, 0, 0, 100];
    truncated.extend_from_slice(b"{\"desk\":");
    vec![
        (
            "garbage",
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            false,
        ),
        (
            "wrong version",
            vec![2, 0x10, 0, 0, 0, 2, b'{', b'}'],
            false,
        ),
        ("oversized", too_big, false),
        ("truncated", truncated, true),
        ("unknown kind", vec![1, 0x7f, 0, 0, 0, 0], false),
        (
            "wrong message",
            kakehashi_proto::frame::encode(FrameKind::Ticket, b"xx").unwrap(),
            false,
        ),
        (
            "bad json",
            kakehashi_proto::frame::encode(FrameKind::SessionRequest, b"{\"desk\": 5").unwrap(),
            false,
        ),
        (
            "bad desk id",
            kakehashi_proto::frame::encode(FrameKind::SessionRequest, b"{\"desk\":\"../../etc\"}")
                .unwrap(),
            false,
        ),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_frames_are_refused_and_others_keep_working() {
    let mut pki = Pki::new();
    let gw = start_gateway(&pki, GatewayOpts::default()).await;
    let desk = echo_server().await;
    let _agent = start_agent(&mut pki, "DESK-M", &gw.addrs, desk, "quic");
    let dev = pki.device("LAPTOP-M", TerminalClass::Home);
    let cfg = client_config(&pki, &dev, gw.addrs.terminal_tcp, gw.addrs.terminal_quic);
    let good = start_client(&pki, &cfg, "DESK-M", "quic").await.unwrap();
    wait_echo(good.listen, Duration::from_secs(20))
        .await
        .unwrap();
    // A session that stays open through all the bad input.
    let mut live = TcpStream::connect(good.listen).await.unwrap();
    live.write_all(b"first").await.unwrap();
    let mut b = [0u8; 5];
    live.read_exact(&mut b).await.unwrap();

    for (name, bytes, close) in cases() {
        eprintln!("tcp: {name}");
        let mut s = raw_tls(&pki, &dev, gw.addrs.terminal_tcp, ALPN_TERMINAL)
            .await
            .unwrap();
        expect_refusal(&mut s, &bytes, close, "protocol_error").await;
    }
    let (_ep, conn) = raw_quic(&pki, &dev, gw.addrs.terminal_quic, ALPN_TERMINAL)
        .await
        .unwrap();
    for (name, bytes, close) in cases() {
        eprintln!("quic: {name}");
        let mut s = QuicStream::new(conn.open_bi().await.unwrap());
        expect_refusal(&mut s, &bytes, close, "protocol_error").await;
    }
    // The same QUIC connection still carries a good session.
    let mut s = QuicStream::new(conn.open_bi().await.unwrap());
    s.write_all(
        &kakehashi_proto::message::SessionRequest {
            desk: "DESK-M".into(),
            token: None,
        }
        .to_frame()
        .unwrap(),
    )
    .await
    .unwrap();
    let f = read_frame(&mut s).await.unwrap();
    assert_eq!(f.kind, FrameKind::SessionAccepted);

    live.write_all(b"again").await.unwrap();
    live.read_exact(&mut b).await.unwrap();
    assert_eq!(&b, b"again");
    assert_eq!(
        roundtrip(good.listen, b"new session").await.unwrap(),
        b"new session"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn silent_peers_time_out_and_the_connection_cap_holds() {
    let mut pki = Pki::new();
    let gw = start_gateway(
        &pki,
        GatewayOpts {
            terminal_max_connections: Some(3),
            ..Default::default()
        },
    )
    .await;
    // Three connections that never start TLS fill the cap…
    let mut idle = Vec::new();
    for _ in 0..3 {
        idle.push(TcpStream::connect(gw.addrs.terminal_tcp).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // …so a fourth is closed at once, before any handshake.
    let mut fourth = TcpStream::connect(gw.addrs.terminal_tcp).await.unwrap();
    let mut buf = [0u8; 1];
    let n = tokio::time::timeout(Duration::from_secs(2), fourth.read(&mut buf))
        .await
        .expect("closed at once");
    assert!(matches!(n, Ok(0) | Err(_)));
    gw.proc
        .wait_log("Connection cap reached", Duration::from_secs(2))
        .await
        .unwrap();
    // The silent ones are dropped after the handshake timeout (5 s in tests).
    for s in &mut idle {
        let n = tokio::time::timeout(Duration::from_secs(15), s.read(&mut buf))
            .await
            .expect("handshake timeout closes");
        assert!(matches!(n, Ok(0) | Err(_)));
    }
    gw.proc
        .wait_log("TLS handshake timed out", Duration::from_secs(2))
        .await
        .unwrap();
    // Then a real laptop gets in.
    let desk = echo_server().await;
    let _agent = start_agent(&mut pki, "DESK-T", &gw.addrs, desk, "tcp");
    let dev = pki.device("LAPTOP-T", TerminalClass::Home);
    let cfg = client_config(&pki, &dev, gw.addrs.terminal_tcp, gw.addrs.terminal_quic);
    let c = start_client(&pki, &cfg, "DESK-T", "tcp").await.unwrap();
    wait_echo(c.listen, Duration::from_secs(20)).await.unwrap();
}
