//! Kakehashi relay: accepts laptops (terminals) and desk agents over QUIC
//! and TLS-over-TCP with mutual TLS against the private CA, keeps a registry
//! of the desks whose agents have dialled in, and for each session a laptop
//! asks for opens a stream on the desk's tunnel carrying a session ticket
//! signed with Ed25519, then splices the two streams.
//!
//! Every session request is decided by the access policy on the store's
//! facts ([`admission`]); live sessions are re-decided when those change,
//! and when the CRL changes or goes stale. Logins (`RedeemLogin`, `Logout`)
//! arrive on the laptop listener too ([`login`]). [`metrics`] is what
//! `/metrics` shows.
//!
//! The `kakehashi-gateway` binary parses the configuration file, opens the
//! store and runs the relay ([`Relay::bind`] → [`Relay::serve`]) beside the
//! portal, the `/metrics` listener and audit forwarding.

#![warn(missing_docs, unreachable_pub, clippy::cast_possible_truncation)]

pub mod admission;
mod agents;
mod budget;
mod busy;
pub mod cluster;
pub mod config;
mod crl;
mod ends;
pub mod handle;
mod load;
pub mod login;
pub mod metrics;
pub mod server;
mod sessions;
pub mod shared;
mod watch;

pub use config::{Config, Identity};
pub use handle::RelayHandle;
pub use server::Relay;
pub use shared::{BoundAddrs, LiveSessionPage, LiveSessionView, Shared};
pub use watch::OPERATOR_END;
