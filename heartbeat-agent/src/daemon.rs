//! The daemon: wires configuration, the XDP fast path, the sender thread,
//! membership, the journal, the control socket and metrics together, and
//! runs the main loop until SIGINT/SIGTERM.
//!
//! Data flows one way: kernel events and map reads come in, membership
//! decides, the journal/status/metrics report.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::Path,
    sync::{Arc, Mutex, atomic::Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use heartbeat_common::{counter, node_state};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
    sync::mpsc,
};

use crate::{
    EBPF_OBJECT, clock,
    config::{ClusterConfig, LinkRole, NodeConfig},
    control::{self, Call, Reply, Request},
    fastpath::{self, AttachMode, FastPath, FastPathParams},
    journal::{Entry, Journal},
    keyfile,
    membership::{Membership, State},
    metrics::{self, LinkRow, NodeRow, Snapshot},
    sender::{self, SenderConfig, SenderLink, Shared},
    status::{AgentStatus, DetectorStatus, LinkStatus, NodeStatus, StatusReport},
};

/// How often the main loop checks in and refreshes its snapshot.
const POLL: Duration = Duration::from_millis(100);

/// Heartbeat links of `local` shared with `peer`: (link id, local link, peer address).
fn shared_links<'a>(
    local: &'a NodeConfig,
    peer: &'a NodeConfig,
) -> impl Iterator<Item = (u8, &'a crate::config::LinkConfig, std::net::IpAddr)> + 'a {
    local
        .links
        .iter()
        .filter(|l| l.role == LinkRole::Heartbeat)
        .filter_map(move |l| {
            peer.links
                .iter()
                .find(|p| p.id == l.id && p.role == LinkRole::Heartbeat)
                .map(|p| (l.id, l, p.address))
        })
}

/// Replaces `{node}` in a configured path with the local node's name, so one
/// cluster file serves several nodes on one machine (tests, the demo).
pub fn expand_node(path: &Path, node: &str) -> std::path::PathBuf {
    match path.to_str() {
        Some(s) if s.contains("{node}") => s.replace("{node}", node).into(),
        _ => path.to_owned(),
    }
}

/// Runs the agent for `config_path` as node `node` (or the hostname).
pub async fn run(config_path: &Path, node: Option<&str>) -> Result<()> {
    let mut cfg = ClusterConfig::load(config_path)?;
    let local = cfg.local_node(node)?.clone();
    cfg.control.socket = expand_node(&cfg.control.socket, &local.name);
    cfg.cluster.events_file = cfg
        .cluster
        .events_file
        .as_deref()
        .map(|p| expand_node(p, &local.name));
    cfg.check_system(&local)?;
    let keys = keyfile::read(&cfg.cluster.key_file)?;
    let c = &cfg.cluster;

    let peers: Vec<&NodeConfig> = cfg.nodes.iter().filter(|n| n.id != local.id).collect();
    let mut peer_params = Vec::new();
    let mut member_peers = Vec::new();
    for p in &peers {
        let ids: Vec<u8> = shared_links(&local, p).map(|(id, _, _)| id).collect();
        let bitmap = ids.iter().fold(0u32, |b, &l| b | (1 << l));
        peer_params.push((p.id, bitmap));
        member_peers.push((p.id, p.name.clone(), ids));
    }
    let params = FastPathParams {
        cluster_id: c.id,
        local_node: local.id,
        port: c.port,
        node_timeout_ns: c.node_timeout.as_nanos() as u64,
        agent_timeout_ns: c.agent_timeout.as_nanos() as u64,
        heartbeat_interval_ns: c.heartbeat_interval.as_nanos() as u64,
        keys: keys.clone(),
        peers: peer_params,
    };
    let (mut fastpath, status_writer, ring) = FastPath::load(EBPF_OBJECT, params)?;

    let mut attached: Vec<(String, AttachMode)> = Vec::new();
    for l in local.links.iter().filter(|l| l.role == LinkRole::Heartbeat) {
        if attached.iter().any(|(i, _)| *i == l.interface) {
            continue;
        }
        let mode = fastpath.attach(&l.interface)?;
        if let Err(e) = fastpath.attach_egress_stamp(&l.interface) {
            tracing::warn!(error = %e, "local-stall check off");
        }
        tracing::info!(interface = %l.interface, mode = mode.as_str(), "XDP attached");
        attached.push((l.interface.clone(), mode));
    }

    let mut sender_links: Vec<SenderLink> = Vec::new();
    for l in local.links.iter().filter(|l| l.role == LinkRole::Heartbeat) {
        let mut dsts = Vec::new();
        for p in &peers {
            if let Some((_, _, addr)) = shared_links(&local, p).find(|(id, _, _)| *id == l.id) {
                dsts.push((p.id, SocketAddr::new(addr, c.port)));
            }
        }
        sender_links.push(SenderLink {
            link_id: l.id,
            interface: l.interface.clone(),
            local: l.address,
            peers: dsts,
        });
    }
    let generation = clock::unix_secs() as u32;
    let link_ids: Vec<u8> = sender_links.iter().map(|l| l.link_id).collect();
    let shared = Arc::new(Shared::new(generation, &link_ids));
    let sender_cfg = SenderConfig {
        cluster_id: c.id,
        local_node: local.id,
        port: c.port,
        interval: c.heartbeat_interval,
        agent_timeout: c.agent_timeout,
        key: keys.current,
        links: sender_links,
    };
    let (sender_thread, tid) = sender::spawn(sender_cfg, status_writer, shared.clone())?;
    match fastpath.watch_agent(tid) {
        Ok(()) => tracing::info!(
            "kernel watch on the agent attached (exit and stop close the gate at once)"
        ),
        Err(e) => tracing::warn!(
            error = %e,
            "cannot watch the agent from the kernel; a killed or stopped agent is seen only after agent_timeout"
        ),
    }
    fastpath.enable()?;
    shared
        .node_state
        .store(node_state::RUNNING, Ordering::Relaxed);

    let mut journal = Journal::open(c.events_file.as_deref())
        .with_context(|| format!("events_file {:?}", c.events_file))?;
    let mut membership = Membership::new(&local.name, &member_peers);

    let (calls_tx, mut calls_rx) = mpsc::channel::<Call>(16);
    let listener = control::bind(&cfg.control.socket).await?;
    let control_task = tokio::spawn(control::serve(listener, calls_tx));

    let snapshot = Arc::new(Mutex::new(Snapshot::default()));
    let metrics_task = match &cfg.metrics {
        Some(m) => {
            let listener = tokio::net::TcpListener::bind(m.listen)
                .await
                .with_context(|| format!("[metrics] listen = {}", m.listen))?;
            let registry = Arc::new(metrics::registry(
                snapshot.clone(),
                shared.clone(),
                &local.name,
            ));
            tracing::info!(listen = %m.listen, "metrics at http://{}/metrics", m.listen);
            Some(tokio::spawn(metrics::serve(listener, registry)))
        }
        None => None,
    };

    let mut start = Entry::new("agent_started", &local.name, "start", clock::mono_ns());
    start.cause = format!(
        "xdp {}",
        attached
            .iter()
            .map(|(i, m)| format!("{i}:{}", m.as_str()))
            .collect::<Vec<_>>()
            .join(",")
    );
    journal.record(&start);
    tracing::info!(
        node = %local.name,
        cluster = %c.name,
        interval = ?c.heartbeat_interval,
        node_timeout = ?c.node_timeout,
        agent_timeout = ?c.agent_timeout,
        "heartbeat agent running"
    );

    // SAFETY: the RingBuf owns its map fd and is neither closed nor replaced
    // while the AsyncFd holds it.
    let mut ring = unsafe { AsyncFd::register(ring.ring) }.context("event ring buffer")?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut tick = tokio::time::interval(POLL);
    let started = Instant::now();
    let mut event_counts: BTreeMap<String, u64> = BTreeMap::new();
    let ctx = Ctx {
        cfg: &cfg,
        local: &local,
        attached: &attached,
        shared: &shared,
        started,
    };

    let cause = loop {
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard.context("event ring buffer")?;
                while let Some(ev) = fastpath::next_event(guard.get_inner_mut()) {
                    for e in membership.apply(&ev) {
                        *event_counts.entry(e.event.clone()).or_default() += 1;
                        journal.record(&e);
                    }
                }
                guard.clear_ready();
            }
            Some(call) = calls_rx.recv() => {
                let reply = match call.request {
                    Request::Status => Reply::Status(Box::new(ctx.report(&fastpath, &membership))),
                    Request::Events { follow } => Reply::Events {
                        history: journal.history().cloned().collect(),
                        follow: follow.then(|| journal.subscribe()),
                    },
                };
                let _ = call.reply.send(reply);
            }
            _ = tick.tick() => {
                shared.main_alive_ns.store(clock::mono_ns(), Ordering::Relaxed);
                let snap = ctx.snapshot(&fastpath, &membership, &event_counts);
                if let Ok(mut s) = snapshot.lock() {
                    *s = snap;
                }
            }
            _ = sigterm.recv() => break "SIGTERM",
            _ = sigint.recv() => break "SIGINT",
        }
    };

    tracing::info!(cause, "stopping: detaching XDP");
    shared
        .node_state
        .store(node_state::HALTING, Ordering::Relaxed);
    journal.record(&Entry::new(
        "agent_stopping",
        &local.name,
        cause,
        clock::mono_ns(),
    ));
    shared.stop.store(true, Ordering::Relaxed);
    control_task.abort();
    if let Some(t) = metrics_task {
        t.abort();
    }
    let _ = sender_thread.join();
    drop(fastpath);
    let _ = std::fs::remove_file(&cfg.control.socket);
    Ok(())
}

struct Ctx<'a> {
    cfg: &'a ClusterConfig,
    local: &'a NodeConfig,
    attached: &'a [(String, AttachMode)],
    shared: &'a Shared,
    started: Instant,
}

fn us(ns: u64) -> f64 {
    ns as f64 / 1000.0
}

impl Ctx<'_> {
    fn snapshot(&self, fp: &FastPath, m: &Membership, events: &BTreeMap<String, u64>) -> Snapshot {
        let mut links = Vec::new();
        let mut nodes = Vec::new();
        for p in m.peers() {
            let mut state_byte = 0;
            let mut generation = 0;
            for (&l, view) in &p.links {
                let st = fp.link_state(p.id, l).unwrap_or_default();
                state_byte = st.peer_state.max(state_byte);
                generation = generation.max(st.peer_generation);
                let stats = self
                    .shared
                    .links
                    .iter()
                    .find(|(id, _)| *id == l)
                    .map(|(_, s)| s);
                links.push(LinkRow {
                    peer: p.name.clone(),
                    link: l,
                    up: view.state == State::Up,
                    state: st,
                    sent: stats.map(|s| s.sent.load(Ordering::Relaxed)).unwrap_or(0),
                    send_errors: stats.map(|s| s.errors.load(Ordering::Relaxed)).unwrap_or(0),
                });
            }
            nodes.push(NodeRow {
                name: p.name.clone(),
                up: p.state == State::Up,
                agent_state: state_byte,
                generation,
            });
        }
        Snapshot {
            links,
            nodes,
            counters: metrics::counter_rows(&fp.counters()),
            events: events.iter().map(|(k, v)| (k.clone(), *v)).collect(),
            uptime_s: self.started.elapsed().as_secs_f64(),
        }
    }

    fn report(&self, fp: &FastPath, m: &Membership) -> StatusReport {
        let c = &self.cfg.cluster;
        let now = clock::mono_ns();
        let mut nodes = Vec::new();
        for n in &self.cfg.nodes {
            if n.id == self.local.id {
                nodes.push(NodeStatus {
                    id: n.id,
                    name: n.name.clone(),
                    local: true,
                    state: "up".into(),
                    since_s: Some(self.started.elapsed().as_secs_f64()),
                    peer_generation: Some(self.shared.generation),
                    links: Vec::new(),
                });
                continue;
            }
            let Some(p) = m.peer(n.id) else { continue };
            let mut links = Vec::new();
            let mut generation = None;
            for l in &n.links {
                // Only the networks this node shares with the peer.
                let Some(view) = p.links.get(&l.id) else {
                    continue;
                };
                let st = fp.link_state(n.id, l.id).unwrap_or_default();
                if st.peer_generation != 0 {
                    generation = Some(st.peer_generation);
                }
                let local_if = self
                    .local
                    .links
                    .iter()
                    .find(|x| x.id == l.id)
                    .map(|x| x.interface.clone())
                    .unwrap_or_else(|| "-".into());
                let have_rtt = st.rtt_count > 0;
                links.push(LinkStatus {
                    id: l.id,
                    interface: local_if,
                    address: l.address.to_string(),
                    role: match l.role {
                        LinkRole::Heartbeat => "heartbeat".into(),
                        LinkRole::Stationary => "stationary".into(),
                    },
                    state: view.state.as_str().into(),
                    rtt_last_us: have_rtt.then(|| us(st.rtt_last_ns)),
                    rtt_avg_us: have_rtt.then(|| us(st.rtt_ewma_ns)),
                    rtt_min_us: have_rtt.then(|| us(st.rtt_min_ns)),
                    rtt_max_us: have_rtt.then(|| us(st.rtt_max_ns)),
                    last_seen_ago_ms: (st.last_rx_ns != 0)
                        .then(|| now.saturating_sub(st.last_rx_ns) as f64 / 1e6),
                    requests_rx: st.requests_rx,
                    replies_rx: st.replies_rx,
                    replies_tx: st.replies_tx,
                    down_events: st.down_events,
                    max_gap_ms: (st.gap_max_ns != 0).then(|| st.gap_max_ns as f64 / 1e6),
                    max_gap_at_mono_ns: st.gap_max_at_ns,
                    gap_hist: st.gap_hist.to_vec(),
                    detector: Some(DetectorStatus::from_link_state(&st, now)),
                });
            }
            nodes.push(NodeStatus {
                id: n.id,
                name: n.name.clone(),
                local: false,
                state: p.state.as_str().into(),
                since_s: (p.since_mono_ns != 0)
                    .then(|| now.saturating_sub(p.since_mono_ns) as f64 / 1e9),
                peer_generation: generation,
                links,
            });
        }
        let values = fp.counters();
        let xdp_counters = counter::ALL
            .iter()
            .map(|&(i, a, r)| (format!("{a}_{r}"), values[i as usize]))
            .collect();
        let s = self.shared;
        StatusReport {
            cluster: c.name.clone(),
            cluster_id: c.id,
            local_node: self.local.name.clone(),
            agent: AgentStatus {
                pid: std::process::id(),
                version: env!("CARGO_PKG_VERSION").into(),
                generation: s.generation,
                uptime_s: self.started.elapsed().as_secs_f64(),
                realtime_sender: s.realtime.load(Ordering::Relaxed) == 1,
                heartbeat_interval_us: c.heartbeat_interval.as_micros() as u64,
                node_timeout_us: c.node_timeout.as_micros() as u64,
                agent_timeout_us: c.agent_timeout.as_micros() as u64,
                xdp: self
                    .attached
                    .iter()
                    .map(|(i, m)| (i.clone(), m.as_str().to_owned()))
                    .collect(),
                sender_max_lateness_us: us(s.lateness_max_ns.load(Ordering::Relaxed)),
                sender_missed_deadlines: s.missed.load(Ordering::Relaxed),
            },
            nodes,
            xdp_counters,
        }
    }
}
