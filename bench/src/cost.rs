//! The cost of heartbeat on each node: CPU time of every agent thread
//! (`/proc/PID/task/*/stat` for names and ticks, `schedstat` for ns) and
//! the XDP program's own run time from the kernel's BPF statistics
//! (`BPF_ENABLE_STATS` / `kernel.bpf_stats_enabled`: run_time_ns and
//! run_cnt, read from the fdinfo of the agent's program fd), per heartbeat
//! sent. Statistics are enabled only while a cost window runs (they add two
//! clock reads per program run).

use std::{collections::BTreeMap, os::fd::OwnedFd};

/// One thread's CPU time so far.
#[derive(Clone, Debug)]
struct ThreadTime {
    name: String,
    ns: u64,
}

/// A node's agent at one moment.
#[derive(Clone, Debug, Default)]
pub struct AgentSnapshot {
    threads: BTreeMap<i32, ThreadTime>,
    /// (run_time_ns, run_cnt) of the agent's XDP program(s), summed.
    xdp: Option<(u64, u64)>,
}

/// A node's cost over a window.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct NodeCost {
    pub node: String,
    /// Agent CPU, % of one core.
    pub agent_pct: f64,
    /// Agent CPU ns per heartbeat the node sent (one per tick per peer).
    pub agent_ns_per_heartbeat: f64,
    /// Per thread name: % of one core.
    pub threads: BTreeMap<String, f64>,
    /// XDP program runs per second, ns per run, % of one core.
    pub xdp_runs_per_s: Option<f64>,
    pub xdp_ns_per_run: Option<f64>,
    pub xdp_pct: Option<f64>,
}

/// Keeps the kernel's BPF run-time statistics on while alive.
pub struct StatsOn {
    _fd: Option<OwnedFd>,
}

impl StatsOn {
    /// Enables the statistics (`BPF_ENABLE_STATS`); `None` inside means
    /// the kernel refused and the XDP columns stay empty.
    pub fn enable() -> Self {
        StatsOn {
            _fd: aya::sys::enable_stats(aya::sys::Stats::RunTime).ok(),
        }
    }
}

fn thread_times(pid: i32) -> BTreeMap<i32, ThreadTime> {
    let mut out = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for e in dir.flatten() {
        let Some(tid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let name = std::fs::read_to_string(e.path().join("comm"))
            .unwrap_or_default()
            .trim()
            .to_owned();
        let ns = std::fs::read_to_string(e.path().join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse().ok())
            .unwrap_or(0);
        out.insert(tid, ThreadTime { name, ns });
    }
    out
}

/// Sums run_time_ns and run_cnt of the XDP programs (prog_type 6) whose
/// fds `pid` holds.
fn xdp_stats(pid: i32) -> Option<(u64, u64)> {
    let dir = std::fs::read_dir(format!("/proc/{pid}/fdinfo")).ok()?;
    let mut found = None;
    for e in dir.flatten() {
        let Ok(text) = std::fs::read_to_string(e.path()) else {
            continue;
        };
        let field = |key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        if field("prog_type:") != Some(6) {
            continue;
        }
        if let (Some(t), Some(c)) = (field("run_time_ns:"), field("run_cnt:")) {
            let (st, sc) = found.unwrap_or((0, 0));
            found = Some((st + t, sc + c));
        }
    }
    found
}

impl AgentSnapshot {
    pub fn take(pid: i32) -> Self {
        AgentSnapshot {
            threads: thread_times(pid),
            xdp: xdp_stats(pid),
        }
    }

    /// The cost between `before` and `self`, `secs` apart, for a node that
    /// sent `heartbeats_per_s`.
    pub fn cost_since(
        &self,
        before: &AgentSnapshot,
        node: &str,
        secs: f64,
        heartbeats_per_s: f64,
    ) -> NodeCost {
        let mut threads: BTreeMap<String, f64> = BTreeMap::new();
        let mut total_ns = 0u64;
        for (tid, t) in &self.threads {
            let d =
                t.ns.saturating_sub(before.threads.get(tid).map_or(0, |b| b.ns));
            total_ns += d;
            *threads.entry(t.name.clone()).or_default() += d as f64 / 1e7 / secs;
        }
        threads.retain(|_, pct| *pct >= 0.005);
        let (runs, run_ns) = match (self.xdp, before.xdp) {
            (Some((t1, c1)), Some((t0, c0))) if c1 >= c0 => {
                (Some(c1 - c0), Some(t1.saturating_sub(t0)))
            }
            _ => (None, None),
        };
        NodeCost {
            node: node.to_owned(),
            agent_pct: total_ns as f64 / 1e7 / secs,
            agent_ns_per_heartbeat: total_ns as f64 / (heartbeats_per_s * secs).max(1.0),
            threads,
            xdp_runs_per_s: runs.map(|r| r as f64 / secs),
            xdp_ns_per_run: match (runs, run_ns) {
                (Some(r), Some(t)) if r > 0 => Some(t as f64 / r as f64),
                _ => None,
            },
            xdp_pct: run_ns.map(|t| t as f64 / 1e7 / secs),
        }
    }
}
