//! The cluster's member list, in two modes chosen by the first byte.
//!
//! - even: `members::verify` on the remaining bytes with the fixed key, at
//!   [`NOW`], with byte 1 choosing the last accepted version. It must not
//!   panic; a list it accepts is inside its window, within every bound, and
//!   not older than the version accepted before.
//! - odd: the remaining bytes are read as a list (with `arbitrary`), signed
//!   with the fixed key, optionally damaged, and verified at an arbitrary
//!   clock. The outcome must be exactly what the list calls for.
#![no_main]

use kakehashi_fuzz::{signer, verifier, NOW};
use kakehashi_proto::members::{
    self, ListedMember, MemberList, MemberListError, MAX_ADDR_LEN, MAX_MEMBERS,
    MAX_MEMBER_LIST_LEN, MEMBER_LIST_FORMAT,
};
use kakehashi_proto::message::valid_id;
use kakehashi_proto::ticket::MAX_CLOCK_SKEW_SECS;
use libfuzzer_sys::arbitrary::{self, Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
struct Input {
    /// Use the current format rather than `v`.
    current_format: bool,
    v: u8,
    version: u64,
    gateway: String,
    issued_at: u64,
    expires_at: u64,
    members: Vec<(String, String, String, String)>,
    /// Verify near `issued_at` (offset in seconds) rather than at `now`.
    near: Option<i16>,
    now: u64,
    accepted: Option<u64>,
    /// Flip bits of one byte of the signed list.
    damage: Option<(u16, u8)>,
}

fn valid_addr(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_ADDR_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:[]_".contains(&b))
}

fn raw(accepted: u8, bytes: &[u8]) {
    let accepted = (accepted != 0).then_some(u64::from(accepted) * 1000);
    if let Ok(l) = members::verify(&verifier(), bytes, NOW, accepted) {
        assert!(bytes.len() <= MAX_MEMBER_LIST_LEN);
        assert_eq!(l.v, MEMBER_LIST_FORMAT);
        assert!(NOW < l.expires_at && l.issued_at <= NOW + MAX_CLOCK_SKEW_SECS);
        assert!(accepted.is_none_or(|a| l.version >= a));
        assert!(l.members.len() <= MAX_MEMBERS && valid_id(&l.gateway));
        for m in &l.members {
            assert!(valid_id(&m.id) && valid_addr(&m.tcp) && valid_addr(&m.quic));
            assert!(valid_addr(&m.server_name));
        }
    }
}

fn structured(input: Input) {
    let list = MemberList {
        v: if input.current_format {
            MEMBER_LIST_FORMAT
        } else {
            input.v
        },
        version: input.version,
        gateway: input.gateway,
        issued_at: input.issued_at,
        expires_at: input.expires_at,
        members: input
            .members
            .into_iter()
            .map(|(id, tcp, quic, server_name)| ListedMember {
                id,
                tcp,
                quic,
                server_name,
            })
            .collect(),
    };
    let now = match input.near {
        Some(d) => list.issued_at.saturating_add_signed(i64::from(d)),
        None => input.now,
    };
    let bounds_ok = list.v == MEMBER_LIST_FORMAT
        && list.members.len() <= MAX_MEMBERS
        && valid_id(&list.gateway)
        && list.members.iter().all(|m| {
            valid_id(&m.id) && valid_addr(&m.tcp) && valid_addr(&m.quic) && valid_addr(&m.server_name)
        });
    let mut bytes = match members::sign(&signer(), &list) {
        Ok(b) => {
            assert!(bounds_ok, "signed a list out of bounds: {list:?}");
            b
        }
        Err(MemberListError::TooLarge(_)) if list.members.len() <= MAX_MEMBERS => {
            // Within the member count but too many bytes for a frame.
            assert!(bounds_ok);
            return;
        }
        Err(e) => {
            assert!(!bounds_ok, "refused to sign a good list: {e}");
            return;
        }
    };
    let got = members::verify(&verifier(), &bytes, now, input.accepted);
    let in_window = now < list.expires_at
        && list.issued_at <= now.saturating_add(MAX_CLOCK_SKEW_SECS);
    let fresh = input.accepted.is_none_or(|a| list.version >= a);
    match (&got, in_window, fresh) {
        (Ok(l), true, true) => assert_eq!(l, &list),
        (Err(MemberListError::Expired), false, _) => {}
        (Err(MemberListError::Stale { .. }), true, false) => {}
        _ => panic!("{got:?} for window {in_window}, fresh {fresh}: {list:?} at {now}"),
    }
    if let Some((at, bits)) = input.damage {
        if bits != 0 {
            let at = usize::from(at) % bytes.len();
            bytes[at] ^= bits;
            // A damaged list never verifies, whatever the clock.
            assert!(members::verify(&verifier(), &bytes, now, None).is_err());
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        let Some((&accepted, rest)) = rest.split_first() else {
            return;
        };
        raw(accepted, rest);
    } else if let Ok(input) = Input::arbitrary_take_rest(Unstructured::new(rest)) {
        structured(input);
    }
});
