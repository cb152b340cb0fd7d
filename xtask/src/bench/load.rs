//! The load ladder of the false-detection scenario: link saturation by
//! iperf3 from the generator namespace through A onto the heartbeat link,
//! CPU hogs, timer and context-switch pressure, SCHED_FIFO hogs, and link
//! plus CPU together. Every load is bounded in time twice: by the tool's
//! own duration option and by the guard that kills it at the window's end.

use std::{os::unix::process::CommandExt as _, path::Path, process::Command, time::Duration};

use anyhow::Context as _;
use heartbeat_tests::ChildGuard;

use super::{
    system::spawn_logged,
    topology::{IP_B, Topology},
};

/// SCHED_FIFO priority of the hogs: the agent's sender thread runs at
/// SCHED_FIFO 50, so the hogs are at its level (FIFO does not preempt at an
/// equal priority).
pub const FIFO_PRIORITY: u32 = 50;

/// One rung of the ladder.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Load {
    Idle,
    IperfTcp,
    IperfUdp,
    Cpu,
    TimerSwitch,
    Fifo,
    TcpAndCpu,
}

impl Load {
    /// The full ladder.
    pub const ALL: [Load; 7] = [
        Load::Idle,
        Load::IperfTcp,
        Load::IperfUdp,
        Load::Cpu,
        Load::TimerSwitch,
        Load::Fifo,
        Load::TcpAndCpu,
    ];
    /// The ladder of `--quick`.
    pub const QUICK: [Load; 3] = [Load::Idle, Load::IperfTcp, Load::Fifo];

    pub fn name(self) -> &'static str {
        match self {
            Load::Idle => "idle",
            Load::IperfTcp => "iperf3 TCP",
            Load::IperfUdp => "iperf3 UDP line rate",
            Load::Cpu => "CPU hogs (fair)",
            Load::TimerSwitch => "timers + ctx switch",
            Load::Fifo => "SCHED_FIFO hogs",
            Load::TcpAndCpu => "iperf3 TCP + CPU",
        }
    }

    /// The commands, for the report.
    pub fn describe(self, cpus: usize) -> String {
        match self {
            Load::Idle => "nothing".into(),
            Load::IperfTcp => "iperf3 -c B -t T (TCP, gen -> A -> B)".into(),
            Load::IperfUdp => "iperf3 -c B -u -b 0 -t T (UDP at line rate)".into(),
            Load::Cpu => format!("stress-ng --cpu {cpus}"),
            Load::TimerSwitch => {
                format!("stress-ng --timer {cpus} --hrtimers {cpus} --switch {cpus}")
            }
            Load::Fifo => format!(
                "stress-ng --cpu {cpus} --sched fifo --sched-prio {FIFO_PRIORITY} (the agent's sender: SCHED_FIFO 50)"
            ),
            Load::TcpAndCpu => format!("iperf3 TCP + stress-ng --cpu {cpus}"),
        }
    }
}

/// A running load; everything is killed on drop.
pub struct Running {
    children: Vec<ChildGuard>,
}

impl Running {
    /// Stops every process of the load now.
    pub fn stop(mut self) {
        for mut c in self.children.drain(..) {
            let _ = c.shutdown(Duration::from_millis(500));
        }
    }
}

fn stress(args: &[String], secs: u64, log: &Path) -> anyhow::Result<ChildGuard> {
    let out = std::fs::File::create(log)?;
    let mut cmd = Command::new("stress-ng");
    cmd.args(args)
        .args(["--timeout", &format!("{secs}s"), "--quiet"])
        .stdin(std::process::Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        // stress-ng signals its whole process group when it stops.
        .process_group(0);
    ChildGuard::spawn(&mut cmd).context("starting stress-ng")
}

fn iperf(topo: &Topology, udp: bool, secs: u64, dir: &Path) -> anyhow::Result<Vec<ChildGuard>> {
    let b = IP_B.to_string();
    let server = spawn_logged(
        &topo.b,
        &["iperf3", "-s", "-1", "-B", &b],
        &dir.join("iperf3-server.log"),
    )
    .context("starting iperf3 server")?;
    // Wait until it listens (bounded).
    for _ in 0..50 {
        let out = topo.b.exec_unchecked(&["ss", "-Hltn", "sport = :5201"]);
        if out.is_ok_and(|o| !o.stdout.is_empty()) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let t = secs.to_string();
    let mut args = vec!["iperf3", "-c", &b, "-t", &t, "--connect-timeout", "2000"];
    if udp {
        args.extend(["-u", "-b", "0"]);
    }
    let client = spawn_logged(&topo.generator, &args, &dir.join("iperf3-client.log"))
        .context("starting iperf3 client")?;
    Ok(vec![client, server])
}

/// Starts `load` for `secs` seconds (logs go to `dir`).
pub fn start(
    load: Load,
    topo: &Topology,
    secs: u64,
    cpus: usize,
    dir: &Path,
) -> anyhow::Result<Running> {
    let n = cpus.to_string();
    let mut children = Vec::new();
    let s = |v: &[&str]| v.iter().map(|x| (*x).to_owned()).collect::<Vec<String>>();
    let log = dir.join("stress-ng.log");
    match load {
        Load::Idle => {}
        Load::IperfTcp => children.extend(iperf(topo, false, secs, dir)?),
        Load::IperfUdp => children.extend(iperf(topo, true, secs, dir)?),
        Load::Cpu => children.push(stress(&s(&["--cpu", &n]), secs, &log)?),
        Load::TimerSwitch => children.push(stress(
            &s(&["--timer", &n, "--hrtimers", &n, "--switch", &n]),
            secs,
            &log,
        )?),
        Load::Fifo => children.push(stress(
            &s(&[
                "--cpu",
                &n,
                "--sched",
                "fifo",
                "--sched-prio",
                &FIFO_PRIORITY.to_string(),
            ]),
            secs,
            &log,
        )?),
        Load::TcpAndCpu => {
            children.extend(iperf(topo, false, secs, dir)?);
            children.push(stress(&s(&["--cpu", &n]), secs, &log)?);
        }
    }
    Ok(Running { children })
}
