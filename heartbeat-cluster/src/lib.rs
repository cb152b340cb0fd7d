//! The cluster's decisions as pure state machines: inputs are link events
//! (from any transport), membership messages, operator commands and timer
//! ticks; outputs are messages to send and decisions (views to install,
//! epochs to persist). Nothing here does I/O or reads a clock, so every
//! rule is unit-tested and model-tested without namespaces.
//!
//! - [`wire`]: membership messages, MAC, replay guard.
//! - [`quorum`]: votequorum semantics and tie-breakers.
//! - [`membership`]: membership, coordinator election and epochs.
//! - [`qserver`]: the quorum server's logic and its client side.
//! - [`placement`]: which node owns each package in an agreed view.
//! - [`lease`]: package leases; when a new owner may start a package.

pub mod ids;
pub mod lease;
pub mod membership;
pub mod placement;
pub mod qserver;
pub mod quorum;
pub mod wire;

pub use heartbeat_common::siphash::SipKey;
pub use ids::{Epoch, LinkId, MAX_NODE_ID, NodeId, NodeSet};

// Used by the integration tests (tests/) only.
#[cfg(test)]
use proptest as _;
