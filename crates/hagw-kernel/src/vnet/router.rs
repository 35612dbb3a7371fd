//! The router side of the virtual networks: each network's gateway address
//! as a /32 (/128) on `lo` (the VMs' default gateway, answered for by every
//! host's proxy ARP and routed here), forwarding on, and NAT of the networks
//! toward their uplinks through one nft set, as the seed does with an ipset:
//!
//! ```text
//! table inet hagw_vnet {
//!   set masq4 { type ipv4_addr . ifname; flags interval; elements = { 10.10.10.0/24 . "enp0s3" } }
//!   set masq6 { type ipv6_addr . ifname; flags interval; }
//!   chain postrouting { type nat hook postrouting priority srcnat; policy accept;
//!     ip saddr . oifname @masq4 masquerade; ip6 saddr . oifname @masq6 masquerade }
//!   chain forward { type filter hook forward priority filter; policy accept;
//!     ip daddr . oifname @masq4 reject with icmpx host-unreachable; (and ip6) }
//! }
//! ```
//!
//! A network joins or leaves NAT by `add element` / `delete element` alone
//! ([`masquerade_elements_script`]): the rules never change. The forward
//! rule refuses traffic to a network's address that would leave by its
//! uplink (a VM no host announces): it is refused here, not sent out NATed.
//!
//! The VMs' /32s themselves are BGP routes: the RIB installs them through
//! [`crate::FibSync`] like any other.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;
use netlink_packet_route::RouteNetlinkMessage;
use tokio::time::Instant;
use tracing::{error, info, warn};

use crate::netlink::{addr::has_address, addr::parse_addr, parse_datagram, NlSocket, Parsed};
use crate::netlink::{RTMGRP_IPV4_IFADDR, RTMGRP_IPV6_IFADDR};
use crate::nft::{valid_interface, Family, Nft, NftError, Table};
use crate::reconcile::{self, Handle, Reconciler};
use crate::{sysctl, KernelError};

/// The nft table hagw owns for the virtual networks' NAT.
pub const TABLE: &str = "hagw_vnet";

/// One `[[vnet_router]]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GatewayNet {
    pub network: IpNet,
    /// Held on `lo` as a host address.
    pub gateway: IpAddr,
    /// NAT the network out of this interface.
    pub masquerade_out: Option<String>,
}

fn set_name(v6: bool) -> &'static str {
    if v6 {
        "masq6"
    } else {
        "masq4"
    }
}

fn element(n: &GatewayNet) -> Option<(bool, String)> {
    let dev = n.masquerade_out.as_deref()?;
    Some((
        n.network.addr().is_ipv6(),
        format!("{} . \"{dev}\"", n.network.trunc()),
    ))
}

/// The table's body (sets with the elements of `nets`, the two chains).
pub fn masquerade_body(nets: &[GatewayNet]) -> Result<String, NftError> {
    check_interfaces(nets)?;
    let mut s = String::new();
    for v6 in [false, true] {
        let elems: Vec<String> = nets
            .iter()
            .filter_map(element)
            .filter(|(f, _)| *f == v6)
            .map(|(_, e)| e)
            .collect();
        let ty = if v6 { "ipv6_addr" } else { "ipv4_addr" };
        s.push_str(&format!(
            "\tset {} {{\n\t\ttype {ty} . ifname\n\t\tflags interval\n",
            set_name(v6)
        ));
        if !elems.is_empty() {
            s.push_str(&format!("\t\telements = {{ {} }}\n", elems.join(", ")));
        }
        s.push_str("\t}\n");
    }
    s.push_str(
        "\tchain postrouting {\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n\
         \t\tip saddr . oifname @masq4 masquerade\n\
         \t\tip6 saddr . oifname @masq6 masquerade\n\t}\n\
         \tchain forward {\n\t\ttype filter hook forward priority filter; policy accept;\n\
         \t\tip daddr . oifname @masq4 reject with icmpx host-unreachable\n\
         \t\tip6 daddr . oifname @masq6 reject with icmpx host-unreachable\n\t}\n",
    );
    Ok(s)
}

/// The transaction that moves the sets from `old` to `new`: element
/// deletes and adds only, the rules untouched.
pub fn masquerade_elements_script(
    old: &[GatewayNet],
    new: &[GatewayNet],
) -> Result<String, NftError> {
    check_interfaces(new)?;
    let t = Table::new(Family::Inet, TABLE)?;
    let o: BTreeSet<(bool, String)> = old.iter().filter_map(element).collect();
    let n: BTreeSet<(bool, String)> = new.iter().filter_map(element).collect();
    let mut s = String::new();
    for (v6, e) in o.difference(&n) {
        s.push_str(&format!("delete element {t} {} {{ {e} }}\n", set_name(*v6)));
    }
    for (v6, e) in n.difference(&o) {
        s.push_str(&format!("add element {t} {} {{ {e} }}\n", set_name(*v6)));
    }
    Ok(s)
}

/// The transaction that empties both sets and fills them with `nets`' (for
/// a table left by an earlier run, whatever it held).
fn refill_script(nets: &[GatewayNet]) -> Result<String, NftError> {
    let t = Table::new(Family::Inet, TABLE)?;
    let mut s = format!("flush set {t} masq4\nflush set {t} masq6\n");
    s.push_str(&masquerade_elements_script(&[], nets)?);
    Ok(s)
}

fn check_interfaces(nets: &[GatewayNet]) -> Result<(), NftError> {
    for d in nets.iter().filter_map(|n| n.masquerade_out.as_deref()) {
        if !valid_interface(d) {
            return Err(NftError::Interface(d.to_string()));
        }
    }
    Ok(())
}

fn host_net(a: IpAddr) -> IpNet {
    IpNet::from(a)
}

struct State {
    nets: Vec<GatewayNet>,
    sock: NlSocket,
    nft: Nft,
    lo: u32,
    resync_at: Option<Instant>,
    /// A config change to carry out: gateways to remove, the NAT set script.
    pending: Option<(Vec<IpAddr>, Result<String, String>)>,
}

/// A handle to the task that keeps the gateway addresses on `lo` (re-added
/// if removed) and owns `table inet hagw_vnet`.
#[derive(Clone, Debug)]
pub struct VnetRouter {
    h: Handle<Vec<GatewayNet>, Vec<GatewayNet>>,
}

impl VnetRouter {
    /// Forwarding on, gateways on `lo`, the NAT table: a table left by an
    /// earlier run keeps its rules and gets its sets refilled; otherwise it
    /// is created.
    pub async fn start(nets: Vec<GatewayNet>, nft: Nft) -> Result<VnetRouter, KernelError> {
        sysctl::write("/proc/sys/net/ipv4/ip_forward", "1")?;
        if nets.iter().any(|n| n.network.addr().is_ipv6()) {
            sysctl::set_conf(true, "all", "forwarding", "1")?;
        }
        let lo = crate::netlink::ifindex("lo")?.unwrap_or(1);
        let events = NlSocket::open(RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR)?;
        let sock = NlSocket::open(0)?;
        let mut st = State {
            nets,
            sock,
            nft,
            lo,
            resync_at: None,
            pending: None,
        };
        st.ensure_addresses()
            .await
            .map_err(|source| KernelError::Socket {
                op: "gateway addresses on lo",
                source,
            })?;
        st.load_table().await;
        Ok(VnetRouter {
            h: reconcile::spawn(st, Some(events)),
        })
    }

    /// Moves to `nets`: gateways added and removed, NAT elements changed.
    pub fn set_networks(&self, nets: Vec<GatewayNet>) {
        self.h.send(nets);
    }

    pub async fn snapshot(&self) -> Vec<GatewayNet> {
        self.h.snapshot().await
    }

    /// Stops; with `remove`, deletes the gateways and the NAT table first.
    pub async fn shutdown(&self, remove: bool) {
        self.h.shutdown(remove).await
    }
}

impl State {
    async fn ensure_addresses(&mut self) -> std::io::Result<()> {
        let addrs = self.sock.dump_addresses().await?;
        for n in &self.nets {
            let a = host_net(n.gateway);
            if has_address(&addrs, self.lo, a) {
                continue;
            }
            match self.sock.add_address(self.lo, a).await? {
                Ok(()) => info!(gateway = %a, network = %n.network, "gateway address on lo"),
                Err(e) => warn!(gateway = %a, error = %e, "cannot add the gateway address on lo"),
            }
        }
        Ok(())
    }

    async fn load_table(&mut self) {
        let table = match Table::new(Family::Inet, TABLE) {
            Ok(t) => t,
            Err(e) => return error!(error = %e, "virtual network NAT"),
        };
        let exists = self
            .nft
            .tables()
            .await
            .map(|ts| ts.contains(&(Family::Inet, TABLE.to_string())))
            .unwrap_or(false);
        let refilled = match refill_script(&self.nets) {
            Ok(s) if exists => self.nft.run(&s).await.is_ok(),
            _ => false,
        };
        if refilled {
            info!("virtual network NAT: kept the table's rules, refilled its sets");
            return;
        }
        let res = match masquerade_body(&self.nets) {
            Ok(body) => self.nft.replace(&table, &body).await,
            Err(e) => Err(e),
        };
        match res {
            Ok(()) => info!(
                networks = self
                    .nets
                    .iter()
                    .filter(|n| n.masquerade_out.is_some())
                    .count(),
                "virtual network NAT loaded (table inet hagw_vnet)"
            ),
            Err(e) => error!(error = %e, "cannot load the virtual network NAT table"),
        }
    }

    async fn remove_all(&mut self) {
        for n in &self.nets {
            match self.sock.del_address(self.lo, host_net(n.gateway)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    warn!(gateway = %n.gateway, error = %e, "cannot remove the gateway address")
                }
                Err(e) => {
                    warn!(gateway = %n.gateway, error = %e, "cannot remove the gateway address")
                }
            }
        }
        if let Ok(t) = Table::new(Family::Inet, TABLE) {
            if let Err(e) = self.nft.delete(&t).await {
                warn!(error = %e, "cannot delete table inet hagw_vnet");
            }
        }
        info!("removed the virtual networks' gateways and NAT");
    }
}

impl Reconciler for State {
    type Cmd = Vec<GatewayNet>;
    type Snapshot = Vec<GatewayNet>;

    fn on_datagram(&mut self, buf: &[u8]) {
        // A gateway address removed behind our back comes back.
        let ours = parse_datagram(buf).into_iter().any(|p| match p {
            Parsed::Msg {
                msg: RouteNetlinkMessage::DelAddress(a),
                ..
            } => parse_addr(a).is_some_and(|a| {
                a.index == self.lo && self.nets.iter().any(|n| n.gateway == a.addr)
            }),
            _ => false,
        });
        if ours {
            self.resync_at = Some(Instant::now() + Duration::from_millis(50));
        }
    }

    fn on_overrun(&mut self) {
        self.resync_at = Some(Instant::now() + Duration::from_millis(50));
    }

    fn on_command(&mut self, nets: Vec<GatewayNet>) {
        let old = std::mem::replace(&mut self.nets, nets);
        let gone: Vec<IpAddr> = old
            .iter()
            .filter(|o| !self.nets.iter().any(|n| n.gateway == o.gateway))
            .map(|o| o.gateway)
            .collect();
        let script = masquerade_elements_script(&old, &self.nets).map_err(|e| e.to_string());
        // Carried out at the deadline (now): commands are not async.
        self.pending = Some((gone, script));
        self.resync_at = Some(Instant::now());
    }

    fn deadline(&self) -> Option<Instant> {
        self.resync_at
    }

    async fn on_deadline(&mut self) {
        self.resync_at = None;
        if let Some((gone, script)) = self.pending.take() {
            for g in gone {
                let _ = self.sock.del_address(self.lo, host_net(g)).await;
            }
            match script {
                Ok(s) if s.is_empty() => {}
                Ok(s) => {
                    if let Err(e) = self.nft.run(&s).await {
                        error!(error = %e, "cannot change the NAT set");
                    }
                }
                Err(e) => error!(error = %e, "cannot change the NAT set"),
            }
        }
        if let Err(e) = self.ensure_addresses().await {
            error!(error = %e, "cannot check the gateway addresses");
            self.resync_at = Some(Instant::now() + Duration::from_secs(1));
        }
    }

    async fn on_tick(&mut self) {
        if let Err(e) = self.ensure_addresses().await {
            error!(error = %e, "cannot check the gateway addresses");
        }
    }

    async fn apply(&mut self) {}

    fn snapshot(&self) -> Vec<GatewayNet> {
        self.nets.clone()
    }

    async fn shutdown(&mut self, remove: bool) {
        if remove {
            self.remove_all().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(n: &str, gw: &str, out: Option<&str>) -> GatewayNet {
        GatewayNet {
            network: n.parse().expect("net"),
            gateway: gw.parse().expect("ip"),
            masquerade_out: out.map(String::from),
        }
    }

    #[test]
    fn the_body_masquerades_through_the_sets() {
        let b = masquerade_body(&[
            net("10.10.10.0/24", "10.10.10.1", Some("enp0s3")),
            net("10.10.20.0/24", "10.10.20.1", None),
            net("fd00:10::/64", "fd00:10::1", Some("enp0s3")),
        ])
        .expect("body");
        assert!(
            b.contains("elements = { 10.10.10.0/24 . \"enp0s3\" }"),
            "{b}"
        );
        assert!(
            b.contains("elements = { fd00:10::/64 . \"enp0s3\" }"),
            "{b}"
        );
        assert!(!b.contains("10.10.20.0"), "no uplink, no NAT: {b}");
        assert!(b.contains("ip saddr . oifname @masq4 masquerade"));
        assert!(masquerade_body(&[net("10.0.0.0/8", "10.0.0.1", Some("a\"b"))]).is_err());
    }

    #[test]
    fn networks_come_and_go_as_elements_only() {
        let a = net("10.10.10.0/24", "10.10.10.1", Some("up0"));
        let b = net("10.10.20.0/24", "10.10.20.1", Some("up0"));
        let s = masquerade_elements_script(std::slice::from_ref(&a), &[b]).expect("script");
        assert_eq!(
            s,
            "delete element inet hagw_vnet masq4 { 10.10.10.0/24 . \"up0\" }\n\
             add element inet hagw_vnet masq4 { 10.10.20.0/24 . \"up0\" }\n"
        );
        assert!(!s.contains("rule") && !s.contains("chain"));
        assert_eq!(
            masquerade_elements_script(std::slice::from_ref(&a), std::slice::from_ref(&a))
                .expect("script"),
            ""
        );
    }
}
