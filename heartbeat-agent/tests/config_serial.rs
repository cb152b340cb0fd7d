//! `[serial]` and `[node.serial]` (issue #11): defaults, overrides, and
//! every refusal naming file, line and key.
#![allow(
    unused_crate_dependencies,
    reason = "an integration test links every dependency of its package"
)]

mod common;

use std::path::Path;
use std::time::Duration;

use common::{FILE, line, parse};

/// Two nodes, one network link and one serial device each.
const TWO: &str = r#"[cluster]
name = "demo"
id = 42
key_file = "cluster.key"

[[node]]
id = 1
name = "alpha"
  [[node.link]]
  interface = "eth1"
  address = "10.0.0.1"
  [node.serial]
  device = "/dev/ttyS0"

[[node]]
id = 2
name = "beta"
  [[node.link]]
  interface = "eth1"
  address = "10.0.0.2"
  [node.serial]
  device = "/dev/ttyUSB0"
"#;

#[track_caller]
fn expect_err(text: &str, line: usize, key: &str, wording: &[&str]) {
    let err = match parse(text) {
        Ok(cfg) => panic!("expected an error, got {cfg:#?}"),
        Err(e) => e,
    };
    let msg = err.to_string();
    assert!(
        msg.starts_with(&format!("{FILE}:{line}:")),
        "line {line}: {msg}"
    );
    assert_eq!(err.key(), Some(key), "{msg}");
    for w in wording {
        assert!(msg.contains(w), "wanted {w:?}: {msg}");
    }
}

#[test]
fn defaults_and_overrides() {
    let cfg = parse(TWO).expect("valid");
    let s = cfg.serial.as_ref().expect("a line");
    assert_eq!(s.baud, 115_200);
    assert_eq!(s.interval, Duration::from_millis(10));
    assert_eq!(s.timeout, Duration::from_millis(100));
    assert!(s.required);
    assert!(!s.fec);
    let a = cfg.serial_of(&cfg.nodes[0]).unwrap();
    assert_eq!(a.device, Path::new("/dev/ttyS0"));
    assert_eq!(a.device_key, "node[0].serial.device");
    let b = cfg.serial_of(&cfg.nodes[1]).unwrap();
    assert_eq!(b.device, Path::new("/dev/ttyUSB0"));

    let text = format!(
        "{TWO}\n[serial]\nbaud = 9600\ninterval = \"200ms\"\ntimeout = \"1s\"\nrequired = false\n"
    )
    .replace(
        "device = \"/dev/ttyUSB0\"",
        "device = \"/dev/ttyUSB0\"\ntimeout = \"300ms\"\nrequired = true",
    );
    let cfg = parse(&text).expect("valid");
    let a = cfg.serial_of(&cfg.nodes[0]).unwrap();
    assert_eq!(
        (a.baud, a.interval, a.timeout, a.required),
        (
            9600,
            Duration::from_millis(200),
            Duration::from_secs(1),
            false
        )
    );
    let b = cfg.serial_of(&cfg.nodes[1]).unwrap();
    assert_eq!(
        (b.baud, b.interval, b.timeout, b.required),
        (
            9600,
            Duration::from_millis(200),
            Duration::from_millis(300),
            true
        )
    );
    // Forward error correction, cluster-wide.
    let cfg = parse(&format!("{TWO}\n[serial]\nfec = true\n")).expect("valid");
    assert!(cfg.serial_of(&cfg.nodes[0]).unwrap().fec);
    assert!(cfg.serial_of(&cfg.nodes[1]).unwrap().fec);
    // No serial line at all.
    let none = TWO
        .replace("  [node.serial]\n  device = \"/dev/ttyS0\"\n", "")
        .replace("  [node.serial]\n  device = \"/dev/ttyUSB0\"\n", "");
    let cfg = parse(&none).expect("valid");
    assert!(cfg.serial.is_none() && cfg.serial_of(&cfg.nodes[0]).is_none());
}

#[test]
fn refusals_name_file_line_and_key() {
    // Only for two-node clusters.
    let three = format!(
        "{TWO}\n[[node]]\nid = 3\nname = \"gamma\"\n  [[node.link]]\n  interface = \"eth1\"\n  address = \"10.0.0.3\"\n"
    );
    expect_err(
        &three,
        line(&three, "[node.serial]", 0),
        "node[0].serial",
        &["two nodes of a two-node cluster", "has 3 nodes"],
    );
    let three = format!("{three}\n[serial]\nbaud = 9600\n");
    expect_err(
        &three,
        line(&three, "[serial]", 0),
        "serial",
        &["has 3 nodes"],
    );
    // A line has two ends.
    let one_end = TWO.replace("  [node.serial]\n  device = \"/dev/ttyUSB0\"\n", "");
    expect_err(
        &one_end,
        line(&one_end, "[node.serial]", 0),
        "node[1].serial",
        &["node beta has no [node.serial]"],
    );
    // The device is required.
    let no_dev = TWO.replace("device = \"/dev/ttyUSB0\"", "baud = 9600");
    expect_err(
        &no_dev,
        line(&no_dev, "[node.serial]", 1),
        "node[1].serial.device",
        &["required key is missing in [node.serial]"],
    );
    // Both ends at one speed.
    let bauds = TWO.replace(
        "device = \"/dev/ttyUSB0\"",
        "device = \"/dev/ttyUSB0\"\nbaud = 230400",
    );
    expect_err(
        &bauds,
        line(&bauds, "baud", 0),
        "node[1].serial.baud",
        &["baud 230400 differs from node alpha's 115200"],
    );
    // Timeout above interval, interval not too short.
    let text = format!("{TWO}\n[serial]\ninterval = \"200ms\"\n");
    expect_err(
        &text,
        line(&text, "interval", 0),
        "serial.interval",
        &["timeout = 100ms (the default) must be larger than interval = 200ms"],
    );
    let text = format!("{TWO}\n[serial]\nbaud = 9600\n");
    expect_err(
        &text,
        line(&text, "baud", 0),
        "serial.interval",
        &["10ms is shorter than one heartbeat frame takes at 9600 baud (64ms 583us)"],
    );
    // A protected heartbeat is longer: 95 bytes take 98 ms at 9600 baud.
    let text = format!(
        "{TWO}\n[serial]\nbaud = 9600\ninterval = \"90ms\"\ntimeout = \"1s\"\nfec = true\n"
    );
    expect_err(
        &text,
        line(&text, "interval", 0),
        "serial.interval",
        &["90ms is shorter than one heartbeat frame takes at 9600 baud"],
    );
    let text = format!(
        "{TWO}\n[serial]\nbaud = 9600\ninterval = \"100ms\"\ntimeout = \"1s\"\nfec = true\n"
    );
    assert!(parse(&text).is_ok());
    let text = format!("{TWO}\n[serial]\ninterval = \"100us\"\n");
    expect_err(
        &text,
        line(&text, "interval", 0),
        "serial.interval",
        &["too short"],
    );
    let text = TWO.replace(
        "device = \"/dev/ttyS0\"",
        "device = \"/dev/ttyS0\"\ntimeout = \"5ms\"",
    );
    expect_err(
        &text,
        line(&text, "timeout", 0),
        "node[0].serial.timeout",
        &["must be larger"],
    );
    // Unknown keys and bad values.
    let text = format!("{TWO}\n[serial]\nbuad = 9600\n");
    expect_err(
        &text,
        line(&text, "buad", 0),
        "serial.buad",
        &["did you mean `baud`?"],
    );
    let text = format!("{TWO}\n[serial]\nbaud = 7\n");
    expect_err(
        &text,
        line(&text, "baud", 0),
        "serial.baud",
        &["expected a baud rate in 50..=4000000"],
    );
    let text = TWO.replace(
        "device = \"/dev/ttyS0\"",
        "device = \"/dev/ttyS0\"\nspeed = 1",
    );
    expect_err(
        &text,
        line(&text, "speed", 0),
        "node[0].serial.speed",
        &["unknown key", "device"],
    );
}
