//! The heartbeat agent: loads the XDP fast path, sends heartbeats, turns maps
//! and events into membership decisions, and exports them.

pub mod clock;
pub mod config;
pub mod control;
pub mod daemon;
pub mod fastpath;
pub mod journal;
pub mod keyfile;
pub mod membership;
pub mod metrics;
pub mod qserver;
pub mod sender;
pub mod status;

/// The XDP object built from heartbeat-ebpf, embedded at compile time.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/heartbeat"));
