//! The serial subsystem (issue #11): the RS-232 null-modem line between
//! the two nodes of a two-node cluster, a transport like the network links.
//!
//! One task owns the port. Every `serial.interval` it sends a heartbeat
//! frame ([`heartbeat_cluster::serial`]: COBS, CRC-32, SipHash MAC) that
//! carries this node's epoch, node state, package ownership and network
//! view; it reads the peer's frames and turns them into the same
//! [`TransportEvent::Link`] events the XDP links produce, on the dedicated
//! link id [`SERIAL_LINK`] (shown as link `serial` in status, metrics and
//! the journal). A valid frame brings the link up; `serial.timeout`
//! without one takes it down.
//!
//! Membership over the line: the cluster task hands every sealed
//! membership datagram it sends to the peer to this task too (the
//! `membership_out` channel); it goes on the line as a membership frame,
//! and a membership frame read from the line goes to the cluster task as a
//! [`Datagram`] on link [`SERIAL_LINK`], through the same decoder and
//! replay guard as one from the network. So with every network link cut
//! and the cable alive, both nodes still hear each other and keep one
//! view: no failover on silence alone.
//!
//! The survivor decision for the packages side: the task publishes a
//! [`SerialView`] in a watch channel (`daemon` hands its receiver to
//! `status::Sources::serial`). Its `verdict`
//! ([`heartbeat_cluster::survivor::Verdict`]) is `Split { survivor }` while
//! every network link to the peer is down and the line is up: the
//! survivor (better network view, then priority, then id; both nodes
//! compute it from the same frames) keeps or takes the packages, the other
//! stops them, then sets [`SerialHandle::stopped`] so that its frames
//! confirm the stop (flag [`flags::STOPPED`], seen by the survivor as
//! `peer.status.flags`). The packages side reports what runs on this node
//! in [`SerialHandle::packages`] (bit `i` = package `i`); it travels in
//! every frame. Right after the agent starts the network links to the peer
//! are not up yet while the line may already be: no split is declared
//! before a network link to the peer was seen up or
//! [`SerialPlan::startup_grace`] (twice `node_timeout`) has passed, so
//! that the first placement is not made as if the network were cut.
//!
//! With `serial.fec = true` every frame is protected by forward error
//! correction ([`heartbeat_cluster::serial::fec`]): heartbeats get through
//! a 10 % byte error rate, at half as many bytes again (a heartbeat takes
//! 82 % of a 115200 baud line at the 10 ms default: membership frames then
//! get what is left of 95 % of the line; a 20 ms interval leaves them
//! their usual 40 %).
//!
//! The device: opened raw, 8N1, no flow control, exclusive, through
//! `tokio-serial`. Missing or busy at start is a configuration error
//! naming `node[i].serial.device` (a warning with `serial.required =
//! false`; the task then keeps trying). A device that disappears later (a
//! USB adapter pulled, a pty closed) is reported and reopened with backoff
//! without restarting the agent.

use std::{
    net::{Ipv4Addr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use heartbeat_api::status::LinkState;
use heartbeat_cluster::{
    LinkId, NodeId, NodeSet,
    serial::{Counts, Decoder, Encoder, Kind, NetworkView, Status, flags},
    survivor::{Candidate, Verdict},
    wire::Keys,
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    sync::{mpsc, watch},
};
use tokio_serial::{DataBits, FlowControl, Parity, SerialStream, StopBits};
use tokio_util::sync::CancellationToken;

use crate::{
    clock,
    cluster::{ClusterView, LinkChange, TransportEvent},
    config::SerialSettings,
    plan::Plan,
    sender::Shared,
    transport::Datagram,
};

/// The link id of the serial line: above every network link id
/// (`config::MAX_LINK_ID`), so it never collides with one.
pub const SERIAL_LINK: u8 = u8::MAX;
const _: () = assert!(SERIAL_LINK > crate::config::MAX_LINK_ID);

/// How a link is named in metrics and the journal: its id, or `serial`.
pub fn link_label(link: u8) -> String {
    if link == SERIAL_LINK {
        "serial".to_owned()
    } else {
        link.to_string()
    }
}

/// First and largest pause between attempts to reopen a lost device.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// How often the interfaces' state (the network view) is read.
const VIEW_EVERY_NS: u64 = 100_000_000;
/// Largest read from the port at once.
const READ_CHUNK: usize = 1024;
/// Share of the line's bytes membership frames may take (the rest is for
/// the heartbeat frames, about half the line at 10 ms and 115200 baud).
const MEMBERSHIP_SHARE: f64 = 0.4;
/// Membership bytes that may go out at once (a few joins in a burst).
const MEMBERSHIP_BURST: f64 = 1024.0;

/// A token bucket of line bytes for membership frames: a membership round
/// at a fast heartbeat interval (joins every millisecond) must not starve
/// the heartbeat frames of a 115200 baud line. Frames over the budget are
/// dropped and counted; membership resends what matters.
#[derive(Clone, Debug)]
struct Budget {
    bytes_per_ns: f64,
    tokens: f64,
    at_ns: u64,
}

impl Budget {
    fn new(baud: u32) -> Self {
        Self::with_share(baud, MEMBERSHIP_SHARE)
    }

    /// The line's share for membership frames when heartbeats are
    /// protected ([`heartbeat_cluster::serial::fec`]: half as long again):
    /// what the heartbeats leave of 95 % of the line, between 5 % and
    /// [`MEMBERSHIP_SHARE`].
    fn fec_share(baud: u32, interval: Duration) -> f64 {
        let line = f64::from(baud) / 10.0;
        let heartbeats =
            heartbeat_cluster::serial::heartbeat_line_len(true) as f64 / interval.as_secs_f64();
        (0.95 - heartbeats / line).clamp(0.05, MEMBERSHIP_SHARE)
    }

    fn with_share(baud: u32, share: f64) -> Self {
        Self {
            bytes_per_ns: f64::from(baud) / 10.0 * share / 1e9,
            tokens: MEMBERSHIP_BURST,
            at_ns: 0,
        }
    }

    /// Takes `n` bytes at `now_ns` if the budget has them.
    fn take(&mut self, n: usize, now_ns: u64) -> bool {
        let dt = now_ns.saturating_sub(self.at_ns) as f64;
        self.tokens = (self.tokens + dt * self.bytes_per_ns).min(MEMBERSHIP_BURST);
        self.at_ns = now_ns;
        if self.tokens >= n as f64 {
            self.tokens -= n as f64;
            true
        } else {
            false
        }
    }
}

/// The serial line of the local node, from the plan.
#[derive(Clone, Debug)]
pub struct SerialPlan {
    pub settings: SerialSettings,
    pub cluster_id: u32,
    pub local: NodeId,
    pub local_priority: u32,
    pub peer: NodeId,
    pub peer_name: String,
    pub peer_priority: u32,
    pub keys: Keys,
    /// The local network links (id, interface): the network view.
    pub links: Vec<(LinkId, String)>,
    /// After the start, how long network links never seen up yet are not
    /// taken for cut (twice `node_timeout`).
    pub startup_grace: Duration,
}

impl SerialPlan {
    /// The line of `plan`'s local node, when one is configured (two-node
    /// clusters only: the peer is the other node).
    pub fn from_plan(plan: &Plan) -> Option<Self> {
        let settings = plan.config.serial_of(&plan.local)?;
        let peer = plan.peers.first()?;
        Some(Self {
            settings,
            cluster_id: plan.config.cluster.id,
            local: plan.local.id,
            local_priority: plan.local.priority,
            peer: peer.id,
            peer_name: peer.name.clone(),
            peer_priority: peer.priority,
            keys: crate::qserver::wire_keys(&plan.keys),
            links: plan
                .links
                .iter()
                .map(|l| (l.link_id, l.interface.clone()))
                .collect(),
            startup_grace: plan.config.cluster.node_timeout.saturating_mul(2),
        })
    }
}

/// The peer on the serial line of `plan`, when there is one (for the
/// cluster task's reachability: that peer gets link [`SERIAL_LINK`]).
pub fn peer_of(plan: &Plan) -> Option<NodeId> {
    plan.config.serial_of(&plan.local)?;
    plan.peers.first().map(|p| p.id)
}

/// What the packages side tells the line (see the module doc).
#[derive(Debug, Default)]
pub struct SerialHandle {
    /// Bit `i`: package `i` runs on this node.
    pub packages: AtomicU64,
    /// This node has stopped its packages after losing the survivor rule.
    pub stopped: AtomicBool,
}

/// The peer as its last frame described it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerFrame {
    pub incarnation: u32,
    pub seq: u64,
    pub status: Status,
    /// CLOCK_MONOTONIC ns when it was read.
    pub at_ns: u64,
}

/// What the serial task publishes (status, metrics, the packages side).
#[derive(Clone, Debug, Default)]
pub struct SerialView {
    /// Whether a line is configured at all.
    pub configured: bool,
    pub device: String,
    pub peer: String,
    /// The device is open now.
    pub open: bool,
    /// The peer's frames arrive within `timeout`.
    pub state: LinkState,
    /// CLOCK_MONOTONIC ns of the last valid frame (0: never).
    pub last_rx_ns: u64,
    pub frames_sent: u64,
    /// Frames not written (write error or the line blocked past an interval).
    pub send_errors: u64,
    /// Membership datagrams sent and received over the line.
    pub membership_sent: u64,
    pub membership_received: u64,
    /// Membership datagrams not carried (queue full, or over the line's
    /// byte budget for membership).
    pub membership_dropped: u64,
    /// Times the device was opened, and lost (read error or end of file).
    pub opens: u64,
    pub losses: u64,
    pub down_events: u64,
    /// The reader's counters: frames accepted, skipped by reason.
    pub decoder: Counts,
    /// The peer's last frame.
    pub peer_frame: Option<PeerFrame>,
    /// This node's network view, as sent.
    pub local_view: NetworkView,
    /// The survivor rule's verdict now.
    pub verdict: Verdict,
}

/// The serial task's channels.
pub struct Channels {
    /// Link events, to the cluster task (the same channel as the fast path's).
    pub events: mpsc::Sender<TransportEvent>,
    /// Membership datagrams read from the line, to the cluster task.
    pub membership_in: mpsc::Sender<Datagram>,
    /// Sealed membership datagrams to send on the line, from the cluster task.
    pub membership_out: mpsc::Receiver<Vec<u8>>,
    /// The cluster's view: network link states and the epoch.
    pub cluster: watch::Receiver<ClusterView>,
    /// The node state byte.
    pub shared: Arc<Shared>,
    pub handle: Arc<SerialHandle>,
    pub view: watch::Sender<SerialView>,
    /// The survivor verdict alone, sent only when it changes (the
    /// packages task).
    pub verdict: watch::Sender<Verdict>,
    /// The running plan: a reload's new keys (the line's own settings
    /// cannot change live: `reload::check` refuses it).
    pub plan: watch::Receiver<Arc<Plan>>,
}

/// Opens `s.device` raw: 8N1, no flow control, exclusive.
pub fn open(s: &SerialSettings) -> Result<SerialStream, String> {
    let builder = tokio_serial::new(s.device.to_string_lossy(), s.baud)
        .data_bits(DataBits::Eight)
        .parity(Parity::None)
        .stop_bits(StopBits::One)
        .flow_control(FlowControl::None)
        .timeout(Duration::ZERO);
    let mut port = SerialStream::open(&builder).map_err(|e| {
        let busy = matches!(
            e.kind,
            tokio_serial::ErrorKind::Io(std::io::ErrorKind::WouldBlock)
        ) || e.description.contains("busy")
            || e.description.contains("Resource temporarily unavailable");
        if busy {
            format!(
                "cannot open {}: busy (opened exclusively by another program): {e}",
                s.device.display()
            )
        } else {
            format!("cannot open {}: {e}", s.device.display())
        }
    })?;
    port.set_exclusive(true)
        .map_err(|e| format!("cannot lock {} for exclusive use: {e}", s.device.display()))?;
    Ok(port)
}

/// The line's state machine (everything but the port).
struct Line {
    plan: SerialPlan,
    encoder: Encoder,
    decoder: Decoder,
    ch: Channels,
    view: SerialView,
    net_view: NetworkView,
    net_view_at: u64,
    budget: Budget,
    /// When the task started, and whether a network link to the peer was
    /// up since (the start-up grace of the verdict).
    started_ns: u64,
    network_seen: bool,
}

impl Line {
    fn now() -> u64 {
        clock::mono_ns()
    }

    /// This node's network view: its network links whose interface is up.
    fn network_view(&mut self) -> NetworkView {
        let now = Self::now();
        if self.net_view_at == 0 || now.saturating_sub(self.net_view_at) >= VIEW_EVERY_NS {
            let mut links = 0u8;
            for (id, iface) in &self.plan.links {
                let path = format!("/sys/class/net/{iface}/operstate");
                let up = std::fs::read_to_string(path)
                    .map(|s| matches!(s.trim(), "up" | "unknown"))
                    .unwrap_or(false);
                if up && id.0 < 8 {
                    links |= 1 << id.0;
                }
            }
            // Ping targets are not configurable yet: `targets` stays 0.
            self.net_view = NetworkView { links, targets: 0 };
            self.net_view_at = now;
        }
        self.net_view
    }

    fn status(&mut self) -> Status {
        let epoch = heartbeat_cluster::Epoch(self.ch.cluster.borrow().membership.epoch);
        let stopped = self.ch.handle.stopped.load(Ordering::Relaxed);
        Status {
            epoch,
            node_state: self.ch.shared.node_state.load(Ordering::Relaxed),
            flags: if stopped { flags::STOPPED } else { 0 },
            packages: self.ch.handle.packages.load(Ordering::Relaxed),
            view: self.network_view(),
        }
    }

    fn event(&mut self, change: LinkChange, at_ns: u64) {
        let ev = TransportEvent::Link {
            peer: self.plan.peer.0,
            link: SERIAL_LINK,
            change,
            at_ns,
            last_rx_ns: self.view.last_rx_ns,
        };
        // The cluster task drains this channel; a full queue means it is
        // far behind, and the next frame or timeout repeats the state.
        if self.ch.events.try_send(ev).is_err() {
            tracing::warn!("serial: link event dropped (cluster task behind)");
        }
    }

    /// Takes a reload's keys.
    fn refresh(&mut self) {
        if self.ch.plan.has_changed().unwrap_or(false) {
            let keys = crate::qserver::wire_keys(&self.ch.plan.borrow_and_update().keys);
            self.plan.keys = keys;
            self.decoder.set_keys(keys);
        }
    }

    /// Takes the line down after `timeout` of silence.
    fn check_timeout(&mut self) {
        self.refresh();
        let now = Self::now();
        let timeout = self.plan.settings.timeout.as_nanos() as u64;
        let silent = now.saturating_sub(self.view.last_rx_ns) > timeout;
        if self.view.state == LinkState::Up && silent {
            self.view.state = LinkState::Down;
            self.view.down_events += 1;
            self.event(LinkChange::Down, now);
        }
    }

    fn on_bytes(&mut self, bytes: &[u8]) {
        let mut frames = Vec::new();
        self.decoder.push(bytes, &mut frames);
        let now = Self::now();
        for f in frames {
            self.view.last_rx_ns = now;
            self.view.peer_frame = Some(PeerFrame {
                incarnation: f.incarnation,
                seq: f.seq,
                status: f.status,
                at_ns: now,
            });
            if self.view.state != LinkState::Up {
                self.view.state = LinkState::Up;
                self.event(LinkChange::Up, now);
            }
            if f.kind == Kind::Membership {
                let d = Datagram {
                    link: SERIAL_LINK,
                    from: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
                    bytes: f.payload,
                    at_ns: now,
                };
                if self.ch.membership_in.try_send(d).is_ok() {
                    self.view.membership_received += 1;
                } else {
                    self.view.membership_dropped += 1;
                }
            }
        }
        self.view.decoder = *self.decoder.counts();
    }

    /// The survivor rule on what this node knows now.
    fn verdict(&mut self) -> Verdict {
        let network_up = {
            let cv = self.ch.cluster.borrow();
            cv.peers
                .iter()
                .filter(|p| p.id == self.plan.peer.0)
                .flat_map(|p| p.links.iter())
                .any(|(&l, &s)| l != SERIAL_LINK && s == LinkState::Up)
        };
        self.network_seen |= network_up;
        let grace = self.plan.startup_grace.as_nanos() as u64;
        let known = self.network_seen || Self::now().saturating_sub(self.started_ns) >= grace;
        let local = Candidate {
            node: self.plan.local,
            priority: self.plan.local_priority,
            view: self.net_view,
        };
        let peer = self.view.peer_frame.map(|f| Candidate {
            node: self.plan.peer,
            priority: self.plan.peer_priority,
            view: f.status.view,
        });
        heartbeat_cluster::survivor::verdict(
            network_up || !known,
            self.view.state == LinkState::Up,
            &local,
            peer.as_ref(),
        )
    }

    fn publish(&mut self) {
        let v = self.verdict();
        // (Nothing to say before the peer was ever heard on the line.)
        if v != self.view.verdict && self.view.peer_frame.is_some() {
            match v {
                Verdict::Split { survivor } => tracing::warn!(
                    peer = %self.plan.peer_name,
                    survivor = survivor.0,
                    local_survives = survivor == self.plan.local,
                    "serial: every network link to the peer is down, the serial line is up; survivor agreed"
                ),
                Verdict::PeerSilent => tracing::warn!(
                    peer = %self.plan.peer_name,
                    "serial: every network link and the serial line are silent; the quorum rules apply"
                ),
                Verdict::NotNeeded => tracing::info!(
                    peer = %self.plan.peer_name,
                    "serial: a network link to the peer is up again"
                ),
            }
        }
        self.view.verdict = v;
        self.ch.verdict.send_if_modified(|old| {
            let changed = *old != v;
            *old = v;
            changed
        });
        self.view.local_view = self.net_view;
        let snapshot = self.view.clone();
        self.ch.view.send_replace(snapshot);
    }

    /// Writes one frame; a line that does not take it within one interval
    /// (a pty nobody reads) loses it, counted.
    async fn write(&mut self, port: &mut tokio::io::WriteHalf<SerialStream>, frame: &[u8]) -> bool {
        let limit = self.plan.settings.interval.max(Duration::from_millis(5));
        match tokio::time::timeout(limit, port.write_all(frame)).await {
            Ok(Ok(())) => {
                self.view.frames_sent += 1;
                true
            }
            Ok(Err(_)) | Err(_) => {
                self.view.send_errors += 1;
                false
            }
        }
    }

    /// Serves an open port until it fails (the reason) or `cancel`.
    async fn serve(&mut self, port: SerialStream, cancel: &CancellationToken) -> Option<String> {
        let (mut rd, mut wr) = tokio::io::split(port);
        let mut tick = tokio::time::interval(self.plan.settings.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut buf = vec![0u8; READ_CHUNK];
        loop {
            tokio::select! {
                () = cancel.cancelled() => return None,
                _ = tick.tick() => {
                    self.check_timeout();
                    let st = self.status();
                    let key = self.plan.keys.current;
                    if let Some(f) = self.encoder.encode(Kind::Heartbeat, &st, &[], key) {
                        self.write(&mut wr, &f).await;
                    }
                    self.publish();
                }
                Some(d) = self.ch.membership_out.recv() => {
                    let st = self.status();
                    let key = self.plan.keys.current;
                    let Some(f) = self.encoder.encode(Kind::Membership, &st, &d, key) else {
                        continue;
                    };
                    if !self.budget.take(f.len(), Self::now()) {
                        self.view.membership_dropped += 1;
                    } else if self.write(&mut wr, &f).await {
                        self.view.membership_sent += 1;
                    }
                }
                r = rd.read(&mut buf) => match r {
                    Ok(0) => return Some("end of file (device gone)".into()),
                    Ok(n) => self.on_bytes(&buf[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Some(e.to_string()),
                },
            }
        }
    }

    /// Waits `pause` with the device closed: keeps the timeout and the
    /// published view current, drops membership datagrams meant for the
    /// line. Returns false on `cancel`.
    async fn closed_wait(&mut self, pause: Duration, cancel: &CancellationToken) -> bool {
        let until = tokio::time::Instant::now() + pause;
        let mut tick = tokio::time::interval(self.plan.settings.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                () = cancel.cancelled() => return false,
                () = tokio::time::sleep_until(until) => return true,
                _ = tick.tick() => {
                    self.check_timeout();
                    self.network_view();
                    self.publish();
                }
                Some(_) = self.ch.membership_out.recv() => self.view.membership_dropped += 1,
            }
        }
    }
}

/// Runs the serial line until `cancel`. `port` is the device opened at
/// start (None: it could not be, and `serial.required = false`).
pub async fn run(
    plan: SerialPlan,
    incarnation: u32,
    port: Option<SerialStream>,
    ch: Channels,
    cancel: CancellationToken,
) {
    let budget = if plan.settings.fec {
        Budget::with_share(
            plan.settings.baud,
            Budget::fec_share(plan.settings.baud, plan.settings.interval),
        )
    } else {
        Budget::new(plan.settings.baud)
    };
    let mut line = Line {
        encoder: Encoder::new(plan.cluster_id, plan.local, incarnation).with_fec(plan.settings.fec),
        decoder: Decoder::new(plan.keys, plan.cluster_id, NodeSet::single(plan.peer)),
        view: SerialView {
            configured: true,
            device: plan.settings.device.display().to_string(),
            peer: plan.peer_name.clone(),
            ..SerialView::default()
        },
        plan,
        ch,
        net_view: NetworkView::default(),
        net_view_at: 0,
        budget,
        started_ns: clock::mono_ns(),
        network_seen: false,
    };
    line.network_view();
    line.publish();
    let mut port = port;
    let mut backoff = BACKOFF_MIN;
    let mut last_error = String::new();
    loop {
        let p = match port.take() {
            Some(p) => Some(p),
            None => match open(&line.plan.settings) {
                Ok(p) => Some(p),
                Err(e) => {
                    if e != last_error {
                        tracing::warn!(key = %line.plan.settings.device_key, "serial: {e}; retrying");
                        last_error = e;
                    }
                    None
                }
            },
        };
        if let Some(p) = p {
            line.view.opens += 1;
            line.view.open = true;
            line.decoder.reset_partial();
            if line.view.opens > 1 {
                tracing::info!(device = %line.view.device, "serial: device reopened");
            }
            last_error.clear();
            let opened_at = tokio::time::Instant::now();
            let why = line.serve(p, &cancel).await;
            line.view.open = false;
            let Some(why) = why else { break };
            line.view.losses += 1;
            tracing::warn!(device = %line.view.device, "serial: device lost ({why}); reopening with backoff");
            if opened_at.elapsed() > BACKOFF_MAX {
                backoff = BACKOFF_MIN;
            }
        }
        line.publish();
        if !line.closed_wait(backoff, &cancel).await {
            break;
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// The serial line as a row of the status report's links (link `serial`:
/// id [`SERIAL_LINK`], the device as its interface, role `serial`;
/// `requests_rx` counts valid frames, `replies_tx` frames sent).
pub fn link_status(
    state: LinkState,
    v: &SerialView,
    now: u64,
) -> heartbeat_api::status::LinkStatus {
    heartbeat_api::status::LinkStatus {
        id: SERIAL_LINK,
        interface: v.device.clone(),
        address: if v.open { "open" } else { "closed" }.into(),
        role: "serial".into(),
        state,
        last_seen_ago_ms: (v.last_rx_ns != 0)
            .then(|| now.saturating_sub(v.last_rx_ns) as f64 / 1e6),
        requests_rx: v.decoder.frames,
        replies_tx: v.frames_sent,
        down_events: v.down_events,
        ..Default::default()
    }
}

/// The serial line's own metrics (its link rows are in the
/// `heartbeat_link_*` families with `link="serial"`): frames by result
/// (`accepted` or the reject reason), the device's state and losses, and
/// the survivor verdict. Nothing when no line is configured.
pub fn encode_metrics(
    v: &SerialView,
    enc: &mut prometheus_client::encoding::DescriptorEncoder,
) -> Result<(), std::fmt::Error> {
    use prometheus_client::{
        encoding::EncodeMetric as _,
        metrics::{MetricType, counter::ConstCounter},
    };
    if !v.configured {
        return Ok(());
    }
    let mut m = enc.encode_descriptor(
        "heartbeat_serial_frames_received",
        "Frames read from the serial line: accepted, or skipped by reason",
        None,
        MetricType::Counter,
    )?;
    ConstCounter::new(v.decoder.frames).encode(m.encode_family(&[("result", "accepted")])?)?;
    for r in heartbeat_cluster::serial::Reject::ALL {
        ConstCounter::new(v.decoder.get(r)).encode(m.encode_family(&[("result", r.as_str())])?)?;
    }
    let counters: [(&str, &str, u64); 5] = [
        (
            "heartbeat_serial_device_losses",
            "Times the serial device failed (read error, end of file) and was reopened",
            v.losses,
        ),
        (
            "heartbeat_serial_membership_sent",
            "Membership messages sent over the serial line",
            v.membership_sent,
        ),
        (
            "heartbeat_serial_membership_received",
            "Membership messages received over the serial line",
            v.membership_received,
        ),
        (
            "heartbeat_serial_bytes_received",
            "Bytes read from the serial line",
            v.decoder.bytes,
        ),
        (
            "heartbeat_serial_frames_corrected",
            "Frames accepted after forward error correction repaired them (serial.fec)",
            v.decoder.corrected,
        ),
    ];
    crate::metrics::encode_counters(enc, &counters)?;
    let survivor = match v.verdict {
        Verdict::Split { survivor } => i64::from(survivor.0),
        _ => 0,
    };
    let gauges: [(&str, &str, i64); 2] = [
        (
            "heartbeat_serial_device_open",
            "1 while the serial device is open",
            i64::from(v.open),
        ),
        (
            "heartbeat_serial_survivor",
            "Node id the survivor rule picked while only the serial line joins the nodes (0: not in force)",
            survivor,
        ),
    ];
    crate::metrics::encode_gauges(enc, &gauges)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_membership_budget_leaves_the_line_to_heartbeats() {
        let mut b = Budget::new(115_200);
        // A burst passes, then about 40 % of 11520 bytes/s.
        assert!(b.take(1000, 0));
        assert!(!b.take(100, 1_000_000));
        let mut sent = 0usize;
        for ms in 1..=1000u64 {
            if b.take(100, ms * 1_000_000) {
                sent += 100;
            }
        }
        assert!((4000..=5000).contains(&sent), "{sent}");
    }

    #[test]
    fn protected_heartbeats_leave_less_of_the_line_to_membership() {
        // At 10 ms a protected heartbeat takes 82 % of a 115200 baud line.
        let s = Budget::fec_share(115_200, Duration::from_millis(10));
        assert!((0.1..0.2).contains(&s), "{s}");
        // At 20 ms the usual share.
        let s = Budget::fec_share(115_200, Duration::from_millis(20));
        assert!((s - MEMBERSHIP_SHARE).abs() < 1e-9, "{s}");
    }

    #[test]
    fn the_serial_link_is_named_serial() {
        assert_eq!(link_label(SERIAL_LINK), "serial");
        assert_eq!(link_label(3), "3");
    }
}
