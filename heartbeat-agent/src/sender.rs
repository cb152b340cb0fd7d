//! The heartbeat sender: a dedicated real-time thread that sends a request
//! to every peer on every heartbeat link each `heartbeat_interval`, on
//! absolute deadlines, and refreshes the dead-man stamp the XDP program
//! checks before answering requests.
//!
//! It is the only writer of `STATUS[0]`. The agent's tasks prove they are
//! alive by updating [`Shared::main_alive_ns`] (the supervisor's liveness
//! task, which runs on the same runtime as every other task, so it stalls
//! when they do); if that stops, the sender withholds the stamp (the kernel
//! stops answering) AND marks its requests STALE, so a hung agent looks
//! failed to its peers both ways.
//!
//! Nothing else runs on this thread: the sockets are shared with the
//! transport's receive task (which reads them), changes arrive on a
//! command channel polled once per tick without a syscall, and every
//! statistic is an atomic. A tick makes one `sendmmsg` per link for all
//! the link's peers (arrays allocated when the links are set, re-filled per
//! tick) and no other syscall but the sleep, bar the dead-man stamp's
//! refresh every `agent_timeout / 4`.
//!
//! It sleeps on a futex with an absolute deadline (as precise as
//! `clock_nanosleep`), so that [`Shared::send_now`] can wake it for one
//! extra round at once: the network manager asks for it right after a link
//! moved to its standby card, so the peers' answers flow through the new
//! card without waiting for the next interval. The schedule is unchanged.

use std::{
    io,
    net::{IpAddr, SocketAddr, UdpSocket},
    os::fd::AsRawFd,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering},
        mpsc as std_mpsc,
    },
    thread::JoinHandle,
    time::Duration,
};

use heartbeat_common::{HEADER_LEN, Header, LocalStatus, node_state, siphash::SipKey};
use thiserror::Error;

use crate::{clock, fastpath::StatusWriter, sequence};

/// Priority of the sender thread under SCHED_FIFO: the highest of the
/// agent's threads. All of them sit above the range real-time applications
/// conventionally use (1-49) and the kernel's threaded interrupt handlers
/// (SCHED_FIFO 50), as corosync runs at SCHED_RR 99: the agent must outrank
/// the workloads it protects, or a busy real-time workload makes its node
/// look hung (measured: `stress-ng --hrtimers`, whose workers run SCHED_RR
/// 49, starved a runtime at 40 for 2 s, and the node was failed over).
pub const RT_PRIORITY: i32 = 60;
/// Upper bounds (ns) of the lateness histogram buckets.
pub const LATENESS_BOUNDS_NS: [u64; 16] = [
    1_000,
    2_000,
    5_000,
    10_000,
    20_000,
    50_000,
    100_000,
    200_000,
    500_000,
    1_000_000,
    2_000_000,
    5_000_000,
    10_000_000,
    20_000_000,
    50_000_000,
    100_000_000,
];

/// Why the sender could not start.
#[derive(Debug, Error)]
pub enum SenderError {
    #[error("link {link}: cannot bind UDP {addr} on {interface}: {source}")]
    Bind {
        link: u8,
        interface: String,
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("cannot start the sender thread: {0}")]
    Spawn(#[source] io::Error),
}

/// One heartbeat link of the local node, its socket, and the peers
/// reachable on it.
#[derive(Clone, Debug)]
pub struct SenderLink {
    pub link_id: u8,
    pub interface: String,
    pub local: IpAddr,
    pub peers: Vec<(u16, SocketAddr)>,
    pub socket: Arc<UdpSocket>,
}

/// Changes to the sender while it runs (reload).
#[derive(Debug)]
pub enum Command {
    /// The key requests are sealed with.
    SetKey([u8; 16]),
    /// The peers of each link (sockets unchanged).
    SetLinks(Vec<SenderLink>),
    SetInterval(Duration),
    SetAgentTimeout(Duration),
}

/// What the sender needs.
#[derive(Clone, Debug)]
pub struct SenderConfig {
    pub cluster_id: u32,
    pub local_node: u16,
    pub port: u16,
    pub interval: Duration,
    pub agent_timeout: Duration,
    pub key: [u8; 16],
    pub links: Vec<SenderLink>,
    /// The sequence the requests count up from (`sequence::first_sequence`
    /// of the incarnation), never the wall clock, so that a restart is
    /// above everything sent before even when the clock was set back.
    pub first_sequence: u64,
}

/// Counters of one link's sends.
#[derive(Debug, Default)]
pub struct LinkSendStats {
    pub sent: AtomicU64,
    pub errors: AtomicU64,
    /// Heartbeats that reached the socket instead of the XDP program.
    pub userspace_rx: AtomicU64,
}

/// State shared between the sender thread and the main loop (atomics only).
#[derive(Debug)]
pub struct Shared {
    pub stop: AtomicBool,
    /// CLOCK_MONOTONIC ns of the main loop's last check-in.
    pub main_alive_ns: AtomicU64,
    pub generation: u32,
    pub node_state: AtomicU8,
    pub packages: AtomicU64,
    pub links: Vec<(u8, LinkSendStats)>,
    /// Non-cumulative counts per `LATENESS_BOUNDS_NS` bucket, plus overflow.
    pub lateness: [AtomicU64; LATENESS_BOUNDS_NS.len() + 1],
    pub lateness_sum_ns: AtomicU64,
    pub lateness_max_ns: AtomicU64,
    pub ticks: AtomicU64,
    /// Deadlines skipped because the thread woke more than one interval late.
    pub missed: AtomicU64,
    /// Whether SCHED_FIFO could be set (1) or not (0).
    pub realtime: AtomicU8,
    /// Set while the sender withholds the dead-man stamp (main loop stale).
    pub withholding: AtomicBool,
    /// Non-zero: send a round at once ([`Shared::send_now`]); the futex
    /// word the sender sleeps on.
    pub send_now: AtomicU32,
    /// Extra rounds sent on request.
    pub extra_rounds: AtomicU64,
}

impl Shared {
    pub fn new(generation: u32, link_ids: &[u8]) -> Self {
        Self {
            stop: AtomicBool::new(false),
            main_alive_ns: AtomicU64::new(clock::mono_ns()),
            generation,
            node_state: AtomicU8::new(heartbeat_common::node_state::STARTING),
            packages: AtomicU64::new(0),
            links: link_ids
                .iter()
                .map(|&l| (l, LinkSendStats::default()))
                .collect(),
            lateness: Default::default(),
            lateness_sum_ns: AtomicU64::new(0),
            lateness_max_ns: AtomicU64::new(0),
            ticks: AtomicU64::new(0),
            missed: AtomicU64::new(0),
            realtime: AtomicU8::new(0),
            withholding: AtomicBool::new(false),
            send_now: AtomicU32::new(0),
            extra_rounds: AtomicU64::new(0),
        }
    }

    /// Asks the sender thread to send a round to every peer at once (its
    /// schedule is unchanged).
    pub fn send_now(&self) {
        self.send_now.store(1, Ordering::Release);
        // SAFETY: FUTEX_WAKE on a 4-byte aligned word this struct owns; it
        // wakes at most one waiter and touches nothing else.
        unsafe {
            libc::syscall(
                libc::SYS_futex,
                self.send_now.as_ptr(),
                libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
                1,
            );
        }
    }

    fn record_lateness(&self, ns: u64) {
        let idx = LATENESS_BOUNDS_NS
            .iter()
            .position(|&b| ns <= b)
            .unwrap_or(LATENESS_BOUNDS_NS.len());
        self.lateness[idx].fetch_add(1, Ordering::Relaxed);
        self.lateness_sum_ns.fetch_add(ns, Ordering::Relaxed);
        self.lateness_max_ns.fetch_max(ns, Ordering::Relaxed);
        self.ticks.fetch_add(1, Ordering::Relaxed);
    }

    pub fn link_stats(&self, link: u8) -> Option<&LinkSendStats> {
        self.links.iter().find(|(l, _)| *l == link).map(|(_, s)| s)
    }
}

fn setsockopt_int(fd: i32, level: i32, name: i32, value: i32) -> io::Result<()> {
    // SAFETY: `value` lives across the call and its size is passed.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const i32).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn bind_to_device(fd: i32, interface: &str) -> io::Result<()> {
    // SAFETY: the pointer and length describe `interface`'s bytes.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_BINDTODEVICE,
            interface.as_ptr().cast(),
            interface.len() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Opens the socket of one link: bound to the link's address and the
/// heartbeat port, pinned to its interface, DSCP CS6 and SO_PRIORITY 6,
/// non-blocking (the sender only sends; the transport task reads).
pub fn open_socket(
    link_id: u8,
    interface: &str,
    local: IpAddr,
    port: u16,
) -> Result<UdpSocket, SenderError> {
    let addr = SocketAddr::new(local, port);
    let err = |source| SenderError::Bind {
        link: link_id,
        interface: interface.to_owned(),
        addr,
        source,
    };
    let sock = UdpSocket::bind(addr).map_err(err)?;
    let fd = sock.as_raw_fd();
    bind_to_device(fd, interface).map_err(err)?;
    let tos = 0xc0; // DSCP CS6 (network control)
    match local {
        IpAddr::V4(_) => setsockopt_int(fd, libc::IPPROTO_IP, libc::IP_TOS, tos).map_err(err)?,
        IpAddr::V6(_) => {
            setsockopt_int(fd, libc::IPPROTO_IPV6, libc::IPV6_TCLASS, tos).map_err(err)?
        }
    }
    setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_PRIORITY, 6).map_err(err)?;
    sock.set_nonblocking(true).map_err(err)?;
    Ok(sock)
}

/// Priority of the agent's runtime thread (the cluster, transport, journal
/// and control tasks, and the renewal of the packages' leases) under
/// SCHED_FIFO: below the sender (and the watchdog's feeder), so a busy task
/// never delays a heartbeat, but above other real-time work and interrupt
/// threads (see [`RT_PRIORITY`]), so a loaded machine does not delay a
/// membership round or let a lease lapse (corosync runs its whole process
/// real-time for the same reason). What it starts runs SCHED_OTHER.
pub const RUNTIME_RT_PRIORITY: i32 = 52;

fn set_realtime() -> io::Result<()> {
    set_thread_fifo(RT_PRIORITY)
}

/// Makes the calling thread SCHED_FIFO at `priority`.
pub fn set_thread_fifo(priority: i32) -> io::Result<()> {
    let param = libc::sched_param {
        sched_priority: priority,
    };
    // SCHED_RESET_ON_FORK: what this thread starts (package scripts, OCF
    // agents, fence commands, later threads) runs SCHED_OTHER, so that a
    // script stuck in a loop cannot starve the node.
    // SAFETY: pid 0 is the calling thread; `param` is a valid sched_param.
    let rc = unsafe {
        libc::sched_setscheduler(0, libc::SCHED_FIFO | libc::SCHED_RESET_ON_FORK, &param)
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn sleep_until_mono(deadline_ns: u64) {
    let ts = libc::timespec {
        tv_sec: (deadline_ns / 1_000_000_000) as libc::time_t,
        tv_nsec: (deadline_ns % 1_000_000_000) as libc::c_long,
    };
    loop {
        // SAFETY: `ts` is a valid timespec; the remaining-time pointer may be
        // null with TIMER_ABSTIME.
        let rc = unsafe {
            libc::clock_nanosleep(
                libc::CLOCK_MONOTONIC,
                libc::TIMER_ABSTIME,
                &ts,
                std::ptr::null_mut(),
            )
        };
        if rc != libc::EINTR {
            break;
        }
    }
}

/// Sleeps until `deadline_ns` (CLOCK_MONOTONIC) or until `kick` is set;
/// returns whether it was (and clears it).
fn sleep_until_mono_or_kick(deadline_ns: u64, kick: &AtomicU32) -> bool {
    let ts = libc::timespec {
        tv_sec: (deadline_ns / 1_000_000_000) as libc::time_t,
        tv_nsec: (deadline_ns % 1_000_000_000) as libc::c_long,
    };
    loop {
        if kick.swap(0, Ordering::AcqRel) != 0 {
            return true;
        }
        // SAFETY: FUTEX_WAIT_BITSET on a 4-byte aligned word that outlives
        // the call, with an absolute CLOCK_MONOTONIC timeout (`ts` is a
        // valid timespec); it sleeps only while the word is still 0.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_futex,
                kick.as_ptr(),
                libc::FUTEX_WAIT_BITSET | libc::FUTEX_PRIVATE_FLAG,
                0u32,
                &ts as *const libc::timespec,
                std::ptr::null::<u32>(),
                libc::FUTEX_BITSET_MATCH_ANY,
            )
        };
        if rc == 0 {
            continue; // woken: the word says why
        }
        match io::Error::last_os_error().raw_os_error() {
            Some(libc::ETIMEDOUT) => return kick.swap(0, Ordering::AcqRel) != 0,
            Some(libc::EINTR | libc::EAGAIN) => continue,
            _ => {
                // No futex: the plain sleep, without the early wake-up.
                sleep_until_mono(deadline_ns);
                return false;
            }
        }
    }
}

/// `addr` as a C socket address for `msg_name`.
fn sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain old data; all-zero is a valid value.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for any
            // sockaddr type, sockaddr_in included.
            unsafe { std::ptr::write((&raw mut ss).cast::<libc::sockaddr_in>(), sin) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: as above, for sockaddr_in6.
            unsafe { std::ptr::write((&raw mut ss).cast::<libc::sockaddr_in6>(), sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (ss, len as libc::socklen_t)
}

/// One link's requests of a tick, sent with one `sendmmsg`: the arrays
/// (a header, an address, an iovec and an mmsghdr per peer) are allocated
/// when the links are set and only re-filled per tick, so the tick path
/// neither allocates nor makes a syscall other than the send.
struct LinkBatch {
    link_id: u8,
    /// Keeps the descriptor open.
    socket: Arc<UdpSocket>,
    /// Index of the link's counters in [`Shared::links`].
    stats: Option<usize>,
    peers: Vec<u16>,
    headers: Vec<Header>,
    addrs: Vec<(libc::sockaddr_storage, libc::socklen_t)>,
    iovs: Vec<libc::iovec>,
    msgs: Vec<libc::mmsghdr>,
}

impl LinkBatch {
    fn new(link: &SenderLink, shared: &Shared) -> Self {
        let n = link.peers.len();
        // SAFETY: iovec and mmsghdr are plain old data; all-zero (null
        // pointers, zero lengths) is a valid value, and `send` points
        // them at this batch's arrays before every use.
        let (iov, msg) = unsafe { (std::mem::zeroed(), std::mem::zeroed()) };
        LinkBatch {
            link_id: link.link_id,
            socket: link.socket.clone(),
            stats: shared.links.iter().position(|(l, _)| *l == link.link_id),
            peers: link.peers.iter().map(|&(p, _)| p).collect(),
            headers: vec![Header::request(0, 0, 0, link.link_id); n],
            addrs: link.peers.iter().map(|&(_, a)| sockaddr(a)).collect(),
            iovs: vec![iov; n],
            msgs: vec![msg; n],
        }
    }

    /// Sends every header to its peer; returns (sent, failed). A message
    /// the kernel refuses is counted and skipped, and the rest still go.
    fn send(&mut self) -> (u64, u64) {
        let n = self.headers.len();
        let headers = self.headers.as_mut_ptr();
        let addrs = self.addrs.as_mut_ptr();
        let iovs = self.iovs.as_mut_ptr();
        for (i, m) in self.msgs.iter_mut().enumerate() {
            // SAFETY: i < n, the length of every array (none is resized
            // after `new`), so each pointer stays inside its allocation.
            unsafe {
                let iov = iovs.add(i);
                (*iov).iov_base = headers.add(i).cast();
                (*iov).iov_len = HEADER_LEN;
                let (ss, len) = &mut *addrs.add(i);
                m.msg_hdr.msg_name = (ss as *mut libc::sockaddr_storage).cast();
                m.msg_hdr.msg_namelen = *len;
                m.msg_hdr.msg_iov = iov;
                m.msg_hdr.msg_iovlen = 1;
                m.msg_hdr.msg_control = std::ptr::null_mut();
                m.msg_hdr.msg_controllen = 0;
                m.msg_hdr.msg_flags = 0;
                m.msg_len = 0;
            }
        }
        let fd = self.socket.as_raw_fd();
        let msgs = self.msgs.as_mut_ptr();
        let (mut sent, mut failed) = (0u64, 0u64);
        let mut off = 0usize;
        while off < n {
            let left = (n - off).min(libc::c_uint::MAX as usize) as libc::c_uint;
            // SAFETY: `msgs[off..n]` are valid mmsghdrs pointing at this
            // batch's headers, addresses and iovecs, which outlive the call;
            // the kernel writes only their msg_len fields.
            let rc = unsafe { libc::sendmmsg(fd, msgs.add(off), left, libc::MSG_DONTWAIT) };
            if rc > 0 {
                sent += rc as u64;
                off += rc as usize;
            } else {
                // The message at `off` failed (or none went): count it and
                // go on with the next peer, as one send per peer did.
                failed += 1;
                off += 1;
            }
        }
        (sent, failed)
    }
}

/// The running sender thread.
pub struct Sender {
    pub thread: JoinHandle<()>,
    /// Its kernel thread id (for the kernel's watch on the agent).
    pub tid: u32,
    pub commands: std_mpsc::Sender<Command>,
}

/// Starts the sender thread.
pub fn spawn(
    cfg: SenderConfig,
    mut status: StatusWriter,
    shared: Arc<Shared>,
) -> Result<Sender, SenderError> {
    let (tid_tx, tid_rx) = std_mpsc::sync_channel(1);
    let (cmd_tx, cmd_rx) = std_mpsc::channel();
    let thread = std::thread::Builder::new()
        .name("hb-sender".into())
        .spawn(move || {
            // SAFETY: gettid has no preconditions.
            let _ = tid_tx.send(unsafe { libc::gettid() } as u32);
            run(cfg, &cmd_rx, &mut status, &shared)
        })
        .map_err(SenderError::Spawn)?;
    let tid = tid_rx.recv().unwrap_or(0);
    Ok(Sender {
        thread,
        tid,
        commands: cmd_tx,
    })
}

fn run(
    mut cfg: SenderConfig,
    commands: &std_mpsc::Receiver<Command>,
    status: &mut StatusWriter,
    shared: &Shared,
) {
    match set_realtime() {
        Ok(()) => shared.realtime.store(1, Ordering::Relaxed),
        Err(e) => tracing::warn!(
            error = %e,
            "cannot run the sender as SCHED_FIFO; heartbeats may be late under CPU load"
        ),
    }
    let mut key = SipKey::from_bytes(&cfg.key);
    let mut interval = cfg.interval.as_nanos().max(1) as u64;
    let mut agent_timeout = cfg.agent_timeout.as_nanos() as u64;
    let mut seq = cfg.first_sequence;
    let mut last_refresh = 0u64;
    let mut batches: Vec<LinkBatch> = cfg
        .links
        .iter()
        .map(|l| LinkBatch::new(l, shared))
        .collect();
    let mut next = clock::mono_ns();
    while !shared.stop.load(Ordering::Relaxed) {
        let kicked = sleep_until_mono_or_kick(next, &shared.send_now);
        let woke = clock::mono_ns();
        // A round asked for before its time is an extra one: no lateness,
        // and the schedule stays.
        let scheduled = !kicked || woke >= next;
        if scheduled {
            shared.record_lateness(woke.saturating_sub(next));
        } else {
            shared.extra_rounds.fetch_add(1, Ordering::Relaxed);
        }
        // Changes (a reload): a channel read without a syscall.
        while let Ok(cmd) = commands.try_recv() {
            match cmd {
                Command::SetKey(k) => key = SipKey::from_bytes(&k),
                Command::SetLinks(links) => {
                    batches = links.iter().map(|l| LinkBatch::new(l, shared)).collect();
                    cfg.links = links;
                }
                Command::SetInterval(d) => interval = d.as_nanos().max(1) as u64,
                Command::SetAgentTimeout(d) => agent_timeout = d.as_nanos() as u64,
            }
        }
        // Refresh the stamp several times per agent_timeout, but never more
        // often than we send.
        let refresh_every = (agent_timeout / 4).max(interval);
        // The liveness task checks in every 100 ms; allow it a generous grace.
        let main_grace = agent_timeout.max(2_000_000_000);

        let state = shared.node_state.load(Ordering::Relaxed);
        let packages = shared.packages.load(Ordering::Relaxed);
        let main_alive = shared.main_alive_ns.load(Ordering::Relaxed);
        let fresh = woke.saturating_sub(main_alive) < main_grace;
        if woke.saturating_sub(last_refresh) >= refresh_every || !fresh {
            let was = shared.withholding.swap(!fresh, Ordering::Relaxed);
            if fresh {
                let st = LocalStatus {
                    agent_stamp_ns: woke,
                    packages,
                    generation: shared.generation,
                    node_state: state,
                    _pad: [0; 3],
                };
                if let Err(e) = status.write(&st) {
                    tracing::error!(error = %e, "cannot refresh the dead-man stamp");
                }
                last_refresh = woke;
            } else if !was {
                tracing::error!(
                    "the agent's tasks have not checked in for {} ms: withholding the dead-man stamp and the requests",
                    woke.saturating_sub(main_alive) / 1_000_000
                );
            }
        }

        // A stuck agent must look failed to its peers: no stamp (its kernel
        // stops answering them) and its requests say STALE, so their
        // membership takes this node out at once and shows it `stale`
        // rather than waiting for silence.
        let state = if fresh { state } else { node_state::STALE };
        // One clock read and one `sendmmsg` per link for all its peers.
        let tx_ns = clock::mono_ns();
        for batch in &mut batches {
            for (i, &peer) in batch.peers.iter().enumerate() {
                let mut h = Header::request(cfg.cluster_id, cfg.local_node, peer, batch.link_id);
                seq = sequence::advance(seq);
                h.set_sequence(seq);
                h.set_generation(shared.generation);
                h.node_state = state;
                h.set_packages(packages);
                h.set_tx_timestamp_ns(tx_ns);
                h.seal(key);
                batch.headers[i] = h;
            }
            let (sent, errors) = batch.send();
            if let Some(s) = batch
                .stats
                .and_then(|i| shared.links.get(i))
                .map(|(_, s)| s)
            {
                if sent > 0 {
                    s.sent.fetch_add(sent, Ordering::Relaxed);
                }
                if errors > 0 {
                    s.errors.fetch_add(errors, Ordering::Relaxed);
                }
            }
        }

        if !scheduled {
            continue;
        }
        next = next.saturating_add(interval);
        let now = clock::mono_ns();
        if now > next.saturating_add(interval) {
            // Woke more than an interval late: skip the missed deadlines
            // rather than sending a burst.
            let missed = (now - next) / interval;
            shared.missed.fetch_add(missed, Ordering::Relaxed);
            next = next.saturating_add(missed * interval);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One `sendmmsg` batch reaches every peer; a peer the kernel refuses
    /// (here an IPv6 address on an IPv4 socket) is counted as an error and
    /// the peers after it still get their request.
    #[test]
    fn batch_sends_to_every_peer_and_skips_a_refused_one() {
        let sock = Arc::new(UdpSocket::bind("127.0.0.1:0").unwrap());
        sock.set_nonblocking(true).unwrap();
        let rx1 = UdpSocket::bind("127.0.0.1:0").unwrap();
        let rx2 = UdpSocket::bind("127.0.0.1:0").unwrap();
        for r in [&rx1, &rx2] {
            r.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        }
        let link = SenderLink {
            link_id: 3,
            interface: "lo".into(),
            local: "127.0.0.1".parse().unwrap(),
            peers: vec![
                (2, rx1.local_addr().unwrap()),
                (3, "[::1]:9".parse().unwrap()),
                (4, rx2.local_addr().unwrap()),
            ],
            socket: sock,
        };
        let shared = Shared::new(1, &[3]);
        let mut batch = LinkBatch::new(&link, &shared);
        assert_eq!(batch.stats, Some(0));
        for (i, h) in batch.headers.iter_mut().enumerate() {
            *h = Header::request(7, 1, 2 + i as u16, 3);
        }
        assert_eq!(batch.send(), (2, 1));
        let mut buf = [0u8; 128];
        for (r, target) in [(&rx1, 2u16), (&rx2, 4)] {
            let n = r.recv(&mut buf).unwrap();
            assert_eq!(n, HEADER_LEN);
            let h = Header::request(7, 1, target, 3);
            assert_eq!(&buf[..n], h.as_bytes());
        }
        // The arrays are reused: a second round goes out the same way.
        assert_eq!(batch.send(), (2, 1));
        assert_eq!(rx1.recv(&mut buf).unwrap(), HEADER_LEN);
    }

    /// Without a request the sleep lasts until the deadline; a request
    /// from another thread ends it at once, and is consumed.
    #[test]
    fn send_now_wakes_the_sleep_early() {
        let shared = Arc::new(Shared::new(1, &[0]));
        let t0 = clock::mono_ns();
        assert!(!sleep_until_mono_or_kick(t0 + 20_000_000, &shared.send_now));
        assert!(clock::mono_ns() >= t0 + 20_000_000);

        let waker = {
            let shared = shared.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(20));
                shared.send_now();
            })
        };
        let t1 = clock::mono_ns();
        assert!(sleep_until_mono_or_kick(
            t1 + 30_000_000_000,
            &shared.send_now
        ));
        assert!(clock::mono_ns() < t1 + 10_000_000_000, "woken early");
        assert_eq!(shared.send_now.load(Ordering::Relaxed), 0);
        let _ = waker.join();
        // A request made before the sleep is not lost.
        shared.send_now();
        assert!(sleep_until_mono_or_kick(
            clock::mono_ns() + 30_000_000_000,
            &shared.send_now
        ));
    }
}
