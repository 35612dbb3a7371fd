//! NAT for convergent gateways: one nftables table, `inet hagw`, owned by
//! hagw and replaced atomically.
//!
//! The seed's operators wrote this ruleset by hand on every node, with the
//! other node's lines commented out. Here the config says what is wanted
//! ([`NatSpec`]: source NAT for sets of networks, port forwards, full-NAT), a
//! pure function renders the table ([`render`]), and a reconciler
//! ([`Nat`]) keeps the kernel on it:
//!
//! * a change is **one transaction**: the whole table replaced
//!   ([`Table::replace_script`]); when only the networks of a source NAT
//!   changed, only its set is flushed and refilled (the seed-004 router's
//!   `ipset` idiom: networks come and go, the rules stay and keep their
//!   counters);
//! * foreign tables are never written (only read, to see whether ours is
//!   still there);
//! * the table comes back when someone deletes or edits it (`nft flush
//!   ruleset`, a firewall reload): nftables change events ([`watch`]) name
//!   the tables each transaction touched and its generation, and one later
//!   than hagw's own last transaction that touched `inet hagw` makes it
//!   load the table again; a periodic presence check (one netlink request)
//!   catches what events miss;
//! * an `nft` failure keeps the last good table (the failed transaction
//!   changed nothing), logs nft's message once, shows it in the snapshot and
//!   retries with backoff.
//!
//! # Rules touch only what this node routes
//!
//! On hosts with `br_netfilter` (Docker loads it), frames **bridged** through
//! the node also pass the IP hooks, with the bridge as both input and output
//! interface. The guest L2 is shared between the nodes, so a connection that
//! node A full-NATs towards a guest living on node B crosses B's bridge, and
//! the seed's `ip daddr 10.5.5.0/24 oif guestbr0 snat 10.5.5.251` on B NATs it
//! a second time. So:
//!
//! * a forward's DNAT also requires `fib daddr type local`: only packets
//!   addressed to this node, never frames for another node bridged through it;
//! * a full-NAT SNAT matches only connections this node DNATed (`ct status
//!   dnat`), for that forward's original port (`ct original proto-dst`) and
//!   translated destination;
//! * a source NAT matches its set of networks leaving by its (routed) output
//!   interface.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::{self, Write as _},
    net::IpAddr,
    sync::Arc,
    time::Duration,
};

use ipnet::IpNet;
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use crate::{
    nft::{self, watch, Family, Nft, NftError, RuleCounter, Table, TableShape},
    reconcile::{self, Handle, Reconciler},
};

/// The table's name (family `inet`).
pub const DEFAULT_TABLE: &str = "hagw";
/// How often the table's presence and shape are checked without an event.
pub const CHECK_PERIOD: Duration = Duration::from_secs(5);
/// First retry after an `nft` failure (doubling up to [`MAX_RETRY`]).
const FIRST_RETRY: Duration = Duration::from_secs(1);
const MAX_RETRY: Duration = Duration::from_secs(30);

/// A transport protocol of a port forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One port or an inclusive range, never port 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ports {
    first: u16,
    last: u16,
}

impl Ports {
    /// `None` for port 0 or a range whose end is before its start.
    pub fn new(first: u16, last: u16) -> Option<Ports> {
        (first >= 1 && first <= last).then_some(Ports { first, last })
    }

    pub fn one(port: u16) -> Option<Ports> {
        Ports::new(port, port)
    }

    pub fn first(&self) -> u16 {
        self.first
    }

    pub fn last(&self) -> u16 {
        self.last
    }

    pub fn overlaps(&self, o: &Ports) -> bool {
        self.first <= o.last && o.first <= self.last
    }
}

impl fmt::Display for Ports {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

/// Source NAT (or masquerade) of a set of networks leaving by an interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceNat {
    /// Names the rule (its nft comment, the counter's name in status), e.g.
    /// the config key `nat.source[0]`.
    pub name: String,
    pub networks: Vec<IpNet>,
    pub out_interface: String,
    /// The address to SNAT to; `None`: masquerade (the interface's own).
    pub to: Option<IpAddr>,
}

/// The SNAT half of a full-NAT forward: towards `out_interface` (the guest
/// bridge), the connection's source becomes `source` (this node's own
/// address on that bridge), so the guest answers this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FullNat {
    pub out_interface: String,
    pub source: IpAddr,
}

/// A port forward: connections to this node's `ports` arriving on
/// `in_interface` go to `to` (port `to_port`, or the same port).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forward {
    pub name: String,
    pub in_interface: String,
    pub protocol: Protocol,
    pub ports: Ports,
    pub to: IpAddr,
    pub to_port: Option<u16>,
    pub full_nat: Option<FullNat>,
}

/// Everything the table holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NatSpec {
    pub sources: Vec<SourceNat>,
    pub forwards: Vec<Forward>,
}

/// A spec that cannot be rendered (the config validator refuses these
/// first; this keeps a bad spec from ever reaching `nft`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NatError {
    #[error(
        "{0:?} cannot be a rule comment (letters, digits and . _ [ ] : / - space, at most 100)"
    )]
    Name(String),
    #[error("{name}: interface {iface:?} cannot go into a ruleset")]
    Interface { name: String, iface: String },
    #[error("{name}: {reason}")]
    Family { name: String, reason: String },
}

/// The rendered table: its body, the same without set elements (two
/// rulesets with the same skeleton differ only in their sets' elements), the
/// sets' elements, and its shape (to notice tampering).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ruleset {
    pub body: String,
    pub skeleton: String,
    pub sets: BTreeMap<String, Vec<IpNet>>,
    pub shape: TableShape,
}

fn valid_comment(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 100
        && s.chars().all(|c| {
            c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '[' | ']' | ':' | '/' | '-' | ' ')
        })
}

fn fam(a: &IpAddr) -> &'static str {
    if a.is_ipv4() {
        "ip"
    } else {
        "ip6"
    }
}

fn nfproto(a: &IpAddr) -> &'static str {
    if a.is_ipv4() {
        "ipv4"
    } else {
        "ipv6"
    }
}

/// `addr` or `addr:port` as nft's `dnat`/`snat ... to` wants it.
fn nat_target(a: &IpAddr, port: Option<u16>) -> String {
    match (a, port) {
        (IpAddr::V4(v4), Some(p)) => format!("{v4}:{p}"),
        (IpAddr::V6(v6), Some(p)) => format!("[{v6}]:{p}"),
        (a, None) => a.to_string(),
    }
}

/// The set names of source NAT `i`: one per family it translates.
fn set_names(i: usize, s: &SourceNat) -> Vec<(String, bool)> {
    let mut v = Vec::new();
    if s.to.is_none_or(|t| t.is_ipv4()) {
        v.push((format!("snat_{i}_v4"), false));
    }
    if s.to.is_none_or(|t| t.is_ipv6()) {
        v.push((format!("snat_{i}_v6"), true));
    }
    v
}

fn check(spec: &NatSpec) -> Result<(), NatError> {
    let iface = |name: &str, i: &str| {
        if nft::valid_interface(i) {
            Ok(())
        } else {
            Err(NatError::Interface {
                name: name.to_string(),
                iface: i.to_string(),
            })
        }
    };
    let family = |name: &str, reason: String| NatError::Family {
        name: name.to_string(),
        reason,
    };
    for s in &spec.sources {
        if !valid_comment(&s.name) {
            return Err(NatError::Name(s.name.clone()));
        }
        iface(&s.name, &s.out_interface)?;
        if let Some(to) = s.to {
            if let Some(n) = s
                .networks
                .iter()
                .find(|n| n.addr().is_ipv4() != to.is_ipv4())
            {
                return Err(family(
                    &s.name,
                    format!("network {n} and {to} differ in family"),
                ));
            }
        }
    }
    for f in &spec.forwards {
        if !valid_comment(&f.name) {
            return Err(NatError::Name(f.name.clone()));
        }
        iface(&f.name, &f.in_interface)?;
        if let Some(full) = &f.full_nat {
            iface(&f.name, &full.out_interface)?;
            if full.source.is_ipv4() != f.to.is_ipv4() {
                return Err(family(
                    &f.name,
                    format!(
                        "full-NAT source {} and {} differ in family",
                        full.source, f.to
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Renders the table for `spec`: a pure function of it, so every node
/// given the same spec gets the same text.
pub fn render(spec: &NatSpec) -> Result<Ruleset, NatError> {
    check(spec)?;
    let mut sets = BTreeMap::new();
    let mut shape = TableShape::default();
    let mut set_text = String::new();
    let mut skel_text = String::new();
    for (i, s) in spec.sources.iter().enumerate() {
        for (name, v6) in set_names(i, s) {
            let mut elems: Vec<IpNet> = s
                .networks
                .iter()
                .filter(|n| n.addr().is_ipv6() == v6)
                .map(|n| n.trunc())
                .collect();
            elems.sort();
            elems.dedup();
            let kind = if v6 { "ipv6_addr" } else { "ipv4_addr" };
            let head = format!("\tset {name} {{\n\t\ttype {kind}; flags interval; auto-merge;\n");
            let _ = writeln!(skel_text, "{head}\t}}");
            let _ = write!(set_text, "{head}");
            if !elems.is_empty() {
                let _ = writeln!(set_text, "\t\telements = {{ {} }}", join(&elems));
            }
            let _ = writeln!(set_text, "\t}}");
            shape.sets.insert(name.clone());
            sets.insert(name, elems);
        }
    }

    let mut pre = String::new();
    for f in &spec.forwards {
        let _ = writeln!(
            pre,
            "\t\tiifname \"{}\" fib daddr type local meta nfproto {} {} dport {} counter dnat {} to {} comment \"{}\"",
            f.in_interface,
            nfproto(&f.to),
            f.protocol,
            f.ports,
            fam(&f.to),
            nat_target(&f.to, f.to_port),
            f.name
        );
    }

    let mut post = String::new();
    let mut post_rules = 0;
    for f in &spec.forwards {
        let Some(full) = &f.full_nat else { continue };
        // After DNAT the destination is the guest's port: the fixed one, or
        // the original one when the forward keeps ports.
        let dport = f.to_port.map_or(f.ports.to_string(), |p| p.to_string());
        let _ = writeln!(
            post,
            "\t\toifname \"{}\" ct status dnat {} daddr {} {} dport {} ct original proto-dst {} counter snat {} to {} comment \"{} full-nat\"",
            full.out_interface,
            fam(&f.to),
            f.to,
            f.protocol,
            dport,
            f.ports,
            fam(&full.source),
            full.source,
            f.name
        );
        post_rules += 1;
    }
    for (i, s) in spec.sources.iter().enumerate() {
        for (set, v6) in set_names(i, s) {
            let (fam, suffix) = if v6 { ("ip6", " ipv6") } else { ("ip", "") };
            let action = match s.to {
                Some(to) => format!("snat {fam} to {to}"),
                None => "masquerade".to_string(),
            };
            // Both families of a masquerade are named apart, so each has its
            // own counter in status.
            let suffix = if s.to.is_none() { suffix } else { "" };
            let _ = writeln!(
                post,
                "\t\toifname \"{}\" {fam} saddr @{set} counter {action} comment \"{}{suffix}\"",
                s.out_interface, s.name
            );
            post_rules += 1;
        }
    }
    shape.rules.insert("prerouting".into(), spec.forwards.len());
    shape.rules.insert("postrouting".into(), post_rules);

    let chains = format!(
        "\tchain prerouting {{\n\t\ttype nat hook prerouting priority dstnat; policy accept;\n{pre}\t}}\n\
         \tchain postrouting {{\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n{post}\t}}\n"
    );
    Ok(Ruleset {
        body: format!("{set_text}{chains}"),
        skeleton: format!("{skel_text}{chains}"),
        sets,
        shape,
    })
}

fn join(nets: &[IpNet]) -> String {
    nets.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The transaction that takes `table` from `from` to `to` when they differ
/// only in set elements: each changed set flushed and refilled.
pub fn set_update_script(table: &Table, from: &Ruleset, to: &Ruleset) -> Option<String> {
    if from.skeleton != to.skeleton {
        return None;
    }
    let mut s = String::new();
    for (name, elems) in &to.sets {
        if from.sets.get(name) == Some(elems) {
            continue;
        }
        let _ = writeln!(s, "flush set {table} {name}");
        if !elems.is_empty() {
            let _ = writeln!(s, "add element {table} {name} {{ {} }}", join(elems));
        }
    }
    Some(s)
}

/// Configuration of [`Nat`].
#[derive(Debug, Clone)]
pub struct NatConfig {
    pub table: String,
    pub nft: String,
    pub check_period: Duration,
}

impl Default for NatConfig {
    fn default() -> Self {
        NatConfig {
            table: DEFAULT_TABLE.into(),
            nft: "nft".into(),
            check_period: CHECK_PERIOD,
        }
    }
}

/// Changes of the desired state.
#[derive(Debug)]
pub enum Cmd {
    /// A new spec (start, config reload).
    Set(NatSpec),
    /// A forward's target stopped (true) or started (false) answering.
    Withdraw { forward: String, withdrawn: bool },
    /// A transaction touched our table: the ruleset generation it made
    /// (`None`: events were lost).
    Touched(Option<u32>),
}

/// What the NAT reconciler reports.
#[derive(Debug, Clone, Default)]
pub struct NatSnapshot {
    /// The table as rendered is in the kernel.
    pub in_sync: bool,
    /// The last `nft` failure (cleared by the next success): the kernel keeps
    /// the last good table meanwhile.
    pub error: Option<String>,
    /// Forwards withdrawn because their target does not answer.
    pub withdrawn: Vec<String>,
    /// Whole-table transactions, set-only transactions and restorations
    /// (after someone else deleted or changed the table) so far.
    pub replaces: u64,
    pub set_updates: u64,
    pub restores: u64,
}

/// Aborts the change watcher when the last [`Nat`] handle goes.
#[derive(Debug)]
struct AbortOnDrop(Option<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(h) = &self.0 {
            h.abort();
        }
    }
}

/// A handle to the NAT reconciler.
#[derive(Debug, Clone)]
pub struct Nat {
    h: Handle<Cmd, NatSnapshot>,
    nft: Nft,
    table: Table,
    _watch: Arc<AbortOnDrop>,
}

impl Nat {
    /// Loads `spec` (replacing whatever table of that name is there: a
    /// previous run's is adopted that way, without a moment without NAT) and
    /// keeps it loaded. Runs in the calling thread's network namespace.
    pub async fn start(cfg: NatConfig, spec: NatSpec) -> Result<Nat, NftError> {
        let table = Table::new(Family::Inet, &cfg.table)?;
        let nft = Nft::new(&cfg.nft);
        let mut st = State {
            nft: nft.clone(),
            table: table.clone(),
            period: cfg.check_period,
            desired: spec,
            withdrawn: BTreeSet::new(),
            loaded: None,
            check: false,
            own_gen: None,
            foreign: false,
            watching: false,
            failed: None,
            retry_at: None,
            backoff: FIRST_RETRY,
            snap: NatSnapshot::default(),
        };
        st.apply_now().await;
        st.watching = true;
        let h = reconcile::spawn(st, None);
        let watch = {
            let h = h.clone();
            let t = table.clone();
            watch::spawn_checker(
                move |f, n| f == t.family() && n == t.name(),
                move |gen| h.send(Cmd::Touched(gen)),
            )
        };
        Ok(Nat {
            h,
            nft,
            table,
            _watch: Arc::new(AbortOnDrop(watch)),
        })
    }

    pub fn set(&self, spec: NatSpec) {
        self.h.send(Cmd::Set(spec));
    }

    /// Withdraws (or restores) the forward named `forward`.
    pub fn withdraw(&self, forward: &str, withdrawn: bool) {
        self.h.send(Cmd::Withdraw {
            forward: forward.to_string(),
            withdrawn,
        });
    }

    pub async fn snapshot(&self) -> NatSnapshot {
        self.h.snapshot().await
    }

    /// The rules' counters, named by their comments.
    pub async fn counters(&self) -> Result<Vec<RuleCounter>, NftError> {
        self.nft.counters(&self.table).await
    }

    pub fn table(&self) -> &Table {
        &self.table
    }

    /// Stops; with `remove`, deletes the table first. Without, the table
    /// stays and NATed connections keep flowing (the next run adopts it).
    pub async fn shutdown(&self, remove: bool) {
        self.h.shutdown(remove).await;
    }
}

struct State {
    nft: Nft,
    table: Table,
    period: Duration,
    desired: NatSpec,
    withdrawn: BTreeSet<String>,
    /// What is in the kernel (the last successful transaction).
    loaded: Option<Ruleset>,
    /// Check the table's presence (and, without events, its shape) before
    /// the next apply.
    check: bool,
    /// The ruleset generation right after our last transaction: events of
    /// transactions up to it are ours (or older).
    own_gen: Option<u32>,
    /// Someone else's transaction touched our table: load it again.
    foreign: bool,
    /// Change events are expected (the watcher is running).
    watching: bool,
    /// The script that failed last; not run again before `retry_at`.
    failed: Option<String>,
    retry_at: Option<Instant>,
    backoff: Duration,
    snap: NatSnapshot,
}

impl State {
    fn effective(&self) -> NatSpec {
        NatSpec {
            sources: self.desired.sources.clone(),
            forwards: self
                .desired
                .forwards
                .iter()
                .filter(|f| !self.withdrawn.contains(&f.name))
                .cloned()
                .collect(),
        }
    }

    /// Is our table still there (and, without change events, still what we
    /// loaded)? If not, forget it: the next apply loads it again.
    async fn check_table(&mut self) {
        if self.loaded.is_none() {
            return;
        }
        let gone = if self.watching && self.own_gen.is_some() {
            match watch::table_exists(self.table.family(), self.table.name()).await {
                Ok(present) => !present,
                Err(e) => {
                    warn!(table = %self.table, error = %e, "cannot check the nat table");
                    false
                }
            }
        } else {
            match self.nft.shape(&self.table).await {
                Ok(found) => found.as_ref() != self.loaded.as_ref().map(|l| &l.shape),
                Err(e) => {
                    warn!(table = %self.table, error = %e, "cannot read the nat table");
                    false
                }
            }
        };
        if gone {
            self.restore("deleted or changed");
        }
    }

    fn restore(&mut self, what: &str) {
        if self.loaded.take().is_some() {
            warn!(table = %self.table, "nat table {what} by someone else: loading it again");
            self.snap.restores += 1;
        }
    }

    async fn apply_now(&mut self) {
        if std::mem::take(&mut self.foreign) {
            self.restore("changed");
        }
        if std::mem::take(&mut self.check) {
            self.check_table().await;
        }
        let rs = match render(&self.effective()) {
            Ok(rs) => rs,
            Err(e) => {
                self.fail(e.to_string(), None);
                return;
            }
        };
        if self.loaded.as_ref() == Some(&rs) {
            self.snap.in_sync = true;
            return;
        }
        self.snap.in_sync = false;
        let (script, set_only) = match self
            .loaded
            .as_ref()
            .and_then(|l| set_update_script(&self.table, l, &rs))
        {
            Some(s) => (s, true),
            None => (self.table.replace_script(&rs.body), false),
        };
        if self.failed.as_deref() == Some(script.as_str())
            && self.retry_at.is_some_and(|t| t > Instant::now())
        {
            return;
        }
        match self.nft.run(&script).await {
            Ok(()) => {
                if set_only {
                    self.snap.set_updates += 1;
                    info!(table = %self.table, "nat networks updated in place");
                } else {
                    self.snap.replaces += 1;
                    info!(
                        table = %self.table,
                        forwards = rs.shape.rules.get("prerouting").copied().unwrap_or(0),
                        "nat table loaded"
                    );
                }
                if self.snap.error.take().is_some() {
                    info!(table = %self.table, "nat table error cleared");
                }
                self.loaded = Some(rs);
                self.own_gen = watch::generation().await.ok();
                self.snap.in_sync = true;
                self.failed = None;
                self.retry_at = None;
                self.backoff = FIRST_RETRY;
            }
            Err(e) => self.fail(e.to_string(), Some(script)),
        }
    }

    fn fail(&mut self, msg: String, script: Option<String>) {
        if self.snap.error.as_deref() != Some(msg.as_str()) {
            error!(table = %self.table, error = %msg, "cannot load the nat table; the last good one stays");
        }
        self.snap.error = Some(msg);
        self.failed = script;
        self.retry_at = Some(Instant::now() + self.backoff);
        self.backoff = (self.backoff * 2).min(MAX_RETRY);
    }
}

impl Reconciler for State {
    type Cmd = Cmd;
    type Snapshot = NatSnapshot;

    fn on_command(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Set(spec) => {
                self.desired = spec;
                // A new spec is tried at once, even right after a failure.
                self.retry_at = None;
            }
            Cmd::Withdraw { forward, withdrawn } => {
                let changed = if withdrawn {
                    self.withdrawn.insert(forward.clone())
                } else {
                    self.withdrawn.remove(&forward)
                };
                if changed {
                    if withdrawn {
                        warn!(forward = %forward, "port forward withdrawn: its target does not answer");
                    } else {
                        info!(forward = %forward, "port forward restored: its target answers");
                    }
                    self.retry_at = None;
                }
            }
            Cmd::Touched(gen) => match (gen, self.own_gen) {
                (Some(g), Some(own)) => self.foreign |= g > own,
                // Without generations, compare what is there with ours.
                _ => self.check = true,
            },
        }
    }

    fn deadline(&self) -> Option<Instant> {
        self.retry_at
    }

    async fn on_deadline(&mut self) {
        self.retry_at = None;
        debug!(table = %self.table, "retrying the nat table");
    }

    async fn on_tick(&mut self) {
        self.check = true;
    }

    async fn apply(&mut self) {
        self.apply_now().await;
    }

    fn snapshot(&self) -> NatSnapshot {
        let mut s = self.snap.clone();
        s.withdrawn = self.withdrawn.iter().cloned().collect();
        s
    }

    async fn shutdown(&mut self, remove: bool) {
        if !remove {
            info!(table = %self.table, "leaving the nat table in place");
            return;
        }
        match self.nft.delete(&self.table).await {
            Ok(()) => info!(table = %self.table, "nat table removed"),
            Err(e) => error!(table = %self.table, error = %e, "cannot remove the nat table"),
        }
    }

    fn resync_period(&self) -> Duration {
        self.period
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    fn net(s: &str) -> IpNet {
        s.parse().expect("net")
    }

    /// The seed's node 1, as a spec.
    fn seed_node1() -> NatSpec {
        NatSpec {
            sources: vec![SourceNat {
                name: "nat.source[0]".into(),
                networks: vec![net("10.5.5.0/24")],
                out_interface: "xenbr0".into(),
                to: Some(ip("192.168.122.11")),
            }],
            forwards: vec![
                Forward {
                    name: "nat.forward[0]".into(),
                    in_interface: "xenbr0".into(),
                    protocol: Protocol::Tcp,
                    ports: Ports::one(2201).expect("port"),
                    to: ip("10.5.5.201"),
                    to_port: Some(22),
                    full_nat: Some(FullNat {
                        out_interface: "guestbr0".into(),
                        source: ip("10.5.5.251"),
                    }),
                },
                Forward {
                    name: "nat.forward[1]".into(),
                    in_interface: "xenbr0".into(),
                    protocol: Protocol::Udp,
                    ports: Ports::new(2200, 2299).expect("range"),
                    to: ip("10.5.5.202"),
                    to_port: None,
                    full_nat: None,
                },
            ],
        }
    }

    #[test]
    fn the_seed_renders_as_one_table() {
        let rs = render(&seed_node1()).expect("render");
        let b = &rs.body;
        assert!(b.contains("\tset snat_0_v4 {\n\t\ttype ipv4_addr; flags interval; auto-merge;\n\t\telements = { 10.5.5.0/24 }\n\t}\n"), "{b}");
        assert!(
            !b.contains("snat_0_v6"),
            "an SNAT to an IPv4 address has no IPv6 set"
        );
        assert!(b.contains(
            "\t\tiifname \"xenbr0\" fib daddr type local meta nfproto ipv4 tcp dport 2201 counter dnat ip to 10.5.5.201:22 comment \"nat.forward[0]\"\n"
        ), "{b}");
        assert!(b.contains(
            "\t\tiifname \"xenbr0\" fib daddr type local meta nfproto ipv4 udp dport 2200-2299 counter dnat ip to 10.5.5.202 comment \"nat.forward[1]\"\n"
        ), "{b}");
        assert!(b.contains(
            "\t\toifname \"guestbr0\" ct status dnat ip daddr 10.5.5.201 tcp dport 22 ct original proto-dst 2201 counter snat ip to 10.5.5.251 comment \"nat.forward[0] full-nat\"\n"
        ), "{b}");
        assert!(b.contains(
            "\t\toifname \"xenbr0\" ip saddr @snat_0_v4 counter snat ip to 192.168.122.11 comment \"nat.source[0]\"\n"
        ), "{b}");
        assert_eq!(b.matches("full-nat").count(), 1, "forward[1] is plain DNAT");
        assert!(b.contains("type nat hook prerouting priority dstnat; policy accept;"));
        assert!(b.contains("type nat hook postrouting priority srcnat; policy accept;"));
        // Full-NAT before source NAT: a forwarded connection is never taken
        // for outbound traffic.
        assert!(b.find("full-nat") < b.find("@snat_0_v4 counter"));
        assert_eq!(rs.shape.rules.get("prerouting"), Some(&2));
        assert_eq!(rs.shape.rules.get("postrouting"), Some(&2));
        assert_eq!(rs.shape.sets, BTreeSet::from(["snat_0_v4".to_string()]));
        assert!(!rs.skeleton.contains("elements"));
    }

    #[test]
    fn masquerade_covers_both_families_with_a_set_each() {
        let spec = NatSpec {
            sources: vec![SourceNat {
                name: "nat.source[0]".into(),
                networks: vec![net("10.5.5.0/24"), net("fd00:5::/64"), net("10.5.5.0/24")],
                out_interface: "wan0".into(),
                to: None,
            }],
            forwards: vec![Forward {
                name: "nat.forward[0]".into(),
                in_interface: "wan0".into(),
                protocol: Protocol::Tcp,
                ports: Ports::one(80).expect("port"),
                to: ip("fd00:5::10"),
                to_port: Some(8080),
                full_nat: Some(FullNat {
                    out_interface: "guestbr0".into(),
                    source: ip("fd00:5::251"),
                }),
            }],
        };
        let b = render(&spec).expect("render").body;
        assert!(
            b.contains("elements = { 10.5.5.0/24 }"),
            "deduplicated: {b}"
        );
        assert!(b.contains("elements = { fd00:5::/64 }"), "{b}");
        assert!(b.contains("ip saddr @snat_0_v4 counter masquerade comment \"nat.source[0]\""));
        assert!(
            b.contains("ip6 saddr @snat_0_v6 counter masquerade comment \"nat.source[0] ipv6\"")
        );
        assert!(
            b.contains("meta nfproto ipv6 tcp dport 80 counter dnat ip6 to [fd00:5::10]:8080"),
            "{b}"
        );
        assert!(b.contains("ct status dnat ip6 daddr fd00:5::10 tcp dport 8080 ct original proto-dst 80 counter snat ip6 to fd00:5::251"), "{b}");
    }

    #[test]
    fn only_changed_networks_make_a_set_only_transaction() {
        let t = Table::new(Family::Inet, "hagw").expect("table");
        let a = render(&seed_node1()).expect("render");
        let mut spec = seed_node1();
        spec.sources[0].networks.push(net("10.6.0.0/16"));
        let b = render(&spec).expect("render");
        assert_eq!(
            set_update_script(&t, &a, &b).as_deref(),
            Some("flush set inet hagw snat_0_v4\nadd element inet hagw snat_0_v4 { 10.5.5.0/24, 10.6.0.0/16 }\n")
        );
        spec.sources[0].networks.clear();
        let c = render(&spec).expect("render");
        assert_eq!(
            set_update_script(&t, &b, &c).as_deref(),
            Some("flush set inet hagw snat_0_v4\n"),
            "an emptied set is only flushed"
        );
        spec.forwards.pop();
        let d = render(&spec).expect("render");
        assert_eq!(
            set_update_script(&t, &c, &d),
            None,
            "a rule change replaces the table"
        );
    }

    #[test]
    fn bad_specs_are_refused_before_nft_sees_them() {
        let mut s = seed_node1();
        s.forwards[0].name = "x\"; flush ruleset".into();
        assert!(matches!(render(&s), Err(NatError::Name(_))));
        let mut s = seed_node1();
        s.forwards[0].in_interface = "eth0\" accept".into();
        assert!(matches!(render(&s), Err(NatError::Interface { .. })));
        let mut s = seed_node1();
        s.sources[0].networks.push(net("fd00::/64"));
        assert!(matches!(render(&s), Err(NatError::Family { .. })));
        let mut s = seed_node1();
        if let Some(f) = s.forwards[0].full_nat.as_mut() {
            f.source = ip("fd00::1");
        }
        assert!(matches!(render(&s), Err(NatError::Family { .. })));
    }

    #[test]
    fn ports_display_and_overlap() {
        let a = Ports::new(2200, 2299).expect("range");
        assert_eq!(a.to_string(), "2200-2299");
        assert_eq!(Ports::one(22).expect("port").to_string(), "22");
        assert!(a.overlaps(&Ports::one(2299).expect("port")));
        assert!(!a.overlaps(&Ports::one(2300).expect("port")));
        assert!(Ports::one(0).is_none());
        assert!(Ports::new(10, 9).is_none());
    }
}
