//! The detector that knows when it was blind (heartbeat-ebpf deadline.rs),
//! with real agents in network namespaces: a node whose own agent is
//! stopped defers its verdict on a healthy peer instead of failing it over,
//! a really dead peer is still detected within node_timeout + grace, and the
//! tc egress stamp is attached while the agent runs and gone after it.
#![allow(
    unused_crate_dependencies,
    reason = "an integration test links every dependency of its package"
)]

mod support;

use std::time::Duration;

use heartbeat_tests::{Signal, nft_egress_rule, tcx_attachments};
use support::{Cluster, EventKind, LinkState, StatusReport, Timing, wall_ns};

/// Slow enough that the test's own sleeps and signals are precise against
/// it on a busy two-core machine: the observer is stopped for 1.5
/// node_timeouts, 100 ms short of node_timeout + grace.
const BLIND: Timing = Timing {
    interval: "10ms",
    node_timeout: "200ms",
    agent_timeout: "2s",
};
const NODE_TIMEOUT: Duration = Duration::from_millis(200);
const STALL: Duration = Duration::from_millis(300);
const UP: Duration = Duration::from_secs(10);
const MARGIN: Duration = Duration::from_secs(3);

/// Alpha's own requests never reach beta (dropped on alpha's wire; its
/// XDP replies still pass): beta hears alpha only through the replies to
/// its own requests, as when the path from alpha loses them. Returns the
/// rule's guard.
fn beta_hears_alpha_only_by_replies(c: &Cluster) -> heartbeat_tests::NftGuard {
    let a = c.index("alpha");
    let wire = c.nodes[a].wires[0].clone();
    // The kind byte is the 6th byte of the UDP payload: bit 64 + 40 of the
    // transport header. 1 = request.
    nft_egress_rule(&c.nodes[a].ns, &wire, "udp dport 6405 @th,104,8 1 drop")
        .expect("nft rule dropping alpha's requests")
}

fn counter(st: &StatusReport, name: &str) -> u64 {
    st.xdp_counters.get(name).copied().unwrap_or(0)
}

fn alpha_link(st: &StatusReport) -> heartbeat_api::status::LinkStatus {
    st.node("alpha").expect("alpha in status").links[0].clone()
}

#[test]
fn a_stalled_observer_defers_instead_of_failing_its_peer() {
    let mut c = Cluster::new(2, 1, BLIND, false);
    c.start_all();
    c.wait_all_up(UP);
    let b = c.index("beta");

    // The egress stamp is attached next to XDP and sees beta's requests.
    let tcx = tcx_attachments(Some(c.nodes[b].ns.name())).unwrap();
    let if_b = c.nodes[b].ifaces[0].clone();
    assert!(
        tcx.iter()
            .any(|a| a.ifname == if_b && a.direction == "egress" && a.prog_name == "egress_stamp"),
        "no egress stamp on {if_b}: {tcx:?}\n{}",
        c.log("beta")
    );

    let _rule = beta_hears_alpha_only_by_replies(&c);
    std::thread::sleep(Duration::from_millis(500));
    let st = c.status("beta");
    assert!(counter(&st, "egress_own_request") > 0, "{st:?}");
    // The sender's marking (SO_PRIORITY 6, DSCP CS6) reaches the qdisc.
    assert_eq!(counter(&st, "egress_off_priority"), 0, "{st:?}");
    let before = alpha_link(&st);
    assert_eq!(before.state, LinkState::Up, "{st:?}");

    // Beta's agent (its sender) stops for longer than node_timeout but
    // shorter than node_timeout + grace; alpha is healthy throughout.
    let fault = wall_ns();
    c.agent("beta").signal(Signal::SIGSTOP).unwrap();
    std::thread::sleep(STALL);
    c.agent("beta").signal(Signal::SIGCONT).unwrap();

    let e = c
        .wait_event("beta", EventKind::DetectionDeferred, "alpha", fault, MARGIN)
        .unwrap_or_else(|| panic!("no deferral: {:?}\n{}", c.journal("beta"), c.log("beta")));
    assert_eq!(e.cause, "local_stall", "{e:?}");
    // Settle, then: beta never declared alpha down.
    std::thread::sleep(Duration::from_millis(700));
    for event in [EventKind::LinkDown, EventKind::NodeDown] {
        assert!(
            c.wait_event("beta", event, "alpha", fault, Duration::ZERO)
                .is_none(),
            "beta failed alpha while beta itself was stopped: {:?}",
            c.journal("beta")
        );
    }
    let st = c.status("beta");
    assert!(counter(&st, "defer_local_stall") >= 1, "{st:?}");
    assert!(counter(&st, "defer_rescued") >= 1, "{st:?}");
    assert_eq!(counter(&st, "defer_confirmed"), 0, "{st:?}");
    let link = alpha_link(&st);
    assert_eq!(link.state, LinkState::Up, "{st:?}");
    assert!(link.detector.as_ref().unwrap().deferrals >= 1, "{st:?}");
    assert!(
        link.detector.as_ref().unwrap().own_stall_last_ms.unwrap() >= 20.0,
        "a stall (two intervals or more) is recorded: {st:?}"
    );
    let out = c.cli("beta", &["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!("{text}");
    assert!(
        text.contains("one-way delay") && text.contains("(last: local_stall)"),
        "{text}"
    );

    // Clean exit: the egress stamp goes with the agent.
    c.agent("beta").signal(Signal::SIGTERM).unwrap();
    let status = c
        .agent("beta")
        .wait_timeout(Duration::from_secs(5))
        .unwrap()
        .expect("beta exited");
    assert!(status.success(), "{}", c.log("beta"));
    let tcx = tcx_attachments(Some(c.nodes[b].ns.name())).unwrap();
    assert!(
        !tcx.iter().any(|a| a.prog_name == "egress_stamp"),
        "egress stamp left behind: {tcx:?}"
    );
}

#[test]
fn tcx_attachments_can_be_listed_in_the_root_namespace() {
    // The leak check of `cargo xtask test` relies on it.
    tcx_attachments(None).expect("TCX listing");
}

#[test]
fn a_dead_peer_is_still_detected_within_node_timeout_plus_grace() {
    let mut c = Cluster::new(2, 1, BLIND, false);
    c.start_all();
    c.wait_all_up(UP);
    std::thread::sleep(Duration::from_millis(300));

    // Beta stalls; alpha dies while beta cannot watch.
    c.agent("beta").signal(Signal::SIGSTOP).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    let fault = wall_ns();
    c.agent("alpha").signal(Signal::SIGKILL).unwrap();
    std::thread::sleep(STALL);
    c.agent("beta").signal(Signal::SIGCONT).unwrap();

    let deferred = c
        .wait_event("beta", EventKind::DetectionDeferred, "alpha", fault, MARGIN)
        .unwrap_or_else(|| panic!("no deferral: {:?}", c.journal("beta")));
    assert_eq!(deferred.cause, "local_stall", "{deferred:?}");
    let down = c
        .wait_event("beta", EventKind::NodeDown, "alpha", fault, MARGIN)
        .unwrap_or_else(|| panic!("dead peer hidden: {:?}", c.journal("beta")));
    // One deferral, one grace: the silence before the verdict is between
    // two node_timeouts and two node_timeouts plus a generous slack.
    let silence = Duration::from_nanos(down.since_last_rx_ns.unwrap());
    assert!(silence >= 2 * NODE_TIMEOUT, "down after {silence:?}");
    assert!(
        silence < 2 * NODE_TIMEOUT + Duration::from_millis(500),
        "down after {silence:?}"
    );
    let after_fault = down.kernel_wall_ns - fault;
    assert!(
        Duration::from_nanos(after_fault) < 2 * NODE_TIMEOUT + Duration::from_millis(500),
        "detected {after_fault} ns after the kill"
    );
    let st = c.status("beta");
    assert_eq!(counter(&st, "defer_confirmed"), 1, "{st:?}");
    // SIGKILL leaves no egress stamp behind either (the TCX link dies with
    // the process).
    let _ = c.agent("alpha").wait_timeout(Duration::from_secs(5));
    let a = c.index("alpha");
    let tcx = tcx_attachments(Some(c.nodes[a].ns.name())).unwrap();
    assert!(
        !tcx.iter().any(|t| t.prog_name == "egress_stamp"),
        "egress stamp left behind by a killed agent: {tcx:?}"
    );
    let j = c.journal("beta");
    let deferrals = j
        .iter()
        .filter(|e| {
            e.event == EventKind::DetectionDeferred
                && e.peer.as_deref() == Some("alpha")
                && e.kernel_wall_ns >= fault
        })
        .count();
    assert_eq!(deferrals, 1, "one deferral per silence: {j:?}");
}

#[test]
fn a_stall_of_both_nodes_shorter_than_the_grace_fails_nobody() {
    // The benchmark's whole-machine loads stall both senders at once and no
    // packet flows: each node must see that it was blind itself.
    let mut c = Cluster::new(2, 1, BLIND, false);
    c.start_all();
    c.wait_all_up(UP);
    std::thread::sleep(Duration::from_millis(300));
    let fault = wall_ns();
    c.agent("alpha").signal(Signal::SIGSTOP).unwrap();
    c.agent("beta").signal(Signal::SIGSTOP).unwrap();
    std::thread::sleep(STALL);
    c.agent("alpha").signal(Signal::SIGCONT).unwrap();
    c.agent("beta").signal(Signal::SIGCONT).unwrap();
    for (observer, peer) in [("alpha", "beta"), ("beta", "alpha")] {
        let e = c
            .wait_event(observer, EventKind::DetectionDeferred, peer, fault, MARGIN)
            .unwrap_or_else(|| panic!("{observer}: no deferral: {:?}", c.journal(observer)));
        assert_eq!(e.cause, "local_stall", "{e:?}");
    }
    std::thread::sleep(Duration::from_millis(700));
    for (observer, peer) in [("alpha", "beta"), ("beta", "alpha")] {
        assert!(
            c.wait_event(observer, EventKind::NodeDown, peer, fault, Duration::ZERO)
                .is_none(),
            "{observer} failed {peer} after a stall of both: {:?}",
            c.journal(observer)
        );
    }
}
