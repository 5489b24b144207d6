//! The MCS connect exchange ([MS-RDPBCGR] 2.2.1.3, 2.2.1.4): the client's Connect Initial
//! with its GCC Conference Create Request, and the server's Connect Response.
//!
//! Disallowed static channels are *renamed* in the client's CS_NET block rather than
//! removed: the client matches the ids of the server's SC_NET block to its own channel list
//! by position, so the list must keep its length and order. A renamed channel is one the
//! server has no handler for ("accepted" but never served), and the filter drops every PDU
//! on its id. Renaming keeps every BER/PER length unchanged, so the edit is a few bytes in
//! place in a structure parsed end to end; ironrdp-pdu decodes the same PDU as a cross-check.

use ironrdp_core::decode;
use ironrdp_pdu::gcc::EncryptionLevel;
use ironrdp_pdu::mcs::{ConnectInitial, ConnectResponse};

use crate::error::{proto, FilterError, Result};
use crate::event::{BlockedKind, ChannelAction, Direction, Event};
use crate::policy::Policy;
use crate::wire::{ansi_name, put_u32le, Cur};

const CS_NET: u16 = 0xc003;
const CS_MULTITRANSPORT: u16 = 0xc00a;
const T124_OID: [u8; 5] = [0x00, 0x14, 0x7c, 0x00, 0x01];

/// X.224 Data TPDU header length after the TPKT header.
const X224_DATA: usize = 3;

/// A static channel from the client's request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Requested {
    pub(crate) name: String,
    pub(crate) action: ChannelAction,
}

/// Where the GCC user data blocks sit in a Connect Initial payload.
fn locate_client_blocks(payload: &[u8]) -> Result<(usize, usize)> {
    let mut c = Cur::new(payload, "mcs connect initial");
    c.expect(0x7f, "tag")?;
    c.expect(0x65, "tag")?;
    let len = c.ber_len()?;
    if c.remaining() != len {
        return Err(proto("mcs connect initial: length disagrees with the tpdu"));
    }
    // callingDomainSelector, calledDomainSelector, upwardFlag, three DomainParameters.
    for tag in [0x04, 0x04, 0x01, 0x30, 0x30, 0x30] {
        c.expect(tag, "field tag")?;
        let l = c.ber_len()?;
        c.take(l)?;
    }
    c.expect(0x04, "userData tag")?;
    let l = c.ber_len()?;
    if c.remaining() != l {
        return Err(proto("mcs connect initial: userData is not the last field"));
    }
    // GCC ConnectData (PER, [T.124] / [MS-RDPBCGR] 2.2.1.3.1).
    c.expect(0x00, "t.124 key choice")?;
    c.expect(0x05, "t.124 object id length")?;
    if c.take(5)? != T124_OID {
        return Err(proto("gcc: not a t.124 conference"));
    }
    c.per_len()?; // connectPDU length (covers the rest; peers disagree on its exact value)
    c.expect(0x00, "conferenceCreateRequest choice")?;
    c.expect(0x08, "conferenceCreateRequest selection")?;
    let digits = usize::from(c.u8()?) + 1; // NumericString, size >= 1
    c.take(digits.div_ceil(2))?;
    c.take(1)?; // padding
    c.expect(0x01, "userData set count")?;
    c.expect(0xc0, "h221NonStandard choice")?;
    let key_len = usize::from(c.u8()?) + 4;
    if c.take(key_len)? != b"Duca" {
        return Err(proto("gcc: h.221 key is not Duca"));
    }
    let blocks_len = c.per_len()?;
    if c.remaining() != blocks_len {
        return Err(proto("gcc: client data length disagrees with the pdu"));
    }
    Ok((c.pos(), blocks_len))
}

/// Parses the Connect Initial in `frame` (a whole TPKT frame), renames denied channels and
/// switches off multitransport, in place. Returns the client's channels in order.
pub(crate) fn rewrite_connect_initial(
    frame: &mut [u8],
    policy: &Policy,
    events: &mut Vec<Event>,
) -> Result<Vec<Requested>> {
    let base = 4 + X224_DATA;
    let payload = frame
        .get(base..)
        .ok_or_else(|| proto("mcs connect initial: truncated"))?;
    let reference = decode::<ConnectInitial>(payload)
        .map_err(|e| proto(format!("mcs connect initial: {e}")))?;
    let (start, len) = locate_client_blocks(payload)?;

    let mut channels = Vec::new();
    let mut net_defs: Option<usize> = None;
    let mut multitransport: Option<usize> = None;
    let blocks = &payload[start..start + len];
    let mut c = Cur::new(blocks, "gcc client data block");
    while c.remaining() > 0 {
        let at = c.pos();
        let ty = c.u16le()?;
        let blen = usize::from(c.u16le()?);
        if blen < 4 {
            return Err(proto("gcc client data block shorter than its header"));
        }
        let body = c.take(blen - 4)?;
        match ty {
            CS_NET => {
                if net_defs.is_some() {
                    return Err(proto("gcc: two CS_NET blocks"));
                }
                let mut b = Cur::new(body, "CS_NET");
                let count = b.u32le()? as usize;
                if count > 31 || b.remaining() < count * 12 {
                    return Err(proto("CS_NET: bad channel count"));
                }
                for _ in 0..count {
                    let raw = b.take(8)?;
                    b.take(4)?; // options
                    channels.push(ansi_name(raw));
                }
                net_defs = Some(base + start + at + 8);
            }
            CS_MULTITRANSPORT if body.len() >= 4 => {
                multitransport = Some(base + start + at + 4);
            }
            _ => {}
        }
    }

    // Cross-check with ironrdp's decoding of the same PDU.
    let reference: Vec<String> = reference
        .channel_names()
        .unwrap_or_default()
        .iter()
        .map(|d| ansi_name(d.name.as_bytes()))
        .collect();
    if reference != channels {
        return Err(proto("gcc: channel list parsed two ways disagrees"));
    }

    // One entry per name: the filter keeps one parser per channel, and a list naming
    // `rdpdr` 31 times would give the client 31 buffers to fill (#16). Servers match
    // names without regard to case, and so does the policy.
    for (i, name) in channels.iter().enumerate() {
        if channels[..i].iter().any(|n| n.eq_ignore_ascii_case(name)) {
            return Err(proto(format!(
                "gcc: the client lists static channel {name:?} twice"
            )));
        }
    }

    let mut out = Vec::with_capacity(channels.len());
    for (i, name) in channels.into_iter().enumerate() {
        let action = policy.static_channel(&name);
        if action == ChannelAction::Deny {
            let mut renamed = [0u8; 8];
            let text = format!("kkhx{i:02}");
            renamed[..text.len()].copy_from_slice(text.as_bytes());
            let off = net_defs.ok_or_else(|| proto("gcc: channels without CS_NET"))? + i * 12;
            frame[off..off + 8].copy_from_slice(&renamed);
            events.push(Event::Blocked {
                what: BlockedKind::StaticChannel(name.clone()),
                direction: Direction::ClientToServer,
            });
        }
        out.push(Requested { name, action });
    }
    // No UDP side transports: every byte of the session must pass this filter.
    if let Some(off) = multitransport {
        put_u32le(frame, off, 0);
    }
    Ok(out)
}

/// The channel ids from the server's Connect Response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Granted {
    pub(crate) io_channel: u16,
    pub(crate) message_channel: Option<u16>,
    pub(crate) ids: Vec<u16>,
}

/// Parses the Connect Response in `frame`; refuses RDP-level encryption.
pub(crate) fn parse_connect_response(frame: &[u8]) -> Result<Granted> {
    let payload = frame
        .get(4 + X224_DATA..)
        .ok_or_else(|| proto("mcs connect response: truncated"))?;
    let rsp = decode::<ConnectResponse>(payload)
        .map_err(|e| proto(format!("mcs connect response: {e}")))?;
    let blocks = rsp.conference_create_response.gcc_blocks();
    if !blocks.security.encryption_method.is_empty()
        || blocks.security.encryption_level != EncryptionLevel::None
    {
        return Err(FilterError::uninspectable(
            "the server applies RDP-level encryption inside TLS",
        ));
    }
    Ok(Granted {
        io_channel: blocks.network.io_channel,
        message_channel: blocks
            .message_channel
            .as_ref()
            .map(|m| m.mcs_message_channel_id),
        ids: blocks.network.channel_ids.clone(),
    })
}
