//! The heartbeat header parser: `Header::decode` on any bytes, then the
//! MAC on what it accepts.
#![no_main]

use heartbeat_common::wire::{HEADER_LEN, Header, HeaderError};
use heartbeat_fuzz::KEY;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match Header::decode(data) {
        Ok(h) => {
            assert_eq!(data.len(), HEADER_LEN);
            assert_eq!(&h.as_bytes()[..], data, "decode is not a plain view");
            assert!(h.kind().is_some());
            // Whatever the stored MAC, verify must not panic; a header
            // sealed under KEY verifies, and its reply does once resealed.
            let _ = h.verify(KEY);
            let mut sealed = h;
            sealed.seal(KEY);
            assert!(sealed.verify(KEY));
            let mut reply = sealed;
            reply.make_reply();
            reply.seal(KEY);
            assert_eq!(Header::decode(reply.as_bytes()), Ok(reply));
            assert!(reply.verify(KEY));
        }
        Err(HeaderError::Length) => assert_ne!(data.len(), HEADER_LEN),
        Err(_) => assert_eq!(data.len(), HEADER_LEN),
    }
});
