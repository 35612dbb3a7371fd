//! The small RIB hagw needs: Adj-RIB-In per peer and, per prefix, the set of
//! equal best paths that becomes one multipath kernel route.
//!
//! Decision process (RFC 4271 §9.1.2.2, the common subset): highest LOCAL_PREF,
//! shortest AS_PATH, lowest ORIGIN, lowest MED (between paths from the same
//! neighbour AS), eBGP over iBGP. Every path equal to the best through these steps
//! joins the multipath set — neighbour ASes may differ, as with FRR's
//! `bestpath as-path multipath-relax` — because a host's routers are equals.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;

use ipnet::IpNet;

use crate::packet::{Origin, PathAttributes};

/// What the decision process needs of one path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

/// A prefix whose multipath set changed: install these next hops (empty = remove).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub prefix: IpNet,
    pub next_hops: Vec<IpAddr>,
}

#[derive(Debug, Default)]
pub struct Rib {
    /// prefix -> (peer, path), at most one path per peer.
    paths: HashMap<IpNet, Vec<(IpAddr, Path)>>,
    /// peer -> its prefixes, so a session loss is one walk.
    by_peer: HashMap<IpAddr, HashSet<IpNet>>,
    /// What we last reported per prefix.
    installed: BTreeMap<IpNet, Vec<IpAddr>>,
    /// Graceful restart (RFC 4724): a restarting peer's paths we still use,
    /// until it announces them again or the sweep.
    stale: HashMap<IpAddr, HashSet<IpNet>>,
    max_paths: usize,
}

impl Rib {
    pub fn new(max_paths: usize) -> Rib {
        Rib {
            max_paths: max_paths.max(1),
            ..Rib::default()
        }
    }

    /// A peer announced `prefix` with `path` (replacing its previous path).
    pub fn announce(&mut self, peer: IpAddr, prefix: IpNet, path: Path, out: &mut Vec<Change>) {
        let v = self.paths.entry(prefix).or_default();
        match v.iter_mut().find(|(p, _)| *p == peer) {
            Some(slot) => slot.1 = path,
            None => v.push((peer, path)),
        }
        self.by_peer.entry(peer).or_default().insert(prefix);
        if let Some(s) = self.stale.get_mut(&peer) {
            s.remove(&prefix);
        }
        self.recompute(prefix, out);
    }

    pub fn withdraw(&mut self, peer: IpAddr, prefix: IpNet, out: &mut Vec<Change>) {
        if let Some(v) = self.paths.get_mut(&prefix) {
            let before = v.len();
            v.retain(|(p, _)| *p != peer);
            if v.len() != before {
                if let Some(s) = self.by_peer.get_mut(&peer) {
                    s.remove(&prefix);
                }
                self.recompute(prefix, out);
            }
        }
    }

    /// The session ended without a NOTIFICATION and the peer does graceful
    /// restart: keep forwarding on its paths, marked stale.
    pub fn peer_restarting(&mut self, peer: IpAddr) {
        if let Some(p) = self.by_peer.get(&peer) {
            self.stale
                .entry(peer)
                .or_default()
                .extend(p.iter().copied());
        }
    }

    /// Stale paths of `peer` still waiting to be refreshed.
    pub fn stale_count(&self, peer: IpAddr) -> usize {
        self.stale.get(&peer).map_or(0, HashSet::len)
    }

    /// End-of-RIB for a family, or the restart timer: what `peer` has not
    /// announced again goes. `v6` = None sweeps both families.
    pub fn sweep_stale(&mut self, peer: IpAddr, v6: Option<bool>, out: &mut Vec<Change>) {
        let Some(set) = self.stale.get_mut(&peer) else {
            return;
        };
        let gone: Vec<IpNet> = set
            .iter()
            .filter(|p| v6.is_none_or(|v6| p.addr().is_ipv6() == v6))
            .copied()
            .collect();
        for p in &gone {
            set.remove(p);
        }
        if set.is_empty() {
            self.stale.remove(&peer);
        }
        for p in gone {
            self.withdraw(peer, p, out);
        }
    }

    /// The session is gone: every path it gave goes.
    pub fn peer_down(&mut self, peer: IpAddr, out: &mut Vec<Change>) {
        self.stale.remove(&peer);
        let Some(prefixes) = self.by_peer.remove(&peer) else {
            return;
        };
        for prefix in prefixes {
            if let Some(v) = self.paths.get_mut(&prefix) {
                v.retain(|(p, _)| *p != peer);
            }
            self.recompute(prefix, out);
        }
    }

    /// Prefixes currently received from `peer`.
    pub fn received_from(&self, peer: IpAddr) -> usize {
        self.by_peer.get(&peer).map_or(0, HashSet::len)
    }

    /// The current multipath sets, for status output.
    pub fn installed(&self) -> &BTreeMap<IpNet, Vec<IpAddr>> {
        &self.installed
    }

    fn recompute(&mut self, prefix: IpNet, out: &mut Vec<Change>) {
        let next_hops = match self.paths.get(&prefix) {
            Some(v) if !v.is_empty() => multipath(v, self.max_paths),
            _ => {
                self.paths.remove(&prefix);
                Vec::new()
            }
        };
        let changed = match self.installed.get(&prefix) {
            Some(old) => *old != next_hops,
            None => !next_hops.is_empty(),
        };
        if !changed {
            return;
        }
        if next_hops.is_empty() {
            self.installed.remove(&prefix);
        } else {
            self.installed.insert(prefix, next_hops.clone());
        }
        out.push(Change { prefix, next_hops });
    }
}

/// The next hops of every path equal to the best, sorted, deduplicated.
fn multipath(paths: &[(IpAddr, Path)], max: usize) -> Vec<IpAddr> {
    let Some(best) = paths
        .iter()
        .map(|(peer, p)| (p.rank(), p.med, p.neighbor_as, p.peer_id, *peer))
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
        return Vec::new();
    };
    let (best_rank, best_med, best_as, ..) = best;
    let mut hops: Vec<IpAddr> = paths
        .iter()
        .filter(|(_, p)| p.rank() == best_rank && (p.neighbor_as != best_as || p.med == best_med))
        .map(|(_, p)| p.next_hop)
        .collect();
    hops.sort();
    hops.dedup();
    hops.truncate(max);
    hops
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
            out.last().map(|c| c.next_hops.clone()),
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
        assert_eq!(rib.installed()[&default()], vec![ip("10.0.0.1")]);
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
                next_hops: vec![ip("10.0.0.2")]
            }]
        );
        out.clear();
        rib.peer_down(ip("10.0.0.2"), &mut out);
        assert_eq!(
            out,
            vec![Change {
                prefix: default(),
                next_hops: vec![]
            }]
        );
        assert!(rib.installed().is_empty());
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
        assert_eq!(rib.installed()[&default()], vec![ip("10.0.0.1")]);
    }

    #[test]
    fn lower_med_wins_within_one_neighbour_as() {
        let mut rib = Rib::new(8);
        let mut out = Vec::new();
        let mut a = path("10.0.0.1", 1);
        a.med = 50;
        rib.announce(ip("10.0.0.1"), default(), a, &mut out);
        rib.announce(ip("10.0.0.2"), default(), path("10.0.0.2", 1), &mut out);
        assert_eq!(rib.installed()[&default()], vec![ip("10.0.0.2")]);
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
                next_hops: vec![]
            }]
        );
        assert_eq!(rib.installed()[&default()].len(), 2);
    }

    #[test]
    fn maximum_paths_caps_the_set() {
        let mut rib = Rib::new(2);
        let mut out = Vec::new();
        for i in 1..=4 {
            let a = format!("10.0.0.{i}");
            rib.announce(ip(&a), default(), path(&a, 1), &mut out);
        }
        assert_eq!(rib.installed()[&default()].len(), 2);
    }
}
