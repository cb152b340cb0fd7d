//! The watchdog self-fence (issue #9) on real agents in namespaces. This
//! kernel has no softdog (and a real watchdog would reset the test
//! machine), so the device is a stand-in: a regular file whose size grows
//! with every feed, or a FIFO read by the test. The agent warns that it
//! cannot set the timeout there and feeds it all the same.
//!
//! - a quorate owner and idle members are fed periodically, and a clean
//!   SIGTERM ends with the magic close 'V';
//! - on a 2|1 partition the minority node that owned the package stops
//!   feeding for longer than the timeout (a real watchdog would reset
//!   it) while its package is held without quorum, and feeds again once
//!   the package is stopped; the majority keeps feeding;
//! - a stuck runtime stops the feeding too.
#![allow(
    unused_crate_dependencies,
    reason = "an integration test links every dependency of its package"
)]

mod support;

use std::{
    fs,
    io::Read as _,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use heartbeat_tests::Signal;
use support::{Cluster, StatusReport, Timing};

/// Semantics, not speed: tolerant of a busy machine.
const RELAXED: Timing = Timing {
    interval: "5ms",
    node_timeout: "100ms",
    agent_timeout: "1s",
};

const WAIT: Duration = Duration::from_secs(20);
/// `watchdog.timeout`: fed every 250 ms.
const TIMEOUT: Duration = Duration::from_secs(1);

const VIP: &str = "10.210.0.100";

/// A service script; `stop` takes 4 s while `slowstop` exists.
fn write_script(dir: &Path) -> PathBuf {
    let script = dir.join("svc.sh");
    fs::write(
        &script,
        format!(
            "#!/bin/sh\n\
             d={dir}\n\
             case \"$1\" in\n\
               start) touch \"$d/running.$HEARTBEAT_NODE\" ;;\n\
               stop) [ -e \"$d/slowstop\" ] && sleep 4; rm -f \"$d/running.$HEARTBEAT_NODE\" ;;\n\
               monitor) [ -e \"$d/running.$HEARTBEAT_NODE\" ] ;;\n\
             esac\n",
            dir = dir.display(),
        ),
    )
    .unwrap();
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
    script
}

/// A package `web` (alpha first) and `[watchdog]` on `DIR/wd-{node}`.
fn configure(c: &Cluster, package: bool) {
    let s = write_script(&c.dir.0);
    let s = s.display();
    let dir = c.dir.0.display();
    c.edit_config(|t| {
        let mut t = format!(
            "{t}\n[watchdog]\ndevice = \"{dir}/wd-{{node}}\"\ntimeout = \"{}s\"\n",
            TIMEOUT.as_secs()
        );
        if package {
            t += &format!(
                "\n[[package]]\nname = \"web\"\nnodes = [\"alpha\", \"beta\", \"gamma\"]\n\
                 addresses = [\"{VIP}/24\"]\nstart = \"{s} start\"\nstop = \"{s} stop\"\n\
                 monitor = \"{s} monitor\"\nmonitor_interval = \"50ms\"\nstop_timeout = \"20s\"\n"
            );
        }
        t
    });
}

fn device(c: &Cluster, node: &str) -> PathBuf {
    c.dir.0.join(format!("wd-{node}"))
}

/// A regular file standing in for `node`'s watchdog.
fn file_device(c: &Cluster, node: &str) -> PathBuf {
    let p = device(c, node);
    fs::write(&p, b"").unwrap();
    p
}

/// Records when a file grew (each growth is a feed), from a thread.
struct Sampler {
    grew: Arc<Mutex<Vec<Instant>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sampler {
    fn new(path: PathBuf) -> Self {
        let grew = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (grew, stop) = (grew.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut last = 0;
                while !stop.load(Ordering::Relaxed) {
                    let len = fs::metadata(&path).map_or(0, |m| m.len());
                    if len > last {
                        grew.lock().unwrap().push(Instant::now());
                        last = len;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            })
        };
        Self {
            grew,
            stop,
            thread: Some(thread),
        }
    }

    fn feeds_since(&self, t: Instant) -> usize {
        self.grew
            .lock()
            .unwrap()
            .iter()
            .filter(|&&g| g >= t)
            .count()
    }

    /// The longest time without a feed between `from` and `to` (both ends
    /// count as feeds).
    fn longest_gap(&self, from: Instant, to: Instant) -> Duration {
        let mut times: Vec<Instant> = self
            .grew
            .lock()
            .unwrap()
            .iter()
            .copied()
            .filter(|&g| g > from && g < to)
            .collect();
        times.insert(0, from);
        times.push(to);
        times
            .windows(2)
            .map(|w| w[1] - w[0])
            .max()
            .unwrap_or_default()
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A FIFO standing in for `node`'s watchdog, read to its end (the agent's
/// exit) by a thread.
struct FifoDevice {
    path: PathBuf,
    reader: Option<std::thread::JoinHandle<Vec<u8>>>,
}

impl FifoDevice {
    fn new(c: &Cluster, node: &str) -> Self {
        let path = device(c, node);
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        // The open blocks until the agent opens its end; a reader blocked
        // in open counts as a reader, so the agent's non-blocking open
        // succeeds.
        let p = path.clone();
        let reader = std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Ok(mut f) = fs::File::open(&p) {
                let _ = f.read_to_end(&mut bytes);
            }
            bytes
        });
        Self {
            path,
            reader: Some(reader),
        }
    }

    /// Everything the agent wrote (after it closed its end).
    fn bytes(&mut self) -> Vec<u8> {
        self.reader
            .take()
            .map(|r| r.join().unwrap())
            .unwrap_or_default()
    }
}

impl Drop for FifoDevice {
    fn drop(&mut self) {
        // Unblock a reader still waiting in open (the agent never came).
        use std::os::unix::fs::OpenOptionsExt as _;
        let _ = fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&self.path);
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

/// `text` without its ANSI colour sequences.
fn plain(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(ch) = chars.next() {
        if ch == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(ch);
        }
    }
    out
}

fn find<'a>(st: &'a StatusReport, name: &str) -> Option<&'a heartbeat_api::status::PackageStatus> {
    st.packages.iter().find(|p| p.name == name)
}

fn wait_for(what: &str, c: &Cluster, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !f() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}\n{}",
            ["alpha", "beta", "gamma"]
                .iter()
                .map(|n| format!("--- {n}:\n{}", c.log(n)))
                .collect::<String>()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `owner` runs `web` and every node in `names` agrees.
fn wait_owner(c: &Cluster, names: &[&str], owner: &str) {
    wait_for(&format!("web to run on {owner}"), c, || {
        names.iter().all(|n| {
            c.try_status(n)
                .as_ref()
                .and_then(|st| find(st, "web"))
                .is_some_and(|p| {
                    p.owner.as_deref() == Some(owner) && (*n != owner || p.local_state == "running")
                })
        })
    });
}

/// Drops everything `from` sends to the nodes in `to`.
fn cut(c: &Cluster, from: &str, to: &[&str]) -> heartbeat_tests::NftGuard {
    let i = c.index(from);
    let addrs: Vec<String> = to.iter().map(|n| support::addr(c.index(n), 0)).collect();
    heartbeat_tests::nft_egress_rule(
        &c.nodes[i].ns,
        &c.nodes[i].wires[0],
        &format!("ip daddr {{ {} }} drop", addrs.join(", ")),
    )
    .expect("nft rule")
}

#[test]
fn fed_while_healthy_and_magic_close_on_sigterm() {
    let mut c = Cluster::new(3, 1, RELAXED, true);
    configure(&c, true);
    let mut alpha = FifoDevice::new(&c, "alpha");
    let beta = Sampler::new(file_device(&c, "beta"));
    let gamma = Sampler::new(file_device(&c, "gamma"));
    c.start_all();
    wait_owner(&c, &["alpha", "beta", "gamma"], "alpha");
    // Fed every 250 ms: at least 4 feeds in 3 s (8 expected) on the idle
    // members, with no gap near the timeout.
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(3));
    let t1 = Instant::now();
    for (n, s) in [("beta", &beta), ("gamma", &gamma)] {
        assert!(s.feeds_since(t0) >= 4, "{n}: {} feeds", s.feeds_since(t0));
        let gap = s.longest_gap(t0, t1);
        assert!(gap < TIMEOUT, "{n}: {gap:?} without a feed");
    }
    assert!(c.log("alpha").contains("watchdog self-fence armed"));
    // Metrics: armed, not withholding, feeds counted.
    let body = support::http_get(&c.nodes[c.index("beta")].ns, "127.0.0.1:9465", "/metrics");
    assert!(body.contains("heartbeat_watchdog_armed 1"), "{body}");
    assert!(body.contains("heartbeat_watchdog_withholding 0"), "{body}");
    let feeds: u64 = body
        .lines()
        .find_map(|l| l.strip_prefix("heartbeat_watchdog_feeds_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no feeds counter: {body}"));
    assert!(feeds >= 4, "{feeds} feeds: {body}");
    // The owner (a FIFO): fed, then the magic close last on SIGTERM.
    c.agent("alpha").signal(Signal::SIGTERM).unwrap();
    let status = c.agent("alpha").wait_timeout(WAIT).unwrap();
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}\n{}",
        c.log("alpha")
    );
    let bytes = alpha.bytes();
    let feeds = bytes.iter().filter(|&&b| b == b'.').count();
    assert!(feeds >= 8, "alpha fed {feeds} times: {bytes:?}");
    assert_eq!(bytes.last(), Some(&b'V'), "the magic close comes last");
    assert_eq!(bytes.iter().filter(|&&b| b == b'V').count(), 1);
    assert!(c.log("alpha").contains("watchdog disarmed (magic close)"));
    // A member without a package (a regular file) closes the same way.
    c.agent("beta").signal(Signal::SIGTERM).unwrap();
    let status = c.agent("beta").wait_timeout(WAIT).unwrap();
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    let bytes = fs::read(device(&c, "beta")).unwrap();
    assert_eq!(bytes.last(), Some(&b'V'), "{bytes:?}");
}

#[test]
fn minority_owner_stops_feeding_until_its_package_is_stopped() {
    let mut c = Cluster::new(3, 1, RELAXED, false);
    configure(&c, true);
    let alpha = Sampler::new(file_device(&c, "alpha"));
    let beta = Sampler::new(file_device(&c, "beta"));
    file_device(&c, "gamma");
    c.start_all();
    wait_owner(&c, &["alpha", "beta", "gamma"], "alpha");
    std::thread::sleep(Duration::from_secs(1));
    // alpha's stop now takes 4 s: it holds web without quorum that long.
    fs::write(c.dir.0.join("slowstop"), b"").unwrap();
    let split_at = Instant::now();
    let _guards: Vec<_> = [
        cut(&c, "alpha", &["beta", "gamma"]),
        cut(&c, "beta", &["alpha"]),
        cut(&c, "gamma", &["alpha"]),
    ]
    .into();
    wait_owner(&c, &["beta", "gamma"], "beta");
    wait_for("alpha to stop web", &c, || {
        c.try_status("alpha")
            .is_some_and(|st| find(&st, "web").is_some_and(|p| p.local_state == "stopped"))
    });
    let stopped_at = Instant::now();
    // Fed again once nothing is held here.
    wait_for("alpha to feed again", &c, || {
        alpha.feeds_since(stopped_at) >= 2
    });
    let resumed_at = Instant::now();
    // While it held web without quorum, alpha went longer than the timeout
    // without a feed: a real watchdog would have reset it.
    let gap = alpha.longest_gap(split_at, stopped_at);
    eprintln!(
        "alpha: no feed for {gap:?}; split to stopped {:?}, fed again {:?} after",
        stopped_at - split_at,
        resumed_at - stopped_at
    );
    assert!(
        gap > TIMEOUT * 2,
        "alpha's longest gap after the split: {gap:?}\n{}",
        c.log("alpha")
    );
    let log = c.log("alpha");
    assert!(
        log.contains("a package is held here without quorum"),
        "{log}"
    );
    assert!(log.contains("watchdog: feeding again"), "{log}");
    // The majority kept feeding.
    let gap = beta.longest_gap(split_at, resumed_at);
    assert!(gap < TIMEOUT, "beta: {gap:?} without a feed");
}

#[test]
fn stuck_runtime_stops_feeding() {
    let mut c = Cluster::new(2, 1, RELAXED, false);
    configure(&c, false);
    let alpha = Sampler::new(file_device(&c, "alpha"));
    let _beta = file_device(&c, "beta");
    // alpha's runtime blocks for 5 s once it has run 3 s.
    c.start_prefixed("alpha", &["env", "HEARTBEAT_TEST_STALL=3000:5000"]);
    c.start("beta");
    let started = Instant::now();
    wait_for("alpha's stall", &c, || {
        c.log("alpha").contains("HEARTBEAT_TEST_STALL: blocking")
    });
    wait_for("alpha's stall to end", &c, || {
        started.elapsed() > Duration::from_secs(10)
    });
    let gap = alpha.longest_gap(started + Duration::from_secs(2), Instant::now());
    // The runtime grace is 2 s: about 3 s without a feed.
    eprintln!("alpha: no feed for {gap:?} during a 5 s stall");
    assert!(gap > TIMEOUT * 2, "{gap:?}\n{}", c.log("alpha"));
    assert!(c.log("alpha").contains("the agent's runtime is stuck"));
    wait_for("alpha to feed again", &c, || {
        alpha.feeds_since(started + Duration::from_secs(9)) >= 2
    });
}

/// An announced restart closes the device without the magic close (it
/// stays armed) and the next agent feeds it again.
#[test]
fn announced_restart_leaves_it_armed_and_the_next_agent_feeds() {
    let mut c = Cluster::new(2, 1, RELAXED, false);
    configure(&c, false);
    let beta = Sampler::new(file_device(&c, "beta"));
    file_device(&c, "alpha");
    c.start_all();
    let t0 = Instant::now();
    wait_for("beta to be fed", &c, || beta.feeds_since(t0) >= 4);
    // A reload cannot change the watchdog; a restart does.
    c.edit_config(|t| {
        t.replace(
            "wd-{node}\"\ntimeout = \"1s\"",
            "wd-{node}\"\ntimeout = \"2s\"",
        )
    });
    let out = c.cli("beta", &["reload"]);
    assert!(!out.status.success(), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("`watchdog (the watchdog self-fence"), "{err}");
    let out = c.cli("beta", &["restart"]);
    assert!(out.status.success(), "{out:?}");
    let status = c.agent("beta").wait_timeout(WAIT).unwrap();
    assert_eq!(status.and_then(|s| s.code()), Some(75), "{}", c.log("beta"));
    let bytes = fs::read(device(&c, "beta")).unwrap();
    assert!(
        !bytes.contains(&b'V'),
        "no magic close at a restart: {bytes:?}"
    );
    assert!(c.log("beta").contains("watchdog closed armed"));
    let i = c.index("beta");
    c.nodes[i].agent = None;
    c.start("beta");
    let t1 = Instant::now();
    wait_for("the next agent to feed", &c, || beta.feeds_since(t1) >= 4);
    let log = plain(&c.log("beta"));
    assert!(log.contains("timeout_s=2"), "{log}");
}
