//! Device redirection on the `rdpdr` channel ([MS-RDPEFS]).
//!
//! The client announces its devices in a Client Device List Announce Request (2.2.2.9);
//! the filter removes the devices whose type the ticket denies and re-encodes the list with
//! the new count, keeping the bytes of the allowed devices as they were. I/O requests and
//! completions for a removed device id are dropped, and so are printer cache messages when
//! printers are denied.

use std::collections::HashSet;

use crate::error::{FilterError, Result};
use crate::event::{BlockedKind, DeviceKind, Direction, Event};
use crate::policy::Policy;
use crate::svc::Verdict;
use crate::wire::{ansi_name, u16le_at, u32le_at, Cur};

const RDPDR_CTYP_CORE: u16 = 0x4472;
const RDPDR_CTYP_PRN: u16 = 0x5052;
const PAKID_CORE_DEVICELIST_ANNOUNCE: u16 = 0x4441;
const PAKID_CORE_DEVICE_IOREQUEST: u16 = 0x4952;
const PAKID_CORE_DEVICE_IOCOMPLETION: u16 = 0x4943;

/// Removed device ids remembered per session.
const MAX_REMOVED: usize = 4096;

#[derive(Debug)]
pub(crate) struct RdpdrFilter {
    policy: Policy,
    removed: HashSet<u32>,
}

impl RdpdrFilter {
    pub(crate) fn new(policy: Policy) -> Self {
        Self {
            policy,
            removed: HashSet::new(),
        }
    }

    pub(crate) fn decide(
        &mut self,
        dir: Direction,
        msg: &[u8],
        _total: usize,
        complete: bool,
    ) -> Result<Verdict> {
        let (Some(component), Some(packet)) = (u16le_at(msg, 0), u16le_at(msg, 2)) else {
            return Ok(if complete {
                Verdict::drop_silently()
            } else {
                Verdict::NeedMore
            });
        };
        match (dir, component, packet) {
            (Direction::ClientToServer, RDPDR_CTYP_CORE, PAKID_CORE_DEVICELIST_ANNOUNCE) => {
                if !complete {
                    return Ok(Verdict::NeedMore);
                }
                self.filter_announce(msg)
            }
            (Direction::ClientToServer, RDPDR_CTYP_CORE, PAKID_CORE_DEVICE_IOCOMPLETION)
            | (Direction::ServerToClient, RDPDR_CTYP_CORE, PAKID_CORE_DEVICE_IOREQUEST) => {
                match u32le_at(msg, 4) {
                    Some(id) if self.removed.contains(&id) => Ok(Verdict::drop_silently()),
                    Some(_) => Ok(Verdict::Forward),
                    None if complete => Ok(Verdict::drop_silently()),
                    None => Ok(Verdict::NeedMore),
                }
            }
            (Direction::ClientToServer, RDPDR_CTYP_PRN, _) if !self.policy.controls.printer => {
                Ok(Verdict::drop_silently())
            }
            _ => Ok(Verdict::Forward),
        }
    }

    fn filter_announce(&mut self, msg: &[u8]) -> Result<Verdict> {
        let mut c = Cur::new(msg, "rdpdr device list announce");
        c.take(4)?; // RDPDR_HEADER
        let count = c.u32le()?;
        let mut kept = Vec::with_capacity(msg.len());
        let mut kept_count: u32 = 0;
        let mut events = Vec::new();
        for _ in 0..count {
            let start = c.pos();
            let kind = DeviceKind::from_wire(c.u32le()?);
            let id = c.u32le()?;
            let name = ansi_name(c.take(8)?);
            let data_len = c.u32le()? as usize;
            c.take(data_len)?;
            if self.policy.device_allowed(kind) {
                kept.extend_from_slice(&msg[start..c.pos()]);
                kept_count += 1;
            } else {
                if self.removed.len() >= MAX_REMOVED {
                    return Err(FilterError::TooLarge {
                        what: "removed rdpdr devices",
                        size: self.removed.len(),
                        limit: MAX_REMOVED,
                    });
                }
                self.removed.insert(id);
                events.push(Event::Blocked {
                    what: BlockedKind::Device { kind, name },
                    direction: Direction::ClientToServer,
                });
            }
        }
        if events.is_empty() && c.remaining() == 0 {
            return Ok(Verdict::Forward);
        }
        // Re-encode: same header, new count, the kept devices; trailing bytes are not kept.
        let mut payload = Vec::with_capacity(8 + kept.len());
        payload.extend_from_slice(&msg[..4]);
        payload.extend_from_slice(&kept_count.to_le_bytes());
        payload.extend_from_slice(&kept);
        Ok(Verdict::Replace { payload, events })
    }
}
