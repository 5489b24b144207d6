//! JSON messages carried in control frames.
//!
//! Unknown fields are ignored so that a newer peer may add optional fields
//! without breaking an older one; required fields are checked on decode.

use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::frame::{self, Frame, FrameError, FrameKind};
use crate::reason::Refusal;

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

/// A secret string (token, one-time code, PKCE verifier): serialised as is,
/// but never printed by `Debug`, so it cannot end up in a log.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

impl Secret {
    /// The secret text.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// Longest token, code or verifier accepted on the wire.
pub const MAX_SECRET_LEN: usize = 256;

fn check_secret(what: &str, s: &Secret) -> Result<(), String> {
    if s.0.is_empty() || s.0.len() > MAX_SECRET_LEN || !s.0.is_ascii() {
        return Err(format!("invalid {what}"));
    }
    Ok(())
}

/// Terminal → gateway: open a session to a desk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRequest {
    /// The desk to reach.
    pub desk: String,
    /// The login token from `kakehashi login` (bound to this laptop).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<Secret>,
}

impl Message for SessionRequest {
    const KIND: FrameKind = FrameKind::SessionRequest;
    fn validate(&self) -> Result<(), String> {
        check_id("desk", &self.desk)?;
        match &self.token {
            Some(t) => check_secret("token", t),
            None => Ok(()),
        }
    }
}

/// Terminal → gateway: redeem the one-time code the portal sent to the
/// laptop's loopback redirect, proving possession of the PKCE verifier.
/// The token issued is bound to the certificate of this connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RedeemLogin {
    /// The one-time code.
    pub code: Secret,
    /// The PKCE code verifier (RFC 7636).
    pub code_verifier: Secret,
}

impl Message for RedeemLogin {
    const KIND: FrameKind = FrameKind::RedeemLogin;
    fn validate(&self) -> Result<(), String> {
        check_secret("code", &self.code)?;
        check_secret("code_verifier", &self.code_verifier)
    }
}

/// Gateway → terminal: the login token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginResult {
    /// The token to present in [`SessionRequest::token`].
    pub token: Secret,
    /// Who logged in.
    pub user: String,
    /// Unix time at which the token stops working.
    pub expires_at: u64,
}

impl Message for LoginResult {
    const KIND: FrameKind = FrameKind::LoginResult;
    fn validate(&self) -> Result<(), String> {
        check_secret("token", &self.token)?;
        check_id("user", &self.user)
    }
}

/// Terminal → gateway: revoke a token (`kakehashi logout`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Logout {
    /// The token to revoke.
    pub token: Secret,
}

impl Message for Logout {
    const KIND: FrameKind = FrameKind::Logout;
    fn validate(&self) -> Result<(), String> {
        check_secret("token", &self.token)
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

/// Terminal → gateway, on a fresh stream after a session stream ended:
/// did the gateway end it, and why? Only the laptop that held the session
/// gets an answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionEndQuery {
    /// The session id from [`SessionAccepted`].
    pub session_id: String,
}

impl Message for SessionEndQuery {
    const KIND: FrameKind = FrameKind::SessionEndQuery;
    fn validate(&self) -> Result<(), String> {
        check_id("session", &self.session_id)
    }
}

/// Gateway → terminal: the answer to [`SessionEndQuery`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionEndReport {
    /// The session asked about.
    pub session_id: String,
    /// Why the gateway ended it (policy change, device blocked, time limit,
    /// operator…); `None` when it ended because a peer closed it, or the
    /// gateway does not remember it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<Refusal>,
}

impl Message for SessionEndReport {
    const KIND: FrameKind = FrameKind::SessionEndReport;
    fn validate(&self) -> Result<(), String> {
        check_id("session", &self.session_id)
    }
}

/// Agent → gateway, first frame of a tunnel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentHello {
    /// Agent software version, for the operator.
    pub software: String,
    /// The agent enforces session controls: its RDP channel filter is on
    /// (`[rdp]` with `enforce = true`). `false` when it passes sessions through
    /// uninspected (`[rdp] enforce = false`); an older agent that does not say
    /// is taken as not enforcing (fail closed). The gateway refuses a session
    /// whose controls restrict anything to a desk whose agent does not
    /// enforce, unless the desk is registered as a non-RDP service.
    #[serde(default)]
    pub enforces: bool,
    /// The agent takes the cluster's member list ([`FrameKind::MemberList`])
    /// and a `restarting` [`Refusal`] on the control stream. An older agent
    /// that does not say is sent neither (it would drop the tunnel on a frame
    /// it does not know).
    #[serde(default)]
    pub members: bool,
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
    /// The gateway accepts [`FilterReport`]s on the control stream (an older
    /// gateway would drop the tunnel on an unknown frame).
    #[serde(default)]
    pub filter_reports: bool,
}

impl Message for AgentWelcome {
    const KIND: FrameKind = FrameKind::AgentWelcome;
}

/// Longest [`FilterReport::what`] accepted on the wire.
pub const MAX_REPORT_WHAT_LEN: usize = 128;

/// Agent → gateway on the tunnel's control stream: the RDP filter blocked
/// something in a session, or refused the session. Sent once per distinct
/// (kind, what, direction) of a session when first seen; repeats are added up
/// in `count` and sent when the session ends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilterReport {
    /// The session, as in its ticket.
    pub session_id: String,
    /// What was blocked: `static_channel`, `dynamic_channel`, `device`,
    /// `clipboard_data`, `file_contents`; or `session_refused` when the filter
    /// refused the whole session (then `what` is the reason code, e.g.
    /// `rdp_uninspectable`). A bounded set: the gateway uses it as a metric label.
    pub kind: String,
    /// Which channel or device (`cliprdr`, `URBDRC`, `drive C:` …), or the reason code.
    pub what: String,
    /// `client_to_server` or `server_to_client`; absent for a refused session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direction: Option<String>,
    /// How many times (at least 1).
    #[serde(default = "one")]
    pub count: u32,
}

fn one() -> u32 {
    1
}

impl Message for FilterReport {
    const KIND: FrameKind = FrameKind::FilterReport;
    fn validate(&self) -> Result<(), String> {
        check_id("session", &self.session_id)?;
        let word = |s: &str| {
            !s.is_empty() && s.len() <= 32 && s.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
        };
        if !word(&self.kind) {
            return Err("invalid filter report kind".into());
        }
        if self.what.len() > MAX_REPORT_WHAT_LEN || self.what.chars().any(char::is_control) {
            return Err("invalid filter report subject".into());
        }
        if self.direction.as_deref().is_some_and(|d| !word(d)) {
            return Err("invalid filter report direction".into());
        }
        if self.count == 0 {
            return Err("filter report count must be at least 1".into());
        }
        Ok(())
    }
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

/// A refusal travels in its own frame kind, so either side can end a
/// stream with a reason code.
impl Message for Refusal {
    const KIND: FrameKind = FrameKind::Refused;
    fn validate(&self) -> Result<(), String> {
        if self.code.is_empty()
            || self.code.len() > 64
            || self.ja.len() > 1024
            || self.en.len() > 1024
        {
            return Err("refusal fields out of bounds".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_round_trip_and_kind_check() {
        let m = SessionRequest {
            desk: "DESK-1234".into(),
            token: None,
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
    fn secrets_never_show_in_debug() {
        let m = SessionRequest {
            desk: "D".into(),
            token: Some(Secret("khs1.supersecret".into())),
        };
        assert!(!format!("{m:?}").contains("supersecret"));
        let r = RedeemLogin {
            code: Secret("c0de".into()),
            code_verifier: Secret("v3rifier".into()),
        };
        assert!(!format!("{r:?}").contains("c0de") && !format!("{r:?}").contains("v3rifier"));
        // …but they travel on the wire.
        let (f, _) = frame::decode(&m.to_frame().unwrap()).unwrap().unwrap();
        assert_eq!(SessionRequest::from_frame(&f).unwrap(), m);
    }

    #[test]
    fn filter_reports_round_trip_and_are_bounded() {
        let r = FilterReport {
            session_id: "s-0123".into(),
            kind: "static_channel".into(),
            what: "cliprdr".into(),
            direction: Some("client_to_server".into()),
            count: 1,
        };
        let (f, _) = frame::decode(&r.to_frame().unwrap()).unwrap().unwrap();
        assert_eq!(f.kind, FrameKind::FilterReport);
        assert_eq!(FilterReport::from_frame(&f).unwrap(), r);
        for bad in [
            FilterReport {
                kind: "Static Channel".into(),
                ..r.clone()
            },
            FilterReport {
                what: "x".repeat(MAX_REPORT_WHAT_LEN + 1),
                ..r.clone()
            },
            FilterReport {
                what: "a\nb".into(),
                ..r.clone()
            },
            FilterReport {
                session_id: "../x".into(),
                ..r.clone()
            },
            FilterReport {
                count: 0,
                ..r.clone()
            },
        ] {
            let f = Frame {
                kind: FrameKind::FilterReport,
                payload: serde_json::to_vec(&bad).unwrap(),
            };
            assert!(FilterReport::from_frame(&f).is_err(), "{bad:?}");
        }
        // An older gateway's welcome has no `filter_reports`: reports stay off.
        let w: AgentWelcome =
            serde_json::from_str(r#"{"gateway":"g","ping_interval_secs":10}"#).unwrap();
        assert!(!w.filter_reports);
    }

    #[test]
    fn agent_hello_says_whether_it_enforces_and_silence_is_no() {
        for enforces in [true, false] {
            let h = AgentHello {
                software: "kakehashi-agent/1.0".into(),
                enforces,
                members: enforces,
            };
            let (f, _) = frame::decode(&h.to_frame().unwrap()).unwrap().unwrap();
            assert_eq!(f.kind, FrameKind::AgentHello);
            assert_eq!(AgentHello::from_frame(&f).unwrap(), h);
        }
        // An older agent's hello has no `enforces`: it is taken as not enforcing.
        let f = Frame {
            kind: FrameKind::AgentHello,
            payload: br#"{"software":"kakehashi-agent/0.9"}"#.to_vec(),
        };
        assert!(!AgentHello::from_frame(&f).unwrap().enforces);
        // …and as taking no member lists.
        assert!(!AgentHello::from_frame(&f).unwrap().members);
        // Only a JSON boolean counts as an answer.
        for bad in [
            r#"{"software":"a","enforces":"true"}"#,
            r#"{"software":"a","enforces":1}"#,
            r#"{"software":"a","enforces":null}"#,
        ] {
            let f = Frame {
                kind: FrameKind::AgentHello,
                payload: bad.as_bytes().to_vec(),
            };
            assert!(AgentHello::from_frame(&f).is_err(), "{bad}");
        }
        // The size limit on the software version still holds.
        let long = AgentHello {
            software: "x".repeat(129),
            enforces: true,
            members: true,
        };
        let f = Frame {
            kind: FrameKind::AgentHello,
            payload: serde_json::to_vec(&long).unwrap(),
        };
        assert!(AgentHello::from_frame(&f).is_err());
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
