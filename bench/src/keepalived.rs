//! keepalived as a peer: VRRPv3, unicast between A and B, `advert_int 0.01`
//! (its minimum). A has the higher priority and is MASTER; B's
//! `notify_fifo` reporting `MASTER` (or `FAULT`) is B declaring A failed.
//! Each FIFO line is stamped with the wall time the bench read it.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context as _;
use heartbeat_tests::{ChildGuard, Signal};

use super::{
    parse::{self, Obs},
    sniff::Stream,
    system::{
        FifoStamper, FileTail, Node, System, check_started, kill_guard, read_pid_file, signal_pid,
        spawn_logged, up_and_settled,
    },
    topology::{IP_A, IP_B, Topology},
    wall_ns,
};

struct Instance {
    node: Node,
    guard: Option<ChildGuard>,
    /// The VRRP child's pid (the process that sends adverts).
    vrrp_pid: Option<i32>,
    _stamper: Option<FifoStamper>,
    tail: FileTail,
    obs: Vec<Obs>,
    /// Last VRRP state this instance reported about itself.
    state: String,
    state_since: i64,
}

/// Two keepalived instances.
pub struct Keepalived {
    dir: PathBuf,
    a: Instance,
    b: Instance,
}

const ADVERT_INT_S: &str = "0.01";

fn file(dir: &Path, node: Node, suffix: &str) -> PathBuf {
    let n = if node == Node::A { "a" } else { "b" };
    dir.join(format!("{n}.{suffix}"))
}

impl Keepalived {
    pub fn new(dir: &Path) -> Self {
        let inst = |node| Instance {
            node,
            guard: None,
            vrrp_pid: None,
            _stamper: None,
            tail: FileTail::new(&file(dir, node, "fifo.log")),
            obs: Vec::new(),
            state: String::new(),
            state_since: 0,
        };
        Keepalived {
            dir: dir.to_owned(),
            a: inst(Node::A),
            b: inst(Node::B),
        }
    }

    fn config(&self, node: Node, ifname: &str) -> String {
        let (src, peer, prio) = match node {
            Node::A => (IP_A, IP_B, 200),
            Node::B => (IP_B, IP_A, 100),
        };
        let fifo = file(&self.dir, node, "fifo");
        format!(
            "global_defs {{\n  router_id bench_{node:?}\n  vrrp_version 3\n  notify_fifo {fifo}\n}}\n\
             vrrp_instance VI_1 {{\n  state BACKUP\n  interface {ifname}\n  virtual_router_id 51\n  \
             priority {prio}\n  advert_int {ADVERT_INT_S}\n  unicast_src_ip {src}\n  \
             unicast_peer {{\n    {peer}\n  }}\n  virtual_ipaddress {{\n    10.200.10.100/24\n  }}\n}}\n",
            fifo = fifo.display()
        )
    }

    fn start_node(&mut self, topo: &Topology, node: Node) -> anyhow::Result<()> {
        let ifname = topo.link_if(node.side());
        let conf = file(&self.dir, node, "conf");
        std::fs::write(&conf, self.config(node, ifname)).context("writing keepalived.conf")?;
        let pid = file(&self.dir, node, "pid");
        let vrrp_pid = file(&self.dir, node, "vrrp.pid");
        let chk_pid = file(&self.dir, node, "chk.pid");
        for p in [&pid, &vrrp_pid, &chk_pid] {
            let _ = std::fs::remove_file(p);
        }
        let log = file(&self.dir, node, "log");
        let inst = if node == Node::A {
            &mut self.a
        } else {
            &mut self.b
        };
        if inst._stamper.is_none() {
            inst._stamper = Some(FifoStamper::start(
                &file(&self.dir, node, "fifo"),
                &file(&self.dir, node, "fifo.log"),
            )?);
        }
        let args = command(&conf, &pid, &vrrp_pid, &chk_pid);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut guard =
            spawn_logged(topo, node.side(), &args, &log).context("starting keepalived")?;
        check_started(&mut guard, &log, "keepalived")?;
        inst.vrrp_pid = read_pid_file(&vrrp_pid, Duration::from_secs(3));
        inst.guard = Some(guard);
        if inst.vrrp_pid.is_none() {
            anyhow::bail!(
                "keepalived did not start its VRRP process (no {})",
                vrrp_pid.display()
            );
        }
        Ok(())
    }

    fn a_pids(&self) -> Vec<i32> {
        let mut v: Vec<i32> = self.a.guard.iter().map(|g| g.pid() as i32).collect();
        v.extend(self.a.vrrp_pid);
        v
    }
}

/// The keepalived command line: VRRP only, in the foreground, logging to
/// the console, with its three pid files.
pub fn command(conf: &Path, pid: &Path, vrrp_pid: &Path, chk_pid: &Path) -> Vec<String> {
    [
        "keepalived",
        "--dont-fork",
        "--log-console",
        "--log-detail",
        "--no-syslog",
        "--vrrp",
        "--dont-respawn",
        "--use-file",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .chain([conf.display().to_string()])
    .chain(["--pid".into(), pid.display().to_string()])
    .chain(["--vrrp_pid".into(), vrrp_pid.display().to_string()])
    .chain(["--checkers_pid".into(), chk_pid.display().to_string()])
    .collect()
}

/// The configuration of one node of the service failover (`failover.rs`):
/// VRRPv3 (multicast on the segment), `advert_int` as for detection, the
/// package address as the virtual address, and a notify script run when
/// the node becomes master (where a service would be started).
pub fn failover_config(
    node: &str,
    ifname: &str,
    priority: u8,
    vip_cidr: &str,
    notify_master: &Path,
) -> String {
    format!(
        "global_defs {{\n  router_id failover_{node}\n  vrrp_version 3\n  script_user root\n  vrrp_rt_priority 40\n}}\n\
         vrrp_instance WEB {{\n  state BACKUP\n  interface {ifname}\n  virtual_router_id 52\n  \
         priority {priority}\n  advert_int {ADVERT_INT_S}\n  virtual_ipaddress {{\n    {vip_cidr}\n  }}\n  \
         notify_master \"{notify}\"\n}}\n",
        notify = notify_master.display()
    )
}

/// `advert_int` in seconds (10 ms, keepalived's minimum).
pub const ADVERT_INT: &str = ADVERT_INT_S;

impl Instance {
    fn poll(&mut self) {
        for line in self.tail.lines() {
            let Some((ns, text)) = parse::stamped_line(&line) else {
                continue;
            };
            let Some(n) = parse::keepalived_notify(text) else {
                continue;
            };
            if n.kind != "INSTANCE" {
                continue;
            }
            // MASTER_RX_LOWER_PRI and the like are events, not states.
            let is_state = matches!(n.state.as_str(), "MASTER" | "BACKUP" | "FAULT" | "STOP");
            if is_state && n.state != self.state {
                self.state = n.state.clone();
                self.state_since = ns;
            }
            // Only the backup's view is an observation of the peer: B taking
            // over means it declared A failed. The master does not track
            // its backups, so A's states only tell its role.
            if self.node == Node::B
                && let Some(o) = parse::keepalived_obs(&line)
            {
                self.obs.push(o);
            }
        }
    }
}

impl System for Keepalived {
    fn label(&self) -> String {
        "keepalived".into()
    }
    fn stream(&self) -> Stream {
        Stream::Vrrp
    }
    fn interval_ns(&self) -> i64 {
        10_000_000
    }
    fn max_wait(&self) -> Duration {
        Duration::from_secs(2)
    }
    fn settings(&self) -> String {
        format!(
            "VRRPv3 unicast, advert_int {ADVERT_INT_S} s, priorities 200/100, failure = B's notify_fifo MASTER/FAULT"
        )
    }

    fn start(&mut self, topo: &Topology) -> anyhow::Result<()> {
        self.start_node(topo, Node::A)?;
        // Give A a head start so it is MASTER before B listens.
        std::thread::sleep(Duration::from_millis(200));
        self.start_node(topo, Node::B)
    }

    fn stop(&mut self) {
        for inst in [&mut self.a, &mut self.b] {
            if let Some(mut g) = inst.guard.take() {
                let _ = g.shutdown(Duration::from_secs(2));
            }
            if let Some(pid) = inst.vrrp_pid.take() {
                // Normally gone with its parent; make sure.
                let _ = signal_pid(pid, Signal::SIGKILL);
            }
            inst._stamper = None;
        }
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
        // Adverts at 10 ms make keepalived flap for a moment after a resume;
        // wait until both have kept their roles for 300 ms.
        let now = wall_ns();
        self.a.state == "MASTER"
            && self.b.state == "BACKUP"
            && now - self.a.state_since > 300_000_000
            && now - self.b.state_since > 300_000_000
            && up_and_settled(&self.b.obs, 300_000_000)
    }

    fn stop_a(&mut self) -> anyhow::Result<i64> {
        let pids = self.a_pids();
        let t = wall_ns();
        for pid in pids.iter().rev() {
            signal_pid(*pid, Signal::SIGSTOP)?;
        }
        Ok(t)
    }

    fn cont_a(&mut self) -> anyhow::Result<()> {
        for pid in self.a_pids() {
            signal_pid(pid, Signal::SIGCONT)?;
        }
        Ok(())
    }

    fn kill_a(&mut self) -> anyhow::Result<i64> {
        let child = self.a.vrrp_pid.take();
        let mut guard = self.a.guard.take().context("keepalived A is not running")?;
        let t = wall_ns();
        if let Some(pid) = child {
            signal_pid(pid, Signal::SIGKILL)?;
        }
        kill_guard(&mut guard)?;
        Ok(t)
    }

    fn restart_a(&mut self, topo: &Topology) -> anyhow::Result<()> {
        self.start_node(topo, Node::A)
    }

    fn pids(&self) -> Vec<i32> {
        let mut v = self.a_pids();
        v.extend(self.b.guard.iter().map(|g| g.pid() as i32));
        v.extend(self.b.vrrp_pid);
        v
    }
}

impl Drop for Keepalived {
    fn drop(&mut self) {
        self.stop();
    }
}
