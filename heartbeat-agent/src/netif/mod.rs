//! The network manager (issue #10): standby NIC takeover, and the
//! heartbeat interfaces' lifecycle (issue #12 row 3).
//!
//! A `[[node.link]]` with `standby = "ethY"` has two cards on one layer-2
//! segment. The `netif` task owns them:
//! - it watches link notifications through rtnetlink (`nl::watch_links`):
//!   carrier loss or a card going down is acted on as the kernel reports
//!   it;
//! - every `network_polling_interval` it sends one poll frame from each
//!   card to the other; the XDP program on the receiving card answers it
//!   in place, so polling wakes no user space on the answering side;
//!   [`machine::reply_wait`] later it reads the cards' poll statistics
//!   (`NIC_POLL`, written by the XDP program on each card, heartbeat-ebpf
//!   `poll.rs`) and reports the round: a lost poll is seen a fraction of
//!   an interval after it was sent;
//! - the decisions are [`machine::Pair`]'s, a pure state machine; this task
//!   only feeds it and carries out its outputs.
//!
//! A switch moves, through rtnetlink, every address of the failing card
//! (the link's own and the package addresses placed on it: all but
//! link-local ones) and the routes that leave through it to the other
//! card, re-points the link's socket (`SO_BINDTODEVICE` on the one socket
//! the sender, the transport and the cluster task share, so all three
//! follow at once), and announces each moved address (gratuitous ARP,
//! unsolicited neighbour advertisement) `network_announce_count` times.
//! The link keeps its id: peers see a short gap, and with `node_timeout`
//! above the switch time, no reformation. Right after a switch the sender
//! is asked to send a round at once, so the peers' answers flow through
//! the new card without waiting for the next `heartbeat_interval`.
//!
//! Both cards of every link with a standby answer ARP only for their own
//! addresses while the task runs ([`arp`]).
//!
//! The XDP program is attached to the standby card at start, not at the
//! switch: the standby must answer poll frames all along (the polls that
//! tell a silent card from a healthy one run through it), a native attach
//! can reset a real NIC's rings (a link flap of its own, at the worst
//! moment), and an attach that the driver or verifier refuses is then a
//! startup error rather than a failed takeover. The egress stamp is
//! attached to it too (the plan lists standby cards among the
//! interfaces).
//!
//! Issue #12 row 3: a heartbeat interface deleted and recreated (same name)
//! comes back with a new index: the task asks the fast path to attach XDP
//! to it again and re-binds the link's socket to it (a socket keeps the
//! index it was bound to), logs and counts it (`InterfaceStatus` in status,
//! `heartbeat_interface_*` metrics).

pub mod arp;
pub mod l2;
pub mod machine;
pub mod metrics;
pub mod nl;

use std::{
    collections::BTreeMap,
    io,
    os::fd::AsRawFd as _,
    sync::{Arc, RwLock},
    time::Duration,
};

use aya::maps::{HashMap as BpfHashMap, MapData};
use heartbeat_api::status::{InterfaceStatus, NicStatus};
use heartbeat_common::nic_poll::NicPoll;
use rtnetlink::packet_route::route::RouteMessage;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::{
    clock,
    fastpath::{self},
    journal::{self, EventKind, JournalHandle},
    plan::Plan,
    transport::LinkSocket,
};

use machine::{Card, Observation, Output, Pair};
use nl::{CardInfo, LinkNote, Nl};

/// Shortest accepted `cluster.network_polling_interval`.
pub const MIN_POLLING_INTERVAL: Duration = Duration::from_millis(1);
/// Time between two announcements of a moved address.
const ANNOUNCE_GAP: Duration = Duration::from_millis(20);
/// How often the active card's addresses and routes are saved.
const SAVE_EVERY: Duration = Duration::from_millis(250);

/// Which card carries each configured interface: the hook for the
/// packages side (a package address configured `dev eth1` goes on the card
/// carrying eth1's link now).
#[derive(Debug, Default)]
pub struct Cards(RwLock<BTreeMap<String, String>>);

impl Cards {
    /// The card carrying the link configured on `interface` (itself when
    /// it has no standby or carries its link).
    pub fn carrier_of(&self, interface: &str) -> String {
        self.0
            .read()
            .ok()
            .and_then(|m| m.get(interface).cloned())
            .unwrap_or_else(|| interface.to_owned())
    }

    fn set(&self, interface: &str, card: &str) {
        if let Ok(mut m) = self.0.write() {
            m.insert(interface.to_owned(), card.to_owned());
        }
    }
}

/// What the task needs.
pub struct Context {
    pub plan: Arc<Plan>,
    pub sockets: Vec<LinkSocket>,
    /// The program's `NIC_POLL` map (None: polling off, carrier only).
    pub nic_poll: Option<BpfHashMap<MapData, u32, NicPoll>>,
    pub journal: JournalHandle,
    pub status: watch::Sender<Vec<NicStatus>>,
    pub cards: Arc<Cards>,
    /// The fast path, for re-attaching XDP to a recreated interface.
    pub fast: mpsc::Sender<fastpath::Command>,
    /// The planned interfaces' lifecycle, for status and metrics.
    pub interfaces: watch::Sender<Vec<InterfaceStatus>>,
    /// The sender, asked to send at once after a switch.
    pub sender: Option<Arc<crate::sender::Shared>>,
}

/// One link with a standby card.
struct Managed {
    link: u8,
    /// Primary and standby names.
    names: [String; 2],
    /// What the kernel last said about each card.
    cards: [Option<CardInfo>; 2],
    pair: Pair,
    prev: [NicPoll; 2],
    /// Polls sent by each card at the last tick.
    sent_last: [u64; 2],
    sent: [u64; 2],
    lost: [u64; 2],
    switches: BTreeMap<&'static str, u64>,
    seq: u32,
    /// The active card's addresses and routes as last seen: a card taken
    /// down administratively loses its IPv6 addresses and its routes
    /// before the switch can list them, so the switch also restores these.
    saved: (Vec<nl::CardAddress>, Vec<RouteMessage>),
    /// Ticks until `saved` is refreshed.
    refresh_in: u32,
}

impl Managed {
    fn card_of(&self, name: &str) -> Option<Card> {
        if self.names[0] == name {
            Some(Card::Primary)
        } else if self.names[1] == name {
            Some(Card::Standby)
        } else {
            None
        }
    }

    fn name(&self, c: Card) -> &str {
        &self.names[ix(c)]
    }

    fn status(&self) -> NicStatus {
        let state = |c: Card| match self.pair.failed(c) {
            None => "up".to_owned(),
            Some(cause) => format!("failed:{}", cause.as_str()),
        };
        let rtt = |i: usize| {
            (self.prev[i].rx_replies > 0).then(|| self.prev[i].last_rtt_ns as f64 / 1000.0)
        };
        NicStatus {
            link: self.link,
            primary: self.names[0].clone(),
            standby: self.names[1].clone(),
            active: self.name(self.pair.active()).to_owned(),
            primary_state: state(Card::Primary),
            standby_state: state(Card::Standby),
            switches: self.switches.values().sum(),
            switches_by_cause: self
                .switches
                .iter()
                .map(|(k, v)| ((*k).to_owned(), *v))
                .collect(),
            poll_rtt_us: [rtt(0), rtt(1)],
            polls_sent: self.sent,
            polls_lost: self.lost,
            link_down: self.pair.both_failed(),
        }
    }
}

fn ix(c: Card) -> usize {
    match c {
        Card::Primary => 0,
        Card::Standby => 1,
    }
}

/// Binds `socket` to `card` (SO_BINDTODEVICE again: the kernel resolves the
/// name to the card's current index).
fn rebind(socket: &std::net::UdpSocket, card: &str) -> io::Result<()> {
    let fd = socket.as_raw_fd();
    // SAFETY: the pointer and length describe `card`'s bytes.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_BINDTODEVICE,
            card.as_ptr().cast(),
            card.len() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Puts the cards in `NIC_POLL` (zeroed): the program counts only them.
fn register(map: &mut Option<BpfHashMap<MapData, u32, NicPoll>>, cards: &[Option<CardInfo>; 2]) {
    let Some(map) = map.as_mut() else {
        return;
    };
    for c in cards.iter().flatten() {
        if let Err(e) = map.insert(c.index, NicPoll::default(), 0) {
            tracing::warn!(card = %c.name, error = %e, "cannot register the card for polling");
        }
    }
}

/// The task's state.
struct Netif {
    ctx: Context,
    nl: Nl,
    /// Kept open: closing an `AF_PACKET` socket waits for an RCU grace
    /// period (see `packages::addresses::Addresses`).
    pkt: Option<std::sync::Arc<l2::PacketSocket>>,
    links: Vec<Managed>,
    /// Every planned interface's last known index and lifecycle counts
    /// (issue #12 row 3).
    indexes: BTreeMap<String, InterfaceStatus>,
    /// The cards' `arp_ignore` values changed, put back at the end.
    arp: arp::ArpIgnore,
}

/// Runs the network manager until `cancel`.
pub async fn run(ctx: Context, cancel: CancellationToken) {
    let (tx, mut notes) = mpsc::unbounded_channel();
    let watcher = match nl::watch_links(tx) {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::error!(error = %e, "cannot watch link notifications: carrier loss and recreated interfaces go unnoticed");
            None
        }
    };
    let nl = match Nl::new() {
        Ok(n) => n,
        Err(e) => {
            tracing::error!(error = %e, "network manager: no rtnetlink; standby cards are not used");
            return;
        }
    };
    let pkt = match l2::PacketSocket::open() {
        Ok(p) => Some(std::sync::Arc::new(p)),
        Err(e) => {
            tracing::error!(error = %e, "network manager: cannot open a packet socket; no polls and no announcements");
            None
        }
    };
    let mut n = Netif {
        ctx,
        nl,
        pkt,
        links: Vec::new(),
        indexes: BTreeMap::new(),
        arp: arp::ArpIgnore::default(),
    };
    n.start().await;
    let interval = n.ctx.plan.config.cluster.netif.polling_interval;
    let wait = machine::reply_wait(interval);
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // When the round's answers are looked at (None: no round out).
    let mut report_at: Option<tokio::time::Instant> = None;
    loop {
        let report = async {
            match report_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            Some(note) = notes.recv() => n.on_note(note).await,
            _ = tick.tick(), if !n.links.is_empty() => {
                // A round not reported yet (the task was late): report it
                // before the next one goes out.
                if report_at.take().is_some() {
                    n.on_report().await;
                }
                n.send_polls();
                report_at = Some(tokio::time::Instant::now() + wait);
            }
            () = report => {
                report_at = None;
                n.on_report().await;
            }
            () = cancel.cancelled() => break,
        }
    }
    if let Some(w) = watcher {
        w.abort();
    }
    n.arp.restore();
}

impl Netif {
    async fn start(&mut self) {
        let plan = self.ctx.plan.clone();
        let now = clock::mono_ns();
        for iface in &plan.interfaces {
            let idx = match self.nl.card(iface).await {
                Ok(c) => c.map(|c| c.index),
                Err(_) => None,
            };
            self.indexes.insert(
                iface.clone(),
                InterfaceStatus {
                    name: iface.clone(),
                    index: idx,
                    ..InterfaceStatus::default()
                },
            );
        }
        self.publish_interfaces();
        for l in plan.local.links.iter() {
            let Some(standby) = &l.standby else { continue };
            let names = [l.interface.clone(), standby.clone()];
            let mut cards = [None, None];
            for (i, name) in names.iter().enumerate() {
                match self.nl.card(name).await {
                    Ok(c) => cards[i] = c,
                    Err(e) => tracing::warn!(card = %name, error = %e, "cannot look up a card"),
                }
            }
            if cards[1].is_none() {
                tracing::error!(link = l.id.0, standby = %standby, "the standby card is missing; the link runs on its primary card alone");
                self.record(
                    EventKind::NicFailed,
                    l.id.0,
                    "carrier",
                    format!("standby {standby} is missing"),
                );
            }
            // The card holding the link's address carries it (an agent
            // restarted while on the standby resumes there).
            let mut active = Card::Primary;
            if let Some(s) = &cards[1]
                && let Ok(addrs) = self.nl.addresses(s.index).await
                && addrs.iter().any(|(a, _)| a.addr == l.address)
            {
                active = Card::Standby;
            }
            let carrier = [
                cards[0].as_ref().is_some_and(|c| c.carrier),
                cards[1].as_ref().is_some_and(|c| c.carrier),
            ];
            let pair = Pair::new(&plan.config.cluster.netif, active, carrier, now);
            let mut m = Managed {
                link: l.id.0,
                names,
                cards,
                pair,
                prev: [NicPoll::default(); 2],
                sent_last: [0; 2],
                sent: [0; 2],
                lost: [0; 2],
                switches: BTreeMap::new(),
                seq: 0,
                saved: (Vec::new(), Vec::new()),
                refresh_in: 0,
            };
            register(&mut self.ctx.nic_poll, &m.cards);
            for c in m.cards.iter().flatten() {
                self.apply_arp_ignore(&c.name);
            }
            self.ctx.cards.set(&m.names[0], m.name(active));
            if active == Card::Standby {
                self.rebind_link(&m, Card::Standby);
                tracing::info!(link = l.id.0, card = %m.names[1], "the link is on its standby card (found its address there)");
            }
            let out = m.pair.start(now);
            self.links.push(m);
            let i = self.links.len() - 1;
            self.carry_out(i, out).await;
        }
        self.publish();
    }

    fn apply_arp_ignore(&mut self, card: &str) {
        if let Err(e) = self.arp.apply(card) {
            tracing::warn!(card = %card, error = %e, "cannot set arp_ignore = 1: the card may answer ARP for the other card's addresses");
        }
    }

    fn record(&self, kind: EventKind, link: u8, cause: &str, detail: String) {
        let mut e = journal::entry(kind, &self.ctx.plan.local.name, cause, clock::mono_ns());
        e.link = Some(link);
        e.detail = Some(detail);
        self.ctx.journal.record(e);
    }

    fn publish_interfaces(&self) {
        self.ctx
            .interfaces
            .send_replace(self.indexes.values().cloned().collect());
    }

    fn publish(&self) {
        self.ctx
            .status
            .send_replace(self.links.iter().map(Managed::status).collect());
    }

    /// Points the sockets of `m`'s link at card `to`.
    fn rebind_link(&self, m: &Managed, to: Card) {
        let name = m.name(to);
        for s in self
            .ctx
            .sockets
            .iter()
            .filter(|s| s.link_id == m.link || s.interface == m.names[0])
        {
            if let Err(e) = rebind(&s.socket, name) {
                tracing::error!(link = s.link_id, card = %name, error = %e, "cannot re-point the link's socket");
            }
        }
    }

    async fn on_note(&mut self, note: LinkNote) {
        let now = clock::mono_ns();
        let (name, info) = match &note {
            LinkNote::Changed(i) => (i.name.clone(), Some(i.clone())),
            LinkNote::Deleted { name, .. } => (name.clone(), None),
        };
        self.lifecycle(&name, info.as_ref()).await;
        for i in 0..self.links.len() {
            let Some(card) = self.links[i].card_of(&name) else {
                continue;
            };
            let old = self.links[i].cards[ix(card)].as_ref().map(|c| c.index);
            let new = info.as_ref().map(|c| c.index);
            self.links[i].cards[ix(card)] = info.clone();
            if new != old {
                // Deleted or recreated: the old index's entry goes, the new
                // one is counted from zero.
                if let Some(map) = self.ctx.nic_poll.as_mut() {
                    if let Some(o) = old {
                        let _ = map.remove(&o);
                    }
                    if let Some(n) = new
                        && let Err(e) = map.insert(n, NicPoll::default(), 0)
                    {
                        tracing::warn!(card = %name, error = %e, "cannot register the card for polling");
                    }
                }
                self.links[i].prev[ix(card)] = NicPoll::default();
                if new.is_some() {
                    self.apply_arp_ignore(&name);
                }
            }
            let up = info.as_ref().is_some_and(|c| c.carrier);
            let out = self.links[i].pair.on_carrier(card, up, now);
            self.carry_out(i, out).await;
        }
        self.publish();
    }

    /// Issue #12 row 3: a planned interface that comes back with a new
    /// index gets XDP and its link's socket again.
    async fn lifecycle(&mut self, name: &str, info: Option<&CardInfo>) {
        let Some(known) = self.indexes.get(name).map(|s| s.index) else {
            return;
        };
        match info {
            None => {
                if let (Some(_), Some(s)) = (known, self.indexes.get_mut(name)) {
                    tracing::warn!(interface = %name, "interface deleted: XDP and the link's socket are gone with it until it returns");
                    s.index = None;
                    s.deleted += 1;
                    self.publish_interfaces();
                    let _ = self
                        .ctx
                        .fast
                        .send(fastpath::Command::Detached(name.to_owned()))
                        .await;
                }
            }
            Some(i) if known != Some(i.index) => {
                if let Some(s) = self.indexes.get_mut(name) {
                    s.index = Some(i.index);
                    s.recreated += 1;
                }
                self.publish_interfaces();
                tracing::warn!(interface = %name, index = i.index, "interface (re)created: attaching XDP again and re-binding its socket");
                let _ = self
                    .ctx
                    .fast
                    .send(fastpath::Command::Reattach(name.to_owned()))
                    .await;
                // The sockets of the links this card carries.
                for s in &self.ctx.sockets {
                    if self.ctx.cards.carrier_of(&s.interface) == name
                        && let Err(e) = rebind(&s.socket, name)
                    {
                        tracing::error!(link = s.link_id, error = %e, "cannot re-bind the link's socket");
                    }
                }
            }
            Some(_) => {}
        }
    }

    /// Sends the round's polls, one from each card to the other (when both
    /// have carrier).
    fn send_polls(&mut self) {
        let plan = self.ctx.plan.clone();
        let polling = self.ctx.nic_poll.is_some() && self.pkt.is_some();
        for m in &mut self.links {
            m.sent_last = [0; 2];
            if let (Some(pkt), [Some(a), Some(b)]) = (&self.pkt, &m.cards)
                && a.carrier
                && b.carrier
                && polling
            {
                for (k, (from, to)) in [(a, b), (b, a)].into_iter().enumerate() {
                    m.seq = m.seq.wrapping_add(1);
                    let f = l2::poll_frame(&l2::Poll {
                        cluster_id: plan.config.cluster.id,
                        node: plan.local.id.0,
                        from: (from.index, from.mac),
                        to: (to.index, to.mac),
                        seq: m.seq,
                        tx_ns: clock::mono_ns(),
                    });
                    if pkt.send(from.index, to.mac, &f).is_ok() {
                        m.sent[k] += 1;
                        m.sent_last[k] = 1;
                    }
                }
            }
        }
    }

    /// Reports the round whose polls went out [`machine::reply_wait`] ago:
    /// reads both cards' statistics, feeds the state machine, carries out
    /// its decisions.
    async fn on_report(&mut self) {
        let now = clock::mono_ns();
        let plan = self.ctx.plan.clone();
        let save_ticks = (SAVE_EVERY.as_nanos()
            / plan.config.cluster.netif.polling_interval.as_nanos().max(1))
        .max(1) as u32;
        let polling = self.ctx.nic_poll.is_some() && self.pkt.is_some();
        let window = machine::inbound_window(
            plan.config.cluster.netif.polling_interval,
            plan.config.cluster.heartbeat_interval,
        );
        let heard_since = now.saturating_sub(window.as_nanos() as u64);
        for i in 0..self.links.len() {
            // Read both cards' statistics.
            let mut cur = self.links[i].prev;
            if let Some(map) = self.ctx.nic_poll.as_ref() {
                for (k, c) in self.links[i].cards.iter().enumerate() {
                    if let Some(c) = c
                        && let Ok(v) = map.get(&c.index, 0)
                    {
                        cur[k] = v;
                    }
                }
            }
            let m = &mut self.links[i];
            let d = |k: usize, f: fn(&NicPoll) -> u64| f(&cur[k]).saturating_sub(f(&m.prev[k]));
            let obs = Observation {
                inbound: [
                    cur[0].last_rx_ns > heard_since,
                    cur[1].last_rx_ns > heard_since,
                ],
                outbound: [
                    d(1, |p| p.rx_requests) > 0 || d(0, |p| p.rx_replies) > 0,
                    d(0, |p| p.rx_requests) > 0 || d(1, |p| p.rx_replies) > 0,
                ],
            };
            for k in 0..2 {
                let replies = d(k, |p| p.rx_replies);
                m.lost[k] += m.sent_last[k].saturating_sub(replies);
            }
            m.prev = cur;
            let out = if polling {
                m.pair.on_tick(obs, now)
            } else {
                Vec::new()
            };
            self.carry_out(i, out).await;
            // After the decision (it must not wait for a listing), and at
            // once after a switch.
            if self.links[i].refresh_in == 0 {
                self.save(i).await;
                self.links[i].refresh_in = save_ticks;
            }
            self.links[i].refresh_in -= 1;
        }
        self.publish();
    }

    async fn carry_out(&mut self, i: usize, outputs: Vec<Output>) {
        for o in outputs {
            let link = self.links[i].link;
            match o {
                Output::Failed { card, cause } => {
                    let name = self.links[i].name(card).to_owned();
                    tracing::warn!(link, card = %name, cause = cause.as_str(), "card failed");
                    self.record(
                        EventKind::NicFailed,
                        link,
                        cause.as_str(),
                        format!("{} card {name} failed", card.as_str()),
                    );
                }
                Output::Recovered { card } => {
                    let name = self.links[i].name(card).to_owned();
                    tracing::info!(link, card = %name, "card recovered");
                    self.record(
                        EventKind::NicRecovered,
                        link,
                        "polls",
                        format!("{} card {name} is healthy again", card.as_str()),
                    );
                }
                Output::BothFailed => {
                    tracing::error!(link, "both cards of the link have failed: the link is down");
                    self.record(
                        EventKind::NicFailed,
                        link,
                        "both",
                        "both cards have failed: the link is down".to_owned(),
                    );
                }
                Output::Switch { from, to, cause } => {
                    let t0 = clock::mono_ns();
                    let r = self.switch(i, from, to).await;
                    let took_us = clock::mono_ns().saturating_sub(t0) / 1000;
                    // The peers answer the next request through the new
                    // card: send it now rather than at the next interval.
                    if let Some(s) = &self.ctx.sender {
                        s.send_now();
                    }
                    let m = &mut self.links[i];
                    m.refresh_in = 0;
                    *m.switches.entry(cause.as_str()).or_default() += 1;
                    let (from_n, to_n) = (m.name(from).to_owned(), m.name(to).to_owned());
                    let detail = match r {
                        Ok((a, r)) => format!(
                            "link moved from {from_n} to {to_n} in {took_us} us ({a} addresses, {r} routes)"
                        ),
                        Err(e) => format!("link moved from {from_n} to {to_n} with errors: {e}"),
                    };
                    tracing::warn!(link, cause = cause.as_str(), "{detail}");
                    self.record(EventKind::NicSwitched, link, cause.as_str(), detail);
                }
            }
        }
    }

    /// Saves the active card's addresses and routes (when it has carrier:
    /// a dead card's listing may already be short).
    async fn save(&mut self, i: usize) {
        let m = &self.links[i];
        let Some(card) = m.cards[ix(m.pair.active())].clone() else {
            return;
        };
        if !card.carrier {
            return;
        }
        let addrs = self.nl.addresses(card.index).await;
        let routes = self.nl.routes(card.index).await;
        if let (Ok(a), Ok(r)) = (addrs, routes) {
            self.links[i].saved = (a.into_iter().map(|(a, _)| a).collect(), r);
        }
    }

    /// Moves link `i` from card `from` to card `to`: routes listed first,
    /// addresses moved, routes re-added, socket re-pointed, announcements
    /// sent in the background. Returns (addresses, routes) moved.
    async fn switch(&mut self, i: usize, from: Card, to: Card) -> Result<(usize, usize), String> {
        let m = &self.links[i];
        let (Some(src), Some(dst)) = (m.cards[ix(from)].clone(), m.cards[ix(to)].clone()) else {
            return Err("a card is missing".into());
        };
        // The socket first: requests leave from the new card as soon as the
        // address is there.
        self.rebind_link(m, to);
        self.ctx.cards.set(&m.names[0], &dst.name);
        let mut errors = Vec::new();
        let routes = self.nl.routes(src.index).await.unwrap_or_else(|e| {
            errors.push(e.to_string());
            Vec::new()
        });
        let addrs = self.nl.addresses(src.index).await.unwrap_or_else(|e| {
            errors.push(e.to_string());
            Vec::new()
        });
        // What the kernel flushed already (an administrative down) comes
        // from the saved listing.
        let (saved_addrs, saved_routes) = self.links[i].saved.clone();
        let mut addrs: Vec<(nl::CardAddress, Option<_>)> =
            addrs.into_iter().map(|(a, m)| (a, Some(m))).collect();
        for a in saved_addrs {
            if !addrs.iter().any(|(b, _)| *b == a) {
                addrs.push((a, None));
            }
        }
        let mut routes = routes;
        for r in saved_routes {
            if !routes.contains(&r) {
                routes.push(r);
            }
        }
        let mut moved = Vec::new();
        for (a, msg) in addrs {
            match self.nl.add_address(dst.index, &a).await {
                Ok(()) => moved.push(a.addr),
                Err(e) => errors.push(e.to_string()),
            }
            if let Some(msg) = msg
                && let Err(e) = self.nl.del_address(msg).await
            {
                errors.push(e.to_string());
            }
        }
        let mut nroutes = 0;
        for r in routes {
            match self.nl.move_route(r, dst.index).await {
                Ok(()) => nroutes += 1,
                Err(e) => errors.push(e.to_string()),
            }
        }
        let count = self.ctx.plan.config.cluster.netif.announce_count;
        if count > 0 && self.pkt.is_some() {
            let frames: Vec<_> = moved
                .iter()
                .map(|ip| l2::announcement(dst.mac, *ip))
                .collect();
            let index = dst.index;
            let pkt = self.pkt.clone();
            tokio::spawn(async move {
                let Some(pkt) = pkt else {
                    return;
                };
                for n in 0..count {
                    if n > 0 {
                        tokio::time::sleep(ANNOUNCE_GAP).await;
                    }
                    for (mac, f) in &frames {
                        let _ = pkt.send(index, *mac, f);
                    }
                }
            });
        }
        if errors.is_empty() {
            Ok((moved.len(), nroutes))
        } else {
            Err(errors.join("; "))
        }
    }
}
