//! Planned restart without failover, on real agents in namespaces: an
//! announced restart (`heartbeat-agent restart`) leaves the node's XDP
//! program attached and answering, pinned in bpffs, for
//! `cluster.restart_window`; peers show the node `restarting` and do not
//! reform; the next agent adopts the pins and ends up in the same view. A
//! SIGKILL is a failure (one reformation); a window that runs out with no
//! new agent is a failure too, and `heartbeat-agent detach` then removes
//! the pins and the attachment.
//!
//! `ip netns exec` hides the host's /sys/fs/bpf, so every test mounts a
//! bpffs of its own in a scratch directory that the old and new agents
//! share (`HEARTBEAT_BPFFS`); a drop guard detaches and removes every pin
//! in it and unmounts it, even when the test panics.
#![allow(
    unused_crate_dependencies,
    reason = "an integration test links every dependency of its package"
)]

mod support;

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use heartbeat_cluster::NodeId;
use heartbeat_tests::{Signal, xdp_attached};
use support::{Cluster, EventKind, NodeState, Timing, agent_binary, wall_ns};

/// Semantics, not speed: tolerant of a busy machine.
const RELAXED: Timing = Timing {
    interval: "10ms",
    node_timeout: "300ms",
    agent_timeout: "1s",
};

const AGREE: Duration = Duration::from_secs(20);
/// The cluster id of the test configuration (support::Cluster).
const CLUSTER_ID: u32 = 7;

/// A bpffs mounted in a scratch directory for one test. Dropping it detaches
/// and removes every pin under it and unmounts it.
struct Bpffs {
    dir: PathBuf,
}

impl Bpffs {
    fn new() -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "hb-test-bpffs-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&dir).unwrap();
        let st = Command::new("mount")
            .args(["-t", "bpf", "bpf"])
            .arg(&dir)
            .status()
            .expect("mount");
        assert!(st.success(), "mount -t bpf bpf {}", dir.display());
        Self { dir }
    }

    fn env(&self) -> String {
        format!("HEARTBEAT_BPFFS={}", self.dir.display())
    }

    fn node_dir(&self, node_id: u16) -> PathBuf {
        heartbeat_agent::pins::node_dir(&self.dir, CLUSTER_ID, NodeId(node_id))
    }

    /// Names pinned for `node_id`.
    fn pins(&self, node_id: u16) -> Vec<String> {
        heartbeat_agent::pins::list(&self.node_dir(node_id))
    }
}

impl Drop for Bpffs {
    fn drop(&mut self) {
        let root = self.dir.join("heartbeat");
        for d in fs::read_dir(&root).into_iter().flatten().flatten() {
            let _ = heartbeat_agent::pins::remove(&d.path(), true);
        }
        let _ = fs::remove_dir(&root);
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        let _ = fs::remove_dir(&self.dir);
    }
}

fn start(c: &mut Cluster, fs: &Bpffs, name: &str) {
    let env = fs.env();
    c.start_prefixed(name, &["env", &env]);
}

fn start_all(c: &mut Cluster, fs: &Bpffs) {
    for n in ["alpha", "beta", "gamma"] {
        start(c, fs, n);
    }
}

/// Waits until every node in `names` reports the same view with exactly
/// `members`; returns its epoch.
fn agreed(c: &Cluster, names: &[&str], members: &[&str]) -> u64 {
    c.agreed(names, members, AGREE).0
}

/// Epochs of the views `name` installed after `after`.
fn installed_after(c: &Cluster, name: &str, after: u64) -> Vec<u64> {
    c.journal(name)
        .iter()
        .filter(|e| e.event == EventKind::ViewInstalled)
        .filter_map(|e| e.epoch)
        .filter(|&e| e > after)
        .collect()
}

/// `node_down` entries of `observer` about `peer`.
fn downs(c: &Cluster, observer: &str, peer: &str) -> usize {
    c.journal(observer)
        .iter()
        .filter(|e| e.event == EventKind::NodeDown && e.peer.as_deref() == Some(peer))
        .count()
}

/// Asks `name`'s agent to restart and waits for it to exit (status 75).
fn announce_restart(c: &mut Cluster, name: &str) {
    let out = c.cli(name, &["restart"]);
    assert!(
        out.status.success(),
        "restart: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        c.log(name)
    );
    let status = c
        .agent(name)
        .wait_timeout(Duration::from_secs(10))
        .expect("wait")
        .expect("the agent did not exit after announcing its restart");
    assert_eq!(status.code(), Some(75), "{}", c.log(name));
    let i = c.index(name);
    c.nodes[i].agent = None;
}

fn detach(c: &Cluster, fs: &Bpffs, name: &str) -> std::process::Output {
    Command::new(agent_binary())
        .args([
            "detach",
            "--config",
            c.config.to_str().unwrap(),
            "--node",
            name,
        ])
        .arg("--bpffs")
        .arg(&fs.dir)
        .output()
        .expect("detach")
}

fn iface_attached(c: &Cluster, name: &str) -> bool {
    let i = c.index(name);
    xdp_attached(&c.nodes[i].ns, &c.nodes[i].ifaces[0])
}

/// Restarts beta with an announced restart and checks the window and the
/// adoption; with `strict`, also that the view never changed (no
/// reformation at all, the same epoch).
fn announced_restart(strict: bool) {
    let bpffs = Bpffs::new();
    let mut c = Cluster::new(3, 1, RELAXED, false);
    start_all(&mut c, &bpffs);
    let all = ["alpha", "beta", "gamma"];
    let e1 = agreed(&c, &all, &all);

    announce_restart(&mut c, "beta");
    let pins = bpffs.pins(2);
    assert!(
        pins.iter().any(|p| p.starts_with("xdp-")) && pins.iter().any(|p| p == "LINKS"),
        "pins: {pins:?}"
    );
    assert!(iface_attached(&c, "beta"), "XDP detached at the restart");
    for peer in ["alpha", "gamma"] {
        c.wait_state(peer, "beta", NodeState::Restarting, Duration::from_secs(3));
    }
    // Longer than node_timeout and agent_timeout: the kernel answers alone.
    std::thread::sleep(Duration::from_millis(1500));
    for peer in ["alpha", "gamma"] {
        assert_eq!(
            c.status(peer).node("beta").map(|n| n.state),
            Some(NodeState::Restarting)
        );
        assert_eq!(
            installed_after(&c, peer, e1),
            Vec::<u64>::new(),
            "{peer} reformed during the window"
        );
        assert_eq!(downs(&c, peer, "beta"), 0, "{peer} saw beta down");
    }

    start(&mut c, &bpffs, "beta");
    let e2 = agreed(&c, &all, &all);
    for peer in ["alpha", "gamma"] {
        c.wait_state(peer, "beta", NodeState::Up, Duration::from_secs(5));
    }
    // Settle well past node_timeout, then nothing more may happen.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(agreed(&c, &all, &all), e2);
    for peer in ["alpha", "gamma"] {
        assert_eq!(downs(&c, peer, "beta"), 0, "{peer} saw beta down");
    }
    if strict {
        let journal: Vec<String> = c
            .journal("alpha")
            .iter()
            .filter(|e| matches!(e.event, EventKind::Reformation | EventKind::ViewInstalled))
            .map(|e| format!("{:?} {:?} {} {:?}", e.event, e.peer, e.cause, e.epoch))
            .collect();
        assert_eq!(e2, e1, "the restart changed the view: {journal:#?}");
        for peer in ["alpha", "gamma"] {
            assert_eq!(installed_after(&c, peer, e1), Vec::<u64>::new(), "{peer}");
        }
    }
    assert!(
        !bpffs.node_dir(2).exists(),
        "the new agent left pins: {:?}",
        bpffs.pins(2)
    );
    assert!(
        c.log("beta").contains("adopting"),
        "beta did not adopt:\n{}",
        c.log("beta")
    );

    // A full stop afterwards detaches and leaves no pins.
    c.agent("beta").terminate().unwrap();
    c.agent("beta")
        .wait_timeout(Duration::from_secs(10))
        .unwrap()
        .expect("beta stops on SIGTERM");
    assert!(!iface_attached(&c, "beta"));
    assert!(!bpffs.node_dir(2).exists());
}

/// The window holds (no reformation, no down, peers show `restarting`),
/// the new agent adopts the program and every node ends in one view of
/// all three.
#[test]
fn an_announced_restart_keeps_the_node_through_the_window_and_is_adopted() {
    announced_restart(false);
}

/// The whole requirement: not a single reformation, the same epoch. (The
/// cluster task applies the link events queued before it starts, the
/// adopted links the supervisor replays, before its first join.)
#[test]
fn an_announced_restart_gives_no_reformation_and_the_same_view() {
    announced_restart(true);
}

#[test]
fn a_sigkill_gives_exactly_one_reformation() {
    let bpffs = Bpffs::new();
    let mut c = Cluster::new(3, 1, RELAXED, false);
    start_all(&mut c, &bpffs);
    let all = ["alpha", "beta", "gamma"];
    let e1 = agreed(&c, &all, &all);

    c.agent("beta").signal(Signal::SIGKILL).unwrap();
    let e2 = agreed(&c, &["alpha", "gamma"], &["alpha", "gamma"]);
    assert!(e2 > e1);
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(agreed(&c, &["alpha", "gamma"], &["alpha", "gamma"]), e2);
    for peer in ["alpha", "gamma"] {
        assert_eq!(installed_after(&c, peer, e1), vec![e2], "{peer}");
        assert_eq!(downs(&c, peer, "beta"), 1, "{peer}");
    }
    assert!(bpffs.pins(2).is_empty(), "a killed agent pinned nothing");
    assert!(!iface_attached(&c, "beta"), "the kernel detached it");
}

#[test]
fn a_window_that_runs_out_is_a_failure_and_detach_cleans_up() {
    let bpffs = Bpffs::new();
    let mut c = Cluster::new(3, 1, RELAXED, false);
    c.edit_config(|t| t.replacen("[cluster]\n", "[cluster]\nrestart_window = \"1s\"\n", 1));
    start_all(&mut c, &bpffs);
    let all = ["alpha", "beta", "gamma"];
    let e1 = agreed(&c, &all, &all);

    let t0 = wall_ns();
    announce_restart(&mut c, "beta");
    // No new agent: after the window the gate closes and beta fails.
    for peer in ["alpha", "gamma"] {
        assert!(
            c.wait_event(
                peer,
                EventKind::NodeDown,
                "beta",
                t0,
                Duration::from_secs(10)
            )
            .is_some(),
            "{peer} never saw beta down:\n{}",
            c.log(peer)
        );
    }
    let e2 = agreed(&c, &["alpha", "gamma"], &["alpha", "gamma"]);
    assert!(e2 > e1);
    // The program stays attached (closed) with its pins until detached.
    assert!(iface_attached(&c, "beta"));
    assert!(!bpffs.pins(2).is_empty());

    let out = detach(&c, &bpffs, "beta");
    assert!(
        out.status.success(),
        "detach: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("detached XDP from"), "{said}");
    assert!(!iface_attached(&c, "beta"), "detach left XDP attached");
    assert!(!bpffs.node_dir(2).exists(), "pins: {:?}", bpffs.pins(2));
    // Nothing left: detach again is a no-op.
    let out = detach(&c, &bpffs, "beta");
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("nothing pinned"));
}

#[test]
fn a_start_after_the_window_cleans_the_stale_pins_and_starts_afresh() {
    let bpffs = Bpffs::new();
    let mut c = Cluster::new(3, 1, RELAXED, false);
    c.edit_config(|t| t.replacen("[cluster]\n", "[cluster]\nrestart_window = \"500ms\"\n", 1));
    start_all(&mut c, &bpffs);
    let all = ["alpha", "beta", "gamma"];
    let e1 = agreed(&c, &all, &all);

    // SIGUSR2 announces the restart too.
    c.agent("beta").signal(Signal::SIGUSR2).unwrap();
    let status = c
        .agent("beta")
        .wait_timeout(Duration::from_secs(10))
        .unwrap()
        .expect("SIGUSR2 makes the agent exit for a restart");
    assert_eq!(status.code(), Some(75), "{}", c.log("beta"));
    let b = c.index("beta");
    c.nodes[b].agent = None;
    assert!(!bpffs.pins(2).is_empty());
    std::thread::sleep(Duration::from_millis(1200));
    start(&mut c, &bpffs, "beta");
    let e2 = agreed(&c, &all, &all);
    assert!(e2 > e1, "beta failed and rejoined: a new view");
    assert!(
        c.log("beta").contains("cannot be adopted"),
        "{}",
        c.log("beta")
    );
    assert!(!bpffs.node_dir(2).exists(), "pins: {:?}", bpffs.pins(2));
    assert!(iface_attached(&c, "beta"));
}

/// The guard unmounts its bpffs and removes what is pinned in it even when
/// the test panics, and the leak check then finds nothing of it.
#[test]
fn the_bpffs_guard_cleans_up_on_panic() {
    let path = std::sync::Mutex::new(PathBuf::new());
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let fs = Bpffs::new();
        *path.lock().unwrap() = fs.dir.clone();
        fs::create_dir_all(fs.node_dir(9)).unwrap();
        assert!(
            heartbeat_tests::bpffs_leftovers()
                .iter()
                .any(|l| matches!(l, heartbeat_tests::BpffsLeftover::Mount { path, .. } if *path == fs.dir)),
            "the leak check does not see the scratch bpffs"
        );
        panic!("on purpose");
    }));
    assert!(r.is_err());
    let path = path.into_inner().unwrap();
    assert!(!path.exists(), "{} left behind", path.display());
    assert!(
        !heartbeat_tests::bpffs_leftovers().iter().any(|l| match l {
            heartbeat_tests::BpffsLeftover::Mount { path: p, .. } => *p == path,
            heartbeat_tests::BpffsLeftover::Pins { dir, .. } => dir.starts_with(&path),
        }),
        "the leak check still sees it"
    );
}

/// The pin directory is per (cluster, node): the path names both.
#[test]
fn pin_directories_are_per_node() {
    let a = heartbeat_agent::pins::node_dir(Path::new("/sys/fs/bpf"), 7, NodeId(1));
    let b = heartbeat_agent::pins::node_dir(Path::new("/sys/fs/bpf"), 7, NodeId(2));
    assert_ne!(a, b);
    assert!(a.starts_with("/sys/fs/bpf/heartbeat"));
}
