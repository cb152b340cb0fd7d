//! The heartbeat agent: loads the XDP fast path, sends heartbeats, runs
//! reachability and membership, and exports status, events and metrics.
//! `daemon` is the supervisor that starts one task per subsystem.

pub mod clock;
pub mod cluster;
pub mod config;
pub mod control;
pub mod daemon;
pub mod fastpath;
pub mod fence;
pub mod journal;
pub mod keyfile;
pub mod metrics;
pub mod netif;
pub mod packages;
pub mod pins;
pub mod plan;
pub mod qserver;
pub mod reload;
pub mod sender;
pub mod sequence;
pub mod serial;
pub mod state;
pub mod status;
pub mod transport;
pub mod watchdog;

// Used by the binary (src/main.rs) only.
use anyhow as _;
use clap as _;
use tracing_subscriber as _;

/// The XDP object built from heartbeat-ebpf, embedded at compile time.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/heartbeat"));
