//! `cargo xtask demo`: a service failover, live, on this machine. Three
//! nodes and a client in network namespaces on one segment (a bridge in a
//! hub namespace); a package `web` whose start script runs a tiny HTTP
//! service that answers with its node's name, at the package's address; the
//! client sends a request every millisecond. The demo kills the active node
//! (its link cut and SIGKILL of every process in it, agent and service)
//! and prints, from one fault, every layer of the failover: the survivors'
//! kernel detection (the old demo's figures), the new view, the placement,
//! the wait for the old owner's lease, the start script, and what the client
//! saw: its service gap, the node that answers afterwards, and that no two
//! nodes answered within the same interval. Then it removes everything and
//! checks that nothing is left behind. Bounded to well under a minute;
//! Ctrl-C cleans up.

use std::{
    fs,
    io::BufRead as _,
    net::SocketAddr,
    path::PathBuf,
    process::Stdio,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use clap::Args;
use heartbeat_api::journal::{Entry, EventKind};
use heartbeat_tests::failover::{
    self, Answer, HttpClient, NODE_NAMES, PackageCluster, Service, Timing,
};

use crate::util::{self, step};

/// Options of `cargo xtask demo`.
#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Node timeout of the demo cluster: 5ms (heartbeat interval 1ms) or
    /// 500us (interval 250us: three nodes at 100us need more than two cores).
    #[arg(long, default_value = "5ms")]
    pub node_timeout: String,
    /// Seconds of client traffic before the failure is injected.
    #[arg(long, default_value_t = 2)]
    pub watch: u64,
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

fn interrupted() -> anyhow::Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted: cleaning up");
    }
    Ok(())
}

/// Sleeps in small steps so Ctrl-C is noticed.
fn nap(d: Duration) -> anyhow::Result<()> {
    let end = Instant::now() + d;
    while Instant::now() < end {
        interrupted()?;
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// The client: one request per millisecond, each bounded by 20 ms, at most
/// 40 s of them.
const CLIENT_INTERVAL: Duration = Duration::from_millis(1);
const CLIENT_TIMEOUT: Duration = Duration::from_millis(20);
const CLIENT_MAX: u64 = 40_000;

/// Builds the release agent and returns (binary, XDP object); the object is
/// in the build script's OUT_DIR, which cargo reports.
fn build_agent() -> anyhow::Result<(PathBuf, PathBuf)> {
    step(
        "build",
        "building heartbeat-agent (release; the eBPF program is built with nightly)",
    );
    let mut child = util::cargo()
        .args([
            "build",
            "--release",
            "--package",
            "heartbeat-agent",
            "--message-format=json-render-diagnostics",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting cargo build")?;
    let stdout = child.stdout.take().context("cargo stdout")?;
    let mut out_dir = None;
    for line in std::io::BufReader::new(stdout).lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&line?) else {
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
    let bin = util::target_dir().join("release/heartbeat-agent");
    let object = out_dir
        .context("cargo did not report heartbeat-agent's OUT_DIR")?
        .join("heartbeat");
    Ok((bin, object))
}

fn timing(node_timeout: &str) -> anyhow::Result<Timing> {
    Ok(match node_timeout {
        "5ms" => Timing {
            interval: "1ms",
            node_timeout: "5ms",
            agent_timeout: "20ms",
        },
        "500us" | "500µs" => Timing {
            interval: "250us",
            node_timeout: "500us",
            agent_timeout: "2ms",
        },
        other => bail!("--node-timeout {other:?}: the demo runs at 5ms or 500us"),
    })
}

/// One line of the timeline: ms after the fault.
fn at(e: &Entry, fault: u64) -> f64 {
    (e.kernel_wall_ns as f64 - fault as f64) / 1e6
}

/// Runs the demo.
pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    util::require_root("the demo creates network namespaces and loads XDP programs")?;
    let t = timing(&args.node_timeout)?;
    let (bin, object) = build_agent()?;
    // The demo's own time, after the build.
    let started = Instant::now();
    let object = fs::read(&object).with_context(|| format!("reading {}", object.display()))?;
    // SAFETY: installs a handler that only stores to an atomic.
    unsafe {
        libc::signal(
            libc::SIGINT,
            on_sigint as extern "C" fn(libc::c_int) as libc::sighandler_t,
        )
    };
    let dir = std::env::temp_dir().join(format!("heartbeat-demo-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    let result = demo(&args, t, &bin, &object, &dir, started);
    step("demo", "stopping agents and removing the namespaces");
    let _ = fs::remove_dir_all(&dir);
    result?;
    let mut left = Vec::new();
    left.extend(
        heartbeat_tests::leftovers()
            .into_iter()
            .filter(|n| n.starts_with(&format!("hbdemo{}-", std::process::id()))),
    );
    left.extend(
        heartbeat_tests::bpffs_leftovers()
            .into_iter()
            .filter(|b| match b {
                heartbeat_tests::BpffsLeftover::Pins { dir, .. } => dir
                    .file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&format!("{}-", failover::CLUSTER_ID))),
                heartbeat_tests::BpffsLeftover::Mount { .. } => false,
            })
            .map(|b| b.to_string()),
    );
    let procs = std::process::Command::new("pgrep")
        .args(["-f", &dir.display().to_string()])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    if !procs.is_empty() {
        left.push(format!("processes {procs}"));
    }
    if !left.is_empty() {
        bail!("left behind: {left:?}");
    }
    println!(
        "Done in {:.0} s: nothing left behind (namespaces with their addresses, agents, services, XDP programs, bpffs pins).",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn demo(
    args: &DemoArgs,
    t: Timing,
    bin: &std::path::Path,
    object: &[u8],
    dir: &std::path::Path,
    started: Instant,
) -> anyhow::Result<()> {
    step(
        "demo",
        format!(
            "creating 3 node namespaces and a client on one segment; starting 3 agents \
             (heartbeat_interval {}, node_timeout {}) with package `web` at 10.231.0.100",
            t.interval, t.node_timeout
        ),
    );
    let mut c = PackageCluster::new(
        bin,
        object,
        "hbdemo",
        231,
        t,
        Service::Scripts,
        &NODE_NAMES,
        "",
        dir,
    )?;
    println!(
        "Package `web` (from {}):\n{}",
        c.config.display(),
        fs::read_to_string(&c.config)?
            .split("[[package]]")
            .nth(1)
            .unwrap_or_default()
            .trim()
    );
    step(
        "demo",
        "waiting for the cluster to agree and for `web` to run on its first node",
    );
    let mut owner = None;
    let end = Instant::now() + Duration::from_secs(20);
    while owner.is_none() {
        interrupted()?;
        if Instant::now() > end {
            bail!(
                "the cluster did not settle within 20 s; alpha's log:\n{}",
                c.log(0)
            );
        }
        owner = c.settled();
        std::thread::sleep(Duration::from_millis(50));
    }
    let old = owner.context("owner")?;
    println!(
        "\n`web` runs on {}. Status from {}:\n\n{}",
        NODE_NAMES[old],
        NODE_NAMES[old],
        c.status_text(old)
    );

    let vip: SocketAddr = format!("{}:80", c.seg.vip()).parse()?;
    step(
        "demo",
        format!(
            "client (own namespace, same segment) sends GET http://{vip}/ every ms for {} s",
            args.watch
        ),
    );
    let client = HttpClient::start(
        &c.seg.client,
        vip,
        CLIENT_INTERVAL,
        CLIENT_TIMEOUT,
        CLIENT_MAX,
    )?;
    nap(Duration::from_secs(args.watch))?;
    let before = client.snapshot();
    let ok = before
        .iter()
        .filter(|s| s.answer == Answer::Node(NODE_NAMES[old].to_owned()))
        .count();
    println!(
        "  {} requests, {ok} answered by {}",
        before.len(),
        NODE_NAMES[old]
    );
    if ok == 0 {
        bail!("the client got no answer from {}", NODE_NAMES[old]);
    }

    step(
        "demo",
        format!(
            "killing {} at the next whole second: its link cut (nftables drops on its wire, both ways) and SIGKILL of every process in its namespace (agent, web service)",
            NODE_NAMES[old]
        ),
    );
    let fault = c.kill(old, None)?;
    // Until a new node has answered for half a second (or 10 s pass).
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        interrupted()?;
        let f = failover::analyze(&client.snapshot(), fault, CLIENT_INTERVAL);
        if f.failover_ns
            .is_some_and(|n| failover::wall_ns() > fault + n + 500_000_000)
            || Instant::now() > end
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let samples = client.finish();
    let f = failover::analyze(&samples, fault, CLIENT_INTERVAL);

    println!("\nWhat each survivor saw, ms after the kill (journals, kernel / agent clocks):");
    for i in (0..NODE_NAMES.len()).filter(|&i| i != old) {
        for e in c.journal(i).iter().filter(|e| e.kernel_wall_ns >= fault) {
            let what = match e.event {
                EventKind::NodeDown => format!(
                    "{} declared failed by the kernel timer (silent {:.3} ms)",
                    e.peer.as_deref().unwrap_or("?"),
                    e.since_last_rx_ns.unwrap_or(0) as f64 / 1e6
                ),
                EventKind::ViewInstalled => format!(
                    "view installed: epoch {} members {:?}",
                    e.epoch.unwrap_or(0),
                    e.members.clone().unwrap_or_default()
                ),
                EventKind::PackagePlaced => format!(
                    "`web` placed on {} ({})",
                    e.peer.as_deref().unwrap_or("no node"),
                    e.cause
                ),
                EventKind::PackageCleared => format!(
                    "start cleared: {} ({})",
                    e.peer.as_deref().unwrap_or("?"),
                    e.cause
                ),
                EventKind::PackageAction if e.cause != "monitor" => format!(
                    "`web` {} finished: {}",
                    e.cause,
                    e.detail.as_deref().unwrap_or("")
                ),
                _ => continue,
            };
            println!("  {:>9.3}  {:<6} {what}", at(e, fault), NODE_NAMES[i]);
        }
    }
    let ms = |n: Option<u64>| n.map_or("-".to_owned(), |n| format!("{:.3}", n as f64 / 1e6));
    println!(
        "\nThe client ({} requests, one per ms; {} answered):",
        f.sent, f.answered
    );
    println!(
        "  last answer from {} before the kill, first answer from {} {} ms after the kill",
        f.old.as_deref().unwrap_or("-"),
        f.new.as_deref().unwrap_or("nobody"),
        ms(f.failover_ns)
    );
    println!(
        "  service gap (last answer of the old node -> first of the new): {} ms; {} requests unanswered",
        ms(f.gap_ns),
        f.errors
    );
    println!(
        "  intervals in which two nodes answered: {}; answers from {} after {}'s first: {}",
        f.shared_intervals,
        f.old.as_deref().unwrap_or("-"),
        f.new.as_deref().unwrap_or("-"),
        f.old_after_new
    );
    let new = f
        .new
        .clone()
        .context("no other node answered within 10 s")?;
    let ni = NODE_NAMES
        .iter()
        .position(|n| *n == new)
        .context("unknown node answered")?;
    println!("\nStatus from {new}:\n\n{}", c.status_text(ni));
    if f.shared_intervals > 0 || f.old_after_new > 0 {
        bail!("two nodes answered for `web` in one interval");
    }
    step(
        "demo",
        format!("failover shown in {:.0} s", started.elapsed().as_secs_f64()),
    );
    drop(c);
    Ok(())
}
