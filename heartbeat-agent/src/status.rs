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
