//! Service failover, shared by `cargo xtask demo` and `cargo xtask bench`:
//! - [`Segment`]: nodes and a client, each in its own namespace, on one
//!   bridge in a hub namespace (one Ethernet segment, so a package address
//!   moves between nodes with a gratuitous ARP, as on a LAN);
//! - [`SERVICE_PY`]: a tiny HTTP service that answers every request with its
//!   node's name;
//! - [`HttpClient`]: a client that sends a request every interval (one new
//!   TCP connection each, so every answer names the node that served it)
//!   and records (send time, arrival time, answering node or error);
//! - [`analyze`]: the failover seen by that client: the first answer from
//!   a new node, the service gap, and whether two nodes ever answered in
//!   one interval;
//! - [`PackageCluster`]: heartbeat agents on a segment with one package
//!   whose address is the service's, with the faults and restores a
//!   failover trial needs.
//!
//! Every piece is a guard: namespaces (and every process inside), agents,
//! XDP programs and the client's threads go when it is dropped.

use std::{
    fs,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use heartbeat_api::{journal::Entry, status::StatusReport};
use nix::{sys::signal, unistd::Pid};

use crate::{ChildGuard, HarnessError, Netns, NftGuard, Result, Signal, VethPair, attach_xdp_pass};

/// CLOCK_REALTIME in ns since the epoch (the journals' `kernel_wall_ns`
/// clock).
pub fn wall_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Nodes and a client on one bridge.
pub struct Segment {
    /// Cut links: nftables drops on a killed node's wire, both ways
    /// (first: removed before the namespaces go).
    cuts: Vec<(usize, NftGuard)>,
    /// Pass-through XDP programs on the hub's ends of the nodes' veths
    /// (first: detached before the namespaces go).
    _pass: Vec<aya::Ebpf>,
    /// `10.<net>.0.0/24`.
    pub net: u8,
    pub nodes: Vec<Netns>,
    /// Each node's interface on the segment.
    pub ifaces: Vec<String>,
    /// The hub's port of each node.
    pub hub_ports: Vec<String>,
    pub client: Netns,
    pub hub: Netns,
}

impl Segment {
    /// `n` nodes at `10.<net>.0.<i+1>`, the client at `10.<net>.0.200`.
    /// `object`: the heartbeat XDP object (the hub's ends of the nodes'
    /// veths receive XDP_TX frames, so they need an XDP program to run
    /// NAPI; the heartbeat program, left disabled, passes everything).
    pub fn new(prefix: &str, n: usize, net: u8, object: &[u8]) -> Result<Self> {
        let hub = Netns::new(prefix)?;
        hub.ip(&["link", "add", "br0", "type", "bridge"])?;
        hub.ip(&["link", "set", "br0", "up"])?;
        let mut nodes = Vec::new();
        let mut ifaces = Vec::new();
        let mut hub_ports = Vec::new();
        let mut pass = Vec::new();
        for i in 0..n {
            let ns = Netns::new(prefix)?;
            let pair = VethPair::connect(
                &ns,
                &hub,
                format!("{}/24", Self::addr_of(net, i)),
                Vec::<String>::new(),
            )?;
            hub.ip(&["link", "set", &pair.if_b, "master", "br0"])?;
            pass.push(attach_xdp_pass(&hub, &pair.if_b, object)?);
            ifaces.push(pair.if_a);
            hub_ports.push(pair.if_b);
            nodes.push(ns);
        }
        let client = Netns::new(prefix)?;
        let pair = VethPair::connect(
            &client,
            &hub,
            format!("10.{net}.0.200/24"),
            Vec::<String>::new(),
        )?;
        hub.ip(&["link", "set", &pair.if_b, "master", "br0"])?;
        let seg = Segment {
            cuts: Vec::new(),
            _pass: pass,
            net,
            nodes,
            ifaces,
            hub_ports,
            client,
            hub,
        };
        // New bridge ports forward once the kernel has seen their carrier
        // (up to a second): wait until the client reaches every node.
        for i in 0..n {
            let to = seg.addr(i);
            let ok = (0..20).any(|_| {
                seg.client
                    .exec(&["ping", "-c", "1", "-W", "1", "-i", "0.2", &to])
                    .is_ok()
            });
            if !ok {
                return Err(HarnessError::Unreachable {
                    from: "the client".into(),
                    to,
                });
            }
        }
        Ok(seg)
    }

    fn addr_of(net: u8, i: usize) -> String {
        format!("10.{net}.0.{}", i + 1)
    }

    /// Node `i`'s own address.
    pub fn addr(&self, i: usize) -> String {
        Self::addr_of(self.net, i)
    }

    /// The package (virtual) address, `10.<net>.0.100`.
    pub fn vip(&self) -> String {
        format!("10.{}.0.100", self.net)
    }

    /// Cuts node `i`'s link and kills every process in its namespace
    /// (SIGKILL), at one instant: nftables netdev egress rules
    /// `meta time >= <the next whole second> drop` on the hub's port towards it and on
    /// its own interface (nothing crosses either way: a pulled cable) are
    /// installed first, and the processes are killed when that second
    /// comes. Nothing changes in the kernel's configuration at the fault
    /// itself: `ip link set down` or installing a rule then would take the
    /// kernel's RTNL lock or patch its code while the survivors add the
    /// package address (every namespace of this one machine shares that
    /// kernel; separate machines do not). Returns the fault time (ns since
    /// the epoch); up to about 1.2 s pass before it.
    ///
    /// `defer_agent`: the node's heartbeat agent is killed that much later
    /// than the rest (its link is cut at the fault all the same, so the
    /// cluster cannot tell). A killed agent's teardown (its XDP and TCX
    /// links, BPF objects) runs in the kernel the survivors share here and
    /// delays them; deferring it past the failover measures the cluster
    /// as on separate machines.
    pub fn kill_node(&mut self, i: usize, defer_agent: Option<Duration>) -> Result<u64> {
        let at_s = (wall_ns() + 200_000_000) / 1_000_000_000 + 1;
        let rule = format!("meta time >= \"{}\" drop", utc_date(at_s));
        let hub_side = crate::nft_egress_rule(&self.hub, &self.hub_ports[i], &rule)?;
        self.cuts.push((i, hub_side));
        let node_side = crate::nft_egress_rule(&self.nodes[i], &self.ifaces[i], &rule)?;
        self.cuts.push((i, node_side));
        let pids = self.nodes[i].pids()?;
        let at = at_s * 1_000_000_000;
        let now = wall_ns();
        if at > now {
            thread::sleep(Duration::from_nanos(at - now));
        }
        let mut later = Vec::new();
        for pid in pids {
            if defer_agent.is_some()
                && fs::read_to_string(format!("/proc/{pid}/comm"))
                    .is_ok_and(|c| c.trim() == "heartbeat-agent")
            {
                later.push(pid);
                continue;
            }
            // A process may have exited on its own meanwhile.
            let _ = signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        if let Some(d) = defer_agent {
            // The caller reaps the agent (PackageCluster::kill waits for it).
            thread::spawn(move || {
                thread::sleep(d);
                for pid in later {
                    let _ = signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
                }
            });
        }
        Ok(at)
    }

    /// Node `i` after a reboot: no address but its own, link restored.
    pub fn revive_node(&mut self, i: usize) -> Result<()> {
        let _ = self.nodes[i].ip(&[
            "addr",
            "del",
            &format!("{}/24", self.vip()),
            "dev",
            &self.ifaces[i],
        ]);
        let (gone, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.cuts)
            .into_iter()
            .partition(|(n, _)| *n == i);
        self.cuts = kept;
        for (_, g) in gone {
            g.remove()?;
        }
        Ok(())
    }
}

/// `YYYY-MM-DD HH:MM:SS` of `wall_s` seconds since the epoch, UTC (nft's
/// `meta time` reads it in the local time zone: UTC on the machines this
/// runs on, as for the benchmark's silent egress fault).
pub fn utc_date(wall_s: u64) -> String {
    // Howard Hinnant's civil_from_days.
    let z = (wall_s / 86_400) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let s = wall_s % 86_400;
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

/// The HTTP service: `python3 -S -I SCRIPT NODE PORT READY_FILE` listens on
/// every address at PORT, writes READY_FILE once listening, and answers
/// every request with `NODE` (one request per connection). Only `socket`
/// is imported, so it starts in a few milliseconds.
pub const SERVICE_PY: &str = r#"import os, socket, sys
node, port, ready = sys.argv[1], int(sys.argv[2]), sys.argv[3]
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("", port))
s.listen(512)
with open(ready, "w") as f:
    f.write(str(os.getpid()))
body = node.encode()
reply = b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
while True:
    c, _ = s.accept()
    try:
        c.settimeout(0.2)
        c.recv(4096)
        c.sendall(reply)
    except OSError:
        pass
    finally:
        c.close()
"#;

/// The python interpreter for [`SERVICE_PY`] (the system's, not a shim).
pub fn python() -> &'static str {
    if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

/// SCHED_FIFO priority of a resident service (`chrt -f`): a service
/// stand-in that waits behind other work for a CPU would add that wait to
/// every figure; 20 is below the agent's threads (40, 50) and the
/// client's (10 is below too: the client only waits on the network).
pub const SERVICE_RT_PRIORITY: &str = "20";

/// Writes [`SERVICE_PY`] to `dir/web.py`.
pub fn write_service(dir: &Path) -> Result<PathBuf> {
    let p = dir.join("web.py");
    fs::write(&p, SERVICE_PY).map_err(|source| HarnessError::Io {
        context: format!("writing {}", p.display()),
        source,
    })?;
    Ok(p)
}

/// A package start/stop/monitor script (`web.sh start|stop|monitor`) that
/// runs [`SERVICE_PY`] on port 80 in the background as the node
/// `$HEARTBEAT_NODE`, with a pid file; `start` returns once it listens.
pub fn write_package_script(dir: &Path) -> Result<PathBuf> {
    let py = write_service(dir)?;
    let script = dir.join("web.sh");
    let text = format!(
        "#!/bin/sh\n\
         # The demo's package `web`: a tiny HTTP service answering with its node's name.\n\
         d={dir}\n\
         pid=\"$d/web.$HEARTBEAT_NODE.pid\"\n\
         running() {{ [ -s \"$pid\" ] && kill -0 \"$(cat \"$pid\")\" 2>/dev/null; }}\n\
         case \"$1\" in\n\
           start)\n\
             running && exit 0\n\
             rm -f \"$pid\"\n\
             {python} -S -I {py} \"$HEARTBEAT_NODE\" 80 \"$pid\" </dev/null >>\"$d/web.$HEARTBEAT_NODE.log\" 2>&1 &\n\
             i=0\n\
             while [ ! -s \"$pid\" ]; do i=$((i+1)); [ $i -gt 2000 ] && exit 1; sleep 0.001; done\n\
             ;;\n\
           stop)\n\
             running && kill -9 \"$(cat \"$pid\")\"\n\
             rm -f \"$pid\"\n\
             ;;\n\
           monitor) running ;;\n\
         esac\n",
        dir = dir.display(),
        python = python(),
        py = py.display(),
    );
    fs::write(&script, text).map_err(|source| HarnessError::Io {
        context: format!("writing {}", script.display()),
        source,
    })?;
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).map_err(|source| {
        HarnessError::Io {
            context: format!("chmod {}", script.display()),
            source,
        }
    })?;
    Ok(script)
}

/// What one request got.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// The name of the node that answered.
    Node(String),
    /// No answer: `connect`, `timeout`, `reset`, ... (short).
    Error(String),
}

/// One request of the client.
#[derive(Clone, Debug)]
pub struct Sample {
    pub seq: u64,
    /// Wall time the connection was started.
    pub sent_ns: u64,
    /// Wall time the answer (or the error) arrived.
    pub done_ns: u64,
    pub answer: Answer,
}

/// A client sending one HTTP request every `interval` to a fixed address,
/// from worker threads inside a namespace (a request that hangs until its
/// timeout does not delay the next ones).
pub struct HttpClient {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<Sample>>>,
    threads: Vec<JoinHandle<()>>,
}

/// Worker threads of the client: enough for every request in flight during
/// an outage (timeout / interval).
const WORKERS: usize = 48;

impl HttpClient {
    /// Starts sending from `ns` to `target` every `interval`, at most `max`
    /// requests, each bounded by `timeout`.
    pub fn start(
        ns: &Netns,
        target: SocketAddr,
        interval: Duration,
        timeout: Duration,
        max: u64,
    ) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel::<u64>();
        let rx = Arc::new(Mutex::new(rx));
        let mut threads = Vec::new();
        let netns_file = Path::new("/run/netns").join(ns.name());
        let (ready_tx, ready_rx) = mpsc::channel::<std::result::Result<(), String>>();
        for _ in 0..WORKERS {
            let (rx, samples, ready, file) = (
                rx.clone(),
                samples.clone(),
                ready_tx.clone(),
                netns_file.clone(),
            );
            threads.push(thread::spawn(move || {
                let entered = fs::File::open(&file)
                    .map_err(|e| e.to_string())
                    .and_then(|f| {
                        nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)
                            .map_err(|e| e.to_string())
                    });
                let ok = entered.is_ok();
                if ok {
                    realtime();
                }
                let _ = ready.send(entered);
                if !ok {
                    return;
                }
                loop {
                    let next = rx.lock().map(|r| r.recv());
                    let Ok(Ok(seq)) = next else { return };
                    let s = request(seq, target, timeout);
                    if let Ok(mut v) = samples.lock() {
                        v.push(s);
                    }
                }
            }));
        }
        drop(ready_tx);
        for _ in 0..WORKERS {
            match ready_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(reason)) => {
                    stop.store(true, Ordering::Relaxed);
                    // Dropping `tx` ends the workers that did enter.
                    drop(tx);
                    return Err(HarnessError::Setns {
                        netns: ns.name().to_owned(),
                        reason,
                    });
                }
                Err(_) => break,
            }
        }
        let stop2 = stop.clone();
        threads.push(thread::spawn(move || {
            realtime();
            let start = Instant::now();
            for seq in 0..max {
                if stop2.load(Ordering::Relaxed) {
                    break;
                }
                let at =
                    start + Duration::from_nanos((interval.as_nanos() as u64).saturating_mul(seq));
                let now = Instant::now();
                if at > now {
                    thread::sleep(at - now);
                }
                if tx.send(seq).is_err() {
                    break;
                }
            }
            // Dropping `tx` ends the workers once the queue is drained.
        }));
        Ok(HttpClient {
            stop,
            samples,
            threads,
        })
    }

    /// The samples so far, in no particular order.
    pub fn snapshot(&self) -> Vec<Sample> {
        self.samples.lock().map(|v| v.clone()).unwrap_or_default()
    }

    /// Stops sending, waits for the requests in flight and returns every
    /// sample, by sequence.
    pub fn finish(mut self) -> Vec<Sample> {
        self.join();
        let mut v = self.snapshot();
        v.sort_by_key(|s| s.seq);
        v
    }

    fn join(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for HttpClient {
    fn drop(&mut self) {
        self.join();
    }
}

/// Moves the calling thread to SCHED_FIFO priority 10, best effort: the
/// client is the measuring instrument and must not wait for a CPU behind
/// the systems it measures (or anything else running on the machine).
fn realtime() {
    let param = libc::sched_param { sched_priority: 10 };
    // SAFETY: plain syscall on the calling thread (pid 0) with a valid
    // sched_param; failure (no CAP_SYS_NICE) leaves the policy unchanged.
    unsafe {
        libc::sched_setscheduler(0, libc::SCHED_FIFO, &raw const param);
    }
}

/// One request: a new connection, `GET /`, the body is the node's name.
fn request(seq: u64, target: SocketAddr, timeout: Duration) -> Sample {
    let sent_ns = wall_ns();
    let started = Instant::now();
    let answer = (|| -> std::result::Result<String, &'static str> {
        let mut s = TcpStream::connect_timeout(&target, timeout).map_err(|e| match e.kind() {
            std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => "connect timeout",
            std::io::ErrorKind::ConnectionRefused => "refused",
            _ => "connect error",
        })?;
        let left = timeout
            .checked_sub(started.elapsed())
            .unwrap_or(Duration::from_micros(100))
            .max(Duration::from_micros(100));
        s.set_read_timeout(Some(left)).map_err(|_| "socket")?;
        s.set_write_timeout(Some(left)).map_err(|_| "socket")?;
        s.write_all(b"GET / HTTP/1.0\r\nHost: web\r\n\r\n")
            .map_err(|_| "write")?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).map_err(|e| match e.kind() {
            std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => "read timeout",
            _ => "reset",
        })?;
        let text = String::from_utf8_lossy(&buf);
        match text.split_once("\r\n\r\n") {
            Some((head, body)) if head.starts_with("HTTP/1.0 200") && !body.is_empty() => {
                Ok(body.to_owned())
            }
            _ => Err("bad answer"),
        }
    })();
    Sample {
        seq,
        sent_ns,
        done_ns: wall_ns(),
        answer: match answer {
            Ok(n) => Answer::Node(n),
            Err(e) => Answer::Error(e.to_owned()),
        },
    }
}

/// A failover as the client saw it.
#[derive(Clone, Debug, Default)]
pub struct Failover {
    /// The node that answered before the fault (the last answer before it).
    pub old: Option<String>,
    /// The first other node that answered after the fault.
    pub new: Option<String>,
    /// Fault -> arrival of the new node's first answer.
    pub failover_ns: Option<u64>,
    /// Arrival of the old node's last answer -> arrival of the new node's
    /// first: the service gap the client saw.
    pub gap_ns: Option<u64>,
    /// Requests sent after the fault that got no answer.
    pub errors: usize,
    /// Answers from the old node that arrived after the new node's first.
    pub old_after_new: usize,
    /// `interval`-long windows (by arrival time) in which two different
    /// nodes answered.
    pub shared_intervals: usize,
    /// Requests answered / sent.
    pub answered: usize,
    pub sent: usize,
}

/// The failover in `samples` (sorted or not) for a fault at `fault_ns`.
pub fn analyze(samples: &[Sample], fault_ns: u64, interval: Duration) -> Failover {
    let mut by_done: Vec<&Sample> = samples.iter().collect();
    by_done.sort_by_key(|s| s.done_ns);
    let node = |s: &Sample| match &s.answer {
        Answer::Node(n) => Some(n.clone()),
        Answer::Error(_) => None,
    };
    let last_old = by_done
        .iter()
        .rev()
        .filter(|s| s.sent_ns < fault_ns)
        .find_map(|s| node(s).map(|n| (n, s.done_ns)));
    let old = last_old.as_ref().map(|(n, _)| n.clone());
    let first_new = by_done
        .iter()
        .filter(|s| s.done_ns >= fault_ns)
        .find_map(|s| {
            node(s)
                .filter(|n| Some(n) != old.as_ref())
                .map(|n| (n, s.done_ns))
        });
    let step = interval.as_nanos().max(1) as u64;
    let mut shared_intervals = 0;
    let mut i = 0;
    while i < by_done.len() {
        let bucket = by_done[i].done_ns / step;
        let mut seen: Option<String> = None;
        let mut two = false;
        while i < by_done.len() && by_done[i].done_ns / step == bucket {
            if let Some(n) = node(by_done[i]) {
                match &seen {
                    Some(s) if *s != n => two = true,
                    None => seen = Some(n),
                    _ => {}
                }
            }
            i += 1;
        }
        shared_intervals += usize::from(two);
    }
    let old_after_new = match (&old, &first_new) {
        (Some(o), Some((_, at))) => by_done
            .iter()
            .filter(|s| s.done_ns > *at && node(s).as_ref() == Some(o))
            .count(),
        _ => 0,
    };
    Failover {
        failover_ns: first_new
            .as_ref()
            .map(|(_, at)| at.saturating_sub(fault_ns)),
        gap_ns: match (&last_old, &first_new) {
            (Some((_, a)), Some((_, b))) => Some(b.saturating_sub(*a)),
            _ => None,
        },
        new: first_new.map(|(n, _)| n),
        old,
        errors: samples
            .iter()
            .filter(|s| s.sent_ns >= fault_ns && node(s).is_none())
            .count(),
        old_after_new,
        shared_intervals,
        answered: samples.iter().filter(|s| node(s).is_some()).count(),
        sent: samples.len(),
    }
}

/// Timing of a [`PackageCluster`].
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    pub interval: &'static str,
    pub node_timeout: &'static str,
    pub agent_timeout: &'static str,
}

/// How the package's service is run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Service {
    /// The package's scripts start and stop the service (the demo).
    Scripts,
    /// The service runs on every node all the time (started by the
    /// harness); the package moves only the address, its scripts are
    /// `/bin/true`: the failover of the address alone, as with a VRRP
    /// address (the benchmark).
    Resident,
}

/// Cluster id of a [`PackageCluster`] (its bpffs pins would be under
/// `heartbeat/11-<node id>`).
pub const CLUSTER_ID: u32 = 11;

/// Node names of a [`PackageCluster`] (ids 1..).
pub const NODE_NAMES: [&str; 3] = ["alpha", "beta", "gamma"];

/// heartbeat agents on a [`Segment`] with one package `web` (address
/// [`Segment::vip`], nodes in name order).
pub struct PackageCluster {
    pub agents: Vec<Option<ChildGuard>>,
    /// Resident services, per node (with [`Service::Resident`]).
    pub services: Vec<Option<ChildGuard>>,
    pub seg: Segment,
    pub dir: PathBuf,
    pub agent: PathBuf,
    pub config: PathBuf,
    pub service: Service,
    py: PathBuf,
}

impl Drop for PackageCluster {
    fn drop(&mut self) {
        self.agents.clear();
        self.services.clear();
    }
}

impl PackageCluster {
    /// Writes the key and configuration into `dir` (created; removed by the
    /// caller) and starts every agent (and resident service). `nodes`: the
    /// package's nodes (names of [`NODE_NAMES`], most preferred first);
    /// `extra`: more keys of the package (`failback_policy = ...`).
    #[allow(
        clippy::too_many_arguments,
        reason = "one call per scenario; a builder would only rename them"
    )]
    pub fn new(
        agent: &Path,
        object: &[u8],
        prefix: &str,
        net: u8,
        timing: Timing,
        service: Service,
        nodes: &[&str],
        extra: &str,
        dir: &Path,
    ) -> Result<Self> {
        let io = |context: String| move |source| HarnessError::Io { context, source };
        fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
        let seg = Segment::new(prefix, NODE_NAMES.len(), net, object)?;
        let key = dir.join("cluster.key");
        fs::write(&key, "00112233445566778899aabbccddeeff\n")
            .map_err(io(format!("writing {}", key.display())))?;
        fs::set_permissions(&key, fs::Permissions::from_mode(0o600))
            .map_err(io(format!("chmod {}", key.display())))?;
        let (start, stop, monitor, interval) = match service {
            Service::Scripts => {
                let s = write_package_script(dir)?;
                let s = s.display();
                (
                    format!("{s} start"),
                    format!("{s} stop"),
                    format!("{s} monitor"),
                    "200ms",
                )
            }
            Service::Resident => (
                "/bin/true".into(),
                "/bin/true".into(),
                "/bin/true".into(),
                "200ms",
            ),
        };
        let mut toml = format!(
            "# Written by the failover harness (heartbeat-tests failover.rs).\n\
             [cluster]\nname = \"failover\"\nid = {CLUSTER_ID}\nkey_file = \"cluster.key\"\n\
             heartbeat_interval = \"{}\"\nnode_timeout = \"{}\"\nagent_timeout = \"{}\"\n\
             events_file = \"{{node}}.events.jsonl\"\nstate_file = \"{{node}}.state\"\n\n\
             [control]\nsocket = \"{{node}}.sock\"\n\n",
            timing.interval, timing.node_timeout, timing.agent_timeout
        );
        for (i, name) in NODE_NAMES.iter().enumerate() {
            toml.push_str(&format!(
                "[[node]]\nid = {}\nname = \"{name}\"\n  [[node.link]]\n  id = 0\n  interface = \"{}\"\n  address = \"{}\"\n\n",
                i + 1,
                seg.ifaces[i],
                seg.addr(i)
            ));
        }
        toml.push_str(&format!(
            "[[package]]\nname = \"web\"\nnodes = [{}]\naddresses = [\"{}/24\"]\n\
             start = \"{start}\"\nstop = \"{stop}\"\nmonitor = \"{monitor}\"\nmonitor_interval = \"{interval}\"\n{extra}\n",
            nodes
                .iter()
                .map(|n| format!("\"{n}\""))
                .collect::<Vec<_>>()
                .join(", "),
            seg.vip()
        ));
        let config = dir.join("cluster.toml");
        fs::write(&config, toml).map_err(io(format!("writing {}", config.display())))?;
        let py = write_service(dir)?;
        let mut c = PackageCluster {
            agents: (0..NODE_NAMES.len()).map(|_| None).collect(),
            services: (0..NODE_NAMES.len()).map(|_| None).collect(),
            seg,
            dir: dir.to_owned(),
            agent: agent.to_owned(),
            config,
            service,
            py,
        };
        for i in 0..NODE_NAMES.len() {
            c.start(i)?;
        }
        Ok(c)
    }

    /// Starts node `i`'s agent (and its resident service).
    pub fn start(&mut self, i: usize) -> Result<()> {
        let name = NODE_NAMES[i];
        if self.service == Service::Resident {
            let ready = self.dir.join(format!("resident.{name}.pid"));
            let _ = fs::remove_file(&ready);
            let g = self.seg.nodes[i].spawn_logged(
                &[
                    "chrt",
                    "-f",
                    SERVICE_RT_PRIORITY,
                    python(),
                    "-S",
                    "-I",
                    self.py.to_str().unwrap_or_default(),
                    name,
                    "80",
                    ready.to_str().unwrap_or_default(),
                ],
                &self.dir.join(format!("resident.{name}.log")),
            )?;
            self.services[i] = Some(g);
            let end = Instant::now() + Duration::from_secs(5);
            while !ready.exists() && Instant::now() < end {
                thread::sleep(Duration::from_millis(5));
            }
        }
        let log = self.dir.join(format!("{name}.log"));
        let g = self.seg.nodes[i].spawn_logged(
            &[
                self.agent.to_str().unwrap_or_default(),
                "run",
                "--config",
                self.config.to_str().unwrap_or_default(),
                "--node",
                name,
            ],
            &log,
        )?;
        self.agents[i] = Some(g);
        Ok(())
    }

    /// Kills node `i` (every process, link cut; see
    /// [`Segment::kill_node`] for `defer_agent`); returns the fault time.
    pub fn kill(&mut self, i: usize, defer_agent: Option<Duration>) -> Result<u64> {
        let t = self.seg.kill_node(i, defer_agent)?;
        // Reap them (the guards would signal reaped pids otherwise).
        for g in [self.agents[i].take(), self.services[i].take()]
            .into_iter()
            .flatten()
        {
            let mut g = g;
            let _ = g.wait_timeout(Duration::from_secs(5));
        }
        Ok(t)
    }

    /// Brings node `i` back: link restored, no stale address, agent started.
    pub fn revive(&mut self, i: usize) -> Result<()> {
        self.seg.revive_node(i)?;
        self.start(i)
    }

    /// `status --json` of node `i`, or `None` while it does not answer.
    pub fn status(&self, i: usize) -> Option<StatusReport> {
        let out = std::process::Command::new(&self.agent)
            .args(["status", "--json", "--socket"])
            .arg(self.dir.join(format!("{}.sock", NODE_NAMES[i])))
            .output()
            .ok()?;
        serde_json::from_slice(&out.stdout).ok()
    }

    /// `status` (text) of node `i`.
    pub fn status_text(&self, i: usize) -> String {
        std::process::Command::new(&self.agent)
            .args(["status", "--socket"])
            .arg(self.dir.join(format!("{}.sock", NODE_NAMES[i])))
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }

    /// The journal of node `i`.
    pub fn journal(&self, i: usize) -> Vec<Entry> {
        fs::read_to_string(self.dir.join(format!("{}.events.jsonl", NODE_NAMES[i])))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The agent log of node `i`.
    pub fn log(&self, i: usize) -> String {
        fs::read_to_string(self.dir.join(format!("{}.log", NODE_NAMES[i]))).unwrap_or_default()
    }

    /// Whether every running node agrees on a view of all running nodes
    /// and on `web`'s owner, which runs it; returns that owner's index.
    pub fn settled(&self) -> Option<usize> {
        let running: Vec<usize> = (0..NODE_NAMES.len())
            .filter(|&i| self.agents[i].is_some())
            .collect();
        let mut want: Vec<String> = running.iter().map(|&i| NODE_NAMES[i].to_owned()).collect();
        want.sort();
        let mut seen: Option<(u64, String)> = None;
        for &i in &running {
            let st = self.status(i)?;
            let mut m = st.membership.members.clone();
            m.sort();
            if m != want || st.membership.epoch == 0 {
                return None;
            }
            let p = st.packages.iter().find(|p| p.name == "web")?;
            let owner = p.owner.clone()?;
            if owner == NODE_NAMES[i] && p.local_state != "running" {
                return None;
            }
            let key = (st.membership.epoch, owner);
            match &seen {
                Some(s) if *s != key => return None,
                _ => seen = Some(key),
            }
        }
        let owner = seen?.1;
        NODE_NAMES.iter().position(|n| *n == owner)
    }

    /// Waits up to `within` for [`PackageCluster::settled`].
    pub fn wait_settled(&self, within: Duration) -> Option<usize> {
        let end = Instant::now() + within;
        loop {
            if let Some(i) = self.settled() {
                return Some(i);
            }
            if Instant::now() > end {
                return None;
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Asks `target` once from `ns`, for a check before a trial.
pub fn ask_once(ns: &Netns, target: SocketAddr) -> Option<String> {
    crate::in_netns(ns.name(), move || {
        match request(0, target, Duration::from_millis(200)).answer {
            Answer::Node(n) => Some(n),
            Answer::Error(_) => None,
        }
    })
    .ok()
    .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(seq: u64, sent: u64, done: u64, a: Option<&str>) -> Sample {
        Sample {
            seq,
            sent_ns: sent,
            done_ns: done,
            answer: a.map_or(Answer::Error("connect timeout".into()), |n| {
                Answer::Node(n.into())
            }),
        }
    }

    #[test]
    fn dates() {
        assert_eq!(utc_date(0), "1970-01-01 00:00:00");
        // 2026-11-22 11:01:19 UTC, 2000-02-29 23:59:59 UTC
        assert_eq!(utc_date(1_795_345_279), "2026-11-22 11:01:19");
        assert_eq!(utc_date(951_868_799), "2000-02-29 23:59:59");
    }

    #[test]
    fn analysis() {
        let ms = 1_000_000;
        let v = vec![
            s(0, 0, ms / 2, Some("a")),
            s(1, ms, ms + ms / 2, Some("a")),
            s(2, 2 * ms, 30 * ms, None),
            s(3, 3 * ms, 33 * ms, None),
            s(9, 9 * ms, 9 * ms + ms / 3, Some("b")),
            s(10, 10 * ms, 10 * ms + ms / 3, Some("b")),
        ];
        let f = analyze(&v, 2 * ms, Duration::from_millis(1));
        assert_eq!(f.old.as_deref(), Some("a"));
        assert_eq!(f.new.as_deref(), Some("b"));
        assert_eq!(f.failover_ns, Some(7 * ms + ms / 3));
        assert_eq!(f.gap_ns, Some(9 * ms + ms / 3 - (ms + ms / 2)));
        assert_eq!((f.errors, f.old_after_new, f.shared_intervals), (2, 0, 0));
        assert_eq!((f.answered, f.sent), (4, 6));
        // An old answer after the new node's first one: counted twice.
        let mut w = v.clone();
        w.push(s(11, 11 * ms, 10 * ms + ms / 2, Some("a")));
        let f = analyze(&w, 2 * ms, Duration::from_millis(1));
        assert_eq!((f.old_after_new, f.shared_intervals), (1, 1));
    }
}
