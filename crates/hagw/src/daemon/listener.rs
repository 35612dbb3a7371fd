//! Passive side: accepts TCP 179, hands a configured neighbor's connections to
//! its task and turns a connection from a listen range into a dynamic peer.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hagw_bgp::fsm::{SessionConfig, State};
use ipnet::IpNet;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use super::advert::Advert;
use super::peer::{PeerKind, PeerShared, PeerTask};
use super::Registry;
use crate::daemon::routing::RibEvent;

/// One `[[bgp.dynamic]]` table, ready to accept peers.
pub struct Range {
    pub range: IpNet,
    pub limit: usize,
    pub cfg: Arc<SessionConfig>,
    pub advert: Arc<Advert>,
    pub count: AtomicUsize,
    pub bfd: Option<super::bfd::Bfd>,
    /// What is accepted from this range's peers (virtual networks, limits).
    pub import: Option<Arc<super::import::ImportPolicy>>,
}

pub struct Accept {
    pub ranges: Vec<Arc<Range>>,
    pub neighbors: HashMap<IpAddr, mpsc::Sender<TcpStream>>,
    pub registry: Arc<Registry>,
    pub rib: mpsc::UnboundedSender<RibEvent>,
}

/// Binds a BGP listening socket; the backlog is large because every host of a
/// subnet connects at once after a router restart.
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let domain = socket2::Domain::for_address(addr);
    let s = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    s.set_reuse_address(true)?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(4096)?;
    TcpListener::from_std(s.into())
}

/// IPv4 peers reaching an IPv6 socket appear as ::ffff:a.b.c.d.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

pub async fn run(listener: TcpListener, accept: Arc<Accept>) {
    loop {
        let (stream, remote) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::error!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        accept.clone().on_connection(stream, canonical(remote.ip()));
    }
}

impl Accept {
    fn on_connection(self: Arc<Self>, stream: TcpStream, ip: IpAddr) {
        if let Some(tx) = self.neighbors.get(&ip) {
            if tx.try_send(stream).is_err() {
                tracing::warn!(peer = %ip, "neighbor busy: connection dropped");
            }
            return;
        }
        let Some(range) = self.ranges.iter().find(|r| r.range.contains(&ip)).cloned() else {
            tracing::warn!(peer = %ip, "refused BGP connection from {ip}: not in any listen range");
            return;
        };
        if range.count.fetch_add(1, Ordering::AcqRel) >= range.limit {
            range.count.fetch_sub(1, Ordering::AcqRel);
            tracing::warn!(
                peer = %ip,
                "refused BGP connection from {ip}: listen range {} is at its limit of {} peers",
                range.range,
                range.limit
            );
            return;
        }
        let shared = Arc::new(PeerShared::new(
            ip,
            PeerKind::Dynamic {
                range: self
                    .ranges
                    .iter()
                    .position(|r| Arc::ptr_eq(r, &range))
                    .unwrap_or(0),
            },
        ));
        if let Some(old) = self.registry.insert(shared.clone()) {
            // Two connections from one host: RFC 4271 §6.8 keeps an Established
            // session and closes the newcomer — unless the host restarted with
            // graceful restart (RFC 4724 §4.2), whose new session replaces the old.
            if old.state() == State::Established && !old.graceful_restart() {
                self.registry.insert(old);
                range.count.fetch_sub(1, Ordering::AcqRel);
                tracing::info!(peer = %ip, "connection collides with an Established session: closed");
                return;
            }
            old.stop(false);
        }
        let task = PeerTask {
            shared: shared.clone(),
            cfg: range.cfg.clone(),
            advert: range.advert.clone(),
            rib: self.rib.clone(),
            incoming: None,
            bfd: range.bfd.clone(),
            import: range.import.clone(),
        };
        let me = self.clone();
        tokio::spawn(async move {
            task.run_accepted(stream).await;
            me.registry.remove(&shared);
            range.count.fetch_sub(1, Ordering::AcqRel);
        });
    }
}
