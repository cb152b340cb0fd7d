//! The kernel fence of package addresses (issue #9), on real veth pairs in
//! namespaces:
//! - the programs loaded through the fast path, with a lease on a package
//!   address: a peer reaches the address (IPv4 and IPv6) while the lease is
//!   valid; once it runs out the XDP program drops traffic to it and the tc
//!   egress program traffic from it (counted), other addresses untouched;
//!   a renewal or a release takes effect at once;
//! - a real agent whose node may run a package: its package address is
//!   fenced from the start, `detach` refuses while the agent runs, a
//!   SIGKILL leaves it dark (programs and maps pinned, still counting
//!   drops), the next agent replaces the stale pins,
//!   a graceful stop removes every pin and attachment, and after another
//!   SIGKILL `heartbeat-agent detach` does; an announced restart is
//!   adopted and the fence pinned again;
//! - with the packages task: the owner answers while it renews; when only
//!   its agent is killed (address, link and service left), its kernel
//!   stops answering for the address (ARP included) and the new owner
//!   answers alone. Its metrics show the drops and the lease.
//!
//! Every namespace, attachment and pin is removed by drop guards, also when
//! a test panics.
#![allow(
    unused_crate_dependencies,
    reason = "an integration test links every dependency of its package"
)]

mod support;

use std::{
    fs,
    net::IpAddr,
    path::PathBuf,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use aya::maps::{Map, MapData, PerCpuArray};
use heartbeat_agent::{
    clock::mono_ns,
    fastpath::{FastPath, FastPathParams, LeaseSpec},
    fence::lease_key,
    keyfile::ClusterKeys,
};
use heartbeat_common::{counter, names};
use heartbeat_tests::{Netns, Signal, VethPair, in_netns, xdp_attached};
use support::{Cluster, Timing, agent_binary};

const PKG_V4: &str = "10.77.0.100";
const PKG_V6: &str = "fd77::100";

/// Whether `ns` gets an answer from `addr` (two tries, 1 s each).
fn answers(ns: &Netns, args: &[&str]) -> bool {
    let mut cmd = vec!["ping", "-c", "2", "-i", "0.2", "-W", "1"];
    cmd.extend_from_slice(args);
    ns.exec_unchecked(&cmd)
        .map(|o| o.status.success())
        .unwrap_or(false)
}

fn load_fast_path(ns: &Netns, ifname: &str) -> FastPath {
    let params = FastPathParams {
        cluster_id: 99,
        local_node: 1,
        port: 6499,
        node_timeout_ns: 1_000_000_000,
        agent_timeout_ns: 1_000_000_000,
        heartbeat_interval_ns: 10_000_000,
        keys: ClusterKeys {
            current: [7; 16],
            next: None,
        },
        peers: Vec::new(),
    };
    in_netns(ns.name(), || {
        let (mut fp, _status, _ring) =
            FastPath::load(heartbeat_agent::EBPF_OBJECT, params, None).expect("load");
        fp.attach(ifname).expect("attach XDP");
        fp.attach_egress_stamp(ifname).expect("attach tc egress");
        fp
    })
    .expect("enter the namespace")
}

fn spec(renew: bool, lease_ns: u64) -> LeaseSpec {
    LeaseSpec {
        package: 0,
        addrs: vec![PKG_V4.parse().unwrap(), PKG_V6.parse().unwrap()],
        renew,
        successors: Vec::new(),
        lease_ns,
        generation: 1,
        epoch: 1,
    }
}

fn fenced(fp: &FastPath) -> (u64, u64) {
    let c = fp.counters();
    (
        c[counter::FENCED_IN as usize],
        c[counter::FENCED_OUT as usize],
    )
}

#[test]
fn traffic_passes_while_the_lease_is_valid_and_is_dropped_both_ways_once_it_runs_out() {
    let server = Netns::new("hbf").expect("netns");
    let client = Netns::new("hbf").expect("netns");
    let pair = VethPair::connect(
        &server,
        &client,
        [
            "10.77.0.1/24",
            &format!("{PKG_V4}/24"),
            &format!("{PKG_V6}/64"),
        ],
        ["10.77.0.2/24", "fd77::2/64"],
    )
    .expect("veth");
    let mut fp = load_fast_path(&server, &pair.if_a);

    // Not in the map yet: untouched.
    assert!(answers(&client, &[PKG_V4]));

    // A valid lease: both families pass, both ways.
    let lease_ns = 1_500_000_000;
    fp.set_leases(vec![spec(true, lease_ns)]).unwrap();
    let key = lease_key(PKG_V4.parse::<IpAddr>().unwrap());
    let until = fp.lease_entries()[&key].until_ns;
    assert!(until > mono_ns() && until <= mono_ns() + lease_ns);
    assert_eq!(fp.lease_entries().len(), 2);
    assert!(answers(&client, &[PKG_V4]));
    assert!(answers(&client, &[PKG_V6]));
    assert!(answers(&server, &["-I", PKG_V4, "10.77.0.2"]));
    assert_eq!(fenced(&fp), (0, 0));

    // Renewals while allowed (no successors: anchored now), never shorter.
    assert_eq!(fp.renew_leases().unwrap(), 1);
    let renewed = fp.lease_entries()[&key].until_ns;
    assert!(renewed > until);

    // Not renewed any more: it keeps its expiry and runs out.
    fp.set_leases(vec![spec(false, lease_ns)]).unwrap();
    assert_eq!(fp.renew_leases().unwrap(), 0);
    assert_eq!(fp.lease_entries()[&key].until_ns, renewed);
    while mono_ns() < renewed {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!answers(&client, &[PKG_V4]), "a fenced address answered");
    assert!(
        !answers(&client, &[PKG_V6]),
        "a fenced IPv6 address answered"
    );
    let (fin, fout) = fenced(&fp);
    assert!(fin >= 4, "the XDP program counted {fin} fenced packets");
    // Other addresses of the same interface are not fenced.
    assert!(answers(&client, &["10.77.0.1"]));
    assert_eq!(fenced(&fp).0, fin);
    // The reply direction: traffic from the address is dropped on egress.
    assert!(!answers(&server, &["-I", PKG_V4, "10.77.0.2"]));
    let (_, fout2) = fenced(&fp);
    assert!(
        fout2 >= fout + 2,
        "the egress program counted {} fenced packets",
        fout2 - fout
    );
    assert_eq!(fp.snapshot(0).leases[&0], renewed);

    // Listed for renewal again in the generation that ran out: a lapse,
    // and the address stays dark (the holder must pass the start rule and
    // list a new generation).
    fp.set_leases(vec![spec(true, 60_000_000_000)]).unwrap();
    assert_eq!(fp.lease_entries()[&key].until_ns, renewed);
    assert!(!answers(&client, &[PKG_V4]));
    assert_eq!(fp.snapshot(0).lease_lapses, 1);
    // Renewed in a new generation: open at once; released: fenced at once.
    let mut next = spec(true, 60_000_000_000);
    next.generation = 2;
    fp.set_leases(vec![next]).unwrap();
    assert!(answers(&client, &[PKG_V4]));
    fp.release_lease(0).unwrap();
    assert_eq!(fp.lease_entries()[&key].until_ns, 0);
    assert!(!answers(&client, &[PKG_V4]));
    // A release is not undone by the renewal tick.
    assert_eq!(fp.renew_leases().unwrap(), 0);
    // A package no longer listed stays fenced.
    fp.set_leases(Vec::new()).unwrap();
    assert!(fp.lease_entries().values().all(|e| e.until_ns == 0));
    assert!(!answers(&client, &[PKG_V4]));
    drop(fp);
    // Detached with the fast path: the address answers again.
    assert!(answers(&client, &[PKG_V4]));
}

/// A bpffs mounted in a scratch directory (`ip netns exec` hides the
/// host's); dropping it detaches and removes every pin under it and
/// unmounts it.
struct Bpffs {
    dir: PathBuf,
}

impl Bpffs {
    fn new() -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "hb-test-fence-bpffs-{}-{}",
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

/// Whether the client gets an answer from alpha's package address, which
/// the test keeps configured on alpha's device (standing for a service
/// left running): the agent's stop before join removes it, and without
/// quorum (alpha alone) the package never starts to add it back.
fn vip_answers(c: &Cluster, client: &Netns, dev: &str) -> bool {
    let ns = &c.nodes[c.index("alpha")].ns;
    // "File exists" when it is there already.
    let _ = ns.exec_unchecked(&["ip", "addr", "add", "10.78.0.100/24", "dev", dev]);
    answers(client, &["10.78.0.100"])
}

/// FENCED_IN summed over CPUs, read from the pinned counters.
fn pinned_fenced_in(dir: &std::path::Path) -> u64 {
    pinned_counter(dir, counter::FENCED_IN)
}

/// A counter summed over CPUs, read from the pinned counters.
fn pinned_counter(dir: &std::path::Path, index: u32) -> u64 {
    let data = MapData::from_pin(dir.join(names::COUNTERS)).expect("pinned COUNTERS");
    let counters: PerCpuArray<MapData, u64> =
        PerCpuArray::try_from(Map::PerCpuArray(data)).expect("per-CPU array");
    counters.get(&index, 0).map(|v| v.iter().sum()).unwrap_or(0)
}

fn wait_for(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A two-node cluster whose node alpha may run package `web`, with its
/// address 10.78.0.100 on a device that carries no heartbeats (a client
/// segment, the client in its own namespace); metrics on. Returns the
/// cluster, the client namespace and alpha's package device.
fn fenced_cluster() -> (Cluster, Netns, String) {
    let c = Cluster::new(
        2,
        1,
        Timing {
            interval: "10ms",
            node_timeout: "300ms",
            agent_timeout: "1s",
        },
        true,
    );
    let client = Netns::new("hbf").expect("netns");
    let alpha = c.index("alpha");
    let pair = VethPair::connect(
        &c.nodes[alpha].ns,
        &client,
        ["10.78.0.1/24", "10.78.0.100/24"],
        ["10.78.0.2/24"],
    )
    .expect("client veth");
    let dev = pair.if_a.clone();
    c.edit_config(|t| {
        format!(
            "{t}\n[[package]]\nname = \"web\"\nnodes = [\"alpha\"]\n\
             addresses = [\"10.78.0.100/24 dev {dev}\"]\n\
             start = \"/bin/true\"\nstop = \"/bin/true\"\nmonitor = \"/bin/true\"\n"
        )
    });
    (c, client, dev)
}

#[test]
fn a_killed_agent_leaves_its_package_address_dark_until_detach() {
    let bpffs = Bpffs::new();
    let (mut c, client, dev) = fenced_cluster();
    let alpha = c.index("alpha");
    let env = format!("HEARTBEAT_BPFFS={}", bpffs.dir.display());
    assert!(vip_answers(&c, &client, &dev), "no agent yet");
    c.start_prefixed("alpha", &["env", &env]);
    let pins = heartbeat_agent::pins::node_dir(&bpffs.dir, 7, heartbeat_cluster::NodeId(1));
    let pinned = || heartbeat_agent::pins::list(&pins);
    wait_for("alpha's fence pins", Duration::from_secs(20), || {
        let p = pinned();
        p.iter().any(|n| n == names::LEASES)
            && p.iter().any(|n| n == &format!("tcx-egress-{dev}"))
            && p.iter().any(|n| n.starts_with("xdp-") && n.ends_with(&dev))
    });
    assert!(xdp_attached(&c.nodes[alpha].ns, &dev));
    // `detach` refuses while the agent runs (its links are pinned).
    let out = Command::new(agent_binary())
        .args(["detach", "--config"])
        .arg(&c.config)
        .args(["--node", "alpha"])
        .env("HEARTBEAT_BPFFS", &bpffs.dir)
        .output()
        .expect("detach");
    assert!(
        !out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("an agent is running for node alpha"), "{err}");
    assert!(xdp_attached(&c.nodes[alpha].ns, &dev));
    assert!(!pinned().is_empty());
    // Fenced from the start (alpha alone is not quorate: the package never
    // starts and nothing renews its lease); other addresses pass.
    assert!(!vip_answers(&c, &client, &dev), "fenced from the start");
    assert!(answers(&client, &["10.78.0.1"]));
    // The metrics show the drops and the lease.
    wait_for("the fence in the metrics", Duration::from_secs(5), || {
        let text = support::http_get(&c.nodes[alpha].ns, "127.0.0.1:9465", "/metrics");
        let value = |prefix: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(prefix))
                .and_then(|v| v.trim().parse::<f64>().ok())
        };
        value("heartbeat_fence_packets_total{direction=\"in\"}").is_some_and(|v| v > 0.0)
            && value("heartbeat_package_lease_remaining_seconds{package=\"web\"}") == Some(0.0)
            && value("heartbeat_lease_renewals_total").is_some()
    });

    c.agent("alpha").signal(Signal::SIGKILL).unwrap();
    c.agent("alpha").wait().unwrap();
    c.nodes[alpha].agent = None;
    // The programs outlive the agent: still attached, still dropping.
    assert!(xdp_attached(&c.nodes[alpha].ns, &dev));
    let before = pinned_fenced_in(&pins);
    assert!(!vip_answers(&c, &client, &dev), "open after a SIGKILL");
    assert!(pinned_fenced_in(&pins) > before);
    assert!(answers(&client, &["10.78.0.1"]));
    assert!(!pinned().is_empty());

    // The next agent cannot adopt them (no announced restart): it removes
    // them and fences and pins afresh.
    let seen = c.log("alpha").len();
    c.start_prefixed("alpha", &["env", &env]);
    let new_log = |c: &Cluster| c.log("alpha").get(seen..).unwrap_or_default().to_owned();
    wait_for("the stale pins replaced", Duration::from_secs(20), || {
        let log = new_log(&c);
        log.contains("package addresses fenced in the kernel")
            && log.contains("heartbeat agent running")
    });
    let log = new_log(&c);
    assert!(log.contains("stale pins removed"), "{log}");
    assert!(!vip_answers(&c, &client, &dev));
    // A graceful stop removes every pin and attachment.
    c.agent("alpha").terminate().unwrap();
    c.agent("alpha").wait().unwrap();
    c.nodes[alpha].agent = None;
    assert!(pinned().is_empty(), "pins left by a stop: {:?}", pinned());
    assert!(!xdp_attached(&c.nodes[alpha].ns, &dev));
    assert!(vip_answers(&c, &client, &dev), "a stop opens it");

    // Killed again: dark until `heartbeat-agent detach`.
    c.start_prefixed("alpha", &["env", &env]);
    wait_for("alpha's fence pins", Duration::from_secs(20), || {
        pinned().iter().any(|n| n == names::LEASES)
    });
    c.agent("alpha").signal(Signal::SIGKILL).unwrap();
    c.agent("alpha").wait().unwrap();
    c.nodes[alpha].agent = None;
    assert!(!vip_answers(&c, &client, &dev));

    let out = Command::new(agent_binary())
        .args(["detach", "--config"])
        .arg(&c.config)
        .args(["--node", "alpha"])
        .env("HEARTBEAT_BPFFS", &bpffs.dir)
        .output()
        .expect("detach");
    assert!(
        out.status.success(),
        "detach: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(pinned().is_empty(), "pins left: {:?}", pinned());
    assert!(!xdp_attached(&c.nodes[alpha].ns, &dev));
    let tcx = heartbeat_tests::tcx_attachments(Some(c.nodes[alpha].ns.name())).unwrap();
    assert!(tcx.is_empty(), "TCX left: {tcx:?}");
    assert!(vip_answers(&c, &client, &dev), "detach opens it");
}

#[test]
fn an_announced_restart_of_a_fenced_node_is_adopted_and_pinned_again() {
    let bpffs = Bpffs::new();
    let (mut c, client, dev) = fenced_cluster();
    let alpha = c.index("alpha");
    let env = format!("HEARTBEAT_BPFFS={}", bpffs.dir.display());
    let pins = heartbeat_agent::pins::node_dir(&bpffs.dir, 7, heartbeat_cluster::NodeId(1));
    let tcx_pin = format!("tcx-egress-{dev}");
    let pinned = || heartbeat_agent::pins::list(&pins);
    c.start_prefixed("alpha", &["env", &env]);
    // Running (its signal handlers installed) and pinned.
    wait_for("alpha running and pinned", Duration::from_secs(20), || {
        c.log("alpha").contains("heartbeat agent running") && pinned().contains(&tcx_pin)
    });
    c.agent("alpha").signal(Signal::SIGUSR2).unwrap();
    let status = c
        .agent("alpha")
        .wait_timeout(Duration::from_secs(10))
        .unwrap()
        .expect("SIGUSR2 makes the agent exit for a restart");
    assert_eq!(status.code(), Some(75), "{}", c.log("alpha"));
    c.nodes[alpha].agent = None;
    assert!(!vip_answers(&c, &client, &dev), "open during the restart");

    let seen = c.log("alpha").len();
    c.start_prefixed("alpha", &["env", &env]);
    let new_log = |c: &Cluster| c.log("alpha").get(seen..).unwrap_or_default().to_owned();
    wait_for(
        "the adoption and the fence",
        Duration::from_secs(20),
        || {
            let log = new_log(&c);
            log.contains("package addresses fenced in the kernel")
                && log.contains("heartbeat agent running")
        },
    );
    let log = new_log(&c);
    assert!(log.contains("adopting the XDP program"), "{log}");
    assert!(!log.contains("cannot be adopted"), "{log}");
    let p = pinned();
    assert!(
        p.contains(&tcx_pin) && p.iter().any(|n| n == names::LEASES),
        "{p:?}"
    );
    assert!(!vip_answers(&c, &client, &dev));
    assert!(answers(&client, &["10.78.0.1"]));
    // One TCX program per device: the old agent's went with its pins.
    let tcx = heartbeat_tests::tcx_attachments(Some(c.nodes[alpha].ns.name())).unwrap();
    assert_eq!(tcx.iter().filter(|t| t.ifname == dev).count(), 1, "{tcx:?}");

    c.agent("alpha").terminate().unwrap();
    c.agent("alpha").wait().unwrap();
    c.nodes[alpha].agent = None;
    assert!(pinned().is_empty(), "pins left by a stop: {:?}", pinned());
    assert!(vip_answers(&c, &client, &dev));
}

/// The MAC of `ifname` in `ns`.
fn mac_of(ns: &Netns, ifname: &str) -> String {
    let out = ns.ip(&["-br", "link", "show", "dev", ifname]).unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.split_whitespace()
        .nth(2)
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn a_killed_owner_is_fenced_by_its_kernel_and_the_new_owner_answers() {
    const VIP: &str = "10.210.0.100";
    let bpffs = Bpffs::new();
    let mut c = Cluster::new(
        3,
        1,
        Timing {
            interval: "10ms",
            node_timeout: "300ms",
            agent_timeout: "1s",
        },
        false,
    );
    // The client: the hub namespace, on the heartbeat segment.
    c.hub(0)
        .ip(&["addr", "add", "10.210.0.200/24", "dev", "br0"])
        .unwrap();
    c.edit_config(|t| {
        format!(
            "{t}\n[[package]]\nname = \"web\"\nnodes = [\"alpha\", \"beta\"]\n\
             addresses = [\"{VIP}/24\"]\nstart = \"/bin/true\"\nstop = \"/bin/true\"\n\
             monitor = \"/bin/true\"\n"
        )
    });
    let env = format!("HEARTBEAT_BPFFS={}", bpffs.dir.display());
    for n in ["alpha", "beta", "gamma"] {
        c.start_prefixed(n, &["env", &env]);
    }
    let client = |c: &Cluster| {
        c.hub(0)
            .exec_unchecked(&["ping", "-c", "1", "-W", "1", VIP])
    };
    let answered = |c: &Cluster| client(c).is_ok_and(|o| o.status.success());
    let holds = |c: &Cluster, n: &str| {
        c.nodes[c.index(n)]
            .ns
            .exec(&["ip", "-o", "addr", "show"])
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(&format!("{VIP}/24")))
    };
    wait_for("alpha serving web", Duration::from_secs(30), || {
        holds(&c, "alpha") && answered(&c)
    });
    // alpha answers: its fast path renewed the lease (fenced from the
    // start), anchored at the send times of heartbeats its successor beta
    // answered.
    let alpha_pins = heartbeat_agent::pins::node_dir(&bpffs.dir, 7, heartbeat_cluster::NodeId(1));
    assert!(
        heartbeat_agent::pins::list(&alpha_pins)
            .iter()
            .any(|n| n == names::LEASES)
    );

    // Kill alpha's agent only: its address, link and "service" stay.
    c.agent("alpha").signal(Signal::SIGKILL).unwrap();
    c.agent("alpha").wait().unwrap();
    let a = c.index("alpha");
    c.nodes[a].agent = None;
    let killed = Instant::now();
    wait_for("beta serving web", Duration::from_secs(30), || {
        holds(&c, "beta") && answered(&c)
    });
    eprintln!(
        "web answered from beta {} ms after alpha's agent was killed",
        killed.elapsed().as_millis()
    );
    assert!(holds(&c, "alpha"), "alpha keeps the address configured");
    // beta's lease was valid before it announced the address: nothing
    // from it (its gratuitous ARP included) was dropped there.
    let beta_pins = heartbeat_agent::pins::node_dir(&bpffs.dir, 7, heartbeat_cluster::NodeId(2));
    assert_eq!(pinned_counter(&beta_pins, counter::FENCED_OUT), 0);
    // Both hold the address; only beta answers for it: alpha's kernel
    // drops the ARP requests for it (counted in alpha's pinned counters).
    let beta = c.index("beta");
    let beta_mac = mac_of(&c.nodes[beta].ns, &c.nodes[beta].ifaces[0]);
    let before = pinned_fenced_in(&alpha_pins);
    for _ in 0..3 {
        c.hub(0).ip(&["neigh", "flush", "dev", "br0"]).unwrap();
        assert!(answered(&c));
        let out = c.hub(0).ip(&["neigh", "show", VIP]).unwrap();
        let neigh = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            neigh.contains(&beta_mac),
            "{VIP} resolved to {neigh}, not beta ({beta_mac})"
        );
    }
    assert!(
        pinned_fenced_in(&alpha_pins) > before,
        "alpha's kernel dropped no ARP request for the fenced address"
    );
}

/// What the fence costs the XDP program per frame (BPF_PROG_TEST_RUN,
/// 1,000,000 runs each, the best of 3; ignored: a measurement, not a
/// check). A UDP frame that is not a heartbeat: with the fence off (no
/// package on the node), on with `LEASES` empty, with 1,000 other
/// addresses in it, and with its destination leased (valid). With
/// `HB_BASELINE_OBJECT=<eBPF object without the fence>` it also runs that
/// object, for the difference.
///
/// `cargo test -p heartbeat-tests --test fence -- --ignored --nocapture fence_cost`
#[test]
#[ignore = "a measurement"]
fn fence_cost() {
    use aya::{
        Ebpf,
        maps::HashMap,
        programs::{TestRun, TestRunOptions, Xdp},
    };
    use heartbeat_common::{
        LeaseEntry, LeaseKey,
        frame::{self, Addrs, FrameSpec},
    };
    const RUNS: u32 = 1_000_000;
    let mut buf = vec![0u8; 256];
    let n = frame::build(
        &FrameSpec {
            src_mac: [2, 0, 0, 0, 0, 2],
            dst_mac: [2, 0, 0, 0, 0, 1],
            vlan: None,
            addrs: Addrs::V4 {
                src: [10, 1, 0, 2],
                dst: [10, 1, 0, 1],
            },
            src_port: 40000,
            dst_port: 80,
            payload: &[0u8; 64],
        },
        &mut buf,
    )
    .unwrap();
    buf.truncate(n);
    let per_frame = |ebpf: &Ebpf| {
        let prog: &Xdp = ebpf.program(names::PROGRAM).unwrap().try_into().unwrap();
        let mut best = Duration::MAX;
        for _ in 0..3 {
            let r = prog
                .test_run(TestRunOptions {
                    data_in: Some(&buf),
                    repeat: RUNS,
                    ..Default::default()
                })
                .unwrap();
            best = best.min(r.duration);
        }
        best
    };
    let load = |object: &[u8]| {
        let mut ebpf = Ebpf::load(object).unwrap();
        let prog: &mut Xdp = ebpf
            .program_mut(names::PROGRAM)
            .unwrap()
            .try_into()
            .unwrap();
        prog.load().unwrap();
        ebpf
    };
    if let Some(path) = std::env::var_os("HB_BASELINE_OBJECT") {
        let base = load(&fs::read(path).unwrap());
        eprintln!("baseline (no fence):   {:?} per frame", per_frame(&base));
    }
    let mut ebpf = load(heartbeat_agent::EBPF_OBJECT);
    eprintln!("fence off (no package): {:?} per frame", per_frame(&ebpf));
    {
        let mut on: aya::maps::Array<_, u32> =
            aya::maps::Array::try_from(ebpf.map_mut(names::FENCE_ON).unwrap()).unwrap();
        on.set(0, 1, 0).unwrap();
    }
    eprintln!("on, LEASES empty:      {:?} per frame", per_frame(&ebpf));
    let entry = |until_ns| LeaseEntry {
        until_ns,
        package: 0,
        _pad: [0; 6],
    };
    {
        let mut m: HashMap<_, LeaseKey, LeaseEntry> =
            HashMap::try_from(ebpf.map_mut(names::LEASES).unwrap()).unwrap();
        for i in 0..1000u32 {
            let b = i.to_be_bytes();
            m.insert(LeaseKey::v4([10, 9, b[2], b[3]]), entry(u64::MAX), 0)
                .unwrap();
        }
    }
    eprintln!("1,000 others, a miss:  {:?} per frame", per_frame(&ebpf));
    {
        let mut m: HashMap<_, LeaseKey, LeaseEntry> =
            HashMap::try_from(ebpf.map_mut(names::LEASES).unwrap()).unwrap();
        m.insert(LeaseKey::v4([10, 1, 0, 1]), entry(u64::MAX), 0)
            .unwrap();
    }
    eprintln!("destination leased:    {:?} per frame", per_frame(&ebpf));
}
