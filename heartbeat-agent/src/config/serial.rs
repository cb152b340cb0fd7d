//! `[serial]` and `[node.serial]`: the serial heartbeat line between the
//! two nodes of a two-node cluster (issue #11). `[serial]` holds the
//! settings of both ends; each node's `[node.serial]` names its device and
//! may override them. A line has two ends: both nodes need one, and both
//! ends run at one speed.

use std::ops::Range;
use std::path::PathBuf;
use std::time::Duration;

use toml::Spanned;

use super::raw::{self, Field};
use super::{BuiltNode, ClusterConfig, ConfigError, MustExceed, NodeConfig, Src, fmt_duration};

/// Default `serial.baud`.
pub const DEFAULT_SERIAL_BAUD: u32 = 115_200;
/// Default `serial.interval`.
pub const DEFAULT_SERIAL_INTERVAL: Duration = Duration::from_millis(10);
/// Default `serial.timeout`.
pub const DEFAULT_SERIAL_TIMEOUT: Duration = Duration::from_millis(100);
/// Shortest `serial.interval` (a frame takes about 5 ms at 115200 baud).
pub const MIN_SERIAL_INTERVAL: Duration = Duration::from_millis(1);

/// `[serial]`, defaults applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SerialSection {
    pub baud: u32,
    /// A frame is sent every `interval`.
    pub interval: Duration,
    /// The line is down after `timeout` without a valid frame.
    pub timeout: Duration,
    /// A missing or busy device at start is an error (else a warning).
    pub required: bool,
    /// Forward error correction of every frame (both ends).
    pub fec: bool,
}

impl Default for SerialSection {
    fn default() -> Self {
        Self {
            baud: DEFAULT_SERIAL_BAUD,
            interval: DEFAULT_SERIAL_INTERVAL,
            timeout: DEFAULT_SERIAL_TIMEOUT,
            required: true,
            fec: false,
        }
    }
}

/// One node's `[node.serial]`: its device and what it overrides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSerial {
    /// Resolved against the config file's directory.
    pub device: PathBuf,
    pub baud: Option<u32>,
    pub interval: Option<Duration>,
    pub timeout: Option<Duration>,
    pub required: Option<bool>,
}

/// One node's serial line as its agent runs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SerialSettings {
    pub device: PathBuf,
    pub baud: u32,
    pub interval: Duration,
    pub timeout: Duration,
    pub required: bool,
    /// Forward error correction (`serial.fec`).
    pub fec: bool,
    /// The key naming the device (`node[0].serial.device`), for messages.
    pub device_key: String,
}

/// Where a `[node.serial]`'s keys were written.
pub(super) struct BuiltSerial {
    pub span: Range<usize>,
    pub baud_at: Option<Range<usize>>,
    pub interval_at: Option<Range<usize>>,
    pub timeout_at: Option<Range<usize>>,
}

impl ClusterConfig {
    /// The serial line of `local`, when one is configured.
    pub fn serial_of(&self, local: &NodeConfig) -> Option<SerialSettings> {
        let s = self.serial.as_ref()?;
        let n = local.serial.as_ref()?;
        let index = self.nodes.iter().position(|x| x.id == local.id)?;
        Some(SerialSettings {
            device: n.device.clone(),
            baud: n.baud.unwrap_or(s.baud),
            interval: n.interval.unwrap_or(s.interval),
            timeout: n.timeout.unwrap_or(s.timeout),
            required: n.required.unwrap_or(s.required),
            fec: s.fec,
            device_key: format!("node[{index}].serial.device"),
        })
    }

    /// An error about `local`'s serial device (missing, busy), naming the
    /// key and the line it was written on.
    pub fn serial_device_error(&self, settings: &SerialSettings, message: String) -> ConfigError {
        self.invalid_at(&settings.device_key, message)
    }
}

impl Src<'_> {
    /// One `[node.serial]`.
    pub(super) fn node_serial(
        &self,
        path: &str,
        f: Field<raw::NodeSerial>,
    ) -> Result<Option<(NodeSerial, BuiltSerial)>, ConfigError> {
        let Some(f) = f else { return Ok(None) };
        let span = f.span();
        let n = f.into_inner();
        let device = self.required(
            n.device,
            &span,
            &format!("{path}.serial.device"),
            "[node.serial]",
            "the serial device of this node's end of the line, e.g. \"/dev/ttyS0\"",
        )?;
        let at = |d: &Field<raw::Dur>| d.as_ref().map(Spanned::span);
        let built = BuiltSerial {
            span,
            baud_at: n.baud.as_ref().map(Spanned::span),
            interval_at: at(&n.interval),
            timeout_at: at(&n.timeout),
        };
        Ok(Some((
            NodeSerial {
                device: self.path(&device.get_ref().0),
                baud: n.baud.map(|b| b.into_inner().0),
                interval: n.interval.map(|d| d.into_inner().0),
                timeout: n.timeout.map(|d| d.into_inner().0),
                required: n.required.map(|r| r.into_inner().0),
            },
            built,
        )))
    }

    /// `[serial]` against every node's `[node.serial]`.
    pub(super) fn serial(
        &self,
        f: Field<raw::Serial>,
        nodes: &[BuiltNode],
    ) -> Result<Option<SerialSection>, ConfigError> {
        let with: Vec<&BuiltNode> = nodes.iter().filter(|n| n.serial.is_some()).collect();
        let (top_span, s) = match f {
            None if with.is_empty() => return Ok(None),
            None => (None, None),
            Some(s) => (Some(s.span()), Some(s.into_inner())),
        };
        // Where to point when the line as a whole is wrong.
        let (first_span, first_key) = match (&top_span, with.first()) {
            (Some(sp), _) => (sp.clone(), "serial".to_owned()),
            (None, Some(n)) => (
                n.serial.as_ref().map_or(n.span.clone(), |b| b.span.clone()),
                format!("{}.serial", n.path),
            ),
            (None, None) => return Ok(None),
        };
        if nodes.len() != 2 {
            return Err(self.invalid(
                &first_span,
                &first_key,
                format!(
                    "a serial line joins the two nodes of a two-node cluster; this cluster has {} nodes; remove [serial] and [node.serial]",
                    nodes.len()
                ),
            ));
        }
        for n in nodes {
            if n.serial.is_none() {
                return Err(self.invalid(
                    &first_span,
                    &format!("{}.serial", n.path),
                    format!(
                        "node {} has no [node.serial]; a serial line has two ends: give each node its device (e.g. [node.serial] device = \"/dev/ttyS0\" after its [[node]])",
                        n.node.name
                    ),
                ));
            }
        }
        let dur = |d: Field<raw::Dur>| d.map(|d| (d.get_ref().0, d.span()));
        let (baud_at, interval, timeout, required, fec) = match s {
            None => (None, None, None, None, None),
            Some(s) => (
                s.baud.map(|b| (b.get_ref().0, b.span())),
                dur(s.interval),
                dur(s.timeout),
                s.required.map(|r| r.into_inner().0),
                s.fec.map(|r| r.into_inner().0),
            ),
        };
        let section = SerialSection {
            baud: baud_at.as_ref().map_or(DEFAULT_SERIAL_BAUD, |b| b.0),
            interval: interval.as_ref().map_or(DEFAULT_SERIAL_INTERVAL, |d| d.0),
            timeout: timeout.as_ref().map_or(DEFAULT_SERIAL_TIMEOUT, |d| d.0),
            required: required.unwrap_or(true),
            fec: fec.unwrap_or(false),
        };
        let mut bauds = Vec::new();
        for n in nodes {
            let (Some(ns), Some(b)) = (&n.node.serial, &n.serial) else {
                continue;
            };
            let (iv, iv_at, iv_key) = match (ns.interval, &b.interval_at) {
                (Some(d), Some(at)) => (d, Some(at.clone()), format!("{}.serial.interval", n.path)),
                _ => (
                    section.interval,
                    interval.as_ref().map(|d| d.1.clone()),
                    "serial.interval".to_owned(),
                ),
            };
            let (to, to_at, to_key) = match (ns.timeout, &b.timeout_at) {
                (Some(d), Some(at)) => (d, Some(at.clone()), format!("{}.serial.timeout", n.path)),
                _ => (
                    section.timeout,
                    timeout.as_ref().map(|d| d.1.clone()),
                    "serial.timeout".to_owned(),
                ),
            };
            let (baud, at, key) = match (ns.baud, &b.baud_at) {
                (Some(v), Some(at)) => (v, at.clone(), format!("{}.serial.baud", n.path)),
                _ => (
                    section.baud,
                    baud_at
                        .as_ref()
                        .map_or_else(|| b.span.clone(), |x| x.1.clone()),
                    "serial.baud".to_owned(),
                ),
            };
            if iv < MIN_SERIAL_INTERVAL {
                let at = iv_at.clone().unwrap_or_else(|| first_span.clone());
                return Err(self.invalid(
                    &at,
                    &iv_key,
                    format!(
                        "{} is too short; the smallest serial interval is {} (a frame takes about 5ms at 115200 baud)",
                        fmt_duration(iv),
                        fmt_duration(MIN_SERIAL_INTERVAL)
                    ),
                ));
            }
            // One heartbeat frame must fit in an interval at this speed.
            let frame = Duration::from_micros(
                heartbeat_cluster::serial::heartbeat_line_len(section.fec) as u64 * 10 * 1_000_000
                    / u64::from(baud),
            );
            if iv < frame {
                // At the interval if written, else at the speed.
                let at = iv_at.clone().unwrap_or_else(|| at.clone());
                return Err(self.invalid(
                    &at,
                    &iv_key,
                    format!(
                        "{} is shorter than one heartbeat frame takes at {baud} baud ({}); the line could never keep up: use a longer interval or a higher baud",
                        fmt_duration(iv),
                        fmt_duration(frame)
                    ),
                ));
            }
            self.must_exceed(
                (&b.span, &to_key),
                MustExceed {
                    later_name: "timeout",
                    later_key: &to_key,
                    later: to,
                    later_at: to_at,
                    earlier_name: "interval",
                    earlier_key: &iv_key,
                    earlier: iv,
                    earlier_at: iv_at,
                    advice: "the line is down after `timeout` without a frame; about 10 × interval is recommended",
                },
            )?;
            bauds.push((baud, at, key, n.node.name.clone()));
        }
        if let [(a, _, _, an), (b, at, key, _)] = bauds.as_slice()
            && a != b
        {
            return Err(self.invalid(
                at,
                key,
                format!(
                    "baud {b} differs from node {an}'s {a}; both ends of a serial line must run at one speed"
                ),
            ));
        }
        Ok(Some(section))
    }
}
