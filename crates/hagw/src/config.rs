//! The config schema: the TOML an operator writes, parsed and checked as a whole.
//!
//! Parsing happens in two steps so that `hagw check` can list *every* problem at
//! once: serde reads the file into permissive raw structs (unknown keys are
//! collected, not fatal), then [`validate`] turns them into [`Config`], naming the
//! key of each problem. `hagw run` uses the same path, so a config that `check`
//! rejects never starts a half-configured daemon.

use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde::Deserialize;

use hagw_kernel::{fib, netlink::RT_TABLE_MAIN, pinning, policy_routing};
pub use hagw_kernel::{DhcpDefault, StaticRoute};

mod convergent;
pub use convergent::{
    node_names, ForwardHealth, Gateway, Nat, NatForward, NatSource, PerNode, Target,
};

pub const DEFAULT_SOCKET: &str = "/run/hagw/hagw.sock";
pub const DEFAULT_HOLD_TIME: u16 = 90;
pub const DEFAULT_PEER_LIMIT: usize = 20_000;

mod vrrp;
pub use vrrp::{CloudMode, Vrrp, VrrpCloud, VrrpHooks};

/// One problem in a config file, with the key it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Every problem found in one config file.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    pub path: PathBuf,
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} problem(s)",
            self.path.display(),
            self.problems.len()
        )?;
        for p in &self.problems {
            write!(f, "\n  {p}")?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// The validated config the daemon runs with.

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub bgp: Option<Bgp>,
    pub kernel: Option<Kernel>,
    /// Timers for every BFD session (`bfd = true` on a neighbor or range).
    pub bfd: Bfd,
    /// Uplink probes; while any fails, a router withdraws what it announces.
    pub health: Vec<Health>,
    pub policy_routing: Option<PolicyRouting>,
    pub control: Control,
    /// VRRPv3 virtual routers (`[[vrrp]]`): the floating VIPs.
    pub vrrp: Vec<Vrrp>,
    /// Anycast gateways on guest bridges (`[[gateway]]`).
    pub gateways: Vec<Gateway>,
    /// Source NAT and port forwards (`[nat]`).
    pub nat: Option<Nat>,
    /// The node this machine is, for per-node values: set by
    /// `crate::convergent::check_live` (`--node`, the hostname, or which
    /// node's addresses are here).
    pub node: Option<String>,
    /// Virtual networks on this host (`[[vnet]]`).
    pub vnet: Vec<Vnet>,
    /// Virtual networks this router serves (`[[vnet_router]]`).
    pub vnet_router: Vec<VnetRouter>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bfd {
    /// Desired transmit and required receive interval, milliseconds.
    pub interval_ms: u32,
    pub multiplier: u8,
    /// Run the BFD thread at real-time priority (SCHED_FIFO), so a busy
    /// machine cannot delay its packets or its detection into a false Down.
    pub realtime: bool,
}

impl Default for Bfd {
    fn default() -> Bfd {
        Bfd {
            interval_ms: 300,
            multiplier: 3,
            realtime: true,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    Icmp,
    Tcp { port: u16 },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Health {
    pub probe: Probe,
    pub target: IpAddr,
    pub interval_ms: u32,
    /// Consecutive failures that make the uplink down, successes that make it up.
    pub fall: u32,
    pub rise: u32,
    /// `vrrp = "NAME"`: this probe tracks that VRRP instance instead of
    /// gating the BGP adverts.
    pub vrrp: Option<VrrpTrack>,
}

/// What a failing probe does to the VRRP instance it tracks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VrrpTrack {
    /// The `[[vrrp]]` name.
    pub instance: String,
    /// Lower its priority by this much while the probe is down; `None`:
    /// take the instance out (fault: it gives up the VIP and stays out).
    pub priority_decrement: Option<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GracefulRestart {
    pub enabled: bool,
    pub restart_time: u16,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PolicyRouting {
    pub enabled: bool,
    /// The interface left to the main table; default: the one holding the main default route.
    pub primary: Option<String>,
    pub table_base: u32,
    pub ipv6: bool,
    pub gateways: Vec<PolicyGateway>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PolicyGateway {
    pub interface: String,
    pub ipv4: Option<Ipv4Addr>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Bgp {
    pub asn: u32,
    pub router_id: Ipv4Addr,
    /// Addresses to accept connections on; empty = all (0.0.0.0 and ::).
    pub listen: Vec<IpAddr>,
    pub port: u16,
    pub dynamic: Vec<DynamicRange>,
    pub neighbors: Vec<Neighbor>,
    pub graceful_restart: GracefulRestart,
}

/// Which remote AS a peer may have: `external`, `internal` or a number.
pub use hagw_bgp::fsm::PeerAs as RemoteAsn;

/// What we send a peer, shared by all peers of a range.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Announce {
    pub default_originate: bool,
    pub advertise: Vec<IpNet>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DynamicRange {
    pub range: IpNet,
    pub remote_asn: RemoteAsn,
    pub announce: Announce,
    pub hold_time: u16,
    pub limit: usize,
    pub bfd: bool,
    /// Most prefixes one peer may announce (Cease, maximum prefixes, past it).
    pub max_prefixes: Option<u32>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Neighbor {
    pub address: IpAddr,
    pub remote_asn: RemoteAsn,
    pub port: u16,
    pub local_address: Option<IpAddr>,
    pub announce: Announce,
    pub hold_time: u16,
    /// Do not connect, only accept the peer's connection.
    pub passive: bool,
    pub bfd: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MultipathHash {
    L3,
    L4,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Kernel {
    pub install: bool,
    pub multipath_hash: MultipathHash,
    pub maximum_paths: usize,
    pub metric: u32,
    pub table: u32,
    pub dhcp_default: DhcpDefault,
    pub statics: Vec<StaticRoute>,
    /// Keep each connection on the router it started on (issue: hitless heal).
    pub pin_connections: bool,
    /// Contiguous bits of the packet/conntrack marks pinning may use.
    pub pin_mark_mask: u32,
    /// Router slot n uses table pin_table_base + n.
    pub pin_table_base: u32,
}

impl Kernel {
    /// The tables connection pinning may use.
    pub fn pin_tables(&self) -> std::ops::RangeInclusive<u32> {
        let slots = self.pin_mark_mask >> self.pin_mark_mask.trailing_zeros();
        self.pin_table_base + 1..=self.pin_table_base.saturating_add(slots)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Control {
    pub socket: PathBuf,
}

/// One virtual network of a host (`[[vnet]]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vnet {
    pub name: String,
    pub bridge: String,
    /// The bridge's address and the network's prefix, the same on every host.
    pub address: ipnet::Ipv4Net,
    pub address6: Option<ipnet::Ipv6Net>,
    /// The routers (ECMP through each).
    pub routers: Vec<IpAddr>,
    pub table: u32,
    pub rule_priority: u32,
    /// VMs announced beside the learned ones.
    pub vms: Vec<IpAddr>,
    pub mac: Option<[u8; 6]>,
    /// Most VMs announced from this network (beyond it, new ones are not).
    pub max_vms: usize,
}

/// One virtual network a router serves (`[[vnet_router]]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VnetRouter {
    pub network: IpNet,
    /// Held as a host address on `lo`: the VMs' default gateway.
    pub gateway: IpAddr,
    pub masquerade_out: Option<String>,
}

// ---------------------------------------------------------------------------
// Raw, permissive shapes serde reads; every field optional so that validation,
// not serde, reports what is missing.

#[derive(Deserialize, Default)]
struct RawConfig {
    bgp: Option<RawBgp>,
    kernel: Option<RawKernel>,
    bfd: Option<RawBfd>,
    #[serde(default)]
    health: Vec<RawHealth>,
    policy_routing: Option<RawPolicyRouting>,
    control: Option<RawControl>,
    #[serde(default)]
    vrrp: Vec<vrrp::RawVrrp>,
    #[serde(default)]
    gateway: Vec<convergent::RawGateway>,
    nat: Option<convergent::RawNat>,
    #[serde(default)]
    vnet: Vec<RawVnet>,
    #[serde(default)]
    vnet_router: Vec<RawVnetRouter>,
}

#[derive(Deserialize)]
struct RawVnet {
    name: Option<String>,
    bridge: Option<String>,
    address: Option<String>,
    address6: Option<String>,
    /// One address or a list.
    router: Option<toml::Value>,
    table: Option<i64>,
    rule_priority: Option<i64>,
    vms: Option<Vec<String>>,
    mac: Option<String>,
    max_vms: Option<i64>,
}

#[derive(Deserialize)]
struct RawVnetRouter {
    network: Option<String>,
    gateway: Option<String>,
    masquerade_out: Option<String>,
}

#[derive(Deserialize)]
struct RawBfd {
    interval_ms: Option<i64>,
    multiplier: Option<i64>,
    realtime: Option<bool>,
}

#[derive(Deserialize)]
struct RawHealth {
    probe: Option<String>,
    target: Option<String>,
    port: Option<i64>,
    interval_ms: Option<i64>,
    fall: Option<i64>,
    rise: Option<i64>,
    vrrp: Option<String>,
    priority_decrement: Option<i64>,
}

#[derive(Deserialize)]
struct RawGracefulRestart {
    enabled: Option<bool>,
    restart_time: Option<i64>,
}

#[derive(Deserialize)]
struct RawPolicyRouting {
    enabled: Option<bool>,
    primary: Option<String>,
    table_base: Option<i64>,
    ipv6: Option<bool>,
    #[serde(default)]
    gateway: Vec<RawPolicyGateway>,
}

#[derive(Deserialize)]
struct RawPolicyGateway {
    interface: Option<String>,
    ipv4: Option<String>,
}

#[derive(Deserialize)]
struct RawBgp {
    asn: Option<toml::Value>,
    router_id: Option<String>,
    listen: Option<Vec<String>>,
    port: Option<i64>,
    hold_time: Option<i64>,
    #[serde(default)]
    dynamic: Vec<RawDynamic>,
    #[serde(default)]
    neighbor: Vec<RawNeighbor>,
    graceful_restart: Option<RawGracefulRestart>,
}

#[derive(Deserialize)]
struct RawDynamic {
    range: Option<String>,
    remote_asn: Option<toml::Value>,
    default_originate: Option<bool>,
    advertise: Option<Vec<String>>,
    hold_time: Option<i64>,
    limit: Option<i64>,
    bfd: Option<bool>,
    max_prefixes: Option<i64>,
}

#[derive(Deserialize)]
struct RawNeighbor {
    address: Option<String>,
    remote_asn: Option<toml::Value>,
    port: Option<i64>,
    local_address: Option<String>,
    default_originate: Option<bool>,
    advertise: Option<Vec<String>>,
    hold_time: Option<i64>,
    passive: Option<bool>,
    bfd: Option<bool>,
}

#[derive(Deserialize)]
struct RawKernel {
    install: Option<bool>,
    multipath_hash: Option<String>,
    maximum_paths: Option<i64>,
    metric: Option<i64>,
    table: Option<i64>,
    dhcp_default: Option<String>,
    pin_connections: Option<bool>,
    pin_mark_mask: Option<i64>,
    pin_table_base: Option<i64>,
    #[serde(default, rename = "static")]
    statics: Vec<RawStatic>,
}

#[derive(Deserialize)]
struct RawStatic {
    prefix: Option<String>,
    via: Option<String>,
}

#[derive(Deserialize)]
struct RawControl {
    socket: Option<String>,
}

// ---------------------------------------------------------------------------

/// Reads and validates a config file.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        path: path.to_owned(),
        problems: vec![Problem {
            key: "(file)".into(),
            message: format!("cannot read: {e}"),
        }],
    })?;
    parse(&text).map_err(|problems| ConfigError {
        path: path.to_owned(),
        problems,
    })
}

/// Parses and validates config text, returning every problem found.
pub fn parse(text: &str) -> Result<Config, Vec<Problem>> {
    let de = toml::Deserializer::new(text);
    let mut unknown = BTreeSet::new();
    let raw: RawConfig = serde_ignored::deserialize(de, |path| {
        unknown.insert(key_of(&path.to_string()));
    })
    .map_err(|e| {
        vec![Problem {
            key: "(syntax)".into(),
            message: e.to_string().trim().replace('\n', " "),
        }]
    })?;
    let mut v = Validator::default();
    for key in unknown {
        v.problem(&key, "unknown key (misspelt?)");
    }
    let cfg = v.config(raw);
    if v.problems.is_empty() {
        Ok(cfg)
    } else {
        Err(v.problems)
    }
}

/// serde_ignored's "bgp.?.dynamic.0.x" as an operator writes it: "bgp.dynamic[0].x".
fn key_of(path: &str) -> String {
    let mut key = String::new();
    for seg in path.split('.').filter(|s| *s != "?") {
        if seg.bytes().all(|b| b.is_ascii_digit()) {
            key.push_str(&format!("[{seg}]"));
        } else {
            if !key.is_empty() {
                key.push('.');
            }
            key.push_str(seg);
        }
    }
    key
}

#[derive(Default)]
struct Validator {
    problems: Vec<Problem>,
}

impl Validator {
    fn problem(&mut self, key: &str, message: impl Into<String>) {
        self.problems.push(Problem {
            key: key.to_owned(),
            message: message.into(),
        });
    }

    fn config(&mut self, raw: RawConfig) -> Config {
        let bgp = raw.bgp.map(|b| self.bgp(b));
        let kernel = raw.kernel.map(|k| self.kernel(k));
        let bfd = raw.bfd.map_or_else(Bfd::default, |b| self.bfd(b));
        let health: Vec<Health> = raw
            .health
            .into_iter()
            .enumerate()
            .filter_map(|(i, h)| self.health(&format!("health[{i}]"), h))
            .collect();
        let policy_routing = raw.policy_routing.map(|p| self.policy_routing(p));
        let control = Control {
            socket: raw
                .control
                .and_then(|c| c.socket)
                .unwrap_or_else(|| DEFAULT_SOCKET.into())
                .into(),
        };
        if let (Some(k), Some(p)) = (&kernel, &policy_routing) {
            // Both use protocol 199: each would take the other's tables for its own.
            let pin = k.pin_tables();
            let pol = p.table_base + 1..=p.table_base.saturating_add(65_535).min(32_765);
            if k.install
                && k.pin_connections
                && p.enabled
                && pin.start() <= pol.end()
                && pol.start() <= pin.end()
            {
                self.problem(
                    "policy_routing.table_base",
                    format!(
                        "its tables {}..={} overlap connection pinning's {}..={} (kernel.pin_table_base)",
                        pol.start(),
                        pol.end(),
                        pin.start(),
                        pin.end()
                    ),
                );
            }
        }
        let any_vrrp = !raw.vrrp.is_empty();
        let vrrp = self.vrrps(raw.vrrp, &health, bgp.is_some());
        let gateways = self.gateways(raw.gateway);
        let nat = raw.nat.map(|n| self.nat(n, &gateways));
        self.node_tables(&gateways, nat.as_ref());
        let vnet = self.vnets(raw.vnet);
        let vnet_router = self.vnet_routers(raw.vnet_router);
        self.vnet_cross_checks(
            &vnet,
            &vnet_router,
            bgp.as_ref(),
            kernel.as_ref(),
            policy_routing.as_ref(),
        );
        if bgp.is_none()
            && kernel.is_none()
            && policy_routing.is_none()
            && !any_vrrp
            && gateways.is_empty()
            && nat.is_none()
            && vnet.is_empty()
            && vnet_router.is_empty()
        {
            self.problem(
                "(top)",
                "nothing to do: the config has no [bgp], [kernel], [policy_routing], [[vrrp]], [[gateway]], [nat], [[vnet]] or [[vnet_router]]",
            );
        }
        Config {
            bgp,
            kernel,
            bfd,
            health,
            policy_routing,
            control,
            vrrp,
            gateways,
            nat,
            node: None,
            vnet,
            vnet_router,
        }
    }

    fn bfd(&mut self, b: RawBfd) -> Bfd {
        let d = Bfd::default();
        Bfd {
            // RFC 5880 allows less; below 10 ms a 2-core host cannot keep up.
            interval_ms: b
                .interval_ms
                .and_then(|v| self.int("bfd.interval_ms", v, 10, 60_000))
                .unwrap_or(d.interval_ms),
            multiplier: b
                .multiplier
                .and_then(|v| self.int("bfd.multiplier", v, 1, 255))
                .unwrap_or(d.multiplier),
            realtime: b.realtime.unwrap_or(d.realtime),
        }
    }

    fn health(&mut self, key: &str, h: RawHealth) -> Option<Health> {
        let target = match h.target.as_deref() {
            Some(t) => self.ip(&format!("{key}.target"), t),
            None => {
                self.problem(
                    &format!("{key}.target"),
                    "missing (the address to probe through the uplink)",
                );
                None
            }
        };
        let probe = match (h.probe.as_deref(), h.port) {
            (None | Some("icmp"), None) => Some(Probe::Icmp),
            (None | Some("icmp"), Some(_)) => {
                self.problem(&format!("{key}.port"), "only a \"tcp\" probe has a port");
                None
            }
            (Some("tcp"), Some(p)) => self
                .int(&format!("{key}.port"), p, 1, 65535)
                .map(|port| Probe::Tcp { port }),
            (Some("tcp"), None) => {
                self.problem(
                    &format!("{key}.port"),
                    "missing: a \"tcp\" probe needs a port",
                );
                None
            }
            (Some(o), _) => {
                self.problem(
                    &format!("{key}.probe"),
                    format!("\"{o}\" is not \"icmp\" or \"tcp\""),
                );
                None
            }
        };
        let interval_ms = h.interval_ms.map_or(Some(1000), |v| {
            self.int(&format!("{key}.interval_ms"), v, 10, 3_600_000)
        });
        let fall = h
            .fall
            .map_or(Some(3), |v| self.int(&format!("{key}.fall"), v, 1, 1000));
        let rise = h
            .rise
            .map_or(Some(5), |v| self.int(&format!("{key}.rise"), v, 1, 1000));
        let vrrp = self.vrrp_track(key, h.vrrp, h.priority_decrement);
        Some(Health {
            probe: probe?,
            target: target?,
            interval_ms: interval_ms?,
            fall: fall?,
            rise: rise?,
            vrrp,
        })
    }

    fn policy_routing(&mut self, p: RawPolicyRouting) -> PolicyRouting {
        let table_base = p
            .table_base
            .map_or(Some(policy_routing::DEFAULT_TABLE_BASE), |v| {
                // Tables 253-255 are the kernel's own; leave room for ifindex above the base.
                self.int(
                    "policy_routing.table_base",
                    v,
                    256,
                    i64::from(u32::MAX) - 65_536,
                )
            })
            .unwrap_or(policy_routing::DEFAULT_TABLE_BASE);
        let mut gateways: Vec<PolicyGateway> = Vec::new();
        for (i, g) in p.gateway.into_iter().enumerate() {
            let key = format!("policy_routing.gateway[{i}]");
            let Some(interface) = g.interface else {
                self.problem(&format!("{key}.interface"), "missing");
                continue;
            };
            let ipv4 = g.ipv4.as_deref().and_then(|a| match a.parse::<Ipv4Addr>() {
                Ok(a) => Some(a),
                Err(_) => {
                    self.problem(
                        &format!("{key}.ipv4"),
                        format!("\"{a}\" is not an IPv4 address"),
                    );
                    None
                }
            });
            if gateways.iter().any(|o| o.interface == interface) {
                self.problem(
                    &format!("{key}.interface"),
                    format!("\"{interface}\" has two gateway tables"),
                );
            }
            gateways.push(PolicyGateway { interface, ipv4 });
        }
        PolicyRouting {
            enabled: p.enabled.unwrap_or(true),
            primary: p.primary,
            table_base,
            ipv6: p.ipv6.unwrap_or(true),
            gateways,
        }
    }

    fn int<T: TryFrom<i64>>(&mut self, key: &str, v: i64, lo: i64, hi: i64) -> Option<T> {
        if v < lo || v > hi {
            self.problem(key, format!("{v} is out of range {lo}..={hi}"));
            return None;
        }
        T::try_from(v).ok()
    }

    fn asn(&mut self, key: &str, v: &toml::Value) -> Option<u32> {
        match v {
            toml::Value::Integer(n) => self.int(key, *n, 1, i64::from(u32::MAX)),
            other => {
                self.problem(key, format!("expected an AS number, got {other}"));
                None
            }
        }
    }

    fn remote_asn(&mut self, key: &str, v: Option<&toml::Value>) -> RemoteAsn {
        match v {
            None => {
                self.problem(key, "missing (\"external\", \"internal\" or an AS number)");
                RemoteAsn::External
            }
            Some(toml::Value::String(s)) => match s.as_str() {
                "external" => RemoteAsn::External,
                "internal" => RemoteAsn::Internal,
                other => {
                    self.problem(
                        key,
                        format!("\"{other}\" is not \"external\", \"internal\" or an AS number"),
                    );
                    RemoteAsn::External
                }
            },
            Some(v) => self
                .asn(key, v)
                .map_or(RemoteAsn::External, RemoteAsn::Exact),
        }
    }

    fn ip(&mut self, key: &str, s: &str) -> Option<IpAddr> {
        match s.parse::<IpAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                self.problem(key, format!("\"{s}\" is not an IP address"));
                None
            }
        }
    }

    fn prefix(&mut self, key: &str, s: &str) -> Option<IpNet> {
        match s.parse::<IpNet>() {
            Ok(p) if p.trunc() != p => {
                self.problem(
                    key,
                    format!("\"{s}\" has host bits set (did you mean {}?)", p.trunc()),
                );
                None
            }
            Ok(p) => Some(p),
            Err(_) => {
                self.problem(key, format!("\"{s}\" is not a prefix like 10.0.0.0/16"));
                None
            }
        }
    }

    fn prefixes(&mut self, key: &str, v: Option<Vec<String>>) -> Vec<IpNet> {
        v.unwrap_or_default()
            .iter()
            .enumerate()
            .filter_map(|(i, s)| self.prefix(&format!("{key}[{i}]"), s))
            .collect()
    }

    fn hold_time(&mut self, key: &str, v: Option<i64>, default: u16) -> u16 {
        match v {
            None => default,
            Some(1) | Some(2) => {
                self.problem(
                    key,
                    "must be 0 (no keepalives) or at least 3 seconds (RFC 4271)",
                );
                default
            }
            Some(n) => self.int(key, n, 0, 65535).unwrap_or(default),
        }
    }

    fn bgp(&mut self, b: RawBgp) -> Bgp {
        let asn = match &b.asn {
            Some(v) => self.asn("bgp.asn", v).unwrap_or(0),
            None => {
                self.problem("bgp.asn", "missing");
                0
            }
        };
        let router_id = match b.router_id.as_deref() {
            Some(s) => match s.parse::<Ipv4Addr>() {
                Ok(a) if a.is_unspecified() => {
                    self.problem("bgp.router_id", "0.0.0.0 is not a valid BGP identifier");
                    a
                }
                Ok(a) => a,
                Err(_) => {
                    self.problem("bgp.router_id", format!("\"{s}\" is not an IPv4 address"));
                    Ipv4Addr::UNSPECIFIED
                }
            },
            None => {
                self.problem(
                    "bgp.router_id",
                    "missing (an IPv4 address, usually the router's own)",
                );
                Ipv4Addr::UNSPECIFIED
            }
        };
        let listen = b
            .listen
            .unwrap_or_default()
            .iter()
            .enumerate()
            .filter_map(|(i, s)| self.ip(&format!("bgp.listen[{i}]"), s))
            .collect();
        let port = b
            .port
            .map_or(Some(179), |p| self.int("bgp.port", p, 1, 65535))
            .unwrap_or(179);
        let hold = self.hold_time("bgp.hold_time", b.hold_time, DEFAULT_HOLD_TIME);

        let mut dynamic = Vec::new();
        for (i, d) in b.dynamic.into_iter().enumerate() {
            let key = format!("bgp.dynamic[{i}]");
            let range = match d.range.as_deref() {
                Some(s) => self.prefix(&format!("{key}.range"), s),
                None => {
                    self.problem(&format!("{key}.range"), "missing");
                    None
                }
            };
            let remote_asn = self.remote_asn(&format!("{key}.remote_asn"), d.remote_asn.as_ref());
            let advertise = self.prefixes(&format!("{key}.advertise"), d.advertise);
            let hold_time = self.hold_time(&format!("{key}.hold_time"), d.hold_time, hold);
            let limit = d
                .limit
                .map_or(Some(DEFAULT_PEER_LIMIT), |l| {
                    self.int(&format!("{key}.limit"), l, 1, 1_000_000)
                })
                .unwrap_or(DEFAULT_PEER_LIMIT);
            let max_prefixes = d
                .max_prefixes
                .and_then(|m| self.int(&format!("{key}.max_prefixes"), m, 1, i64::from(u32::MAX)));
            if let Some(range) = range {
                dynamic.push(DynamicRange {
                    max_prefixes,
                    bfd: d.bfd.unwrap_or(false),
                    range,
                    remote_asn,
                    announce: Announce {
                        default_originate: d.default_originate.unwrap_or(false),
                        advertise,
                    },
                    hold_time,
                    limit,
                });
            }
        }
        for (i, a) in dynamic.iter().enumerate() {
            for (j, b) in dynamic.iter().enumerate().skip(i + 1) {
                if a.range.contains(&b.range) || b.range.contains(&a.range) {
                    self.problem(
                        &format!("bgp.dynamic[{j}].range"),
                        format!(
                            "{} overlaps bgp.dynamic[{i}].range {}: a connecting peer must match one range",
                            b.range, a.range
                        ),
                    );
                }
            }
        }

        let mut neighbors: Vec<Neighbor> = Vec::new();
        for (i, n) in b.neighbor.into_iter().enumerate() {
            let key = format!("bgp.neighbor[{i}]");
            let address = match n.address.as_deref() {
                Some(s) => self.ip(&format!("{key}.address"), s),
                None => {
                    self.problem(&format!("{key}.address"), "missing");
                    None
                }
            };
            let remote_asn = self.remote_asn(&format!("{key}.remote_asn"), n.remote_asn.as_ref());
            let local_address = n
                .local_address
                .as_deref()
                .and_then(|s| self.ip(&format!("{key}.local_address"), s));
            let port = n
                .port
                .map_or(Some(179), |p| self.int(&format!("{key}.port"), p, 1, 65535))
                .unwrap_or(179);
            let advertise = self.prefixes(&format!("{key}.advertise"), n.advertise);
            let hold_time = self.hold_time(&format!("{key}.hold_time"), n.hold_time, hold);
            let Some(address) = address else { continue };
            if let (Some(l), a) = (local_address, address) {
                if l.is_ipv4() != a.is_ipv4() {
                    self.problem(
                        &format!("{key}.local_address"),
                        format!("{l} and neighbor {a} are of different address families"),
                    );
                }
            }
            if neighbors.iter().any(|o| o.address == address) {
                self.problem(
                    &format!("{key}.address"),
                    format!("{address} is configured twice"),
                );
            }
            neighbors.push(Neighbor {
                bfd: n.bfd.unwrap_or(false),
                address,
                remote_asn,
                port,
                local_address,
                announce: Announce {
                    default_originate: n.default_originate.unwrap_or(false),
                    advertise,
                },
                hold_time,
                passive: n.passive.unwrap_or(false),
            });
        }
        let graceful_restart = match b.graceful_restart {
            None => GracefulRestart {
                enabled: false,
                restart_time: 120,
            },
            Some(g) => GracefulRestart {
                enabled: g.enabled.unwrap_or(true),
                // RFC 4724 §3: the Restart Time field has 12 bits.
                restart_time: g
                    .restart_time
                    .map_or(Some(120), |t| {
                        self.int("bgp.graceful_restart.restart_time", t, 1, 4095)
                    })
                    .unwrap_or(120),
            },
        };
        Bgp {
            asn,
            router_id,
            listen,
            port,
            dynamic,
            neighbors,
            graceful_restart,
        }
    }

    fn kernel(&mut self, k: RawKernel) -> Kernel {
        let multipath_hash = match k.multipath_hash.as_deref() {
            None | Some("l4") => MultipathHash::L4,
            Some("l3") => MultipathHash::L3,
            Some(o) => {
                self.problem(
                    "kernel.multipath_hash",
                    format!("\"{o}\" is not \"l3\" or \"l4\""),
                );
                MultipathHash::L4
            }
        };
        let dhcp_default = match k.dhcp_default.as_deref() {
            None | Some("outrank") => DhcpDefault::Outrank,
            Some("remove") => DhcpDefault::Remove,
            Some("keep") => DhcpDefault::Keep,
            Some(o) => {
                self.problem(
                    "kernel.dhcp_default",
                    format!("\"{o}\" is not \"outrank\", \"remove\" or \"keep\""),
                );
                DhcpDefault::Outrank
            }
        };
        let maximum_paths = k
            .maximum_paths
            .map_or(Some(8), |n| self.int("kernel.maximum_paths", n, 1, 256))
            .unwrap_or(8);
        let metric = k
            .metric
            .map_or(Some(fib::DEFAULT_METRIC), |n| {
                self.int("kernel.metric", n, 0, i64::from(u32::MAX))
            })
            .unwrap_or(fib::DEFAULT_METRIC);
        let table = k
            .table
            .map_or(Some(RT_TABLE_MAIN), |n| {
                self.int("kernel.table", n, 1, i64::from(u32::MAX))
            })
            .unwrap_or(RT_TABLE_MAIN);
        let pin_mark_mask = match k.pin_mark_mask {
            None => pinning::DEFAULT_MARK_MASK,
            Some(m) => match u32::try_from(m) {
                Ok(m)
                    if m != 0 && {
                        let run = m >> m.trailing_zeros();
                        run & run.wrapping_add(1) == 0 && run <= 0xffff
                    } =>
                {
                    m
                }
                _ => {
                    self.problem(
                        "kernel.pin_mark_mask",
                        format!("{m:#x} is not a run of 1 to 16 contiguous bits (e.g. 0x00ff0000)"),
                    );
                    pinning::DEFAULT_MARK_MASK
                }
            },
        };
        let pin_table_base = k
            .pin_table_base
            .map_or(Some(pinning::DEFAULT_TABLE_BASE), |n| {
                self.int("kernel.pin_table_base", n, 256, 2_000_000_000)
            })
            .unwrap_or(pinning::DEFAULT_TABLE_BASE);
        let mut statics = Vec::new();
        for (i, s) in k.statics.into_iter().enumerate() {
            let key = format!("kernel.static[{i}]");
            let prefix = match s.prefix.as_deref() {
                Some(p) => self.prefix(&format!("{key}.prefix"), p),
                None => {
                    self.problem(&format!("{key}.prefix"), "missing");
                    None
                }
            };
            let via = match s.via.as_deref() {
                Some(v) => self.ip(&format!("{key}.via"), v),
                None => {
                    self.problem(&format!("{key}.via"), "missing");
                    None
                }
            };
            if let (Some(prefix), Some(via)) = (prefix, via) {
                if prefix.addr().is_ipv4() != via.is_ipv4() {
                    self.problem(
                        &format!("{key}.via"),
                        format!("{via} is not of the same address family as {prefix}"),
                    );
                    continue;
                }
                statics.push(StaticRoute { prefix, via });
            }
        }
        Kernel {
            install: k.install.unwrap_or(true),
            multipath_hash,
            maximum_paths,
            metric,
            table,
            dhcp_default,
            statics,
            pin_connections: k.pin_connections.unwrap_or(true),
            pin_mark_mask,
            pin_table_base,
        }
    }
}

// ---------------------------------------------------------------------------
// Virtual networks (`[[vnet]]` on hosts, `[[vnet_router]]` on routers).

/// Default `max_vms` of a `[[vnet]]`.
pub const DEFAULT_MAX_VMS: usize = 4096;

impl Validator {
    fn vnets(&mut self, raw: Vec<RawVnet>) -> Vec<Vnet> {
        let mut out: Vec<Vnet> = Vec::new();
        for (i, v) in raw.into_iter().enumerate() {
            let key = format!("vnet[{i}]");
            let name = self.vnet_name(&format!("{key}.name"), v.name);
            let bridge = match v.bridge {
                Some(b) if hagw_kernel::nft::valid_interface(&b) => Some(b),
                Some(b) => {
                    self.problem(
                        &format!("{key}.bridge"),
                        format!("\"{b}\" is not an interface name (at most 15 of letters, digits and - _ . @)"),
                    );
                    None
                }
                None => {
                    self.problem(&format!("{key}.bridge"), "missing");
                    None
                }
            };
            let address = match v.address.as_deref() {
                Some(a) => match a.parse::<ipnet::Ipv4Net>() {
                    Ok(n) if n.prefix_len() >= 31 => {
                        self.problem(
                            &format!("{key}.address"),
                            format!("\"{a}\": the network needs room for VMs (a prefix of /30 or shorter)"),
                        );
                        None
                    }
                    Ok(n) if n.addr() == n.network() || n.addr() == n.broadcast() => {
                        self.problem(
                            &format!("{key}.address"),
                            format!(
                                "\"{a}\" is the network's {} address, not one a bridge can use",
                                if n.addr() == n.network() {
                                    "network"
                                } else {
                                    "broadcast"
                                }
                            ),
                        );
                        None
                    }
                    Ok(n) => Some(n),
                    Err(_) => {
                        self.problem(
                            &format!("{key}.address"),
                            format!("\"{a}\" is not an IPv4 address with its prefix, like 10.10.10.2/24"),
                        );
                        None
                    }
                },
                None => {
                    self.problem(
                        &format!("{key}.address"),
                        "missing (the bridge's address and the network, like 10.10.10.2/24, the same on every host)",
                    );
                    None
                }
            };
            let address6 = v.address6.as_deref().and_then(|a| match a.parse::<ipnet::Ipv6Net>() {
                Ok(n) if n.prefix_len() < 128 && n.addr() != n.network() => Some(n),
                _ => {
                    self.problem(
                        &format!("{key}.address6"),
                        format!("\"{a}\" is not an IPv6 address inside its prefix, like fd00:10::1/64"),
                    );
                    None
                }
            });
            let routers = self.routers(&format!("{key}.router"), v.router.as_ref());
            let table = match v.table {
                Some(t) => self.vnet_table(&format!("{key}.table"), t),
                None => {
                    self.problem(
                        &format!("{key}.table"),
                        "missing (the routing table of this network, e.g. 101)",
                    );
                    None
                }
            };
            let rule_priority = match v.rule_priority {
                Some(p) => self.int(&format!("{key}.rule_priority"), p, 1, 32_765),
                None => table.map(|t| t.min(32_765)),
            };
            let mut vms = Vec::new();
            for (j, s) in v.vms.unwrap_or_default().iter().enumerate() {
                let vkey = format!("{key}.vms[{j}]");
                let Some(a) = self.ip(&vkey, s) else { continue };
                let inside = match (a, address, address6) {
                    (IpAddr::V4(v4), Some(n), _) => {
                        n.trunc().contains(&v4)
                            && v4 != n.addr()
                            && v4 != n.network()
                            && v4 != n.broadcast()
                    }
                    (IpAddr::V6(v6), _, Some(n)) => n.trunc().contains(&v6) && v6 != n.addr(),
                    (_, None, _) => true, // already reported
                    (IpAddr::V6(_), _, None) => false,
                };
                if !inside {
                    let net = match a {
                        IpAddr::V4(_) => address.map(|n| n.trunc().to_string()),
                        IpAddr::V6(_) => address6.map(|n| n.trunc().to_string()),
                    };
                    self.problem(
                        &vkey,
                        match net {
                            Some(n) => format!("{a} is outside the network {n} (or is its bridge, network or broadcast address)"),
                            None => format!("{a} is IPv6 but the network has no address6"),
                        },
                    );
                    continue;
                }
                vms.push(a);
            }
            let mac = v.mac.as_deref().and_then(|m| match parse_mac(m) {
                Some(mac) if mac[0] & 1 == 0 => Some(mac),
                _ => {
                    self.problem(
                        &format!("{key}.mac"),
                        format!("\"{m}\" is not a unicast MAC address like 02:68:0a:0a:0a:00"),
                    );
                    None
                }
            });
            let max_vms = v
                .max_vms
                .map_or(Some(DEFAULT_MAX_VMS), |m| {
                    self.int(&format!("{key}.max_vms"), m, 1, 1_000_000)
                })
                .unwrap_or(DEFAULT_MAX_VMS);
            for (r, rk) in routers.iter().zip(0..) {
                let fits = match r {
                    IpAddr::V4(_) => true,
                    IpAddr::V6(_) => address6.is_some(),
                };
                if !fits {
                    self.problem(
                        &format!("{key}.router[{rk}]"),
                        format!("{r} is IPv6 but the network has no address6"),
                    );
                }
            }
            let (Some(name), Some(bridge), Some(address), Some(table), Some(rule_priority)) =
                (name, bridge, address, table, rule_priority)
            else {
                continue;
            };
            for (j, o) in out.iter().enumerate() {
                let clash = if o.name == name {
                    Some(("name", format!("\"{name}\" is also vnet[{j}]'s name")))
                } else if o.bridge == bridge {
                    Some(("bridge", format!("{bridge} is also vnet[{j}]'s bridge")))
                } else if o.table == table {
                    Some(("table", format!("{table} is also vnet[{j}]'s table")))
                } else if o.address.trunc().contains(&address.trunc().network())
                    || address.trunc().contains(&o.address.trunc().network())
                {
                    Some((
                        "address",
                        format!(
                            "{} overlaps vnet[{j}]'s network {}",
                            address.trunc(),
                            o.address.trunc()
                        ),
                    ))
                } else {
                    None
                };
                if let Some((k, m)) = clash {
                    self.problem(&format!("{key}.{k}"), m);
                }
            }
            out.push(Vnet {
                name,
                bridge,
                address,
                address6,
                routers,
                table,
                rule_priority,
                vms,
                mac,
                max_vms,
            });
        }
        out
    }

    fn vnet_name(&mut self, key: &str, v: Option<String>) -> Option<String> {
        match v {
            Some(n)
                if !n.is_empty()
                    && n.len() <= 32
                    && n.chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) =>
            {
                Some(n)
            }
            Some(n) => {
                self.problem(
                    key,
                    format!("\"{n}\": use 1 to 32 of letters, digits and - _ ."),
                );
                None
            }
            None => {
                self.problem(key, "missing");
                None
            }
        }
    }

    fn routers(&mut self, key: &str, v: Option<&toml::Value>) -> Vec<IpAddr> {
        let list: Vec<(String, String)> = match v {
            None => {
                self.problem(
                    key,
                    "missing (the router's address, or a list of them for ECMP)",
                );
                return Vec::new();
            }
            Some(toml::Value::String(s)) => vec![(key.to_string(), s.clone())],
            Some(toml::Value::Array(a)) if !a.is_empty() => a
                .iter()
                .enumerate()
                .map(|(i, x)| (format!("{key}[{i}]"), x.as_str().unwrap_or("").to_string()))
                .collect(),
            Some(other) => {
                self.problem(
                    key,
                    format!("expected an address or a list of addresses, got {other}"),
                );
                return Vec::new();
            }
        };
        let mut out: Vec<IpAddr> = Vec::new();
        for (k, s) in list {
            if let Some(a) = self.ip(&k, &s) {
                if out.contains(&a) {
                    self.problem(&k, format!("{a} is listed twice"));
                } else {
                    out.push(a);
                }
            }
        }
        out
    }

    /// A table a virtual network may use: not the kernel's own (253-255,
    /// 0), and (checked later) not one of pinning's or policy routing's.
    fn vnet_table(&mut self, key: &str, t: i64) -> Option<u32> {
        let t: u32 = self.int(key, t, 1, i64::from(u32::MAX))?;
        if (253..=255).contains(&t) {
            self.problem(
                key,
                format!("{t} is one of the kernel's own tables (253 default, 254 main, 255 local)"),
            );
            return None;
        }
        Some(t)
    }

    fn vnet_routers(&mut self, raw: Vec<RawVnetRouter>) -> Vec<VnetRouter> {
        let mut out: Vec<VnetRouter> = Vec::new();
        for (i, r) in raw.into_iter().enumerate() {
            let key = format!("vnet_router[{i}]");
            let network = match r.network.as_deref() {
                Some(n) => self.prefix(&format!("{key}.network"), n),
                None => {
                    self.problem(&format!("{key}.network"), "missing");
                    None
                }
            };
            let gateway = match r.gateway.as_deref() {
                Some(g) => self.ip(&format!("{key}.gateway"), g),
                None => {
                    self.problem(
                        &format!("{key}.gateway"),
                        "missing (the VMs' default gateway, held on lo)",
                    );
                    None
                }
            };
            let masquerade_out = match r.masquerade_out {
                Some(d) if hagw_kernel::nft::valid_interface(&d) => Some(d),
                Some(d) => {
                    self.problem(
                        &format!("{key}.masquerade_out"),
                        format!("\"{d}\" is not an interface name"),
                    );
                    None
                }
                None => None,
            };
            let (Some(network), Some(gateway)) = (network, gateway) else {
                continue;
            };
            if !network.contains(&gateway)
                || gateway == network.network()
                || (network.addr().is_ipv4() && gateway == network.broadcast())
            {
                self.problem(
                    &format!("{key}.gateway"),
                    format!("{gateway} is not an address inside the network {network}"),
                );
                continue;
            }
            if let Some(j) = out
                .iter()
                .position(|o| o.network.contains(&network) || network.contains(&o.network))
            {
                self.problem(
                    &format!("{key}.network"),
                    format!(
                        "{network} overlaps vnet_router[{j}].network {}",
                        out[j].network
                    ),
                );
                continue;
            }
            out.push(VnetRouter {
                network,
                gateway,
                masquerade_out,
            });
        }
        out
    }

    /// What needs several sections: tables against pinning's and policy
    /// routing's, routers that must be BGP neighbors, a router role that
    /// must install routes and listen.
    fn vnet_cross_checks(
        &mut self,
        vnet: &[Vnet],
        vnet_router: &[VnetRouter],
        bgp: Option<&Bgp>,
        kernel: Option<&Kernel>,
        policy: Option<&PolicyRouting>,
    ) {
        for (i, v) in vnet.iter().enumerate() {
            if let Some(k) = kernel.filter(|k| k.install && k.pin_connections) {
                let pin = k.pin_tables();
                if pin.contains(&v.table) {
                    self.problem(
                        &format!("vnet[{i}].table"),
                        format!("{} is one of connection pinning's tables {}..={} (kernel.pin_table_base)", v.table, pin.start(), pin.end()),
                    );
                }
            }
            if let Some(p) = policy.filter(|p| p.enabled) {
                let pol = p.table_base + 1..=p.table_base.saturating_add(65_535).min(32_765);
                if pol.contains(&v.table) {
                    self.problem(
                        &format!("vnet[{i}].table"),
                        format!(
                            "{} is in policy routing's tables {}..={} (policy_routing.table_base)",
                            v.table,
                            pol.start(),
                            pol.end()
                        ),
                    );
                }
            }
            if let Some(k) = kernel.filter(|k| k.install) {
                if k.table == v.table {
                    self.problem(
                        &format!("vnet[{i}].table"),
                        format!(
                            "{} is the table hagw installs BGP routes in (kernel.table)",
                            v.table
                        ),
                    );
                }
            }
            if let Some(b) = bgp {
                for (j, r) in v.routers.iter().enumerate() {
                    if !b.neighbors.iter().any(|n| n.address == *r) {
                        let k = if v.routers.len() == 1 {
                            format!("vnet[{i}].router")
                        } else {
                            format!("vnet[{i}].router[{j}]")
                        };
                        self.problem(
                            &k,
                            format!("{r} is not a [[bgp.neighbor]]: the VMs would not be announced to it"),
                        );
                    }
                }
            }
        }
        if !vnet_router.is_empty() {
            if !kernel.is_some_and(|k| k.install) {
                self.problem(
                    "vnet_router",
                    "needs [kernel] with install = true: the VMs' /32s go into the kernel",
                );
            }
            if bgp.is_none_or(|b| b.dynamic.is_empty()) {
                self.problem(
                    "vnet_router",
                    "needs a [[bgp.dynamic]] listen range: the hosts announce their VMs through it",
                );
            }
        }
    }
}

/// `aa:bb:cc:dd:ee:ff`.
fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        return None;
    }
    let mut mac = [0u8; 6];
    for (m, p) in mac.iter_mut().zip(parts) {
        if p.len() != 2 {
            return None;
        }
        *m = u8::from_str_radix(p, 16).ok()?;
    }
    Some(mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ISSUE_EXAMPLE: &str = r#"
[bgp]
asn = 65000
router_id = "10.200.0.1"
listen = ["10.200.0.1"]

[[bgp.dynamic]]
range = "10.200.0.0/16"
remote_asn = "external"
default_originate = true
advertise = ["10.0.0.0/16"]
hold_time = 9
limit = 20000

[[bgp.neighbor]]
address = "10.200.0.2"
remote_asn = 65001

[control]
socket = "/run/hagw/hagw.sock"
"#;

    fn problems(text: &str) -> Vec<String> {
        match parse(text) {
            Ok(_) => vec![],
            Err(p) => p.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn the_issue_example_parses_as_written() {
        let c = parse(ISSUE_EXAMPLE).expect("valid");
        let b = c.bgp.expect("bgp");
        assert_eq!(b.asn, 65000);
        assert_eq!(b.listen, vec!["10.200.0.1".parse::<IpAddr>().expect("ip")]);
        assert_eq!(b.dynamic[0].remote_asn, RemoteAsn::External);
        assert!(b.dynamic[0].announce.default_originate);
        assert_eq!(b.dynamic[0].hold_time, 9);
        assert_eq!(b.dynamic[0].limit, 20000);
        assert_eq!(b.neighbors[0].remote_asn, RemoteAsn::Exact(65001));
        assert_eq!(c.control.socket, PathBuf::from("/run/hagw/hagw.sock"));
    }

    #[test]
    fn every_problem_is_reported_with_its_key() {
        let p = problems(
            r#"
[bgp]
asn = 0
router_id = "nope"
colour = "blue"
[[bgp.dynamic]]
range = "10.200.0.1/16"
remote_asn = "sideways"
hold_time = 2
"#,
        );
        let joined = p.join("\n");
        assert!(joined.contains("bgp.asn: 0 is out of range"), "{joined}");
        assert!(joined.contains("bgp.router_id: \"nope\""), "{joined}");
        assert!(joined.contains("bgp.colour: unknown key"), "{joined}");
        assert!(
            joined.contains("bgp.dynamic[0].range: \"10.200.0.1/16\" has host bits"),
            "{joined}"
        );
        assert!(
            joined.contains("bgp.dynamic[0].remote_asn: \"sideways\""),
            "{joined}"
        );
        assert!(
            joined.contains("bgp.dynamic[0].hold_time: must be 0"),
            "{joined}"
        );
        assert_eq!(p.len(), 6, "{joined}");
    }

    #[test]
    fn unknown_keys_in_tables_of_arrays_are_named_like_the_file() {
        let p = problems(
            "[bgp]\nasn = 1\nrouter_id = \"1.1.1.1\"\n[[bgp.dynamic]]\nrange = \"10.0.0.0/8\"\nremote_asn = 2\ndefault_orginate = true\n",
        );
        assert_eq!(
            p,
            vec!["bgp.dynamic[0].default_orginate: unknown key (misspelt?)"]
        );
    }

    #[test]
    fn syntax_errors_are_reported_not_panicked() {
        let p = problems("[bgp\nasn = ");
        assert_eq!(p.len(), 1);
        assert!(p[0].starts_with("(syntax)"));
    }

    #[test]
    fn overlapping_ranges_are_rejected() {
        let p = problems(
            r#"
[bgp]
asn = 65000
router_id = "10.0.0.1"
[[bgp.dynamic]]
range = "10.0.0.0/8"
remote_asn = "external"
[[bgp.dynamic]]
range = "10.1.0.0/16"
remote_asn = "internal"
"#,
        );
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].contains("overlaps"));
    }

    #[test]
    fn kernel_keys_parse_with_defaults() {
        let c = parse(
            r#"
[kernel]
install = true
multipath_hash = "l4"
maximum_paths = 8
metric = 20
dhcp_default = "remove"
[[kernel.static]]
prefix = "10.0.0.0/16"
via = "192.168.100.1"
"#,
        )
        .expect("valid");
        let k = c.kernel.expect("kernel");
        assert_eq!(k.dhcp_default, DhcpDefault::Remove);
        assert_eq!(k.table, 254);
        assert_eq!(k.statics.len(), 1);
    }

    #[test]
    fn failover_and_policy_routing_keys_parse_as_written() {
        let c = parse(
            r#"
[bgp]
asn = 65100
router_id = "192.168.100.100"
[[bgp.neighbor]]
address = "192.168.100.20"
remote_asn = 65000
bfd = true
[bgp.graceful_restart]
enabled = true
restart_time = 120

[bfd]
interval_ms = 10
multiplier = 3

[[health]]
probe = "icmp"
target = "203.0.113.1"
interval_ms = 200
fall = 3
rise = 5

[[health]]
probe = "tcp"
target = "203.0.113.1"
port = 443

[policy_routing]
enabled = true
primary = "ens5"
table_base = 10000
ipv6 = true
[[policy_routing.gateway]]
interface = "ens6"
ipv4 = "10.0.0.1"
"#,
        )
        .expect("valid");
        let b = c.bgp.expect("bgp");
        assert!(b.neighbors[0].bfd);
        assert_eq!(
            b.graceful_restart,
            GracefulRestart {
                enabled: true,
                restart_time: 120
            }
        );
        assert_eq!(
            c.bfd,
            Bfd {
                interval_ms: 10,
                multiplier: 3,
                realtime: true,
            }
        );
        assert_eq!(c.health[0].probe, Probe::Icmp);
        assert_eq!(c.health[1].probe, Probe::Tcp { port: 443 });
        assert_eq!((c.health[0].fall, c.health[0].rise), (3, 5));
        let p = c.policy_routing.expect("policy_routing");
        assert_eq!(p.primary.as_deref(), Some("ens5"));
        assert_eq!(p.gateways[0].ipv4, Some(Ipv4Addr::new(10, 0, 0, 1)));
    }

    #[test]
    fn a_tcp_probe_without_a_port_is_a_problem() {
        let p = problems("[[health]]\nprobe = \"tcp\"\ntarget = \"203.0.113.1\"\n[kernel]\n");
        assert_eq!(
            p,
            vec!["health[0].port: missing: a \"tcp\" probe needs a port"]
        );
    }

    #[test]
    fn policy_routing_tables_may_not_overlap_pinning_tables() {
        let p = problems("[kernel]\n[policy_routing]\ntable_base = 9000\n");
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].starts_with("policy_routing.table_base: its tables 9001..=32765 overlap connection pinning's 9001..=9255"), "{p:?}");
        assert!(problems(
            "[kernel]\npin_table_base = 40000\n[policy_routing]\ntable_base = 9000\n"
        )
        .is_empty());
        assert!(
            problems("[kernel]\n[policy_routing]\n").is_empty(),
            "the defaults do not overlap"
        );
    }

    #[test]
    fn a_pin_mark_mask_must_be_contiguous_bits() {
        assert!(problems("[kernel]\npin_mark_mask = 0x00ff0000\n").is_empty());
        let p = problems("[kernel]\npin_mark_mask = 0x0f0f\n");
        assert!(
            p[0].starts_with("kernel.pin_mark_mask: 0xf0f is not a run"),
            "{p:?}"
        );
    }

    const VNET_HOST: &str = r#"
[bgp]
asn = 65100
router_id = "192.168.56.103"
[[bgp.neighbor]]
address = "192.168.56.101"
remote_asn = 65000

[[vnet]]
name = "net1"
bridge = "br_net1"
address = "10.10.10.2/24"      # the same on every host
router = "192.168.56.101"      # or several, for ECMP through each
table = 101
vms = ["10.10.10.10"]          # optional static entries beside the learned ones
"#;

    const VNET_ROUTER: &str = r#"
[bgp]
asn = 65000
router_id = "192.168.56.101"
[[bgp.dynamic]]
range = "192.168.56.0/24"
remote_asn = "external"
max_prefixes = 100
[kernel]
install = true

[[vnet_router]]
network = "10.10.10.0/24"
gateway = "10.10.10.1"         # /32 on loopback: the VMs' default gateway
masquerade_out = "enp0s3"      # optional: NAT the network out of this interface
"#;

    #[test]
    fn the_issue_vnet_examples_parse_as_written() {
        let c = parse(VNET_HOST).expect("host");
        let v = &c.vnet[0];
        assert_eq!(
            (v.name.as_str(), v.bridge.as_str(), v.table),
            ("net1", "br_net1", 101)
        );
        assert_eq!(v.rule_priority, 101);
        assert_eq!(
            v.routers,
            vec!["192.168.56.101".parse::<IpAddr>().expect("ip")]
        );
        assert_eq!(v.vms, vec!["10.10.10.10".parse::<IpAddr>().expect("ip")]);
        let c = parse(VNET_ROUTER).expect("router");
        assert_eq!(c.vnet_router[0].masquerade_out.as_deref(), Some("enp0s3"));
        assert_eq!(c.bgp.expect("bgp").dynamic[0].max_prefixes, Some(100));
    }

    #[test]
    fn bad_virtual_networks_are_refused_with_their_keys() {
        let host = VNET_HOST
            .replace("table = 101", "table = 9001")
            .replace("\"10.10.10.10\"", "\"10.10.20.10\"")
            .replace(
                "router = \"192.168.56.101\"",
                "router = [\"192.168.56.101\", \"192.168.56.102\"]",
            );
        let p = problems(&format!("{host}\n[kernel]\n"));
        let joined = p.join("\n");
        assert!(
            joined.contains("vnet[0].table: 9001 is one of connection pinning's tables"),
            "{joined}"
        );
        assert!(
            joined.contains("vnet[0].vms[0]: 10.10.20.10 is outside the network 10.10.10.0/24"),
            "{joined}"
        );
        assert!(
            joined.contains("vnet[0].router[1]: 192.168.56.102 is not a [[bgp.neighbor]]"),
            "{joined}"
        );
        assert_eq!(p.len(), 3, "{joined}");
        let p = problems(
            &VNET_HOST
                .replace("table = 101", "table = 10005")
                .replace("[[vnet]]", "[policy_routing]\n[[vnet]]"),
        );
        assert!(
            p.iter()
                .any(|x| x.starts_with("vnet[0].table: 10005 is in policy routing's tables")),
            "{p:?}"
        );
        let p = problems(&VNET_HOST.replace("10.10.10.2/24", "10.10.10.0/24"));
        assert!(
            p.iter().any(|x| x.starts_with(
                "vnet[0].address: \"10.10.10.0/24\" is the network's network address"
            )),
            "{p:?}"
        );
        let p =
            problems(&VNET_ROUTER.replace("gateway = \"10.10.10.1\"", "gateway = \"10.10.20.1\""));
        assert_eq!(p, vec!["vnet_router[0].gateway: 10.10.20.1 is not an address inside the network 10.10.10.0/24"]);
        let p = problems(&VNET_ROUTER.replace("[kernel]\ninstall = true", ""));
        assert_eq!(
            p,
            vec![
                "vnet_router: needs [kernel] with install = true: the VMs' /32s go into the kernel"
            ]
        );
    }

    #[test]
    fn an_empty_config_has_nothing_to_do() {
        assert_eq!(problems("").len(), 1);
    }

    #[test]
    fn remote_asn_accepts_by_kind() {
        assert!(RemoteAsn::External.accepts(65000, 65001));
        assert!(!RemoteAsn::External.accepts(65000, 65000));
        assert!(RemoteAsn::Internal.accepts(65000, 65000));
        assert!(RemoteAsn::Exact(7).accepts(65000, 7));
    }
}
