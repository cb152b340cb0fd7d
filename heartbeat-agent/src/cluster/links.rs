//! Reachability: turns per-(peer, link) up/down events from any transport
//! (the XDP program's deadline timers today, a serial line later) into link
//! and node reachability. A node is reachable while any of its links is up;
//! a link failing while another stays up is a link event, not a node
//! failure.
//!
//! A link the kernel holds up but that no longer answers our requests
//! (`halfopen`, issue #12 row 12b) is `half_open`: not up, for the node's
//! state and for membership alike.
//!
//! This module is the single owner of that state; it is fed events and
//! returns journal entries describing each change. Membership (who is in
//! the agreed view) is decided on top of it by `heartbeat_cluster`.

use std::collections::BTreeMap;

pub use heartbeat_api::status::LinkState as State;

use super::{LinkChange, TransportEvent};
use crate::journal::{self, Entry, EventKind};

/// One link to a peer.
#[derive(Clone, Debug)]
pub struct LinkView {
    /// The state reachability uses: `kernel`, but `HalfOpen` for a link
    /// the kernel holds up while it does not answer.
    pub state: State,
    /// Kernel monotonic ns of the last transition.
    pub since_mono_ns: u64,
    pub transitions: u64,
    /// What the transport says (up, down, unknown).
    pub kernel: State,
    /// The half-open verdict (`super::halfopen`).
    pub half_open: bool,
    /// Down verdicts by cause (`timeout`, `half_open`).
    pub downs: BTreeMap<&'static str, u64>,
}

impl LinkView {
    fn effective(&self) -> State {
        if self.half_open && self.kernel == State::Up {
            State::HalfOpen
        } else {
            self.kernel
        }
    }
}

/// One peer node.
#[derive(Clone, Debug)]
pub struct PeerView {
    pub id: u16,
    pub name: String,
    pub state: State,
    pub since_mono_ns: u64,
    pub links: BTreeMap<u8, LinkView>,
    /// The arrival of the last valid packet from the peer that a link
    /// event reported (CLOCK_MONOTONIC ns; 0: none yet). Exact once every
    /// link is down: a later packet would bring a link up.
    pub last_rx_ns: u64,
}

/// Link and node state of every peer.
#[derive(Clone, Debug)]
pub struct Membership {
    local_name: String,
    peers: BTreeMap<u16, PeerView>,
    /// Events with an unknown peer or link (kernel/agent disagreement).
    pub unknown_events: u64,
}

impl Membership {
    /// `peers`: (id, name, heartbeat link ids shared with that peer).
    pub fn new(local_name: &str, peers: &[(u16, String, Vec<u8>)]) -> Self {
        let peers = peers
            .iter()
            .map(|(id, name, links)| {
                let links = links
                    .iter()
                    .map(|&l| {
                        (
                            l,
                            LinkView {
                                state: State::Unknown,
                                since_mono_ns: 0,
                                transitions: 0,
                                kernel: State::Unknown,
                                half_open: false,
                                downs: BTreeMap::new(),
                            },
                        )
                    })
                    .collect();
                (
                    *id,
                    PeerView {
                        id: *id,
                        name: name.clone(),
                        state: State::Unknown,
                        since_mono_ns: 0,
                        links,
                        last_rx_ns: 0,
                    },
                )
            })
            .collect();
        Self {
            local_name: local_name.to_owned(),
            peers,
            unknown_events: 0,
        }
    }

    /// The state of `self` carried over to the peers and links of `fresh`
    /// (a reload): known peers and links keep their state, new ones start
    /// unknown, removed ones are forgotten.
    pub fn reconfigured(&self, fresh: &Self) -> Self {
        let mut out = fresh.clone();
        for (id, p) in out.peers.iter_mut() {
            if let Some(old) = self.peers.get(id) {
                p.state = old.state;
                p.since_mono_ns = old.since_mono_ns;
                p.last_rx_ns = old.last_rx_ns;
                for (l, v) in p.links.iter_mut() {
                    if let Some(ov) = old.links.get(l) {
                        *v = ov.clone();
                    }
                }
            }
        }
        out.unknown_events = self.unknown_events;
        out
    }

    pub fn peers(&self) -> impl Iterator<Item = &PeerView> {
        self.peers.values()
    }

    pub fn peer(&self, id: u16) -> Option<&PeerView> {
        self.peers.get(&id)
    }

    /// Whether `(peer, link)` counts as up (none: not configured).
    pub fn link_up(&self, peer: u16, link: u8) -> Option<bool> {
        self.peers
            .get(&peer)
            .and_then(|p| p.links.get(&link))
            .map(|l| l.state == State::Up)
    }

    /// Applies one transport event; returns the journal entries it causes.
    pub fn apply(&mut self, ev: &TransportEvent) -> Vec<Entry> {
        let mut out = Vec::new();
        let (peer_id, link_id, change, at_ns, last_rx_ns) = match *ev {
            TransportEvent::LocalGateClosed { peer, link, at_ns } => {
                let mut e = journal::entry(
                    EventKind::AgentStale,
                    &self.local_name,
                    "dead_man_gate",
                    at_ns,
                );
                e.peer = self.peers.get(&peer).map(|p| p.name.clone());
                e.peer_id = Some(peer);
                e.link = Some(link);
                out.push(e);
                return out;
            }
            TransportEvent::Deferred {
                peer,
                link,
                cause,
                at_ns,
                last_rx_ns,
            } => {
                return self
                    .deferred(peer, link, cause, at_ns, last_rx_ns)
                    .into_iter()
                    .collect();
            }
            TransportEvent::HalfOpen {
                peer,
                link,
                open,
                unanswered,
                silent_ns,
                at_ns,
                last_rx_ns,
            } => {
                let Some(l) = self
                    .peers
                    .get_mut(&peer)
                    .and_then(|p| p.links.get_mut(&link))
                else {
                    self.unknown_events += 1;
                    return out;
                };
                l.half_open = open;
                let detail = open.then(|| {
                    format!(
                        "{unanswered} requests unanswered in {} ms while the peer's requests arrive",
                        silent_ns / 1_000_000
                    )
                });
                let cause = if open { "half_open" } else { "replies_resumed" };
                return self.transition(peer, link, cause, at_ns, last_rx_ns, detail);
            }
            TransportEvent::Link {
                peer,
                link,
                change,
                at_ns,
                last_rx_ns,
            } => (peer, link, change, at_ns, last_rx_ns),
        };
        let (kernel, cause) = match change {
            LinkChange::Down => (State::Down, "timeout"),
            LinkChange::Up => (State::Up, "heartbeat"),
        };
        let Some(peer) = self.peers.get_mut(&peer_id) else {
            self.unknown_events += 1;
            return out;
        };
        let Some(link) = peer.links.get_mut(&link_id) else {
            self.unknown_events += 1;
            return out;
        };
        peer.last_rx_ns = peer
            .last_rx_ns
            .max(last_rx_ns)
            .max(if change == LinkChange::Up { at_ns } else { 0 });
        link.kernel = kernel;
        let detail = (link_id == crate::serial::SERIAL_LINK).then(|| "link serial".to_owned());
        self.transition(peer_id, link_id, cause, at_ns, last_rx_ns, detail)
    }

    /// Moves `(peer_id, link_id)` to its effective state (after its kernel
    /// state or half-open verdict changed); the journal entries if it did.
    fn transition(
        &mut self,
        peer_id: u16,
        link_id: u8,
        cause: &'static str,
        at_ns: u64,
        last_rx_ns: u64,
        detail: Option<String>,
    ) -> Vec<Entry> {
        let mut out = Vec::new();
        let Some(peer) = self.peers.get_mut(&peer_id) else {
            return out;
        };
        let Some(link) = peer.links.get_mut(&link_id) else {
            return out;
        };
        let new_state = link.effective();
        if link.state == new_state {
            return out;
        }
        let was_up = link.state == State::Up;
        link.state = new_state;
        link.since_mono_ns = at_ns;
        link.transitions += 1;
        let event = match new_state {
            State::Up => EventKind::LinkUp,
            _ => EventKind::LinkDown,
        };
        // One verdict per loss: a half-open link that then falls silent
        // gets its `link_down` but counts no second one.
        if new_state != State::Up && was_up {
            *link.downs.entry(cause).or_default() += 1;
        }
        let since = (new_state != State::Up).then(|| at_ns.saturating_sub(last_rx_ns));
        let mut e = journal::entry(event, &self.local_name, cause, at_ns);
        e.peer = Some(peer.name.clone());
        e.peer_id = Some(peer.id);
        e.link = Some(link_id);
        e.since_last_rx_ns = since;
        e.detail = detail;
        if new_state == State::HalfOpen {
            tracing::warn!(
                peer = %peer.name,
                link = link_id,
                detail = e.detail.as_deref().unwrap_or_default(),
                "link_down: half-open (the peer drops what we send)"
            );
        } else {
            tracing::info!(
                peer = %peer.name,
                link = link_id,
                cause,
                since_last_rx_us = since.map(|s| s / 1000),
                "{event}"
            );
        }
        out.push(e);

        let any_up = peer.links.values().any(|l| l.state == State::Up);
        let node_state = if any_up { State::Up } else { State::Down };
        if node_state != peer.state && !(node_state == State::Down && peer.state == State::Unknown)
        {
            peer.state = node_state;
            peer.since_mono_ns = at_ns;
            let (event, cause) = match node_state {
                State::Up => (EventKind::NodeUp, "first_link_up"),
                _ => (EventKind::NodeDown, "all_links_down"),
            };
            let mut e = journal::entry(event, &self.local_name, cause, at_ns);
            e.peer = Some(peer.name.clone());
            e.peer_id = Some(peer.id);
            e.link = Some(link_id);
            e.since_last_rx_ns = since;
            if node_state == State::Down {
                tracing::warn!(peer = %peer.name, link = link_id, "node_down: every heartbeat link is down");
            } else {
                tracing::info!(peer = %peer.name, link = link_id, "node_up");
            }
            out.push(e);
        }
        out
    }
}

impl Membership {
    /// A deadline expired but the kernel deferred its verdict by one grace
    /// (heartbeat-ebpf deadline.rs): journalled as `detection_deferred`; the
    /// link's state does not change (a `link_down` follows if the grace
    /// runs out).
    fn deferred(
        &mut self,
        peer_id: u16,
        link: u8,
        cause: u8,
        at_ns: u64,
        last_rx_ns: u64,
    ) -> Option<Entry> {
        let Some(peer) = self.peers.get(&peer_id) else {
            self.unknown_events += 1;
            return None;
        };
        if !peer.links.contains_key(&link) {
            self.unknown_events += 1;
            return None;
        }
        let cause = heartbeat_common::defer_cause::name(cause);
        let since = at_ns.saturating_sub(last_rx_ns);
        let mut e = journal::entry(EventKind::DetectionDeferred, &self.local_name, cause, at_ns);
        e.peer = Some(peer.name.clone());
        e.peer_id = Some(peer.id);
        e.link = Some(link);
        e.since_last_rx_ns = Some(since);
        tracing::info!(
            peer = %peer.name,
            link,
            cause,
            since_last_rx_us = since / 1000,
            "detection_deferred"
        );
        Some(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UP: u32 = 1;
    const DOWN: u32 = 2;
    const STALE: u32 = 3;

    fn ev(kind: u32, peer: u16, link: u8, at: u64) -> TransportEvent {
        if kind == STALE {
            return TransportEvent::LocalGateClosed {
                peer,
                link,
                at_ns: at,
            };
        }
        TransportEvent::Link {
            peer,
            link,
            change: if kind == UP {
                LinkChange::Up
            } else {
                LinkChange::Down
            },
            // (tests use at >= 500 so the silence is exactly 500 ns)
            last_rx_ns: at.saturating_sub(500),
            at_ns: at,
        }
    }

    fn names(v: &[Entry]) -> Vec<&str> {
        v.iter().map(|e| e.event.as_str()).collect()
    }

    #[test]
    fn deferrals_are_journalled_without_a_state_change() {
        use heartbeat_common::defer_cause;
        let mut m = Membership::new("a", &[(2, "b".into(), vec![0])]);
        m.apply(&ev(UP, 2, 0, 1_000));
        for (cause, name) in [
            (defer_cause::LOCAL_STALL, "local_stall"),
            (defer_cause::LATE_TIMER, "late_timer"),
            (defer_cause::PEER_QUEUED, "peer_queued"),
        ] {
            let d = |peer, link| TransportEvent::Deferred {
                peer,
                link,
                cause,
                at_ns: 2_000,
                last_rx_ns: 1_500,
            };
            let out = m.apply(&d(2, 0));
            assert_eq!(names(&out), ["detection_deferred"]);
            assert_eq!(out[0].cause, name);
            assert_eq!(out[0].since_last_rx_ns, Some(500));
            assert_eq!(m.peer(2).unwrap().state, State::Up);
            assert!(m.apply(&d(9, 0)).is_empty());
            assert!(m.apply(&d(2, 3)).is_empty());
        }
        assert_eq!(m.unknown_events, 6);
    }

    #[test]
    fn one_link_down_of_two_keeps_node_up() {
        let mut m = Membership::new("a", &[(2, "b".into(), vec![0, 1])]);
        assert_eq!(
            names(&m.apply(&ev(UP, 2, 0, 1_000))),
            ["link_up", "node_up"]
        );
        assert_eq!(names(&m.apply(&ev(UP, 2, 1, 1_100))), ["link_up"]);
        assert_eq!(names(&m.apply(&ev(DOWN, 2, 0, 2_000))), ["link_down"]);
        assert_eq!(m.peer(2).unwrap().state, State::Up);
        let out = m.apply(&ev(DOWN, 2, 1, 3_000));
        assert_eq!(names(&out), ["link_down", "node_down"]);
        assert_eq!(out[1].since_last_rx_ns, Some(500));
        assert_eq!(m.peer(2).unwrap().state, State::Down);
        assert_eq!(
            names(&m.apply(&ev(UP, 2, 1, 4_000))),
            ["link_up", "node_up"]
        );
    }

    fn half(peer: u16, link: u8, open: bool, at: u64) -> TransportEvent {
        TransportEvent::HalfOpen {
            peer,
            link,
            open,
            unanswered: 60,
            silent_ns: 1_200_000_000,
            at_ns: at,
            last_rx_ns: at,
        }
    }

    #[test]
    fn a_half_open_link_is_down_until_replies_resume() {
        let mut m = Membership::new("a", &[(2, "b".into(), vec![0, 1])]);
        m.apply(&ev(UP, 2, 0, 1_000));
        m.apply(&ev(UP, 2, 1, 1_000));
        let out = m.apply(&half(2, 0, true, 2_000));
        assert_eq!(names(&out), ["link_down"]);
        assert_eq!(out[0].cause, "half_open");
        assert!(out[0].detail.as_deref().unwrap().contains("60 requests"));
        let l = |m: &Membership, id| m.peer(2).unwrap().links[&id].clone();
        assert_eq!(l(&m, 0).state, State::HalfOpen);
        assert_eq!(m.link_up(2, 0), Some(false));
        assert_eq!(m.link_up(2, 9), None);
        // The other link keeps the node up; once it is half-open too the
        // node is down.
        assert_eq!(m.peer(2).unwrap().state, State::Up);
        let out = m.apply(&half(2, 1, true, 2_100));
        assert_eq!(names(&out), ["link_down", "node_down"]);
        // The kernel's up (the peer's requests) does not bring it back.
        assert!(m.apply(&ev(UP, 2, 0, 2_200)).is_empty());
        // Silent altogether: down, one verdict only.
        assert_eq!(names(&m.apply(&ev(DOWN, 2, 0, 3_000))), ["link_down"]);
        assert_eq!(l(&m, 0).state, State::Down);
        assert_eq!(l(&m, 0).downs.get("half_open"), Some(&1));
        assert_eq!(l(&m, 0).downs.get("timeout"), None);
        // Replies resumed while the kernel holds it down: still down; up
        // with the kernel's next up.
        assert!(m.apply(&half(2, 0, false, 3_100)).is_empty());
        assert_eq!(
            names(&m.apply(&ev(UP, 2, 0, 3_200))),
            ["link_up", "node_up"]
        );
        let out = m.apply(&half(2, 1, false, 3_300));
        assert_eq!(names(&out), ["link_up"]);
        assert_eq!(out[0].cause, "replies_resumed");
        assert_eq!(names(&m.apply(&ev(DOWN, 2, 1, 4_000))), ["link_down"]);
        assert_eq!(l(&m, 1).downs.get("timeout"), Some(&1));
        assert_eq!(l(&m, 1).downs.get("half_open"), Some(&1));
        assert!(m.apply(&half(9, 0, true, 5_000)).is_empty());
        assert_eq!(m.unknown_events, 1);
    }

    #[test]
    fn duplicates_and_unknowns_are_ignored() {
        let mut m = Membership::new("a", &[(2, "b".into(), vec![0])]);
        assert!(m.apply(&ev(DOWN, 2, 0, 5)).len() == 1);
        assert!(m.apply(&ev(DOWN, 2, 0, 6)).is_empty());
        assert!(m.apply(&ev(UP, 9, 0, 7)).is_empty());
        assert!(m.apply(&ev(UP, 2, 5, 7)).is_empty());
        assert_eq!(m.unknown_events, 2);
        assert_eq!(names(&m.apply(&ev(STALE, 2, 0, 8))), ["agent_stale"]);
    }
}
