//! Membership, coordinator election and epochs: one pure state machine per
//! node.
//!
//! # Protocol
//!
//! Based on the membership protocol of Totem (Amir, Moser, Melliar-Smith,
//! Agarwal, Ciarfella, "The Totem single-ring ordering and membership
//! protocol", ACM TOCS 13(4), 1995): a *gather* phase in which every node
//! broadcasts join messages carrying what it can reach, *consensus* on the
//! member set (every member announces the same set), and a *commit* of the
//! new configuration by the representative (here: the coordinator).
//!
//! 1. **Gather.** Each node keeps its reachable set `R` (itself, plus every
//!    peer with at least one link up from any transport whose agent is not
//!    stale, leaving, or past its restart window). It broadcasts `Join`
//!    messages carrying every reachable set it knows (each versioned by
//!    (incarnation, version); newer wins), so the sets flood through the
//!    partition and every node ends up with the same graph.
//! 2. **Member set.** Nodes `a` and `b` are *mutually connected* when
//!    `b ∈ R(a)` and `a ∈ R(b)`. The nodes are split deterministically into
//!    cliques of the mutual graph: in order (priority desc, id asc), the
//!    first clique greedily takes every node connected to all nodes already
//!    taken; the next clique does the same with the rest, and so on. A
//!    node's member set is its clique. With one-way loss (A hears B, B does
//!    not hear A) A and B are never in the same set, and every node that
//!    knows the same graph computes the same sets. A node announces its
//!    computed set in its joins (`proposal`).
//! 3. **Consensus, propose, ack, commit.** The coordinator of a set is its
//!    member with the highest priority, then the lowest id. When every
//!    member announces the same set (and one of them may form a cluster,
//!    see *start* below), the coordinator persists and proposes epoch
//!    `max epoch seen by any member + 1`; each member acks only a proposal
//!    from the rightful coordinator, equal to its own computed set, of an
//!    epoch above every epoch it already promised, and persists that epoch
//!    *before* acking (`PersistEpoch` precedes the `Send`). When all members
//!    acked (and the quorum server answered, if the partition holds exactly
//!    half the votes), the coordinator computes the quorum and commits;
//!    members install on the commit. No node installs a view before all its
//!    members acked it; a node acks at most one set per epoch, and epochs
//!    never go back (the constructor takes the persisted epoch).
//! 4. **Operational.** A node whose computed set differs from its view, or
//!    whose view member reports a newer epoch, starts a new round. Joins are
//!    resent every `join_interval` while gathering and every
//!    `sync_interval` while operational, and at once when knowledge changes.
//!
//! # Departures from Totem
//!
//! No token ring and no message ordering (the cluster orders nothing; it
//! agrees on membership only). The member set is the deterministic clique
//! partition of the flooded mutual-connectivity graph instead of Totem's
//! proc/fail sets. The representative is the highest priority, then lowest
//! id (Totem: lowest id) and the commit is a propose/ack/commit round
//! instead of the commit token's two rotations. A node that restarts within
//! its announced restart window adopts the view its peers report (all
//! members report the same epoch and set, and its own computed set equals
//! it) instead of forcing a reformation.
//!
//! # Start, leave, restart
//!
//! A node starts *passive*: it takes part but owns nothing until it is a
//! member of a quorate view. With auto start, a new cluster is only formed
//! when all configured nodes are present, until `auto_start_timeout` has
//! passed since this node's start; with manual start, only after the
//! `cluster start` command. A set that contains a node that may form (it
//! was a member of a view since its start, or the above holds for it) may
//! always be formed: joining a running cluster needs nothing. `node halt`
//! announces a graceful leave (peers reform at once); `node start` rejoins.
//!
//! Messages are authenticated ([`crate::wire`]) and go through a per-sender
//! anti-replay window, so reordering across links is harmless. A leave
//! carries the version of the leaver's reachable set: a newer flooded set
//! (after `node start`, or a new incarnation) means it is back, even for
//! peers that cannot hear it directly. A node that left or whose agent is
//! stale speaks for nobody in the graph (its last flooded set is frozen).
//! A coordinator that hears nodes outside its computed set waits until its
//! knowledge has been unchanged for `consensus_timeout` before proposing,
//! so that a link event seen by one side first does not split the cluster
//! for a round. A commit is installed in any phase (every member acked it;
//! a member persisted the epoch before acking) and the coordinator resends
//! it to members whose joins show they missed it.
//!
//! # Convergence bound
//!
//! Once links and agent states stop changing and messages are delivered
//! within one `join_interval`, every partition installs one agreed view
//! (same epoch, members and coordinator on every member) within
//! [`Timing::convergence_bound_ns`] = `consensus_timeout + (N + 6) ×
//! join_interval` for `N` configured nodes (flooding takes at most `N - 1`
//! hops, each at most one join interval; consensus one more; propose, ack
//! and commit three messages; a proposal overtaken by a change is
//! abandoned within `consensus_timeout`). With the default timers
//! ([`Timing::from_heartbeat_interval`]) this is `(N + 11)` join intervals
//! of `max(2 × heartbeat_interval, 1 ms)`: 16 ms for 5 nodes. With a
//! quorum server configured, one `qs_timeout` more
//! ([`Timing::convergence_bound_with_qs_ns`]).
//! Pending timers (auto start, restart window) come on top. The model
//! test checks it.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::ids::{Epoch, LinkId, NodeId, NodeSet};
use crate::quorum::{QsVerdict, Quorum, QuorumConfig, QuorumOptions, QuorumState, TieBreaker};
use crate::wire::{
    Ack, Authenticated, Commit, DropReason, Join, Leave, Message, Propose, ReachEntry, ReplayGuard,
    join_flags,
};

/// One configured node as the membership needs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeParams {
    /// Id.
    pub id: NodeId,
    /// Coordinator election: highest wins, then lowest id.
    pub priority: u32,
    /// Quorum votes.
    pub votes: u32,
}

/// How a new cluster is formed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StartMode {
    /// Wait `auto_start_timeout` for all nodes, then form with fewer.
    #[default]
    Auto,
    /// Form only after `cluster start`.
    Manual,
}

/// Timers, all in nanoseconds of CLOCK_MONOTONIC.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timing {
    /// Join (and propose/ack) resend interval while a round is open.
    pub join_interval_ns: u64,
    /// An open proposal (or ack) is abandoned after this.
    pub consensus_timeout_ns: u64,
    /// Join resend interval while operational.
    pub sync_interval_ns: u64,
    /// Auto start: wait this long for all nodes before forming with fewer.
    pub auto_start_timeout_ns: u64,
    /// A peer that announced a restart is kept this long.
    pub restart_window_ns: u64,
    /// Wait this long for the quorum server's answer.
    pub qs_timeout_ns: u64,
}

impl Timing {
    /// Timers derived from the heartbeat interval: join interval 2 heartbeat
    /// intervals (at least 1 ms, at most 1 s), consensus timeout 5 join
    /// intervals, sync interval 50 join intervals (at most 5 s), quorum
    /// server timeout 500 ms.
    pub fn from_heartbeat_interval(
        heartbeat_interval_ns: u64,
        auto_start_timeout_ns: u64,
        restart_window_ns: u64,
    ) -> Self {
        let join = heartbeat_interval_ns
            .saturating_mul(2)
            .clamp(1_000_000, 1_000_000_000);
        Self {
            join_interval_ns: join,
            consensus_timeout_ns: join.saturating_mul(5),
            sync_interval_ns: join.saturating_mul(50).min(5_000_000_000),
            auto_start_timeout_ns,
            restart_window_ns,
            qs_timeout_ns: 500_000_000,
        }
    }

    /// The documented convergence bound for `n` configured nodes (see the
    /// module doc): `consensus_timeout + (n + 6) × join_interval`. With
    /// [`Timing::from_heartbeat_interval`] that is `(n + 11)` join
    /// intervals, i.e. `(n + 11) × max(2 × heartbeat_interval, 1 ms)`:
    /// 16 ms for 5 nodes at a heartbeat interval up to 500 µs.
    pub fn convergence_bound_ns(&self, n: usize) -> u64 {
        self.consensus_timeout_ns
            .saturating_add(self.join_interval_ns.saturating_mul(n as u64 + 6))
    }

    /// The convergence bound with a quorum server configured: one quorum
    /// server timeout more.
    pub fn convergence_bound_with_qs_ns(&self, n: usize) -> u64 {
        self.convergence_bound_ns(n)
            .saturating_add(self.qs_timeout_ns)
    }
}

/// Everything the state machine needs from the configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Params {
    /// This node.
    pub local: NodeId,
    /// Every configured node (this one included).
    pub nodes: Vec<NodeParams>,
    /// Quorum options.
    pub quorum: QuorumOptions,
    /// Start mode.
    pub start: StartMode,
    /// Timers.
    pub timing: Timing,
}

/// Why a reload was refused (the running parameters stay in force).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReloadError {
    /// The local node id cannot change live.
    #[error("the local node cannot change without a restart")]
    LocalNode,
    /// The local node is not in the new node list.
    #[error("the local node is not in the new node list")]
    LocalNotConfigured,
    /// A node id outside 1..=63.
    #[error("node id {0} is outside 1..=63")]
    BadNodeId(NodeId),
}

/// A peer agent's state as its heartbeats announce it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PeerAgentState {
    /// Alive, dead-man gate open.
    Running,
    /// Dead-man gate closed: the kernel answers, the agent is hung.
    Stale,
    /// Announced a restart window.
    Restarting,
    /// Announced a graceful leave.
    Leaving,
}

/// Operator commands that reach the state machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Command {
    /// `cluster start`: this node may form a new cluster.
    ClusterStart,
    /// `node halt`: leave gracefully.
    NodeHalt,
    /// `node start`: join again after a halt.
    NodeStart,
}

/// Inputs. Every input carries the monotonic time it happened at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    /// A link to `peer` came up (any transport).
    LinkUp {
        /// Peer.
        peer: NodeId,
        /// Link.
        link: LinkId,
        /// When.
        at_ns: u64,
    },
    /// A link to `peer` went down (after node_timeout).
    LinkDown {
        /// Peer.
        peer: NodeId,
        /// Link.
        link: LinkId,
        /// When.
        at_ns: u64,
    },
    /// A peer agent's state as seen in its heartbeats: send on every
    /// change and again whenever a link to the peer comes up.
    PeerAgent {
        /// Peer.
        peer: NodeId,
        /// State.
        state: PeerAgentState,
        /// When.
        at_ns: u64,
    },
    /// An authenticated membership message (from [`crate::wire::decode`];
    /// the state machine applies the replay guard itself).
    Message {
        /// The message.
        msg: Authenticated,
        /// When it arrived.
        at_ns: u64,
    },
    /// An operator command.
    Command {
        /// Command.
        cmd: Command,
        /// When.
        at_ns: u64,
    },
    /// Timer: call at [`Membership::next_deadline_ns`] (or any time).
    Tick {
        /// Now.
        now_ns: u64,
    },
    /// The quorum server's answer (from [`crate::qserver::Client`]), or
    /// `granted: false` if it refused.
    QuorumServer {
        /// Epoch asked for.
        epoch: Epoch,
        /// Members asked for.
        members: NodeSet,
        /// Granted?
        granted: bool,
        /// Lease length (when granted).
        lease_ns: u64,
        /// When.
        at_ns: u64,
    },
}

/// Where to send a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dest {
    /// Every configured peer, on every link (also those this node does not
    /// hear: one-way loss must not stop them hearing us).
    All,
    /// These peers.
    Nodes(NodeSet),
}

/// An agreed configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct View {
    /// Epoch.
    pub epoch: Epoch,
    /// Members (empty after `node halt`).
    pub members: NodeSet,
    /// Coordinator (none after `node halt`).
    pub coordinator: Option<NodeId>,
    /// Quorum.
    pub quorum: QuorumState,
}

/// Why something happened (journal, metrics "reformations by cause").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    /// A node joined the view.
    NodeJoined,
    /// A node left gracefully.
    NodeLeft,
    /// All links to a node went down.
    NodeFailed,
    /// A node's dead-man gate closed.
    AgentStale,
    /// A node announced a restart window.
    Restarting,
    /// A node's restart window ran out.
    RestartExpired,
    /// A node is reachable but not mutually connected with the members.
    Partition,
    /// A node excluded by a partition is back.
    Healed,
    /// The view became quorate.
    QuorumGained,
    /// The view lost quorum.
    QuorumLost,
    /// This node halted (`node halt`).
    Halted,
    /// This node adopted its peers' view after a restart.
    Adopted,
}

impl Cause {
    /// Stable label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NodeJoined => "node_joined",
            Self::NodeLeft => "node_left",
            Self::NodeFailed => "node_failed",
            Self::AgentStale => "agent_stale",
            Self::Restarting => "restarting",
            Self::RestartExpired => "restart_expired",
            Self::Partition => "partition",
            Self::Healed => "healed",
            Self::QuorumGained => "quorum_gained",
            Self::QuorumLost => "quorum_lost",
            Self::Halted => "halted",
            Self::Adopted => "adopted",
        }
    }
}

/// A journal-worthy event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Why.
    pub cause: Cause,
    /// The node concerned, if one.
    pub node: Option<NodeId>,
    /// The epoch of the view it belongs to.
    pub epoch: Epoch,
}

/// Outputs, in the order the runner must carry them out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// Seal ([`crate::wire::Sealer`]) and send.
    Send {
        /// To whom.
        to: Dest,
        /// What.
        msg: Message,
    },
    /// Write the epoch durably before carrying out any later output.
    PersistEpoch(Epoch),
    /// A new agreed view: act on it.
    Install(View),
    /// The installed view's quorum changed locally (last_man_standing).
    QuorumUpdated(QuorumState),
    /// Ask the quorum server ([`crate::qserver::Client::request`]) and feed
    /// the answer back as [`Input::QuorumServer`].
    AskQuorumServer {
        /// Epoch being formed.
        epoch: Epoch,
        /// Members.
        members: NodeSet,
        /// Their votes.
        votes: u32,
        /// Expected votes.
        expected_votes: u32,
    },
    /// Journal it.
    Event(Event),
    /// A message was dropped: count it.
    Dropped {
        /// Sender.
        from: NodeId,
        /// Why.
        reason: DropReason,
    },
}

/// A node's state for status (`up`, `down`, `passive`, `leaving`,
/// `restarting`, `stale`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeState {
    /// Member of this node's quorate view.
    Up,
    /// Unreachable (or halted, for this node).
    Down,
    /// Reachable (or this node) but not in a quorate view.
    Passive,
    /// Announced a graceful leave.
    Leaving,
    /// Within an announced restart window.
    Restarting,
    /// Dead-man gate closed.
    Stale,
}

impl NodeState {
    /// Stable label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Up => "up",
            Self::Down => "down",
            Self::Passive => "passive",
            Self::Leaving => "leaving",
            Self::Restarting => "restarting",
            Self::Stale => "stale",
        }
    }
}

/// The round phase.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Halted,
    Gather,
    Proposing {
        epoch: Epoch,
        members: NodeSet,
        acks: NodeSet,
        since: u64,
        qs: QsWait,
    },
    Acked {
        epoch: Epoch,
        members: NodeSet,
        coordinator: NodeId,
        since: u64,
    },
    Operational,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum QsWait {
    NotNeeded,
    Pending { deadline: u64 },
    Answered(QsVerdict),
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct PeerJoin {
    max_epoch: Epoch,
    promised: Epoch,
    view_epoch: Epoch,
    view_members: NodeSet,
    flags: u8,
    expected: NodeSet,
    proposal: NodeSet,
}

#[derive(Clone, Debug)]
struct Peer {
    links: BTreeSet<LinkId>,
    agent: PeerAgentState,
    agent_since: u64,
    leaving: bool,
    /// (incarnation, sequence) of its last leave message.
    leave_seq: Option<(u32, u64)>,
    /// (incarnation, reach version) it announced in that leave.
    left_at: Option<(u32, u32)>,
    join: Option<PeerJoin>,
}

/// The membership state machine of one node.
#[derive(Clone, Debug)]
pub struct Membership {
    params: Params,
    prio: BTreeMap<NodeId, u32>,
    configured: NodeSet,
    incarnation: u32,
    now: u64,
    started_at: u64,
    ticked: bool,
    phase: Phase,
    /// Highest epoch persisted (proposed or acked).
    promised: Epoch,
    /// Highest epoch seen anywhere.
    max_epoch: Epoch,
    view: Option<View>,
    quorum: Quorum,
    formed_once: bool,
    start_cmd: bool,
    peers: BTreeMap<NodeId, Peer>,
    knowledge: BTreeMap<NodeId, ReachEntry>,
    guard: ReplayGuard,
    last_join_sent: Option<u64>,
    join_due: Option<u64>,
    last_resend: u64,
    qs_lease_until: Option<u64>,
    qs_renew_at: Option<u64>,
    excluded: BTreeMap<NodeId, Cause>,
    /// When the open round started.
    round_since: u64,
    /// When this node's knowledge (its own or a flooded reachable set)
    /// last changed.
    knowledge_changed_at: u64,
    /// Members to send the installed view's commit again.
    resend_commit: NodeSet,
    /// When the quorum server was last asked (the lease counts from it).
    qs_asked_at: u64,
    /// When `node halt` ran and when the leave was last sent.
    halted_at: u64,
    last_leave_sent: u64,
}

impl Membership {
    /// A node at agent start: `persisted_epoch` from the state file,
    /// `incarnation` its persisted start counter (already raised for this
    /// start). Feed the current link and peer states, then a `Tick`: the
    /// node sends nothing before its first tick.
    pub fn new(params: Params, persisted_epoch: Epoch, incarnation: u32, now_ns: u64) -> Self {
        let prio = params.nodes.iter().map(|n| (n.id, n.priority)).collect();
        let configured: NodeSet = params.nodes.iter().map(|n| n.id).collect();
        let qcfg = QuorumConfig {
            votes: params.nodes.iter().map(|n| (n.id, n.votes)).collect(),
            options: params.quorum,
        };
        let peers = params
            .nodes
            .iter()
            .filter(|n| n.id != params.local)
            .map(|n| {
                (
                    n.id,
                    Peer {
                        links: BTreeSet::new(),
                        agent: PeerAgentState::Running,
                        agent_since: now_ns,
                        leaving: false,
                        leave_seq: None,
                        left_at: None,
                        join: None,
                    },
                )
            })
            .collect();
        let mut knowledge = BTreeMap::new();
        knowledge.insert(
            params.local,
            ReachEntry {
                node: params.local,
                incarnation,
                version: 0,
                reach: NodeSet::single(params.local),
            },
        );
        Self {
            guard: ReplayGuard::new(configured.difference(NodeSet::single(params.local))),
            prio,
            configured,
            incarnation,
            now: now_ns,
            started_at: now_ns,
            ticked: false,
            phase: Phase::Gather,
            promised: persisted_epoch,
            max_epoch: persisted_epoch,
            view: None,
            quorum: Quorum::new(qcfg),
            formed_once: false,
            start_cmd: false,
            peers,
            knowledge,
            last_join_sent: None,
            join_due: Some(now_ns),
            last_resend: now_ns,
            qs_lease_until: None,
            qs_renew_at: None,
            excluded: BTreeMap::new(),
            round_since: now_ns,
            knowledge_changed_at: now_ns,
            resend_commit: NodeSet::EMPTY,
            qs_asked_at: 0,
            halted_at: 0,
            last_leave_sent: 0,
            params,
        }
    }

    /// Live reload (`heartbeat-agent reload`): timers, priorities, votes,
    /// quorum options and the node list may change; the local node id and
    /// the start mode may not. Added nodes start unreachable; removed nodes
    /// are forgotten (a reformation follows if they were members).
    pub fn reload(&mut self, params: Params, at_ns: u64) -> Result<Vec<Output>, ReloadError> {
        if params.local != self.params.local {
            return Err(ReloadError::LocalNode);
        }
        if !params.nodes.iter().any(|n| n.id == params.local) {
            return Err(ReloadError::LocalNotConfigured);
        }
        if let Some(n) = params.nodes.iter().find(|n| !n.id.is_valid()) {
            return Err(ReloadError::BadNodeId(n.id));
        }
        self.advance(at_ns);
        let configured: NodeSet = params.nodes.iter().map(|n| n.id).collect();
        self.prio = params.nodes.iter().map(|n| (n.id, n.priority)).collect();
        self.peers.retain(|id, _| configured.contains(*id));
        for n in &params.nodes {
            if n.id != params.local {
                self.peers.entry(n.id).or_insert_with(|| Peer {
                    links: BTreeSet::new(),
                    agent: PeerAgentState::Running,
                    agent_since: at_ns,
                    leaving: false,
                    leave_seq: None,
                    left_at: None,
                    join: None,
                });
            }
        }
        self.knowledge.retain(|id, _| configured.contains(*id));
        self.guard
            .set_known(configured.difference(NodeSet::single(params.local)));
        self.quorum.reconfigure(QuorumConfig {
            votes: params.nodes.iter().map(|n| (n.id, n.votes)).collect(),
            options: params.quorum,
        });
        self.configured = configured;
        self.params = params;
        let mut out = Vec::new();
        if self.ticked {
            self.step(&mut out);
        }
        Ok(out)
    }

    /// This node.
    pub fn local(&self) -> NodeId {
        self.params.local
    }

    /// The installed view, if any.
    pub fn view(&self) -> Option<&View> {
        self.view.as_ref()
    }

    /// Highest epoch persisted.
    pub fn epoch(&self) -> Epoch {
        self.promised
    }

    /// Whether this node is a member of a quorate view (it may own things).
    pub fn is_active(&self) -> bool {
        self.view
            .is_some_and(|v| v.quorum.quorate && v.members.contains(self.params.local))
    }

    /// When the current (or, after an `Install`, the last) round started:
    /// on `Install`, `now - round_started_ns()` is the time from the first
    /// event to agreement (metrics).
    pub fn round_started_ns(&self) -> u64 {
        self.round_since
    }

    /// Whether a round is open (gathering, proposing or acked).
    pub fn in_round(&self) -> bool {
        matches!(
            self.phase,
            Phase::Gather | Phase::Proposing { .. } | Phase::Acked { .. }
        )
    }

    /// The nodes this node hears (itself included).
    pub fn reachable(&self) -> NodeSet {
        self.knowledge
            .get(&self.params.local)
            .map(|e| e.reach)
            .unwrap_or_default()
    }

    /// Every configured node's state, for status.
    pub fn node_states(&self) -> BTreeMap<NodeId, NodeState> {
        let quorate_members = self
            .view
            .filter(|v| v.quorum.quorate)
            .map(|v| v.members)
            .unwrap_or_default();
        let mut out = BTreeMap::new();
        for id in self.configured.iter() {
            let st = if id == self.params.local {
                if self.phase == Phase::Halted {
                    NodeState::Down
                } else if quorate_members.contains(id) {
                    NodeState::Up
                } else {
                    NodeState::Passive
                }
            } else {
                let p = &self.peers[&id];
                if self.has_left(id, p) {
                    NodeState::Leaving
                } else if p.links.is_empty() {
                    NodeState::Down
                } else {
                    match p.agent {
                        PeerAgentState::Stale => NodeState::Stale,
                        PeerAgentState::Leaving => NodeState::Leaving,
                        PeerAgentState::Restarting if !self.restart_expired(p) => {
                            NodeState::Restarting
                        }
                        PeerAgentState::Restarting => NodeState::Down,
                        PeerAgentState::Running if quorate_members.contains(id) => NodeState::Up,
                        PeerAgentState::Running => NodeState::Passive,
                    }
                }
            };
            out.insert(id, st);
        }
        out
    }

    /// When the runner must tick next (none: only on input).
    pub fn next_deadline_ns(&self) -> Option<u64> {
        let t = &self.params.timing;
        let mut d: Vec<u64> = Vec::new();
        if !self.ticked {
            return Some(self.now);
        }
        if let Some(j) = self.join_due {
            d.push(j);
        }
        match self.phase {
            Phase::Halted => d.push(self.next_leave_ns()),
            Phase::Gather => {
                d.push(
                    self.last_join_sent
                        .unwrap_or(self.now)
                        .saturating_add(t.join_interval_ns),
                );
                if !self.may_form_self() {
                    d.push(self.started_at.saturating_add(t.auto_start_timeout_ns));
                }
                d.push(self.settle_until());
            }
            Phase::Proposing { since, qs, .. } => {
                d.push(self.last_resend.saturating_add(t.join_interval_ns));
                d.push(since.saturating_add(self.round_timeout_ns()));
                if let QsWait::Pending { deadline } = qs {
                    d.push(deadline);
                }
            }
            Phase::Acked { since, .. } => {
                d.push(self.last_resend.saturating_add(t.join_interval_ns));
                d.push(since.saturating_add(self.round_timeout_ns()));
            }
            Phase::Operational => {
                d.push(
                    self.last_join_sent
                        .unwrap_or(self.now)
                        .saturating_add(t.sync_interval_ns),
                );
                if let Some(x) = self.quorum.lms_deadline_ns() {
                    d.push(x);
                }
                if let Some(x) = self.qs_renew_at {
                    d.push(x);
                }
                if let Some(x) = self.qs_lease_until {
                    d.push(x);
                }
            }
        }
        for p in self.peers.values() {
            if p.agent == PeerAgentState::Restarting && !self.restart_expired(p) {
                d.push(p.agent_since.saturating_add(t.restart_window_ns));
            }
        }
        // Everything due at or before now was handled by the last step.
        d.into_iter().filter(|&x| x > self.now).min()
    }

    /// Feeds one input; returns the outputs in order.
    pub fn handle(&mut self, input: Input) -> Vec<Output> {
        let mut out = Vec::new();
        self.handle_into(input, &mut out);
        out
    }

    /// Feeds one input, appending the outputs to `out`.
    pub fn handle_into(&mut self, input: Input, out: &mut Vec<Output>) {
        match input {
            Input::LinkUp { peer, link, at_ns } => {
                self.advance(at_ns);
                let mut first = false;
                if let Some(p) = self.peers.get_mut(&peer) {
                    first = p.links.is_empty();
                    p.links.insert(link);
                }
                // A peer we hear again may have missed our state (and we
                // its): tell it now; its answer brings us up to date.
                if first {
                    self.schedule_join(at_ns);
                }
            }
            Input::LinkDown { peer, link, at_ns } => {
                self.advance(at_ns);
                if let Some(p) = self.peers.get_mut(&peer) {
                    p.links.remove(&link);
                }
            }
            Input::PeerAgent { peer, state, at_ns } => {
                self.advance(at_ns);
                let epoch = self.view_epoch();
                if let Some(p) = self.peers.get_mut(&peer)
                    && p.agent != state
                {
                    p.agent = state;
                    p.agent_since = at_ns;
                    if state == PeerAgentState::Restarting {
                        out.push(Output::Event(Event {
                            cause: Cause::Restarting,
                            node: Some(peer),
                            epoch,
                        }));
                    }
                }
            }
            Input::Message { msg, at_ns } => {
                self.advance(at_ns);
                self.on_message(msg, out);
            }
            Input::Command { cmd, at_ns } => {
                self.advance(at_ns);
                self.on_command(cmd, out);
            }
            Input::Tick { now_ns } => {
                self.advance(now_ns);
                self.ticked = true;
            }
            Input::QuorumServer {
                epoch,
                members,
                granted,
                lease_ns,
                at_ns,
            } => {
                self.advance(at_ns);
                self.on_qs_answer(epoch, members, granted, lease_ns, out);
            }
        }
        if self.ticked {
            self.step(out);
        }
    }

    /// How long a proposal (or an ack) stays open: the consensus timeout,
    /// plus the quorum server timeout when one may have to be asked.
    fn round_timeout_ns(&self) -> u64 {
        let t = &self.params.timing;
        if self.params.quorum.quorum_server {
            t.consensus_timeout_ns.saturating_add(t.qs_timeout_ns)
        } else {
            t.consensus_timeout_ns
        }
    }

    /// Until when a coordinator that hears nodes outside its set waits:
    /// consensus_timeout after the round started and after the last change
    /// of its knowledge.
    fn settle_until(&self) -> u64 {
        self.round_since
            .max(self.knowledge_changed_at)
            .saturating_add(self.params.timing.consensus_timeout_ns)
    }

    fn next_leave_ns(&self) -> u64 {
        let t = &self.params.timing;
        let gap = if self.now < self.halted_at.saturating_add(t.consensus_timeout_ns) {
            t.join_interval_ns
        } else {
            t.sync_interval_ns
        };
        self.last_leave_sent.saturating_add(gap)
    }

    fn advance(&mut self, at_ns: u64) {
        self.now = self.now.max(at_ns);
    }

    fn view_epoch(&self) -> Epoch {
        self.view.map(|v| v.epoch).unwrap_or_default()
    }

    fn restart_expired(&self, p: &Peer) -> bool {
        self.now
            >= p.agent_since
                .saturating_add(self.params.timing.restart_window_ns)
    }

    /// Whether a newer reachable set of `id` than `mark` was flooded.
    fn newer_knowledge(&self, id: NodeId, mark: Option<(u32, u32)>) -> bool {
        self.knowledge
            .get(&id)
            .is_some_and(|e| Some((e.incarnation, e.version)) > mark)
    }

    /// Whether `id` has left: its leave message is the newest we know of
    /// it, or its heartbeats (while we hear them) say so.
    fn has_left(&self, id: NodeId, p: &Peer) -> bool {
        (p.leaving && !self.newer_knowledge(id, p.left_at))
            || (!p.links.is_empty() && p.agent == PeerAgentState::Leaving)
    }

    fn peer_reachable(&self, id: NodeId, p: &Peer) -> bool {
        !p.links.is_empty()
            && !self.has_left(id, p)
            && match p.agent {
                PeerAgentState::Running => true,
                PeerAgentState::Restarting => !self.restart_expired(p),
                PeerAgentState::Stale | PeerAgentState::Leaving => false,
            }
    }

    fn compute_reach(&self) -> NodeSet {
        let mut r = NodeSet::single(self.params.local);
        if self.phase == Phase::Halted {
            return r;
        }
        for (id, p) in &self.peers {
            if self.peer_reachable(*id, p) {
                r.insert(*id);
            }
        }
        r
    }

    /// Why `id` is not among this node's members.
    fn exclusion_cause(&self, id: NodeId) -> Cause {
        let Some(p) = self.peers.get(&id) else {
            return Cause::NodeFailed;
        };
        if self.has_left(id, p) {
            Cause::NodeLeft
        } else if p.links.is_empty() {
            Cause::NodeFailed
        } else {
            match p.agent {
                PeerAgentState::Stale => Cause::AgentStale,
                PeerAgentState::Restarting if self.restart_expired(p) => Cause::RestartExpired,
                _ => Cause::Partition,
            }
        }
    }

    fn rank(&self, id: NodeId) -> (std::cmp::Reverse<u32>, NodeId) {
        (
            std::cmp::Reverse(self.prio.get(&id).copied().unwrap_or(0)),
            id,
        )
    }

    /// The coordinator of a set: highest priority, then lowest id.
    pub fn coordinator_of(&self, set: NodeSet) -> Option<NodeId> {
        set.iter().min_by_key(|id| self.rank(*id))
    }

    /// This node's member set: its clique in the deterministic clique
    /// partition of the mutual-connectivity graph it knows.
    pub fn compute_members(&self) -> NodeSet {
        let me = self.params.local;
        if self.phase == Phase::Halted {
            return NodeSet::EMPTY;
        }
        // A node that announced its leave, or whose agent is stale, speaks
        // for nobody: its last flooded set is frozen.
        let reach = |id: NodeId| -> NodeSet {
            let silent = self.peers.get(&id).is_some_and(|p| {
                self.has_left(id, p) || (!p.links.is_empty() && p.agent == PeerAgentState::Stale)
            });
            if silent {
                return NodeSet::single(id);
            }
            self.knowledge.get(&id).map(|e| e.reach).unwrap_or_default()
        };
        let mutual = |a: NodeId, b: NodeId| reach(a).contains(b) && reach(b).contains(a);
        let mut order: Vec<NodeId> = self
            .knowledge
            .keys()
            .copied()
            .filter(|id| self.configured.contains(*id))
            .collect();
        order.sort_by_key(|id| self.rank(*id));
        let mut remaining: NodeSet = order.iter().copied().collect();
        while !remaining.is_empty() {
            let mut clique = NodeSet::EMPTY;
            for &n in &order {
                if remaining.contains(n) && clique.iter().all(|c| mutual(n, c)) {
                    clique.insert(n);
                }
            }
            if clique.contains(me) {
                return clique;
            }
            if clique.is_empty() {
                break;
            }
            remaining = remaining.difference(clique);
        }
        NodeSet::single(me)
    }

    fn may_form_self(&self) -> bool {
        self.formed_once
            || self.start_cmd
            || (self.params.start == StartMode::Auto
                && self.now
                    >= self
                        .started_at
                        .saturating_add(self.params.timing.auto_start_timeout_ns))
    }

    fn join_flags(&self) -> u8 {
        let mut f = 0;
        if self.may_form_self() {
            f |= join_flags::MAY_FORM;
        }
        if self.quorum.wfa_ok() {
            f |= join_flags::WFA_OK;
        }
        if self.view.is_some_and(|v| v.quorum.quorate) {
            f |= join_flags::VIEW_QUORATE;
        }
        f
    }

    fn make_join(&self) -> Message {
        let me = self.params.local;
        let mut reach: Vec<ReachEntry> = Vec::with_capacity(self.knowledge.len());
        if let Some(e) = self.knowledge.get(&me) {
            reach.push(*e);
        }
        reach.extend(self.knowledge.values().filter(|e| e.node != me).copied());
        let (ve, vm) = self
            .view
            .map(|v| (v.epoch, v.members))
            .unwrap_or((Epoch(0), NodeSet::EMPTY));
        Message::Join(Join {
            max_epoch: self.max_epoch.max(self.promised),
            promised: self.promised,
            view_epoch: ve,
            view_members: vm,
            flags: self.join_flags(),
            expected: self.quorum.expected(),
            proposal: self.compute_members(),
            reach,
        })
    }

    fn send_join(&mut self, out: &mut Vec<Output>) {
        out.push(Output::Send {
            to: Dest::All,
            msg: self.make_join(),
        });
        self.last_join_sent = Some(self.now);
        self.join_due = None;
    }

    fn schedule_join(&mut self, at: u64) {
        self.join_due = Some(self.join_due.map_or(at, |d| d.min(at)));
    }

    /// Schedules a join soon, but at most one per quarter join interval.
    fn schedule_join_rate_limited(&mut self) {
        let gap = self.params.timing.join_interval_ns / 4;
        let at = self
            .last_join_sent
            .map_or(self.now, |l| l.saturating_add(gap).max(self.now));
        self.schedule_join(at);
    }

    fn on_command(&mut self, cmd: Command, out: &mut Vec<Output>) {
        match cmd {
            Command::ClusterStart => {
                self.start_cmd = true;
                self.schedule_join(self.now);
            }
            Command::NodeHalt => {
                if self.phase == Phase::Halted {
                    return;
                }
                self.phase = Phase::Halted;
                self.halted_at = self.now;
                self.last_leave_sent = self.now;
                self.refresh_reach();
                out.push(Output::Send {
                    to: Dest::All,
                    msg: Message::Leave(Leave {
                        epoch: self.promised,
                        version: self.own_version(),
                    }),
                });
                let view = View {
                    epoch: self.promised,
                    members: NodeSet::EMPTY,
                    coordinator: None,
                    quorum: QuorumState::default(),
                };
                self.view = Some(view);
                self.qs_lease_until = None;
                self.qs_renew_at = None;
                out.push(Output::Install(view));
                out.push(Output::Event(Event {
                    cause: Cause::Halted,
                    node: Some(self.params.local),
                    epoch: self.promised,
                }));
            }
            Command::NodeStart => {
                if self.phase == Phase::Halted {
                    self.phase = Phase::Gather;
                    self.round_since = self.now;
                    self.view = None;
                    self.refresh_reach();
                    self.schedule_join(self.now);
                }
            }
        }
    }

    fn own_version(&self) -> u32 {
        self.knowledge
            .get(&self.params.local)
            .map_or(0, |e| e.version)
    }

    fn refresh_reach(&mut self) {
        let r = self.compute_reach();
        let me = self.params.local;
        let inc = self.incarnation;
        let e = self
            .knowledge
            .get_mut(&me)
            .expect("own entry always present");
        if e.reach != r {
            e.reach = r;
            e.incarnation = inc;
            e.version = e.version.wrapping_add(1);
            self.join_due = Some(self.now);
            self.knowledge_changed_at = self.now;
        }
    }

    fn on_message(&mut self, a: Authenticated, out: &mut Vec<Output>) {
        let from = a.header.sender;
        if from == self.params.local {
            return;
        }
        if let Err(reason) = self.guard.check(&a.header) {
            out.push(Output::Dropped { from, reason });
            return;
        }
        match a.msg {
            Message::Join(j) => self.on_join(from, (a.header.incarnation, a.header.seq), j),
            Message::Propose(p) => self.on_propose(from, p, out),
            Message::Ack(k) => self.on_ack(from, k, out),
            Message::Commit(c) => self.on_commit(from, c, out),
            Message::Leave(l) => {
                if let Some(p) = self.peers.get_mut(&from) {
                    p.leaving = true;
                    p.leave_seq = Some((a.header.incarnation, a.header.seq));
                    p.left_at = Some((a.header.incarnation, l.version));
                    p.join = None;
                }
            }
            // The packages state machine's; the runner routes them there.
            Message::PkgPlacement(_) | Message::PkgReport(_) | Message::PkgCommand(_) => {}
            Message::QsRequest(_) | Message::QsAnswer(_) => {
                out.push(Output::Dropped {
                    from,
                    reason: DropReason::MalformedBody,
                });
            }
        }
    }

    fn on_join(&mut self, from: NodeId, seq: (u32, u64), j: Join) {
        self.max_epoch = self.max_epoch.max(j.max_epoch);
        let Some(p) = self.peers.get_mut(&from) else {
            return;
        };
        // A join sent after its leave means the node takes part again.
        if p.leave_seq.is_some_and(|l| seq < l) {
            return;
        }
        p.leaving = false;
        p.join = Some(PeerJoin {
            max_epoch: j.max_epoch,
            promised: j.promised,
            view_epoch: j.view_epoch,
            view_members: j.view_members,
            flags: j.flags,
            expected: j.expected,
            proposal: j.proposal,
        });
        let me = self.params.local;
        let mut changed = false;
        let mut behind = false;
        for e in &j.reach {
            if !self.configured.contains(e.node) || e.node == me {
                continue;
            }
            let newer = match self.knowledge.get(&e.node) {
                None => true,
                Some(k) => (e.incarnation, e.version) > (k.incarnation, k.version),
            };
            if newer {
                self.knowledge.insert(e.node, *e);
                changed = true;
            }
        }
        // Is the sender behind us (missing or older entries)?
        for (id, k) in &self.knowledge {
            match j.reach.iter().find(|e| e.node == *id) {
                Some(e) if (e.incarnation, e.version) >= (k.incarnation, k.version) => {}
                _ => behind = true,
            }
        }
        let my_view = self.view.map(|v| (v.epoch, v.members));
        let differs =
            j.proposal != self.compute_members() || my_view != Some((j.view_epoch, j.view_members));
        if changed {
            self.knowledge_changed_at = self.now;
            self.schedule_join(self.now);
        } else if behind || differs {
            self.schedule_join_rate_limited();
        }
        // A member of our view missed the commit: send it again.
        if self.phase == Phase::Operational
            && let Some(v) = self.view
            && v.coordinator == Some(me)
            && v.members.contains(from)
            && (j.view_epoch, j.view_members) != (v.epoch, v.members)
            && j.promised <= v.epoch
        {
            self.resend_commit.insert(from);
        }
        // The sender refusing our open proposal: give it up at once.
        if let Phase::Proposing { members, .. } = self.phase
            && members.contains(from)
            && j.proposal != members
        {
            self.phase = Phase::Gather;
        }
    }

    fn on_propose(&mut self, from: NodeId, p: Propose, out: &mut Vec<Output>) {
        self.max_epoch = self.max_epoch.max(p.epoch);
        let me = self.params.local;
        if let Phase::Acked { epoch, members, .. } = self.phase
            && epoch == p.epoch
            && members == p.members
        {
            self.send_ack(from, p, out);
            return;
        }
        if p.epoch <= self.promised {
            if self.view.map(|v| v.epoch) != Some(p.epoch) {
                out.push(Output::Dropped {
                    from,
                    reason: DropReason::OldEpoch,
                });
            }
            return;
        }
        if self.phase == Phase::Halted
            || !p.members.contains(me)
            || self.coordinator_of(p.members) != Some(from)
            || p.members != self.compute_members()
        {
            // Tell the proposer what we think instead.
            self.schedule_join_rate_limited();
            return;
        }
        if self.phase == Phase::Operational {
            self.round_since = self.now;
        }
        self.promised = p.epoch;
        out.push(Output::PersistEpoch(p.epoch));
        self.phase = Phase::Acked {
            epoch: p.epoch,
            members: p.members,
            coordinator: from,
            since: self.now,
        };
        self.send_ack(from, p, out);
    }

    fn send_ack(&mut self, to: NodeId, p: Propose, out: &mut Vec<Output>) {
        out.push(Output::Send {
            to: Dest::Nodes(NodeSet::single(to)),
            msg: Message::Ack(Ack {
                epoch: p.epoch,
                members: p.members,
            }),
        });
        self.last_resend = self.now;
    }

    fn on_ack(&mut self, from: NodeId, k: Ack, out: &mut Vec<Output>) {
        if let Phase::Proposing {
            epoch,
            members,
            ref mut acks,
            ..
        } = self.phase
        {
            if epoch == k.epoch && members == k.members && members.contains(from) {
                acks.insert(from);
            }
            return;
        }
        // A member that missed our commit acks again: resend it.
        if let Some(v) = self.view
            && v.epoch == k.epoch
            && v.members == k.members
            && v.coordinator == Some(self.params.local)
        {
            out.push(Output::Send {
                to: Dest::Nodes(NodeSet::single(from)),
                msg: Message::Commit(Commit {
                    epoch: v.epoch,
                    members: v.members,
                    quorum: v.quorum,
                }),
            });
        }
    }

    fn on_commit(&mut self, from: NodeId, c: Commit, out: &mut Vec<Output>) {
        let me = self.params.local;
        let already = self.view.map(|v| (v.epoch, v.members)) == Some((c.epoch, c.members));
        // A commit means every member acked (this node too, before any
        // restart: it persisted the epoch first), so it is installed in any
        // phase, as long as it is not older than what this node promised.
        if !already
            && self.phase != Phase::Halted
            && c.epoch >= self.promised
            && c.members.contains(me)
            && self.coordinator_of(c.members) == Some(from)
        {
            self.install(
                View {
                    epoch: c.epoch,
                    members: c.members,
                    coordinator: Some(from),
                    quorum: c.quorum,
                },
                None,
                out,
            );
            return;
        }
        if c.epoch < self.promised {
            out.push(Output::Dropped {
                from,
                reason: DropReason::OldEpoch,
            });
        }
    }

    fn on_qs_answer(
        &mut self,
        epoch: Epoch,
        members: NodeSet,
        granted: bool,
        lease_ns: u64,
        out: &mut Vec<Output>,
    ) {
        if let Phase::Proposing {
            epoch: e,
            members: m,
            ref mut qs,
            ..
        } = self.phase
            && e == epoch
            && m == members
            && matches!(qs, QsWait::Pending { .. })
        {
            *qs = QsWait::Answered(if granted {
                QsVerdict::Granted
            } else {
                QsVerdict::Denied
            });
            if granted {
                self.qs_lease_until = Some(self.qs_asked_at.saturating_add(lease_ns));
            }
            return;
        }
        // Renewal of the installed view's lease.
        if let Some(v) = self.view
            && v.epoch == epoch
            && v.members == members
            && v.quorum.tie_breaker == TieBreaker::QsGranted
            && self.phase == Phase::Operational
        {
            if granted {
                self.qs_lease_until = Some(self.qs_asked_at.saturating_add(lease_ns));
                self.qs_renew_at = Some(self.now.saturating_add(lease_ns / 3));
            } else {
                self.start_round(Cause::QuorumLost, out);
            }
        }
    }

    fn start_round(&mut self, _cause: Cause, out: &mut Vec<Output>) {
        let _ = out;
        self.phase = Phase::Gather;
        self.round_since = self.now;
        self.qs_renew_at = None;
        self.schedule_join(self.now);
    }

    /// The expected sets and wait_for_all flags of `members` (from joins).
    fn peer_quorum_info(&self, members: NodeSet) -> (NodeSet, bool) {
        let mut expected = NodeSet::EMPTY;
        let mut wfa = false;
        for id in members.iter() {
            if let Some(j) = self.peers.get(&id).and_then(|p| p.join.as_ref()) {
                expected = expected.union(j.expected);
                wfa |= j.flags & join_flags::WFA_OK != 0;
            }
        }
        (expected, wfa)
    }

    fn install(&mut self, view: View, cause_override: Option<Cause>, out: &mut Vec<Output>) {
        let prev = self.view;
        let prev_members = prev.map(|v| v.members).unwrap_or_default();
        let prev_quorate = prev.is_some_and(|v| v.quorum.quorate);
        self.promised = self.promised.max(view.epoch);
        self.max_epoch = self.max_epoch.max(view.epoch);
        self.view = Some(view);
        self.phase = Phase::Operational;
        self.formed_once = true;
        if view.coordinator != Some(self.params.local) {
            self.qs_lease_until = None;
            self.qs_renew_at = None;
        }
        self.quorum
            .installed(view.members, view.quorum.quorate, self.now);
        out.push(Output::Install(view));
        let ev = |cause, node| {
            Output::Event(Event {
                cause,
                node,
                epoch: view.epoch,
            })
        };
        if let Some(c) = cause_override {
            out.push(ev(c, Some(self.params.local)));
        }
        for id in view.members.difference(prev_members).iter() {
            if id == self.params.local {
                continue;
            }
            let cause = match self.excluded.remove(&id) {
                Some(Cause::Partition) => Cause::Healed,
                _ => Cause::NodeJoined,
            };
            out.push(ev(cause, Some(id)));
        }
        for id in prev_members.difference(view.members).iter() {
            let cause = self.exclusion_cause(id);
            self.excluded.insert(id, cause);
            out.push(ev(cause, Some(id)));
        }
        if view.quorum.quorate && !prev_quorate {
            out.push(ev(Cause::QuorumGained, None));
        } else if !view.quorum.quorate && prev_quorate {
            out.push(ev(Cause::QuorumLost, None));
        }
        self.schedule_join(self.now);
    }

    fn commit(&mut self, epoch: Epoch, members: NodeSet, qs: QsVerdict, out: &mut Vec<Output>) {
        let (exp, wfa) = self.peer_quorum_info(members);
        let quorum = self.quorum.evaluate(members, exp, wfa, qs);
        self.quorum.merge_expected(exp);
        let others = members.difference(NodeSet::single(self.params.local));
        let c = Commit {
            epoch,
            members,
            quorum,
        };
        if !others.is_empty() {
            out.push(Output::Send {
                to: Dest::Nodes(others),
                msg: Message::Commit(c),
            });
        }
        if quorum.tie_breaker == TieBreaker::QsGranted {
            let lease_left = self
                .qs_lease_until
                .map_or(0, |u| u.saturating_sub(self.now));
            self.qs_renew_at = Some(self.now.saturating_add(lease_left / 3));
        } else {
            self.qs_lease_until = None;
            self.qs_renew_at = None;
        }
        self.install(
            View {
                epoch,
                members,
                coordinator: Some(self.params.local),
                quorum,
            },
            None,
            out,
        );
    }

    /// The rules, run after every input.
    fn step(&mut self, out: &mut Vec<Output>) {
        let t = self.params.timing;
        let me = self.params.local;
        self.refresh_reach();
        if self.phase == Phase::Halted {
            self.join_due = None;
            // The leave is resent (it may be lost): every join interval for
            // a consensus timeout, then every sync interval.
            if self.now >= self.next_leave_ns() {
                out.push(Output::Send {
                    to: Dest::All,
                    msg: Message::Leave(Leave {
                        epoch: self.promised,
                        version: self.own_version(),
                    }),
                });
                self.last_leave_sent = self.now;
            }
            return;
        }
        // LMS.
        if self.quorum.tick(self.now)
            && let Some(v) = self.view.as_mut()
        {
            let (exp, wfa) = (self.quorum.expected(), self.quorum.wfa_ok());
            let q = self.quorum.config().evaluate(
                v.members,
                exp,
                wfa,
                if v.quorum.tie_breaker == TieBreaker::QsGranted {
                    QsVerdict::Granted
                } else {
                    QsVerdict::NotAsked
                },
            );
            if q != v.quorum {
                v.quorum = q;
                out.push(Output::QuorumUpdated(q));
            }
        }
        let m = self.compute_members();
        match self.phase {
            Phase::Halted => {}
            Phase::Operational => {
                let v = self.view.expect("operational has a view");
                let newer_round = v.members.iter().any(|id| {
                    self.peers
                        .get(&id)
                        .and_then(|p| p.join.as_ref())
                        .is_some_and(|j| {
                            j.promised > v.epoch
                                && (j.view_epoch, j.view_members) != (v.epoch, v.members)
                        })
                });
                let lease_lost = self.qs_lease_until.is_some_and(|u| self.now >= u)
                    && v.quorum.tie_breaker == TieBreaker::QsGranted
                    && v.coordinator == Some(me);
                if !self.resend_commit.is_empty() {
                    out.push(Output::Send {
                        to: Dest::Nodes(self.resend_commit),
                        msg: Message::Commit(Commit {
                            epoch: v.epoch,
                            members: v.members,
                            quorum: v.quorum,
                        }),
                    });
                    self.resend_commit = NodeSet::EMPTY;
                }
                if m != v.members || newer_round || lease_lost {
                    self.start_round(Cause::Partition, out);
                    self.try_consensus(m, out);
                } else if let Some(r) = self.qs_renew_at
                    && self.now >= r
                    && v.coordinator == Some(me)
                {
                    self.qs_renew_at = Some(self.now.saturating_add(t.qs_timeout_ns));
                    self.ask_qs(v.epoch, v.members, out);
                }
            }
            Phase::Gather => self.try_consensus(m, out),
            Phase::Proposing {
                epoch,
                members,
                acks,
                since,
                qs,
            } => {
                if m != members || self.now >= since.saturating_add(self.round_timeout_ns()) {
                    self.phase = Phase::Gather;
                    self.try_consensus(m, out);
                } else {
                    let qs = match qs {
                        QsWait::Pending { deadline } if self.now >= deadline => {
                            let a = QsWait::Answered(QsVerdict::Unreachable);
                            if let Phase::Proposing { qs, .. } = &mut self.phase {
                                *qs = a;
                            }
                            a
                        }
                        q => q,
                    };
                    if acks == members {
                        match qs {
                            QsWait::NotNeeded => {
                                self.commit(epoch, members, QsVerdict::NotAsked, out)
                            }
                            QsWait::Answered(v) => self.commit(epoch, members, v, out),
                            QsWait::Pending { .. } => {}
                        }
                    } else if self.now >= self.last_resend.saturating_add(t.join_interval_ns) {
                        out.push(Output::Send {
                            to: Dest::Nodes(members.difference(acks)),
                            msg: Message::Propose(Propose { epoch, members }),
                        });
                        self.last_resend = self.now;
                    }
                }
            }
            Phase::Acked {
                epoch,
                members,
                coordinator,
                since,
            } => {
                if m != members || self.now >= since.saturating_add(self.round_timeout_ns()) {
                    self.phase = Phase::Gather;
                    self.try_consensus(m, out);
                } else if self.now >= self.last_resend.saturating_add(t.join_interval_ns) {
                    self.send_ack(coordinator, Propose { epoch, members }, out);
                }
            }
        }
        // Joins: due ones, and periodic.
        let period = match self.phase {
            Phase::Operational => t.sync_interval_ns,
            Phase::Halted => u64::MAX,
            _ => t.join_interval_ns,
        };
        let periodic = self
            .last_join_sent
            .is_none_or(|l| self.now >= l.saturating_add(period));
        if self.phase != Phase::Halted && (self.join_due.is_some_and(|d| self.now >= d) || periodic)
        {
            self.send_join(out);
        }
    }

    /// In a round: adopt an agreed view, return to it, or (coordinator)
    /// propose when every member announces the same set.
    fn try_consensus(&mut self, m: NodeSet, out: &mut Vec<Output>) {
        let me = self.params.local;
        let others = m.difference(NodeSet::single(me));
        let joins: Vec<&PeerJoin> = others
            .iter()
            .filter_map(|id| self.peers.get(&id).and_then(|p| p.join.as_ref()))
            .collect();
        if joins.len() != others.len() || joins.iter().any(|j| j.proposal != m) {
            return;
        }
        // Every other member already has the view (E, m): return to it or
        // adopt it (restart within the window, or a lost commit).
        if !others.is_empty()
            && let Some(first) = joins.first()
            && joins
                .iter()
                .all(|j| j.view_epoch == first.view_epoch && j.view_members == m)
            && first.view_epoch >= self.promised
            && first.view_epoch > Epoch(0)
        {
            let epoch = first.view_epoch;
            if self.view.map(|v| (v.epoch, v.members)) == Some((epoch, m)) {
                self.phase = Phase::Operational;
                return;
            }
            let (exp, wfa) = self.peer_quorum_info(m);
            // Whatever tie-breaker the view used, its members say whether it
            // is quorate.
            let peers_quorate = joins
                .iter()
                .all(|j| j.flags & join_flags::VIEW_QUORATE != 0);
            let qs = if peers_quorate {
                QsVerdict::Granted
            } else {
                QsVerdict::Denied
            };
            let mut quorum = self.quorum.evaluate(m, exp, wfa, qs);
            quorum.quorate &= peers_quorate;
            if epoch > self.promised {
                out.push(Output::PersistEpoch(epoch));
            }
            self.promised = self.promised.max(epoch);
            self.install(
                View {
                    epoch,
                    members: m,
                    coordinator: self.coordinator_of(m),
                    quorum,
                },
                Some(Cause::Adopted),
                out,
            );
            return;
        }
        if self.coordinator_of(m) != Some(me) {
            return;
        }
        // We hear a node that is not in our set: the graph may still be
        // settling (a link event or join not yet seen by one side). Wait,
        // at most consensus_timeout since the round started (one-way loss
        // ends up here for good).
        let disagreement = !self.reachable().difference(m).is_empty();
        if disagreement && self.now < self.settle_until() {
            return;
        }
        let may_form = self.may_form_self()
            || joins.iter().any(|j| j.flags & join_flags::MAY_FORM != 0)
            || (self.params.start == StartMode::Auto && m == self.configured);
        if !may_form {
            return;
        }
        let epoch = joins
            .iter()
            .map(|j| j.max_epoch)
            .chain([self.max_epoch, self.promised])
            .max()
            .unwrap_or_default()
            .next();
        self.promised = epoch;
        self.max_epoch = epoch;
        out.push(Output::PersistEpoch(epoch));
        let (exp, _) = self.peer_quorum_info(m);
        let qs = if self
            .quorum
            .config()
            .needs_quorum_server(m, self.quorum.expected().union(exp))
        {
            self.ask_qs(epoch, m, out);
            QsWait::Pending {
                deadline: self.now.saturating_add(self.params.timing.qs_timeout_ns),
            }
        } else {
            QsWait::NotNeeded
        };
        self.phase = Phase::Proposing {
            epoch,
            members: m,
            acks: NodeSet::single(me),
            since: self.now,
            qs,
        };
        if !others.is_empty() {
            out.push(Output::Send {
                to: Dest::Nodes(others),
                msg: Message::Propose(Propose { epoch, members: m }),
            });
        }
        self.last_resend = self.now;
        // A set of one (or a quorum server already answered) commits at once.
        if others.is_empty() && qs == QsWait::NotNeeded {
            self.commit(epoch, m, QsVerdict::NotAsked, out);
        }
    }

    fn ask_qs(&mut self, epoch: Epoch, members: NodeSet, out: &mut Vec<Output>) {
        // The server's lease starts no earlier than our request: count it
        // from here, so we never believe in it longer than the server does.
        self.qs_asked_at = self.now;
        let (exp, _) = self.peer_quorum_info(members);
        let expected = self.quorum.expected().union(exp).union(members);
        let cfg = self.quorum.config();
        out.push(Output::AskQuorumServer {
            epoch,
            members,
            votes: cfg.votes_of(members),
            expected_votes: cfg.votes_of(expected),
        });
    }
}
