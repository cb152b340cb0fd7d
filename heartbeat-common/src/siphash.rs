//! SipHash-2-4 (64-bit tag), the heartbeat MAC.
//!
//! Written to compile for `bpfel-unknown-none`: no allocation, no panics on any
//! input, loops bounded by the input length (constant at every eBPF call site).

/// A 128-bit SipHash key as two little-endian 64-bit words.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SipKey {
    pub k0: u64,
    pub k1: u64,
}

impl SipKey {
    /// Builds a key from its 16 raw bytes (the key file's content).
    #[inline(always)]
    pub const fn from_bytes(b: &[u8; 16]) -> Self {
        Self {
            k0: u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]),
            k1: u64::from_le_bytes([b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]]),
        }
    }
}

#[inline(always)]
fn round(v: &mut [u64; 4]) {
    v[0] = v[0].wrapping_add(v[1]);
    v[1] = v[1].rotate_left(13);
    v[1] ^= v[0];
    v[0] = v[0].rotate_left(32);
    v[2] = v[2].wrapping_add(v[3]);
    v[3] = v[3].rotate_left(16);
    v[3] ^= v[2];
    v[0] = v[0].wrapping_add(v[3]);
    v[3] = v[3].rotate_left(21);
    v[3] ^= v[0];
    v[2] = v[2].wrapping_add(v[1]);
    v[1] = v[1].rotate_left(17);
    v[1] ^= v[2];
    v[2] = v[2].rotate_left(32);
}

/// SipHash-2-4 of `data` under `key`.
#[inline(always)]
pub fn siphash24(key: SipKey, data: &[u8]) -> u64 {
    let mut v = [
        key.k0 ^ 0x736f_6d65_7073_6575,
        key.k1 ^ 0x646f_7261_6e64_6f6d,
        key.k0 ^ 0x6c79_6765_6e65_7261,
        key.k1 ^ 0x7465_6462_7974_6573,
    ];
    let len = data.len();
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        let m = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        v[3] ^= m;
        round(&mut v);
        round(&mut v);
        v[0] ^= m;
    }
    let rest = chunks.remainder();
    let mut b: u64 = (len as u64 & 0xff) << 56;
    for (i, byte) in rest.iter().enumerate() {
        b |= u64::from(*byte) << (8 * i);
    }
    v[3] ^= b;
    round(&mut v);
    round(&mut v);
    v[0] ^= b;
    v[2] ^= 0xff;
    round(&mut v);
    round(&mut v);
    round(&mut v);
    round(&mut v);
    v[0] ^ v[1] ^ v[2] ^ v[3]
}

/// Compares two tags without an early exit, so timing does not reveal how
/// many leading bytes of a forged tag were right.
#[inline(always)]
pub fn ct_eq(a: &[u8; 8], b: &[u8; 8]) -> bool {
    let mut diff = 0u8;
    let mut i = 0;
    while i < 8 {
        diff |= a[i] ^ b[i];
        i += 1;
    }
    // black_box keeps the optimiser from turning the fold into an early exit.
    core::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference_key() -> SipKey {
        let mut k = [0u8; 16];
        for (i, b) in k.iter_mut().enumerate() {
            *b = i as u8;
        }
        SipKey::from_bytes(&k)
    }

    /// The first vectors of the SipHash paper's reference table
    /// (`vectors_sip64`: key 00..0f, message 00..n-1), as little-endian bytes.
    #[test]
    fn reference_vectors() {
        let expected: [[u8; 8]; 4] = [
            [0x31, 0x0e, 0x0e, 0xdd, 0x47, 0xdb, 0x6f, 0x72],
            [0xfd, 0x67, 0xdc, 0x93, 0xc5, 0x39, 0xf8, 0x74],
            [0x5a, 0x4f, 0xa9, 0xd9, 0x09, 0x80, 0x6c, 0x0d],
            [0x2d, 0x7e, 0xfb, 0xd7, 0x96, 0x66, 0x67, 0x85],
        ];
        let msg: [u8; 64] = core::array::from_fn(|i| i as u8);
        for (n, want) in expected.iter().enumerate() {
            assert_eq!(
                siphash24(reference_key(), &msg[..n]).to_le_bytes(),
                *want,
                "len {n}"
            );
        }
        // The vector for a 63-byte message: the last row of the reference table.
        assert_eq!(
            siphash24(reference_key(), &msg[..63]).to_le_bytes(),
            [0x72, 0x45, 0x06, 0xeb, 0x4c, 0x32, 0x8a, 0x95]
        );
    }

    #[test]
    fn matches_independent_implementation_for_every_length() {
        use core::hash::Hasher;
        let msg: [u8; 64] = core::array::from_fn(|i| (i * 7 + 3) as u8);
        let key = SipKey {
            k0: 0x0123_4567_89ab_cdef,
            k1: 0xfedc_ba98_7654_3210,
        };
        for n in 0..=64 {
            let mut h = siphasher::sip::SipHasher24::new_with_keys(key.k0, key.k1);
            h.write(&msg[..n]);
            assert_eq!(siphash24(key, &msg[..n]), h.finish(), "len {n}");
        }
    }

    #[test]
    fn constant_time_compare() {
        assert!(ct_eq(&[1; 8], &[1; 8]));
        let mut b = [1u8; 8];
        b[7] = 2;
        assert!(!ct_eq(&[1; 8], &b));
    }
}
