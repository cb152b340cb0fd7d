//! `[watchdog]`: the optional watchdog self-fence (issue #9, like sbd). The
//! agent feeds a Linux watchdog device while its node is healthy; see
//! `crate::watchdog` for what healthy means and for the timing argument.
//! Off without `[watchdog]`. `device` may hold `{node}` (the local node's
//! name), so that one file serves several nodes on one machine (tests).

use std::path::PathBuf;
use std::time::Duration;

use super::raw::{self, Field};
use super::{ClusterConfig, ConfigError, NodeConfig, Src, expand_node, fmt_duration};

/// Default `watchdog.timeout`.
pub const DEFAULT_WATCHDOG_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest accepted `watchdog.timeout`: a self-fence that waits longer
/// fences nothing in time.
pub const MAX_WATCHDOG_TIMEOUT: Duration = Duration::from_secs(600);

/// `[watchdog]`, defaults applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchdogSection {
    /// The device (resolved against the config file's directory; `{node}`
    /// not yet expanded: see [`ClusterConfig::watchdog_device`]).
    pub device: PathBuf,
    /// The watchdog's timeout, whole seconds (the Linux API's unit): the
    /// node is reset this long after the agent stopped feeding it.
    pub timeout: Duration,
}

impl ClusterConfig {
    /// `local`'s watchdog device (`{node}` expanded), when one is configured.
    pub fn watchdog_device(&self, local: &NodeConfig) -> Option<PathBuf> {
        let w = self.watchdog.as_ref()?;
        Some(expand_node(&w.device, &local.name))
    }

    /// An error about the watchdog device (missing, not a device, cannot
    /// be opened), naming `watchdog.device` and its line.
    pub fn watchdog_device_error(&self, message: String) -> ConfigError {
        self.invalid_at("watchdog.device", message)
    }
}

impl Src<'_> {
    /// `[watchdog]`.
    pub(super) fn watchdog(
        &self,
        f: Field<raw::Watchdog>,
    ) -> Result<Option<WatchdogSection>, ConfigError> {
        let Some(f) = f else { return Ok(None) };
        let span = f.span();
        let w = f.into_inner();
        let device = self.required(
            w.device,
            &span,
            "watchdog.device",
            "[watchdog]",
            "the watchdog device the agent feeds, e.g. \"/dev/watchdog\"; remove [watchdog] to turn the self-fence off",
        )?;
        let timeout = match w.timeout {
            None => DEFAULT_WATCHDOG_TIMEOUT,
            Some(t) => {
                let at = t.span();
                let d = t.into_inner().0;
                if d.subsec_nanos() != 0 || d.is_zero() {
                    return Err(self.invalid(
                        &at,
                        "watchdog.timeout",
                        format!(
                            "{} is not a whole number of seconds; a Linux watchdog's timeout is set in whole seconds (at least 1s), e.g. \"5s\"",
                            fmt_duration(d)
                        ),
                    ));
                }
                if d > MAX_WATCHDOG_TIMEOUT {
                    return Err(self.invalid(
                        &at,
                        "watchdog.timeout",
                        format!(
                            "{} is too long; the longest watchdog timeout is {} (a self-fence that waits longer fences nothing in time)",
                            fmt_duration(d),
                            fmt_duration(MAX_WATCHDOG_TIMEOUT)
                        ),
                    ));
                }
                d
            }
        };
        Ok(Some(WatchdogSection {
            device: self.path(&device.get_ref().0),
            timeout,
        }))
    }
}
