//! The whole system at once: links, addresses, routes and rules, dumped over
//! one socket. Planners (policy routing, `hagw check`) look at this and
//! nothing else, so they are plain functions testable without a kernel.

use std::net::{IpAddr, Ipv4Addr};

use ipnet::{IpNet, Ipv4Net};
use netlink_packet_route::{
    address::AddressMessage, link::LinkMessage, rule::RuleMessage, RouteNetlinkMessage,
};

use super::{
    addr::{parse_addr, Addr},
    link::{parse_link, Link},
    parse_route, parse_rule, KernelRoute, KernelRule, NlSocket,
};
use crate::KernelError;

/// Everything the planner looks at.
#[derive(Debug, Clone, Default)]
pub struct SystemView {
    pub links: Vec<Link>,
    pub addrs: Vec<Addr>,
    pub routes: Vec<KernelRoute>,
    pub rules: Vec<KernelRule>,
}

impl SystemView {
    pub fn link(&self, name: &str) -> Option<&Link> {
        self.links.iter().find(|l| l.name == name)
    }

    /// IPv4 subnets of interface `index`, primary addresses first.
    pub fn v4_subnets(&self, index: u32) -> Vec<(Ipv4Net, Ipv4Addr)> {
        let mut addrs: Vec<&Addr> = self
            .addrs
            .iter()
            .filter(|a| a.index == index && a.global && a.addr.is_ipv4())
            .collect();
        addrs.sort_by_key(|a| a.secondary);
        let mut out: Vec<(Ipv4Net, Ipv4Addr)> = Vec::new();
        for a in addrs {
            if let (Some(IpNet::V4(n)), IpAddr::V4(v4)) = (a.subnet(), a.addr) {
                if !out.iter().any(|(o, _)| *o == n) {
                    out.push((n, v4));
                }
            }
        }
        out
    }
}

/// Reads links, addresses, routes and rules over `sock`.
pub async fn dump_view(sock: &mut NlSocket) -> std::io::Result<SystemView> {
    let mut view = SystemView::default();
    for m in sock
        .dump(RouteNetlinkMessage::GetLink(LinkMessage::default()))
        .await?
    {
        if let RouteNetlinkMessage::NewLink(l) = m {
            view.links.push(parse_link(l));
        }
    }
    view.links.sort_by_key(|l| l.index);
    for m in sock
        .dump(RouteNetlinkMessage::GetAddress(AddressMessage::default()))
        .await?
    {
        if let RouteNetlinkMessage::NewAddress(a) = m {
            view.addrs.extend(parse_addr(a));
        }
    }
    view.routes = sock
        .dump_routes()
        .await?
        .into_iter()
        .filter_map(parse_route)
        .collect();
    for m in sock
        .dump(RouteNetlinkMessage::GetRule(RuleMessage::default()))
        .await?
    {
        if let RouteNetlinkMessage::NewRule(r) = m {
            view.rules.extend(parse_rule(r));
        }
    }
    Ok(view)
}

/// Reads the system once (for `hagw check`), in the calling thread's
/// network namespace. Needs a tokio runtime with IO enabled.
pub async fn inspect() -> Result<SystemView, KernelError> {
    let mut sock = NlSocket::open(0)?;
    dump_view(&mut sock)
        .await
        .map_err(|source| KernelError::Socket {
            op: "dump links, addresses, routes and rules",
            source,
        })
}
