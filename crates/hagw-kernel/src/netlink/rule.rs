//! Policy routing rules: one type for every rule hagw writes or reads.
//!
//! Pinning matches the firewall mark, policy routing the source address, the
//! virtual networks the input interface (`ip rule iif BRIDGE lookup TABLE`);
//! all of them are a [`Rule`], built by [`build_rule`] and read back by
//! [`parse_rule`], so a rule written by one part is recognised by every other.

use std::net::IpAddr;

use ipnet::IpNet;
use netlink_packet_route::{
    route::RouteProtocol,
    rule::{RuleAction, RuleAttribute, RuleHeader, RuleMessage},
    AddressFamily,
};

use super::{family_of, table_u8};

/// A `lookup TABLE` rule and its selectors.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Rule {
    /// IPv6 rule (else IPv4).
    pub v6: bool,
    pub priority: u32,
    pub table: u32,
    /// `from PREFIX`.
    pub from: Option<IpNet>,
    /// `fwmark MARK/MASK`.
    pub fwmark: Option<(u32, u32)>,
    /// `iif NAME`.
    pub iif: Option<String>,
}

impl Rule {
    /// `priority: from ADDR lookup TABLE` (a host prefix).
    pub fn from_addr(addr: IpAddr, table: u32, priority: u32) -> Rule {
        Rule {
            v6: addr.is_ipv6(),
            priority,
            table,
            from: Some(IpNet::from(addr)),
            fwmark: None,
            iif: None,
        }
    }

    /// `priority: fwmark MARK/MASK lookup TABLE`.
    pub fn fwmark(v6: bool, mark: u32, mask: u32, table: u32, priority: u32) -> Rule {
        Rule {
            v6,
            priority,
            table,
            from: None,
            fwmark: Some((mark, mask)),
            iif: None,
        }
    }

    /// `priority: iif DEV lookup TABLE`.
    pub fn iif(v6: bool, dev: &str, table: u32, priority: u32) -> Rule {
        Rule {
            v6,
            priority,
            table,
            from: None,
            fwmark: None,
            iif: Some(dev.to_string()),
        }
    }

    fn family(&self) -> AddressFamily {
        if self.v6 {
            AddressFamily::Inet6
        } else {
            AddressFamily::Inet
        }
    }
}

impl std::fmt::Display for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: from ", self.priority)?;
        match self.from {
            Some(s) if s.prefix_len() == s.max_prefix_len() => write!(f, "{}", s.addr())?,
            Some(s) => write!(f, "{s}")?,
            None => write!(f, "all")?,
        }
        if let Some((m, k)) = self.fwmark {
            write!(f, " fwmark {m:#x}/{k:#x}")?;
        }
        if let Some(i) = &self.iif {
            write!(f, " iif {i}")?;
        }
        write!(f, " lookup {}", self.table)
    }
}

/// RTM_NEWRULE / RTM_DELRULE for `r`, carrying FRA_PROTOCOL `protocol`.
pub fn build_rule(r: &Rule, protocol: u8) -> RuleMessage {
    let mut m = RuleMessage::default();
    m.header = RuleHeader {
        family: r.family(),
        src_len: r.from.map_or(0, |n| n.prefix_len()),
        table: table_u8(r.table),
        action: RuleAction::ToTable,
        ..RuleHeader::default()
    };
    if let Some(n) = r.from {
        debug_assert_eq!(family_of(&n.addr()), r.family());
        m.attributes.push(RuleAttribute::Source(n.addr()));
    }
    if let Some(dev) = &r.iif {
        m.attributes.push(RuleAttribute::Iifname(dev.clone()));
    }
    m.attributes.push(RuleAttribute::Priority(r.priority));
    m.attributes.push(RuleAttribute::Table(r.table));
    if let Some((mark, mask)) = r.fwmark {
        m.attributes.push(RuleAttribute::FwMark(mark));
        m.attributes.push(RuleAttribute::FwMask(mask));
    }
    m.attributes
        .push(RuleAttribute::Protocol(RouteProtocol::from(protocol)));
    m
}

/// A rule as read from the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelRule {
    pub rule: Rule,
    pub protocol: u8,
    /// `lookup TABLE` (not goto, blackhole...).
    pub to_table: bool,
    /// Has selectors [`Rule`] does not model (dst, oif, tos, ports...): it is
    /// never one of ours, whatever its protocol.
    pub extra: bool,
    pub msg: RuleMessage,
}

impl std::fmt::Display for KernelRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} proto {}", self.rule, self.protocol)
    }
}

/// Decodes a dumped rule (IPv4 / IPv6 only).
pub fn parse_rule(msg: RuleMessage) -> Option<KernelRule> {
    let h = &msg.header;
    let v6 = match h.family {
        AddressFamily::Inet => false,
        AddressFamily::Inet6 => true,
        _ => return None,
    };
    let mut rule = Rule {
        v6,
        priority: 0,
        table: u32::from(h.table),
        from: None,
        fwmark: None,
        iif: None,
    };
    let mut protocol = 0;
    let mut extra = h.dst_len != 0 || h.tos != 0;
    let (mut mark, mut mask) = (None, None);
    for a in &msg.attributes {
        match a {
            RuleAttribute::Source(ip) => rule.from = IpNet::new(*ip, h.src_len).ok(),
            RuleAttribute::Table(t) => rule.table = *t,
            RuleAttribute::Priority(p) => rule.priority = *p,
            RuleAttribute::Protocol(p) => protocol = u8::from(*p),
            RuleAttribute::FwMark(v) => mark = Some(*v),
            RuleAttribute::FwMask(v) => mask = Some(*v),
            RuleAttribute::Iifname(n) => rule.iif = Some(n.clone()),
            RuleAttribute::Destination(_)
            | RuleAttribute::Oifname(_)
            | RuleAttribute::IpProtocol(_)
            | RuleAttribute::SourcePortRange(_)
            | RuleAttribute::DestinationPortRange(_)
            | RuleAttribute::L3MDev(true)
            | RuleAttribute::TunId(_) => extra = true,
            _ => {}
        }
    }
    if let Some(m) = mark {
        rule.fwmark = Some((m, mask.unwrap_or(u32::MAX)));
    }
    let to_table = h.action == RuleAction::ToTable;
    Some(KernelRule {
        rule,
        protocol,
        to_table,
        extra,
        msg,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_selector_roundtrips() {
        for r in [
            Rule::from_addr("10.0.0.204".parse().expect("ip"), 10003, 10003),
            Rule::from_addr("2001:db8::5".parse().expect("ip"), 10003, 10003),
            Rule::fwmark(false, 0x100, 0xff00, 9001, 32700),
            Rule::fwmark(true, 0x200, 0xff00, 9002, 32700),
            Rule::iif(false, "br_net1", 101, 101),
        ] {
            let k = parse_rule(build_rule(&r, 199)).expect("parse");
            assert_eq!(k.rule, r);
            assert_eq!(k.protocol, 199);
            assert!(k.to_table && !k.extra);
        }
        let shown = Rule::iif(false, "br_net1", 101, 101).to_string();
        assert_eq!(shown, "101: from all iif br_net1 lookup 101");
    }
}
