//! Configuration of standby NIC takeover (issue #10): `[[node.link]]
//! standby` and the network manager's `[cluster]` keys, their defaults, and
//! every refusal naming the file, line and key.
#![allow(
    unused_crate_dependencies,
    reason = "an integration test links every dependency of its package"
)]

mod common;

use std::time::Duration;

use common::{FILE, parse};
use heartbeat_agent::config::ClusterConfig;
use heartbeat_agent::netif::machine::{FailureDetection, NetifSettings};

/// Lines: 1 `[cluster]` .. 4 key_file, 6 `[[node]]`, 9 `[[node.link]]`,
/// 10 interface, 11 address, 12 standby, 14 `[[node.link]]`, 15 id,
/// 16 interface, 17 address, 19 `[[node]]`, 22 `[[node.link]]`.
const BASE: &str = r#"[cluster]
name = "demo"
id = 42
key_file = "cluster.key"

[[node]]
id = 1
name = "alpha"
  [[node.link]]
  interface = "eth1"
  address = "10.0.0.1"
  standby = "eth2"

  [[node.link]]
  id = 1
  interface = "eth3"
  address = "10.1.0.1"

[[node]]
id = 2
name = "beta"
  [[node.link]]
  interface = "eth1"
  address = "10.0.0.2"
  [[node.link]]
  id = 1
  interface = "eth3"
  address = "10.1.0.2"
"#;

#[track_caller]
fn expect_err(text: &str, line: usize, key: &str, wording: &[&str]) {
    let msg = match parse(text) {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    };
    assert!(msg.starts_with(&format!("{FILE}:{line}:")), "{msg}");
    assert!(msg.contains(&format!(": key `{key}`: ")), "{msg}");
    for w in wording {
        assert!(msg.contains(w), "wanted {w:?}: {msg}");
    }
}

#[track_caller]
fn edit(text: &str, from: &str, to: &str) -> String {
    assert!(text.contains(from), "{from:?}");
    text.replacen(from, to, 1)
}

#[test]
fn standby_and_defaults() {
    let cfg = parse(BASE).expect("valid");
    let alpha = &cfg.nodes[0];
    assert_eq!(alpha.links[0].standby.as_deref(), Some("eth2"));
    assert_eq!(alpha.links[1].standby, None);
    assert_eq!(cfg.cluster.netif, NetifSettings::default());
    assert!(cfg.cluster.netif.auto_failback);
    assert_eq!(cfg.cluster.netif.detection, FailureDetection::InOut);
}

#[test]
fn network_manager_keys() {
    let text = edit(
        BASE,
        "id = 42",
        "id = 42\nnetwork_polling_interval = \"20ms\"\nnetwork_failure_detection = \"inonly_or_inout\"\n\
         failback_hold = \"3s\"\nnetwork_announce_count = 5",
    );
    let n = parse(&text).expect("valid").cluster.netif;
    assert_eq!(n.polling_interval, Duration::from_millis(20));
    assert_eq!(n.detection, FailureDetection::InOnlyOrInOut);
    assert_eq!(n.failback_hold, Duration::from_secs(3));
    assert_eq!(n.announce_count, 5);
    let text = edit(BASE, "id = 42", "id = 42\nauto_failback = false");
    assert!(!parse(&text).expect("valid").cluster.netif.auto_failback);

    let text = edit(
        BASE,
        "id = 42",
        "id = 42\nnetwork_failure_detection = \"in\"",
    );
    expect_err(
        &text,
        4,
        "cluster.network_failure_detection",
        &["\"inout\" or \"inonly_or_inout\""],
    );
    let text = edit(
        BASE,
        "id = 42",
        "id = 42\nnetwork_polling_interval = \"10us\"",
    );
    expect_err(&text, 4, "cluster.network_polling_interval", &["too short"]);
    let text = edit(
        BASE,
        "id = 42",
        "id = 42\nauto_failback = false\nfailback_hold = \"1s\"",
    );
    expect_err(
        &text,
        5,
        "cluster.failback_hold",
        &["no effect with auto_failback = false (line 4)"],
    );
}

#[test]
fn a_standby_that_is_the_link_s_own_or_another_link_s_card() {
    let text = edit(BASE, "standby = \"eth2\"", "standby = \"eth1\"");
    expect_err(
        &text,
        12,
        "node[0].link[0].standby",
        &["the link's own interface"],
    );
    let text = edit(BASE, "standby = \"eth2\"", "standby = \"eth3\"");
    expect_err(
        &text,
        12,
        "node[0].link[0].standby",
        &["`eth3` is the interface of node[0].link[1]"],
    );
    let text = edit(
        BASE,
        "  address = \"10.1.0.1\"\n",
        "  address = \"10.1.0.1\"\n  standby = \"eth2\"\n",
    );
    expect_err(
        &text,
        18,
        "node[0].link[1].standby",
        &["already the standby of node[0].link[0]"],
    );
    let text = edit(BASE, "  standby = \"eth2\"\n", "  standby = \"eth4\"\n");
    let text = edit(&text, "interface = \"eth3\"", "interface = \"eth4\"");
    expect_err(
        &text,
        12,
        "node[0].link[0].standby",
        &["is the interface of node[0].link[1]"],
    );
}

#[test]
fn a_standby_that_is_missing() {
    let dir = std::env::temp_dir().join(format!("hb-netif-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    heartbeat_agent::keyfile::write_new(&dir.join("cluster.key")).expect("keygen");
    let path = dir.join("cluster.toml");
    let check = |standby: &str| {
        let text = edit(BASE, "interface = \"eth1\"", "interface = \"lo\"");
        let text = edit(
            &text,
            "standby = \"eth2\"",
            &format!("standby = \"{standby}\""),
        );
        let text = edit(&text, "interface = \"eth3\"", "interface = \"lo\"");
        std::fs::write(&path, text).expect("write");
        let cfg = ClusterConfig::load(&path).expect("valid");
        let alpha = cfg.local_node(Some("alpha")).expect("alpha").clone();
        cfg.check_system(&alpha).map_err(|e| e.to_string())
    };
    let missing = check("hbnosuch9").expect_err("missing");
    assert!(
        missing.contains(":12:")
            && missing.contains("key `node[0].link[0].standby`")
            && missing.contains("interface `hbnosuch9` does not exist"),
        "{missing}"
    );
    assert!(missing.contains("cluster.toml"), "{missing}");
    // (A standby with an address of its own is refused too: tested in a
    // network namespace by tests/tests/netif.rs.)
    let _ = std::fs::remove_dir_all(&dir);
}

/// Links on one interface move to the standby together: the standby is
/// written on one of them only, and naming it on two (the same card or
/// different ones) is refused with both keys and lines.
#[test]
fn two_links_on_one_interface_name_one_standby() {
    let one_interface = edit(BASE, "interface = \"eth3\"", "interface = \"eth1\"");
    let cfg = parse(&one_interface).expect("one standby for both links is valid");
    assert_eq!(cfg.nodes[0].links[0].standby.as_deref(), Some("eth2"));
    assert_eq!(cfg.nodes[0].links[1].standby, None);
    for standby in ["eth4", "eth2"] {
        let text = edit(
            &one_interface,
            "  address = \"10.1.0.1\"\n",
            &format!("  address = \"10.1.0.1\"\n  standby = \"{standby}\"\n"),
        );
        expect_err(
            &text,
            18,
            "node[0].link[1].standby",
            &[
                "node[0].link[0] is on `eth1` too",
                "(node[0].link[0].standby, line 12)",
                "write `standby` on one of them only",
            ],
        );
    }
}
