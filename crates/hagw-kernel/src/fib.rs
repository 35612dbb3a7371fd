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
//!
//! # At the router's scale
//!
//! One /32 per VM makes 100k routes and more. Per prefix the task keeps one
//! table slot of 40 bytes: each owner's next-hop set and the installed one
//! are 4-byte ids of interned sets ([`NextHops`], one per distinct set, shared
//! with whoever sent it), errors live in a map of their own, and the dirty
//! queue is a flag plus a vector. A burst goes to the kernel one datagram at
//! a time, written directly ([`crate::netlink::Chunk`]); the notifications it
//! causes are dropped by a socket filter before they reach the event socket
//! (see [`crate::netlink`]); a resync reads its dump a datagram at a time.

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
    sync::Arc,
    time::Duration,
};

use hagw_table::{FastMap, Id, Interner, PrefixMap};

use ipnet::IpNet;
use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE};
use netlink_packet_route::{route::RouteType, RouteNetlinkMessage};
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use crate::{
    netlink::{
        build_delete_exact, build_route,
        events::{self, Event},
        parse_route, Chunk, KernelRoute, Nexthop, NlError, NlSocket, Request, RT_TABLE_MAIN,
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

/// Wishes per prefix: one per owner, then the route a previous run left
/// (graceful restart), which any owner's wish replaces.
const WISHES: usize = 5;
const STALE_WISH: usize = 4;

impl RouteOwner {
    /// Its wish's place in [`Entry::wishes`]: the order of preference.
    fn slot(self) -> usize {
        match self {
            RouteOwner::Bgp => 0,
            RouteOwner::Vnet => 1,
            RouteOwner::Vrrp => 2,
            RouteOwner::Static => 3,
        }
    }
}

/// A next-hop set as given to [`FibSync::set_routes`]: one allocation shared
/// by every prefix that has it.
pub type NextHops = Arc<[Nexthop]>;

pub enum Cmd {
    Set(RouteOwner, IpNet, Vec<Nexthop>),
    /// Many prefixes, one set (one UPDATE's worth).
    SetMany(RouteOwner, Vec<IpNet>, NextHops),
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
        // Our own installs need no echo: a burst of them would overrun the
        // event socket. Best effort: without the filter they are dropped
        // after reading instead (events::decode_skipping_own).
        if let Err(e) = events.drop_echoes_of(sock.portid()) {
            warn!(error = %e, "cannot filter our own route notifications");
        }
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

    /// [`FibSync::set_route`] for many prefixes with the same next hops, in
    /// one message: a BGP UPDATE's prefixes share their set, and the task
    /// keeps the set once.
    pub fn set_routes(&self, owner: RouteOwner, prefixes: Vec<IpNet>, nexthops: NextHops) {
        if !prefixes.is_empty() {
            self.h.send(Cmd::SetMany(owner, prefixes, nexthops));
        }
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

/// One prefix: ids of interned next-hop sets (none: no wish, no route).
#[derive(Debug, Default)]
struct Entry {
    /// Each owner's wish in the order of preference, then the stale route
    /// kept from a previous run. The first is the desired set; there is
    /// none when the route should not exist.
    wishes: [Option<Id>; WISHES],
    /// What we believe the kernel has.
    installed: Option<Id>,
    /// Queued in [`State::dirty`].
    dirty: bool,
    /// Found in the kernel by the resync in progress.
    seen: bool,
}

impl Entry {
    fn desired(&self) -> Option<Id> {
        self.wishes.iter().flatten().next().copied()
    }
}

enum Op {
    Replace {
        prefix: IpNet,
        /// The set written (one reference held until the answer).
        set: Id,
        excl: bool,
    },
    Delete(IpNet),
    Foreign(String),
}

struct State {
    cfg: FibConfig,
    sock: NlSocket,
    routes: PrefixMap<Entry>,
    sets: Interner<NextHops>,
    /// The last error per prefix (few: kept apart from the entries).
    errors: FastMap<IpNet, String>,
    /// Prefixes to apply; an entry's `dirty` flag keeps each once.
    dirty: Vec<IpNet>,
    /// Foreign default routes to delete (DhcpDefault::Remove).
    foreign_del: Vec<KernelRoute>,
    resync_at: Option<Instant>,
    /// The first event-socket overrun not yet followed by a resync.
    overrun_since: Option<Instant>,
    warned: HashSet<String>,
    chunk: Chunk,
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

/// Why `nh` cannot be a next hop of `prefix`, if it cannot.
fn unusable(prefix: IpNet, nh: &Nexthop) -> Option<&'static str> {
    match (prefix, nh.addr) {
        (IpNet::V6(_), IpAddr::V4(_)) => Some("IPv4 next hop for an IPv6 prefix"),
        (_, IpAddr::V6(_)) if is_link_local(&nh.addr) && nh.ifindex.is_none() => {
            Some("link-local next hop needs an interface index")
        }
        _ => None,
    }
}

/// Next hops usable for `prefix` (family, link-local needs an interface),
/// and the reasons for the others.
fn usable_nexthops(prefix: IpNet, nhs: &[Nexthop]) -> (Vec<Nexthop>, Vec<String>) {
    let mut ok = Vec::new();
    let mut errs = Vec::new();
    for nh in nhs {
        match unusable(prefix, nh) {
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

/// The next hops of a set id (none: no next hops).
fn hops_of(sets: &Interner<NextHops>, id: Option<Id>) -> &[Nexthop] {
    id.and_then(|id| sets.get(id)).map_or(&[], |s| &s[..])
}

/// Sorted, deduplicated, at most `max` (0: no limit).
fn normalized(nhs: &mut Vec<Nexthop>, max: usize) {
    nhs.sort();
    nhs.dedup();
    if max > 0 {
        nhs.truncate(max);
    }
}

impl State {
    fn new(cfg: FibConfig, sock: NlSocket) -> Self {
        State {
            cfg,
            sock,
            routes: PrefixMap::new(),
            sets: Interner::new(),
            errors: FastMap::default(),
            dirty: Vec::new(),
            foreign_del: Vec::new(),
            resync_at: None,
            overrun_since: None,
            warned: HashSet::new(),
            chunk: Chunk::new(),
        }
    }

    /// The next hops of a set id (none: no next hops).
    fn hops(&self, id: Option<Id>) -> &[Nexthop] {
        hops_of(&self.sets, id)
    }

    /// The id of `nhs` (empty: None), with one more reference.
    fn intern(&mut self, nhs: &[Nexthop]) -> Option<Id> {
        (!nhs.is_empty()).then(|| self.sets.intern_with(nhs, |s| Arc::from(s)))
    }

    /// Replaces the set an entry believes installed.
    fn set_installed(&mut self, prefix: IpNet, id: Option<Id>) {
        match self.routes.get_mut(&prefix) {
            Some(e) => {
                if let Some(old) = std::mem::replace(&mut e.installed, id) {
                    self.sets.release(old);
                }
            }
            None => {
                if let Some(id) = id {
                    self.sets.release(id);
                }
            }
        }
    }

    fn mark_dirty(&mut self, prefix: IpNet) {
        if let Some(e) = self.routes.get_mut(&prefix) {
            if !e.dirty {
                e.dirty = true;
                self.dirty.push(prefix);
            }
        }
    }

    /// Forgets an entry that has no wish, no route and no error.
    fn remove_if_idle(&mut self, prefix: IpNet) {
        if self.routes.get(&prefix).is_some_and(|e| {
            e.desired().is_none() && e.installed.is_none() && !self.errors.contains_key(&prefix)
        }) {
            self.routes.remove(&prefix);
        }
    }

    fn set_error(&mut self, prefix: IpNet, error: Option<String>) {
        if !self.routes.contains(&prefix) {
            return;
        }
        match error {
            Some(e) => {
                self.errors.insert(prefix, e);
            }
            None => {
                self.errors.remove(&prefix);
            }
        }
    }

    fn schedule_resync(&mut self, delay: Duration) {
        let at = Instant::now() + delay;
        self.resync_at = Some(self.resync_at.map_or(at, |t| t.min(at)));
    }

    /// Records `owner`'s wish for `prefix`.
    fn set(&mut self, owner: RouteOwner, prefix: IpNet, mut nexthops: Vec<Nexthop>) {
        normalized(&mut nexthops, self.cfg.max_paths);
        let id = self.intern(&nexthops);
        self.set_id(owner, prefix, id);
    }

    /// Records `owner`'s wish for each of `prefixes`: one set.
    fn set_many(&mut self, owner: RouteOwner, prefixes: Vec<IpNet>, nexthops: NextHops) {
        let max = self.cfg.max_paths;
        let ready = nexthops.windows(2).all(|w| w[0] < w[1]) && (max == 0 || nexthops.len() <= max);
        let id = if nexthops.is_empty() {
            None
        } else if ready {
            Some(self.sets.intern(nexthops))
        } else {
            let mut v = nexthops.to_vec();
            normalized(&mut v, max);
            self.intern(&v)
        };
        for p in prefixes {
            if let Some(id) = id {
                self.sets.acquire(id);
            }
            self.set_id(owner, p, id);
        }
        if let Some(id) = id {
            self.sets.release(id);
        }
    }

    /// Records `owner`'s wish `id` (whose reference it takes) for `prefix`.
    fn set_id(&mut self, owner: RouteOwner, prefix: IpNet, id: Option<Id>) {
        let prefix = prefix.trunc();
        let e = self.routes.get_or_insert_with(prefix, Entry::default);
        let old = std::mem::replace(&mut e.wishes[owner.slot()], id);
        // A wish takes over a route left by a previous run.
        let stale = e.wishes[STALE_WISH].take();
        let (want, installed) = (e.desired(), e.installed);
        for gone in [old, stale].into_iter().flatten() {
            self.sets.release(gone);
        }
        if want == installed && !self.errors.contains_key(&prefix) {
            return;
        }
        if want.is_none() && installed.is_none() {
            self.routes.remove(&prefix);
            self.errors.remove(&prefix);
            return;
        }
        self.mark_dirty(prefix);
    }

    fn handle(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Set(o, p, nhs) => self.set(o, p, nhs),
            Cmd::SetMany(o, ps, nhs) => self.set_many(o, ps, nhs),
            Cmd::PurgeStale => {
                let mut purged = Vec::new();
                for (p, e) in self.routes.iter_mut() {
                    if let Some(id) = e.wishes[STALE_WISH].take() {
                        purged.push(id);
                        if !e.dirty {
                            e.dirty = true;
                            self.dirty.push(p);
                        }
                    }
                }
                for id in purged {
                    self.sets.release(id);
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
                    p,
                    self.hops(e.installed).iter().map(|n| n.addr).collect(),
                    self.errors.get(&p).cloned(),
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
    /// prefixes are retried. The dump is read a datagram at a time.
    async fn resync(&mut self, initial: bool) -> std::io::Result<()> {
        for (_, e) in self.routes.iter_mut() {
            e.seen = false;
        }
        let mut strays = Vec::new();
        let mut req = netlink_packet_route::route::RouteMessage::default();
        req.header.address_family = netlink_packet_route::AddressFamily::Unspec;
        self.sock
            .dump_start(RouteNetlinkMessage::GetRoute(req))
            .await?;
        while let Some(msgs) = self.sock.dump_next().await? {
            for msg in msgs {
                let RouteNetlinkMessage::NewRoute(m) = msg else {
                    continue;
                };
                let Some(r) = parse_route(m) else { continue };
                if self.is_ours(&r) {
                    if !self.resync_ours(&r, initial) {
                        strays.push(r);
                    }
                } else if self.is_foreign_default(&r) {
                    self.foreign_default(r);
                }
            }
        }
        let mut missing = Vec::new();
        for (p, e) in self.routes.iter_mut() {
            if !e.seen && e.installed.is_some() {
                debug!(prefix = %p, "route missing from the kernel");
                missing.extend(e.installed.take());
            }
            if e.desired().is_some()
                && (e.installed.is_none() || self.errors.contains_key(&p))
                && !e.dirty
            {
                e.dirty = true;
                self.dirty.push(p);
            }
        }
        for id in missing {
            self.sets.release(id);
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

    /// One of our routes found by a resync: false if it is a stray.
    fn resync_ours(&mut self, r: &KernelRoute, initial: bool) -> bool {
        if r.metric != self.cfg.metric {
            return false;
        }
        match self.routes.get(&r.prefix) {
            Some(e) if e.desired().is_some() => {
                let differs =
                    e.installed.is_none() || !same_nexthops(self.hops(e.installed), &r.nexthops);
                if differs {
                    let id = self.intern(&r.nexthops);
                    self.set_installed(r.prefix, id);
                    self.mark_dirty(r.prefix);
                }
                if let Some(e) = self.routes.get_mut(&r.prefix) {
                    e.seen = true;
                }
                true
            }
            None if initial && self.cfg.keep_stale => {
                let Some(id) = self.intern(&r.nexthops) else {
                    return false;
                };
                self.sets.acquire(id);
                let mut e = Entry {
                    installed: Some(id),
                    seen: true,
                    ..Entry::default()
                };
                e.wishes[STALE_WISH] = Some(id);
                self.routes.insert(r.prefix, e);
                true
            }
            _ => false,
        }
    }

    /// Applies all dirty prefixes and pending foreign deletions.
    async fn apply(&mut self) {
        for _round in 0..4 {
            if self.dirty.is_empty() && self.foreign_del.is_empty() {
                break;
            }
            if let Err(e) = self.apply_once().await {
                error!(error = %e, "netlink request socket failed; retrying in 1 s");
                self.schedule_resync(Duration::from_secs(1));
                break;
            }
        }
        // A burst's queue is not kept for the next.
        if self.dirty.is_empty() && self.dirty.capacity() > 4096 {
            self.dirty = Vec::new();
        }
    }

    /// What applying `p` needs: an op written into the chunk, or nothing.
    fn plan(&mut self, p: IpNet, ops: &mut Vec<Op>, verrs: &mut HashMap<IpNet, Vec<String>>) {
        let (table, proto, metric) = (self.cfg.table, self.cfg.protocol, self.cfg.metric);
        let Some(e) = self.routes.get_mut(&p) else {
            return;
        };
        if !std::mem::take(&mut e.dirty) {
            return;
        }
        let (desired, installed) = (e.desired(), e.installed);
        let want = hops_of(&self.sets, desired);
        // Nearly always every next hop is usable: no copy then.
        let (usable, errs, usable_id) = if want.iter().all(|n| unusable(p, n).is_none()) {
            (None, Vec::new(), desired)
        } else {
            let (ok, errs) = usable_nexthops(p, want);
            (Some(ok), errs, None)
        };
        let usable_hops = usable.as_deref().unwrap_or(want);
        if usable_hops.is_empty() {
            if !errs.is_empty() {
                verrs.insert(p, errs);
            }
            if installed.is_none() {
                let err = verrs.remove(&p).and_then(join_errors);
                self.set_error(p, err);
                self.remove_if_idle(p);
            } else {
                self.chunk.push_route(p, table, proto, metric, &[], 0);
                ops.push(Op::Delete(p));
            }
            return;
        }
        if same_nexthops(usable_hops, hops_of(&self.sets, installed))
            && usable_hops.len() == want.len()
        {
            self.set_error(p, join_errors(errs));
            return;
        }
        if !errs.is_empty() {
            verrs.insert(p, errs);
        }
        // The set to install, held by the op until the kernel answers.
        let set = match (usable_id, usable) {
            (Some(id), _) => {
                self.sets.acquire(id);
                id
            }
            (None, Some(ok)) => match self.intern(&ok) {
                Some(id) => id,
                None => return,
            },
            (None, None) => return,
        };
        let excl = installed.is_none();
        let flags = NLM_F_CREATE | if excl { NLM_F_EXCL } else { NLM_F_REPLACE };
        self.chunk.push_route(
            p,
            table,
            proto,
            metric,
            hops_of(&self.sets, Some(set)),
            flags,
        );
        ops.push(Op::Replace {
            prefix: p,
            set,
            excl,
        });
    }

    async fn apply_once(&mut self) -> std::io::Result<()> {
        let prefixes = std::mem::take(&mut self.dirty);
        let mut verrs = HashMap::new();
        let mut exists = Vec::new();
        let mut slow = Vec::new();
        let mut ops = Vec::new();
        let mut next = prefixes.into_iter();
        let mut foreign = std::mem::take(&mut self.foreign_del).into_iter();
        loop {
            // One datagram's worth at a time: a burst never holds more.
            while !self.chunk.is_full() {
                if let Some(p) = next.next() {
                    self.plan(p, &mut ops, &mut verrs);
                } else if let Some(r) = foreign.next() {
                    self.chunk
                        .push(RouteNetlinkMessage::DelRoute(build_delete_exact(&r)), 0);
                    ops.push(Op::Foreign(r.to_string()));
                } else {
                    break;
                }
            }
            if ops.is_empty() {
                break;
            }
            let t0 = std::time::Instant::now();
            let n = ops.len();
            let results = match self.sock.send_chunk(&mut self.chunk).await {
                Ok(r) => r,
                Err(e) => {
                    // Unsent: apply those again later.
                    for op in ops.drain(..) {
                        self.abandon(op);
                    }
                    for p in next {
                        // Not planned yet: still flagged.
                        if self.routes.get(&p).is_some_and(|e| e.dirty) {
                            self.dirty.push(p);
                        }
                    }
                    self.foreign_del.extend(foreign);
                    return Err(e);
                }
            };
            debug!(requests = n, elapsed = ?t0.elapsed(), "applied batch");
            for (op, res) in ops.drain(..).zip(results) {
                self.on_result(op, res, &mut verrs, &mut exists, &mut slow);
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

    /// An op whose request was never answered: its prefix is applied again.
    fn abandon(&mut self, op: Op) {
        match op {
            Op::Replace { prefix, set, .. } => {
                self.sets.release(set);
                self.mark_dirty(prefix);
            }
            Op::Delete(prefix) => self.mark_dirty(prefix),
            Op::Foreign(_) => {}
        }
    }

    fn on_result(
        &mut self,
        op: Op,
        res: Result<(), NlError>,
        verrs: &mut HashMap<IpNet, Vec<String>>,
        exists: &mut Vec<IpNet>,
        slow: &mut Vec<IpNet>,
    ) {
        match op {
            Op::Replace { prefix, set, excl } => match res {
                Ok(()) => {
                    self.set_installed(prefix, Some(set));
                    let err = verrs.remove(&prefix).and_then(join_errors);
                    self.set_error(prefix, err);
                }
                Err(e) => {
                    self.sets.release(set);
                    if e.errno == nix::libc::EEXIST && excl {
                        exists.push(prefix);
                    } else if e.errno == nix::libc::ENOBUFS || e.errno == nix::libc::ETIMEDOUT {
                        self.mark_dirty(prefix);
                        self.schedule_resync(Duration::from_millis(200));
                    } else {
                        slow.push(prefix);
                    }
                }
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

    fn deleted(&mut self, prefix: IpNet, verr: Option<Vec<String>>) {
        let err = verr.and_then(join_errors);
        self.set_installed(prefix, None);
        self.set_error(prefix, err);
        self.remove_if_idle(prefix);
    }

    /// An exclusive create found a route at our metric: if it is ours, adopt
    /// it (and replace it next round); if someone else's, leave it and
    /// record a conflict.
    async fn resolve_exists(&mut self, prefixes: Vec<IpNet>) -> std::io::Result<()> {
        let mut found: HashMap<IpNet, KernelRoute> = HashMap::new();
        let want: HashSet<IpNet> = prefixes.iter().copied().collect();
        let mut req = netlink_packet_route::route::RouteMessage::default();
        req.header.address_family = netlink_packet_route::AddressFamily::Unspec;
        self.sock
            .dump_start(RouteNetlinkMessage::GetRoute(req))
            .await?;
        while let Some(msgs) = self.sock.dump_next().await? {
            for m in msgs {
                let RouteNetlinkMessage::NewRoute(m) = m else {
                    continue;
                };
                let Some(r) = parse_route(m) else { continue };
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
                    let id = match self.routes.get(&p) {
                        Some(_) if r.nexthops.is_empty() => {
                            let d = self.routes.get(&p).and_then(Entry::desired);
                            if let Some(d) = d {
                                self.sets.acquire(d);
                            }
                            d
                        }
                        Some(_) => self.intern(&r.nexthops),
                        None => None,
                    };
                    self.set_installed(p, id);
                    self.mark_dirty(p);
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
                    self.mark_dirty(p);
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
        let (desired, _) = usable_nexthops(p, self.hops(e.desired()));
        let mut kernel_has = self.hops(e.installed).to_vec();
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
            let mut chunk = Chunk::new();
            chunk.push_route(p, table, proto, metric, &[], 0);
            match self.sock.send_chunk(&mut chunk).await?.pop() {
                Some(Ok(())) | None => kernel_has.clear(),
                Some(Err(e)) if e.errno == nix::libc::ESRCH => kernel_has.clear(),
                Some(Err(e)) => errs.push(format!("delete: {e}")),
            }
        }
        let err = join_errors(errs);
        if let Some(err) = &err {
            debug!(prefix = %p, installed = good.len(), error = %err, "route installed partially");
        }
        let id = self.intern(&kernel_has);
        self.set_installed(p, id);
        self.set_error(p, err);
        Ok(())
    }

    fn on_event(&mut self, ev: Event) {
        match ev {
            Event::RouteDeleted(r) if self.is_ours(&r) && r.metric == self.cfg.metric => {
                if self
                    .routes
                    .get(&r.prefix)
                    .is_some_and(|e| e.desired().is_some())
                {
                    debug!(prefix = %r.prefix, "hagw route deleted behind our back");
                    self.set_installed(r.prefix, None);
                    self.mark_dirty(r.prefix);
                }
            }
            Event::RouteAdded(r) if self.is_foreign_default(&r) => {
                self.foreign_default(r);
                if !self.errors.is_empty() {
                    self.schedule_resync(EVENT_RESYNC_DELAY);
                }
            }
            Event::RouteAdded(r) if r.protocol != self.cfg.protocol => {
                // A new connected route may make a failed next hop usable.
                if !self.errors.is_empty() {
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
            .filter(|(_, e)| e.installed.is_some())
            .map(|(p, _)| p)
            .collect();
        let mut failed = None;
        for part in prefixes.chunks(512) {
            for p in part {
                self.chunk.push_route(*p, table, proto, metric, &[], 0);
            }
            match self.sock.send_chunk(&mut self.chunk).await {
                Ok(res) => {
                    for (p, r) in part.iter().zip(res) {
                        if let Err(e) = r {
                            if e.errno != nix::libc::ESRCH {
                                warn!(prefix = %p, error = %e, "cannot remove route at shutdown");
                            }
                        }
                    }
                }
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        match failed {
            None => info!(count = prefixes.len(), "removed hagw routes at shutdown"),
            Some(e) => error!(error = %e, "cannot remove routes at shutdown"),
        }
        self.routes.clear();
        self.errors.clear();
    }
}

impl Reconciler for State {
    type Cmd = Cmd;
    type Snapshot = Vec<SnapshotEntry>;

    fn on_datagram(&mut self, buf: &[u8]) {
        // Our own additions are filtered in the kernel (drop_echoes_of); if
        // the filter is missing they are dropped here, before parsing.
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

#[cfg(test)]
mod tests {
    use super::*;

    /// What a /32 costs in the table is its slot: no allocation of its own.
    #[test]
    fn an_entry_is_small() {
        assert!(
            std::mem::size_of::<Entry>() <= 28,
            "{}",
            std::mem::size_of::<Entry>()
        );
    }
}
