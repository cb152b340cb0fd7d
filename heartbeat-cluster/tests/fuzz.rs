//! Property tests: decoding never panics on any bytes, a changed datagram
//! never authenticates, and the membership state machine survives any
//! authenticated message (a member with the key may still be buggy).
#![allow(
    unused_crate_dependencies,
    reason = "an integration test links every dependency of its package"
)]

use heartbeat_cluster::membership::{Input, Membership, NodeParams, Params, StartMode, Timing};
use heartbeat_cluster::quorum::{QuorumOptions, QuorumState, TieBreaker};
use heartbeat_cluster::wire::{
    Ack, Commit, Header, Join, Keys, Leave, Message, Propose, ReachEntry, Sealer, decode, encode,
};
use heartbeat_cluster::{Epoch, LinkId, NodeId, NodeSet, SipKey};
use proptest::prelude::*;

const KEY: SipKey = SipKey { k0: 11, k1: 12 };

fn keys() -> Keys {
    Keys {
        current: KEY,
        next: None,
    }
}

fn set() -> impl Strategy<Value = NodeSet> {
    any::<u64>().prop_map(NodeSet::from_bits)
}

fn epoch() -> impl Strategy<Value = Epoch> {
    prop_oneof![0u64..10, any::<u64>()].prop_map(Epoch)
}

fn message() -> impl Strategy<Value = Message> {
    let entry =
        (1u16..=63, any::<u32>(), any::<u32>(), set()).prop_map(|(n, i, v, r)| ReachEntry {
            node: NodeId(n),
            incarnation: i,
            version: v,
            reach: r,
        });
    prop_oneof![
        (
            epoch(),
            epoch(),
            set(),
            0u8..8,
            set(),
            set(),
            prop::collection::vec(entry, 0..8)
        )
            .prop_map(
                |(max_epoch, view_epoch, view_members, flags, expected, proposal, reach)| {
                    Message::Join(Join {
                        max_epoch,
                        promised: view_epoch,
                        view_epoch,
                        view_members,
                        flags,
                        expected,
                        proposal,
                        reach,
                    })
                }
            ),
        (epoch(), set()).prop_map(|(epoch, members)| Message::Propose(Propose { epoch, members })),
        (epoch(), set()).prop_map(|(epoch, members)| Message::Ack(Ack { epoch, members })),
        (epoch(), set(), any::<u32>(), any::<bool>()).prop_map(|(epoch, members, v, quorate)| {
            Message::Commit(Commit {
                epoch,
                members,
                quorum: QuorumState {
                    present_votes: v,
                    needed_votes: v,
                    expected_votes: v,
                    quorate,
                    tie_breaker: TieBreaker::NotNeeded,
                },
            })
        }),
        (epoch(), any::<u32>())
            .prop_map(|(epoch, version)| Message::Leave(Leave { epoch, version })),
    ]
}

fn machine(local: u16) -> Membership {
    let params = Params {
        local: NodeId(local),
        nodes: (1..=4)
            .map(|i| NodeParams {
                id: NodeId(i),
                priority: u32::from(i % 2),
                votes: 1,
            })
            .collect(),
        quorum: QuorumOptions::default(),
        start: StartMode::Auto,
        timing: Timing::from_heartbeat_interval(100_000, 0, 1_000_000_000),
    };
    Membership::new(params, Epoch(3), 1, 0)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn decode_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..1400)) {
        let _ = decode(&bytes, &keys(), 1);
    }

    #[test]
    fn a_changed_datagram_never_authenticates(
        msg in message(),
        pos in any::<prop::sample::Index>(),
        xor in 1u8..=255,
    ) {
        let h = Header { cluster_id: 1, sender: NodeId(2), incarnation: 1, seq: 1 };
        let mut b = encode(&h, &msg, KEY);
        prop_assert_eq!(&decode(&b, &keys(), 1).unwrap().msg, &msg);
        let i = pos.index(b.len());
        b[i] ^= xor;
        prop_assert!(decode(&b, &keys(), 1).is_err());
    }

    #[test]
    fn membership_survives_any_authenticated_message(
        msgs in prop::collection::vec((1u16..=4, message(), 0u64..5_000_000), 1..40),
    ) {
        let mut m = machine(1);
        let mut sealers: Vec<Sealer> = (0..=4).map(|i| Sealer::new(1, NodeId(i), 1)).collect();
        let mut now = 0;
        for p in 2..=4 {
            let _ = m.handle(Input::LinkUp { peer: NodeId(p), link: LinkId(0), at_ns: 0 });
        }
        let _ = m.handle(Input::Tick { now_ns: 0 });
        for (from, msg, dt) in msgs {
            now += dt;
            let b = sealers[usize::from(from)].seal(&msg, KEY);
            let a = decode(&b, &keys(), 1).unwrap();
            let _ = m.handle(Input::Message { msg: a, at_ns: now });
            let _ = m.handle(Input::Tick { now_ns: now });
            let _ = m.node_states();
            let _ = m.next_deadline_ns();
            prop_assert!(m.epoch() >= Epoch(3), "epochs never go back");
        }
    }

    #[test]
    fn membership_survives_any_timers_and_times(
        t in prop::array::uniform6(any::<u64>()),
        events in prop::collection::vec((0u8..6, 1u16..=5, any::<u64>()), 1..40),
    ) {
        let params = Params {
            local: NodeId(1),
            nodes: (1..=4)
                .map(|i| NodeParams { id: NodeId(i), priority: 0, votes: 1 })
                .collect(),
            quorum: QuorumOptions { quorum_server: true, last_man_standing: true, ..Default::default() },
            start: StartMode::Auto,
            timing: Timing {
                join_interval_ns: t[0],
                consensus_timeout_ns: t[1],
                sync_interval_ns: t[2],
                auto_start_timeout_ns: t[3],
                restart_window_ns: t[4],
                qs_timeout_ns: t[5],
            },
        };
        let mut m = Membership::new(params, Epoch(0), 1, 0);
        for (kind, peer, at_ns) in events {
            let peer = NodeId(peer);
            let input = match kind {
                0 => Input::LinkUp { peer, link: LinkId(0), at_ns },
                1 => Input::LinkDown { peer, link: LinkId(0), at_ns },
                2 => Input::PeerAgent {
                    peer,
                    state: heartbeat_cluster::membership::PeerAgentState::Restarting,
                    at_ns,
                },
                3 => Input::QuorumServer {
                    epoch: Epoch(at_ns % 4),
                    members: NodeSet::from_bits(at_ns),
                    granted: at_ns % 2 == 0,
                    lease_ns: at_ns,
                    at_ns,
                },
                _ => Input::Tick { now_ns: at_ns },
            };
            let _ = m.handle(input);
            if let Some(d) = m.next_deadline_ns() {
                let _ = m.handle(Input::Tick { now_ns: d });
            }
        }
    }
}
