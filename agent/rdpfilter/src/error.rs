//! Errors of the filter. Every error is final: the filter refuses all later input.

/// Why the filter stopped the session.
///
/// The agent ends the session on any error; [`FilterError::reason_code`] gives the stable
/// code for the refusal and the audit log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FilterError {
    /// The ticket restricts something but the stream cannot be inspected: standard RDP
    /// security, an unknown security protocol, RDP-level encryption, or compressed data on
    /// a filtered channel.
    #[error("rdp stream cannot be inspected: {detail}")]
    Uninspectable {
        /// What could not be inspected.
        detail: String,
        /// A negative X.224 Connection Confirm for the client, when the refusal happens during
        /// the cleartext negotiation; the agent may send it before closing so that the client
        /// shows a security-layer error instead of a dropped connection.
        reply_to_client: Option<Vec<u8>>,
    },
    /// A peer sent something malformed or out of sequence.
    #[error("rdp protocol violation: {0}")]
    Protocol(String),
    /// A message is larger than the filter's limits allow it to buffer.
    #[error("{what} of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// What was too large.
        what: &'static str,
        /// Its size (declared or buffered).
        size: usize,
        /// The configured limit.
        limit: usize,
    },
    /// Holding what the session needs would take the filter over a memory budget: the
    /// session's ([`Limits::max_held`](crate::Limits)) or the one its agent shares among
    /// all sessions ([`SharedBudget`](crate::SharedBudget)).
    #[error(
        "rdp filter memory budget of the {scope} exceeded: {held} bytes held, limit {limit} bytes"
    )]
    OverBudget {
        /// Which budget.
        scope: BudgetScope,
        /// Bytes held (by the session, or by all sessions sharing the budget).
        held: usize,
        /// The budget.
        limit: usize,
    },
    /// The caller used the filter out of order (bytes while TLS is being set up, or
    /// `tls_established` outside the TLS step).
    #[error("filter used out of order: {0}")]
    WrongPhase(&'static str),
    /// An earlier error ended the session; nothing more is passed.
    #[error("the filter failed earlier and passes nothing more")]
    Closed,
}

impl FilterError {
    /// Stable reason code for the refusal: `rdp_uninspectable` when the stream could not be
    /// inspected (including oversized messages and anything else the filter would have had
    /// to hold beyond its budget), `protocol_error` otherwise.
    pub fn reason_code(&self) -> &'static str {
        match self {
            FilterError::Uninspectable { .. }
            | FilterError::TooLarge { .. }
            | FilterError::OverBudget { .. } => "rdp_uninspectable",
            FilterError::Protocol(_) | FilterError::WrongPhase(_) | FilterError::Closed => {
                "protocol_error"
            }
        }
    }

    /// Bytes the agent may send to the client before closing (a negative X.224 Connection
    /// Confirm), if any.
    pub fn reply_to_client(&self) -> Option<&[u8]> {
        match self {
            FilterError::Uninspectable {
                reply_to_client: Some(reply),
                ..
            } => Some(reply),
            _ => None,
        }
    }

    pub(crate) fn uninspectable(detail: impl Into<String>) -> Self {
        FilterError::Uninspectable {
            detail: detail.into(),
            reply_to_client: None,
        }
    }
}

/// Which memory budget a session went over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum BudgetScope {
    /// The session's own, [`Limits::max_held`](crate::Limits).
    Session,
    /// The one shared by every session of the agent, [`SharedBudget`](crate::SharedBudget).
    Agent,
}

impl BudgetScope {
    /// Stable lowercase name for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            BudgetScope::Session => "session",
            BudgetScope::Agent => "agent",
        }
    }
}

impl std::fmt::Display for BudgetScope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

pub(crate) type Result<T> = std::result::Result<T, FilterError>;

/// Shorthand for a protocol error.
pub(crate) fn proto(msg: impl Into<String>) -> FilterError {
    FilterError::Protocol(msg.into())
}
