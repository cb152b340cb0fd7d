//! The optional watchdog self-fence (issue #9, like sbd's watchdog-only
//! mode): the agent feeds a Linux watchdog device (`[watchdog] device`)
//! from a dedicated thread while its node is healthy, and stops feeding when
//! it is not; the kernel's watchdog driver then resets the machine within
//! `[watchdog] timeout`. It fences what the kernel fence (XDP and tc on the
//! package addresses) cannot: a service whose work is not reached through
//! its addresses (a batch job, a writer to shared storage, a client of
//! some other server).
//!
//! Healthy ([`decide`]): the agent's runtime is alive (the liveness stamp
//! the sender checks, [`Shared::main_alive_ns`], is fresher than
//! `max(agent_timeout, 2s)`) AND (the node holds no package, i.e. none is
//! starting, running, stopping or failed to stop here, OR it is a member
//! of a quorate view). So a node that holds a package and loses quorum (a
//! partition's minority, a node whose stop failed and that left the
//! cluster) or whose agent hangs stops feeding; a SIGKILLed agent stops
//! too (the device is closed without the magic character, which leaves
//! the watchdog armed). When a node without quorum stops its packages
//! before the timeout runs out (their stop actions succeed), it holds
//! nothing any more and feeds again: the node is not reset.
//!
//! It is fed every `timeout / 4`, from a SCHED_FIFO thread, so a healthy
//! node has three feeds of slack against a late thread. While the agent
//! starts (until its tasks run: the stop before join may run the packages'
//! stop actions) and while it stops, it is fed unconditionally for at most
//! [`wind_down`] (every package's `stop_timeout`, the hand-over, 5 s); a start or stop
//! that hangs longer is reset. A start that fails disarms the device again
//! (magic close), unless an earlier agent's pins were found (its packages
//! may still run here: the device stays armed). The timeout is set with
//! `WDIOC_SETTIMEOUT`; on a FIFO or regular file (tests) that ioctl fails
//! and the agent warns and goes on: the bytes written show the feeding.
//!
//! Timing argument. The node stops feeding at most one feed interval after
//! it became unhealthy (`timeout / 4`, plus the runtime grace when the
//! runtime hangs) and the watchdog resets it `timeout` after the last
//! feed: a node that lost quorum while holding a package is down within
//! `timeout + timeout / 4` of losing it, on the watchdog's own clock
//! (hardware watchdogs have their own oscillator; softdog uses the
//! kernel's timers, so a wedged kernel is not reset by softdog).
//!
//! Its limits, stated honestly:
//! - The other nodes do not wait for this: they start a package after the
//!   old owner's lease ran out (milliseconds), while the watchdog works in
//!   whole seconds. For a service reached only through its addresses the
//!   kernel fence already holds; for any other service two copies may run
//!   for up to `timeout + timeout / 4` after a partition, unless its start
//!   action on the new owner waits that long first (e.g. a `sleep` in the
//!   start script of such a package). The watchdog bounds the overlap; it
//!   does not prevent it.
//! - A clean stop (SIGTERM or SIGINT) keeps feeding while the agent stops
//!   its packages (at most [`wind_down`]), then writes the magic close
//!   character 'V', so the device does not fire; it does so even when a
//!   package's stop failed on the way out (the node has left the cluster,
//!   as without a watchdog). A driver built with `nowayout` ignores the
//!   magic close and resets the node after every stop: do not use
//!   nowayout with this agent.
//! - It trusts quorum: with `quorum.two_node` both halves of a split stay
//!   quorate, so neither stops feeding for the split itself (the serial
//!   survivor rule, or the fence command, decides the packages there); a
//!   stop that then fails still escalates (the node leaves the cluster,
//!   holds a package without quorum, and is reset).
//! - A halted node (`node halt`, passive) and a node that is not a member of
//!   a quorate view are fed as long as they hold no package.
//! - An announced restart (`heartbeat-agent restart`) closes the device
//!   WITHOUT the magic character: the watchdog stays armed, and the next
//!   agent must open it within `timeout` of the last feed (it opens it
//!   early in its start, before loading the program; the open and the
//!   timeout setting each count as a feed with the Linux watchdog core),
//!   or the node is reset. That is deliberate: if the next agent never comes, the peers
//!   take the node's packages when `cluster.restart_window` runs out, and
//!   this node must then be down. Choose `timeout` longer than a restart
//!   takes and about `cluster.restart_window` (both default to 5 s).
//! - A configuration reload refuses a changed `[watchdog]` (a restart
//!   applies it).

use std::{
    fs::File,
    io::{self, Write as _},
    os::{fd::AsRawFd as _, unix::fs::OpenOptionsExt as _},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use prometheus_client::{collector::Collector, encoding::DescriptorEncoder};
use thiserror::Error;
use tokio::sync::watch;

use crate::{
    clock, cluster::ClusterView, config::ClusterConfig, packages::task::PackagesView,
    sender::Shared,
};

/// `WDIOC_SETTIMEOUT`: `_IOWR('W', 6, int)` (linux/watchdog.h).
const WDIOC_SETTIMEOUT: libc::c_ulong = 0xC004_5706;
/// What a feed writes (any byte but the magic 'V').
const FEED_BYTE: u8 = b'.';
/// The magic close character: the driver disarms on close after it.
const MAGIC_CLOSE: u8 = b'V';
/// The shortest runtime grace (as the sender's): the liveness task checks
/// in every 100 ms.
const MIN_RUNTIME_GRACE: Duration = Duration::from_secs(2);
/// SCHED_FIFO priority of the feeding thread: above the runtime's
/// (`sender::RUNTIME_RT_PRIORITY`), below the sender's, so that a busy or
/// spinning runtime cannot starve it (a stuck runtime is seen by its
/// liveness stamp, not by starving the feeder), as sbd runs real-time.
const RT_PRIORITY: i32 = 55;
/// Slack on top of the packages' stop timeouts while the agent starts or
/// stops (loading the program, the tasks' own wind-down).
pub const STOP_SLACK: Duration = Duration::from_secs(5);

/// How long the agent's start or stop may feed the watchdog
/// unconditionally: every package's `stop_timeout` (stop before join, stop
/// at exit), the clean stop's hand-over (the longest `stop_timeout` and a
/// second), plus [`STOP_SLACK`].
pub fn wind_down(cfg: &ClusterConfig) -> Duration {
    cfg.packages.iter().map(|p| p.spec.timeouts.stop).fold(
        STOP_SLACK.saturating_add(crate::packages::task::hand_over_bound(cfg)),
        Duration::saturating_add,
    )
}

/// Why the watchdog could not start.
#[derive(Debug, Error)]
pub enum WatchdogError {
    #[error("cannot open the watchdog device {}: {error}", device.display())]
    Open { device: PathBuf, error: io::Error },
    #[error("cannot start the watchdog thread: {0}")]
    Spawn(#[source] io::Error),
}

/// What the feeding depends on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Facts {
    /// The agent's runtime checked in within the grace.
    pub runtime_alive: bool,
    /// A package is starting, running, stopping or failed to stop here.
    pub holds_package: bool,
    /// This node is a member of a quorate view.
    pub quorate: bool,
}

/// Feed, or why not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Feed,
    /// The runtime is stuck.
    RuntimeStuck,
    /// A package is held here without quorum.
    HoldsWithoutQuorum,
}

impl Decision {
    fn as_str(self) -> &'static str {
        match self {
            Self::Feed => "healthy",
            Self::RuntimeStuck => "the agent's runtime is stuck",
            Self::HoldsWithoutQuorum => "a package is held here without quorum",
        }
    }
}

/// The pure rule (see the module doc).
pub fn decide(f: Facts) -> Decision {
    if !f.runtime_alive {
        Decision::RuntimeStuck
    } else if f.holds_package && !f.quorate {
        Decision::HoldsWithoutQuorum
    } else {
        Decision::Feed
    }
}

/// Whether a package in this local state (`PackageStatus::local_state`)
/// may run here.
fn holds(local_state: &str) -> bool {
    matches!(
        local_state,
        "starting" | "running" | "stopping" | "stop_failed"
    )
}

/// Counters (atomics), for metrics.
#[derive(Debug, Default)]
pub struct WatchdogStats {
    /// The device is open and armed (it fires unless fed).
    pub armed: AtomicBool,
    /// Feeds written.
    pub feeds: AtomicU64,
    /// Feeds that failed to write.
    pub feed_errors: AtomicU64,
    /// Feeding is withheld now (the node is not healthy).
    pub withholding: AtomicBool,
}

/// What the thread reads.
pub struct Inputs {
    pub shared: Arc<Shared>,
    pub cluster: watch::Receiver<ClusterView>,
    /// None: no package is configured.
    pub packages: Option<watch::Receiver<PackagesView>>,
    /// `cluster.agent_timeout` (the runtime grace is at least 2 s).
    pub agent_timeout: Duration,
}

impl Inputs {
    fn facts(&self, now_ns: u64) -> Facts {
        let grace = self.agent_timeout.max(MIN_RUNTIME_GRACE);
        let alive_ns = self.shared.main_alive_ns.load(Ordering::Relaxed);
        let runtime_alive = now_ns.saturating_sub(alive_ns) < grace.as_nanos() as u64;
        let holds_package = self
            .packages
            .as_ref()
            .is_some_and(|p| p.borrow().packages.iter().any(|s| holds(&s.local_state)));
        let quorate = self
            .cluster
            .borrow()
            .installed
            .as_ref()
            .is_some_and(|v| v.quorate);
        Facts {
            runtime_alive,
            holds_package,
            quorate,
        }
    }
}

/// State shared with the thread.
#[derive(Default)]
struct Control {
    stop: AtomicBool,
    /// Non-zero: starting or stopping; feed unconditionally until this
    /// CLOCK_MONOTONIC ns, then not at all.
    unconditional_until_ns: AtomicU64,
    /// What healthy is read from, once the agent's tasks run.
    inputs: Mutex<Option<Inputs>>,
}

/// The running watchdog. Dropped without [`Watchdog::close_clean`], it
/// leaves the device armed (the next agent must feed it in time), except
/// when the agent failed to start and asked for a disarm then.
pub struct Watchdog {
    device: PathBuf,
    file: Arc<File>,
    control: Arc<Control>,
    stats: Arc<WatchdogStats>,
    thread: Option<JoinHandle<()>>,
    /// Before [`Watchdog::attach`]: disarm on drop (a start that failed
    /// and left nothing running).
    disarm_unattached: bool,
    attached: bool,
}

impl Watchdog {
    /// Opens `device`, sets its timeout (warns when it cannot: not a
    /// watchdog) and feeds it every `timeout / 4`: unconditionally for at
    /// most `startup` (the agent is starting: its stop-before-join may run
    /// scripts), then by the rule once [`Watchdog::attach`] gave it its
    /// inputs. `disarm_on_failure`: dropped before `attach`, write the
    /// magic close (no earlier agent may have left packages running).
    pub fn start(
        device: &Path,
        timeout: Duration,
        startup: Duration,
        disarm_on_failure: bool,
    ) -> Result<Self, WatchdogError> {
        let open_error = |error| WatchdogError::Open {
            device: device.to_owned(),
            error,
        };
        // Non-blocking: a FIFO without a reader fails at once (ENXIO)
        // instead of blocking the agent, and a feed never blocks.
        let file = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
            .open(device)
            .map_err(|e| {
                if e.raw_os_error() == Some(libc::ENXIO) {
                    open_error(io::Error::other(
                        "it is a FIFO and nothing reads it (a stand-in for tests)",
                    ))
                } else {
                    open_error(e)
                }
            })?;
        let secs = libc::c_int::try_from(timeout.as_secs()).unwrap_or(libc::c_int::MAX);
        let mut set = secs;
        // SAFETY: WDIOC_SETTIMEOUT reads and writes one int through the
        // pointer, which points at a live local; on a file that is not a
        // watchdog the kernel refuses it (ENOTTY) without touching it.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), WDIOC_SETTIMEOUT, &mut set) };
        if rc != 0 {
            tracing::warn!(
                device = %device.display(),
                error = %io::Error::last_os_error(),
                "watchdog: cannot set the timeout (not a watchdog device?); feeding it anyway"
            );
        } else if set != secs {
            tracing::warn!(
                device = %device.display(),
                asked_s = secs,
                set_s = set,
                "watchdog: the driver set another timeout than asked"
            );
        }
        let file = Arc::new(file);
        let control = Arc::new(Control::default());
        control.unconditional_until_ns.store(
            clock::mono_ns()
                .saturating_add(startup.as_nanos() as u64)
                .max(1),
            Ordering::Relaxed,
        );
        let stats = Arc::new(WatchdogStats::default());
        stats.armed.store(true, Ordering::Relaxed);
        let every = (timeout / 4).max(Duration::from_millis(100));
        let thread = {
            let (file, control, stats) = (file.clone(), control.clone(), stats.clone());
            let name = device.to_owned();
            std::thread::Builder::new()
                .name("hb-watchdog".into())
                .spawn(move || feed_loop(&name, &file, &control, &stats, every))
                .map_err(WatchdogError::Spawn)?
        };
        tracing::info!(
            device = %device.display(),
            timeout_s = timeout.as_secs(),
            every = ?every,
            "watchdog self-fence armed: fed while the node is healthy"
        );
        Ok(Self {
            device: device.to_owned(),
            file,
            control,
            stats,
            thread: Some(thread),
            disarm_unattached: disarm_on_failure,
            attached: false,
        })
    }

    /// The agent's tasks run: feed by the rule from now on.
    pub fn attach(&mut self, inputs: Inputs) {
        if let Ok(mut i) = self.control.inputs.lock() {
            *i = Some(inputs);
        }
        self.control
            .unconditional_until_ns
            .store(0, Ordering::Relaxed);
        self.attached = true;
        self.wake();
    }

    /// Its counters.
    pub fn stats(&self) -> Arc<WatchdogStats> {
        self.stats.clone()
    }

    /// A stop (clean or for a restart) begins: feed unconditionally for at
    /// most `bound` while the agent winds down.
    pub fn stopping(&self, bound: Duration) {
        let until = clock::mono_ns().saturating_add(bound.as_nanos() as u64);
        self.control
            .unconditional_until_ns
            .store(until.max(1), Ordering::Relaxed);
        self.wake();
    }

    /// A clean stop: stops feeding and writes the magic close character,
    /// so that the device does not fire when it is closed.
    pub fn close_clean(mut self) {
        self.join();
        self.magic_close();
    }

    fn magic_close(&self) {
        match (&*self.file).write_all(&[MAGIC_CLOSE]) {
            Ok(_) => {
                self.stats.armed.store(false, Ordering::Relaxed);
                tracing::info!(device = %self.device.display(), "watchdog disarmed (magic close)");
            }
            Err(e) => tracing::error!(
                device = %self.device.display(),
                error = %e,
                "watchdog: cannot write the magic close; the node will be reset"
            ),
        }
    }

    fn wake(&self) {
        if let Some(t) = &self.thread {
            t.thread().unpark();
        }
    }

    fn join(&mut self) {
        self.control.stop.store(true, Ordering::Relaxed);
        self.wake();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    /// A collector of its metrics, for the metrics registry.
    pub fn collector(&self) -> Box<dyn Collector> {
        Box::new(WatchdogCollector(self.stats.clone()))
    }
}

impl Drop for Watchdog {
    /// Stops feeding and closes the device without the magic character
    /// (it stays armed), or with it when a start failed and asked so.
    fn drop(&mut self) {
        if self.thread.is_none() {
            return;
        }
        self.join();
        if !self.attached && self.disarm_unattached {
            tracing::warn!(device = %self.device.display(), "the agent did not start: disarming the watchdog");
            self.magic_close();
        } else {
            tracing::warn!(
                device = %self.device.display(),
                "watchdog closed armed: the node is reset unless the next agent feeds it in time"
            );
        }
    }
}

/// The feeding thread.
fn feed_loop(
    device: &Path,
    file: &File,
    control: &Control,
    stats: &WatchdogStats,
    every: Duration,
) {
    if let Err(e) = crate::sender::set_thread_fifo(RT_PRIORITY) {
        tracing::warn!(error = %e, "watchdog: cannot run the feeding thread real-time; under CPU load a feed may be late");
    }
    let mut last = Decision::Feed;
    while !control.stop.load(Ordering::Relaxed) {
        let now = clock::mono_ns();
        let until = control.unconditional_until_ns.load(Ordering::Relaxed);
        let decision = if until != 0 {
            if now < until {
                Decision::Feed
            } else {
                Decision::RuntimeStuck
            }
        } else {
            match control
                .inputs
                .lock()
                .ok()
                .as_deref()
                .and_then(Option::as_ref)
            {
                Some(i) => decide(i.facts(now)),
                None => Decision::RuntimeStuck,
            }
        };
        if decision != last {
            if decision == Decision::Feed {
                tracing::info!(device = %device.display(), "watchdog: feeding again (the node is healthy)");
            } else if until != 0 {
                tracing::error!(device = %device.display(), "watchdog: the agent's start or stop takes too long; no longer feeding (the node will be reset)");
            } else {
                tracing::error!(
                    device = %device.display(),
                    why = decision.as_str(),
                    "watchdog: no longer feeding; the node will be reset unless it becomes healthy within the timeout"
                );
            }
            last = decision;
        }
        stats
            .withholding
            .store(decision != Decision::Feed, Ordering::Relaxed);
        if decision == Decision::Feed {
            match (&*file).write_all(&[FEED_BYTE]) {
                Ok(_) => {
                    stats.feeds.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    if stats.feed_errors.fetch_add(1, Ordering::Relaxed) == 0 {
                        tracing::error!(device = %device.display(), error = %e, "watchdog: cannot feed");
                    }
                }
            }
        }
        std::thread::park_timeout(every);
    }
}

/// `heartbeat_watchdog_*`.
#[derive(Debug)]
struct WatchdogCollector(Arc<WatchdogStats>);

impl Collector for WatchdogCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = &self.0;
        crate::metrics::encode_gauges(
            &mut enc,
            &[
                (
                    "heartbeat_watchdog_armed",
                    "1 while the watchdog device is open and armed (it resets the node unless fed)",
                    i64::from(s.armed.load(Ordering::Relaxed)),
                ),
                (
                    "heartbeat_watchdog_withholding",
                    "1 while the agent withholds the feeding (the node is not healthy: self-fence under way)",
                    i64::from(s.withholding.load(Ordering::Relaxed)),
                ),
            ],
        )?;
        crate::metrics::encode_counters(
            &mut enc,
            &[
                (
                    "heartbeat_watchdog_feeds",
                    "Feeds written to the watchdog device",
                    s.feeds.load(Ordering::Relaxed),
                ),
                (
                    "heartbeat_watchdog_feed_errors",
                    "Feeds that could not be written",
                    s.feed_errors.load(Ordering::Relaxed),
                ),
            ],
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rule() {
        for runtime_alive in [false, true] {
            for holds_package in [false, true] {
                for quorate in [false, true] {
                    let d = decide(Facts {
                        runtime_alive,
                        holds_package,
                        quorate,
                    });
                    let want = if !runtime_alive {
                        Decision::RuntimeStuck
                    } else if holds_package && !quorate {
                        Decision::HoldsWithoutQuorum
                    } else {
                        Decision::Feed
                    };
                    assert_eq!(d, want, "{runtime_alive} {holds_package} {quorate}");
                }
            }
        }
        // Spelled out: the cases that matter.
        let f = |a, h, q| {
            decide(Facts {
                runtime_alive: a,
                holds_package: h,
                quorate: q,
            })
        };
        assert_eq!(
            f(true, false, false),
            Decision::Feed,
            "an idle minority node lives"
        );
        assert_eq!(f(true, true, true), Decision::Feed, "a quorate owner lives");
        assert_eq!(f(true, true, false), Decision::HoldsWithoutQuorum);
        assert_eq!(f(false, false, true), Decision::RuntimeStuck);
    }

    #[test]
    fn held_states() {
        for s in ["starting", "running", "stopping", "stop_failed"] {
            assert!(holds(s), "{s}");
        }
        for s in ["stopped", "unknown", ""] {
            assert!(!holds(s), "{s}");
        }
    }

    #[test]
    fn ioctl_number_is_iowr_w_6_int() {
        // _IOC(dir=READ|WRITE (3), type 'W', nr 6, size 4).
        let v: libc::c_ulong = (3 << 30) | (4 << 16) | (libc::c_ulong::from(b'W') << 8) | 6;
        assert_eq!(WDIOC_SETTIMEOUT, v);
    }
}
