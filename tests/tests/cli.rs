//! The agent's command line as an administrator meets it: `check-config`,
//! `keygen`, `--help`, and startup failures that must end in one clear error
//! line and exit code 1, never a panic.
#![allow(
    unused_crate_dependencies,
    reason = "an integration test links every dependency of its package"
)]

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
    let out = c.run_once("alpha");
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

/// Runs the agent with `args`, killing it (and failing) if it has not ended
/// within 20 s: a hang is a defect.
fn run_bounded(args: &[&str]) -> (bool, String, String) {
    use std::io::Read as _;
    let mut child = Command::new(agent_binary())
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("agent");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("heartbeat-agent {args:?} hung");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let (mut out, mut err) = (String::new(), String::new());
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (status.success(), out, err)
}

/// A two-node config in `dir` whose node alpha uses `lo`, with `cluster`
/// lines added to `[cluster]` and `more` appended, and a good key file.
fn local_config(dir: &TempDir, cluster: &str, more: &str) -> std::path::PathBuf {
    let key = dir.0.join("cluster.key");
    if !key.exists() {
        fs::write(&key, "00112233445566778899aabbccddeeff\n").unwrap();
        fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();
    }
    let path = dir.0.join("cluster.toml");
    fs::write(
        &path,
        format!(
            "[cluster]\nname = \"t\"\nid = 1\nkey_file = \"cluster.key\"\n\
             state_file = \"{{node}}.state\"\n{cluster}\n\
             [[node]]\nid = 1\nname = \"alpha\"\n  [[node.link]]\n  interface = \"lo\"\n  address = \"10.9.0.1\"\n\
             [[node]]\nid = 2\nname = \"beta\"\n  [[node.link]]\n  interface = \"lo\"\n  address = \"10.9.0.2\"\n\
             {more}"
        ),
    )
    .unwrap();
    path
}

#[test]
fn check_config_node_passes_on_a_good_local_config() {
    let dir = TempDir::new("cc-ok");
    let path = local_config(&dir, "", "[control]\nsocket = \"{node}.sock\"\n");
    let (ok, out, err) = run_bounded(&["check-config", path.to_str().unwrap(), "--node", "alpha"]);
    assert!(ok, "{err}");
    assert!(out.contains("OK"), "{out}");
    assert!(!dir.0.join("alpha.sock").exists() && !dir.0.join("alpha.state").exists());
}

/// Issue 12 row 8: a key file that is a FIFO hung `check-config --node`.
#[test]
fn key_file_fifo_is_not_a_regular_file() {
    let dir = TempDir::new("cc-fifo");
    let path = local_config(&dir, "", "[control]\nsocket = \"{node}.sock\"\n");
    let fifo = dir.0.join("fifo.key");
    let made = Command::new("mkfifo").arg(&fifo).status().expect("mkfifo");
    assert!(made.success());
    let text = fs::read_to_string(&path)
        .unwrap()
        .replace("key_file = \"cluster.key\"", "key_file = \"fifo.key\"");
    fs::write(&path, text).unwrap();
    let (ok, _, err) = run_bounded(&["check-config", path.to_str().unwrap(), "--node", "alpha"]);
    assert!(!ok);
    assert_one_error_line(&err);
    assert!(err.contains("fifo.key: not a regular file"), "{err}");
    assert!(
        err.contains("cluster.toml:4:12: key `cluster.key_file`"),
        "{err}"
    );
}

/// Issue 12 row 9: `check-config /dev/zero` grew to 2 GB.
#[test]
fn endless_config_is_refused_at_the_size_cap() {
    let (ok, _, err) = run_bounded(&["check-config", "/dev/zero"]);
    assert!(!ok);
    assert_one_error_line(&err);
    assert!(
        err.contains("/dev/zero: the configuration is larger than 1048576 bytes"),
        "{err}"
    );
}

/// Issue 12 rows 5 and 10: a control socket path naming the config file
/// itself is reported by `check-config --node`, and the file is kept.
#[test]
fn check_config_node_reports_a_socket_path_that_is_a_file() {
    let dir = TempDir::new("cc-sock");
    let path = local_config(&dir, "", "[control]\nsocket = \"cluster.toml\"\n");
    let before = fs::read(&path).unwrap();
    let (ok, _, err) = run_bounded(&["check-config", path.to_str().unwrap(), "--node", "alpha"]);
    assert!(!ok);
    assert_one_error_line(&err);
    assert!(err.contains("key `control.socket`"), "{err}");
    assert!(
        err.contains("exists and is a regular file, not a socket"),
        "{err}"
    );
    assert_eq!(
        fs::read(&path).unwrap(),
        before,
        "the config file was touched"
    );
}

/// Issue 12 row 10: a metrics port in use, and an events_file that is a
/// directory, are caught by `check-config --node`, in plain words.
#[test]
fn check_config_node_reports_busy_port_and_directory_journal() {
    let dir = TempDir::new("cc-port");
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let path = local_config(
        &dir,
        "",
        &format!(
            "[control]\nsocket = \"{{node}}.sock\"\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n"
        ),
    );
    let (ok, _, err) = run_bounded(&["check-config", path.to_str().unwrap(), "--node", "alpha"]);
    assert!(!ok);
    assert_one_error_line(&err);
    assert!(err.contains("key `metrics.listen`"), "{err}");
    assert!(err.contains("the port is in use"), "{err}");
    drop(busy);

    fs::create_dir(dir.0.join("journal")).unwrap();
    let path = local_config(
        &dir,
        "events_file = \"journal\"",
        "[control]\nsocket = \"{node}.sock\"\n",
    );
    let (ok, _, err) = run_bounded(&["check-config", path.to_str().unwrap(), "--node", "alpha"]);
    assert!(!ok);
    assert_one_error_line(&err);
    assert!(err.contains("key `cluster.events_file`"), "{err}");
    assert!(err.contains("is a directory, not a regular file"), "{err}");
    assert!(!err.contains("Some("), "{err}");
}

/// Issue 12 row 10: an OS error is shown once, not once per error layer.
#[test]
fn os_errors_are_not_repeated() {
    let dir = TempDir::new("keygen-err");
    let key = dir.0.join("no/such/dir/cluster.key");
    let (ok, _, err) = run_bounded(&["keygen", "--out", key.to_str().unwrap()]);
    assert!(!ok);
    assert_one_error_line(&err);
    assert_eq!(err.matches("os error 2").count(), 1, "{err}");
}
