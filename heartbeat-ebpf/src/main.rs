//! The heartbeat XDP fast path.
//!
//! Answers authenticated heartbeat requests in place with `XDP_TX`, consumes
//! replies (RTT statistics), keeps per-(peer, link) state and in-kernel
//! deadline timers, and passes every other frame untouched. The agent fills
//! CONFIG / KEYS / STATUS / PEERS and reads LINKS, COUNTERS and EVENTS.
//! The same object holds the tc egress program that timestamps the local
//! sender's own requests (egress.rs) and the tracepoints watching the agent
//! (watch.rs); deadline.rs holds the timers and the rule that defers a
//! verdict this node was too blind to give; fence.rs the kernel fence of
//! package addresses (checked first, on every frame).
//!
//! Nothing is logged per packet: every outcome is a per-CPU counter.
//!
//! Races accepted: LINKS fields are plain read-modify-write. A (peer, link)
//! normally arrives on one RX queue, so on one CPU; if two CPUs handle the
//! same slot at once, an increment can be lost or two packets carrying the
//! same sequence can both pass the replay check (each is still
//! authenticated, and the reply only echoes it). See `deadline` for the
//! up/down races.
//!
//! The crate is `no_std` / `no_main` for the BPF target; on the host it
//! builds as an empty binary so `cargo clippy --all-targets` can check it.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

// The library is a host-side stub (see lib.rs); the program is this binary.
use heartbeat_ebpf as _;

mod deadline;
mod egress;
mod fence;
mod maps;
mod packet;
mod poll;
mod watch;

use aya_ebpf::{
    bindings::xdp_action, helpers::generated::bpf_ktime_get_ns, macros::xdp, programs::XdpContext,
};
use heartbeat_common::{
    Config, Header, Kind, LinkState, checksum, counter, event_kind,
    frame::{
        ETH_LEN, ETH_P_8021AD, ETH_P_8021Q, ETH_P_IPV4, ETH_P_IPV6, IPPROTO_UDP, IPV4_LEN,
        IPV6_LEN, UDP_LEN, VLAN_LEN,
    },
    link_slot, node_state, rtt_bucket,
    siphash::SipKey,
    wire::{KIND_MEMBERSHIP, MAGIC, PREFIX_LEN, VERSION},
};

use crate::{
    deadline::mark_alive,
    maps::{AGENT, CONFIG, GATE, KEYS, LINKS, PEERS, RESTART, STATUS, count, emit},
    packet::{EthHdr, Ipv4Hdr, Ipv6Hdr, SEGMENT_LEN, Segment, UdpHdr, VlanTag, at, be16},
};

/// A frame that leaves the normal path: the action and the counter to bump.
#[derive(Clone, Copy)]
enum Reject {
    Pass(u32),
    Drop(u32),
}

const NOT_HEARTBEAT: Reject = Reject::Pass(counter::PASS_NOT_HEARTBEAT);
const MALFORMED: Reject = Reject::Drop(counter::DROP_MALFORMED);
const UNKNOWN_NODE: Reject = Reject::Drop(counter::DROP_UNKNOWN_NODE);
const REPLAY: Reject = Reject::Drop(counter::DROP_REPLAY);

/// The network header of a heartbeat, for the in-place address swap.
#[derive(Clone, Copy)]
enum L3 {
    V4(*mut Ipv4Hdr),
    V6(*mut Ipv6Hdr),
}

#[xdp]
pub fn heartbeat(ctx: XdpContext) -> u32 {
    // Standby NIC takeover: per-card inbound count and poll frames.
    if let Some(action) = poll::on_frame(&ctx) {
        return action;
    }
    count(counter::RX_FRAMES);
    if fence::fenced_in(&ctx) {
        count(counter::FENCED_IN);
        return xdp_action::XDP_DROP;
    }
    match try_heartbeat(&ctx) {
        Ok(action) => action,
        Err(Reject::Pass(c)) => {
            count(c);
            xdp_action::XDP_PASS
        }
        Err(Reject::Drop(c)) => {
            count(c);
            xdp_action::XDP_DROP
        }
    }
}

#[inline(always)]
fn try_heartbeat(ctx: &XdpContext) -> Result<u32, Reject> {
    // --- Ethernet, optional VLAN tag, IPv4/IPv6, UDP to our port ---
    let eth: *mut EthHdr = at(ctx, 0).ok_or(NOT_HEARTBEAT)?;
    // SAFETY: `at` checked that the Ethernet header lies inside the packet.
    let mut proto = be16(unsafe { (*eth).proto });
    let mut l3_off = ETH_LEN;
    if proto == ETH_P_8021Q || proto == ETH_P_8021AD {
        let tag: *const VlanTag = at(ctx, ETH_LEN).ok_or(NOT_HEARTBEAT)?;
        // SAFETY: `at` checked that the tag lies inside the packet.
        proto = be16(unsafe { (*tag).proto });
        l3_off += VLAN_LEN;
    }
    let (l3, udp_off, ip_payload_len) = match proto {
        ETH_P_IPV4 => {
            let ip: *mut Ipv4Hdr = at(ctx, l3_off).ok_or(NOT_HEARTBEAT)?;
            // SAFETY: `at` checked that the IPv4 header lies inside the packet.
            let (vihl, p, frag, total) = unsafe {
                (
                    (*ip).version_ihl,
                    (*ip).proto,
                    be16((*ip).frag),
                    be16((*ip).total_len),
                )
            };
            // IHL 5 only, no fragment (offset or more-fragments bit).
            if vihl != 0x45 || p != IPPROTO_UDP || frag & 0x3fff != 0 {
                return Err(NOT_HEARTBEAT);
            }
            (
                L3::V4(ip),
                l3_off + IPV4_LEN,
                usize::from(total).wrapping_sub(IPV4_LEN),
            )
        }
        ETH_P_IPV6 => {
            let ip: *mut Ipv6Hdr = at(ctx, l3_off).ok_or(NOT_HEARTBEAT)?;
            // SAFETY: `at` checked that the IPv6 header lies inside the packet.
            let (v, next, len) = unsafe {
                (
                    (*ip).version_class_flow[0] >> 4,
                    (*ip).next_header,
                    be16((*ip).payload_len),
                )
            };
            if v != 6 || next != IPPROTO_UDP {
                return Err(NOT_HEARTBEAT);
            }
            (L3::V6(ip), l3_off + IPV6_LEN, usize::from(len))
        }
        _ => return Err(NOT_HEARTBEAT),
    };
    let udp: *const UdpHdr = at(ctx, udp_off).ok_or(NOT_HEARTBEAT)?;
    let cfg = CONFIG.get(0).ok_or(NOT_HEARTBEAT)?;
    // SAFETY: `at` checked that the UDP header lies inside the packet.
    if be16(unsafe { (*udp).dst }) != cfg.port {
        return Err(NOT_HEARTBEAT);
    }
    if cfg.enabled == 0 {
        return Err(Reject::Pass(counter::PASS_DISABLED));
    }

    // --- Membership messages (their own kind and length) go to the agent ---
    let prefix: *const [u8; PREFIX_LEN] = at(ctx, udp_off + UDP_LEN).ok_or(MALFORMED)?;
    // SAFETY: `at` checked that the prefix lies inside the packet.
    let prefix = unsafe { *prefix };
    if prefix[..4] == MAGIC && prefix[4] == VERSION && prefix[5] == KIND_MEMBERSHIP {
        return Err(Reject::Pass(counter::PASS_MEMBERSHIP));
    }

    // --- A datagram to our port: it must be exactly one well-formed header ---
    let seg_ptr: *mut Segment = at(ctx, udp_off).ok_or(MALFORMED)?;
    // SAFETY: `at` checked that UDP header + heartbeat header lie inside the
    // packet; Segment has alignment 1 and every bit pattern is valid.
    let mut seg: Segment = unsafe { core::ptr::read(seg_ptr) };
    if usize::from(be16(seg.udp.len)) != SEGMENT_LEN || ip_payload_len != SEGMENT_LEN {
        return Err(MALFORMED);
    }
    seg.hdr.check().map_err(|_| MALFORMED)?;

    // --- Identity: cluster, MAC, sender, link, target ---
    if seg.hdr.cluster_id() != cfg.cluster_id {
        return Err(Reject::Drop(counter::DROP_OTHER_CLUSTER));
    }
    let current = KEYS.get(0).ok_or(Reject::Drop(counter::DROP_BAD_MAC))?;
    let key = SipKey {
        k0: current.k0,
        k1: current.k1,
    };
    if current.active == 0 || !seg.hdr.verify(key) {
        match KEYS.get(1) {
            Some(next)
                if next.active != 0
                    && seg.hdr.verify(SipKey {
                        k0: next.k0,
                        k1: next.k1,
                    }) =>
            {
                count(counter::KEY_NEXT)
            }
            _ => return Err(Reject::Drop(counter::DROP_BAD_MAC)),
        }
    }
    let sender = seg.hdr.sender_id();
    let link = seg.hdr.link_id;
    let peer = PEERS.get(u32::from(sender)).ok_or(UNKNOWN_NODE)?;
    if peer.known == 0 || sender == cfg.local_node {
        return Err(UNKNOWN_NODE);
    }
    let slot = link_slot(sender, link).ok_or(UNKNOWN_NODE)?;
    // link < MAX_LINKS (8) once link_slot accepted it.
    if peer.links & (1u32 << (link & 31)) == 0 {
        return Err(UNKNOWN_NODE);
    }
    if seg.hdr.target_id() != cfg.local_node {
        return Err(Reject::Drop(counter::DROP_NOT_FOR_US));
    }
    let ls = LINKS.get_ptr_mut(slot).ok_or(UNKNOWN_NODE)?;
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };

    match seg.hdr.kind() {
        Some(Kind::Request) => {
            on_request(&seg.hdr, cfg, ls, slot, now)?;
            answer(&mut seg, key, now)?;
            write_reply(eth, l3, seg_ptr, &mut seg);
            count(counter::TX_REPLY);
            // SAFETY: `ls` is a live LINKS value returned by the map lookup.
            unsafe { (*ls).replies_tx += 1 };
            Ok(xdp_action::XDP_TX)
        }
        Some(Kind::Reply) => {
            on_reply(&seg.hdr, cfg, ls, slot, now)?;
            count(counter::RX_REPLY);
            Ok(xdp_action::XDP_DROP)
        }
        None => Err(MALFORMED),
    }
}

/// Accepts an authenticated request: replay check, link state, liveness.
#[inline(always)]
fn on_request(
    hdr: &Header,
    cfg: &Config,
    ls: *mut LinkState,
    slot: u32,
    now: u64,
) -> Result<(), Reject> {
    let seq = hdr.sequence();
    // SAFETY: `ls` is a live LINKS value returned by the map lookup.
    unsafe {
        if seq <= (*ls).last_req_seq {
            return Err(REPLAY);
        }
        (*ls).last_req_seq = seq;
        (*ls).requests_rx += 1;
    }
    // The peer's transmit time: its sender's stamp.
    heard_from(
        slot,
        ls,
        hdr,
        hdr.tx_timestamp_ns(),
        cfg.node_timeout_ns,
        now,
    );
    count(counter::RX_REQUEST);
    Ok(())
}

/// A valid packet (request or reply) came from the peer on this link:
/// record the time, the one-way delay and the status it carries, and push
/// its deadline back. `peer_tx` is when the peer sent it, on the peer's clock.
#[inline(always)]
fn heard_from(
    slot: u32,
    ls: *mut LinkState,
    hdr: &Header,
    peer_tx: u64,
    node_timeout_ns: u64,
    now: u64,
) {
    // SAFETY: `ls` is the live LINKS value of `slot` from the map lookup;
    // plain stores of integers (races accepted, see the module doc).
    unsafe {
        let last = (*ls).last_rx_ns;
        if (*ls).owd_count != 0 && hdr.generation() != (*ls).peer_generation {
            // The peer restarted (its clock may have too, after a reboot):
            // the old base means nothing any more.
            (*ls).owd_count = 0;
        }
        if peer_tx != 0 {
            owd_sample(ls, now.wrapping_sub(peer_tx), now.saturating_sub(last));
        }
        if last != 0 && now > last {
            let gap = now - last;
            if gap > (*ls).gap_max_ns {
                (*ls).gap_max_ns = gap;
                (*ls).gap_max_at_ns = now;
            }
            if let Some(bucket) = (*ls).gap_hist.get_mut(rtt_bucket(gap)) {
                *bucket += 1;
            }
        }
        (*ls).last_rx_ns = now;
        (*ls).peer_generation = hdr.generation();
        (*ls).peer_state = hdr.node_state;
        (*ls).peer_packages = hdr.packages();
    }
    mark_alive(slot, ls, node_timeout_ns, now, hdr.sender_id(), hdr.link_id);
}

/// Folds one one-way delay sample into the link state. `raw` is the local
/// receive time minus the peer's transmit time: the two clocks are not
/// synchronised, so `raw` holds an unknown offset (and may wrap); only the
/// delay relative to the minimum seen is meaningful. The base creeps up by
/// 1/16384 of the local time since the previous packet (61 ppm), so that a
/// peer clock running slower than ours (drift) does not look like a growing
/// queue; a queue building for a few `node_timeout`s moves it by nothing
/// that matters. `since_last` is the local time since the previous packet.
#[inline(always)]
fn owd_sample(ls: *mut LinkState, raw: u64, since_last: u64) {
    // SAFETY: `ls` is a live LINKS value returned by the map lookup; plain
    // loads and stores of integers.
    unsafe {
        if (*ls).owd_count == 0 {
            (*ls).owd_base_raw = raw;
            (*ls).owd_last_ns = 0;
            (*ls).owd_ewma_ns = 0;
            (*ls).owd_rising = 0;
            (*ls).owd_count = 1;
            return;
        }
        let mut base = (*ls).owd_base_raw.wrapping_add(since_last >> 14);
        // Signed comparison of wrapping values: a sample below the base.
        if (raw.wrapping_sub(base) as i64) < 0 {
            base = raw;
        }
        (*ls).owd_base_raw = base;
        let rel = raw.wrapping_sub(base);
        let ewma = (*ls).owd_ewma_ns;
        (*ls).owd_rising = u8::from(rel > ewma);
        (*ls).owd_ewma_ns = ewma - ewma / 8 + rel / 8;
        (*ls).owd_last_ns = rel;
        if rel > (*ls).owd_max_ns {
            (*ls).owd_max_ns = rel;
        }
        (*ls).owd_count += 1;
    }
}

/// The dead-man gate and the reply header: fails with `DROP_AGENT_STALE`
/// when the agent's stamp is older than `agent_timeout` (or an announced
/// restart window ran out), else turns the request header into the sealed
/// reply.
#[inline(always)]
fn answer(seg: &mut Segment, key: SipKey, now: u64) -> Result<(), Reject> {
    let stale = Reject::Drop(counter::DROP_AGENT_STALE);
    let cfg = CONFIG.get(0).ok_or(stale)?;
    let status = STATUS.get(0).ok_or(stale)?;
    let gate = GATE.get_ptr_mut(0).ok_or(stale)?;
    // A stamp ahead of `now` (written between our clock read and this
    // check) counts as fresh. The agent is also stale from the moment the
    // kernel saw it exit or stop (watch.rs) until its sender writes a newer
    // stamp.
    //
    // An announced restart (RESTART[0], see `RestartWindow`) overrides both
    // while its deadline lies ahead: the old agent's sender has exited on
    // purpose and the next agent adopts this program. Once the deadline has
    // passed the gate is closed, whatever the stamp says, until an agent
    // clears the window.
    let halted_at = AGENT.get(0).map(|w| w.halted_at_ns).unwrap_or(0);
    let restart_until = RESTART.get(0).map(|r| r.until_ns).unwrap_or(0);
    let restarting = restart_until != 0 && now < restart_until;
    let closed = if restart_until != 0 {
        !restarting
    } else {
        now.saturating_sub(status.agent_stamp_ns) > cfg.agent_timeout_ns
            || (halted_at != 0 && halted_at >= status.agent_stamp_ns)
    };
    if closed {
        // SAFETY: `gate` is a live GATE value returned by the map lookup.
        // Two CPUs closing the gate at the same instant may both see it open
        // and write two events; the agent treats them as one.
        unsafe {
            if (*gate).closed == 0 {
                (*gate).closed = 1;
                emit(
                    event_kind::AGENT_STALE,
                    seg.hdr.sender_id(),
                    seg.hdr.link_id,
                    status.agent_stamp_ns,
                    now,
                );
            }
        }
        return Err(stale);
    }
    // SAFETY: as above.
    unsafe {
        if (*gate).closed != 0 {
            (*gate).closed = 0;
        }
    }
    let hdr = &mut seg.hdr;
    hdr.make_reply();
    hdr.set_rx_timestamp_ns(now);
    hdr.set_generation(status.generation);
    hdr.node_state = if restarting {
        node_state::RESTARTING | (status.node_state & node_state::QUORATE)
    } else {
        status.node_state
    };
    hdr.set_packages(status.packages);
    hdr.seal(key);
    Ok(())
}

/// Rewrites the frame into the reply: MACs, addresses and ports swapped,
/// the new header and UDP checksum written back. The IPv4 header checksum
/// is a sum over 16-bit words, so swapping the addresses keeps it right.
#[inline(always)]
fn write_reply(eth: *mut EthHdr, l3: L3, seg_ptr: *mut Segment, seg: &mut Segment) {
    // SAFETY: `eth` was bounds-checked by `at`, and no helper that can move
    // packet data ran since.
    unsafe { core::mem::swap(&mut (*eth).dst, &mut (*eth).src) };
    core::mem::swap(&mut seg.udp.src, &mut seg.udp.dst);
    seg.udp.check = [0; 2];
    let sum = match l3 {
        // SAFETY: `ip` was bounds-checked by `at`, as above.
        L3::V4(ip) => unsafe {
            let src = (*ip).src;
            let dst = (*ip).dst;
            (*ip).src = dst;
            (*ip).dst = src;
            checksum::udp_v4(&dst, &src, seg.as_bytes())
        },
        // SAFETY: as above.
        L3::V6(ip) => unsafe {
            let src = (*ip).src;
            let dst = (*ip).dst;
            (*ip).src = dst;
            (*ip).dst = src;
            checksum::udp_v6(&dst, &src, seg.as_bytes())
        },
    };
    seg.udp.check = sum.to_be_bytes();
    // SAFETY: `seg_ptr` was bounds-checked for a whole Segment by `at`.
    unsafe { core::ptr::copy_nonoverlapping(seg, seg_ptr, 1) };
}

/// Consumes an authenticated reply: replay and timestamp checks, RTT
/// statistics, link state, liveness.
#[inline(always)]
fn on_reply(
    hdr: &Header,
    cfg: &Config,
    ls: *mut LinkState,
    slot: u32,
    now: u64,
) -> Result<(), Reject> {
    let seq = hdr.sequence();
    let tx = hdr.tx_timestamp_ns();
    // SAFETY: `ls` is a live LINKS value returned by the map lookup.
    unsafe {
        if seq <= (*ls).last_reply_seq {
            return Err(REPLAY);
        }
        if tx > now {
            return Err(Reject::Drop(counter::DROP_BAD_TIMESTAMP));
        }
        let rtt = now - tx;
        (*ls).last_reply_seq = seq;
        (*ls).rtt_last_ns = rtt;
        if (*ls).rtt_count == 0 {
            (*ls).rtt_min_ns = rtt;
            (*ls).rtt_max_ns = rtt;
            (*ls).rtt_ewma_ns = rtt;
        } else {
            if rtt < (*ls).rtt_min_ns {
                (*ls).rtt_min_ns = rtt;
            }
            if rtt > (*ls).rtt_max_ns {
                (*ls).rtt_max_ns = rtt;
            }
            let ewma = (*ls).rtt_ewma_ns;
            (*ls).rtt_ewma_ns = ewma - ewma / 8 + rtt / 8;
        }
        (*ls).rtt_count += 1;
        if tx > (*ls).last_reply_tx_ns {
            (*ls).last_reply_tx_ns = tx;
        }
        (*ls).rtt_sum_ns = (*ls).rtt_sum_ns.wrapping_add(rtt);
        if let Some(bucket) = (*ls).rtt_hist.get_mut(rtt_bucket(rtt)) {
            *bucket += 1;
        }
        (*ls).replies_rx += 1;
    }
    // The peer's transmit time: its XDP program's stamp, taken as it
    // turned our request into this reply.
    heard_from(
        slot,
        ls,
        hdr,
        hdr.rx_timestamp_ns(),
        cfg.node_timeout_ns,
        now,
    );
    Ok(())
}

#[cfg(not(target_arch = "bpf"))]
fn main() {}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
