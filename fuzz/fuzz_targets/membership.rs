//! Pending (enable in fuzz/Cargo.toml once the cluster branch is merged):
//! the membership message decoder on any bytes.
#![no_main]

heartbeat_fuzz::decoder_target!(heartbeat_cluster::wire::decode);
