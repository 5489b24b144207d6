//! Kakehashi RDP channel filter: the sans-I/O state machine that enforces a session's
//! controls (clipboard direction, drives, printers, ports, USB, audio, smartcards) inside
//! the RDP stream, between a native RDP client and the desk's RDP server.
//!
//! The filter owns no socket, no TLS and no clock. The agent feeds it the bytes it reads
//! from each side and writes what it returns; the filter answers with the bytes to send each
//! way and the events to count and audit. Input may arrive split anywhere: the filter
//! buffers at most one incomplete PDU per direction (plus, per filtered channel, one
//! undecided channel message up to [`Limits::max_reassembly`]) and only ever emits whole
//! PDUs, so its output does not depend on how the input was split. All it holds together
//! stays within the session's budget, [`Limits::max_held`], and within a [`SharedBudget`]
//! the agent may share among all its sessions. Every error is final ("fail closed"): the
//! agent ends the session and the filter refuses all later input.
//!
//! # Using it
//!
//! ```no_run
//! # use kakehashi_rdpfilter::{Filter, Phase};
//! # fn io(_: &[u8]) {}
//! let mut filter = Filter::new(kakehashi_proto::Controls::default());
//! // Cleartext: the client's X.224 Connection Request, then the server's Confirm.
//! let out = filter.client_bytes(b"...")?; io(&out.to_server);
//! let out = filter.server_bytes(b"...")?; io(&out.to_client);
//! match filter.phase() {
//!     // Send the Confirm to the client, then terminate the client's TLS with the RDP
//!     // server's own certificate and key, open TLS to the server pinned to that key,
//!     // and feed the decrypted streams from now on.
//!     Phase::NeedTls { .. } => filter.tls_established()?,
//!     // Allow-everything ticket: splice the raw streams, nothing is inspected.
//!     Phase::PassThrough => {}
//!     _ => {}
//! }
//! # Ok::<(), kakehashi_rdpfilter::FilterError>(())
//! ```
//!
//! One filter serves both directions, so the agent drives it from one place (a task with
//! both streams, or behind a mutex) and writes each [`Output`]'s bytes to their sockets
//! before the next call's: a call on the server's bytes may produce bytes for the server
//! (replies the filter makes for the client), and they must keep their place between PDUs.
//!
//! On an error the agent closes both connections, after sending
//! [`FilterError::reply_to_client`] to the client when there is one (a negative Connection
//! Confirm, so the client reports a security-layer mismatch), and records
//! [`FilterError::reason_code`] (`rdp_uninspectable` for streams it may not inspect).
//!
//! # The state machine ([`Phase`])
//!
//! 1. **ConnectionRequest → ConnectionConfirm** (cleartext X.224, [MS-RDPBCGR] 2.2.1.1–2):
//!    the client's requested protocols lose every bit the filter cannot inspect (RDSTLS,
//!    RDS-AAD, unknown bits), leaving TLS, CredSSP (HYBRID) and HYBRID_EX. A client that
//!    offers none of these, or a server that selects anything else (standard RDP security
//!    included), is refused with `rdp_uninspectable`. With an allow-everything ticket the
//!    filter starts in **PassThrough** and never parses anything.
//! 2. **NeedTls**: the agent sets up both TLS legs and calls [`Filter::tls_established`].
//! 3. **CredSsp** (HYBRID, HYBRID_EX): DER TSRequests pass unchanged both ways (framed by
//!    their DER length), then the server's 4-byte Early User Authorization Result
//!    (HYBRID_EX). The client's first TPKT ends this phase.
//! 4. **Connecting**: the client's MCS Connect Initial is parsed end to end (BER, then the
//!    GCC Conference Create Request in PER, then the client data blocks) and every denied
//!    static channel is *renamed* in CS_NET (same length, so no length field changes; the
//!    client maps the server's channel ids by position, so channels cannot be removed);
//!    CS_MULTITRANSPORT is zeroed so no UDP side channel bypasses the filter. The server's
//!    Connect Response (decoded with ironrdp-pdu) gives the channel ids, and must show no
//!    RDP-level encryption.
//! 5. **Active**: every MCS domain PDU is decoded. Send Data on the I/O channel has the
//!    Virtual Channel Capability Set's compression flags cleared (Demand Active and Confirm
//!    Active); data on a denied channel id is dropped; allowed channels pass untouched;
//!    filtered channels (`cliprdr` with one clipboard direction, `rdpdr` with some device
//!    types denied, `drdynvc` always) go through per-channel message assembly and a parser
//!    for that channel. A compressed chunk on a filtered channel, data on an unknown
//!    channel id or an encrypted fast-path PDU end the session.
//!
//! # A hostile client
//!
//! The laptop is not trusted to be well-formed. A channel list naming one channel twice is
//! refused (each name gets one parser and one buffer). Only messages the filter must read
//! whole are reassembled, up to [`Limits::max_reassembly`] (64 KiB, far above real device
//! announces); a message declaring more is refused at its first chunk, before anything is
//! held. Everything held, frames included, is charged to the session's budget after every
//! PDU, and to the agent's [`SharedBudget`] when there is one; over either the session
//! ends with [`FilterError::OverBudget`]. A client `rdpdr` message must be exactly one PDU
//! whose length the filter checks (I/O responses against the server's request), so no
//! Device List Announce hides behind a harmless PDU; and client `drdynvc` PDUs pass only
//! for channel ids the server opened with a Create Request the filter allowed.
//!
//! # What is filtered where
//!
//! | control | static channel | inside the stream |
//! |---|---|---|
//! | clipboard none / both | `cliprdr` renamed / allowed | — |
//! | clipboard to-remote / to-local | `cliprdr` filtered | Format Data and File Contents Responses in the forbidden direction become failure responses |
//! | drive, printer, ports, smartcard | `rdpdr` renamed if all denied and audio denied, allowed if all allowed, else filtered | denied device types removed from the Device List Announce; their I/O dropped |
//! | audio | `rdpsnd` | DVCs `AUDIO_PLAYBACK_DVC`, `AUDIO_PLAYBACK_LOSSY_DVC`, `AUDIO_INPUT`, `TSMF`, `WMSAud` |
//! | usb | — | DVCs `URBDRC`, `PNPDR`, `FileRedirectorChannel`, `RDCamera_Device_Enumerator` |
//! | printer | — | DVCs `XPSRD`, `TSVCTKT` |
//! | drive | — | DVC `WMSDL` |
//!
//! Static channels other than `cliprdr`, `rdpdr`, `rdpsnd`, `drdynvc` and the RemoteApp
//! family (`rail`, `rail_wi`, `rail_ri`) are denied, and so are dynamic channels outside the
//! table and the display/input set (`Microsoft::Windows::RDS::Graphics`, `DisplayControl`,
//! `Geometry::v08.01`, `Video::Control/Data::v08.01`, `Input`, `CoreInput`, `MouseCursor`,
//! `Telemetry`, `AuthRedirection`, `ECHO`, `TextInput_*`, `FreeRDP::Advanced::Input`):
//! what the ticket does not grant is refused.

// Library hygiene (issue #17): every public item documented and reachable,
// no silent narrowing `as` casts. Per crate, not workspace-wide: the gateway is not ready.
#![warn(unreachable_pub, missing_docs, clippy::cast_possible_truncation)]

mod build;
mod caps;
mod cliprdr;
mod drdynvc;
mod error;
mod event;
mod filter;
mod frame;
mod gcc;
mod limits;
mod output;
mod policy;
mod rdpdr;
mod svc;
mod verdict;
mod wire;
mod x224;

#[cfg(test)]
mod tests;

pub use crate::error::{BudgetScope, FilterError};
pub use crate::event::{BlockedKind, ChannelAction, ChannelInfo, DeviceKind, Direction, Event};
pub use crate::filter::{Filter, Phase, SharedBudget};
pub use crate::limits::Limits;
pub use crate::output::Output;
pub use ironrdp_pdu::nego::SecurityProtocol;

/// Well-formed handshake PDUs (X.224, MCS Connect Initial/Response, Attach User Confirm)
/// for benchmarks outside this crate. Not a stable API.
#[doc(hidden)]
pub mod canned {
    pub use crate::build::{
        attach_user_confirm, connect_initial, connect_response, connection_confirm,
        connection_request,
    };
}

/// Entry point for the fuzz targets: drives a filter with `data` and checks its invariants.
///
/// The first byte selects the controls and whether the session starts with a canned
/// handshake (so the fuzzer reaches the channel parsers quickly); the rest is a sequence of
/// chunks, each a header byte (top bit: from the server; low seven bits: length) and that
/// many bytes.
pub fn fuzz_feed(data: &[u8]) {
    let Some((&select, mut rest)) = data.split_first() else {
        return;
    };
    let mut filter = Filter::new(build::fuzz_controls(select));
    if select & 0x04 != 0 && build::prelude(&mut filter).is_err() {
        return;
    }
    while let Some((&header, tail)) = rest.split_first() {
        let n = usize::from(header & 0x7f).min(tail.len());
        let (chunk, tail) = tail.split_at(n);
        rest = tail;
        let result = if header & 0x80 != 0 {
            filter.server_bytes(chunk)
        } else {
            filter.client_bytes(chunk)
        };
        if result.is_err() {
            assert_eq!(filter.phase(), Phase::Failed);
            assert_eq!(filter.buffered(), 0);
            return;
        }
        if let Phase::NeedTls { .. } = filter.phase() {
            filter.tls_established().expect("tls step");
        }
        // Everything held stays within the session's budget.
        assert!(filter.buffered() <= Limits::default().max_held);
    }
}
