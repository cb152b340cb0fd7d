//! The serial heartbeat line (issue #11) on real agents in namespaces: a
//! pseudo-terminal pair per node (openpty), the two masters bridged by a
//! relay thread that plays the null-modem cable (cutting the cable: the
//! relay reads both ends and delivers nothing), and injects noise (random
//! bytes, flipped bits, truncated, duplicated and replayed frames).
#![allow(
    unused_crate_dependencies,
    reason = "an integration test links every dependency of its package"
)]

mod support;

use std::{
    fs,
    os::fd::{AsFd as _, AsRawFd as _, OwnedFd},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use heartbeat_tests::{NftGuard, nft_egress_rule};
use nix::{
    errno::Errno,
    fcntl::{FcntlArg, FdFlag, OFlag, fcntl},
    pty::openpty,
    sys::termios::{SetArg, cfmakeraw, tcgetattr, tcsetattr},
};
use support::{Cluster, EventKind, LinkState, NodeState, Timing, addr, http_get};

/// Semantics, not speed: tolerant of a busy machine.
const RELAXED: Timing = Timing {
    interval: "10ms",
    node_timeout: "300ms",
    agent_timeout: "1s",
};

const AGREE: Duration = Duration::from_secs(20);

/// A pty pair; the slave is kept open (and raw) by the test so that the
/// master never reads EIO before the agent opens the slave.
struct Pty {
    master: OwnedFd,
    slave: OwnedFd,
}

impl Pty {
    /// A new pair; `link` becomes a symlink to its slave (the device the
    /// agent is configured with).
    fn new(link: &Path) -> Self {
        let p = openpty(None, None).expect("openpty");
        let mut t = tcgetattr(&p.slave).expect("tcgetattr");
        cfmakeraw(&mut t);
        tcsetattr(&p.slave, SetArg::TCSANOW, &t).expect("tcsetattr");
        // Not inherited by the agents (their copy would keep the pty alive
        // when the test makes it vanish).
        for fd in [&p.master, &p.slave] {
            fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).expect("cloexec");
        }
        let flags = fcntl(&p.master, FcntlArg::F_GETFL).expect("getfl");
        fcntl(
            &p.master,
            FcntlArg::F_SETFL(OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK),
        )
        .expect("nonblocking master");
        let slave = fs::read_link(format!("/proc/self/fd/{}", p.slave.as_raw_fd())).unwrap();
        let _ = fs::remove_file(link);
        std::os::unix::fs::symlink(&slave, link).expect("symlink");
        Self {
            master: p.master,
            slave: p.slave,
        }
    }
}

/// What the relay does to the bytes, in parts per million.
#[derive(Default)]
struct Noise {
    /// Per byte: one bit flipped.
    byte_flip_ppm: AtomicU32,
    /// Per chunk (a chunk is usually one frame): one bit flipped.
    chunk_flip_ppm: AtomicU32,
    /// Per chunk: only its first half delivered.
    truncate_ppm: AtomicU32,
    /// Per chunk: delivered twice.
    duplicate_ppm: AtomicU32,
}

struct RelayShared {
    stop: AtomicBool,
    cut: AtomicBool,
    noise: Noise,
    /// The two masters (None: that pty is gone).
    ends: [Mutex<Option<OwnedFd>>; 2],
    /// The slaves, kept open by the test while their pty exists.
    slaves: [Mutex<Option<OwnedFd>>; 2],
    /// Bytes to deliver to side i before the next chunk.
    inject: [Mutex<Vec<u8>>; 2],
    /// The last chunks read from side i (for replays).
    captured: [Mutex<Vec<Vec<u8>>>; 2],
}

/// The null-modem cable between two ptys, stopped and joined on drop.
struct Relay {
    shared: Arc<RelayShared>,
    thread: Option<JoinHandle<()>>,
}

/// xorshift64*: enough randomness for noise.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn ppm(&mut self, ppm: u32) -> bool {
        self.next() % 1_000_000 < u64::from(ppm)
    }
}

impl Relay {
    fn new(a: Pty, b: Pty) -> Self {
        let shared = Arc::new(RelayShared {
            stop: AtomicBool::new(false),
            cut: AtomicBool::new(false),
            noise: Noise::default(),
            ends: [Mutex::new(Some(a.master)), Mutex::new(Some(b.master))],
            slaves: [Mutex::new(Some(a.slave)), Mutex::new(Some(b.slave))],
            inject: [Mutex::new(Vec::new()), Mutex::new(Vec::new())],
            captured: [Mutex::new(Vec::new()), Mutex::new(Vec::new())],
        });
        let s = shared.clone();
        let thread = std::thread::spawn(move || relay(&s));
        Self {
            shared,
            thread: Some(thread),
        }
    }

    fn set_cut(&self, cut: bool) {
        self.shared.cut.store(cut, Ordering::Relaxed);
    }

    fn noise(&self) -> &Noise {
        &self.shared.noise
    }

    fn inject(&self, to: usize, bytes: &[u8]) {
        self.shared.inject[to]
            .lock()
            .unwrap()
            .extend_from_slice(bytes);
    }

    /// A chunk side `from` sent a while ago.
    fn old_chunk(&self, from: usize) -> Vec<u8> {
        self.shared.captured[from]
            .lock()
            .unwrap()
            .first()
            .cloned()
            .expect("a captured chunk")
    }

    /// Replaces side `i`'s pty (None: it is gone).
    fn set_end(&self, i: usize, pty: Option<Pty>) {
        let (m, s) = match pty {
            Some(p) => (Some(p.master), Some(p.slave)),
            None => (None, None),
        };
        *self.shared.ends[i].lock().unwrap() = m;
        *self.shared.slaves[i].lock().unwrap() = s;
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn read_end(end: &Mutex<Option<OwnedFd>>, buf: &mut [u8]) -> usize {
    let g = end.lock().unwrap();
    let Some(fd) = g.as_ref() else { return 0 };
    match nix::unistd::read(fd.as_fd(), buf) {
        Ok(n) => n,
        Err(Errno::EAGAIN | Errno::EIO | Errno::EINTR) => 0,
        Err(e) => panic!("reading a pty master: {e}"),
    }
}

fn write_end(end: &Mutex<Option<OwnedFd>>, bytes: &[u8]) {
    let g = end.lock().unwrap();
    if let Some(fd) = g.as_ref() {
        // A full pty (nobody reading) loses bytes, as a line would.
        let _ = nix::unistd::write(fd, bytes);
    }
}

fn relay(s: &RelayShared) {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ u64::from(std::process::id()));
    let mut buf = vec![0u8; 4096];
    while !s.stop.load(Ordering::Relaxed) {
        let mut idle = true;
        for from in 0..2 {
            let to = 1 - from;
            let n = read_end(&s.ends[from], &mut buf);
            if n == 0 {
                continue;
            }
            idle = false;
            let mut chunk = buf[..n].to_vec();
            {
                let mut c = s.captured[from].lock().unwrap();
                if c.len() < 64 {
                    c.push(chunk.clone());
                }
            }
            if s.cut.load(Ordering::Relaxed) {
                continue;
            }
            let pending = std::mem::take(&mut *s.inject[to].lock().unwrap());
            if !pending.is_empty() {
                write_end(&s.ends[to], &pending);
            }
            let nz = &s.noise;
            if rng.ppm(nz.chunk_flip_ppm.load(Ordering::Relaxed)) {
                let bit = (rng.next() % (8 * chunk.len() as u64)) as usize;
                chunk[bit / 8] ^= 1 << (bit % 8);
            }
            let byte_ppm = nz.byte_flip_ppm.load(Ordering::Relaxed);
            if byte_ppm > 0 {
                for b in chunk.iter_mut() {
                    if rng.ppm(byte_ppm) {
                        *b ^= 1 << (rng.next() % 8);
                    }
                }
            }
            if rng.ppm(nz.truncate_ppm.load(Ordering::Relaxed)) {
                chunk.truncate(chunk.len() / 2);
            }
            write_end(&s.ends[to], &chunk);
            if rng.ppm(nz.duplicate_ppm.load(Ordering::Relaxed)) {
                write_end(&s.ends[to], &chunk);
            }
        }
        if idle {
            std::thread::sleep(Duration::from_micros(500));
        }
    }
}

/// A two-node cluster with a serial line: (cluster, relay, device links).
fn serial_cluster(extra: &str) -> (Cluster, Relay, [PathBuf; 2]) {
    let c = Cluster::new(2, 1, RELAXED, true);
    let devs = [c.dir.0.join("alpha.tty"), c.dir.0.join("beta.tty")];
    let a = Pty::new(&devs[0]);
    let b = Pty::new(&devs[1]);
    let d = devs.clone();
    c.edit_config(|t| {
        let t = t.replacen(
            "[[node]]\nid = 2",
            &format!(
                "  [node.serial]\n  device = \"{}\"\n\n[[node]]\nid = 2",
                d[0].display()
            ),
            1,
        );
        format!(
            "{t}  [node.serial]\n  device = \"{}\"\n\n[serial]\ninterval = \"10ms\"\ntimeout = \"200ms\"\n\n[quorum]\ntwo_node = true\n{extra}",
            d[1].display()
        )
    });
    let relay = Relay::new(a, b);
    (c, relay, devs)
}

/// `name`'s serial metrics: (result → count) of frames received, and the
/// other `heartbeat_serial_*` values.
fn serial_metrics(c: &Cluster, name: &str) -> Vec<(String, u64)> {
    let body = http_get(&c.nodes[c.index(name)].ns, "127.0.0.1:9465", "/metrics");
    body.lines()
        .filter(|l| l.starts_with("heartbeat_serial_") || l.contains("link=\"serial\""))
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_owned(), v.parse::<f64>().ok()? as u64))
        })
        .collect()
}

fn metric(m: &[(String, u64)], key: &str) -> u64 {
    m.iter()
        .find(|(k, _)| k.starts_with(key))
        .map_or(0, |(_, v)| *v)
}

fn frames(m: &[(String, u64)], result: &str) -> u64 {
    metric(
        m,
        &format!("heartbeat_serial_frames_received_total{{result=\"{result}\"}}"),
    )
}

/// The serial link's state in `name`'s status for `peer`.
fn serial_state(c: &Cluster, name: &str, peer: &str) -> Option<LinkState> {
    let st = c.try_status(name)?;
    st.node(peer)?
        .links
        .iter()
        .find(|l| l.role == "serial")
        .map(|l| l.state)
}

#[track_caller]
fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Drops what `from` sends to `to` on the network (the serial line stays).
fn cut_network(c: &Cluster, from: &str, to: &str) -> NftGuard {
    let i = c.index(from);
    nft_egress_rule(
        &c.nodes[i].ns,
        &c.nodes[i].wires[0],
        &format!("ip daddr {} drop", addr(c.index(to), 0)),
    )
    .expect("nft rule")
}

/// Noise on the line is counted by reason and ignored; heartbeats get
/// through with 10 % of frames corrupted and with a 1 % byte error rate;
/// a missing device is refused naming its key; a pty that vanishes and
/// reappears is reopened.
#[test]
fn noise_is_counted_and_ignored_and_a_vanished_pty_is_reopened() {
    let (mut c, relay, devs) = serial_cluster("");

    // A missing device at start: an error naming the key.
    let real = fs::read_link(&devs[0]).unwrap();
    fs::remove_file(&devs[0]).unwrap();
    let out = c.run_once("alpha");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started without its device: {err}");
    assert!(
        err.contains("node[0].serial.device") && err.contains("alpha.tty"),
        "{err}"
    );
    std::os::unix::fs::symlink(&real, &devs[0]).unwrap();

    c.start_all();
    c.agreed(&["alpha", "beta"], &["alpha", "beta"], AGREE);
    for (n, p) in [("alpha", "beta"), ("beta", "alpha")] {
        wait_for("the serial link up", AGREE, || {
            serial_state(&c, n, p) == Some(LinkState::Up)
        });
    }
    let t0 = support::wall_ns();

    // Garbage, flipped bits, truncated and duplicated frames, replays.
    let old = relay.old_chunk(0);
    relay.inject(1, &[0x13, 0x37, 0x00, 0xff, 0xfe, 0x01, 0x02, 0x00]);
    relay.inject(1, &vec![0x55; 3000]);
    relay.inject(1, &[0]);
    relay.inject(1, &old);
    relay
        .noise()
        .chunk_flip_ppm
        .store(100_000, Ordering::Relaxed);
    relay.noise().truncate_ppm.store(20_000, Ordering::Relaxed);
    relay.noise().duplicate_ppm.store(20_000, Ordering::Relaxed);
    std::thread::sleep(Duration::from_secs(3));
    relay.noise().chunk_flip_ppm.store(0, Ordering::Relaxed);
    relay.noise().truncate_ppm.store(0, Ordering::Relaxed);
    relay.noise().duplicate_ppm.store(0, Ordering::Relaxed);
    // Then a 1 % byte error rate (about half the frames hit).
    relay.noise().byte_flip_ppm.store(10_000, Ordering::Relaxed);
    std::thread::sleep(Duration::from_secs(3));
    relay.noise().byte_flip_ppm.store(0, Ordering::Relaxed);

    let m = serial_metrics(&c, "beta");
    for r in ["garbage", "oversized", "crc", "replayed", "partial"] {
        assert!(frames(&m, r) > 0, "no {r} counted: {m:?}");
    }
    assert!(frames(&m, "accepted") > 300, "{m:?}");
    // The line never went down, the peer never left.
    for (n, p) in [("alpha", "beta"), ("beta", "alpha")] {
        let downs: Vec<_> = c
            .journal(n)
            .into_iter()
            .filter(|e| {
                e.kernel_wall_ns >= t0
                    && e.peer.as_deref() == Some(p)
                    && matches!(e.event, EventKind::LinkDown | EventKind::NodeDown)
            })
            .collect();
        assert!(downs.is_empty(), "{n}: {downs:?}");
        assert_eq!(serial_state(&c, n, p), Some(LinkState::Up));
    }

    // The pty of alpha vanishes (an adapter pulled), then comes back.
    relay.set_end(0, None);
    fs::remove_file(&devs[0]).unwrap();
    wait_for("alpha to see the serial link down", AGREE, || {
        serial_state(&c, "alpha", "beta") == Some(LinkState::Down)
    });
    let deadline = Instant::now() + AGREE;
    while !c.log("alpha").contains("device lost") {
        assert!(
            Instant::now() < deadline,
            "alpha never reported the lost device:\n{}",
            c.log("alpha")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    relay.set_end(0, Some(Pty::new(&devs[0])));
    for (n, p) in [("alpha", "beta"), ("beta", "alpha")] {
        wait_for("the serial link up again", AGREE, || {
            serial_state(&c, n, p) == Some(LinkState::Up)
        });
    }
    let m = serial_metrics(&c, "alpha");
    assert!(metric(&m, "heartbeat_serial_device_losses") >= 1, "{m:?}");
    assert_eq!(metric(&m, "heartbeat_serial_device_open"), 1, "{m:?}");
    assert!(c.log("alpha").contains("device reopened"));
    // Throughout, the network kept both in one view.
    c.agreed(&["alpha", "beta"], &["alpha", "beta"], AGREE);
}

/// Every network link cut, the cable in place: no failover, one view, and
/// one survivor agreed by the rule (beta: equal network views, higher
/// priority). Then the cable cut too: a two-node split as configured.
/// Then the cable back: one view again.
#[test]
fn the_cable_keeps_one_view_when_every_network_link_is_cut() {
    let (mut c, relay, _devs) = serial_cluster("");
    c.edit_config(|t| t.replacen("name = \"beta\"\n", "name = \"beta\"\npriority = 200\n", 1));
    c.start_all();
    let (epoch, ..) = c.agreed(&["alpha", "beta"], &["alpha", "beta"], AGREE);
    for (n, p) in [("alpha", "beta"), ("beta", "alpha")] {
        wait_for("the serial link up", AGREE, || {
            serial_state(&c, n, p) == Some(LinkState::Up)
        });
    }
    let t0 = support::wall_ns();
    let cut_at = Instant::now();
    let cuts = [
        cut_network(&c, "alpha", "beta"),
        cut_network(&c, "beta", "alpha"),
    ];
    // The network link goes down on both sides ...
    for (n, p) in [("alpha", "beta"), ("beta", "alpha")] {
        assert!(
            c.wait_event(n, EventKind::LinkDown, p, t0, AGREE).is_some(),
            "{n} never saw the network link down\n{}",
            c.log(n)
        );
    }
    // ... and the survivor is agreed over the line.
    for n in ["alpha", "beta"] {
        wait_for("the survivor verdict", AGREE, || {
            metric(&serial_metrics(&c, n), "heartbeat_serial_survivor") == 2
        });
    }
    // (A rough figure: detection takes node_timeout = 300 ms; the polling
    // of both agents' metrics adds up to about 100 ms.)
    eprintln!(
        "serial: every network link cut -> survivor agreed on both nodes within {} ms",
        cut_at.elapsed().as_millis()
    );
    std::thread::sleep(Duration::from_secs(2));
    // No failover on silence alone: the same view, nobody went down.
    let (e2, members, ..) = c.agreed(&["alpha", "beta"], &["alpha", "beta"], AGREE);
    assert_eq!(e2, epoch, "the view was reformed");
    assert_eq!(members, ["alpha", "beta"]);
    for (n, p) in [("alpha", "beta"), ("beta", "alpha")] {
        assert!(
            !c.journal(n)
                .iter()
                .any(|e| e.kernel_wall_ns >= t0 && e.event == EventKind::NodeDown),
            "{n} saw its peer down with the cable in place"
        );
        let st = c.status(n);
        assert_eq!(st.node(p).unwrap().state, NodeState::Up);
        assert!(st.messages.get("received").copied().unwrap_or(0) > 0);
        let m = serial_metrics(&c, n);
        assert!(
            metric(&m, "heartbeat_serial_membership_received") > 0,
            "{m:?}"
        );
    }

    // The cable cut too: the peer is presumed down; two_node keeps each
    // side quorate alone (as configured), and the verdict is withdrawn.
    let t1 = support::wall_ns();
    relay.set_cut(true);
    for (n, p) in [("alpha", "beta"), ("beta", "alpha")] {
        assert!(
            c.wait_event(n, EventKind::NodeDown, p, t1, AGREE).is_some(),
            "{n} never saw {p} down with the cable cut"
        );
        c.agreed(&[n], &[n], AGREE);
        wait_for("the verdict withdrawn", AGREE, || {
            metric(&serial_metrics(&c, n), "heartbeat_serial_survivor") == 0
        });
    }

    // The cable back (the network still cut): one view again.
    relay.set_cut(false);
    c.agreed(&["alpha", "beta"], &["alpha", "beta"], AGREE);
    for n in ["alpha", "beta"] {
        wait_for("the survivor verdict again", AGREE, || {
            metric(&serial_metrics(&c, n), "heartbeat_serial_survivor") == 2
        });
    }
    drop(cuts);
}

/// The better network view wins over priority: alpha (priority 200) loses
/// its only network interface, so beta (priority 100, its interface up)
/// is the survivor on both nodes; the view stays as it was.
#[test]
fn the_better_network_view_survives_before_priority() {
    let (mut c, _relay, _devs) = serial_cluster("");
    c.edit_config(|t| {
        t.replacen(
            "name = \"alpha\"\n",
            "name = \"alpha\"\npriority = 200\n",
            1,
        )
    });
    c.start_all();
    let (epoch, ..) = c.agreed(&["alpha", "beta"], &["alpha", "beta"], AGREE);
    for (n, p) in [("alpha", "beta"), ("beta", "alpha")] {
        wait_for("the serial link up", AGREE, || {
            serial_state(&c, n, p) == Some(LinkState::Up)
        });
    }
    let i = c.index("alpha");
    let iface = c.nodes[i].ifaces[0].clone();
    c.nodes[i]
        .ns
        .ip(&["link", "set", &iface, "down"])
        .expect("interface down");
    for n in ["alpha", "beta"] {
        wait_for("beta agreed as the survivor", AGREE, || {
            metric(&serial_metrics(&c, n), "heartbeat_serial_survivor") == 2
        });
    }
    let (e2, members, ..) = c.agreed(&["alpha", "beta"], &["alpha", "beta"], AGREE);
    assert_eq!((e2, members.len()), (epoch, 2), "the view was reformed");
}

/// With `serial.fec = true`, heartbeats get through a 10 % byte error
/// rate (one bit flipped in one byte in ten, on every byte the relay
/// carries): forward error correction repairs them (a plain 62-byte frame
/// would almost never get through: about 0.15 %).
#[test]
fn forward_error_correction_gets_heartbeats_through_ten_percent_byte_errors() {
    let (mut c, relay, _devs) = serial_cluster("");
    c.edit_config(|t| {
        t.replacen(
            "timeout = \"200ms\"\n",
            "timeout = \"200ms\"\nfec = true\n",
            1,
        )
    });
    c.start_all();
    c.agreed(&["alpha", "beta"], &["alpha", "beta"], AGREE);
    for (n, p) in [("alpha", "beta"), ("beta", "alpha")] {
        wait_for("the serial link up", AGREE, || {
            serial_state(&c, n, p) == Some(LinkState::Up)
        });
    }
    let before = serial_metrics(&c, "beta");
    relay
        .noise()
        .byte_flip_ppm
        .store(100_000, Ordering::Relaxed);
    std::thread::sleep(Duration::from_secs(3));
    let after = serial_metrics(&c, "beta");
    relay.noise().byte_flip_ppm.store(0, Ordering::Relaxed);
    let accepted = frames(&after, "accepted") - frames(&before, "accepted");
    let corrected = metric(&after, "heartbeat_serial_frames_corrected")
        - metric(&before, "heartbeat_serial_frames_corrected");
    let crc = frames(&after, "crc") - frames(&before, "crc");
    eprintln!(
        "serial fec at 10 % byte errors: {accepted} frames accepted in 3 s ({corrected} repaired, {crc} beyond repair)"
    );
    // About 300 frames in 3 s; about two in three get through.
    assert!(accepted > 100, "{accepted} accepted: {after:?}");
    assert!(corrected > 80, "{corrected} repaired: {after:?}");
    for (n, p) in [("alpha", "beta"), ("beta", "alpha")] {
        wait_for("the serial link up", AGREE, || {
            serial_state(&c, n, p) == Some(LinkState::Up)
        });
    }
}

/// The package's address (on link 0's subnet, no `dev`: each node's link).
const VIP: &str = "10.210.0.100";

/// A two-node cluster with a serial line and one package `web` (alpha
/// first) whose script logs every action to a shared log: (cluster,
/// relay, the log).
fn serial_package_cluster() -> (Cluster, Relay, PathBuf) {
    use std::os::unix::fs::PermissionsExt as _;
    let (c, relay, _devs) = serial_cluster("");
    let dir = c.dir.0.clone();
    let script = dir.join("svc.sh");
    let log = dir.join("actions.log");
    fs::write(
        &script,
        format!(
            "#!/bin/sh\n\
             d={dir}\n\
             echo \"$HEARTBEAT_NODE $1\" >> {log}\n\
             case \"$1\" in\n\
               start) touch \"$d/running.$HEARTBEAT_NODE\" ;;\n\
               stop) rm -f \"$d/running.$HEARTBEAT_NODE\" ;;\n\
               monitor) [ -e \"$d/running.$HEARTBEAT_NODE\" ] ;;\n\
             esac\n",
            dir = dir.display(),
            log = log.display()
        ),
    )
    .unwrap();
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
    let s = script.display();
    c.edit_config(|t| {
        format!(
            "{t}\n[[package]]\nname = \"web\"\nnodes = [\"alpha\", \"beta\"]\n\
             addresses = [\"{VIP}/24\"]\nstart = \"{s} start\"\nstop = \"{s} stop\"\n\
             monitor = \"{s} monitor\"\nmonitor_interval = \"100ms\"\n"
        )
    });
    (c, relay, log)
}

/// The start and stop lines of the shared log, as (node, action).
fn actions(log: &Path) -> Vec<(String, String)> {
    fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (n, a) = l.split_once(' ')?;
            (a == "start" || a == "stop").then(|| (n.to_owned(), a.to_owned()))
        })
        .collect()
}

/// Replays the log: panics if two nodes ever ran the service at once
/// (a start while another node's start has not been followed by its
/// stop). Returns who runs it at the end.
#[track_caller]
fn one_owner_at_a_time(log: &Path) -> Vec<String> {
    let mut running: Vec<String> = Vec::new();
    for (i, (n, a)) in actions(log).iter().enumerate() {
        if a == "start" {
            assert!(
                running.iter().all(|r| r == n),
                "two owners at line {i} ({n} starts while {running:?} run): {:?}",
                actions(log)
            );
            if !running.contains(n) {
                running.push(n.clone());
            }
        } else {
            running.retain(|r| r != n);
        }
    }
    running
}

/// Waits for `f`; on a timeout, panics with both nodes' packages and logs.
#[track_caller]
fn wait_for_web(c: &Cluster, log: &Path, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + AGREE;
    while !f() {
        if Instant::now() >= deadline {
            let st: Vec<_> = ["alpha", "beta"]
                .iter()
                .map(|n| c.try_status(n).map(|s| s.packages))
                .collect();
            panic!(
                "timed out waiting for {what}: {st:#?}\nactions: {:?}\n--- alpha:\n{}\n--- beta:\n{}",
                actions(log),
                c.log("alpha"),
                c.log("beta")
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `web`'s local state on `name` (None: not listed yet).
fn web_state(c: &Cluster, name: &str) -> Option<String> {
    let st = c.try_status(name)?;
    st.packages
        .iter()
        .find(|p| p.name == "web")
        .map(|p| p.local_state.clone())
}

/// The packages follow the survivor rule: with every network link cut
/// and the cable in place, the package moves from alpha (its first node)
/// to beta (the survivor: equal network views, higher priority), and only
/// after alpha's stop (the scripts' log never shows two owners). Then the
/// cable cut too: a two-node split as configured (`two_node = true`
/// without a tie-breaker: each side is quorate alone, so alpha starts it
/// again once beta's lease has run out by its reckoning, while beta keeps
/// it: two owners, the documented hazard of `two_node` without a
/// tie-breaker). The cable back: the survivor rule again, alpha stops,
/// beta alone runs it; the network back: still beta alone.
#[test]
fn the_survivor_alone_runs_the_package_when_every_network_link_is_cut() {
    let (mut c, relay, log) = serial_package_cluster();
    c.edit_config(|t| t.replacen("name = \"beta\"\n", "name = \"beta\"\npriority = 200\n", 1));
    // (The line is up before the first network heartbeat: no split is
    // declared at start-up, so the first placement is alpha's.)
    c.start_all();
    let (epoch, ..) = c.agreed(&["alpha", "beta"], &["alpha", "beta"], AGREE);
    for (n, p) in [("alpha", "beta"), ("beta", "alpha")] {
        wait_for("the serial link up", AGREE, || {
            serial_state(&c, n, p) == Some(LinkState::Up)
        });
    }
    wait_for_web(&c, &log, "web running on alpha", || {
        web_state(&c, "alpha").as_deref() == Some("running")
    });
    assert_eq!(one_owner_at_a_time(&log), ["alpha"]);

    // Every network link cut, the cable in place.
    let cut_at = Instant::now();
    let cuts = [
        cut_network(&c, "alpha", "beta"),
        cut_network(&c, "beta", "alpha"),
    ];
    wait_for_web(&c, &log, "web moved to beta", || {
        web_state(&c, "beta").as_deref() == Some("running")
            && web_state(&c, "alpha").as_deref() == Some("stopped")
    });
    eprintln!(
        "serial: every network link cut -> web running on the survivor alone within {} ms",
        cut_at.elapsed().as_millis()
    );
    // Stays so; the view never changed.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(web_state(&c, "beta").as_deref(), Some("running"));
    assert_eq!(web_state(&c, "alpha").as_deref(), Some("stopped"));
    assert_eq!(one_owner_at_a_time(&log), ["beta"]);
    let (e2, ..) = c.agreed(&["alpha", "beta"], &["alpha", "beta"], AGREE);
    assert_eq!(
        e2,
        epoch,
        "the view was reformed: {:#?}\n--- alpha:\n{}\n--- beta:\n{}",
        ["alpha", "beta"].map(|n| c
            .journal(n)
            .into_iter()
            .filter(|e| matches!(
                e.event,
                EventKind::Reformation | EventKind::ViewInstalled | EventKind::LinkDown
            ))
            .map(|e| format!("{n}: {:?} {} {:?}", e.event, e.cause, e.peer))
            .collect::<Vec<_>>()),
        c.log("alpha"),
        c.log("beta")
    );
    // The frames say so: alpha stopped its packages, beta holds web.
    for n in ["alpha", "beta"] {
        assert_eq!(
            metric(&serial_metrics(&c, n), "heartbeat_serial_survivor"),
            2
        );
    }

    // The cable cut too: a two-node split as configured (two_node).
    relay.set_cut(true);
    for n in ["alpha", "beta"] {
        c.agreed(&[n], &[n], AGREE);
    }
    wait_for_web(&c, &log, "alpha to start web alone", || {
        web_state(&c, "alpha").as_deref() == Some("running")
    });
    assert_eq!(web_state(&c, "beta").as_deref(), Some("running"));

    // The cable back (the network still cut): one view, and the survivor
    // rule again: alpha stops, beta alone runs it.
    relay.set_cut(false);
    c.agreed(&["alpha", "beta"], &["alpha", "beta"], AGREE);
    wait_for_web(&c, &log, "web on beta alone", || {
        web_state(&c, "beta").as_deref() == Some("running")
            && web_state(&c, "alpha").as_deref() == Some("stopped")
    });
    let mark = actions(&log).len();

    // The network back: still beta alone, nothing restarted.
    drop(cuts);
    std::thread::sleep(Duration::from_secs(2));
    c.agreed(&["alpha", "beta"], &["alpha", "beta"], AGREE);
    assert_eq!(web_state(&c, "beta").as_deref(), Some("running"));
    assert_eq!(web_state(&c, "alpha").as_deref(), Some("stopped"));
    assert_eq!(actions(&log).len(), mark, "{:?}", actions(&log));
}
