//! rtnetlink multicast events: routes, links and addresses, decoded into the
//! few facts the FIB reconciler acts on.

use netlink_packet_route::{link::LinkFlags, RouteNetlinkMessage};

use crate::{
    netlink::{
        parse_datagram, parse_route, KernelRoute, NlSocket, Parsed, RTMGRP_IPV4_IFADDR,
        RTMGRP_IPV4_ROUTE, RTMGRP_IPV6_IFADDR, RTMGRP_IPV6_ROUTE, RTMGRP_LINK,
    },
    KernelError,
};

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
                _ => None,
            },
            _ => None,
        })
        .collect()
}
