//! The heartbeat agent: loads the XDP fast path, sends heartbeats, runs
//! reachability and membership, and exports status, events and metrics.
//! `daemon` is the supervisor that starts one task per subsystem.

pub mod clock;
pub mod cluster;
pub mod config;
pub mod control;
pub mod daemon;
pub mod fastpath;
pub mod journal;
pub mod keyfile;
pub mod metrics;
pub mod pins;
pub mod plan;
pub mod qserver;
pub mod reload;
pub mod sender;
pub mod state;
pub mod status;
pub mod transport;

/// The XDP object built from heartbeat-ebpf, embedded at compile time.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/heartbeat"));
