//! Results of a bench run: the raw samples (written as JSON), their
//! summaries, the table printed on stdout (with heartbeat's ratio to the
//! best peer on every row) and the SVG plot (detection-time CDF per system
//! on a log scale, false detections per load as bars).

use std::{fmt::Write as _, path::Path};

use anyhow::Context as _;
use plotters::prelude::*;

use super::{
    cost::NodeCost,
    counters::WindowCounters,
    floor::FloorRow,
    load::{Load, Scope},
    system::Node,
    xdpcost::XdpCost,
};

/// A fault injected on node A.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Fault {
    /// SIGSTOP of A's daemon.
    Sigstop,
    /// SIGKILL of A's daemon.
    Sigkill,
    /// nftables netdev egress drop on A's interface.
    SilentEgress,
    /// A's interface set down.
    LinkDown,
}

impl Fault {
    pub const ALL: [Fault; 4] = [
        Fault::Sigstop,
        Fault::Sigkill,
        Fault::SilentEgress,
        Fault::LinkDown,
    ];
    pub fn name(self) -> &'static str {
        match self {
            Fault::Sigstop => "SIGSTOP",
            Fault::Sigkill => "SIGKILL",
            Fault::SilentEgress => "silent egress",
            Fault::LinkDown => "link down",
        }
    }
}

/// One detection trial.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Trial {
    pub trial: u32,
    /// Wall time the fault took effect (ns since the epoch).
    pub fault_wall_ns: i64,
    /// Time from the fault to B's declaration (ns); `None` is a miss.
    pub detect_ns: Option<i64>,
    /// Time from the fault to the declaration being handled in user space
    /// (heartbeat's agent log time), if different.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub handled_ns: Option<i64>,
    /// Time from the fault to the first suspect (corosync token loss,
    /// heartbeat link_down), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub suspect_ns: Option<i64>,
    /// Down declarations by B between the system being healthy and the
    /// fault: spontaneous false detections.
    pub spontaneous_before: u32,
    /// Time from A's last packet seen leaving A before the fault to the
    /// fault (the phase against the heartbeat), if seen.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phase_ns: Option<i64>,
    /// What B said.
    pub detail: String,
}

/// min / percentiles / max of the detected trials, plus misses.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Summary {
    pub n: usize,
    pub misses: usize,
    pub min_ns: Option<i64>,
    pub p50_ns: Option<i64>,
    pub p90_ns: Option<i64>,
    pub p99_ns: Option<i64>,
    pub max_ns: Option<i64>,
}

/// Nearest-rank percentile of sorted values.
pub fn percentile(sorted: &[i64], p: f64) -> Option<i64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

impl Summary {
    pub fn of(values: &[Option<i64>]) -> Self {
        let mut v: Vec<i64> = values.iter().flatten().copied().collect();
        v.sort_unstable();
        Summary {
            n: values.len(),
            misses: values.iter().filter(|x| x.is_none()).count(),
            min_ns: v.first().copied(),
            p50_ns: percentile(&v, 50.0),
            p90_ns: percentile(&v, 90.0),
            p99_ns: percentile(&v, 99.0),
            max_ns: v.last().copied(),
        }
    }
}

/// All trials of one (system, fault).
#[derive(Clone, Debug, serde::Serialize)]
pub struct DetectionRow {
    pub system: String,
    pub fault: Fault,
    pub summary: Summary,
    /// Summary of the user-space handling times (heartbeat).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub handled_summary: Option<Summary>,
    pub spontaneous: u32,
    /// Why trials stopped early, if they did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub trials: Vec<Trial>,
}

/// One service failover trial (`failover.rs`): the active node killed
/// (every process, link cut), seen by a client sending a request every
/// millisecond to the service's address.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct FailoverTrial {
    pub trial: u32,
    /// Wall time just before the first SIGKILL (ns since the epoch).
    pub fault_wall_ns: i64,
    /// The node that answered before the fault, and the first other one
    /// after it.
    pub old: Option<String>,
    pub new: Option<String>,
    /// Fault -> arrival of the new node's first answer; `None` is a miss.
    pub failover_ns: Option<i64>,
    /// Arrival of the old node's last answer -> the new node's first.
    pub gap_ns: Option<i64>,
    /// Requests sent after the fault that got no answer.
    pub unanswered: usize,
    /// Millisecond windows in which two nodes answered, and answers of
    /// the old node after the new node's first (both must be 0).
    pub shared_intervals: usize,
    pub old_after_new: usize,
    /// heartbeat: fault -> the new owner's journal: the old owner declared
    /// failed (kernel timer), the view without it installed, the package's
    /// start finished (address added, script run; the announcement follows).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detected_ns: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub view_ns: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_ns: Option<i64>,
}

/// Every failover trial of one system.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct FailoverRow {
    pub system: String,
    pub settings: String,
    /// `ran` or `skipped`.
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub failover: Summary,
    pub gap: Summary,
    /// Trials in which two nodes answered within one interval.
    pub two_answering: usize,
    pub trials: Vec<FailoverTrial>,
}

/// A down declaration during a load window.
#[derive(Clone, Debug, serde::Serialize)]
pub struct DownEvent {
    pub node: Node,
    pub wall_ns: i64,
    pub detail: String,
}

/// One system during one load window.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct LoadSystem {
    pub system: String,
    /// Node-level down declarations (heartbeat: node_down) by either node:
    /// false failovers, the headline figure.
    pub down_events: usize,
    /// The same per 60 s of load.
    pub downs_per_60s: f64,
    pub downs: Vec<DownEvent>,
    /// Link-level downs (heartbeat: link_down; corosync: token loss) by
    /// either node.
    pub link_downs: usize,
    /// Verdicts the detector deferred (`detection_deferred`), if it has
    /// them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deferrals: Option<usize>,
    /// Largest gap between valid heartbeats from A seen by B's XDP program
    /// (ns); `None` for the peers (no packet tap on the nodes' interfaces).
    pub max_gap_rx_ns: Option<i64>,
    /// Heartbeat only: what the agents' own counters say about the window.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivery: Option<Delivery>,
    /// Other signs of trouble the system logged (agent_stale, corosync
    /// "not scheduled").
    pub warnings: usize,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warning_samples: Vec<String>,
    /// Whether the system was healthy again after the window.
    pub recovered: bool,
}

/// Heartbeat's own counters over one load window (deltas).
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Delivery {
    /// Requests A's sender should have sent (window / interval).
    pub expected_from_a: u64,
    /// Ticks A's sender skipped because it woke more than an interval late.
    pub a_missed_ticks: u64,
    /// Requests from A that B's XDP program accepted.
    pub b_requests_rx: u64,
    /// Replies B's XDP program sent to A (XDP_TX) and A accepted.
    pub b_replies_tx: u64,
    pub a_replies_rx: u64,
    /// Expected minus missed minus received: requests lost or still queued,
    /// within ± `count_tolerance`.
    pub lost_from_a: i64,
    /// The two nodes' reports are read a moment apart (each by running
    /// `heartbeat-agent status`): the heartbeats sent in that moment, both
    /// times, plus 2.
    pub count_tolerance: u64,
    /// The largest lateness of A's sender so far, if it grew in this
    /// window (the agent reports only its maximum since start), µs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub a_sender_max_lateness_us: Option<f64>,
    /// Link-level downs B's XDP program counted for A.
    pub b_link_down_events: u64,
    /// XDP counters (per action and reason) that moved, per node.
    pub xdp_counters: Vec<(String, String, i64)>,
}

/// One load window.
#[derive(Clone, Debug, serde::Serialize)]
pub struct LoadRow {
    pub load: Load,
    pub scope: Scope,
    pub name: String,
    pub command: String,
    pub secs: f64,
    /// Largest wake-up lateness of the bench's 1 ms SCHED_FIFO 99 probe.
    pub host_stall_max_ns: i64,
    /// Qdisc, veth and softirq counters that moved during the window.
    pub counters: WindowCounters,
    /// What the load's own counters say (the memory cgroup's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub load_note: Option<String>,
    pub systems: Vec<LoadSystem>,
}

/// CPU cost of one system at idle.
#[derive(Clone, Debug, serde::Serialize)]
pub struct CostRow {
    pub system: String,
    pub window_s: f64,
    pub processes: usize,
    /// utime + stime from /proc/PID/stat, ms of CPU per s of heartbeating.
    pub cpu_ms_per_s: f64,
    /// The same from /proc/PID/task/*/schedstat (ns resolution).
    pub cpu_ms_per_s_schedstat: f64,
    /// Heartbeat only: heartbeats each node sent per second.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heartbeats_per_s: Option<f64>,
    /// Heartbeat only: per node, agent threads and XDP program.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<NodeCost>,
}

/// A system's place in the run.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SystemInfo {
    pub system: String,
    /// `ran` or `skipped`.
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub settings: String,
}

/// Everything one run measured.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Results {
    pub started: String,
    pub duration_s: f64,
    pub mode: String,
    pub trials_per_fault: u32,
    pub load_secs: u64,
    pub kernel: String,
    pub cpus: usize,
    pub versions: Vec<(String, String)>,
    pub notes: Vec<String>,
    pub systems: Vec<SystemInfo>,
    pub detection: Vec<DetectionRow>,
    pub loads: Vec<LoadRow>,
    pub cost: Vec<CostRow>,
    /// A bare thread waking at the heartbeat rates ([`crate::floor`]).
    pub floor: Vec<FloorRow>,
    /// The kernel options that bound the cost ([`crate::floor::PACING_OPTIONS`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kernel_options: Vec<(String, String)>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub xdp: Option<XdpCost>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub xdp_skipped: Option<String>,
}

fn ms(ns: Option<i64>) -> String {
    match ns {
        None => "-".into(),
        Some(v) if v.abs() < 10_000_000 => format!("{:.3}", v as f64 / 1e6),
        Some(v) => format!("{:.1}", v as f64 / 1e6),
    }
}

fn ratio(h: Option<i64>, best: Option<i64>) -> String {
    match (h, best) {
        (Some(h), Some(b)) if b > 0 => format!("{:.3}x", h as f64 / b as f64),
        _ => "-".into(),
    }
}

fn is_heartbeat(system: &str) -> bool {
    system.starts_with("heartbeat")
}

impl Results {
    /// Load windows grouped by load, in the order the loads first ran
    /// (the 500 µs agent has windows of its own).
    fn by_load(&self) -> Vec<(Load, Vec<&LoadRow>)> {
        let mut out: Vec<(Load, Vec<&LoadRow>)> = Vec::new();
        for row in &self.loads {
            match out.iter_mut().find(|(l, _)| *l == row.load) {
                Some((_, rows)) => rows.push(row),
                None => out.push((row.load, vec![row])),
            }
        }
        out
    }

    fn system_names(&self) -> Vec<String> {
        self.systems.iter().map(|s| s.system.clone()).collect()
    }

    /// The table printed at the end of a run.
    pub fn table(&self) -> String {
        let mut t = String::new();
        let _ = writeln!(t, "\n== systems ({} mode) ==", self.mode);
        for s in &self.systems {
            match &s.reason {
                Some(r) => {
                    let _ = writeln!(t, "  {:<16} {}: {r}", s.system, s.status);
                }
                None => {
                    let _ = writeln!(t, "  {:<16} {}", s.system, s.settings);
                }
            }
        }
        for n in &self.notes {
            let _ = writeln!(t, "  note: {n}");
        }

        let _ = writeln!(
            t,
            "\n== 1. detection time, ms (fault on A -> B declares A failed; {} trials each) ==",
            self.trials_per_fault
        );
        let _ = writeln!(
            t,
            "  {:<16} {:<14} {:>4} {:>5} {:>5} {:>9} {:>9} {:>9} {:>9} {:>9}  {:>11} {:>11}",
            "system",
            "fault",
            "n",
            "miss",
            "spont",
            "min",
            "p50",
            "p90",
            "p99",
            "max",
            "p50/best",
            "p99/best"
        );
        for fault in Fault::ALL {
            let rows: Vec<&DetectionRow> =
                self.detection.iter().filter(|r| r.fault == fault).collect();
            let best = |f: fn(&Summary) -> Option<i64>| {
                rows.iter()
                    .filter(|r| !is_heartbeat(&r.system) && r.summary.misses == 0)
                    .filter_map(|r| f(&r.summary))
                    .min()
            };
            let best50 = best(|s| s.p50_ns);
            let best99 = best(|s| s.p99_ns);
            for r in &rows {
                let s = &r.summary;
                let (r50, r99) = if is_heartbeat(&r.system) {
                    (ratio(s.p50_ns, best50), ratio(s.p99_ns, best99))
                } else {
                    (String::new(), String::new())
                };
                let _ = writeln!(
                    t,
                    "  {:<16} {:<14} {:>4} {:>5} {:>5} {:>9} {:>9} {:>9} {:>9} {:>9}  {:>11} {:>11}",
                    r.system,
                    fault.name(),
                    s.n,
                    s.misses,
                    r.spontaneous,
                    ms(s.min_ns),
                    ms(s.p50_ns),
                    ms(s.p90_ns),
                    ms(s.p99_ns),
                    ms(s.max_ns),
                    r50,
                    r99
                );
                if let Some(h) = &r.handled_summary {
                    let _ = writeln!(
                        t,
                        "  {:<16} {:<14} {:>4} {:>5} {:>5} {:>9} {:>9} {:>9} {:>9} {:>9}",
                        "  (agent logged)",
                        "",
                        h.n,
                        h.misses,
                        "",
                        ms(h.min_ns),
                        ms(h.p50_ns),
                        ms(h.p90_ns),
                        ms(h.p99_ns),
                        ms(h.max_ns)
                    );
                }
                if let Some(e) = &r.error {
                    let _ = writeln!(t, "  {:<16} {:<14} stopped early: {e}", "", "");
                }
            }
        }

        let _ = writeln!(
            t,
            "\n== 2. false failovers: node-level downs per 60 s with no fault (plain topology: one veth, pfifo_fast, no tap) =="
        );
        let names = self.system_names();
        let mut header = format!(
            "  {:<24} {:<13} {:>5} {:>8}",
            "load", "scope", "secs", "stall"
        );
        for n in &names {
            let _ = write!(header, " | {n:^24}");
        }
        let _ = writeln!(t, "{header}");
        for (load, rows) in self.by_load() {
            let secs: Vec<String> = rows.iter().map(|r| format!("{:.0}", r.secs)).collect();
            let stall = rows.iter().map(|r| r.host_stall_max_ns).max();
            let mut line = format!(
                "  {:<24} {:<13} {:>5} {:>8}",
                load.name(),
                load.scope().name(),
                secs.join("+"),
                ms(stall),
            );
            let cells: Vec<&LoadSystem> = rows.iter().flat_map(|r| r.systems.iter()).collect();
            for n in &names {
                match cells.iter().find(|s| &s.system == n) {
                    Some(s) => {
                        let deferred = s.deferrals.map_or(String::new(), |d| format!(" d{d}"));
                        let warn = if s.warnings > 0 {
                            format!(" w{}", s.warnings)
                        } else {
                            String::new()
                        };
                        let cell = format!(
                            "{:.0}{} (l{}{}{}) {}",
                            s.downs_per_60s,
                            if s.recovered { "" } else { "!" },
                            s.link_downs,
                            deferred,
                            warn,
                            ms(s.max_gap_rx_ns),
                        );
                        let _ = write!(line, " | {cell:^24}");
                    }
                    None => {
                        let _ = write!(line, " | {:^24}", "not run");
                    }
                }
            }
            let _ = writeln!(t, "{line}");
        }
        let _ = writeln!(
            t,
            "  (cell: node_down per 60 s [! = not healthy after the window] (lN link-level downs, dN deferred verdicts, wN warnings: agent_stale, corosync not scheduled) largest gap between A's heartbeats at B's XDP program, ms)"
        );
        let _ = writeln!(
            t,
            "\n== 2b. where heartbeats went (heartbeat's counters; kernel counters of the two interfaces; NET_RX softirqs per CPU) =="
        );
        for row in &self.loads {
            for s in row.systems.iter().filter(|s| s.delivery.is_some()) {
                let Some(d) = &s.delivery else { continue };
                let _ = writeln!(
                    t,
                    "  {:<24} {:<16} A->B requests: {} expected, {} ticks missed by A's sender{}, {} accepted by B, {} lost or late (±{}); B->A replies {} sent / {} accepted",
                    row.name,
                    s.system,
                    d.expected_from_a,
                    d.a_missed_ticks,
                    d.a_sender_max_lateness_us
                        .map_or(String::new(), |l| format!(
                            " (lateness up to {:.1} ms)",
                            l / 1e3
                        )),
                    d.b_requests_rx,
                    d.lost_from_a,
                    d.count_tolerance,
                    d.b_replies_tx,
                    d.a_replies_rx
                );
                if !d.xdp_counters.is_empty() {
                    let xs: Vec<String> = d
                        .xdp_counters
                        .iter()
                        .map(|(n, k, v)| format!("{n}:{k}={v}"))
                        .collect();
                    let _ = writeln!(t, "  {:<24} {:<16} XDP: {}", "", "", xs.join(" "));
                }
            }
            let _ = writeln!(
                t,
                "  {:<24} {:<16} kernel: {}; NET_RX per CPU {}{}",
                row.name,
                "",
                row.counters.loss_summary(),
                row.counters.net_rx(),
                row.load_note
                    .as_ref()
                    .map_or(String::new(), |n| format!("; {n}"))
            );
        }
        let _ = writeln!(t, "{}", self.egress_priority());

        let _ = writeln!(
            t,
            "\n== 3. cost: CPU of the daemons on both nodes, ms per s of heartbeating (idle) =="
        );
        let best = self
            .cost
            .iter()
            .filter(|c| !is_heartbeat(&c.system))
            .map(|c| c.cpu_ms_per_s_schedstat)
            .fold(f64::INFINITY, f64::min);
        for c in &self.cost {
            let r = if is_heartbeat(&c.system) && best.is_finite() && best > 0.0 {
                format!("{:.2}x best peer", c.cpu_ms_per_s_schedstat / best)
            } else {
                String::new()
            };
            let _ = writeln!(
                t,
                "  {:<16} {:>8.3} ms/s (/proc/PID/stat)  {:>8.3} ms/s (schedstat)  {} processes  {r}",
                c.system, c.cpu_ms_per_s, c.cpu_ms_per_s_schedstat, c.processes
            );
            for n in &c.nodes {
                let threads: Vec<String> = n
                    .threads
                    .iter()
                    .map(|(k, v)| format!("{k} {v:.2}%"))
                    .collect();
                let _ = writeln!(
                    t,
                    "  {:<16}   node {}: agent {:.2}% of a core at {:.0} heartbeats/s = {:.0} ns per heartbeat [{}]; XDP program {} runs/s x {} ns = {}% of a core",
                    "",
                    n.node,
                    n.agent_pct,
                    c.heartbeats_per_s.unwrap_or(0.0),
                    n.agent_ns_per_heartbeat,
                    threads.join(", "),
                    n.xdp_runs_per_s.map_or("-".into(), |x| format!("{x:.0}")),
                    n.xdp_ns_per_run.map_or("-".into(), |x| format!("{x:.0}")),
                    n.xdp_pct.map_or("-".into(), |x| format!("{x:.3}")),
                );
            }
        }
        for f in &self.floor {
            let what = if f.sends == 0 {
                "a bare thread that only sleeps to the next deadline; any sender that wakes per heartbeat pays this".to_owned()
            } else {
                format!(
                    "the same thread sending one heartbeat-sized UDP datagram per wake-up, dropped at the OUTPUT hook ({} of {} sends): no qdisc, driver or receiver charged; the least such a sender pays",
                    f.sends_dropped, f.sends
                )
            };
            let _ = writeln!(
                t,
                "  {:<16} {:>8.3} ms/s = {:.2}% of a core, {:.0} ns per wake-up ({} wake-ups at {} /s{}): {what}",
                if f.sends == 0 {
                    "floor"
                } else {
                    "floor + send"
                },
                f.pct_of_core * 10.0,
                f.pct_of_core,
                f.ns_per_tick,
                f.ticks,
                f.rate_hz,
                if f.realtime {
                    ", SCHED_FIFO"
                } else {
                    ", not realtime"
                }
            );
        }
        if !self.kernel_options.is_empty() {
            let opts: Vec<String> = self
                .kernel_options
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect();
            let pacing = self
                .kernel_options
                .iter()
                .any(|(k, v)| k.starts_with("CONFIG_NET_SCH_") && v != "not set");
            let _ = writeln!(
                t,
                "  kernel           {}: {}",
                opts.join(", "),
                if pacing {
                    "a qdisc can hold packets to their SO_TXTIME, so a sender could queue several heartbeats per wake-up"
                } else {
                    "no qdisc here holds a packet to its SO_TXTIME, so every heartbeat costs a user-thread wake-up (the floor)"
                }
            );
        }
        match (&self.xdp, &self.xdp_skipped) {
            (Some(x), _) => {
                let _ = writeln!(
                    t,
                    "  XDP program (BPF_PROG_TEST_RUN): empty program {:.1} ns; non-heartbeat UDP {:.1} ns (+{:.1}), TCP {:.1} ns (+{:.1}) [repeat {}]; heartbeat request {:.1} ns vs empty {:.1} ns per call (+{:.1}) [{} requests]",
                    x.empty_ns,
                    x.non_heartbeat_udp_ns,
                    x.non_heartbeat_udp_extra_ns,
                    x.non_heartbeat_tcp_ns,
                    x.non_heartbeat_tcp_extra_ns,
                    x.repeat,
                    x.request_single_ns,
                    x.empty_single_ns,
                    x.request_extra_ns,
                    x.single_runs
                );
            }
            (None, Some(r)) => {
                let _ = writeln!(t, "  XDP program cost: skipped: {r}");
            }
            (None, None) => {}
        }
        t
    }

    /// Whether heartbeats kept band 0 of pfifo_fast (SO_PRIORITY 6, DSCP
    /// CS6) while data filled A's queue: under the link loads, A's qdisc
    /// drops against heartbeat requests from A lost.
    fn egress_priority(&self) -> String {
        let mut t = String::from(
            "  egress priority (A's pfifo_fast, heartbeats in band 0 by SO_PRIORITY 6):",
        );
        let mut any = false;
        for row in self.loads.iter().filter(|r| r.load.scope() == Scope::Link) {
            let a_counter = |key: &str| -> i64 {
                row.counters
                    .interfaces
                    .iter()
                    .filter(|(k, _)| k.starts_with("A "))
                    .filter_map(|(_, c)| c.get(key))
                    .sum()
            };
            let drops = a_counter("qdisc_drops");
            let queued = drops + a_counter("qdisc_requeues") + a_counter("qdisc_backlog_at_end");
            for s in &row.systems {
                if let Some(d) = &s.delivery {
                    any = true;
                    let verdict = if queued == 0 {
                        "A's queue never filled (no drop, requeue or backlog): band 0 not exercised; delays come from elsewhere (A's sender: see missed ticks)"
                    } else if d.lost_from_a <= d.count_tolerance as i64 {
                        "held: A's queue was busy, heartbeats were not lost"
                    } else if drops > 0 {
                        "heartbeats lost while data was dropped: check"
                    } else {
                        "heartbeats late or lost elsewhere"
                    };
                    let _ = write!(
                        t,
                        "\n    {} / {}: A's qdisc dropped {drops} packets, requeued {}; {} (±{}) heartbeat requests of {} expected lost or late; largest gap at B {} ms: {verdict}",
                        row.name,
                        s.system,
                        a_counter("qdisc_requeues"),
                        d.lost_from_a.max(0),
                        d.count_tolerance,
                        d.expected_from_a,
                        ms(s.max_gap_rx_ns)
                    );
                }
            }
        }
        if !any {
            t.push_str(" not measured (no link load with heartbeat)");
        }
        t
    }

    /// Writes every raw sample as JSON.
    pub fn write_json(&self, path: &Path) -> anyhow::Result<()> {
        let text = serde_json::to_string_pretty(self)?;
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
    }

    /// The plot: detection-time CDF per system (log time axis) and false
    /// detections per load as grouped bars.
    pub fn write_svg(&self, path: &Path) -> anyhow::Result<()> {
        let root = SVGBackend::new(path, (1400, 620)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
        let (left, right) = root.split_horizontally(760);
        self.draw_cdf(&left)
            .map_err(|e| anyhow::anyhow!("CDF plot: {e}"))?;
        self.draw_bars(&right)
            .map_err(|e| anyhow::anyhow!("bar plot: {e}"))?;
        root.present().map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(())
    }

    fn colour(i: usize) -> RGBColor {
        const C: [RGBColor; 6] = [
            RGBColor(214, 39, 40),
            RGBColor(255, 127, 14),
            RGBColor(31, 119, 180),
            RGBColor(44, 160, 44),
            RGBColor(148, 103, 189),
            RGBColor(140, 86, 75),
        ];
        C[i % C.len()]
    }

    fn draw_cdf<DB: DrawingBackend>(
        &self,
        area: &DrawingArea<DB, plotters::coord::Shift>,
    ) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
        let names = self.system_names();
        let series: Vec<(String, Vec<f64>)> = names
            .iter()
            .map(|n| {
                let mut v: Vec<f64> = self
                    .detection
                    .iter()
                    .filter(|r| &r.system == n)
                    .flat_map(|r| r.trials.iter().filter_map(|t| t.detect_ns))
                    .filter(|ns| *ns > 0)
                    .map(|ns| ns as f64 / 1e6)
                    .collect();
                v.sort_by(f64::total_cmp);
                (n.clone(), v)
            })
            .collect();
        let lo = series
            .iter()
            .flat_map(|(_, v)| v.first())
            .copied()
            .fold(f64::INFINITY, f64::min);
        let hi = series
            .iter()
            .flat_map(|(_, v)| v.last())
            .copied()
            .fold(0.0, f64::max);
        let (lo, hi) = if lo.is_finite() && hi > 0.0 {
            (lo / 1.5, hi * 1.5)
        } else {
            (0.01, 1000.0)
        };
        let mut chart = ChartBuilder::on(area)
            .caption(
                "Detection time, all faults (fault on A -> B declares A down)",
                ("sans-serif", 18),
            )
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d((lo..hi).log_scale(), 0.0..1.0)?;
        chart
            .configure_mesh()
            .x_desc("ms (log scale)")
            .y_desc("fraction of trials")
            .draw()?;
        for (i, (name, v)) in series.iter().enumerate() {
            if v.is_empty() {
                continue;
            }
            let n = v.len() as f64;
            let mut pts = Vec::with_capacity(v.len() * 2);
            for (k, x) in v.iter().enumerate() {
                pts.push((*x, k as f64 / n));
                pts.push((*x, (k + 1) as f64 / n));
            }
            let c = Self::colour(i);
            chart
                .draw_series(LineSeries::new(pts, c.stroke_width(2)))?
                .label(format!("{name} ({} detected)", v.len()))
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
        Ok(())
    }

    fn draw_bars<DB: DrawingBackend>(
        &self,
        area: &DrawingArea<DB, plotters::coord::Shift>,
    ) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
        let names = self.system_names();
        let loads = self.by_load();
        let count = |rows: &[&LoadRow], name: &str| {
            rows.iter()
                .flat_map(|r| r.systems.iter())
                .find(|s| s.system == name)
                .map(|s| s.down_events)
        };
        let max = loads
            .iter()
            .flat_map(|(_, rows)| rows.iter().flat_map(|r| r.systems.iter()))
            .map(|s| s.down_events)
            .max()
            .unwrap_or(0)
            .max(1) as f64;
        let groups = loads.len().max(1);
        // Counts span 0 to hundreds: a log axis from 0.5, with every count
        // (0 too) written above its bar.
        let base = 0.5;
        let mut chart = ChartBuilder::on(area)
            .caption(
                "False detections per load (no fault), log scale",
                ("sans-serif", 18),
            )
            .margin(12)
            .x_label_area_size(110)
            .y_label_area_size(50)
            .build_cartesian_2d(0.0..groups as f64, (base..max * 3.0).log_scale())?;
        let labels: Vec<&'static str> = loads.iter().map(|(l, _)| l.name()).collect();
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(groups * 2 + 1)
            .x_label_formatter(&|x| {
                let i = x.floor() as usize;
                if (x - x.floor() - 0.5).abs() < 1e-6 {
                    labels.get(i).map(|s| (*s).to_owned()).unwrap_or_default()
                } else {
                    String::new()
                }
            })
            .x_label_style(
                ("sans-serif", 12)
                    .into_font()
                    .transform(FontTransform::Rotate90),
            )
            .y_desc("down events (both nodes)")
            .draw()?;
        let width = 0.8 / names.len().max(1) as f64;
        for (si, name) in names.iter().enumerate() {
            let c = Self::colour(si);
            let mut bars = Vec::new();
            let mut texts = Vec::new();
            for (li, (_, rows)) in loads.iter().enumerate() {
                let Some(n) = count(rows, name) else { continue };
                let x0 = li as f64 + 0.1 + si as f64 * width;
                if n > 0 {
                    bars.push(Rectangle::new(
                        [(x0, base), (x0 + width * 0.9, n as f64)],
                        c.filled(),
                    ));
                }
                texts.push(Text::new(
                    n.to_string(),
                    (x0, (n as f64).max(base) * 1.15),
                    ("sans-serif", 11).into_font().color(&c),
                ));
            }
            chart
                .draw_series(bars)?
                .label(name.clone())
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], c.filled()));
            chart.draw_series(texts)?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_nearest_rank() {
        let v: Vec<i64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), Some(50));
        assert_eq!(percentile(&v, 99.0), Some(99));
        assert_eq!(percentile(&v, 100.0), Some(100));
        assert_eq!(percentile(&[7], 99.0), Some(7));
        assert_eq!(percentile(&[], 50.0), None);
        let s = Summary::of(&[Some(3), None, Some(1), Some(2)]);
        assert_eq!(
            (s.n, s.misses, s.min_ns, s.max_ns, s.p50_ns),
            (4, 1, Some(1), Some(3), Some(2))
        );
    }

    #[test]
    fn table_and_plot_render() {
        let trial = |d| Trial {
            detect_ns: d,
            ..Trial::default()
        };
        let mut r = Results {
            mode: "test".into(),
            ..Results::default()
        };
        for (name, base) in [("heartbeat 500µs", 600_000), ("keepalived", 40_000_000)] {
            r.systems.push(SystemInfo {
                system: name.into(),
                status: "ran".into(),
                reason: None,
                settings: String::new(),
            });
            let trials: Vec<Trial> = (0..5).map(|i| trial(Some(base + i * 1000))).collect();
            let det: Vec<Option<i64>> = trials.iter().map(|t| t.detect_ns).collect();
            r.detection.push(DetectionRow {
                system: name.into(),
                fault: Fault::Sigkill,
                summary: Summary::of(&det),
                handled_summary: None,
                spontaneous: 0,
                error: None,
                trials,
            });
        }
        r.loads.push(LoadRow {
            load: Load::Idle,
            scope: Scope::None,
            name: "idle".into(),
            command: String::new(),
            secs: 1.0,
            host_stall_max_ns: 0,
            counters: WindowCounters::default(),
            load_note: None,
            systems: vec![LoadSystem {
                system: "keepalived".into(),
                down_events: 2,
                recovered: true,
                ..LoadSystem::default()
            }],
        });
        let table = r.table();
        assert!(table.contains("0.015x"), "{table}");
        let dir = std::env::temp_dir().join(format!("hbbench-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let svg = dir.join("plot.svg");
        r.write_svg(&svg).unwrap();
        let text = std::fs::read_to_string(&svg).unwrap();
        assert!(text.contains("<svg") && text.contains("keepalived"));
        r.write_json(&dir.join("r.json")).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
