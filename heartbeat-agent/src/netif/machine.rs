//! The decision logic of standby NIC takeover, as a pure state machine (no
//! I/O, no clock): which of a link's two cards is healthy, which carries
//! the link, when to switch and when to fail back. The `netif` task feeds
//! it carrier changes (rtnetlink link notifications) and one poll
//! [`Observation`] per `network_polling_interval`, and carries out the
//! [`Output`]s.
//!
//! Evidence, per card, as Serviceguard's network manager counts it:
//! - **inbound**: the card received any frame since the last tick (the
//!   XDP program counts every frame per card: the other card's poll
//!   requests and replies, and on the active card the peers' heartbeats);
//! - **outbound**: a poll frame this card sent reached the other card.
//!
//! A tick is one polling round: the task sends the polls, waits
//! [`reply_wait`] for the answers (the XDP program answers in microseconds),
//! and then reports the round. So a lost poll is counted a fraction of an
//! interval after it was sent, not at the next tick.
//!
//! Outbound *fails* after [`MISS_LIMIT`] rounds in a row without an
//! answer: a single lost poll never fails a card. `inout`: a card has
//! failed when its outbound failed and it also heard nothing at all in the
//! last [`inbound_window`] (a polling interval, or two heartbeat intervals
//! when longer: the other card's poll and, on the active card, the peers'
//! heartbeats); `inonly_or_inout`: inbound silence at [`MISS_LIMIT`]
//! reports in a row suffices on its own. (Asking for two silent
//! rounds inbound as well as outbound under `inout` made a cut that fell
//! late in a round wait one round more: the frames heard before the cut
//! count for that round.) So a failure that only polling can see is
//! declared between 1 and 2 intervals (plus [`reply_wait`]) after it
//! happens. Carrier loss fails a card at once. Poll evidence is only
//! weighed while both cards have carrier (a card without carrier cannot
//! answer polls).
//!
//! With two cards, a break of the path between them silences both
//! identically. The tie is broken against the active card: it normally
//! hears its peers' heartbeats besides the polls, the standby only the
//! polls, so "both silent" means the active card heard nothing at all.
//! Trying the standby costs one switch; if it is cut off too, it fails in
//! turn and the link is down (no switch back until a card recovers).
//!
//! A failed card recovers at the first tick where it has carrier and both
//! its directions show evidence again (or at once when it regains carrier
//! while the other card has none, as polls are impossible then; and a card
//! failed by polls alone recovers when the other card loses carrier, as
//! the polls' verdict was about the pair). The link
//! fails back to its primary card once the primary has stayed recovered
//! for `failback_hold`, when `auto_failback`.

use std::time::Duration;

/// Consecutive rounds without an answer after which outbound has failed
/// (and without any frame, after which inbound alone has failed, for
/// `inonly_or_inout`).
pub const MISS_LIMIT: u32 = 2;
/// Under `inout`, rounds without any frame after which inbound has failed
/// (outbound must have failed as well).
pub const INOUT_SILENT_ROUNDS: u32 = 1;

/// How long after sending a round's polls its answers are looked for: a
/// fifth of the polling interval, at least 1 ms (a poll is answered by the
/// XDP program of the other card, in tens of microseconds on a healthy
/// segment; an answer later than this counts for the next round).
pub fn reply_wait(polling_interval: Duration) -> Duration {
    (polling_interval / 5).max(Duration::from_millis(1))
}

/// How far back a report looks for inbound evidence (any frame): one
/// polling interval, or two heartbeat intervals when that is longer. The
/// active card hears its peers every heartbeat interval (their requests
/// and the answers to its own), so while its side of the segment works it
/// hears something in this window even when the standby's side is cut and
/// no poll arrives: it is not blamed for the standby's cut.
pub fn inbound_window(polling_interval: Duration, heartbeat_interval: Duration) -> Duration {
    polling_interval.max(heartbeat_interval.saturating_mul(2))
}

/// `cluster.network_failure_detection`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FailureDetection {
    /// A card has failed when inbound and outbound polls both fail.
    #[default]
    InOut,
    /// Inbound failure alone suffices.
    InOnlyOrInOut,
}

impl FailureDetection {
    /// The spelling in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureDetection::InOut => "inout",
            FailureDetection::InOnlyOrInOut => "inonly_or_inout",
        }
    }
}

/// The network manager's settings (`[cluster]` keys).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetifSettings {
    /// `network_polling_interval`.
    pub polling_interval: Duration,
    /// `network_failure_detection`.
    pub detection: FailureDetection,
    /// `auto_failback`.
    pub auto_failback: bool,
    /// `failback_hold`.
    pub failback_hold: Duration,
    /// `network_announce_count`: gratuitous ARPs / unsolicited NAs sent
    /// per address after a switch.
    pub announce_count: u32,
}

/// Default `cluster.network_polling_interval` (Serviceguard's is 2 s).
pub const DEFAULT_POLLING_INTERVAL: Duration = Duration::from_millis(100);
/// Default `cluster.failback_hold`.
pub const DEFAULT_FAILBACK_HOLD: Duration = Duration::from_secs(5);
/// Default `cluster.network_announce_count`.
pub const DEFAULT_ANNOUNCE_COUNT: u32 = 3;

impl Default for NetifSettings {
    fn default() -> Self {
        Self {
            polling_interval: DEFAULT_POLLING_INTERVAL,
            detection: FailureDetection::InOut,
            auto_failback: true,
            failback_hold: DEFAULT_FAILBACK_HOLD,
            announce_count: DEFAULT_ANNOUNCE_COUNT,
        }
    }
}

/// One of a link's two cards.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Card {
    /// The configured `interface`.
    Primary,
    /// The configured `standby`.
    Standby,
}

impl Card {
    /// The other card.
    pub fn other(self) -> Card {
        match self {
            Card::Primary => Card::Standby,
            Card::Standby => Card::Primary,
        }
    }

    fn ix(self) -> usize {
        match self {
            Card::Primary => 0,
            Card::Standby => 1,
        }
    }

    /// `primary` or `standby`.
    pub fn as_str(self) -> &'static str {
        match self {
            Card::Primary => "primary",
            Card::Standby => "standby",
        }
    }
}

/// Why a card failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Cause {
    /// The card lost carrier (or went down, or disappeared).
    Carrier,
    /// Only its inbound polls failed (`inonly_or_inout`).
    PollIn,
    /// Its outbound polls failed, and its inbound ones too.
    PollOut,
}

impl Cause {
    /// The journal's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Cause::Carrier => "carrier",
            Cause::PollIn => "poll_in",
            Cause::PollOut => "poll_out",
        }
    }
}

/// Why the link moved to another card.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SwitchCause {
    /// The active card failed.
    Failed(Cause),
    /// The primary card recovered and held for `failback_hold`.
    Failback,
    /// Both cards had failed and this one recovered first.
    Recovered,
}

impl SwitchCause {
    /// The journal's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            SwitchCause::Failed(c) => c.as_str(),
            SwitchCause::Failback => "failback",
            SwitchCause::Recovered => "recovered",
        }
    }
}

/// What the polls showed for one round (a tick), reported [`reply_wait`]
/// after the round's polls were sent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Observation {
    /// Per card (primary, standby): it received any frame within the
    /// [`inbound_window`] before the report.
    pub inbound: [bool; 2],
    /// Per card: a poll frame it sent reached the other card (the other
    /// card counted the request, or its answer came back).
    pub outbound: [bool; 2],
}

/// What the task must do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    /// `card` failed (journal `nic_failed`).
    Failed { card: Card, cause: Cause },
    /// `card` is healthy again (journal `nic_recovered`).
    Recovered { card: Card },
    /// Move the link (its addresses, routes, socket) from `from` to `to`
    /// (journal `nic_switched`).
    Switch {
        from: Card,
        to: Card,
        cause: SwitchCause,
    },
    /// Both cards have failed: the link is down until one recovers.
    BothFailed,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct CardState {
    carrier: bool,
    in_miss: u32,
    out_miss: u32,
    failed: Option<Cause>,
    /// When it last recovered (or `None` while failed / never failed).
    healthy_since_ns: Option<u64>,
}

/// The state of one link's pair of cards.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pair {
    detection: FailureDetection,
    auto_failback: bool,
    failback_hold_ns: u64,
    cards: [CardState; 2],
    active: Card,
    both_failed: bool,
}

impl Pair {
    /// A pair carried by `active` (the card holding the link's address at
    /// start: an agent restarted while on the standby resumes there), with
    /// the cards' carrier at start.
    pub fn new(settings: &NetifSettings, active: Card, carrier: [bool; 2], now_ns: u64) -> Self {
        let card = |c: bool| CardState {
            carrier: c,
            failed: (!c).then_some(Cause::Carrier),
            healthy_since_ns: c.then_some(now_ns),
            ..CardState::default()
        };
        Self {
            detection: settings.detection,
            auto_failback: settings.auto_failback,
            failback_hold_ns: settings.failback_hold.as_nanos() as u64,
            cards: [card(carrier[0]), card(carrier[1])],
            active,
            both_failed: false,
        }
    }

    /// The card carrying the link.
    pub fn active(&self) -> Card {
        self.active
    }

    /// Why `card` is failed, if it is.
    pub fn failed(&self, card: Card) -> Option<Cause> {
        self.cards[card.ix()].failed
    }

    /// Whether both cards are failed (the link is down).
    pub fn both_failed(&self) -> bool {
        self.both_failed
    }

    /// Decisions to take right after [`Pair::new`] (a dead active card at
    /// start).
    pub fn start(&mut self, now_ns: u64) -> Vec<Output> {
        let mut out = Vec::new();
        self.decide(now_ns, &mut out);
        out
    }

    /// A carrier change of `card` (seen at once through rtnetlink).
    pub fn on_carrier(&mut self, card: Card, up: bool, now_ns: u64) -> Vec<Output> {
        let mut out = Vec::new();
        let other_carrier = self.cards[card.other().ix()].carrier;
        let c = &mut self.cards[card.ix()];
        if c.carrier == up {
            return out;
        }
        c.carrier = up;
        c.in_miss = 0;
        c.out_miss = 0;
        if !up {
            if c.failed.is_none() {
                c.failed = Some(Cause::Carrier);
                c.healthy_since_ns = None;
                out.push(Output::Failed {
                    card,
                    cause: Cause::Carrier,
                });
            }
            // Poll verdicts on the other card were relative to this one,
            // which is dead now: its carrier is all the evidence left.
            let o = &mut self.cards[card.other().ix()];
            if o.carrier && matches!(o.failed, Some(Cause::PollIn | Cause::PollOut)) {
                o.failed = None;
                o.healthy_since_ns = Some(now_ns);
                o.in_miss = 0;
                o.out_miss = 0;
                out.push(Output::Recovered { card: card.other() });
            }
        } else if !other_carrier && c.failed.is_some() {
            // No polls possible with the other card dead: carrier is all
            // the evidence there is.
            c.failed = None;
            c.healthy_since_ns = Some(now_ns);
            out.push(Output::Recovered { card });
        }
        self.decide(now_ns, &mut out);
        out
    }

    /// One polling tick's evidence.
    pub fn on_tick(&mut self, obs: Observation, now_ns: u64) -> Vec<Output> {
        let mut out = Vec::new();
        let both_carrier = self.cards.iter().all(|c| c.carrier);
        if both_carrier {
            for card in [Card::Primary, Card::Standby] {
                let c = &mut self.cards[card.ix()];
                c.in_miss = if obs.inbound[card.ix()] {
                    0
                } else {
                    c.in_miss.saturating_add(1)
                };
                c.out_miss = if obs.outbound[card.ix()] {
                    0
                } else {
                    c.out_miss.saturating_add(1)
                };
            }
            let verdict = |c: &CardState| -> Option<Cause> {
                let silent = c.in_miss >= INOUT_SILENT_ROUNDS;
                let in_failed = c.in_miss >= MISS_LIMIT;
                let out_failed = c.out_miss >= MISS_LIMIT;
                match (silent, in_failed, out_failed, self.detection) {
                    (true, _, true, _) => Some(Cause::PollOut),
                    (_, true, false, FailureDetection::InOnlyOrInOut) => Some(Cause::PollIn),
                    _ => None,
                }
            };
            let mut v = [verdict(&self.cards[0]), verdict(&self.cards[1])];
            if v[0].is_some() && v[1].is_some() {
                // The path between the cards is broken: blame the active one.
                v[self.active.other().ix()] = None;
            }
            for card in [Card::Primary, Card::Standby] {
                let c = &mut self.cards[card.ix()];
                match (c.failed, v[card.ix()]) {
                    (None, Some(cause)) => {
                        c.failed = Some(cause);
                        c.healthy_since_ns = None;
                        out.push(Output::Failed { card, cause });
                    }
                    (Some(_), None) if c.in_miss == 0 && c.out_miss == 0 => {
                        c.failed = None;
                        c.healthy_since_ns = Some(now_ns);
                        out.push(Output::Recovered { card });
                    }
                    _ => {}
                }
            }
        }
        self.decide(now_ns, &mut out);
        out
    }

    fn decide(&mut self, now_ns: u64, out: &mut Vec<Output>) {
        let active = self.active;
        let other = active.other();
        let a = self.cards[active.ix()];
        let o = self.cards[other.ix()];
        match (a.failed, o.failed) {
            (Some(cause), None) => {
                self.active = other;
                let cause = if self.both_failed {
                    SwitchCause::Recovered
                } else {
                    SwitchCause::Failed(cause)
                };
                self.both_failed = false;
                out.push(Output::Switch {
                    from: active,
                    to: other,
                    cause,
                });
            }
            (Some(_), Some(_)) => {
                if !self.both_failed {
                    self.both_failed = true;
                    out.push(Output::BothFailed);
                }
            }
            (None, _) => {
                self.both_failed = false;
                if active == Card::Standby
                    && self.auto_failback
                    && o.failed.is_none()
                    && o.healthy_since_ns
                        .is_some_and(|t| now_ns.saturating_sub(t) >= self.failback_hold_ns)
                {
                    self.active = Card::Primary;
                    out.push(Output::Switch {
                        from: Card::Standby,
                        to: Card::Primary,
                        cause: SwitchCause::Failback,
                    });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MS: u64 = 1_000_000;

    fn settings(detection: FailureDetection, auto_failback: bool) -> NetifSettings {
        NetifSettings {
            polling_interval: Duration::from_millis(10),
            detection,
            auto_failback,
            failback_hold: Duration::from_millis(100),
            announce_count: 1,
        }
    }

    const CLEAN: Observation = Observation {
        inbound: [true, true],
        outbound: [true, true],
    };

    fn switches(out: &[Output]) -> Vec<(Card, SwitchCause)> {
        out.iter()
            .filter_map(|o| match o {
                Output::Switch { to, cause, .. } => Some((*to, *cause)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn carrier_loss_switches_at_once_and_fails_back_after_the_hold() {
        let mut p = Pair::new(
            &settings(FailureDetection::InOut, true),
            Card::Primary,
            [true, true],
            0,
        );
        assert!(p.start(0).is_empty());
        let out = p.on_carrier(Card::Primary, false, MS);
        assert_eq!(
            out,
            vec![
                Output::Failed {
                    card: Card::Primary,
                    cause: Cause::Carrier
                },
                Output::Switch {
                    from: Card::Primary,
                    to: Card::Standby,
                    cause: SwitchCause::Failed(Cause::Carrier)
                }
            ]
        );
        assert_eq!(p.active(), Card::Standby);
        // Carrier back: still failed until the polls are clean.
        assert!(p.on_carrier(Card::Primary, true, 2 * MS).is_empty());
        let out = p.on_tick(CLEAN, 10 * MS);
        assert_eq!(
            out,
            vec![Output::Recovered {
                card: Card::Primary
            }]
        );
        assert!(switches(&p.on_tick(CLEAN, 50 * MS)).is_empty());
        assert_eq!(
            switches(&p.on_tick(CLEAN, 110 * MS)),
            vec![(Card::Primary, SwitchCause::Failback)]
        );
        assert_eq!(p.active(), Card::Primary);
    }

    #[test]
    fn no_failback_without_auto_failback() {
        let mut p = Pair::new(
            &settings(FailureDetection::InOut, false),
            Card::Primary,
            [true, true],
            0,
        );
        p.on_carrier(Card::Primary, false, MS);
        p.on_carrier(Card::Primary, true, 2 * MS);
        for t in 1..100 {
            assert!(switches(&p.on_tick(CLEAN, t * 10 * MS)).is_empty());
        }
        assert_eq!(p.active(), Card::Standby);
        assert_eq!(p.failed(Card::Primary), None);
    }

    /// The active card's cable cut beyond the card: both directions of
    /// both cards go silent; the active card is blamed.
    #[test]
    fn a_cut_between_the_cards_blames_the_active_card() {
        for d in [FailureDetection::InOut, FailureDetection::InOnlyOrInOut] {
            let mut p = Pair::new(&settings(d, true), Card::Primary, [true, true], 0);
            let silent = Observation::default();
            assert!(p.on_tick(silent, 10 * MS).is_empty());
            let out = p.on_tick(silent, 20 * MS);
            assert_eq!(
                out,
                vec![
                    Output::Failed {
                        card: Card::Primary,
                        cause: Cause::PollOut
                    },
                    Output::Switch {
                        from: Card::Primary,
                        to: Card::Standby,
                        cause: SwitchCause::Failed(Cause::PollOut)
                    }
                ]
            );
            // On the standby, the peers' heartbeats arrive; the primary
            // stays silent and failed: no switch back.
            let after = Observation {
                inbound: [false, true],
                outbound: [false, false],
            };
            for t in 3..50 {
                assert!(switches(&p.on_tick(after, t * 10 * MS)).is_empty(), "{d:?}");
            }
            assert_eq!(p.failed(Card::Primary), Some(Cause::PollOut));
            assert_eq!(p.failed(Card::Standby), None);
        }
    }

    /// Frames no longer reach the active card, but its own still leave.
    #[test]
    fn inbound_only_failure_depends_on_the_detection_mode() {
        let obs = Observation {
            inbound: [false, true],
            outbound: [true, false],
        };
        let mut inout = Pair::new(
            &settings(FailureDetection::InOut, true),
            Card::Primary,
            [true, true],
            0,
        );
        for t in 1..20 {
            assert!(inout.on_tick(obs, t * 10 * MS).is_empty());
        }
        let mut inonly = Pair::new(
            &settings(FailureDetection::InOnlyOrInOut, true),
            Card::Primary,
            [true, true],
            0,
        );
        assert!(inonly.on_tick(obs, 10 * MS).is_empty());
        assert_eq!(
            switches(&inonly.on_tick(obs, 20 * MS)),
            vec![(Card::Standby, SwitchCause::Failed(Cause::PollIn))]
        );
    }

    /// The cut falls late in a round: the active card heard frames
    /// earlier in that round, but its poll of that round is lost already.
    /// The second lost poll decides, without waiting for a second silent
    /// round.
    #[test]
    fn a_cut_late_in_a_round_is_declared_at_the_second_lost_poll() {
        let mut p = Pair::new(
            &settings(FailureDetection::InOut, true),
            Card::Primary,
            [true, true],
            0,
        );
        let heard_before_the_cut = Observation {
            inbound: [true, true],
            outbound: [false, false],
        };
        assert!(p.on_tick(heard_before_the_cut, 10 * MS).is_empty());
        assert_eq!(
            switches(&p.on_tick(Observation::default(), 20 * MS)),
            vec![(Card::Standby, SwitchCause::Failed(Cause::PollOut))]
        );
    }

    /// A single lost round (every poll lost, nothing heard) is never a
    /// failure, in either mode, however often it recurs.
    #[test]
    fn a_single_lost_round_never_fails_a_card() {
        for d in [FailureDetection::InOut, FailureDetection::InOnlyOrInOut] {
            let mut p = Pair::new(&settings(d, true), Card::Primary, [true, true], 0);
            for t in 1..100 {
                let obs = if t % 2 == 0 {
                    Observation::default()
                } else {
                    CLEAN
                };
                assert!(p.on_tick(obs, t * 10 * MS).is_empty(), "{d:?} at {t}");
            }
        }
    }

    /// The active card still hears its peers while its polls are lost
    /// (the standby's side is cut): the active card is not blamed, under
    /// `inout`, however long it lasts.
    #[test]
    fn lost_polls_while_hearing_peers_do_not_fail_the_active_card() {
        let mut p = Pair::new(
            &settings(FailureDetection::InOut, true),
            Card::Primary,
            [true, true],
            0,
        );
        let obs = Observation {
            inbound: [true, false],
            outbound: [false, false],
        };
        for t in 1..50 {
            assert!(switches(&p.on_tick(obs, t * 10 * MS)).is_empty());
        }
        assert_eq!(p.failed(Card::Primary), None);
        assert_eq!(p.failed(Card::Standby), Some(Cause::PollOut));
    }

    #[test]
    fn the_inbound_window_covers_two_heartbeats() {
        let ms = Duration::from_millis;
        assert_eq!(inbound_window(ms(10), ms(5)), ms(10));
        assert_eq!(inbound_window(ms(100), ms(100)), ms(200));
        assert_eq!(inbound_window(ms(100), ms(10)), ms(100));
    }

    #[test]
    fn reply_wait_is_a_fifth_of_the_interval_and_at_least_1ms() {
        assert_eq!(
            reply_wait(Duration::from_millis(10)),
            Duration::from_millis(2)
        );
        assert_eq!(
            reply_wait(Duration::from_secs(2)),
            Duration::from_millis(400)
        );
        assert_eq!(
            reply_wait(Duration::from_millis(1)),
            Duration::from_millis(1)
        );
    }

    #[test]
    fn standby_failure_is_reported_and_nothing_moves() {
        let mut p = Pair::new(
            &settings(FailureDetection::InOut, true),
            Card::Primary,
            [true, true],
            0,
        );
        let obs = Observation {
            inbound: [true, false],
            outbound: [false, false],
        };
        p.on_tick(obs, 10 * MS);
        assert_eq!(
            p.on_tick(obs, 20 * MS),
            vec![Output::Failed {
                card: Card::Standby,
                cause: Cause::PollOut
            }]
        );
        assert_eq!(p.active(), Card::Primary);
    }

    #[test]
    fn both_cards_dead_is_link_down_then_the_first_back_carries_it() {
        let mut p = Pair::new(
            &settings(FailureDetection::InOut, true),
            Card::Primary,
            [true, true],
            0,
        );
        p.on_carrier(Card::Primary, false, MS);
        let out = p.on_carrier(Card::Standby, false, 2 * MS);
        assert!(out.contains(&Output::BothFailed));
        assert!(p.both_failed());
        let out = p.on_carrier(Card::Primary, true, 3 * MS);
        assert_eq!(
            switches(&out),
            vec![(Card::Primary, SwitchCause::Recovered)]
        );
        assert!(!p.both_failed());
    }

    /// The link moved away from a card the polls condemned; then the
    /// standby loses carrier: the condemned card, which has carrier, is
    /// the better bet than no link at all.
    #[test]
    fn a_poll_failed_card_is_used_again_when_the_other_dies() {
        let mut p = Pair::new(
            &settings(FailureDetection::InOut, false),
            Card::Primary,
            [true, true],
            0,
        );
        let silent = Observation::default();
        p.on_tick(silent, 10 * MS);
        assert_eq!(
            switches(&p.on_tick(silent, 20 * MS)),
            vec![(Card::Standby, SwitchCause::Failed(Cause::PollOut))]
        );
        let out = p.on_carrier(Card::Standby, false, 30 * MS);
        assert!(out.contains(&Output::Recovered {
            card: Card::Primary
        }));
        assert_eq!(
            switches(&out),
            vec![(Card::Primary, SwitchCause::Failed(Cause::Carrier))]
        );
        assert!(!p.both_failed());
    }

    #[test]
    fn a_dead_primary_at_start_switches_at_once() {
        let mut p = Pair::new(
            &settings(FailureDetection::InOut, true),
            Card::Primary,
            [false, true],
            0,
        );
        assert_eq!(
            switches(&p.start(0)),
            vec![(Card::Standby, SwitchCause::Failed(Cause::Carrier))]
        );
    }

    #[test]
    fn a_restart_on_the_standby_resumes_there() {
        let mut p = Pair::new(
            &settings(FailureDetection::InOut, false),
            Card::Standby,
            [true, true],
            0,
        );
        assert!(p.start(0).is_empty());
        assert_eq!(p.active(), Card::Standby);
    }

    #[derive(Clone, Debug)]
    enum Step {
        Carrier(bool, bool),
        Tick([bool; 4]),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (any::<bool>(), any::<bool>()).prop_map(|(c, u)| Step::Carrier(c, u)),
            any::<[bool; 4]>().prop_map(Step::Tick),
        ]
    }

    proptest! {
        /// Ticks only (both cards keep carrier): a card fails by polls
        /// only when its outbound went unanswered for MISS_LIMIT rounds in
        /// a row and it heard nothing in the last round (`inout`), or
        /// heard nothing for MISS_LIMIT rounds (`inonly_or_inout`): a
        /// single lost poll never fails a card.
        #[test]
        fn poll_failures_need_the_rule_s_evidence(
            ticks in proptest::collection::vec(any::<[bool; 4]>(), 1..200),
            inonly in any::<bool>(),
        ) {
            let d = if inonly { FailureDetection::InOnlyOrInOut } else { FailureDetection::InOut };
            let mut p = Pair::new(&settings(d, true), Card::Primary, [true, true], 0);
            let mut hist: Vec<Observation> = Vec::new();
            for (n, b) in ticks.into_iter().enumerate() {
                let obs = Observation { inbound: [b[0], b[1]], outbound: [b[2], b[3]] };
                hist.push(obs);
                let out = p.on_tick(obs, (n as u64 + 1) * 10 * MS);
                for o in &out {
                    if let Output::Failed { card, cause } = *o {
                        let k = card.ix();
                        let last = |r: usize, f: &dyn Fn(&Observation) -> bool| {
                            hist.len() >= r && hist[hist.len() - r..].iter().all(f)
                        };
                        let out_lost = last(MISS_LIMIT as usize, &|o| !o.outbound[k]);
                        let silent = last(INOUT_SILENT_ROUNDS as usize, &|o| !o.inbound[k]);
                        let long_silent = last(MISS_LIMIT as usize, &|o| !o.inbound[k]);
                        match cause {
                            Cause::PollOut => prop_assert!(out_lost && silent),
                            Cause::PollIn => prop_assert!(inonly && long_silent),
                            Cause::Carrier => prop_assert!(false, "no carrier change"),
                        }
                    }
                }
            }
        }

        /// Whatever happens: a switch always leaves a failed card for a
        /// healthy one (or fails back to a healthy primary), the active
        /// card is failed only when both are, and `BothFailed` is reported
        /// once per outage.
        #[test]
        fn switches_only_to_healthy_cards(
            steps in proptest::collection::vec(step(), 1..200),
            inonly in any::<bool>(),
            failback in any::<bool>(),
        ) {
            let d = if inonly { FailureDetection::InOnlyOrInOut } else { FailureDetection::InOut };
            let mut p = Pair::new(&settings(d, failback), Card::Primary, [true, true], 0);
            let mut now = 0;
            let mut down = false;
            for s in steps {
                now += 10 * MS;
                let out = match s {
                    Step::Carrier(primary, up) => {
                        let card = if primary { Card::Primary } else { Card::Standby };
                        p.on_carrier(card, up, now)
                    }
                    Step::Tick(b) => p.on_tick(
                        Observation { inbound: [b[0], b[1]], outbound: [b[2], b[3]] },
                        now,
                    ),
                };
                for o in &out {
                    match *o {
                        Output::Switch { from, to, cause } => {
                            prop_assert_eq!(p.failed(to), None);
                            prop_assert_ne!(from, to);
                            if cause == SwitchCause::Failback {
                                prop_assert!(failback);
                                prop_assert_eq!(to, Card::Primary);
                            }
                            down = false;
                        }
                        Output::BothFailed => {
                            prop_assert!(!down);
                            down = true;
                        }
                        Output::Recovered { .. } => down = false,
                        Output::Failed { .. } => {}
                    }
                }
                if p.failed(p.active()).is_some() {
                    prop_assert!(p.failed(p.active().other()).is_some());
                    prop_assert!(p.both_failed());
                }
            }
        }
    }
}
