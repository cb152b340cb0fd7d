//! The XDP fast path: loads the embedded eBPF object, fills its
//! configuration, key and peer maps, attaches it to the heartbeat
//! interfaces, and hands out the map handles to their single owners.
//!
//! Dropping [`FastPath`] detaches the program from every interface; the
//! kernel also detaches it when the process dies (the attachment is a
//! bpf_link held by this process).
//!
//! An announced restart ([`FastPath::announce_restart`],
//! [`FastPath::pin_for_restart`]) opens the restart window in `RESTART[0]`
//! and pins the XDP links and every map in bpffs (`pins`), so that the
//! program keeps answering after this process exits; the next agent loads
//! its object against the pinned maps ([`FastPath::load`] with a pin
//! directory), replaces the program in the pinned links (`bpf_link_update`:
//! an upgrade takes effect at once) and, once its sender runs, closes the
//! window and removes the pins ([`FastPath::finish_adoption`]).
//!
//! The kernel fence of package addresses (issue #9): [`Command::SetLeases`]
//! and [`Command::ReleaseLease`] drive `LEASES` (rules in `crate::fence`),
//! the task renews every heartbeat interval, and [`FastPath::pin_fence`]
//! pins links and maps so that the fence outlives the process.

use std::{
    collections::BTreeMap,
    os::fd::{AsFd as _, OwnedFd},
    path::{Path, PathBuf},
    time::Duration,
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, Map, MapData, MapError, PerCpuArray, RingBuf},
    programs::{
        LinkOrder, ProgramError, RawTracePoint, SchedClassifier, TcAttachType, Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        tc::{SchedClassifierLinkId, TcAttachOptions},
        xdp::{XdpLink, XdpLinkId},
    },
};
use heartbeat_common::{
    AgentWatch, Config, Event, KeySlot, LeaseEntry, LeaseKey, LinkState, LocalStatus, PeerConf,
    RestartWindow, counter, link_slot, names,
};
use thiserror::Error;
use tokio::{
    io::unix::AsyncFd,
    sync::{mpsc, watch},
};
use tokio_util::sync::CancellationToken;

use crate::{
    clock,
    cluster::{LinkChange, TransportEvent},
    fence::Fence,
    keyfile::ClusterKeys,
};

/// How often the fast path task publishes a snapshot of its maps.
pub const SNAPSHOT_EVERY: Duration = Duration::from_millis(100);

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
    #[error("bpffs pin: {0}")]
    Pin(#[from] crate::pins::PinError),
    #[error("pinning the XDP link of {interface}: {reason}")]
    PinLink { interface: String, reason: String },
    #[error("adopting the pinned XDP link of {interface}: {reason}")]
    Adopt { interface: String, reason: String },
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
    /// Kept open (and written on reload): programs loaded after
    /// [`FastPath::load`] (the tracepoints, the egress stamp) refer to the
    /// maps by the fds the object was relocated with.
    peers: Array<MapData, PeerConf>,
    restart: Array<MapData, RestartWindow>,
    /// A second descriptor of every map (by name), for pinning them at an
    /// announced restart.
    map_fds: Vec<(&'static str, OwnedFd)>,
    /// The XDP attachments' link ids, for pinning them.
    xdp_links: Vec<(String, AttachMode, XdpLinkId)>,
    /// The pin directory being adopted (set by a load from pins until
    /// [`FastPath::finish_adoption`]).
    adopting: Option<PathBuf>,
    /// Set by an adoption: the links the adopted program already holds up
    /// are reported once as up when the task starts (the kernel reports
    /// transitions only, and these happened before this agent ran).
    replay_up: bool,
    params: FastPathParams,
    attached: Vec<(String, AttachMode)>,
    enabled: u32,
    /// The kernel fence (issue #9): `LEASES`, what it should hold, and what
    /// was written to it.
    leases: HashMap<MapData, LeaseKey, LeaseEntry>,
    fence_on: Array<MapData, u32>,
    /// `GRANTS[0]`: the members of the local view (replies to them carry
    /// `node_state::GRANT`).
    grants: Array<MapData, u64>,
    fence: Fence,
    fence_written: BTreeMap<LeaseKey, LeaseEntry>,
    /// When the leases were last renewed (0: never).
    last_renew_ns: u64,
    /// The TCX egress attachments' link ids, for pinning them.
    tcx_links: Vec<(String, SchedClassifierLinkId)>,
    /// Set once the links and maps are pinned for the fence
    /// ([`FastPath::pin_fence`]): the pinned links, held until dropped.
    fence_pins: Option<(PathBuf, Vec<PinnedLink>)>,
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

/// A second descriptor of a map the object holds.
fn dup_map_fd(ebpf: &Ebpf, name: &'static str) -> Result<OwnedFd, FastPathError> {
    let map = ebpf.map(name).ok_or(FastPathError::Missing(name))?;
    let data = match map {
        Map::Array(d) | Map::PerCpuArray(d) | Map::RingBuf(d) | Map::HashMap(d) => d,
        _ => return Err(FastPathError::Missing(name)),
    };
    data.fd()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| FastPathError::Map {
            name,
            source: MapError::SyscallError(aya::sys::SyscallError {
                call: "dup",
                io_error: e,
            }),
        })
}

/// Why the pins in `dir` cannot be adopted by an agent with `params` on
/// `interfaces` (`Ok` when they can): the window must still be open, the
/// pins must belong to this cluster, node and port, and hold exactly one
/// XDP link per interface.
pub fn check_adoptable(
    dir: &Path,
    params: &FastPathParams,
    interfaces: &[String],
    now_ns: u64,
) -> Result<RestartWindow, String> {
    let open = |name: &str| {
        MapData::from_pin(dir.join(name)).map_err(|e| format!("pinned map {name}: {e}"))
    };
    let restart: Array<MapData, RestartWindow> =
        Array::try_from(Map::Array(open(names::RESTART)?)).map_err(|e| e.to_string())?;
    let window = restart.get(&0, 0).map_err(|e| e.to_string())?;
    if window.until_ns == 0 {
        return Err("no restart was announced".into());
    }
    if window.until_ns <= now_ns {
        return Err(format!(
            "the restart window ran out {} ms ago",
            (now_ns - window.until_ns) / 1_000_000
        ));
    }
    let config: Array<MapData, Config> =
        Array::try_from(Map::Array(open(names::CONFIG)?)).map_err(|e| e.to_string())?;
    let cfg = config.get(&0, 0).map_err(|e| e.to_string())?;
    if (cfg.cluster_id, cfg.local_node, cfg.port)
        != (params.cluster_id, params.local_node, params.port)
    {
        return Err(format!(
            "the pins belong to cluster {} node {} port {}, not cluster {} node {} port {}",
            cfg.cluster_id,
            cfg.local_node,
            cfg.port,
            params.cluster_id,
            params.local_node,
            params.port
        ));
    }
    for name in names::ALL_MAPS {
        if !dir.join(name).exists() {
            return Err(format!("map {name} is not pinned"));
        }
    }
    let mut pinned: Vec<String> = crate::pins::pinned_links(dir)
        .into_iter()
        .map(|(_, i)| i)
        .collect();
    let mut wanted = interfaces.to_vec();
    pinned.sort();
    wanted.sort();
    if pinned != wanted {
        return Err(format!(
            "pinned XDP links on [{}], the configuration has [{}]",
            pinned.join(", "),
            wanted.join(", ")
        ));
    }
    Ok(window)
}

impl FastPath {
    /// Loads the program and fills every map; the program stays disabled
    /// (passing everything) until [`FastPath::enable`]. With `adopt` (a pin
    /// directory that [`check_adoptable`] accepted) the object's maps are
    /// the pinned ones, whose per-(peer, link) state and timers carry on,
    /// and the program stays enabled: it is answering for this node.
    pub fn load(
        object: &[u8],
        params: FastPathParams,
        adopt: Option<&Path>,
    ) -> Result<(Self, StatusWriter, EventRing), FastPathError> {
        let mut ebpf = match adopt {
            None => Ebpf::load(object)?,
            Some(dir) => {
                let mut loader = EbpfLoader::new();
                for name in names::ALL_MAPS {
                    loader.map_pin_path(name, dir.join(name));
                }
                loader.load(object)?
            }
        };
        let map_fds = names::ALL_MAPS
            .iter()
            .map(|&n| Ok((n, dup_map_fd(&ebpf, n)?)))
            .collect::<Result<Vec<_>, FastPathError>>()?;
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
        // (`peers` is kept: reload replaces the configured peers.)
        let links: Array<MapData, LinkState> = take(&mut ebpf, names::LINKS)?;
        let counters: PerCpuArray<MapData, u64> = take(&mut ebpf, names::COUNTERS)?;
        let ring: RingBuf<MapData> = take(&mut ebpf, names::EVENTS)?;
        let agent: Array<MapData, AgentWatch> = take(&mut ebpf, names::AGENT)?;
        let restart: Array<MapData, RestartWindow> = take(&mut ebpf, names::RESTART)?;
        let leases: HashMap<MapData, LeaseKey, LeaseEntry> = take(&mut ebpf, names::LEASES)?;
        let fence_on: Array<MapData, u32> = take(&mut ebpf, names::FENCE_ON)?;
        let grants: Array<MapData, u64> = take(&mut ebpf, names::GRANTS)?;
        // Adopted (pinned) leases carry on: the running packages keep
        // their addresses through an announced restart.
        let fence_written: BTreeMap<LeaseKey, LeaseEntry> =
            leases.iter().filter_map(Result::ok).collect();
        let fence = Fence::adopt(&fence_written);

        if adopt.is_none() {
            for &(id, links) in &params.peers {
                peers
                    .set(u32::from(id), PeerConf { known: 1, links }, 0)
                    .map_err(map_err(names::PEERS))?;
            }
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
            peers,
            restart,
            map_fds,
            xdp_links: Vec::new(),
            adopting: adopt.map(Path::to_owned),
            replay_up: adopt.is_some(),
            params,
            attached: Vec::new(),
            enabled: 0,
            leases,
            fence_on,
            grants,
            fence,
            fence_written,
            last_renew_ns: 0,
            tcx_links: Vec::new(),
            fence_pins: None,
        };
        fp.set_keys(&fp.params.keys.clone())?;
        if adopt.is_some() {
            // The pinned PEERS may hold peers this configuration dropped.
            fp.set_peers(&fp.params.peers.clone())?;
            fp.enabled = 1;
        }
        fp.write_config(fp.enabled)?;
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
        let id = prog
            .attach_with_options(
                interface,
                TcAttachType::Egress,
                TcAttachOptions::TcxOrder(LinkOrder::default()),
            )
            .map_err(err)?;
        self.tcx_links.push((interface.to_owned(), id));
        Ok(())
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
        self.enabled = 1;
        self.write_config(1)
    }

    /// The attachments made so far.
    pub fn attached(&self) -> &[(String, AttachMode)] {
        &self.attached
    }

    /// Attaches to `interface` in native mode, falling back to generic mode.
    /// While adopting pins, takes over the pinned link of `interface`
    /// instead, replacing its program with this one in place.
    pub fn attach(&mut self, interface: &str) -> Result<AttachMode, FastPathError> {
        let (mode, id) = match self.adopting.clone() {
            Some(dir) => self.adopt_xdp(&dir, interface)?,
            None => self.attach_xdp(interface)?,
        };
        self.attached.push((interface.to_owned(), mode));
        self.xdp_links.push((interface.to_owned(), mode, id));
        Ok(mode)
    }

    fn xdp_program(&mut self) -> Result<&mut Xdp, FastPathError> {
        self.ebpf
            .program_mut(names::PROGRAM)
            .ok_or(FastPathError::Missing(names::PROGRAM))?
            .try_into()
            .map_err(FastPathError::Program)
    }

    fn adopt_xdp(
        &mut self,
        dir: &Path,
        interface: &str,
    ) -> Result<(AttachMode, XdpLinkId), FastPathError> {
        let err = |reason: String| FastPathError::Adopt {
            interface: interface.to_owned(),
            reason,
        };
        let (mode, name) = crate::pins::pinned_links(dir)
            .into_iter()
            .find(|(_, i)| i == interface)
            .ok_or_else(|| err("no pinned link".into()))?;
        let path = crate::pins::link_pin(dir, &mode, &name);
        let pinned = PinnedLink::from_pin(&path).map_err(|e| err(e.to_string()))?;
        let link = XdpLink::try_from(FdLink::from(pinned)).map_err(|e| err(e.to_string()))?;
        let id = self
            .xdp_program()?
            .attach_to_link(link)
            .map_err(|e| err(e.to_string()))?;
        let mode = if mode == "generic" {
            AttachMode::Generic
        } else {
            AttachMode::Driver
        };
        Ok((mode, id))
    }

    fn attach_xdp(&mut self, interface: &str) -> Result<(AttachMode, XdpLinkId), FastPathError> {
        let prog = self.xdp_program()?;
        match prog.attach(interface, XdpMode::Driver) {
            Ok(id) => Ok((AttachMode::Driver, id)),
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
                    .map(|id| (AttachMode::Generic, id))
                    .map_err(|source| FastPathError::Attach {
                        interface: interface.to_owned(),
                        source,
                    })
            }
        }
    }

    /// Forgets the attachments of a deleted interface (the kernel dropped
    /// them with it).
    fn forget(&mut self, interface: &str) {
        let (gone, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.xdp_links)
            .into_iter()
            .partition(|(i, _, _)| i == interface);
        self.xdp_links = kept;
        let ids: Vec<XdpLinkId> = gone.into_iter().map(|(_, _, id)| id).collect();
        self.attached.retain(|(i, _)| i != interface);
        if let Ok(prog) = self.xdp_program() {
            for id in ids {
                let _ = prog.detach(id);
            }
        }
    }

    /// Attaches XDP (and the egress stamp) to a recreated interface.
    pub fn reattach(&mut self, interface: &str) -> Result<(), FastPathError> {
        self.forget(interface);
        let (mode, id) = self.attach_xdp(interface)?;
        self.attached.push((interface.to_owned(), mode));
        self.xdp_links.push((interface.to_owned(), mode, id));
        tracing::info!(interface, mode = mode.as_str(), "XDP attached again");
        if let Err(e) = self.attach_egress_stamp(interface) {
            tracing::warn!(interface, error = %e, "cannot stamp own requests on egress again");
        }
        Ok(())
    }

    /// Hands out the `NIC_POLL` map (standby NIC takeover: the netif task
    /// owns it); `None` when the object has none or it was taken.
    pub fn take_nic_poll(
        &mut self,
    ) -> Option<aya::maps::HashMap<MapData, u32, heartbeat_common::nic_poll::NicPoll>> {
        let map = self.ebpf.take_map(heartbeat_common::nic_poll::MAP)?;
        aya::maps::HashMap::try_from(map).ok()
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

    /// Opens the restart window: until `until_ns` (CLOCK_MONOTONIC) the
    /// program keeps answering although the agent's sender exits, with
    /// `RESTARTING` in its replies. Written before the sender stops.
    pub fn announce_restart(&mut self, until_ns: u64) -> Result<(), FastPathError> {
        let w = RestartWindow {
            until_ns,
            announced_ns: crate::clock::mono_ns(),
        };
        self.restart.set(0, w, 0).map_err(map_err(names::RESTART))
    }

    /// Pins every map and XDP link under `dir` (created; stale pins of an
    /// earlier run removed first), so that dropping this [`FastPath`]
    /// leaves the program attached and answering. The other programs (the
    /// egress stamp, the agent watch) are not pinned: they detach with this
    /// process and the next agent attaches its own.
    pub fn pin_for_restart(&mut self, dir: &Path) -> Result<(), FastPathError> {
        if self.fence_pins.as_ref().is_some_and(|(d, _)| d == dir) {
            // The fence pinned every map and XDP link there already (and
            // the TCX links, which the next agent replaces).
            return Ok(());
        }
        // The pins keep the links (and through them the program) alive
        // once the descriptors close.
        self.pin_maps_and_xdp(dir)?;
        Ok(())
    }

    /// Ends an adoption: closes the restart window (the gate follows the
    /// new agent's stamp from now on) and removes the pins; the maps and
    /// links now live as long as this process holds them, as after a fresh
    /// start. Nothing to do after a fresh start.
    pub fn finish_adoption(&mut self) -> Result<(), FastPathError> {
        let Some(dir) = self.adopting.take() else {
            return Ok(());
        };
        self.restart
            .set(0, RestartWindow::default(), 0)
            .map_err(map_err(names::RESTART))?;
        crate::pins::remove(&dir, false)?;
        Ok(())
    }
}

/// What the fast path task publishes for status and metrics.
#[derive(Clone, Debug, Default)]
pub struct FastSnapshot {
    /// Per-(peer, link) state, for every configured pair.
    pub links: BTreeMap<(u16, u8), LinkState>,
    /// The XDP counters summed over CPUs, indexed by `counter::*`.
    pub counters: Vec<u64>,
    /// (interface, attach mode) of every attachment.
    pub attached: Vec<(String, AttachMode)>,
    /// Events the task could not read (short records).
    pub bad_events: u64,
    /// Package id → CLOCK_MONOTONIC ns its kernel lease runs out (0:
    /// fenced), for every package the fast path enforces.
    pub leases: BTreeMap<u16, u64>,
    /// Lease renewals (a package's expiry extended) so far.
    pub lease_renewals: u64,
    /// Package leases found run out while listed for renewal.
    pub lease_lapses: u64,
}

/// Changes to the fast path while it runs (reload).
#[derive(Debug)]
pub enum Command {
    SetKeys(ClusterKeys),
    /// (peer, link bitmap); peers not listed are forgotten.
    SetPeers(Vec<(u16, u32)>),
    SetTimeouts {
        node_timeout_ns: u64,
        agent_timeout_ns: u64,
    },
    /// The complete set of package leases the kernel enforces (issue #9):
    /// every configured package address is fenced (XDP drops traffic to
    /// it, tc egress traffic from it) unless its package's lease is valid.
    /// A package listed with `renew = false` keeps its current expiry and
    /// runs out; one not listed any more is fenced at once.
    SetLeases(Vec<LeaseSpec>),
    /// Ends a package's lease now (it is being stopped or lost).
    ReleaseLease(u16),
    /// The members of the local view (bit = node id), written to `GRANTS`:
    /// replies to them carry `node_state::GRANT` and may anchor their
    /// package leases. `done` is answered once the kernel has them.
    SetGrants {
        members: u64,
        done: Option<tokio::sync::oneshot::Sender<()>>,
    },
    /// The interface was deleted: its attachments are gone (issue #12 row
    /// 3; status stops showing them).
    Detached(String),
    /// The interface was (re)created: attach XDP and the egress stamp to it
    /// again.
    Reattach(String),
}

/// One package's lease as the fast path renews it (issue #9, see
/// `heartbeat_cluster::lease` for the timing argument).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseSpec {
    /// The package's id (its index among `[[package]]`).
    pub package: u16,
    /// Its addresses: traffic to and from them passes only while the lease
    /// is valid.
    pub addrs: Vec<std::net::IpAddr>,
    /// Whether the holder may renew now: a member of a quorate view whose
    /// placement gives it the package, and its monitor passes.
    pub renew: bool,
    /// The other members eligible for the package: a renewal is anchored
    /// at the send time of the newest heartbeat every one of them has
    /// answered (none: at the time of renewal).
    pub successors: Vec<u16>,
    /// `L`, the lease length.
    pub lease_ns: u64,
    /// The packages state machine's acquisition of this lease: a lease
    /// that was valid and ran out is not renewed again in the same
    /// generation (the holder must pass the start rule first and list a
    /// new one; see `crate::fence`).
    pub generation: u32,
    /// The epoch of the placement the holder acts on: a generation that
    /// has not been valid yet may become valid only in the epoch it was
    /// acquired in (its start rule was checked in that view).
    pub epoch: u64,
}

/// A package lease that ran out while its holder still listed it for
/// renewal (the fast path tells the packages task at once).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseLapse {
    /// The package.
    pub package: u16,
    /// The generation that lapsed.
    pub generation: u32,
}

/// Turns a kernel event into a transport event; `None` for a record the
/// program never writes (counted by the caller).
pub fn transport_event(ev: &Event) -> Option<TransportEvent> {
    use heartbeat_common::event_kind;
    match ev.kind {
        event_kind::LINK_DOWN | event_kind::LINK_UP => Some(TransportEvent::Link {
            peer: ev.peer,
            link: ev.link,
            change: if ev.kind == event_kind::LINK_UP {
                LinkChange::Up
            } else {
                LinkChange::Down
            },
            at_ns: ev.at_ns,
            last_rx_ns: ev.last_rx_ns,
        }),
        event_kind::AGENT_STALE => Some(TransportEvent::LocalGateClosed {
            peer: ev.peer,
            link: ev.link,
            at_ns: ev.at_ns,
        }),
        event_kind::DEFERRED_LOCAL_STALL
        | event_kind::DEFERRED_LATE_TIMER
        | event_kind::DEFERRED_PEER_QUEUED => Some(TransportEvent::Deferred {
            peer: ev.peer,
            link: ev.link,
            cause: match ev.kind {
                event_kind::DEFERRED_LOCAL_STALL => heartbeat_common::defer_cause::LOCAL_STALL,
                event_kind::DEFERRED_LATE_TIMER => heartbeat_common::defer_cause::LATE_TIMER,
                _ => heartbeat_common::defer_cause::PEER_QUEUED,
            },
            at_ns: ev.at_ns,
            last_rx_ns: ev.last_rx_ns,
        }),
        _ => None,
    }
}

/// The fast path task: the single owner of the loaded program, its maps and
/// attachments. Reads kernel events as they come (turned into transport
/// events for the cluster), publishes a snapshot every [`SNAPSHOT_EVERY`],
/// applies commands. Returns the [`FastPath`] when cancelled, so that the
/// supervisor decides when XDP is detached (by dropping it).
/// A periodic `CLOCK_MONOTONIC` timerfd the runtime waits on through its
/// epoll: it wakes within microseconds of each period, where tokio's own
/// timer has millisecond granularity.
struct PreciseTick {
    fd: AsyncFd<std::os::fd::OwnedFd>,
}

impl PreciseTick {
    fn new(period: Duration) -> std::io::Result<Self> {
        use std::os::fd::FromRawFd as _;
        // SAFETY: plain timerfd_create(2); the result is checked.
        let raw = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if raw < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor owned by nothing else.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(raw) };
        let ts = libc::timespec {
            tv_sec: period.as_secs() as libc::time_t,
            tv_nsec: period.subsec_nanos() as libc::c_long,
        };
        let spec = libc::itimerspec {
            it_interval: ts,
            it_value: ts,
        };
        // SAFETY: `fd` is a timerfd; `spec` is a valid itimerspec; the old
        // value is not asked for.
        if unsafe { libc::timerfd_settime(raw, 0, &spec, std::ptr::null_mut()) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: the OwnedFd moves into the AsyncFd, which owns it until
        // dropped: it is neither closed nor replaced while registered.
        let fd = unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE)? };
        Ok(Self { fd })
    }

    /// Waits for the next expiry (expiries missed meanwhile count as one).
    async fn tick(&mut self) {
        use std::os::fd::AsRawFd as _;
        loop {
            let Ok(mut guard) = self.fd.readable_mut().await else {
                // The reactor is gone (shutdown): never tick again.
                return std::future::pending().await;
            };
            let mut expirations = 0u64;
            // SAFETY: reads 8 bytes into a u64 from a timerfd.
            let n = unsafe {
                libc::read(
                    guard.get_inner().as_raw_fd(),
                    (&raw mut expirations).cast(),
                    std::mem::size_of::<u64>(),
                )
            };
            if n == 8 {
                return;
            }
            guard.clear_ready();
        }
    }
}

pub async fn run(
    mut fp: FastPath,
    ring: EventRing,
    events: mpsc::Sender<TransportEvent>,
    snapshot: watch::Sender<FastSnapshot>,
    mut commands: mpsc::Receiver<Command>,
    lapses: mpsc::UnboundedSender<LeaseLapse>,
    cancel: CancellationToken,
) -> FastPath {
    // SAFETY: the RingBuf owns its map fd and is neither closed nor replaced
    // while the AsyncFd holds it.
    let mut ring = match unsafe { AsyncFd::register(ring.ring) } {
        Ok(r) => Some(r),
        Err(e) => {
            tracing::error!(error = %e, "cannot watch the event ring buffer; link events are read every 100 ms");
            None
        }
    };
    let mut tick = tokio::time::interval(SNAPSHOT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut bad_events = 0u64;
    // The fence's renewals, every heartbeat interval (at least 100 us), on
    // a timerfd: tokio's timer rounds every wait up to the next whole
    // millisecond, so its 1 ms interval ticked every 2-3 ms and a 5 ms
    // lease was left 1-2 ms of margin (it lapsed at most failovers of the
    // failover bench). The tokio interval stays as the fallback.
    let renew_every = Duration::from_nanos(fp.params.heartbeat_interval_ns.max(100_000));
    let mut precise = match PreciseTick::new(renew_every) {
        Ok(t) => Some(t),
        Err(e) => {
            tracing::warn!(error = %e, "no timerfd for the lease renewals; they follow the runtime's millisecond timer");
            None
        }
    };
    let mut renew_tick = tokio::time::interval(renew_every);
    renew_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            guard = async { ring.as_mut().expect("checked").readable_mut().await }, if ring.is_some() => {
                let Ok(mut guard) = guard else { continue };
                while let Some(ev) = next_event(guard.get_inner_mut()) {
                    match transport_event(&ev) {
                        Some(t) => { let _ = events.send(t).await; }
                        None => bad_events += 1,
                    }
                }
                guard.clear_ready();
            }
            Some(cmd) = commands.recv() => {
                if let Err(e) = fp.apply(cmd) {
                    tracing::error!(error = %e, "fast path: cannot apply a change");
                }
            }
            _ = tick.tick() => {
                let snap = fp.snapshot(bad_events);
                snapshot.send_replace(snap);
            }
            _ = async {
                match precise.as_mut() {
                    Some(t) => t.tick().await,
                    None => {
                        renew_tick.tick().await;
                    }
                }
            }, if fp.fence.renewing() => {
                if let Err(e) = fp.renew_leases() {
                    tracing::error!(error = %e, "fast path: cannot renew the package leases");
                }
            }
            () = cancel.cancelled() => break,
        }
        // Lapses (a renewal or a SetLeases found a lease run out) go to the
        // packages task at once: one per generation, so the channel stays
        // small; without a packages task nobody listens.
        for lapse in fp.fence.take_lapses() {
            let _ = lapses.send(lapse);
        }
    }
    fp
}

impl FastPath {
    fn apply(&mut self, cmd: Command) -> Result<(), FastPathError> {
        match cmd {
            Command::SetKeys(k) => self.set_keys(&k),
            Command::SetPeers(peers) => self.set_peers(&peers),
            Command::SetTimeouts {
                node_timeout_ns,
                agent_timeout_ns,
            } => {
                self.params.node_timeout_ns = node_timeout_ns;
                self.params.agent_timeout_ns = agent_timeout_ns;
                self.write_config(self.enabled)
            }
            Command::SetLeases(specs) => self.set_leases(specs),
            Command::ReleaseLease(package) => self.release_lease(package),
            Command::SetGrants { members, done } => {
                let r = self
                    .grants
                    .set(0, members, 0)
                    .map_err(map_err(names::GRANTS));
                if let Some(d) = done {
                    let _ = d.send(());
                }
                r
            }
            Command::Detached(interface) => {
                self.forget(&interface);
                Ok(())
            }
            Command::Reattach(interface) => self.reattach(&interface),
        }
    }

    /// After an adoption (once): an up event for every configured (peer,
    /// link) the adopted program holds up, so that reachability starts
    /// from what the kernel already knows (it reports transitions only,
    /// and these happened before this agent ran). The supervisor queues
    /// them before the cluster task starts.
    pub fn adopted_up_events(&mut self) -> Vec<TransportEvent> {
        if !std::mem::take(&mut self.replay_up) {
            return Vec::new();
        }
        let now = clock::mono_ns();
        self.snapshot(0)
            .links
            .into_iter()
            .filter(|(_, st)| st.up != 0)
            .map(|((peer, link), st)| TransportEvent::Link {
                peer,
                link,
                change: LinkChange::Up,
                at_ns: if st.last_up_ns != 0 {
                    st.last_up_ns
                } else {
                    now
                },
                last_rx_ns: st.last_rx_ns,
            })
            .collect()
    }

    /// Replaces the configured peers and their links.
    pub fn set_peers(&mut self, peers: &[(u16, u32)]) -> Result<(), FastPathError> {
        for id in 1..heartbeat_common::MAX_NODES {
            let conf = peers
                .iter()
                .find(|(p, _)| u32::from(*p) == id)
                .map(|&(_, links)| PeerConf { known: 1, links })
                .unwrap_or_default();
            self.peers.set(id, conf, 0).map_err(map_err(names::PEERS))?;
        }
        self.params.peers = peers.to_vec();
        Ok(())
    }

    /// The maps' current state.
    pub fn snapshot(&self, bad_events: u64) -> FastSnapshot {
        let mut links = BTreeMap::new();
        for &(peer, bitmap) in &self.params.peers {
            for l in 0..heartbeat_common::MAX_LINKS as u8 {
                if bitmap & (1 << l) != 0
                    && let Some(st) = self.link_state(peer, l)
                {
                    links.insert((peer, l), st);
                }
            }
        }
        FastSnapshot {
            links,
            counters: self.counters().to_vec(),
            attached: self.attached.clone(),
            bad_events,
            leases: self.fence.leases(),
            lease_renewals: self.fence.renewals(),
            lease_lapses: self.fence.lapsed_total(),
        }
    }
}

/// The newest own send time `peer` answered on any of its configured links
/// (`LinkState::last_reply_tx_ns`; 0: none).
fn newest_reply_tx(links: &Array<MapData, LinkState>, peers: &[(u16, u32)], peer: u16) -> u64 {
    let Some(&(_, bitmap)) = peers.iter().find(|(p, _)| *p == peer) else {
        return 0;
    };
    (0..heartbeat_common::MAX_LINKS as u8)
        .filter(|l| bitmap & (1 << l) != 0)
        .filter_map(|l| link_slot(peer, l))
        .filter_map(|slot| links.get(&slot, 0).ok())
        .map(|st| st.last_reply_tx_ns)
        .max()
        .unwrap_or(0)
}

/// The kernel fence (issue #9; crate::fence has the rules, heartbeat-ebpf
/// fence.rs the programs' side).
impl FastPath {
    /// `Command::SetLeases`: replaces the listed packages, renews those
    /// that may be renewed, and writes `LEASES`.
    pub fn set_leases(&mut self, specs: Vec<LeaseSpec>) -> Result<(), FastPathError> {
        let now = clock::mono_ns();
        let (links, peers) = (&self.links, &self.params.peers);
        self.fence
            .set(specs, now, |p| newest_reply_tx(links, peers, p));
        self.write_leases()
    }

    /// `Command::ReleaseLease`: fences the package's addresses at once.
    pub fn release_lease(&mut self, package: u16) -> Result<(), FastPathError> {
        if !self.fence.release(package) {
            tracing::warn!(
                package,
                "release of a package lease the fast path does not hold"
            );
        }
        self.write_leases()
    }

    /// One renewal round (the task runs it every heartbeat interval);
    /// returns how many leases were extended.
    pub fn renew_leases(&mut self) -> Result<u64, FastPathError> {
        let now = clock::mono_ns();
        let (links, peers) = (&self.links, &self.params.peers);
        let before = self.fence.pending_lapses().len();
        let n = self.fence.renew(now, |p| newest_reply_tx(links, peers, p));
        // A lapse says why: how long ago the lease ran out, how late this
        // renewal came, and how old each successor's newest grant is.
        for l in &self.fence.pending_lapses()[before..] {
            let Some((until, successors, lease_ns)) = self.fence.held(l.package) else {
                continue;
            };
            let grants_age_us: Vec<(u16, u64)> = successors
                .iter()
                .map(|&s| {
                    (
                        s,
                        now.saturating_sub(newest_reply_tx(links, peers, s)) / 1000,
                    )
                })
                .collect();
            tracing::warn!(
                package = l.package,
                generation = l.generation,
                ran_out_us_ago = now.saturating_sub(until) / 1000,
                lease_us = lease_ns / 1000,
                since_last_renewal_us = now.saturating_sub(self.last_renew_ns) / 1000,
                grants_age_us = ?grants_age_us,
                "a package lease lapsed"
            );
        }
        self.last_renew_ns = now;
        if n > 0 {
            self.write_leases()?;
        }
        Ok(n)
    }

    /// Writes the entries of `LEASES` that changed; turns the fence on
    /// (`FENCE_ON`) once the map holds an address.
    fn write_leases(&mut self) -> Result<(), FastPathError> {
        for (k, e) in self.fence.entries() {
            if self.fence_written.get(&k) != Some(&e) {
                self.leases
                    .insert(k, e, 0)
                    .map_err(map_err(names::LEASES))?;
                self.fence_written.insert(k, e);
            }
        }
        if !self.fence_written.is_empty() {
            self.fence_on
                .set(0, 1, 0)
                .map_err(map_err(names::FENCE_ON))?;
        }
        Ok(())
    }

    /// What `LEASES` holds now, read back from the kernel.
    pub fn lease_entries(&self) -> BTreeMap<LeaseKey, LeaseEntry> {
        self.leases.iter().filter_map(Result::ok).collect()
    }

    /// Pins every map and XDP link under `dir` (created, mode 0700; stale
    /// pins removed first), the layout an announced restart and the fence
    /// share; returns the pinned XDP links.
    fn pin_maps_and_xdp(&mut self, dir: &Path) -> Result<Vec<PinnedLink>, FastPathError> {
        crate::pins::remove(dir, false)?;
        // Root only: the pins give access to the cluster key (KEYS).
        std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700)
            .create(dir)
            .map_err(|source| crate::pins::PinError::Io {
                path: dir.to_owned(),
                source,
            })?;
        for (name, fd) in &self.map_fds {
            crate::pins::pin_fd(fd.as_fd(), &dir.join(name))?;
        }
        let mut held = Vec::new();
        for (interface, mode, id) in std::mem::take(&mut self.xdp_links) {
            let err = |reason: String| FastPathError::PinLink {
                interface: interface.clone(),
                reason,
            };
            let link = self
                .xdp_program()?
                .take_link(id)
                .map_err(|e| err(e.to_string()))?;
            let fd_link = FdLink::try_from(link).map_err(|e| {
                err(format!(
                    "{e} (a netlink attachment, not a bpf_link: cannot be pinned)"
                ))
            })?;
            let mode = if mode == AttachMode::Generic {
                "generic"
            } else {
                "native"
            };
            let pinned = fd_link
                .pin(crate::pins::link_pin(dir, mode, &interface))
                .map_err(|e| err(e.to_string()))?;
            held.push(pinned);
        }
        Ok(held)
    }

    /// Pins every map, XDP link and TCX egress link under `dir` (stale
    /// pins removed first), so that the fence holds after this process is
    /// gone, however it goes: the programs stay attached with the leases
    /// running out. A graceful stop, `heartbeat-agent detach`, or the next
    /// agent (adopting or not) removes them. The layout is an announced
    /// restart's ([`FastPath::pin_for_restart`], which then has nothing
    /// left to do), plus the TCX links as `tcx-egress-<interface>`.
    pub fn pin_fence(&mut self, dir: &Path) -> Result<(), FastPathError> {
        let mut held = self.pin_maps_and_xdp(dir)?;
        for (interface, id) in std::mem::take(&mut self.tcx_links) {
            let err = |reason: String| FastPathError::PinLink {
                interface: interface.clone(),
                reason,
            };
            let prog: &mut SchedClassifier = self
                .ebpf
                .program_mut(names::EGRESS_STAMP)
                .ok_or(FastPathError::Missing(names::EGRESS_STAMP))?
                .try_into()
                .map_err(FastPathError::Program)?;
            let link = prog.take_link(id).map_err(|e| err(e.to_string()))?;
            let fd_link = FdLink::try_from(link).map_err(|e| err(e.to_string()))?;
            let pinned = fd_link
                .pin(crate::pins::tcx_pin(dir, &interface))
                .map_err(|e| err(e.to_string()))?;
            held.push(pinned);
        }
        self.fence_pins = Some((dir.to_owned(), held));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{Deferral, PreciseTick};

    /// The renewal tick wakes once per period, not once per millisecond
    /// of tokio's timer (generous bounds: a loaded machine only delays).
    #[tokio::test(flavor = "current_thread")]
    async fn the_precise_tick_wakes_every_period() {
        let mut t = PreciseTick::new(Duration::from_micros(500)).unwrap();
        let start = std::time::Instant::now();
        for _ in 0..40 {
            t.tick().await;
        }
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(19), "{took:?}");
        assert!(took < Duration::from_secs(5), "{took:?}");
    }

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
