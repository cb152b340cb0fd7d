//! The load ladder of the false-detection scenario, in three scopes:
//! - link: iperf3 from the generator through A onto the heartbeat link;
//! - A only: CPU hogs, SCHED_FIFO hogs above the sender's priority, timer
//!   pressure and memory pressure, all pinned to A's CPU (B's CPU stays
//!   free): A's userspace starved while its kernel still answers B, the
//!   case heartbeat is designed for;
//! - whole machine: the same kinds of load on every CPU at once, so both
//!   nodes (which share the machine's CPUs) stall together; labelled so.
//!
//! Every load is bounded in time twice: by the tool's own duration option
//! and by the guard that kills it at the window's end.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::Context as _;
use heartbeat_tests::ChildGuard;

use super::{
    system::spawn_logged,
    topology::{IP_B, Side, Topology},
};

/// SCHED_FIFO priority of the sender thread of the heartbeat agent.
pub const SENDER_PRIORITY: u32 = 60;
/// SCHED_FIFO priority of the hogs on A only: above the sender, so A's
/// sender gets no CPU except in RT throttling's 5 % (sched_rt_runtime_us).
pub const FIFO_ABOVE_SENDER: u32 = 70;
/// Memory limit of the memory-pressure cgroup on A, and what its workers
/// touch together (more than the limit: no swap here, so the cgroup hits
/// its limit and reclaims, then its OOM killer kills a worker, which
/// stress-ng restarts; measured: ~11,000 limit hits and ~46 OOM kills in
/// 4 s).
const MEM_LIMIT_MB: u64 = 96;
const MEM_WORKERS: u32 = 2;
const MEM_TOTAL_MB: u64 = 160;
/// Rate of A's shaped egress in the full-queue load: slow enough that
/// iperf3 UDP keeps pfifo_fast's queue full (1000 packets, ~60 ms).
const SHAPED_RATE: &str = "200mbit";

/// Where a load runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    None,
    Link,
    NodeA,
    Machine,
}

impl Scope {
    pub fn name(self) -> &'static str {
        match self {
            Scope::None => "-",
            Scope::Link => "link",
            Scope::NodeA => "A only",
            Scope::Machine => "whole machine",
        }
    }
}

/// One rung of the ladder.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Load {
    Idle,
    IperfTcp,
    IperfUdp,
    UdpShaped,
    CpuA,
    FifoA,
    TimersA,
    MemoryA,
    Cpu,
    TimerSwitch,
    Fifo,
    TcpAndCpu,
}

impl Load {
    /// The full ladder.
    pub const ALL: [Load; 12] = [
        Load::Idle,
        Load::IperfTcp,
        Load::IperfUdp,
        Load::UdpShaped,
        Load::CpuA,
        Load::FifoA,
        Load::TimersA,
        Load::MemoryA,
        Load::Cpu,
        Load::TimerSwitch,
        Load::Fifo,
        Load::TcpAndCpu,
    ];
    /// The ladder of `--quick`.
    pub const QUICK: [Load; 9] = [
        Load::Idle,
        Load::IperfTcp,
        Load::IperfUdp,
        Load::UdpShaped,
        Load::CpuA,
        Load::FifoA,
        Load::TimersA,
        Load::MemoryA,
        Load::TimerSwitch,
    ];
    /// The ladder of the smoke run (one of each kind of tool).
    pub const SMOKE: [Load; 4] = [Load::Idle, Load::UdpShaped, Load::FifoA, Load::MemoryA];

    /// Short name, as `--loads` takes it.
    pub fn key(self) -> &'static str {
        match self {
            Load::Idle => "idle",
            Load::IperfTcp => "tcp",
            Load::IperfUdp => "udp",
            Load::UdpShaped => "udp-full-queue",
            Load::CpuA => "cpu-a",
            Load::FifoA => "fifo-a",
            Load::TimersA => "timers-a",
            Load::MemoryA => "memory-a",
            Load::Cpu => "cpu",
            Load::TimerSwitch => "timers",
            Load::Fifo => "fifo",
            Load::TcpAndCpu => "tcp-cpu",
        }
    }

    pub fn from_key(key: &str) -> Option<Load> {
        Load::ALL.into_iter().find(|l| l.key() == key)
    }

    pub fn scope(self) -> Scope {
        match self {
            Load::Idle => Scope::None,
            Load::IperfTcp | Load::IperfUdp | Load::UdpShaped => Scope::Link,
            Load::CpuA | Load::FifoA | Load::TimersA | Load::MemoryA => Scope::NodeA,
            Load::Cpu | Load::TimerSwitch | Load::Fifo | Load::TcpAndCpu => Scope::Machine,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Load::Idle => "idle",
            Load::IperfTcp => "iperf3 TCP",
            Load::IperfUdp => "iperf3 UDP line rate",
            Load::UdpShaped => "UDP, A's NIC queue full",
            Load::CpuA => "A: CPU hogs (fair)",
            Load::FifoA => "A: FIFO hogs > sender",
            Load::TimersA => "A: hrtimer pressure",
            Load::MemoryA => "A: memory reclaim",
            Load::Cpu => "all: CPU hogs (fair)",
            Load::TimerSwitch => "all: timers+ctx switch",
            Load::Fifo => "all: FIFO hogs = sender",
            Load::TcpAndCpu => "all: TCP + CPU hogs",
        }
    }

    /// The commands, for the report.
    pub fn describe(self, cpus: usize, cpu_a: Option<usize>) -> String {
        let on_a = cpu_a.map_or(" (no CPU of its own: 1 CPU)".to_owned(), |c| {
            format!(" pinned to A's CPU {c}")
        });
        match self {
            Load::Idle => "nothing".into(),
            Load::IperfTcp => "iperf3 -c B -t T (TCP, gen -> A -> B)".into(),
            Load::IperfUdp => "iperf3 -c B -u -b 0 -t T (UDP at line rate, gen -> A -> B)".into(),
            Load::UdpShaped => format!(
                "iperf3 UDP at line rate into A's interface shaped to {SHAPED_RATE} (tbf root, pfifo_fast under it): pfifo_fast's queue stays full, so heartbeats pass only through its band 0 (SO_PRIORITY 6)"
            ),
            Load::CpuA => format!("stress-ng --cpu 2{on_a}"),
            Load::FifoA => format!(
                "stress-ng --cpu 1 --sched fifo --sched-prio {FIFO_ABOVE_SENDER}{on_a} (the agent's sender: SCHED_FIFO {SENDER_PRIORITY})"
            ),
            Load::TimersA => format!(
                "stress-ng --hrtimers 1{on_a} (its 32 workers run SCHED_RR 49, as seen with ps: below every agent thread, the runtime at SCHED_FIFO 52 and the sender at 60)"
            ),
            Load::MemoryA => format!(
                "stress-ng --vm {MEM_WORKERS} --vm-bytes {MEM_TOTAL_MB}M{on_a}, in a memory cgroup limited to {MEM_LIMIT_MB} MiB (no swap: reclaim at the limit, then the cgroup's OOM killer; stress-ng restarts its workers)"
            ),
            Load::Cpu => format!("stress-ng --cpu {cpus}"),
            Load::TimerSwitch => {
                format!("stress-ng --timer {cpus} --hrtimers {cpus} --switch {cpus}")
            }
            Load::Fifo => format!(
                "stress-ng --cpu {cpus} --sched fifo --sched-prio {SENDER_PRIORITY} (equal to the sender: FIFO does not preempt at equal priority)"
            ),
            Load::TcpAndCpu => format!("iperf3 TCP + stress-ng --cpu {cpus}"),
        }
    }
}

/// A memory cgroup (v1 or v2) removed on drop, once empty.
struct MemCgroup {
    dir: PathBuf,
}

impl MemCgroup {
    fn new(limit_mb: u64) -> anyhow::Result<Self> {
        let name = format!("hbbench-{}", std::process::id());
        let v2 = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
        let (dir, limit_file) = if v2 {
            (Path::new("/sys/fs/cgroup").join(&name), "memory.max")
        } else {
            (
                Path::new("/sys/fs/cgroup/memory").join(&name),
                "memory.limit_in_bytes",
            )
        };
        if !dir.exists() {
            std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let cg = MemCgroup { dir };
        std::fs::write(
            cg.dir.join(limit_file),
            (limit_mb * 1024 * 1024).to_string(),
        )
        .with_context(|| format!("setting {limit_file}"))?;
        Ok(cg)
    }

    fn procs(&self) -> PathBuf {
        self.dir.join("cgroup.procs")
    }

    /// What the cgroup went through: limit hits and OOM kills (v1:
    /// memory.failcnt and memory.oom_control; v2: memory.events).
    fn summary(&self) -> String {
        let read = |f: &str| std::fs::read_to_string(self.dir.join(f)).unwrap_or_default();
        let field = |text: &str, key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        let events = read("memory.events");
        let (hits, kills) = if events.is_empty() {
            (
                read("memory.failcnt").trim().parse::<u64>().ok(),
                field(&read("memory.oom_control"), "oom_kill "),
            )
        } else {
            (field(&events, "max "), field(&events, "oom_kill "))
        };
        format!(
            "memory cgroup: {} limit hits, {} OOM kills",
            hits.map_or("?".into(), |h| h.to_string()),
            kills.map_or("?".into(), |k| k.to_string())
        )
    }
}

impl Drop for MemCgroup {
    fn drop(&mut self) {
        // The workers may take a moment to exit after the guard's kill.
        for _ in 0..50 {
            if std::fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A's egress shaped for the full-queue load; plain pfifo_fast again on
/// drop.
struct Shaped<'a> {
    topo: &'a Topology,
}

impl<'a> Shaped<'a> {
    fn new(topo: &'a Topology) -> anyhow::Result<Self> {
        let dev = topo.if_a.as_str();
        topo.a.exec(&[
            "tc",
            "qdisc",
            "replace",
            "dev",
            dev,
            "root",
            "handle",
            "1:",
            "tbf",
            "rate",
            SHAPED_RATE,
            "burst",
            "64kb",
            "latency",
            "100ms",
        ])?;
        let shaped = Shaped { topo };
        topo.a.exec(&[
            "tc",
            "qdisc",
            "add",
            "dev",
            dev,
            "parent",
            "1:1",
            "handle",
            "10:",
            "pfifo_fast",
        ])?;
        Ok(shaped)
    }
}

impl Drop for Shaped<'_> {
    fn drop(&mut self) {
        let dev = self.topo.if_a.as_str();
        // Failure leaves the shaping until the topology is deleted.
        let _ = self
            .topo
            .a
            .exec(&["tc", "qdisc", "replace", "dev", dev, "root", "pfifo_fast"]);
    }
}

/// A running load; everything is killed on drop.
pub struct Running<'a> {
    children: Vec<ChildGuard>,
    _cgroup: Option<MemCgroup>,
    _shaped: Option<Shaped<'a>>,
}

impl Running<'_> {
    /// Stops every process of the load now; returns what the load's own
    /// counters say, if it has any (the memory cgroup's).
    pub fn stop(mut self) -> Option<String> {
        for mut c in self.children.drain(..) {
            let _ = c.shutdown(Duration::from_millis(500));
        }
        self._cgroup.as_ref().map(MemCgroup::summary)
    }
}

/// stress-ng with `args` for `secs` (pinned to A's CPU when `on_a`), in
/// the root namespace; its output goes to `log`. With `cgroup`, it starts
/// inside that cgroup (a shell moves itself there, then execs).
fn stress(
    topo: &Topology,
    args: &[String],
    on_a: bool,
    secs: u64,
    log: &Path,
    cgroup: Option<&Path>,
) -> anyhow::Result<ChildGuard> {
    use std::os::unix::process::CommandExt as _;
    let out = std::fs::File::create(log)?;
    let mut argv: Vec<String> = vec!["stress-ng".into()];
    argv.extend(args.iter().cloned());
    argv.extend(["--timeout".into(), format!("{secs}s"), "--quiet".into()]);
    if on_a {
        let refs: Vec<&str> = argv.iter().map(String::as_str).collect();
        argv = topo.pinned(Side::A, &refs);
    }
    let mut cmd = match cgroup {
        Some(procs) => {
            let mut c = Command::new("sh");
            c.args([
                "-c",
                &format!("echo $$ > '{}' && exec \"$@\"", procs.display()),
                "sh",
            ])
            .args(&argv);
            c
        }
        None => {
            let mut c = Command::new(&argv[0]);
            c.args(&argv[1..]);
            c
        }
    };
    cmd.stdin(std::process::Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        // stress-ng signals its whole process group when it stops.
        .process_group(0);
    ChildGuard::spawn(&mut cmd).context("starting stress-ng")
}

fn iperf(topo: &Topology, udp: bool, secs: u64, dir: &Path) -> anyhow::Result<Vec<ChildGuard>> {
    let b = IP_B.to_string();
    let server = spawn_logged(
        topo,
        Side::B,
        &["iperf3", "-s", "-1", "-B", &b],
        &dir.join("iperf3-server.log"),
    )
    .context("starting iperf3 server")?;
    // Wait until it listens (bounded).
    for _ in 0..50 {
        let out = topo.b.exec_unchecked(&["ss", "-Hltn", "sport = :5201"]);
        if out.is_ok_and(|o| !o.stdout.is_empty()) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let t = secs.to_string();
    let mut args = vec!["iperf3", "-c", &b, "-t", &t, "--connect-timeout", "2000"];
    if udp {
        args.extend(["-u", "-b", "0"]);
    }
    let client = spawn_logged(topo, Side::Generator, &args, &dir.join("iperf3-client.log"))
        .context("starting iperf3 client")?;
    Ok(vec![client, server])
}

/// Starts `load` for `secs` seconds (logs go to `dir`).
pub fn start<'a>(
    load: Load,
    topo: &'a Topology,
    secs: u64,
    cpus: usize,
    dir: &Path,
) -> anyhow::Result<Running<'a>> {
    let n = cpus.to_string();
    let mut children = Vec::new();
    let mut cgroup = None;
    let mut shaped = None;
    let s = |v: &[&str]| v.iter().map(|x| (*x).to_owned()).collect::<Vec<String>>();
    let log = dir.join("stress-ng.log");
    let fifo_above = FIFO_ABOVE_SENDER.to_string();
    let fifo_equal = SENDER_PRIORITY.to_string();
    match load {
        Load::Idle => {}
        Load::IperfTcp => children.extend(iperf(topo, false, secs, dir)?),
        Load::IperfUdp => children.extend(iperf(topo, true, secs, dir)?),
        Load::UdpShaped => {
            shaped = Some(Shaped::new(topo)?);
            children.extend(iperf(topo, true, secs, dir)?);
        }
        Load::CpuA => children.push(stress(topo, &s(&["--cpu", "2"]), true, secs, &log, None)?),
        Load::FifoA => children.push(stress(
            topo,
            &s(&["--cpu", "1", "--sched", "fifo", "--sched-prio", &fifo_above]),
            true,
            secs,
            &log,
            None,
        )?),
        Load::TimersA => children.push(stress(
            topo,
            &s(&["--hrtimers", "1"]),
            true,
            secs,
            &log,
            None,
        )?),
        Load::MemoryA => {
            let cg = MemCgroup::new(MEM_LIMIT_MB)?;
            children.push(stress(
                topo,
                &s(&[
                    "--vm",
                    &MEM_WORKERS.to_string(),
                    "--vm-bytes",
                    &format!("{MEM_TOTAL_MB}M"),
                ]),
                true,
                secs,
                &log,
                Some(&cg.procs()),
            )?);
            cgroup = Some(cg);
        }
        Load::Cpu => children.push(stress(topo, &s(&["--cpu", &n]), false, secs, &log, None)?),
        Load::TimerSwitch => children.push(stress(
            topo,
            &s(&["--timer", &n, "--hrtimers", &n, "--switch", &n]),
            false,
            secs,
            &log,
            None,
        )?),
        Load::Fifo => children.push(stress(
            topo,
            &s(&["--cpu", &n, "--sched", "fifo", "--sched-prio", &fifo_equal]),
            false,
            secs,
            &log,
            None,
        )?),
        Load::TcpAndCpu => {
            children.extend(iperf(topo, false, secs, dir)?);
            children.push(stress(topo, &s(&["--cpu", &n]), false, secs, &log, None)?);
        }
    }
    Ok(Running {
        children,
        _cgroup: cgroup,
        _shaped: shaped,
    })
}
