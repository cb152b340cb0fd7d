//! `heartbeat-bench` (run by `cargo xtask bench`): failure-detection time,
//! false failovers under load and cost of heartbeat, side by side with
//! keepalived (VRRPv3), FRR bfdd and corosync (knet), all measured in one
//! run on one machine.
//!
//! Two nodes live in their own network namespaces (the harness's
//! [`heartbeat_tests::topology`], shared with the tests), each pinned to a
//! CPU of its own; a generator namespace sends data through A onto the
//! link. Each system is started, measured and stopped in turn:
//! 1. detection: a fault on A (SIGSTOP, SIGKILL on the plain topology;
//!    silent egress drop and link down on the bridged one, which has the
//!    wire port they need) at a random phase, then the time until B
//!    declares A failed, from B's own report;
//! 2. false failovers: windows with no fault under a ladder of loads (on
//!    the link, on A only, on the whole machine), on the plain topology
//!    with no packet tap, counting node-level downs (the headline), link
//!    downs and deferred verdicts, with the kernel's counters of where
//!    heartbeats were delayed or lost;
//! 3. cost: CPU of each system's processes at idle; for heartbeat per node
//!    and per thread, plus the XDP program's own run time from the kernel's
//!    BPF statistics, at 1 kHz (5 ms) and 10 kHz (500 µs); and the XDP
//!    program's cost per packet from `BPF_PROG_TEST_RUN`.
//!
//! Results: a table on stdout, `target/bench/results.json` (every raw
//! sample) and `target/bench/plot.svg`. Every namespace, process, cgroup
//! and nftables table is held by a drop guard; Ctrl-C stops the run at the
//! next check and the guards clean up.

mod bfdd;
mod corosync;
mod cost;
mod counters;
mod failover;
mod floor;
mod heartbeat;
mod keepalived;
mod load;
mod membership;
mod netif;
mod pacemaker;
mod parse;
mod probe;
mod report;
mod serial;
mod serial_split;
mod sniff;
mod system;
mod topology;
mod util;
mod xdpcost;

use heartbeat_api::status::{LinkStatus, StatusReport};
use std::{
    io::BufRead as _,
    path::{Path, PathBuf},
    process::{ExitCode, Stdio},
    sync::atomic::{AtomicBool, AtomicI32, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use clap::Parser;

use heartbeat_tests::Netns;
use load::Load;
use parse::Transition;
use report::{
    CostRow, Delivery, DetectionRow, DownEvent, Fault, LoadRow, LoadSystem, Results, Summary,
    SystemInfo, Trial,
};
use sniff::{Direction, Sniffer};
use system::{Node, System};
use topology::{Placement, Topology, Wiring};
use util::step;

/// Failure-detection benchmark: heartbeat vs keepalived, FRR bfdd, corosync
///
/// Needs root. `cargo xtask bench [ARGS]` installs the Debian packages,
/// builds this and runs it. Results: a table on stdout,
/// target/bench/results.json and target/bench/plot.svg. A full run should
/// take 40-45 minutes; `--quick` about 5; `--cost --systems hb5ms,hb500us`
/// (the CPU cost at idle only, in target/bench/cost/) about one.
#[derive(Parser, Debug, Default)]
#[command(name = "heartbeat-bench")]
pub struct BenchArgs {
    /// A short run: 3 trials per fault, 9 loads of 6 s.
    #[arg(long)]
    pub quick: bool,
    /// The minimal run `cargo xtask test` does: heartbeat 5 ms alone, two
    /// trials per fault, 2 s of a few loads, 1 s of cost; checks that every
    /// part produced data.
    #[arg(long)]
    pub smoke: bool,
    /// Detection trials per (system, fault) [default: 20; --quick: 3].
    #[arg(long)]
    pub trials: Option<u32>,
    /// Seconds of each load window [default: 60; --quick: 6]. heartbeat at
    /// 500 µs gets windows of its own, a third as long in a full run.
    #[arg(long)]
    pub load_secs: Option<u64>,
    /// Systems to run, comma separated, from: hb500us, hb5ms, hb30ms,
    /// keepalived, bfdd, corosync [default: all]; with --failover from
    /// hb5ms, hb500us, keepalived, pacemaker.
    #[arg(long, value_delimiter = ',')]
    pub systems: Vec<String>,
    /// Loads to run, comma separated, from: idle, tcp, udp, udp-full-queue
    /// (link); cpu-a, fifo-a, timers-a, memory-a (A only); cpu, timers,
    /// fifo, tcp-cpu (whole machine) [default: all; --quick: 9 of them].
    #[arg(long, value_delimiter = ',')]
    pub loads: Vec<String>,
    /// heartbeat's agent_timeout (dead-man gate) in heartbeat intervals
    /// [default: the product's default agent_timeout, 1 s, whatever the
    /// interval].
    #[arg(long)]
    pub gate_intervals: Option<u32>,
    /// corosync token timeout in ms; skips the search for the smallest
    /// stable one (the membership bench uses it instead of its fixed
    /// 500 ms).
    #[arg(long)]
    pub corosync_token: Option<u32>,
    /// Only the time to agreed membership (3 nodes; SIGKILL and link cut;
    /// heartbeat at 5 ms and 500 µs, then corosync with token 500 ms or
    /// `--corosync-token`; `--trials` per fault, default 20; `--systems`
    /// picks rows from hb5ms, hb500us, corosync). A full or quick run
    /// measures it too, after everything else.
    #[arg(long)]
    pub membership: bool,
    /// Only standby NIC takeover (issue #10): switch time on carrier loss
    /// and on a failure only polling sees (`--trials` per fault, default
    /// 20); writes target/bench/netif.json.
    #[arg(long)]
    pub netif: bool,
    /// Only the serial line (issue #11): its round trip (a pty pair per
    /// end, a relay paced at 115200 baud, the frame codec at both ends),
    /// then, as root, the serial split: two agents, every network link cut
    /// with the cable in place, the time to exactly one owner agreed over
    /// the line (`--trials`, default 20). A full or quick run measures it
    /// too, at the end.
    #[arg(long)]
    pub serial: bool,
    /// Only the service failover time (3 nodes and a client; the active
    /// node killed, link cut; heartbeat at 5 ms and 500 µs beside
    /// keepalived and Pacemaker + corosync; `--trials` each, default 20;
    /// `--systems` picks rows). A full or quick run
    /// measures it too, last.
    #[arg(long)]
    pub failover: bool,
    /// Only the CPU cost at idle (section 3) of the chosen `--systems`,
    /// over `--cost-secs`, and the XDP program's BPF_PROG_TEST_RUN cost;
    /// no detection trials, no loads, no membership, serial or failover.
    /// E.g. `--cost --systems hb5ms,hb500us`.
    #[arg(long)]
    pub cost: bool,
    /// Seconds of each cost window [default: 10; --quick: 3].
    #[arg(long)]
    pub cost_secs: Option<u64>,
}

fn main() -> ExitCode {
    let args = BenchArgs::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Set by SIGINT / SIGTERM; every loop checks it.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);
/// The signal and the pid that sent it, for the error message.
static SIGNAL: AtomicI32 = AtomicI32::new(0);
static SENDER: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(sig: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    SIGNAL.store(sig, Ordering::Relaxed);
    if !info.is_null() {
        // SAFETY: the kernel passes a valid siginfo_t with SA_SIGINFO.
        SENDER.store(unsafe { (*info).si_pid() }, Ordering::Relaxed);
    }
    INTERRUPTED.store(true, Ordering::Relaxed);
}

fn install_signal_handlers() {
    // SAFETY: sigaction is plain old data; all-zero is a valid value.
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    action.sa_sigaction = on_signal as *const () as usize;
    action.sa_flags = libc::SA_SIGINFO;
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to atomics, which is
        // async-signal-safe; `action` is a valid sigaction.
        unsafe { libc::sigaction(sig, &raw const action, std::ptr::null_mut()) };
    }
}

/// Fails once Ctrl-C was pressed, so the run unwinds through its guards.
pub(crate) fn check_interrupt() -> anyhow::Result<()> {
    if INTERRUPTED.load(Ordering::Relaxed) {
        bail!(
            "interrupted by signal {} from pid {}",
            SIGNAL.load(Ordering::Relaxed),
            SENDER.load(Ordering::Relaxed)
        );
    }
    Ok(())
}

/// Sleeps, waking every 50 ms to check for Ctrl-C.
fn sleep_checked(d: Duration) -> anyhow::Result<()> {
    let end = Instant::now() + d;
    loop {
        check_interrupt()?;
        let now = Instant::now();
        if now >= end {
            return Ok(());
        }
        std::thread::sleep((end - now).min(Duration::from_millis(50)));
    }
}

/// CLOCK_REALTIME in ns since the epoch.
pub fn wall_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

/// A small xorshift generator for the random phases (no crate needed).
struct Rng(u64);

impl Rng {
    fn new() -> Self {
        Rng((wall_ns() as u64 ^ u64::from(std::process::id()) << 32) | 1)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        if n == 0 { 0 } else { self.0 % n }
    }
}

/// How much of everything a run does.
#[derive(Clone, Debug)]
struct Plan {
    mode: &'static str,
    trials: u32,
    loads: Vec<Load>,
    load_secs: u64,
    /// Load windows of heartbeat at 500 µs (which cannot share the link's
    /// XDP hook with another agent, so it gets windows of its own).
    load_secs_fast: u64,
    cost_secs: u64,
    /// Only the cost section (and the XDP program's cost).
    cost_only: bool,
    systems: Vec<String>,
    /// `None`: the product's default `agent_timeout`.
    gate_intervals: Option<u32>,
    corosync_token: Option<u32>,
    token_check_secs: u64,
    xdp_repeat: u32,
    xdp_singles: u32,
    out_dir: PathBuf,
    /// Debug build of the agent (the smoke run uses what `cargo xtask test`
    /// just built).
    debug_agent: bool,
}

/// heartbeat's `agent_timeout` when `--gate-intervals` is not given: the
/// product's default (`DEFAULT_AGENT_TIMEOUT` in heartbeat-agent's
/// config.rs), what an administrator gets. A killed or stopped agent closes
/// the gate at once (tracepoints), so the stamp's age only matters when the
/// sender thread itself cannot run: a gate of a few intervals turns any
/// userspace stall longer than it into a failover, the very case the
/// kernel path is there to ride out. Earlier full runs used 20 intervals
/// (20 ms at 5 ms); `--gate-intervals 20` reproduces them.
const PRODUCT_AGENT_TIMEOUT: Duration = Duration::from_secs(1);

const ALL_SYSTEMS: [&str; 6] = [
    "hb500us",
    "hb5ms",
    "hb30ms",
    "keepalived",
    "bfdd",
    "corosync",
];

impl Plan {
    fn new(args: &BenchArgs) -> anyhow::Result<Self> {
        let quick = args.quick;
        let systems: Vec<String> = if args.systems.is_empty() {
            ALL_SYSTEMS.iter().map(|s| (*s).to_owned()).collect()
        } else {
            for s in &args.systems {
                if !ALL_SYSTEMS.contains(&s.as_str()) {
                    bail!("unknown system {s}; choose from {}", ALL_SYSTEMS.join(", "));
                }
            }
            args.systems.clone()
        };
        let loads = if args.loads.is_empty() {
            if quick {
                Load::QUICK.to_vec()
            } else {
                Load::ALL.to_vec()
            }
        } else {
            args.loads
                .iter()
                .map(|k| {
                    Load::from_key(k).with_context(|| {
                        format!(
                            "unknown load {k}; choose from {}",
                            Load::ALL.map(Load::key).join(", ")
                        )
                    })
                })
                .collect::<anyhow::Result<_>>()?
        };
        let load_secs = args.load_secs.unwrap_or(if quick { 6 } else { 60 });
        Ok(Plan {
            mode: if args.cost {
                "cost"
            } else if quick {
                "quick"
            } else {
                "full"
            },
            trials: args.trials.unwrap_or(if quick { 3 } else { 20 }),
            loads,
            load_secs,
            load_secs_fast: if quick {
                load_secs
            } else {
                load_secs.div_ceil(3)
            },
            cost_secs: args.cost_secs.unwrap_or(if quick { 3 } else { 10 }).max(1),
            cost_only: args.cost,
            systems,
            gate_intervals: args.gate_intervals.map(|g| g.max(1)),
            corosync_token: args.corosync_token,
            token_check_secs: if quick { 4 } else { 15 },
            xdp_repeat: if quick { 200_000 } else { 1_000_000 },
            xdp_singles: if quick { 20_000 } else { 100_000 },
            out_dir: if args.cost {
                util::target_dir().join("bench").join("cost")
            } else {
                util::target_dir().join("bench")
            },
            debug_agent: false,
        })
    }

    fn smoke() -> Self {
        Plan {
            mode: "smoke",
            trials: 2,
            loads: Load::SMOKE.to_vec(),
            load_secs: 2,
            load_secs_fast: 2,
            cost_secs: 1,
            cost_only: false,
            systems: vec!["hb5ms".into()],
            gate_intervals: None,
            corosync_token: None,
            token_check_secs: 0,
            xdp_repeat: 10_000,
            xdp_singles: 1_000,
            out_dir: util::target_dir().join("bench").join("smoke"),
            debug_agent: true,
        }
    }
}

/// Runs the benchmarks.
fn run(args: &BenchArgs) -> anyhow::Result<()> {
    if args.smoke {
        return smoke();
    }
    if args.serial {
        let trials = args
            .trials
            .map_or(if args.quick { 5 } else { 20 }, |t| t as usize);
        return serial_run(if args.quick { 200 } else { 1000 }, trials);
    }
    util::require_root("heartbeat-bench")?;
    if args.netif {
        return netif_run(args.trials.unwrap_or(20) as usize);
    }
    let trials = args
        .trials
        .map_or(if args.quick { 5 } else { 20 }, |t| t as usize);
    if args.failover {
        let rows = failover_run(
            trials,
            false,
            &[membership::HB5MS, membership::HB500US],
            true,
            &args.systems,
        )?;
        println!("{}", failover::table(&rows));
        return Ok(());
    }
    if args.cost {
        let plan = Plan::new(args)?;
        let results = execute(&plan)?;
        println!("{}", results.table());
        return Ok(());
    }
    if !args.membership {
        let plan = Plan::new(args)?;
        let results = execute(&plan)?;
        println!("{}", results.table());
    }
    // `--membership --systems hb5ms,corosync` picks rows; a full run
    // measures all of them.
    let want = |name: &str| {
        !args.membership || args.systems.is_empty() || args.systems.iter().any(|s| s == name)
    };
    let timings: Vec<_> = [membership::HB5MS, membership::HB500US]
        .into_iter()
        .filter(|t| want(&t.label.replace("heartbeat ", "hb")))
        .collect();
    let rows = membership_run(
        trials,
        false,
        &timings,
        want("corosync").then(|| args.corosync_token.unwrap_or(membership::COROSYNC_TOKEN_MS)),
    )?;
    println!("{}", membership::table(&rows));
    if !args.membership {
        serial_run(if args.quick { 200 } else { 1000 }, trials)?;
        let rows = failover_run(
            trials,
            false,
            &[membership::HB5MS, membership::HB500US],
            true,
            &[],
        )?;
        println!("{}", failover::table(&rows));
    }
    Ok(())
}

/// The serial line's round trip at 115200 baud, then (as root) the serial
/// split with two agents, `trials` network cuts; writes serial.json and
/// serial_split.json.
fn serial_run(samples: usize, trials: usize) -> anyhow::Result<()> {
    install_signal_handlers();
    step(format!(
        "serial: {samples} round trips over a pty pair at 115200 baud"
    ));
    let row = serial::measure(115_200, samples, Duration::from_millis(10))?;
    let out = util::target_dir().join("bench");
    std::fs::create_dir_all(&out)?;
    std::fs::write(out.join("serial.json"), serde_json::to_string_pretty(&row)?)?;
    println!("{}", serial::table(&row));
    util::require_root("heartbeat-bench --serial (the serial split)")?;
    step(format!(
        "serial split: {trials} network cuts with the cable in place (two agents)"
    ));
    let (agent, _object) = build_agent(true)?;
    let dir = out.join(format!("serial-split-{}", std::process::id()));
    let r = serial_split::measure(&agent, trials, &dir);
    if r.is_ok() && std::env::var_os("HB_KEEP").is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    let r = r?;
    std::fs::write(
        out.join("serial_split.json"),
        serde_json::to_string_pretty(&r)?,
    )?;
    println!("{}", serial_split::table(&r));
    Ok(())
}

/// Measures standby NIC takeover; writes netif.json.
fn netif_run(trials: usize) -> anyhow::Result<()> {
    install_signal_handlers();
    let (agent, object) = build_agent(true)?;
    let object = std::fs::read(&object).context("reading the XDP object")?;
    let out = util::target_dir().join("bench");
    std::fs::create_dir_all(&out)?;
    let dir = out.join(format!("netif-{}", std::process::id()));
    let r = netif::measure(&agent, &object, trials, &dir)?;
    std::fs::write(out.join("netif.json"), serde_json::to_string_pretty(&r)?)?;
    println!("{}", netif::table(&r));
    Ok(())
}

/// Measures the service failover time of heartbeat at each timing (and of
/// keepalived and pacemaker, with `peers`); writes failover.json.
/// `systems` (empty: all) picks among hb5ms, hb500us, keepalived and
/// pacemaker.
fn failover_run(
    trials: usize,
    debug_agent: bool,
    timings: &[membership::Timing],
    peers: bool,
    systems: &[String],
) -> anyhow::Result<Vec<report::FailoverRow>> {
    let want = |name: &str| systems.is_empty() || systems.iter().any(|s| s == name);
    install_signal_handlers();
    let (agent, object) = build_agent(!debug_agent)?;
    let object = std::fs::read(&object).context("reading the XDP object")?;
    let out = util::target_dir().join("bench");
    std::fs::create_dir_all(&out)?;
    let dir = out.join(format!("failover-{}", std::process::id()));
    let mut rng = Rng::new();
    let mut rows = Vec::new();
    // The smoke run (debug agent): the plain rows only.
    let smoke = debug_agent;
    for t in timings {
        if !want(&t.label.replace("heartbeat ", "hb")) {
            continue;
        }
        for defer in [false, true] {
            for v in [
                failover::Victim::NotCoordinator,
                failover::Victim::Coordinator,
            ] {
                if smoke && defer {
                    continue;
                }
                rows.push(failover::heartbeat(
                    &agent, &object, *t, v, defer, trials, &dir, &mut rng,
                )?);
            }
        }
    }
    if peers && want("keepalived") {
        rows.push(failover::keepalived(&object, trials, &dir, &mut rng)?);
    }
    if peers && want("pacemaker") {
        rows.push(failover::pacemaker(&object, trials, &dir, &mut rng)?);
    }
    std::fs::write(
        out.join("failover.json"),
        serde_json::to_string_pretty(&rows)?,
    )?;
    Ok(rows)
}

/// Measures the time to agreed membership of heartbeat at each timing, then
/// of corosync with token `corosync_token` (when given and installed);
/// writes membership.json.
fn membership_run(
    trials: usize,
    debug_agent: bool,
    timings: &[membership::Timing],
    corosync_token: Option<u32>,
) -> anyhow::Result<Vec<membership::MembershipRow>> {
    install_signal_handlers();
    let (agent, object) = build_agent(!debug_agent)?;
    let object = std::fs::read(&object).context("reading the XDP object")?;
    let out = util::target_dir().join("bench");
    std::fs::create_dir_all(&out)?;
    let mut rows = Vec::new();
    for t in timings {
        let dir = out.join(format!(
            "membership-{}-{}",
            std::process::id(),
            t.node_timeout
        ));
        rows.extend(membership::measure(&agent, &object, *t, trials, &dir)?);
    }
    if let Some(token) = corosync_token {
        if util::missing_packages(&["corosync"]).is_empty() {
            let dir = out.join(format!("membership-{}-corosync", std::process::id()));
            rows.extend(membership::measure_corosync(&object, token, trials, &dir)?);
        } else {
            step("membership: corosync is not installed; its rows are skipped");
        }
    }
    std::fs::write(
        out.join("membership.json"),
        serde_json::to_string_pretty(&rows)?,
    )?;
    Ok(rows)
}

/// The smoke run called by `cargo xtask test`: heartbeat alone, two
/// detection trials per fault, two seconds of a few loads, a short cost
/// measurement, one membership trial, one service failover per victim
/// (about 15 s); checks that every part produced data.
fn smoke() -> anyhow::Result<()> {
    util::require_root("the bench smoke run")?;
    let plan = Plan::smoke();
    let r = execute(&plan)?;
    println!("{}", r.table());
    let m = membership_run(1, true, &[membership::HB5MS], None)?;
    println!("{}", membership::table(&m));
    if m.iter().any(|r| r.p50_ms.is_none()) {
        bail!("a membership trial found no agreement");
    }
    let f = failover_run(1, true, &[membership::HB5MS], false, &[])?;
    println!("{}", failover::table(&f));
    if let Some(r) = f
        .iter()
        .find(|r| r.failover.misses > 0 || r.failover.n == 0)
    {
        bail!("{}: the service did not fail over", r.system);
    }
    if let Some(r) = f.iter().find(|r| r.two_answering > 0) {
        bail!("{}: two nodes answered in one interval", r.system);
    }
    let hb = r
        .systems
        .iter()
        .find(|s| s.system.starts_with("heartbeat"))
        .context("no heartbeat row")?;
    if let Some(reason) = &hb.reason {
        bail!("heartbeat was skipped: {reason}");
    }
    let detected: usize = r
        .detection
        .iter()
        .map(|d| d.summary.n - d.summary.misses)
        .sum();
    if detected == 0 {
        bail!("no detection trial detected anything");
    }
    if r.loads.len() != plan.loads.len() {
        bail!(
            "only {} of {} load windows ran",
            r.loads.len(),
            plan.loads.len()
        );
    }
    if !r
        .loads
        .iter()
        .flat_map(|l| &l.systems)
        .any(|s| s.delivery.as_ref().is_some_and(|d| d.b_requests_rx > 0))
    {
        bail!("no load window counted heartbeats delivered");
    }
    if !r
        .cost
        .iter()
        .flat_map(|c| &c.nodes)
        .any(|n| n.xdp_runs_per_s.is_some_and(|x| x > 0.0))
    {
        bail!("no XDP run-time statistics (BPF_ENABLE_STATS) were read");
    }
    if let Some(reason) = &r.xdp_skipped {
        bail!("XDP cost measurement failed: {reason}");
    }
    step(format!(
        "smoke: {detected} detections, {} load windows, XDP non-heartbeat +{:.1} ns",
        r.loads.len(),
        r.xdp
            .as_ref()
            .map_or(f64::NAN, |x| x.non_heartbeat_udp_extra_ns)
    ));
    Ok(())
}

/// Builds heartbeat-agent and returns (binary, XDP object) paths. The
/// object is found in the build script's OUT_DIR, which cargo reports.
fn build_agent(release: bool) -> anyhow::Result<(PathBuf, PathBuf)> {
    let mut cmd = util::cargo();
    cmd.args([
        "build",
        "--quiet",
        "-p",
        "heartbeat-agent",
        "--message-format=json-render-diagnostics",
    ]);
    if release {
        cmd.arg("--release");
    }
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting cargo build")?;
    let stdout = child.stdout.take().context("cargo stdout")?;
    let mut out_dir = None;
    for line in std::io::BufReader::new(stdout).lines() {
        let line = line?;
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if v.get("reason").and_then(|r| r.as_str()) == Some("build-script-executed")
            && v.get("package_id")
                .and_then(|p| p.as_str())
                .is_some_and(|p| p.contains("heartbeat-agent"))
        {
            out_dir = v.get("out_dir").and_then(|o| o.as_str()).map(PathBuf::from);
        }
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("cargo build -p heartbeat-agent failed ({status})");
    }
    let profile = if release { "release" } else { "debug" };
    let bin = util::target_dir().join(profile).join("heartbeat-agent");
    let object = out_dir
        .context("cargo did not report heartbeat-agent's OUT_DIR")?
        .join("heartbeat");
    if !bin.exists() || !object.exists() {
        bail!("missing {} or {}", bin.display(), object.display());
    }
    Ok((bin, object))
}

/// The packages among `pkgs` that are not installed, with a reason
/// (`cargo xtask bench` installs them before starting the benchmark).
fn install(pkgs: &[&str]) -> Vec<(String, String)> {
    util::missing_packages(pkgs)
        .into_iter()
        .map(|p| {
            (
                p,
                "not installed (`cargo xtask bench` installs it)".to_owned(),
            )
        })
        .collect()
}

fn version_of(cmd: &[&str]) -> String {
    let out = std::process::Command::new(cmd[0])
        .args(&cmd[1..])
        .stdin(Stdio::null())
        .output();
    match out {
        Ok(o) => {
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            text.lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("")
                .trim()
                .to_owned()
        }
        Err(e) => format!("unavailable: {e}"),
    }
}

/// A namespace of its own for the send floor: loopback up, and an nftables
/// OUTPUT rule that drops UDP to [`floor::SEND_FLOOR_PORT`] (deleted with
/// the namespace).
fn send_floor_netns() -> anyhow::Result<Netns> {
    let ns = Netns::new("hbfloor")?;
    let port = floor::SEND_FLOOR_PORT.to_string();
    for args in [
        &["nft", "add", "table", "inet", "floor"][..],
        &[
            "nft",
            "add",
            "chain",
            "inet",
            "floor",
            "out",
            "{ type filter hook output priority 0 ; }",
        ],
        &[
            "nft", "add", "rule", "inet", "floor", "out", "udp", "dport", &port, "drop",
        ],
    ] {
        ns.exec(args)
            .with_context(|| format!("setting up the send floor: {}", args.join(" ")))?;
    }
    Ok(ns)
}

/// Polls until `sys` is healthy or `timeout` passes.
fn wait_healthy(sys: &mut dyn System, timeout: Duration) -> anyhow::Result<()> {
    let end = Instant::now() + timeout;
    loop {
        check_interrupt()?;
        sys.poll()?;
        if sys.healthy() {
            return Ok(());
        }
        if Instant::now() >= end {
            let last = |n| {
                sys.observations(n)
                    .last()
                    .map_or("nothing".to_owned(), |o| o.detail.clone())
            };
            bail!(
                "not healthy after {:?} (A last said: {}; B last said: {})",
                timeout,
                last(Node::A),
                last(Node::B)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A system ready to run, or why it cannot.
type Made = Result<Box<dyn System>, String>;
/// Systems borrowed for a group of load windows.
type Group<'a> = Vec<&'a mut Box<dyn System>>;

/// nft's `meta time` takes a date with whole seconds (UTC, as TZ is set).
fn nft_date(wall_s: i64) -> String {
    let (y, m, d) = parse::civil_from_days(wall_s.div_euclid(86_400));
    let s = wall_s.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

/// Injects `fault` on A; returns the wall time it took effect and a guard
/// (the nftables table) to drop on repair.
fn inject(
    sys: &mut dyn System,
    topo: &Topology,
    fault: Fault,
) -> anyhow::Result<(i64, Option<heartbeat_tests::NftGuard>)> {
    Ok(match fault {
        Fault::Sigstop => (sys.stop_a()?, None),
        Fault::Sigkill => (sys.kill_a()?, None),
        Fault::LinkDown => (topo.set_link_a(false)?, None),
        Fault::SilentEgress => {
            // The rule drops from a whole second on (nft's time resolution),
            // so the fault time is exact; it is installed well before.
            let at_s = (wall_ns() + 150_000_000) / 1_000_000_000 + 1;
            let rule = format!("meta time >= \"{}\" drop", nft_date(at_s));
            let wire = topo
                .wire_a
                .as_deref()
                .context("silent egress needs the bridged topology's wire port")?;
            let guard = heartbeat_tests::nft_egress_rule(&topo.a, wire, &rule)
                .context("installing the nftables egress drop")?;
            let at = at_s * 1_000_000_000;
            let wait = at - wall_ns();
            if wait > 0 {
                sleep_checked(Duration::from_nanos(wait as u64))?;
            }
            (at, Some(guard))
        }
    })
}

fn repair(
    sys: &mut dyn System,
    topo: &Topology,
    fault: Fault,
    nft: Option<heartbeat_tests::NftGuard>,
) -> anyhow::Result<()> {
    match fault {
        Fault::Sigstop => sys.cont_a(),
        Fault::Sigkill => sys.restart_a(topo),
        Fault::LinkDown => topo.set_link_a(true).map(|_| ()).map_err(Into::into),
        Fault::SilentEgress => match nft {
            Some(g) => g.remove().context("removing the nftables drop"),
            None => Ok(()),
        },
    }
}

/// All trials of one fault on one system.
fn detection(
    sys: &mut dyn System,
    topo: &Topology,
    tap: Option<&Sniffer>,
    fault: Fault,
    trials: u32,
    rng: &mut Rng,
) -> anyhow::Result<DetectionRow> {
    let mut out = Vec::new();
    let mut error = None;
    for trial in 0..trials {
        check_interrupt()?;
        if let Err(e) = wait_healthy(sys, Duration::from_secs(20)) {
            error = Some(format!("before trial {trial}: {e:#}"));
            break;
        }
        let mark = sys.observations(Node::B).len();
        let phase = rng.below((sys.interval_ns() * 2).max(1) as u64);
        std::thread::sleep(Duration::from_nanos(phase));
        let (t, nft) = match inject(sys, topo, fault) {
            Ok(x) => x,
            Err(e) => {
                error = Some(format!("injecting at trial {trial}: {e:#}"));
                break;
            }
        };
        let deadline = Instant::now() + sys.max_wait();
        let mut tr = Trial {
            trial,
            fault_wall_ns: t,
            ..Trial::default()
        };
        loop {
            sys.poll()?;
            let obs = &sys.observations(Node::B)[mark..];
            tr.spontaneous_before = obs
                .iter()
                .filter(|o| o.transition == Transition::Down && o.wall_ns < t)
                .count() as u32;
            if tr.suspect_ns.is_none() {
                tr.suspect_ns = obs
                    .iter()
                    .find(|o| o.transition == Transition::Suspect && o.wall_ns >= t)
                    .map(|o| o.wall_ns - t);
            }
            if let Some(o) = obs
                .iter()
                .find(|o| o.transition == Transition::Down && o.wall_ns >= t)
            {
                tr.detect_ns = Some(o.wall_ns - t);
                tr.handled_ns = o.handled_ns.map(|h| h - t);
                tr.detail = o.detail.clone();
                break;
            }
            if Instant::now() >= deadline || INTERRUPTED.load(Ordering::Relaxed) {
                tr.detail = "miss".into();
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        tr.phase_ns = tap
            .and_then(|tap| tap.last(sys.stream()))
            .filter(|last| *last <= t)
            .map(|last| t - last);
        out.push(tr);
        if let Err(e) = repair(sys, topo, fault, nft) {
            error = Some(format!("repairing after trial {trial}: {e:#}"));
            break;
        }
    }
    let detect: Vec<Option<i64>> = out.iter().map(|t| t.detect_ns).collect();
    let handled: Vec<Option<i64>> = out.iter().map(|t| t.handled_ns).collect();
    Ok(DetectionRow {
        system: sys.label(),
        fault,
        summary: Summary::of(&detect),
        handled_summary: handled
            .iter()
            .any(Option::is_some)
            .then(|| Summary::of(&handled)),
        spontaneous: out.iter().map(|t| t.spontaneous_before).sum(),
        error,
        trials: out,
    })
}

/// CPU of the system's processes over `secs` at idle; for heartbeat also
/// per node and thread, and the XDP program's run time (BPF statistics on
/// during the window).
fn cost(sys: &mut dyn System, secs: u64) -> anyhow::Result<CostRow> {
    let pids = sys.pids();
    let hz = system::ticks_per_second() as f64;
    let _stats = sys.heartbeats_per_s().map(|_| cost::StatsOn::enable());
    let agents: Vec<(Node, i32, cost::AgentSnapshot)> = [Node::A, Node::B]
        .into_iter()
        .filter_map(|n| {
            let pid = sys.agent_pid(n)?;
            Some((n, pid, cost::AgentSnapshot::take(pid)))
        })
        .collect();
    let before: Vec<(i32, u64, u64)> = pids
        .iter()
        .filter_map(|p| Some((*p, system::cpu_ticks(*p)?, system::cpu_ns(*p)?)))
        .collect();
    let t0 = Instant::now();
    sleep_checked(Duration::from_secs(secs))?;
    let elapsed = t0.elapsed().as_secs_f64();
    let nodes = agents
        .iter()
        .map(|(n, pid, snap)| {
            cost::AgentSnapshot::take(*pid).cost_since(
                snap,
                &format!("{n:?}"),
                elapsed,
                sys.heartbeats_per_s().unwrap_or(0.0),
            )
        })
        .collect();
    let mut ticks = 0u64;
    let mut ns = 0u64;
    let mut n = 0;
    for (pid, t, s) in &before {
        if let (Some(t1), Some(s1)) = (system::cpu_ticks(*pid), system::cpu_ns(*pid)) {
            ticks += t1.saturating_sub(*t);
            ns += s1.saturating_sub(*s);
            n += 1;
        }
    }
    sys.poll()?;
    Ok(CostRow {
        system: sys.label(),
        window_s: elapsed,
        processes: n,
        cpu_ms_per_s: ticks as f64 / hz * 1000.0 / elapsed,
        cpu_ms_per_s_schedstat: ns as f64 / 1e6 / elapsed,
        heartbeats_per_s: sys.heartbeats_per_s(),
        nodes,
    })
}

/// A link counter of `peer` in an agent's status report.
fn link_counter(v: &StatusReport, peer: &str, get: fn(&LinkStatus) -> u64) -> u64 {
    v.node(peer).and_then(|n| n.links.first()).map_or(0, get)
}

/// Both agents' status reports (heartbeat only) and the seconds between
/// reading A's and B's.
type Statuses = Option<(StatusReport, StatusReport, f64)>;

fn statuses(sys: &dyn System) -> Statuses {
    let a = sys.status(Node::A)?;
    let t = Instant::now();
    let b = sys.status(Node::B)?;
    Some((a, b, t.elapsed().as_secs_f64()))
}

/// Heartbeat's own account of a window, from the status reports before and
/// after it (A's uptime between its two reports gives the requests it
/// should have sent; `window_s` stands in if the report lacks it).
fn delivery(before: &Statuses, after: &Statuses, per_s: f64, window_s: f64) -> Option<Delivery> {
    let ((a0, b0, skew0), (a1, b1, skew1)) = (before.as_ref()?, after.as_ref()?);
    let d = |v1: &StatusReport, v0: &StatusReport, peer: &str, get: fn(&LinkStatus) -> u64| {
        link_counter(v1, peer, get).saturating_sub(link_counter(v0, peer, get))
    };
    let a_missed = a1
        .agent
        .sender_missed_deadlines
        .saturating_sub(a0.agent.sender_missed_deadlines);
    // An agent whose report has no uptime (0) lets the window length stand in.
    let secs = if a1.agent.uptime_s > a0.agent.uptime_s {
        a1.agent.uptime_s - a0.agent.uptime_s
    } else {
        window_s
    };
    let expected = (secs * per_s).round().max(0.0) as u64;
    let (x0, x1) = (
        a0.agent.sender_max_lateness_us,
        a1.agent.sender_max_lateness_us,
    );
    let a_sender_max_lateness_us = (x1 > x0).then_some(x1);
    let b_requests_rx = d(b1, b0, "a", |l| l.requests_rx);
    let mut xdp_counters = Vec::new();
    for (node, v1, v0) in [("A", a1, a0), ("B", b1, b0)] {
        for (k, &x) in &v1.xdp_counters {
            let delta = x as i64 - v0.xdp_counters.get(k).copied().unwrap_or(0) as i64;
            if delta != 0 {
                xdp_counters.push((node.to_owned(), k.clone(), delta));
            }
        }
    }
    Some(Delivery {
        expected_from_a: expected,
        a_missed_ticks: a_missed,
        b_requests_rx,
        b_replies_tx: d(b1, b0, "a", |l| l.replies_tx),
        a_replies_rx: d(a1, a0, "b", |l| l.replies_rx),
        lost_from_a: expected as i64 - a_missed as i64 - b_requests_rx as i64,
        count_tolerance: ((skew0 + skew1) * per_s).ceil() as u64 + 2,
        a_sender_max_lateness_us,
        b_link_down_events: d(b1, b0, "a", |l| l.down_events),
        xdp_counters,
    })
}

/// Load windows for a group of systems that run at the same time, on the
/// plain topology (no packet tap: gaps come from heartbeat's XDP program).
fn load_ladder(
    group: &mut [&mut Box<dyn System>],
    topo: &Topology,
    stall_probe: &probe::StallProbe,
    plan: &Plan,
    secs: u64,
    results: &mut Results,
    dir: &Path,
) -> anyhow::Result<()> {
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    for &load in &plan.loads {
        check_interrupt()?;
        for s in group.iter_mut() {
            // A system broken by the previous load gets time to recover;
            // whether it did is reported with that load.
            let _ = wait_healthy(s.as_mut(), Duration::from_secs(15));
        }
        step(format!(
            "load {} ({}) for {secs} s: {}",
            load.name(),
            load.scope().name(),
            group
                .iter()
                .map(|s| s.label())
                .collect::<Vec<_>>()
                .join(", ")
        ));
        let marks: Vec<(usize, usize)> = group
            .iter()
            .map(|s| (s.observations(Node::A).len(), s.observations(Node::B).len()))
            .collect();
        stall_probe.reset();
        let rx_gaps0: Vec<Option<system::ReceiverGaps>> =
            group.iter().map(|s| s.receiver_gaps()).collect();
        let status0: Vec<Statuses> = group.iter().map(|s| statuses(s.as_ref())).collect();
        let t0 = wall_ns();
        let running = match load::start(load, topo, secs, cpus, dir) {
            Ok(r) => Some(r),
            Err(e) => {
                step(format!("load {} could not start: {e:#}", load.name()));
                None
            }
        };
        // Counters are read while the load runs: a load may replace A's
        // qdisc (the full-queue load shapes it) and restore it on stop.
        let counters0 = counters::Snapshot::take(topo);
        let end = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < end {
            if let Err(e) = check_interrupt() {
                if let Some(r) = running {
                    let _ = r.stop();
                }
                return Err(e);
            }
            for s in group.iter_mut() {
                s.poll()?;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let counters = counters::Snapshot::take(topo).since(&counters0);
        let load_note = running.and_then(load::Running::stop);
        let t1 = wall_ns();
        let window_s = (t1 - t0) as f64 / 1e9;
        let stall = stall_probe.max_late_ns();
        let rx_gaps1: Vec<Option<system::ReceiverGaps>> =
            group.iter().map(|s| s.receiver_gaps()).collect();
        let status1: Vec<Statuses> = group.iter().map(|s| statuses(s.as_ref())).collect();
        // Declarations caused by the load can land just after it stops.
        sleep_checked(Duration::from_millis(500))?;
        let mut row = LoadRow {
            load,
            scope: load.scope(),
            name: load.name().into(),
            command: load.describe(cpus, topo.cpu(topology::Side::A)),
            secs: window_s,
            host_stall_max_ns: stall,
            counters,
            load_note,
            systems: Vec::new(),
        };
        for (i, s) in group.iter_mut().enumerate() {
            s.poll()?;
            let mut downs = Vec::new();
            let mut link_downs = 0;
            for (node, mark) in [(Node::A, marks[i].0), (Node::B, marks[i].1)] {
                for o in &s.observations(node)[mark..] {
                    match o.transition {
                        Transition::Down => downs.push(DownEvent {
                            node,
                            wall_ns: o.wall_ns,
                            detail: o.detail.clone(),
                        }),
                        Transition::Suspect => link_downs += 1,
                        _ => {}
                    }
                }
            }
            let warnings = s.warnings_since(t0);
            let deferrals = s.deferrals_since(t0);
            let delivery = s
                .heartbeats_per_s()
                .and_then(|per_s| delivery(&status0[i], &status1[i], per_s, window_s));
            let recovered = wait_healthy(s.as_mut(), Duration::from_secs(10)).is_ok();
            row.systems.push(LoadSystem {
                system: s.label(),
                down_events: downs.len(),
                downs_per_60s: downs.len() as f64 * 60.0 / window_s.max(1e-3),
                downs,
                link_downs,
                deferrals,
                max_gap_rx_ns: match (&rx_gaps0[i], &rx_gaps1[i]) {
                    (Some(before), Some(after)) => after.window_max_ns(before),
                    _ => None,
                },
                delivery,
                warnings: warnings.len(),
                warning_samples: warnings.into_iter().take(5).collect(),
                recovered,
            });
        }
        results.loads.push(row);
    }
    Ok(())
}

/// Finds the smallest corosync token timeout with no membership change and
/// no token loss during `secs` at idle.
fn find_corosync_token(
    topo: &Topology,
    dir: &Path,
    secs: u64,
    notes: &mut Vec<String>,
) -> anyhow::Result<Option<u32>> {
    for token in [100u32, 130, 150, 200, 300, 500, 1000] {
        check_interrupt()?;
        let mut c = corosync::Corosync::new(&dir.join(format!("token-{token}")), token);
        std::fs::create_dir_all(dir.join(format!("token-{token}")))?;
        if let Err(e) = c.start(topo) {
            notes.push(format!("corosync token {token} ms: refused ({e:#})"));
            c.stop();
            continue;
        }
        if let Err(e) = wait_healthy(&mut c, Duration::from_secs(15)) {
            notes.push(format!("corosync token {token} ms: {e:#}"));
            c.stop();
            continue;
        }
        let (ma, mb) = (c.observations(Node::A).len(), c.observations(Node::B).len());
        let t0 = wall_ns();
        sleep_checked(Duration::from_secs(secs))?;
        c.poll()?;
        let changes = c.observations(Node::A)[ma..].len() + c.observations(Node::B)[mb..].len();
        let warnings = c.warnings_since(t0).len();
        c.stop();
        if changes == 0 {
            notes.push(format!(
                "corosync token {token} ms: stable for {secs} s at idle ({warnings} scheduling warnings)"
            ));
            return Ok(Some(token));
        }
        notes.push(format!(
            "corosync token {token} ms: {changes} membership changes / token losses in {secs} s at idle"
        ));
    }
    Ok(None)
}

/// Which topology a fault needs: the wire port (silent egress) and a
/// carrier that stays up on B when A's link goes down need the bridged one.
fn wiring_for(fault: Fault) -> Wiring {
    match fault {
        Fault::Sigstop | Fault::Sigkill => Wiring::Plain,
        Fault::SilentEgress | Fault::LinkDown => Wiring::Bridged,
    }
}

/// Restarts `sys` on `topo` and waits until it is healthy.
fn move_to(sys: &mut dyn System, topo: &Topology) -> anyhow::Result<()> {
    sys.stop();
    sys.start(topo)?;
    wait_healthy(sys, Duration::from_secs(20))
}

/// Everything a run does, in order; returns the results (also written to
/// disk).
fn execute(plan: &Plan) -> anyhow::Result<Results> {
    let started = Instant::now();
    // SAFETY: called before the bench starts any thread of its own; the
    // daemons and nft read TZ, and their log times are parsed as UTC.
    unsafe { std::env::set_var("TZ", "UTC") };
    install_signal_handlers();
    let mut results = Results {
        started: format!("{}", wall_ns() / 1_000_000_000),
        mode: plan.mode.into(),
        trials_per_fault: plan.trials,
        load_secs: plan.load_secs,
        cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
        kernel: version_of(&["uname", "-r"]),
        ..Results::default()
    };

    // --- setup -----------------------------------------------------------
    let wants_peers = plan
        .systems
        .iter()
        .any(|s| matches!(s.as_str(), "keepalived" | "bfdd" | "corosync"));
    let mut pkgs = vec!["nftables", "iperf3", "stress-ng", "iproute2", "ethtool"];
    if wants_peers {
        pkgs.extend(["keepalived", "frr", "corosync"]);
    }
    let failed = install(&pkgs);
    let pkg_failure = |p: &str| failed.iter().find(|(n, _)| n == p).map(|(_, e)| e.clone());
    if let Some(e) = pkg_failure("nftables").or_else(|| pkg_failure("iproute2")) {
        bail!("nftables / iproute2 are needed for the faults: {e}");
    }
    step(format!(
        "setup: building heartbeat-agent ({})",
        if plan.debug_agent { "debug" } else { "release" }
    ));
    let agent = build_agent(!plan.debug_agent);
    std::fs::create_dir_all(&plan.out_dir)?;
    let run_dir = plan.out_dir.join("run");
    let _ = std::fs::remove_dir_all(&run_dir);
    std::fs::create_dir_all(&run_dir)?;
    // bfdd runs as user frr and must reach its directory.
    let _ = std::fs::set_permissions(
        &run_dir,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    );
    results.versions = vec![
        (
            "keepalived".into(),
            version_of(&["keepalived", "--version"]),
        ),
        ("frr bfdd".into(), version_of(&[bfdd::BFDD, "--version"])),
        ("corosync".into(), version_of(&["corosync", "-v"])),
        ("iperf3".into(), version_of(&["iperf3", "--version"])),
        ("stress-ng".into(), version_of(&["stress-ng", "--version"])),
    ];

    let placement = Placement::detect();
    step(format!(
        "topology: plain (gen -> A == B) and bridged (gen -> A [br] == B); {}",
        placement.map_or("one CPU: nothing pinned".to_owned(), |p| format!(
            "A (and the generator) on CPU {}, B on CPU {}",
            p.cpu_a, p.cpu_b
        ))
    ));
    // The bridged topology needs the XDP object (pass-through programs on
    // the veth ends that receive XDP_TX frames), so the agent must build.
    let agent_object = match &agent {
        Ok((_, object)) => object.clone(),
        Err(e) => {
            bail!("building heartbeat-agent failed, no topology without its XDP object: {e:#}")
        }
    };
    let object = std::fs::read(&agent_object)
        .with_context(|| format!("reading {}", agent_object.display()))?;
    let plain = Topology::new(Wiring::Plain, &object, placement).context("plain topology")?;
    let bridged = Topology::new(Wiring::Bridged, &object, placement).context("bridged topology")?;
    let topo_for = |w: Wiring| if w == Wiring::Plain { &plain } else { &bridged };
    let stall_probe = probe::StallProbe::start()?;

    // --- the systems -----------------------------------------------------
    let mut systems: Vec<(String, Made)> = Vec::new();
    for name in &plan.systems {
        let dir = run_dir.join(name);
        std::fs::create_dir_all(&dir)?;
        let made: Made = match name.as_str() {
            "hb500us" | "hb5ms" | "hb30ms" => {
                let timeout = match name.as_str() {
                    "hb500us" => Duration::from_micros(500),
                    "hb5ms" => Duration::from_millis(5),
                    _ => Duration::from_millis(30),
                };
                match &agent {
                    Ok((bin, _)) => Ok(Box::new(heartbeat::Heartbeat::new(
                        &dir,
                        bin,
                        timeout,
                        plan.gate_intervals
                            .map_or(PRODUCT_AGENT_TIMEOUT, |g| timeout / 5 * g),
                    ))),
                    Err(e) => Err(format!("agent not ready: {e:#}")),
                }
            }
            "keepalived" => match pkg_failure("keepalived") {
                Some(e) => Err(e),
                None => Ok(Box::new(keepalived::Keepalived::new(&dir))),
            },
            "bfdd" => match pkg_failure("frr") {
                Some(e) => Err(e),
                None if !Path::new(bfdd::BFDD).exists() => Err(format!("{} missing", bfdd::BFDD)),
                None => Ok(Box::new(bfdd::Bfdd::new(&dir))),
            },
            "corosync" => match pkg_failure("corosync") {
                Some(e) => Err(e),
                None => {
                    let token = match plan.corosync_token {
                        Some(t) => {
                            results
                                .notes
                                .push(format!("corosync token {t} ms given on the command line"));
                            Some(t)
                        }
                        None => {
                            step("corosync: searching the smallest token timeout stable at idle");
                            find_corosync_token(
                                &plain,
                                &dir,
                                plan.token_check_secs,
                                &mut results.notes,
                            )?
                        }
                    };
                    match token {
                        Some(t) => Ok(Box::new(corosync::Corosync::new(&dir, t))),
                        None => Err("no token timeout up to 1000 ms was stable at idle".into()),
                    }
                }
            },
            other => Err(format!("unknown system {other}")),
        };
        systems.push((name.clone(), made));
    }
    if systems
        .iter()
        .any(|(n, made)| n.starts_with("hb") && made.is_ok())
    {
        results.notes.push(format!(
            "heartbeat: agent_timeout = {} (the dead-man stamp: the fallback for a hung agent, whose sender cannot run for that long); a killed or stopped agent is seen by the kernel at once (raw tracepoints sched_process_exit and signal_deliver close the gate), so SIGSTOP and SIGKILL detection is about node_timeout",
            plan.gate_intervals.map_or_else(
                || "1 s, the product's default".to_owned(),
                |g| format!("{g} x heartbeat_interval (--gate-intervals)")
            )
        ));
    }
    results.notes.extend([
        "topology for the loads and for SIGSTOP / SIGKILL: plain, a node with one NIC each (one veth pair A-B, pfifo_fast on both ends as on a NIC, no bridge, no packet tap); for silent egress and link down: bridged (A's interface bridged inside A to a wire port, where the nftables netdev egress rule `meta time >= <whole second> drop` drops every frame A sends, XDP_TX replies included, and B's carrier stays up when A's link goes down)".to_owned(),
        match placement {
            Some(p) => format!(
                "placement: A's daemons, the generator and A-only loads on CPU {}, B's daemons on CPU {}; RPS steers each node's stack receive work to its CPU; a veth has no IRQ: NAPI (the XDP program, and the deadline timers it arms) runs in the softirq of the CPU that transmitted the frame (see NET_RX per CPU in 2b). Threaded NAPI would move it, but a napi kthread is a task that RT throttling stops together with FIFO hogs, which no IRQ is",
                p.cpu_a, p.cpu_b
            ),
            None => "placement: one CPU, nothing pinned".to_owned(),
        },
        "stall = the largest wake-up lateness of a SCHED_FIFO 99 thread sleeping 1 ms at a time during the window: a whole-machine stall (VM descheduled, RT throttling) shows there".to_owned(),
        "gaps: the largest gap between valid heartbeats from A, from B's XDP program itself (exact when it is the largest seen so far, else the upper bound of its log2 bucket); not measured for the peers (no packet tap on the nodes' interfaces during loads)".to_owned(),
    ]);

    let mut rng = Rng::new();
    // --- 1. detection and 3. cost, one system at a time --------------------
    let mut ran: Vec<Box<dyn System>> = Vec::new();
    for (name, made) in systems {
        check_interrupt()?;
        let mut sys = match made {
            Ok(s) => s,
            Err(reason) => {
                step(format!("{name}: skipped: {reason}"));
                results.systems.push(SystemInfo {
                    system: label_of(&name),
                    status: "skipped".into(),
                    reason: Some(reason),
                    settings: String::new(),
                });
                continue;
            }
        };
        let label = sys.label();
        step(format!("{label}: starting ({})", sys.settings()));
        let started_ok = sys
            .start(&plain)
            .and_then(|()| wait_healthy(sys.as_mut(), Duration::from_secs(20)));
        if let Err(e) = started_ok {
            check_interrupt()?;
            sys.stop();
            step(format!("{label}: skipped: {e:#}"));
            results.systems.push(SystemInfo {
                system: label,
                status: "skipped".into(),
                reason: Some(format!("could not start: {e:#}")),
                settings: sys.settings(),
            });
            continue;
        }
        results.systems.push(SystemInfo {
            system: label.clone(),
            status: "ran".into(),
            reason: None,
            settings: sys.settings(),
        });
        step(format!(
            "{label}: CPU cost over {} s at idle",
            plan.cost_secs
        ));
        results.cost.push(cost(sys.as_mut(), plan.cost_secs)?);
        if plan.cost_only {
            sys.stop();
            continue;
        }
        let mut on = Wiring::Plain;
        for fault in Fault::ALL {
            let want = wiring_for(fault);
            if want != on {
                step(format!("{label}: moving to the {want:?} topology"));
                if let Err(e) = move_to(sys.as_mut(), topo_for(want)) {
                    step(format!("{label}: {e:#}"));
                }
                on = want;
            }
            let topo = topo_for(on);
            step(format!(
                "{label}: detection, {} x {}",
                plan.trials,
                fault.name()
            ));
            // A tap on A's interface, during detection only (no load): the
            // time from A's last frame to the fault.
            let tap = Sniffer::start(
                topo.a.name(),
                &topo.if_a,
                topology::IP_A,
                Direction::Outbound,
                heartbeat::PORT,
            )
            .ok();
            let row = detection(
                sys.as_mut(),
                topo,
                tap.as_ref(),
                fault,
                plan.trials,
                &mut rng,
            )?;
            drop(tap);
            if let Some(e) = &row.error {
                step(format!("{label}: {}: {e}", fault.name()));
            }
            results.detection.push(row);
        }
        sys.stop();
        ran.push(sys);
    }

    // --- 3a. the floor: a bare thread waking at the heartbeat rates -------
    for rate in [1_000, 10_000] {
        step(format!(
            "cost floor: a bare SCHED_FIFO thread waking {rate} times/s for {} s",
            plan.cost_secs
        ));
        match floor::measure(
            rate,
            plan.cost_secs,
            placement.map(|p| p.cpu_a),
            load::SENDER_PRIORITY as i32,
        ) {
            Some(row) => results.floor.push(row),
            None => results
                .notes
                .push(format!("cost floor at {rate}/s: the measuring thread died")),
        }
    }
    match send_floor_netns() {
        Ok(ns) => {
            for rate in [1_000, 10_000] {
                step(format!(
                    "cost floor: the same thread sending one {}-byte UDP datagram per wake-up (dropped at OUTPUT), {rate} times/s for {} s",
                    heartbeat_common::HEADER_LEN,
                    plan.cost_secs
                ));
                match floor::measure_send(
                    rate,
                    plan.cost_secs,
                    placement.map(|p| p.cpu_a),
                    load::SENDER_PRIORITY as i32,
                    PathBuf::from("/run/netns").join(ns.name()),
                ) {
                    Ok(row) => results.floor.push(row),
                    Err(e) => results.notes.push(format!("send floor at {rate}/s: {e:#}")),
                }
            }
        }
        Err(e) => results.notes.push(format!("send floor: {e:#}")),
    }
    results.kernel_options = floor::kernel_options();

    // --- 2. false failovers under load -------------------------------------
    // Two heartbeat agents cannot share an interface's XDP hook: each
    // heartbeat variant but one gets windows of its own.
    let loads_dir = run_dir.join("loads");
    std::fs::create_dir_all(&loads_dir)?;
    let mut groups: Vec<(Group<'_>, u64)> = Vec::new();
    let (mut fast, rest): (Group<'_>, Group<'_>) =
        ran.iter_mut().partition(|s| s.label() == "heartbeat 500µs");
    let (mut slow, mut rest): (Group<'_>, Group<'_>) = rest
        .into_iter()
        .partition(|s| s.label() == "heartbeat 30ms");
    groups.push((std::mem::take(&mut rest), plan.load_secs));
    groups.push((std::mem::take(&mut slow), plan.load_secs));
    groups.push((std::mem::take(&mut fast), plan.load_secs_fast));
    for (group, secs) in groups.iter_mut() {
        if group.is_empty() {
            continue;
        }
        let mut started: Vec<&mut Box<dyn System>> = Vec::new();
        for s in group.drain(..) {
            match s.start(&plain) {
                Ok(()) => started.push(s),
                Err(e) => {
                    step(format!(
                        "{}: could not start for the loads: {e:#}",
                        s.label()
                    ));
                    s.stop();
                }
            }
        }
        let r = load_ladder(
            &mut started,
            &plain,
            &stall_probe,
            plan,
            *secs,
            &mut results,
            &loads_dir,
        );
        for s in started.iter_mut() {
            s.stop();
        }
        r?;
    }
    drop(groups);
    drop(ran);

    // --- 3b. XDP program cost ---------------------------------------------
    step(format!(
        "XDP cost: BPF_PROG_TEST_RUN, repeat {}, {} single requests",
        plan.xdp_repeat, plan.xdp_singles
    ));
    match xdpcost::measure(&agent_object, plan.xdp_repeat, plan.xdp_singles) {
        Ok(x) => results.xdp = Some(x),
        Err(e) => results.xdp_skipped = Some(format!("{e:#}")),
    }
    drop(stall_probe);
    drop(bridged);
    drop(plain);

    // --- output ------------------------------------------------------------
    results.duration_s = started.elapsed().as_secs_f64();
    let json = plan.out_dir.join("results.json");
    results.write_json(&json)?;
    let svg = plan.out_dir.join("plot.svg");
    if let Err(e) = results.write_svg(&svg) {
        step(format!("plot not written: {e:#}"));
    }
    step(format!(
        "done in {:.0} s: {} and {}",
        results.duration_s,
        json.display(),
        svg.display()
    ));
    Ok(results)
}

/// The label a system would have had, for skipped rows.
fn label_of(name: &str) -> String {
    match name {
        "hb500us" => "heartbeat 500µs".into(),
        "hb5ms" => "heartbeat 5ms".into(),
        "hb30ms" => "heartbeat 30ms".into(),
        "bfdd" => "FRR bfdd".into(),
        other => other.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nft_dates() {
        // 2026-11-22 11:01:19 UTC
        let s = parse::days_from_civil(2026, 11, 22) * 86_400 + (11 * 60 + 1) * 60 + 19;
        assert_eq!(nft_date(s), "2026-11-22 11:01:19");
        assert_eq!(nft_date(0), "1970-01-01 00:00:00");
    }

    #[test]
    fn plans() {
        let quick = Plan::new(&BenchArgs {
            quick: true,
            ..BenchArgs::default()
        })
        .unwrap();
        assert_eq!(quick.trials, 3);
        assert_eq!(quick.systems.len(), 6);
        assert_eq!(quick.loads.len(), Load::QUICK.len());
        assert!(
            Plan::new(&BenchArgs {
                loads: vec!["nope".into()],
                ..BenchArgs::default()
            })
            .is_err()
        );
        let full = Plan::new(&BenchArgs::default()).unwrap();
        assert_eq!(
            (full.trials, full.load_secs, full.load_secs_fast),
            (20, 60, 20)
        );
        assert!(
            Plan::new(&BenchArgs {
                systems: vec!["nope".into()],
                ..BenchArgs::default()
            })
            .is_err()
        );
        let mut r = Rng::new();
        assert!((0..100).all(|_| r.below(10) < 10));
    }
}
