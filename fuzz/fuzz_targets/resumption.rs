//! The gateway's TLS resumption tickets and their key file
//! (`kakehashi_transport::resumption::fuzz_feed`): byte 0 even, the rest is
//! a key file, which must decode exactly when well formed and round-trip;
//! odd, the rest is a ticket a peer presents, which must never open without
//! the key, and is then sealed, opened, damaged and refused.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    kakehashi_transport::resumption::fuzz_feed(data);
});
