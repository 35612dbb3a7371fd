//! PolicySync: source policy routing for hosts with several NICs in one
//! network (AWS VPC and other networks with anti-spoofing).
//!
//! Such networks drop packets whose source address is not the sending
//! interface's own. With two NICs in a subnet, the main table sends every
//! reply out of the primary NIC, so connections to the secondary NIC's
//! addresses fail. The fix (see the design seed, Debian bug 963826): for every
//! interface but the primary, a table of its own and one rule per address:
//!
//! ```text
//! 10003: from 10.0.0.204 lookup 10003 proto hagw
//! table 10003: 10.0.0.0/24 dev ens6 scope link src 10.0.0.204 proto hagw
//!              default via 10.0.0.1 dev ens6 proto hagw
//! ```
//!
//! * The table (and the rules' priority) is `table_base + ifindex`.
//! * The primary interface is the configured one, else the one holding the
//!   main table's default route (sticky while it keeps one, or while none
//!   exists); hagw's own BGP default counts last, for when `dhcp_default =
//!   "remove"` took the others (a multipath one names its lowest ifindex).
//! * The IPv4 gateway is, in order: the configured one; the router of the
//!   interface's DHCP lease (dhclient or systemd-networkd, best effort, only
//!   when inside the interface's subnet); else the first address of the
//!   interface's subnet — the AWS VPC convention (the router is `.1` of every
//!   subnet). The IPv6 gateway is the router learned from router
//!   advertisements: the main table's `default via fe80::... dev IF`.
//!
//! Like [`crate::FibSync`], a background task owns the netlink sockets; the
//! desired state is computed from the observed links, addresses and routes
//! ([`plan`]) and reconciled against the kernel's rules and routes after every
//! relevant event (link add/del/up/down, address add/del, main-table default
//! routes, anything in hagw's tables, rules), within ~50 ms, plus a periodic
//! safety resync.
//!
//! # Ownership
//!
//! Rules carry `FRA_PROTOCOL` = [`crate::RTPROT_HAGW`] and routes carry the
//! same route protocol. hagw's rules are the rules of that protocol; hagw's
//! routes are the routes of that protocol in tables `table_base + 1 ..=
//! table_base + 65535` ([`TABLE_SPAN`]), capped at 32765 (a table's rules
//! have its number as priority, and must come before the main table's rule
//! at 32766). At start those that match the desired
//! state are adopted, the others deleted; nothing else is ever modified. A
//! table that already holds routes of another protocol is left alone and its
//! interface reported in error. On [`PolicySync::shutdown`] every hagw rule
//! and route is removed.

use std::{
    collections::{BTreeSet, HashMap},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    time::Duration,
};

use ipnet::{IpNet, Ipv4Net};
use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::{
    route::{RouteAttribute, RouteType},
    rule::RuleMessage,
    RouteNetlinkMessage,
};
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use crate::{
    netlink::{
        addr::Addr,
        build_rule,
        events::FIB_GROUPS,
        parse_datagram, parse_route,
        route::{build_dev_route, dev_route_of},
        view::{dump_view, SystemView},
        DevRoute, KernelRoute, KernelRule, NlSocket, Parsed, Request, Rule, RTMGRP_IPV4_RULE,
        RTMGRP_IPV6_RULE, RT_TABLE_MAIN,
    },
    reconcile::{self, Handle, Reconciler},
    KernelError, RTPROT_HAGW,
};

/// Default `table_base`: interface with ifindex i gets table 10000 + i, above
/// pinning's 9001..=9255.
pub const DEFAULT_TABLE_BASE: u32 = 10_000;
/// What the policy task listens to: links, addresses, routes, rules.
pub const POLICY_GROUPS: u32 = FIB_GROUPS | RTMGRP_IPV4_RULE | RTMGRP_IPV6_RULE;
/// Priority of the kernel's `from all lookup main` rule: hagw's rules must
/// come before it, so tables (= priorities) must stay below.
pub const MAIN_RULE_PRIORITY: u32 = 32766;
/// hagw's tables are `table_base + 1 ..= table_base + TABLE_SPAN - 1` (and
/// below [`MAIN_RULE_PRIORITY`]).
pub const TABLE_SPAN: u32 = 65_536;
/// Period of the safety resync (also re-reads DHCP leases).
pub const RESYNC_PERIOD: Duration = Duration::from_secs(30);
/// Delay between an event and the resync it triggers (coalesces storms).
pub const EVENT_RESYNC_DELAY: Duration = Duration::from_millis(50);
/// Where dhclient keeps its leases (`dhclient*.leases`).
pub const DHCLIENT_DIR: &str = "/var/lib/dhcp";
/// Where systemd-networkd keeps its leases (one file per ifindex).
pub const NETWORKD_DIR: &str = "/run/systemd/netif/leases";

/// A configured IPv4 gateway for one interface (`[[policy_routing.gateway]]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayOverride {
    pub interface: String,
    /// `None`: the lease's router or the subnet convention, as if absent.
    pub ipv4: Option<Ipv4Addr>,
}

/// Configuration of [`PolicySync`].
#[derive(Debug, Clone)]
pub struct PolicyConfig {
    /// The interface left to the main table; `None`: the one holding the
    /// main table's default route.
    pub primary: Option<String>,
    /// Interface with index `i` gets table (and rule priority) `table_base + i`.
    pub table_base: u32,
    /// Also IPv6 rules and routes.
    pub ipv6: bool,
    pub gateways: Vec<GatewayOverride>,
    /// Protocol of hagw's rules and routes ([`RTPROT_HAGW`]).
    pub protocol: u8,
    /// dhclient lease directory (`None`: do not look).
    pub dhclient_dir: Option<PathBuf>,
    /// systemd-networkd lease directory (`None`: do not look). Only read in
    /// the initial network namespace, since its files are named by ifindex.
    pub networkd_dir: Option<PathBuf>,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            primary: None,
            table_base: DEFAULT_TABLE_BASE,
            ipv6: true,
            gateways: Vec::new(),
            protocol: RTPROT_HAGW,
            dhclient_dir: Some(DHCLIENT_DIR.into()),
            networkd_dir: Some(NETWORKD_DIR.into()),
        }
    }
}

impl PolicyConfig {
    /// The last table hagw may use: `table_base + TABLE_SPAN - 1`, and
    /// below [`MAIN_RULE_PRIORITY`] since a table's rules have its number as
    /// priority.
    pub fn last_table(&self) -> u32 {
        (self.table_base.saturating_add(TABLE_SPAN - 1)).min(MAIN_RULE_PRIORITY - 1)
    }

    /// Whether `table` is in hagw's range (`table_base + 1 ..= last_table`).
    pub fn owns_table(&self, table: u32) -> bool {
        table > self.table_base && table <= self.last_table()
    }

    fn gateway_for(&self, ifname: &str) -> Option<Ipv4Addr> {
        self.gateways
            .iter()
            .find(|g| g.interface == ifname)
            .and_then(|g| g.ipv4)
    }
}

// ---------------------------------------------------------------------------
// What the kernel has.

// ---------------------------------------------------------------------------
// What hagw wants.

/// One rule hagw wants: `priority: from src lookup table`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WantRule {
    pub src: IpAddr,
    pub table: u32,
    pub priority: u32,
}

/// Where an interface's IPv4 gateway comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GatewaySource {
    /// `[[policy_routing.gateway]]`.
    Config,
    /// The router option of the interface's DHCP lease.
    DhcpLease,
    /// The first address of the interface's subnet (AWS VPC convention).
    SubnetFirst,
}

impl GatewaySource {
    pub fn as_str(self) -> &'static str {
        match self {
            GatewaySource::Config => "config",
            GatewaySource::DhcpLease => "dhcp-lease",
            GatewaySource::SubnetFirst => "subnet-first-address",
        }
    }
}

/// The plan for one non-primary interface with global addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfacePlan {
    pub name: String,
    pub index: u32,
    pub table: u32,
    pub up: bool,
    /// The addresses that get a rule.
    pub addresses: Vec<IpAddr>,
    pub gateway4: Option<(Ipv4Addr, GatewaySource)>,
    pub gateway6: Option<Ipv6Addr>,
    pub routes: Vec<DevRoute>,
    pub rules: Vec<WantRule>,
    /// Why (part of) this interface is not served.
    pub error: Option<String>,
}

/// The desired state of the whole host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// (ifindex, name) of the primary interface.
    pub primary: Option<(u32, String)>,
    /// A problem that stops everything (no primary): the kernel is left as is.
    pub error: Option<String>,
    pub interfaces: Vec<InterfacePlan>,
}

/// Why `gw` cannot be `ifname`'s gateway, if it cannot: it must be a host
/// address of one of the interface's IPv4 subnets and not one of its own.
/// The same words for `hagw check` and `hagw status`.
pub fn gateway_problem(
    gw: Ipv4Addr,
    ifname: &str,
    subnets: &[(Ipv4Net, Ipv4Addr)],
    own: &[IpAddr],
) -> Option<String> {
    if subnets.is_empty() {
        return Some(format!(
            "gateway {gw} is outside {ifname}'s subnets ({ifname} has no IPv4 subnet)"
        ));
    }
    let list = || {
        subnets
            .iter()
            .map(|(n, _)| n.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let Some((net, _)) = subnets.iter().find(|(n, _)| n.contains(&gw)) else {
        return Some(format!(
            "gateway {gw} is outside {ifname}'s subnets ({})",
            list()
        ));
    };
    if net.prefix_len() < 31 && (gw == net.network() || gw == net.broadcast()) {
        return Some(format!(
            "gateway {gw} is the network or broadcast address of {net} on {ifname}"
        ));
    }
    if own.contains(&IpAddr::V4(gw)) {
        return Some(format!("gateway {gw} is an address of {ifname} itself"));
    }
    None
}

/// The AWS convention: the router of a subnet is its first host address.
fn subnet_first(net: Ipv4Net) -> Option<Ipv4Addr> {
    (net.prefix_len() <= 30).then(|| Ipv4Addr::from(u32::from(net.network()) + 1))
}

/// The interfaces holding a main-table default route: (hagw's own, is IPv6,
/// metric, ifindex), best first. Another protocol's (DHCP's, the admin's)
/// come before hagw's own BGP default, which is there to name the primary
/// when `dhcp_default = "remove"` took the DHCP one away.
fn main_defaults(view: &SystemView, protocol: u8) -> Vec<(bool, bool, u32, u32)> {
    let mut out = Vec::new();
    for r in &view.routes {
        if r.table != RT_TABLE_MAIN || r.prefix.prefix_len() != 0 || r.kind != RouteType::Unicast {
            continue;
        }
        let own = r.protocol == protocol;
        let v6 = r.prefix.addr().is_ipv6();
        let mut idx: Vec<u32> = r.nexthops.iter().filter_map(|n| n.ifindex).collect();
        if idx.is_empty() {
            idx.extend(r.msg.attributes.iter().find_map(|a| match a {
                RouteAttribute::Oif(i) => Some(*i),
                _ => None,
            }));
        }
        for i in idx {
            out.push((own, v6, r.metric, i));
        }
    }
    out.sort();
    out
}

/// Picks the primary interface: the configured one, else the current one
/// (`sticky`) while it still holds a main default route or none exists, else
/// the holder of the best main default route (IPv4 first, lowest metric).
fn pick_primary(
    cfg: &PolicyConfig,
    view: &SystemView,
    sticky: Option<u32>,
) -> Result<(u32, String), String> {
    let name_of = |i: u32| {
        view.links
            .iter()
            .find(|l| l.index == i)
            .map(|l| l.name.clone())
    };
    if let Some(name) = &cfg.primary {
        return match view.link(name) {
            Some(l) => Ok((l.index, l.name.clone())),
            None => Err(primary_missing(name, view)),
        };
    }
    let defaults = main_defaults(view, cfg.protocol);
    if let Some(s) = sticky {
        // While no default exists at all (the DHCP one just removed, BGP's
        // not in yet), nothing names a better primary than the last one.
        if defaults.is_empty() || defaults.iter().any(|d| d.3 == s) {
            if let Some(n) = name_of(s) {
                return Ok((s, n));
            }
        }
    }
    defaults
        .iter()
        .find_map(|d| name_of(d.3).map(|n| (d.3, n)))
        .ok_or_else(|| {
            "no default route in the main table yet to pick the primary interface \
             (set policy_routing.primary to name it)"
                .to_string()
        })
}

fn primary_missing(name: &str, view: &SystemView) -> String {
    let names: Vec<&str> = view
        .links
        .iter()
        .filter(|l| !l.loopback)
        .map(|l| l.name.as_str())
        .collect();
    format!(
        "primary interface \"{name}\" does not exist (interfaces: {})",
        if names.is_empty() {
            "none".to_string()
        } else {
            names.join(", ")
        }
    )
}

/// Routes of other protocols in `table`.
fn foreign_in_table(
    view: &SystemView,
    table: u32,
    protocol: u8,
) -> impl Iterator<Item = &KernelRoute> {
    view.routes
        .iter()
        .filter(move |r| r.table == table && r.protocol != protocol)
}

/// The problem with `table` for interface `name`, if any: its priority would
/// come after the main table's rule, or it holds routes hagw did not create.
fn table_problem(cfg: &PolicyConfig, view: &SystemView, name: &str, index: u32) -> Option<String> {
    let table = match cfg.table_base.checked_add(index) {
        Some(t) if t < MAIN_RULE_PRIORITY => t,
        t => {
            return Some(format!(
                "table {} for {name} (ifindex {index}): its rule priority would not come before \
                 the main table's rule ({MAIN_RULE_PRIORITY}); lower policy_routing.table_base",
                t.map_or("(overflow)".into(), |t| t.to_string())
            ))
        }
    };
    foreign_in_table(view, table, cfg.protocol).next().map(|r| {
        format!(
            "table {table} for {name} already holds routes hagw did not create \
                 (e.g. {r}); choose another policy_routing.table_base"
        )
    })
}

/// Computes the desired state from what the kernel has. `sticky` is the
/// primary picked last time; `lease` looks up the DHCP router of an
/// interface (name, ifindex).
pub fn plan(
    cfg: &PolicyConfig,
    view: &SystemView,
    sticky: Option<u32>,
    lease: &dyn Fn(&str, u32) -> Option<Ipv4Addr>,
) -> Plan {
    let (pidx, pname) = match pick_primary(cfg, view, sticky) {
        Ok(p) => p,
        Err(e) => {
            return Plan {
                primary: None,
                error: Some(e),
                interfaces: Vec::new(),
            }
        }
    };
    let defaults6: Vec<&KernelRoute> = {
        let mut v: Vec<&KernelRoute> = view
            .routes
            .iter()
            .filter(|r| {
                r.table == RT_TABLE_MAIN
                    && r.prefix.prefix_len() == 0
                    && r.prefix.addr().is_ipv6()
                    && r.protocol != cfg.protocol
                    && r.kind == RouteType::Unicast
            })
            .collect();
        v.sort_by_key(|r| r.metric);
        v
    };
    let mut interfaces = Vec::new();
    for link in &view.links {
        if link.loopback || link.index == pidx {
            continue;
        }
        let addrs: Vec<&Addr> = view
            .addrs
            .iter()
            .filter(|a| a.index == link.index && a.global && (cfg.ipv6 || a.addr.is_ipv4()))
            .collect();
        if addrs.is_empty() {
            continue;
        }
        let mut addresses: Vec<IpAddr> = addrs.iter().map(|a| a.addr).collect();
        addresses.sort();
        addresses.dedup();
        let table = cfg.table_base.saturating_add(link.index);
        let mut ip = InterfacePlan {
            name: link.name.clone(),
            index: link.index,
            table,
            up: link.up,
            addresses: addresses.clone(),
            gateway4: None,
            gateway6: None,
            routes: Vec::new(),
            rules: Vec::new(),
            error: None,
        };
        if let Some(e) = table_problem(cfg, view, &link.name, link.index) {
            ip.error = Some(e);
            interfaces.push(ip);
            continue;
        }
        if !link.up {
            interfaces.push(ip);
            continue;
        }
        let mut errors = Vec::new();
        // IPv4: link routes and the default.
        let subnets = view.v4_subnets(link.index);
        for (net, src) in &subnets {
            ip.routes.push(DevRoute {
                table,
                prefix: IpNet::V4(*net),
                oif: link.index,
                gateway: None,
                src: Some(IpAddr::V4(*src)),
            });
        }
        let has_v4 = addresses.iter().any(IpAddr::is_ipv4);
        let gw4 = if let Some(gw) = cfg.gateway_for(&link.name) {
            match gateway_problem(gw, &link.name, &subnets, &addresses) {
                Some(e) => {
                    errors.push(e);
                    None
                }
                None => Some((gw, GatewaySource::Config)),
            }
        } else if !has_v4 {
            None
        } else if let Some(gw) = lease(&link.name, link.index)
            .filter(|gw| gateway_problem(*gw, &link.name, &subnets, &addresses).is_none())
        {
            Some((gw, GatewaySource::DhcpLease))
        } else {
            match subnets.first().and_then(|(n, _)| subnet_first(*n)) {
                Some(gw) => match gateway_problem(gw, &link.name, &subnets, &addresses) {
                    Some(e) => {
                        errors.push(format!(
                            "{e} (first address of the subnet); configure [[policy_routing.gateway]]"
                        ));
                        None
                    }
                    None => Some((gw, GatewaySource::SubnetFirst)),
                },
                None => {
                    errors.push(format!(
                        "no IPv4 subnet on {} to take a gateway from; configure [[policy_routing.gateway]]",
                        link.name
                    ));
                    None
                }
            }
        };
        if let Some((gw, _)) = gw4 {
            ip.routes.push(DevRoute {
                table,
                prefix: IpNet::V4(Ipv4Net::default()),
                oif: link.index,
                gateway: Some(IpAddr::V4(gw)),
                src: None,
            });
        }
        ip.gateway4 = gw4;
        // IPv6: link routes and the router learned from RAs.
        if cfg.ipv6 {
            let mut seen = BTreeSet::new();
            for a in addrs.iter().filter(|a| a.addr.is_ipv6()) {
                if let Some(net) = a.subnet() {
                    if seen.insert(net) {
                        ip.routes.push(DevRoute {
                            table,
                            prefix: net,
                            oif: link.index,
                            gateway: None,
                            src: None,
                        });
                    }
                }
            }
            let gw6 = defaults6.iter().find_map(|r| {
                r.nexthops.iter().find_map(|n| match n.addr {
                    IpAddr::V6(a) if n.ifindex == Some(link.index) => Some(a),
                    _ => None,
                })
            });
            if let Some(gw) = gw6 {
                ip.routes.push(DevRoute {
                    table,
                    prefix: IpNet::V6(Default::default()),
                    oif: link.index,
                    gateway: Some(IpAddr::V6(gw)),
                    src: None,
                });
            }
            ip.gateway6 = gw6;
        }
        ip.rules = addresses
            .iter()
            .map(|a| WantRule {
                src: *a,
                table,
                priority: table,
            })
            .collect();
        ip.routes.sort();
        ip.error = (!errors.is_empty()).then(|| errors.join("; "));
        interfaces.push(ip);
    }
    Plan {
        primary: Some((pidx, pname)),
        error: None,
        interfaces,
    }
}

// ---------------------------------------------------------------------------
// hagw check.

/// Which config key a [`CheckProblem`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckKey {
    Primary,
    /// Index into [`PolicyConfig::gateways`].
    Gateway(usize),
    TableBase,
}

/// A problem of the config against the live system.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckProblem {
    pub key: CheckKey,
    pub message: String,
}

/// Checks `cfg` against the live system: a named primary that does not
/// exist, a configured gateway outside its (existing) interface's subnets, a
/// `table_base` whose range holds routes of other protocols or whose tables
/// (= rule priorities) would not come before the main table's rule.
pub fn check(cfg: &PolicyConfig, view: &SystemView) -> Vec<CheckProblem> {
    let mut out = Vec::new();
    let mut primary = None;
    if let Some(name) = &cfg.primary {
        match view.link(name) {
            Some(l) => primary = Some(l.index),
            None => out.push(CheckProblem {
                key: CheckKey::Primary,
                message: primary_missing(name, view),
            }),
        }
    } else if let Ok((i, _)) = pick_primary(cfg, view, None) {
        primary = Some(i);
    }
    for (i, g) in cfg.gateways.iter().enumerate() {
        let (Some(gw), Some(link)) = (g.ipv4, view.link(&g.interface)) else {
            continue;
        };
        let own: Vec<IpAddr> = view
            .addrs
            .iter()
            .filter(|a| a.index == link.index)
            .map(|a| a.addr)
            .collect();
        if let Some(message) = gateway_problem(gw, &link.name, &view.v4_subnets(link.index), &own) {
            out.push(CheckProblem {
                key: CheckKey::Gateway(i),
                message,
            });
        }
    }
    let mut tables: Vec<(u32, &KernelRoute)> = Vec::new();
    for r in &view.routes {
        if cfg.owns_table(r.table)
            && r.protocol != cfg.protocol
            && !tables.iter().any(|(t, _)| *t == r.table)
        {
            tables.push((r.table, r));
        }
    }
    if !tables.is_empty() {
        tables.sort_by_key(|t| t.0);
        let list: Vec<String> = tables.iter().take(5).map(|t| t.0.to_string()).collect();
        out.push(CheckProblem {
            key: CheckKey::TableBase,
            message: format!(
                "tables {}{} in hagw's range {}..={} already hold routes of other protocols \
                 (e.g. {}); choose another table_base",
                list.join(", "),
                if tables.len() > 5 { ", ..." } else { "" },
                cfg.table_base.saturating_add(1),
                cfg.last_table(),
                tables[0].1
            ),
        });
    }
    for l in &view.links {
        let served = !l.loopback
            && Some(l.index) != primary
            && view.addrs.iter().any(|a| a.index == l.index && a.global);
        if !served {
            continue;
        }
        if cfg
            .table_base
            .checked_add(l.index)
            .is_none_or(|t| t >= MAIN_RULE_PRIORITY)
        {
            out.push(CheckProblem {
                key: CheckKey::TableBase,
                message: format!(
                    "table {} + ifindex {} of {}: its rule priority would not come before the \
                     main table's rule ({MAIN_RULE_PRIORITY}); lower table_base",
                    cfg.table_base, l.index, l.name
                ),
            });
        }
    }
    out
}

// ---------------------------------------------------------------------------
// DHCP leases (best effort).

/// The router of the last lease for `ifname` in dhclient lease text.
pub fn parse_dhclient_leases(text: &str, ifname: &str) -> Option<Ipv4Addr> {
    let mut found = None;
    for block in text.split("lease {").skip(1) {
        let block = block.split('}').next().unwrap_or("");
        let mut iface = None;
        let mut router = None;
        for line in block.lines() {
            let line = line.trim().trim_end_matches(';');
            if let Some(v) = line.strip_prefix("interface ") {
                iface = Some(v.trim().trim_matches('"'));
            } else if let Some(v) = line.strip_prefix("option routers ") {
                router = v
                    .split(',')
                    .next()
                    .and_then(|a| a.trim().parse::<Ipv4Addr>().ok());
            }
        }
        if iface == Some(ifname) && router.is_some() {
            found = router;
        }
    }
    found
}

/// The router of a systemd-networkd lease file's text (`ROUTER=a b`).
pub fn parse_networkd_lease(text: &str) -> Option<Ipv4Addr> {
    text.lines()
        .find_map(|l| l.strip_prefix("ROUTER="))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|a| a.parse().ok())
}

fn dhclient_router(dir: &Path, ifname: &str) -> Option<Ipv4Addr> {
    let mut best: Option<(std::time::SystemTime, Ipv4Addr)> = None;
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if !name.starts_with("dhclient") || !name.ends_with(".leases") {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(e.path()) else {
            continue;
        };
        if let Some(r) = parse_dhclient_leases(&text, ifname) {
            let t = e
                .metadata()
                .and_then(|m| m.modified())
                .unwrap_or(std::time::UNIX_EPOCH);
            if best.is_none_or(|(bt, _)| t >= bt) {
                best = Some((t, r));
            }
        }
    }
    best.map(|b| b.1)
}

/// Whether the calling thread is in PID 1's network namespace.
fn in_initial_netns() -> bool {
    match (
        std::fs::read_link("/proc/thread-self/ns/net"),
        std::fs::read_link("/proc/1/ns/net"),
    ) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// The DHCP router of interface (`ifname`, `index`) from dhclient's or
/// systemd-networkd's lease files, if any.
pub fn lease_router(cfg: &PolicyConfig, ifname: &str, index: u32) -> Option<Ipv4Addr> {
    if let Some(r) = cfg
        .dhclient_dir
        .as_deref()
        .and_then(|d| dhclient_router(d, ifname))
    {
        return Some(r);
    }
    let dir = cfg.networkd_dir.as_deref()?;
    if !in_initial_netns() {
        return None;
    }
    std::fs::read_to_string(dir.join(index.to_string()))
        .ok()
        .and_then(|t| parse_networkd_lease(&t))
}

// ---------------------------------------------------------------------------
// Netlink messages.

/// RTM_NEWRULE for `w`, carrying FRA_PROTOCOL `protocol`.
pub fn build_want_rule(w: &WantRule, protocol: u8) -> RuleMessage {
    build_rule(&Rule::from_addr(w.src, w.table, w.priority), protocol)
}

/// The [`WantRule`] a kernel rule of hagw is (None: not one hagw writes).
fn rule_key(r: &KernelRule) -> Option<WantRule> {
    let src = r.rule.from?;
    if !r.to_table || r.extra || src.prefix_len() != src.max_prefix_len() {
        return None;
    }
    let want = WantRule {
        src: src.addr(),
        table: r.rule.table,
        priority: r.rule.priority,
    };
    (r.rule == Rule::from_addr(want.src, want.table, want.priority)).then_some(want)
}

// ---------------------------------------------------------------------------
// The task.

/// Per-interface status of [`PolicySync::snapshot`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceStatus {
    pub name: String,
    pub index: u32,
    pub table: u32,
    pub up: bool,
    /// Addresses with a rule in the kernel (or wanted).
    pub rules: Vec<IpAddr>,
    pub gateway4: Option<(Ipv4Addr, GatewaySource)>,
    pub gateway6: Option<Ipv6Addr>,
    pub error: Option<String>,
}

/// What [`PolicySync::snapshot`] returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicySnapshot {
    pub primary: Option<String>,
    pub error: Option<String>,
    pub interfaces: Vec<InterfaceStatus>,
}

/// A handle to the background task keeping the source policy rules and
/// per-interface tables in sync with the system.
#[derive(Clone, Debug)]
pub struct PolicySync {
    h: Handle<(), PolicySnapshot>,
}

impl PolicySync {
    /// Opens the sockets in the calling thread's network namespace, adopts
    /// or removes hagw rules and routes left by an earlier run, installs the
    /// desired state and spawns the task.
    pub async fn start(cfg: PolicyConfig) -> Result<PolicySync, KernelError> {
        let events = NlSocket::open(POLICY_GROUPS)?;
        let sock = NlSocket::open(0)?;
        let mut st = State {
            cfg,
            sock,
            plan: Plan::default(),
            apply_errors: HashMap::new(),
            resync_at: None,
        };
        st.resync().await.map_err(|source| KernelError::Socket {
            op: "initial policy routing sync",
            source,
        })?;
        Ok(PolicySync {
            h: reconcile::spawn(st, Some(events)),
        })
    }

    /// The primary interface and, per served interface, its table, rules,
    /// gateways and problem.
    pub async fn snapshot(&self) -> PolicySnapshot {
        self.h.snapshot().await
    }

    /// Removes every hagw rule and every route of hagw's tables, then stops
    /// the task.
    pub async fn shutdown(&self) {
        self.h.shutdown(true).await
    }
}

struct State {
    cfg: PolicyConfig,
    sock: NlSocket,
    plan: Plan,
    /// Errors of the last apply, by table.
    apply_errors: HashMap<u32, Vec<String>>,
    resync_at: Option<Instant>,
}

enum Op {
    DelRule(String, u32),
    DelRoute(String, u32),
    AddRoute(DevRoute),
    AddRule(WantRule),
}

impl State {
    fn schedule_resync(&mut self, delay: Duration) {
        let at = Instant::now() + delay;
        self.resync_at = Some(self.resync_at.map_or(at, |t| t.min(at)));
    }

    /// Whether an event datagram can change the plan or hagw's objects.
    fn relevant(&self, buf: &[u8]) -> bool {
        parse_datagram(buf).into_iter().any(|p| match p {
            Parsed::Msg { msg, .. } => match msg {
                RouteNetlinkMessage::NewRoute(m) | RouteNetlinkMessage::DelRoute(m) => {
                    parse_route(m).is_some_and(|r| {
                        self.cfg.owns_table(r.table)
                            || (r.table == RT_TABLE_MAIN && r.prefix.prefix_len() == 0)
                    })
                }
                RouteNetlinkMessage::NewLink(_)
                | RouteNetlinkMessage::DelLink(_)
                | RouteNetlinkMessage::NewAddress(_)
                | RouteNetlinkMessage::DelAddress(_)
                | RouteNetlinkMessage::NewRule(_)
                | RouteNetlinkMessage::DelRule(_) => true,
                _ => false,
            },
            _ => false,
        })
    }

    /// Dumps, plans, and makes the kernel match the plan.
    async fn resync(&mut self) -> std::io::Result<()> {
        let view = dump_view(&mut self.sock).await?;
        let sticky = self.plan.primary.as_ref().map(|p| p.0);
        let cfg = self.cfg.clone();
        let plan = plan(&cfg, &view, sticky, &|name, index| {
            lease_router(&cfg, name, index)
        });
        if plan != self.plan {
            match (&plan.primary, &plan.error) {
                (_, Some(e)) => warn!(error = %e, "policy routing paused"),
                (Some((i, n)), None) => {
                    info!(primary = %n, ifindex = i, interfaces = plan.interfaces.len(), "policy routing plan");
                    for ip in &plan.interfaces {
                        match &ip.error {
                            Some(e) => {
                                warn!(interface = %ip.name, table = ip.table, error = %e, "policy routing")
                            }
                            None => {
                                debug!(interface = %ip.name, table = ip.table, routes = ip.routes.len(), rules = ip.rules.len(), "policy routing")
                            }
                        }
                    }
                }
                (None, None) => {}
            }
        }
        self.plan = plan;
        if self.plan.error.is_some() {
            // Without a primary nothing can be decided: leave the kernel as is.
            return Ok(());
        }
        let (routes, rules): (Vec<DevRoute>, Vec<WantRule>) = (
            self.plan
                .interfaces
                .iter()
                .flat_map(|i| i.routes.iter().copied())
                .collect(),
            self.plan
                .interfaces
                .iter()
                .flat_map(|i| i.rules.iter().copied())
                .collect(),
        );
        self.reconcile(&view, routes, rules).await
    }

    /// Deletes hagw's rules and routes that are not wanted, adds the wanted
    /// ones that are missing: rules out first, then routes, then rules in, so
    /// that a rule never points at a table being filled.
    async fn reconcile(
        &mut self,
        view: &SystemView,
        routes: Vec<DevRoute>,
        rules: Vec<WantRule>,
    ) -> std::io::Result<()> {
        let proto = self.cfg.protocol;
        let want_routes: BTreeSet<DevRoute> = routes.into_iter().collect();
        let want_rules: BTreeSet<WantRule> = rules.into_iter().collect();
        let mut have_routes = BTreeSet::new();
        let mut have_rules = BTreeSet::new();
        let mut reqs = Vec::new();
        let mut ops = Vec::new();
        // Only rules into our own tables: other hagw parts (connection pinning)
        // use protocol 199 for rules of their own.
        for r in view
            .rules
            .iter()
            .filter(|r| r.protocol == proto && self.cfg.owns_table(r.rule.table))
        {
            match rule_key(r) {
                Some(k) if want_rules.contains(&k) && have_rules.insert(k) => {}
                _ => {
                    reqs.push(Request {
                        msg: RouteNetlinkMessage::DelRule(r.msg.clone()),
                        flags: 0,
                    });
                    ops.push(Op::DelRule(r.to_string(), r.rule.table));
                }
            }
        }
        for r in view
            .routes
            .iter()
            .filter(|r| r.protocol == proto && self.cfg.owns_table(r.table))
        {
            match dev_route_of(r) {
                Some(k) if want_routes.contains(&k) && have_routes.insert(k) => {}
                _ => {
                    reqs.push(Request {
                        msg: RouteNetlinkMessage::DelRoute(r.msg.clone()),
                        flags: 0,
                    });
                    ops.push(Op::DelRoute(r.to_string(), r.table));
                }
            }
        }
        for w in want_routes.difference(&have_routes) {
            reqs.push(Request {
                msg: RouteNetlinkMessage::NewRoute(build_dev_route(w, proto)),
                flags: NLM_F_CREATE | NLM_F_EXCL,
            });
            ops.push(Op::AddRoute(*w));
        }
        for w in want_rules.difference(&have_rules) {
            reqs.push(Request {
                msg: RouteNetlinkMessage::NewRule(build_want_rule(w, proto)),
                flags: NLM_F_CREATE | NLM_F_EXCL,
            });
            ops.push(Op::AddRule(*w));
        }
        self.apply_errors.clear();
        if reqs.is_empty() {
            return Ok(());
        }
        let results = self.sock.batch(reqs).await?;
        let mut failed = false;
        for (op, res) in ops.into_iter().zip(results) {
            match (op, res) {
                (Op::DelRule(d, _), Ok(())) => info!(rule = %d, "removed policy rule"),
                (Op::DelRoute(d, _), Ok(())) => debug!(route = %d, "removed policy route"),
                (Op::AddRoute(w), Ok(())) => debug!(route = %w, "added policy route"),
                (Op::AddRule(w), Ok(())) => {
                    info!(from = %w.src, table = w.table, "added policy rule")
                }
                // Gone already (the kernel flushes routes of a deleted link).
                (Op::DelRule(..) | Op::DelRoute(..), Err(e)) if e.errno == nix::libc::ESRCH => {}
                (Op::DelRule(..) | Op::DelRoute(..), Err(e))
                    if e.errno == nix::libc::ENOENT || e.errno == nix::libc::ENODEV => {}
                (Op::AddRule(_), Err(e)) if e.errno == nix::libc::EEXIST => {}
                (Op::DelRule(d, t) | Op::DelRoute(d, t), Err(e)) => {
                    failed = true;
                    warn!(what = %d, error = %e, "cannot remove");
                    self.apply_errors
                        .entry(t)
                        .or_default()
                        .push(format!("cannot remove {d}: {e}"));
                }
                (Op::AddRoute(w), Err(e)) => {
                    failed = true;
                    warn!(route = %w, error = %e, "cannot add policy route");
                    self.apply_errors
                        .entry(w.table)
                        .or_default()
                        .push(format!("cannot add route {w}: {e}"));
                }
                (Op::AddRule(w), Err(e)) => {
                    failed = true;
                    warn!(from = %w.src, table = w.table, error = %e, "cannot add policy rule");
                    self.apply_errors.entry(w.table).or_default().push(format!(
                        "cannot add rule from {} lookup {}: {e}",
                        w.src, w.table
                    ));
                }
            }
        }
        if failed {
            self.schedule_resync(Duration::from_secs(1));
        }
        Ok(())
    }

    fn snapshot(&self) -> PolicySnapshot {
        PolicySnapshot {
            primary: self.plan.primary.as_ref().map(|p| p.1.clone()),
            error: self.plan.error.clone(),
            interfaces: self
                .plan
                .interfaces
                .iter()
                .map(|i| {
                    let mut errs: Vec<String> = i.error.iter().cloned().collect();
                    if let Some(a) = self.apply_errors.get(&i.table) {
                        errs.extend(a.iter().cloned());
                    }
                    InterfaceStatus {
                        name: i.name.clone(),
                        index: i.index,
                        table: i.table,
                        up: i.up,
                        rules: i.rules.iter().map(|r| r.src).collect(),
                        gateway4: i.gateway4,
                        gateway6: i.gateway6,
                        error: (!errs.is_empty()).then(|| errs.join("; ")),
                    }
                })
                .collect(),
        }
    }

    /// Removes every hagw rule and every hagw route of hagw's tables.
    async fn remove_all(&mut self) {
        let res = match dump_view(&mut self.sock).await {
            Ok(view) => self.reconcile(&view, Vec::new(), Vec::new()).await,
            Err(e) => Err(e),
        };
        match res {
            Ok(()) => info!("removed policy rules and tables"),
            Err(e) => error!(error = %e, "cannot remove policy rules and tables"),
        }
    }

    async fn resync_logged(&mut self) {
        if let Err(e) = self.resync().await {
            error!(error = %e, "policy routing resync failed");
            self.schedule_resync(Duration::from_secs(1));
        }
    }
}

impl Reconciler for State {
    type Cmd = ();
    type Snapshot = PolicySnapshot;

    fn on_datagram(&mut self, buf: &[u8]) {
        if self.relevant(buf) {
            self.schedule_resync(EVENT_RESYNC_DELAY);
        }
    }

    fn on_overrun(&mut self) {
        debug!("policy event socket overrun; resyncing");
        self.schedule_resync(EVENT_RESYNC_DELAY);
    }

    fn on_command(&mut self, _: ()) {}

    fn deadline(&self) -> Option<Instant> {
        self.resync_at
    }

    async fn on_deadline(&mut self) {
        self.resync_at = None;
        self.resync_logged().await;
    }

    async fn on_tick(&mut self) {
        self.resync_logged().await;
    }

    /// Resyncs do the work (a plan needs a fresh dump).
    async fn apply(&mut self) {}

    fn snapshot(&self) -> PolicySnapshot {
        State::snapshot(self)
    }

    async fn shutdown(&mut self, _remove: bool) {
        self.remove_all().await;
    }

    fn resync_period(&self) -> Duration {
        RESYNC_PERIOD
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netlink::{build_route, link::Link, parse_rule};
    use crate::Nexthop;
    use netlink_packet_route::route::RouteScope;

    fn link(index: u32, name: &str) -> Link {
        Link {
            index,
            name: name.into(),
            up: true,
            loopback: index == 1,
            kind: None,
            master: None,
        }
    }

    fn addr(index: u32, a: &str, secondary: bool) -> Addr {
        let n: IpNet = a.parse().expect("net");
        Addr {
            index,
            addr: n.addr(),
            prefix_len: n.prefix_len(),
            global: true,
            secondary,
        }
    }

    fn route(
        prefix: &str,
        table: u32,
        proto: u8,
        metric: u32,
        nh: Option<(&str, u32)>,
    ) -> KernelRoute {
        let nhs: Vec<Nexthop> = nh
            .map(|(a, i)| Nexthop::with_ifindex(a.parse().expect("ip"), i))
            .into_iter()
            .collect();
        parse_route(build_route(
            prefix.parse().expect("net"),
            table,
            proto,
            metric,
            &nhs,
        ))
        .map(|mut r| {
            r.kind = RouteType::Unicast;
            r
        })
        .expect("route")
    }

    /// The seed: ens5 (2) primary, ens6 (3) secondary, IPv4 and IPv6.
    fn seed() -> SystemView {
        SystemView {
            links: vec![link(1, "lo"), link(2, "ens5"), link(3, "ens6")],
            addrs: vec![
                Addr {
                    global: false,
                    ..addr(1, "127.0.0.1/8", false)
                },
                addr(2, "10.0.0.129/24", false),
                addr(3, "10.0.0.204/24", false),
                addr(2, "2600:1f14:eeb:2203:454a:fcbd:485d:73ef/128", false),
                addr(3, "2600:1f14:eeb:2203:ac24:6708:2ab9:75a3/128", false),
                Addr {
                    global: false,
                    ..addr(3, "fe80::ad:c7ff:fe1a:7486/64", false)
                },
            ],
            routes: vec![
                route("0.0.0.0/0", 254, 4, 0, Some(("10.0.0.1", 2))),
                route("0.0.0.0/0", 254, 4, 3, Some(("10.0.0.1", 3))),
                route("::/0", 254, 9, 1024, Some(("fe80::8f:53ff:fe6f:64ef", 2))),
                route("::/0", 254, 9, 1024, Some(("fe80::8f:53ff:fe6f:64ef", 3))),
            ],
            rules: vec![],
        }
    }

    fn no_lease(_: &str, _: u32) -> Option<Ipv4Addr> {
        None
    }

    #[test]
    fn seed_plan() {
        let cfg = PolicyConfig::default();
        let p = plan(&cfg, &seed(), None, &no_lease);
        assert_eq!(p.primary, Some((2, "ens5".into())));
        assert_eq!(p.interfaces.len(), 1);
        let i = &p.interfaces[0];
        assert_eq!(
            (i.name.as_str(), i.table, i.error.as_deref()),
            ("ens6", 10003, None)
        );
        assert_eq!(
            i.gateway4,
            Some(("10.0.0.1".parse().expect("ip"), GatewaySource::SubnetFirst))
        );
        assert_eq!(
            i.gateway6,
            Some("fe80::8f:53ff:fe6f:64ef".parse().expect("ip"))
        );
        let routes: Vec<String> = i.routes.iter().map(ToString::to_string).collect();
        assert_eq!(
            routes,
            [
                "default via 10.0.0.1 dev #3 table 10003",
                "10.0.0.0/24 dev #3 src 10.0.0.204 table 10003",
                "default via fe80::8f:53ff:fe6f:64ef dev #3 table 10003",
            ]
        );
        let rules: Vec<(IpAddr, u32, u32)> = i
            .rules
            .iter()
            .map(|r| (r.src, r.table, r.priority))
            .collect();
        assert_eq!(
            rules,
            [
                ("10.0.0.204".parse().expect("ip"), 10003, 10003),
                (
                    "2600:1f14:eeb:2203:ac24:6708:2ab9:75a3"
                        .parse()
                        .expect("ip"),
                    10003,
                    10003
                ),
            ]
        );
        // Without IPv6: only the IPv4 rule and routes.
        let cfg6 = PolicyConfig {
            ipv6: false,
            ..PolicyConfig::default()
        };
        let p = plan(&cfg6, &seed(), None, &no_lease);
        assert_eq!(p.interfaces[0].rules.len(), 1);
        assert!(p.interfaces[0]
            .routes
            .iter()
            .all(|r| r.prefix.addr().is_ipv4()));
    }

    #[test]
    fn primary_choice() {
        let mut v = seed();
        // Configured primary wins.
        let cfg = PolicyConfig {
            primary: Some("ens6".into()),
            ..PolicyConfig::default()
        };
        let p = plan(&cfg, &v, None, &no_lease);
        assert_eq!(p.primary, Some((3, "ens6".into())));
        assert_eq!(p.interfaces[0].name, "ens5");
        // Sticky while it keeps a default.
        let cfg = PolicyConfig::default();
        assert_eq!(
            plan(&cfg, &v, Some(3), &no_lease).primary.map(|p| p.0),
            Some(3)
        );
        // A named primary that does not exist pauses everything.
        let bad = PolicyConfig {
            primary: Some("ens9".into()),
            ..PolicyConfig::default()
        };
        let p = plan(&bad, &v, None, &no_lease);
        assert!(
            p.error
                .as_deref()
                .is_some_and(|e| e.contains("\"ens9\" does not exist")),
            "{p:?}"
        );
        assert!(p.interfaces.is_empty());
        // hagw's own BGP default (proto 199) comes after the DHCP ones...
        let own = cfg.protocol;
        v.routes
            .push(route("0.0.0.0/0", 254, own, 20, Some(("10.0.0.20", 3))));
        assert_eq!(
            plan(&cfg, &v, None, &no_lease).primary.map(|p| p.0),
            Some(2)
        );
        // ...and names the primary once `dhcp_default = "remove"` took them.
        v.routes.retain(|r| r.protocol == own);
        assert_eq!(
            plan(&cfg, &v, None, &no_lease).primary.map(|p| p.0),
            Some(3)
        );
        // No default at all: the last primary stays; with none yet, wait.
        v.routes.clear();
        assert_eq!(
            plan(&cfg, &v, Some(3), &no_lease).primary.map(|p| p.0),
            Some(3)
        );
        let p = plan(&cfg, &v, None, &no_lease);
        assert!(p.error.is_some() && p.primary.is_none());
    }

    #[test]
    fn gateways() {
        let v = seed();
        let lease = |n: &str, _: u32| (n == "ens6").then(|| Ipv4Addr::new(10, 0, 0, 2));
        let p = plan(&PolicyConfig::default(), &v, None, &lease);
        assert_eq!(
            p.interfaces[0].gateway4,
            Some((Ipv4Addr::new(10, 0, 0, 2), GatewaySource::DhcpLease))
        );
        // A lease router outside the subnet (another namespace's lease) is ignored.
        let far = |_: &str, _: u32| Some(Ipv4Addr::new(192, 168, 1, 1));
        let p = plan(&PolicyConfig::default(), &v, None, &far);
        assert_eq!(
            p.interfaces[0].gateway4.map(|g| g.1),
            Some(GatewaySource::SubnetFirst)
        );
        // Configured wins; outside the subnet is an error for that interface only.
        let mut cfg = PolicyConfig {
            gateways: vec![GatewayOverride {
                interface: "ens6".into(),
                ipv4: Some(Ipv4Addr::new(10, 0, 0, 3)),
            }],
            ..PolicyConfig::default()
        };
        let p = plan(&cfg, &v, None, &lease);
        assert_eq!(
            p.interfaces[0].gateway4,
            Some((Ipv4Addr::new(10, 0, 0, 3), GatewaySource::Config))
        );
        cfg.gateways[0].ipv4 = Some(Ipv4Addr::new(10, 9, 0, 1));
        let p = plan(&cfg, &v, None, &lease);
        let i = &p.interfaces[0];
        assert_eq!(i.gateway4, None);
        assert_eq!(
            i.error.as_deref(),
            Some("gateway 10.9.0.1 is outside ens6's subnets (10.0.0.0/24)")
        );
        // Link route and rules stay.
        assert_eq!(i.rules.len(), 2);
        assert!(i
            .routes
            .iter()
            .any(|r| r.prefix.to_string() == "10.0.0.0/24"));
        let problems = check(&cfg, &v);
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].key, CheckKey::Gateway(0));
        assert_eq!(problems[0].message, i.error.clone().expect("error"));
    }

    #[test]
    fn secondary_addresses_and_skips() {
        let mut v = seed();
        v.addrs.push(addr(3, "10.0.0.205/24", true));
        v.links.push(link(4, "ens7")); // no address: skipped
        v.links.push(Link {
            up: false,
            ..link(5, "ens8")
        });
        v.addrs.push(addr(5, "10.0.0.50/24", false));
        let p = plan(&PolicyConfig::default(), &v, None, &no_lease);
        let names: Vec<&str> = p.interfaces.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["ens6", "ens8"]);
        let ens6 = &p.interfaces[0];
        assert_eq!(ens6.rules.len(), 3);
        // One link route per subnet, with the primary address as source.
        let link_routes: Vec<&DevRoute> = ens6
            .routes
            .iter()
            .filter(|r| r.gateway.is_none() && r.prefix.addr().is_ipv4())
            .collect();
        assert_eq!(link_routes.len(), 1);
        assert_eq!(link_routes[0].src, Some("10.0.0.204".parse().expect("ip")));
        // Down: listed, nothing installed.
        let ens8 = &p.interfaces[1];
        assert!(!ens8.up && ens8.routes.is_empty() && ens8.rules.is_empty());
    }

    #[test]
    fn table_problems() {
        let mut v = seed();
        v.routes
            .push(route("192.0.2.0/24", 10003, 4, 0, Some(("10.0.0.1", 3))));
        let p = plan(&PolicyConfig::default(), &v, None, &no_lease);
        let i = &p.interfaces[0];
        assert!(i.rules.is_empty() && i.routes.is_empty());
        assert!(i
            .error
            .as_deref()
            .is_some_and(|e| e.contains("table 10003 for ens6 already holds routes")));
        let problems = check(&PolicyConfig::default(), &v);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].key, CheckKey::TableBase);
        assert!(problems[0]
            .message
            .contains("tables 10003 in hagw's range 10001..=32765"));
        // Our own protocol's routes are no collision.
        let mut v = seed();
        v.routes.push(route(
            "0.0.0.0/0",
            10003,
            RTPROT_HAGW,
            0,
            Some(("10.0.0.1", 3)),
        ));
        assert!(check(&PolicyConfig::default(), &v).is_empty());
        // Priorities after the main rule.
        let cfg = PolicyConfig {
            table_base: 32765,
            ..PolicyConfig::default()
        };
        let p = plan(&cfg, &seed(), None, &no_lease);
        assert!(p.interfaces[0]
            .error
            .as_deref()
            .is_some_and(|e| e.contains("32766")));
        assert_eq!(check(&cfg, &seed()).len(), 1);
    }

    #[test]
    fn messages_roundtrip() {
        let w = DevRoute {
            table: 10003,
            prefix: "10.0.0.0/24".parse().expect("net"),
            oif: 3,
            gateway: None,
            src: Some("10.0.0.204".parse().expect("ip")),
        };
        let m = build_dev_route(&w, RTPROT_HAGW);
        assert_eq!(m.header.scope, RouteScope::Link);
        let k = parse_route(m).expect("parse");
        assert_eq!(dev_route_of(&k), Some(w));
        let d = DevRoute {
            prefix: "::/0".parse().expect("net"),
            gateway: Some("fe80::1".parse().expect("ip")),
            src: None,
            ..w
        };
        let k = parse_route(build_dev_route(&d, RTPROT_HAGW)).expect("parse");
        assert_eq!(dev_route_of(&k), Some(d));
        let r = WantRule {
            src: "2001:db8::5".parse().expect("ip"),
            table: 10003,
            priority: 10003,
        };
        let k = parse_rule(build_want_rule(&r, RTPROT_HAGW)).expect("parse");
        assert_eq!(k.protocol, RTPROT_HAGW);
        assert_eq!(k.rule.table, 10003);
        assert_eq!(k.msg.header.table, 0);
        assert_eq!(rule_key(&k), Some(r));
    }

    #[test]
    fn leases() {
        let text = r#"
lease {
  interface "ens6";
  fixed-address 10.0.0.204;
  option subnet-mask 255.255.255.0;
  option routers 10.0.0.9;
}
lease {
  interface "ens5";
  option routers 10.0.0.7;
}
lease {
  interface "ens6";
  fixed-address 10.0.0.204;
  option routers 10.0.0.1, 10.0.0.2;
  renew 4 2024/01/01 00:00:00;
}
"#;
        assert_eq!(
            parse_dhclient_leases(text, "ens6"),
            Some(Ipv4Addr::new(10, 0, 0, 1))
        );
        assert_eq!(
            parse_dhclient_leases(text, "ens5"),
            Some(Ipv4Addr::new(10, 0, 0, 7))
        );
        assert_eq!(parse_dhclient_leases(text, "ens7"), None);
        let nd = "# This is private data. Do not parse.\nADDRESS=10.0.0.204\nNETMASK=255.255.255.0\nROUTER=10.0.0.1\n";
        assert_eq!(parse_networkd_lease(nd), Some(Ipv4Addr::new(10, 0, 0, 1)));
        assert_eq!(parse_networkd_lease("ADDRESS=1.2.3.4\n"), None);
    }
}
