//! Standby NIC takeover (issue #10) with real agents in network namespaces
//! and a Linux bridge as the shared segment: node alpha has two cards on
//! the bridge (the link's interface and its standby), node beta one.
//!
//! - carrier loss of alpha's active card: its address moves to the
//!   standby, beta reaches it at the standby's MAC, no node_down or
//!   reformation; the card comes back and the link fails back after
//!   `failback_hold` (or stays, with `auto_failback = false`);
//! - a failure on the bridge side that only the polls can see (the port
//!   removed from the bridge: `inout`; frames towards the card dropped:
//!   `inonly_or_inout` switches, `inout` does not);
//! - both cards down: the link is down and beta sees alpha down;
//! - a standby with an address of its own is refused by `check-config`;
//! - the agent makes both cards answer ARP only for their own addresses
//!   (the standby does not answer for the active card's), and puts the
//!   previous setting back when it stops;
//! - issue #12 row 3: a heartbeat interface deleted and recreated gets XDP
//!   and its socket back.
#![allow(
    unused_crate_dependencies,
    reason = "an integration test links every dependency of its package"
)]

mod support;

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    time::{Duration, Instant},
};

use heartbeat_tests::{Netns, VethPair, attach_xdp_pass, nft_egress_drop};
use support::{Cluster, Entry, EventKind, Node, NodeState, TempDir, agent_binary, wall_ns};

const A_ADDR: &str = "10.230.0.1";
const B_ADDR: &str = "10.230.0.2";

/// alpha's and beta's cards and their bridge ports.
struct Wires {
    /// alpha's link interface and its standby.
    a1: String,
    a2: String,
    /// beta's interface.
    b1: String,
    /// The bridge port of alpha's link interface (segment namespace).
    pa1: String,
}

struct Options {
    detection: &'static str,
    auto_failback: bool,
    /// beta's node_timeout.
    node_timeout: &'static str,
    /// The link is IPv6 (A6_ADDR, B6_ADDR).
    v6: bool,
    /// alpha's namespace sets `arp_ignore = 1` for all its cards itself
    /// (false: only the agent does, on the cards it owns).
    node_arp_ignore: bool,
}

const DEFAULT: Options = Options {
    detection: "inout",
    auto_failback: true,
    node_timeout: "500ms",
    v6: false,
    node_arp_ignore: true,
};

const A6_ADDR: &str = "fd00:230::1";
const B6_ADDR: &str = "fd00:230::2";

impl Options {
    fn addrs(&self) -> (&'static str, &'static str, u8) {
        if self.v6 {
            (A6_ADDR, B6_ADDR, 64)
        } else {
            (A_ADDR, B_ADDR, 24)
        }
    }
}

fn mac_of(ns: &Netns, ifname: &str) -> String {
    let out = ns.ip(&["-br", "link", "show", "dev", ifname]).unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.split_whitespace().nth(2).unwrap().to_owned()
}

fn has_addr(ns: &Netns, ifname: &str, addr: &str) -> bool {
    let out = ns.ip(&["-o", "addr", "show", "dev", ifname]).unwrap();
    String::from_utf8_lossy(&out.stdout).contains(&format!("inet {addr}/"))
}

fn has_inet6(ns: &Netns, ifname: &str, addr: &str) -> bool {
    let out = ns.ip(&["-o", "-6", "addr", "show", "dev", ifname]).unwrap();
    String::from_utf8_lossy(&out.stdout).contains(&format!("inet6 {addr}/"))
}

/// `ip route show PREFIX`.
fn route_dev(ns: &Netns, prefix: &str) -> String {
    let out = ns.ip(&["route", "show", prefix]).unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn wait_for(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Builds the segment, the two nodes and the configuration; starts nothing.
fn topology(o: &Options) -> (Cluster, Wires) {
    let seg = Netns::new("hbt").expect("segment netns");
    let a = Netns::new("hbt").expect("alpha netns");
    let b = Netns::new("hbt").expect("beta netns");
    seg.ip(&["link", "add", "br0", "type", "bridge"]).unwrap();
    seg.ip(&["link", "set", "br0", "up"]).unwrap();
    // A card answers ARP only for its own addresses (else the idle standby
    // answers for the active card's address with its own MAC, until the
    // agent sets it on the cards it owns).
    for key in ["all", "default"].into_iter().filter(|_| o.node_arp_ignore) {
        a.exec(&[
            "sysctl",
            "-qw",
            &format!("net.ipv4.conf.{key}.arp_ignore=1"),
        ])
        .unwrap();
    }
    let (a_addr, b_addr, plen) = o.addrs();
    let p1 = VethPair::connect(&a, &seg, format!("{a_addr}/{plen}"), Vec::<String>::new())
        .expect("alpha card 1");
    let p2 = VethPair::connect(&a, &seg, Vec::<String>::new(), Vec::<String>::new())
        .expect("alpha card 2");
    let pb = VethPair::connect(&b, &seg, format!("{b_addr}/{plen}"), Vec::<String>::new())
        .expect("beta card");
    let mut pass = Vec::new();
    for port in [&p1.if_b, &p2.if_b, &pb.if_b] {
        seg.ip(&["link", "set", port, "master", "br0"]).unwrap();
        // The bridge side receives XDP_TX frames: it needs XDP of its own.
        pass.push(attach_xdp_pass(&seg, port, heartbeat_agent::EBPF_OBJECT).expect("pass XDP"));
    }
    let ok = (0..25).any(|_| {
        b.exec(&["ping", "-c", "1", "-W", "1", "-i", "0.2", a_addr])
            .is_ok()
    });
    assert!(ok, "beta cannot reach alpha");

    let dir = TempDir::new("netif");
    let key = dir.0.join("cluster.key");
    fs::write(&key, "00112233445566778899aabbccddeeff\n").unwrap();
    fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();
    let hold = if o.auto_failback {
        "failback_hold = \"1s\"\n"
    } else {
        ""
    };
    let toml = format!(
        "[cluster]\nname = \"test\"\nid = 9\nkey_file = \"cluster.key\"\n\
         heartbeat_interval = \"10ms\"\nnode_timeout = \"{nt}\"\nagent_timeout = \"2s\"\n\
         events_file = \"{{node}}.events.jsonl\"\nstate_file = \"{{node}}.state\"\n\
         network_polling_interval = \"20ms\"\nnetwork_failure_detection = \"{det}\"\n\
         auto_failback = {afb}\n{hold}\n\
         [metrics]\nlisten = \"127.0.0.1:9465\"\n\n\
         [control]\nsocket = \"{{node}}.sock\"\n\n\
         [[node]]\nid = 1\nname = \"alpha\"\n  [[node.link]]\n  interface = \"{a1}\"\n  address = \"{a_addr}\"\n  standby = \"{a2}\"\n\n\
         [[node]]\nid = 2\nname = \"beta\"\n  [[node.link]]\n  interface = \"{b1}\"\n  address = \"{b_addr}\"\n",
        nt = o.node_timeout,
        det = o.detection,
        afb = o.auto_failback,
        a1 = p1.if_a,
        a2 = p2.if_a,
        b1 = pb.if_a,
    );
    let config = dir.0.join("cluster.toml");
    fs::write(&config, toml).unwrap();
    let wires = Wires {
        a1: p1.if_a.clone(),
        a2: p2.if_a.clone(),
        b1: pb.if_a.clone(),
        pa1: p1.if_b.clone(),
    };
    let node = |name: &str, ns: Netns, ifaces: Vec<String>| Node {
        name: name.to_owned(),
        ns,
        agent: None,
        ifaces,
        wires: Vec::new(),
    };
    let nodes = vec![
        node("alpha", a, vec![p1.if_a.clone()]),
        node("beta", b, vec![pb.if_a.clone()]),
        node("", seg, Vec::new()),
    ];
    (Cluster::from_parts(dir, config, nodes, 1, pass), wires)
}

fn alpha(c: &Cluster) -> &Netns {
    &c.nodes[0].ns
}
fn beta(c: &Cluster) -> &Netns {
    &c.nodes[1].ns
}
fn seg(c: &Cluster) -> &Netns {
    &c.nodes[2].ns
}

/// The first entry of `node` of `kind` (and `cause`, when given) at or
/// after `after` (wall ns).
fn find(
    c: &Cluster,
    node: &str,
    kind: EventKind,
    cause: Option<&str>,
    after: u64,
) -> Option<Entry> {
    c.journal(node).into_iter().find(|e| {
        e.event == kind && e.handled_wall_ns >= after && cause.is_none_or(|x| e.cause == x)
    })
}

#[track_caller]
fn wait_entry(
    c: &Cluster,
    node: &str,
    kind: EventKind,
    cause: Option<&str>,
    after: u64,
    within: Duration,
) -> Entry {
    let deadline = Instant::now() + within;
    loop {
        if let Some(e) = find(c, node, kind, cause, after) {
            return e;
        }
        assert!(
            Instant::now() < deadline,
            "{node}: no {kind:?} ({cause:?}) within {within:?}\njournal: {:#?}\nlog:\n{}",
            c.journal(node),
            c.log(node)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// No membership consequence on either node since `after`.
#[track_caller]
fn no_reformation(c: &Cluster, after: u64) {
    for n in ["alpha", "beta"] {
        for kind in [
            EventKind::NodeDown,
            EventKind::LinkDown,
            EventKind::Reformation,
        ] {
            assert!(
                find(c, n, kind, None, after).is_none(),
                "{n}: {kind:?} after the switch: {:#?}",
                c.journal(n)
            );
        }
    }
}

fn start(c: &mut Cluster) {
    c.start("alpha");
    c.start("beta");
    c.wait_all_up(Duration::from_secs(20));
}

/// The active card alpha's status reports for link 0 (waiting, bounded,
/// for the network manager's first report: the links can be up before it
/// has published one).
#[track_caller]
fn active_card(c: &Cluster) -> String {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(n) = c.status("alpha").nics.first() {
            return n.active.clone();
        }
        assert!(Instant::now() < end, "alpha reports no card for link 0");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// "in N us" of a nic_switched entry.
fn switch_us(e: &Entry) -> u64 {
    let d = e.detail.as_deref().unwrap_or_default();
    d.split(" in ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or(u64::MAX)
}

#[test]
fn carrier_loss_moves_the_address_to_the_standby_and_fails_back() {
    let (mut c, w) = topology(&DEFAULT);
    // A package address (IPv4, a secondary in the link's subnet), an IPv6
    // address and a static route through the card move with the link.
    let a = alpha(&c);
    a.ip(&["addr", "add", "10.230.0.100/24", "dev", &w.a1])
        .unwrap();
    a.ip(&["addr", "add", "fd00:230::1/64", "dev", &w.a1, "nodad"])
        .unwrap();
    a.ip(&["route", "add", "10.231.0.0/24", "via", B_ADDR, "dev", &w.a1])
        .unwrap();
    start(&mut c);
    assert_eq!(active_card(&c), w.a1);
    let mac2 = mac_of(alpha(&c), &w.a2);

    let t0 = wall_ns();
    alpha(&c).ip(&["link", "set", &w.a1, "down"]).unwrap();
    let e = wait_entry(
        &c,
        "alpha",
        EventKind::NicSwitched,
        Some("carrier"),
        t0,
        Duration::from_secs(5),
    );
    eprintln!("switch: {:?} ({} us)", e.detail, switch_us(&e));
    assert!(find(&c, "alpha", EventKind::NicFailed, Some("carrier"), t0).is_some());
    assert!(has_addr(alpha(&c), &w.a2, A_ADDR));
    assert!(!has_addr(alpha(&c), &w.a1, A_ADDR));
    assert!(has_addr(alpha(&c), &w.a2, "10.230.0.100"));
    assert!(has_inet6(alpha(&c), &w.a2, "fd00:230::1"));
    assert!(route_dev(alpha(&c), "10.231.0.0/24").contains(&w.a2));
    beta(&c)
        .exec(&["ping", "-c", "1", "-W", "2", "10.230.0.100"])
        .expect("beta reaches the package address after the switch");
    // beta reaches alpha's address at the standby's MAC.
    beta(&c)
        .exec(&["ping", "-c", "1", "-W", "2", A_ADDR])
        .expect("beta reaches alpha after the switch");
    wait_for(
        "beta's neighbour entry at the new MAC",
        Duration::from_secs(3),
        || {
            let out = beta(&c).ip(&["neigh", "show", A_ADDR]).unwrap();
            String::from_utf8_lossy(&out.stdout).contains(&mac2)
        },
    );
    // Heartbeats flow on the standby: beta keeps alpha up well past
    // node_timeout, and nothing reformed.
    std::thread::sleep(Duration::from_millis(1500));
    c.wait_state("beta", "alpha", NodeState::Up, Duration::from_secs(1));
    c.wait_state("alpha", "beta", NodeState::Up, Duration::from_secs(1));
    no_reformation(&c, t0);
    assert_eq!(active_card(&c), w.a2);
    let st = c.status("alpha");
    assert_eq!(st.nics[0].primary_state, "failed:carrier");
    assert_eq!(st.nics[0].switches_by_cause.get("carrier"), Some(&1));

    // The card comes back: recovered at the first clean polls, failback
    // after failback_hold (1 s).
    let t1 = wall_ns();
    alpha(&c).ip(&["link", "set", &w.a1, "up"]).unwrap();
    let rec = wait_entry(
        &c,
        "alpha",
        EventKind::NicRecovered,
        None,
        t1,
        Duration::from_secs(5),
    );
    let back = wait_entry(
        &c,
        "alpha",
        EventKind::NicSwitched,
        Some("failback"),
        t1,
        Duration::from_secs(6),
    );
    let held_ms = back.handled_wall_ns.saturating_sub(rec.handled_wall_ns) / 1_000_000;
    assert!(
        held_ms >= 950,
        "failback after {held_ms} ms, before failback_hold"
    );
    assert!(has_addr(alpha(&c), &w.a1, A_ADDR));
    assert!(!has_addr(alpha(&c), &w.a2, A_ADDR));
    assert!(has_addr(alpha(&c), &w.a1, "10.230.0.100"));
    assert!(has_inet6(alpha(&c), &w.a1, "fd00:230::1"));
    assert!(route_dev(alpha(&c), "10.231.0.0/24").contains(&w.a1));
    std::thread::sleep(Duration::from_millis(800));
    c.wait_state("beta", "alpha", NodeState::Up, Duration::from_secs(1));
    no_reformation(&c, t0);
    assert_eq!(active_card(&c), w.a1);

    // A stopped agent leaves no attachment on either card.
    let st = c
        .agent("alpha")
        .shutdown(Duration::from_secs(10))
        .expect("stop alpha");
    assert!(st.success(), "{}", c.log("alpha"));
    for card in [&w.a1, &w.a2] {
        assert!(
            !heartbeat_tests::xdp_attached(alpha(&c), card),
            "XDP left on {card}"
        );
    }
    let tcx = heartbeat_tests::tcx_attachments(Some(alpha(&c).name())).expect("tcx");
    assert!(tcx.is_empty(), "tc programs left: {tcx:?}");
}

#[test]
fn no_failback_without_auto_failback() {
    let (mut c, w) = topology(&Options {
        auto_failback: false,
        ..DEFAULT
    });
    start(&mut c);
    let t0 = wall_ns();
    alpha(&c).ip(&["link", "set", &w.a1, "down"]).unwrap();
    wait_entry(
        &c,
        "alpha",
        EventKind::NicSwitched,
        Some("carrier"),
        t0,
        Duration::from_secs(5),
    );
    let t1 = wall_ns();
    alpha(&c).ip(&["link", "set", &w.a1, "up"]).unwrap();
    wait_entry(
        &c,
        "alpha",
        EventKind::NicRecovered,
        None,
        t1,
        Duration::from_secs(5),
    );
    std::thread::sleep(Duration::from_secs(2));
    assert!(find(&c, "alpha", EventKind::NicSwitched, None, t1).is_none());
    assert_eq!(active_card(&c), w.a2);
    assert!(has_addr(alpha(&c), &w.a2, A_ADDR));
    no_reformation(&c, t0);
}

/// The bridge port of the active card leaves the bridge: the card keeps
/// its carrier; only the polls can tell.
#[test]
fn a_cut_on_the_bridge_side_is_seen_by_the_polls() {
    let (mut c, w) = topology(&DEFAULT);
    start(&mut c);
    let t0 = wall_ns();
    seg(&c).ip(&["link", "set", &w.pa1, "nomaster"]).unwrap();
    let e = wait_entry(
        &c,
        "alpha",
        EventKind::NicSwitched,
        Some("poll_out"),
        t0,
        Duration::from_secs(5),
    );
    let after_ms = e.handled_wall_ns.saturating_sub(t0) / 1_000_000;
    eprintln!(
        "poll-detected switch {after_ms} ms after the cut: {:?}",
        e.detail
    );
    // 3 polling intervals (60 ms) plus the switch, with slack for a loaded
    // machine.
    assert!(after_ms < 400, "switch {after_ms} ms after the cut");
    assert!(has_addr(alpha(&c), &w.a2, A_ADDR));
    std::thread::sleep(Duration::from_millis(1000));
    c.wait_state("beta", "alpha", NodeState::Up, Duration::from_secs(1));
    no_reformation(&c, t0);

    // Back in the bridge: recovered, and failback after the hold.
    let t1 = wall_ns();
    seg(&c)
        .ip(&["link", "set", &w.pa1, "master", "br0"])
        .unwrap();
    wait_entry(
        &c,
        "alpha",
        EventKind::NicSwitched,
        Some("failback"),
        t1,
        Duration::from_secs(8),
    );
    assert!(has_addr(alpha(&c), &w.a1, A_ADDR));
}

/// Frames towards the active card are dropped, its own still leave:
/// `inonly_or_inout` switches (poll_in), `inout` does not.
#[test]
fn an_inbound_only_failure_depends_on_the_detection_mode() {
    for (detection, switches) in [("inonly_or_inout", true), ("inout", false)] {
        let (mut c, w) = topology(&Options {
            detection,
            ..DEFAULT
        });
        start(&mut c);
        let t0 = wall_ns();
        let guard = nft_egress_drop(seg(&c), &w.pa1).expect("drop towards the card");
        if switches {
            wait_entry(
                &c,
                "alpha",
                EventKind::NicSwitched,
                Some("poll_in"),
                t0,
                Duration::from_secs(5),
            );
            assert!(has_addr(alpha(&c), &w.a2, A_ADDR));
            std::thread::sleep(Duration::from_millis(1000));
            c.wait_state("alpha", "beta", NodeState::Up, Duration::from_secs(1));
            no_reformation(&c, t0);
        } else {
            std::thread::sleep(Duration::from_millis(1500));
            assert!(
                find(&c, "alpha", EventKind::NicSwitched, None, t0).is_none(),
                "inout switched on an inbound-only failure: {:#?}",
                c.journal("alpha")
            );
            assert!(has_addr(alpha(&c), &w.a1, A_ADDR));
        }
        guard.remove().expect("remove the fault");
    }
}

#[test]
fn both_cards_down_is_link_down() {
    let (mut c, w) = topology(&DEFAULT);
    start(&mut c);
    let t0 = wall_ns();
    alpha(&c).ip(&["link", "set", &w.a1, "down"]).unwrap();
    wait_entry(
        &c,
        "alpha",
        EventKind::NicSwitched,
        Some("carrier"),
        t0,
        Duration::from_secs(5),
    );
    alpha(&c).ip(&["link", "set", &w.a2, "down"]).unwrap();
    wait_entry(
        &c,
        "alpha",
        EventKind::NicFailed,
        Some("both"),
        t0,
        Duration::from_secs(5),
    );
    assert!(
        c.wait_event(
            "beta",
            EventKind::NodeDown,
            "alpha",
            t0,
            Duration::from_secs(5)
        )
        .is_some()
    );
    assert!(c.status("alpha").nics[0].link_down);
    // The standby comes back first and carries the link again.
    let t1 = wall_ns();
    alpha(&c).ip(&["link", "set", &w.a2, "up"]).unwrap();
    wait_entry(
        &c,
        "alpha",
        EventKind::NicRecovered,
        None,
        t1,
        Duration::from_secs(5),
    );
    c.wait_state("beta", "alpha", NodeState::Up, Duration::from_secs(10));
}

#[test]
fn a_standby_with_an_address_is_refused() {
    let (c, w) = topology(&DEFAULT);
    alpha(&c)
        .ip(&["addr", "add", "10.230.0.99/24", "dev", &w.a2])
        .unwrap();
    let out = alpha(&c)
        .exec_unchecked(&[
            agent_binary().to_str().unwrap(),
            "check-config",
            c.config.to_str().unwrap(),
            "--node",
            "alpha",
        ])
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("key `node[0].link[0].standby`") && err.contains("10.230.0.99"),
        "{err}"
    );
}

/// A bpffs mounted in a scratch directory (`ip netns exec` hides the
/// host's): the old and the new agent of an announced restart share it.
/// Dropping it detaches and removes every pin under it and unmounts it.
struct Bpffs {
    dir: std::path::PathBuf,
}

impl Bpffs {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("hb-test-netif-bpffs-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let st = std::process::Command::new("mount")
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

/// An announced restart while the link is on the standby: the new agent
/// finds the address there and carries on with the standby active.
#[test]
fn a_restart_on_the_standby_resumes_there() {
    let bpffs = Bpffs::new();
    let (mut c, w) = topology(&Options {
        auto_failback: false,
        ..DEFAULT
    });
    let env = bpffs.env();
    c.start_prefixed("alpha", &["env", &env]);
    c.start_prefixed("beta", &["env", &env]);
    c.wait_all_up(Duration::from_secs(20));
    let t0 = wall_ns();
    alpha(&c).ip(&["link", "set", &w.a1, "down"]).unwrap();
    wait_entry(
        &c,
        "alpha",
        EventKind::NicSwitched,
        Some("carrier"),
        t0,
        Duration::from_secs(5),
    );
    let out = c.cli("alpha", &["restart"]);
    assert!(out.status.success(), "{}", c.log("alpha"));
    let status = c
        .agent("alpha")
        .wait_timeout(Duration::from_secs(10))
        .expect("wait")
        .expect("the agent did not exit after announcing its restart");
    assert_eq!(status.code(), Some(75), "{}", c.log("alpha"));
    c.nodes[0].agent = None;
    let t1 = wall_ns();
    c.start_prefixed("alpha", &["env", &env]);
    wait_for("alpha's new agent", Duration::from_secs(10), || {
        c.try_status("alpha").is_some_and(|s| !s.nics.is_empty())
    });
    assert_eq!(active_card(&c), w.a2, "{}", c.log("alpha"));
    assert!(has_addr(alpha(&c), &w.a2, A_ADDR));
    std::thread::sleep(Duration::from_millis(1000));
    assert!(find(&c, "alpha", EventKind::NicSwitched, None, t1).is_none());
    assert!(find(&c, "beta", EventKind::NodeDown, None, t0).is_none());
    c.wait_state("beta", "alpha", NodeState::Up, Duration::from_secs(5));
}

/// Issue #12 row 3: beta's heartbeat interface is deleted and recreated
/// (same name and address): XDP is attached again, the socket re-bound,
/// status truthful in between, the peers see beta again, and it is logged
/// and counted (status and metrics).
#[test]
fn a_deleted_and_recreated_interface_recovers() {
    let (mut c, w) = topology(&DEFAULT);
    start(&mut c);
    let b = beta(&c);
    let port = format!("{}b", w.b1.trim_end_matches('a'));
    b.ip(&["link", "del", "dev", &w.b1]).unwrap();
    wait_for(
        "status without the deleted interface",
        Duration::from_secs(5),
        || {
            c.try_status("beta")
                .is_some_and(|s| !s.agent.xdp.iter().any(|(i, _)| *i == w.b1))
        },
    );
    let iface = |c: &Cluster| {
        c.status("beta")
            .interfaces
            .into_iter()
            .find(|i| i.name == w.b1)
            .expect("the interface in status")
    };
    wait_for("the deletion counted", Duration::from_secs(5), || {
        let i = iface(&c);
        i.index.is_none() && i.deleted == 1 && i.recreated == 0
    });
    b.ip(&[
        "link",
        "add",
        &w.b1,
        "type",
        "veth",
        "peer",
        "name",
        &port,
        "netns",
        seg(&c).name(),
    ])
    .unwrap();
    seg(&c)
        .ip(&["link", "set", &port, "master", "br0"])
        .unwrap();
    let _pass = attach_xdp_pass(seg(&c), &port, heartbeat_agent::EBPF_OBJECT).expect("pass XDP");
    seg(&c).ip(&["link", "set", &port, "up"]).unwrap();
    b.ip(&["addr", "add", &format!("{B_ADDR}/24"), "dev", &w.b1])
        .unwrap();
    b.ip(&["link", "set", &w.b1, "up"]).unwrap();
    wait_for("XDP attached again", Duration::from_secs(5), || {
        c.try_status("beta")
            .is_some_and(|s| s.agent.xdp.iter().any(|(i, _)| *i == w.b1))
    });
    assert!(heartbeat_tests::xdp_attached(b, &w.b1));
    // Heartbeats flow again both ways, for longer than node_timeout (a
    // socket still bound to the dead index sends nothing).
    c.wait_state("alpha", "beta", NodeState::Up, Duration::from_secs(15));
    std::thread::sleep(Duration::from_millis(1500));
    c.wait_state("alpha", "beta", NodeState::Up, Duration::from_secs(1));
    c.wait_state("beta", "alpha", NodeState::Up, Duration::from_secs(15));
    assert!(c.log("beta").contains("re)created"), "{}", c.log("beta"));
    let i = iface(&c);
    assert!(
        i.index.is_some() && i.deleted == 1 && i.recreated == 1,
        "{i:?}"
    );
    let body = support::http_get(b, "127.0.0.1:9465", "/metrics");
    for want in [
        format!("heartbeat_interface_present{{interface=\"{}\"}} 1", w.b1),
        format!(
            "heartbeat_interface_deleted_total{{interface=\"{}\"}} 1",
            w.b1
        ),
        format!(
            "heartbeat_interface_recreated_total{{interface=\"{}\"}} 1",
            w.b1
        ),
    ] {
        assert!(body.contains(&want), "{want}\n{body}");
    }
}

/// The standby card disappears at run time: reported, and the link keeps
/// running on its own card.
#[test]
fn a_standby_that_disappears_is_reported() {
    let (mut c, w) = topology(&DEFAULT);
    start(&mut c);
    let t0 = wall_ns();
    alpha(&c).ip(&["link", "del", "dev", &w.a2]).unwrap();
    let e = wait_entry(
        &c,
        "alpha",
        EventKind::NicFailed,
        Some("carrier"),
        t0,
        Duration::from_secs(5),
    );
    assert!(
        e.detail.as_deref().unwrap_or_default().contains("standby"),
        "{e:?}"
    );
    std::thread::sleep(Duration::from_millis(1000));
    assert!(find(&c, "alpha", EventKind::NicSwitched, None, t0).is_none());
    assert_eq!(active_card(&c), w.a1);
    assert_eq!(c.status("alpha").nics[0].standby_state, "failed:carrier");
    assert!(has_addr(alpha(&c), &w.a1, A_ADDR));
    c.wait_state("beta", "alpha", NodeState::Up, Duration::from_secs(1));
    no_reformation(&c, t0);
}

/// The same on an IPv6 link: the address moves (no duplicate address
/// detection: it is ours), an unsolicited neighbour advertisement updates
/// beta's neighbour cache, heartbeats flow on the standby.
#[test]
fn an_ipv6_link_moves_too() {
    let (mut c, w) = topology(&Options {
        v6: true,
        ..DEFAULT
    });
    start(&mut c);
    let mac2 = mac_of(alpha(&c), &w.a2);
    let t0 = wall_ns();
    alpha(&c).ip(&["link", "set", &w.a1, "down"]).unwrap();
    wait_entry(
        &c,
        "alpha",
        EventKind::NicSwitched,
        Some("carrier"),
        t0,
        Duration::from_secs(5),
    );
    assert!(has_inet6(alpha(&c), &w.a2, A6_ADDR));
    wait_for(
        "beta's neighbour entry at the new MAC",
        Duration::from_secs(3),
        || {
            let out = beta(&c).ip(&["-6", "neigh", "show", A6_ADDR]).unwrap();
            String::from_utf8_lossy(&out.stdout).contains(&mac2)
        },
    );
    std::thread::sleep(Duration::from_millis(1500));
    c.wait_state("beta", "alpha", NodeState::Up, Duration::from_secs(1));
    c.wait_state("alpha", "beta", NodeState::Up, Duration::from_secs(1));
    no_reformation(&c, t0);
}

/// `net.ipv4.conf.CARD.arp_ignore` in `ns`.
fn arp_ignore(ns: &Netns, card: &str) -> String {
    let out = ns
        .exec(&["sysctl", "-n", &format!("net.ipv4.conf.{card}.arp_ignore")])
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn parse_mac(s: &str) -> [u8; 6] {
    let v: Vec<u8> = s
        .split(':')
        .map(|x| u8::from_str_radix(x, 16).unwrap())
        .collect();
    v.try_into().unwrap()
}

/// Broadcasts an ARP request for `target` from `ifname` (MAC `mac`,
/// address `sender`) in `ns` and returns the sender MAC of every reply
/// within 300 ms.
fn arp_answers(ns: &Netns, ifname: &str, mac: [u8; 6], sender: &str, target: &str) -> Vec<[u8; 6]> {
    use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
    let sender: std::net::Ipv4Addr = sender.parse().unwrap();
    let target: std::net::Ipv4Addr = target.parse().unwrap();
    let ifname = ifname.to_owned();
    heartbeat_tests::in_netns(ns.name(), move || {
        let proto = (libc::ETH_P_ARP as u16).to_be();
        // SAFETY: plain socket(2); checked and owned below.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                proto.into(),
            )
        };
        assert!(
            fd >= 0,
            "packet socket: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: a fresh descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let index = nix::net::if_::if_nametoindex(ifname.as_str()).unwrap();
        // SAFETY: sockaddr_ll is plain old data; all-zero is valid.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = proto;
        sll.sll_ifindex = index as i32;
        sll.sll_halen = 6;
        sll.sll_addr[..6].copy_from_slice(&[0xff; 6]);
        let len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        // SAFETY: `sll` is valid for its size.
        let rc = unsafe { libc::bind(fd.as_raw_fd(), (&raw const sll).cast(), len) };
        assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
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
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        let mut f = Vec::with_capacity(42);
        f.extend_from_slice(&[0xff; 6]);
        f.extend_from_slice(&mac);
        f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0x00, 6, 4, 0, 1]);
        f.extend_from_slice(&mac);
        f.extend_from_slice(&sender.octets());
        f.extend_from_slice(&[0; 6]);
        f.extend_from_slice(&target.octets());
        // SAFETY: the frame and `sll` are valid for their lengths.
        let rc = unsafe {
            libc::sendto(
                fd.as_raw_fd(),
                f.as_ptr().cast(),
                f.len(),
                0,
                (&raw const sll).cast(),
                len,
            )
        };
        assert!(rc > 0, "send: {}", std::io::Error::last_os_error());
        let mut answers = Vec::new();
        let end = Instant::now() + Duration::from_millis(300);
        let mut buf = [0u8; 1514];
        while Instant::now() < end {
            // SAFETY: the buffer is valid for its length.
            let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 42 {
                continue;
            }
            let r = &buf[..n as usize];
            if r[12..14] == [0x08, 0x06] && r[20..22] == [0, 2] && r[28..32] == target.octets() {
                let mut sha = [0u8; 6];
                sha.copy_from_slice(&r[22..28]);
                if !answers.contains(&sha) {
                    answers.push(sha);
                }
            }
        }
        answers
    })
    .unwrap()
}

/// The node leaves ARP at Linux's default (every card answers for every
/// address of the host): the agent sets `arp_ignore = 1` on both cards, so
/// before any switch only the active card answers for its address, and it
/// puts the previous values back when it stops.
#[test]
fn the_standby_does_not_answer_arp_for_the_active_card_s_address() {
    let (mut c, w) = topology(&Options {
        node_arp_ignore: false,
        ..DEFAULT
    });
    let (mac1, mac2) = (
        parse_mac(&mac_of(alpha(&c), &w.a1)),
        parse_mac(&mac_of(alpha(&c), &w.a2)),
    );
    let macb = parse_mac(&mac_of(beta(&c), &w.b1));
    for card in [&w.a1, &w.a2] {
        assert_eq!(arp_ignore(alpha(&c), card), "0");
    }
    // Without the agent, the idle standby answers too (what the agent
    // prevents; also proves that the probe sees it).
    let answers = arp_answers(beta(&c), &w.b1, macb, B_ADDR, A_ADDR);
    assert!(
        answers.contains(&mac1) && answers.contains(&mac2),
        "{answers:x?}"
    );

    c.start("alpha");
    wait_for(
        "arp_ignore on alpha's cards",
        Duration::from_secs(10),
        || {
            [&w.a1, &w.a2]
                .iter()
                .all(|card| arp_ignore(alpha(&c), card) == "1")
        },
    );
    // beta may have learnt the standby's MAC from the probe above.
    beta(&c).ip(&["neigh", "flush", "dev", &w.b1]).unwrap();
    c.start("beta");
    c.wait_all_up(Duration::from_secs(20));
    for _ in 0..3 {
        let answers = arp_answers(beta(&c), &w.b1, macb, B_ADDR, A_ADDR);
        assert_eq!(answers, vec![mac1], "standby {mac2:x?}");
    }
    assert_eq!(active_card(&c), w.a1);

    c.agent("alpha").terminate().unwrap();
    c.agent("alpha")
        .wait_timeout(Duration::from_secs(10))
        .expect("wait")
        .expect("alpha's agent did not stop");
    c.nodes[0].agent = None;
    for card in [&w.a1, &w.a2] {
        assert_eq!(arp_ignore(alpha(&c), card), "0", "{card} left changed");
    }
}
