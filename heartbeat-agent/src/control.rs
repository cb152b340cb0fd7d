//! The control socket: a unix stream socket (mode 0600) taking one JSON
//! request per line (the protocol is `heartbeat_api::control`).
//!
//! Requests are untrusted: a line is bounded in size (64 KiB) and time (5 s),
//! must be UTF-8 JSON naming a known command with no unknown field, and
//! every bad request is answered with one error line. At most
//! [`MAX_CLIENTS`] clients are served at once (more are told so and
//! closed); accept errors (EMFILE at the fd limit) are logged at most every
//! few seconds and retried with backoff, never in a busy loop. A follower
//! (`events --follow`) that closes its end is noticed at once.
//!
//! The socket path is never allowed to replace something the agent did not
//! create: a path that exists and is not a socket is refused at startup,
//! and on exit the socket is removed only while it is still ours.

use std::{
    os::unix::fs::{FileTypeExt as _, MetadataExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

pub use heartbeat_api::control::{Done, ErrorLine, MAX_REQUEST, Request};
use thiserror::Error;
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream, unix::OwnedWriteHalf},
    sync::{Semaphore, broadcast, mpsc, oneshot},
};
use tokio_util::sync::CancellationToken;

use crate::{journal::JournalHandle, status::Sources};

/// Clients served at once.
pub const MAX_CLIENTS: usize = 64;
/// How long a client may take to send its request line.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the CLI waits for the agent's answer (not for `--follow`).
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

/// A command for the daemon (everything but status and events), with the
/// channel for its answer: `Ok(what was done)` or `Err(why not)`.
pub struct Call {
    pub request: Request,
    pub reply: oneshot::Sender<Result<String, String>>,
}

#[derive(Debug, Error)]
pub enum ControlError {
    #[error("control socket {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("control socket {path}: another agent is already listening there")]
    InUse { path: PathBuf },
    #[error(
        "control socket {path}: the path exists and is not a socket; refusing to replace it (set [control] socket to another path)"
    )]
    NotASocket { path: PathBuf },
    #[error(
        "no agent answers on {path} (is heartbeat-agent running, and is this its [control] socket?): {source}"
    )]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the agent did not answer within {0:?}")]
    Timeout(Duration),
    #[error("agent answered: {0}")]
    Remote(String),
    #[error("bad answer from the agent: {0}")]
    BadAnswer(String),
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> ControlError + '_ {
    move |source| ControlError::Io {
        path: path.to_owned(),
        source,
    }
}

/// A bound control socket; dropping it removes the socket file if it is
/// still the one we created.
pub struct Bound {
    pub listener: UnixListener,
    path: PathBuf,
    id: (u64, u64),
}

impl Drop for Bound {
    fn drop(&mut self) {
        if let Ok(m) = std::fs::symlink_metadata(&self.path)
            && m.file_type().is_socket()
            && (m.dev(), m.ino()) == self.id
        {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Checks that `path` may be used as the control socket without harming
/// anything: it is absent, or a socket. (Used by `check-config` too.)
pub fn check_path(path: &Path) -> Result<(), ControlError> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if !m.file_type().is_socket() => Err(ControlError::NotASocket {
            path: path.to_owned(),
        }),
        _ => Ok(()),
    }
}

/// Binds the socket (replacing a stale socket, never anything else) with
/// mode 0600.
pub async fn bind(path: &Path) -> Result<Bound, ControlError> {
    check_path(path)?;
    if std::fs::symlink_metadata(path).is_ok() {
        if UnixStream::connect(path).await.is_ok() {
            return Err(ControlError::InUse {
                path: path.to_owned(),
            });
        }
        std::fs::remove_file(path).map_err(io_err(path))?;
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io_err(path))?;
    }
    let listener = UnixListener::bind(path).map_err(io_err(path))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io_err(path))?;
    let m = std::fs::symlink_metadata(path).map_err(io_err(path))?;
    Ok(Bound {
        listener,
        path: path.to_owned(),
        id: (m.dev(), m.ino()),
    })
}

/// What the server needs to answer.
#[derive(Clone)]
pub struct Context {
    pub sources: Sources,
    pub journal: JournalHandle,
    pub calls: mpsc::Sender<Call>,
    /// Clients refused at the cap (shared with metrics for status).
    pub refused: Arc<AtomicU64>,
}

/// Accepts clients until `cancel`.
pub async fn serve(bound: Bound, ctx: Context, cancel: CancellationToken) {
    let limit = Arc::new(Semaphore::new(MAX_CLIENTS));
    let mut backoff = Backoff::new("control socket");
    loop {
        let accepted = tokio::select! {
            a = bound.listener.accept() => a,
            () = cancel.cancelled() => break,
        };
        let (stream, _) = match accepted {
            Ok(s) => {
                backoff.reset();
                s
            }
            Err(e) => {
                tokio::select! {
                    () = backoff.wait(&e) => continue,
                    () = cancel.cancelled() => break,
                }
            }
        };
        let ctx = ctx.clone();
        let cancel = cancel.clone();
        match limit.clone().try_acquire_owned() {
            Ok(permit) => {
                tokio::spawn(async move {
                    let _permit = permit;
                    tokio::select! {
                        _ = handle(stream, ctx) => {}
                        () = cancel.cancelled() => {}
                    }
                });
            }
            Err(_) => {
                ctx.refused.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(async move {
                    let (_, mut wr) = stream.into_split();
                    let msg =
                        format!("too many control clients (at most {MAX_CLIENTS}); try again");
                    let _ = tokio::time::timeout(Duration::from_secs(1), error_line(&mut wr, &msg))
                        .await;
                });
            }
        }
    }
    drop(bound);
}

/// Backoff after accept errors: 10 ms doubling to 1 s; logged at most every
/// 5 s with the number of errors since the last line.
pub struct Backoff {
    what: &'static str,
    delay: Duration,
    errors: u64,
    last_log: Option<tokio::time::Instant>,
}

impl Backoff {
    pub fn new(what: &'static str) -> Self {
        Self {
            what,
            delay: Duration::from_millis(10),
            errors: 0,
            last_log: None,
        }
    }

    pub fn reset(&mut self) {
        self.delay = Duration::from_millis(10);
    }

    pub async fn wait(&mut self, e: &std::io::Error) {
        self.errors += 1;
        if self
            .last_log
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(5))
        {
            tracing::warn!(
                errors = self.errors,
                "{}: accept failed: {e}; backing off {:?}",
                self.what,
                self.delay
            );
            self.last_log = Some(tokio::time::Instant::now());
            self.errors = 0;
        }
        tokio::time::sleep(self.delay).await;
        self.delay = (self.delay * 2).min(Duration::from_secs(1));
    }
}

async fn handle(stream: UnixStream, ctx: Context) -> std::io::Result<()> {
    let (rd, mut wr) = stream.into_split();
    let mut rd = BufReader::new(rd.take(MAX_REQUEST as u64));
    let mut line = Vec::new();
    let n = match tokio::time::timeout(REQUEST_TIMEOUT, rd.read_until(b'\n', &mut line)).await {
        Ok(r) => r?,
        Err(_) => {
            return error_line(&mut wr, "no request line within 5 s").await;
        }
    };
    if n == 0 || line.last() != Some(&b'\n') {
        return error_line(&mut wr, "a request is one JSON line of at most 64 KiB").await;
    }
    line.pop();
    let request = match Request::decode(&line) {
        Ok(r) => r,
        Err(e) => return error_line(&mut wr, &e).await,
    };
    match request {
        Request::Status {} => {
            let report = ctx.sources.report();
            let mut s = serde_json::to_string(&report).unwrap_or_default();
            s.push('\n');
            wr.write_all(s.as_bytes()).await?;
        }
        Request::Events { follow } => {
            let Some((history, sub)) = ctx.journal.history(follow).await else {
                return error_line(&mut wr, "agent is shutting down").await;
            };
            for l in history {
                wr.write_all(l.as_bytes()).await?;
                wr.write_all(b"\n").await?;
            }
            if let Some(rx) = sub {
                follow_events(rx, rd.into_inner().into_inner(), &mut wr).await?;
            }
        }
        other => {
            let (tx, rx) = oneshot::channel();
            if ctx
                .calls
                .send(Call {
                    request: other,
                    reply: tx,
                })
                .await
                .is_err()
            {
                return error_line(&mut wr, "agent is shutting down").await;
            }
            match rx.await {
                Ok(Ok(done)) => {
                    let mut s = serde_json::to_string(&Done { done }).unwrap_or_default();
                    s.push('\n');
                    wr.write_all(s.as_bytes()).await?;
                }
                Ok(Err(e)) => return error_line(&mut wr, &e).await,
                Err(_) => return error_line(&mut wr, "agent is shutting down").await,
            }
        }
    }
    wr.shutdown().await
}

/// Streams journal lines until the client goes away (its end closed: read
/// returns 0 or an error) or the journal ends.
async fn follow_events(
    mut rx: broadcast::Receiver<String>,
    mut rd: tokio::net::unix::OwnedReadHalf,
    wr: &mut OwnedWriteHalf,
) -> std::io::Result<()> {
    let mut scratch = [0u8; 256];
    loop {
        tokio::select! {
            r = rd.read(&mut scratch) => match r {
                // Anything the client sends after its request is ignored;
                // EOF or an error means it is gone.
                Ok(0) | Err(_) => return Ok(()),
                Ok(_) => {}
            },
            m = rx.recv() => match m {
                Ok(l) => {
                    wr.write_all(l.as_bytes()).await?;
                    wr.write_all(b"\n").await?;
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    let msg = format!("follower lagged; {n} events skipped");
                    error_line(wr, &msg).await?;
                }
                Err(broadcast::error::RecvError::Closed) => return Ok(()),
            },
        }
    }
}

async fn error_line(wr: &mut OwnedWriteHalf, msg: &str) -> std::io::Result<()> {
    let s = serde_json::to_string(&ErrorLine {
        error: msg.to_owned(),
    })
    .unwrap_or_default()
        + "\n";
    wr.write_all(s.as_bytes()).await?;
    wr.shutdown().await
}

/// Client side: sends `request` and calls `on_line` for every answer line.
/// Connecting and every answer line are bounded by [`CLIENT_TIMEOUT`],
/// except the lines of `events --follow` after the history.
pub async fn request(
    path: &Path,
    request: &Request,
    mut on_line: impl FnMut(&str) -> Result<(), ControlError>,
) -> Result<(), ControlError> {
    let timeout = CLIENT_TIMEOUT;
    let stream = tokio::time::timeout(timeout, UnixStream::connect(path))
        .await
        .map_err(|_| ControlError::Timeout(timeout))?
        .map_err(|source| ControlError::Connect {
            path: path.to_owned(),
            source,
        })?;
    let (rd, mut wr) = stream.into_split();
    let mut req =
        serde_json::to_string(request).map_err(|e| ControlError::BadAnswer(e.to_string()))?;
    req.push('\n');
    wr.write_all(req.as_bytes()).await.map_err(io_err(path))?;
    let follow = matches!(request, Request::Events { follow: true });
    let mut lines = BufReader::new(rd).lines();
    let mut first = true;
    loop {
        let next = if follow && !first {
            lines.next_line().await
        } else {
            tokio::time::timeout(timeout, lines.next_line())
                .await
                .map_err(|_| ControlError::Timeout(timeout))?
        };
        first = false;
        let Some(line) = next.map_err(io_err(path))? else {
            break;
        };
        if let Ok(e) = serde_json::from_str::<ErrorLine>(&line) {
            return Err(ControlError::Remote(e.error));
        }
        on_line(&line)?;
    }
    Ok(())
}
