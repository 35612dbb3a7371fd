//! Connection pinning: every connection stays on the router it started on.
//!
//! Plain ECMP rehashes flows whenever the next-hop set of the default route
//! changes: when a router comes back, a share of the flows that survived on
//! the others moves to it, and its SNAT does not know them (measured in the
//! lab: ~63 of 101 surviving flows broke on `heal`). Resilient nexthop groups
//! do not help host-originated traffic (local sockets never mark buckets
//! busy). So hagw pins each connection:
//!
//! * every router R of the default route's next-hop set gets a **slot** `n`
//!   (1..=[`MarkSpace::slots`]), a routing **table** `table_base + n` holding
//!   `default via R proto 199`, and a **rule**
//!   `priority rule_priority fwmark (n << shift)/mask lookup table_base+n
//!   proto 199` (one per router, in R's address family);
//! * nftables table `inet hagw_pin` (one `nft -f -` transaction: add, delete
//!   and re-create the table, so the swap is atomic):
//!   - `postrouting` (filter, mangle priority): on a connection's first
//!     routed packet (its conntrack mark has none of our bits), look the
//!     route's next hop up (`rt ip nexthop` / `rt ip6 nexthop`) in a verdict
//!     map of the routers and set the slot into the **conntrack mark**,
//!     keeping the other bits (`ct mark set ct mark and ~mask or (n << shift)`);
//!   - `output` (type route, so a changed mark re-routes the packet) and
//!     `prerouting` (forwarded traffic): copy the slot of the conntrack mark
//!     into the **packet mark** (again only our bits), so the rule sends the
//!     packet to the router's table — the same router, whatever the
//!     multipath route hashes to now;
//! * a router leaving the set loses its rule and table at once (and its map
//!   entries): its pinned connections fall back to the multipath route. A
//!   router keeps its slot while it is present, and gets the same slot back
//!   when it returns (a remembered slot, else a slot derived from a hash of
//!   its address, so restarts tend to give the same slots).
//!
//! Marks never collide with other users': only the bits of
//! [`PinConfig::mark_mask`] (default `0xff00`) are ever written, in both the
//! conntrack mark and the packet mark; packets whose packet mark already has
//! some of those bits set by someone else are neither pinned nor re-marked.
//! The rule priority (default [`DEFAULT_RULE_PRIORITY`] = 32700) is just
//! before `main` (32766): an administrator's own rules (usually lower
//! numbers) keep precedence, and only the main table's multipath default is
//! overridden.
//!
//! What hagw owns, and removes at start (leftovers of a crashed run) and at
//! shutdown: the nftables table `inet <nft_table>`, rules of protocol
//! [`RTPROT_HAGW`](crate::RTPROT_HAGW) at `rule_priority` whose table is in
//! `table_base+1 ..= table_base+slots`, and routes of that protocol in those
//! tables. Nothing else is touched.
//!
//! The nftables table is written with the `nft` binary (`nft -f -`), which
//! must be installed; routes and rules go over rtnetlink like [`crate::fib`].
//! [`Pinning`] is a handle to a background task: [`Pinning::set_default`] never
//! blocks its caller.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    fmt::Write as _,
    net::IpAddr,
    time::Duration,
};

use ipnet::IpNet;
use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE};
use netlink_packet_route::RouteNetlinkMessage;
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use crate::{
    netlink::{
        build_delete_exact, build_route, build_rule, parse_route, parse_rule, KernelRule, Nexthop,
        NlError, NlSocket, Request, Rule,
    },
    nft::{Family, Nft, NftError, Table},
    reconcile::{self, Handle, Reconciler},
    KernelError, RTPROT_HAGW,
};

/// First routing table id minus one (router slot `n` uses `base + n`, so
/// 9001..=9255 with the default mask): below policy routing's default range
/// (`PolicyConfig::table_base` 10000: tables 10001..=75535).
pub const DEFAULT_TABLE_BASE: u32 = 9000;
/// Priority of the fwmark rules: just before `main` (32766).
pub const DEFAULT_RULE_PRIORITY: u32 = 32700;
/// Bits of the conntrack and packet marks hagw uses (255 slots).
pub const DEFAULT_MARK_MASK: u32 = 0x0000_ff00;
/// The nftables table (family `inet`).
pub const DEFAULT_NFT_TABLE: &str = "hagw_pin";
/// Retry delay after a failed operation.
const RETRY: Duration = Duration::from_secs(1);
/// A router that left needs no nft change to be unpinned (its rule is gone,
/// and a dead next hop is never chosen again): the reload, a process that
/// takes a core for ~15 ms, waits this long so it stays off the failover's
/// critical path (the FIB replace and the rule deletes of the same event).
const NFT_SETTLE_AFTER_LEAVE: Duration = Duration::from_millis(100);

/// Configuration of [`Pinning`].
#[derive(Debug, Clone)]
pub struct PinConfig {
    /// Router slot `n` uses table `table_base + n`.
    pub table_base: u32,
    /// Priority of the fwmark rules.
    pub rule_priority: u32,
    /// Contiguous bits of the marks hagw may use.
    pub mark_mask: u32,
    /// Name of the `inet` nftables table.
    pub nft_table: String,
    /// Protocol of the rules and routes ([`RTPROT_HAGW`]).
    pub protocol: u8,
    /// The `nft` program.
    pub nft: String,
    /// Graceful restart: leave the previous run's tables, rules and nft table
    /// in place (connections stay pinned) until the first next-hop set
    /// arrives; then keep each returning router's slot and remove the rest.
    pub adopt: bool,
}

impl Default for PinConfig {
    fn default() -> Self {
        PinConfig {
            table_base: DEFAULT_TABLE_BASE,
            rule_priority: DEFAULT_RULE_PRIORITY,
            mark_mask: DEFAULT_MARK_MASK,
            nft_table: DEFAULT_NFT_TABLE.to_string(),
            protocol: RTPROT_HAGW,
            nft: "nft".to_string(),
            adopt: false,
        }
    }
}

/// Errors of [`Pinning::start`].
#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error("mark mask {0:#x} must be a non-zero run of contiguous bits")]
    Mask(u32),
    #[error("table base {base} + {slots} slots overflows the table ids (or hits 253..=255)")]
    Tables { base: u32, slots: u32 },
    #[error("nft table name {0:?}: use letters, digits and '_'")]
    TableName(String),
    #[error(transparent)]
    Kernel(#[from] KernelError),
    #[error("netlink: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Nft(#[from] NftError),
}

/// The mark bits hagw uses: slot `n` is the value `n << shift` inside `mask`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MarkSpace {
    mask: u32,
    shift: u32,
}

impl MarkSpace {
    /// `None` unless `mask` is a non-zero run of contiguous bits.
    pub fn new(mask: u32) -> Option<MarkSpace> {
        if mask == 0 {
            return None;
        }
        let shift = mask.trailing_zeros();
        let run = mask >> shift;
        (run & run.wrapping_add(1) == 0).then_some(MarkSpace { mask, shift })
    }

    pub fn mask(&self) -> u32 {
        self.mask
    }

    /// The highest slot (slots are `1..=slots()`; 0 means "not pinned").
    pub fn slots(&self) -> u32 {
        self.mask >> self.shift
    }

    /// The mark value of `slot` (only bits inside the mask).
    pub fn mark(&self, slot: u32) -> u32 {
        (slot << self.shift) & self.mask
    }

    /// The slot a mark carries (0: none).
    pub fn slot_of(&self, mark: u32) -> u32 {
        (mark & self.mask) >> self.shift
    }

    /// What the nftables rules do to a mark: our bits become `slot`'s, the
    /// others are kept.
    pub fn set(&self, current: u32, slot: u32) -> u32 {
        (current & !self.mask) | self.mark(slot)
    }
}

/// One router of [`Pinning::snapshot`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinnedRouter {
    pub nexthop: Nexthop,
    pub slot: u32,
    pub table: u32,
    /// The mark value (inside the mask).
    pub mark: u32,
    /// Table route, rule and nft entries are all in place.
    pub active: bool,
    pub error: Option<String>,
}

/// The next hops of a default route (its family is the prefix's).
pub struct Cmd(IpNet, Vec<Nexthop>);

/// A handle to the pinning task (spawned on the current tokio runtime).
#[derive(Clone, Debug)]
pub struct Pinning {
    h: Handle<Cmd, Vec<PinnedRouter>>,
}

impl Pinning {
    /// Checks the config, removes leftovers of a previous run (nft table,
    /// rules, tables; the routers' slots are remembered so connections
    /// pinned by that run keep their router), and spawns the task. Runs in
    /// the calling thread's network namespace.
    pub async fn start(cfg: PinConfig) -> Result<Pinning, PinError> {
        let space = MarkSpace::new(cfg.mark_mask).ok_or(PinError::Mask(cfg.mark_mask))?;
        let last = cfg.table_base.checked_add(space.slots());
        let reserved = |t: u32| (253..=255).contains(&t) || t == 0;
        if last.is_none_or(|l| (cfg.table_base + 1..=l).any(reserved)) {
            return Err(PinError::Tables {
                base: cfg.table_base,
                slots: space.slots(),
            });
        }
        let nft_table = Table::new(Family::Inet, &cfg.nft_table)
            .map_err(|_| PinError::TableName(cfg.nft_table.clone()))?;
        let nft = Nft::new(&cfg.nft);
        let sock = NlSocket::open(0)?;
        let mut st = State {
            slots: Slots::new(space),
            space,
            cfg,
            sock,
            desired: BTreeMap::new(),
            installed: BTreeMap::new(),
            nft,
            nft_table,
            nft_loaded: None,
            nft_routers: BTreeSet::new(),
            nft_due: None,
            retry_at: None,
            adopting: false,
        };
        if st.cfg.adopt {
            st.remember_slots().await?;
            st.adopting = true;
        } else {
            st.cleanup(true).await?;
            st.nft_remove().await?;
            st.apply().await;
        }
        Ok(Pinning {
            h: reconcile::spawn(st, None),
        })
    }

    /// The next hops of the default route `default` (0.0.0.0/0 or ::/0;
    /// other prefixes are ignored). Never blocks; bursts are coalesced.
    pub fn set_default(&self, default: IpNet, nexthops: Vec<Nexthop>) {
        if default.prefix_len() == 0 {
            self.h.send(Cmd(default, nexthops));
        }
    }

    /// The routers and their slots, after pending changes are applied.
    pub async fn snapshot(&self) -> Vec<PinnedRouter> {
        self.h.snapshot().await
    }

    /// Removes everything (nft table, rules, tables) and stops the task.
    pub async fn shutdown(&self) {
        self.h.shutdown(true).await
    }
}

/// Slot allocation: a router keeps its slot while present; a returning
/// router gets its old slot back if free; a new one gets a slot derived from
/// its address (FNV-1a, linear probing), avoiding slots remembered for
/// absent routers while others are free.
struct Slots {
    space: MarkSpace,
    current: BTreeMap<Nexthop, u32>,
    remembered: HashMap<Nexthop, u32>,
}

impl Slots {
    fn new(space: MarkSpace) -> Slots {
        Slots {
            space,
            current: BTreeMap::new(),
            remembered: HashMap::new(),
        }
    }

    fn preferred(&self, nh: &Nexthop) -> u32 {
        let mut h: u32 = 0x811c_9dc5;
        let bytes = match nh.addr {
            IpAddr::V4(a) => a.octets().to_vec(),
            IpAddr::V6(a) => a.octets().to_vec(),
        };
        for b in bytes {
            h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
        }
        1 + h % self.space.slots()
    }

    fn assign(&mut self, nh: &Nexthop) -> Option<u32> {
        if let Some(s) = self.current.get(nh) {
            return Some(*s);
        }
        let taken: BTreeSet<u32> = self.current.values().copied().collect();
        let others: BTreeSet<u32> = self
            .remembered
            .iter()
            .filter(|(n, _)| *n != nh)
            .map(|(_, s)| *s)
            .collect();
        let n = self.space.slots();
        let start = self.preferred(nh);
        let probe = |avoid: &BTreeSet<u32>| {
            (0..n)
                .map(|i| 1 + (start - 1 + i) % n)
                .find(|s| !taken.contains(s) && !avoid.contains(s))
        };
        let slot = self
            .remembered
            .get(nh)
            .copied()
            .filter(|s| !taken.contains(s))
            .or_else(|| probe(&others))
            .or_else(|| probe(&BTreeSet::new()))?;
        self.current.insert(*nh, slot);
        Some(slot)
    }

    fn release(&mut self, nh: &Nexthop) {
        if let Some(s) = self.current.remove(nh) {
            self.remembered.insert(*nh, s);
        }
    }
}

#[derive(Debug)]
struct Installed {
    slot: u32,
    route: bool,
    rule: bool,
    error: Option<String>,
}

struct State {
    cfg: PinConfig,
    space: MarkSpace,
    sock: NlSocket,
    slots: Slots,
    /// Desired next hops per family (false: IPv4, true: IPv6).
    desired: BTreeMap<bool, Vec<Nexthop>>,
    installed: BTreeMap<Nexthop, Installed>,
    nft: Nft,
    nft_table: Table,
    /// The ruleset last loaded successfully, and for which routers.
    nft_loaded: Option<String>,
    nft_routers: BTreeSet<(Nexthop, u32)>,
    /// A deferred reload (routers only left) is due then.
    nft_due: Option<Instant>,
    retry_at: Option<Instant>,
    /// Adopting a previous run's state: touch nothing until the first Set.
    adopting: bool,
}

fn default_of(nh: &Nexthop) -> IpNet {
    match nh.addr {
        IpAddr::V4(_) => IpNet::V4(Default::default()),
        IpAddr::V6(_) => IpNet::V6(Default::default()),
    }
}

/// The pinning rule of the router in `slot`.
fn pin_rule(v6: bool, space: MarkSpace, slot: u32, base: u32, prio: u32) -> Rule {
    Rule::fwmark(v6, space.mark(slot), space.mask(), base + slot, prio)
}

/// The nftables script for the active routers (`(next hop, slot)`): one
/// transaction that creates, deletes and re-creates the table.
pub fn ruleset(table: &Table, space: MarkSpace, routers: &[(Nexthop, u32)]) -> String {
    table.replace_script(&ruleset_body(space, routers))
}

/// The inside of the pinning table (see [`ruleset`]).
fn ruleset_body(space: MarkSpace, routers: &[(Nexthop, u32)]) -> String {
    let mask = space.mask();
    let keep = !mask;
    let mut s = String::new();
    let slots: BTreeSet<u32> = routers.iter().map(|(_, s)| *s).collect();
    for slot in &slots {
        let mark = space.mark(*slot);
        let _ = writeln!(
            s,
            "\tchain pin_{slot} {{\n\t\tct mark set ct mark and {keep:#010x} or {mark:#010x}\n\t}}"
        );
        let _ = writeln!(
            s,
            "\tchain mark_{slot} {{\n\t\tmeta mark set meta mark and {keep:#010x} or {mark:#010x}\n\t}}"
        );
    }
    let copy = if slots.is_empty() {
        String::new()
    } else {
        let entries: Vec<String> = slots
            .iter()
            .map(|s| format!("{:#010x} : jump mark_{s}", space.mark(*s)))
            .collect();
        // Only the connection's own direction follows its router: a reply on
        // its way back to a container or VM behind this host must be routed
        // by the main table, not sent back out to the router it came from.
        format!(
            "\t\tct direction original meta mark and {mask:#010x} == 0 ct mark and {mask:#010x} vmap {{ {} }}\n",
            entries.join(", ")
        )
    };
    let _ = write!(
        s,
        "\tchain prerouting {{\n\t\ttype filter hook prerouting priority mangle; policy accept;\n{copy}\t}}\n"
    );
    let _ = write!(
        s,
        "\tchain output {{\n\t\ttype route hook output priority mangle; policy accept;\n{copy}\t}}\n"
    );
    let _ = writeln!(
        s,
        "\tchain postrouting {{\n\t\ttype filter hook postrouting priority mangle; policy accept;"
    );
    if !routers.is_empty() {
        // A connection is pinned by its first packet, never by a reply (an
        // inbound connection DNAT'd to a container must not be pinned by the
        // container's SYN-ACK).
        let _ = writeln!(s, "\t\tct direction reply return");
        let _ = writeln!(s, "\t\tct mark and {mask:#010x} != 0 return");
        let _ = writeln!(s, "\t\tmeta mark and {mask:#010x} != 0 return");
    }
    for (v6, fam, rt) in [
        (false, "ip", "rt ip nexthop"),
        (true, "ip6", "rt ip6 nexthop"),
    ] {
        let of: Vec<&(Nexthop, u32)> = routers
            .iter()
            .filter(|(nh, _)| nh.addr.is_ipv6() == v6)
            .collect();
        if of.is_empty() {
            continue;
        }
        let addrs: BTreeSet<IpAddr> = of.iter().map(|(nh, _)| nh.addr).collect();
        let addrs: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
        // Traffic to a router itself (the BGP session) is not pinned.
        let _ = writeln!(s, "\t\t{fam} daddr {{ {} }} return", addrs.join(", "));
        let mut seen = BTreeSet::new();
        let entries: Vec<String> = of
            .iter()
            .filter(|(nh, _)| seen.insert(nh.addr))
            .map(|(nh, slot)| format!("{} : jump pin_{slot}", nh.addr))
            .collect();
        let _ = writeln!(s, "\t\t{rt} vmap {{ {} }}", entries.join(", "));
    }
    let _ = writeln!(s, "\t}}");
    s
}

impl State {
    fn range(&self) -> std::ops::RangeInclusive<u32> {
        self.cfg.table_base + 1..=self.cfg.table_base + self.space.slots()
    }

    fn is_our_rule(&self, r: &KernelRule) -> bool {
        r.protocol == self.cfg.protocol
            && r.rule.priority == self.cfg.rule_priority
            && self.range().contains(&r.rule.table)
    }

    fn schedule_retry(&mut self) {
        let t = Instant::now() + RETRY;
        self.retry_at = Some(self.retry_at.map_or(t, |r| r.min(t)));
    }

    /// Dumps rules and routes: deletes ours that are not wanted (with
    /// `remember`, records their router's slot first), and marks missing
    /// ones of installed routers for re-adding.
    /// Learns the slots of a previous run's routers without changing anything.
    async fn remember_slots(&mut self) -> std::io::Result<()> {
        for m in self.sock.dump_routes().await? {
            let Some(r) = parse_route(m) else { continue };
            if r.protocol != self.cfg.protocol
                || !self.range().contains(&r.table)
                || r.prefix.prefix_len() != 0
            {
                continue;
            }
            if let [nh] = r.nexthops.as_slice() {
                let slot = r.table - self.cfg.table_base;
                self.slots.remembered.insert(Nexthop::new(nh.addr), slot);
            }
        }
        Ok(())
    }

    async fn cleanup(&mut self, remember: bool) -> std::io::Result<()> {
        let mut found_rules = BTreeSet::new();
        let mut dels = Vec::new();
        for m in self.sock.dump_rules().await? {
            let Some(r) = parse_rule(m) else { continue };
            if !self.is_our_rule(&r) {
                continue;
            }
            let slot = r.rule.table - self.cfg.table_base;
            let wanted = !r.extra
                && self.installed.iter().any(|(nh, i)| {
                    i.rule
                        && i.slot == slot
                        && r.rule
                            == pin_rule(
                                nh.addr.is_ipv6(),
                                self.space,
                                slot,
                                self.cfg.table_base,
                                self.cfg.rule_priority,
                            )
                });
            if wanted && found_rules.insert((r.rule.v6, slot)) {
                continue;
            }
            dels.push(Request {
                msg: RouteNetlinkMessage::DelRule(r.msg),
                flags: 0,
            });
        }
        let mut found_routes = BTreeSet::new();
        for m in self.sock.dump_routes().await? {
            let Some(r) = parse_route(m) else { continue };
            if r.protocol != self.cfg.protocol || !self.range().contains(&r.table) {
                continue;
            }
            let slot = r.table - self.cfg.table_base;
            if remember {
                if let [nh] = r.nexthops.as_slice() {
                    let nh = self
                        .desired
                        .values()
                        .flatten()
                        .find(|d| d.matches(nh))
                        .copied()
                        .unwrap_or(Nexthop::new(nh.addr));
                    self.slots.remembered.insert(nh, slot);
                }
            }
            let wanted = r.prefix.prefix_len() == 0
                && self.installed.iter().any(|(nh, i)| {
                    i.route && i.slot == slot && r.nexthops.iter().any(|k| nh.matches(k))
                });
            if wanted && found_routes.insert(slot) {
                continue;
            }
            dels.push(Request {
                msg: RouteNetlinkMessage::DelRoute(build_delete_exact(&r)),
                flags: 0,
            });
        }
        for (nh, i) in &mut self.installed {
            if i.route && !found_routes.contains(&i.slot) {
                debug!(router = %nh, "pinning table route missing; re-adding");
                i.route = false;
            }
            if i.rule && !found_rules.contains(&(nh.addr.is_ipv6(), i.slot)) {
                debug!(router = %nh, "pinning rule missing; re-adding");
                i.rule = false;
            }
        }
        if !dels.is_empty() {
            info!(
                count = dels.len(),
                "removing stray pinning rules and routes"
            );
            for res in self.sock.batch(dels).await? {
                if let Err(e) = res {
                    if e.errno != nix::libc::ENOENT && e.errno != nix::libc::ESRCH {
                        warn!(error = %e, "cannot remove stray pinning rule or route");
                    }
                }
            }
        }
        Ok(())
    }

    async fn nft_remove(&mut self) -> Result<(), NftError> {
        self.nft.delete(&self.nft_table).await?;
        self.nft_loaded = None;
        Ok(())
    }

    /// Converges rules, tables and the nft table on the desired routers.
    async fn apply(&mut self) {
        if let Err(e) = self.apply_once().await {
            error!(error = %e, "pinning: netlink request failed; retrying");
            self.schedule_retry();
        }
    }

    /// Routers gone lose their rule, then their table; new ones get a slot,
    /// a table route, then a rule; the nft table follows the routers whose
    /// rule and route are both in place.
    async fn apply_once(&mut self) -> std::io::Result<()> {
        let want: BTreeSet<Nexthop> = self.desired.values().flatten().copied().collect();
        self.remove_gone(&want).await?;
        self.assign_slots(&want);
        self.install_routes().await?;
        self.install_rules().await?;
        if self.installed.values().any(|i| !i.route || !i.rule) {
            self.schedule_retry();
        }
        self.load_nft().await;
        Ok(())
    }

    /// Routers no longer wanted: rule first (their connections fall back to
    /// the multipath route), then their table.
    async fn remove_gone(&mut self, want: &BTreeSet<Nexthop>) -> std::io::Result<()> {
        let (base, prio, proto) = (
            self.cfg.table_base,
            self.cfg.rule_priority,
            self.cfg.protocol,
        );
        let gone: Vec<Nexthop> = self
            .installed
            .keys()
            .filter(|nh| !want.contains(nh))
            .copied()
            .collect();
        let mut reqs = Vec::new();
        for nh in &gone {
            let Some(i) = self.installed.remove(nh) else {
                continue;
            };
            self.slots.release(nh);
            info!(router = %nh, slot = i.slot, "router left: unpinning its connections");
            if i.rule {
                reqs.push(Request {
                    msg: RouteNetlinkMessage::DelRule(build_rule(
                        &pin_rule(nh.addr.is_ipv6(), self.space, i.slot, base, prio),
                        proto,
                    )),
                    flags: 0,
                });
            }
            if i.route {
                // Metric 0 matches any metric; the protocol only ours.
                reqs.push(Request {
                    msg: RouteNetlinkMessage::DelRoute(build_route(
                        default_of(nh),
                        base + i.slot,
                        proto,
                        0,
                        &[],
                    )),
                    flags: 0,
                });
            }
        }
        if !reqs.is_empty() {
            for res in self.sock.batch(reqs).await? {
                if let Err(e) = res {
                    if e.errno != nix::libc::ENOENT && e.errno != nix::libc::ESRCH {
                        warn!(error = %e, "cannot remove a pinning rule or route");
                    }
                }
            }
        }
        Ok(())
    }

    fn assign_slots(&mut self, want: &BTreeSet<Nexthop>) {
        for nh in want {
            if self.installed.contains_key(nh) {
                continue;
            }
            match self.slots.assign(nh) {
                Some(slot) => {
                    info!(router = %nh, slot, table = self.cfg.table_base + slot, mark = format_args!("{:#x}", self.space.mark(slot)), "pinning connections to router");
                    self.installed.insert(
                        *nh,
                        Installed {
                            slot,
                            route: false,
                            rule: false,
                            error: None,
                        },
                    );
                }
                None => warn!(router = %nh, "no free pinning slot (mark mask too small)"),
            }
        }
    }

    /// `default via ROUTER` in each router's table.
    async fn install_routes(&mut self) -> std::io::Result<()> {
        let (base, proto) = (self.cfg.table_base, self.cfg.protocol);
        let todo: Vec<(Nexthop, u32)> = self
            .installed
            .iter()
            .filter(|(_, i)| !i.route)
            .map(|(nh, i)| (*nh, i.slot))
            .collect();
        if todo.is_empty() {
            return Ok(());
        }
        let reqs = todo
            .iter()
            .map(|(nh, slot)| Request {
                msg: RouteNetlinkMessage::NewRoute(build_route(
                    default_of(nh),
                    base + slot,
                    proto,
                    0,
                    &[*nh],
                )),
                flags: NLM_F_CREATE | NLM_F_REPLACE,
            })
            .collect();
        let res = self.sock.batch(reqs).await?;
        self.record(&todo, res, "table route", false, |i| {
            i.route = true;
            i.error = None;
        });
        Ok(())
    }

    /// Notes the kernel's answers to one request per router: `done` on
    /// success (an existing rule counts), else the error, logged when new.
    fn record(
        &mut self,
        todo: &[(Nexthop, u32)],
        res: Vec<Result<(), NlError>>,
        what: &str,
        exists_ok: bool,
        done: fn(&mut Installed),
    ) {
        for ((nh, _), r) in todo.iter().zip(res) {
            let Some(i) = self.installed.get_mut(nh) else {
                continue;
            };
            match r {
                Ok(()) => done(i),
                Err(e) if exists_ok && e.errno == nix::libc::EEXIST => done(i),
                Err(e) => {
                    let msg = format!("{what}: {e}");
                    if i.error.as_deref() != Some(msg.as_str()) {
                        warn!(router = %nh, error = %msg, "cannot install a pinning {what}");
                    }
                    i.error = Some(msg);
                }
            }
        }
    }

    /// The fwmark rule of each router whose table route is in place.
    async fn install_rules(&mut self) -> std::io::Result<()> {
        let (base, prio, proto) = (
            self.cfg.table_base,
            self.cfg.rule_priority,
            self.cfg.protocol,
        );
        let todo: Vec<(Nexthop, u32)> = self
            .installed
            .iter()
            .filter(|(_, i)| i.route && !i.rule)
            .map(|(nh, i)| (*nh, i.slot))
            .collect();
        if todo.is_empty() {
            return Ok(());
        }
        let reqs = todo
            .iter()
            .map(|(nh, slot)| Request {
                msg: RouteNetlinkMessage::NewRule(build_rule(
                    &pin_rule(nh.addr.is_ipv6(), self.space, *slot, base, prio),
                    proto,
                )),
                flags: NLM_F_CREATE | NLM_F_EXCL,
            })
            .collect();
        let res = self.sock.batch(reqs).await?;
        self.record(&todo, res, "rule", true, |i| i.rule = true);
        Ok(())
    }

    /// The nftables table, for the routers whose rule and table exist. When
    /// routers only left, the reload waits [`NFT_SETTLE_AFTER_LEAVE`].
    async fn load_nft(&mut self) {
        let active: Vec<(Nexthop, u32)> = self
            .installed
            .iter()
            .filter(|(_, i)| i.route && i.rule)
            .map(|(nh, i)| (*nh, i.slot))
            .collect();
        let script = ruleset(&self.nft_table, self.space, &active);
        if self.nft_loaded.as_deref() == Some(script.as_str()) {
            // Back to what is loaded (a router left and returned): nothing due.
            self.nft_due = None;
            return;
        }
        let now = Instant::now();
        let only_left =
            self.nft_loaded.is_some() && active.iter().all(|r| self.nft_routers.contains(r));
        if only_left {
            let due = *self.nft_due.get_or_insert(now + NFT_SETTLE_AFTER_LEAVE);
            if due > now {
                self.retry_at = Some(self.retry_at.map_or(due, |r| r.min(due)));
                return;
            }
        }
        self.nft_due = None;
        match self.nft.run(&script).await {
            Ok(()) => {
                debug!(routers = active.len(), "pinning nftables table loaded");
                self.nft_loaded = Some(script);
                self.nft_routers = active.into_iter().collect();
            }
            Err(e) => {
                error!(error = %e, "cannot load the pinning nftables table");
                self.schedule_retry();
            }
        }
    }

    fn snapshot(&self) -> Vec<PinnedRouter> {
        self.installed
            .iter()
            .map(|(nh, i)| PinnedRouter {
                nexthop: *nh,
                slot: i.slot,
                table: self.cfg.table_base + i.slot,
                mark: self.space.mark(i.slot),
                active: i.route && i.rule && self.nft_loaded.is_some(),
                error: i.error.clone(),
            })
            .collect()
    }

    fn handle(&mut self, Cmd(prefix, nhs): Cmd) {
        let v6 = matches!(prefix, IpNet::V6(_));
        let mut nhs: Vec<Nexthop> = nhs.into_iter().filter(|n| n.addr.is_ipv6() == v6).collect();
        nhs.sort();
        nhs.dedup();
        self.desired.insert(v6, nhs);
    }

    async fn remove_all(&mut self) {
        self.desired.clear();
        self.apply().await;
        if let Err(e) = self.nft_remove().await {
            error!(error = %e, "cannot remove the pinning nftables table");
        }
        info!("connection pinning removed");
    }
}

impl Reconciler for State {
    type Cmd = Cmd;
    type Snapshot = Vec<PinnedRouter>;

    fn on_command(&mut self, cmd: Cmd) {
        self.handle(cmd);
    }

    fn deadline(&self) -> Option<Instant> {
        self.retry_at
    }

    async fn on_deadline(&mut self) {
        self.retry_at = None;
    }

    async fn on_tick(&mut self) {
        if self.adopting {
            return;
        }
        if let Err(e) = self.cleanup(false).await {
            error!(error = %e, "pinning resync failed");
            self.schedule_retry();
        }
        // Reload the nft table too (someone may have flushed it).
        self.nft_loaded = None;
    }

    async fn apply(&mut self) {
        if self.adopting {
            if self.desired.is_empty() {
                // Still waiting for the first next-hop set: change nothing.
                return;
            }
            // The routers are known again: install them into their old
            // slots (existing rules and routes are taken as they are, the
            // nft table is replaced atomically), then drop the rest.
            self.adopting = false;
            State::apply(self).await;
            if let Err(e) = self.cleanup(false).await {
                error!(error = %e, "pinning: removing the previous run's leftovers failed");
                self.schedule_retry();
            }
        }
        State::apply(self).await;
    }

    fn snapshot(&self) -> Vec<PinnedRouter> {
        State::snapshot(self)
    }

    async fn shutdown(&mut self, _remove: bool) {
        self.remove_all().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nh(s: &str) -> Nexthop {
        Nexthop::new(s.parse().expect("ip"))
    }

    #[test]
    fn mask_math() {
        assert!(MarkSpace::new(0).is_none());
        assert!(MarkSpace::new(0x0f0f).is_none());
        let m = MarkSpace::new(0xff00).expect("mask");
        assert_eq!(m.slots(), 255);
        assert_eq!(m.mark(1), 0x100);
        assert_eq!(m.mark(255), 0xff00);
        assert_eq!(m.slot_of(0xdead_beef), 0xbe);
        // Other users' bits survive, ours are replaced.
        assert_eq!(m.set(0xdead_beef, 2), 0xdead_02ef);
        assert_eq!(m.set(0x0001_0001, 3), 0x0001_0301);
        let top = MarkSpace::new(0xf000_0000).expect("mask");
        assert_eq!(top.slots(), 15);
        assert_eq!(top.mark(15), 0xf000_0000);
        assert_eq!(top.set(0x0fff_ffff, 1), 0x1fff_ffff);
        assert!(MarkSpace::new(u32::MAX).is_some());
    }

    #[test]
    fn slots_are_kept_and_returned() {
        let mut s = Slots::new(MarkSpace::new(0xff00).expect("mask"));
        let (a, b, c) = (nh("192.168.100.20"), nh("192.168.100.21"), nh("10.0.0.1"));
        let sa = s.assign(&a).expect("slot");
        let sb = s.assign(&b).expect("slot");
        assert_ne!(sa, sb);
        assert_eq!(s.assign(&a), Some(sa));
        s.release(&a);
        // A newcomer avoids A's remembered slot; A gets it back.
        let sc = s.assign(&c).expect("slot");
        assert_ne!(sc, sa);
        assert_eq!(s.assign(&a), Some(sa));
        // Deterministic for a fresh allocator.
        let mut t = Slots::new(MarkSpace::new(0xff00).expect("mask"));
        assert_eq!(t.assign(&b), Some(s.preferred(&b)));
    }

    #[test]
    fn slots_run_out() {
        let mut s = Slots::new(MarkSpace::new(0x3).expect("mask"));
        let got: BTreeSet<u32> = (1..=3)
            .map(|i| s.assign(&nh(&format!("10.0.0.{i}"))).expect("slot"))
            .collect();
        assert_eq!(got, BTreeSet::from([1, 2, 3]));
        assert_eq!(s.assign(&nh("10.0.0.9")), None);
    }

    #[test]
    fn ruleset_text() {
        let m = MarkSpace::new(0xff00).expect("mask");
        let t = Table::new(Family::Inet, "hagw_pin").expect("name");
        let r = ruleset(&t, m, &[(nh("192.168.100.20"), 1), (nh("2001:db8::1"), 2)]);
        assert!(r.starts_with("table inet hagw_pin {}\ndelete table inet hagw_pin\n"));
        assert!(r.contains("ct mark set ct mark and 0xffff00ff or 0x00000100"));
        assert!(r.contains("meta mark set meta mark and 0xffff00ff or 0x00000200"));
        assert!(r.contains("rt ip nexthop vmap { 192.168.100.20 : jump pin_1 }"));
        assert!(r.contains("rt ip6 nexthop vmap { 2001:db8::1 : jump pin_2 }"));
        assert!(r.contains("ip daddr { 192.168.100.20 } return"));
        assert!(r.contains(
            "meta mark and 0x0000ff00 == 0 ct mark and 0x0000ff00 vmap { 0x00000100 : jump mark_1, 0x00000200 : jump mark_2 }"
        ));
        // No routers: empty base chains only.
        let e = ruleset(&t, m, &[]);
        assert!(!e.contains("vmap"));
        assert!(e.contains("type route hook output"));
    }
}
