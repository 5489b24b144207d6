//! A hostile laptop against the real agent's RDP filter (#16 item 8): the
//! client lists `rdpdr` 31 times in its MCS Connect Initial and leaves a
//! 16 MiB Device List Announce unfinished on each, from four sessions at
//! once. The desk is a stand-in RDP server (X.224 Confirm selecting TLS, TLS
//! with the desk's certificate, a canned Connect Response); the agent's
//! resident memory is read from `/proc`. Before the fix the reviewer measured
//! 981 MiB for one session and 4 GiB for four; now each session is refused at
//! its Connect Initial, and whatever a session makes the filter hold is
//! bounded by its budget.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use kakehashi_pki::TerminalClass;
use kakehashi_rdpfilter::{canned, SecurityProtocol};
use kakehashi_tests::*;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::rdp::{rdp_server_cert_named, wait_log_line};

const CHANNELS: usize = 31;
const ANNOUNCE: u32 = 16 << 20;
const CHUNK: usize = 1600;

async fn read_tpkt<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<Vec<u8>> {
    let mut frame = vec![0u8; 4];
    r.read_exact(&mut frame).await?;
    let len = usize::from(u16::from_be_bytes([frame[2], frame[3]]));
    frame.resize(len.max(4), 0);
    r.read_exact(&mut frame[4..]).await?;
    Ok(frame)
}

/// `field` (e.g. `VmHWM`) of `/proc/PID/status`, in KiB.
fn proc_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// A Send Data Request from the client (user 1012) on `channel`: a channel PDU
/// header (message length, flags) and `data` (PER length in two bytes).
fn send_data(channel: u16, total: u32, flags: u32, data: &[u8]) -> Vec<u8> {
    let mut user = total.to_le_bytes().to_vec();
    user.extend_from_slice(&flags.to_le_bytes());
    user.extend_from_slice(data);
    let mut mcs = vec![0x64];
    mcs.extend_from_slice(&(1012u16 - 1001).to_be_bytes());
    mcs.extend_from_slice(&channel.to_be_bytes());
    mcs.push(0x70);
    mcs.extend_from_slice(&(0x8000 | user.len() as u16).to_be_bytes());
    mcs.extend_from_slice(&user);
    let mut frame = vec![3, 0];
    frame.extend_from_slice(&((4 + 3 + mcs.len()) as u16).to_be_bytes());
    frame.extend_from_slice(&[2, 0xf0, 0x80]);
    frame.extend_from_slice(&mcs);
    frame
}

/// The stand-in desk: for each connection, Confirm TLS, TLS with the desk's
/// key, answer the Connect Initial with 31 channel ids, then read to the end.
async fn desk(listener: TcpListener, acceptor: tokio_rustls::TlsAcceptor) {
    loop {
        let Ok((mut tcp, _)) = listener.accept().await else {
            return;
        };
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            read_tpkt(&mut tcp).await?;
            tcp.write_all(&canned::connection_confirm(SecurityProtocol::SSL))
                .await?;
            let mut tls = acceptor.accept(tcp).await?;
            read_tpkt(&mut tls).await?;
            tls.write_all(&canned::connect_response(CHANNELS)).await?;
            let mut sink = vec![0u8; 64 * 1024];
            while tls.read(&mut sink).await? > 0 {}
            Ok::<_, std::io::Error>(())
        });
    }
}

/// One hostile session through the laptop's `kakehashi connect` listener;
/// returns the bytes of the attack the agent took before it ended the session.
async fn attack(listen: SocketAddr, connector: tokio_rustls::TlsConnector) -> usize {
    let mut tcp = TcpStream::connect(listen).await.unwrap();
    tcp.write_all(&canned::connection_request(SecurityProtocol::SSL))
        .await
        .unwrap();
    read_tpkt(&mut tcp).await.unwrap();
    let name = rustls::pki_types::ServerName::from(Ipv4Addr::LOCALHOST);
    let mut tls = connector.connect(name, tcp).await.unwrap();
    let (mut rd, mut wr) = tokio::io::split(&mut tls);
    let reader = async {
        let mut sink = vec![0u8; 64 * 1024];
        while matches!(rd.read(&mut sink).await, Ok(n) if n > 0) {}
    };
    let writer = async {
        let mut sent = 0usize;
        if wr
            .write_all(&canned::connect_initial(&["rdpdr"; CHANNELS]))
            .await
            .is_err()
        {
            return sent;
        }
        let body = vec![0x41u8; CHUNK];
        let mut head = vec![0x72, 0x44, 0x41, 0x44, 1, 0, 0, 0, 8, 0, 0, 0, 2, 0, 0, 0];
        head.resize(CHUNK, 0x41);
        let mut batch = Vec::with_capacity(64 * 1024);
        for ch in 0..CHANNELS as u16 {
            let mut off = 0usize;
            while off + CHUNK < ANNOUNCE as usize {
                let (flags, data) = if off == 0 { (1, &head) } else { (0, &body) };
                batch.extend_from_slice(&send_data(1004 + ch, ANNOUNCE, flags, data));
                off += CHUNK;
                if batch.len() >= 60 * 1024 {
                    if wr.write_all(&batch).await.is_err() {
                        return sent;
                    }
                    sent += batch.len();
                    batch.clear();
                }
            }
        }
        sent
    };
    let (sent, ()) = tokio::join!(writer, async {
        let _ = tokio::time::timeout(Duration::from_secs(120), reader).await;
    });
    sent
}

/// Run: `cargo nextest run -p kakehashi-tests --no-capture -E
/// 'test(rdp_filter_memory_under_a_hostile_laptop)'` (after `cargo build --bins`).
#[tokio::test(flavor = "multi_thread")]
async fn rdp_filter_memory_under_a_hostile_laptop() {
    let mut pki = Pki::new();
    let cert = rdp_server_cert_named(&mut pki, "hostile-desk");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let desk_addr = listener.local_addr().unwrap();
    let provider = kakehashi_transport::tls::provider();
    let server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            kakehashi_transport::tls::load_certs(&cert.cert).unwrap(),
            kakehashi_transport::tls::load_key(&cert.key).unwrap(),
        )
        .unwrap();
    tokio::spawn(desk(
        listener,
        tokio_rustls::TlsAcceptor::from(Arc::new(server)),
    ));
    let mut roots = rustls::RootCertStore::empty();
    for c in kakehashi_transport::tls::load_certs(&pki.ca.ca_cert_path()).unwrap() {
        roots.add(c).unwrap();
    }
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));

    let gw = start_gateway(
        &pki,
        GatewayOpts {
            controls: Some(r#"{ clipboard = "none", smartcard = true }"#.into()),
            ..Default::default()
        },
    )
    .await;
    let agent = start_agent_rdp(&mut pki, "DESK-HOSTILE", &gw.addrs, desk_addr, "tcp", &cert);
    wait_log_line(
        &gw.proc,
        &["Agent online", "DESK-HOSTILE"],
        Duration::from_secs(20),
    )
    .await
    .unwrap();
    let dev = pki.device("LAPTOP-HOSTILE", TerminalClass::Home);
    let cfg = client_config(&pki, &dev, gw.addrs.terminal_tcp, gw.addrs.terminal_quic);
    let laptop = start_client(&pki, &cfg, "DESK-HOSTILE", "tcp")
        .await
        .unwrap();
    let pid = agent.pid();
    let before = proc_kib(pid, "VmRSS");
    let sessions: Vec<_> = (0..4)
        .map(|_| tokio::spawn(attack(laptop.listen, connector.clone())))
        .collect();
    let mut sent = Vec::new();
    for s in sessions {
        sent.push(s.await.unwrap());
    }
    let peak = proc_kib(pid, "VmHWM");
    println!(
        "agent RSS under 4 sessions of the 31 x 16 MiB rdpdr attack: {before} KiB before, \
         peak {peak} KiB ({:.1} MiB); attack bytes the agent took per session: {sent:?}",
        peak as f64 / 1024.0
    );
    wait_log_line(
        &agent,
        &["Session refused by the RDP filter", "twice"],
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    // Bounded by the agent's filter budget (64 MiB) and its queues, far from 4 GiB.
    assert!(peak < 128 * 1024, "agent peak RSS {peak} KiB");
}
