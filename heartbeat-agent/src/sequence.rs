//! The heartbeat request sequence: above everything this node sent before,
//! across restarts and clock steps, without reading any clock.
//!
//! Peers drop a request whose sequence is not above the last one they
//! accepted from this node on that link (the XDP program's replay check,
//! `seq <= last_req_seq`). The sequence used to start from the wall clock,
//! so a node restarted after its clock stepped back had every request
//! dropped as a replay (issue 12, row 12). It is now built from the
//! incarnation, the start counter persisted in `cluster.state_file`
//! (`state::StateFile::next_incarnation`, raised and written durably before
//! anything is sent):
//!
//! ```text
//!  63   62 .. 40                 39 .. 0
//! [ 1 | incarnation (23 bits) | counter of this start (40 bits) ]
//! ```
//!
//! This is the 64-bit sequence of RFC 7474 ("Security Extension for OSPFv2
//! When Using Manual Key Management", section 3: a non-volatile boot count
//! in the high bits, a packet counter in the low bits), with two
//! departures:
//! - the top bit is always set, so every sequence is above the wall-clock
//!   nanoseconds (below 2^63 until 2262) that agents before this scheme
//!   sent: a rolling upgrade is accepted by peers that still remember the
//!   old sequences, with no clock involved;
//! - the counter has 40 bits rather than 32 and is not saved when it wraps
//!   (the state file belongs to the cluster task). 2^40 requests last 127
//!   days at the smallest interval (10 µs) to one peer on one link, years
//!   at realistic settings. Past it the sequence carries into the next
//!   incarnation's range (still increasing, logged once); only a restart
//!   after that could then start inside a range already used.
//!
//! 23 bits of incarnation are 8 million starts; a larger incarnation is
//! cut to its low 23 bits (logged), which would break the order, and is
//! out of reach with systemd's start limits.

/// Bits of the per-start counter.
pub const COUNTER_BITS: u32 = 40;
/// Bits of the incarnation in a sequence.
pub const INCARNATION_BITS: u32 = 63 - COUNTER_BITS;
/// Always set: above every wall-clock sequence of older agents.
pub const SCHEME_BIT: u64 = 1 << 63;
const COUNTER_MASK: u64 = (1 << COUNTER_BITS) - 1;
const INCARNATION_MASK: u64 = (1 << INCARNATION_BITS) - 1;

/// The sequence a start with `incarnation` counts up from (its first
/// request carries this plus one).
pub fn first_sequence(incarnation: u32) -> u64 {
    let inc = u64::from(incarnation);
    if inc > INCARNATION_MASK {
        tracing::error!(
            incarnation,
            "incarnation above 2^23: the request sequence wraps; peers may drop this node's requests as replays until they restart"
        );
    }
    SCHEME_BIT | ((inc & INCARNATION_MASK) << COUNTER_BITS)
}

/// The sequence after `seq`. When the counter wraps, the sequence carries
/// into the next incarnation's range (logged once per wrap); it never
/// goes back.
#[inline]
pub fn advance(seq: u64) -> u64 {
    let next = seq.saturating_add(1) | SCHEME_BIT;
    if next & COUNTER_MASK == 0 {
        tracing::error!(
            "the request counter of this start wrapped after 2^40 requests; a restart may see its first requests dropped as replays"
        );
    }
    next
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::StateFile;

    struct Dir(std::path::PathBuf);

    impl Dir {
        fn new(tag: &str) -> Self {
            let p = std::env::temp_dir().join(format!("hb-seq-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            Self(p)
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// What a start used to send first: the wall clock in ns.
    fn old_first(wall_ns: u64) -> u64 {
        wall_ns.wrapping_add(1)
    }

    /// What a start sends first now: from the state file, whatever the clock.
    fn start(state: &std::path::Path) -> u64 {
        let inc = StateFile::open(state).unwrap().next_incarnation().unwrap();
        advance(first_sequence(inc))
    }

    #[test]
    fn a_restart_with_the_clock_set_back_starts_above_everything_sent() {
        let d = Dir::new("restart");
        let state = d.0.join("alpha.state");
        // The injected wall clock of each start: it goes back an hour, a
        // day, then to 1970.
        let clock = [
            1_790_000_000_000_000_000u64,
            1_789_996_400_000_000_000,
            1_789_913_600_000_000_000,
            1,
        ];
        let mut last_new = 0u64;
        let mut last_old = 0u64;
        let mut old_replayed = false;
        for (i, &wall) in clock.iter().enumerate() {
            // The old scheme: a restart after a step back is below what the
            // peer accepted, so the peer drops it (what the issue saw).
            let first_old = old_first(wall);
            old_replayed |= i > 0 && first_old <= last_old;
            last_old = first_old + 1000;
            // The new scheme: above, every time.
            let mut seq = start(&state);
            assert!(seq > last_new, "start {i}: {seq:#x} <= {last_new:#x}");
            for _ in 0..1000 {
                seq = advance(seq);
            }
            last_new = seq;
        }
        assert!(old_replayed, "the old scheme should have failed here");
    }

    #[test]
    fn every_sequence_is_above_the_old_wall_clock_sequences() {
        // Year 2200 in ns is still below the first sequence of incarnation 1.
        let year_2200_ns = 7_258_118_400u64 * 1_000_000_000;
        assert!(advance(first_sequence(1)) > year_2200_ns);
        assert!(first_sequence(1) > first_sequence(0));
        assert!(first_sequence(2) > first_sequence(1) | COUNTER_MASK);
    }

    #[test]
    fn the_counter_wraps_into_the_next_range_and_keeps_increasing() {
        let s = first_sequence(5) | (COUNTER_MASK - 1);
        let a = advance(s);
        let b = advance(a);
        assert!(s < a && a < b);
        assert_eq!(b, first_sequence(6));
        // The very end of the space is never left (never reached either).
        assert_eq!(advance(u64::MAX), u64::MAX);
    }
}
