//! The membership message decoder (`heartbeat_cluster::wire::decode`).
//!
//! Each input is decoded twice: as it is (length, prefix, cluster and MAC
//! checks), and resealed, i.e. with the prefix and body length fixed up and
//! a valid MAC under the target's key appended, so that the fuzzer reaches
//! the body parser behind the MAC. What decodes must encode and decode back
//! the same.
#![no_main]

use heartbeat_cluster::wire::{
    self, HEADER_LEN, KIND_MEMBERSHIP, Keys, MAC_LEN, MAGIC, MAX_LEN, VERSION,
};
use heartbeat_common::siphash::siphash24;
use heartbeat_fuzz::KEY;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let keys = Keys {
        current: KEY,
        next: None,
    };
    let _ = wire::decode(data, &keys, 7);
    if data.len() < HEADER_LEN || data.len() + MAC_LEN > MAX_LEN {
        return;
    }
    let mut sealed = data.to_vec();
    sealed[..4].copy_from_slice(&MAGIC);
    sealed[4] = VERSION;
    sealed[5] = KIND_MEMBERSHIP;
    let body_len = (data.len() - HEADER_LEN) as u16;
    sealed[25..27].copy_from_slice(&body_len.to_be_bytes());
    let mac = siphash24(KEY, &sealed).to_be_bytes();
    sealed.extend_from_slice(&mac);
    let cluster_id = u32::from_be_bytes([sealed[6], sealed[7], sealed[8], sealed[9]]);
    if let Ok(a) = wire::decode(&sealed, &keys, cluster_id) {
        let again = wire::encode(&a.header, &a.msg, KEY);
        let b = wire::decode(&again, &keys, cluster_id).expect("a re-encoded message decodes");
        assert_eq!((b.header, b.msg), (a.header, a.msg));
    }
});
