//! `kakehashi connect DESK --launch`: start the platform's RDP client with its
//! redirections already matching the session's controls (from
//! `SessionAccepted`), so the person never meets a feature the desk agent will
//! refuse. xfreerdp on Linux and macOS; on Windows a generated `.rdp` file
//! opened with mstsc.
//!
//! Certificates: the RDP client talks to `127.0.0.1:PORT`, and the desk's RDP
//! certificate arrives through the tunnel, which is mutually authenticated with
//! our CA end to end (the agent pins the RDP server's certificate too). What is
//! left to check is the loopback hop, so the client uses trust on first use
//! (`/cert:tofu`) on a loopback port that is stable per desk
//! ([`stable_port`]): the first session records the desk's certificate, and a
//! different one later makes xfreerdp ask. `/cert:ignore` is never used.
//! (When the agent reports the RDP certificate's fingerprint through the
//! gateway, `/cert:fingerprint:` can replace TOFU.)

use std::path::Path;

use kakehashi_proto::{Clipboard, Controls};

/// A loopback port for `desk` that stays the same across runs, so the RDP
/// client's trust-on-first-use record (kept per host and port) means something:
/// 20000–29999, derived from the desk id (FNV-1a).
pub fn stable_port(desk: &str) -> u16 {
    let mut h: u32 = 0x811c_9dc5;
    for b in desk.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    20_000 + (h % 10_000) as u16
}

/// xfreerdp (FreeRDP 2) arguments for a session on `127.0.0.1:port` with `controls`.
pub fn xfreerdp_args(port: u16, controls: Controls, user: Option<&str>) -> Vec<String> {
    let mut a = vec![format!("/v:127.0.0.1:{port}"), "/cert:tofu".to_string()];
    if let Some(u) = user {
        a.push(format!("/u:{u}"));
    }
    if controls.is_restrictive() {
        // Standard RDP security cannot be inspected: the agent would refuse it.
        a.push("-sec-rdp".into());
    }
    a.push(
        if controls.clipboard == Clipboard::None {
            "-clipboard"
        } else {
            "+clipboard"
        }
        .into(),
    );
    if controls.drive {
        a.push("+home-drive".into());
    }
    if controls.printer {
        a.push("/printer".into());
    }
    if controls.smartcard {
        a.push("/smartcard".into());
    }
    if controls.audio {
        a.push("/sound".into());
    }
    if controls.usb {
        a.push("/usb:auto".into());
    }
    a
}

/// A `.rdp` file for mstsc with redirections matching `controls`.
pub fn rdp_file(port: u16, controls: Controls, user: Option<&str>) -> String {
    let on = |b: bool| u8::from(b);
    let mut lines = vec![
        format!("full address:s:127.0.0.1:{port}"),
        // Warn (and let the person decide) when the certificate cannot be verified.
        "authentication level:i:2".to_string(),
        "enablecredsspsupport:i:1".to_string(),
        format!(
            "redirectclipboard:i:{}",
            on(controls.clipboard != Clipboard::None)
        ),
        format!("redirectdrives:i:{}", on(controls.drive)),
        format!(
            "drivestoredirect:s:{}",
            if controls.drive { "*" } else { "" }
        ),
        format!("redirectprinters:i:{}", on(controls.printer)),
        format!("redirectcomports:i:{}", on(controls.ports)),
        format!("redirectsmartcards:i:{}", on(controls.smartcard)),
        format!(
            "devicestoredirect:s:{}",
            if controls.usb { "*" } else { "" }
        ),
        format!(
            "usbdevicestoredirect:s:{}",
            if controls.usb { "*" } else { "" }
        ),
        // 0: play on this computer; 2: do not play.
        format!("audiomode:i:{}", if controls.audio { 0 } else { 2 }),
        format!("audiocapturemode:i:{}", on(controls.audio)),
        "camerastoredirect:s:".to_string(),
    ];
    if let Some(u) = user {
        lines.push(format!("username:s:{u}"));
    }
    let mut text = lines.join("\r\n");
    text.push_str("\r\n");
    text
}

/// Start the platform's RDP client for `127.0.0.1:port`. `dir` receives the
/// `.rdp` file on Windows.
pub fn spawn(
    port: u16,
    controls: Controls,
    user: Option<&str>,
    dir: &Path,
) -> anyhow::Result<tokio::process::Child> {
    #[cfg(windows)]
    {
        let path: std::path::PathBuf = dir.join(format!("kakehashi-{port}.rdp"));
        std::fs::write(&path, rdp_file(port, controls, user))?;
        Ok(tokio::process::Command::new("mstsc").arg(&path).spawn()?)
    }
    #[cfg(not(windows))]
    {
        let _ = dir;
        let program = std::env::var_os("KAKEHASHI_XFREERDP").unwrap_or_else(|| "xfreerdp".into());
        tokio::process::Command::new(&program)
            .args(xfreerdp_args(port, controls, user))
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot start {}: {e}", program.to_string_lossy()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deny_all_asks_for_nothing() {
        let a = xfreerdp_args(23389, Controls::default(), Some("alice"));
        assert_eq!(
            a,
            [
                "/v:127.0.0.1:23389",
                "/cert:tofu",
                "/u:alice",
                "-sec-rdp",
                "-clipboard"
            ]
        );
        assert!(!a.iter().any(|x| x.contains("cert:ignore")));
    }

    #[test]
    fn allowed_redirections_are_requested() {
        let a = xfreerdp_args(1, Controls::allow_all(), None);
        for want in [
            "+clipboard",
            "+home-drive",
            "/printer",
            "/smartcard",
            "/sound",
            "/usb:auto",
        ] {
            assert!(a.iter().any(|x| x == want), "{want} missing from {a:?}");
        }
        assert!(!a.iter().any(|x| x == "-sec-rdp"));
        let c = Controls {
            clipboard: Clipboard::ToRemote,
            ..Controls::default()
        };
        assert!(xfreerdp_args(1, c, None).contains(&"+clipboard".to_string()));
    }

    #[test]
    fn rdp_file_matches_the_controls() {
        let f = rdp_file(3390, Controls::default(), Some("bob"));
        for want in [
            "full address:s:127.0.0.1:3390",
            "redirectclipboard:i:0",
            "redirectdrives:i:0",
            "drivestoredirect:s:\r\n",
            "redirectprinters:i:0",
            "audiomode:i:2",
            "username:s:bob",
        ] {
            assert!(f.contains(want), "{want:?} missing from {f}");
        }
        let f = rdp_file(3390, Controls::allow_all(), None);
        assert!(f.contains("redirectdrives:i:1") && f.contains("drivestoredirect:s:*"));
    }

    #[test]
    fn stable_port_is_stable_and_in_range() {
        assert_eq!(stable_port("DESK-1234"), stable_port("DESK-1234"));
        assert_ne!(stable_port("DESK-1234"), stable_port("DESK-1235"));
        for d in ["a", "demo-desk", "DESK-0001"] {
            assert!((20_000..30_000).contains(&stable_port(d)));
        }
    }
}
