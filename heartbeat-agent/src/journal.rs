//! The event journal: every state change as one JSON line, appended to
//! `events_file` (when configured), kept in a bounded in-memory history for
//! `heartbeat-agent events`, and broadcast to followers.

use std::{
    collections::VecDeque,
    fs::{File, OpenOptions},
    io::{self, Write as _},
    path::Path,
};

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::clock;

/// How many entries the in-memory history keeps.
pub const HISTORY: usize = 1024;

/// One journal line.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// `link_down`, `link_up`, `node_down`, `node_up`, `agent_stale`,
    /// `detection_deferred`, `agent_started`, `agent_stopping`.
    pub event: String,
    /// The node that wrote the entry.
    pub node: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_id: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<u8>,
    pub cause: String,
    /// The kernel's CLOCK_MONOTONIC timestamp of the event.
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
}

impl Entry {
    /// An entry stamped with a kernel monotonic time, handled now.
    pub fn new(event: &str, node: &str, cause: &str, kernel_mono_ns: u64) -> Self {
        let kernel_wall_ns = clock::mono_to_wall_ns(kernel_mono_ns);
        let handled_wall_ns = clock::wall_ns();
        Self {
            event: event.to_owned(),
            node: node.to_owned(),
            cause: cause.to_owned(),
            kernel_mono_ns,
            kernel_wall_ns,
            kernel_time: clock::rfc3339_ns(kernel_wall_ns),
            handled_wall_ns,
            handled_time: clock::rfc3339_ns(handled_wall_ns),
            ..Self::default()
        }
    }
}

/// Owner of the journal file, history and broadcast.
pub struct Journal {
    file: Option<File>,
    history: VecDeque<String>,
    tx: broadcast::Sender<String>,
    write_errors: u64,
}

impl Journal {
    /// Opens (appends to) `path` when given.
    pub fn open(path: Option<&Path>) -> io::Result<Self> {
        let file = match path {
            Some(p) => {
                if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir)?;
                }
                Some(OpenOptions::new().create(true).append(true).open(p)?)
            }
            None => None,
        };
        let (tx, _) = broadcast::channel(HISTORY);
        Ok(Self {
            file,
            history: VecDeque::with_capacity(HISTORY),
            tx,
            write_errors: 0,
        })
    }

    /// Records one entry everywhere.
    pub fn record(&mut self, entry: &Entry) {
        let line = match serde_json::to_string(entry) {
            Ok(l) => l,
            Err(_) => return,
        };
        if let Some(f) = self.file.as_mut()
            && writeln!(f, "{line}").is_err()
        {
            self.write_errors += 1;
        }
        if self.history.len() == HISTORY {
            self.history.pop_front();
        }
        self.history.push_back(line.clone());
        let _ = self.tx.send(line);
    }

    pub fn history(&self) -> impl Iterator<Item = &String> {
        self.history.iter()
    }

    pub fn subscribe(&self) -> broadcast::Receiver<String> {
        self.tx.subscribe()
    }

    pub fn write_errors(&self) -> u64 {
        self.write_errors
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_history_is_bounded() {
        let mut j = Journal::open(None).unwrap();
        let mut rx = j.subscribe();
        let mut e = Entry::new("link_down", "a", "timeout", 1_000);
        e.peer = Some("b".into());
        j.record(&e);
        let first: Entry = serde_json::from_str(&rx.try_recv().unwrap()).unwrap();
        assert_eq!(first.event, "link_down");
        assert_eq!(first.kernel_mono_ns, 1_000);
        assert!(first.kernel_wall_ns > 0);
        for i in 0..(HISTORY + 5) {
            let mut e = Entry::new("link_down", "a", "timeout", 1_000 + i as u64);
            e.peer = Some("b".into());
            j.record(&e);
        }
        assert_eq!(j.history().count(), HISTORY);
        // A follower that fell behind is told so rather than blocking the journal.
        assert!(rx.try_recv().is_err());
    }
}
