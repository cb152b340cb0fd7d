//! A host stall probe: a SCHED_FIFO 99 thread that sleeps 1 ms at a time
//! (absolute deadlines) and records how late it woke. A window's largest
//! lateness tells whether a false detection coincided with the whole
//! machine stalling (a virtual machine descheduled, RT throttling) rather
//! than with something a heartbeat system could have avoided.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicI64, Ordering},
    },
    thread::JoinHandle,
};

const PERIOD_NS: i64 = 1_000_000;

fn mono_ns() -> i64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map_or(0, |t| t.tv_sec() * 1_000_000_000 + t.tv_nsec())
}

/// The running probe; stops on drop.
pub struct StallProbe {
    stop: Arc<AtomicBool>,
    max_late: Arc<AtomicI64>,
    thread: Option<JoinHandle<()>>,
}

impl StallProbe {
    pub fn start() -> anyhow::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let max_late = Arc::new(AtomicI64::new(0));
        let thread = {
            let stop = stop.clone();
            let max_late = max_late.clone();
            std::thread::Builder::new()
                .name("stall-probe".into())
                .spawn(move || {
                    let param = libc::sched_param { sched_priority: 99 };
                    // SAFETY: sets the calling thread's policy; `param` is valid.
                    // Failure leaves it SCHED_OTHER, which still measures.
                    let _ =
                        unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &raw const param) };
                    let mut next = mono_ns();
                    while !stop.load(Ordering::Relaxed) {
                        next += PERIOD_NS;
                        let ts = libc::timespec {
                            tv_sec: next / 1_000_000_000,
                            tv_nsec: next % 1_000_000_000,
                        };
                        // SAFETY: `ts` is a valid timespec; no remainder is needed
                        // with TIMER_ABSTIME.
                        unsafe {
                            libc::clock_nanosleep(
                                libc::CLOCK_MONOTONIC,
                                libc::TIMER_ABSTIME,
                                &raw const ts,
                                std::ptr::null_mut(),
                            )
                        };
                        let late = mono_ns() - next;
                        max_late.fetch_max(late, Ordering::Relaxed);
                        if late > PERIOD_NS {
                            // Skip the missed periods instead of catching up.
                            next = mono_ns();
                        }
                    }
                })?
        };
        Ok(StallProbe {
            stop,
            max_late,
            thread: Some(thread),
        })
    }

    /// Starts a new window.
    pub fn reset(&self) {
        self.max_late.store(0, Ordering::Relaxed);
    }

    /// Largest wake-up lateness since the last reset (ns).
    pub fn max_late_ns(&self) -> i64 {
        self.max_late.load(Ordering::Relaxed)
    }
}

impl Drop for StallProbe {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
