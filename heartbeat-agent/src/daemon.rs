//! The daemon's supervisor: builds a [`Plan`] from the configuration,
//! starts one task per subsystem, and stops them in order.
//!
//! Subsystems, each the single owner of its state (after tokio-rs/mini-redis:
//! a task per job, shutdown by a broadcast — here a `CancellationToken` —
//! and a `TaskTracker` to wait for every task):
//! - fast path (`fastpath::run`): the loaded XDP program, its maps and
//!   attachments; kernel events in, transport events and map snapshots out;
//! - sender (`sender`): the real-time thread sending requests and
//!   refreshing the dead-man stamp; commands in over a channel;
//! - transport (`transport::receive`): what reaches the links' sockets;
//! - cluster (`cluster::run`): reachability and membership;
//! - serial (`serial::run`): the serial heartbeat line of a two-node
//!   cluster, when one is configured: link events and membership messages
//!   in and out, the survivor rule's verdict published;
//! - journal (`journal`): the event history, followers and the file;
//! - control (`control::serve`) and metrics (`metrics::serve`): operators;
//! - liveness (here): proves every 100 ms that the runtime still runs its
//!   tasks; the sender withholds the stamp and its requests when it stops.
//! - watchdog (`watchdog`, optional): a thread feeding the Linux watchdog
//!   device while the node is healthy (the sbd-like self-fence).
//!
//! Data flows one way: kernel events and messages in, decisions out;
//! status and metrics read what the subsystems publish (watch channels and
//! atomics) and never wait for them.
//!
//! Startup checks everything that can fail without side effects (config,
//! key file, control socket path, metrics port, link sockets) before XDP is
//! attached, and every error path undoes what was done (guards).
//! Shutdown: the node announces it is halting, the tasks stop, the sender
//! thread stops, and XDP is detached last.
//!
//! Announced restart (`heartbeat-agent restart`, or SIGUSR2): the node
//! state becomes `RESTARTING`, the cluster task is dropped without
//! announcing a leave, the restart window (`cluster.restart_window`) opens
//! in the program's `RESTART` map, the XDP links and maps are pinned in
//! bpffs (`pins`), the sender stops, and the process exits with
//! [`RESTART_EXIT_CODE`] without detaching: the kernel keeps answering for
//! the node. The next agent finds the pins, adopts them if the window is
//! still open and they match its configuration (else it detaches and
//! removes them and starts fresh), and closes the window once its own
//! sender runs.
//!
//! Kernel fence (issue #9): on a node that may run packages, every package
//! address is fenced (`LEASES`, 0) before the program is attached, and the
//! XDP and TCX links and the maps are pinned right after (same directory
//! and layout as an announced restart), so that a killed agent leaves the
//! addresses dark: nothing renews the leases. A stop removes the pins as
//! above, and so do `heartbeat-agent detach` and the next agent.

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use heartbeat_cluster::wire::Sealer;
use heartbeat_common::node_state;
use thiserror::Error;
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::{mpsc, watch},
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    EBPF_OBJECT, clock,
    cluster::{self, ClusterView},
    config::ClusterConfig,
    control::{self, Call, Request},
    fastpath::{self, FastPath, FastPathParams, FastSnapshot},
    journal::{self, EventKind, JournalHandle},
    keyfile, metrics,
    packages::task::PackagesView,
    plan::{LinkPlan, Plan},
    sender::{self, SenderConfig, SenderLink, Shared},
    sequence, serial,
    state::StateFile,
    status::Sources,
    transport::{self, LinkSocket, RxStats},
};

pub use crate::plan::expand_node;

/// Why the agent could not start, or stopped on a failure. Every variant
/// names what failed; the binary prints it as one line.
#[derive(Debug, Error)]
pub enum DaemonError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Key(#[from] crate::keyfile::KeyError),
    #[error(transparent)]
    Control(#[from] control::ControlError),
    #[error(transparent)]
    FastPath(#[from] fastpath::FastPathError),
    #[error(transparent)]
    Sender(#[from] sender::SenderError),
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    // (The underlying errors are part of the message, not `source`s: the
    // binary prints the chain, which would repeat them.)
    #[error("[metrics] listen = {listen}: {error}")]
    Metrics {
        listen: std::net::SocketAddr,
        error: std::io::Error,
    },
    #[error("removing the pins in {dir}: {error}")]
    Pins {
        dir: PathBuf,
        error: crate::pins::PinError,
    },
    #[error("announced restart: {0}")]
    Restart(String),
    #[error(
        "an agent is running for node {node} (its control socket {socket} answers): stop it first; `detach` is for the pins a killed or restarting agent left"
    )]
    AgentRunning { node: String, socket: PathBuf },
    #[error("the fast path task failed; XDP is detached")]
    FastPathTask,
    #[error("signal handling: {0}")]
    Signal(std::io::Error),
}

type Result<T, E = DaemonError> = std::result::Result<T, E>;

/// How often the liveness task checks in for the sender.
const LIVENESS_EVERY: Duration = Duration::from_millis(100);

/// Exit status of an agent that announced a restart and left its program
/// pinned (EX_TEMPFAIL): the systemd unit restarts on it.
pub const RESTART_EXIT_CODE: u8 = 75;

/// How the agent ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// Stopped: left the cluster, detached, pins removed.
    Stopped,
    /// Exited for an announced restart: the program stays attached and
    /// answering, pinned, until the window runs out or the next agent
    /// adopts it.
    Restarting,
}

/// Where the agent keeps its pins.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// The bpffs mount point (`--bpffs`, default /sys/fs/bpf).
    pub bpffs: PathBuf,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            bpffs: PathBuf::from(crate::pins::DEFAULT_BPFFS),
        }
    }
}

/// Why the supervisor's loop ended.
enum Stop {
    Signal(&'static str),
    Restart(&'static str),
}

/// Loads the fast path: adopts the pins in `dir` when an announced restart
/// left them and they fit, else removes them (detaching their links) and
/// loads afresh. Returns whether the pins were adopted.
fn load_fast_path(
    plan: &Plan,
    dir: &Path,
) -> Result<(FastPath, fastpath::StatusWriter, fastpath::EventRing, bool)> {
    let params = fastpath_params(plan);
    if dir.exists() {
        match fastpath::check_adoptable(dir, &params, &plan.interfaces, clock::mono_ns()) {
            Ok(w) => {
                tracing::info!(
                    pins = %dir.display(),
                    window_left_ms = w.until_ns.saturating_sub(clock::mono_ns()) / 1_000_000,
                    "adopting the XDP program and maps an announced restart left pinned"
                );
                match adopt(plan, &params, dir) {
                    Ok((fp, status, ring)) => return Ok((fp, status, ring, true)),
                    Err(e) => tracing::warn!(
                        error = %format!("{e:#}"),
                        "cannot adopt the pinned program; detaching it and starting afresh"
                    ),
                }
            }
            Err(why) => tracing::warn!(
                pins = %dir.display(),
                "found pins of an earlier agent that cannot be adopted ({why}); detaching them and starting afresh"
            ),
        }
        let removed = crate::pins::remove(dir, true).map_err(|error| DaemonError::Pins {
            dir: dir.to_owned(),
            error,
        })?;
        tracing::info!(
            detached = ?removed.detached,
            unpinned = removed.unpinned,
            "stale pins removed"
        );
    }
    let (mut fp, status, ring) = FastPath::load(EBPF_OBJECT, params, None)?;
    fence_addresses(&mut fp, plan)?;
    for iface in &plan.interfaces {
        let mode = fp.attach(iface)?;
        tracing::info!(interface = %iface, mode = mode.as_str(), "XDP attached");
    }
    Ok((fp, status, ring, false))
}

/// The kernel fence (issue #9) of a node that may run packages: every
/// address of its packages is fenced from the start, before the program is
/// attached (the packages task's `SetLeases` opens them; an adopted lease
/// keeps its expiry).
fn fence_addresses(fp: &mut FastPath, plan: &Plan) -> Result<()> {
    if plan.fenced() {
        fp.set_leases(crate::fence::initial_specs(plan))?;
    }
    Ok(())
}

/// Pins the links and maps of a node that may run packages, so that the
/// kernel fence outlives this process. On failure the pins are removed
/// (and their links detached) before the error goes up.
fn fence_and_pin(fp: &mut FastPath, plan: &Plan, bpffs: &Path, dir: &Path) -> Result<()> {
    debug_assert!(plan.fenced());
    let pinned = crate::pins::ensure_bpffs(bpffs)
        .map_err(|error| DaemonError::Pins {
            dir: dir.to_owned(),
            error,
        })
        .and_then(|()| fp.pin_fence(dir).map_err(DaemonError::from));
    match pinned {
        Ok(()) => {
            tracing::info!(
                pins = %dir.display(),
                "package addresses fenced in the kernel; programs and maps pinned (they outlive the agent until a stop or `heartbeat-agent detach`)"
            );
            Ok(())
        }
        Err(e) => {
            let _ = crate::pins::remove(dir, true);
            Err(e)
        }
    }
}

/// Loads the object against the pinned maps and takes over the pinned links.
fn adopt(
    plan: &Plan,
    params: &FastPathParams,
    dir: &Path,
) -> Result<(FastPath, fastpath::StatusWriter, fastpath::EventRing)> {
    let (mut fp, status, ring) = FastPath::load(EBPF_OBJECT, params.clone(), Some(dir))?;
    fence_addresses(&mut fp, plan)?;
    for iface in &plan.interfaces {
        let mode = fp.attach(iface)?;
        tracing::info!(interface = %iface, mode = mode.as_str(), "XDP adopted");
    }
    Ok((fp, status, ring))
}

/// The sender's links: each planned link with its socket.
fn sender_links(links: &[LinkPlan], sockets: &[LinkSocket]) -> Vec<SenderLink> {
    links
        .iter()
        .filter_map(|l| {
            let s = sockets.iter().find(|s| s.link_id == l.link_id.0)?;
            Some(SenderLink {
                link_id: l.link_id.0,
                interface: l.interface.clone(),
                local: l.local,
                peers: l.peers.iter().map(|&(n, a)| (n.0, a)).collect(),
                socket: s.socket.clone(),
            })
        })
        .collect()
}

fn fastpath_params(plan: &Plan) -> FastPathParams {
    let c = &plan.config.cluster;
    FastPathParams {
        cluster_id: c.id,
        local_node: plan.local.id.0,
        port: c.port,
        node_timeout_ns: c.node_timeout.as_nanos() as u64,
        agent_timeout_ns: c.agent_timeout.as_nanos() as u64,
        heartbeat_interval_ns: c.heartbeat_interval.as_nanos() as u64,
        keys: plan.keys.clone(),
        peers: plan
            .peers
            .iter()
            .map(|p| (p.id.0, p.link_bitmap()))
            .collect(),
    }
}

/// Reads and checks the configuration and key file of `node`.
fn load_plan(config_path: &Path, node: Option<&str>) -> Result<Plan> {
    let cfg = ClusterConfig::load(config_path)?;
    let local = cfg.local_node(node)?.clone();
    cfg.check_system(&local)?;
    let keys = keyfile::read(&cfg.cluster.key_file)?;
    Ok(Plan::new(cfg, &local, keys))
}

/// Runs the agent for `config_path` as node `node` (or the hostname).
pub async fn run(config_path: &Path, node: Option<&str>, opts: &RunOptions) -> Result<Exit> {
    let plan = Arc::new(load_plan(config_path, node)?);
    let c = plan.config.cluster.clone();
    // Paths and ports, checked without side effects (a reload skips this:
    // the agent holds them itself).
    plan.config.check_resources(&plan.local)?;

    // Everything that can fail without side effects, before XDP.
    let bound = control::bind(&plan.config.control.socket).await?;
    let metrics_listener = match &plan.config.metrics {
        Some(m) => Some(
            tokio::net::TcpListener::bind(m.listen)
                .await
                .map_err(|error| DaemonError::Metrics {
                    listen: m.listen,
                    error,
                })?,
        ),
        None => None,
    };
    let sockets = transport::open(&plan.links, c.port)?;
    // The serial line: a missing or busy device is an error naming its key
    // (a warning with `serial.required = false`: the task keeps trying).
    let serial_plan = serial::SerialPlan::from_plan(&plan);
    let serial_port = match &serial_plan {
        None => None,
        Some(sp) => match serial::open(&sp.settings) {
            Ok(p) => Some(p),
            Err(e) if sp.settings.required => {
                return Err(plan
                    .config
                    .serial_device_error(
                        &sp.settings,
                        format!("{e} (set serial.required = false to start without the line)"),
                    )
                    .into());
            }
            Err(e) => {
                tracing::warn!(key = %sp.settings.device_key, "serial: {e}; starting without the line (serial.required = false), retrying in the background");
                None
            }
        },
    };
    // The watchdog self-fence: opened (and fed while the agent starts)
    // before anything else happens; a start that fails disarms it unless an
    // earlier agent's pins say packages may run here.
    let mut watchdog = match plan.config.watchdog_device(&plan.local) {
        None => None,
        Some(device) => {
            let earlier = crate::pins::node_dir(&opts.bpffs, c.id, plan.local.id).exists();
            let timeout = plan
                .config
                .watchdog
                .as_ref()
                .map_or(crate::config::DEFAULT_WATCHDOG_TIMEOUT, |w| w.timeout);
            Some(
                crate::watchdog::Watchdog::start(
                    &device,
                    timeout,
                    crate::watchdog::wind_down(&plan.config),
                    !earlier,
                )
                .map_err(|e| plan.config.watchdog_device_error(e.to_string()))?,
            )
        }
    };
    let mut state = StateFile::open(&plan.settings.state_file)?;
    let incarnation = state.next_incarnation()?;

    let pin_dir = crate::pins::node_dir(&opts.bpffs, c.id, plan.local.id);
    if !plan.config.packages.is_empty() {
        // An earlier agent's fence may be detached below: its package
        // addresses go first (the stop before join runs the scripts).
        crate::packages::task::remove_all_addresses(&plan).await;
    }
    let (mut fp, status_writer, ring, adopted) = load_fast_path(&plan, &pin_dir)?;
    for iface in &plan.interfaces {
        if let Err(e) = fp.attach_egress_stamp(iface) {
            tracing::warn!(interface = %iface, error = %e, "cannot stamp own requests on egress; the local-stall check is off");
        }
    }

    // The heartbeats' generation is the incarnation: it changes at every
    // start and never goes back (persisted).
    let generation = incarnation;
    let link_ids: Vec<u8> = plan.links.iter().map(|l| l.link_id.0).collect();
    let shared = Arc::new(Shared::new(generation, &link_ids));
    let sender = sender::spawn(
        SenderConfig {
            cluster_id: c.id,
            local_node: plan.local.id.0,
            port: c.port,
            interval: c.heartbeat_interval,
            agent_timeout: c.agent_timeout,
            key: plan.keys.current,
            links: sender_links(&plan.links, &sockets),
            first_sequence: sequence::first_sequence(incarnation),
        },
        status_writer,
        shared.clone(),
    )?;
    // From here on the sender thread runs: stop it on every path out.
    let stop_sender = StopSender {
        shared: shared.clone(),
        thread: Some(sender.thread),
    };
    match fp.watch_agent(sender.tid) {
        Ok(()) => tracing::info!(
            "kernel watch on the agent attached (exit and stop close the gate at once)"
        ),
        Err(e) => tracing::warn!(
            error = %e,
            "cannot watch the agent from the kernel; a killed or stopped agent is seen only after agent_timeout"
        ),
    }
    fp.enable()?;
    shared
        .node_state
        .store(node_state::RUNNING, Ordering::Relaxed);
    if adopted {
        // The sender runs and the agent watch follows this process: the
        // gate can follow our stamp again.
        fp.finish_adoption()?;
        tracing::info!("restart window closed: this agent answers for the node");
    }
    if plan.fenced() {
        fence_and_pin(&mut fp, &plan, &opts.bpffs, &pin_dir)?;
    }

    // The tasks.
    let cancel = CancellationToken::new();
    let tracker = TaskTracker::new();
    let journal = journal::start(c.events_file.clone(), &tracker, cancel.clone());
    let (plan_tx, plan_rx) = watch::channel(plan.clone());
    let (fast_tx, fast_rx) = watch::channel(FastSnapshot::default());
    let (view_tx, view_rx) = watch::channel(ClusterView::default());
    let (events_tx, events_rx) = mpsc::channel(4096);
    let (fast_cmd_tx, fast_cmd_rx) = mpsc::channel(16);
    let (cluster_cmd_tx, cluster_cmd_rx) = mpsc::channel(16);
    let (dgram_tx, dgram_rx) = mpsc::channel(1024);
    let (serial_view_tx, serial_view_rx) = watch::channel(serial::SerialView::default());
    let (verdict_tx, verdict_rx) = watch::channel(heartbeat_cluster::survivor::Verdict::default());
    let (serial_out_tx, serial_out_rx) = mpsc::channel(64);
    let serial_handle = Arc::new(serial::SerialHandle::default());
    let serial_out = if let Some(sp) = serial_plan {
        tracker.spawn(serial::run(
            sp,
            incarnation,
            serial_port,
            serial::Channels {
                events: events_tx.clone(),
                membership_in: dgram_tx.clone(),
                membership_out: serial_out_rx,
                cluster: view_rx.clone(),
                shared: shared.clone(),
                handle: serial_handle.clone(),
                view: serial_view_tx,
                verdict: verdict_tx,
                plan: plan_rx.clone(),
            },
            cancel.clone(),
        ));
        Some(serial_out_tx)
    } else {
        None
    };
    let (calls_tx, mut calls_rx) = mpsc::channel::<Call>(16);
    let (pkg_msg_tx, pkg_msg_rx) = mpsc::channel(1024);
    let (pkg_calls_tx, pkg_calls_rx) = mpsc::channel::<Call>(16);
    // A clean stop hands the packages over before the leave (see the stop
    // below): the packages task answers once they are.
    let (drain_tx, drain_rx) = mpsc::channel::<tokio::sync::oneshot::Sender<()>>(1);
    let (pkg_status_tx, pkg_status_rx) = watch::channel(PackagesView::default());
    let has_packages = !plan.config.packages.is_empty();
    let sealer: cluster::SharedSealer = Arc::new(std::sync::Mutex::new(Sealer::new(
        c.id,
        plan.local.id,
        incarnation,
    )));
    // After an adoption the links the kernel holds up are queued first, so
    // that the cluster task starts from them.
    for ev in fp.adopted_up_events() {
        let _ = events_tx.try_send(ev);
    }
    let rx_stats = Arc::new(RxStats::default());
    let agreement = Arc::new(metrics::Histogram::agreement());
    let refused = Arc::new(AtomicU64::new(0));

    let attached = fp
        .attached()
        .iter()
        .map(|(i, m)| format!("{i}:{}", m.as_str()))
        .collect::<Vec<_>>()
        .join(",");
    let nic_poll = fp.take_nic_poll();
    // One lapse per lease generation at most (fence.rs): unbounded is
    // bounded by the packages' starts.
    let (lapse_tx, lapse_rx) = mpsc::unbounded_channel();
    let fast_task = tracker.spawn(fastpath::run(
        fp,
        ring,
        events_tx,
        fast_tx,
        fast_cmd_rx,
        lapse_tx,
        cancel.clone(),
    ));
    // Stop before join: the packages' stop actions run (and their
    // addresses go) before this node takes part in membership.
    let failed_at_start = if has_packages {
        crate::packages::task::stop_all(&plan, &journal).await
    } else {
        Default::default()
    };
    // Which card carries each configured interface now (the netif task
    // keeps it; package addresses go on the carrying card).
    let cards = Arc::new(crate::netif::Cards::default());
    if has_packages {
        tracker.spawn(crate::packages::task::run(
            plan.clone(),
            journal.clone(),
            crate::packages::task::Channels {
                view: view_rx.clone(),
                messages: pkg_msg_rx,
                calls: pkg_calls_rx,
                drain: drain_rx,
                fast: fast_cmd_tx.clone(),
                fast_snapshot: fast_rx.clone(),
                lapses: lapse_rx,
                cluster: cluster_cmd_tx.clone(),
                sealer: sealer.clone(),
                sockets: sockets.clone(),
                shared: shared.clone(),
                status: pkg_status_tx,
                cards: cards.clone(),
                serial: serial_out
                    .clone()
                    .map(|out| crate::packages::task::SerialLink {
                        verdict: verdict_rx.clone(),
                        out,
                        handle: serial_handle.clone(),
                    }),
            },
            failed_at_start,
            cancel.clone(),
        ));
    }
    // The cluster task announces a leave when cancelled; an announced
    // restart aborts it instead (see `Stop::Restart`).
    let cluster_task = tracker.spawn(cluster::run(
        plan.clone(),
        journal.clone(),
        cluster::Channels {
            events: events_rx,
            commands: cluster_cmd_rx,
            messages: dgram_rx,
            view: view_tx,
            sockets: sockets.clone(),
            fast: fast_rx.clone(),
            shared: shared.clone(),
            state,
            agreement: agreement.clone(),
            serial: serial_out,
            sealer,
            packages: has_packages.then_some(pkg_msg_tx),
        },
        cancel.clone(),
    ));
    tracker.spawn(transport::receive(
        sockets.clone(),
        dgram_tx,
        rx_stats.clone(),
        shared.clone(),
        cancel.clone(),
    ));
    // The network manager: standby cards and the interfaces' lifecycle.
    // `cards` tells which card carries each configured interface now (for
    // placing package addresses).
    let (nics_tx, nics_rx) = watch::channel(Vec::new());
    let (ifaces_tx, ifaces_rx) = watch::channel(Vec::new());
    tracker.spawn(crate::netif::run(
        crate::netif::Context {
            plan: plan.clone(),
            sockets: sockets.clone(),
            nic_poll,
            journal: journal.clone(),
            status: nics_tx,
            cards: cards.clone(),
            fast: fast_cmd_tx.clone(),
            interfaces: ifaces_tx,
            sender: Some(shared.clone()),
        },
        cancel.clone(),
    ));
    if let Some(w) = &mut watchdog {
        // This runs on the runtime: it is alive now.
        shared
            .main_alive_ns
            .store(clock::mono_ns(), Ordering::Relaxed);
        w.attach(crate::watchdog::Inputs {
            shared: shared.clone(),
            cluster: view_rx.clone(),
            packages: has_packages.then(|| pkg_status_rx.clone()),
            agent_timeout: c.agent_timeout,
        });
    }
    let sources = Sources {
        plan: plan_rx,
        fast: fast_rx,
        cluster: view_rx,
        sender: shared.clone(),
        journal: journal.stats().clone(),
        rx: rx_stats,
        refused: refused.clone(),
        agreement,
        started: Instant::now(),
        serial: serial_view_rx,
        serial_handle,
        packages: pkg_status_rx,
        nics: nics_rx,
        interfaces: ifaces_rx,
    };
    tracker.spawn(control::serve(
        bound,
        control::Context {
            sources: sources.clone(),
            journal: journal.clone(),
            calls: calls_tx,
            refused: refused.clone(),
        },
        cancel.clone(),
    ));
    if let (Some(listener), Some(m)) = (metrics_listener, &plan.config.metrics) {
        let mut registry = metrics::registry(sources.clone(), &plan.local.name);
        if let Some(w) = &watchdog {
            registry.register_collector(w.collector());
        }
        let registry = Arc::new(registry);
        tracing::info!(listen = %m.listen, "metrics at http://{}/metrics", m.listen);
        tracker.spawn(metrics::serve(
            listener,
            registry,
            refused.clone(),
            cancel.clone(),
        ));
    }
    tracker.spawn(liveness(shared.clone(), cancel.clone()));
    // Every thread of our own is spawned (they keep their own policies):
    // the runtime thread itself goes real-time, below the sender.
    match sender::set_thread_fifo(sender::RUNTIME_RT_PRIORITY) {
        Ok(()) => tracing::debug!(
            "runtime thread is SCHED_FIFO {}",
            sender::RUNTIME_RT_PRIORITY
        ),
        Err(e) => tracing::warn!(
            error = %e,
            "cannot run the agent's tasks real-time; membership rounds may be late under CPU load"
        ),
    }

    let mut start = journal::entry(
        EventKind::AgentStarted,
        &plan.local.name,
        "start",
        clock::mono_ns(),
    );
    start.detail = Some(if adopted {
        format!("xdp {attached} (adopted after an announced restart)")
    } else {
        format!("xdp {attached}")
    });
    journal.record(start);
    tracing::info!(
        node = %plan.local.name,
        cluster = %c.name,
        interval = ?c.heartbeat_interval,
        node_timeout = ?c.node_timeout,
        agent_timeout = ?c.agent_timeout,
        "heartbeat agent running"
    );

    let mut sup = Supervisor {
        config_path: config_path.to_owned(),
        node: node.map(str::to_owned),
        plan,
        plan_tx,
        journal: journal.clone(),
        fast: fast_cmd_tx,
        sender: sender.commands,
        cluster: cluster_cmd_tx.clone(),
        sockets,
    };
    let mut sigterm = signal(SignalKind::terminate()).map_err(DaemonError::Signal)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(DaemonError::Signal)?;
    let mut sighup = signal(SignalKind::hangup()).map_err(DaemonError::Signal)?;
    let mut sigusr2 = signal(SignalKind::user_defined2()).map_err(DaemonError::Signal)?;
    let stop = loop {
        tokio::select! {
            _ = sigterm.recv() => break Stop::Signal("SIGTERM"),
            _ = sigint.recv() => break Stop::Signal("SIGINT"),
            _ = sigusr2.recv() => break Stop::Restart("SIGUSR2"),
            _ = sighup.recv() => {
                tracing::info!("SIGHUP: reloading the configuration and reopening the journal");
                let _ = sup.reload("SIGHUP");
            }
            Some(call) = calls_rx.recv() => match call.request {
                Request::Reload {} => {
                    let r = sup.reload("control");
                    let _ = call.reply.send(r);
                }
                Request::Restart {} => {
                    let window = sup.plan.config.cluster.restart_window;
                    let _ = call.reply.send(Ok(format!(
                        "node {} restarting: the kernel keeps answering for up to {} while the next agent starts",
                        sup.plan.local.name,
                        humantime::format_duration(window)
                    )));
                    // Let the control task write the answer before it is
                    // cancelled (bounded: one short pause).
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    break Stop::Restart("control");
                }
                Request::PackageMove { .. }
                | Request::PackageStart { .. }
                | Request::PackageStop { .. }
                | Request::PackageEnable { .. }
                | Request::PackageDisable { .. }
                | Request::ClusterFreeze {}
                | Request::ClusterUnfreeze {} => {
                    if !has_packages {
                        let _ = call.reply.send(Err(
                            "no [[package]] is configured on this cluster".into(),
                        ));
                    } else if let Err(mpsc::error::SendError(call)) = pkg_calls_tx.send(call).await {
                        let _ = call.reply.send(Err("agent is shutting down".into()));
                    }
                }
                _ => {
                    if let Err(mpsc::error::SendError(cluster::Command::Control(call))) =
                        cluster_cmd_tx.send(cluster::Command::Control(call)).await
                    {
                        let _ = call.reply.send(Err("agent is shutting down".into()));
                    }
                }
            },
        }
    };

    let cause = match stop {
        Stop::Signal(cause) => cause,
        Stop::Restart(cause) => {
            // Fed while winding down; closed armed at the exit (see
            // `watchdog`): the next agent must feed it in time.
            if let Some(w) = &watchdog {
                w.stopping(crate::watchdog::wind_down(&sup.plan.config));
            }
            let plan = sup.plan.clone();
            let window = plan.config.cluster.restart_window;
            tracing::info!(
                cause,
                window = ?window,
                pins = %pin_dir.display(),
                "announced restart: leaving XDP attached and pinned"
            );
            let q = shared.node_state.load(Ordering::Relaxed) & node_state::QUORATE;
            shared
                .node_state
                .store(node_state::RESTARTING | q, Ordering::Relaxed);
            // No leave: peers keep this node as a member for the window.
            cluster_task.abort();
            let _ = cluster_task.await;
            let mut entry = journal::entry(
                EventKind::AgentStopping,
                &plan.local.name,
                "restart",
                clock::mono_ns(),
            );
            entry.detail = Some(format!(
                "announced restart ({cause}): window {}, XDP pinned in {}",
                humantime::format_duration(window),
                pin_dir.display()
            ));
            journal.record(entry);
            cancel.cancel();
            tracker.close();
            let fp = fast_task.await.ok();
            tracker.wait().await;
            let Some(mut fp) = fp else {
                drop(stop_sender);
                return Err(DaemonError::FastPathTask);
            };
            let until = clock::mono_ns().saturating_add(window.as_nanos() as u64);
            let pinned = crate::pins::ensure_bpffs(&opts.bpffs)
                .map_err(|e| e.to_string())
                .and_then(|()| fp.announce_restart(until).map_err(|e| e.to_string()))
                .and_then(|()| fp.pin_for_restart(&pin_dir).map_err(|e| e.to_string()));
            if let Err(e) = pinned {
                // Without pins the program cannot outlive us: stop as a
                // failure would, and leave nothing behind.
                let _ = fp.announce_restart(0);
                drop(stop_sender);
                drop(fp);
                let _ = crate::pins::remove(&pin_dir, true);
                return Err(DaemonError::Restart(format!(
                    "pinning the XDP program failed ({e}); XDP is detached"
                )));
            }
            // The sender's exit no longer closes the gate: the window is open.
            drop(stop_sender);
            drop(fp);
            tracing::info!("exiting for the restart; XDP stays attached");
            return Ok(Exit::Restarting);
        }
    };
    if let Some(w) = &watchdog {
        w.stopping(crate::watchdog::wind_down(&sup.plan.config));
    }
    // Packages first, as `cmhaltnode` does: each is stopped here and
    // placed elsewhere while this node is still a member, so its successor
    // starts on this node's "stopped" report instead of waiting out the
    // lease after the leave, and the service never runs (fenced) here
    // after it started there. Bounded by the longest stop plus a start's
    // hand-over; a second signal cuts it short.
    if has_packages {
        let bound = crate::packages::task::hand_over_bound(&sup.plan.config);
        tracing::info!(cause, bound = ?bound, "stopping: handing the packages over first");
        let began = Instant::now();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let drained = async {
            if drain_tx.send(tx).await.is_err() {
                return false;
            }
            tokio::time::timeout(bound, rx)
                .await
                .is_ok_and(|r| r.is_ok())
        };
        tokio::select! {
            done = drained => {
                if done {
                    tracing::info!(took = ?began.elapsed(), "packages handed over");
                } else {
                    tracing::warn!(took = ?began.elapsed(), "packages not all handed over in time: leaving; the lease rule covers the rest");
                }
            }
            _ = sigterm.recv() => tracing::warn!("second SIGTERM: leaving without waiting for the hand-over"),
            _ = sigint.recv() => tracing::warn!("SIGINT: leaving without waiting for the hand-over"),
        }
    }
    tracing::info!(cause, "stopping: detaching XDP");
    shared
        .node_state
        .store(node_state::HALTING, Ordering::Relaxed);
    journal.record(journal::entry(
        EventKind::AgentStopping,
        &sup.plan.local.name,
        cause,
        clock::mono_ns(),
    ));
    cancel.cancel();
    tracker.close();
    let fp = fast_task.await.ok();
    tracker.wait().await;
    drop(stop_sender);
    // XDP is detached last, when the fast path is dropped.
    drop(fp);
    if let Some(w) = watchdog.take() {
        w.close_clean();
    }
    // A full stop leaves no pins (an adoption cut short could).
    if pin_dir.exists()
        && let Err(e) = crate::pins::remove(&pin_dir, true)
    {
        tracing::warn!(error = %e, "cannot remove the pins in {}", pin_dir.display());
    }
    Ok(Exit::Stopped)
}

/// `heartbeat-agent detach`: detaches and removes the pins an announced
/// restart or a killed fenced node's agent left for `node` (the program
/// stops answering for it at once, and its package addresses are no
/// longer fenced). Refused while the node's agent runs.
pub fn detach(config_path: &Path, node: Option<&str>, opts: &RunOptions) -> Result<String> {
    let cfg = ClusterConfig::load(config_path)?;
    let local = cfg.local_node(node)?;
    let dir = crate::pins::node_dir(&opts.bpffs, cfg.cluster.id, local.id);
    // A running agent of a node that may run packages keeps its links
    // pinned (the kernel fence): detaching them would cut it off.
    let socket = cfg.local_paths(local).control_socket;
    if std::os::unix::net::UnixStream::connect(&socket).is_ok() {
        return Err(DaemonError::AgentRunning {
            node: local.name.clone(),
            socket,
        });
    }
    if !dir.exists() {
        return Ok(format!(
            "node {}: nothing pinned in {}",
            local.name,
            dir.display()
        ));
    }
    let removed = crate::pins::remove(&dir, true).map_err(|error| DaemonError::Pins {
        dir: dir.clone(),
        error,
    })?;
    Ok(format!(
        "node {}: detached XDP from [{}], removed {} pins in {}",
        local.name,
        removed.detached.join(", "),
        removed.unpinned,
        dir.display()
    ))
}

/// Stops and joins the sender thread when dropped (also on error paths).
struct StopSender {
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for StopSender {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Proves that the runtime still runs its tasks: if any task blocks the
/// runtime, this stops too, and the sender withholds the stamp.
async fn liveness(shared: Arc<Shared>, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(LIVENESS_EVERY);
    let mut stall = test_stall();
    let started = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = tick.tick() => shared.main_alive_ns.store(clock::mono_ns(), Ordering::Relaxed),
            () = cancel.cancelled() => break,
        }
        if let Some((after, hold)) = stall
            && started.elapsed() >= after
        {
            stall = None;
            tracing::warn!(?hold, "HEARTBEAT_TEST_STALL: blocking the runtime thread");
            // Deliberately blocking: this is the stuck runtime under test.
            std::thread::sleep(hold);
        }
    }
}

/// Debug builds only (tests of issue #12 row 4): `HEARTBEAT_TEST_STALL=A:B`
/// blocks the runtime thread for B ms once the agent has run A ms, as a
/// runtime stuck in a blocking call would be (the sender thread runs on).
fn test_stall() -> Option<(Duration, Duration)> {
    if !cfg!(debug_assertions) {
        return None;
    }
    let v = std::env::var("HEARTBEAT_TEST_STALL").ok()?;
    let (a, b) = v.split_once(':')?;
    Some((
        Duration::from_millis(a.trim().parse().ok()?),
        Duration::from_millis(b.trim().parse().ok()?),
    ))
}

/// What the supervisor needs to apply a reload.
struct Supervisor {
    config_path: PathBuf,
    node: Option<String>,
    plan: Arc<Plan>,
    plan_tx: watch::Sender<Arc<Plan>>,
    journal: JournalHandle,
    fast: mpsc::Sender<fastpath::Command>,
    sender: std::sync::mpsc::Sender<sender::Command>,
    cluster: mpsc::Sender<cluster::Command>,
    sockets: Vec<LinkSocket>,
}

impl Supervisor {
    /// Re-reads the configuration and key file and applies what can change
    /// live; refuses (naming the key) what cannot, keeping the running
    /// configuration. Always reopens the journal file.
    fn reload(&mut self, why: &str) -> Result<String, String> {
        self.journal.reopen();
        let name = self.plan.local.name.clone();
        let result = load_plan(&self.config_path, self.node.as_deref().or(Some(&name)))
            .map_err(|e| format!("{e:#}"))
            .and_then(|new| {
                crate::reload::check(&self.plan, &new)?;
                Ok(new)
            });
        let new = match result {
            Ok(n) => Arc::new(n),
            Err(e) => {
                tracing::error!(
                    "reload ({why}) refused: {e}; the running configuration stays in force"
                );
                let mut entry =
                    journal::entry(EventKind::ReloadRefused, &name, why, clock::mono_ns());
                entry.detail = Some(e.clone());
                self.journal.record(entry);
                return Err(format!(
                    "reload refused: {e}; the running configuration stays in force"
                ));
            }
        };
        let changes = crate::reload::changes(&self.plan, &new);
        let c = &new.config.cluster;
        let _ = self
            .fast
            .try_send(fastpath::Command::SetKeys(new.keys.clone()));
        let _ = self
            .fast
            .try_send(fastpath::Command::SetPeers(fastpath_params(&new).peers));
        let _ = self.fast.try_send(fastpath::Command::SetTimeouts {
            node_timeout_ns: c.node_timeout.as_nanos() as u64,
            agent_timeout_ns: c.agent_timeout.as_nanos() as u64,
        });
        let _ = self.sender.send(sender::Command::SetKey(new.keys.current));
        let _ = self.sender.send(sender::Command::SetLinks(sender_links(
            &new.links,
            &self.sockets,
        )));
        let _ = self
            .sender
            .send(sender::Command::SetInterval(c.heartbeat_interval));
        let _ = self
            .sender
            .send(sender::Command::SetAgentTimeout(c.agent_timeout));
        let _ = self
            .cluster
            .try_send(cluster::Command::Reconfigure(new.clone()));
        self.plan_tx.send_replace(new.clone());
        self.plan = new;
        let summary = if changes.is_empty() {
            "no change".to_owned()
        } else {
            changes.join("; ")
        };
        tracing::info!("reloaded ({why}): {summary}");
        let mut entry = journal::entry(EventKind::Reloaded, &name, why, clock::mono_ns());
        entry.detail = Some(summary.clone());
        self.journal.record(entry);
        Ok(format!("reloaded: {summary}"))
    }
}
