//! The status report: assembled from what each subsystem publishes (the
//! fast path's map snapshot, the cluster's view, the sender's and the
//! journal's counters), sent over the control socket as JSON
//! (`heartbeat_api::status`), and rendered for a person like `cmviewcl -v`.
//!
//! [`Sources`] is a bundle of read-only handles: building a report reads
//! the latest published values and never waits for a subsystem.

use std::{
    fmt::Write as _,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};

pub use heartbeat_api::status::{
    AgentStatus, DetectorStatus, LinkStatus, NodeState, NodeStatus, StatusReport,
};
use heartbeat_common::counter;
use tokio::sync::watch;

use crate::{
    clock, cluster::ClusterView, config::LinkRole, fastpath::FastSnapshot, journal::JournalStats,
    plan::Plan, sender::Shared, transport::RxStats,
};

/// Read-only handles on everything a report (or a scrape) shows.
#[derive(Clone)]
pub struct Sources {
    pub plan: watch::Receiver<Arc<Plan>>,
    pub fast: watch::Receiver<FastSnapshot>,
    pub cluster: watch::Receiver<ClusterView>,
    pub sender: Arc<Shared>,
    pub journal: Arc<JournalStats>,
    pub rx: Arc<RxStats>,
    /// Control and metrics connections refused at their caps.
    pub refused: Arc<AtomicU64>,
    /// Time to agreed membership.
    pub agreement: Arc<crate::metrics::Histogram>,
    pub started: Instant,
    /// The serial line (`crate::serial`): its state and the survivor
    /// rule's verdict, for status, metrics and the packages side.
    pub serial: watch::Receiver<crate::serial::SerialView>,
    /// What the packages side tells the serial line (packages running,
    /// stop confirmed).
    pub serial_handle: Arc<crate::serial::SerialHandle>,
    /// The packages task's view.
    pub packages: watch::Receiver<crate::packages::task::PackagesView>,
    /// Links with a standby card (the netif task's view).
    pub nics: watch::Receiver<Vec<heartbeat_api::status::NicStatus>>,
    /// The heartbeat interfaces' lifecycle (the netif task's view).
    pub interfaces: watch::Receiver<Vec<heartbeat_api::status::InterfaceStatus>>,
}

fn us(ns: u64) -> f64 {
    ns as f64 / 1000.0
}

/// The detector's view of a link, from the program's link state; `now` is
/// CLOCK_MONOTONIC ns.
pub fn detector_status(st: &heartbeat_common::LinkState, now: u64) -> DetectorStatus {
    let ms = |ns: u64| ns as f64 / 1e6;
    let have_owd = st.owd_count > 1;
    DetectorStatus {
        expiries: st.expiries,
        expiry_late_last_us: us(st.expiry_late_last_ns),
        expiry_late_max_us: us(st.expiry_late_max_ns),
        own_requests: st.own_tx_count,
        own_last_ago_ms: (st.own_tx_last_ns != 0)
            .then(|| ms(now.saturating_sub(st.own_tx_last_ns))),
        own_stall_last_ms: (st.own_stall_ns != 0).then(|| ms(st.own_stall_ns)),
        owd_last_us: have_owd.then(|| us(st.owd_last_ns)),
        owd_avg_us: have_owd.then(|| us(st.owd_ewma_ns)),
        owd_max_us: have_owd.then(|| us(st.owd_max_ns)),
        owd_rising: st.owd_rising != 0,
        deferrals: st.deferrals,
        deferrals_confirmed: st.deferrals_confirmed,
        deferred_now: st.deferred != 0,
        last_cause: heartbeat_common::defer_cause::name(st.defer_cause).into(),
    }
}

impl Sources {
    /// The status report now.
    pub fn report(&self) -> StatusReport {
        let plan = self.plan.borrow().clone();
        let fast = self.fast.borrow().clone();
        let view = self.cluster.borrow().clone();
        let c = &plan.config.cluster;
        let now = clock::mono_ns();
        let mut nodes = Vec::new();
        for n in &plan.config.nodes {
            if n.id == plan.local.id {
                nodes.push(NodeStatus {
                    id: n.id.0,
                    name: n.name.clone(),
                    local: true,
                    state: view.local_state,
                    since_s: Some(self.started.elapsed().as_secs_f64()),
                    peer_generation: Some(self.sender.generation),
                    priority: n.priority,
                    votes: n.votes,
                    member: view.membership.members.contains(&n.name),
                    links: Vec::new(),
                });
                continue;
            }
            let Some(p) = view.peers.iter().find(|p| p.id == n.id.0) else {
                continue;
            };
            let mut links = Vec::new();
            let mut generation = None;
            for l in &n.links {
                // Only the networks this node shares with the peer.
                let Some(&state) = p.links.get(&l.id.0) else {
                    continue;
                };
                let st = fast
                    .links
                    .get(&(n.id.0, l.id.0))
                    .copied()
                    .unwrap_or_default();
                if st.peer_generation != 0 {
                    generation = Some(st.peer_generation);
                }
                let local_if = plan
                    .local
                    .links
                    .iter()
                    .find(|x| x.id == l.id)
                    .map(|x| x.interface.clone())
                    .unwrap_or_else(|| "-".into());
                let have_rtt = st.rtt_count > 0;
                links.push(LinkStatus {
                    id: l.id.0,
                    interface: local_if,
                    address: l.address.to_string(),
                    role: match l.role {
                        LinkRole::Heartbeat => "heartbeat".into(),
                        LinkRole::Stationary => "stationary".into(),
                    },
                    state,
                    rtt_last_us: have_rtt.then(|| us(st.rtt_last_ns)),
                    rtt_avg_us: have_rtt.then(|| us(st.rtt_ewma_ns)),
                    rtt_min_us: have_rtt.then(|| us(st.rtt_min_ns)),
                    rtt_max_us: have_rtt.then(|| us(st.rtt_max_ns)),
                    last_seen_ago_ms: (st.last_rx_ns != 0)
                        .then(|| now.saturating_sub(st.last_rx_ns) as f64 / 1e6),
                    requests_rx: st.requests_rx,
                    replies_rx: st.replies_rx,
                    replies_tx: st.replies_tx,
                    down_events: st.down_events,
                    max_gap_ms: (st.gap_max_ns != 0).then(|| st.gap_max_ns as f64 / 1e6),
                    max_gap_at_mono_ns: st.gap_max_at_ns,
                    gap_hist: st.gap_hist.to_vec(),
                    detector: Some(detector_status(&st, now)),
                    down_causes: p
                        .down_causes
                        .get(&l.id.0)
                        .map(|m| m.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect())
                        .unwrap_or_default(),
                });
            }
            if let Some(&state) = p.links.get(&crate::serial::SERIAL_LINK) {
                links.push(crate::serial::link_status(
                    state,
                    &self.serial.borrow(),
                    now,
                ));
            }
            nodes.push(NodeStatus {
                id: n.id.0,
                name: n.name.clone(),
                local: false,
                state: p.state,
                since_s: (p.since_mono_ns != 0)
                    .then(|| now.saturating_sub(p.since_mono_ns) as f64 / 1e9),
                peer_generation: generation,
                priority: n.priority,
                votes: n.votes,
                member: p.member,
                links,
            });
        }
        let xdp_counters = counter::ALL
            .iter()
            .map(|&(i, a, r)| {
                (
                    format!("{a}_{r}"),
                    fast.counters.get(i as usize).copied().unwrap_or(0),
                )
            })
            .collect();
        let s = &self.sender;
        StatusReport {
            cluster: c.name.clone(),
            cluster_id: c.id,
            local_node: plan.local.name.clone(),
            membership: view.membership.clone(),
            agent: AgentStatus {
                pid: std::process::id(),
                version: env!("CARGO_PKG_VERSION").into(),
                generation: s.generation,
                uptime_s: self.started.elapsed().as_secs_f64(),
                realtime_sender: s.realtime.load(Ordering::Relaxed) == 1,
                heartbeat_interval_us: c.heartbeat_interval.as_micros() as u64,
                node_timeout_us: c.node_timeout.as_micros() as u64,
                agent_timeout_us: c.agent_timeout.as_micros() as u64,
                xdp: fast
                    .attached
                    .iter()
                    .map(|(i, m)| (i.clone(), m.as_str().to_owned()))
                    .collect(),
                sender_max_lateness_us: us(s.lateness_max_ns.load(Ordering::Relaxed)),
                sender_missed_deadlines: s.missed.load(Ordering::Relaxed),
                withholding_stamp: s.withholding.load(Ordering::Relaxed),
                journal_write_errors: self.journal.write_errors.load(Ordering::Relaxed),
                connections_refused: self.refused.load(Ordering::Relaxed),
            },
            nodes,
            xdp_counters,
            messages: view.messages.clone(),
            packages: self.packages.borrow().packages.clone(),
            frozen: self.packages.borrow().frozen,
            nics: self.nics.borrow().clone(),
            interfaces: self.interfaces.borrow().clone(),
        }
    }
}

fn opt_us(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.1}us")).unwrap_or_else(|| "-".into())
}

/// The report rendered for a person, like `cmviewcl -v`.
pub fn render(this: &StatusReport) -> String {
    let mut s = String::new();
    let up = this
        .nodes
        .iter()
        .filter(|n| n.state == NodeState::Up)
        .count();
    // (`up` counts members of the quorate view, the local node included.)
    let _ = writeln!(s, "CLUSTER          ID        STATUS");
    let _ = writeln!(
        s,
        "{:<16} {:<9} {} of {} nodes up",
        this.cluster,
        this.cluster_id,
        up,
        this.nodes.len()
    );
    let _ = writeln!(
        s,
        "  (seen from {}: interval {}us, node_timeout {}us, agent_timeout {}us, sender {})",
        this.local_node,
        this.agent.heartbeat_interval_us,
        this.agent.node_timeout_us,
        this.agent.agent_timeout_us,
        if this.agent.realtime_sender {
            "SCHED_FIFO"
        } else {
            "not real-time"
        }
    );
    let m = &this.membership;
    let q = &m.quorum;
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "  MEMBERSHIP  epoch {}  coordinator {}  {}  ({})",
        m.epoch,
        m.coordinator.as_deref().unwrap_or("-"),
        if m.quorate { "QUORATE" } else { "NOT QUORATE" },
        if m.phase.is_empty() { "-" } else { &m.phase }
    );
    let _ = writeln!(
        s,
        "    members {}; votes {} present, {} needed, {} expected; tie-breaker {}{}",
        if m.members.is_empty() {
            "-".to_owned()
        } else {
            m.members.join(", ")
        },
        q.votes_present,
        q.votes_needed,
        q.votes_expected,
        q.tie_breaker,
        q.quorum_server
            .as_deref()
            .map(|v| format!("; quorum server {v}"))
            .unwrap_or_default()
    );
    if !this.packages.is_empty() {
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "  PACKAGE          OWNER            HERE         HEALTH     LEASE      REASON{}",
            if this.frozen {
                "   [cluster FROZEN]"
            } else {
                ""
            }
        );
        for p in &this.packages {
            let health = if p.fatal {
                "fatal"
            } else if p.banned {
                "banned"
            } else if !p.healthy {
                "failing"
            } else {
                "ok"
            };
            let _ = writeln!(
                s,
                "  {:<16} {:<16} {:<12} {:<10} {:<10} {}",
                p.name,
                p.owner.as_deref().unwrap_or("-"),
                p.local_state,
                health,
                format!("{:.1}ms", p.lease_remaining_ms),
                p.reason
            );
            if let Some(w) = &p.waiting_for {
                let _ = writeln!(s, "    waiting for {w}");
            }
            if !p.healthy_on.is_empty() {
                let _ = writeln!(s, "    healthy on {}", p.healthy_on.join(", "));
            }
            if let Some(f) = &p.last_failover {
                let _ = writeln!(s, "    last change: {f}");
            }
        }
    }
    for n in &this.nodes {
        let _ = writeln!(s);
        let _ = writeln!(s, "  NODE             ID   STATUS");
        let since = n
            .since_s
            .map(|v| format!(" (for {v:.1}s)"))
            .unwrap_or_default();
        let _ = writeln!(
            s,
            "  {:<16} {:<4} {}{}{}",
            n.name,
            n.id,
            n.state.as_str(),
            since,
            if n.local { "  [local]" } else { "" }
        );
        if n.links.is_empty() {
            continue;
        }
        let _ = writeln!(
            s,
            "    LINK INTERFACE       ADDRESS                   STATUS   RTT last/avg/max            LAST SEEN"
        );
        for l in &n.links {
            let rtt = format!(
                "{}/{}/{}",
                opt_us(l.rtt_last_us),
                opt_us(l.rtt_avg_us),
                opt_us(l.rtt_max_us)
            );
            let seen = l
                .last_seen_ago_ms
                .map(|v| format!("{v:.1}ms ago"))
                .unwrap_or_else(|| "-".into());
            let _ = writeln!(
                s,
                "    {:<4} {:<16} {:<25} {:<8} {:<27} {}",
                if l.role == "serial" {
                    "serial".to_owned()
                } else {
                    l.id.to_string()
                },
                l.interface,
                l.address,
                l.state.as_str(),
                rtt,
                seen
            );
            if let Some(d) = &l.detector {
                let _ = writeln!(
                    s,
                    "         one-way delay (relative) last/max {}/{}{}, timer late max {:.1}us, deferred {} (last: {})",
                    opt_us(d.owd_last_us),
                    opt_us(d.owd_max_us),
                    if d.owd_rising { " rising" } else { "" },
                    d.expiry_late_max_us,
                    d.deferrals,
                    d.last_cause
                );
            }
        }
    }
    let drops: u64 = this
        .xdp_counters
        .iter()
        .filter(|(k, _)| k.starts_with("drop_") && k.as_str() != "drop_reply_consumed")
        .map(|(_, v)| *v)
        .sum();
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "  XDP: {} requests answered, {} replies consumed, {} heartbeats dropped",
        this.xdp_counters.get("tx_reply").copied().unwrap_or(0),
        this.xdp_counters
            .get("drop_reply_consumed")
            .copied()
            .unwrap_or(0),
        drops
    );
    for n in &this.nics {
        let _ = writeln!(
            s,
            "  LINK {} CARDS: active {}; primary {} ({}), standby {} ({}); {} switches",
            n.link, n.active, n.primary, n.primary_state, n.standby, n.standby_state, n.switches
        );
    }
    s
}
