//! The kernel's watch on the agent process: two tracepoint programs record
//! in `AGENT[0]` the moment the agent's sender (or main) thread exits or the
//! agent takes a stop signal. The XDP program's dead-man gate closes from
//! that moment (see `answer` in main.rs), so a SIGKILLed or SIGSTOPped agent
//! is not kept alive by its kernel until `agent_timeout` runs out. No packet
//! work happens here; these run only for the agent's own threads' events.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_kernel},
    macros::raw_tracepoint,
    programs::RawTracePointContext,
};

use crate::maps::AGENT;

const SIGSTOP: i32 = 19;
const SIGTTOU: i32 = 22;

/// Records a halt if the current task belongs to the watched agent and
/// `matters(tgid, tid, watch_sender_tid)` says so.
#[inline(always)]
fn record(matters: impl Fn(u32, u32, u32) -> bool) {
    let Some(w) = AGENT.get_ptr_mut(0) else {
        return;
    };
    let id = bpf_get_current_pid_tgid();
    let tgid = (id >> 32) as u32;
    let tid = id as u32;
    // SAFETY: `w` points at the live AGENT value; plain stores of integers.
    unsafe {
        if (*w).tgid == 0 || (*w).tgid != tgid || !matters(tgid, tid, (*w).sender_tid) {
            return;
        }
        (*w).halted_at_ns = bpf_ktime_get_ns();
        (*w).halts += 1;
    }
}

/// Raw tracepoint `sched_process_exit` (attached by name: needs no tracefs,
/// so it works inside `ip netns exec` too): the sender or main thread of the
/// agent exits.
#[raw_tracepoint(tracepoint = "sched_process_exit")]
pub fn agent_exit(_ctx: RawTracePointContext) -> i32 {
    record(|tgid, tid, sender| tid == sender || tid == tgid);
    0
}

/// Raw tracepoint `signal_deliver(int sig, struct kernel_siginfo *info,
/// struct k_sigaction *ka)`: a stop signal (SIGSTOP, SIGTSTP, SIGTTIN,
/// SIGTTOU) with its default action is delivered to the agent.
/// `ka->sa.sa_handler` is the first word of `struct k_sigaction`.
#[raw_tracepoint(tracepoint = "signal_deliver")]
pub fn agent_stop(ctx: RawTracePointContext) -> i32 {
    let sig: u64 = ctx.arg(0);
    let ka: u64 = ctx.arg(2);
    let sig = sig as i32;
    if !(SIGSTOP..=SIGTTOU).contains(&sig) || ka == 0 {
        return 0;
    }
    // SAFETY: bpf_probe_read_kernel copies 8 bytes from a kernel pointer the
    // tracepoint passed, failing cleanly on a bad address.
    let handler = unsafe { bpf_probe_read_kernel(ka as *const u64) }.unwrap_or(1);
    if handler == 0 {
        record(|_, _, _| true);
    }
    0
}
