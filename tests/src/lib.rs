//! Network-namespace test harness shared by the integration tests, `cargo
//! xtask demo` and `cargo xtask bench`.
//!
//! Everything here is a guard that undoes itself on drop, also while a panic
//! unwinds:
//! - [`Netns`]: a named network namespace (`ip netns add`); dropping it kills
//!   every process still inside and deletes it.
//! - [`ChildGuard`]: a child process; dropping it sends SIGTERM, then SIGKILL
//!   after [`ChildGuard::DROP_GRACE`].
//! - [`NftGuard`]: an nftables netdev egress table (silent fault injection).
//!
//! [`VethPair`] links two namespaces; a veth pair disappears with its
//! namespace, so it needs no guard. Names are unique per process and per call
//! (`hb<pid>-<counter>`), so tests run in parallel. [`leftovers`] lists
//! namespaces a crashed run left behind (every harness namespace name starts
//! with [`PREFIX`]).
//!
//! All of it needs root (or CAP_SYS_ADMIN + CAP_NET_ADMIN) and the `ip` and
//! `nft` tools; `cargo xtask setup` installs them.

// Dev-dependencies of the integration tests (tests/), not of this library.
#[cfg(test)]
use {heartbeat_agent as _, heartbeat_cluster as _, tokio as _};

use std::{
    ffi::OsStr,
    fs::File,
    io::{self, Write as _},
    net::IpAddr,
    path::Path,
    process::{Child, Command, ExitStatus, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

pub mod failover;
pub mod topology;

pub use nix::sys::signal::Signal;
use nix::{sys::signal, unistd::Pid};

/// Every namespace the harness creates has a name starting with this.
pub const PREFIX: &str = "hb";

/// Linux limit on interface names (IFNAMSIZ - 1).
pub const IFNAME_MAX: usize = 15;

/// What can go wrong while setting up or tearing down test fixtures.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// A command could not be started at all (tool missing, not executable).
    #[error("could not start `{cmd}`: {source}")]
    Spawn {
        cmd: String,
        #[source]
        source: io::Error,
    },
    /// A command ran and exited with a failure status.
    #[error("`{cmd}` failed ({status}): {stderr}")]
    Failed {
        cmd: String,
        status: ExitStatus,
        stderr: String,
    },
    /// An address that is neither IPv4 nor IPv6 (with an optional prefix).
    #[error("invalid address `{0}`: expected IPv4 or IPv6, optionally with /prefix-length")]
    BadAddress(String),
    /// A namespace prefix or interface name with characters or a length the
    /// kernel (or the nft script) does not accept.
    #[error("invalid name `{0}`")]
    BadName(String),
    /// [`Netns::spawn`] was given a command not built by that namespace's
    /// [`Netns::command`].
    #[error("command `{cmd}` does not run in namespace {netns}; build it with Netns::command")]
    NotInNamespace { cmd: String, netns: String },
    /// The process was already reaped; signalling its pid could hit a reused pid.
    #[error("process {pid} has already exited ({status})")]
    NotRunning { pid: u32, status: ExitStatus },
    /// `kill(2)` failed.
    #[error("sending {signal} to pid {pid}: {source}")]
    Signal {
        pid: u32,
        signal: Signal,
        #[source]
        source: nix::Error,
    },
    /// `waitpid(2)` failed.
    #[error("waiting for pid {pid}: {source}")]
    Wait {
        pid: u32,
        #[source]
        source: io::Error,
    },
    /// An interface did not come up in time.
    #[error("interface {ifname} in {netns} is not ready: {state}")]
    LinkNotReady {
        ifname: String,
        netns: String,
        state: String,
    },
    /// An empty argument list where a command was expected.
    #[error("empty command")]
    EmptyCommand,
    /// Output of a tool that could not be understood.
    #[error("unexpected output from `{cmd}`: {detail}")]
    Parse { cmd: String, detail: String },
    /// Any other I/O error (log files, pipes).
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    /// Entering a namespace from a helper thread failed.
    #[error("entering namespace {netns}: {reason}")]
    Setns { netns: String, reason: String },
    /// Loading or attaching the pass-through XDP program failed.
    #[error("pass-through XDP program on {ifname}: {reason}")]
    Xdp { ifname: String, reason: String },
    /// A namespace could not reach an address of the harness's network.
    #[error("{from} cannot reach {to}")]
    Unreachable { from: String, to: String },
    /// Asking the kernel for the TCX programs of an interface failed.
    #[error("TCX programs of {ifname}: {reason}")]
    Tcx { ifname: String, reason: String },
}

/// Result type of this crate.
pub type Result<T> = std::result::Result<T, HarnessError>;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A number unique within this process (namespaces, veth pairs, nft tables).
fn next_id() -> u32 {
    COUNTER.fetch_add(1, Ordering::Relaxed)
}

/// `program arg arg ...` for error messages.
fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        s.push(' ');
        s.push_str(&arg.to_string_lossy());
    }
    s
}

/// Runs `cmd` to completion (stdin closed) and fails with its stderr unless
/// it exits with status 0.
pub fn run(cmd: &mut Command) -> Result<Output> {
    run_with_stdin(cmd, None)
}

fn run_with_stdin(cmd: &mut Command, input: Option<&str>) -> Result<Output> {
    let desc = describe(cmd);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    let mut child = cmd.spawn().map_err(|source| HarnessError::Spawn {
        cmd: desc.clone(),
        source,
    })?;
    if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
        // A failed write shows up as the command's own error below.
        let _ = stdin.write_all(input.as_bytes());
    }
    let out = child
        .wait_with_output()
        .map_err(|source| HarnessError::Io {
            context: format!("reading output of `{desc}`"),
            source,
        })?;
    if !out.status.success() {
        return Err(HarnessError::Failed {
            cmd: desc,
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(out)
}

/// Runs `ip ARGS` in the root namespace.
fn ip(args: &[&str]) -> Result<Output> {
    run(Command::new("ip").args(args))
}

fn check_ifname(ifname: &str) -> Result<()> {
    let ok = !ifname.is_empty()
        && ifname.len() <= IFNAME_MAX
        && ifname
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(HarnessError::BadName(ifname.to_owned()))
    }
}

/// A named network namespace that is deleted (with every process inside
/// killed) when dropped.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `<prefix><pid>-<counter>` with its loopback up. A prefix not
    /// starting with [`PREFIX`] gets it prepended, so [`leftovers`] always
    /// finds harness namespaces. The prefix may hold ASCII letters, digits,
    /// `-` and `_`, but must not end with a digit (see [`netns_owner`]).
    pub fn new(prefix: &str) -> Result<Self> {
        if !prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            || prefix.ends_with(|c: char| c.is_ascii_digit())
        {
            return Err(HarnessError::BadName(prefix.to_owned()));
        }
        let prefix = if prefix.starts_with(PREFIX) {
            prefix.to_owned()
        } else {
            format!("{PREFIX}{prefix}")
        };
        let name = format!("{prefix}{}-{}", std::process::id(), next_id());
        // The very first `ip netns add` on a machine mounts /run/netns; a
        // parallel first call can lose that race, so retry briefly.
        let mut attempt = 0;
        loop {
            match ip(&["netns", "add", &name]) {
                Ok(_) => break,
                Err(e) if attempt >= 3 => return Err(e),
                Err(_) => {
                    attempt += 1;
                    // A half-created entry would make the retry fail with EEXIST.
                    let _ = ip(&["netns", "del", &name]);
                    thread::sleep(Duration::from_millis(50));
                }
            }
        }
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's name, as `ip netns list` shows it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `ip -n NAME ARGS` (faster than `exec(["ip", ...])`).
    pub fn ip(&self, args: &[&str]) -> Result<Output> {
        run(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }

    /// Runs `ip netns exec NAME ARGS...` to completion; fails with the
    /// command's stderr unless it exits with status 0.
    pub fn exec(&self, args: &[&str]) -> Result<Output> {
        run(Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args))
    }

    /// Like [`Netns::exec`] but returns the output whatever the exit status
    /// (for commands expected to fail, such as a ping that must not get
    /// through).
    pub fn exec_unchecked(&self, args: &[&str]) -> Result<Output> {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name])
            .args(args)
            .stdin(Stdio::null());
        let desc = describe(&cmd);
        cmd.output()
            .map_err(|source| HarnessError::Spawn { cmd: desc, source })
    }

    /// A [`Command`] that runs `program` inside this namespace (`ip netns
    /// exec NAME program`; `ip` execs the program, so the child's pid is the
    /// program's own). Add arguments, environment and stdio, then start it
    /// with [`Netns::spawn`].
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// Starts a command built by [`Netns::command`] under a [`ChildGuard`].
    pub fn spawn(&self, cmd: &mut Command) -> Result<ChildGuard> {
        let mut args = cmd.get_args();
        let wrapped = cmd.get_program() == "ip"
            && args.next() == Some(OsStr::new("netns"))
            && args.next() == Some(OsStr::new("exec"))
            && args.next() == Some(OsStr::new(&self.name));
        if !wrapped {
            return Err(HarnessError::NotInNamespace {
                cmd: describe(cmd),
                netns: self.name.clone(),
            });
        }
        ChildGuard::spawn(cmd)
    }

    /// Starts `args` inside the namespace with stdin closed and stdout /
    /// stderr inherited.
    pub fn spawn_args(&self, args: &[&str]) -> Result<ChildGuard> {
        let (program, rest) = args.split_first().ok_or(HarnessError::EmptyCommand)?;
        let mut cmd = self.command(program);
        cmd.args(rest).stdin(Stdio::null());
        self.spawn(&mut cmd)
    }

    /// Starts `args` inside the namespace with stdout and stderr appended to
    /// `log` (created if missing), stdin closed.
    pub fn spawn_logged(&self, args: &[&str], log: &Path) -> Result<ChildGuard> {
        let (program, rest) = args.split_first().ok_or(HarnessError::EmptyCommand)?;
        let io_err = |source| HarnessError::Io {
            context: format!("opening log {}", log.display()),
            source,
        };
        let out = File::options()
            .create(true)
            .append(true)
            .open(log)
            .map_err(io_err)?;
        let err = out.try_clone().map_err(io_err)?;
        let mut cmd = self.command(program);
        cmd.args(rest).stdin(Stdio::null()).stdout(out).stderr(err);
        self.spawn(&mut cmd)
    }

    /// Pids of the processes in this namespace (`ip netns pids`).
    pub fn pids(&self) -> Result<Vec<i32>> {
        netns_pids(&self.name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Errors cannot be reported from drop; `leftovers` catches what stays.
        let _ = delete_netns(&self.name);
    }
}

/// Pids of the processes in namespace `name`.
pub fn netns_pids(name: &str) -> Result<Vec<i32>> {
    let out = ip(&["netns", "pids", name])?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect())
}

/// Kills (SIGKILL) every process in namespace `name`, then deletes it. Used
/// by [`Netns`]'s drop and by `cargo xtask test` to clean up [`leftovers`].
pub fn delete_netns(name: &str) -> Result<()> {
    if let Ok(pids) = netns_pids(name) {
        for pid in pids {
            // The process may be gone already; nothing to do then.
            let _ = signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
    ip(&["netns", "del", name]).map(|_| ())
}

/// Names of existing namespaces that start with [`PREFIX`]: after a test run
/// this must be empty (a crashed or SIGKILLed test leaves some behind).
pub fn leftovers() -> Vec<String> {
    let Ok(out) = ip(&["netns", "list"]) else {
        return Vec::new();
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| name.starts_with(PREFIX))
        .map(str::to_owned)
        .collect()
}

/// The pid of the process that created harness namespace `name`
/// (`<prefix><pid>-<counter>`), if the name has that form. Lets a cleanup
/// tell a crashed run's namespaces from those of a test still running.
pub fn netns_owner(name: &str) -> Option<u32> {
    let (head, counter) = name.rsplit_once('-')?;
    if counter.is_empty() || !counter.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let digits = head.len() - head.bytes().rev().take_while(u8::is_ascii_digit).count();
    head[digits..].parse().ok()
}

/// A child process that is stopped when dropped: SIGTERM (plus SIGCONT, in
/// case it was stopped), up to [`ChildGuard::DROP_GRACE`] to exit, then
/// SIGKILL.
#[derive(Debug)]
pub struct ChildGuard {
    child: Child,
    /// Set once the child has been reaped; from then on its pid may belong
    /// to someone else and must not be signalled.
    status: Option<ExitStatus>,
}

impl ChildGuard {
    /// How long drop waits after SIGTERM before it sends SIGKILL.
    pub const DROP_GRACE: Duration = Duration::from_secs(2);

    /// Spawns `cmd` (as configured: args, env, stdio) under a guard.
    pub fn spawn(cmd: &mut Command) -> Result<Self> {
        let desc = describe(cmd);
        let child = cmd
            .spawn()
            .map_err(|source| HarnessError::Spawn { cmd: desc, source })?;
        Ok(ChildGuard {
            child,
            status: None,
        })
    }

    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The underlying child, e.g. to take its piped stdout.
    pub fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }

    /// Sends `sig` to the child. Fails with [`HarnessError::NotRunning`]
    /// once the child has exited and been reaped.
    pub fn signal(&mut self, sig: Signal) -> Result<()> {
        let pid = self.pid();
        if let Some(status) = self.try_wait()? {
            return Err(HarnessError::NotRunning { pid, status });
        }
        // Not reaped yet, so the pid is still ours (alive or a zombie).
        let raw = i32::try_from(pid).map_err(|_| HarnessError::Parse {
            cmd: "spawn".into(),
            detail: format!("pid {pid} out of range"),
        })?;
        signal::kill(Pid::from_raw(raw), sig).map_err(|source| HarnessError::Signal {
            pid,
            signal: sig,
            source,
        })
    }

    /// SIGSTOP: freezes the child (it stops sending heartbeats but keeps its
    /// sockets and XDP attachment).
    pub fn stop(&mut self) -> Result<()> {
        self.signal(Signal::SIGSTOP)
    }

    /// SIGCONT: resumes a stopped child.
    pub fn cont(&mut self) -> Result<()> {
        self.signal(Signal::SIGCONT)
    }

    /// SIGTERM: asks the child to exit.
    pub fn terminate(&mut self) -> Result<()> {
        self.signal(Signal::SIGTERM)
    }

    /// SIGKILL, then waits for the child.
    pub fn kill(&mut self) -> Result<ExitStatus> {
        if let Some(status) = self.try_wait()? {
            return Ok(status);
        }
        self.signal(Signal::SIGKILL)?;
        self.wait()
    }

    /// Reaps the child if it has exited.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        if let Some(status) = self.status {
            return Ok(Some(status));
        }
        let pid = self.pid();
        let status = self
            .child
            .try_wait()
            .map_err(|source| HarnessError::Wait { pid, source })?;
        self.status = status;
        Ok(status)
    }

    /// Waits for the child without a time limit.
    pub fn wait(&mut self) -> Result<ExitStatus> {
        if let Some(status) = self.status {
            return Ok(status);
        }
        let pid = self.pid();
        let status = self
            .child
            .wait()
            .map_err(|source| HarnessError::Wait { pid, source })?;
        self.status = Some(status);
        Ok(status)
    }

    /// Waits up to `timeout` for the child to exit; `None` if it is still
    /// running then.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(Some(status));
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            thread::sleep((deadline - now).min(Duration::from_millis(5)));
        }
    }

    /// True while the child has not exited.
    pub fn is_running(&mut self) -> bool {
        matches!(self.try_wait(), Ok(None))
    }

    /// SIGTERM, wait up to `grace`, then SIGKILL; returns the exit status.
    pub fn shutdown(&mut self, grace: Duration) -> Result<ExitStatus> {
        if let Some(status) = self.try_wait()? {
            return Ok(status);
        }
        self.terminate()?;
        // A stopped process only acts on SIGTERM once continued; it may
        // have exited in between, which is fine.
        let _ = self.cont();
        match self.wait_timeout(grace)? {
            Some(status) => Ok(status),
            None => self.kill(),
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if self.shutdown(Self::DROP_GRACE).is_err() {
            // Last resort; errors cannot be reported from drop.
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Addresses for one end of a [`VethPair`]: `"10.200.0.1"`,
/// `"10.200.0.1/24"`, `"fd00:200::1"`, or several of them in an array,
/// slice or Vec. Without a prefix length, IPv4 gets /24 and IPv6 /64.
pub trait Addrs {
    /// The addresses as strings.
    fn addrs(&self) -> Vec<String>;
}

impl Addrs for &str {
    fn addrs(&self) -> Vec<String> {
        vec![(*self).to_owned()]
    }
}
impl Addrs for String {
    fn addrs(&self) -> Vec<String> {
        vec![self.clone()]
    }
}
impl Addrs for &String {
    fn addrs(&self) -> Vec<String> {
        vec![(*self).clone()]
    }
}
impl<T: AsRef<str>> Addrs for &[T] {
    fn addrs(&self) -> Vec<String> {
        self.iter().map(|a| a.as_ref().to_owned()).collect()
    }
}
impl<T: AsRef<str>, const N: usize> Addrs for [T; N] {
    fn addrs(&self) -> Vec<String> {
        self.iter().map(|a| a.as_ref().to_owned()).collect()
    }
}
impl<T: AsRef<str>> Addrs for Vec<T> {
    fn addrs(&self) -> Vec<String> {
        self.iter().map(|a| a.as_ref().to_owned()).collect()
    }
}

/// Splits `addr[/len]`, checks it and fills in the default prefix length.
/// Returns (`addr/len`, is IPv6).
fn parse_cidr(addr: &str) -> Result<(String, bool)> {
    let bad = || HarnessError::BadAddress(addr.to_owned());
    let (ip, len) = match addr.split_once('/') {
        Some((ip, len)) => (ip, Some(len.parse::<u8>().map_err(|_| bad())?)),
        None => (addr, None),
    };
    let ip: IpAddr = ip.parse().map_err(|_| bad())?;
    let (max, default) = if ip.is_ipv6() { (128, 64) } else { (32, 24) };
    let len = len.unwrap_or(default);
    if len > max {
        return Err(bad());
    }
    Ok((format!("{ip}/{len}"), ip.is_ipv6()))
}

/// Adds `addr` (IPv4 or IPv6, default /24 or /64) to `ifname` in `ns`.
/// IPv6 addresses skip duplicate address detection (`nodad`), so they are
/// usable at once.
pub fn add_address(ns: &Netns, ifname: &str, addr: &str) -> Result<()> {
    check_ifname(ifname)?;
    let (cidr, v6) = parse_cidr(addr)?;
    let mut args = vec!["addr", "add", &cidr, "dev", ifname];
    if v6 {
        args.push("nodad");
    }
    ns.ip(&args).map(|_| ())
}

/// Removes `addr` (as given to [`add_address`]) from `ifname` in `ns`.
pub fn del_address(ns: &Netns, ifname: &str, addr: &str) -> Result<()> {
    check_ifname(ifname)?;
    let (cidr, _) = parse_cidr(addr)?;
    ns.ip(&["addr", "del", &cidr, "dev", ifname]).map(|_| ())
}

/// Sets `ifname` in `ns` up or down.
pub fn set_link(ns: &Netns, ifname: &str, up: bool) -> Result<()> {
    check_ifname(ifname)?;
    ns.ip(&["link", "set", "dev", ifname, if up { "up" } else { "down" }])
        .map(|_| ())
}

/// First interface index [`VethPair::connect`] uses (far above the small
/// indexes the kernel hands out by itself).
const VETH_INDEX_BASE: u64 = 10_000;

/// How long [`VethPair::connect`] waits for both ends to become usable.
const LINK_READY_TIMEOUT: Duration = Duration::from_secs(3);

/// Waits until `ifname` in `ns` is operationally up with its qdisc attached
/// (not `noop`), i.e. it actually transmits. Fails after `timeout`.
pub fn wait_link_ready(ns: &Netns, ifname: &str, timeout: Duration) -> Result<()> {
    check_ifname(ifname)?;
    let deadline = Instant::now() + timeout;
    loop {
        let out = ns.ip(&["-o", "link", "show", "dev", ifname])?;
        let text = String::from_utf8_lossy(&out.stdout);
        if text.contains(" state UP ") && !text.contains(" qdisc noop ") {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(HarnessError::LinkNotReady {
                ifname: ifname.to_owned(),
                netns: ns.name().to_owned(),
                state: text.trim().to_owned(),
            });
        }
        thread::sleep(Duration::from_millis(5));
    }
}

/// A veth pair between two namespaces. It has no guard of its own: it is
/// destroyed with either namespace (or by [`VethPair::delete`]).
#[derive(Debug, Clone)]
pub struct VethPair {
    /// Interface name of the end in the first namespace.
    pub if_a: String,
    /// Interface name of the end in the second namespace.
    pub if_b: String,
    ns_a: String,
}

impl VethPair {
    /// Creates a veth pair with one end in `a` and the other in `b` (they
    /// may be the same namespace), assigns the addresses and sets both ends
    /// up. Interface names are `h<pid % 100000>x<counter>a` / `...b`.
    pub fn connect(a: &Netns, b: &Netns, addr_a: impl Addrs, addr_b: impl Addrs) -> Result<Self> {
        let addr_a = addr_a.addrs();
        let addr_b = addr_b.addrs();
        // Validate before creating anything.
        for addr in addr_a.iter().chain(&addr_b) {
            parse_cidr(addr)?;
        }
        let id = next_id();
        let base = format!("h{}x{id}", std::process::id() % 100_000);
        let if_a = format!("{base}a");
        let if_b = format!("{base}b");
        check_ifname(&if_a)?;
        // Explicit, distinct interface indexes: with the default ones, the
        // first veth of two fresh namespaces gets index 2 on both ends, the
        // kernel then treats its carrier change as non-urgent and leaves the
        // device without a working qdisc (and IPv6 addresses unanswered) for
        // up to a second.
        let index_a = (VETH_INDEX_BASE + 2 * u64::from(id)).to_string();
        let index_b = (VETH_INDEX_BASE + 2 * u64::from(id) + 1).to_string();
        a.ip(&[
            "link",
            "add",
            &if_a,
            "index",
            &index_a,
            "type",
            "veth",
            "peer",
            "name",
            &if_b,
            "index",
            &index_b,
            "netns",
            b.name(),
        ])?;
        let pair = VethPair {
            if_a,
            if_b,
            ns_a: a.name().to_owned(),
        };
        let setup = || -> Result<()> {
            for addr in &addr_a {
                add_address(a, &pair.if_a, addr)?;
            }
            for addr in &addr_b {
                add_address(b, &pair.if_b, addr)?;
            }
            set_link(a, &pair.if_a, true)?;
            set_link(b, &pair.if_b, true)?;
            wait_link_ready(a, &pair.if_a, LINK_READY_TIMEOUT)?;
            wait_link_ready(b, &pair.if_b, LINK_READY_TIMEOUT)
        };
        if let Err(e) = setup() {
            // Best effort: the namespaces' drop removes it anyway.
            let _ = pair.clone().delete();
            return Err(e);
        }
        Ok(pair)
    }

    /// Deletes the pair (both ends).
    pub fn delete(self) -> Result<()> {
        ip(&["-n", &self.ns_a, "link", "del", "dev", &self.if_a]).map(|_| ())
    }
}

/// An nftables `netdev` table in a namespace, removed on drop or with
/// [`NftGuard::remove`].
#[derive(Debug)]
pub struct NftGuard {
    netns: String,
    table: String,
    removed: bool,
}

impl NftGuard {
    /// Name of the nftables table (family `netdev`).
    pub fn table(&self) -> &str {
        &self.table
    }

    /// Removes the table now, reporting failure.
    pub fn remove(mut self) -> Result<()> {
        self.removed = true;
        self.delete()
    }

    fn delete(&self) -> Result<()> {
        run(Command::new("ip").args([
            "netns",
            "exec",
            &self.netns,
            "nft",
            "delete",
            "table",
            "netdev",
            &self.table,
        ]))
        .map(|_| ())
    }
}

impl Drop for NftGuard {
    fn drop(&mut self) {
        if !self.removed {
            // The namespace may be gone already, taking the table with it.
            let _ = self.delete();
        }
    }
}

/// Drops, silently, everything the node in `ns` sends on `ifname` (an
/// nftables netdev egress hook; nothing reaches the wire, no error is
/// returned to the sender), until the guard is dropped or removed.
pub fn nft_egress_drop(ns: &Netns, ifname: &str) -> Result<NftGuard> {
    nft_egress_rule(ns, ifname, "drop")
}

/// Like [`nft_egress_drop`] but with an arbitrary rule in the egress chain of
/// `ifname`, e.g. `"udp dport 6405 drop"` (the chain's policy is accept).
pub fn nft_egress_rule(ns: &Netns, ifname: &str, rule: &str) -> Result<NftGuard> {
    check_ifname(ifname)?;
    let table = format!("hbfault{}", next_id());
    let script = format!(
        "table netdev {table} {{\n\
         \tchain egress {{\n\
         \t\ttype filter hook egress device \"{ifname}\" priority 0; policy accept;\n\
         \t\t{rule}\n\
         \t}}\n\
         }}\n"
    );
    run_with_stdin(
        Command::new("ip").args(["netns", "exec", ns.name(), "nft", "-f", "-"]),
        Some(&script),
    )?;
    Ok(NftGuard {
        netns: ns.name().to_owned(),
        table,
        removed: false,
    })
}

/// The default bpffs mount point; the agent pins an announced restart's
/// program and maps under `<bpffs>/heartbeat/<cluster>-<node>/`.
pub const BPFFS: &str = "/sys/fs/bpf";
/// Prefix of the scratch directories tests mount a bpffs of their own on
/// (`hb-test-bpffs-<pid>-<counter>` in the temp directory): `ip netns exec`
/// hides the host's /sys/fs/bpf, so restart tests share one that way.
pub const TEST_BPFFS_PREFIX: &str = "hb-test-bpffs-";

/// bpffs state a test run can leave behind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BpffsLeftover {
    /// A node's pin directory (`.../heartbeat/<cluster>-<node>`) and what is
    /// pinned in it.
    Pins {
        dir: std::path::PathBuf,
        names: Vec<String>,
    },
    /// A test's scratch bpffs mount, with the pid of the test process that
    /// made it (from its name).
    Mount {
        path: std::path::PathBuf,
        owner: Option<u32>,
    },
}

impl std::fmt::Display for BpffsLeftover {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Pins { dir, names } => write!(f, "pins {} [{}]", dir.display(), names.join(" ")),
            Self::Mount { path, .. } => write!(f, "bpffs mount {}", path.display()),
        }
    }
}

/// Mount points of every mounted bpffs (`/proc/self/mounts`).
fn bpffs_mounts() -> Vec<std::path::PathBuf> {
    std::fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_, at, fstype) = (f.next()?, f.next()?, f.next()?);
            (fstype == "bpf").then(|| std::path::PathBuf::from(at.replace("\\040", " ")))
        })
        .collect()
}

/// Node pin directories under `<root>/heartbeat/`.
fn pin_dirs(root: &Path) -> Vec<BpffsLeftover> {
    let Ok(rd) = std::fs::read_dir(root.join("heartbeat")) else {
        return Vec::new();
    };
    rd.filter_map(|e| e.ok())
        .map(|e| {
            let dir = e.path();
            let mut names: Vec<String> = std::fs::read_dir(&dir)
                .into_iter()
                .flatten()
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .collect();
            names.sort();
            BpffsLeftover::Pins { dir, names }
        })
        .collect()
}

/// Pins of announced restarts under /sys/fs/bpf/heartbeat (when a bpffs is
/// mounted there) and under every test's scratch bpffs, and the scratch
/// mounts themselves. After a test run this must be empty: restart tests
/// clean their pins and unmount with a drop guard.
pub fn bpffs_leftovers() -> Vec<BpffsLeftover> {
    let mut out = Vec::new();
    for at in bpffs_mounts() {
        let scratch = at
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix(TEST_BPFFS_PREFIX))
            .map(|rest| rest.split('-').next().and_then(|p| p.parse::<u32>().ok()));
        if at == Path::new(BPFFS) || scratch.is_some() {
            out.extend(pin_dirs(&at));
        }
        if let Some(owner) = scratch {
            out.push(BpffsLeftover::Mount { path: at, owner });
        }
    }
    out
}

/// Removes a leftover: detaches pinned links (they go when the last
/// reference, the pin, goes), removes the pins and the directory, or
/// unmounts a scratch bpffs (which releases whatever is still pinned in it)
/// and removes its directory.
pub fn clean_bpffs(leftover: &BpffsLeftover) -> std::result::Result<(), String> {
    match leftover {
        BpffsLeftover::Pins { dir, names } => {
            for n in names {
                let path = dir.join(n);
                if n.starts_with("xdp-")
                    && let Ok(link) = aya::programs::links::PinnedLink::from_pin(&path)
                {
                    // Unpinning removes the file; dropping the descriptor
                    // then releases (detaches) the link.
                    let _ = link.unpin();
                    continue;
                }
                std::fs::remove_file(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            }
            std::fs::remove_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            if let Some(parent) = dir.parent() {
                let _ = std::fs::remove_dir(parent);
            }
            Ok(())
        }
        BpffsLeftover::Mount { path, .. } => {
            let st = Command::new("umount")
                .arg("-l")
                .arg(path)
                .status()
                .map_err(|e| format!("umount {}: {e}", path.display()))?;
            if !st.success() {
                return Err(format!("umount {} failed", path.display()));
            }
            let _ = std::fs::remove_dir(path);
            Ok(())
        }
    }
}

/// An XDP program attached to an interface, as `ip -d -j link` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XdpAttachment {
    /// Interface name.
    pub ifname: String,
    /// Kernel program id.
    pub prog_id: u64,
    /// Program name (the kernel keeps the first 15 bytes).
    pub prog_name: String,
}

/// XDP programs attached in namespace `netns` (`None`: the root namespace).
pub fn xdp_attachments(netns: Option<&str>) -> Result<Vec<XdpAttachment>> {
    let mut cmd = Command::new("ip");
    if let Some(ns) = netns {
        cmd.args(["-n", ns]);
    }
    cmd.args(["-d", "-j", "link", "show"]);
    let desc = describe(&cmd);
    let out = run(&mut cmd)?;
    parse_xdp_json(&out.stdout).map_err(|detail| HarnessError::Parse { cmd: desc, detail })
}

/// Parses the output of `ip -d -j link show`.
fn parse_xdp_json(json: &[u8]) -> std::result::Result<Vec<XdpAttachment>, String> {
    let links: serde_json::Value = serde_json::from_slice(json).map_err(|e| e.to_string())?;
    let mut found = Vec::new();
    for link in links.as_array().into_iter().flatten() {
        let Some(xdp) = link.get("xdp") else { continue };
        let ifname = link
            .get("ifname")
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_owned();
        // One program: {"mode":..,"prog":{..}}; several (generic + driver):
        // {"mode":..,"attached":[{"mode":..,"prog":{..}}, ..]}.
        let progs = xdp
            .get("attached")
            .and_then(|a| a.as_array())
            .map(|a| a.iter().filter_map(|e| e.get("prog")).collect::<Vec<_>>())
            .unwrap_or_else(|| xdp.get("prog").into_iter().collect());
        for prog in progs {
            found.push(XdpAttachment {
                ifname: ifname.clone(),
                prog_id: prog.get("id").and_then(|v| v.as_u64()).unwrap_or_default(),
                prog_name: prog
                    .get("name")
                    .and_then(|v| v.as_str())
                    .unwrap_or_default()
                    .to_owned(),
            });
        }
    }
    Ok(found)
}

/// A tc program attached with TCX (a bpf_link, which `tc filter show` does
/// not list), as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcxAttachment {
    /// Interface name.
    pub ifname: String,
    /// `ingress` or `egress`.
    pub direction: &'static str,
    /// Kernel program id.
    pub prog_id: u32,
    /// Program name (the kernel keeps the first 15 bytes).
    pub prog_name: String,
}

/// TCX programs on `ifname`, queried from the calling thread's namespace.
fn tcx_query(ifname: &str) -> Result<Vec<TcxAttachment>> {
    use aya::programs::{SchedClassifier, TcAttachType};
    let mut found = Vec::new();
    for (direction, kind) in [
        ("ingress", TcAttachType::Ingress),
        ("egress", TcAttachType::Egress),
    ] {
        let (_, progs) =
            SchedClassifier::query_tcx(ifname, kind).map_err(|e| HarnessError::Tcx {
                ifname: ifname.to_owned(),
                reason: e.to_string(),
            })?;
        for p in progs {
            found.push(TcxAttachment {
                ifname: ifname.to_owned(),
                direction,
                prog_id: p.id(),
                prog_name: p.name_as_str().unwrap_or_default().to_owned(),
            });
        }
    }
    Ok(found)
}

/// TCX programs attached to any interface of namespace `netns` (`None`:
/// the root namespace).
pub fn tcx_attachments(netns: Option<&str>) -> Result<Vec<TcxAttachment>> {
    let mut cmd = Command::new("ip");
    if let Some(ns) = netns {
        cmd.args(["-n", ns]);
    }
    cmd.args(["-j", "link", "show"]);
    let desc = describe(&cmd);
    let out = run(&mut cmd)?;
    let links: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| HarnessError::Parse {
            cmd: desc,
            detail: e.to_string(),
        })?;
    let names: Vec<String> = links
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| l.get("ifname").and_then(|v| v.as_str()).map(str::to_owned))
        .collect();
    let query_all = move || {
        let mut all = Vec::new();
        for n in &names {
            all.extend(tcx_query(n)?);
        }
        Ok(all)
    };
    match netns {
        Some(ns) => in_netns(ns, query_all)?,
        None => query_all(),
    }
}

/// True if an XDP program is attached to `ifname` in `ns`; false also when
/// the interface cannot be inspected (e.g. it does not exist).
pub fn xdp_attached(ns: &Netns, ifname: &str) -> bool {
    if check_ifname(ifname).is_err() {
        return false;
    }
    ns.ip(&["-d", "link", "show", "dev", ifname])
        .map(|out| String::from_utf8_lossy(&out.stdout).contains("prog/xdp"))
        .unwrap_or(false)
}

/// Runs `f` on a scoped thread that has entered namespace `netns` (the
/// caller's own threads stay where they are).
pub fn in_netns<T: Send>(netns: &str, f: impl FnOnce() -> T + Send) -> Result<T> {
    let setns_err = |reason: String| HarnessError::Setns {
        netns: netns.to_owned(),
        reason,
    };
    let file =
        File::open(Path::new("/run/netns").join(netns)).map_err(|e| setns_err(e.to_string()))?;
    thread::scope(|s| {
        s.spawn(|| {
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| setns_err(e.to_string()))?;
            Ok(f())
        })
        .join()
        .unwrap_or_else(|_| Err(setns_err("the thread panicked".into())))
    })
}

/// Attaches the heartbeat XDP program (`object`: its ELF bytes), left
/// disabled so it passes every frame, to `ifname` in `ns`. A veth end needs
/// an XDP program of its own to run NAPI and so to receive the frames its
/// peer sends back with XDP_TX. Dropping the returned handle detaches it.
pub fn attach_xdp_pass(ns: &Netns, ifname: &str, object: &[u8]) -> Result<aya::Ebpf> {
    let err = |reason: String| HarnessError::Xdp {
        ifname: ifname.to_owned(),
        reason,
    };
    in_netns(ns.name(), || {
        let mut ebpf = aya::Ebpf::load(object).map_err(|e| err(e.to_string()))?;
        let prog: &mut aya::programs::Xdp = ebpf
            .program_mut(heartbeat_common::names::PROGRAM)
            .ok_or_else(|| err("no heartbeat program in the object".into()))?
            .try_into()
            .map_err(|e: aya::programs::ProgramError| err(e.to_string()))?;
        prog.load().map_err(|e| err(e.to_string()))?;
        prog.attach(ifname, aya::programs::XdpMode::Driver)
            .map_err(|e| err(e.to_string()))?;
        Ok(ebpf)
    })?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_defaults_and_validation() {
        assert_eq!(
            parse_cidr("10.200.0.1").unwrap(),
            ("10.200.0.1/24".into(), false)
        );
        assert_eq!(
            parse_cidr("10.200.0.1/16").unwrap(),
            ("10.200.0.1/16".into(), false)
        );
        assert_eq!(
            parse_cidr("fd00:200::1").unwrap(),
            ("fd00:200::1/64".into(), true)
        );
        assert!(parse_cidr("10.200.0.1/33").is_err());
        assert!(parse_cidr("fd00::1/129").is_err());
        assert!(parse_cidr("eth0").is_err());
        assert!(parse_cidr("10.0.0.1/x").is_err());
    }

    #[test]
    fn xdp_json() {
        // Captured from iproute2 6.1 with a generic-mode program attached.
        let json = br#"[{"ifindex":1,"ifname":"lo"},{"ifindex":3,"ifname":"va","xdp":{"mode":2,"prog":{"id":455,"name":"heartbeat","tag":"614b434cd8324ecc","jited":1},"attached":[{"mode":2,"prog":{"id":455,"name":"heartbeat","tag":"614b434cd8324ecc","jited":1}}]}}]"#;
        assert_eq!(
            parse_xdp_json(json).unwrap(),
            vec![XdpAttachment {
                ifname: "va".into(),
                prog_id: 455,
                prog_name: "heartbeat".into()
            }]
        );
        let single = br#"[{"ifname":"vb","xdp":{"mode":1,"prog":{"id":7,"name":"x"}}}]"#;
        assert_eq!(parse_xdp_json(single).unwrap()[0].prog_id, 7);
        assert!(parse_xdp_json(b"not json").is_err());
    }

    #[test]
    fn owner_from_name() {
        assert_eq!(netns_owner("hb1234-0"), Some(1234));
        assert_eq!(netns_owner("hbdemo77-12"), Some(77));
        assert_eq!(netns_owner("hb-1"), None);
        assert_eq!(netns_owner("hb1234"), None);
        assert_eq!(netns_owner("hb12-x"), None);
    }

    #[test]
    fn ifname_rules() {
        assert!(check_ifname("h12345x999999a").is_ok());
        assert!(check_ifname("").is_err());
        assert!(check_ifname("a-very-long-interface").is_err());
        assert!(check_ifname("bad\"name").is_err());
    }

    #[test]
    fn addrs_forms() {
        assert_eq!("a".addrs(), vec!["a"]);
        assert_eq!(["a", "b"].addrs(), vec!["a", "b"]);
        assert_eq!(vec![String::from("c")].addrs(), vec!["c"]);
        let s: &[&str] = &[];
        assert!(s.addrs().is_empty());
    }
}
