//! Dynamic virtual channels inside `drdynvc` ([MS-RDPEDYC]).
//!
//! The server opens a dynamic channel with a Create Request (2.2.2.1) naming it. For a name
//! the ticket does not allow, the filter does not forward the request; it answers the server
//! itself with a Create Response carrying a failure status (as a client without a listener
//! would), remembers the channel id, and drops anything either side later sends on it until
//! the server closes it. Data PDUs need only their header (command, channel id), so the
//! graphics pipeline and other allowed channels stream through.
//!
//! The client speaks only on channels the server opened: its Create Responses, data and
//! Close PDUs pass for an id whose server Create Request the filter allowed (until the
//! channel is closed) and are dropped otherwise, so a client cannot race ahead of a
//! refusal or answer for a channel the server never named.

use std::collections::{HashMap, HashSet};

use ironrdp_core::{decode, encode_vec};
use ironrdp_dvc::pdu::{CreateResponsePdu, CreationStatus, DrdynvcClientPdu, DrdynvcServerPdu};

use crate::error::{proto, FilterError, Result};
use crate::event::{BlockedKind, Direction, Event};
use crate::policy::Policy;
use crate::verdict::Verdict;

const CMD_CREATE: u8 = 0x01;
const CMD_DATA_FIRST: u8 = 0x02;
const CMD_DATA: u8 = 0x03;
const CMD_CLOSE: u8 = 0x04;
const CMD_CAPABILITY: u8 = 0x05;
const CMD_DATA_FIRST_COMPRESSED: u8 = 0x06;
const CMD_DATA_COMPRESSED: u8 = 0x07;
const CMD_SOFT_SYNC_REQUEST: u8 = 0x08;
const CMD_SOFT_SYNC_RESPONSE: u8 = 0x09;

/// Refused channel ids remembered at once.
const MAX_REFUSED: usize = 1024;
/// Allowed (open) channel ids remembered at once.
const MAX_OPEN: usize = 1024;

#[derive(Debug)]
pub(crate) struct DvcFilter {
    policy: Policy,
    /// Refused channel id → name.
    refused: HashMap<u32, String>,
    /// Channel ids the server opened with an allowed Create Request, until the client's
    /// Close (its own, or its answer to the server's).
    open: HashSet<u32>,
}

impl DvcFilter {
    pub(crate) fn new(policy: Policy) -> Self {
        Self {
            policy,
            refused: HashMap::new(),
            open: HashSet::new(),
        }
    }

    pub(crate) fn decide(&mut self, dir: Direction, msg: &[u8], complete: bool) -> Result<Verdict> {
        let Some(&header) = msg.first() else {
            return Ok(if complete {
                Verdict::drop_silently()
            } else {
                Verdict::NeedMore
            });
        };
        let cmd = header >> 4;
        let id_len = match header & 0x3 {
            0 => 1,
            1 => 2,
            2 => 4,
            _ => return Err(proto("drdynvc: invalid channel id size")),
        };
        match (dir, cmd) {
            (_, CMD_CAPABILITY)
            | (Direction::ServerToClient, CMD_SOFT_SYNC_REQUEST)
            | (Direction::ClientToServer, CMD_SOFT_SYNC_RESPONSE) => Ok(Verdict::Forward),
            (Direction::ServerToClient, CMD_CREATE) => {
                if !complete {
                    return Ok(Verdict::NeedMore);
                }
                self.create_request(msg)
            }
            (
                _,
                CMD_CREATE
                | CMD_DATA_FIRST
                | CMD_DATA
                | CMD_CLOSE
                | CMD_DATA_FIRST_COMPRESSED
                | CMD_DATA_COMPRESSED,
            ) => {
                let Some(raw) = msg.get(1..1 + id_len) else {
                    return Ok(if complete {
                        Verdict::drop_silently()
                    } else {
                        Verdict::NeedMore
                    });
                };
                let mut id = [0u8; 4];
                id[..id_len].copy_from_slice(raw);
                let id = u32::from_le_bytes(id);
                if dir == Direction::ClientToServer {
                    return Ok(self.client_pdu(id, cmd));
                }
                if !self.refused.contains_key(&id) {
                    // A server Close leaves the id open for the client's Close answer.
                    return Ok(Verdict::Forward);
                }
                if cmd == CMD_CLOSE {
                    self.refused.remove(&id);
                }
                Ok(Verdict::drop_silently())
            }
            _ => Err(proto(format!(
                "drdynvc: unexpected command {cmd:#x} ({dir})"
            ))),
        }
    }

    /// A client PDU on channel `id`: passed only on a channel the server opened.
    fn client_pdu(&mut self, id: u32, cmd: u8) -> Verdict {
        if !self.open.contains(&id) {
            return Verdict::drop_silently();
        }
        if cmd == CMD_CLOSE {
            self.open.remove(&id);
        }
        Verdict::Forward
    }

    fn create_request(&mut self, msg: &[u8]) -> Result<Verdict> {
        let pdu = decode::<DrdynvcServerPdu>(msg)
            .map_err(|e| proto(format!("drdynvc create request: {e}")))?;
        let DrdynvcServerPdu::Create(req) = pdu else {
            return Err(proto(
                "drdynvc: create command that is not a create request",
            ));
        };
        let id = req.channel_id();
        let name = req.channel_name().to_owned();
        if self.policy.dynamic_channel_allowed(&name) {
            if self.open.len() >= MAX_OPEN && !self.open.contains(&id) {
                return Err(FilterError::TooLarge {
                    what: "open dynamic channels",
                    size: self.open.len(),
                    limit: MAX_OPEN,
                });
            }
            self.refused.remove(&id);
            self.open.insert(id);
            return Ok(Verdict::Forward);
        }
        // A refused id is not open, whatever it was before.
        self.open.remove(&id);
        if self.refused.len() >= MAX_REFUSED && !self.refused.contains_key(&id) {
            return Err(FilterError::TooLarge {
                what: "refused dynamic channels",
                size: self.refused.len(),
                limit: MAX_REFUSED,
            });
        }
        let reply = encode_vec(&DrdynvcClientPdu::Create(CreateResponsePdu::new(
            id,
            CreationStatus::NO_LISTENER,
        )))
        .map_err(|e| proto(format!("encoding a drdynvc create response: {e}")))?;
        self.refused.insert(id, name.clone());
        Ok(Verdict::Drop {
            replacement: None,
            inject: Some(reply),
            events: vec![Event::Blocked {
                what: BlockedKind::DynamicChannel(name),
                direction: Direction::ServerToClient,
            }],
        })
    }
}
