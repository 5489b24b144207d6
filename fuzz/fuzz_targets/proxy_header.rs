//! The PROXY protocol v2 header a load balancer puts before TLS
//! (`kakehashi_transport::proxy`). Only listed balancers may send one, but a
//! balancer forwards what the internet gives it, and a misconfigured or
//! compromised one may send anything. Byte 0 picks: even, the rest is one
//! whole header for `decode`; odd, the rest is a connection's first bytes
//! for `read_header` (as the gateway reads them, over a reader that hands
//! them out in reads of 0 to 15 bytes, byte 1's two nibbles, 0 being
//! "not ready"; byte 2 below 16 injects an I/O error after that many bytes).
//!
//! No panic. `decode` accepts only exactly the bytes its fixed part
//! announces, at most `MAX_REST` after it; a `Client` comes only from a
//! `PROXY` command over TCP (IPv4 or IPv6) and encodes back to a header
//! naming the same client. `read_header` takes exactly the header's bytes
//! and not one more, and agrees with `decode` on them.
#![no_main]

use kakehashi_fuzz::{block_on, ChunkedReader};
use kakehashi_transport::proxy::{self, Forwarded, ReadError, FIXED_LEN, MAX_REST};
use libfuzzer_sys::fuzz_target;

fn check_decoded(header: &[u8], got: Forwarded) {
    assert!(header.len() >= FIXED_LEN && header.len() <= FIXED_LEN + MAX_REST);
    assert_eq!(header[..12], proxy::SIGNATURE);
    assert_eq!(
        usize::from(u16::from_be_bytes([header[14], header[15]])),
        header.len() - FIXED_LEN
    );
    match got {
        Forwarded::Local => assert_eq!(header[12], 0x20),
        Forwarded::Client(client) => {
            assert_eq!(header[12], 0x21);
            // TCP over IPv4 or IPv6.
            assert!(header[13] == 0x11 || header[13] == 0x21, "{:#x}", header[13]);
            let to = if client.is_ipv4() {
                "192.0.2.1:443".parse().unwrap()
            } else {
                "[2001:db8::1]:443".parse().unwrap()
            };
            let again = proxy::encode(Some((client, to)));
            assert_eq!(proxy::decode(&again), Ok(Forwarded::Client(client)));
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&select, rest)) = data.split_first() else {
        return;
    };
    if select & 1 == 0 {
        if let Ok(got) = proxy::decode(rest) {
            check_decoded(rest, got);
        }
        return;
    }
    let [step, fail, stream @ ..] = rest else {
        return;
    };
    let fail_at = (*fail < 16).then_some(usize::from(*fail));
    let mut r = ChunkedReader::new(
        stream,
        vec![usize::from(step >> 4), usize::from(step & 0x0f)],
        fail_at,
    );
    let result = block_on(proxy::read_header(&mut r));
    let taken = r.pos();
    match result {
        Ok(got) => {
            let header = &stream[..taken];
            assert_eq!(proxy::decode(header), Ok(got));
            check_decoded(header, got);
        }
        Err(ReadError::Closed) => assert_eq!(taken, 0),
        // Never past the header it announced.
        Err(ReadError::Refused(_)) => assert!(taken <= FIXED_LEN + MAX_REST),
        Err(ReadError::Io(_)) => assert!(r.failed()),
    }
});
