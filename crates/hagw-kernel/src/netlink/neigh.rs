//! Neighbour (ARP / NDP) entries: how the virtual networks learn which
//! addresses live behind a bridge.

use std::net::IpAddr;

use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState,
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
