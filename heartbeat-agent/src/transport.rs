//! The heartbeat links' UDP sockets and what arrives on them in user space.
//!
//! One socket per heartbeat link, bound to the link's address and the
//! heartbeat port on its interface. The sender thread sends requests on it;
//! the cluster task sends membership messages on it; the receive task here
//! reads it. Heartbeats normally never reach it (the XDP program answers or
//! consumes them); membership messages (kind 3) are passed up by the XDP
//! program and handed to the cluster task; anything else is counted.

use std::{
    io,
    net::{SocketAddr, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use heartbeat_common::{KIND_MEMBERSHIP, MAGIC, PREFIX_LEN, VERSION};
use tokio::{
    io::{Interest, unix::AsyncFd},
    sync::mpsc,
};
use tokio_util::sync::CancellationToken;

use crate::{
    clock,
    plan::LinkPlan,
    sender::{self, SenderError, Shared},
};

/// Largest datagram read (membership messages are far smaller).
pub const MAX_DATAGRAM: usize = 2048;

/// The socket of one heartbeat link.
#[derive(Clone, Debug)]
pub struct LinkSocket {
    pub link_id: u8,
    pub interface: String,
    pub socket: Arc<UdpSocket>,
}

/// A membership message as it arrived (not yet authenticated).
#[derive(Clone, Debug)]
pub struct Datagram {
    pub link: u8,
    pub from: SocketAddr,
    pub bytes: Vec<u8>,
    /// CLOCK_MONOTONIC ns when it was read.
    pub at_ns: u64,
}

/// Counters of what reached user space.
#[derive(Debug, Default)]
pub struct RxStats {
    /// Membership messages handed to the cluster task.
    pub membership: AtomicU64,
    /// Membership messages dropped because the cluster task was behind.
    pub overflow: AtomicU64,
    /// Heartbeats that reached the socket (no XDP program in the path).
    pub heartbeats: AtomicU64,
    /// Anything else.
    pub other: AtomicU64,
}

/// Opens the socket of every link.
pub fn open(links: &[LinkPlan], port: u16) -> Result<Vec<LinkSocket>, SenderError> {
    links
        .iter()
        .map(|l| {
            Ok(LinkSocket {
                link_id: l.link_id.0,
                interface: l.interface.clone(),
                socket: Arc::new(sender::open_socket(
                    l.link_id.0,
                    &l.interface,
                    l.local,
                    port,
                )?),
            })
        })
        .collect()
}

/// What kind of datagram `b` is.
fn classify(b: &[u8]) -> Kind {
    match b.get(..PREFIX_LEN) {
        Some(p) if p[..4] == MAGIC && p[4] == VERSION && p[5] == KIND_MEMBERSHIP => {
            Kind::Membership
        }
        Some(p) if p[..4] == MAGIC => Kind::Heartbeat,
        _ => Kind::Other,
    }
}

enum Kind {
    Membership,
    Heartbeat,
    Other,
}

/// Reads every link's socket until `cancel`; membership messages go to
/// `out` (dropped and counted when it is full: the sender repeats them).
pub async fn receive(
    sockets: Vec<LinkSocket>,
    out: mpsc::Sender<Datagram>,
    stats: Arc<RxStats>,
    shared: Arc<Shared>,
    cancel: CancellationToken,
) {
    let mut tasks = tokio::task::JoinSet::new();
    for ls in sockets {
        // Registered for readability only: the sender thread sends on the
        // same socket every tick, and a socket registered for writability
        // too (as `tokio::net::UdpSocket` is) gets an edge-triggered
        // EPOLLOUT each time a sent datagram frees its buffer space, which
        // woke this runtime once per heartbeat for nothing.
        let sock = match ls.socket.try_clone().and_then(|s| {
            // SAFETY: `s` is an owned, open descriptor (a dup of the link's
            // socket) that the AsyncFd owns and closes only when dropped;
            // a UdpSocket's as_raw_fd always returns that descriptor.
            unsafe { AsyncFd::register_with_interest(s, Interest::READABLE) }
                .map_err(io::Error::from)
        }) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(link = ls.link_id, error = %e, "cannot read the link's socket; membership messages on it are lost");
                continue;
            }
        };
        let out = out.clone();
        let stats = stats.clone();
        let shared = shared.clone();
        let cancel = cancel.clone();
        tasks.spawn(async move {
            let mut buf = vec![0u8; MAX_DATAGRAM];
            loop {
                let (n, from) = tokio::select! {
                    r = sock.async_io(Interest::READABLE, |s| s.recv_from(&mut buf)) => match r {
                        Ok(x) => x,
                        Err(_) => continue,
                    },
                    () = cancel.cancelled() => break,
                };
                let b = &buf[..n];
                match classify(b) {
                    Kind::Membership => {
                        let d = Datagram {
                            link: ls.link_id,
                            from,
                            bytes: b.to_vec(),
                            at_ns: clock::mono_ns(),
                        };
                        if out.try_send(d).is_ok() {
                            stats.membership.fetch_add(1, Ordering::Relaxed);
                        } else {
                            stats.overflow.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Kind::Heartbeat => {
                        stats.heartbeats.fetch_add(1, Ordering::Relaxed);
                        if let Some(s) = shared.link_stats(ls.link_id) {
                            s.userspace_rx.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Kind::Other => {
                        stats.other.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}
