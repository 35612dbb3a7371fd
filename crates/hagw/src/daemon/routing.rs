//! The RIB task: every peer's UPDATEs go through one place, which runs the
//! decision process and tells the kernel southbound which next hops each prefix
//! should have. Protocols never touch netlink; this is where "prefix P via these
//! next hops" is handed over.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use hagw_bgp::packet::Update;
use hagw_bgp::rib::{Change, Path, Rib};
use hagw_kernel::{FibSync, Nexthop};
use ipnet::IpNet;
use tokio::sync::{mpsc, oneshot};

use super::peer::PeerShared;

pub enum RibEvent {
    Up {
        peer: Arc<PeerShared>,
        ebgp: bool,
        remote_asn: u32,
        remote_id: Ipv4Addr,
        graceful_restart: bool,
    },
    Update {
        peer: Arc<PeerShared>,
        update: Box<Update>,
    },
    Down {
        peer: Arc<PeerShared>,
    },
    /// The current multipath sets, for `hagw status`.
    Routes(oneshot::Sender<Vec<(IpNet, Vec<IpAddr>)>>),
}

struct PeerInfo {
    ebgp: bool,
    remote_asn: u32,
    remote_id: u32,
}

pub async fn run(
    mut rx: mpsc::UnboundedReceiver<RibEvent>,
    max_paths: usize,
    fib: Option<FibSync>,
) {
    let mut rib = Rib::new(max_paths);
    let mut peers: HashMap<IpAddr, PeerInfo> = HashMap::new();
    let mut changes = Vec::new();
    while let Some(ev) = rx.recv().await {
        match ev {
            RibEvent::Up {
                peer,
                ebgp,
                remote_asn,
                remote_id,
                ..
            } => {
                peers.insert(
                    peer.address,
                    PeerInfo {
                        ebgp,
                        remote_asn,
                        remote_id: u32::from(remote_id),
                    },
                );
            }
            RibEvent::Update { peer, update } => {
                let Some(info) = peers.get(&peer.address) else {
                    continue;
                };
                apply_update(&mut rib, peer.address, info, &update, &mut changes);
                peer.received
                    .store(rib.received_from(peer.address), Ordering::Relaxed);
            }
            RibEvent::Down { peer } => {
                peers.remove(&peer.address);
                rib.peer_down(peer.address, &mut changes);
                peer.received.store(0, Ordering::Relaxed);
            }
            RibEvent::Routes(tx) => {
                let _ = tx.send(
                    rib.installed()
                        .iter()
                        .map(|(p, n)| (*p, n.clone()))
                        .collect(),
                );
            }
        }
        if let Some(fib) = &fib {
            for Change { prefix, next_hops } in changes.drain(..) {
                fib.set_route(
                    prefix,
                    next_hops
                        .into_iter()
                        .map(|addr| Nexthop {
                            addr,
                            ifindex: None,
                        })
                        .collect(),
                );
            }
        } else {
            changes.clear();
        }
    }
}

fn apply_update(rib: &mut Rib, peer: IpAddr, info: &PeerInfo, u: &Update, out: &mut Vec<Change>) {
    for p in u.withdrawn_all() {
        rib.withdraw(peer, p, out);
    }
    if u.treat_as_withdraw.is_some() {
        // RFC 7606 §2: every prefix the UPDATE carries is withdrawn.
        for p in u.announced() {
            rib.withdraw(peer, p, out);
        }
        return;
    }
    let path =
        |nh: IpAddr| Path::from_attrs(&u.attrs, nh, info.remote_asn, info.ebgp, info.remote_id);
    if let Some(nh) = u.attrs.next_hop {
        for p in &u.nlri {
            rib.announce(peer, IpNet::V4(*p), path(IpAddr::V4(nh)), out);
        }
    }
    if let Some(mp) = &u.attrs.mp_reach {
        // The global next hop; a link-local-only one (RFC 2545) is used as is.
        let Some(nh) = mp
            .next_hops
            .iter()
            .find(|a| !is_link_local(a))
            .or(mp.next_hops.first())
        else {
            return;
        };
        for p in &mp.nlri {
            rib.announce(peer, *p, path(*nh), out);
        }
    }
}

fn is_link_local(a: &IpAddr) -> bool {
    match a {
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
        IpAddr::V4(_) => false,
    }
}
