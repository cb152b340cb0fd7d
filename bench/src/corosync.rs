//! corosync 3 (knet) as a peer: a two-node cluster, `two_node: 1`, the
//! token timeout given by the bench (the smallest that stays stable at
//! idle). B's log `[QUORUM] Members[..]` without node 1 is B declaring A
//! failed; "A processor failed" (token loss) is recorded as a suspect.
//!
//! corosync locks the fixed path `/run/corosync.pid`, so each instance runs
//! with its own directory bind-mounted on `/run` (inside the private mount
//! namespace that `ip netns exec` creates); its IPC sockets are abstract,
//! hence per network namespace.
//!
//! [`config`], [`start`] and [`Files`] are shared with the membership
//! bench's three-node corosync cluster (`membership.rs`).

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use std::os::unix::process::CommandExt as _;

use anyhow::Context as _;
use heartbeat_tests::{ChildGuard, Netns};

use super::{
    parse::{self, CorosyncLine, Obs},
    sniff::Stream,
    system::{ChildPair, FileTail, Node, System, check_started, up_and_settled},
    topology::{IP_A, IP_B, Topology},
    wall_ns,
};

struct Instance {
    guard: Option<ChildGuard>,
    tail: FileTail,
    obs: Vec<Obs>,
    peer_id: u32,
    /// Wall time and text of "not scheduled" warnings.
    warnings: Vec<(i64, String)>,
}

/// Two corosync instances.
pub struct Corosync {
    dir: PathBuf,
    token_ms: u32,
    a: Instance,
    b: Instance,
}

/// The default `token_retransmits_before_loss_const`, kept as is.
pub const RETRANSMITS: u32 = 4;

/// The files of one corosync instance `name`, all in one directory.
pub struct Files {
    pub conf: PathBuf,
    /// corosync's own log (`timestamp: hires`: millisecond stamps).
    pub log: PathBuf,
    pub state: PathBuf,
    /// Bind-mounted on `/run` for the instance.
    pub run: PathBuf,
    /// Its stdout and stderr.
    pub out: PathBuf,
}

impl Files {
    pub fn new(dir: &Path, name: &str) -> Self {
        let f = |suffix: &str| dir.join(format!("{name}.{suffix}"));
        Files {
            conf: f("conf"),
            log: f("log"),
            state: f("state"),
            run: f("run"),
            out: f("out"),
        }
    }
}

/// corosync.conf for `nodes` (node id, name, ring0 address): knet, no
/// crypto, token `token_ms` with `token_coefficient: 0` (so the token
/// timeout is `token_ms` whatever the number of nodes; corosync otherwise
/// adds 650 ms per node above two), logging to `log` with
/// millisecond stamps, its state in `state`; `two_node` for a two-node
/// cluster.
pub fn config(
    token_ms: u32,
    nodes: &[(u32, &str, String)],
    two_node: bool,
    log: &Path,
    state: &Path,
) -> String {
    let mut list = String::new();
    for (id, name, addr) in nodes {
        list.push_str(&format!(
            "  node {{\n    name: {name}\n    nodeid: {id}\n    ring0_addr: {addr}\n  }}\n"
        ));
    }
    format!(
        "totem {{\n  version: 2\n  cluster_name: hbbench\n  transport: knet\n  \
         crypto_cipher: none\n  crypto_hash: none\n  token: {token_ms}\n  token_coefficient: 0\n}}\n\
         logging {{\n  fileline: off\n  to_stderr: no\n  to_logfile: yes\n  logfile: {log}\n  \
         to_syslog: no\n  timestamp: hires\n  debug: off\n}}\n\
         quorum {{\n  provider: corosync_votequorum\n{two}}}\n\
         system {{\n  state_dir: {state}\n}}\n\
         nodelist {{\n{list}}}\n",
        log = log.display(),
        state = state.display(),
        two = if two_node { "  two_node: 1\n" } else { "" },
    )
}

/// Starts one corosync instance with configuration `conf` through `sh`
/// (`cmd`: a command running `sh` in `ns`, e.g. pinned to a CPU): its own
/// directory is bind-mounted on `/run` inside the private mount namespace
/// of `ip netns exec`, then `sh` execs `corosync -f` (so the guard's pid is
/// corosync's). Fails when it exits at once, with its output as the reason.
pub fn start(
    ns: &Netns,
    mut cmd: Command,
    files: &Files,
    conf: &str,
) -> anyhow::Result<ChildGuard> {
    std::fs::create_dir_all(&files.run)?;
    std::fs::create_dir_all(&files.state)?;
    std::fs::write(&files.conf, conf)?;
    let script = format!(
        "mount --bind '{}' /run && exec corosync -f -c '{}'",
        files.run.display(),
        files.conf.display()
    );
    cmd.env("TZ", "UTC")
        .process_group(0)
        .args(["-c", &script])
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(&files.out)?)
        .stderr(std::fs::File::options().append(true).open(&files.out)?);
    let mut guard = ns.spawn(&mut cmd).context("starting corosync")?;
    if let Err(e) = check_started(&mut guard, &files.log, "corosync") {
        let out_text = std::fs::read_to_string(&files.out).unwrap_or_default();
        return Err(e.context(out_text.trim().to_owned()));
    }
    Ok(guard)
}

impl Corosync {
    pub fn new(dir: &Path, token_ms: u32) -> Self {
        let inst = |name, peer_id| Instance {
            guard: None,
            tail: FileTail::new(&Files::new(dir, name).log),
            obs: Vec::new(),
            peer_id,
            warnings: Vec::new(),
        };
        Corosync {
            dir: dir.to_owned(),
            token_ms,
            a: inst("a", 2),
            b: inst("b", 1),
        }
    }

    fn files(&self, node: Node) -> Files {
        Files::new(&self.dir, if node == Node::A { "a" } else { "b" })
    }
    fn start_node(&mut self, topo: &Topology, node: Node) -> anyhow::Result<()> {
        let files = self.files(node);
        let conf = config(
            self.token_ms,
            &[(1, "a", IP_A.to_string()), (2, "b", IP_B.to_string())],
            true,
            &files.log,
            &files.state,
        );
        let guard = start(
            topo.netns(node.side()),
            topo.command(node.side(), &["sh"])?,
            &files,
            &conf,
        )?;
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
        let now = wall_ns();
        for line in self.tail.lines() {
            if let Some((ns, CorosyncLine::NotScheduled(msg))) = parse::corosync_line(&line, now) {
                self.warnings.push((ns, format!("not scheduled {msg}")));
            }
            if let Some(o) = parse::corosync_obs(&line, self.peer_id, now) {
                self.obs.push(o);
            }
        }
    }
}

impl ChildPair for Corosync {
    const WHAT: &'static str = "corosync";

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

impl System for Corosync {
    fn label(&self) -> String {
        "corosync".into()
    }
    fn stream(&self) -> Stream {
        Stream::Corosync
    }
    fn interval_ns(&self) -> i64 {
        // The token circulates continuously; its retransmit timeout is the
        // natural period.
        i64::from(self.token_ms) * 1_000_000 * 10 / (i64::from(RETRANSMITS) * 10 + 2)
    }
    fn max_wait(&self) -> Duration {
        Duration::from_millis(u64::from(self.token_ms) * 10 + 2000)
    }
    fn settings(&self) -> String {
        format!(
            "knet, two_node, token {} ms (token_retransmits_before_loss_const {RETRANSMITS}, consensus 1.2 x token); failure = B's log `[QUORUM] Members` without A",
            self.token_ms
        )
    }

    fn start(&mut self, topo: &Topology) -> anyhow::Result<()> {
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
        up_and_settled(&self.a.obs, 200_000_000) && up_and_settled(&self.b.obs, 200_000_000)
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

    fn warnings_since(&self, since: i64) -> Vec<String> {
        [&self.a, &self.b]
            .iter()
            .flat_map(|i| i.warnings.iter())
            .filter(|(t, _)| *t >= since)
            .map(|(_, w)| w.clone())
            .collect()
    }
}

impl Drop for Corosync {
    fn drop(&mut self) {
        self.stop();
    }
}
