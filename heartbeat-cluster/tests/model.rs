//! Randomized model test of the membership state machine: 5 simulated
//! (`HB_MODEL_NODES`, up to 8)
//! nodes, random sequences of one-way cuts, partitions, heals, message
//! loss and delay, crashes, restarts (with persisted epochs), announced
//! restarts, halts and starts. After every step the simulator checks:
//!
//! - at most one quorate member set per epoch;
//! - epochs never go back on any node (also across restarts);
//! - never two disjoint member sets installed as quorate at the same time;
//!
//! and once the network is stable for the documented bound
//! ([`Timing::convergence_bound_ns`]), every member of each view holds the
//! same (epoch, members, coordinator) and members are mutually connected.
//! The quorum-server property runs a simulated server that some nodes
//! cannot reach. A failure prints the shrunk event sequence and the
//! simulation log. `HB_MODEL_CASES=N` sets the number of cases.
#![allow(
    unused_crate_dependencies,
    reason = "an integration test links every dependency of its package"
)]

mod common;

use common::{MS, Sim};
use heartbeat_cluster::membership::Command;
use heartbeat_cluster::quorum::QuorumOptions;
use heartbeat_cluster::{NodeId, NodeSet};
use proptest::prelude::*;

/// Nodes: `HB_MODEL_NODES` (3..=8, default 5).
fn nodes() -> u16 {
    std::env::var("HB_MODEL_NODES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5u16)
        .clamp(3, 8)
}

#[derive(Clone, Debug)]
enum Step {
    Cut(u16, u16),
    Heal(u16, u16),
    Partition(u8),
    HealAll,
    Crash(u16),
    Restart(u16),
    AnnouncedRestart(u16),
    Halt(u16),
    Start(u16),
    Loss(u64),
    Delay(u64),
    QsCut(u8),
}

fn node() -> impl Strategy<Value = u16> {
    1..=nodes()
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (node(), node()).prop_map(|(a, b)| Step::Cut(a, b)),
        2 => (node(), node()).prop_map(|(a, b)| Step::Heal(a, b)),
        2 => (1u8..=255).prop_map(Step::Partition),
        2 => Just(Step::HealAll),
        2 => node().prop_map(Step::Crash),
        2 => node().prop_map(Step::Restart),
        1 => node().prop_map(Step::AnnouncedRestart),
        1 => node().prop_map(Step::Halt),
        1 => node().prop_map(Step::Start),
        2 => (0u64..40).prop_map(Step::Loss),
        1 => (0u64..3).prop_map(Step::Delay),
        1 => any::<u8>().prop_map(Step::QsCut),
    ]
}

fn apply(s: &mut Sim, st: &Step) {
    match *st {
        Step::Cut(a, b) => s.set_cut(a, b, true),
        Step::Heal(a, b) => s.set_cut(a, b, false),
        Step::Partition(mask) => {
            let g: NodeSet = (1..=nodes())
                .filter(|i| mask & (1 << (i - 1)) != 0)
                .map(NodeId)
                .collect();
            s.partition(g);
        }
        Step::HealAll => s.heal_all(),
        Step::Crash(i) => {
            if s.alive(i) {
                s.crash(i);
            }
        }
        Step::Restart(i) => {
            if !s.alive(i) {
                s.start_node(i);
            }
        }
        Step::AnnouncedRestart(i) => s.announced_restart(i, 5 * MS),
        Step::Halt(i) => s.command(i, Command::NodeHalt),
        Step::Start(i) => s.command(i, Command::NodeStart),
        Step::Loss(p) => {
            use std::fmt::Write as _;
            let _ = writeln!(s.log, "{:>8}us loss {p}%", s.now / 1000);
            s.loss_pct = p;
        }
        Step::Delay(ms) => s.max_delay_ns = ms * MS / 2 + MS / 4,
        Step::QsCut(mask) => {
            s.qs_cut = (1..=nodes())
                .filter(|i| mask & (1 << (i - 1)) != 0)
                .map(NodeId)
                .collect();
        }
    }
}

fn run(options: QuorumOptions, seed: u64, steps: &[(Step, u64)], last: &Step) {
    let mut s = Sim::new(nodes(), options, seed);
    if options.quorum_server {
        s = s.with_qserver();
    }
    s.start_all();
    s.run_for(30 * MS);
    s.check_agreement();
    for (st, wait) in steps {
        apply(&mut s, st);
        s.run_for(*wait * MS / 4);
    }
    // Stable network from here: no loss, delays within a join interval.
    s.loss_pct = 0;
    s.max_delay_ns = s.timing.join_interval_ns / 2;
    // Let link detection and pending timers (auto start, restart window)
    // run out.
    s.run_for(s.detect_ns + s.timing.restart_window_ns + s.timing.auto_start_timeout_ns);
    // One last fault, then exactly the documented bound after its link
    // events: every partition must have agreed by then.
    apply(&mut s, last);
    let bound = if options.quorum_server {
        s.timing.convergence_bound_with_qs_ns(nodes() as usize)
    } else {
        s.timing.convergence_bound_ns(nodes() as usize)
    };
    s.run_for(s.detect_ns + bound);
    s.check_agreement();
    // And it stays agreed (no endless rounds).
    let before: Vec<_> = (1..=nodes()).map(|i| s.view(i)).collect();
    s.run_for(100 * MS);
    let after: Vec<_> = (1..=nodes()).map(|i| s.view(i)).collect();
    assert_eq!(
        before, after,
        "views changed on a stable network\n{}",
        s.log
    );
}

/// The last fault before the network stays stable.
fn last_step() -> impl Strategy<Value = Step> {
    prop_oneof![
        Just(Step::HealAll),
        (1u8..=255).prop_map(Step::Partition),
        node().prop_map(Step::Crash),
        (node(), node()).prop_map(|(a, b)| Step::Cut(a, b)),
    ]
}

fn steps() -> impl Strategy<Value = Vec<(Step, u64)>> {
    prop::collection::vec((step(), 0u64..80), 1..20)
}

/// Cases per property: `HB_MODEL_CASES` (default 32, about 4 s per
/// property in a debug build).
fn cases() -> u32 {
    std::env::var("HB_MODEL_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(32)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn membership_invariants_hold(seed in any::<u64>(), steps in steps(), last in last_step()) {
        run(QuorumOptions::default(), seed, &steps, &last);
    }

    #[test]
    fn membership_invariants_hold_with_auto_tie_breaker(seed in any::<u64>(), steps in steps(), last in last_step()) {
        run(QuorumOptions { auto_tie_breaker: true, ..Default::default() }, seed, &steps, &last);
    }

    #[test]
    fn membership_invariants_hold_with_quorum_server(seed in any::<u64>(), steps in steps(), last in last_step()) {
        run(QuorumOptions { quorum_server: true, ..Default::default() }, seed, &steps, &last);
    }
}
