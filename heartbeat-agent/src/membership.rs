//! Membership: turns the kernel's per-(peer, link) up/down events into link
//! and node state. A node is up while any of its heartbeat links is up; a
//! link failing while another stays up is a link event, not a node failure.
//!
//! This module is the single owner of that state; it is fed events and
//! returns journal entries describing each change.

use std::collections::BTreeMap;

use heartbeat_common::{Event, defer_cause, event_kind};
use serde::{Deserialize, Serialize};

use crate::journal::Entry;

/// State of a link or a node as the agent sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// No valid packet seen yet.
    Unknown,
    Up,
    Down,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::Up => "up",
            Self::Down => "down",
        }
    }
}

/// One link to a peer.
#[derive(Clone, Debug)]
pub struct LinkView {
    pub state: State,
    /// Kernel monotonic ns of the last transition.
    pub since_mono_ns: u64,
    pub transitions: u64,
}

/// One peer node.
#[derive(Clone, Debug)]
pub struct PeerView {
    pub id: u16,
    pub name: String,
    pub state: State,
    pub since_mono_ns: u64,
    pub links: BTreeMap<u8, LinkView>,
}

/// Link and node state of every peer.
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

    pub fn peers(&self) -> impl Iterator<Item = &PeerView> {
        self.peers.values()
    }

    pub fn peer(&self, id: u16) -> Option<&PeerView> {
        self.peers.get(&id)
    }

    /// Applies one kernel event; returns the journal entries it causes.
    pub fn apply(&mut self, ev: &Event) -> Vec<Entry> {
        let mut out = Vec::new();
        if ev.kind == event_kind::AGENT_STALE {
            let mut e = Entry::new("agent_stale", &self.local_name, "dead_man_gate", ev.at_ns);
            e.peer = self.peers.get(&ev.peer).map(|p| p.name.clone());
            e.peer_id = Some(ev.peer);
            e.link = Some(ev.link);
            out.push(e);
            return out;
        }
        if let Some(cause) = deferral_cause(ev.kind) {
            return self.deferred(ev, cause).into_iter().collect();
        }
        let (new_state, event, cause) = match ev.kind {
            event_kind::LINK_DOWN => (State::Down, "link_down", "timeout"),
            event_kind::LINK_UP => (State::Up, "link_up", "heartbeat"),
            _ => {
                self.unknown_events += 1;
                return out;
            }
        };
        let Some(peer) = self.peers.get_mut(&ev.peer) else {
            self.unknown_events += 1;
            return out;
        };
        let Some(link) = peer.links.get_mut(&ev.link) else {
            self.unknown_events += 1;
            return out;
        };
        if link.state == new_state {
            return out;
        }
        link.state = new_state;
        link.since_mono_ns = ev.at_ns;
        link.transitions += 1;
        let since = (new_state == State::Down).then(|| ev.at_ns.saturating_sub(ev.last_rx_ns));
        let mut e = Entry::new(event, &self.local_name, cause, ev.at_ns);
        e.peer = Some(peer.name.clone());
        e.peer_id = Some(peer.id);
        e.link = Some(ev.link);
        e.since_last_rx_ns = since;
        tracing::info!(
            peer = %peer.name,
            link = ev.link,
            cause,
            since_last_rx_us = since.map(|s| s / 1000),
            "{event}"
        );
        out.push(e);

        let any_up = peer.links.values().any(|l| l.state == State::Up);
        let node_state = if any_up { State::Up } else { State::Down };
        if node_state != peer.state && !(node_state == State::Down && peer.state == State::Unknown)
        {
            peer.state = node_state;
            peer.since_mono_ns = ev.at_ns;
            let (event, cause) = match node_state {
                State::Up => ("node_up", "first_link_up"),
                _ => ("node_down", "all_links_down"),
            };
            let mut e = Entry::new(event, &self.local_name, cause, ev.at_ns);
            e.peer = Some(peer.name.clone());
            e.peer_id = Some(peer.id);
            e.link = Some(ev.link);
            e.since_last_rx_ns = since;
            if node_state == State::Down {
                tracing::warn!(peer = %peer.name, link = ev.link, "node_down: every heartbeat link is down");
            } else {
                tracing::info!(peer = %peer.name, link = ev.link, "node_up");
            }
            out.push(e);
        }
        out
    }
}

/// The cause of a `DEFERRED_*` event kind, as the journal spells it.
fn deferral_cause(kind: u32) -> Option<&'static str> {
    match kind {
        event_kind::DEFERRED_LOCAL_STALL => Some(defer_cause::name(defer_cause::LOCAL_STALL)),
        event_kind::DEFERRED_LATE_TIMER => Some(defer_cause::name(defer_cause::LATE_TIMER)),
        event_kind::DEFERRED_PEER_QUEUED => Some(defer_cause::name(defer_cause::PEER_QUEUED)),
        _ => None,
    }
}

impl Membership {
    /// A deadline expired but the kernel deferred its verdict by one grace
    /// (heartbeat-ebpf deadline.rs): journalled as `detection_deferred`; the
    /// link's state does not change (a `link_down` follows if the grace
    /// runs out).
    fn deferred(&mut self, ev: &Event, cause: &str) -> Option<Entry> {
        let Some(peer) = self.peers.get(&ev.peer) else {
            self.unknown_events += 1;
            return None;
        };
        if !peer.links.contains_key(&ev.link) {
            self.unknown_events += 1;
            return None;
        }
        let since = ev.at_ns.saturating_sub(ev.last_rx_ns);
        let mut e = Entry::new("detection_deferred", &self.local_name, cause, ev.at_ns);
        e.peer = Some(peer.name.clone());
        e.peer_id = Some(peer.id);
        e.link = Some(ev.link);
        e.since_last_rx_ns = Some(since);
        tracing::info!(
            peer = %peer.name,
            link = ev.link,
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

    fn ev(kind: u32, peer: u16, link: u8, at: u64) -> Event {
        Event {
            kind,
            peer,
            link,
            _pad: 0,
            last_rx_ns: at.saturating_sub(500),
            // (tests use at >= 500 so the silence is exactly 500 ns)
            at_ns: at,
        }
    }

    fn names(v: &[Entry]) -> Vec<&str> {
        v.iter().map(|e| e.event.as_str()).collect()
    }

    #[test]
    fn one_link_down_of_two_keeps_node_up() {
        let mut m = Membership::new("a", &[(2, "b".into(), vec![0, 1])]);
        assert_eq!(
            names(&m.apply(&ev(event_kind::LINK_UP, 2, 0, 1_000))),
            ["link_up", "node_up"]
        );
        assert_eq!(
            names(&m.apply(&ev(event_kind::LINK_UP, 2, 1, 1_100))),
            ["link_up"]
        );
        assert_eq!(
            names(&m.apply(&ev(event_kind::LINK_DOWN, 2, 0, 2_000))),
            ["link_down"]
        );
        assert_eq!(m.peer(2).unwrap().state, State::Up);
        let out = m.apply(&ev(event_kind::LINK_DOWN, 2, 1, 3_000));
        assert_eq!(names(&out), ["link_down", "node_down"]);
        assert_eq!(out[1].since_last_rx_ns, Some(500));
        assert_eq!(m.peer(2).unwrap().state, State::Down);
        assert_eq!(
            names(&m.apply(&ev(event_kind::LINK_UP, 2, 1, 4_000))),
            ["link_up", "node_up"]
        );
    }

    #[test]
    fn duplicates_and_unknowns_are_ignored() {
        let mut m = Membership::new("a", &[(2, "b".into(), vec![0])]);
        assert!(m.apply(&ev(event_kind::LINK_DOWN, 2, 0, 5)).len() == 1);
        assert!(m.apply(&ev(event_kind::LINK_DOWN, 2, 0, 6)).is_empty());
        assert!(m.apply(&ev(event_kind::LINK_UP, 9, 0, 7)).is_empty());
        assert!(m.apply(&ev(event_kind::LINK_UP, 2, 5, 7)).is_empty());
        assert!(m.apply(&ev(99, 2, 0, 7)).is_empty());
        assert_eq!(m.unknown_events, 3);
        assert_eq!(
            names(&m.apply(&ev(event_kind::AGENT_STALE, 2, 0, 8))),
            ["agent_stale"]
        );
    }

    #[test]
    fn deferrals_are_journalled_without_a_state_change() {
        let mut m = Membership::new("a", &[(2, "b".into(), vec![0])]);
        m.apply(&ev(event_kind::LINK_UP, 2, 0, 1_000));
        for (kind, cause) in [
            (event_kind::DEFERRED_LOCAL_STALL, "local_stall"),
            (event_kind::DEFERRED_LATE_TIMER, "late_timer"),
            (event_kind::DEFERRED_PEER_QUEUED, "peer_queued"),
        ] {
            let out = m.apply(&ev(kind, 2, 0, 2_000));
            assert_eq!(names(&out), ["detection_deferred"]);
            assert_eq!(out[0].cause, cause);
            assert_eq!(out[0].peer.as_deref(), Some("b"));
            assert_eq!(out[0].since_last_rx_ns, Some(500));
            assert_eq!(m.peer(2).unwrap().state, State::Up);
            assert_eq!(m.peer(2).unwrap().links[&0].state, State::Up);
        }
        assert!(
            m.apply(&ev(event_kind::DEFERRED_LATE_TIMER, 9, 0, 3_000))
                .is_empty()
        );
        assert!(
            m.apply(&ev(event_kind::DEFERRED_LATE_TIMER, 2, 3, 3_000))
                .is_empty()
        );
        assert_eq!(m.unknown_events, 2);
    }
}
