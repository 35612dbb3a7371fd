//! Links: what is there, and the few changes hagw makes (a bridge for a
//! virtual network or a guest segment, up, enslaving a port).

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::{
    link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage},
    RouteNetlinkMessage,
};

use super::{NlError, NlSocket, Request};

/// A link as dumped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// IFF_UP.
    pub up: bool,
    pub loopback: bool,
    /// The `kind` of a virtual link (`bridge`, `veth`, `vlan`...); `None` for
    /// a physical port.
    pub kind: Option<String>,
    /// The index of the bridge (or bond) this link is a port of.
    pub master: Option<u32>,
}

/// Decodes a link message.
pub fn parse_link(m: LinkMessage) -> Link {
    let name = m
        .attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::IfName(n) => Some(n.clone()),
            _ => None,
        })
        .unwrap_or_default();
    let mut kind = None;
    let mut master = None;
    for a in &m.attributes {
        match a {
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    if let LinkInfo::Kind(k) = i {
                        kind = Some(k.to_string());
                    }
                }
            }
            LinkAttribute::Controller(i) => master = Some(*i),
            _ => {}
        }
    }
    Link {
        index: m.header.index,
        name,
        up: m.header.flags.contains(LinkFlags::Up),
        loopback: m.header.flags.contains(LinkFlags::Loopback),
        kind,
        master,
    }
}

/// RTM_NEWLINK creating bridge `name`.
pub fn build_bridge(name: &str) -> LinkMessage {
    let mut m = LinkMessage::default();
    m.attributes.push(LinkAttribute::IfName(name.to_string()));
    m.attributes
        .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(
            InfoKind::Bridge,
        )]));
    m
}

/// The interface alias (`ip link set DEV alias TEXT`, IFLA_IFALIAS): hagw
/// marks the bridges it creates with it, so a later run knows which ones it
/// may delete.
pub fn link_alias(m: &LinkMessage) -> Option<String> {
    m.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfAlias(s) => Some(s.clone()),
        _ => None,
    })
}

/// The link-layer address (IFLA_ADDRESS) of an Ethernet-like link.
pub fn link_mac(m: &LinkMessage) -> Option<[u8; 6]> {
    m.attributes.iter().find_map(|a| match a {
        LinkAttribute::Address(b) => <[u8; 6]>::try_from(b.as_slice()).ok(),
        _ => None,
    })
}

/// RTM_NEWLINK (set) giving interface `index` an alias.
pub fn build_set_alias(index: u32, alias: &str) -> LinkMessage {
    let mut m = LinkMessage::default();
    m.header.index = index;
    m.attributes.push(LinkAttribute::IfAlias(alias.to_string()));
    m
}

/// RTM_NEWLINK (set) giving interface `index` a MAC address.
pub fn build_set_mac(index: u32, mac: [u8; 6]) -> LinkMessage {
    let mut m = LinkMessage::default();
    m.header.index = index;
    m.attributes.push(LinkAttribute::Address(mac.to_vec()));
    m
}

/// RTM_NEWLINK setting interface `index` up or down.
pub fn build_set_up(index: u32, up: bool) -> LinkMessage {
    let mut m = LinkMessage::default();
    m.header.index = index;
    m.header.change_mask = LinkFlags::Up;
    if up {
        m.header.flags = LinkFlags::Up;
    }
    m
}

impl NlSocket {
    /// Creates bridge `name`; `Ok(Ok(false))` if a link of that name exists
    /// already (the caller decides whether to adopt it).
    pub async fn create_bridge(&mut self, name: &str) -> std::io::Result<Result<bool, NlError>> {
        let r = self
            .request(Request {
                msg: RouteNetlinkMessage::NewLink(build_bridge(name)),
                flags: NLM_F_CREATE | NLM_F_EXCL,
            })
            .await?;
        Ok(match r {
            Ok(()) => Ok(true),
            Err(e) if e.errno == nix::libc::EEXIST => Ok(false),
            Err(e) => Err(e),
        })
    }

    pub async fn set_link_up(
        &mut self,
        index: u32,
        up: bool,
    ) -> std::io::Result<Result<(), NlError>> {
        self.request(Request {
            msg: RouteNetlinkMessage::SetLink(build_set_up(index, up)),
            flags: 0,
        })
        .await
    }

    /// Sets an attribute of link `index` (a [`build_set_alias`] or
    /// [`build_set_mac`] message).
    pub async fn set_link(&mut self, m: LinkMessage) -> std::io::Result<Result<(), NlError>> {
        self.request(Request {
            msg: RouteNetlinkMessage::SetLink(m),
            flags: 0,
        })
        .await
    }

    /// Every link of the system with its alias and MAC (the undecoded
    /// message stays available for what [`Link`] does not carry).
    pub async fn dump_link_messages(&mut self) -> std::io::Result<Vec<LinkMessage>> {
        Ok(self
            .dump(RouteNetlinkMessage::GetLink(LinkMessage::default()))
            .await?
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(l),
                _ => None,
            })
            .collect())
    }

    /// Deletes link `index` (a bridge hagw created).
    pub async fn delete_link(&mut self, index: u32) -> std::io::Result<Result<(), NlError>> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        let r = self
            .request(Request {
                msg: RouteNetlinkMessage::DelLink(m),
                flags: 0,
            })
            .await?;
        Ok(match r {
            Err(e) if e.errno == nix::libc::ENODEV => Ok(()),
            r => r,
        })
    }

    /// Every link of the system.
    pub async fn dump_links(&mut self) -> std::io::Result<Vec<Link>> {
        let mut v: Vec<Link> = self
            .dump(RouteNetlinkMessage::GetLink(LinkMessage::default()))
            .await?
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(parse_link(l)),
                _ => None,
            })
            .collect();
        v.sort_by_key(|l| l.index);
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bridge_message_names_its_kind() {
        let l = parse_link(build_bridge("br_net1"));
        assert_eq!(l.name, "br_net1");
        assert_eq!(l.kind.as_deref(), Some("bridge"));
    }

    #[test]
    fn alias_and_mac_roundtrip() {
        let mac = [2, 0x68, 10, 10, 10, 0];
        assert_eq!(link_mac(&build_set_mac(3, mac)), Some(mac));
        assert_eq!(
            link_alias(&build_set_alias(3, "hagw vnet net1")).as_deref(),
            Some("hagw vnet net1")
        );
    }
}
