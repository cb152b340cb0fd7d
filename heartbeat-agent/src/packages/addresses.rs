//! A package's addresses: added and removed through rtnetlink (not by
//! running `ip`), and announced with gratuitous ARP (IPv4) or unsolicited
//! neighbour advertisements (IPv6) from a raw packet socket, so that the
//! segment's neighbour caches point at the new owner at once.
//!
//! - Adding an address that is already there and removing one that is not
//!   are not errors ([`Added::AlreadyPresent`], [`Removed::NotPresent`]):
//!   start and stop are idempotent. IPv6 addresses are added with
//!   `IFA_F_NODAD`: duplicate address detection would keep the address
//!   unusable for a second, and the lease rules already make sure that no
//!   other node holds it.
//! - Announcements: an ARP request with sender and target address both set
//!   to the package address (an "ARP announcement", RFC 5227 section 3),
//!   and an ICMPv6 neighbour advertisement to all-nodes with the Override
//!   flag and the target link-layer address option (RFC 4861 sections
//!   4.4 and 7.2.6). Both update existing neighbour entries on the segment
//!   (Linux accepts a gratuitous ARP as an override regardless of
//!   `locktime`); whether a host creates a *new* entry from one depends on
//!   its `arp_accept` / `accept_untracked_na` settings.
//!
//! The netlink and packet sockets belong to the network namespace of the
//! thread that creates them ([`Addresses::new`], [`announce`]).

use std::{
    fmt, io, mem,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    str::FromStr,
    sync::Arc,
    time::Duration,
};

use futures_util::TryStreamExt as _;
use rtnetlink::{
    Handle,
    packet_route::{
        address::{AddressAttribute, AddressFlags},
        link::LinkAttribute,
    },
};

/// Longest interface name (IFNAMSIZ - 1).
const IFNAME_MAX: usize = 15;

/// `10.0.0.100/24 dev eth1` (or an IPv6 address): one of a package's
/// `addresses`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PackageAddress {
    addr: IpAddr,
    prefix: u8,
    dev: String,
}

/// What is wrong with an address, its device, or adding, removing or
/// announcing it.
#[derive(Debug, thiserror::Error)]
pub enum AddressError {
    /// Not `ADDRESS/PREFIX dev DEVICE`.
    #[error(
        "`{0}`: expected `ADDRESS/PREFIX dev DEVICE` or `ADDRESS/PREFIX` (on the heartbeat link of that subnet), e.g. `10.0.0.100/24 dev eth1`"
    )]
    Syntax(String),
    /// An address that cannot be a service address.
    #[error(
        "`{0}`: not usable as a package address (unspecified, loopback, multicast or link-local)"
    )]
    Unusable(String),
    /// A prefix length above 32 (IPv4) or 128 (IPv6).
    #[error("`{0}`: prefix length out of range")]
    Prefix(String),
    /// An interface name the kernel does not accept.
    #[error("`{0}`: invalid interface name")]
    Device(String),
    /// The interface does not exist.
    #[error("no interface `{0}`")]
    NoSuchDevice(String),
    /// The interface has no Ethernet address.
    #[error("interface `{0}` has no Ethernet (6-byte) address to announce")]
    NoMac(String),
    /// A netlink request failed.
    #[error("{op} {addr}: {source}")]
    Netlink {
        /// What was being done.
        op: &'static str,
        /// The address.
        addr: String,
        /// The error.
        #[source]
        source: rtnetlink::Error,
    },
    /// The netlink or packet socket could not be opened or used.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: &'static str,
        /// The error.
        #[source]
        source: io::Error,
    },
}

impl PackageAddress {
    /// The address.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// Its prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// The interface it goes on (empty: not resolved yet, see
    /// [`PackageAddress::resolve`]).
    pub fn dev(&self) -> &str {
        &self.dev
    }

    /// The same address on another device.
    pub fn on_device(&self, dev: &str) -> Self {
        Self {
            dev: dev.to_owned(),
            ..self.clone()
        }
    }

    /// The address on this node: written without `dev`, it goes on the
    /// interface of the node's link whose address is in the same subnet
    /// (`links`: (address, interface)); `None` when no link is.
    pub fn resolve<'a>(&self, links: impl IntoIterator<Item = (IpAddr, &'a str)>) -> Option<Self> {
        if !self.dev.is_empty() {
            return Some(self.clone());
        }
        links
            .into_iter()
            .find(|(a, _)| same_subnet(*a, self.addr, self.prefix))
            .map(|(_, dev)| Self {
                dev: dev.to_owned(),
                ..self.clone()
            })
    }
}

/// Whether `a` and `b` share their first `prefix` bits.
fn same_subnet(a: IpAddr, b: IpAddr, prefix: u8) -> bool {
    let (a, b, bits) = match (a, b) {
        (IpAddr::V4(a), IpAddr::V4(b)) => (
            u128::from(u32::from(a)) << 96,
            u128::from(u32::from(b)) << 96,
            prefix.min(32),
        ),
        (IpAddr::V6(a), IpAddr::V6(b)) => (u128::from(a), u128::from(b), prefix.min(128)),
        _ => return false,
    };
    let mask = if bits == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(bits))
    };
    a & mask == b & mask
}

impl FromStr for PackageAddress {
    type Err = AddressError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let syntax = || AddressError::Syntax(s.to_owned());
        let mut words = s.split_ascii_whitespace();
        let (cidr, dev) = match (words.next(), words.next(), words.next(), words.next()) {
            (Some(cidr), Some("dev"), Some(dev), None) => (cidr, Some(dev)),
            // No device: the node's heartbeat link on that subnet.
            (Some(cidr), None, None, None) => (cidr, None),
            _ => return Err(syntax()),
        };
        let (ip, prefix) = cidr.split_once('/').ok_or_else(syntax)?;
        let addr: IpAddr = ip.parse().map_err(|_| syntax())?;
        let prefix: u8 = prefix.parse().map_err(|_| syntax())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return Err(AddressError::Prefix(s.to_owned()));
        }
        let unusable = addr.is_unspecified()
            || addr.is_loopback()
            || addr.is_multicast()
            || match addr {
                IpAddr::V4(a) => a.is_broadcast() || a.is_link_local(),
                IpAddr::V6(a) => a.is_unicast_link_local(),
            };
        if unusable {
            return Err(AddressError::Unusable(s.to_owned()));
        }
        let Some(dev) = dev else {
            return Ok(Self {
                addr,
                prefix,
                dev: String::new(),
            });
        };
        let dev_ok = !dev.is_empty()
            && dev.len() <= IFNAME_MAX
            && dev != "."
            && dev != ".."
            && dev
                .bytes()
                .all(|b| b.is_ascii_graphic() && b != b'/' && b != b':');
        if !dev_ok {
            return Err(AddressError::Device(dev.to_owned()));
        }
        Ok(Self {
            addr,
            prefix,
            dev: dev.to_owned(),
        })
    }
}

impl fmt::Display for PackageAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.dev.is_empty() {
            write!(f, "{}/{}", self.addr, self.prefix)
        } else {
            write!(f, "{}/{} dev {}", self.addr, self.prefix, self.dev)
        }
    }
}

/// What [`Addresses::add`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Added {
    /// The address was added.
    New,
    /// It was there already (EEXIST).
    AlreadyPresent,
}

/// What [`Addresses::remove`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Removed {
    /// The address was removed.
    Removed,
    /// It was not there.
    NotPresent,
}

/// An interface's index and Ethernet address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Link {
    /// Interface index.
    pub index: u32,
    /// Ethernet address.
    pub mac: [u8; 6],
}

/// An rtnetlink connection (its task runs on the tokio runtime it was
/// created on; dropping this ends it).
pub struct Addresses {
    handle: Handle,
    task: tokio::task::JoinHandle<()>,
    /// The announcements' packet socket, opened once and kept: closing an
    /// `AF_PACKET` socket waits for an RCU grace period (`packet_release`
    /// calls `synchronize_net`), 5–35 ms here, and a close on the runtime
    /// thread stalled every task on it, the leases' renewal included (a
    /// 5 ms lease lapsed at nearly every failover of the failover bench).
    /// The OS error of the open instead when it failed (each announcement
    /// then says why).
    packet: Result<Arc<PacketSocket>, Option<i32>>,
}

impl Drop for Addresses {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn is_errno(e: &rtnetlink::Error, errno: i32) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m) if m.raw_code() == -errno)
}

impl Addresses {
    /// Opens the connection in the calling thread's network namespace.
    /// Must be called within a tokio runtime.
    pub fn new() -> Result<Self, AddressError> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(|source| AddressError::Io {
            context: "opening an rtnetlink socket",
            source,
        })?;
        let task = tokio::spawn(conn);
        let packet = PacketSocket::open()
            .map(Arc::new)
            .map_err(|e| e.raw_os_error());
        Ok(Self {
            handle,
            task,
            packet,
        })
    }

    /// The kept packet socket, or why it could not be opened.
    fn packet(&self) -> Result<Arc<PacketSocket>, AddressError> {
        self.packet.clone().map_err(|code| AddressError::Io {
            context: "opening a packet socket",
            source: code.map_or_else(
                || io::Error::other("failed when the packages task started"),
                io::Error::from_raw_os_error,
            ),
        })
    }

    /// The index and Ethernet address of `dev`.
    pub async fn link(&self, dev: &str) -> Result<Link, AddressError> {
        let msg = self
            .handle
            .link()
            .get()
            .match_name(dev.to_owned())
            .execute()
            .try_next()
            .await;
        let msg = match msg {
            Ok(Some(msg)) => msg,
            Ok(None) => return Err(AddressError::NoSuchDevice(dev.to_owned())),
            Err(e) if is_errno(&e, libc::ENODEV) => {
                return Err(AddressError::NoSuchDevice(dev.to_owned()));
            }
            Err(source) => {
                return Err(AddressError::Netlink {
                    op: "looking up interface",
                    addr: dev.to_owned(),
                    source,
                });
            }
        };
        let mac = msg
            .attributes
            .iter()
            .find_map(|a| match a {
                LinkAttribute::Address(mac) => <[u8; 6]>::try_from(mac.as_slice()).ok(),
                _ => None,
            })
            .ok_or_else(|| AddressError::NoMac(dev.to_owned()))?;
        Ok(Link {
            index: msg.header.index,
            mac,
        })
    }

    /// Adds the address (IPv6 without duplicate address detection).
    pub async fn add(&self, a: &PackageAddress) -> Result<Added, AddressError> {
        let link = self.link(&a.dev).await?;
        let mut req = self.handle.address().add(link.index, a.addr, a.prefix);
        if a.addr.is_ipv6() {
            req.message_mut()
                .attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        match req.execute().await {
            Ok(()) => Ok(Added::New),
            Err(e) if is_errno(&e, libc::EEXIST) => Ok(Added::AlreadyPresent),
            Err(source) => Err(AddressError::Netlink {
                op: "adding",
                addr: a.to_string(),
                source,
            }),
        }
    }

    /// Whether the address is on its interface.
    pub async fn present(&self, a: &PackageAddress) -> Result<bool, AddressError> {
        Ok(self.find(a).await?.is_some())
    }

    async fn find(
        &self,
        a: &PackageAddress,
    ) -> Result<Option<rtnetlink::packet_route::address::AddressMessage>, AddressError> {
        let link = self.link(&a.dev).await?;
        self.handle
            .address()
            .get()
            .set_link_index_filter(link.index)
            .set_address_filter(a.addr)
            .set_prefix_length_filter(a.prefix)
            .execute()
            .try_next()
            .await
            .map_err(|source| AddressError::Netlink {
                op: "listing",
                addr: a.to_string(),
                source,
            })
    }

    /// Removes the address.
    pub async fn remove(&self, a: &PackageAddress) -> Result<Removed, AddressError> {
        let Some(msg) = self.find(a).await? else {
            return Ok(Removed::NotPresent);
        };
        match self.handle.address().del(msg).execute().await {
            Ok(()) => Ok(Removed::Removed),
            // Gone in between.
            Err(e) if is_errno(&e, libc::EADDRNOTAVAIL) || is_errno(&e, libc::ENOENT) => {
                Ok(Removed::NotPresent)
            }
            Err(source) => Err(AddressError::Netlink {
                op: "removing",
                addr: a.to_string(),
                source,
            }),
        }
    }
}

/// Ethernet broadcast.
const BROADCAST: [u8; 6] = [0xff; 6];
/// `33:33:00:00:00:01`, the Ethernet address of IPv6 all-nodes (ff02::1).
const ALL_NODES_MAC: [u8; 6] = [0x33, 0x33, 0, 0, 0, 1];
const ETH_P_ARP: u16 = 0x0806;
const ETH_P_IPV6: u16 = 0x86dd;

/// An ARP announcement for `ip` from `mac`: a broadcast request whose
/// sender and target protocol addresses are both `ip` (RFC 5227 §3).
pub fn garp_frame(mac: [u8; 6], ip: Ipv4Addr) -> [u8; 42] {
    let mut f = [0u8; 42];
    f[0..6].copy_from_slice(&BROADCAST);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&ETH_P_ARP.to_be_bytes());
    f[14..16].copy_from_slice(&1u16.to_be_bytes()); // hardware: Ethernet
    f[16..18].copy_from_slice(&0x0800u16.to_be_bytes()); // protocol: IPv4
    f[18] = 6;
    f[19] = 4;
    f[20..22].copy_from_slice(&1u16.to_be_bytes()); // request
    f[22..28].copy_from_slice(&mac);
    f[28..32].copy_from_slice(&ip.octets());
    // target hardware address stays zero
    f[38..42].copy_from_slice(&ip.octets());
    f
}

/// The Internet checksum (RFC 1071) of `data`.
fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An unsolicited neighbour advertisement for `ip` from `mac`: to
/// all-nodes, hop limit 255, Override set, Solicited clear, with the target
/// link-layer address option (RFC 4861 §4.4, §7.2.6).
pub fn unsolicited_na_frame(mac: [u8; 6], ip: Ipv6Addr) -> [u8; 86] {
    const ICMP_LEN: usize = 32;
    let all_nodes = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
    let mut f = [0u8; 86];
    f[0..6].copy_from_slice(&ALL_NODES_MAC);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&ETH_P_IPV6.to_be_bytes());
    let ip6 = &mut f[14..54];
    ip6[0] = 0x60;
    ip6[4..6].copy_from_slice(&(ICMP_LEN as u16).to_be_bytes());
    ip6[6] = 58; // ICMPv6
    ip6[7] = 255;
    ip6[8..24].copy_from_slice(&ip.octets());
    ip6[24..40].copy_from_slice(&all_nodes.octets());
    let icmp = &mut f[54..86];
    icmp[0] = 136; // neighbour advertisement
    icmp[4] = 0x20; // Override
    icmp[8..24].copy_from_slice(&ip.octets());
    icmp[24] = 2; // target link-layer address
    icmp[25] = 1; // 8 bytes
    icmp[26..32].copy_from_slice(&mac);
    // Checksum over the pseudo-header and the message.
    let mut pseudo = [0u8; 40 + ICMP_LEN];
    pseudo[0..16].copy_from_slice(&ip.octets());
    pseudo[16..32].copy_from_slice(&all_nodes.octets());
    pseudo[32..36].copy_from_slice(&(ICMP_LEN as u32).to_be_bytes());
    pseudo[39] = 58;
    pseudo[40..].copy_from_slice(&f[54..86]);
    let sum = checksum(&pseudo);
    f[56..58].copy_from_slice(&sum.to_be_bytes());
    f
}

/// A raw `AF_PACKET` socket that only sends (announcements here, and the
/// network manager's poll frames).
pub struct PacketSocket(OwnedFd);

impl PacketSocket {
    /// Opens it in the calling thread's network namespace.
    pub fn open() -> io::Result<Self> {
        // Protocol 0: the socket receives nothing.
        // SAFETY: plain socket(2) call; the result is checked before use.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a valid descriptor just returned by socket(2) and
        // owned by nothing else.
        Ok(Self(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Sends `frame` (with its Ethernet header) to `dst` out of interface
    /// `ifindex`.
    pub fn send(&self, ifindex: u32, dst: [u8; 6], frame: &[u8]) -> io::Result<()> {
        // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
        let mut sll: libc::sockaddr_ll = unsafe { mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_ifindex =
            i32::try_from(ifindex).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        sll.sll_halen = 6;
        sll.sll_addr[..6].copy_from_slice(&dst);
        // SAFETY: the buffer and the address are valid for the lengths
        // given; the descriptor is open (owned by self).
        let n = unsafe {
            libc::sendto(
                self.0.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&raw const sll).cast(),
                mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// The announcement of `ip` at `mac` (gratuitous ARP, or an unsolicited
/// neighbour advertisement): its destination and frame.
pub fn announcement(mac: [u8; 6], ip: IpAddr) -> ([u8; 6], Vec<u8>) {
    match ip {
        IpAddr::V4(v4) => (BROADCAST, garp_frame(mac, v4).to_vec()),
        IpAddr::V6(v6) => (ALL_NODES_MAC, unsolicited_na_frame(mac, v6).to_vec()),
    }
}

/// Announces `a` on its interface `count` times, `interval` apart, from the
/// calling thread's network namespace. Returns how many were sent.
pub async fn announce(
    addrs: &Addresses,
    a: &PackageAddress,
    count: u32,
    interval: Duration,
) -> Result<u32, AddressError> {
    let link = addrs.link(&a.dev).await?;
    let sock = addrs.packet()?;
    let (dst, frame) = announcement(link.mac, a.addr);
    for i in 0..count {
        if i > 0 {
            tokio::time::sleep(interval).await;
        }
        sock.send(link.index, dst, &frame)
            .map_err(|source| AddressError::Io {
                context: "sending an announcement",
                source,
            })?;
    }
    Ok(count)
}

/// Announces `a` again after each of `delays` (from now), in a task of
/// its own: a start's first announcements go out before the new owner's
/// kernel lease is valid when its successors grant it only after they
/// applied the placement (a re-admitted node taking a package back); the
/// node's own egress fence drops those (their sender address is the
/// package's), and a client would keep the old owner's MAC until its
/// neighbour entry fails, seconds later. Sends after the lease ended are
/// dropped by the same fence, so a late one never misleads.
pub async fn announce_later(
    addrs: &Addresses,
    a: &PackageAddress,
    delays: &'static [Duration],
) -> Result<(), AddressError> {
    let link = addrs.link(&a.dev).await?;
    let (dst, frame) = announcement(link.mac, a.addr);
    let index = link.index;
    let sock = addrs.packet()?;
    tokio::spawn(async move {
        let start = tokio::time::Instant::now();
        for d in delays {
            tokio::time::sleep_until(start + *d).await;
            if sock.send(index, dst, &frame).is_err() {
                return;
            }
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_and_reject_clearly() {
        let a: PackageAddress = "10.0.0.100/24 dev eth1".parse().unwrap();
        assert_eq!(a.addr(), IpAddr::V4(Ipv4Addr::new(10, 0, 0, 100)));
        assert_eq!((a.prefix(), a.dev()), (24, "eth1"));
        assert_eq!(a.to_string(), "10.0.0.100/24 dev eth1");
        let b: PackageAddress = " fd00::100/64   dev  eth1 ".parse().unwrap();
        assert_eq!(b.to_string(), "fd00::100/64 dev eth1");
        // Without a device: the heartbeat link of that subnet (resolved later).
        let c: PackageAddress = "10.0.0.100/24".parse().unwrap();
        assert_eq!((c.dev(), c.to_string().as_str()), ("", "10.0.0.100/24"));
        for bad in [
            "10.0.0.100 dev eth1",
            "10.0.0.100/24 on eth1",
            "10.0.0.100/24 dev eth1 extra",
            "10.0.0.x/24 dev eth1",
        ] {
            assert!(
                matches!(bad.parse::<PackageAddress>(), Err(AddressError::Syntax(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            "10.0.0.1/33 dev e".parse::<PackageAddress>(),
            Err(AddressError::Prefix(_))
        ));
        assert!(matches!(
            "fd00::1/129 dev e".parse::<PackageAddress>(),
            Err(AddressError::Prefix(_))
        ));
        for bad in [
            "0.0.0.0/0 dev e",
            "127.0.0.1/8 dev e",
            "224.0.0.1/4 dev e",
            "fe80::1/64 dev e",
            "::1/128 dev e",
        ] {
            assert!(
                matches!(
                    bad.parse::<PackageAddress>(),
                    Err(AddressError::Unusable(_))
                ),
                "{bad}"
            );
        }
        for bad in [
            "10.0.0.1/24 dev a/b",
            "10.0.0.1/24 dev ..",
            "10.0.0.1/24 dev sixteen-chars-xx",
        ] {
            assert!(
                matches!(bad.parse::<PackageAddress>(), Err(AddressError::Device(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn garp_frame_layout() {
        let mac = [2, 0, 0, 0, 0, 7];
        let f = garp_frame(mac, Ipv4Addr::new(10, 0, 0, 100));
        assert_eq!(&f[0..6], &[0xff; 6]);
        assert_eq!(&f[12..14], &[0x08, 0x06]);
        assert_eq!(&f[20..22], &[0, 1]);
        assert_eq!(&f[22..28], &mac);
        assert_eq!(&f[28..32], &[10, 0, 0, 100]);
        assert_eq!(&f[32..38], &[0; 6]);
        assert_eq!(&f[38..42], &[10, 0, 0, 100]);
    }

    #[test]
    fn na_frame_checksum_verifies() {
        let mac = [2, 0, 0, 0, 0, 7];
        let ip: Ipv6Addr = "fd00::100".parse().unwrap();
        let f = unsolicited_na_frame(mac, ip);
        // Recomputing over pseudo-header + message (checksum included) gives 0.
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&f[22..38]); // source
        pseudo.extend_from_slice(&f[38..54]); // destination
        pseudo.extend_from_slice(&32u32.to_be_bytes());
        pseudo.extend_from_slice(&[0, 0, 0, 58]);
        pseudo.extend_from_slice(&f[54..86]);
        assert_eq!(checksum(&pseudo), 0);
        assert_eq!(f[54], 136);
        assert_eq!(f[21], 255, "hop limit");
        assert_eq!(&f[80..86], &mac);
        // RFC 1071 example: 0x0001 f203 f4f5 f6f7 sums to 0xddf2.
        assert_eq!(
            checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]),
            !0xddf2
        );
    }
}
