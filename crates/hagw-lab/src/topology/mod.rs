//! The lab's topologies, one file each, each defined once for both `hagw
//! lab` and the scenario tests.
//!
//! A topology file holds:
//! * a struct of its namespaces (e.g. [`seed000::Seed000`]) whose `create`
//!   makes and wires them in either [`Mode`]: this is the one definition of
//!   the seed. In test mode it also starts daemons on the routers and cuts
//!   links for a test in one call;
//! * a [`Topology`] impl describing it to `hagw lab`: the hagw daemons and
//!   their configs, the routers `fail` can cut, where the test server
//!   listens. `up`, `status`, `fail`, `heal` and `down` work from that
//!   description only;
//! * a [`Kind`] variant naming it on the command line.
//!
//! Today: `seed000.rs` (egress gateways). Next to it come `vrrp.rs` (seed
//! 002), `convergent.rs` (seed 003) and `vnet.rs` (seed 004).

pub mod seed000;
pub mod vnet;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use hagw_testkit::Netns;

use crate::Error;

/// Prefix of every namespace `hagw lab` makes (`hagwlab-host`...).
pub const LAB_PREFIX: &str = "hagwlab-";

/// How a topology's namespaces are made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `hagw lab`: fixed names (`hagwlab-<role>`), left standing when the
    /// handles drop, since `up`, `fail` and `down` are separate processes.
    Persistent,
    /// A scenario test: unique `hgt…-<role>` names, removed when the handles
    /// drop (also when the test panics).
    Test,
}

impl Mode {
    /// The namespace for `role` ("host", "r1"...) in this mode. Test mode
    /// panics on failure, as test code does.
    pub fn netns(self, role: &str) -> Result<Netns, Error> {
        match self {
            Mode::Persistent => Ok(Netns::create_persistent(&lab_ns(role))?),
            Mode::Test => Ok(Netns::new(role)),
        }
    }
}

/// The lab's (persistent) namespace name for `role`.
pub fn lab_ns(role: &str) -> String {
    format!("{LAB_PREFIX}{role}")
}

/// `hagw lab up [TOPOLOGY]`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Kind {
    /// Seed 000: a host behind two SNAT egress routers, default route by BGP
    /// with ECMP (L4 hash).
    #[default]
    Egress,
    /// Seed 004: virtual networks on proxy ARP and policy routing; a router,
    /// two hosts, two networks, four VMs, the VMs' /32s by BGP.
    Vnet,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Egress => "egress",
            Kind::Vnet => "vnet",
        }
    }

    pub fn from_name(name: &str) -> Result<Kind, Error> {
        match name {
            "egress" => Ok(Kind::Egress),
            "vnet" => Ok(Kind::Vnet),
            other => Err(Error::UnknownTopology(other.to_string())),
        }
    }

    pub fn topology(self) -> Box<dyn Topology> {
        match self {
            Kind::Egress => Box::new(seed000::Egress),
            Kind::Vnet => Box::new(vnet::Vnet),
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
    pub(crate) fn peer_bfd(&self) -> &'static str {
        if self.bfd_ms > 0 {
            "bfd = true\n"
        } else {
            ""
        }
    }

    /// The top-level sections every node shares: BFD timers and graceful
    /// restart (a restarting hagw loses no packet).
    pub(crate) fn common(&self) -> String {
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
    pub ns: String,
    pub config: String,
    pub socket: PathBuf,
}

/// A router `hagw lab fail` can cut.
#[derive(Clone, Debug)]
pub struct Router {
    pub name: &'static str,
    pub ns: String,
    /// Its address on the hosts' LAN: the next hop the host's default uses.
    pub lan_addr: Ipv4Addr,
    /// Its LAN interface (the one `fail` cuts).
    pub lan_if: &'static str,
    /// The source address the server sees for flows through it (its SNAT).
    pub egress_addr: Ipv4Addr,
}

/// A topology as `hagw lab` sees it (persistent mode).
pub trait Topology {
    fn kind(&self) -> Kind;
    /// Every namespace, in creation order (down deletes them all).
    fn namespaces(&self) -> Vec<String>;
    /// Creates and wires the namespaces, persistent. On failure what was
    /// made stays: the caller tears the lab down by name.
    fn build(&self) -> Result<(), Error>;
    /// The hagw daemons, in start order.
    fn nodes(&self, opts: &Options) -> Vec<Node>;
    /// The namespace whose default route the lab watches and whose flows it holds.
    fn host_ns(&self) -> String;
    fn routers(&self) -> Vec<Router>;
    /// Where the test server runs and listens.
    fn server(&self) -> (String, SocketAddr);
    /// A one-paragraph picture printed by `up`.
    fn describe(&self) -> String;

    /// Whether `up` opens long-lived flows from the host through the routers.
    fn flows(&self) -> bool {
        true
    }

    /// What `up` does once the daemons run, and what it then prints; `None`
    /// (the default): wait until the host's default route lists every
    /// router (seed 000).
    fn settle(&self, _timeout: std::time::Duration) -> anyhow::Result<Option<String>> {
        Ok(None)
    }

    fn router(&self, name: &str) -> Result<Router, Error> {
        let all = self.routers();
        all.iter()
            .find(|r| r.name == name)
            .cloned()
            .ok_or_else(|| Error::NoRouter {
                name: name.to_string(),
                topology: self.kind().name(),
                routers: all.iter().map(|r| r.name).collect::<Vec<_>>().join(", "),
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
