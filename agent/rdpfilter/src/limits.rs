//! Size limits of one session's filter.

/// Size limits of the filter's buffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limits {
    /// Largest virtual channel message the filter reassembles before deciding about it.
    /// Only messages it must read whole are reassembled: `rdpdr` Device List Announces
    /// ([MS-RDPEFS] 2.2.2.9: 20 bytes a device plus its DeviceData, which is empty for a
    /// port or a smartcard, a name for a drive, names and cached configuration for a
    /// printer; real clients send a few KiB), `rdpdr` capability responses (under 100
    /// bytes) and `drdynvc` Create Requests (a channel name). A message that declares more
    /// is refused at its first chunk, before anything is held. Default 64 KiB: ten printers
    /// with 3 KiB of cached configuration each fit twice over.
    pub max_reassembly: usize,
    /// Largest CredSSP TSRequest. Default 1 MiB.
    pub max_credssp_message: usize,
    /// The session's memory budget: everything the filter holds at once (the incomplete
    /// PDU of each direction, every channel's undecided message with its frames, replies
    /// queued behind a message in flight), checked after every PDU. Over it the session
    /// ends with [`FilterError::OverBudget`](crate::FilterError::OverBudget). Default 2 MiB: one CredSSP message of
    /// [`max_credssp_message`](Self::max_credssp_message), or, once channels are up, two
    /// incomplete TPKTs (64 KiB each) and an undecided message of
    /// [`max_reassembly`](Self::max_reassembly) per channel direction with its frames.
    pub max_held: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_reassembly: 64 << 10,
            max_credssp_message: 1 << 20,
            max_held: 2 << 20,
        }
    }
}

impl Limits {
    /// Limits with the given reassembly bound and the default for the rest.
    pub fn with_max_reassembly(max_reassembly: usize) -> Self {
        Self {
            max_reassembly,
            ..Self::default()
        }
    }

    /// These limits with the given session budget.
    pub fn with_max_held(self, max_held: usize) -> Self {
        Self { max_held, ..self }
    }
}
