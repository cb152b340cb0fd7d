//! A simulated cluster for the membership state machine: N nodes, a
//! directional link matrix (a→b can be cut one way), message loss and
//! delay, crash and restart with a persisted epoch and incarnation, and
//! invariant checks after every step. Messages go through the real wire
//! format (sealed, decoded, MAC-checked).

#![allow(dead_code)]

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::fmt::Write as _;

use heartbeat_cluster::membership::{
    Command, Dest, Input, Membership, NodeParams, Output, Params, PeerAgentState, StartMode,
    Timing, View,
};
use heartbeat_cluster::qserver::{Client, Server, ServerConfig};
use heartbeat_cluster::quorum::QuorumOptions;
use heartbeat_cluster::wire::{Keys, Sealer, decode};
use heartbeat_cluster::{Epoch, LinkId, NodeId, NodeSet, SipKey};

pub const MS: u64 = 1_000_000;
pub const CLUSTER: u32 = 7;
pub const KEY: SipKey = SipKey {
    k0: 0x0123_4567,
    k1: 0x89ab_cdef,
};

pub fn timing() -> Timing {
    Timing {
        join_interval_ns: MS,
        consensus_timeout_ns: 5 * MS,
        sync_interval_ns: 50 * MS,
        auto_start_timeout_ns: 20 * MS,
        restart_window_ns: 40 * MS,
        qs_timeout_ns: 20 * MS,
    }
}

/// Small xorshift RNG: the simulation is deterministic for a seed.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed | 1)
    }
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Ev {
    /// Deliver message index to node.
    Deliver { to: u16, msg: usize },
    /// Link state change seen by `at` about `peer`.
    Link { at: u16, peer: u16, up: bool },
    /// Peer agent state seen by `at`.
    Agent { at: u16, peer: u16, state: u8 },
    /// What `at` sees in `peer`'s heartbeats now (if it hears it).
    AgentTruth { at: u16, peer: u16 },
    /// A quorum server answer for node `to`.
    QsAnswer { to: u16, msg: usize },
}

pub struct SimNode {
    pub m: Option<Membership>,
    pub sealer: Sealer,
    pub incarnation: u32,
    pub persisted: Epoch,
    /// The link state this node's membership was last told, per peer.
    pub told_up: BTreeMap<u16, bool>,
    pub last_installed: Option<View>,
    /// XDP keeps answering (announced restart) while `m` is None.
    pub xdp_alive: bool,
}

pub struct Sim {
    pub n: u16,
    pub now: u64,
    pub nodes: BTreeMap<u16, SimNode>,
    /// `cut[a][b]`: a's packets do not reach b.
    pub cut: BTreeMap<(u16, u16), bool>,
    pub loss_pct: u64,
    pub max_delay_ns: u64,
    pub detect_ns: u64,
    pub rng: Rng,
    queue: BinaryHeap<Reverse<(u64, u64, Ev)>>,
    seq: u64,
    msgs: Vec<Vec<u8>>,
    pub log: String,
    pub quorate_by_epoch: BTreeMap<Epoch, NodeSet>,
    pub params: Vec<NodeParams>,
    pub options: QuorumOptions,
    pub start: StartMode,
    pub timing: Timing,
    pub installs: u64,
    pub allow_disjoint_quorate: bool,
    /// The quorum server, if any, and the nodes that cannot reach it.
    pub qserver: Option<Server<u16>>,
    pub qs_cut: NodeSet,
    pub verbose: bool,
    /// Halted nodes: their heartbeats announce `leaving`.
    pub halted: NodeSet,
    /// Nodes within an announced restart.
    pub restarting: NodeSet,
    clients: BTreeMap<u16, Client>,
}

impl Sim {
    pub fn new(n: u16, options: QuorumOptions, seed: u64) -> Self {
        let params: Vec<NodeParams> = (1..=n)
            .map(|i| NodeParams {
                id: NodeId(i),
                priority: 0,
                votes: 1,
            })
            .collect();
        let mut s = Self {
            n,
            now: 0,
            nodes: BTreeMap::new(),
            cut: BTreeMap::new(),
            loss_pct: 0,
            max_delay_ns: MS / 2,
            detect_ns: 5 * MS,
            rng: Rng::new(seed),
            queue: BinaryHeap::new(),
            seq: 0,
            msgs: Vec::new(),
            log: String::new(),
            quorate_by_epoch: BTreeMap::new(),
            params,
            options,
            start: StartMode::Auto,
            timing: timing(),
            installs: 0,
            allow_disjoint_quorate: options.two_node,
            qserver: None,
            qs_cut: NodeSet::EMPTY,
            verbose: false,
            halted: NodeSet::EMPTY,
            restarting: NodeSet::EMPTY,
            clients: BTreeMap::new(),
        };
        for i in 1..=n {
            s.nodes.insert(
                i,
                SimNode {
                    m: None,
                    sealer: Sealer::new(CLUSTER, NodeId(i), 0),
                    incarnation: 0,
                    persisted: Epoch(0),
                    told_up: BTreeMap::new(),
                    last_installed: None,
                    xdp_alive: false,
                },
            );
        }
        s
    }

    pub fn with_priorities(mut self, prio: &[(u16, u32)]) -> Self {
        for (id, p) in prio {
            if let Some(np) = self.params.iter_mut().find(|x| x.id == NodeId(*id)) {
                np.priority = *p;
            }
        }
        self
    }

    fn keys() -> Keys {
        Keys {
            current: KEY,
            next: None,
        }
    }

    fn params_for(&self, i: u16) -> Params {
        Params {
            local: NodeId(i),
            nodes: self.params.clone(),
            quorum: self.options,
            start: self.start,
            timing: self.timing,
        }
    }

    pub fn alive(&self, i: u16) -> bool {
        self.nodes[&i].m.is_some()
    }

    /// Whether node `b` receives packets from `a` (its XDP or agent).
    pub fn hears(&self, b: u16, a: u16) -> bool {
        let na = &self.nodes[&a];
        let a_up = na.m.is_some() || na.xdp_alive;
        a_up && !self.cut.get(&(a, b)).copied().unwrap_or(false)
    }

    fn push(&mut self, at: u64, ev: Ev) {
        self.seq += 1;
        self.queue.push(Reverse((at, self.seq, ev)));
    }

    /// Starts (or restarts) node `i` with its persisted epoch and a new
    /// incarnation; it is told its current link states, then ticked.
    pub fn start_node(&mut self, i: u16) {
        let now = self.now;
        let p = self.params_for(i);
        let links: Vec<(u16, bool)> = (1..=self.n)
            .filter(|&j| j != i)
            .map(|j| (j, self.hears(i, j)))
            .collect();
        let node = self.nodes.get_mut(&i).unwrap();
        node.incarnation += 1;
        node.sealer = Sealer::new(CLUSTER, NodeId(i), node.incarnation);
        let mut m = Membership::new(p, node.persisted, node.incarnation, now);
        node.told_up.clear();
        let mut outs = Vec::new();
        for (j, up) in links {
            node.told_up.insert(j, up);
            if up {
                m.handle_into(
                    Input::LinkUp {
                        peer: NodeId(j),
                        link: LinkId(0),
                        at_ns: now,
                    },
                    &mut outs,
                );
            }
        }
        node.m = Some(m);
        node.xdp_alive = true;
        self.halted.remove(NodeId(i));
        let inc = node.incarnation;
        self.clients.insert(i, Client::new(CLUSTER, NodeId(i), inc));
        let _ = writeln!(self.log, "{:>8}us start node {i}", now / 1000);
        self.process(i, outs);
        self.input(i, Input::Tick { now_ns: now });
        self.links_changed();
        // Its heartbeats show a running agent again.
        let d = self.max_delay_ns;
        self.announce(i, d);
    }

    /// Kills node `i` (agent and XDP); peers see its links go down.
    pub fn crash(&mut self, i: u16) {
        let _ = writeln!(self.log, "{:>8}us crash node {i}", self.now / 1000);
        let n = self.nodes.get_mut(&i).unwrap();
        n.m = None;
        n.xdp_alive = false;
        n.last_installed = None;
        self.halted.remove(NodeId(i));
        self.restarting.remove(NodeId(i));
        self.links_changed();
    }

    /// Announced restart: peers see `restarting`, XDP keeps answering, the
    /// agent comes back after `gap_ns` and peers see `running` again.
    pub fn announced_restart(&mut self, i: u16, gap_ns: u64) {
        if !self.alive(i) {
            return;
        }
        let _ = writeln!(
            self.log,
            "{:>8}us announced restart of node {i}",
            self.now / 1000
        );
        self.restarting.insert(NodeId(i));
        self.announce(i, 0);
        let n = self.nodes.get_mut(&i).unwrap();
        n.m = None;
        n.last_installed = None;
        self.run_for(gap_ns);
        self.restarting.remove(NodeId(i));
        self.start_node(i);
        self.announce(i, 0);
    }

    /// Peers see `i`'s state in its heartbeats after `delay`.
    fn announce(&mut self, i: u16, delay: u64) {
        for j in 1..=self.n {
            if j != i {
                let at = self.now + delay;
                self.push(at, Ev::AgentTruth { at: j, peer: i });
            }
        }
    }

    pub fn command(&mut self, i: u16, cmd: Command) {
        if self.alive(i) {
            let _ = writeln!(self.log, "{:>8}us node {i} {cmd:?}", self.now / 1000);
            let at_ns = self.now;
            self.input(i, Input::Command { cmd, at_ns });
            // The heartbeats announce the node's state to whoever hears it.
            match cmd {
                Command::NodeHalt => {
                    self.halted.insert(NodeId(i));
                }
                Command::NodeStart => self.halted.remove(NodeId(i)),
                Command::ClusterStart => {}
            }
            let d = self.max_delay_ns;
            self.announce(i, d);
        }
    }

    /// Sets a directional cut and schedules the link events.
    pub fn set_cut(&mut self, a: u16, b: u16, cut: bool) {
        if a == b {
            return;
        }
        let _ = writeln!(
            self.log,
            "{:>8}us {} {a}->{b}",
            self.now / 1000,
            if cut { "cut" } else { "heal" }
        );
        self.cut.insert((a, b), cut);
        self.links_changed();
    }

    pub fn partition(&mut self, group: NodeSet) {
        let _ = writeln!(self.log, "{:>8}us partition {group}", self.now / 1000);
        for a in 1..=self.n {
            for b in 1..=self.n {
                if a != b {
                    let split = group.contains(NodeId(a)) != group.contains(NodeId(b));
                    self.cut.insert((a, b), split);
                }
            }
        }
        self.links_changed();
    }

    pub fn heal_all(&mut self) {
        let _ = writeln!(self.log, "{:>8}us heal all", self.now / 1000);
        self.cut.clear();
        self.links_changed();
    }

    /// Every node's link view follows `hears` after the detection delay.
    fn links_changed(&mut self) {
        for b in 1..=self.n {
            for a in 1..=self.n {
                if a != b {
                    let up = self.hears(b, a);
                    let at = self.now + self.detect_ns;
                    self.push(at, Ev::Link { at: b, peer: a, up });
                }
            }
        }
    }

    pub fn input(&mut self, i: u16, input: Input) {
        let Some(m) = self.nodes.get_mut(&i).and_then(|n| n.m.as_mut()) else {
            return;
        };
        let outs = m.handle(input);
        self.process(i, outs);
    }

    fn process(&mut self, i: u16, outs: Vec<Output>) {
        for o in outs {
            match o {
                Output::Send { to, msg } => {
                    if self.verbose {
                        let _ = writeln!(
                            self.log,
                            "{:>8}us   node {i} sends {to:?} {msg:?}",
                            self.now / 1000
                        );
                    }
                    let bytes = self.nodes.get_mut(&i).unwrap().sealer.seal(&msg, KEY);
                    let dests: Vec<u16> = match to {
                        Dest::All => (1..=self.n).filter(|&j| j != i).collect(),
                        Dest::Nodes(s) => s.iter().map(|n| n.0).filter(|&j| j != i).collect(),
                    };
                    let idx = self.msgs.len();
                    self.msgs.push(bytes);
                    for j in dests {
                        if self.cut.get(&(i, j)).copied().unwrap_or(false) {
                            continue;
                        }
                        if self.rng.below(100) < self.loss_pct {
                            continue;
                        }
                        let d = self.rng.below(self.max_delay_ns + 1);
                        let at = self.now + d;
                        self.push(at, Ev::Deliver { to: j, msg: idx });
                    }
                }
                Output::PersistEpoch(e) => {
                    let n = self.nodes.get_mut(&i).unwrap();
                    assert!(
                        e >= n.persisted,
                        "node {i} persisted epoch {e} below {}\n{}",
                        n.persisted,
                        self.log
                    );
                    n.persisted = e;
                }
                Output::Install(v) => self.on_install(i, v),
                Output::Event(e) => {
                    let _ = writeln!(
                        self.log,
                        "{:>8}us   node {i} event {} {:?} epoch {}",
                        self.now / 1000,
                        e.cause.as_str(),
                        e.node.map(|n| n.0),
                        e.epoch
                    );
                }
                Output::AskQuorumServer {
                    epoch,
                    members,
                    votes,
                    expected_votes,
                } => {
                    if self.qs_cut.contains(NodeId(i)) {
                        continue;
                    }
                    let now = self.now;
                    let req = self.clients.get_mut(&i).unwrap().request(
                        epoch,
                        members,
                        votes,
                        expected_votes,
                        &Self::keys(),
                    );
                    if let Some(srv) = self.qserver.as_mut() {
                        let replies = srv.handle(&req, i, now);
                        self.qs_replies(replies);
                    }
                }
                Output::QuorumUpdated(_) | Output::Dropped { .. } => {}
            }
        }
    }

    fn on_install(&mut self, i: u16, v: View) {
        self.installs += 1;
        let _ = writeln!(
            self.log,
            "{:>8}us   node {i} installs epoch {} members {} coord {:?} quorate {}",
            self.now / 1000,
            v.epoch,
            v.members,
            v.coordinator.map(|c| c.0),
            v.quorum.quorate
        );
        let n = self.nodes.get_mut(&i).unwrap();
        // Epochs never go back on a node (across restarts: persisted).
        assert!(
            v.epoch >= n.persisted,
            "node {i} installed epoch {} below persisted {}\n{}",
            v.epoch,
            n.persisted,
            self.log
        );
        if let Some(prev) = n.last_installed {
            assert!(
                v.epoch >= prev.epoch,
                "node {i} went back from epoch {} to {}\n{}",
                prev.epoch,
                v.epoch,
                self.log
            );
        }
        n.last_installed = Some(v);
        if v.quorum.quorate && !v.members.is_empty() {
            // At most one quorate member set per epoch.
            if let Some(prev) = self.quorate_by_epoch.get(&v.epoch)
                && !self.allow_disjoint_quorate
            {
                assert_eq!(
                    *prev, v.members,
                    "two quorate views at epoch {}\n{}",
                    v.epoch, self.log
                );
            }
            self.quorate_by_epoch.insert(v.epoch, v.members);
        }
        self.check_no_disjoint_quorate();
    }

    /// Never two disjoint member sets installed as quorate at once.
    pub fn check_no_disjoint_quorate(&self) {
        if self.allow_disjoint_quorate {
            return;
        }
        let current: Vec<(u16, View)> = self
            .nodes
            .iter()
            .filter(|(_, n)| n.m.is_some())
            .filter_map(|(i, n)| n.last_installed.map(|v| (*i, v)))
            .filter(|(_, v)| v.quorum.quorate && !v.members.is_empty())
            .collect();
        for (i, a) in &current {
            for (j, b) in &current {
                assert!(
                    !a.members.intersection(b.members).is_empty(),
                    "disjoint quorate views: node {i} {} and node {j} {}\n{}",
                    a.members,
                    b.members,
                    self.log
                );
            }
        }
    }

    fn qs_replies(&mut self, replies: Vec<heartbeat_cluster::qserver::Reply<u16>>) {
        for r in replies {
            if self.qs_cut.contains(NodeId(r.to)) {
                continue;
            }
            let idx = self.msgs.len();
            self.msgs.push(r.bytes);
            let at = self.now + self.max_delay_ns / 2;
            self.push(at, Ev::QsAnswer { to: r.to, msg: idx });
        }
    }

    fn next_deadline(&self) -> Option<(u64, u16)> {
        let qs = self
            .qserver
            .as_ref()
            .and_then(|s| s.next_deadline_ns())
            .map(|d| (d.max(self.now), 0u16));
        self.nodes
            .iter()
            .filter_map(|(i, n)| {
                n.m.as_ref()
                    .and_then(|m| m.next_deadline_ns())
                    .map(|d| (d.max(self.now), *i))
            })
            .chain(qs)
            .min()
    }

    /// Runs the simulation for `dur_ns`.
    pub fn run_for(&mut self, dur_ns: u64) {
        let end = self.now + dur_ns;
        let mut steps = 0u64;
        loop {
            steps += 1;
            assert!(
                steps < 5_000_000,
                "simulation does not progress\n{}",
                self.log
            );
            let q = self.queue.peek().map(|Reverse((t, _, _))| *t);
            let d = self.next_deadline();
            let next = match (q, d) {
                (Some(a), Some((b, _))) => a.min(b),
                (Some(a), None) => a,
                (None, Some((b, _))) => b,
                (None, None) => {
                    self.now = end;
                    return;
                }
            };
            if next > end {
                self.now = end;
                return;
            }
            self.now = next;
            if q == Some(next) {
                let Reverse((_, _, ev)) = self.queue.pop().unwrap();
                self.deliver(ev);
            } else if let Some((_, i)) = d {
                let now_ns = self.now;
                if i == 0 {
                    if let Some(srv) = self.qserver.as_mut() {
                        let replies = srv.tick(now_ns);
                        self.qs_replies(replies);
                    }
                } else {
                    self.input(i, Input::Tick { now_ns });
                }
            }
        }
    }

    fn deliver(&mut self, ev: Ev) {
        let at_ns = self.now;
        match ev {
            Ev::Deliver { to, msg } => {
                if !self.alive(to) {
                    return;
                }
                let a = decode(&self.msgs[msg], &Self::keys(), CLUSTER).expect("valid message");
                self.input(to, Input::Message { msg: a, at_ns });
            }
            Ev::Link { at, peer, up } => {
                // Apply the current truth (a later change supersedes).
                let up_now = self.hears(at, peer);
                if up != up_now {
                    return;
                }
                let Some(n) = self.nodes.get_mut(&at) else {
                    return;
                };
                if n.m.is_none() || n.told_up.get(&peer).copied() == Some(up) {
                    return;
                }
                n.told_up.insert(peer, up);
                if up {
                    self.agent_truth(at, peer);
                }
                let input = if up {
                    Input::LinkUp {
                        peer: NodeId(peer),
                        link: LinkId(0),
                        at_ns,
                    }
                } else {
                    Input::LinkDown {
                        peer: NodeId(peer),
                        link: LinkId(0),
                        at_ns,
                    }
                };
                self.input(at, input);
            }
            Ev::QsAnswer { to, msg } => {
                if !self.alive(to) {
                    return;
                }
                let bytes = self.msgs[msg].clone();
                let Some(c) = self.clients.get_mut(&to) else {
                    return;
                };
                if let Ok(input) = c.answer(&bytes, &Self::keys(), at_ns) {
                    self.input(to, input);
                }
            }
            Ev::AgentTruth { at, peer } => self.agent_truth(at, peer),
            Ev::Agent { at, peer, state } => {
                let state = match state {
                    0 => PeerAgentState::Running,
                    1 => PeerAgentState::Stale,
                    2 => PeerAgentState::Restarting,
                    _ => PeerAgentState::Leaving,
                };
                self.input(
                    at,
                    Input::PeerAgent {
                        peer: NodeId(peer),
                        state,
                        at_ns,
                    },
                );
            }
        }
    }

    /// Feeds `at` the state `peer`'s heartbeats carry, if it hears them.
    fn agent_truth(&mut self, at: u16, peer: u16) {
        if !self.hears(at, peer) {
            return;
        }
        let state = if self.halted.contains(NodeId(peer)) {
            PeerAgentState::Leaving
        } else if self.restarting.contains(NodeId(peer)) {
            PeerAgentState::Restarting
        } else {
            PeerAgentState::Running
        };
        let at_ns = self.now;
        self.input(
            at,
            Input::PeerAgent {
                peer: NodeId(peer),
                state,
                at_ns,
            },
        );
    }

    pub fn view(&self, i: u16) -> Option<View> {
        self.nodes[&i].m.as_ref().and_then(|m| m.view().copied())
    }

    /// Nodes `a` and `b` are mutually connected right now.
    pub fn mutual(&self, a: u16, b: u16) -> bool {
        self.hears(a, b) && self.hears(b, a)
    }

    /// Every live node is a member of its own view, every member of a
    /// view holds the same view, and members are pairwise mutually
    /// connected.
    pub fn check_agreement(&self) {
        for (i, n) in &self.nodes {
            let Some(m) = &n.m else { continue };
            let Some(v) = m.view().copied() else {
                panic!("node {i} has no view\n{}", self.log)
            };
            if v.members.is_empty() {
                continue; // halted
            }
            assert!(
                v.members.contains(NodeId(*i)),
                "node {i} not in its view {}\n{}",
                v.members,
                self.log
            );
            for j in v.members.iter() {
                let vj = self.view(j.0);
                assert_eq!(
                    vj,
                    Some(v),
                    "node {i} and member {j} disagree\n{}",
                    self.log
                );
                for k in v.members.iter() {
                    if j != k {
                        assert!(
                            self.mutual(j.0, k.0),
                            "members {j} and {k} of {} are not mutually connected\n{}",
                            v.members,
                            self.log
                        );
                    }
                }
            }
        }
    }

    pub fn with_qserver(mut self) -> Self {
        let mut cfg = ServerConfig::new(Some(CLUSTER), Self::keys());
        cfg.lease_ns = 300 * MS;
        cfg.settle_ns = 5 * MS;
        self.qserver = Some(Server::new(cfg, 1));
        self
    }

    pub fn start_all(&mut self) {
        for i in 1..=self.n {
            self.start_node(i);
        }
    }
}
