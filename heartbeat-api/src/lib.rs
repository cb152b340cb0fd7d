//! The JSON types of heartbeat's operator interfaces, defined once:
//! - [`journal`]: one line of the event journal (`events_file`,
//!   `heartbeat-agent events`);
//! - [`status`]: the status report (`heartbeat-agent status --json`);
//! - [`control`]: requests and answers on the control socket.
//!
//! The agent writes them; its CLI, `cargo xtask demo`, the benchmark and the
//! tests read them through these types rather than by key. Every type
//! round-trips through serde; unknown fields in requests are rejected.

pub mod control;
pub mod journal;
pub mod status;

pub use heartbeat_cluster::{Epoch, LinkId, NodeId};
