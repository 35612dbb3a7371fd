//! What a virtual network's table should hold, and what the kernel's routes
//! are in those terms: plain functions, tested without a kernel.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use netlink_packet_route::route::RouteType;

use super::NetworkConfig;
use crate::netlink::{route::dev_route_of, KernelRoute};

/// One route of a network's table.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Want {
    /// Through the routers (RTA_MULTIPATH when several), sorted.
    Via(Vec<IpAddr>),
    /// Out of the bridge: a VM on this host.
    Dev(u32),
    /// No router alive: refused, never falling through to the main table.
    Unreachable,
}

/// The MAC every host gives the bridge of the network `net`: locally
/// administered, unicast, `02:68` then the network address (`02:68:0a:0a:0a:00`
/// for 10.10.10.0/24), so it is the same on every host and differs between
/// networks.
pub fn default_mac(net: Ipv4Net) -> [u8; 6] {
    let o = net.trunc().network().octets();
    [0x02, 0x68, o[0], o[1], o[2], o[3]]
}

/// The routes of `net`'s table, given its bridge's index, the routers alive
/// (`None`: all of them) and its known VMs.
pub fn want_routes(
    net: &NetworkConfig,
    bridge: u32,
    alive: Option<&[IpAddr]>,
    vms: impl IntoIterator<Item = IpAddr>,
) -> BTreeMap<IpNet, Want> {
    let mut out = BTreeMap::new();
    let routers = |v6: bool| {
        let mut r: Vec<IpAddr> = net
            .routers
            .iter()
            .filter(|a| a.is_ipv6() == v6 && alive.is_none_or(|al| al.contains(a)))
            .copied()
            .collect();
        r.sort();
        r.dedup();
        if r.is_empty() {
            Want::Unreachable
        } else {
            Want::Via(r)
        }
    };
    let v4 = routers(false);
    out.insert(IpNet::V4(net.network()), v4.clone());
    out.insert(IpNet::V4(Ipv4Net::default()), v4);
    if let Some(n6) = net.network6() {
        let v6 = routers(true);
        out.insert(IpNet::V6(n6), v6.clone());
        out.insert(IpNet::V6(Ipv6Net::default()), v6);
    }
    for vm in vms {
        if net.may_be_vm(vm) {
            out.insert(IpNet::from(vm), Want::Dev(bridge));
        }
    }
    out
}

/// What a route of hagw's in a network's table is, in [`Want`] terms (None:
/// a shape hagw never writes there).
pub fn have_of(r: &KernelRoute) -> Option<Want> {
    match r.kind {
        RouteType::Unreachable => Some(Want::Unreachable),
        RouteType::Unicast if !r.nexthops.is_empty() => {
            let mut hops: Vec<IpAddr> = r.nexthops.iter().map(|n| n.addr).collect();
            hops.sort();
            hops.dedup();
            Some(Want::Via(hops))
        }
        RouteType::Unicast => dev_route_of(r)
            .filter(|d| d.gateway.is_none())
            .map(|d| Want::Dev(d.oif)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net() -> NetworkConfig {
        NetworkConfig {
            name: "net1".into(),
            bridge: "br_net1".into(),
            address: "10.10.10.2/24".parse().expect("net"),
            address6: Some("fd00:10::2/64".parse().expect("net")),
            table: 101,
            priority: 101,
            routers: vec![
                "192.168.56.102".parse().expect("ip"),
                "192.168.56.101".parse().expect("ip"),
                "fd00:56::101".parse().expect("ip"),
            ],
            static_vms: vec![],
            mac: default_mac("10.10.10.0/24".parse().expect("net")),
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn the_table_sends_the_network_and_the_default_through_every_router() {
        let w = want_routes(&net(), 7, None, [ip("10.10.10.10"), ip("fd00:10::10")]);
        let both = Want::Via(vec![ip("192.168.56.101"), ip("192.168.56.102")]);
        let p = |s: &str| s.parse::<IpNet>().expect("net");
        assert_eq!(w[&p("0.0.0.0/0")], both);
        assert_eq!(w[&p("10.10.10.0/24")], both);
        assert_eq!(w[&p("::/0")], Want::Via(vec![ip("fd00:56::101")]));
        assert_eq!(w[&p("10.10.10.10/32")], Want::Dev(7));
        assert_eq!(w[&p("fd00:10::10/128")], Want::Dev(7));
        assert_eq!(w.len(), 6);
    }

    #[test]
    fn dead_routers_leave_and_none_left_means_unreachable() {
        let one = [ip("192.168.56.102")];
        let w = want_routes(&net(), 7, Some(&one), []);
        let p = |s: &str| s.parse::<IpNet>().expect("net");
        assert_eq!(w[&p("0.0.0.0/0")], Want::Via(vec![ip("192.168.56.102")]));
        assert_eq!(w[&p("::/0")], Want::Unreachable);
        let w = want_routes(&net(), 7, Some(&[]), []);
        assert_eq!(w[&p("10.10.10.0/24")], Want::Unreachable);
    }

    #[test]
    fn only_addresses_of_the_network_are_vms() {
        let n = net();
        for vm in ["10.10.10.10", "10.10.10.254", "fd00:10::99"] {
            assert!(n.may_be_vm(ip(vm)), "{vm}");
        }
        for not in [
            "10.10.10.2",
            "10.10.10.0",
            "10.10.10.255",
            "10.10.20.10",
            "fd00:10::2",
            "fe80::1",
        ] {
            assert!(!n.may_be_vm(ip(not)), "{not}");
        }
        let w = want_routes(&n, 7, None, [ip("10.10.20.10"), ip("10.10.10.2")]);
        assert_eq!(w.len(), 4, "neither becomes a route");
    }

    #[test]
    fn every_network_gets_its_own_mac_the_same_on_every_host() {
        let a = default_mac("10.10.10.0/24".parse().expect("net"));
        assert_eq!(a, [0x02, 0x68, 10, 10, 10, 0]);
        assert_ne!(a, default_mac("10.10.20.0/24".parse().expect("net")));
        assert_eq!(a[0] & 0x03, 0x02, "locally administered unicast");
    }

    #[test]
    fn kernel_routes_read_back_as_what_was_written() {
        use crate::netlink::{
            build_route, parse_route,
            route::{build_dev_route, build_unreachable},
            DevRoute, Nexthop,
        };
        let p: IpNet = "10.10.10.0/24".parse().expect("net");
        let hops = [ip("192.168.56.102"), ip("192.168.56.101")];
        let nhs: Vec<Nexthop> = hops.iter().map(|a| Nexthop::new(*a)).collect();
        let r = parse_route(build_route(p, 101, 199, 0, &nhs)).expect("parse");
        assert_eq!(
            have_of(&r),
            Some(Want::Via(vec![ip("192.168.56.101"), ip("192.168.56.102")]))
        );
        let r = parse_route(build_unreachable(p, 101, 199)).expect("parse");
        assert_eq!(have_of(&r), Some(Want::Unreachable));
        let d = DevRoute {
            table: 101,
            prefix: "10.10.10.10/32".parse().expect("net"),
            oif: 7,
            gateway: None,
            src: None,
        };
        let r = parse_route(build_dev_route(&d, 199)).expect("parse");
        assert_eq!(have_of(&r), Some(Want::Dev(7)));
    }
}
