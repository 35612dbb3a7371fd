//! The anycast gateway of convergent nodes: every node of a group carries
//! the same gateway address on its guest bridge, so each guest leaves
//! through the node it lives on, wherever it migrates.
//!
//! What makes that work on a guest L2 shared by the nodes (a VLAN):
//!
//! * the **addresses** on the bridge, this node's own first and the shared
//!   gateway second: for IPv4 the first address of a subnet is the primary,
//!   the one the kernel picks as source (ARP requests, probes), so nothing
//!   this node sends into the guest L2 comes from the shared address;
//! * **ARP and ND for the gateway address never cross the uplinks** (the
//!   ports joining the bridges of the nodes): a netdev table per uplink
//!   drops, at egress and at ingress, ARP whose sender or target is the
//!   gateway, and IPv6 neighbour solicitations and advertisements from or
//!   for it. So a guest's ARP for the gateway is answered by its own node
//!   only, and no node learns another's MAC for it. Only those packets:
//!   every other frame, ARP for the nodes' own addresses included, passes;
//! * `arp_announce = 2` on the bridge (ARP requests name this node's own
//!   address, never the shared one) and forwarding on.
//!
//! Like every reconciler it keeps this true: addresses removed by hand or a
//! bridge re-created get their addresses back (link and address events), an
//! uplink appearing later gets its filter, a filter table deleted by `nft
//! flush ruleset` comes back (nftables events and a periodic check).

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    net::IpAddr,
    sync::Arc,
    time::Duration,
};

use ipnet::IpNet;
use tokio::time::Instant;
use tracing::{error, info, warn};

use crate::{
    netlink::{
        addr::{has_address, Addr},
        events::{decode, Event},
        link::Link,
        NlSocket, RTMGRP_IPV4_IFADDR, RTMGRP_IPV6_IFADDR, RTMGRP_LINK,
    },
    nft::{self, watch, Family, Nft, NftError, Table},
    reconcile::{self, Handle, Reconciler},
    sysctl, KernelError,
};

/// Prefix of the per-uplink filter tables (family `netdev`).
pub const HIDE_TABLE_PREFIX: &str = "hagw_hide_";
/// How often the filter tables are checked without an event.
pub const CHECK_PERIOD: Duration = Duration::from_secs(5);
const RETRY: Duration = Duration::from_secs(1);
/// Priority of the filter chains: before anything else at those hooks.
const PRIORITY: i32 = -500;

/// One anycast gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewaySpec {
    /// How status and logs name it (the config key, e.g. `gateway[0]`).
    pub name: String,
    pub bridge: String,
    /// The shared gateway address (the same on every node).
    pub address: IpNet,
    /// This node's own address on the bridge (the full-NAT source).
    pub node_address: Option<IpNet>,
    /// Ports towards the other nodes: ARP/ND for `address` never crosses them.
    pub hide_on: Vec<String>,
    /// [`Gateway::shutdown`] leaves this gateway's addresses and filters in
    /// place (a restarting node keeps serving its guests).
    pub keep_on_stop: bool,
}

/// The filter table of uplink `dev`.
pub fn hide_table(dev: &str) -> Result<Table, NftError> {
    if !nft::valid_interface(dev) {
        return Err(NftError::Interface(dev.to_string()));
    }
    let name: String = dev
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    Table::new(Family::Netdev, &format!("{HIDE_TABLE_PREFIX}{name}"))
}

/// The body of uplink `dev`'s filter table hiding `addrs`: the same rules
/// at ingress and egress.
pub fn hide_body(dev: &str, addrs: &[IpAddr]) -> Result<String, NftError> {
    if !nft::valid_interface(dev) {
        return Err(NftError::Interface(dev.to_string()));
    }
    let mut rules = String::new();
    for a in addrs {
        match a {
            IpAddr::V4(v4) => {
                let _ = writeln!(rules, "\t\tarp saddr ip {v4} counter drop");
                let _ = writeln!(rules, "\t\tarp daddr ip {v4} counter drop");
            }
            IpAddr::V6(v6) => {
                let nd = "icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert }";
                let _ = writeln!(rules, "\t\tip6 saddr {v6} {nd} counter drop");
                // The ND target (RFC 4861 §4.3, §4.4): 8 bytes into the message.
                let _ = writeln!(
                    rules,
                    "\t\t{nd} @th,64,128 {:#034x} counter drop",
                    u128::from(*v6)
                );
            }
        }
    }
    let mut s = String::new();
    for hook in ["ingress", "egress"] {
        let _ = write!(
            s,
            "\tchain {hook} {{\n\t\ttype filter hook {hook} device \"{dev}\" priority {PRIORITY}; policy accept;\n{rules}\t}}\n"
        );
    }
    Ok(s)
}

/// Changes of the desired state.
#[derive(Debug)]
pub enum Cmd {
    Set(Vec<GatewaySpec>),
    /// A transaction touched a filter table: the ruleset generation it made
    /// (`None`: events were lost).
    Touched(Option<u32>),
}

/// One gateway in [`GatewaySnapshot`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayState {
    pub name: String,
    pub bridge: String,
    pub address: IpNet,
    pub node_address: Option<IpNet>,
    pub bridge_present: bool,
    pub bridge_up: bool,
    /// Both addresses are on the bridge.
    pub addresses: bool,
    pub error: Option<String>,
}

/// One uplink in [`GatewaySnapshot`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UplinkState {
    pub name: String,
    pub table: String,
    pub present: bool,
    /// Its filter table is loaded.
    pub filtering: bool,
    pub hides: Vec<IpAddr>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct GatewaySnapshot {
    pub gateways: Vec<GatewayState>,
    pub uplinks: Vec<UplinkState>,
    /// Filter tables restored after someone else deleted or changed them.
    pub restores: u64,
}

/// Errors of [`Gateway::start`].
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error(transparent)]
    Kernel(#[from] KernelError),
    #[error(transparent)]
    Nft(#[from] NftError),
}

#[derive(Debug)]
struct AbortOnDrop(Option<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(h) = &self.0 {
            h.abort();
        }
    }
}

/// A handle to the gateway reconciler.
#[derive(Debug, Clone)]
pub struct Gateway {
    h: Handle<Cmd, GatewaySnapshot>,
    nft: Nft,
    _watch: Arc<AbortOnDrop>,
}

impl Gateway {
    /// Removes filter tables of uplinks no longer configured (a previous
    /// run's), installs `gateways` and keeps them. Runs in the calling
    /// thread's network namespace.
    pub async fn start(
        nft_program: &str,
        gateways: Vec<GatewaySpec>,
    ) -> Result<Gateway, GatewayError> {
        for g in &gateways {
            for dev in &g.hide_on {
                hide_body(dev, &[])?;
                hide_table(dev)?;
            }
        }
        let nft = Nft::new(nft_program);
        let events = NlSocket::open(RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR)?;
        let mut st = State {
            sock: NlSocket::open(0)?,
            nft: nft.clone(),
            desired: Vec::new(),
            retired: Vec::new(),
            dirty: true,
            check: false,
            own_gen: None,
            watching: false,
            loaded: BTreeMap::new(),
            retry_at: None,
            snap: GatewaySnapshot::default(),
        };
        st.set(gateways);
        st.remove_stale_tables().await;
        st.apply_now().await;
        st.watching = true;
        let h = reconcile::spawn(st, Some(events));
        let watch = {
            let h = h.clone();
            watch::spawn_checker(
                |f, n| f == Family::Netdev && n.starts_with(HIDE_TABLE_PREFIX),
                move |gen| h.send(Cmd::Touched(gen)),
            )
        };
        Ok(Gateway {
            h,
            nft,
            _watch: Arc::new(AbortOnDrop(watch)),
        })
    }

    pub fn set(&self, gateways: Vec<GatewaySpec>) {
        self.h.send(Cmd::Set(gateways));
    }

    pub async fn snapshot(&self) -> GatewaySnapshot {
        self.h.snapshot().await
    }

    /// Packets each uplink's filter dropped (ARP/ND for the gateway).
    pub async fn dropped(&self, uplinks: &[UplinkState]) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        for u in uplinks.iter().filter(|u| u.filtering) {
            let Ok(t) = hide_table(&u.name) else { continue };
            if let Ok(c) = self.nft.counters(&t).await {
                out.insert(u.name.clone(), c.iter().map(|c| c.packets).sum());
            }
        }
        out
    }

    /// Stops; with `remove`, deletes the addresses and filter tables of the
    /// gateways not marked `keep_on_stop` first.
    pub async fn shutdown(&self, remove: bool) {
        self.h.shutdown(remove).await;
    }
}

#[derive(Debug, PartialEq, Eq)]
struct Loaded {
    ifindex: u32,
    body: String,
    /// Rules in each of its two chains.
    rules: usize,
}

struct State {
    sock: NlSocket,
    nft: Nft,
    desired: Vec<GatewaySpec>,
    /// Addresses of gateways no longer configured: removed at the next apply.
    retired: Vec<(String, IpNet)>,
    /// Links or addresses changed (or a command came): look again.
    dirty: bool,
    /// Check the filter tables' presence (and, without change events, their
    /// shape).
    check: bool,
    /// The ruleset generation right after our last transaction.
    own_gen: Option<u32>,
    /// Change events are expected (the watcher is running).
    watching: bool,
    /// Filter tables in the kernel, by uplink.
    loaded: BTreeMap<String, Loaded>,
    retry_at: Option<Instant>,
    snap: GatewaySnapshot,
}

/// The addresses of `g` in the order they go on: the node's own first.
fn wanted(g: &GatewaySpec) -> Vec<IpNet> {
    g.node_address.into_iter().chain([g.address]).collect()
}

impl State {
    fn set(&mut self, gateways: Vec<GatewaySpec>) {
        let keep: BTreeSet<(String, IpNet)> = gateways
            .iter()
            .flat_map(|g| wanted(g).into_iter().map(|a| (g.bridge.clone(), a)))
            .collect();
        for g in &self.desired {
            for a in wanted(g) {
                if !keep.contains(&(g.bridge.clone(), a)) {
                    self.retired.push((g.bridge.clone(), a));
                }
            }
        }
        self.desired = gateways;
        self.dirty = true;
    }

    /// The uplinks to filter and the addresses each hides.
    fn uplinks(&self) -> BTreeMap<String, Vec<IpAddr>> {
        let mut m: BTreeMap<String, Vec<IpAddr>> = BTreeMap::new();
        for g in &self.desired {
            for dev in &g.hide_on {
                let v = m.entry(dev.clone()).or_default();
                if !v.contains(&g.address.addr()) {
                    v.push(g.address.addr());
                }
            }
        }
        m
    }

    fn schedule_retry(&mut self) {
        self.retry_at.get_or_insert(Instant::now() + RETRY);
    }

    async fn remove_stale_tables(&mut self) {
        let wanted: BTreeSet<String> = self
            .uplinks()
            .keys()
            .filter_map(|d| hide_table(d).ok())
            .map(|t| t.name().to_string())
            .collect();
        let tables = match self.nft.tables().await {
            Ok(t) => t,
            Err(e) => {
                warn!(error = %e, "cannot list nftables tables");
                return;
            }
        };
        for (f, n) in tables {
            if f != Family::Netdev || !n.starts_with(HIDE_TABLE_PREFIX) || wanted.contains(&n) {
                continue;
            }
            let Ok(t) = Table::new(f, &n) else { continue };
            match self.nft.delete(&t).await {
                Ok(()) => info!(table = %t, "removed a previous run's gateway filter"),
                Err(e) => warn!(table = %t, error = %e, "cannot remove a stale gateway filter"),
            }
        }
    }

    /// Forgets filter tables that are gone (or, without change events,
    /// changed), so the next apply loads them again.
    async fn check_tables(&mut self) {
        let cheap = self.watching && self.own_gen.is_some();
        let devs: Vec<String> = self.loaded.keys().cloned().collect();
        for dev in devs {
            let Ok(t) = hide_table(&dev) else { continue };
            let Some(l) = self.loaded.get(&dev) else {
                continue;
            };
            let expected: BTreeMap<String, usize> = [
                ("egress".to_string(), l.rules),
                ("ingress".to_string(), l.rules),
            ]
            .into();
            let intact = if cheap {
                watch::table_exists(t.family(), t.name())
                    .await
                    .map_err(|e| e.to_string())
            } else {
                self.nft
                    .shape(&t)
                    .await
                    .map(|s| s.is_some_and(|s| s.rules == expected))
                    .map_err(|e| e.to_string())
            };
            match intact {
                Ok(true) => {}
                Ok(false) => self.forget(&dev, &t),
                Err(e) => warn!(table = %t, error = %e, "cannot check a gateway filter"),
            }
        }
    }

    fn forget(&mut self, dev: &str, t: &Table) {
        if self.loaded.remove(dev).is_some() {
            warn!(table = %t, "gateway filter deleted or changed by someone else: loading it again");
            self.snap.restores += 1;
            self.dirty = true;
        }
    }

    async fn apply_now(&mut self) {
        if std::mem::take(&mut self.check) {
            self.check_tables().await;
        }
        if !std::mem::take(&mut self.dirty) {
            return;
        }
        if let Err(e) = self.apply_once().await {
            error!(error = %e, "gateway: netlink request failed; retrying");
            self.dirty = true;
            self.schedule_retry();
        }
    }

    async fn apply_once(&mut self) -> std::io::Result<()> {
        let links = self.sock.dump_links().await?;
        let addrs = self.sock.dump_addresses().await?;
        self.remove_retired(&links, &addrs).await?;
        // Filters before addresses: a guest's ARP for a gateway address
        // this node has just taken must not reach the other nodes.
        self.apply_filters(&links).await;
        let mut states = Vec::new();
        for g in self.desired.clone() {
            states.push(self.apply_gateway(&g, &links, &addrs).await?);
        }
        self.snap.gateways = states;
        self.apply_forwarding();
        Ok(())
    }

    async fn remove_retired(&mut self, links: &[Link], addrs: &[Addr]) -> std::io::Result<()> {
        for (bridge, a) in std::mem::take(&mut self.retired) {
            let Some(l) = links.iter().find(|l| l.name == bridge) else {
                continue;
            };
            if !has_address(addrs, l.index, a) {
                continue;
            }
            match self.sock.del_address(l.index, a).await? {
                Ok(()) => {
                    info!(bridge = %bridge, address = %a, "gateway address removed (no longer configured)")
                }
                Err(e) => {
                    warn!(bridge = %bridge, address = %a, error = %e, "cannot remove a gateway address")
                }
            }
        }
        Ok(())
    }

    async fn apply_gateway(
        &mut self,
        g: &GatewaySpec,
        links: &[Link],
        addrs: &[Addr],
    ) -> std::io::Result<GatewayState> {
        let mut st = GatewayState {
            name: g.name.clone(),
            bridge: g.bridge.clone(),
            address: g.address,
            node_address: g.node_address,
            bridge_present: false,
            bridge_up: false,
            addresses: false,
            error: None,
        };
        let Some(l) = links.iter().find(|l| l.name == g.bridge) else {
            st.error = Some(format!(
                "bridge {} does not exist (waiting for it)",
                g.bridge
            ));
            return Ok(st);
        };
        st.bridge_present = true;
        st.bridge_up = l.up;
        // The node's own address must be the primary one: if the shared
        // address came first (added by hand), take it off and put it back.
        if let Some(node) = g.node_address.filter(|n| n.addr().is_ipv4()) {
            let find = |a: IpNet| {
                addrs.iter().find(|x| {
                    x.index == l.index && x.addr == a.addr() && x.prefix_len == a.prefix_len()
                })
            };
            if let (Some(n), Some(gw)) = (find(node), find(g.address)) {
                if n.secondary && !gw.secondary && node.trunc() == g.address.trunc() {
                    warn!(bridge = %g.bridge, "the gateway address is the bridge's primary: re-adding it after the node's own");
                    if let Err(e) = self.sock.del_address(l.index, g.address).await? {
                        st.error = Some(format!("cannot re-order addresses: {e}"));
                    }
                    self.dirty = true;
                    return Ok(st);
                }
            }
        }
        let mut all = true;
        for a in wanted(g) {
            if has_address(addrs, l.index, a) {
                continue;
            }
            match self.sock.add_address(l.index, a).await? {
                Ok(()) => info!(bridge = %g.bridge, address = %a, "gateway address added"),
                Err(e) => {
                    all = false;
                    let msg = format!("cannot add {a} to {}: {e}", g.bridge);
                    if st.error.is_none() {
                        warn!(error = %msg, "gateway");
                    }
                    st.error = Some(msg);
                    self.schedule_retry();
                }
            }
        }
        st.addresses = all;
        if g.address.addr().is_ipv4() {
            let path = format!("/proc/sys/net/ipv4/conf/{}/arp_announce", g.bridge);
            if sysctl::read(&path).ok().as_deref() != Some("2") {
                if let Err(e) = sysctl::write(&path, "2") {
                    st.error = Some(e.to_string());
                }
            }
        }
        Ok(st)
    }

    fn apply_forwarding(&mut self) {
        let mut paths = vec![];
        if self.desired.iter().any(|g| g.address.addr().is_ipv4()) {
            paths.push("/proc/sys/net/ipv4/ip_forward");
        }
        if self.desired.iter().any(|g| g.address.addr().is_ipv6()) {
            paths.push("/proc/sys/net/ipv6/conf/all/forwarding");
        }
        for p in paths {
            if sysctl::read(p).ok().as_deref() != Some("1") {
                match sysctl::write(p, "1") {
                    Ok(()) => info!(sysctl = p, "forwarding on"),
                    Err(e) => error!(error = %e, "cannot turn forwarding on"),
                }
            }
        }
    }

    async fn apply_filters(&mut self, links: &[Link]) {
        let want = self.uplinks();
        let mut states = Vec::new();
        // Uplinks no longer configured lose their filter.
        let gone: Vec<String> = self
            .loaded
            .keys()
            .filter(|d| !want.contains_key(*d))
            .cloned()
            .collect();
        for dev in gone {
            self.remove_filter(&dev).await;
        }
        for (dev, hides) in want {
            let table = hide_table(&dev).map(|t| t.to_string()).unwrap_or_default();
            let mut st = UplinkState {
                name: dev.clone(),
                table,
                present: false,
                filtering: false,
                hides: hides.clone(),
                error: None,
            };
            let Some(l) = links.iter().find(|l| l.name == dev) else {
                // A chain cannot hook a missing device (before Linux 6.16):
                // the filter comes with the device.
                if self.loaded.contains_key(&dev) {
                    self.remove_filter(&dev).await;
                }
                st.error = Some("no such interface (its filter comes when it does)".into());
                states.push(st);
                continue;
            };
            st.present = true;
            let (table, body) = match (hide_table(&dev), hide_body(&dev, &hides)) {
                (Ok(t), Ok(b)) => (t, b),
                (Err(e), _) | (_, Err(e)) => {
                    st.error = Some(e.to_string());
                    states.push(st);
                    continue;
                }
            };
            let want = Loaded {
                ifindex: l.index,
                body,
                rules: 2 * hides.len(),
            };
            if self.loaded.get(&dev) == Some(&want) {
                st.filtering = true;
                states.push(st);
                continue;
            }
            match self.nft.replace(&table, &want.body).await {
                Ok(()) => {
                    info!(uplink = %dev, table = %table, "ARP/ND for the gateway dropped on the uplink");
                    self.loaded.insert(dev.clone(), want);
                    self.own_gen = watch::generation().await.ok();
                    st.filtering = true;
                }
                Err(e) => {
                    error!(uplink = %dev, error = %e, "cannot load the gateway filter");
                    st.error = Some(e.to_string());
                    self.dirty = true;
                    self.schedule_retry();
                }
            }
            states.push(st);
        }
        self.snap.uplinks = states;
    }

    async fn remove_filter(&mut self, dev: &str) {
        self.loaded.remove(dev);
        let Ok(t) = hide_table(dev) else { return };
        match self.nft.delete(&t).await {
            Ok(()) => self.own_gen = watch::generation().await.ok(),
            Err(e) => warn!(table = %t, error = %e, "cannot remove a gateway filter"),
        }
    }

    /// Removes the gateways not kept on stop, and the filters no kept
    /// gateway needs.
    async fn remove_all(&mut self) {
        let (kept, gone): (Vec<_>, Vec<_>) = std::mem::take(&mut self.desired)
            .into_iter()
            .partition(|g| g.keep_on_stop);
        self.desired = kept;
        let needed = self.uplinks();
        let devs: Vec<String> = gone
            .iter()
            .flat_map(|g| g.hide_on.iter().cloned())
            .filter(|d| !needed.contains_key(d))
            .collect();
        for dev in devs {
            self.remove_filter(&dev).await;
        }
        let links = match self.sock.dump_links().await {
            Ok(l) => l,
            Err(e) => {
                error!(error = %e, "cannot remove the gateway addresses");
                return;
            }
        };
        for g in gone {
            let Some(l) = links.iter().find(|l| l.name == g.bridge) else {
                continue;
            };
            // The shared address first: the node's own (the primary) would
            // take its secondaries with it.
            for a in wanted(&g).into_iter().rev() {
                match self.sock.del_address(l.index, a).await {
                    Ok(Ok(())) => {
                        info!(bridge = %g.bridge, address = %a, "gateway address removed")
                    }
                    Ok(Err(e)) => {
                        warn!(bridge = %g.bridge, address = %a, error = %e, "cannot remove a gateway address")
                    }
                    Err(e) => warn!(error = %e, "netlink"),
                }
            }
        }
    }
}

impl Reconciler for State {
    type Cmd = Cmd;
    type Snapshot = GatewaySnapshot;

    fn on_datagram(&mut self, buf: &[u8]) {
        if decode(buf).iter().any(|e| {
            matches!(
                e,
                Event::Link { .. } | Event::LinkDeleted { .. } | Event::Address { .. }
            )
        }) {
            self.dirty = true;
        }
    }

    fn on_overrun(&mut self) {
        self.dirty = true;
    }

    fn on_command(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Set(g) => self.set(g),
            Cmd::Touched(gen) => match (gen, self.own_gen) {
                (Some(g), Some(own)) if g <= own => {}
                (Some(_), Some(_)) => {
                    // Someone else's change: load every filter again (they
                    // are small; which one was touched does not matter).
                    let devs: Vec<String> = self.loaded.keys().cloned().collect();
                    for dev in devs {
                        if let Ok(t) = hide_table(&dev) {
                            self.forget(&dev, &t);
                        }
                    }
                }
                _ => self.check = true,
            },
        }
    }

    fn deadline(&self) -> Option<Instant> {
        self.retry_at
    }

    async fn on_deadline(&mut self) {
        self.retry_at = None;
        self.dirty = true;
    }

    async fn on_tick(&mut self) {
        self.check = true;
        self.dirty = true;
    }

    async fn apply(&mut self) {
        self.apply_now().await;
    }

    fn snapshot(&self) -> GatewaySnapshot {
        self.snap.clone()
    }

    async fn shutdown(&mut self, remove: bool) {
        if remove {
            self.remove_all().await;
        } else {
            info!("leaving the gateway addresses and filters in place");
        }
    }

    fn resync_period(&self) -> Duration {
        CHECK_PERIOD
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filter_drops_arp_for_the_gateway_only_both_ways() {
        let b = hide_body("eth1.100", &["10.5.5.254".parse().expect("ip")]).expect("body");
        assert_eq!(
            b,
            "\tchain ingress {\n\t\ttype filter hook ingress device \"eth1.100\" priority -500; policy accept;\n\
             \t\tarp saddr ip 10.5.5.254 counter drop\n\t\tarp daddr ip 10.5.5.254 counter drop\n\t}\n\
             \tchain egress {\n\t\ttype filter hook egress device \"eth1.100\" priority -500; policy accept;\n\
             \t\tarp saddr ip 10.5.5.254 counter drop\n\t\tarp daddr ip 10.5.5.254 counter drop\n\t}\n"
        );
        assert_eq!(
            hide_table("eth1.100").expect("table").to_string(),
            "netdev hagw_hide_eth1_100"
        );
        assert!(hide_body("eth1\"; flush ruleset", &[]).is_err());
    }

    #[test]
    fn the_filter_drops_nd_for_an_ipv6_gateway() {
        let b = hide_body("up0", &["2001:db8::fe".parse().expect("ip")]).expect("body");
        assert!(b.contains("ip6 saddr 2001:db8::fe icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert } counter drop"), "{b}");
        assert!(b.contains("icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert } @th,64,128 0x20010db80000000000000000000000fe counter drop"), "{b}");
    }

    #[test]
    fn the_node_address_goes_on_first() {
        let g = GatewaySpec {
            name: "gateway[0]".into(),
            bridge: "guestbr0".into(),
            address: "10.5.5.254/24".parse().expect("net"),
            node_address: Some("10.5.5.251/24".parse().expect("net")),
            hide_on: vec![],
            keep_on_stop: false,
        };
        assert_eq!(
            wanted(&g),
            vec!["10.5.5.251/24".parse::<IpNet>().expect("net"), g.address]
        );
    }
}
