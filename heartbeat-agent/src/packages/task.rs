//! The packages subsystem task: feeds the packages state machine
//! (`heartbeat_cluster::packages`) with the agreed view, package messages,
//! action results and operator commands, and carries out its decisions:
//! actions (scripts or OCF agents, with the package's addresses), kernel
//! leases (the fast path), messages (sealed like membership messages) and
//! journal entries. Publishes what status and metrics show.
//!
//! With a serial line (issue #11, two-node clusters): the line's survivor
//! verdict goes to the state machine ([`Input::Serial`]); while a split is
//! in force (every network link to the peer down, the line up), package
//! messages go on the line too (a changed one at once, an unchanged
//! resend at most every [`LINE_RESEND`], within the line's byte budget for
//! membership), and the line's frames carry which packages hold here and
//! whether this node, having lost the rule, stopped them all.
//!
//! Start-up ("stop before join"): [`stop_all`] runs every package's stop
//! action and removes its addresses before the cluster task starts, so a
//! node that restarts unannounced never carries a stale service into the
//! cluster. Shutdown: every package that runs here is stopped (lease
//! released first) before the task ends.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use heartbeat_api::status::PackageStatus;
use heartbeat_cluster::{
    NodeId, NodeSet,
    lease::LeaseTiming,
    packages::{
        Action, ActionResult, Blocker, Dest, Event, Input, Output, PackageParams, Packages, Params,
        ViewInfo,
    },
    placement::{PackageId, Reason},
    wire::{Keys, OperatorOp, ReplayGuard},
};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::{
    addresses::{self, Addresses, PackageAddress},
    runner::{self, ActionContext, Outcome, Recovery, Runner, RunnerConfig},
};
use crate::{
    clock,
    cluster::{self, ClusterView, PackageMessage, SharedSealer},
    config::PackageConfig,
    control::{Call, Request},
    fastpath::{self, FastSnapshot, LeaseSpec},
    journal::{self, EventKind, JournalHandle},
    plan::Plan,
    sender::Shared,
    transport::LinkSocket,
};

/// What status and metrics read.
#[derive(Clone, Debug)]
pub struct PackagesView {
    pub packages: Vec<PackageStatus>,
    pub frozen: bool,
    /// Script runs by (action, result).
    pub runs: BTreeMap<(String, String), u64>,
    /// Failovers (placements that moved a package) by reason.
    pub failovers: BTreeMap<String, u64>,
    /// Action durations (start, stop, monitor), for the histograms.
    pub run_seconds: Arc<[crate::metrics::Histogram; 3]>,
}

impl Default for PackagesView {
    fn default() -> Self {
        let h = || crate::metrics::Histogram::new(&SCRIPT_BOUNDS);
        Self {
            packages: Vec::new(),
            frozen: false,
            runs: BTreeMap::new(),
            failovers: BTreeMap::new(),
            run_seconds: Arc::new([h(), h(), h()]),
        }
    }
}

/// Upper bounds (seconds) of the action duration histograms.
const SCRIPT_BOUNDS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0,
];

/// The actions, in the order of `PackagesView::run_seconds`.
pub const ACTIONS: [&str; 3] = ["start", "stop", "monitor"];

/// The serial line, as the packages task uses it.
pub struct SerialLink {
    /// The line's survivor verdict (notified when it changes).
    pub verdict: watch::Receiver<heartbeat_cluster::survivor::Verdict>,
    /// Sealed datagrams for the line (shared with membership).
    pub out: mpsc::Sender<Vec<u8>>,
    /// What the line's frames say about the packages here.
    pub handle: Arc<crate::serial::SerialHandle>,
}

/// Least time between two copies of an unchanged package message on the
/// serial line (a changed one goes at once).
const LINE_RESEND: Duration = Duration::from_millis(250);

/// The task's channels.
pub struct Channels {
    pub view: watch::Receiver<ClusterView>,
    pub messages: mpsc::Receiver<PackageMessage>,
    pub calls: mpsc::Receiver<Call>,
    /// A clean stop asks for the packages' hand-over (`Input::Drain`);
    /// answered once [`Packages::drained`].
    pub drain: mpsc::Receiver<tokio::sync::oneshot::Sender<()>>,
    pub fast: mpsc::Sender<fastpath::Command>,
    pub fast_snapshot: watch::Receiver<FastSnapshot>,
    /// Leases the fast path found run out while held.
    pub lapses: mpsc::UnboundedReceiver<fastpath::LeaseLapse>,
    pub cluster: mpsc::Sender<cluster::Command>,
    pub sealer: SharedSealer,
    pub sockets: Vec<LinkSocket>,
    pub shared: Arc<Shared>,
    pub status: watch::Sender<PackagesView>,
    /// Which card carries each link now (standby NIC takeover).
    pub cards: Arc<crate::netif::Cards>,
    /// The serial line, when one is configured.
    pub serial: Option<SerialLink>,
}

/// Longest the fast path may take to confirm the view's members.
const GRANTS_ACK: Duration = Duration::from_secs(1);

/// Longest a fence command may run.
const FENCE_TIMEOUT: Duration = Duration::from_secs(30);

/// How often the state machine is ticked at the least.
const IDLE_TICK: Duration = Duration::from_millis(100);

/// How long a clean stop waits for the packages' hand-over
/// (`Input::Drain`): the longest `stop_timeout`, plus a second for the
/// placement and the successor's report; nothing without packages.
pub fn hand_over_bound(config: &crate::config::ClusterConfig) -> Duration {
    config
        .packages
        .iter()
        .map(|p| p.spec.timeouts.stop)
        .max()
        .map_or(Duration::ZERO, |m| m.saturating_add(Duration::from_secs(1)))
}

/// The state machine's parameters from the plan.
pub fn params(plan: &Plan) -> Params {
    let c = &plan.config.cluster;
    let timing = LeaseTiming::new(
        c.package_lease.as_nanos() as u64,
        c.clock_drift_ppm,
        c.lease_margin.as_nanos() as u64,
    )
    .unwrap_or(LeaseTiming {
        lease_ns: c.node_timeout.as_nanos() as u64,
        drift_ppm: 500,
        margin_ns: 200_000,
    });
    Params {
        local: plan.local.id,
        packages: super::policies(&plan.config.packages)
            .into_iter()
            .zip(&plan.config.packages)
            .map(|(policy, p)| PackageParams {
                policy,
                restart_limit: p.restart_limit,
                monitor_interval_ns: p.spec.timeouts.monitor_interval.as_nanos() as u64,
            })
            .collect(),
        timing,
        // Reports and placements are re-sent every 20 heartbeats (a lost
        // one is repaired quickly; at 1 ms that is 50 messages/s).
        resend_ns: (c.heartbeat_interval.as_nanos() as u64)
            .saturating_mul(20)
            .max(10_000_000),
        fenceable: plan.config.nodes.iter().filter(|n| n.fence.is_some()).fold(
            NodeSet::default(),
            |mut s, n| {
                s.insert(n.id);
                s
            },
        ),
    }
}

/// `p` with its addresses placed on this node's devices: an address
/// written without `dev` goes on the heartbeat link of its subnet (one that
/// matches no link is left out, with an error in the log), and on the
/// link's standby card while that card carries the link (`cards`).
pub fn localized(
    plan: &Plan,
    p: &PackageConfig,
    cards: Option<&crate::netif::Cards>,
) -> PackageConfig {
    let links: Vec<(std::net::IpAddr, &str)> = plan
        .local
        .links
        .iter()
        .map(|l| (l.address, l.interface.as_str()))
        .collect();
    let mut out = p.clone();
    out.addresses = p
        .addresses
        .iter()
        .filter_map(|a| {
            let r = a
                .resolve(links.iter().copied())
                .map(|r| match cards {
                    Some(c) => r.on_device(&c.carrier_of(r.dev())),
                    None => r,
                });
            if r.is_none() {
                tracing::error!(package = %p.spec.name.as_str(), address = %a, "no link of this node is on the address's subnet: it cannot be served here");
            }
            r
        })
        .collect();
    out
}

/// The result of an action in the state machine's terms.
fn result_of(action: Action, outcome: &Outcome) -> ActionResult {
    match outcome.failure(action) {
        None => ActionResult::Ok,
        Some(Recovery::Soft) => ActionResult::Soft,
        Some(Recovery::Hard) => ActionResult::Hard,
        Some(Recovery::Fatal) => ActionResult::Fatal,
    }
}

/// When a start announces its addresses again (after the first burst):
/// by then the new owner's kernel lease is valid, even for a node whose
/// successors grant it only once they applied the placement.
const LATE_ANNOUNCEMENTS: [Duration; 3] = [
    Duration::from_millis(10),
    Duration::from_millis(30),
    Duration::from_millis(100),
];

/// Runs one action of `pkg` with its addresses: a start adds them first
/// and announces them while its script runs; a stop removes them after (also when the
/// stop failed: the service may run, but not at the package's address).
async fn act(
    runner: &Runner,
    addrs: Option<&Addresses>,
    pkg: &PackageConfig,
    action: Action,
    ctx: &ActionContext,
    announce: u32,
    journal: &JournalHandle,
) -> (Outcome, Duration) {
    let started = Instant::now();
    let name = pkg.spec.name.as_str().to_owned();
    let node = ctx.node.clone();
    let mut on_line = |l: runner::OutputLine| {
        let mut e = journal::entry(
            EventKind::PackageOutput,
            &node,
            action.as_str(),
            clock::mono_ns(),
        );
        e.package = Some(name.clone());
        e.detail = Some(l.text);
        journal.record(e);
    };
    if action == Action::Start {
        for a in &pkg.addresses {
            let r = match addrs {
                Some(x) => x.add(a).await.map(|_| ()),
                None => Err(addresses::AddressError::NoSuchDevice(a.dev().to_owned())),
            };
            if let Err(e) = r {
                return (
                    Outcome::SpawnFailed(format!("adding address {a}: {e}")),
                    started.elapsed(),
                );
            }
        }
    }
    // A start announces its addresses while its script runs, not after:
    // clients' neighbour caches move to this node as soon as the address
    // is here (as IPaddr2 ordered before a service, or keepalived, do), so
    // the script's own run time is not added to the failover. Until the
    // service listens, clients are refused rather than left waiting.
    let announcing = async {
        if action != Action::Start {
            return;
        }
        if let Some(x) = addrs {
            for a in &pkg.addresses {
                if let Err(e) = addresses::announce(x, a, announce, Duration::from_millis(1)).await
                {
                    tracing::warn!(package = %name, address = %a, error = %e, "cannot announce the address");
                }
                // Again once the lease is surely valid (see announce_later).
                if announce > 0
                    && let Err(e) = addresses::announce_later(x, a, &LATE_ANNOUNCEMENTS).await
                {
                    tracing::warn!(package = %name, address = %a, error = %e, "cannot announce the address");
                }
            }
        }
    };
    let (report, ()) = tokio::join!(runner.run(&pkg.spec, action, ctx, &mut on_line), announcing);
    if action == Action::Stop
        && let Some(x) = addrs
    {
        remove_addresses(x, &pkg.addresses, &name).await;
    }
    (report.outcome, started.elapsed())
}

async fn remove_addresses(x: &Addresses, list: &[PackageAddress], name: &str) {
    for a in list {
        if let Err(e) = x.remove(a).await {
            tracing::warn!(package = %name, address = %a, error = %e, "cannot remove the address");
        }
    }
}

/// Removes every local package address (before a stale fence is
/// detached at start: the address must not be reachable unfenced).
pub async fn remove_all_addresses(plan: &Plan) {
    let Ok(addrs) = Addresses::new() else {
        tracing::error!("cannot open rtnetlink: package addresses are not removed");
        return;
    };
    for p in &plan.config.packages {
        let p = localized(plan, p, None);
        remove_addresses(&addrs, &p.addresses, p.spec.name.as_str()).await;
    }
}

/// Stop before join: runs every package's stop (in parallel) and removes
/// its addresses. Returns the packages whose stop failed.
pub async fn stop_all(plan: &Plan, journal: &JournalHandle) -> BTreeSet<PackageId> {
    let runner = Runner::new(RunnerConfig::default());
    let addrs = match Addresses::new() {
        Ok(a) => Some(a),
        Err(e) => {
            tracing::error!(error = %e, "cannot open rtnetlink: package addresses are not removed");
            None
        }
    };
    let ctx = ActionContext {
        node: plan.local.name.clone(),
        epoch: heartbeat_cluster::Epoch(0),
        reason: "stop before join (agent start)".to_owned(),
        previous_node: None,
    };
    let runs = plan.config.packages.iter().enumerate().map(|(i, p)| {
        let (runner, addrs, ctx) = (&runner, addrs.as_ref(), &ctx);
        let p = localized(plan, p, None);
        async move {
            let (outcome, took) = act(runner, addrs, &p, Action::Stop, ctx, 0, journal).await;
            let failed = result_of(Action::Stop, &outcome) != ActionResult::Ok;
            let mut e = journal::entry(
                EventKind::PackageAction,
                &plan.local.name,
                "stop",
                clock::mono_ns(),
            );
            e.package = Some(p.spec.name.as_str().to_owned());
            e.detail = Some(format!(
                "stop before join: {outcome} in {:.1} ms",
                took.as_secs_f64() * 1e3
            ));
            journal.record(e);
            (PackageId(i as u16), failed)
        }
    });
    futures_util::future::join_all(runs)
        .await
        .into_iter()
        .filter_map(|(id, failed)| failed.then_some(id))
        .collect()
}

/// One finished action, back from its task.
struct Finished {
    pkg: PackageId,
    action: Action,
    outcome: Outcome,
    took: Duration,
}

struct Task {
    plan: Arc<Plan>,
    sm: Packages,
    journal: JournalHandle,
    runner: Arc<Runner>,
    addrs: Option<Arc<Addresses>>,
    keys: Keys,
    guard: ReplayGuard,
    fast: mpsc::Sender<fastpath::Command>,
    cluster: mpsc::Sender<cluster::Command>,
    sealer: SharedSealer,
    sockets: Vec<LinkSocket>,
    shared: Arc<Shared>,
    cards: Arc<crate::netif::Cards>,
    done_tx: mpsc::Sender<Finished>,
    fence_tx: mpsc::Sender<(NodeId, bool)>,
    /// The lease of each package as the state machine gave it: renew,
    /// successors, generation, epoch.
    leases: BTreeMap<PackageId, (bool, NodeSet, u32, heartbeat_cluster::Epoch)>,
    view: PackagesView,
    last_failover: BTreeMap<PackageId, String>,
    last_view: Option<ViewInfo>,
    /// The members the kernel grants lease anchors to.
    granted: NodeSet,
    /// Members of the view of this epoch waiting for its placement.
    admitting: Option<(heartbeat_cluster::Epoch, NodeSet)>,
    /// The serial line's sender and handle, when one is configured.
    line: Option<(mpsc::Sender<Vec<u8>>, Arc<crate::serial::SerialHandle>)>,
    /// Per message kind: what last went on the line, and when.
    line_sent: BTreeMap<u8, (LineKey, Instant)>,
}

/// What makes a package message new for the line (a report's silence
/// ages change at every resend and do not count).
#[derive(Clone, Debug, PartialEq, Eq)]
enum LineKey {
    Report(u64, u32, Vec<heartbeat_cluster::wire::PkgEntry>),
    Placement(u64, u32),
    Other,
}

impl LineKey {
    fn of(msg: &heartbeat_cluster::wire::Message) -> (u8, Self) {
        use heartbeat_cluster::wire::Message as M;
        match msg {
            M::PkgReport(r) => (
                0,
                Self::Report(r.epoch.0, r.placement_seq, r.entries.clone()),
            ),
            M::PkgPlacement(p) => (1, Self::Placement(p.epoch.0, p.seq)),
            _ => (2, Self::Other),
        }
    }
}

impl Task {
    fn name_of(&self, pkg: PackageId) -> String {
        self.plan
            .config
            .packages
            .get(usize::from(pkg.0))
            .map_or_else(
                || format!("package{}", pkg.0),
                |p| p.spec.name.as_str().to_owned(),
            )
    }

    fn feed(&mut self, input: Input) {
        let out = self.sm.handle(input);
        self.carry_out(out);
        self.line_status();
        // Admit the view's new members once its placement is applied here
        // (the releases it caused are ahead in the fast path's queue).
        if let Some((epoch, new)) = self.admitting
            && self.sm.placement().is_some_and(|p| p.epoch == epoch)
        {
            let all = self.granted.union(new);
            if self
                .fast
                .try_send(fastpath::Command::SetGrants {
                    members: all.bits(),
                    done: None,
                })
                .is_ok()
            {
                self.granted = all;
                self.admitting = None;
            }
        }
    }

    fn carry_out(&mut self, out: Vec<Output>) {
        let mut leases_changed = false;
        for o in out {
            match o {
                Output::Run {
                    pkg,
                    action,
                    epoch,
                    reason,
                } => self.run(pkg, action, epoch, reason),
                Output::Lease {
                    pkg,
                    renew,
                    successors,
                    generation,
                    epoch,
                } => {
                    self.leases
                        .insert(pkg, (renew, successors, generation, epoch));
                    leases_changed = true;
                }
                Output::Release { pkg } => {
                    if let Some(l) = self.leases.get_mut(&pkg) {
                        l.0 = false;
                        l.1 = NodeSet::default();
                    }
                    // Ahead of the set below: the stop's report must not
                    // leave before the kernel stops serving.
                    let _ = self.fast.try_send(fastpath::Command::ReleaseLease(pkg.0));
                    leases_changed = true;
                }
                Output::Send { to, msg } => {
                    let bytes = cluster::seal(&self.sealer, &msg, &self.keys);
                    let to = match to {
                        Dest::All => None,
                        Dest::Node(n) => Some(NodeSet::single(n)),
                    };
                    cluster::send_sealed(&self.plan, &self.sockets, to, &bytes);
                    self.send_on_line(&msg, bytes);
                }
                Output::Escalate { pkg } => {
                    let name = self.name_of(pkg);
                    tracing::error!(package = %name, "stop failed: leaving the cluster so that the package's lease runs out everywhere");
                    let mut e = journal::entry(
                        EventKind::PackageFailed,
                        &self.plan.local.name,
                        "stop_failed",
                        clock::mono_ns(),
                    );
                    e.package = Some(name.clone());
                    e.detail = Some(
                        "the stop failed: the service may still run here; its addresses are \
                         removed, its lease released, and this node leaves the cluster"
                            .to_owned(),
                    );
                    self.journal.record(e);
                    let _ = self.cluster.try_send(cluster::Command::Escalate(format!(
                        "stop of package {name} failed"
                    )));
                }
                Output::Fence { node } => self.fence(node),
                Output::Event(ev) => self.event(ev),
            }
        }
        if leases_changed {
            self.push_leases();
        }
    }

    /// Puts a sealed package message on the serial line while a split is
    /// in force: a changed one at once, an unchanged one at most every
    /// [`LINE_RESEND`].
    fn send_on_line(&mut self, msg: &heartbeat_cluster::wire::Message, bytes: Vec<u8>) {
        let Some((tx, _)) = &self.line else { return };
        if self.sm.split().is_none() {
            self.line_sent.clear();
            return;
        }
        let (kind, key) = LineKey::of(msg);
        let now = Instant::now();
        let fresh = key == LineKey::Other
            || self
                .line_sent
                .get(&kind)
                .is_none_or(|(k, at)| *k != key || now.duration_since(*at) >= LINE_RESEND);
        if fresh && tx.try_send(bytes).is_ok() {
            self.line_sent.insert(kind, (key, now));
        }
    }

    /// What the serial line's frames say about the packages here.
    fn line_status(&self) {
        let Some((_, handle)) = &self.line else {
            return;
        };
        let st = self.sm.status();
        let bits = st
            .iter()
            .filter(|s| s.local.holds())
            .fold(0u64, |b, s| b | 1u64 << (s.pkg.0 & 63));
        handle.packages.store(bits, Ordering::Relaxed);
        let stopped = self.sm.yields()
            && st
                .iter()
                .all(|s| s.local == heartbeat_cluster::packages::Local::Stopped);
        handle.stopped.store(stopped, Ordering::Relaxed);
    }

    fn push_leases(&self) {
        let lease_ns = self.plan.config.cluster.package_lease.as_nanos() as u64;
        let specs = self
            .plan
            .config
            .packages
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let (renew, successors, generation, epoch) = self
                    .leases
                    .get(&PackageId(i as u16))
                    .copied()
                    .unwrap_or((false, NodeSet::default(), 0, heartbeat_cluster::Epoch(0)));
                LeaseSpec {
                    package: i as u16,
                    addrs: p.fenced_addrs(),
                    renew,
                    successors: successors.iter().map(|n| n.0).collect(),
                    lease_ns,
                    generation,
                    epoch: epoch.0,
                }
            })
            .collect();
        let _ = self.fast.try_send(fastpath::Command::SetLeases(specs));
    }

    /// Runs `node`'s fence command (its program and arguments, with
    /// HEARTBEAT_FENCE_NODE and HEARTBEAT_NODE set), at most
    /// [`FENCE_TIMEOUT`], and feeds the result back.
    fn fence(&mut self, node: NodeId) {
        let Some(cfg) = self.plan.config.nodes.iter().find(|n| n.id == node) else {
            return;
        };
        let Some(cmd) = cfg.fence.clone() else { return };
        let target = cfg.name.clone();
        let local = self.plan.local.name.clone();
        let journal = self.journal.clone();
        let tx = self.fence_tx.clone();
        let mut e = journal::entry(
            EventKind::PackageFailed,
            &local,
            "fencing",
            clock::mono_ns(),
        );
        e.peer = Some(target.clone());
        e.peer_id = Some(node.0);
        e.detail = Some(format!("running the fence command of {target}"));
        journal.record(e);
        tokio::spawn(async move {
            let mut c = tokio::process::Command::new(cmd.program());
            c.args(cmd.args())
                .env_clear()
                .env("PATH", RunnerConfig::default().path)
                .env("HEARTBEAT_FENCE_NODE", &target)
                .env("HEARTBEAT_NODE", &local)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .kill_on_drop(true)
                .process_group(0);
            let result = match crate::packages::runner::spawn_off_runtime(c).await {
                Ok(mut child) => match tokio::time::timeout(FENCE_TIMEOUT, child.wait()).await {
                    Ok(Ok(st)) if st.success() => Ok(()),
                    Ok(Ok(st)) => Err(format!("{st}")),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err(format!("no answer within {FENCE_TIMEOUT:?}")),
                },
                Err(e) => Err(format!("cannot run {}: {e}", cmd.program().display())),
            };
            let ok = result.is_ok();
            let mut e = journal::entry(
                EventKind::PackageFailed,
                &local,
                if ok { "fenced" } else { "fence_failed" },
                clock::mono_ns(),
            );
            e.peer = Some(target.clone());
            e.peer_id = Some(node.0);
            e.detail = Some(match result {
                Ok(()) => format!("{target} fenced"),
                Err(why) => format!("fencing {target} failed: {why}"),
            });
            journal.record(e);
            let _ = tx.send((node, ok)).await;
        });
    }

    fn event(&mut self, ev: Event) {
        let now = clock::mono_ns();
        let local = self.plan.local.name.clone();
        let e = match ev {
            Event::Placed {
                pkg,
                epoch,
                decision,
            } => {
                let cause = reason_key(&decision.reason);
                if matches!(
                    decision.reason,
                    Reason::Failover { .. } | Reason::Failback { .. } | Reason::Moved { .. }
                ) {
                    *self.view.failovers.entry(cause.to_owned()).or_default() += 1;
                }
                let mut e = journal::entry(EventKind::PackagePlaced, &local, cause, now);
                e.package = Some(self.name_of(pkg));
                e.epoch = Some(epoch.0);
                if let Some(o) = decision.owner {
                    e.peer = Some(self.plan.name_of(o));
                    e.peer_id = Some(o.0);
                }
                e.detail = Some(self.reason_text(&decision.reason));
                e
            }
            Event::Banned { pkg, why } => {
                let mut e = journal::entry(EventKind::PackageFailed, &local, why, now);
                e.package = Some(self.name_of(pkg));
                e
            }
            Event::Fatal { pkg } => {
                let mut e = journal::entry(EventKind::PackageFailed, &local, "fatal", now);
                e.package = Some(self.name_of(pkg));
                e.detail = Some("configuration error (OCF 6): no node may run it".to_owned());
                e
            }
            Event::FenceFailed { node } => {
                tracing::error!(node = %self.plan.name_of(node), "fencing failed; packages waiting for it keep waiting for its lease or report");
                return;
            }
            Event::LeaseLapsed { pkg } => {
                let name = self.name_of(pkg);
                tracing::warn!(package = %name, "the package's lease ran out while held here: its addresses stay dark until the start rule clears every other node");
                let mut e = journal::entry(EventKind::PackageFailed, &local, "lease_lapsed", now);
                e.package = Some(name);
                e.detail = Some(
                    "the lease ran out while held (no grant from every other member in time): \
                     another node may have taken the package; renewed only once the start rule \
                     clears every other node"
                        .to_owned(),
                );
                e
            }
            Event::LeaseRegained { pkg } => {
                let mut e =
                    journal::entry(EventKind::PackageCleared, &local, "lease_regained", now);
                e.package = Some(self.name_of(pkg));
                e
            }
            Event::Cleared { pkg, node, how } => {
                let mut e = journal::entry(EventKind::PackageCleared, &local, how, now);
                e.package = Some(self.name_of(pkg));
                e.peer = Some(self.plan.name_of(node));
                e.peer_id = Some(node.0);
                e
            }
        };
        self.journal.record(e);
    }

    /// A reason with node names instead of ids.
    fn reason_text(&self, r: &Reason) -> String {
        let name = |n: NodeId| self.plan.name_of(n);
        match *r {
            Reason::Failover { from, .. } => {
                r.to_string().replace(&format!("node {from}"), &name(from))
            }
            Reason::Failback { from } | Reason::Moved { from: Some(from) } => {
                r.to_string().replace(&format!("node {from}"), &name(from))
            }
            _ => r.to_string(),
        }
    }

    fn run(
        &mut self,
        pkg: PackageId,
        action: Action,
        epoch: heartbeat_cluster::Epoch,
        reason: Reason,
    ) {
        let Some(p) = self
            .plan
            .config
            .packages
            .get(usize::from(pkg.0))
            .map(|p| localized(&self.plan, p, Some(&self.cards)))
        else {
            return;
        };
        let previous = match reason {
            Reason::Failover { from, .. } | Reason::Failback { from } => Some(from),
            Reason::Moved { from } => from,
            _ => None,
        };
        let ctx = ActionContext {
            node: self.plan.local.name.clone(),
            epoch,
            reason: self.reason_text(&reason),
            previous_node: previous.map(|n| self.plan.name_of(n)),
        };
        if action != Action::Monitor {
            self.last_failover.insert(
                pkg,
                format!("{} ({})", ctx.reason, clock::rfc3339_ns(clock::wall_ns())),
            );
        }
        let runner = self.runner.clone();
        let addrs = self.addrs.clone();
        let journal = self.journal.clone();
        let done = self.done_tx.clone();
        let announce = self.plan.config.cluster.announce_count;
        tokio::spawn(async move {
            let (outcome, took) = act(
                &runner,
                addrs.as_deref(),
                &p,
                action,
                &ctx,
                announce,
                &journal,
            )
            .await;
            let _ = done
                .send(Finished {
                    pkg,
                    action,
                    outcome,
                    took,
                })
                .await;
        });
    }

    fn finished(&mut self, f: Finished) {
        let result = result_of(f.action, &f.outcome);
        let key = (
            f.action.as_str().to_owned(),
            match result {
                ActionResult::Ok => "ok",
                ActionResult::Soft => "soft_failure",
                ActionResult::Hard => "hard_failure",
                ActionResult::Fatal => "fatal",
            }
            .to_owned(),
        );
        *self.view.runs.entry(key).or_default() += 1;
        let i = match f.action {
            Action::Start => 0,
            Action::Stop => 1,
            Action::Monitor => 2,
        };
        self.view.run_seconds[i].observe(f.took.as_secs_f64());
        // Monitors that pass are not journaled (one per interval).
        if f.action != Action::Monitor || result != ActionResult::Ok {
            let mut e = journal::entry(
                EventKind::PackageAction,
                &self.plan.local.name,
                f.action.as_str(),
                clock::mono_ns(),
            );
            e.package = Some(self.name_of(f.pkg));
            e.detail = Some(format!(
                "{} in {:.1} ms",
                f.outcome,
                f.took.as_secs_f64() * 1e3
            ));
            self.journal.record(e);
        }
        self.feed(Input::Done {
            pkg: f.pkg,
            action: f.action,
            result,
            at_ns: clock::mono_ns(),
        });
    }

    async fn on_view(&mut self, cv: &ClusterView) {
        for p in &cv.peers {
            let reachable = p
                .links
                .values()
                .any(|s| *s == heartbeat_api::status::LinkState::Up);
            self.feed(Input::Peer {
                node: NodeId(p.id),
                reachable,
                last_rx_ns: p.last_rx_ns,
            });
        }
        let view = cv.installed;
        if view != self.last_view {
            // The kernel stops granting lease anchors to nodes our view
            // dropped *before* the state machine hears of the view (and
            // reports, from then on, when it last granted them).
            //
            // Members new to our view are granted only once this node has
            // applied the new epoch's placement (and so released what it
            // gives away): a re-admitted node that still runs a package
            // must not renew its lease while we still hold it.
            let mut members = view.map_or(NodeSet::default(), |v| v.members);
            members.remove(self.plan.local.id);
            let continuing = members.intersection(self.granted);
            let (done, ack) = tokio::sync::oneshot::channel();
            let sent = self
                .fast
                .send(fastpath::Command::SetGrants {
                    members: continuing.bits(),
                    done: Some(done),
                })
                .await;
            if sent.is_err() || tokio::time::timeout(GRANTS_ACK, ack).await.is_err() {
                tracing::error!(
                    "the fast path did not take the view's members: package starts elsewhere wait for this node's next report"
                );
                // Tried again at the next change of the cluster view.
                return;
            }
            self.last_view = view;
            self.granted = continuing;
            self.admitting = view
                .map(|v| (v.epoch, members.difference(continuing)))
                .filter(|(_, n)| !n.is_empty());
            self.feed(Input::View {
                view,
                at_ns: clock::mono_ns(),
            });
        }
    }

    fn on_message(&mut self, m: PackageMessage) {
        if self.guard.check(&m.msg.header).is_err() {
            return;
        }
        self.feed(Input::Message {
            from: m.msg.header.sender,
            msg: m.msg.msg,
            at_ns: m.at_ns,
        });
    }

    fn on_call(&mut self, call: Call) {
        let r = self.operator(&call.request);
        let _ = call.reply.send(r);
    }

    fn package_id(&self, name: &str) -> Result<PackageId, String> {
        self.plan
            .config
            .packages
            .iter()
            .position(|p| p.spec.name.as_str() == name)
            .map(|i| PackageId(i as u16))
            .ok_or_else(|| {
                let known: Vec<&str> = self
                    .plan
                    .config
                    .packages
                    .iter()
                    .map(|p| p.spec.name.as_str())
                    .collect();
                format!(
                    "no package named {name:?} (configured: {})",
                    known.join(", ")
                )
            })
    }

    fn node_for(&self, pkg: PackageId, name: &str) -> Result<NodeId, String> {
        let n = self
            .plan
            .config
            .nodes
            .iter()
            .find(|n| n.name == name)
            .ok_or_else(|| format!("no node named {name:?}"))?;
        let id = n.id;
        let allowed = self
            .plan
            .config
            .packages
            .get(usize::from(pkg.0))
            .is_some_and(|p| p.nodes.contains(&id));
        if !allowed {
            return Err(format!(
                "node {name} is not among the nodes of package {}",
                self.name_of(pkg)
            ));
        }
        Ok(id)
    }

    fn operator(&mut self, req: &Request) -> Result<String, String> {
        let (op, text) = match req {
            Request::PackageMove { name, node } => {
                let p = self.package_id(name)?;
                (
                    OperatorOp::Move(p, self.node_for(p, node)?),
                    format!("package {name} moving to {node}"),
                )
            }
            Request::PackageStart { name } => (
                OperatorOp::Start(self.package_id(name)?),
                format!("package {name} may run again"),
            ),
            Request::PackageStop { name } => (
                OperatorOp::Stop(self.package_id(name)?),
                format!("package {name} stopping everywhere"),
            ),
            Request::PackageEnable { name, node } => {
                let p = self.package_id(name)?;
                let n = node.as_deref().map(|n| self.node_for(p, n)).transpose()?;
                (
                    OperatorOp::Enable(p, n),
                    format!(
                        "package {name} enabled{}",
                        node.as_deref()
                            .map(|n| format!(" on {n}"))
                            .unwrap_or_default()
                    ),
                )
            }
            Request::PackageDisable { name, node } => {
                let p = self.package_id(name)?;
                let n = node.as_deref().map(|n| self.node_for(p, n)).transpose()?;
                (
                    OperatorOp::Disable(p, n),
                    format!(
                        "package {name} disabled{}",
                        node.as_deref()
                            .map(|n| format!(" on {n}"))
                            .unwrap_or_else(|| " everywhere".to_owned())
                    ),
                )
            }
            Request::ClusterFreeze {} => (
                OperatorOp::Freeze,
                "cluster frozen: no package moves until `cluster unfreeze`".to_owned(),
            ),
            Request::ClusterUnfreeze {} => (OperatorOp::Unfreeze, "cluster unfrozen".to_owned()),
            other => return Err(format!("{other:?} is not a package command")),
        };
        let Some(coord) = self.sm.coordinator() else {
            return Err(
                "this node is not in a quorate view: package commands cannot take effect now"
                    .to_owned(),
            );
        };
        let mut e = journal::entry(
            EventKind::Command,
            &self.plan.local.name,
            "package",
            clock::mono_ns(),
        );
        e.detail = Some(text.clone());
        self.journal.record(e);
        self.feed(Input::Operator {
            op,
            at_ns: clock::mono_ns(),
        });
        Ok(format!("{text} (coordinator {})", self.plan.name_of(coord)))
    }

    fn publish(&mut self, status: &watch::Sender<PackagesView>, fast: &FastSnapshot) {
        let now = clock::mono_ns();
        self.shared
            .packages
            .store(self.sm.health_bits(), Ordering::Relaxed);
        let plan = self.plan.clone();
        let name_of = |n: NodeId| plan.name_of(n);
        let list = self
            .sm
            .status()
            .into_iter()
            .map(|s| {
                let bit = 1u64 << (s.pkg.0 & 63);
                let healthy_on = plan
                    .peers
                    .iter()
                    .filter(|p| {
                        p.links.iter().any(|l| {
                            fast.links
                                .get(&(p.id.0, l.0))
                                .is_some_and(|st| st.up != 0 && st.peer_packages & bit != 0)
                        })
                    })
                    .map(|p| p.name.clone())
                    .chain((self.sm.health_bits() & bit != 0).then(|| plan.local.name.clone()))
                    .collect();
                PackageStatus {
                    name: self.name_of(s.pkg),
                    owner: s.target.and_then(|d| d.owner).map(name_of),
                    reason: s.target.map_or_else(
                        || "no placement yet".to_owned(),
                        |d| self.reason_text(&d.reason),
                    ),
                    local_state: s.local.as_str().to_owned(),
                    healthy: !s.unhealthy,
                    restarts: s.restarts,
                    banned: s.banned,
                    fatal: s.fatal,
                    running_on: s.running_on.into_iter().map(name_of).collect(),
                    lease_remaining_ms: fast
                        .leases
                        .get(&s.pkg.0)
                        .map_or(0.0, |u| u.saturating_sub(now) as f64 / 1e6),
                    waiting_for: s.blocked.map(
                        |Blocker::Holder { node, until_ns }| match until_ns {
                            Some(u) => format!(
                                "{}: its lease runs out in {:.1} ms",
                                name_of(node),
                                u.saturating_sub(now) as f64 / 1e6
                            ),
                            None => format!("{}: its report that it stopped", name_of(node)),
                        },
                    ),
                    healthy_on,
                    last_failover: self.last_failover.get(&s.pkg).cloned(),
                }
            })
            .collect();
        self.view.packages = list;
        self.view.frozen = self.sm.operator().frozen;
        status.send_replace(self.view.clone());
    }

    /// Stops every package that runs here (shutdown), bounded by the stop
    /// timeouts.
    async fn stop_running(&mut self) {
        // Everything that may run here: also a package whose stop is
        // queued or failed (the runtime ends with this task, and a queued
        // stop with it).
        let running: Vec<PackageId> = self
            .sm
            .status()
            .into_iter()
            .filter(|s| {
                !matches!(
                    s.local,
                    heartbeat_cluster::packages::Local::Stopped
                        | heartbeat_cluster::packages::Local::Unknown
                )
            })
            .map(|s| s.pkg)
            .collect();
        for &p in &running {
            let _ = self.fast.try_send(fastpath::Command::ReleaseLease(p.0));
        }
        let ctx = ActionContext {
            node: self.plan.local.name.clone(),
            epoch: heartbeat_cluster::Epoch(0),
            reason: "agent stopping".to_owned(),
            previous_node: None,
        };
        let runs = running.iter().filter_map(|p| {
            let pkg = localized(
                &self.plan,
                self.plan.config.packages.get(usize::from(p.0))?,
                Some(&self.cards),
            );
            let (runner, addrs, ctx, journal) = (
                self.runner.clone(),
                self.addrs.clone(),
                ctx.clone(),
                self.journal.clone(),
            );
            Some(async move {
                let (outcome, took) = act(
                    &runner,
                    addrs.as_deref(),
                    &pkg,
                    Action::Stop,
                    &ctx,
                    0,
                    &journal,
                )
                .await;
                let mut e = journal::entry(
                    EventKind::PackageAction,
                    &ctx.node,
                    "stop",
                    clock::mono_ns(),
                );
                e.package = Some(pkg.spec.name.as_str().to_owned());
                e.detail = Some(format!(
                    "agent stopping: {outcome} in {:.1} ms",
                    took.as_secs_f64() * 1e3
                ));
                journal.record(e);
            })
        });
        futures_util::future::join_all(runs).await;
    }
}

fn reason_key(r: &Reason) -> &'static str {
    match r {
        Reason::NotQuorate => "not_quorate",
        Reason::Fatal => "fatal",
        Reason::Stopped => "stopped",
        Reason::Frozen => "frozen",
        Reason::NoEligibleNode => "no_eligible_node",
        Reason::AllUnhealthy => "all_unhealthy",
        Reason::KeepBest { .. } => "keep_best",
        Reason::Stay => "stay",
        Reason::Initial => "initial",
        Reason::Moved { .. } => "moved",
        Reason::Failover { .. } => "failover",
        Reason::Failback { .. } => "failback",
    }
}

/// Runs the packages task until `cancel`; then stops what runs here.
/// `failed_at_start`: packages whose stop before join failed.
pub async fn run(
    plan: Arc<Plan>,
    journal: JournalHandle,
    mut ch: Channels,
    failed_at_start: BTreeSet<PackageId>,
    cancel: CancellationToken,
) {
    // No view yet: the kernel grants no lease anchor (an adopted program
    // may still hold the previous agent's members). The state machine's
    // start time is after this.
    let (done, ack) = tokio::sync::oneshot::channel();
    let _ = ch
        .fast
        .send(fastpath::Command::SetGrants {
            members: 0,
            done: Some(done),
        })
        .await;
    let _ = tokio::time::timeout(GRANTS_ACK, ack).await;
    let now = clock::mono_ns();
    let (done_tx, mut done_rx) = mpsc::channel(64);
    let (fence_tx, mut fence_rx) = mpsc::channel(16);
    let addrs = match Addresses::new() {
        Ok(a) => Some(Arc::new(a)),
        Err(e) => {
            tracing::error!(error = %e, "cannot open rtnetlink: package addresses cannot be managed");
            None
        }
    };
    let known = plan
        .config
        .nodes
        .iter()
        .filter(|n| n.id != plan.local.id)
        .fold(NodeSet::default(), |mut s, n| {
            s.insert(n.id);
            s
        });
    let mut t = Task {
        sm: Packages::new(params(&plan), now),
        keys: crate::qserver::wire_keys(&plan.keys),
        guard: ReplayGuard::new(known),
        plan,
        journal,
        runner: Arc::new(Runner::new(RunnerConfig::default())),
        addrs,
        fast: ch.fast,
        cluster: ch.cluster,
        sealer: ch.sealer,
        sockets: ch.sockets,
        shared: ch.shared,
        cards: ch.cards,
        done_tx,
        fence_tx,
        leases: BTreeMap::new(),
        view: PackagesView::default(),
        last_failover: BTreeMap::new(),
        last_view: None,
        granted: NodeSet::default(),
        admitting: None,
        line: ch
            .serial
            .as_ref()
            .map(|l| (l.out.clone(), l.handle.clone())),
        line_sent: BTreeMap::new(),
    };
    let mut serial_verdict = ch.serial.map(|l| l.verdict);
    let mut verdict = heartbeat_cluster::survivor::Verdict::NotNeeded;
    let mut draining: Option<tokio::sync::oneshot::Sender<()>> = None;
    let out = t.sm.stopped_at_start(&failed_at_start);
    t.carry_out(out);
    t.push_leases();
    let snap = ch.fast_snapshot.borrow().clone();
    t.publish(&ch.status, &snap);
    loop {
        let deadline = t.sm.next_deadline_ns();
        let sleep = Duration::from_nanos(deadline.saturating_sub(clock::mono_ns())).min(IDLE_TICK);
        tokio::select! {
            Ok(()) = ch.view.changed() => {
                let cv = ch.view.borrow_and_update().clone();
                t.on_view(&cv).await;
            }
            Some(m) = ch.messages.recv() => t.on_message(m),
            Some(f) = done_rx.recv() => t.finished(f),
            Some((node, ok)) = fence_rx.recv() => t.feed(Input::Fenced {
                node,
                ok,
                at_ns: clock::mono_ns(),
            }),
            Some(call) = ch.calls.recv() => t.on_call(call),
            Some(reply) = ch.drain.recv() => {
                t.feed(Input::Drain { at_ns: clock::mono_ns() });
                draining = Some(reply);
            }
            Some(l) = ch.lapses.recv() => t.feed(Input::LeaseLapsed {
                pkg: PackageId(l.package),
                generation: l.generation,
                at_ns: clock::mono_ns(),
            }),
            Ok(()) = ch.fast_snapshot.changed() => {}
            Ok(()) = async {
                match serial_verdict.as_mut() {
                    Some(v) => v.changed().await,
                    None => std::future::pending().await,
                }
            } => {
                let v = serial_verdict.as_mut().map(|v| *v.borrow_and_update());
                if let Some(v) = v
                    && v != verdict
                {
                    verdict = v;
                    t.feed(Input::Serial { verdict: v });
                }
            }
            () = tokio::time::sleep(sleep) => {
                t.feed(Input::Tick { now_ns: clock::mono_ns() });
            }
            () = cancel.cancelled() => break,
        }
        let snap = ch.fast_snapshot.borrow().clone();
        t.publish(&ch.status, &snap);
        if draining.is_some()
            && t.sm.drained()
            && let Some(reply) = draining.take()
        {
            let _ = reply.send(());
        }
    }
    t.stop_running().await;
    // Nothing held here any more: the fast path fences every address.
    t.leases.clear();
    t.push_leases();
}
