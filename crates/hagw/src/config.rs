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

pub const DEFAULT_SOCKET: &str = "/run/hagw/hagw.sock";
pub const DEFAULT_HOLD_TIME: u16 = 90;
pub const DEFAULT_PEER_LIMIT: usize = 20_000;

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
    pub control: Control,
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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MultipathHash {
    L3,
    L4,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DhcpDefault {
    Outrank,
    Remove,
    Keep,
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
}

#[derive(Debug, Clone, PartialEq)]
pub struct StaticRoute {
    pub prefix: IpNet,
    pub via: IpAddr,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Control {
    pub socket: PathBuf,
}

// ---------------------------------------------------------------------------
// Raw, permissive shapes serde reads; every field optional so that validation,
// not serde, reports what is missing.

#[derive(Deserialize, Default)]
struct RawConfig {
    bgp: Option<RawBgp>,
    kernel: Option<RawKernel>,
    control: Option<RawControl>,
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
}

#[derive(Deserialize)]
struct RawDynamic {
    range: Option<String>,
    remote_asn: Option<toml::Value>,
    default_originate: Option<bool>,
    advertise: Option<Vec<String>>,
    hold_time: Option<i64>,
    limit: Option<i64>,
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
}

#[derive(Deserialize)]
struct RawKernel {
    install: Option<bool>,
    multipath_hash: Option<String>,
    maximum_paths: Option<i64>,
    metric: Option<i64>,
    table: Option<i64>,
    dhcp_default: Option<String>,
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
        let control = Control {
            socket: raw
                .control
                .and_then(|c| c.socket)
                .unwrap_or_else(|| DEFAULT_SOCKET.into())
                .into(),
        };
        if bgp.is_none() && kernel.is_none() {
            self.problem(
                "(top)",
                "nothing to do: the config has no [bgp] and no [kernel]",
            );
        }
        Config {
            bgp,
            kernel,
            control,
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
            if let Some(range) = range {
                dynamic.push(DynamicRange {
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
        Bgp {
            asn,
            router_id,
            listen,
            port,
            dynamic,
            neighbors,
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
            .map_or(Some(20), |n| {
                self.int("kernel.metric", n, 0, i64::from(u32::MAX))
            })
            .unwrap_or(20);
        let table = k
            .table
            .map_or(Some(254), |n| {
                self.int("kernel.table", n, 1, i64::from(u32::MAX))
            })
            .unwrap_or(254);
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
        }
    }
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
