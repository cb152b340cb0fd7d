//! Service failover time (issue 9 §7): three nodes and a client on one
//! segment (`heartbeat_tests::failover`); the service (a tiny HTTP server
//! answering with its node's name) runs on every node, and the system under
//! test moves its address: heartbeat's package `web` (scripts `/bin/true`),
//! keepalived's VRRP address (with a `notify_master` script) or
//! Pacemaker's `ocf:heartbeat:IPaddr2` resource (corosync 3 underneath,
//! each node in its own mount namespace: `pacemaker.rs`). A client
//! sends a request every millisecond; the active node is killed (SIGKILL of
//! every process in its namespace, its link cut); the figure is the time
//! from the fault to the arrival of the first answer from another node.
//! The killed node is then revived (link up, no stale address, daemons
//! started) and the next trial kills whichever node is active.
//!
//! The same client also checks that no two nodes answered within one
//! millisecond and that the old node never answered after the new one.
//! For heartbeat each trial also records, from the new owner's journal,
//! when it declared the old owner failed, installed the view without it and
//! finished the start. Heartbeat runs twice per timing: with the package on
//! the membership coordinator (the kill also costs a coordinator) and off
//! it. `HB_KEEP=1` keeps each heartbeat cluster's journals and logs in
//! `target/bench/keep-<victim>-<node_timeout>[-teardown]/`.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use heartbeat_api::journal::EventKind;
use heartbeat_tests::{
    ChildGuard,
    failover::{self, HttpClient, NODE_NAMES, PackageCluster, Segment, Service},
};

use crate::{
    Rng, check_interrupt, keepalived,
    membership::Timing,
    pacemaker,
    report::{FailoverRow, FailoverTrial, Summary},
    sleep_checked,
    util::step,
};

/// The client: a request every ms, each bounded by 20 ms, at most 10 s.
const INTERVAL: Duration = Duration::from_millis(1);
const TIMEOUT: Duration = Duration::from_millis(20);
const MAX_REQUESTS: u64 = 10_000;
/// How long a trial waits for a new node to answer.
const BOUND: Duration = Duration::from_secs(5);

/// What a failover trial needs of a system.
trait Subject {
    fn segment(&self) -> &Segment;
    /// Waits until the system is settled; returns the active node.
    fn active(&mut self) -> anyhow::Result<usize>;
    /// Kills node `i`; returns the fault time.
    fn kill(&mut self, i: usize) -> anyhow::Result<u64>;
    fn revive(&mut self, i: usize) -> anyhow::Result<()>;
    /// How long a trial waits for a new node to answer.
    fn bound(&self) -> Duration {
        BOUND
    }
    /// Fault -> (detected, view installed, started) on the new node `i`,
    /// from its own report, where the system has one.
    fn stages(&self, _i: usize, _fault: u64) -> [Option<i64>; 3] {
        [None; 3]
    }
}

/// Asks the service address until `n` answers in a row come from one node
/// (within `within`); returns it.
fn stable_answer(seg: &Segment, n: usize, within: Duration) -> anyhow::Result<usize> {
    let vip: SocketAddr = format!("{}:80", seg.vip()).parse()?;
    let end = Instant::now() + within;
    let mut last: Option<String> = None;
    let mut run = 0;
    loop {
        check_interrupt()?;
        let a = failover::ask_once(&seg.client, vip);
        if a.is_some() && a == last {
            run += 1;
        } else {
            run = usize::from(a.is_some());
            last = a;
        }
        if run >= n
            && let Some(i) = last
                .as_deref()
                .and_then(|l| NODE_NAMES.iter().position(|x| *x == l))
        {
            return Ok(i);
        }
        if Instant::now() > end {
            bail!("the service address never answered steadily (last: {last:?})");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

struct Heartbeat {
    c: PackageCluster,
    defer_agent: Option<Duration>,
}

impl Subject for Heartbeat {
    fn segment(&self) -> &Segment {
        &self.c.seg
    }
    fn active(&mut self) -> anyhow::Result<usize> {
        let statuses = |c: &PackageCluster| {
            (0..NODE_NAMES.len())
                .map(|i| format!("--- {} ---\n{}", NODE_NAMES[i], c.status_text(i)))
                .collect::<Vec<_>>()
                .join("\n")
        };
        // A revived node may be given the package back (failback) just
        // after the cluster first looks settled: up to three looks, each
        // but the last confirmed by a settled cluster after the answers.
        let mut look = 1;
        loop {
            let owner = self
                .c
                .wait_settled(Duration::from_secs(30))
                .with_context(|| format!("not settled; alpha's log:\n{}", self.c.log(0)))?;
            let answers =
                stable_answer(&self.c.seg, 10, Duration::from_secs(10)).with_context(|| {
                    format!(
                        "{} owns web; status:\n{}",
                        NODE_NAMES[owner],
                        statuses(&self.c)
                    )
                })?;
            if answers == owner
                && (look == 3 || self.c.wait_settled(Duration::from_secs(1)) == Some(owner))
            {
                return Ok(owner);
            }
            if look == 3 {
                bail!(
                    "{} owns web but {} answers; status:\n{}",
                    NODE_NAMES[owner],
                    NODE_NAMES[answers],
                    statuses(&self.c)
                );
            }
            look += 1;
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    fn kill(&mut self, i: usize) -> anyhow::Result<u64> {
        Ok(self.c.kill(i, self.defer_agent)?)
    }
    fn revive(&mut self, i: usize) -> anyhow::Result<()> {
        Ok(self.c.revive(i)?)
    }
    fn stages(&self, i: usize, fault: u64) -> [Option<i64>; 3] {
        let j = self.c.journal(i);
        let after = |f: &dyn Fn(&heartbeat_api::journal::Entry) -> bool| {
            j.iter()
                .filter(|e| e.kernel_wall_ns >= fault && f(e))
                .map(|e| e.kernel_wall_ns as i64 - fault as i64)
                .min()
        };
        [
            after(&|e| e.event == EventKind::NodeDown),
            after(&|e| e.event == EventKind::ViewInstalled),
            after(&|e| e.event == EventKind::PackageAction && e.cause == "start"),
        ]
    }
}

/// Starts the resident service on node `i` of `seg` (SCHED_FIFO 20).
fn start_service(seg: &Segment, dir: &Path, i: usize) -> anyhow::Result<ChildGuard> {
    let name = NODE_NAMES[i];
    let f = |s: &str| dir.join(format!("{name}.{s}"));
    let py = failover::write_service(dir)?;
    let ready = f("web.pid");
    let _ = std::fs::remove_file(&ready);
    Ok(seg.nodes[i].spawn_logged(
        &[
            "chrt",
            "-f",
            failover::SERVICE_RT_PRIORITY,
            failover::python(),
            "-S",
            "-I",
            py.to_str().context("path")?,
            name,
            "80",
            ready.to_str().context("path")?,
        ],
        &f("web.log"),
    )?)
}

/// Three keepalived instances (priorities 150/100/50) and the resident
/// service on a segment.
struct Keepalived {
    dir: PathBuf,
    daemons: Vec<Option<ChildGuard>>,
    services: Vec<Option<ChildGuard>>,
    // Last: the namespaces go after the processes.
    seg: Segment,
}

impl Keepalived {
    fn new(object: &[u8], dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let seg = Segment::new("hbfk", NODE_NAMES.len(), 234, object)?;
        let mut k = Keepalived {
            dir: dir.to_owned(),
            daemons: (0..NODE_NAMES.len()).map(|_| None).collect(),
            services: (0..NODE_NAMES.len()).map(|_| None).collect(),
            seg,
        };
        for i in 0..NODE_NAMES.len() {
            k.start(i)?;
        }
        Ok(k)
    }

    fn start(&mut self, i: usize) -> anyhow::Result<()> {
        let name = NODE_NAMES[i];
        let f = |s: &str| self.dir.join(format!("{name}.{s}"));
        self.services[i] = Some(start_service(&self.seg, &self.dir, i)?);
        let notify = self.dir.join("notify.sh");
        std::fs::write(
            &notify,
            "#!/bin/sh\n# keepalived notify_master: where a service would be started.\nexit 0\n",
        )?;
        std::fs::set_permissions(&notify, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
        let conf = f("conf");
        std::fs::write(
            &conf,
            keepalived::failover_config(
                name,
                &self.seg.ifaces[i],
                150 - 50 * i as u8,
                &format!("{}/24", self.seg.vip()),
                &notify,
            ),
        )?;
        let (pid, vrrp, chk) = (f("pid"), f("vrrp.pid"), f("chk.pid"));
        for p in [&pid, &vrrp, &chk] {
            let _ = std::fs::remove_file(p);
        }
        let args = keepalived::command(&conf, &pid, &vrrp, &chk);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut g = self.seg.nodes[i].spawn_logged(&args, &f("log"))?;
        if let Ok(Some(st)) = g.wait_timeout(Duration::from_millis(200)) {
            bail!(
                "keepalived on {name} exited at start ({st}): {}",
                std::fs::read_to_string(f("log")).unwrap_or_default()
            );
        }
        self.daemons[i] = Some(g);
        Ok(())
    }
}

impl Drop for Keepalived {
    fn drop(&mut self) {
        self.daemons.clear();
        self.services.clear();
    }
}

impl Subject for Keepalived {
    fn segment(&self) -> &Segment {
        &self.seg
    }
    fn active(&mut self) -> anyhow::Result<usize> {
        // Adverts at 10 ms: after a preemption the roles settle in a moment;
        // 25 answers in a row (about half a second) from one node.
        stable_answer(&self.seg, 25, Duration::from_secs(20))
    }
    fn kill(&mut self, i: usize) -> anyhow::Result<u64> {
        let t = self.seg.kill_node(i, None)?;
        for g in [self.daemons[i].take(), self.services[i].take()]
            .into_iter()
            .flatten()
        {
            let mut g = g;
            let _ = g.wait_timeout(Duration::from_secs(5));
        }
        Ok(t)
    }
    fn revive(&mut self, i: usize) -> anyhow::Result<()> {
        self.seg.revive_node(i)?;
        self.start(i)
    }
}

/// `trials` failovers of `s`.
fn trials(
    s: &mut dyn Subject,
    label: &str,
    settings: String,
    trials: usize,
    rng: &mut Rng,
) -> anyhow::Result<FailoverRow> {
    let mut out = Vec::new();
    for trial in 0..trials {
        check_interrupt()?;
        let victim = s.active()?;
        let vip: SocketAddr = format!("{}:80", s.segment().vip()).parse()?;
        let client = HttpClient::start(&s.segment().client, vip, INTERVAL, TIMEOUT, MAX_REQUESTS)?;
        // A random phase against the heartbeats / adverts.
        sleep_checked(Duration::from_micros(200_000 + rng.below(10_000)))?;
        let fault = s.kill(victim)?;
        let end = Instant::now() + s.bound();
        loop {
            check_interrupt()?;
            let f = failover::analyze(&client.snapshot(), fault, INTERVAL);
            // 100 ms of the new node, to see an old answer if one came.
            if f.failover_ns
                .is_some_and(|n| failover::wall_ns() > fault + n + 100_000_000)
                || Instant::now() > end
            {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let f = failover::analyze(&client.finish(), fault, INTERVAL);
        let [detected_ns, view_ns, started_ns] = f
            .new
            .as_deref()
            .and_then(|n| NODE_NAMES.iter().position(|x| *x == n))
            .map_or([None; 3], |i| s.stages(i, fault));
        let t = FailoverTrial {
            detected_ns,
            view_ns,
            started_ns,
            trial: trial as u32,
            fault_wall_ns: fault as i64,
            old: f.old,
            new: f.new,
            failover_ns: f.failover_ns.map(|n| n as i64),
            gap_ns: f.gap_ns.map(|n| n as i64),
            unanswered: f.errors,
            shared_intervals: f.shared_intervals,
            old_after_new: f.old_after_new,
        };
        let ms = |v: Option<i64>| v.map_or("-".to_owned(), |n| format!("{:.3}", n as f64 / 1e6));
        step(format!(
            "failover {label}: trial {}/{trials}: {} -> {}: {} ms{}",
            trial + 1,
            t.old.as_deref().unwrap_or("?"),
            t.new.as_deref().unwrap_or("nobody"),
            ms(t.failover_ns),
            if t.started_ns.is_some() {
                format!(
                    " (new owner: detected {}, view {}, started {})",
                    ms(t.detected_ns),
                    ms(t.view_ns),
                    ms(t.started_ns)
                )
            } else {
                String::new()
            }
        ));
        out.push(t);
        s.revive(victim)?;
    }
    Ok(FailoverRow {
        system: label.to_owned(),
        settings,
        status: "ran".into(),
        reason: None,
        failover: Summary::of(&out.iter().map(|t| t.failover_ns).collect::<Vec<_>>()),
        gap: Summary::of(&out.iter().map(|t| t.gap_ns).collect::<Vec<_>>()),
        two_answering: out
            .iter()
            .filter(|t| t.shared_intervals > 0 || t.old_after_new > 0)
            .count(),
        trials: out,
    })
}

fn skipped(label: &str, settings: String, reason: String) -> FailoverRow {
    step(format!("failover {label}: skipped: {reason}"));
    FailoverRow {
        system: label.to_owned(),
        settings,
        status: "skipped".into(),
        reason: Some(reason),
        ..FailoverRow::default()
    }
}

/// Which node a heartbeat trial kills.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Victim {
    /// The package runs on the membership coordinator (alpha: nodes alpha,
    /// beta, gamma, failback automatic, so it is back on alpha before each
    /// trial): the kill also costs the cluster its coordinator.
    Coordinator,
    /// The package runs on beta or gamma only (alpha, the coordinator,
    /// is not among its nodes and is never killed).
    NotCoordinator,
}

/// How long after the fault the killed node's agent itself is killed in
/// the "separate machines" rows (see `Segment::kill_node`).
pub const DEFER_AGENT: Duration = Duration::from_millis(300);

/// heartbeat at timing `t`: `trials` failovers; with `defer_agent`, the
/// killed node's agent dies [`DEFER_AGENT`] after the fault (its link is
/// cut at the fault): its teardown cannot delay the survivors, as on
/// separate machines.
#[allow(
    clippy::too_many_arguments,
    reason = "one call per row, every argument named at the call site"
)]
pub fn heartbeat(
    agent: &Path,
    object: &[u8],
    t: Timing,
    victim: Victim,
    defer_agent: bool,
    n: usize,
    dir: &Path,
    rng: &mut Rng,
) -> anyhow::Result<FailoverRow> {
    let (nodes, extra, who): (&[&str], &str, &str) = match victim {
        Victim::Coordinator => (
            &NODE_NAMES,
            "failback_policy = \"automatic\"",
            "owner = coordinator",
        ),
        Victim::NotCoordinator => (&NODE_NAMES[1..], "", "owner != coordinator"),
    };
    let label = if defer_agent {
        format!("{} ({who}, agent teardown +300ms)", t.label)
    } else {
        format!("{} ({who})", t.label)
    };
    let settings = format!(
        "package web, address only (scripts /bin/true, service resident on every node, SCHED_FIFO 20), nodes {nodes:?} {extra}; \
         heartbeat_interval {}, node_timeout {}, agent_timeout {}, package_lease = node_timeout, \
         lease_margin 200us, clock_drift_ppm 500, announce_count 3{}",
        t.interval,
        t.node_timeout,
        t.agent_timeout,
        if defer_agent {
            "; the killed node's agent itself dies 300 ms after the fault (link cut and service killed at the fault): its teardown in the shared kernel cannot delay the survivors, as on separate machines"
        } else {
            ""
        }
    );
    step(format!(
        "failover {label}: three nodes and a client on one segment"
    ));
    let _ = std::fs::remove_dir_all(dir);
    let timing = failover::Timing {
        interval: t.interval,
        node_timeout: t.node_timeout,
        agent_timeout: t.agent_timeout,
    };
    let c = PackageCluster::new(
        agent,
        object,
        "hbf",
        233,
        timing,
        Service::Resident,
        nodes,
        extra,
        dir,
    )?;
    let mut s = Heartbeat {
        c,
        defer_agent: defer_agent.then_some(DEFER_AGENT),
    };
    let r = trials(&mut s, &label, settings, n, rng);
    drop(s);
    if std::env::var_os("HB_KEEP").is_some() {
        let keep = dir.with_file_name(format!(
            "keep-{:?}-{}{}",
            victim,
            t.node_timeout,
            if defer_agent { "-teardown" } else { "" }
        ));
        let _ = std::fs::remove_dir_all(&keep);
        let _ = std::fs::rename(dir, keep);
    }
    let _ = std::fs::remove_dir_all(dir);
    r
}

/// keepalived: `trials` failovers, or a skipped row when it cannot run.
pub fn keepalived(
    object: &[u8],
    n: usize,
    dir: &Path,
    rng: &mut Rng,
) -> anyhow::Result<FailoverRow> {
    let settings = format!(
        "VRRPv3 multicast, advert_int {} s, priorities 150/100/50 (preempt), vrrp_rt_priority 40 (as heartbeat's runtime thread), the address as virtual_ipaddress, notify_master script; service resident on every node (SCHED_FIFO 20)",
        keepalived::ADVERT_INT
    );
    if !crate::util::missing_packages(&["keepalived"]).is_empty() {
        return Ok(skipped(
            "keepalived",
            settings,
            "not installed (`cargo xtask bench` installs it)".into(),
        ));
    }
    step("failover keepalived: three nodes and a client on one segment");
    let _ = std::fs::remove_dir_all(dir);
    let mut s = match Keepalived::new(object, dir) {
        Ok(s) => s,
        Err(e) => return Ok(skipped("keepalived", settings, format!("{e:#}"))),
    };
    let r = trials(&mut s, "keepalived", settings, n, rng);
    drop(s);
    let _ = std::fs::remove_dir_all(dir);
    r
}

/// Pacemaker + corosync (`pacemaker.rs`) and the resident service on a
/// segment.
struct Pacemaker {
    dir: PathBuf,
    p: pacemaker::Pacemaker,
    services: Vec<Option<ChildGuard>>,
    // Last: the namespaces (and whatever still runs in them) go last.
    seg: Segment,
}

impl Pacemaker {
    fn new(object: &[u8], dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let seg = Segment::new("hbfp", NODE_NAMES.len(), 235, object)?;
        let mut s = Pacemaker {
            dir: dir.to_owned(),
            p: pacemaker::Pacemaker::new(dir),
            services: (0..NODE_NAMES.len()).map(|_| None).collect(),
            seg,
        };
        for i in 0..NODE_NAMES.len() {
            s.services[i] = Some(start_service(&s.seg, &s.dir, i)?);
            s.p.start(&s.seg, i)?;
        }
        s.p.wait_online(pacemaker::FORM_BOUND)?;
        s.p.configure(&s.seg)?;
        Ok(s)
    }
}

impl Drop for Pacemaker {
    fn drop(&mut self) {
        // Every process of the nodes at once (pacemakerd's children and
        // corosync are not the guards' children).
        for ns in &self.seg.nodes {
            for pid in ns.pids().unwrap_or_default() {
                let _ = crate::system::signal_pid(pid, heartbeat_tests::Signal::SIGKILL);
            }
        }
        self.services.clear();
    }
}

impl Subject for Pacemaker {
    fn segment(&self) -> &Segment {
        &self.seg
    }
    fn active(&mut self) -> anyhow::Result<usize> {
        // Every node a member (a revived node too), then the address
        // answering steadily from one node.
        self.p.wait_online(pacemaker::FORM_BOUND)?;
        stable_answer(&self.seg, 25, Duration::from_secs(60))
            .with_context(|| format!("crm_mon:\n{}", self.p.status()))
    }
    fn kill(&mut self, i: usize) -> anyhow::Result<u64> {
        let t = self.seg.kill_node(i, None)?;
        for g in [self.p.nodes[i].take(), self.services[i].take()]
            .into_iter()
            .flatten()
        {
            let mut g = g;
            let _ = g.wait_timeout(Duration::from_secs(5));
        }
        Ok(t)
    }
    fn revive(&mut self, i: usize) -> anyhow::Result<()> {
        self.seg.revive_node(i)?;
        self.services[i] = Some(start_service(&self.seg, &self.dir, i)?);
        self.p.start(&self.seg, i)
    }
    fn bound(&self) -> Duration {
        // Seconds, not milliseconds (token loss, consensus, a DC election
        // when the DC was killed, the transition, IPaddr2): as long as
        // the client runs (10 s from before the fault, which comes up to
        // 1.4 s after it starts).
        Duration::from_millis(8_000)
    }
    fn stages(&self, i: usize, fault: u64) -> [Option<i64>; 3] {
        self.p.stages(i, fault)
    }
}

/// Pacemaker + corosync with IPaddr2: `trials` failovers, or a skipped row
/// when it is not installed.
pub fn pacemaker(
    object: &[u8],
    n: usize,
    dir: &Path,
    rng: &mut Rng,
) -> anyhow::Result<FailoverRow> {
    let settings = pacemaker::settings();
    let missing = crate::util::missing_packages(&[
        "pacemaker",
        "pacemaker-cli-utils",
        "corosync",
        "resource-agents",
    ]);
    if !missing.is_empty() {
        return Ok(skipped(
            "pacemaker",
            settings,
            format!(
                "not installed: {} (`cargo xtask bench` installs them)",
                missing.join(", ")
            ),
        ));
    }
    step("failover pacemaker: three nodes and a client on one segment");
    let _ = std::fs::remove_dir_all(dir);
    // A cluster that does not work (does not form within its bound, a node
    // that never rejoins, an address that never answers) fails its row,
    // not the bench.
    let failed = |e: anyhow::Error| {
        let reason = format!("{e:#}");
        step(format!("failover pacemaker: failed: {reason}"));
        FailoverRow {
            system: "pacemaker".into(),
            settings: settings.clone(),
            status: "failed".into(),
            reason: Some(reason),
            ..FailoverRow::default()
        }
    };
    let r = match Pacemaker::new(object, dir) {
        Ok(mut s) => {
            let r = trials(&mut s, "pacemaker", settings.clone(), n, rng);
            drop(s);
            r.unwrap_or_else(failed)
        }
        Err(e) => failed(e),
    };
    if std::env::var_os("HB_KEEP").is_some() {
        let keep = dir.with_file_name("keep-pacemaker");
        let _ = std::fs::remove_dir_all(&keep);
        let _ = std::fs::rename(dir, keep);
    }
    let _ = std::fs::remove_dir_all(dir);
    Ok(r)
}

/// The table of the rows, with each heartbeat row's ratio to keepalived.
pub fn table(rows: &[FailoverRow]) -> String {
    let ms = |v: Option<i64>| v.map_or("-".to_owned(), |v| format!("{:.3}", v as f64 / 1e6));
    let mut s = String::from(
        "Service failover (3 nodes; the active node killed: every process, link cut) -> the address answers a client from the new node, ms:\n\
         system            n  miss   min      p50      p90      p99      max      gap p50   2 nodes   p99 vs keepalived\n",
    );
    let k = rows
        .iter()
        .find(|r| r.system == "keepalived" && r.status == "ran")
        .and_then(|r| r.failover.p99_ns);
    for r in rows {
        if r.status != "ran" {
            s.push_str(&format!(
                "{:<17} {}: {}\n",
                r.system,
                r.status,
                r.reason.as_deref().unwrap_or("")
            ));
            continue;
        }
        let f = &r.failover;
        let vs = match (f.p99_ns, k) {
            (Some(h), Some(k)) if r.system != "keepalived" && h > 0 && k > 0 => {
                if h <= k {
                    format!("{:.1}x faster", k as f64 / h as f64)
                } else {
                    format!("{:.1}x slower", h as f64 / k as f64)
                }
            }
            _ => String::new(),
        };
        s.push_str(&format!(
            "{:<17} {:<2} {:<5} {:<8} {:<8} {:<8} {:<8} {:<8} {:<9} {:<9} {vs}\n",
            r.system,
            f.n - f.misses,
            f.misses,
            ms(f.min_ns),
            ms(f.p50_ns),
            ms(f.p90_ns),
            ms(f.p99_ns),
            ms(f.max_ns),
            ms(r.gap.p50_ns),
            r.two_answering,
        ));
    }
    s
}
