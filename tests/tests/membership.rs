//! Agreed membership on real agents in namespaces (3 to 5 nodes on one
//! segment): every survivor reports the same (epoch, members,
//! coordinator); a killed coordinator is replaced; partitions leave exactly
//! one quorate side; a graceful leave reforms without waiting for
//! node_timeout; epochs survive restarts.
#![allow(
    unused_crate_dependencies,
    reason = "an integration test links every dependency of its package"
)]

mod support;

use std::time::{Duration, Instant};

use heartbeat_tests::{NftGuard, Signal, nft_egress_rule};
use support::{Cluster, EventKind, NodeState, Timing, addr};

/// Semantics, not speed: tolerant of a busy machine.
const RELAXED: Timing = Timing {
    interval: "10ms",
    node_timeout: "300ms",
    agent_timeout: "1s",
};

const AGREE: Duration = Duration::from_secs(20);

/// Waits until every node in `names` reports the same view with exactly
/// `members`; returns (epoch, coordinator, quorate).
fn agreed(c: &Cluster, names: &[&str], members: &[&str]) -> (u64, Option<String>, bool) {
    let (epoch, _, coordinator, quorate) = c.agreed(names, members, AGREE);
    (epoch, coordinator, quorate)
}

/// Drops everything `from` sends to the nodes in `to` (replies included:
/// they leave through the same wire port).
fn cut(c: &Cluster, from: &str, to: &[&str]) -> NftGuard {
    let i = c.index(from);
    let addrs: Vec<String> = to.iter().map(|n| addr(c.index(n), 0)).collect();
    nft_egress_rule(
        &c.nodes[i].ns,
        &c.nodes[i].wires[0],
        &format!("ip daddr {{ {} }} drop", addrs.join(", ")),
    )
    .expect("nft rule")
}

#[test]
fn three_nodes_agree_and_a_killed_coordinator_is_replaced() {
    let mut c = Cluster::new(3, 1, RELAXED, false);
    c.start_all();
    let (e1, coord, quorate) = agreed(&c, &["alpha", "beta", "gamma"], &["alpha", "beta", "gamma"]);
    assert_eq!(coord.as_deref(), Some("alpha"), "equal priority: lowest id");
    assert!(quorate);
    let st = c.status("beta");
    assert!(st.nodes.iter().all(|n| n.state == NodeState::Up), "{st:?}");
    assert_eq!(st.membership.quorum.votes_present, 3);
    assert_eq!(st.membership.quorum.votes_needed, 2);

    c.agent("alpha").signal(Signal::SIGKILL).unwrap();
    let (e2, coord, quorate) = agreed(&c, &["beta", "gamma"], &["beta", "gamma"]);
    assert!(e2 > e1, "epoch did not rise: {e1} -> {e2}");
    assert_eq!(coord.as_deref(), Some("beta"));
    assert!(quorate, "2 of 3 votes is a majority");
    let st = c.status("gamma");
    assert_eq!(st.node("alpha").unwrap().state, NodeState::Down);
    assert!(
        c.journal("gamma")
            .iter()
            .any(|e| e.event == EventKind::ViewInstalled && e.epoch == Some(e2)),
        "view_installed not journaled"
    );

    // Restarted, alpha rejoins with an epoch above both (persisted).
    c.start("alpha");
    let (e3, coord, _) = agreed(&c, &["alpha", "beta", "gamma"], &["alpha", "beta", "gamma"]);
    assert!(e3 > e2);
    assert_eq!(coord.as_deref(), Some("alpha"));
}

#[test]
fn partition_two_one_leaves_only_the_majority_quorate_and_heals() {
    let mut c = Cluster::new(3, 1, RELAXED, false);
    c.start_all();
    let (e1, ..) = agreed(&c, &["alpha", "beta", "gamma"], &["alpha", "beta", "gamma"]);
    let g1 = cut(&c, "gamma", &["alpha", "beta"]);
    let g2 = cut(&c, "alpha", &["gamma"]);
    let g3 = cut(&c, "beta", &["gamma"]);
    let (e2, _, q2) = agreed(&c, &["alpha", "beta"], &["alpha", "beta"]);
    assert!(q2, "the 2 side is quorate");
    let (eg, _, qg) = agreed(&c, &["gamma"], &["gamma"]);
    assert!(!qg, "the 1 side is not quorate");
    assert!(e2 > e1 && eg > e1);
    let st = c.status("gamma");
    assert!(!st.membership.quorate);
    drop((g1, g2, g3));
    let (e3, _, q3) = agreed(&c, &["alpha", "beta", "gamma"], &["alpha", "beta", "gamma"]);
    assert!(q3);
    assert!(
        e3 > e2 && e3 > eg,
        "healed epoch {e3} not above {e2} and {eg}"
    );
}

#[test]
fn one_way_loss_gives_every_survivor_the_same_members_and_one_quorate_set() {
    let mut c = Cluster::new(3, 1, RELAXED, false);
    c.start_all();
    agreed(&c, &["alpha", "beta", "gamma"], &["alpha", "beta", "gamma"]);
    // alpha's packets to beta are lost; beta's reach alpha.
    let _g = cut(&c, "alpha", &["beta"]);
    // alpha and beta are not mutually connected: the deterministic split
    // keeps alpha (highest priority, lowest id) with gamma.
    let deadline = Instant::now() + AGREE;
    loop {
        let va = c.view("alpha");
        let vb = c.view("beta");
        let vg = c.view("gamma");
        let quorate: Vec<_> = [&va, &vb, &vg]
            .iter()
            .filter_map(|v| v.as_ref().filter(|v| v.3).cloned())
            .collect();
        // Never two disjoint quorate member sets, never two quorate sets
        // in one epoch (a node may still hold the view before the change
        // while the others installed the next one).
        for x in &quorate {
            for y in &quorate {
                assert!(
                    x.1.iter().any(|n| y.1.contains(n)),
                    "disjoint quorate sets: {va:?} {vb:?} {vg:?}"
                );
                assert!(
                    x.0 != y.0 || x.1 == y.1,
                    "two quorate sets in one epoch: {va:?} {vb:?} {vg:?}"
                );
            }
        }
        if va == vg
            && va
                .as_ref()
                .is_some_and(|v| v.1 == ["alpha", "gamma"] && v.3)
            && vb.as_ref().is_some_and(|v| v.1 == ["beta"] && !v.3)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no stable split: {va:?} {vb:?} {vg:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn graceful_leave_reforms_without_waiting_for_node_timeout() {
    // node_timeout 3 s: a reformation within it can only be the leave.
    let slow = Timing {
        interval: "20ms",
        node_timeout: "3s",
        agent_timeout: "5s",
    };
    let mut c = Cluster::new(3, 1, slow, false);
    c.start_all();
    let (e1, ..) = agreed(&c, &["alpha", "beta", "gamma"], &["alpha", "beta", "gamma"]);
    let t = Instant::now();
    let out = c.cli("gamma", &["node", "halt"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (e2, ..) = agreed(&c, &["alpha", "beta"], &["alpha", "beta"]);
    let took = t.elapsed();
    assert!(e2 > e1);
    assert!(
        took < Duration::from_secs(3),
        "leave took {took:?}, as long as node_timeout"
    );
    let st = c.status("alpha");
    assert_eq!(
        st.node("gamma").unwrap().state,
        NodeState::Leaving,
        "{st:?}"
    );
    // And it joins again.
    let out = c.cli("gamma", &["node", "start"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (e3, ..) = agreed(&c, &["alpha", "beta", "gamma"], &["alpha", "beta", "gamma"]);
    assert!(e3 > e2);
    // SIGTERM is a graceful leave too.
    let t = Instant::now();
    c.agent("gamma").signal(Signal::SIGTERM).unwrap();
    agreed(&c, &["alpha", "beta"], &["alpha", "beta"]);
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "SIGTERM leave took {:?}",
        t.elapsed()
    );
}

#[test]
fn five_nodes_split_two_three_and_shrink() {
    let mut c = Cluster::new(5, 1, RELAXED, false);
    c.start_all();
    let all = ["alpha", "beta", "gamma", "delta", "epsilon"];
    agreed(&c, &all, &all);
    let _a = cut(&c, "alpha", &["gamma", "delta", "epsilon"]);
    let _b = cut(&c, "beta", &["gamma", "delta", "epsilon"]);
    let _g = cut(&c, "gamma", &["alpha", "beta"]);
    let _d = cut(&c, "delta", &["alpha", "beta"]);
    let _e = cut(&c, "epsilon", &["alpha", "beta"]);
    let (_, _, q_small) = agreed(&c, &["alpha", "beta"], &["alpha", "beta"]);
    let (_, coord, q_big) = agreed(
        &c,
        &["gamma", "delta", "epsilon"],
        &["gamma", "delta", "epsilon"],
    );
    assert!(!q_small && q_big);
    assert_eq!(coord.as_deref(), Some("gamma"));
}

/// Splits 4 nodes into {alpha, beta} | {gamma, delta}.
fn split_two_two(c: &Cluster) -> Vec<NftGuard> {
    vec![
        cut(c, "alpha", &["gamma", "delta"]),
        cut(c, "beta", &["gamma", "delta"]),
        cut(c, "gamma", &["alpha", "beta"]),
        cut(c, "delta", &["alpha", "beta"]),
    ]
}

const FOUR: [&str; 4] = ["alpha", "beta", "gamma", "delta"];
const LOW: [&str; 2] = ["alpha", "beta"];
const HIGH: [&str; 2] = ["gamma", "delta"];

#[test]
fn split_two_two_without_tie_breaker_leaves_no_side_quorate() {
    let mut c = Cluster::new(4, 1, RELAXED, false);
    c.start_all();
    agreed(&c, &FOUR, &FOUR);
    let _g = split_two_two(&c);
    let (_, _, q1) = agreed(&c, &LOW, &LOW);
    let (_, _, q2) = agreed(&c, &HIGH, &HIGH);
    assert!(!q1 && !q2, "exactly half and no tie-breaker: neither side");
    assert_eq!(c.status("alpha").membership.quorum.tie_breaker, "tie");
}

#[test]
fn split_two_two_with_auto_tie_breaker_keeps_the_lowest_id() {
    let mut c = Cluster::new(4, 1, RELAXED, false);
    c.edit_config(|t| format!("{t}\n[quorum]\nauto_tie_breaker = true\nwait_for_all = true\n"));
    c.start_all();
    agreed(&c, &FOUR, &FOUR);
    let _g = split_two_two(&c);
    let (_, _, q1) = agreed(&c, &LOW, &LOW);
    let (_, _, q2) = agreed(&c, &HIGH, &HIGH);
    assert!(q1 && !q2, "the half holding node 1 wins");
}

#[test]
fn split_two_two_with_a_quorum_server_gives_one_side_and_the_same_side_again() {
    let mut c = Cluster::new(4, 1, RELAXED, false);
    let qs_addr = "10.210.0.100";
    c.hub(0)
        .ip(&["addr", "add", &format!("{qs_addr}/24"), "dev", "br0"])
        .unwrap();
    c.edit_config(|t| format!("{t}\n[quorum]\nquorum_server = \"{qs_addr}:6406\"\n"));
    let key = c.dir.0.join("cluster.key");
    let log = c.dir.0.join("qs.log");
    let mut qs = c
        .hub(0)
        .spawn_logged(
            &[
                support::agent_binary().to_str().unwrap(),
                "quorum-server",
                "--listen",
                &format!("{qs_addr}:6406"),
                "--key-file",
                key.to_str().unwrap(),
            ],
            &log,
        )
        .unwrap();
    c.start_all();
    agreed(&c, &FOUR, &FOUR);
    let mut winners = Vec::new();
    for round in 0..2 {
        let g = split_two_two(&c);
        let (_, _, q1) = agreed(&c, &LOW, &LOW);
        let (_, _, q2) = agreed(&c, &HIGH, &HIGH);
        // Agreement may come before the server's answer: wait for the
        // quorum to settle on one side.
        let deadline = Instant::now() + AGREE;
        let (mut q1, mut q2) = (q1, q2);
        while q1 == q2 {
            assert!(
                Instant::now() < deadline,
                "round {round}: no single quorate side ({q1} {q2})\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
            q1 = c.view("alpha").is_some_and(|v| v.3);
            q2 = c.view("gamma").is_some_and(|v| v.3);
        }
        winners.push(q1);
        drop(g);
        agreed(&c, &FOUR, &FOUR);
    }
    assert_eq!(
        winners[0], winners[1],
        "a repeated split gives the same side"
    );
    // The quorum server down too: neither side.
    qs.kill().unwrap();
    let _g = split_two_two(&c);
    let deadline = Instant::now() + AGREE;
    loop {
        let a = c.view("alpha");
        let g = c.view("gamma");
        // (members are reported sorted by name)
        if a.as_ref().is_some_and(|v| v.1 == ["alpha", "beta"] && !v.3)
            && g.as_ref()
                .is_some_and(|v| v.1 == ["delta", "gamma"] && !v.3)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "with the server down: {a:?} {g:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn last_man_standing_shrinks_four_to_two_one_by_one() {
    let mut c = Cluster::new(4, 1, RELAXED, false);
    c.edit_config(|t| {
        format!("{t}\n[quorum]\nlast_man_standing = true\nlast_man_standing_window = \"1s\"\n")
    });
    c.start_all();
    agreed(&c, &FOUR, &FOUR);
    c.agent("delta").signal(Signal::SIGKILL).unwrap();
    let (_, _, q) = agreed(&c, &["alpha", "beta", "gamma"], &["alpha", "beta", "gamma"]);
    assert!(q);
    std::thread::sleep(Duration::from_secs(2));
    c.agent("gamma").signal(Signal::SIGKILL).unwrap();
    let (_, _, q) = agreed(&c, &LOW, &LOW);
    // 2 of the 3 expected after the window: still quorate.
    let deadline = Instant::now() + AGREE;
    let mut q = q;
    while !q {
        assert!(
            Instant::now() < deadline,
            "LMS did not keep 2 of 4 quorate: {:?}",
            c.status("alpha").membership
        );
        std::thread::sleep(Duration::from_millis(200));
        q = c.view("alpha").is_some_and(|v| v.3);
    }
    assert_eq!(c.status("alpha").membership.quorum.votes_expected, 3);
}

#[test]
fn without_last_man_standing_two_of_four_is_not_quorate() {
    let mut c = Cluster::new(4, 1, RELAXED, false);
    c.start_all();
    agreed(&c, &FOUR, &FOUR);
    c.agent("delta").signal(Signal::SIGKILL).unwrap();
    agreed(&c, &["alpha", "beta", "gamma"], &["alpha", "beta", "gamma"]);
    c.agent("gamma").signal(Signal::SIGKILL).unwrap();
    let (_, _, q) = agreed(&c, &LOW, &LOW);
    assert!(!q);
}

#[test]
fn two_node_cluster_survives_the_loss_of_one() {
    let mut c = Cluster::new(2, 1, RELAXED, false);
    c.edit_config(|t| format!("{t}\n[quorum]\ntwo_node = true\n"));
    c.start_all();
    let (_, _, q) = agreed(&c, &LOW, &LOW);
    assert!(q);
    c.agent("beta").signal(Signal::SIGKILL).unwrap();
    let (_, _, q) = agreed(&c, &["alpha"], &["alpha"]);
    assert!(
        q,
        "two_node: one node is quorate (after wait_for_all was met)"
    );
}

#[test]
fn a_node_started_alone_waits_auto_start_timeout_then_forms_only_if_quorate() {
    let mut c = Cluster::new(3, 1, RELAXED, false);
    c.edit_config(|t| {
        t.replace(
            "agent_timeout = \"1s\"",
            "agent_timeout = \"1s\"\nauto_start_timeout = \"2s\"",
        )
    });
    let t = Instant::now();
    c.start("alpha");
    // Alone: waits, then forms a view of itself, not quorate (1 of 3).
    let (_, _, q) = agreed(&c, &["alpha"], &["alpha"]);
    assert!(
        t.elapsed() >= Duration::from_secs(2),
        "formed before auto_start_timeout: {:?}",
        t.elapsed()
    );
    assert!(!q);
    let st = c.status("alpha");
    assert_eq!(st.node("alpha").unwrap().state, NodeState::Passive);
    // A second node makes it quorate.
    c.start("beta");
    let (_, _, q) = agreed(&c, &LOW, &LOW);
    assert!(q);
}

#[test]
fn a_manual_start_forms_only_after_cluster_start() {
    let mut c = Cluster::new(2, 1, RELAXED, false);
    c.edit_config(|t| {
        t.replace(
            "agent_timeout = \"1s\"",
            "agent_timeout = \"1s\"\nauto_start = false",
        )
    });
    c.start_all();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        c.view("alpha").map(|v| v.0),
        Some(0),
        "formed without `cluster start`"
    );
    let out = c.cli("alpha", &["cluster", "start"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_, _, q) = agreed(&c, &LOW, &LOW);
    assert!(q);
}

#[test]
fn bad_membership_messages_are_dropped_and_counted() {
    let mut c = Cluster::new(2, 1, RELAXED, false);
    c.start_all();
    agreed(&c, &LOW, &LOW);
    let b = c.index("beta");
    let target = format!("{}:6405", addr(c.index("alpha"), 0));
    let src = format!("{}:0", addr(b, 0));
    let before = c.status("alpha").messages;
    support::in_netns(&c.nodes[b].ns, move || {
        let s = std::net::UdpSocket::bind(src).unwrap();
        let mut prefix = b"HBT1\x01\x03".to_vec();
        // Wrong length (prefix only), garbage body, bad MAC, other cluster.
        s.send_to(&prefix, &target).unwrap();
        prefix.extend_from_slice(&[0u8; 40]);
        s.send_to(&prefix, &target).unwrap();
        let mut m = vec![0u8; 60];
        m[..6].copy_from_slice(b"HBT1\x01\x03");
        m[9] = 7; // cluster 7
        m[11] = 2; // from beta
        m[24] = 1; // join
        m[26] = 25;
        s.send_to(&m, &target).unwrap();
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let after = c.status("alpha").messages;
        let dropped: u64 = after
            .iter()
            .filter(|(k, _)| k.starts_with("dropped_"))
            .map(|(_, v)| *v)
            .sum::<u64>()
            - before
                .iter()
                .filter(|(k, _)| k.starts_with("dropped_"))
                .map(|(_, v)| *v)
                .sum::<u64>();
        if dropped >= 3 {
            break;
        }
        assert!(Instant::now() < deadline, "not counted: {after:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // The cluster did not notice.
    let (_, _, q) = agreed(&c, &LOW, &LOW);
    assert!(q);
}

#[test]
#[ignore = "diagnostic: membership at node_timeout 500 us"]
fn probe_fast_membership() {
    let t = Timing {
        interval: "1ms",
        node_timeout: "5ms",
        agent_timeout: "20ms",
    };
    let mut c = Cluster::new(3, 1, t, false);
    c.start_all();
    std::thread::sleep(Duration::from_secs(3));
    for n in ["alpha", "beta", "gamma"] {
        let pid = c.agent(n).pid();
        let out = std::process::Command::new("ps")
            .args(["-L", "-o", "tid,pcpu,comm", "-p", &pid.to_string()])
            .output()
            .unwrap();
        eprintln!("{n} threads:\n{}", String::from_utf8_lossy(&out.stdout));
    }
    for n in ["alpha", "beta", "gamma"] {
        eprintln!("{n}: {:?}", c.view(n));
        let j = c.journal(n);
        let downs = j.iter().filter(|e| e.event == EventKind::LinkDown).count();
        let views = j
            .iter()
            .filter(|e| e.event == EventKind::ViewInstalled)
            .count();
        eprintln!("  link_down {downs}, view_installed {views}");
        for e in j.iter().rev().take(8) {
            eprintln!("  {} {} {:?} {:?}", e.event, e.cause, e.peer, e.members);
        }
        eprintln!(
            "{}",
            c.status(n)
                .messages
                .iter()
                .map(|(k, v)| format!("{k}={v} "))
                .collect::<String>()
        );
    }
}
