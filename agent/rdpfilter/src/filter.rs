//! The filter of one session: the phases of the connection, the PDU framing of
//! each direction, and the static channels with their handlers.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use ironrdp_core::decode;
use ironrdp_pdu::mcs::McsMessage;
use ironrdp_pdu::nego::SecurityProtocol;
use ironrdp_pdu::x224::X224;
use kakehashi_proto::Controls;

use crate::error::{proto, BudgetScope, FilterError, Result};
use crate::event::{ChannelAction, ChannelInfo, Direction, Event};
use crate::limits::Limits;
use crate::output::Output;
use crate::policy::Policy;
use crate::svc::{Handler, StaticChannel};
use crate::{caps, cliprdr, drdynvc, frame, gcc, rdpdr, svc, x224};

/// A memory budget shared by the filters of many sessions (one per agent, so a few hostile
/// sessions together cannot exhaust the desk PC). Each filter given it charges what it
/// holds after every PDU and gives the bytes back as it shrinks, fails or is dropped; the
/// session whose charge takes the total over the limit ends with
/// [`FilterError::OverBudget`] ([`BudgetScope::Agent`]).
#[derive(Debug)]
pub struct SharedBudget {
    limit: usize,
    used: AtomicUsize,
}

impl SharedBudget {
    /// A budget of `limit` bytes, nothing charged yet.
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            limit,
            used: AtomicUsize::new(0),
        })
    }

    /// The limit in bytes.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Bytes charged by all filters now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }
}

/// Where the session stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Phase {
    /// Waiting for the client's X.224 Connection Request (cleartext).
    ConnectionRequest,
    /// Waiting for the server's X.224 Connection Confirm (cleartext).
    ConnectionConfirm,
    /// The server selected `protocol`: the agent sets up TLS on both legs, then calls
    /// [`Filter::tls_established`]. No bytes are accepted until then.
    NeedTls {
        /// The selected security protocol (TLS, HYBRID or HYBRID_EX).
        protocol: SecurityProtocol,
    },
    /// CredSSP (NLA) messages pass through unchanged.
    CredSsp,
    /// The MCS connect exchange.
    Connecting,
    /// Channels are known; every PDU is filtered.
    Active,
    /// The ticket allows everything: bytes pass untouched and unparsed; the agent need not
    /// terminate TLS.
    PassThrough,
    /// An error ended the session (or the server refused the negotiation); nothing passes.
    Failed,
}

/// The RDP channel filter of one session.
#[derive(Debug)]
pub struct Filter {
    policy: Policy,
    limits: Limits,
    phase: Phase,
    /// Incomplete PDU per direction.
    bufs: [Vec<u8>; 2],
    /// HYBRID_EX: the server's Early User Authorization Result is still to come.
    euar_pending: bool,
    requested: SecurityProtocol,
    forwarded: SecurityProtocol,
    selected: Option<SecurityProtocol>,
    client_channels: Option<Vec<gcc::Requested>>,
    channels: Vec<StaticChannel>,
    by_id: HashMap<u16, usize>,
    io_channel: u16,
    message_channel: Option<u16>,
    user_id: Option<u16>,
    /// Last MCS initiator seen per direction (for injected PDUs).
    initiators: [Option<u16>; 2],
    /// The agent's budget across sessions, if any, and the bytes charged to it.
    shared: Option<Arc<SharedBudget>>,
    charged: usize,
}

impl Drop for Filter {
    fn drop(&mut self) {
        self.release();
    }
}

impl Filter {
    /// A filter enforcing `controls` with default [`Limits`].
    pub fn new(controls: Controls) -> Self {
        Self::with_limits(controls, Limits::default())
    }

    /// A filter enforcing `controls` with the given limits.
    pub fn with_limits(controls: Controls, limits: Limits) -> Self {
        let policy = Policy::new(controls);
        Self {
            phase: if policy.restrictive() {
                Phase::ConnectionRequest
            } else {
                Phase::PassThrough
            },
            policy,
            limits,
            bufs: Default::default(),
            euar_pending: false,
            requested: SecurityProtocol::empty(),
            forwarded: SecurityProtocol::empty(),
            selected: None,
            client_channels: None,
            channels: Vec::new(),
            by_id: HashMap::new(),
            io_channel: 0,
            message_channel: None,
            user_id: None,
            initiators: [None; 2],
            shared: None,
            charged: 0,
        }
    }

    /// A filter enforcing `controls` with the given limits whose buffers are also charged
    /// to `shared`, a budget of all the agent's sessions.
    pub fn with_shared_budget(
        controls: Controls,
        limits: Limits,
        shared: Arc<SharedBudget>,
    ) -> Self {
        let mut filter = Self::with_limits(controls, limits);
        filter.shared = Some(shared);
        filter
    }

    /// Where the session stands.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// The security protocol the server selected, once known.
    pub fn selected_protocol(&self) -> Option<SecurityProtocol> {
        self.selected
    }

    /// The session's static channels, once the server's Connect Response was seen.
    pub fn channels(&self) -> impl Iterator<Item = &ChannelInfo> {
        self.channels.iter().map(|c| &c.info)
    }

    /// Bytes the filter currently holds (incomplete PDUs and undecided channel messages).
    pub fn buffered(&self) -> usize {
        let held: usize = self.channels.iter().map(StaticChannel::held).sum();
        self.bufs.iter().map(Vec::len).sum::<usize>() + held
    }

    /// Bytes read from the RDP client. Returns what to send on, mostly to the server.
    pub fn client_bytes(&mut self, input: &[u8]) -> std::result::Result<Output, FilterError> {
        self.guarded(Direction::ClientToServer, input)
    }

    /// Bytes read from the RDP server. Returns what to send on, mostly to the client (and
    /// replies the filter makes on the client's behalf, to the server).
    pub fn server_bytes(&mut self, input: &[u8]) -> std::result::Result<Output, FilterError> {
        self.guarded(Direction::ServerToClient, input)
    }

    /// Both TLS legs are up (after [`Phase::NeedTls`]); the decrypted streams follow.
    pub fn tls_established(&mut self) -> std::result::Result<(), FilterError> {
        let Phase::NeedTls { protocol } = self.phase else {
            self.phase = Phase::Failed;
            return Err(FilterError::WrongPhase(
                "tls_established outside the tls step",
            ));
        };
        if protocol.intersects(SecurityProtocol::HYBRID | SecurityProtocol::HYBRID_EX) {
            self.euar_pending = protocol.contains(SecurityProtocol::HYBRID_EX);
            self.phase = Phase::CredSsp;
        } else {
            self.phase = Phase::Connecting;
        }
        Ok(())
    }

    fn guarded(&mut self, dir: Direction, input: &[u8]) -> Result<Output> {
        let mut out = Output::default();
        match self.phase {
            Phase::Failed => return Err(FilterError::Closed),
            Phase::PassThrough => {
                out.sink(dir).extend_from_slice(input);
                return Ok(out);
            }
            Phase::NeedTls { .. } if !input.is_empty() => {
                self.phase = Phase::Failed;
                return Err(FilterError::WrongPhase("bytes before tls_established"));
            }
            _ => {}
        }
        match self.feed(dir, input, &mut out) {
            Ok(()) => Ok(out),
            Err(e) => {
                self.phase = Phase::Failed;
                self.bufs = Default::default();
                self.channels.clear();
                self.release();
                Err(e)
            }
        }
    }

    /// Charges `held` bytes (all the filter holds now) to the session's budget and the
    /// agent's: an error when either is exceeded.
    fn charge(&mut self, held: usize) -> Result<()> {
        if held > self.limits.max_held {
            return Err(FilterError::OverBudget {
                scope: BudgetScope::Session,
                held,
                limit: self.limits.max_held,
            });
        }
        let Some(shared) = &self.shared else {
            return Ok(());
        };
        if held > self.charged {
            let add = held - self.charged;
            let total = shared.used.fetch_add(add, Ordering::Relaxed) + add;
            self.charged = held;
            if total > shared.limit {
                return Err(FilterError::OverBudget {
                    scope: BudgetScope::Agent,
                    held: total,
                    limit: shared.limit,
                });
            }
        } else if held < self.charged {
            shared
                .used
                .fetch_sub(self.charged - held, Ordering::Relaxed);
            self.charged = held;
        }
        Ok(())
    }

    /// Gives back everything charged to the agent's budget.
    fn release(&mut self) {
        if let Some(shared) = &self.shared {
            shared.used.fetch_sub(self.charged, Ordering::Relaxed);
        }
        self.charged = 0;
    }

    /// Bytes held by the channels and by the incomplete PDU *not* travelling in `dir`.
    fn held_besides(&self, dir: Direction) -> usize {
        let held: usize = self.channels.iter().map(StaticChannel::held).sum();
        held + self.bufs[dir.reverse().index()].len()
    }

    /// What may come next from `dir`, or `None` if nothing may.
    fn mode(&self, dir: Direction) -> Option<frame::Mode> {
        use frame::Mode;
        match (self.phase, dir) {
            (Phase::ConnectionRequest, Direction::ClientToServer)
            | (Phase::ConnectionConfirm, Direction::ServerToClient)
            | (Phase::Connecting, _) => Some(Mode::Tpkt),
            (Phase::CredSsp, _) => Some(Mode::Nla {
                euar: dir == Direction::ServerToClient && self.euar_pending,
            }),
            (Phase::Active, _) => Some(Mode::Active),
            _ => None,
        }
    }

    fn feed(&mut self, dir: Direction, input: &[u8], out: &mut Output) -> Result<()> {
        let d = dir.index();
        let mut buf = std::mem::take(&mut self.bufs[d]);
        buf.extend_from_slice(input);
        let mut pos = 0;
        let result = loop {
            if pos == buf.len() {
                break Ok(());
            }
            let Some(mode) = self.mode(dir) else {
                break Err(proto(format!(
                    "unexpected bytes ({dir}) in phase {:?}",
                    self.phase
                )));
            };
            match frame::next(&buf[pos..], mode, self.limits.max_credssp_message) {
                Err(e) => break Err(e),
                Ok(None) => break Ok(()),
                Ok(Some((kind, len))) => {
                    if let Err(e) = self.handle(dir, kind, &buf[pos..pos + len], out) {
                        break Err(e);
                    }
                    pos += len;
                    // After every PDU: what the channels hold now plus the input not yet
                    // handled.
                    let held = self.held_besides(dir) + (buf.len() - pos);
                    if let Err(e) = self.charge(held) {
                        break Err(e);
                    }
                }
            }
        };
        buf.drain(..pos);
        self.bufs[d] = buf;
        result?;
        let held = self.held_besides(dir) + self.bufs[d].len();
        self.charge(held)
    }

    fn handle(
        &mut self,
        dir: Direction,
        kind: frame::Kind,
        pdu: &[u8],
        out: &mut Output,
    ) -> Result<()> {
        match kind {
            frame::Kind::TsRequest => out.sink(dir).extend_from_slice(pdu),
            frame::Kind::EarlyUserAuthResult => {
                let value = u32::from_le_bytes([pdu[0], pdu[1], pdu[2], pdu[3]]);
                if value != 0 && value != 5 {
                    return Err(proto("invalid early user authorization result"));
                }
                self.euar_pending = false;
                out.sink(dir).extend_from_slice(pdu);
            }
            frame::Kind::FastPath => {
                // FASTPATH_INPUT_ENCRYPTED / FASTPATH_OUTPUT_ENCRYPTED in the top two bits.
                if (pdu[0] >> 6) & 0x2 != 0 {
                    return Err(FilterError::uninspectable("encrypted fast-path pdu"));
                }
                out.sink(dir).extend_from_slice(pdu);
            }
            frame::Kind::Tpkt => self.tpkt(dir, pdu, out)?,
        }
        Ok(())
    }

    fn tpkt(&mut self, dir: Direction, frame: &[u8], out: &mut Output) -> Result<()> {
        let (li, code) = (frame[4], frame[5]);
        match (self.phase, dir) {
            (Phase::ConnectionRequest, Direction::ClientToServer) if code == 0xe0 => {
                return self.connection_request(frame, out)
            }
            (Phase::ConnectionConfirm, Direction::ServerToClient) if code == 0xd0 => {
                return self.connection_confirm(frame, out)
            }
            (Phase::ConnectionRequest | Phase::ConnectionConfirm, _) => {
                return Err(proto("expected an x.224 connection request or confirm"))
            }
            _ => {}
        }
        if code == 0x80 {
            // X.224 Disconnect Request.
            out.sink(dir).extend_from_slice(frame);
            return Ok(());
        }
        if li != 2 || code != 0xf0 || frame[6] != 0x80 {
            return Err(proto("expected an x.224 data tpdu"));
        }
        match (self.phase, dir) {
            (Phase::CredSsp | Phase::Connecting, Direction::ClientToServer)
                if self.client_channels.is_none() =>
            {
                let mut edited = frame.to_vec();
                let requested =
                    gcc::rewrite_connect_initial(&mut edited, &self.policy, &mut out.events)?;
                self.client_channels = Some(requested);
                self.phase = Phase::Connecting;
                out.to_server.extend_from_slice(&edited);
                Ok(())
            }
            (Phase::Connecting, Direction::ServerToClient) if self.client_channels.is_some() => {
                self.connect_response(frame, out)
            }
            (Phase::Active, _) => self.mcs(dir, frame, out),
            _ => Err(proto(format!(
                "unexpected x.224 data ({dir}) in phase {:?}",
                self.phase
            ))),
        }
    }

    fn connection_request(&mut self, frame: &[u8], out: &mut Output) -> Result<()> {
        let request = x224::parse_request(frame)?;
        self.requested = request.protocol;
        let forwarded = request.protocol & x224::inspectable();
        if forwarded.is_empty() {
            return Err(x224::refusal(format!(
                "the client offers only uninspectable security ({})",
                request.protocol
            )));
        }
        let mut edited = frame.to_vec();
        if forwarded != request.protocol {
            request.rewrite(&mut edited, forwarded);
        }
        self.forwarded = forwarded;
        self.phase = Phase::ConnectionConfirm;
        out.to_server.extend_from_slice(&edited);
        Ok(())
    }

    fn connection_confirm(&mut self, frame: &[u8], out: &mut Output) -> Result<()> {
        match x224::parse_confirm(frame)? {
            x224::Confirm::Failure(_) => {
                // The server refused the client itself; pass its answer on and stop.
                out.to_client.extend_from_slice(frame);
                self.phase = Phase::Failed;
                Ok(())
            }
            x224::Confirm::Selected(protocol) => {
                self.selected = Some(protocol);
                out.events.push(Event::Negotiated {
                    requested: self.requested,
                    forwarded: self.forwarded,
                    selected: protocol,
                });
                let single = protocol.bits().count_ones() == 1;
                if !single || !self.forwarded.contains(protocol) {
                    return Err(x224::refusal(format!("the server selected {protocol}")));
                }
                out.to_client.extend_from_slice(frame);
                self.phase = Phase::NeedTls { protocol };
                Ok(())
            }
        }
    }

    fn connect_response(&mut self, frame: &[u8], out: &mut Output) -> Result<()> {
        let granted = gcc::parse_connect_response(frame)?;
        let requested = self.client_channels.take().unwrap_or_default();
        if granted.ids.len() != requested.len() {
            return Err(proto("the server granted a different number of channels"));
        }
        self.io_channel = granted.io_channel;
        self.message_channel = granted.message_channel;
        let mut infos = Vec::with_capacity(requested.len());
        for (req, id) in requested.into_iter().zip(granted.ids) {
            let info = ChannelInfo {
                name: req.name,
                id,
                action: req.action,
            };
            let handler = match (info.action, info.name.to_ascii_lowercase().as_str()) {
                (ChannelAction::Filter, "cliprdr") => self
                    .policy
                    .clipboard_blocked()
                    .map(|d| Handler::Cliprdr(cliprdr::ClipFilter::new(d))),
                (ChannelAction::Filter, "rdpdr") => {
                    Some(Handler::Rdpdr(rdpdr::RdpdrFilter::new(self.policy)))
                }
                (ChannelAction::Filter, "drdynvc") => {
                    Some(Handler::Drdynvc(drdynvc::DvcFilter::new(self.policy)))
                }
                _ => None,
            };
            if info.action == ChannelAction::Filter && handler.is_none() {
                return Err(proto("filtered channel without a handler"));
            }
            if id != 0 {
                let reserved = id == self.io_channel || Some(id) == self.message_channel;
                if reserved || self.by_id.insert(id, self.channels.len()).is_some() {
                    return Err(proto(format!("the server granted channel id {id} twice")));
                }
            }
            infos.push(info.clone());
            self.channels.push(StaticChannel::new(info, handler));
        }
        out.events.push(Event::Channels(infos));
        out.to_client.extend_from_slice(frame);
        self.phase = Phase::Active;
        Ok(())
    }

    fn mcs(&mut self, dir: Direction, frame: &[u8], out: &mut Output) -> Result<()> {
        let X224(msg) =
            decode::<X224<McsMessage<'_>>>(frame).map_err(|e| proto(format!("mcs: {e}")))?;
        let c2s = dir == Direction::ClientToServer;
        match msg {
            McsMessage::SendDataRequest(pdu) if c2s => self.send_data(
                dir,
                frame,
                pdu.initiator_id,
                pdu.channel_id,
                &pdu.user_data,
                out,
            ),
            McsMessage::SendDataIndication(pdu) if !c2s => self.send_data(
                dir,
                frame,
                pdu.initiator_id,
                pdu.channel_id,
                &pdu.user_data,
                out,
            ),
            McsMessage::AttachUserConfirm(pdu) if !c2s => {
                if pdu.result == 0 {
                    let id = pdu.initiator_id;
                    if id == self.io_channel
                        || Some(id) == self.message_channel
                        || self.by_id.contains_key(&id)
                    {
                        return Err(proto("the user channel id is also a static channel id"));
                    }
                    self.user_id = Some(id);
                    self.initiators[Direction::ClientToServer.index()] = Some(pdu.initiator_id);
                }
                out.to_client.extend_from_slice(frame);
                Ok(())
            }
            McsMessage::ErectDomainRequest(_)
            | McsMessage::AttachUserRequest(_)
            | McsMessage::ChannelJoinRequest(_)
                if c2s =>
            {
                out.to_server.extend_from_slice(frame);
                Ok(())
            }
            McsMessage::ChannelJoinConfirm(_) if !c2s => {
                out.to_client.extend_from_slice(frame);
                Ok(())
            }
            McsMessage::DisconnectProviderUltimatum(_) => {
                out.sink(dir).extend_from_slice(frame);
                Ok(())
            }
            _ => Err(proto(format!("mcs pdu in the wrong direction ({dir})"))),
        }
    }

    fn send_data(
        &mut self,
        dir: Direction,
        frame: &[u8],
        initiator: u16,
        channel_id: u16,
        data: &[u8],
        out: &mut Output,
    ) -> Result<()> {
        // The user data must run to the end of the frame (no trailing bytes a server might
        // read differently), and the PDU must not be MCS-segmented.
        let offset = frame.len() - data.len();
        if !std::ptr::eq(frame[offset..].as_ptr(), data.as_ptr()) {
            return Err(proto("mcs send data: bytes after the user data"));
        }
        if frame[12] & 0x30 != 0x30 {
            return Err(proto("mcs send data: segmented pdu"));
        }
        self.initiators[dir.index()] = Some(initiator);
        if channel_id == self.io_channel {
            let mut edited = frame.to_vec();
            caps::clear_vc_compression(&mut edited[offset..], dir)?;
            out.sink(dir).extend_from_slice(&edited);
            return Ok(());
        }
        if let Some(&index) = self.by_id.get(&channel_id) {
            let ctx = svc::Ctx {
                limits: &self.limits,
                initiators: self.initiators,
            };
            return self.channels[index].process(dir, frame, initiator, data, ctx, out);
        }
        if Some(channel_id) == self.message_channel || Some(channel_id) == self.user_id {
            out.sink(dir).extend_from_slice(frame);
            return Ok(());
        }
        Err(proto(format!("data on unknown channel id {channel_id}")))
    }
}
