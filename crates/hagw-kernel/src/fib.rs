//! FibSync: the reconciler that makes the kernel FIB match hagw's desired
//! routes and keeps it matching.
//!
//! A background task (spawned on the current tokio runtime) owns two netlink
//! sockets: a request socket (batched, see [`crate::netlink`]) and an event
//! socket. [`FibSync`] is a cheap, cloneable handle sending commands to it.
//!
//! The task keeps, per prefix, the *desired* next hops and what it believes is
//! *installed*. It converges by:
//! * applying changed prefixes in batches (a burst of `set_route` calls is
//!   coalesced, then sent many requests per datagram);
//! * reacting to events: a hagw route deleted behind its back is re-added at
//!   once; link and address changes trigger a resync (dump + compare) ~50 ms
//!   later; foreign default routes are removed in [`DhcpDefault::Remove`] mode;
//! * a periodic safety resync ([`RESYNC_PERIOD`]).
//!
//! A next hop that the kernel refuses (not on-link, device down...) does not
//! stop the others: the route is installed with the next hops that work, the
//! error is recorded for the prefix (see [`FibSync::snapshot`]) and retried on
//! the next link/address event or resync.

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
    time::Duration,
};

use ipnet::IpNet;
use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE};
use netlink_packet_route::{route::RouteType, RouteNetlinkMessage};
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use crate::{
    netlink::{
        build_delete, build_delete_exact, build_route,
        events::{self, Event},
        parse_route, KernelRoute, Nexthop, NlError, NlSocket, Request, RT_TABLE_MAIN,
    },
    reconcile::{self, Handle, Reconciler},
    KernelError, RTPROT_HAGW,
};

/// Period of the safety resync (full dump and compare).
pub const RESYNC_PERIOD: Duration = Duration::from_secs(30);
/// Delay between a link/address event and the resync it triggers (coalesces
/// event storms).
pub const EVENT_RESYNC_DELAY: Duration = Duration::from_millis(50);
/// After an event-socket overrun, resync once the events have been quiet this
/// long: our own bursts (100k routes) overrun it again and again, and a full
/// dump after each overrun would cost more than the burst itself.
const OVERRUN_SETTLE: Duration = Duration::from_millis(300);
/// ...but never later than this after the first overrun.
const OVERRUN_MAX_WAIT: Duration = Duration::from_secs(2);

/// Metric of hagw's routes unless configured: below a DHCP client's usual
/// 100+ (and above a hand-written static's 0), so hagw's default wins.
pub const DEFAULT_METRIC: u32 = 20;

/// What to do with default routes of other protocols (DHCP clients,
/// systemd-networkd, router advertisements) in the main table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DhcpDefault {
    /// Leave them; hagw's default wins by its lower metric. A warning names
    /// any other default whose metric is <= hagw's.
    #[default]
    Outrank,
    /// Delete them, and delete them again whenever they reappear.
    Remove,
    /// Do nothing.
    Keep,
}

/// A static route installed (and kept installed) by hagw with its own
/// protocol, e.g. a supernet via the subnet gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticRoute {
    pub prefix: IpNet,
    pub via: IpAddr,
}

/// Configuration of [`FibSync`].
#[derive(Debug, Clone)]
pub struct FibConfig {
    /// Routing table (254 = main).
    pub table: u32,
    /// Metric (priority) of hagw's routes.
    pub metric: u32,
    /// Route protocol hagw's routes carry ([`RTPROT_HAGW`]).
    pub protocol: u8,
    pub dhcp_default: DhcpDefault,
    /// Static routes, installed at start and kept installed.
    pub statics: Vec<StaticRoute>,
    /// Most next hops per route (0 = no limit).
    pub max_paths: usize,
    /// Graceful restart: keep hagw routes left by a previous run at start,
    /// until [`FibSync::purge_stale`] (or a `set_route` taking the prefix over).
    pub keep_stale: bool,
}

impl Default for FibConfig {
    fn default() -> Self {
        FibConfig {
            table: RT_TABLE_MAIN,
            metric: DEFAULT_METRIC,
            protocol: RTPROT_HAGW,
            dhcp_default: DhcpDefault::Outrank,
            statics: Vec::new(),
            max_paths: 16,
            keep_stale: false,
        }
    }
}

/// One line of [`FibSync::snapshot`]: prefix, next hops believed installed,
/// last error.
pub type SnapshotEntry = (IpNet, Vec<IpAddr>, Option<String>);

/// Who wants a route. Several owners may want the same prefix: the first
/// in this order with next hops wins, so a dynamic source beats a static one
/// (a configured static is the fallback for when BGP has nothing) and each
/// feature can withdraw its own wish without erasing another's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RouteOwner {
    /// BGP best paths (the RIB's multipath sets).
    Bgp,
    /// Virtual networks (the VMs behind a host's bridges).
    Vnet,
    /// A VRRP instance while master.
    Vrrp,
    /// `[[kernel.static]]`.
    Static,
}

pub enum Cmd {
    Set(RouteOwner, IpNet, Vec<Nexthop>),
    PurgeStale,
}

/// A handle to a background task (spawned on the current tokio runtime)
/// that owns the netlink sockets and keeps the kernel FIB in sync.
#[derive(Clone, Debug)]
pub struct FibSync {
    h: Handle<Cmd, Vec<SnapshotEntry>>,
}

impl FibSync {
    /// Opens the sockets in the calling thread's network namespace, removes
    /// leftovers of hagw's protocol from a crashed run (unless
    /// `cfg.keep_stale`), installs the statics, and spawns the task.
    ///
    /// hagw writes RTA_MULTIPATH routes, never nexthop objects (see
    /// [`crate::netlink`]), so there are no nexthop objects to clean up.
    pub async fn start(cfg: FibConfig) -> Result<FibSync, KernelError> {
        let events = events::open()?;
        let sock = NlSocket::open(0)?;
        let mut st = State::new(cfg, sock);
        for s in st.cfg.statics.clone() {
            st.set(RouteOwner::Static, s.prefix, vec![Nexthop::new(s.via)]);
        }
        st.resync(true)
            .await
            .map_err(|source| KernelError::Socket {
                op: "initial route dump",
                source,
            })?;
        st.apply().await;
        Ok(FibSync {
            h: reconcile::spawn(st, Some(events)),
        })
    }

    /// Sets the next hops `owner` wants for `prefix`; an empty vec withdraws
    /// its wish (the route goes, or falls back to another owner's). Cheap:
    /// the task coalesces bursts. Next hops are sorted, deduplicated and
    /// truncated to `max_paths`.
    pub fn set_route(&self, owner: RouteOwner, prefix: IpNet, nexthops: Vec<Nexthop>) {
        self.h.send(Cmd::Set(owner, prefix, nexthops));
    }

    /// What the task believes is in the kernel: prefix, installed next hops,
    /// last error. Pending changes are applied first.
    pub async fn snapshot(&self) -> Vec<SnapshotEntry> {
        self.h.snapshot().await
    }

    /// Deletes hagw routes kept from a previous run (`keep_stale`) that no
    /// `set_route` has taken over.
    pub fn purge_stale(&self) {
        self.h.send(Cmd::PurgeStale);
    }

    /// Stops the task after applying pending changes; with `remove_routes`,
    /// deletes every route it installed first.
    pub async fn shutdown(&self, remove_routes: bool) {
        self.h.shutdown(remove_routes).await
    }
}

#[derive(Debug, Default)]
struct Entry {
    /// Every owner's wish, most preferred first (empty sets are not kept).
    owners: Vec<(RouteOwner, Vec<Nexthop>)>,
    /// The first owner's next hops: sorted, deduplicated, truncated. Empty:
    /// the route should not exist.
    desired: Vec<Nexthop>,
    /// What we believe the kernel has (empty: no route of ours).
    installed: Vec<Nexthop>,
    error: Option<String>,
    /// Left by a previous run, kept for graceful restart.
    stale: bool,
}

enum Op {
    Replace {
        prefix: IpNet,
        nexthops: Vec<Nexthop>,
        excl: bool,
    },
    Delete(IpNet),
    Foreign(String),
}

struct State {
    cfg: FibConfig,
    sock: NlSocket,
    routes: HashMap<IpNet, Entry>,
    dirty: HashSet<IpNet>,
    errored: HashSet<IpNet>,
    /// Foreign default routes to delete (DhcpDefault::Remove).
    foreign_del: Vec<KernelRoute>,
    resync_at: Option<Instant>,
    /// The first event-socket overrun not yet followed by a resync.
    overrun_since: Option<Instant>,
    warned: HashSet<String>,
}

/// Errors worth remembering per next hop within one apply pass (the next hop
/// itself is unusable, whatever the prefix).
fn nexthop_errno(e: &NlError) -> bool {
    use nix::libc::*;
    matches!(e.errno, ENETUNREACH | EHOSTUNREACH | ENETDOWN | ENODEV)
        || (e.errno == EINVAL
            && e.msg
                .as_deref()
                .is_some_and(|m| m.contains("gateway") || m.contains("Nexthop")))
}

fn is_link_local(a: &IpAddr) -> bool {
    match a {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
    }
}

/// Next hops usable for `prefix` (family, link-local needs an interface),
/// and the reasons for the others.
fn usable_nexthops(prefix: IpNet, nhs: &[Nexthop]) -> (Vec<Nexthop>, Vec<String>) {
    let mut ok = Vec::new();
    let mut errs = Vec::new();
    for nh in nhs {
        let reason = match (prefix, nh.addr) {
            (IpNet::V6(_), IpAddr::V4(_)) => Some("IPv4 next hop for an IPv6 prefix"),
            (_, IpAddr::V6(_)) if is_link_local(&nh.addr) && nh.ifindex.is_none() => {
                Some("link-local next hop needs an interface index")
            }
            _ => None,
        };
        match reason {
            Some(r) => errs.push(
                KernelError::InvalidNexthop {
                    prefix,
                    nexthop: nh.addr,
                    reason: r,
                }
                .to_string(),
            ),
            None => ok.push(*nh),
        }
    }
    (ok, errs)
}

fn same_nexthops(ours: &[Nexthop], kernel: &[Nexthop]) -> bool {
    ours.len() == kernel.len() && ours.iter().all(|o| kernel.iter().any(|k| o.matches(k)))
}

fn join_errors(errs: Vec<String>) -> Option<String> {
    (!errs.is_empty()).then(|| errs.join("; "))
}

impl State {
    fn new(cfg: FibConfig, sock: NlSocket) -> Self {
        State {
            cfg,
            sock,
            routes: HashMap::new(),
            dirty: HashSet::new(),
            errored: HashSet::new(),
            foreign_del: Vec::new(),
            resync_at: None,
            overrun_since: None,
            warned: HashSet::new(),
        }
    }

    fn set_error(&mut self, prefix: IpNet, error: Option<String>) {
        if let Some(e) = self.routes.get_mut(&prefix) {
            if error.is_some() {
                self.errored.insert(prefix);
            } else {
                self.errored.remove(&prefix);
            }
            e.error = error;
        }
    }

    fn schedule_resync(&mut self, delay: Duration) {
        let at = Instant::now() + delay;
        self.resync_at = Some(self.resync_at.map_or(at, |t| t.min(at)));
    }

    /// Records `owner`'s wish for `prefix`.
    fn set(&mut self, owner: RouteOwner, prefix: IpNet, mut nexthops: Vec<Nexthop>) {
        let prefix = prefix.trunc();
        nexthops.sort();
        nexthops.dedup();
        if self.cfg.max_paths > 0 {
            nexthops.truncate(self.cfg.max_paths);
        }
        let e = self.routes.entry(prefix).or_default();
        e.stale = false;
        match e.owners.iter().position(|(o, _)| *o == owner) {
            Some(i) if nexthops.is_empty() => {
                e.owners.remove(i);
            }
            Some(i) => e.owners[i].1 = nexthops,
            None if nexthops.is_empty() => {}
            None => {
                e.owners.push((owner, nexthops));
                e.owners.sort_by_key(|(o, _)| *o);
            }
        }
        let want = e.owners.first().map(|(_, n)| n.as_slice()).unwrap_or(&[]);
        if e.desired == want && e.installed == want && e.error.is_none() {
            return;
        }
        if want.is_empty() && e.installed.is_empty() {
            self.routes.remove(&prefix);
            self.errored.remove(&prefix);
            return;
        }
        e.desired = want.to_vec();
        self.dirty.insert(prefix);
    }

    fn handle(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Set(o, p, nhs) => self.set(o, p, nhs),
            Cmd::PurgeStale => {
                for (p, e) in &mut self.routes {
                    if e.stale {
                        e.stale = false;
                        e.desired.clear();
                        self.dirty.insert(*p);
                    }
                }
            }
        }
    }

    fn snapshot(&self) -> Vec<SnapshotEntry> {
        let mut v: Vec<SnapshotEntry> = self
            .routes
            .iter()
            .map(|(p, e)| {
                (
                    *p,
                    e.installed.iter().map(|n| n.addr).collect(),
                    e.error.clone(),
                )
            })
            .collect();
        v.sort_by_key(|e| e.0);
        v
    }

    fn is_ours(&self, r: &KernelRoute) -> bool {
        r.protocol == self.cfg.protocol && r.table == self.cfg.table
    }

    fn is_foreign_default(&self, r: &KernelRoute) -> bool {
        r.protocol != self.cfg.protocol
            && r.prefix.prefix_len() == 0
            && r.kind == RouteType::Unicast
            && (r.table == RT_TABLE_MAIN || r.table == self.cfg.table)
    }

    /// Acts on a foreign default route according to `dhcp_default`.
    fn foreign_default(&mut self, r: KernelRoute) {
        match self.cfg.dhcp_default {
            DhcpDefault::Keep => {}
            DhcpDefault::Remove => {
                if r.table == RT_TABLE_MAIN {
                    self.foreign_del.push(r);
                }
            }
            DhcpDefault::Outrank => {
                if r.metric <= self.cfg.metric {
                    let desc = r.to_string();
                    if self.warned.insert(desc.clone()) {
                        warn!(route = %desc, our_metric = self.cfg.metric,
                            "another default route has a metric <= hagw's: hagw's default does not win");
                    }
                }
            }
        }
    }

    /// Dumps the kernel routes and compares: hagw routes that differ from
    /// what we believe are re-applied, strays are deleted (kept as stale at
    /// start with `keep_stale`), foreign defaults are handled, errored
    /// prefixes are retried.
    async fn resync(&mut self, initial: bool) -> std::io::Result<()> {
        let dump = self.sock.dump_routes().await?;
        let mut seen = HashSet::new();
        let mut strays = Vec::new();
        for msg in dump {
            let Some(r) = parse_route(msg) else { continue };
            if self.is_ours(&r) {
                let keep = match self.routes.get_mut(&r.prefix) {
                    Some(e)
                        if r.metric == self.cfg.metric && (!e.desired.is_empty() || e.stale) =>
                    {
                        seen.insert(r.prefix);
                        if !same_nexthops(&e.installed, &r.nexthops) || e.installed.is_empty() {
                            e.installed = r.nexthops.clone();
                            self.dirty.insert(r.prefix);
                        }
                        true
                    }
                    None if initial && self.cfg.keep_stale && r.metric == self.cfg.metric => {
                        seen.insert(r.prefix);
                        self.routes.insert(
                            r.prefix,
                            Entry {
                                owners: Vec::new(),
                                desired: r.nexthops.clone(),
                                installed: r.nexthops.clone(),
                                error: None,
                                stale: true,
                            },
                        );
                        true
                    }
                    _ => false,
                };
                if !keep {
                    strays.push(r);
                }
            } else if self.is_foreign_default(&r) {
                self.foreign_default(r);
            }
        }
        for (p, e) in &mut self.routes {
            if !seen.contains(p) && !e.installed.is_empty() {
                debug!(prefix = %p, "route missing from the kernel");
                e.installed.clear();
            }
            if !e.desired.is_empty() && (e.installed.is_empty() || e.error.is_some()) {
                self.dirty.insert(*p);
            }
        }
        if !strays.is_empty() {
            info!(count = strays.len(), "removing stray hagw routes");
            let reqs = strays
                .iter()
                .map(|r| Request {
                    msg: RouteNetlinkMessage::DelRoute(build_delete_exact(r)),
                    flags: 0,
                })
                .collect();
            let res = self.sock.batch(reqs).await?;
            for (r, res) in strays.iter().zip(res) {
                if let Err(e) = res {
                    if e.errno != nix::libc::ESRCH {
                        warn!(route = %r, error = %e, "cannot delete stray hagw route");
                    }
                }
            }
        }
        Ok(())
    }

    /// Applies all dirty prefixes and pending foreign deletions.
    async fn apply(&mut self) {
        for _round in 0..4 {
            if self.dirty.is_empty() && self.foreign_del.is_empty() {
                return;
            }
            if let Err(e) = self.apply_once().await {
                error!(error = %e, "netlink request socket failed; retrying in 1 s");
                self.schedule_resync(Duration::from_secs(1));
                return;
            }
        }
    }

    async fn apply_once(&mut self) -> std::io::Result<()> {
        let prefixes: Vec<IpNet> = self.dirty.drain().collect();
        let (table, proto, metric) = (self.cfg.table, self.cfg.protocol, self.cfg.metric);
        let mut reqs = Vec::with_capacity(prefixes.len());
        let mut ops = Vec::with_capacity(prefixes.len());
        let mut verrs = HashMap::new();
        for p in prefixes {
            let Some(e) = self.routes.get(&p) else {
                continue;
            };
            let (usable, errs) = usable_nexthops(p, &e.desired);
            if usable.is_empty() {
                if !errs.is_empty() {
                    verrs.insert(p, errs);
                }
                if e.installed.is_empty() {
                    let err = verrs.remove(&p).and_then(join_errors);
                    self.set_error(p, err);
                    if self
                        .routes
                        .get(&p)
                        .is_some_and(|e| e.desired.is_empty() && e.error.is_none())
                    {
                        self.routes.remove(&p);
                    }
                } else {
                    reqs.push(Request {
                        msg: RouteNetlinkMessage::DelRoute(build_delete(p, table, proto, metric)),
                        flags: 0,
                    });
                    ops.push(Op::Delete(p));
                }
                continue;
            }
            if same_nexthops(&usable, &e.installed) && usable.len() == e.desired.len() {
                self.set_error(p, join_errors(errs));
                continue;
            }
            if !errs.is_empty() {
                verrs.insert(p, errs);
            }
            let excl = e.installed.is_empty();
            reqs.push(Request {
                msg: RouteNetlinkMessage::NewRoute(build_route(p, table, proto, metric, &usable)),
                flags: NLM_F_CREATE | if excl { NLM_F_EXCL } else { NLM_F_REPLACE },
            });
            ops.push(Op::Replace {
                prefix: p,
                nexthops: usable,
                excl,
            });
        }
        for r in std::mem::take(&mut self.foreign_del) {
            reqs.push(Request {
                msg: RouteNetlinkMessage::DelRoute(build_delete_exact(&r)),
                flags: 0,
            });
            ops.push(Op::Foreign(r.to_string()));
        }
        if reqs.is_empty() {
            return Ok(());
        }
        let t0 = std::time::Instant::now();
        let n = reqs.len();
        let results = self.sock.batch(reqs).await?;
        debug!(requests = n, elapsed = ?t0.elapsed(), "applied batch");

        let mut exists = Vec::new();
        let mut slow = Vec::new();
        for (op, res) in ops.into_iter().zip(results) {
            match op {
                Op::Replace {
                    prefix,
                    nexthops,
                    excl,
                } => match res {
                    Ok(()) => {
                        if let Some(e) = self.routes.get_mut(&prefix) {
                            e.installed = nexthops;
                        }
                        let err = verrs.remove(&prefix).and_then(join_errors);
                        self.set_error(prefix, err);
                    }
                    Err(e) if e.errno == nix::libc::EEXIST && excl => exists.push(prefix),
                    Err(e) if e.errno == nix::libc::ENOBUFS || e.errno == nix::libc::ETIMEDOUT => {
                        self.dirty.insert(prefix);
                        self.schedule_resync(Duration::from_millis(200));
                    }
                    Err(_) => slow.push(prefix),
                },
                Op::Delete(prefix) => match res {
                    Ok(()) => self.deleted(prefix, verrs.remove(&prefix)),
                    Err(e) if e.errno == nix::libc::ESRCH => {
                        self.deleted(prefix, verrs.remove(&prefix))
                    }
                    Err(e) => {
                        let msg = KernelError::Route {
                            op: "delete",
                            prefix,
                            errno: e.errno,
                            msg: e.to_string(),
                        };
                        warn!(error = %msg);
                        self.set_error(prefix, Some(msg.to_string()));
                    }
                },
                Op::Foreign(desc) => match res {
                    Ok(()) => info!(route = %desc, "removed foreign default route"),
                    Err(e) if e.errno == nix::libc::ESRCH => {}
                    Err(e) => {
                        warn!(route = %desc, error = %e, "cannot remove foreign default route")
                    }
                },
            }
        }
        if !exists.is_empty() {
            self.resolve_exists(exists).await?;
        }
        let mut bad = HashMap::new();
        for p in slow {
            let verr = verrs.remove(&p).unwrap_or_default();
            self.probe(p, verr, &mut bad).await?;
        }
        Ok(())
    }

    fn deleted(&mut self, prefix: IpNet, verr: Option<Vec<String>>) {
        let err = verr.and_then(join_errors);
        if let Some(e) = self.routes.get_mut(&prefix) {
            e.installed.clear();
            if e.desired.is_empty() && err.is_none() {
                self.routes.remove(&prefix);
                self.errored.remove(&prefix);
                return;
            }
        }
        self.set_error(prefix, err);
    }

    /// An exclusive create found a route at our metric: if it is ours, adopt
    /// it (and replace it next round); if someone else's, leave it and
    /// record a conflict.
    async fn resolve_exists(&mut self, prefixes: Vec<IpNet>) -> std::io::Result<()> {
        let dump = self.sock.dump_routes().await?;
        let mut found: HashMap<IpNet, KernelRoute> = HashMap::new();
        let want: HashSet<IpNet> = prefixes.iter().copied().collect();
        for m in dump {
            if let Some(r) = parse_route(m) {
                if r.table == self.cfg.table
                    && r.metric == self.cfg.metric
                    && want.contains(&r.prefix)
                {
                    let ours = r.protocol == self.cfg.protocol;
                    match found.get(&r.prefix) {
                        Some(prev) if prev.protocol == self.cfg.protocol || !ours => {}
                        _ => {
                            found.insert(r.prefix, r);
                        }
                    }
                }
            }
        }
        for p in prefixes {
            match found.remove(&p) {
                Some(r) if r.protocol == self.cfg.protocol => {
                    if let Some(e) = self.routes.get_mut(&p) {
                        e.installed = if r.nexthops.is_empty() {
                            e.desired.clone()
                        } else {
                            r.nexthops
                        };
                    }
                    self.dirty.insert(p);
                }
                Some(r) => {
                    let msg = format!(
                        "conflicts with existing route of protocol {} at the same metric: {r}",
                        r.protocol
                    );
                    warn!(prefix = %p, "{msg}");
                    self.set_error(p, Some(msg));
                }
                None => {
                    self.dirty.insert(p);
                }
            }
        }
        Ok(())
    }

    /// Slow path for a prefix whose route the kernel refused: find out which
    /// next hops work, one at a time, starting from the ones already
    /// installed (the route never disappears while it still has a good next
    /// hop), install those and record errors for the others.
    async fn probe(
        &mut self,
        p: IpNet,
        mut errs: Vec<String>,
        bad: &mut HashMap<Nexthop, NlError>,
    ) -> std::io::Result<()> {
        let (table, proto, metric) = (self.cfg.table, self.cfg.protocol, self.cfg.metric);
        let Some(e) = self.routes.get(&p) else {
            return Ok(());
        };
        let (desired, _) = usable_nexthops(p, &e.desired);
        let mut kernel_has = e.installed.clone();
        let mut good: Vec<Nexthop> = kernel_has
            .iter()
            .filter(|n| desired.contains(n))
            .copied()
            .collect();
        if !good.is_empty() && good != kernel_has {
            let req = Request {
                msg: RouteNetlinkMessage::NewRoute(build_route(p, table, proto, metric, &good)),
                flags: NLM_F_CREATE | NLM_F_REPLACE,
            };
            match self.sock.request(req).await? {
                Ok(()) => kernel_has = good.clone(),
                Err(_) => good.clear(),
            }
        }
        for nh in &desired {
            if good.contains(nh) {
                continue;
            }
            if let Some(err) = bad.get(nh) {
                errs.push(format!("via {nh}: {err}"));
                continue;
            }
            let mut cand = good.clone();
            cand.push(*nh);
            cand.sort();
            let excl = kernel_has.is_empty();
            let req = Request {
                msg: RouteNetlinkMessage::NewRoute(build_route(p, table, proto, metric, &cand)),
                flags: NLM_F_CREATE | if excl { NLM_F_EXCL } else { NLM_F_REPLACE },
            };
            match self.sock.request(req).await? {
                Ok(()) => {
                    good = cand;
                    kernel_has = good.clone();
                }
                Err(err) if err.errno == nix::libc::EEXIST && excl => {
                    // Someone's route at our metric: let resolve_exists decide.
                    return self.resolve_exists(vec![p]).await;
                }
                Err(err) => {
                    if good.is_empty() && nexthop_errno(&err) {
                        bad.insert(*nh, err.clone());
                    }
                    errs.push(format!("via {nh}: {err}"));
                }
            }
        }
        if good.is_empty() && !kernel_has.is_empty() {
            // None of the desired next hops works: do not leave the old ones.
            let req = Request {
                msg: RouteNetlinkMessage::DelRoute(build_delete(p, table, proto, metric)),
                flags: 0,
            };
            match self.sock.request(req).await? {
                Ok(()) => kernel_has.clear(),
                Err(e) if e.errno == nix::libc::ESRCH => kernel_has.clear(),
                Err(e) => errs.push(format!("delete: {e}")),
            }
        }
        let err = join_errors(errs);
        if let Some(err) = &err {
            debug!(prefix = %p, installed = good.len(), error = %err, "route installed partially");
        }
        if let Some(e) = self.routes.get_mut(&p) {
            e.installed = kernel_has;
        }
        self.set_error(p, err);
        Ok(())
    }

    fn on_event(&mut self, ev: Event) {
        match ev {
            Event::RouteDeleted(r) if self.is_ours(&r) && r.metric == self.cfg.metric => {
                if let Some(e) = self.routes.get_mut(&r.prefix) {
                    if !e.desired.is_empty() {
                        debug!(prefix = %r.prefix, "hagw route deleted behind our back");
                        e.installed.clear();
                        self.dirty.insert(r.prefix);
                    }
                }
            }
            Event::RouteAdded(r) if self.is_foreign_default(&r) => {
                self.foreign_default(r);
                if !self.errored.is_empty() {
                    self.schedule_resync(EVENT_RESYNC_DELAY);
                }
            }
            Event::RouteAdded(r) if r.protocol != self.cfg.protocol => {
                // A new connected route may make a failed next hop usable.
                if !self.errored.is_empty() {
                    self.schedule_resync(EVENT_RESYNC_DELAY);
                }
            }
            Event::RouteAdded(_) | Event::RouteDeleted(_) => {}
            Event::Neighbour { .. } => {}
            Event::Link { .. } | Event::LinkDeleted { .. } | Event::Address { .. } => {
                self.schedule_resync(EVENT_RESYNC_DELAY)
            }
            Event::Overrun => {
                debug!("event socket overrun; resyncing when the events settle");
                let now = Instant::now();
                let first = *self.overrun_since.get_or_insert(now);
                let at = (now + OVERRUN_SETTLE).min(first + OVERRUN_MAX_WAIT);
                self.resync_at = Some(self.resync_at.map_or(at, |t| t.max(at)));
            }
        }
    }

    async fn resync_logged(&mut self) {
        if let Err(e) = self.resync(false).await {
            error!(error = %e, "route resync failed");
            self.schedule_resync(Duration::from_secs(1));
        }
    }

    async fn remove_all(&mut self) {
        let (table, proto, metric) = (self.cfg.table, self.cfg.protocol, self.cfg.metric);
        let prefixes: Vec<IpNet> = self
            .routes
            .iter()
            .filter(|(_, e)| !e.installed.is_empty())
            .map(|(p, _)| *p)
            .collect();
        let reqs = prefixes
            .iter()
            .map(|p| Request {
                msg: RouteNetlinkMessage::DelRoute(build_delete(*p, table, proto, metric)),
                flags: 0,
            })
            .collect();
        match self.sock.batch(reqs).await {
            Ok(res) => {
                for (p, r) in prefixes.iter().zip(res) {
                    if let Err(e) = r {
                        if e.errno != nix::libc::ESRCH {
                            warn!(prefix = %p, error = %e, "cannot remove route at shutdown");
                        }
                    }
                }
                info!(count = prefixes.len(), "removed hagw routes at shutdown");
            }
            Err(e) => error!(error = %e, "cannot remove routes at shutdown"),
        }
        self.routes.clear();
    }
}

impl Reconciler for State {
    type Cmd = Cmd;
    type Snapshot = Vec<SnapshotEntry>;

    fn on_datagram(&mut self, buf: &[u8]) {
        // Our own additions echo back by the 100k: dropped before parsing.
        for ev in events::decode_skipping_own(buf, self.cfg.protocol) {
            self.on_event(ev);
        }
    }

    fn on_overrun(&mut self) {
        self.on_event(Event::Overrun);
    }

    fn on_command(&mut self, cmd: Cmd) {
        self.handle(cmd);
    }

    fn deadline(&self) -> Option<Instant> {
        self.resync_at
    }

    async fn on_deadline(&mut self) {
        self.resync_at = None;
        self.overrun_since = None;
        self.resync_logged().await;
    }

    async fn on_tick(&mut self) {
        self.resync_logged().await;
    }

    async fn apply(&mut self) {
        State::apply(self).await;
    }

    fn snapshot(&self) -> Vec<SnapshotEntry> {
        State::snapshot(self)
    }

    async fn shutdown(&mut self, remove: bool) {
        if remove {
            self.remove_all().await;
        }
    }

    /// Every handle dropped: pending changes go in, the routes stay.
    async fn on_orphaned(&mut self) {
        State::apply(self).await;
    }
}
