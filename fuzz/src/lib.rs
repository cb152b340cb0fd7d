//! Helpers shared by the fuzz targets in `fuzz_targets/`.
//!
//! A decoder that only has to take any bytes without panicking (the
//! membership and serial decoders, as they land) needs one line:
//! `heartbeat_fuzz::decoder_target!(path::to::decode);` in
//! `fuzz_targets/NAME.rs` (after `#![no_main]`), and one line in the `bin`
//! list of `fuzz/Cargo.toml`.

pub use libfuzzer_sys;

/// A fuzz target feeding the raw input to `$decode(&[u8])`; any panic,
/// overflow (debug assertions are on) or sanitizer report is a crash.
#[macro_export]
macro_rules! decoder_target {
    ($decode:path) => {
        $crate::libfuzzer_sys::fuzz_target!(|data: &[u8]| {
            let _ = $decode(data);
        });
    };
}

/// The MAC key the targets use (any fixed key: the targets check that
/// parsing never panics and that sealing and verifying agree).
pub const KEY: heartbeat_common::siphash::SipKey = heartbeat_common::siphash::SipKey {
    k0: 0x0706_0504_0302_0100,
    k1: 0x0f0e_0d0c_0b0a_0908,
};
