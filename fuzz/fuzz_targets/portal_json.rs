//! The portal's JSON bodies and the `/login` query string
//! (`kakehashi_portal::fuzz_feed`): byte 0 picks the endpoint, the rest is
//! decoded into that handler's own type and checked as the handler checks
//! it before it reads the store (see `fuzz_feed`'s documentation).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    kakehashi_portal::fuzz_feed(data);
});
