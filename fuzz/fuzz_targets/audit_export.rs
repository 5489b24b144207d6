//! The audit log's offline check (`kakehashi-gateway audit verify --file`)
//! and the checkpoint file: exports are files that travel and are checked
//! precisely because they may have been edited. Byte 0 picks (modulo 3):
//!
//! - 0: the rest is an export file (JSON lines) for `verify_reader`: no
//!   panic, no error but for a file that is not UTF-8; the records it
//!   counts as verified are a run of consecutive seqs.
//! - 1: the rest is read (with `arbitrary`) as a chain of records — seqs,
//!   times and texts chosen by the fuzzer, each sealed with its real hash
//!   and linked to the one before (an attacker can do the same: the hash
//!   has no key) — optionally damaged, exported as `audit export` writes
//!   it and verified. An undamaged chain of consecutive seqs verifies whole;
//!   any other is reported broken at the first record that is out of line.
//! - 2: the rest is a checkpoint line (`Checkpoint::from_json`): one that
//!   reads writes back to the same checkpoint.
#![no_main]

use std::path::Path;

use kakehashi_fuzz::outside::{export_chain, ChainInput};
use kakehashi_store::export::{verify_reader, FileReport};
use kakehashi_store::Checkpoint;
use libfuzzer_sys::arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;

fn verify(text: &[u8]) -> FileReport {
    let mut rep = FileReport::default();
    // The one error (not a finding) is a file that is not UTF-8 text.
    if let Err(e) = verify_reader(text, Path::new("audit.jsonl"), &mut rep) {
        assert!(std::str::from_utf8(text).is_err(), "{e:#}");
    }
    if let Some((first, last)) = rep.seqs {
        assert!(rep.records >= 1);
        let span = i128::from(last) - i128::from(first) + 1;
        assert_eq!(span, i128::from(rep.records), "{rep:?}");
    } else {
        assert_eq!(rep.records, 0);
    }
    rep
}

fuzz_target!(|data: &[u8]| {
    let Some((&select, rest)) = data.split_first() else {
        return;
    };
    match select % 3 {
        0 => {
            verify(rest);
        }
        1 => {
            let Ok(input) = ChainInput::arbitrary(&mut Unstructured::new(rest)) else {
                return;
            };
            let (text, expect_intact) = export_chain(&input);
            let rep = verify(text.as_bytes());
            if expect_intact {
                assert!(rep.is_intact(), "{rep:?}\n{text}");
                assert_eq!(rep.records, input.records.len() as u64);
            } else {
                assert!(!rep.is_intact(), "damaged chain verified\n{text}");
            }
        }
        _ => {
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(rest) {
                if let Ok(c) = Checkpoint::from_json(&v) {
                    assert_eq!(Checkpoint::from_json(&c.to_json()).ok(), Some(c));
                }
            }
        }
    }
});
