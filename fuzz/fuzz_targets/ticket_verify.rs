//! Session tickets, in two modes chosen by the first byte.
//!
//! - even: `TicketVerifier::verify` on the remaining bytes with a fixed key,
//!   desk and clock. It must not panic; a ticket it accepts must be for the
//!   desk and inside its window, and must be accepted once only.
//! - odd: the remaining bytes are read as ticket claims (with `arbitrary`),
//!   signed with the fixed key, optionally damaged, and verified at an
//!   arbitrary clock. The outcome must be exactly what the claims call for.
#![no_main]

use kakehashi_fuzz::{signer, verifier, DESK, NOW};
use kakehashi_proto::message::valid_id;
use kakehashi_proto::ticket::{
    TicketClaims, TicketError, MAX_CLOCK_SKEW_SECS, MAX_TICKET_LEN, TICKET_VERSION,
};
use kakehashi_proto::{Clipboard, Controls, Limits, ReplayGuard};
use libfuzzer_sys::arbitrary::{self, Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
struct Input {
    /// Use the protocol version rather than `v`.
    current_version: bool,
    v: u8,
    session_id: String,
    /// Use the agent's desk rather than `desk`.
    our_desk: bool,
    desk: String,
    device: String,
    class: String,
    user: Option<String>,
    gateway: String,
    clipboard: u8,
    flags: [bool; 6],
    end_at: Option<u64>,
    idle_timeout_secs: Option<u32>,
    issued_at: u64,
    expires_at: u64,
    /// Verify near `issued_at` (offset in seconds) rather than at `now`.
    near: Option<i16>,
    now: u64,
    /// Flip bits of one byte of the signed ticket.
    damage: Option<(u16, u8)>,
}

fn raw(bytes: &[u8]) {
    let v = verifier();
    match v.verify(bytes, DESK, NOW) {
        Ok(c) => {
            assert_eq!(c.desk, DESK);
            assert_eq!(c.v, TICKET_VERSION);
            assert!(NOW < c.expires_at && c.issued_at <= NOW + MAX_CLOCK_SKEW_SECS);
            let mut guard = ReplayGuard::new(4);
            guard.check_and_record(&c, NOW).expect("first use");
            assert_eq!(guard.check_and_record(&c, NOW), Err(TicketError::Replayed));
        }
        Err(e) => {
            let _ = e.reason();
        }
    }
}

fn structured(u: &mut Unstructured<'_>) -> arbitrary::Result<()> {
    let i = Input::arbitrary(u)?;
    let [drive, printer, ports, usb, audio, smartcard] = i.flags;
    let claims = TicketClaims {
        v: if i.current_version {
            TICKET_VERSION
        } else {
            i.v
        },
        session_id: i.session_id,
        desk: if i.our_desk { DESK.into() } else { i.desk },
        device: i.device,
        class: i.class,
        user: i.user,
        gateway: i.gateway,
        controls: Controls {
            clipboard: [
                Clipboard::None,
                Clipboard::ToRemote,
                Clipboard::ToLocal,
                Clipboard::Both,
            ][usize::from(i.clipboard % 4)],
            drive,
            printer,
            ports,
            usb,
            audio,
            smartcard,
        },
        limits: Limits {
            end_at: i.end_at,
            idle_timeout_secs: i.idle_timeout_secs,
        },
        issued_at: i.issued_at,
        expires_at: i.expires_at,
    };
    let now = match i.near {
        Some(d) => i.issued_at.saturating_add_signed(i64::from(d)),
        None => i.now,
    };
    // Claims too large to sign are refused by sign itself; nothing to verify then.
    let Ok(mut ticket) = signer().sign(&claims) else {
        return Ok(());
    };
    let damaged = match i.damage {
        Some((at, bits)) if bits != 0 && !ticket.is_empty() => {
            let at = usize::from(at) % ticket.len();
            ticket[at] ^= bits;
            true
        }
        _ => false,
    };
    let got = verifier().verify(&ticket, DESK, now);

    if ticket.len() > MAX_TICKET_LEN {
        assert!(matches!(got, Err(TicketError::Malformed(_))), "{got:?}");
        return Ok(());
    }
    if damaged {
        assert!(
            matches!(
                got,
                Err(TicketError::BadSignature | TicketError::Malformed(_))
            ),
            "a damaged ticket gave {got:?}"
        );
        return Ok(());
    }
    let expected = if claims.v != TICKET_VERSION {
        Err(TicketError::Version(claims.v))
    } else if !valid_id(&claims.session_id) || !valid_id(&claims.desk) {
        Err(TicketError::Malformed("invalid id".into()))
    } else if now >= claims.expires_at || claims.issued_at > now.saturating_add(MAX_CLOCK_SKEW_SECS)
    {
        Err(TicketError::Expired)
    } else if claims.desk != DESK {
        Err(TicketError::WrongDesk {
            got: claims.desk.clone(),
            expected: DESK.into(),
        })
    } else {
        Ok(claims.clone())
    };
    assert_eq!(got, expected);

    if let Ok(c) = got {
        let mut guard = ReplayGuard::new(2);
        guard.check_and_record(&c, now).expect("first use");
        assert_eq!(guard.check_and_record(&c, now), Err(TicketError::Replayed));
        // Still refused later, even after a full cache was cleaned, for as
        // long as the ticket itself would verify.
        let later = c.expires_at - 1;
        assert!(verifier().verify(&ticket, DESK, later).is_ok());
        let id = |s: &str| TicketClaims {
            session_id: format!("{}{s}", c.session_id),
            ..c.clone()
        };
        guard
            .check_and_record(&id("-x"), now)
            .expect("room for a second id");
        // The cache is full: this cleans it at `later`, then refuses or records.
        let _ = guard.check_and_record(&id("-y"), later);
        assert_eq!(
            guard.check_and_record(&c, later),
            Err(TicketError::Replayed),
            "a used ticket was forgotten while still valid"
        );
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        raw(rest);
    } else {
        let _ = structured(&mut Unstructured::new(rest));
    }
});
