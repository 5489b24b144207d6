//! `proto::frame::decode` on arbitrary bytes. A frame that decodes must
//! re-encode to exactly the bytes it was decoded from, every shorter prefix
//! must ask for more bytes, and bytes after the frame must not change it.
#![no_main]

use kakehashi_proto::frame::{self, FrameError, HEADER_LEN, MAX_PAYLOAD};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match frame::decode(data) {
        Ok(Some((f, used))) => {
            assert!(f.payload.len() <= MAX_PAYLOAD);
            assert_eq!(used, HEADER_LEN + f.payload.len());
            assert!(used <= data.len());
            let again = frame::encode(f.kind, &f.payload).expect("a decoded frame re-encodes");
            assert_eq!(again, &data[..used], "re-encoding differs");
            // The frame alone decodes to the same frame.
            assert_eq!(frame::decode(&data[..used]), Ok(Some((f.clone(), used))));
            // No prefix of a good frame is an error or a frame.
            for cut in [0, 1, HEADER_LEN - 1, HEADER_LEN, used - 1] {
                if cut < used {
                    assert_eq!(
                        frame::decode(&data[..cut]),
                        Ok(None),
                        "prefix of {cut} bytes"
                    );
                }
            }
        }
        Ok(None) => {
            // More bytes needed: there is no complete header, or the
            // declared payload runs past the end.
            if let Some(h) = data.first_chunk::<HEADER_LEN>() {
                let header =
                    frame::decode_header(h).expect("a header that needs more bytes is valid");
                assert!(data.len() < HEADER_LEN + header.len);
            }
        }
        Err(e) => {
            // The error does not depend on bytes after the header.
            let head = &data[..data.len().min(HEADER_LEN)];
            assert_eq!(frame::decode(head).err().as_ref(), Some(&e));
            match e {
                FrameError::Version(v) => assert_eq!(Some(&v), data.first()),
                FrameError::UnknownKind(_) | FrameError::TooLarge(_) => {
                    let h = data
                        .first_chunk::<HEADER_LEN>()
                        .expect("kind and length need a header");
                    assert_eq!(frame::decode_header(h), Err(e));
                }
                other => panic!("decode returned {other:?}"),
            }
        }
    }
});
