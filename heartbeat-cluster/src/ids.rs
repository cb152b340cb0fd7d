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

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Display for LinkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_display_as_plain_numbers_and_epochs_saturate() {
        assert_eq!(NodeId(3).to_string(), "3");
        assert_eq!(LinkId(0).to_string(), "0");
        assert_eq!(Epoch(7).next(), Epoch(8));
        assert_eq!(Epoch(u64::MAX).next(), Epoch(u64::MAX));
    }
}
