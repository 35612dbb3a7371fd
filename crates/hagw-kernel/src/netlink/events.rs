//! rtnetlink multicast events: routes, links, addresses and neighbours,
//! decoded into the few facts the reconcilers act on.

use netlink_packet_route::{link::LinkFlags, RouteNetlinkMessage};

use super::{
    neigh::{parse_neigh, Neighbour},
    parse_datagram, parse_route, KernelRoute, NlSocket, Parsed, RTMGRP_IPV4_IFADDR,
    RTMGRP_IPV4_ROUTE, RTMGRP_IPV6_IFADDR, RTMGRP_IPV6_ROUTE, RTMGRP_LINK,
};
use crate::KernelError;

/// The groups the FIB reconciler listens to (RTNLGRP_LINK, IPV4_IFADDR,
/// IPV4_ROUTE, IPV6_IFADDR, IPV6_ROUTE).
pub const FIB_GROUPS: u32 =
    RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_IFADDR | RTMGRP_IPV6_ROUTE;

/// One decoded event.
#[derive(Debug, Clone)]
pub enum Event {
    RouteAdded(KernelRoute),
    RouteDeleted(KernelRoute),
    /// A link appeared or changed; `up` is IFF_UP.
    Link {
        index: u32,
        up: bool,
    },
    LinkDeleted {
        index: u32,
    },
    /// An address was added or removed somewhere.
    Address {
        added: bool,
    },
    /// A neighbour entry appeared, changed (`removed` false) or went.
    Neighbour {
        neigh: Neighbour,
        removed: bool,
    },
    /// The socket overran (ENOBUFS): events were lost, resync everything.
    Overrun,
}

/// Opens the event socket (before dumping state, so that nothing is missed).
pub fn open() -> Result<NlSocket, KernelError> {
    NlSocket::open(FIB_GROUPS)
}

/// Receives the next datagram of events. Socket errors other than
/// overrun are returned.
pub async fn next(sock: &mut NlSocket) -> std::io::Result<Vec<Event>> {
    match sock.recv_raw().await {
        Ok(buf) => Ok(decode(&buf)),
        Err(e) if e.raw_os_error() == Some(nix::libc::ENOBUFS) => Ok(vec![Event::Overrun]),
        Err(e) => Err(e),
    }
}

/// [`decode`] minus route additions of protocol `own` (see
/// [`next_skipping_own`]).
pub fn decode_skipping_own(buf: &[u8], own: u8) -> Vec<Event> {
    decode(&without_own_additions(buf, own))
}

/// Like [`next`], but route additions of protocol `own` are dropped before
/// they are parsed: a burst of our own installs (100k routes) echoes back as
/// as many notifications, and parsing them would cost more than the installs.
pub async fn next_skipping_own(sock: &mut NlSocket, own: u8) -> std::io::Result<Vec<Event>> {
    match sock.recv_raw().await {
        Ok(buf) => Ok(decode(&without_own_additions(&buf, own))),
        Err(e) if e.raw_os_error() == Some(nix::libc::ENOBUFS) => Ok(vec![Event::Overrun]),
        Err(e) => Err(e),
    }
}

/// The datagram minus its RTM_NEWROUTE messages whose rtm_protocol is `own`,
/// read from the fixed headers (nlmsghdr, then struct rtmsg: protocol is its
/// 6th byte). Anything malformed is kept for the full parser to judge.
fn without_own_additions(buf: &[u8], own: u8) -> Vec<u8> {
    const NLMSG_HDRLEN: usize = 16;
    let mut out = Vec::with_capacity(buf.len());
    let mut off = 0;
    while let Some(hdr) = buf.get(off..off + NLMSG_HDRLEN) {
        let len = u32::from_ne_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]) as usize;
        let kind = u16::from_ne_bytes([hdr[4], hdr[5]]);
        let Some(msg) = buf.get(off..off + len).filter(|_| len >= NLMSG_HDRLEN) else {
            out.extend_from_slice(&buf[off..]);
            return out;
        };
        let own_add = kind == nix::libc::RTM_NEWROUTE && msg.get(NLMSG_HDRLEN + 5) == Some(&own);
        if !own_add {
            out.extend_from_slice(msg);
            // Keep the 4-byte alignment the parser expects between messages.
            out.resize(out.len().next_multiple_of(4), 0);
        }
        off += len.next_multiple_of(4);
    }
    out
}

/// Decodes one datagram of events.
pub fn decode(buf: &[u8]) -> Vec<Event> {
    parse_datagram(buf)
        .into_iter()
        .filter_map(|p| match p {
            Parsed::Msg { msg, .. } => match msg {
                RouteNetlinkMessage::NewRoute(m) => parse_route(m).map(Event::RouteAdded),
                RouteNetlinkMessage::DelRoute(m) => parse_route(m).map(Event::RouteDeleted),
                RouteNetlinkMessage::NewLink(l) => Some(Event::Link {
                    index: l.header.index,
                    up: l.header.flags.contains(LinkFlags::Up),
                }),
                RouteNetlinkMessage::DelLink(l) => Some(Event::LinkDeleted {
                    index: l.header.index,
                }),
                RouteNetlinkMessage::NewAddress(_) => Some(Event::Address { added: true }),
                RouteNetlinkMessage::DelAddress(_) => Some(Event::Address { added: false }),
                RouteNetlinkMessage::NewNeighbour(n) => {
                    parse_neigh(&n).map(|neigh| Event::Neighbour {
                        neigh,
                        removed: false,
                    })
                }
                RouteNetlinkMessage::DelNeighbour(n) => {
                    parse_neigh(&n).map(|neigh| Event::Neighbour {
                        neigh,
                        removed: true,
                    })
                }
                _ => None,
            },
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod filter_tests {
    use super::without_own_additions;

    /// A netlink message: header (len, type) and a 12-byte rtmsg whose 6th
    /// byte is the protocol, padded to a 4-byte multiple.
    fn msg(kind: u16, proto: u8, extra: usize) -> Vec<u8> {
        let len = 16 + 12 + extra;
        let mut m = Vec::new();
        m.extend_from_slice(&(len as u32).to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&[0; 10]);
        let mut rtm = [0u8; 12];
        rtm[5] = proto;
        m.extend_from_slice(&rtm);
        m.resize(len, 0xaa);
        m.resize(len.next_multiple_of(4), 0);
        m
    }

    #[test]
    fn only_our_own_route_additions_are_dropped() {
        let ours_added = msg(nix::libc::RTM_NEWROUTE, 199, 2);
        let ours_deleted = msg(nix::libc::RTM_DELROUTE, 199, 0);
        let foreign_added = msg(nix::libc::RTM_NEWROUTE, 16, 5);
        let buf = [ours_added, ours_deleted.clone(), foreign_added.clone()].concat();
        assert_eq!(
            without_own_additions(&buf, 199),
            [ours_deleted, foreign_added].concat()
        );
    }

    #[test]
    fn malformed_datagrams_are_passed_on_not_panicked_on() {
        for buf in [&[0u8; 3][..], &[255; 40], &[16, 0, 0, 0, 24, 0], &[0; 16]] {
            let _ = without_own_additions(buf, 199);
        }
        let truncated = &msg(nix::libc::RTM_NEWROUTE, 199, 0)[..20];
        assert_eq!(without_own_additions(truncated, 199), truncated);
    }
}
