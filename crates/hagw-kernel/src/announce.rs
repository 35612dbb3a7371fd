//! Telling a link that addresses moved here: gratuitous ARP (IPv4) and
//! unsolicited Neighbor Advertisements (IPv6), for the VRRP Master
//! (RFC 9568 §6.4.1, §8.1.2, §8.2.4) and after a split brain heals.
//!
//! # Without `unsafe` and without another crate
//! An ARP frame needs an `AF_PACKET` socket and a `sockaddr_ll` to send it
//! to; nix and socket2 only build those in `unsafe` code, and the workspace
//! forbids it. But `getifaddrs(3)` returns one `sockaddr_ll` per interface
//! (index, MAC), already built, through nix's safe wrapper: that is the
//! destination given to `sendto`. A `SOCK_RAW` frame carries its own
//! Ethernet header, and the kernel reads the protocol from it (the address's
//! `sll_protocol` is 0), so nothing else is needed. No `AF_PACKET` crate
//! (pnet and the like) is pulled in for one 42-byte frame.
//!
//! IPv6 needs no link layer socket: the advertisement is an ICMPv6 message
//! on a raw ICMPv6 socket (the kernel sums it), to ff02::1 with hop limit
//! 255, the Override and Router flags and our MAC as Target Link-Layer
//! Address. Its source is the interface's link-local address, which the
//! kernel chooses; receivers do not check it.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::os::fd::AsRawFd;

use nix::sys::socket::{sendto, LinkAddr, MsgFlags};
use socket2::{Domain, Protocol, Socket, Type};

/// Why an announcement could not go out.
#[derive(Debug, thiserror::Error)]
pub enum AnnounceError {
    #[error("interface {0} not found (or it has no link layer address)")]
    NoInterface(String),
    #[error("{op} on {interface}: {source}")]
    Io {
        op: &'static str,
        interface: String,
        #[source]
        source: io::Error,
    },
}

/// The all-nodes group unsolicited advertisements go to (RFC 4861 §7.2.6).
pub const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);

const ETH_P_ARP: u16 = 0x0806;
const ETH_P_IP: u16 = 0x0800;
/// ICMPv6 Neighbor Advertisement (RFC 4861 §4.4).
const ND_NEIGHBOR_ADVERT: u8 = 136;
const NA_ROUTER: u8 = 0x80;
const NA_OVERRIDE: u8 = 0x20;
/// Option 2, Target Link-Layer Address.
const ND_OPT_TARGET_LL: u8 = 2;

/// A gratuitous ARP request (RFC 5227 §3 "ARP Announcement"): broadcast,
/// sender and target protocol address both `ip`. Every Linux, switch and
/// cloud host we know updates an existing entry from it.
pub fn garp_frame(mac: [u8; 6], ip: Ipv4Addr) -> [u8; 42] {
    let mut f = [0u8; 42];
    f[0..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&ETH_P_ARP.to_be_bytes());
    // Ethernet, IPv4, 6- and 4-byte addresses, request.
    f[14..16].copy_from_slice(&1u16.to_be_bytes());
    f[16..18].copy_from_slice(&ETH_P_IP.to_be_bytes());
    f[18] = 6;
    f[19] = 4;
    f[20..22].copy_from_slice(&1u16.to_be_bytes());
    f[22..28].copy_from_slice(&mac);
    f[28..32].copy_from_slice(&ip.octets());
    // Target hardware address stays zero.
    f[38..42].copy_from_slice(&ip.octets());
    f
}

/// An unsolicited Neighbor Advertisement for `target` (RFC 4861 §7.2.6),
/// checksum left zero for the kernel: Router and Override set, Solicited
/// clear (it goes to a multicast group), our MAC as the target's.
pub fn na_message(mac: [u8; 6], target: Ipv6Addr) -> [u8; 32] {
    let mut m = [0u8; 32];
    m[0] = ND_NEIGHBOR_ADVERT;
    m[4] = NA_ROUTER | NA_OVERRIDE;
    m[8..24].copy_from_slice(&target.octets());
    m[24] = ND_OPT_TARGET_LL;
    m[25] = 1;
    m[26..32].copy_from_slice(&mac);
    m
}

/// The `sockaddr_ll` of `interface` (its index and MAC), from getifaddrs.
fn link(interface: &str) -> Result<(LinkAddr, [u8; 6]), AnnounceError> {
    let addrs = nix::ifaddrs::getifaddrs().map_err(|e| AnnounceError::Io {
        op: "getifaddrs",
        interface: interface.to_string(),
        source: e.into(),
    })?;
    for a in addrs.filter(|a| a.interface_name == interface) {
        if let Some(l) = a.address.as_ref().and_then(|s| s.as_link_addr()) {
            if let Some(mac) = l.addr().filter(|m| *m != [0; 6]) {
                return Ok((*l, mac));
            }
        }
    }
    Err(AnnounceError::NoInterface(interface.to_string()))
}

/// Announces `addrs` on `interface` once: a gratuitous ARP per IPv4
/// address, an unsolicited NA per IPv6 one. Returns how many went out; the
/// first error stops it (the caller repeats on its schedule anyway).
/// Blocking but short: two socket calls per address, never a wait.
pub fn announce(interface: &str, addrs: &[IpAddr]) -> Result<usize, AnnounceError> {
    let io = |op| {
        move |source| AnnounceError::Io {
            op,
            interface: interface.to_string(),
            source,
        }
    };
    let (ll, mac) = link(interface)?;
    let mut sent = 0;
    if addrs.iter().any(IpAddr::is_ipv4) {
        // Protocol 0: this socket receives nothing, it only sends.
        let s = Socket::new(Domain::PACKET, Type::RAW, None).map_err(io("AF_PACKET socket"))?;
        for a in addrs {
            if let IpAddr::V4(v4) = a {
                sendto(s.as_raw_fd(), &garp_frame(mac, *v4), &ll, MsgFlags::empty())
                    .map_err(|e| io("send gratuitous ARP")(e.into()))?;
                sent += 1;
            }
        }
    }
    if addrs.iter().any(IpAddr::is_ipv6) {
        let s = Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6))
            .map_err(io("ICMPv6 socket"))?;
        s.bind_device(Some(interface.as_bytes()))
            .map_err(io("SO_BINDTODEVICE"))?;
        let index = u32::try_from(ll.ifindex()).unwrap_or(0);
        s.set_multicast_if_v6(index)
            .map_err(io("IPV6_MULTICAST_IF"))?;
        // RFC 4861 §7.1.2: receivers drop ND messages with any other hop limit.
        s.set_multicast_hops_v6(255)
            .map_err(io("IPV6_MULTICAST_HOPS"))?;
        s.set_multicast_loop_v6(false)
            .map_err(io("IPV6_MULTICAST_LOOP"))?;
        let dst = SocketAddr::V6(SocketAddrV6::new(ALL_NODES, 0, 0, index));
        for a in addrs {
            if let IpAddr::V6(v6) = a {
                s.send_to(&na_message(mac, *v6), &dst.into())
                    .map_err(io("send unsolicited NA"))?;
                sent += 1;
            }
        }
    }
    Ok(sent)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0a];

    #[test]
    fn garp_is_an_arp_announcement() {
        let f = garp_frame(MAC, Ipv4Addr::new(10, 0, 0, 100));
        let hex: String = f.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            concat!(
                "ffffffffffff",
                "02000000000a",
                "0806",
                "0001",
                "0800",
                "06",
                "04",
                "0001",
                "02000000000a",
                "0a000064",
                "000000000000",
                "0a000064"
            )
        );
    }

    #[test]
    fn na_has_router_and_override_but_not_solicited() {
        let t: Ipv6Addr = "2001:db8::1".parse().unwrap_or(Ipv6Addr::LOCALHOST);
        let m = na_message(MAC, t);
        assert_eq!((m[0], m[1]), (136, 0));
        assert_eq!(m[4], 0xa0);
        assert_eq!(&m[8..24], &t.octets());
        assert_eq!(&m[24..26], &[2, 1]);
        assert_eq!(&m[26..32], &MAC);
    }

    #[test]
    fn an_unknown_interface_is_named() {
        let e = announce("hagw-nope0", &[IpAddr::V4(Ipv4Addr::LOCALHOST)]);
        assert!(
            matches!(&e, Err(AnnounceError::NoInterface(n)) if n == "hagw-nope0"),
            "{e:?}"
        );
    }
}
