//! Routes: decoding what the kernel has, building what hagw writes.
//!
//! One set of builders for every feature: BGP best paths and statics
//! ([`build_route`], RTA_MULTIPATH for several next hops), routes out of an
//! interface with an optional gateway and preferred source ([`DevRoute`],
//! policy routing's tables and the virtual networks'), and deletes that can
//! only ever match hagw's own routes.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use netlink_packet_route::{
    route::{
        RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope,
        RouteType,
    },
    AddressFamily, RouteNetlinkMessage,
};
use rtnetlink::{RouteMessageBuilder, RouteNextHopBuilder};

use super::{family_of, route_addr, table_u8, RT_TABLE_MAIN};

/// A next hop. IPv6 link-local next hops need `ifindex`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Nexthop {
    pub addr: IpAddr,
    pub ifindex: Option<u32>,
}

impl Nexthop {
    pub fn new(addr: IpAddr) -> Self {
        Nexthop {
            addr,
            ifindex: None,
        }
    }

    pub fn with_ifindex(addr: IpAddr, ifindex: u32) -> Self {
        Nexthop {
            addr,
            ifindex: Some(ifindex),
        }
    }

    /// Whether a next hop the kernel reports (`kernel`, always with an
    /// interface) is this one.
    pub fn matches(&self, kernel: &Nexthop) -> bool {
        self.addr == kernel.addr && (self.ifindex.is_none() || self.ifindex == kernel.ifindex)
    }
}

impl std::fmt::Display for Nexthop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.ifindex {
            Some(i) => write!(f, "{}%{}", self.addr, i),
            None => write!(f, "{}", self.addr),
        }
    }
}

/// A route as read from the kernel.
#[derive(Debug, Clone)]
pub struct KernelRoute {
    pub prefix: IpNet,
    pub table: u32,
    pub protocol: u8,
    pub metric: u32,
    pub kind: RouteType,
    pub nexthops: Vec<Nexthop>,
    pub msg: RouteMessage,
}

impl std::fmt::Display for KernelRoute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.prefix)?;
        for nh in &self.nexthops {
            write!(f, " via {nh}")?;
        }
        write!(
            f,
            " proto {} metric {} table {}",
            self.protocol, self.metric, self.table
        )
    }
}

fn route_ip(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

/// Decodes a kernel route message (IPv4 / IPv6 only).
pub fn parse_route(msg: RouteMessage) -> Option<KernelRoute> {
    let h = &msg.header;
    let unspecified = match h.address_family {
        AddressFamily::Inet => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        AddressFamily::Inet6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        _ => return None,
    };
    let mut dst = unspecified;
    let mut table = u32::from(h.table);
    let mut metric = 0;
    let mut gateway = None;
    let mut oif = None;
    let mut nexthops = Vec::new();
    for attr in &msg.attributes {
        match attr {
            RouteAttribute::Destination(a) => dst = route_ip(a)?,
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Priority(p) => metric = *p,
            RouteAttribute::Gateway(a) => gateway = route_ip(a),
            RouteAttribute::Via(netlink_packet_route::route::RouteVia::Inet6(v6)) => {
                gateway = Some(IpAddr::V6(*v6))
            }
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::MultiPath(hops) => {
                for hop in hops {
                    let gw = hop.attributes.iter().find_map(|a| match a {
                        RouteAttribute::Gateway(a) => route_ip(a),
                        RouteAttribute::Via(netlink_packet_route::route::RouteVia::Inet6(v6)) => {
                            Some(IpAddr::V6(*v6))
                        }
                        _ => None,
                    });
                    if let Some(addr) = gw {
                        nexthops.push(Nexthop {
                            addr,
                            ifindex: (hop.interface_index != 0).then_some(hop.interface_index),
                        });
                    }
                }
            }
            _ => {}
        }
    }
    if let Some(addr) = gateway {
        nexthops.push(Nexthop { addr, ifindex: oif });
    }
    nexthops.sort();
    let prefix = IpNet::new(dst, h.destination_prefix_length).ok()?;
    Some(KernelRoute {
        prefix,
        table,
        protocol: u8::from(h.protocol),
        metric,
        kind: h.kind,
        nexthops,
        msg,
    })
}

/// Builds the route message for `prefix` via `nexthops` (one gateway, or
/// RTA_MULTIPATH when there are several).
pub fn build_route(
    prefix: IpNet,
    table: u32,
    protocol: u8,
    metric: u32,
    nexthops: &[Nexthop],
) -> RouteMessage {
    // The builder only fails on family mismatches, which the caller has
    // filtered out (see `fib::usable_nexthops`); fall back to a manual build.
    let family = match prefix {
        IpNet::V4(_) => AddressFamily::Inet,
        IpNet::V6(_) => AddressFamily::Inet6,
    };
    let mut b = match RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(prefix.network(), prefix.prefix_len())
    {
        Ok(b) => b,
        Err(_) => RouteMessageBuilder::<IpAddr>::new(),
    }
    .table_id(table)
    .protocol(RouteProtocol::from(protocol))
    .priority(metric);
    match nexthops {
        [] => {}
        [nh] => {
            if let Ok(b2) = b.clone().gateway(nh.addr) {
                b = b2;
            }
            if let Some(i) = nh.ifindex {
                b = b.output_interface(i);
            }
        }
        many => {
            let hops = many
                .iter()
                .filter_map(|nh| {
                    let mut hb = RouteNextHopBuilder::new(family).via(nh.addr).ok()?;
                    if let Some(i) = nh.ifindex {
                        hb = hb.interface(i);
                    }
                    Some(hb.build())
                })
                .collect();
            b = b.multipath(hops);
        }
    }
    b.build()
}

/// Appends to `out` the netlink message [`build_route`] builds, as
/// RTM_NEWROUTE when `nexthops` has some and as RTM_DELROUTE (the delete of
/// [`build_delete`]) when it is empty, with `flags` and sequence number 0.
///
/// Written directly when every next hop is of the prefix's family (hagw's
/// routes): building a `RouteMessage` and serializing it allocates and costs
/// more than the kernel's own work for a /32. Anything else goes through the
/// builder. A test holds both to the same bytes.
pub fn write_route(
    out: &mut Vec<u8>,
    prefix: IpNet,
    table: u32,
    protocol: u8,
    metric: u32,
    nexthops: &[Nexthop],
    flags: u16,
) {
    let v4 = prefix.addr().is_ipv4();
    if nexthops.iter().any(|n| n.addr.is_ipv4() != v4) {
        let m = build_route(prefix, table, protocol, metric, nexthops);
        let msg = if nexthops.is_empty() {
            RouteNetlinkMessage::DelRoute(m)
        } else {
            RouteNetlinkMessage::NewRoute(m)
        };
        super::serialize(msg, flags, 0, out);
        return;
    }
    const RTM_NEWROUTE: u16 = 24;
    const RTM_DELROUTE: u16 = 25;
    const RTA_DST: u16 = 1;
    const RTA_OIF: u16 = 4;
    const RTA_GATEWAY: u16 = 5;
    const RTA_PRIORITY: u16 = 6;
    const RTA_MULTIPATH: u16 = 9;
    const RTA_TABLE: u16 = 15;
    fn attr(out: &mut Vec<u8>, kind: u16, value: &[u8]) {
        out.extend_from_slice(&(4 + value.len() as u16).to_ne_bytes());
        out.extend_from_slice(&kind.to_ne_bytes());
        out.extend_from_slice(value);
        out.resize(out.len().next_multiple_of(4), 0);
    }
    fn addr(a: IpAddr) -> ([u8; 16], usize) {
        let mut b = [0; 16];
        match a {
            IpAddr::V4(v4) => {
                b[..4].copy_from_slice(&v4.octets());
                (b, 4)
            }
            IpAddr::V6(v6) => (v6.octets(), 16),
        }
    }
    let start = out.len();
    let kind = if nexthops.is_empty() {
        RTM_DELROUTE
    } else {
        RTM_NEWROUTE
    };
    // nlmsghdr: length (set below), type, flags, seq, pid.
    out.extend_from_slice(&0u32.to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(&flags.to_ne_bytes());
    out.extend_from_slice(&[0; 8]);
    // rtmsg: family, dst_len, src_len, tos, table, protocol, scope
    // (universe), type (unicast), flags. A table above 255 goes in
    // RTA_TABLE, the header keeping main's number (as the builder does).
    let family = if v4 { 2 } else { 10 };
    let header_table = u8::try_from(table).unwrap_or(RT_TABLE_MAIN as u8);
    out.extend_from_slice(&[
        family,
        prefix.prefix_len(),
        0,
        0,
        header_table,
        protocol,
        0,
        1,
        0,
        0,
        0,
        0,
    ]);
    let (dst, n) = addr(prefix.addr());
    attr(out, RTA_DST, &dst[..n]);
    if table > 255 {
        attr(out, RTA_TABLE, &table.to_ne_bytes());
    }
    attr(out, RTA_PRIORITY, &metric.to_ne_bytes());
    match nexthops {
        [] => {}
        [nh] => {
            let (gw, n) = addr(nh.addr);
            attr(out, RTA_GATEWAY, &gw[..n]);
            if let Some(i) = nh.ifindex {
                attr(out, RTA_OIF, &i.to_ne_bytes());
            }
        }
        many => {
            let mp = out.len();
            out.extend_from_slice(&[0; 4]);
            for nh in many {
                let (gw, n) = addr(nh.addr);
                // rtnexthop: length, flags, hops, ifindex; then its gateway.
                out.extend_from_slice(&(8 + 4 + n as u16).to_ne_bytes());
                out.extend_from_slice(&[0, 0]);
                out.extend_from_slice(&nh.ifindex.unwrap_or(0).to_ne_bytes());
                attr(out, RTA_GATEWAY, &gw[..n]);
            }
            let len = (out.len() - mp) as u16;
            out[mp..mp + 2].copy_from_slice(&len.to_ne_bytes());
            out[mp + 2..mp + 4].copy_from_slice(&RTA_MULTIPATH.to_ne_bytes());
        }
    }
    let len = (out.len() - start) as u32;
    out[start..start + 4].copy_from_slice(&len.to_ne_bytes());
}

/// Builds a delete for hagw's route `prefix` (matching table, protocol and
/// metric, so that nobody else's route can match).
pub fn build_delete(prefix: IpNet, table: u32, protocol: u8, metric: u32) -> RouteMessage {
    build_route(prefix, table, protocol, metric, &[])
}

/// Builds a delete that matches exactly the given kernel route (its
/// destination, table, protocol, metric, type and first gateway/interface).
pub fn build_delete_exact(r: &KernelRoute) -> RouteMessage {
    let mut msg = RouteMessage::default();
    msg.header = RouteHeader {
        scope: netlink_packet_route::route::RouteScope::Universe,
        flags: Default::default(),
        ..r.msg.header.clone()
    };
    msg.attributes = r
        .msg
        .attributes
        .iter()
        .filter(|a| {
            matches!(
                a,
                RouteAttribute::Destination(_)
                    | RouteAttribute::Table(_)
                    | RouteAttribute::Priority(_)
                    | RouteAttribute::Gateway(_)
                    | RouteAttribute::Oif(_)
            )
        })
        .cloned()
        .collect();
    msg
}

/// A route out of an interface (`dev oif`), with an optional gateway and
/// preferred source: policy routing's per-interface tables, the virtual
/// networks' tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DevRoute {
    pub table: u32,
    pub prefix: IpNet,
    pub oif: u32,
    pub gateway: Option<IpAddr>,
    /// Preferred source (IPv4 link routes).
    pub src: Option<IpAddr>,
}

impl std::fmt::Display for DevRoute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.prefix.prefix_len() == 0 {
            write!(f, "default")?;
        } else {
            write!(f, "{}", self.prefix)?;
        }
        if let Some(g) = self.gateway {
            write!(f, " via {g}")?;
        }
        write!(f, " dev #{}", self.oif)?;
        if let Some(s) = self.src {
            write!(f, " src {s}")?;
        }
        write!(f, " table {}", self.table)
    }
}

/// RTM_NEWROUTE for `w`, of protocol `protocol`.
pub fn build_dev_route(w: &DevRoute, protocol: u8) -> RouteMessage {
    // The same builder as [`build_route`]; it only fails on family mismatches
    // (a gateway or source of the other family), which are then left out.
    let mut b = match RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(w.prefix.addr(), w.prefix.prefix_len())
    {
        Ok(b) => b,
        Err(_) => RouteMessageBuilder::<IpAddr>::new(),
    }
    .table_id(w.table)
    .protocol(RouteProtocol::from(protocol))
    .kind(RouteType::Unicast)
    .output_interface(w.oif);
    if w.prefix.addr().is_ipv4() && w.gateway.is_none() {
        b = b.scope(RouteScope::Link);
    }
    if let Some(g) = w.gateway {
        if let Ok(b2) = b.clone().gateway(g) {
            b = b2;
        }
    }
    if let Some(src) = w.src {
        if let Ok(b2) = b.clone().pref_source(src) {
            b = b2;
        }
    }
    b.build()
}

/// RTM_NEWROUTE for `unreachable PREFIX table TABLE`: packets that match get
/// an ICMP unreachable instead of falling through to the next rule (the
/// virtual networks' tables while no router is alive, so VM traffic never
/// leaks out of the main table's default).
pub fn build_unreachable(prefix: IpNet, table: u32, protocol: u8) -> RouteMessage {
    let mut msg = RouteMessage::default();
    msg.header = RouteHeader {
        address_family: family_of(&prefix.addr()),
        destination_prefix_length: prefix.prefix_len(),
        table: table_u8(table),
        protocol: RouteProtocol::from(protocol),
        scope: RouteScope::Universe,
        kind: RouteType::Unreachable,
        ..RouteHeader::default()
    };
    if prefix.prefix_len() > 0 {
        msg.attributes
            .push(RouteAttribute::Destination(route_addr(prefix.addr())));
    }
    msg.attributes.push(RouteAttribute::Table(table));
    msg
}

/// The [`DevRoute`] a kernel route is (None: not one of that shape, e.g.
/// multipath).
pub fn dev_route_of(r: &KernelRoute) -> Option<DevRoute> {
    if r.kind != RouteType::Unicast || r.nexthops.len() > 1 {
        return None;
    }
    let mut oif = None;
    let mut src = None;
    for a in &r.msg.attributes {
        match a {
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::PrefSource(RouteAddress::Inet(v4)) => src = Some(IpAddr::V4(*v4)),
            RouteAttribute::PrefSource(RouteAddress::Inet6(v6)) => src = Some(IpAddr::V6(*v6)),
            _ => {}
        }
    }
    Some(DevRoute {
        table: r.table,
        prefix: r.prefix,
        oif: r.nexthops.first().and_then(|n| n.ifindex).or(oif)?,
        gateway: r.nexthops.first().map(|n| n.addr),
        src,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_roundtrip() {
        let p: IpNet = "10.0.0.0/16".parse().expect("net");
        let nhs = vec![
            Nexthop::new("192.168.1.1".parse().expect("ip")),
            Nexthop {
                addr: "192.168.1.2".parse().expect("ip"),
                ifindex: Some(3),
            },
        ];
        let m = build_route(p, 254, 199, 20, &nhs);
        let k = parse_route(m).expect("parse");
        assert_eq!(k.prefix, p);
        assert_eq!(k.protocol, 199);
        assert_eq!(k.metric, 20);
        assert_eq!(k.table, 254);
        assert_eq!(k.nexthops, nhs);
    }

    /// The direct writer and the builder give the same bytes, for every
    /// shape of route hagw writes.
    #[test]
    fn written_routes_match_the_builder() {
        let nh = |a: &str, i: Option<u32>| Nexthop {
            addr: a.parse().expect("ip"),
            ifindex: i,
        };
        let cases: Vec<(&str, u32, Vec<Nexthop>)> = vec![
            ("10.128.0.1/32", 254, vec![nh("10.203.0.2", None)]),
            ("0.0.0.0/0", 254, vec![nh("10.0.0.1", Some(3))]),
            (
                "0.0.0.0/0",
                100,
                vec![nh("10.0.0.1", None), nh("10.0.0.2", Some(7))],
            ),
            ("10.0.0.0/16", 1000, vec![nh("10.0.0.1", None)]),
            ("10.0.0.0/16", 1000, vec![]),
            ("10.0.0.0/16", 254, vec![]),
            ("::/0", 254, vec![nh("fe80::1", Some(2))]),
            (
                "2001:db8::/64",
                254,
                vec![nh("2001:db8:1::1", None), nh("fe80::2", Some(4))],
            ),
            ("2001:db8::1/128", 300, vec![]),
            // Mixed families go through the builder.
            ("10.0.0.0/8", 254, vec![nh("fe80::1", Some(2))]),
        ];
        for (p, table, hops) in cases {
            let prefix: IpNet = p.parse().expect("net");
            let m = build_route(prefix, table, 199, 20, &hops);
            let msg = if hops.is_empty() {
                RouteNetlinkMessage::DelRoute(m)
            } else {
                RouteNetlinkMessage::NewRoute(m)
            };
            let mut want = Vec::new();
            super::super::serialize(msg, 0x0601, 0, &mut want);
            let mut got = Vec::new();
            write_route(&mut got, prefix, table, 199, 20, &hops, 0x0601);
            assert_eq!(got, want, "{p} table {table} via {hops:?}");
        }
    }

    #[test]
    fn unreachable_routes_parse_as_such() {
        let p: IpNet = "10.10.10.0/24".parse().expect("net");
        let k = parse_route(build_unreachable(p, 101, 199)).expect("parse");
        assert_eq!(
            (k.prefix, k.table, k.kind),
            (p, 101, RouteType::Unreachable)
        );
        assert!(k.nexthops.is_empty());
    }

    #[test]
    fn default_route_parses() {
        let p: IpNet = "::/0".parse().expect("net");
        let nhs = vec![Nexthop {
            addr: "fe80::1".parse().expect("ip"),
            ifindex: Some(2),
        }];
        let k = parse_route(build_route(p, 1000, 199, 20, &nhs)).expect("parse");
        assert_eq!(k.prefix, p);
        assert_eq!(k.table, 1000);
        assert_eq!(k.nexthops, nhs);
    }
}
