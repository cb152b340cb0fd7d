//! Standby NIC takeover (issue #10): the card side of the network
//! manager's polling.
//!
//! On every card the agent polls (those with an entry in `NIC_POLL`, keyed
//! by ifindex) the program counts every frame received (the card's
//! inbound count), answers a poll request addressed to the card in place
//! (`XDP_TX`, stamped with the answer time), and consumes a reply to the
//! card's own request, recording its round trip. So polling wakes no user
//! space on the answering side, and the agent reads one map per interval.
//! Frames on cards without an entry cost one hash lookup and go on to the
//! heartbeat path untouched.
//!
//! Only poll frames from this node reach this far: they carry the cluster
//! id, the node id and the ifindexes of both cards, which only this host's
//! agent knows; anything else of the poll Ethernet type is dropped and
//! counted as `bad`.

use aya_ebpf::{
    bindings::xdp_action, btf_maps::HashMap, helpers::generated::bpf_ktime_get_ns, macros::btf_map,
    programs::XdpContext,
};
use heartbeat_common::nic_poll::{
    ENTRIES, ETH_LEN, ETHERTYPE, KIND_REPLY, KIND_REQUEST, MAGIC, NicPoll, PollHdr,
};

use crate::{
    maps::CONFIG,
    packet::{EthHdr, at, be16},
};

#[btf_map]
pub static NIC_POLL: HashMap<u32, NicPoll, { ENTRIES as usize }> = HashMap::new();

/// Counts the frame on its card and handles poll frames; `None` lets the
/// frame go on to the heartbeat path.
#[inline(always)]
pub fn on_frame(ctx: &XdpContext) -> Option<u32> {
    let ifindex = ctx.ingress_ifindex() as u32;
    let stats = NIC_POLL.get_ptr_mut(ifindex)?;
    // SAFETY: `get_ptr_mut` returned a pointer to the map value, valid for
    // this program run; races between CPUs may lose an increment (counts
    // are evidence of traffic, not exact figures).
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: as above.
    unsafe {
        (*stats).rx_frames += 1;
        (*stats).last_rx_ns = now;
    }
    let eth: *mut EthHdr = at(ctx, 0)?;
    // SAFETY: `at` checked that the Ethernet header lies inside the packet.
    if be16(unsafe { (*eth).proto }) != ETHERTYPE {
        return None;
    }
    Some(match poll(ctx, eth, ifindex, now) {
        Some(action) => action,
        None => {
            // SAFETY: as above.
            unsafe { (*stats).bad += 1 };
            xdp_action::XDP_DROP
        }
    })
}

#[inline(always)]
fn poll(ctx: &XdpContext, eth: *mut EthHdr, ifindex: u32, now: u64) -> Option<u32> {
    let h: *mut PollHdr = at(ctx, ETH_LEN)?;
    let cfg = CONFIG.get(0)?;
    // SAFETY: `at` checked that the poll header lies inside the packet.
    let hdr = unsafe { &mut *h };
    if hdr.magic != MAGIC
        || u32::from_le_bytes(hdr.cluster_id) != cfg.cluster_id
        || u16::from_le_bytes(hdr.node) != cfg.local_node
    {
        return None;
    }
    match hdr.kind {
        KIND_REQUEST if u32::from_le_bytes(hdr.to_ifindex) == ifindex => {
            let stats = NIC_POLL.get_ptr_mut(ifindex)?;
            // SAFETY: as in `on_frame`.
            unsafe { (*stats).rx_requests += 1 };
            hdr.kind = KIND_REPLY;
            hdr.answer_ns = now.to_le_bytes();
            // SAFETY: `at` checked the Ethernet header; swap the addresses.
            unsafe {
                let dst = (*eth).dst;
                (*eth).dst = (*eth).src;
                (*eth).src = dst;
            }
            Some(xdp_action::XDP_TX)
        }
        KIND_REPLY if u32::from_le_bytes(hdr.from_ifindex) == ifindex => {
            let stats = NIC_POLL.get_ptr_mut(ifindex)?;
            let rtt = now.saturating_sub(u64::from_le_bytes(hdr.tx_ns));
            // SAFETY: as in `on_frame`.
            unsafe {
                (*stats).rx_replies += 1;
                (*stats).last_rtt_ns = rtt;
                (*stats).rtt_sum_ns += rtt;
                if rtt > (*stats).rtt_max_ns {
                    (*stats).rtt_max_ns = rtt;
                }
            }
            Some(xdp_action::XDP_DROP)
        }
        _ => None,
    }
}
