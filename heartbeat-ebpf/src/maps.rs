//! The program's BPF maps and the small helpers that touch them: per-CPU
//! counters and ring-buffer events.

use aya_ebpf::{
    bindings::bpf_timer,
    btf_maps::{Array, PerCpuArray, RingBuf},
    macros::btf_map,
};
use heartbeat_common::{
    AgentWatch, Config, EVENT_RING_BYTES, Event, KeySlot, LINK_SLOTS, LinkState, LocalStatus,
    MAX_NODES, PeerConf, RestartWindow, counter,
};

/// A deadline timer of one (peer, link) slot (`TIMERS[link_slot]`).
///
/// The verifier needs the map value's BTF to find the `bpf_timer`, which is
/// why the program is built with `-C link-arg=--btf`.
#[repr(C)]
pub struct TimerSlot {
    pub timer: bpf_timer,
    /// Non-zero once `bpf_timer_init` + `bpf_timer_set_callback` succeeded.
    pub ready: u32,
    pub _pad: u32,
}

/// Whether the dead-man gate is closed (`GATE[0]`): internal to the program,
/// so that one `AGENT_STALE` event is written per closing, not per packet.
#[repr(C)]
pub struct GateState {
    /// Non-zero while requests go unanswered because the agent is stale.
    pub closed: u32,
    pub _pad: u32,
}

#[btf_map]
pub static CONFIG: Array<Config, 1> = Array::new();

#[btf_map]
pub static KEYS: Array<KeySlot, 2> = Array::new();

#[btf_map]
pub static STATUS: Array<LocalStatus, 1> = Array::new();

#[btf_map]
pub static PEERS: Array<PeerConf, { MAX_NODES as usize }> = Array::new();

#[btf_map]
pub static LINKS: Array<LinkState, { LINK_SLOTS as usize }> = Array::new();

#[btf_map]
pub static TIMERS: Array<TimerSlot, { LINK_SLOTS as usize }> = Array::new();

#[btf_map]
pub static AGENT: Array<AgentWatch, 1> = Array::new();

#[btf_map]
pub static GATE: Array<GateState, 1> = Array::new();

#[btf_map]
pub static RESTART: Array<RestartWindow, 1> = Array::new();

/// The nodes the local view counts as members (bit = node id): a reply to
/// one of them carries `node_state::GRANT`.
#[btf_map]
pub static GRANTS: Array<u64, 1> = Array::new();

#[btf_map]
pub static EVENTS: RingBuf<Event, EVENT_RING_BYTES> = RingBuf::new();

#[btf_map]
pub static COUNTERS: PerCpuArray<u64, { counter::SLOTS as usize }> = PerCpuArray::new();

/// Adds one to a per-CPU counter.
#[inline(always)]
pub fn count(index: u32) {
    if let Some(p) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: `p` points into this CPU's slot of a per-CPU array value,
        // which nothing else writes while this program runs on this CPU.
        unsafe { *p += 1 };
    }
}

/// Writes an event to the ring buffer, counting it as lost when it is full.
#[inline(always)]
pub fn emit(kind: u32, peer: u16, link: u8, last_rx_ns: u64, at_ns: u64) {
    let ev = Event {
        kind,
        peer,
        link,
        _pad: 0,
        last_rx_ns,
        at_ns,
    };
    if EVENTS.output(ev, 0).is_err() {
        count(counter::EVENTS_LOST);
    }
}
