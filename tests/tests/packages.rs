//! Packages on real agents in namespaces: placement, failover of a killed
//! owner, scripts run once each and in order, the address answering from
//! exactly one node, restart in place, operator commands.
#![allow(
    unused_crate_dependencies,
    reason = "an integration test links every dependency of its package"
)]

mod support;

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use heartbeat_tests::Signal;
use support::{Cluster, StatusReport, Timing};

/// Semantics, not speed: tolerant of a busy machine.
const RELAXED: Timing = Timing {
    interval: "5ms",
    node_timeout: "100ms",
    agent_timeout: "1s",
};

const WAIT: Duration = Duration::from_secs(20);

/// The package's address (on link 0's subnet, no `dev`: each node's link).
const VIP: &str = "10.210.0.100";

/// A service script: logs every action to a shared log and keeps a marker
/// file per node while "running"; `monitor` fails while a `fail` file
/// exists.
fn write_script(dir: &Path) -> PathBuf {
    let script = dir.join("svc.sh");
    let log = dir.join("actions.log");
    fs::write(
        &script,
        format!(
            "#!/bin/sh\n\
             d={dir}\n\
             echo \"$HEARTBEAT_NODE $1 epoch=$HEARTBEAT_EPOCH prev=$HEARTBEAT_PREVIOUS_NODE\" >> {log}\n\
             case \"$1\" in\n\
               start) touch \"$d/running.$HEARTBEAT_NODE\" ;;\n\
               stop) rm -f \"$d/running.$HEARTBEAT_NODE\" ;;\n\
               monitor) [ -e \"$d/running.$HEARTBEAT_NODE\" ] && [ ! -e \"$d/fail.$HEARTBEAT_NODE\" ] ;;\n\
             esac\n",
            dir = dir.display(),
            log = log.display()
        ),
    )
    .unwrap();
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
    script
}

fn add_package(c: &Cluster, extra: &str) -> PathBuf {
    let script = write_script(&c.dir.0);
    let s = script.display();
    c.edit_config(|t| {
        format!(
            "{t}\n[[package]]\nname = \"web\"\nnodes = [\"alpha\", \"beta\", \"gamma\"]\n\
             addresses = [\"{VIP}/24\"]\nstart = \"{s} start\"\nstop = \"{s} stop\"\n\
             monitor = \"{s} monitor\"\nmonitor_interval = \"50ms\"\n{extra}\n"
        )
    });
    c.dir.0.join("actions.log")
}

fn log_lines(log: &Path) -> Vec<String> {
    fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.contains(" monitor "))
        .map(str::to_owned)
        .collect()
}

fn package<'a>(st: &'a StatusReport, name: &str) -> &'a heartbeat_api::status::PackageStatus {
    st.packages
        .iter()
        .find(|p| p.name == name)
        .expect("package in status")
}

/// Waits until every node in `names` agrees that `web` is owned by
/// `owner` and `owner` runs it.
fn wait_owner(c: &Cluster, names: &[&str], owner: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        let sts: Vec<_> = names.iter().map(|n| c.try_status(n)).collect();
        let ok = sts.iter().zip(names).all(|(st, n)| {
            st.as_ref().is_some_and(|st| {
                let p = package(st, "web");
                p.owner.as_deref() == Some(owner) && (*n != owner || p.local_state == "running")
            })
        });
        if ok {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "web never ran on {owner}: {:#?}\n{}",
            sts.iter()
                .map(|s| s.as_ref().map(|s| s.packages.clone()))
                .collect::<Vec<_>>(),
            names
                .iter()
                .map(|n| format!("--- {n}:\n{}", c.log(n)))
                .collect::<String>()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Which node holds `VIP` on its interface right now.
fn holders(c: &Cluster) -> Vec<String> {
    c.members()
        .filter(|n| {
            n.ns.exec(&["ip", "-o", "addr", "show"])
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(&format!("{VIP}/24")))
        })
        .map(|n| n.name.clone())
        .collect()
}

#[test]
fn killed_owner_fails_over_and_scripts_run_once_in_order() {
    let mut c = Cluster::new(3, 1, RELAXED, false);
    let log = add_package(&c, "");
    c.start_all();
    c.agreed(
        &["alpha", "beta", "gamma"],
        &["alpha", "beta", "gamma"],
        WAIT,
    );
    wait_owner(&c, &["alpha", "beta", "gamma"], "alpha");
    assert_eq!(holders(&c), vec!["alpha".to_owned()]);
    // Every node stopped the package before joining.
    let lines = log_lines(&log);
    for n in ["alpha", "beta", "gamma"] {
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with(&format!("{n} stop epoch=0"))),
            "{n} did not stop before join: {lines:?}"
        );
    }
    let before = lines.len();

    // Kill alpha: its agent and its link.
    c.agent("alpha").signal(Signal::SIGKILL).unwrap();
    let i = c.index("alpha");
    let iface = c.nodes[i].ifaces[0].clone();
    c.nodes[i].ns.ip(&["link", "set", &iface, "down"]).unwrap();
    wait_owner(&c, &["beta", "gamma"], "beta");
    let after: Vec<String> = log_lines(&log).split_off(before);
    let starts: Vec<_> = after.iter().filter(|l| l.contains(" start ")).collect();
    assert_eq!(starts.len(), 1, "one start after the failover: {after:?}");
    assert!(
        starts[0].starts_with("beta start") && starts[0].ends_with("prev=alpha"),
        "{after:?}"
    );
    assert!(!after.iter().any(|l| l.contains(" stop ")), "{after:?}");
    // alpha's address went down with its link; beta holds it now.
    assert!(holders(&c).contains(&"beta".to_owned()));
    let st = c.status("beta");
    let p = package(&st, "web");
    assert!(p.reason.contains("failover from alpha"), "{p:?}");
    let journal = c.journal("beta");
    assert!(
        journal
            .iter()
            .any(|e| e.event == support::EventKind::PackageCleared
                && e.peer.as_deref() == Some("alpha")
                && e.cause == "lease_expired"),
        "beta waited for alpha's lease: {journal:?}"
    );
}

#[test]
fn monitor_failure_restarts_in_place_then_fails_over() {
    let mut c = Cluster::new(3, 1, RELAXED, false);
    let log = add_package(&c, "restart_limit = 1");
    c.start_all();
    wait_owner(&c, &["alpha", "beta", "gamma"], "alpha");
    let before = log_lines(&log).len();
    // First failure: restarted in place.
    fs::remove_file(c.dir.0.join("running.alpha")).unwrap();
    let deadline = Instant::now() + WAIT;
    while !log_lines(&log)[before..]
        .iter()
        .any(|l| l.starts_with("alpha start"))
    {
        assert!(Instant::now() < deadline, "{:?}", log_lines(&log));
        std::thread::sleep(Duration::from_millis(50));
    }
    wait_owner(&c, &["alpha", "beta", "gamma"], "alpha");
    assert_eq!(package(&c.status("alpha"), "web").restarts, 1);
    // Second failure: the limit is used up: beta takes it.
    fs::write(c.dir.0.join("fail.alpha"), "").unwrap();
    wait_owner(&c, &["alpha", "beta", "gamma"], "beta");
    let st = c.status("alpha");
    let p = package(&st, "web");
    assert!(p.banned, "{p:?}");
    assert_eq!(p.local_state, "stopped");
    assert_eq!(holders(&c), vec!["beta".to_owned()]);
}

#[test]
fn operator_move_freeze_and_stop() {
    let mut c = Cluster::new(3, 1, RELAXED, false);
    add_package(&c, "");
    c.start_all();
    wait_owner(&c, &["alpha", "beta", "gamma"], "alpha");
    // Any node's agent takes the command.
    let out = c.cli("gamma", &["package", "move", "web", "gamma"]);
    assert!(out.status.success(), "{out:?}");
    wait_owner(&c, &["alpha", "beta", "gamma"], "gamma");
    assert_eq!(holders(&c), vec!["gamma".to_owned()]);

    let out = c.cli("beta", &["cluster", "freeze"]);
    assert!(out.status.success(), "{out:?}");
    let out = c.cli("beta", &["package", "move", "web", "beta"]);
    assert!(out.status.success(), "{out:?}");
    std::thread::sleep(Duration::from_millis(500));
    wait_owner(&c, &["alpha", "beta", "gamma"], "gamma");
    assert!(c.status("alpha").frozen);
    let out = c.cli("beta", &["cluster", "unfreeze"]);
    assert!(out.status.success(), "{out:?}");
    wait_owner(&c, &["alpha", "beta", "gamma"], "beta");

    let out = c.cli("alpha", &["package", "stop", "web"]);
    assert!(out.status.success(), "{out:?}");
    let deadline = Instant::now() + WAIT;
    while !holders(&c).is_empty() {
        assert!(Instant::now() < deadline, "{:?}", holders(&c));
        std::thread::sleep(Duration::from_millis(50));
    }
    // Bad input is refused, naming what is wrong.
    let out = c.cli("alpha", &["package", "move", "nope", "beta"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no package named"));
    let out = c.cli("alpha", &["package", "move", "web", "zeta"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no node named"));
}
