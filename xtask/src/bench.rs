//! `cargo xtask bench`: builds the benchmark crate (`bench/`, package
//! `heartbeat-bench`, not a default member) and runs it with the given
//! arguments; `cargo xtask bench --help` shows the benchmark's own help.
//! The Debian packages it needs are installed first, each on its own, so a
//! peer that fails to install is reported as skipped rather than failing
//! the run.

use anyhow::bail;

use crate::{setup, util};

/// Packages every run needs (faults, loads, counters).
const BASE_PACKAGES: [&str; 5] = ["nftables", "iperf3", "stress-ng", "iproute2", "ethtool"];
/// The peers heartbeat is compared with.
const PEER_PACKAGES: [&str; 6] = [
    "keepalived",
    "frr",
    "corosync",
    "pacemaker",
    "pacemaker-cli-utils",
    "resource-agents",
];

/// Installs the packages (a failure is reported, not fatal: the benchmark
/// marks what it cannot run as skipped).
fn install(with_peers: bool) {
    let peers: &[&str] = if with_peers { &PEER_PACKAGES } else { &[] };
    for p in BASE_PACKAGES.iter().chain(peers) {
        if let Err(e) = setup::ensure_packages(&[p]) {
            util::step("bench", format!("package {p} not installed: {e:#}"));
        }
    }
}

/// Builds `heartbeat-bench` (debug: it orchestrates, the agent it measures
/// is built in release by the bench itself) and runs it with `args`.
pub fn run(args: &[String]) -> anyhow::Result<()> {
    let help = args.iter().any(|a| a == "--help" || a == "-h");
    if !help {
        util::require_root("cargo xtask bench")?;
        let smoke_only = args.iter().any(|a| a == "--smoke" || a == "--netif");
        install(!smoke_only);
    }
    util::step("bench", "building heartbeat-bench");
    util::run_streamed(util::cargo().args(["build", "--quiet", "-p", "heartbeat-bench"]))?;
    let bin = util::target_dir().join("debug").join("heartbeat-bench");
    let status = std::process::Command::new(&bin)
        .args(args)
        .status()
        .map_err(|e| anyhow::anyhow!("starting {}: {e}", bin.display()))?;
    if !status.success() {
        bail!("heartbeat-bench failed ({status})");
    }
    Ok(())
}

/// The benchmark smoke run called by `cargo xtask test`: the benchmark
/// crate's unit tests (it is not a default member, so `cargo test` skips
/// it), then `heartbeat-bench --smoke` (heartbeat alone, short windows;
/// checks that every part of the benchmark produced data).
pub fn smoke() -> anyhow::Result<()> {
    util::step("bench", "unit tests of heartbeat-bench");
    util::run_streamed(util::cargo().args(["test", "--quiet", "-p", "heartbeat-bench"]))?;
    run(&["--smoke".to_owned()])
}
