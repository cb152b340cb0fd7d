//! The plan: what the agent runs, derived once from the configuration and
//! the local node (and again on every reload). Every subsystem is started or
//! reconfigured from a plan; nothing else reads the configuration.

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use heartbeat_cluster::{LinkId, NodeId, membership::StartMode, quorum::QuorumOptions};

use crate::{
    config::{ClusterConfig, LinkConfig, LinkRole, NodeConfig},
    keyfile::ClusterKeys,
};

pub use crate::config::expand_node;

/// One heartbeat link of the local node and the peers reachable on it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkPlan {
    pub link_id: LinkId,
    pub interface: String,
    pub local: IpAddr,
    /// (peer node id, the peer's address and the heartbeat port).
    pub peers: Vec<(NodeId, SocketAddr)>,
}

/// A peer and the heartbeat links it shares with the local node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerPlan {
    pub id: NodeId,
    pub name: String,
    pub priority: u32,
    pub votes: u32,
    pub links: Vec<LinkId>,
}

impl PeerPlan {
    /// Bit `l` set for every shared link `l` (the XDP program's PEERS map).
    pub fn link_bitmap(&self) -> u32 {
        self.links.iter().fold(0u32, |b, &l| b | (1 << l.0))
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
    /// The XDP (and tc egress) attachments, in order: the interfaces
    /// carrying heartbeats and their standby cards, then the devices of the
    /// local packages' addresses that carry none (the kernel fence).
    pub interfaces: Vec<String>,
}

/// Heartbeat links of `local` shared with `peer`: (link id, peer's link).
fn shared_links<'a>(
    local: &'a NodeConfig,
    peer: &'a NodeConfig,
) -> impl Iterator<Item = (LinkId, &'a LinkConfig)> + 'a {
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

/// The devices of the addresses of every package `local` may run, in
/// configuration order, each once.
pub fn fence_devices(config: &ClusterConfig, local: &NodeConfig) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for p in local_packages(config, local) {
        // (An address without a device goes on a heartbeat link, which
        // carries the programs already.)
        for a in p.addresses.iter().filter(|a| !a.dev().is_empty()) {
            if !out.iter().any(|d| d == a.dev()) {
                out.push(a.dev().to_owned());
            }
        }
    }
    out
}

/// The packages `local` may run (it is among their `nodes`), with their ids.
pub fn local_packages<'a>(
    config: &'a ClusterConfig,
    local: &'a NodeConfig,
) -> impl Iterator<Item = &'a crate::config::PackageConfig> + 'a {
    config
        .packages
        .iter()
        .filter(move |p| p.nodes.contains(&local.id))
}

impl Plan {
    /// Whether the node may run any package: the kernel fence is then
    /// pinned so that it outlives the agent (issue #9).
    pub fn fenced(&self) -> bool {
        local_packages(&self.config, &self.local).next().is_some()
    }

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
        // The kernel fence (issue #9) needs the programs on the devices of
        // the addresses of every package this node may run, too.
        for dev in fence_devices(&config, local) {
            if !interfaces.contains(&dev) {
                interfaces.push(dev);
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
    pub fn name_of(&self, id: NodeId) -> String {
        self.config
            .node(id)
            .map(|n| n.name.clone())
            .unwrap_or_else(|| format!("node{id}"))
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    const CONFIG: &str = r#"
[cluster]
name = "t"
id = 7
key_file = "k"
[[node]]
id = 1
name = "alpha"
  [[node.link]]
  id = 0
  interface = "hb0"
  address = "10.0.0.1"
[[node]]
id = 2
name = "beta"
  [[node.link]]
  id = 0
  interface = "hb0"
  address = "10.0.0.2"
[[package]]
name = "web"
nodes = ["alpha"]
addresses = ["10.1.0.100/24 dev eth1", "10.0.0.100/24", "fd00::64/64 dev eth1", "10.2.0.1/24 dev hb0"]
start = "/bin/true"
stop = "/bin/true"
monitor = "/bin/true"
[[package]]
name = "db"
nodes = ["beta"]
addresses = ["10.3.0.1/24 dev eth9"]
start = "/bin/true"
stop = "/bin/true"
monitor = "/bin/true"
"#;

    fn plan(node: &str) -> Plan {
        let cfg = ClusterConfig::from_str(CONFIG, Path::new("/etc/hb/cluster.toml")).unwrap();
        let local = cfg.local_node(Some(node)).unwrap().clone();
        Plan::new(
            cfg,
            &local,
            ClusterKeys {
                current: [0; 16],
                next: None,
            },
        )
    }

    #[test]
    fn the_fence_attaches_to_the_devices_of_the_local_packages() {
        // eth1 once; no device (a heartbeat link) and hb0 add nothing;
        // beta's package is not alpha's.
        let a = plan("alpha");
        assert!(a.fenced());
        assert_eq!(fence_devices(&a.config, &a.local), ["eth1", "hb0"]);
        assert_eq!(a.interfaces, ["hb0", "eth1"]);
        let b = plan("beta");
        assert!(b.fenced());
        assert_eq!(b.interfaces, ["hb0", "eth9"]);
        let p = crate::fence::initial_specs(&a);
        assert_eq!(p.len(), 1);
        assert_eq!((p[0].package, p[0].addrs.len(), p[0].renew), (0, 4, false));
        assert_eq!(crate::fence::initial_specs(&b)[0].package, 1);
    }
}
