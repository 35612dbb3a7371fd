//! The small RIB hagw needs: Adj-RIB-In per peer and, per prefix, the set of
//! equal best paths that becomes one multipath kernel route.
//!
//! Decision process (RFC 4271 §9.1.2.2, the common subset): highest LOCAL_PREF,
//! shortest AS_PATH, lowest ORIGIN, lowest MED (between paths from the same
//! neighbour AS), eBGP over iBGP. Every path equal to the best through these steps
//! joins the multipath set — neighbour ASes may differ, as with FRR's
//! `bestpath as-path multipath-relax` — because a host's routers are equals.
//!
//! # Memory per prefix
//!
//! A router holds one /32 per VM, 100k and more. Per prefix the RIB keeps 32
//! bytes in its table (an 8-byte IPv4 key, the paths, the multipath set's id)
//! and nothing else: a path's attributes are interned (every prefix of an
//! UPDATE shares one), so are multipath sets (one [`NextHops`] per distinct
//! set), and one path per prefix — nearly every prefix has one — is stored
//! inline. There is no per-peer index of prefixes and no set of stale
//! prefixes: a session's end or a stale sweep walks the table once, and a
//! stale path is a bit beside its peer.

use std::net::IpAddr;
use std::sync::Arc;

use hagw_table::{FastMap, Id, Interner, PrefixMap};
use ipnet::IpNet;

use crate::packet::{Origin, PathAttributes};

/// What the decision process needs of one path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Path {
    pub next_hop: IpAddr,
    pub local_pref: u32,
    pub as_path_len: u32,
    pub origin: u8,
    pub med: u32,
    pub neighbor_as: u32,
    pub ebgp: bool,
    /// Tie-break: lowest BGP identifier, then lowest peer address.
    pub peer_id: u32,
}

impl Path {
    /// The path an UPDATE's attributes describe; `next_hop` is chosen by the
    /// caller (NEXT_HOP or MP_REACH, by family).
    pub fn from_attrs(
        attrs: &PathAttributes,
        next_hop: IpAddr,
        peer_as: u32,
        ebgp: bool,
        peer_id: u32,
    ) -> Path {
        let as_path = attrs.as_path.as_ref();
        Path {
            next_hop,
            // RFC 4271 §5.1.5: LOCAL_PREF is not sent over eBGP; 100 is the usual default.
            local_pref: if ebgp {
                100
            } else {
                attrs.local_pref.unwrap_or(100)
            },
            as_path_len: as_path.map_or(0, |p| p.len_for_best_path() as u32),
            origin: attrs.origin.map_or(Origin::Incomplete as u8, |o| o as u8),
            med: attrs.med.unwrap_or(0),
            neighbor_as: as_path.and_then(|p| p.first_asn()).unwrap_or(peer_as),
            ebgp,
            peer_id,
        }
    }

    /// Steps of the decision process that must be equal for multipath, as a key
    /// where smaller is better.
    fn rank(&self) -> (std::cmp::Reverse<u32>, u32, u8, bool) {
        (
            std::cmp::Reverse(self.local_pref),
            self.as_path_len,
            self.origin,
            !self.ebgp,
        )
    }
}

/// A multipath set: next hops sorted and deduplicated, shared by every
/// prefix that has the same set (cloning it allocates nothing).
pub type NextHops = Arc<[IpAddr]>;

/// A prefix whose multipath set changed: install these next hops (empty = remove).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub prefix: IpNet,
    pub next_hops: NextHops,
}

/// Marks a stale path (graceful restart) in [`PeerPath::peer`].
const STALE: u32 = 1 << 31;

/// One peer's path for a prefix: 8 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PeerPath {
    /// The peer's index in [`Peers`], with [`STALE`].
    peer: u32,
    path: Id,
}

impl PeerPath {
    fn peer(self) -> u32 {
        self.peer & !STALE
    }

    fn stale(self) -> bool {
        self.peer & STALE != 0
    }
}

/// The paths of one prefix, at most one per peer: the one path nearly every
/// prefix has is stored inline.
#[derive(Debug)]
enum Paths {
    One(PeerPath),
    Many(Box<[PeerPath]>),
}

impl Paths {
    fn as_slice(&self) -> &[PeerPath] {
        match self {
            Paths::One(p) => std::slice::from_ref(p),
            Paths::Many(v) => v,
        }
    }

    fn as_mut_slice(&mut self) -> &mut [PeerPath] {
        match self {
            Paths::One(p) => std::slice::from_mut(p),
            Paths::Many(v) => v,
        }
    }

    fn is_empty(&self) -> bool {
        self.as_slice().is_empty()
    }

    fn push(&mut self, p: PeerPath) {
        *self = match std::mem::replace(self, Paths::Many(Box::default())) {
            Paths::Many(v) if v.is_empty() => Paths::One(p),
            Paths::One(q) => Paths::Many(Box::new([q, p])),
            Paths::Many(v) => {
                let mut v = v.into_vec();
                v.push(p);
                Paths::Many(v.into_boxed_slice())
            }
        };
    }

    /// Removes the paths `gone` says, handing each to `dropped`.
    fn remove_if(&mut self, gone: impl Fn(PeerPath) -> bool, mut dropped: impl FnMut(PeerPath)) {
        if !self.as_slice().iter().any(|p| gone(*p)) {
            return;
        }
        let mut kept = Vec::new();
        for p in self.as_slice() {
            if gone(*p) {
                dropped(*p);
            } else {
                kept.push(*p);
            }
        }
        *self = match kept.as_slice() {
            [p] => Paths::One(*p),
            _ => Paths::Many(kept.into_boxed_slice()),
        };
    }
}

/// One prefix: its paths and the multipath set last reported for it.
#[derive(Debug)]
struct Dest {
    paths: Paths,
    best: Option<Id>,
}

impl Default for Dest {
    fn default() -> Self {
        Dest {
            paths: Paths::Many(Box::default()),
            best: None,
        }
    }
}

#[derive(Debug)]
struct PeerSlot {
    addr: IpAddr,
    /// Paths this peer has in the RIB, stale ones included.
    paths: usize,
    stale: usize,
}

/// Peers by a small index, so that a path names its peer in 4 bytes; an
/// index is reused once its peer has no path left.
#[derive(Debug, Default)]
struct Peers {
    by_addr: FastMap<IpAddr, u32>,
    slots: Vec<PeerSlot>,
    free: Vec<u32>,
}

impl Peers {
    fn find(&self, addr: IpAddr) -> Option<u32> {
        self.by_addr.get(&addr).copied()
    }

    fn index(&mut self, addr: IpAddr) -> u32 {
        if let Some(i) = self.find(addr) {
            return i;
        }
        let slot = PeerSlot {
            addr,
            paths: 0,
            stale: 0,
        };
        let i = match self.free.pop() {
            Some(i) => {
                self.slots[i as usize] = slot;
                i
            }
            None => {
                self.slots.push(slot);
                // Below STALE: one index per peer at the same time.
                (self.slots.len() - 1) as u32
            }
        };
        self.by_addr.insert(addr, i);
        i
    }

    fn slot(&mut self, i: u32) -> &mut PeerSlot {
        &mut self.slots[i as usize]
    }

    fn get(&self, addr: IpAddr) -> Option<&PeerSlot> {
        self.find(addr).map(|i| &self.slots[i as usize])
    }

    fn release_if_unused(&mut self, i: u32) {
        let s = &self.slots[i as usize];
        if s.paths == 0 && s.stale == 0 && self.by_addr.remove(&s.addr).is_some() {
            self.free.push(i);
        }
    }
}

/// Everything but the prefix table, so that a prefix's entry and these can
/// be borrowed at once.
#[derive(Debug)]
struct Tables {
    paths: Interner<Path>,
    sets: Interner<NextHops>,
    peers: Peers,
    max_paths: usize,
    /// The decision process's output, reused.
    hops: Vec<IpAddr>,
    /// The set found last, compared before a hash lookup: the prefixes of
    /// one UPDATE nearly always share it.
    last_set: Option<Id>,
    empty: NextHops,
}

#[derive(Debug)]
pub struct Rib {
    dests: PrefixMap<Dest>,
    t: Tables,
}

impl Rib {
    pub fn new(max_paths: usize) -> Rib {
        Rib {
            dests: PrefixMap::new(),
            t: Tables {
                paths: Interner::new(),
                sets: Interner::new(),
                peers: Peers::default(),
                max_paths: max_paths.max(1),
                hops: Vec::new(),
                last_set: None,
                empty: Arc::from(Vec::new()),
            },
        }
    }

    /// A peer announced `prefix` with `path` (replacing its previous path).
    pub fn announce(&mut self, peer: IpAddr, prefix: IpNet, path: Path, out: &mut Vec<Change>) {
        self.announce_all(peer, path, [prefix], out);
    }

    /// A peer announced `prefixes` with one `path` (one UPDATE): the path is
    /// stored once for all of them.
    pub fn announce_all(
        &mut self,
        peer: IpAddr,
        path: Path,
        prefixes: impl IntoIterator<Item = IpNet>,
        out: &mut Vec<Change>,
    ) {
        let pi = self.t.peers.index(peer);
        let id = self.t.paths.intern(path);
        for prefix in prefixes {
            self.t.paths.acquire(id);
            let dest = self.dests.get_or_insert_with(prefix, Dest::default);
            self.t.put(pi, id, prefix, dest, out);
        }
        self.t.paths.release(id);
    }

    pub fn withdraw(&mut self, peer: IpAddr, prefix: IpNet, out: &mut Vec<Change>) {
        self.withdraw_all(peer, [prefix], out);
    }

    /// A peer withdrew `prefixes`.
    pub fn withdraw_all(
        &mut self,
        peer: IpAddr,
        prefixes: impl IntoIterator<Item = IpNet>,
        out: &mut Vec<Change>,
    ) {
        let Some(pi) = self.t.peers.find(peer) else {
            return;
        };
        for prefix in prefixes {
            let Some(dest) = self.dests.get_mut(&prefix) else {
                continue;
            };
            let t = &mut self.t;
            let mut found = false;
            dest.paths
                .remove_if(|p| p.peer() == pi, |p| found |= t.drop_path(p));
            if found {
                t.recompute(prefix, dest, out);
                if dest.paths.is_empty() {
                    self.dests.remove(&prefix);
                }
            }
        }
        self.t.peers.release_if_unused(pi);
    }

    /// The session ended without a NOTIFICATION and the peer does graceful
    /// restart: keep forwarding on its paths, marked stale.
    pub fn peer_restarting(&mut self, peer: IpAddr) {
        let Some(pi) = self.t.peers.find(peer) else {
            return;
        };
        let slot = self.t.peers.slot(pi);
        if slot.stale == slot.paths {
            return;
        }
        for (_, dest) in self.dests.iter_mut() {
            for p in dest.paths.as_mut_slice() {
                if p.peer == pi {
                    p.peer |= STALE;
                    slot.stale += 1;
                }
            }
        }
    }

    /// Stale paths of `peer` still waiting to be refreshed.
    pub fn stale_count(&self, peer: IpAddr) -> usize {
        self.t.peers.get(peer).map_or(0, |s| s.stale)
    }

    /// End-of-RIB for a family, or the restart timer: what `peer` has not
    /// announced again goes. `v6` = None sweeps both families.
    pub fn sweep_stale(&mut self, peer: IpAddr, v6: Option<bool>, out: &mut Vec<Change>) {
        let Some(pi) = self.t.peers.find(peer) else {
            return;
        };
        if self.t.peers.slot(pi).stale == 0 {
            return;
        }
        self.remove_paths(pi, v6, |p| p.peer == pi | STALE, out);
    }

    /// The session is gone: every path it gave goes.
    pub fn peer_down(&mut self, peer: IpAddr, out: &mut Vec<Change>) {
        let Some(pi) = self.t.peers.find(peer) else {
            return;
        };
        self.remove_paths(pi, None, |p| p.peer() == pi, out);
    }

    /// One walk of the table (of one family, or both) removing peer `pi`'s
    /// paths that `gone` says.
    fn remove_paths(
        &mut self,
        pi: u32,
        v6: Option<bool>,
        gone: impl Fn(PeerPath) -> bool + Copy,
        out: &mut Vec<Change>,
    ) {
        let t = &mut self.t;
        self.dests.retain(v6, |prefix, dest| {
            let mut found = false;
            dest.paths.remove_if(gone, |p| found |= t.drop_path(p));
            if found {
                t.recompute(prefix, dest, out);
            }
            !dest.paths.is_empty()
        });
        t.peers.release_if_unused(pi);
    }

    /// Prefixes currently received from `peer`.
    pub fn received_from(&self, peer: IpAddr) -> usize {
        self.t.peers.get(peer).map_or(0, |s| s.paths)
    }

    /// The current multipath sets, for status output and to give the kernel
    /// the whole RIB (in no particular order).
    pub fn installed(&self) -> impl Iterator<Item = (IpNet, &NextHops)> + '_ {
        self.dests
            .iter()
            .filter_map(|(p, d)| Some((p, self.t.sets.get(d.best?)?)))
    }

    /// How many prefixes have a multipath set.
    pub fn installed_len(&self) -> usize {
        self.installed().count()
    }

    /// The multipath set of `prefix`, if it has one.
    pub fn next_hops(&self, prefix: IpNet) -> Option<&NextHops> {
        self.t.sets.get(self.dests.get(&prefix)?.best?)
    }
}

impl Tables {
    /// Sets peer `pi`'s path for `prefix` to `id`, whose reference it takes.
    fn put(&mut self, pi: u32, id: Id, prefix: IpNet, dest: &mut Dest, out: &mut Vec<Change>) {
        let slot = self.peers.slot(pi);
        match dest
            .paths
            .as_mut_slice()
            .iter_mut()
            .find(|p| p.peer() == pi)
        {
            Some(p) => {
                if p.stale() {
                    slot.stale -= 1;
                }
                let old = std::mem::replace(p, PeerPath { peer: pi, path: id });
                self.paths.release(old.path);
                if old.path == id {
                    // The same path again (or refreshed after a restart):
                    // the decision cannot change.
                    return;
                }
            }
            None => {
                dest.paths.push(PeerPath { peer: pi, path: id });
                slot.paths += 1;
            }
        }
        self.recompute(prefix, dest, out);
    }

    /// Forgets a path removed from a prefix; true (for `found |=`).
    fn drop_path(&mut self, p: PeerPath) -> bool {
        let slot = self.peers.slot(p.peer());
        slot.paths -= 1;
        if p.stale() {
            slot.stale -= 1;
        }
        self.paths.release(p.path);
        true
    }

    fn recompute(&mut self, prefix: IpNet, dest: &mut Dest, out: &mut Vec<Change>) {
        multipath(
            dest.paths.as_slice(),
            &self.paths,
            &self.peers,
            self.max_paths,
            &mut self.hops,
        );
        let new = (!self.hops.is_empty()).then(|| self.set_id());
        if new == dest.best {
            if let Some(id) = new {
                self.sets.release(id);
            }
            return;
        }
        if let Some(old) = std::mem::replace(&mut dest.best, new) {
            self.sets.release(old);
        }
        let next_hops = new
            .and_then(|id| self.sets.get(id))
            .unwrap_or(&self.empty)
            .clone();
        out.push(Change { prefix, next_hops });
    }

    /// The interned id of the set in `hops`, with one more reference.
    fn set_id(&mut self) -> Id {
        if let Some(id) = self.last_set {
            if self.sets.get(id).is_some_and(|s| **s == self.hops[..]) {
                self.sets.acquire(id);
                return id;
            }
        }
        let id = self.sets.intern_with(&self.hops[..], |h| Arc::from(h));
        self.last_set = Some(id);
        id
    }
}

/// The next hops of every path equal to the best, sorted, deduplicated, into
/// `hops`.
fn multipath(
    paths: &[PeerPath],
    table: &Interner<Path>,
    peers: &Peers,
    max: usize,
    hops: &mut Vec<IpAddr>,
) {
    hops.clear();
    let cands = || {
        paths.iter().filter_map(|p| {
            let peer = peers.slots.get(p.peer() as usize)?.addr;
            Some((peer, table.get(p.path)?))
        })
    };
    if let [_] = paths {
        hops.extend(cands().map(|(_, p)| p.next_hop));
        return;
    }
    let Some(best) = cands()
        .map(|(peer, p)| (p.rank(), p.med, p.neighbor_as, p.peer_id, peer))
        .min_by(|a, b| {
            a.0.cmp(&b.0)
                // MED only between paths from the same neighbour AS (§9.1.2.2 c).
                .then_with(|| {
                    if a.2 == b.2 {
                        a.1.cmp(&b.1)
                    } else {
                        std::cmp::Ordering::Equal
                    }
                })
                .then_with(|| a.3.cmp(&b.3))
                .then_with(|| a.4.cmp(&b.4))
        })
    else {
        return;
    };
    let (best_rank, best_med, best_as, ..) = best;
    hops.extend(
        cands()
            .filter(|(_, p)| {
                p.rank() == best_rank && (p.neighbor_as != best_as || p.med == best_med)
            })
            .map(|(_, p)| p.next_hop),
    );
    hops.sort();
    hops.dedup();
    hops.truncate(max);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(nh: &str, as_len: u32) -> Path {
        Path {
            next_hop: nh.parse().expect("ip"),
            local_pref: 100,
            as_path_len: as_len,
            origin: 0,
            med: 0,
            neighbor_as: 65000,
            ebgp: true,
            peer_id: 1,
        }
    }
    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }
    fn default() -> IpNet {
        "0.0.0.0/0".parse().expect("prefix")
    }
    fn hops(rib: &Rib) -> Vec<IpAddr> {
        rib.next_hops(default()).map_or(vec![], |n| n.to_vec())
    }

    #[test]
    fn two_equal_routers_give_one_route_with_both_next_hops() {
        let mut rib = Rib::new(8);
        let mut out = Vec::new();
        rib.announce(
            ip("192.168.100.21"),
            default(),
            path("192.168.100.21", 1),
            &mut out,
        );
        rib.announce(
            ip("192.168.100.20"),
            default(),
            path("192.168.100.20", 1),
            &mut out,
        );
        assert_eq!(
            out.last().map(|c| c.next_hops.to_vec()),
            Some(vec![ip("192.168.100.20"), ip("192.168.100.21")])
        );
    }

    #[test]
    fn a_longer_as_path_is_not_multipath() {
        let mut rib = Rib::new(8);
        let mut out = Vec::new();
        rib.announce(ip("10.0.0.1"), default(), path("10.0.0.1", 1), &mut out);
        rib.announce(ip("10.0.0.2"), default(), path("10.0.0.2", 2), &mut out);
        assert_eq!(out.len(), 1, "the longer path changes nothing: {out:?}");
        assert_eq!(hops(&rib), vec![ip("10.0.0.1")]);
    }

    #[test]
    fn withdraw_and_peer_down_shrink_then_remove_the_route() {
        let mut rib = Rib::new(8);
        let mut out = Vec::new();
        rib.announce(ip("10.0.0.1"), default(), path("10.0.0.1", 1), &mut out);
        rib.announce(ip("10.0.0.2"), default(), path("10.0.0.2", 1), &mut out);
        out.clear();
        rib.withdraw(ip("10.0.0.1"), default(), &mut out);
        assert_eq!(
            out,
            vec![Change {
                prefix: default(),
                next_hops: vec![ip("10.0.0.2")].into()
            }]
        );
        out.clear();
        rib.peer_down(ip("10.0.0.2"), &mut out);
        assert_eq!(
            out,
            vec![Change {
                prefix: default(),
                next_hops: vec![].into()
            }]
        );
        assert_eq!(rib.installed_len(), 0);
    }

    #[test]
    fn a_repeated_announcement_reports_nothing() {
        let mut rib = Rib::new(8);
        let mut out = Vec::new();
        rib.announce(ip("10.0.0.1"), default(), path("10.0.0.1", 1), &mut out);
        rib.announce(ip("10.0.0.1"), default(), path("10.0.0.1", 1), &mut out);
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn higher_local_pref_wins_over_shorter_as_path() {
        let mut rib = Rib::new(8);
        let mut out = Vec::new();
        let mut a = path("10.0.0.1", 3);
        a.local_pref = 200;
        rib.announce(ip("10.0.0.1"), default(), a, &mut out);
        rib.announce(ip("10.0.0.2"), default(), path("10.0.0.2", 1), &mut out);
        assert_eq!(hops(&rib), vec![ip("10.0.0.1")]);
    }

    #[test]
    fn lower_med_wins_within_one_neighbour_as() {
        let mut rib = Rib::new(8);
        let mut out = Vec::new();
        let mut a = path("10.0.0.1", 1);
        a.med = 50;
        rib.announce(ip("10.0.0.1"), default(), a, &mut out);
        rib.announce(ip("10.0.0.2"), default(), path("10.0.0.2", 1), &mut out);
        assert_eq!(hops(&rib), vec![ip("10.0.0.2")]);
    }

    #[test]
    fn a_restarting_peer_keeps_its_paths_until_end_of_rib() {
        let mut rib = Rib::new(8);
        let mut out = Vec::new();
        let other: IpNet = "10.9.0.0/16".parse().expect("prefix");
        rib.announce(ip("10.0.0.1"), default(), path("10.0.0.1", 1), &mut out);
        rib.announce(ip("10.0.0.1"), other, path("10.0.0.1", 1), &mut out);
        rib.announce(ip("10.0.0.2"), default(), path("10.0.0.2", 1), &mut out);
        out.clear();
        rib.peer_restarting(ip("10.0.0.1"));
        assert!(out.is_empty(), "nothing changes in the kernel");
        assert_eq!(rib.stale_count(ip("10.0.0.1")), 2);
        // It comes back and announces only the default, then End-of-RIB.
        rib.announce(ip("10.0.0.1"), default(), path("10.0.0.1", 1), &mut out);
        assert!(out.is_empty(), "the same next hops: {out:?}");
        rib.sweep_stale(ip("10.0.0.1"), Some(false), &mut out);
        assert_eq!(
            out,
            vec![Change {
                prefix: other,
                next_hops: vec![].into()
            }]
        );
        assert_eq!(hops(&rib).len(), 2);
    }

    #[test]
    fn maximum_paths_caps_the_set() {
        let mut rib = Rib::new(2);
        let mut out = Vec::new();
        for i in 1..=4 {
            let a = format!("10.0.0.{i}");
            rib.announce(ip(&a), default(), path(&a, 1), &mut out);
        }
        assert_eq!(hops(&rib).len(), 2);
    }

    fn host(i: u32) -> IpNet {
        IpNet::V4(ipnet::Ipv4Net::new(std::net::Ipv4Addr::from(0x0a80_0000 + i), 32).expect("len"))
    }

    /// What a /32 costs in the table is its slot: no allocation of its own.
    #[test]
    fn a_prefix_entry_is_small() {
        assert!(
            std::mem::size_of::<Dest>() <= 24,
            "{}",
            std::mem::size_of::<Dest>()
        );
        assert_eq!(std::mem::size_of::<PeerPath>(), 8);
    }

    /// The prefixes of one UPDATE share one stored path and one next-hop set.
    #[test]
    fn one_update_shares_its_path_and_set() {
        let mut rib = Rib::new(8);
        let mut out = Vec::new();
        rib.announce_all(
            ip("10.0.0.1"),
            path("10.0.0.1", 1),
            (0..1000).map(host),
            &mut out,
        );
        assert_eq!(out.len(), 1000);
        assert!(out
            .iter()
            .all(|c| Arc::ptr_eq(&c.next_hops, &out[0].next_hops)));
        assert_eq!((rib.t.paths.len(), rib.t.sets.len()), (1, 1));
        assert_eq!(rib.received_from(ip("10.0.0.1")), 1000);
        out.clear();
        rib.withdraw_all(ip("10.0.0.1"), (0..1000).map(host), &mut out);
        assert_eq!(out.len(), 1000);
        assert!(out.iter().all(|c| c.next_hops.is_empty()));
        assert_eq!((rib.t.paths.len(), rib.t.sets.len()), (0, 0));
        assert_eq!(rib.received_from(ip("10.0.0.1")), 0);
        assert!(rib.dests.is_empty());
    }

    /// A restart marks only that peer's paths stale; announcing one again
    /// refreshes it; the sweep removes the rest, and a peer down after it
    /// removes what the peer still has.
    #[test]
    fn stale_marks_are_per_peer_and_per_path() {
        let mut rib = Rib::new(8);
        let mut out = Vec::new();
        let (a, b) = (ip("10.0.0.1"), ip("10.0.0.2"));
        rib.announce_all(a, path("10.0.0.1", 1), (0..10).map(host), &mut out);
        rib.announce_all(b, path("10.0.0.2", 1), (0..5).map(host), &mut out);
        rib.peer_restarting(a);
        rib.peer_restarting(a);
        assert_eq!((rib.stale_count(a), rib.stale_count(b)), (10, 0));
        rib.announce_all(a, path("10.0.0.1", 1), (0..3).map(host), &mut out);
        assert_eq!(rib.stale_count(a), 7);
        out.clear();
        rib.sweep_stale(a, Some(false), &mut out);
        assert_eq!(rib.stale_count(a), 0);
        assert_eq!(rib.received_from(a), 3);
        // 3..5 fall back to b alone, 5..10 go.
        assert_eq!(out.len(), 7);
        assert_eq!(out.iter().filter(|c| c.next_hops.is_empty()).count(), 5);
        assert_eq!(rib.installed_len(), 5);
        out.clear();
        rib.peer_down(b, &mut out);
        assert_eq!(rib.installed_len(), 3);
        assert_eq!(rib.received_from(b), 0);
    }

    /// A gone peer's index is reused by the next, which inherits nothing.
    #[test]
    fn peer_indexes_are_reused() {
        let mut rib = Rib::new(8);
        let mut out = Vec::new();
        rib.announce(ip("10.0.0.1"), default(), path("10.0.0.1", 1), &mut out);
        rib.peer_down(ip("10.0.0.1"), &mut out);
        rib.announce(ip("10.0.0.2"), default(), path("10.0.0.2", 1), &mut out);
        assert_eq!(rib.t.peers.slots.len(), 1);
        assert_eq!(rib.received_from(ip("10.0.0.1")), 0);
        assert_eq!(hops(&rib), vec![ip("10.0.0.2")]);
    }
}
