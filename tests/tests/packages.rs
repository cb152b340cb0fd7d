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
    find(st, name).expect("package in status")
}

/// The package in a status, if the agent lists it yet (not before its
/// packages task has started).
fn find<'a>(st: &'a StatusReport, name: &str) -> Option<&'a heartbeat_api::status::PackageStatus> {
    st.packages.iter().find(|p| p.name == name)
}

/// Waits until every node in `names` agrees that `web` is owned by
/// `owner` and `owner` runs it.
fn wait_owner(c: &Cluster, names: &[&str], owner: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        let sts: Vec<_> = names.iter().map(|n| c.try_status(n)).collect();
        let ok = sts.iter().zip(names).all(|(st, n)| {
            st.as_ref().and_then(|st| find(st, "web")).is_some_and(|p| {
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
    holders_of(c, VIP)
}

/// Which node holds `ip`/24 on an interface right now.
fn holders_of(c: &Cluster, ip: &str) -> Vec<String> {
    c.members()
        .filter(|n| {
            n.ns.exec(&["ip", "-o", "addr", "show"])
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(&format!("{ip}/24")))
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
fn a_clean_stop_hands_the_package_over_before_leaving() {
    let mut c = Cluster::new(3, 1, RELAXED, false);
    let log = add_package(&c, "");
    c.start_all();
    wait_owner(&c, &["alpha", "beta", "gamma"], "alpha");
    let before = log_lines(&log).len();
    // SIGTERM: alpha stops web while still a member, beta starts it on
    // alpha's report, then alpha leaves.
    c.agent("alpha").signal(Signal::SIGTERM).unwrap();
    let st = c.agent("alpha").wait_timeout(WAIT).unwrap();
    assert!(
        st.is_some_and(|s| s.success()),
        "alpha's exit: {st:?}\n{}",
        c.log("alpha")
    );
    wait_owner(&c, &["beta", "gamma"], "beta");
    let after: Vec<String> = log_lines(&log).split_off(before);
    let pos = |p: &str| after.iter().position(|l| l.starts_with(p));
    let (stop, start) = (pos("alpha stop"), pos("beta start"));
    assert!(
        stop.is_some() && start.is_some() && stop < start,
        "alpha's stop before beta's start: {after:?}"
    );
    assert_eq!(
        after.iter().filter(|l| l.contains(" start ")).count(),
        1,
        "{after:?}"
    );
    // Handed over, not waited out: beta never waited for alpha's lease.
    let journal = c.journal("beta");
    assert!(
        !journal
            .iter()
            .any(|e| e.event == support::EventKind::PackageCleared
                && e.peer.as_deref() == Some("alpha")
                && e.cause == "lease_expired"),
        "{journal:?}"
    );
    assert!(
        c.log("alpha").contains("packages handed over"),
        "{}",
        c.log("alpha")
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

/// Drops everything `from` sends to the nodes in `to` (replies included:
/// they leave through the same wire port).
fn cut(c: &Cluster, from: &str, to: &[&str]) -> heartbeat_tests::NftGuard {
    let i = c.index(from);
    let addrs: Vec<String> = to.iter().map(|n| support::addr(c.index(n), 0)).collect();
    heartbeat_tests::nft_egress_rule(
        &c.nodes[i].ns,
        &c.nodes[i].wires[0],
        &format!("ip daddr {{ {} }} drop", addrs.join(", ")),
    )
    .expect("nft rule")
}

/// Cuts every link between the two groups, both ways.
fn split(c: &Cluster, a: &[&str], b: &[&str]) -> Vec<heartbeat_tests::NftGuard> {
    a.iter()
        .map(|n| cut(c, n, b))
        .chain(b.iter().map(|n| cut(c, n, a)))
        .collect()
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn minority_stops_and_even_split_starts_nothing() {
    // 2|1: the minority owner stops and its address goes; the majority
    // takes the package.
    let mut c = Cluster::new(3, 1, RELAXED, false);
    add_package(&c, "");
    c.start_all();
    wait_owner(&c, &["alpha", "beta", "gamma"], "alpha");
    let guards = split(&c, &["alpha"], &["beta", "gamma"]);
    wait_owner(&c, &["beta", "gamma"], "beta");
    wait_for("alpha to stop web", || {
        c.try_status("alpha")
            .is_some_and(|st| find(&st, "web").is_some_and(|p| p.local_state == "stopped"))
    });
    assert_eq!(holders(&c), vec!["beta".to_owned()]);
    drop(guards);
    drop(c);

    // 2|2 without a tie-breaker: nobody is quorate, nothing runs.
    let mut c = Cluster::new(4, 1, RELAXED, false);
    let log = add_package(&c, "");
    c.edit_config(|t| {
        t.replace(
            "nodes = [\"alpha\", \"beta\", \"gamma\"]",
            "nodes = [\"alpha\", \"beta\", \"gamma\", \"delta\"]",
        )
    });
    c.start_all();
    wait_owner(&c, &["alpha", "beta", "gamma", "delta"], "alpha");
    let before = log_lines(&log).len();
    let _guards = split(&c, &["alpha", "beta"], &["gamma", "delta"]);
    wait_for("alpha to stop web", || {
        c.try_status("alpha")
            .is_some_and(|st| find(&st, "web").is_some_and(|p| p.local_state == "stopped"))
    });
    std::thread::sleep(Duration::from_secs(1));
    let after: Vec<String> = log_lines(&log).split_off(before);
    assert!(
        !after.iter().any(|l| l.contains(" start ")),
        "no start in a 2|2 split: {after:?}"
    );
    assert!(holders(&c).is_empty(), "{:?}", holders(&c));
}

#[test]
fn ocf_agents_run_unchanged_and_a_configuration_error_bans_everywhere() {
    let mut c = Cluster::new(3, 1, RELAXED, false);
    let state = c.dir.0.join("dummy.state");
    c.edit_config(|t| {
        format!(
            "{t}\n[[package]]\nname = \"dummy\"\nnodes = [\"beta\", \"alpha\", \"gamma\"]\n\
             agent = \"ocf:heartbeat:Dummy\"\nmonitor_interval = \"100ms\"\n\
             [package.params]\nstate = \"{}\"\n\n\
             [[package]]\nname = \"noip\"\nnodes = [\"alpha\", \"beta\", \"gamma\"]\n\
             agent = \"ocf:heartbeat:IPaddr2\"\n[package.params]\ncidr_netmask = \"24\"\n\n\
             [[package]]\nname = \"ip\"\nnodes = [\"gamma\", \"alpha\", \"beta\"]\n\
             agent = \"ocf:heartbeat:IPaddr2\"\nmonitor_interval = \"200ms\"\n\
             start_timeout = \"20s\"\nstop_timeout = \"20s\"\n\
             [package.params]\nip = \"{IP2}\"\ncidr_netmask = \"24\"\n",
            state.display()
        )
    });
    c.start_all();
    wait_for("dummy to run on beta", || {
        c.try_status("beta").is_some_and(|st| {
            find(&st, "dummy")
                .is_some_and(|p| p.owner.as_deref() == Some("beta") && p.local_state == "running")
        })
    });
    assert!(state.exists(), "Dummy's state file");
    // IPaddr2 without `ip` exits 6 (OCF_ERR_CONFIGURED): no node may run it.
    wait_for("noip to be fatal everywhere", || {
        ["alpha", "beta", "gamma"].iter().all(|n| {
            c.try_status(n).is_some_and(|st| {
                find(&st, "noip")
                    .is_some_and(|p| p.fatal && p.owner.is_none() && p.local_state == "stopped")
            })
        })
    });
    let st = c.status("alpha");
    assert!(
        package(&st, "noip").reason.contains("configuration error"),
        "{st:?}"
    );
    // A stop through the operator stops Dummy (its state file goes).
    let out = c.cli("gamma", &["package", "stop", "dummy"]);
    assert!(out.status.success(), "{out:?}");
    wait_for("Dummy's state file to go", || !state.exists());
    // IPaddr2 with its address: it adds the address on the node it runs
    // on (finding the interface by the subnet), and a move takes it over.
    let runs_on = |node: &str| {
        c.try_status(node).is_some_and(|st| {
            find(&st, "ip")
                .is_some_and(|p| p.owner.as_deref() == Some(node) && p.local_state == "running")
        })
    };
    wait_for("IPaddr2 to run on gamma", || runs_on("gamma"));
    assert_eq!(holders_of(&c, IP2), vec!["gamma".to_owned()]);
    let out = c.cli("beta", &["package", "move", "ip", "alpha"]);
    assert!(out.status.success(), "{out:?}");
    wait_for("IPaddr2 to run on alpha", || runs_on("alpha"));
    wait_for("the address to be on alpha alone", || {
        holders_of(&c, IP2) == vec!["alpha".to_owned()]
    });
}

/// The address `ocf:heartbeat:IPaddr2` manages in the OCF test.
const IP2: &str = "10.210.0.101";

#[test]
fn automatic_failback_and_min_package_node() {
    let mut c = Cluster::new(3, 1, RELAXED, false);
    let script = write_script(&c.dir.0);
    let s = script.display();
    c.edit_config(|t| {
        format!(
            "{t}\n[[package]]\nname = \"web\"\nnodes = [\"alpha\", \"beta\", \"gamma\"]\n\
             failback_policy = \"automatic\"\nstart = \"{s} start\"\nstop = \"{s} stop\"\n\n\
             [[package]]\nname = \"db\"\nnodes = [\"alpha\", \"beta\", \"gamma\"]\n\
             failover_policy = \"min_package_node\"\nstart = \"{s} start\"\nstop = \"{s} stop\"\n"
        )
    });
    c.start_all();
    wait_owner(&c, &["alpha", "beta", "gamma"], "alpha");
    // db goes where fewer packages run: not alpha.
    wait_for("db placed away from alpha", || {
        c.try_status("beta").is_some_and(|st| {
            find(&st, "db")
                .is_some_and(|p| p.owner.is_some() && p.owner.as_deref() != Some("alpha"))
        })
    });
    // alpha halts: web fails over; alpha starts again: web comes back.
    let out = c.cli("alpha", &["node", "halt"]);
    assert!(out.status.success(), "{out:?}");
    wait_owner(&c, &["beta", "gamma"], "beta");
    let out = c.cli("alpha", &["node", "start"]);
    assert!(out.status.success(), "{out:?}");
    wait_owner(&c, &["alpha", "beta", "gamma"], "alpha");
    // The coordinator journaled the failback with its reason (the journal
    // is written by a thread of its own: it may lag behind the status
    // under load, so wait for it).
    let deadline = Instant::now() + WAIT;
    loop {
        let placed: Vec<_> = ["alpha", "beta", "gamma"]
            .iter()
            .flat_map(|n| c.journal(n))
            .filter(|e| {
                e.event == support::EventKind::PackagePlaced && e.package.as_deref() == Some("web")
            })
            .map(|e| (e.cause, e.peer, e.detail))
            .collect();
        if placed.iter().any(|(cause, peer, detail)| {
            cause == "failback"
                && peer.as_deref() == Some("alpha")
                && detail
                    .as_deref()
                    .is_some_and(|d| d.contains("failback from beta"))
        }) {
            break;
        }
        assert!(Instant::now() < deadline, "{placed:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn hanging_start_is_killed_and_failing_stop_escalates() {
    let mut c = Cluster::new(3, 1, RELAXED, false);
    let script = write_script(&c.dir.0);
    let s = script.display();
    let marker = c.dir.0.join("hang.alpha");
    // alpha's start hangs (killed at the timeout; alpha is then banned);
    // beta's stop fails once web runs there (not the stop before join).
    let start = c.dir.0.join("start.sh");
    let stop = c.dir.0.join("stop.sh");
    fs::write(
        &start,
        format!(
            "#!/bin/sh
if [ \"$HEARTBEAT_NODE\" = alpha ]; then touch {m}; exec sleep 100; fi
exec {s} start
",
            m = marker.display()
        ),
    )
    .unwrap();
    fs::write(
        &stop,
        format!(
            "#!/bin/sh
if [ \"$HEARTBEAT_NODE\" = beta ] && [ \"$HEARTBEAT_EPOCH\" != 0 ]; then exit 1; fi
exec {s} stop
"
        ),
    )
    .unwrap();
    for f in [&start, &stop] {
        fs::set_permissions(f, fs::Permissions::from_mode(0o755)).unwrap();
    }
    let (start, stop) = (start.display(), stop.display());
    c.edit_config(|t| {
        format!(
            "{t}\n[[package]]\nname = \"web\"\nnodes = [\"alpha\", \"beta\", \"gamma\"]\n\
             start = \"{start}\"\nstop = \"{stop}\"\nstart_timeout = \"500ms\"\n"
        )
    });
    c.start_all();
    wait_owner(&c, &["alpha", "beta", "gamma"], "beta");
    assert!(marker.exists(), "alpha's start ran");
    let st = c.status("alpha");
    let p = package(&st, "web");
    assert!(p.banned, "{p:?}");
    let j = c.journal("alpha");
    assert!(
        j.iter()
            .any(|e| e.event == support::EventKind::PackageAction
                && e.cause == "start"
                && e.detail.as_deref().is_some_and(|d| d.contains("timed out"))),
        "{j:?}"
    );
    // Move it away from beta: beta's stop fails, beta leaves the cluster,
    // gamma starts web once beta's lease is out.
    let out = c.cli("gamma", &["package", "move", "web", "gamma"]);
    assert!(out.status.success(), "{out:?}");
    wait_for("beta to escalate", || {
        c.journal("beta")
            .iter()
            .any(|e| e.event == support::EventKind::PackageFailed && e.cause == "stop_failed")
    });
    c.agreed(&["alpha", "gamma"], &["alpha", "gamma"], WAIT);
    wait_owner(&c, &["alpha", "gamma"], "gamma");
}

#[test]
fn a_fence_command_clears_a_silent_owner_at_once() {
    let mut c = Cluster::new(3, 1, RELAXED, false);
    let log = add_package(&c, "");
    // A long lease: without the fence, beta would wait 10 s for alpha's.
    let fence = c.dir.0.join("fence.sh");
    let marker = c.dir.0.join("fenced");
    fs::write(
        &fence,
        format!(
            "#!/bin/sh\necho \"$HEARTBEAT_FENCE_NODE by $HEARTBEAT_NODE\" >> {}\n",
            marker.display()
        ),
    )
    .unwrap();
    fs::set_permissions(&fence, fs::Permissions::from_mode(0o755)).unwrap();
    let f = fence.display().to_string();
    c.edit_config(|t| {
        t.replace(
            "heartbeat_interval",
            "package_lease = \"10s\"\nheartbeat_interval",
        )
        .replace(
            "name = \"alpha\"\n",
            &format!("name = \"alpha\"\nfence = \"{f}\"\n"),
        )
    });
    c.start_all();
    wait_owner(&c, &["alpha", "beta", "gamma"], "alpha");
    let before = log_lines(&log).len();
    let cut_at = Instant::now();
    let _guards = split(&c, &["alpha"], &["beta", "gamma"]);
    wait_owner(&c, &["beta", "gamma"], "beta");
    let took = cut_at.elapsed();
    assert!(
        took < Duration::from_secs(8),
        "beta started after {took:?}: it waited for alpha's lease, not the fence"
    );
    let fenced = fs::read_to_string(&marker).unwrap_or_default();
    assert!(fenced.starts_with("alpha by beta"), "{fenced:?}");
    let after: Vec<String> = log_lines(&log).split_off(before);
    assert!(
        after.iter().any(|l| l.starts_with("beta start")),
        "{after:?}"
    );
    let j = c.journal("beta");
    assert!(
        j.iter()
            .any(|e| e.event == support::EventKind::PackageCleared
                && e.cause == "fenced"
                && e.peer.as_deref() == Some("alpha")),
        "{j:?}"
    );
}
