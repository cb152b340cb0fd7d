//! The bench's network is the harness's two-node topology
//! ([`heartbeat_tests::topology`]): one copy, shared with the tests. Load
//! windows use [`Wiring::Plain`] (a node with one NIC each); the faults that
//! need a switch-like wire (silent egress, A's link down) use
//! [`Wiring::Bridged`].

pub use heartbeat_tests::topology::{IP_A, IP_B, Placement, Side, TwoNodes as Topology, Wiring};
