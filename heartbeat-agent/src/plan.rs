//! The plan: what the agent runs, derived once from the configuration and
//! the local node (and again on every reload). Every subsystem is started or
//! reconfigured from a plan; nothing else reads the configuration.

use std::{
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use heartbeat_cluster::{membership::StartMode, quorum::QuorumOptions};

use crate::{
    config::{ClusterConfig, LinkConfig, LinkRole, NodeConfig},
    keyfile::ClusterKeys,
};

/// Replaces `{node}` in a configured path with the local node's name, so one
/// cluster file serves several nodes on one machine (tests, the demo).
pub fn expand_node(path: &Path, node: &str) -> PathBuf {
    match path.to_str() {
        Some(s) if s.contains("{node}") => s.replace("{node}", node).into(),
        _ => path.to_owned(),
    }
}

/// One heartbeat link of the local node and the peers reachable on it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkPlan {
    pub link_id: u8,
    pub interface: String,
    pub local: IpAddr,
    /// (peer node id, the peer's address and the heartbeat port).
    pub peers: Vec<(u16, SocketAddr)>,
}

/// A peer and the heartbeat links it shares with the local node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerPlan {
    pub id: u16,
    pub name: String,
    pub priority: u32,
    pub votes: u32,
    pub links: Vec<u8>,
}

impl PeerPlan {
    /// Bit `l` set for every shared link `l` (the XDP program's PEERS map).
    pub fn link_bitmap(&self) -> u32 {
        self.links.iter().fold(0u32, |b, &l| b | (1 << l))
    }
}

/// Cluster settings that the configuration does not spell out yet take
/// these values (see `Settings::from_config`).
#[derive(Clone, Debug)]
pub struct Settings {
    pub quorum: QuorumOptions,
    pub start: StartMode,
    pub auto_start_timeout: Duration,
    pub restart_window: Duration,
    /// The persisted epoch and incarnation.
    pub state_file: PathBuf,
}

impl Settings {
    fn from_config(config: &ClusterConfig, local: &NodeConfig) -> Self {
        // The state file sits next to the control socket unless configured.
        let dir = config
            .control
            .socket
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        Self {
            quorum: QuorumOptions::default(),
            start: StartMode::Auto,
            auto_start_timeout: Duration::from_secs(10),
            restart_window: Duration::from_secs(5),
            state_file: dir.join(format!("{}.state", local.name)),
        }
    }
}

/// Everything derived from one configuration for the local node.
#[derive(Clone, Debug)]
pub struct Plan {
    pub config: Arc<ClusterConfig>,
    pub settings: Settings,
    pub local: NodeConfig,
    pub keys: ClusterKeys,
    pub peers: Vec<PeerPlan>,
    pub links: Vec<LinkPlan>,
    /// Interfaces carrying heartbeats (the XDP attachments), in order.
    pub interfaces: Vec<String>,
}

/// Heartbeat links of `local` shared with `peer`: (link id, peer's link).
fn shared_links<'a>(
    local: &'a NodeConfig,
    peer: &'a NodeConfig,
) -> impl Iterator<Item = (u8, &'a LinkConfig)> + 'a {
    local
        .links
        .iter()
        .filter(|l| l.role == LinkRole::Heartbeat)
        .filter_map(move |l| {
            peer.links
                .iter()
                .find(|p| p.id == l.id && p.role == LinkRole::Heartbeat)
                .map(|p| (l.id, p))
        })
}

impl Plan {
    /// The plan of `local` in `config` (whose `{node}` paths are expanded).
    pub fn new(mut config: ClusterConfig, local: &NodeConfig, keys: ClusterKeys) -> Self {
        config.control.socket = expand_node(&config.control.socket, &local.name);
        config.cluster.events_file = config
            .cluster
            .events_file
            .as_deref()
            .map(|p| expand_node(p, &local.name));
        let port = config.cluster.port;
        let peers: Vec<PeerPlan> = config
            .nodes
            .iter()
            .filter(|n| n.id != local.id)
            .map(|p| PeerPlan {
                id: p.id,
                name: p.name.clone(),
                priority: p.priority,
                votes: p.votes,
                links: shared_links(local, p).map(|(id, _)| id).collect(),
            })
            .collect();
        let mut links = Vec::new();
        let mut interfaces: Vec<String> = Vec::new();
        for l in local.links.iter().filter(|l| l.role == LinkRole::Heartbeat) {
            let mut dsts = Vec::new();
            for p in config.nodes.iter().filter(|n| n.id != local.id) {
                if let Some((_, pl)) = shared_links(local, p).find(|(id, _)| *id == l.id) {
                    dsts.push((p.id, SocketAddr::new(pl.address, port)));
                }
            }
            links.push(LinkPlan {
                link_id: l.id,
                interface: l.interface.clone(),
                local: l.address,
                peers: dsts,
            });
            if !interfaces.contains(&l.interface) {
                interfaces.push(l.interface.clone());
            }
        }
        Self {
            local: local.clone(),
            settings: Settings::from_config(&config, local),
            config: Arc::new(config),
            keys,
            peers,
            links,
            interfaces,
        }
    }

    /// A peer's name (or its id when unknown).
    pub fn name_of(&self, id: u16) -> String {
        self.config
            .node(id)
            .map(|n| n.name.clone())
            .unwrap_or_else(|| format!("node{id}"))
    }
}
