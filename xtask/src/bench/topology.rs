//! The bench's network: nodes A and B in their own namespaces joined by one
//! veth "wire" that carries heartbeats and data, and a traffic generator
//! namespace routed through A onto that same link.
//!
//! ```text
//!  gen 10.200.11.2 ── 10.200.11.1 A: if_a 10.200.10.1 ─ in_a [br0] wire_a ══ wire ══ if_b 10.200.10.2 B
//! ```
//!
//! A's interface is bridged, inside A, to its wire port. Every frame A sends
//! crosses the wire port's transmit path, including the replies its XDP
//! program sends with XDP_TX (which skip the netdev egress hook of the
//! interface they arrived on): the silent-egress fault is an nftables egress
//! drop on that wire port, inside A's namespace, so it silences A as a
//! broken cable would, for every system alike. The veth ends that receive
//! XDP_TX frames (in_a, wire_a) run the heartbeat program disabled, which
//! passes everything, so they run NAPI and take those frames.
//!
//! Like a real NIC (and unlike a bare veth, which starts as `noqueue`), the
//! transmitting interfaces get the default `pfifo_fast` qdisc: traffic with
//! SO_PRIORITY 6 (every system's heartbeats that set it) goes in its top band.
//!
//! Every namespace is a [`Netns`] guard: dropping the topology kills what
//! runs inside and deletes them, also while a panic unwinds.

use std::{
    mem,
    net::Ipv4Addr,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::Path,
};

use anyhow::{Context as _, bail};
use heartbeat_tests::{Netns, VethPair, attach_xdp_pass, in_netns};

use super::wall_ns;

/// Address of node A on the link.
pub const IP_A: Ipv4Addr = Ipv4Addr::new(10, 200, 10, 1);
/// Address of node B on the link.
pub const IP_B: Ipv4Addr = Ipv4Addr::new(10, 200, 10, 2);
/// The generator's address.
pub const IP_GEN: Ipv4Addr = Ipv4Addr::new(10, 200, 11, 2);
/// A's address towards the generator.
pub const IP_A_GEN: Ipv4Addr = Ipv4Addr::new(10, 200, 11, 1);

/// The heartbeat interfaces of A and B.
#[derive(Clone, Debug)]
pub struct Link {
    pub if_a: String,
    pub if_b: String,
}

/// The three namespaces and their links.
pub struct Topology {
    /// A UDP socket created inside A, used for interface ioctls (an ioctl
    /// acts in the namespace of the socket it is made on).
    ctl_a: OwnedFd,
    /// The heartbeat link: `if_a` in A, `if_b` in B (see the module doc).
    pub link: Link,
    /// A's wire port (where the silent-egress fault is injected).
    pub wire_a: String,
    /// Pass-through XDP programs on the veth ends that receive XDP_TX frames.
    _pass: Vec<aya::Ebpf>,
    // Declared last so they are dropped last, after the socket above.
    pub generator: Netns,
    pub a: Netns,
    pub b: Netns,
}

fn udp_socket() -> anyhow::Result<OwnedFd> {
    // SAFETY: plain socket(2) call; the fd is owned right below.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(std::io::Error::last_os_error()).context("socket(AF_INET)");
    }
    // SAFETY: `raw` is a fresh fd owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

fn ifreq(ifname: &str) -> anyhow::Result<libc::ifreq> {
    // SAFETY: ifreq is plain old data; all-zero is valid.
    let mut req: libc::ifreq = unsafe { mem::zeroed() };
    let bytes = ifname.as_bytes();
    if bytes.len() >= req.ifr_name.len() {
        bail!("interface name {ifname} too long");
    }
    for (d, s) in req.ifr_name.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    Ok(req)
}

/// (tx dropped, rx dropped) counters of `ifname` in `ns`.
pub fn drop_counters(ns: &Netns, ifname: &str) -> Option<(u64, u64)> {
    let out = ns.ip(&["-s", "-j", "link", "show", "dev", ifname]).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let stats = v.get(0)?.get("stats64")?;
    let get = |dir: &str| stats.get(dir)?.get("dropped")?.as_u64();
    Some((get("tx")?, get("rx")?))
}

impl Topology {
    /// Creates the namespaces, links, addresses, bridge, qdiscs and routes.
    /// `object` is the heartbeat XDP object (for the pass-through programs).
    pub fn new(object: &Path) -> anyhow::Result<Self> {
        let generator = Netns::new("hbbench-g").context("creating generator namespace")?;
        let a = Netns::new("hbbench-a").context("creating namespace A")?;
        let b = Netns::new("hbbench-b").context("creating namespace B")?;
        // Answer ARP only on the interface that owns the address, or A's
        // bridge answers with its own MAC and swallows A's traffic.
        for key in ["all", "default"] {
            a.exec(&[
                "sysctl",
                "-qw",
                &format!("net.ipv4.conf.{key}.arp_ignore=1"),
            ])?;
        }
        let inner = VethPair::connect(&a, &a, format!("{IP_A}/24"), Vec::<String>::new())
            .context("creating A's inner link")?;
        let wire = VethPair::connect(&a, &b, Vec::<String>::new(), format!("{IP_B}/24"))
            .context("creating the A-B wire")?;
        a.ip(&["link", "add", "br0", "type", "bridge"])?;
        a.ip(&["link", "set", "br0", "up"])?;
        a.ip(&["link", "set", &inner.if_b, "master", "br0"])?;
        a.ip(&["link", "set", &wire.if_a, "master", "br0"])?;
        for (ns, dev) in [(&a, &inner.if_a), (&a, &wire.if_a), (&b, &wire.if_b)] {
            ns.exec(&["tc", "qdisc", "replace", "dev", dev, "root", "pfifo_fast"])?;
        }
        let object =
            std::fs::read(object).with_context(|| format!("reading {}", object.display()))?;
        let pass = [&inner.if_b, &wire.if_a]
            .into_iter()
            .map(|dev| attach_xdp_pass(&a, dev, &object))
            .collect::<Result<Vec<_>, _>>()?;
        VethPair::connect(
            &generator,
            &a,
            format!("{IP_GEN}/24"),
            format!("{IP_A_GEN}/24"),
        )
        .context("creating the generator link")?;
        generator.ip(&["route", "add", "default", "via", &IP_A_GEN.to_string()])?;
        b.ip(&["route", "add", "10.200.11.0/24", "via", &IP_A.to_string()])?;
        a.exec(&["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])?;
        let ctl_a = in_netns(a.name(), udp_socket)??;
        // The bench's view of "the link": A's heartbeat interface and B's.
        let link = Link {
            if_a: inner.if_a.clone(),
            if_b: wire.if_b.clone(),
        };
        let topo = Topology {
            ctl_a,
            link,
            wire_a: wire.if_a.clone(),
            _pass: pass,
            generator,
            a,
            b,
        };
        topo.wait_reachable()?;
        Ok(topo)
    }

    /// New bridge ports forward once the kernel's link watcher has seen
    /// their carrier (up to a second): wait until A and B reach each other.
    fn wait_reachable(&self) -> anyhow::Result<()> {
        for _ in 0..20 {
            if self
                .a
                .exec(&["ping", "-c", "1", "-W", "1", "-i", "0.2", &IP_B.to_string()])
                .is_ok()
            {
                return Ok(());
            }
        }
        bail!("A cannot reach B over the bench link")
    }

    /// A's end of the heartbeat link.
    pub fn if_a(&self) -> &str {
        &self.link.if_a
    }

    /// B's end of the heartbeat link.
    pub fn if_b(&self) -> &str {
        &self.link.if_b
    }

    /// Drop counters of both ends of the link: (A tx, A rx, B tx, B rx).
    pub fn link_drops(&self) -> [u64; 4] {
        let (atx, arx) = drop_counters(&self.a, self.if_a()).unwrap_or_default();
        let (btx, brx) = drop_counters(&self.b, self.if_b()).unwrap_or_default();
        [atx, arx, btx, brx]
    }

    /// Sets A's link interface up or down with one ioctl; returns the wall
    /// time taken just before the call.
    pub fn set_link_a(&self, up: bool) -> anyhow::Result<i64> {
        let mut req = ifreq(self.if_a())?;
        let fd = self.ctl_a.as_raw_fd();
        // SAFETY: SIOCGIFFLAGS fills the flags of the ifreq we own.
        if unsafe { libc::ioctl(fd, libc::SIOCGIFFLAGS, &raw mut req) } != 0 {
            return Err(std::io::Error::last_os_error()).context("SIOCGIFFLAGS");
        }
        // SAFETY: the kernel just wrote ifru_flags.
        let mut flags = unsafe { req.ifr_ifru.ifru_flags };
        if up {
            flags |= libc::IFF_UP as libc::c_short;
        } else {
            flags &= !(libc::IFF_UP as libc::c_short);
        }
        req.ifr_ifru.ifru_flags = flags;
        let t = wall_ns();
        // SAFETY: SIOCSIFFLAGS reads the ifreq we own.
        if unsafe { libc::ioctl(fd, libc::SIOCSIFFLAGS, &raw mut req) } != 0 {
            return Err(std::io::Error::last_os_error()).context("SIOCSIFFLAGS");
        }
        Ok(t)
    }
}
