//! The cluster's decisions as pure state machines: inputs are link events
//! (from any transport), membership messages, operator commands and timer
//! ticks; outputs are messages to send and decisions (views to install,
//! epochs to persist). Nothing here does I/O or reads a clock, so every
//! rule is unit-tested and model-tested without namespaces.

pub mod ids;

pub use ids::{Epoch, LinkId, NodeId};
