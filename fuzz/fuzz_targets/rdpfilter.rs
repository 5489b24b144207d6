//! The agent's RDP channel filter (`kakehashi_rdpfilter::fuzz_feed`): byte 0
//! picks the ticket's controls and whether a canned HYBRID_EX handshake comes
//! first; the rest is chunks (header byte: top bit = from the server, low seven
//! bits = length) fed to the filter as the agent would, decrypted. The filter
//! must never panic, must fail closed (an error leaves it `Failed` with nothing
//! buffered) and must keep its buffers bounded.
//!
//! Seeds in `fuzz/seeds/rdpfilter` are real xfreerdp ↔ freerdp-shadow-cli NLA
//! sessions captured by the agent (feature `rdp-capture`) with a deny-all ticket.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    kakehashi_rdpfilter::fuzz_feed(data);
});
