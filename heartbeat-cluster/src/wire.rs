//! Membership messages on the wire, their MAC and replay protection.
//!
//! A membership message is one UDP datagram on the heartbeat port:
//!
//! | offset | size | field |
//! |-------:|-----:|-------|
//! | 0 | 6 | prefix: magic `"HBT1"`, version 1, kind 3 ([`KIND_MEMBERSHIP`]) |
//! | 6 | 4 | cluster id |
//! | 10 | 2 | sender node id (0 = the quorum server) |
//! | 12 | 4 | sender incarnation (persisted start counter, +1 per agent start) |
//! | 16 | 8 | sequence, strictly increasing within an incarnation |
//! | 24 | 1 | message type ([`MsgType`]) |
//! | 25 | 2 | body length |
//! | 27 | n | body (per type, below) |
//! | 27+n | 8 | SipHash-2-4 MAC (cluster key) over bytes `0..27+n` |
//!
//! Every multi-byte field is big-endian. A datagram is at most [`MAX_LEN`]
//! bytes. [`decode`] is a pure function of the bytes, the keys and the
//! cluster id; it never panics (fuzzed and tested on every truncation and
//! every flipped bit). Replay protection is per sender: [`ReplayGuard`]
//! keeps the last (incarnation, sequence) and rejects anything not newer.
//! A replay of an older incarnation received after *this* node restarted
//! (its guard is empty) passes the guard but is then dropped by the state
//! machine as `old_epoch` (epochs are persisted).

use heartbeat_common::siphash::{SipKey, ct_eq, siphash24};
pub use heartbeat_common::{KIND_MEMBERSHIP, MAGIC, PREFIX_LEN, VERSION};
use serde::{Deserialize, Serialize};

use crate::ids::{Epoch, NodeId, NodeSet};
use crate::placement::{Decision, LossCause, Operator, PackageId, Reason};
use crate::quorum::{QuorumState, TieBreaker};

/// Bytes before the body.
pub const HEADER_LEN: usize = 27;
/// Bytes of the MAC at the end.
pub const MAC_LEN: usize = 8;
/// Largest membership datagram (a join of a full 63-node cluster fits).
pub const MAX_LEN: usize = 1280;
/// Largest number of reachability entries in one join.
pub const MAX_REACH_ENTRIES: usize = 63;
/// The quorum server's sender id.
pub const QSERVER_SENDER: NodeId = NodeId(0);

/// Why a datagram was dropped; `as_str` is stable (metrics label).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DropReason {
    /// Shorter than a header plus MAC, longer than [`MAX_LEN`], or the body
    /// length field disagrees with the datagram length.
    #[error("wrong length")]
    Length,
    /// Magic, version or kind is not a membership message of this version.
    #[error("not a membership message (magic, version or kind)")]
    Prefix,
    /// Another cluster's id.
    #[error("other cluster")]
    OtherCluster,
    /// The MAC matches neither key slot.
    #[error("bad MAC")]
    BadMac,
    /// The sender is not a configured node (or not a valid id for its type).
    #[error("unknown node")]
    UnknownNode,
    /// Incarnation older, or sequence not newer, than already seen.
    #[error("replayed")]
    Replay,
    /// An epoch older than what this node has already promised.
    #[error("old epoch")]
    OldEpoch,
    /// Authenticated, but the body does not parse.
    #[error("malformed body")]
    MalformedBody,
}

impl DropReason {
    /// Every reason, for registering metrics.
    pub const ALL: [DropReason; 8] = [
        Self::Length,
        Self::Prefix,
        Self::OtherCluster,
        Self::BadMac,
        Self::UnknownNode,
        Self::Replay,
        Self::OldEpoch,
        Self::MalformedBody,
    ];

    /// Stable label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Length => "length",
            Self::Prefix => "magic_version_kind",
            Self::OtherCluster => "other_cluster",
            Self::BadMac => "bad_mac",
            Self::UnknownNode => "unknown_node",
            Self::Replay => "replay",
            Self::OldEpoch => "old_epoch",
            Self::MalformedBody => "malformed_body",
        }
    }
}

/// The key slots a message is verified against (a rotation puts the next
/// key on every node first, then makes it current).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Keys {
    /// Key used to seal and tried first.
    pub current: SipKey,
    /// Key also accepted at verify.
    pub next: Option<SipKey>,
}

/// Which slot verified a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeySlot {
    /// The current key.
    Current,
    /// The next key.
    Next,
}

/// The authenticated header fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Cluster id.
    pub cluster_id: u32,
    /// Sender ([`QSERVER_SENDER`] for the quorum server).
    pub sender: NodeId,
    /// Sender's start counter.
    pub incarnation: u32,
    /// Sender's sequence within the incarnation.
    pub seq: u64,
}

/// Message type byte.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MsgType {
    /// [`Join`].
    Join = 1,
    /// [`Propose`].
    Propose = 2,
    /// [`Ack`].
    Ack = 3,
    /// [`Commit`].
    Commit = 4,
    /// [`Leave`].
    Leave = 5,
    /// [`QsRequest`].
    QsRequest = 16,
    /// [`QsAnswer`].
    QsAnswer = 17,
    /// [`PkgPlacement`].
    PkgPlacement = 32,
    /// [`PkgReport`].
    PkgReport = 33,
    /// [`PkgCommand`].
    PkgCommand = 34,
}

impl MsgType {
    fn from_u8(b: u8) -> Option<Self> {
        Some(match b {
            1 => Self::Join,
            2 => Self::Propose,
            3 => Self::Ack,
            4 => Self::Commit,
            5 => Self::Leave,
            16 => Self::QsRequest,
            17 => Self::QsAnswer,
            32 => Self::PkgPlacement,
            33 => Self::PkgReport,
            34 => Self::PkgCommand,
            _ => return None,
        })
    }
}

/// What one node last knew of another node's reachable set (flooded in
/// joins so that every node can compute the same mutual-connectivity
/// graph). Newer is (incarnation, version) larger.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReachEntry {
    /// Whose reachable set.
    pub node: NodeId,
    /// That node's incarnation when it reported the set.
    pub incarnation: u32,
    /// Per-incarnation version, raised at every change of the set.
    pub version: u32,
    /// Nodes it hears (itself included).
    pub reach: NodeSet,
}

/// Flags of a join.
pub mod join_flags {
    /// The sender may form a new cluster (it was a member of a view since
    /// its start, its auto-start timeout ran out, or it got `cluster start`).
    pub const MAY_FORM: u8 = 1;
    /// The sender has seen all configured nodes together (wait_for_all).
    pub const WFA_OK: u8 = 2;
    /// The sender's installed view is quorate.
    pub const VIEW_QUORATE: u8 = 4;
}

/// Gather message: the sender's knowledge and its computed member set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Join {
    /// Highest epoch the sender has seen or promised.
    pub max_epoch: Epoch,
    /// Highest epoch the sender promised (persisted: proposed or acked).
    pub promised: Epoch,
    /// Epoch of the sender's installed view (0: none).
    pub view_epoch: Epoch,
    /// Members of the sender's installed view.
    pub view_members: NodeSet,
    /// [`join_flags`].
    pub flags: u8,
    /// The nodes whose votes the sender expects (all configured nodes,
    /// until last_man_standing shrinks it).
    pub expected: NodeSet,
    /// The member set the sender computed from its knowledge.
    pub proposal: NodeSet,
    /// Reachable sets the sender knows, its own first.
    pub reach: Vec<ReachEntry>,
}

/// The coordinator proposes a configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Propose {
    /// New epoch.
    pub epoch: Epoch,
    /// New member set.
    pub members: NodeSet,
}

/// A member agrees to a proposal (and has persisted its epoch).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ack {
    /// Proposed epoch.
    pub epoch: Epoch,
    /// Proposed member set.
    pub members: NodeSet,
}

/// The coordinator commits a configuration every member acked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Commit {
    /// Epoch.
    pub epoch: Epoch,
    /// Members.
    pub members: NodeSet,
    /// Quorum as the coordinator computed it.
    pub quorum: QuorumState,
}

/// Graceful leave (node halt).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Leave {
    /// The leaver's highest epoch.
    pub epoch: Epoch,
    /// Version of the leaver's reachable set after it left: a flooded set
    /// of a newer (incarnation, version) means it is back.
    pub version: u32,
}

/// A partition asks the quorum server for the tie.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QsRequest {
    /// Epoch being formed.
    pub epoch: Epoch,
    /// The partition's members.
    pub members: NodeSet,
    /// Votes of those members.
    pub votes: u32,
    /// Expected votes of the cluster.
    pub expected_votes: u32,
}

/// The quorum server's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QsAnswer {
    /// The node that asked.
    pub node: NodeId,
    /// Sequence of the request answered.
    pub request_seq: u64,
    /// Epoch asked for.
    pub epoch: Epoch,
    /// Members asked for.
    pub members: NodeSet,
    /// Whether the tie is granted to this partition.
    pub granted: bool,
    /// Lease length in milliseconds (0 when not granted).
    pub lease_ms: u32,
}

/// Most packages (package health travels as a 64-bit bitmap).
pub const MAX_PACKAGES: usize = 64;
/// Most (package, node) pairs in a placement's operator lists.
pub const MAX_OPERATOR_PAIRS: usize = 64;

/// The coordinator's placement of every package for one epoch
/// (`crate::placement`), with the operator's overrides it was computed
/// with (so that a later coordinator keeps them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PkgPlacement {
    /// The epoch of the view it was computed for.
    pub epoch: Epoch,
    /// Raised at every new placement within the epoch.
    pub seq: u32,
    /// One decision per package, in id order.
    pub decisions: Vec<(PackageId, Decision)>,
    /// The operator's overrides.
    pub operator: Operator,
}

/// A package's state on one node, as that node reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PkgEntry {
    /// The package.
    pub pkg: PackageId,
    /// [`pkg_state`].
    pub state: u8,
    /// [`pkg_flags`].
    pub flags: u8,
    /// Restarts in place since it started here.
    pub restarts: u8,
}

/// `PkgEntry::state` values.
pub mod pkg_state {
    /// Not running here; its lease here is released.
    pub const STOPPED: u8 = 0;
    /// Being started (its lease here may be valid).
    pub const STARTING: u8 = 1;
    /// Running (its lease here may be valid).
    pub const RUNNING: u8 = 2;
    /// Being stopped (its lease here is released).
    pub const STOPPING: u8 = 3;
    /// Its stop failed: it may still run (its lease here is released).
    pub const STOP_FAILED: u8 = 4;
    /// Not known yet (the node is still stopping everything at start).
    pub const UNKNOWN: u8 = 5;
    /// Largest valid value.
    pub const MAX: u8 = UNKNOWN;
}

/// `PkgEntry::flags` bits.
pub mod pkg_flags {
    /// Its monitor fails here.
    pub const UNHEALTHY: u8 = 1;
    /// Banned from this node (hard failure, restart limit, failed start).
    pub const BANNED: u8 = 2;
    /// A configuration error (OCF 6): no node may run it.
    pub const FATAL: u8 = 4;
    /// Its lease lapsed here while held: the sender waits for fresh
    /// reports before it renews again (receivers report at once).
    pub const LAPSED: u8 = 8;
    /// Every flag.
    pub const ALL: u8 = UNHEALTHY | BANNED | FATAL | LAPSED;
}

/// A node's report of its packages, sent on every change, on every new
/// view and placement, and periodically.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PkgReport {
    /// The sender's installed epoch (0: none).
    pub epoch: Epoch,
    /// The sequence of the newest placement of that epoch it applied.
    pub placement_seq: u32,
    /// One entry per package, in id order.
    pub entries: Vec<PkgEntry>,
    /// Per other node: how long the sender has not heard it, in µs (0:
    /// it hears it now; [`SILENCE_NEVER`]: never since its start). A new
    /// owner waits out an old owner's lease from the last time *any*
    /// member of its view heard the old owner (see
    /// `crate::packages`), so every member says when that was.
    pub silence: Vec<(NodeId, u32)>,
}

/// `PkgReport::silence` of a node never heard.
pub const SILENCE_NEVER: u32 = u32::MAX;

/// An operator command, forwarded by the node that received it to the
/// coordinator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PkgCommand {
    /// What to do.
    pub op: OperatorOp,
}

/// The operator's package commands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OperatorOp {
    /// `package move NAME NODE`.
    Move(PackageId, NodeId),
    /// `package start NAME` (also clears bans and a fatal error).
    Start(PackageId),
    /// `package stop NAME`.
    Stop(PackageId),
    /// `package enable NAME [NODE]` (no node: every node).
    Enable(PackageId, Option<NodeId>),
    /// `package disable NAME NODE` (no node: like stop).
    Disable(PackageId, Option<NodeId>),
    /// `cluster freeze`.
    Freeze,
    /// `cluster unfreeze`.
    Unfreeze,
}

/// A membership message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// [`Join`].
    Join(Join),
    /// [`Propose`].
    Propose(Propose),
    /// [`Ack`].
    Ack(Ack),
    /// [`Commit`].
    Commit(Commit),
    /// [`Leave`].
    Leave(Leave),
    /// [`QsRequest`].
    QsRequest(QsRequest),
    /// [`QsAnswer`].
    QsAnswer(QsAnswer),
    /// [`PkgPlacement`].
    PkgPlacement(PkgPlacement),
    /// [`PkgReport`].
    PkgReport(PkgReport),
    /// [`PkgCommand`].
    PkgCommand(PkgCommand),
}

impl Message {
    /// The type byte.
    pub fn msg_type(&self) -> MsgType {
        match self {
            Self::Join(_) => MsgType::Join,
            Self::Propose(_) => MsgType::Propose,
            Self::Ack(_) => MsgType::Ack,
            Self::Commit(_) => MsgType::Commit,
            Self::Leave(_) => MsgType::Leave,
            Self::QsRequest(_) => MsgType::QsRequest,
            Self::QsAnswer(_) => MsgType::QsAnswer,
            Self::PkgPlacement(_) => MsgType::PkgPlacement,
            Self::PkgReport(_) => MsgType::PkgReport,
            Self::PkgCommand(_) => MsgType::PkgCommand,
        }
    }

    /// Whether the packages subsystem (not membership) consumes it.
    pub fn is_package(&self) -> bool {
        matches!(
            self,
            Self::PkgPlacement(_) | Self::PkgReport(_) | Self::PkgCommand(_)
        )
    }
}

/// A decoded message whose MAC verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Authenticated {
    /// Header.
    pub header: Header,
    /// Which key verified it.
    pub key_slot: KeySlot,
    /// The message.
    pub msg: Message,
}

fn mac(key: SipKey, data: &[u8]) -> [u8; 8] {
    siphash24(key, data).to_be_bytes()
}

fn put_body(msg: &Message, out: &mut Vec<u8>) {
    match msg {
        Message::Join(j) => {
            out.extend_from_slice(&j.max_epoch.0.to_be_bytes());
            out.extend_from_slice(&j.promised.0.to_be_bytes());
            out.extend_from_slice(&j.view_epoch.0.to_be_bytes());
            out.extend_from_slice(&j.view_members.bits().to_be_bytes());
            out.push(j.flags);
            out.extend_from_slice(&j.expected.bits().to_be_bytes());
            out.extend_from_slice(&j.proposal.bits().to_be_bytes());
            let n = j.reach.len().min(MAX_REACH_ENTRIES);
            out.push(n as u8);
            for e in &j.reach[..n] {
                out.push(e.node.0 as u8);
                out.extend_from_slice(&e.incarnation.to_be_bytes());
                out.extend_from_slice(&e.version.to_be_bytes());
                out.extend_from_slice(&e.reach.bits().to_be_bytes());
            }
        }
        Message::Propose(p) => {
            out.extend_from_slice(&p.epoch.0.to_be_bytes());
            out.extend_from_slice(&p.members.bits().to_be_bytes());
        }
        Message::Ack(a) => {
            out.extend_from_slice(&a.epoch.0.to_be_bytes());
            out.extend_from_slice(&a.members.bits().to_be_bytes());
        }
        Message::Commit(c) => {
            out.extend_from_slice(&c.epoch.0.to_be_bytes());
            out.extend_from_slice(&c.members.bits().to_be_bytes());
            let q = &c.quorum;
            out.extend_from_slice(&q.present_votes.to_be_bytes());
            out.extend_from_slice(&q.needed_votes.to_be_bytes());
            out.extend_from_slice(&q.expected_votes.to_be_bytes());
            out.push(u8::from(q.quorate));
            out.push(q.tie_breaker.to_u8());
        }
        Message::Leave(l) => {
            out.extend_from_slice(&l.epoch.0.to_be_bytes());
            out.extend_from_slice(&l.version.to_be_bytes());
        }
        Message::QsRequest(r) => {
            out.extend_from_slice(&r.epoch.0.to_be_bytes());
            out.extend_from_slice(&r.members.bits().to_be_bytes());
            out.extend_from_slice(&r.votes.to_be_bytes());
            out.extend_from_slice(&r.expected_votes.to_be_bytes());
        }
        Message::QsAnswer(a) => {
            out.extend_from_slice(&a.node.0.to_be_bytes());
            out.extend_from_slice(&a.request_seq.to_be_bytes());
            out.extend_from_slice(&a.epoch.0.to_be_bytes());
            out.extend_from_slice(&a.members.bits().to_be_bytes());
            out.push(u8::from(a.granted));
            out.extend_from_slice(&a.lease_ms.to_be_bytes());
        }
        Message::PkgPlacement(p) => {
            out.extend_from_slice(&p.epoch.0.to_be_bytes());
            out.extend_from_slice(&p.seq.to_be_bytes());
            let n = p.decisions.len().min(MAX_PACKAGES);
            out.push(n as u8);
            for (pkg, d) in &p.decisions[..n] {
                out.extend_from_slice(&pkg.0.to_be_bytes());
                out.extend_from_slice(&d.owner.map_or(0, |o| o.0).to_be_bytes());
                put_reason(&d.reason, out);
            }
            let o = &p.operator;
            out.push(u8::from(o.frozen));
            put_pairs(o.moves.iter().map(|(p, n)| (*p, *n)), out);
            let stopped: Vec<_> = o.stopped.iter().take(MAX_OPERATOR_PAIRS).collect();
            out.push(stopped.len() as u8);
            for p in stopped {
                out.extend_from_slice(&p.0.to_be_bytes());
            }
            put_pairs(o.disabled.iter().copied(), out);
        }
        Message::PkgReport(r) => {
            out.extend_from_slice(&r.epoch.0.to_be_bytes());
            out.extend_from_slice(&r.placement_seq.to_be_bytes());
            let n = r.entries.len().min(MAX_PACKAGES);
            out.push(n as u8);
            for e in &r.entries[..n] {
                out.extend_from_slice(&e.pkg.0.to_be_bytes());
                out.push(e.state);
                out.push(e.flags);
                out.push(e.restarts);
            }
            let n = r.silence.len().min(MAX_REACH_ENTRIES);
            out.push(n as u8);
            for (node, age) in &r.silence[..n] {
                out.extend_from_slice(&node.0.to_be_bytes());
                out.extend_from_slice(&age.to_be_bytes());
            }
        }
        Message::PkgCommand(c) => {
            let (op, pkg, node) = match c.op {
                OperatorOp::Move(p, n) => (1u8, p.0, n.0),
                OperatorOp::Start(p) => (2, p.0, 0),
                OperatorOp::Stop(p) => (3, p.0, 0),
                OperatorOp::Enable(p, n) => (4, p.0, n.map_or(0, |n| n.0)),
                OperatorOp::Disable(p, n) => (5, p.0, n.map_or(0, |n| n.0)),
                OperatorOp::Freeze => (6, 0, 0),
                OperatorOp::Unfreeze => (7, 0, 0),
            };
            out.push(op);
            out.extend_from_slice(&pkg.to_be_bytes());
            out.extend_from_slice(&node.to_be_bytes());
        }
    }
}

fn put_pairs(pairs: impl Iterator<Item = (PackageId, NodeId)>, out: &mut Vec<u8>) {
    let pairs: Vec<_> = pairs.take(MAX_OPERATOR_PAIRS).collect();
    out.push(pairs.len() as u8);
    for (p, n) in pairs {
        out.extend_from_slice(&p.0.to_be_bytes());
        out.extend_from_slice(&n.0.to_be_bytes());
    }
}

/// A placement reason: a kind byte, then what that kind carries.
fn put_reason(r: &Reason, out: &mut Vec<u8>) {
    match *r {
        Reason::NotQuorate => out.push(0),
        Reason::Fatal => out.push(1),
        Reason::Stopped => out.push(2),
        Reason::Frozen => out.push(3),
        Reason::NoEligibleNode => out.push(4),
        Reason::AllUnhealthy => out.push(5),
        Reason::KeepBest { failures } => {
            out.push(6);
            out.extend_from_slice(&failures.to_be_bytes());
        }
        Reason::Stay => out.push(7),
        Reason::Initial => out.push(8),
        Reason::Moved { from } => {
            out.push(9);
            out.extend_from_slice(&from.map_or(0, |n| n.0).to_be_bytes());
        }
        Reason::Failover { from, cause } => {
            out.push(10);
            out.extend_from_slice(&from.0.to_be_bytes());
            out.push(match cause {
                LossCause::Left => 0,
                LossCause::Banned => 1,
                LossCause::Disabled => 2,
                LossCause::Unhealthy => 3,
                LossCause::NotConfigured => 4,
            });
        }
        Reason::Failback { from } => {
            out.push(11);
            out.extend_from_slice(&from.0.to_be_bytes());
        }
    }
}

/// Encodes and seals one message with `key`.
pub fn encode(header: &Header, msg: &Message, key: SipKey) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(&MAGIC);
    out.push(VERSION);
    out.push(KIND_MEMBERSHIP);
    out.extend_from_slice(&header.cluster_id.to_be_bytes());
    out.extend_from_slice(&header.sender.0.to_be_bytes());
    out.extend_from_slice(&header.incarnation.to_be_bytes());
    out.extend_from_slice(&header.seq.to_be_bytes());
    out.push(msg.msg_type() as u8);
    out.extend_from_slice(&[0, 0]);
    put_body(msg, &mut out);
    let body_len = (out.len() - HEADER_LEN) as u16;
    out[25..27].copy_from_slice(&body_len.to_be_bytes());
    let m = mac(key, &out);
    out.extend_from_slice(&m);
    debug_assert!(out.len() <= MAX_LEN, "{} bytes", out.len());
    out
}

/// Seals a node's outgoing messages: owns its cluster id, node id,
/// incarnation and sequence counter.
#[derive(Clone, Debug)]
pub struct Sealer {
    cluster_id: u32,
    node: NodeId,
    incarnation: u32,
    seq: u64,
}

impl Sealer {
    /// A sealer for `node` in its `incarnation` (the persisted start counter).
    pub fn new(cluster_id: u32, node: NodeId, incarnation: u32) -> Self {
        Self {
            cluster_id,
            node,
            incarnation,
            seq: 0,
        }
    }

    /// Encodes `msg` with the next sequence number, sealed with `key`.
    pub fn seal(&mut self, msg: &Message, key: SipKey) -> Vec<u8> {
        self.seq += 1;
        let h = Header {
            cluster_id: self.cluster_id,
            sender: self.node,
            incarnation: self.incarnation,
            seq: self.seq,
        };
        encode(&h, msg, key)
    }

    /// The last sequence number used.
    pub fn seq(&self) -> u64 {
        self.seq
    }
}

struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let end = self.pos.checked_add(N)?;
        let s = self.b.get(self.pos..end)?;
        self.pos = end;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Some(a)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take::<1>().map(|a| a[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take().map(u16::from_be_bytes)
    }
    fn u32(&mut self) -> Option<u32> {
        self.take().map(u32::from_be_bytes)
    }
    fn u64(&mut self) -> Option<u64> {
        self.take().map(u64::from_be_bytes)
    }
    fn epoch(&mut self) -> Option<Epoch> {
        self.u64().map(Epoch)
    }
    /// A node set; bit 0 set is malformed.
    fn set(&mut self) -> Option<NodeSet> {
        let bits = self.u64()?;
        (bits & 1 == 0).then(|| NodeSet::from_bits(bits))
    }
    fn bool(&mut self) -> Option<bool> {
        match self.u8()? {
            0 => Some(false),
            1 => Some(true),
            _ => None,
        }
    }
    fn done(&self) -> bool {
        self.pos == self.b.len()
    }
    /// A valid node id (1..=63).
    fn node(&mut self) -> Option<NodeId> {
        let n = NodeId(self.u16()?);
        n.is_valid().then_some(n)
    }
    /// A node id or 0 for none.
    fn opt_node(&mut self) -> Option<Option<NodeId>> {
        match self.u16()? {
            0 => Some(None),
            n => {
                let n = NodeId(n);
                n.is_valid().then_some(Some(n))
            }
        }
    }
    fn pkg(&mut self) -> Option<PackageId> {
        let p = self.u16()?;
        (usize::from(p) < MAX_PACKAGES).then_some(PackageId(p))
    }
    fn pairs(&mut self) -> Option<Vec<(PackageId, NodeId)>> {
        let n = usize::from(self.u8()?);
        if n > MAX_OPERATOR_PAIRS {
            return None;
        }
        (0..n).map(|_| Some((self.pkg()?, self.node()?))).collect()
    }
    fn reason(&mut self) -> Option<Reason> {
        Some(match self.u8()? {
            0 => Reason::NotQuorate,
            1 => Reason::Fatal,
            2 => Reason::Stopped,
            3 => Reason::Frozen,
            4 => Reason::NoEligibleNode,
            5 => Reason::AllUnhealthy,
            6 => Reason::KeepBest {
                failures: self.u32()?,
            },
            7 => Reason::Stay,
            8 => Reason::Initial,
            9 => Reason::Moved {
                from: self.opt_node()?,
            },
            10 => Reason::Failover {
                from: self.node()?,
                cause: match self.u8()? {
                    0 => LossCause::Left,
                    1 => LossCause::Banned,
                    2 => LossCause::Disabled,
                    3 => LossCause::Unhealthy,
                    4 => LossCause::NotConfigured,
                    _ => return None,
                },
            },
            11 => Reason::Failback { from: self.node()? },
            _ => return None,
        })
    }
}

fn parse_body(t: MsgType, body: &[u8]) -> Option<Message> {
    let mut r = Reader { b: body, pos: 0 };
    let msg = match t {
        MsgType::Join => {
            let max_epoch = r.epoch()?;
            let promised = r.epoch()?;
            let view_epoch = r.epoch()?;
            let view_members = r.set()?;
            let flags = r.u8()?;
            if flags & !(join_flags::MAY_FORM | join_flags::WFA_OK | join_flags::VIEW_QUORATE) != 0
            {
                return None;
            }
            let expected = r.set()?;
            let proposal = r.set()?;
            let n = r.u8()? as usize;
            if n > MAX_REACH_ENTRIES {
                return None;
            }
            let mut reach = Vec::with_capacity(n);
            for _ in 0..n {
                let node = NodeId(u16::from(r.u8()?));
                if !node.is_valid() {
                    return None;
                }
                reach.push(ReachEntry {
                    node,
                    incarnation: r.u32()?,
                    version: r.u32()?,
                    reach: r.set()?,
                });
            }
            Message::Join(Join {
                max_epoch,
                promised,
                view_epoch,
                view_members,
                flags,
                expected,
                proposal,
                reach,
            })
        }
        MsgType::Propose => Message::Propose(Propose {
            epoch: r.epoch()?,
            members: r.set()?,
        }),
        MsgType::Ack => Message::Ack(Ack {
            epoch: r.epoch()?,
            members: r.set()?,
        }),
        MsgType::Commit => {
            let epoch = r.epoch()?;
            let members = r.set()?;
            let present_votes = r.u32()?;
            let needed_votes = r.u32()?;
            let expected_votes = r.u32()?;
            let quorate = r.bool()?;
            let tie_breaker = TieBreaker::from_u8(r.u8()?)?;
            Message::Commit(Commit {
                epoch,
                members,
                quorum: QuorumState {
                    present_votes,
                    needed_votes,
                    expected_votes,
                    quorate,
                    tie_breaker,
                },
            })
        }
        MsgType::Leave => Message::Leave(Leave {
            epoch: r.epoch()?,
            version: r.u32()?,
        }),
        MsgType::QsRequest => Message::QsRequest(QsRequest {
            epoch: r.epoch()?,
            members: r.set()?,
            votes: r.u32()?,
            expected_votes: r.u32()?,
        }),
        MsgType::QsAnswer => Message::QsAnswer(QsAnswer {
            node: NodeId(r.u16()?),
            request_seq: r.u64()?,
            epoch: r.epoch()?,
            members: r.set()?,
            granted: r.bool()?,
            lease_ms: r.u32()?,
        }),
        MsgType::PkgPlacement => {
            let epoch = r.epoch()?;
            let seq = r.u32()?;
            let n = usize::from(r.u8()?);
            if n > MAX_PACKAGES {
                return None;
            }
            let mut decisions = Vec::with_capacity(n);
            for _ in 0..n {
                let pkg = r.pkg()?;
                let owner = r.opt_node()?;
                let reason = r.reason()?;
                if decisions.last().is_some_and(|(p, _)| *p >= pkg) {
                    return None; // not in id order, or repeated
                }
                decisions.push((pkg, Decision { owner, reason }));
            }
            let frozen = r.bool()?;
            let moves = r.pairs()?.into_iter().collect();
            let n = usize::from(r.u8()?);
            if n > MAX_OPERATOR_PAIRS {
                return None;
            }
            let stopped = (0..n).map(|_| r.pkg()).collect::<Option<_>>()?;
            let disabled = r.pairs()?.into_iter().collect();
            Message::PkgPlacement(PkgPlacement {
                epoch,
                seq,
                decisions,
                operator: Operator {
                    frozen,
                    moves,
                    stopped,
                    disabled,
                },
            })
        }
        MsgType::PkgReport => {
            let epoch = r.epoch()?;
            let placement_seq = r.u32()?;
            let n = usize::from(r.u8()?);
            if n > MAX_PACKAGES {
                return None;
            }
            let mut entries: Vec<PkgEntry> = Vec::with_capacity(n);
            for _ in 0..n {
                let e = PkgEntry {
                    pkg: r.pkg()?,
                    state: r.u8()?,
                    flags: r.u8()?,
                    restarts: r.u8()?,
                };
                if e.state > pkg_state::MAX
                    || e.flags & !pkg_flags::ALL != 0
                    || entries.last().is_some_and(|l| l.pkg >= e.pkg)
                {
                    return None;
                }
                entries.push(e);
            }
            let n = usize::from(r.u8()?);
            if n > MAX_REACH_ENTRIES {
                return None;
            }
            let silence = (0..n)
                .map(|_| Some((r.node()?, r.u32()?)))
                .collect::<Option<_>>()?;
            Message::PkgReport(PkgReport {
                epoch,
                placement_seq,
                entries,
                silence,
            })
        }
        MsgType::PkgCommand => {
            let op = r.u8()?;
            let pkg = r.pkg()?;
            let node = r.opt_node()?;
            let op = match (op, node) {
                (1, Some(n)) => OperatorOp::Move(pkg, n),
                (2, None) => OperatorOp::Start(pkg),
                (3, None) => OperatorOp::Stop(pkg),
                (4, n) => OperatorOp::Enable(pkg, n),
                (5, n) => OperatorOp::Disable(pkg, n),
                (6, None) if pkg.0 == 0 => OperatorOp::Freeze,
                (7, None) if pkg.0 == 0 => OperatorOp::Unfreeze,
                _ => return None,
            };
            Message::PkgCommand(PkgCommand { op })
        }
    };
    r.done().then_some(msg)
}

/// Decodes and authenticates one datagram. Pure; never panics.
///
/// Checks, in order: length, prefix, body length, cluster id, MAC (current
/// key, then next), sender id valid for the type (1..=63 for node
/// messages, 0 for quorum server answers), body. Whether the sender is a
/// *configured* node and whether the message is a replay are checked by
/// [`ReplayGuard::check`].
pub fn decode(bytes: &[u8], keys: &Keys, cluster_id: u32) -> Result<Authenticated, DropReason> {
    if bytes.len() < HEADER_LEN + MAC_LEN || bytes.len() > MAX_LEN {
        return Err(DropReason::Length);
    }
    if bytes[0..4] != MAGIC || bytes[4] != VERSION || bytes[5] != KIND_MEMBERSHIP {
        return Err(DropReason::Prefix);
    }
    let body_len = usize::from(u16::from_be_bytes([bytes[25], bytes[26]]));
    if HEADER_LEN + body_len + MAC_LEN != bytes.len() {
        return Err(DropReason::Length);
    }
    let mut r = Reader { b: bytes, pos: 6 };
    let (Some(cid), Some(sender), Some(incarnation), Some(seq), Some(tbyte)) =
        (r.u32(), r.u16(), r.u32(), r.u64(), r.u8())
    else {
        return Err(DropReason::Length);
    };
    if cid != cluster_id {
        return Err(DropReason::OtherCluster);
    }
    let split = bytes.len() - MAC_LEN;
    let mut got = [0u8; 8];
    got.copy_from_slice(&bytes[split..]);
    let key_slot = if ct_eq(&mac(keys.current, &bytes[..split]), &got) {
        KeySlot::Current
    } else if keys
        .next
        .is_some_and(|k| ct_eq(&mac(k, &bytes[..split]), &got))
    {
        KeySlot::Next
    } else {
        return Err(DropReason::BadMac);
    };
    let t = MsgType::from_u8(tbyte).ok_or(DropReason::MalformedBody)?;
    let sender = NodeId(sender);
    let sender_ok = match t {
        MsgType::QsAnswer => sender == QSERVER_SENDER,
        _ => sender.is_valid(),
    };
    if !sender_ok {
        return Err(DropReason::UnknownNode);
    }
    let msg = parse_body(t, &bytes[HEADER_LEN..split]).ok_or(DropReason::MalformedBody)?;
    Ok(Authenticated {
        header: Header {
            cluster_id: cid,
            sender,
            incarnation,
            seq,
        },
        key_slot,
        msg,
    })
}

/// Size of the anti-replay window: a message up to this many sequence
/// numbers older than the newest one seen may still arrive once (UDP on
/// several links reorders).
pub const REPLAY_WINDOW: u64 = 64;

/// Per-sender replay protection with a sliding window (the anti-replay
/// window of IPsec ESP, RFC 4303 §3.4.3): per sender, the newest
/// (incarnation, sequence) and a bitmap of the [`REPLAY_WINDOW`] sequence
/// numbers below it. A message of an older incarnation, older than the
/// window, or already seen is a replay.
#[derive(Clone, Debug, Default)]
pub struct ReplayGuard {
    known: NodeSet,
    allow_qserver: bool,
    last: std::collections::BTreeMap<NodeId, (u32, u64, u64)>,
}

impl ReplayGuard {
    /// A guard accepting senders in `known` (the configured nodes).
    pub fn new(known: NodeSet) -> Self {
        Self {
            known,
            allow_qserver: false,
            last: Default::default(),
        }
    }

    /// Also accept the quorum server's sender id (0), for a client's guard.
    pub fn allowing_qserver(mut self) -> Self {
        self.allow_qserver = true;
        self
    }

    /// Replaces the configured node set (live reload); forgets removed nodes.
    pub fn set_known(&mut self, known: NodeSet) {
        self.known = known;
        self.last.retain(|n, _| known.contains(*n));
    }

    /// Accepts `h` if its sender is known and its (incarnation, seq) was
    /// not seen before and is not older than the window; records it.
    pub fn check(&mut self, h: &Header) -> Result<(), DropReason> {
        let sender_known =
            self.known.contains(h.sender) || (self.allow_qserver && h.sender == QSERVER_SENDER);
        if !sender_known {
            return Err(DropReason::UnknownNode);
        }
        let entry = match self.last.get(&h.sender) {
            None => (h.incarnation, h.seq, 1),
            Some(&(inc, top, bits)) => {
                if h.incarnation < inc {
                    return Err(DropReason::Replay);
                }
                if h.incarnation > inc {
                    (h.incarnation, h.seq, 1)
                } else if h.seq > top {
                    let shift = h.seq - top;
                    let bits = if shift >= REPLAY_WINDOW {
                        0
                    } else {
                        bits << shift
                    };
                    (inc, h.seq, bits | 1)
                } else {
                    let back = top - h.seq;
                    if back >= REPLAY_WINDOW || bits & (1u64 << back) != 0 {
                        return Err(DropReason::Replay);
                    }
                    (inc, top, bits | (1u64 << back))
                }
            }
        };
        self.last.insert(h.sender, entry);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K1: SipKey = SipKey { k0: 1, k1: 2 };
    const K2: SipKey = SipKey { k0: 3, k1: 4 };

    fn keys() -> Keys {
        Keys {
            current: K1,
            next: None,
        }
    }

    fn samples() -> Vec<Message> {
        let set: NodeSet = [NodeId(1), NodeId(2), NodeId(63)].into_iter().collect();
        vec![
            Message::Join(Join {
                max_epoch: Epoch(7),
                promised: Epoch(6),
                view_epoch: Epoch(6),
                view_members: set,
                flags: join_flags::MAY_FORM,
                expected: set,
                proposal: set,
                reach: vec![
                    ReachEntry {
                        node: NodeId(1),
                        incarnation: 3,
                        version: 9,
                        reach: set,
                    },
                    ReachEntry {
                        node: NodeId(63),
                        incarnation: 1,
                        version: 0,
                        reach: NodeSet::single(NodeId(63)),
                    },
                ],
            }),
            Message::Propose(Propose {
                epoch: Epoch(8),
                members: set,
            }),
            Message::Ack(Ack {
                epoch: Epoch(8),
                members: set,
            }),
            Message::Commit(Commit {
                epoch: Epoch(8),
                members: set,
                quorum: QuorumState {
                    present_votes: 3,
                    needed_votes: 3,
                    expected_votes: 5,
                    quorate: true,
                    tie_breaker: TieBreaker::NotNeeded,
                },
            }),
            Message::Leave(Leave {
                epoch: Epoch(8),
                version: 3,
            }),
            Message::QsRequest(QsRequest {
                epoch: Epoch(9),
                members: set,
                votes: 2,
                expected_votes: 4,
            }),
            Message::PkgPlacement(PkgPlacement {
                epoch: Epoch(9),
                seq: 3,
                decisions: vec![
                    (
                        PackageId(0),
                        Decision {
                            owner: Some(NodeId(2)),
                            reason: Reason::Failover {
                                from: NodeId(1),
                                cause: LossCause::Left,
                            },
                        },
                    ),
                    (
                        PackageId(1),
                        Decision {
                            owner: None,
                            reason: Reason::KeepBest { failures: 4 },
                        },
                    ),
                    (
                        PackageId(63),
                        Decision {
                            owner: Some(NodeId(63)),
                            reason: Reason::Moved { from: None },
                        },
                    ),
                ],
                operator: Operator {
                    frozen: true,
                    moves: [(PackageId(1), NodeId(3))].into_iter().collect(),
                    stopped: [PackageId(2)].into_iter().collect(),
                    disabled: [(PackageId(0), NodeId(1))].into_iter().collect(),
                },
            }),
            Message::PkgReport(PkgReport {
                epoch: Epoch(9),
                placement_seq: 3,
                entries: vec![
                    PkgEntry {
                        pkg: PackageId(0),
                        state: pkg_state::RUNNING,
                        flags: pkg_flags::UNHEALTHY,
                        restarts: 2,
                    },
                    PkgEntry {
                        pkg: PackageId(5),
                        state: pkg_state::STOP_FAILED,
                        flags: pkg_flags::BANNED | pkg_flags::FATAL,
                        restarts: 0,
                    },
                ],
                silence: vec![
                    (NodeId(1), 0),
                    (NodeId(3), SILENCE_NEVER),
                    (NodeId(4), 1500),
                ],
            }),
            Message::PkgCommand(PkgCommand {
                op: OperatorOp::Move(PackageId(1), NodeId(2)),
            }),
            Message::PkgCommand(PkgCommand {
                op: OperatorOp::Disable(PackageId(1), None),
            }),
            Message::PkgCommand(PkgCommand {
                op: OperatorOp::Freeze,
            }),
        ]
    }

    #[test]
    fn a_placement_of_every_package_fits() {
        let decisions = (0..MAX_PACKAGES as u16)
            .map(|p| {
                (
                    PackageId(p),
                    Decision {
                        owner: Some(NodeId(63)),
                        reason: Reason::Failover {
                            from: NodeId(62),
                            cause: LossCause::NotConfigured,
                        },
                    },
                )
            })
            .collect();
        let pairs = |n: u16| (0..MAX_OPERATOR_PAIRS as u16).map(move |p| (PackageId(p), NodeId(n)));
        let m = Message::PkgPlacement(PkgPlacement {
            epoch: Epoch(u64::MAX),
            seq: u32::MAX,
            decisions,
            operator: Operator {
                frozen: true,
                moves: pairs(1).collect(),
                stopped: (0..MAX_OPERATOR_PAIRS as u16).map(PackageId).collect(),
                disabled: pairs(2).collect(),
            },
        });
        let b = encode(&header(2), &m, K1);
        assert!(b.len() <= MAX_LEN, "{} bytes", b.len());
        let keys = Keys {
            current: K1,
            next: None,
        };
        assert_eq!(decode(&b, &keys, 42).unwrap().msg, m);
    }

    fn header(sender: u16) -> Header {
        Header {
            cluster_id: 42,
            sender: NodeId(sender),
            incarnation: 1,
            seq: 5,
        }
    }

    #[test]
    fn every_message_round_trips() {
        for m in samples() {
            let b = encode(&header(2), &m, K1);
            assert!(b.len() <= MAX_LEN);
            let a = decode(&b, &keys(), 42).unwrap();
            assert_eq!(a.msg, m);
            assert_eq!(a.header, header(2));
            assert_eq!(a.key_slot, KeySlot::Current);
        }
        let ans = Message::QsAnswer(QsAnswer {
            node: NodeId(2),
            request_seq: 4,
            epoch: Epoch(9),
            members: NodeSet::single(NodeId(2)),
            granted: true,
            lease_ms: 3000,
        });
        let b = encode(&header(0), &ans, K1);
        assert_eq!(decode(&b, &keys(), 42).unwrap().msg, ans);
    }

    #[test]
    fn a_full_join_fits_max_len() {
        let all: NodeSet = (1..=63).map(NodeId).collect();
        let j = Message::Join(Join {
            max_epoch: Epoch(u64::MAX),
            promised: Epoch(u64::MAX),
            view_epoch: Epoch(1),
            view_members: all,
            flags: 3,
            expected: all,
            proposal: all,
            reach: (1..=63)
                .map(|i| ReachEntry {
                    node: NodeId(i),
                    incarnation: 1,
                    version: 1,
                    reach: all,
                })
                .collect(),
        });
        let b = encode(&header(1), &j, K1);
        assert!(b.len() <= MAX_LEN, "{}", b.len());
        assert_eq!(decode(&b, &keys(), 42).unwrap().msg, j);
    }

    #[test]
    fn every_truncation_and_extension_is_dropped() {
        for m in samples() {
            let b = encode(&header(2), &m, K1);
            for len in 0..b.len() {
                assert!(decode(&b[..len], &keys(), 42).is_err(), "len {len}");
            }
            let mut longer = b.clone();
            longer.push(0);
            assert_eq!(decode(&longer, &keys(), 42), Err(DropReason::Length));
        }
        assert_eq!(decode(&[], &keys(), 42), Err(DropReason::Length));
        assert_eq!(
            decode(&[0u8; MAX_LEN + 1], &keys(), 42),
            Err(DropReason::Length)
        );
    }

    #[test]
    fn every_flipped_bit_is_dropped() {
        for m in samples() {
            let b = encode(&header(2), &m, K1);
            for i in 0..b.len() * 8 {
                let mut c = b.clone();
                c[i / 8] ^= 1 << (i % 8);
                let r = decode(&c, &keys(), 42);
                assert!(r.is_err(), "bit {i} of {:?}", m.msg_type());
            }
        }
    }

    #[test]
    fn reasons_name_the_fault() {
        let m = &samples()[1];
        let b = encode(&header(2), m, K1);
        assert_eq!(decode(&b, &keys(), 43), Err(DropReason::OtherCluster));
        let wrong = Keys {
            current: K2,
            next: None,
        };
        assert_eq!(decode(&b, &wrong, 42), Err(DropReason::BadMac));
        let mut c = b.clone();
        c[0] = b'X';
        assert_eq!(decode(&c, &keys(), 42), Err(DropReason::Prefix));
        let b0 = encode(&header(0), m, K1);
        assert_eq!(decode(&b0, &keys(), 42), Err(DropReason::UnknownNode));
        let b64 = encode(&header(64), m, K1);
        assert_eq!(decode(&b64, &keys(), 42), Err(DropReason::UnknownNode));
        // A well-MACed message with a body that does not parse.
        let mut raw = b[..b.len() - MAC_LEN].to_vec();
        raw[24] = 99;
        let mm = mac(K1, &raw);
        raw.extend_from_slice(&mm);
        assert_eq!(decode(&raw, &keys(), 42), Err(DropReason::MalformedBody));
        let labels: std::collections::BTreeSet<_> =
            DropReason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(labels.len(), DropReason::ALL.len());
    }

    #[test]
    fn next_key_slot_verifies_during_rotation() {
        let m = &samples()[2];
        let b = encode(&header(2), m, K2);
        let rot = Keys {
            current: K1,
            next: Some(K2),
        };
        assert_eq!(decode(&b, &rot, 42).unwrap().key_slot, KeySlot::Next);
        assert_eq!(decode(&b, &keys(), 42), Err(DropReason::BadMac));
    }

    #[test]
    fn replay_guard_rejects_old_incarnations_and_sequences_and_unknown_nodes() {
        let known: NodeSet = [NodeId(1), NodeId(2)].into_iter().collect();
        let mut g = ReplayGuard::new(known);
        let h = |sender, incarnation, seq| Header {
            cluster_id: 42,
            sender: NodeId(sender),
            incarnation,
            seq,
        };
        assert_eq!(g.check(&h(3, 1, 1)), Err(DropReason::UnknownNode));
        assert_eq!(g.check(&h(0, 1, 1)), Err(DropReason::UnknownNode));
        assert_eq!(g.check(&h(2, 5, 10)), Ok(()));
        assert_eq!(g.check(&h(2, 5, 10)), Err(DropReason::Replay));
        // Reordered within the window: accepted once.
        assert_eq!(g.check(&h(2, 5, 9)), Ok(()));
        assert_eq!(g.check(&h(2, 5, 9)), Err(DropReason::Replay));
        assert_eq!(g.check(&h(2, 4, 100)), Err(DropReason::Replay));
        assert_eq!(g.check(&h(2, 5, 11)), Ok(()));
        assert_eq!(g.check(&h(2, 5, 200)), Ok(()));
        assert_eq!(
            g.check(&h(2, 5, 200 - REPLAY_WINDOW)),
            Err(DropReason::Replay)
        );
        assert_eq!(g.check(&h(2, 5, 201 - REPLAY_WINDOW)), Ok(()));
        assert_eq!(g.check(&h(2, 5, 11)), Err(DropReason::Replay));
        assert_eq!(g.check(&h(2, 6, 1)), Ok(()));
        assert_eq!(g.check(&h(1, 1, 1)), Ok(()));
        let mut q = ReplayGuard::new(known).allowing_qserver();
        assert_eq!(q.check(&h(0, 1, 1)), Ok(()));
    }

    #[test]
    fn sealer_numbers_messages() {
        let mut s = Sealer::new(42, NodeId(3), 7);
        let m = &samples()[4];
        let a = decode(&s.seal(m, K1), &keys(), 42).unwrap();
        let b = decode(&s.seal(m, K1), &keys(), 42).unwrap();
        assert_eq!((a.header.incarnation, a.header.seq), (7, 1));
        assert_eq!(b.header.seq, 2);
        let mut g = ReplayGuard::new(NodeSet::single(NodeId(3)));
        assert!(g.check(&a.header).is_ok());
        assert!(g.check(&b.header).is_ok());
        assert_eq!(g.check(&a.header), Err(DropReason::Replay));
    }
}
