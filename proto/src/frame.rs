//! Control frames: `version (u8) | kind (u8) | length (u32, big endian) | payload`.
//!
//! The decoder never reads past the end of a frame, so the bytes that follow
//! the last control frame on a stream (the session itself) stay untouched.

/// Version byte at the start of every frame.
pub const PROTOCOL_VERSION: u8 = 1;
/// Bytes in a frame header.
pub const HEADER_LEN: usize = 6;
/// Largest payload a frame may carry. Control messages are small; anything
/// larger is an attack or a bug.
pub const MAX_PAYLOAD: usize = 16 * 1024;

/// What a frame carries. The numeric values are part of the wire format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FrameKind {
    /// Liveness probe; answered with [`FrameKind::Pong`]. Empty payload.
    Ping = 0x01,
    /// Answer to [`FrameKind::Ping`]. Empty payload.
    Pong = 0x02,
    /// Terminal → gateway: open a session to a desk ([`crate::message::SessionRequest`]).
    SessionRequest = 0x10,
    /// Gateway → terminal: the session is open; raw bytes follow ([`crate::message::SessionAccepted`]).
    SessionAccepted = 0x11,
    /// Either direction: refused or ended, with a reason ([`crate::Refusal`]); the stream closes.
    Refused = 0x12,
    /// Terminal → gateway: exchange a one-time login code for a token bound
    /// to this laptop's certificate ([`crate::message::RedeemLogin`]).
    RedeemLogin = 0x13,
    /// Gateway → terminal: the login token ([`crate::message::LoginResult`]).
    LoginResult = 0x14,
    /// Terminal → gateway: revoke this token ([`crate::message::Logout`]).
    Logout = 0x15,
    /// Gateway → terminal: the token is revoked. Empty payload.
    LoggedOut = 0x16,
    /// Terminal → gateway: why did this session of mine end?
    /// ([`crate::message::SessionEndQuery`]).
    SessionEndQuery = 0x17,
    /// Gateway → terminal: how the session ended ([`crate::message::SessionEndReport`]).
    SessionEndReport = 0x18,
    /// Gateway → agent: a signed session ticket ([`crate::ticket`]).
    Ticket = 0x20,
    /// Agent → gateway: the ticket is valid and the desk is connected; raw bytes follow.
    TicketAccepted = 0x21,
    /// Agent → gateway on the tunnel's control stream: the RDP filter blocked
    /// something in a session ([`crate::message::FilterReport`]).
    FilterReport = 0x22,
    /// Agent → gateway, first frame of a tunnel ([`crate::message::AgentHello`]).
    AgentHello = 0x30,
    /// Gateway → agent: the tunnel is registered ([`crate::message::AgentWelcome`]).
    AgentWelcome = 0x31,
    /// Gateway → agent over TCP: dial a data connection for a session ([`crate::message::OpenDataChannel`]).
    OpenDataChannel = 0x32,
    /// Agent → gateway, first frame of a TCP data connection ([`crate::message::DataChannelHello`]).
    DataChannelHello = 0x33,
    /// Gateway → agent on the tunnel's control stream: the cluster's signed
    /// member list ([`crate::members`]). Sent only to an agent whose hello
    /// said it takes them ([`crate::message::AgentHello::members`]).
    MemberList = 0x34,
}

impl FrameKind {
    /// Kind for a wire byte, if known.
    pub fn from_u8(b: u8) -> Option<Self> {
        Some(match b {
            0x01 => Self::Ping,
            0x02 => Self::Pong,
            0x10 => Self::SessionRequest,
            0x11 => Self::SessionAccepted,
            0x12 => Self::Refused,
            0x13 => Self::RedeemLogin,
            0x14 => Self::LoginResult,
            0x15 => Self::Logout,
            0x16 => Self::LoggedOut,
            0x17 => Self::SessionEndQuery,
            0x18 => Self::SessionEndReport,
            0x20 => Self::Ticket,
            0x21 => Self::TicketAccepted,
            0x22 => Self::FilterReport,
            0x30 => Self::AgentHello,
            0x31 => Self::AgentWelcome,
            0x32 => Self::OpenDataChannel,
            0x33 => Self::DataChannelHello,
            0x34 => Self::MemberList,
            _ => return None,
        })
    }
}

/// One decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// What the payload is.
    pub kind: FrameKind,
    /// The payload, at most [`MAX_PAYLOAD`] bytes.
    pub payload: Vec<u8>,
}

/// Why bytes are not a valid frame.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum FrameError {
    /// The version byte is not one this build speaks.
    #[error("unsupported protocol version {0} (this build speaks version {PROTOCOL_VERSION})")]
    Version(u8),
    /// The kind byte is unknown.
    #[error("unknown frame kind 0x{0:02x}")]
    UnknownKind(u8),
    /// The declared length is over the limit.
    #[error("frame of {0} bytes is over the {MAX_PAYLOAD}-byte limit")]
    TooLarge(usize),
    /// The peer sent a frame that is valid but not allowed at this point.
    #[error("unexpected {got:?} frame (expected {expected})")]
    Unexpected {
        /// What arrived.
        got: FrameKind,
        /// What the protocol state allows.
        expected: &'static str,
    },
    /// The payload is not a valid message for its kind.
    #[error("malformed {kind:?} payload: {detail}")]
    Payload {
        /// The frame kind.
        kind: FrameKind,
        /// What was wrong.
        detail: String,
    },
    /// The stream ended inside a frame.
    #[error("stream ended inside a frame")]
    Truncated,
}

/// A parsed frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Frame kind.
    pub kind: FrameKind,
    /// Payload length (already checked against [`MAX_PAYLOAD`]).
    pub len: usize,
}

/// Parse and check a header.
pub fn decode_header(h: &[u8; HEADER_LEN]) -> Result<Header, FrameError> {
    if h[0] != PROTOCOL_VERSION {
        return Err(FrameError::Version(h[0]));
    }
    let kind = FrameKind::from_u8(h[1]).ok_or(FrameError::UnknownKind(h[1]))?;
    let len = u32::from_be_bytes([h[2], h[3], h[4], h[5]]) as usize;
    if len > MAX_PAYLOAD {
        return Err(FrameError::TooLarge(len));
    }
    Ok(Header { kind, len })
}

/// Decode one frame from the start of `buf`. Returns the frame and the bytes
/// it used, `Ok(None)` when more bytes are needed, or an error as soon as the
/// header is known to be bad (without waiting for the payload).
pub fn decode(buf: &[u8]) -> Result<Option<(Frame, usize)>, FrameError> {
    let Some(h) = buf.first_chunk::<HEADER_LEN>() else {
        // A wrong version byte is reported before the header is complete.
        if let Some(&v) = buf.first() {
            if v != PROTOCOL_VERSION {
                return Err(FrameError::Version(v));
            }
        }
        return Ok(None);
    };
    let header = decode_header(h)?;
    let end = HEADER_LEN + header.len;
    if buf.len() < end {
        return Ok(None);
    }
    Ok(Some((
        Frame {
            kind: header.kind,
            payload: buf[HEADER_LEN..end].to_vec(),
        },
        end,
    )))
}

/// Encode a frame. Fails only when the payload is over the limit.
pub fn encode(kind: FrameKind, payload: &[u8]) -> Result<Vec<u8>, FrameError> {
    let len = match u32::try_from(payload.len()) {
        Ok(len) if payload.len() <= MAX_PAYLOAD => len,
        _ => return Err(FrameError::TooLarge(payload.len())),
    };
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.push(PROTOCOL_VERSION);
    out.push(kind as u8);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(payload);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trip() {
        let bytes = encode(FrameKind::SessionRequest, b"{\"desk\":\"d\"}").unwrap();
        let (f, used) = decode(&bytes).unwrap().unwrap();
        assert_eq!(used, bytes.len());
        assert_eq!(f.kind, FrameKind::SessionRequest);
        assert_eq!(f.payload, b"{\"desk\":\"d\"}");
    }

    #[test]
    fn partial_input_needs_more() {
        let bytes = encode(FrameKind::Ping, b"").unwrap();
        assert_eq!(decode(&bytes[..3]), Ok(None));
        let bytes = encode(FrameKind::Ticket, &[7; 100]).unwrap();
        assert_eq!(decode(&bytes[..50]), Ok(None));
    }

    #[test]
    fn bad_headers_are_refused_early() {
        assert_eq!(decode(&[9]), Err(FrameError::Version(9)));
        assert_eq!(
            decode(&[1, 0x77, 0, 0, 0, 0]),
            Err(FrameError::UnknownKind(0x77))
        );
        let too_big = (u32::try_from(MAX_PAYLOAD).unwrap() + 1).to_be_bytes();
        let h = [1, 0x10, too_big[0], too_big[1], too_big[2], too_big[3]];
        assert_eq!(decode(&h), Err(FrameError::TooLarge(MAX_PAYLOAD + 1)));
        assert_eq!(
            encode(FrameKind::Ping, &vec![0; MAX_PAYLOAD + 1]),
            Err(FrameError::TooLarge(MAX_PAYLOAD + 1))
        );
    }

    #[test]
    fn trailing_session_bytes_are_left_alone() {
        let mut bytes = encode(FrameKind::SessionAccepted, b"{}").unwrap();
        bytes.extend_from_slice(b"RDP bytes");
        let (_, used) = decode(&bytes).unwrap().unwrap();
        assert_eq!(&bytes[used..], b"RDP bytes");
    }

    proptest! {
        #[test]
        fn decode_never_panics(data in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode(&data);
        }

        #[test]
        fn encode_decode_round_trips(kind in prop::sample::select(vec![0x01u8,0x02,0x10,0x11,0x12,0x13,0x14,0x15,0x16,0x17,0x18,0x20,0x21,0x22,0x30,0x31,0x32,0x33,0x34]),
                                     payload in proptest::collection::vec(any::<u8>(), 0..512)) {
            let kind = FrameKind::from_u8(kind).unwrap();
            let bytes = encode(kind, &payload).unwrap();
            let (f, used) = decode(&bytes).unwrap().unwrap();
            prop_assert_eq!(used, bytes.len());
            prop_assert_eq!(f, Frame { kind, payload });
        }
    }
}
