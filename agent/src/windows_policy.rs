//! The Windows second layer (DESIGN.md §6, issue 5 item 4), not yet wired in:
//! on a Windows desk the agent will also set the RDP host's own redirection
//! policy for the session's duration and restore it afterwards. The decision
//! (which policy values a ticket's controls mean) is pure and tested on every
//! platform; applying it is `cfg(windows)` and still a stub.

use kakehashi_proto::{Clipboard, Controls};

/// Policy values under `HKLM\SOFTWARE\Policies\Microsoft\Windows NT\Terminal Services`
/// (1 = redirection disabled) that enforce `controls` on the RDP host itself.
pub fn policy_values(controls: Controls) -> Vec<(&'static str, u32)> {
    let off = |allowed: bool| u32::from(!allowed);
    vec![
        // Clipboard: Windows can only switch it off as a whole; one direction is
        // left to the filter.
        ("fDisableClip", off(controls.clipboard != Clipboard::None)),
        ("fDisableCdm", off(controls.drive)),
        ("fDisableCpm", off(controls.printer)),
        ("fDisableLPT", off(controls.ports)),
        ("fDisableCcm", off(controls.ports)),
        ("fDisablePNPRedir", off(controls.usb)),
        ("fDisableCam", off(controls.audio)),
        ("fDisableAudioCapture", off(controls.audio)),
        ("fEnableSmartCard", u32::from(controls.smartcard)),
    ]
}

/// Sets the policy values for a session (Windows only; not implemented yet: the
/// RDP filter is the enforcement, this would be defence in depth).
#[cfg(windows)]
pub fn apply(_controls: Controls) -> anyhow::Result<()> {
    anyhow::bail!("the Windows redirection policy layer is not implemented yet")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deny_all_disables_every_redirection() {
        let v = policy_values(Controls::default());
        assert!(v
            .iter()
            .all(|(k, val)| (*k == "fEnableSmartCard") == (*val == 0)));
        let all = policy_values(Controls::allow_all());
        assert!(all
            .iter()
            .all(|(k, val)| (*k == "fEnableSmartCard") == (*val == 1)));
        let clip = policy_values(Controls {
            clipboard: Clipboard::ToRemote,
            ..Controls::default()
        });
        assert!(clip.contains(&("fDisableClip", 0)));
    }
}
