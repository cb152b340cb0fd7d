//! Wire format and BPF map types shared by the heartbeat XDP program and the agent.
//!
//! Everything here is `no_std` so the eBPF crate can use it, and is compiled for
//! the host too so the parsers, MAC and checksums are unit-tested with cargo.
#![cfg_attr(not(test), no_std)]

pub mod checksum;
pub mod frame;
pub mod maps;
pub mod siphash;
pub mod wire;
pub mod xdpwalk;

pub use maps::*;
pub use wire::*;
