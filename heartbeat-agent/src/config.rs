//! Cluster configuration: the TOML schema, its validation, and checks against the local system.
//!
//! One TOML file describes the whole cluster (see `docs/configuration.md`).
//! [`ClusterConfig::load`] parses it and runs every check that needs nothing
//! but the file; [`ClusterConfig::check_system`] then checks what the local
//! host must provide (interfaces, key file).
//!
//! The file is read with `toml`'s span-keeping document parser and walked by
//! hand rather than through serde, so that every error names the file, line,
//! column and full key path (`node[1].link[0].interface`), and says what was
//! expected. Unknown keys are errors that list the valid keys.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::ops::{Range, RangeInclusive};
use std::path::{Path, PathBuf};
use std::time::Duration;

use heartbeat_common::maps::{MAX_LINKS, MAX_NODES};
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::keyfile::{self, KeyError};

/// Default UDP port of the heartbeat protocol.
pub const DEFAULT_PORT: u16 = 6405;
/// Default `cluster.heartbeat_interval`.
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_millis(100);
/// Default `cluster.node_timeout`.
pub const DEFAULT_NODE_TIMEOUT: Duration = Duration::from_millis(500);
/// Default `cluster.agent_timeout`.
pub const DEFAULT_AGENT_TIMEOUT: Duration = Duration::from_secs(1);
/// Default `cluster.network_polling_interval`.
pub const DEFAULT_NETWORK_POLLING_INTERVAL: Duration = Duration::from_secs(2);
/// Default `control.socket`.
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/heartbeat/control.sock";
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
/// Longest Unix socket path (`sun_path` is 108 bytes with the NUL).
const MAX_SOCKET_PATH: usize = 107;
/// Longest interface name (`IFNAMSIZ` - 1).
const MAX_IFNAME_LEN: usize = 15;

const TOP_KEYS: &[&str] = &["cluster", "metrics", "control", "node"];
const CLUSTER_KEYS: &[&str] = &[
    "name",
    "id",
    "key_file",
    "port",
    "heartbeat_interval",
    "node_timeout",
    "agent_timeout",
    "network_polling_interval",
    "events_file",
];
const METRICS_KEYS: &[&str] = &["listen"];
const CONTROL_KEYS: &[&str] = &["socket"];
const NODE_KEYS: &[&str] = &["id", "name", "priority", "votes", "link"];
const LINK_KEYS: &[&str] = &["id", "interface", "address", "role", "standby"];

/// The whole cluster's configuration, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// The file it was read from, as given (used in messages).
    pub path: PathBuf,
    pub cluster: ClusterSection,
    pub metrics: Option<MetricsSection>,
    pub control: ControlSection,
    pub nodes: Vec<NodeConfig>,
    /// Where each key was written in the file, so that later checks
    /// ([`ClusterConfig::check_system`]) can point at the line. Empty for a
    /// configuration built in code.
    pub locations: Locations,
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
    pub network_polling_interval: Duration,
    /// Resolved against the config file's directory.
    pub events_file: Option<PathBuf>,
}

/// `[metrics]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsSection {
    pub listen: SocketAddr,
}

/// `[control]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlSection {
    /// Resolved against the config file's directory.
    pub socket: PathBuf,
}

/// One `[[node]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeConfig {
    pub id: u16,
    pub name: String,
    pub priority: u32,
    pub votes: u32,
    pub links: Vec<LinkConfig>,
}

/// One `[[node.link]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkConfig {
    pub id: u8,
    pub interface: String,
    pub address: IpAddr,
    pub role: LinkRole,
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
            ConfigError::Read { .. } => None,
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
    /// Reads and validates a config file (every check that needs only the file).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            file: path.to_owned(),
            error,
        })?;
        Self::from_str(&text, path)
    }

    /// Validates config text; `path` names the file in messages and is the
    /// base of relative paths.
    pub fn from_str(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let doc = DeTable::parse(text).map_err(|e| {
            let offset = e.span().map_or(0, |s| s.start);
            ConfigError::Syntax {
                place: place_at(path, text, offset),
                message: e.message().trim().to_owned(),
            }
        })?;
        let span = doc.span();
        let root = Spanned::new(span, DeValue::Table(doc.into_inner()));
        let src = Src {
            file: path,
            text,
            base: config_dir(path),
            locations: RefCell::new(BTreeMap::new()),
        };
        let top = Tab::open(&src, &root, String::new(), "the top level", TOP_KEYS)?;

        let cluster = match top.table("cluster", "[cluster]", CLUSTER_KEYS)? {
            Some(t) => parse_cluster(&t)?,
            None => {
                return Err(src.invalid(
                    &top.span,
                    "cluster",
                    "the required section [cluster] is missing",
                ));
            }
        };
        let metrics = match top.table("metrics", "[metrics]", METRICS_KEYS)? {
            Some(t) => Some(parse_metrics(&t)?),
            None => None,
        };
        let control = match top.table("control", "[control]", CONTROL_KEYS)? {
            Some(t) => parse_control(&t)?,
            None => ControlSection {
                socket: PathBuf::from(DEFAULT_CONTROL_SOCKET),
            },
        };
        let node_tables = top.tables("node", "[[node]]", NODE_KEYS)?;
        let mut nodes = Vec::with_capacity(node_tables.len());
        for t in &node_tables {
            nodes.push(parse_node(t)?);
        }
        check_nodes(&src, &top, &nodes)?;

        let locations = Locations(src.locations.into_inner());
        Ok(ClusterConfig {
            path: path.to_owned(),
            cluster,
            metrics,
            control,
            nodes: nodes.into_iter().map(|n| n.node).collect(),
            locations,
        })
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
                    "--node `{name}` names no [[node]]; the nodes are: {}",
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
    pub fn node(&self, id: u16) -> Option<&NodeConfig> {
        self.nodes.iter().find(|n| n.id == id)
    }

    /// Checks what this host must provide for `local`: its interfaces
    /// (including standby ones) exist, and the key file exists, is private
    /// and well formed.
    pub fn check_system(&self, local: &NodeConfig) -> Result<(), ConfigError> {
        let index = self
            .nodes
            .iter()
            .position(|n| n.id == local.id)
            .unwrap_or(0);
        for (j, link) in local.links.iter().enumerate() {
            let prefix = format!("node[{index}].link[{j}]");
            self.check_interface(&format!("{prefix}.interface"), &link.interface)?;
            if let Some(standby) = &link.standby {
                self.check_interface(&format!("{prefix}.standby"), standby)?;
            }
        }
        keyfile::read(&self.cluster.key_file).map_err(|error| ConfigError::KeyFile {
            place: self.place_of("cluster.key_file"),
            key: "cluster.key_file".to_owned(),
            error,
        })?;
        Ok(())
    }

    fn check_interface(&self, key: &str, name: &str) -> Result<(), ConfigError> {
        match nix::net::if_::if_nametoindex(name) {
            Ok(_) => Ok(()),
            Err(e) => {
                let message = if e == nix::errno::Errno::ENODEV {
                    format!("interface `{name}` does not exist on this host")
                } else {
                    format!("cannot look up interface `{name}`: {e}")
                };
                Err(ConfigError::Invalid {
                    place: self.place_of(key),
                    key: key.to_owned(),
                    message,
                })
            }
        }
    }

    fn place_of(&self, key: &str) -> Place {
        let (line, column) = self.locations.get(key).unwrap_or((0, 0));
        Place {
            file: self.path.clone(),
            line,
            column,
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

/// The source being validated.
struct Src<'a> {
    file: &'a Path,
    text: &'a str,
    base: PathBuf,
    locations: RefCell<BTreeMap<String, (usize, usize)>>,
}

impl Src<'_> {
    fn invalid(&self, span: &Range<usize>, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            place: place_at(self.file, self.text, span.start),
            key: key.to_owned(),
            message: message.into(),
        }
    }

    fn record(&self, key: &str, span: &Range<usize>) {
        let lc = line_column(self.text, span.start);
        self.locations.borrow_mut().insert(key.to_owned(), lc);
    }

    fn line_of(&self, span: &Range<usize>) -> usize {
        line_column(self.text, span.start).0
    }
}

/// A value with the span of the text it came from.
#[derive(Debug, Clone)]
struct At<T> {
    value: T,
    span: Range<usize>,
}

/// A table being read: checks types, records locations, reports errors
/// with the full key path.
struct Tab<'a> {
    src: &'a Src<'a>,
    table: &'a DeTable<'a>,
    span: Range<usize>,
    /// Key path of the table itself (`""` for the top level).
    path: String,
    /// How to name it in messages (`[cluster]`).
    what: String,
}

impl<'a> Tab<'a> {
    /// Opens `value` as a table, rejecting keys not in `allowed`.
    fn open(
        src: &'a Src<'a>,
        value: &'a Spanned<DeValue<'a>>,
        path: String,
        what: &str,
        allowed: &[&str],
    ) -> Result<Self, ConfigError> {
        let DeValue::Table(table) = value.get_ref() else {
            return Err(src.invalid(
                &value.span(),
                &path,
                format!(
                    "expected a table ({what}), found {}",
                    describe(value.get_ref())
                ),
            ));
        };
        let tab = Tab {
            src,
            table,
            span: value.span(),
            path,
            what: what.to_owned(),
        };
        if !tab.path.is_empty() {
            src.record(&tab.path, &tab.span);
        }
        let mut unknown: Vec<&Spanned<_>> = table
            .keys()
            .filter(|k| !allowed.contains(&k.get_ref().as_ref()))
            .collect();
        unknown.sort_by_key(|k| k.span().start);
        if let Some(k) = unknown.first() {
            let name: &str = k.get_ref();
            let hint = closest(name, allowed)
                .map(|c| format!(" (did you mean `{c}`?)"))
                .unwrap_or_default();
            return Err(src.invalid(
                &k.span(),
                &tab.key(name),
                format!(
                    "unknown key{hint}; the valid keys in {what} are: {}",
                    allowed.join(", ")
                ),
            ));
        }
        Ok(tab)
    }

    /// Full key path of `k` in this table.
    fn key(&self, k: &str) -> String {
        if self.path.is_empty() {
            k.to_owned()
        } else {
            format!("{}.{k}", self.path)
        }
    }

    fn get(&self, k: &str) -> Option<&'a Spanned<DeValue<'a>>> {
        let value = self.table.get(k)?;
        self.src.record(&self.key(k), &value.span());
        Some(value)
    }

    fn invalid(&self, span: &Range<usize>, k: &str, message: impl Into<String>) -> ConfigError {
        self.src.invalid(span, &self.key(k), message)
    }

    fn wrong_type(&self, value: &Spanned<DeValue<'_>>, k: &str, expected: &str) -> ConfigError {
        self.invalid(
            &value.span(),
            k,
            format!("expected {expected}, found {}", describe(value.get_ref())),
        )
    }

    fn missing(&self, k: &str, expected: &str) -> ConfigError {
        self.invalid(
            &self.span,
            k,
            format!(
                "required key is missing in {} (expected {expected})",
                self.what
            ),
        )
    }

    fn required<T>(&self, k: &str, expected: &str, v: Option<T>) -> Result<T, ConfigError> {
        v.ok_or_else(|| self.missing(k, expected))
    }

    fn string(&self, k: &str, expected: &str) -> Result<Option<At<&'a str>>, ConfigError> {
        let Some(value) = self.get(k) else {
            return Ok(None);
        };
        match value.get_ref() {
            DeValue::String(s) => Ok(Some(At {
                value: s.as_ref(),
                span: value.span(),
            })),
            _ => Err(self.wrong_type(value, k, expected)),
        }
    }

    /// An integer in `range`.
    fn integer(
        &self,
        k: &str,
        range: RangeInclusive<i128>,
        expected: &str,
    ) -> Result<Option<At<i128>>, ConfigError> {
        let Some(value) = self.get(k) else {
            return Ok(None);
        };
        let DeValue::Integer(int) = value.get_ref() else {
            return Err(self.wrong_type(value, k, expected));
        };
        let n = i128::from_str_radix(int.as_str(), int.radix()).ok();
        match n {
            Some(n) if range.contains(&n) => Ok(Some(At {
                value: n,
                span: value.span(),
            })),
            _ => Err(self.invalid(
                &value.span(),
                k,
                format!("expected {expected}, found {int}"),
            )),
        }
    }

    fn int<T: TryFrom<i128>>(
        &self,
        k: &str,
        range: RangeInclusive<i128>,
        expected: &str,
    ) -> Result<Option<At<T>>, ConfigError> {
        let Some(at) = self.integer(k, range, expected)? else {
            return Ok(None);
        };
        match T::try_from(at.value) {
            Ok(value) => Ok(Some(At {
                value,
                span: at.span,
            })),
            Err(_) => Err(self.invalid(&at.span, k, format!("expected {expected}"))),
        }
    }

    fn duration(&self, k: &str) -> Result<Option<At<Duration>>, ConfigError> {
        const EXPECTED: &str = "a duration such as \"200us\", \"5ms\" or \"2s\"";
        let Some(at) = self.string(k, &format!("{EXPECTED} (a quoted string)"))? else {
            return Ok(None);
        };
        let d = humantime::parse_duration(at.value).map_err(|e| {
            self.invalid(
                &at.span,
                k,
                format!("bad duration `{}`: {e}; expected {EXPECTED}", at.value),
            )
        })?;
        if d.is_zero() {
            return Err(self.invalid(
                &at.span,
                k,
                format!("the duration must be greater than zero (expected {EXPECTED})"),
            ));
        }
        if u64::try_from(d.as_nanos()).is_err() {
            return Err(self.invalid(
                &at.span,
                k,
                format!("the duration `{}` is too long", at.value),
            ));
        }
        Ok(Some(At {
            value: d,
            span: at.span,
        }))
    }

    /// A path; relative ones are resolved against the config file's directory.
    fn path(&self, k: &str) -> Result<Option<At<PathBuf>>, ConfigError> {
        const EXPECTED: &str = "a file path (a quoted string)";
        let Some(at) = self.string(k, EXPECTED)? else {
            return Ok(None);
        };
        if at.value.is_empty() || at.value.contains('\0') {
            return Err(self.invalid(
                &at.span,
                k,
                format!("expected {EXPECTED}, found an empty path or one holding a NUL"),
            ));
        }
        Ok(Some(At {
            value: self.src.base.join(at.value),
            span: at.span,
        }))
    }

    /// A name: 1..=64 characters among letters, digits, `.`, `_`, `-`.
    fn name(&self, k: &str) -> Result<Option<At<String>>, ConfigError> {
        const EXPECTED: &str =
            "a name of 1 to 64 letters, digits, '.', '_' or '-' (a quoted string)";
        let Some(at) = self.string(k, EXPECTED)? else {
            return Ok(None);
        };
        let ok = !at.value.is_empty()
            && at.value.len() <= MAX_NAME_LEN
            && at
                .value
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if !ok {
            return Err(self.invalid(
                &at.span,
                k,
                format!("expected {EXPECTED}, found {:?}", at.value),
            ));
        }
        Ok(Some(At {
            value: at.value.to_owned(),
            span: at.span,
        }))
    }

    /// A network interface name as Linux accepts it.
    fn interface(&self, k: &str) -> Result<Option<At<String>>, ConfigError> {
        const EXPECTED: &str =
            "an interface name of 1 to 15 characters, without '/', ':' or spaces (a quoted string)";
        let Some(at) = self.string(k, EXPECTED)? else {
            return Ok(None);
        };
        let s = at.value;
        let ok = !s.is_empty()
            && s.len() <= MAX_IFNAME_LEN
            && s != "."
            && s != ".."
            && !s
                .chars()
                .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control());
        if !ok {
            return Err(self.invalid(&at.span, k, format!("expected {EXPECTED}, found {s:?}")));
        }
        Ok(Some(At {
            value: s.to_owned(),
            span: at.span,
        }))
    }

    /// A sub-table `[what]`.
    fn table(&self, k: &str, what: &str, allowed: &[&str]) -> Result<Option<Tab<'a>>, ConfigError> {
        match self.get(k) {
            None => Ok(None),
            Some(value) => Tab::open(self.src, value, self.key(k), what, allowed).map(Some),
        }
    }

    /// An array of tables `[[what]]`; absent means empty.
    fn tables(&self, k: &str, what: &str, allowed: &[&str]) -> Result<Vec<Tab<'a>>, ConfigError> {
        let Some(value) = self.get(k) else {
            return Ok(Vec::new());
        };
        let DeValue::Array(items) = value.get_ref() else {
            return Err(self.wrong_type(value, k, &format!("an array of tables ({what})")));
        };
        items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                Tab::open(
                    self.src,
                    item,
                    format!("{}[{i}]", self.key(k)),
                    what,
                    allowed,
                )
            })
            .collect()
    }
}

/// A short description of a value for "found ..." messages.
fn describe(value: &DeValue<'_>) -> String {
    match value {
        DeValue::String(s) => {
            let mut shown: String = s.chars().take(40).collect();
            if shown.len() < s.len() {
                shown.push('…');
            }
            format!("a string ({shown:?})")
        }
        DeValue::Integer(i) => format!("an integer ({i})"),
        DeValue::Float(f) => format!("a float ({f})"),
        DeValue::Boolean(b) => format!("a boolean ({b})"),
        DeValue::Datetime(d) => format!("a date-time ({d})"),
        DeValue::Array(_) => "an array".to_owned(),
        DeValue::Table(_) => "a table".to_owned(),
    }
}

/// The allowed key closest to a misspelt one, if close enough.
fn closest<'k>(name: &str, allowed: &[&'k str]) -> Option<&'k str> {
    allowed
        .iter()
        .map(|a| (edit_distance(name, a), *a))
        .filter(|(d, a)| *d <= 2.max(a.len() / 3) && *d < name.chars().count())
        .min_by_key(|(d, _)| *d)
        .map(|(_, a)| a)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = Vec::with_capacity(b.len() + 1);
        cur.push(i + 1);
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            let v = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
            cur.push(v);
        }
        prev = cur;
    }
    prev[b.len()]
}

fn fmt_duration(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

fn parse_cluster(t: &Tab<'_>) -> Result<ClusterSection, ConfigError> {
    let name = t.name("name")?;
    let name = t.required("name", "the cluster's name, a string", name)?;
    let id = t.int::<u32>(
        "id",
        1..=i128::from(u32::MAX),
        "a cluster id in 1..=4294967295",
    )?;
    let id = t.required("id", "a cluster id in 1..=4294967295", id)?;
    let key_file = t.path("key_file")?;
    let key_file = t.required(
        "key_file",
        "the path of the key file made by `heartbeat-agent keygen`",
        key_file,
    )?;
    let port = t
        .int::<u16>("port", 1..=65535, "a UDP port in 1..=65535")?
        .map_or(DEFAULT_PORT, |p| p.value);

    let interval = t.duration("heartbeat_interval")?;
    let node_timeout = t.duration("node_timeout")?;
    let agent_timeout = t.duration("agent_timeout")?;
    let polling = t.duration("network_polling_interval")?;
    let events_file = t.path("events_file")?.map(|p| p.value);

    let hb = interval
        .as_ref()
        .map_or(DEFAULT_HEARTBEAT_INTERVAL, |d| d.value);
    if let Some(at) = &interval
        && at.value < MIN_HEARTBEAT_INTERVAL
    {
        return Err(t.invalid(
            &at.span,
            "heartbeat_interval",
            format!(
                "{} is too short; the smallest heartbeat_interval is {}",
                fmt_duration(at.value),
                fmt_duration(MIN_HEARTBEAT_INTERVAL)
            ),
        ));
    }
    // `later` must be larger than heartbeat_interval. Point at `later` when it
    // was written, else at heartbeat_interval.
    let must_exceed = |later: &Option<At<Duration>>,
                       later_key: &str,
                       default: Duration,
                       advice: &str|
     -> Result<Duration, ConfigError> {
        let value = later.as_ref().map_or(default, |d| d.value);
        if value > hb {
            return Ok(value);
        }
        let shown = |d: Duration, written: bool| {
            if written {
                fmt_duration(d)
            } else {
                format!("{} (the default)", fmt_duration(d))
            }
        };
        let message = format!(
            "{later_key} = {} must be larger than heartbeat_interval = {}; {advice}",
            shown(value, later.is_some()),
            shown(hb, interval.is_some()),
        );
        match (later, &interval) {
            (Some(at), _) => Err(t.invalid(&at.span, later_key, message)),
            (None, Some(at)) => Err(t.invalid(&at.span, "heartbeat_interval", message)),
            (None, None) => Err(t.invalid(&t.span, later_key, message)),
        }
    };
    let node_timeout = must_exceed(
        &node_timeout,
        "node_timeout",
        DEFAULT_NODE_TIMEOUT,
        "about 5 × heartbeat_interval is recommended (e.g. heartbeat_interval = \"1ms\" with node_timeout = \"5ms\")",
    )?;
    let agent_timeout = must_exceed(
        &agent_timeout,
        "agent_timeout",
        DEFAULT_AGENT_TIMEOUT,
        "the agent refreshes its liveness stamp every heartbeat_interval",
    )?;
    Ok(ClusterSection {
        name: name.value,
        id: id.value,
        key_file: key_file.value,
        port,
        heartbeat_interval: hb,
        node_timeout,
        agent_timeout,
        network_polling_interval: polling.map_or(DEFAULT_NETWORK_POLLING_INTERVAL, |d| d.value),
        events_file,
    })
}

fn parse_metrics(t: &Tab<'_>) -> Result<MetricsSection, ConfigError> {
    const EXPECTED: &str = "an address and port such as \"127.0.0.1:9465\" or \"[::1]:9465\"";
    let listen = t.string("listen", EXPECTED)?;
    let listen = t.required("listen", EXPECTED, listen)?;
    let addr = listen.value.parse::<SocketAddr>().map_err(|_| {
        t.invalid(
            &listen.span,
            "listen",
            format!("expected {EXPECTED}, found {:?}", listen.value),
        )
    })?;
    Ok(MetricsSection { listen: addr })
}

fn parse_control(t: &Tab<'_>) -> Result<ControlSection, ConfigError> {
    let Some(socket) = t.path("socket")? else {
        return Ok(ControlSection {
            socket: PathBuf::from(DEFAULT_CONTROL_SOCKET),
        });
    };
    let len = socket.value.as_os_str().len();
    if len > MAX_SOCKET_PATH {
        return Err(t.invalid(
            &socket.span,
            "socket",
            format!(
                "the socket path {} is {len} bytes long; Unix sockets allow at most {MAX_SOCKET_PATH}",
                socket.value.display()
            ),
        ));
    }
    Ok(ControlSection {
        socket: socket.value,
    })
}

/// A parsed node with the spans the cross-node checks point at.
struct RawNode {
    node: NodeConfig,
    path: String,
    span: Range<usize>,
    id_span: Range<usize>,
    name_span: Range<usize>,
    links: Vec<RawLink>,
}

struct RawLink {
    path: String,
    /// Span of `id`, or of the link's table when the id is implied.
    id_span: Range<usize>,
    id_written: bool,
    address_span: Range<usize>,
    role_span: Range<usize>,
}

fn parse_node(t: &Tab<'_>) -> Result<RawNode, ConfigError> {
    let id_expected = format!("a node id in 1..={MAX_NODE_ID}");
    let id = t.int::<u16>("id", 1..=i128::from(MAX_NODE_ID), &id_expected)?;
    let id = t.required("id", &id_expected, id)?;
    let name = t.name("name")?;
    let name = t.required("name", "the node's unique name, a string", name)?;
    let priority = t
        .int::<u32>(
            "priority",
            0..=i128::from(u32::MAX),
            "an integer in 0..=4294967295",
        )?
        .map_or(DEFAULT_PRIORITY, |p| p.value);
    let votes = t
        .int::<u32>(
            "votes",
            0..=i128::from(u32::MAX),
            "an integer in 0..=4294967295",
        )?
        .map_or(DEFAULT_VOTES, |v| v.value);

    let link_tables = t.tables("link", "[[node.link]]", LINK_KEYS)?;
    let mut links = Vec::with_capacity(link_tables.len());
    let mut raw_links = Vec::with_capacity(link_tables.len());
    let mut seen: BTreeMap<u8, usize> = BTreeMap::new();
    for (position, lt) in link_tables.iter().enumerate() {
        let (link, raw) = parse_link(lt, position)?;
        if let Some(first) = seen.insert(link.id, position) {
            let how = if raw.id_written {
                String::new()
            } else {
                format!(" (implied by its position {position} in the list)")
            };
            return Err(lt.invalid(
                &raw.id_span,
                "id",
                format!(
                    "link id {}{how} is already used by {}.link[{first}] of node {}; link ids must be unique within a node",
                    link.id, t.path, name.value
                ),
            ));
        }
        links.push(link);
        raw_links.push(raw);
    }
    if !links.iter().any(|l| l.role == LinkRole::Heartbeat) {
        return Err(t.invalid(
            &t.span,
            "link",
            format!(
                "node {} has no heartbeat link; add a [[node.link]] with role = \"heartbeat\"",
                name.value
            ),
        ));
    }
    Ok(RawNode {
        node: NodeConfig {
            id: id.value,
            name: name.value,
            priority,
            votes,
            links,
        },
        path: t.path.clone(),
        span: t.span.clone(),
        id_span: id.span,
        name_span: name.span,
        links: raw_links,
    })
}

fn parse_link(t: &Tab<'_>, position: usize) -> Result<(LinkConfig, RawLink), ConfigError> {
    let id_expected = format!("a link id in 0..={MAX_LINK_ID}");
    let id = t.int::<u8>("id", 0..=i128::from(MAX_LINK_ID), &id_expected)?;
    let (id, id_span, id_written) = match id {
        Some(at) => (at.value, at.span, true),
        None => match u8::try_from(position) {
            Ok(p) if p <= MAX_LINK_ID => (p, t.span.clone(), false),
            _ => {
                return Err(t.invalid(
                    &t.span,
                    "id",
                    format!(
                        "this is link number {position} of the node, so its implied id is out of range; \
                         a node has at most {MAX_LINKS} links (ids 0..={MAX_LINK_ID})"
                    ),
                ));
            }
        },
    };
    let interface = t.interface("interface")?;
    let interface = t.required(
        "interface",
        "a network interface name such as \"eth1\"",
        interface,
    )?;
    const ADDRESS: &str = "an IPv4 or IPv6 address such as \"10.0.0.1\" or \"fd00::1\"";
    let address = t.string("address", ADDRESS)?;
    let address = t.required("address", ADDRESS, address)?;
    let ip = address.value.parse::<IpAddr>().map_err(|_| {
        t.invalid(
            &address.span,
            "address",
            format!("expected {ADDRESS}, found {:?}", address.value),
        )
    })?;
    let unusable = ip.is_unspecified()
        || ip.is_multicast()
        || matches!(ip, IpAddr::V4(v4) if v4.is_broadcast());
    if unusable {
        return Err(t.invalid(
            &address.span,
            "address",
            format!("{ip} cannot be a node's address (unspecified, multicast or broadcast); expected a unicast address"),
        ));
    }
    const ROLE: &str = "\"heartbeat\" or \"stationary\"";
    let role = t.string("role", ROLE)?;
    let (role, role_span) = match &role {
        None => (LinkRole::Heartbeat, t.span.clone()),
        Some(at) => match at.value {
            "heartbeat" => (LinkRole::Heartbeat, at.span.clone()),
            "stationary" => (LinkRole::Stationary, at.span.clone()),
            other => {
                return Err(t.invalid(
                    &at.span,
                    "role",
                    format!("expected {ROLE}, found {other:?}"),
                ));
            }
        },
    };
    let standby = t.interface("standby")?;
    if let Some(s) = &standby
        && s.value == interface.value
    {
        return Err(t.invalid(
            &s.span,
            "standby",
            format!(
                "the standby interface must differ from the link's interface `{}`",
                interface.value
            ),
        ));
    }
    Ok((
        LinkConfig {
            id,
            interface: interface.value,
            address: ip,
            role,
            standby: standby.map(|s| s.value),
        },
        RawLink {
            path: t.path.clone(),
            id_span,
            id_written,
            address_span: address.span,
            role_span,
        },
    ))
}

fn family(ip: IpAddr) -> &'static str {
    match ip {
        IpAddr::V4(_) => "IPv4",
        IpAddr::V6(_) => "IPv6",
    }
}

/// Checks across nodes: count, unique ids, names and addresses, one address
/// family and one role per link id, and a peer for every heartbeat link.
fn check_nodes(src: &Src<'_>, top: &Tab<'_>, nodes: &[RawNode]) -> Result<(), ConfigError> {
    if nodes.len() < 2 {
        let span = nodes.first().map_or(top.span.clone(), |n| n.span.clone());
        return Err(src.invalid(
            &span,
            "node",
            format!(
                "a cluster needs at least 2 nodes, found {}; add a [[node]] section for each node",
                nodes.len()
            ),
        ));
    }
    let mut ids: BTreeMap<u16, &RawNode> = BTreeMap::new();
    let mut names: BTreeMap<&str, &RawNode> = BTreeMap::new();
    for n in nodes {
        if let Some(first) = ids.insert(n.node.id, n) {
            return Err(src.invalid(
                &n.id_span,
                &format!("{}.id", n.path),
                format!(
                    "node id {} is already used by {} (node {}, line {}); node ids must be unique",
                    n.node.id,
                    first.path,
                    first.node.name,
                    src.line_of(&first.id_span)
                ),
            ));
        }
        if let Some(first) = names.insert(&n.node.name, n) {
            return Err(src.invalid(
                &n.name_span,
                &format!("{}.name", n.path),
                format!(
                    "node name `{}` is already used by {} (line {}); node names must be unique",
                    n.node.name,
                    first.path,
                    src.line_of(&first.name_span)
                ),
            ));
        }
    }

    // Addresses are unique across the cluster.
    let mut addresses: BTreeMap<IpAddr, (&RawNode, &RawLink)> = BTreeMap::new();
    for n in nodes {
        for (link, raw) in n.node.links.iter().zip(&n.links) {
            if let Some((first_node, first_link)) = addresses.insert(link.address, (n, raw)) {
                return Err(src.invalid(
                    &raw.address_span,
                    &format!("{}.address", raw.path),
                    format!(
                        "address {} is already used by {} of node {} (line {}); addresses must be unique across the cluster",
                        link.address,
                        first_link.path,
                        first_node.node.name,
                        src.line_of(&first_link.address_span)
                    ),
                ));
            }
        }
    }

    // Per link id: the first node that has it sets the family and the role.
    let mut networks: BTreeMap<u8, (&RawNode, &LinkConfig, &RawLink)> = BTreeMap::new();
    for n in nodes {
        for (link, raw) in n.node.links.iter().zip(&n.links) {
            let (first_node, first, first_raw) = match networks.entry(link.id) {
                Entry::Vacant(v) => {
                    v.insert((n, link, raw));
                    continue;
                }
                Entry::Occupied(o) => *o.get(),
            };
            if family(first.address) != family(link.address) {
                return Err(src.invalid(
                    &raw.address_span,
                    &format!("{}.address", raw.path),
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
                return Err(src.invalid(
                    &raw.role_span,
                    &format!("{}.role", raw.path),
                    format!(
                        "link {} is \"{}\" on node {} (line {}) but \"{}\" on node {}; \
                         one link id is one network and has one role",
                        link.id,
                        first.role,
                        first_node.node.name,
                        src.line_of(&first_raw.role_span),
                        link.role,
                        n.node.name
                    ),
                ));
            }
        }
    }

    // Every heartbeat link needs the same link id on another node.
    for n in nodes {
        for (link, raw) in n.node.links.iter().zip(&n.links) {
            if link.role != LinkRole::Heartbeat {
                continue;
            }
            let has_peer = nodes
                .iter()
                .filter(|m| m.node.id != n.node.id)
                .any(|m| m.node.links.iter().any(|l| l.id == link.id));
            if !has_peer {
                return Err(src.invalid(
                    &raw.id_span,
                    &format!("{}.id", raw.path),
                    format!(
                        "link {} of {} has no peer on any other node; give the same link id to \
                         the matching link of at least one other node",
                        link.id, n.node.name
                    ),
                ));
            }
        }
    }
    Ok(())
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
        assert_eq!(closest("nmae", NODE_KEYS), Some("name"));
        assert_eq!(
            closest("heartbeat_intervall", CLUSTER_KEYS),
            Some("heartbeat_interval")
        );
        assert_eq!(closest("zzzzzz", NODE_KEYS), None);
    }
}
