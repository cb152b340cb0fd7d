//! Two nodes and a traffic generator in network namespaces, as the
//! benchmark (`heartbeat-bench`) and tests use them. Two wirings:
//!
//! ```text
//! Plain:   gen ── A: gen_a ... if_a ═════════════════ if_b :B
//! Bridged: gen ── A: gen_a ... if_a ─ in_a [br0] wire_a ═ if_b :B
//! ```
//!
//! [`Wiring::Plain`] is a node with one NIC each: A's interface and B's are
//! the two ends of one veth pair, nothing else in the data path, no packet
//! tap. [`Wiring::Bridged`] puts, inside A, a bridge between A's interface
//! and a "wire port": every frame A sends then crosses the wire port's
//! transmit path, XDP_TX replies included (they skip the netdev egress hook
//! of the interface they were received on), so an nftables egress drop on
//! the wire port silences A as a cut cable would, and A's interface can go
//! down while B's carrier stays up, as behind a switch. The veth ends inside
//! A that receive XDP_TX frames run a pass-through XDP program (a veth runs
//! NAPI only with one attached). Use it for those two faults only.
//!
//! Like a NIC (a bare veth starts as `noqueue`), the node interfaces that
//! transmit get `pfifo_fast`: traffic with SO_PRIORITY 6 goes to its band 0.
//!
//! [`Placement`]: on a machine with two CPUs or more, A's processes (and the
//! generator's, which only feeds A) run on CPU 0 and B's on CPU 1
//! ([`TwoNodes::pinned`] prefixes a command with `taskset`), and RPS steers
//! the stack's receive work of each node's interfaces to its CPU. A veth
//! has no interrupt: the first part of receive (NAPI, so the XDP program and
//! the deadline timers it arms) runs in the softirq of the CPU that sent the
//! frame; RPS moves what XDP passes on.
//!
//! Every namespace is a [`Netns`] guard: dropping the topology kills what
//! runs inside and deletes them, also while a panic unwinds.

use std::{
    mem,
    net::Ipv4Addr,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    process::Command,
};

use crate::{HarnessError, Netns, Result, VethPair, attach_xdp_pass, in_netns};

/// Address of node A on the link.
pub const IP_A: Ipv4Addr = Ipv4Addr::new(10, 200, 10, 1);
/// Address of node B on the link.
pub const IP_B: Ipv4Addr = Ipv4Addr::new(10, 200, 10, 2);
/// The generator's address.
pub const IP_GEN: Ipv4Addr = Ipv4Addr::new(10, 200, 11, 2);
/// A's address towards the generator.
pub const IP_A_GEN: Ipv4Addr = Ipv4Addr::new(10, 200, 11, 1);

/// How A and B are joined (see the module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wiring {
    /// One veth pair: A's interface to B's.
    Plain,
    /// A's interface bridged, inside A, to a wire port that leads to B.
    Bridged,
}

/// Which CPU each node runs on; `None` on a machine with one CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placement {
    pub cpu_a: usize,
    pub cpu_b: usize,
}

impl Placement {
    /// A on CPU 0, B on CPU 1, when there are at least two.
    pub fn detect() -> Option<Self> {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        (n >= 2).then_some(Placement { cpu_a: 0, cpu_b: 1 })
    }
}

/// The nodes of a [`TwoNodes`] topology.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    A,
    B,
    /// The traffic generator (it only feeds A, so it runs on A's CPU).
    Generator,
}

/// Two nodes and a generator (see the module doc).
pub struct TwoNodes {
    /// A UDP socket created inside A, for interface ioctls (an ioctl acts in
    /// the namespace of the socket it is made on).
    ctl_a: OwnedFd,
    pub wiring: Wiring,
    pub placement: Option<Placement>,
    /// A's heartbeat interface.
    pub if_a: String,
    /// B's heartbeat interface.
    pub if_b: String,
    /// A's wire port ([`Wiring::Bridged`] only).
    pub wire_a: Option<String>,
    /// A's interface towards the generator.
    pub gen_a: String,
    /// Pass-through XDP programs on the veth ends inside A that receive
    /// XDP_TX frames ([`Wiring::Bridged`] only).
    _pass: Vec<aya::Ebpf>,
    // Declared last so they are dropped last, after the socket above.
    pub generator: Netns,
    pub a: Netns,
    pub b: Netns,
}

fn io_err(context: &str) -> HarnessError {
    HarnessError::Io {
        context: context.to_owned(),
        source: std::io::Error::last_os_error(),
    }
}

fn udp_socket() -> Result<OwnedFd> {
    // SAFETY: plain socket(2) call; the fd is owned right below.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(io_err("socket(AF_INET)"));
    }
    // SAFETY: `raw` is a fresh fd owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

fn ifreq(ifname: &str) -> Result<libc::ifreq> {
    // SAFETY: ifreq is plain old data; all-zero is valid.
    let mut req: libc::ifreq = unsafe { mem::zeroed() };
    let bytes = ifname.as_bytes();
    if bytes.len() >= req.ifr_name.len() {
        return Err(HarnessError::BadName(ifname.to_owned()));
    }
    for (d, s) in req.ifr_name.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    Ok(req)
}

/// Writes `value` to a sysfs file of namespace `ns` (sysfs shows the
/// interfaces of the namespace that mounts it, which `ip netns exec` does).
fn sysfs_write(ns: &Netns, path: &str, value: &str) -> Result<()> {
    ns.exec(&["sh", "-c", &format!("echo {value} > {path}")])
        .map(|_| ())
}

impl TwoNodes {
    /// Creates the namespaces, links, addresses, qdiscs, routes and RPS
    /// masks. `object` is the heartbeat XDP object (ELF bytes), needed for
    /// the pass-through programs of [`Wiring::Bridged`].
    pub fn new(wiring: Wiring, object: &[u8], placement: Option<Placement>) -> Result<Self> {
        let tag = match wiring {
            Wiring::Plain => "p",
            Wiring::Bridged => "w",
        };
        let generator = Netns::new(&format!("hbbench-{tag}g"))?;
        let a = Netns::new(&format!("hbbench-{tag}a"))?;
        let b = Netns::new(&format!("hbbench-{tag}b"))?;
        let (if_a, if_b, wire_a, pass) = match wiring {
            Wiring::Plain => {
                let pair = VethPair::connect(&a, &b, format!("{IP_A}/24"), format!("{IP_B}/24"))?;
                (pair.if_a, pair.if_b, None, Vec::new())
            }
            Wiring::Bridged => {
                // Answer ARP only on the interface that owns the address, or
                // A's bridge answers with its own MAC and swallows traffic.
                for key in ["all", "default"] {
                    a.exec(&[
                        "sysctl",
                        "-qw",
                        &format!("net.ipv4.conf.{key}.arp_ignore=1"),
                    ])?;
                }
                let inner = VethPair::connect(&a, &a, format!("{IP_A}/24"), Vec::<String>::new())?;
                let wire = VethPair::connect(&a, &b, Vec::<String>::new(), format!("{IP_B}/24"))?;
                a.ip(&["link", "add", "br0", "type", "bridge"])?;
                a.ip(&["link", "set", "br0", "up"])?;
                a.ip(&["link", "set", &inner.if_b, "master", "br0"])?;
                a.ip(&["link", "set", &wire.if_a, "master", "br0"])?;
                a.exec(&[
                    "tc",
                    "qdisc",
                    "replace",
                    "dev",
                    &wire.if_a,
                    "root",
                    "pfifo_fast",
                ])?;
                let pass = [&inner.if_b, &wire.if_a]
                    .into_iter()
                    .map(|dev| attach_xdp_pass(&a, dev, object))
                    .collect::<Result<Vec<_>>>()?;
                (inner.if_a, wire.if_b, Some(wire.if_a), pass)
            }
        };
        for (ns, dev) in [(&a, &if_a), (&b, &if_b)] {
            ns.exec(&["tc", "qdisc", "replace", "dev", dev, "root", "pfifo_fast"])?;
        }
        let gen_link = VethPair::connect(
            &generator,
            &a,
            format!("{IP_GEN}/24"),
            format!("{IP_A_GEN}/24"),
        )?;
        generator.ip(&["route", "add", "default", "via", &IP_A_GEN.to_string()])?;
        b.ip(&["route", "add", "10.200.11.0/24", "via", &IP_A.to_string()])?;
        a.exec(&["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])?;
        if let Some(p) = placement {
            let mask = |cpu: usize| format!("{:x}", 1u64 << cpu);
            for (ns, dev, cpu) in [
                (&a, &if_a, p.cpu_a),
                (&a, &gen_link.if_b, p.cpu_a),
                (&b, &if_b, p.cpu_b),
            ] {
                sysfs_write(
                    ns,
                    &format!("/sys/class/net/{dev}/queues/rx-0/rps_cpus"),
                    &mask(cpu),
                )?;
            }
        }
        let ctl_a = in_netns(a.name(), udp_socket)??;
        let topo = TwoNodes {
            ctl_a,
            wiring,
            placement,
            if_a,
            if_b,
            wire_a,
            gen_a: gen_link.if_b,
            _pass: pass,
            generator,
            a,
            b,
        };
        topo.wait_reachable()?;
        Ok(topo)
    }

    /// Bridge ports forward once the kernel's link watcher has seen their
    /// carrier (up to a second): wait until A and B reach each other.
    fn wait_reachable(&self) -> Result<()> {
        let mut last = None;
        for _ in 0..20 {
            match self
                .a
                .exec(&["ping", "-c", "1", "-W", "1", "-i", "0.2", &IP_B.to_string()])
            {
                Ok(_) => return Ok(()),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or(HarnessError::EmptyCommand))
    }

    /// The namespace of `side`.
    pub fn netns(&self, side: Side) -> &Netns {
        match side {
            Side::A => &self.a,
            Side::B => &self.b,
            Side::Generator => &self.generator,
        }
    }

    /// The CPU `side` runs on, if the machine has one per node.
    pub fn cpu(&self, side: Side) -> Option<usize> {
        self.placement.map(|p| match side {
            Side::A | Side::Generator => p.cpu_a,
            Side::B => p.cpu_b,
        })
    }

    /// `args` prefixed with `taskset -c CPU` when `side` has a CPU of its
    /// own (taskset execs the program, so its pid is the program's).
    pub fn pinned(&self, side: Side, args: &[&str]) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(cpu) = self.cpu(side) {
            out.extend(["taskset".to_owned(), "-c".to_owned(), cpu.to_string()]);
        }
        out.extend(args.iter().map(|s| (*s).to_owned()));
        out
    }

    /// A [`Command`] running `args` (pinned, see [`TwoNodes::pinned`]) in
    /// `side`'s namespace; start it with [`Netns::spawn`].
    pub fn command(&self, side: Side, args: &[&str]) -> Result<Command> {
        let args = self.pinned(side, args);
        let (program, rest) = args.split_first().ok_or(HarnessError::EmptyCommand)?;
        let mut cmd = self.netns(side).command(program);
        cmd.args(rest);
        Ok(cmd)
    }

    /// The interface of `side` on the heartbeat link (the generator has
    /// none: A's interface towards it is [`TwoNodes::gen_a`]).
    pub fn link_if(&self, side: Side) -> &str {
        match side {
            Side::A | Side::Generator => &self.if_a,
            Side::B => &self.if_b,
        }
    }

    /// Sets A's link interface up or down with one ioctl; returns the wall
    /// time (ns since the epoch) taken just before the call.
    pub fn set_link_a(&self, up: bool) -> Result<i64> {
        let mut req = ifreq(&self.if_a)?;
        let fd = self.ctl_a.as_raw_fd();
        // SAFETY: SIOCGIFFLAGS fills the flags of the ifreq we own.
        if unsafe { libc::ioctl(fd, libc::SIOCGIFFLAGS, &raw mut req) } != 0 {
            return Err(io_err("SIOCGIFFLAGS"));
        }
        // SAFETY: the kernel just wrote ifru_flags.
        let mut flags = unsafe { req.ifr_ifru.ifru_flags };
        if up {
            flags |= libc::IFF_UP as libc::c_short;
        } else {
            flags &= !(libc::IFF_UP as libc::c_short);
        }
        req.ifr_ifru.ifru_flags = flags;
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i64);
        // SAFETY: SIOCSIFFLAGS reads the ifreq we own.
        if unsafe { libc::ioctl(fd, libc::SIOCSIFFLAGS, &raw mut req) } != 0 {
            return Err(io_err("SIOCSIFFLAGS"));
        }
        Ok(t)
    }
}
