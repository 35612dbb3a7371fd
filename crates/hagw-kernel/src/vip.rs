//! Virtual addresses (the VRRP VIPs) and their announcements, reconciled
//! with the kernel and kept so.
//!
//! A *group* (one VRRP instance) wants its addresses on one interface, or
//! not. [`VipSync::set`] never blocks: the reconciler adds or removes at
//! once from its cached view of the interface (one netlink request per
//! address, no dump first), then keeps the kernel matching from address and
//! link events (an address deleted by hand while Master comes back; one
//! added back by hand while Backup goes, if it is ours).
//!
//! # Which addresses are ours
//! hagw marks the addresses it adds with `IFA_PROTO` [`crate::RTPROT_HAGW`]
//! (`ip -d addr` shows `proto 199`; Linux 6.3 and later keep it) and also
//! remembers what it added in this run (older kernels drop the mark). Only
//! those are ever removed. So:
//! * a VIP left behind by a crashed run (marked) is removed as soon as its
//!   instance starts, as Backup: a restarted node never keeps the VIP
//!   beside the new Master (keepalived #951, #2387);
//! * a VIP that is on the interface without the mark (configured by hand,
//!   by DHCP, or the owner's own address) is *foreign*: never added over,
//!   never removed, and shown as such in the status;
//! * a marked address that is no configured VIP is left alone (another
//!   part of hagw may own it).
//!
//! [`VipSync::interfaces`] publishes what the reconciler sees of every
//! interface (up, addresses), so the VRRP driver can tell whether its
//! interface and source address are there without a netlink socket of its
//! own.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::{
    address::{AddressAttribute, AddressMessage},
    link::LinkMessage,
    RouteNetlinkMessage,
};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::netlink::{
    addr::{build_addr, parse_addr},
    events::{self, Event},
    link::parse_link,
    NlSocket, Request, RTMGRP_IPV4_IFADDR, RTMGRP_IPV6_IFADDR, RTMGRP_LINK,
};
use crate::reconcile::{self, Reconciler};
use crate::{KernelError, RTPROT_HAGW};

/// How long a failed add or remove waits before the next try.
const RETRY: Duration = Duration::from_secs(1);

/// An address as the reconciler sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IfAddr {
    pub addr: IpAddr,
    pub prefix_len: u8,
    /// IFA_F_SECONDARY (IPv4).
    pub secondary: bool,
    /// Added by hagw (marked, or added in this run).
    pub hagw: bool,
}

/// One interface: its index, IFF_UP and addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Iface {
    pub index: u32,
    pub up: bool,
    pub addrs: Vec<IfAddr>,
}

impl Iface {
    pub fn has(&self, a: IpAddr) -> bool {
        self.addrs.iter().any(|x| x.addr == a)
    }
}

/// Every interface by name.
pub type Interfaces = BTreeMap<String, Iface>;

/// One virtual address of a group, as last seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VipStatus {
    pub net: IpNet,
    pub in_kernel: bool,
    /// On the interface without hagw's mark: left alone.
    pub foreign: bool,
}

/// One group as [`VipSync::snapshot`] shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupStatus {
    pub group: String,
    pub interface: String,
    /// Wanted on the interface (the instance is Master).
    pub present: bool,
    pub vips: Vec<VipStatus>,
    /// From [`VipSync::set`] (the Master decision) to the kernel's ACK of
    /// the last address added.
    pub last_add_latency: Option<Duration>,
    /// Gratuitous ARPs and unsolicited NAs sent.
    pub announcements: u64,
    pub last_error: Option<String>,
}

/// What the driver asks for.
#[derive(Debug)]
pub enum Cmd {
    Set {
        group: String,
        interface: String,
        vips: Vec<IpNet>,
        present: bool,
        requested: std::time::Instant,
    },
    /// Announce the group's addresses now and `repeat - 1` more times,
    /// `interval` apart, while they are wanted.
    Announce {
        group: String,
        repeat: u32,
        interval: Duration,
    },
}

/// Handle on the reconciler task; clones share it.
#[derive(Clone, Debug)]
pub struct VipSync {
    handle: reconcile::Handle<Cmd, Vec<GroupStatus>>,
    interfaces: watch::Receiver<Arc<Interfaces>>,
}

impl VipSync {
    /// Reads the interfaces once, then starts the reconciler in this
    /// network namespace.
    pub async fn start() -> Result<VipSync, KernelError> {
        let events = NlSocket::open(RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR)?;
        let (tx, interfaces) = watch::channel(Arc::new(Interfaces::new()));
        let mut r = Vips {
            sock: NlSocket::open(0)?,
            cache: Vec::new(),
            links: BTreeMap::new(),
            added: HashSet::new(),
            groups: BTreeMap::new(),
            need_dump: true,
            retry_at: None,
            published: tx,
        };
        r.dump().await.map_err(|source| KernelError::Socket {
            op: "dump links and addresses",
            source,
        })?;
        Ok(VipSync {
            handle: reconcile::spawn(r, Some(events)),
            interfaces,
        })
    }

    /// Wants `vips` on `interface` (`present`) or not. Never blocks.
    pub fn set(&self, group: &str, interface: &str, vips: Vec<IpNet>, present: bool) {
        self.handle.send(Cmd::Set {
            group: group.to_string(),
            interface: interface.to_string(),
            vips,
            present,
            requested: std::time::Instant::now(),
        });
    }

    /// Gratuitous ARP / unsolicited NA for the group's addresses: now, then
    /// `repeat - 1` more times `interval` apart (a new call restarts it).
    pub fn announce(&self, group: &str, repeat: u32, interval: Duration) {
        self.handle.send(Cmd::Announce {
            group: group.to_string(),
            repeat,
            interval,
        });
    }

    /// Every interface as last dumped (updated on link and address events).
    pub fn interfaces(&self) -> watch::Receiver<Arc<Interfaces>> {
        self.interfaces.clone()
    }

    pub async fn snapshot(&self) -> Vec<GroupStatus> {
        self.handle.snapshot().await
    }

    /// Stops; with `remove`, takes every group's addresses away first.
    pub async fn shutdown(&self, remove: bool) {
        self.handle.shutdown(remove).await;
    }
}

/// The nft table that enforces Accept_Mode false (RFC 9568 §6.4.3): packets
/// to these addresses from the network are dropped, except the Neighbor
/// Discovery a Master must still answer (ARP is not IP: untouched).
pub const ACCEPT_TABLE: &str = "hagw_vrrp";

/// The body of [`ACCEPT_TABLE`] (family inet) dropping packets to `addrs`.
/// Static: a Backup does not hold the addresses, so it matches nothing there.
pub fn accept_filter_body(addrs: &[IpAddr]) -> String {
    let set = |v4: bool| {
        addrs
            .iter()
            .filter(|a| a.is_ipv4() == v4)
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut b = String::from(
        "chain input {\n  type filter hook input priority filter; policy accept;\n  iifname \"lo\" accept\n",
    );
    let v4 = set(true);
    if !v4.is_empty() {
        let _ = writeln!(b, "  ip daddr {{ {v4} }} counter drop");
    }
    let v6 = set(false);
    if !v6.is_empty() {
        let _ = writeln!(
            b,
            "  ip6 daddr {{ {v6} }} icmpv6 type {{ nd-neighbor-solicit, nd-neighbor-advert }} accept"
        );
        let _ = writeln!(b, "  ip6 daddr {{ {v6} }} counter drop");
    }
    b.push_str("}\n");
    b
}

/// An address in the cache, with its `IFA_PROTO`.
#[derive(Debug, Clone)]
struct Cached {
    index: u32,
    addr: IpAddr,
    prefix_len: u8,
    secondary: bool,
    proto: u8,
}

struct Group {
    interface: String,
    vips: Vec<IpNet>,
    present: bool,
    /// When the current `present` was asked for, until it is done.
    requested: Option<std::time::Instant>,
    /// Announcements left, their interval, and when the next is due.
    announce: Option<(u32, Duration, Instant)>,
    status: GroupStatus,
}

struct Vips {
    sock: NlSocket,
    cache: Vec<Cached>,
    /// name -> (index, up)
    links: BTreeMap<String, (u32, bool)>,
    /// (ifindex, address) added in this run: ours even without the mark.
    added: HashSet<(u32, IpAddr)>,
    groups: BTreeMap<String, Group>,
    need_dump: bool,
    retry_at: Option<Instant>,
    published: watch::Sender<Arc<Interfaces>>,
}

impl Vips {
    fn ours(&self, c: &Cached) -> bool {
        c.proto == RTPROT_HAGW || self.added.contains(&(c.index, c.addr))
    }

    /// Links and addresses, read again; the interfaces published.
    async fn dump(&mut self) -> std::io::Result<()> {
        let mut links = BTreeMap::new();
        for m in self
            .sock
            .dump(RouteNetlinkMessage::GetLink(LinkMessage::default()))
            .await?
        {
            if let RouteNetlinkMessage::NewLink(l) = m {
                let l = parse_link(l);
                links.insert(l.name, (l.index, l.up));
            }
        }
        let mut cache = Vec::new();
        for m in self
            .sock
            .dump(RouteNetlinkMessage::GetAddress(AddressMessage::default()))
            .await?
        {
            if let RouteNetlinkMessage::NewAddress(m) = m {
                let proto = m.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Protocol(p) => Some(u8::from(*p)),
                    _ => None,
                });
                if let Some(a) = parse_addr(m) {
                    cache.push(Cached {
                        index: a.index,
                        addr: a.addr,
                        prefix_len: a.prefix_len,
                        secondary: a.secondary,
                        proto: proto.unwrap_or(0),
                    });
                }
            }
        }
        // Forget what we added on interfaces that went.
        self.added
            .retain(|(i, a)| cache.iter().any(|c| c.index == *i && c.addr == *a));
        self.cache = cache;
        self.links = links;
        self.publish();
        Ok(())
    }

    fn publish(&self) {
        let view: Interfaces = self
            .links
            .iter()
            .map(|(name, &(index, up))| {
                let addrs = self
                    .cache
                    .iter()
                    .filter(|c| c.index == index)
                    .map(|c| IfAddr {
                        addr: c.addr,
                        prefix_len: c.prefix_len,
                        secondary: c.secondary,
                        hagw: self.ours(c),
                    })
                    .collect();
                (name.clone(), Iface { index, up, addrs })
            })
            .collect();
        self.published.send_if_modified(|old| {
            if **old == view {
                false
            } else {
                *old = Arc::new(view);
                true
            }
        });
    }

    /// Makes one group's addresses match what it wants, from the cache.
    async fn converge(&mut self, name: &str) {
        let Some(g) = self.groups.get(name) else {
            return;
        };
        let (interface, vips, present) = (g.interface.clone(), g.vips.clone(), g.present);
        let mut statuses = Vec::new();
        let mut error = None;
        let mut added_any = false;
        let index = self.links.get(&interface).map(|l| l.0);
        for net in vips {
            let Some(index) = index else {
                statuses.push(VipStatus {
                    net,
                    in_kernel: false,
                    foreign: false,
                });
                continue;
            };
            let existing = self
                .cache
                .iter()
                .position(|c| c.index == index && c.addr == net.addr());
            let ours = existing.is_some_and(|i| self.ours(&self.cache[i]));
            let mut st = VipStatus {
                net,
                in_kernel: existing.is_some(),
                foreign: existing.is_some() && !ours,
            };
            match (present, existing, ours) {
                (true, None, _) => {
                    let mut m = build_addr(index, net);
                    m.attributes
                        .push(AddressAttribute::Protocol(RTPROT_HAGW.into()));
                    let r = self
                        .sock
                        .request(Request {
                            msg: RouteNetlinkMessage::NewAddress(m),
                            flags: NLM_F_CREATE | NLM_F_EXCL,
                        })
                        .await;
                    match r {
                        Ok(Ok(())) => {
                            self.added.insert((index, net.addr()));
                            self.cache.push(Cached {
                                index,
                                addr: net.addr(),
                                prefix_len: net.prefix_len(),
                                secondary: false,
                                proto: RTPROT_HAGW,
                            });
                            st.in_kernel = true;
                            added_any = true;
                        }
                        // Someone else's, unknown to the cache: look again.
                        Ok(Err(e)) if e.errno == nix::libc::EEXIST => self.need_dump = true,
                        Ok(Err(e)) => error = Some(format!("cannot add {net} to {interface}: {e}")),
                        Err(e) => error = Some(format!("cannot add {net} to {interface}: {e}")),
                    }
                }
                (false, Some(i), true) => {
                    let r = self.sock.del_address(index, net).await;
                    match r {
                        Ok(Ok(())) => {
                            self.cache.remove(i);
                            self.added.remove(&(index, net.addr()));
                            st.in_kernel = false;
                        }
                        Ok(Err(e)) => {
                            error = Some(format!("cannot remove {net} from {interface}: {e}"))
                        }
                        Err(e) => {
                            error = Some(format!("cannot remove {net} from {interface}: {e}"))
                        }
                    }
                }
                _ => {}
            }
            statuses.push(st);
        }
        if index.is_none() {
            error = Some(format!("interface {interface} not found"));
        }
        if error.is_some() {
            self.retry_at = Some(Instant::now() + RETRY);
        }
        if let Some(g) = self.groups.get_mut(name) {
            if let (true, Some(t)) = (added_any, g.requested) {
                g.status.last_add_latency = Some(t.elapsed());
            }
            if error.is_none() {
                g.requested = None;
            }
            g.status.vips = statuses;
            g.status.present = present;
            g.status.interface = interface;
            if let Some(e) = &error {
                tracing::warn!(group = %name, "{e}");
            }
            g.status.last_error = error;
        }
    }

    /// Sends the announcements that are due.
    fn announce_due(&mut self, now: Instant) {
        for (name, g) in &mut self.groups {
            let Some((left, interval, at)) = g.announce else {
                continue;
            };
            if at > now {
                continue;
            }
            if !g.present || left == 0 {
                g.announce = None;
                continue;
            }
            let addrs: Vec<IpAddr> = g.vips.iter().map(IpNet::addr).collect();
            match crate::announce::announce(&g.interface, &addrs) {
                Ok(n) => g.status.announcements += n as u64,
                Err(e) => {
                    tracing::warn!(group = %name, "announcing the virtual addresses: {e}");
                    g.status.last_error = Some(e.to_string());
                }
            }
            g.announce = (left > 1).then(|| (left - 1, interval, now + interval));
        }
    }
}

impl Reconciler for Vips {
    type Cmd = Cmd;
    type Snapshot = Vec<GroupStatus>;

    fn on_datagram(&mut self, buf: &[u8]) {
        if events::decode(buf).iter().any(|e| {
            matches!(
                e,
                Event::Address { .. }
                    | Event::Link { .. }
                    | Event::LinkDeleted { .. }
                    | Event::Overrun
            )
        }) {
            self.need_dump = true;
        }
    }

    fn on_overrun(&mut self) {
        self.need_dump = true;
    }

    fn on_command(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Set {
                group,
                interface,
                vips,
                present,
                requested,
            } => {
                let g = self.groups.entry(group.clone()).or_insert_with(|| Group {
                    interface: interface.clone(),
                    vips: Vec::new(),
                    present: false,
                    requested: None,
                    announce: None,
                    status: GroupStatus {
                        group,
                        interface: interface.clone(),
                        present: false,
                        vips: Vec::new(),
                        last_add_latency: None,
                        announcements: 0,
                        last_error: None,
                    },
                });
                if !present {
                    g.announce = None;
                }
                g.interface = interface;
                g.vips = vips;
                g.present = present;
                g.requested = Some(requested);
            }
            Cmd::Announce {
                group,
                repeat,
                interval,
            } => {
                if let Some(g) = self.groups.get_mut(&group) {
                    g.announce = Some((repeat, interval, Instant::now()));
                }
            }
        }
    }

    fn deadline(&self) -> Option<Instant> {
        self.groups
            .values()
            .filter_map(|g| g.announce.map(|a| a.2))
            .chain(self.retry_at)
            .min()
    }

    async fn on_deadline(&mut self) {
        if self.retry_at.is_some_and(|t| t <= Instant::now()) {
            self.retry_at = None;
            self.need_dump = true;
        }
    }

    async fn on_tick(&mut self) {
        self.need_dump = true;
    }

    async fn apply(&mut self) {
        // What was just asked for first, from the cache: no dump before a
        // Master's addresses go in.
        let pending: Vec<String> = self
            .groups
            .iter()
            .filter(|(_, g)| g.requested.is_some())
            .map(|(n, _)| n.clone())
            .collect();
        for name in &pending {
            self.converge(name).await;
        }
        self.announce_due(Instant::now());
        if self.need_dump {
            self.need_dump = false;
            if let Err(e) = self.dump().await {
                tracing::warn!("VIP sync: cannot read the interfaces: {e}");
                self.retry_at = Some(Instant::now() + RETRY);
                return;
            }
            let names: Vec<String> = self.groups.keys().cloned().collect();
            for name in &names {
                self.converge(name).await;
            }
            self.publish();
        }
    }

    fn snapshot(&self) -> Vec<GroupStatus> {
        self.groups.values().map(|g| g.status.clone()).collect()
    }

    async fn shutdown(&mut self, remove: bool) {
        if !remove {
            return;
        }
        let names: Vec<String> = self.groups.keys().cloned().collect();
        for name in &names {
            if let Some(g) = self.groups.get_mut(name) {
                g.present = false;
            }
            self.converge(name).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_accept_filter_drops_all_but_neighbour_discovery() {
        let a: Vec<IpAddr> = ["10.0.0.100", "fe80::1", "2001:db8::1", "10.0.0.101"]
            .iter()
            .filter_map(|s| s.parse().ok())
            .collect();
        let b = accept_filter_body(&a);
        assert!(
            b.contains("ip daddr { 10.0.0.100, 10.0.0.101 } counter drop"),
            "{b}"
        );
        assert!(b.contains("ip6 daddr { fe80::1, 2001:db8::1 } icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert } accept"), "{b}");
        assert!(
            b.find("accept\n  ip6").is_some()
                || b.contains("nd-neighbor-advert } accept\n  ip6 daddr"),
            "{b}"
        );
        let only4 = accept_filter_body(&a[..1]);
        assert!(!only4.contains("ip6"), "{only4}");
    }
}
