//! The serial line's frame decoder (`heartbeat_cluster::serial`) on any
//! bytes, fed in one piece and in chunks cut where the input says: both
//! must accept the same frames and count the same rejects (the decoder is a
//! pure function of the byte stream, not of how it was read), and every
//! accepted frame re-encodes to a frame that decodes the same.
#![no_main]

use heartbeat_cluster::{
    NodeSet,
    serial::{self, Decoder, Encoder, TEST_KEY},
    wire::Keys,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (whole, counts) = serial::decode(data);
    assert_eq!(counts.bytes, data.len() as u64);
    let keys = Keys {
        current: TEST_KEY,
        next: None,
    };
    let mut d = Decoder::new(keys, 7, NodeSet::from_bits(0b110));
    let mut chunked = Vec::new();
    let step = usize::from(data.first().copied().unwrap_or(1)).max(1);
    for c in data.chunks(step) {
        d.push(c, &mut chunked);
    }
    assert_eq!(whole, chunked);
    assert_eq!(&counts, d.counts());
    for f in &whole {
        let mut e = Encoder::new(f.cluster_id, f.node, f.incarnation);
        let again = e
            .encode(f.kind, &f.status, &f.payload, TEST_KEY)
            .expect("an accepted frame re-encodes");
        let (back, _) = serial::decode(&again);
        assert_eq!(back.len(), 1);
        assert_eq!(
            (back[0].kind, back[0].node, &back[0].status, &back[0].payload),
            (f.kind, f.node, &f.status, &f.payload)
        );
    }
});
