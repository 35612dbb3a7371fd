//! Sans-IO VRRPv3 for hagw (RFC 9568, which obsoletes RFC 5798), IPv4 and
//! IPv6.
//!
//! * [`packet`]: the advertisement codec, with every RFC 9568 §7.1 reception
//!   check that needs no instance state, and both IPv4 checksum forms.
//! * [`instance`]: one virtual router's state machine (RFC 9568 §6), plus a
//!   Fenced state for clouds: packets and `now` go in; packets to send,
//!   state changes, virtual address changes and the next timer deadline
//!   come out.
//!
//! Nothing here touches a socket, an interface or the clock, so the
//! elections, timers and races can be tested in virtual time, and the same
//! logic serves a raw socket, a lab harness or a replay. The driver owns:
//! * a raw IP socket for protocol [`PROTOCOL`] (112) per interface and
//!   family, joined to [`MULTICAST_V4`] / [`MULTICAST_V6`] when multicast,
//!   sending with TTL / hop limit [`TTL`] and handing the received TTL to
//!   [`Instance::handle_packet`] (which drops anything else, RFC 9568 §7.1);
//! * the source address: the interface's primary IPv4 address or its IPv6
//!   link-local address (RFC 9568 §7.2), the same one configured here;
//! * adding and removing the virtual addresses (and the virtual MAC, if
//!   used), and gratuitous ARP / unsolicited Neighbor Advertisements on
//!   [`Output::Announce`];
//! * Accept_Mode, which is only carried in the configuration.
//!
//! RFC 9568 renames Master to Active; this crate keeps Master, the name
//! operators and keepalived use.

pub mod instance;
pub mod packet;

pub use instance::{
    ConfigError, Counters, Discard, Instance, InstanceConfig, Output, Reason, StateKind, Transport,
};
pub use packet::{Advertisement, ChecksumMode, DecodeError, EncodeError, Family};

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// IP protocol number of VRRP (RFC 9568 §5.1.1.4, §5.1.2.3).
pub const PROTOCOL: u8 = 112;
/// The IPv4 multicast group adverts go to (RFC 9568 §5.1.1.2).
pub const MULTICAST_V4: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 18);
/// The IPv6 multicast group adverts go to (RFC 9568 §5.1.2.2).
pub const MULTICAST_V6: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0x12);
/// TTL / hop limit sent, and required on receipt (RFC 9568 §5.1.1.3, §7.1).
pub const TTL: u8 = 255;

/// The multicast group of `family`.
pub fn multicast_group(family: Family) -> IpAddr {
    match family {
        Family::V4 => IpAddr::V4(MULTICAST_V4),
        Family::V6 => IpAddr::V6(MULTICAST_V6),
    }
}
