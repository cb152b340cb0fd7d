//! Issue 12, row 12: replay protection must survive restarts and clock
//! steps. A node restarted with its wall clock set back used to start its
//! request sequence from that clock, below what its peers had accepted, so
//! every request was dropped as a replay while both sides still showed the
//! link up. The sequence now starts from the incarnation persisted in the
//! state file (`heartbeat_agent::sequence`).
//!
//! A namespace cannot have a clock of its own (time namespaces offset only
//! the monotonic clocks), so the restarted agent runs with a small
//! LD_PRELOAD shim (built here with rustc) that moves CLOCK_REALTIME back
//! and leaves everything else alone: the XDP program, the dead-man stamp
//! and the sender's deadlines use CLOCK_MONOTONIC. (libfaketime is no use
//! here: even with FAKETIME_DONT_FAKE_MONOTONIC it shifts absolute
//! CLOCK_MONOTONIC deadlines of clock_nanosleep, so the sender floods.)
#![allow(
    unused_crate_dependencies,
    reason = "an integration test links every dependency of its package"
)]

mod support;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use heartbeat_tests::Signal;
use support::{Cluster, EventKind, NodeState, STEADY, StatusReport, wall_ns};

const UP: Duration = Duration::from_secs(10);

/// An LD_PRELOAD library: `clock_gettime` of CLOCK_REALTIME (and its
/// coarse variant) moved by `$HB_CLOCK_SHIFT_S` seconds.
const CLOCK_SHIFT_SRC: &str = r#"
use std::ffi::{c_char, c_int, c_long, c_void};
#[repr(C)]
pub struct Timespec { tv_sec: i64, tv_nsec: c_long }
unsafe extern "C" {
    fn dlsym(handle: *mut c_void, symbol: *const c_char) -> *mut c_void;
    fn getenv(name: *const c_char) -> *const c_char;
    fn atoll(s: *const c_char) -> i64;
}
type ClockGettime = unsafe extern "C" fn(c_int, *mut Timespec) -> c_int;
/// # Safety
/// As clock_gettime(3).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn clock_gettime(clock: c_int, ts: *mut Timespec) -> c_int {
    unsafe {
        let next = dlsym(-1isize as *mut c_void, c"clock_gettime".as_ptr());
        let real: ClockGettime = std::mem::transmute(next);
        let rc = real(clock, ts);
        if rc == 0 && (clock == 0 || clock == 5) && !ts.is_null() {
            let shift = getenv(c"HB_CLOCK_SHIFT_S".as_ptr());
            if !shift.is_null() {
                (*ts).tv_sec += atoll(shift);
            }
        }
        rc
    }
}
"#;

/// Builds the clock shift library into `dir`.
fn build_clock_shift(dir: &Path) -> PathBuf {
    let src = dir.join("clockshift.rs");
    let lib = dir.join("libclockshift.so");
    std::fs::write(&src, CLOCK_SHIFT_SRC).unwrap();
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let out = Command::new(rustc)
        .args(["--edition", "2024", "--crate-type", "cdylib", "-O", "-o"])
        .arg(&lib)
        .arg(&src)
        .output()
        .expect("running rustc");
    assert!(
        out.status.success(),
        "building the clock shift library: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    lib
}

fn requests_rx(st: &StatusReport, name: &str) -> u64 {
    st.node(name)
        .and_then(|n| n.links.first())
        .map_or(0, |l| l.requests_rx)
}

fn drop_replay(st: &StatusReport) -> u64 {
    *st.xdp_counters
        .get("drop_replay")
        .unwrap_or_else(|| panic!("no drop_replay counter in {st:?}"))
}

/// Waits until `observer` has accepted more than `above` requests from `name`.
fn wait_requests(c: &Cluster, observer: &str, name: &str, above: u64) -> Option<StatusReport> {
    let deadline = Instant::now() + UP;
    loop {
        let st = c.status(observer);
        if requests_rx(&st, name) > above {
            return Some(st);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn restarts_with_the_clock_set_back_are_not_replays() {
    let mut c = Cluster::new(2, 1, STEADY, false);
    let shim = build_clock_shift(&c.dir.0);
    let preload = format!("LD_PRELOAD={}", shim.display());
    c.start_all();
    c.wait_all_up(UP);
    let st = wait_requests(&c, "beta", "alpha", 100).expect("beta never heard alpha's requests");
    let mut generation = st
        .node("alpha")
        .and_then(|n| n.peer_generation)
        .expect("alpha's generation");

    // Restart alpha twice, the clock one and then two hours further back.
    for back_s in [3600u64, 7200] {
        c.agent("alpha").signal(Signal::SIGTERM).unwrap();
        let status = c
            .agent("alpha")
            .wait_timeout(Duration::from_secs(10))
            .unwrap();
        assert!(
            status.is_some_and(|s| s.success()),
            "alpha did not stop: {status:?}"
        );
        let before = c.status("beta");
        let (rx0, replay0) = (requests_rx(&before, "alpha"), drop_replay(&before));

        let restarted = wall_ns();
        let shift = format!("HB_CLOCK_SHIFT_S=-{back_s}");
        c.start_prefixed("alpha", &["env", &preload, &shift]);
        // The restarted agent really sees the clock set back: its
        // journal's start entry (wall time from CLOCK_REALTIME) is `back_s`
        // before now (give or take ten minutes).
        let deadline = Instant::now() + UP;
        let started = loop {
            let found = c.journal("alpha").into_iter().rev().find(|e| {
                e.event == EventKind::AgentStarted
                    && (restarted - back_s * 1_000_000_000).abs_diff(e.kernel_wall_ns)
                        < 600_000_000_000
            });
            if let Some(e) = found {
                break e;
            }
            assert!(
                Instant::now() < deadline,
                "alpha did not start with its clock {back_s} s back:\n{}\n{:?}",
                c.log("alpha"),
                c.journal("alpha")
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        eprintln!("alpha restarted {back_s} s in the past: {started:?}");

        // beta keeps accepting alpha's requests: none is taken for a replay.
        let after = wait_requests(&c, "beta", "alpha", rx0 + 200).unwrap_or_else(|| {
            panic!(
                "beta accepts no requests from alpha restarted {back_s} s in the past \
                 (drop_replay {} -> {}):\n{}",
                replay0,
                drop_replay(&c.status("beta")),
                c.log("alpha")
            )
        });
        assert_eq!(
            drop_replay(&after),
            replay0,
            "requests of the restarted alpha dropped as replays: {after:?}"
        );
        c.wait_state("beta", "alpha", NodeState::Up, UP);
        // The generation is the incarnation: one more per start.
        let g = after.node("alpha").and_then(|n| n.peer_generation).unwrap();
        assert_eq!(g, generation + 1, "generation {generation} -> {g}");
        generation = g;
    }
    // ... and the one persisted in alpha's state file.
    let state = std::fs::read_to_string(c.dir.0.join("alpha.state")).unwrap();
    assert!(
        state
            .lines()
            .any(|l| l.replace(' ', "") == format!("incarnation={generation}")),
        "{state}"
    );
}
