//! Interface addresses: what is there, and adding or removing one (the VRRP
//! virtual address, a gateway address on a bridge).

use std::net::IpAddr;

use ipnet::IpNet;
use netlink_packet_core::{NLM_F_CREATE, NLM_F_REPLACE};
use netlink_packet_route::{
    address::{AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage, AddressScope},
    RouteNetlinkMessage,
};

use super::{family_of, NlError, NlSocket, Request};

/// An address as dumped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addr {
    pub index: u32,
    pub addr: IpAddr,
    pub prefix_len: u8,
    /// Scope global (not link-local, not host).
    pub global: bool,
    /// IFA_F_SECONDARY (IPv4).
    pub secondary: bool,
}

impl Addr {
    /// The subnet, when the address has one (not /32, /128).
    pub fn subnet(&self) -> Option<IpNet> {
        let full = if self.addr.is_ipv4() { 32 } else { 128 };
        (self.prefix_len < full)
            .then(|| {
                IpNet::new(self.addr, self.prefix_len)
                    .ok()
                    .map(|n| n.trunc())
            })
            .flatten()
    }
}

/// Decodes an address message.
pub fn parse_addr(m: AddressMessage) -> Option<Addr> {
    let mut local = None;
    let mut address = None;
    let mut flags = AddressFlags::from_bits_retain(u32::from(m.header.flags.bits()));
    for a in &m.attributes {
        match a {
            AddressAttribute::Local(ip) => local = Some(*ip),
            AddressAttribute::Address(ip) => address = Some(*ip),
            AddressAttribute::Flags(f) => flags = *f,
            _ => {}
        }
    }
    // IPv4: IFA_LOCAL is ours (IFA_ADDRESS is the peer on point-to-point).
    let addr = local.or(address)?;
    Some(Addr {
        index: m.header.index,
        addr,
        prefix_len: m.header.prefix_len,
        global: m.header.scope == AddressScope::Universe
            && !flags.contains(AddressFlags::Dadfailed)
            && !addr.is_loopback(),
        secondary: flags.contains(AddressFlags::Secondary)
            || m.header.flags.contains(AddressHeaderFlags::Secondary),
    })
}

/// RTM_NEWADDR / RTM_DELADDR of `net` on interface `index`. IPv6 addresses
/// are added without duplicate address detection (`nodad`): a floating or
/// shared gateway address is meant to exist on several nodes.
pub fn build_addr(index: u32, net: IpNet) -> AddressMessage {
    let mut m = AddressMessage::default();
    m.header.family = family_of(&net.addr());
    m.header.prefix_len = net.prefix_len();
    m.header.index = index;
    m.header.scope = AddressScope::Universe;
    m.attributes.push(AddressAttribute::Local(net.addr()));
    m.attributes.push(AddressAttribute::Address(net.addr()));
    if net.addr().is_ipv6() {
        m.attributes
            .push(AddressAttribute::Flags(AddressFlags::Nodad));
    }
    m
}

impl NlSocket {
    /// Adds `net` to interface `index` (an existing one is replaced: same
    /// result, no EEXIST).
    pub async fn add_address(
        &mut self,
        index: u32,
        net: IpNet,
    ) -> std::io::Result<Result<(), NlError>> {
        self.request(Request {
            msg: RouteNetlinkMessage::NewAddress(build_addr(index, net)),
            flags: NLM_F_CREATE | NLM_F_REPLACE,
        })
        .await
    }

    /// Removes `net` from interface `index`; an address that is not there is
    /// not an error.
    pub async fn del_address(
        &mut self,
        index: u32,
        net: IpNet,
    ) -> std::io::Result<Result<(), NlError>> {
        let r = self
            .request(Request {
                msg: RouteNetlinkMessage::DelAddress(build_addr(index, net)),
                flags: 0,
            })
            .await?;
        Ok(match r {
            Err(e) if e.errno == nix::libc::EADDRNOTAVAIL || e.errno == nix::libc::ENODEV => Ok(()),
            r => r,
        })
    }

    /// Every address of the system.
    pub async fn dump_addresses(&mut self) -> std::io::Result<Vec<Addr>> {
        Ok(self
            .dump(RouteNetlinkMessage::GetAddress(AddressMessage::default()))
            .await?
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewAddress(a) => parse_addr(a),
                _ => None,
            })
            .collect())
    }
}

/// Whether `a` is on the system as `net` (address and prefix length).
pub fn has_address(addrs: &[Addr], index: u32, net: IpNet) -> bool {
    addrs
        .iter()
        .any(|a| a.index == index && a.addr == net.addr() && a.prefix_len == net.prefix_len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_messages_roundtrip() {
        for s in ["10.5.5.254/24", "2001:db8::1/64"] {
            let net: IpNet = s.parse().expect("net");
            let a = parse_addr(build_addr(7, net)).expect("parse");
            assert_eq!(
                (a.index, a.addr, a.prefix_len),
                (7, net.addr(), net.prefix_len())
            );
            assert!(a.global && !a.secondary);
        }
    }
}
