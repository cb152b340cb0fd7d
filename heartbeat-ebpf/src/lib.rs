//! Host-side stub so the agent can name this crate as a build dependency;
//! the XDP program itself is the `heartbeat` binary (src/main.rs).
#![no_std]
