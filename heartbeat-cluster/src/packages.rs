//! The packages state machine of one node: the coordinator's placement,
//! each package's life on this node (start, monitor, stop), and the rule
//! that lets a node start a package only when no other node can still be
//! serving it.
//!
//! Pure: events in ([`Input`]), decisions out ([`Output`]); the agent's
//! packages task runs the actions, moves the addresses, sends the messages
//! and programs the kernel leases. A randomized simulation of several nodes
//! (`tests/packages_sim.rs`) checks the safety claim below.
//!
//! # Protocol
//! Primary–backup placement on top of the agreed membership (the view, its
//! epoch and its coordinator come from `crate::membership`, a Totem-style
//! protocol): like Pacemaker's Designated Controller, the coordinator of a
//! quorate view is the only node that decides where packages run; unlike
//! it, there is no replicated CIB: the inputs are the nodes' reports
//! ([`wire::PkgReport`]), which every node re-sends periodically, so a new
//! coordinator rebuilds them within one report period.
//!
//! - The coordinator computes [`placement::place`] for its epoch from the
//!   reports (health, bans, fatal errors, who runs what) and the operator's
//!   overrides, and sends it ([`wire::PkgPlacement`], `(epoch, seq)`) to
//!   every member whenever it changes and periodically. A node acts only on
//!   a placement of the epoch of its installed view (never an older one).
//! - Each node starts what the placement gives it and stops the rest; it
//!   reports after every change. A stop releases the package's lease
//!   *before* the report that says "stopped" is sent.
//! - **Never two owners.** A node N starts package P only when, for every
//!   other node O that may run P, one of these holds:
//!   1. O's newest report (from a member: of N's epoch, reflecting the
//!      placement N acts on; from another node: received after N
//!      installed its current view) says O
//!      does not hold P's lease (stopped; or its stop failed, it released
//!      the lease first and escalated);
//!   2. O's lease has run out by N's reckoning: O is not a member of N's
//!      view, and `now ≥ t + W` (the rule of [`crate::lease`]), where `t`
//!      is the last time *any* member of N's view (N included) may have
//!      granted O a lease anchor, or N's own start. Each member's report
//!      (of N's epoch) says, per node, how long ago that was; N takes the
//!      report's arrival minus that.
//!   3. O's `fence` command, run by N, succeeded in N's current view.
//!
//!   The kernel of O drops P's traffic once O's lease runs out. The fast
//!   path renews it only while O is a quorate owner whose monitor passes,
//!   anchored at the send time of the newest heartbeat *every other member
//!   of O's view* answered with a **grant**: a reply's `GRANT` bit, set by
//!   the answering node's XDP program only while that node's view counts
//!   O a member (the `GRANTS` map, which the packages task updates, and the
//!   fast path confirms, before the state machine hears of a new view, so
//!   before its next report). Why that is enough: N's view and O's view
//!   are both quorate, so they share a member M; M stopped granting O when
//!   O left M's view, at or before the time M's report gives; O's anchor
//!   is at most that time, which is at most `t`; O's lease ends at O-time
//!   `anchor + L`, i.e. by N's clock before `t + W` (drift bound as in
//!   [`crate::lease`]). Rule 1 needs O's report, rule 2 only that O is out
//!   of N's view: a node that keeps an old view (its detector deferred its
//!   verdict) and still hears the others gets no grant from them, so its
//!   lease runs out (found by the soak test; the simulation models it).

//! # Departures
//! - Gray and Cheriton's leases are granted by a server; here the grant is
//!   a successor's heartbeat reply with its `GRANT` bit, and the promise
//!   not to let another owner start within the lease is each member's
//!   report of when it last granted O (in the spirit of Raft's leader
//!   leases, where voters promise not to elect another leader for a while
//!   after acknowledging one).
//! - Rule 2 for a node never heard by anyone since N started uses N's
//!   start time.
//! - O keeps renewing while its view is installed, also during a
//!   reformation round (stopping would take the service down at every
//!   join); the anchor rule above still bounds its lease.
//! - `two_node` without a tie-breaker (quorum server, serial link): each
//!   half of a split is quorate and no member is shared, so nothing above
//!   keeps both halves from running a package (as in Pacemaker, where
//!   `two_node` relies on fencing). Configure a tie-breaker.
//! - A node that kept an old view (its detector deferred its verdict while
//!   its link flapped) and is re-admitted renews nothing until it has the
//!   new epoch's placement (renewals need a placement of the installed
//!   epoch), and members grant a newly admitted node only after they have
//!   applied that placement (and released what it takes from them). Found
//!   by the soak with `HB_SOAK_OWNER_FLAPS=1`.
//! - **A lapsed lease is a new start.** A holder whose kernel lease ran
//!   out while it still held the package (its view went on while the
//!   others stopped granting it: a deferred verdict, a stall) may have
//!   been replaced meanwhile: the others waited for exactly that lapse.
//!   Renewing would serve again beside the new owner if a later view
//!   re-admits it *without* that owner (two faults in a row: found by the
//!   simulation, `a_lapsed_owner_readmitted_without_its_successor_waits_for_it`).
//!   So the fast path never extends a lease that was valid and ran out in
//!   the same *generation* ([`Output::Lease::generation`]); it reports the
//!   lapse ([`Input::LeaseLapsed`]), and the holder renews again, in a new
//!   generation, only once the start rule above clears every other node,
//!   exactly as for a start (the service keeps running meanwhile; the
//!   kernel keeps its addresses dark).
//! - **Serial split** (issue #11, [`Input::Serial`]): in a two-node
//!   cluster with a serial line, every network link cut and the line up,
//!   both nodes keep one view (membership rides the line), so nothing
//!   above would move the packages. While the line's survivor rule says
//!   [`Verdict::Split`], the other node (the non-survivor) gives up every
//!   package at once (it stops them, releasing their leases first), and
//!   the coordinator places packages as if it were not a member, so the
//!   survivor is given them. The survivor starts them by the start rule
//!   unchanged: rule 1, the non-survivor's report that it stopped (package
//!   messages travel over the line while the split lasts). So there is
//!   never a moment with two owners: the survivor's start waits for the
//!   report the non-survivor sends only after its stop ended. The
//!   survivor's lease cannot be anchored at the non-survivor's grants (no
//!   heartbeat crosses the network), so while the split lasts it renews
//!   with no successors (anchored at its own clock): the non-survivor has
//!   promised, by its verdict, not to run anything while the line is up.
//!   When the line falls silent too, the verdict ends (the survivor's
//!   successors are the peer again, so its lease stops being extended)
//!   and the two-node rules apply as configured: without `two_node`
//!   neither side is quorate alone and both stop; with `two_node` each
//!   side is quorate alone and both may run the packages (see `two_node`
//!   above: the line gave the only tie-break, and it is gone).
//! - Placement inputs are soft state (reports), not a replicated log: two
//!   successive coordinators may decide differently for a package whose
//!   health changed in between; safety never depends on placement, only on
//!   the start rule above.

use std::collections::{BTreeMap, BTreeSet};

use crate::ids::{Epoch, NodeId, NodeSet};
use crate::lease::LeaseTiming;
use crate::placement::{self, Decision, Operator, PackageId, PackagePolicy, Reason, Situation};
use crate::survivor::Verdict;
use crate::wire::{
    self, OperatorOp, PkgCommand, PkgEntry, PkgPlacement, PkgReport, pkg_flags, pkg_state,
};

/// One package's parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PackageParams {
    /// Its placement policy (id, nodes, policies).
    pub policy: PackagePolicy,
    /// Monitor failures restarted in place before failing over.
    pub restart_limit: u32,
    /// Between monitors (0: no monitor).
    pub monitor_interval_ns: u64,
}

/// The state machine's parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Params {
    /// This node.
    pub local: NodeId,
    /// Every package, in id order.
    pub packages: Vec<PackageParams>,
    /// Lease length and clock allowances.
    pub timing: LeaseTiming,
    /// How often reports and placements are re-sent without a change.
    pub resend_ns: u64,
    /// Nodes with a `fence` command.
    pub fenceable: NodeSet,
}

/// The installed view, as the packages need it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ViewInfo {
    /// Its epoch.
    pub epoch: Epoch,
    /// Its members.
    pub members: NodeSet,
    /// Whether it holds quorum (and this node is a member).
    pub quorate: bool,
    /// Its coordinator.
    pub coordinator: Option<NodeId>,
}

/// An action on a package (the agent runs it: a script or an OCF agent,
/// with the package's addresses).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Action {
    /// Add the addresses, run `start` (must succeed when the service runs
    /// already), announce the addresses.
    Start,
    /// Run `stop` (must succeed when the service is stopped already),
    /// remove the addresses.
    Stop,
    /// Run `monitor`.
    Monitor,
}

impl Action {
    /// The action's name, as passed to OCF agents.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Start => "start",
            Self::Stop => "stop",
            Self::Monitor => "monitor",
        }
    }
}

impl core::fmt::Display for Action {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How an action ended, in Pacemaker's recovery terms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActionResult {
    /// As expected.
    Ok,
    /// Transient failure (restart in place or move); also a timeout.
    Soft,
    /// Specific to this node (OCF 2–5, cannot run): ban this node.
    Hard,
    /// Configuration error (OCF 6): no node may run it.
    Fatal,
}

/// A package's life on this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Local {
    /// Not known yet: being stopped at start, before the node joins.
    Unknown,
    /// Not running; lease released.
    Stopped,
    /// Start running; lease renewed.
    Starting,
    /// Running; lease renewed while its monitor passes.
    Running,
    /// Stop running; lease released.
    Stopping {
        /// Start again when the stop succeeds (restart in place).
        restart: bool,
    },
    /// The stop failed: it may still run (lease released, escalated).
    StopFailed,
}

impl Local {
    /// Nothing runs here and nothing will without a new start: stopped,
    /// not known (the start-up stop), or a failed stop (escalated).
    fn settled_off(self) -> bool {
        matches!(self, Self::Stopped | Self::Unknown | Self::StopFailed)
    }

    fn wire(self) -> u8 {
        match self {
            Self::Unknown => pkg_state::UNKNOWN,
            Self::Stopped => pkg_state::STOPPED,
            Self::Starting => pkg_state::STARTING,
            Self::Running => pkg_state::RUNNING,
            Self::Stopping { .. } => pkg_state::STOPPING,
            Self::StopFailed => pkg_state::STOP_FAILED,
        }
    }

    /// Lower-case name (status).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::Stopped => "stopped",
            Self::Starting => "starting",
            Self::Running => "running",
            Self::Stopping { .. } => "stopping",
            Self::StopFailed => "stop_failed",
        }
    }

    /// Whether its lease here may be valid.
    pub fn holds(self) -> bool {
        matches!(self, Self::Starting | Self::Running)
    }
}

/// What the node is waiting for before it may start a package.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Blocker {
    /// A node that may still hold the package; `until_ns` when its lease
    /// runs out by our reckoning (`None`: it is reachable: its report).
    Holder {
        /// The node.
        node: NodeId,
        /// When rule 2 lets us start (if it stays silent).
        until_ns: Option<u64>,
    },
}

/// What the task tells the state machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    /// The installed view changed (`None`: none, or this node is not a
    /// member, or it is reforming without one).
    View {
        /// The view.
        view: Option<ViewInfo>,
        /// Now.
        at_ns: u64,
    },
    /// What the transports know of a peer: whether any link to it is up,
    /// and the arrival of the last valid packet from it.
    Peer {
        /// The peer.
        node: NodeId,
        /// Any link up.
        reachable: bool,
        /// Last valid packet (0: never).
        last_rx_ns: u64,
    },
    /// An authenticated package message.
    Message {
        /// Its sender.
        from: NodeId,
        /// The message.
        msg: wire::Message,
        /// Arrival.
        at_ns: u64,
    },
    /// An action finished.
    Done {
        /// The package.
        pkg: PackageId,
        /// Which action.
        action: Action,
        /// How it ended.
        result: ActionResult,
        /// Now.
        at_ns: u64,
    },
    /// An operator command given on this node.
    Operator {
        /// The command.
        op: OperatorOp,
        /// Now.
        at_ns: u64,
    },
    /// The fast path found the package's lease run out while it was
    /// listed for renewal in `generation`, and will not extend it again in
    /// that generation.
    LeaseLapsed {
        /// The package.
        pkg: PackageId,
        /// The generation that lapsed.
        generation: u32,
        /// Now.
        at_ns: u64,
    },
    /// A fence command this node ran for `node` ended.
    Fenced {
        /// The node fenced.
        node: NodeId,
        /// Whether the command succeeded.
        ok: bool,
        /// When it ended.
        at_ns: u64,
    },
    /// The serial line's survivor verdict changed (two-node clusters with
    /// a serial line; see the module doc, "Serial split").
    Serial {
        /// The verdict now.
        verdict: Verdict,
    },
    /// The node is about to leave the cluster (the agent stops): hand
    /// every package over first, as Serviceguard's `cmhaltnode` halts the
    /// node's packages before the node leaves. Each package is banned
    /// here for the rest of this run, so it stops here, its report says
    /// so, and the coordinator places it elsewhere in the same epoch,
    /// where the start rule clears this node on that report (rule 1)
    /// without waiting out its lease. See [`Packages::drained`].
    Drain {
        /// Now.
        at_ns: u64,
    },
    /// Time passes.
    Tick {
        /// Now.
        now_ns: u64,
    },
}

/// Where a message goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dest {
    /// Every configured peer.
    All,
    /// One node.
    Node(NodeId),
}

/// A journal-worthy event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The coordinator placed a package (a changed decision).
    Placed {
        /// The package.
        pkg: PackageId,
        /// The epoch.
        epoch: Epoch,
        /// The decision.
        decision: Decision,
    },
    /// This node gives the package up here.
    Banned {
        /// The package.
        pkg: PackageId,
        /// Why (`restart_limit`, `start_failed`, `hard_failure`).
        why: &'static str,
    },
    /// No node may run it (configuration error).
    Fatal {
        /// The package.
        pkg: PackageId,
    },
    /// A fence command failed (it is tried again at the next view).
    FenceFailed {
        /// The node.
        node: NodeId,
    },
    /// The package's lease ran out while this node held it: its addresses
    /// are dark until the start rule lets it renew again.
    LeaseLapsed {
        /// The package.
        pkg: PackageId,
    },
    /// The lease of a package whose lease had lapsed is renewed again
    /// (the start rule cleared every other node).
    LeaseRegained {
        /// The package.
        pkg: PackageId,
    },
    /// Start allowed after waiting for another node.
    Cleared {
        /// The package.
        pkg: PackageId,
        /// The node waited for.
        node: NodeId,
        /// `report` or `lease_expired`.
        how: &'static str,
    },
}

/// What the task must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// Run an action.
    Run {
        /// The package.
        pkg: PackageId,
        /// The action.
        action: Action,
        /// The epoch it runs for.
        epoch: Epoch,
        /// Why (HEARTBEAT_REASON).
        reason: Reason,
    },
    /// The kernel lease of a package: renew it (anchored at heartbeats the
    /// `successors` answered) or let it run out.
    Lease {
        /// The package.
        pkg: PackageId,
        /// Renew while true.
        renew: bool,
        /// The other members that may run it.
        successors: NodeSet,
        /// The acquisition this renewal belongs to: it changes at every
        /// start, and after a lapse once the start rule allows renewing
        /// again. The fast path never extends a lease that was valid and
        /// ran out within one generation.
        generation: u32,
        /// The epoch of the placement it acts on (0: none): a generation
        /// not valid yet may become valid only in the epoch it started in.
        epoch: Epoch,
    },
    /// End a package's lease now.
    Release {
        /// The package.
        pkg: PackageId,
    },
    /// Send a message.
    Send {
        /// To whom.
        to: Dest,
        /// What.
        msg: wire::Message,
    },
    /// Run the `fence` command for `node`: a start here waits for it, and
    /// neither its report nor its lease can clear it soon.
    Fence {
        /// The node to fence.
        node: NodeId,
    },
    /// A stop failed: leave the cluster (the lease was released before the
    /// stop; the kernel fences the addresses).
    Escalate {
        /// The package.
        pkg: PackageId,
    },
    /// For the journal.
    Event(Event),
}

/// One package on this node.
#[derive(Clone, Debug)]
struct Pkg {
    params: PackageParams,
    local: Local,
    /// Its monitor fails (between a failure and the next success).
    unhealthy: bool,
    restarts: u32,
    banned: bool,
    fatal: bool,
    next_monitor_ns: Option<u64>,
    monitoring: bool,
    /// The placement decision this node acts on.
    target: Option<Decision>,
    /// The lease output last given.
    lease: Option<(bool, NodeSet, u32, Epoch)>,
    /// The current lease generation (see [`Output::Lease`]).
    generation: u32,
    /// When its lease lapsed while held: renewed only after the start
    /// rule, on reports (or a fence) newer than that.
    lapsed: Option<u64>,
    /// Why the last start waited.
    blocked: Option<Blocker>,
}

/// A peer as the packages see it.
#[derive(Clone, Debug, Default)]
struct Peer {
    reachable: bool,
    last_rx_ns: u64,
    /// Newest report and its arrival.
    report: Option<(PkgReport, u64)>,
    /// Since when our view has not counted it a member (our kernel stopped
    /// granting it lease anchors then), and whether we still heard it at
    /// that moment. `None`: a member of our view, or never one.
    excluded: Option<(u64, bool)>,
}

/// The coordinator's state for its epoch.
#[derive(Clone, Debug)]
struct Coord {
    epoch: Epoch,
    seq: u32,
    last: Option<PkgPlacement>,
    sent_ns: u64,
}

/// The packages state machine of one node.
#[derive(Clone, Debug)]
pub struct Packages {
    params: Params,
    started_ns: u64,
    now_ns: u64,
    view: Option<ViewInfo>,
    view_since_ns: u64,
    pkgs: Vec<Pkg>,
    peers: BTreeMap<NodeId, Peer>,
    /// The newest placement applied: (epoch, seq) and its content.
    applied: Option<PkgPlacement>,
    /// The operator's overrides as this node knows them (the coordinator's
    /// are authoritative; others keep the last placement's).
    operator: Operator,
    coord: Option<Coord>,
    report_sent_ns: u64,
    report_dirty: bool,
    /// Fence commands asked for in the current view.
    fencing: BTreeSet<NodeId>,
    /// Successful fences, and when they ended.
    fenced: BTreeMap<NodeId, u64>,
    /// The survivor while the serial line's verdict is a split.
    split: Option<NodeId>,
}

/// A package's state for status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PkgStatus {
    /// The package.
    pub pkg: PackageId,
    /// Its life here.
    pub local: Local,
    /// Monitor failing here.
    pub unhealthy: bool,
    /// Restarts in place here.
    pub restarts: u32,
    /// Banned here.
    pub banned: bool,
    /// Fatal (reported by any node).
    pub fatal: bool,
    /// The placement this node acts on.
    pub target: Option<Decision>,
    /// What a start waits for.
    pub blocked: Option<Blocker>,
    /// The owner as the newest reports say (a node that reports it
    /// starting or running), this node included.
    pub running_on: Vec<NodeId>,
}

impl Packages {
    /// A node that just started: every package is [`Local::Unknown`] until
    /// the task reports it stopped ([`Packages::stopped_at_start`]).
    pub fn new(params: Params, now_ns: u64) -> Self {
        let pkgs = params
            .packages
            .iter()
            .map(|p| Pkg {
                params: p.clone(),
                local: Local::Unknown,
                unhealthy: false,
                restarts: 0,
                banned: false,
                fatal: false,
                next_monitor_ns: None,
                monitoring: false,
                target: None,
                lease: None,
                generation: 0,
                lapsed: None,
                blocked: None,
            })
            .collect();
        Self {
            params,
            started_ns: now_ns,
            now_ns,
            view: None,
            view_since_ns: now_ns,
            pkgs,
            peers: BTreeMap::new(),
            applied: None,
            operator: Operator::default(),
            coord: None,
            report_sent_ns: 0,
            report_dirty: true,
            fencing: BTreeSet::new(),
            fenced: BTreeMap::new(),
            split: None,
        }
    }

    /// The start-time stop of every package ran (stop before join): they
    /// are stopped (or, for a failed stop, escalated).
    pub fn stopped_at_start(&mut self, failed: &BTreeSet<PackageId>) -> Vec<Output> {
        let mut out = Vec::new();
        for p in &mut self.pkgs {
            p.local = if failed.contains(&p.params.policy.id) {
                out.push(Output::Escalate {
                    pkg: p.params.policy.id,
                });
                Local::StopFailed
            } else {
                Local::Stopped
            };
        }
        self.report_dirty = true;
        self.step(&mut out);
        out
    }

    /// Whether every package is past its start-time stop.
    pub fn ready(&self) -> bool {
        self.pkgs.iter().all(|p| p.local != Local::Unknown)
    }

    /// Handles one input.
    pub fn handle(&mut self, input: Input) -> Vec<Output> {
        let mut out = Vec::new();
        match input {
            Input::View { view, at_ns } => {
                self.now_ns = self.now_ns.max(at_ns);
                // The kernel's grants follow the view (the task updates
                // them before it tells us): track when each node left it.
                let old = self.view.map_or(NodeSet::default(), |v| v.members);
                let new = view.map_or(NodeSet::default(), |v| v.members);
                for n in old.union(new).iter() {
                    if n == self.params.local {
                        continue;
                    }
                    let now = self.now_ns;
                    let p = self.peers.entry(n).or_default();
                    if new.contains(n) {
                        p.excluded = None;
                    } else if old.contains(n) {
                        p.excluded = Some((now, p.reachable));
                    }
                }
                if view != self.view {
                    let new_epoch = view.map(|v| v.epoch) != self.view.map(|v| v.epoch);
                    self.view = view;
                    if new_epoch {
                        self.view_since_ns = self.now_ns;
                        self.fencing.clear();
                    }
                    self.report_dirty = true;
                }
            }
            Input::Peer {
                node,
                reachable,
                last_rx_ns,
            } => {
                let p = self.peers.entry(node).or_default();
                if p.reachable != reachable {
                    // Members report whom they hear (the start rule).
                    self.report_dirty = true;
                }
                p.reachable = reachable;
                p.last_rx_ns = p.last_rx_ns.max(last_rx_ns);
            }
            Input::Message { from, msg, at_ns } => {
                self.now_ns = self.now_ns.max(at_ns);
                if from != self.params.local {
                    let p = self.peers.entry(from).or_default();
                    p.last_rx_ns = p.last_rx_ns.max(at_ns);
                    self.on_message(from, msg, &mut out);
                }
            }
            Input::Done {
                pkg,
                action,
                result,
                at_ns,
            } => {
                self.now_ns = self.now_ns.max(at_ns);
                self.on_done(pkg, action, result, &mut out);
            }
            Input::Operator { op, at_ns } => {
                self.now_ns = self.now_ns.max(at_ns);
                // Every node hears it (a start clears each node's own
                // bans); only the coordinator changes the overrides.
                self.on_op(op);
                out.push(Output::Send {
                    to: Dest::All,
                    msg: wire::Message::PkgCommand(PkgCommand { op }),
                });
            }
            Input::LeaseLapsed {
                pkg,
                generation,
                at_ns,
            } => {
                self.now_ns = self.now_ns.max(at_ns);
                if let Some(p) = self.pkgs.get_mut(usize::from(pkg.0))
                    && p.generation == generation
                    && p.local.holds()
                    && p.lapsed.is_none()
                {
                    p.lapsed = Some(self.now_ns);
                    self.report_dirty = true;
                    out.push(Output::Event(Event::LeaseLapsed { pkg }));
                }
            }
            Input::Fenced { node, ok, at_ns } => {
                self.now_ns = self.now_ns.max(at_ns);
                if ok {
                    self.fenced.insert(node, at_ns);
                } else {
                    // Asked again at the next view.
                    out.push(Output::Event(Event::FenceFailed { node }));
                }
            }
            Input::Serial { verdict } => {
                let split = match verdict {
                    Verdict::Split { survivor } => Some(survivor),
                    Verdict::NotNeeded | Verdict::PeerSilent => None,
                };
                if split != self.split {
                    self.split = split;
                    self.report_dirty = true;
                }
            }
            Input::Drain { at_ns } => {
                self.now_ns = self.now_ns.max(at_ns);
                for p in &mut self.pkgs {
                    if p.params.policy.nodes.contains(&self.params.local) {
                        p.banned = true;
                    }
                }
                self.report_dirty = true;
            }
            Input::Tick { now_ns } => self.now_ns = self.now_ns.max(now_ns),
        }
        self.step(&mut out);
        out
    }

    /// After [`Input::Drain`]: whether every package is handed over, so
    /// that the node may leave. True when nothing runs here any more (or
    /// its stop failed, which escalates anyway) and each package is either
    /// placed nowhere or reported starting or running, in our epoch, by
    /// the node the newest placement gives it to (or kept here by a
    /// frozen cluster); also true without a quorate view (nobody could take
    /// a package over: the lease rule applies after the leave).
    pub fn drained(&self) -> bool {
        let Some(v) = self.view.filter(|v| v.quorate) else {
            return self.pkgs.iter().all(|p| p.local.settled_off());
        };
        self.pkgs.iter().all(|p| {
            if !p.local.settled_off() {
                return false;
            }
            let id = p.params.policy.id;
            match p.target.and_then(|d| d.owner) {
                None => true,
                // A frozen cluster moves nothing: stopped here, it waits
                // for the operator.
                Some(o) if o == self.params.local => {
                    p.target.is_some_and(|d| d.reason == Reason::Frozen)
                }
                Some(o) => self
                    .peers
                    .get(&o)
                    .and_then(|pe| pe.report.as_ref())
                    .is_some_and(|(r, _)| {
                        r.epoch == v.epoch
                            && r.entries.iter().any(|e| {
                                e.pkg == id
                                    && (e.state == pkg_state::STARTING
                                        || e.state == pkg_state::RUNNING)
                            })
                    }),
            }
        })
    }

    /// The earliest time something is due (a monitor, a resend, a lease
    /// to wait out).
    pub fn next_deadline_ns(&self) -> u64 {
        let mut d = self.report_sent_ns.saturating_add(self.params.resend_ns);
        if let Some(c) = &self.coord {
            d = d.min(c.sent_ns.saturating_add(self.params.resend_ns));
        }
        for p in &self.pkgs {
            if let Some(m) = p.next_monitor_ns {
                d = d.min(m);
            }
            if let Some(Blocker::Holder {
                until_ns: Some(u), ..
            }) = p.blocked
            {
                d = d.min(u);
            }
        }
        d
    }

    /// Every package's state.
    pub fn status(&self) -> Vec<PkgStatus> {
        self.pkgs
            .iter()
            .map(|p| {
                let id = p.params.policy.id;
                let mut running_on: Vec<NodeId> = self
                    .peers
                    .iter()
                    .filter(|(_, peer)| {
                        peer.report.as_ref().is_some_and(|(r, _)| {
                            r.entries.iter().any(|e| {
                                e.pkg == id
                                    && (e.state == pkg_state::RUNNING
                                        || e.state == pkg_state::STARTING)
                            })
                        })
                    })
                    .map(|(n, _)| *n)
                    .collect();
                if p.local.holds() {
                    running_on.push(self.params.local);
                    running_on.sort();
                }
                PkgStatus {
                    pkg: id,
                    local: p.local,
                    unhealthy: p.unhealthy,
                    restarts: p.restarts,
                    banned: p.banned,
                    fatal: p.fatal || self.fatal_anywhere(id),
                    target: p.target,
                    blocked: p.blocked,
                    running_on,
                }
            })
            .collect()
    }

    /// The operator's overrides as this node knows them.
    pub fn operator(&self) -> &Operator {
        &self.operator
    }

    /// The survivor while the serial line's verdict is a split.
    pub fn split(&self) -> Option<NodeId> {
        self.split
    }

    /// Whether this node lost the survivor rule (a serial split is in
    /// force and the survivor is the other node).
    pub fn yields(&self) -> bool {
        self.split.is_some_and(|s| s != self.params.local)
    }

    /// The newest placement this node applied.
    pub fn placement(&self) -> Option<&PkgPlacement> {
        self.applied.as_ref()
    }

    /// The health bitmap carried in heartbeats: bit `id` set while the
    /// package runs here and its monitor passes.
    pub fn health_bits(&self) -> u64 {
        self.pkgs
            .iter()
            .filter(|p| p.local == Local::Running && !p.unhealthy)
            .fold(0u64, |b, p| b | 1u64 << (p.params.policy.id.0 & 63))
    }

    fn coordinating(&self) -> bool {
        self.view
            .is_some_and(|v| v.quorate && v.coordinator == Some(self.params.local))
    }

    fn fatal_anywhere(&self, id: PackageId) -> bool {
        self.peers.values().any(|p| {
            p.report.as_ref().is_some_and(|(r, _)| {
                r.entries
                    .iter()
                    .any(|e| e.pkg == id && e.flags & pkg_flags::FATAL != 0)
            })
        })
    }

    /// Whether an operator command can take effect now: this node knows
    /// a coordinator of a quorate view.
    pub fn coordinator(&self) -> Option<NodeId> {
        self.view.filter(|v| v.quorate).and_then(|v| v.coordinator)
    }

    fn on_op(&mut self, op: OperatorOp) {
        if let OperatorOp::Start(p) = op
            && let Some(pkg) = self.pkgs.get_mut(usize::from(p.0))
        {
            // A start clears this node's own bans and errors.
            pkg.banned = false;
            pkg.fatal = false;
            pkg.restarts = 0;
            self.report_dirty = true;
        }
        if self.coordinating() {
            self.apply_op(op);
        }
    }

    fn apply_op(&mut self, op: OperatorOp) {
        let o = &mut self.operator;
        match op {
            OperatorOp::Move(p, n) => {
                o.moves.insert(p, n);
                o.stopped.remove(&p);
                o.disabled.remove(&(p, n));
            }
            OperatorOp::Start(p) => {
                o.stopped.remove(&p);
            }
            OperatorOp::Stop(p) | OperatorOp::Disable(p, None) => {
                o.stopped.insert(p);
                o.moves.remove(&p);
            }
            OperatorOp::Enable(p, None) => {
                o.stopped.remove(&p);
                o.disabled.retain(|(q, _)| *q != p);
            }
            OperatorOp::Enable(p, Some(n)) => {
                o.disabled.remove(&(p, n));
            }
            OperatorOp::Disable(p, Some(n)) => {
                o.disabled.insert((p, n));
                if o.moves.get(&p) == Some(&n) {
                    o.moves.remove(&p);
                }
            }
            OperatorOp::Freeze => o.frozen = true,
            OperatorOp::Unfreeze => o.frozen = false,
        }
    }

    fn on_message(&mut self, from: NodeId, msg: wire::Message, out: &mut Vec<Output>) {
        match msg {
            wire::Message::PkgPlacement(p) => {
                let Some(v) = self.view else { return };
                // Only the coordinator of our own view, for our epoch,
                // newer than what we applied.
                if p.epoch != v.epoch || v.coordinator != Some(from) || !v.quorate {
                    return;
                }
                if self
                    .applied
                    .as_ref()
                    .is_some_and(|a| a.epoch == p.epoch && a.seq >= p.seq)
                {
                    return;
                }
                self.apply_placement(p);
            }
            wire::Message::PkgReport(r) => {
                let at = self.now_ns;
                let peer = self.peers.entry(from).or_default();
                let was_lapsed = |pkg: PackageId| {
                    peer.report.as_ref().is_some_and(|(old, _)| {
                        old.entries
                            .iter()
                            .any(|e| e.pkg == pkg && e.flags & pkg_flags::LAPSED != 0)
                    })
                };
                if r.entries
                    .iter()
                    .any(|e| e.flags & pkg_flags::LAPSED != 0 && !was_lapsed(e.pkg))
                {
                    // Its start rule waits for reports newer than its
                    // lapse: report once, at once (not at every resend of
                    // its report, or lapsed nodes would echo each other).
                    self.report_dirty = true;
                }
                peer.report = Some((r, at));
            }
            wire::Message::PkgCommand(c) => self.on_op(c.op),
            _ => {}
        }
        let _ = out;
    }

    fn apply_placement(&mut self, p: PkgPlacement) {
        for (id, d) in &p.decisions {
            if let Some(pkg) = self.pkgs.get_mut(usize::from(id.0)) {
                pkg.target = Some(*d);
            }
        }
        if !self.coordinating() {
            self.operator = p.operator.clone();
        }
        self.applied = Some(p);
        self.report_dirty = true;
    }

    fn on_done(
        &mut self,
        id: PackageId,
        action: Action,
        result: ActionResult,
        out: &mut Vec<Output>,
    ) {
        let now = self.now_ns;
        let epoch = self.view.map_or(Epoch(0), |v| v.epoch);
        let Some(p) = self.pkgs.get_mut(usize::from(id.0)) else {
            return;
        };
        self.report_dirty = true;
        match (action, p.local) {
            (Action::Start, Local::Starting) => match result {
                ActionResult::Ok => {
                    p.local = Local::Running;
                    p.unhealthy = false;
                    p.next_monitor_ns = (p.params.monitor_interval_ns > 0)
                        .then(|| now.saturating_add(p.params.monitor_interval_ns));
                }
                r => {
                    // A failed start gives the package up here (Pacemaker's
                    // start-failure-is-fatal).
                    match r {
                        ActionResult::Fatal => {
                            p.fatal = true;
                            out.push(Output::Event(Event::Fatal { pkg: id }));
                        }
                        _ => {
                            p.banned = true;
                            out.push(Output::Event(Event::Banned {
                                pkg: id,
                                why: if r == ActionResult::Hard {
                                    "hard_failure"
                                } else {
                                    "start_failed"
                                },
                            }));
                        }
                    }
                    Self::stop(p, false, epoch, out);
                }
            },
            (Action::Monitor, Local::Running) => {
                p.monitoring = false;
                p.next_monitor_ns = (p.params.monitor_interval_ns > 0)
                    .then(|| now.saturating_add(p.params.monitor_interval_ns));
                match result {
                    ActionResult::Ok => p.unhealthy = false,
                    ActionResult::Soft if p.restarts < p.params.restart_limit => {
                        // Restart in place: not reported unhealthy, so the
                        // coordinator does not move it meanwhile.
                        p.restarts += 1;
                        Self::stop(p, true, epoch, out);
                    }
                    ActionResult::Fatal => {
                        p.fatal = true;
                        out.push(Output::Event(Event::Fatal { pkg: id }));
                        Self::stop(p, false, epoch, out);
                    }
                    r => {
                        p.unhealthy = true;
                        p.banned = true;
                        out.push(Output::Event(Event::Banned {
                            pkg: id,
                            why: if r == ActionResult::Hard {
                                "hard_failure"
                            } else {
                                "restart_limit"
                            },
                        }));
                        Self::stop(p, false, epoch, out);
                    }
                }
            }
            (Action::Monitor, _) => p.monitoring = false,
            (Action::Stop, Local::Stopping { restart }) => match result {
                ActionResult::Ok => {
                    p.local = Local::Stopped;
                    if restart && !p.banned && !p.fatal {
                        // Restart in place: the start rule below runs it
                        // again if the placement still gives it to us.
                        p.unhealthy = false;
                    }
                }
                _ => {
                    p.local = Local::StopFailed;
                    out.push(Output::Escalate { pkg: id });
                }
            },
            _ => {}
        }
    }

    /// Releases the lease and stops (`restart`: start again after).
    fn stop(p: &mut Pkg, restart: bool, epoch: Epoch, out: &mut Vec<Output>) {
        p.local = Local::Stopping { restart };
        p.next_monitor_ns = None;
        p.lapsed = None;
        p.lease = Some((false, NodeSet::default(), p.generation, epoch));
        out.push(Output::Release {
            pkg: p.params.policy.id,
        });
        out.push(Output::Run {
            pkg: p.params.policy.id,
            action: Action::Stop,
            epoch,
            reason: p.target.map_or(Reason::NotQuorate, |d| d.reason),
        });
    }

    /// Everything that follows from the current state.
    fn step(&mut self, out: &mut Vec<Output>) {
        if !self.ready() {
            return;
        }
        self.coordinate(out);
        let now = self.now_ns;
        let view = self.view;
        let epoch = view.map_or(Epoch(0), |v| v.epoch);
        let local = self.params.local;
        // A placement acts only in the epoch it was made for.
        let current = self
            .applied
            .as_ref()
            .is_some_and(|a| view.is_some_and(|v| v.quorate && v.epoch == a.epoch));
        let quorate = view.is_some_and(|v| v.quorate);
        for i in 0..self.pkgs.len() {
            let id = self.pkgs[i].params.policy.id;
            // Ours while the view is quorate and the newest placement (this
            // epoch's, or the previous one's until this epoch's arrives)
            // gives it to us.
            // A node that lost the serial survivor rule yields everything.
            let ours = quorate
                && !self.yields()
                && self.pkgs[i].target.is_some_and(|d| d.owner == Some(local))
                && !self.pkgs[i].banned
                && !self.pkgs[i].fatal;
            // A lease that lapsed while held: renewed again only once the
            // start rule clears every other node (module doc).
            if let Some(at) = self.pkgs[i].lapsed
                && ours
                && current
                && self.pkgs[i].local.holds()
                && self.start_rule(i, at, out)
            {
                let p = &mut self.pkgs[i];
                p.lapsed = None;
                p.generation = p.generation.wrapping_add(1);
                out.push(Output::Event(Event::LeaseRegained { pkg: id }));
            }
            let local_state = self.pkgs[i].local;
            match local_state {
                Local::Running | Local::Starting if !ours => {
                    let p = &mut self.pkgs[i];
                    Self::stop(p, false, epoch, out);
                    self.report_dirty = true;
                }
                Local::Stopped if ours && current && self.start_rule(i, 0, out) => {
                    let p = &mut self.pkgs[i];
                    p.local = Local::Starting;
                    p.generation = p.generation.wrapping_add(1);
                    p.lapsed = None;
                    out.push(Output::Run {
                        pkg: id,
                        action: Action::Start,
                        epoch,
                        reason: p.target.map_or(Reason::Initial, |d| d.reason),
                    });
                    self.report_dirty = true;
                }
                Local::Running => {
                    let p = &mut self.pkgs[i];
                    if !p.monitoring && p.next_monitor_ns.is_some_and(|m| m <= now) {
                        p.monitoring = true;
                        p.next_monitor_ns = None;
                        out.push(Output::Run {
                            pkg: id,
                            action: Action::Monitor,
                            epoch,
                            reason: Reason::Stay,
                        });
                    }
                }
                _ => {}
            }
            // The kernel lease follows.
            let p = &mut self.pkgs[i];
            // Renewed only on a placement of the installed epoch: a node
            // re-admitted after missing an epoch (in which the package may
            // have moved) must not renew on its old placement once the
            // others grant it again. A continuing owner's lease covers the
            // millisecond or two until the new placement arrives.
            let renew = ours && current && p.local.holds() && !p.unhealthy && p.lapsed.is_none();
            // Anchored at heartbeats every other member answered: any
            // later quorate view shares a member with ours, and that member
            // says when it last heard us (the start rule's rule 2).
            // During a serial split the survivor's peer is not a successor
            // (no heartbeat crosses the network to grant; it yields by its
            // own verdict): the module doc, "Serial split".
            let successors = if renew {
                let mut s = view.map_or(NodeSet::default(), |v| v.members);
                s.remove(local);
                if self.split == Some(local) {
                    s = NodeSet::default();
                }
                s
            } else {
                NodeSet::default()
            };
            if p.lease != Some((renew, successors, p.generation, epoch)) {
                p.lease = Some((renew, successors, p.generation, epoch));
                out.push(Output::Lease {
                    pkg: id,
                    renew,
                    successors,
                    generation: p.generation,
                    epoch,
                });
            }
        }
        self.report(out);
    }

    /// Applies the start rule to package `i`, on reports and fences newer
    /// than `since` (and than our view): true when it may start (or renew
    /// again after a lapse), with the nodes it waited for journaled; else
    /// records what it waits for (and asks for a fence).
    fn start_rule(&mut self, i: usize, since: u64, out: &mut Vec<Output>) -> bool {
        let id = self.pkgs[i].params.policy.id;
        match self.may_start(id, since) {
            Ok(cleared) => {
                let waited = self.pkgs[i]
                    .blocked
                    .take()
                    .map(|Blocker::Holder { node, .. }| node);
                for (node, how) in cleared {
                    if how == "lease_expired" || Some(node) == waited {
                        out.push(Output::Event(Event::Cleared { pkg: id, node, how }));
                    }
                }
                true
            }
            Err(b) => {
                let Blocker::Holder { node, .. } = b;
                if self.params.fenceable.contains(node) && self.fencing.insert(node) {
                    out.push(Output::Fence { node });
                }
                self.pkgs[i].blocked = Some(b);
                false
            }
        }
    }

    /// The start rule (module doc): `Ok` with how each other node was
    /// cleared (`report` or `lease_expired`) when no other node can still
    /// serve `id`, else what it waits for.
    fn may_start(&self, id: PackageId, since: u64) -> Result<Vec<(NodeId, &'static str)>, Blocker> {
        let now = self.now_ns;
        let lapsed_since = since;
        let since = since.max(self.view_since_ns);
        let wait = self.params.timing.wait_ns();
        let mut cleared = Vec::new();
        let Some(p) = self.pkgs.get(usize::from(id.0)) else {
            return Ok(cleared);
        };
        let members = self.view.map_or(NodeSet::default(), |v| v.members);
        let epoch = self.view.map_or(Epoch(0), |v| v.epoch);
        let seq = self
            .applied
            .as_ref()
            .filter(|a| a.epoch == epoch)
            .map_or(u32::MAX, |a| a.seq);
        for &n in &p.params.policy.nodes {
            if n == self.params.local {
                continue;
            }
            // Rule 3: its fence command succeeded in our current view.
            if self.fenced.get(&n).is_some_and(|&f| f >= since) {
                cleared.push((n, "fenced"));
                continue;
            }
            let peer = self.peers.get(&n);
            // Rule 1: its newest report (a member's of our epoch, another
            // node's received in our current view) says it does not hold the package's lease: stopped, or its
            // stop failed (the lease was released before the stop, and
            // the node escalated: its kernel fences the addresses). A
            // member's report must also reflect the placement we act on
            // (it applied it, then stopped); a non-member cannot be given
            // the package in our epoch.
            let fresh_report = peer
                .and_then(|pe| pe.report.as_ref())
                .is_some_and(|(r, at)| {
                    // A member's report of our epoch reflecting our
                    // placement is fresh whenever it arrived (it may come
                    // before our own install of the view: the packages
                    // task hears the view after the cluster task); others
                    // must have arrived in our view.
                    let member = members.contains(n);
                    let reflects = !member || (r.epoch == epoch && r.placement_seq >= seq);
                    let fresh = if member {
                        *at >= lapsed_since
                    } else {
                        *at >= since
                    };
                    fresh
                        && reflects
                        && r.entries.iter().find(|e| e.pkg == id).is_some_and(|e| {
                            e.state == pkg_state::STOPPED || e.state == pkg_state::STOP_FAILED
                        })
                });
            if fresh_report {
                cleared.push((n, "report"));
                continue;
            }
            // Rule 2: not a member of our view, and its lease has run out
            // by our clock, counted from the last time any member of our
            // view granted it a lease anchor (counted it a member and
            // answered it).
            let until = if members.contains(n) {
                None
            } else {
                self.last_granted_by_view(n)
                    .map(|t| t.max(self.started_ns).saturating_add(wait))
            };
            if let Some(u) = until
                && now >= u
            {
                cleared.push((n, "lease_expired"));
                continue;
            }
            return Err(Blocker::Holder {
                node: n,
                until_ns: until,
            });
        }
        Ok(cleared)
    }

    /// The latest time our kernel may have granted `o` a lease anchor
    /// (our clock): never after `o` left our view; before that, not after we
    /// last heard it if it was already silent then. Our start (when the
    /// task reset the kernel's grants) bounds it from below.
    fn own_last_grant(&self, o: NodeId) -> u64 {
        let since = self.started_ns;
        match self.peers.get(&o) {
            None => since,
            Some(p) => match p.excluded {
                None if self.view.is_some_and(|v| v.members.contains(o)) => self.now_ns,
                None => since,
                Some((at, true)) => at,
                Some((at, false)) => at.min(p.last_rx_ns.max(since)),
            },
        }
    }

    /// The latest time any member of our view (us included) granted `o` a
    /// lease anchor, by our clock (a report's arrival minus the age it
    /// reports). `None` while a member has not reported in this epoch yet,
    /// or still counts `o` a member.
    fn last_granted_by_view(&self, o: NodeId) -> Option<u64> {
        let v = self.view?;
        let mut t = self.own_last_grant(o);
        for m in v.members.iter() {
            if m == self.params.local || m == o {
                continue;
            }
            let (r, at) = self
                .peers
                .get(&m)
                .and_then(|p| p.report.as_ref())
                .filter(|(r, _)| r.epoch == v.epoch)?;
            let age = r
                .silence
                .iter()
                .find(|(n, _)| *n == o)
                .map_or(0, |(_, a)| *a);
            if age == 0 {
                return None;
            }
            if age != wire::SILENCE_NEVER {
                t = t.max(at.saturating_sub(u64::from(age) * 1000));
            }
        }
        Some(t)
    }

    /// The coordinator's part: place, send on change and periodically.
    fn coordinate(&mut self, out: &mut Vec<Output>) {
        let Some(v) = self.view.filter(|_| self.coordinating()) else {
            self.coord = None;
            return;
        };
        if self.coord.as_ref().is_none_or(|c| c.epoch != v.epoch) {
            // A new epoch: keep the operator's overrides we know (from the
            // last placement applied, or our own as coordinator).
            self.coord = Some(Coord {
                epoch: v.epoch,
                seq: 0,
                last: None,
                sent_ns: 0,
            });
        }
        let situation = self.situation();
        let policies: Vec<PackagePolicy> =
            self.pkgs.iter().map(|p| p.params.policy.clone()).collect();
        // During a serial split only the survivor is eligible.
        let members = match self.split {
            Some(s) if v.members.contains(s) => NodeSet::single(s),
            Some(_) => NodeSet::default(),
            None => v.members,
        };
        let placed = placement::place(
            &placement::View {
                epoch: v.epoch,
                members,
                quorate: v.quorate,
            },
            &policies,
            &situation,
        );
        let now = self.now_ns;
        let resend = self.params.resend_ns;
        let coord = self.coord.as_mut().expect("set above");
        let decisions: Vec<(PackageId, Decision)> = placed.decisions.into_iter().collect();
        let changed = coord.last.as_ref().is_none_or(|l| {
            l.operator != self.operator
                || l.decisions.len() != decisions.len()
                || l.decisions
                    .iter()
                    .zip(&decisions)
                    .any(|(a, b)| a.0 != b.0 || a.1.owner != b.1.owner)
        });
        if changed {
            coord.seq += 1;
            let msg = PkgPlacement {
                epoch: v.epoch,
                seq: coord.seq,
                decisions: decisions.clone(),
                operator: self.operator.clone(),
            };
            for (pkg, d) in &decisions {
                let before = coord
                    .last
                    .as_ref()
                    .and_then(|l| l.decisions.iter().find(|(p, _)| p == pkg))
                    .map(|(_, d)| d.owner);
                if before != Some(d.owner) {
                    out.push(Output::Event(Event::Placed {
                        pkg: *pkg,
                        epoch: v.epoch,
                        decision: *d,
                    }));
                }
            }
            coord.last = Some(msg.clone());
            coord.sent_ns = now;
            out.push(Output::Send {
                to: Dest::All,
                msg: wire::Message::PkgPlacement(msg.clone()),
            });
            self.apply_placement(msg);
        } else if now >= coord.sent_ns.saturating_add(resend) {
            coord.sent_ns = now;
            if let Some(l) = coord.last.clone() {
                out.push(Output::Send {
                    to: Dest::All,
                    msg: wire::Message::PkgPlacement(l),
                });
            }
        }
    }

    /// The placement inputs from the reports (and this node's own state).
    fn situation(&self) -> Situation {
        let mut s = Situation {
            operator: self.operator.clone(),
            ..Situation::default()
        };
        let members = self.view.map_or(NodeSet::default(), |v| v.members);
        let mut entries: Vec<(NodeId, PkgEntry)> = self
            .pkgs
            .iter()
            .map(|p| (self.params.local, self.entry(p)))
            .collect();
        for (n, peer) in &self.peers {
            if !members.contains(*n) {
                continue;
            }
            if let Some((r, _)) = &peer.report {
                entries.extend(r.entries.iter().map(|e| (*n, *e)));
            }
        }
        for (n, e) in entries {
            if e.flags & pkg_flags::UNHEALTHY != 0 {
                *s.failures.entry(n).or_default() += 1;
            }
            if e.flags & pkg_flags::BANNED != 0 {
                s.bans.insert((e.pkg, n));
            }
            if e.flags & pkg_flags::FATAL != 0 {
                s.fatal.insert(e.pkg);
            }
            if e.state == pkg_state::RUNNING || e.state == pkg_state::STARTING {
                s.current.entry(e.pkg).or_insert(n);
            }
        }
        // Owners not reported running any more (they left, or the report
        // is late) are what the previous placement said.
        if let Some(l) = &self.applied {
            for (pkg, d) in &l.decisions {
                if let Some(o) = d.owner {
                    s.current.entry(*pkg).or_insert(o);
                }
            }
        }
        s
    }

    fn entry(&self, p: &Pkg) -> PkgEntry {
        let mut flags = 0;
        if p.unhealthy {
            flags |= pkg_flags::UNHEALTHY;
        }
        if p.banned {
            flags |= pkg_flags::BANNED;
        }
        if p.fatal {
            flags |= pkg_flags::FATAL;
        }
        if p.lapsed.is_some() {
            flags |= pkg_flags::LAPSED;
        }
        PkgEntry {
            pkg: p.params.policy.id,
            state: p.local.wire(),
            flags,
            restarts: p.restarts.min(255) as u8,
        }
    }

    fn report(&mut self, out: &mut Vec<Output>) {
        let now = self.now_ns;
        if !self.report_dirty && now < self.report_sent_ns.saturating_add(self.params.resend_ns) {
            return;
        }
        self.report_dirty = false;
        self.report_sent_ns = now;
        let epoch = self.view.map_or(Epoch(0), |v| v.epoch);
        let placement_seq = self
            .applied
            .as_ref()
            .filter(|a| a.epoch == epoch)
            .map_or(0, |a| a.seq);
        let entries = self.pkgs.iter().map(|p| self.entry(p)).collect();
        // Per node that may hold a package: how long ago our kernel may
        // last have granted it a lease anchor (0: it is a member now).
        let mut nodes: BTreeSet<NodeId> = self.peers.keys().copied().collect();
        for p in &self.pkgs {
            nodes.extend(p.params.policy.nodes.iter().copied());
        }
        nodes.remove(&self.params.local);
        let silence = nodes
            .into_iter()
            .map(|n| {
                let last = self.own_last_grant(n);
                let age = if last >= now {
                    0
                } else {
                    // Rounded down to the µs (the receiver's estimate only
                    // gets later), at least 1.
                    ((now - last) / 1000).clamp(1, u64::from(u32::MAX - 1)) as u32
                };
                (n, age)
            })
            .collect();
        out.push(Output::Send {
            to: Dest::All,
            msg: wire::Message::PkgReport(PkgReport {
                epoch,
                placement_seq,
                entries,
                silence,
            }),
        });
    }
}
