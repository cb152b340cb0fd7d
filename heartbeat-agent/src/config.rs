//! Cluster configuration: the TOML schema, its validation, and checks against the local system.
//!
//! One TOML file describes the whole cluster (see `docs/configuration.md`).
//! [`ClusterConfig::load`] reads it (at most [`MAX_CONFIG_LEN`] bytes) and
//! runs every check that needs nothing but the file;
//! [`ClusterConfig::check_system`] then checks what the local host must
//! provide (interfaces, key file), and [`ClusterConfig::check_resources`]
//! what `check-config --node` can check without side effects (ports, paths).
//!
//! Reading is serde derive in two steps: `raw` holds one struct per table
//! with `deny_unknown_fields` and `toml::Spanned` values, whose value types
//! check each value and say what was expected; this module then turns
//! serde's errors into `FILE:LINE:COLUMN: key `PATH`: message` (`locate`
//! finds the key path from the error's span in toml's span-keeping document
//! and words an unknown key with a "did you mean" and the valid keys),
//! applies defaults, and runs the rules across keys, each naming both keys
//! and pointing at the right line. `system` holds the checks against the
//! local host.
//! Keys that wait for a later roadmap issue are refused with its number.

mod locate;
mod raw;
mod serial;
mod system;
mod watchdog;

pub use serial::{
    DEFAULT_SERIAL_BAUD, DEFAULT_SERIAL_INTERVAL, DEFAULT_SERIAL_TIMEOUT, MIN_SERIAL_INTERVAL,
    NodeSerial, SerialSection, SerialSettings,
};
pub use watchdog::{DEFAULT_WATCHDOG_TIMEOUT, MAX_WATCHDOG_TIMEOUT, WatchdogSection};

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::fmt;
use std::io::Read as _;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use heartbeat_cluster::{LinkId, NodeId};
use heartbeat_common::maps::{MAX_LINKS, MAX_NODES};
use toml::Spanned;
use toml::de::DeTable;

use crate::keyfile::KeyError;
use crate::netif::machine::NetifSettings;
use crate::packages::addresses::PackageAddress;
use crate::packages::runner::{
    CommandLine, OcfAgent, OcfParams, PackageName, PackageSpec, Service, Timeouts,
};
use heartbeat_cluster::placement::{FailbackPolicy, FailoverPolicy, OnAllUnhealthy};

use locate::{Seg, closest, locate, plain_serde_message, render, table_kind, walk};
use raw::{Field, Value as _};

/// Default UDP port of the heartbeat protocol.
pub const DEFAULT_PORT: u16 = 6405;
/// Default `cluster.heartbeat_interval`.
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_millis(100);
/// Default `cluster.node_timeout`.
pub const DEFAULT_NODE_TIMEOUT: Duration = Duration::from_millis(500);
/// Default `cluster.agent_timeout`.
pub const DEFAULT_AGENT_TIMEOUT: Duration = Duration::from_secs(1);
/// Default `cluster.auto_start_timeout`.
pub const DEFAULT_AUTO_START_TIMEOUT: Duration = Duration::from_secs(10);
/// Default `cluster.restart_window`.
pub const DEFAULT_RESTART_WINDOW: Duration = Duration::from_secs(5);
/// Longest accepted `cluster.restart_window`: a node that dies during an
/// announced restart is only noticed when the window runs out.
pub const MAX_RESTART_WINDOW: Duration = Duration::from_secs(60);
/// Shortest accepted `cluster.restart_window`.
pub const MIN_RESTART_WINDOW: Duration = Duration::from_millis(100);
/// Default `cluster.state_file` (`{node}` is the local node's name).
pub const DEFAULT_STATE_FILE: &str = "/var/lib/heartbeat/{node}.state";
/// Default `quorum.last_man_standing_window`.
pub const DEFAULT_LAST_MAN_STANDING_WINDOW: Duration = Duration::from_secs(10);
/// Default `quorum.quorum_server_timeout`.
pub const DEFAULT_QUORUM_SERVER_TIMEOUT: Duration = Duration::from_secs(1);
/// Default `control.socket`.
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/heartbeat/control.sock";
/// The shortest default `cluster.package_lease` (the default is
/// `node_timeout`, but at least this): the fast path renews leases from a
/// timer of millisecond resolution, so a shorter lease would lapse between
/// two renewals and fence a healthy owner.
pub const MIN_DEFAULT_PACKAGE_LEASE: Duration = Duration::from_millis(5);
/// Default `cluster.lease_margin`.
pub const DEFAULT_LEASE_MARGIN: Duration = Duration::from_micros(200);
/// Default `cluster.clock_drift_ppm` (NTP's bound on a disciplined clock).
pub const DEFAULT_CLOCK_DRIFT_PPM: u32 = 500;
/// Default `cluster.announce_count`.
pub const DEFAULT_ANNOUNCE_COUNT: u32 = 3;
/// Default `package.monitor_interval`.
pub const DEFAULT_MONITOR_INTERVAL: Duration = Duration::from_secs(1);
/// Default `package.start_timeout`.
pub const DEFAULT_START_TIMEOUT: Duration = Duration::from_secs(30);
/// Default `package.stop_timeout`.
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// Default `package.monitor_timeout`.
pub const DEFAULT_MONITOR_TIMEOUT: Duration = Duration::from_secs(5);
/// Most `[[package]]` tables: package health travels as a 64-bit bitmap
/// in every heartbeat reply.
pub const MAX_PACKAGES: usize = 64;
/// Default `node.priority`.
pub const DEFAULT_PRIORITY: u32 = 100;
/// Default `node.votes`.
pub const DEFAULT_VOTES: u32 = 1;
/// Smallest accepted `cluster.heartbeat_interval` (guards against typos
/// such as `"1ns"` that would flood the networks).
pub const MIN_HEARTBEAT_INTERVAL: Duration = Duration::from_micros(10);
/// Highest node id (node ids are `1..=MAX_NODE_ID`).
pub const MAX_NODE_ID: u16 = (MAX_NODES - 1) as u16;
/// Highest link id (link ids are `0..=MAX_LINK_ID`).
pub const MAX_LINK_ID: u8 = (MAX_LINKS - 1) as u8;
/// Longest cluster or node name.
pub const MAX_NAME_LEN: usize = 64;
/// Largest configuration file read (a real one is a few kilobytes).
pub const MAX_CONFIG_LEN: u64 = 1024 * 1024;
/// Longest value (in characters) echoed in a message; longer ones are cut
/// and end in `…`.
pub const MAX_SHOWN_LEN: usize = 80;
/// Longest Unix socket path (`sun_path` is 108 bytes with the NUL).
const MAX_SOCKET_PATH: usize = 107;

/// The whole cluster's configuration, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// The file it was read from, as given (used in messages).
    pub path: PathBuf,
    pub cluster: ClusterSection,
    pub quorum: QuorumSection,
    pub metrics: Option<MetricsSection>,
    pub control: ControlSection,
    pub nodes: Vec<NodeConfig>,
    /// `[[package]]`, in the order written (a package's index is its
    /// `heartbeat_cluster::placement::PackageId`).
    pub packages: Vec<PackageConfig>,
    /// `[serial]`: the serial heartbeat line (two-node clusters only; then
    /// every node has its `NodeConfig::serial`).
    pub serial: Option<SerialSection>,
    /// `[watchdog]`: the watchdog self-fence (None: off, the default).
    pub watchdog: Option<WatchdogSection>,
    /// Where each key was written in the file, so that later checks
    /// ([`ClusterConfig::check_system`]) can point at the line. Empty for a
    /// configuration built in code.
    pub locations: Locations,
}

/// One `[[package]]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageConfig {
    /// Its service, name and timeouts, as the runner takes them.
    pub spec: PackageSpec,
    /// `nodes`, resolved to ids, most preferred first.
    pub nodes: Vec<NodeId>,
    /// `failover_policy` (default `configured_node`).
    pub failover_policy: FailoverPolicy,
    /// `failback_policy` (default `manual`).
    pub failback_policy: FailbackPolicy,
    /// `on_all_unhealthy` (default `keep_best`).
    pub on_all_unhealthy: OnAllUnhealthy,
    /// `addresses`.
    pub addresses: Vec<PackageAddress>,
    /// `restart_limit` (default 0: the first monitor failure fails over).
    pub restart_limit: u32,
}

impl PackageConfig {
    /// Every address the kernel fence guards for this package: its
    /// `addresses`, and the one an OCF address agent manages itself
    /// ([`crate::packages::runner::Service::managed_address`]).
    pub fn fenced_addrs(&self) -> Vec<std::net::IpAddr> {
        let mut v: Vec<std::net::IpAddr> = self.addresses.iter().map(|a| a.addr()).collect();
        if let Some(a) = self.spec.service.managed_address()
            && !v.contains(&a)
        {
            v.push(a);
        }
        v
    }
}

/// `[cluster]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSection {
    pub name: String,
    pub id: u32,
    /// Resolved against the config file's directory.
    pub key_file: PathBuf,
    pub port: u16,
    pub heartbeat_interval: Duration,
    pub node_timeout: Duration,
    pub agent_timeout: Duration,
    /// Resolved against the config file's directory; may hold `{node}`.
    pub events_file: Option<PathBuf>,
    /// Where the agent persists its epoch and incarnation. Resolved against
    /// the config file's directory; may hold `{node}`.
    pub state_file: PathBuf,
    /// Form the cluster at start without an operator (else
    /// `heartbeat-agent cluster start`).
    pub auto_start: bool,
    /// How long a starting node waits for all configured nodes before
    /// forming with fewer (with `auto_start`).
    pub auto_start_timeout: Duration,
    /// How long peers keep a node whose agent announced a restart as
    /// `restarting` before they count it failed.
    pub restart_window: Duration,
    /// `L`: how long a package's kernel lease holds after the heartbeat it
    /// is anchored at (default: node_timeout, at least 5 ms).
    pub package_lease: Duration,
    /// `m`: allowance added to the wait for an old owner's lease.
    pub lease_margin: Duration,
    /// `ρ`: the bound on any clock's rate error, ppm (default 500).
    pub clock_drift_ppm: u32,
    /// Gratuitous ARP / unsolicited NA sent per package address on start.
    pub announce_count: u32,
    /// Standby NIC takeover: the poller and the failback (`network_*`,
    /// `auto_failback`, `failback_hold`).
    pub netif: NetifSettings,
}

/// `[quorum]` (votequorum's options; every flag false when the section is
/// absent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuorumSection {
    /// Two nodes, quorum 1 (implies `wait_for_all`).
    pub two_node: bool,
    /// A starting cluster is quorate only once all nodes have been seen
    /// together. True whenever `two_node` is.
    pub wait_for_all: bool,
    /// Expected votes follow the members after `last_man_standing_window`.
    pub last_man_standing: bool,
    pub last_man_standing_window: Duration,
    /// Exactly half the votes: the half holding the lowest node id wins.
    pub auto_tie_breaker: bool,
    /// The quorum server that breaks ties, when there is one.
    pub quorum_server: Option<SocketAddr>,
    pub quorum_server_timeout: Duration,
}

impl Default for QuorumSection {
    fn default() -> Self {
        QuorumSection {
            two_node: false,
            wait_for_all: false,
            last_man_standing: false,
            last_man_standing_window: DEFAULT_LAST_MAN_STANDING_WINDOW,
            auto_tie_breaker: false,
            quorum_server: None,
            quorum_server_timeout: DEFAULT_QUORUM_SERVER_TIMEOUT,
        }
    }
}

/// `[metrics]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsSection {
    pub listen: SocketAddr,
}

/// `[control]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlSection {
    /// Resolved against the config file's directory; may hold `{node}`.
    pub socket: PathBuf,
}

/// One `[[node]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeConfig {
    pub id: NodeId,
    pub name: String,
    pub priority: u32,
    pub votes: u32,
    pub links: Vec<LinkConfig>,
    /// `[node.serial]`: this node's end of the serial line.
    pub serial: Option<NodeSerial>,
    /// `fence`: the command that fences this node (power it off, cut its
    /// storage), run by the node that would take over its packages; its
    /// success lets that node start them at once.
    pub fence: Option<CommandLine>,
}

/// One `[[node.link]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkConfig {
    pub id: LinkId,
    pub interface: String,
    pub address: IpAddr,
    pub role: LinkRole,
    /// The standby card that takes the link over when `interface` fails.
    pub standby: Option<String>,
}

/// What a link is used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LinkRole {
    /// Heartbeats run over it (the default).
    Heartbeat,
    /// Configured but carries no heartbeats.
    Stationary,
}

impl LinkRole {
    /// The spelling used in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            LinkRole::Heartbeat => "heartbeat",
            LinkRole::Stationary => "stationary",
        }
    }
}

impl fmt::Display for LinkRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The paths one node's agent uses, with `{node}` replaced by its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalPaths {
    pub control_socket: PathBuf,
    pub events_file: Option<PathBuf>,
    pub state_file: PathBuf,
}

/// Replaces `{node}` in a configured path with a node's name, so one
/// cluster file serves several nodes on one machine (tests, the demo).
pub fn expand_node(path: &Path, node: &str) -> PathBuf {
    match path.to_str() {
        Some(s) if s.contains("{node}") => s.replace("{node}", node).into(),
        _ => path.to_owned(),
    }
}

/// `s` cut to [`MAX_SHOWN_LEN`] characters (ending in `…` when cut), for
/// echoing a value from the file in a message.
pub fn shorten(s: &str) -> Cow<'_, str> {
    shorten_to(s, MAX_SHOWN_LEN)
}

/// `s` cut to `max` characters (ending in `…` when cut).
fn shorten_to(s: &str, max: usize) -> Cow<'_, str> {
    match s.char_indices().nth(max) {
        None => Cow::Borrowed(s),
        Some((cut, _)) => Cow::Owned(format!("{}…", &s[..cut])),
    }
}

/// Line and column (both 1-based) of every key written in the file, by key
/// path (`cluster.key_file`, `node[0].link[1].interface`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Locations(BTreeMap<String, (usize, usize)>);

impl Locations {
    /// Line and column of `key`, when it was written in the file.
    pub fn get(&self, key: &str) -> Option<(usize, usize)> {
        self.0.get(key).copied()
    }
}

/// A position in a config file. `line` and `column` are 1-based; 0 means
/// unknown (the position is then left out of messages).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Place {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
}

impl Place {
    fn file_only(file: &Path) -> Self {
        Place {
            file: file.to_owned(),
            line: 0,
            column: 0,
        }
    }
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}", self.file.display())
        } else {
            write!(f, "{}:{}:{}", self.file.display(), self.line, self.column)
        }
    }
}

/// A configuration problem, rendered as `FILE:LINE:COLUMN: key `KEY`: what is
/// wrong (and what is expected)`.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: cannot read the configuration: {error}", file.display())]
    Read {
        file: PathBuf,
        error: std::io::Error,
    },
    #[error(
        "{}: the configuration is larger than {limit} bytes; this is not a heartbeat configuration",
        file.display()
    )]
    TooLarge { file: PathBuf, limit: u64 },
    #[error("{place}: TOML syntax error: {message}")]
    Syntax { place: Place, message: String },
    #[error("{place}: key `{key}`: {message}")]
    Invalid {
        place: Place,
        key: String,
        message: String,
    },
    #[error("{place}: {message}")]
    LocalNode { place: Place, message: String },
    #[error("{place}: key `{key}`: {error}")]
    KeyFile {
        place: Place,
        key: String,
        error: KeyError,
    },
}

impl ConfigError {
    /// Where the problem is, when it is in the file.
    pub fn place(&self) -> Option<&Place> {
        match self {
            ConfigError::Read { .. } | ConfigError::TooLarge { .. } => None,
            ConfigError::Syntax { place, .. }
            | ConfigError::Invalid { place, .. }
            | ConfigError::LocalNode { place, .. }
            | ConfigError::KeyFile { place, .. } => Some(place),
        }
    }

    /// The key path the problem is about, when there is one.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Invalid { key, .. } | ConfigError::KeyFile { key, .. } => Some(key),
            _ => None,
        }
    }
}

impl ClusterConfig {
    /// Reads and validates a config file (every check that needs only the
    /// file). Reads at most [`MAX_CONFIG_LEN`] bytes.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        use std::os::unix::fs::{FileTypeExt as _, OpenOptionsExt as _};
        let read_error = |error| ConfigError::Read {
            file: path.to_owned(),
            error,
        };
        // Opened non-blocking so that a FIFO without a writer cannot block
        // the open; reads block again, so that a pipe with a writer (`<(...)`)
        // is read to its end, and a FIFO without one reads as empty.
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
            .open(path)
            .map_err(read_error)?;
        nix::fcntl::fcntl(
            &file,
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::empty()),
        )
        .map_err(|e| read_error(e.into()))?;
        let is_fifo = file.metadata().is_ok_and(|m| m.file_type().is_fifo());
        let mut bytes = Vec::new();
        (&mut file)
            .take(MAX_CONFIG_LEN + 1)
            .read_to_end(&mut bytes)
            .map_err(read_error)?;
        if bytes.is_empty() && is_fifo {
            return Err(read_error(std::io::Error::other(
                "it is a FIFO and nothing writes to it",
            )));
        }
        if bytes.len() as u64 > MAX_CONFIG_LEN {
            return Err(ConfigError::TooLarge {
                file: path.to_owned(),
                limit: MAX_CONFIG_LEN,
            });
        }
        let text = match String::from_utf8(bytes) {
            Ok(text) => text,
            Err(e) => {
                let valid = e.utf8_error().valid_up_to();
                let text = String::from_utf8_lossy(&e.into_bytes()[..valid]).into_owned();
                return Err(ConfigError::Syntax {
                    place: place_at(path, &text, valid),
                    message: "the file is not UTF-8 text (a byte here is not valid UTF-8)"
                        .to_owned(),
                });
            }
        };
        Self::from_str(&text, path)
    }

    /// Validates config text; `path` names the file in messages and is the
    /// base of relative paths.
    pub fn from_str(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let doc = DeTable::parse(text).map_err(|e| {
            let offset = e.span().map_or(0, |s| s.start);
            ConfigError::Syntax {
                place: place_at(path, text, offset),
                message: shorten_to(e.message().trim(), 4 * MAX_SHOWN_LEN).into_owned(),
            }
        })?;
        let src = Src {
            file: path,
            text,
            base: config_dir(path),
        };
        let mut locations = BTreeMap::new();
        walk(doc.get_ref(), &mut Vec::new(), &mut |segs, span, _| {
            locations.insert(render(segs), line_column(text, span.start));
        });
        let top: raw::Top = toml::from_str(text).map_err(|e| src.serde_error(doc.get_ref(), &e))?;
        let mut cfg = src.build(top, doc.span())?;
        cfg.locations = Locations(locations);
        Ok(cfg)
    }

    /// The node this agent runs as: the one named `name` (from `--node`),
    /// else the one named like this host (full hostname, then the part
    /// before the first dot).
    pub fn local_node(&self, name: Option<&str>) -> Result<&NodeConfig, ConfigError> {
        let names = || {
            self.nodes
                .iter()
                .map(|n| n.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let error = |message: String| ConfigError::LocalNode {
            place: Place::file_only(&self.path),
            message,
        };
        if let Some(name) = name {
            return self.nodes.iter().find(|n| n.name == name).ok_or_else(|| {
                error(format!(
                    "--node `{}` names no [[node]]; the nodes are: {}",
                    shorten(name),
                    names()
                ))
            });
        }
        let host = nix::unistd::gethostname().map_err(|e| {
            error(format!(
                "cannot read this host's name ({e}); choose the node with --node NAME"
            ))
        })?;
        let host = host.to_string_lossy();
        let short = host.split('.').next().unwrap_or(&host);
        self.nodes
            .iter()
            .find(|n| n.name == host)
            .or_else(|| self.nodes.iter().find(|n| n.name == short))
            .ok_or_else(|| {
                error(format!(
                    "this host's name `{host}` matches no [[node]] name (the nodes are: {}); \
                     choose the node with --node NAME",
                    names()
                ))
            })
    }

    /// The node with id `id`.
    pub fn node(&self, id: NodeId) -> Option<&NodeConfig> {
        self.nodes.iter().find(|n| n.id == id)
    }

    /// The sum of all nodes' votes (the expected votes of the full cluster).
    pub fn total_votes(&self) -> u64 {
        self.nodes.iter().map(|n| u64::from(n.votes)).sum()
    }

    /// The paths `local`'s agent uses, `{node}` expanded.
    pub fn local_paths(&self, local: &NodeConfig) -> LocalPaths {
        LocalPaths {
            control_socket: expand_node(&self.control.socket, &local.name),
            events_file: self
                .cluster
                .events_file
                .as_deref()
                .map(|p| expand_node(p, &local.name)),
            state_file: expand_node(&self.cluster.state_file, &local.name),
        }
    }

    /// Where `key` was written, for messages (file only when unknown).
    fn place_of(&self, key: &str) -> Place {
        let (line, column) = self.locations.get(key).unwrap_or((0, 0));
        Place {
            file: self.path.clone(),
            line,
            column,
        }
    }

    fn invalid_at(&self, key: &str, message: String) -> ConfigError {
        ConfigError::Invalid {
            place: self.place_of(key),
            key: key.to_owned(),
            message,
        }
    }
}

/// The directory relative paths in the file are resolved against.
fn config_dir(path: &Path) -> PathBuf {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::path::absolute(dir).unwrap_or_else(|_| dir.to_owned())
}

/// 1-based line and column (in characters) of byte `offset` of `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

fn place_at(file: &Path, text: &str, offset: usize) -> Place {
    let (line, column) = line_column(text, offset);
    Place {
        file: file.to_owned(),
        line,
        column,
    }
}

fn fmt_duration(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// `later` must be larger than `earlier`: how each is named in the message,
/// its key path, its value and where it was written (None: the default),
/// and advice.
struct MustExceed<'a> {
    later_name: &'a str,
    later_key: &'a str,
    later: Duration,
    later_at: Option<Range<usize>>,
    earlier_name: &'a str,
    earlier_key: &'a str,
    earlier: Duration,
    earlier_at: Option<Range<usize>>,
    advice: &'a str,
}

/// The source being validated.
struct Src<'a> {
    file: &'a Path,
    text: &'a str,
    base: PathBuf,
}

impl Src<'_> {
    fn invalid(&self, span: &Range<usize>, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            place: place_at(self.file, self.text, span.start),
            key: key.to_owned(),
            message: message.into(),
        }
    }

    fn line_of(&self, span: &Range<usize>) -> usize {
        line_column(self.text, span.start).0
    }

    /// A serde error as a config error with the key path of its span.
    fn serde_error(&self, doc: &DeTable<'_>, e: &toml::de::Error) -> ConfigError {
        let span = e.span().unwrap_or(0..0);
        let message = e.message().trim();
        let (segs, at_key) = locate(doc, span.start);
        let key = render(&segs);
        if at_key && message.starts_with("unknown field") {
            let (parent, name) = segs.split_at(segs.len().saturating_sub(1));
            let name = match name.first() {
                Some(Seg::Key(k)) => k.as_str(),
                _ => "",
            };
            let (what, fields) = table_kind(parent);
            let valid: Vec<&str> = fields.to_vec();
            let hint = closest(name, &valid)
                .map(|c| format!(" (did you mean `{c}`?)"))
                .unwrap_or_default();
            return self.invalid(
                &span,
                &key,
                format!(
                    "unknown key{hint}; the valid keys in {what} are: {}",
                    valid.join(", ")
                ),
            );
        }
        self.invalid(&span, &key, plain_serde_message(message))
    }

    fn required<T: raw::Value>(
        &self,
        field: Field<T>,
        table: &Range<usize>,
        key: &str,
        what: &str,
        expected: &str,
    ) -> Result<Spanned<T>, ConfigError> {
        field.ok_or_else(|| {
            self.invalid(
                table,
                key,
                format!("required key is missing in {what} (expected {expected})"),
            )
        })
    }

    fn path(&self, text: &str) -> PathBuf {
        self.base.join(text)
    }

    /// Checks a [`MustExceed`]; the error points at `later` when it was
    /// written, else at `earlier`, else at `fallback` (span, key).
    fn must_exceed(
        &self,
        fallback: (&Range<usize>, &str),
        m: MustExceed<'_>,
    ) -> Result<(), ConfigError> {
        if m.later > m.earlier {
            return Ok(());
        }
        let shown = |d: Duration, written: bool| {
            if written {
                fmt_duration(d)
            } else {
                format!("{} (the default)", fmt_duration(d))
            }
        };
        let message = format!(
            "{} = {} must be larger than {} = {}; {}",
            m.later_name,
            shown(m.later, m.later_at.is_some()),
            m.earlier_name,
            shown(m.earlier, m.earlier_at.is_some()),
            m.advice
        );
        let (span, key) = match (&m.later_at, &m.earlier_at) {
            (Some(at), _) => (at, m.later_key),
            (None, Some(at)) => (at, m.earlier_key),
            (None, None) => fallback,
        };
        Err(self.invalid(span, key, message))
    }

    fn build(&self, top: raw::Top, top_span: Range<usize>) -> Result<ClusterConfig, ConfigError> {
        let Some(cluster) = top.cluster else {
            return Err(self.invalid(
                &top_span,
                "cluster",
                "the required section [cluster] is missing",
            ));
        };
        let cluster = self.cluster(cluster)?;
        let metrics = match top.metrics {
            None => None,
            Some(m) => {
                let span = m.span();
                let listen = self.required(
                    m.into_inner().listen,
                    &span,
                    "metrics.listen",
                    "[metrics]",
                    &raw::Addr::expected(),
                )?;
                Some(MetricsSection {
                    listen: listen.into_inner().0,
                })
            }
        };
        let control = match top.control.and_then(|c| c.into_inner().socket) {
            None => ControlSection {
                socket: PathBuf::from(DEFAULT_CONTROL_SOCKET),
            },
            Some(socket) => {
                let path = self.path(&socket.get_ref().0);
                let len = path.as_os_str().len();
                if len > MAX_SOCKET_PATH {
                    return Err(self.invalid(
                        &socket.span(),
                        "control.socket",
                        format!(
                            "the socket path {} is {len} bytes long; Unix sockets allow at most {MAX_SOCKET_PATH}",
                            shorten(&path.to_string_lossy())
                        ),
                    ));
                }
                ControlSection { socket: path }
            }
        };
        let raw_nodes = top.node.map(|n| n.into_inner().0).unwrap_or_default();
        let mut nodes = Vec::with_capacity(raw_nodes.len());
        for (i, n) in raw_nodes.into_iter().enumerate() {
            nodes.push(self.node(i, n)?);
        }
        self.check_nodes(&top_span, &nodes)?;
        let serial = self.serial(top.serial, &nodes)?;
        let quorum = self.quorum(top.quorum, &cluster, &nodes)?;
        let packages = self.packages(top.package, &nodes)?;
        let watchdog = self.watchdog(top.watchdog)?;
        Ok(ClusterConfig {
            path: self.file.to_owned(),
            cluster: cluster.section,
            quorum,
            metrics,
            control,
            nodes: nodes.into_iter().map(|n| n.node).collect(),
            packages,
            serial,
            watchdog,
            locations: Locations::default(),
        })
    }

    /// Every `[[package]]` (see [`PackageConfig`]).
    fn packages(
        &self,
        raw: Field<raw::Tables<raw::Package>>,
        nodes: &[BuiltNode],
    ) -> Result<Vec<PackageConfig>, ConfigError> {
        let Some(raw) = raw else {
            return Ok(Vec::new());
        };
        let span = raw.span();
        let raw = raw.into_inner().0;
        if raw.len() > MAX_PACKAGES {
            return Err(self.invalid(
                &span,
                "package",
                format!(
                    "{} packages; at most {MAX_PACKAGES} are supported (package health travels as a 64-bit bitmap)",
                    raw.len()
                ),
            ));
        }
        let mut out: Vec<PackageConfig> = Vec::with_capacity(raw.len());
        let mut names: BTreeMap<String, usize> = BTreeMap::new();
        let mut owners_of_address: BTreeMap<(IpAddr, String), usize> = BTreeMap::new();
        for (i, p) in raw.into_iter().enumerate() {
            let path = format!("package[{i}]");
            let BuiltPackage {
                package: pkg,
                name_span,
                addr_spans,
            } = self.package(&path, p, nodes)?;
            if let Some(first) = names.insert(pkg.spec.name.to_string(), i) {
                return Err(self.invalid(
                    &name_span,
                    &format!("{path}.name"),
                    format!(
                        "package name `{}` is already used by package[{first}]; package names must be unique",
                        pkg.spec.name
                    ),
                ));
            }
            for (j, (a, at)) in pkg.addresses.iter().zip(&addr_spans).enumerate() {
                if let Some(first) = owners_of_address.insert((a.addr(), a.dev().to_owned()), i) {
                    return Err(self.invalid(
                        at,
                        &format!("{path}.addresses[{j}]"),
                        format!(
                            "address {} on {} is already used by package[{first}]; an address belongs to one package",
                            a.addr(),
                            a.dev()
                        ),
                    ));
                }
            }
            out.push(pkg);
        }
        Ok(out)
    }

    /// One `[[package]]`; returns it with the spans of its name and addresses.
    fn package(
        &self,
        path: &str,
        p: Spanned<raw::Package>,
        nodes: &[BuiltNode],
    ) -> Result<BuiltPackage, ConfigError> {
        const WHAT: &str = "[[package]]";
        let span = p.span();
        let p = p.into_inner();
        let name = self.required(
            p.name,
            &span,
            &format!("{path}.name"),
            WHAT,
            "the package's unique name, a string",
        )?;
        let name_span = name.span();
        let pkg_name = PackageName::new(&name.get_ref().0)
            .map_err(|e| self.invalid(&name_span, &format!("{path}.name"), e.to_string()))?;

        // nodes: defined node names, no repeats.
        let list = p.nodes.ok_or_else(|| {
            self.invalid(
                &span,
                &format!("{path}.nodes"),
                format!(
                    "required key is missing in {WHAT} (expected the names of the nodes that may run it, most preferred first, e.g. nodes = [\"alpha\", \"beta\"])"
                ),
            )
        })?;
        let list_span = list.span();
        let list = list.into_inner().0;
        if list.is_empty() {
            return Err(self.invalid(
                &list_span,
                &format!("{path}.nodes"),
                "the list is empty; name at least one [[node]] that may run the package",
            ));
        }
        let known: Vec<&str> = nodes.iter().map(|n| n.node.name.as_str()).collect();
        let mut ids: Vec<NodeId> = Vec::with_capacity(list.len());
        for (j, n) in list.iter().enumerate() {
            let key = format!("{path}.nodes[{j}]");
            let text = n.get_ref().0.as_str();
            let Some(node) = nodes.iter().find(|b| b.node.name == text) else {
                let hint = closest(text, &known)
                    .map(|c| format!(" (did you mean `{c}`?)"))
                    .unwrap_or_default();
                return Err(self.invalid(
                    &n.span(),
                    &key,
                    format!(
                        "no [[node]] is named `{}`{hint}; the nodes are: {}",
                        shorten(text),
                        known.join(", ")
                    ),
                ));
            };
            let id = node.node.id;
            if ids.contains(&id) {
                return Err(self.invalid(
                    &n.span(),
                    &key,
                    format!("node `{text}` is listed twice"),
                ));
            }
            ids.push(id);
        }

        // The service: commands, or an OCF agent with its params.
        let text_of = |f: &Field<raw::Text>| f.as_ref().map(|t| (t.get_ref().0.clone(), t.span()));
        let (start, stop, monitor, agent) = (
            text_of(&p.start),
            text_of(&p.stop),
            text_of(&p.monitor),
            text_of(&p.agent),
        );
        let command = |key: &str, (text, at): (String, Range<usize>)| {
            CommandLine::parse(&text)
                .map_err(|e| self.invalid(&at, &format!("{path}.{key}"), format!("{e}")))
        };
        let service = match agent {
            Some((agent_text, agent_at)) => {
                for (key, f) in [("start", &start), ("stop", &stop), ("monitor", &monitor)] {
                    if let Some((_, at)) = f {
                        return Err(self.invalid(
                            at,
                            &format!("{path}.{key}"),
                            format!(
                                "`{key}` and `agent` exclude each other: an OCF agent is run with the action as its argument; remove `{key}` or `agent`"
                            ),
                        ));
                    }
                }
                let agent = OcfAgent::parse(&agent_text).map_err(|e| {
                    self.invalid(&agent_at, &format!("{path}.agent"), e.to_string())
                })?;
                let params = match p.params {
                    None => OcfParams::default(),
                    Some(params) => {
                        let params_span = params.span();
                        let params = params.into_inner().0;
                        let mut checked = Vec::with_capacity(params.len());
                        for (k, v) in params {
                            let at = v.span();
                            let one =
                                OcfParams::new([(k.clone(), v.into_inner().0)]).map_err(|e| {
                                    self.invalid(&at, &format!("{path}.params.{k}"), e.to_string())
                                })?;
                            checked.extend(one.iter().map(|(k, v)| (k.to_owned(), v.to_owned())));
                        }
                        OcfParams::new(checked).map_err(|e| {
                            self.invalid(&params_span, &format!("{path}.params"), e.to_string())
                        })?
                    }
                };
                Service::Ocf { agent, params }
            }
            None => {
                if let Some(params) = &p.params {
                    return Err(self.invalid(
                        &params.span(),
                        &format!("{path}.params"),
                        "[package.params] are OCF parameters; they need `agent = \"ocf:PROVIDER:TYPE\"`",
                    ));
                }
                let missing = |key: &str| {
                    self.invalid(
                        &span,
                        &format!("{path}.{key}"),
                        format!(
                            "required key is missing in {WHAT} (expected `{key}`, a command such as \"/etc/heartbeat/web {key}\"; or use `agent = \"ocf:PROVIDER:TYPE\"` instead of commands)"
                        ),
                    )
                };
                let start = command("start", start.ok_or_else(|| missing("start"))?)?;
                let stop = command("stop", stop.ok_or_else(|| missing("stop"))?)?;
                let monitor = monitor.map(|m| command("monitor", m)).transpose()?;
                Service::Commands {
                    start,
                    stop,
                    monitor,
                }
            }
        };

        // Addresses.
        let mut addresses = Vec::new();
        let mut addr_spans = Vec::new();
        if let Some(list) = p.addresses {
            for (j, a) in list.into_inner().0.into_iter().enumerate() {
                let at = a.span();
                let key = format!("{path}.addresses[{j}]");
                let parsed: PackageAddress = a.get_ref().0.parse().map_err(
                    |e: crate::packages::addresses::AddressError| {
                        self.invalid(&at, &key, e.to_string())
                    },
                )?;
                if addresses.contains(&parsed) {
                    return Err(self.invalid(&at, &key, format!("{parsed} is listed twice")));
                }
                addresses.push(parsed);
                addr_spans.push(at);
            }
        }

        let dur = |f: Field<raw::Dur>, default: Duration| f.map_or(default, |d| d.into_inner().0);
        let timeouts = Timeouts {
            start: dur(p.start_timeout, DEFAULT_START_TIMEOUT),
            stop: dur(p.stop_timeout, DEFAULT_STOP_TIMEOUT),
            monitor: dur(p.monitor_timeout, DEFAULT_MONITOR_TIMEOUT),
            monitor_interval: dur(p.monitor_interval, DEFAULT_MONITOR_INTERVAL),
        };
        Ok(BuiltPackage {
            package: PackageConfig {
                spec: PackageSpec {
                    name: pkg_name,
                    service,
                    timeouts,
                },
                nodes: ids,
                failover_policy: p
                    .failover_policy
                    .map_or_else(Default::default, |v| v.into_inner().0),
                failback_policy: p
                    .failback_policy
                    .map_or_else(Default::default, |v| v.into_inner().0),
                on_all_unhealthy: p
                    .on_all_unhealthy
                    .map_or_else(Default::default, |v| v.into_inner().0),
                addresses,
                restart_limit: p.restart_limit.map_or(0, |v| v.into_inner().0),
            },
            name_span,
            addr_spans,
        })
    }

    fn cluster(&self, c: Spanned<raw::Cluster>) -> Result<BuiltCluster, ConfigError> {
        let span = c.span();
        let c = c.into_inner();
        const WHAT: &str = "[cluster]";
        let netif = self.netif(&c)?;
        let name = self.required(
            c.name,
            &span,
            "cluster.name",
            WHAT,
            "the cluster's name, a string",
        )?;
        let id = self.required(
            c.id,
            &span,
            "cluster.id",
            WHAT,
            &raw::ClusterIdValue::expected(),
        )?;
        let key_file = self.required(
            c.key_file,
            &span,
            "cluster.key_file",
            WHAT,
            "the path of the key file made by `heartbeat-agent keygen`",
        )?;
        let dur = |f: &Field<raw::Dur>| f.as_ref().map(|d| (d.get_ref().0, d.span()));
        let interval = dur(&c.heartbeat_interval);
        let hb = interval
            .as_ref()
            .map_or(DEFAULT_HEARTBEAT_INTERVAL, |d| d.0);
        if let Some((d, at)) = &interval
            && *d < MIN_HEARTBEAT_INTERVAL
        {
            return Err(self.invalid(
                at,
                "cluster.heartbeat_interval",
                format!(
                    "{} is too short; the smallest heartbeat_interval is {}",
                    fmt_duration(*d),
                    fmt_duration(MIN_HEARTBEAT_INTERVAL)
                ),
            ));
        }
        let hb_at = interval.map(|d| d.1);
        let node_timeout = dur(&c.node_timeout);
        let nt = node_timeout.as_ref().map_or(DEFAULT_NODE_TIMEOUT, |d| d.0);
        let nt_at = node_timeout.map(|d| d.1);
        self.must_exceed(
            (&span, "cluster.node_timeout"),
            MustExceed {
                later_name: "node_timeout",
                later_key: "cluster.node_timeout",
                later: nt,
                later_at: nt_at.clone(),
                earlier_name: "heartbeat_interval",
                earlier_key: "cluster.heartbeat_interval",
                earlier: hb,
                earlier_at: hb_at.clone(),
                advice: "about 5 × heartbeat_interval is recommended (e.g. heartbeat_interval = \"1ms\" with node_timeout = \"5ms\")",
            },
        )?;
        let agent_timeout = dur(&c.agent_timeout);
        let at = agent_timeout
            .as_ref()
            .map_or(DEFAULT_AGENT_TIMEOUT, |d| d.0);
        self.must_exceed(
            (&span, "cluster.agent_timeout"),
            MustExceed {
                later_name: "agent_timeout",
                later_key: "cluster.agent_timeout",
                later: at,
                later_at: agent_timeout.map(|d| d.1),
                earlier_name: "heartbeat_interval",
                earlier_key: "cluster.heartbeat_interval",
                earlier: hb,
                earlier_at: hb_at,
                advice: "the agent refreshes its liveness stamp every heartbeat_interval",
            },
        )?;

        let auto_start = c.auto_start.as_ref().is_none_or(|f| f.get_ref().0);
        let auto_start_timeout = dur(&c.auto_start_timeout);
        if let (Some((_, ast_at)), Some(flag)) = (&auto_start_timeout, &c.auto_start)
            && !auto_start
        {
            return Err(self.invalid(
                ast_at,
                "cluster.auto_start_timeout",
                format!(
                    "auto_start_timeout has no effect with auto_start = false (line {}): the cluster \
                     then forms on `heartbeat-agent cluster start`; remove one of them",
                    self.line_of(&flag.span())
                ),
            ));
        }
        let ast = auto_start_timeout
            .as_ref()
            .map_or(DEFAULT_AUTO_START_TIMEOUT, |d| d.0);
        self.must_exceed(
            (&span, "cluster.auto_start_timeout"),
            MustExceed {
                later_name: "auto_start_timeout",
                later_key: "cluster.auto_start_timeout",
                later: ast,
                later_at: auto_start_timeout.map(|d| d.1),
                earlier_name: "node_timeout",
                earlier_key: "cluster.node_timeout",
                earlier: nt,
                earlier_at: nt_at.clone(),
                advice: "a starting node must be able to hear its peers before it gives up waiting for them",
            },
        )?;

        let restart_window = dur(&c.restart_window);
        let rw = restart_window
            .as_ref()
            .map_or(DEFAULT_RESTART_WINDOW, |d| d.0);
        if let Some((d, rw_at)) = &restart_window {
            if *d > MAX_RESTART_WINDOW {
                return Err(self.invalid(
                    rw_at,
                    "cluster.restart_window",
                    format!(
                        "{} is too long; at most {}: a node that dies during an announced restart is \
                         only counted failed when the window runs out",
                        fmt_duration(*d),
                        fmt_duration(MAX_RESTART_WINDOW)
                    ),
                ));
            }
            if *d < MIN_RESTART_WINDOW {
                return Err(self.invalid(
                    rw_at,
                    "cluster.restart_window",
                    format!(
                        "{} is too short; at least {}: the new agent must load its configuration \
                         and adopt the pinned XDP program within the window",
                        fmt_duration(*d),
                        fmt_duration(MIN_RESTART_WINDOW)
                    ),
                ));
            }
        }

        let package_lease =
            dur(&c.package_lease).map_or(nt.max(MIN_DEFAULT_PACKAGE_LEASE), |d| d.0);
        let lease_margin = dur(&c.lease_margin).map_or(DEFAULT_LEASE_MARGIN, |d| d.0);
        let events_file = c.events_file.map(|p| self.path(&p.get_ref().0));
        let state_file = c.state_file.map_or_else(
            || PathBuf::from(DEFAULT_STATE_FILE),
            |p| self.path(&p.get_ref().0),
        );
        Ok(BuiltCluster {
            section: ClusterSection {
                name: name.into_inner().0,
                id: id.into_inner().0,
                key_file: self.path(&key_file.get_ref().0),
                port: c.port.map_or(DEFAULT_PORT, |p| p.into_inner().0),
                heartbeat_interval: hb,
                node_timeout: nt,
                agent_timeout: at,
                events_file,
                state_file,
                auto_start,
                auto_start_timeout: ast,
                restart_window: rw,
                package_lease,
                lease_margin,
                clock_drift_ppm: c
                    .clock_drift_ppm
                    .map_or(DEFAULT_CLOCK_DRIFT_PPM, |v| v.into_inner().0),
                announce_count: c
                    .announce_count
                    .map_or(DEFAULT_ANNOUNCE_COUNT, |v| v.into_inner().0),
                netif,
            },
            node_timeout_at: nt_at,
        })
    }

    fn node(&self, index: usize, n: Spanned<raw::Node>) -> Result<BuiltNode, ConfigError> {
        let span = n.span();
        let n = n.into_inner();
        let path = format!("node[{index}]");
        const WHAT: &str = "[[node]]";
        let serial = self.node_serial(&path, n.serial)?;
        let id = self.required(
            n.id,
            &span,
            &format!("{path}.id"),
            WHAT,
            &raw::NodeNumber::expected(),
        )?;
        let name = self.required(
            n.name,
            &span,
            &format!("{path}.name"),
            WHAT,
            "the node's unique name, a string",
        )?;
        let votes_at = n.votes.as_ref().map(|v| v.span());
        let votes = n.votes.map_or(DEFAULT_VOTES, |v| v.into_inner().0);
        let priority = n.priority.map_or(DEFAULT_PRIORITY, |p| p.into_inner().0);
        let fence = match n.fence {
            Some(f) => {
                let at = f.span();
                Some(
                    CommandLine::parse(&f.into_inner().0)
                        .map_err(|e| self.invalid(&at, &format!("{path}.fence"), format!("{e}")))?,
                )
            }
            None => None,
        };

        let raw_links = n.link.map(|l| l.into_inner().0).unwrap_or_default();
        let mut links: Vec<LinkConfig> = Vec::with_capacity(raw_links.len());
        let mut built: Vec<BuiltLink> = Vec::with_capacity(raw_links.len());
        let mut seen: BTreeMap<LinkId, usize> = BTreeMap::new();
        for (position, l) in raw_links.into_iter().enumerate() {
            let (link, b) = self.link(&path, position, l)?;
            if let Some(first) = seen.insert(link.id, position) {
                let how = if b.id_written {
                    String::new()
                } else {
                    format!(" (implied by its position {position} in the list)")
                };
                return Err(self.invalid(
                    &b.id_span,
                    &format!("{}.id", b.path),
                    format!(
                        "link id {}{how} is already used by {path}.link[{first}] of node {}; link ids must be unique within a node",
                        link.id,
                        name.get_ref().0
                    ),
                ));
            }
            self.check_standby(&path, &links, &built, &link, &b)?;
            links.push(link);
            built.push(b);
        }
        if !links.iter().any(|l| l.role == LinkRole::Heartbeat) {
            return Err(self.invalid(
                &span,
                &format!("{path}.link"),
                format!(
                    "node {} has no heartbeat link; add a [[node.link]] with role = \"heartbeat\"",
                    name.get_ref().0
                ),
            ));
        }
        let id_span = id.span();
        let name_span = name.span();
        Ok(BuiltNode {
            node: NodeConfig {
                id: NodeId(id.into_inner().0),
                name: name.into_inner().0,
                priority,
                votes,
                links,
                serial: serial.as_ref().map(|s| s.0.clone()),
                fence,
            },
            serial: serial.map(|s| s.1),
            path,
            span,
            id_span,
            name_span,
            votes_at,
            links: built,
        })
    }

    /// A standby card belongs to one link only, and is no link's own
    /// interface (in either order of writing).
    fn check_standby(
        &self,
        node_path: &str,
        links: &[LinkConfig],
        built: &[BuiltLink],
        link: &LinkConfig,
        b: &BuiltLink,
    ) -> Result<(), ConfigError> {
        for (j, (other, ob)) in links.iter().zip(built).enumerate() {
            // Links on one interface move together (the card's addresses
            // and the sockets bound to it): one standby for all of them.
            if other.interface == link.interface
                && let (Some(at), Some(other_at)) = (&b.standby_span, &ob.standby_span)
            {
                return Err(self.invalid(
                    at,
                    &format!("{}.standby", b.path),
                    format!(
                        "{node_path}.link[{j}] is on `{}` too and names its standby already ({}.standby, line {}); the links on one interface move to the standby together: write `standby` on one of them only",
                        shorten(&link.interface),
                        ob.path,
                        self.line_of(other_at)
                    ),
                ));
            }
            if let (Some(sb), Some(at)) = (&link.standby, &b.standby_span) {
                if *sb == other.interface {
                    return Err(self.invalid(
                        at,
                        &format!("{}.standby", b.path),
                        format!(
                            "`{}` is the interface of {node_path}.link[{j}]; a standby card must be idle (no link of its own)",
                            shorten(sb)
                        ),
                    ));
                }
                if other.standby.as_deref() == Some(sb.as_str()) {
                    return Err(self.invalid(
                        at,
                        &format!("{}.standby", b.path),
                        format!(
                            "`{}` is already the standby of {node_path}.link[{j}]; each link needs its own standby card",
                            shorten(sb)
                        ),
                    ));
                }
            }
            if let (Some(sb), Some(at)) = (&other.standby, &ob.standby_span)
                && *sb == link.interface
            {
                return Err(self.invalid(
                    at,
                    &format!("{}.standby", ob.path),
                    format!(
                        "`{}` is the interface of {}; a standby card must be idle (no link of its own)",
                        shorten(sb),
                        b.path
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The network manager's keys of `[cluster]`.
    fn netif(&self, c: &raw::Cluster) -> Result<NetifSettings, ConfigError> {
        let d = NetifSettings::default();
        let polling_interval = c
            .network_polling_interval
            .as_ref()
            .map_or(d.polling_interval, |v| v.get_ref().0);
        if let Some(v) = &c.network_polling_interval
            && polling_interval < crate::netif::MIN_POLLING_INTERVAL
        {
            return Err(self.invalid(
                &v.span(),
                "cluster.network_polling_interval",
                format!(
                    "{} is too short; the smallest network_polling_interval is {}",
                    fmt_duration(polling_interval),
                    fmt_duration(crate::netif::MIN_POLLING_INTERVAL)
                ),
            ));
        }
        let failback_hold = c
            .failback_hold
            .as_ref()
            .map_or(d.failback_hold, |v| v.get_ref().0);
        let auto_failback = c.auto_failback.as_ref().is_none_or(|f| f.get_ref().0);
        if let (Some(hold), Some(flag)) = (&c.failback_hold, &c.auto_failback)
            && !auto_failback
        {
            return Err(self.invalid(
                &hold.span(),
                "cluster.failback_hold",
                format!(
                    "failback_hold has no effect with auto_failback = false (line {}); remove one of them",
                    self.line_of(&flag.span())
                ),
            ));
        }
        Ok(NetifSettings {
            polling_interval,
            detection: c
                .network_failure_detection
                .as_ref()
                .map_or(d.detection, |v| v.get_ref().0),
            auto_failback,
            failback_hold,
            announce_count: c
                .network_announce_count
                .as_ref()
                .map_or(d.announce_count, |v| v.get_ref().0),
        })
    }

    fn link(
        &self,
        node_path: &str,
        position: usize,
        l: Spanned<raw::Link>,
    ) -> Result<(LinkConfig, BuiltLink), ConfigError> {
        let span = l.span();
        let l = l.into_inner();
        let path = format!("{node_path}.link[{position}]");
        const WHAT: &str = "[[node.link]]";
        let (id, id_span, id_written) = match l.id {
            Some(at) => (at.get_ref().0, at.span(), true),
            None => match u8::try_from(position) {
                Ok(p) if p <= MAX_LINK_ID => (p, span.clone(), false),
                _ => {
                    return Err(self.invalid(
                        &span,
                        &format!("{path}.id"),
                        format!(
                            "this is link number {position} of the node, so its implied id is out of range; \
                             a node has at most {MAX_LINKS} links (ids 0..={MAX_LINK_ID})"
                        ),
                    ));
                }
            },
        };
        let interface = self.required(
            l.interface,
            &span,
            &format!("{path}.interface"),
            WHAT,
            "a network interface name such as \"eth1\"",
        )?;
        let address = self.required(
            l.address,
            &span,
            &format!("{path}.address"),
            WHAT,
            &raw::Ip::expected(),
        )?;
        let (role, role_span) = match l.role {
            None => (LinkRole::Heartbeat, span.clone()),
            Some(r) => (r.get_ref().0, r.span()),
        };
        let address_span = address.span();
        let interface = interface.into_inner().0;
        let standby = match l.standby {
            None => None,
            Some(s) => {
                let at = s.span();
                let name = s.into_inner().0;
                if name == interface {
                    return Err(self.invalid(
                        &at,
                        &format!("{path}.standby"),
                        format!(
                            "`{}` is the link's own interface; the standby must be another card on the same segment",
                            shorten(&name)
                        ),
                    ));
                }
                if role != LinkRole::Heartbeat {
                    return Err(self.invalid(
                        &at,
                        &format!("{path}.standby"),
                        "a standby card takes over a heartbeat link; this link is stationary",
                    ));
                }
                Some((name, at))
            }
        };
        let standby_span = standby.as_ref().map(|(_, at)| at.clone());
        Ok((
            LinkConfig {
                id: LinkId(id),
                interface,
                address: address.into_inner().0,
                role,
                standby: standby.map(|(n, _)| n),
            },
            BuiltLink {
                standby_span,
                path,
                id_span,
                id_written,
                address_span,
                role_span,
            },
        ))
    }

    /// Checks across nodes: count, unique ids, names and addresses, one
    /// address family and one role per link id, a peer for every heartbeat
    /// link, and votes that can make a quorum.
    fn check_nodes(&self, top: &Range<usize>, nodes: &[BuiltNode]) -> Result<(), ConfigError> {
        if nodes.len() < 2 {
            let span = nodes.first().map_or(top.clone(), |n| n.span.clone());
            return Err(self.invalid(
                &span,
                "node",
                format!(
                    "a cluster needs at least 2 nodes, found {}; add a [[node]] section for each node",
                    nodes.len()
                ),
            ));
        }
        let mut ids: BTreeMap<NodeId, &BuiltNode> = BTreeMap::new();
        let mut names: BTreeMap<&str, &BuiltNode> = BTreeMap::new();
        for n in nodes {
            if let Some(first) = ids.insert(n.node.id, n) {
                return Err(self.invalid(
                    &n.id_span,
                    &format!("{}.id", n.path),
                    format!(
                        "node id {} is already used by {} (node {}, line {}); node ids must be unique",
                        n.node.id,
                        first.path,
                        first.node.name,
                        self.line_of(&first.id_span)
                    ),
                ));
            }
            if let Some(first) = names.insert(&n.node.name, n) {
                return Err(self.invalid(
                    &n.name_span,
                    &format!("{}.name", n.path),
                    format!(
                        "node name `{}` is already used by {} (line {}); node names must be unique",
                        n.node.name,
                        first.path,
                        self.line_of(&first.name_span)
                    ),
                ));
            }
        }

        // Addresses are unique across the cluster.
        let mut addresses: BTreeMap<IpAddr, (&BuiltNode, &BuiltLink)> = BTreeMap::new();
        for n in nodes {
            for (link, b) in n.node.links.iter().zip(&n.links) {
                if let Some((first_node, first_link)) = addresses.insert(link.address, (n, b)) {
                    return Err(self.invalid(
                        &b.address_span,
                        &format!("{}.address", b.path),
                        format!(
                            "address {} is already used by {} of node {} (line {}); addresses must be unique across the cluster",
                            link.address,
                            first_link.path,
                            first_node.node.name,
                            self.line_of(&first_link.address_span)
                        ),
                    ));
                }
            }
        }

        // Per link id: the first node that has it sets the family and the role.
        let mut networks: BTreeMap<LinkId, (&BuiltNode, &LinkConfig, &BuiltLink)> = BTreeMap::new();
        for n in nodes {
            for (link, b) in n.node.links.iter().zip(&n.links) {
                let (first_node, first, first_b) = match networks.entry(link.id) {
                    Entry::Vacant(v) => {
                        v.insert((n, link, b));
                        continue;
                    }
                    Entry::Occupied(o) => *o.get(),
                };
                if family(first.address) != family(link.address) {
                    return Err(self.invalid(
                        &b.address_span,
                        &format!("{}.address", b.path),
                        format!(
                            "link {} mixes address families: node {} uses {} ({}) but node {} uses {} ({}); \
                             all nodes on one link id must use the same family",
                            link.id,
                            first_node.node.name,
                            first.address,
                            family(first.address),
                            n.node.name,
                            link.address,
                            family(link.address)
                        ),
                    ));
                }
                if first.role != link.role {
                    return Err(self.invalid(
                        &b.role_span,
                        &format!("{}.role", b.path),
                        format!(
                            "link {} is \"{}\" on node {} (line {}) but \"{}\" on node {}; \
                             one link id is one network and has one role",
                            link.id,
                            first.role,
                            first_node.node.name,
                            self.line_of(&first_b.role_span),
                            link.role,
                            n.node.name
                        ),
                    ));
                }
            }
        }

        // Every heartbeat link needs the same link id on another node.
        for n in nodes {
            for (link, b) in n.node.links.iter().zip(&n.links) {
                if link.role != LinkRole::Heartbeat {
                    continue;
                }
                let has_peer = nodes
                    .iter()
                    .filter(|m| m.node.id != n.node.id)
                    .any(|m| m.node.links.iter().any(|l| l.id == link.id));
                if !has_peer {
                    return Err(self.invalid(
                        &b.id_span,
                        &format!("{}.id", b.path),
                        format!(
                            "link {} of {} has no peer on any other node; give the same link id to \
                             the matching link of at least one other node",
                            link.id, n.node.name
                        ),
                    ));
                }
            }
        }

        // Votes: a quorum must be possible, and the sum must fit the wire.
        let total: u64 = nodes.iter().map(|n| u64::from(n.node.votes)).sum();
        if total == 0 || total > u64::from(u32::MAX) {
            let last = nodes.iter().rev().find(|n| n.votes_at.is_some());
            let (span, key) = match last {
                Some(n) => (
                    n.votes_at.clone().unwrap_or(n.span.clone()),
                    format!("{}.votes", n.path),
                ),
                None => (nodes[0].span.clone(), format!("{}.votes", nodes[0].path)),
            };
            let why = if total == 0 {
                "the votes of all nodes add up to 0, so no partition could ever be quorate; give at least one node votes = 1 or more".to_owned()
            } else {
                format!(
                    "the votes of all nodes add up to {total}, more than {}; use small vote counts",
                    u32::MAX
                )
            };
            return Err(self.invalid(&span, &key, why));
        }
        Ok(())
    }

    /// `[quorum]`: defaults, and the combinations votequorum(5) refuses.
    fn quorum(
        &self,
        q: Field<raw::Quorum>,
        cluster: &BuiltCluster,
        nodes: &[BuiltNode],
    ) -> Result<QuorumSection, ConfigError> {
        let Some(q) = q else {
            return Ok(QuorumSection::default());
        };
        let q = q.into_inner();
        let flag = |f: &Field<raw::Flag>| f.as_ref().filter(|f| f.get_ref().0).map(|f| f.span());
        let two_node = flag(&q.two_node);
        let lms = flag(&q.last_man_standing);
        let atb = flag(&q.auto_tie_breaker);
        let server = q.quorum_server.as_ref().map(|s| s.span());
        let line = |s: &Range<usize>| self.line_of(s);
        let key = |k: &str| format!("quorum.{k}");

        if let Some(at) = &two_node {
            if nodes.len() != 2 {
                return Err(self.invalid(
                    at,
                    &key("two_node"),
                    format!(
                        "two_node = true needs exactly two [[node]] sections, found {}; \
                         with more nodes use last_man_standing or a quorum_server",
                        nodes.len()
                    ),
                ));
            }
            if let Some(w) = q.wait_for_all.as_ref().filter(|w| !w.get_ref().0) {
                return Err(self.invalid(
                    &w.span(),
                    &key("wait_for_all"),
                    format!(
                        "wait_for_all = false contradicts two_node = true (line {}): with quorum 1, \
                         a node started alone during a network split would act beside its peer; \
                         two_node implies wait_for_all, so remove this line",
                        line(at)
                    ),
                ));
            }
            let incompatible = [
                (
                    &atb,
                    "auto_tie_breaker",
                    "two_node lets either node alone be quorate, auto_tie_breaker only the lower id",
                ),
                (
                    &lms,
                    "last_man_standing",
                    "two_node already makes one vote a quorum, so there is nothing left to shrink",
                ),
                (
                    &server,
                    "quorum_server",
                    "the quorum server breaks ties itself; two_node would let both nodes win",
                ),
            ];
            for (other, other_key, why) in incompatible {
                if let Some(o) = other {
                    return Err(self.invalid(
                        o,
                        &key(other_key),
                        format!(
                            "{other_key} cannot be used with two_node = true (line {}): {why} \
                             (votequorum refuses the pair too); choose one",
                            line(at)
                        ),
                    ));
                }
            }
        }
        if let Some(s) = &server {
            for (other, other_key) in [(&lms, "last_man_standing"), (&atb, "auto_tie_breaker")] {
                if let Some(o) = other {
                    return Err(self.invalid(
                        o,
                        &key(other_key),
                        format!(
                            "{other_key} cannot be used with quorum_server (line {}): the quorum \
                             server decides ties and expected votes stay those of the whole \
                             cluster (votequorum refuses a quorum device with {other_key} too); choose one",
                            line(s)
                        ),
                    ));
                }
            }
        }
        let wait_for_all =
            two_node.is_some() || q.wait_for_all.as_ref().is_some_and(|w| w.get_ref().0);
        let total: u64 = nodes.iter().map(|n| u64::from(n.node.votes)).sum();
        if let Some(at) = &atb
            && total % 2 == 1
            && !wait_for_all
        {
            return Err(self.invalid(
                at,
                &key("auto_tie_breaker"),
                format!(
                    "auto_tie_breaker with an odd number of votes ({total}) needs wait_for_all = true: \
                     otherwise a restarted majority without the lowest node id could form alone \
                     (votequorum disables auto_tie_breaker here); add wait_for_all = true"
                ),
            ));
        }
        let window = q
            .last_man_standing_window
            .as_ref()
            .map(|d| (d.get_ref().0, d.span()));
        if let Some((_, w_at)) = &window
            && lms.is_none()
        {
            return Err(self.invalid(
                w_at,
                &key("last_man_standing_window"),
                "last_man_standing_window has no effect without last_man_standing = true; add that or remove this line",
            ));
        }
        let lms_window = window
            .as_ref()
            .map_or(DEFAULT_LAST_MAN_STANDING_WINDOW, |w| w.0);
        if let Some(lms_at) = &lms {
            let lms_key = key("last_man_standing");
            let window_key = key("last_man_standing_window");
            self.must_exceed(
                (lms_at, &lms_key),
                MustExceed {
                    later_name: &window_key,
                    later_key: &window_key,
                    later: lms_window,
                    later_at: window.map(|w| w.1),
                    earlier_name: "cluster.node_timeout",
                    earlier_key: "cluster.node_timeout",
                    earlier: cluster.section.node_timeout,
                    earlier_at: cluster.node_timeout_at.clone(),
                    advice: "expected votes may only shrink once the nodes that left are surely gone",
                },
            )?;
        }
        let timeout = q
            .quorum_server_timeout
            .as_ref()
            .map(|d| (d.get_ref().0, d.span()));
        if let Some((_, t_at)) = &timeout
            && server.is_none()
        {
            return Err(self.invalid(
                t_at,
                &key("quorum_server_timeout"),
                "quorum_server_timeout has no effect without quorum_server; add that or remove this line",
            ));
        }
        Ok(QuorumSection {
            two_node: two_node.is_some(),
            wait_for_all,
            last_man_standing: lms.is_some(),
            last_man_standing_window: lms_window,
            auto_tie_breaker: atb.is_some(),
            quorum_server: q.quorum_server.map(|s| s.into_inner().0),
            quorum_server_timeout: timeout.map_or(DEFAULT_QUORUM_SERVER_TIMEOUT, |t| t.0),
        })
    }
}

/// A built `[cluster]` with the spans later rules point at.
struct BuiltCluster {
    section: ClusterSection,
    node_timeout_at: Option<Range<usize>>,
}

/// A built node with the spans the cross-node checks point at.
/// A package with the spans of its name and addresses (for checks across
/// packages).
struct BuiltPackage {
    package: PackageConfig,
    name_span: Range<usize>,
    addr_spans: Vec<Range<usize>>,
}

struct BuiltNode {
    node: NodeConfig,
    path: String,
    span: Range<usize>,
    id_span: Range<usize>,
    name_span: Range<usize>,
    votes_at: Option<Range<usize>>,
    links: Vec<BuiltLink>,
    serial: Option<serial::BuiltSerial>,
}

struct BuiltLink {
    /// Span of `standby`, when written.
    standby_span: Option<Range<usize>>,
    path: String,
    /// Span of `id`, or of the link's table when the id is implied.
    id_span: Range<usize>,
    id_written: bool,
    address_span: Range<usize>,
    role_span: Range<usize>,
}

fn family(ip: IpAddr) -> &'static str {
    match ip {
        IpAddr::V4(_) => "IPv4",
        IpAddr::V6(_) => "IPv6",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_column_counts_characters() {
        let text = "ab\nµx = 1\n";
        assert_eq!(line_column(text, 0), (1, 1));
        assert_eq!(line_column(text, 3), (2, 1));
        // 'x' is after the two-byte 'µ'.
        assert_eq!(line_column(text, 5), (2, 2));
        assert_eq!(line_column(text, 100), (3, 1));
    }

    #[test]
    fn closest_key() {
        let node = raw::field_names::<raw::Node>();
        assert_eq!(closest("nmae", node), Some("name"));
        assert_eq!(
            closest("heartbeat_intervall", raw::field_names::<raw::Cluster>()),
            Some("heartbeat_interval")
        );
        assert_eq!(closest("zzzzzz", node), None);
    }

    #[test]
    fn shorten_cuts_long_values() {
        assert_eq!(shorten("abc"), "abc");
        let long = "é".repeat(200);
        let cut = shorten(&long);
        assert_eq!(cut.chars().count(), MAX_SHOWN_LEN + 1);
        assert!(cut.ends_with('…'));
    }

    #[test]
    fn serde_messages_read_plainly() {
        assert_eq!(
            plain_serde_message("invalid type: integer `5`, expected a table ([cluster])"),
            "expected a table ([cluster]), found an integer (5)"
        );
        assert_eq!(
            plain_serde_message("invalid type: map, expected an array of tables ([[node]])"),
            "expected an array of tables ([[node]]), found a table"
        );
    }
}
