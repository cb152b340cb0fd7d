//! The quorum server daemon (`heartbeat-agent quorum-server`): a UDP loop
//! around the pure [`heartbeat_cluster::qserver::Server`], which decides
//! (ffsplit-like, see there) which half of an evenly split cluster gets
//! the tie. It authenticates requests with the cluster key, rejects and
//! counts garbage, bad MACs and replays, and re-reads the key file on
//! SIGHUP (both key slots, for rotations).

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Instant;

use heartbeat_cluster::SipKey;
use heartbeat_cluster::qserver::{Counters, Server, ServerConfig};
use heartbeat_cluster::wire::{Keys, MAX_LEN};
use tokio::net::UdpSocket;
use tokio::signal::unix::{SignalKind, signal};

use crate::keyfile::{self, ClusterKeys, KeyError};

/// What can stop the quorum server.
#[derive(Debug, thiserror::Error)]
pub enum QserverError {
    /// The key file.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// Binding the listen address.
    #[error("quorum server: binding {addr}: {source}")]
    Bind {
        /// Address.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// Installing the SIGHUP handler.
    #[error("quorum server: SIGHUP handler: {0}")]
    Signal(std::io::Error),
}

/// The cluster keys as the wire format wants them.
pub fn wire_keys(k: &ClusterKeys) -> Keys {
    Keys {
        current: SipKey::from_bytes(&k.current),
        next: k.next.as_ref().map(SipKey::from_bytes),
    }
}

/// A bound quorum server.
pub struct QuorumServer {
    sock: UdpSocket,
    server: Server<SocketAddr>,
    key_file: Option<PathBuf>,
    start: Instant,
}

impl QuorumServer {
    /// Binds `listen` and serves clusters whose messages authenticate with
    /// `keys`. With `key_file`, SIGHUP re-reads it.
    pub async fn bind(
        listen: SocketAddr,
        keys: &ClusterKeys,
        key_file: Option<&Path>,
    ) -> Result<Self, QserverError> {
        let sock = UdpSocket::bind(listen)
            .await
            .map_err(|source| QserverError::Bind {
                addr: listen,
                source,
            })?;
        // The incarnation must grow at every start: seconds of wall clock.
        let incarnation = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX))
            .unwrap_or(1);
        Ok(Self {
            sock,
            server: Server::new(ServerConfig::new(None, wire_keys(keys)), incarnation),
            key_file: key_file.map(Path::to_path_buf),
            start: Instant::now(),
        })
    }

    /// Reads the key file and binds.
    pub async fn from_key_file(listen: SocketAddr, key_file: &Path) -> Result<Self, QserverError> {
        let keys = keyfile::read(key_file)?;
        Self::bind(listen, &keys, Some(key_file)).await
    }

    /// The bound address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.sock.local_addr()
    }

    /// Requests, answers and drops so far.
    pub fn counters(&self) -> &Counters {
        self.server.counters()
    }

    fn now_ns(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    async fn send_all(&self, replies: Vec<heartbeat_cluster::qserver::Reply<SocketAddr>>) {
        for r in replies {
            if let Err(e) = self.sock.send_to(&r.bytes, r.to).await {
                tracing::debug!(to = %r.to, error = %e, "quorum server: sending an answer");
            }
        }
    }

    /// Serves until `shutdown` completes.
    pub async fn serve(mut self, shutdown: impl Future<Output = ()>) -> Result<(), QserverError> {
        let mut hup = signal(SignalKind::hangup()).map_err(QserverError::Signal)?;
        tokio::pin!(shutdown);
        let mut buf = vec![0u8; MAX_LEN + 1];
        let mut errors: u32 = 0;
        loop {
            let deadline = self.server.next_deadline_ns().map(|d| {
                let wait = d.saturating_sub(self.now_ns());
                tokio::time::Instant::now() + std::time::Duration::from_nanos(wait)
            });
            tokio::select! {
                () = &mut shutdown => return Ok(()),
                _ = hup.recv() => {
                    if let Some(path) = &self.key_file {
                        match keyfile::read(path) {
                            Ok(k) => {
                                self.server.set_keys(wire_keys(&k));
                                tracing::info!(path = %path.display(), "quorum server: keys reloaded");
                            }
                            Err(e) => tracing::error!(error = %e, "quorum server: reload refused, keeping the running keys"),
                        }
                    }
                }
                () = async {
                    match deadline {
                        Some(d) => tokio::time::sleep_until(d).await,
                        None => std::future::pending().await,
                    }
                } => {
                    let now = self.now_ns();
                    let replies = self.server.tick(now);
                    self.send_all(replies).await;
                }
                r = self.sock.recv_from(&mut buf) => match r {
                    Ok((n, from)) => {
                        errors = 0;
                        let now = self.now_ns();
                        let replies = self.server.handle(&buf[..n], from, now);
                        self.send_all(replies).await;
                    }
                    Err(e) => {
                        // Do not spin on a persistent error.
                        errors = errors.saturating_add(1);
                        tracing::debug!(error = %e, "quorum server: receive");
                        if errors > 3 {
                            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                        }
                    }
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use heartbeat_cluster::membership::Input;
    use heartbeat_cluster::qserver::Client;
    use heartbeat_cluster::{Epoch, NodeId, NodeSet};

    fn keys() -> ClusterKeys {
        ClusterKeys {
            current: [7u8; 16],
            next: None,
        }
    }

    #[tokio::test]
    async fn grants_over_udp_and_survives_garbage() {
        let srv = QuorumServer::bind("127.0.0.1:0".parse().unwrap(), &keys(), None)
            .await
            .unwrap();
        let addr = srv.local_addr().unwrap();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(srv.serve(async {
            let _ = stop_rx.await;
        }));
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        // Garbage and a wrongly keyed request first: no answer, no crash.
        sock.send_to(b"garbage", addr).await.unwrap();
        sock.send_to(&[0u8; 4000], addr).await.unwrap();
        let wrong = Keys {
            current: SipKey { k0: 1, k1: 2 },
            next: None,
        };
        let mut bad = Client::new(5, NodeId(3), 1);
        let req = bad.request(Epoch(1), NodeSet::single(NodeId(3)), 1, 2, &wrong);
        sock.send_to(&req, addr).await.unwrap();
        let mut c = Client::new(5, NodeId(1), 1);
        let members: NodeSet = [NodeId(1), NodeId(2)].into_iter().collect();
        let req = c.request(Epoch(4), members, 2, 4, &wire_keys(&keys()));
        sock.send_to(&req, addr).await.unwrap();
        // Replayed: counted, not answered twice.
        sock.send_to(&req, addr).await.unwrap();
        let mut buf = [0u8; 2048];
        let (n, _) =
            tokio::time::timeout(std::time::Duration::from_secs(5), sock.recv_from(&mut buf))
                .await
                .expect("an answer within the settle window")
                .unwrap();
        match c.answer(&buf[..n], &wire_keys(&keys()), 0).unwrap() {
            Input::QuorumServer {
                epoch,
                granted,
                lease_ns,
                ..
            } => {
                assert_eq!(epoch, Epoch(4));
                assert!(granted);
                assert!(lease_ns > 0);
            }
            other => panic!("{other:?}"),
        }
        let _ = stop_tx.send(());
        task.await.unwrap().unwrap();
    }
}
