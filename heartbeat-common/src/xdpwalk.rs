//! The frame walk of the XDP program, written over a byte slice for the host.
//!
//! `heartbeat-ebpf/src/main.rs` (`try_heartbeat`, up to and including the
//! header check) walks a frame with its own pointer checks, because the
//! verifier needs them, and its rules differ from [`frame::parse`] in a few
//! places:
//! - it checks the IP length field (IPv4 total length, IPv6 payload length)
//!   against the heartbeat segment; `frame::parse` ignores it;
//! - it classifies: anything not addressed to the heartbeat port (or not
//!   IPv4/IPv6 + UDP as it accepts them) is passed, a datagram to the port
//!   that is not exactly one well-formed header is dropped as malformed, and
//!   a membership prefix is passed up to the agent;
//! - it does not verify IP or UDP checksums (the MAC authenticates the
//!   header; `frame::checksums_ok` is the host's check).
//!
//! [`walk`] follows the program's rules line by line, so that they can be
//! fuzzed on the host and compared with `frame::parse` where the two must
//! agree (see the `frame` fuzz target and the tests below). The parts that
//! need maps (`enabled`, cluster, keys, peers) are left out: the walk stops
//! where the program first reads a key or a peer.
//!
//! Keep it in step with `try_heartbeat`: a change there needs the same
//! change here.

use crate::{
    frame::{
        Addrs, ETH_LEN, ETH_P_8021AD, ETH_P_8021Q, ETH_P_IPV4, ETH_P_IPV6, IPPROTO_UDP, IPV4_LEN,
        IPV6_LEN, UDP_LEN, VLAN_LEN,
    },
    wire::{HEADER_LEN, Header, KIND_MEMBERSHIP, MAGIC, PREFIX_LEN, VERSION},
};

/// Size of a heartbeat's UDP segment (UDP header + heartbeat header).
pub const SEGMENT_LEN: usize = UDP_LEN + HEADER_LEN;

/// What the XDP program decides about a frame before it looks at maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Walk {
    /// Passed to the stack untouched (`PASS_NOT_HEARTBEAT`).
    NotHeartbeat,
    /// A membership message: passed up to the agent (`PASS_MEMBERSHIP`).
    Membership,
    /// A datagram to the heartbeat port that is not one well-formed
    /// heartbeat: dropped (`DROP_MALFORMED`).
    Malformed,
    /// A well-formed heartbeat, on to the cluster, MAC and peer checks.
    Heartbeat(Walked),
}

/// Where the parts of a heartbeat frame are, as the program found them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Walked {
    pub addrs: Addrs,
    pub l3: usize,
    pub udp: usize,
    pub header: Header,
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    let s = b.get(at..at.checked_add(2)?)?;
    Some(u16::from_be_bytes([s[0], s[1]]))
}

/// `at::<T>(ctx, offset)` of the program: the `len` bytes at `offset`, when
/// they all lie inside the frame.
fn at(b: &[u8], offset: usize, len: usize) -> Option<&[u8]> {
    b.get(offset..offset.checked_add(len)?)
}

/// Walks `b` as the XDP program does, with `port` the configured heartbeat port.
pub fn walk(b: &[u8], port: u16) -> Walk {
    match walk_inner(b, port) {
        Ok(w) => Walk::Heartbeat(w),
        Err(w) => w,
    }
}

fn walk_inner(b: &[u8], port: u16) -> Result<Walked, Walk> {
    use Walk::{Malformed, NotHeartbeat};
    // --- Ethernet, optional VLAN tag, IPv4/IPv6, UDP to our port ---
    at(b, 0, ETH_LEN).ok_or(NotHeartbeat)?;
    let mut proto = be16(b, 12).ok_or(NotHeartbeat)?;
    let mut l3 = ETH_LEN;
    if proto == ETH_P_8021Q || proto == ETH_P_8021AD {
        let tag = at(b, ETH_LEN, VLAN_LEN).ok_or(NotHeartbeat)?;
        proto = u16::from_be_bytes([tag[2], tag[3]]);
        l3 += VLAN_LEN;
    }
    let (addrs, udp, ip_payload_len) = match proto {
        ETH_P_IPV4 => {
            let ip = at(b, l3, IPV4_LEN).ok_or(NotHeartbeat)?;
            let frag = u16::from_be_bytes([ip[6], ip[7]]);
            let total = u16::from_be_bytes([ip[2], ip[3]]);
            // IHL 5 only, no fragment (offset or more-fragments bit).
            if ip[0] != 0x45 || ip[9] != IPPROTO_UDP || frag & 0x3fff != 0 {
                return Err(NotHeartbeat);
            }
            let mut src = [0; 4];
            let mut dst = [0; 4];
            src.copy_from_slice(&ip[12..16]);
            dst.copy_from_slice(&ip[16..20]);
            (
                Addrs::V4 { src, dst },
                l3 + IPV4_LEN,
                usize::from(total).wrapping_sub(IPV4_LEN),
            )
        }
        ETH_P_IPV6 => {
            let ip = at(b, l3, IPV6_LEN).ok_or(NotHeartbeat)?;
            if ip[0] >> 4 != 6 || ip[6] != IPPROTO_UDP {
                return Err(NotHeartbeat);
            }
            let mut src = [0; 16];
            let mut dst = [0; 16];
            src.copy_from_slice(&ip[8..24]);
            dst.copy_from_slice(&ip[24..40]);
            (
                Addrs::V6 { src, dst },
                l3 + IPV6_LEN,
                usize::from(u16::from_be_bytes([ip[4], ip[5]])),
            )
        }
        _ => return Err(NotHeartbeat),
    };
    let uh = at(b, udp, UDP_LEN).ok_or(NotHeartbeat)?;
    if u16::from_be_bytes([uh[2], uh[3]]) != port {
        return Err(NotHeartbeat);
    }

    // --- Membership messages (their own kind and length) go to the agent ---
    let prefix = at(b, udp + UDP_LEN, PREFIX_LEN).ok_or(Malformed)?;
    if prefix[..4] == MAGIC && prefix[4] == VERSION && prefix[5] == KIND_MEMBERSHIP {
        return Err(Walk::Membership);
    }

    // --- A datagram to our port: it must be exactly one well-formed header ---
    let seg = at(b, udp, SEGMENT_LEN).ok_or(Malformed)?;
    let ulen = usize::from(u16::from_be_bytes([seg[4], seg[5]]));
    if ulen != SEGMENT_LEN || ip_payload_len != SEGMENT_LEN {
        return Err(Malformed);
    }
    let mut hb = [0u8; HEADER_LEN];
    hb.copy_from_slice(&seg[UDP_LEN..]);
    let header = Header::from_bytes(&hb);
    header.check().map_err(|_| Malformed)?;
    Ok(Walked {
        addrs,
        l3,
        udp,
        header,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        frame::{self, FrameError, FrameSpec, MAX_FRAME},
        wire::DEFAULT_PORT,
    };

    fn v4() -> Addrs {
        Addrs::V4 {
            src: [10, 0, 0, 1],
            dst: [10, 0, 0, 2],
        }
    }

    fn v6() -> Addrs {
        Addrs::V6 {
            src: [0xfd; 16],
            dst: [0xfe; 16],
        }
    }

    fn build(addrs: Addrs, vlan: Option<u16>, payload: &[u8]) -> ([u8; 256], usize) {
        let mut buf = [0u8; 256];
        let spec = FrameSpec {
            src_mac: [2, 0, 0, 0, 0, 1],
            dst_mac: [2, 0, 0, 0, 0, 2],
            vlan,
            addrs,
            src_port: DEFAULT_PORT,
            dst_port: DEFAULT_PORT,
            payload,
        };
        let n = frame::build(&spec, &mut buf).unwrap();
        (buf, n)
    }

    fn request() -> Header {
        let mut h = Header::request(7, 1, 2, 0);
        h.set_sequence(42);
        h
    }

    #[test]
    fn well_formed_heartbeats_agree_with_frame_parse() {
        let h = request();
        for (addrs, vlan) in [(v4(), None), (v6(), None), (v4(), Some(9)), (v6(), Some(9))] {
            let (buf, n) = build(addrs, vlan, h.as_bytes());
            let Walk::Heartbeat(w) = walk(&buf[..n], DEFAULT_PORT) else {
                panic!("not a heartbeat: {addrs:?} {vlan:?}");
            };
            let p = frame::parse(&buf[..n]).unwrap();
            assert_eq!((w.addrs, w.l3, w.udp), (p.addrs, p.l3, p.udp));
            assert_eq!(w.header, h);
            // Ethernet padding after the datagram is allowed by both.
            assert!(matches!(
                walk(&buf[..n + 6], DEFAULT_PORT),
                Walk::Heartbeat(_)
            ));
            // Other port: passed.
            assert_eq!(walk(&buf[..n], DEFAULT_PORT + 1), Walk::NotHeartbeat);
            // Every truncation: passed before the UDP header is complete,
            // dropped as malformed after it; frame::parse rejects them all.
            let udp_end = p.udp + UDP_LEN;
            for cut in 0..n {
                let want = if cut < udp_end {
                    Walk::NotHeartbeat
                } else {
                    Walk::Malformed
                };
                assert_eq!(walk(&buf[..cut], DEFAULT_PORT), want, "cut {cut}");
                assert!(frame::parse(&buf[..cut]).is_err());
            }
        }
    }

    #[test]
    fn ip_length_field_is_checked_by_the_walk_only() {
        let (mut buf, n) = build(v4(), None, request().as_bytes());
        // IPv4 total length one too large: frame::parse does not look.
        buf[ETH_LEN + 3] += 1;
        assert_eq!(walk(&buf[..n], DEFAULT_PORT), Walk::Malformed);
        assert!(frame::parse(&buf[..n]).is_ok());
        let (mut buf, n) = build(v6(), None, request().as_bytes());
        buf[ETH_LEN + 5] -= 1;
        assert_eq!(walk(&buf[..n], DEFAULT_PORT), Walk::Malformed);
        assert!(frame::parse(&buf[..n]).is_ok());
    }

    #[test]
    fn membership_prefix_is_passed_at_any_length() {
        let mut msg = [0u8; 200];
        msg[..4].copy_from_slice(&MAGIC);
        msg[4] = VERSION;
        msg[5] = KIND_MEMBERSHIP;
        for len in [PREFIX_LEN, HEADER_LEN, 200] {
            let mut buf = [0u8; MAX_FRAME + 200];
            let spec = FrameSpec {
                src_mac: [0; 6],
                dst_mac: [0; 6],
                vlan: None,
                addrs: v6(),
                src_port: 1,
                dst_port: DEFAULT_PORT,
                payload: &msg[..len],
            };
            let n = frame::build(&spec, &mut buf).unwrap();
            assert_eq!(walk(&buf[..n], DEFAULT_PORT), Walk::Membership, "len {len}");
        }
    }

    #[test]
    fn wrong_ip_version_is_passed_where_frame_parse_says_bad_length() {
        let (mut buf, n) = build(v6(), None, request().as_bytes());
        buf[ETH_LEN] = 0x4c;
        assert_eq!(walk(&buf[..n], DEFAULT_PORT), Walk::NotHeartbeat);
        assert_eq!(frame::parse(&buf[..n]), Err(FrameError::BadLength));
    }

    #[test]
    fn bad_header_and_udp_length_are_malformed() {
        let mut h = request();
        h.kind = 9;
        let (buf, n) = build(v4(), None, h.as_bytes());
        assert_eq!(walk(&buf[..n], DEFAULT_PORT), Walk::Malformed);
        // A datagram of the wrong size to the port.
        let (buf, n) = build(v4(), None, &[0u8; HEADER_LEN + 1]);
        assert_eq!(walk(&buf[..n], DEFAULT_PORT), Walk::Malformed);
    }
}
