//! Tests of the namespace harness itself: veth connectivity (IPv4 and IPv6),
//! nftables egress fault injection, and that every guard cleans up, also on
//! panic. Needs root.
#![allow(
    unused_crate_dependencies,
    reason = "an integration test links every dependency of its package"
)]

use std::{
    process::Command,
    time::{Duration, Instant},
};

use heartbeat_tests::{
    ChildGuard, HarnessError, Netns, Signal, VethPair, add_address, leftovers, nft_egress_drop,
    nft_egress_rule, set_link, xdp_attached,
};

fn netns_exists(name: &str) -> bool {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.split_whitespace().next() == Some(name))
}

fn ping_ok(ns: &Netns, addr: &str) -> bool {
    ns.exec_unchecked(&["ping", "-n", "-q", "-c", "1", "-W", "1", addr])
        .expect("run ping")
        .status
        .success()
}

fn pid_alive(pid: u32) -> bool {
    // A zombie is not "alive" for our purposes: its memory and sockets are gone.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            let state = s
                .rsplit(')')
                .next()
                .and_then(|r| r.split_whitespace().next());
            !matches!(state, Some("Z" | "X") | None)
        })
        .unwrap_or(false)
}

#[test]
fn ping_across_veth_ipv4_and_ipv6() {
    let a = Netns::new("hb").unwrap();
    let b = Netns::new("hb").unwrap();
    let pair = VethPair::connect(
        &a,
        &b,
        ["10.200.1.1", "fd00:200::1"],
        ["10.200.1.2/24", "fd00:200::2/64"],
    )
    .unwrap();
    assert!(pair.if_a.len() <= 15 && pair.if_b.len() <= 15);
    assert!(ping_ok(&a, "10.200.1.2"));
    assert!(ping_ok(&b, "10.200.1.1"));
    assert!(ping_ok(&a, "fd00:200::2"));

    // A second address added later is usable at once.
    add_address(&b, &pair.if_b, "10.200.2.2").unwrap();
    add_address(&a, &pair.if_a, "10.200.2.1").unwrap();
    assert!(ping_ok(&a, "10.200.2.2"));

    // Link down breaks connectivity, up restores it.
    set_link(&b, &pair.if_b, false).unwrap();
    assert!(!ping_ok(&a, "10.200.1.2"));
    set_link(&b, &pair.if_b, true).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !ping_ok(&a, "10.200.1.2") {
        assert!(Instant::now() < deadline, "link did not come back");
    }
    assert!(!xdp_attached(&a, &pair.if_a));
    assert!(!xdp_attached(&a, "nosuchif"));
}

#[test]
fn nft_egress_drop_is_silent_and_removable() {
    let a = Netns::new("hb").unwrap();
    let b = Netns::new("hb").unwrap();
    let pair = VethPair::connect(&a, &b, "10.200.1.1", "10.200.1.2").unwrap();
    assert!(ping_ok(&a, "10.200.1.2"));

    let guard = nft_egress_drop(&a, &pair.if_a).unwrap();
    assert!(!ping_ok(&a, "10.200.1.2"));
    // b's pings reach a, but a's replies are dropped.
    assert!(!ping_ok(&b, "10.200.1.1"));
    guard.remove().unwrap();
    assert!(ping_ok(&a, "10.200.1.2"));

    // Dropping the guard removes the table too.
    {
        let _guard = nft_egress_drop(&b, &pair.if_b).unwrap();
        assert!(!ping_ok(&a, "10.200.1.2"));
    }
    assert!(ping_ok(&a, "10.200.1.2"));

    // A selective rule: ICMP dropped, so ping fails while the table exists.
    let sel = nft_egress_rule(&a, &pair.if_a, "meta l4proto icmp drop").unwrap();
    assert!(!ping_ok(&a, "10.200.1.2"));
    drop(sel);
    assert!(ping_ok(&a, "10.200.1.2"));
}

#[test]
fn dropping_guards_removes_namespaces_and_processes() {
    let ns = Netns::new("hb").unwrap();
    let name = ns.name().to_owned();
    assert!(name.starts_with("hb"));
    assert!(netns_exists(&name));
    assert!(leftovers().contains(&name));

    // A process the test forgot about (not under a ChildGuard) is killed
    // with the namespace.
    let mut orphan = Command::new("ip")
        .args(["netns", "exec", &name, "sleep", "30"])
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while ns.pids().unwrap().is_empty() {
        assert!(
            Instant::now() < deadline,
            "sleep never showed up in the namespace"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    drop(ns);
    assert!(!netns_exists(&name));
    assert!(!leftovers().contains(&name));
    let status = orphan.wait().unwrap();
    assert!(!status.success(), "sleep should have been killed");
}

#[test]
fn panic_still_cleans_up() {
    let mut names = Vec::new();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let a = Netns::new("hb").unwrap();
        let b = Netns::new("hbpanic").unwrap();
        names.push(a.name().to_owned());
        names.push(b.name().to_owned());
        let pair = VethPair::connect(&a, &b, "10.200.1.1", "10.200.1.2").unwrap();
        let _nft = nft_egress_drop(&a, &pair.if_a).unwrap();
        let _child = a.spawn_args(&["sleep", "30"]).unwrap();
        panic!("test panic");
    }));
    assert!(result.is_err());
    assert_eq!(names.len(), 2);
    for name in &names {
        assert!(!netns_exists(name), "{name} survived the panic");
    }
}

#[test]
fn child_guard_signals_and_drop() {
    let ns = Netns::new("hb").unwrap();

    // Stop / continue / terminate.
    let mut child = ns.spawn_args(&["sleep", "30"]).unwrap();
    let pid = child.pid();
    child.stop().unwrap();
    child.cont().unwrap();
    assert!(child.is_running());
    assert!(
        child
            .wait_timeout(Duration::from_millis(50))
            .unwrap()
            .is_none()
    );
    child.terminate().unwrap();
    let status = child.wait_timeout(Duration::from_secs(2)).unwrap();
    assert!(status.is_some(), "sleep ignored SIGTERM");
    assert!(matches!(
        child.signal(Signal::SIGTERM),
        Err(HarnessError::NotRunning { .. })
    ));
    assert!(!pid_alive(pid));

    // Drop of a stopped child that ignores SIGTERM: SIGKILL after the grace.
    let mut cmd = ns.command("sh");
    cmd.args(["-c", "trap '' TERM; exec sleep 30"]);
    let mut stubborn = ns.spawn(&mut cmd).unwrap();
    let pid = stubborn.pid();
    // Wait until SIGTERM is ignored (the trap is installed; `exec` keeps
    // it): a fixed sleep was too short once on a loaded machine.
    let ignores_term = || {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                let mask = s.lines().find_map(|l| l.strip_prefix("SigIgn:"))?.trim();
                u64::from_str_radix(mask, 16).ok()
            })
            .is_some_and(|m| m & (1 << (libc::SIGTERM - 1)) != 0)
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ignores_term() {
        assert!(Instant::now() < deadline, "sh never ignored SIGTERM");
        std::thread::sleep(Duration::from_millis(5));
    }
    stubborn.stop().unwrap();
    let start = Instant::now();
    drop(stubborn);
    let took = start.elapsed();
    assert!(!pid_alive(pid));
    assert!(
        took >= Duration::from_millis(1900),
        "killed too early: {took:?}"
    );
    assert!(took < Duration::from_secs(4), "took too long: {took:?}");

    // Commands not built by this namespace are refused.
    let mut plain = Command::new("true");
    assert!(matches!(
        ns.spawn(&mut plain),
        Err(HarnessError::NotInNamespace { .. })
    ));

    // Root-namespace child guard.
    let mut root = ChildGuard::spawn(Command::new("sleep").arg("30")).unwrap();
    let status = root.kill().unwrap();
    assert!(!status.success());
}

#[test]
fn bad_inputs_are_errors() {
    let a = Netns::new("hb").unwrap();
    assert!(matches!(
        Netns::new("bad name"),
        Err(HarnessError::BadName(_))
    ));
    assert!(matches!(
        VethPair::connect(&a, &a, "10.200.1.300", "10.200.1.2"),
        Err(HarnessError::BadAddress(_))
    ));
    assert!(matches!(
        nft_egress_drop(&a, "x\"; flush ruleset"),
        Err(HarnessError::BadName(_))
    ));
    assert!(matches!(
        a.exec(&["false"]),
        Err(HarnessError::Failed { .. })
    ));
    // Both ends in one namespace is allowed.
    let pair = VethPair::connect(&a, &a, "10.200.1.1", "10.200.1.2").unwrap();
    pair.delete().unwrap();
}
