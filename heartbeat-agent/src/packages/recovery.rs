//! What a node does with the result of one of its package's actions
//! (issue #9, "Behaviour"): a failing monitor restarts the package in place
//! up to `restart_limit` times, then the package fails over; a failing
//! start gives the package up on this node (the next node tries); a failing
//! stop escalates. Pure: the caller runs the actions ([`super::runner`])
//! and feeds their [`Outcome`]s in.
//!
//! How bad a failure is comes from [`Outcome::failure`] (Pacemaker's
//! recovery types for OCF agents): soft failures of `monitor` are restarted
//! in place while restarts remain; hard ones (OCF 2–5, an agent that cannot
//! be run) ban this node at once; fatal ones (OCF 6) stop the package
//! everywhere. A failed start bans this node for the package, as
//! Pacemaker's default `start-failure-is-fatal = true` does. A stop that
//! fails or times out leaves the service possibly running: only a fence or
//! leaving the cluster (so that the lease rules apply) is safe.

use super::runner::{Action, Outcome, Recovery};

/// Why this node gives a package up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GiveUp {
    /// Ban the package from this node (the next node takes it).
    BanHere(BanCause),
    /// A configuration error: no node may run it.
    Fatal,
}

/// Why a package is banned from this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BanCause {
    /// The monitor kept failing after `restart_limit` restarts in place.
    RestartLimit,
    /// The start failed (or timed out).
    StartFailed,
    /// A hard failure (OCF 2–5, or the program could not be run).
    Hard,
}

/// What to do next after a `start` or `monitor`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// Nothing: it runs.
    Keep,
    /// Stop and start it again here; `attempt` counts from 1.
    RestartInPlace {
        /// Which restart this is.
        attempt: u32,
    },
    /// Stop it here and give it up.
    GiveUp(GiveUp),
}

/// What to do after a `stop`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AfterStop {
    /// It is stopped (0, or OCF 7 "not running").
    Stopped,
    /// It may still run: fence this node if a `fence` command exists,
    /// else leave the cluster so the lease runs out.
    Escalate,
}

/// One package's recovery state on this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LocalRecovery {
    restart_limit: u32,
    restarts: u32,
}

impl LocalRecovery {
    /// A package with `restart_limit` restarts in place.
    pub fn new(restart_limit: u32) -> Self {
        Self {
            restart_limit,
            restarts: 0,
        }
    }

    /// Restarts in place used since the package started here.
    pub fn restarts(&self) -> u32 {
        self.restarts
    }

    /// The package (re)starts here afresh (placed here anew, or started by
    /// the operator): the restart count begins again.
    pub fn reset(&mut self) {
        self.restarts = 0;
    }

    /// After a `monitor`.
    pub fn after_monitor(&mut self, outcome: &Outcome) -> Next {
        match outcome.failure(Action::Monitor) {
            None => Next::Keep,
            Some(Recovery::Fatal) => Next::GiveUp(GiveUp::Fatal),
            Some(Recovery::Hard) => Next::GiveUp(GiveUp::BanHere(BanCause::Hard)),
            Some(Recovery::Soft) if self.restarts < self.restart_limit => {
                self.restarts += 1;
                Next::RestartInPlace {
                    attempt: self.restarts,
                }
            }
            Some(Recovery::Soft) => Next::GiveUp(GiveUp::BanHere(BanCause::RestartLimit)),
        }
    }

    /// After a `start` (also one of a restart in place).
    pub fn after_start(&mut self, outcome: &Outcome) -> Next {
        match outcome.failure(Action::Start) {
            None => Next::Keep,
            Some(Recovery::Fatal) => Next::GiveUp(GiveUp::Fatal),
            Some(Recovery::Hard) => Next::GiveUp(GiveUp::BanHere(BanCause::Hard)),
            Some(Recovery::Soft) => Next::GiveUp(GiveUp::BanHere(BanCause::StartFailed)),
        }
    }
}

/// After a `stop`: only a clean stop is a stop.
pub fn after_stop(outcome: &Outcome) -> AfterStop {
    match outcome.failure(Action::Stop) {
        None => AfterStop::Stopped,
        Some(_) => AfterStop::Escalate,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packages::runner::Kill;

    fn failed(code: i32, recovery: Recovery) -> Outcome {
        Outcome::Failed { code, recovery }
    }

    #[test]
    fn monitor_failures_restart_in_place_up_to_the_limit_then_fail_over() {
        let mut r = LocalRecovery::new(2);
        assert_eq!(r.after_monitor(&Outcome::Success), Next::Keep);
        assert_eq!(
            r.after_monitor(&failed(1, Recovery::Soft)),
            Next::RestartInPlace { attempt: 1 }
        );
        assert_eq!(r.after_start(&Outcome::Success), Next::Keep);
        // A passing monitor in between does not give restarts back.
        assert_eq!(r.after_monitor(&Outcome::Success), Next::Keep);
        assert_eq!(
            r.after_monitor(&Outcome::NotRunning),
            Next::RestartInPlace { attempt: 2 }
        );
        assert_eq!(
            r.after_monitor(&Outcome::TimedOut(Kill::Terminated)),
            Next::GiveUp(GiveUp::BanHere(BanCause::RestartLimit))
        );
        assert_eq!(r.restarts(), 2);
        r.reset();
        assert_eq!(
            r.after_monitor(&failed(1, Recovery::Soft)),
            Next::RestartInPlace { attempt: 1 }
        );
        // restart_limit = 0: the first failure fails over.
        let mut r = LocalRecovery::new(0);
        assert_eq!(
            r.after_monitor(&failed(1, Recovery::Soft)),
            Next::GiveUp(GiveUp::BanHere(BanCause::RestartLimit))
        );
    }

    #[test]
    fn hard_and_fatal_failures_skip_the_restarts() {
        let mut r = LocalRecovery::new(5);
        assert_eq!(
            r.after_monitor(&failed(5, Recovery::Hard)),
            Next::GiveUp(GiveUp::BanHere(BanCause::Hard))
        );
        assert_eq!(
            r.after_monitor(&failed(6, Recovery::Fatal)),
            Next::GiveUp(GiveUp::Fatal)
        );
        assert_eq!(
            r.after_start(&Outcome::SpawnFailed("ENOENT".into())),
            Next::GiveUp(GiveUp::BanHere(BanCause::Hard))
        );
        assert_eq!(r.restarts(), 0);
    }

    #[test]
    fn a_failed_start_bans_this_node_and_a_failed_stop_escalates() {
        let mut r = LocalRecovery::new(3);
        assert_eq!(
            r.after_start(&failed(1, Recovery::Soft)),
            Next::GiveUp(GiveUp::BanHere(BanCause::StartFailed))
        );
        assert_eq!(
            r.after_start(&Outcome::TimedOut(Kill::Killed)),
            Next::GiveUp(GiveUp::BanHere(BanCause::StartFailed))
        );
        assert_eq!(
            r.after_start(&Outcome::NotRunning),
            Next::GiveUp(GiveUp::BanHere(BanCause::StartFailed))
        );
        assert_eq!(after_stop(&Outcome::Success), AfterStop::Stopped);
        assert_eq!(after_stop(&Outcome::NotRunning), AfterStop::Stopped);
        assert_eq!(
            after_stop(&Outcome::TimedOut(Kill::Killed)),
            AfterStop::Escalate
        );
        assert_eq!(after_stop(&failed(1, Recovery::Soft)), AfterStop::Escalate);
        assert_eq!(after_stop(&Outcome::Signalled(9)), AfterStop::Escalate);
    }
}
