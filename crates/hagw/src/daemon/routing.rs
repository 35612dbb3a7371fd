//! The RIB task: every peer's UPDATEs go through one place, which runs the
//! decision process and tells the kernel southbound which next hops each prefix
//! should have. Protocols never touch netlink; this is where "prefix P via these
//! next hops" is handed over.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use hagw_bgp::packet::{Update, AFI_IPV6};
use hagw_bgp::rib::{Change, Path, Rib};
use hagw_kernel::{pinning::Pinning, FibSync, Nexthop, RouteOwner};
use ipnet::IpNet;
use tokio::sync::{mpsc, oneshot};

use super::peer::PeerShared;

/// After a restarting peer is back, its stale routes wait this long at most
/// for its End-of-RIB (RFC 4724 §4.2 allows such an upper bound; FRR's
/// stalepath-time default). Its restart timer stops when it is back.
const STALE_PATH_TIME: Duration = Duration::from_secs(360);

/// Sends `StaleTimer { peer, epoch }` after `d`.
fn stale_timer(tx: &mpsc::UnboundedSender<RibEvent>, peer: IpAddr, epoch: u64, d: Duration) {
    let t = tx.clone();
    tokio::spawn(async move {
        tokio::time::sleep(d).await;
        let _ = t.send(RibEvent::StaleTimer { peer, epoch });
    });
}

pub enum RibEvent {
    Up {
        peer: Arc<PeerShared>,
        ebgp: bool,
        remote_asn: u32,
        remote_id: Ipv4Addr,
        /// Graceful restart: the families whose forwarding state the peer
        /// kept (F bit), as (is IPv6); None without the capability.
        graceful_restart: Option<Vec<bool>>,
    },
    Update {
        peer: Arc<PeerShared>,
        update: Box<Update>,
    },
    Down {
        peer: Arc<PeerShared>,
        /// Graceful restart: keep the peer's routes, stale, this long.
        stale_for: Option<Duration>,
    },
    /// The current multipath sets, for `hagw status`.
    Routes(oneshot::Sender<Vec<(IpNet, Vec<IpAddr>)>>),
    /// A restarting peer's time is up (RFC 4724 §4.2); `epoch` tells an old
    /// timer from the current one.
    StaleTimer { peer: IpAddr, epoch: u64 },
    /// Our own restart's selection deferral is over.
    DeferralEnd,
    /// A configured neighbor could not be reached: no answer or no route, or
    /// refusals for 10 s (a refusing neighbor is alive, its BGP restarting).
    Unreachable { peer: IpAddr },
}

/// We restarted with graceful restart: the kernel still holds the routes of our
/// previous run. Until every configured neighbor has sent End-of-RIB (or the
/// restart time passes) the kernel is left alone, then brought to the new RIB in
/// one pass and what was not refreshed is removed (RFC 4724 §4.1). A neighbor
/// that cannot be reached (or has refused us for 10 s), or whose session ends
/// hard, is not waited for: it would freeze the kernel's routes, its own stale
/// next hop included.
pub struct Deferral {
    pub neighbors: HashSet<IpAddr>,
    pub limit: Duration,
}

struct PeerInfo {
    /// Which peer object (session) the entry belongs to.
    id: u64,
    ebgp: bool,
    remote_asn: u32,
    remote_id: u32,
}

pub async fn run(
    mut rx: mpsc::UnboundedReceiver<RibEvent>,
    tx: mpsc::UnboundedSender<RibEvent>,
    max_paths: usize,
    fib: Option<FibSync>,
    deferral: Option<Deferral>,
    pin: Option<Pinning>,
) {
    let mut rib = Rib::new(max_paths);
    let mut peers: HashMap<IpAddr, PeerInfo> = HashMap::new();
    let mut changes = Vec::new();
    let mut epochs: HashMap<IpAddr, u64> = HashMap::new();
    let (mut deferring, mut waiting_eor) = match deferral {
        Some(d) if fib.is_some() => {
            let t = tx.clone();
            tokio::spawn(async move {
                tokio::time::sleep(d.limit).await;
                let _ = t.send(RibEvent::DeferralEnd);
            });
            tracing::info!(
                "graceful restart: keeping the previous run's routes until {} neighbor(s) send End-of-RIB",
                d.neighbors.len()
            );
            (true, d.neighbors)
        }
        _ => (false, HashSet::new()),
    };
    while let Some(ev) = rx.recv().await {
        let mut end_deferral = false;
        match ev {
            RibEvent::Up {
                peer,
                ebgp,
                remote_asn,
                remote_id,
                graceful_restart,
            } => {
                // The same address's previous session has not reported its end
                // yet: it has ended now (its late Down will be ignored).
                if peers.get(&peer.address).is_some_and(|i| i.id != peer.id) {
                    match &graceful_restart {
                        Some(_) => rib.peer_restarting(peer.address),
                        None => rib.peer_down(peer.address, &mut changes),
                    }
                }
                // RFC 4724 §4.2: back without GR, or without forwarding state
                // kept for a family (F bit clear, family absent): those stale
                // paths go now; the others wait for End-of-RIB.
                match &graceful_restart {
                    None => rib.sweep_stale(peer.address, None, &mut changes),
                    Some(kept) => {
                        for v6 in [false, true] {
                            if !kept.contains(&v6) {
                                rib.sweep_stale(peer.address, Some(v6), &mut changes);
                            }
                        }
                    }
                }
                // Back: the restart timer stops; what is still stale waits for
                // End-of-RIB, bounded by the stale-path time.
                let epoch = epochs.entry(peer.address).or_default();
                *epoch += 1;
                if rib.stale_count(peer.address) > 0 {
                    stale_timer(&tx, peer.address, *epoch, STALE_PATH_TIME);
                }
                peers.insert(
                    peer.address,
                    PeerInfo {
                        id: peer.id,
                        ebgp,
                        remote_asn,
                        remote_id: u32::from(remote_id),
                    },
                );
            }
            RibEvent::Update { peer, update } => {
                let Some(info) = peers.get(&peer.address).filter(|i| i.id == peer.id) else {
                    continue;
                };
                apply_update(&mut rib, peer.address, info, &update, &mut changes);
                if let Some((afi, _)) = update.is_end_of_rib() {
                    rib.sweep_stale(peer.address, Some(afi == AFI_IPV6), &mut changes);
                    if waiting_eor.remove(&peer.address) && deferring && waiting_eor.is_empty() {
                        end_deferral = true;
                    }
                }
                peer.received
                    .store(rib.received_from(peer.address), Ordering::Relaxed);
            }
            RibEvent::Down { peer, stale_for } => {
                // A late Down of a replaced session must not touch its successor.
                if peers.get(&peer.address).is_some_and(|i| i.id != peer.id) {
                    continue;
                }
                peers.remove(&peer.address);
                let epoch = epochs.entry(peer.address).or_default();
                *epoch += 1;
                match stale_for {
                    Some(d) => {
                        tracing::info!(peer = %peer.address, "graceful restart: keeping its routes for {d:?}");
                        rib.peer_restarting(peer.address);
                        stale_timer(&tx, peer.address, *epoch, d);
                    }
                    None => {
                        rib.peer_down(peer.address, &mut changes);
                        peer.received.store(0, Ordering::Relaxed);
                        end_deferral = stop_waiting(&mut waiting_eor, peer.address, deferring);
                    }
                }
            }
            RibEvent::StaleTimer { peer, epoch } => {
                if epochs.get(&peer) == Some(&epoch) && rib.stale_count(peer) > 0 {
                    tracing::info!(peer = %peer, "graceful restart: its restart (or stale-path) time is over, removing its stale routes");
                    rib.sweep_stale(peer, None, &mut changes);
                }
            }
            RibEvent::DeferralEnd => end_deferral = deferring,
            RibEvent::Unreachable { peer } => {
                end_deferral = stop_waiting(&mut waiting_eor, peer, deferring);
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
        if deferring {
            changes.clear();
            if !end_deferral {
                continue;
            }
            deferring = false;
            tracing::info!("graceful restart: selection deferral over, syncing the kernel");
            changes.extend(rib.installed().iter().map(|(p, n)| Change {
                prefix: *p,
                next_hops: n.clone(),
            }));
        }
        if let Some(fib) = &fib {
            for Change { prefix, next_hops } in changes.drain(..) {
                let nhs: Vec<Nexthop> = next_hops
                    .into_iter()
                    .map(|addr| Nexthop {
                        addr,
                        ifindex: None,
                    })
                    .collect();
                // FIB first; pinning follows the default route's next hops
                // (a message to its task: never blocks).
                let pin_nhs = (prefix.prefix_len() == 0).then(|| nhs.clone());
                fib.set_route(RouteOwner::Bgp, prefix, nhs);
                if let (Some(pin), Some(nhs)) = (&pin, pin_nhs) {
                    pin.set_default(prefix, nhs);
                }
            }
            if end_deferral {
                fib.purge_stale();
            }
        } else {
            changes.clear();
        }
    }
}

/// Stops waiting for `peer`'s End-of-RIB; true if that ends the deferral.
fn stop_waiting(waiting: &mut HashSet<IpAddr>, peer: IpAddr, deferring: bool) -> bool {
    if waiting.remove(&peer) {
        tracing::info!(peer = %peer, "graceful restart: not waiting for this neighbor's End-of-RIB");
        deferring && waiting.is_empty()
    } else {
        false
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::peer::PeerKind;
    use hagw_bgp::packet::{AsPath, Origin, PathAttributes};

    fn peer() -> Arc<PeerShared> {
        Arc::new(PeerShared::new(
            "192.168.100.20".parse().expect("ip"),
            PeerKind::Dynamic { range: 0 },
        ))
    }

    fn up(p: &Arc<PeerShared>, kept: Option<Vec<bool>>) -> RibEvent {
        RibEvent::Up {
            peer: p.clone(),
            ebgp: true,
            remote_asn: 65000,
            remote_id: Ipv4Addr::new(192, 168, 100, 20),
            graceful_restart: kept,
        }
    }

    fn default_route(p: &Arc<PeerShared>) -> RibEvent {
        RibEvent::Update {
            peer: p.clone(),
            update: Box::new(Update {
                withdrawn: vec![],
                attrs: PathAttributes {
                    origin: Some(Origin::Igp),
                    as_path: Some(AsPath { segments: vec![] }),
                    next_hop: Some(Ipv4Addr::new(192, 168, 100, 20)),
                    ..PathAttributes::default()
                },
                nlri: vec!["0.0.0.0/0".parse().expect("prefix")],
                treat_as_withdraw: None,
                discarded: vec![],
            }),
        }
    }

    async fn routes(tx: &mpsc::UnboundedSender<RibEvent>) -> usize {
        let (rtx, rrx) = oneshot::channel();
        tx.send(RibEvent::Routes(rtx)).expect("rib runs");
        rrx.await.expect("answer").len()
    }

    /// A dynamic peer that reconnects before its old session's end is
    /// reported: the old session's late Down leaves the new one alone.
    #[tokio::test]
    async fn a_late_down_of_a_replaced_session_is_ignored() {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(rx, tx.clone(), 8, None, None, None));
        let old = peer();
        tx.send(up(&old, None)).expect("send");
        tx.send(default_route(&old)).expect("send");
        let new = peer();
        tx.send(up(&new, None)).expect("send");
        tx.send(default_route(&new)).expect("send");
        tx.send(RibEvent::Down {
            peer: old.clone(),
            stale_for: None,
        })
        .expect("send");
        assert_eq!(routes(&tx).await, 1, "the new session's default stays");
        tx.send(RibEvent::Down {
            peer: new.clone(),
            stale_for: None,
        })
        .expect("send");
        assert_eq!(routes(&tx).await, 0);
    }

    /// A restarted peer whose OPEN keeps forwarding state for IPv4 (F bit)
    /// keeps its stale IPv4 routes until End-of-RIB; one that does not loses
    /// them at once (RFC 4724 §4.2).
    #[tokio::test]
    async fn stale_routes_follow_the_f_bit_of_the_new_session() {
        for (kept, expect) in [(Some(vec![false]), 1), (Some(vec![]), 0), (None, 0)] {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(run(rx, tx.clone(), 8, None, None, None));
            let p = peer();
            tx.send(up(&p, Some(vec![false]))).expect("send");
            tx.send(default_route(&p)).expect("send");
            assert_eq!(routes(&tx).await, 1);
            tx.send(RibEvent::Down {
                peer: p.clone(),
                stale_for: Some(Duration::from_secs(60)),
            })
            .expect("send");
            assert_eq!(routes(&tx).await, 1, "kept, stale, while the peer restarts");
            tx.send(up(&p, kept.clone())).expect("send");
            assert_eq!(routes(&tx).await, expect, "new OPEN {kept:?}");
        }
    }

    /// RFC 4724 §4.2: the restart timer stops once the peer is back; its
    /// stale routes then wait for End-of-RIB, bounded by the stale-path time.
    #[tokio::test(start_paused = true)]
    async fn the_restart_timer_stops_when_the_peer_is_back() {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(rx, tx.clone(), 8, None, None, None));
        let p = peer();
        tx.send(up(&p, Some(vec![false]))).expect("send");
        tx.send(default_route(&p)).expect("send");
        tx.send(RibEvent::Down {
            peer: p.clone(),
            stale_for: Some(Duration::from_secs(60)),
        })
        .expect("send");
        let back = peer();
        tx.send(up(&back, Some(vec![false]))).expect("send");
        tokio::time::sleep(Duration::from_secs(90)).await;
        assert_eq!(routes(&tx).await, 1, "kept past the restart time");
        tokio::time::sleep(STALE_PATH_TIME).await;
        assert_eq!(routes(&tx).await, 0, "gone after the stale-path time");
    }
}
