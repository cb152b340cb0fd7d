//! `cargo xtask`: the project's task runner. Sets up a fresh machine (nightly
//! rust-src, bpf-linker, Debian packages), builds and runs the agent, runs
//! every test with a leak check, and starts the demo and the benchmarks.

mod bench;
mod demo;
mod fuzz;
mod setup;
mod testcmd;
mod util;

use std::{os::unix::process::CommandExt as _, process::ExitCode};

use anyhow::Context as _;
use clap::{Parser, Subcommand};

/// Project tasks for heartbeat
///
/// Every command except `setup` first runs the setup check (about a second
/// when nothing is missing). `cargo xtask help COMMAND` explains a command.
#[derive(Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install the nightly toolchain, bpf-linker and Debian packages
    ///
    /// Installs what building and testing need: the nightly toolchain with
    /// rust-src (for the eBPF program), bpf-linker 0.13.0 built against the
    /// nightly's own LLVM, cargo-fuzz, and Debian packages (iproute2, nftables, ethtool,
    /// procps, iputils-ping). Idempotent and fast when nothing is missing;
    /// needs root only to install packages.
    Setup(setup::SetupArgs),
    /// Build heartbeat-agent
    ///
    /// Its build script compiles the XDP program with nightly + bpf-linker
    /// and embeds it in the agent.
    Build {
        /// Build with the release profile.
        #[arg(long)]
        release: bool,
    },
    /// Build the agent (release) and run it with ARGS
    ///
    /// Runs `target/release/heartbeat-agent ARGS...` and passes its exit code
    /// through. Example: `cargo xtask run -- check-config
    /// examples/three-node.toml`.
    Run {
        /// Arguments for heartbeat-agent.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run every test, then check that nothing was left behind (root)
    ///
    /// Runs setup, `cargo build`, `cargo test` (all default members), every
    /// fuzz target for about 30 s in total (`cargo xtask fuzz --list`) and
    /// the benchmark smoke run, then checks that no harness network namespace
    /// (`hb*`), no process started by this run and no XDP program named
    /// `heartbeat` in the root namespace is left behind; anything found is
    /// cleaned up and the run fails. Needs root.
    Test,
    /// Run one fuzz target for a while, or list them (nightly, cargo-fuzz)
    ///
    /// `cargo xtask fuzz TARGET --time N` runs TARGET (cargo-fuzz,
    /// libFuzzer, AddressSanitizer) for N seconds from its committed seeds
    /// in fuzz/seeds/TARGET; `--list` shows the targets. A crashing input
    /// is saved under fuzz/artifacts/TARGET and its path printed; the run
    /// then fails. `--all` runs every target for about 30 s in total, as
    /// `cargo xtask test` does; `--write-seeds` regenerates the seeds.
    Fuzz(fuzz::FuzzArgs),
    /// A service failover, live: 3 nodes and a client in namespaces (root)
    ///
    /// Three agents and a client on one segment; package `web` runs a tiny
    /// HTTP service that answers with its node's name; the client sends a
    /// request every millisecond; the active node is killed (every process,
    /// link cut). Prints each survivor's timeline, the client's service gap,
    /// the node answering afterwards and that no two nodes answered in one
    /// interval, then removes everything. Needs root.
    Demo(demo::DemoArgs),
    /// Failure-detection benchmarks against keepalived, corosync, BFD (root)
    ///
    /// Builds and runs the benchmark crate (`bench/`, `heartbeat-bench`):
    /// failure-detection latency, false failovers under one-node and
    /// whole-machine loads, and cost of heartbeat and of keepalived,
    /// corosync and BFD (frr); time to agreed membership (`--membership`)
    /// and service failover time beside keepalived and Pacemaker (`--failover`). Arguments go to the benchmark: `cargo xtask
    /// bench --help` lists them (`--quick`, `--smoke`, `--systems`, ...).
    /// Needs root.
    #[command(disable_help_flag = true)]
    Bench {
        /// Arguments for heartbeat-bench.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match dispatch(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(cmd: Cmd) -> anyhow::Result<()> {
    if let Cmd::Setup(args) = cmd {
        return setup::run(&args);
    }
    setup::ensure()?;
    match cmd {
        Cmd::Setup(_) => Ok(()),
        Cmd::Build { release } => build_agent(release),
        Cmd::Run { args } => {
            build_agent(true)?;
            let bin = util::target_dir().join("release").join("heartbeat-agent");
            // exec only returns on failure; on success the agent's exit code
            // is ours.
            let err = std::process::Command::new(&bin).args(&args).exec();
            Err(err).with_context(|| format!("executing {}", bin.display()))
        }
        Cmd::Test => testcmd::run(),
        Cmd::Fuzz(args) => fuzz::run(&args),
        Cmd::Demo(args) => demo::run(args),
        Cmd::Bench { args } => bench::run(&args),
    }
}

/// `cargo build -p heartbeat-agent [--release]`.
pub fn build_agent(release: bool) -> anyhow::Result<()> {
    let profile = if release { "release" } else { "debug" };
    util::step(
        "build",
        format!("building heartbeat-agent ({profile}; the eBPF program is built with nightly)"),
    );
    let mut cmd = util::cargo();
    cmd.args(["build", "--package", "heartbeat-agent"]);
    if release {
        cmd.arg("--release");
    }
    util::run_streamed(&mut cmd)
}
