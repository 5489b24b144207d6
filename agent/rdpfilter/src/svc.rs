//! Static virtual channel traffic ([MS-RDPBCGR] 2.2.6.1): per channel and direction, the
//! chunks of one channel message (CHANNEL_FLAG_FIRST … CHANNEL_FLAG_LAST) are held until the
//! channel's handler can decide about the message, then forwarded as they came, dropped, or
//! replaced by a re-encoded message.
//!
//! A handler usually decides from the first bytes of a message (a clipboard header, a DVC
//! header), so large messages in allowed directions stream through without being buffered;
//! only messages the handler must read whole (an rdpdr device announce or capability
//! response, a DVC create request) are reassembled, up to
//! [`Limits::max_reassembly`]: a message still undecided that declares more
//! is refused at once. What the channels hold counts toward the session's budget
//! ([`StaticChannel::held`]).

use ironrdp_svc::{
    client_encode_svc_messages, server_encode_svc_messages, ChannelFlags, SvcMessage,
};

use crate::cliprdr::ClipFilter;
use crate::drdynvc::DvcFilter;
use crate::error::{proto, FilterError, Result};
use crate::event::{BlockedKind, ChannelAction, ChannelInfo, Direction, Event};
use crate::limits::Limits;
use crate::output::Output;
use crate::rdpdr::RdpdrFilter;
use crate::verdict::Verdict;
use crate::wire::Cur;

const CHANNEL_FLAG_FIRST: u32 = 0x0000_0001;
const CHANNEL_FLAG_LAST: u32 = 0x0000_0002;
const CHANNEL_FLAG_SHOW_PROTOCOL: u32 = 0x0000_0010;
const CHANNEL_PACKET_COMPRESSED: u32 = 0x0020_0000;

/// The parser of a filtered channel.
#[derive(Debug)]
pub(crate) enum Handler {
    Cliprdr(ClipFilter),
    Rdpdr(RdpdrFilter),
    Drdynvc(DvcFilter),
}

impl Handler {
    fn decide(
        &mut self,
        dir: Direction,
        msg: &[u8],
        total: usize,
        complete: bool,
    ) -> Result<Verdict> {
        match self {
            Handler::Cliprdr(h) => h.decide(dir, msg, complete),
            Handler::Rdpdr(h) => h.decide(dir, msg, total, complete),
            Handler::Drdynvc(h) => h.decide(dir, msg, complete),
        }
    }
}

/// Where one direction of a channel stands within a channel message.
#[derive(Debug, Default)]
enum Assembly {
    #[default]
    Idle,
    /// Undecided: the frames as received and the reassembled data so far.
    Pending {
        frames: Vec<u8>,
        data: Vec<u8>,
        total: usize,
        flags: u32,
        initiator: u16,
    },
    /// Decided "forward": the rest streams through.
    Forwarding { total: usize, seen: usize },
    /// Decided "drop": the rest is discarded.
    Dropping { total: usize, seen: usize },
}

/// One static channel of the session.
#[derive(Debug)]
pub(crate) struct StaticChannel {
    pub(crate) info: ChannelInfo,
    handler: Option<Handler>,
    asm: [Assembly; 2],
    reported: [bool; 2],
    /// Frames injected toward a direction while a forwarded message is still in flight there.
    queued: [Vec<u8>; 2],
}

/// What a channel needs from the session to emit frames.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ctx<'a> {
    pub(crate) limits: &'a Limits,
    /// MCS initiator to use per direction (client user id; server initiator).
    pub(crate) initiators: [Option<u16>; 2],
}

/// Encodes `payload` as a complete channel message in `dir` (chunked at 1600 bytes, the
/// size every peer accepts).
fn encode_message(
    dir: Direction,
    channel: u16,
    initiator: u16,
    payload: Vec<u8>,
    flags: u32,
) -> Result<Vec<u8>> {
    let msg = vec![SvcMessage::from(payload).with_flags(ChannelFlags::from_bits_retain(flags))];
    let encoded = match dir {
        Direction::ClientToServer => client_encode_svc_messages(msg, channel, initiator),
        Direction::ServerToClient => server_encode_svc_messages(msg, channel, initiator),
    };
    encoded.map_err(|e| proto(format!("encoding a channel message: {e}")))
}

impl StaticChannel {
    pub(crate) fn new(info: ChannelInfo, handler: Option<Handler>) -> Self {
        Self {
            info,
            handler,
            asm: Default::default(),
            reported: [false; 2],
            queued: Default::default(),
        }
    }

    /// Handles one Send Data PDU on this channel: `frame` is the whole TPKT frame, `data`
    /// its MCS user data (channel PDU header and chunk).
    pub(crate) fn process(
        &mut self,
        dir: Direction,
        frame: &[u8],
        initiator: u16,
        data: &[u8],
        ctx: Ctx<'_>,
        out: &mut Output,
    ) -> Result<()> {
        match self.info.action {
            ChannelAction::Allow => {
                out.sink(dir).extend_from_slice(frame);
                Ok(())
            }
            ChannelAction::Deny => {
                if !std::mem::replace(&mut self.reported[dir.index()], true) {
                    out.events.push(Event::Blocked {
                        what: BlockedKind::StaticChannel(self.info.name.clone()),
                        direction: dir,
                    });
                }
                Ok(())
            }
            ChannelAction::Filter => self.filter(dir, frame, initiator, data, ctx, out),
        }
    }

    fn filter(
        &mut self,
        dir: Direction,
        frame: &[u8],
        initiator: u16,
        data: &[u8],
        ctx: Ctx<'_>,
        out: &mut Output,
    ) -> Result<()> {
        let mut c = Cur::new(data, "channel pdu header");
        let length = c.u32le()? as usize;
        let flags = c.u32le()?;
        let chunk = &data[8..];
        if flags & CHANNEL_PACKET_COMPRESSED != 0 {
            return Err(FilterError::uninspectable(format!(
                "compressed chunk on filtered channel {}",
                self.info.name
            )));
        }
        let first = flags & CHANNEL_FLAG_FIRST != 0;
        let last = flags & CHANNEL_FLAG_LAST != 0;
        let d = dir.index();

        match &self.asm[d] {
            Assembly::Idle => {
                if !first {
                    if chunk.is_empty() && !last {
                        // A control chunk (suspend/resume) with no data.
                        out.sink(dir).extend_from_slice(frame);
                        return Ok(());
                    }
                    return Err(proto(format!(
                        "{}: chunk outside a message",
                        self.info.name
                    )));
                }
                self.asm[d] = Assembly::Pending {
                    frames: Vec::new(),
                    data: Vec::new(),
                    total: length,
                    flags,
                    initiator,
                };
            }
            Assembly::Pending { total, .. }
            | Assembly::Forwarding { total, .. }
            | Assembly::Dropping { total, .. } => {
                if first || *total != length {
                    return Err(proto(format!(
                        "{}: chunk does not continue its message",
                        self.info.name
                    )));
                }
            }
        }

        let advance = |seen: &mut usize, total: usize| -> Result<bool> {
            *seen += chunk.len();
            if *seen > total || last != (*seen == total) {
                return Err(proto("channel chunks disagree with the message length"));
            }
            Ok(last)
        };

        match &mut self.asm[d] {
            Assembly::Idle => unreachable!("set to Pending above"),
            Assembly::Forwarding { total, seen } => {
                let done = advance(seen, *total)?;
                out.sink(dir).extend_from_slice(frame);
                if done {
                    self.finish(dir, out);
                }
                Ok(())
            }
            Assembly::Dropping { total, seen } => {
                if advance(seen, *total)? {
                    self.finish(dir, out);
                }
                Ok(())
            }
            Assembly::Pending {
                frames,
                data: buf,
                total,
                ..
            } => {
                let mut seen = buf.len();
                let complete = advance(&mut seen, *total)?;
                frames.extend_from_slice(frame);
                buf.extend_from_slice(chunk);
                let total = *total;
                let handler = self
                    .handler
                    .as_mut()
                    .ok_or_else(|| proto("filtered channel without a handler"))?;
                let verdict = handler.decide(dir, buf, total, complete)?;
                // Undecided and declared larger than the filter may reassemble: it could
                // only be decided after holding too much, so refuse it now, from its first
                // chunk, rather than hold a part of it.
                if matches!(verdict, Verdict::NeedMore) && total > ctx.limits.max_reassembly {
                    return Err(FilterError::TooLarge {
                        what: "virtual channel message",
                        size: total,
                        limit: ctx.limits.max_reassembly,
                    });
                }
                self.apply(dir, verdict, complete, ctx, out)
            }
        }
    }

    fn apply(
        &mut self,
        dir: Direction,
        verdict: Verdict,
        complete: bool,
        ctx: Ctx<'_>,
        out: &mut Output,
    ) -> Result<()> {
        let d = dir.index();
        if let Verdict::NeedMore = verdict {
            if complete {
                return Err(proto(format!("{}: message too short", self.info.name)));
            }
            return Ok(());
        }
        let Assembly::Pending {
            frames,
            data,
            total,
            flags,
            initiator,
        } = std::mem::take(&mut self.asm[d])
        else {
            unreachable!("apply is called on a pending message");
        };
        let id = self.info.id;
        let show = flags & CHANNEL_FLAG_SHOW_PROTOCOL;
        let seen = data.len();
        match verdict {
            Verdict::NeedMore => unreachable!("handled above"),
            Verdict::Forward => {
                out.sink(dir).extend_from_slice(&frames);
                self.asm[d] = Assembly::Forwarding { total, seen };
            }
            Verdict::Drop {
                replacement,
                inject,
                events,
            } => {
                out.events.extend(events);
                if let Some(payload) = replacement {
                    let bytes = encode_message(dir, id, initiator, payload, show)?;
                    out.sink(dir).extend_from_slice(&bytes);
                }
                if let Some(payload) = inject {
                    let back = dir.reverse();
                    let from = ctx.initiators[back.index()]
                        .ok_or_else(|| proto("no mcs initiator known for an injected message"))?;
                    let bytes = encode_message(back, id, from, payload, show)?;
                    if matches!(self.asm[back.index()], Assembly::Forwarding { .. }) {
                        self.queued[back.index()].extend_from_slice(&bytes);
                    } else {
                        out.sink(back).extend_from_slice(&bytes);
                    }
                }
                self.asm[d] = Assembly::Dropping { total, seen };
            }
            Verdict::Replace { payload, events } => {
                if !complete {
                    return Err(proto("replacing an incomplete message"));
                }
                out.events.extend(events);
                let bytes = encode_message(dir, id, initiator, payload, show)?;
                out.sink(dir).extend_from_slice(&bytes);
                self.asm[d] = Assembly::Dropping { total, seen };
            }
        }
        if complete {
            self.finish(dir, out);
        }
        Ok(())
    }

    /// The message in `dir` is over: back to idle, and release frames queued behind it.
    fn finish(&mut self, dir: Direction, out: &mut Output) {
        let d = dir.index();
        self.asm[d] = Assembly::Idle;
        let queued = std::mem::take(&mut self.queued[d]);
        out.sink(dir).extend_from_slice(&queued);
    }

    /// Bytes held for undecided messages and queued injections.
    pub(crate) fn held(&self) -> usize {
        self.asm
            .iter()
            .map(|a| match a {
                Assembly::Pending { frames, data, .. } => frames.len() + data.len(),
                _ => 0,
            })
            .sum::<usize>()
            + self.queued.iter().map(Vec::len).sum::<usize>()
    }
}
