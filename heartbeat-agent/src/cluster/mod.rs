//! The cluster subsystem: the task that owns reachability (which peers are
//! heard on which link) and membership (the agreed view, its epoch,
//! coordinator and quorum), fed by transport events from any transport and
//! by membership messages, and publishing its view for status and metrics.
//!
//! The decisions themselves are pure state machines (`links` here, and the
//! `heartbeat_cluster` crate); this task only feeds them and carries out
//! their outputs (journal entries, messages to send, the persisted epoch).

pub mod links;

use std::{collections::BTreeMap, sync::Arc};

use heartbeat_api::status::{MembershipStatus, NodeState};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::{
    control::Call,
    journal::JournalHandle,
    plan::Plan,
    transport::{Datagram, LinkSocket},
};

/// A link going up or down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkChange {
    Up,
    Down,
}

/// What a transport (the XDP program's timers, later a serial line) tells
/// the cluster. Independent of the kernel's event layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransportEvent {
    /// (peer, link) changed state at `at_ns` (CLOCK_MONOTONIC); the last
    /// valid packet before it arrived at `last_rx_ns`.
    Link {
        peer: u16,
        link: u8,
        change: LinkChange,
        at_ns: u64,
        last_rx_ns: u64,
    },
    /// The local dead-man gate closed (our kernel stopped answering `peer`
    /// on `link` because this agent looked dead or hung).
    LocalGateClosed { peer: u16, link: u8, at_ns: u64 },
}

/// One peer as the cluster sees it (for status and metrics).
#[derive(Clone, Debug, Default)]
pub struct PeerView {
    pub id: u16,
    pub name: String,
    pub state: NodeState,
    /// CLOCK_MONOTONIC ns of the last state change (0: never).
    pub since_mono_ns: u64,
    /// Link id → state.
    pub links: BTreeMap<u8, links::State>,
    /// Whether the peer is a member of the agreed view.
    pub member: bool,
}

/// What the cluster task publishes.
#[derive(Clone, Debug, Default)]
pub struct ClusterView {
    pub peers: Vec<PeerView>,
    pub membership: MembershipStatus,
    /// Membership messages: `sent`, `received`, `dropped_<reason>`.
    pub messages: BTreeMap<String, u64>,
    /// Transport events naming an unknown peer or link.
    pub unknown_events: u64,
}

/// Commands for the cluster task.
pub enum Command {
    /// A reloaded plan (peers added or removed, timeouts changed).
    Reconfigure(Arc<Plan>),
    /// An operator command from the control socket.
    Control(Call),
}

/// The cluster task's channels.
pub struct Channels {
    pub events: mpsc::Receiver<TransportEvent>,
    pub commands: mpsc::Receiver<Command>,
    /// Membership messages as they arrived (not yet authenticated).
    pub messages: mpsc::Receiver<Datagram>,
    pub view: watch::Sender<ClusterView>,
    /// The links' sockets, to send membership messages.
    pub sockets: Vec<LinkSocket>,
}

fn link_view(plan: &Plan) -> links::Membership {
    let peers: Vec<(u16, String, Vec<u8>)> = plan
        .peers
        .iter()
        .map(|p| (p.id, p.name.clone(), p.links.clone()))
        .collect();
    links::Membership::new(&plan.local.name, &peers)
}

fn publish(view: &watch::Sender<ClusterView>, reach: &links::Membership) {
    let peers = reach
        .peers()
        .map(|p| PeerView {
            id: p.id,
            name: p.name.clone(),
            state: match p.state {
                links::State::Up => NodeState::Up,
                links::State::Down => NodeState::Down,
                links::State::Unknown => NodeState::Unknown,
            },
            since_mono_ns: p.since_mono_ns,
            links: p.links.iter().map(|(&l, v)| (l, v.state)).collect(),
            member: p.state == links::State::Up,
        })
        .collect();
    view.send_modify(|v| {
        v.peers = peers;
        v.unknown_events = reach.unknown_events;
    });
}

/// Runs the cluster task until `cancel`.
pub async fn run(
    plan: Arc<Plan>,
    journal: JournalHandle,
    mut ch: Channels,
    cancel: CancellationToken,
) {
    let mut reach = link_view(&plan);
    publish(&ch.view, &reach);
    loop {
        tokio::select! {
            Some(ev) = ch.events.recv() => {
                for e in reach.apply(&ev) {
                    journal.record(e);
                }
                publish(&ch.view, &reach);
            }
            Some(_d) = ch.messages.recv() => {
                ch.view.send_modify(|v| *v.messages.entry("received".into()).or_default() += 1);
            }
            Some(cmd) = ch.commands.recv() => match cmd {
                Command::Reconfigure(p) => {
                    reach = reach.reconfigured(&link_view(&p));
                    publish(&ch.view, &reach);
                }
                Command::Control(call) => {
                    let _ = call.reply.send(Err(format!(
                        "{:?}: membership commands are not available yet",
                        call.request
                    )));
                }
            },
            () = cancel.cancelled() => break,
        }
    }
}
