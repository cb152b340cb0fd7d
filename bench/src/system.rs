//! What every system under test (heartbeat and its peers) offers the bench,
//! and the pieces they share: tailing a log, stamping a FIFO's lines as
//! they arrive, per-process CPU time.

use std::{
    fs::File,
    io::{Read as _, Seek as _, SeekFrom, Write as _},
    os::{
        fd::AsRawFd as _,
        unix::{fs::OpenOptionsExt as _, process::CommandExt as _},
    },
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::Context as _;
use heartbeat_tests::{ChildGuard, Signal};

use super::{
    parse::{Obs, Transition},
    sniff::Stream,
    topology::{Side, Topology},
    wall_ns,
};

/// Which node an observation comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Node {
    A,
    B,
}

impl Node {
    /// The node's place in the topology.
    pub fn side(self) -> Side {
        match self {
            Node::A => Side::A,
            Node::B => Side::B,
        }
    }
}

/// A system under test: two instances (nodes A and B) watching each other.
pub trait System {
    /// Row label, e.g. `keepalived` or `heartbeat 500µs`.
    fn label(&self) -> String;
    /// The wire protocol, for the packet taps.
    fn stream(&self) -> Stream;
    /// Nominal interval between its heartbeats (for the random phase).
    fn interval_ns(&self) -> i64;
    /// How long to wait for a detection before counting a miss.
    fn max_wait(&self) -> Duration;
    /// Settings worth stating in the report.
    fn settings(&self) -> String;
    /// Starts both nodes.
    fn start(&mut self, topo: &Topology) -> anyhow::Result<()>;
    /// Stops both nodes (idempotent).
    fn stop(&mut self);
    /// Reads what the nodes wrote since the last call.
    fn poll(&mut self) -> anyhow::Result<()>;
    /// What node `node` said about the other one, in order.
    fn observations(&self, node: Node) -> &[Obs];
    /// True when both nodes see each other alive and in their normal roles.
    fn healthy(&self) -> bool;
    /// Freezes A's daemon (SIGSTOP); returns the wall time just before.
    fn stop_a(&mut self) -> anyhow::Result<i64>;
    /// Resumes A's daemon (SIGCONT).
    fn cont_a(&mut self) -> anyhow::Result<()>;
    /// Kills A's daemon (SIGKILL); returns the wall time just before.
    fn kill_a(&mut self) -> anyhow::Result<i64>;
    /// Starts A's daemon again after [`System::kill_a`].
    fn restart_a(&mut self, topo: &Topology) -> anyhow::Result<()>;
    /// Pids of all its processes on both nodes.
    fn pids(&self) -> Vec<i32>;
    /// The receiving side's own record of gaps between A's heartbeats
    /// (heartbeat's XDP program keeps it). `None`: not measured (the bench
    /// puts no packet tap on the nodes' interfaces during loads).
    fn receiver_gaps(&self) -> Option<ReceiverGaps> {
        None
    }

    /// The pid of the node's agent (heartbeat only: its threads and XDP
    /// program are costed one by one).
    fn agent_pid(&self, _node: Node) -> Option<i32> {
        None
    }

    /// Heartbeats each node sends per second (heartbeat only).
    fn heartbeats_per_s(&self) -> Option<f64> {
        None
    }

    /// The node's own status report (heartbeat only).
    fn status(&self, _node: Node) -> Option<heartbeat_api::status::StatusReport> {
        None
    }

    /// `detection_deferred` events both nodes journaled since `since`
    /// (heartbeat only; zero until the detector has deferrals).
    fn deferrals_since(&self, _since: i64) -> Option<usize> {
        None
    }

    /// Anything odd it logged that the report should count (e.g. the
    /// agent's `agent_stale`, corosync's "not scheduled"), since `since`.
    fn warnings_since(&self, _since: i64) -> Vec<String> {
        Vec::new()
    }
}

/// The last declaration (Down or Up) among `obs`.
pub fn last_declaration(obs: &[Obs]) -> Option<&Obs> {
    obs.iter()
        .rev()
        .find(|o| matches!(o.transition, Transition::Down | Transition::Up))
}

/// True when the last declaration in `obs` is Up and nothing at all
/// happened during the last `settle_ns`.
pub fn up_and_settled(obs: &[Obs], settle_ns: i64) -> bool {
    let Some(last) = last_declaration(obs) else {
        return false;
    };
    let newest = obs.last().map_or(0, |o| o.wall_ns);
    last.transition == Transition::Up && wall_ns() - newest > settle_ns
}

/// Reads the lines appended to a file since the last call.
pub struct FileTail {
    path: PathBuf,
    offset: u64,
    partial: String,
}

impl FileTail {
    /// Tails `path` from its current end (or from the start if it does not
    /// exist yet).
    pub fn new(path: &Path) -> Self {
        let offset = std::fs::metadata(path).map_or(0, |m| m.len());
        FileTail {
            path: path.to_owned(),
            offset,
            partial: String::new(),
        }
    }

    /// Complete new lines.
    pub fn lines(&mut self) -> Vec<String> {
        let Ok(mut f) = File::open(&self.path) else {
            return Vec::new();
        };
        let Ok(len) = f.metadata().map(|m| m.len()) else {
            return Vec::new();
        };
        if len < self.offset {
            // Truncated or replaced: start over.
            self.offset = 0;
            self.partial.clear();
        }
        if len == self.offset || f.seek(SeekFrom::Start(self.offset)).is_err() {
            return Vec::new();
        }
        let mut buf = Vec::new();
        if f.read_to_end(&mut buf).is_err() {
            return Vec::new();
        }
        self.offset += buf.len() as u64;
        self.partial.push_str(&String::from_utf8_lossy(&buf));
        let mut out = Vec::new();
        while let Some(pos) = self.partial.find('\n') {
            let line: String = self.partial.drain(..=pos).collect();
            out.push(line.trim_end().to_owned());
        }
        out
    }
}

/// A thread that reads a FIFO and appends every line, prefixed with the
/// wall time it was read (`<secs>.<nanos> line`), to a log file. The FIFO
/// is opened read-write so it never reports end-of-file when the writer
/// restarts.
pub struct FifoStamper {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FifoStamper {
    /// Creates the FIFO at `fifo` (replacing any file there) and starts
    /// stamping into `log`.
    pub fn start(fifo: &Path, log: &Path) -> anyhow::Result<Self> {
        let _ = std::fs::remove_file(fifo);
        nix::unistd::mkfifo(fifo, nix::sys::stat::Mode::from_bits_truncate(0o600))
            .with_context(|| format!("mkfifo {}", fifo.display()))?;
        let mut input = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(fifo)
            .with_context(|| format!("opening {}", fifo.display()))?;
        let mut out = File::options()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("fifo-stamper".into())
            .spawn(move || {
                let mut partial = Vec::new();
                let mut buf = [0u8; 4096];
                while !flag.load(Ordering::Relaxed) {
                    let mut pfd = libc::pollfd {
                        fd: input.as_raw_fd(),
                        events: libc::POLLIN,
                        revents: 0,
                    };
                    // SAFETY: one valid pollfd for the duration of the call.
                    let rc = unsafe { libc::poll(&raw mut pfd, 1, 100) };
                    if rc <= 0 {
                        continue;
                    }
                    let now = wall_ns();
                    let Ok(n) = input.read(&mut buf) else {
                        continue;
                    };
                    partial.extend_from_slice(&buf[..n]);
                    while let Some(pos) = partial.iter().position(|b| *b == b'\n') {
                        let line: Vec<u8> = partial.drain(..=pos).collect();
                        let text = String::from_utf8_lossy(&line);
                        let _ = writeln!(
                            out,
                            "{} {}",
                            super::parse::format_stamp(now),
                            text.trim_end()
                        );
                    }
                }
            })
            .context("spawning FIFO reader")?;
        Ok(FifoStamper {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for FifoStamper {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// utime + stime of a process (all its threads), in clock ticks.
pub fn cpu_ticks(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces; fields resume after the last ')'.
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime and stime are fields 14 and 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Run time of all threads of a process in ns (`/proc/PID/task/*/schedstat`).
pub fn cpu_ns(pid: i32) -> Option<u64> {
    let dir = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut sum = 0u64;
    for entry in dir.flatten() {
        let s = std::fs::read_to_string(entry.path().join("schedstat")).unwrap_or_default();
        sum += s
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
    }
    Some(sum)
}

/// Clock ticks per second for /proc times.
pub fn ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as u64 } else { 100 }
}

/// Sends `sig` to a pid read from a pid file (keepalived's VRRP child).
pub fn signal_pid(pid: i32, sig: Signal) -> anyhow::Result<()> {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig)
        .with_context(|| format!("sending {sig} to {pid}"))
}

/// Reads a pid file, waiting up to `timeout` for it to appear.
pub fn read_pid_file(path: &Path, timeout: Duration) -> Option<i32> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(pid) = std::fs::read_to_string(path)
            .ok()
            .and_then(|s| s.trim().parse().ok())
        {
            return Some(pid);
        }
        if std::time::Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// SIGKILLs a guarded child and waits for it; returns the wall time just
/// before the signal.
pub fn kill_guard(guard: &mut ChildGuard) -> anyhow::Result<i64> {
    let t = wall_ns();
    guard.signal(Signal::SIGKILL).context("SIGKILL")?;
    let _ = guard.wait_timeout(Duration::from_secs(2));
    Ok(t)
}

/// Starts `args` in `ns` with stdout and stderr appended to `log`, in a
/// process group of its own: some tools signal their whole group when they
/// stop (stress-ng does), which must not reach the bench.
pub fn spawn_logged(
    topo: &Topology,
    side: Side,
    args: &[&str],
    log: &Path,
) -> anyhow::Result<ChildGuard> {
    let out = File::options()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening {}", log.display()))?;
    let mut cmd = topo.command(side, args)?;
    cmd.stdin(std::process::Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .process_group(0);
    Ok(topo.netns(side).spawn(&mut cmd)?)
}

/// Fails unless `guard` is still running a moment after start, with the
/// tail of `log` as the reason.
pub fn check_started(guard: &mut ChildGuard, log: &Path, what: &str) -> anyhow::Result<()> {
    if let Ok(Some(status)) = guard.wait_timeout(Duration::from_millis(300)) {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(3).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        anyhow::bail!("{what} exited at start ({status}): {}", tail.join(" | "));
    }
    Ok(())
}

/// The A and B instances of a system that runs one child process per node:
/// the process-control half of [`System`] that bfdd, corosync and the
/// heartbeat agent share (keepalived signals its VRRP child instead).
pub trait ChildPair {
    /// What the process is called in errors ("bfdd", "agent", ...).
    const WHAT: &'static str;
    fn guard(&mut self, node: Node) -> &mut Option<ChildGuard>;
    fn guard_ref(&self, node: Node) -> &Option<ChildGuard>;

    /// Stops both instances, each given `grace` to exit.
    fn shutdown_both(&mut self, grace: Duration) {
        for node in [Node::A, Node::B] {
            if let Some(mut g) = self.guard(node).take() {
                let _ = g.shutdown(grace);
            }
        }
    }

    /// SIGSTOP of A; the wall time just before the signal.
    fn sigstop_a(&mut self) -> anyhow::Result<i64> {
        let g = self
            .guard(Node::A)
            .as_mut()
            .with_context(|| format!("{} A is not running", Self::WHAT))?;
        let t = wall_ns();
        g.signal(Signal::SIGSTOP)?;
        Ok(t)
    }

    /// SIGCONT of A.
    fn sigcont_a(&mut self) -> anyhow::Result<()> {
        let g = self
            .guard(Node::A)
            .as_mut()
            .with_context(|| format!("{} A is not running", Self::WHAT))?;
        g.signal(Signal::SIGCONT)?;
        Ok(())
    }

    /// SIGKILL of A; the wall time just before the signal.
    fn sigkill_a(&mut self) -> anyhow::Result<i64> {
        let mut g = self
            .guard(Node::A)
            .take()
            .with_context(|| format!("{} A is not running", Self::WHAT))?;
        kill_guard(&mut g)
    }

    /// Pids of the running instances.
    fn child_pids(&self) -> Vec<i32> {
        [Node::A, Node::B]
            .iter()
            .filter_map(|&n| self.guard_ref(n).as_ref().map(|g| g.pid() as i32))
            .collect()
    }
}

/// B's record of the gaps between valid packets from A (cumulative since
/// the receiver started).
#[derive(Clone, Debug, Default)]
pub struct ReceiverGaps {
    /// Largest gap so far and the monotonic time it ended.
    pub max_ns: i64,
    pub max_at_mono_ns: u64,
    /// Log2 histogram: bucket i counts gaps in [2^i, 2^(i+1)) ns.
    pub hist: Vec<u64>,
}

impl ReceiverGaps {
    /// The largest gap between `before` and `self` (a later snapshot):
    /// exact when it set a new record, else the upper bound of the highest
    /// log2 bucket that grew (at most twice the real gap).
    pub fn window_max_ns(&self, before: &ReceiverGaps) -> Option<i64> {
        if self.max_at_mono_ns != before.max_at_mono_ns && self.max_ns > before.max_ns {
            return Some(self.max_ns);
        }
        let grew = (0..self.hist.len())
            .rev()
            .find(|&i| self.hist[i] > before.hist.get(i).copied().unwrap_or(0))?;
        Some(1i64 << (grew + 1).min(62))
    }
}

#[cfg(test)]
mod gap_tests {
    use super::ReceiverGaps;

    fn snap(max_ns: i64, at: u64, hist: &[(usize, u64)]) -> ReceiverGaps {
        let mut h = vec![0; 32];
        for &(i, c) in hist {
            h[i] = c;
        }
        ReceiverGaps {
            max_ns,
            max_at_mono_ns: at,
            hist: h,
        }
    }

    #[test]
    fn window_max_is_exact_on_a_new_record_else_a_bucket_bound() {
        let before = snap(5_000_000, 10, &[(19, 100), (22, 1)]);
        // New record during the window: exact.
        let after = snap(9_000_000, 20, &[(19, 200), (22, 1), (23, 1)]);
        assert_eq!(after.window_max_ns(&before), Some(9_000_000));
        // No new record: the highest bucket that grew, as its upper bound.
        let after = snap(5_000_000, 10, &[(19, 300), (20, 2), (22, 1)]);
        assert_eq!(after.window_max_ns(&before), Some(1 << 21));
        // Nothing arrived at all.
        assert_eq!(before.window_max_ns(&before), None);
    }
}
