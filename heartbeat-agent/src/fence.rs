//! The agent's side of the kernel fence (issue #9, "never two owners"):
//! which package address may be served until when, as the fast path task
//! writes it into the program's `LEASES` map (heartbeat-ebpf fence.rs).
//!
//! [`Fence`] is pure (no map, no clock): the fast path feeds it the
//! packages task's [`LeaseSpec`]s, the time, and the newest reply anchors
//! it read from `LINKS`, and writes back what [`Fence::entries`] returns.
//!
//! Rules (the timing argument is `heartbeat_cluster::lease`):
//! - every address of every package ever listed is in the map; an
//!   address's value is its package's expiry, 0 when fenced;
//! - a renewal ([`Fence::renew`], every heartbeat interval, and at once when
//!   a package is listed) extends a package listed with `renew = true` to
//!   `anchor + lease_ns`, where the anchor is the minimum over its
//!   successors of the newest own send time that successor answered (on
//!   any link; [`anchor_ns`]), or now when it has no successors. A
//!   renewal never shortens a lease;
//! - `renew = false` keeps the expiry: the lease runs out;
//! - **a lapse is final for its generation**: a lease that was valid in
//!   its generation ([`LeaseSpec::generation`]) and is found run out at a
//!   renewal (or at a `SetLeases`) is not extended again; the fence
//!   records a [`LeaseLapse`] for the packages task, whose state machine
//!   lists the package again with a new generation only once the start
//!   rule allows it (`heartbeat_cluster::packages`: while the holder's
//!   lease was out, another node may have started the package);
//! - likewise, a generation that has not been valid yet becomes valid only
//!   in the epoch it was acquired in ([`LeaseSpec::epoch`]): listed for
//!   renewal in a later epoch first, it is a lapse too (its start rule was
//!   checked in a view that is gone);
//! - [`Fence::release`] sets the expiry to 0 at once and stops renewing
//!   until a later `SetLeases` lists the package with `renew = true` and a
//!   new generation;
//! - a package (or an address) no longer listed is fenced (0) and stays in
//!   the map.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv6Addr},
};

use heartbeat_common::{LeaseEntry, LeaseKey};

pub use crate::fastpath::{LeaseLapse, LeaseSpec};

/// What the fast path enforces before the packages task says anything:
/// every address of every package the local node may run, fenced (listed
/// with `renew = false`: an adopted lease keeps its expiry and runs out).
pub fn initial_specs(plan: &crate::plan::Plan) -> Vec<LeaseSpec> {
    plan.config
        .packages
        .iter()
        .zip(0u16..)
        .filter(|(p, _)| p.nodes.contains(&plan.local.id))
        .map(|(p, id)| LeaseSpec {
            package: id,
            addrs: p.fenced_addrs(),
            renew: false,
            successors: Vec::new(),
            lease_ns: 0,
            generation: 0,
            epoch: 0,
        })
        .collect()
}

/// The map key of an address (IPv4 v4-mapped).
pub fn lease_key(addr: IpAddr) -> LeaseKey {
    match addr {
        IpAddr::V4(a) => LeaseKey::v4(a.octets()),
        IpAddr::V6(a) => LeaseKey::v6(a.octets()),
    }
}

/// The address of a map key (v4-mapped keys as IPv4).
pub fn key_addr(key: &LeaseKey) -> IpAddr {
    let v6 = Ipv6Addr::from(key.addr);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

/// The anchor of a renewal: with no successors `now_ns`; else the minimum
/// over `successors` of `newest_reply_tx(successor)` (the newest own send
/// time that successor answered on any link, 0 if none): every successor
/// has received a heartbeat sent at or after it.
pub fn anchor_ns(successors: &[u16], newest_reply_tx: impl Fn(u16) -> u64, now_ns: u64) -> u64 {
    successors
        .iter()
        .map(|&s| newest_reply_tx(s))
        .min()
        .unwrap_or(now_ns)
}

/// One listed package.
#[derive(Clone, Debug)]
struct Held {
    spec: LeaseSpec,
    until_ns: u64,
    /// The generation the lease was last extended in, and the epoch it
    /// was acquired in.
    acquired: Option<(u32, u64)>,
    /// Whether it was valid (extended past the time of extension) in
    /// that generation.
    valid_once: bool,
    /// A generation that may not be renewed any more (it lapsed, or was
    /// released).
    blocked: Option<u32>,
}

impl Held {
    fn new(spec: LeaseSpec, until_ns: u64) -> Self {
        Self {
            spec,
            until_ns,
            acquired: None,
            valid_once: false,
            blocked: None,
        }
    }

    /// One renewal at `now_ns` (module doc); whether the expiry moved.
    fn renew(
        &mut self,
        now_ns: u64,
        newest_reply_tx: impl Fn(u16) -> u64,
        lapses: &mut Vec<LeaseLapse>,
    ) -> bool {
        let generation = self.spec.generation;
        if !self.spec.renew || self.blocked == Some(generation) {
            return false;
        }
        let lapsed = match self.acquired {
            Some((g, epoch)) if g == generation => {
                // Ran out after being valid; or never valid, and its view
                // is gone.
                (self.valid_once && self.until_ns <= now_ns)
                    || (!self.valid_once && epoch != self.spec.epoch)
            }
            _ => {
                // A new acquisition: the state machine passed the start
                // rule in this epoch.
                self.acquired = Some((generation, self.spec.epoch));
                self.valid_once = false;
                false
            }
        };
        if lapsed {
            self.blocked = Some(generation);
            lapses.push(LeaseLapse {
                package: self.spec.package,
                generation,
            });
            return false;
        }
        let anchor = anchor_ns(&self.spec.successors, &newest_reply_tx, now_ns);
        let until = anchor.saturating_add(self.spec.lease_ns);
        if until > self.until_ns {
            self.until_ns = until;
            self.valid_once |= until > now_ns;
            return true;
        }
        false
    }
}

/// The fence's state: the listed packages, and every address written.
#[derive(Clone, Debug, Default)]
pub struct Fence {
    packages: BTreeMap<u16, Held>,
    /// Every address ever written, with its package: those no longer
    /// listed stay, fenced.
    known: BTreeMap<LeaseKey, u16>,
    renewals: u64,
    /// Lapses not yet taken by the fast path.
    lapses: Vec<LeaseLapse>,
    lapsed_total: u64,
}

impl Fence {
    /// The fence as a pinned `LEASES` map left it (an adopted program
    /// after an announced restart): every address known, each package
    /// with a lease left listed with the expiry the map holds, not renewed
    /// until listed again.
    pub fn adopt(entries: &BTreeMap<LeaseKey, LeaseEntry>) -> Self {
        let mut f = Self::default();
        for (k, e) in entries {
            f.known.insert(*k, e.package);
            if e.until_ns == 0 {
                // Fenced: nothing to carry on.
                continue;
            }
            let h = f.packages.entry(e.package).or_insert_with(|| {
                Held::new(
                    LeaseSpec {
                        package: e.package,
                        addrs: Vec::new(),
                        renew: false,
                        successors: Vec::new(),
                        lease_ns: 0,
                        generation: 0,
                        epoch: 0,
                    },
                    0,
                )
            });
            h.spec.addrs.push(key_addr(k));
            h.until_ns = h.until_ns.max(e.until_ns);
        }
        f
    }

    /// Replaces the listed packages (`Command::SetLeases`): a package
    /// listed before keeps its expiry, a new one starts fenced (0); then
    /// renews those with `renew = true` at `now_ns`.
    pub fn set(
        &mut self,
        specs: Vec<LeaseSpec>,
        now_ns: u64,
        newest_reply_tx: impl Fn(u16) -> u64,
    ) {
        let mut next = BTreeMap::new();
        for spec in specs {
            for &a in &spec.addrs {
                self.known.insert(lease_key(a), spec.package);
            }
            let held = match self.packages.remove(&spec.package) {
                Some(mut h) => {
                    h.spec = spec;
                    h
                }
                None => Held::new(spec, 0),
            };
            next.insert(held.spec.package, held);
        }
        self.packages = next;
        self.renew(now_ns, newest_reply_tx);
    }

    /// Ends `package`'s lease now (`Command::ReleaseLease`); it is not
    /// renewed again until listed with `renew = true` by a later
    /// [`Fence::set`]. Returns whether the package is listed.
    pub fn release(&mut self, package: u16) -> bool {
        match self.packages.get_mut(&package) {
            Some(h) => {
                h.until_ns = 0;
                h.spec.renew = false;
                h.blocked = Some(h.spec.generation);
                true
            }
            None => false,
        }
    }

    /// Renews every package listed with `renew = true` (see the module
    /// doc); returns how many leases were extended.
    pub fn renew(&mut self, now_ns: u64, newest_reply_tx: impl Fn(u16) -> u64) -> u64 {
        let mut n = 0;
        let before = self.lapses.len();
        for h in self.packages.values_mut() {
            if h.renew(now_ns, &newest_reply_tx, &mut self.lapses) {
                n += 1;
            }
        }
        self.lapsed_total += (self.lapses.len() - before) as u64;
        self.renewals += n;
        n
    }

    /// The lapses found and not taken yet.
    pub fn pending_lapses(&self) -> &[LeaseLapse] {
        &self.lapses
    }

    /// A listed package's expiry, successors and lease length (for the
    /// fast path's account of a lapse).
    pub fn held(&self, package: u16) -> Option<(u64, &[u16], u64)> {
        self.packages
            .get(&package)
            .map(|h| (h.until_ns, h.spec.successors.as_slice(), h.spec.lease_ns))
    }

    /// The lapses found since the last call.
    pub fn take_lapses(&mut self) -> Vec<LeaseLapse> {
        std::mem::take(&mut self.lapses)
    }

    /// Lapses found so far.
    pub fn lapsed_total(&self) -> u64 {
        self.lapsed_total
    }

    /// Whether any package is renewed (the fast path skips its renewal
    /// tick otherwise).
    pub fn renewing(&self) -> bool {
        self.packages
            .values()
            .any(|h| h.spec.renew && h.blocked != Some(h.spec.generation))
    }

    /// Leases extended so far.
    pub fn renewals(&self) -> u64 {
        self.renewals
    }

    /// Package → expiry (0: fenced) of every listed package.
    pub fn leases(&self) -> BTreeMap<u16, u64> {
        self.packages
            .iter()
            .map(|(&p, h)| (p, h.until_ns))
            .collect()
    }

    /// What the `LEASES` map must hold: every address ever written, with
    /// its listed package's expiry, or 0.
    pub fn entries(&self) -> BTreeMap<LeaseKey, LeaseEntry> {
        let mut out: BTreeMap<LeaseKey, LeaseEntry> = self
            .known
            .iter()
            .map(|(&k, &package)| {
                (
                    k,
                    LeaseEntry {
                        until_ns: 0,
                        package,
                        _pad: [0; 6],
                    },
                )
            })
            .collect();
        for (&package, h) in &self.packages {
            for &a in &h.spec.addrs {
                out.insert(
                    lease_key(a),
                    LeaseEntry {
                        until_ns: h.until_ns,
                        package,
                        _pad: [0; 6],
                    },
                );
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn spec(package: u16, addr: &str, renew: bool, successors: &[u16]) -> LeaseSpec {
        LeaseSpec {
            package,
            addrs: vec![addr.parse().unwrap()],
            renew,
            successors: successors.to_vec(),
            lease_ns: 50 * MS,
            generation: 1,
            epoch: 7,
        }
    }

    fn until(f: &Fence, addr: &str) -> u64 {
        f.entries()[&lease_key(addr.parse().unwrap())].until_ns
    }

    #[test]
    fn keys_are_v4_mapped_and_round_trip() {
        let k = lease_key("10.0.0.100".parse().unwrap());
        assert_eq!(k.addr[..12], [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff]);
        assert_eq!(k.addr[12..], [10, 0, 0, 100]);
        for a in ["10.0.0.100", "fd00::64"] {
            let ip: IpAddr = a.parse().unwrap();
            assert_eq!(key_addr(&lease_key(ip)), ip);
        }
    }

    #[test]
    fn the_anchor_is_the_oldest_newest_reply_over_the_successors() {
        let newest = |p: u16| match p {
            2 => 300 * MS,
            3 => 200 * MS,
            _ => 0,
        };
        assert_eq!(anchor_ns(&[2, 3], newest, 999 * MS), 200 * MS);
        assert_eq!(anchor_ns(&[2], newest, 999 * MS), 300 * MS);
        // No successors: now.
        assert_eq!(anchor_ns(&[], newest, 999 * MS), 999 * MS);
        // A successor that never answered: no renewal possible.
        assert_eq!(anchor_ns(&[2, 4], newest, 999 * MS), 0);
    }

    #[test]
    fn renewals_follow_the_anchor_and_never_shorten() {
        let mut f = Fence::default();
        let mut newest = 100 * MS;
        f.set(vec![spec(0, "10.0.0.100", true, &[2])], 110 * MS, |_| {
            newest
        });
        assert_eq!(until(&f, "10.0.0.100"), 150 * MS);
        assert_eq!(f.renewals(), 1);
        newest = 120 * MS;
        assert_eq!(f.renew(130 * MS, |_| newest), 1);
        assert_eq!(until(&f, "10.0.0.100"), 170 * MS);
        // An older anchor (or no new reply) changes nothing.
        assert_eq!(f.renew(140 * MS, |_| 90 * MS), 0);
        assert_eq!(until(&f, "10.0.0.100"), 170 * MS);
        // A successor that never answered blocks the renewal.
        f.set(vec![spec(0, "10.0.0.100", true, &[2, 3])], 150 * MS, |p| {
            if p == 2 { 149 * MS } else { 0 }
        });
        assert_eq!(until(&f, "10.0.0.100"), 170 * MS);
        assert_eq!(f.leases()[&0], 170 * MS);
    }

    #[test]
    fn renew_false_runs_out_release_fences_and_unlisted_stays_fenced() {
        let mut f = Fence::default();
        f.set(
            vec![
                spec(0, "10.0.0.100", true, &[]),
                spec(1, "fd00::64", false, &[]),
            ],
            10 * MS,
            |_| 0,
        );
        assert_eq!(until(&f, "10.0.0.100"), 60 * MS);
        // Never renewed: fenced from the start.
        assert_eq!(until(&f, "fd00::64"), 0);
        // renew = false keeps the expiry.
        f.set(vec![spec(0, "10.0.0.100", false, &[])], 20 * MS, |_| 0);
        assert!(!f.renewing());
        assert_eq!(f.renew(30 * MS, |_| 0), 0);
        assert_eq!(until(&f, "10.0.0.100"), 60 * MS);
        // Package 1 is no longer listed: its address stays in the map, fenced.
        assert_eq!(until(&f, "fd00::64"), 0);
        assert_eq!(
            f.entries()[&lease_key("fd00::64".parse().unwrap())].package,
            1
        );
        // Release: 0 at once, and no renewal until listed again.
        f.set(vec![spec(0, "10.0.0.100", true, &[])], 40 * MS, |_| 0);
        assert_eq!(until(&f, "10.0.0.100"), 90 * MS);
        assert!(f.release(0));
        assert!(!f.release(7));
        assert_eq!(until(&f, "10.0.0.100"), 0);
        assert_eq!(f.renew(50 * MS, |_| 0), 0);
        assert_eq!(until(&f, "10.0.0.100"), 0);
        // Listed again in the released generation: still fenced; in a
        // new one (the state machine passed the start rule): renewed.
        f.set(vec![spec(0, "10.0.0.100", true, &[])], 55 * MS, |_| 0);
        assert_eq!(until(&f, "10.0.0.100"), 0);
        let mut again = spec(0, "10.0.0.100", true, &[]);
        again.generation = 2;
        f.set(vec![again], 60 * MS, |_| 0);
        assert_eq!(until(&f, "10.0.0.100"), 110 * MS);
        assert!(f.take_lapses().is_empty());
        // What an adopting agent rebuilds from the map is the same.
        let again = Fence::adopt(&f.entries());
        assert_eq!(again.entries(), f.entries());
        assert_eq!(again.leases(), f.leases());
        assert!(!again.renewing());
        // Nothing listed: everything fenced, nothing forgotten.
        f.set(Vec::new(), 70 * MS, |_| 0);
        assert_eq!(f.entries().len(), 2);
        assert!(f.entries().values().all(|e| e.until_ns == 0));
        assert!(f.leases().is_empty());
    }

    #[test]
    fn a_lease_that_ran_out_is_not_renewed_in_its_generation() {
        let mut f = Fence::default();
        let mut newest = 100 * MS;
        f.set(vec![spec(0, "10.0.0.100", true, &[2])], 110 * MS, |_| {
            newest
        });
        assert_eq!(until(&f, "10.0.0.100"), 150 * MS);
        // The successor stops answering: the lease runs out at 150 ms.
        assert_eq!(f.renew(149 * MS, |_| newest), 0);
        assert!(f.take_lapses().is_empty());
        // It answers again (a new view granted us again): a lapse, not a
        // renewal, and no more renewals in this generation.
        newest = 200 * MS;
        assert_eq!(f.renew(205 * MS, |_| newest), 0);
        assert_eq!(
            f.take_lapses(),
            vec![LeaseLapse {
                package: 0,
                generation: 1
            }]
        );
        assert_eq!(f.lapsed_total(), 1);
        assert!(!f.renewing());
        assert_eq!(f.renew(206 * MS, |_| newest), 0);
        f.set(vec![spec(0, "10.0.0.100", true, &[2])], 207 * MS, |_| {
            newest
        });
        assert_eq!(until(&f, "10.0.0.100"), 150 * MS);
        assert!(f.take_lapses().is_empty());
        // A new generation (the start rule passed): renewed again.
        let mut next = spec(0, "10.0.0.100", true, &[2]);
        next.generation = 2;
        f.set(vec![next], 208 * MS, |_| newest);
        assert_eq!(until(&f, "10.0.0.100"), 250 * MS);
        assert!(f.renewing());
    }

    #[test]
    fn a_lease_never_valid_in_its_generation_does_not_lapse() {
        // Started before any successor granted us: the lease is not valid
        // yet, and waiting for the grant is not a lapse.
        let mut f = Fence::default();
        f.set(vec![spec(0, "10.0.0.100", true, &[2])], 110 * MS, |_| 0);
        assert_eq!(until(&f, "10.0.0.100"), 50 * MS);
        assert_eq!(f.renew(120 * MS, |_| 0), 0);
        assert_eq!(f.renew(130 * MS, |_| 125 * MS), 1);
        assert_eq!(until(&f, "10.0.0.100"), 175 * MS);
        assert!(f.take_lapses().is_empty());
        // renew = false lets it run out; listed again after: a lapse.
        let mut off = spec(0, "10.0.0.100", false, &[2]);
        f.set(vec![off.clone()], 140 * MS, |_| 135 * MS);
        off.renew = true;
        f.set(vec![off], 180 * MS, |_| 179 * MS);
        assert_eq!(until(&f, "10.0.0.100"), 175 * MS);
        assert_eq!(f.take_lapses().len(), 1);
    }

    #[test]
    fn a_generation_never_valid_becomes_valid_only_in_its_epoch() {
        let mut f = Fence::default();
        // Acquired in epoch 7, no successor has answered yet.
        f.set(vec![spec(0, "10.0.0.100", true, &[2])], 110 * MS, |_| 0);
        assert_eq!(f.renew(120 * MS, |_| 0), 0);
        // Epoch 9 now, and the successor answers: its start rule was
        // checked in a view that is gone, so this is a lapse.
        let mut later = spec(0, "10.0.0.100", true, &[2]);
        later.epoch = 9;
        f.set(vec![later.clone()], 130 * MS, |_| 125 * MS);
        assert_eq!(until(&f, "10.0.0.100"), 50 * MS);
        assert_eq!(f.take_lapses().len(), 1);
        // Valid in its own epoch, it carries on into the next.
        later.generation = 2;
        f.set(vec![later.clone()], 140 * MS, |_| 135 * MS);
        assert_eq!(until(&f, "10.0.0.100"), 185 * MS);
        later.epoch = 10;
        f.set(vec![later], 150 * MS, |_| 145 * MS);
        assert_eq!(until(&f, "10.0.0.100"), 195 * MS);
        assert!(f.take_lapses().is_empty());
    }
}
