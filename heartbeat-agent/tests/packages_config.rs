//! `[[package]]` in the configuration: the issue's key names, defaults,
//! commands or an OCF agent with `[package.params]`, and errors that name
//! the file, line, key and what was expected.
#![allow(
    unused_crate_dependencies,
    reason = "an integration test links every dependency of its package"
)]

mod common;

use std::path::Path;
use std::time::Duration;

use common::FILE;
use heartbeat_agent::config::{ClusterConfig, ConfigError};
use heartbeat_agent::packages::runner::{Service, Timeouts};
use heartbeat_cluster::placement::{
    FailbackPolicy, FailoverPolicy, OnAllUnhealthy, PackageId, Situation, View, place,
};
use heartbeat_cluster::{Epoch, NodeId};

/// Three nodes; the packages start on line 22.
const BASE: &str = r#"[cluster]
name = "demo"
id = 42
key_file = "cluster.key"

[[node]]
id = 1
name = "alpha"
link = [{ interface = "eth1", address = "10.0.0.1" }]
# one link
[[node]]
id = 2
name = "beta"
link = [{ interface = "eth1", address = "10.0.0.2" }]
# one link
[[node]]
id = 3
name = "gamma"
link = [{ interface = "eth1", address = "10.0.0.3" }]
# one link

"#;

fn parse(packages: &str) -> Result<ClusterConfig, ConfigError> {
    common::parse(&format!("{BASE}{packages}"))
}

#[track_caller]
fn expect_err(packages: &str, line: usize, key: &str, wording: &[&str]) -> String {
    let err = match parse(packages) {
        Ok(cfg) => panic!("expected an error, got {:#?}", cfg.packages),
        Err(e) => e,
    };
    let msg = err.to_string();
    assert!(
        msg.starts_with(&format!("{FILE}:{line}:")),
        "wanted line {line}: {msg}"
    );
    assert_eq!(err.key(), Some(key), "{msg}");
    for w in wording {
        assert!(msg.contains(w), "wanted {w:?}: {msg}");
    }
    assert!(!msg.contains('\n'), "one line: {msg}");
    msg
}

#[test]
fn the_issues_example_parses_with_every_key() {
    let cfg = parse(
        r#"[[package]]
name = "web"
nodes = ["alpha", "beta", "gamma"]
failover_policy = "configured_node"
failback_policy = "manual"
addresses = ["10.0.0.100/24 dev eth1", "fd00::100/64 dev eth1"]
start = "/etc/heartbeat/web start"
stop = "/etc/heartbeat/web stop"
monitor = "/etc/heartbeat/web monitor"
monitor_interval = "100ms"
start_timeout = "10s"
stop_timeout = "10s"
monitor_timeout = "1s"
restart_limit = 2

[[package]]
name = "vip"
nodes = ["gamma", "alpha"]
failover_policy = "min_package_node"
failback_policy = "automatic"
on_all_unhealthy = "stop"
agent = "ocf:heartbeat:IPaddr2"
  [package.params]
  ip = "10.0.0.101"
  cidr_netmask = "24"
"#,
    )
    .expect("valid");
    assert_eq!(cfg.packages.len(), 2);
    let web = &cfg.packages[0];
    assert_eq!(web.spec.name.as_str(), "web");
    assert_eq!(web.nodes, [NodeId(1), NodeId(2), NodeId(3)]);
    assert_eq!(web.failover_policy, FailoverPolicy::ConfiguredNode);
    assert_eq!(web.failback_policy, FailbackPolicy::Manual);
    assert_eq!(web.on_all_unhealthy, OnAllUnhealthy::KeepBest);
    assert_eq!(web.restart_limit, 2);
    assert_eq!(
        web.addresses
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        ["10.0.0.100/24 dev eth1", "fd00::100/64 dev eth1"]
    );
    assert_eq!(
        web.spec.timeouts,
        Timeouts {
            start: Duration::from_secs(10),
            stop: Duration::from_secs(10),
            monitor: Duration::from_secs(1),
            monitor_interval: Duration::from_millis(100),
        }
    );
    let Service::Commands {
        start,
        stop,
        monitor,
    } = &web.spec.service
    else {
        panic!("{:?}", web.spec.service)
    };
    assert_eq!(start.program(), Path::new("/etc/heartbeat/web"));
    assert_eq!(start.args(), ["start"]);
    assert_eq!(stop.args(), ["stop"]);
    assert_eq!(monitor.as_ref().unwrap().args(), ["monitor"]);

    let vip = &cfg.packages[1];
    assert_eq!(vip.nodes, [NodeId(3), NodeId(1)]);
    assert_eq!(vip.failover_policy, FailoverPolicy::MinPackageNode);
    assert_eq!(vip.failback_policy, FailbackPolicy::Automatic);
    assert_eq!(vip.on_all_unhealthy, OnAllUnhealthy::Stop);
    let Service::Ocf { agent, params } = &vip.spec.service else {
        panic!("{:?}", vip.spec.service)
    };
    assert_eq!(agent.to_string(), "ocf:heartbeat:IPaddr2");
    assert_eq!(
        params.iter().collect::<Vec<_>>(),
        [("cidr_netmask", "24"), ("ip", "10.0.0.101")]
    );

    // The placement policies, and a placement of them on all three nodes.
    let policies = heartbeat_agent::packages::policies(&cfg.packages);
    assert_eq!(policies[1].id, PackageId(1));
    assert_eq!(policies[1].nodes, [NodeId(3), NodeId(1)]);
    let view = View {
        epoch: Epoch(1),
        members: [NodeId(1), NodeId(2), NodeId(3)].into_iter().collect(),
        quorate: true,
    };
    let p = place(&view, &policies, &Situation::default());
    assert_eq!(p.owner(PackageId(0)), Some(NodeId(1)));
    // vip: gamma, its first node and the least loaded.
    assert_eq!(p.owner(PackageId(1)), Some(NodeId(3)));
}

#[test]
fn defaults() {
    let cfg = parse(
        "[[package]]\nname = \"db\"\nnodes = [\"beta\"]\nstart = \"/bin/true\"\nstop = \"/bin/true\"\n",
    )
    .unwrap();
    let db = &cfg.packages[0];
    assert_eq!(db.failover_policy, FailoverPolicy::ConfiguredNode);
    assert_eq!(db.failback_policy, FailbackPolicy::Manual);
    assert_eq!(db.on_all_unhealthy, OnAllUnhealthy::KeepBest);
    assert_eq!(db.restart_limit, 0);
    assert!(db.addresses.is_empty());
    assert_eq!(db.spec.timeouts.monitor_interval, Duration::from_secs(1));
    assert!(matches!(
        db.spec.service,
        Service::Commands { monitor: None, .. }
    ));
    assert!(parse("").unwrap().packages.is_empty());
}

#[test]
fn errors_name_the_line_the_key_and_what_was_expected() {
    let head = "[[package]]\nname = \"web\"\n";
    // Line 22 is [[package]], 23 name, 24 the next key.
    expect_err(
        &format!(
            "{head}nodes = [\"alpha\", \"betta\"]\nstart = \"/x start\"\nstop = \"/x stop\"\n"
        ),
        24,
        "package[0].nodes[1]",
        &[
            "no [[node]] is named `betta`",
            "did you mean `beta`",
            "alpha, beta, gamma",
        ],
    );
    expect_err(
        &format!("{head}nodes = [\"alpha\", \"alpha\"]\nstart = \"/x\"\nstop = \"/x\"\n"),
        24,
        "package[0].nodes[1]",
        &["listed twice"],
    );
    expect_err(
        &format!("{head}nodes = []\nstart = \"/x\"\nstop = \"/x\"\n"),
        24,
        "package[0].nodes",
        &["empty"],
    );
    expect_err(
        &format!("{head}nodes = \"alpha\"\nstart = \"/x\"\nstop = \"/x\"\n"),
        24,
        "package[0].nodes",
        &["expected an array of strings"],
    );
    expect_err(
        &format!(
            "{head}nodes = [\"alpha\"]\nfailover_policy = \"least_loaded\"\nstart = \"/x\"\nstop = \"/x\"\n"
        ),
        25,
        "package[0].failover_policy",
        &[
            "\"configured_node\" or \"min_package_node\"",
            "least_loaded",
        ],
    );
    expect_err(
        &format!("{head}nodes = [\"alpha\"]\nstart = \"web start\"\nstop = \"/x\"\n"),
        25,
        "package[0].start",
        &["absolute path"],
    );
    expect_err(
        &format!("{head}nodes = [\"alpha\"]\nstart = \"/x\"\n"),
        22,
        "package[0].stop",
        &["required key is missing in [[package]]", "agent"],
    );
    expect_err(
        &format!("{head}nodes = [\"alpha\"]\nagent = \"ocf:heartbeat:Dummy\"\nstart = \"/x\"\n"),
        26,
        "package[0].start",
        &["`start` and `agent` exclude each other"],
    );
    expect_err(
        &format!("{head}nodes = [\"alpha\"]\nagent = \"heartbeat:Dummy\"\n"),
        25,
        "package[0].agent",
        &["expected `ocf:PROVIDER:TYPE`"],
    );
    expect_err(
        &format!(
            "{head}nodes = [\"alpha\"]\nagent = \"ocf:heartbeat:Dummy\"\n[package.params]\n\"bad-name\" = \"1\"\n"
        ),
        27,
        "package[0].params.bad-name",
        &["letters, digits and `_`"],
    );
    expect_err(
        &format!(
            "{head}nodes = [\"alpha\"]\nstart = \"/x\"\nstop = \"/x\"\n[package.params]\nip = \"1\"\n"
        ),
        27,
        "package[0].params",
        &["need `agent"],
    );
    expect_err(
        &format!(
            "{head}nodes = [\"alpha\"]\nstart = \"/x\"\nstop = \"/x\"\naddresses = [\"10.0.0.100/24 on eth1\"]\n"
        ),
        27,
        "package[0].addresses[0]",
        &["expected `ADDRESS/PREFIX dev DEVICE`"],
    );
    expect_err(
        &format!("{head}nodes = [\"alpha\"]\nstart = \"/x\"\nstop = \"/x\"\nrestart_limit = -1\n"),
        27,
        "package[0].restart_limit",
        &["a restart count in 0..=1000"],
    );
    expect_err(
        &format!(
            "{head}nodes = [\"alpha\"]\nstart = \"/x\"\nstop = \"/x\"\nmonitor_timeout = \"soon\"\n"
        ),
        27,
        "package[0].monitor_timeout",
        &["bad duration"],
    );
    expect_err(
        &format!("{head}nodes = [\"alpha\"]\nstart = \"/x\"\nstop = \"/x\"\nrestart_limt = 2\n"),
        27,
        "package[0].restart_limt",
        &["unknown key", "did you mean `restart_limit`"],
    );
    // Across packages: names and addresses are unique.
    let one = "[[package]]\nname = \"web\"\nnodes = [\"alpha\"]\nstart = \"/x\"\nstop = \"/x\"\naddresses = [\"10.0.0.100/24 dev eth1\"]\n";
    expect_err(
        &format!("{one}{one}"),
        29,
        "package[1].name",
        &["already used by package[0]"],
    );
    let two = one.replace("\"web\"", "\"db\"");
    expect_err(
        &format!("{one}{two}"),
        33,
        "package[1].addresses[0]",
        &["already used by package[0]"],
    );
}
