//! Typed identifiers shared by the whole agent: a node, a heartbeat link
//! (network), and a membership epoch.

use core::fmt;

use serde::{Deserialize, Serialize};

/// A node's id (`[[node]] id`, 1..=63 today).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NodeId(pub u16);

/// A heartbeat network's id (`[[node.link]] id`, 0..=7 today): the same id on
/// two nodes is the same network.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct LinkId(pub u8);

/// A membership epoch: raised by every reformation, persisted across
/// restarts, never goes back.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Epoch(pub u64);

impl Epoch {
    /// The next epoch.
    pub fn next(self) -> Self {
        Self(self.0.saturating_add(1))
    }
}

/// Largest node id a [`NodeSet`] (and so the cluster) can hold.
pub const MAX_NODE_ID: u16 = 63;

impl NodeId {
    /// Whether the id can be a cluster member (1..=[`MAX_NODE_ID`]).
    pub fn is_valid(self) -> bool {
        (1..=MAX_NODE_ID).contains(&self.0)
    }
}

/// A set of node ids 1..=63 as a bitmap (bit `i` is node `i`); the wire
/// form of every member set. Iterates in ascending id order.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct NodeSet(u64);

impl NodeSet {
    /// The empty set.
    pub const EMPTY: Self = Self(0);

    /// The raw bitmap (bit 0 is always clear).
    pub fn bits(self) -> u64 {
        self.0
    }

    /// From a raw bitmap; bit 0 (no node 0) is dropped.
    pub fn from_bits(bits: u64) -> Self {
        Self(bits & !1)
    }

    /// The set holding only `id` (empty if the id is out of range).
    pub fn single(id: NodeId) -> Self {
        let mut s = Self::EMPTY;
        s.insert(id);
        s
    }

    /// Adds `id`; ids outside 1..=63 are ignored (returns false).
    pub fn insert(&mut self, id: NodeId) -> bool {
        if !id.is_valid() {
            return false;
        }
        self.0 |= 1u64 << id.0;
        true
    }

    /// Removes `id`.
    pub fn remove(&mut self, id: NodeId) {
        if id.is_valid() {
            self.0 &= !(1u64 << id.0);
        }
    }

    /// Whether `id` is in the set.
    pub fn contains(self, id: NodeId) -> bool {
        id.is_valid() && self.0 & (1u64 << id.0) != 0
    }

    /// Number of members.
    pub fn len(self) -> usize {
        self.0.count_ones() as usize
    }

    /// Whether the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Members of both.
    pub fn intersection(self, other: Self) -> Self {
        Self(self.0 & other.0)
    }

    /// Members of either.
    pub fn union(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }

    /// Whether every member of `self` is in `other`.
    pub fn is_subset(self, other: Self) -> bool {
        self.0 & !other.0 == 0
    }

    /// Members in `self` but not in `other`.
    pub fn difference(self, other: Self) -> Self {
        Self(self.0 & !other.0)
    }

    /// The lowest member.
    pub fn first(self) -> Option<NodeId> {
        if self.0 == 0 {
            None
        } else {
            Some(NodeId(self.0.trailing_zeros() as u16))
        }
    }

    /// Members in ascending id order.
    pub fn iter(self) -> impl Iterator<Item = NodeId> {
        let mut bits = self.0;
        core::iter::from_fn(move || {
            if bits == 0 {
                return None;
            }
            let i = bits.trailing_zeros();
            bits &= bits - 1;
            Some(NodeId(i as u16))
        })
    }
}

impl FromIterator<NodeId> for NodeSet {
    fn from_iter<T: IntoIterator<Item = NodeId>>(iter: T) -> Self {
        let mut s = Self::EMPTY;
        for id in iter {
            s.insert(id);
        }
        s
    }
}

impl fmt::Display for NodeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("{")?;
        for (i, id) in self.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{id}")?;
        }
        f.write_str("}")
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Display for LinkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_display_as_plain_numbers_and_epochs_saturate() {
        assert_eq!(NodeId(3).to_string(), "3");
        assert_eq!(LinkId(0).to_string(), "0");
        // Width and alignment apply as to the bare number.
        assert_eq!(format!("{:>3}|{:<2}|", NodeId(7), LinkId(1)), "  7|1 |");
        assert_eq!(Epoch(7).next(), Epoch(8));
        assert_eq!(Epoch(u64::MAX).next(), Epoch(u64::MAX));
    }

    #[test]
    fn node_sets_hold_ids_1_to_63_only() {
        let mut s = NodeSet::EMPTY;
        assert!(!s.insert(NodeId(0)));
        assert!(!s.insert(NodeId(64)));
        assert!(s.insert(NodeId(63)));
        assert!(s.insert(NodeId(1)));
        assert!(s.insert(NodeId(5)));
        assert_eq!(s.len(), 3);
        assert_eq!(
            s.iter().collect::<Vec<_>>(),
            vec![NodeId(1), NodeId(5), NodeId(63)]
        );
        assert_eq!(s.first(), Some(NodeId(1)));
        assert_eq!(s.to_string(), "{1,5,63}");
        assert_eq!(NodeSet::from_bits(1).bits(), 0);
        s.remove(NodeId(1));
        assert!(!s.contains(NodeId(1)));
        assert!(NodeSet::single(NodeId(5)).is_subset(s));
    }
}
