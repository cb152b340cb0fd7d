//! Scenario tests of the membership state machine on a simulated network.
#![allow(
    unused_crate_dependencies,
    reason = "an integration test links every dependency of its package"
)]

mod common;

use common::{MS, Sim};
use heartbeat_cluster::membership::{Command, NodeState, StartMode};
use heartbeat_cluster::quorum::{QuorumOptions, TieBreaker};
use heartbeat_cluster::{Epoch, NodeId, NodeSet};

fn set(ids: &[u16]) -> NodeSet {
    ids.iter().map(|i| NodeId(*i)).collect()
}

fn formed(n: u16, opts: QuorumOptions) -> Sim {
    let mut s = Sim::new(n, opts, 42);
    s.start_all();
    s.run_for(30 * MS);
    s.check_agreement();
    s
}

#[test]
fn all_nodes_form_one_quorate_view_with_the_highest_priority_coordinator() {
    let mut s = Sim::new(4, QuorumOptions::default(), 1).with_priorities(&[(3, 10), (2, 10)]);
    s.start_all();
    s.run_for(30 * MS);
    s.check_agreement();
    let v = s.view(1).unwrap();
    assert_eq!(v.members, set(&[1, 2, 3, 4]));
    assert_eq!(
        v.coordinator,
        Some(NodeId(2)),
        "priority 10, then lowest id"
    );
    assert!(v.quorum.quorate);
    assert!(v.epoch >= Epoch(1));
    let st = s.nodes[&1].m.as_ref().unwrap().node_states();
    assert!(st.values().all(|s| *s == NodeState::Up), "{st:?}");
}

#[test]
fn killing_the_coordinator_gives_a_new_epoch_and_coordinator() {
    let mut s = formed(3, QuorumOptions::default());
    let before = s.view(2).unwrap();
    assert_eq!(before.coordinator, Some(NodeId(1)));
    s.crash(1);
    s.run_for(s.detect_ns + s.timing.convergence_bound_ns(3));
    s.check_agreement();
    let after = s.view(2).unwrap();
    assert_eq!(after.members, set(&[2, 3]));
    assert_eq!(after.coordinator, Some(NodeId(2)));
    assert!(after.epoch > before.epoch);
    assert!(after.quorum.quorate);
    assert!(s.log.contains("event node_failed Some(1)"), "{}", s.log);
}

#[test]
fn partition_two_one_then_heal_gives_one_membership_with_a_higher_epoch() {
    let mut s = formed(3, QuorumOptions::default());
    s.partition(set(&[3]));
    s.run_for(s.detect_ns + s.timing.convergence_bound_ns(3));
    s.check_agreement();
    let big = s.view(1).unwrap();
    let small = s.view(3).unwrap();
    assert_eq!(big.members, set(&[1, 2]), "{}", s.log);
    assert!(big.quorum.quorate);
    assert_eq!(small.members, set(&[3]));
    assert!(!small.quorum.quorate);
    s.heal_all();
    s.run_for(s.detect_ns + s.timing.convergence_bound_ns(3));
    s.check_agreement();
    let v = s.view(3).unwrap();
    assert_eq!(v.members, set(&[1, 2, 3]));
    assert!(v.epoch > big.epoch && v.epoch > small.epoch, "{}", s.log);
    assert!(s.log.contains("event node_joined Some(3)"), "{}", s.log);
}

#[test]
fn two_two_split_without_tie_breaker_is_quorate_nowhere() {
    let mut s = formed(4, QuorumOptions::default());
    s.partition(set(&[1, 2]));
    s.run_for(s.detect_ns + s.timing.convergence_bound_ns(4));
    s.check_agreement();
    for i in 1..=4 {
        let v = s.view(i).unwrap();
        assert_eq!(v.members.len(), 2);
        assert!(!v.quorum.quorate);
        assert_eq!(v.quorum.tie_breaker, TieBreaker::Tie);
    }
}

#[test]
fn two_two_split_with_auto_tie_breaker_keeps_the_lowest_id_half() {
    let opts = QuorumOptions {
        auto_tie_breaker: true,
        ..Default::default()
    };
    let mut s = formed(4, opts);
    s.partition(set(&[2, 3]));
    s.run_for(s.detect_ns + s.timing.convergence_bound_ns(4));
    s.check_agreement();
    assert!(s.view(1).unwrap().quorum.quorate);
    assert!(s.view(4).unwrap().quorum.quorate);
    assert!(!s.view(2).unwrap().quorum.quorate);
    assert!(!s.view(3).unwrap().quorum.quorate);
}

#[test]
fn one_way_loss_gives_the_same_member_set_everywhere() {
    let mut s = formed(5, QuorumOptions::default());
    // 1 hears 2, 2 does not hear 1.
    s.set_cut(1, 2, true);
    s.run_for(s.detect_ns + s.timing.convergence_bound_ns(5));
    s.check_agreement();
    let v = s.view(3).unwrap();
    assert_eq!(v.members, set(&[1, 3, 4, 5]));
    assert!(v.quorum.quorate);
    let lone = s.view(2).unwrap();
    assert_eq!(lone.members, set(&[2]));
    assert!(!lone.quorum.quorate);
}

#[test]
fn graceful_leave_reforms_before_node_timeout() {
    let mut s = formed(3, QuorumOptions::default());
    let e = s.view(1).unwrap().epoch;
    s.command(3, Command::NodeHalt);
    // Well before the 5 ms detection delay.
    s.run_for(3 * MS);
    let v = s.view(1).unwrap();
    assert_eq!(v.members, set(&[1, 2]), "{}", s.log);
    assert!(v.epoch > e);
    assert!(s.log.contains("event node_left Some(3)"), "{}", s.log);
    let st = s.nodes[&1].m.as_ref().unwrap().node_states();
    assert_eq!(st[&NodeId(3)], NodeState::Leaving);
    assert_eq!(s.view(3).unwrap().members, NodeSet::EMPTY);
    s.command(3, Command::NodeStart);
    s.run_for(s.timing.convergence_bound_ns(3));
    s.check_agreement();
    assert_eq!(s.view(3).unwrap().members, set(&[1, 2, 3]));
}

#[test]
fn announced_restart_gives_no_reformation() {
    let mut s = formed(3, QuorumOptions::default());
    let v = s.view(1).unwrap();
    s.announced_restart(2, 10 * MS);
    s.run_for(s.timing.convergence_bound_ns(3));
    s.check_agreement();
    assert_eq!(s.view(1).unwrap(), v, "same view on the survivors");
    assert_eq!(
        s.view(2).unwrap(),
        v,
        "restarted node took the same view\n{}",
        s.log
    );
    assert_eq!(
        s.installs, 4,
        "3 at formation, 1 on the restarted node\n{}",
        s.log
    );
}

#[test]
fn unannounced_death_gives_one_reformation() {
    let mut s = formed(3, QuorumOptions::default());
    let e = s.view(1).unwrap().epoch;
    s.crash(2);
    s.run_for(s.detect_ns + s.timing.convergence_bound_ns(3));
    s.check_agreement();
    let v = s.view(1).unwrap();
    assert_eq!(v.members, set(&[1, 3]));
    assert_eq!(v.epoch, e.next(), "{}", s.log);
}

#[test]
fn auto_start_waits_for_all_nodes_then_forms_with_fewer() {
    let mut s = Sim::new(3, QuorumOptions::default(), 5);
    s.start_node(1);
    s.start_node(2);
    s.run_for(10 * MS);
    assert!(s.view(1).is_none(), "waits auto_start_timeout (20 ms)");
    s.run_for(20 * MS);
    s.check_agreement();
    let v = s.view(1).unwrap();
    assert_eq!(v.members, set(&[1, 2]));
    assert!(v.quorum.quorate);
    // Alone: forms after the timeout, not quorate.
    let mut s = Sim::new(3, QuorumOptions::default(), 6);
    s.start_node(3);
    s.run_for(30 * MS);
    let v = s.view(3).unwrap();
    assert_eq!(v.members, set(&[3]));
    assert!(!v.quorum.quorate);
    let st = s.nodes[&3].m.as_ref().unwrap().node_states();
    assert_eq!(st[&NodeId(3)], NodeState::Passive);
    assert_eq!(st[&NodeId(1)], NodeState::Down);
}

#[test]
fn manual_start_forms_only_after_cluster_start() {
    let mut s = Sim::new(3, QuorumOptions::default(), 7);
    s.start = StartMode::Manual;
    s.start_all();
    s.run_for(50 * MS);
    assert!(s.view(1).is_none());
    s.command(3, Command::ClusterStart);
    s.run_for(s.timing.convergence_bound_ns(3));
    s.check_agreement();
    assert_eq!(s.view(1).unwrap().members, set(&[1, 2, 3]));
    // A node restarted in manual mode joins the running cluster.
    s.crash(2);
    s.run_for(s.detect_ns + s.timing.convergence_bound_ns(3));
    s.start_node(2);
    s.run_for(s.detect_ns + s.timing.convergence_bound_ns(3));
    s.check_agreement();
    assert_eq!(s.view(2).unwrap().members, set(&[1, 2, 3]));
}

#[test]
fn last_man_standing_shrinks_four_three_two() {
    let opts = QuorumOptions {
        last_man_standing: true,
        last_man_standing_window_ns: 10 * MS,
        ..Default::default()
    };
    let mut s = formed(4, opts);
    for dead in [4u16, 3] {
        s.crash(dead);
        s.run_for(s.detect_ns + s.timing.convergence_bound_ns(4) + 20 * MS);
        s.check_agreement();
        assert!(
            s.view(1).unwrap().quorum.quorate,
            "after losing {dead}\n{}",
            s.log
        );
    }
    assert_eq!(s.view(1).unwrap().members, set(&[1, 2]));
    // Without LMS, 2 of 4 is not quorate.
    let mut s = formed(4, QuorumOptions::default());
    s.crash(4);
    s.run_for(s.detect_ns + s.timing.convergence_bound_ns(4) + 20 * MS);
    s.crash(3);
    s.run_for(s.detect_ns + s.timing.convergence_bound_ns(4) + 20 * MS);
    assert!(!s.view(1).unwrap().quorum.quorate);
}

#[test]
fn two_node_cluster_survives_the_loss_of_one_node() {
    let opts = QuorumOptions {
        two_node: true,
        ..Default::default()
    };
    let mut s = formed(2, opts);
    assert!(s.view(1).unwrap().quorum.quorate);
    s.crash(2);
    s.run_for(s.detect_ns + s.timing.convergence_bound_ns(2));
    let v = s.view(1).unwrap();
    assert_eq!(v.members, set(&[1]));
    assert!(v.quorum.quorate);
    // A fresh lone two_node node waits for all (never saw its peer).
    let mut s = Sim::new(2, opts, 9);
    s.start_node(1);
    s.run_for(50 * MS);
    let v = s.view(1).unwrap();
    assert!(!v.quorum.quorate);
    assert_eq!(v.quorum.tie_breaker, TieBreaker::WaitForAll);
}

#[test]
fn stale_agent_is_excluded() {
    let mut s = formed(3, QuorumOptions::default());
    let at_ns = s.now;
    for i in [1u16, 2] {
        s.input(
            i,
            heartbeat_cluster::membership::Input::PeerAgent {
                peer: NodeId(3),
                state: heartbeat_cluster::membership::PeerAgentState::Stale,
                at_ns,
            },
        );
    }
    s.run_for(s.timing.convergence_bound_ns(3));
    let v = s.view(1).unwrap();
    assert_eq!(v.members, set(&[1, 2]), "{}", s.log);
    let st = s.nodes[&1].m.as_ref().unwrap().node_states();
    assert_eq!(st[&NodeId(3)], NodeState::Stale);
}

fn qs_opts() -> QuorumOptions {
    QuorumOptions {
        quorum_server: true,
        ..Default::default()
    }
}

#[test]
fn two_two_split_with_quorum_server_gives_exactly_one_side_and_the_same_again() {
    let mut s = Sim::new(4, qs_opts(), 3).with_qserver();
    s.start_all();
    s.run_for(30 * MS);
    s.check_agreement();
    let bound = s.detect_ns + s.timing.convergence_bound_ns(4) + s.timing.qs_timeout_ns;
    let mut winners = Vec::new();
    for round in 0..2 {
        s.partition(set(&[3, 4]));
        s.run_for(bound);
        s.check_agreement();
        let q: Vec<bool> = (1..=4).map(|i| s.view(i).unwrap().quorum.quorate).collect();
        assert_eq!(
            q.iter().filter(|x| **x).count(),
            2,
            "round {round}: {q:?}\n{}",
            s.log
        );
        assert_eq!(q[0], q[1]);
        assert_eq!(q[2], q[3]);
        winners.push(q[0]);
        let w = if q[0] { 1 } else { 3 };
        assert_eq!(s.view(w).unwrap().quorum.tie_breaker, TieBreaker::QsGranted);
        // The holder keeps renewing its lease: still quorate much later.
        s.run_for(1000 * MS);
        assert!(s.view(w).unwrap().quorum.quorate, "{}", s.log);
        s.heal_all();
        s.run_for(bound);
        s.check_agreement();
        assert!(s.view(1).unwrap().quorum.quorate);
        // Let the lease run out before the next split.
        s.run_for(400 * MS);
    }
    assert_eq!(
        winners[0], winners[1],
        "same side again on a repeated split"
    );
}

#[test]
fn two_two_split_with_quorum_server_down_is_quorate_nowhere() {
    let mut s = Sim::new(4, qs_opts(), 4).with_qserver();
    s.start_all();
    s.run_for(30 * MS);
    s.qs_cut = set(&[1, 2, 3, 4]);
    s.partition(set(&[3, 4]));
    s.run_for(s.detect_ns + s.timing.convergence_bound_ns(4) + s.timing.qs_timeout_ns);
    s.check_agreement();
    for i in 1..=4 {
        let v = s.view(i).unwrap();
        assert!(!v.quorum.quorate);
        assert_eq!(v.quorum.tie_breaker, TieBreaker::QsUnreachable);
    }
}

#[test]
fn quorum_server_never_grants_a_side_it_cannot_hear() {
    let mut s = Sim::new(4, qs_opts(), 5).with_qserver();
    s.start_all();
    s.run_for(30 * MS);
    // The server cannot hear the half holding node 1.
    s.qs_cut = set(&[1, 2]);
    s.partition(set(&[3, 4]));
    s.run_for(s.detect_ns + s.timing.convergence_bound_ns(4) + s.timing.qs_timeout_ns);
    s.check_agreement();
    assert!(!s.view(1).unwrap().quorum.quorate);
    assert!(s.view(3).unwrap().quorum.quorate);
}

#[test]
fn everyone_crashed_is_quiet() {
    let mut s = formed(5, QuorumOptions::default());
    for i in [3, 4, 1, 2, 5] {
        s.crash(i);
    }
    s.run_for(200 * MS);
}

#[test]
fn reload_adds_a_node_and_refuses_to_change_the_local_id() {
    use heartbeat_cluster::membership::{NodeParams, Params, ReloadError};
    let mut s = formed(3, QuorumOptions::default());
    let m = s.nodes.get_mut(&1).unwrap().m.as_mut().unwrap();
    let mut nodes: Vec<NodeParams> = (1..=4)
        .map(|i| NodeParams {
            id: NodeId(i),
            priority: 0,
            votes: 1,
        })
        .collect();
    let params = |local, nodes: Vec<NodeParams>| Params {
        local: NodeId(local),
        nodes,
        quorum: QuorumOptions::default(),
        start: StartMode::Auto,
        timing: common::timing(),
    };
    assert_eq!(
        m.reload(params(2, nodes.clone()), 0).unwrap_err(),
        ReloadError::LocalNode
    );
    m.reload(params(1, nodes.clone()), 0).unwrap();
    assert_eq!(m.node_states()[&NodeId(4)], NodeState::Down);
    // 3 of 4 expected votes: still quorate.
    nodes.retain(|n| n.id != NodeId(1));
    assert_eq!(
        m.reload(params(1, nodes), 0).unwrap_err(),
        ReloadError::LocalNotConfigured
    );
}

#[test]
fn the_documented_bound_in_heartbeat_intervals() {
    use heartbeat_cluster::membership::Timing;
    let t = Timing::from_heartbeat_interval(500_000, 0, 0);
    assert_eq!(t.join_interval_ns, MS);
    assert_eq!(t.convergence_bound_ns(5), 16 * MS);
    let t = Timing::from_heartbeat_interval(10_000_000, 0, 0);
    assert_eq!(t.convergence_bound_ns(3), 14 * 20 * MS);
}
