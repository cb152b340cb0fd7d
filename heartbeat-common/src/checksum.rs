//! Internet checksum (RFC 1071) helpers for IPv4 headers and UDP over IPv4/IPv6.
//!
//! The sums work on byte slices of even length, which every caller has.

/// Adds the 16-bit big-endian words of `data` to `sum` (a trailing odd byte
/// is padded with zero, as RFC 768 says).
#[inline(always)]
pub fn add(mut sum: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    sum
}

/// Folds a 32-bit running sum into the one's-complement 16-bit checksum.
#[inline(always)]
pub fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// UDP checksum over IPv4: pseudo-header + UDP header (with its checksum
/// field zeroed by the caller) + payload. Returns 0xffff for a computed 0,
/// since 0 means "no checksum" in UDP over IPv4.
#[inline(always)]
pub fn udp_v4(src: &[u8; 4], dst: &[u8; 4], udp: &[u8]) -> u16 {
    let mut s = add(0, src);
    s = add(s, dst);
    s += 17;
    s += udp.len() as u32;
    s = add(s, udp);
    match fold(s) {
        0 => 0xffff,
        c => c,
    }
}

/// UDP checksum over IPv6 (mandatory there).
#[inline(always)]
pub fn udp_v6(src: &[u8; 16], dst: &[u8; 16], udp: &[u8]) -> u16 {
    let mut s = add(0, src);
    s = add(s, dst);
    s += 17;
    s += udp.len() as u32;
    s = add(s, udp);
    match fold(s) {
        0 => 0xffff,
        c => c,
    }
}

/// Whether a received UDP segment's checksum is right (sum over everything,
/// checksum included, folds to zero). A zero checksum over IPv4 means none.
pub fn udp_v4_ok(src: &[u8; 4], dst: &[u8; 4], udp: &[u8]) -> bool {
    if udp.len() >= 8 && udp[6] == 0 && udp[7] == 0 {
        return true;
    }
    let mut s = add(0, src);
    s = add(s, dst);
    s += 17 + udp.len() as u32;
    fold(add(s, udp)) == 0
}

/// As [`udp_v4_ok`], for IPv6 (no "no checksum" escape).
pub fn udp_v6_ok(src: &[u8; 16], dst: &[u8; 16], udp: &[u8]) -> bool {
    let mut s = add(0, src);
    s = add(s, dst);
    s += 17 + udp.len() as u32;
    fold(add(s, udp)) == 0
}

/// IPv4 header checksum (the checksum field must be zero in `hdr`).
pub fn ipv4_header(hdr: &[u8]) -> u16 {
    fold(add(0, hdr))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc1071_example() {
        // RFC 1071 section 3 example: words 0001 f203 f4f5 f6f7 sum to ddf2.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(add(0, &data)), !0xddf2);
    }

    #[test]
    fn ipv4_header_known_value() {
        // A well-known sample header: checksum b861.
        let mut h = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(ipv4_header(&h), 0xb861);
        h[10] = 0xb8;
        h[11] = 0x61;
        assert_eq!(fold(add(0, &h)), 0);
    }

    #[test]
    fn udp_round_trip() {
        let src = [10, 0, 0, 1];
        let dst = [10, 0, 0, 2];
        let mut udp = [0u8; 12];
        udp[0..2].copy_from_slice(&1000u16.to_be_bytes());
        udp[2..4].copy_from_slice(&2000u16.to_be_bytes());
        udp[4..6].copy_from_slice(&12u16.to_be_bytes());
        udp[8..12].copy_from_slice(b"abcd");
        let c = udp_v4(&src, &dst, &udp);
        udp[6..8].copy_from_slice(&c.to_be_bytes());
        assert!(udp_v4_ok(&src, &dst, &udp));
        udp[9] ^= 1;
        assert!(!udp_v4_ok(&src, &dst, &udp));
        let s6 = [1u8; 16];
        let d6 = [2u8; 16];
        udp[9] ^= 1;
        udp[6] = 0;
        udp[7] = 0;
        let c = udp_v6(&s6, &d6, &udp);
        udp[6..8].copy_from_slice(&c.to_be_bytes());
        assert!(udp_v6_ok(&s6, &d6, &udp));
    }
}
