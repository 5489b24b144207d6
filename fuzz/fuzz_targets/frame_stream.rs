//! `proto::io::read_frame` over an in-memory stream, read frame after frame
//! until it stops, compared with `frame::decode` on the same bytes.
//!
//! Input: 4 bytes of read sizes (cycled; 0 = "not ready, ask again"), one
//! byte that, when not 0, makes the stream fail after `byte - 1` bytes, then
//! the stream itself. `read_frame` must return the same frames and errors as
//! `decode`, and never consume a byte past the frame it returns.
#![no_main]

use kakehashi_fuzz::{block_on, ChunkedReader};
use kakehashi_proto::frame::{self, FrameError};
use kakehashi_proto::io::{read_frame, FrameIoError};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((head, stream)) = data.split_first_chunk::<5>() else {
        return;
    };
    let chunks = head[..4].iter().map(|&b| usize::from(b)).collect();
    let fail_at = (head[4] != 0).then(|| usize::from(head[4]) - 1);
    let mut r = ChunkedReader::new(stream, chunks, fail_at);
    let mut off = 0;
    loop {
        let got = block_on(read_frame(&mut r));
        if let Err(FrameIoError::Io(e)) = &got {
            assert!(r.failed(), "unexpected i/o error {e}");
            assert!(r.pos() <= stream.len());
            break;
        }
        let want = frame::decode(&stream[off..]);
        match (got, want) {
            (Ok(f), Ok(Some((g, used)))) => {
                assert_eq!(f, g);
                off += used;
                assert_eq!(r.pos(), off, "read_frame consumed bytes past its frame");
            }
            (Err(FrameIoError::Closed), Ok(None)) => {
                assert_eq!(off, stream.len(), "closed with bytes left");
                break;
            }
            (Err(FrameIoError::Frame(FrameError::Truncated)), Ok(None)) => {
                assert!(off < stream.len(), "truncated with no bytes left");
                assert_eq!(r.pos(), stream.len());
                break;
            }
            (Err(FrameIoError::Frame(e)), Err(d)) => {
                assert_eq!(e, d);
                break;
            }
            (got, want) => panic!("read_frame gave {got:?} where decode gives {want:?}"),
        }
    }
});
