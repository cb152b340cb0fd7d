//! Heartbeat gaps as seen on the wire: an `AF_PACKET` socket on one end of
//! the link, filtered in the kernel (classic BPF) to the packets sent by
//! node A, timestamped by the kernel (`SO_TIMESTAMPNS`), classified per
//! protocol (heartbeat, VRRP, BFD, corosync) and reduced to the largest gap
//! per window, so memory stays constant whatever the packet rate.
//!
//! The bench uses one tap, on A's interface, outbound, and only during
//! detection trials (no load): the time from A's last frame to the fault.
//! Load windows run with no tap on the nodes' interfaces (a tap clones
//! every frame and is part of the data path it measures).

use std::{
    collections::BTreeMap,
    fs::File,
    mem,
    net::Ipv4Addr,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::{Context as _, bail};

use super::wall_ns;

/// The protocol a captured packet belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stream {
    Heartbeat,
    Vrrp,
    Bfd,
    Corosync,
}

impl Stream {
    /// Classifies an Ethernet + IPv4 frame by IP protocol and UDP port.
    pub fn classify(frame: &[u8], heartbeat_port: u16) -> Option<Self> {
        if frame.len() < 14 + 20 || frame[12..14] != [0x08, 0x00] {
            return None;
        }
        let ihl = usize::from(frame[14] & 0x0f) * 4;
        let proto = frame[14 + 9];
        match proto {
            112 => Some(Self::Vrrp),
            17 => {
                let udp = 14 + ihl;
                let dport = u16::from_be_bytes([*frame.get(udp + 2)?, *frame.get(udp + 3)?]);
                match dport {
                    3784 => Some(Self::Bfd),
                    5405 => Some(Self::Corosync),
                    p if p == heartbeat_port => Some(Self::Heartbeat),
                    _ => None,
                }
            }
            _ => None,
        }
    }
}

/// Gap statistics of one stream in one window.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct Gaps {
    /// Packets in the window.
    pub packets: u64,
    /// Largest time between two consecutive packets, or between the window
    /// start / end and the nearest packet (ns).
    pub max_gap_ns: i64,
    /// Wall time of the packet that ended the largest gap (ns).
    pub max_gap_end_ns: i64,
    /// Wall time of the last packet (ns), 0 if none.
    #[serde(skip)]
    pub last_ns: i64,
    /// Window start (ns).
    #[serde(skip)]
    start_ns: i64,
}

impl Gaps {
    fn push(&mut self, ts: i64) {
        let prev = if self.last_ns > 0 {
            self.last_ns
        } else {
            self.start_ns
        };
        let gap = ts - prev;
        if gap > self.max_gap_ns {
            self.max_gap_ns = gap;
            self.max_gap_end_ns = ts;
        }
        self.last_ns = ts;
        self.packets += 1;
    }

    /// The stats with the silence from the last packet to `end` counted.
    #[cfg(test)]
    fn closed(mut self, end: i64) -> Self {
        let prev = if self.last_ns > 0 {
            self.last_ns
        } else {
            self.start_ns
        };
        if end - prev > self.max_gap_ns {
            self.max_gap_ns = end - prev;
            self.max_gap_end_ns = end;
        }
        self
    }
}

#[derive(Default)]
struct Shared {
    window_start: i64,
    streams: BTreeMap<Stream, Gaps>,
    /// Last packet per stream, across windows.
    last: BTreeMap<Stream, i64>,
    /// Frames the kernel dropped for this socket (tp_drops), cumulative.
    drops: u64,
}

/// Which packets of the interface a tap keeps (the bench taps only what A
/// sends, and only during detection trials).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Sent by the interface's node.
    Outbound,
}

/// A running tap; stops (and joins its thread) on drop.
pub struct Sniffer {
    stop: Arc<AtomicBool>,
    shared: Arc<Mutex<Shared>>,
    thread: Option<JoinHandle<()>>,
}

const ETH_P_ALL: u16 = 0x0003;
const PACKET_OUTGOING: u8 = 4;

/// The classic BPF filter: IPv4 frames whose source address is `src`,
/// first 128 bytes.
fn filter(src: Ipv4Addr) -> Vec<libc::sock_filter> {
    let ins = |code: u16, jt: u8, jf: u8, k: u32| libc::sock_filter { code, jt, jf, k };
    vec![
        ins(0x28, 0, 0, 12),             // ldh [12]
        ins(0x15, 0, 3, 0x0800),         // jeq #IPv4, else drop
        ins(0x20, 0, 0, 26),             // ld [26] (source address)
        ins(0x15, 0, 1, u32::from(src)), // jeq #src, else drop
        ins(0x06, 0, 0, 128),            // ret #128
        ins(0x06, 0, 0, 0),              // ret #0
    ]
}

fn setsockopt<T>(fd: &OwnedFd, level: i32, name: i32, value: &T, what: &str) -> anyhow::Result<()> {
    // SAFETY: `value` points to a live T of the given size for the call.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (value as *const T).cast(),
            mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("setsockopt {what}"));
    }
    Ok(())
}

/// Opens the filtered packet socket on `ifname`; must run in the
/// interface's network namespace.
fn open_socket(ifname: &str, src: Ipv4Addr) -> anyhow::Result<OwnedFd> {
    // SAFETY: plain socket(2) call; the fd is owned right below.
    let raw = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            i32::from(ETH_P_ALL.to_be()),
        )
    };
    if raw < 0 {
        return Err(std::io::Error::last_os_error()).context("socket(AF_PACKET)");
    }
    // SAFETY: `raw` is a fresh, valid fd that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let mut prog = filter(src);
    let fprog = libc::sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_mut_ptr(),
    };
    setsockopt(
        &fd,
        libc::SOL_SOCKET,
        libc::SO_ATTACH_FILTER,
        &fprog,
        "SO_ATTACH_FILTER",
    )?;
    let on: libc::c_int = 1;
    setsockopt(
        &fd,
        libc::SOL_SOCKET,
        libc::SO_TIMESTAMPNS,
        &on,
        "SO_TIMESTAMPNS",
    )?;
    let rcvbuf: libc::c_int = 4 << 20;
    setsockopt(&fd, libc::SOL_SOCKET, libc::SO_RCVBUF, &rcvbuf, "SO_RCVBUF")?;
    let tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 100_000,
    };
    setsockopt(&fd, libc::SOL_SOCKET, libc::SO_RCVTIMEO, &tv, "SO_RCVTIMEO")?;
    let cname = std::ffi::CString::new(ifname).context("interface name")?;
    // SAFETY: `cname` is a valid NUL-terminated string.
    let ifindex = unsafe { libc::if_nametoindex(cname.as_ptr()) };
    if ifindex == 0 {
        bail!("no interface {ifname} in this namespace");
    }
    // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
    let mut sll: libc::sockaddr_ll = unsafe { mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = ETH_P_ALL.to_be();
    sll.sll_ifindex = ifindex as i32;
    // SAFETY: `sll` is a valid sockaddr_ll and the length matches it.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&raw const sll).cast(),
            mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("bind(AF_PACKET)");
    }
    Ok(fd)
}

/// One received frame: (bytes, packet type, kernel timestamp ns).
fn recv(fd: &OwnedFd, buf: &mut [u8]) -> Option<(usize, u8, i64)> {
    // SAFETY: plain-old-data structs; zero is a valid value for all of them.
    let mut sll: libc::sockaddr_ll = unsafe { mem::zeroed() };
    let mut cbuf = [0u64; 16];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: as above.
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_name = (&raw mut sll).cast();
    msg.msg_namelen = mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = mem::size_of_val(&cbuf);
    // SAFETY: every pointer in `msg` refers to a live local buffer of the
    // stated length.
    let n = unsafe { libc::recvmsg(fd.as_raw_fd(), &raw mut msg, libc::MSG_TRUNC) };
    if n < 0 {
        return None;
    }
    let mut ts = None;
    // SAFETY: the CMSG_* macros walk the control buffer the kernel just
    // filled, within msg_controllen.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&raw const msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_TIMESTAMPNS {
                let t: libc::timespec = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                ts = Some(t.tv_sec * 1_000_000_000 + t.tv_nsec);
            }
            c = libc::CMSG_NXTHDR(&raw const msg, c);
        }
    }
    let now = wall_ns();
    // A missing or implausible kernel stamp falls back to the read time.
    let ts = ts
        .filter(|t| (now - t).abs() < 2_000_000_000)
        .unwrap_or(now);
    Some(((n as usize).min(buf.len()), sll.sll_pkttype, ts))
}

fn socket_drops(fd: &OwnedFd) -> u64 {
    let mut stats = libc::tpacket_stats {
        tp_packets: 0,
        tp_drops: 0,
    };
    let mut len = mem::size_of::<libc::tpacket_stats>() as libc::socklen_t;
    // SAFETY: `stats` is a live tpacket_stats and `len` its size.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_PACKET,
            libc::PACKET_STATISTICS,
            (&raw mut stats).cast(),
            &raw mut len,
        )
    };
    if rc == 0 {
        u64::from(stats.tp_drops)
    } else {
        0
    }
}

impl Sniffer {
    /// Starts a tap on `ifname` in the namespace at `/run/netns/<netns>`,
    /// keeping frames from `src` in `direction`.
    pub fn start(
        netns: &str,
        ifname: &str,
        src: Ipv4Addr,
        direction: Direction,
        heartbeat_port: u16,
    ) -> anyhow::Result<Self> {
        let path = PathBuf::from("/run/netns").join(netns);
        let ns_file = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        let stop = Arc::new(AtomicBool::new(false));
        let shared = Arc::new(Mutex::new(Shared {
            window_start: wall_ns(),
            ..Shared::default()
        }));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let ifname = ifname.to_owned();
        let thread = {
            let stop = stop.clone();
            let shared = shared.clone();
            std::thread::Builder::new()
                .name(format!("sniff-{ifname}"))
                .spawn(move || {
                    let fd = nix::sched::setns(&ns_file, nix::sched::CloneFlags::CLONE_NEWNET)
                        .context("setns")
                        .and_then(|()| open_socket(&ifname, src));
                    let fd = match fd {
                        Ok(fd) => {
                            let _ = ready_tx.send(Ok(()));
                            fd
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    let mut buf = [0u8; 256];
                    let mut polls = 0u32;
                    while !stop.load(Ordering::Relaxed) {
                        let got = recv(&fd, &mut buf);
                        polls = polls.wrapping_add(1);
                        let Ok(mut sh) = shared.lock() else { return };
                        if polls.is_multiple_of(64) {
                            sh.drops += socket_drops(&fd);
                        }
                        let Some((n, pkttype, ts)) = got else {
                            continue;
                        };
                        let outgoing = pkttype == PACKET_OUTGOING;
                        if outgoing != (direction == Direction::Outbound) {
                            continue;
                        }
                        let Some(stream) = Stream::classify(&buf[..n], heartbeat_port) else {
                            continue;
                        };
                        let start = sh.window_start;
                        sh.streams
                            .entry(stream)
                            .or_insert_with(|| Gaps {
                                start_ns: start,
                                ..Gaps::default()
                            })
                            .push(ts);
                        sh.last.insert(stream, ts);
                    }
                })
                .context("spawning sniffer thread")?
        };
        let this = Sniffer {
            stop,
            shared,
            thread: Some(thread),
        };
        match ready_rx.recv_timeout(Duration::from_secs(5)) {
            Ok(Ok(())) => Ok(this),
            Ok(Err(e)) => Err(e),
            Err(_) => bail!("packet tap did not start"),
        }
    }

    /// Wall time of the last packet of `stream` seen (ever), if any.
    pub fn last(&self, stream: Stream) -> Option<i64> {
        self.shared.lock().ok()?.last.get(&stream).copied()
    }
}

impl Drop for Sniffer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(proto: u8, dport: u16) -> Vec<u8> {
        let mut f = vec![0u8; 14 + 20 + 8];
        f[12] = 0x08;
        f[14] = 0x45;
        f[14 + 9] = proto;
        f[34 + 2..34 + 4].copy_from_slice(&dport.to_be_bytes());
        f
    }

    #[test]
    fn classification() {
        assert_eq!(Stream::classify(&frame(112, 0), 6405), Some(Stream::Vrrp));
        assert_eq!(Stream::classify(&frame(17, 3784), 6405), Some(Stream::Bfd));
        assert_eq!(
            Stream::classify(&frame(17, 5405), 6405),
            Some(Stream::Corosync)
        );
        assert_eq!(
            Stream::classify(&frame(17, 6405), 6405),
            Some(Stream::Heartbeat)
        );
        assert_eq!(Stream::classify(&frame(17, 53), 6405), None);
        assert_eq!(Stream::classify(&frame(6, 5405), 6405), None);
        assert_eq!(Stream::classify(&[0u8; 10], 6405), None);
    }

    #[test]
    fn gaps_count_window_edges() {
        let mut g = Gaps {
            start_ns: 100,
            ..Gaps::default()
        };
        g.push(110);
        g.push(150);
        g.push(160);
        assert_eq!(g.max_gap_ns, 40);
        assert_eq!(g.packets, 3);
        assert_eq!(g.closed(300).max_gap_ns, 140);
        let silent = Gaps {
            start_ns: 100,
            ..Gaps::default()
        };
        assert_eq!(silent.closed(1100).max_gap_ns, 1000);
    }

    #[test]
    fn filter_program_shape() {
        let f = filter(Ipv4Addr::new(10, 200, 10, 1));
        assert_eq!(f.len(), 6);
        assert_eq!(f[3].k, 0x0ac80a01);
    }
}
