//! FRR's bfdd as a peer: one single-hop session between A and B, transmit
//! and receive interval 10 ms, detect multiplier 3. bfdd runs on its own
//! (no zebra: a session with `local-address` and no interface needs none),
//! logging to a file with microsecond timestamps; B's `up -> down` line for
//! A is B declaring A failed.

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    time::Duration,
};

use std::os::unix::process::CommandExt as _;

use anyhow::Context as _;
use heartbeat_tests::ChildGuard;

use super::{
    parse::{self, Obs},
    sniff::Stream,
    system::{ChildPair, FileTail, Node, System, check_started, up_and_settled},
    topology::{IP_A, IP_B, Topology},
};

/// Where Debian installs the daemon.
pub const BFDD: &str = "/usr/lib/frr/bfdd";
const INTERVAL_MS: u32 = 10;
const MULTIPLIER: u32 = 3;

struct Instance {
    guard: Option<ChildGuard>,
    tail: FileTail,
    obs: Vec<Obs>,
    peer: Ipv4Addr,
}

/// Two bfdd instances.
pub struct Bfdd {
    dir: PathBuf,
    a: Instance,
    b: Instance,
}

fn file(dir: &Path, node: Node, suffix: &str) -> PathBuf {
    let n = if node == Node::A { "a" } else { "b" };
    dir.join(format!("{n}.{suffix}"))
}

impl Bfdd {
    pub fn new(dir: &Path) -> Self {
        let inst = |node, peer| Instance {
            guard: None,
            tail: FileTail::new(&file(dir, node, "log")),
            obs: Vec::new(),
            peer,
        };
        Bfdd {
            dir: dir.to_owned(),
            a: inst(Node::A, IP_B),
            b: inst(Node::B, IP_A),
        }
    }

    fn start_node(&mut self, topo: &Topology, node: Node) -> anyhow::Result<()> {
        let (local, peer) = match node {
            Node::A => (IP_A, IP_B),
            Node::B => (IP_B, IP_A),
        };
        let ns = topo.netns(node.side());
        let log = file(&self.dir, node, "log");
        let conf = file(&self.dir, node, "conf");
        let vty = file(&self.dir, node, "vty");
        let pid = file(&self.dir, node, "pid");
        let _ = std::fs::remove_file(&pid);
        std::fs::create_dir_all(&vty)?;
        std::fs::write(
            &conf,
            format!(
                "log file {log} debugging\nlog timestamp precision 6\ndebug bfd peer\n!\n\
                 bfd\n peer {peer} local-address {local}\n  receive-interval {INTERVAL_MS}\n  \
                 transmit-interval {INTERVAL_MS}\n  detect-multiplier {MULTIPLIER}\n !\n!\n",
                log = log.display()
            ),
        )?;
        // bfdd drops to user frr: its directory must be frr's.
        heartbeat_tests::run(std::process::Command::new("chown").args([
            "-R",
            "frr:frr",
            &self.dir.display().to_string(),
        ]))
        .context("chown frr")?;
        let out = file(&self.dir, node, "out");
        let mut cmd = topo.command(node.side(), &[BFDD])?;
        cmd.env("TZ", "UTC")
            .process_group(0)
            .arg("-f")
            .arg(&conf)
            .arg("-i")
            .arg(&pid)
            .arg("--vty_socket")
            .arg(&vty)
            .arg("--bfdctl")
            .arg(vty.join("bfdd.sock"))
            .arg("-z")
            .arg(vty.join("zserv.api"))
            .args(["-P", "0", "-u", "frr", "-g", "frr"])
            .stdin(std::process::Stdio::null())
            .stdout(std::fs::File::create(&out)?)
            .stderr(std::fs::File::create(out.with_extension("err"))?);
        let mut guard = ns.spawn(&mut cmd).context("starting bfdd")?;
        check_started(&mut guard, &out.with_extension("err"), "bfdd")?;
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
            if let Some(o) = parse::bfdd_obs(&line, self.peer) {
                self.obs.push(o);
            }
        }
    }
}

impl ChildPair for Bfdd {
    const WHAT: &'static str = "bfdd";

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

impl System for Bfdd {
    fn label(&self) -> String {
        "FRR bfdd".into()
    }
    fn stream(&self) -> Stream {
        Stream::Bfd
    }
    fn interval_ns(&self) -> i64 {
        i64::from(INTERVAL_MS) * 1_000_000
    }
    fn max_wait(&self) -> Duration {
        Duration::from_secs(2)
    }
    fn settings(&self) -> String {
        format!(
            "single-hop session, transmit/receive {INTERVAL_MS} ms, multiplier {MULTIPLIER}; failure = B's log `up -> down`"
        )
    }

    fn start(&mut self, topo: &Topology) -> anyhow::Result<()> {
        self.start_node(topo, Node::A)?;
        self.start_node(topo, Node::B)
    }

    fn stop(&mut self) {
        self.shutdown_both(Duration::from_secs(2));
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
        up_and_settled(&self.a.obs, 100_000_000) && up_and_settled(&self.b.obs, 100_000_000)
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
}

impl Drop for Bfdd {
    fn drop(&mut self) {
        self.stop();
    }
}
