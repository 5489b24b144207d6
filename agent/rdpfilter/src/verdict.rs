//! What a channel handler decides about one channel message; [`crate::svc`]
//! carries it out.

use crate::event::Event;

/// A handler's decision about one channel message.
#[derive(Debug)]
pub(crate) enum Verdict {
    /// Not enough of the message yet (never returned for a complete message).
    NeedMore,
    /// Forward the message unchanged.
    Forward,
    /// Drop the message; optionally send `replacement` in its place, `inject` back to the
    /// sender on the same channel, and report `events`.
    Drop {
        replacement: Option<Vec<u8>>,
        inject: Option<Vec<u8>>,
        events: Vec<Event>,
    },
    /// Send `payload` instead of the (complete) message.
    Replace {
        payload: Vec<u8>,
        events: Vec<Event>,
    },
}

impl Verdict {
    pub(crate) fn drop_silently() -> Self {
        Verdict::Drop {
            replacement: None,
            inject: None,
            events: Vec::new(),
        }
    }
}
