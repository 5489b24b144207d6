//! The real agent against a hand-driven gateway: forged, expired, replayed
//! and wrong-desk tickets are refused with their reason; a valid one works,
//! and the agent keeps serving after each refusal.

use std::sync::Arc;
use std::time::Duration;

use kakehashi_proto::io::{read_frame, write_message, write_raw};
use kakehashi_proto::message::{
    AgentHello, AgentWelcome, DataChannelHello, Message, OpenDataChannel,
};
use kakehashi_proto::ticket::{TicketClaims, TICKET_LIFETIME_SECS, TICKET_VERSION};
use kakehashi_proto::{frame, Controls, FrameKind, Limits, Refusal, TicketSigner, ALPN_AGENT};
use kakehashi_tests::*;
use kakehashi_transport::tls::{self, ReloadingClientVerifier, TlsFiles};
use kakehashi_transport::unix_now;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

type Tls = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;

fn claims(desk: &str, id: &str, issued: u64) -> TicketClaims {
    TicketClaims {
        v: TICKET_VERSION,
        session_id: id.into(),
        desk: desk.into(),
        device: "LAPTOP-T".into(),
        class: "home".into(),
        user: None,
        gateway: "fake".into(),
        controls: Controls::default(),
        limits: Limits::default(),
        issued_at: issued,
        expires_at: issued + TICKET_LIFETIME_SECS,
    }
}

async fn accept(l: &TcpListener, acc: &TlsAcceptor) -> Tls {
    let (tcp, _) = tokio::time::timeout(Duration::from_secs(20), l.accept())
        .await
        .expect("agent dials")
        .unwrap();
    acc.accept(tcp).await.unwrap()
}

/// Ask the agent for a data connection and hand it `ticket_frame`; return its answer.
async fn offer(
    ctl: &mut Tls,
    l: &TcpListener,
    acc: &TlsAcceptor,
    ticket_frame: &[u8],
) -> (Tls, Result<(), String>) {
    let channel = kakehashi_transport::random_hex(8);
    write_message(
        ctl,
        &OpenDataChannel {
            channel: channel.clone(),
        },
    )
    .await
    .unwrap();
    let mut data = accept(l, acc).await;
    let hello = DataChannelHello::from_frame(&read_frame(&mut data).await.unwrap()).unwrap();
    assert_eq!(hello.channel, channel);
    write_raw(&mut data, ticket_frame).await.unwrap();
    let f = tokio::time::timeout(Duration::from_secs(10), read_frame(&mut data))
        .await
        .unwrap()
        .unwrap();
    let answer = match f.kind {
        FrameKind::TicketAccepted => Ok(()),
        FrameKind::Refused => Err(Refusal::from_frame(&f).unwrap().code),
        other => panic!("unexpected {other:?}"),
    };
    (data, answer)
}

#[tokio::test(flavor = "multi_thread")]
async fn agent_checks_every_ticket() {
    let mut pki = Pki::new();
    let g = pki.gateway_cert();
    let m = TlsFiles {
        ca: pki.ca.ca_cert_path(),
        cert: g.cert,
        key: g.key,
        crl: None,
    }
    .load()
    .unwrap();
    let verifier = ReloadingClientVerifier::new(&m.ca, None).unwrap();
    let acc = TlsAcceptor::from(Arc::new(
        tls::server_config(&m, verifier, ALPN_AGENT).unwrap(),
    ));
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let fake = GatewayAddrs {
        terminal_quic: addr,
        terminal_tcp: addr,
        agent_quic: addr,
        agent_tcp: addr,
        admin: addr,
    };
    let desk = echo_server().await;
    let agent = start_agent(&mut pki, "DESK-T", &fake, desk, "tcp");

    let mut ctl = accept(&l, &acc).await;
    AgentHello::from_frame(&read_frame(&mut ctl).await.unwrap()).unwrap();
    write_message(
        &mut ctl,
        &AgentWelcome {
            gateway: "fake".into(),
            ping_interval_secs: 5,
            filter_reports: false,
        },
    )
    .await
    .unwrap();

    let signer = TicketSigner::new(
        kakehashi_pki::load_ticket_signing_key(&pki.ca.ticket_key_path()).unwrap(),
    );
    let forger = {
        let other = tempfile::tempdir().unwrap();
        let ca = kakehashi_pki::CaDir::init(&other.path().join("x"), &Default::default()).unwrap();
        TicketSigner::new(kakehashi_pki::load_ticket_signing_key(&ca.ticket_key_path()).unwrap())
    };
    let tf = |bytes: Vec<u8>| frame::encode(FrameKind::Ticket, &bytes).unwrap();
    let now = unix_now();

    // A valid ticket: accepted, and the stream reaches the desk.
    let valid = tf(signer.sign(&claims("DESK-T", "s-valid-1", now)).unwrap());
    let (mut data, answer) = offer(&mut ctl, &l, &acc, &valid).await;
    assert_eq!(answer, Ok(()));
    data.write_all(b"through the agent").await.unwrap();
    let mut back = [0u8; 17];
    data.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, b"through the agent");
    drop(data);

    let refused = [
        ("replayed", valid.clone(), "ticket_replayed"),
        (
            "forged",
            tf(forger.sign(&claims("DESK-T", "s-forged", now)).unwrap()),
            "ticket_invalid",
        ),
        (
            "expired",
            tf(signer
                .sign(&claims("DESK-T", "s-old", now - 2 * TICKET_LIFETIME_SECS))
                .unwrap()),
            "ticket_expired",
        ),
        (
            "wrong desk",
            tf(signer.sign(&claims("DESK-OTHER", "s-other", now)).unwrap()),
            "ticket_wrong_desk",
        ),
        (
            "tampered",
            {
                let mut t = signer.sign(&claims("DESK-T", "s-tamper", now)).unwrap();
                let i = t.len() / 2;
                t[i] ^= 0x20;
                tf(t)
            },
            "ticket_invalid",
        ),
        (
            "not a ticket",
            kakehashi_proto::message::SessionRequest {
                desk: "DESK-T".into(),
                token: None,
            }
            .to_frame()
            .unwrap(),
            "protocol_error",
        ),
        ("garbage", b"\x00\x01garbage".to_vec(), "protocol_error"),
    ];
    for (name, bytes, code) in refused {
        let (_data, answer) = offer(&mut ctl, &l, &acc, &bytes).await;
        assert_eq!(answer, Err(code.to_string()), "{name}");
    }
    // Still serving: a fresh valid ticket works.
    let (_data, answer) = offer(
        &mut ctl,
        &l,
        &acc,
        &tf(signer
            .sign(&claims("DESK-T", "s-valid-2", unix_now()))
            .unwrap()),
    )
    .await;
    assert_eq!(answer, Ok(()));
    let log = agent.log_text();
    assert!(log.contains("Ticket refused"), "{log}");
}
