//! What the filter reports besides the bytes it forwards.

use std::fmt;

use ironrdp_pdu::nego::SecurityProtocol;

/// Which way a PDU travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// From the RDP client (the laptop) to the RDP server (the desk PC).
    ClientToServer,
    /// From the RDP server (the desk PC) to the RDP client (the laptop).
    ServerToClient,
}

impl Direction {
    pub(crate) fn index(self) -> usize {
        match self {
            Direction::ClientToServer => 0,
            Direction::ServerToClient => 1,
        }
    }

    pub(crate) fn reverse(self) -> Self {
        match self {
            Direction::ClientToServer => Direction::ServerToClient,
            Direction::ServerToClient => Direction::ClientToServer,
        }
    }

    /// Stable lowercase name for logs and the audit record.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::ClientToServer => "client_to_server",
            Direction::ServerToClient => "server_to_client",
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Device types of the `rdpdr` Client Device List Announce ([MS-RDPEFS] 2.2.1.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DeviceKind {
    /// RDPDR_DTYP_SERIAL (0x01).
    Serial,
    /// RDPDR_DTYP_PARALLEL (0x02).
    Parallel,
    /// RDPDR_DTYP_PRINT (0x04).
    Printer,
    /// RDPDR_DTYP_FILESYSTEM (0x08): a redirected drive.
    Filesystem,
    /// RDPDR_DTYP_SMARTCARD (0x20).
    Smartcard,
    /// Any other value; always refused.
    Other(u32),
}

impl DeviceKind {
    pub(crate) fn from_wire(v: u32) -> Self {
        match v {
            0x01 => DeviceKind::Serial,
            0x02 => DeviceKind::Parallel,
            0x04 => DeviceKind::Printer,
            0x08 => DeviceKind::Filesystem,
            0x20 => DeviceKind::Smartcard,
            other => DeviceKind::Other(other),
        }
    }

    /// Stable lowercase name for logs and the audit record.
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceKind::Serial => "serial",
            DeviceKind::Parallel => "parallel",
            DeviceKind::Printer => "printer",
            DeviceKind::Filesystem => "drive",
            DeviceKind::Smartcard => "smartcard",
            DeviceKind::Other(_) => "other",
        }
    }
}

/// What a blocked attempt tried to use.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BlockedKind {
    /// A static virtual channel the client asked for (renamed in the MCS Connect Initial so
    /// the server never serves it), or a PDU later sent on its channel id.
    StaticChannel(String),
    /// A device in an `rdpdr` Client Device List Announce, removed before the server saw it.
    Device {
        /// The device type.
        kind: DeviceKind,
        /// The device's PreferredDosName (e.g. `C:`, `PRN1`, `SCARD`).
        name: String,
    },
    /// A dynamic virtual channel the server tried to open inside `drdynvc` (answered with a
    /// creation failure, never forwarded).
    DynamicChannel(String),
    /// Clipboard contents (a `cliprdr` Format Data Response) in a forbidden direction.
    ClipboardData,
    /// Clipboard file contents (a `cliprdr` File Contents Response) in a forbidden direction.
    FileContents,
}

impl fmt::Display for BlockedKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BlockedKind::StaticChannel(n) => write!(f, "static channel {n}"),
            BlockedKind::Device { kind, name } => write!(f, "{} device {name}", kind.as_str()),
            BlockedKind::DynamicChannel(n) => write!(f, "dynamic channel {n}"),
            BlockedKind::ClipboardData => f.write_str("clipboard data"),
            BlockedKind::FileContents => f.write_str("clipboard file contents"),
        }
    }
}

/// What the filter decided for a static channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChannelAction {
    /// Passed through untouched.
    Allow,
    /// Renamed in the Connect Initial; every PDU on its id is dropped.
    Deny,
    /// Passed, with its PDUs parsed and filtered (`cliprdr`, `rdpdr`, `drdynvc`).
    Filter,
}

/// A static channel of the session, in the order of the client's request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelInfo {
    /// The name the client asked for.
    pub name: String,
    /// The MCS channel id the server assigned.
    pub id: u16,
    /// What the filter does with it.
    pub action: ChannelAction,
}

/// Something the agent should count, log or send to the gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// The cleartext negotiation finished.
    Negotiated {
        /// The protocols the client asked for.
        requested: SecurityProtocol,
        /// The protocols forwarded to the server (uninspectable ones removed).
        forwarded: SecurityProtocol,
        /// The protocol the server chose.
        selected: SecurityProtocol,
    },
    /// The server's MCS Connect Response mapped the static channels to ids.
    Channels(Vec<ChannelInfo>),
    /// Something was refused.
    Blocked {
        /// What.
        what: BlockedKind,
        /// The direction of the PDU that was refused.
        direction: Direction,
    },
}
