//! Package placement: which node owns each package in an agreed view.
//!
//! A pure function of the agreed view (epoch, members, quorate), the
//! packages' policies, node health, bans, the current owners and the
//! operator's overrides; it returns one [`Decision`] per package, each with
//! its [`Reason`] for the journal. The coordinator computes it for the
//! epoch it committed and sends it with that epoch; every node acts only on
//! the placement of the epoch it has installed ([`Placement::is_for`]).
//!
//! The policies are HP Serviceguard's (`failover_policy = configured_node |
//! min_package_node`, `failback_policy = manual | automatic`), plus Check
//! Point ClusterXL's *Active Attention* for the case where every eligible
//! node is unhealthy (`on_all_unhealthy = keep_best | stop`).
//!
//! # Rules, in order, for each package
//! 1. A view that is not quorate places nothing ([`Reason::NotQuorate`]):
//!    only members of a quorate view own anything.
//! 2. A package with a fatal failure (OCF exit 6, a configuration error) or
//!    stopped by the operator has no owner.
//! 3. Frozen cluster (maintenance): nothing moves. The current owner keeps
//!    the package if it is still a member; otherwise it has no owner (no
//!    automatic recovery while frozen, like Pacemaker's maintenance mode).
//! 4. Eligible nodes: the package's `nodes` (preference order) that are
//!    members, not banned for it (hard failures, restart limit exhausted,
//!    failed start) and not disabled for it by the operator.
//! 5. Candidates: the healthy eligible nodes. If none is healthy:
//!    `keep_best` keeps the package on the eligible node with the fewest
//!    failures (the current owner on a tie, then preference order);
//!    `stop` places it nowhere.
//! 6. Among candidates: an operator `move` target wins; else the current
//!    owner keeps it, except that `failback_policy = automatic` (with
//!    `configured_node`; see [`PackagePolicy::fails_back`]) moves it to the
//!    most preferred candidate (its primary node when that is up);
//!    else (new or failed-over package) `configured_node` takes the most
//!    preferred candidate and `min_package_node` the candidate owning the
//!    fewest packages in this placement (ties: preference order).
//!    Packages that need a new node are placed after all the others, in
//!    id order, so that `min_package_node` counts what stays put.
//!
//! Active/standby is one package on `[a, b]`; rolling standby is several
//! packages each on `[own node, shared standby]`; active/active is several
//! packages with different primaries (or `min_package_node`).
//!
//! # Properties (unit tests and a proptest below)
//! - at most one owner per package (a map from package to owner);
//! - every owner is a member of a quorate view, eligible for the package;
//! - placing again with the result as the current owners changes nothing;
//! - `manual` failback never moves a healthy owner; `automatic` always
//!   places on the most preferred candidate.

use std::collections::{BTreeMap, BTreeSet};

use core::fmt;

use serde::{Deserialize, Serialize};

use crate::ids::{Epoch, NodeId, NodeSet};

/// A package's index in the configuration (its order among `[[package]]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PackageId(pub u16);

impl fmt::Display for PackageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Where a package goes when its owner fails (`failover_policy`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailoverPolicy {
    /// The most preferred candidate.
    #[default]
    ConfiguredNode,
    /// The candidate that owns the fewest packages.
    MinPackageNode,
}

/// Whether a package returns to a more preferred node (`failback_policy`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailbackPolicy {
    /// It stays where it is until the operator moves it.
    #[default]
    Manual,
    /// It moves to the most preferred candidate as soon as that is up.
    Automatic,
}

/// What to do when no eligible node is healthy (`on_all_unhealthy`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnAllUnhealthy {
    /// ClusterXL's Active Attention: the least unhealthy node keeps it.
    #[default]
    KeepBest,
    /// Run it nowhere.
    Stop,
}

/// One package's placement policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PackagePolicy {
    /// The package.
    pub id: PackageId,
    /// Nodes that may run it, most preferred first.
    pub nodes: Vec<NodeId>,
    /// `failover_policy`.
    pub failover: FailoverPolicy,
    /// `failback_policy`.
    pub failback: FailbackPolicy,
    /// `on_all_unhealthy`.
    pub on_all_unhealthy: OnAllUnhealthy,
}

impl PackagePolicy {
    /// Whether the package returns to its most preferred candidate: only
    /// with `failback_policy = automatic` and `failover_policy =
    /// configured_node`. A `min_package_node` package has no preferred node
    /// to return to; moving it whenever loads change would never settle, so
    /// its failback is manual.
    pub fn fails_back(&self) -> bool {
        self.failback == FailbackPolicy::Automatic
            && self.failover == FailoverPolicy::ConfiguredNode
    }
}

/// The agreed view a placement is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct View {
    /// Its epoch.
    pub epoch: Epoch,
    /// Its members.
    pub members: NodeSet,
    /// Whether it holds quorum.
    pub quorate: bool,
}

/// The operator's overrides.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Operator {
    /// `cluster freeze`: nothing moves.
    pub frozen: bool,
    /// `package move NAME NODE`: the package goes to (and stays on) that
    /// node while it is a candidate, whatever the failback policy.
    pub moves: BTreeMap<PackageId, NodeId>,
    /// `package stop NAME` / `package disable NAME`: runs nowhere.
    pub stopped: BTreeSet<PackageId>,
    /// `package disable NAME NODE`: not on that node.
    pub disabled: BTreeSet<(PackageId, NodeId)>,
}

/// Everything placement depends on besides the view and the policies.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Situation {
    /// Failing critical things per node (0 or absent: healthy). Only the
    /// order matters: fewer is better.
    pub failures: BTreeMap<NodeId, u32>,
    /// Package may not run on that node (hard failure, restart limit
    /// exhausted, start failed there).
    pub bans: BTreeSet<(PackageId, NodeId)>,
    /// Packages no node may run (OCF configuration error).
    pub fatal: BTreeSet<PackageId>,
    /// The owners of the previous placement.
    pub current: BTreeMap<PackageId, NodeId>,
    /// The operator's overrides.
    pub operator: Operator,
}

impl Situation {
    fn failures_of(&self, node: NodeId) -> u32 {
        self.failures.get(&node).copied().unwrap_or(0)
    }
}

/// Why the previous owner lost a package.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LossCause {
    /// It is not a member of the view.
    Left,
    /// The package is banned there.
    Banned,
    /// The operator disabled the package there.
    Disabled,
    /// It is unhealthy and a healthy candidate exists.
    Unhealthy,
    /// It is no longer in the package's node list.
    NotConfigured,
}

/// Why a package is (or is not) where it is; journaled with the decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum Reason {
    /// The view is not quorate: nothing runs.
    NotQuorate,
    /// A configuration error (OCF exit 6): no node may run it.
    Fatal,
    /// Stopped or disabled by the operator.
    Stopped,
    /// The cluster is frozen: kept on its owner, or left without one if the
    /// owner is gone.
    Frozen,
    /// No eligible node (none of its nodes is a member, or all are banned
    /// or disabled).
    NoEligibleNode,
    /// Every eligible node is unhealthy and `on_all_unhealthy = stop`.
    AllUnhealthy,
    /// Every eligible node is unhealthy; the least unhealthy keeps it.
    KeepBest {
        /// Its failure count.
        failures: u32,
    },
    /// Stays on its owner.
    Stay,
    /// Placed for the first time (no previous owner).
    Initial,
    /// Moved by the operator.
    Moved {
        /// The previous owner.
        from: Option<NodeId>,
    },
    /// Failed over from its previous owner.
    Failover {
        /// The previous owner.
        from: NodeId,
        /// Why it lost the package.
        cause: LossCause,
    },
    /// Returned to a more preferred node (`failback_policy = automatic`).
    Failback {
        /// The previous owner.
        from: NodeId,
    },
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotQuorate => f.write_str("not quorate"),
            Self::Fatal => f.write_str("configuration error: no node may run it"),
            Self::Stopped => f.write_str("stopped by the operator"),
            Self::Frozen => f.write_str("cluster frozen"),
            Self::NoEligibleNode => f.write_str("no eligible node"),
            Self::AllUnhealthy => {
                f.write_str("all eligible nodes unhealthy (on_all_unhealthy = stop)")
            }
            Self::KeepBest { failures } => {
                write!(
                    f,
                    "all eligible nodes unhealthy: kept on the best ({failures} failures)"
                )
            }
            Self::Stay => f.write_str("stays on its owner"),
            Self::Initial => f.write_str("initial placement"),
            Self::Moved { from: Some(n) } => write!(f, "moved by the operator from node {n}"),
            Self::Moved { from: None } => f.write_str("moved by the operator"),
            Self::Failover { from, cause } => {
                write!(f, "failover from node {from}: ")?;
                f.write_str(match cause {
                    LossCause::Left => "it left the cluster",
                    LossCause::Banned => "banned there (a hard failure, or the node is halting)",
                    LossCause::Disabled => "disabled there",
                    LossCause::Unhealthy => "it is unhealthy",
                    LossCause::NotConfigured => "no longer among the package's nodes",
                })
            }
            Self::Failback { from } => write!(f, "failback from node {from}"),
        }
    }
}

/// One package's owner for the epoch, and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    /// The node that runs it, if any.
    pub owner: Option<NodeId>,
    /// Why.
    pub reason: Reason,
}

/// Every package's owner in one epoch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    /// The epoch (of the view) it was computed for.
    pub epoch: Epoch,
    /// One decision per package.
    pub decisions: BTreeMap<PackageId, Decision>,
}

impl Placement {
    /// Whether a node whose installed view has `epoch` may act on it (never
    /// on a placement of another epoch).
    pub fn is_for(&self, epoch: Epoch) -> bool {
        self.epoch == epoch
    }

    /// The owner of `pkg`.
    pub fn owner(&self, pkg: PackageId) -> Option<NodeId> {
        self.decisions.get(&pkg).and_then(|d| d.owner)
    }

    /// The owners as a map (the next placement's `current`).
    pub fn owners(&self) -> BTreeMap<PackageId, NodeId> {
        self.decisions
            .iter()
            .filter_map(|(p, d)| Some((*p, d.owner?)))
            .collect()
    }

    /// The packages `node` owns.
    pub fn owned_by(&self, node: NodeId) -> impl Iterator<Item = PackageId> + '_ {
        self.decisions
            .iter()
            .filter(move |(_, d)| d.owner == Some(node))
            .map(|(p, _)| *p)
    }
}

/// What rule 5 gives: the candidates, or a final decision.
enum Candidates {
    /// Healthy eligible nodes in preference order.
    Healthy(Vec<NodeId>),
    /// Decided already (keep_best, stop, none eligible).
    Decided(Decision),
}

/// Places every package (see the module doc for the rules). Packages with
/// a duplicate id are placed once (the first wins).
pub fn place(view: &View, packages: &[PackagePolicy], s: &Situation) -> Placement {
    let mut decisions = BTreeMap::new();
    let mut pending: Vec<(&PackagePolicy, Vec<NodeId>)> = Vec::new();
    let mut load: BTreeMap<NodeId, usize> = BTreeMap::new();
    let decide = |decisions: &mut BTreeMap<PackageId, Decision>,
                  load: &mut BTreeMap<NodeId, usize>,
                  id: PackageId,
                  d: Decision| {
        if let Some(n) = d.owner {
            *load.entry(n).or_default() += 1;
        }
        decisions.insert(id, d);
    };
    let none = |reason| Decision {
        owner: None,
        reason,
    };
    let mut seen = BTreeSet::new();
    for pkg in packages {
        if !seen.insert(pkg.id) {
            continue;
        }
        let current = s.current.get(&pkg.id).copied();
        let d = if !view.quorate {
            none(Reason::NotQuorate)
        } else if s.fatal.contains(&pkg.id) {
            none(Reason::Fatal)
        } else if s.operator.stopped.contains(&pkg.id) {
            none(Reason::Stopped)
        } else if s.operator.frozen {
            Decision {
                owner: current.filter(|n| view.members.contains(*n)),
                reason: Reason::Frozen,
            }
        } else {
            match candidates(view, pkg, s, current) {
                Candidates::Decided(d) => d,
                Candidates::Healthy(cands) => {
                    let moved = s
                        .operator
                        .moves
                        .get(&pkg.id)
                        .copied()
                        .filter(|n| cands.contains(n));
                    match (moved, current) {
                        (Some(to), from) => Decision {
                            owner: Some(to),
                            reason: if from == Some(to) {
                                Reason::Stay
                            } else {
                                Reason::Moved { from }
                            },
                        },
                        (None, Some(cur)) if cands.contains(&cur) => {
                            let best = cands[0];
                            if pkg.fails_back() && best != cur {
                                Decision {
                                    owner: Some(best),
                                    reason: Reason::Failback { from: cur },
                                }
                            } else {
                                Decision {
                                    owner: Some(cur),
                                    reason: Reason::Stay,
                                }
                            }
                        }
                        (None, _) => {
                            // Needs a new node: placed in the second pass.
                            pending.push((pkg, cands));
                            continue;
                        }
                    }
                }
            }
        };
        decide(&mut decisions, &mut load, pkg.id, d);
    }
    for (pkg, cands) in pending {
        let current = s.current.get(&pkg.id).copied();
        let to = match pkg.failover {
            FailoverPolicy::ConfiguredNode => cands[0],
            // min_by_key keeps the first (most preferred) of equal loads.
            FailoverPolicy::MinPackageNode => *cands
                .iter()
                .min_by_key(|n| load.get(n).copied().unwrap_or(0))
                .unwrap_or(&cands[0]),
        };
        let reason = match current {
            None => Reason::Initial,
            Some(from) => Reason::Failover {
                from,
                cause: loss_cause(view, pkg, s, from),
            },
        };
        decide(
            &mut decisions,
            &mut load,
            pkg.id,
            Decision {
                owner: Some(to),
                reason,
            },
        );
    }
    Placement {
        epoch: view.epoch,
        decisions,
    }
}

/// Rules 4 and 5.
fn candidates(
    view: &View,
    pkg: &PackagePolicy,
    s: &Situation,
    current: Option<NodeId>,
) -> Candidates {
    let mut eligible: Vec<NodeId> = Vec::with_capacity(pkg.nodes.len());
    for &n in &pkg.nodes {
        if view.members.contains(n)
            && !s.bans.contains(&(pkg.id, n))
            && !s.operator.disabled.contains(&(pkg.id, n))
            && !eligible.contains(&n)
        {
            eligible.push(n);
        }
    }
    if eligible.is_empty() {
        return Candidates::Decided(Decision {
            owner: None,
            reason: Reason::NoEligibleNode,
        });
    }
    let healthy: Vec<NodeId> = eligible
        .iter()
        .copied()
        .filter(|&n| s.failures_of(n) == 0)
        .collect();
    if !healthy.is_empty() {
        return Candidates::Healthy(healthy);
    }
    match pkg.on_all_unhealthy {
        OnAllUnhealthy::Stop => Candidates::Decided(Decision {
            owner: None,
            reason: Reason::AllUnhealthy,
        }),
        OnAllUnhealthy::KeepBest => {
            // Fewest failures, then the current owner (no flapping between
            // equally bad nodes), then preference order (min_by_key keeps
            // the first of equals).
            let best = eligible
                .iter()
                .copied()
                .min_by_key(|&n| (s.failures_of(n), Some(n) != current))
                .unwrap_or(eligible[0]);
            Candidates::Decided(Decision {
                owner: Some(best),
                reason: Reason::KeepBest {
                    failures: s.failures_of(best),
                },
            })
        }
    }
}

fn loss_cause(view: &View, pkg: &PackagePolicy, s: &Situation, from: NodeId) -> LossCause {
    if !view.members.contains(from) {
        LossCause::Left
    } else if !pkg.nodes.contains(&from) {
        LossCause::NotConfigured
    } else if s.bans.contains(&(pkg.id, from)) {
        LossCause::Banned
    } else if s.operator.disabled.contains(&(pkg.id, from)) {
        LossCause::Disabled
    } else {
        LossCause::Unhealthy
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const A: NodeId = NodeId(1);
    const B: NodeId = NodeId(2);
    const C: NodeId = NodeId(3);
    const P: PackageId = PackageId(0);
    const Q: PackageId = PackageId(1);

    fn view(members: &[NodeId]) -> View {
        View {
            epoch: Epoch(5),
            members: members.iter().copied().collect(),
            quorate: true,
        }
    }

    fn pkg(id: PackageId, nodes: &[NodeId]) -> PackagePolicy {
        PackagePolicy {
            id,
            nodes: nodes.to_vec(),
            failover: FailoverPolicy::ConfiguredNode,
            failback: FailbackPolicy::Manual,
            on_all_unhealthy: OnAllUnhealthy::KeepBest,
        }
    }

    fn with_current(current: &[(PackageId, NodeId)]) -> Situation {
        Situation {
            current: current.iter().copied().collect(),
            ..Situation::default()
        }
    }

    #[test]
    fn active_standby_places_on_the_primary_and_fails_over_to_the_standby() {
        let pkgs = [pkg(P, &[A, B])];
        let p = place(&view(&[A, B]), &pkgs, &Situation::default());
        assert_eq!(
            p.decisions[&P],
            Decision {
                owner: Some(A),
                reason: Reason::Initial
            }
        );
        assert!(p.is_for(Epoch(5)) && !p.is_for(Epoch(4)));
        let p = place(&view(&[B]), &pkgs, &with_current(&[(P, A)]));
        assert_eq!(
            p.decisions[&P],
            Decision {
                owner: Some(B),
                reason: Reason::Failover {
                    from: A,
                    cause: LossCause::Left
                }
            }
        );
        assert_eq!(
            p.decisions[&P].reason.to_string(),
            "failover from node 1: it left the cluster"
        );
    }

    #[test]
    fn failback_manual_stays_and_automatic_returns_to_the_primary() {
        let mut pkgs = [pkg(P, &[A, B])];
        let s = with_current(&[(P, B)]);
        let p = place(&view(&[A, B]), &pkgs, &s);
        assert_eq!(
            p.decisions[&P],
            Decision {
                owner: Some(B),
                reason: Reason::Stay
            }
        );
        pkgs[0].failback = FailbackPolicy::Automatic;
        let p = place(&view(&[A, B]), &pkgs, &s);
        assert_eq!(
            p.decisions[&P],
            Decision {
                owner: Some(A),
                reason: Reason::Failback { from: B }
            }
        );
        // Not back to an unhealthy primary.
        let mut s2 = s.clone();
        s2.failures.insert(A, 1);
        assert_eq!(place(&view(&[A, B]), &pkgs, &s2).owner(P), Some(B));
        // min_package_node has no primary to return to: it stays.
        pkgs[0].failover = FailoverPolicy::MinPackageNode;
        assert!(!pkgs[0].fails_back());
        assert_eq!(place(&view(&[A, B]), &pkgs, &s).owner(P), Some(B));
    }

    #[test]
    fn rolling_standby_and_active_active() {
        // Rolling standby: A and B each run one package, C stands by for both.
        let pkgs = [pkg(P, &[A, C]), pkg(Q, &[B, C])];
        let p = place(&view(&[A, B, C]), &pkgs, &Situation::default());
        assert_eq!((p.owner(P), p.owner(Q)), (Some(A), Some(B)));
        let p = place(
            &view(&[B, C]),
            &pkgs,
            &Situation {
                current: p.owners(),
                ..Default::default()
            },
        );
        assert_eq!((p.owner(P), p.owner(Q)), (Some(C), Some(B)));
        // Active/active: two packages with opposite preferences.
        let pkgs = [pkg(P, &[A, B]), pkg(Q, &[B, A])];
        let p = place(&view(&[A, B]), &pkgs, &Situation::default());
        assert_eq!((p.owner(P), p.owner(Q)), (Some(A), Some(B)));
        assert_eq!(p.owned_by(A).collect::<Vec<_>>(), [P]);
    }

    #[test]
    fn min_package_node_spreads_packages() {
        let pkgs: Vec<_> = (0..6)
            .map(|i| PackagePolicy {
                failover: FailoverPolicy::MinPackageNode,
                ..pkg(PackageId(i), &[A, B, C])
            })
            .collect();
        let p = place(&view(&[A, B, C]), &pkgs, &Situation::default());
        for n in [A, B, C] {
            assert_eq!(p.owned_by(n).count(), 2, "{p:?}");
        }
        // C fails: its two packages go one to A and one to B.
        let p2 = place(
            &view(&[A, B]),
            &pkgs,
            &Situation {
                current: p.owners(),
                ..Default::default()
            },
        );
        assert_eq!(p2.owned_by(A).count(), 3);
        assert_eq!(p2.owned_by(B).count(), 3);
        // Packages that stayed did not move.
        for (id, n) in p.owners() {
            if n != C {
                assert_eq!(p2.owner(id), Some(n));
            }
        }
    }

    #[test]
    fn not_quorate_fatal_stopped_and_no_eligible_node_place_nothing() {
        let pkgs = [pkg(P, &[A, B])];
        let mut v = view(&[A, B]);
        v.quorate = false;
        assert_eq!(
            place(&v, &pkgs, &with_current(&[(P, A)])).decisions[&P].reason,
            Reason::NotQuorate
        );
        assert_eq!(place(&v, &pkgs, &with_current(&[(P, A)])).owner(P), None);
        let mut s = Situation::default();
        s.fatal.insert(P);
        assert_eq!(
            place(&view(&[A, B]), &pkgs, &s).decisions[&P].reason,
            Reason::Fatal
        );
        let mut s = Situation::default();
        s.operator.stopped.insert(P);
        assert_eq!(
            place(&view(&[A, B]), &pkgs, &s).decisions[&P].reason,
            Reason::Stopped
        );
        assert_eq!(
            place(&view(&[C]), &pkgs, &Situation::default()).decisions[&P].reason,
            Reason::NoEligibleNode
        );
        let mut s = Situation::default();
        s.bans.insert((P, A));
        s.operator.disabled.insert((P, B));
        assert_eq!(
            place(&view(&[A, B]), &pkgs, &s).decisions[&P].reason,
            Reason::NoEligibleNode
        );
    }

    #[test]
    fn bans_and_disables_fail_over_with_their_cause() {
        let pkgs = [pkg(P, &[A, B])];
        let mut s = with_current(&[(P, A)]);
        s.bans.insert((P, A));
        assert_eq!(
            place(&view(&[A, B]), &pkgs, &s).decisions[&P].reason,
            Reason::Failover {
                from: A,
                cause: LossCause::Banned
            }
        );
        let mut s = with_current(&[(P, A)]);
        s.operator.disabled.insert((P, A));
        assert_eq!(
            place(&view(&[A, B]), &pkgs, &s).decisions[&P],
            Decision {
                owner: Some(B),
                reason: Reason::Failover {
                    from: A,
                    cause: LossCause::Disabled
                }
            }
        );
        let mut s = with_current(&[(P, A)]);
        s.failures.insert(A, 2);
        assert_eq!(
            place(&view(&[A, B]), &pkgs, &s).decisions[&P].reason,
            Reason::Failover {
                from: A,
                cause: LossCause::Unhealthy
            }
        );
    }

    #[test]
    fn all_unhealthy_keeps_the_best_or_stops() {
        let mut pkgs = [pkg(P, &[A, B, C])];
        let mut s = with_current(&[(P, A)]);
        s.failures.extend([(A, 3), (B, 1), (C, 1)]);
        // Fewest failures; B before C by preference.
        assert_eq!(
            place(&view(&[A, B, C]), &pkgs, &s).decisions[&P],
            Decision {
                owner: Some(B),
                reason: Reason::KeepBest { failures: 1 }
            }
        );
        // On a tie the current owner keeps it.
        s.current.insert(P, C);
        assert_eq!(place(&view(&[A, B, C]), &pkgs, &s).owner(P), Some(C));
        pkgs[0].on_all_unhealthy = OnAllUnhealthy::Stop;
        assert_eq!(
            place(&view(&[A, B, C]), &pkgs, &s).decisions[&P],
            Decision {
                owner: None,
                reason: Reason::AllUnhealthy
            }
        );
    }

    #[test]
    fn operator_move_and_freeze() {
        let pkgs = [pkg(P, &[A, B, C])];
        let mut s = with_current(&[(P, A)]);
        s.operator.moves.insert(P, C);
        let p = place(&view(&[A, B, C]), &pkgs, &s);
        assert_eq!(
            p.decisions[&P],
            Decision {
                owner: Some(C),
                reason: Reason::Moved { from: Some(A) }
            }
        );
        // The move sticks, also against automatic failback.
        let mut pk = pkgs.clone();
        pk[0].failback = FailbackPolicy::Automatic;
        s.current = p.owners();
        assert_eq!(
            place(&view(&[A, B, C]), &pk, &s).decisions[&P],
            Decision {
                owner: Some(C),
                reason: Reason::Stay
            }
        );
        // A move to a node that cannot take it is not followed.
        s.operator.moves.insert(P, NodeId(9));
        assert_eq!(place(&view(&[A, B, C]), &pkgs, &s).owner(P), Some(C));
        // Frozen: nothing moves, even when the owner is unhealthy.
        let mut s = with_current(&[(P, A)]);
        s.operator.frozen = true;
        s.failures.insert(A, 5);
        assert_eq!(
            place(&view(&[A, B, C]), &pkgs, &s).decisions[&P],
            Decision {
                owner: Some(A),
                reason: Reason::Frozen
            }
        );
        // Frozen and the owner is gone: no owner, no automatic recovery.
        assert_eq!(
            place(&view(&[B, C]), &pkgs, &s).decisions[&P],
            Decision {
                owner: None,
                reason: Reason::Frozen
            }
        );
    }

    fn arb_case() -> impl Strategy<Value = (View, Vec<PackagePolicy>, Situation)> {
        let node = (1u16..=5).prop_map(NodeId);
        let policy = (
            proptest::collection::vec(node.clone(), 0..5),
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
        );
        (
            any::<u64>(),
            proptest::collection::btree_set(node.clone(), 0..=5),
            any::<bool>(),
            proptest::collection::vec(policy, 1..6),
            proptest::collection::btree_map(node.clone(), 0u32..3, 0..5),
            proptest::collection::btree_set((0u16..6, node.clone()), 0..6),
            proptest::collection::btree_map(0u16..6, node.clone(), 0..6),
            proptest::collection::btree_map(0u16..6, node.clone(), 0..2),
            proptest::collection::btree_set((0u16..6, node), 0..3),
            any::<u8>(),
        )
            .prop_map(
                |(
                    epoch,
                    members,
                    quorate,
                    pols,
                    failures,
                    bans,
                    current,
                    moves,
                    disabled,
                    flags,
                )| {
                    let packages = pols
                        .into_iter()
                        .enumerate()
                        .map(|(i, (nodes, mpn, auto, stop))| PackagePolicy {
                            id: PackageId(i as u16),
                            nodes,
                            failover: if mpn {
                                FailoverPolicy::MinPackageNode
                            } else {
                                FailoverPolicy::ConfiguredNode
                            },
                            failback: if auto {
                                FailbackPolicy::Automatic
                            } else {
                                FailbackPolicy::Manual
                            },
                            on_all_unhealthy: if stop {
                                OnAllUnhealthy::Stop
                            } else {
                                OnAllUnhealthy::KeepBest
                            },
                        })
                        .collect();
                    let pid = |(p, n): (u16, NodeId)| (PackageId(p), n);
                    let s = Situation {
                        failures,
                        bans: bans.into_iter().map(pid).collect(),
                        fatal: if flags & 1 != 0 {
                            [PackageId(0)].into()
                        } else {
                            BTreeSet::new()
                        },
                        current: current.into_iter().map(pid).collect(),
                        operator: Operator {
                            frozen: flags & 2 != 0 && flags & 4 != 0,
                            moves: moves.into_iter().map(pid).collect(),
                            stopped: if flags & 8 != 0 {
                                [PackageId(1)].into()
                            } else {
                                BTreeSet::new()
                            },
                            disabled: disabled.into_iter().map(pid).collect(),
                        },
                    };
                    (
                        View {
                            epoch: Epoch(epoch),
                            members: members.into_iter().collect(),
                            quorate,
                        },
                        packages,
                        s,
                    )
                },
            )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn placement_properties((v, pkgs, s) in arb_case()) {
            let p = place(&v, &pkgs, &s);
            prop_assert_eq!(p.epoch, v.epoch);
            // One decision (so at most one owner) per package, for every package.
            prop_assert_eq!(p.decisions.len(), pkgs.len());
            for pkg in &pkgs {
                let d = p.decisions[&pkg.id];
                if let Some(owner) = d.owner {
                    // Only members of a quorate view own anything.
                    prop_assert!(v.quorate && v.members.contains(owner));
                    prop_assert!(!s.fatal.contains(&pkg.id) && !s.operator.stopped.contains(&pkg.id));
                    if !s.operator.frozen {
                        prop_assert!(pkg.nodes.contains(&owner));
                        prop_assert!(!s.bans.contains(&(pkg.id, owner)));
                        prop_assert!(!s.operator.disabled.contains(&(pkg.id, owner)));
                    } else {
                        prop_assert_eq!(Some(owner), s.current.get(&pkg.id).copied());
                    }
                } else if v.quorate && !s.operator.frozen && !s.fatal.contains(&pkg.id)
                    && !s.operator.stopped.contains(&pkg.id)
                {
                    // Nothing placed although a healthy eligible node exists: never.
                    let healthy_eligible = pkg.nodes.iter().any(|&n| v.members.contains(n)
                        && !s.bans.contains(&(pkg.id, n))
                        && !s.operator.disabled.contains(&(pkg.id, n))
                        && s.failures.get(&n).copied().unwrap_or(0) == 0);
                    prop_assert!(!healthy_eligible, "{:?} unplaced", pkg.id);
                }
                // Failback rules, when the owner is a healthy eligible candidate
                // and no move applies.
                let cur = s.current.get(&pkg.id).copied();
                let cand = |n: NodeId| v.members.contains(n) && pkg.nodes.contains(&n)
                    && !s.bans.contains(&(pkg.id, n))
                    && !s.operator.disabled.contains(&(pkg.id, n))
                    && s.failures.get(&n).copied().unwrap_or(0) == 0;
                let normal = v.quorate && !s.operator.frozen && !s.fatal.contains(&pkg.id)
                    && !s.operator.stopped.contains(&pkg.id)
                    && !s.operator.moves.get(&pkg.id).is_some_and(|&m| cand(m));
                if normal && let Some(cur) = cur && cand(cur) {
                    if pkg.fails_back() {
                        let first = pkg.nodes.iter().copied().find(|&n| cand(n));
                        prop_assert_eq!(d.owner, first);
                    } else {
                        prop_assert_eq!(d.owner, Some(cur));
                    }
                }
            }
            // Stable: placing again with the result as the current owners
            // (nothing else changed) moves nothing.
            let again = place(&v, &pkgs, &Situation { current: p.owners(), ..s.clone() });
            prop_assert_eq!(again.owners(), p.owners());
            for d in again.decisions.values() {
                let moved = matches!(d.reason, Reason::Moved { .. } | Reason::Failover { .. } | Reason::Failback { .. } | Reason::Initial);
                prop_assert!(!moved || d.owner.is_none(), "{:?}", d);
            }
        }
    }
}
