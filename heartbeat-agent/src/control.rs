//! The control socket: a unix stream socket (mode 0600) taking one JSON
//! request per line. Commands: `{"command":"status"}` answers one JSON
//! line; `{"command":"events","follow":bool}` streams journal lines.
//! Later commands (move a package, halt a node) fit the same shape.
//!
//! Requests are untrusted: bounded in size and time, unknown commands get an
//! error line naming the known ones.

use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use thiserror::Error;
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
    sync::{broadcast, mpsc, oneshot},
};

use crate::status::StatusReport;

/// Longest request line accepted.
pub const MAX_REQUEST: u64 = 64 * 1024;
const KNOWN: &str = "status, events";

/// A request from a client.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    Status,
    Events {
        #[serde(default)]
        follow: bool,
    },
}

/// What the daemon hands back for a request.
pub enum Reply {
    Status(Box<StatusReport>),
    Events {
        history: Vec<String>,
        follow: Option<broadcast::Receiver<String>>,
    },
}

/// A request on its way to the daemon's main loop.
pub struct Call {
    pub request: Request,
    pub reply: oneshot::Sender<Reply>,
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

/// Binds the socket (removing a stale one) with mode 0600.
pub async fn bind(path: &Path) -> Result<UnixListener, ControlError> {
    if path.exists() {
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
    Ok(listener)
}

/// Accepts clients until the listener is dropped.
pub async fn serve(listener: UnixListener, calls: mpsc::Sender<Call>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let calls = calls.clone();
        tokio::spawn(async move {
            let _ = handle(stream, calls).await;
        });
    }
}

async fn handle(stream: UnixStream, calls: mpsc::Sender<Call>) -> std::io::Result<()> {
    let (rd, mut wr) = stream.into_split();
    let mut rd = BufReader::new(rd.take(MAX_REQUEST));
    let mut line = String::new();
    let n = tokio::time::timeout(Duration::from_secs(5), rd.read_line(&mut line))
        .await
        .unwrap_or(Ok(0))?;
    if n == 0 || !line.ends_with('\n') {
        return error_line(&mut wr, "request must be one JSON line of at most 64 KiB").await;
    }
    let request: Request = match serde_json::from_str(line.trim()) {
        Ok(r) => r,
        Err(e) => {
            return error_line(
                &mut wr,
                &format!("bad request ({e}); known commands: {KNOWN}"),
            )
            .await;
        }
    };
    let (tx, rx) = oneshot::channel();
    if calls.send(Call { request, reply: tx }).await.is_err() {
        return error_line(&mut wr, "agent is shutting down").await;
    }
    let Ok(reply) = rx.await else {
        return error_line(&mut wr, "agent is shutting down").await;
    };
    match reply {
        Reply::Status(report) => {
            let mut s = serde_json::to_string(&report).unwrap_or_default();
            s.push('\n');
            wr.write_all(s.as_bytes()).await?;
        }
        Reply::Events { history, follow } => {
            for l in history {
                wr.write_all(l.as_bytes()).await?;
                wr.write_all(b"\n").await?;
            }
            if let Some(mut rx) = follow {
                loop {
                    match rx.recv().await {
                        Ok(l) => {
                            wr.write_all(l.as_bytes()).await?;
                            wr.write_all(b"\n").await?;
                        }
                        Err(broadcast::error::RecvError::Lagged(n)) => {
                            let msg =
                                format!("{{\"error\":\"follower lagged; {n} events skipped\"}}\n");
                            wr.write_all(msg.as_bytes()).await?;
                        }
                        Err(broadcast::error::RecvError::Closed) => break,
                    }
                }
            }
        }
    }
    wr.shutdown().await
}

async fn error_line(wr: &mut tokio::net::unix::OwnedWriteHalf, msg: &str) -> std::io::Result<()> {
    let s = serde_json::json!({ "error": msg }).to_string() + "\n";
    wr.write_all(s.as_bytes()).await
}

/// Client side: sends `request` and calls `on_line` for every answer line.
pub async fn request(
    path: &Path,
    request: &Request,
    mut on_line: impl FnMut(&str) -> Result<(), ControlError>,
) -> Result<(), ControlError> {
    let stream = UnixStream::connect(path).await.map_err(io_err(path))?;
    let (rd, mut wr) = stream.into_split();
    let mut req =
        serde_json::to_string(request).map_err(|e| ControlError::BadAnswer(e.to_string()))?;
    req.push('\n');
    wr.write_all(req.as_bytes()).await.map_err(io_err(path))?;
    let mut lines = BufReader::new(rd).lines();
    while let Some(line) = lines.next_line().await.map_err(io_err(path))? {
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
            && let Some(e) = v.get("error").and_then(|e| e.as_str())
        {
            return Err(ControlError::Remote(e.to_owned()));
        }
        on_line(&line)?;
    }
    Ok(())
}
