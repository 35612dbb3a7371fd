//! `[[vrrp]]`: VRRPv3 virtual routers, the floating VIP (issue 11), and the
//! `vrrp` / `priority_decrement` keys of `[[health]]` that track them.
//!
//! Checked here: everything a file alone can show (ranges, families, the
//! 10 ms interval step, duplicate VRIDs and VIPs, names that tracking and
//! hooks refer to). What needs the live system (a peer outside the
//! interface's subnets, a VIP on another interface, an owner whose VIP is
//! not an interface address) is checked by [`crate::vrrp::check_system`].

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

use hagw_vrrp::{ChecksumMode, Family, InstanceConfig, Transport};
use ipnet::IpNet;
use serde::Deserialize;

use super::{Health, Validator, VrrpTrack};

pub const DEFAULT_PRIORITY: u8 = 100;
pub const DEFAULT_ADVERT_INTERVAL_MS: u32 = 1000;
/// Gratuitous ARP / unsolicited NA: how many, how far apart, on becoming
/// Master (and again when a split brain heals).
pub const DEFAULT_GARP_REPEAT: u32 = 3;
pub const DEFAULT_GARP_INTERVAL_MS: u32 = 1000;
/// The address owner's priority (RFC 9568 §6.1).
pub const OWNER_PRIORITY: u8 = hagw_vrrp::instance::OWNER_PRIORITY;

/// One virtual router, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Vrrp {
    /// Unique; names the instance in status, logs, hooks and tracking.
    pub name: String,
    pub interface: String,
    pub vrid: u8,
    /// 1..=255; 255 is the address owner (its VIPs are interface addresses).
    pub priority: u8,
    pub advert_interval_ms: u32,
    pub preempt: bool,
    /// Unicast peers; empty means multicast (224.0.0.18 / ff02::12). Never
    /// a fallback: an instance with peers only ever sends to them.
    pub peers: Vec<IpAddr>,
    /// Source of our adverts; default: the interface's primary IPv4 address
    /// or its IPv6 link-local address.
    pub source: Option<IpAddr>,
    /// With their prefix length (the subnet route comes with the address).
    pub virtual_addresses: Vec<IpNet>,
    /// Accept_Mode: a non-owner Master answers packets to the VIPs.
    pub accept: bool,
    pub checksum: ChecksumMode,
    /// A BFD session to each peer: the Master's BFD Down is a takeover now.
    pub bfd: bool,
    pub startup_delay_ms: u32,
    /// The router role's BGP adverts go out only while this is Master.
    pub gate_bgp: bool,
    pub garp_repeat: u32,
    pub garp_interval_ms: u32,
    pub hooks: VrrpHooks,
    /// `[vrrp.cloud]`: the cloud claim of the first IPv4 virtual address.
    pub cloud: Option<VrrpCloud>,
}

/// `[vrrp.cloud]`: where the VIP lives in the cloud (AWS).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VrrpCloud {
    pub mode: CloudMode,
    pub region: String,
    pub endpoint: Option<String>,
    /// Default: from IMDSv2 by the interface's MAC.
    pub network_interface: Option<String>,
    pub imds_endpoint: String,
    /// How often a master re-checks the owner (at most 5 s).
    pub recheck_ms: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloudMode {
    /// AssignPrivateIpAddresses with AllowReassignment (the seed's).
    SecondaryIp,
    /// ReplaceRoute of these tables' `destination` to our ENI.
    Route {
        tables: Vec<String>,
        destination: IpNet,
    },
}

/// Programs run on transitions (like keepalived's notify scripts).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VrrpHooks {
    pub on_master: Option<String>,
    pub on_backup: Option<String>,
    pub on_fault: Option<String>,
}

impl Vrrp {
    /// The family of the virtual addresses (all of one, checked).
    pub fn family(&self) -> Family {
        self.virtual_addresses
            .first()
            .map_or(Family::V4, |n| Family::of(n.addr()))
    }

    pub fn owner(&self) -> bool {
        self.priority == OWNER_PRIORITY
    }

    pub fn advert_interval(&self) -> Duration {
        Duration::from_millis(u64::from(self.advert_interval_ms))
    }

    pub fn transport(&self) -> Transport {
        if self.peers.is_empty() {
            Transport::Multicast
        } else {
            Transport::Unicast(self.peers.clone())
        }
    }

    /// The sans-IO core's configuration, sending from `source`.
    pub fn instance_config(&self, source: IpAddr) -> InstanceConfig {
        let mut c = InstanceConfig::new(
            self.vrid,
            self.priority,
            source,
            self.virtual_addresses.iter().map(IpNet::addr).collect(),
        );
        c.advert_interval = self.advert_interval();
        c.preempt = self.preempt;
        c.accept = self.accept;
        c.transport = self.transport();
        c.checksum_mode = self.checksum;
        c.startup_delay = Duration::from_millis(u64::from(self.startup_delay_ms));
        c
    }
}

#[derive(Deserialize)]
pub(super) struct RawVrrp {
    name: Option<String>,
    interface: Option<String>,
    vrid: Option<i64>,
    priority: Option<i64>,
    advert_interval_ms: Option<i64>,
    preempt: Option<bool>,
    peers: Option<Vec<String>>,
    source: Option<String>,
    virtual_addresses: Option<Vec<String>>,
    accept: Option<bool>,
    checksum: Option<String>,
    bfd: Option<bool>,
    startup_delay_ms: Option<i64>,
    gate_bgp: Option<bool>,
    garp_repeat: Option<i64>,
    garp_interval_ms: Option<i64>,
    on_master: Option<String>,
    on_backup: Option<String>,
    on_fault: Option<String>,
    cloud: Option<RawVrrpCloud>,
}

#[derive(Deserialize)]
pub(super) struct RawVrrpCloud {
    provider: Option<String>,
    mode: Option<String>,
    region: Option<String>,
    endpoint: Option<String>,
    network_interface: Option<String>,
    route_tables: Option<Vec<String>>,
    destination: Option<String>,
    imds_endpoint: Option<String>,
    recheck_ms: Option<i64>,
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 32
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn valid_ifname(s: &str) -> bool {
    !s.is_empty() && s.len() <= 15 && !s.contains(['/', ' ', '\0']) && s != "." && s != ".."
}

impl Validator {
    /// `vrrp` and `priority_decrement` of `[[health]]` `key`.
    pub(super) fn vrrp_track(
        &mut self,
        key: &str,
        instance: Option<String>,
        decrement: Option<i64>,
    ) -> Option<VrrpTrack> {
        let priority_decrement =
            decrement.and_then(|d| self.int(&format!("{key}.priority_decrement"), d, 1, 254));
        match instance {
            Some(instance) => Some(VrrpTrack {
                instance,
                priority_decrement,
            }),
            None => {
                if decrement.is_some() {
                    self.problem(
                        &format!("{key}.priority_decrement"),
                        "only with vrrp = \"NAME\" (the instance whose priority it lowers)",
                    );
                }
                None
            }
        }
    }

    /// Every `[[vrrp]]`, then what they may not share and what refers to them.
    pub(super) fn vrrps(&mut self, raw: Vec<RawVrrp>, health: &[Health], bgp: bool) -> Vec<Vrrp> {
        let mut out: Vec<Vrrp> = Vec::new();
        let mut keys: Vec<String> = Vec::new();
        for (i, r) in raw.into_iter().enumerate() {
            let key = format!("vrrp[{i}]");
            if let Some(v) = self.vrrp(&key, r) {
                out.push(v);
                keys.push(key);
            }
        }
        let mut vips: HashMap<IpAddr, usize> = HashMap::new();
        for (i, v) in out.iter().enumerate() {
            let key = &keys[i];
            if let Some(j) = out[..i].iter().position(|o| o.name == v.name) {
                self.problem(
                    &format!("{key}.name"),
                    format!("\"{}\" is also {}.name", v.name, keys[j]),
                );
            }
            if let Some(j) = out[..i].iter().position(|o| {
                o.interface == v.interface && o.vrid == v.vrid && o.family() == v.family()
            }) {
                self.problem(
                    &format!("{key}.vrid"),
                    format!(
                        "{} VRID {} on {} is also {} (one virtual router per VRID, family and interface)",
                        v.family(),
                        v.vrid,
                        v.interface,
                        keys[j]
                    ),
                );
            }
            for (k, n) in v.virtual_addresses.iter().enumerate() {
                match vips.get(&n.addr()) {
                    Some(&j) if j != i => self.problem(
                        &format!("{key}.virtual_addresses[{k}]"),
                        format!("{} is also a virtual address of {}", n.addr(), keys[j]),
                    ),
                    _ => {
                        vips.insert(n.addr(), i);
                    }
                }
            }
            if v.gate_bgp && !bgp {
                self.problem(
                    &format!("{key}.gate_bgp"),
                    "there is no [bgp] whose adverts it could gate",
                );
            }
        }
        for (i, h) in health.iter().enumerate() {
            let Some(t) = &h.vrrp else { continue };
            match out.iter().find(|v| v.name == t.instance) {
                None => self.problem(
                    &format!("health[{i}].vrrp"),
                    format!("no [[vrrp]] is named \"{}\"", t.instance),
                ),
                Some(v) if v.owner() => self.problem(
                    &format!("health[{i}].vrrp"),
                    format!(
                        "\"{}\" is the address owner (priority 255): its priority is fixed (RFC 9568 §6.1)",
                        v.name
                    ),
                ),
                Some(_) => {}
            }
        }
        out
    }

    fn vrrp(&mut self, key: &str, r: RawVrrp) -> Option<Vrrp> {
        let k = |f: &str| format!("{key}.{f}");
        let name = match r.name {
            Some(n) if valid_name(&n) => Some(n),
            Some(n) => {
                self.problem(
                    &k("name"),
                    format!("\"{n}\": use 1 to 32 letters, digits, '-', '_' or '.'"),
                );
                None
            }
            None => {
                self.problem(
                    &k("name"),
                    "missing (names the instance in status and hooks)",
                );
                None
            }
        };
        let interface = match r.interface {
            Some(i) if valid_ifname(&i) => Some(i),
            Some(i) => {
                self.problem(&k("interface"), format!("\"{i}\" is not an interface name"));
                None
            }
            None => {
                self.problem(&k("interface"), "missing");
                None
            }
        };
        let vrid = match r.vrid {
            Some(v) => self.int(&k("vrid"), v, 1, 255),
            None => {
                self.problem(&k("vrid"), "missing (1..=255, the same on every node)");
                None
            }
        };
        let priority = r.priority.map_or(Some(DEFAULT_PRIORITY), |p| {
            self.int(&k("priority"), p, 1, 255)
        });
        let advert_interval_ms = match r.advert_interval_ms {
            None => Some(DEFAULT_ADVERT_INTERVAL_MS),
            Some(ms) if ms % 10 != 0 && (10..=40_950).contains(&ms) => {
                self.problem(
                    &k("advert_interval_ms"),
                    format!("{ms} is not a multiple of 10 (adverts carry centiseconds)"),
                );
                None
            }
            Some(ms) => self.int(&k("advert_interval_ms"), ms, 10, 40_950),
        };
        let peers: Vec<IpAddr> = r
            .peers
            .unwrap_or_default()
            .iter()
            .enumerate()
            .filter_map(|(i, s)| {
                let pk = format!("{key}.peers[{i}]");
                let a = self.ip(&pk, s)?;
                if a.is_unspecified() || a.is_multicast() || a.is_loopback() {
                    self.problem(&pk, format!("{a} is not a unicast peer address"));
                    return None;
                }
                Some(a)
            })
            .collect();
        for (i, p) in peers.iter().enumerate() {
            if peers[..i].contains(p) {
                self.problem(&format!("{key}.peers[{i}]"), format!("{p} is listed twice"));
            }
        }
        let source = r.source.as_deref().and_then(|s| {
            let a = self.ip(&k("source"), s)?;
            if a.is_unspecified() || a.is_multicast() || a.is_loopback() {
                self.problem(&k("source"), format!("{a} is not a unicast address"));
                return None;
            }
            Some(a)
        });
        let virtual_addresses = self.virtual_addresses(key, r.virtual_addresses);
        let checksum = match r.checksum.as_deref() {
            None | Some("rfc9568") => ChecksumMode::Rfc9568,
            Some("pseudo-header") => ChecksumMode::PseudoHeader,
            Some(o) => {
                self.problem(
                    &k("checksum"),
                    format!(
                        "\"{o}\" is not \"rfc9568\" or \"pseudo-header\" (keepalived's and FRR's default)"
                    ),
                );
                ChecksumMode::Rfc9568
            }
        };
        let startup_delay_ms = r.startup_delay_ms.map_or(Some(0), |d| {
            self.int(&k("startup_delay_ms"), d, 0, 3_600_000)
        });
        let garp_repeat = r.garp_repeat.map_or(Some(DEFAULT_GARP_REPEAT), |n| {
            self.int(&k("garp_repeat"), n, 1, 100)
        });
        let garp_interval_ms = r
            .garp_interval_ms
            .map_or(Some(DEFAULT_GARP_INTERVAL_MS), |n| {
                self.int(&k("garp_interval_ms"), n, 10, 60_000)
            });
        let mut hook = |name: &str, v: Option<String>| match v {
            Some(s) if s.split_whitespace().next().is_none() => {
                self.problem(&k(name), "empty: leave the key out for no hook");
                None
            }
            v => v,
        };
        let hooks = VrrpHooks {
            on_master: hook("on_master", r.on_master),
            on_backup: hook("on_backup", r.on_backup),
            on_fault: hook("on_fault", r.on_fault),
        };
        let bfd = r.bfd.unwrap_or(false);

        // Families: the first virtual address decides.
        let (virtual_addresses, vips_ok) = virtual_addresses;
        let family = virtual_addresses.first().map(|n| Family::of(n.addr()));
        if let Some(family) = family {
            for (i, p) in peers.iter().enumerate() {
                if Family::of(*p) != family {
                    self.problem(
                        &format!("{key}.peers[{i}]"),
                        format!("{p} is not {family} like the virtual addresses"),
                    );
                }
            }
            if let Some(s) = source.filter(|s| Family::of(*s) != family) {
                self.problem(
                    &k("source"),
                    format!("{s} is not {family} like the virtual addresses"),
                );
            }
            if let Some(IpAddr::V6(s)) = source {
                if peers.is_empty() && !s.is_unicast_link_local() {
                    self.problem(
                        &k("source"),
                        format!("{s}: IPv6 adverts to ff02::12 come from a link-local address (RFC 9568 §5.1.2.1)"),
                    );
                }
            }
        }
        if let Some(s) = source.filter(|s| peers.contains(s)) {
            self.problem(&k("source"), format!("{s} is also one of the peers"));
        }
        if bfd && peers.is_empty() {
            self.problem(
                &k("bfd"),
                "needs unicast peers (a BFD session runs to each of them)",
            );
        }
        if let Some(p) = peers
            .iter()
            .find(|p| matches!(p, IpAddr::V6(a) if a.is_unicast_link_local()))
            .filter(|_| bfd)
        {
            self.problem(
                &k("bfd"),
                format!("peer {p} is link-local: BFD to link-local peers is not supported yet"),
            );
        }
        let cloud = self.vrrp_cloud(key, r.cloud, &virtual_addresses);
        Some(Vrrp {
            name: name?,
            interface: interface?,
            vrid: vrid?,
            priority: priority?,
            advert_interval_ms: advert_interval_ms?,
            preempt: r.preempt.unwrap_or(true),
            peers,
            source,
            virtual_addresses: vips_ok.then_some(virtual_addresses)?,
            accept: r.accept.unwrap_or(false),
            checksum,
            bfd,
            startup_delay_ms: startup_delay_ms?,
            gate_bgp: r.gate_bgp.unwrap_or(false),
            garp_repeat: garp_repeat?,
            garp_interval_ms: garp_interval_ms?,
            hooks,
            cloud: cloud?,
        })
    }

    /// `[vrrp.cloud]` of `key`; `Some(None)` when absent, `None` when wrong.
    fn vrrp_cloud(
        &mut self,
        key: &str,
        raw: Option<RawVrrpCloud>,
        vips: &[IpNet],
    ) -> Option<Option<VrrpCloud>> {
        let Some(c) = raw else { return Some(None) };
        let k = |f: &str| format!("{key}.cloud.{f}");
        let mut ok = true;
        match c.provider.as_deref() {
            Some("aws") => {}
            Some(o) => {
                self.problem(&k("provider"), format!("\"{o}\" is not \"aws\""));
                ok = false;
            }
            None => {
                self.problem(&k("provider"), "missing (\"aws\")");
                ok = false;
            }
        }
        let region = match c.region {
            Some(r)
                if !r.is_empty() && r.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') =>
            {
                Some(r)
            }
            Some(r) => {
                self.problem(&k("region"), format!("\"{r}\" is not a region name"));
                None
            }
            None => {
                self.problem(&k("region"), "missing (e.g. \"eu-central-1\")");
                None
            }
        };
        for (f, v) in [
            ("endpoint", &c.endpoint),
            ("imds_endpoint", &c.imds_endpoint),
        ] {
            if let Some(u) = v {
                if !(u.starts_with("http://") || u.starts_with("https://")) {
                    self.problem(&k(f), format!("\"{u}\" is not an http:// or https:// URL"));
                    ok = false;
                }
            }
        }
        if let Some(e) = &c.network_interface {
            if !e.starts_with("eni-") {
                self.problem(
                    &k("network_interface"),
                    format!("\"{e}\" is not an ENI id (eni-...)"),
                );
                ok = false;
            }
        }
        let mode = match c.mode.as_deref() {
            None | Some("secondary-ip") => {
                if !vips.iter().any(|n| n.addr().is_ipv4()) {
                    self.problem(
                        &k("mode"),
                        "secondary-ip needs an IPv4 virtual address (AWS cannot reassign IPv6 ones)",
                    );
                    ok = false;
                }
                if c.route_tables.is_some() || c.destination.is_some() {
                    self.problem(&k("route_tables"), "only with mode = \"route\"");
                    ok = false;
                }
                Some(CloudMode::SecondaryIp)
            }
            Some("route") => {
                let tables = c.route_tables.unwrap_or_default();
                if tables.is_empty() {
                    self.problem(
                        &k("route_tables"),
                        "missing (route mode moves these tables' route)",
                    );
                    ok = false;
                }
                for (i, t) in tables.iter().enumerate() {
                    if !t.starts_with("rtb-") {
                        self.problem(
                            &format!("{}[{i}]", k("route_tables")),
                            format!("\"{t}\" is not a route table id (rtb-...)"),
                        );
                        ok = false;
                    }
                }
                let destination = match c.destination.as_deref() {
                    Some(d) => self.prefix(&k("destination"), d),
                    None => {
                        self.problem(&k("destination"), "missing (e.g. \"0.0.0.0/0\")");
                        None
                    }
                };
                destination.map(|destination| CloudMode::Route {
                    tables,
                    destination,
                })
            }
            Some(o) => {
                self.problem(
                    &k("mode"),
                    format!("\"{o}\" is not \"secondary-ip\" or \"route\""),
                );
                None
            }
        };
        let recheck_ms = c
            .recheck_ms
            .map_or(Some(2000), |v| self.int(&k("recheck_ms"), v, 100, 5000))?;
        if !ok {
            return None;
        }
        Some(Some(VrrpCloud {
            mode: mode?,
            region: region?,
            endpoint: c.endpoint,
            network_interface: c.network_interface,
            imds_endpoint: c
                .imds_endpoint
                .unwrap_or_else(|| "http://169.254.169.254".to_string()),
            recheck_ms,
        }))
    }

    /// `ADDR` (a /32 or /128) or `ADDR/LEN`; one family; for IPv6 the first
    /// link-local (RFC 9568 §7.2 with erratum 8300: receivers check it).
    /// The addresses that parse, and whether all did and fit together.
    fn virtual_addresses(&mut self, key: &str, v: Option<Vec<String>>) -> (Vec<IpNet>, bool) {
        let vkey = format!("{key}.virtual_addresses");
        let Some(v) = v.filter(|v| !v.is_empty()) else {
            self.problem(
                &vkey,
                "missing (1 to 255 addresses, e.g. [\"10.0.0.100/24\"])",
            );
            return (Vec::new(), false);
        };
        if v.len() > 255 {
            self.problem(&vkey, format!("{} addresses: at most 255", v.len()));
            return (Vec::new(), false);
        }
        let mut out: Vec<IpNet> = Vec::new();
        let mut ok = true;
        for (i, s) in v.iter().enumerate() {
            let k = format!("{vkey}[{i}]");
            let net = match (s.parse::<IpNet>(), s.parse::<IpAddr>()) {
                (Ok(n), _) => n,
                (_, Ok(a)) => IpNet::from(a),
                _ => {
                    self.problem(&k, format!("\"{s}\" is not an address like 10.0.0.100/24"));
                    ok = false;
                    continue;
                }
            };
            let a = net.addr();
            if a.is_unspecified() || a.is_multicast() || a.is_loopback() {
                self.problem(&k, format!("{a} cannot be a virtual address"));
                ok = false;
            } else if out.iter().any(|o| o.addr() == a) {
                self.problem(&k, format!("{a} is listed twice"));
                ok = false;
            } else if let Some(first) = out.first().filter(|f| f.addr().is_ipv4() != a.is_ipv4()) {
                self.problem(
                    &k,
                    format!(
                        "{a} and {} are of different families: one instance per family",
                        first.addr()
                    ),
                );
                ok = false;
            }
            out.push(net);
        }
        if let Some(IpNet::V6(first)) = out.first() {
            if !first.addr().is_unicast_link_local() {
                self.problem(
                    &format!("{vkey}[0]"),
                    format!(
                        "{}: the first IPv6 virtual address must be link-local, e.g. fe80::1/64 (RFC 9568 §7.2; receivers drop adverts without)",
                        first.addr()
                    ),
                );
                ok = false;
            }
        }
        (out, ok)
    }
}

#[cfg(test)]
mod tests {
    use crate::config::parse;

    const ISSUE_EXAMPLE: &str = r#"
[[vrrp]]
name = "vyos-aws"
interface = "eth0"
vrid = 10
priority = 200
advert_interval_ms = 1000
preempt = false
peers = ["100.80.33.249"]
source = "100.80.33.158"
virtual_addresses = ["100.80.33.100/24"]
accept = true
checksum = "rfc9568"
bfd = false
on_master = "/etc/hagw/master.sh"
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
        let v = &c.vrrp[0];
        assert_eq!(
            (v.name.as_str(), v.interface.as_str()),
            ("vyos-aws", "eth0")
        );
        assert_eq!((v.vrid, v.priority, v.advert_interval_ms), (10, 200, 1000));
        assert!(!v.preempt && v.accept && !v.bfd);
        assert_eq!(
            v.peers,
            vec!["100.80.33.249".parse::<std::net::IpAddr>().expect("ip")]
        );
        assert_eq!(v.virtual_addresses[0].to_string(), "100.80.33.100/24");
        assert_eq!(v.hooks.on_master.as_deref(), Some("/etc/hagw/master.sh"));
        assert_eq!(v.checksum, hagw_vrrp::ChecksumMode::Rfc9568);
        // What the config passes, the core accepts.
        let src = v.source.expect("source");
        assert!(hagw_vrrp::Instance::new(v.instance_config(src)).is_ok());
    }

    #[test]
    fn defaults_follow_rfc_9568() {
        let c = parse(
            "[[vrrp]]\nname = \"gw\"\ninterface = \"eth0\"\nvrid = 1\nvirtual_addresses = [\"10.0.0.100\"]\n",
        )
        .expect("valid");
        let v = &c.vrrp[0];
        assert_eq!((v.priority, v.advert_interval_ms), (100, 1000));
        assert!(
            v.preempt && !v.accept,
            "Preempt_Mode true, Accept_Mode false"
        );
        assert!(v.peers.is_empty(), "multicast");
        assert_eq!(v.virtual_addresses[0].to_string(), "10.0.0.100/32");
        assert_eq!((v.garp_repeat, v.garp_interval_ms), (3, 1000));
    }

    #[test]
    fn every_vrrp_problem_is_named_by_its_key() {
        let p = problems(
            r#"
[[vrrp]]
name = "a b"
interface = "eth0"
vrid = 0
priority = 256
advert_interval_ms = 15
peers = ["10.0.0.2", "fd00::2", "224.0.0.18"]
virtual_addresses = ["10.0.0.100/24", "2001:db8::1/64", "nope"]
checksum = "md5"
bfd = true
garp_repeat = 0
on_master = " "
colour = "blue"
"#,
        );
        let joined = p.join("\n");
        for want in [
            "vrrp[0].colour: unknown key",
            "vrrp[0].name: \"a b\"",
            "vrrp[0].vrid: 0 is out of range 1..=255",
            "vrrp[0].priority: 256 is out of range 1..=255",
            "vrrp[0].advert_interval_ms: 15 is not a multiple of 10",
            "vrrp[0].peers[1]: fd00::2 is not IPv4",
            "vrrp[0].peers[2]: 224.0.0.18 is not a unicast peer address",
            "vrrp[0].virtual_addresses[1]: 2001:db8::1 and 10.0.0.100 are of different families",
            "vrrp[0].virtual_addresses[2]: \"nope\"",
            "vrrp[0].checksum: \"md5\"",
            "vrrp[0].garp_repeat: 0 is out of range",
            "vrrp[0].on_master: empty",
        ] {
            assert!(joined.contains(want), "missing {want:?} in\n{joined}");
        }
        assert_eq!(p.len(), 12, "{joined}");
        let p = problems(
            "[[vrrp]]\nname = \"g\"\ninterface = \"eth0\"\nvrid = 1\nadvert_interval_ms = 40960\nbfd = true\nvirtual_addresses = [\"10.0.0.1\"]\n",
        );
        assert_eq!(
            p,
            vec![
                "vrrp[0].advert_interval_ms: 40960 is out of range 10..=40950",
                "vrrp[0].bfd: needs unicast peers (a BFD session runs to each of them)"
            ]
        );
    }

    #[test]
    fn ipv6_needs_a_link_local_first_address_and_source() {
        let base = "[[vrrp]]\nname = \"g6\"\ninterface = \"eth0\"\nvrid = 1\n";
        let p = problems(&format!(
            "{base}virtual_addresses = [\"2001:db8::1/64\"]\nsource = \"2001:db8::2\"\n"
        ));
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(
            p[0].starts_with("vrrp[0].virtual_addresses[0]: 2001:db8::1: the first IPv6"),
            "{p:?}"
        );
        assert!(
            p[1].starts_with("vrrp[0].source: 2001:db8::2: IPv6 adverts to ff02::12"),
            "{p:?}"
        );
        let ok = parse(&format!(
            "{base}virtual_addresses = [\"fe80::1/64\", \"2001:db8::1/64\"]\npeers = [\"2001:db8::3\"]\nsource = \"2001:db8::2\"\n"
        ))
        .expect("valid");
        assert_eq!(ok.vrrp[0].family(), hagw_vrrp::Family::V6);
    }

    #[test]
    fn instances_may_not_share_a_vrid_name_or_vip() {
        let one = |name: &str, vrid: u8, vip: &str| {
            format!("[[vrrp]]\nname = \"{name}\"\ninterface = \"eth0\"\nvrid = {vrid}\nvirtual_addresses = [\"{vip}\"]\n")
        };
        let text = [
            one("a", 10, "10.0.0.100/24"),
            one("a", 10, "10.0.0.101/24"),
            one("c", 11, "10.0.0.100/24"),
            // The same VRID for the other family is another virtual router.
            one("d", 10, "fe80::1/64"),
        ]
        .concat();
        let p = problems(&text);
        assert_eq!(
            p,
            vec![
                "vrrp[1].name: \"a\" is also vrrp[0].name",
                "vrrp[1].vrid: IPv4 VRID 10 on eth0 is also vrrp[0] (one virtual router per VRID, family and interface)",
                "vrrp[2].virtual_addresses[0]: 10.0.0.100 is also a virtual address of vrrp[0]",
            ]
        );
    }

    #[test]
    fn tracking_names_an_instance_that_is_not_the_owner() {
        let text = r#"
[[vrrp]]
name = "gw"
interface = "eth0"
vrid = 1
virtual_addresses = ["10.0.0.100/24"]
gate_bgp = true
[[vrrp]]
name = "own"
interface = "eth0"
vrid = 2
priority = 255
virtual_addresses = ["10.0.0.1/24"]
[[health]]
target = "10.0.0.9"
vrrp = "gw"
priority_decrement = 50
[[health]]
target = "10.0.0.9"
vrrp = "nope"
[[health]]
target = "10.0.0.9"
vrrp = "own"
[[health]]
target = "10.0.0.9"
priority_decrement = 5
"#;
        let p = problems(text);
        assert_eq!(
            p,
            vec![
                "health[3].priority_decrement: only with vrrp = \"NAME\" (the instance whose priority it lowers)",
                "vrrp[0].gate_bgp: there is no [bgp] whose adverts it could gate",
                "health[1].vrrp: no [[vrrp]] is named \"nope\"",
                "health[2].vrrp: \"own\" is the address owner (priority 255): its priority is fixed (RFC 9568 §6.1)",
            ]
        );
        let ok = parse(&text.replace("gate_bgp = true", "").replace(
            "[[health]]\ntarget = \"10.0.0.9\"\nvrrp = \"nope\"\n[[health]]\ntarget = \"10.0.0.9\"\nvrrp = \"own\"\n[[health]]\ntarget = \"10.0.0.9\"\npriority_decrement = 5\n",
            "",
        ))
        .expect("valid");
        let t = ok.health[0].vrrp.as_ref().expect("track");
        assert_eq!(
            (t.instance.as_str(), t.priority_decrement),
            ("gw", Some(50))
        );
    }
}
