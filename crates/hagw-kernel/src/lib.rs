//! Kernel southbound: every netlink and sysctl call hagw makes.
//!
//! The heart of the crate is [`FibSync`] (module [`fib`]): the protocols tell it
//! "prefix P should be reachable via these next hops", and it makes the kernel's
//! FIB match, and keeps it matching (hand deletions, link flaps, DHCP clients
//! re-adding defaults, next hops becoming on-link later).
//!
//! * [`netlink`] — the one netlink layer: a pipelining request socket, and
//!   per object (route, rule, address, link and bridge, neighbour) the message
//!   builders and parsers every feature shares; events; a whole-system dump.
//! * [`nft`] — the one place `nft` runs: tables owned by name, replaced
//!   atomically, counters read back.
//! * [`reconcile`] — the loop every reconciler runs in (commands, events,
//!   deadlines, periodic resync, snapshot, shutdown).
//! * [`fib`] — FibSync: routes by owner (BGP, statics, VRRP, virtual networks).
//! * [`pinning`] — connection pinning (fwmark rules, per-router tables, nft).
//! * [`policy_routing`] — per-NIC source policy routing.
//! * [`nat`] — the NAT table of convergent gateways (source NAT, port
//!   forwards, full-NAT), one atomic nftables table.
//! * [`gateway`] — the anycast gateway: the same address on every node's
//!   bridge, its ARP/ND kept off the uplinks.
//! * [`sysctl`] — `/proc/sys` knobs, global and per interface.
//! * [`vip`] — the VRRP virtual addresses: added and removed at once, kept
//!   so, only hagw's own ever removed; [`announce`] — gratuitous ARP and
//!   unsolicited NA for them.
//! * [`vnet`] — virtual networks on proxy ARP and policy routing: the host's
//!   bridges, tables, rules and VMs learned from neighbour entries; the
//!   router's gateways on `lo` and NAT set.

use std::net::IpAddr;

use ipnet::IpNet;

pub mod fib;
pub mod gateway;
pub mod nat;
pub mod netlink;
pub mod nft;
pub mod pinning;
pub mod policy_routing;
pub mod reconcile;
pub mod sysctl;
pub mod vnet;

pub mod announce;
pub mod vip;

pub use fib::{DhcpDefault, FibConfig, FibSync, RouteOwner, StaticRoute};
pub use netlink::ifindex;
pub use netlink::Nexthop;
pub use sysctl::set_multipath_hash_policy;

/// hagw's own route protocol number (`rtm_protocol`). Routes carrying it are
/// owned by hagw; routes of any other protocol are never modified (except
/// foreign default routes in [`DhcpDefault::Remove`] mode).
pub const RTPROT_HAGW: u8 = 199;

/// Where [`install_proto_name`] writes the protocol name for iproute2.
pub const PROTO_NAME_DIR: &str = "/etc/iproute2/rt_protos.d";

/// Errors of the kernel southbound, with context: which prefix, which
/// operation, which errno.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// A netlink socket could not be opened or used.
    #[error("netlink socket: {op}: {source}")]
    Socket {
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// The kernel refused a route operation.
    #[error("{op} {prefix}: {msg} (errno {errno})")]
    Route {
        op: &'static str,
        prefix: IpNet,
        errno: i32,
        msg: String,
    },
    /// A next hop is unusable for a prefix (family mismatch, link-local
    /// without interface...).
    #[error("next hop {nexthop} for {prefix}: {reason}")]
    InvalidNexthop {
        prefix: IpNet,
        nexthop: IpAddr,
        reason: &'static str,
    },
    /// Reading or writing a sysctl failed.
    #[error("sysctl {path}: {source}")]
    Sysctl {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// Looking up an interface failed (other than "no such interface").
    #[error("interface {name}: {source}")]
    Interface {
        name: String,
        #[source]
        source: std::io::Error,
    },
    /// Writing the iproute2 protocol name file failed.
    #[error("{path}: {source}")]
    ProtoName {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Writes `/etc/iproute2/rt_protos.d/hagw.conf` ("199 hagw") so that
/// `ip route` prints `proto hagw` for hagw's routes. Creates the directory if
/// missing; a read-only filesystem (EROFS) is only a warning.
pub fn install_proto_name() -> Result<(), KernelError> {
    install_proto_name_in(std::path::Path::new(PROTO_NAME_DIR))
}

/// [`install_proto_name`] into another directory (for tests and packaging).
pub fn install_proto_name_in(dir: &std::path::Path) -> Result<(), KernelError> {
    let path = dir.join("hagw.conf");
    let content = format!("{RTPROT_HAGW}\thagw\n");
    let res = std::fs::create_dir_all(dir).and_then(|()| {
        if std::fs::read_to_string(&path).ok().as_deref() == Some(content.as_str()) {
            return Ok(());
        }
        std::fs::write(&path, &content)
    });
    match res {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(nix::libc::EROFS) => {
            tracing::warn!(path = %path.display(), "read-only filesystem: `ip route` will print `proto 199` instead of `proto hagw`");
            Ok(())
        }
        Err(source) => Err(KernelError::ProtoName {
            path: path.display().to_string(),
            source,
        }),
    }
}
