//! Prometheus metrics over HTTP (`[metrics] listen`).
//!
//! A prometheus-client collector encodes, on each scrape, the latest values
//! the subsystems published (the same [`Sources`] as status). The HTTP side
//! is hyper (HTTP/1.1, `GET /metrics`), with at most [`MAX_CONNECTIONS`]
//! connections at once (more are closed at once and counted), a header
//! read timeout, and backoff on accept errors, so no network client can
//! starve the control socket or the sender. Names follow the Prometheus
//! conventions: `heartbeat_` prefix, base units (seconds), counters ending
//! in `_total`.

use std::{
    convert::Infallible,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use heartbeat_common::{LinkState, RTT_BUCKETS, counter};
use http_body_util::Full;
use hyper::{Request, Response, body::Bytes, server::conn::http1, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::Registry,
};
use tokio::{net::TcpListener, sync::Semaphore};
use tokio_util::sync::CancellationToken;

use crate::{
    control::Backoff,
    journal::KINDS,
    sender::{LATENESS_BOUNDS_NS, Shared},
    status::{NodeState, Sources},
};

/// A histogram fed from any task (atomics), encoded on scrape.
#[derive(Debug)]
pub struct Histogram {
    bounds: Vec<f64>,
    /// Non-cumulative counts per bound, plus the overflow bucket.
    counts: Vec<std::sync::atomic::AtomicU64>,
    sum_ns: std::sync::atomic::AtomicU64,
}

impl Histogram {
    /// Buckets with these upper bounds (seconds, ascending).
    pub fn new(bounds: &[f64]) -> Self {
        Self {
            bounds: bounds.to_vec(),
            counts: (0..=bounds.len())
                .map(|_| std::sync::atomic::AtomicU64::new(0))
                .collect(),
            sum_ns: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Time to agreed membership: 100 µs to 30 s.
    pub fn agreement() -> Self {
        Self::new(&[
            0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0,
            5.0, 10.0, 30.0,
        ])
    }

    pub fn observe(&self, seconds: f64) {
        let i = self
            .bounds
            .iter()
            .position(|&b| seconds <= b)
            .unwrap_or(self.bounds.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_ns
            .fetch_add((seconds * 1e9) as u64, Ordering::Relaxed);
    }

    /// (sum, count, cumulative buckets) for encoding.
    pub fn snapshot(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let mut cum = 0;
        let mut buckets = Vec::with_capacity(self.counts.len());
        for (i, c) in self.counts.iter().enumerate() {
            cum += c.load(Ordering::Relaxed);
            buckets.push((self.bounds.get(i).copied().unwrap_or(f64::INFINITY), cum));
        }
        (
            self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9,
            cum,
            buckets,
        )
    }
}

/// Scrape connections served at once.
pub const MAX_CONNECTIONS: usize = 32;
/// How long a client may take to send its request head, and to be served.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);

/// One (peer, link) row.
#[derive(Clone, Debug)]
pub struct LinkRow {
    pub peer: String,
    pub link: u8,
    pub up: bool,
    pub state: LinkState,
    pub sent: u64,
    pub send_errors: u64,
    /// The agent's down verdicts by cause (`timeout`, `half_open`).
    pub down_causes: Vec<(&'static str, u64)>,
}

/// The causes of a link's down verdict (`cluster::links`), each exported
/// from zero.
const DOWN_CAUSES: [&str; 2] = ["timeout", "half_open"];

/// (metric name, help, getter) of a per-link counter.
type LinkCounter = (&'static str, &'static str, fn(&LinkRow) -> u64);

/// One node row.
#[derive(Clone, Debug)]
pub struct NodeRow {
    pub name: String,
    pub up: bool,
    /// Agent status the peer reported (node_state byte).
    pub agent_state: u8,
    pub generation: u32,
}

/// Everything the collector encodes.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub links: Vec<LinkRow>,
    pub nodes: Vec<NodeRow>,
    pub counters: Vec<(&'static str, &'static str, u64)>,
    /// (event kind, count) of journal events.
    pub events: Vec<(&'static str, u64)>,
    pub uptime_s: f64,
    pub epoch: u64,
    pub quorate: bool,
    pub members: u64,
    /// Node id of the coordinator (0: none).
    pub coordinator: u64,
    pub votes_present: u64,
    pub votes_needed: u64,
    pub journal_write_errors: u64,
    pub journal_dropped: u64,
    pub connections_refused: u64,
    /// Membership messages by (direction or drop reason).
    pub messages: Vec<(String, u64)>,
    /// Reformation events by cause.
    pub reformations: Vec<(String, u64)>,
    /// The kernel fence (issue #9): packets dropped to and from package
    /// addresses whose lease ran out, and lease renewals.
    pub fenced_in: u64,
    pub fenced_out: u64,
    pub lease_renewals: u64,
    pub lease_lapses: u64,
}

/// The snapshot now, from what the subsystems published.
pub fn snapshot(src: &Sources) -> Snapshot {
    let plan = src.plan.borrow().clone();
    let fast = src.fast.borrow().clone();
    let view = src.cluster.borrow().clone();
    let mut links = Vec::new();
    let mut nodes = Vec::new();
    for p in &view.peers {
        let mut state_byte = 0;
        let mut generation = 0;
        for (&l, &state) in &p.links {
            let st = fast.links.get(&(p.id, l)).copied().unwrap_or_default();
            state_byte = st.peer_state.max(state_byte);
            generation = generation.max(st.peer_generation);
            let stats = src.sender.link_stats(l);
            let (mut sent, mut send_errors) = (
                stats.map(|s| s.sent.load(Ordering::Relaxed)).unwrap_or(0),
                stats.map(|s| s.errors.load(Ordering::Relaxed)).unwrap_or(0),
            );
            if l == crate::serial::SERIAL_LINK {
                let v = src.serial.borrow();
                (sent, send_errors) = (v.frames_sent, v.send_errors);
            }
            links.push(LinkRow {
                peer: p.name.clone(),
                link: l,
                up: state == crate::cluster::links::State::Up,
                state: st,
                sent,
                send_errors,
                down_causes: DOWN_CAUSES
                    .iter()
                    .map(|&c| {
                        let n = p.down_causes.get(&l).and_then(|m| m.get(c)).copied();
                        (c, n.unwrap_or(0))
                    })
                    .collect(),
            });
        }
        nodes.push(NodeRow {
            name: p.name.clone(),
            up: matches!(p.state, NodeState::Up),
            agent_state: state_byte,
            generation,
        });
    }
    let counters = counter::ALL
        .iter()
        .map(|&(i, action, reason)| {
            (
                action,
                reason,
                fast.counters.get(i as usize).copied().unwrap_or(0),
            )
        })
        .collect();
    let events = KINDS
        .iter()
        .enumerate()
        .map(|(i, k)| (k.as_str(), src.journal.recorded[i].load(Ordering::Relaxed)))
        .collect();
    let fence_counter = |i: u32| fast.counters.get(i as usize).copied().unwrap_or(0);
    let m = &view.membership;
    let coordinator = m
        .coordinator
        .as_deref()
        .and_then(|c| plan.config.nodes.iter().find(|n| n.name == c))
        .map_or(0, |n| u64::from(n.id.0));
    Snapshot {
        links,
        nodes,
        counters,
        events,
        uptime_s: src.started.elapsed().as_secs_f64(),
        epoch: m.epoch,
        quorate: m.quorate,
        members: m.members.len() as u64,
        coordinator,
        votes_present: u64::from(m.quorum.votes_present),
        votes_needed: u64::from(m.quorum.votes_needed),
        journal_write_errors: src.journal.write_errors.load(Ordering::Relaxed),
        journal_dropped: src.journal.dropped.load(Ordering::Relaxed),
        connections_refused: src.refused.load(Ordering::Relaxed),
        messages: view.messages.iter().map(|(k, v)| (k.clone(), *v)).collect(),
        reformations: view
            .reformations
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect(),
        fenced_in: fence_counter(counter::FENCED_IN),
        fenced_out: fence_counter(counter::FENCED_OUT),
        lease_renewals: fast.lease_renewals,
        lease_lapses: fast.lease_lapses,
    }
}

struct HeartbeatCollector {
    sources: Sources,
    sender: Arc<Shared>,
    node: String,
}

impl std::fmt::Debug for HeartbeatCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeartbeatCollector")
            .field("node", &self.node)
            .finish()
    }
}

fn rtt_histogram(st: &LinkState) -> (f64, u64, Vec<(f64, u64)>) {
    let mut buckets = Vec::with_capacity(RTT_BUCKETS);
    let mut cum = 0u64;
    // Bucket i holds [2^i, 2^(i+1)) ns: its upper bound is 2^(i+1) ns.
    // Report from 1 µs up to ~1 s; lower buckets fold into the first.
    for (i, &c) in st.rtt_hist.iter().enumerate() {
        cum += c;
        if (9..RTT_BUCKETS - 1).contains(&i) {
            buckets.push(((1u64 << (i + 1)) as f64 / 1e9, cum));
        }
    }
    buckets.push((f64::INFINITY, cum));
    (st.rtt_sum_ns as f64 / 1e9, st.rtt_count, buckets)
}

impl Collector for HeartbeatCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let snap = snapshot(&self.sources);
        let link_labels = |r: &LinkRow| {
            vec![
                ("peer", r.peer.clone()),
                ("link", crate::serial::link_label(r.link)),
            ]
        };

        let mut m = enc.encode_descriptor(
            "heartbeat_link_up",
            "1 while a valid heartbeat from the peer arrived on the link within node_timeout",
            None,
            MetricType::Gauge,
        )?;
        for r in &snap.links {
            ConstGauge::new(i64::from(r.up)).encode(m.encode_family(&link_labels(r))?)?;
        }
        let mut m = enc.encode_descriptor(
            "heartbeat_link_rtt_seconds",
            "Heartbeat round-trip time measured by the XDP program",
            None,
            MetricType::Histogram,
        )?;
        for r in &snap.links {
            let (sum, count, buckets) = rtt_histogram(&r.state);
            m.encode_family(&link_labels(r))?
                .encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                    sum, count, &buckets, None,
                )?;
        }
        let mut m = enc.encode_descriptor(
            "heartbeat_link_rtt_last_seconds",
            "Last heartbeat round-trip time",
            None,
            MetricType::Gauge,
        )?;
        for r in &snap.links {
            ConstGauge::new(r.state.rtt_last_ns as f64 / 1e9)
                .encode(m.encode_family(&link_labels(r))?)?;
        }
        let link_counters: [LinkCounter; 9] = [
            (
                "heartbeat_link_requests_sent",
                "Requests sent by this agent on the link",
                |r| r.sent,
            ),
            (
                "heartbeat_link_send_errors",
                "Requests the socket refused",
                |r| r.send_errors,
            ),
            (
                "heartbeat_link_requests_received",
                "Valid requests received from the peer",
                |r| r.state.requests_rx,
            ),
            (
                "heartbeat_link_replies_received",
                "Valid replies received from the peer",
                |r| r.state.replies_rx,
            ),
            (
                "heartbeat_link_replies_sent",
                "Replies sent by XDP_TX to the peer",
                |r| r.state.replies_tx,
            ),
            (
                "heartbeat_link_down_events",
                "Times the link's deadline timer expired",
                |r| r.state.down_events,
            ),
            (
                "heartbeat_link_detection_deferred",
                "Deadline verdicts deferred by one grace (late timer, local stall, peer queued)",
                |r| r.state.deferrals,
            ),
            (
                "heartbeat_link_detection_deferred_confirmed",
                "Deferred verdicts whose grace ran out without a packet (the link went down)",
                |r| r.state.deferrals_confirmed,
            ),
            (
                "heartbeat_link_own_requests_egress",
                "Own requests to the peer seen leaving by the tc egress stamp",
                |r| r.state.own_tx_count,
            ),
        ];
        let mut m = enc.encode_descriptor(
            "heartbeat_link_owd_relative_seconds",
            "One-way delay of the last packet from the peer, relative to the minimum seen",
            None,
            MetricType::Gauge,
        )?;
        for r in &snap.links {
            ConstGauge::new(r.state.owd_last_ns as f64 / 1e9)
                .encode(m.encode_family(&link_labels(r))?)?;
        }
        let mut m = enc.encode_descriptor(
            "heartbeat_link_expiry_lateness_max_seconds",
            "Largest lateness of the link's deadline timer (expiry time minus deadline)",
            None,
            MetricType::Gauge,
        )?;
        for r in &snap.links {
            ConstGauge::new(r.state.expiry_late_max_ns as f64 / 1e9)
                .encode(m.encode_family(&link_labels(r))?)?;
        }
        for (name, help, get) in link_counters {
            let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
            for r in &snap.links {
                ConstCounter::new(get(r)).encode(m.encode_family(&link_labels(r))?)?;
            }
        }
        let mut m = enc.encode_descriptor(
            "heartbeat_link_down_verdicts",
            "Times the agent took the link down, by cause: timeout (the kernel's deadline) or half_open (no reply while the peer's requests arrive)",
            None,
            MetricType::Counter,
        )?;
        for r in &snap.links {
            for &(cause, n) in &r.down_causes {
                let mut labels = link_labels(r);
                labels.push(("cause", cause.to_owned()));
                ConstCounter::new(n).encode(m.encode_family(&labels)?)?;
            }
        }
        crate::serial::encode_metrics(&self.sources.serial.borrow().clone(), &mut enc)?;
        let mut m = enc.encode_descriptor(
            "heartbeat_node_up",
            "1 while any heartbeat link to the node is up",
            None,
            MetricType::Gauge,
        )?;
        for n in &snap.nodes {
            ConstGauge::new(i64::from(n.up))
                .encode(m.encode_family(&[("node", n.name.as_str())])?)?;
        }
        let mut m = enc.encode_descriptor(
            "heartbeat_node_agent_state",
            "Agent state the node reported (0 unknown, 1 starting, 2 running, 3 halting)",
            None,
            MetricType::Gauge,
        )?;
        for n in &snap.nodes {
            ConstGauge::new(i64::from(n.agent_state))
                .encode(m.encode_family(&[("node", n.name.as_str())])?)?;
        }
        let mut m = enc.encode_descriptor(
            "heartbeat_xdp_packets",
            "XDP program verdicts by action and reason, summed over CPUs",
            None,
            MetricType::Counter,
        )?;
        for (action, reason, v) in &snap.counters {
            ConstCounter::new(*v)
                .encode(m.encode_family(&[("action", *action), ("reason", *reason)])?)?;
        }
        let mut m = enc.encode_descriptor(
            "heartbeat_events",
            "State-change events handled by the agent, by kind",
            None,
            MetricType::Counter,
        )?;
        for (kind, v) in &snap.events {
            ConstCounter::new(*v).encode(m.encode_family(&[("event", *kind)])?)?;
        }
        let gauges: [(&str, &str, u64); 6] = [
            (
                "heartbeat_cluster_epoch",
                "Epoch of the installed membership view",
                snap.epoch,
            ),
            (
                "heartbeat_cluster_quorate",
                "1 while this node is a member of a quorate view",
                u64::from(snap.quorate),
            ),
            (
                "heartbeat_cluster_members",
                "Members of the installed view",
                snap.members,
            ),
            (
                "heartbeat_cluster_coordinator",
                "Node id of the view's coordinator (0: none)",
                snap.coordinator,
            ),
            (
                "heartbeat_cluster_votes_present",
                "Votes of the members of the view",
                snap.votes_present,
            ),
            (
                "heartbeat_cluster_votes_needed",
                "Votes a partition needs to be quorate",
                snap.votes_needed,
            ),
        ];
        for (name, help, v) in gauges {
            ConstGauge::new(v as i64).encode(enc.encode_descriptor(
                name,
                help,
                None,
                MetricType::Gauge,
            )?)?;
        }
        let mut m = enc.encode_descriptor(
            "heartbeat_cluster_reformations",
            "Membership events that started or shaped a reformation, by cause",
            None,
            MetricType::Counter,
        )?;
        for (cause, v) in &snap.reformations {
            ConstCounter::new(*v).encode(m.encode_family(&[("cause", cause.as_str())])?)?;
        }
        let (sum, count, buckets) = self.sources.agreement.snapshot();
        enc.encode_descriptor(
            "heartbeat_cluster_agreement_seconds",
            "Time from the first event of a membership round to the installed view",
            None,
            MetricType::Histogram,
        )?
        .encode_histogram::<prometheus_client::encoding::NoLabelSet>(sum, count, &buckets, None)?;
        let mut m = enc.encode_descriptor(
            "heartbeat_membership_messages",
            "Membership messages sent, received, and dropped by reason",
            None,
            MetricType::Counter,
        )?;
        for (what, v) in &snap.messages {
            ConstCounter::new(*v).encode(m.encode_family(&[("what", what.as_str())])?)?;
        }
        let mut m = enc.encode_descriptor(
            "heartbeat_fence_packets",
            "Packets dropped by the kernel fence: to (in, XDP) or from (out, tc egress) a package address whose lease ran out",
            None,
            MetricType::Counter,
        )?;
        for (direction, v) in [("in", snap.fenced_in), ("out", snap.fenced_out)] {
            ConstCounter::new(v).encode(m.encode_family(&[("direction", direction)])?)?;
        }
        ConstCounter::new(snap.lease_renewals).encode(enc.encode_descriptor(
            "heartbeat_lease_renewals",
            "Package lease renewals written to the kernel fence",
            None,
            MetricType::Counter,
        )?)?;
        ConstCounter::new(snap.lease_lapses).encode(enc.encode_descriptor(
            "heartbeat_lease_lapses",
            "Package leases that ran out while held here (renewed again only after the start rule)",
            None,
            MetricType::Counter,
        )?)?;
        let agent_counters: [(&str, &str, u64); 3] = [
            (
                "heartbeat_journal_write_errors",
                "Journal lines that could not be written to events_file",
                snap.journal_write_errors,
            ),
            (
                "heartbeat_journal_dropped",
                "Journal entries dropped because a queue was full",
                snap.journal_dropped,
            ),
            (
                "heartbeat_connections_refused",
                "Control and metrics connections refused at their caps",
                snap.connections_refused,
            ),
        ];
        for (name, help, v) in agent_counters {
            ConstCounter::new(v).encode(enc.encode_descriptor(
                name,
                help,
                None,
                MetricType::Counter,
            )?)?;
        }

        // Sender lateness: how late each heartbeat left versus its deadline.
        let s = &self.sender;
        let mut cum = 0u64;
        let mut buckets = Vec::with_capacity(LATENESS_BOUNDS_NS.len() + 1);
        for (i, b) in LATENESS_BOUNDS_NS.iter().enumerate() {
            cum += s.lateness[i].load(Ordering::Relaxed);
            buckets.push((*b as f64 / 1e9, cum));
        }
        cum += s.lateness[LATENESS_BOUNDS_NS.len()].load(Ordering::Relaxed);
        buckets.push((f64::INFINITY, cum));
        let sum = s.lateness_sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        enc.encode_descriptor(
            "heartbeat_sender_lateness_seconds",
            "How late the sender thread woke versus each heartbeat deadline",
            None,
            MetricType::Histogram,
        )?
        .encode_histogram::<prometheus_client::encoding::NoLabelSet>(sum, cum, &buckets, None)?;
        ConstCounter::new(s.missed.load(Ordering::Relaxed)).encode(enc.encode_descriptor(
            "heartbeat_sender_missed_deadlines",
            "Heartbeat deadlines skipped because the sender woke more than an interval late",
            None,
            MetricType::Counter,
        )?)?;
        ConstGauge::new(snap.uptime_s).encode(enc.encode_descriptor(
            "heartbeat_agent_uptime_seconds",
            "Seconds since the agent started",
            None,
            MetricType::Gauge,
        )?)?;
        let pk = self.sources.packages.borrow().clone();
        if !pk.packages.is_empty() {
            let mut m = enc.encode_descriptor(
                "heartbeat_package_running",
                "1 while the package runs (or is starting) on this node",
                None,
                MetricType::Gauge,
            )?;
            for p in &pk.packages {
                let v = i64::from(p.local_state == "running" || p.local_state == "starting");
                ConstGauge::new(v).encode(m.encode_family(&[("package", p.name.as_str())])?)?;
            }
            let mut m = enc.encode_descriptor(
                "heartbeat_package_owner",
                "1 for the node that owns the package in the placement this node acts on",
                None,
                MetricType::Gauge,
            )?;
            for p in &pk.packages {
                if let Some(o) = &p.owner {
                    ConstGauge::new(1).encode(
                        m.encode_family(&[("package", p.name.as_str()), ("owner", o.as_str())])?,
                    )?;
                }
            }
            let mut m = enc.encode_descriptor(
                "heartbeat_package_healthy",
                "1 while the package's monitor passes here",
                None,
                MetricType::Gauge,
            )?;
            for p in &pk.packages {
                ConstGauge::new(i64::from(p.healthy && !p.banned && !p.fatal))
                    .encode(m.encode_family(&[("package", p.name.as_str())])?)?;
            }
            let mut m = enc.encode_descriptor(
                "heartbeat_package_lease_remaining_seconds",
                "Time left on the package's kernel lease here (0: its addresses are fenced)",
                None,
                MetricType::Gauge,
            )?;
            for p in &pk.packages {
                ConstGauge::new(p.lease_remaining_ms / 1e3)
                    .encode(m.encode_family(&[("package", p.name.as_str())])?)?;
            }
            let mut m = enc.encode_descriptor(
                "heartbeat_package_failovers",
                "Placements that moved a package, by reason (counted by the coordinator)",
                None,
                MetricType::Counter,
            )?;
            for (reason, v) in &pk.failovers {
                ConstCounter::new(*v).encode(m.encode_family(&[("reason", reason.as_str())])?)?;
            }
            let mut m = enc.encode_descriptor(
                "heartbeat_package_script_runs",
                "Package actions run here, by action and result",
                None,
                MetricType::Counter,
            )?;
            for ((action, result), v) in &pk.runs {
                ConstCounter::new(*v).encode(m.encode_family(&[
                    ("action", action.as_str()),
                    ("result", result.as_str()),
                ])?)?;
            }
            let mut m = enc.encode_descriptor(
                "heartbeat_package_script_seconds",
                "Duration of package actions run here",
                None,
                MetricType::Histogram,
            )?;
            for (h, action) in pk.run_seconds.iter().zip(crate::packages::task::ACTIONS) {
                let (sum, count, buckets) = h.snapshot();
                m.encode_family(&[("action", action)])?
                    .encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                        sum, count, &buckets, None,
                    )?;
            }
        }
        let mut m = enc.encode_descriptor(
            "heartbeat_build_info",
            "Build information (always 1)",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(1).encode(m.encode_family(&[
            ("version", env!("CARGO_PKG_VERSION")),
            ("node", self.node.as_str()),
        ])?)?;
        Ok(())
    }
}

/// Builds the registry with the heartbeat collector.
pub fn registry(sources: Sources, node: &str) -> Registry {
    let mut r = Registry::default();
    let sender = sources.sender.clone();
    r.register_collector(Box::new(crate::netif::metrics::NicCollector::new(
        sources.nics.clone(),
        sources.interfaces.clone(),
    )));
    r.register_collector(Box::new(HeartbeatCollector {
        sources,
        sender,
        node: node.to_owned(),
    }));
    r
}

/// Encodes the registry in the text exposition format.
pub fn encode(registry: &Registry) -> String {
    let mut s = String::new();
    let _ = prometheus_client::encoding::text::encode(&mut s, registry);
    s
}

fn respond(registry: &Registry, req: &Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    let ok = req.method() == hyper::Method::GET && req.uri().path() == "/metrics";
    let (status, ctype, body) = if ok {
        (
            hyper::StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            encode(registry),
        )
    } else {
        (
            hyper::StatusCode::NOT_FOUND,
            "text/plain",
            "try GET /metrics\n".to_owned(),
        )
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    if let Ok(v) = hyper::header::HeaderValue::from_str(ctype) {
        resp.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    resp
}

/// Serves `GET /metrics` (anything else: 404) on `listener` until `cancel`.
pub async fn serve(
    listener: TcpListener,
    registry: Arc<Registry>,
    refused: Arc<std::sync::atomic::AtomicU64>,
    cancel: CancellationToken,
) {
    let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut backoff = Backoff::new("metrics listener");
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            () = cancel.cancelled() => break,
        };
        let stream = match accepted {
            Ok((s, _)) => {
                backoff.reset();
                s
            }
            Err(e) => {
                tokio::select! {
                    () = backoff.wait(&e) => continue,
                    () = cancel.cancelled() => break,
                }
            }
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            // At the cap: close at once (the fd is freed now, not later).
            refused.fetch_add(1, Ordering::Relaxed);
            drop(stream);
            continue;
        };
        let registry = registry.clone();
        let cancel = cancel.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let service = service_fn(move |req| {
                let resp = respond(&registry, &req);
                async move { Ok::<_, Infallible>(resp) }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(CONNECTION_TIMEOUT)
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = tokio::time::timeout(CONNECTION_TIMEOUT, conn) => {}
                () = cancel.cancelled() => {}
            }
        });
    }
}

/// Unlabelled counters, one per (name, help, value) row.
pub fn encode_counters(
    enc: &mut DescriptorEncoder<'_>,
    rows: &[(&str, &str, u64)],
) -> Result<(), std::fmt::Error> {
    for &(name, help, value) in rows {
        let m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
        ConstCounter::new(value).encode(m)?;
    }
    Ok(())
}

/// Unlabelled gauges, one per (name, help, value) row.
pub fn encode_gauges(
    enc: &mut DescriptorEncoder<'_>,
    rows: &[(&str, &str, i64)],
) -> Result<(), std::fmt::Error> {
    for &(name, help, value) in rows {
        let m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
        ConstGauge::new(value).encode(m)?;
    }
    Ok(())
}

/// Counter rows from the summed XDP counters.
pub fn counter_rows(
    values: &[u64; counter::COUNT as usize],
) -> Vec<(&'static str, &'static str, u64)> {
    counter::ALL
        .iter()
        .map(|&(i, action, reason)| (action, reason, values[i as usize]))
        .collect()
}
