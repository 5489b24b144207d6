//! The access policy file (`kakehashi_policy`): what `policy import`,
//! `policy check` and the officer's rules page read. The input is the TOML
//! text (invalid UTF-8 is read lossily, as a pasted text would be).
//!
//! - `check` and `Policy::from_toml` agree: a policy loads exactly when
//!   `check` finds no error, and every diagnostic prints.
//! - A policy that loads writes back (`to_toml`) to a file that loads to
//!   the same policy.
//! - Deciding with it never panics, `explain` decides the same, a desk in
//!   the `mynumber` segment is always refused with `segment_mynumber`, and
//!   an allowed session is still allowed halfway to its `end_at`.
#![no_main]

use kakehashi_fuzz::outside::policy_requests;
use kakehashi_policy::{check, decide, explain, Policy, ReasonCode, Segment, Severity};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let diags = check(&text);
    for d in &diags {
        let _ = d.to_string();
    }
    let errors = diags.iter().any(|d| d.severity == Severity::Error);
    let policy = match Policy::from_toml(&text) {
        Ok(p) => {
            assert!(!errors, "loaded a policy with errors: {diags:?}");
            p
        }
        Err(e) => {
            assert!(errors, "refused a policy without errors: {e}");
            let _ = e.to_string();
            return;
        }
    };
    let written = policy.to_toml().expect("a loaded policy writes back");
    let again = Policy::from_toml(&written).expect("a written policy loads");
    assert_eq!(again, policy, "policy round trip through\n{written}");

    for (req, at) in policy_requests(&policy) {
        let d = decide(&req, &policy, at);
        assert_eq!(explain(&req, &policy, at).decision, d);
        if req.desk.segment == Segment::Mynumber {
            assert_eq!(d.reason(), Some(ReasonCode::SegmentMynumber));
        }
        if let Some((_, _, limits)) = d.allowed() {
            let start = at.unix_timestamp();
            let Some(end) = limits.end_at.and_then(|e| i64::try_from(e).ok()) else {
                continue;
            };
            assert!(end > start, "end_at {end} is not after {start}");
            let half = (end - start) / 2;
            let mut later = req.clone();
            later.mfa_age_secs = later
                .mfa_age_secs
                .map(|a| a + u64::try_from(half).unwrap_or(0));
            let t = at + time::Duration::seconds(half);
            assert!(
                decide(&later, &policy, t).allowed().is_some(),
                "allowed at {at}, end_at {end}, refused at {t}"
            );
        }
    }
});
