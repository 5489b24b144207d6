//! Kakehashi wire protocol, with no sockets in it.
//!
//! Every stream between the laptop client, the gateway and the desk agent
//! starts with a few length-prefixed control [frames](frame) carrying JSON
//! [messages](message); once a session is accepted the stream carries the raw
//! bytes of the remote-desktop session. Session [tickets](ticket) are signed
//! by the gateway with Ed25519 and checked by the agent. Every denial carries
//! a stable [reason code](reason) with a Japanese and an English sentence.
//! Gateways tell their agents the cluster's [member list](members), signed
//! with the same key as tickets.
//!
//! The format is described in `docs/protocol.md`. Everything here is pure:
//! decoders take bytes and return values or errors, clocks are passed in.

// Library hygiene (issue #17): every public item documented and reachable,
// no silent narrowing `as` casts. Per crate, not workspace-wide: the gateway is not ready.
#![warn(unreachable_pub, missing_docs, clippy::cast_possible_truncation)]

pub mod frame;
pub mod io;
pub mod members;
pub mod message;
pub mod reason;
pub mod ticket;

pub use frame::{Frame, FrameError, FrameKind, PROTOCOL_VERSION};
pub use message::{Clipboard, Controls, Limits};
pub use reason::{Reason, Refusal};
pub use ticket::{ReplayGuard, TicketClaims, TicketError, TicketSigner, TicketVerifier};

/// ALPN protocol id spoken by laptops (terminals) to the gateway.
pub const ALPN_TERMINAL: &[u8] = b"kakehashi-terminal/1";
/// ALPN protocol id spoken by desk agents to the gateway.
pub const ALPN_AGENT: &[u8] = b"kakehashi-agent/1";
