//! Package leases: when the old owner must stop serving a package, and when
//! a new owner may start it, so that two nodes never serve one package.
//!
//! Leases after Gray and Cheriton, *Leases: An Efficient Fault-Tolerant
//! Mechanism for Distributed File Cache Consistency* (SOSP 1989): a holder
//! acts only while its lease is valid by its own clock, and the other side
//! waits out the lease by *its* clock plus an allowance for clock drift.
//! Here the "grant" is implicit in the heartbeats, as below.
//!
//! Times are local `CLOCK_MONOTONIC` nanoseconds (each node its own clock;
//! nothing here compares two nodes' clock *values*, only durations).
//!
//! # The holder ([`Lease`])
//! The owner O renews package P's lease at its time `s`, to `s + L`, only
//! when all of these hold ([`Renewal`]):
//! - O is a member of a quorate view and the placement of that view's epoch
//!   gives P to O;
//! - P's monitor passes;
//! - `s` is the *send* time of a heartbeat for which O has received replies
//!   from every other member of its view that is eligible for P (P's
//!   possible successors). The renewal is anchored at the send time, not at
//!   the reply's arrival.
//!
//! The XDP program on O passes traffic for P's addresses (and the tc egress
//! program lets traffic from them out) only while `now < s + L`; nothing
//! else extends it, so a dead, hung or partitioned agent goes dark at
//! `s + L` by O's clock.
//!
//! # The successor ([`may_start`])
//! A new owner N starts P only when one of these holds:
//! 1. **expired**: `now_N ≥ t + W`, where `t` is N's time of receiving its
//!    last valid packet from O and `W = L·(1+ρ)/(1−ρ) + m`
//!    ([`LeaseTiming::wait_ns`]);
//! 2. **stop confirmed**: O confirmed (an authenticated message) that P is
//!    stopped, in an epoch at least the last one in which N knew O to own P;
//! 3. **fenced**: the `fence` command for O succeeded after `t`;
//!
//! or there was no previous owner.
//!
//! # Why 1 is safe
//! Assumptions:
//! - **A1, monotonic clocks with bounded drift**: over any real interval of
//!   length `d`, every node's monotonic clock advances by at least
//!   `d·(1−ρ)` and at most `d·(1+ρ)` (`ρ` = [`LeaseTiming::drift_ppm`] /
//!   10⁶; NTP bounds the rate of a disciplined clock at 500 ppm, an
//!   undisciplined crystal is typically within 100 ppm). Clocks are never
//!   stepped (CLOCK_MONOTONIC is not).
//! - **A2, renewals as above**: O renews only while quorate, and every
//!   renewal is anchored at the send time of a heartbeat that every eligible
//!   member of O's view received (O holds their replies).
//! - **A3, causality**: a packet is received after it is sent.
//! - **A4**, N is a member of O's view when O last renewed (N is one of the
//!   nodes whose replies O needed). A node that has never received a valid
//!   packet from O cannot use rule 1 ([`Wait::Unknown`]).
//!
//! Let O's last renewal be anchored at O-time `s*`, real time `S*`. By A2 N
//! received that heartbeat, at a real time `R* ≥ S*` (A3), so N's last valid
//! packet from O arrived at an N-time `t ≥ N(R*) ≥ N(S*)`. O's lease ends at
//! O-time `s* + L`, which by A1 is at real time at most `S* + L/(1−ρ)`; N's
//! clock then reads at most `N(S*) + L·(1+ρ)/(1−ρ) ≤ t + W − m`. So when
//! `now_N ≥ t + W`, O's lease has ended by O's own clock, and its kernel
//! drops P's traffic. The margin `m` ([`LeaseTiming::margin_ns`]) covers
//! what the model leaves out: the time between O's XDP program reading the
//! clock and a packet leaving, and the clock's granularity.
//!
//! Why "O renews only while quorate" alone is not enough: with loss in one
//! direction only (O → N lost, N → O fine), O may keep hearing a quorum and
//! renew while N hears nothing from it; N's `t` then stops advancing while
//! O's lease does not. Requiring the successors' replies (A2) makes every
//! renewal visible to them. It costs availability, not safety: a lost
//! reply delays a renewal, so `L` must span several heartbeat intervals
//! (a lease of at least 3 intervals survives 2 lost replies in a row).
//!
//! Quorum is what keeps N and O from both being quorate owners; the lease is
//! what bounds how long O may *believe* it still is.

use core::fmt;

use crate::ids::Epoch;

/// One million: `drift_ppm` is in parts per million.
const PPM: u128 = 1_000_000;

/// Largest drift bound accepted (10 %: far beyond any real clock; it keeps
/// `1 − ρ` away from zero).
pub const MAX_DRIFT_PPM: u32 = 100_000;

/// Lease length and the allowances for clock error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseTiming {
    /// `L`: how long a renewal holds, by the holder's clock.
    pub lease_ns: u64,
    /// `ρ` in parts per million: the bound on any clock's rate error.
    pub drift_ppm: u32,
    /// `m`: a fixed allowance on top (clock reading to packet latency,
    /// granularity).
    pub margin_ns: u64,
}

/// A [`LeaseTiming`] that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimingError {
    /// A lease of zero length.
    #[error("the lease length must be positive")]
    ZeroLease,
    /// A drift bound above [`MAX_DRIFT_PPM`].
    #[error("clock drift bound {0} ppm is above the maximum of {MAX_DRIFT_PPM} ppm")]
    Drift(u32),
}

impl LeaseTiming {
    /// Checks the values.
    pub fn new(lease_ns: u64, drift_ppm: u32, margin_ns: u64) -> Result<Self, TimingError> {
        if lease_ns == 0 {
            return Err(TimingError::ZeroLease);
        }
        if drift_ppm > MAX_DRIFT_PPM {
            return Err(TimingError::Drift(drift_ppm));
        }
        Ok(Self {
            lease_ns,
            drift_ppm,
            margin_ns,
        })
    }

    /// `W = ⌈L·(1+ρ)/(1−ρ)⌉ + m`, saturating at `u64::MAX` (never expires).
    pub fn wait_ns(&self) -> u64 {
        let rho = u128::from(self.drift_ppm.min(MAX_DRIFT_PPM));
        let num = u128::from(self.lease_ns) * (PPM + rho);
        let den = PPM - rho;
        let scaled = num.div_ceil(den);
        u64::try_from(scaled)
            .unwrap_or(u64::MAX)
            .saturating_add(self.margin_ns)
    }
}

/// Why a holder may renew now; every field must be true ([`Lease::renew`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Renewal {
    /// A member of a quorate view whose placement gives it the package.
    pub quorate_owner: bool,
    /// The package's monitor passes.
    pub monitor_ok: bool,
    /// Every eligible member of the view replied to the heartbeat sent at
    /// the anchor time.
    pub successors_replied: bool,
}

/// The holder's side: until when it may serve the package.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Lease {
    expires_ns: Option<u64>,
}

impl Lease {
    /// Renews to `sent_ns + L` if every condition of `why` holds; returns
    /// whether it did. A renewal never shortens the lease (an older anchor
    /// arriving late changes nothing).
    pub fn renew(&mut self, timing: &LeaseTiming, sent_ns: u64, why: Renewal) -> bool {
        if !(why.quorate_owner && why.monitor_ok && why.successors_replied) {
            return false;
        }
        let until = sent_ns.saturating_add(timing.lease_ns);
        if self.expires_ns.is_some_and(|e| e >= until) {
            return false;
        }
        self.expires_ns = Some(until);
        true
    }

    /// Ends the lease now (the package is being stopped or lost).
    pub fn release(&mut self) {
        self.expires_ns = None;
    }

    /// Whether the package may be served at `now_ns`.
    pub fn is_valid(&self, now_ns: u64) -> bool {
        self.expires_ns.is_some_and(|e| now_ns < e)
    }

    /// Until when (the value the XDP map holds), if ever renewed.
    pub fn expires_ns(&self) -> Option<u64> {
        self.expires_ns
    }

    /// Time left at `now_ns` (0 when expired or never held).
    pub fn remaining_ns(&self, now_ns: u64) -> u64 {
        self.expires_ns.map_or(0, |e| e.saturating_sub(now_ns))
    }
}

/// What the successor knows about the previous owner of a package.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Evidence {
    /// Whether the package had an owner before (another node).
    pub had_owner: bool,
    /// The last epoch in which this node knew the previous owner to own it.
    pub owned_in: Epoch,
    /// Local time of the last valid (authenticated) packet from the
    /// previous owner; `None` if none was ever received.
    pub last_heard_ns: Option<u64>,
    /// The previous owner's confirmation that the package is stopped, with
    /// the epoch it was given in.
    pub stop_confirmed_in: Option<Epoch>,
    /// Local time at which the `fence` command for the previous owner
    /// succeeded.
    pub fenced_at_ns: Option<u64>,
}

/// Why a start may go ahead.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Go {
    /// Nobody owned the package before.
    NoPreviousOwner,
    /// The previous owner confirmed the stop.
    StopConfirmed,
    /// The previous owner was fenced.
    Fenced,
    /// The previous owner's lease has run out by its own clock.
    Expired,
}

/// Why a start must wait.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wait {
    /// Until this local time (then [`Go::Expired`]), unless a confirmation
    /// or a fence comes first.
    Until(u64),
    /// Never heard from the previous owner: only a stop confirmation or a
    /// fence can allow the start.
    Unknown,
}

/// The verdict of [`may_start`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Start now.
    Go(Go),
    /// Not yet.
    Wait(Wait),
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Go(Go::NoPreviousOwner) => f.write_str("start: no previous owner"),
            Self::Go(Go::StopConfirmed) => f.write_str("start: previous owner confirmed the stop"),
            Self::Go(Go::Fenced) => f.write_str("start: previous owner fenced"),
            Self::Go(Go::Expired) => f.write_str("start: previous owner's lease expired"),
            Self::Wait(Wait::Until(t)) => {
                write!(f, "wait for the previous owner's lease until {t} ns")
            }
            Self::Wait(Wait::Unknown) => f.write_str(
                "wait: never heard the previous owner; needs its stop confirmation or a fence",
            ),
        }
    }
}

/// Whether a new owner may start the package at local time `now_ns` (see
/// the module doc for the rule and why it is safe).
pub fn may_start(timing: &LeaseTiming, e: &Evidence, now_ns: u64) -> Verdict {
    if !e.had_owner {
        return Verdict::Go(Go::NoPreviousOwner);
    }
    // A confirmation from an older epoch may predate a later start there.
    if e.stop_confirmed_in.is_some_and(|c| c >= e.owned_in) {
        return Verdict::Go(Go::StopConfirmed);
    }
    // A fence before the last packet heard is stale: the node came back.
    if let Some(f) = e.fenced_at_ns
        && e.last_heard_ns.is_none_or(|t| f >= t)
    {
        return Verdict::Go(Go::Fenced);
    }
    let Some(t) = e.last_heard_ns else {
        return Verdict::Wait(Wait::Unknown);
    };
    let until = t.saturating_add(timing.wait_ns());
    if until == u64::MAX {
        // Saturated: the bound is not representable, so it never expires.
        return Verdict::Wait(Wait::Until(u64::MAX));
    }
    if now_ns >= until {
        Verdict::Go(Go::Expired)
    } else {
        Verdict::Wait(Wait::Until(until))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn timing() -> LeaseTiming {
        // 50 ms lease, 100 ppm, 1 ms margin.
        LeaseTiming::new(50 * MS, 100, MS).unwrap()
    }

    fn heard(t: u64) -> Evidence {
        Evidence {
            had_owner: true,
            owned_in: Epoch(4),
            last_heard_ns: Some(t),
            ..Evidence::default()
        }
    }

    #[test]
    fn wait_covers_the_lease_stretched_by_both_clocks_drift() {
        let t = timing();
        // 50 ms × 1.0001 / 0.9999 = 50.010001… ms, rounded up, + 1 ms.
        assert_eq!(t.wait_ns(), 50_010_002 + MS);
        // No drift: exactly L + m.
        assert_eq!(LeaseTiming::new(50 * MS, 0, 0).unwrap().wait_ns(), 50 * MS);
        // Saturates instead of overflowing.
        assert_eq!(
            LeaseTiming::new(u64::MAX, MAX_DRIFT_PPM, 5)
                .unwrap()
                .wait_ns(),
            u64::MAX
        );
        assert_eq!(LeaseTiming::new(0, 0, 0), Err(TimingError::ZeroLease));
        assert_eq!(
            LeaseTiming::new(1, MAX_DRIFT_PPM + 1, 0),
            Err(TimingError::Drift(MAX_DRIFT_PPM + 1))
        );
    }

    #[test]
    fn the_boundary_is_exact() {
        let t = timing();
        let w = t.wait_ns();
        let at = 1_000 * MS;
        assert_eq!(
            may_start(&t, &heard(at), at + w - 1),
            Verdict::Wait(Wait::Until(at + w))
        );
        assert_eq!(may_start(&t, &heard(at), at + w), Verdict::Go(Go::Expired));
        // A packet "from the future" (caller error): wait the full time.
        assert_eq!(
            may_start(&t, &heard(at), at - 5),
            Verdict::Wait(Wait::Until(at + w))
        );
        // Near the end of the clock: never expires rather than wrapping.
        assert_eq!(
            may_start(&t, &heard(u64::MAX - 10), u64::MAX),
            Verdict::Wait(Wait::Until(u64::MAX))
        );
    }

    #[test]
    fn the_argument_holds_at_the_drift_extremes() {
        // O renews at its time s anchored on a heartbeat N received; O's
        // clock runs slow (its lease lasts longest in real time) and N's
        // fast (N's wait passes quickest). Real time in ns, as f64.
        let t = timing();
        let rho = f64::from(t.drift_ppm) / 1e6;
        let real_send = 10.0 * MS as f64;
        // O's lease ends at real time ≤ send + L/(1-ρ).
        let lease_end_real = real_send + t.lease_ns as f64 / (1.0 - rho);
        // N received the packet right at the send (zero delay, the worst
        // case) and its clock runs at (1+ρ): N's wait W ends at real time
        // send + W/(1+ρ).
        let start_real = real_send + t.wait_ns() as f64 / (1.0 + rho);
        assert!(
            start_real > lease_end_real,
            "N would start at {start_real} before O's lease ends at {lease_end_real}"
        );
        // Without the drift allowance it would not hold.
        let naive = real_send + t.lease_ns as f64 / (1.0 + rho);
        assert!(naive < lease_end_real);
    }

    proptest::proptest! {
        /// Random rates within the bound, delays and send times: the real
        /// time at which N's `may_start` first says Go is never before the
        /// real time at which O's lease ends by O's clock.
        #[test]
        fn a_successor_never_starts_before_the_lease_ends(
            lease_ms in 1u64..10_000,
            drift_ppm in 0u32..=1_000,
            o_rate in -1.0f64..=1.0,
            n_rate in -1.0f64..=1.0,
            send_real in 0u64..1_000_000_000_000,
            delay in 0u64..1_000_000_000,
            n_offset in 0u64..1_000_000_000_000,
        ) {
            // 1 ns margin: the clocks here are integer nanoseconds.
            let t = LeaseTiming::new(lease_ms * MS, drift_ppm, 1).unwrap();
            let rho = f64::from(drift_ppm) / 1e6;
            // Each clock runs at a rate within [1-ρ, 1+ρ].
            let o_speed = 1.0 + o_rate * rho;
            let n_speed = 1.0 + n_rate * rho;
            // O's lease lasts L by its clock: real duration L / o_speed.
            let lease_end_real = send_real as f64 + t.lease_ns as f64 / o_speed;
            // N hears the packet `delay` later and reads its clock then.
            let heard_real = send_real as f64 + delay as f64;
            let n_clock = |real: f64| n_offset as f64 + real * n_speed;
            let heard_n = n_clock(heard_real) as u64;
            let verdict = may_start(&t, &heard(heard_n), heard_n);
            let Verdict::Wait(Wait::Until(until)) = verdict else {
                return Err(proptest::test_runner::TestCaseError::fail(format!("{verdict:?}")));
            };
            // The real time at which N's clock reads `until`.
            let start_real = (until as f64 - n_offset as f64) / n_speed;
            // 1 ns of slack per 10^12 for f64 rounding.
            proptest::prop_assert!(start_real + 1e-3 * (1.0 + start_real / 1e9) >= lease_end_real,
                "start {start_real} < lease end {lease_end_real}");
        }
    }

    #[test]
    fn confirmation_and_fence_short_cut_the_wait_unless_stale() {
        let t = timing();
        let mut e = heard(100 * MS);
        e.stop_confirmed_in = Some(Epoch(4));
        assert_eq!(may_start(&t, &e, 100 * MS), Verdict::Go(Go::StopConfirmed));
        // A confirmation from before the owner last owned it is stale.
        e.stop_confirmed_in = Some(Epoch(3));
        assert!(matches!(may_start(&t, &e, 100 * MS), Verdict::Wait(_)));
        e.stop_confirmed_in = None;
        e.fenced_at_ns = Some(101 * MS);
        assert_eq!(may_start(&t, &e, 101 * MS), Verdict::Go(Go::Fenced));
        // A fence older than the last packet: the node came back since.
        e.fenced_at_ns = Some(99 * MS);
        assert!(matches!(may_start(&t, &e, 101 * MS), Verdict::Wait(_)));
    }

    #[test]
    fn without_any_packet_only_confirmation_or_fence_allow_a_start() {
        let t = timing();
        let mut e = Evidence {
            had_owner: true,
            owned_in: Epoch(2),
            ..Evidence::default()
        };
        assert_eq!(
            may_start(&t, &e, u64::MAX - 1),
            Verdict::Wait(Wait::Unknown)
        );
        e.fenced_at_ns = Some(7);
        assert_eq!(may_start(&t, &e, 8), Verdict::Go(Go::Fenced));
        assert_eq!(
            may_start(&t, &Evidence::default(), 0),
            Verdict::Go(Go::NoPreviousOwner)
        );
    }

    #[test]
    fn the_holder_renews_only_when_every_condition_holds_and_never_shortens() {
        let t = timing();
        let all = Renewal {
            quorate_owner: true,
            monitor_ok: true,
            successors_replied: true,
        };
        let mut l = Lease::default();
        assert!(!l.is_valid(0));
        for missing in [
            Renewal {
                quorate_owner: false,
                ..all
            },
            Renewal {
                monitor_ok: false,
                ..all
            },
            Renewal {
                successors_replied: false,
                ..all
            },
        ] {
            assert!(!l.renew(&t, 10 * MS, missing));
            assert_eq!(l.expires_ns(), None);
        }
        assert!(l.renew(&t, 10 * MS, all));
        assert_eq!(l.expires_ns(), Some(60 * MS));
        assert!(l.is_valid(60 * MS - 1));
        assert!(!l.is_valid(60 * MS));
        assert_eq!(l.remaining_ns(40 * MS), 20 * MS);
        // A late reply to an older heartbeat does not shorten it.
        assert!(!l.renew(&t, 5 * MS, all));
        assert_eq!(l.expires_ns(), Some(60 * MS));
        assert!(l.renew(&t, 20 * MS, all));
        assert_eq!(l.expires_ns(), Some(70 * MS));
        l.release();
        assert!(!l.is_valid(20 * MS));
        assert_eq!(l.remaining_ns(20 * MS), 0);
    }
}
