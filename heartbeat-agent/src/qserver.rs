//! `heartbeat-agent quorum-server`: the tie-breaker a cluster split into
//! two halves of exactly half the votes asks (like corosync-qnetd with
//! ffsplit). The decisions are `heartbeat_cluster::qserver::Server` (pure);
//! this is its UDP runner: datagrams in, answers out, ticks at the
//! server's deadlines, counters logged every minute and on exit.
//!
//! It serves one cluster: requests must carry `--cluster-id` and a valid
//! MAC under the key file's current or next key; garbage, unauthenticated
//! and replayed requests are dropped and counted, never answered.

use std::{net::SocketAddr, path::Path, time::Duration};

use anyhow::{Context as _, Result};
use heartbeat_cluster::{
    qserver::{Server, ServerConfig},
    wire::Keys,
};
use heartbeat_common::siphash::SipKey;
use tokio::{
    net::UdpSocket,
    signal::unix::{SignalKind, signal},
};

use crate::{clock, keyfile};

/// Largest datagram read.
const MAX_DATAGRAM: usize = 2048;

/// The keys of a key file, as the membership wire format takes them.
pub fn wire_keys(path: &Path) -> Result<Keys> {
    let k = keyfile::read(path)?;
    Ok(Keys {
        current: SipKey::from_bytes(&k.current),
        next: k.next.as_ref().map(SipKey::from_bytes),
    })
}

/// Runs the quorum server until SIGINT/SIGTERM.
pub async fn run(listen: SocketAddr, key_file: &Path, cluster_id: u32) -> Result<()> {
    let keys = wire_keys(key_file)?;
    let sock = UdpSocket::bind(listen)
        .await
        .with_context(|| format!("--listen {listen}"))?;
    // The incarnation must grow at every server start: wall-clock seconds.
    let incarnation = (clock::wall_ns() / 1_000_000_000) as u32;
    let mut server: Server<SocketAddr> =
        Server::new(ServerConfig::new(cluster_id, keys), incarnation);
    tracing::info!(%listen, cluster_id, "quorum server running");
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sighup = signal(SignalKind::hangup())?;
    let mut report = tokio::time::interval(Duration::from_secs(60));
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let sleep = server
            .next_deadline_ns()
            .map_or(Duration::from_secs(1), |d| {
                Duration::from_nanos(d.saturating_sub(clock::mono_ns())).min(Duration::from_secs(1))
            });
        let replies = tokio::select! {
            r = sock.recv_from(&mut buf) => match r {
                Ok((n, from)) => server.handle(&buf[..n], from, clock::mono_ns()),
                Err(e) => {
                    tracing::warn!(error = %e, "receive failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    Vec::new()
                }
            },
            () = tokio::time::sleep(sleep) => server.tick(clock::mono_ns()),
            _ = report.tick() => {
                tracing::info!(counters = ?server.counters(), holder = ?server.holder(clock::mono_ns()), "quorum server");
                Vec::new()
            }
            _ = sighup.recv() => {
                match wire_keys(key_file) {
                    Ok(k) => {
                        server.set_keys(k);
                        tracing::info!("SIGHUP: key file re-read");
                    }
                    Err(e) => tracing::error!("SIGHUP: keeping the old keys: {e:#}"),
                }
                Vec::new()
            }
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
        };
        for r in replies {
            if let Err(e) = sock.send_to(&r.bytes, r.to).await {
                tracing::warn!(to = %r.to, error = %e, "cannot answer");
            }
        }
    }
    tracing::info!(counters = ?server.counters(), "quorum server stopping");
    Ok(())
}
