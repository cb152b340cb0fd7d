//! Integration tests of the configuration module: one test per class of
//! error, asserting on the file name, line number, key path and wording, plus
//! the examples/ files, defaults, path resolution and the system checks.
#![allow(
    unused_crate_dependencies,
    reason = "an integration test links every dependency of its package"
)]

mod common;

use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use common::{FILE, parse};
use heartbeat_agent::config::{ClusterConfig, ConfigError, LinkRole, QuorumSection};
use heartbeat_cluster::{LinkId, NodeId};

/// The usual `[cluster]` (lines 1-4).
const CLUSTER: &str = r#"[cluster]
name = "demo"
id = 42
key_file = "cluster.key"
"#;

/// Two nodes with one link each, starting on line 5 after CLUSTER.
/// Lines: 6 `[[node]]`, 7 id, 8 name, 9 `[[node.link]]`, 10 interface,
/// 11 address, 13 `[[node]]`, 14 id, 15 name, 16 `[[node.link]]`,
/// 17 interface, 18 address.
const NODES: &str = r#"
[[node]]
id = 1
name = "alpha"
  [[node.link]]
  interface = "eth1"
  address = "10.0.0.1"

[[node]]
id = 2
name = "beta"
  [[node.link]]
  interface = "eth1"
  address = "10.0.0.2"
"#;

/// Parses `text`, expects an error at `line` about `key` containing every
/// piece of `wording`, and returns the message.
#[track_caller]
fn expect_err(text: &str, line: usize, key: Option<&str>, wording: &[&str]) -> String {
    let err = match parse(text) {
        Ok(cfg) => panic!("expected an error, got {cfg:#?}"),
        Err(e) => e,
    };
    let msg = err.to_string();
    let prefix = format!("{FILE}:{line}:");
    assert!(msg.starts_with(&prefix), "wanted prefix {prefix:?}: {msg}");
    let place = err.place().expect("error has a place");
    assert_eq!(place.line, line, "{msg}");
    assert!(place.column >= 1, "{msg}");
    if let Some(key) = key {
        assert!(
            msg.contains(&format!(": key `{key}`: ")),
            "wanted key {key}: {msg}"
        );
        assert_eq!(err.key(), Some(key), "{msg}");
    }
    for w in wording {
        assert!(msg.contains(w), "wanted {w:?}: {msg}");
    }
    assert!(!msg.contains('\n'), "one line: {msg}");
    msg
}

/// Replaces the first occurrence of `from` (which must be there).
fn edit(text: &str, from: &str, to: &str) -> String {
    assert!(text.contains(from), "{from:?} not in the text");
    text.replacen(from, to, 1)
}

fn base() -> String {
    format!("{CLUSTER}{NODES}")
}

#[test]
fn valid_config_and_defaults() {
    let cfg = parse(&base()).expect("valid");
    assert_eq!(cfg.path, Path::new(FILE));
    assert_eq!(cfg.cluster.name, "demo");
    assert_eq!(cfg.cluster.id, 42);
    assert_eq!(
        cfg.cluster.key_file,
        Path::new("/etc/heartbeat/cluster.key")
    );
    assert_eq!(cfg.cluster.port, 6405);
    assert_eq!(cfg.cluster.heartbeat_interval, Duration::from_millis(100));
    assert_eq!(cfg.cluster.node_timeout, Duration::from_millis(500));
    assert_eq!(cfg.cluster.agent_timeout, Duration::from_secs(1));
    assert_eq!(cfg.cluster.events_file, None);
    assert_eq!(
        cfg.cluster.state_file,
        Path::new("/var/lib/heartbeat/{node}.state")
    );
    assert!(cfg.cluster.auto_start);
    assert_eq!(cfg.cluster.auto_start_timeout, Duration::from_secs(10));
    assert_eq!(cfg.cluster.restart_window, Duration::from_secs(5));
    assert_eq!(cfg.quorum, QuorumSection::default());
    assert!(!cfg.quorum.two_node && !cfg.quorum.wait_for_all);
    assert_eq!(cfg.quorum.last_man_standing_window, Duration::from_secs(10));
    assert_eq!(cfg.quorum.quorum_server_timeout, Duration::from_secs(1));
    assert_eq!(cfg.total_votes(), 2);
    assert_eq!(cfg.metrics, None);
    assert_eq!(cfg.control.socket, Path::new("/run/heartbeat/control.sock"));
    assert_eq!(cfg.nodes.len(), 2);
    let alpha = &cfg.nodes[0];
    assert_eq!((alpha.id, alpha.name.as_str()), (NodeId(1), "alpha"));
    assert_eq!((alpha.priority, alpha.votes), (100, 1));
    assert_eq!(alpha.links.len(), 1);
    let link = &alpha.links[0];
    assert_eq!(link.id, LinkId(0));
    assert_eq!(link.interface, "eth1");
    assert_eq!(link.address, "10.0.0.1".parse::<IpAddr>().expect("ip"));
    assert_eq!(link.role, LinkRole::Heartbeat);
    assert_eq!(cfg.node(NodeId(2)).map(|n| n.name.as_str()), Some("beta"));
    assert!(cfg.node(NodeId(3)).is_none());
    assert_eq!(
        cfg.locations.get("node[1].link[0].interface"),
        Some((17, 15))
    );
    assert_eq!(cfg.locations.get("cluster.key_file"), Some((4, 12)));
}

#[test]
fn every_option() {
    let text = r#"[cluster]
name = "x"
id = 4294967295
key_file = "keys/k"
port = 7000
heartbeat_interval = "200us"
node_timeout = "1ms"
agent_timeout = "1.5ms"
events_file = "../log/events.jsonl"
state_file = "state/{node}.state"
auto_start = true
auto_start_timeout = "1s 500ms"
restart_window = "3s"

[quorum]
wait_for_all = true
last_man_standing = true
last_man_standing_window = "20s"

[metrics]
listen = "[::1]:9465"

[control]
socket = "run/ctl.sock"

[[node]]
id = 63
name = "n63"
priority = 7
votes = 0
link = [
  { id = 7, interface = "eth7", address = "fd00::1", role = "heartbeat" },
  { id = 3, interface = "eth3", address = "10.3.0.1", role = "stationary" },
]

[[node]]
id = 1
name = "n1"
link = [
  { id = 7, interface = "eth7", address = "fd00::2" },
  { id = 3, interface = "eth3", address = "10.3.0.2", role = "stationary" },
]
"#;
    let cfg = ClusterConfig::from_str(text, Path::new("/srv/hb/cluster.toml")).expect("valid");
    let c = &cfg.cluster;
    assert_eq!(c.id, u32::MAX);
    assert_eq!(c.key_file, Path::new("/srv/hb/keys/k"));
    assert_eq!(c.port, 7000);
    assert_eq!(c.heartbeat_interval, Duration::from_micros(200));
    assert_eq!(c.node_timeout, Duration::from_millis(1));
    assert_eq!(c.agent_timeout, Duration::from_micros(1500));
    assert_eq!(c.auto_start_timeout, Duration::from_millis(1500));
    assert_eq!(c.restart_window, Duration::from_secs(3));
    assert_eq!(c.state_file, Path::new("/srv/hb/state/{node}.state"));
    let q = &cfg.quorum;
    assert!(q.wait_for_all && q.last_man_standing && !q.two_node && !q.auto_tie_breaker);
    assert_eq!(q.last_man_standing_window, Duration::from_secs(20));
    assert_eq!(q.quorum_server, None);
    assert_eq!(
        c.events_file.as_deref(),
        Some(Path::new("/srv/hb/../log/events.jsonl"))
    );
    assert_eq!(
        cfg.metrics.map(|m| m.listen),
        Some("[::1]:9465".parse().expect("addr"))
    );
    assert_eq!(cfg.control.socket, Path::new("/srv/hb/run/ctl.sock"));
    let n = &cfg.nodes[0];
    assert_eq!((n.id, n.priority, n.votes), (NodeId(63), 7, 0));
    assert_eq!(n.links[0].id, LinkId(7));
    assert_eq!(n.links[1].role, LinkRole::Stationary);
}

#[test]
fn relative_config_path_resolves_against_cwd() {
    let cfg = ClusterConfig::from_str(&base(), Path::new("cluster.toml")).expect("valid");
    let cwd = std::env::current_dir().expect("cwd");
    assert_eq!(cfg.cluster.key_file, cwd.join("cluster.key"));
    assert!(cfg.cluster.key_file.is_absolute());
}

#[test]
fn toml_syntax_error() {
    let text = edit(&base(), "name = \"demo\"", "name = \"demo");
    let msg = expect_err(&text, 2, None, &["TOML syntax error", "string"]);
    assert!(msg.starts_with(&format!("{FILE}:2:13: ")), "{msg}");
    let text = edit(&base(), "id = 42", "id = 42\nid = 43");
    expect_err(&text, 4, None, &["TOML syntax error: duplicate key"]);
}

#[test]
fn unknown_key_top_level() {
    let text = format!("{}\n[clustr]\nx = 1\n", base());
    expect_err(
        &text,
        20,
        Some("clustr"),
        &[
            "unknown key (did you mean `cluster`?)",
            "the valid keys in the top level are: cluster, quorum, metrics, control, node",
        ],
    );
}

#[test]
fn unknown_key_in_cluster() {
    let text = edit(&base(), "id = 42", "id = 42\nhearbeat_interval = \"1ms\"");
    expect_err(
        &text,
        4,
        Some("cluster.hearbeat_interval"),
        &[
            "unknown key (did you mean `heartbeat_interval`?)",
            "the valid keys in [cluster] are: name, id, key_file, port, heartbeat_interval",
        ],
    );
}

#[test]
fn unknown_quoted_key_is_shown_quoted_on_one_line() {
    let text = edit(&base(), "id = 42", "id = 42\n\"a\\nb c\" = 1");
    expect_err(
        &text,
        4,
        Some("cluster.\"a\\nb c\""),
        &["unknown key; the valid keys in [cluster] are"],
    );
}

#[test]
fn unknown_key_in_node() {
    let text = edit(&base(), "name = \"beta\"", "name = \"beta\"\nweight = 3");
    expect_err(
        &text,
        16,
        Some("node[1].weight"),
        &["unknown key; the valid keys in [[node]] are: id, name, priority, votes, fence, link"],
    );
}

#[test]
fn unknown_key_in_link() {
    let text = edit(
        &base(),
        "  address = \"10.0.0.2\"",
        "  adress = \"10.0.0.2\"",
    );
    expect_err(
        &text,
        18,
        Some("node[1].link[0].adress"),
        &[
            "unknown key (did you mean `address`?)",
            "the valid keys in [[node.link]] are: id, interface, address, role",
        ],
    );
}

#[test]
fn missing_required_keys() {
    // Points at the table that lacks the key.
    let text = edit(&base(), "id = 42\n", "");
    expect_err(
        &text,
        1,
        Some("cluster.id"),
        &["required key is missing in [cluster] (expected a cluster id in 1..=4294967295)"],
    );
    let text = edit(&base(), "name = \"beta\"\n", "");
    expect_err(
        &text,
        13,
        Some("node[1].name"),
        &["required key is missing in [[node]]"],
    );
    let text = edit(&base(), "  address = \"10.0.0.1\"\n", "");
    expect_err(
        &text,
        9,
        Some("node[0].link[0].address"),
        &[
            "required key is missing in [[node.link]]",
            "IPv4 or IPv6 address",
        ],
    );
    expect_err(
        NODES,
        1,
        Some("cluster"),
        &["the required section [cluster] is missing"],
    );
    let text = edit(&base(), "key_file = \"cluster.key\"\n", "");
    expect_err(
        &text,
        1,
        Some("cluster.key_file"),
        &["required key is missing", "heartbeat-agent keygen"],
    );
}

#[test]
fn wrong_types() {
    let text = edit(&base(), "id = 42", "id = \"42\"");
    expect_err(
        &text,
        3,
        Some("cluster.id"),
        &["expected a cluster id in 1..=4294967295, found a string (\"42\")"],
    );
    let text = edit(&base(), "id = 42", "id = 42\nport = \"6405\"");
    expect_err(
        &text,
        4,
        Some("cluster.port"),
        &["expected a UDP port in 1..=65535, found a string"],
    );
    let text = edit(&base(), "id = 42", "id = 42\nheartbeat_interval = 5");
    expect_err(
        &text,
        4,
        Some("cluster.heartbeat_interval"),
        &[
            "expected a duration such as \"200us\", \"5ms\" or \"2s\" (a quoted string), found an integer (5)",
        ],
    );
    let text = edit(&base(), "name = \"alpha\"", "name = true");
    expect_err(&text, 8, Some("node[0].name"), &["found a boolean (true)"]);
    let text = format!("{CLUSTER}\n[node]\nid = 1\n");
    expect_err(
        &text,
        6,
        Some("node"),
        &["expected an array of tables ([[node]]), found a table"],
    );
    let text = format!("cluster = 5\n{NODES}");
    expect_err(
        &text,
        1,
        Some("cluster"),
        &["expected a table ([cluster]), found an integer (5)"],
    );
    let text = edit(&base(), "id = 42", "id = 42\nport = 70000");
    expect_err(
        &text,
        4,
        Some("cluster.port"),
        &["expected a UDP port in 1..=65535, found 70000"],
    );
    let text = edit(&base(), "id = 42", "id = 0");
    expect_err(&text, 3, Some("cluster.id"), &["found 0"]);
}

#[test]
fn bad_values() {
    let text = edit(
        &base(),
        "address = \"10.0.0.2\"",
        "address = \"10.0.0.300\"",
    );
    expect_err(
        &text,
        18,
        Some("node[1].link[0].address"),
        &["expected an IPv4 or IPv6 address", "found \"10.0.0.300\""],
    );
    let text = edit(&base(), "address = \"10.0.0.2\"", "address = \"224.0.0.1\"");
    expect_err(
        &text,
        18,
        Some("node[1].link[0].address"),
        &["unspecified, multicast or broadcast"],
    );
    let text = edit(
        &base(),
        "address = \"10.0.0.2\"",
        "address = \"10.0.0.2\"\n  role = \"backup\"",
    );
    expect_err(
        &text,
        19,
        Some("node[1].link[0].role"),
        &["expected \"heartbeat\" or \"stationary\", found \"backup\""],
    );
    let text = edit(&base(), "interface = \"eth1\"", "interface = \"a/b\"");
    expect_err(
        &text,
        10,
        Some("node[0].link[0].interface"),
        &["interface name"],
    );
    let text = edit(&base(), "name = \"alpha\"", "name = \"al pha\"");
    expect_err(
        &text,
        8,
        Some("node[0].name"),
        &["a name of 1 to 64 letters"],
    );
    let text = format!("{}[metrics]\nlisten = \"localhost\"\n", base());
    expect_err(
        &text,
        20,
        Some("metrics.listen"),
        &["expected an address and port such as \"127.0.0.1:9465\""],
    );
}

#[test]
fn bad_duration() {
    let text = edit(&base(), "id = 42", "id = 42\nnode_timeout = \"5 parsecs\"");
    expect_err(
        &text,
        4,
        Some("cluster.node_timeout"),
        &[
            "bad duration `5 parsecs`: unknown time unit \"parsecs\"",
            "expected a duration such as \"200us\", \"5ms\" or \"2s\"",
        ],
    );
    let text = edit(&base(), "id = 42", "id = 42\nagent_timeout = \"5\"");
    expect_err(
        &text,
        4,
        Some("cluster.agent_timeout"),
        &["bad duration `5`: time unit needed"],
    );
}

#[test]
fn zero_durations() {
    for key in [
        "heartbeat_interval",
        "node_timeout",
        "agent_timeout",
        "auto_start_timeout",
        "restart_window",
    ] {
        let text = edit(&base(), "id = 42", &format!("id = 42\n{key} = \"0s\""));
        expect_err(
            &text,
            4,
            Some(&format!("cluster.{key}")),
            &["the duration must be greater than zero"],
        );
    }
    let text = edit(&base(), "id = 42", "id = 42\nheartbeat_interval = \"1us\"");
    expect_err(
        &text,
        4,
        Some("cluster.heartbeat_interval"),
        &["1us is too short; the smallest heartbeat_interval is 10us"],
    );
}

#[test]
fn node_timeout_must_exceed_heartbeat_interval() {
    let text = edit(
        &base(),
        "id = 42",
        "id = 42\nheartbeat_interval = \"5ms\"\nnode_timeout = \"5ms\"",
    );
    expect_err(
        &text,
        5,
        Some("cluster.node_timeout"),
        &[
            "node_timeout = 5ms must be larger than heartbeat_interval = 5ms",
            "about 5 × heartbeat_interval is recommended",
        ],
    );
    // node_timeout left at its default: point at heartbeat_interval.
    let text = edit(&base(), "id = 42", "id = 42\nheartbeat_interval = \"1s\"");
    expect_err(
        &text,
        4,
        Some("cluster.heartbeat_interval"),
        &["node_timeout = 500ms (the default) must be larger than heartbeat_interval = 1s"],
    );
}

#[test]
fn agent_timeout_must_exceed_heartbeat_interval() {
    let text = edit(
        &base(),
        "id = 42",
        "id = 42\nheartbeat_interval = \"1ms\"\nnode_timeout = \"5ms\"\nagent_timeout = \"500us\"",
    );
    expect_err(
        &text,
        6,
        Some("cluster.agent_timeout"),
        &["agent_timeout = 500us must be larger than heartbeat_interval = 1ms"],
    );
}

#[test]
fn duplicate_node_ids() {
    let text = edit(&base(), "id = 2", "id = 1");
    expect_err(
        &text,
        14,
        Some("node[1].id"),
        &["node id 1 is already used by node[0] (node alpha, line 7)"],
    );
}

#[test]
fn duplicate_node_names() {
    let text = edit(&base(), "name = \"beta\"", "name = \"alpha\"");
    expect_err(
        &text,
        15,
        Some("node[1].name"),
        &["node name `alpha` is already used by node[0] (line 8)"],
    );
}

#[test]
fn duplicate_addresses() {
    let text = edit(&base(), "address = \"10.0.0.2\"", "address = \"10.0.0.1\"");
    expect_err(
        &text,
        18,
        Some("node[1].link[0].address"),
        &["address 10.0.0.1 is already used by node[0].link[0] of node alpha (line 11)"],
    );
}

#[test]
fn duplicate_link_ids_within_a_node() {
    let text = edit(
        &base(),
        "  address = \"10.0.0.1\"\n",
        "  address = \"10.0.0.1\"\n  [[node.link]]\n  id = 0\n  interface = \"eth2\"\n  address = \"10.1.0.1\"\n",
    );
    expect_err(
        &text,
        13,
        Some("node[0].link[1].id"),
        &["link id 0 is already used by node[0].link[0] of node alpha"],
    );
    // Implied ids: the second link is id 1 by position, the first says 1.
    let text = edit(
        &base(),
        "  interface = \"eth1\"\n  address = \"10.0.0.1\"\n",
        "  id = 1\n  interface = \"eth1\"\n  address = \"10.0.0.1\"\n  [[node.link]]\n  interface = \"eth2\"\n  address = \"10.1.0.1\"\n",
    );
    expect_err(
        &text,
        13,
        Some("node[0].link[1].id"),
        &["link id 1 (implied by its position 1 in the list) is already used by node[0].link[0]"],
    );
}

#[test]
fn node_and_link_id_ranges() {
    for bad in ["0", "64", "-1"] {
        let text = edit(&base(), "id = 2", &format!("id = {bad}"));
        expect_err(
            &text,
            14,
            Some("node[1].id"),
            &[&format!("expected a node id in 1..=63, found {bad}")],
        );
    }
    let text = edit(
        &base(),
        "  interface = \"eth1\"",
        "  id = 8\n  interface = \"eth1\"",
    );
    expect_err(
        &text,
        10,
        Some("node[0].link[0].id"),
        &["expected a link id in 0..=7, found 8"],
    );
}

#[test]
fn at_least_two_nodes() {
    let one = format!(
        "{CLUSTER}\n[[node]]\nid = 1\nname = \"alpha\"\n  [[node.link]]\n  interface = \"eth1\"\n  address = \"10.0.0.1\"\n"
    );
    expect_err(
        &one,
        6,
        Some("node"),
        &["a cluster needs at least 2 nodes, found 1"],
    );
    expect_err(
        CLUSTER,
        1,
        Some("node"),
        &["a cluster needs at least 2 nodes, found 0"],
    );
}

#[test]
fn node_without_heartbeat_link() {
    let text = edit(
        &base(),
        "  address = \"10.0.0.2\"",
        "  address = \"10.0.0.2\"\n  role = \"stationary\"",
    );
    // beta's only link is stationary.
    expect_err(
        &text,
        13,
        Some("node[1].link"),
        &["node beta has no heartbeat link"],
    );
}

#[test]
fn heartbeat_link_without_peer() {
    let text = edit(
        &base(),
        "  address = \"10.0.0.1\"\n",
        "  address = \"10.0.0.1\"\n  [[node.link]]\n  interface = \"eth2\"\n  address = \"10.1.0.1\"\n",
    );
    expect_err(
        &text,
        12,
        Some("node[0].link[1].id"),
        &["link 1 of alpha has no peer on any other node"],
    );
}

#[test]
fn mixed_address_families_on_one_link() {
    let text = edit(&base(), "address = \"10.0.0.2\"", "address = \"fd00::2\"");
    expect_err(
        &text,
        18,
        Some("node[1].link[0].address"),
        &[
            "link 0 mixes address families: node alpha uses 10.0.0.1 (IPv4) but node beta uses fd00::2 (IPv6)",
        ],
    );
}

#[test]
fn role_differs_between_nodes() {
    let text = format!(
        "{CLUSTER}{}",
        r#"
[[node]]
id = 1
name = "alpha"
link = [{ id = 0, interface = "eth1", address = "10.0.0.1" },
        { id = 1, interface = "eth2", address = "10.1.0.1", role = "stationary" }]

[[node]]
id = 2
name = "beta"
link = [{ id = 0, interface = "eth1", address = "10.0.0.2" },
        { id = 1, interface = "eth2", address = "10.1.0.2" }]
"#
    );
    // beta's link 1 has the default role; the error points at its table.
    expect_err(
        &text,
        16,
        Some("node[1].link[1].role"),
        &["link 1 is \"stationary\" on node alpha (line 10) but \"heartbeat\" on node beta"],
    );
}

#[test]
fn local_node_by_name_and_hostname() {
    let cfg = parse(&base()).expect("valid");
    assert_eq!(cfg.local_node(Some("beta")).expect("beta").id, NodeId(2));
    let err = cfg.local_node(Some("gamma")).expect_err("gamma");
    assert_eq!(
        err.to_string(),
        format!("{FILE}: --node `gamma` names no [[node]]; the nodes are: alpha, beta")
    );

    let host = nix::unistd::gethostname().expect("hostname");
    let host = host.to_string_lossy().into_owned();
    let short = host.split('.').next().unwrap_or(&host).to_owned();
    if short.is_empty()
        || !short
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
    {
        return; // hostname not usable as a node name here
    }
    let err = cfg
        .local_node(None)
        .expect_err("no node named like the host");
    let msg = err.to_string();
    assert!(
        msg.contains(&format!(
            "this host's name `{host}` matches no [[node]] name"
        )),
        "{msg}"
    );
    assert!(msg.contains("the nodes are: alpha, beta"), "{msg}");
    assert!(msg.contains("--node NAME"), "{msg}");

    let text = edit(&base(), "name = \"beta\"", &format!("name = \"{short}\""));
    let cfg = parse(&text).expect("valid");
    assert_eq!(cfg.local_node(None).expect("by hostname").id, NodeId(2));
}

/// A unique directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("heartbeat-config-test-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).expect("create temp dir");
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A config in `dir` whose node alpha uses `interface` and `standby`, with
/// `cluster.key` next to it. Lines as in `base()`.
fn system_config(dir: &TempDir, interface: &str) -> ClusterConfig {
    let text = edit(
        &base(),
        "interface = \"eth1\"",
        &format!("interface = \"{interface}\""),
    );
    let path = dir.0.join("cluster.toml");
    std::fs::write(&path, text).expect("write config");
    ClusterConfig::load(&path).expect("valid")
}

fn write_key(dir: &TempDir, text: &str, mode: u32) {
    let path = dir.0.join("cluster.key");
    std::fs::write(&path, text).expect("write key");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

#[test]
fn check_system_passes() {
    let dir = TempDir::new();
    let cfg = system_config(&dir, "lo");
    heartbeat_agent::keyfile::write_new(&dir.0.join("cluster.key")).expect("keygen");
    let alpha = cfg.local_node(Some("alpha")).expect("alpha");
    cfg.check_system(alpha).expect("system ok");
}

#[test]
fn check_system_missing_interface() {
    let dir = TempDir::new();
    let cfg = system_config(&dir, "hbnosuch0");
    heartbeat_agent::keyfile::write_new(&dir.0.join("cluster.key")).expect("keygen");
    let alpha = cfg.local_node(Some("alpha")).expect("alpha");
    let err = cfg.check_system(alpha).expect_err("no such interface");
    assert_eq!(
        err.to_string(),
        format!(
            "{}:10:15: key `node[0].link[0].interface`: interface `hbnosuch0` does not exist on this host",
            dir.0.join("cluster.toml").display()
        )
    );
    // beta's interfaces are not checked on alpha's behalf, and vice versa.
    let cfg2 = system_config(&dir, "lo");
    let alpha = cfg2.local_node(Some("alpha")).expect("alpha");
    cfg2.check_system(alpha)
        .expect("alpha's own interface exists");
    let beta = cfg2.local_node(Some("beta")).expect("beta");
    let err = cfg2.check_system(beta).expect_err("eth1 is absent here");
    assert!(
        err.to_string().contains("node[1].link[0].interface"),
        "{err}"
    );
}

#[test]
fn check_system_key_file_problems() {
    let dir = TempDir::new();
    let cfg = system_config(&dir, "lo");
    let alpha = cfg.local_node(Some("alpha")).expect("alpha");
    let key_path = dir.0.join("cluster.key");
    let prefix = format!(
        "{}:4:12: key `cluster.key_file`: key file {}: ",
        dir.0.join("cluster.toml").display(),
        key_path.display()
    );

    let msg = cfg.check_system(alpha).expect_err("missing").to_string();
    assert_eq!(msg, format!("{prefix}not found"));

    write_key(&dir, "00112233445566778899aabbccddee\n", 0o600);
    let msg = cfg.check_system(alpha).expect_err("short").to_string();
    assert_eq!(
        msg,
        format!("{prefix}line 1: expected 32 hex digits (128 bits), found 30")
    );

    write_key(&dir, "00112233445566778899aabbccddeeff\n", 0o644);
    let msg = cfg.check_system(alpha).expect_err("readable").to_string();
    assert_eq!(
        msg,
        format!(
            "{prefix}mode 0644 lets group/other read it; chmod 600 {}",
            key_path.display()
        )
    );

    write_key(&dir, "00112233445566778899aabbccddeeff\n", 0o600);
    cfg.check_system(alpha).expect("good key");
}

#[test]
fn examples_load() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).expect("examples dir") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "toml") {
            let cfg = ClusterConfig::load(&path).unwrap_or_else(|e| panic!("{e}"));
            assert!(cfg.nodes.len() >= 2, "{}", path.display());
            count += 1;
        }
    }
    assert!(count >= 3, "found {count} examples");
}

#[test]
fn unreadable_file() {
    let err = ClusterConfig::load(Path::new("/nonexistent/heartbeat.toml")).expect_err("missing");
    assert!(
        err.to_string()
            .starts_with("/nonexistent/heartbeat.toml: cannot read the configuration: "),
        "{err}"
    );
}

#[test]
fn keys_waiting_for_later_issues_are_refused_with_the_issue() {
    // (Standby NIC takeover, issue #10, is read now: see netif_config.rs.)
    // Packages (issue #9) are read now: an incomplete one is refused with
    // the missing key.
    let text = format!("{}\n[[package]]\nname = \"db\"\n", base());
    expect_err(
        &text,
        20,
        Some("package[0].nodes"),
        &["required key is missing in [[package]]"],
    );
    // [serial] and [node.serial] (issue #11) are read now: see
    // tests/config_serial.rs.
}

#[test]
fn cluster_start_and_restart_keys() {
    let text = edit(
        &base(),
        "id = 42",
        "id = 42\nnode_timeout = \"2s\"\nagent_timeout = \"3s\"\nauto_start_timeout = \"1s\"",
    );
    expect_err(
        &text,
        6,
        Some("cluster.auto_start_timeout"),
        &["auto_start_timeout = 1s must be larger than node_timeout = 2s"],
    );
    // auto_start_timeout left at its default (10s): point at node_timeout.
    let text = edit(
        &base(),
        "id = 42",
        "id = 42\nnode_timeout = \"20s\"\nagent_timeout = \"30s\"",
    );
    expect_err(
        &text,
        4,
        Some("cluster.node_timeout"),
        &["auto_start_timeout = 10s (the default) must be larger than node_timeout = 20s"],
    );
    let text = edit(
        &base(),
        "id = 42",
        "id = 42\nauto_start = false\nauto_start_timeout = \"20s\"",
    );
    expect_err(
        &text,
        5,
        Some("cluster.auto_start_timeout"),
        &["no effect with auto_start = false (line 4)"],
    );
    let text = edit(&base(), "id = 42", "id = 42\nauto_start = \"no\"");
    expect_err(
        &text,
        4,
        Some("cluster.auto_start"),
        &["expected true or false, found a string (\"no\")"],
    );
    let text = edit(&base(), "id = 42", "id = 42\nrestart_window = \"2min\"");
    expect_err(
        &text,
        4,
        Some("cluster.restart_window"),
        &["2m is too long; at most 1m"],
    );
    let text = edit(&base(), "id = 42", "id = 42\nrestart_window = \"50ms\"");
    expect_err(
        &text,
        4,
        Some("cluster.restart_window"),
        &["50ms is too short; at least 100ms"],
    );
    // Independent of agent_timeout: the agent holds the gate open itself
    // during an announced restart.
    let text = edit(
        &base(),
        "id = 42",
        "id = 42\nagent_timeout = \"5s\"\nrestart_window = \"1s\"",
    );
    assert_eq!(
        parse(&text).expect("valid").cluster.restart_window,
        Duration::from_secs(1)
    );
    let text = edit(&base(), "id = 42", "id = 42\nstate_file = \"\"");
    expect_err(
        &text,
        4,
        Some("cluster.state_file"),
        &["expected a file path"],
    );
    let cfg = parse(&edit(&base(), "id = 42", "id = 42\nauto_start = false")).expect("valid");
    assert!(!cfg.cluster.auto_start);
    let beta = cfg.local_node(Some("beta")).expect("beta");
    assert_eq!(
        cfg.local_paths(beta).state_file,
        Path::new("/var/lib/heartbeat/beta.state")
    );
}

/// Three nodes: alpha, beta, gamma; `[quorum]` on line 27, its keys from line 28.
fn three_nodes(quorum: &str) -> String {
    format!(
        "{}\n[[node]]\nid = 3\nname = \"gamma\"\n  [[node.link]]\n  interface = \"eth1\"\n  address = \"10.0.0.3\"\n\n[quorum]\n{quorum}",
        base()
    )
}

#[test]
fn quorum_options_and_defaults() {
    let text = format!("{}\n[quorum]\ntwo_node = true\n", base());
    let cfg = parse(&text).expect("valid");
    assert!(cfg.quorum.two_node);
    assert!(cfg.quorum.wait_for_all, "two_node implies wait_for_all");
    let cfg = parse(&three_nodes(
        "last_man_standing = true\nlast_man_standing_window = \"3s\"\nwait_for_all = true\n",
    ))
    .expect("valid");
    assert!(cfg.quorum.last_man_standing && cfg.quorum.wait_for_all);
    assert_eq!(cfg.quorum.last_man_standing_window, Duration::from_secs(3));
    let cfg = parse(&three_nodes(
        "quorum_server = \"192.0.2.1:6406\"\nquorum_server_timeout = \"500ms\"\n",
    ))
    .expect("valid");
    assert_eq!(
        cfg.quorum.quorum_server,
        Some("192.0.2.1:6406".parse().expect("addr"))
    );
    assert_eq!(cfg.quorum.quorum_server_timeout, Duration::from_millis(500));
    // auto_tie_breaker with an even number of votes needs nothing else.
    let text = format!("{}\n[quorum]\nauto_tie_breaker = true\n", base());
    assert!(parse(&text).expect("valid").quorum.auto_tie_breaker);
    // Flags written false are accepted and do nothing.
    let text = format!("{}\n[quorum]\ntwo_node = false\n", base());
    assert_eq!(
        parse(&text).expect("valid").quorum,
        QuorumSection::default()
    );
}

#[test]
fn quorum_combinations_votequorum_refuses() {
    expect_err(
        &three_nodes("two_node = true\n"),
        28,
        Some("quorum.two_node"),
        &["two_node = true needs exactly two [[node]] sections, found 3"],
    );
    let two = |q: &str| format!("{}\n[quorum]\n{q}", base());
    expect_err(
        &two("two_node = true\nwait_for_all = false\n"),
        22,
        Some("quorum.wait_for_all"),
        &["wait_for_all = false contradicts two_node = true (line 21)"],
    );
    expect_err(
        &two("two_node = true\nauto_tie_breaker = true\n"),
        22,
        Some("quorum.auto_tie_breaker"),
        &["auto_tie_breaker cannot be used with two_node = true (line 21)"],
    );
    expect_err(
        &two("two_node = true\nlast_man_standing = true\n"),
        22,
        Some("quorum.last_man_standing"),
        &["last_man_standing cannot be used with two_node = true (line 21)"],
    );
    expect_err(
        &two("two_node = true\nquorum_server = \"192.0.2.1:6406\"\n"),
        22,
        Some("quorum.quorum_server"),
        &["quorum_server cannot be used with two_node = true (line 21)"],
    );
    expect_err(
        &three_nodes("quorum_server = \"192.0.2.1:6406\"\nlast_man_standing = true\n"),
        29,
        Some("quorum.last_man_standing"),
        &["last_man_standing cannot be used with quorum_server (line 28)"],
    );
    expect_err(
        &three_nodes("auto_tie_breaker = true\nquorum_server = \"192.0.2.1:6406\"\n"),
        28,
        Some("quorum.auto_tie_breaker"),
        &["auto_tie_breaker cannot be used with quorum_server (line 29)"],
    );
    expect_err(
        &three_nodes("auto_tie_breaker = true\n"),
        28,
        Some("quorum.auto_tie_breaker"),
        &["odd number of votes (3) needs wait_for_all = true"],
    );
    assert!(
        parse(&three_nodes(
            "auto_tie_breaker = true\nwait_for_all = true\n"
        ))
        .is_ok()
    );
    expect_err(
        &three_nodes("last_man_standing_window = \"20s\"\n"),
        28,
        Some("quorum.last_man_standing_window"),
        &["no effect without last_man_standing = true"],
    );
    expect_err(
        &three_nodes("quorum_server_timeout = \"2s\"\n"),
        28,
        Some("quorum.quorum_server_timeout"),
        &["no effect without quorum_server"],
    );
    // The window must outlast node failure detection: names both keys.
    let text = edit(
        &three_nodes("last_man_standing = true\n"),
        "id = 42",
        "id = 42\nnode_timeout = \"30s\"\nagent_timeout = \"31s\"\nauto_start_timeout = \"40s\"",
    );
    expect_err(
        &text,
        4,
        Some("cluster.node_timeout"),
        &[
            "quorum.last_man_standing_window = 10s (the default) must be larger than cluster.node_timeout = 30s",
        ],
    );
    expect_err(
        &three_nodes("quorum_server = \"qnetd\"\n"),
        28,
        Some("quorum.quorum_server"),
        &["expected an address and port", "found \"qnetd\""],
    );
    expect_err(
        &three_nodes("two_nodes = true\n"),
        28,
        Some("quorum.two_nodes"),
        &[
            "unknown key (did you mean `two_node`?)",
            "the valid keys in [quorum] are: two_node, wait_for_all, last_man_standing",
        ],
    );
    let text = edit(&base(), "name = \"alpha\"", "name = \"alpha\"\nvotes = 0");
    let text = edit(&text, "name = \"beta\"", "name = \"beta\"\nvotes = 0");
    expect_err(
        &text,
        17,
        Some("node[1].votes"),
        &["the votes of all nodes add up to 0"],
    );
}

/// Issue 12 row 9: values echoed in messages are cut to a readable length.
#[test]
fn long_values_and_keys_are_cut_in_messages() {
    let long = "x".repeat(100_000);
    for text in [
        edit(&base(), "name = \"demo\"", &format!("name = \"{long}\"")),
        edit(
            &base(),
            "address = \"10.0.0.2\"",
            &format!("address = \"{long}\""),
        ),
        edit(
            &base(),
            "id = 42",
            &format!("id = 42\nnode_timeout = \"5{long}\""),
        ),
        edit(&base(), "id = 42", &format!("id = \"{long}\"")),
        edit(&base(), "id = 42", &format!("id = 42\n{long} = 1")),
        format!("{}\n[metrics]\nlisten = \"{long}\"\n", base()),
        edit(
            &base(),
            "id = 42",
            &format!("id = 42\nevents_file = \"{long}\""),
        ),
    ] {
        let msg = parse(&text).expect_err("too long").to_string();
        assert!(msg.len() < 600, "{} bytes: {}", msg.len(), &msg[..600]);
        assert!(!msg.contains(&"x".repeat(81)), "{msg}");
    }
}

/// Issue 12 row 9: a size cap, and reading stops at the cap.
#[test]
fn config_size_is_capped() {
    let dir = TempDir::new();
    let path = dir.0.join("big.toml");
    let mut text = base();
    text.push_str(&"# padding\n".repeat(110_000));
    std::fs::write(&path, &text).expect("write");
    let err = ClusterConfig::load(&path).expect_err("too large");
    assert_eq!(
        err.to_string(),
        format!(
            "{}: the configuration is larger than 1048576 bytes; this is not a heartbeat configuration",
            path.display()
        )
    );
    // An endless file: the loader stops after the cap (this test filled the
    // memory before the fix).
    let err = ClusterConfig::load(Path::new("/dev/zero")).expect_err("endless");
    assert!(matches!(err, ConfigError::TooLarge { .. }), "{err}");
}

/// A FIFO without a writer neither blocks `load` at open nor at read.
#[test]
fn config_fifo_without_writer_does_not_block() {
    let dir = TempDir::new();
    let path = dir.0.join("cluster.toml");
    nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("mkfifo");
    let (tx, rx) = std::sync::mpsc::channel();
    let p = path.clone();
    std::thread::spawn(move || {
        let _ = tx.send(
            ClusterConfig::load(&p)
                .map(|_| ())
                .map_err(|e| e.to_string()),
        );
    });
    let result = rx
        .recv_timeout(Duration::from_secs(5))
        .expect("load() of a FIFO blocked");
    assert_eq!(
        result,
        Err(format!(
            "{}: cannot read the configuration: it is a FIFO and nothing writes to it",
            path.display()
        ))
    );
}

#[test]
fn non_utf8_config_names_the_line() {
    let dir = TempDir::new();
    let path = dir.0.join("latin1.toml");
    let mut bytes = base().into_bytes();
    bytes.extend_from_slice(b"\n# caf\xe9\n");
    std::fs::write(&path, bytes).expect("write");
    let msg = ClusterConfig::load(&path)
        .expect_err("not UTF-8")
        .to_string();
    assert!(
        msg.starts_with(&format!("{}:20:6: ", path.display())),
        "{msg}"
    );
    assert!(msg.contains("not UTF-8"), "{msg}");
}

/// A config in `dir` (alpha on `lo`) with `cluster` lines added to
/// `[cluster]` and `more` appended; the key file is written too.
fn resource_config(dir: &TempDir, cluster: &str, more: &str) -> ClusterConfig {
    let text = edit(
        &base(),
        "key_file = \"cluster.key\"",
        &format!("key_file = \"cluster.key\"\n{cluster}"),
    );
    let text = format!(
        "{}{more}",
        edit(&text, "interface = \"eth1\"", "interface = \"lo\"")
    );
    let path = dir.0.join("cluster.toml");
    std::fs::write(&path, text).expect("write config");
    let _ = std::fs::remove_file(dir.0.join("cluster.key"));
    heartbeat_agent::keyfile::write_new(&dir.0.join("cluster.key")).expect("keygen");
    ClusterConfig::load(&path).expect("valid")
}

#[track_caller]
fn resources_err(cfg: &ClusterConfig, key: &str, wording: &[&str]) -> String {
    let alpha = cfg.local_node(Some("alpha")).expect("alpha");
    cfg.check_system(alpha).expect("system ok");
    let err = cfg.check_resources(alpha).expect_err("a resource problem");
    let msg = err.to_string();
    assert_eq!(err.key(), Some(key), "{msg}");
    for w in wording {
        assert!(msg.contains(w), "wanted {w:?}: {msg}");
    }
    assert!(!msg.contains("Some("), "Debug text: {msg}");
    assert!(msg.matches("os error").count() <= 1, "{msg}");
    msg
}

/// Issue 12 row 10: check-config --node checks ports and paths without side
/// effects.
#[test]
fn check_resources_passes_and_creates_nothing() {
    let dir = TempDir::new();
    let cfg = resource_config(
        &dir,
        "events_file = \"log/{node}.jsonl\"\nstate_file = \"state/{node}.state\"",
        "\n[control]\nsocket = \"run/{node}.sock\"\n\n[metrics]\nlisten = \"127.0.0.1:0\"\n",
    );
    let alpha = cfg.local_node(Some("alpha")).expect("alpha");
    let paths = cfg.local_paths(alpha);
    assert_eq!(paths.control_socket, dir.0.join("run/alpha.sock"));
    assert_eq!(paths.events_file, Some(dir.0.join("log/alpha.jsonl")));
    assert_eq!(paths.state_file, dir.0.join("state/alpha.state"));
    cfg.check_resources(alpha).expect("resources ok");
    for sub in ["log", "state", "run"] {
        assert!(!dir.0.join(sub).exists(), "{sub} was created");
    }
}

#[test]
fn check_resources_metrics_port_in_use() {
    let dir = TempDir::new();
    let busy = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = busy.local_addr().expect("addr").port();
    let cfg = resource_config(
        &dir,
        "state_file = \"{node}.state\"",
        &format!("\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n"),
    );
    let msg = resources_err(
        &cfg,
        "metrics.listen",
        &[&format!(
            "cannot listen on 127.0.0.1:{port}: the port is in use"
        )],
    );
    assert!(msg.contains("cluster.toml:22:10: "), "{msg}");
}

/// Issue 12 row 5: a control socket path naming an existing file that is
/// not a socket is reported; the file is left alone.
#[test]
fn check_resources_control_socket_must_not_replace_a_file() {
    let dir = TempDir::new();
    let cfg = resource_config(
        &dir,
        "state_file = \"{node}.state\"",
        "\n[control]\nsocket = \"cluster.toml\"\n",
    );
    let msg = resources_err(
        &cfg,
        "control.socket",
        &[
            "cluster.toml exists and is a regular file, not a socket",
            "never deletes a file it did not create",
        ],
    );
    assert!(msg.contains("cluster.toml:22:10: "), "{msg}");
    assert!(dir.0.join("cluster.toml").is_file());
    std::fs::create_dir(dir.0.join("sockdir")).expect("mkdir");
    let cfg = resource_config(
        &dir,
        "state_file = \"{node}.state\"",
        "\n[control]\nsocket = \"sockdir\"\n",
    );
    resources_err(&cfg, "control.socket", &["is a directory, not a socket"]);
    // An existing socket (a stale one, or the running agent's) is fine.
    let _live = std::os::unix::net::UnixListener::bind(dir.0.join("live.sock")).expect("bind");
    let cfg = resource_config(
        &dir,
        "state_file = \"{node}.state\"",
        "\n[control]\nsocket = \"live.sock\"\n",
    );
    let alpha = cfg.local_node(Some("alpha")).expect("alpha");
    cfg.check_resources(alpha).expect("a socket is fine");
}

#[test]
fn check_resources_events_and_state_files() {
    let dir = TempDir::new();
    std::fs::create_dir(dir.0.join("adir")).expect("mkdir");
    let sock = "\n[control]\nsocket = \"{node}.sock\"\n";
    let cfg = resource_config(
        &dir,
        "events_file = \"adir\"\nstate_file = \"{node}.state\"",
        sock,
    );
    let msg = resources_err(
        &cfg,
        "cluster.events_file",
        &["adir is a directory, not a regular file"],
    );
    assert!(msg.contains("cluster.toml:5:15: "), "{msg}");
    nix::unistd::mkfifo(
        &dir.0.join("fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .expect("mkfifo");
    let cfg = resource_config(
        &dir,
        "events_file = \"fifo\"\nstate_file = \"{node}.state\"",
        sock,
    );
    resources_err(
        &cfg,
        "cluster.events_file",
        &["is a FIFO; opening it would block the agent"],
    );
    let cfg = resource_config(
        &dir,
        "events_file = \"cluster.toml/x/events.jsonl\"\nstate_file = \"{node}.state\"",
        sock,
    );
    resources_err(
        &cfg,
        "cluster.events_file",
        &["cluster.toml is a regular file, not a directory"],
    );
    let cfg = resource_config(&dir, "state_file = \"adir\"", sock);
    resources_err(
        &cfg,
        "cluster.state_file",
        &["adir is a directory, not a regular file"],
    );
}

/// Never a panic, always one line with the file's name: the examples with
/// thousands of random edits (deletions, TOML punctuation inserted, lines
/// repeated or swapped), from a fixed seed.
#[test]
fn mutated_examples_never_panic() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move |n: usize| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % n.max(1) as u64) as usize
    };
    const BITS: &[&str] = &[
        "[",
        "]",
        "[[",
        "=",
        "\"",
        "'",
        "{",
        "}",
        ",",
        ".",
        "\n",
        "#",
        "0",
        "-1",
        "x",
        "é",
        "true",
        "1979-05-27",
        "\"\"\"",
        "99999999999999999999",
        "\\",
    ];
    for name in ["two-node.toml", "three-node.toml", "full.toml"] {
        let original = std::fs::read_to_string(dir.join(name)).expect("example");
        for _ in 0..700 {
            let mut text = original.clone();
            for _ in 0..1 + next(3) {
                let mut at = next(text.len());
                while !text.is_char_boundary(at) {
                    at -= 1;
                }
                match next(4) {
                    0 => {
                        let mut end = (at + 1 + next(12)).min(text.len());
                        while !text.is_char_boundary(end) {
                            end += 1;
                        }
                        text.replace_range(at..end, "");
                    }
                    1 => text.insert_str(at, BITS[next(BITS.len())]),
                    _ => {
                        let lines: Vec<&str> = text.lines().collect();
                        let (a, b) = (next(lines.len()), next(lines.len()));
                        let mut lines: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
                        if next(2) == 0 {
                            lines.swap(a, b);
                        } else {
                            let l = lines[a].clone();
                            lines.insert(b, l);
                        }
                        text = lines.join("\n");
                    }
                }
            }
            if let Err(e) = ClusterConfig::from_str(&text, Path::new(FILE)) {
                let msg = e.to_string();
                assert!(msg.starts_with(FILE), "{msg}\n---\n{text}");
                assert!(!msg.contains('\n'), "{msg}");
            }
        }
    }
}
