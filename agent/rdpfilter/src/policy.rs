//! How session controls map onto RDP channels, devices and clipboard directions.

use kakehashi_proto::{Clipboard, Controls};

use crate::event::{ChannelAction, DeviceKind, Direction};

/// Static channels that carry no redirected data and are served whatever the controls:
/// the RemoteApp family. `drdynvc` is decided separately (it is always filtered).
const ALWAYS_ALLOWED_STATIC: &[&str] = &["rail", "rail_wi", "rail_ri"];

/// Dynamic channels that carry display, input and session plumbing, never redirected data.
const ALWAYS_ALLOWED_DYNAMIC: &[&str] = &[
    "Microsoft::Windows::RDS::Graphics",               // MS-RDPEGFX
    "Microsoft::Windows::RDS::DisplayControl",         // MS-RDPEDISP
    "Microsoft::Windows::RDS::Geometry::v08.01",       // MS-RDPEGT
    "Microsoft::Windows::RDS::Video::Control::v08.01", // MS-RDPEVOR
    "Microsoft::Windows::RDS::Video::Data::v08.01",    // MS-RDPEVOR
    "Microsoft::Windows::RDS::Input",                  // MS-RDPEI
    "Microsoft::Windows::RDS::CoreInput",              // MS-RDPECI
    "Microsoft::Windows::RDS::MouseCursor",            // MS-RDPEMSC
    "Microsoft::Windows::RDS::Telemetry",              // MS-RDPET
    "Microsoft::Windows::RDS::AuthRedirection",        // MS-RDPEAR
    "ECHO",                                            // MS-RDPEECO
    "TextInput_ServerToClientDVC",                     // MS-RDPETXT
    "TextInput_ClientToServerDVC",                     // MS-RDPETXT
    "FreeRDP::Advanced::Input",                        // FreeRDP ainput
];

/// Dynamic channels governed by a control.
const AUDIO_DYNAMIC: &[&str] = &[
    "AUDIO_PLAYBACK_DVC",       // MS-RDPEA
    "AUDIO_PLAYBACK_LOSSY_DVC", // MS-RDPEA
    "AUDIO_INPUT",              // MS-RDPEAI
    "TSMF",                     // MS-RDPEV multimedia redirection
    "WMSAud",                   // MS-RDPADRV
];
const USB_DYNAMIC: &[&str] = &[
    "URBDRC",                     // MS-RDPEUSB
    "PNPDR",                      // MS-RDPEPNP
    "FileRedirectorChannel",      // MS-RDPEPNP device I/O
    "RDCamera_Device_Enumerator", // MS-RDPECAM
];
const PRINTER_DYNAMIC: &[&str] = &[
    "XPSRD",   // MS-RDPEXPS
    "TSVCTKT", // MS-RDPEXPS print ticket
];
const DRIVE_DYNAMIC: &[&str] = &[
    "WMSDL", // MS-RDPADRV drive letters
];

fn contains_ci(list: &[&str], name: &str) -> bool {
    list.iter().any(|n| n.eq_ignore_ascii_case(name))
}

/// The controls of one session, as channel decisions.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Policy {
    pub(crate) controls: Controls,
}

impl Policy {
    pub(crate) fn new(controls: Controls) -> Self {
        Self { controls }
    }

    pub(crate) fn restrictive(&self) -> bool {
        self.controls.is_restrictive()
    }

    /// The action for a static channel the client asks for (name compared
    /// case-insensitively). Unknown channels are denied: what is not granted is refused.
    pub(crate) fn static_channel(&self, name: &str) -> ChannelAction {
        let c = &self.controls;
        let n = name.to_ascii_lowercase();
        match n.as_str() {
            "cliprdr" => match c.clipboard {
                Clipboard::None => ChannelAction::Deny,
                Clipboard::Both => ChannelAction::Allow,
                Clipboard::ToRemote | Clipboard::ToLocal => ChannelAction::Filter,
            },
            "rdpdr" => {
                let devices = [c.drive, c.printer, c.ports, c.smartcard];
                if devices.iter().all(|&d| d) {
                    ChannelAction::Allow
                } else if devices.iter().any(|&d| d) || c.audio {
                    // Windows serves audio output only to clients that also have rdpdr,
                    // so rdpdr stays (with every device filtered out) when audio is allowed.
                    ChannelAction::Filter
                } else {
                    ChannelAction::Deny
                }
            }
            "rdpsnd" => {
                if c.audio {
                    ChannelAction::Allow
                } else {
                    ChannelAction::Deny
                }
            }
            "drdynvc" => ChannelAction::Filter,
            _ if ALWAYS_ALLOWED_STATIC.contains(&n.as_str()) => ChannelAction::Allow,
            _ => ChannelAction::Deny,
        }
    }

    /// May the server open this dynamic channel?
    pub(crate) fn dynamic_channel_allowed(&self, name: &str) -> bool {
        let c = &self.controls;
        if contains_ci(ALWAYS_ALLOWED_DYNAMIC, name) {
            true
        } else if contains_ci(AUDIO_DYNAMIC, name) {
            c.audio
        } else if contains_ci(USB_DYNAMIC, name) {
            c.usb
        } else if contains_ci(PRINTER_DYNAMIC, name) {
            c.printer
        } else if contains_ci(DRIVE_DYNAMIC, name) {
            c.drive
        } else {
            false
        }
    }

    /// May the client announce a device of this type?
    pub(crate) fn device_allowed(&self, kind: DeviceKind) -> bool {
        let c = &self.controls;
        match kind {
            DeviceKind::Filesystem => c.drive,
            DeviceKind::Printer => c.printer,
            DeviceKind::Serial | DeviceKind::Parallel => c.ports,
            DeviceKind::Smartcard => c.smartcard,
            DeviceKind::Other(_) => false,
        }
    }

    /// The direction in which clipboard contents must not travel, if one is filtered.
    pub(crate) fn clipboard_blocked(&self) -> Option<Direction> {
        match self.controls.clipboard {
            // Paste into the desk only: nothing leaves the desk.
            Clipboard::ToRemote => Some(Direction::ServerToClient),
            // Copy out of the desk only: nothing enters it.
            Clipboard::ToLocal => Some(Direction::ClientToServer),
            Clipboard::None | Clipboard::Both => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(f: impl FnOnce(&mut Controls)) -> Policy {
        let mut c = Controls::default();
        f(&mut c);
        Policy::new(c)
    }

    #[test]
    fn static_channels_follow_the_controls() {
        let deny_all = Policy::new(Controls::default());
        for (name, want) in [
            ("cliprdr", ChannelAction::Deny),
            ("CLIPRDR", ChannelAction::Deny),
            ("rdpdr", ChannelAction::Deny),
            ("rdpsnd", ChannelAction::Deny),
            ("drdynvc", ChannelAction::Filter),
            ("rail", ChannelAction::Allow),
            ("MS_T120", ChannelAction::Deny),
            ("encomsp", ChannelAction::Deny),
        ] {
            assert_eq!(deny_all.static_channel(name), want, "{name}");
        }
        let p = with(|c| c.clipboard = Clipboard::ToRemote);
        assert_eq!(p.static_channel("cliprdr"), ChannelAction::Filter);
        assert_eq!(p.clipboard_blocked(), Some(Direction::ServerToClient));
        let p = with(|c| c.clipboard = Clipboard::ToLocal);
        assert_eq!(p.clipboard_blocked(), Some(Direction::ClientToServer));
        let p = with(|c| c.clipboard = Clipboard::Both);
        assert_eq!(p.static_channel("cliprdr"), ChannelAction::Allow);
        let p = with(|c| c.smartcard = true);
        assert_eq!(p.static_channel("rdpdr"), ChannelAction::Filter);
        let p = with(|c| c.audio = true);
        assert_eq!(p.static_channel("rdpdr"), ChannelAction::Filter);
        assert_eq!(p.static_channel("rdpsnd"), ChannelAction::Allow);
        let p = with(|c| {
            c.drive = true;
            c.printer = true;
            c.ports = true;
            c.smartcard = true;
        });
        assert_eq!(p.static_channel("rdpdr"), ChannelAction::Allow);
    }

    #[test]
    fn dynamic_channels_follow_the_controls() {
        let deny_all = Policy::new(Controls::default());
        assert!(deny_all.dynamic_channel_allowed("Microsoft::Windows::RDS::Graphics"));
        assert!(deny_all.dynamic_channel_allowed("microsoft::windows::rds::displaycontrol"));
        for n in [
            "URBDRC",
            "urbdrc",
            "PNPDR",
            "FileRedirectorChannel",
            "XPSRD",
            "AUDIO_INPUT",
            "something",
        ] {
            assert!(!deny_all.dynamic_channel_allowed(n), "{n}");
        }
        assert!(with(|c| c.usb = true).dynamic_channel_allowed("URBDRC"));
        assert!(with(|c| c.printer = true).dynamic_channel_allowed("XPSRD"));
        assert!(with(|c| c.audio = true).dynamic_channel_allowed("AUDIO_PLAYBACK_DVC"));
        assert!(!with(|c| c.audio = true).dynamic_channel_allowed("URBDRC"));
    }

    #[test]
    fn devices_follow_the_controls() {
        let p = with(|c| c.smartcard = true);
        assert!(p.device_allowed(DeviceKind::Smartcard));
        assert!(!p.device_allowed(DeviceKind::Filesystem));
        assert!(!p.device_allowed(DeviceKind::Other(0x40)));
        let p = with(|c| c.ports = true);
        assert!(p.device_allowed(DeviceKind::Serial) && p.device_allowed(DeviceKind::Parallel));
    }
}
