//! Pending (enable in fuzz/Cargo.toml once the serial branch is merged; fix
//! the path to wherever its decoder lands): the serial frame decoder on any
//! bytes.
#![no_main]

heartbeat_fuzz::decoder_target!(heartbeat_agent::serial::decode);
