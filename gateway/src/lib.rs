//! The Kakehashi gateway process: the configuration file ([`config`]), the
//! wiring of the relay (`kakehashi-relay`) with the portal, the `/metrics`
//! listener, audit checkpoints and syslog forwarding ([`gateway`]), and the
//! command-line tools on the store ([`cli`]).
//!
//! `main.rs` is a thin wrapper: [`config::Config`] → [`Gateway::bind`] →
//! [`Gateway::serve`]. The demo (a complete gateway, agent and demo desk on
//! loopback) is the `kakehashi-demo` crate.

pub mod checkpoint;
pub mod cli;
pub mod config;
pub mod gateway;
pub mod metrics_listener;
pub mod syslog;

pub use config::Config;
pub use gateway::Gateway;
pub use kakehashi_relay::BoundAddrs;

pub use kakehashi_transport::shutdown_signal;
