//! The serial split (issue #11): two agents in namespaces, joined by a
//! veth pair (the network) and by a null-modem cable (a pty pair per node,
//! the masters bridged by the paced relay of [`crate::serial`] at 115200
//! baud), with one package `web` (scripts `/bin/true`) on alpha, beta the
//! survivor (equal network views, higher priority). Each trial cuts the
//! network (nftables egress drops on both nodes, armed for one instant:
//! `meta time >= <next whole second>`), and measures from that instant to
//! beta's journal entry of its finished start: "exactly one owner, agreed
//! over serial" (beta starts only on alpha's report, over the line, that
//! its stop ended). The network is then restored and the package fails
//! back to alpha (automatic failback) before the next trial.
//!
//! The figure is detection (`node_timeout`, on the network link) plus the
//! verdict (the line's next frame), the placement and the stop report
//! across the line (line time about 10 ms per frame each) and the two
//! `/bin/true` actions.

use std::{
    fs,
    os::fd::{AsRawFd as _, OwnedFd},
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::bail;
use heartbeat_api::{
    journal::{Entry, EventKind},
    status::StatusReport,
};
use heartbeat_tests::{ChildGuard, Netns, NftGuard, VethPair, failover::utc_date, nft_egress_rule};
use serde::Serialize;

use crate::{check_interrupt, sleep_checked, util::step};

const A_ADDR: &str = "10.236.0.1";
const B_ADDR: &str = "10.236.0.2";
const VIP: &str = "10.236.0.100";
const INTERVAL: &str = "10ms";
const NODE_TIMEOUT: &str = "100ms";
const BAUD: u32 = 115_200;
const NAMES: [&str; 2] = ["alpha", "beta"];

/// What the run measured.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SplitReport {
    pub baud: u32,
    pub heartbeat_interval: String,
    pub node_timeout: String,
    pub serial_interval: String,
    pub serial_timeout: String,
    pub trials: usize,
    pub misses: usize,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub max_ms: Option<f64>,
    /// Cut -> alpha's stop finished (median).
    pub stop_p50_ms: Option<f64>,
    pub samples_ms: Vec<f64>,
}

fn wall_ns() -> u64 {
    heartbeat_tests::failover::wall_ns()
}

fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted.get(i).copied()
}

struct Node {
    ns: Netns,
    iface: String,
    agent: Option<ChildGuard>,
}

struct Split {
    /// Cut rules (first: removed before the namespaces go).
    cuts: Vec<NftGuard>,
    _veth: VethPair,
    nodes: Vec<Node>,
    dir: PathBuf,
    agent: PathBuf,
    stop: Arc<AtomicBool>,
    relay: Vec<std::thread::JoinHandle<()>>,
    /// The pty slaves, kept open while the agents run.
    _slaves: Vec<fs::File>,
}

impl Drop for Split {
    fn drop(&mut self) {
        self.cuts.clear();
        for n in &mut self.nodes {
            if let Some(mut a) = n.agent.take() {
                let _ = a.shutdown(Duration::from_secs(5));
            }
        }
        self.stop.store(true, Ordering::Relaxed);
        for t in self.relay.drain(..) {
            let _ = t.join();
        }
    }
}

impl Split {
    fn new(agent: &Path, dir: &Path) -> anyhow::Result<Self> {
        fs::create_dir_all(dir)?;
        let a = Netns::new("hbsa")?;
        let b = Netns::new("hbsb")?;
        let veth = VethPair::connect(&a, &b, format!("{A_ADDR}/24"), format!("{B_ADDR}/24"))?;
        let key = dir.join("cluster.key");
        fs::write(&key, "00112233445566778899aabbccddeeff\n")?;
        fs::set_permissions(&key, fs::Permissions::from_mode(0o600))?;
        // The cable: a pty pair per node, the masters joined by the relay.
        let (ma, sa) = crate::serial::pty()?;
        let (mb, sb) = crate::serial::pty()?;
        let mut devs = Vec::new();
        for (i, s) in [&sa, &sb].into_iter().enumerate() {
            let target = fs::read_link(format!("/proc/self/fd/{}", s.as_raw_fd()))?;
            let link = dir.join(format!("{}.tty", NAMES[i]));
            let _ = fs::remove_file(&link);
            std::os::unix::fs::symlink(&target, &link)?;
            devs.push(link);
        }
        let (ma, mb): (Arc<OwnedFd>, Arc<OwnedFd>) = (Arc::new(ma), Arc::new(mb));
        let stop = Arc::new(AtomicBool::new(false));
        let relay = [(ma.clone(), mb.clone()), (mb, ma)]
            .into_iter()
            .map(|(from, to)| {
                let stop = stop.clone();
                std::thread::spawn(move || crate::serial::wire(from, to, BAUD, stop))
            })
            .collect();
        let mut toml = format!(
            "[cluster]\nname = \"serial\"\nid = 12\nkey_file = \"cluster.key\"\n\
             heartbeat_interval = \"{INTERVAL}\"\nnode_timeout = \"{NODE_TIMEOUT}\"\nagent_timeout = \"1s\"\n\
             events_file = \"{{node}}.events.jsonl\"\nstate_file = \"{{node}}.state\"\n\n\
             [control]\nsocket = \"{{node}}.sock\"\n\n"
        );
        for (i, (name, addr)) in NAMES.iter().zip([A_ADDR, B_ADDR]).enumerate() {
            let iface = if i == 0 { &veth.if_a } else { &veth.if_b };
            toml.push_str(&format!(
                "[[node]]\nid = {}\nname = \"{name}\"\npriority = {}\n  [[node.link]]\n  id = 0\n  interface = \"{iface}\"\n  address = \"{addr}\"\n  [node.serial]\n  device = \"{}\"\n\n",
                i + 1,
                100 * (i + 1),
                devs[i].display()
            ));
        }
        toml.push_str(&format!(
            "[serial]\nbaud = {BAUD}\n\n[quorum]\ntwo_node = true\n\n\
             [[package]]\nname = \"web\"\nnodes = [\"alpha\", \"beta\"]\naddresses = [\"{VIP}/24\"]\n\
             failback_policy = \"automatic\"\nstart = \"/bin/true\"\nstop = \"/bin/true\"\n"
        ));
        fs::write(dir.join("cluster.toml"), toml)?;
        let nodes = [(a, veth.if_a.clone()), (b, veth.if_b.clone())]
            .into_iter()
            .map(|(ns, iface)| Node {
                ns,
                iface,
                agent: None,
            })
            .collect();
        let mut s = Self {
            cuts: Vec::new(),
            nodes,
            _veth: veth,
            dir: dir.to_owned(),
            agent: agent.to_owned(),
            stop,
            relay,
            _slaves: vec![sa, sb],
        };
        let config = s.dir.join("cluster.toml");
        for (i, name) in NAMES.iter().enumerate() {
            let log = s.dir.join(format!("{name}.log"));
            let g = s.nodes[i].ns.spawn_logged(
                &[
                    s.agent.to_str().unwrap_or_default(),
                    "run",
                    "--config",
                    config.to_str().unwrap_or_default(),
                    "--node",
                    name,
                ],
                &log,
            )?;
            s.nodes[i].agent = Some(g);
        }
        Ok(s)
    }

    fn status(&self, i: usize) -> Option<StatusReport> {
        let out = std::process::Command::new(&self.agent)
            .args(["status", "--json", "--socket"])
            .arg(self.dir.join(format!("{}.sock", NAMES[i])))
            .output()
            .ok()?;
        serde_json::from_slice(&out.stdout).ok()
    }

    fn journal(&self, i: usize) -> Vec<Entry> {
        fs::read_to_string(self.dir.join(format!("{}.events.jsonl", NAMES[i])))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Both see each other on the network link and the line, `web` runs
    /// on alpha and is stopped on beta.
    fn settled(&self) -> bool {
        (0..2).all(|i| {
            let Some(st) = self.status(i) else {
                return false;
            };
            let peer = NAMES[1 - i];
            let links_up = st.node(peer).is_some_and(|n| {
                n.links.len() >= 2
                    && n.links
                        .iter()
                        .all(|l| l.state == heartbeat_api::status::LinkState::Up)
            });
            let web = st.packages.iter().find(|p| p.name == "web");
            let want = if i == 0 { "running" } else { "stopped" };
            links_up
                && web.is_some_and(|p| p.local_state == want && p.owner.as_deref() == Some("alpha"))
        })
    }

    fn wait_settled(&self, within: Duration) -> anyhow::Result<()> {
        let end = Instant::now() + within;
        while !self.settled() {
            check_interrupt()?;
            if Instant::now() > end {
                bail!(
                    "the two nodes never settled (web on alpha, every link up); logs in {}",
                    self.dir.display()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Cuts the network both ways at the next whole second; returns it.
    fn cut(&mut self) -> anyhow::Result<u64> {
        let at_s = (wall_ns() + 300_000_000) / 1_000_000_000 + 1;
        let rule = format!("meta time >= \"{}\" drop", utc_date(at_s));
        for n in &self.nodes {
            self.cuts.push(nft_egress_rule(&n.ns, &n.iface, &rule)?);
        }
        let at = at_s * 1_000_000_000;
        let now = wall_ns();
        if at > now {
            std::thread::sleep(Duration::from_nanos(at - now));
        }
        Ok(at)
    }

    fn heal(&mut self) -> anyhow::Result<()> {
        for g in self.cuts.drain(..) {
            g.remove()?;
        }
        Ok(())
    }

    /// The first `cause` action entry of `web` on node `i` after `after`.
    fn action_after(&self, i: usize, cause: &str, after: u64) -> Option<u64> {
        self.journal(i)
            .into_iter()
            .find(|e| {
                e.event == EventKind::PackageAction
                    && e.cause == cause
                    && e.package.as_deref() == Some("web")
                    && e.kernel_wall_ns >= after
            })
            .map(|e| e.kernel_wall_ns)
    }
}

/// `trials` network cuts with the cable in place.
pub fn measure(agent: &Path, trials: usize, dir: &Path) -> anyhow::Result<SplitReport> {
    let mut s = Split::new(agent, dir)?;
    s.wait_settled(Duration::from_secs(30))?;
    let mut samples = Vec::new();
    let mut stops = Vec::new();
    let mut misses = 0;
    for t in 0..trials {
        check_interrupt()?;
        let at = s.cut()?;
        let end = Instant::now() + Duration::from_secs(10);
        let started = loop {
            if let Some(w) = s.action_after(1, "start", at) {
                break Some(w);
            }
            if Instant::now() > end {
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        match started {
            Some(w) => {
                let ms = w.saturating_sub(at) as f64 / 1e6;
                step(format!("serial split {}/{trials}: {ms:.1} ms", t + 1));
                samples.push(ms);
                if let Some(stop) = s.action_after(0, "stop", at) {
                    if stop > w {
                        bail!(
                            "two owners: beta's start ended before alpha's stop (logs in {})",
                            dir.display()
                        );
                    }
                    stops.push(stop.saturating_sub(at) as f64 / 1e6);
                }
            }
            None => {
                misses += 1;
                step(format!("serial split {}/{trials}: no start on beta", t + 1));
            }
        }
        s.heal()?;
        sleep_checked(Duration::from_millis(300))?;
        s.wait_settled(Duration::from_secs(30))?;
    }
    let mut sorted = samples.clone();
    sorted.sort_by(f64::total_cmp);
    stops.sort_by(f64::total_cmp);
    Ok(SplitReport {
        baud: BAUD,
        heartbeat_interval: INTERVAL.into(),
        node_timeout: NODE_TIMEOUT.into(),
        serial_interval: "10ms".into(),
        serial_timeout: "100ms".into(),
        trials,
        misses,
        p50_ms: percentile(&sorted, 0.5),
        p99_ms: percentile(&sorted, 0.99),
        max_ms: sorted.last().copied(),
        stop_p50_ms: percentile(&stops, 0.5),
        samples_ms: samples,
    })
}

/// The line printed after a run.
pub fn table(r: &SplitReport) -> String {
    let f = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.1} ms"));
    format!(
        "serial split (2 agents, network cut, cable in place at {} baud; interval {}, node_timeout {}, serial interval {}, timeout {}): all network links cut -> exactly one owner agreed over serial: p50 {}, p99 {}, max {} over {} trials ({} missed); alpha's stop done p50 {}",
        r.baud,
        r.heartbeat_interval,
        r.node_timeout,
        r.serial_interval,
        r.serial_timeout,
        f(r.p50_ms),
        f(r.p99_ms),
        f(r.max_ms),
        r.samples_ms.len(),
        r.misses,
        f(r.stop_p50_ms)
    )
}
