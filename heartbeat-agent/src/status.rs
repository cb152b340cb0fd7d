//! The cluster status report: built by the daemon from membership and the
//! XDP maps, sent over the control socket as JSON, and rendered for a
//! person like `cmviewcl -v` / `crm_mon`.

use std::{collections::BTreeMap, fmt::Write as _};

use serde::{Deserialize, Serialize};

/// The whole report.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct StatusReport {
    pub cluster: String,
    pub cluster_id: u32,
    pub local_node: String,
    pub agent: AgentStatus,
    pub nodes: Vec<NodeStatus>,
    /// XDP counters summed over CPUs, by `action_reason`.
    pub xdp_counters: BTreeMap<String, u64>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct AgentStatus {
    pub pid: u32,
    pub version: String,
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
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct NodeStatus {
    pub id: u16,
    pub name: String,
    pub local: bool,
    /// `up`, `down`, `unknown` (never heard from).
    pub state: String,
    pub since_s: Option<f64>,
    pub peer_generation: Option<u32>,
    pub links: Vec<LinkStatus>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct LinkStatus {
    pub id: u8,
    pub interface: String,
    pub address: String,
    pub role: String,
    pub state: String,
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
}

/// The deferral rule's view of one (peer, link), from `LinkState`
/// (heartbeat-ebpf deadline.rs and egress.rs).
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

impl DetectorStatus {
    /// From the program's link state; `now` is CLOCK_MONOTONIC ns.
    pub fn from_link_state(st: &heartbeat_common::LinkState, now: u64) -> Self {
        let us = |ns: u64| ns as f64 / 1e3;
        let ms = |ns: u64| ns as f64 / 1e6;
        let have_owd = st.owd_count > 1;
        Self {
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
}

fn opt_us(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.1}us")).unwrap_or_else(|| "-".into())
}

impl StatusReport {
    /// Human-readable rendering.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let up = self.nodes.iter().filter(|n| n.state == "up").count();
        let _ = writeln!(s, "CLUSTER          ID        STATUS");
        let _ = writeln!(
            s,
            "{:<16} {:<9} {} of {} nodes up",
            self.cluster,
            self.cluster_id,
            up,
            self.nodes.len()
        );
        let _ = writeln!(
            s,
            "  (seen from {}: interval {}us, node_timeout {}us, agent_timeout {}us, sender {})",
            self.local_node,
            self.agent.heartbeat_interval_us,
            self.agent.node_timeout_us,
            self.agent.agent_timeout_us,
            if self.agent.realtime_sender {
                "SCHED_FIFO"
            } else {
                "not real-time"
            }
        );
        for n in &self.nodes {
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
                n.state,
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
                    l.id, l.interface, l.address, l.state, rtt, seen
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
        let drops: u64 = self
            .xdp_counters
            .iter()
            .filter(|(k, _)| k.starts_with("drop_") && k.as_str() != "drop_reply_consumed")
            .map(|(_, v)| *v)
            .sum();
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "  XDP: {} requests answered, {} replies consumed, {} heartbeats dropped",
            self.xdp_counters.get("tx_reply").copied().unwrap_or(0),
            self.xdp_counters
                .get("drop_reply_consumed")
                .copied()
                .unwrap_or(0),
            drops
        );
        s
    }
}
