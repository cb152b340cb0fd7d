//! Half-open links (issue #12 row 12b): a (peer, link) on which this node
//! keeps sending requests and keeps receiving the peer's requests, but no
//! reply comes back. The peer drops everything we send (its XDP program
//! rejects our requests as replays or by their MAC, or a one-way fault
//! eats them) while its own requests still reach us.
//!
//! The XDP deadline re-arms on the peer's requests as well as on its
//! replies, and it must: replies alone would lengthen detection and make a
//! node whose own sender is starved declare every peer dead (issue #13).
//! So the kernel holds such a link up. This slow-path check, fed the fast
//! path's snapshots (every `fastpath::SNAPSHOT_EVERY`), reports it as
//! half-open instead: reachability then treats it as down (membership as
//! one-way loss), and it comes back as soon as a reply arrives again.
//!
//! Verdict: no reply on the link for at least the window, while the kernel
//! holds it up, the peer's requests arrived since the last reply, and at
//! least `min_requests` of our own requests went out since the last reply
//! and before the previous snapshot (so every one of them had a whole
//! snapshot period, far above any round trip, to be answered). The window
//! is `max(4 × node_timeout, 20 × heartbeat_interval, 1 s)` (the floor:
//! a peer resuming from SIGSTOP sends before its kernel answers again,
//! for a few ms; a half-open link is a slow-path diagnosis, not a
//! detector); `min_requests` is
//! half the requests a healthy sender sends in it, at least 10. A lost reply
//! or two does not trigger it (no reply at all for the whole window), nor
//! does a stalled local sender (too few requests went out), nor a link the
//! kernel holds down (the window restarts while it is down, so a link that
//! comes back both ways is not judged on its first packets), nor a peer
//! whose heartbeats say its agent is stale (its kernel refuses to answer on
//! purpose, and membership already excludes it as `stale`).

use std::collections::BTreeMap;

/// The shortest window (ns).
pub const WINDOW_FLOOR_NS: u64 = 1_000_000_000;

/// The verdict's parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Params {
    /// No reply for this long (ns).
    pub window_ns: u64,
    /// Own requests that went unanswered meanwhile, at least.
    pub min_requests: u64,
}

impl Params {
    /// `window = max(4 × node_timeout, 20 × heartbeat_interval, 1 s)`,
    /// `min_requests = max(10, window / (2 × heartbeat_interval))`.
    pub fn for_timing(node_timeout_ns: u64, heartbeat_interval_ns: u64) -> Self {
        let window_ns = node_timeout_ns
            .saturating_mul(4)
            .max(heartbeat_interval_ns.saturating_mul(20))
            .max(WINDOW_FLOOR_NS);
        let min_requests = (window_ns / heartbeat_interval_ns.saturating_mul(2).max(1)).max(10);
        Self {
            window_ns,
            min_requests,
        }
    }
}

/// One (peer, link) as a snapshot shows it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sample {
    /// Valid replies from the peer so far.
    pub replies_rx: u64,
    /// Valid requests from the peer so far.
    pub requests_rx: u64,
    /// Own requests to the peer on this link so far.
    pub sent: u64,
    /// Whether the kernel holds the link up.
    pub kernel_up: bool,
    /// The peer's heartbeats say its agent is stale: its kernel does not
    /// answer, by design (`node_state::STALE`).
    pub peer_stale: bool,
}

/// A change of verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// Half-open from now on: `unanswered` own requests in `silent_ns`
    /// without a reply.
    Opened { unanswered: u64, silent_ns: u64 },
    /// A reply came: the link answers again.
    Closed,
}

#[derive(Clone, Copy, Debug)]
struct Track {
    /// When the last reply (or the reset) was seen, and the counters then.
    since_ns: u64,
    base: Sample,
    /// The previous sample.
    prev: Sample,
    open: bool,
}

/// The half-open verdict of every (peer, link).
#[derive(Clone, Debug)]
pub struct Detector {
    params: Params,
    links: BTreeMap<(u16, u8), Track>,
}

impl Detector {
    pub fn new(params: Params) -> Self {
        Self {
            params,
            links: BTreeMap::new(),
        }
    }

    /// New timing (a reload); verdicts are kept.
    pub fn set_params(&mut self, params: Params) {
        self.params = params;
    }

    /// Forgets the (peer, link)s `keep` rejects (a reload removed them).
    pub fn retain(&mut self, mut keep: impl FnMut(u16, u8) -> bool) {
        self.links.retain(|&(p, l), _| keep(p, l));
    }

    /// Whether `(peer, link)` is half-open now.
    pub fn is_open(&self, peer: u16, link: u8) -> bool {
        self.links.get(&(peer, link)).is_some_and(|t| t.open)
    }

    /// Feeds one snapshot's sample of `(peer, link)` taken at `now_ns`.
    pub fn observe(&mut self, peer: u16, link: u8, s: Sample, now_ns: u64) -> Option<Change> {
        let p = self.params;
        let t = self.links.entry((peer, link)).or_insert(Track {
            since_ns: now_ns,
            base: s,
            prev: s,
            open: false,
        });
        let went_back = s.replies_rx < t.prev.replies_rx
            || s.requests_rx < t.prev.requests_rx
            || s.sent < t.prev.sent;
        let replied = s.replies_rx > t.prev.replies_rx && !went_back;
        let prev = t.prev;
        t.prev = s;
        if replied {
            t.since_ns = now_ns;
            t.base = s;
            if t.open {
                t.open = false;
                return Some(Change::Closed);
            }
            return None;
        }
        if went_back || !s.kernel_up || s.peer_stale {
            // Counters reset (the slot was cleared, the egress stamp came
            // back), the kernel holds the link down, or the peer says it
            // does not answer: judge from now.
            t.since_ns = now_ns;
            t.base = s;
            return None;
        }
        if t.open {
            return None;
        }
        let silent_ns = now_ns.saturating_sub(t.since_ns);
        // Requests that went out before the previous sample: each had a
        // whole snapshot period to be answered.
        let unanswered = prev.sent.saturating_sub(t.base.sent);
        let heard = s.requests_rx > t.base.requests_rx;
        if heard && silent_ns >= p.window_ns && unanswered >= p.min_requests {
            t.open = true;
            return Some(Change::Opened {
                unanswered,
                silent_ns,
            });
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    /// 10 ms interval, 300 ms node_timeout: window 1.2 s, 60 requests.
    fn det() -> Detector {
        let p = Params::for_timing(300 * MS, 10 * MS);
        assert_eq!(p.window_ns, 1_200 * MS);
        assert_eq!(p.min_requests, 60);
        Detector::new(p)
    }

    /// Runs `n` snapshots 100 ms apart from `t`; every snapshot the peer's
    /// requests and our own advance by 10, replies by `replies(i)`.
    fn run(
        d: &mut Detector,
        s: &mut Sample,
        t: &mut u64,
        n: usize,
        sent_per: u64,
        replies: impl Fn(usize) -> u64,
    ) -> Vec<(u64, Change)> {
        let mut out = Vec::new();
        for i in 0..n {
            *t += 100 * MS;
            s.requests_rx += 10;
            s.sent += sent_per;
            s.replies_rx += replies(i);
            if let Some(c) = d.observe(2, 0, *s, *t) {
                out.push((*t, c));
            }
        }
        out
    }

    fn start() -> (Detector, Sample, u64) {
        (
            det(),
            Sample {
                kernel_up: true,
                ..Sample::default()
            },
            1_000 * MS,
        )
    }

    #[test]
    fn a_link_that_never_answers_is_half_open_after_the_window_and_back_on_a_reply() {
        let (mut d, mut s, mut t) = start();
        assert!(run(&mut d, &mut s, &mut t, 50, 10, |_| 10).is_empty());
        let t0 = t;
        let out = run(&mut d, &mut s, &mut t, 20, 10, |_| 0);
        assert_eq!(out.len(), 1, "{out:?}");
        let (at, Change::Opened { unanswered, .. }) = out[0] else {
            panic!("{out:?}")
        };
        assert_eq!(at - t0, 1_200 * MS);
        assert!(unanswered >= 60);
        assert!(d.is_open(2, 0));
        let out = run(&mut d, &mut s, &mut t, 1, 10, |_| 1);
        assert_eq!(out, [(t, Change::Closed)]);
        assert!(!d.is_open(2, 0));
    }

    #[test]
    fn lost_replies_do_not_trigger_it() {
        let (mut d, mut s, mut t) = start();
        // One reply in every 1.1 s: never a full window without one.
        let out = run(&mut d, &mut s, &mut t, 200, 10, |i| u64::from(i % 11 == 10));
        assert!(out.is_empty(), "{out:?}");
    }

    #[test]
    fn a_stalled_local_sender_does_not_trigger_it() {
        let (mut d, mut s, mut t) = start();
        run(&mut d, &mut s, &mut t, 5, 10, |_| 10);
        // Stalled for long (nothing sent, so nothing answered), then it
        // runs again and the peer answers.
        assert!(run(&mut d, &mut s, &mut t, 50, 0, |_| 0).is_empty());
        assert!(run(&mut d, &mut s, &mut t, 5, 10, |_| 10).is_empty());
        // Starved to one request per 100 ms (it should send 10) for two
        // windows: too few to tell a deaf peer from a starved sender.
        assert!(run(&mut d, &mut s, &mut t, 24, 1, |_| 0).is_empty());
    }

    #[test]
    fn a_link_the_kernel_holds_down_is_not_half_open_and_is_judged_afresh_when_up() {
        let (mut d, mut s, mut t) = start();
        run(&mut d, &mut s, &mut t, 5, 10, |_| 10);
        s.kernel_up = false;
        assert!(run(&mut d, &mut s, &mut t, 30, 10, |_| 0).is_empty());
        // Back both ways: the first snapshot may see requests before any
        // reply; that is no verdict.
        s.kernel_up = true;
        assert!(run(&mut d, &mut s, &mut t, 1, 10, |_| 0).is_empty());
        assert!(run(&mut d, &mut s, &mut t, 30, 10, |_| 10).is_empty());
    }

    #[test]
    fn no_verdict_without_the_peers_requests_or_after_a_counter_reset() {
        let (mut d, mut s, mut t) = start();
        run(&mut d, &mut s, &mut t, 5, 10, |_| 10);
        // Kernel up but no request from the peer (a stale snapshot): none.
        for _ in 0..30 {
            t += 100 * MS;
            s.sent += 10;
            assert_eq!(d.observe(2, 0, s, t), None);
        }
        // Counters went back (the slot was reset): the window restarts.
        s = Sample {
            kernel_up: true,
            ..Sample::default()
        };
        assert_eq!(d.observe(2, 0, s, t), None);
        let t0 = t;
        let out = run(&mut d, &mut s, &mut t, 20, 10, |_| 0);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].0 - t0, 1_200 * MS);
    }

    #[test]
    fn a_stale_peer_is_not_half_open() {
        let (mut d, mut s, mut t) = start();
        run(&mut d, &mut s, &mut t, 5, 10, |_| 10);
        s.peer_stale = true;
        assert!(run(&mut d, &mut s, &mut t, 30, 10, |_| 0).is_empty());
        s.peer_stale = false;
        assert!(run(&mut d, &mut s, &mut t, 11, 10, |_| 0).is_empty());
        assert_eq!(run(&mut d, &mut s, &mut t, 1, 10, |_| 0).len(), 1);
    }

    #[test]
    fn the_window_follows_the_timing() {
        // The headline timing: the 1 s floor.
        let p = Params::for_timing(500_000, 250_000);
        assert_eq!(p.window_ns, 1_000 * MS);
        assert_eq!(p.min_requests, 2_000);
        // A slow interval: 4 node_timeouts dominate.
        let p = Params::for_timing(5_000 * MS, 1_000 * MS);
        assert_eq!(p.window_ns, 20_000 * MS);
        assert_eq!(p.min_requests, 10);
    }
}
