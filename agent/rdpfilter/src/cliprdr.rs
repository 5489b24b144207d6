//! Clipboard direction on the `cliprdr` channel ([MS-RDPECLIP]).
//!
//! Clipboard contents travel only in Format Data Responses (2.2.5.2) and File Contents
//! Responses (2.2.5.4), each sent by the side that owns the data. In the forbidden direction
//! such a response is replaced by the same response with CB_RESPONSE_FAIL and no data, so
//! the asking side gets a clean "paste failed" instead of waiting; format lists and requests
//! still pass, so the allowed direction keeps working. The decision needs only the 8-byte
//! header (12 bytes for a file contents response), so large allowed pastes stream through.

use ironrdp_cliprdr::pdu::{ClipboardPdu, FileContentsResponse, FormatDataResponse};
use ironrdp_core::encode_vec;

use crate::error::{proto, Result};
use crate::event::{BlockedKind, Direction, Event};
use crate::verdict::Verdict;
use crate::wire::{u16le_at, u32le_at};

const CB_FORMAT_DATA_RESPONSE: u16 = 0x0005;
const CB_FILECONTENTS_RESPONSE: u16 = 0x0009;

/// Filters one direction of clipboard contents.
#[derive(Debug)]
pub(crate) struct ClipFilter {
    blocked: Direction,
}

impl ClipFilter {
    pub(crate) fn new(blocked: Direction) -> Self {
        Self { blocked }
    }

    pub(crate) fn decide(&mut self, dir: Direction, msg: &[u8], complete: bool) -> Result<Verdict> {
        if dir != self.blocked {
            return Ok(Verdict::Forward);
        }
        let (Some(msg_type), Some(data_len)) = (u16le_at(msg, 0), u32le_at(msg, 4)) else {
            // Shorter than a clipboard header: nothing a receiver would accept.
            return Ok(if complete {
                Verdict::drop_silently()
            } else {
                Verdict::NeedMore
            });
        };
        let (what, pdu) = match msg_type {
            CB_FORMAT_DATA_RESPONSE => (
                BlockedKind::ClipboardData,
                ClipboardPdu::FormatDataResponse(FormatDataResponse::new_error()),
            ),
            CB_FILECONTENTS_RESPONSE => {
                let Some(stream_id) = u32le_at(msg, 8) else {
                    return Ok(if complete {
                        Verdict::drop_silently()
                    } else {
                        Verdict::NeedMore
                    });
                };
                (
                    BlockedKind::FileContents,
                    ClipboardPdu::FileContentsResponse(FileContentsResponse::new_error(stream_id)),
                )
            }
            _ => return Ok(Verdict::Forward),
        };
        let replacement =
            encode_vec(&pdu).map_err(|e| proto(format!("encoding a clipboard reply: {e}")))?;
        // A response that already carries no data reveals nothing and is not an attempt.
        let carried = data_len
            > if msg_type == CB_FILECONTENTS_RESPONSE {
                4
            } else {
                0
            };
        let events = if carried {
            vec![Event::Blocked {
                what,
                direction: dir,
            }]
        } else {
            Vec::new()
        };
        Ok(Verdict::Drop {
            replacement: Some(replacement),
            inject: None,
            events,
        })
    }
}
