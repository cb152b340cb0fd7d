//! The XDP fast path: loads the embedded eBPF object, fills its
//! configuration, key and peer maps, attaches it to the heartbeat
//! interfaces, and hands out the map handles to their single owners.
//!
//! Dropping [`FastPath`] detaches the program from every interface; the
//! kernel also detaches it when the process dies (the attachment is a
//! bpf_link held by this process).

use aya::{
    Ebpf,
    maps::{Array, MapData, MapError, PerCpuArray, RingBuf},
    programs::{
        LinkOrder, ProgramError, RawTracePoint, SchedClassifier, TcAttachType, Xdp, XdpMode,
        tc::TcAttachOptions,
    },
};
use heartbeat_common::{
    AgentWatch, Config, Event, KeySlot, LinkState, LocalStatus, PeerConf, counter, link_slot, names,
};
use thiserror::Error;

use crate::{clock, keyfile::ClusterKeys};

/// Why the fast path could not be set up.
#[derive(Debug, Error)]
pub enum FastPathError {
    #[error(
        "loading the XDP program failed (are you root, or do you have CAP_BPF and CAP_NET_ADMIN?): {0}"
    )]
    Load(#[from] aya::EbpfError),
    #[error("the XDP program was rejected: {0}")]
    Program(#[source] ProgramError),
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: MapError,
    },
    #[error("the eBPF object has no map or program named {0}")]
    Missing(&'static str),
    #[error(
        "interface {interface} already has an XDP program attached (is another heartbeat-agent running on it? `ip link show {interface}` shows it)"
    )]
    Busy { interface: String },
    #[error("attaching XDP to interface {interface} failed: {source}")]
    Attach {
        interface: String,
        #[source]
        source: ProgramError,
    },
    #[error(
        "attaching the egress stamp (tc egress, TCX: Linux 6.6 or later) to interface {interface} failed: {source}"
    )]
    Egress {
        interface: String,
        #[source]
        source: ProgramError,
    },
}

/// What the program needs to know, from the configuration.
#[derive(Clone, Debug)]
pub struct FastPathParams {
    pub cluster_id: u32,
    pub local_node: u16,
    pub port: u16,
    pub node_timeout_ns: u64,
    pub agent_timeout_ns: u64,
    /// The sender's period (`cluster.heartbeat_interval`): the deferral
    /// rule's local-stall check (deadline.rs) needs it.
    pub heartbeat_interval_ns: u64,
    pub keys: ClusterKeys,
    /// (peer node id, bitmap of link ids shared with it).
    pub peers: Vec<(u16, u32)>,
}

/// Thresholds of the deferral rule (heartbeat-ebpf deadline.rs), derived
/// from `node_timeout`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Deferral {
    /// Timer lateness that makes an expiry blind: a quarter of
    /// `node_timeout`, at least 50 us (hrtimer slack is 10-20 us).
    pub late_threshold_ns: u64,
    /// Rising relative one-way delay that means "behind a queue": a quarter
    /// of `node_timeout`.
    pub queue_threshold_ns: u64,
    /// One deferral's grace: one more `node_timeout` (the kernel's cap).
    pub grace_ns: u64,
}

impl Deferral {
    pub fn for_timing(node_timeout_ns: u64) -> Self {
        Self {
            late_threshold_ns: (node_timeout_ns / 4).max(50_000),
            queue_threshold_ns: node_timeout_ns / 4,
            grace_ns: node_timeout_ns,
        }
    }
}

/// How the program ended up attached to an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachMode {
    /// Native (driver) mode.
    Driver,
    /// Generic mode: works everywhere, but runs after the skb is allocated.
    Generic,
}

impl AttachMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Driver => "native",
            Self::Generic => "generic",
        }
    }
}

/// The loaded program and the maps the agent reads.
pub struct FastPath {
    ebpf: Ebpf,
    config: Array<MapData, Config>,
    keys: Array<MapData, KeySlot>,
    links: Array<MapData, LinkState>,
    counters: PerCpuArray<MapData, u64>,
    agent: Array<MapData, AgentWatch>,
    /// Kept open: programs loaded after [`FastPath::load`] (the tracepoints,
    /// the egress stamp) refer to the maps by the fds the object was
    /// relocated with, so no map they use may be closed.
    _peers: Array<MapData, PeerConf>,
    params: FastPathParams,
}

/// Writer of the local status and dead-man stamp (`STATUS[0]`); owned by
/// the sender thread.
pub struct StatusWriter {
    map: Array<MapData, LocalStatus>,
}

impl StatusWriter {
    pub fn write(&mut self, status: &LocalStatus) -> Result<(), MapError> {
        self.map.set(0, status, 0)
    }
}

/// The `EVENTS` ring buffer; owned by the event reader task.
pub struct EventRing {
    pub ring: RingBuf<MapData>,
}

/// Next event of the ring, if one is waiting. A short record (which the
/// program never writes) reads as an all-zero event, which membership ignores.
pub fn next_event(ring: &mut RingBuf<MapData>) -> Option<Event> {
    {
        let item = ring.next()?;
        if item.len() < core::mem::size_of::<Event>() {
            return Some(Event::default());
        }
        // SAFETY: the record holds at least size_of::<Event>() bytes and
        // Event is a Pod made of integers (any bit pattern is valid).
        Some(unsafe { core::ptr::read_unaligned(item.as_ptr().cast::<Event>()) })
    }
}

fn take<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, FastPathError>
where
    T: TryFrom<aya::maps::Map, Error = MapError>,
{
    let map = ebpf.take_map(name).ok_or(FastPathError::Missing(name))?;
    T::try_from(map).map_err(|source| FastPathError::Map { name, source })
}

fn map_err(name: &'static str) -> impl Fn(MapError) -> FastPathError {
    move |source| FastPathError::Map { name, source }
}

impl FastPath {
    /// Loads the program and fills every map; the program stays disabled
    /// (passing everything) until [`FastPath::enable`].
    pub fn load(
        object: &[u8],
        params: FastPathParams,
    ) -> Result<(Self, StatusWriter, EventRing), FastPathError> {
        let mut ebpf = Ebpf::load(object)?;
        {
            let prog: &mut Xdp = ebpf
                .program_mut(names::PROGRAM)
                .ok_or(FastPathError::Missing(names::PROGRAM))?
                .try_into()
                .map_err(FastPathError::Program)?;
            prog.load().map_err(FastPathError::Program)?;
        }
        let config: Array<MapData, Config> = take(&mut ebpf, names::CONFIG)?;
        let keys: Array<MapData, KeySlot> = take(&mut ebpf, names::KEYS)?;
        let mut status: Array<MapData, LocalStatus> = take(&mut ebpf, names::STATUS)?;
        let mut peers: Array<MapData, PeerConf> = take(&mut ebpf, names::PEERS)?;
        let links: Array<MapData, LinkState> = take(&mut ebpf, names::LINKS)?;
        let counters: PerCpuArray<MapData, u64> = take(&mut ebpf, names::COUNTERS)?;
        let ring: RingBuf<MapData> = take(&mut ebpf, names::EVENTS)?;
        let agent: Array<MapData, AgentWatch> = take(&mut ebpf, names::AGENT)?;

        for &(id, links) in &params.peers {
            peers
                .set(u32::from(id), PeerConf { known: 1, links }, 0)
                .map_err(map_err(names::PEERS))?;
        }
        status
            .set(
                0,
                LocalStatus {
                    agent_stamp_ns: clock::mono_ns(),
                    ..LocalStatus::default()
                },
                0,
            )
            .map_err(map_err(names::STATUS))?;
        let mut fp = Self {
            ebpf,
            config,
            keys,
            links,
            counters,
            agent,
            _peers: peers,
            params,
        };
        fp.set_keys(&fp.params.keys.clone())?;
        fp.write_config(0)?;
        Ok((fp, StatusWriter { map: status }, EventRing { ring }))
    }

    fn write_config(&mut self, enabled: u32) -> Result<(), FastPathError> {
        let p = &self.params;
        let d = Deferral::for_timing(p.node_timeout_ns);
        let cfg = Config {
            node_timeout_ns: p.node_timeout_ns,
            agent_timeout_ns: p.agent_timeout_ns,
            cluster_id: p.cluster_id,
            local_node: p.local_node,
            port: p.port,
            enabled,
            _pad: 0,
            heartbeat_interval_ns: p.heartbeat_interval_ns,
            late_threshold_ns: d.late_threshold_ns,
            queue_threshold_ns: d.queue_threshold_ns,
            grace_ns: d.grace_ns,
        };
        self.config.set(0, cfg, 0).map_err(map_err(names::CONFIG))
    }

    /// Attaches the egress stamp (heartbeat-ebpf egress.rs) to `interface`
    /// with TCX: a bpf_link owned by this process, so nothing (no qdisc, no
    /// filter) is left behind when the agent exits, however it exits, and
    /// dropping [`FastPath`] detaches it. Other tc programs on the interface
    /// keep running (it observes and returns "next"). Without it the
    /// deferral rule's local-stall check stays off; the other checks work.
    pub fn attach_egress_stamp(&mut self, interface: &str) -> Result<(), FastPathError> {
        let err = |source| FastPathError::Egress {
            interface: interface.to_owned(),
            source,
        };
        let prog: &mut SchedClassifier = self
            .ebpf
            .program_mut(names::EGRESS_STAMP)
            .ok_or(FastPathError::Missing(names::EGRESS_STAMP))?
            .try_into()
            .map_err(FastPathError::Program)?;
        if prog.fd().is_err() {
            prog.load().map_err(FastPathError::Program)?;
        }
        // TCX only: the netlink fallback (clsact qdisc + cls_bpf filter)
        // outlives the process when it is killed.
        prog.attach_with_options(
            interface,
            TcAttachType::Egress,
            TcAttachOptions::TcxOrder(LinkOrder::default()),
        )
        .map(|_| ())
        .map_err(err)
    }

    /// Installs the current and next keys (key rotation without downtime:
    /// install the new key as `next` everywhere, then make it current).
    pub fn set_keys(&mut self, keys: &ClusterKeys) -> Result<(), FastPathError> {
        let slot = |k: Option<&[u8; 16]>| match k {
            Some(b) => {
                let k = heartbeat_common::siphash::SipKey::from_bytes(b);
                KeySlot {
                    k0: k.k0,
                    k1: k.k1,
                    active: 1,
                    _pad: 0,
                }
            }
            None => KeySlot::default(),
        };
        self.keys
            .set(0, slot(Some(&keys.current)), 0)
            .map_err(map_err(names::KEYS))?;
        self.keys
            .set(1, slot(keys.next.as_ref()), 0)
            .map_err(map_err(names::KEYS))?;
        self.params.keys = keys.clone();
        Ok(())
    }

    /// Attaches the tracepoints that tell the XDP program the moment the
    /// agent's sender thread (`sender_tid`) or main thread exits, or the
    /// agent is stopped. Without them (no tracefs, old kernel) the
    /// dead-man stamp alone closes the gate, after `agent_timeout`.
    pub fn watch_agent(&mut self, sender_tid: u32) -> Result<(), FastPathError> {
        for (name, event) in [
            (names::AGENT_EXIT, "sched_process_exit"),
            (names::AGENT_STOP, "signal_deliver"),
        ] {
            let prog: &mut RawTracePoint = self
                .ebpf
                .program_mut(name)
                .ok_or(FastPathError::Missing(name))?
                .try_into()
                .map_err(FastPathError::Program)?;
            prog.load().map_err(FastPathError::Program)?;
            prog.attach(event).map_err(FastPathError::Program)?;
        }
        let watch = AgentWatch {
            tgid: std::process::id(),
            sender_tid,
            ..AgentWatch::default()
        };
        self.agent.set(0, watch, 0).map_err(map_err(names::AGENT))
    }

    /// What the kernel's agent watch has seen (halts, last halt time).
    pub fn agent_watch(&self) -> Option<AgentWatch> {
        self.agent.get(&0, 0).ok()
    }

    /// Lets the program act on heartbeats.
    pub fn enable(&mut self) -> Result<(), FastPathError> {
        self.write_config(1)
    }

    /// Attaches to `interface` in native mode, falling back to generic mode.
    pub fn attach(&mut self, interface: &str) -> Result<AttachMode, FastPathError> {
        let prog: &mut Xdp = self
            .ebpf
            .program_mut(names::PROGRAM)
            .ok_or(FastPathError::Missing(names::PROGRAM))?
            .try_into()
            .map_err(FastPathError::Program)?;
        match prog.attach(interface, XdpMode::Driver) {
            Ok(_) => Ok(AttachMode::Driver),
            Err(ProgramError::UnknownInterface { name }) => Err(FastPathError::Attach {
                interface: interface.to_owned(),
                source: ProgramError::UnknownInterface { name },
            }),
            Err(ProgramError::SyscallError(e))
                if matches!(e.io_error.raw_os_error(), Some(libc::EEXIST | libc::EBUSY)) =>
            {
                Err(FastPathError::Busy {
                    interface: interface.to_owned(),
                })
            }
            Err(native) => {
                tracing::warn!(
                    interface,
                    error = %native,
                    "native XDP refused; falling back to generic mode (slower, but works on any driver)"
                );
                prog.attach(interface, XdpMode::Skb)
                    .map(|_| AttachMode::Generic)
                    .map_err(|source| FastPathError::Attach {
                        interface: interface.to_owned(),
                        source,
                    })
            }
        }
    }

    /// The program's state for (peer, link), if both are in range.
    pub fn link_state(&self, peer: u16, link: u8) -> Option<LinkState> {
        let slot = link_slot(peer, link)?;
        self.links.get(&slot, 0).ok()
    }

    /// The per-CPU counters summed over CPUs, indexed by `counter::*`.
    pub fn counters(&self) -> [u64; counter::COUNT as usize] {
        let mut out = [0u64; counter::COUNT as usize];
        for (i, slot) in out.iter_mut().enumerate() {
            if let Ok(values) = self.counters.get(&(i as u32), 0) {
                *slot = values.iter().copied().fold(0u64, u64::wrapping_add);
            }
        }
        out
    }

    pub fn params(&self) -> &FastPathParams {
        &self.params
    }
}

#[cfg(test)]
mod tests {
    use super::Deferral;

    #[test]
    fn deferral_thresholds_scale_with_node_timeout() {
        let d = Deferral::for_timing(5_000_000);
        assert_eq!(
            (d.late_threshold_ns, d.queue_threshold_ns, d.grace_ns),
            (1_250_000, 1_250_000, 5_000_000)
        );
        // Never below hrtimer slack.
        assert_eq!(Deferral::for_timing(100_000).late_threshold_ns, 50_000);
    }
}
