//! The package runner with real child processes: small shell scripts written
//! to a temporary directory (success, failure, hang with a grandchild that
//! ignores SIGTERM, untrusted output, environment, one action per package at
//! a time, a daemon left behind by `start`, cancellation).
#![allow(
    unused_crate_dependencies,
    reason = "an integration test links every dependency of its package"
)]

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use heartbeat_agent::packages::runner::{
    Action, ActionContext, CommandLine, Kill, Outcome, OutputLine, PackageName, PackageSpec,
    Recovery, Runner, RunnerConfig, Service, Stream, Timeouts,
};
use heartbeat_cluster::Epoch;

/// A temporary directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("heartbeat-runner-test-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).unwrap();
        Self(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }

    /// Writes an executable `/bin/sh` script and returns its path.
    fn script(&self, name: &str, body: &str) -> PathBuf {
        let path = self.0.join(name);
        fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn timeouts(t: Duration) -> Timeouts {
    Timeouts {
        start: t,
        stop: t,
        monitor: t,
        monitor_interval: Duration::from_millis(100),
    }
}

/// A package whose start, stop and monitor all run `script ACTION`.
fn spec(name: &str, script: &Path, t: Duration) -> PackageSpec {
    let line = |a: &str| CommandLine::parse(&format!("{} {a}", script.display())).unwrap();
    PackageSpec {
        name: PackageName::new(name).unwrap(),
        service: Service::Commands {
            start: line("start"),
            stop: line("stop"),
            monitor: Some(line("monitor")),
        },
        timeouts: timeouts(t),
    }
}

fn ctx() -> ActionContext {
    ActionContext {
        node: "beta".into(),
        epoch: Epoch(42),
        reason: "failover from alpha: node left".into(),
        previous_node: Some("alpha".into()),
    }
}

fn runner() -> Runner {
    Runner::new(RunnerConfig {
        kill_grace: Duration::from_millis(300),
        ..RunnerConfig::default()
    })
}

/// Runs one action, collecting its output.
async fn run(
    runner: &Runner,
    spec: &PackageSpec,
    action: Action,
) -> (
    heartbeat_agent::packages::runner::RunReport,
    Vec<OutputLine>,
) {
    let mut lines = Vec::new();
    let report = runner
        .run(spec, action, &ctx(), &mut |l| lines.push(l))
        .await;
    (report, lines)
}

/// Whether `pid` is gone (or a zombie nobody reaped yet).
fn dead(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

fn wait_dead(pid: i32, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if dead(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    dead(pid)
}

/// Reads a pid a script wrote, waiting for the file to appear.
fn read_pid(path: &Path) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Ok(s) = fs::read_to_string(path)
            && let Ok(pid) = s.trim().parse()
        {
            return pid;
        }
        assert!(Instant::now() < deadline, "no pid in {}", path.display());
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[tokio::test]
async fn success_passes_the_heartbeat_environment_and_action() {
    let dir = TempDir::new();
    let script = dir.script(
        "web",
        r#"echo "action=$1"
echo "pkg=$HEARTBEAT_PACKAGE node=$HEARTBEAT_NODE epoch=$HEARTBEAT_EPOCH"
echo "reason=$HEARTBEAT_REASON"
echo "previous=$HEARTBEAT_PREVIOUS_NODE"
echo "path=$PATH"
echo "home=${HOME-unset} ocf=${OCF_ROOT-unset}"
echo "on stderr" >&2
exit 0"#,
    );
    let runner = runner();
    let (report, lines) = run(
        &runner,
        &spec("web", &script, Duration::from_secs(5)),
        Action::Start,
    )
    .await;
    assert_eq!(report.outcome, Outcome::Success, "{lines:?}");
    assert_eq!(report.outcome.failure(Action::Start), None);
    let out: Vec<&str> = lines
        .iter()
        .filter(|l| l.stream == Stream::Stdout)
        .map(|l| l.text.as_str())
        .collect();
    assert_eq!(
        out,
        [
            "action=start",
            "pkg=web node=beta epoch=42",
            "reason=failover from alpha: node left",
            "previous=alpha",
            &format!("path={}", runner.config().path),
            // The environment is cleared: nothing of the agent's leaks in.
            "home=unset ocf=unset",
        ]
    );
    assert!(
        lines
            .iter()
            .any(|l| l.stream == Stream::Stderr && l.text == "on stderr")
    );
    assert_eq!(report.output.lines, 7);
    assert_eq!(report.output.truncated_lines, 0);
    assert_eq!(report.output.dropped_bytes, 0);
}

#[tokio::test]
async fn a_failing_command_is_a_soft_failure_and_a_missing_one_a_hard_failure() {
    let dir = TempDir::new();
    let script = dir.script("web", "echo failing; exit 3");
    let runner = runner();
    let (report, lines) = run(
        &runner,
        &spec("web", &script, Duration::from_secs(5)),
        Action::Monitor,
    )
    .await;
    assert_eq!(
        report.outcome,
        Outcome::Failed {
            code: 3,
            recovery: Recovery::Soft
        }
    );
    assert_eq!(
        report.outcome.failure(Action::Monitor),
        Some(Recovery::Soft)
    );
    assert_eq!(lines[0].text, "failing");

    let missing = dir.path().join("does-not-exist");
    let (report, _) = run(
        &runner,
        &spec("web", &missing, Duration::from_secs(5)),
        Action::Start,
    )
    .await;
    assert!(
        matches!(report.outcome, Outcome::SpawnFailed(_)),
        "{:?}",
        report.outcome
    );
    assert_eq!(report.outcome.failure(Action::Start), Some(Recovery::Hard));

    // Without a monitor command, monitoring succeeds without running anything.
    let mut s = spec("web", &script, Duration::from_secs(5));
    if let Service::Commands { monitor, .. } = &mut s.service {
        *monitor = None;
    }
    let (report, lines) = run(&runner, &s, Action::Monitor).await;
    assert_eq!(report.outcome, Outcome::Success);
    assert!(lines.is_empty());
}

#[tokio::test]
async fn a_hang_is_killed_at_the_timeout_with_its_whole_group() {
    let dir = TempDir::new();
    let gc_pid = dir.path().join("grandchild.pid");
    // The leader exits on SIGTERM; its grandchild ignores SIGTERM and only
    // SIGKILL to the group ends it.
    let script = dir.script(
        "web",
        &format!(
            r#"( trap '' TERM; while :; do sleep 0.05; done ) &
echo $! > {gc}
trap 'exit 143' TERM
while :; do sleep 0.05; done"#,
            gc = gc_pid.display()
        ),
    );
    let runner = runner();
    let started = Instant::now();
    let (report, _) = run(
        &runner,
        &spec("web", &script, Duration::from_millis(300)),
        Action::Start,
    )
    .await;
    assert_eq!(report.outcome, Outcome::TimedOut(Kill::Terminated));
    assert_eq!(report.outcome.failure(Action::Start), Some(Recovery::Soft));
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert!(started.elapsed() < Duration::from_secs(10));
    let gc = read_pid(&gc_pid);
    assert!(
        wait_dead(gc, Duration::from_secs(5)),
        "grandchild {gc} survived the timeout"
    );

    // A leader that ignores SIGTERM too needs SIGKILL.
    let gc_pid2 = dir.path().join("grandchild2.pid");
    let script = dir.script(
        "stubborn",
        &format!(
            r#"trap '' TERM
( while :; do sleep 0.05; done ) &
echo $! > {gc}
while :; do sleep 0.05; done"#,
            gc = gc_pid2.display()
        ),
    );
    let (report, _) = run(
        &runner,
        &spec("db", &script, Duration::from_millis(200)),
        Action::Stop,
    )
    .await;
    assert_eq!(report.outcome, Outcome::TimedOut(Kill::Killed));
    let gc = read_pid(&gc_pid2);
    assert!(wait_dead(gc, Duration::from_secs(5)));
}

#[tokio::test]
async fn untrusted_output_is_bounded_per_line_and_per_run() {
    let dir = TempDir::new();
    // A 5000-byte line, invalid UTF-8, CRLF, 2000 short lines, and a last
    // line without a newline.
    let script = dir.script(
        "noisy",
        r#"head -c 5000 /dev/zero | tr '\0' 'x'; echo
printf 'bad \377\376 bytes\r\n'
i=0; while [ $i -lt 2000 ]; do echo "line $i"; i=$((i+1)); done
printf 'no newline at the end'"#,
    );
    let runner = Runner::new(RunnerConfig {
        max_line_bytes: 100,
        max_output_bytes: 4000,
        ..RunnerConfig::default()
    });
    let (report, lines) = run(
        &runner,
        &spec("noisy", &script, Duration::from_secs(10)),
        Action::Start,
    )
    .await;
    assert_eq!(report.outcome, Outcome::Success);
    assert_eq!(lines[0].text, "x".repeat(100));
    assert!(lines[0].truncated);
    assert_eq!(lines[1].text, "bad \u{fffd}\u{fffd} bytes");
    assert!(!lines[1].truncated);
    assert_eq!(lines[2].text, "line 0");
    let handed: usize = lines.iter().map(|l| l.text.len()).sum();
    assert!(handed <= 4000, "{handed} bytes handed on");
    assert_eq!(report.output.bytes, handed as u64);
    assert_eq!(report.output.lines, lines.len() as u64);
    assert_eq!(report.output.truncated_lines, 1);
    // Everything else was counted: 4900 of the long line, the rest past the
    // run's budget (the last line among them).
    assert!(report.output.dropped_bytes > 4900 + 10_000);
    assert!(lines.iter().all(|l| l.text != "no newline at the end"));

    // A last line without a newline is still delivered.
    let script = dir.script("tail", "printf 'one\\ntwo'");
    let (_, lines) = run(
        &runner,
        &spec("tail", &script, Duration::from_secs(5)),
        Action::Start,
    )
    .await;
    let texts: Vec<&str> = lines.iter().map(|l| l.text.as_str()).collect();
    assert_eq!(texts, ["one", "two"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_two_actions_of_one_package_at_once() {
    let dir = TempDir::new();
    let log = dir.path().join("log");
    let script = dir.script(
        "web",
        &format!(
            r#"echo "begin $1" >> {log}
sleep 0.2
echo "end $1" >> {log}"#,
            log = log.display()
        ),
    );
    let runner = Arc::new(runner());
    let s = Arc::new(spec("web", &script, Duration::from_secs(5)));
    let mut tasks = Vec::new();
    for action in [Action::Start, Action::Monitor, Action::Stop] {
        let (runner, s) = (runner.clone(), s.clone());
        tasks.push(tokio::spawn(async move {
            runner.run(&s, action, &ctx(), &mut |_| {}).await
        }));
        // Queue them in this order.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut queued = Vec::new();
    for t in tasks {
        let report = t.await.unwrap();
        assert_eq!(report.outcome, Outcome::Success);
        queued.push(report.queued);
    }
    let text = fs::read_to_string(&log).unwrap();
    assert_eq!(
        text.lines().collect::<Vec<_>>(),
        [
            "begin start",
            "end start",
            "begin monitor",
            "end monitor",
            "begin stop",
            "end stop"
        ]
    );
    assert!(queued[2] > queued[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actions_of_different_packages_run_concurrently() {
    let dir = TempDir::new();
    let flag = dir.path().join("b-started");
    // a's start only finishes once b's start has begun: if the runner
    // serialised different packages, a would time out.
    let a = dir.script(
        "a",
        &format!(
            "i=0; while [ ! -e {f} ]; do sleep 0.02; i=$((i+1)); [ $i -gt 250 ] && exit 1; done; exit 0",
            f = flag.display()
        ),
    );
    let b = dir.script("b", &format!("touch {f}; sleep 0.1", f = flag.display()));
    let runner = Arc::new(runner());
    let (sa, sb) = (
        spec("a", &a, Duration::from_secs(10)),
        spec("b", &b, Duration::from_secs(10)),
    );
    let ra = {
        let runner = runner.clone();
        tokio::spawn(async move { runner.run(&sa, Action::Start, &ctx(), &mut |_| {}).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let rb = runner.run(&sb, Action::Start, &ctx(), &mut |_| {}).await;
    assert_eq!(rb.outcome, Outcome::Success);
    assert_eq!(ra.await.unwrap().outcome, Outcome::Success);
}

#[tokio::test]
async fn a_daemon_left_behind_by_start_keeps_running_and_does_not_hold_the_run() {
    let dir = TempDir::new();
    let pidfile = dir.path().join("daemon.pid");
    // The daemon inherits the output pipes and keeps writing to them.
    let script = dir.script(
        "web",
        &format!(
            r#"( while :; do echo tick; sleep 0.05; done ) &
echo $! > {p}
echo started"#,
            p = pidfile.display()
        ),
    );
    let runner = runner();
    let started = Instant::now();
    let (report, lines) = run(
        &runner,
        &spec("web", &script, Duration::from_secs(5)),
        Action::Start,
    )
    .await;
    assert_eq!(report.outcome, Outcome::Success);
    assert!(started.elapsed() < Duration::from_secs(4));
    assert!(lines.iter().any(|l| l.text == "started"));
    let pid = read_pid(&pidfile);
    assert!(!dead(pid), "a successful start must not kill its daemon");
    // Clean up the daemon (it gets SIGPIPE at its next write anyway).
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    );
    assert!(wait_dead(pid, Duration::from_secs(5)));
}

#[tokio::test]
async fn a_cancelled_run_kills_its_group() {
    let dir = TempDir::new();
    let gc_pid = dir.path().join("gc.pid");
    let script = dir.script(
        "web",
        &format!(
            r#"( trap '' TERM; while :; do sleep 0.05; done ) &
echo $! > {gc}
while :; do sleep 0.05; done"#,
            gc = gc_pid.display()
        ),
    );
    let runner = runner();
    let s = spec("web", &script, Duration::from_secs(60));
    let cancelled = tokio::time::timeout(
        Duration::from_millis(300),
        runner.run(&s, Action::Start, &ctx(), &mut |_| {}),
    )
    .await;
    assert!(cancelled.is_err());
    let gc = read_pid(&gc_pid);
    assert!(wait_dead(gc, Duration::from_secs(5)));
    // The package's queue is free again.
    let quick = dir.script("quick", "exit 0");
    let (report, _) = run(
        &runner,
        &spec("web", &quick, Duration::from_secs(5)),
        Action::Stop,
    )
    .await;
    assert_eq!(report.outcome, Outcome::Success);
}
