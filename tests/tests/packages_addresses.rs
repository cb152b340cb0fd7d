//! A package's addresses in namespaces: added and removed through
//! rtnetlink (idempotently), answered to a peer, and announced so that the
//! peer's neighbour cache, which still points at a previous owner's MAC,
//! learns this node's MAC (IPv4: ARP announcement; IPv6: unsolicited NA).
#![allow(
    unused_crate_dependencies,
    reason = "an integration test links every dependency of its package"
)]

use std::time::{Duration, Instant};

use heartbeat_agent::packages::addresses::{Added, Addresses, PackageAddress, Removed, announce};
use heartbeat_tests::{Netns, VethPair, in_netns};

/// A MAC no interface here has: the "previous owner".
const OLD_MAC: &str = "02:00:00:00:be:ef";

fn mac_of(ns: &Netns, ifname: &str) -> String {
    let out = ns.ip(&["-br", "link", "show", "dev", ifname]).unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.split_whitespace().nth(2).unwrap().to_owned()
}

/// The peer's neighbour entry for `addr`, e.g. `10.0.0.1 dev x lladdr .. STALE`.
fn neigh(ns: &Netns, addr: &str) -> String {
    let out = ns.ip(&["neigh", "show", addr]).unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn wait_for(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `f` with a current-thread runtime on a thread inside `ns`.
fn in_ns<T: Send>(ns: &Netns, f: impl AsyncFnOnce(&Addresses) -> T + Send) -> T {
    in_netns(ns.name(), || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let addrs = Addresses::new().unwrap();
            f(&addrs).await
        })
    })
    .unwrap()
}

#[test]
fn addresses_are_added_announced_and_removed() {
    let node = Netns::new("hbaddrnode").unwrap();
    let peer = Netns::new("hbaddrpeer").unwrap();
    let veth = VethPair::connect(
        &node,
        &peer,
        ["10.232.0.1/24", "fd00:232::1/64"],
        ["10.232.0.2/24", "fd00:232::2/64"],
    )
    .unwrap();
    let node_mac = mac_of(&node, &veth.if_a);
    let v4: PackageAddress = format!("10.232.0.100/24 dev {}", veth.if_a)
        .parse()
        .unwrap();
    let v6: PackageAddress = format!("fd00:232::100/64 dev {}", veth.if_a)
        .parse()
        .unwrap();

    // The peer still believes a previous owner holds both addresses.
    for a in ["10.232.0.100", "fd00:232::100"] {
        peer.ip(&[
            "neigh", "replace", a, "lladdr", OLD_MAC, "dev", &veth.if_b, "nud", "stale",
        ])
        .unwrap();
        assert!(neigh(&peer, a).contains(OLD_MAC));
    }

    let (added, again, present) = in_ns(&node, async |addrs| {
        let added = (addrs.add(&v4).await.unwrap(), addrs.add(&v6).await.unwrap());
        let again = (addrs.add(&v4).await.unwrap(), addrs.add(&v6).await.unwrap());
        let present = (
            addrs.present(&v4).await.unwrap(),
            addrs.present(&v6).await.unwrap(),
        );
        (added, again, present)
    });
    assert_eq!(added, (Added::New, Added::New));
    assert_eq!(again, (Added::AlreadyPresent, Added::AlreadyPresent));
    assert_eq!(present, (true, true));
    let shown = node.ip(&["-o", "addr", "show", "dev", &veth.if_a]).unwrap();
    let shown = String::from_utf8_lossy(&shown.stdout).into_owned();
    assert!(shown.contains("10.232.0.100/24"), "{shown}");
    assert!(shown.contains("fd00:232::100/64"), "{shown}");
    let v6_line = shown
        .lines()
        .find(|l| l.contains("fd00:232::100/64"))
        .unwrap();
    assert!(
        v6_line.contains("nodad") && !v6_line.contains("tentative"),
        "IPv6 must skip DAD: {v6_line}"
    );

    // Control: adding the addresses alone does not tell the peer.
    std::thread::sleep(Duration::from_millis(300));
    for a in ["10.232.0.100", "fd00:232::100"] {
        assert!(neigh(&peer, a).contains(OLD_MAC), "{}", neigh(&peer, a));
    }
    let sent = in_ns(&node, async |addrs| {
        (
            announce(addrs, &v4, 3, Duration::from_millis(10))
                .await
                .unwrap(),
            announce(addrs, &v6, 3, Duration::from_millis(10))
                .await
                .unwrap(),
        )
    });
    assert_eq!(sent, (3, 3));
    for a in ["10.232.0.100", "fd00:232::100"] {
        wait_for(
            &format!("the peer to learn {a} at {node_mac}"),
            Duration::from_secs(5),
            || neigh(&peer, a).contains(&node_mac),
        );
    }
    // And the address answers there.
    let ping = peer
        .exec_unchecked(&["ping", "-c", "1", "-W", "2", "10.232.0.100"])
        .unwrap();
    assert!(ping.status.success());

    let (removed, again, present) = in_ns(&node, async |addrs| {
        let removed = (
            addrs.remove(&v4).await.unwrap(),
            addrs.remove(&v6).await.unwrap(),
        );
        let again = (
            addrs.remove(&v4).await.unwrap(),
            addrs.remove(&v6).await.unwrap(),
        );
        let present = (
            addrs.present(&v4).await.unwrap(),
            addrs.present(&v6).await.unwrap(),
        );
        (removed, again, present)
    });
    assert_eq!(removed, (Removed::Removed, Removed::Removed));
    assert_eq!(again, (Removed::NotPresent, Removed::NotPresent));
    assert_eq!(present, (false, false));
    let shown = node.ip(&["-o", "addr", "show", "dev", &veth.if_a]).unwrap();
    let shown = String::from_utf8_lossy(&shown.stdout).into_owned();
    assert!(!shown.contains("10.232.0.100") && !shown.contains("fd00:232::100"));
    // The interface's own addresses are untouched.
    assert!(shown.contains("10.232.0.1/24") && shown.contains("fd00:232::1/64"));
}

#[test]
fn a_missing_interface_is_a_clear_error() {
    let node = Netns::new("hbaddrmiss").unwrap();
    let a: PackageAddress = "10.233.0.100/24 dev nosuchdev0".parse().unwrap();
    let err = in_ns(&node, async |addrs| {
        addrs.add(&a).await.unwrap_err().to_string()
    });
    assert_eq!(err, "no interface `nosuchdev0`");
}
