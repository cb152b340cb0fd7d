//! The file's shape as serde sees it: one struct per table, each with
//! `deny_unknown_fields`, every value `Spanned` so that later checks can
//! point at its line, and value types whose `Deserialize` says what was
//! expected in the operator's terms ("expected a UDP port in 1..=65535,
//! found a string ("6405")") instead of serde's ("invalid type: ...").

use std::fmt;
use std::marker::PhantomData;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use toml::Spanned;

use super::{LinkRole, MAX_LINK_ID, MAX_NAME_LEN, MAX_NODE_ID, shorten, shorten_to};

/// An optional key: absent, or its value and where it was written.
pub(super) type Field<T> = Option<Spanned<T>>;

/// The whole file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(super) struct Top {
    pub cluster: Field<Cluster>,
    pub quorum: Field<Quorum>,
    pub metrics: Field<Metrics>,
    pub control: Field<Control>,
    pub node: Field<Tables<Node>>,
    pub package: Field<Tables<Package>>,
    /// The serial heartbeat line (two-node clusters).
    pub serial: Field<Serial>,
    /// The watchdog self-fence (off without it).
    pub watchdog: Field<Watchdog>,
}

/// `[watchdog]`: the Linux watchdog device the agent feeds (self-fence).
#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table ([watchdog])")]
pub(super) struct Watchdog {
    pub device: Field<PathText>,
    pub timeout: Field<Dur>,
}

/// `[serial]`: the serial line's settings for both nodes.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table ([serial])")]
pub(super) struct Serial {
    pub baud: Field<Baud>,
    pub interval: Field<Dur>,
    pub timeout: Field<Dur>,
    pub required: Field<Flag>,
    pub fec: Field<Flag>,
}

/// `[node.serial]`: one node's end of the serial line.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table ([node.serial])")]
pub(super) struct NodeSerial {
    pub device: Field<PathText>,
    pub baud: Field<Baud>,
    pub interval: Field<Dur>,
    pub timeout: Field<Dur>,
    pub required: Field<Flag>,
}

/// `[cluster]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table ([cluster])")]
pub(super) struct Cluster {
    pub name: Field<Name>,
    pub id: Field<ClusterIdValue>,
    pub key_file: Field<PathText>,
    pub port: Field<Port>,
    pub heartbeat_interval: Field<Dur>,
    pub node_timeout: Field<Dur>,
    pub agent_timeout: Field<Dur>,
    pub events_file: Field<PathText>,
    pub state_file: Field<PathText>,
    pub auto_start: Field<Flag>,
    pub auto_start_timeout: Field<Dur>,
    pub restart_window: Field<Dur>,
    pub package_lease: Field<Dur>,
    pub lease_margin: Field<Dur>,
    pub clock_drift_ppm: Field<DriftPpm>,
    pub announce_count: Field<AnnounceCount>,
    /// Standby NIC takeover (issue #10): the poller and the failback.
    pub network_polling_interval: Field<Dur>,
    pub network_failure_detection: Field<DetectionValue>,
    pub network_announce_count: Field<AnnounceCount>,
    pub auto_failback: Field<Flag>,
    pub failback_hold: Field<Dur>,
}

/// `[quorum]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table ([quorum])")]
pub(super) struct Quorum {
    pub two_node: Field<Flag>,
    pub wait_for_all: Field<Flag>,
    pub last_man_standing: Field<Flag>,
    pub last_man_standing_window: Field<Dur>,
    pub auto_tie_breaker: Field<Flag>,
    pub quorum_server: Field<Addr>,
    pub quorum_server_timeout: Field<Dur>,
}

/// `[metrics]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table ([metrics])")]
pub(super) struct Metrics {
    pub listen: Field<Addr>,
}

/// `[control]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table ([control])")]
pub(super) struct Control {
    pub socket: Field<PathText>,
}

/// One `[[node]]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table ([[node]])")]
pub(super) struct Node {
    pub id: Field<NodeNumber>,
    pub name: Field<Name>,
    pub priority: Field<Priority>,
    pub votes: Field<Votes>,
    pub fence: Field<Text>,
    pub link: Field<Tables<Link>>,
    /// This node's end of the serial heartbeat line.
    pub serial: Field<NodeSerial>,
}

/// One `[[node.link]]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table ([[node.link]])")]
pub(super) struct Link {
    pub id: Field<LinkNumber>,
    pub interface: Field<Interface>,
    pub address: Field<Ip>,
    pub role: Field<Role>,
    /// The standby card (issue #10).
    pub standby: Field<Interface>,
}

/// One `[[package]]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table ([[package]])")]
pub(super) struct Package {
    pub name: Field<Name>,
    pub nodes: Field<Strings>,
    pub failover_policy: Field<FailoverValue>,
    pub failback_policy: Field<FailbackValue>,
    pub on_all_unhealthy: Field<AllUnhealthyValue>,
    pub addresses: Field<Strings>,
    pub start: Field<Text>,
    pub stop: Field<Text>,
    pub monitor: Field<Text>,
    pub agent: Field<Text>,
    pub params: Field<Params>,
    pub monitor_interval: Field<Dur>,
    pub start_timeout: Field<Dur>,
    pub stop_timeout: Field<Dur>,
    pub monitor_timeout: Field<Dur>,
    pub restart_limit: Field<RestartLimit>,
}

/// An array of strings, each with where it was written.
pub(super) struct Strings(pub Vec<Spanned<Text>>);

impl<'de> Deserialize<'de> for Strings {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Strings;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an array of strings")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Strings, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element::<Spanned<Text>>()? {
                    items.push(item);
                }
                Ok(Strings(items))
            }
        }
        d.deserialize_seq(V)
    }
}

/// `[package.params]`: names and string values (in the order toml gives
/// them: sorted by name).
pub(super) struct Params(pub Vec<(String, Spanned<Text>)>);

impl<'de> Deserialize<'de> for Params {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Params;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a table of OCF parameters ([package.params]) with string values")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Params, A::Error> {
                let mut items = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    items.push((key, map.next_value::<Spanned<Text>>()?));
                }
                Ok(Params(items))
            }
        }
        d.deserialize_map(V)
    }
}

/// A table that appears as an array of tables (`[[node]]`).
pub(super) trait Section {
    /// How the table is written (`[[node]]`).
    const WHAT: &'static str;
}

impl Section for Node {
    const WHAT: &'static str = "[[node]]";
}

impl Section for Link {
    const WHAT: &'static str = "[[node.link]]";
}

impl Section for Package {
    const WHAT: &'static str = "[[package]]";
}

/// An array of tables, with a message naming it when something else is there.
pub(super) struct Tables<T>(pub Vec<Spanned<T>>);

impl<'de, T: Deserialize<'de> + Section> Deserialize<'de> for Tables<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de> + Section> Visitor<'de> for V<T> {
            type Value = Tables<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "an array of tables ({})", T::WHAT)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element::<Spanned<T>>()? {
                    items.push(item);
                }
                Ok(Tables(items))
            }
        }
        d.deserialize_seq(V(PhantomData))
    }
}

/// Any TOML value, reduced to what messages and value checks need.
pub(super) enum Raw {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    Datetime(String),
    Array,
    Table,
}

/// The key toml uses to pass a date-time through serde.
const DATETIME_KEY: &str = "$__toml_private_datetime";

impl Raw {
    /// A short description for "found ..." (long strings are cut).
    pub(super) fn describe(&self) -> String {
        match self {
            Raw::Str(s) => format!("a string ({:?})", shorten(s)),
            Raw::Int(i) => format!("an integer ({i})"),
            Raw::Float(f) => format!("a float ({f})"),
            Raw::Bool(b) => format!("a boolean ({b})"),
            Raw::Datetime(d) => format!("a date-time ({})", shorten(d)),
            Raw::Array => "an array".to_owned(),
            Raw::Table => "a table".to_owned(),
        }
    }
}

impl<'de> Deserialize<'de> for Raw {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Raw;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a TOML value")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Raw, E> {
                Ok(Raw::Str(v.to_owned()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Raw, E> {
                Ok(Raw::Str(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Raw, E> {
                Ok(Raw::Int(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Raw, E> {
                Ok(Raw::Int(i64::try_from(v).unwrap_or(i64::MAX)))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Raw, E> {
                Ok(Raw::Float(v))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Raw, E> {
                Ok(Raw::Bool(v))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Raw, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Raw::Array)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Raw, A::Error> {
                let mut first = true;
                let mut datetime = None;
                while let Some(key) = map.next_key::<String>()? {
                    if first && key == DATETIME_KEY {
                        datetime = Some(map.next_value::<String>()?);
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                    first = false;
                }
                Ok(datetime.map_or(Raw::Table, Raw::Datetime))
            }
        }
        d.deserialize_any(V)
    }
}

/// A value type: what is expected, and how it is made from a raw value.
pub(super) trait Value: Sized {
    fn expected() -> String;
    fn from_raw(raw: Raw) -> Result<Self, String>;
}

/// "expected X, found Y" for a value of the wrong kind.
fn wrong<T: Value>(raw: &Raw) -> String {
    format!("expected {}, found {}", T::expected(), raw.describe())
}

macro_rules! deserialize_via_value {
    ($($t:ty),* $(,)?) => {$(
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let raw = Raw::deserialize(d)?;
                <$t as Value>::from_raw(raw).map_err(de::Error::custom)
            }
        }
    )*};
}

macro_rules! integer_value {
    ($(#[$doc:meta])* $name:ident: $int:ty, $min:expr, $max:expr, $what:expr) => {
        $(#[$doc])*
        pub(super) struct $name(pub $int);

        impl Value for $name {
            fn expected() -> String {
                format!("{} in {}..={}", $what, $min, $max)
            }
            fn from_raw(raw: Raw) -> Result<Self, String> {
                match raw {
                    Raw::Int(n) => match <$int>::try_from(n) {
                        Ok(v) if (($min)..=($max)).contains(&v) => Ok($name(v)),
                        _ => Err(format!("expected {}, found {n}", Self::expected())),
                    },
                    other => Err(wrong::<Self>(&other)),
                }
            }
        }

        deserialize_via_value!($name);
    };
}

integer_value!(
    /// `cluster.id`.
    ClusterIdValue: u32, 1, u32::MAX, "a cluster id"
);
integer_value!(
    /// `cluster.port`.
    Port: u16, 1, u16::MAX, "a UDP port"
);
integer_value!(
    /// `node.id`.
    NodeNumber: u16, 1, MAX_NODE_ID, "a node id"
);
integer_value!(
    /// `node.link.id`.
    LinkNumber: u8, 0, MAX_LINK_ID, "a link id"
);
integer_value!(
    /// `node.priority`.
    Priority: u32, 0, u32::MAX, "an integer"
);
integer_value!(
    /// `serial.baud`.
    Baud: u32, 50, 4_000_000, "a baud rate"
);
integer_value!(
    /// `package.restart_limit`.
    RestartLimit: u32, 0, 1000, "a restart count"
);
integer_value!(
    /// `cluster.clock_drift_ppm`.
    DriftPpm: u32, 0, 100_000, "a clock drift bound in ppm"
);
integer_value!(
    /// `cluster.announce_count`.
    AnnounceCount: u32, 0, 100, "a count of address announcements"
);
integer_value!(
    /// `node.votes`.
    Votes: u32, 0, u32::MAX, "an integer"
);

/// A duration written as a humantime string; never zero.
pub(super) struct Dur(pub Duration);

const DURATION: &str = "a duration such as \"200us\", \"5ms\" or \"2s\"";

impl Value for Dur {
    fn expected() -> String {
        format!("{DURATION} (a quoted string)")
    }
    fn from_raw(raw: Raw) -> Result<Self, String> {
        let Raw::Str(s) = raw else {
            return Err(wrong::<Self>(&raw));
        };
        if s.chars().count() > super::MAX_SHOWN_LEN {
            return Err(format!(
                "bad duration `{}`: far too long for a duration; expected {DURATION}",
                shorten(&s)
            ));
        }
        let d = humantime::parse_duration(&s).map_err(|e| {
            format!(
                "bad duration `{}`: {}; expected {DURATION}",
                shorten(&s),
                shorten_to(&e.to_string(), 3 * super::MAX_SHOWN_LEN)
            )
        })?;
        if d.is_zero() {
            return Err(format!(
                "the duration must be greater than zero (expected {DURATION})"
            ));
        }
        if u64::try_from(d.as_nanos()).is_err() {
            return Err(format!("the duration `{}` is too long", shorten(&s)));
        }
        Ok(Dur(d))
    }
}

/// `true` or `false`.
pub(super) struct Flag(pub bool);

impl Value for Flag {
    fn expected() -> String {
        "true or false".to_owned()
    }
    fn from_raw(raw: Raw) -> Result<Self, String> {
        match raw {
            Raw::Bool(b) => Ok(Flag(b)),
            other => Err(wrong::<Self>(&other)),
        }
    }
}

/// `PATH_MAX`, with the NUL.
const MAX_PATH_LEN: usize = 4096;

/// A path as written (resolved against the config file's directory later).
pub(super) struct PathText(pub String);

impl Value for PathText {
    fn expected() -> String {
        "a file path (a quoted string)".to_owned()
    }
    fn from_raw(raw: Raw) -> Result<Self, String> {
        match raw {
            Raw::Str(s) if s.is_empty() || s.contains('\0') => Err(format!(
                "expected {}, found an empty path or one holding a NUL",
                Self::expected()
            )),
            Raw::Str(s) if s.len() >= MAX_PATH_LEN => Err(format!(
                "expected {}, found a path of {} bytes; at most {} are allowed",
                Self::expected(),
                s.len(),
                MAX_PATH_LEN - 1
            )),
            Raw::Str(s) => Ok(PathText(s)),
            other => Err(wrong::<Self>(&other)),
        }
    }
}

/// A cluster or node name: 1..=64 letters, digits, `.`, `_`, `-`.
pub(super) struct Name(pub String);

impl Value for Name {
    fn expected() -> String {
        format!("a name of 1 to {MAX_NAME_LEN} letters, digits, '.', '_' or '-' (a quoted string)")
    }
    fn from_raw(raw: Raw) -> Result<Self, String> {
        let Raw::Str(s) = raw else {
            return Err(wrong::<Self>(&raw));
        };
        let ok = !s.is_empty()
            && s.len() <= MAX_NAME_LEN
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if ok {
            Ok(Name(s))
        } else {
            Err(format!(
                "expected {}, found {:?}",
                Self::expected(),
                shorten(&s)
            ))
        }
    }
}

/// Longest interface name (`IFNAMSIZ` - 1).
const MAX_IFNAME_LEN: usize = 15;

/// A network interface name as Linux accepts it.
pub(super) struct Interface(pub String);

impl Value for Interface {
    fn expected() -> String {
        format!(
            "an interface name of 1 to {MAX_IFNAME_LEN} characters, without '/', ':' or spaces (a quoted string)"
        )
    }
    fn from_raw(raw: Raw) -> Result<Self, String> {
        let Raw::Str(s) = raw else {
            return Err(wrong::<Self>(&raw));
        };
        let ok = !s.is_empty()
            && s.len() <= MAX_IFNAME_LEN
            && s != "."
            && s != ".."
            && !s
                .chars()
                .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control());
        if ok {
            Ok(Interface(s))
        } else {
            Err(format!(
                "expected {}, found {:?}",
                Self::expected(),
                shorten(&s)
            ))
        }
    }
}

/// A node's unicast address on a link.
pub(super) struct Ip(pub IpAddr);

impl Value for Ip {
    fn expected() -> String {
        "an IPv4 or IPv6 address such as \"10.0.0.1\" or \"fd00::1\"".to_owned()
    }
    fn from_raw(raw: Raw) -> Result<Self, String> {
        let Raw::Str(s) = raw else {
            return Err(wrong::<Self>(&raw));
        };
        let ip = s
            .parse::<IpAddr>()
            .map_err(|_| format!("expected {}, found {:?}", Self::expected(), shorten(&s)))?;
        let unusable = ip.is_unspecified()
            || ip.is_multicast()
            || matches!(ip, IpAddr::V4(v4) if v4.is_broadcast());
        if unusable {
            return Err(format!(
                "{ip} cannot be a node's address (unspecified, multicast or broadcast); expected a unicast address"
            ));
        }
        Ok(Ip(ip))
    }
}

/// An address and port (`metrics.listen`, `quorum.quorum_server`).
pub(super) struct Addr(pub SocketAddr);

impl Value for Addr {
    fn expected() -> String {
        "an address and port such as \"127.0.0.1:9465\" or \"[::1]:9465\"".to_owned()
    }
    fn from_raw(raw: Raw) -> Result<Self, String> {
        let Raw::Str(s) = raw else {
            return Err(wrong::<Self>(&raw));
        };
        s.parse::<SocketAddr>()
            .map(Addr)
            .map_err(|_| format!("expected {}, found {:?}", Self::expected(), shorten(&s)))
    }
}

/// `heartbeat` or `stationary`.
pub(super) struct Role(pub LinkRole);

impl Value for Role {
    fn expected() -> String {
        "\"heartbeat\" or \"stationary\"".to_owned()
    }
    fn from_raw(raw: Raw) -> Result<Self, String> {
        match raw {
            Raw::Str(s) if s == "heartbeat" => Ok(Role(LinkRole::Heartbeat)),
            Raw::Str(s) if s == "stationary" => Ok(Role(LinkRole::Stationary)),
            Raw::Str(s) => Err(format!(
                "expected {}, found {:?}",
                Self::expected(),
                shorten(&s)
            )),
            other => Err(wrong::<Self>(&other)),
        }
    }
}

/// Longest command, agent or parameter value.
pub(super) const MAX_TEXT_LEN: usize = 4096;

/// A string (a command, an agent, an address, a node name, a parameter
/// value): at most [`MAX_TEXT_LEN`] bytes, no NUL.
pub(super) struct Text(pub String);

impl Value for Text {
    fn expected() -> String {
        "a string".to_owned()
    }
    fn from_raw(raw: Raw) -> Result<Self, String> {
        match raw {
            Raw::Str(s) if s.len() > MAX_TEXT_LEN => Err(format!(
                "the string is {} bytes long; at most {MAX_TEXT_LEN} are accepted",
                s.len()
            )),
            Raw::Str(s) if s.contains('\0') => Err("the string holds a NUL character".to_owned()),
            Raw::Str(s) => Ok(Text(s)),
            other => Err(wrong::<Self>(&other)),
        }
    }
}

macro_rules! choice_value {
    ($(#[$doc:meta])* $name:ident: $t:ty { $($text:literal => $v:expr),+ $(,)? }) => {
        $(#[$doc])*
        pub(super) struct $name(pub $t);

        impl Value for $name {
            fn expected() -> String {
                [$(concat!("\"", $text, "\"")),+].join(" or ")
            }
            fn from_raw(raw: Raw) -> Result<Self, String> {
                match raw {
                    $(Raw::Str(s) if s == $text => Ok($name($v)),)+
                    Raw::Str(s) => Err(format!(
                        "expected {}, found {:?}",
                        Self::expected(),
                        shorten(&s)
                    )),
                    other => Err(wrong::<Self>(&other)),
                }
            }
        }

        deserialize_via_value!($name);
    };
}

choice_value!(
    /// `package.failover_policy`.
    FailoverValue: heartbeat_cluster::placement::FailoverPolicy {
        "configured_node" => heartbeat_cluster::placement::FailoverPolicy::ConfiguredNode,
        "min_package_node" => heartbeat_cluster::placement::FailoverPolicy::MinPackageNode,
    }
);
choice_value!(
    /// `package.failback_policy`.
    FailbackValue: heartbeat_cluster::placement::FailbackPolicy {
        "manual" => heartbeat_cluster::placement::FailbackPolicy::Manual,
        "automatic" => heartbeat_cluster::placement::FailbackPolicy::Automatic,
    }
);
choice_value!(
    /// `cluster.network_failure_detection`.
    DetectionValue: crate::netif::machine::FailureDetection {
        "inout" => crate::netif::machine::FailureDetection::InOut,
        "inonly_or_inout" => crate::netif::machine::FailureDetection::InOnlyOrInOut,
    }
);
choice_value!(
    /// `package.on_all_unhealthy`.
    AllUnhealthyValue: heartbeat_cluster::placement::OnAllUnhealthy {
        "keep_best" => heartbeat_cluster::placement::OnAllUnhealthy::KeepBest,
        "stop" => heartbeat_cluster::placement::OnAllUnhealthy::Stop,
    }
);

deserialize_via_value!(Dur, Flag, PathText, Name, Interface, Ip, Addr, Role, Text);

/// The field names serde's derive gives a struct, in declaration order:
/// the keys its table accepts.
pub(super) fn field_names<T: for<'de> Deserialize<'de>>() -> &'static [&'static str] {
    struct Capture(std::cell::Cell<&'static [&'static str]>);
    impl<'de> Deserializer<'de> for &Capture {
        type Error = de::value::Error;
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            Err(de::Error::custom("not a struct"))
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Self::Error> {
            self.0.set(fields);
            Err(de::Error::custom("captured"))
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
            bytes byte_buf option unit unit_struct newtype_struct seq tuple
            tuple_struct map enum identifier ignored_any
        }
    }
    let capture = Capture(std::cell::Cell::new(&[]));
    let _ = T::deserialize(&capture);
    capture.0.get()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_names_are_the_keys() {
        assert_eq!(
            field_names::<Link>(),
            ["id", "interface", "address", "role", "standby"]
        );
        assert_eq!(field_names::<Metrics>(), ["listen"]);
    }
}
