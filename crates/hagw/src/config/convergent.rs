//! `[[gateway]]` and `[nat]`: convergent gateways and their NAT (issue 12).
//!
//! One file serves every node of a group. What differs per node (its own
//! address on the guest bridge, the address its outbound traffic is SNATed
//! to, a forward's target) is written either once, or as a table keyed by
//! node name:
//!
//! ```toml
//! node_address = { xen1 = "10.5.5.251/24", xen2 = "10.5.5.252/24" }
//! ```
//!
//! Validation checks every node's values; which node this machine is gets
//! decided later, against the live system (`crate::convergent::check_live`).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use serde::Deserialize;

use hagw_kernel::nat::{Ports, Protocol};

use super::Validator;

/// A value that may differ per node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PerNode<T> {
    /// The same on every node.
    All(T),
    /// Keyed by node name.
    ByNode(BTreeMap<String, T>),
}

impl<T> PerNode<T> {
    /// The value for `node` (`None` for a node the table does not name).
    pub fn get(&self, node: Option<&str>) -> Option<&T> {
        match self {
            PerNode::All(v) => Some(v),
            PerNode::ByNode(m) => node.and_then(|n| m.get(n)),
        }
    }

    /// Every value, with the node it is for (`None`: all nodes).
    pub fn values(&self) -> Vec<(Option<&str>, &T)> {
        match self {
            PerNode::All(v) => vec![(None, v)],
            PerNode::ByNode(m) => m.iter().map(|(k, v)| (Some(k.as_str()), v)).collect(),
        }
    }

    fn nodes(&self) -> Vec<&str> {
        match self {
            PerNode::All(_) => vec![],
            PerNode::ByNode(m) => m.keys().map(String::as_str).collect(),
        }
    }
}

/// `[[gateway]]`: an anycast gateway on a guest bridge.
#[derive(Debug, Clone, PartialEq)]
pub struct Gateway {
    /// `gateway[i]`, as status and logs name it.
    pub key: String,
    pub bridge: String,
    /// The same on every node.
    pub address: IpNet,
    /// This node's own address on the bridge (the full-NAT source).
    pub node_address: Option<PerNode<IpNet>>,
    /// Ports ARP/ND for `address` never crosses.
    pub hide_on: Vec<String>,
    /// Leave the addresses and filters in place when hagw stops.
    pub keep_on_stop: bool,
}

/// `[nat]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Nat {
    /// Leave the table in place when hagw stops (forwarded connections and
    /// outbound NAT keep working across a restart; the next run adopts it).
    pub keep_on_stop: bool,
    pub sources: Vec<NatSource>,
    pub forwards: Vec<NatForward>,
}

/// `[[nat.source]]`.
#[derive(Debug, Clone, PartialEq)]
pub struct NatSource {
    pub key: String,
    pub networks: Vec<IpNet>,
    pub out_interface: String,
    /// `None`: masquerade.
    pub to: Option<PerNode<IpAddr>>,
}

/// Where a forward goes: an address, and a port unless ports are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    pub addr: IpAddr,
    pub port: Option<u16>,
}

/// `[[nat.forward]]`.
#[derive(Debug, Clone, PartialEq)]
pub struct NatForward {
    pub key: String,
    pub in_interface: String,
    pub protocol: Protocol,
    pub ports: Ports,
    pub to: PerNode<Target>,
    pub full_nat: bool,
    pub health: Option<ForwardHealth>,
}

/// `health` of a forward: a TCP connect probe of its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForwardHealth {
    /// The port probed (default: the forward's target port).
    pub port: u16,
    pub interval_ms: u32,
    pub fall: u32,
    pub rise: u32,
}

#[derive(Deserialize)]
pub(super) struct RawGateway {
    bridge: Option<String>,
    address: Option<String>,
    node_address: Option<toml::Value>,
    hide_on: Option<Vec<String>>,
    keep_on_stop: Option<bool>,
}

#[derive(Deserialize)]
pub(super) struct RawNat {
    keep_on_stop: Option<bool>,
    #[serde(default)]
    source: Vec<RawSource>,
    #[serde(default)]
    forward: Vec<RawForward>,
}

#[derive(Deserialize)]
struct RawSource {
    networks: Option<Vec<String>>,
    out_interface: Option<String>,
    to: Option<toml::Value>,
}

#[derive(Deserialize)]
struct RawForward {
    in_interface: Option<String>,
    protocol: Option<String>,
    port: Option<toml::Value>,
    to: Option<toml::Value>,
    full_nat: Option<bool>,
    health: Option<RawForwardHealth>,
}

#[derive(Deserialize)]
struct RawForwardHealth {
    probe: Option<String>,
    port: Option<i64>,
    interval_ms: Option<i64>,
    fall: Option<i64>,
    rise: Option<i64>,
}

/// A node name as a config table key: letters, digits, `-`, `_`, `.`.
fn valid_node_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn parse_target(s: &str) -> Option<Target> {
    if let Ok(addr) = s.parse::<IpAddr>() {
        return Some(Target { addr, port: None });
    }
    let sa = s.parse::<std::net::SocketAddr>().ok()?;
    Some(Target {
        addr: sa.ip(),
        port: Some(sa.port()),
    })
}

impl Validator {
    /// A string, or a table of strings keyed by node name, each parsed by
    /// `parse` (which reports its own problems).
    fn per_node<T>(
        &mut self,
        key: &str,
        v: &toml::Value,
        mut parse: impl FnMut(&mut Validator, &str, &str) -> Option<T>,
    ) -> Option<PerNode<T>> {
        match v {
            toml::Value::String(s) => parse(self, key, s).map(PerNode::All),
            toml::Value::Table(t) if !t.is_empty() => {
                let mut m = BTreeMap::new();
                let mut ok = true;
                for (node, v) in t {
                    let k = format!("{key}.{node}");
                    if !valid_node_name(node) {
                        self.problem(&k, "a node name is letters, digits, '-', '_' and '.'");
                        ok = false;
                        continue;
                    }
                    match v {
                        toml::Value::String(s) => match parse(self, &k, s) {
                            Some(x) => {
                                m.insert(node.clone(), x);
                            }
                            None => ok = false,
                        },
                        other => {
                            self.problem(&k, format!("expected a string, got {other}"));
                            ok = false;
                        }
                    }
                }
                ok.then_some(PerNode::ByNode(m))
            }
            other => {
                self.problem(
                    key,
                    format!("expected a string or a table keyed by node name, got {other}"),
                );
                None
            }
        }
    }

    fn interface(&mut self, key: &str, v: Option<String>) -> Option<String> {
        match v {
            None => {
                self.problem(key, "missing");
                None
            }
            Some(s) if hagw_kernel::nft::valid_interface(&s) => Some(s),
            Some(s) => {
                self.problem(
                    key,
                    format!("\"{s}\" is not an interface name (at most 15 of letters, digits and - _ . @)"),
                );
                None
            }
        }
    }

    /// An address with its prefix length, host bits allowed ("10.5.5.254/24").
    fn if_address(&mut self, key: &str, s: &str) -> Option<IpNet> {
        match s.parse::<IpNet>() {
            Ok(n) if n.addr() == n.network() && n.prefix_len() < n.max_prefix_len() => {
                self.problem(
                    key,
                    format!("{s} is the subnet's own address, not a host's"),
                );
                None
            }
            Ok(n) => Some(n),
            Err(_) => {
                self.problem(
                    key,
                    format!("\"{s}\" is not an address with its prefix length, like 10.5.5.254/24"),
                );
                None
            }
        }
    }

    pub(super) fn gateways(&mut self, raw: Vec<RawGateway>) -> Vec<Gateway> {
        let mut out: Vec<Gateway> = Vec::new();
        for (i, g) in raw.into_iter().enumerate() {
            let key = format!("gateway[{i}]");
            let bridge = self.interface(&format!("{key}.bridge"), g.bridge);
            let address = match g.address.as_deref() {
                Some(s) => self.if_address(&format!("{key}.address"), s),
                None => {
                    self.problem(
                        &format!("{key}.address"),
                        "missing (the gateway address, the same on every node)",
                    );
                    None
                }
            };
            let node_address = g.node_address.as_ref().and_then(|v| {
                self.per_node(&format!("{key}.node_address"), v, |v, k, s| {
                    v.if_address(k, s)
                })
            });
            if let (Some(gw), Some(node)) = (address, &node_address) {
                for (n, a) in node.values() {
                    let k = match n {
                        Some(n) => format!("{key}.node_address.{n}"),
                        None => format!("{key}.node_address"),
                    };
                    if a.trunc() != gw.trunc() {
                        self.problem(
                            &k,
                            format!(
                                "{a} is not inside the bridge's subnet {} ({key}.address)",
                                gw.trunc()
                            ),
                        );
                    } else if a.addr() == gw.addr() {
                        self.problem(
                            &k,
                            format!(
                                "{} is the gateway address itself: a node needs its own",
                                a.addr()
                            ),
                        );
                    }
                }
                let mut seen: BTreeMap<IpAddr, &str> = BTreeMap::new();
                for (n, a) in node.values() {
                    let n = n.unwrap_or_default();
                    if let Some(other) = seen.insert(a.addr(), n) {
                        self.problem(
                            &format!("{key}.node_address.{n}"),
                            format!(
                                "{} is also node {other}'s: each node needs its own",
                                a.addr()
                            ),
                        );
                    }
                }
            }
            let mut hide_on: Vec<String> = Vec::new();
            let mut tables: BTreeMap<String, String> = BTreeMap::new();
            for (j, dev) in g.hide_on.unwrap_or_default().into_iter().enumerate() {
                let k = format!("{key}.hide_on[{j}]");
                let Some(dev) = self.interface(&k, Some(dev)) else {
                    continue;
                };
                if bridge.as_deref() == Some(dev.as_str()) {
                    self.problem(
                        &k,
                        format!("\"{dev}\" is the bridge itself: name the ports towards the other nodes (the uplinks), or the gateway would vanish for its own guests"),
                    );
                    continue;
                }
                if let Ok(t) = hagw_kernel::gateway::hide_table(&dev) {
                    if let Some(o) = tables.insert(t.name().to_string(), dev.clone()) {
                        self.problem(&k, format!("\"{dev}\" and \"{o}\" are the same uplink or map to the same filter table {t}"));
                        continue;
                    }
                }
                hide_on.push(dev);
            }
            let (Some(bridge), Some(address)) = (bridge, address) else {
                continue;
            };
            if let Some(o) = out.iter().find(|o| o.address.addr() == address.addr()) {
                self.problem(
                    &format!("{key}.address"),
                    format!("{} is also {}'s", address.addr(), o.key),
                );
            }
            out.push(Gateway {
                key,
                bridge,
                address,
                node_address,
                hide_on,
                keep_on_stop: g.keep_on_stop.unwrap_or(true),
            });
        }
        out
    }

    fn ports(&mut self, key: &str, v: Option<&toml::Value>) -> Option<Ports> {
        let out_of_range = |n: i64| format!("{n} is out of range 1..=65535");
        match v {
            None => {
                self.problem(
                    key,
                    "missing (a port like 2201, or a range like \"2200-2299\")",
                );
                None
            }
            Some(toml::Value::Integer(n)) => match u16::try_from(*n).ok().and_then(Ports::one) {
                Some(p) => Some(p),
                None => {
                    self.problem(key, out_of_range(*n));
                    None
                }
            },
            Some(toml::Value::String(s)) => {
                let parsed = match s.split_once('-') {
                    Some((a, b)) => a
                        .trim()
                        .parse::<i64>()
                        .ok()
                        .zip(b.trim().parse::<i64>().ok()),
                    None => s.trim().parse::<i64>().ok().map(|n| (n, n)),
                };
                let Some((a, b)) = parsed else {
                    self.problem(
                        key,
                        format!("\"{s}\" is not a port or a range like \"2200-2299\""),
                    );
                    return None;
                };
                for n in [a, b] {
                    if !(1..=65535).contains(&n) {
                        self.problem(key, out_of_range(n));
                        return None;
                    }
                }
                let r = u16::try_from(a)
                    .ok()
                    .zip(u16::try_from(b).ok())
                    .and_then(|(a, b)| Ports::new(a, b));
                if r.is_none() {
                    self.problem(key, format!("\"{s}\": the range ends before it starts"));
                }
                r
            }
            Some(other) => {
                self.problem(
                    key,
                    format!("expected a port number or a range string, got {other}"),
                );
                None
            }
        }
    }

    pub(super) fn nat(&mut self, raw: RawNat, gateways: &[Gateway]) -> Nat {
        let mut sources = Vec::new();
        for (i, s) in raw.source.into_iter().enumerate() {
            let key = format!("nat.source[{i}]");
            let networks = match s.networks {
                Some(n) => self.prefixes(&format!("{key}.networks"), Some(n)),
                None => {
                    self.problem(
                        &format!("{key}.networks"),
                        "missing (the networks to translate, e.g. [\"10.5.5.0/24\"])",
                    );
                    Vec::new()
                }
            };
            let out_interface = self.interface(&format!("{key}.out_interface"), s.out_interface);
            let to =
                s.to.as_ref()
                    .and_then(|v| self.per_node(&format!("{key}.to"), v, |v, k, s| v.ip(k, s)));
            if let Some(to) = &to {
                for (n, a) in to.values() {
                    if let Some(net) = networks
                        .iter()
                        .find(|net| net.addr().is_ipv4() != a.is_ipv4())
                    {
                        let k = n.map_or(format!("{key}.to"), |n| format!("{key}.to.{n}"));
                        self.problem(&k, format!("{a} and network {net} differ in family (omit `to` to masquerade both)"));
                    }
                }
                let mut seen: BTreeMap<IpAddr, &str> = BTreeMap::new();
                for (n, a) in to.values() {
                    let n = n.unwrap_or_default();
                    if let Some(other) = seen.insert(*a, n) {
                        self.problem(
                            &format!("{key}.to.{n}"),
                            format!(
                                "{a} is also node {other}'s: each node SNATs to its own address"
                            ),
                        );
                    }
                }
            }
            let Some(out_interface) = out_interface else {
                continue;
            };
            sources.push(NatSource {
                key,
                networks,
                out_interface,
                to,
            });
        }

        let mut forwards: Vec<NatForward> = Vec::new();
        for (i, f) in raw.forward.into_iter().enumerate() {
            let key = format!("nat.forward[{i}]");
            let in_interface = self.interface(&format!("{key}.in_interface"), f.in_interface);
            let protocol = match f.protocol.as_deref() {
                Some("tcp") => Some(Protocol::Tcp),
                Some("udp") => Some(Protocol::Udp),
                None => {
                    self.problem(&format!("{key}.protocol"), "missing (\"tcp\" or \"udp\")");
                    None
                }
                Some(o) => {
                    self.problem(
                        &format!("{key}.protocol"),
                        format!("\"{o}\" is not \"tcp\" or \"udp\""),
                    );
                    None
                }
            };
            let ports = self.ports(&format!("{key}.port"), f.port.as_ref());
            let to = match f.to.as_ref() {
                Some(v) => self.per_node(&format!("{key}.to"), v, |v, k, s| match parse_target(s) {
                    Some(Target { port: Some(0), .. }) => {
                        v.problem(k, "port 0 is out of range 1..=65535");
                        None
                    }
                    Some(t) => Some(t),
                    None => {
                        v.problem(k, format!("\"{s}\" is not an address or address:port (\"10.5.5.201:22\", \"[fd00::1]:22\")"));
                        None
                    }
                }),
                None => {
                    self.problem(&format!("{key}.to"), "missing (the guest's address:port)");
                    None
                }
            };
            let full_nat = f.full_nat.unwrap_or(false);
            if let Some(to) = &to {
                for (n, t) in to.values() {
                    let k = n.map_or(format!("{key}.to"), |n| format!("{key}.to.{n}"));
                    let gw = gateways
                        .iter()
                        .find(|g| g.address.trunc().contains(&t.addr));
                    match gw {
                        None => self.problem(
                            &k,
                            format!(
                                "{} is outside every gateway's subnet ({})",
                                t.addr,
                                if gateways.is_empty() {
                                    "no [[gateway]] is configured".to_string()
                                } else {
                                    gateways
                                        .iter()
                                        .map(|g| g.address.trunc().to_string())
                                        .collect::<Vec<_>>()
                                        .join(", ")
                                }
                            ),
                        ),
                        Some(g) if full_nat && g.node_address.is_none() => self.problem(
                            &format!("{key}.full_nat"),
                            format!("{} has no node_address to translate the source to", g.key),
                        ),
                        Some(g) if t.addr == g.address.addr() => {
                            self.problem(&k, format!("{} is the gateway address itself", t.addr))
                        }
                        Some(_) => {}
                    }
                }
            }
            let health = f
                .health
                .and_then(|h| self.forward_health(&key, h, to.as_ref(), protocol));
            let (Some(in_interface), Some(protocol), Some(ports), Some(to)) =
                (in_interface, protocol, ports, to)
            else {
                continue;
            };
            if let Some(o) = forwards.iter().find(|o| {
                o.in_interface == in_interface && o.protocol == protocol && o.ports.overlaps(&ports)
            }) {
                self.problem(
                    &format!("{key}.port"),
                    format!(
                        "{protocol} {ports} on {in_interface} overlaps {}.port ({})",
                        o.key, o.ports
                    ),
                );
                continue;
            }
            forwards.push(NatForward {
                key,
                in_interface,
                protocol,
                ports,
                to,
                full_nat,
                health,
            });
        }
        Nat {
            keep_on_stop: raw.keep_on_stop.unwrap_or(true),
            sources,
            forwards,
        }
    }

    fn forward_health(
        &mut self,
        key: &str,
        h: RawForwardHealth,
        to: Option<&PerNode<Target>>,
        protocol: Option<Protocol>,
    ) -> Option<ForwardHealth> {
        let key = format!("{key}.health");
        match h.probe.as_deref() {
            None | Some("tcp") => {}
            Some(o) => {
                self.problem(
                    &format!("{key}.probe"),
                    format!("\"{o}\" is not \"tcp\" (a TCP connect to the target)"),
                );
                return None;
            }
        }
        let target_port = to.and_then(|t| {
            let ports: BTreeSet<Option<u16>> = t.values().iter().map(|(_, t)| t.port).collect();
            (ports.len() == 1)
                .then(|| ports.into_iter().next().flatten())
                .flatten()
        });
        let port = match (h.port, target_port, protocol) {
            (Some(p), _, _) => self.int(&format!("{key}.port"), p, 1, 65535)?,
            (None, Some(p), Some(Protocol::Tcp)) => p,
            (None, _, _) => {
                self.problem(
                    &format!("{key}.port"),
                    "missing: the TCP port to probe (needed for a udp forward, or when the target keeps ports)",
                );
                return None;
            }
        };
        Some(ForwardHealth {
            port,
            interval_ms: h.interval_ms.map_or(Some(1000), |v| {
                self.int(&format!("{key}.interval_ms"), v, 10, 3_600_000)
            })?,
            fall: h
                .fall
                .map_or(Some(3), |v| self.int(&format!("{key}.fall"), v, 1, 1000))?,
            rise: h
                .rise
                .map_or(Some(2), |v| self.int(&format!("{key}.rise"), v, 1, 1000))?,
        })
    }

    /// Every node named by a per-node table must be named by all of them:
    /// otherwise some node would have no value, and which one is meant would
    /// be a guess.
    pub(super) fn node_tables(&mut self, gateways: &[Gateway], nat: Option<&Nat>) {
        let mut tables: Vec<(String, Vec<&str>)> = Vec::new();
        for g in gateways {
            if let Some(n) = &g.node_address {
                tables.push((format!("{}.node_address", g.key), n.nodes()));
            }
        }
        if let Some(nat) = nat {
            for s in &nat.sources {
                if let Some(t) = &s.to {
                    tables.push((format!("{}.to", s.key), t.nodes()));
                }
            }
            for f in &nat.forwards {
                tables.push((format!("{}.to", f.key), f.to.nodes()));
            }
        }
        let all: BTreeSet<&str> = tables.iter().flat_map(|(_, n)| n.iter().copied()).collect();
        for (key, nodes) in &tables {
            if nodes.is_empty() {
                continue;
            }
            for missing in all.iter().filter(|n| !nodes.contains(n)) {
                let by = tables
                    .iter()
                    .find(|(_, ns)| ns.contains(missing))
                    .map_or(String::new(), |(k, _)| k.clone());
                self.problem(
                    key,
                    format!("no value for node \"{missing}\" (named in {by})"),
                );
            }
        }
    }
}

/// The node names the config's per-node tables use.
pub fn node_names(gateways: &[Gateway], nat: Option<&Nat>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for g in gateways {
        if let Some(n) = &g.node_address {
            out.extend(n.nodes().into_iter().map(String::from));
        }
    }
    if let Some(nat) = nat {
        for s in &nat.sources {
            if let Some(t) = &s.to {
                out.extend(t.nodes().into_iter().map(String::from));
            }
        }
        for f in &nat.forwards {
            out.extend(f.to.nodes().into_iter().map(String::from));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::parse;

    const SEED: &str = r#"
[[gateway]]
bridge = "guestbr0"
address = "10.5.5.254/24"
node_address = { xen1 = "10.5.5.251/24", xen2 = "10.5.5.252/24" }
hide_on = ["eth1.100", "eth2.100"]

[[nat.source]]
networks = ["10.5.5.0/24"]
out_interface = "xenbr0"
to = { xen1 = "192.168.122.11", xen2 = "192.168.122.12" }

[[nat.forward]]
in_interface = "xenbr0"
protocol = "tcp"
port = 80
to = { xen1 = "10.5.5.202:80", xen2 = "10.5.5.201:80" }

[[nat.forward]]
in_interface = "xenbr0"
protocol = "tcp"
port = 2201
to = "10.5.5.201:22"
full_nat = true
health = { probe = "tcp", interval_ms = 500 }

[[nat.forward]]
in_interface = "xenbr0"
protocol = "udp"
port = "2200-2210"
to = "10.5.5.202"
full_nat = true
"#;

    fn problems(text: &str) -> Vec<String> {
        match parse(text) {
            Ok(_) => vec![],
            Err(p) => p.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn the_seed_as_one_shared_config() {
        let c = parse(SEED).expect("valid");
        let g = &c.gateways[0];
        assert_eq!(g.hide_on, vec!["eth1.100", "eth2.100"]);
        assert!(g.keep_on_stop);
        let n = c.nat.expect("nat");
        assert_eq!(n.forwards.len(), 3);
        assert_eq!(n.forwards[1].health.expect("health").port, 22);
        assert_eq!(n.forwards[2].ports.to_string(), "2200-2210");
        assert_eq!(
            super::node_names(&c.gateways, None)
                .into_iter()
                .collect::<Vec<_>>(),
            vec!["xen1", "xen2"]
        );
    }

    #[test]
    fn the_issue_keys_parse_as_written() {
        let c = parse(
            r#"
[[gateway]]
bridge = "guestbr0"
address = "10.5.5.254/24"          # the same on every node
node_address = "10.5.5.251/24"     # this node's own (full-NAT source)
hide_on = ["eth1.100", "eth2.100"] # ARP/ND for `address` never crosses these
[[nat.source]]
networks = ["10.5.5.0/24"]         # a set: more can be added without new rules
out_interface = "xenbr0"
to = "192.168.122.11"              # omit to masquerade
[[nat.forward]]
in_interface = "xenbr0"
protocol = "tcp"                   # "tcp" | "udp"
port = 2201                        # or "2200-2299"
to = "10.5.5.201:22"
full_nat = true
"#,
        )
        .expect("valid");
        assert_eq!(c.nat.expect("nat").forwards[0].ports.to_string(), "2201");
    }

    #[test]
    fn bad_input_is_refused_with_its_key() {
        let p = problems(
            r#"
[[gateway]]
bridge = "guestbr0"
address = "10.5.5.254/24"
node_address = "10.6.0.1/24"
hide_on = ["eth1.100", "guestbr0"]

[[nat.forward]]
in_interface = "xenbr0"
protocol = "tcp"
port = 0
to = "10.5.5.201:22"

[[nat.forward]]
in_interface = "xenbr0"
protocol = "tcp"
port = 70000
to = "10.5.5.201:22"

[[nat.forward]]
in_interface = "xenbr0"
protocol = "udp"
port = "2200-2299"
to = "10.5.5.201"

[[nat.forward]]
in_interface = "xenbr0"
protocol = "udp"
port = 2250
to = "10.5.5.202:123"

[[nat.forward]]
in_interface = "xenbr0"
protocol = "tcp"
port = 2299
to = "10.9.9.9:22"

[[nat.forward]]
in_interface = "xenbr0"
protocol = "sctp"
port = "2300-2200"
to = "10.5.5.201:0"
"#,
        );
        let joined = p.join("\n");
        for want in [
            "gateway[0].node_address: 10.6.0.1/24 is not inside the bridge's subnet 10.5.5.0/24 (gateway[0].address)",
            "gateway[0].hide_on[1]: \"guestbr0\" is the bridge itself",
            "nat.forward[0].port: 0 is out of range 1..=65535",
            "nat.forward[1].port: 70000 is out of range 1..=65535",
            "nat.forward[3].port: udp 2250 on xenbr0 overlaps nat.forward[2].port (2200-2299)",
            "nat.forward[4].to: 10.9.9.9 is outside every gateway's subnet (10.5.5.0/24)",
            "nat.forward[5].protocol: \"sctp\" is not \"tcp\" or \"udp\"",
            "nat.forward[5].port: \"2300-2200\": the range ends before it starts",
            "nat.forward[5].to: port 0 is out of range 1..=65535",
        ] {
            assert!(joined.contains(want), "missing {want:?} in:\n{joined}");
        }
        assert_eq!(p.len(), 9, "{joined}");
    }

    #[test]
    fn per_node_tables_must_name_the_same_nodes_and_differ() {
        let p = problems(
            r#"
[[gateway]]
bridge = "guestbr0"
address = "10.5.5.254/24"
node_address = { xen1 = "10.5.5.251/24", xen2 = "10.5.5.251/24", xen3 = "10.5.5.253/24" }

[[nat.source]]
networks = ["10.5.5.0/24"]
out_interface = "xenbr0"
to = { xen1 = "192.168.122.11", xen2 = "192.168.122.12" }
"#,
        );
        let joined = p.join("\n");
        assert!(
            joined.contains("gateway[0].node_address.xen2: 10.5.5.251 is also node xen1's"),
            "{joined}"
        );
        assert!(
            joined.contains(
                "nat.source[0].to: no value for node \"xen3\" (named in gateway[0].node_address)"
            ),
            "{joined}"
        );
        assert_eq!(p.len(), 2, "{joined}");
    }

    #[test]
    fn full_nat_needs_a_node_address_and_health_a_port() {
        let p = problems(
            r#"
[[gateway]]
bridge = "guestbr0"
address = "10.5.5.254/24"
[[nat.forward]]
in_interface = "xenbr0"
protocol = "udp"
port = 123
to = "10.5.5.201:123"
full_nat = true
health = { probe = "tcp" }
"#,
        );
        let joined = p.join("\n");
        assert!(
            joined.contains("nat.forward[0].full_nat: gateway[0] has no node_address"),
            "{joined}"
        );
        assert!(
            joined.contains("nat.forward[0].health.port: missing"),
            "{joined}"
        );
    }

    #[test]
    fn unknown_keys_are_named() {
        let p = problems(
            "[[gateway]]\nbridge = \"br0\"\naddress = \"10.0.0.1/24\"\nhide = [\"eth1\"]\n",
        );
        assert_eq!(p, vec!["gateway[0].hide: unknown key (misspelt?)"]);
    }
}
