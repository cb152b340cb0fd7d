//! Two and three real agents in network namespaces: round-trip times in the
//! maps, detection of a killed, stopped or silenced node, multi-link
//! behaviour, status, events, metrics and clean shutdown.
#![allow(
    unused_crate_dependencies,
    reason = "an integration test links every dependency of its package"
)]

mod support;

use std::time::Duration;

use heartbeat_tests::{Signal, nft_egress_drop, xdp_attached};
use support::{Cluster, Entry, EventKind, FAST, LinkState, NodeState, STEADY, wall_ns};

/// Generous upper bound for detection in tests (the benchmark measures the
/// real numbers): the deadline is 1 ms (plus agent_timeout for SIGSTOP).
const MARGIN: Duration = Duration::from_secs(2);
const UP: Duration = Duration::from_secs(10);

fn detection_ms(e: &Entry, fault_ns: u64) -> f64 {
    (e.kernel_wall_ns as f64 - fault_ns as f64) / 1e6
}

#[test]
fn two_nodes_kill_stop_and_silence_are_detected() {
    let mut c = Cluster::new(2, 1, FAST, false);
    c.start_all();
    c.wait_all_up(UP);

    // Round-trip times appear in the maps (status reads them).
    std::thread::sleep(Duration::from_millis(300));
    let st = c.status("beta");
    let alpha = st.node("alpha").unwrap();
    assert_eq!(alpha.state, NodeState::Up);
    let link = &alpha.links[0];
    assert!(link.rtt_last_us.unwrap() > 0.0, "no RTT: {st:?}");
    assert!(link.replies_rx > 0, "{st:?}");
    assert!(link.requests_rx > 0, "{st:?}");
    assert!(st.xdp_counters["tx_reply"] > 0, "{st:?}");

    // SIGKILL: alpha's XDP program goes away with the process.
    let fault = wall_ns();
    c.agent("alpha").signal(Signal::SIGKILL).unwrap();
    let e = c
        .wait_event("beta", EventKind::NodeDown, "alpha", fault, MARGIN)
        .unwrap_or_else(|| panic!("SIGKILL not detected: {:?}", c.journal("beta")));
    let ms = detection_ms(&e, fault);
    assert!(ms < MARGIN.as_millis() as f64, "took {ms} ms");
    eprintln!("SIGKILL detected after {ms:.3} ms");
    let _ = c.agent("alpha").wait_timeout(Duration::from_secs(5));
    let a = c.index("alpha");
    let if_a = c.nodes[a].ifaces[0].clone();
    assert!(
        !xdp_attached(&c.nodes[a].ns, &if_a),
        "XDP still attached after SIGKILL"
    );

    // Restart; the link comes back.
    let back = wall_ns();
    c.start("alpha");
    assert!(
        c.wait_event("beta", EventKind::NodeUp, "alpha", back, UP)
            .is_some(),
        "alpha did not come back"
    );

    // SIGSTOP: the dead-man gate stops the kernel from answering.
    std::thread::sleep(Duration::from_millis(200));
    let fault = wall_ns();
    c.agent("alpha").signal(Signal::SIGSTOP).unwrap();
    let e = c
        .wait_event("beta", EventKind::NodeDown, "alpha", fault, MARGIN)
        .unwrap_or_else(|| panic!("SIGSTOP not detected: {:?}", c.journal("beta")));
    eprintln!("SIGSTOP detected after {:.3} ms", detection_ms(&e, fault));
    let resume = wall_ns();
    c.agent("alpha").signal(Signal::SIGCONT).unwrap();
    assert!(
        c.wait_event("beta", EventKind::NodeUp, "alpha", resume, UP)
            .is_some(),
        "alpha not back after SIGCONT: {:?}",
        c.journal("beta")
    );

    // Silent egress drop on alpha's interface.
    std::thread::sleep(Duration::from_millis(200));
    let fault = wall_ns();
    let wire = c.nodes[a].wires[0].clone();
    let rule = nft_egress_drop(&c.nodes[a].ns, &wire).unwrap();
    let e = c
        .wait_event("beta", EventKind::NodeDown, "alpha", fault, MARGIN)
        .unwrap_or_else(|| panic!("silent egress not detected: {:?}", c.journal("beta")));
    eprintln!(
        "silent egress detected after {:.3} ms",
        detection_ms(&e, fault)
    );
    let lifted = wall_ns();
    rule.remove().unwrap();
    assert!(
        c.wait_event("beta", EventKind::NodeUp, "alpha", lifted, UP)
            .is_some()
    );

    // Clean shutdown: SIGTERM detaches XDP and exits 0.
    let b = c.index("beta");
    let if_b = c.nodes[b].ifaces[0].clone();
    assert!(xdp_attached(&c.nodes[b].ns, &if_b));
    c.agent("beta").signal(Signal::SIGTERM).unwrap();
    let status = c
        .agent("beta")
        .wait_timeout(Duration::from_secs(5))
        .unwrap()
        .expect("beta exited");
    assert!(
        status.success(),
        "beta exit status {status}\n{}",
        c.log("beta")
    );
    assert!(
        !xdp_attached(&c.nodes[b].ns, &if_b),
        "XDP still attached after SIGTERM"
    );
    assert!(!c.socket("beta").exists(), "control socket left behind");
    let j = c.journal("beta");
    assert_eq!(j.last().unwrap().event, EventKind::AgentStopping);
}

#[test]
fn one_link_of_two_failing_keeps_the_node_up() {
    let mut c = Cluster::new(2, 2, STEADY, false);
    c.start_all();
    c.wait_all_up(UP);
    std::thread::sleep(Duration::from_millis(300));
    let a = c.index("alpha");
    let wire0 = c.nodes[a].wires[0].clone();
    let fault = wall_ns();
    let rule = nft_egress_drop(&c.nodes[a].ns, &wire0).unwrap();
    let e = c
        .wait_event("beta", EventKind::LinkDown, "alpha", fault, MARGIN)
        .unwrap_or_else(|| panic!("link failure not reported: {:?}", c.journal("beta")));
    assert_eq!(e.link, Some(0));
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        c.wait_event(
            "beta",
            EventKind::NodeDown,
            "alpha",
            fault,
            Duration::from_millis(10)
        )
        .is_none(),
        "a single link failure took the node down: {:?}",
        c.journal("beta")
    );
    let st = c.status("beta");
    let alpha = st.node("alpha").unwrap();
    assert_eq!(alpha.state, NodeState::Up, "{st:?}");
    assert_eq!(alpha.links[0].state, LinkState::Down, "{st:?}");
    assert_eq!(alpha.links[1].state, LinkState::Up, "{st:?}");
    // The human rendering shows both links.
    let out = c.cli("beta", &["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("alpha") && text.contains("down") && text.contains("up"),
        "{text}"
    );
    let lifted = wall_ns();
    rule.remove().unwrap();
    assert!(
        c.wait_event("beta", EventKind::LinkUp, "alpha", lifted, UP)
            .is_some()
    );
}

#[test]
fn three_nodes_metrics_status_and_events() {
    let mut c = Cluster::new(3, 1, STEADY, true);
    c.start_all();
    c.wait_all_up(UP);
    std::thread::sleep(Duration::from_millis(500));

    let g = c.index("gamma");
    let body = support::http_get(&c.nodes[g].ns, "127.0.0.1:9465", "/metrics");
    let mut up = 0;
    let mut rtt_count = 0.0;
    let mut replies_tx = 0.0;
    for line in body.lines().filter(|l| !l.starts_with('#')) {
        let (name, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad line {line}"));
        let v: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line}"));
        if name.starts_with("heartbeat_node_up{") && v == 1.0 {
            up += 1;
        }
        if name.starts_with("heartbeat_link_rtt_seconds_count{") {
            rtt_count += v;
        }
        if name.starts_with("heartbeat_xdp_packets_total{") && name.contains("reason=\"reply\"") {
            replies_tx += v;
        }
    }
    assert_eq!(up, 2, "gamma should see two peers up:\n{body}");
    assert!(rtt_count > 0.0, "no RTT samples:\n{body}");
    assert!(replies_tx > 0.0, "no replies counted:\n{body}");
    for required in [
        "heartbeat_link_up{",
        "heartbeat_link_rtt_seconds_bucket{",
        "heartbeat_sender_lateness_seconds_bucket",
        "heartbeat_agent_uptime_seconds",
        "heartbeat_build_info",
        "heartbeat_link_requests_sent_total{",
    ] {
        assert!(body.contains(required), "missing {required}:\n{body}");
    }
    // Consistent with the maps as status reports them.
    let st = c.status("gamma");
    assert_eq!(st.nodes.len(), 3);
    assert!(st.nodes.iter().all(|n| n.state == NodeState::Up), "{st:?}");
    // 404 for other paths.
    let other = support::http_get(&c.nodes[g].ns, "127.0.0.1:9465", "/");
    assert!(other.contains("/metrics"));

    // Kill alpha: both survivors journal it; `events` prints it as JSON lines.
    let fault = wall_ns();
    c.agent("alpha").signal(Signal::SIGKILL).unwrap();
    for survivor in ["beta", "gamma"] {
        assert!(
            c.wait_event(survivor, EventKind::NodeDown, "alpha", fault, MARGIN)
                .is_some()
        );
    }
    let out = c.cli("gamma", &["events"]);
    assert!(out.status.success());
    let lines: Vec<Entry> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("events line is an Entry"))
        .collect();
    assert_eq!(lines[0].event, EventKind::AgentStarted);
    let down = lines
        .iter()
        .find(|e| {
            e.event == EventKind::NodeDown
                && e.peer.as_deref() == Some("alpha")
                && e.kernel_wall_ns >= fault
        })
        .expect("node_down in events");
    assert!(down.kernel_wall_ns >= fault);
    assert!(down.handled_wall_ns >= down.kernel_wall_ns);
    assert!(down.since_last_rx_ns.unwrap() >= 20_000_000);
}
