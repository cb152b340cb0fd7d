//! Types of the BPF maps shared by the XDP program and the agent.
//!
//! Every struct is `#[repr(C)]` with explicit padding, no `bool` and no
//! `Option`, so both sides agree on the layout byte for byte.

/// Highest node id + 1. Node ids are 1..MAX_NODES.
pub const MAX_NODES: u32 = 64;
/// Links (heartbeat networks) per peer. Link ids are 0..MAX_LINKS.
pub const MAX_LINKS: u32 = 8;
/// Entries of the per-(peer, link) maps.
pub const LINK_SLOTS: u32 = MAX_NODES * MAX_LINKS;
/// Buckets of the RTT log2 histogram: bucket `i` counts RTTs in
/// `[2^i, 2^(i+1))` ns; bucket 0 also holds 0 and 1 ns, the last one holds
/// everything above.
pub const RTT_BUCKETS: usize = 32;
/// Ring buffer size for events (bytes, a power of two multiple of the page).
pub const EVENT_RING_BYTES: usize = 64 * 1024;

/// Map names, as the agent looks them up.
pub mod names {
    pub const CONFIG: &str = "CONFIG";
    pub const KEYS: &str = "KEYS";
    pub const STATUS: &str = "STATUS";
    pub const PEERS: &str = "PEERS";
    pub const LINKS: &str = "LINKS";
    pub const TIMERS: &str = "TIMERS";
    pub const EVENTS: &str = "EVENTS";
    pub const COUNTERS: &str = "COUNTERS";
    pub const AGENT: &str = "AGENT";
    /// The dead-man gate's own state (program-internal).
    pub const GATE: &str = "GATE";
    /// The announced restart window (`RESTART[0]`).
    pub const RESTART: &str = "RESTART";
    /// The kernel fence's package address leases (`LEASES`, see
    /// [`super::LeaseKey`]).
    pub const LEASES: &str = "LEASES";
    /// Whether `LEASES` is in use (`FENCE_ON[0]`, a u32): the programs skip
    /// the fence until the agent sets it.
    pub const FENCE_ON: &str = "FENCE_ON";
    /// Every map of the object: what an announced restart pins and the
    /// next agent adopts.
    pub const ALL_MAPS: [&str; 13] = [
        CONFIG, KEYS, STATUS, PEERS, LINKS, TIMERS, EVENTS, COUNTERS, AGENT, GATE, RESTART, LEASES,
        FENCE_ON,
    ];
    pub const PROGRAM: &str = "heartbeat";
    /// Raw tracepoint program on `sched_process_exit`.
    pub const AGENT_EXIT: &str = "agent_exit";
    /// Raw tracepoint program on `signal_deliver`.
    pub const AGENT_STOP: &str = "agent_stop";
    /// tc egress (TCX) program stamping the local sender's own requests.
    pub const EGRESS_STAMP: &str = "egress_stamp";
}

/// Index of a (peer, link) pair in the per-link maps, or `None` when either
/// is out of range.
#[inline(always)]
pub const fn link_slot(node: u16, link: u8) -> Option<u32> {
    let node = node as u32;
    let link = link as u32;
    if node == 0 || node >= MAX_NODES || link >= MAX_LINKS {
        None
    } else {
        Some(node * MAX_LINKS + link)
    }
}

/// Static configuration written once by the agent (`CONFIG[0]`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// Silence after which a (peer, link) is declared down.
    pub node_timeout_ns: u64,
    /// Age of the agent's liveness stamp after which requests go unanswered.
    pub agent_timeout_ns: u64,
    pub cluster_id: u32,
    pub local_node: u16,
    /// UDP port in host order.
    pub port: u16,
    /// Non-zero once the agent has filled every map; before that the program
    /// passes everything.
    pub enabled: u32,
    pub _pad: u32,
    // --- The deferral rule (heartbeat-ebpf deadline.rs); 0 turns a check off ---
    /// The local sender's period. Own requests to a peer further apart than
    /// twice this mean the local sender missed its schedule (a local stall).
    pub heartbeat_interval_ns: u64,
    /// An expiry whose timer fired later than this after its deadline was
    /// judged by a node that could not watch (a late timer).
    pub late_threshold_ns: u64,
    /// A peer whose last packet arrived with a relative one-way delay above
    /// this, and rising, is behind a queue.
    pub queue_threshold_ns: u64,
    /// How long one deferral postpones the verdict; the kernel caps it at
    /// `node_timeout_ns`. 0: never defer.
    pub grace_ns: u64,
}

/// One MAC key slot (`KEYS[0]` current, `KEYS[1]` next).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KeySlot {
    pub k0: u64,
    pub k1: u64,
    /// Non-zero when the slot holds a key.
    pub active: u32,
    pub _pad: u32,
}

/// The local node's status, written by the agent (`STATUS[0]`) and echoed in
/// every reply.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LocalStatus {
    /// CLOCK_MONOTONIC ns of the agent's last liveness refresh (the dead-man stamp).
    pub agent_stamp_ns: u64,
    /// Health bitmap of the packages this node runs.
    pub packages: u64,
    /// The agent's generation: changes when the agent restarts.
    pub generation: u32,
    /// One of `wire::node_state`.
    pub node_state: u8,
    pub _pad: [u8; 3],
}

/// The kernel's watch on the agent process (`AGENT[0]`): the agent writes
/// its pid and its sender thread's tid once; two tracepoint programs record
/// the moment the sender (or main) thread exits or the process takes a stop
/// signal. The XDP program treats the agent as stale from that moment until
/// the sender writes a newer liveness stamp, so a killed or stopped agent
/// stops being answered for at once instead of after `agent_timeout`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AgentWatch {
    /// CLOCK_MONOTONIC ns of the last exit or stop seen (0: never).
    pub halted_at_ns: u64,
    /// How many exits and stops were seen.
    pub halts: u64,
    /// The agent's process id (0: not watched).
    pub tgid: u32,
    /// The sender thread's id.
    pub sender_tid: u32,
}

/// An announced agent restart (`RESTART[0]`), written by the agent that
/// is about to exit for a restart and cleared by the agent that adopts the
/// pinned program. While `until_ns` lies ahead, the dead-man gate stays open
/// although the agent's sender is gone (its exit does not close it), and
/// replies carry `RESTARTING`; from `until_ns` on the gate is closed until
/// an agent writes a fresh stamp and clears the window.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RestartWindow {
    /// CLOCK_MONOTONIC ns at which the window runs out (0: no window).
    pub until_ns: u64,
    /// CLOCK_MONOTONIC ns of the announcement.
    pub announced_ns: u64,
}

/// A configured peer (`PEERS[node_id]`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeerConf {
    /// Non-zero when the node is a cluster member.
    pub known: u32,
    /// Bit `l` set when link `l` is configured for this peer.
    pub links: u32,
}

/// Per-(peer, link) state kept by the XDP program (`LINKS[link_slot]`).
/// The agent only reads it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkState {
    /// CLOCK_MONOTONIC ns of the last valid packet from the peer on this link.
    pub last_rx_ns: u64,
    /// Highest request sequence accepted from the peer.
    pub last_req_seq: u64,
    /// Highest reply sequence accepted from the peer.
    pub last_reply_seq: u64,
    pub requests_rx: u64,
    pub replies_rx: u64,
    pub replies_tx: u64,
    pub rtt_last_ns: u64,
    pub rtt_min_ns: u64,
    pub rtt_max_ns: u64,
    /// Exponentially weighted moving average, alpha = 1/8.
    pub rtt_ewma_ns: u64,
    pub rtt_count: u64,
    pub rtt_sum_ns: u64,
    /// CLOCK_MONOTONIC ns of the last down (timer expiry) and up transitions.
    pub last_down_ns: u64,
    pub last_up_ns: u64,
    pub down_events: u64,
    pub up_events: u64,
    /// Status the peer reported in its last reply or request.
    pub peer_packages: u64,
    pub peer_generation: u32,
    pub peer_state: u8,
    /// 1 while the link is up (a valid packet arrived within node_timeout).
    pub up: u8,
    /// 1 once the deadline timer of this slot has been initialised.
    pub timer_ready: u8,
    pub _pad: u8,
    pub rtt_hist: [u64; RTT_BUCKETS],
    /// Largest gap between two valid packets from the peer on this link
    /// (what the receiving side saw on the wire), and when it ended.
    pub gap_max_ns: u64,
    pub gap_max_at_ns: u64,
    /// Log2 histogram of those gaps (same buckets as `rtt_hist`).
    pub gap_hist: [u64; RTT_BUCKETS],
    // --- What the detector knows about its own blindness (deadline.rs) ---
    /// CLOCK_MONOTONIC ns the deadline timer was last armed for.
    pub deadline_ns: u64,
    /// Deadline expiries, and how late the timer fired (expiry time minus
    /// the deadline it was armed for): the last one and the largest.
    pub expiries: u64,
    pub expiry_late_last_ns: u64,
    pub expiry_late_max_ns: u64,
    /// The local sender as the tc egress program saw it: the last own
    /// request to this peer on this link, and how many were seen.
    pub own_tx_last_ns: u64,
    pub own_tx_count: u64,
    /// The last gap between two own requests longer than twice the
    /// heartbeat interval (a local stall): when it ended and how long it was.
    pub own_stall_end_ns: u64,
    pub own_stall_ns: u64,
    /// One-way delay from the peer: local receive time minus the peer's
    /// transmit time, a wrapping difference that includes the unknown offset
    /// between the two clocks. Its minimum (creeping up by 1/16384 of the
    /// time between packets, to follow clock drift) is the base the other
    /// delays are relative to.
    pub owd_base_raw: u64,
    /// Relative one-way delay (above the base): last packet, EWMA (1/8),
    /// largest, and the number of samples.
    pub owd_last_ns: u64,
    pub owd_ewma_ns: u64,
    pub owd_max_ns: u64,
    pub owd_count: u64,
    /// Verdicts deferred on this link (all causes), and deferrals whose
    /// grace ran out without a packet (the link then went down).
    pub deferrals: u64,
    pub deferrals_confirmed: u64,
    /// 1 while a verdict is deferred (at most one deferral per silence).
    pub deferred: u8,
    /// Cause of the last deferral (`defer_cause::*`, 0: none yet).
    pub defer_cause: u8,
    /// 1 when the last packet's relative delay was above the EWMA before it.
    pub owd_rising: u8,
    pub _pad2: [u8; 5],
    /// Our own transmit time (CLOCK_MONOTONIC ns, the sender's stamp
    /// echoed back) of the newest request the peer answered on this link:
    /// the peer has received a heartbeat sent at this time. A package
    /// lease renewal is anchored here (heartbeat_cluster::lease, A2).
    pub last_reply_tx_ns: u64,
}

impl LinkState {
    pub const ZERO: Self = Self {
        last_rx_ns: 0,
        last_req_seq: 0,
        last_reply_seq: 0,
        requests_rx: 0,
        replies_rx: 0,
        replies_tx: 0,
        rtt_last_ns: 0,
        rtt_min_ns: 0,
        rtt_max_ns: 0,
        rtt_ewma_ns: 0,
        rtt_count: 0,
        rtt_sum_ns: 0,
        last_down_ns: 0,
        last_up_ns: 0,
        down_events: 0,
        up_events: 0,
        peer_packages: 0,
        peer_generation: 0,
        peer_state: 0,
        up: 0,
        timer_ready: 0,
        _pad: 0,
        rtt_hist: [0; RTT_BUCKETS],
        gap_max_ns: 0,
        gap_max_at_ns: 0,
        gap_hist: [0; RTT_BUCKETS],
        deadline_ns: 0,
        expiries: 0,
        expiry_late_last_ns: 0,
        expiry_late_max_ns: 0,
        own_tx_last_ns: 0,
        own_tx_count: 0,
        own_stall_end_ns: 0,
        own_stall_ns: 0,
        owd_base_raw: 0,
        owd_last_ns: 0,
        owd_ewma_ns: 0,
        owd_max_ns: 0,
        owd_count: 0,
        deferrals: 0,
        deferrals_confirmed: 0,
        deferred: 0,
        defer_cause: 0,
        owd_rising: 0,
        _pad2: [0; 5],
        last_reply_tx_ns: 0,
    };
}

impl Default for LinkState {
    fn default() -> Self {
        Self::ZERO
    }
}

/// The log2 histogram bucket for an RTT in ns.
#[inline(always)]
pub const fn rtt_bucket(ns: u64) -> usize {
    if ns < 2 {
        0
    } else {
        let b = 63 - ns.leading_zeros() as usize;
        if b >= RTT_BUCKETS { RTT_BUCKETS - 1 } else { b }
    }
}

/// Kinds of [`Event`].
pub mod event_kind {
    /// The deadline timer of a (peer, link) expired.
    pub const LINK_DOWN: u32 = 1;
    /// The first valid packet after a down (or ever) arrived.
    pub const LINK_UP: u32 = 2;
    /// The dead-man gate closed: a request went unanswered because the
    /// local agent's stamp is stale.
    pub const AGENT_STALE: u32 = 3;
    /// A deadline expired while the local sender had missed its schedule
    /// in the window: the verdict is deferred by one grace.
    pub const DEFERRED_LOCAL_STALL: u32 = 4;
    /// A deadline timer fired late by more than the threshold: the verdict
    /// is deferred by one grace.
    pub const DEFERRED_LATE_TIMER: u32 = 5;
    /// The peer's last packets arrived with a rising one-way delay (behind a
    /// queue): the verdict is deferred by one grace.
    pub const DEFERRED_PEER_QUEUED: u32 = 6;
}

/// Causes of a deferred verdict (`LinkState::defer_cause`).
pub mod defer_cause {
    pub const LATE_TIMER: u8 = 1;
    pub const LOCAL_STALL: u8 = 2;
    pub const PEER_QUEUED: u8 = 3;

    /// The cause's name, as journal and metrics spell it.
    pub const fn name(cause: u8) -> &'static str {
        match cause {
            LATE_TIMER => "late_timer",
            LOCAL_STALL => "local_stall",
            PEER_QUEUED => "peer_queued",
            _ => "none",
        }
    }
}

/// A record of the `EVENTS` ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Event {
    /// One of [`event_kind`].
    pub kind: u32,
    pub peer: u16,
    pub link: u8,
    pub _pad: u8,
    /// CLOCK_MONOTONIC ns of the last valid packet before the event.
    pub last_rx_ns: u64,
    /// CLOCK_MONOTONIC ns at which the kernel raised the event.
    pub at_ns: u64,
}

/// Indexes of the per-CPU `COUNTERS` array.
pub mod counter {
    /// Every frame the program saw.
    pub const RX_FRAMES: u32 = 0;
    /// Not a heartbeat to our port: passed untouched.
    pub const PASS_NOT_HEARTBEAT: u32 = 1;
    /// To our port but malformed (length, magic, version, kind).
    pub const DROP_MALFORMED: u32 = 2;
    /// Cluster id is not ours.
    pub const DROP_OTHER_CLUSTER: u32 = 3;
    /// MAC failed under both key slots.
    pub const DROP_BAD_MAC: u32 = 4;
    /// Sender is not a configured node, or the link is not configured.
    pub const DROP_UNKNOWN_NODE: u32 = 5;
    /// Sequence not newer than the last accepted one.
    pub const DROP_REPLAY: u32 = 6;
    /// Target is another node.
    pub const DROP_NOT_FOR_US: u32 = 7;
    /// A request left unanswered because the local agent is stale.
    pub const DROP_AGENT_STALE: u32 = 8;
    /// Valid requests received.
    pub const RX_REQUEST: u32 = 9;
    /// Replies sent with XDP_TX.
    pub const TX_REPLY: u32 = 10;
    /// Valid replies received (and consumed).
    pub const RX_REPLY: u32 = 11;
    /// Packets authenticated with the next key slot.
    pub const KEY_NEXT: u32 = 12;
    /// Events lost because the ring buffer was full.
    pub const EVENTS_LOST: u32 = 13;
    /// Deadline timers that expired.
    pub const TIMER_EXPIRED: u32 = 14;
    /// Heartbeats arriving before the agent enabled the program.
    pub const PASS_DISABLED: u32 = 15;
    /// Replies whose echoed timestamp lies in the future.
    pub const DROP_BAD_TIMESTAMP: u32 = 16;
    /// Membership messages (kind 3) passed up to the agent.
    pub const PASS_MEMBERSHIP: u32 = 17;
    /// Deadline verdicts deferred because the timer fired late.
    pub const DEFER_LATE_TIMER: u32 = 18;
    /// Deadline verdicts deferred because the local sender had stalled.
    pub const DEFER_LOCAL_STALL: u32 = 19;
    /// Deadline verdicts deferred because the peer was behind a queue.
    pub const DEFER_PEER_QUEUED: u32 = 20;
    /// Deferrals whose grace ran out without a packet: the link went down.
    pub const DEFER_CONFIRMED: u32 = 21;
    /// Deferrals ended by a valid packet within the grace: no down.
    pub const DEFER_RESCUED: u32 = 22;
    /// Own requests seen by the tc egress program.
    pub const EGRESS_OWN_REQUEST: u32 = 23;
    /// Own requests leaving without the priority marking that keeps them
    /// ahead of data (skb priority 6, band 0 of pfifo_fast/prio; DSCP CS6).
    pub const EGRESS_OFF_PRIORITY: u32 = 24;
    /// Packets to a package address whose lease ran out, dropped by the
    /// XDP program (the kernel fence, heartbeat-ebpf fence.rs).
    pub const FENCED_IN: u32 = 25;
    /// Packets from a package address whose lease ran out, dropped by the
    /// tc egress program.
    pub const FENCED_OUT: u32 = 26;
    /// Number of counters in use.
    pub const COUNT: u32 = 27;
    /// Size of the counters array (room to grow without a layout change).
    pub const SLOTS: u32 = 32;

    /// (index, action, reason) of every counter, for metrics.
    pub const ALL: [(u32, &str, &str); COUNT as usize] = [
        (RX_FRAMES, "seen", "frame"),
        (PASS_NOT_HEARTBEAT, "pass", "not_heartbeat"),
        (DROP_MALFORMED, "drop", "malformed"),
        (DROP_OTHER_CLUSTER, "drop", "other_cluster"),
        (DROP_BAD_MAC, "drop", "bad_mac"),
        (DROP_UNKNOWN_NODE, "drop", "unknown_node"),
        (DROP_REPLAY, "drop", "replay"),
        (DROP_NOT_FOR_US, "drop", "not_for_us"),
        (DROP_AGENT_STALE, "drop", "agent_stale"),
        (RX_REQUEST, "rx", "request"),
        (TX_REPLY, "tx", "reply"),
        (RX_REPLY, "drop", "reply_consumed"),
        (KEY_NEXT, "rx", "next_key"),
        (EVENTS_LOST, "lost", "event"),
        (TIMER_EXPIRED, "timer", "expired"),
        (PASS_DISABLED, "pass", "disabled"),
        (DROP_BAD_TIMESTAMP, "drop", "bad_timestamp"),
        (PASS_MEMBERSHIP, "pass", "membership"),
        (DEFER_LATE_TIMER, "defer", "late_timer"),
        (DEFER_LOCAL_STALL, "defer", "local_stall"),
        (DEFER_PEER_QUEUED, "defer", "peer_queued"),
        (DEFER_CONFIRMED, "defer", "confirmed"),
        (DEFER_RESCUED, "defer", "rescued"),
        (EGRESS_OWN_REQUEST, "egress", "own_request"),
        (EGRESS_OFF_PRIORITY, "egress", "off_priority"),
        (FENCED_IN, "fence", "in"),
        (FENCED_OUT, "fence", "out"),
    ];
}

/// Most addresses the kernel fence holds (`LEASES` entries).
pub const MAX_LEASED_ADDRS: u32 = 1024;

/// Key of the `LEASES` hash map: a package address, IPv6 as is and IPv4
/// v4-mapped (`::ffff:a.b.c.d`), in network byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LeaseKey {
    pub addr: [u8; 16],
}

impl LeaseKey {
    /// The key of an IPv4 address (its 4 bytes in network order).
    #[inline(always)]
    pub const fn v4(a: [u8; 4]) -> Self {
        Self {
            addr: [
                0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, a[0], a[1], a[2], a[3],
            ],
        }
    }

    /// The key of an IPv6 address.
    #[inline(always)]
    pub const fn v6(addr: [u8; 16]) -> Self {
        Self { addr }
    }
}

/// Value of the `LEASES` map: until when the address may be served. The
/// XDP program drops packets to it, the tc egress program packets from
/// it, once `bpf_ktime_get_ns() >= until_ns` (0: fenced). Addresses not in
/// the map are not fenced.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LeaseEntry {
    /// CLOCK_MONOTONIC ns at which the lease runs out.
    pub until_ns: u64,
    /// The package the address belongs to (for the agent and `bpftool`).
    pub package: u16,
    pub _pad: [u8; 6],
}

/// Standby NIC takeover (issue #10): layer-2 poll frames between a link's
/// active and standby card, answered and timestamped by the XDP program on
/// each card, and per-card statistics in `NIC_POLL` (keyed by ifindex; the
/// agent inserts an entry for every card it polls, the program counts only
/// cards with an entry).
pub mod nic_poll {
    /// Map name.
    pub const MAP: &str = "NIC_POLL";
    /// Most cards polled (two per link).
    pub const ENTRIES: u32 = 2 * super::MAX_LINKS;
    /// Ethernet type of poll frames (IEEE 802 local experimental 1).
    pub const ETHERTYPE: u16 = 0x88b5;
    /// First bytes of a poll frame's payload.
    pub const MAGIC: [u8; 4] = *b"HBNP";
    /// A poll sent by the agent from one card to the other.
    pub const KIND_REQUEST: u8 = 1;
    /// The answering card's XDP program's reply.
    pub const KIND_REPLY: u8 = 2;
    /// Ethernet header length.
    pub const ETH_LEN: usize = 14;
    /// Length of a poll frame as sent (the Ethernet minimum without FCS).
    pub const FRAME_LEN: usize = 60;

    /// A poll frame's payload, after the Ethernet header (alignment 1).
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct PollHdr {
        pub magic: [u8; 4],
        /// `cluster_id`, little-endian: only this host reads it.
        pub cluster_id: [u8; 4],
        pub node: [u8; 2],
        pub kind: u8,
        pub _pad: u8,
        /// ifindex of the card the request left from (little-endian).
        pub from_ifindex: [u8; 4],
        /// ifindex of the card it is addressed to (little-endian).
        pub to_ifindex: [u8; 4],
        pub seq: [u8; 4],
        /// CLOCK_MONOTONIC ns at which the agent sent the request.
        pub tx_ns: [u8; 8],
        /// CLOCK_MONOTONIC ns at which the answering program replied.
        pub answer_ns: [u8; 8],
    }

    /// Length of [`PollHdr`].
    pub const HDR_LEN: usize = core::mem::size_of::<PollHdr>();

    /// One card's poll statistics (`NIC_POLL[ifindex]`).
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct NicPoll {
        /// Every frame the card received (its "inbound count").
        pub rx_frames: u64,
        /// Poll requests it received (from the other card) and answered.
        pub rx_requests: u64,
        /// Replies to its own requests it received.
        pub rx_replies: u64,
        /// CLOCK_MONOTONIC ns of the last frame received.
        pub last_rx_ns: u64,
        /// Round trip of the last reply (request sent → reply back).
        pub last_rtt_ns: u64,
        /// Sum and largest of the round trips.
        pub rtt_sum_ns: u64,
        pub rtt_max_ns: u64,
        /// Poll frames dropped as malformed or not for this card.
        pub bad: u64,
    }
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all of these are repr(C), Copy, with explicit padding fields and
    // only integer members, so any byte pattern is valid.
    unsafe impl aya::Pod for Config {}
    // SAFETY: as above.
    unsafe impl aya::Pod for KeySlot {}
    // SAFETY: as above.
    unsafe impl aya::Pod for LocalStatus {}
    // SAFETY: as above.
    unsafe impl aya::Pod for PeerConf {}
    // SAFETY: as above.
    unsafe impl aya::Pod for AgentWatch {}
    // SAFETY: as above.
    unsafe impl aya::Pod for LinkState {}
    // SAFETY: as above.
    unsafe impl aya::Pod for Event {}
    // SAFETY: as above.
    unsafe impl aya::Pod for RestartWindow {}
    // SAFETY: as above.
    unsafe impl aya::Pod for LeaseKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for LeaseEntry {}
    // SAFETY: as above.
    unsafe impl aya::Pod for nic_poll::NicPoll {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<Config>(), 64);
        assert_eq!(size_of::<KeySlot>(), 24);
        assert_eq!(size_of::<LocalStatus>(), 24);
        assert_eq!(size_of::<PeerConf>(), 8);
        assert_eq!(size_of::<AgentWatch>(), 24);
        assert_eq!(size_of::<Event>(), 24);
        assert_eq!(size_of::<RestartWindow>(), 16);
        assert_eq!(size_of::<nic_poll::NicPoll>(), 64);
        assert_eq!(nic_poll::HDR_LEN, 40);
        assert_eq!(
            size_of::<LinkState>(),
            17 * 8 + 8 + RTT_BUCKETS * 8 + 16 + RTT_BUCKETS * 8 + 15 * 8 + 8 + 8
        );
        assert_eq!(size_of::<LeaseKey>(), 16);
        assert_eq!(size_of::<LeaseEntry>(), 16);
    }

    #[test]
    fn slots_and_buckets() {
        assert_eq!(link_slot(0, 0), None);
        assert_eq!(link_slot(1, 0), Some(8));
        assert_eq!(link_slot(63, 7), Some(511));
        assert_eq!(link_slot(64, 0), None);
        assert_eq!(link_slot(1, 8), None);
        assert_eq!(rtt_bucket(0), 0);
        assert_eq!(rtt_bucket(1), 0);
        assert_eq!(rtt_bucket(2), 1);
        assert_eq!(rtt_bucket(1023), 9);
        assert_eq!(rtt_bucket(1024), 10);
        assert_eq!(rtt_bucket(u64::MAX), RTT_BUCKETS - 1);
    }
}
