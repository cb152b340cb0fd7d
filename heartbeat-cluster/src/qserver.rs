//! The quorum server's logic and its client side (pure: bytes and
//! timestamps in, bytes out).
//!
//! Modelled on corosync-qnetd's `ffsplit` algorithm: when a cluster splits
//! into two halves of exactly half the votes each, the coordinator of each
//! half asks the server; the server grants the tie to at most one
//! partition at a time, as a lease that its holder renews. When several
//! partitions ask while nobody holds the lease, the server waits a short
//! settle window and then prefers, in order: the partition with more
//! nodes, the partition that held the lease before (so a repeated split
//! gives the same side), the partition holding the lowest node id. It only
//! ever grants to a partition that asked (so never to one it cannot hear).
//! Departures from qnetd: no TLS and no per-node heartbeat connection; the
//! requests are membership messages of their own type, authenticated with
//! the cluster key (same MAC, same replay protection); the lease replaces
//! qnetd's connection liveness.
//!
//! Requests that do not decode, do not authenticate, are replayed or are
//! not requests are dropped and counted ([`Counters`]).

use std::collections::BTreeMap;

use crate::ids::{Epoch, NodeId, NodeSet};
use crate::membership::Input;
use crate::wire::{
    self, DropReason, Keys, Message, QSERVER_SENDER, QsAnswer, QsRequest, ReplayGuard, Sealer,
};

/// Server settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerConfig {
    /// The cluster served; `None`: any cluster whose messages authenticate
    /// with the key (the id is read from the datagram, which the MAC
    /// covers).
    pub cluster_id: Option<u32>,
    /// The key(s).
    pub keys: Keys,
    /// Lease length.
    pub lease_ns: u64,
    /// How long to collect competing requests before deciding.
    pub settle_ns: u64,
}

/// Most clusters one server keeps state for.
pub const MAX_CLUSTERS: usize = 256;

impl ServerConfig {
    /// Default timers: 3 s lease, 100 ms settle window.
    pub fn new(cluster_id: Option<u32>, keys: Keys) -> Self {
        Self {
            cluster_id,
            keys,
            lease_ns: 3_000_000_000,
            settle_ns: 100_000_000,
        }
    }
}

/// Counters for the server's metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Authenticated requests accepted.
    pub requests: u64,
    /// Answers granting the tie.
    pub granted: u64,
    /// Answers refusing it.
    pub denied: u64,
    /// Datagrams dropped, by reason.
    pub dropped: BTreeMap<&'static str, u64>,
}

/// An answer to send to the address a request came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply<A> {
    /// Where the request came from.
    pub to: A,
    /// The sealed answer.
    pub bytes: Vec<u8>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Holder {
    members: NodeSet,
    epoch: Epoch,
    until: u64,
}

#[derive(Clone, Debug)]
struct Candidate<A> {
    from: A,
    node: NodeId,
    seq: u64,
    req: QsRequest,
}

/// One cluster's tie state.
#[derive(Clone, Debug)]
struct Tie<A> {
    guard: ReplayGuard,
    sealer: Sealer,
    holder: Option<Holder>,
    previous: Option<NodeSet>,
    window_until: Option<u64>,
    candidates: Vec<Candidate<A>>,
}

/// The quorum server's state.
#[derive(Clone, Debug)]
pub struct Server<A> {
    cfg: ServerConfig,
    incarnation: u32,
    ties: BTreeMap<u32, Tie<A>>,
    counters: Counters,
}

impl<A: Clone> Server<A> {
    /// A server; `incarnation` must grow at every server start (the runner
    /// uses the wall clock in seconds).
    pub fn new(cfg: ServerConfig, incarnation: u32) -> Self {
        Self {
            cfg,
            incarnation,
            ties: BTreeMap::new(),
            counters: Counters::default(),
        }
    }

    /// Counters.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Replaces the keys (reload).
    pub fn set_keys(&mut self, keys: Keys) {
        self.cfg.keys = keys;
    }

    /// The partition of `cluster_id` holding the lease, if any.
    pub fn holder(&self, cluster_id: u32, now_ns: u64) -> Option<(NodeSet, Epoch)> {
        self.ties
            .get(&cluster_id)?
            .holder
            .filter(|h| now_ns < h.until)
            .map(|h| (h.members, h.epoch))
    }

    /// When [`Server::tick`] must run next.
    pub fn next_deadline_ns(&self) -> Option<u64> {
        self.ties.values().filter_map(|t| t.window_until).min()
    }

    fn drop_reason(&mut self, r: DropReason) {
        *self.counters.dropped.entry(r.as_str()).or_default() += 1;
    }

    fn answer(&mut self, cluster_id: u32, c: &Candidate<A>, granted: bool) -> Option<Reply<A>> {
        if granted {
            self.counters.granted += 1;
        } else {
            self.counters.denied += 1;
        }
        let lease_ms = if granted {
            u32::try_from(self.cfg.lease_ns / 1_000_000).unwrap_or(u32::MAX)
        } else {
            0
        };
        let msg = Message::QsAnswer(QsAnswer {
            node: c.node,
            request_seq: c.seq,
            epoch: c.req.epoch,
            members: c.req.members,
            granted,
            lease_ms,
        });
        let key = self.cfg.keys.current;
        let tie = self.ties.get_mut(&cluster_id)?;
        Some(Reply {
            to: c.from.clone(),
            bytes: tie.sealer.seal(&msg, key),
        })
    }

    /// Handles one datagram from `from`; returns the answers to send now.
    pub fn handle(&mut self, bytes: &[u8], from: A, now_ns: u64) -> Vec<Reply<A>> {
        let cluster_id = match self.cfg.cluster_id {
            Some(id) => id,
            None => match bytes.get(6..10) {
                Some(b) => u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
                None => {
                    self.drop_reason(DropReason::Length);
                    return Vec::new();
                }
            },
        };
        let a = match wire::decode(bytes, &self.cfg.keys, cluster_id) {
            Ok(a) => a,
            Err(r) => {
                self.drop_reason(r);
                return Vec::new();
            }
        };
        if !self.ties.contains_key(&cluster_id) {
            if self.ties.len() >= MAX_CLUSTERS {
                self.drop_reason(DropReason::OtherCluster);
                return Vec::new();
            }
            self.ties.insert(
                cluster_id,
                Tie {
                    guard: ReplayGuard::new(NodeSet::from_bits(u64::MAX)),
                    sealer: Sealer::new(cluster_id, QSERVER_SENDER, self.incarnation),
                    holder: None,
                    previous: None,
                    window_until: None,
                    candidates: Vec::new(),
                },
            );
        }
        let Some(tie) = self.ties.get_mut(&cluster_id) else {
            return Vec::new();
        };
        if let Err(r) = tie.guard.check(&a.header) {
            self.drop_reason(r);
            return Vec::new();
        }
        let Message::QsRequest(req) = a.msg else {
            self.drop_reason(DropReason::MalformedBody);
            return Vec::new();
        };
        if !req.members.contains(a.header.sender) || req.members.is_empty() {
            self.drop_reason(DropReason::MalformedBody);
            return Vec::new();
        }
        self.counters.requests += 1;
        let c = Candidate {
            from,
            node: a.header.sender,
            seq: a.header.seq,
            req,
        };
        let mut out = self.tick(now_ns);
        let Some(tie) = self.ties.get_mut(&cluster_id) else {
            return out;
        };
        if let Some(h) = tie.holder.filter(|h| now_ns < h.until) {
            let same = h.members == req.members;
            if same {
                tie.holder = Some(Holder {
                    members: h.members,
                    epoch: h.epoch.max(req.epoch),
                    until: now_ns.saturating_add(self.cfg.lease_ns),
                });
            }
            out.extend(self.answer(cluster_id, &c, same));
            return out;
        }
        // Nobody holds it: collect competitors for the settle window.
        if tie.window_until.is_none() {
            tie.window_until = Some(now_ns.saturating_add(self.cfg.settle_ns));
        }
        tie.candidates.retain(|x| x.node != c.node);
        tie.candidates.push(c);
        out
    }

    /// Decides for every cluster whose settle window ended; returns the
    /// answers.
    pub fn tick(&mut self, now_ns: u64) -> Vec<Reply<A>> {
        let due: Vec<u32> = self
            .ties
            .iter()
            .filter(|(_, t)| t.window_until.is_some_and(|u| now_ns >= u))
            .map(|(id, _)| *id)
            .collect();
        let mut out = Vec::new();
        for id in due {
            let lease = self.cfg.lease_ns;
            let Some(tie) = self.ties.get_mut(&id) else {
                continue;
            };
            tie.window_until = None;
            let cands = std::mem::take(&mut tie.candidates);
            let prev = tie.previous;
            let best = cands
                .iter()
                .max_by_key(|c| {
                    let m = c.req.members;
                    (
                        m.len(),
                        prev == Some(m),
                        prev.is_some_and(|p| !p.intersection(m).is_empty()),
                        std::cmp::Reverse(m.first()),
                    )
                })
                .map(|c| c.req.members);
            if let Some(members) = best {
                let epoch = cands
                    .iter()
                    .filter(|c| c.req.members == members)
                    .map(|c| c.req.epoch)
                    .max()
                    .unwrap_or_default();
                tie.holder = Some(Holder {
                    members,
                    epoch,
                    until: now_ns.saturating_add(lease),
                });
                tie.previous = Some(members);
            }
            for c in &cands {
                let g = Some(c.req.members) == best;
                out.extend(self.answer(id, c, g));
            }
        }
        out
    }
}

/// The client side, used by the coordinator's runner: builds requests for
/// [`crate::membership::Output::AskQuorumServer`] and turns answers into
/// [`Input::QuorumServer`].
#[derive(Clone, Debug)]
pub struct Client {
    cluster_id: u32,
    node: NodeId,
    sealer: Sealer,
    outstanding: Vec<(u64, Epoch, NodeSet)>,
}

impl Client {
    /// A client for `node` in its current `incarnation`.
    pub fn new(cluster_id: u32, node: NodeId, incarnation: u32) -> Self {
        Self {
            cluster_id,
            node,
            sealer: Sealer::new(cluster_id, node, incarnation),
            outstanding: Vec::new(),
        }
    }

    /// A sealed request.
    pub fn request(
        &mut self,
        epoch: Epoch,
        members: NodeSet,
        votes: u32,
        expected_votes: u32,
        keys: &Keys,
    ) -> Vec<u8> {
        let msg = Message::QsRequest(QsRequest {
            epoch,
            members,
            votes,
            expected_votes,
        });
        let b = self.sealer.seal(&msg, keys.current);
        self.outstanding.push((self.sealer.seq(), epoch, members));
        if self.outstanding.len() > 16 {
            self.outstanding.remove(0);
        }
        b
    }

    /// Checks an answer: authenticated, from the server, for one of our
    /// outstanding requests. Returns the input for the membership.
    pub fn answer(&mut self, bytes: &[u8], keys: &Keys, now_ns: u64) -> Result<Input, DropReason> {
        let a = wire::decode(bytes, keys, self.cluster_id)?;
        if a.header.sender != QSERVER_SENDER {
            return Err(DropReason::UnknownNode);
        }
        let Message::QsAnswer(ans) = a.msg else {
            return Err(DropReason::MalformedBody);
        };
        let pos = self
            .outstanding
            .iter()
            .position(|&(seq, e, m)| {
                ans.node == self.node
                    && seq == ans.request_seq
                    && e == ans.epoch
                    && m == ans.members
            })
            .ok_or(DropReason::Replay)?;
        self.outstanding.remove(pos);
        Ok(Input::QuorumServer {
            epoch: ans.epoch,
            members: ans.members,
            granted: ans.granted,
            lease_ns: u64::from(ans.lease_ms) * 1_000_000,
            at_ns: now_ns,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SipKey;

    const K: SipKey = SipKey { k0: 5, k1: 6 };
    const MS: u64 = 1_000_000;

    fn keys() -> Keys {
        Keys {
            current: K,
            next: None,
        }
    }

    fn set(ids: &[u16]) -> NodeSet {
        ids.iter().map(|i| NodeId(*i)).collect()
    }

    fn granted(c: &mut Client, r: &Reply<u16>) -> bool {
        match c.answer(&r.bytes, &keys(), 0).unwrap() {
            Input::QuorumServer { granted, .. } => granted,
            _ => unreachable!(),
        }
    }

    struct Split {
        s: Server<u16>,
        c1: Client,
        c3: Client,
    }

    fn split() -> Split {
        Split {
            s: Server::new(ServerConfig::new(None, keys()), 1),
            c1: Client::new(9, NodeId(1), 1),
            c3: Client::new(9, NodeId(3), 1),
        }
    }

    #[test]
    fn grants_one_half_of_a_split_and_the_same_half_again() {
        let mut t = split();
        let r1 = t.c1.request(Epoch(5), set(&[1, 2]), 2, 4, &keys());
        let r3 = t.c3.request(Epoch(5), set(&[3, 4]), 2, 4, &keys());
        assert!(t.s.handle(&r3, 3, 0).is_empty(), "waits for competitors");
        assert!(t.s.handle(&r1, 1, 10 * MS).is_empty());
        assert_eq!(t.s.next_deadline_ns(), Some(100 * MS));
        let out = t.s.tick(100 * MS);
        assert_eq!(out.len(), 2);
        let a1 = out.iter().find(|r| r.to == 1).unwrap();
        let a3 = out.iter().find(|r| r.to == 3).unwrap();
        assert!(granted(&mut t.c1, a1), "lowest node id wins a tie");
        assert!(!granted(&mut t.c3, a3));
        // The holder renews; the other side is refused while it holds.
        let r1 = t.c1.request(Epoch(6), set(&[1, 2]), 2, 4, &keys());
        let out = t.s.handle(&r1, 1, 1000 * MS);
        assert!(granted(&mut t.c1, &out[0]));
        let r3 = t.c3.request(Epoch(6), set(&[3, 4]), 2, 4, &keys());
        let out = t.s.handle(&r3, 3, 1000 * MS);
        assert!(!granted(&mut t.c3, &out[0]));
        // The lease runs out (heal); on a repeated split the previous
        // holder is preferred even when the other side asks first.
        let later = 10_000 * MS;
        let r3 = t.c3.request(Epoch(9), set(&[3, 4]), 2, 4, &keys());
        assert!(t.s.handle(&r3, 3, later).is_empty());
        let r1 = t.c1.request(Epoch(9), set(&[1, 2]), 2, 4, &keys());
        assert!(t.s.handle(&r1, 1, later + MS).is_empty());
        let out = t.s.tick(later + 100 * MS);
        assert!(granted(&mut t.c1, out.iter().find(|r| r.to == 1).unwrap()));
        assert_eq!(
            t.s.holder(9, later + 100 * MS),
            Some((set(&[1, 2]), Epoch(9)))
        );
    }

    #[test]
    fn more_nodes_beat_the_previous_holder() {
        let mut t = split();
        let r1 = t.c1.request(Epoch(1), set(&[1, 2]), 2, 4, &keys());
        t.s.handle(&r1, 1, 0);
        t.s.tick(100 * MS);
        let r3 = t.c3.request(Epoch(2), set(&[3, 4, 5]), 3, 6, &keys());
        let r1 = t.c1.request(Epoch(2), set(&[1, 2]), 2, 6, &keys());
        let later = 10_000 * MS;
        t.s.handle(&r1, 1, later);
        t.s.handle(&r3, 3, later);
        let out = t.s.tick(later + 100 * MS);
        assert!(granted(&mut t.c3, out.iter().find(|r| r.to == 3).unwrap()));
    }

    #[test]
    fn a_lone_asker_is_granted_after_the_window() {
        let mut t = split();
        let r3 = t.c3.request(Epoch(1), set(&[3, 4]), 2, 4, &keys());
        t.s.handle(&r3, 3, 0);
        let out = t.s.tick(100 * MS);
        assert!(granted(&mut t.c3, &out[0]));
    }

    #[test]
    fn garbage_unauthenticated_and_replayed_requests_are_counted() {
        let mut t = split();
        let r1 = t.c1.request(Epoch(1), set(&[1, 2]), 2, 4, &keys());
        t.s.handle(&r1, 1, 0);
        t.s.handle(&r1, 1, 0);
        let mut bad = r1.clone();
        let n = bad.len();
        bad[n - 1] ^= 1;
        t.s.handle(&bad, 1, 0);
        t.s.handle(b"garbage", 1, 0);
        t.s.handle(&[], 1, 0);
        let mut other = Client::new(9, NodeId(2), 1);
        let wrong = Keys {
            current: SipKey { k0: 1, k1: 1 },
            next: None,
        };
        t.s.handle(&other.request(Epoch(1), set(&[2]), 1, 4, &wrong), 2, 0);
        let c = t.s.counters();
        assert_eq!(c.requests, 1);
        assert_eq!(c.dropped.get("replay"), Some(&1));
        assert_eq!(c.dropped.get("bad_mac"), Some(&2));
        assert_eq!(c.dropped.get("length"), Some(&2));
    }

    #[test]
    fn client_rejects_answers_it_did_not_ask_for() {
        let mut t = split();
        let r1 = t.c1.request(Epoch(1), set(&[1, 2]), 2, 4, &keys());
        t.s.handle(&r1, 1, 0);
        let out = t.s.tick(100 * MS);
        let ans = out[0].bytes.clone();
        assert!(t.c1.answer(&ans, &keys(), 0).is_ok());
        // Replayed answer: no outstanding request any more.
        assert_eq!(t.c1.answer(&ans, &keys(), 0), Err(DropReason::Replay));
        // An answer for node 1 is not for node 3.
        assert_eq!(t.c3.answer(&ans, &keys(), 0), Err(DropReason::Replay));
        // A node's request is not an answer.
        assert_eq!(t.c3.answer(&r1, &keys(), 0), Err(DropReason::UnknownNode));
    }
}
