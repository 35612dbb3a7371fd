//! Neighbour (ARP / NDP) entries and bridge FDB entries: how the virtual
//! networks learn which addresses live behind a bridge, and behind which port.

use std::net::IpAddr;

use netlink_packet_route::{
    neighbour::{
        NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
    },
    RouteNetlinkMessage,
};

/// A neighbour entry as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Neighbour {
    pub index: u32,
    pub addr: IpAddr,
    pub mac: Option<[u8; 6]>,
    /// Usable: reachable, stale, delay, probe, permanent, noarp. Not
    /// usable: incomplete, failed.
    pub valid: bool,
}

/// Decodes a neighbour message (IPv4 / IPv6 entries only).
pub fn parse_neigh(m: &NeighbourMessage) -> Option<Neighbour> {
    let mut addr = None;
    let mut mac = None;
    for a in &m.attributes {
        match a {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => {
                addr = Some(IpAddr::V4(*v4))
            }
            NeighbourAttribute::Destination(NeighbourAddress::Inet6(v6)) => {
                addr = Some(IpAddr::V6(*v6))
            }
            NeighbourAttribute::LinkLayerAddress(b) => mac = <[u8; 6]>::try_from(b.as_slice()).ok(),
            _ => {}
        }
    }
    let valid = !matches!(
        m.header.state,
        NeighbourState::Incomplete | NeighbourState::Failed | NeighbourState::None
    );
    Some(Neighbour {
        index: m.header.ifindex,
        addr: addr?,
        mac,
        valid,
    })
}

/// A bridge forwarding database entry (`bridge fdb`): which port a MAC was
/// last seen behind. The virtual networks use it to forget the VMs of a port
/// that leaves its bridge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdbEntry {
    /// The bridge port.
    pub port: u32,
    /// The bridge (NDA_MASTER), when the kernel says.
    pub bridge: Option<u32>,
    pub mac: [u8; 6],
    /// The port's or the bridge's own address (`permanent`, `self`), not a
    /// learned one.
    pub local: bool,
}

/// Decodes an `AF_BRIDGE` neighbour message (an FDB entry); `None` for
/// anything else.
pub fn parse_fdb(m: &NeighbourMessage) -> Option<FdbEntry> {
    if m.header.family != netlink_packet_route::AddressFamily::Bridge {
        return None;
    }
    let mut mac = None;
    let mut bridge = None;
    for a in &m.attributes {
        match a {
            NeighbourAttribute::LinkLayerAddress(b) => mac = <[u8; 6]>::try_from(b.as_slice()).ok(),
            NeighbourAttribute::Controller(i) => bridge = Some(*i),
            _ => {}
        }
    }
    Some(FdbEntry {
        port: m.header.ifindex,
        bridge,
        mac: mac?,
        local: m.header.state == NeighbourState::Permanent
            || m.header.flags.contains(NeighbourFlags::Own),
    })
}

/// RTM_NEWNEIGH with NTF_USE for `addr` on `ifindex`: the kernel treats the
/// entry as used and confirms it as if traffic were waiting (STALE goes to
/// DELAY, then unicast probes; a missing entry is created and resolved).
/// This is how hagw checks that a silent VM is still there.
pub fn build_use(ifindex: u32, addr: IpAddr) -> NeighbourMessage {
    let mut m = NeighbourMessage::default();
    m.header.family = super::family_of(&addr);
    m.header.ifindex = ifindex;
    m.header.flags = NeighbourFlags::Use;
    m.attributes
        .push(NeighbourAttribute::Destination(match addr {
            IpAddr::V4(v4) => NeighbourAddress::Inet(v4),
            IpAddr::V6(v6) => NeighbourAddress::Inet6(v6),
        }));
    m
}

/// RTM_DELNEIGH for `addr` on `ifindex`.
pub fn build_delete(ifindex: u32, addr: IpAddr) -> NeighbourMessage {
    let mut m = build_use(ifindex, addr);
    m.header.flags = NeighbourFlags::empty();
    m
}

impl super::NlSocket {
    /// Every IPv4 and IPv6 neighbour entry of the system.
    pub async fn dump_neighbours(&mut self) -> std::io::Result<Vec<Neighbour>> {
        Ok(self
            .dump(RouteNetlinkMessage::GetNeighbour(
                NeighbourMessage::default(),
            ))
            .await?
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewNeighbour(n) => parse_neigh(n),
                _ => None,
            })
            .collect())
    }

    /// Every bridge FDB entry of the system.
    pub async fn dump_fdb(&mut self) -> std::io::Result<Vec<FdbEntry>> {
        let mut req = NeighbourMessage::default();
        req.header.family = netlink_packet_route::AddressFamily::Bridge;
        Ok(self
            .dump(RouteNetlinkMessage::GetNeighbour(req))
            .await?
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewNeighbour(n) => parse_fdb(n),
                _ => None,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_use_request_names_the_entry_and_carries_ntf_use() {
        let m = build_use(7, "10.10.10.10".parse().expect("ip"));
        assert!(m.header.flags.contains(NeighbourFlags::Use));
        let n = parse_neigh(&m).expect("parse");
        assert_eq!((n.index, n.addr), (7, "10.10.10.10".parse().expect("ip")));
        assert!(!build_delete(7, n.addr)
            .header
            .flags
            .contains(NeighbourFlags::Use));
    }

    #[test]
    fn fdb_entries_are_told_from_neighbours() {
        let mut m = NeighbourMessage::default();
        m.header.family = netlink_packet_route::AddressFamily::Bridge;
        m.header.ifindex = 9;
        m.header.state = NeighbourState::Reachable;
        m.attributes
            .push(NeighbourAttribute::LinkLayerAddress(vec![2, 0, 0, 0, 0, 1]));
        m.attributes.push(NeighbourAttribute::Controller(4));
        let f = parse_fdb(&m).expect("fdb");
        assert_eq!((f.port, f.bridge, f.local), (9, Some(4), false));
        assert!(
            parse_neigh(&m).is_none(),
            "no IP destination: not a neighbour"
        );
        assert!(parse_fdb(&build_use(1, "10.0.0.1".parse().expect("ip"))).is_none());
    }
}
