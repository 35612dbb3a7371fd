//! What a router accepts from the peers of a listen range: with
//! `[[vnet_router]]`, only the VMs' host routes inside the virtual networks
//! (nothing else from a host), and at most `max_prefixes` of them per peer
//! (RFC 4486: Cease, Maximum Number of Prefixes Reached, when exceeded).

use std::collections::HashSet;

use hagw_bgp::packet::{Update, AFI_IPV4, AFI_IPV6};
use ipnet::IpNet;

/// One listen range's import policy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImportPolicy {
    /// Accept only host routes (/32, /128) inside one of these; `None`:
    /// anything.
    pub host_routes_in: Option<Vec<IpNet>>,
    /// Most prefixes a peer may have announced at once.
    pub max_prefixes: Option<u32>,
}

impl ImportPolicy {
    pub fn accepts(&self, p: &IpNet) -> bool {
        match &self.host_routes_in {
            None => true,
            Some(nets) => {
                p.prefix_len() == p.max_prefix_len() && nets.iter().any(|n| n.contains(p))
            }
        }
    }

    /// Drops what the policy refuses from `u`'s announcements (withdrawals
    /// pass: withdrawing what was never accepted is harmless). Returns how
    /// many were refused, and the first.
    pub fn filter(&self, u: &mut Update) -> (usize, Option<IpNet>) {
        if self.host_routes_in.is_none() {
            return (0, None);
        }
        let mut refused = 0;
        let mut first = None;
        let mut keep = |p: IpNet| {
            let ok = self.accepts(&p);
            if !ok {
                refused += 1;
                first.get_or_insert(p);
            }
            ok
        };
        u.nlri.retain(|p| keep(IpNet::V4(*p)));
        if let Some(mp) = u.attrs.mp_reach.as_mut() {
            mp.nlri.retain(|p| keep(*p));
        }
        (refused, first)
    }
}

/// The prefixes one session has announced and we accepted, counted against
/// the limit.
#[derive(Debug, Default)]
pub struct Count {
    prefixes: HashSet<IpNet>,
}

impl Count {
    /// Applies `u` (already filtered); returns the AFI whose prefix went over
    /// `limit`, if any.
    pub fn apply(&mut self, u: &Update, limit: u32) -> Option<u16> {
        for p in u.withdrawn_all() {
            self.prefixes.remove(&p);
        }
        if u.treat_as_withdraw.is_some() {
            for p in u.announced() {
                self.prefixes.remove(&p);
            }
            return None;
        }
        for p in u.announced() {
            self.prefixes.insert(p);
            if self.prefixes.len() > limit as usize {
                return Some(if p.addr().is_ipv6() {
                    AFI_IPV6
                } else {
                    AFI_IPV4
                });
            }
        }
        None
    }

    pub fn clear(&mut self) {
        self.prefixes = HashSet::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hagw_bgp::packet::{MpReach, PathAttributes, SAFI_UNICAST};

    fn update(v4: &[&str], v6: &[&str]) -> Update {
        Update {
            withdrawn: vec![],
            attrs: PathAttributes {
                next_hop: Some("192.168.56.103".parse().expect("ip")),
                mp_reach: (!v6.is_empty()).then(|| MpReach {
                    afi: AFI_IPV6,
                    safi: SAFI_UNICAST,
                    next_hops: vec!["fd00:56::103".parse().expect("ip")],
                    nlri: v6.iter().map(|s| s.parse().expect("p")).collect(),
                }),
                ..PathAttributes::default()
            },
            nlri: v4.iter().map(|s| s.parse().expect("p")).collect(),
            treat_as_withdraw: None,
            discarded: vec![],
        }
    }

    fn vnet_policy() -> ImportPolicy {
        ImportPolicy {
            host_routes_in: Some(vec![
                "10.10.10.0/24".parse().expect("net"),
                "fd00:10::/64".parse().expect("net"),
            ]),
            max_prefixes: Some(2),
        }
    }

    #[test]
    fn only_host_routes_inside_the_networks_pass() {
        let mut u = update(
            &[
                "10.10.10.10/32",
                "10.10.20.10/32",
                "10.10.10.0/25",
                "0.0.0.0/0",
            ],
            &["fd00:10::10/128", "fd00:99::1/128"],
        );
        let (refused, first) = vnet_policy().filter(&mut u);
        assert_eq!(refused, 4);
        assert_eq!(first, Some("10.10.20.10/32".parse().expect("p")));
        assert_eq!(u.nlri, vec!["10.10.10.10/32".parse().expect("p")]);
        assert_eq!(
            u.attrs.mp_reach.map(|m| m.nlri),
            Some(vec!["fd00:10::10/128".parse().expect("p")])
        );
        let mut any = update(&["0.0.0.0/0"], &[]);
        assert_eq!(ImportPolicy::default().filter(&mut any).0, 0);
    }

    #[test]
    fn the_limit_counts_what_is_announced_now() {
        let mut c = Count::default();
        assert_eq!(
            c.apply(&update(&["10.10.10.10/32", "10.10.10.11/32"], &[]), 2),
            None
        );
        let mut w = update(&[], &[]);
        w.withdrawn = vec!["10.10.10.10/32".parse().expect("p")];
        assert_eq!(c.apply(&w, 2), None);
        assert_eq!(c.apply(&update(&["10.10.10.12/32"], &[]), 2), None);
        assert_eq!(
            c.apply(&update(&[], &["fd00:10::1/128"]), 2),
            Some(AFI_IPV6)
        );
    }
}
