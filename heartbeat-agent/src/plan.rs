//! The plan: what the agent runs, derived once from the configuration and
//! the local node (and again on every reload). Every subsystem is started or
//! reconfigured from a plan; nothing else reads the configuration.

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use heartbeat_cluster::{membership::StartMode, quorum::QuorumOptions};

use crate::{
    config::{ClusterConfig, LinkConfig, LinkRole, NodeConfig},
    keyfile::ClusterKeys,
};

pub use crate::config::expand_node;

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

/// The cluster's settings for the membership state machine.
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
        let q = &config.quorum;
        let c = &config.cluster;
        Self {
            quorum: QuorumOptions {
                two_node: q.two_node,
                wait_for_all: q.wait_for_all,
                last_man_standing: q.last_man_standing,
                last_man_standing_window_ns: q.last_man_standing_window.as_nanos() as u64,
                auto_tie_breaker: q.auto_tie_breaker,
                quorum_server: q.quorum_server.is_some(),
            },
            start: if c.auto_start {
                StartMode::Auto
            } else {
                StartMode::Manual
            },
            auto_start_timeout: c.auto_start_timeout,
            restart_window: c.restart_window,
            state_file: config.local_paths(local).state_file,
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
    /// Interfaces carrying heartbeats and their standby cards (the XDP
    /// attachments), in order.
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
        let paths = config.local_paths(local);
        config.control.socket = paths.control_socket;
        config.cluster.events_file = paths.events_file;
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
            // A standby card is attached at start too (netif explains why).
            if let Some(s) = &l.standby
                && !interfaces.contains(s)
            {
                interfaces.push(s.clone());
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
