//! The agent's command line as an administrator meets it: `check-config`,
//! `keygen`, `--help`, and startup failures that must end in one clear error
//! line and exit code 1, never a panic.

mod support;

use std::{fs, os::unix::fs::PermissionsExt as _, process::Command, time::Duration};

use support::{Cluster, STEADY, TempDir, agent_binary};

fn run(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(agent_binary())
        .args(args)
        .output()
        .expect("agent");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn assert_one_error_line(stderr: &str) {
    let errors: Vec<&str> = stderr.lines().filter(|l| l.contains("error:")).collect();
    assert_eq!(errors.len(), 1, "want one error line, got:\n{stderr}");
    assert!(
        !stderr.contains("panicked") && !stderr.contains("backtrace"),
        "{stderr}"
    );
}

#[test]
fn example_configs_pass_check_config() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    for name in ["two-node.toml", "three-node.toml", "full.toml"] {
        let path = root.join(name);
        let (ok, out, err) = run(&["check-config", path.to_str().unwrap()]);
        assert!(ok, "{name}: {err}");
        assert!(out.contains("OK"), "{out}");
    }
}

#[test]
fn bad_config_names_file_line_and_key() {
    let dir = TempDir::new("cli");
    let path = dir.0.join("bad.toml");
    fs::write(
        &path,
        "[cluster]\nname = \"x\"\nid = 1\nkey_file = \"k\"\nnode_timeout = \"5 parsecs\"\n",
    )
    .unwrap();
    let (ok, _, err) = run(&["check-config", path.to_str().unwrap()]);
    assert!(!ok);
    assert_one_error_line(&err);
    assert!(err.contains("bad.toml:5:"), "{err}");
    assert!(err.contains("node_timeout"), "{err}");
}

#[test]
fn keygen_writes_a_private_key_and_refuses_to_overwrite() {
    let dir = TempDir::new("keygen");
    let key = dir.0.join("cluster.key");
    let (ok, _, err) = run(&["keygen", "--out", key.to_str().unwrap()]);
    assert!(ok, "{err}");
    let mode = fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let (ok, _, err) = run(&["keygen", "--out", key.to_str().unwrap()]);
    assert!(!ok);
    assert_one_error_line(&err);
}

#[test]
fn help_explains_every_command() {
    let (ok, out, _) = run(&["--help"]);
    assert!(ok);
    for cmd in ["run", "check-config", "keygen", "status", "events"] {
        assert!(out.contains(cmd), "{out}");
    }
}

#[test]
fn status_without_an_agent_is_one_clear_error() {
    let dir = TempDir::new("nosock");
    let sock = dir.0.join("none.sock");
    let (ok, _, err) = run(&["status", "--socket", sock.to_str().unwrap()]);
    assert!(!ok);
    assert_one_error_line(&err);
    assert!(err.contains("none.sock"), "{err}");
}

#[test]
fn second_agent_on_a_node_fails_cleanly_and_the_first_keeps_running() {
    let mut c = Cluster::new(2, 1, STEADY, false);
    c.start_all();
    c.wait_all_up(Duration::from_secs(10));
    let a = c.index("alpha");
    let out = c.nodes[a]
        .ns
        .command(agent_binary())
        .args([
            "run",
            "--config",
            c.config.to_str().unwrap(),
            "--node",
            "alpha",
        ])
        .output()
        .expect("second agent");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let last = err.lines().last().unwrap_or_default();
    assert!(last.starts_with("heartbeat-agent: error: "), "{err}");
    assert_one_error_line(&err);
    // Caught before anything is attached: the control socket is in use.
    assert!(err.contains("already listening"), "{err}");
    assert!(c.agent("alpha").is_running(), "the first agent died");
    // A key file others can read is refused before anything is touched.
    let key = c.dir.0.join("cluster.key");
    fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
    let (ok, _, err) = run(&[
        "check-config",
        c.config.to_str().unwrap(),
        "--node",
        "nosuch",
    ]);
    assert!(!ok);
    assert_one_error_line(&err);
    assert!(
        err.contains("alpha") && err.contains("beta"),
        "lists the nodes: {err}"
    );
}
