//! Device redirection on the `rdpdr` channel ([MS-RDPEFS]).
//!
//! The client announces its devices in a Client Device List Announce Request (2.2.2.9);
//! the filter removes the devices whose type the ticket denies and re-encodes the list with
//! the new count, keeping the bytes of the allowed devices as they were. I/O requests and
//! completions for a removed device id are dropped.
//!
//! Every client message must be exactly one PDU, or a Device List Announce could ride
//! behind a harmless PDU to a server that reads on. rdpdr headers carry no length, so the
//! filter works each PDU's length out from its fields and refuses a message with more
//! after it than [`MAX_PADDING`]: fixed sizes for the Client Announce Reply, the name's
//! length for the Client Name Request, the capability headers for the Client Capability
//! Response, the count for a Device List Remove, and, for a Device I/O Response, the
//! layout of the server's request it answers (remembered by CompletionId: a Length and
//! that many bytes after a read, query or device control; a few fixed bytes after the
//! rest). A response to no outstanding request, printer PDUs (MS-RDPEPC defines none from
//! the client) and unknown packets are dropped.

use std::collections::{HashMap, HashSet};

use crate::error::{proto, FilterError, Result};
use crate::event::{BlockedKind, DeviceKind, Direction, Event};
use crate::policy::Policy;
use crate::verdict::Verdict;
use crate::wire::{ansi_name, u16le_at, u32le_at, Cur};

const RDPDR_CTYP_CORE: u16 = 0x4472;
const PAKID_CORE_CLIENTID_CONFIRM: u16 = 0x4343;
const PAKID_CORE_CLIENT_NAME: u16 = 0x434e;
const PAKID_CORE_CLIENT_CAPABILITY: u16 = 0x4350;
const PAKID_CORE_DEVICELIST_ANNOUNCE: u16 = 0x4441;
const PAKID_CORE_DEVICELIST_REMOVE: u16 = 0x444d;
const PAKID_CORE_DEVICE_IOREQUEST: u16 = 0x4952;
const PAKID_CORE_DEVICE_IOCOMPLETION: u16 = 0x4943;

/// IRP major functions whose response is a 32-bit Length and that many bytes (DR_READ_RSP,
/// DR_DRIVE_QUERY_INFORMATION_RSP, DR_DRIVE_QUERY_VOLUME_INFORMATION_RSP,
/// DR_DRIVE_QUERY_DIRECTORY_RSP, DR_CONTROL_RSP). The others answer with at most 5 bytes.
const LENGTH_PREFIXED_RESPONSES: [u32; 5] = [0x03, 0x05, 0x0a, 0x0c, 0x0e];

/// Bytes a client may leave after a PDU's last field: the largest padding [MS-RDPEFS] puts
/// there (DR_CLOSE_RSP and DR_LOCK_RSP end in 5 bytes of padding; clients add one after a
/// directory listing). Every client PDU that carries anything is at least 8 bytes (the
/// header and a 32-bit field), so none hides in them.
pub(crate) const MAX_PADDING: usize = 5;

/// The DR_DEVICE_IOCOMPLETION header: RDPDR header, DeviceId, CompletionId, IoStatus.
const IO_RESPONSE_HEADER: usize = 16;

/// Removed device ids remembered per session.
const MAX_REMOVED: usize = 4096;
/// Outstanding server I/O requests remembered per session.
const MAX_OUTSTANDING: usize = 4096;

#[derive(Debug)]
pub(crate) struct RdpdrFilter {
    policy: Policy,
    removed: HashSet<u32>,
    /// The server's outstanding I/O requests: CompletionId → (DeviceId, MajorFunction).
    outstanding: HashMap<u32, (u32, u32)>,
}

/// The message holds one PDU of `len` bytes (or a little padding more); `None`: the
/// fields giving the length have not arrived yet.
fn one_pdu(what: &str, len: Option<usize>, total: usize, complete: bool) -> Result<Verdict> {
    match len {
        None if complete => Ok(Verdict::drop_silently()),
        None => Ok(Verdict::NeedMore),
        // Shorter than its own fields say: malformed, and nothing a second PDU could hide in.
        Some(len) if total < len => Ok(Verdict::drop_silently()),
        Some(len) if total - len <= MAX_PADDING => Ok(Verdict::Forward),
        Some(len) => Err(proto(format!(
            "rdpdr: {} bytes after a {what} (one message, one pdu)",
            total - len
        ))),
    }
}

impl RdpdrFilter {
    pub(crate) fn new(policy: Policy) -> Self {
        Self {
            policy,
            removed: HashSet::new(),
            outstanding: HashMap::new(),
        }
    }

    /// `msg` is the start of a channel message of `total` bytes (all of it if `complete`).
    pub(crate) fn decide(
        &mut self,
        dir: Direction,
        msg: &[u8],
        total: usize,
        complete: bool,
    ) -> Result<Verdict> {
        let (Some(component), Some(packet)) = (u16le_at(msg, 0), u16le_at(msg, 2)) else {
            return Ok(if complete {
                Verdict::drop_silently()
            } else {
                Verdict::NeedMore
            });
        };
        let field = |off: usize| u32le_at(msg, off).map(|v| v as usize);
        match (dir, component, packet) {
            (Direction::ServerToClient, RDPDR_CTYP_CORE, PAKID_CORE_DEVICE_IOREQUEST) => {
                self.io_request(msg, complete)
            }
            (Direction::ServerToClient, _, _) => Ok(Verdict::Forward),
            (_, RDPDR_CTYP_CORE, PAKID_CORE_DEVICELIST_ANNOUNCE) => {
                if !complete {
                    return Ok(Verdict::NeedMore);
                }
                self.filter_announce(msg)
            }
            (_, RDPDR_CTYP_CORE, PAKID_CORE_DEVICE_IOCOMPLETION) => {
                self.io_response(msg, total, complete)
            }
            (_, RDPDR_CTYP_CORE, PAKID_CORE_CLIENTID_CONFIRM) => {
                one_pdu("client announce reply", Some(12), total, complete)
            }
            (_, RDPDR_CTYP_CORE, PAKID_CORE_CLIENT_NAME) => {
                let len = field(12).and_then(|n| n.checked_add(16));
                one_pdu("client name request", len, total, complete)
            }
            (_, RDPDR_CTYP_CORE, PAKID_CORE_DEVICELIST_REMOVE) => {
                let len = field(4).and_then(|n| n.checked_mul(4)?.checked_add(8));
                one_pdu("device list remove", len, total, complete)
            }
            (_, RDPDR_CTYP_CORE, PAKID_CORE_CLIENT_CAPABILITY) => {
                if !complete {
                    return Ok(Verdict::NeedMore);
                }
                let len = capability_response_len(msg)?;
                one_pdu("client capability response", Some(len), total, complete)
            }
            // Printer PDUs (MS-RDPEPC cache data, XPS mode) travel from the server only;
            // anything else is no client PDU at all.
            _ => Ok(Verdict::drop_silently()),
        }
    }

    /// A server I/O request: dropped for a removed device, else remembered until answered.
    fn io_request(&mut self, msg: &[u8], complete: bool) -> Result<Verdict> {
        // DeviceId, FileId, CompletionId, MajorFunction.
        let (Some(device), Some(completion), Some(major)) =
            (u32le_at(msg, 4), u32le_at(msg, 12), u32le_at(msg, 16))
        else {
            return Ok(if complete {
                Verdict::drop_silently()
            } else {
                Verdict::NeedMore
            });
        };
        if self.removed.contains(&device) {
            return Ok(Verdict::drop_silently());
        }
        if self.outstanding.len() >= MAX_OUTSTANDING && !self.outstanding.contains_key(&completion)
        {
            return Err(FilterError::TooLarge {
                what: "outstanding rdpdr i/o requests",
                size: self.outstanding.len(),
                limit: MAX_OUTSTANDING,
            });
        }
        self.outstanding.insert(completion, (device, major));
        Ok(Verdict::Forward)
    }

    /// A client I/O response: forwarded only as the one answer to an outstanding request,
    /// with nothing after the response that request calls for.
    fn io_response(&mut self, msg: &[u8], total: usize, complete: bool) -> Result<Verdict> {
        let (Some(device), Some(completion)) = (u32le_at(msg, 4), u32le_at(msg, 8)) else {
            return Ok(if complete {
                Verdict::drop_silently()
            } else {
                Verdict::NeedMore
            });
        };
        if self.removed.contains(&device) {
            return Ok(Verdict::drop_silently());
        }
        let Some(&(asked, major)) = self.outstanding.get(&completion) else {
            return Ok(Verdict::drop_silently());
        };
        if asked != device {
            return Ok(Verdict::drop_silently());
        }
        let rest = total.saturating_sub(IO_RESPONSE_HEADER);
        let verdict = if rest <= MAX_PADDING {
            Verdict::Forward
        } else if LENGTH_PREFIXED_RESPONSES.contains(&major) {
            let len = u32le_at(msg, IO_RESPONSE_HEADER)
                .and_then(|n| (n as usize).checked_add(IO_RESPONSE_HEADER + 4));
            one_pdu("device i/o response", len, total, complete)?
        } else {
            return Err(proto(format!(
                "rdpdr: {rest} bytes in a device i/o response to major function {major:#x} \
                 (one message, one pdu)"
            )));
        };
        if matches!(verdict, Verdict::Forward) {
            self.outstanding.remove(&completion);
        }
        Ok(verdict)
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

/// The length of a Client Core Capability Response (2.2.2.7): the header, numCapabilities
/// and padding, then capabilities each as long as its CapabilityLength (header included).
fn capability_response_len(msg: &[u8]) -> Result<usize> {
    let mut c = Cur::new(msg, "rdpdr client capability response");
    c.take(4)?; // RDPDR_HEADER
    let count = c.u16le()?;
    c.take(2)?; // padding
    for _ in 0..count {
        c.u16le()?; // CapabilityType
        let len = usize::from(c.u16le()?);
        if len < 8 {
            return Err(proto("rdpdr: capability shorter than its header"));
        }
        c.take(len - 4)?;
    }
    Ok(c.pos())
}
