//! Agreed membership on real agents in namespaces (3 to 5 nodes on one
//! segment): every survivor reports the same (epoch, members,
//! coordinator); a killed coordinator is replaced; partitions leave exactly
//! one quorate side; a graceful leave reforms without waiting for
//! node_timeout; epochs survive restarts.

mod support;

use std::time::{Duration, Instant};

use heartbeat_api::status::StatusReport;
use heartbeat_tests::{NftGuard, Signal, nft_egress_rule};
use support::{Cluster, EventKind, NodeState, Timing, addr};

/// Semantics, not speed: tolerant of a busy machine.
const RELAXED: Timing = Timing {
    interval: "10ms",
    node_timeout: "300ms",
    agent_timeout: "1s",
};

const AGREE: Duration = Duration::from_secs(20);

/// (epoch, members, coordinator, quorate) as `name` reports it.
fn view(c: &Cluster, name: &str) -> Option<(u64, Vec<String>, Option<String>, bool)> {
    let out = c.cli(name, &["status", "--json"]);
    if !out.status.success() {
        return None;
    }
    let st: StatusReport = serde_json::from_slice(&out.stdout).ok()?;
    let m = st.membership;
    let mut members = m.members;
    members.sort();
    Some((m.epoch, members, m.coordinator, m.quorate))
}

/// Waits until every node in `names` reports the same view with exactly
/// `members` and a stable phase; returns (epoch, coordinator, quorate).
fn agreed(c: &Cluster, names: &[&str], members: &[&str]) -> (u64, Option<String>, bool) {
    let mut want: Vec<String> = members.iter().map(|s| s.to_string()).collect();
    want.sort();
    let deadline = Instant::now() + AGREE;
    loop {
        let views: Vec<_> = names.iter().map(|n| view(c, n)).collect();
        if let Some(Some(first)) = views.first()
            && first.0 > 0
            && first.1 == want
            && views.iter().all(|v| v.as_ref() == Some(first))
        {
            return (first.0, first.2.clone(), first.3);
        }
        assert!(
            Instant::now() < deadline,
            "no agreement on {want:?} among {names:?}: {views:?}\n{}",
            names
                .iter()
                .map(|n| format!("--- {n}:\n{}", c.log(n)))
                .collect::<String>()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
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
        let va = view(&c, "alpha");
        let vb = view(&c, "beta");
        let vg = view(&c, "gamma");
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
