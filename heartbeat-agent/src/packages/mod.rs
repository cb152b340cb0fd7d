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
//! - [`task`]: the subsystem task that feeds the packages state machine
//!   (`heartbeat_cluster::packages`: placement, restart in place up to
//!   `restart_limit`, bans, the start rule) and carries out its decisions.
//!
//! The configuration (`[[package]]`) is read by [`crate::config`] into
//! [`crate::config::PackageConfig`]; [`policies`] turns it into placement
//! policies.

pub mod addresses;
pub mod runner;
pub mod task;

use heartbeat_cluster::placement::{PackageId, PackagePolicy};

use crate::config::PackageConfig;

/// The placement policies of the configured packages; a package's id is
/// its index among `[[package]]`.
pub fn policies(packages: &[PackageConfig]) -> Vec<PackagePolicy> {
    packages
        .iter()
        .zip(0u16..)
        .map(|(p, i)| PackagePolicy {
            id: PackageId(i),
            nodes: p.nodes.clone(),
            failover: p.failover_policy,
            failback: p.failback_policy,
            on_all_unhealthy: p.on_all_unhealthy,
        })
        .collect()
}
