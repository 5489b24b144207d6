//! [`RelayHandle`]: what the portal's dashboard (and the demo) may do with a
//! running relay — read its desks, sessions and metrics, and end a session —
//! handed to the portal when it is built.

use std::sync::Arc;

use kakehashi_proto::Reason;
use kakehashi_transport::Shutdown;

use crate::metrics::Metrics;
use crate::server::Relay;
use crate::shared::{LiveSessionPage, LiveSessionView, Shared};

/// A cheap, cloneable view of a running relay.
#[derive(Clone)]
pub struct RelayHandle {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for RelayHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayHandle")
            .field("gateway", &self.shared.cfg().name)
            .finish_non_exhaustive()
    }
}

impl Relay {
    /// A handle for the portal and the demo.
    pub fn handle(&self) -> RelayHandle {
        RelayHandle {
            shared: self.shared(),
        }
    }
}

impl RelayHandle {
    /// Desks whose agents have a live tunnel, sorted.
    pub fn online_desks(&self) -> Vec<String> {
        self.shared.online_desks()
    }

    /// Up to `limit` live sessions matching `filter`, and how many match.
    pub fn live_session_page(&self, filter: &str, limit: usize) -> LiveSessionPage {
        self.shared.live_session_page(filter, limit)
    }

    /// One live session.
    pub fn live_session(&self, id: &str) -> Option<LiveSessionView> {
        self.shared.live_session(id)
    }

    /// End a live session with `reason`; false when it is not live.
    pub fn end_session(&self, id: &str, reason: Reason) -> bool {
        self.shared.end_session(id, reason)
    }

    /// This gateway's name (its member id in a cluster).
    pub fn name(&self) -> &str {
        &self.shared.cfg().name
    }

    /// The relay's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    /// The process's shutdown, for tasks that must stop with the relay.
    pub fn shutdown(&self) -> Shutdown {
        self.shared.shutdown()
    }
}
