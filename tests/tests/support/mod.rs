//! Fixtures for agent integration tests: a cluster of real agents in network
//! namespaces, their journals, control sockets and metrics.
#![allow(
    dead_code,
    unused_imports,
    reason = "each test binary uses a different subset"
)]

use std::{
    fs,
    io::{Read as _, Write as _},
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

pub use heartbeat_api::{
    journal::{Entry, EventKind},
    status::{LinkState, NodeState, StatusReport},
};
use heartbeat_tests::{ChildGuard, Netns, VethPair};

/// The agent binary built by `cargo build --workspace` (xtask test builds it
/// before running the tests).
pub fn agent_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/<test> -> target/<profile>/heartbeat-agent
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let bin = dir.join("heartbeat-agent");
    assert!(
        bin.exists(),
        "{} is missing: build it first (cargo build -p heartbeat-agent), or run `cargo xtask test`",
        bin.display()
    );
    bin
}

pub fn wall_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

/// A scratch directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "hb-test-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).unwrap();
        Self(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Timing of a test cluster.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    pub interval: &'static str,
    pub node_timeout: &'static str,
    pub agent_timeout: &'static str,
}

/// Tolerant timing for tests about semantics rather than speed (no flaps
/// when the machine is busy).
pub const STEADY: Timing = Timing {
    interval: "1ms",
    node_timeout: "20ms",
    agent_timeout: "200ms",
};

/// Detection timing. agent_timeout is deliberately long: a killed or
/// stopped agent must be seen by the kernel's watch (tracepoints), not by
/// its stamp going stale.
pub const FAST: Timing = Timing {
    interval: "200us",
    node_timeout: "1ms",
    agent_timeout: "5s",
};

/// A node of a test cluster: its namespace and (while running) its agent.
pub struct Node {
    pub name: String,
    pub ns: Netns,
    pub agent: Option<ChildGuard>,
    /// Heartbeat interface names per link id.
    pub ifaces: Vec<String>,
    /// The node's wire port per link id (where a silent fault is injected).
    pub wires: Vec<String>,
}

/// Several namespaces, each running an agent, joined by veth pairs.
pub struct Cluster {
    pub dir: TempDir,
    pub config: PathBuf,
    pub nodes: Vec<Node>,
    pub links: usize,
    /// Pass-through XDP programs on the bridge side of heartbeat veths.
    _pass: Vec<aya::Ebpf>,
}

/// (epoch, members sorted by name, coordinator, quorate) of an agreed view.
pub type View = (u64, Vec<String>, Option<String>, bool);

/// Node names, in id order (id = position + 1).
pub const NAMES: [&str; 5] = ["alpha", "beta", "gamma", "delta", "epsilon"];

/// Address of node `i` (0-based) on link `l`.
pub fn addr(i: usize, l: usize) -> String {
    format!("10.{}.{}.{}", 210 + l, 0, i + 1)
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Stop the agents before the scratch directory goes (fields drop in
        // declaration order, `dir` first): a running agent could write its
        // state file into a removed directory.
        for n in &mut self.nodes {
            n.agent = None;
        }
    }
}

impl Cluster {
    /// `n` nodes (2 to 5), `links` heartbeat links.
    ///
    /// Each node's heartbeat interface is one end of a veth pair whose other
    /// end sits, inside the node's own namespace, in a bridge with the
    /// node's "wire" port (`wires[l]`). A frame the XDP program sends back
    /// with XDP_TX therefore leaves the node through the wire port's normal
    /// transmit path, where an nftables netdev egress rule in the node's
    /// namespace can silence it (XDP_TX on a veth bypasses the egress hook
    /// of the interface it was received on). Two nodes' wire ports are
    /// joined directly; with three, through a bridge in a hub namespace.
    pub fn new(n: usize, links: usize, timing: Timing, metrics: bool) -> Self {
        assert!((2..=5).contains(&n) && (1..=2).contains(&links));
        let dir = TempDir::new("cluster");
        let names: Vec<String> = NAMES[..n].iter().map(|s| s.to_string()).collect();
        let mut nodes: Vec<Node> = names
            .iter()
            .map(|name| Node {
                name: name.clone(),
                ns: Netns::new("hbt").expect("netns"),
                agent: None,
                ifaces: Vec::new(),
                wires: Vec::new(),
            })
            .collect();
        // The bridge lives in the node's namespace too: answer ARP only on
        // the interface that holds the address, or the bridge answers with
        // its own MAC and heartbeats are delivered to the bridge instead.
        for node in &nodes {
            for key in ["all", "default"] {
                node.ns
                    .exec(&[
                        "sysctl",
                        "-qw",
                        &format!("net.ipv4.conf.{key}.arp_ignore=1"),
                    ])
                    .expect("sysctl arp_ignore");
            }
        }
        let mut inner_ends: Vec<(usize, String)> = Vec::new();
        for l in 0..links {
            for (i, node) in nodes.iter_mut().enumerate() {
                let pair = VethPair::connect(
                    &node.ns,
                    &node.ns,
                    format!("{}/24", addr(i, l)),
                    Vec::<String>::new(),
                )
                .expect("inner veth");
                let br = format!("br{l}");
                node.ns.ip(&["link", "add", &br, "type", "bridge"]).unwrap();
                node.ns.ip(&["link", "set", &br, "up"]).unwrap();
                node.ns
                    .ip(&["link", "set", &pair.if_b, "master", &br])
                    .unwrap();
                node.ifaces.push(pair.if_a.clone());
                inner_ends.push((i, pair.if_b.clone()));
            }
        }
        let mut hubs = Vec::new();
        for l in 0..links {
            if n == 2 {
                let (a, b) = nodes.split_at_mut(1);
                let pair = VethPair::connect(
                    &a[0].ns,
                    &b[0].ns,
                    Vec::<String>::new(),
                    Vec::<String>::new(),
                )
                .expect("wire veth");
                a[0].wires.push(pair.if_a.clone());
                b[0].wires.push(pair.if_b.clone());
            } else {
                let hub = Netns::new("hbt").expect("hub netns");
                hub.ip(&["link", "add", "br0", "type", "bridge"]).unwrap();
                hub.ip(&["link", "set", "br0", "up"]).unwrap();
                for node in nodes.iter_mut() {
                    let pair = VethPair::connect(
                        &node.ns,
                        &hub,
                        Vec::<String>::new(),
                        Vec::<String>::new(),
                    )
                    .expect("wire veth");
                    hub.ip(&["link", "set", &pair.if_b, "master", "br0"])
                        .unwrap();
                    node.wires.push(pair.if_a.clone());
                }
                hubs.push(hub);
            }
            for node in nodes.iter_mut() {
                let wire = node.wires[l].clone();
                node.ns
                    .ip(&["link", "set", &wire, "master", &format!("br{l}")])
                    .unwrap();
            }
        }
        // The bridge-side end of each heartbeat veth receives XDP_TX frames:
        // it needs an XDP program of its own (the heartbeat program, left
        // disabled, passes everything).
        let mut pass = Vec::new();
        for (i, ifname) in inner_ends {
            pass.push(
                heartbeat_tests::attach_xdp_pass(
                    &nodes[i].ns,
                    &ifname,
                    heartbeat_agent::EBPF_OBJECT,
                )
                .expect("pass-through XDP"),
            );
        }
        // New bridge ports forward only once the kernel's link watcher has
        // seen their carrier (up to a second): wait until every node reaches
        // every other one, so the agents start on a working network.
        for (i, node) in nodes.iter().enumerate() {
            for l in 0..links {
                for j in (0..n).filter(|&j| j != i) {
                    let target = addr(j, l);
                    let ok = (0..20).any(|_| {
                        node.ns
                            .exec(&["ping", "-c", "1", "-W", "1", "-i", "0.2", &target])
                            .is_ok()
                    });
                    assert!(ok, "{} cannot reach {target}", node.name);
                }
            }
        }
        let key = dir.0.join("cluster.key");
        fs::write(&key, "00112233445566778899aabbccddeeff\n").unwrap();
        fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();
        let mut toml = format!(
            "[cluster]\nname = \"test\"\nid = 7\nkey_file = \"cluster.key\"\nport = 6405\n\
             heartbeat_interval = \"{}\"\nnode_timeout = \"{}\"\nagent_timeout = \"{}\"\n\
             events_file = \"{{node}}.events.jsonl\"\nstate_file = \"{{node}}.state\"\n\n[control]\nsocket = \"{{node}}.sock\"\n\n",
            timing.interval, timing.node_timeout, timing.agent_timeout
        );
        if metrics {
            toml.push_str("[metrics]\nlisten = \"127.0.0.1:9465\"\n\n");
        }
        for (i, node) in nodes.iter().enumerate() {
            toml.push_str(&format!(
                "[[node]]\nid = {}\nname = \"{}\"\n",
                i + 1,
                node.name
            ));
            for l in 0..links {
                toml.push_str(&format!(
                    "  [[node.link]]\n  id = {l}\n  interface = \"{}\"\n  address = \"{}\"\n",
                    node.ifaces[l],
                    addr(i, l)
                ));
            }
            toml.push('\n');
        }
        let config = dir.0.join("cluster.toml");
        fs::write(&config, toml).unwrap();
        // Keep the hub namespaces alive as long as the cluster by parking
        // them in a node-less slot.
        let mut c = Self {
            dir,
            config,
            nodes,
            links,
            _pass: pass,
        };
        for hub in hubs {
            c.nodes.push(Node {
                name: String::new(),
                ns: hub,
                agent: None,
                ifaces: Vec::new(),
                wires: Vec::new(),
            });
        }
        c
    }

    /// A cluster over a topology the test built itself (its namespaces in
    /// `nodes`, member nodes named, extra namespaces with an empty name),
    /// with `pass` the pass-through XDP programs it attached.
    pub fn from_parts(
        dir: TempDir,
        config: PathBuf,
        nodes: Vec<Node>,
        links: usize,
        pass: Vec<aya::Ebpf>,
    ) -> Self {
        Self {
            dir,
            config,
            nodes,
            links,
            _pass: pass,
        }
    }

    /// The hub namespace joining the wire ports of link `l` (3 nodes or
    /// more): its bridge `br0` can hold an address (a quorum server).
    pub fn hub(&self, l: usize) -> &Netns {
        &self
            .nodes
            .iter()
            .filter(|n| n.name.is_empty())
            .nth(l)
            .expect("a hub (3 nodes or more)")
            .ns
    }

    pub fn members(&self) -> impl Iterator<Item = &Node> {
        self.nodes.iter().filter(|n| !n.name.is_empty())
    }

    pub fn index(&self, name: &str) -> usize {
        self.nodes
            .iter()
            .position(|n| n.name == name)
            .expect("node")
    }

    pub fn journal_path(&self, name: &str) -> PathBuf {
        self.dir.0.join(format!("{name}.events.jsonl"))
    }

    pub fn socket(&self, name: &str) -> PathBuf {
        self.dir.0.join(format!("{name}.sock"))
    }

    /// Rewrites the configuration file through `f`.
    pub fn edit_config(&self, f: impl FnOnce(String) -> String) {
        let text = fs::read_to_string(&self.config).unwrap();
        fs::write(&self.config, f(text)).unwrap();
    }

    pub fn start(&mut self, name: &str) {
        self.start_prefixed(name, &[]);
    }

    /// Starts `name`'s agent behind `prefix` (e.g. `prlimit --nofile=...`).
    pub fn start_prefixed(&mut self, name: &str, prefix: &[&str]) {
        let i = self.index(name);
        let log = self.dir.0.join(format!("{name}.log"));
        let bin = agent_binary();
        let cfg = self.config.to_str().unwrap().to_owned();
        let node = &mut self.nodes[i];
        let guard = node
            .ns
            .spawn_logged(
                &prefix
                    .iter()
                    .copied()
                    .chain([
                        bin.to_str().unwrap(),
                        "run",
                        "--config",
                        &cfg,
                        "--node",
                        name,
                    ])
                    .collect::<Vec<_>>(),
                &log,
            )
            .expect("spawn agent");
        node.agent = Some(guard);
    }

    pub fn start_all(&mut self) {
        let names: Vec<String> = self.members().map(|n| n.name.clone()).collect();
        for n in names {
            self.start(&n);
        }
    }

    pub fn agent(&mut self, name: &str) -> &mut ChildGuard {
        let i = self.index(name);
        self.nodes[i].agent.as_mut().expect("agent running")
    }

    pub fn log(&self, name: &str) -> String {
        fs::read_to_string(self.dir.0.join(format!("{name}.log"))).unwrap_or_default()
    }

    /// Journal entries of `name`.
    pub fn journal(&self, name: &str) -> Vec<Entry> {
        fs::read_to_string(self.journal_path(name))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Waits for a journal entry of `observer` matching `event` and `peer`
    /// whose kernel time is at or after `after_wall_ns`.
    pub fn wait_event(
        &self,
        observer: &str,
        event: EventKind,
        peer: &str,
        after_wall_ns: u64,
        timeout: Duration,
    ) -> Option<Entry> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(e) = self.journal(observer).into_iter().find(|e| {
                e.event == event
                    && e.peer.as_deref() == Some(peer)
                    && e.kernel_wall_ns >= after_wall_ns
            }) {
                return Some(e);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until every pair of running members sees each other up: the
    /// links (journal) and the agreed membership (status).
    pub fn wait_all_up(&self, timeout: Duration) {
        let names: Vec<String> = self
            .members()
            .filter(|n| n.agent.is_some())
            .map(|n| n.name.clone())
            .collect();
        for a in &names {
            for b in names.iter().filter(|b| *b != a) {
                assert!(
                    self.wait_event(a, EventKind::NodeUp, b, 0, timeout)
                        .is_some(),
                    "{a} never saw {b} up\n--- {a} log:\n{}\n--- journal: {:?}",
                    self.log(a),
                    self.journal(a)
                );
                self.wait_state(a, b, NodeState::Up, timeout);
            }
        }
    }

    /// Runs the agent CLI (status/events) against `name`'s socket.
    pub fn cli(&self, name: &str, args: &[&str]) -> std::process::Output {
        Command::new(agent_binary())
            .args(args)
            .args(["--socket", self.socket(name).to_str().unwrap()])
            .output()
            .expect("agent cli")
    }

    /// Polls `name`'s status until `peer` has `state` (or panics after `timeout`).
    pub fn wait_state(&self, name: &str, peer: &str, state: NodeState, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            // The agent may not be listening yet.
            let st = self.try_status(name);
            if st
                .as_ref()
                .and_then(|s| s.node(peer))
                .is_some_and(|n| n.state == state)
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{name} never saw {peer} {state:?}: {st:?}\n{}",
                self.log(name)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `status --json` of `name`'s agent, or `None` while it does not
    /// answer (not listening yet, or gone).
    pub fn try_status(&self, name: &str) -> Option<StatusReport> {
        let out = self.cli(name, &["status", "--json"]);
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    /// The agreed view `name` reports, or `None` while it does not answer.
    pub fn view(&self, name: &str) -> Option<View> {
        let m = self.try_status(name)?.membership;
        let mut members = m.members;
        members.sort();
        Some((m.epoch, members, m.coordinator, m.quorate))
    }

    /// Waits until every node in `names` reports the same view (epoch > 0)
    /// with exactly `members`, and returns it; panics with the agents' logs
    /// after `timeout`.
    pub fn agreed(&self, names: &[&str], members: &[&str], timeout: Duration) -> View {
        let mut want: Vec<String> = members.iter().map(|s| s.to_string()).collect();
        want.sort();
        let deadline = Instant::now() + timeout;
        loop {
            let views: Vec<_> = names.iter().map(|n| self.view(n)).collect();
            if let Some(Some(first)) = views.first()
                && first.0 > 0
                && first.1 == want
                && views.iter().all(|v| v.as_ref() == Some(first))
            {
                return first.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no agreement on {want:?} among {names:?}: {views:?}\n{}",
                names
                    .iter()
                    .map(|n| format!("--- {n}:\n{}", self.log(n)))
                    .collect::<String>()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Runs `heartbeat-agent run` for `name` in the foreground (in its
    /// namespace) and returns its output: for agents expected to refuse
    /// to start.
    pub fn run_once(&self, name: &str) -> std::process::Output {
        let i = self.index(name);
        self.nodes[i]
            .ns
            .command(agent_binary())
            .args([
                "run",
                "--config",
                self.config.to_str().unwrap(),
                "--node",
                name,
            ])
            .output()
            .expect("agent run")
    }

    /// Open file descriptors of `name`'s agent.
    pub fn agent_fds(&mut self, name: &str) -> usize {
        let pid = self.agent(name).pid();
        fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// `status --json` of `name`'s agent.
    pub fn status(&self, name: &str) -> StatusReport {
        let out = self.cli(name, &["status", "--json"]);
        assert!(
            out.status.success(),
            "status failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("status json")
    }
}

/// Runs `f` on a thread that has entered `ns`'s network namespace.
pub fn in_netns<T: Send>(ns: &Netns, f: impl FnOnce() -> T + Send) -> T {
    heartbeat_tests::in_netns(ns.name(), f).expect("netns thread")
}

/// GETs `path` from `addr` inside `ns`; returns the body.
pub fn http_get(ns: &Netns, addr: &'static str, path: &'static str) -> String {
    in_netns(ns, move || {
        let mut s = std::net::TcpStream::connect(addr).expect("connect metrics");
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out.split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default()
    })
}
