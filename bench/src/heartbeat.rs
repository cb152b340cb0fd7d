//! heartbeat itself: `heartbeat-agent run` in each namespace, one link on
//! the veth, `heartbeat_interval` = node_timeout / 5 (the documented
//! recommendation), an `agent_timeout` (the dead-man gate: the product's
//! default unless `--gate-intervals` is given), and an
//! events journal per node. B's `node_down` for A is the declaration; its
//! time is the kernel's own (`kernel_wall_ns`), the agent's handling time is
//! kept beside it.

use std::{
    io::Read as _,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context as _;
use heartbeat_tests::ChildGuard;

use super::{
    parse::{self, Obs},
    sniff::Stream,
    system::{
        ChildPair, FileTail, Node, ReceiverGaps, System, check_started, spawn_logged,
        up_and_settled,
    },
    topology::{IP_A, IP_B, Topology},
    wall_ns,
};

/// The UDP port the bench's clusters use.
pub const PORT: u16 = 6405;

struct Instance {
    guard: Option<ChildGuard>,
    tail: FileTail,
    obs: Vec<Obs>,
    peer: &'static str,
    /// (wall ns, event) of agent-level events worth reporting.
    warnings: Vec<(i64, String)>,
    /// Wall ns of every `detection_deferred` event (the detector held a
    /// verdict because this node itself was stalled or its timer late).
    deferred: Vec<i64>,
}

/// Two heartbeat agents.
pub struct Heartbeat {
    dir: PathBuf,
    agent: PathBuf,
    node_timeout: Duration,
    interval: Duration,
    agent_timeout: Duration,
    a: Instance,
    b: Instance,
}

fn file(dir: &Path, node: Node, suffix: &str) -> PathBuf {
    let n = if node == Node::A { "a" } else { "b" };
    dir.join(format!("{n}.{suffix}"))
}

/// A duration as the agent's config reads it, in whole microseconds.
fn human(d: Duration) -> String {
    format!("{}us", d.as_micros())
}

/// A duration for people: µs below 1 ms, else ms.
pub fn pretty(d: Duration) -> String {
    let us = d.as_micros();
    if us < 1000 {
        format!("{us}µs")
    } else if us.is_multiple_of(1000) {
        format!("{}ms", us / 1000)
    } else {
        format!("{:.1}ms", us as f64 / 1000.0)
    }
}

impl Heartbeat {
    /// heartbeat_interval = node_timeout / 5, the recommended ratio.
    pub fn new(dir: &Path, agent: &Path, node_timeout: Duration, agent_timeout: Duration) -> Self {
        let interval = node_timeout / 5;
        let inst = |node, peer| Instance {
            guard: None,
            tail: FileTail::new(&file(dir, node, "events.jsonl")),
            obs: Vec::new(),
            peer,
            warnings: Vec::new(),
            deferred: Vec::new(),
        };
        Heartbeat {
            dir: dir.to_owned(),
            agent: agent.to_owned(),
            node_timeout,
            interval,
            agent_timeout,
            a: inst(Node::A, "b"),
            b: inst(Node::B, "a"),
        }
    }

    fn write_key(&self) -> anyhow::Result<PathBuf> {
        let path = self.dir.join("cluster.key");
        let mut key = [0u8; 16];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut key))
            .context("reading /dev/urandom")?;
        let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
        std::fs::write(&path, format!("{hex}\n")).context("writing the key file")?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        Ok(path)
    }

    fn config(&self, node: Node, topo: &Topology) -> String {
        let n = if node == Node::A { "a" } else { "b" };
        format!(
            "[cluster]\nname = \"bench\"\nid = 4242\nkey_file = \"cluster.key\"\nport = {PORT}\n\
             heartbeat_interval = \"{hb}\"\nnode_timeout = \"{nt}\"\nagent_timeout = \"{at}\"\n\
             events_file = \"{n}.events.jsonl\"\nstate_file = \"{n}.state\"\n\n[control]\nsocket = \"{n}.sock\"\n\n\
             [[node]]\nid = 1\nname = \"a\"\n  [[node.link]]\n  id = 0\n  interface = \"{if_a}\"\n  address = \"{IP_A}\"\n\n\
             [[node]]\nid = 2\nname = \"b\"\n  [[node.link]]\n  id = 0\n  interface = \"{if_b}\"\n  address = \"{IP_B}\"\n",
            hb = human(self.interval),
            nt = human(self.node_timeout),
            at = human(self.agent_timeout),
            if_a = topo.if_a,
            if_b = topo.if_b,
        )
    }

    fn start_node(&mut self, topo: &Topology, node: Node) -> anyhow::Result<()> {
        let name = match node {
            Node::A => "a",
            Node::B => "b",
        };
        let conf = file(&self.dir, node, "toml");
        std::fs::write(&conf, self.config(node, topo))?;
        let log = file(&self.dir, node, "log");
        let agent = self.agent.display().to_string();
        let conf_s = conf.display().to_string();
        let mut guard = spawn_logged(
            topo,
            node.side(),
            &[&agent, "run", "--config", &conf_s, "--node", name],
            &log,
        )
        .context("starting heartbeat-agent")?;
        check_started(&mut guard, &log, "heartbeat-agent")?;
        let inst = if node == Node::A {
            &mut self.a
        } else {
            &mut self.b
        };
        inst.guard = Some(guard);
        Ok(())
    }
}

impl Instance {
    fn poll(&mut self) {
        for line in self.tail.lines() {
            if let Some(o) = parse::heartbeat_obs(&line, self.peer) {
                self.obs.push(o);
            } else if let Some(ev) = parse::heartbeat_event_name(&line) {
                match ev.as_str() {
                    "agent_stale" => self.warnings.push((wall_ns(), ev)),
                    "detection_deferred" => self.deferred.push(wall_ns()),
                    _ => {}
                }
            }
        }
    }
}

impl ChildPair for Heartbeat {
    const WHAT: &'static str = "agent";

    fn guard(&mut self, node: Node) -> &mut Option<ChildGuard> {
        match node {
            Node::A => &mut self.a.guard,
            Node::B => &mut self.b.guard,
        }
    }

    fn guard_ref(&self, node: Node) -> &Option<ChildGuard> {
        match node {
            Node::A => &self.a.guard,
            Node::B => &self.b.guard,
        }
    }
}

impl System for Heartbeat {
    fn label(&self) -> String {
        format!("heartbeat {}", pretty(self.node_timeout))
    }
    fn stream(&self) -> Stream {
        Stream::Heartbeat
    }
    fn interval_ns(&self) -> i64 {
        self.interval.as_nanos() as i64
    }
    fn max_wait(&self) -> Duration {
        Duration::from_millis(500) + self.node_timeout * 20 + self.agent_timeout
    }
    fn settings(&self) -> String {
        format!(
            "node_timeout {}, heartbeat_interval {} (node_timeout/5, the recommended ratio), agent_timeout {} (dead-man gate); failure = B's node_down, kernel_wall_ns",
            pretty(self.node_timeout),
            pretty(self.interval),
            pretty(self.agent_timeout)
        )
    }

    fn start(&mut self, topo: &Topology) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        self.write_key()?;
        self.start_node(topo, Node::A)?;
        self.start_node(topo, Node::B)
    }

    fn stop(&mut self) {
        self.shutdown_both(Duration::from_secs(3));
    }

    fn poll(&mut self) -> anyhow::Result<()> {
        self.a.poll();
        self.b.poll();
        Ok(())
    }

    fn observations(&self, node: Node) -> &[Obs] {
        match node {
            Node::A => &self.a.obs,
            Node::B => &self.b.obs,
        }
    }

    fn healthy(&self) -> bool {
        up_and_settled(&self.a.obs, 50_000_000) && up_and_settled(&self.b.obs, 50_000_000)
    }

    fn stop_a(&mut self) -> anyhow::Result<i64> {
        self.sigstop_a()
    }

    fn cont_a(&mut self) -> anyhow::Result<()> {
        self.sigcont_a()
    }

    fn kill_a(&mut self) -> anyhow::Result<i64> {
        self.sigkill_a()
    }

    fn restart_a(&mut self, topo: &Topology) -> anyhow::Result<()> {
        self.start_node(topo, Node::A)
    }

    fn pids(&self) -> Vec<i32> {
        self.child_pids()
    }

    fn agent_pid(&self, node: Node) -> Option<i32> {
        self.guard_ref(node).as_ref().map(|g| g.pid() as i32)
    }

    fn heartbeats_per_s(&self) -> Option<f64> {
        Some(1e9 / self.interval.as_nanos() as f64)
    }

    fn status(&self, node: Node) -> Option<heartbeat_api::status::StatusReport> {
        let out = std::process::Command::new(&self.agent)
            .args(["status", "--json", "--socket"])
            .arg(file(&self.dir, node, "sock"))
            .output()
            .ok()?;
        serde_json::from_slice(&out.stdout).ok()
    }

    fn deferrals_since(&self, since: i64) -> Option<usize> {
        Some(
            self.a.deferred.iter().filter(|t| **t >= since).count()
                + self.b.deferred.iter().filter(|t| **t >= since).count(),
        )
    }

    fn receiver_gaps(&self) -> Option<ReceiverGaps> {
        let v = self.status(Node::B)?;
        let link = v.node("a")?.links.first()?.clone();
        Some(ReceiverGaps {
            max_ns: (link.max_gap_ms.unwrap_or(0.0) * 1e6) as i64,
            max_at_mono_ns: link.max_gap_at_mono_ns,
            hist: link.gap_hist,
        })
    }

    fn warnings_since(&self, since: i64) -> Vec<String> {
        [(&self.a, "a"), (&self.b, "b")]
            .iter()
            .flat_map(|(i, n)| {
                i.warnings
                    .iter()
                    .filter(move |(t, _)| *t >= since)
                    .map(move |(_, w)| format!("{w} on {n}"))
            })
            .collect()
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.stop();
    }
}
