//! The serial line's survivor rule (issue #11): when every network link
//! between the two nodes of a two-node cluster is down but the serial line
//! still carries heartbeats, both nodes know the other is alive, so neither
//! fails over on silence alone; they exchange their network views over the
//! line and agree on one survivor that keeps (or takes) the packages, while
//! the other stops them.
//!
//! The rule is a pure function of what both nodes know after one exchange
//! (their ids, priorities and network views), and symmetric: both nodes
//! compute it on the same inputs and get the same answer.
//!
//! Order: the better network view ([`NetworkView::score`]: more ping
//! targets answering, then more network links up), then the higher
//! priority, then the lower node id.

use std::cmp::Ordering;

use crate::ids::NodeId;
pub use crate::serial::NetworkView;

/// One node as the rule sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub node: NodeId,
    pub priority: u32,
    pub view: NetworkView,
}

/// Which of the two carries on.
pub fn survivor(a: &Candidate, b: &Candidate) -> NodeId {
    match better(a, b) {
        Ordering::Less => b.node,
        _ => a.node,
    }
}

/// `a` against `b`: `Greater` when `a` survives.
fn better(a: &Candidate, b: &Candidate) -> Ordering {
    a.view
        .score()
        .cmp(&b.view.score())
        .then(a.priority.cmp(&b.priority))
        .then(b.node.cmp(&a.node))
}

/// What the serial line tells the packages side about the peer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Verdict {
    /// No serial line configured, or a network link to the peer is up: the
    /// membership view decides alone.
    #[default]
    NotNeeded,
    /// Every network link to the peer is down and the serial line is
    /// silent too: the peer is presumed down; the quorum rules apply.
    PeerSilent,
    /// Every network link to the peer is down, the serial line is alive:
    /// `survivor` keeps or takes the packages; the other stops them.
    Split { survivor: NodeId },
}

/// The verdict from what the local node knows now: whether any network
/// link to the peer is up, whether the serial line is up, and both
/// candidates (the peer's from its last frame).
pub fn verdict(
    network_up: bool,
    serial_up: bool,
    local: &Candidate,
    peer: Option<&Candidate>,
) -> Verdict {
    match (network_up, serial_up, peer) {
        (true, _, _) => Verdict::NotNeeded,
        (false, true, Some(p)) => Verdict::Split {
            survivor: survivor(local, p),
        },
        _ => Verdict::PeerSilent,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn c(node: u16, priority: u32, links: u8, targets: u32) -> Candidate {
        Candidate {
            node: NodeId(node),
            priority,
            view: NetworkView { links, targets },
        }
    }

    #[test]
    fn view_then_priority_then_id() {
        // Better view wins over priority.
        assert_eq!(survivor(&c(1, 200, 0b1, 0), &c(2, 100, 0b11, 0)), NodeId(2));
        // Targets count before links.
        assert_eq!(survivor(&c(1, 100, 0b111, 0), &c(2, 100, 0, 1)), NodeId(2));
        // Same view: higher priority.
        assert_eq!(survivor(&c(1, 100, 0b1, 0), &c(2, 150, 0b1, 0)), NodeId(2));
        // Same view and priority: lower id.
        assert_eq!(survivor(&c(2, 100, 0b1, 0), &c(1, 100, 0b1, 0)), NodeId(1));
        // Which links does not matter, only how many.
        assert_eq!(
            survivor(&c(2, 100, 0b10, 0), &c(1, 100, 0b01, 0)),
            NodeId(1)
        );
    }

    #[test]
    fn verdicts() {
        let (a, b) = (c(1, 100, 1, 0), c(2, 100, 1, 0));
        assert_eq!(verdict(true, true, &a, Some(&b)), Verdict::NotNeeded);
        assert_eq!(verdict(false, false, &a, Some(&b)), Verdict::PeerSilent);
        assert_eq!(verdict(false, true, &a, None), Verdict::PeerSilent);
        assert_eq!(
            verdict(false, true, &a, Some(&b)),
            Verdict::Split {
                survivor: NodeId(1)
            }
        );
    }

    proptest! {
        /// Both nodes compute the same survivor, and it is one of them.
        #[test]
        fn symmetric(a in (1u16..64, any::<u32>(), any::<u8>(), any::<u32>()),
                     b in (1u16..64, any::<u32>(), any::<u8>(), any::<u32>())) {
            prop_assume!(a.0 != b.0);
            let a = c(a.0, a.1, a.2, a.3);
            let b = c(b.0, b.1, b.2, b.3);
            let s = survivor(&a, &b);
            prop_assert_eq!(s, survivor(&b, &a));
            prop_assert!(s == a.node || s == b.node);
        }
    }
}
