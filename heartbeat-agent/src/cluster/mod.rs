//! The cluster subsystem: the task that owns reachability (which peers are
//! heard on which link) and membership (the agreed view, its epoch,
//! coordinator and quorum), fed by transport events from any transport and
//! by membership messages, and publishing its view for status and metrics.
//!
//! The decisions themselves are pure state machines (`links` here, and the
//! `heartbeat_cluster` crate); this task only feeds them and carries out
//! their outputs (journal entries, messages to send, the persisted epoch).

pub mod halfopen;
pub mod links;

use std::{
    collections::BTreeMap,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use heartbeat_api::status::{MembershipStatus, NodeState, QuorumStatus};
use heartbeat_cluster::{
    LinkId, NodeId,
    membership::{
        Command as MCommand, Dest, Input, Membership, NodeParams, NodeState as MState, Output,
        Params, PeerAgentState, Timing, View,
    },
    wire::{self, Keys, Message, Sealer},
};
use heartbeat_common::node_state;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::{
    control::{Call, Request},
    fastpath::FastSnapshot,
    journal::{self, EventKind, JournalHandle},
    plan::Plan,
    sender::Shared,
    state::StateFile,
    transport::{Datagram, LinkSocket},
};

/// A link going up or down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkChange {
    Up,
    Down,
}

/// What a transport (the XDP program's timers, later a serial line) tells
/// the cluster. Independent of the kernel's event layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransportEvent {
    /// (peer, link) changed state at `at_ns` (CLOCK_MONOTONIC); the last
    /// valid packet before it arrived at `last_rx_ns`.
    Link {
        peer: u16,
        link: u8,
        change: LinkChange,
        at_ns: u64,
        last_rx_ns: u64,
    },
    /// The local dead-man gate closed (our kernel stopped answering `peer`
    /// on `link` because this agent looked dead or hung).
    LocalGateClosed { peer: u16, link: u8, at_ns: u64 },
    /// A deadline expired but the detector deferred its verdict by one
    /// bounded grace (`heartbeat_common::defer_cause`); the link's state
    /// does not change (a `Link` down follows if the grace runs out).
    Deferred {
        peer: u16,
        link: u8,
        cause: u8,
        at_ns: u64,
        last_rx_ns: u64,
    },
    /// The half-open verdict of (peer, link) changed (`halfopen`): `open`,
    /// the kernel holds it up but `unanswered` own requests went without a
    /// reply for `silent_ns`; closed, a reply came again.
    HalfOpen {
        peer: u16,
        link: u8,
        open: bool,
        unanswered: u64,
        silent_ns: u64,
        at_ns: u64,
        last_rx_ns: u64,
    },
}

/// One peer as the cluster sees it (for status and metrics).
#[derive(Clone, Debug, Default)]
pub struct PeerView {
    pub id: u16,
    pub name: String,
    pub state: NodeState,
    /// CLOCK_MONOTONIC ns of the last state change (0: never).
    pub since_mono_ns: u64,
    /// Link id → state.
    pub links: BTreeMap<u8, links::State>,
    /// Whether the peer is a member of the agreed view.
    pub member: bool,
    /// Last valid packet a link event reported (CLOCK_MONOTONIC ns).
    pub last_rx_ns: u64,
    /// Link id → down verdicts by cause (`timeout`, `half_open`).
    pub down_causes: BTreeMap<u8, BTreeMap<&'static str, u64>>,
}

/// What the cluster task publishes.
#[derive(Clone, Debug, Default)]
pub struct ClusterView {
    pub peers: Vec<PeerView>,
    /// The local node's own state (up, passive, down after a halt).
    pub local_state: NodeState,
    /// Reformation events by cause.
    pub reformations: BTreeMap<String, u64>,
    pub membership: MembershipStatus,
    /// Membership messages: `sent`, `received`, `dropped_<reason>`.
    pub messages: BTreeMap<String, u64>,
    /// Transport events naming an unknown peer or link.
    pub unknown_events: u64,
    /// The installed view in typed form (for the packages task).
    pub installed: Option<heartbeat_cluster::packages::ViewInfo>,
}

/// Commands for the cluster task.
pub enum Command {
    /// A reloaded plan (peers added or removed, timeouts changed).
    Reconfigure(Arc<Plan>),
    /// An operator command from the control socket.
    Control(Call),
    /// A package's stop failed: leave the cluster (passive until `node
    /// start`) so that its lease runs out everywhere.
    Escalate(String),
}

/// The cluster task's channels.
pub struct Channels {
    pub events: mpsc::Receiver<TransportEvent>,
    pub commands: mpsc::Receiver<Command>,
    /// Membership messages as they arrived (not yet authenticated).
    pub messages: mpsc::Receiver<Datagram>,
    pub view: watch::Sender<ClusterView>,
    /// The links' sockets, to send membership messages.
    pub sockets: Vec<LinkSocket>,
    /// The fast path's snapshots (peers' agent states in their heartbeats).
    pub fast: watch::Receiver<FastSnapshot>,
    /// The sender's shared state (the node state byte of heartbeats).
    pub shared: Arc<Shared>,
    /// The persisted epoch and incarnation.
    pub state: StateFile,
    /// Time from the first event of a round to the installed view.
    pub agreement: Arc<crate::metrics::Histogram>,
    /// The serial line's task, when one is configured: sealed membership
    /// datagrams for the peer go on the line too (`crate::serial`).
    pub serial: Option<mpsc::Sender<Vec<u8>>>,
    /// The node's sealer (shared with the packages task).
    pub sealer: SharedSealer,
    /// Where package messages go (none: no packages configured).
    pub packages: Option<mpsc::Sender<PackageMessage>>,
}

fn link_view(plan: &Plan) -> links::Membership {
    let peers: Vec<(u16, String, Vec<u8>)> = plan
        .peers
        .iter()
        .map(|p| {
            let mut l: Vec<u8> = p.links.iter().map(|l| l.0).collect();
            // The serial line is one more link to its peer.
            if crate::serial::peer_of(plan) == Some(p.id) {
                l.push(crate::serial::SERIAL_LINK);
            }
            (p.id.0, p.name.clone(), l)
        })
        .collect();
    links::Membership::new(&plan.local.name, &peers)
}

/// The membership state machine's parameters from the plan.
pub fn params(plan: &Plan) -> Params {
    let c = &plan.config.cluster;
    let s = &plan.settings;
    Params {
        local: plan.local.id,
        nodes: plan
            .config
            .nodes
            .iter()
            .map(|n| NodeParams {
                id: n.id,
                priority: n.priority,
                votes: n.votes,
            })
            .collect(),
        quorum: s.quorum,
        start: s.start,
        timing: Timing::from_heartbeat_interval(
            c.heartbeat_interval.as_nanos() as u64,
            s.auto_start_timeout.as_nanos() as u64,
            s.restart_window.as_nanos() as u64,
        ),
    }
}

fn wire_keys(plan: &Plan) -> Keys {
    crate::qserver::wire_keys(&plan.keys)
}

fn api_state(s: MState) -> NodeState {
    match s {
        MState::Up => NodeState::Up,
        MState::Down => NodeState::Down,
        MState::Passive => NodeState::Passive,
        MState::Leaving => NodeState::Leaving,
        MState::Restarting => NodeState::Restarting,
        MState::Stale => NodeState::Stale,
    }
}

/// The agent state a peer announces in its heartbeats.
fn peer_agent(byte: u8) -> PeerAgentState {
    match byte & node_state::MASK {
        node_state::HALTING => PeerAgentState::Leaving,
        node_state::RESTARTING => PeerAgentState::Restarting,
        node_state::STALE => PeerAgentState::Stale,
        _ => PeerAgentState::Running,
    }
}

/// The node's one sealer of messages (membership and packages share its
/// sequence numbers, so that peers' replay windows stay correct).
pub type SharedSealer = Arc<std::sync::Mutex<Sealer>>;

/// Seals `msg` with the current key and the next sequence number.
pub fn seal(sealer: &SharedSealer, msg: &Message, keys: &Keys) -> Vec<u8> {
    // A poisoned lock means a panic while sealing; the counter is intact.
    let mut s = sealer.lock().unwrap_or_else(|e| e.into_inner());
    s.seal(msg, keys.current)
}

/// Sends one sealed datagram on every link to every peer in `to` (`None`:
/// every configured peer). Returns whether any send succeeded, and the
/// number of failed sends.
pub fn send_sealed(
    plan: &Plan,
    sockets: &[LinkSocket],
    to: Option<heartbeat_cluster::NodeSet>,
    bytes: &[u8],
) -> (bool, u64) {
    let mut sent = false;
    let mut errors = 0;
    for l in &plan.links {
        let Some(sock) = sockets.iter().find(|s| s.link_id == l.link_id.0) else {
            continue;
        };
        for &(peer, addr) in &l.peers {
            if to.is_none_or(|set| set.contains(peer)) {
                match sock.socket.send_to(bytes, addr) {
                    Ok(_) => sent = true,
                    Err(_) => errors += 1,
                }
            }
        }
    }
    (sent, errors)
}

/// A package message for the packages task, authenticated (not yet
/// checked for replay: the packages task keeps its own window).
#[derive(Clone, Debug)]
pub struct PackageMessage {
    pub msg: wire::Authenticated,
    pub at_ns: u64,
}

/// The cluster task's state: reachability, the membership state machine,
/// and what carrying out its outputs needs.
struct Runner {
    plan: Arc<Plan>,
    reach: links::Membership,
    sm: Membership,
    sealer: SharedSealer,
    keys: Keys,
    state: StateFile,
    /// When extending the epoch reservation last failed.
    refill_failed: Option<std::time::Instant>,
    journal: JournalHandle,
    view: watch::Sender<ClusterView>,
    sockets: Vec<LinkSocket>,
    shared: Arc<Shared>,
    /// Membership messages: sent, received, dropped by reason.
    messages: BTreeMap<String, u64>,
    /// Reformations by cause.
    causes: BTreeMap<&'static str, u64>,
    /// The last agent state seen per peer (from heartbeats).
    peer_agents: BTreeMap<NodeId, PeerAgentState>,
    installed_at: Option<std::time::Instant>,
    /// When the current round started (first event after a stable view).
    round_started: Option<std::time::Instant>,
    agreement: Arc<crate::metrics::Histogram>,
    quorate: bool,
    /// The quorum server client, when one is configured.
    qs: Option<QsLink>,
    /// Membership datagrams for the serial line (`crate::serial`).
    serial: Option<mpsc::Sender<Vec<u8>>>,
    /// Where package messages go (none: no packages configured).
    packages: Option<mpsc::Sender<PackageMessage>>,
    /// Links the kernel holds up that answer nothing (issue #12 row 12b).
    half_open: halfopen::Detector,
}

fn half_open_params(plan: &Plan) -> halfopen::Params {
    let c = &plan.config.cluster;
    halfopen::Params::for_timing(
        c.node_timeout.as_nanos() as u64,
        c.heartbeat_interval.as_nanos() as u64,
    )
}

/// The quorum server client and its socket.
struct QsLink {
    client: heartbeat_cluster::qserver::Client,
    socket: tokio::net::UdpSocket,
}

impl Runner {
    fn name(&self, id: NodeId) -> String {
        self.plan.name_of(id)
    }

    fn count(&mut self, what: &str) {
        *self.messages.entry(what.to_owned()).or_default() += 1;
    }

    fn feed(&mut self, input: Input) {
        let was_round = self.sm.in_round();
        let out = self.sm.handle(input);
        if !was_round && self.sm.in_round() && self.round_started.is_none() {
            self.round_started = Some(std::time::Instant::now());
        }
        for o in out {
            self.carry_out(o);
        }
        // Between rounds, keep the epoch reservation ahead of need, so that
        // the next round's promises make no durable write (`crate::state`).
        // A failed write is retried at most every 10 s (the promise itself
        // still writes, and says so, when the reservation runs out).
        let retry_due = self
            .refill_failed
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(10));
        if !self.sm.in_round() && self.state.running_low() && retry_due {
            match self.state.refill() {
                Ok(()) => self.refill_failed = None,
                Err(err) => {
                    tracing::error!(error = %err, "cannot extend the epoch reservation");
                    self.refill_failed = Some(std::time::Instant::now());
                }
            }
        }
    }

    fn send(&mut self, to: Dest, msg: &Message) {
        tracing::debug!(
            mono_ns = crate::clock::mono_ns(),
            kind = ?msg.msg_type(),
            to = ?to,
            "membership send"
        );
        let bytes = seal(&self.sealer, msg, &self.keys);
        let to = match to {
            Dest::All => None,
            Dest::Nodes(set) => Some(set),
        };
        let (mut sent, errors) = send_sealed(&self.plan, &self.sockets, to, &bytes);
        if errors > 0 {
            *self.messages.entry("send_errors".into()).or_default() += errors;
        }
        if let Some(tx) = &self.serial {
            let wanted = self
                .plan
                .peers
                .iter()
                .any(|p| to.is_none_or(|set| set.contains(p.id)));
            if wanted {
                match tx.try_send(bytes) {
                    Ok(()) => sent = true,
                    Err(_) => self.count("serial_queue_full"),
                }
            }
        }
        if sent {
            self.count("sent");
        }
    }

    fn carry_out(&mut self, o: Output) {
        match o {
            Output::Send { to, msg } => self.send(to, &msg),
            Output::PersistEpoch(e) => {
                if let Err(err) = self.state.save_epoch(e) {
                    // Acking an epoch that is not persisted could let this
                    // node accept an older view after a restart: say so
                    // loudly; the epoch is still held in memory.
                    tracing::error!(error = %err, "cannot persist the membership epoch");
                }
            }
            Output::Install(v) => self.install(v),
            Output::QuorumUpdated(q) => {
                let local = self.plan.local.id;
                let mut view = self.sm.view().copied();
                if let Some(v) = view.as_mut() {
                    v.quorum = q;
                }
                if let Some(v) = view {
                    self.publish_view(&v, local);
                    let mut e = journal::entry(
                        EventKind::QuorumChanged,
                        &self.plan.local.name,
                        q.tie_breaker.as_str(),
                        crate::clock::mono_ns(),
                    );
                    e.epoch = Some(v.epoch.0);
                    e.quorate = Some(q.quorate);
                    self.journal.record(e);
                }
            }
            Output::AskQuorumServer {
                epoch,
                members,
                votes,
                expected_votes,
            } => match (&mut self.qs, self.plan.config.quorum.quorum_server) {
                (Some(qs), Some(addr)) => {
                    let bytes =
                        qs.client
                            .request(epoch, members, votes, expected_votes, &self.keys);
                    match qs.socket.try_send_to(&bytes, addr) {
                        Ok(_) => self.count("quorum_server_requests"),
                        Err(_) => self.count("quorum_server_send_errors"),
                    }
                }
                _ => self.count("quorum_server_unavailable"),
            },
            Output::Event(ev) => {
                *self.causes.entry(ev.cause.as_str()).or_default() += 1;
                let mut e = journal::entry(
                    EventKind::Reformation,
                    &self.plan.local.name,
                    ev.cause.as_str(),
                    crate::clock::mono_ns(),
                );
                if let Some(n) = ev.node {
                    e.peer = Some(self.name(n));
                    e.peer_id = Some(n.0);
                }
                e.epoch = Some(ev.epoch.0);
                self.journal.record(e);
            }
            Output::Dropped { from, reason } => {
                self.count(&format!("dropped_{}", reason.as_str()));
                tracing::debug!(
                    from = from.0,
                    reason = reason.as_str(),
                    "membership message dropped"
                );
            }
        }
    }

    fn install(&mut self, v: View) {
        let local = self.plan.local.id;
        let members: Vec<String> = v.members.iter().map(|n| self.name(n)).collect();
        let coordinator = v.coordinator.map(|c| self.name(c));
        tracing::info!(
            epoch = v.epoch.0,
            members = ?members,
            coordinator = ?coordinator,
            quorate = v.quorum.quorate,
            "membership view installed"
        );
        if let Some(t) = self.round_started.take() {
            self.agreement.observe(t.elapsed().as_secs_f64());
        }
        let mut e = journal::entry(
            EventKind::ViewInstalled,
            &self.plan.local.name,
            v.quorum.tie_breaker.as_str(),
            crate::clock::mono_ns(),
        );
        e.epoch = Some(v.epoch.0);
        e.members = Some(members);
        e.coordinator = coordinator;
        e.quorate = Some(v.quorum.quorate && v.members.contains(local));
        self.journal.record(e);
        self.installed_at = Some(std::time::Instant::now());
        self.publish_view(&v, local);
    }

    fn publish_view(&mut self, v: &View, local: NodeId) {
        let quorate = v.quorum.quorate && v.members.contains(local);
        self.quorate = quorate;
        self.set_node_state();
        let members: Vec<String> = v.members.iter().map(|n| self.name(n)).collect();
        let coordinator = v.coordinator.map(|c| self.name(c));
        let tb = v.quorum.tie_breaker;
        let qs = self.plan.config.quorum.quorum_server.map(|_| {
            use heartbeat_cluster::quorum::TieBreaker;
            match tb {
                TieBreaker::QsGranted => "granted",
                TieBreaker::QsDenied => "refused",
                TieBreaker::QsUnreachable => "unreachable",
                _ => "not_needed",
            }
            .to_owned()
        });
        let installed = heartbeat_cluster::packages::ViewInfo {
            epoch: v.epoch,
            members: v.members,
            quorate,
            coordinator: v.coordinator,
        };
        self.view.send_modify(|cv| {
            cv.installed = Some(installed);
            cv.membership = MembershipStatus {
                epoch: v.epoch.0,
                coordinator,
                members,
                quorate,
                quorum: QuorumStatus {
                    votes_present: v.quorum.present_votes,
                    votes_needed: v.quorum.needed_votes,
                    votes_expected: v.quorum.expected_votes,
                    tie_breaker: tb.as_str().to_owned(),
                    quorum_server: qs,
                },
                since_s: Some(0.0),
                phase: String::new(),
            };
        });
    }

    /// The node state byte every heartbeat carries.
    fn set_node_state(&self) {
        let cur = self.shared.node_state.load(Ordering::Relaxed);
        let base = cur & node_state::MASK;
        let byte = if self.quorate {
            base | node_state::QUORATE
        } else {
            base
        };
        self.shared.node_state.store(byte, Ordering::Relaxed);
    }

    /// Publishes reachability, node states and counters.
    fn publish(&mut self) {
        let states = self.sm.node_states();
        let members = self.sm.view().map(|v| v.members).unwrap_or_default();
        let peers = self
            .reach
            .peers()
            .map(|p| PeerView {
                id: p.id,
                name: p.name.clone(),
                state: states
                    .get(&NodeId(p.id))
                    .map(|&s| api_state(s))
                    .unwrap_or(NodeState::Unknown),
                since_mono_ns: p.since_mono_ns,
                links: p.links.iter().map(|(&l, v)| (l, v.state)).collect(),
                member: members.contains(NodeId(p.id)),
                last_rx_ns: p.last_rx_ns,
                down_causes: p.links.iter().map(|(&l, v)| (l, v.downs.clone())).collect(),
            })
            .collect();
        let phase = if self.sm.view().is_none() && self.sm.in_round() {
            "forming"
        } else if self.sm.in_round() {
            "reforming"
        } else if self.sm.view().is_some() {
            "stable"
        } else {
            "starting"
        };
        let since = self.installed_at.map(|t| t.elapsed().as_secs_f64());
        let local_state = states
            .get(&self.plan.local.id)
            .map(|&s| api_state(s))
            .unwrap_or(NodeState::Unknown);
        let messages = self.messages.clone();
        let causes = self.causes.clone();
        let unknown = self.reach.unknown_events;
        self.view.send_modify(|v| {
            v.peers = peers;
            v.unknown_events = unknown;
            v.messages = messages;
            v.membership.phase = phase.to_owned();
            v.membership.since_s = since;
            v.local_state = local_state;
            v.reformations = causes.into_iter().map(|(k, n)| (k.to_owned(), n)).collect();
        });
    }

    fn on_transport(&mut self, ev: &TransportEvent) {
        tracing::debug!(mono_ns = crate::clock::mono_ns(), event = ?ev, "transport event");
        for e in self.reach.apply(ev) {
            self.journal.record(e);
        }
        let (peer, link, at_ns, said_up) = match *ev {
            TransportEvent::Link {
                peer,
                link,
                change,
                at_ns,
                ..
            } => (peer, link, at_ns, change == LinkChange::Up),
            TransportEvent::HalfOpen {
                peer,
                link,
                open,
                at_ns,
                ..
            } => (peer, link, at_ns, !open),
            _ => return,
        };
        // Membership follows reachability's verdict (a half-open link is
        // down, whatever the kernel says), or the event itself for a link
        // reachability does not know.
        let up = self.reach.link_up(peer, link).unwrap_or(said_up);
        let (peer, link) = (NodeId(peer), LinkId(link));
        self.feed(if up {
            Input::LinkUp { peer, link, at_ns }
        } else {
            Input::LinkDown { peer, link, at_ns }
        });
    }

    /// Issue #12 row 12b: feeds every (peer, link) of the snapshot to the
    /// half-open check and reports its changes as transport events.
    fn check_half_open(&mut self, fast: &FastSnapshot) {
        let now = crate::clock::mono_ns();
        let plan = self.plan.clone();
        for l in &plan.links {
            // Own requests per peer: the egress stamp's count, or (stamp
            // not attached) the sender's count on the link shared out.
            let link_sent = self
                .shared
                .link_stats(l.link_id.0)
                .map_or(0, |s| s.sent.load(Ordering::Relaxed))
                / (l.peers.len().max(1) as u64);
            for &(peer, _) in &l.peers {
                let (peer, link) = (peer.0, l.link_id.0);
                let Some(st) = fast.links.get(&(peer, link)) else {
                    continue;
                };
                let sample = halfopen::Sample {
                    replies_rx: st.replies_rx,
                    requests_rx: st.requests_rx,
                    sent: if st.own_tx_count != 0 {
                        st.own_tx_count
                    } else {
                        link_sent
                    },
                    kernel_up: st.up != 0,
                    peer_stale: st.peer_state & node_state::MASK == node_state::STALE,
                };
                let Some(change) = self.half_open.observe(peer, link, sample, now) else {
                    continue;
                };
                let (open, unanswered, silent_ns) = match change {
                    halfopen::Change::Opened {
                        unanswered,
                        silent_ns,
                    } => (true, unanswered, silent_ns),
                    halfopen::Change::Closed => (false, 0, 0),
                };
                self.on_transport(&TransportEvent::HalfOpen {
                    peer,
                    link,
                    open,
                    unanswered,
                    silent_ns,
                    at_ns: now,
                    last_rx_ns: st.last_rx_ns,
                });
            }
        }
    }

    fn on_datagram(&mut self, d: &Datagram) {
        match wire::decode(&d.bytes, &self.keys, self.plan.config.cluster.id) {
            Ok(msg) if msg.msg.is_package() => {
                self.count("package_received");
                let m = PackageMessage {
                    msg,
                    at_ns: d.at_ns,
                };
                if self
                    .packages
                    .as_ref()
                    .is_some_and(|p| p.try_send(m).is_err())
                {
                    self.count("package_dropped_queue_full");
                }
            }
            Ok(msg) => {
                tracing::debug!(
                    mono_ns = crate::clock::mono_ns(),
                    rx_ns = d.at_ns,
                    from = msg.header.sender.0,
                    kind = ?msg.msg.msg_type(),
                    "membership receive"
                );
                self.count("received");
                self.feed(Input::Message {
                    msg,
                    at_ns: d.at_ns,
                });
            }
            Err(reason) => self.count(&format!("dropped_{}", reason.as_str())),
        }
    }

    fn on_qs_answer(&mut self, bytes: &[u8]) {
        let now = crate::clock::mono_ns();
        let Some(qs) = self.qs.as_mut() else { return };
        match qs.client.answer(bytes, &self.keys, now) {
            Ok(input) => {
                self.count("quorum_server_answers");
                self.feed(input);
            }
            Err(reason) => self.count(&format!("quorum_server_dropped_{}", reason.as_str())),
        }
    }

    fn on_snapshot(&mut self, fast: &FastSnapshot) {
        self.check_half_open(fast);
        let now = crate::clock::mono_ns();
        let plan = self.plan.clone();
        for p in &plan.peers {
            // The newest state byte over the peer's links.
            let newest = p
                .links
                .iter()
                .filter_map(|&l| fast.links.get(&(p.id.0, l.0)))
                .max_by_key(|st| st.last_rx_ns);
            let Some(st) = newest else { continue };
            if st.last_rx_ns == 0 {
                continue;
            }
            let state = peer_agent(st.peer_state);
            if self.peer_agents.get(&p.id) != Some(&state) {
                self.peer_agents.insert(p.id, state);
                self.feed(Input::PeerAgent {
                    peer: p.id,
                    state,
                    at_ns: now,
                });
            }
        }
    }

    fn on_command(&mut self, call: Call) {
        let local = &self.plan.local.name;
        let (cmd, done) = match &call.request {
            Request::ClusterStart {} => (
                MCommand::ClusterStart,
                "cluster start: this node may form the cluster now".to_owned(),
            ),
            Request::NodeHalt { node } | Request::NodeStart { node }
                if node.as_deref().is_some_and(|n| n != local) =>
            {
                let _ = call.reply.send(Err(format!(
                    "this agent runs node {local}; halt or start {} through its own agent",
                    node.as_deref().unwrap_or_default()
                )));
                return;
            }
            Request::NodeHalt { .. } => (
                MCommand::NodeHalt,
                format!("node {local} is leaving the cluster (passive until `node start`)"),
            ),
            Request::NodeStart { .. } => (
                MCommand::NodeStart,
                format!("node {local} is joining the cluster"),
            ),
            other => {
                let _ = call
                    .reply
                    .send(Err(format!("{other:?} is not a cluster command")));
                return;
            }
        };
        let mut e = journal::entry(
            EventKind::Command,
            local,
            match cmd {
                MCommand::ClusterStart => "cluster_start",
                MCommand::NodeHalt => "node_halt",
                MCommand::NodeStart => "node_start",
            },
            crate::clock::mono_ns(),
        );
        e.detail = Some(done.clone());
        self.journal.record(e);
        let halting = cmd == MCommand::NodeHalt;
        let base = if halting {
            node_state::HALTING
        } else {
            node_state::RUNNING
        };
        let q = self.shared.node_state.load(Ordering::Relaxed) & node_state::QUORATE;
        self.shared.node_state.store(base | q, Ordering::Relaxed);
        self.feed(Input::Command {
            cmd,
            at_ns: crate::clock::mono_ns(),
        });
        let _ = call.reply.send(Ok(done));
    }

    fn escalate(&mut self, why: &str) {
        let mut e = journal::entry(
            EventKind::Command,
            &self.plan.local.name,
            "node_halt",
            crate::clock::mono_ns(),
        );
        e.detail = Some(format!("{why}: leaving the cluster"));
        self.journal.record(e);
        let q = self.shared.node_state.load(Ordering::Relaxed) & node_state::QUORATE;
        self.shared
            .node_state
            .store(node_state::HALTING | q, Ordering::Relaxed);
        self.feed(Input::Command {
            cmd: MCommand::NodeHalt,
            at_ns: crate::clock::mono_ns(),
        });
    }

    fn reconfigure(&mut self, plan: Arc<Plan>) {
        self.reach = self.reach.reconfigured(&link_view(&plan));
        self.half_open.set_params(half_open_params(&plan));
        self.half_open.retain(|peer, link| {
            plan.links
                .iter()
                .any(|l| l.link_id.0 == link && l.peers.iter().any(|&(p, _)| p.0 == peer))
        });
        self.keys = wire_keys(&plan);
        // Nodes added or removed, priorities, votes, quorum options and
        // timers: the state machine takes them live (a reformation follows
        // when the member set changes).
        match self.sm.reload(params(&plan), crate::clock::mono_ns()) {
            Ok(out) => {
                self.plan = plan;
                for o in out {
                    self.carry_out(o);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "membership keeps its parameters");
                self.plan = plan;
            }
        }
    }
}

/// Runs the cluster task until `cancel`; on the way out it announces a
/// graceful leave so that peers reform at once.
pub async fn run(
    plan: Arc<Plan>,
    journal: JournalHandle,
    mut ch: Channels,
    cancel: CancellationToken,
) {
    let now = crate::clock::mono_ns();
    let persisted = ch.state.current();
    let sm = Membership::new(params(&plan), persisted.epoch, persisted.incarnation, now);
    let mut r = Runner {
        reach: link_view(&plan),
        half_open: halfopen::Detector::new(half_open_params(&plan)),
        sealer: ch.sealer,
        keys: wire_keys(&plan),
        sm,
        plan,
        state: ch.state,
        refill_failed: None,
        journal,
        view: ch.view,
        sockets: ch.sockets,
        shared: ch.shared,
        messages: BTreeMap::new(),
        causes: BTreeMap::new(),
        peer_agents: BTreeMap::new(),
        installed_at: None,
        round_started: None,
        agreement: ch.agreement,
        quorate: false,
        qs: None,
        serial: ch.serial,
        packages: ch.packages,
    };
    if let Some(addr) = r.plan.config.quorum.quorum_server {
        let bind: std::net::SocketAddr = if addr.is_ipv4() {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        match tokio::net::UdpSocket::bind(bind).await {
            Ok(socket) => {
                r.qs = Some(QsLink {
                    client: heartbeat_cluster::qserver::Client::new(
                        r.plan.config.cluster.id,
                        r.plan.local.id,
                        persisted.incarnation,
                    ),
                    socket,
                });
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot open a socket for the quorum server; ties stay unbroken")
            }
        }
    }
    // Link events queued before the task started (an adopted fast path
    // replays the links it holds up) first: the first join must flood
    // what the kernel already knows, or peers drop this node for a round.
    while let Ok(ev) = ch.events.try_recv() {
        r.on_transport(&ev);
    }
    r.feed(Input::Tick { now_ns: now });
    r.publish();
    let mut qs_buf = vec![0u8; 2048];
    loop {
        let deadline = r.sm.next_deadline_ns();
        let sleep = deadline.map_or(Duration::from_millis(100), |d| {
            Duration::from_nanos(d.saturating_sub(crate::clock::mono_ns()))
                .min(Duration::from_millis(100))
        });
        tokio::select! {
            Some(ev) = ch.events.recv() => r.on_transport(&ev),
            Some(d) = ch.messages.recv() => r.on_datagram(&d),
            Ok(n) = async {
                match r.qs.as_ref() {
                    Some(q) => q.socket.recv(&mut qs_buf).await,
                    None => std::future::pending().await,
                }
            } => r.on_qs_answer(&qs_buf[..n]),
            Ok(()) = ch.fast.changed() => {
                let snap = ch.fast.borrow_and_update().clone();
                r.on_snapshot(&snap);
            }
            Some(cmd) = ch.commands.recv() => match cmd {
                Command::Reconfigure(p) => r.reconfigure(p),
                Command::Control(call) => r.on_command(call),
                Command::Escalate(why) => r.escalate(&why),
            },
            () = tokio::time::sleep(sleep) => {
                let now_ns = crate::clock::mono_ns();
                tracing::debug!(mono_ns = now_ns, due_ns = ?deadline, "membership timer");
                r.feed(Input::Tick { now_ns });
            }
            () = cancel.cancelled() => break,
        }
        r.publish();
    }
    // Announce the leave (the state machine sends Leave to every peer).
    r.feed(Input::Command {
        cmd: MCommand::NodeHalt,
        at_ns: crate::clock::mono_ns(),
    });
}
