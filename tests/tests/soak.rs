//! Soak: random faults on a 4-node cluster running 3 packages, each a real
//! tiny UDP service (a python responder bound to the package's address,
//! answering with its node's name) started and stopped by the package's
//! scripts, with a client per package in the hub namespace sending a request
//! every few milliseconds.
//!
//! Faults (seeded RNG: the seed is printed, `HB_SOAK_SEED=<n>` replays the
//! same sequence of fault choices; timing still varies):
//! - kill a node: SIGKILL every process in its namespace (agent, scripts,
//!   services), link down; later: link up, agent restarted;
//! - kill only the agent (SIGKILL), leaving its services, addresses and
//!   link: its kernel fence (XDP and tc programs pinned in a scratch bpffs)
//!   keeps the package addresses dark once the lease runs out; later the
//!   agent is restarted (its stop before join stops the orphaned services);
//! - graceful agent restart: SIGTERM (the agent stops its packages), start;
//! - partition: the live nodes split in two random groups (nft egress drop
//!   rules on the wire ports, both ways), then healed;
//! - flapping link: a node's heartbeat link down and up within ~100 ms,
//!   by default only on a node that owns no package. With
//!   `HB_SOAK_OWNER_FLAPS=1` on any node: this found a bug (fixed: the
//!   GRANT bit, renewals only on the installed epoch's placement, new
//!   members granted only after that placement is applied): an owner whose
//!   link flapped for about `node_timeout` deferred its own detection (a
//!   local stall) and kept its view, the others failed the package over,
//!   and once the link was back their XDP programs' replies renewed its
//!   lease: two owners in the kernel for up to a second. Since the fix the
//!   flapped owner is fenced by its lapsed lease until it learns, but the
//!   test does not read that lease end for a flap (a read while the link is
//!   down could be followed by a legitimate renewal), so the log check
//!   still reports the scripts' overlap: owner flaps stay opt-in.
//!
//! The checker fails on:
//! - two running owners of a package, from the scripts' shared log: a node
//!   serves a package from the moment its start script begins until its
//!   stop script begins (the agent releases the lease, and the kernel
//!   drops the package's traffic, before it runs the stop), or the test
//!   killed the node (the test writes that into the same log, after the
//!   kill), or its kernel fenced the package's address. The test reads that
//!   last time from the node's pinned `LEASES` map (the lease's end,
//!   CLOCK_MONOTONIC, turned into wall time) once nothing can renew it any
//!   more: right after its agent was SIGKILLed, and just after a partition
//!   left it on a side without quorum (its lease is anchored at heartbeats
//!   every other member answered; none does across the cut). So the check
//!   is exact, not a tolerance: without the fence such overlaps are real by
//!   the scripts' log (the start rule, `heartbeat_cluster::packages` rule 2, lets the new
//!   owner start once the old owner's lease ran out, which may be before a
//!   minority's stop script even began; a SIGKILLed agent never stops its
//!   services), and the fence is what makes them harmless, which the next
//!   two checks verify on the wire;
//! - two different nodes answering one package's client within one request
//!   interval;
//! - an answer to a request sent (more than [`FENCE_SLACK`]) after the
//!   kernel of the answering node fenced every package address, and
//!   answered before the fault was healed.
//!
//! Every fault is followed by recovery: the cluster must settle (every live
//! node in one view, every package running on one node) within [`SETTLE`].
//! Prints how many faults were injected and how many failovers happened.
//! `HB_SOAK_SECS` sets the length (default 180 s).
#![allow(
    unused_crate_dependencies,
    reason = "an integration test links every dependency of its package"
)]

mod support;

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs,
    net::UdpSocket,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicBool, Ordering},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use aya::maps::{HashMap, Map, MapData};
use heartbeat_common::{LeaseEntry, LeaseKey};
use heartbeat_tests::{NftGuard, Signal};
use support::{Cluster, EventKind, Timing, wall_ns};

/// Semantics under churn, tolerant of a busy machine.
const TIMING: Timing = Timing {
    interval: "5ms",
    node_timeout: "100ms",
    agent_timeout: "1s",
};

/// The client's request interval.
const REQUEST_INTERVAL: Duration = Duration::from_millis(5);

/// A request without an answer after this is a timeout.
const ANSWER_TIMEOUT: Duration = Duration::from_millis(500);

/// How long the cluster may take to settle after a fault is healed.
const SETTLE: Duration = Duration::from_secs(30);

/// `cluster.package_lease` (set explicitly in the configuration).
const LEASE: Duration = Duration::from_millis(100);

/// A request sent this long after a node's lease surely ran out may still
/// have been on its way (the kernel checks the lease on arrival).
const FENCE_SLACK: Duration = Duration::from_millis(5);

const NODES: usize = 4;

/// (name, address, UDP port, preference order as node indexes).
const PACKAGES: [(&str, &str, u16, [usize; NODES]); 3] = [
    ("web", "10.210.0.101", 7001, [0, 1, 2, 3]),
    ("db", "10.210.0.102", 7002, [1, 2, 3, 0]),
    ("mail", "10.210.0.103", 7003, [2, 3, 0, 1]),
];

/// The client's address on the hub bridge.
const CLIENT: &str = "10.210.0.200";

/// The service: binds (IP_FREEBIND: before the agent adds the address) to
/// the package's address and port, writes its pid file once bound, answers
/// every datagram with the datagram and its node's name.
const SERVICE_PY: &str = r#"import os, socket, sys
node, addr, port, pidf = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_IP, 15, 1)
s.bind((addr, port))
with open(pidf + ".tmp", "w") as f:
    f.write(str(os.getpid()))
os.rename(pidf + ".tmp", pidf)
me = b" " + node.encode()
while True:
    d, a = s.recvfrom(256)
    s.sendto(d + me, a)
"#;

/// `svc.sh ACTION PACKAGE ADDRESS PORT`: logs `<ns> <node> <event>
/// <package>` lines (start-begin, start-end, stop-begin, stop-end) to the
/// shared log; start runs the service in the background (pid file), stop
/// kills it and waits until it is gone, monitor checks it.
fn write_scripts(dir: &Path) -> PathBuf {
    let py = dir.join("svc.py");
    fs::write(&py, SERVICE_PY).unwrap();
    let python = if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    };
    let script = dir.join("svc.sh");
    fs::write(
        &script,
        format!(
            "#!/bin/sh\n\
             d={dir}\n\
             pid=\"$d/$2.$HEARTBEAT_NODE.pid\"\n\
             log() {{ echo \"$(date +%s%N) $HEARTBEAT_NODE $1 $2\" >> \"$d/actions.log\"; }}\n\
             running() {{ [ -s \"$pid\" ] && kill -0 \"$(cat \"$pid\")\" 2>/dev/null; }}\n\
             case \"$1\" in\n\
               start)\n\
                 log start-begin \"$2\"\n\
                 if ! running; then\n\
                   rm -f \"$pid\"\n\
                   {python} -S -I {py} \"$HEARTBEAT_NODE\" \"$3\" \"$4\" \"$pid\" </dev/null >>\"$d/svc.$2.$HEARTBEAT_NODE.log\" 2>&1 &\n\
                   i=0\n\
                   while [ ! -s \"$pid\" ]; do i=$((i+1)); [ $i -gt 5000 ] && exit 1; sleep 0.001; done\n\
                 fi\n\
                 log start-end \"$2\"\n\
                 ;;\n\
               stop)\n\
                 log stop-begin \"$2\"\n\
                 if running; then\n\
                   p=$(cat \"$pid\")\n\
                   kill -9 \"$p\"\n\
                   i=0\n\
                   while [ -d /proc/$p ] && ! grep -q '^State:.*Z' /proc/$p/status 2>/dev/null; do\n\
                     i=$((i+1)); [ $i -gt 5000 ] && exit 1; sleep 0.001\n\
                   done\n\
                 fi\n\
                 rm -f \"$pid\"\n\
                 log stop-end \"$2\"\n\
                 ;;\n\
               monitor) running ;;\n\
             esac\n",
            dir = dir.display(),
            py = py.display(),
        ),
    )
    .unwrap();
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
    script
}

/// SplitMix64: small, seeded, good enough to choose faults.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn ms(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.below(hi - lo + 1))
    }
}

/// One request of a client.
#[derive(Clone, Debug)]
struct Answer {
    seq: u64,
    sent_ns: u64,
    recv_ns: u64,
    node: String,
}

/// A client sending one datagram every [`REQUEST_INTERVAL`] to a package's
/// address from the hub namespace, and recording the answers.
struct Client {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<(Vec<u64>, Vec<Answer>)>>,
}

impl Client {
    fn start(ns: &heartbeat_tests::Netns, addr: &str, port: u16) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (stop2, netns) = (stop.clone(), ns.name().to_owned());
        let target = format!("{addr}:{port}");
        let thread = thread::spawn(move || {
            heartbeat_tests::in_netns(&netns, move || {
                let sock = UdpSocket::bind((CLIENT, 0)).expect("client socket");
                let rx = sock.try_clone().expect("client socket clone");
                // Bounds the receiver's wait once the sender has stopped.
                rx.set_read_timeout(Some(Duration::from_millis(100)))
                    .unwrap();
                let sent: Arc<Mutex<Vec<u64>>> = Arc::default();
                let done = Arc::new(AtomicBool::new(false));
                let (sent2, done2) = (sent.clone(), done.clone());
                // The receiver: answers as they arrive (a blocking read: the
                // socket timeout's granularity would slow the sender).
                let receiver = thread::spawn(move || {
                    let mut answers = Vec::new();
                    let mut buf = [0u8; 256];
                    loop {
                        match rx.recv_from(&mut buf) {
                            Ok((n, _)) => {
                                let recv_ns = wall_ns();
                                let text = String::from_utf8_lossy(&buf[..n]);
                                let mut it = text.split_whitespace();
                                let seq = it.next().and_then(|s| s.parse::<u64>().ok());
                                let sent_ns = seq.and_then(|q| {
                                    sent2.lock().ok()?.get(usize::try_from(q).ok()?).copied()
                                });
                                if let (Some(seq), Some(sent_ns), Some(node)) =
                                    (seq, sent_ns, it.next())
                                {
                                    answers.push(Answer {
                                        seq,
                                        sent_ns,
                                        recv_ns,
                                        node: node.to_owned(),
                                    });
                                }
                            }
                            Err(_) if done2.load(Ordering::Relaxed) => break,
                            // Timeouts, ICMP errors of earlier sends.
                            Err(_) => {}
                        }
                    }
                    answers
                });
                let start = Instant::now();
                let mut seq: u64 = 0;
                while !stop2.load(Ordering::Relaxed) {
                    let at = start + REQUEST_INTERVAL * u32::try_from(seq).unwrap_or(u32::MAX);
                    let now = Instant::now();
                    if at > now {
                        thread::sleep(at - now);
                    }
                    sent.lock().unwrap().push(wall_ns());
                    // Errors (no route while a link is down) count as no
                    // answer.
                    let _ = sock.send_to(seq.to_string().as_bytes(), &target);
                    seq += 1;
                }
                // Answers in flight.
                thread::sleep(ANSWER_TIMEOUT);
                done.store(true, Ordering::Relaxed);
                let answers = receiver.join().expect("receiver");
                let sent = sent.lock().unwrap().clone();
                (sent, answers)
            })
            .expect("client thread in the hub namespace")
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> (Vec<u64>, Vec<Answer>) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .expect("running")
            .join()
            .expect("client thread")
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Appends a line to the shared actions log (the test's own events).
fn log_event(dir: &Path, node: &str, event: &str, pkg: &str) {
    log_at(dir, wall_ns(), node, event, pkg);
}

/// Appends a line for time `ns` to the shared actions log.
fn log_at(dir: &Path, ns: u64, node: &str, event: &str, pkg: &str) {
    use std::io::Write as _;
    let mut f = fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(dir.join("actions.log"))
        .unwrap();
    writeln!(f, "{ns} {node} {event} {pkg}").unwrap();
}

/// A fault's record: what, when, and the partition in force (node groups).
#[derive(Debug)]
struct Fault {
    what: String,
    /// When the fault was complete (all rules in, the agent dead, ...).
    at_ns: u64,
    /// When the healing began.
    healed_ns: u64,
    /// Nodes whose kernel fences every package address from the given
    /// time (wall ns) to `healed_ns`: a SIGKILLed agent, a side without
    /// quorum (read from their pinned `LEASES` maps).
    fenced: Vec<(usize, u64)>,
}

/// A bpffs mounted in a scratch directory for the agents' pins (`ip netns
/// exec` hides the host's; a SIGKILLed agent's fence lives on in it);
/// dropping it detaches and removes every pin under it and unmounts it.
/// The name is the one `cargo xtask test`'s leak check knows.
struct Bpffs {
    dir: PathBuf,
}

impl Bpffs {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!(
            "{}{}-soak",
            heartbeat_tests::TEST_BPFFS_PREFIX,
            std::process::id()
        ));
        fs::create_dir_all(&dir).unwrap();
        let st = std::process::Command::new("mount")
            .args(["-t", "bpf", "bpf"])
            .arg(&dir)
            .status()
            .expect("mount");
        assert!(st.success(), "mount -t bpf bpf {}", dir.display());
        Self { dir }
    }
}

impl Drop for Bpffs {
    fn drop(&mut self) {
        let root = self.dir.join("heartbeat");
        for d in fs::read_dir(&root).into_iter().flatten().flatten() {
            let _ = heartbeat_agent::pins::remove(&d.path(), true);
        }
        let _ = fs::remove_dir(&root);
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.dir)
            .status();
        let _ = fs::remove_dir(&self.dir);
    }
}

struct Soak {
    c: Cluster,
    /// After the cluster: its agents stop (and unpin) first.
    bpffs: Bpffs,
    rng: Rng,
    faults: Vec<Fault>,
}

impl Soak {
    fn name(&self, i: usize) -> String {
        support::NAMES[i].to_owned()
    }

    fn start(&mut self, i: usize) {
        let env = format!("HEARTBEAT_BPFFS={}", self.bpffs.dir.display());
        let name = self.name(i);
        self.c.start_prefixed(&name, &["env", &env]);
    }

    /// Node `i`'s kernel leases, from its pinned `LEASES` map: (package
    /// index, wall time at which the kernel starts dropping its traffic;
    /// `None`: released).
    fn pinned_leases(&self, i: usize) -> Vec<(usize, Option<u64>)> {
        let node = heartbeat_cluster::NodeId(u16::try_from(i + 1).unwrap());
        let dir = heartbeat_agent::pins::node_dir(&self.bpffs.dir, 7, node);
        let data = MapData::from_pin(dir.join(heartbeat_common::names::LEASES))
            .unwrap_or_else(|e| panic!("{}'s pinned LEASES: {e}", self.name(i)));
        let map: HashMap<MapData, LeaseKey, LeaseEntry> =
            HashMap::try_from(Map::HashMap(data)).expect("LEASES is a hash map");
        // CLOCK_MONOTONIC (bpf_ktime_get_ns) to wall time.
        let (w, m) = (wall_ns(), heartbeat_agent::clock::mono_ns());
        map.iter()
            .filter_map(Result::ok)
            .map(|(_, e)| {
                let until = (e.until_ns != 0).then(|| (e.until_ns + w).saturating_sub(m));
                (usize::from(e.package), until)
            })
            .collect()
    }

    /// Logs when node `i`'s kernel fences each package (`fenced` lines, at
    /// the lease's end; a released lease needs none: the agent releases it
    /// before it runs the stop, whose start is in the log) and returns when
    /// it fences all of them (`now` at the earliest).
    fn log_fence(&self, i: usize, now: u64) -> u64 {
        let mut all = now;
        for (p, until) in self.pinned_leases(i) {
            if let (Some((pkg, ..)), Some(at)) = (PACKAGES.get(p), until) {
                log_at(&self.c.dir.0, at, &self.name(i), "fenced", pkg);
                all = all.max(at);
            }
        }
        all
    }

    fn live(&self) -> Vec<usize> {
        (0..NODES)
            .filter(|&i| self.c.nodes[i].agent.is_some())
            .collect()
    }

    /// Every live node in one view of all live nodes, each package owned
    /// by one of them and running there.
    fn settled(&self) -> bool {
        let live = self.live();
        let names: Vec<String> = live.iter().map(|&i| self.name(i)).collect();
        let mut key: Option<(u64, Vec<Option<String>>)> = None;
        for n in &names {
            let Some(st) = self.c.try_status(n) else {
                return false;
            };
            let mut m = st.membership.members.clone();
            m.sort();
            let mut want = names.clone();
            want.sort();
            if m != want || st.membership.epoch == 0 || !st.membership.quorate {
                return false;
            }
            let mut owners = Vec::new();
            for (pkg, ..) in PACKAGES {
                let Some(p) = st.packages.iter().find(|p| p.name == pkg) else {
                    return false;
                };
                if p.owner.is_none()
                    || (p.owner.as_deref() == Some(n) && p.local_state != "running")
                {
                    return false;
                }
                owners.push(p.owner.clone());
            }
            let k = (st.membership.epoch, owners);
            match &key {
                Some(prev) if *prev != k => return false,
                _ => key = Some(k),
            }
        }
        true
    }

    fn wait_settled(&self, after: &str) {
        let deadline = Instant::now() + SETTLE;
        while !self.settled() {
            if Instant::now() > deadline {
                let live = self.live();
                let mut s = String::new();
                for &i in &live {
                    let n = self.name(i);
                    let _ = writeln!(
                        s,
                        "--- {n} status: {:?}\n--- {n} log (tail):\n{}",
                        self.c.try_status(&n).map(|st| (st.membership, st.packages)),
                        tail(&self.c.log(&n), 40)
                    );
                }
                panic!(
                    "the cluster did not settle within {SETTLE:?} after {after} (seed {})\n{s}",
                    seed()
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    fn kill_node(&mut self, i: usize) -> Fault {
        let name = self.name(i);
        let at_ns = wall_ns();
        // Every process in the node: agent, scripts, services.
        for pid in self.c.nodes[i].ns.pids().unwrap_or_default() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
        }
        if let Some(mut g) = self.c.nodes[i].agent.take() {
            let _ = g.wait_timeout(Duration::from_secs(5));
        }
        // Wait until every process of the node is gone, then log it.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.c.nodes[i].ns.pids().unwrap_or_default().is_empty() && Instant::now() < deadline
        {
            thread::sleep(Duration::from_millis(1));
        }
        log_event(&self.c.dir.0, &name, "killed", "*");
        let iface = self.c.nodes[i].ifaces[0].clone();
        self.c.nodes[i]
            .ns
            .ip(&["link", "set", &iface, "down"])
            .unwrap();
        let down = self.rng.ms(300, 3000);
        thread::sleep(down);
        // A reboot: no package address survives, link up, agent started.
        for (_, addr, ..) in PACKAGES {
            let _ = self.c.nodes[i].ns.exec_unchecked(&[
                "ip",
                "addr",
                "del",
                &format!("{addr}/24"),
                "dev",
                &iface,
            ]);
        }
        self.c.nodes[i]
            .ns
            .ip(&["link", "set", &iface, "up"])
            .unwrap();
        let _ =
            heartbeat_tests::wait_link_ready(&self.c.nodes[i].ns, &iface, Duration::from_secs(5));
        let healed_ns = wall_ns();
        self.start(i);
        Fault {
            what: format!("kill {name} for {down:?}"),
            at_ns,
            healed_ns,
            fenced: Vec::new(),
        }
    }

    /// SIGKILL of the agent alone: services, addresses and link stay.
    fn kill_agent(&mut self, i: usize) -> Fault {
        let name = self.name(i);
        if let Some(mut g) = self.c.nodes[i].agent.take() {
            g.signal(Signal::SIGKILL).unwrap();
            let _ = g.wait_timeout(Duration::from_secs(5));
        }
        let at_ns = wall_ns();
        log_event(&self.c.dir.0, &name, "agent-killed", "*");
        // Nothing renews its leases any more: they are final.
        let dark = self.log_fence(i, at_ns);
        let down = self.rng.ms(300, 3000);
        thread::sleep(down);
        let healed_ns = wall_ns();
        self.start(i);
        Fault {
            what: format!("SIGKILL {name}'s agent alone for {down:?}"),
            at_ns,
            healed_ns,
            fenced: vec![(i, dark)],
        }
    }

    fn restart_agent(&mut self, i: usize) -> Fault {
        let name = self.name(i);
        let at_ns = wall_ns();
        if let Some(mut g) = self.c.nodes[i].agent.take() {
            let st = g.shutdown(Duration::from_secs(15));
            assert!(
                st.as_ref().is_ok_and(|s| s.success()),
                "{name}'s agent did not stop cleanly on SIGTERM: {st:?}\n{}",
                tail(&self.c.log(&name), 40)
            );
        }
        // A clean stop cancels every task at once: the fast path renews
        // nothing after the SIGTERM, so the node's kernel leases end at
        // most LEASE after it (its services are stopped later, fenced).
        let dark = at_ns + (LEASE + FENCE_SLACK).as_nanos() as u64;
        for (pkg, ..) in PACKAGES {
            log_at(&self.c.dir.0, dark, &name, "fenced", pkg);
        }
        let healed_ns = wall_ns();
        self.start(i);
        Fault {
            what: format!("restart {name}'s agent"),
            at_ns,
            healed_ns,
            fenced: vec![(i, dark)],
        }
    }

    fn partition(&mut self) -> Fault {
        let live = self.live();
        let (mut a, mut b) = (Vec::new(), Vec::new());
        while a.is_empty() || b.is_empty() {
            a.clear();
            b.clear();
            for &i in &live {
                if self.rng.below(2) == 0 {
                    a.push(i);
                } else {
                    b.push(i);
                }
            }
        }
        // A side without quorum (more than half of the configured nodes).
        let minority: Vec<usize> = [&a, &b]
            .into_iter()
            .filter(|g| 2 * g.len() <= NODES)
            .flatten()
            .copied()
            .collect();
        // Each node's own rule (its heartbeats to the other side dropped),
        // minority nodes first: once it is in, nothing renews that node's
        // leases any more (a renewal is anchored at a heartbeat every
        // other member answered; the answers to those sent before arrive
        // within microseconds on these veths), so they are read a few ms
        // later, long before the node notices the loss of quorum and
        // releases them (installing all the rules may take a while on a
        // busy machine: the other side may fail over in the meantime).
        let mut order: Vec<usize> = minority.clone();
        order.extend(live.iter().filter(|i| !minority.contains(i)));
        let mut guards: Vec<NftGuard> = Vec::new();
        let mut fenced = Vec::new();
        for i in order {
            let other = if a.contains(&i) { &b } else { &a };
            let addrs: Vec<String> = other.iter().map(|&j| support::addr(j, 0)).collect();
            guards.push(
                heartbeat_tests::nft_egress_rule(
                    &self.c.nodes[i].ns,
                    &self.c.nodes[i].wires[0],
                    &format!("ip daddr {{ {} }} drop", addrs.join(", ")),
                )
                .expect("nft rule"),
            );
            if minority.contains(&i) {
                thread::sleep(Duration::from_millis(3));
                fenced.push((i, self.log_fence(i, wall_ns())));
            }
        }
        let at_ns = wall_ns();
        let hold = self.rng.ms(300, 3000);
        thread::sleep(hold);
        let healed_ns = wall_ns();
        drop(guards);
        let names = |g: &[usize]| {
            g.iter()
                .map(|&i| self.name(i))
                .collect::<Vec<_>>()
                .join(",")
        };
        Fault {
            what: format!("partition {}|{} for {hold:?}", names(&a), names(&b)),
            at_ns,
            healed_ns,
            fenced,
        }
    }

    /// A live node that owns no package (by the view of any live node).
    fn non_owner(&self) -> Option<usize> {
        let live = self.live();
        let owners: Vec<String> = live
            .iter()
            .find_map(|&i| self.c.try_status(&self.name(i)))?
            .packages
            .iter()
            .filter_map(|p| p.owner.clone())
            .collect();
        let free: Vec<usize> = live
            .into_iter()
            .filter(|&i| !owners.contains(&self.name(i)))
            .collect();
        free.first().copied()
    }

    fn flap(&mut self, i: usize) -> Fault {
        let name = self.name(i);
        let iface = self.c.nodes[i].ifaces[0].clone();
        let at_ns = wall_ns();
        self.c.nodes[i]
            .ns
            .ip(&["link", "set", &iface, "down"])
            .unwrap();
        let down = self.rng.ms(10, 100);
        thread::sleep(down);
        self.c.nodes[i]
            .ns
            .ip(&["link", "set", &iface, "up"])
            .unwrap();
        Fault {
            what: format!("flap {name}'s link for {down:?}"),
            at_ns,
            healed_ns: wall_ns(),
            fenced: Vec::new(),
        }
    }
}

/// The run's seed: `HB_SOAK_SEED`, or the clock.
fn seed() -> u64 {
    static SEED: OnceLock<u64> = OnceLock::new();
    *SEED.get_or_init(|| {
        std::env::var("HB_SOAK_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| wall_ns() ^ u64::from(std::process::id()))
    })
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// One line of the shared log.
#[derive(Clone, Debug)]
struct LogLine {
    ns: u64,
    node: String,
    event: String,
    pkg: String,
}

fn read_log(dir: &Path) -> Vec<LogLine> {
    let mut v: Vec<LogLine> = fs::read_to_string(dir.join("actions.log"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            Some(LogLine {
                ns: it.next()?.parse().ok()?,
                node: it.next()?.to_owned(),
                event: it.next()?.to_owned(),
                pkg: it.next()?.to_owned(),
            })
        })
        .collect();
    v.sort_by_key(|l| l.ns);
    v
}

/// A node's run of a package: [start-begin, stop-end or kill).
#[derive(Clone, Debug)]
struct Run {
    node: String,
    from: u64,
    to: Option<u64>,
    /// When its kernel fenced it (from its pinned lease, read after its
    /// agent was SIGKILLed or a partition left it without quorum).
    fenced_at: Option<u64>,
}

fn runs(log: &[LogLine], pkg: &str) -> Vec<Run> {
    let mut open: BTreeMap<String, Run> = BTreeMap::new();
    let mut done = Vec::new();
    for l in log {
        if l.pkg != pkg && l.pkg != "*" {
            continue;
        }
        match l.event.as_str() {
            "start-begin" => {
                open.entry(l.node.clone()).or_insert(Run {
                    node: l.node.clone(),
                    from: l.ns,
                    to: None,
                    fenced_at: None,
                });
            }
            "fenced" if l.pkg == pkg => {
                if let Some(r) = open.get_mut(&l.node) {
                    r.fenced_at = Some(r.fenced_at.map_or(l.ns, |t| t.min(l.ns)));
                }
            }
            // The agent releases the lease (the kernel drops the package's
            // traffic) before it runs the stop.
            "stop-begin" | "killed" => {
                if let Some(mut r) = open.remove(&l.node) {
                    r.to = Some(l.ns);
                    done.push(r);
                }
            }
            _ => {}
        }
    }
    done.extend(open.into_values());
    done.sort_by_key(|r| r.from);
    done
}

/// Overlapping runs of one package: (older, newer), counting the older
/// one's run until its stop ended, it was killed, or its kernel fenced it.
fn overlaps(runs: &[Run]) -> Vec<(Run, Run)> {
    let mut v = Vec::new();
    for (i, a) in runs.iter().enumerate() {
        for b in &runs[i + 1..] {
            let end = [a.to, a.fenced_at].into_iter().flatten().min();
            if a.node != b.node && end.is_none_or(|t| t > b.from) {
                v.push((a.clone(), b.clone()));
            }
        }
    }
    v
}

/// Answers from nodes that their kernel had to fence when the request was
/// sent: (fault, answer).
fn fence_leaks<'a>(faults: &'a [Fault], answers: &'a [Answer]) -> Vec<(&'a str, &'a Answer)> {
    let slack = FENCE_SLACK.as_nanos() as u64;
    let mut v = Vec::new();
    for f in faults {
        for a in answers {
            let dark = f
                .fenced
                .iter()
                .any(|&(i, from)| support::NAMES[i] == a.node && a.sent_ns >= from + slack);
            // Answered before the heal, so handled by the node between the
            // send and the arrival: while fenced. (A request sent while
            // the client's neighbour entry is unresolved waits in its
            // queue and may be answered after the heal, legitimately.)
            if dark && a.recv_ns < f.healed_ns {
                v.push((f.what.as_str(), a));
            }
        }
    }
    v
}

/// Pairs of answers from two different nodes less than one request
/// interval apart (by arrival).
fn double_answers(answers: &[Answer]) -> Vec<(Answer, Answer)> {
    let mut by_recv: Vec<&Answer> = answers.iter().collect();
    by_recv.sort_by_key(|a| a.recv_ns);
    by_recv
        .windows(2)
        .filter(|w| {
            w[0].node != w[1].node
                && w[1].recv_ns - w[0].recv_ns < REQUEST_INTERVAL.as_nanos() as u64
        })
        .map(|w| (w[0].clone(), w[1].clone()))
        .collect()
}

/// The checker finds what it must (synthetic logs and answers), so that a
/// clean soak means something.
fn checker_self_check() {
    let ms = 1_000_000;
    // Times in units of 100 ms (LEASE), after 10 s.
    let at = |t: u64| (100 + t) * 100 * ms;
    let line = |t: u64, node: &str, event: &str, pkg: &str| LogLine {
        ns: at(t),
        node: node.into(),
        event: event.into(),
        pkg: pkg.into(),
    };
    // alpha runs web until it is killed at 10; beta starts at 20 (fine),
    // gamma starts at 25 while beta runs (not fine); beta stops at 30.
    let log = vec![
        line(0, "alpha", "start-begin", "web"),
        line(1, "alpha", "start-end", "web"),
        line(10, "alpha", "killed", "*"),
        line(20, "beta", "start-begin", "web"),
        line(25, "gamma", "start-begin", "web"),
        line(28, "beta", "stop-begin", "web"),
        line(30, "beta", "stop-end", "web"),
        line(31, "beta", "start-begin", "web"),
        line(31, "delta", "stop-begin", "db"),
    ];
    let r = runs(&log, "web");
    assert_eq!(r.len(), 4, "{r:?}");
    assert_eq!(r[1].to, Some(at(28)), "{r:?}");
    let o = overlaps(&r);
    assert_eq!(o.len(), 2, "{o:?}");
    assert_eq!(
        (o[0].0.node.as_str(), o[0].1.node.as_str()),
        ("beta", "gamma")
    );
    assert_eq!(
        (o[1].0.node.as_str(), o[1].1.node.as_str()),
        ("gamma", "beta")
    );
    // beta's kernel fences web by 24 (its agent SIGKILLed, or a partition):
    // no overlap; by 26: overlap; a fence of another package, or of
    // another node, changes nothing.
    let with = |extra: &[LogLine]| {
        let mut l = log[..log.len() - 2].to_vec();
        l.extend_from_slice(extra);
        l.sort_by_key(|l| l.ns);
        overlaps(&runs(&l, "web")).len()
    };
    assert_eq!(with(&[line(24, "beta", "fenced", "web")]), 0);
    assert_eq!(with(&[line(26, "beta", "fenced", "web")]), 1);
    assert_eq!(with(&[line(24, "beta", "fenced", "db")]), 1);
    assert_eq!(with(&[line(24, "delta", "fenced", "web")]), 1);
    let answer = |seq: u64, recv: u64, node: &str| Answer {
        seq,
        sent_ns: seq * 5 * ms,
        recv_ns: recv,
        node: node.into(),
    };
    let ok = [
        answer(0, ms, "alpha"),
        answer(1, 5 * ms + ms, "alpha"),
        answer(9, 45 * ms, "beta"),
    ];
    assert!(double_answers(&ok).is_empty());
    let bad = [answer(0, ms, "alpha"), answer(1, 3 * ms, "beta")];
    assert_eq!(double_answers(&bad).len(), 1);
    // An answer from a node its kernel had to fence.
    let f = Fault {
        what: "SIGKILL".into(),
        at_ns: 0,
        healed_ns: 1000 * ms,
        fenced: vec![(1, LEASE.as_nanos() as u64)],
    };
    let late = (LEASE + FENCE_SLACK).as_nanos() as u64 / (5 * ms) + 1;
    let answers = [
        answer(1, 0, "beta"),
        answer(late, 0, "beta"),
        answer(late, 0, "alpha"),
    ];
    assert_eq!(fence_leaks(std::slice::from_ref(&f), &answers).len(), 1);
}

#[test]
fn soak_random_faults_never_two_owners() {
    let secs: u64 = std::env::var("HB_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(180);
    checker_self_check();
    let owner_flaps = std::env::var("HB_SOAK_OWNER_FLAPS").is_ok_and(|v| v != "0");
    let seed = seed();
    println!("soak: seed {seed} (HB_SOAK_SEED={seed} to replay), {secs} s");
    let started = Instant::now();
    let c = Cluster::new(NODES, 1, TIMING, false);
    let script = write_scripts(&c.dir.0);
    let s = script.display();
    let mut pk = String::new();
    for (name, addr, port, order) in PACKAGES {
        let nodes: Vec<String> = order
            .iter()
            .map(|&i| format!("\"{}\"", support::NAMES[i]))
            .collect();
        let _ = write!(
            pk,
            "\n[[package]]\nname = \"{name}\"\nnodes = [{}]\naddresses = [\"{addr}/24\"]\n\
             start = \"{s} start {name} {addr} {port}\"\nstop = \"{s} stop {name} {addr} {port}\"\n\
             monitor = \"{s} monitor {name} {addr} {port}\"\nmonitor_interval = \"100ms\"\n",
            nodes.join(", ")
        );
    }
    c.edit_config(|t| {
        let t = t.replace(
            "node_timeout = \"100ms\"\n",
            &format!(
                "node_timeout = \"100ms\"\npackage_lease = \"{}ms\"\n",
                LEASE.as_millis()
            ),
        );
        assert!(t.contains("package_lease"), "{t}");
        format!("{t}{pk}")
    });
    c.hub(0)
        .ip(&["addr", "add", &format!("{CLIENT}/24"), "dev", "br0"])
        .unwrap();
    let mut soak = Soak {
        c,
        bpffs: Bpffs::new(),
        rng: Rng(seed),
        faults: Vec::new(),
    };
    for i in 0..NODES {
        soak.start(i);
    }
    soak.wait_settled("start");
    let clients: Vec<Client> = PACKAGES
        .iter()
        .map(|(_, addr, port, _)| Client::start(soak.c.hub(0), addr, *port))
        .collect();
    thread::sleep(Duration::from_millis(500));

    let end = Instant::now() + Duration::from_secs(secs);
    let mut counts: BTreeMap<&str, u32> = BTreeMap::new();
    while Instant::now() < end {
        let live = soak.live();
        let i = live[soak.rng.below(live.len() as u64) as usize];
        let (kind, f) = match soak.rng.below(5) {
            0 => ("kill node", soak.kill_node(i)),
            1 => ("SIGKILL agent", soak.kill_agent(i)),
            2 => ("restart agent", soak.restart_agent(i)),
            3 => ("partition", soak.partition()),
            _ => {
                // Without HB_SOAK_OWNER_FLAPS=1, only a node that owns no
                // package (see the module doc).
                let target = if owner_flaps {
                    Some(i)
                } else {
                    soak.non_owner()
                };
                let Some(t) = target else { continue };
                ("flap", soak.flap(t))
            }
        };
        println!(
            "soak: {:>6.1} s: {}",
            started.elapsed().as_secs_f64(),
            f.what
        );
        *counts.entry(kind).or_default() += 1;
        let what = f.what.clone();
        soak.faults.push(f);
        soak.wait_settled(&what);
        let pause = soak.rng.ms(200, 1500);
        thread::sleep(pause);
    }
    thread::sleep(Duration::from_millis(600));
    let results: Vec<(Vec<u64>, Vec<Answer>)> = clients.into_iter().map(Client::finish).collect();

    // The checker.
    let log = read_log(&soak.c.dir.0);
    let mut failures = Vec::new();
    let mut starts = 0;
    for (p, (name, ..)) in PACKAGES.iter().enumerate() {
        let r = runs(&log, name);
        starts += r.len();
        for (a, b) in overlaps(&r) {
            failures.push(format!("{name}: two running owners: {a:?} and {b:?}"));
        }
        let (sent, answers) = &results[p];
        for (f, a) in fence_leaks(&soak.faults, answers) {
            failures.push(format!(
                "{name}: answered by a node its kernel had to fence ({f}): {a:?}"
            ));
        }
        for (a, b) in double_answers(answers) {
            failures.push(format!(
                "{name}: two nodes answered within one interval: {a:?} {b:?}"
            ));
        }
        let answered: std::collections::BTreeSet<u64> = answers.iter().map(|a| a.seq).collect();
        let mut by_node: BTreeMap<&str, usize> = BTreeMap::new();
        for a in answers {
            *by_node.entry(a.node.as_str()).or_default() += 1;
        }
        let late = answers
            .iter()
            .filter(|a| a.recv_ns - a.sent_ns > ANSWER_TIMEOUT.as_nanos() as u64)
            .count();
        println!(
            "soak: {name}: {} requests, {} answered ({late} late), {} timed out; answers by node {by_node:?}; {} runs",
            sent.len(),
            answered.len(),
            sent.len() - answered.len(),
            r.len()
        );
    }
    // Failovers: placements with cause "failover", one per (package, epoch).
    let mut failovers = std::collections::BTreeSet::new();
    for n in support::NAMES.iter().take(NODES) {
        for e in soak.c.journal(n) {
            if e.event == EventKind::PackagePlaced && e.cause == "failover" {
                failovers.insert((e.package.clone(), e.epoch));
            }
        }
    }
    println!(
        "soak: seed {seed}: {} faults injected ({counts:?}), {} failovers (journals), {starts} service starts (scripts' log), {:.1} s",
        soak.faults.len(),
        failovers.len(),
        started.elapsed().as_secs_f64()
    );
    if !failures.is_empty() {
        // Keep the evidence: the scripts' log, journals and agent logs.
        let keep = std::env::temp_dir().join(format!("hb-soak-failed-{seed}"));
        let _ = fs::create_dir_all(&keep);
        for e in fs::read_dir(&soak.c.dir.0).into_iter().flatten().flatten() {
            let p = e.path();
            if p.extension()
                .is_some_and(|x| x == "log" || x == "jsonl" || x == "toml")
            {
                let _ = fs::copy(&p, keep.join(e.file_name()));
            }
        }
        let timeline: String = soak
            .faults
            .iter()
            .map(|f| {
                format!(
                    "  {} .. {}: {} (fenced: {:?})\n",
                    f.at_ns, f.healed_ns, f.what, f.fenced
                )
            })
            .collect();
        panic!(
            "seed {seed} (HB_SOAK_SEED={seed} to replay):\n{}\nfaults (wall ns):\n{timeline}logs kept in {}",
            failures.join("\n"),
            keep.display()
        );
    }
    drop(soak);
}
