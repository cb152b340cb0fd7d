//! The two-node topology shared with the benchmark: the plain wiring is one
//! veth pair with pfifo_fast on both ends and nothing else in A's data
//! path, the generator reaches B through A, nodes are pinned when the
//! machine has two CPUs, and everything disappears with the guard. Needs
//! root. (The bridged wiring needs the agent's XDP object; the benchmark's
//! smoke run exercises it.)
#![allow(
    unused_crate_dependencies,
    reason = "an integration test links every dependency of its package"
)]

use heartbeat_tests::{
    leftovers,
    topology::{IP_B, Placement, Side, TwoNodes, Wiring},
};

#[test]
fn plain_two_nodes() {
    let placement = Placement::detect();
    let topo = TwoNodes::new(Wiring::Plain, &[], placement).expect("plain topology");
    let names: Vec<String> = [Side::A, Side::B, Side::Generator]
        .iter()
        .map(|s| topo.netns(*s).name().to_owned())
        .collect();

    // pfifo_fast on both node interfaces, as on a NIC.
    for (ns, dev) in [(&topo.a, &topo.if_a), (&topo.b, &topo.if_b)] {
        let out = ns.exec(&["tc", "qdisc", "show", "dev", dev]).unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("pfifo_fast"), "{dev}: {text}");
    }
    // No bridge and no wire port in A: its only links are lo, the link to
    // B and the one to the generator.
    assert!(topo.wire_a.is_none());
    let out = topo.a.ip(&["-o", "link", "show"]).unwrap();
    let links = String::from_utf8_lossy(&out.stdout);
    assert_eq!(links.lines().count(), 3, "{links}");
    assert!(
        !links.contains("bridge") && !links.contains("br0"),
        "{links}"
    );

    // The generator reaches B through A.
    topo.generator
        .exec(&["ping", "-c", "1", "-W", "2", &IP_B.to_string()])
        .expect("generator -> A -> B");

    // Pinning: taskset on two CPUs or more, RPS mask on the node's CPU.
    match placement {
        Some(p) => {
            assert_eq!(
                topo.pinned(Side::B, &["true"]),
                vec!["taskset", "-c", &p.cpu_b.to_string(), "true"]
            );
            let path = format!("/sys/class/net/{}/queues/rx-0/rps_cpus", topo.if_b);
            let out = topo.b.exec(&["cat", &path]).unwrap();
            let mask = u64::from_str_radix(
                String::from_utf8_lossy(&out.stdout)
                    .trim()
                    .replace(',', "")
                    .as_str(),
                16,
            )
            .unwrap();
            assert_eq!(mask, 1 << p.cpu_b);
        }
        None => assert_eq!(topo.pinned(Side::B, &["true"]), vec!["true"]),
    }

    // A's link goes down and up again by ioctl.
    assert!(topo.set_link_a(false).unwrap() > 0);
    topo.set_link_a(true).unwrap();

    drop(topo);
    let left = leftovers();
    for n in names {
        assert!(!left.contains(&n), "{n} left behind");
    }
}
