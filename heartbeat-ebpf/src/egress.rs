//! The local sender as the kernel sees it: a tc egress program (attached
//! with TCX on the heartbeat interfaces) that recognises this node's own
//! outgoing heartbeat requests and timestamps them in the `LinkState` of
//! the (target peer, link) they go to. The deadline timer reads these stamps
//! to tell "the peer went silent" from "we stopped asking" (see deadline.rs)
//! without the sender making a syscall per heartbeat to say it sent.
//!
//! An own request is: UDP from and to the heartbeat port (only the agent's
//! socket is bound to it), a heartbeat header of kind Request with our
//! cluster id and our node id as sender, to a configured (peer, link). The
//! MAC is not checked: the worst a forged request can do is hide a local
//! stall, which makes the detector behave as it did without this program
//! (faster verdicts), never hide a dead peer.
//!
//! It also checks the marking that keeps heartbeats ahead of data where the
//! node can: skb priority 6 (`SO_PRIORITY`: band 0 of pfifo_fast and prio)
//! and DSCP CS6; an own request leaving without it is counted in
//! `EGRESS_OFF_PRIORITY`.
//!
//! Apart from the kernel fence (fence.rs: a packet from a package address
//! whose lease ran out is dropped with `TC_ACT_SHOT`, counted in
//! `FENCED_OUT`), the program only observes: it returns `TC_ACT_UNSPEC`
//! (TCX: next program, then the packet goes on), and it never logs; every
//! stamp is counted in `EGRESS_OWN_REQUEST`.

use aya_ebpf::{
    bindings::{TC_ACT_SHOT, TC_ACT_UNSPEC},
    helpers::generated::bpf_ktime_get_ns,
    macros::classifier,
    programs::TcContext,
};
use heartbeat_common::{
    Header, Kind, MAGIC, VERSION, counter,
    frame::{
        ETH_LEN, ETH_P_8021AD, ETH_P_8021Q, ETH_P_IPV4, ETH_P_IPV6, IPPROTO_UDP, IPV6_LEN, UDP_LEN,
        VLAN_LEN,
    },
    link_slot,
};

use crate::{
    maps::{CONFIG, LINKS, PEERS, count},
    packet::be16,
};

/// `TC_PRIO_INTERACTIVE`: the skb priority the sender sets (band 0).
const PRIORITY: u32 = 6;
/// DSCP CS6 in the TOS / traffic class byte (ECN bits masked).
const TOS_CS6: u8 = 0xc0;

#[classifier]
pub fn egress_stamp(ctx: TcContext) -> i32 {
    if crate::fence::fenced_out(&ctx) {
        count(counter::FENCED_OUT);
        return TC_ACT_SHOT as i32;
    }
    stamp(&ctx);
    TC_ACT_UNSPEC
}

/// Stamps the link state when `ctx` holds one of our own requests.
#[inline(always)]
fn stamp(ctx: &TcContext) -> Option<()> {
    let cfg = CONFIG.get(0)?;
    if cfg.enabled == 0 {
        return None;
    }
    let mut proto = be16(ctx.load::<[u8; 2]>(12).ok()?);
    let mut l3 = ETH_LEN;
    if proto == ETH_P_8021Q || proto == ETH_P_8021AD {
        proto = be16(ctx.load::<[u8; 2]>(ETH_LEN + 2).ok()?);
        l3 += VLAN_LEN;
    }
    let (udp, tos) = match proto {
        ETH_P_IPV4 => {
            // version/IHL, TOS, ..., fragment field at 6, protocol at 9.
            let ip = ctx.load::<[u8; 10]>(l3).ok()?;
            let ihl = usize::from(ip[0] & 0x0f);
            if ip[0] >> 4 != 4 || ihl < 5 || ip[9] != IPPROTO_UDP {
                return None;
            }
            if be16([ip[6], ip[7]]) & 0x3fff != 0 {
                return None;
            }
            (l3 + ihl * 4, ip[1])
        }
        ETH_P_IPV6 => {
            let ip = ctx.load::<[u8; 8]>(l3).ok()?;
            if ip[0] >> 4 != 6 || ip[6] != IPPROTO_UDP {
                return None;
            }
            (l3 + IPV6_LEN, (ip[0] << 4) | (ip[1] >> 4))
        }
        _ => return None,
    };
    let ports = ctx.load::<[u8; 4]>(udp).ok()?;
    if be16([ports[0], ports[1]]) != cfg.port || be16([ports[2], ports[3]]) != cfg.port {
        return None;
    }
    let hdr = ctx.load::<Header>(udp + UDP_LEN).ok()?;
    if hdr.magic != MAGIC
        || hdr.version != VERSION
        || hdr.kind() != Some(Kind::Request)
        || hdr.cluster_id() != cfg.cluster_id
        || hdr.sender_id() != cfg.local_node
    {
        return None;
    }
    let target = hdr.target_id();
    let slot = link_slot(target, hdr.link_id)?;
    let peer = PEERS.get(u32::from(target))?;
    if peer.known == 0 || peer.links & (1u32 << (hdr.link_id & 31)) == 0 {
        return None;
    }
    let ls = LINKS.get_ptr_mut(slot)?;
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let stall = cfg.heartbeat_interval_ns.saturating_mul(2);
    // SAFETY: `ls` is a live LINKS value returned by the map lookup; plain
    // loads and stores of integers (races with the XDP program and the
    // timer touch other fields; see deadline.rs).
    unsafe {
        let last = (*ls).own_tx_last_ns;
        if last != 0 && stall != 0 && now > last && now - last > stall {
            (*ls).own_stall_end_ns = now;
            (*ls).own_stall_ns = now - last;
        }
        (*ls).own_tx_last_ns = now;
        (*ls).own_tx_count += 1;
    }
    count(counter::EGRESS_OWN_REQUEST);
    // SAFETY: `skb` is the context pointer the kernel passed; `priority` is
    // a readable field of `__sk_buff`.
    let priority = unsafe { (*ctx.skb.skb).priority };
    if priority != PRIORITY || tos & 0xfc != TOS_CS6 {
        count(counter::EGRESS_OFF_PRIORITY);
    }
    Some(())
}
