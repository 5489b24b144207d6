//! The capability exchange on the I/O channel ([MS-RDPBCGR] 2.2.1.13): the filter clears the
//! virtual-channel compression flags of the Virtual Channel Capability Set (2.2.7.1.10) in
//! both the server's Demand Active and the client's Confirm Active, so no peer compresses
//! channel data and every chunk stays readable.

use crate::error::{proto, Result};
use crate::event::Direction;
use crate::wire::{u16le_at, u32le_at, Cur};

const PDUTYPE_DEMANDACTIVEPDU: u16 = 0x1;
const PDUTYPE_CONFIRMACTIVEPDU: u16 = 0x3;
const TS_PROTOCOL_VERSION: u16 = 0x10;
const CAPSTYPE_VIRTUALCHANNEL: u16 = 0x14;
/// VCCAPS_COMPR_SC | VCCAPS_COMPR_CS_8K.
const VCCAPS_COMPRESSION: u32 = 0x1 | 0x2;

/// Clears the compression flags in `data` (the user data of a Send Data PDU on the I/O
/// channel) when it is a Demand Active or Confirm Active PDU. Returns whether it changed
/// anything. Other I/O channel PDUs are left alone.
///
/// A Share Control Header is told apart from a Basic Security Header (Client Info,
/// licensing) by its pduType word: the security header's flagsHi word, in the same place,
/// is zero for every PDU sent with Enhanced RDP Security.
pub(crate) fn clear_vc_compression(data: &mut [u8], dir: Direction) -> Result<bool> {
    let (Some(total), Some(pdu_type)) = (u16le_at(data, 0), u16le_at(data, 2)) else {
        return Ok(false);
    };
    if pdu_type & 0xfff0 != TS_PROTOCOL_VERSION {
        return Ok(false);
    }
    let kind = pdu_type & 0xf;
    let expected = match dir {
        Direction::ServerToClient => PDUTYPE_DEMANDACTIVEPDU,
        Direction::ClientToServer => PDUTYPE_CONFIRMACTIVEPDU,
    };
    if kind != PDUTYPE_DEMANDACTIVEPDU && kind != PDUTYPE_CONFIRMACTIVEPDU {
        return Ok(false);
    }
    if kind != expected {
        return Err(proto("capability pdu sent in the wrong direction"));
    }
    if usize::from(total) > data.len() {
        return Err(proto("share control header longer than its pdu"));
    }
    let mut c = Cur::new(&data[..usize::from(total)], "capability pdu");
    c.take(6)?; // share control header
    c.u32le()?; // shareId
    if kind == PDUTYPE_CONFIRMACTIVEPDU {
        c.u16le()?; // originatorId
    }
    let source_len = usize::from(c.u16le()?);
    let caps_len = usize::from(c.u16le()?);
    c.take(source_len)?;
    let caps_start = c.pos();
    let count = c.u16le()?;
    c.u16le()?; // pad2Octets
    if caps_len < 4 || caps_start + caps_len > usize::from(total) {
        return Err(proto(
            "capability pdu: lengthCombinedCapabilities out of range",
        ));
    }
    let end = caps_start + caps_len;
    let mut at = c.pos();
    let mut changed = false;
    for _ in 0..count {
        let ty = u16le_at(data, at).ok_or_else(|| proto("capability set truncated"))?;
        let len =
            usize::from(u16le_at(data, at + 2).ok_or_else(|| proto("capability set truncated"))?);
        if len < 4 || at + len > end {
            return Err(proto("capability set length out of range"));
        }
        if ty == CAPSTYPE_VIRTUALCHANNEL {
            if len < 8 {
                return Err(proto("virtual channel capability set too short"));
            }
            let flags = u32le_at(data, at + 4).ok_or_else(|| proto("capability set truncated"))?;
            if flags & VCCAPS_COMPRESSION != 0 {
                let cleared = flags & !VCCAPS_COMPRESSION;
                data[at + 4..at + 8].copy_from_slice(&cleared.to_le_bytes());
                changed = true;
            }
        }
        at += len;
    }
    Ok(changed)
}
