//! The status report (`heartbeat-agent status --json`): the cluster as one
//! node's agent sees it, like `cmviewcl -v` / `crm_mon`.
//!
//! Schema (stable; fields are only ever added):
//! - `cluster`, `cluster_id`, `local_node`;
//! - `membership`: the agreed view (`epoch`, `coordinator`, `members`) and
//!   `quorum` (votes present / needed / expected, `quorate`, tie-breaker);
//! - `agent`: this agent (pid, version, timings, XDP attachments, sender);
//! - `nodes[]`: every configured node with its `state` and, for peers, its
//!   `links[]` (state, RTT, gaps, counters);
//! - `xdp_counters`: the XDP program's counters by `action_reason`;
//! - `messages`: membership messages sent, received and dropped by reason.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A node's state as this agent sees it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeState {
    /// Never heard from since this agent started.
    #[default]
    Unknown,
    /// A member of this node's agreed view.
    Up,
    /// Silent on every link.
    Down,
    /// Alive but not (yet) a member of a quorate view: owns nothing.
    Passive,
    /// Announced a graceful leave.
    Leaving,
    /// Announced a bounded restart of its agent; its kernel keeps answering.
    Restarting,
    /// Its kernel stopped answering for it: its agent is dead or hung.
    Stale,
}

impl NodeState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::Up => "up",
            Self::Down => "down",
            Self::Passive => "passive",
            Self::Leaving => "leaving",
            Self::Restarting => "restarting",
            Self::Stale => "stale",
        }
    }
}

/// A (peer, link)'s state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkState {
    #[default]
    Unknown,
    Up,
    Down,
    /// The kernel hears the peer (its requests arrive) but the peer has
    /// answered none of our requests for a window of several
    /// node_timeouts: it drops what we send. Counts as down.
    HalfOpen,
}

impl LinkState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::Up => "up",
            Self::Down => "down",
            Self::HalfOpen => "half_open",
        }
    }
}

/// The whole report.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct StatusReport {
    pub cluster: String,
    pub cluster_id: u32,
    pub local_node: String,
    #[serde(default)]
    pub membership: MembershipStatus,
    pub agent: AgentStatus,
    pub nodes: Vec<NodeStatus>,
    /// XDP counters summed over CPUs, by `action_reason`.
    pub xdp_counters: BTreeMap<String, u64>,
    /// Membership messages: `sent`, `received`, and `dropped_<reason>`.
    #[serde(default)]
    pub messages: BTreeMap<String, u64>,
    /// The configured packages, as this node sees them.
    #[serde(default)]
    pub packages: Vec<PackageStatus>,
    /// `cluster freeze` in force.
    #[serde(default)]
    pub frozen: bool,
    /// Links with a standby card: which card carries each (issue #10).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nics: Vec<NicStatus>,
    /// The heartbeat interfaces' lifecycle (issue #12 row 3).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<InterfaceStatus>,
}

/// A heartbeat interface (or standby card) as the agent's link watch sees
/// it: an interface deleted and recreated under its name gets XDP and its
/// link's socket again.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InterfaceStatus {
    pub name: String,
    /// Its current index (none: it does not exist now).
    pub index: Option<u32>,
    /// Times it was deleted, and times it came back under a new index (XDP
    /// re-attached, socket re-bound) since the agent started.
    pub deleted: u64,
    pub recreated: u64,
}

/// A link with a standby card.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NicStatus {
    pub link: u8,
    /// The configured interface and standby.
    pub primary: String,
    pub standby: String,
    /// The card carrying the link now.
    pub active: String,
    /// Per card: `up`, or `failed:<cause>`.
    pub primary_state: String,
    pub standby_state: String,
    /// Switches since start.
    pub switches: u64,
    /// Switches by cause (carrier, poll_in, poll_out, failback, recovered).
    #[serde(default)]
    pub switches_by_cause: BTreeMap<String, u64>,
    /// Last poll round trip (µs) from the primary and the standby card.
    pub poll_rtt_us: [Option<f64>; 2],
    /// Polls sent from, and polls unanswered of, each card.
    #[serde(default)]
    pub polls_sent: [u64; 2],
    #[serde(default)]
    pub polls_lost: [u64; 2],
    /// Both cards have failed: the link is down.
    #[serde(default)]
    pub link_down: bool,
}

/// One package as a node sees it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct PackageStatus {
    pub name: String,
    /// Its owner in the placement this node acts on.
    pub owner: Option<String>,
    /// Why it is (or is not) there.
    pub reason: String,
    /// Its life on this node: `unknown`, `stopped`, `starting`, `running`,
    /// `stopping`, `stop_failed`.
    pub local_state: String,
    /// Its monitor passes here (only meaningful while it runs here).
    pub healthy: bool,
    /// Restarts in place here since it started.
    pub restarts: u32,
    /// Banned here.
    pub banned: bool,
    /// A configuration error: no node may run it.
    pub fatal: bool,
    /// Nodes that report it starting or running (more than one only while
    /// an owner's lease has not run out).
    pub running_on: Vec<String>,
    /// Its kernel lease here: ms left (0: fenced).
    pub lease_remaining_ms: f64,
    /// What a start here waits for, if anything.
    pub waiting_for: Option<String>,
    /// Nodes whose heartbeats say the package runs healthy there.
    pub healthy_on: Vec<String>,
    /// The last failover: when (wall-clock ns) and why.
    pub last_failover: Option<String>,
}

/// The agreed membership view and quorum.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct MembershipStatus {
    /// The epoch of the installed view (0: none yet).
    pub epoch: u64,
    /// Coordinator of the installed view.
    pub coordinator: Option<String>,
    /// Members of the installed view (node names).
    pub members: Vec<String>,
    /// Whether this node is a member of a quorate view.
    pub quorate: bool,
    pub quorum: QuorumStatus,
    /// Seconds since the view was installed.
    pub since_s: Option<f64>,
    /// What the membership is doing: `starting` (waiting for nodes),
    /// `waiting_for_start` (manual start), `forming`, `stable`, `left`.
    pub phase: String,
}

/// Votes and tie-breaker.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct QuorumStatus {
    /// Votes of the members of the view.
    pub votes_present: u32,
    /// Votes a partition needs to be quorate.
    pub votes_needed: u32,
    /// Expected votes (all nodes, or fewer after last-man-standing).
    pub votes_expected: u32,
    /// `none`, `auto_tie_breaker`, `quorum_server`, `two_node`, ...: the
    /// rule that decided, when one did.
    pub tie_breaker: String,
    /// The quorum server's state, when configured: `granted`, `refused`,
    /// `unreachable`, `not_needed`.
    pub quorum_server: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct AgentStatus {
    pub pid: u32,
    pub version: String,
    /// The agent's incarnation (start counter) carried in its heartbeats.
    pub generation: u32,
    pub uptime_s: f64,
    pub realtime_sender: bool,
    pub heartbeat_interval_us: u64,
    pub node_timeout_us: u64,
    pub agent_timeout_us: u64,
    /// (interface, "native" | "generic").
    pub xdp: Vec<(String, String)>,
    pub sender_max_lateness_us: f64,
    pub sender_missed_deadlines: u64,
    /// Whether the sender withholds the dead-man stamp (the agent's tasks
    /// stopped checking in): the kernel then stops answering for us.
    #[serde(default)]
    pub withholding_stamp: bool,
    /// Journal lines that could not be written to `events_file`.
    #[serde(default)]
    pub journal_write_errors: u64,
    /// Control and metrics connections refused at their caps.
    #[serde(default)]
    pub connections_refused: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct NodeStatus {
    pub id: u16,
    pub name: String,
    pub local: bool,
    pub state: NodeState,
    pub since_s: Option<f64>,
    pub peer_generation: Option<u32>,
    /// Priority and votes, from the configuration.
    #[serde(default)]
    pub priority: u32,
    #[serde(default)]
    pub votes: u32,
    /// Whether the node is a member of this node's agreed view.
    #[serde(default)]
    pub member: bool,
    pub links: Vec<LinkStatus>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct LinkStatus {
    pub id: u8,
    pub interface: String,
    pub address: String,
    pub role: String,
    pub state: LinkState,
    pub rtt_last_us: Option<f64>,
    pub rtt_avg_us: Option<f64>,
    pub rtt_min_us: Option<f64>,
    pub rtt_max_us: Option<f64>,
    pub last_seen_ago_ms: Option<f64>,
    pub requests_rx: u64,
    pub replies_rx: u64,
    pub replies_tx: u64,
    pub down_events: u64,
    /// Largest gap between valid packets from the peer (ms) and when it
    /// ended (CLOCK_MONOTONIC ns).
    #[serde(default)]
    pub max_gap_ms: Option<f64>,
    #[serde(default)]
    pub max_gap_at_mono_ns: u64,
    /// Log2 histogram of gaps between valid packets: bucket i counts gaps in
    /// [2^i, 2^(i+1)) ns.
    #[serde(default)]
    pub gap_hist: Vec<u64>,
    /// What the detector knows about its own blindness on this link.
    #[serde(default)]
    pub detector: Option<DetectorStatus>,
    /// The agent's down verdicts on this link by cause: `timeout` (the
    /// kernel's deadline), `half_open` (no reply while the peer's requests
    /// arrive).
    #[serde(default)]
    pub down_causes: BTreeMap<String, u64>,
}

/// The deferral rule's view of one (peer, link): how late the deadline
/// timer fired, whether this node's own requests left on schedule, the
/// relative one-way delay from the peer, and the verdicts it deferred.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct DetectorStatus {
    /// Deadline expiries and how late the timer fired (last, largest).
    pub expiries: u64,
    pub expiry_late_last_us: f64,
    pub expiry_late_max_us: f64,
    /// Own requests the egress stamp saw on this link to this peer, and how
    /// long ago the last one left (None: the stamp is not attached).
    pub own_requests: u64,
    pub own_last_ago_ms: Option<f64>,
    /// The last gap of more than two intervals between own requests (a
    /// local stall), its length (ms).
    pub own_stall_last_ms: Option<f64>,
    /// One-way delay from the peer relative to the minimum seen (the clocks
    /// are not synchronised): last, EWMA, largest (us); rising at the last
    /// packet.
    pub owd_last_us: Option<f64>,
    pub owd_avg_us: Option<f64>,
    pub owd_max_us: Option<f64>,
    pub owd_rising: bool,
    /// Verdicts deferred, deferrals that ended in a down, whether one is
    /// pending, and the last cause (`late_timer`, `local_stall`,
    /// `peer_queued`, `none`).
    pub deferrals: u64,
    pub deferrals_confirmed: u64,
    pub deferred_now: bool,
    pub last_cause: String,
}

impl StatusReport {
    /// The node called `name`.
    pub fn node(&self, name: &str) -> Option<&NodeStatus> {
        self.nodes.iter().find(|n| n.name == name)
    }
}
