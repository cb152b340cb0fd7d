//! Liveness of each (peer, link): the in-kernel deadline timer re-armed by
//! every valid packet, and the up/down transitions it drives.
//!
//! Races accepted (documented rather than locked, since a link's packets
//! normally arrive on one RX queue and so on one CPU):
//! - a packet handled while the timer callback runs on another CPU may see
//!   `up == 1` just before the callback clears it; the link then reads down
//!   although its timer is armed again, and the next valid packet emits the
//!   matching `LINK_UP`. Events are never lost, at worst one heartbeat late.
//! - the `LinkState` counters are plain read-modify-write; two CPUs updating
//!   the same slot at the same instant may lose an increment.

use core::ffi::c_void;

use aya_ebpf::helpers::generated::{
    bpf_ktime_get_ns, bpf_timer_init, bpf_timer_set_callback, bpf_timer_start,
};
use heartbeat_common::{LinkState, MAX_LINKS, counter, event_kind};

use crate::maps::{LINKS, TIMERS, TimerSlot, count, emit};

/// `CLOCK_MONOTONIC`: the clock of `bpf_ktime_get_ns` and of the agent.
const CLOCK_MONOTONIC: u64 = 1;
/// `bpf_timer_init` on an already initialised timer (another CPU won).
const EBUSY: i64 = 16;

/// Records a valid packet from (peer, link): re-arms the slot's deadline
/// timer for `timeout_ns` and raises `LINK_UP` when the link was down.
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
            }
        }
    }
    // SAFETY: `ls` is a live LINKS value returned by the map lookup.
    unsafe {
        if (*ls).up == 0 {
            (*ls).up = 1;
            (*ls).last_up_ns = now;
            (*ls).up_events += 1;
            emit(event_kind::LINK_UP, peer, link, (*ls).last_rx_ns, now);
        }
    }
}

/// Timer callback: `node_timeout` passed without a valid packet on the link
/// whose slot is `*key`.
extern "C" fn on_deadline(_map: *mut c_void, key: *mut u32, _value: *mut TimerSlot) -> i32 {
    // SAFETY: the kernel calls timer callbacks with a valid pointer to the
    // key of the map element holding the timer.
    let slot = unsafe { *key };
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    if let Some(ls) = LINKS.get_ptr_mut(slot) {
        // SAFETY: `ls` is a live LINKS value returned by the map lookup.
        unsafe {
            if (*ls).up == 1 {
                (*ls).up = 0;
                (*ls).last_down_ns = now;
                (*ls).down_events += 1;
                emit(
                    event_kind::LINK_DOWN,
                    (slot / MAX_LINKS) as u16,
                    (slot % MAX_LINKS) as u8,
                    (*ls).last_rx_ns,
                    now,
                );
            }
        }
    }
    count(counter::TIMER_EXPIRED);
    0
}
