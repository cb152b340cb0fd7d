//! Wire layouts of the headers the program reads and rewrites, and
//! bounds-checked access to them in the XDP packet buffer.
//!
//! Every struct has alignment 1 (byte arrays only), so a pointer into the
//! packet can be dereferenced at any offset.

use aya_ebpf::programs::XdpContext;
use heartbeat_common::{
    Header,
    frame::{UDP_LEN, VLAN_LEN},
};

#[repr(C)]
pub struct EthHdr {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    pub proto: [u8; 2],
}

/// An 802.1Q / 802.1ad tag: follows the MAC addresses, replaces the
/// Ethernet type with its own.
#[repr(C)]
pub struct VlanTag {
    pub tci: [u8; 2],
    pub proto: [u8; 2],
}

const _: () = assert!(core::mem::size_of::<VlanTag>() == VLAN_LEN);

#[repr(C)]
pub struct Ipv4Hdr {
    pub version_ihl: u8,
    pub tos: u8,
    pub total_len: [u8; 2],
    pub id: [u8; 2],
    pub frag: [u8; 2],
    pub ttl: u8,
    pub proto: u8,
    pub check: [u8; 2],
    pub src: [u8; 4],
    pub dst: [u8; 4],
}

#[repr(C)]
pub struct Ipv6Hdr {
    pub version_class_flow: [u8; 4],
    pub payload_len: [u8; 2],
    pub next_header: u8,
    pub hop_limit: u8,
    pub src: [u8; 16],
    pub dst: [u8; 16],
}

#[repr(C)]
pub struct UdpHdr {
    pub src: [u8; 2],
    pub dst: [u8; 2],
    pub len: [u8; 2],
    pub check: [u8; 2],
}

const _: () = assert!(core::mem::size_of::<UdpHdr>() == UDP_LEN);

/// The UDP header and the heartbeat header that must follow it: the whole
/// UDP segment of a heartbeat, copied to the stack in one piece so the
/// checksum can run over it.
#[repr(C)]
pub struct Segment {
    pub udp: UdpHdr,
    pub hdr: Header,
}

/// Size of a heartbeat's UDP segment.
pub const SEGMENT_LEN: usize = core::mem::size_of::<Segment>();

impl Segment {
    #[inline(always)]
    pub fn as_bytes(&self) -> &[u8; SEGMENT_LEN] {
        // SAFETY: Segment is repr(C) and made only of byte arrays (alignment
        // 1, no padding), so it is exactly SEGMENT_LEN initialised bytes; the
        // reference keeps `self` borrowed.
        unsafe { &*(self as *const Self).cast::<[u8; SEGMENT_LEN]>() }
    }
}

/// A pointer to a `T` at `offset` in the packet, when the whole `T` lies
/// inside it. The comparison against `data_end` is what the verifier needs
/// before any access through the pointer.
#[inline(always)]
pub fn at<T>(ctx: &XdpContext, offset: usize) -> Option<*mut T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + core::mem::size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *mut T)
}

#[inline(always)]
pub const fn be16(b: [u8; 2]) -> u16 {
    u16::from_be_bytes(b)
}
