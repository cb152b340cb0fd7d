//! The control protocol decoder: one request line, as the agent reads it
//! from its socket (`heartbeat_api::control::Request::decode`). What it
//! accepts must encode and decode back the same.
#![no_main]

use heartbeat_api::control::Request;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match Request::decode(data) {
        Ok(req) => {
            let line = serde_json::to_string(&req).expect("a request encodes");
            let back = Request::decode(line.as_bytes()).expect("an encoded request decodes");
            assert_eq!(req, back);
        }
        Err(e) => assert!(!e.is_empty()),
    }
});
