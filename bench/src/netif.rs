//! Standby NIC takeover timing (issue #10): node a has two cards on a
//! bridge (the link's interface and its standby), node b one. For each
//! trial the active card fails and the time is measured from the fault to
//! the first heartbeat reply from b that reaches a's standby card (a tap on
//! the standby's bridge port: a packet socket read by a SCHED_FIFO thread
//! that reads the clock as each frame arrives): the moment heartbeats flow
//! again through the standby.
//!
//! - carrier loss: a's active card is set down (an `SIOCSIFFLAGS` ioctl in
//!   a's namespace; the fault time is read just before it);
//! - a failure only polls see: the active card's bridge port is removed
//!   from the bridge (`SIOCBRDELIF`, what `ip link set PORT nomaster`
//!   does, in the segment's namespace; the fault time is read just before
//!   it). (Until the issue-10 rework this ran `ip`, and the figure included
//!   its start-up, a few ms.)
//!
//! Between trials the card is restored and the link fails back
//! (`failback_hold` 300 ms). b's journal must show no node_down: with
//! `node_timeout` above the switch time, a switch is invisible to the peer.

use std::{
    ffi::CString,
    fs, io, mem,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use heartbeat_api::{
    journal::{Entry, EventKind},
    status::StatusReport,
};
use heartbeat_tests::{ChildGuard, Netns, VethPair, attach_xdp_pass, in_netns};
use serde::Serialize;

use crate::util::step;

const A_ADDR: &str = "10.234.0.1";
const B_ADDR: &str = "10.234.0.2";
/// Settings of the run.
const INTERVAL: &str = "5ms";
const NODE_TIMEOUT: &str = "200ms";
const POLLING: &str = "10ms";
const POLLING_MS: f64 = 10.0;

/// One fault kind's figures.
#[derive(Clone, Debug, Default, Serialize)]
pub struct NetifRow {
    pub fault: String,
    pub trials: usize,
    pub misses: usize,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub max_ms: Option<f64>,
    /// The agent's own figure: carrying out the switch (addresses,
    /// routes, socket), from its nic_switched entries, median.
    pub switch_op_p50_us: Option<f64>,
    pub samples_ms: Vec<f64>,
}

/// The whole measurement.
#[derive(Clone, Debug, Default, Serialize)]
pub struct NetifReport {
    pub heartbeat_interval: String,
    pub node_timeout: String,
    pub network_polling_interval: String,
    pub rows: Vec<NetifRow>,
    /// node_down entries b journaled about a during the run.
    pub peer_node_down: usize,
}

fn mono_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).ceil() as usize;
    sorted.get(idx.min(sorted.len() - 1)).copied()
}

/// Sets `ifname` (in the calling thread's namespace) down or up.
pub(crate) fn set_flags(ifname: &str, up: bool) -> io::Result<()> {
    // SAFETY: plain socket(2); checked and owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ifreq is plain old data; all-zero is valid.
    let mut ifr: libc::ifreq = unsafe { mem::zeroed() };
    let name = CString::new(ifname).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    for (d, s) in ifr.ifr_name.iter_mut().zip(name.as_bytes()) {
        *d = *s as libc::c_char;
    }
    // SAFETY: `ifr` is a valid ifreq naming the interface.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::SIOCGIFFLAGS, &mut ifr) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    let flags = unsafe { ifr.ifr_ifru.ifru_flags };
    let up_flag = libc::IFF_UP as libc::c_short;
    ifr.ifr_ifru.ifru_flags = if up {
        flags | up_flag
    } else {
        flags & !up_flag
    };
    // SAFETY: as above.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::SIOCSIFFLAGS, &ifr) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `SIOCBRADDIF` / `SIOCBRDELIF` (linux/sockios.h).
const SIOCBRADDIF: libc::Ioctl = 0x89a2;
const SIOCBRDELIF: libc::Ioctl = 0x89a3;

/// Adds `port` to `bridge` or removes it (in the calling thread's
/// namespace), as `ip link set PORT master BRIDGE | nomaster` does, without
/// starting a process.
fn bridge_port(bridge: &str, port: &str, add: bool) -> io::Result<()> {
    let index = nix::net::if_::if_nametoindex(port).map_err(io::Error::from)?;
    // SAFETY: plain socket(2); checked and owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ifreq is plain old data; all-zero is valid.
    let mut ifr: libc::ifreq = unsafe { mem::zeroed() };
    let name = CString::new(bridge).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    for (d, s) in ifr.ifr_name.iter_mut().zip(name.as_bytes()) {
        *d = *s as libc::c_char;
    }
    ifr.ifr_ifru.ifru_ifindex = index as libc::c_int;
    let request = if add { SIOCBRADDIF } else { SIOCBRDELIF };
    // SAFETY: `ifr` is a valid ifreq naming the bridge and the port's index.
    if unsafe { libc::ioctl(fd.as_raw_fd(), request, &ifr) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A tap on a's standby's bridge port: the first IPv4 UDP frame to the
/// standby's MAC from b's address after `armed_at` (CLOCK_MONOTONIC).
struct Tap {
    armed_at: Arc<AtomicU64>,
    first: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Tap {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let v: Vec<u8> = s
        .split(':')
        .filter_map(|x| u8::from_str_radix(x, 16).ok())
        .collect();
    <[u8; 6]>::try_from(v.as_slice()).ok()
}

impl Tap {
    fn start(ns: &Netns, port: &str, mac: [u8; 6], from: [u8; 4]) -> anyhow::Result<Self> {
        let port = port.to_owned();
        let fd = in_netns(ns.name(), move || -> io::Result<OwnedFd> {
            let proto = (libc::ETH_P_ALL as u16).to_be();
            // SAFETY: plain socket(2); checked and owned below.
            let fd = unsafe {
                libc::socket(
                    libc::AF_PACKET,
                    libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                    proto.into(),
                )
            };
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: a fresh descriptor nothing else owns.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            let index = nix::net::if_::if_nametoindex(port.as_str()).map_err(io::Error::from)?;
            // SAFETY: sockaddr_ll is plain old data; all-zero is valid.
            let mut sll: libc::sockaddr_ll = unsafe { mem::zeroed() };
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_protocol = proto;
            sll.sll_ifindex = index as i32;
            // SAFETY: `sll` is valid for its size.
            let rc = unsafe {
                libc::bind(
                    fd.as_raw_fd(),
                    (&raw const sll).cast(),
                    mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
                )
            };
            if rc < 0 {
                return Err(io::Error::last_os_error());
            }
            let tv = libc::timeval {
                tv_sec: 0,
                tv_usec: 50_000,
            };
            // SAFETY: `tv` is valid for its size.
            unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_RCVTIMEO,
                    (&raw const tv).cast(),
                    mem::size_of::<libc::timeval>() as libc::socklen_t,
                )
            };
            Ok(fd)
        })??;
        let armed_at = Arc::new(AtomicU64::new(u64::MAX));
        let first = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (armed_at, first, stop) = (armed_at.clone(), first.clone(), stop.clone());
            std::thread::spawn(move || {
                // Real-time (below the agent's threads, 40 and 50), so the
                // machine's load does not delay the capture time it reads.
                let param = libc::sched_param { sched_priority: 30 };
                // SAFETY: pid 0 is this thread; `param` is a valid sched_param.
                unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) };
                let mut buf = [0u8; 2048];
                while !stop.load(Ordering::Relaxed) {
                    // SAFETY: the buffer is valid for its length.
                    let n = unsafe {
                        libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0)
                    };
                    let now = mono_ns();
                    if n < 34 {
                        continue;
                    }
                    let f = &buf[..n as usize];
                    if f[0..6] == mac
                        && f[12..14] == [0x08, 0x00]
                        && f[23] == 17
                        && f[26..30] == from
                        && now >= armed_at.load(Ordering::Relaxed)
                    {
                        let _ =
                            first.compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed);
                    }
                }
            })
        };
        Ok(Self {
            armed_at,
            first,
            stop,
            thread: Some(thread),
        })
    }

    fn arm(&self, at: u64) {
        self.first.store(0, Ordering::Relaxed);
        self.armed_at.store(at, Ordering::Relaxed);
    }

    fn wait(&self, within: Duration) -> Option<u64> {
        let end = Instant::now() + within;
        while Instant::now() < end {
            let f = self.first.load(Ordering::Relaxed);
            if f != 0 {
                return Some(f);
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        None
    }
}

struct Setup {
    dir: PathBuf,
    agent: PathBuf,
    seg: Netns,
    a: Netns,
    b: Netns,
    a1: String,
    a2: String,
    pa1: String,
    pa2: String,
    agents: Vec<ChildGuard>,
    _pass: Vec<aya::Ebpf>,
}

impl Drop for Setup {
    fn drop(&mut self) {
        self.agents.clear();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

impl Setup {
    fn new(agent: &Path, object: &[u8], dir: &Path) -> anyhow::Result<Self> {
        let _ = fs::remove_dir_all(dir);
        fs::create_dir_all(dir)?;
        let seg = Netns::new("hbn")?;
        let a = Netns::new("hbn")?;
        let b = Netns::new("hbn")?;
        seg.ip(&["link", "add", "br0", "type", "bridge"])?;
        seg.ip(&["link", "set", "br0", "up"])?;
        for key in ["all", "default"] {
            a.exec(&[
                "sysctl",
                "-qw",
                &format!("net.ipv4.conf.{key}.arp_ignore=1"),
            ])?;
        }
        let p1 = VethPair::connect(&a, &seg, format!("{A_ADDR}/24"), Vec::<String>::new())?;
        let p2 = VethPair::connect(&a, &seg, Vec::<String>::new(), Vec::<String>::new())?;
        let pb = VethPair::connect(&b, &seg, format!("{B_ADDR}/24"), Vec::<String>::new())?;
        let mut pass = Vec::new();
        for port in [&p1.if_b, &p2.if_b, &pb.if_b] {
            seg.ip(&["link", "set", port, "master", "br0"])?;
            pass.push(attach_xdp_pass(&seg, port, object)?);
        }
        let ok = (0..25).any(|_| {
            b.exec(&["ping", "-c", "1", "-W", "1", "-i", "0.2", A_ADDR])
                .is_ok()
        });
        if !ok {
            bail!("b cannot reach a");
        }
        let key = dir.join("cluster.key");
        fs::write(&key, "00112233445566778899aabbccddeeff\n")?;
        fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        let toml = format!(
            "[cluster]\nname = \"bench\"\nid = 11\nkey_file = \"cluster.key\"\n\
             heartbeat_interval = \"{INTERVAL}\"\nnode_timeout = \"{NODE_TIMEOUT}\"\nagent_timeout = \"1s\"\n\
             events_file = \"{{node}}.events.jsonl\"\nstate_file = \"{{node}}.state\"\n\
             network_polling_interval = \"{POLLING}\"\nfailback_hold = \"300ms\"\n\n\
             [control]\nsocket = \"{{node}}.sock\"\n\n\
             [[node]]\nid = 1\nname = \"a\"\n  [[node.link]]\n  interface = \"{}\"\n  address = \"{A_ADDR}\"\n  standby = \"{}\"\n\n\
             [[node]]\nid = 2\nname = \"b\"\n  [[node.link]]\n  interface = \"{}\"\n  address = \"{B_ADDR}\"\n",
            p1.if_a, p2.if_a, pb.if_a
        );
        let config = dir.join("cluster.toml");
        fs::write(&config, toml)?;
        let mut s = Self {
            dir: dir.to_owned(),
            agent: agent.to_owned(),
            seg,
            a,
            b,
            a1: p1.if_a.clone(),
            a2: p2.if_a.clone(),
            pa1: p1.if_b.clone(),
            pa2: p2.if_b.clone(),
            agents: Vec::new(),
            _pass: pass,
        };
        for (ns, name) in [(&s.a, "a"), (&s.b, "b")] {
            let log = s.dir.join(format!("{name}.log"));
            let g = ns.spawn_logged(
                &[
                    s.agent.to_str().context("agent path")?,
                    "run",
                    "--config",
                    config.to_str().context("config path")?,
                    "--node",
                    name,
                ],
                &log,
            )?;
            s.agents.push(g);
        }
        Ok(s)
    }

    fn status(&self, name: &str) -> Option<StatusReport> {
        let out = std::process::Command::new(&self.agent)
            .args(["status", "--json", "--socket"])
            .arg(self.dir.join(format!("{name}.sock")))
            .output()
            .ok()?;
        serde_json::from_slice(&out.stdout).ok()
    }

    fn journal(&self, name: &str) -> Vec<Entry> {
        fs::read_to_string(self.dir.join(format!("{name}.events.jsonl")))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Waits until a's link is on `card` and b has a up.
    fn wait_on(&self, card: &str, within: Duration) -> anyhow::Result<()> {
        let end = Instant::now() + within;
        loop {
            crate::check_interrupt()?;
            let a_ok = self.status("a").is_some_and(|s| {
                s.nics
                    .first()
                    .is_some_and(|n| n.active == card && !n.link_down)
            });
            let b_ok = self.status("b").is_some_and(|s| {
                s.node("a")
                    .is_some_and(|n| n.state == heartbeat_api::status::NodeState::Up)
            });
            if a_ok && b_ok {
                return Ok(());
            }
            if Instant::now() > end {
                bail!("a's link never settled on {card}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Runs `trials` switches of each fault kind.
pub fn measure(
    agent: &Path,
    object: &[u8],
    trials: usize,
    dir: &Path,
) -> anyhow::Result<NetifReport> {
    step(format!(
        "standby NIC takeover: {trials} switches per fault (interval {INTERVAL}, polling {POLLING})"
    ));
    let s = Setup::new(agent, object, dir)?;
    s.wait_on(&s.a1, Duration::from_secs(30))?;
    let mac2 = {
        let out = s.a.ip(&["-br", "link", "show", "dev", &s.a2])?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.split_whitespace()
            .nth(2)
            .and_then(parse_mac)
            .context("the standby's MAC")?
    };
    let b_ip: std::net::Ipv4Addr = B_ADDR.parse()?;
    let tap = Tap::start(&s.seg, &s.pa2, mac2, b_ip.octets())?;
    let mut report = NetifReport {
        heartbeat_interval: INTERVAL.into(),
        node_timeout: NODE_TIMEOUT.into(),
        network_polling_interval: POLLING.into(),
        ..NetifReport::default()
    };
    for fault in ["carrier loss", "bridge-side cut (polls only)"] {
        let mut samples = Vec::new();
        let mut misses = 0;
        let since = crate::wall_ns() as u64;
        for _ in 0..trials {
            crate::check_interrupt()?;
            std::thread::sleep(Duration::from_millis(100));
            let a1 = s.a1.clone();
            // (No reply from b reaches the standby before the switch, so
            // arming a little early changes nothing.)
            tap.arm(mono_ns());
            let t0 = if fault == "carrier loss" {
                in_netns(s.a.name(), move || {
                    let t0 = mono_ns();
                    set_flags(&a1, false).map(|()| t0)
                })??
            } else {
                let pa1 = s.pa1.clone();
                in_netns(s.seg.name(), move || {
                    let t0 = mono_ns();
                    bridge_port("br0", &pa1, false).map(|()| t0)
                })??
            };
            match tap.wait(Duration::from_secs(2)) {
                Some(t1) => samples.push(t1.saturating_sub(t0) as f64 / 1e6),
                None => misses += 1,
            }
            if fault == "carrier loss" {
                let a1 = s.a1.clone();
                in_netns(s.a.name(), move || set_flags(&a1, true))??;
            } else {
                let pa1 = s.pa1.clone();
                in_netns(s.seg.name(), move || bridge_port("br0", &pa1, true))??;
            }
            s.wait_on(&s.a1, Duration::from_secs(10))?;
        }
        let ops: Vec<f64> = s
            .journal("a")
            .into_iter()
            .filter(|e| {
                e.event == EventKind::NicSwitched
                    && e.handled_wall_ns >= since
                    && e.cause != "failback"
            })
            .filter_map(|e| {
                let d = e.detail?;
                d.split(" in ").nth(1)?.split(' ').next()?.parse().ok()
            })
            .collect();
        let mut sorted = samples.clone();
        sorted.sort_by(f64::total_cmp);
        let mut ops_sorted = ops;
        ops_sorted.sort_by(f64::total_cmp);
        report.rows.push(NetifRow {
            fault: fault.into(),
            trials,
            misses,
            p50_ms: percentile(&sorted, 0.5),
            p99_ms: percentile(&sorted, 0.99),
            max_ms: sorted.last().copied(),
            switch_op_p50_us: percentile(&ops_sorted, 0.5),
            samples_ms: samples,
        });
    }
    report.peer_node_down = s
        .journal("b")
        .iter()
        .filter(|e| e.event == EventKind::NodeDown)
        .count();
    drop(tap);
    Ok(report)
}

/// The report as a table, beside Serviceguard's documented polling.
pub fn table(r: &NetifReport) -> String {
    let ms = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.1}"));
    let mut s = format!(
        "Standby NIC takeover (heartbeat_interval {}, node_timeout {}, network_polling_interval {}):\n\
         time from the fault to the first heartbeat reply through the standby card\n\
         {:<32} {:>6} {:>6} {:>8} {:>8} {:>8} {:>12}\n",
        r.heartbeat_interval,
        r.node_timeout,
        r.network_polling_interval,
        "fault",
        "n",
        "misses",
        "p50 ms",
        "p99 ms",
        "max ms",
        "switch op us"
    );
    for row in &r.rows {
        s.push_str(&format!(
            "{:<32} {:>6} {:>6} {:>8} {:>8} {:>8} {:>12}\n",
            row.fault,
            row.trials,
            row.misses,
            ms(row.p50_ms),
            ms(row.p99_ms),
            ms(row.max_ms),
            row.switch_op_p50_us
                .map_or("-".into(), |v| format!("{v:.0}"))
        ));
    }
    s.push_str(&format!(
        "targets: carrier p99 <= 50 ms; polls only p99 <= 3 x {POLLING_MS} ms. \
         Serviceguard polls every NETWORK_POLLING_INTERVAL (2 s by default). \
         node_down at the peer during the run: {}\n",
        r.peer_node_down
    ));
    s
}
