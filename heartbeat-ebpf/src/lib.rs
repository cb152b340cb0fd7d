//! Host-side stub so the agent can name this crate as a build dependency;
//! the XDP program itself is the `heartbeat` binary (src/main.rs).
#![no_std]

// The program's dependencies belong to the binary; the stub names them so
// that `unused_crate_dependencies` holds for the library too.
use aya_ebpf as _;
use heartbeat_common as _;
