//! Virtual networks on proxy ARP and policy routing (seed 004), host side:
//! [`VnetSync`] keeps, per network, a bridge carrying the network's gateway
//! address (the same on every host), proxy ARP on it, a routing table that
//! sends the network and the default to the routers, and an `iif` rule that
//! makes everything entering from the bridge use that table:
//!
//! ```text
//! br_net1: 10.10.10.2/24, proxy_arp 1, arp_accept 1, MAC 02:68:0a:0a:0a:00
//! 101: from all iif br_net1 lookup 101 proto hagw
//! table 101: default proto hagw nexthop via 192.168.56.101 nexthop via 192.168.56.102
//!            10.10.10.0/24 proto hagw nexthop via ... (the same routers)
//!            10.10.10.10 dev br_net1 proto hagw scope link     (a VM on this host)
//! ```
//!
//! It also learns which VMs live behind each bridge, from the kernel's
//! neighbour entries on it ([`VmEvent`]s go to the daemon, which announces
//! them over BGP).
//!
//! * **Which neighbours are VMs**: valid entries (reachable, stale, delay,
//!   probe, permanent) on the bridge whose address is inside the network and
//!   is not the bridge's own, the network or broadcast address. Proxy ARP
//!   creates no entries on the bridge for the remote VMs it answers for (their
//!   traffic leaves toward the routers), so those are never taken for local.
//!   A VM is forgotten when its entry fails (FAILED), or when the bridge port
//!   its MAC was last seen on leaves the bridge (the FDB says which port; the
//!   entry is then deleted so that only a fresh answer brings it back). A
//!   deleted entry of a known VM (GC, a flush) is re-resolved first, not
//!   forgotten on the spot.
//! * **Silent VMs**: every [`POKE_PERIOD`] each known VM's entry is marked
//!   used (NTF_USE), so the kernel keeps confirming it with unicast probes
//!   even without traffic. With the bridge's neighbour timers
//!   ([`NeighTimers::default`]) a VM that stops answering is withdrawn
//!   within [`NeighTimers::withdraw_bound`] (6.5 s).
//! * **Same MAC everywhere**: the bridge of a network gets the same MAC on
//!   every host ([`default_mac`]), like its address, so a VM that moves to
//!   another host keeps working with the ARP cache it had.
//! * **Local VMs in the table**: each known VM gets a `/32` (`/128`) `dev
//!   BRIDGE` route in the network's table, so traffic between VMs of one host
//!   stays on the host, and proxy ARP never answers for a VM it knows is
//!   local (the route lookup says "same interface").
//! * **No router alive**: the table then holds `unreachable` routes, so VM
//!   traffic is refused, never falls through to the main table's default.
//! * **IPv6**: the equivalent of proxy ARP, proxy NDP, needs one proxy entry
//!   per remote address, which a host does not know. So with `address6` the
//!   bridge carries the gateway address and the VMs use /128 addresses with
//!   that gateway (nothing on-link but the gateway): every packet goes through
//!   the host, which routes it exactly as IPv4 (table, rule, routers). VMs
//!   are learned from their IPv6 neighbour entries the same way.
//!
//! # Ownership
//!
//! Rules of protocol [`crate::RTPROT_HAGW`] with an `iif` selector are the
//! virtual networks' (pinning matches fwmarks, policy routing sources);
//! routes of that protocol in the configured tables, and in the tables of
//! such rules left by an earlier run, are theirs. Bridges hagw creates carry
//! the alias `hagw vnet NAME`; only those are ever deleted, and only when
//! their network has left the config (at start). A bridge that existed is
//! adopted and left in place. On shutdown without graceful restart the rules
//! and table routes go; bridges, their addresses and VM ports stay (a
//! hypervisor expects its bridge), so VMs keep their local connectivity.

mod plan;
mod router;
mod task;

use std::net::IpAddr;
use std::time::Duration;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use tokio::sync::mpsc;

pub use plan::{default_mac, have_of, want_routes, Want};
pub use router::{masquerade_body, masquerade_elements_script, GatewayNet, VnetRouter};

use crate::{reconcile::Handle, KernelError, RTPROT_HAGW};

/// How often each known VM's neighbour entry is marked used, so the kernel
/// keeps confirming it.
pub const POKE_PERIOD: Duration = Duration::from_secs(1);
/// Period of the safety resync.
pub const RESYNC_PERIOD: Duration = Duration::from_secs(30);
/// Delay between an event and the resync it triggers.
pub const EVENT_RESYNC_DELAY: Duration = Duration::from_millis(50);

/// One virtual network on this host (`[[vnet]]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkConfig {
    pub name: String,
    pub bridge: String,
    /// The bridge's address with the network's prefix length (the same on
    /// every host).
    pub address: Ipv4Net,
    /// The IPv6 gateway address on the bridge, with the network's prefix.
    pub address6: Option<Ipv6Net>,
    pub table: u32,
    /// Priority of the `iif` rule(s).
    pub priority: u32,
    /// The routers the table's network and default routes go through.
    pub routers: Vec<IpAddr>,
    /// VMs announced whatever the neighbour table says.
    pub static_vms: Vec<IpAddr>,
    /// The bridge's MAC (the same on every host).
    pub mac: [u8; 6],
}

impl NetworkConfig {
    pub fn network(&self) -> Ipv4Net {
        self.address.trunc()
    }

    pub fn network6(&self) -> Option<Ipv6Net> {
        self.address6.map(|a| a.trunc())
    }

    /// The alias marking a bridge hagw created for this network.
    pub fn alias(&self) -> String {
        format!("{ALIAS_PREFIX}{}", self.name)
    }

    /// Whether `a` may be a VM of this network: inside it, and not the
    /// bridge's own, the network or the broadcast address.
    pub fn may_be_vm(&self, a: IpAddr) -> bool {
        match a {
            IpAddr::V4(v4) => {
                let n = self.network();
                n.contains(&v4)
                    && v4 != self.address.addr()
                    && (n.prefix_len() >= 31 || (v4 != n.network() && v4 != n.broadcast()))
            }
            IpAddr::V6(v6) => self
                .address6
                .is_some_and(|a6| a6.trunc().contains(&v6) && v6 != a6.addr()),
        }
    }

    /// The bridge's addresses.
    pub fn addresses(&self) -> Vec<IpNet> {
        let mut v = vec![IpNet::V4(self.address)];
        v.extend(self.address6.map(IpNet::V6));
        v
    }
}

/// What the alias of a bridge hagw created starts with.
pub const ALIAS_PREFIX: &str = "hagw vnet ";

/// The neighbour timers set on every bridge (IPv4 and IPv6): they bound how
/// long a VM that stopped answering stays announced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NeighTimers {
    /// `base_reachable_time_ms`: a confirmed entry stays REACHABLE a random
    /// 0.5-1.5 times this.
    pub base_reachable_ms: u32,
    /// `delay_first_probe_time` (whole seconds): STALE-and-used to the first
    /// probe.
    pub delay_first_probe_s: u32,
    /// `retrans_time_ms`: between probes.
    pub retrans_ms: u32,
    /// `ucast_solicit`: unicast probes before FAILED.
    pub ucast_solicit: u32,
    /// `proxy_delay` (centiseconds): a proxy answer to a broadcast request
    /// waits a random [0, this), so a VM of this host that answers for
    /// itself wins (the kernel then ignores the later proxy answer for a
    /// `locktime`). The kernel's 80 (0.8 s) would delay every VM's first
    /// ARP for its gateway that long; 10 keeps the first packet fast.
    pub proxy_delay_cs: u32,
}

impl Default for NeighTimers {
    fn default() -> Self {
        NeighTimers {
            base_reachable_ms: 2000,
            delay_first_probe_s: 1,
            retrans_ms: 500,
            ucast_solicit: 3,
            proxy_delay_cs: 10,
        }
    }
}

impl NeighTimers {
    /// The longest a VM that stopped answering stays known: REACHABLE at
    /// most 1.5 x base, then used by the next poke, the first-probe delay,
    /// and the probes.
    pub fn withdraw_bound(&self) -> Duration {
        Duration::from_millis(
            u64::from(self.base_reachable_ms) * 3 / 2
                + POKE_PERIOD.as_millis() as u64
                + u64::from(self.delay_first_probe_s) * 1000
                + u64::from(self.ucast_solicit) * u64::from(self.retrans_ms),
        )
    }
}

/// Configuration of [`VnetSync`].
#[derive(Debug, Clone)]
pub struct VnetConfig {
    pub networks: Vec<NetworkConfig>,
    pub protocol: u8,
    pub timers: NeighTimers,
}

impl VnetConfig {
    pub fn new(networks: Vec<NetworkConfig>) -> VnetConfig {
        VnetConfig {
            networks,
            protocol: RTPROT_HAGW,
            timers: NeighTimers::default(),
        }
    }
}

/// A VM appearing on or leaving a network of this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmEvent {
    Up {
        network: usize,
        addr: IpAddr,
    },
    Down {
        network: usize,
        addr: IpAddr,
    },
    /// The first sync is done: every VM known at start has been reported
    /// (announcements may complete: End-of-RIB).
    Ready,
}

/// Where a known VM comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum VmSource {
    Learned,
    Static,
}

/// One network of [`VnetSync::snapshot`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkStatus {
    pub name: String,
    pub bridge: String,
    pub ifindex: Option<u32>,
    /// hagw created the bridge (else it adopted it).
    pub created: bool,
    pub table: u32,
    /// The routers the table's routes go through now.
    pub routers: Vec<IpAddr>,
    pub vms: Vec<(IpAddr, VmSource)>,
    pub error: Option<String>,
}

pub enum Cmd {
    /// The routers that are alive (BGP session up or restarting); `None`
    /// for every configured router.
    Routers(Option<Vec<IpAddr>>),
}

/// A handle to the task keeping the virtual networks of this host.
#[derive(Clone, Debug)]
pub struct VnetSync {
    h: Handle<Cmd, Vec<NetworkStatus>>,
}

impl VnetSync {
    /// Sets the system up (forwarding, bridges, tables, rules), removes what
    /// an earlier run made for networks no longer configured, learns the VMs
    /// already there (each reported on `events`, then [`VmEvent::Ready`]) and
    /// spawns the task. Every router counts as alive until
    /// [`VnetSync::set_routers`] says otherwise.
    pub async fn start(
        cfg: VnetConfig,
        events: mpsc::UnboundedSender<VmEvent>,
    ) -> Result<VnetSync, KernelError> {
        task::start(cfg, events).await.map(|h| VnetSync { h })
    }

    /// The routers alive now (the others leave the tables' multipath routes).
    pub fn set_routers(&self, alive: Option<Vec<IpAddr>>) {
        self.h.send(Cmd::Routers(alive));
    }

    pub async fn snapshot(&self) -> Vec<NetworkStatus> {
        self.h.snapshot().await
    }

    /// Stops; with `remove`, deletes the rules and the tables' routes first
    /// (bridges stay).
    pub async fn shutdown(&self, remove: bool) {
        self.h.shutdown(remove).await
    }
}
