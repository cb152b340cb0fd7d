//! One line of the event journal.

use serde::{Deserialize, Serialize};

/// What happened. Serialized in snake_case (`link_down`, ...).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A (peer, link) deadline expired.
    LinkDown,
    /// The first valid heartbeat after a down (or ever) on a (peer, link).
    LinkUp,
    /// Every link to a peer is down.
    NodeDown,
    /// The first link to a peer came up.
    NodeUp,
    /// The local dead-man gate closed: the kernel stopped answering for us.
    AgentStale,
    /// A peer's agent reported a state change (stale, restarting, leaving).
    PeerState,
    /// The in-kernel detector deferred a verdict (local stall, late timer).
    DetectionDeferred,
    /// A membership event that starts or shapes a reformation (cause:
    /// node_joined, node_left, node_failed, agent_stale, restarting,
    /// partition, healed, quorum_gained, quorum_lost, halted, adopted, ...).
    Reformation,
    /// A new membership view was agreed and installed.
    ViewInstalled,
    /// The local node's quorum changed.
    QuorumChanged,
    /// A membership message was dropped (bad MAC, replay, ...), counted;
    /// journaled once per reason and peer at most every few seconds.
    MessageDropped,
    /// The configuration was reloaded.
    Reloaded,
    /// A reload was refused; the running configuration stays in force.
    ReloadRefused,
    /// An operator command was carried out.
    Command,
    AgentStarted,
    AgentStopping,
    /// A journal problem (write errors), rate-limited.
    JournalError,
    /// The coordinator placed a package (cause: the placement reason;
    /// `peer`: the new owner, none when it runs nowhere).
    PackagePlaced,
    /// A package action finished here (cause: `start`, `stop`, `monitor`;
    /// detail: its result and duration).
    PackageAction,
    /// A line a package's script wrote (cause: the action; detail: the line).
    PackageOutput,
    /// This node gave a package up (cause: `restart_limit`, `start_failed`,
    /// `hard_failure`, `fatal`) or escalated a failed stop (`stop_failed`).
    PackageFailed,
    /// A start waited for another node to stop or its lease to run out
    /// (cause: `report` or `lease_expired`; peer: that node).
    PackageCleared,
    /// A card of a link with a standby failed (cause: carrier, poll_in,
    /// poll_out; detail names the card).
    NicFailed,
    /// A link moved to its other card (cause: carrier, poll_in, poll_out,
    /// failback, recovered).
    NicSwitched,
    /// A failed card is healthy again.
    NicRecovered,
}

impl EventKind {
    /// The snake_case name, as in the journal and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::LinkDown => "link_down",
            Self::LinkUp => "link_up",
            Self::NodeDown => "node_down",
            Self::NodeUp => "node_up",
            Self::AgentStale => "agent_stale",
            Self::PeerState => "peer_state",
            Self::DetectionDeferred => "detection_deferred",
            Self::Reformation => "reformation",
            Self::ViewInstalled => "view_installed",
            Self::QuorumChanged => "quorum_changed",
            Self::MessageDropped => "message_dropped",
            Self::Reloaded => "reloaded",
            Self::ReloadRefused => "reload_refused",
            Self::Command => "command",
            Self::AgentStarted => "agent_started",
            Self::AgentStopping => "agent_stopping",
            Self::JournalError => "journal_error",
            Self::PackagePlaced => "package_placed",
            Self::PackageAction => "package_action",
            Self::PackageOutput => "package_output",
            Self::PackageFailed => "package_failed",
            Self::PackageCleared => "package_cleared",
            Self::NicFailed => "nic_failed",
            Self::NicSwitched => "nic_switched",
            Self::NicRecovered => "nic_recovered",
        }
    }
}

impl core::fmt::Display for EventKind {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One journal line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub event: EventKind,
    /// The node that wrote the entry.
    pub node: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_id: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<u8>,
    /// Why (`timeout`, `all_links_down`, `SIGTERM`, ...).
    pub cause: String,
    /// The kernel's (or agent's) CLOCK_MONOTONIC timestamp of the event.
    pub kernel_mono_ns: u64,
    /// `kernel_mono_ns` converted to wall-clock ns since the epoch.
    pub kernel_wall_ns: u64,
    pub kernel_time: String,
    /// Wall-clock ns when the agent handled the event.
    pub handled_wall_ns: u64,
    pub handled_time: String,
    /// For link_down/node_down: expiry minus the last valid packet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since_last_rx_ns: Option<u64>,
    /// For view_installed / quorum_changed: the membership epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
    /// For view_installed: the members (node names) and coordinator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub members: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coordinator: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quorate: Option<bool>,
    /// Free text for people (a reload error, a script's output line).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// For package events: the package's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub package: Option<String>,
}

impl Entry {
    /// An entry with the required fields; the caller fills the rest.
    pub fn bare(event: EventKind, node: &str, cause: &str) -> Self {
        Self {
            event,
            node: node.to_owned(),
            peer: None,
            peer_id: None,
            link: None,
            cause: cause.to_owned(),
            kernel_mono_ns: 0,
            kernel_wall_ns: 0,
            kernel_time: String::new(),
            handled_wall_ns: 0,
            handled_time: String::new(),
            since_last_rx_ns: None,
            epoch: None,
            members: None,
            coordinator: None,
            quorate: None,
            detail: None,
            package: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_with_snake_case_kinds() {
        let mut e = Entry::bare(EventKind::NodeDown, "alpha", "all_links_down");
        e.peer = Some("beta".into());
        let line = serde_json::to_string(&e).unwrap();
        assert!(line.contains("\"event\":\"node_down\""), "{line}");
        assert!(!line.contains("epoch"), "{line}");
        let back: Entry = serde_json::from_str(&line).unwrap();
        assert_eq!(back, e);
        assert_eq!(EventKind::DetectionDeferred.as_str(), "detection_deferred");
    }
}
