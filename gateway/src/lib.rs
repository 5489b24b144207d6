//! Kakehashi gateway: accepts laptops (terminals) and desk agents over QUIC
//! and TLS-over-TCP with mutual TLS against the private CA, keeps a registry
//! of the desks whose agents have dialled in, and for each session a laptop
//! asks for opens a stream on the desk's tunnel carrying a session ticket
//! signed with Ed25519, then splices the two streams.
//!
//! Every session request is decided by the access policy on the store's
//! facts ([`admission`]); live sessions are re-decided when those change.
//!
//! `main.rs` is a thin wrapper: [`config::Config`] → [`server::Gateway::bind`]
//! → [`server::Gateway::serve`]. The demo (a complete gateway, agent and
//! demo desk on loopback) is the `kakehashi-demo` crate.

pub mod admission;
pub mod checkpoint;
pub mod cli;
pub mod config;
pub mod login;
pub mod metrics;
pub mod metrics_listener;
pub mod portal;
pub mod server;
pub mod syslog;

pub use config::Config;
pub use server::{BoundAddrs, Gateway};

pub use kakehashi_transport::shutdown_signal;
