//! The virtual networks' reconciler: bridges, tables, rules and the VMs
//! learned from neighbour entries (see the module docs of [`super`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;
use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE};
use netlink_packet_route::{link::LinkMessage, neighbour::NeighbourState, RouteNetlinkMessage};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use super::plan::{have_of, want_routes, Want};
use super::{
    Cmd, NetworkConfig, NetworkStatus, VmEvent, VmSource, VnetConfig, ALIAS_PREFIX,
    EVENT_RESYNC_DELAY, POKE_PERIOD, RESYNC_PERIOD,
};
use crate::netlink::{
    addr::has_address,
    build_delete, build_delete_exact, build_route, build_rule,
    link::{build_set_alias, build_set_mac, build_set_up, link_alias, link_mac, parse_link, Link},
    neigh::{build_delete as build_neigh_delete, build_use, parse_fdb, parse_neigh},
    parse_datagram, parse_route, parse_rule,
    route::{build_dev_route, build_unreachable},
    view::{dump_view, SystemView},
    DevRoute, Nexthop, NlError, NlSocket, Parsed, Request, Rule, RTMGRP_IPV4_IFADDR,
    RTMGRP_IPV4_ROUTE, RTMGRP_IPV4_RULE, RTMGRP_IPV6_IFADDR, RTMGRP_IPV6_ROUTE, RTMGRP_IPV6_RULE,
    RTMGRP_LINK, RTMGRP_NEIGH,
};
use crate::reconcile::{self, Handle, Reconciler};
use crate::{sysctl, KernelError};

/// Links (bridges, ports), neighbours and FDB entries, addresses, routes and
/// rules.
const GROUPS: u32 = RTMGRP_LINK
    | RTMGRP_NEIGH
    | RTMGRP_IPV4_IFADDR
    | RTMGRP_IPV6_IFADDR
    | RTMGRP_IPV4_ROUTE
    | RTMGRP_IPV6_ROUTE
    | RTMGRP_IPV4_RULE
    | RTMGRP_IPV6_RULE;

type Mac = [u8; 6];

struct Net {
    cfg: NetworkConfig,
    /// The bridge's index, while it exists.
    index: Option<u32>,
    /// hagw created the bridge (it carries our alias).
    created: bool,
    /// The bridge index whose sysctls are set.
    tuned: Option<u32>,
    /// VMs learned from neighbour entries, with their MAC.
    learned: BTreeMap<IpAddr, Option<Mac>>,
    /// What the daemon has been told.
    reported: BTreeSet<IpAddr>,
    error: Option<String>,
}

impl Net {
    fn known(&self) -> BTreeSet<IpAddr> {
        self.learned
            .keys()
            .copied()
            .chain(self.cfg.static_vms.iter().copied())
            .filter(|a| self.cfg.may_be_vm(*a))
            .collect()
    }

    fn rules(&self) -> Vec<Rule> {
        let mut v = vec![Rule::iif(
            false,
            &self.cfg.bridge,
            self.cfg.table,
            self.cfg.priority,
        )];
        if self.cfg.address6.is_some() {
            v.push(Rule::iif(
                true,
                &self.cfg.bridge,
                self.cfg.table,
                self.cfg.priority,
            ));
        }
        v
    }
}

struct State {
    protocol: u8,
    timers: super::NeighTimers,
    nets: Vec<Net>,
    sock: NlSocket,
    events: mpsc::UnboundedSender<VmEvent>,
    alive: Option<Vec<IpAddr>>,
    /// (table, prefix) -> what we believe the kernel has.
    installed: BTreeMap<(u32, IpNet), Want>,
    /// Bridge port -> its bridge (ours only).
    ports: HashMap<u32, u32>,
    /// (bridge, MAC) -> the port it was last seen on.
    fdb: HashMap<(u32, Mac), u32>,
    /// Neighbour requests to send (deletes after a port left, re-resolves).
    neigh_reqs: Vec<Request>,
    /// The tables need an incremental pass.
    dirty: bool,
    resync_at: Option<Instant>,
    /// Also re-read neighbours and FDB at the next resync (events lost).
    relearn: bool,
    poke_at: Instant,
}

pub(super) async fn start(
    cfg: VnetConfig,
    events: mpsc::UnboundedSender<VmEvent>,
) -> Result<Handle<Cmd, Vec<NetworkStatus>>, KernelError> {
    let ev = NlSocket::open(GROUPS)?;
    let sock = NlSocket::open(0)?;
    set_globals(&cfg)?;
    let mut st = State {
        protocol: cfg.protocol,
        timers: cfg.timers,
        nets: cfg
            .networks
            .into_iter()
            .map(|cfg| Net {
                cfg,
                index: None,
                created: false,
                tuned: None,
                learned: BTreeMap::new(),
                reported: BTreeSet::new(),
                error: None,
            })
            .collect(),
        sock,
        events,
        alive: None,
        installed: BTreeMap::new(),
        ports: HashMap::new(),
        fdb: HashMap::new(),
        neigh_reqs: Vec::new(),
        dirty: false,
        resync_at: None,
        relearn: true,
        poke_at: Instant::now() + POKE_PERIOD,
    };
    let io = |source| KernelError::Socket {
        op: "initial virtual network sync",
        source,
    };
    st.remove_leftover_bridges().await.map_err(io)?;
    st.resync().await.map_err(io)?;
    st.report();
    let _ = st.events.send(VmEvent::Ready);
    Ok(reconcile::spawn(st, Some(ev)))
}

/// Forwarding on (the seed's `ip_forward`), and no ICMP redirects taken: a
/// host that learned "go straight to host2 for 10.10.10.12" from the router
/// would keep sending there after that VM moved.
fn set_globals(cfg: &VnetConfig) -> Result<(), KernelError> {
    sysctl::write("/proc/sys/net/ipv4/ip_forward", "1")?;
    sysctl::set_conf(false, "all", "accept_redirects", "0")?;
    if cfg.networks.iter().any(|n| n.address6.is_some()) {
        sysctl::set_conf(true, "all", "forwarding", "1")?;
    }
    Ok(())
}

fn mac_str(m: &Mac) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// What one request of a batch was, for its result.
enum Op {
    Route(String, usize),
    Rule(String, usize),
}

impl State {
    fn schedule_resync(&mut self, delay: Duration) {
        let at = Instant::now() + delay;
        self.resync_at = Some(self.resync_at.map_or(at, |t| t.min(at)));
    }

    fn net_of_bridge(&self, index: u32) -> Option<usize> {
        self.nets.iter().position(|n| n.index == Some(index))
    }

    /// At start: deletes the bridges an earlier run created for networks no
    /// longer configured.
    async fn remove_leftover_bridges(&mut self) -> std::io::Result<()> {
        for m in self.sock.dump_link_messages().await? {
            let Some(alias) = link_alias(&m) else {
                continue;
            };
            let Some(name) = alias.strip_prefix(ALIAS_PREFIX) else {
                continue;
            };
            let l = parse_link(m);
            if self
                .nets
                .iter()
                .any(|n| n.cfg.name == name || n.cfg.bridge == l.name)
            {
                continue;
            }
            match self.sock.delete_link(l.index).await? {
                Ok(()) => {
                    info!(bridge = %l.name, network = %name, "removed the bridge of a network no longer configured")
                }
                Err(e) => {
                    warn!(bridge = %l.name, error = %e, "cannot remove the bridge of a network no longer configured")
                }
            }
        }
        Ok(())
    }

    /// Makes every bridge exist, with its alias (if ours), MAC, up, and
    /// addresses; records bridge ports.
    async fn ensure_bridges(&mut self, links: Vec<LinkMessage>) -> std::io::Result<()> {
        let mut by_name: HashMap<String, (Link, Option<String>, Option<Mac>)> = links
            .into_iter()
            .map(|m| {
                let alias = link_alias(&m);
                let mac = link_mac(&m);
                let l = parse_link(m);
                (l.name.clone(), (l, alias, mac))
            })
            .collect();
        for i in 0..self.nets.len() {
            let (name, alias, mac) = {
                let c = &self.nets[i].cfg;
                (c.bridge.clone(), c.alias(), c.mac)
            };
            let found = by_name.remove(&name);
            let (index, created, cur_mac, up) = match found {
                Some((l, _, _)) if l.kind.as_deref() != Some("bridge") => {
                    let what = l
                        .kind
                        .map_or("a physical port".to_string(), |k| format!("a {k}"));
                    self.set_net_error(i, format!("{name} exists and is {what}, not a bridge"));
                    self.nets[i].index = None;
                    continue;
                }
                Some((l, a, m)) => (l.index, a.as_deref() == Some(alias.as_str()), m, l.up),
                None => match self.sock.create_bridge(&name).await? {
                    Ok(_) => {
                        let Some(index) = crate::netlink::ifindex(&name).ok().flatten() else {
                            self.set_net_error(i, format!("{name} created but not found"));
                            continue;
                        };
                        if let Err(e) = self.sock.set_link(build_set_alias(index, &alias)).await? {
                            warn!(bridge = %name, error = %e, "cannot mark the bridge as hagw's");
                        }
                        info!(bridge = %name, network = %self.nets[i].cfg.name, "created the bridge");
                        (index, true, None, false)
                    }
                    Err(e) => {
                        self.set_net_error(i, format!("cannot create bridge {name}: {e}"));
                        continue;
                    }
                },
            };
            if self.nets[i].index.is_some_and(|old| old != index) {
                // The bridge was re-created: its VMs are not known to be back.
                self.nets[i].learned.clear();
                self.nets[i].tuned = None;
                self.relearn = true;
            }
            self.nets[i].index = Some(index);
            self.nets[i].created = created;
            let mut errs = Vec::new();
            if cur_mac != Some(mac) {
                if let Err(e) = self.sock.set_link(build_set_mac(index, mac)).await? {
                    errs.push(format!("cannot set MAC {}: {e}", mac_str(&mac)));
                }
            }
            if !up {
                if let Err(e) = self
                    .sock
                    .request(Request {
                        msg: RouteNetlinkMessage::SetLink(build_set_up(index, true)),
                        flags: 0,
                    })
                    .await?
                {
                    errs.push(format!("cannot set it up: {e}"));
                }
            }
            if self.nets[i].tuned != Some(index) {
                match tune_bridge(&self.nets[i].cfg, &self.timers) {
                    Ok(()) => self.nets[i].tuned = Some(index),
                    Err(e) => errs.push(e.to_string()),
                }
            }
            let err = (!errs.is_empty()).then(|| errs.join("; "));
            self.nets[i].error = err;
        }
        // Ports: every link whose master is one of our bridges.
        self.ports.clear();
        for (l, _, _) in by_name.values() {
            if let Some(m) = l.master.filter(|m| self.net_of_bridge(*m).is_some()) {
                self.ports.insert(l.index, m);
            }
        }
        Ok(())
    }

    fn set_net_error(&mut self, i: usize, e: String) {
        if self.nets[i].error.as_deref() != Some(e.as_str()) {
            warn!(network = %self.nets[i].cfg.name, error = %e, "virtual network");
        }
        self.nets[i].error = Some(e);
    }

    /// Adds the bridges' addresses that are missing.
    async fn ensure_addresses(&mut self, view: &SystemView) -> std::io::Result<()> {
        for i in 0..self.nets.len() {
            let Some(index) = self.nets[i].index else {
                continue;
            };
            for a in self.nets[i].cfg.addresses() {
                if has_address(&view.addrs, index, a) {
                    continue;
                }
                match self.sock.add_address(index, a).await? {
                    Ok(()) => {
                        info!(bridge = %self.nets[i].cfg.bridge, address = %a, "added the gateway address")
                    }
                    Err(e) => {
                        let msg = format!("cannot add {a}: {e}");
                        self.set_net_error(i, msg);
                    }
                }
            }
        }
        Ok(())
    }

    /// Strict reverse-path filtering on the interface toward a router drops
    /// what the router forwards to our VMs (their network is on the bridge,
    /// not there): such an interface is set to loose (2).
    fn loosen_rp_filter(&self, view: &SystemView) {
        let all = sysctl::get_conf(false, "all", "rp_filter").unwrap_or_default();
        let mut done = BTreeSet::new();
        for r in self.nets.iter().flat_map(|n| n.cfg.routers.iter()) {
            let IpAddr::V4(r4) = r else { continue };
            for l in &view.links {
                if !view.v4_subnets(l.index).iter().any(|(n, _)| n.contains(r4)) {
                    continue;
                }
                if !done.insert(l.index) {
                    continue;
                }
                let own = sysctl::get_conf(false, &l.name, "rp_filter").unwrap_or_default();
                if all == "1" && own != "2" || own == "1" {
                    match sysctl::set_conf(false, &l.name, "rp_filter", "2") {
                        Ok(()) => {
                            info!(interface = %l.name, "rp_filter set to loose (2): the routers forward our VMs' traffic in through it")
                        }
                        Err(e) => {
                            warn!(interface = %l.name, error = %e, "cannot loosen rp_filter; traffic to the VMs may be dropped")
                        }
                    }
                }
            }
        }
    }

    /// Reads every neighbour and FDB entry: the VMs behind each bridge.
    async fn learn(&mut self) -> std::io::Result<()> {
        let fdb = self.sock.dump_fdb().await?;
        self.fdb.clear();
        for f in fdb.into_iter().filter(|f| !f.local) {
            if let Some(b) = f.bridge.or_else(|| self.ports.get(&f.port).copied()) {
                if self.net_of_bridge(b).is_some() {
                    self.fdb.insert((b, f.mac), f.port);
                }
            }
        }
        let neigh = self.sock.dump_neighbours().await?;
        for net in &mut self.nets {
            let Some(index) = net.index else { continue };
            let mut now: BTreeMap<IpAddr, Option<Mac>> = BTreeMap::new();
            for n in neigh.iter().filter(|n| n.index == index) {
                if n.valid && net.cfg.may_be_vm(n.addr) {
                    now.insert(n.addr, n.mac);
                }
            }
            // Known before but absent now (events were lost): resolve again
            // rather than forget a VM that is there.
            for addr in net.learned.keys().filter(|a| !now.contains_key(a)) {
                self.neigh_reqs.push(resolve(index, *addr));
            }
            for (a, m) in now {
                net.learned.insert(a, m);
            }
        }
        Ok(())
    }

    /// Dumps, sets up what is missing, and makes tables and rules match.
    async fn resync(&mut self) -> std::io::Result<()> {
        let links = self.sock.dump_link_messages().await?;
        self.ensure_bridges(links).await?;
        let view = dump_view(&mut self.sock).await?;
        self.ensure_addresses(&view).await?;
        self.loosen_rp_filter(&view);
        if std::mem::take(&mut self.relearn) {
            self.learn().await?;
        }
        self.reconcile(&view, true).await
    }

    /// Tells the daemon which VMs came and went.
    fn report(&mut self) {
        for (i, net) in self.nets.iter_mut().enumerate() {
            let known = net.known();
            if known == net.reported {
                continue;
            }
            for a in known.difference(&net.reported) {
                info!(network = %net.cfg.name, vm = %a, "VM known");
                let _ = self.events.send(VmEvent::Up {
                    network: i,
                    addr: *a,
                });
            }
            for a in net.reported.difference(&known) {
                info!(network = %net.cfg.name, vm = %a, "VM gone");
                let _ = self.events.send(VmEvent::Down {
                    network: i,
                    addr: *a,
                });
            }
            net.reported = known;
            self.dirty = true;
        }
    }

    fn want(&self) -> BTreeMap<(u32, IpNet), Want> {
        let mut out = BTreeMap::new();
        for net in &self.nets {
            let w = want_routes(
                &net.cfg,
                net.index.unwrap_or(0),
                self.alive.as_deref(),
                net.index.map(|_| net.known()).unwrap_or_default(),
            );
            out.extend(w.into_iter().map(|(p, w)| ((net.cfg.table, p), w)));
        }
        out
    }

    fn net_of_table(&self, table: u32) -> usize {
        self.nets
            .iter()
            .position(|n| n.cfg.table == table)
            .unwrap_or(usize::MAX)
    }

    fn add_msg(&self, table: u32, prefix: IpNet, w: &Want) -> RouteNetlinkMessage {
        RouteNetlinkMessage::NewRoute(match w {
            Want::Via(hops) => {
                let nhs: Vec<Nexthop> = hops.iter().map(|a| Nexthop::new(*a)).collect();
                build_route(prefix, table, self.protocol, 0, &nhs)
            }
            Want::Dev(oif) => build_dev_route(
                &DevRoute {
                    table,
                    prefix,
                    oif: *oif,
                    gateway: None,
                    src: None,
                },
                self.protocol,
            ),
            Want::Unreachable => build_unreachable(prefix, table, self.protocol),
        })
    }

    fn del_msg(&self, table: u32, prefix: IpNet, w: &Want) -> RouteNetlinkMessage {
        match (w, self.add_msg(table, prefix, w)) {
            (Want::Via(_), _) => {
                RouteNetlinkMessage::DelRoute(build_delete(prefix, table, self.protocol, 0))
            }
            (_, RouteNetlinkMessage::NewRoute(m)) => RouteNetlinkMessage::DelRoute(m),
            (_, other) => other,
        }
    }

    /// Makes the tables (and, with `full`, the rules) match. `full` works
    /// from `view`; otherwise from what we believe is installed. Order:
    /// unwanted rules and routes out, wanted routes in, then wanted rules,
    /// so a rule never points at an empty table.
    async fn reconcile(&mut self, view: &SystemView, full: bool) -> std::io::Result<()> {
        let want = self.want();
        let mut dels: Vec<(Request, Op)> = Vec::new();
        let mut rule_adds: Vec<(Request, Op)> = Vec::new();
        let mut have: BTreeMap<(u32, IpNet), Want> = BTreeMap::new();
        if full {
            let want_rules: BTreeSet<Rule> = self.nets.iter().flat_map(Net::rules).collect();
            let mut tables: BTreeSet<u32> = self.nets.iter().map(|n| n.cfg.table).collect();
            let mut have_rules = BTreeSet::new();
            for r in view
                .rules
                .iter()
                .filter(|r| r.protocol == self.protocol && r.rule.iif.is_some())
            {
                if r.to_table && !r.extra && want_rules.contains(&r.rule) {
                    have_rules.insert(r.rule.clone());
                    continue;
                }
                // An earlier run's rule for a network no longer configured:
                // it goes, and its table's routes with it.
                tables.insert(r.rule.table);
                info!(rule = %r, "removing a virtual network rule no longer configured");
                dels.push((
                    Request {
                        msg: RouteNetlinkMessage::DelRule(r.msg.clone()),
                        flags: 0,
                    },
                    Op::Rule(format!("delete {r}"), usize::MAX),
                ));
            }
            for r in view
                .routes
                .iter()
                .filter(|r| r.protocol == self.protocol && tables.contains(&r.table))
            {
                let key = (r.table, r.prefix);
                match have_of(r) {
                    // Ours (the first of a key only): kept, or replaced below.
                    Some(h) if want.contains_key(&key) && !have.contains_key(&key) => {
                        have.insert(key, h);
                    }
                    _ => dels.push((
                        Request {
                            msg: RouteNetlinkMessage::DelRoute(build_delete_exact(r)),
                            flags: 0,
                        },
                        Op::Route(format!("delete {r}"), self.net_of_table(r.table)),
                    )),
                }
            }
            for r in want_rules.difference(&have_rules) {
                rule_adds.push((
                    Request {
                        msg: RouteNetlinkMessage::NewRule(build_rule(r, self.protocol)),
                        flags: NLM_F_CREATE | NLM_F_EXCL,
                    },
                    Op::Rule(r.to_string(), self.net_of_table(r.table)),
                ));
            }
        } else {
            have = self.installed.clone();
            for (key, h) in &have {
                if !want.contains_key(key) {
                    dels.push((
                        Request {
                            msg: self.del_msg(key.0, key.1, h),
                            flags: 0,
                        },
                        Op::Route(
                            format!("delete {} table {}", key.1, key.0),
                            self.net_of_table(key.0),
                        ),
                    ));
                }
            }
        }
        let mut adds: Vec<(Request, Op)> = Vec::new();
        for (key, w) in &want {
            let flags = match have.get(key) {
                Some(h) if h == w => continue,
                Some(_) => NLM_F_CREATE | NLM_F_REPLACE,
                None => NLM_F_CREATE | NLM_F_EXCL,
            };
            adds.push((
                Request {
                    msg: self.add_msg(key.0, key.1, w),
                    flags,
                },
                Op::Route(
                    format!("{} {:?} table {}", key.1, w, key.0),
                    self.net_of_table(key.0),
                ),
            ));
        }
        self.installed = want;
        let (reqs, ops): (Vec<Request>, Vec<Op>) =
            dels.into_iter().chain(adds).chain(rule_adds).unzip();
        if reqs.is_empty() {
            return Ok(());
        }
        let results = self.sock.batch(reqs).await?;
        let mut failed = false;
        for (op, res) in ops.into_iter().zip(results) {
            match (op, res) {
                (Op::Rule(d, i), Ok(())) if i != usize::MAX => {
                    info!(rule = %d, "added the virtual network rule")
                }
                (_, Ok(())) => {}
                (_, Err(e)) if ignorable(&e) => {}
                (op, Err(e)) => {
                    failed = true;
                    let (what, i) = match op {
                        Op::Route(d, i) => (format!("route {d}"), i),
                        Op::Rule(d, i) => (format!("rule {d}"), i),
                    };
                    warn!(what = %what, error = %e, "virtual network");
                    if let Some(net) = self.nets.get_mut(i) {
                        net.error = Some(format!("{what}: {e}"));
                    }
                }
            }
        }
        if failed {
            // The retry starts from a dump.
            self.schedule_resync(Duration::from_secs(1));
        }
        Ok(())
    }

    async fn resync_logged(&mut self) {
        if let Err(e) = self.resync().await {
            error!(error = %e, "virtual network resync failed");
            self.schedule_resync(Duration::from_secs(1));
        }
    }

    /// Marks every learned VM's entry used: the kernel re-confirms it
    /// (unicast probes) and fails it if the VM is gone.
    async fn poke(&mut self) {
        let mut reqs = Vec::new();
        for net in &self.nets {
            let Some(index) = net.index else { continue };
            reqs.extend(net.learned.keys().map(|a| resolve(index, *a)));
        }
        if reqs.is_empty() {
            return;
        }
        if let Err(e) = self.sock.batch(reqs).await {
            warn!(error = %e, "cannot confirm the VMs' neighbour entries");
        }
    }

    fn on_neighbour(
        &mut self,
        m: &netlink_packet_route::neighbour::NeighbourMessage,
        removed: bool,
    ) {
        if let Some(f) = parse_fdb(m) {
            if removed || f.local {
                // An aged-out entry still says where the MAC was last seen.
                return;
            }
            if let Some(b) = f.bridge.or_else(|| self.ports.get(&f.port).copied()) {
                if self.net_of_bridge(b).is_some() {
                    self.fdb.insert((b, f.mac), f.port);
                }
            }
            return;
        }
        let Some(n) = parse_neigh(m) else { return };
        let Some(i) = self.net_of_bridge(n.index) else {
            return;
        };
        let net = &mut self.nets[i];
        if !net.cfg.may_be_vm(n.addr) {
            return;
        }
        if removed {
            // GC or a flush: make sure before forgetting.
            if net.learned.contains_key(&n.addr) {
                debug!(vm = %n.addr, "neighbour entry deleted: resolving it again");
                self.neigh_reqs.push(resolve(n.index, n.addr));
            }
            return;
        }
        match m.header.state {
            NeighbourState::Failed if net.learned.remove(&n.addr).is_some() => {
                debug!(vm = %n.addr, "neighbour entry failed");
            }
            NeighbourState::Failed => {}
            NeighbourState::Incomplete | NeighbourState::None => {}
            _ if n.valid => {
                net.learned.insert(n.addr, n.mac);
            }
            _ => {}
        }
    }

    /// A port left its bridge: the VMs last seen behind it are gone (their
    /// entries are deleted, so only a fresh answer brings them back).
    fn port_left(&mut self, port: u32) {
        let Some(bridge) = self.ports.remove(&port) else {
            return;
        };
        let macs: Vec<Mac> = self
            .fdb
            .iter()
            .filter(|((b, _), p)| *b == bridge && **p == port)
            .map(|((_, m), _)| *m)
            .collect();
        self.fdb.retain(|(b, _), p| !(*b == bridge && *p == port));
        let Some(i) = self.net_of_bridge(bridge) else {
            return;
        };
        let net = &mut self.nets[i];
        let gone: Vec<IpAddr> = net
            .learned
            .iter()
            .filter(|(_, m)| m.is_some_and(|m| macs.contains(&m)))
            .map(|(a, _)| *a)
            .collect();
        for a in gone {
            info!(network = %net.cfg.name, vm = %a, port, "its bridge port left: VM gone");
            net.learned.remove(&a);
            self.neigh_reqs.push(Request {
                msg: RouteNetlinkMessage::DelNeighbour(build_neigh_delete(bridge, a)),
                flags: 0,
            });
        }
    }

    fn on_link(&mut self, l: Link) {
        if let Some(i) = self.nets.iter().position(|n| n.cfg.bridge == l.name) {
            if self.nets[i].index != Some(l.index) || !l.up {
                self.schedule_resync(EVENT_RESYNC_DELAY);
            }
        }
        match l.master {
            Some(m) if self.net_of_bridge(m).is_some() => {
                self.ports.insert(l.index, m);
            }
            _ => self.port_left(l.index),
        }
    }

    fn on_link_deleted(&mut self, index: u32) {
        if let Some(i) = self.net_of_bridge(index) {
            warn!(bridge = %self.nets[i].cfg.bridge, "the bridge was deleted: re-creating it");
            self.nets[i].index = None;
            self.nets[i].learned.clear();
            self.ports.retain(|_, b| *b != index);
            self.fdb.retain(|(b, _), _| *b != index);
            self.schedule_resync(EVENT_RESYNC_DELAY);
            return;
        }
        self.port_left(index);
    }

    fn on_datagram_inner(&mut self, buf: &[u8]) {
        for p in parse_datagram(buf) {
            let Parsed::Msg { msg, .. } = p else { continue };
            match msg {
                RouteNetlinkMessage::NewNeighbour(m) => self.on_neighbour(&m, false),
                RouteNetlinkMessage::DelNeighbour(m) => self.on_neighbour(&m, true),
                RouteNetlinkMessage::NewLink(l) => self.on_link(parse_link(l)),
                RouteNetlinkMessage::DelLink(l) => self.on_link_deleted(l.header.index),
                RouteNetlinkMessage::NewAddress(a) | RouteNetlinkMessage::DelAddress(a)
                    if self.net_of_bridge(a.header.index).is_some() =>
                {
                    self.schedule_resync(EVENT_RESYNC_DELAY);
                }
                RouteNetlinkMessage::DelRoute(m) => {
                    if let Some(r) = parse_route(m) {
                        let ours = r.protocol == self.protocol;
                        if ours && self.installed.contains_key(&(r.table, r.prefix)) {
                            // Ours, still wanted, gone: deleted behind our back
                            // (or a link went). A dump tells.
                            self.schedule_resync(EVENT_RESYNC_DELAY);
                        }
                    }
                }
                RouteNetlinkMessage::DelRule(m)
                    if parse_rule(m.clone())
                        .is_some_and(|r| r.protocol == self.protocol && r.rule.iif.is_some()) =>
                {
                    self.schedule_resync(EVENT_RESYNC_DELAY);
                }
                _ => {}
            }
        }
    }

    fn snapshot(&self) -> Vec<NetworkStatus> {
        self.nets
            .iter()
            .map(|n| {
                let mut vms: Vec<(IpAddr, VmSource)> = n
                    .known()
                    .into_iter()
                    .map(|a| {
                        let src = if n.learned.contains_key(&a) {
                            VmSource::Learned
                        } else {
                            VmSource::Static
                        };
                        (a, src)
                    })
                    .collect();
                vms.sort();
                let routers = match self
                    .installed
                    .get(&(n.cfg.table, IpNet::V4(n.cfg.network())))
                {
                    Some(Want::Via(r)) => r.clone(),
                    _ => Vec::new(),
                };
                NetworkStatus {
                    name: n.cfg.name.clone(),
                    bridge: n.cfg.bridge.clone(),
                    ifindex: n.index,
                    created: n.created,
                    table: n.cfg.table,
                    routers,
                    vms,
                    error: n.error.clone(),
                }
            })
            .collect()
    }

    /// Deletes the rules and the tables' routes (the bridges stay).
    async fn remove_all(&mut self) {
        let view = match dump_view(&mut self.sock).await {
            Ok(v) => v,
            Err(e) => {
                error!(error = %e, "cannot remove the virtual networks' rules and tables");
                return;
            }
        };
        let tables: BTreeSet<u32> = self.nets.iter().map(|n| n.cfg.table).collect();
        let mut reqs = Vec::new();
        for r in view
            .rules
            .iter()
            .filter(|r| r.protocol == self.protocol && r.rule.iif.is_some())
        {
            reqs.push(Request {
                msg: RouteNetlinkMessage::DelRule(r.msg.clone()),
                flags: 0,
            });
        }
        for r in view
            .routes
            .iter()
            .filter(|r| r.protocol == self.protocol && tables.contains(&r.table))
        {
            reqs.push(Request {
                msg: RouteNetlinkMessage::DelRoute(build_delete_exact(r)),
                flags: 0,
            });
        }
        let n = reqs.len();
        match self.sock.batch(reqs).await {
            Ok(res) => {
                let failed = res
                    .iter()
                    .filter(|r| r.as_ref().is_err_and(|e| !ignorable(e)))
                    .count();
                if failed > 0 {
                    warn!(
                        failed,
                        "some virtual network rules or routes could not be removed"
                    );
                }
                info!(
                    count = n,
                    "removed the virtual networks' rules and table routes"
                );
            }
            Err(e) => error!(error = %e, "cannot remove the virtual networks' rules and tables"),
        }
        self.installed.clear();
    }
}

/// An NTF_USE for `addr` on `bridge`, creating the entry if it is missing
/// (then the kernel resolves it from scratch).
fn resolve(bridge: u32, addr: IpAddr) -> Request {
    Request {
        msg: RouteNetlinkMessage::NewNeighbour(build_use(bridge, addr)),
        flags: NLM_F_CREATE,
    }
}

/// Answers that mean "already so".
fn ignorable(e: &NlError) -> bool {
    use nix::libc::{ENODEV, ENOENT, ESRCH};
    matches!(e.errno, ESRCH | ENOENT | ENODEV)
}

/// Proxy ARP (the seed), gratuitous ARP accepted (a VM that moved here says
/// so), and the neighbour timers that bound how long a dead VM stays known.
fn tune_bridge(cfg: &NetworkConfig, t: &super::NeighTimers) -> Result<(), KernelError> {
    let br = &cfg.bridge;
    sysctl::set_conf(false, br, "proxy_arp", "1")?;
    sysctl::set_conf(false, br, "arp_accept", "1")?;
    sysctl::set_neigh(false, br, "proxy_delay", &t.proxy_delay_cs.to_string())?;
    sysctl::set_conf(false, br, "forwarding", "1")?;
    let mut fams = vec![false];
    if cfg.address6.is_some() {
        fams.push(true);
        sysctl::set_conf(true, br, "forwarding", "1")?;
    }
    for v6 in fams {
        sysctl::set_neigh(
            v6,
            br,
            "base_reachable_time_ms",
            &t.base_reachable_ms.to_string(),
        )?;
        sysctl::set_neigh(
            v6,
            br,
            "delay_first_probe_time",
            &t.delay_first_probe_s.to_string(),
        )?;
        sysctl::set_neigh(v6, br, "retrans_time_ms", &t.retrans_ms.to_string())?;
        sysctl::set_neigh(v6, br, "ucast_solicit", &t.ucast_solicit.to_string())?;
    }
    Ok(())
}

impl Reconciler for State {
    type Cmd = Cmd;
    type Snapshot = Vec<NetworkStatus>;

    fn on_datagram(&mut self, buf: &[u8]) {
        self.on_datagram_inner(buf);
    }

    fn on_overrun(&mut self) {
        debug!("virtual network event socket overrun; re-reading everything");
        self.relearn = true;
        self.schedule_resync(EVENT_RESYNC_DELAY);
    }

    fn on_command(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Routers(alive) => {
                let alive = alive.map(|mut a| {
                    a.sort();
                    a.dedup();
                    a
                });
                if alive != self.alive {
                    info!(routers = ?alive, "virtual networks: routers alive");
                    self.alive = alive;
                    self.dirty = true;
                }
            }
        }
    }

    fn deadline(&self) -> Option<Instant> {
        Some(self.resync_at.map_or(self.poke_at, |t| t.min(self.poke_at)))
    }

    async fn on_deadline(&mut self) {
        let now = Instant::now();
        if self.resync_at.is_some_and(|t| t <= now) {
            self.resync_at = None;
            self.resync_logged().await;
        }
        if self.poke_at <= now {
            self.poke_at = now + POKE_PERIOD;
            self.poke().await;
        }
    }

    async fn on_tick(&mut self) {
        self.resync_logged().await;
    }

    async fn apply(&mut self) {
        let reqs = std::mem::take(&mut self.neigh_reqs);
        if !reqs.is_empty() {
            if let Err(e) = self.sock.batch(reqs).await {
                warn!(error = %e, "neighbour requests failed");
            }
        }
        self.report();
        if std::mem::take(&mut self.dirty) {
            if let Err(e) = self.reconcile(&SystemView::default(), false).await {
                error!(error = %e, "cannot update the virtual networks' tables");
                self.schedule_resync(Duration::from_secs(1));
            }
        }
    }

    fn snapshot(&self) -> Vec<NetworkStatus> {
        State::snapshot(self)
    }

    async fn shutdown(&mut self, remove: bool) {
        if remove {
            self.remove_all().await;
        }
    }

    fn resync_period(&self) -> Duration {
        RESYNC_PERIOD
    }
}
