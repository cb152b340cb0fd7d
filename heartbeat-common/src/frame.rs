//! Ethernet / 802.1Q / IPv4 / IPv6 / UDP framing of heartbeats.
//!
//! The XDP program parses frames with its own pointer checks (the verifier
//! needs them); this host-side parser and builder follow the same rules and
//! are used by the agent, the tests and the benchmark to craft and check
//! frames.

use crate::{checksum, wire::HEADER_LEN};

pub const ETH_LEN: usize = 14;
pub const VLAN_LEN: usize = 4;
pub const IPV4_LEN: usize = 20;
pub const IPV6_LEN: usize = 40;
pub const UDP_LEN: usize = 8;
pub const ETH_P_IPV4: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;
pub const IPPROTO_UDP: u8 = 17;
/// Largest heartbeat frame: Ethernet + VLAN + IPv6 + UDP + header.
pub const MAX_FRAME: usize = ETH_LEN + VLAN_LEN + IPV6_LEN + UDP_LEN + HEADER_LEN;

/// Network addresses of a heartbeat frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Addrs {
    V4 { src: [u8; 4], dst: [u8; 4] },
    V6 { src: [u8; 16], dst: [u8; 16] },
}

/// Where the parts of a parsed UDP frame are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Parsed {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub vlan: Option<u16>,
    pub addrs: Addrs,
    pub l3: usize,
    pub udp: usize,
    pub payload: usize,
    pub src_port: u16,
    pub dst_port: u16,
    /// UDP payload length from the UDP header.
    pub payload_len: usize,
}

/// Why a frame is not a UDP datagram this parser accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameError {
    Truncated,
    NotIp,
    NotUdp,
    /// IPv4 options, fragments or IPv6 extension headers.
    Unsupported,
    BadLength,
}

fn be16(b: &[u8], at: usize) -> Result<u16, FrameError> {
    match b.get(at..at + 2) {
        Some(s) => Ok(u16::from_be_bytes([s[0], s[1]])),
        None => Err(FrameError::Truncated),
    }
}

/// Parses Ethernet (one optional 802.1Q/802.1ad tag), IPv4 without options or
/// IPv6 without extension headers, and UDP.
pub fn parse(b: &[u8]) -> Result<Parsed, FrameError> {
    if b.len() < ETH_LEN {
        return Err(FrameError::Truncated);
    }
    let mut dst_mac = [0; 6];
    let mut src_mac = [0; 6];
    dst_mac.copy_from_slice(&b[0..6]);
    src_mac.copy_from_slice(&b[6..12]);
    let mut proto = be16(b, 12)?;
    let mut l3 = ETH_LEN;
    let mut vlan = None;
    if proto == ETH_P_8021Q || proto == ETH_P_8021AD {
        vlan = Some(be16(b, 14)? & 0x0fff);
        proto = be16(b, 16)?;
        l3 += VLAN_LEN;
    }
    let (addrs, udp) = match proto {
        ETH_P_IPV4 => {
            let ip = b.get(l3..l3 + IPV4_LEN).ok_or(FrameError::Truncated)?;
            if ip[0] != 0x45 {
                return Err(FrameError::Unsupported);
            }
            if ip[9] != IPPROTO_UDP {
                return Err(FrameError::NotUdp);
            }
            if u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff != 0 {
                return Err(FrameError::Unsupported);
            }
            let mut src = [0; 4];
            let mut dst = [0; 4];
            src.copy_from_slice(&ip[12..16]);
            dst.copy_from_slice(&ip[16..20]);
            (Addrs::V4 { src, dst }, l3 + IPV4_LEN)
        }
        ETH_P_IPV6 => {
            let ip = b.get(l3..l3 + IPV6_LEN).ok_or(FrameError::Truncated)?;
            if ip[0] >> 4 != 6 {
                return Err(FrameError::BadLength);
            }
            if ip[6] != IPPROTO_UDP {
                return Err(FrameError::NotUdp);
            }
            let mut src = [0; 16];
            let mut dst = [0; 16];
            src.copy_from_slice(&ip[8..24]);
            dst.copy_from_slice(&ip[24..40]);
            (Addrs::V6 { src, dst }, l3 + IPV6_LEN)
        }
        _ => return Err(FrameError::NotIp),
    };
    let src_port = be16(b, udp)?;
    let dst_port = be16(b, udp + 2)?;
    let ulen = be16(b, udp + 4)? as usize;
    if ulen < UDP_LEN || udp + ulen > b.len() {
        return Err(FrameError::BadLength);
    }
    Ok(Parsed {
        src_mac,
        dst_mac,
        vlan,
        addrs,
        l3,
        udp,
        payload: udp + UDP_LEN,
        src_port,
        dst_port,
        payload_len: ulen - UDP_LEN,
    })
}

/// Whether the IP and UDP checksums of a parsed frame are right.
pub fn checksums_ok(b: &[u8], p: &Parsed) -> bool {
    let udp = &b[p.udp..p.udp + UDP_LEN + p.payload_len];
    match p.addrs {
        Addrs::V4 { src, dst } => {
            checksum::fold(checksum::add(0, &b[p.l3..p.l3 + IPV4_LEN])) == 0
                && checksum::udp_v4_ok(&src, &dst, udp)
        }
        Addrs::V6 { src, dst } => checksum::udp_v6_ok(&src, &dst, udp),
    }
}

/// What to put in a crafted frame.
#[derive(Clone, Copy, Debug)]
pub struct FrameSpec<'a> {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub vlan: Option<u16>,
    pub addrs: Addrs,
    pub src_port: u16,
    pub dst_port: u16,
    pub payload: &'a [u8],
}

/// Writes a frame into `out` with correct IPv4 and UDP checksums and returns
/// its length, or `None` when `out` is too small.
pub fn build(spec: &FrameSpec<'_>, out: &mut [u8]) -> Option<usize> {
    let l3 = ETH_LEN + if spec.vlan.is_some() { VLAN_LEN } else { 0 };
    let ip_len = match spec.addrs {
        Addrs::V4 { .. } => IPV4_LEN,
        Addrs::V6 { .. } => IPV6_LEN,
    };
    let udp = l3 + ip_len;
    let ulen = UDP_LEN + spec.payload.len();
    let total = udp + ulen;
    if out.len() < total || ulen > usize::from(u16::MAX) - IPV6_LEN {
        return None;
    }
    let out = &mut out[..total];
    out.fill(0);
    out[0..6].copy_from_slice(&spec.dst_mac);
    out[6..12].copy_from_slice(&spec.src_mac);
    let ethertype = match spec.addrs {
        Addrs::V4 { .. } => ETH_P_IPV4,
        Addrs::V6 { .. } => ETH_P_IPV6,
    };
    if let Some(tag) = spec.vlan {
        out[12..14].copy_from_slice(&ETH_P_8021Q.to_be_bytes());
        out[14..16].copy_from_slice(&(tag & 0x0fff).to_be_bytes());
        out[16..18].copy_from_slice(&ethertype.to_be_bytes());
    } else {
        out[12..14].copy_from_slice(&ethertype.to_be_bytes());
    }
    out[udp..udp + 2].copy_from_slice(&spec.src_port.to_be_bytes());
    out[udp + 2..udp + 4].copy_from_slice(&spec.dst_port.to_be_bytes());
    out[udp + 4..udp + 6].copy_from_slice(&(ulen as u16).to_be_bytes());
    out[udp + 8..].copy_from_slice(spec.payload);
    match spec.addrs {
        Addrs::V4 { src, dst } => {
            let ip = &mut out[l3..l3 + IPV4_LEN];
            ip[0] = 0x45;
            ip[1] = 0xc0; // DSCP CS6
            ip[2..4].copy_from_slice(&((IPV4_LEN + ulen) as u16).to_be_bytes());
            ip[6] = 0x40; // DF
            ip[8] = 64;
            ip[9] = IPPROTO_UDP;
            ip[12..16].copy_from_slice(&src);
            ip[16..20].copy_from_slice(&dst);
            let c = checksum::ipv4_header(ip);
            ip[10..12].copy_from_slice(&c.to_be_bytes());
            let c = checksum::udp_v4(&src, &dst, &out[udp..]);
            out[udp + 6..udp + 8].copy_from_slice(&c.to_be_bytes());
        }
        Addrs::V6 { src, dst } => {
            let ip = &mut out[l3..l3 + IPV6_LEN];
            ip[0] = 0x6c; // version 6, traffic class CS6
            ip[4..6].copy_from_slice(&(ulen as u16).to_be_bytes());
            ip[6] = IPPROTO_UDP;
            ip[7] = 64;
            ip[8..24].copy_from_slice(&src);
            ip[24..40].copy_from_slice(&dst);
            let c = checksum::udp_v6(&src, &dst, &out[udp..]);
            out[udp + 6..udp + 8].copy_from_slice(&c.to_be_bytes());
        }
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(addrs: Addrs, vlan: Option<u16>, payload: &[u8]) -> FrameSpec<'_> {
        FrameSpec {
            src_mac: [2, 0, 0, 0, 0, 1],
            dst_mac: [2, 0, 0, 0, 0, 2],
            vlan,
            addrs,
            src_port: 6405,
            dst_port: 6405,
            payload,
        }
    }

    #[test]
    fn build_parse_round_trip_all_families() {
        let payload = [7u8; HEADER_LEN];
        let v4 = Addrs::V4 {
            src: [10, 0, 0, 1],
            dst: [10, 0, 0, 2],
        };
        let v6 = Addrs::V6 {
            src: [0xfd; 16],
            dst: [0xfe; 16],
        };
        for (addrs, vlan) in [(v4, None), (v6, None), (v4, Some(100)), (v6, Some(4094))] {
            let mut buf = [0u8; MAX_FRAME];
            let n = build(&spec(addrs, vlan, &payload), &mut buf).unwrap();
            let p = parse(&buf[..n]).unwrap();
            assert_eq!(p.addrs, addrs);
            assert_eq!(p.vlan, vlan);
            assert_eq!(p.payload_len, HEADER_LEN);
            assert_eq!(&buf[p.payload..n], &payload);
            assert!(checksums_ok(&buf[..n], &p));
            // Every truncation is rejected or yields a shorter, consistent view.
            for cut in 0..n {
                assert!(parse(&buf[..cut]).is_err(), "cut {cut}");
            }
        }
    }

    #[test]
    fn rejects_non_udp_and_non_ip() {
        let mut buf = [0u8; MAX_FRAME];
        let payload = [0u8; 4];
        let n = build(
            &spec(
                Addrs::V4 {
                    src: [1; 4],
                    dst: [2; 4],
                },
                None,
                &payload,
            ),
            &mut buf,
        )
        .unwrap();
        let mut tcp = buf;
        tcp[ETH_LEN + 9] = 6;
        assert_eq!(parse(&tcp[..n]), Err(FrameError::NotUdp));
        let mut arp = buf;
        arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        assert_eq!(parse(&arp[..n]), Err(FrameError::NotIp));
    }
}
