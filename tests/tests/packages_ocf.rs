//! The package runner with Debian's real OCF resource agents
//! (`resource-agents`, installed by `cargo xtask setup`), unchanged:
//! `ocf:heartbeat:Dummy` (a state file) and `ocf:heartbeat:IPaddr2` (an
//! address on a veth in a namespace this test creates, answered to a peer
//! namespace). Also: IPaddr2 without its mandatory `ip` exits 6
//! (`OCF_ERR_CONFIGURED`), a fatal failure; an agent that is not installed
//! is a hard failure.
#![allow(
    unused_crate_dependencies,
    reason = "an integration test links every dependency of its package"
)]

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use heartbeat_agent::packages::runner::{
    Action, ActionContext, OcfAgent, OcfParams, Outcome, OutputLine, PackageName, PackageSpec,
    Recovery, RunReport, Runner, RunnerConfig, Service, Timeouts,
};
use heartbeat_cluster::Epoch;
use heartbeat_tests::{Netns, VethPair, in_netns};

const OCF_ROOT: &str = "/usr/lib/ocf";

/// Fails clearly (never skips) when Debian's resource-agents is missing.
fn require_agent(kind: &str) {
    let path = Path::new(OCF_ROOT).join("resource.d/heartbeat").join(kind);
    assert!(
        path.is_file(),
        "{} is missing: install Debian's `resource-agents` (run `cargo xtask setup`, \
         which installs it, or `apt-get install resource-agents`)",
        path.display()
    );
}

struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("heartbeat-ocf-test-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).unwrap();
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn ocf_spec(name: &str, agent: &str, params: &[(&str, &str)]) -> PackageSpec {
    PackageSpec {
        name: PackageName::new(name).unwrap(),
        service: Service::Ocf {
            agent: OcfAgent::parse(agent).unwrap(),
            params: OcfParams::new(params.iter().copied()).unwrap(),
        },
        timeouts: Timeouts {
            start: Duration::from_secs(20),
            stop: Duration::from_secs(20),
            monitor: Duration::from_secs(10),
            monitor_interval: Duration::from_millis(500),
        },
    }
}

fn ctx() -> ActionContext {
    ActionContext {
        node: "alpha".into(),
        epoch: Epoch(3),
        reason: "placed: preferred node".into(),
        previous_node: None,
    }
}

/// Runs one action on a current-thread runtime in the calling thread (so
/// the agent runs in that thread's network namespace).
fn run(runner: &Runner, spec: &PackageSpec, action: Action) -> (RunReport, Vec<OutputLine>) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut lines = Vec::new();
    let report = rt.block_on(runner.run(spec, action, &ctx(), &mut |l| lines.push(l)));
    (report, lines)
}

#[test]
fn dummy_starts_monitors_and_stops_idempotently() {
    require_agent("Dummy");
    let dir = TempDir::new();
    let state = dir.0.join("web.state");
    let state_s = state.to_str().unwrap();
    let spec = ocf_spec("web", "ocf:heartbeat:Dummy", &[("state", state_s)]);
    let runner = Runner::new(RunnerConfig::default());

    // Not started yet: monitor says 7, which is a failure for a package
    // that should run, and stop of a stopped resource succeeds.
    let (r, out) = run(&runner, &spec, Action::Monitor);
    assert_eq!(r.outcome, Outcome::NotRunning, "{out:?}");
    assert_eq!(r.outcome.failure(Action::Monitor), Some(Recovery::Soft));
    let (r, out) = run(&runner, &spec, Action::Stop);
    assert_eq!(r.outcome.failure(Action::Stop), None, "{out:?}");

    let (r, out) = run(&runner, &spec, Action::Start);
    assert_eq!(r.outcome, Outcome::Success, "{out:?}");
    assert!(state.exists(), "Dummy did not write its state file");
    // start is idempotent.
    let (r, _) = run(&runner, &spec, Action::Start);
    assert_eq!(r.outcome, Outcome::Success);
    let (r, _) = run(&runner, &spec, Action::Monitor);
    assert_eq!(r.outcome, Outcome::Success);

    let (r, _) = run(&runner, &spec, Action::Stop);
    assert_eq!(r.outcome, Outcome::Success);
    assert!(!state.exists());
    let (r, _) = run(&runner, &spec, Action::Monitor);
    assert_eq!(r.outcome, Outcome::NotRunning);
}

#[test]
fn ocf_error_codes_from_real_agents() {
    require_agent("IPaddr2");
    let runner = Runner::new(RunnerConfig::default());
    // IPaddr2 without `ip`: OCF_ERR_CONFIGURED, no node may run it.
    let spec = ocf_spec("noip", "ocf:heartbeat:IPaddr2", &[("cidr_netmask", "24")]);
    let (r, out) = run(&runner, &spec, Action::Start);
    assert_eq!(
        r.outcome,
        Outcome::Failed {
            code: 6,
            recovery: Recovery::Fatal
        },
        "{out:?}"
    );
    assert!(
        out.iter().any(|l| l.text.contains("mandatory")),
        "the agent's reason reaches the output callback: {out:?}"
    );
    // An agent that is not installed: hard (ban this node), like
    // OCF_ERR_INSTALLED.
    let spec = ocf_spec("ghost", "ocf:heartbeat:NoSuchAgent", &[]);
    let (r, _) = run(&runner, &spec, Action::Start);
    assert!(
        matches!(r.outcome, Outcome::SpawnFailed(_)),
        "{:?}",
        r.outcome
    );
    assert_eq!(r.outcome.failure(Action::Start), Some(Recovery::Hard));
}

#[test]
fn ocf_environment_reaches_the_agent() {
    // A private OCF_ROOT with a tiny agent that prints what it was given.
    let dir = TempDir::new();
    let agent_dir = dir.0.join("resource.d/test");
    fs::create_dir_all(&agent_dir).unwrap();
    let agent = agent_dir.join("Env");
    fs::write(
        &agent,
        "#!/bin/sh\necho \"$1|$OCF_ROOT|$OCF_RESOURCE_INSTANCE|$OCF_RESOURCE_PROVIDER|$OCF_RESOURCE_TYPE|$OCF_RESKEY_color|$OCF_RESKEY_CRM_meta_timeout|$OCF_RESKEY_CRM_meta_interval|$HEARTBEAT_PACKAGE\"\nexit 0\n",
    )
    .unwrap();
    fs::set_permissions(&agent, fs::Permissions::from_mode(0o755)).unwrap();
    let runner = Runner::new(RunnerConfig {
        ocf_root: dir.0.clone(),
        ..RunnerConfig::default()
    });
    let spec = ocf_spec("web", "ocf:test:Env", &[("color", "blue")]);
    let root = dir.0.display();
    let (r, out) = run(&runner, &spec, Action::Monitor);
    assert_eq!(r.outcome, Outcome::Success);
    assert_eq!(
        out[0].text,
        format!("monitor|{root}|web|test|Env|blue|10000|500|web")
    );
    let (_, out) = run(&runner, &spec, Action::Start);
    assert_eq!(
        out[0].text,
        format!("start|{root}|web|test|Env|blue|20000|0|web")
    );
}

#[test]
fn ipaddr2_adds_and_removes_an_address_in_a_namespace() {
    require_agent("IPaddr2");
    let node = Netns::new("hbocfnode").unwrap();
    let peer = Netns::new("hbocfpeer").unwrap();
    let veth = VethPair::connect(&node, &peer, "10.231.0.1/24", "10.231.0.2/24").unwrap();
    let vip = "10.231.0.100";
    let spec = ocf_spec(
        "vip",
        "ocf:heartbeat:IPaddr2",
        &[("ip", vip), ("cidr_netmask", "24"), ("nic", &veth.if_a)],
    );
    let runner = Runner::new(RunnerConfig::default());
    let has_vip = || {
        let out = node.ip(&["-o", "addr", "show", "dev", &veth.if_a]).unwrap();
        String::from_utf8_lossy(&out.stdout).contains(&format!("{vip}/24"))
    };
    let answers = || {
        peer.exec_unchecked(&["ping", "-c", "1", "-W", "1", vip])
            .unwrap()
            .status
            .success()
    };

    let (r, _) = in_netns(node.name(), || run(&runner, &spec, Action::Monitor)).unwrap();
    assert_eq!(r.outcome, Outcome::NotRunning);
    assert!(!answers());

    let (r, out) = in_netns(node.name(), || run(&runner, &spec, Action::Start)).unwrap();
    assert_eq!(r.outcome, Outcome::Success, "{out:?}");
    assert!(has_vip(), "IPaddr2 start did not add {vip}");
    assert!(answers(), "{vip} does not answer the peer");
    let (r, _) = in_netns(node.name(), || run(&runner, &spec, Action::Monitor)).unwrap();
    assert_eq!(r.outcome, Outcome::Success);

    let (r, out) = in_netns(node.name(), || run(&runner, &spec, Action::Stop)).unwrap();
    assert_eq!(r.outcome, Outcome::Success, "{out:?}");
    assert!(!has_vip(), "IPaddr2 stop did not remove {vip}");
    let (r, _) = in_netns(node.name(), || run(&runner, &spec, Action::Monitor)).unwrap();
    assert_eq!(r.outcome, Outcome::NotRunning);
    // Stop again: idempotent.
    let (r, _) = in_netns(node.name(), || run(&runner, &spec, Action::Stop)).unwrap();
    assert_eq!(r.outcome.failure(Action::Stop), None);
}
