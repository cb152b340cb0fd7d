//! `[watchdog]` (issue #9, the watchdog self-fence): off by default, the
//! timeout in whole seconds, every refusal naming file, line and key, and
//! `check-config --node`'s check of the device.
#![allow(
    unused_crate_dependencies,
    reason = "an integration test links every dependency of its package"
)]

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{FILE, parse};

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

[[node]]
id = 2
name = "beta"
  [[node.link]]
  interface = "eth1"
  address = "10.0.0.2"
"#;

#[track_caller]
fn expect_err(text: &str, needle: &str, key: &str, wording: &[&str]) {
    let err = match parse(text) {
        Ok(cfg) => panic!("expected an error, got {cfg:#?}"),
        Err(e) => e,
    };
    let msg = err.to_string();
    let line = common::line(text, needle, 0);
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
fn off_by_default() {
    let cfg = parse(BASE).expect("valid");
    assert_eq!(cfg.watchdog, None);
    assert_eq!(cfg.watchdog_device(&cfg.nodes[0]), None);
}

#[test]
fn device_and_default_timeout() {
    let text = format!("{BASE}\n[watchdog]\ndevice = \"/dev/watchdog\"\n");
    let cfg = parse(&text).expect("valid");
    let w = cfg.watchdog.as_ref().expect("on");
    assert_eq!(w.device, PathBuf::from("/dev/watchdog"));
    assert_eq!(w.timeout, Duration::from_secs(5));
}

#[test]
fn node_name_and_relative_device() {
    let text = format!("{BASE}\n[watchdog]\ndevice = \"wd-{{node}}\"\ntimeout = \"12s\"\n");
    let cfg = parse(&text).expect("valid");
    assert_eq!(
        cfg.watchdog.as_ref().unwrap().timeout,
        Duration::from_secs(12)
    );
    assert_eq!(
        cfg.watchdog_device(&cfg.nodes[0]),
        Some(PathBuf::from("/etc/heartbeat/wd-alpha"))
    );
}

#[test]
fn device_is_required_in_the_table() {
    let text = format!("{BASE}\n[watchdog]\ntimeout = \"5s\"\n");
    expect_err(
        &text,
        "[watchdog]",
        "watchdog.device",
        &["required key is missing in [watchdog]", "/dev/watchdog"],
    );
}

#[test]
fn timeout_in_whole_seconds() {
    for bad in ["1500ms", "500ms", "2s 1ns"] {
        let text = format!("{BASE}\n[watchdog]\ndevice = \"/dev/watchdog\"\ntimeout = \"{bad}\"\n");
        expect_err(
            &text,
            "timeout",
            "watchdog.timeout",
            &["not a whole number of seconds", "whole seconds"],
        );
    }
    let text = format!("{BASE}\n[watchdog]\ndevice = \"/dev/watchdog\"\ntimeout = \"0s\"\n");
    expect_err(&text, "timeout", "watchdog.timeout", &["greater than zero"]);
    let text = format!("{BASE}\n[watchdog]\ndevice = \"/dev/watchdog\"\ntimeout = \"1h\"\n");
    expect_err(&text, "timeout", "watchdog.timeout", &["too long", "10m"]);
    let text = format!("{BASE}\n[watchdog]\ndevice = \"/dev/watchdog\"\ntimeout = 5\n");
    expect_err(
        &text,
        "timeout",
        "watchdog.timeout",
        &["expected a duration"],
    );
}

#[test]
fn unknown_key_lists_the_valid_ones() {
    let text = format!("{BASE}\n[watchdog]\ndevice = \"/dev/watchdog\"\ntimout = \"5s\"\n");
    expect_err(
        &text,
        "timout",
        "watchdog.timout",
        &["did you mean `timeout`", "device, timeout"],
    );
}

/// `check-config --node`: the device must exist and be a character device
/// (a FIFO or regular file stands in for tests); a directory or a missing
/// path is refused, naming `watchdog.device` and its line.
#[test]
fn check_resources_checks_the_device() {
    let dir = std::env::temp_dir().join(format!("hb-wd-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let check = |device: &Path| {
        let text = BASE.replace(
            "key_file = \"cluster.key\"",
            &format!(
                "key_file = \"cluster.key\"\nstate_file = \"{}/{{node}}.state\"",
                dir.display()
            ),
        ) + &format!(
            "\n[control]\nsocket = \"{}/ctl.sock\"\n\n[watchdog]\ndevice = \"{}\"\n",
            dir.display(),
            device.display()
        );
        let cfg = parse(&text).expect("valid");
        let local = cfg.nodes[0].clone();
        cfg.check_resources(&local).map_err(|e| {
            assert_eq!(e.key(), Some("watchdog.device"), "{e}");
            assert!(
                e.to_string()
                    .starts_with(&format!("{FILE}:{}:", common::line(&text, "device =", 0))),
                "{e}"
            );
            e.to_string()
        })
    };
    // A character device.
    check(Path::new("/dev/null")).expect("a character device");
    // A regular file and a FIFO stand in for tests.
    let file = dir.join("wd-file");
    std::fs::write(&file, b"").unwrap();
    check(&file).expect("a regular file");
    let fifo = dir.join("wd-fifo");
    let _ = std::fs::remove_file(&fifo);
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    check(&fifo).expect("a FIFO");
    let e = check(&dir).expect_err("a directory");
    assert!(
        e.contains("is a directory; expected a watchdog character device"),
        "{e}"
    );
    let e = check(&dir.join("absent")).expect_err("missing");
    assert!(e.contains("does not exist"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}
