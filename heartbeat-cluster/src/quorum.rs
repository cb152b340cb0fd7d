//! Quorum: votes, expected votes and tie-breakers, with corosync
//! votequorum(5) semantics.
//!
//! - Every node has `votes`; a partition is quorate when its present votes
//!   are more than half of the expected votes (`needed = expected / 2 + 1`).
//!   Expected votes are the votes of the *expected set*: every configured
//!   node, until last_man_standing shrinks it; a node that joins is added
//!   back to it.
//! - `two_node`: a two-node cluster is quorate with one node (needed = 1);
//!   implies `wait_for_all`.
//! - `wait_for_all`: not quorate until all configured nodes have been seen
//!   together once since start (or this node joined a quorate view).
//! - `last_man_standing` with `last_man_standing_window`: once a quorate
//!   view has been stable for the window, the expected set becomes the
//!   current members, so the cluster can shrink node by node. It never
//!   shrinks below two nodes' worth (below that a split is exactly half),
//!   except with `auto_tie_breaker`, which lets it go down to one node
//!   (as votequorum does).
//! - `auto_tie_breaker`: with exactly half the expected votes, the half
//!   holding the lowest node id of the expected set is quorate.
//! - Quorum server: with exactly half the expected votes, quorate only if
//!   the quorum server granted this partition the tie for this epoch.
//! - Exactly half and no tie-breaker (configured or reachable): not quorate.
//!
//! As with votequorum, last_man_standing trusts that nodes which left the
//! expected set stay away: a node that was gone while the cluster shrank
//! still expects the old set, and the coordinator takes the union, so it
//! can only make a partition *less* likely to be quorate, except when a
//! shrunk remnant and returning nodes that never saw the shrink meet in a
//! new split (use `wait_for_all` with it, as votequorum advises).
//!
//! Departures from votequorum: no `expected_votes` override and no
//! `auto_tie_breaker_node` (always the lowest id); expected votes travel as
//! a node set in joins and the coordinator takes their union (votequorum
//! takes the highest expected_votes of the members).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ids::{NodeId, NodeSet};

/// Quorum options (the `[cluster.quorum]` section).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuorumOptions {
    /// Two-node cluster: quorum with one node; implies wait_for_all.
    pub two_node: bool,
    /// Not quorate until all nodes were seen together once.
    pub wait_for_all: bool,
    /// Shrink the expected votes to the members after a stable window.
    pub last_man_standing: bool,
    /// How long a quorate view must be stable before LMS shrinks (ns).
    pub last_man_standing_window_ns: u64,
    /// Exactly half: the half with the lowest node id wins.
    pub auto_tie_breaker: bool,
    /// Exactly half: ask the quorum server.
    pub quorum_server: bool,
}

/// How the tie was (or did not need to be) broken.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TieBreaker {
    /// Not exactly half of the votes: the majority rule decides.
    #[default]
    NotNeeded,
    /// Exactly half and no tie-breaker configured: not quorate.
    Tie,
    /// auto_tie_breaker: this half holds the lowest node id.
    AtbWon,
    /// auto_tie_breaker: the other half holds the lowest node id.
    AtbLost,
    /// The quorum server granted this partition the tie.
    QsGranted,
    /// The quorum server gave the tie to another partition.
    QsDenied,
    /// No answer from the quorum server.
    QsUnreachable,
    /// wait_for_all: not all nodes were seen together yet.
    WaitForAll,
}

impl TieBreaker {
    /// Wire value.
    pub fn to_u8(self) -> u8 {
        match self {
            Self::NotNeeded => 0,
            Self::Tie => 1,
            Self::AtbWon => 2,
            Self::AtbLost => 3,
            Self::QsGranted => 4,
            Self::QsDenied => 5,
            Self::QsUnreachable => 6,
            Self::WaitForAll => 7,
        }
    }

    /// From the wire value.
    pub fn from_u8(b: u8) -> Option<Self> {
        Some(match b {
            0 => Self::NotNeeded,
            1 => Self::Tie,
            2 => Self::AtbWon,
            3 => Self::AtbLost,
            4 => Self::QsGranted,
            5 => Self::QsDenied,
            6 => Self::QsUnreachable,
            7 => Self::WaitForAll,
            _ => return None,
        })
    }

    /// Stable label (metrics, status).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotNeeded => "not_needed",
            Self::Tie => "tie",
            Self::AtbWon => "atb_won",
            Self::AtbLost => "atb_lost",
            Self::QsGranted => "qs_granted",
            Self::QsDenied => "qs_denied",
            Self::QsUnreachable => "qs_unreachable",
            Self::WaitForAll => "wait_for_all",
        }
    }
}

/// The quorum of one view.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuorumState {
    /// Votes of the members.
    pub present_votes: u32,
    /// Votes needed for quorum.
    pub needed_votes: u32,
    /// Expected votes.
    pub expected_votes: u32,
    /// Whether the view is quorate.
    pub quorate: bool,
    /// Tie-breaker state.
    pub tie_breaker: TieBreaker,
}

/// The quorum server's verdict for the partition being evaluated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QsVerdict {
    /// Not asked (or not configured).
    NotAsked,
    /// Granted for this epoch.
    Granted,
    /// Given to another partition.
    Denied,
    /// Asked, no answer in time.
    Unreachable,
}

/// The cluster's votes and options.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuorumConfig {
    /// Votes per configured node.
    pub votes: BTreeMap<NodeId, u32>,
    /// Options.
    pub options: QuorumOptions,
}

impl QuorumConfig {
    /// Every configured node.
    pub fn nodes(&self) -> NodeSet {
        self.votes.keys().copied().collect()
    }

    /// Sum of the votes of the configured nodes in `set`.
    pub fn votes_of(&self, set: NodeSet) -> u32 {
        set.iter()
            .filter_map(|n| self.votes.get(&n))
            .fold(0u32, |a, v| a.saturating_add(*v))
    }

    fn wait_for_all(&self) -> bool {
        self.options.wait_for_all || self.options.two_node
    }

    /// The quorum of `members`, given the expected set, whether
    /// wait_for_all is satisfied, and the quorum server's verdict. Pure.
    pub fn evaluate(
        &self,
        members: NodeSet,
        expected: NodeSet,
        wfa_satisfied: bool,
        qs: QsVerdict,
    ) -> QuorumState {
        let members = members.intersection(self.nodes());
        let expected_set = expected.intersection(self.nodes()).union(members);
        let present = self.votes_of(members);
        let expected_votes = self.votes_of(expected_set);
        let two_node = self.options.two_node && expected_set.len() == 2 && self.nodes().len() == 2;
        let needed = if two_node { 1 } else { expected_votes / 2 + 1 };
        let mut q = QuorumState {
            present_votes: present,
            needed_votes: needed,
            expected_votes,
            quorate: false,
            tie_breaker: TieBreaker::NotNeeded,
        };
        let all_seen = members == self.nodes();
        if self.wait_for_all() && !wfa_satisfied && !all_seen {
            q.tie_breaker = TieBreaker::WaitForAll;
            return q;
        }
        if present == 0 {
            return q;
        }
        if two_node || u64::from(present) * 2 > u64::from(expected_votes) {
            q.quorate = true;
            return q;
        }
        if u64::from(present) * 2 < u64::from(expected_votes) {
            return q;
        }
        // Exactly half.
        if self.options.auto_tie_breaker {
            let won = expected_set
                .first()
                .is_some_and(|low| members.contains(low));
            q.quorate = won;
            q.tie_breaker = if won {
                TieBreaker::AtbWon
            } else {
                TieBreaker::AtbLost
            };
        } else if self.options.quorum_server {
            (q.quorate, q.tie_breaker) = match qs {
                QsVerdict::Granted => (true, TieBreaker::QsGranted),
                QsVerdict::Denied => (false, TieBreaker::QsDenied),
                QsVerdict::NotAsked | QsVerdict::Unreachable => (false, TieBreaker::QsUnreachable),
            };
        } else {
            q.tie_breaker = TieBreaker::Tie;
        }
        q
    }

    /// Whether `members` holds exactly half of the expected votes, so that
    /// the quorum server must be asked (only when it is configured and
    /// auto_tie_breaker is not).
    pub fn needs_quorum_server(&self, members: NodeSet, expected: NodeSet) -> bool {
        if !self.options.quorum_server || self.options.auto_tie_breaker {
            return false;
        }
        let expected_set = expected.intersection(self.nodes()).union(members);
        let two_node = self.options.two_node && expected_set.len() == 2 && self.nodes().len() == 2;
        !two_node && u64::from(self.votes_of(members)) * 2 == u64::from(self.votes_of(expected_set))
    }
}

/// A node's quorum memory: the expected set (last_man_standing) and
/// whether wait_for_all is satisfied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Quorum {
    cfg: QuorumConfig,
    expected: NodeSet,
    wfa_ok: bool,
    /// Members of the installed quorate view and since when (LMS).
    stable: Option<(NodeSet, u64)>,
}

impl Quorum {
    /// Fresh at agent start: expects every configured node.
    pub fn new(cfg: QuorumConfig) -> Self {
        let expected = cfg.nodes();
        Self {
            cfg,
            expected,
            wfa_ok: false,
            stable: None,
        }
    }

    /// Live reload: new votes and options. Nodes that were already
    /// configured keep their place in (or out of) the expected set; new
    /// nodes are expected; removed ones are forgotten.
    pub fn reconfigure(&mut self, cfg: QuorumConfig) {
        let old = self.cfg.nodes();
        let new = cfg.nodes();
        self.expected = self.expected.intersection(new).union(new.difference(old));
        self.cfg = cfg;
    }

    /// The configuration.
    pub fn config(&self) -> &QuorumConfig {
        &self.cfg
    }

    /// The nodes whose votes this node expects.
    pub fn expected(&self) -> NodeSet {
        self.expected
    }

    /// Whether wait_for_all is satisfied on this node.
    pub fn wfa_ok(&self) -> bool {
        self.wfa_ok
    }

    /// Records an installed view: members join the expected set; a view of
    /// all nodes, or a quorate one, satisfies wait_for_all; a quorate view
    /// starts the last_man_standing window.
    pub fn installed(&mut self, members: NodeSet, quorate: bool, now_ns: u64) {
        self.expected = self.expected.union(members).intersection(self.cfg.nodes());
        if members == self.cfg.nodes() || quorate {
            self.wfa_ok = true;
        }
        self.stable = quorate.then_some((members, now_ns));
    }

    /// Adopts the union of the members' expected sets (as the coordinator
    /// computed it) so that every member evaluates the same.
    pub fn merge_expected(&mut self, expected: NodeSet) {
        self.expected = self.expected.union(expected).intersection(self.cfg.nodes());
    }

    /// When last_man_standing will next shrink the expected set.
    pub fn lms_deadline_ns(&self) -> Option<u64> {
        let o = &self.cfg.options;
        if !o.last_man_standing {
            return None;
        }
        let (members, since) = self.stable?;
        self.can_shrink_to(members)
            .then(|| since.saturating_add(o.last_man_standing_window_ns))
    }

    fn can_shrink_to(&self, members: NodeSet) -> bool {
        let floor = if self.cfg.options.auto_tie_breaker {
            1
        } else {
            2
        };
        members != self.expected
            && members.is_subset(self.expected)
            && self.cfg.votes_of(members) >= floor
            && members.len() >= floor as usize
    }

    /// last_man_standing: once the quorate view has been stable for the
    /// window, the expected set becomes its members. Returns whether it
    /// changed.
    pub fn tick(&mut self, now_ns: u64) -> bool {
        match (self.lms_deadline_ns(), self.stable) {
            (Some(d), Some((members, _))) if now_ns >= d => {
                self.expected = members;
                true
            }
            _ => false,
        }
    }

    /// Evaluates `members` with this node's expected set (united with
    /// `peer_expected`) and wait_for_all state (or any member's).
    pub fn evaluate(
        &self,
        members: NodeSet,
        peer_expected: NodeSet,
        peer_wfa_ok: bool,
        qs: QsVerdict,
    ) -> QuorumState {
        self.cfg.evaluate(
            members,
            self.expected.union(peer_expected),
            self.wfa_ok || peer_wfa_ok,
            qs,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ids: &[u16]) -> NodeSet {
        ids.iter().map(|i| NodeId(*i)).collect()
    }

    fn cfg(n: u16, options: QuorumOptions) -> QuorumConfig {
        QuorumConfig {
            votes: (1..=n).map(|i| (NodeId(i), 1)).collect(),
            options,
        }
    }

    const NA: QsVerdict = QsVerdict::NotAsked;

    #[test]
    fn majority_of_expected_votes() {
        let c = cfg(5, QuorumOptions::default());
        let all = c.nodes();
        let q = c.evaluate(set(&[1, 2, 3]), all, false, NA);
        assert_eq!(
            (q.present_votes, q.needed_votes, q.expected_votes),
            (3, 3, 5)
        );
        assert!(q.quorate);
        assert!(!c.evaluate(set(&[4, 5]), all, false, NA).quorate);
        assert!(!c.evaluate(NodeSet::EMPTY, all, false, NA).quorate);
    }

    #[test]
    fn votes_are_weighted() {
        let mut c = cfg(3, QuorumOptions::default());
        c.votes.insert(NodeId(1), 3);
        // 5 expected: node 1 alone has 3 > 2.5.
        assert!(c.evaluate(set(&[1]), c.nodes(), false, NA).quorate);
        assert!(!c.evaluate(set(&[2, 3]), c.nodes(), false, NA).quorate);
    }

    #[test]
    fn exactly_half_without_tie_breaker_is_not_quorate() {
        let c = cfg(4, QuorumOptions::default());
        let q = c.evaluate(set(&[1, 2]), c.nodes(), false, NA);
        assert!(!q.quorate);
        assert_eq!(q.tie_breaker, TieBreaker::Tie);
        assert!(!c.evaluate(set(&[3, 4]), c.nodes(), false, NA).quorate);
    }

    #[test]
    fn auto_tie_breaker_gives_the_half_with_the_lowest_id() {
        let c = cfg(
            4,
            QuorumOptions {
                auto_tie_breaker: true,
                ..Default::default()
            },
        );
        let a = c.evaluate(set(&[1, 4]), c.nodes(), false, NA);
        let b = c.evaluate(set(&[2, 3]), c.nodes(), false, NA);
        assert!(a.quorate && !b.quorate);
        assert_eq!(a.tie_breaker, TieBreaker::AtbWon);
        assert_eq!(b.tie_breaker, TieBreaker::AtbLost);
        // Not a tie: majority rule as usual.
        assert!(!c.evaluate(set(&[1]), c.nodes(), false, NA).quorate);
    }

    #[test]
    fn quorum_server_breaks_the_tie_only_when_granted() {
        let c = cfg(
            4,
            QuorumOptions {
                quorum_server: true,
                ..Default::default()
            },
        );
        let half = set(&[3, 4]);
        assert!(c.needs_quorum_server(half, c.nodes()));
        assert!(!c.needs_quorum_server(set(&[1, 2, 3]), c.nodes()));
        assert!(
            c.evaluate(half, c.nodes(), false, QsVerdict::Granted)
                .quorate
        );
        let d = c.evaluate(half, c.nodes(), false, QsVerdict::Denied);
        assert_eq!((d.quorate, d.tie_breaker), (false, TieBreaker::QsDenied));
        let u = c.evaluate(half, c.nodes(), false, QsVerdict::Unreachable);
        assert_eq!(
            (u.quorate, u.tie_breaker),
            (false, TieBreaker::QsUnreachable)
        );
        // A granted answer does not make a minority quorate.
        assert!(
            !c.evaluate(set(&[4]), c.nodes(), false, QsVerdict::Granted)
                .quorate
        );
    }

    #[test]
    fn two_node_is_quorate_alone_after_wait_for_all() {
        let c = cfg(
            2,
            QuorumOptions {
                two_node: true,
                ..Default::default()
            },
        );
        let q = c.evaluate(set(&[1]), c.nodes(), false, NA);
        assert!(!q.quorate);
        assert_eq!(q.tie_breaker, TieBreaker::WaitForAll);
        assert!(c.evaluate(set(&[1, 2]), c.nodes(), false, NA).quorate);
        let q = c.evaluate(set(&[2]), c.nodes(), true, NA);
        assert!(q.quorate);
        assert_eq!(q.needed_votes, 1);
        let mut st = Quorum::new(c);
        assert!(!st.evaluate(set(&[1]), NodeSet::EMPTY, false, NA).quorate);
        st.installed(set(&[1, 2]), true, 0);
        assert!(st.evaluate(set(&[1]), NodeSet::EMPTY, false, NA).quorate);
    }

    #[test]
    fn wait_for_all_waits_for_every_node_once() {
        let c = cfg(
            3,
            QuorumOptions {
                wait_for_all: true,
                ..Default::default()
            },
        );
        let mut st = Quorum::new(c);
        let q = st.evaluate(set(&[1, 2]), NodeSet::EMPTY, false, NA);
        assert_eq!((q.quorate, q.tie_breaker), (false, TieBreaker::WaitForAll));
        // A peer that already saw everyone satisfies it for the view.
        assert!(st.evaluate(set(&[1, 2]), NodeSet::EMPTY, true, NA).quorate);
        st.installed(set(&[1, 2, 3]), true, 0);
        assert!(st.wfa_ok());
        assert!(st.evaluate(set(&[1, 2]), NodeSet::EMPTY, false, NA).quorate);
    }

    #[test]
    fn last_man_standing_shrinks_node_by_node_after_the_window() {
        let opts = QuorumOptions {
            last_man_standing: true,
            last_man_standing_window_ns: 1_000,
            ..Default::default()
        };
        let mut st = Quorum::new(cfg(4, opts));
        st.installed(set(&[1, 2, 3, 4]), true, 0);
        assert_eq!(st.lms_deadline_ns(), None, "nothing to shrink");
        st.installed(set(&[1, 2, 3]), true, 100);
        assert_eq!(st.lms_deadline_ns(), Some(1_100));
        assert!(!st.tick(1_099));
        assert!(st.tick(1_100));
        assert_eq!(st.expected(), set(&[1, 2, 3]));
        // 2 of 3 is quorate.
        let q = st.evaluate(set(&[1, 2]), NodeSet::EMPTY, false, NA);
        assert!(q.quorate);
        st.installed(set(&[1, 2]), true, 2_000);
        assert!(st.tick(3_000));
        assert_eq!(st.expected(), set(&[1, 2]));
        // Never below two nodes without ATB: 1 of 2 is a tie, not quorate.
        let q = st.evaluate(set(&[1]), NodeSet::EMPTY, false, NA);
        assert!(!q.quorate);
        st.installed(set(&[1]), false, 4_000);
        assert_eq!(st.lms_deadline_ns(), None);
        // A node that comes back is expected again.
        st.installed(set(&[1, 2, 3]), true, 5_000);
        assert_eq!(st.expected(), set(&[1, 2, 3]));
    }

    #[test]
    fn without_last_man_standing_the_cluster_cannot_shrink() {
        let mut st = Quorum::new(cfg(4, QuorumOptions::default()));
        st.installed(set(&[1, 2, 3]), true, 0);
        assert!(!st.tick(u64::MAX));
        assert!(!st.evaluate(set(&[1, 2]), NodeSet::EMPTY, false, NA).quorate);
    }

    #[test]
    fn last_man_standing_with_atb_goes_down_to_one_node() {
        let opts = QuorumOptions {
            last_man_standing: true,
            last_man_standing_window_ns: 10,
            auto_tie_breaker: true,
            ..Default::default()
        };
        let mut st = Quorum::new(cfg(3, opts));
        st.installed(set(&[1, 2]), true, 0);
        assert!(st.tick(10));
        let q = st.evaluate(set(&[1]), NodeSet::EMPTY, false, NA);
        assert_eq!((q.quorate, q.tie_breaker), (true, TieBreaker::AtbWon));
        assert!(!st.evaluate(set(&[2]), NodeSet::EMPTY, false, NA).quorate);
        st.installed(set(&[1]), true, 20);
        assert!(st.tick(30));
        assert_eq!(st.expected(), set(&[1]));
    }

    #[test]
    fn reconfigure_expects_new_nodes_and_forgets_removed_ones() {
        let opts = QuorumOptions {
            last_man_standing: true,
            last_man_standing_window_ns: 1,
            ..Default::default()
        };
        let mut st = Quorum::new(cfg(4, opts));
        st.installed(set(&[1, 2, 3]), true, 0);
        assert!(st.tick(1));
        assert_eq!(st.expected(), set(&[1, 2, 3]));
        let mut c = cfg(5, opts);
        c.votes.remove(&NodeId(2));
        st.reconfigure(c);
        assert_eq!(st.expected(), set(&[1, 3, 5]));
    }

    #[test]
    fn tie_breaker_wire_values_round_trip() {
        for b in 0..=255u8 {
            if let Some(t) = TieBreaker::from_u8(b) {
                assert_eq!(t.to_u8(), b);
                assert!(!t.as_str().is_empty());
            }
        }
    }
}
