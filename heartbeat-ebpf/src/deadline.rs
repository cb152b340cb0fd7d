//! Liveness of each (peer, link): the in-kernel deadline timer re-armed by
//! every valid packet, the up/down transitions it drives, and the rule that
//! defers a verdict this node was in no position to give.
//!
//! # A detector that knows when it was blind
//!
//! An expiry of the deadline timer says "no valid packet from the peer on
//! this link for `node_timeout`". That is evidence against the peer only if,
//! during that window, this node (1) was able to see packets and run its
//! timer on time, (2) asked: its own sender sent the requests the peer's
//! kernel answers, and (3) the path delivered without unusual queueing. At
//! each expiry the program checks what it knows about the three:
//!
//! - `late_timer`: the timer fired more than `late_threshold_ns` after the
//!   deadline it was armed for (`LinkState::expiry_late_*`). The softirq that
//!   runs timers also runs XDP; when it is held up, packets that did arrive
//!   may be waiting in the receive ring, unseen.
//! - `local_stall`: the tc egress program (egress.rs) timestamps every own
//!   request to this peer on this link. If the last one is older than twice
//!   the heartbeat interval, or a gap longer than that ended after the last
//!   packet from the peer (`own_stall_end_ns > last_rx_ns`), the local
//!   sender missed its schedule inside the window: the replies we wait for
//!   were never asked for.
//! - `peer_queued`: the peer's last packet arrived with a relative one-way
//!   delay (receive time minus the peer's transmit time, above the minimum
//!   seen, see `owd_sample` in main.rs) of at least `queue_threshold_ns`,
//!   and rising (above the EWMA of the packets before it): the path is
//!   queueing, the next packets are late rather than lost.
//!
//! If one holds and the silence has not been deferred yet, the verdict is
//! deferred: the timer is re-armed, in the callback, for one grace
//! `g = min(grace_ns, node_timeout_ns)`, a `DEFERRED_*` event is written
//! and the cause counted. Any valid packet in the grace re-arms the timer
//! for `node_timeout` and clears the deferral: the link never went down.
//! When the grace runs out without one, the link goes down, whatever the
//! checks say then (fresh evidence: a whole grace of silence after a window
//! we could not judge).
//!
//! **What it costs a true detection.** Let the last packet from the peer
//! arrive at `L` and the peer die right after. Without the rule the link
//! goes down at `L + T + e1` (`T` = node_timeout, `e1` the timer's
//! lateness). With it, at `L + T + e1` if no check holds, else at
//! `L + T + e1 + g + e2 <= L + 2T + e1 + e2`. A true detection is delayed
//! only when this node was itself stalled (late timer, sender off schedule)
//! or the path was queueing at the end, and then by at most one
//! `node_timeout` plus the second timer's own lateness. With no load none of
//! the checks holds: own requests leave every interval, timer slack is
//! 10-20 us against a threshold of `node_timeout / 4`, and the relative
//! delay stays near zero; so detection times without load are unchanged.
//!
//! **Why it cannot hide a dead peer forever.** `deferred` is set at the
//! first expiry of a silence and cleared only by a valid packet (MAC
//! checked, sequence newer than the last, sender and link configured) from
//! the peer. A dead peer sends none, so the next expiry, one grace later, is
//! a verdict: one deferral per silence, never a chain. A peer behind a queue
//! that never drains is the same: its queued packets clear the deferral
//! only by arriving, and each arrival is proof of life.
//!
//! What the rule cannot do: if the whole node is stalled for longer than
//! `T + g`, the expiry after the grace is a verdict and may be false.
//!
//! Races accepted (documented rather than locked, since a link's packets
//! normally arrive on one RX queue and so on one CPU):
//! - a packet handled while the timer callback runs on another CPU may see
//!   `up == 1` just before the callback clears it; the link then reads down
//!   although its timer is armed again, and the next valid packet emits the
//!   matching `LINK_UP`. Events are never lost, at worst one heartbeat late.
//!   The same packet may also clear `deferred` just before the callback
//!   re-arms the timer for the grace: the link then stays up and the grace
//!   (no longer than `node_timeout`) is the next deadline.
//! - the `LinkState` counters are plain read-modify-write; two CPUs updating
//!   the same slot at the same instant may lose an increment.

use core::ffi::c_void;

use aya_ebpf::helpers::generated::{
    bpf_ktime_get_ns, bpf_timer_init, bpf_timer_set_callback, bpf_timer_start,
};
use heartbeat_common::{Config, LinkState, MAX_LINKS, counter, defer_cause, event_kind};

use crate::maps::{CONFIG, LINKS, TIMERS, TimerSlot, count, emit};

/// `CLOCK_MONOTONIC`: the clock of `bpf_ktime_get_ns` and of the agent.
const CLOCK_MONOTONIC: u64 = 1;
/// `bpf_timer_init` on an already initialised timer (another CPU won).
const EBUSY: i64 = 16;

/// Records a valid packet from (peer, link): re-arms the slot's deadline
/// timer for `timeout_ns`, ends a deferral, and raises `LINK_UP` when the
/// link was down.
#[inline(always)]
pub fn mark_alive(slot: u32, ls: *mut LinkState, timeout_ns: u64, now: u64, peer: u16, link: u8) {
    if let Some(t) = TIMERS.get_ptr_mut(slot) {
        // SAFETY: `t` is a live TIMERS value returned by the map lookup; the
        // timer helpers take the `bpf_timer` inside it and the TIMERS map
        // itself, as the verifier requires.
        unsafe {
            let timer = &raw mut (*t).timer;
            if (*t).ready == 0 {
                let map = (&raw const TIMERS).cast_mut().cast::<c_void>();
                let r = bpf_timer_init(timer, map, CLOCK_MONOTONIC);
                if (r == 0 || r == -EBUSY)
                    && bpf_timer_set_callback(timer, on_deadline as *mut c_void) == 0
                {
                    (*t).ready = 1;
                }
            }
            if (*t).ready != 0 {
                bpf_timer_start(timer, timeout_ns, 0);
                // Informational copy for the agent (which may reset LINKS).
                (*ls).timer_ready = 1;
                (*ls).deadline_ns = now.wrapping_add(timeout_ns);
            }
        }
    }
    // SAFETY: `ls` is a live LINKS value returned by the map lookup.
    unsafe {
        if (*ls).deferred != 0 {
            (*ls).deferred = 0;
            count(counter::DEFER_RESCUED);
        }
        if (*ls).up == 0 {
            (*ls).up = 1;
            (*ls).last_up_ns = now;
            (*ls).up_events += 1;
            emit(event_kind::LINK_UP, peer, link, (*ls).last_rx_ns, now);
        }
    }
}

/// Which check (if any) says the window that just expired could not be
/// judged; see the module doc. `late` is how late the timer fired.
#[inline(always)]
fn blind_cause(cfg: &Config, ls: &LinkState, now: u64, late: u64) -> u8 {
    if cfg.late_threshold_ns != 0 && late > cfg.late_threshold_ns {
        return defer_cause::LATE_TIMER;
    }
    let stall = cfg.heartbeat_interval_ns.saturating_mul(2);
    // own_tx_last_ns == 0: the egress program never saw an own request to
    // this peer on this link (not attached): no judgement.
    if stall != 0
        && ls.own_tx_last_ns != 0
        && (now.saturating_sub(ls.own_tx_last_ns) > stall || ls.own_stall_end_ns > ls.last_rx_ns)
    {
        return defer_cause::LOCAL_STALL;
    }
    if cfg.queue_threshold_ns != 0
        && ls.owd_rising != 0
        && ls.owd_count > 1
        && ls.owd_last_ns >= cfg.queue_threshold_ns
    {
        return defer_cause::PEER_QUEUED;
    }
    0
}

/// Timer callback: `node_timeout` (or a deferral's grace) passed without a
/// valid packet on the link whose slot is `*key`.
extern "C" fn on_deadline(_map: *mut c_void, key: *mut u32, value: *mut TimerSlot) -> i32 {
    // SAFETY: the kernel calls timer callbacks with a valid pointer to the
    // key of the map element holding the timer.
    let slot = unsafe { *key };
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    count(counter::TIMER_EXPIRED);
    let Some(ls) = LINKS.get_ptr_mut(slot) else {
        return 0;
    };
    let peer = (slot / MAX_LINKS) as u16;
    let link = (slot % MAX_LINKS) as u8;
    // SAFETY: `ls` is a live LINKS value returned by the map lookup; plain
    // loads and stores of integers (races accepted, see the module doc).
    unsafe {
        let late = now.saturating_sub((*ls).deadline_ns);
        (*ls).expiries += 1;
        (*ls).expiry_late_last_ns = late;
        if late > (*ls).expiry_late_max_ns {
            (*ls).expiry_late_max_ns = late;
        }
        if (*ls).up != 1 {
            return 0;
        }
        if (*ls).deferred == 0
            && let Some(cfg) = CONFIG.get(0)
        {
            let grace = if cfg.grace_ns < cfg.node_timeout_ns {
                cfg.grace_ns
            } else {
                cfg.node_timeout_ns
            };
            let cause = if grace == 0 {
                0
            } else {
                blind_cause(cfg, &*ls, now, late)
            };
            // SAFETY (of the deref above and the timer below): `value` is the
            // live TIMERS element holding this timer, as the kernel passes it.
            if cause != 0 && bpf_timer_start(&raw mut (*value).timer, grace, 0) == 0 {
                (*ls).deferred = 1;
                (*ls).defer_cause = cause;
                (*ls).deferrals += 1;
                (*ls).deadline_ns = now.wrapping_add(grace);
                let (kind, ctr) = match cause {
                    defer_cause::LATE_TIMER => {
                        (event_kind::DEFERRED_LATE_TIMER, counter::DEFER_LATE_TIMER)
                    }
                    defer_cause::LOCAL_STALL => {
                        (event_kind::DEFERRED_LOCAL_STALL, counter::DEFER_LOCAL_STALL)
                    }
                    _ => (event_kind::DEFERRED_PEER_QUEUED, counter::DEFER_PEER_QUEUED),
                };
                count(ctr);
                emit(kind, peer, link, (*ls).last_rx_ns, now);
                return 0;
            }
        }
        if (*ls).deferred != 0 {
            (*ls).deferred = 0;
            (*ls).deferrals_confirmed += 1;
            count(counter::DEFER_CONFIRMED);
        }
        (*ls).up = 0;
        (*ls).last_down_ns = now;
        (*ls).down_events += 1;
        emit(event_kind::LINK_DOWN, peer, link, (*ls).last_rx_ns, now);
    }
    0
}
