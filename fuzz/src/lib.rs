//! Helpers shared by the Kakehashi fuzz targets: a fixed ticket key, an
//! in-memory reader that hands out bytes in fuzzer-chosen chunks, a minimal
//! executor for `proto::io`, and the seed inputs (written by
//! `examples/gen_seeds.rs` into `fuzz/seeds/<target>/`).
//!
//! Nothing here is used by the product; it only makes the targets short.

pub mod outside;

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use kakehashi_proto::frame::{self, FrameKind};
use kakehashi_proto::message::{
    AgentHello, AgentWelcome, DataChannelHello, FilterReport, Message, OpenDataChannel,
    SessionAccepted, SessionRequest,
};
use kakehashi_proto::ticket::{TicketClaims, TICKET_LIFETIME_SECS, TICKET_VERSION};
use kakehashi_proto::{Clipboard, Controls, Limits, Reason, Refusal, TicketSigner, TicketVerifier};
use ring::signature::{Ed25519KeyPair, KeyPair as _};
use tokio::io::{AsyncRead, ReadBuf};

/// Every frame kind, in wire order.
pub const KINDS: [FrameKind; 19] = [
    FrameKind::Ping,
    FrameKind::Pong,
    FrameKind::SessionRequest,
    FrameKind::SessionAccepted,
    FrameKind::Refused,
    FrameKind::RedeemLogin,
    FrameKind::LoginResult,
    FrameKind::Logout,
    FrameKind::LoggedOut,
    FrameKind::SessionEndQuery,
    FrameKind::SessionEndReport,
    FrameKind::Ticket,
    FrameKind::TicketAccepted,
    FrameKind::FilterReport,
    FrameKind::AgentHello,
    FrameKind::AgentWelcome,
    FrameKind::OpenDataChannel,
    FrameKind::DataChannelHello,
    FrameKind::MemberList,
];

/// A frame kind for any byte: the kind itself when the byte is a known kind,
/// else one picked by the byte, so every input lands on some kind.
pub fn kind_for(b: u8) -> FrameKind {
    FrameKind::from_u8(b).unwrap_or(KINDS[usize::from(b) % KINDS.len()])
}

/// Seed of the fixed Ed25519 ticket key. Fuzzing only: never a real key.
const KEY_SEED: [u8; 32] = *b"kakehashi-fuzz-ticket-key-seed!!";
/// The desk the `ticket_verify` target's agent serves.
pub const DESK: &str = "DESK-0001";
/// The clock the `ticket_verify` target's raw mode verifies at.
pub const NOW: u64 = 1_800_000_000;

/// The gateway side of the fixed ticket key.
pub fn signer() -> TicketSigner {
    TicketSigner::new(
        Ed25519KeyPair::from_seed_unchecked(&KEY_SEED).expect("a 32-byte seed is a valid key"),
    )
}

/// The agent side of the fixed ticket key.
pub fn verifier() -> TicketVerifier {
    let pair =
        Ed25519KeyPair::from_seed_unchecked(&KEY_SEED).expect("a 32-byte seed is a valid key");
    let public: [u8; 32] = pair
        .public_key()
        .as_ref()
        .try_into()
        .expect("Ed25519 public keys are 32 bytes");
    TicketVerifier::new(vec![public])
}

/// Drive a future that never waits on anything outside itself (such as
/// `read_frame` over a [`ChunkedReader`]) to completion. Panics if it stalls,
/// which would mean `read_frame` keeps returning `Pending` on a reader that
/// always makes progress.
pub fn block_on<F: Future>(fut: F) -> F::Output {
    let mut fut = std::pin::pin!(fut);
    let mut cx = Context::from_waker(Waker::noop());
    for _ in 0..1_000_000 {
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return v;
        }
    }
    panic!("future stalled on an in-memory reader");
}

/// An in-memory byte stream that returns at most `chunks[i]` bytes per read
/// (cycling through `chunks`; a 0 entry means "not ready yet, ask again"),
/// and optionally fails with an I/O error once `fail_at` bytes were read.
#[derive(Debug)]
pub struct ChunkedReader<'a> {
    data: &'a [u8],
    pos: usize,
    chunks: Vec<usize>,
    next: usize,
    fail_at: Option<usize>,
    failed: bool,
}

impl<'a> ChunkedReader<'a> {
    /// A reader over `data`.
    pub fn new(data: &'a [u8], chunks: Vec<usize>, fail_at: Option<usize>) -> Self {
        let chunks = if chunks.iter().all(|&c| c == 0) {
            vec![usize::MAX]
        } else {
            chunks
        };
        Self {
            data,
            pos: 0,
            chunks,
            next: 0,
            fail_at,
            failed: false,
        }
    }

    /// Bytes handed out so far.
    pub fn pos(&self) -> usize {
        self.pos
    }

    /// Whether the injected I/O error has been returned.
    pub fn failed(&self) -> bool {
        self.failed
    }
}

impl AsyncRead for ChunkedReader<'_> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        if me.fail_at.is_some_and(|at| me.pos >= at) {
            me.failed = true;
            return Poll::Ready(Err(io::Error::other("injected failure")));
        }
        let chunk = me.chunks[me.next % me.chunks.len()];
        me.next = me.next.wrapping_add(1);
        if chunk == 0 {
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let limit = me.fail_at.map_or(usize::MAX, |at| at - me.pos);
        let n = chunk
            .min(buf.remaining())
            .min(me.data.len() - me.pos)
            .min(limit);
        buf.put_slice(&me.data[me.pos..me.pos + n]);
        me.pos += n;
        Poll::Ready(Ok(()))
    }
}

/// Claims of a ticket that the raw `ticket_verify` mode accepts at [`NOW`].
pub fn sample_claims() -> TicketClaims {
    TicketClaims {
        v: TICKET_VERSION,
        session_id: "s-00112233445566778899aabb".into(),
        desk: DESK.into(),
        device: "LAPTOP-0001".into(),
        class: "home".into(),
        user: Some("tanaka.h".into()),
        gateway: "gw1.example.jp".into(),
        controls: Controls {
            clipboard: Clipboard::ToRemote,
            audio: true,
            ..Controls::default()
        },
        limits: Limits {
            end_at: Some(NOW + 3600),
            idle_timeout_secs: Some(900),
        },
        issued_at: NOW,
        expires_at: NOW + TICKET_LIFETIME_SECS,
    }
}

fn msg<M: Message>(m: &M) -> Vec<u8> {
    m.to_frame().expect("seed messages are small")
}

fn empty(kind: FrameKind) -> Vec<u8> {
    frame::encode(kind, &[]).expect("empty frame")
}

/// One encoded frame of every kind, with typical contents.
pub fn sample_frames() -> Vec<(&'static str, Vec<u8>)> {
    let ticket = signer().sign(&sample_claims()).expect("sample claims fit");
    vec![
        ("ping", empty(FrameKind::Ping)),
        ("pong", empty(FrameKind::Pong)),
        (
            "session_request",
            msg(&SessionRequest {
                desk: DESK.into(),
                token: None,
            }),
        ),
        (
            "session_accepted",
            msg(&SessionAccepted {
                session_id: "s-00112233445566778899aabb".into(),
                controls: sample_claims().controls,
            }),
        ),
        (
            "refused",
            msg(&Refusal::new(Reason::DeskOffline).with_detail("no tunnel")),
        ),
        (
            "ticket",
            frame::encode(FrameKind::Ticket, &ticket).expect("ticket fits a frame"),
        ),
        ("ticket_accepted", empty(FrameKind::TicketAccepted)),
        (
            "agent_hello",
            msg(&AgentHello {
                software: "kakehashi-agent/0.1.0".into(),
                enforces: true,
                members: true,
            }),
        ),
        (
            "agent_welcome",
            msg(&AgentWelcome {
                gateway: "gw1".into(),
                ping_interval_secs: 10,
                filter_reports: false,
            }),
        ),
        (
            "filter_report",
            msg(&FilterReport {
                session_id: "s-0123456789ab".into(),
                kind: "static_channel".into(),
                what: "cliprdr".into(),
                direction: Some("client_to_server".into()),
                count: 1,
            }),
        ),
        (
            "open_data_channel",
            msg(&OpenDataChannel {
                channel: "0123456789abcdef0123456789abcdef".into(),
            }),
        ),
        (
            "data_channel_hello",
            msg(&DataChannelHello {
                channel: "0123456789abcdef0123456789abcdef".into(),
            }),
        ),
    ]
}

/// Seed inputs for each target: `(target, file name, bytes)`.
pub fn seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    let frames = sample_frames();
    let mut out = Vec::new();

    // frame_decode: each frame alone, one with session bytes after it, and
    // a few bad headers.
    for (name, bytes) in &frames {
        out.push(("frame_decode", format!("{name}.bin"), bytes.clone()));
    }
    let mut trailing = frames[3].1.clone();
    trailing.extend_from_slice(
        b"\x03\x00\x00\x13\x0e\xe0\x00\x00\x00\x00\x00\x01\x00\x08\x00\x0b\x00\x00\x00",
    );
    out.push(("frame_decode", "accepted_then_rdp.bin".into(), trailing));
    out.push((
        "frame_decode",
        "http_get.bin".into(),
        b"GET / HTTP/1.1\r\n\r\n".to_vec(),
    ));
    out.push((
        "frame_decode",
        "too_large.bin".into(),
        vec![1, 0x10, 0, 0, 0x40, 0x01],
    ));
    out.push((
        "frame_decode",
        "unknown_kind.bin".into(),
        vec![1, 0x77, 0, 0, 0, 0],
    ));

    // messages: kind byte + payload.
    for (name, bytes) in &frames {
        let mut m = vec![bytes[1]];
        m.extend_from_slice(&bytes[frame::HEADER_LEN..]);
        out.push(("messages", format!("{name}.bin"), m));
    }
    let mut long = vec![FrameKind::SessionRequest as u8];
    long.extend_from_slice(format!("\"{}\"", "デスク".repeat(60)).as_bytes());
    out.push(("messages", "session_request_string.bin".into(), long));

    // ticket_verify: mode byte 0 = raw bytes verified at NOW for DESK.
    let s = signer();
    let raw = |t: Vec<u8>| {
        let mut v = vec![0u8];
        v.extend_from_slice(&t);
        v
    };
    out.push((
        "ticket_verify",
        "valid.bin".into(),
        raw(s.sign(&sample_claims()).expect("sample claims fit")),
    ));
    let mut c = sample_claims();
    c.issued_at = NOW - 600;
    c.expires_at = NOW - 540;
    out.push((
        "ticket_verify",
        "expired.bin".into(),
        raw(s.sign(&c).expect("claims fit")),
    ));
    let mut c = sample_claims();
    c.desk = "DESK-0002".into();
    out.push((
        "ticket_verify",
        "wrong_desk.bin".into(),
        raw(s.sign(&c).expect("claims fit")),
    ));
    let mut c = sample_claims();
    c.v = 2;
    out.push((
        "ticket_verify",
        "version2.bin".into(),
        raw(s.sign(&c).expect("claims fit")),
    ));
    // Mode byte 1 = structured: the rest is read with `arbitrary`.
    out.push((
        "ticket_verify",
        "structured.bin".into(),
        [&[1u8][..], &[0x5a; 96][..]].concat(),
    ));

    // member_list: mode byte 0 = raw bytes verified at NOW, byte 1 = the
    // last accepted version / 1000 (0: none); odd = structured.
    let list = |version: u64, issued_at: u64| kakehashi_proto::members::MemberList {
        v: kakehashi_proto::members::MEMBER_LIST_FORMAT,
        version,
        gateway: "gw1".into(),
        issued_at,
        expires_at: issued_at + kakehashi_proto::members::MEMBER_LIST_LIFETIME_SECS,
        members: (1..=3)
            .map(|i| kakehashi_proto::members::ListedMember {
                id: format!("gw{i}"),
                tcp: format!("gw{i}.kakehashi.example.lg.jp:8443"),
                quic: format!("gw{i}.kakehashi.example.lg.jp:8443"),
                server_name: format!("gw{i}.kakehashi.example.lg.jp"),
            })
            .collect(),
    };
    let signed = |l| kakehashi_proto::members::sign(&s, &l).expect("sample list fits");
    for (name, accepted, l) in [
        ("valid.bin", 0u8, list(NOW, NOW)),
        ("expired.bin", 0, list(NOW - 600, NOW - 600)),
        ("stale.bin", 2, list(1000, NOW)),
    ] {
        out.push((
            "member_list",
            name.into(),
            [&[0u8, accepted][..], &signed(l)].concat(),
        ));
    }
    out.push((
        "member_list",
        "structured.bin".into(),
        [&[1u8][..], &[0x5a; 128][..]].concat(),
    ));

    // resumption: even byte 0 = a key file (header, entries of created u64
    // BE, 16-byte name, 32-byte key); odd = a presented ticket, then sealed.
    let entry = |created: u64, fill: u8| {
        let mut e = created.to_be_bytes().to_vec();
        e.extend_from_slice(&[fill; 48]);
        e
    };
    let keyfile = |entries: &[Vec<u8>]| {
        let mut v = vec![0u8];
        v.extend_from_slice(b"KKHTKT1\n");
        for e in entries {
            v.extend_from_slice(e);
        }
        v
    };
    out.push((
        "resumption",
        "keyfile_one.bin".into(),
        keyfile(&[entry(NOW, 7)]),
    ));
    out.push((
        "resumption",
        "keyfile_two.bin".into(),
        keyfile(&[entry(NOW, 7), entry(NOW - 21_600, 9)]),
    ));
    out.push((
        "resumption",
        "ticket.bin".into(),
        [
            &[1u8][..],
            &[1u8; 16][..],
            &[0x33; 12][..],
            &[0xa5; 180][..],
        ]
        .concat(),
    ));

    // frame_stream: 4 chunk-size bytes, 1 failure byte, then a stream.
    let stream = |chunks: [u8; 4], fail: u8, parts: &[usize]| {
        let mut v = chunks.to_vec();
        v.push(fail);
        for &i in parts {
            v.extend_from_slice(&frames[i].1);
        }
        v
    };
    // Terminal: ping probe, then a session request.
    out.push((
        "frame_stream",
        "terminal.bin".into(),
        stream([255, 255, 255, 255], 0, &[0, 2]),
    ));
    // Gateway → agent session stream: ticket; agent → gateway: accepted.
    out.push((
        "frame_stream",
        "ticket_byte_at_a_time.bin".into(),
        stream([1, 0, 1, 3], 0, &[5, 6]),
    ));
    // Agent TCP control connection.
    out.push((
        "frame_stream",
        "agent_control.bin".into(),
        stream([7, 2, 0, 64], 0, &[7, 8, 1, 9, 0]),
    ));
    out.push((
        "frame_stream",
        "io_error.bin".into(),
        stream([3, 3, 3, 3], 20, &[3, 4]),
    ));
    out
}
