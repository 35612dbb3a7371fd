//! Seed 000: redundant egress gateways, the one definition `hagw lab up
//! egress` and the scenario tests (host, failover) build.
//!
//! ```text
//! host 192.168.100.100 --+-- br0 (sw) --+-- r1 192.168.100.20 --SNAT 198.51.100.1--+
//!                        | 192.168.100.1 +-- r2 192.168.100.21 --SNAT 198.51.100.5--+-- inet 203.0.113.1
//! ```
//!
//! The LAN is a bridge in the switch namespace, which also answers as
//! 192.168.100.1 (the "subnet gateway" of DHCP defaults and static routes).
//! Every node's LAN interface is `eth1` (the switch's ports are named after
//! the nodes); a router's uplink is `uplink` (the internet's side is named
//! after the router), its default route points up it, it forwards, and SNATs
//! what leaves the uplink. The internet holds the test server's address and
//! a way back to the LAN.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::Path;

use hagw_kernel::nft::{Family, Nft, Table};
use hagw_testkit::{try_addr, try_bridge, try_veth, Frr, Netns};

use super::{Kind, Mode, Node, Options, Router, Topology};
use crate::cut::SilentCut;
use crate::{state, Error};

/// Every node's interface on the LAN.
pub const LAN_IF: &str = "eth1";
/// A router's interface toward the internet.
pub const UPLINK_IF: &str = "uplink";
pub const HOST_ADDR: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 100);
/// The switch's own address on the LAN (the subnet gateway).
pub const SWITCH_ADDR: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 1);
/// The test server on the internet.
pub const SERVER_ADDR: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
pub const SERVER_PORT: u16 = 8080;

/// One of the two routers: its addresses and links.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouterSpec {
    /// "r1" or "r2": also its namespace's role and its switch port's name.
    pub name: &'static str,
    /// Its address on the LAN: the next hop of the host's default.
    pub lan_addr: Ipv4Addr,
    /// Its uplink address, which its SNAT puts on what it forwards.
    pub egress_addr: Ipv4Addr,
    pub uplink_cidr: &'static str,
    /// The internet's side of its uplink.
    pub inet_if: &'static str,
    pub inet_cidr: &'static str,
    /// Its default route's next hop.
    pub inet_addr: Ipv4Addr,
}

/// r1 and r2, in order.
pub const ROUTERS: [RouterSpec; 2] = [
    RouterSpec {
        name: "r1",
        lan_addr: Ipv4Addr::new(192, 168, 100, 20),
        egress_addr: Ipv4Addr::new(198, 51, 100, 1),
        uplink_cidr: "198.51.100.1/30",
        inet_if: "r1",
        inet_cidr: "198.51.100.2/30",
        inet_addr: Ipv4Addr::new(198, 51, 100, 2),
    },
    RouterSpec {
        name: "r2",
        lan_addr: Ipv4Addr::new(192, 168, 100, 21),
        egress_addr: Ipv4Addr::new(198, 51, 100, 5),
        uplink_cidr: "198.51.100.5/30",
        inet_if: "r2",
        inet_cidr: "198.51.100.6/30",
        inet_addr: Ipv4Addr::new(198, 51, 100, 6),
    },
];

/// The index in [`ROUTERS`] of router `name`; panics on another name (test
/// code).
fn router_index(name: &str) -> usize {
    ROUTERS
        .iter()
        .position(|r| r.name == name)
        .unwrap_or_else(|| panic!("seed 000 has routers r1 and r2, not {name:?}"))
}

/// The router named `name`; panics on another name (test code).
pub fn router_spec(name: &str) -> &'static RouterSpec {
    &ROUTERS[router_index(name)]
}

/// The SNAT table the routers load.
const NAT_TABLE: &str = "hagwlab_nat";

/// Seed 000's namespaces, wired, with a daemon of type `D` on each router
/// (none: `D = ()`, the lab's and many tests' case).
///
/// In test mode everything goes when it drops, in field order: the routers'
/// daemons first, then the host (and whatever the test started in it), the
/// routers, the internet, the switch last.
pub struct Seed000<D = ()> {
    daemons: Vec<D>,
    pub host: Netns,
    pub r1: Netns,
    pub r2: Netns,
    pub inet: Netns,
    pub sw: Netns,
}

impl Seed000 {
    /// Makes the namespaces (switch, host, r1, r2, internet) and wires them.
    /// In persistent mode a failure leaves what was made (the lab tears down
    /// by name); in test mode what was made goes with the handles.
    pub fn create(mode: Mode) -> Result<Seed000, Error> {
        let sw = mode.netns("sw")?;
        let host = mode.netns("host")?;
        let r1 = mode.netns("r1")?;
        let r2 = mode.netns("r2")?;
        let inet = mode.netns("inet")?;
        let lab = Seed000 {
            daemons: Vec::new(),
            host,
            r1,
            r2,
            inet,
            sw,
        };
        lab.wire()?;
        Ok(lab)
    }

    /// The seed-000 topology for a test (nothing running on the routers):
    /// unique names, removed on drop. Panics on failure.
    pub fn build() -> Seed000 {
        hagw_testkit::require_root();
        Seed000::create(Mode::Test).unwrap_or_else(|e| panic!("seed 000: {e}"))
    }

    /// The seed-000 topology for a test with FRR on both routers, configured
    /// as in `bench/frr-lab.sh` ([`frr_config`]): the anchor hagw is
    /// compared with.
    pub fn with_frr() -> Seed000<Frr> {
        Seed000::with_routers(|ns, r| Frr::start(ns, &frr_config(r), false))
    }

    fn wire(&self) -> Result<(), Error> {
        // The LAN: one bridge in the switch namespace, one port per node.
        let lan = [
            (&self.host, "host", HOST_ADDR),
            (&self.r1, "r1", ROUTERS[0].lan_addr),
            (&self.r2, "r2", ROUTERS[1].lan_addr),
        ];
        for (ns, port, a) in lan {
            try_veth(ns, LAN_IF, &self.sw, port)?;
            try_addr(ns, LAN_IF, &format!("{a}/24"))?;
        }
        try_bridge(&self.sw, "br0", &["host", "r1", "r2"])?;
        try_addr(&self.sw, "br0", &format!("{SWITCH_ADDR}/24"))?;

        // The uplinks, the routers' default routes, forwarding and SNAT.
        let nat = Table::new(Family::Ip, NAT_TABLE)?;
        for (ns, r) in [(&self.r1, &ROUTERS[0]), (&self.r2, &ROUTERS[1])] {
            try_veth(ns, UPLINK_IF, &self.inet, r.inet_if)?;
            try_addr(ns, UPLINK_IF, r.uplink_cidr)?;
            try_addr(&self.inet, r.inet_if, r.inet_cidr)?;
            ns.try_ip(&["route", "add", "default", "via", &r.inet_addr.to_string()])?;
            ns.try_sysctl("net.ipv4.ip_forward", "1")?;
            Nft::in_netns(ns.name()).replace_blocking(&nat, &snat_body(UPLINK_IF))?;
        }

        // "The internet": the server's address, and the way back to the LAN
        // (unused with SNAT, there as in frr-lab.sh).
        try_addr(&self.inet, "lo", &format!("{SERVER_ADDR}/32"))?;
        let via: Vec<String> = ROUTERS.iter().map(|r| r.egress_addr.to_string()).collect();
        self.inet.try_ip(&[
            "route",
            "add",
            "192.168.100.0/24",
            "nexthop",
            "via",
            &via[0],
            "nexthop",
            "via",
            &via[1],
        ])?;
        Ok(())
    }
}

impl<D> Seed000<D> {
    /// The seed-000 topology for a test with `start(namespace, router)`
    /// run on r1, then r2, e.g. hagw with the test's config:
    ///
    /// ```ignore
    /// let lab = Seed000::with_routers(|ns, r| Hagw::start(ns, &router_config(r.lan_addr)));
    /// lab.daemon("r1").proc.stop();
    /// ```
    pub fn with_routers(mut start: impl FnMut(&Netns, &RouterSpec) -> D) -> Seed000<D> {
        let Seed000 {
            host,
            r1,
            r2,
            inet,
            sw,
            ..
        } = Seed000::<()>::build();
        let daemons = vec![start(&r1, &ROUTERS[0]), start(&r2, &ROUTERS[1])];
        Seed000 {
            daemons,
            host,
            r1,
            r2,
            inet,
            sw,
        }
    }

    /// Router `name`'s namespace ("r1" or "r2"; panics otherwise).
    pub fn router(&self, name: &str) -> &Netns {
        match router_index(name) {
            0 => &self.r1,
            _ => &self.r2,
        }
    }

    /// The daemon [`Seed000::with_routers`] started on router `name`.
    pub fn daemon(&self, name: &str) -> &D {
        self.daemons
            .get(router_index(name))
            .unwrap_or_else(|| panic!("no daemon was started on {name}"))
    }

    /// Silently cuts router `name`'s LAN link, as `hagw lab fail` does: every
    /// frame dropped both ways at the netdev hooks (ARP included), nothing
    /// answers, no RST. Restored when the guard drops (or by
    /// [`SilentCut::restore`]).
    pub fn cut(&self, name: &str) -> SilentCut {
        SilentCut::new(self.router(name), LAN_IF)
    }

    /// Silently cuts router `name`'s uplink on the internet's side: the
    /// router's LAN stays up, its way out is dead.
    pub fn cut_uplink(&self, name: &str) -> SilentCut {
        SilentCut::new(&self.inet, router_spec(name).inet_if)
    }
}

/// SNAT on a router: whatever leaves the uplink carries the uplink address.
fn snat_body(uplink: &str) -> String {
    format!(
        "  chain postrouting {{\n    type nat hook postrouting priority srcnat; policy accept;\n    oifname \"{uplink}\" masquerade\n  }}\n"
    )
}

/// An FRR router as in bench/frr-lab.sh: a listen range, default-originate.
pub fn frr_config(r: &RouterSpec) -> String {
    format!(
        "frr defaults datacenter\n\
         router bgp 65000\n bgp router-id {id}\n no bgp ebgp-requires-policy\n\
         neighbor fabric peer-group\n neighbor fabric remote-as external\n\
         neighbor fabric timers 1 3\n\
         bgp listen range 192.168.100.96/27 peer-group fabric\n\
         address-family ipv4 unicast\n  neighbor fabric default-originate\n\
         exit-address-family\n",
        id = r.lan_addr
    )
}

// ---------------------------------------------------------------------------
// `hagw lab up egress`.

/// Seed 000 as `hagw lab` runs it: hagw on both routers and on the host.
pub struct Egress;

impl Egress {
    fn router(r: &RouterSpec) -> Router {
        Router {
            name: r.name,
            ns: super::lab_ns(r.name),
            lan_addr: r.lan_addr,
            lan_if: LAN_IF,
            egress_addr: r.egress_addr,
        }
    }

    fn router_config(r: &RouterSpec, socket: &Path, opts: &Options) -> String {
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

    fn host_config(socket: &Path, opts: &Options) -> String {
        let mut neighbors = String::new();
        for r in &ROUTERS {
            neighbors.push_str(&format!(
                "[[bgp.neighbor]]\naddress = \"{}\"\nremote_asn = 65000\nhold_time = 3\n{}\n",
                r.lan_addr,
                opts.peer_bfd()
            ));
        }
        neighbors.push_str(&opts.common());
        format!(
            r#"# hagw lab (egress): the host, written by `hagw lab up`
[bgp]
asn = 65100
router_id = "{HOST_ADDR}"

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

impl Topology for Egress {
    fn kind(&self) -> Kind {
        Kind::Egress
    }

    fn namespaces(&self) -> Vec<String> {
        ["sw", "host", "r1", "r2", "inet"]
            .map(super::lab_ns)
            .to_vec()
    }

    fn build(&self) -> Result<(), Error> {
        Seed000::create(Mode::Persistent).map(drop)
    }

    fn nodes(&self, opts: &Options) -> Vec<Node> {
        let mut nodes = Vec::new();
        for r in &ROUTERS {
            let socket = state::path_in(&format!("{}.sock", r.name));
            nodes.push(Node {
                name: r.name,
                ns: super::lab_ns(r.name),
                config: Egress::router_config(r, &socket, opts),
                socket,
            });
        }
        let socket = state::path_in("host.sock");
        nodes.push(Node {
            name: "host",
            ns: self.host_ns(),
            config: Egress::host_config(&socket, opts),
            socket,
        });
        nodes
    }

    fn host_ns(&self) -> String {
        super::lab_ns("host")
    }

    fn routers(&self) -> Vec<Router> {
        ROUTERS.iter().map(Egress::router).collect()
    }

    fn server(&self) -> (String, SocketAddr) {
        (
            super::lab_ns("inet"),
            SocketAddr::V4(SocketAddrV4::new(SERVER_ADDR, SERVER_PORT)),
        )
    }

    fn describe(&self) -> String {
        let [sw, host, r1, r2, inet] = ["sw", "host", "r1", "r2", "inet"].map(super::lab_ns);
        format!(
            "topology egress (seed 000):\n\
             \x20 {host} 192.168.100.100 --+-- br0 ({sw}) --+-- {r1} 192.168.100.20 --SNAT 198.51.100.1--+\n\
             \x20                                                 +-- {r2} 192.168.100.21 --SNAT 198.51.100.5--+-- {inet} 203.0.113.1:{SERVER_PORT}\n\
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
            assert!(
                hagw_testkit::valid_name(&ns),
                "{ns} is not a usable namespace name"
            );
            assert!(ns.starts_with("hagwlab-"));
        }
    }

    #[test]
    fn the_lab_and_the_wiring_agree() {
        let routers = Egress.routers();
        assert_eq!(routers.len(), ROUTERS.len());
        for (r, spec) in routers.iter().zip(&ROUTERS) {
            assert_eq!(
                (r.name, r.lan_addr, r.egress_addr),
                (spec.name, spec.lan_addr, spec.egress_addr)
            );
            assert_eq!(r.ns, format!("hagwlab-{}", spec.name));
            assert!(spec
                .uplink_cidr
                .starts_with(&format!("{}/", spec.egress_addr)));
        }
    }
}
