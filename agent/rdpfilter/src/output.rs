//! What a filter call produces.

use crate::event::{Direction, Event};

/// What one call produced: bytes for each side (whole PDUs only) and events.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Output {
    /// Bytes to write to the RDP server.
    pub to_server: Vec<u8>,
    /// Bytes to write to the RDP client.
    pub to_client: Vec<u8>,
    /// Negotiation results and blocked attempts, in order.
    pub events: Vec<Event>,
}

impl Output {
    /// Nothing to send and nothing to report.
    pub fn is_empty(&self) -> bool {
        self.to_server.is_empty() && self.to_client.is_empty() && self.events.is_empty()
    }

    /// The bytes traveling in `dir`.
    pub(crate) fn sink(&mut self, dir: Direction) -> &mut Vec<u8> {
        match dir {
            Direction::ClientToServer => &mut self.to_server,
            Direction::ServerToClient => &mut self.to_client,
        }
    }
}
