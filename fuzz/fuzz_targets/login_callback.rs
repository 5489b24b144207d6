//! The laptop's loopback login callback (`kakehashi login`): any local
//! process or web page can request `http://127.0.0.1:PORT/callback?…`, so
//! the query string is outside input. Byte 0 says whether the rest has a
//! query at all; the callback waits for the state `S1-xyz_0123456789`.
//!
//! A code is returned only with exactly that state and a code of 1 to 256
//! bytes; a `portal:` error (which ends the waiting login) only with that
//! state too.
#![no_main]

use libfuzzer_sys::fuzz_target;

const STATE: &str = "S1-xyz_0123456789";

fuzz_target!(|data: &[u8]| {
    let Some((&select, rest)) = data.split_first() else {
        return;
    };
    let Ok(query) = std::str::from_utf8(rest) else {
        return;
    };
    let query = (select & 1 == 0).then_some(query);
    let pairs: Vec<(String, String)> = url::form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .into_owned()
        .collect();
    let first = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    match kakehashi_client::login::parse_callback(query, STATE) {
        Ok(code) => {
            assert_eq!(first("state"), Some(STATE));
            assert_eq!(first("code"), Some(code.as_str()));
            assert!(!code.is_empty() && code.len() <= 256);
            assert!(first("error").is_none());
        }
        Err(e) => {
            if e.to_string().starts_with("portal:") {
                assert_eq!(first("state"), Some(STATE));
            }
        }
    }
});
