//! The packages state machine under a serial split (issue #11): two nodes
//! in one quorate view (membership rides the serial line), every network
//! link cut, the line's survivor verdict reaching each node at its own
//! time. Package messages travel with random delays (in order, as on one
//! line) and random loss (the line's byte budget); actions take random
//! times.
//!
//! Checked after every tick: **never two owners**: no package's service
//! may run on both nodes at once (from the start of its start action until
//! its stop succeeded). After the verdict reached both: the survivor runs
//! every package, the other stopped them. After the split ends (the
//! network back): still one owner at most, and every package runs.
#![allow(
    unused_crate_dependencies,
    reason = "an integration test links every dependency of its package"
)]

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use heartbeat_cluster::{
    Epoch, NodeId, NodeSet,
    lease::LeaseTiming,
    packages::{Action, ActionResult, Input, Output, PackageParams, Packages, Params, ViewInfo},
    placement::{FailbackPolicy, FailoverPolicy, OnAllUnhealthy, PackageId, PackagePolicy},
    survivor::Verdict,
    wire::Message,
};
use proptest::prelude::*;

const TICK: u64 = 1_000_000;

struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

struct Node {
    sm: Packages,
    /// The service may run here (start begun, stop not yet succeeded).
    running: BTreeSet<u16>,
    /// Actions in flight: (done at tick, pkg, action).
    actions: Vec<(u64, u16, Action)>,
    /// The newest lease output per package: renew, successors.
    lease: BTreeMap<u16, (bool, NodeSet)>,
}

struct Sim {
    now: u64,
    nodes: [Node; 2],
    /// (arrival tick, to index, message); in order per direction.
    msgs: VecDeque<(u64, usize, Message)>,
    last_at: [u64; 2],
    rng: Rng,
    loss: u64,
    log: Vec<String>,
}

impl Sim {
    fn new(pkgs: u16, seed: u64, loss: u64, failback: bool) -> Self {
        let params: Vec<PackageParams> = (0..pkgs)
            .map(|p| PackageParams {
                policy: PackagePolicy {
                    id: PackageId(p),
                    nodes: if p % 2 == 0 {
                        vec![NodeId(1), NodeId(2)]
                    } else {
                        vec![NodeId(2), NodeId(1)]
                    },
                    failover: FailoverPolicy::ConfiguredNode,
                    failback: if failback {
                        FailbackPolicy::Automatic
                    } else {
                        FailbackPolicy::Manual
                    },
                    on_all_unhealthy: OnAllUnhealthy::KeepBest,
                },
                restart_limit: 1,
                monitor_interval_ns: 0,
            })
            .collect();
        let timing = LeaseTiming::new(12 * TICK, 500, TICK / 5).unwrap();
        let node = |i: u16| {
            let mut sm = Packages::new(
                Params {
                    local: NodeId(i),
                    packages: params.clone(),
                    timing,
                    resend_ns: 10 * TICK,
                    fenceable: NodeSet::default(),
                },
                0,
            );
            let _ = sm.stopped_at_start(&BTreeSet::new());
            Node {
                sm,
                running: BTreeSet::new(),
                actions: Vec::new(),
                lease: BTreeMap::new(),
            }
        };
        let mut s = Self {
            now: 0,
            nodes: [node(1), node(2)],
            msgs: VecDeque::new(),
            last_at: [0; 2],
            rng: Rng(seed | 1),
            loss,
            log: Vec::new(),
        };
        let mut members = NodeSet::single(NodeId(1));
        members.insert(NodeId(2));
        let view = ViewInfo {
            epoch: Epoch(1),
            members,
            quorate: true,
            coordinator: Some(NodeId(1)),
        };
        for i in 0..2 {
            s.input(
                i,
                Input::Peer {
                    node: NodeId(2 - i as u16),
                    reachable: true,
                    last_rx_ns: 0,
                },
            );
            s.input(
                i,
                Input::View {
                    view: Some(view),
                    at_ns: 0,
                },
            );
        }
        s
    }

    fn input(&mut self, i: usize, input: Input) {
        let out = self.nodes[i].sm.handle(input);
        self.process(i, out);
    }

    fn process(&mut self, i: usize, out: Vec<Output>) {
        for o in out {
            match o {
                Output::Run { pkg, action, .. } => {
                    let took = 1 + self.rng.below(4);
                    let n = &mut self.nodes[i];
                    if action == Action::Start {
                        n.running.insert(pkg.0);
                    }
                    n.actions.push((self.now + took, pkg.0, action));
                    self.log.push(format!(
                        "t{} node {} runs {action} of {}",
                        self.now,
                        i + 1,
                        pkg.0
                    ));
                }
                Output::Lease {
                    pkg,
                    renew,
                    successors,
                    ..
                } => {
                    self.nodes[i].lease.insert(pkg.0, (renew, successors));
                }
                Output::Release { pkg } => {
                    self.nodes[i]
                        .lease
                        .insert(pkg.0, (false, NodeSet::default()));
                }
                Output::Send { msg, .. } => {
                    if self.rng.below(100) < self.loss {
                        continue;
                    }
                    let to = 1 - i;
                    let at = (self.now + 1 + self.rng.below(3)).max(self.last_at[to]);
                    self.last_at[to] = at;
                    self.msgs.push_back((at, to, msg));
                }
                Output::Escalate { .. } | Output::Fence { .. } | Output::Event(_) => {}
            }
        }
    }

    fn tick(&mut self) {
        self.now += 1;
        let now_ns = self.now * TICK;
        // Messages due (in order per direction: the queue is sorted by
        // arrival within each direction).
        let mut later = VecDeque::new();
        while let Some((at, to, msg)) = self.msgs.pop_front() {
            if at <= self.now {
                self.input(
                    to,
                    Input::Message {
                        from: NodeId(2 - to as u16),
                        msg,
                        at_ns: now_ns,
                    },
                );
            } else {
                later.push_back((at, to, msg));
            }
        }
        self.msgs = later;
        for i in 0..2 {
            let due: Vec<(u64, u16, Action)> = self.nodes[i]
                .actions
                .iter()
                .copied()
                .filter(|a| a.0 <= self.now)
                .collect();
            self.nodes[i].actions.retain(|a| a.0 > self.now);
            for (_, pkg, action) in due {
                if action == Action::Stop {
                    self.nodes[i].running.remove(&pkg);
                }
                self.input(
                    i,
                    Input::Done {
                        pkg: PackageId(pkg),
                        action,
                        result: ActionResult::Ok,
                        at_ns: now_ns,
                    },
                );
            }
            self.input(i, Input::Tick { now_ns });
        }
        let both: Vec<&u16> = self.nodes[0]
            .running
            .intersection(&self.nodes[1].running)
            .collect();
        assert!(
            both.is_empty(),
            "two owners of {both:?} at t{}:\n{}",
            self.now,
            self.log.join("\n")
        );
    }

    fn owners(&self, pkg: u16) -> Vec<u16> {
        (0..2)
            .filter(|&i| {
                self.nodes[i].running.contains(&pkg)
                    && self.nodes[i]
                        .sm
                        .status()
                        .iter()
                        .any(|s| s.pkg.0 == pkg && s.local.holds())
            })
            .map(|i| i as u16 + 1)
            .collect()
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("HB_PKG_SIM_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(256)
    ))]

    /// Never two owners; the survivor ends up with every package, the other
    /// stopped them; after the split, one owner each.
    #[test]
    fn the_survivor_takes_over_only_after_the_stop(
        seed in any::<u64>(),
        pkgs in 1u16..4,
        survivor in 1u16..=2,
        delays in (0u64..8, 0u64..8),
        loss in 0u64..30,
        failback in any::<bool>(),
        settle in 0u64..40,
    ) {
        let mut s = Sim::new(pkgs, seed, loss, failback);
        for _ in 0..200 {
            s.tick();
        }
        for p in 0..pkgs {
            prop_assert_eq!(s.owners(p).len(), 1, "pkg {} before the split:\n{}", p, s.log.join("\n"));
        }
        // Every network link cut: the verdict reaches each node in its time.
        s.log.push(format!("t{} network cut, survivor {survivor}", s.now));
        let split = Verdict::Split { survivor: NodeId(survivor) };
        let start = s.now;
        for t in 0..400 {
            for i in 0..2 {
                let d = if i == 0 { delays.0 } else { delays.1 };
                if t == d {
                    s.input(i, Input::Serial { verdict: split });
                }
            }
            s.tick();
        }
        for p in 0..pkgs {
            prop_assert_eq!(s.owners(p), vec![survivor], "pkg {} after the split from t{}:\n{}", p, start, s.log.join("\n"));
        }
        // The non-survivor renews nothing; the survivor renews with no
        // successor while the split lasts.
        let (w, l) = (usize::from(survivor - 1), usize::from(2 - survivor));
        for p in 0..pkgs {
            prop_assert_eq!(s.nodes[w].lease.get(&p).copied(), Some((true, NodeSet::default())));
            prop_assert!(!s.nodes[l].lease.get(&p).is_some_and(|x| x.0));
        }
        // The network back (the verdict ends on each node in its time).
        for t in 0..(settle + 300) {
            for i in 0..2 {
                let d = if i == 0 { delays.1 } else { delays.0 };
                if t == d {
                    s.input(i, Input::Serial { verdict: Verdict::NotNeeded });
                }
            }
            s.tick();
        }
        for p in 0..pkgs {
            prop_assert_eq!(s.owners(p).len(), 1, "pkg {} after the heal:\n{}", p, s.log.join("\n"));
        }
    }
}
