//! Seed 004: virtual networks on proxy ARP and policy routing, the one
//! definition `hagw lab up vnet` and the scenario tests build.
//!
//! ```text
//!  vm1 10.10.10.10 --+ br_net1 host1 192.168.56.103 --+                         +-- uplink 198.51.100.1 -- inet 203.0.113.1
//!  vm2 10.10.20.11 --+ br_net2                        +-- br0 (sw) -- r1 .101 --+
//!  vm3 10.10.10.12 --+ br_net1 host2 192.168.56.104 --+            (-- r2 .102 -- uplink 198.51.100.5 --)
//!  vm4 10.10.20.13 --+ br_net2
//! ```
//!
//! Two networks, net1 10.10.10.0/24 and net2 10.10.20.0/24, on both hosts:
//! each host's bridge for a network carries the same address (.2) and the
//! same MAC; the VMs' gateway (.1) lives on the routers' `lo`. The routers
//! learn every VM's /32 from the hosts over BGP and NAT the networks out of
//! their uplinks. A second router (r2) is optional: the tests use it for
//! ECMP through both.
//!
//! VMs are namespaces with one interface, `eth0`, whose peer on the host is
//! named after the VM (`vm3`). A VM keeps its ARP cache when its link goes
//! away (`arp_evict_nocarrier = 0`), as a migrated VM keeps its memory:
//! [`move_vm`] moves the host end of the link to the other host's bridge,
//! then the VM speaks first (an ARP request, as a migrated guest announces
//! itself).

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hagw_testkit::{try_addr, try_bridge, try_veth, Netns};

use super::{Kind, Mode, Node, Options, Router, Topology};
use crate::{state, Error};

/// Every node's interface on the LAN.
pub const LAN_IF: &str = "eth1";
/// A router's interface toward the internet (NAT goes out of it).
pub const UPLINK_IF: &str = "uplink";
/// A VM's interface.
pub const VM_IF: &str = "eth0";
/// The test server on the internet.
pub const SERVER_ADDR: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
pub const SERVER_PORT: u16 = 8080;
/// The hosts' listen range on the routers.
pub const HOST_RANGE: &str = "192.168.56.96/27";

/// A router.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouterSpec {
    pub name: &'static str,
    pub lan_addr: Ipv4Addr,
    pub uplink_cidr: &'static str,
    pub egress_addr: Ipv4Addr,
    /// The internet's side of its uplink.
    pub inet_if: &'static str,
    pub inet_cidr: &'static str,
    pub inet_addr: Ipv4Addr,
}

pub const ROUTERS: [RouterSpec; 2] = [
    RouterSpec {
        name: "r1",
        lan_addr: Ipv4Addr::new(192, 168, 56, 101),
        uplink_cidr: "198.51.100.1/30",
        egress_addr: Ipv4Addr::new(198, 51, 100, 1),
        inet_if: "r1",
        inet_cidr: "198.51.100.2/30",
        inet_addr: Ipv4Addr::new(198, 51, 100, 2),
    },
    RouterSpec {
        name: "r2",
        lan_addr: Ipv4Addr::new(192, 168, 56, 102),
        uplink_cidr: "198.51.100.5/30",
        egress_addr: Ipv4Addr::new(198, 51, 100, 5),
        inet_if: "r2",
        inet_cidr: "198.51.100.6/30",
        inet_addr: Ipv4Addr::new(198, 51, 100, 6),
    },
];

/// A VM host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostSpec {
    pub name: &'static str,
    pub lan_addr: Ipv4Addr,
}

pub const HOSTS: [HostSpec; 2] = [
    HostSpec {
        name: "host1",
        lan_addr: Ipv4Addr::new(192, 168, 56, 103),
    },
    HostSpec {
        name: "host2",
        lan_addr: Ipv4Addr::new(192, 168, 56, 104),
    },
];

/// A virtual network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetSpec {
    pub name: &'static str,
    pub bridge: &'static str,
    /// The network.
    pub network: &'static str,
    /// The VMs' gateway, on the routers' `lo`.
    pub gateway: Ipv4Addr,
    /// Every host's bridge address, with the network's prefix.
    pub bridge_addr: &'static str,
    pub table: u32,
    /// An address no VM has: a moved VM asks for it (ARP) to speak first.
    pub unused: Ipv4Addr,
}

pub const NETS: [NetSpec; 2] = [
    NetSpec {
        name: "net1",
        bridge: "br_net1",
        network: "10.10.10.0/24",
        gateway: Ipv4Addr::new(10, 10, 10, 1),
        bridge_addr: "10.10.10.2/24",
        table: 101,
        unused: Ipv4Addr::new(10, 10, 10, 254),
    },
    NetSpec {
        name: "net2",
        bridge: "br_net2",
        network: "10.10.20.0/24",
        gateway: Ipv4Addr::new(10, 10, 20, 1),
        bridge_addr: "10.10.20.2/24",
        table: 102,
        unused: Ipv4Addr::new(10, 10, 20, 254),
    },
];

/// A VM: its address, network and first host (indexes into [`NETS`] and
/// [`HOSTS`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmSpec {
    pub name: &'static str,
    pub addr: Ipv4Addr,
    pub net: usize,
    pub host: usize,
}

pub const VMS: [VmSpec; 4] = [
    VmSpec {
        name: "vm1",
        addr: Ipv4Addr::new(10, 10, 10, 10),
        net: 0,
        host: 0,
    },
    VmSpec {
        name: "vm2",
        addr: Ipv4Addr::new(10, 10, 20, 11),
        net: 1,
        host: 0,
    },
    VmSpec {
        name: "vm3",
        addr: Ipv4Addr::new(10, 10, 10, 12),
        net: 0,
        host: 1,
    },
    VmSpec {
        name: "vm4",
        addr: Ipv4Addr::new(10, 10, 20, 13),
        net: 1,
        host: 1,
    },
];

/// The VM named `name`.
pub fn vm_spec(name: &str) -> Option<&'static VmSpec> {
    VMS.iter().find(|v| v.name == name)
}

/// The host named `name`.
pub fn host_index(name: &str) -> Option<usize> {
    HOSTS.iter().position(|h| h.name == name)
}

/// Seed 004's namespaces, wired; VM ports not yet on a bridge (hagw creates
/// the bridges: [`VnetLab::attach_all`] once it runs).
///
/// In test mode everything goes when it drops, in field order.
pub struct VnetLab {
    pub vms: Vec<Netns>,
    pub hosts: Vec<Netns>,
    pub routers: Vec<Netns>,
    pub inet: Netns,
    pub sw: Netns,
}

impl VnetLab {
    /// Makes and wires the namespaces with `routers` routers (1 or 2).
    pub fn create(mode: Mode, routers: usize) -> Result<VnetLab, Error> {
        let sw = mode.netns("sw")?;
        let routers: Vec<Netns> = ROUTERS[..routers.clamp(1, 2)]
            .iter()
            .map(|r| mode.netns(r.name))
            .collect::<Result<_, _>>()?;
        let hosts: Vec<Netns> = HOSTS
            .iter()
            .map(|h| mode.netns(h.name))
            .collect::<Result<_, _>>()?;
        let vms: Vec<Netns> = VMS
            .iter()
            .map(|v| mode.netns(v.name))
            .collect::<Result<_, _>>()?;
        let inet = mode.netns("inet")?;
        let lab = VnetLab {
            vms,
            hosts,
            routers,
            inet,
            sw,
        };
        lab.wire()?;
        Ok(lab)
    }

    /// The topology for a test: unique names, removed on drop. Panics on
    /// failure.
    pub fn build(routers: usize) -> VnetLab {
        hagw_testkit::require_root();
        VnetLab::create(Mode::Test, routers).unwrap_or_else(|e| panic!("seed 004: {e}"))
    }

    fn wire(&self) -> Result<(), Error> {
        let mut ports = Vec::new();
        for (ns, r) in self.routers.iter().zip(&ROUTERS) {
            try_veth(ns, LAN_IF, &self.sw, r.name)?;
            try_addr(ns, LAN_IF, &format!("{}/24", r.lan_addr))?;
            ports.push(r.name);
            try_veth(ns, UPLINK_IF, &self.inet, r.inet_if)?;
            try_addr(ns, UPLINK_IF, r.uplink_cidr)?;
            try_addr(&self.inet, r.inet_if, r.inet_cidr)?;
            ns.try_ip(&["route", "add", "default", "via", &r.inet_addr.to_string()])?;
        }
        for (ns, h) in self.hosts.iter().zip(&HOSTS) {
            try_veth(ns, LAN_IF, &self.sw, h.name)?;
            try_addr(ns, LAN_IF, &format!("{}/24", h.lan_addr))?;
            ports.push(h.name);
        }
        try_bridge(&self.sw, "br0", &ports)?;
        try_addr(&self.inet, "lo", &format!("{SERVER_ADDR}/32"))?;
        for (ns, v) in self.vms.iter().zip(&VMS) {
            try_veth(ns, VM_IF, &self.hosts[v.host], v.name)?;
            let net = &NETS[v.net];
            let len = net.bridge_addr.rsplit('/').next().unwrap_or("24");
            try_addr(ns, VM_IF, &format!("{}/{len}", v.addr))?;
            ns.try_ip(&["route", "add", "default", "via", &net.gateway.to_string()])?;
            // A migrated VM keeps its memory, ARP cache included.
            ns.try_sysctl(&format!("net.ipv4.conf.{VM_IF}.arp_evict_nocarrier"), "0")?;
        }
        Ok(())
    }

    pub fn router(&self, name: &str) -> &Netns {
        let i = ROUTERS
            .iter()
            .position(|r| r.name == name)
            .filter(|i| *i < self.routers.len())
            .unwrap_or_else(|| panic!("no router {name:?} in this lab"));
        &self.routers[i]
    }

    pub fn host(&self, name: &str) -> &Netns {
        let i = host_index(name).unwrap_or_else(|| panic!("no host {name:?}"));
        &self.hosts[i]
    }

    pub fn vm(&self, name: &str) -> &Netns {
        let i = VMS
            .iter()
            .position(|v| v.name == name)
            .unwrap_or_else(|| panic!("no VM {name:?}"));
        &self.vms[i]
    }

    /// Puts every VM's port on its bridge (waiting up to `timeout` for hagw
    /// to create it) and has every VM speak once, so its host learns it.
    pub fn attach_all(&self, timeout: Duration) -> Result<(), Error> {
        for (v, vm_ns) in VMS.iter().zip(&self.vms) {
            attach(&self.hosts[v.host], v, timeout)?;
            speak(vm_ns, v);
        }
        Ok(())
    }
}

/// Puts VM `v`'s port (in `host`) on its network's bridge, once hagw has
/// made it.
pub fn attach(host: &Netns, v: &VmSpec, timeout: Duration) -> Result<(), Error> {
    let bridge = NETS[v.net].bridge;
    let t0 = Instant::now();
    while host.try_ip(&["link", "show", bridge]).is_err() {
        if t0.elapsed() > timeout {
            return Err(Error::Vnet(format!(
                "no bridge {bridge} in {} after {timeout:?}: is hagw running there?",
                host.name()
            )));
        }
        thread::sleep(Duration::from_millis(20));
    }
    host.try_ip(&["link", "set", v.name, "master", bridge, "up"])?;
    Ok(())
}

/// The VM sends one packet that makes its host learn it: an ARP request
/// (for an address nobody has). A gratuitous ARP, which a migrated guest
/// sends, does the same; the lab has no tool to send one.
pub fn speak(vm: &Netns, v: &VmSpec) {
    let unused = NETS[v.net].unused.to_string();
    // Forget that one entry first (the rest of the cache stays warm), so an
    // ARP request goes out.
    let _ = vm.try_sh(&format!(
        "ip neigh del {unused} dev {VM_IF} 2>/dev/null; ping -n -q -c 1 -W 0.2 {unused} >/dev/null 2>&1; true"
    ));
}

/// The host VM `v`'s port is on now.
pub fn locate(hosts: &[Netns], v: &VmSpec) -> Option<usize> {
    hosts
        .iter()
        .position(|h| h.try_ip(&["link", "show", v.name]).is_ok())
}

/// Moves VM `v` to host `to` (live migration, as far as the network sees
/// it): its port leaves the old host's bridge and joins the new one's, then
/// the VM speaks first. Returns the moment of that first packet (Unix time).
pub fn move_vm(hosts: &[Netns], vm: &Netns, v: &VmSpec, to: usize) -> Result<f64, Error> {
    let from =
        locate(hosts, v).ok_or_else(|| Error::Vnet(format!("{}'s port is on no host", v.name)))?;
    if from == to {
        return Err(Error::Vnet(format!(
            "{} is on {} already",
            v.name, HOSTS[to].name
        )));
    }
    hosts[from].try_ip(&["link", "set", v.name, "netns", hosts[to].name()])?;
    hosts[to].try_ip(&["link", "set", v.name, "master", NETS[v.net].bridge, "up"])?;
    let t0 = unix_now();
    speak(vm, v);
    Ok(t0)
}

pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// One answered ping.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reply {
    pub seq: u32,
    /// When it arrived (Unix time, `ping -D`).
    pub at: f64,
}

/// `ping -D -i 0.01` running in a namespace, its answers collected.
pub struct Pinger {
    child: Child,
    replies: Arc<Mutex<Vec<Reply>>>,
    pub interval: Duration,
}

impl Pinger {
    /// Pings `target` from namespace `ns` every 10 ms.
    pub fn start(ns: &str, target: Ipv4Addr) -> Result<Pinger, Error> {
        let mut child = Command::new("ip")
            .args([
                "netns", "exec", ns, "ping", "-D", "-n", "-i", "0.01", "-W", "1",
            ])
            .arg(target.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| Error::Vnet(format!("cannot start ping: {e}")))?;
        let replies = Arc::new(Mutex::new(Vec::new()));
        if let Some(out) = child.stdout.take() {
            let r = replies.clone();
            thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    if let Some(rep) = parse_reply(&line) {
                        r.lock().unwrap_or_else(|p| p.into_inner()).push(rep);
                    }
                }
            });
        }
        Ok(Pinger {
            child,
            replies,
            interval: Duration::from_millis(10),
        })
    }

    pub fn replies(&self) -> Vec<Reply> {
        self.replies
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The first answer that arrived after `t` (Unix time), waiting up to
    /// `timeout` for it.
    pub fn first_after(&self, t: f64, timeout: Duration) -> Option<Reply> {
        let t0 = Instant::now();
        loop {
            if let Some(r) = self.replies().into_iter().find(|r| r.at > t) {
                return Some(r);
            }
            if t0.elapsed() > timeout {
                return None;
            }
            thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Pinger {
    fn drop(&mut self) {
        // Our own child, by its handle.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// "[1718000000.123456] 64 bytes from 10.10.10.12: icmp_seq=12 ttl=61 time=0.5 ms"
pub fn parse_reply(line: &str) -> Option<Reply> {
    let at: f64 = line.strip_prefix('[')?.split(']').next()?.parse().ok()?;
    let seq = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("icmp_seq="))?
        .parse()
        .ok()?;
    line.contains("bytes from").then_some(Reply { seq, at })
}

/// What a move measured.
#[derive(Debug, Clone)]
pub struct MoveReport {
    pub vm: &'static str,
    pub from: &'static str,
    pub to: &'static str,
    pub pinger: &'static str,
    /// From the VM's first packet on the new host to the first answer.
    pub answer_ms: Option<f64>,
    /// Between the last answer before the move and the first after it.
    pub outage_ms: Option<f64>,
    /// Pings sent meanwhile without an answer.
    pub lost: u32,
}

impl std::fmt::Display for MoveReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = |v: Option<f64>| v.map_or("no answer".to_string(), |v| format!("{v:.1} ms"));
        write!(
            f,
            "moved {} from {} to {}; pings from {} every 10 ms:\n  \
             answered again {} after the VM's first packet on {}\n  \
             outage {} (last answer before the move to first after), {} pings lost",
            self.vm,
            self.from,
            self.to,
            self.pinger,
            ms(self.answer_ms),
            self.to,
            ms(self.outage_ms),
            self.lost
        )
    }
}

/// Moves VM `v` to host `to` while another VM pings it (one on the host it
/// leaves, in the other network: its path crosses the router), and times
/// how soon the pings answer again.
pub fn move_and_measure(
    hosts: &[Netns],
    vms: &[Netns],
    v: &VmSpec,
    to: usize,
) -> Result<MoveReport, Error> {
    let from =
        locate(hosts, v).ok_or_else(|| Error::Vnet(format!("{}'s port is on no host", v.name)))?;
    let (pi, pinger_spec) = VMS
        .iter()
        .enumerate()
        .filter(|(_, p)| p.name != v.name)
        .max_by_key(|(i, p)| {
            let here = locate(hosts, p) == Some(from);
            (here, p.net != v.net, std::cmp::Reverse(*i))
        })
        .ok_or_else(|| Error::Vnet("no other VM".into()))?;
    let vi = VMS.iter().position(|x| x.name == v.name).unwrap_or(0);
    let pinger = Pinger::start(vms[pi].name(), v.addr)?;
    // Steady answers first.
    if pinger
        .first_after(unix_now(), Duration::from_secs(10))
        .is_none()
    {
        return Err(Error::Vnet(format!(
            "{} does not answer {} before the move",
            v.name, pinger_spec.name
        )));
    }
    thread::sleep(Duration::from_millis(300));
    let before = unix_now();
    let t0 = move_vm(hosts, &vms[vi], v, to)?;
    let first = pinger.first_after(t0, Duration::from_secs(10));
    thread::sleep(Duration::from_millis(200));
    let replies = pinger.replies();
    drop(pinger);
    let last_before = replies
        .iter()
        .filter(|r| r.at <= before)
        .map(|r| r.at)
        .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.max(x))));
    let lost = match (replies.iter().rfind(|r| r.at <= before), first) {
        (Some(a), Some(b)) => b.seq.saturating_sub(a.seq + 1),
        _ => 0,
    };
    Ok(MoveReport {
        vm: v.name,
        from: HOSTS[from].name,
        to: HOSTS[to].name,
        pinger: pinger_spec.name,
        answer_ms: first.map(|r| (r.at - t0) * 1000.0),
        outage_ms: match (last_before, first) {
            (Some(a), Some(b)) => Some((b.at - a) * 1000.0),
            _ => None,
        },
        lost,
    })
}

/// A router's config: the hosts' listen range (at most 64 /32s a host),
/// the VMs' /32s into the kernel, both networks' gateways and NAT.
pub fn router_config(r: &RouterSpec, opts: &Options) -> String {
    let mut s = format!(
        r#"[bgp]
asn = 65000
router_id = "{addr}"
listen = ["{addr}"]

[[bgp.dynamic]]
range = "{HOST_RANGE}"
remote_asn = "external"
hold_time = 3
max_prefixes = 64
{bfd}
{common}[kernel]
install = true
pin_connections = false
dhcp_default = "keep"
"#,
        addr = r.lan_addr,
        bfd = opts.peer_bfd(),
        common = opts.common(),
    );
    for n in &NETS {
        s.push_str(&format!(
            "\n[[vnet_router]]\nnetwork = \"{}\"\ngateway = \"{}\"\nmasquerade_out = \"{UPLINK_IF}\"\n",
            n.network, n.gateway
        ));
    }
    s
}

/// A host's config: a session to each router, both networks.
pub fn host_config(h: &HostSpec, routers: usize, opts: &Options) -> String {
    let rs = &ROUTERS[..routers.clamp(1, 2)];
    let mut s = format!("[bgp]\nasn = 65100\nrouter_id = \"{}\"\n\n", h.lan_addr);
    for r in rs {
        s.push_str(&format!(
            "[[bgp.neighbor]]\naddress = \"{}\"\nremote_asn = 65000\nhold_time = 3\n{}\n",
            r.lan_addr,
            opts.peer_bfd()
        ));
    }
    s.push_str(&opts.common());
    let list: Vec<String> = rs.iter().map(|r| format!("\"{}\"", r.lan_addr)).collect();
    for n in &NETS {
        s.push_str(&format!(
            "[[vnet]]\nname = \"{}\"\nbridge = \"{}\"\naddress = \"{}\"\nrouter = [{}]\ntable = {}\n\n",
            n.name,
            n.bridge,
            n.bridge_addr,
            list.join(", "),
            n.table
        ));
    }
    s
}

// ---------------------------------------------------------------------------
// `hagw lab up vnet`.

/// Seed 004 as `hagw lab` runs it: one router, two hosts, four VMs.
pub struct Vnet;

impl Vnet {
    fn ns(role: &str) -> Result<Netns, Error> {
        Ok(Netns::attach(&super::lab_ns(role))?)
    }

    /// The lab's namespaces, attached.
    pub fn attach_lab() -> Result<(Vec<Netns>, Vec<Netns>), Error> {
        let hosts = HOSTS
            .iter()
            .map(|h| Vnet::ns(h.name))
            .collect::<Result<_, _>>()?;
        let vms = VMS
            .iter()
            .map(|v| Vnet::ns(v.name))
            .collect::<Result<_, _>>()?;
        Ok((hosts, vms))
    }
}

impl Topology for Vnet {
    fn kind(&self) -> Kind {
        Kind::Vnet
    }

    fn namespaces(&self) -> Vec<String> {
        let mut v = vec!["sw", "r1"];
        v.extend(HOSTS.iter().map(|h| h.name));
        v.extend(VMS.iter().map(|m| m.name));
        v.push("inet");
        v.into_iter().map(super::lab_ns).collect()
    }

    fn build(&self) -> Result<(), Error> {
        VnetLab::create(Mode::Persistent, 1).map(drop)
    }

    fn nodes(&self, opts: &Options) -> Vec<Node> {
        let mut nodes = Vec::new();
        let socket = state::path_in("r1.sock");
        nodes.push(Node {
            name: "r1",
            ns: super::lab_ns("r1"),
            config: format!(
                "# hagw lab (vnet): router r1, written by `hagw lab up`\n{}\n[control]\nsocket = \"{}\"\n",
                router_config(&ROUTERS[0], opts),
                socket.display()
            ),
            socket,
        });
        for h in &HOSTS {
            let socket = state::path_in(&format!("{}.sock", h.name));
            nodes.push(Node {
                name: h.name,
                ns: super::lab_ns(h.name),
                config: format!(
                    "# hagw lab (vnet): {}, written by `hagw lab up`\n{}[control]\nsocket = \"{}\"\n",
                    h.name,
                    host_config(h, 1, opts),
                    socket.display()
                ),
                socket,
            });
        }
        nodes
    }

    fn host_ns(&self) -> String {
        super::lab_ns("host1")
    }

    fn routers(&self) -> Vec<Router> {
        vec![Router {
            name: "r1",
            ns: super::lab_ns("r1"),
            lan_addr: ROUTERS[0].lan_addr,
            lan_if: LAN_IF,
            egress_addr: ROUTERS[0].egress_addr,
        }]
    }

    fn server(&self) -> (String, SocketAddr) {
        (
            super::lab_ns("inet"),
            SocketAddr::V4(SocketAddrV4::new(SERVER_ADDR, SERVER_PORT)),
        )
    }

    fn describe(&self) -> String {
        format!(
            "topology vnet (seed 004): virtual networks on proxy ARP and policy routing\n\
             \x20 vm1 10.10.10.10, vm2 10.10.20.11 on hagwlab-host1 192.168.56.103\n\
             \x20 vm3 10.10.10.12, vm4 10.10.20.13 on hagwlab-host2 192.168.56.104\n\
             \x20 net1 10.10.10.0/24 (br_net1 10.10.10.2 on each host, gateway 10.10.10.1 on r1's lo, table 101)\n\
             \x20 net2 10.10.20.0/24 (br_net2 10.10.20.2 on each host, gateway 10.10.20.1 on r1's lo, table 102)\n\
             \x20 hagwlab-r1 192.168.56.101: the VMs' /32s by BGP from the hosts, NAT out of {UPLINK_IF} to hagwlab-inet {SERVER_ADDR}\n\
             \x20 hagw: hosts AS65100 peer r1 AS65000 (listen range {HOST_RANGE}, max_prefixes 64, hold 3 s)"
        )
    }

    fn flows(&self) -> bool {
        false
    }

    fn settle(&self, timeout: Duration) -> anyhow::Result<Option<String>> {
        let (hosts, vms) = Vnet::attach_lab()?;
        let r1 = Vnet::ns("r1")?;
        for (v, vm) in VMS.iter().zip(&vms) {
            attach(&hosts[v.host], v, timeout)?;
            speak(vm, v);
        }
        let t0 = Instant::now();
        loop {
            let routes = r1.try_ip(&["route", "show", "proto", "hagw"])?;
            let have = VMS
                .iter()
                .filter(|v| routes.contains(&format!("{} via", v.addr)))
                .count();
            if have == VMS.len() {
                break;
            }
            if t0.elapsed() > timeout {
                anyhow::bail!(
                    "after {timeout:?} r1 has /32s for {have} of the {} VMs:\n{routes}",
                    VMS.len()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
        let mut out = format!(
            "r1 learned every VM after {} ms:\n",
            t0.elapsed().as_millis()
        );
        for l in r1.try_ip(&["route", "show", "proto", "hagw"])?.lines() {
            out.push_str(&format!("  {l}\n"));
        }
        out.push_str("\nreachability (ping from vm1 10.10.10.10 on host1):\n");
        let checks = [
            ("vm3 10.10.10.12", "same network, other host", "10.10.10.12"),
            ("vm2 10.10.20.11", "other network, same host", "10.10.20.11"),
            (
                "vm4 10.10.20.13",
                "other network, other host",
                "10.10.20.13",
            ),
            (
                "203.0.113.1",
                "the outside, through r1's NAT",
                "203.0.113.1",
            ),
        ];
        for (what, why, addr) in checks {
            let ok = vms[0]
                .try_sh(&format!("ping -n -c 3 -i 0.2 -W 1 {addr}"))
                .ok()
                .and_then(|o| o.lines().find(|l| l.contains("rtt")).map(|l| l.to_string()));
            out.push_str(&format!(
                "  {what:<16} ({why:<30}) {}\n",
                ok.unwrap_or_else(|| "NO ANSWER".into())
            ));
        }
        out.push_str(
            "\nmove a VM with `hagw lab move vm3 host1` (it prints the time until pings answer again)",
        );
        Ok(Some(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_the_kernel() {
        for ns in Vnet.namespaces() {
            assert!(hagw_testkit::valid_name(&ns), "{ns}");
        }
        for n in NETS {
            assert!(hagw_testkit::valid_name(n.bridge));
        }
    }

    #[test]
    fn ping_lines_parse() {
        let r = parse_reply(
            "[1718000000.123456] 64 bytes from 10.10.10.12: icmp_seq=12 ttl=61 time=0.512 ms",
        );
        assert_eq!(
            r,
            Some(Reply {
                seq: 12,
                at: 1_718_000_000.123456
            })
        );
        assert_eq!(
            parse_reply("[1718000000.1] From 10.10.10.2 icmp_seq=3 Destination Host Unreachable"),
            None
        );
        assert_eq!(
            parse_reply("PING 10.10.10.12 (10.10.10.12) 56(84) bytes of data."),
            None
        );
    }

    #[test]
    fn the_configs_check() {
        let o = Options::default();
        for (text, what) in [
            (router_config(&ROUTERS[0], &o), "router"),
            (host_config(&HOSTS[0], 2, &o), "host"),
        ] {
            assert!(text.contains("[["), "{what}: {text}");
        }
    }
}
