//! Well-formed PDUs built with the ironrdp encoders: the canned handshake of
//! [`fuzz_feed`](crate::fuzz_feed) and the building blocks of the tests.

use std::borrow::Cow;

use ironrdp_core::encode_vec;
use ironrdp_pdu::gcc::{
    ChannelDef, ChannelName, ChannelOptions, ClientCoreData, ClientCoreOptionalData,
    ClientGccBlocks, ClientNetworkData, ClientSecurityData, ColorDepth, ConferenceCreateResponse,
    HighColorDepth, KeyboardType, MultiTransportChannelData, MultiTransportFlags, RdpVersion,
    SecureAccessSequence, ServerCoreData, ServerCoreOptionalData, ServerGccBlocks,
    ServerNetworkData, ServerSecurityData, SupportedColorDepths,
};
use ironrdp_pdu::mcs::{AttachUserConfirm, ConnectInitial, ConnectResponse, DomainParameters};
use ironrdp_pdu::nego::{
    ConnectionConfirm, ConnectionRequest, NegoRequestData, RequestFlags, ResponseFlags,
};
use ironrdp_pdu::x224::{X224Data, X224};
#[cfg(test)]
use ironrdp_svc::{client_encode_svc_messages, server_encode_svc_messages, SvcMessage};
use kakehashi_proto::{Clipboard, Controls};

use crate::error::FilterError;
#[cfg(test)]
use crate::event::Direction;
use crate::filter::{Filter, Phase};
use ironrdp_pdu::nego::SecurityProtocol;

/// MCS ids used by the canned sessions.
pub(crate) const IO_CHANNEL: u16 = 1003;
pub(crate) const USER_ID: u16 = 1012;
#[cfg(test)]
pub(crate) const SERVER_INITIATOR: u16 = 1002;
/// Channel ids granted in order by [`connect_response`].
pub(crate) const FIRST_CHANNEL_ID: u16 = 1004;

/// Static channels of the canned fuzz session.
pub(crate) const FUZZ_CHANNELS: &[&str] =
    &["rdpdr", "rdpsnd", "cliprdr", "drdynvc", "rail", "custom"];

/// The client's X.224 Connection Request asking for `protocol`.
pub fn connection_request(protocol: SecurityProtocol) -> Vec<u8> {
    encode_vec(&X224(ConnectionRequest {
        nego_data: Some(NegoRequestData::cookie("user".into())),
        flags: RequestFlags::empty(),
        protocol,
        correlation_info: None,
    }))
    .expect("connection request encodes")
}

/// The server's X.224 Connection Confirm selecting `protocol`.
pub fn connection_confirm(protocol: SecurityProtocol) -> Vec<u8> {
    encode_vec(&X224(ConnectionConfirm::Response {
        flags: ResponseFlags::EXTENDED_CLIENT_DATA_SUPPORTED,
        protocol,
    }))
    .expect("connection confirm encodes")
}

fn x224_data(data: Vec<u8>) -> Vec<u8> {
    encode_vec(&X224(X224Data {
        data: Cow::Owned(data),
    }))
    .expect("x.224 data encodes")
}

/// The client's MCS Connect Initial requesting the static `channels`.
pub fn connect_initial(channels: &[&str]) -> Vec<u8> {
    let core = ClientCoreData {
        version: RdpVersion::V5_PLUS,
        desktop_width: 1280,
        desktop_height: 800,
        color_depth: ColorDepth::Bpp8,
        sec_access_sequence: SecureAccessSequence::Del,
        keyboard_layout: 0x0411,
        client_build: 2600,
        client_name: "laptop".into(),
        keyboard_type: KeyboardType(7),
        keyboard_subtype: 2,
        keyboard_functional_keys_count: 12,
        ime_file_name: String::new(),
        optional_data: ClientCoreOptionalData {
            post_beta2_color_depth: Some(ColorDepth::Bpp8),
            client_product_id: Some(1),
            serial_number: Some(0),
            high_color_depth: Some(HighColorDepth::Rgb565Bpp16),
            supported_color_depths: Some(SupportedColorDepths::BPP16 | SupportedColorDepths::BPP24),
            early_capability_flags: None,
            ..Default::default()
        },
    };
    let network = ClientNetworkData {
        channels: channels
            .iter()
            .map(|n| ChannelDef {
                name: ChannelName::from_utf8(n).expect("channel name"),
                options: ChannelOptions::INITIALIZED | ChannelOptions::ENCRYPT_RDP,
            })
            .collect(),
    };
    let blocks = ClientGccBlocks {
        core,
        security: ClientSecurityData::no_security(),
        network: Some(network),
        cluster: None,
        monitor: None,
        message_channel: None,
        multi_transport_channel: Some(MultiTransportChannelData {
            flags: MultiTransportFlags::all(),
        }),
        monitor_extended: None,
    };
    let ci = ConnectInitial::with_gcc_blocks(blocks).expect("gcc blocks");
    x224_data(encode_vec(&ci).expect("connect initial encodes"))
}

/// The server's MCS Connect Response granting `channels` ids from
/// `FIRST_CHANNEL_ID` (1004) on.
pub fn connect_response(channels: usize) -> Vec<u8> {
    let ids = (FIRST_CHANNEL_ID..).take(channels).collect();
    let blocks = ServerGccBlocks {
        core: ServerCoreData {
            version: RdpVersion::V10_7,
            optional_data: ServerCoreOptionalData::default(),
        },
        network: ServerNetworkData {
            channel_ids: ids,
            io_channel: IO_CHANNEL,
        },
        security: ServerSecurityData::no_security(),
        message_channel: None,
        multi_transport_channel: None,
    };
    let rsp = ConnectResponse {
        conference_create_response: ConferenceCreateResponse::new(USER_ID, blocks)
            .expect("gcc blocks"),
        called_connect_id: 1,
        domain_parameters: DomainParameters::target(),
    };
    x224_data(encode_vec(&rsp).expect("connect response encodes"))
}

/// The server's MCS Attach User Confirm (user id 1012).
pub fn attach_user_confirm() -> Vec<u8> {
    encode_vec(&X224(AttachUserConfirm {
        result: 0,
        initiator_id: USER_ID,
    }))
    .expect("attach user confirm encodes")
}

/// A complete virtual channel message (chunked at 1600 bytes) from the given side.
#[cfg(test)]
pub(crate) fn channel_message(dir: Direction, channel: u16, payload: Vec<u8>) -> Vec<u8> {
    let msg = vec![SvcMessage::from(payload)];
    match dir {
        Direction::ClientToServer => client_encode_svc_messages(msg, channel, USER_ID),
        Direction::ServerToClient => server_encode_svc_messages(msg, channel, SERVER_INITIATOR),
    }
    .expect("channel message encodes")
}

/// Controls picked by the fuzz selector byte.
pub(crate) fn fuzz_controls(select: u8) -> Controls {
    match select & 0x3 {
        0 => Controls::default(),
        1 => Controls {
            clipboard: Clipboard::ToRemote,
            smartcard: true,
            ..Controls::default()
        },
        2 => Controls {
            clipboard: Clipboard::ToLocal,
            printer: true,
            audio: true,
            ..Controls::default()
        },
        _ => Controls::allow_all(),
    }
}

/// Drives `filter` through a HYBRID_EX handshake to the active phase.
pub(crate) fn prelude(filter: &mut Filter) -> Result<(), FilterError> {
    filter.client_bytes(&connection_request(
        SecurityProtocol::HYBRID | SecurityProtocol::HYBRID_EX,
    ))?;
    filter.server_bytes(&connection_confirm(SecurityProtocol::HYBRID_EX))?;
    if filter.phase() == Phase::PassThrough {
        return Ok(());
    }
    filter.tls_established()?;
    let ts_request = [0x30, 0x05, 0xa0, 0x03, 0x02, 0x01, 0x06];
    filter.client_bytes(&ts_request)?;
    filter.server_bytes(&ts_request)?;
    filter.client_bytes(&ts_request)?;
    filter.server_bytes(&[0, 0, 0, 0])?;
    filter.client_bytes(&connect_initial(FUZZ_CHANNELS))?;
    filter.server_bytes(&connect_response(FUZZ_CHANNELS.len()))?;
    filter.server_bytes(&attach_user_confirm())?;
    Ok(())
}
