//! Prometheus metrics over HTTP (`[metrics] listen`).
//!
//! The daemon's main loop owns a [`Snapshot`] of the XDP maps, membership
//! and sender statistics and replaces it every poll; a prometheus-client
//! collector encodes the latest snapshot on each scrape. Names follow the
//! Prometheus conventions: `heartbeat_` prefix, base units (seconds),
//! counters ending in `_total`.

use std::{
    sync::{Arc, Mutex, atomic::Ordering},
    time::Duration,
};

use heartbeat_common::{LinkState, RTT_BUCKETS, counter};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::Registry,
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpListener,
};

use crate::sender::{LATENESS_BOUNDS_NS, Shared};

/// One (peer, link) row.
#[derive(Clone, Debug)]
pub struct LinkRow {
    pub peer: String,
    pub link: u8,
    pub up: bool,
    pub state: LinkState,
    pub sent: u64,
    pub send_errors: u64,
}

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
    pub events: Vec<(String, u64)>,
    pub uptime_s: f64,
}

/// Shared snapshot handle.
pub type SnapshotCell = Arc<Mutex<Snapshot>>;

#[derive(Debug)]
struct HeartbeatCollector {
    snapshot: SnapshotCell,
    sender: Arc<Shared>,
    node: String,
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
        let snap = self.snapshot.lock().map(|s| s.clone()).unwrap_or_default();
        let link_labels =
            |r: &LinkRow| vec![("peer", r.peer.clone()), ("link", r.link.to_string())];

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
            ConstCounter::new(*v).encode(m.encode_family(&[("event", kind.as_str())])?)?;
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
pub fn registry(snapshot: SnapshotCell, sender: Arc<Shared>, node: &str) -> Registry {
    let mut r = Registry::default();
    r.register_collector(Box::new(HeartbeatCollector {
        snapshot,
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

/// Serves `GET /metrics` (anything else: 404) on `listener`.
pub async fn serve(listener: TcpListener, registry: Arc<Registry>) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        let registry = registry.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 8192];
            let mut n = 0;
            // Read the request head, bounded in size and time.
            let read = tokio::time::timeout(Duration::from_secs(5), async {
                while n < buf.len() {
                    match stream.read(&mut buf[n..]).await {
                        Ok(0) | Err(_) => break,
                        Ok(k) => {
                            n += k;
                            if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                                break;
                            }
                        }
                    }
                }
            })
            .await;
            if read.is_err() {
                return;
            }
            let head = String::from_utf8_lossy(&buf[..n]);
            let path = head.split_whitespace().nth(1).unwrap_or("");
            let (status, ctype, body) = if head.starts_with("GET ")
                && (path == "/metrics" || path.starts_with("/metrics?"))
            {
                (
                    "200 OK",
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    encode(&registry),
                )
            } else {
                (
                    "404 Not Found",
                    "text/plain",
                    "try GET /metrics\n".to_owned(),
                )
            };
            let resp = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(resp.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
    }
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
