//! Bytes through client → gateway → agent → desk, on both transports.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use kakehashi_pki::TerminalClass;
use kakehashi_tests::*;
use rand::{RngCore as _, SeedableRng as _};
use ring::digest::{Context, SHA256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

async fn echo_through(transport: &str) {
    let mut pki = Pki::new();
    let gw = start_gateway(&pki, GatewayOpts::default()).await;
    let desk = echo_server().await;
    let _agent = start_agent(&mut pki, "DESK-1", &gw.addrs, desk, transport);
    let dev = pki.device("LAPTOP-1", TerminalClass::Home);
    let cfg = client_config(&pki, &dev, gw.addrs.terminal_tcp, gw.addrs.terminal_quic);
    let client = start_client(&pki, &cfg, "DESK-1", transport).await.unwrap();
    assert_eq!(client.transport, transport);
    wait_echo(client.listen, Duration::from_secs(20))
        .await
        .unwrap();
    let msg = b"\xe6\x9e\xb6\xe3\x81\x91\xe6\xa9\x8b kakehashi echo";
    assert_eq!(roundtrip(client.listen, msg).await.unwrap(), msg);
    // The gateway logged the session with its end.
    gw.proc
        .wait_log("Session ended", Duration::from_secs(5))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn echo_over_quic() {
    echo_through("quic").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn echo_over_tcp() {
    echo_through("tcp").await;
}

const BULK: usize = 64 * 1024 * 1024;

/// Write `len` seeded random bytes and return their SHA-256.
async fn send_random<W: AsyncWriteExt + Unpin>(w: &mut W, seed: u64, len: usize) -> Vec<u8> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut h = Context::new(&SHA256);
    let mut buf = vec![0u8; 64 * 1024];
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len());
        rng.fill_bytes(&mut buf[..n]);
        h.update(&buf[..n]);
        w.write_all(&buf[..n]).await.unwrap();
        left -= n;
    }
    w.shutdown().await.unwrap();
    h.finish().as_ref().to_vec()
}

/// Read to the end and return (length, SHA-256).
async fn hash_all<R: AsyncReadExt + Unpin>(r: &mut R) -> (usize, Vec<u8>) {
    let mut h = Context::new(&SHA256);
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0;
    loop {
        let n = r.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        total += n;
    }
    (total, h.finish().as_ref().to_vec())
}

/// A desk that sends its own 64 MiB while hashing what it receives.
async fn bulk_desk() -> (
    SocketAddr,
    tokio::sync::oneshot::Receiver<((usize, Vec<u8>), Vec<u8>)>,
) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        // The client's first attempts may be probes; the bulk session is the one that sends data.
        loop {
            let (s, _) = l.accept().await.unwrap();
            let (mut r, mut w) = s.into_split();
            let mut first = [0u8; 1];
            if r.read_exact(&mut first).await.is_err() {
                continue;
            }
            let sender = tokio::spawn(async move { send_random(&mut w, 2, BULK).await });
            let (n, mut h) = {
                // Include the first byte in the hash.
                let mut ctx = Context::new(&SHA256);
                ctx.update(&first);
                let mut buf = vec![0u8; 64 * 1024];
                let mut total = 1;
                loop {
                    let n = r.read(&mut buf).await.unwrap();
                    if n == 0 {
                        break;
                    }
                    ctx.update(&buf[..n]);
                    total += n;
                }
                (total, ctx.finish().as_ref().to_vec())
            };
            let sent = sender.await.unwrap();
            let _ = tx.send(((n, std::mem::take(&mut h)), sent));
            return;
        }
    });
    (addr, rx)
}

async fn bulk_through(transport: &str) {
    let mut pki = Pki::new();
    let gw = start_gateway(&pki, GatewayOpts::default()).await;
    let (desk, report) = bulk_desk().await;
    let _agent = start_agent(&mut pki, "DESK-BULK", &gw.addrs, desk, transport);
    let dev = pki.device("LAPTOP-BULK", TerminalClass::Home);
    let cfg = client_config(&pki, &dev, gw.addrs.terminal_tcp, gw.addrs.terminal_quic);
    let client = start_client(&pki, &cfg, "DESK-BULK", transport)
        .await
        .unwrap();
    // Wait until the desk is reachable: a session that closes without sending
    // data is skipped by the bulk desk.
    let start = Instant::now();
    let s = loop {
        let mut s = TcpStream::connect(client.listen).await.unwrap();
        let mut b = [0u8; 1];
        // Desk online: the desk starts sending at once after our first byte.
        s.write_all(&[0x55]).await.unwrap();
        match tokio::time::timeout(Duration::from_secs(5), s.peek(&mut b)).await {
            Ok(Ok(1)) => break s,
            _ => {
                assert!(
                    start.elapsed() < Duration::from_secs(20),
                    "desk never came online"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    let (mut r, mut w) = s.into_split();
    let sender = tokio::spawn(async move {
        // First byte 0x55 already sent; send the rest and hash all of it.
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let mut h = Context::new(&SHA256);
        h.update(&[0x55]);
        let mut buf = vec![0u8; 64 * 1024];
        let mut left = BULK - 1;
        while left > 0 {
            let n = left.min(buf.len());
            rng.fill_bytes(&mut buf[..n]);
            h.update(&buf[..n]);
            w.write_all(&buf[..n]).await.unwrap();
            left -= n;
        }
        w.shutdown().await.unwrap();
        h.finish().as_ref().to_vec()
    });
    let (got_len, got_hash) = hash_all(&mut r).await;
    let sent_hash = sender.await.unwrap();
    let ((desk_len, desk_hash), desk_sent) = tokio::time::timeout(Duration::from_secs(60), report)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got_len, BULK, "laptop received everything the desk sent");
    assert_eq!(desk_len, BULK, "desk received everything the laptop sent");
    assert_eq!(got_hash, desk_sent, "desk → laptop bytes intact");
    assert_eq!(desk_hash, sent_hash, "laptop → desk bytes intact");
}

#[tokio::test(flavor = "multi_thread")]
async fn bulk_64_mib_each_way_quic() {
    bulk_through("quic").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bulk_64_mib_each_way_tcp() {
    bulk_through("tcp").await;
}

async fn concurrent(transport: &str, n: usize) {
    let mut pki = Pki::new();
    // One laptop with all `n` sessions live at once: far above a real
    // laptop's default allowance of QUIC streams. Streams of ended sessions
    // (probes) come back in steps of 1/8 of the limit: leave room for them.
    let gw = start_gateway(
        &pki,
        GatewayOpts {
            limits: format!("terminal_quic_streams = {}\n", 2 * n + 64),
            ..Default::default()
        },
    )
    .await;
    let desk = echo_server().await;
    let _agent = start_agent(&mut pki, "DESK-MANY", &gw.addrs, desk, transport);
    let dev = pki.device("LAPTOP-MANY", TerminalClass::Satellite);
    let cfg = client_config(&pki, &dev, gw.addrs.terminal_tcp, gw.addrs.terminal_quic);
    let client = start_client(&pki, &cfg, "DESK-MANY", transport)
        .await
        .unwrap();
    wait_echo(client.listen, Duration::from_secs(20))
        .await
        .unwrap();
    // Open all sessions first, then exchange on each: they are live at once.
    let mut streams = Vec::new();
    for _ in 0..n {
        streams.push(TcpStream::connect(client.listen).await.unwrap());
    }
    let mut tasks = tokio::task::JoinSet::new();
    for (i, mut s) in streams.into_iter().enumerate() {
        tasks.spawn(async move {
            let msg = format!("session {i} says hello").repeat(50);
            s.write_all(msg.as_bytes()).await.unwrap();
            let mut back = vec![0u8; msg.len()];
            tokio::time::timeout(Duration::from_secs(60), s.read_exact(&mut back))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(back, msg.as_bytes());
            s.shutdown().await.unwrap();
            let mut rest = Vec::new();
            s.read_to_end(&mut rest).await.unwrap();
            assert!(rest.is_empty());
        });
    }
    let mut done = 0;
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
        done += 1;
    }
    assert_eq!(done, n);
}

#[tokio::test(flavor = "multi_thread")]
async fn two_hundred_concurrent_sessions_quic() {
    concurrent("quic", 200).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_hundred_concurrent_sessions_tcp() {
    concurrent("tcp", 200).await;
}

/// A laptop may have only a few QUIC streams open at once
/// (`terminal_quic_streams`, 16 by default), and quinn hands the streams of
/// ended sessions back in steps of 1/8 of the limit: with a dozen sessions
/// live, sessions that come and go must still get a stream every time.
#[tokio::test(flavor = "multi_thread")]
async fn ended_sessions_give_their_quic_stream_back() {
    let mut pki = Pki::new();
    let gw = start_gateway(&pki, GatewayOpts::default()).await;
    let desk = echo_server().await;
    let _agent = start_agent(&mut pki, "DESK-SEQ", &gw.addrs, desk, "quic");
    let dev = pki.device("LAPTOP-SEQ", TerminalClass::Home);
    let cfg = client_config(&pki, &dev, gw.addrs.terminal_tcp, gw.addrs.terminal_quic);
    let client = start_client(&pki, &cfg, "DESK-SEQ", "quic").await.unwrap();
    wait_echo(client.listen, Duration::from_secs(20))
        .await
        .unwrap();
    let mut live = Vec::new();
    for _ in 0..12 {
        let mut s = TcpStream::connect(client.listen).await.unwrap();
        s.write_all(b"x").await.unwrap();
        let mut b = [0u8; 1];
        tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut b))
            .await
            .expect("one of the first 12 sessions did not open")
            .unwrap();
        live.push(s);
    }
    for i in 0..40 {
        let msg = format!("session {i}");
        let back = tokio::time::timeout(
            Duration::from_secs(10),
            roundtrip(client.listen, msg.as_bytes()),
        )
        .await
        .unwrap_or_else(|_| panic!("session {i} (12 others live) did not get a stream"))
        .unwrap();
        assert_eq!(back, msg.as_bytes());
    }
    drop(live);
}

/// A laptop at the gateway's stream limit (`[relay.limits] terminal_quic_streams`):
/// one session too many is refused by the client with a clear sentence
/// instead of hanging, the sessions already open keep working, and once they
/// end a new one opens again.
#[tokio::test(flavor = "multi_thread")]
async fn a_session_beyond_the_stream_limit_fails_clearly() {
    let mut pki = Pki::new();
    let gw = start_gateway(
        &pki,
        GatewayOpts {
            limits: "terminal_quic_streams = 4\n".into(),
            ..Default::default()
        },
    )
    .await;
    let desk = echo_server().await;
    let _agent = start_agent(&mut pki, "DESK-LIM", &gw.addrs, desk, "quic");
    let dev = pki.device("LAPTOP-LIM", TerminalClass::Home);
    let cfg = client_config(&pki, &dev, gw.addrs.terminal_tcp, gw.addrs.terminal_quic);
    let client = start_client(&pki, &cfg, "DESK-LIM", "quic").await.unwrap();
    wait_echo(client.listen, Duration::from_secs(20))
        .await
        .unwrap();
    // Open and hold sessions until one is refused.
    let mut live = Vec::new();
    loop {
        assert!(
            live.len() <= 4,
            "more than 4 sessions on a 4-stream connection"
        );
        let mut s = TcpStream::connect(client.listen).await.unwrap();
        s.write_all(b"x").await.unwrap();
        let mut b = [0u8; 1];
        match tokio::time::timeout(Duration::from_secs(30), s.read(&mut b)).await {
            Ok(Ok(1)) => live.push(s),
            Ok(_) => break,
            Err(_) => panic!("a session beyond the limit hung for 30 s"),
        }
    }
    assert!(!live.is_empty(), "no session opened at all");
    super::rdp::wait_log_line(
        &client.proc,
        &["as many sessions open as the gateway allows"],
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    // The sessions already open still carry data.
    for s in live.iter_mut() {
        s.write_all(b"y").await.unwrap();
        let mut b = [0u8; 1];
        tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut b))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&b, b"y");
    }
    drop(live);
    wait_echo(client.listen, Duration::from_secs(20))
        .await
        .unwrap();
}

/// UDP to the gateway is black-holed: `auto` must fall back to TCP within 3 s.
#[tokio::test(flavor = "multi_thread")]
async fn auto_falls_back_to_tcp_when_udp_is_blocked() {
    let mut pki = Pki::new();
    let gw = start_gateway(&pki, GatewayOpts::default()).await;
    let desk = echo_server().await;
    let _agent = start_agent(&mut pki, "DESK-FB", &gw.addrs, desk, "auto");
    let dev = pki.device("LAPTOP-FB", TerminalClass::Mobile);
    // A UDP socket that swallows every datagram: what a firewall dropping UDP looks like.
    let hole = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let cfg = client_config(
        &pki,
        &dev,
        gw.addrs.terminal_tcp,
        hole.local_addr().unwrap(),
    );
    let started = Instant::now();
    let client = start_client(&pki, &cfg, "DESK-FB", "auto").await.unwrap();
    let took = started.elapsed();
    assert!(
        client.transport.starts_with("tcp"),
        "transport line: {}",
        client.transport
    );
    assert!(took < Duration::from_secs(3), "fallback took {took:?}");
    wait_echo(client.listen, Duration::from_secs(20))
        .await
        .unwrap();
    drop(hole);
}
