//! The RIB task: every peer's UPDATEs go through one place, which runs the
//! decision process and tells the kernel southbound which next hops each prefix
//! should have. Protocols never touch netlink; this is where "prefix P via these
//! next hops" is handed over.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use hagw_bgp::graceful_restart::{Output, Restarts, Timer};
use hagw_bgp::packet::{Update, AFI_IPV6};
use hagw_bgp::rib::{Change, NextHops, Path, Rib};
use hagw_kernel::{fib, pinning::Pinning, FibSync, Nexthop, RouteOwner};
use ipnet::IpNet;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::peer::PeerShared;

/// Our own restart's selection deferral (RFC 4724 §4.1): see
/// [`hagw_bgp::graceful_restart`].
pub use hagw_bgp::graceful_restart::Deferral;

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
    /// A configured neighbor could not be reached: no answer or no route, or
    /// refusals for 10 s (a refusing neighbor is alive, its BGP restarting).
    Unreachable { peer: IpAddr },
}

struct PeerInfo {
    /// Which peer object (session) the entry belongs to.
    id: u64,
    ebgp: bool,
    remote_asn: u32,
    remote_id: u32,
}

/// The RIB task. `_tx` is no longer used: timers are deadlines of the sans-IO
/// core, not tasks sending events back. Held anyway, as before, so the task
/// outlives its other senders; drop it from the signature with the caller.
pub async fn run(
    mut rx: mpsc::UnboundedReceiver<RibEvent>,
    max_paths: usize,
    fib: Option<FibSync>,
    deferral: Option<Deferral>,
    pin: Option<Pinning>,
) {
    // Without a kernel to sync there is nothing to defer.
    let deferral = deferral.filter(|_| fib.is_some());
    if let Some(d) = &deferral {
        tracing::info!(
            "graceful restart: keeping the previous run's routes until {} neighbor(s) send End-of-RIB",
            d.neighbors.len()
        );
    }
    let mut task = Task {
        rib: Rib::new(max_paths),
        gr: Restarts::new(deferral, now()),
        peers: HashMap::new(),
        changes: Vec::new(),
        out: Vec::new(),
    };
    let mut kernel = Kernel {
        fib,
        pin,
        last: None,
    };
    loop {
        let deadline = task.gr.next_deadline().map(Instant::from_std);
        tokio::select! {
            ev = rx.recv() => match ev {
                Some(ev) => task.on_event(ev),
                None => return,
            },
            () = sleep_until(deadline) => task.gr.on_timer(&mut task.rib, now(), &mut task.out),
        }
        kernel.apply(&mut task.out);
    }
}

/// `now` on tokio's clock (paused in tests), as the core's `std` instant.
fn now() -> std::time::Instant {
    Instant::now().into_std()
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

struct Task {
    rib: Rib,
    /// Graceful restart beside the RIB; every change reaches the kernel
    /// through it.
    gr: Restarts,
    peers: HashMap<IpAddr, PeerInfo>,
    changes: Vec<Change>,
    out: Vec<Output>,
}

impl Task {
    fn on_event(&mut self, ev: RibEvent) {
        let (rib, gr, out) = (&mut self.rib, &mut self.gr, &mut self.out);
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
                let replaces = self
                    .peers
                    .get(&peer.address)
                    .is_some_and(|i| i.id != peer.id);
                let kept = graceful_restart.as_deref();
                gr.peer_up(rib, peer.address, kept, replaces, now(), out);
                self.peers.insert(
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
                let Some(info) = self.peers.get(&peer.address).filter(|i| i.id == peer.id) else {
                    return;
                };
                apply_update(rib, peer.address, info, &update, &mut self.changes);
                gr.forward(&mut self.changes, out);
                if let Some((afi, _)) = update.is_end_of_rib() {
                    gr.end_of_rib(rib, peer.address, afi == AFI_IPV6, out);
                }
                peer.received
                    .store(rib.received_from(peer.address), Ordering::Relaxed);
            }
            RibEvent::Down { peer, stale_for } => {
                // A late Down of a replaced session must not touch its successor.
                if self
                    .peers
                    .get(&peer.address)
                    .is_some_and(|i| i.id != peer.id)
                {
                    return;
                }
                self.peers.remove(&peer.address);
                if let Some(d) = stale_for {
                    tracing::info!(peer = %peer.address, "graceful restart: keeping its routes for {d:?}");
                }
                gr.peer_down(rib, peer.address, stale_for, now(), out);
                if stale_for.is_none() {
                    peer.received.store(0, Ordering::Relaxed);
                }
            }
            RibEvent::Unreachable { peer } => gr.unreachable(rib, peer, out),
            RibEvent::Routes(tx) => {
                let mut routes: Vec<(IpNet, Vec<IpAddr>)> =
                    rib.installed().map(|(p, n)| (p, n.to_vec())).collect();
                routes.sort_unstable_by_key(|r| r.0);
                let _ = tx.send(routes);
            }
        }
    }
}

/// Where the RIB's outputs go: the FIB (prefixes with the same next hops
/// in one message) and pinning (the default route's next hops).
struct Kernel {
    fib: Option<FibSync>,
    pin: Option<Pinning>,
    /// The RIB's last set and the kernel's form of it: the prefixes of an
    /// UPDATE share one set, converted once.
    last: Option<(NextHops, fib::NextHops)>,
}

impl Kernel {
    /// Carries out the outputs of the graceful-restart core, in order.
    fn apply(&mut self, outs: &mut Vec<Output>) {
        // Consecutive routes with the same next hops: one FIB message.
        let mut run: Option<(fib::NextHops, Vec<IpNet>)> = None;
        for o in outs.drain(..) {
            let Output::Route(Change { prefix, next_hops }) = o else {
                self.flush(run.take());
                self.other(o);
                continue;
            };
            let nhs = self.convert(&next_hops);
            match &mut run {
                Some((set, prefixes)) if Arc::ptr_eq(set, &nhs) => prefixes.push(prefix),
                _ => {
                    self.flush(run.take());
                    run = Some((nhs.clone(), vec![prefix]));
                }
            }
            if prefix.prefix_len() == 0 {
                // FIB first; pinning follows the default route's next hops
                // (a message to its task: never blocks).
                self.flush(run.take());
                if let Some(pin) = &self.pin {
                    pin.set_default(prefix, nhs.to_vec());
                }
            }
        }
        self.flush(run);
    }

    fn flush(&self, run: Option<(fib::NextHops, Vec<IpNet>)>) {
        if let (Some(fib), Some((nhs, prefixes))) = (&self.fib, run) {
            fib.set_routes(RouteOwner::Bgp, prefixes, nhs);
        }
    }

    /// The kernel's form of a RIB set (the same `Arc` for the same set in a
    /// row).
    fn convert(&mut self, hops: &NextHops) -> fib::NextHops {
        match &self.last {
            Some((rib, k)) if Arc::ptr_eq(rib, hops) || rib[..] == hops[..] => k.clone(),
            _ => {
                let k: fib::NextHops = hops.iter().map(|a| Nexthop::new(*a)).collect();
                self.last = Some((hops.clone(), k.clone()));
                k
            }
        }
    }

    fn other(&self, o: Output) {
        match o {
            Output::Route(_) => {}
            Output::DeferralOver => {
                tracing::info!("graceful restart: selection deferral over, syncing the kernel");
                if let Some(fib) = &self.fib {
                    fib.purge_stale();
                }
            }
            Output::NotWaitingFor(peer) => {
                tracing::info!(peer = %peer, "graceful restart: not waiting for this neighbor's End-of-RIB");
            }
            Output::StaleTimeOver { peer, timer } => {
                let which = match timer {
                    Timer::Restart => "restart",
                    Timer::StalePath => "stale-path",
                };
                tracing::info!(peer = %peer, "graceful restart: its {which} time is over, removing its stale routes");
            }
        }
    }
}

fn apply_update(rib: &mut Rib, peer: IpAddr, info: &PeerInfo, u: &Update, out: &mut Vec<Change>) {
    rib.withdraw_all(peer, u.withdrawn_all(), out);
    if u.treat_as_withdraw.is_some() {
        // RFC 7606 §2: every prefix the UPDATE carries is withdrawn.
        rib.withdraw_all(peer, u.announced(), out);
        return;
    }
    // One path for all the prefixes of the UPDATE (per family).
    let path =
        |nh: IpAddr| Path::from_attrs(&u.attrs, nh, info.remote_asn, info.ebgp, info.remote_id);
    if let Some(nh) = u.attrs.next_hop {
        let prefixes = u.nlri.iter().map(|p| IpNet::V4(*p));
        rib.announce_all(peer, path(IpAddr::V4(nh)), prefixes, out);
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
        rib.announce_all(peer, path(*nh), mp.nlri.iter().copied(), out);
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
    use hagw_bgp::graceful_restart::STALE_PATH_TIME;
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
        tokio::spawn(run(rx, 8, None, None, None));
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
            tokio::spawn(run(rx, 8, None, None, None));
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
        tokio::spawn(run(rx, 8, None, None, None));
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
