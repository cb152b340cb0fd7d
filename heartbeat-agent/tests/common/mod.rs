//! What the configuration tests share: the file name every error names,
//! parsing a test's text as that file, and finding a line in the text.
#![allow(dead_code, reason = "each test binary uses a part of it")]

use std::path::Path;

use heartbeat_agent::config::{ClusterConfig, ConfigError};

/// The path the tests' texts are parsed as (errors start with it).
pub const FILE: &str = "/etc/heartbeat/test.toml";

/// Parses `text` as if read from [`FILE`].
pub fn parse(text: &str) -> Result<ClusterConfig, ConfigError> {
    ClusterConfig::from_str(text, Path::new(FILE))
}

/// The 1-based line of the `nth` (0-based) line of `text` containing `needle`.
#[track_caller]
pub fn line(text: &str, needle: &str, nth: usize) -> usize {
    text.lines()
        .enumerate()
        .filter(|(_, l)| l.contains(needle))
        .nth(nth)
        .map(|(i, _)| i + 1)
        .unwrap_or_else(|| panic!("{needle:?} not in the text"))
}
