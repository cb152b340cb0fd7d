//! Time to agreed membership (issue 8 §7): three agents on one segment (a
//! bridge in a hub namespace); a fault on the third node (SIGKILL of its
//! agent, or its link cut at the bridge: its port set down, see
//! [`MembershipTrial::fault_wall_ns`] for when that takes effect); the time
//! from the fault to the moment *every* survivor has installed the new view
//! (the last survivor's `view_installed` journal entry, stamped with the
//! agent's clock when it installed). Repeated `trials` times per (timing, fault), with the victim
//! restored and the three-node view agreed again between trials.
//!
//! The time includes detection (`node_timeout`, in the kernel) and the
//! membership round (join, propose, ack, commit over the heartbeat links).
//!
//! corosync is measured in the same run on the same kind of segment (its
//! own namespaces, after heartbeat's rows), with the same faults (SIGKILL
//! of corosync on the third node, its link cut): the time from the fault to
//! the last survivor's log line `[TOTEM ] A new membership (..) was formed.
//! Members left: 3` (stamped by corosync with millisecond resolution when
//! its ring goes operational with the new membership, i.e. agreed). Its
//! link-cut trials count from the call's start (corosync reports no last
//! frame): they may include a wait for the RTNL lock, a few ms against ~1 s.
//!
//! Each trial keeps what every survivor did (detection, view, deferrals,
//! the journal between the fault and the view) in `membership.json`, so a
//! slow trial can be explained. `HB_KEEP=1` keeps each cluster's files in
//! `target/bench/membership-<pid>-<label>/`.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use heartbeat_api::{
    journal::{Entry, EventKind},
    status::StatusReport,
};
use heartbeat_tests::{ChildGuard, Netns, Signal, VethPair, attach_xdp_pass};
use serde::Serialize;

use crate::{
    corosync,
    parse::{self, CorosyncLine},
    util::step,
    wall_ns,
};

/// Node names (ids 1..=3).
const NAMES: [&str; 3] = ["a", "b", "c"];
/// The victim.
const VICTIM: usize = 2;

/// One (timing, fault) row.
#[derive(Clone, Debug, Default, Serialize)]
pub struct MembershipRow {
    pub system: String,
    pub fault: String,
    pub node_timeout_ms: f64,
    pub trials: usize,
    /// Trials with no agreement within the bound (excluded from the figures).
    pub misses: usize,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub max_ms: Option<f64>,
    /// Agreement minus node_timeout: the membership round's own share.
    pub round_p50_ms: Option<f64>,
    pub samples_ms: Vec<f64>,
    /// What the row ran with (corosync: its token; `node_timeout_ms` is
    /// then the token timeout).
    #[serde(default)]
    pub settings: String,
    /// Every trial, in order, with what each survivor did.
    #[serde(default)]
    pub trial_details: Vec<MembershipTrial>,
}

/// One trial of a row.
#[derive(Clone, Debug, Default, Serialize)]
pub struct MembershipTrial {
    pub trial: usize,
    /// Wall time of the fault (ns since the epoch), from which every time
    /// of the trial is counted. SIGKILL: just before kill(2). Link cut: the
    /// later of the call's start and the last frame from the victim that
    /// any survivor received (its kernel's time: `node_down` minus
    /// `since_last_rx_ns`). The cut took effect after both, so this never
    /// shortens a trial; it leaves out the time the call waited while the
    /// link still carried the victim's frames.
    pub fault_wall_ns: u64,
    /// How long the fault call took (ms).
    pub fault_call_ms: f64,
    /// Link cut: how much later than the call's start the fault was placed
    /// (the victim's frames still arrived until then), ms.
    pub fault_late_ms: f64,
    /// Fault to the last survivor's new view; `None`: a miss.
    pub agreed_ms: Option<f64>,
    pub survivors: Vec<SurvivorTrial>,
}

/// What one survivor did in a trial (ms after the fault).
#[derive(Clone, Debug, Default, Serialize)]
pub struct SurvivorTrial {
    pub node: String,
    /// heartbeat: its `node_down` of the victim (the kernel's time);
    /// corosync: its "A processor failed" (token loss).
    pub detected_ms: Option<f64>,
    /// heartbeat: when the victim's last valid packet arrived (its
    /// `node_down` time minus `since_last_rx_ns`): where the fault took
    /// effect on this survivor's link.
    pub last_rx_ms: Option<f64>,
    /// Its view without the victim installed (corosync: the new ring).
    pub view_ms: Option<f64>,
    /// heartbeat: `detection_deferred` entries between the fault and its
    /// view.
    pub deferrals: usize,
    /// Its journal (log) between the fault and its view, one line each:
    /// `+ms event peer cause`.
    pub events: Vec<String>,
    /// heartbeat: its membership message counters (`status`: `messages`:
    /// sent, received, dropped by reason) over the trial, from before the
    /// fault until after the agreement; only the counters that moved.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub messages: BTreeMap<String, u64>,
}

/// A timing to measure.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    pub label: &'static str,
    pub interval: &'static str,
    pub node_timeout: &'static str,
    pub node_timeout_ms: f64,
    pub agent_timeout: &'static str,
}

pub const HB5MS: Timing = Timing {
    label: "heartbeat 5ms",
    interval: "1ms",
    node_timeout: "5ms",
    node_timeout_ms: 5.0,
    agent_timeout: "20ms",
};

/// Three nodes at a 100 µs interval need more than the two cores of this
/// machine (each sender's wake-ups and its peers' XDP work run on it); a
/// 250 µs interval keeps node_timeout at 500 µs with two intervals of slack.
pub const HB500US: Timing = Timing {
    label: "heartbeat 500us",
    interval: "250us",
    node_timeout: "500us",
    node_timeout_ms: 0.5,
    agent_timeout: "2ms",
};

#[derive(Clone, Copy, Debug)]
enum Fault {
    Kill,
    LinkCut,
}

impl Fault {
    fn as_str(self) -> &'static str {
        match self {
            Self::Kill => "SIGKILL",
            Self::LinkCut => "link cut",
        }
    }
}

/// Whether the files of a run are kept (`HB_KEEP`).
fn keep() -> bool {
    std::env::var_os("HB_KEEP").is_some()
}

/// Three namespaces on one bridge (in a hub namespace), each node reaching
/// the two others.
struct Segment {
    nodes: Vec<Netns>,
    /// Each node's interface (in its namespace).
    ifaces: Vec<String>,
    /// The hub's end of each node's veth (in the hub namespace).
    hub_ports: Vec<String>,
    hub: Netns,
    _pass: Vec<aya::Ebpf>,
}

impl Segment {
    fn new(object: &[u8]) -> anyhow::Result<Self> {
        let hub = Netns::new("hbm")?;
        hub.ip(&["link", "add", "br0", "type", "bridge"])?;
        hub.ip(&["link", "set", "br0", "up"])?;
        let mut nodes = Vec::new();
        let mut ifaces = Vec::new();
        let mut hub_ports = Vec::new();
        let mut pass = Vec::new();
        for i in 0..NAMES.len() {
            let ns = Netns::new("hbm")?;
            let pair =
                VethPair::connect(&ns, &hub, format!("{}/24", addr(i)), Vec::<String>::new())?;
            hub.ip(&["link", "set", &pair.if_b, "master", "br0"])?;
            // The hub's end receives XDP_TX frames: it needs an XDP program.
            pass.push(attach_xdp_pass(&hub, &pair.if_b, object)?);
            ifaces.push(pair.if_a.clone());
            hub_ports.push(pair.if_b.clone());
            nodes.push(ns);
        }
        for (i, ns) in nodes.iter().enumerate() {
            for j in (0..NAMES.len()).filter(|&j| j != i) {
                let ok = (0..20).any(|_| {
                    ns.exec(&["ping", "-c", "1", "-W", "1", "-i", "0.2", &addr(j)])
                        .is_ok()
                });
                if !ok {
                    bail!("{} cannot reach {}", NAMES[i], addr(j));
                }
            }
        }
        Ok(Self {
            nodes,
            ifaces,
            hub_ports,
            hub,
            _pass: pass,
        })
    }

    /// Cuts node `i`'s link at the bridge in-process (`SIOCSIFFLAGS` in the
    /// hub's namespace, so no `ip` start-up): its port goes down. Returns
    /// the wall times just before the call and just after it. The call
    /// needs the kernel's RTNL lock, which other work on the machine
    /// (namespaces, links created or deleted) can hold for several ms, and
    /// the calling thread may wait for a CPU: the link carries traffic
    /// until the call takes effect, so the fault's time is not the call's
    /// start; see [`MembershipTrial::fault_wall_ns`].
    fn cut(&self, i: usize) -> anyhow::Result<(u64, u64)> {
        let port = self.hub_ports[i].clone();
        Ok(heartbeat_tests::in_netns(self.hub.name(), move || {
            let before = wall_ns() as u64;
            crate::netif::set_flags(&port, false).map(|()| (before, wall_ns() as u64))
        })??)
    }

    /// Restores node `i`'s link.
    fn restore(&self, i: usize) -> anyhow::Result<()> {
        self.hub.ip(&["link", "set", &self.hub_ports[i], "up"])?;
        Ok(())
    }
}

/// Three namespaces and a hub, agents running.
struct Cluster {
    dir: PathBuf,
    agent: PathBuf,
    seg: Segment,
    agents: Vec<Option<ChildGuard>>,
    config: PathBuf,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.agents.clear();
        if !keep() {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

fn addr(i: usize) -> String {
    format!("10.233.0.{}", i + 1)
}

impl Cluster {
    fn new(agent: &Path, object: &[u8], t: Timing, dir: &Path) -> anyhow::Result<Self> {
        let _ = fs::remove_dir_all(dir);
        fs::create_dir_all(dir)?;
        let seg = Segment::new(object)?;
        let key = dir.join("cluster.key");
        fs::write(&key, "00112233445566778899aabbccddeeff\n")?;
        fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        let mut toml = format!(
            "[cluster]\nname = \"bench\"\nid = 9\nkey_file = \"cluster.key\"\n\
             heartbeat_interval = \"{}\"\nnode_timeout = \"{}\"\nagent_timeout = \"{}\"\n\
             events_file = \"{{node}}.events.jsonl\"\nstate_file = \"{{node}}.state\"\n\n\
             [control]\nsocket = \"{{node}}.sock\"\n\n",
            t.interval, t.node_timeout, t.agent_timeout
        );
        for (i, name) in NAMES.iter().enumerate() {
            toml.push_str(&format!(
                "[[node]]\nid = {}\nname = \"{name}\"\n  [[node.link]]\n  id = 0\n  interface = \"{}\"\n  address = \"{}\"\n\n",
                i + 1,
                seg.ifaces[i],
                addr(i)
            ));
        }
        let config = dir.join("cluster.toml");
        fs::write(&config, toml)?;
        let mut c = Self {
            dir: dir.to_owned(),
            agent: agent.to_owned(),
            seg,
            agents: (0..NAMES.len()).map(|_| None).collect(),
            config,
        };
        for i in 0..NAMES.len() {
            c.start(i)?;
        }
        Ok(c)
    }

    fn start(&mut self, i: usize) -> anyhow::Result<()> {
        let log = self.dir.join(format!("{}.log", NAMES[i]));
        let g = self.seg.nodes[i].spawn_logged(
            &[
                self.agent.to_str().context("agent path")?,
                "run",
                "--config",
                self.config.to_str().context("config path")?,
                "--node",
                NAMES[i],
            ],
            &log,
        )?;
        self.agents[i] = Some(g);
        Ok(())
    }

    fn status(&self, i: usize) -> Option<StatusReport> {
        let out = std::process::Command::new(&self.agent)
            .args(["status", "--json", "--socket"])
            .arg(self.dir.join(format!("{}.sock", NAMES[i])))
            .output()
            .ok()?;
        serde_json::from_slice(&out.stdout).ok()
    }

    /// Waits until the nodes `on` agree on a view of exactly `members`.
    fn wait_agreed(&self, on: &[usize], members: &[usize], within: Duration) -> anyhow::Result<()> {
        let mut want: Vec<String> = members.iter().map(|&i| NAMES[i].to_owned()).collect();
        want.sort();
        let end = Instant::now() + within;
        loop {
            crate::check_interrupt()?;
            let views: Vec<Option<(u64, Vec<String>)>> = on
                .iter()
                .map(|&i| {
                    self.status(i).map(|s| {
                        let mut m = s.membership.members;
                        m.sort();
                        (s.membership.epoch, m)
                    })
                })
                .collect();
            if let Some(Some(first)) = views.first()
                && first.0 > 0
                && first.1 == want
                && views.iter().all(|v| v.as_ref() == Some(first))
            {
                return Ok(());
            }
            if Instant::now() > end {
                bail!("no agreement on {want:?}: {views:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn journal(&self, i: usize) -> Vec<Entry> {
        fs::read_to_string(self.dir.join(format!("{}.events.jsonl", NAMES[i])))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// When survivor `i` installed a view without the victim, after `since`.
    fn installed_without_victim(&self, i: usize, since: u64) -> Option<u64> {
        self.journal(i)
            .into_iter()
            .filter(|e| {
                e.event == EventKind::ViewInstalled
                    && e.kernel_wall_ns >= since
                    && e.members
                        .as_ref()
                        .is_some_and(|m| !m.iter().any(|n| n == NAMES[VICTIM]))
            })
            .map(|e| e.kernel_wall_ns)
            .min()
    }

    /// Survivor `i`'s membership message counters.
    fn messages(&self, i: usize) -> BTreeMap<String, u64> {
        self.status(i).map(|s| s.messages).unwrap_or_default()
    }

    /// What survivor `i` journaled from the fault `t0` to its view.
    fn survivor_trial(&self, i: usize, t0: u64) -> SurvivorTrial {
        let view = self.installed_without_victim(i, t0);
        let ms = |ns: u64| ns.saturating_sub(t0) as f64 / 1e6;
        let window: Vec<Entry> = self
            .journal(i)
            .into_iter()
            .filter(|e| e.kernel_wall_ns >= t0 && view.is_none_or(|v| e.kernel_wall_ns <= v))
            .collect();
        let down = window
            .iter()
            .find(|e| e.event == EventKind::NodeDown && e.peer.as_deref() == Some(NAMES[VICTIM]));
        SurvivorTrial {
            node: NAMES[i].to_owned(),
            detected_ms: down.map(|e| ms(e.kernel_wall_ns)),
            last_rx_ms: down.and_then(|e| {
                e.since_last_rx_ns
                    .map(|d| e.kernel_wall_ns as f64 / 1e6 - d as f64 / 1e6 - t0 as f64 / 1e6)
            }),
            view_ms: view.map(ms),
            deferrals: window
                .iter()
                .filter(|e| e.event == EventKind::DetectionDeferred)
                .count(),
            events: window
                .iter()
                .map(|e| {
                    let mut line = format!("+{:.3} {}", ms(e.kernel_wall_ns), e.event.as_str());
                    if let Some(p) = &e.peer {
                        line.push_str(&format!(" {p}"));
                    }
                    if !e.cause.is_empty() {
                        line.push_str(&format!(" ({})", e.cause));
                    }
                    if let Some(d) = &e.detail {
                        line.push_str(&format!(": {d}"));
                    }
                    line
                })
                .collect(),
            messages: BTreeMap::new(),
        }
    }
}

fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(idx.min(sorted.len() - 1)).copied()
}

/// The figures of a row from its trials.
fn row(
    system: &str,
    fault: Fault,
    node_timeout_ms: f64,
    settings: String,
    details: Vec<MembershipTrial>,
) -> MembershipRow {
    let mut samples: Vec<f64> = details.iter().filter_map(|t| t.agreed_ms).collect();
    samples.sort_by(f64::total_cmp);
    let p50 = percentile(&samples, 0.5);
    let r = MembershipRow {
        system: system.to_owned(),
        fault: fault.as_str().to_owned(),
        node_timeout_ms,
        trials: details.len(),
        misses: details.len() - samples.len(),
        p50_ms: p50,
        p99_ms: percentile(&samples, 0.99),
        max_ms: samples.last().copied(),
        round_p50_ms: p50.map(|p| p - node_timeout_ms),
        samples_ms: samples,
        settings,
        trial_details: details,
    };
    step(format!(
        "membership {system}: {}: p50 {:?} ms, p99 {:?} ms ({} misses)",
        fault.as_str(),
        r.p50_ms,
        r.p99_ms,
        r.misses
    ));
    r
}

/// Measures `trials` faults of each kind at timing `t`.
pub fn measure(
    agent: &Path,
    object: &[u8],
    t: Timing,
    trials: usize,
    dir: &Path,
) -> anyhow::Result<Vec<MembershipRow>> {
    step(format!(
        "membership {}: three nodes on one segment",
        t.label
    ));
    let mut c = Cluster::new(agent, object, t, dir)?;
    let all = [0, 1, 2];
    let survivors = [0, 1];
    c.wait_agreed(&all, &all, Duration::from_secs(30))?;
    let settings = format!(
        "heartbeat_interval {}, node_timeout {}, agent_timeout {}",
        t.interval, t.node_timeout, t.agent_timeout
    );
    let mut rows = Vec::new();
    for fault in [Fault::Kill, Fault::LinkCut] {
        let mut details = Vec::new();
        for trial in 0..trials {
            crate::check_interrupt()?;
            let before: Vec<BTreeMap<String, u64>> =
                survivors.iter().map(|&i| c.messages(i)).collect();
            std::thread::sleep(Duration::from_millis(200));
            let (t0, fault_call_ms) = match fault {
                Fault::Kill => {
                    let t0 = wall_ns() as u64;
                    if let Some(g) = c.agents[VICTIM].as_mut() {
                        g.signal(Signal::SIGKILL)?;
                    }
                    (t0, (wall_ns() as u64).saturating_sub(t0) as f64 / 1e6)
                }
                Fault::LinkCut => {
                    let (before, after) = c.seg.cut(VICTIM)?;
                    (before, after.saturating_sub(before) as f64 / 1e6)
                }
            };
            let end = Instant::now() + Duration::from_secs(5);
            let mut agreed = None;
            while Instant::now() < end {
                let times: Vec<Option<u64>> = survivors
                    .iter()
                    .map(|&i| c.installed_without_victim(i, t0))
                    .collect();
                if times.iter().all(Option::is_some) {
                    agreed = times.into_iter().flatten().max();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            // A link cut took effect after the last frame the survivors got
            // from the victim (see `MembershipTrial::fault_wall_ns`).
            let fault_late_ns = match fault {
                Fault::Kill => 0,
                Fault::LinkCut => survivors
                    .iter()
                    .filter_map(|&i| c.survivor_trial(i, t0).last_rx_ms)
                    .map(|ms| (ms * 1e6).max(0.0) as u64)
                    .max()
                    .unwrap_or(0),
            };
            let t_fault = t0 + fault_late_ns;
            let detail = MembershipTrial {
                trial,
                fault_wall_ns: t_fault,
                fault_call_ms,
                fault_late_ms: fault_late_ns as f64 / 1e6,
                agreed_ms: agreed.map(|at| at.saturating_sub(t_fault) as f64 / 1e6),
                survivors: survivors
                    .iter()
                    .zip(&before)
                    .map(|(&i, before)| {
                        let mut s = c.survivor_trial(i, t_fault);
                        s.messages = counters_delta(before, &c.messages(i));
                        s
                    })
                    .collect(),
            };
            if detail
                .agreed_ms
                .is_none_or(|ms| ms > t.node_timeout_ms + 2.0)
            {
                step(format!(
                    "membership {}: {} trial {trial} slow: {}",
                    t.label,
                    fault.as_str(),
                    describe(&detail)
                ));
            }
            details.push(detail);
            // Restore and agree on three again.
            match fault {
                Fault::Kill => {
                    if let Some(mut g) = c.agents[VICTIM].take() {
                        let _ = g.wait_timeout(Duration::from_secs(5));
                    }
                    c.start(VICTIM)?;
                }
                Fault::LinkCut => c.seg.restore(VICTIM)?,
            }
            c.wait_agreed(&all, &all, Duration::from_secs(30))
                .with_context(|| {
                    format!(
                        "{} trial {trial}: the victim did not come back",
                        fault.as_str()
                    )
                })?;
        }
        rows.push(row(
            t.label,
            fault,
            t.node_timeout_ms,
            settings.clone(),
            details,
        ));
    }
    Ok(rows)
}

/// The counters of `after` that moved since `before`, by how much.
fn counters_delta(
    before: &BTreeMap<String, u64>,
    after: &BTreeMap<String, u64>,
) -> BTreeMap<String, u64> {
    after
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                v.saturating_sub(before.get(k).copied().unwrap_or(0)),
            )
        })
        .filter(|(_, d)| *d > 0)
        .collect()
}

/// One trial in a line: agreement, then each survivor's detection, view,
/// deferrals and events.
fn describe(t: &MembershipTrial) -> String {
    let f = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.3}"));
    let mut s = format!(
        "agreed {} ms (fault call took {:.3} ms, fault placed {:.3} ms after its start)",
        f(t.agreed_ms),
        t.fault_call_ms,
        t.fault_late_ms
    );
    for sv in &t.survivors {
        s.push_str(&format!(
            "; {}: last rx {}, detected {}, view {}, {} deferrals [{}] messages {:?}",
            sv.node,
            f(sv.last_rx_ms),
            f(sv.detected_ms),
            f(sv.view_ms),
            sv.deferrals,
            sv.events.join(", "),
            sv.messages
        ));
    }
    s
}

/// corosync's token in this bench unless `--corosync-token` is given: the
/// smallest the detection bench's search found stable at idle on this
/// machine (two nodes, 15 s per token: 130, 150, 200 and 300 ms flapped).
pub const COROSYNC_TOKEN_MS: u32 = 500;

/// corosync's node ids are 1..=3, the victim's is 3.
const COROSYNC_VICTIM_ID: u32 = VICTIM as u32 + 1;

/// Three corosync instances on a [`Segment`].
struct CorosyncCluster {
    dir: PathBuf,
    token_ms: u32,
    seg: Segment,
    files: Vec<corosync::Files>,
    guards: Vec<Option<ChildGuard>>,
}

impl Drop for CorosyncCluster {
    fn drop(&mut self) {
        self.guards.clear();
        if !keep() {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

impl CorosyncCluster {
    fn new(object: &[u8], token_ms: u32, dir: &Path) -> anyhow::Result<Self> {
        let _ = fs::remove_dir_all(dir);
        fs::create_dir_all(dir)?;
        let seg = Segment::new(object)?;
        let mut c = Self {
            dir: dir.to_owned(),
            token_ms,
            seg,
            files: NAMES.iter().map(|n| corosync::Files::new(dir, n)).collect(),
            guards: (0..NAMES.len()).map(|_| None).collect(),
        };
        for i in 0..NAMES.len() {
            c.start(i)?;
        }
        Ok(c)
    }

    fn start(&mut self, i: usize) -> anyhow::Result<()> {
        let nodes: Vec<(u32, &str, String)> = NAMES
            .iter()
            .enumerate()
            .map(|(j, n)| (j as u32 + 1, *n, addr(j)))
            .collect();
        let conf = corosync::config(
            self.token_ms,
            &nodes,
            false,
            &self.files[i].log,
            &self.files[i].state,
        );
        let ns = &self.seg.nodes[i];
        let g = corosync::start(ns, ns.command("sh"), &self.files[i], &conf)
            .with_context(|| format!("corosync on {}", NAMES[i]))?;
        self.guards[i] = Some(g);
        Ok(())
    }

    /// Node `i`'s log lines, parsed, from `since` (ns; the stamps are
    /// truncated to the millisecond, so one ms earlier is taken).
    fn log(&self, i: usize, since: u64) -> Vec<(u64, CorosyncLine)> {
        let now = wall_ns();
        let from = since.saturating_sub(1_000_000);
        fs::read_to_string(&self.files[i].log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| parse::corosync_line(l, now))
            .map(|(ns, what)| (ns.max(0) as u64, what))
            .filter(|(ns, _)| *ns >= from)
            .collect()
    }

    /// True when every node's last `[QUORUM] Members` line since `since`
    /// lists all three nodes.
    fn all_three_since(&self, since: u64) -> bool {
        (0..NAMES.len()).all(|i| {
            self.log(i, since)
                .into_iter()
                .rev()
                .find_map(|(_, what)| match what {
                    CorosyncLine::Members(m) => Some(m),
                    _ => None,
                })
                .is_some_and(|mut m| {
                    m.sort_unstable();
                    m == [1, 2, 3]
                })
        })
    }

    /// Waits until the three agree again (a membership of all three logged
    /// by each since `since`), then for `settle` with no change.
    fn wait_all_three(&self, since: u64, within: Duration) -> anyhow::Result<()> {
        let end = Instant::now() + within;
        while !self.all_three_since(since) {
            crate::check_interrupt()?;
            if Instant::now() > end {
                bail!("corosync: no membership of all three within {within:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // A merge can take more than one ring; let it settle.
        std::thread::sleep(Duration::from_millis(u64::from(self.token_ms) * 2));
        if !self.all_three_since(since) {
            return self.wait_all_three(
                wall_ns() as u64,
                end.saturating_duration_since(Instant::now()),
            );
        }
        Ok(())
    }

    /// Survivor `i`'s new ring without the victim after the fault `t0`.
    fn survivor_trial(&self, i: usize, t0: u64) -> SurvivorTrial {
        let ms = |ns: u64| ns as f64 / 1e6 - t0 as f64 / 1e6;
        let lines = self.log(i, t0);
        let view = lines.iter().find_map(|(ns, what)| match what {
            CorosyncLine::NewMembership { left, .. } if left.contains(&COROSYNC_VICTIM_ID) => {
                Some(*ns)
            }
            _ => None,
        });
        let window = lines
            .iter()
            .filter(|(ns, _)| view.is_none_or(|v| *ns <= v))
            .filter(|(_, what)| !matches!(what, CorosyncLine::Members(_)));
        SurvivorTrial {
            node: NAMES[i].to_owned(),
            detected_ms: lines.iter().find_map(|(ns, what)| match what {
                CorosyncLine::ProcessorFailed(_) => Some(ms(*ns)),
                _ => None,
            }),
            last_rx_ms: None,
            view_ms: view.map(ms),
            deferrals: 0,
            events: window
                .map(|(ns, what)| format!("+{:.0} {what:?}", ms(*ns)))
                .collect(),
            messages: BTreeMap::new(),
        }
    }
}

/// corosync beside heartbeat: `trials` faults of each kind, token
/// `token_ms`.
pub fn measure_corosync(
    object: &[u8],
    token_ms: u32,
    trials: usize,
    dir: &Path,
) -> anyhow::Result<Vec<MembershipRow>> {
    let system = format!("corosync {token_ms}ms");
    step(format!("membership {system}: three nodes on one segment"));
    let mut c = CorosyncCluster::new(object, token_ms, dir)?;
    c.wait_all_three(0, Duration::from_secs(30))?;
    let settings = format!(
        "corosync knet, token {token_ms} ms, token_coefficient 0, consensus 1.2 x token, \
         token_retransmits_before_loss_const {}; agreed = each survivor's \
         `A new membership (..) was formed. Members left: 3` (ms stamps)",
        corosync::RETRANSMITS
    );
    // A trial waits this long for the new ring (as the detection bench).
    let bound = Duration::from_millis(u64::from(token_ms) * 10 + 2000);
    let survivors = [0, 1];
    let mut rows = Vec::new();
    for fault in [Fault::Kill, Fault::LinkCut] {
        let mut details = Vec::new();
        for trial in 0..trials {
            crate::check_interrupt()?;
            std::thread::sleep(Duration::from_millis(200));
            let (t0, fault_call_ms) = match fault {
                Fault::Kill => {
                    let t0 = wall_ns() as u64;
                    if let Some(g) = c.guards[VICTIM].as_mut() {
                        g.signal(Signal::SIGKILL)?;
                    }
                    (t0, (wall_ns() as u64).saturating_sub(t0) as f64 / 1e6)
                }
                Fault::LinkCut => {
                    let (before, after) = c.seg.cut(VICTIM)?;
                    (before, after.saturating_sub(before) as f64 / 1e6)
                }
            };
            let end = Instant::now() + bound;
            let mut per: Vec<SurvivorTrial>;
            loop {
                per = survivors.iter().map(|&i| c.survivor_trial(i, t0)).collect();
                if per.iter().all(|s| s.view_ms.is_some()) || Instant::now() > end {
                    break;
                }
                crate::check_interrupt()?;
                std::thread::sleep(Duration::from_millis(20));
            }
            let agreed_ms = per
                .iter()
                .map(|s| s.view_ms)
                .collect::<Option<Vec<f64>>>()
                .and_then(|v| v.into_iter().max_by(f64::total_cmp));
            let detail = MembershipTrial {
                trial,
                fault_wall_ns: t0,
                fault_call_ms,
                fault_late_ms: 0.0,
                agreed_ms,
                survivors: per,
            };
            if detail.agreed_ms.is_none() {
                step(format!(
                    "membership {system}: {} trial {trial}: no new membership: {}",
                    fault.as_str(),
                    describe(&detail)
                ));
            }
            details.push(detail);
            let restored = wall_ns() as u64;
            match fault {
                Fault::Kill => {
                    if let Some(mut g) = c.guards[VICTIM].take() {
                        let _ = g.wait_timeout(Duration::from_secs(5));
                    }
                    c.start(VICTIM)?;
                }
                Fault::LinkCut => c.seg.restore(VICTIM)?,
            }
            c.wait_all_three(restored, Duration::from_secs(30))
                .with_context(|| {
                    format!(
                        "corosync {} trial {trial}: the victim did not come back",
                        fault.as_str()
                    )
                })?;
        }
        rows.push(row(
            &system,
            fault,
            f64::from(token_ms),
            settings.clone(),
            details,
        ));
    }
    Ok(rows)
}

/// The table of the rows, then the heartbeat trials over target
/// (node_timeout + 2 ms) with what each survivor did.
pub fn table(rows: &[MembershipRow]) -> String {
    let mut s = String::from(
        "Time to agreed membership on every survivor (3 nodes; fault on one):\n\
         system            fault      n   miss  p50 ms     p99 ms     max ms     p50 - timeout  target p99\n",
    );
    let f = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.3}"));
    for r in rows {
        let heartbeat = r.system.starts_with("heartbeat");
        let target = if heartbeat {
            let t = r.node_timeout_ms + 2.0;
            let met = r.misses == 0 && r.p99_ms.is_some_and(|p| p < t);
            format!("< {t} ms: {}", if met { "met" } else { "missed" })
        } else {
            "-".to_owned()
        };
        s.push_str(&format!(
            "{:<17} {:<10} {:<3} {:<5} {:<10} {:<10} {:<10} {:<14} {}\n",
            r.system,
            r.fault,
            r.trials - r.misses,
            r.misses,
            f(r.p50_ms),
            f(r.p99_ms),
            f(r.max_ms),
            f(r.round_p50_ms),
            target
        ));
    }
    if rows.iter().any(|r| r.system.starts_with("corosync")) {
        s.push_str(
            "(corosync: `timeout` is its token; agreed = the survivors' `A new membership ... was formed` log lines, ms stamps)\n",
        );
    }
    for r in rows.iter().filter(|r| r.system.starts_with("heartbeat")) {
        for t in &r.trial_details {
            if t.agreed_ms.is_none_or(|ms| ms > r.node_timeout_ms + 2.0) {
                s.push_str(&format!(
                    "  slow: {} {} trial {}: {}\n",
                    r.system,
                    r.fault,
                    t.trial,
                    describe(t)
                ));
            }
        }
    }
    s
}
