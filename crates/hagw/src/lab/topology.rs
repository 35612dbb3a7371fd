//! The lab's topologies. Each one says which namespaces it needs, how to wire
//! them, which hagw daemons run where and with what config, which routers can
//! be failed, and where the test server listens. `up`, `status`, `fail`,
//! `heal` and `down` work from that description only, so another topology
//! (the policy-routing and VIP articles) is another [`Topology`] impl and
//! another [`Kind`] variant.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;

use super::state;
use super::sys::{ip_ns, nft_load, run, sysctl};

/// `hagw lab up [TOPOLOGY]`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Kind {
    /// Seed 000: a host behind two SNAT egress routers, default route by BGP
    /// with ECMP (L4 hash).
    #[default]
    Egress,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Egress => "egress",
        }
    }

    pub fn from_name(name: &str) -> anyhow::Result<Kind> {
        match name {
            "egress" => Ok(Kind::Egress),
            other => anyhow::bail!(
                "the lab state names topology {other:?}, which this hagw does not know \
                 (built by another version?); remove it with `hagw lab down`"
            ),
        }
    }

    pub fn topology(self) -> Box<dyn Topology> {
        match self {
            Kind::Egress => Box::new(Egress),
        }
    }
}

/// Options of `hagw lab up` that shape the configs.
#[derive(Debug, Clone)]
pub struct Options {
    /// BFD interval in ms on every session (0: no BFD, only the 3 s hold timer).
    pub bfd_ms: u32,
}

impl Default for Options {
    fn default() -> Options {
        Options { bfd_ms: 50 }
    }
}

impl Options {
    /// Appended to a `[[bgp.neighbor]]` or `[[bgp.dynamic]]` table.
    fn peer_bfd(&self) -> &'static str {
        if self.bfd_ms > 0 {
            "bfd = true\n"
        } else {
            ""
        }
    }

    /// The top-level sections every node shares: BFD timers and graceful
    /// restart (a restarting hagw loses no packet).
    fn common(&self) -> String {
        let mut s = String::from("[bgp.graceful_restart]\nenabled = true\nrestart_time = 120\n\n");
        if self.bfd_ms > 0 {
            s.push_str(&format!(
                "[bfd]\ninterval_ms = {}\nmultiplier = 3\n\n",
                self.bfd_ms
            ));
        }
        s
    }
}

/// One hagw daemon of the lab.
pub struct Node {
    /// Short name: used for its config, log and socket file names.
    pub name: &'static str,
    pub ns: &'static str,
    pub config: String,
    pub socket: PathBuf,
}

/// A router `hagw lab fail` can cut.
#[derive(Clone, Copy)]
pub struct Router {
    pub name: &'static str,
    pub ns: &'static str,
    /// Its address on the hosts' LAN: the next hop the host's default uses.
    pub lan_addr: Ipv4Addr,
    /// Its LAN interface (the one `fail` cuts).
    pub lan_if: &'static str,
    /// The source address the server sees for flows through it (its SNAT).
    pub egress_addr: Ipv4Addr,
}

pub trait Topology {
    fn kind(&self) -> Kind;
    /// Every namespace, in creation order (down deletes them all).
    fn namespaces(&self) -> Vec<&'static str>;
    /// Wires the namespaces (which exist, with `lo` up).
    fn build(&self) -> anyhow::Result<()>;
    /// The hagw daemons, in start order.
    fn nodes(&self, opts: &Options) -> Vec<Node>;
    /// The namespace whose default route the lab watches and whose flows it holds.
    fn host_ns(&self) -> &'static str;
    fn routers(&self) -> Vec<Router>;
    /// Where the test server runs and listens.
    fn server(&self) -> (&'static str, SocketAddr);
    /// A one-paragraph picture printed by `up`.
    fn describe(&self) -> String;

    fn router(&self, name: &str) -> anyhow::Result<Router> {
        let all = self.routers();
        all.iter().find(|r| r.name == name).copied().ok_or_else(|| {
            let names: Vec<&str> = all.iter().map(|r| r.name).collect();
            anyhow::anyhow!(
                "no router {name:?} in the {} lab (routers: {})",
                self.kind().name(),
                names.join(", ")
            )
        })
    }

    /// Which router the server-seen source address belongs to.
    fn router_by_egress(&self, addr: Ipv4Addr) -> Option<&'static str> {
        self.routers()
            .iter()
            .find(|r| r.egress_addr == addr)
            .map(|r| r.name)
    }
}

// ---------------------------------------------------------------------------
// Seed 000: redundant egress gateways.

pub const SW: &str = "hagwlab-sw";
pub const HOST: &str = "hagwlab-host";
pub const R1: &str = "hagwlab-r1";
pub const R2: &str = "hagwlab-r2";
pub const INET: &str = "hagwlab-inet";

const LAN_IF: &str = "eth1";
const UPLINK_IF: &str = "uplink";
const SERVER_ADDR: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
const SERVER_PORT: u16 = 8080;

pub struct Egress;

struct RouterWiring {
    router: Router,
    uplink_cidr: &'static str,
    inet_if: &'static str,
    inet_cidr: &'static str,
    inet_addr: &'static str,
}

impl Egress {
    fn wiring() -> [RouterWiring; 2] {
        [
            RouterWiring {
                router: Router {
                    name: "r1",
                    ns: R1,
                    lan_addr: Ipv4Addr::new(192, 168, 100, 20),
                    lan_if: LAN_IF,
                    egress_addr: Ipv4Addr::new(198, 51, 100, 1),
                },
                uplink_cidr: "198.51.100.1/30",
                inet_if: "r1",
                inet_cidr: "198.51.100.2/30",
                inet_addr: "198.51.100.2",
            },
            RouterWiring {
                router: Router {
                    name: "r2",
                    ns: R2,
                    lan_addr: Ipv4Addr::new(192, 168, 100, 21),
                    lan_if: LAN_IF,
                    egress_addr: Ipv4Addr::new(198, 51, 100, 5),
                },
                uplink_cidr: "198.51.100.5/30",
                inet_if: "r2",
                inet_cidr: "198.51.100.6/30",
                inet_addr: "198.51.100.6",
            },
        ]
    }

    fn router_config(r: &Router, socket: &std::path::Path, opts: &Options) -> String {
        format!(
            r#"# hagw lab (egress): router {name}, written by `hagw lab up`
[bgp]
asn = 65000
router_id = "{addr}"
listen = ["{addr}"]

[[bgp.dynamic]]
range = "192.168.100.96/27"
remote_asn = "external"
default_originate = true
hold_time = 3
{bfd}
{common}[control]
socket = "{socket}"
"#,
            name = r.name,
            addr = r.lan_addr,
            socket = socket.display(),
            bfd = opts.peer_bfd(),
            common = opts.common(),
        )
    }

    fn host_config(socket: &std::path::Path, opts: &Options) -> String {
        let mut neighbors = String::new();
        for w in Egress::wiring() {
            neighbors.push_str(&format!(
                "[[bgp.neighbor]]\naddress = \"{}\"\nremote_asn = 65000\nhold_time = 3\n{}\n",
                w.router.lan_addr,
                opts.peer_bfd()
            ));
        }
        neighbors.push_str(&opts.common());
        format!(
            r#"# hagw lab (egress): the host, written by `hagw lab up`
[bgp]
asn = 65100
router_id = "192.168.100.100"

{neighbors}[kernel]
install = true
multipath_hash = "l4"
maximum_paths = 8
metric = 20
dhcp_default = "outrank"

[control]
socket = "{socket}"
"#,
            socket = socket.display(),
        )
    }
}

/// SNAT on a router: whatever leaves the uplink carries the uplink address.
fn snat_ruleset(uplink: &str) -> String {
    format!(
        "table ip hagwlab_nat {{\n  chain postrouting {{\n    type nat hook postrouting priority srcnat; policy accept;\n    oifname \"{uplink}\" masquerade\n  }}\n}}\n"
    )
}

impl Topology for Egress {
    fn kind(&self) -> Kind {
        Kind::Egress
    }

    fn namespaces(&self) -> Vec<&'static str> {
        vec![SW, HOST, R1, R2, INET]
    }

    fn build(&self) -> anyhow::Result<()> {
        // The LAN: one bridge in the switch namespace, one port per node.
        ip_ns(SW, &["link", "add", "br0", "type", "bridge"])?;
        ip_ns(SW, &["link", "set", "br0", "up"])?;
        let lan = [
            (HOST, "host", "192.168.100.100/24"),
            (R1, "r1", "192.168.100.20/24"),
            (R2, "r2", "192.168.100.21/24"),
        ];
        for (ns, port, cidr) in lan {
            // Made directly inside the namespaces: nothing appears in (or can
            // collide with) the machine's own namespace.
            run(
                "ip",
                &[
                    "link", "add", LAN_IF, "netns", ns, "type", "veth", "peer", "name", port,
                    "netns", SW,
                ],
            )?;
            ip_ns(SW, &["link", "set", port, "master", "br0", "up"])?;
            ip_ns(ns, &["addr", "add", cidr, "dev", LAN_IF])?;
            ip_ns(ns, &["link", "set", LAN_IF, "up"])?;
        }

        // The uplinks, the routers' default routes, forwarding and SNAT.
        for w in Egress::wiring() {
            let r = &w.router;
            run(
                "ip",
                &[
                    "link", "add", UPLINK_IF, "netns", r.ns, "type", "veth", "peer", "name",
                    w.inet_if, "netns", INET,
                ],
            )?;
            ip_ns(r.ns, &["addr", "add", w.uplink_cidr, "dev", UPLINK_IF])?;
            ip_ns(INET, &["addr", "add", w.inet_cidr, "dev", w.inet_if])?;
            ip_ns(r.ns, &["link", "set", UPLINK_IF, "up"])?;
            ip_ns(INET, &["link", "set", w.inet_if, "up"])?;
            ip_ns(r.ns, &["route", "add", "default", "via", w.inet_addr])?;
            sysctl(r.ns, "net.ipv4.ip_forward", "1")?;
            nft_load(r.ns, &snat_ruleset(UPLINK_IF))?;
        }

        // "The internet": the server's address, and the way back to the LAN
        // (unused with SNAT, there as in frr-lab.sh).
        ip_ns(
            INET,
            &["addr", "add", &format!("{SERVER_ADDR}/32"), "dev", "lo"],
        )?;
        ip_ns(
            INET,
            &[
                "route",
                "add",
                "192.168.100.0/24",
                "nexthop",
                "via",
                "198.51.100.1",
                "nexthop",
                "via",
                "198.51.100.5",
            ],
        )?;
        Ok(())
    }

    fn nodes(&self, opts: &Options) -> Vec<Node> {
        let mut nodes = Vec::new();
        for w in Egress::wiring() {
            let socket = state::path_in(&format!("{}.sock", w.router.name));
            nodes.push(Node {
                name: w.router.name,
                ns: w.router.ns,
                config: Egress::router_config(&w.router, &socket, opts),
                socket,
            });
        }
        let socket = state::path_in("host.sock");
        nodes.push(Node {
            name: "host",
            ns: HOST,
            config: Egress::host_config(&socket, opts),
            socket,
        });
        nodes
    }

    fn host_ns(&self) -> &'static str {
        HOST
    }

    fn routers(&self) -> Vec<Router> {
        Egress::wiring().map(|w| w.router).to_vec()
    }

    fn server(&self) -> (&'static str, SocketAddr) {
        (
            INET,
            SocketAddr::V4(SocketAddrV4::new(SERVER_ADDR, SERVER_PORT)),
        )
    }

    fn describe(&self) -> String {
        format!(
            "topology egress (seed 000):\n\
             \x20 {HOST} 192.168.100.100 --+-- br0 ({SW}) --+-- {R1} 192.168.100.20 --SNAT 198.51.100.1--+\n\
             \x20                                                 +-- {R2} 192.168.100.21 --SNAT 198.51.100.5--+-- {INET} 203.0.113.1:{SERVER_PORT}\n\
             \x20 hagw: host AS65100 peers r1/r2 AS65000 (dynamic range 192.168.100.96/27, default-originate, hold 3 s)\n\
             \x20       graceful restart on every node; the host pins each connection to its router"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_the_kernel() {
        for ns in Egress.namespaces() {
            assert!(ns.len() <= 15, "{ns} is too long for a namespace name");
            assert!(ns.starts_with("hagwlab-"));
        }
    }

    #[test]
    fn configs_are_valid() {
        for node in Egress.nodes(&Options::default()) {
            if let Err(problems) = crate::config::parse(&node.config) {
                panic!("{} config: {problems:?}\n{}", node.name, node.config);
            }
        }
    }
}
