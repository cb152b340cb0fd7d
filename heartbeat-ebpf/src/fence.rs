//! The kernel fence of package addresses (issue #9, "never two owners";
//! the timing argument is in `heartbeat_cluster::lease`).
//!
//! `LEASES` maps a package address (IPv4 v4-mapped, IPv6 as is) to the
//! CLOCK_MONOTONIC time until which this node may serve it. The agent's
//! fast path writes it (fenced: 0) and renews it; nothing in the kernel
//! extends it, so when the agent dies, hangs or stops renewing, the address
//! goes dark at the lease's end by this node's clock, and stays dark while
//! the programs stay attached (pinned in bpffs).
//!
//! - XDP ([`fenced_in`]): an IPv4/IPv6 packet to, or an ARP request asking
//!   for (target protocol address; announcements, whose sender and target
//!   are the same, pass), an address whose lease has run out is dropped
//!   and counted in `FENCED_IN`.
//! - tc egress ([`fenced_out`]): an IPv4/IPv6 packet from, or an ARP packet
//!   sent for (sender protocol address), such an address is dropped
//!   (`TC_ACT_SHOT`) and counted in `FENCED_OUT`. Fencing ARP keeps a
//!   fenced node from answering ARP for an address it still has configured,
//!   which would pull clients away from the new owner.
//!
//! Addresses not in the map are never touched; one VLAN tag (802.1Q or
//! 802.1ad) is looked through, as the other parsers do. Until the agent
//! writes the first address (`FENCE_ON`), nothing is parsed; then the
//! lookup happens only for IP and ARP frames, and `now` is read only when
//! the address is in the map.

use aya_ebpf::{
    btf_maps::{Array, HashMap},
    helpers::generated::bpf_ktime_get_ns,
    macros::btf_map,
    programs::{TcContext, XdpContext},
};
use heartbeat_common::{
    LeaseEntry, LeaseKey, MAX_LEASED_ADDRS,
    frame::{ETH_LEN, ETH_P_8021AD, ETH_P_8021Q, ETH_P_IPV4, ETH_P_IPV6, VLAN_LEN},
};

use crate::packet::{EthHdr, Ipv4Hdr, Ipv6Hdr, VlanTag, at, be16};

/// ARP's Ethernet type.
const ETH_P_ARP: u16 = 0x0806;
/// ARP operation: request.
const ARP_REQUEST: u16 = 1;

#[btf_map]
pub static LEASES: HashMap<LeaseKey, LeaseEntry, { MAX_LEASED_ADDRS as usize }> = HashMap::new();

/// Non-zero once the agent has put an address in `LEASES`: until then no
/// frame pays for the hash lookup (an array lookup is inlined).
#[btf_map]
pub static FENCE_ON: Array<u32, 1> = Array::new();

/// Whether any address is fenced or leased.
#[inline(always)]
fn active() -> bool {
    FENCE_ON.get(0).is_some_and(|on| *on != 0)
}

/// An ARP packet for IPv4 over Ethernet (RFC 826), after the Ethernet
/// header (and tag). Only `ptype`, `plen` and `tpa` are read; the rest
/// gives the layout.
#[repr(C)]
#[allow(dead_code, reason = "wire layout: not every field is read")]
struct ArpV4 {
    htype: [u8; 2],
    ptype: [u8; 2],
    hlen: u8,
    plen: u8,
    oper: [u8; 2],
    sha: [u8; 6],
    spa: [u8; 4],
    tha: [u8; 6],
    tpa: [u8; 4],
}

/// Offsets in [`ArpV4`] of the sender and target protocol addresses.
const ARP_SPA: usize = 14;
const ARP_TPA: usize = 24;

/// Whether `key` is a fenced address: in the map with a lease that has
/// run out.
#[inline(always)]
fn expired(key: &LeaseKey) -> bool {
    let Some(entry) = LEASES.get_ptr(key) else {
        return false;
    };
    // SAFETY: `entry` is a live LEASES value returned by the lookup; a plain
    // load of an integer the agent may rewrite at any time (either value is
    // a valid lease).
    let until = unsafe { (*entry).until_ns };
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    now >= until
}

/// XDP: whether the frame is addressed to a fenced address.
#[inline(always)]
pub fn fenced_in(ctx: &XdpContext) -> bool {
    active() && dst_key(ctx).is_some_and(|k| expired(&k))
}

/// The destination (IP) or target protocol address (ARP) of the frame.
#[inline(always)]
fn dst_key(ctx: &XdpContext) -> Option<LeaseKey> {
    let eth: *const EthHdr = at(ctx, 0)?;
    // SAFETY: `at` checked that the Ethernet header lies inside the packet.
    let mut proto = be16(unsafe { (*eth).proto });
    let mut l3 = ETH_LEN;
    if proto == ETH_P_8021Q || proto == ETH_P_8021AD {
        let tag: *const VlanTag = at(ctx, ETH_LEN)?;
        // SAFETY: `at` checked that the tag lies inside the packet.
        proto = be16(unsafe { (*tag).proto });
        l3 += VLAN_LEN;
    }
    match proto {
        ETH_P_IPV4 => {
            let ip: *const Ipv4Hdr = at(ctx, l3)?;
            // SAFETY: `at` checked that the IPv4 header lies inside the packet.
            Some(LeaseKey::v4(unsafe { (*ip).dst }))
        }
        ETH_P_IPV6 => {
            let ip: *const Ipv6Hdr = at(ctx, l3)?;
            // SAFETY: `at` checked that the IPv6 header lies inside the packet.
            Some(LeaseKey::v6(unsafe { (*ip).dst }))
        }
        ETH_P_ARP => {
            let arp: *const ArpV4 = at(ctx, l3)?;
            // SAFETY: `at` checked that the ARP packet lies inside the packet.
            let (ptype, plen, oper, spa, tpa) = unsafe {
                (
                    (*arp).ptype,
                    (*arp).plen,
                    (*arp).oper,
                    (*arp).spa,
                    (*arp).tpa,
                )
            };
            // Requests only, and not announcements (sender = target): a new
            // owner's gratuitous ARP must still reach this node's cache.
            (be16(ptype) == ETH_P_IPV4 && plen == 4 && be16(oper) == ARP_REQUEST && spa != tpa)
                .then_some(LeaseKey::v4(tpa))
        }
        _ => None,
    }
}

/// tc egress: whether the packet leaves from a fenced address.
#[inline(always)]
pub fn fenced_out(ctx: &TcContext) -> bool {
    active() && src_key(ctx).is_some_and(|k| expired(&k))
}

/// The source (IP) or sender protocol address (ARP) of the packet.
#[inline(always)]
fn src_key(ctx: &TcContext) -> Option<LeaseKey> {
    let mut proto = be16(ctx.load::<[u8; 2]>(12).ok()?);
    let mut l3 = ETH_LEN;
    if proto == ETH_P_8021Q || proto == ETH_P_8021AD {
        proto = be16(ctx.load::<[u8; 2]>(ETH_LEN + 2).ok()?);
        l3 += VLAN_LEN;
    }
    match proto {
        // The source address at offset 12 of the IPv4 header.
        ETH_P_IPV4 => Some(LeaseKey::v4(ctx.load::<[u8; 4]>(l3 + 12).ok()?)),
        // ... and at offset 8 of the IPv6 header.
        ETH_P_IPV6 => Some(LeaseKey::v6(ctx.load::<[u8; 16]>(l3 + 8).ok()?)),
        ETH_P_ARP => {
            let head = ctx.load::<[u8; 6]>(l3).ok()?;
            if be16([head[2], head[3]]) != ETH_P_IPV4 || head[5] != 4 {
                return None;
            }
            Some(LeaseKey::v4(ctx.load::<[u8; 4]>(l3 + ARP_SPA).ok()?))
        }
        _ => None,
    }
}

const _: () = assert!(core::mem::size_of::<ArpV4>() == 28);
const _: () = assert!(ARP_TPA + 4 == core::mem::size_of::<ArpV4>());
