//! Runs a package's actions (`start`, `stop`, `monitor`) as child processes.
//!
//! A package's service is either plain commands (`start = "/etc/heartbeat/web
//! start"`) or an OCF resource agent (`agent = "ocf:heartbeat:IPaddr2"` with
//! `[package.params]`). Either way one action is one child process:
//!
//! - **Its own process group** (`process_group(0)`, i.e. `setpgid(0, 0)` in
//!   the child before `exec`), so that a timeout kills everything the action
//!   started: `SIGTERM` to the group, then `SIGKILL` to the group after
//!   [`RunnerConfig::kill_grace`]. A service daemon that a successful `start`
//!   leaves behind stays in that group and is *not* touched: only a timeout
//!   or a cancelled run kills the group.
//! - **Environment**: cleared, then `PATH` ([`RunnerConfig::path`]) and
//!   `HEARTBEAT_PACKAGE`, `HEARTBEAT_NODE`, `HEARTBEAT_EPOCH`,
//!   `HEARTBEAT_REASON`, `HEARTBEAT_PREVIOUS_NODE` (empty when there is
//!   none). OCF agents get in addition `OCF_ROOT`, `OCF_RA_VERSION_MAJOR/MINOR`
//!   (1.0), `OCF_RESOURCE_INSTANCE` (the package name), `OCF_RESOURCE_TYPE`,
//!   `OCF_RESOURCE_PROVIDER`, `OCF_RESKEY_<param>` for every parameter,
//!   `OCF_RESKEY_CRM_meta_timeout` (the action's timeout in ms) and
//!   `OCF_RESKEY_CRM_meta_interval` (the monitor interval in ms for
//!   `monitor`, 0 for the other actions), as Pacemaker sets them. The agent is
//!   `$OCF_ROOT/resource.d/PROVIDER/TYPE ACTION`.
//! - **Output is untrusted**: stdout and stderr are read line by line and each
//!   line is handed to a callback (the journal, tagged with the package);
//!   a line is cut at [`RunnerConfig::max_line_bytes`] and a run's output at
//!   [`RunnerConfig::max_output_bytes`]; what is cut is counted, never
//!   buffered, and the pipes keep being drained so the child never blocks on
//!   a full pipe. Invalid UTF-8 is replaced. Output that a left-behind daemon
//!   writes to the inherited pipes after the action exited is read for at
//!   most [`RunnerConfig::drain_after_exit`], then the pipes are closed.
//! - **One action per package at a time**: [`Runner::run`] queues behind any
//!   action of the same package still running on this node (a fair FIFO lock
//!   per package); actions of different packages run concurrently.
//!
//! # Exit codes
//!
//! Commands: 0 is success, anything else a failure that restarts the package
//! in place or moves it ([`Recovery::Soft`]); a command that cannot be
//! started at all (missing, not executable) is [`Recovery::Hard`] (ban this
//! node), like OCF's `OCF_ERR_INSTALLED`.
//!
//! OCF agents, as Pacemaker interprets them (ClusterLabs, *Pacemaker
//! Explained*, appendix "OCF Return Codes", table "OCF Return Codes and their
//! Recovery Types",
//! <https://clusterlabs.org/pacemaker/doc/deprecated/en-US/Pacemaker/1.1-plugin/html/Pacemaker_Explained/s-ocf-return-codes.html>;
//! the same table with recovery actions in Red Hat's *Configuring and
//! managing high availability clusters*, "Interpreting resource agent OCF
//! return codes"):
//!
//! | code | OCF name | recovery here |
//! |---|---|---|
//! | 0 | `OCF_SUCCESS` | none |
//! | 1 | `OCF_ERR_GENERIC` | soft: restart in place or move |
//! | 2 | `OCF_ERR_ARGS` | hard: move, and ban this node |
//! | 3 | `OCF_ERR_UNIMPLEMENTED` | hard |
//! | 4 | `OCF_ERR_PERM` | hard |
//! | 5 | `OCF_ERR_INSTALLED` | hard |
//! | 6 | `OCF_ERR_CONFIGURED` | fatal: stop, no node may run it |
//! | 7 | `OCF_NOT_RUNNING` | the resource is cleanly stopped (see below) |
//! | 8, 9, other | promotable states / custom | soft |
//!
//! Whether a code is a failure depends on the action, as in Pacemaker (an
//! action fails when its code is not the expected one): `start` expects 0;
//! `stop` expects 0 and also accepts 7 (already stopped: stop is
//! idempotent); `monitor` of a package that should run expects 0, and 7
//! there is a soft failure. See [`Outcome::failure`].
//!
//! A timeout is a failure of its own kind ([`Outcome::TimedOut`]): for
//! `start` and `monitor` the caller treats it as soft, for `stop` it must
//! escalate (fence or leave the cluster), because the service may still run.
//!
//! # Limits
//! - A process that leaves the group (`setsid`, `setpgid`) escapes the
//!   timeout kill; so does one in another cgroup. A cgroup per package would
//!   close that gap; it is not done here.
//! - After the group leader has been reaped, the group id could in theory be
//!   reused by an unrelated new group leader before the `SIGKILL` after the
//!   grace; Linux hands out pids cyclically from a large space
//!   (`pid_max`), so this needs a full wrap within the grace.

use std::{
    collections::HashMap,
    ffi::OsString,
    fmt,
    os::unix::process::ExitStatusExt as _,
    path::{Path, PathBuf},
    process::{ExitStatus, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use heartbeat_cluster::Epoch;
use nix::{
    errno::Errno,
    sys::signal::{Signal, killpg},
    unistd::Pid,
};
use tokio::{
    io::{AsyncRead, AsyncReadExt as _},
    process::{Child, Command},
    sync::mpsc,
};

/// Longest package name.
pub const MAX_NAME_LEN: usize = 64;

/// A package's name (`[[package]] name`): 1..=64 ASCII letters, digits, `-`,
/// `_` or `.`, not starting with `.` or `-` (it becomes part of file names
/// and of OCF_RESOURCE_INSTANCE).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PackageName(String);

impl PackageName {
    /// Checks and wraps a name.
    pub fn new(name: &str) -> Result<Self, SpecError> {
        let ok = !name.is_empty()
            && name.len() <= MAX_NAME_LEN
            && !name.starts_with(['.', '-'])
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if ok {
            Ok(Self(name.to_owned()))
        } else {
            Err(SpecError::BadName(name.to_owned()))
        }
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PackageName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

pub use heartbeat_cluster::packages::Action;

/// What is wrong with a package's service definition.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    /// A package name with characters or a length not allowed.
    #[error(
        "invalid package name `{0}`: use 1 to 64 ASCII letters, digits, `-`, `_` or `.`, not starting with `.` or `-`"
    )]
    BadName(String),
    /// A command with no program.
    #[error("empty command")]
    EmptyCommand,
    /// A command whose program is not an absolute path.
    #[error("command `{0}`: the program must be an absolute path (nothing is looked up in PATH)")]
    RelativeProgram(String),
    /// `agent` not of the form `ocf:PROVIDER:TYPE`.
    #[error("agent `{0}`: expected `ocf:PROVIDER:TYPE`, e.g. `ocf:heartbeat:IPaddr2`")]
    BadAgent(String),
    /// A parameter name that cannot be an environment variable name.
    #[error("parameter `{0}`: names may hold ASCII letters, digits and `_` only")]
    BadParam(String),
    /// A parameter value holding a NUL byte (cannot be passed in the environment).
    #[error("parameter `{0}`: the value holds a NUL byte")]
    NulInParam(String),
}

/// A command line: an absolute program path and its arguments, split on
/// ASCII whitespace. No shell is involved (no quoting, globbing or
/// variables): anything more belongs in a script.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandLine {
    program: PathBuf,
    args: Vec<String>,
}

impl CommandLine {
    /// Parses `"/etc/heartbeat/web start"`.
    pub fn parse(line: &str) -> Result<Self, SpecError> {
        let mut words = line.split_ascii_whitespace();
        let program = words.next().ok_or(SpecError::EmptyCommand)?;
        if !program.starts_with('/') {
            return Err(SpecError::RelativeProgram(line.to_owned()));
        }
        Ok(Self {
            program: PathBuf::from(program),
            args: words.map(str::to_owned).collect(),
        })
    }

    /// The program.
    pub fn program(&self) -> &Path {
        &self.program
    }

    /// The arguments.
    pub fn args(&self) -> &[String] {
        &self.args
    }
}

/// `ocf:PROVIDER:TYPE`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OcfAgent {
    provider: String,
    kind: String,
}

impl OcfAgent {
    /// Parses `ocf:PROVIDER:TYPE`; provider and type are 1..=64 ASCII
    /// letters, digits, `-`, `_` or `.`, not starting with `.` (they become
    /// a path under `$OCF_ROOT/resource.d`).
    pub fn parse(spec: &str) -> Result<Self, SpecError> {
        let bad = || SpecError::BadAgent(spec.to_owned());
        let mut parts = spec.split(':');
        let (Some("ocf"), Some(provider), Some(kind), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        let ok = |s: &str| {
            !s.is_empty()
                && s.len() <= 64
                && !s.starts_with('.')
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        };
        if !ok(provider) || !ok(kind) {
            return Err(bad());
        }
        Ok(Self {
            provider: provider.to_owned(),
            kind: kind.to_owned(),
        })
    }

    /// The provider (`heartbeat` in `ocf:heartbeat:IPaddr2`).
    pub fn provider(&self) -> &str {
        &self.provider
    }

    /// The type (`IPaddr2`).
    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// `OCF_ROOT/resource.d/PROVIDER/TYPE`.
    pub fn path(&self, ocf_root: &Path) -> PathBuf {
        ocf_root
            .join("resource.d")
            .join(&self.provider)
            .join(&self.kind)
    }
}

impl fmt::Display for OcfAgent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ocf:{}:{}", self.provider, self.kind)
    }
}

/// OCF parameters (`[package.params]`), passed as `OCF_RESKEY_<name>`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OcfParams(Vec<(String, String)>);

impl OcfParams {
    /// Checks every name (letters, digits, `_`) and value (no NUL).
    pub fn new<I, K, V>(params: I) -> Result<Self, SpecError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        let mut out = Vec::new();
        for (k, v) in params {
            let (k, v) = (k.into(), v.into());
            if k.is_empty() || !k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return Err(SpecError::BadParam(k));
            }
            if v.contains('\0') {
                return Err(SpecError::NulInParam(k));
            }
            out.push((k, v));
        }
        Ok(Self(out))
    }

    /// The parameters in the order given.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

/// How a package's service is run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Service {
    /// Plain commands; exit 0 is success.
    Commands {
        /// Run by `start`.
        start: CommandLine,
        /// Run by `stop`.
        stop: CommandLine,
        /// Run by `monitor`; without one, monitoring always succeeds.
        monitor: Option<CommandLine>,
    },
    /// An OCF resource agent.
    Ocf {
        /// Which agent.
        agent: OcfAgent,
        /// Its parameters.
        params: OcfParams,
    },
}

impl Service {
    /// The address an OCF address agent (`ocf:heartbeat:IPaddr2`,
    /// `IPaddr`: parameter `ip`; `IPv6addr`: `ipv6addr`) adds and removes
    /// itself, so that the kernel fence covers it like `addresses`.
    pub fn managed_address(&self) -> Option<std::net::IpAddr> {
        let Service::Ocf { agent, params } = self else {
            return None;
        };
        let key = match (agent.provider(), agent.kind()) {
            ("heartbeat", "IPaddr2" | "IPaddr") => "ip",
            ("heartbeat", "IPv6addr") => "ipv6addr",
            _ => return None,
        };
        params
            .iter()
            .find(|(k, _)| *k == key)
            .and_then(|(_, v)| v.trim().parse().ok())
    }
}

/// Timeouts and the monitor interval of one package.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// `start_timeout`.
    pub start: Duration,
    /// `stop_timeout`.
    pub stop: Duration,
    /// `monitor_timeout`.
    pub monitor: Duration,
    /// `monitor_interval` (OCF_RESKEY_CRM_meta_interval for `monitor`).
    pub monitor_interval: Duration,
}

impl Timeouts {
    /// The timeout of `action`.
    pub fn of(&self, action: Action) -> Duration {
        match action {
            Action::Start => self.start,
            Action::Stop => self.stop,
            Action::Monitor => self.monitor,
        }
    }
}

/// Everything the runner needs to know about one package.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PackageSpec {
    /// The package.
    pub name: PackageName,
    /// Its service.
    pub service: Service,
    /// Its timeouts.
    pub timeouts: Timeouts,
}

/// Why an action runs and on whose behalf: the HEARTBEAT_* environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ActionContext {
    /// This node's name (HEARTBEAT_NODE).
    pub node: String,
    /// The epoch of the placement that asked for it (HEARTBEAT_EPOCH).
    pub epoch: Epoch,
    /// Why (HEARTBEAT_REASON), e.g. `failover from alpha: node left`.
    pub reason: String,
    /// The package's previous owner, if any (HEARTBEAT_PREVIOUS_NODE).
    pub previous_node: Option<String>,
}

/// The runner's limits and paths.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunnerConfig {
    /// `OCF_ROOT` (default `/usr/lib/ocf`).
    pub ocf_root: PathBuf,
    /// `PATH` of the children.
    pub path: String,
    /// Between SIGTERM and SIGKILL to the group on a timeout.
    pub kill_grace: Duration,
    /// Longest output line handed on; the rest of the line is counted.
    pub max_line_bytes: usize,
    /// Most output bytes handed on per run; the rest is counted.
    pub max_output_bytes: usize,
    /// How long output is still read after the action exited (a daemon it
    /// left behind may hold the pipes open).
    pub drain_after_exit: Duration,
}

impl Default for RunnerConfig {
    fn default() -> Self {
        Self {
            ocf_root: PathBuf::from("/usr/lib/ocf"),
            path: "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_owned(),
            kill_grace: Duration::from_secs(2),
            max_line_bytes: 1024,
            max_output_bytes: 64 * 1024,
            drain_after_exit: Duration::from_millis(200),
        }
    }
}

/// Which of the child's streams a line came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// One line of an action's output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutputLine {
    /// Where it came from.
    pub stream: Stream,
    /// The line without its end, invalid UTF-8 replaced, cut at
    /// [`RunnerConfig::max_line_bytes`].
    pub text: String,
    /// Whether the line was cut.
    pub truncated: bool,
}

/// What a run did with its output.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OutputStats {
    /// Lines handed to the callback.
    pub lines: u64,
    /// Bytes handed to the callback.
    pub bytes: u64,
    /// Lines cut at the line limit.
    pub truncated_lines: u64,
    /// Bytes not handed on (cut lines' tails and everything past the run limit).
    pub dropped_bytes: u64,
}

/// How bad a failure is, in Pacemaker's terms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recovery {
    /// Transient: restart in place or move.
    Soft,
    /// Specific to this node: move and ban this node.
    Hard,
    /// Common to all nodes (configuration): stop; no node may run it.
    Fatal,
}

/// How the last stage of a timeout kill went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kill {
    /// The group leader exited within the grace after SIGTERM (the group
    /// still got SIGKILL, for anything that ignored SIGTERM).
    Terminated,
    /// The group leader needed SIGKILL.
    Killed,
}

/// The result of one action.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Exit 0.
    Success,
    /// OCF agent exit 7 (`OCF_NOT_RUNNING`): cleanly stopped.
    NotRunning,
    /// Any other exit code.
    Failed {
        /// The exit code.
        code: i32,
        /// How bad, from the code.
        recovery: Recovery,
    },
    /// Killed by a signal the runner did not send.
    Signalled(i32),
    /// Did not finish within its timeout; its group was killed.
    TimedOut(Kill),
    /// Could not be started at all (missing, not executable).
    SpawnFailed(String),
}

impl Outcome {
    /// From an exit status of an OCF agent (`ocf`) or a plain command.
    fn from_status(status: ExitStatus, ocf: bool) -> Self {
        match (status.code(), ocf) {
            (Some(0), _) => Self::Success,
            (Some(7), true) => Self::NotRunning,
            (Some(code), true) => Self::Failed {
                code,
                recovery: ocf_recovery(code),
            },
            (Some(code), false) => Self::Failed {
                code,
                recovery: Recovery::Soft,
            },
            (None, _) => Self::Signalled(status.signal().unwrap_or(0)),
        }
    }

    /// Whether `action` failed with this outcome, and how bad it is; `None`
    /// when the outcome is what the action expects (`stop` accepts
    /// `NotRunning`; `start` and `monitor` want `Success`). A timeout is
    /// `Soft` here; the caller escalates a timed-out `stop`.
    pub fn failure(&self, action: Action) -> Option<Recovery> {
        match (self, action) {
            (Self::Success, _) | (Self::NotRunning, Action::Stop) => None,
            (Self::NotRunning, _) => Some(Recovery::Soft),
            (Self::Failed { recovery, .. }, _) => Some(*recovery),
            (Self::Signalled(_), _) | (Self::TimedOut(_), _) => Some(Recovery::Soft),
            (Self::SpawnFailed(_), _) => Some(Recovery::Hard),
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Success => f.write_str("success"),
            Self::NotRunning => f.write_str("not running (7)"),
            Self::Failed { code, recovery } => write!(f, "exit {code} ({recovery:?} failure)"),
            Self::Signalled(sig) => write!(f, "killed by signal {sig}"),
            Self::TimedOut(Kill::Terminated) => f.write_str("timed out (terminated)"),
            Self::TimedOut(Kill::Killed) => f.write_str("timed out (killed)"),
            Self::SpawnFailed(e) => write!(f, "could not start: {e}"),
        }
    }
}

/// Pacemaker's recovery type of an OCF exit code other than 0 and 7.
pub fn ocf_recovery(code: i32) -> Recovery {
    match code {
        2..=5 => Recovery::Hard,
        6 => Recovery::Fatal,
        _ => Recovery::Soft,
    }
}

/// What [`Runner::run`] reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunReport {
    /// The action run.
    pub action: Action,
    /// How it ended.
    pub outcome: Outcome,
    /// From spawn to exit (or to the end of the kill).
    pub duration: Duration,
    /// Time spent waiting for an earlier action of the same package.
    pub queued: Duration,
    /// Output accounting.
    pub output: OutputStats,
}

/// Runs package actions; holds the per-package queues. Share it (`Arc`)
/// between every task that runs actions.
#[derive(Debug, Default)]
pub struct Runner {
    config: RunnerConfig,
    locks: Mutex<HashMap<PackageName, Arc<tokio::sync::Mutex<()>>>>,
}

impl Runner {
    /// A runner with these limits.
    pub fn new(config: RunnerConfig) -> Self {
        Self {
            config,
            locks: Mutex::new(HashMap::new()),
        }
    }

    /// Its configuration.
    pub fn config(&self) -> &RunnerConfig {
        &self.config
    }

    fn lock_of(&self, name: &PackageName) -> Arc<tokio::sync::Mutex<()>> {
        // A poisoned map only means another thread panicked while inserting;
        // the map itself is still consistent.
        let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
        locks.entry(name.clone()).or_default().clone()
    }

    /// Runs `action` of `spec` once, after any action of the same package
    /// still running here, handing each output line to `on_line`. Dropping
    /// the returned future kills the action's process group.
    pub async fn run(
        &self,
        spec: &PackageSpec,
        action: Action,
        ctx: &ActionContext,
        on_line: &mut (dyn FnMut(OutputLine) + Send),
    ) -> RunReport {
        let queued_at = Instant::now();
        let lock = self.lock_of(&spec.name);
        let _guard = lock.lock().await;
        let queued = queued_at.elapsed();
        let start = Instant::now();
        let mut output = OutputStats::default();
        let outcome = match self.command(spec, action, ctx) {
            None => Outcome::Success, // no monitor command: nothing to check
            Some((cmd, ocf)) => {
                self.execute(cmd, ocf, spec.timeouts.of(action), &mut output, on_line)
                    .await
            }
        };
        RunReport {
            action,
            outcome,
            duration: start.elapsed(),
            queued,
            output,
        }
    }

    /// The command for `action` and whether it is an OCF agent; `None` for a
    /// monitor of commands without a `monitor`.
    fn command(
        &self,
        spec: &PackageSpec,
        action: Action,
        ctx: &ActionContext,
    ) -> Option<(Command, bool)> {
        let (mut cmd, ocf) = match &spec.service {
            Service::Commands {
                start,
                stop,
                monitor,
            } => {
                let line = match action {
                    Action::Start => start,
                    Action::Stop => stop,
                    Action::Monitor => monitor.as_ref()?,
                };
                let mut cmd = Command::new(line.program());
                cmd.env_clear().args(line.args());
                (cmd, false)
            }
            Service::Ocf { agent, params } => {
                let mut cmd = Command::new(agent.path(&self.config.ocf_root));
                cmd.env_clear().arg(action.as_str());
                cmd.env("OCF_ROOT", &self.config.ocf_root)
                    .env("OCF_RA_VERSION_MAJOR", "1")
                    .env("OCF_RA_VERSION_MINOR", "0")
                    .env("OCF_RESOURCE_INSTANCE", spec.name.as_str())
                    .env("OCF_RESOURCE_TYPE", agent.kind())
                    .env("OCF_RESOURCE_PROVIDER", agent.provider())
                    .env(
                        "OCF_RESKEY_CRM_meta_timeout",
                        spec.timeouts.of(action).as_millis().to_string(),
                    )
                    .env(
                        "OCF_RESKEY_CRM_meta_interval",
                        match action {
                            Action::Monitor => spec.timeouts.monitor_interval.as_millis(),
                            Action::Start | Action::Stop => 0,
                        }
                        .to_string(),
                    );
                for (k, v) in params.iter() {
                    let mut key = OsString::from("OCF_RESKEY_");
                    key.push(k);
                    cmd.env(key, v);
                }
                (cmd, true)
            }
        };
        cmd.env("PATH", &self.config.path)
            .env("HEARTBEAT_PACKAGE", spec.name.as_str())
            .env("HEARTBEAT_NODE", &ctx.node)
            .env("HEARTBEAT_EPOCH", ctx.epoch.0.to_string())
            .env("HEARTBEAT_REASON", &ctx.reason)
            .env(
                "HEARTBEAT_PREVIOUS_NODE",
                ctx.previous_node.as_deref().unwrap_or(""),
            );
        Some((cmd, ocf))
    }

    async fn execute(
        &self,
        mut cmd: Command,
        ocf: bool,
        timeout: Duration,
        output: &mut OutputStats,
        on_line: &mut (dyn FnMut(OutputLine) + Send),
    ) -> Outcome {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(false);
        let mut child = match spawn_off_runtime(cmd).await {
            Ok(child) => child,
            Err(e) => return Outcome::SpawnFailed(e.to_string()),
        };
        // Kills the group if this future is dropped before the end.
        let mut group = GroupGuard::new(&child);

        let (tx, mut rx) = mpsc::channel::<Chunk>(64);
        let readers =
            [
                child.stdout.take().map(|s| {
                    tokio::spawn(read_lines(s, Stream::Stdout, self.limits(), tx.clone()))
                }),
                child.stderr.take().map(|s| {
                    tokio::spawn(read_lines(s, Stream::Stderr, self.limits(), tx.clone()))
                }),
            ];
        drop(tx);
        let mut budget = self.config.max_output_bytes;
        let mut deliver = |Chunk { line, cut }: Chunk, output: &mut OutputStats| {
            output.dropped_bytes += cut;
            if line.text.len() > budget {
                output.dropped_bytes += line.text.len() as u64;
                budget = 0;
                return;
            }
            budget -= line.text.len();
            output.lines += 1;
            output.bytes += line.text.len() as u64;
            if line.truncated {
                output.truncated_lines += 1;
            }
            on_line(line);
        };

        let deadline = tokio::time::Instant::now() + timeout;
        let mut rx_open = true;
        let outcome = loop {
            tokio::select! {
                status = child.wait() => {
                    break match status {
                        Ok(status) => Outcome::from_status(status, ocf),
                        Err(e) => Outcome::SpawnFailed(format!("waiting for the child: {e}")),
                    };
                }
                chunk = rx.recv(), if rx_open => match chunk {
                    Some(chunk) => deliver(chunk, output),
                    None => rx_open = false,
                },
                () = tokio::time::sleep_until(deadline) => {
                    break Outcome::TimedOut(self.kill_group(&mut child, &mut group).await);
                }
            }
        };
        group.disarm();
        // Drain what is left, for a bounded time (a daemon left behind may
        // hold the pipes open forever).
        let drain_deadline = tokio::time::Instant::now() + self.config.drain_after_exit;
        while rx_open {
            tokio::select! {
                chunk = rx.recv() => match chunk {
                    Some(chunk) => deliver(chunk, output),
                    None => rx_open = false,
                },
                () = tokio::time::sleep_until(drain_deadline) => break,
            }
        }
        for reader in readers.into_iter().flatten() {
            reader.abort();
        }
        outcome
    }

    fn limits(&self) -> usize {
        self.config.max_line_bytes.max(1)
    }

    /// SIGTERM to the group, wait up to the grace for the leader, SIGKILL to
    /// the group (always: a grandchild may ignore SIGTERM), reap the leader.
    async fn kill_group(&self, child: &mut Child, group: &mut GroupGuard) -> Kill {
        group.signal(Signal::SIGTERM);
        let kill = match tokio::time::timeout(self.config.kill_grace, child.wait()).await {
            Ok(_) => Kill::Terminated,
            Err(_) => Kill::Killed,
        };
        group.signal(Signal::SIGKILL);
        // SIGKILL cannot be ignored; the wait ends promptly.
        let _ = child.wait().await;
        kill
    }
}

/// Kills a child's process group with SIGKILL on drop unless disarmed.
struct GroupGuard {
    pgid: Option<Pid>,
}

impl GroupGuard {
    fn new(child: &Child) -> Self {
        Self {
            // A child spawned with process_group(0) leads its own group.
            pgid: child
                .id()
                .and_then(|id| i32::try_from(id).ok())
                .map(Pid::from_raw),
        }
    }

    fn signal(&self, sig: Signal) {
        if let Some(pgid) = self.pgid {
            // ESRCH: the group is already gone; nothing else can fail for
            // our own child's group as root.
            match killpg(pgid, sig) {
                Ok(()) | Err(Errno::ESRCH) => {}
                Err(e) => tracing::warn!(%pgid, %sig, "killpg failed: {e}"),
            }
        }
    }

    fn disarm(&mut self) {
        self.pgid = None;
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.signal(Signal::SIGKILL);
    }
}

/// What a reader task sends: a line and the number of bytes cut from it.
struct Chunk {
    line: OutputLine,
    cut: u64,
}

/// Reads `src` and sends its lines, each cut at `max_line` bytes; stops at
/// EOF, on a read error or when the receiver is gone.
async fn read_lines(
    mut src: impl AsyncRead + Unpin,
    stream: Stream,
    max_line: usize,
    tx: mpsc::Sender<Chunk>,
) {
    let mut buf = [0u8; 4096];
    let mut line: Vec<u8> = Vec::with_capacity(max_line.min(4096));
    let mut cut: u64 = 0;
    let send = |line: &mut Vec<u8>, cut: &mut u64| {
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        let chunk = Chunk {
            line: OutputLine {
                stream,
                text: String::from_utf8_lossy(line).into_owned(),
                truncated: *cut > 0,
            },
            cut: *cut,
        };
        line.clear();
        *cut = 0;
        chunk
    };
    loop {
        let n = match src.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        for &b in &buf[..n] {
            if b == b'\n' {
                let chunk = send(&mut line, &mut cut);
                if tx.send(chunk).await.is_err() {
                    return;
                }
            } else if line.len() < max_line {
                line.push(b);
            } else {
                cut += 1;
            }
        }
    }
    if !line.is_empty() || cut > 0 {
        let chunk = send(&mut line, &mut cut);
        let _ = tx.send(chunk).await;
    }
}

/// Starts `cmd` from a thread of the blocking pool (SCHED_OTHER: threads
/// started by the real-time runtime thread are reset at creation), never
/// from the runtime's own thread. A spawn waits until the child has
/// exec'd (vfork, or fork and a close-on-exec pipe), and the child runs
/// SCHED_OTHER until then; on a busy machine the real-time runtime would
/// wait for it and renew no package lease meanwhile. Measured in the
/// failover bench before this: the new owner's runtime stalled 8–35 ms
/// while its start script was spawned, and its 5 ms lease lapsed at nearly
/// every failover.
pub async fn spawn_off_runtime(mut cmd: Command) -> std::io::Result<Child> {
    match tokio::task::spawn_blocking(move || cmd.spawn()).await {
        Ok(r) => r,
        Err(e) => Err(std::io::Error::other(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_agents_name_the_address_the_fence_covers() {
        let ocf = |agent: &str, params: &[(&str, &str)]| Service::Ocf {
            agent: OcfAgent::parse(agent).unwrap(),
            params: OcfParams::new(params.iter().copied()).unwrap(),
        };
        let ip = |s: &str| Some(s.parse::<std::net::IpAddr>().unwrap());
        let v4 = [("ip", "10.0.0.100"), ("cidr_netmask", "24")];
        assert_eq!(
            ocf("ocf:heartbeat:IPaddr2", &v4).managed_address(),
            ip("10.0.0.100")
        );
        assert_eq!(
            ocf("ocf:heartbeat:IPaddr", &v4).managed_address(),
            ip("10.0.0.100")
        );
        assert_eq!(
            ocf("ocf:heartbeat:IPv6addr", &[("ipv6addr", "fd00::64")]).managed_address(),
            ip("fd00::64")
        );
        // No `ip`, an unparsable one, another agent, or commands: none.
        assert_eq!(
            ocf("ocf:heartbeat:IPaddr2", &[("cidr_netmask", "24")]).managed_address(),
            None
        );
        assert_eq!(
            ocf("ocf:heartbeat:IPaddr2", &[("ip", "web")]).managed_address(),
            None
        );
        assert_eq!(ocf("ocf:heartbeat:Dummy", &v4).managed_address(), None);
        assert_eq!(ocf("ocf:other:IPaddr2", &v4).managed_address(), None);
    }

    #[test]
    fn names_agents_commands_and_params_are_checked() {
        assert!(PackageName::new("web-1.a_b").is_ok());
        for bad in ["", ".x", "-x", "a/b", "a b", &"x".repeat(65)] {
            assert_eq!(
                PackageName::new(bad),
                Err(SpecError::BadName(bad.to_owned()))
            );
        }
        let a = OcfAgent::parse("ocf:heartbeat:IPaddr2").unwrap();
        assert_eq!(
            a.path(Path::new("/usr/lib/ocf")),
            Path::new("/usr/lib/ocf/resource.d/heartbeat/IPaddr2")
        );
        assert_eq!(a.to_string(), "ocf:heartbeat:IPaddr2");
        for bad in [
            "ocf:heartbeat",
            "lsb:heartbeat:x",
            "ocf:..:x",
            "ocf:a/b:c",
            "ocf:a:b:c",
            "ocf::x",
        ] {
            assert!(OcfAgent::parse(bad).is_err(), "{bad}");
        }
        let c = CommandLine::parse("  /etc/hb/web   start now ").unwrap();
        assert_eq!(c.program(), Path::new("/etc/hb/web"));
        assert_eq!(c.args(), ["start", "now"]);
        assert_eq!(CommandLine::parse("  "), Err(SpecError::EmptyCommand));
        assert!(matches!(
            CommandLine::parse("web start"),
            Err(SpecError::RelativeProgram(_))
        ));
        assert!(OcfParams::new([("ip", "10.0.0.1"), ("cidr_netmask", "24")]).is_ok());
        assert_eq!(
            OcfParams::new([("a-b", "x")]),
            Err(SpecError::BadParam("a-b".into()))
        );
        assert_eq!(
            OcfParams::new([("ab", "x\0")]),
            Err(SpecError::NulInParam("ab".into()))
        );
    }

    #[test]
    fn ocf_codes_map_to_pacemaker_recovery_types() {
        let st = |code: i32| ExitStatus::from_raw(code << 8);
        assert_eq!(Outcome::from_status(st(0), true), Outcome::Success);
        assert_eq!(Outcome::from_status(st(7), true), Outcome::NotRunning);
        for (code, recovery) in [
            (1, Recovery::Soft),
            (2, Recovery::Hard),
            (3, Recovery::Hard),
            (4, Recovery::Hard),
            (5, Recovery::Hard),
            (6, Recovery::Fatal),
            (8, Recovery::Soft),
            (9, Recovery::Soft),
            (42, Recovery::Soft),
        ] {
            assert_eq!(
                Outcome::from_status(st(code), true),
                Outcome::Failed { code, recovery },
                "{code}"
            );
        }
        // Commands are not OCF agents: 7 and 6 are plain failures.
        assert_eq!(
            Outcome::from_status(st(6), false),
            Outcome::Failed {
                code: 6,
                recovery: Recovery::Soft
            }
        );
        assert_eq!(
            Outcome::from_status(ExitStatus::from_raw(9), true),
            Outcome::Signalled(9)
        );
        // Expected results per action.
        assert_eq!(Outcome::NotRunning.failure(Action::Stop), None);
        assert_eq!(
            Outcome::NotRunning.failure(Action::Monitor),
            Some(Recovery::Soft)
        );
        assert_eq!(
            Outcome::NotRunning.failure(Action::Start),
            Some(Recovery::Soft)
        );
        assert_eq!(Outcome::Success.failure(Action::Monitor), None);
        assert_eq!(
            Outcome::SpawnFailed("x".into()).failure(Action::Start),
            Some(Recovery::Hard)
        );
        assert_eq!(
            Outcome::TimedOut(Kill::Killed).failure(Action::Start),
            Some(Recovery::Soft)
        );
    }
}
