//! Clocks: CLOCK_MONOTONIC (the base of `bpf_ktime_get_ns`) and its
//! conversion to wall-clock time for the journal.

use std::time::{SystemTime, UNIX_EPOCH};

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; clock ids used here always exist.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    (ts.tv_sec as u64).saturating_mul(1_000_000_000) + ts.tv_nsec as u64
}

/// CLOCK_MONOTONIC in ns: the same clock the XDP program reads.
pub fn mono_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

/// CLOCK_REALTIME in ns since the Unix epoch.
pub fn wall_ns() -> u64 {
    clock_ns(libc::CLOCK_REALTIME)
}

/// Converts a CLOCK_MONOTONIC timestamp to wall-clock ns, using the offset
/// between the two clocks measured now (read between two monotonic reads so
/// the error is bounded by the time of one clock_gettime).
pub fn mono_to_wall_ns(mono: u64) -> u64 {
    let m0 = mono_ns();
    let w = wall_ns();
    let m1 = mono_ns();
    let offset = w as i128 - ((m0 as i128 + m1 as i128) / 2);
    (mono as i128 + offset).max(0) as u64
}

/// RFC 3339 with nanoseconds, UTC.
pub fn rfc3339_ns(wall_ns: u64) -> String {
    let t = UNIX_EPOCH + std::time::Duration::from_nanos(wall_ns);
    humantime::format_rfc3339_nanos(t).to_string()
}

/// Seconds since the Unix epoch now (for the agent generation).
pub fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversion_is_close_to_now() {
        let w = mono_to_wall_ns(mono_ns());
        let now = wall_ns();
        assert!(now.abs_diff(w) < 50_000_000, "{now} vs {w}");
        assert!(rfc3339_ns(0).starts_with("1970-01-01T00:00:00"));
    }
}
