//! The floor under the sender's cost on this machine: a bare thread that
//! does nothing but wake on absolute deadlines at the heartbeat rate, as
//! the agent's sender does (SCHED_FIFO at the sender's priority, pinned
//! where node A's agent runs, `clock_nanosleep(TIMER_ABSTIME)`), with no
//! send, no stamp, no clock read beyond the loop's own. Its CPU time per
//! tick is what any design that wakes a user thread per heartbeat pays
//! before it sends anything; the agent's sender row sits on top of it.
//!
//! The second floor adds the least a send can cost: one heartbeat-sized
//! UDP datagram per wake-up, through the socket layer, UDP and IP, dropped
//! by a netfilter rule at the OUTPUT hook of a namespace of its own, so no
//! qdisc, driver or receiver is charged (on a veth the agent's sender also
//! pays its peer's receive path, see CONFIG_IRQ_TIME_ACCOUNTING below).

use std::time::Duration;

/// One rate's floor.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct FloorRow {
    /// Wake-ups per second asked for.
    pub rate_hz: u64,
    /// Wake-ups done.
    pub ticks: u64,
    /// Thread CPU (schedstat), % of one core.
    pub pct_of_core: f64,
    /// Thread CPU per wake-up, ns.
    pub ns_per_tick: f64,
    /// Whether the thread ran as SCHED_FIFO (else: the default policy).
    pub realtime: bool,
    /// Sends made, one per wake-up ([`measure_send`]; 0 for the bare loop).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub sends: u64,
    /// Of them, refused by the OUTPUT rule (EPERM), as meant.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub sends_dropped: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The UDP port the send floor sends to (discard), dropped at OUTPUT.
pub const SEND_FLOOR_PORT: u16 = 9;
/// A heartbeat's UDP payload size.
const SEND_FLOOR_BYTES: usize = heartbeat_common::HEADER_LEN;

/// The calling thread's CPU time so far, ns (`/proc/thread-self/schedstat`).
fn own_cpu_ns() -> Option<u64> {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn sleep_until(deadline_ns: u64) {
    let ts = libc::timespec {
        tv_sec: (deadline_ns / 1_000_000_000) as libc::time_t,
        tv_nsec: (deadline_ns % 1_000_000_000) as libc::c_long,
    };
    // SAFETY: `ts` is a valid timespec; the remainder pointer may be null
    // with TIMER_ABSTIME. EINTR just ends this sleep early.
    unsafe {
        libc::clock_nanosleep(
            libc::CLOCK_MONOTONIC,
            libc::TIMER_ABSTIME,
            &ts,
            std::ptr::null_mut(),
        )
    };
}

/// Pins the calling thread to `cpu` and makes it SCHED_FIFO `priority`;
/// returns whether the policy took.
fn place(cpu: Option<usize>, priority: i32) -> bool {
    if let Some(cpu) = cpu {
        // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes
        // inside it; sched_setaffinity(0) reads `size_of` bytes of it.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
        }
    }
    let param = libc::sched_param {
        sched_priority: priority,
    };
    // SAFETY: `param` is a valid sched_param for the calling thread (0).
    unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) == 0 }
}

/// Kernel options that decide whether a sender could avoid one wake-up per
/// heartbeat, and what a thread's CPU time includes.
pub const PACING_OPTIONS: [&str; 4] = [
    // Qdiscs that hold a packet until its SO_TXTIME / skb->tstamp: with
    // one, a sender could queue several heartbeats per wake-up.
    "CONFIG_NET_SCH_FQ",
    "CONFIG_NET_SCH_ETF",
    "CONFIG_NET_SCH_BPF",
    // Off: softirq work done in a task's syscall (on a veth, the peer's
    // XDP run and the reply's delivery) is charged to the task.
    "CONFIG_IRQ_TIME_ACCOUNTING",
];

/// The running kernel's value of each of [`PACING_OPTIONS`] ("y", "m", or
/// "not set"), read from `/proc/config.gz`; empty when it is not there.
pub fn kernel_options() -> Vec<(String, String)> {
    let Ok(out) = std::process::Command::new("zcat")
        .arg("/proc/config.gz")
        .output()
    else {
        return Vec::new();
    };
    if !out.status.success() {
        return Vec::new();
    }
    options_from(&String::from_utf8_lossy(&out.stdout))
}

/// [`kernel_options`] from a kernel config's text.
fn options_from(config: &str) -> Vec<(String, String)> {
    PACING_OPTIONS
        .iter()
        .map(|name| {
            let set = config.lines().find_map(|l| {
                l.strip_prefix(name)
                    .and_then(|rest| rest.strip_prefix('='))
                    .map(str::to_owned)
            });
            ((*name).to_owned(), set.unwrap_or_else(|| "not set".into()))
        })
        .collect()
}

/// Runs the bare loop at `rate_hz` for `secs` on its own thread.
/// `None` only if the measuring thread died.
pub fn measure(rate_hz: u64, secs: u64, cpu: Option<usize>, priority: i32) -> Option<FloorRow> {
    run_loop(rate_hz, secs, cpu, priority, None)
}

/// The bare loop plus one send per wake-up, from inside the network
/// namespace at `netns` (a `/run/netns/NAME` path), whose OUTPUT hook drops
/// UDP to [`SEND_FLOOR_PORT`]. The namespace is the caller's to make.
pub fn measure_send(
    rate_hz: u64,
    secs: u64,
    cpu: Option<usize>,
    priority: i32,
    netns: std::path::PathBuf,
) -> anyhow::Result<FloorRow> {
    run_loop(rate_hz, secs, cpu, priority, Some(netns)).ok_or_else(|| {
        anyhow::anyhow!("could not enter the namespace or open the socket for the send floor")
    })
}

/// A UDP socket connected to 127.0.0.1:[`SEND_FLOOR_PORT`], made in the
/// namespace at `netns` (entered by this thread only).
fn send_socket(netns: &std::path::Path) -> Option<std::net::UdpSocket> {
    use std::os::fd::AsRawFd as _;
    let ns = std::fs::File::open(netns).ok()?;
    // SAFETY: setns on a valid namespace fd; CLONE_NEWNET moves only the
    // calling thread, which ends with this measurement.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return None;
    }
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").ok()?;
    sock.connect(("127.0.0.1", SEND_FLOOR_PORT)).ok()?;
    Some(sock)
}

fn run_loop(
    rate_hz: u64,
    secs: u64,
    cpu: Option<usize>,
    priority: i32,
    netns: Option<std::path::PathBuf>,
) -> Option<FloorRow> {
    use std::os::fd::AsRawFd as _;
    let period = 1_000_000_000 / rate_hz.max(1);
    let handle = std::thread::spawn(move || {
        let sock = match &netns {
            Some(path) => Some(send_socket(path)?),
            None => None,
        };
        let fd = sock.as_ref().map(|s| s.as_raw_fd());
        let payload = [0u8; SEND_FLOOR_BYTES];
        let (mut sends, mut dropped) = (0u64, 0u64);
        let realtime = place(cpu, priority);
        let start_cpu = own_cpu_ns().unwrap_or(0);
        let start = mono_ns();
        let end = start + Duration::from_secs(secs).as_nanos() as u64;
        let mut next = start + period;
        let mut ticks = 0u64;
        while next < end {
            sleep_until(next);
            if let Some(fd) = fd {
                // SAFETY: `fd` is the open socket above; `payload` is a
                // readable buffer of the length given.
                let rc = unsafe {
                    libc::send(
                        fd,
                        payload.as_ptr().cast(),
                        payload.len(),
                        libc::MSG_DONTWAIT,
                    )
                };
                sends += 1;
                if rc < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM) {
                    dropped += 1;
                }
            }
            ticks += 1;
            next += period;
        }
        let cpu_ns = own_cpu_ns().unwrap_or(start_cpu).saturating_sub(start_cpu);
        let elapsed = mono_ns().saturating_sub(start).max(1);
        Some(FloorRow {
            rate_hz,
            ticks,
            pct_of_core: cpu_ns as f64 * 100.0 / elapsed as f64,
            ns_per_tick: cpu_ns as f64 / ticks.max(1) as f64,
            realtime,
            sends,
            sends_dropped: dropped,
        })
    });
    handle.join().ok().flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_options_are_read_from_the_config_text() {
        let cfg = "CONFIG_NET_SCH_FQ=m\n# CONFIG_NET_SCH_ETF is not set\nCONFIG_NET_SCH_FQ_CODEL=y\nCONFIG_IRQ_TIME_ACCOUNTING=y\n";
        let got = options_from(cfg);
        let value = |n: &str| got.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_str());
        assert_eq!(value("CONFIG_NET_SCH_FQ"), Some("m"));
        assert_eq!(value("CONFIG_NET_SCH_ETF"), Some("not set"));
        assert_eq!(value("CONFIG_NET_SCH_BPF"), Some("not set"));
        assert_eq!(value("CONFIG_IRQ_TIME_ACCOUNTING"), Some("y"));
    }

    #[test]
    fn the_bare_loop_wakes_at_its_rate() {
        let r = measure(1000, 1, None, 0).expect("the loop ran");
        assert_eq!(r.sends, 0, "{r:?}");
        // Generous: a loaded test machine may lose a few wake-ups to
        // lateness, never gain any.
        assert!(r.ticks > 500 && r.ticks <= 1000, "{r:?}");
        assert!(r.ns_per_tick > 0.0, "{r:?}");
    }
}
