//! JSON messages carried in control frames.
//!
//! Unknown fields are ignored so that a newer peer may add optional fields
//! without breaking an older one; required fields are checked on decode.

use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::frame::{self, Frame, FrameError, FrameKind};

/// Longest desk, device, user or session id accepted on the wire.
pub const MAX_ID_LEN: usize = 64;

/// A message with a fixed frame kind.
pub trait Message: Serialize + DeserializeOwned {
    /// The frame kind that carries this message.
    const KIND: FrameKind;

    /// Check field contents after JSON decoding.
    fn validate(&self) -> Result<(), String> {
        Ok(())
    }

    /// Encode as a complete frame.
    fn to_frame(&self) -> Result<Vec<u8>, FrameError> {
        let json = serde_json::to_vec(self).map_err(|e| FrameError::Payload {
            kind: Self::KIND,
            detail: e.to_string(),
        })?;
        frame::encode(Self::KIND, &json)
    }

    /// Decode from a frame of the right kind.
    fn from_frame(f: &Frame) -> Result<Self, FrameError> {
        if f.kind != Self::KIND {
            return Err(FrameError::Unexpected {
                got: f.kind,
                expected: std::any::type_name::<Self>()
                    .rsplit("::")
                    .next()
                    .unwrap_or("message"),
            });
        }
        let m: Self = serde_json::from_slice(&f.payload).map_err(|e| FrameError::Payload {
            kind: f.kind,
            detail: e.to_string(),
        })?;
        m.validate().map_err(|detail| FrameError::Payload {
            kind: f.kind,
            detail,
        })?;
        Ok(m)
    }
}

/// Is `id` a valid desk / device / user id: 1–64 of `[A-Za-z0-9._-]`.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn check_id(what: &str, id: &str) -> Result<(), String> {
    if valid_id(id) {
        Ok(())
    } else {
        Err(format!(
            "invalid {what} id (1-{MAX_ID_LEN} characters of A-Z a-z 0-9 . _ -)"
        ))
    }
}

/// Terminal → gateway: open a session to a desk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRequest {
    /// The desk to reach.
    pub desk: String,
}

impl Message for SessionRequest {
    const KIND: FrameKind = FrameKind::SessionRequest;
    fn validate(&self) -> Result<(), String> {
        check_id("desk", &self.desk)
    }
}

/// Gateway → terminal: the session is open. Raw session bytes follow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionAccepted {
    /// Session id, as written in the gateway's log and the ticket.
    pub session_id: String,
    /// Session controls the agent enforces, so the client can match them.
    #[serde(default)]
    pub controls: Controls,
}

impl Message for SessionAccepted {
    const KIND: FrameKind = FrameKind::SessionAccepted;
    fn validate(&self) -> Result<(), String> {
        check_id("session", &self.session_id)
    }
}

/// Agent → gateway, first frame of a tunnel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentHello {
    /// Agent software version, for the operator.
    pub software: String,
}

impl Message for AgentHello {
    const KIND: FrameKind = FrameKind::AgentHello;
    fn validate(&self) -> Result<(), String> {
        if self.software.len() > 128 {
            return Err("software version too long".into());
        }
        Ok(())
    }
}

/// Gateway → agent: the tunnel is registered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentWelcome {
    /// The gateway's name.
    pub gateway: String,
    /// How often the gateway pings an idle TCP tunnel, in seconds.
    pub ping_interval_secs: u32,
}

impl Message for AgentWelcome {
    const KIND: FrameKind = FrameKind::AgentWelcome;
}

/// Gateway → agent on a TCP tunnel: dial a data connection for a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenDataChannel {
    /// Random id the agent echoes in [`DataChannelHello`].
    pub channel: String,
}

impl Message for OpenDataChannel {
    const KIND: FrameKind = FrameKind::OpenDataChannel;
    fn validate(&self) -> Result<(), String> {
        check_id("channel", &self.channel)
    }
}

/// Agent → gateway, first frame of a TCP data connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataChannelHello {
    /// The id from [`OpenDataChannel`].
    pub channel: String,
}

impl Message for DataChannelHello {
    const KIND: FrameKind = FrameKind::DataChannelHello;
    fn validate(&self) -> Result<(), String> {
        check_id("channel", &self.channel)
    }
}

/// Clipboard direction allowed in a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Clipboard {
    /// No clipboard at all.
    #[default]
    None,
    /// Paste into the desk PC only; nothing copied out.
    ToRemote,
    /// Copy out of the desk PC only.
    ToLocal,
    /// Both directions.
    Both,
}

/// Session controls the agent enforces in the RDP stream.
///
/// The default denies every redirection: what is not granted is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Controls {
    /// Clipboard direction.
    pub clipboard: Clipboard,
    /// Drive redirection (saving to the laptop).
    pub drive: bool,
    /// Printer redirection.
    pub printer: bool,
    /// Serial and parallel ports.
    pub ports: bool,
    /// USB device redirection.
    pub usb: bool,
    /// Audio output.
    pub audio: bool,
    /// Smartcard redirection.
    pub smartcard: bool,
}

impl Controls {
    /// Every redirection allowed.
    pub fn allow_all() -> Self {
        Self {
            clipboard: Clipboard::Both,
            drive: true,
            printer: true,
            ports: true,
            usb: true,
            audio: true,
            smartcard: true,
        }
    }

    /// Does this restrict anything (so the stream must be inspectable)?
    pub fn is_restrictive(&self) -> bool {
        *self != Self::allow_all()
    }
}

/// Time limits of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Limits {
    /// Unix time at which the gateway ends the session.
    pub end_at: Option<u64>,
    /// Seconds of inactivity after which the session ends.
    pub idle_timeout_secs: Option<u32>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_round_trip_and_kind_check() {
        let m = SessionRequest {
            desk: "DESK-1234".into(),
        };
        let bytes = m.to_frame().unwrap();
        let (f, _) = frame::decode(&bytes).unwrap().unwrap();
        assert_eq!(SessionRequest::from_frame(&f).unwrap(), m);
        assert!(matches!(
            AgentHello::from_frame(&f),
            Err(FrameError::Unexpected { .. })
        ));
    }

    #[test]
    fn invalid_ids_are_refused() {
        for bad in ["", "a b", "../etc", &"x".repeat(65), "デスク"] {
            let f = Frame {
                kind: FrameKind::SessionRequest,
                payload: serde_json::to_vec(&serde_json::json!({ "desk": bad })).unwrap(),
            };
            assert!(SessionRequest::from_frame(&f).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn garbage_payload_is_an_error() {
        let f = Frame {
            kind: FrameKind::SessionRequest,
            payload: b"\xff\x00{".to_vec(),
        };
        assert!(matches!(
            SessionRequest::from_frame(&f),
            Err(FrameError::Payload { .. })
        ));
    }

    #[test]
    fn controls_default_denies_everything() {
        let c = Controls::default();
        assert_eq!(c.clipboard, Clipboard::None);
        assert!(!c.drive && !c.printer && !c.usb && !c.ports && !c.audio && !c.smartcard);
        assert!(c.is_restrictive());
        assert!(!Controls::allow_all().is_restrictive());
        let json = serde_json::to_string(&Controls {
            clipboard: Clipboard::ToRemote,
            ..c
        })
        .unwrap();
        assert!(json.contains("\"to-remote\""), "{json}");
    }
}
