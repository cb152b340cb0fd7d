//! `cargo xtask test`: builds, runs `cargo test` on the default members
//! (streaming its output), runs every fuzz target for a bounded time (about
//! 30 s in total, `fuzz::run_all`), runs the benchmark smoke test, then checks that
//! nothing was left behind (harness network namespaces, processes started by
//! this run, XDP programs named `heartbeat` in the root namespace), cleans up
//! whatever was and fails if so.
//!
//! Leftovers are told apart from the fixtures of tests someone else is
//! running on the same machine: this run puts `HEARTBEAT_XTASK_TEST=<pid>`
//! in its environment, which every child inherits, and harness namespace
//! names carry the pid of the process that created them.

use std::{
    io::{BufRead as _, BufReader, IsTerminal as _},
    process::Stdio,
    thread,
    time::Duration,
};

use anyhow::{Context as _, bail};
use heartbeat_tests::{
    BpffsLeftover, TcxAttachment, XdpAttachment, bpffs_leftovers, clean_bpffs, delete_netns,
    leftovers, netns_owner, tcx_attachments, xdp_attachments,
};
use nix::{sys::signal, unistd::Pid};

use crate::{
    bench, fuzz,
    util::{self, step},
};

/// Environment variable marking every process this test run starts.
const MARKER: &str = "HEARTBEAT_XTASK_TEST";

/// XDP program name (the `#[xdp]` function in heartbeat-ebpf).
const XDP_PROG_NAME: &str = "heartbeat";

/// tc egress program name (the `#[classifier]` function in heartbeat-ebpf).
const TCX_PROG_NAME: &str = "egress_stamp";

/// `cargo xtask test`.
pub fn run() -> anyhow::Result<()> {
    util::require_root("cargo xtask test")?;
    let me = std::process::id();
    // SAFETY: xtask is single-threaded (no thread has been spawned so far),
    // so nothing reads the environment concurrently.
    unsafe { std::env::set_var(MARKER, me.to_string()) };
    let marker = format!("{MARKER}={me}");

    let stale = Leaks::find(&marker, me);
    if !stale.netns.is_empty() {
        step(
            "test",
            format!(
                "removing {} namespace(s) left by an earlier run: {}",
                stale.netns.len(),
                stale.netns.join(" ")
            ),
        );
        stale.clean();
    }

    step("test", "cargo build (default members)");
    util::run_streamed(util::cargo().arg("build"))?;

    step("test", "cargo test (default members)");
    let summary = cargo_test()?;

    step(
        "test",
        format!(
            "fuzzing every target (about {} s in total)",
            fuzz::TEST_BUDGET_SECS
        ),
    );
    let fuzzed = fuzz::run_all();

    let smoke = if summary.ok {
        step("test", "benchmark smoke run");
        Some(bench::smoke())
    } else {
        None
    };

    step("test", "checking for leftovers");
    let leaks = Leaks::find(&marker, me);
    let unclean = if leaks.is_empty() {
        Vec::new()
    } else {
        leaks.clean()
    };

    // Summary.
    for line in &summary.failed_lines {
        eprintln!("{line}");
    }
    step(
        "test",
        format!(
            "cargo test: {} passed; {} failed; {} ignored ({} test binaries)",
            summary.passed, summary.failed, summary.ignored, summary.binaries
        ),
    );
    match &fuzzed {
        Ok(()) => step("test", "fuzzing: no crash"),
        Err(e) => step("test", format!("fuzzing: FAILED: {e:#}")),
    }
    match &smoke {
        Some(Ok(())) => step("test", "benchmark smoke run: ok"),
        Some(Err(e)) => step("test", format!("benchmark smoke run: FAILED: {e:#}")),
        None => step("test", "benchmark smoke run: skipped (tests failed)"),
    }
    for warning in &leaks.foreign {
        step("test", format!("note: {warning}"));
    }
    if leaks.is_empty() {
        step(
            "test",
            "leak check: no namespace, process, XDP or TCX attachment, or bpffs pin left behind",
        );
    } else {
        step(
            "test",
            format!("leak check: FAILED, left behind: {}", leaks.describe()),
        );
        if unclean.is_empty() {
            step("test", "all of it has been cleaned up now");
        } else {
            step(
                "test",
                format!("could NOT clean up: {}", unclean.join("; ")),
            );
        }
    }

    if !summary.ok {
        bail!("cargo test failed");
    }
    if let Err(e) = fuzzed {
        return Err(e.context("fuzzing failed"));
    }
    if let Some(Err(e)) = smoke {
        return Err(e.context("benchmark smoke run failed"));
    }
    if !leaks.is_empty() {
        bail!("tests left things behind: {}", leaks.describe());
    }
    // The plain closing line CI reads (stdout, alone on its line).
    println!(
        "tests: {} passed, {} failed",
        summary.passed, summary.failed
    );
    Ok(())
}

/// Totals over every test binary's `test result:` line.
#[derive(Default)]
struct Summary {
    ok: bool,
    binaries: u32,
    passed: u64,
    failed: u64,
    ignored: u64,
    /// `test result: FAILED. ...` lines, verbatim.
    failed_lines: Vec<String>,
}

impl Summary {
    fn add(&mut self, line: &str) {
        let Some(rest) = line.trim().strip_prefix("test result:") else {
            return;
        };
        self.binaries += 1;
        // "ok. 5 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.01s"
        let rest = rest.split_once('.').map_or(rest, |(_, r)| r);
        for part in rest.split(';') {
            let mut words = part.split_whitespace();
            let (Some(n), Some(what)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(n) = n.parse::<u64>() else { continue };
            match what {
                "passed" => self.passed += n,
                "failed" => self.failed += n,
                "ignored" => self.ignored += n,
                _ => {}
            }
        }
        if line.contains("FAILED") {
            self.failed_lines.push(line.trim().to_owned());
        }
    }
}

/// `cargo test --no-fail-fast` with stdout streamed through (and parsed)
/// and stderr inherited.
fn cargo_test() -> anyhow::Result<Summary> {
    let mut cmd = util::cargo();
    cmd.args(["test", "--no-fail-fast"]);
    if std::io::stdout().is_terminal() {
        cmd.args(["--", "--color=always"]);
    }
    let desc = util::describe(&cmd);
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("could not start `{desc}`"))?;
    let mut summary = Summary::default();
    if let Some(stdout) = child.stdout.take() {
        let mut reader = BufReader::new(stdout);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            let n = reader
                .read_until(b'\n', &mut buf)
                .with_context(|| format!("reading output of `{desc}`"))?;
            if n == 0 {
                break;
            }
            let line = String::from_utf8_lossy(&buf);
            print!("{line}");
            summary.add(&strip_ansi(&line));
        }
    }
    let status = child
        .wait()
        .with_context(|| format!("waiting for `{desc}`"))?;
    summary.ok = status.success();
    Ok(summary)
}

/// Removes ANSI colour sequences (`ESC [ ... m`).
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// What a test run left behind.
#[derive(Default)]
struct Leaks {
    /// Harness namespaces whose creator has exited (or is this run).
    netns: Vec<String>,
    /// Live processes carrying this run's marker: (pid, comm).
    procs: Vec<(i32, String)>,
    /// XDP programs named `heartbeat` attached in the root namespace.
    xdp: Vec<XdpAttachment>,
    /// tc programs named `egress_stamp` attached (TCX) in the root namespace.
    tcx: Vec<TcxAttachment>,
    /// Pins of announced restarts (/sys/fs/bpf/heartbeat and the tests'
    /// scratch bpffs mounts) and those mounts.
    bpffs: Vec<BpffsLeftover>,
    /// Things that look like leftovers but belong to someone else (reported,
    /// left alone).
    foreign: Vec<String>,
}

impl Leaks {
    fn find(marker: &str, me: u32) -> Self {
        let mut leaks = Leaks::default();
        for name in leftovers() {
            match netns_owner(&name) {
                Some(owner) if owner != me && alive(owner) && !has_marker(owner, marker) => {
                    leaks.foreign.push(format!(
                        "namespace {name} belongs to running process {owner}; left alone"
                    ));
                }
                _ => leaks.netns.push(name),
            }
        }
        for (pid, comm) in processes() {
            if u32::try_from(pid).is_ok_and(|p| p == me) {
                continue;
            }
            if has_marker_i32(pid, marker) {
                leaks.procs.push((pid, comm));
            } else if comm == "heartbeat-agent" {
                leaks.foreign.push(format!(
                    "heartbeat-agent pid {pid} was not started by this test run; left alone"
                ));
            }
        }
        match xdp_attachments(None) {
            Ok(list) => {
                leaks.xdp = list
                    .into_iter()
                    .filter(|a| a.prog_name == XDP_PROG_NAME)
                    .collect();
            }
            Err(e) => leaks
                .foreign
                .push(format!("could not list XDP attachments: {e}")),
        }
        match tcx_attachments(None) {
            Ok(list) => {
                leaks.tcx = list
                    .into_iter()
                    .filter(|a| a.prog_name == TCX_PROG_NAME)
                    .collect();
            }
            Err(e) => leaks
                .foreign
                .push(format!("could not list TCX attachments: {e}")),
        }
        // A scratch bpffs of a test process still running elsewhere (not
        // this run) is not ours, nor are the pins in it.
        let all = bpffs_leftovers();
        let foreign_mounts: Vec<std::path::PathBuf> = all
            .iter()
            .filter_map(|l| match l {
                BpffsLeftover::Mount {
                    path,
                    owner: Some(owner),
                } if *owner != me && alive(*owner) && !has_marker(*owner, marker) => {
                    Some(path.clone())
                }
                _ => None,
            })
            .collect();
        for l in all {
            let under_foreign = match &l {
                BpffsLeftover::Mount { path, .. } => foreign_mounts.contains(path),
                BpffsLeftover::Pins { dir, .. } => {
                    foreign_mounts.iter().any(|m| dir.starts_with(m))
                }
            };
            if under_foreign {
                leaks
                    .foreign
                    .push(format!("{l} belongs to a running test process; left alone"));
            } else {
                leaks.bpffs.push(l);
            }
        }
        leaks
    }

    fn is_empty(&self) -> bool {
        self.netns.is_empty()
            && self.procs.is_empty()
            && self.xdp.is_empty()
            && self.tcx.is_empty()
            && self.bpffs.is_empty()
    }

    fn describe(&self) -> String {
        let mut parts = Vec::new();
        if !self.netns.is_empty() {
            parts.push(format!("namespaces [{}]", self.netns.join(" ")));
        }
        if !self.procs.is_empty() {
            let procs: Vec<String> = self
                .procs
                .iter()
                .map(|(pid, comm)| format!("{comm}({pid})"))
                .collect();
            parts.push(format!("processes [{}]", procs.join(" ")));
        }
        if !self.xdp.is_empty() {
            let xdp: Vec<String> = self
                .xdp
                .iter()
                .map(|a| format!("{} on {} (id {})", a.prog_name, a.ifname, a.prog_id))
                .collect();
            parts.push(format!("XDP in the root namespace [{}]", xdp.join(", ")));
        }
        if !self.tcx.is_empty() {
            let tcx: Vec<String> = self
                .tcx
                .iter()
                .map(|a| {
                    format!(
                        "{} on {} {} (id {})",
                        a.prog_name, a.ifname, a.direction, a.prog_id
                    )
                })
                .collect();
            parts.push(format!("TCX in the root namespace [{}]", tcx.join(", ")));
        }
        if !self.bpffs.is_empty() {
            let b: Vec<String> = self.bpffs.iter().map(ToString::to_string).collect();
            parts.push(format!("bpffs [{}]", b.join(", ")));
        }
        parts.join(", ")
    }

    /// Kills, deletes and detaches; returns what could not be cleaned.
    fn clean(&self) -> Vec<String> {
        let mut unclean = Vec::new();
        for (pid, _) in &self.procs {
            // Gone already is fine.
            let _ = signal::kill(Pid::from_raw(*pid), signal::Signal::SIGKILL);
        }
        for name in &self.netns {
            if let Err(e) = delete_netns(name) {
                unclean.push(format!("namespace {name}: {e}"));
            }
        }
        // Pins first (detaching their links), then the scratch mounts.
        let (mounts, pins): (Vec<_>, Vec<_>) = self
            .bpffs
            .iter()
            .partition(|l| matches!(l, BpffsLeftover::Mount { .. }));
        for l in pins.into_iter().chain(mounts) {
            if let Err(e) = clean_bpffs(l) {
                unclean.push(format!("{l}: {e}"));
            }
        }
        if !self.xdp.is_empty() {
            // A bpf_link-based attachment goes away once its owner's file
            // descriptors are closed, i.e. right after the kills above.
            thread::sleep(Duration::from_millis(300));
            for a in &self.xdp {
                for mode in ["xdpgeneric", "xdpdrv", "xdpoffload"] {
                    // Only the attached mode succeeds; the others fail.
                    let _ = util::run_captured(
                        std::process::Command::new("ip")
                            .args(["link", "set", "dev", &a.ifname, mode, "off"]),
                    );
                }
            }
            if let Ok(list) = xdp_attachments(None) {
                for a in list.iter().filter(|a| a.prog_name == XDP_PROG_NAME) {
                    unclean.push(format!(
                        "XDP {} still on {} (pinned link? see `bpftool link`)",
                        a.prog_name, a.ifname
                    ));
                }
            }
        }
        if !self.tcx.is_empty() {
            // A TCX attachment is a bpf_link: it goes away with its owner's
            // file descriptors (the kills above), unless it was pinned.
            thread::sleep(Duration::from_millis(300));
            if let Ok(list) = tcx_attachments(None) {
                for a in list.iter().filter(|a| a.prog_name == TCX_PROG_NAME) {
                    unclean.push(format!(
                        "TCX {} still on {} {} (pinned link? see `bpftool link`)",
                        a.prog_name, a.ifname, a.direction
                    ));
                }
            }
        }
        unclean
    }
}

/// Whether `pid` is a live (not zombie) process.
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next());
        !matches!(state, Some("Z" | "X") | None)
    })
}

fn has_marker(pid: u32, marker: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/environ"))
        .is_ok_and(|env| env.split(|b| *b == 0).any(|var| var == marker.as_bytes()))
}

fn has_marker_i32(pid: i32, marker: &str) -> bool {
    u32::try_from(pid).is_ok_and(|p| has_marker(p, marker))
}

/// Every process: (pid, comm).
fn processes() -> Vec<(i32, String)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
            Some((pid, comm.trim().to_owned()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_sums_result_lines() {
        let mut s = Summary::default();
        s.add("test result: ok. 5 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.01s");
        s.add("running 3 tests");
        s.add("test result: FAILED. 2 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 1.00s");
        assert_eq!((s.binaries, s.passed, s.failed, s.ignored), (2, 7, 1, 1));
        assert_eq!(s.failed_lines.len(), 1);
    }

    #[test]
    fn ansi_is_stripped() {
        assert_eq!(
            strip_ansi("test result: \u{1b}[32mok\u{1b}[0m. 1 passed"),
            "test result: ok. 1 passed"
        );
    }
}
