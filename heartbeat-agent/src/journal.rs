//! The event journal: every state change as one JSON line, appended to
//! `events_file` (when configured), kept in a bounded in-memory history for
//! `heartbeat-agent events`, and broadcast to followers.
//!
//! The journal task owns the history and the broadcast; the file is written
//! by a thread of its own, so a slow disk, a full one (`/dev/full`) or a FIFO
//! nobody reads can never hold up the agent's tasks, let alone its startup.
//! Producers never block either: entries go through a bounded channel and
//! what does not fit is counted. Write errors are counted, exported in
//! status and metrics, and logged at most once every [`LOG_EVERY`].
//! [`JournalHandle::reopen`] (SIGHUP, `reload`) reopens the file, so a
//! rotated or deleted journal is written again.

use std::{
    collections::VecDeque,
    fs::{File, OpenOptions},
    io::Write as _,
    os::unix::fs::OpenOptionsExt as _,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
        mpsc as std_mpsc,
    },
    time::{Duration, Instant},
};

pub use heartbeat_api::journal::{Entry, EventKind};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::clock;

/// How many entries the in-memory history keeps.
pub const HISTORY: usize = 1024;
/// Entries that may wait for the journal task before producers drop them.
const QUEUE: usize = 4096;
/// Lines that may wait for the file writer before they are dropped.
const FILE_QUEUE: usize = 4096;
/// Write errors are logged at most this often.
pub const LOG_EVERY: Duration = Duration::from_secs(10);

/// An entry stamped with a monotonic time (the kernel's, or now), handled now.
pub fn entry(event: EventKind, node: &str, cause: &str, mono_ns: u64) -> Entry {
    let mut e = Entry::bare(event, node, cause);
    stamp(&mut e, mono_ns);
    e
}

/// Fills the time fields of `e` from a CLOCK_MONOTONIC timestamp.
pub fn stamp(e: &mut Entry, mono_ns: u64) {
    let kernel_wall_ns = clock::mono_to_wall_ns(mono_ns);
    let handled_wall_ns = clock::wall_ns();
    e.kernel_mono_ns = mono_ns;
    e.kernel_wall_ns = kernel_wall_ns;
    e.kernel_time = clock::rfc3339_ns(kernel_wall_ns);
    e.handled_wall_ns = handled_wall_ns;
    e.handled_time = clock::rfc3339_ns(handled_wall_ns);
}

/// Counters of the journal, shared with status and metrics.
#[derive(Debug, Default)]
pub struct JournalStats {
    /// Lines that could not be written to the file.
    pub write_errors: AtomicU64,
    /// Entries dropped because a queue was full.
    pub dropped: AtomicU64,
    /// Entries recorded, by kind (index: position in [`KINDS`]).
    pub recorded: [AtomicU64; KINDS.len()],
}

/// Every event kind, for per-kind counters.
pub const KINDS: [EventKind; 20] = [
    EventKind::LinkDown,
    EventKind::LinkUp,
    EventKind::NodeDown,
    EventKind::NodeUp,
    EventKind::AgentStale,
    EventKind::PeerState,
    EventKind::DetectionDeferred,
    EventKind::Reformation,
    EventKind::ViewInstalled,
    EventKind::QuorumChanged,
    EventKind::MessageDropped,
    EventKind::Reloaded,
    EventKind::ReloadRefused,
    EventKind::Command,
    EventKind::AgentStarted,
    EventKind::AgentStopping,
    EventKind::JournalError,
    EventKind::NicFailed,
    EventKind::NicSwitched,
    EventKind::NicRecovered,
];

enum Cmd {
    Record(Box<Entry>),
    Follow(
        oneshot::Sender<(Vec<String>, Option<broadcast::Receiver<String>>)>,
        bool,
    ),
    Reopen,
}

/// A cheap, cloneable way to reach the journal task.
#[derive(Clone)]
pub struct JournalHandle {
    tx: mpsc::Sender<Cmd>,
    stats: Arc<JournalStats>,
}

impl JournalHandle {
    /// Records an entry; never blocks (a full queue drops and counts it).
    pub fn record(&self, entry: Entry) {
        if self.tx.try_send(Cmd::Record(Box::new(entry))).is_err() {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The history, and with `follow` a receiver of every later line.
    pub async fn history(
        &self,
        follow: bool,
    ) -> Option<(Vec<String>, Option<broadcast::Receiver<String>>)> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(Cmd::Follow(tx, follow)).await.ok()?;
        rx.await.ok()
    }

    /// Reopens the file (after logrotate, or when it was deleted).
    pub fn reopen(&self) {
        let _ = self.tx.try_send(Cmd::Reopen);
    }

    pub fn stats(&self) -> &Arc<JournalStats> {
        &self.stats
    }
}

/// Starts the journal: its task (on the tracker, stopping with `cancel`)
/// and, with a file, the writer thread.
pub fn start(
    path: Option<PathBuf>,
    tracker: &tokio_util::task::TaskTracker,
    cancel: CancellationToken,
) -> JournalHandle {
    let stats = Arc::new(JournalStats::default());
    let (tx, rx) = mpsc::channel(QUEUE);
    let file = path.map(|p| FileWriter::spawn(p, stats.clone()));
    let (btx, _) = broadcast::channel(HISTORY);
    let task = JournalTask {
        history: VecDeque::with_capacity(HISTORY),
        tx: btx,
        file,
        stats: stats.clone(),
    };
    tracker.spawn(task.run(rx, cancel));
    JournalHandle { tx, stats }
}

struct JournalTask {
    history: VecDeque<String>,
    tx: broadcast::Sender<String>,
    file: Option<FileWriter>,
    stats: Arc<JournalStats>,
}

impl JournalTask {
    async fn run(mut self, mut rx: mpsc::Receiver<Cmd>, cancel: CancellationToken) {
        loop {
            let cmd = tokio::select! {
                c = rx.recv() => c,
                // Drain what is queued, then stop.
                () = cancel.cancelled() => { rx.close(); rx.recv().await }
            };
            match cmd {
                Some(Cmd::Record(e)) => self.record(&e),
                Some(Cmd::Follow(reply, follow)) => {
                    let sub = follow.then(|| self.tx.subscribe());
                    let _ = reply.send((self.history.iter().cloned().collect(), sub));
                }
                Some(Cmd::Reopen) => {
                    if let Some(f) = &self.file {
                        f.send(Line::Reopen, &self.stats);
                    }
                }
                None => break,
            }
        }
        // Dropping the file writer's sender ends its thread after the
        // queued lines.
    }

    fn record(&mut self, entry: &Entry) {
        let Ok(line) = serde_json::to_string(entry) else {
            return;
        };
        if let Some(i) = KINDS.iter().position(|k| *k == entry.event) {
            self.stats.recorded[i].fetch_add(1, Ordering::Relaxed);
        }
        if let Some(f) = &self.file {
            f.send(Line::Text(line.clone()), &self.stats);
        }
        if self.history.len() == HISTORY {
            self.history.pop_front();
        }
        self.history.push_back(line.clone());
        let _ = self.tx.send(line);
    }
}

enum Line {
    Text(String),
    Reopen,
}

/// The thread that owns the journal file.
struct FileWriter {
    tx: std_mpsc::SyncSender<Line>,
}

impl FileWriter {
    fn spawn(path: PathBuf, stats: Arc<JournalStats>) -> Self {
        let (tx, rx) = std_mpsc::sync_channel(FILE_QUEUE);
        let spawned = std::thread::Builder::new()
            .name("hb-journal".into())
            .spawn(move || write_loop(&path, &rx, &stats));
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the journal writer thread; events_file is not written");
        }
        Self { tx }
    }

    fn send(&self, line: Line, stats: &JournalStats) {
        if self.tx.try_send(line).is_err() {
            stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Opens the journal for appending without ever blocking: a FIFO with no
/// reader fails (ENXIO) instead of waiting for one, and is retried.
fn open(path: &std::path::Path) -> std::io::Result<File> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let f = OpenOptions::new()
        .create(true)
        .append(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)?;
    if f.metadata()?.is_dir() {
        return Err(std::io::Error::other("is a directory"));
    }
    Ok(f)
}

fn write_loop(path: &std::path::Path, rx: &std_mpsc::Receiver<Line>, stats: &JournalStats) {
    let mut file: Option<File> = None;
    let mut last_log: Option<Instant> = None;
    let mut unlogged = 0u64;
    let mut fail = |stats: &JournalStats, what: &str, e: &std::io::Error| {
        stats.write_errors.fetch_add(1, Ordering::Relaxed);
        unlogged += 1;
        if last_log.is_none_or(|t| t.elapsed() >= LOG_EVERY) {
            tracing::error!(
                path = %path.display(),
                errors = unlogged,
                "journal: {what}: {e} (events are still kept in memory and streamed to followers)"
            );
            last_log = Some(Instant::now());
            unlogged = 0;
        }
    };
    while let Ok(line) = rx.recv() {
        let text = match line {
            Line::Reopen => {
                file = None;
                continue;
            }
            Line::Text(t) => t,
        };
        if file.is_none() {
            match open(path) {
                Ok(f) => file = Some(f),
                Err(e) => {
                    fail(stats, "cannot open events_file", &e);
                    continue;
                }
            }
        }
        if let Some(f) = file.as_mut()
            && let Err(e) = writeln!(f, "{text}")
        {
            fail(stats, "cannot write events_file", &e);
            // Reopen on the next line: the file may have been replaced.
            file = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tracker() -> (tokio_util::task::TaskTracker, CancellationToken) {
        (
            tokio_util::task::TaskTracker::new(),
            CancellationToken::new(),
        )
    }

    #[tokio::test]
    async fn history_is_bounded_and_followers_get_new_lines() {
        let (t, c) = tracker();
        let j = start(None, &t, c.clone());
        let (_, sub) = j.history(true).await.unwrap();
        let mut sub = sub.unwrap();
        j.record(entry(EventKind::LinkDown, "a", "timeout", 1_000));
        let first: Entry = serde_json::from_str(&sub.recv().await.unwrap()).unwrap();
        assert_eq!(first.event, EventKind::LinkDown);
        assert!(first.kernel_wall_ns > 0);
        for i in 0..(HISTORY + 5) {
            j.record(entry(EventKind::LinkUp, "a", "heartbeat", i as u64));
        }
        let (h, _) = j.history(false).await.unwrap();
        assert_eq!(h.len(), HISTORY);
        c.cancel();
        t.close();
        t.wait().await;
    }

    #[tokio::test]
    async fn a_full_disk_is_counted_and_never_blocks() {
        let (t, c) = tracker();
        let j = start(Some("/dev/full".into()), &t, c.clone());
        for i in 0..10 {
            j.record(entry(EventKind::LinkUp, "a", "heartbeat", i));
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while j.stats().write_errors.load(Ordering::Relaxed) == 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(j.stats().write_errors.load(Ordering::Relaxed) > 0);
        c.cancel();
        t.close();
        t.wait().await;
    }

    #[tokio::test]
    async fn a_fifo_without_reader_does_not_block() {
        let dir = std::env::temp_dir().join(format!("hb-journal-fifo-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join("events");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let (t, c) = tracker();
        let j = start(Some(fifo), &t, c.clone());
        j.record(entry(EventKind::AgentStarted, "a", "start", 1));
        // The task answers at once: nothing waits for a reader.
        let h = tokio::time::timeout(Duration::from_secs(2), j.history(false))
            .await
            .expect("journal task blocked")
            .unwrap();
        assert_eq!(h.0.len(), 1);
        c.cancel();
        t.close();
        t.wait().await;
        // The writer thread ends after the task (it may still retry the
        // FIFO once): remove the directory after it is gone.
        drop(j);
        tokio::time::sleep(Duration::from_millis(200)).await;
        let _ = std::fs::remove_dir_all(&dir);
    }
}
