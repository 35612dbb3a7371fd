//! Convergent gateways and their NAT (`[[gateway]]`, `[nat]`): the daemon's
//! side of [`hagw_kernel::gateway`] and [`hagw_kernel::nat`] — which node
//! this machine is, the config resolved for it, start, live reload, the
//! forwards' health probes, and the status section.
//!
//! # Which node am I
//!
//! One config serves every node of a group; values that differ per node are
//! tables keyed by node name. The node is, in this order: `--node NAME`;
//! else the hostname (up to its first dot) when the config names it; else
//! the one node whose addresses (its `node_address` or its `nat.source` `to`)
//! are on this machine. Anything else — no node matches, several do, or
//! `--node` names a node the config does not — is a problem `hagw check`
//! reports and `hagw run` refuses to start with.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use hagw_kernel::{
    gateway::{Gateway as GatewayTask, GatewaySpec},
    nat::{self, FullNat, Nat as NatTask, NatSpec},
};
use serde::{Deserialize, Serialize};

use crate::config::{Config, ConfigError, ForwardHealth, PerNode, Problem};
use crate::daemon::health::Hysteresis;

/// This machine's short hostname.
pub fn hostname() -> Option<String> {
    let h = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let short = h.trim().split('.').next().unwrap_or_default().to_string();
    (!short.is_empty()).then_some(short)
}

/// The addresses that give node `node` away (its per-node addresses).
fn node_addresses(cfg: &Config, node: &str) -> Vec<IpAddr> {
    let mut out = Vec::new();
    for g in &cfg.gateways {
        if let Some(PerNode::ByNode(m)) = &g.node_address {
            out.extend(m.get(node).map(|a| a.addr()));
        }
    }
    for s in cfg.nat.iter().flat_map(|n| &n.sources) {
        if let Some(PerNode::ByNode(m)) = &s.to {
            out.extend(m.get(node).copied());
        }
    }
    out
}

/// Picks the node (see the module doc). `local` lists this machine's
/// addresses; `host` its hostname.
pub fn choose_node(
    cfg: &Config,
    flag: Option<&str>,
    host: Option<&str>,
    local: &[IpAddr],
) -> Result<Option<String>, Problem> {
    let names = crate::config::node_names(&cfg.gateways, cfg.nat.as_ref());
    let problem = |message: String| Problem {
        key: "(node)".into(),
        message,
    };
    let list = || names.iter().cloned().collect::<Vec<_>>().join(", ");
    if let Some(n) = flag {
        if !names.is_empty() && !names.contains(n) {
            return Err(problem(format!(
                "--node {n} is not one of the config's nodes ({})",
                list()
            )));
        }
        return Ok(Some(n.to_string()));
    }
    if names.is_empty() {
        return Ok(host.map(String::from));
    }
    if let Some(h) = host.filter(|h| names.contains(*h)) {
        return Ok(Some(h.to_string()));
    }
    let here: Vec<&String> = names
        .iter()
        .filter(|n| node_addresses(cfg, n).iter().any(|a| local.contains(a)))
        .collect();
    match here.as_slice() {
        [one] => Ok(Some((*one).clone())),
        [] => Err(problem(format!(
            "this machine is none of the config's nodes ({}): its hostname {:?} is not one of them \
             and none of their addresses is here; run with --node NAME",
            list(),
            host.unwrap_or("")
        ))),
        many => Err(problem(format!(
            "addresses of several nodes are here ({}): run with --node NAME",
            many.iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// Decides which node this machine is and sets `cfg.node`, for `hagw
/// check` and `hagw run` alike. Reads the live system only when the name
/// does not decide.
pub fn check_live(path: &Path, mut cfg: Config, flag: Option<&str>) -> Result<Config, ConfigError> {
    if cfg.gateways.is_empty() && cfg.nat.is_none() {
        cfg.node = flag.map(String::from);
        return Ok(cfg);
    }
    let host = hostname();
    let names = crate::config::node_names(&cfg.gateways, cfg.nat.as_ref());
    let by_name =
        flag.is_some() || names.is_empty() || host.as_ref().is_some_and(|h| names.contains(h));
    let local = if by_name {
        Vec::new()
    } else {
        local_addresses()
    };
    match choose_node(&cfg, flag, host.as_deref(), &local) {
        Ok(n) => {
            cfg.node = n;
            Ok(cfg)
        }
        Err(p) => Err(ConfigError {
            path: path.to_owned(),
            problems: vec![p],
        }),
    }
}

fn local_addresses() -> Vec<IpAddr> {
    let view = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok()
        .and_then(|rt| rt.block_on(hagw_kernel::netlink::view::inspect()).ok());
    view.map(|v| v.addrs.iter().map(|a| a.addr).collect())
        .unwrap_or_default()
}

/// One forward's health probe, resolved for this node.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeSpec {
    pub forward: String,
    pub target: SocketAddr,
    /// This node's own address on the guest bridge: the guest answers this
    /// node (the shared gateway address would send the answer to the
    /// guest's own node).
    pub source: Option<IpAddr>,
    pub health: ForwardHealth,
}

/// The config resolved for this node.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Resolved {
    pub gateways: Vec<GatewaySpec>,
    pub nat: Option<NatSpec>,
    pub probes: Vec<ProbeSpec>,
}

/// `cfg` for node `cfg.node` (validated: every per-node table names it).
pub fn resolve(cfg: &Config) -> Resolved {
    let node = cfg.node.as_deref();
    let gateways: Vec<GatewaySpec> = cfg
        .gateways
        .iter()
        .map(|g| GatewaySpec {
            name: g.key.clone(),
            bridge: g.bridge.clone(),
            address: g.address,
            node_address: g.node_address.as_ref().and_then(|n| n.get(node)).copied(),
            hide_on: g.hide_on.clone(),
            keep_on_stop: g.keep_on_stop,
        })
        .collect();
    let Some(n) = &cfg.nat else {
        return Resolved {
            gateways,
            ..Resolved::default()
        };
    };
    let behind = |a: IpAddr| gateways.iter().find(|g| g.address.trunc().contains(&a));
    let mut spec = NatSpec::default();
    let mut probes = Vec::new();
    for s in &n.sources {
        spec.sources.push(nat::SourceNat {
            name: s.key.clone(),
            networks: s.networks.clone(),
            out_interface: s.out_interface.clone(),
            to: s.to.as_ref().and_then(|t| t.get(node)).copied(),
        });
    }
    for f in &n.forwards {
        let Some(to) = f.to.get(node).copied() else {
            continue;
        };
        let gw = behind(to.addr);
        let full_nat = f.full_nat.then(|| {
            gw.and_then(|g| {
                g.node_address.map(|a| FullNat {
                    out_interface: g.bridge.clone(),
                    source: a.addr(),
                })
            })
        });
        spec.forwards.push(nat::Forward {
            name: f.key.clone(),
            in_interface: f.in_interface.clone(),
            protocol: f.protocol,
            ports: f.ports,
            to: to.addr,
            to_port: to.port,
            full_nat: full_nat.flatten(),
        });
        if let Some(h) = f.health {
            probes.push(ProbeSpec {
                forward: f.key.clone(),
                target: SocketAddr::new(to.addr, h.port),
                source: gw.and_then(|g| g.node_address).map(|a| a.addr()),
                health: h,
            });
        }
    }
    Resolved {
        gateways,
        nat: Some(spec),
        probes,
    }
}

/// `hagw status` of one forward's probe.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProbeStatus {
    pub target: String,
    /// "up", "down", or "unknown" before the first answer.
    pub state: String,
    pub successes: u64,
    pub failures: u64,
    pub last_error: Option<String>,
}

type ProbeMap = Arc<Mutex<BTreeMap<String, ProbeStatus>>>;

/// The running gateway and NAT reconcilers and probes.
#[derive(Clone)]
pub struct Convergent {
    node: Option<String>,
    gateway: Option<GatewayTask>,
    nat: Option<NatTask>,
    keep_nat: bool,
    resolved: Arc<Mutex<Resolved>>,
    probes: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    probe_status: ProbeMap,
}

/// Starts the gateways and the NAT table of `cfg` (if it has any).
pub async fn start(cfg: &Config) -> anyhow::Result<Option<Convergent>> {
    if cfg.gateways.is_empty() && cfg.nat.is_none() {
        return Ok(None);
    }
    let r = resolve(cfg);
    tracing::info!(
        node = cfg.node.as_deref().unwrap_or("-"),
        gateways = r.gateways.len(),
        "convergent gateway node"
    );
    // Gateways first: the full-NAT source address must exist before a
    // connection is translated to it.
    let gateway = if r.gateways.is_empty() {
        None
    } else {
        Some(
            GatewayTask::start("nft", r.gateways.clone())
                .await
                .context("cannot start the anycast gateways")?,
        )
    };
    let nat = match &r.nat {
        Some(spec) => Some(
            NatTask::start(nat::NatConfig::default(), spec.clone())
                .await
                .context("cannot start the nat table")?,
        ),
        None => None,
    };
    let c = Convergent {
        node: cfg.node.clone(),
        gateway,
        nat,
        keep_nat: cfg.nat.as_ref().is_none_or(|n| n.keep_on_stop),
        resolved: Arc::new(Mutex::new(Resolved::default())),
        probes: Arc::default(),
        probe_status: Arc::default(),
    };
    c.start_probes(&r);
    *lock(&c.resolved) = r;
    Ok(Some(c))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Convergent {
    /// Applies a reloaded config's gateways and NAT (the same node). Returns
    /// what could not be applied live.
    pub fn reload(&self, cfg: &Config) -> Option<String> {
        let mut cfg = cfg.clone();
        cfg.node = self.node.clone();
        let r = resolve(&cfg);
        let old = lock(&self.resolved).clone();
        if r == old {
            return None;
        }
        let mut not_applied = None;
        match &self.gateway {
            Some(g) => g.set(r.gateways.clone()),
            None if !r.gateways.is_empty() => not_applied = Some("[[gateway]] added".to_string()),
            None => {}
        }
        match (&self.nat, &r.nat) {
            (Some(n), Some(spec)) => {
                n.set(spec.clone());
                if r.probes != old.probes {
                    // Forwards that lost their probe are not withdrawn any more.
                    for p in &old.probes {
                        if !r.probes.iter().any(|q| q.forward == p.forward) {
                            n.withdraw(&p.forward, false);
                        }
                    }
                    self.start_probes(&r);
                }
            }
            (Some(n), None) => n.set(NatSpec::default()),
            (None, Some(_)) => not_applied = Some("[nat] added".to_string()),
            (None, None) => {}
        }
        tracing::info!("gateways and nat reloaded");
        *lock(&self.resolved) = r;
        not_applied.map(|w| format!("{w}: restart hagw to start it"))
    }

    fn start_probes(&self, r: &Resolved) {
        let mut tasks = lock(&self.probes);
        for t in tasks.drain(..) {
            t.abort();
        }
        let mut st = lock(&self.probe_status);
        st.clear();
        let Some(nat) = self.nat.clone() else { return };
        for p in r.probes.clone() {
            st.insert(
                p.forward.clone(),
                ProbeStatus {
                    target: p.target.to_string(),
                    state: "unknown".into(),
                    successes: 0,
                    failures: 0,
                    last_error: None,
                },
            );
            tasks.push(tokio::spawn(probe_loop(
                p,
                nat.clone(),
                self.probe_status.clone(),
            )));
        }
    }

    /// Stops: probes first, then the NAT table and the gateways are left in
    /// place (`keep_on_stop`, the default: connections and guests' gateway
    /// survive a restart) or removed.
    pub async fn shutdown(&self) {
        for t in lock(&self.probes).drain(..) {
            t.abort();
        }
        if let Some(n) = &self.nat {
            n.shutdown(!self.keep_nat).await;
        }
        if let Some(g) = &self.gateway {
            g.shutdown(true).await;
        }
    }

    pub async fn status(&self) -> ConvergentStatus {
        let mut st = ConvergentStatus {
            node: self.node.clone(),
            ..ConvergentStatus::default()
        };
        if let Some(g) = &self.gateway {
            let snap = g.snapshot().await;
            let dropped = g.dropped(&snap.uplinks).await;
            st.gateways = snap
                .gateways
                .iter()
                .map(|g| GatewayStatus {
                    name: g.name.clone(),
                    bridge: g.bridge.clone(),
                    address: g.address.to_string(),
                    node_address: g.node_address.map(|a| a.to_string()),
                    bridge_present: g.bridge_present,
                    bridge_up: g.bridge_up,
                    addresses: g.addresses,
                    error: g.error.clone(),
                })
                .collect();
            st.uplinks = snap
                .uplinks
                .iter()
                .map(|u| UplinkStatus {
                    name: u.name.clone(),
                    table: u.table.clone(),
                    present: u.present,
                    filtering: u.filtering,
                    hides: u.hides.iter().map(ToString::to_string).collect(),
                    dropped: dropped.get(&u.name).copied().unwrap_or(0),
                    error: u.error.clone(),
                })
                .collect();
            st.gateway_filter_restores = snap.restores;
        }
        if let Some(n) = &self.nat {
            let snap = n.snapshot().await;
            let (rules, counter_error) = match n.counters().await {
                Ok(c) => (
                    c.into_iter()
                        .map(|c| NatRuleStatus {
                            name: c.comment.unwrap_or_default(),
                            chain: c.chain,
                            packets: c.packets,
                            bytes: c.bytes,
                        })
                        .collect(),
                    None,
                ),
                Err(e) => (Vec::new(), Some(e.to_string())),
            };
            let probes = lock(&self.probe_status).clone();
            st.nat = Some(NatStatus {
                table: n.table().to_string(),
                in_sync: snap.in_sync,
                error: snap.error.or(counter_error),
                replaces: snap.replaces,
                set_updates: snap.set_updates,
                restores: snap.restores,
                rules,
                withdrawn: snap.withdrawn,
                probes,
            });
        }
        st
    }
}

async fn probe_loop(p: ProbeSpec, nat: NatTask, status: ProbeMap) {
    let interval = Duration::from_millis(u64::from(p.health.interval_ms));
    let timeout = interval.min(Duration::from_secs(1));
    let mut hy = Hysteresis::new(p.health.fall, p.health.rise);
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let result = tcp_probe(p.target, p.source, timeout).await;
        let before = hy.state();
        let up = hy.record(result.is_ok());
        {
            let mut st = lock(&status);
            if let Some(s) = st.get_mut(&p.forward) {
                s.state = if up { "up" } else { "down" }.into();
                match &result {
                    Ok(()) => s.successes += 1,
                    Err(e) => {
                        s.failures += 1;
                        s.last_error = Some(e.to_string());
                    }
                }
            }
        }
        if before != Some(up) {
            // The first result decides: a forward whose guest is down at
            // start is withdrawn at once.
            nat.withdraw(&p.forward, !up);
        }
    }
}

async fn tcp_probe(to: SocketAddr, from: Option<IpAddr>, timeout: Duration) -> std::io::Result<()> {
    let sock = if to.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    if let Some(src) = from.filter(|s| s.is_ipv4() == to.is_ipv4()) {
        sock.bind(SocketAddr::new(src, 0))?;
    }
    match tokio::time::timeout(timeout, sock.connect(to)).await {
        Ok(r) => r.map(drop),
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no answer from {to} within {timeout:?}"),
        )),
    }
}

/// `convergent` of `hagw status --json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ConvergentStatus {
    /// The node this machine is.
    pub node: Option<String>,
    pub gateways: Vec<GatewayStatus>,
    /// Uplinks and their ARP/ND filter.
    pub uplinks: Vec<UplinkStatus>,
    #[serde(default)]
    pub gateway_filter_restores: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nat: Option<NatStatus>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GatewayStatus {
    pub name: String,
    pub bridge: String,
    pub address: String,
    pub node_address: Option<String>,
    pub bridge_present: bool,
    pub bridge_up: bool,
    /// Both addresses are on the bridge.
    pub addresses: bool,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UplinkStatus {
    pub name: String,
    pub table: String,
    pub present: bool,
    pub filtering: bool,
    /// The gateway addresses whose ARP/ND it drops.
    pub hides: Vec<String>,
    /// Packets dropped so far.
    pub dropped: u64,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NatStatus {
    pub table: String,
    /// The table as configured is loaded.
    pub in_sync: bool,
    /// The last nft failure; the last good table stays meanwhile.
    pub error: Option<String>,
    pub replaces: u64,
    pub set_updates: u64,
    /// Times the table was restored after someone else deleted or changed it.
    pub restores: u64,
    /// Every rule's counter, named by its comment (`nat.forward[0]`...).
    pub rules: Vec<NatRuleStatus>,
    /// Forwards withdrawn because their target does not answer.
    pub withdrawn: Vec<String>,
    pub probes: BTreeMap<String, ProbeStatus>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NatRuleStatus {
    pub name: String,
    pub chain: String,
    pub packets: u64,
    pub bytes: u64,
}

/// The status section as text.
pub fn status_text(c: &ConvergentStatus) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\nconvergent gateway (node {})",
        c.node.as_deref().unwrap_or("-")
    );
    for g in &c.gateways {
        let _ = writeln!(
            s,
            "  {} {} on {}: node {} {}{}",
            g.name,
            g.address,
            g.bridge,
            g.node_address.as_deref().unwrap_or("-"),
            if g.addresses {
                "in place"
            } else {
                "NOT in place"
            },
            g.error
                .as_deref()
                .map(|e| format!("  error: {e}"))
                .unwrap_or_default()
        );
    }
    for u in &c.uplinks {
        let _ = writeln!(
            s,
            "  uplink {}: ARP/ND for {} {} (dropped {}){}",
            u.name,
            u.hides.join(", "),
            if u.filtering {
                "dropped"
            } else {
                "NOT filtered"
            },
            u.dropped,
            u.error
                .as_deref()
                .map(|e| format!("  {e}"))
                .unwrap_or_default()
        );
    }
    if let Some(n) = &c.nat {
        let _ = writeln!(
            s,
            "\nnat (table {}, {}; {} replaces, {} set updates, {} restores){}",
            n.table,
            if n.in_sync { "in sync" } else { "NOT in sync" },
            n.replaces,
            n.set_updates,
            n.restores,
            n.error
                .as_deref()
                .map(|e| format!("\n  error: {e}"))
                .unwrap_or_default()
        );
        let names: BTreeSet<&str> = n.rules.iter().map(|r| r.name.as_str()).collect();
        for r in &n.rules {
            let _ = writeln!(
                s,
                "  {:<32} {:>12} pkts {:>14} bytes",
                r.name, r.packets, r.bytes
            );
        }
        for w in n.withdrawn.iter().filter(|w| !names.contains(w.as_str())) {
            let _ = writeln!(s, "  {w:<32} withdrawn (its target does not answer)");
        }
        for (f, p) in &n.probes {
            let _ = writeln!(
                s,
                "  probe {f} tcp {}: {} (ok {} / failed {}){}",
                p.target,
                p.state,
                p.successes,
                p.failures,
                p.last_error
                    .as_deref()
                    .map(|e| format!("  last error: {e}"))
                    .unwrap_or_default()
            );
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const GROUP: &str = r#"
[[gateway]]
bridge = "guestbr0"
address = "10.5.5.254/24"
node_address = { xen1 = "10.5.5.251/24", xen2 = "10.5.5.252/24" }
hide_on = ["eth1.100"]

[[nat.source]]
networks = ["10.5.5.0/24"]
out_interface = "xenbr0"
to = { xen1 = "192.168.122.11", xen2 = "192.168.122.12" }

[[nat.forward]]
in_interface = "xenbr0"
protocol = "tcp"
port = 2201
to = "10.5.5.201:22"
full_nat = true
health = { probe = "tcp" }
"#;

    fn cfg() -> Config {
        crate::config::parse(GROUP).expect("valid")
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn the_node_is_the_flag_then_the_hostname_then_the_addresses_here() {
        let c = cfg();
        assert_eq!(
            choose_node(&c, Some("xen2"), Some("xen1"), &[]),
            Ok(Some("xen2".into()))
        );
        assert_eq!(
            choose_node(&c, None, Some("xen1"), &[]),
            Ok(Some("xen1".into()))
        );
        assert_eq!(
            choose_node(&c, None, Some("build"), &[ip("192.168.122.12")]),
            Ok(Some("xen2".into()))
        );
        let none = choose_node(&c, None, Some("build"), &[ip("10.0.0.1")]).expect_err("none");
        assert!(
            none.message
                .contains("none of the config's nodes (xen1, xen2)"),
            "{none}"
        );
        let both = choose_node(
            &c,
            None,
            Some("build"),
            &[ip("10.5.5.251"), ip("192.168.122.12")],
        )
        .expect_err("both");
        assert!(
            both.message.contains("several nodes are here (xen1, xen2)"),
            "{both}"
        );
        let bad = choose_node(&c, Some("xen3"), None, &[]).expect_err("unknown");
        assert!(bad.message.contains("--node xen3 is not one of"), "{bad}");
    }

    #[test]
    fn each_node_gets_its_own_half() {
        let mut c = cfg();
        for (node, own, out) in [
            ("xen1", "10.5.5.251", "192.168.122.11"),
            ("xen2", "10.5.5.252", "192.168.122.12"),
        ] {
            c.node = Some(node.into());
            let r = resolve(&c);
            assert_eq!(r.gateways[0].node_address.map(|a| a.addr()), Some(ip(own)));
            let spec = r.nat.expect("nat");
            assert_eq!(spec.sources[0].to, Some(ip(out)));
            assert_eq!(
                spec.forwards[0].full_nat.as_ref().map(|f| f.source),
                Some(ip(own))
            );
            assert_eq!(
                spec.forwards[0]
                    .full_nat
                    .as_ref()
                    .map(|f| f.out_interface.as_str()),
                Some("guestbr0")
            );
            assert_eq!(
                r.probes[0].source,
                Some(ip(own)),
                "the probe comes from the node's own address"
            );
            assert_eq!(r.probes[0].target, "10.5.5.201:22".parse().expect("sa"));
        }
    }
}
