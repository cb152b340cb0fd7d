//! The control protocol: one JSON request per line on the agent's unix
//! socket; answers are JSON lines. Every bad request gets one error line
//! (`{"error":"..."}`) and the connection is closed.
//!
//! | request | answer |
//! |---|---|
//! | `{"command":"status"}` | one [`StatusReport`](crate::status::StatusReport) line |
//! | `{"command":"events","follow":bool}` | journal lines (and new ones with follow) |
//! | `{"command":"reload"}` | one [`Done`] line, or an error line |
//! | `{"command":"cluster_start"}` | one [`Done`] line |
//! | `{"command":"node_halt","node":NAME?}` | one [`Done`] line |
//! | `{"command":"node_start","node":NAME?}` | one [`Done`] line |
//! | `{"command":"restart"}` | one [`Done`] line, then the agent exits for an announced restart |

use serde::{Deserialize, Serialize};

/// Longest request line accepted (bytes, with the newline).
pub const MAX_REQUEST: usize = 64 * 1024;

/// A request from a client.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    // Empty struct variants rather than unit variants: serde ignores
    // unknown fields next to the tag of a unit variant, and the rule here
    // is one: unknown fields are rejected for every command.
    Status {},
    Events {
        #[serde(default)]
        follow: bool,
    },
    /// Re-read the configuration and key file; apply what can change live.
    Reload {},
    /// Form the cluster now (manual start, or stop waiting for all nodes).
    ClusterStart {},
    /// Leave the cluster gracefully (this node; another node's name is
    /// refused: halt it on that node).
    NodeHalt {
        #[serde(default)]
        node: Option<String>,
    },
    /// Join the cluster again after a halt.
    NodeStart {
        #[serde(default)]
        node: Option<String>,
    },
    /// Exit for an announced restart: the XDP program stays attached,
    /// pinned, and keeps answering for `cluster.restart_window` while the
    /// next agent starts and adopts it.
    Restart {},
    /// Move a package to a node (it stays there while that node may run
    /// it, whatever its failback policy).
    PackageMove {
        name: String,
        node: String,
    },
    /// Let a stopped package run again (also clears its bans and errors).
    PackageStart {
        name: String,
    },
    /// Stop a package everywhere.
    PackageStop {
        name: String,
    },
    /// Let a package run on a node again (no node: everywhere).
    PackageEnable {
        name: String,
        #[serde(default)]
        node: Option<String>,
    },
    /// Keep a package off a node (no node: stop it everywhere).
    PackageDisable {
        name: String,
        #[serde(default)]
        node: Option<String>,
    },
    /// Maintenance: nothing moves; monitors keep reporting.
    ClusterFreeze {},
    /// End maintenance.
    ClusterUnfreeze {},
}

impl Request {
    /// Every command's name, for error messages.
    pub const KNOWN: &'static str = "status, events, reload, cluster_start, node_halt, node_start, restart, package_move, \
         package_start, package_stop, package_enable, package_disable, cluster_freeze, \
         cluster_unfreeze";

    /// Decodes one request line (without its newline). Pure: the control
    /// socket and the fuzz target both use it.
    pub fn decode(line: &[u8]) -> Result<Self, String> {
        let text = std::str::from_utf8(line).map_err(|_| "request is not UTF-8 text".to_owned())?;
        serde_json::from_str(text.trim())
            .map_err(|e| format!("bad request ({e}); known commands: {}", Self::KNOWN))
    }
}

/// The answer to a command that changes something.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Done {
    /// What was done, for people.
    pub done: String,
}

/// An error answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorLine {
    pub error: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_decode_and_reject_unknown_fields_everywhere() {
        assert_eq!(
            Request::decode(br#"{"command":"status"}"#),
            Ok(Request::Status {})
        );
        assert_eq!(
            serde_json::to_string(&Request::Status {}).unwrap(),
            r#"{"command":"status"}"#
        );
        assert_eq!(
            Request::decode(br#"{"command":"events","follow":true}"#),
            Ok(Request::Events { follow: true })
        );
        assert_eq!(
            Request::decode(br#"{"command":"node_halt"}"#),
            Ok(Request::NodeHalt { node: None })
        );
        for bad in [
            &br#"{"command":"status","x":1}"#[..],
            br#"{"command":"events","follow":true,"x":1}"#,
            br#"{"command":"nope"}"#,
            b"\xff\xfe",
            b"",
            b"[]",
        ] {
            assert!(
                Request::decode(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(Request::decode(b"\xff").unwrap_err().contains("UTF-8"));
    }
}
