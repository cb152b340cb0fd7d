//! Packages (issue #9): services that run on exactly one node and fail over.
//!
//! These are the node-local building blocks; the decisions (which node owns
//! which package, when a new owner may start) are pure and live in
//! `heartbeat_cluster::placement` and `heartbeat_cluster::lease`.
//!
//! - [`runner`]: runs a package's `start`/`stop`/`monitor` (commands or an
//!   OCF resource agent) as a child process group, with a timeout that kills
//!   the whole group, bounded output capture and one action per package at a
//!   time; interprets exit codes as Pacemaker does.
//! - [`addresses`]: adds and removes a package's addresses through rtnetlink
//!   and announces them (gratuitous ARP, unsolicited neighbour
//!   advertisements).

pub mod addresses;
pub mod runner;
