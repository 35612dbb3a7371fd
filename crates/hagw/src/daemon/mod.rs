//! The daemon: wires config into peers, listeners, the RIB task, the kernel
//! southbound and the control socket, then waits for a signal.

pub mod advert;
pub mod bfd;
pub mod cloud;
pub mod health;
pub mod import;
pub mod listener;
pub mod peer;
pub mod routing;
pub mod vnet;
pub mod vrrp;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use hagw_bgp::fsm::{GracefulRestart, SessionConfig, State};
use hagw_bgp::packet::{AFI_IPV4, AFI_IPV6, SAFI_UNICAST};
use hagw_kernel::{FibConfig, FibSync};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, oneshot};

use crate::config::{self, Config, MultipathHash};
use crate::control::{self, PeerStatus, RouteStatus, Status};
use advert::Advert;
use listener::{Accept, Range};
use peer::{PeerKind, PeerShared, PeerTask};
use routing::RibEvent;

/// Every live peer by address (a dynamic peer exists while its connection does).
#[derive(Default)]
pub struct Registry {
    peers: Mutex<HashMap<IpAddr, Arc<PeerShared>>>,
}

impl Registry {
    /// Adds `p`, returning the peer it replaced.
    pub fn insert(&self, p: Arc<PeerShared>) -> Option<Arc<PeerShared>> {
        self.lock().insert(p.address, p)
    }

    /// Removes `p` if it is still the registered peer for its address.
    pub fn remove(&self, p: &Arc<PeerShared>) {
        let mut m = self.lock();
        if m.get(&p.address).is_some_and(|q| Arc::ptr_eq(p, q)) {
            m.remove(&p.address);
        }
    }

    pub fn all(&self) -> Vec<Arc<PeerShared>> {
        self.lock().values().cloned().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Arc<PeerShared>>> {
        self.peers.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// What the control socket asks about.
pub struct Daemon {
    pub registry: Arc<Registry>,
    health: Arc<Mutex<Vec<health::ProbeStatus>>>,
    rib: mpsc::UnboundedSender<RibEvent>,
    fib: Option<FibSync>,
    ranges: Vec<String>,
    policy: Option<hagw_kernel::policy_routing::PolicySync>,
    bfd: Option<bfd::Bfd>,
    pinning: Option<hagw_kernel::pinning::Pinning>,
    vrrp: Option<Arc<vrrp::Vrrp>>,
    convergent: Option<crate::convergent::Convergent>,
    /// Virtual networks (host side), for their status.
    vnet: Option<hagw_kernel::vnet::VnetSync>,
}

const FAMILIES: [(u16, u8); 2] = [(AFI_IPV4, SAFI_UNICAST), (AFI_IPV6, SAFI_UNICAST)];

pub async fn run(cfg: Config, config_path: Option<std::path::PathBuf>) -> anyhow::Result<()> {
    // Policy routing first: its first plan sees the DHCP default (and so the
    // primary NIC) before `dhcp_default = "remove"` takes it away.
    let policy = match &cfg.policy_routing {
        Some(p) if p.enabled => Some(crate::policy_routing::start(p).await?),
        _ => None,
    };
    let r = serve(cfg, config_path, policy.clone()).await;
    if r.is_err() {
        // A later start-up step failed: leave no policy rules behind.
        if let Some(p) = policy {
            p.shutdown().await;
        }
    }
    r
}

/// What the daemon started, kept for its one ordered shutdown.
struct Running {
    /// Graceful restart: leave quietly, routes and pinning in place.
    graceful: bool,
    registry: Arc<Registry>,
    listeners: Vec<tokio::task::JoinHandle<()>>,
    bfd: Option<bfd::Bfd>,
    pinning: Option<hagw_kernel::pinning::Pinning>,
    fib: Option<FibSync>,
    policy: Option<hagw_kernel::policy_routing::PolicySync>,
    convergent: Option<crate::convergent::Convergent>,
    control: control::Guard,
    vrrp: Option<Arc<vrrp::Vrrp>>,
    vnet: Option<vnet::Vnet>,
    vnet_router: Option<hagw_kernel::vnet::VnetRouter>,
}

async fn serve(
    cfg: Config,
    config_path: Option<std::path::PathBuf>,
    policy: Option<hagw_kernel::policy_routing::PolicySync>,
) -> anyhow::Result<()> {
    let gr = cfg
        .bgp
        .as_ref()
        .map(|b| b.graceful_restart)
        .filter(|g| g.enabled);
    let (fib, pinning) = start_kernel_side(&cfg, gr.is_some()).await?;
    let rib_tx = start_rib(&cfg, gr, fib.clone(), pinning.clone());
    let (gate, health_status, probe_results) = if cfg.health.is_empty() {
        (None, Arc::default(), Vec::new())
    } else {
        let p = health::start(&cfg.health);
        (p.gate, p.status, p.results)
    };
    let bfd = start_bfd(&cfg)?;
    let (vrrp, gate) = start_vrrp(&cfg, bfd.clone(), probe_results, gate).await?;
    let convergent = crate::convergent::start(&cfg).await?;
    // Virtual networks before BGP: the VMs already there are known (and
    // announced, then End-of-RIB) by the time the sessions come up.
    let vnet = vnet::start(&cfg).await?;
    let vnet_router = vnet::start_router(&cfg).await?;
    let vnet_bgp = VnetBgp {
        dynamic: vnet.as_ref().map(|v| v.dynamic.clone()).unwrap_or_default(),
        imports: cfg.bgp.as_ref().map_or_else(Vec::new, |b| {
            b.dynamic
                .iter()
                .map(|d| vnet::import_policy(&cfg, d))
                .collect()
        }),
    };
    let registry = Arc::new(Registry::default());
    let (listeners, ranges) = match &cfg.bgp {
        Some(bgp) => start_bgp(
            bgp,
            gr,
            gate,
            bfd.clone(),
            registry.clone(),
            rib_tx.clone(),
            &vnet_bgp,
        )?,
        None => (Vec::new(), Vec::new()),
    };
    let daemon = Arc::new(Daemon {
        registry: registry.clone(),
        health: health_status,
        rib: rib_tx,
        fib: fib.clone(),
        ranges,
        policy: policy.clone(),
        bfd: bfd.clone(),
        pinning: pinning.clone(),
        vrrp: vrrp.clone(),
        convergent: convergent.clone(),
        vnet: vnet.as_ref().map(|v| v.sync.clone()),
    });
    let control = control::serve(&cfg.control.socket, daemon)
        .await
        .with_context(|| {
            format!(
                "cannot open the control socket {}",
                cfg.control.socket.display()
            )
        })?;
    let running = Running {
        graceful: gr.is_some(),
        registry,
        listeners,
        bfd,
        pinning,
        fib,
        policy,
        convergent: convergent.clone(),
        control,
        vrrp,
        vnet,
        vnet_router,
    };
    wait_for_stop(config_path, &cfg, convergent).await?;
    running.shutdown().await;
    Ok(())
}

/// The FIB reconciler and connection pinning (`[kernel] install`).
async fn start_kernel_side(
    cfg: &Config,
    graceful: bool,
) -> anyhow::Result<(Option<FibSync>, Option<hagw_kernel::pinning::Pinning>)> {
    let Some(k) = cfg.kernel.as_ref().filter(|k| k.install) else {
        return Ok((None, None));
    };
    let fib = start_kernel(k, graceful).await?;
    let pinning = if k.pin_connections {
        start_pinning(k, graceful).await
    } else {
        None
    };
    Ok((Some(fib), pinning))
}

/// The RIB task: every peer's UPDATEs in, the FIB and pinning out.
fn start_rib(
    cfg: &Config,
    gr: Option<config::GracefulRestart>,
    fib: Option<FibSync>,
    pinning: Option<hagw_kernel::pinning::Pinning>,
) -> mpsc::UnboundedSender<RibEvent> {
    let (rib_tx, rib_rx) = mpsc::unbounded_channel();
    let max_paths = cfg.kernel.as_ref().map_or(8, |k| k.maximum_paths);
    // With graceful restart, our previous run's routes stay in the kernel until
    // the configured neighbors have told us everything again.
    let deferral = match (gr, &cfg.bgp) {
        (Some(g), Some(b)) if !b.neighbors.is_empty() => Some(routing::Deferral {
            neighbors: b.neighbors.iter().map(|n| n.address).collect(),
            limit: std::time::Duration::from_secs(u64::from(g.restart_time)),
        }),
        _ => None,
    };
    tokio::spawn(routing::run(rib_rx, max_paths, fib, deferral, pinning));
    rib_tx
}

/// One BFD thread for every peer with `bfd = true` (RFC 5882: BGP is its client).
fn start_bfd(cfg: &Config) -> anyhow::Result<Option<bfd::Bfd>> {
    let wants_bfd = cfg
        .bgp
        .as_ref()
        .is_some_and(|b| b.neighbors.iter().any(|n| n.bfd) || b.dynamic.iter().any(|d| d.bfd))
        || cfg.vrrp.iter().any(|v| v.bfd);
    if !wants_bfd {
        return Ok(None);
    }
    let b = bfd::Bfd::start(
        std::time::Duration::from_millis(u64::from(cfg.bfd.interval_ms)),
        cfg.bfd.multiplier,
        cfg.bfd.realtime,
    )
    .context("cannot start BFD (UDP 3784)")?;
    Ok(Some(b))
}

/// What the virtual networks add to BGP: the VMs a host announces to each of
/// its routers, and what a router's listen ranges accept.
#[derive(Default)]
struct VnetBgp {
    dynamic: HashMap<IpAddr, Arc<advert::Dynamic>>,
    /// Per `[[bgp.dynamic]]`, in order.
    imports: Vec<Option<Arc<import::ImportPolicy>>>,
}

/// Configured neighbors, listen ranges and the listeners; returns the
/// listener tasks and the ranges as `hagw status` names them.
fn start_bgp(
    bgp: &config::Bgp,
    gr: Option<config::GracefulRestart>,
    gate: Option<tokio::sync::watch::Receiver<bool>>,
    bfd: Option<bfd::Bfd>,
    registry: Arc<Registry>,
    rib_tx: mpsc::UnboundedSender<RibEvent>,
    vnet: &VnetBgp,
) -> anyhow::Result<(Vec<tokio::task::JoinHandle<()>>, Vec<String>)> {
    // Our OPEN says we restart with forwarding state kept (RFC 4724 R and F bits).
    let gr_cap = gr.map(|g| GracefulRestart {
        restart_time: g.restart_time,
        restarting: true,
    });
    let session = |remote_asn, hold_time| {
        Arc::new(SessionConfig::new(
            bgp.asn,
            bgp.router_id,
            remote_asn,
            hold_time,
            FAMILIES.to_vec(),
            gr_cap,
        ))
    };
    let mut neighbors = HashMap::new();
    for (index, n) in bgp.neighbors.iter().enumerate() {
        let (tx, rx) = mpsc::channel(4);
        neighbors.insert(n.address, tx);
        let shared = Arc::new(PeerShared::new(
            n.address,
            PeerKind::Neighbor {
                index,
                remote: SocketAddr::new(n.address, n.port),
                local: n.local_address,
                passive: n.passive,
            },
        ));
        registry.insert(shared.clone());
        let task = PeerTask {
            shared,
            cfg: session(n.remote_asn, n.hold_time),
            advert: Arc::new(
                Advert::new(bgp.asn, &n.announce, gate.clone())
                    .with_dynamic(vnet.dynamic.get(&n.address).cloned()),
            ),
            rib: rib_tx.clone(),
            incoming: Some(rx),
            bfd: bfd.clone().filter(|_| n.bfd),
            import: None,
        };
        tokio::spawn(task.run_neighbor());
    }
    let ranges_desc = bgp.dynamic.iter().map(|d| d.range.to_string()).collect();
    let ranges = bgp
        .dynamic
        .iter()
        .enumerate()
        .map(|(i, d)| {
            Arc::new(Range {
                range: d.range,
                limit: d.limit,
                cfg: session(d.remote_asn, d.hold_time),
                advert: Arc::new(Advert::new(bgp.asn, &d.announce, gate.clone())),
                count: Default::default(),
                bfd: bfd.clone().filter(|_| d.bfd),
                import: vnet.imports.get(i).cloned().flatten(),
            })
        })
        .collect();
    let accept = Arc::new(Accept {
        ranges,
        neighbors,
        registry,
        rib: rib_tx,
    });
    let addrs: Vec<SocketAddr> = if bgp.listen.is_empty() {
        vec![
            SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), bgp.port),
            SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), bgp.port),
        ]
    } else {
        bgp.listen
            .iter()
            .map(|a| SocketAddr::new(*a, bgp.port))
            .collect()
    };
    let mut listeners = Vec::new();
    for addr in addrs {
        match listener::bind(addr) {
            Ok(l) => {
                tracing::info!("listening for BGP on {addr}");
                listeners.push(tokio::spawn(listener::run(l, accept.clone())));
            }
            // No IPv6 in this namespace: the IPv4 wildcard still serves.
            Err(e) if addr.is_ipv6() && bgp.listen.is_empty() => {
                tracing::warn!("not listening on {addr}: {e}");
            }
            Err(e) => {
                return Err(e).with_context(|| format!("cannot listen for BGP on {addr}"));
            }
        }
    }
    Ok((listeners, ranges_desc))
}

/// Until SIGTERM or SIGINT; SIGHUP checks the config file (and applies its
/// `[[gateway]]` and `[nat]` live).
async fn wait_for_stop(
    config_path: Option<std::path::PathBuf>,
    running: &Config,
    convergent: Option<crate::convergent::Convergent>,
) -> anyhow::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let (reloaded_tx, mut reloaded) = mpsc::unbounded_channel::<Config>();
    loop {
        tokio::select! {
            _ = term.recv() => return Ok(()),
            _ = int.recv() => return Ok(()),
            _ = hup.recv() => {
                // The live-system check runs its own small runtime: not on ours.
                let path = config_path.clone();
                let node = running.node.clone();
                let tx = reloaded_tx.clone();
                std::thread::spawn(move || {
                    if let Some(c) = reload_check(path.as_deref(), node.as_deref()) {
                        let _ = tx.send(c);
                    }
                });
            }
            Some(new) = reloaded.recv() => apply_reload(running, &new, convergent.as_ref()),
        }
    }
}

/// A valid reloaded config: gateways and NAT are applied live; other
/// sections need a restart (hagw says so when they changed).
fn apply_reload(
    running: &Config,
    new: &Config,
    convergent: Option<&crate::convergent::Convergent>,
) {
    let mut note = match convergent {
        Some(c) => c.reload(new),
        None if !new.gateways.is_empty() || new.nat.is_some() => {
            Some("[[gateway]] or [nat] added: restart hagw to start them".into())
        }
        None => None,
    };
    let others = |c: &Config| Config {
        gateways: Vec::new(),
        nat: None,
        node: None,
        ..c.clone()
    };
    if others(running) != others(new) {
        note = Some(
            "sections other than [[gateway]] and [nat] changed: hagw does not apply those live \
             yet; restart it to apply them (with [bgp.graceful_restart] no traffic is lost)"
                .into(),
        );
    }
    match note {
        Some(n) => tracing::warn!("SIGHUP: {n}"),
        None => tracing::info!("SIGHUP: config reloaded"),
    }
}

impl Running {
    /// Stops everything in the order that loses nothing: no new sessions,
    /// sessions closed (or left, under graceful restart), BFD AdminDown,
    /// then the kernel side, then the control socket.
    async fn shutdown(self) {
        tracing::info!("shutting down");
        // VRRP first: a Master's priority-0 advert hands the VIP over after
        // Skew_Time (VRRP has no graceful restart: the peer serves meanwhile).
        if let Some(v) = &self.vrrp {
            v.shutdown().await;
        }
        for l in self.listeners {
            l.abort();
        }
        // With graceful restart we leave quietly: no NOTIFICATION, so our peers
        // keep our routes (RFC 4724 helper), and our kernel routes stay for the
        // next run.
        let graceful = self.graceful;
        // The networks' tables must not follow our own sessions closing.
        if let Some(v) = &self.vnet {
            v.freeze();
        }
        for p in self.registry.all() {
            p.stop(!graceful);
        }
        // Give peers a moment to send their Cease or close.
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        // AdminDown on every BFD session left (repeated), so the peers keep our
        // BGP sessions (RFC 5882 §3.2) even if a peer task is still stuck.
        if let Some(b) = &self.bfd {
            b.shutdown(std::time::Duration::from_secs(1)).await;
        }
        // Pinned connections keep their router while we restart (GR): leave it.
        if let Some(p) = self.pinning.filter(|_| !graceful) {
            p.shutdown().await;
        }
        // Under graceful restart the VMs keep their bridges, tables and
        // gateways; without, the tables and rules go (bridges stay).
        if let Some(v) = self.vnet {
            v.shutdown(!graceful).await;
        }
        if let Some(r) = self.vnet_router {
            r.shutdown(!graceful).await;
        }
        if let Some(fib) = self.fib {
            fib.shutdown(!graceful).await;
        }
        if let Some(policy) = self.policy {
            policy.shutdown().await;
        }
        // The NAT table and gateways stay unless configured otherwise
        // (keep_on_stop): NATed connections survive a restart only so.
        if let Some(c) = self.convergent {
            c.shutdown().await;
        }
        self.control.remove();
    }
}

/// The `[[vrrp]]` instances, with the probes that track them; returns them
/// and the BGP gate: the probes' gate and every `gate_bgp` instance's
/// Master state, all of which must be open.
async fn start_vrrp(
    cfg: &Config,
    bfd: Option<bfd::Bfd>,
    probe_results: Vec<tokio::sync::watch::Receiver<Option<bool>>>,
    gate: Option<tokio::sync::watch::Receiver<bool>>,
) -> anyhow::Result<(
    Option<Arc<vrrp::Vrrp>>,
    Option<tokio::sync::watch::Receiver<bool>>,
)> {
    if cfg.vrrp.is_empty() {
        return Ok((None, gate));
    }
    let trackers = cfg
        .health
        .iter()
        .zip(probe_results)
        .filter_map(|(h, up)| {
            h.vrrp.as_ref().map(|t| vrrp::Tracker {
                instance: t.instance.clone(),
                decrement: t.priority_decrement,
                up,
            })
        })
        .collect();
    let v = vrrp::Vrrp::start(&cfg.vrrp, bfd, trackers).await?;
    // The cloud claims: transitions in, fencing out; the state machines
    // never wait on them.
    for i in &cfg.vrrp {
        let (Some(c), Some(h)) = (&i.cloud, v.get(&i.name)) else {
            continue;
        };
        let spec = cloud::CloudSpec::of(i, c)?;
        cloud::attach(spec, h.clone())
            .with_context(|| format!("vrrp {}: cannot start the cloud claim", i.name))?;
    }
    let gates: Vec<_> = gate.into_iter().chain(v.bgp_gate(&cfg.vrrp)).collect();
    Ok((Some(Arc::new(v)), vrrp::all_open(gates)))
}

/// Connection pinning (`[kernel] pin_connections`). It needs `nft`; if it
/// cannot start, the daemon runs without it (plain ECMP).
async fn start_pinning(k: &config::Kernel, adopt: bool) -> Option<hagw_kernel::pinning::Pinning> {
    use hagw_kernel::pinning::{PinConfig, Pinning};
    let cfg = PinConfig {
        mark_mask: k.pin_mark_mask,
        table_base: k.pin_table_base,
        adopt,
        ..PinConfig::default()
    };
    match Pinning::start(cfg).await {
        Ok(p) => Some(p),
        Err(e) => {
            tracing::error!("connection pinning disabled: {e}");
            None
        }
    }
}

/// SIGHUP: a config that does not check is reported and the running one
/// kept; a valid one is returned (for the same node).
fn reload_check(path: Option<&std::path::Path>, node: Option<&str>) -> Option<Config> {
    let path = path?;
    match config::load(path)
        .and_then(|c| crate::policy_routing::check_live(path, c))
        .and_then(|c| crate::convergent::check_live(path, c, node))
    {
        Err(e) => {
            tracing::error!("SIGHUP: {e}\nkeeping the running config");
            None
        }
        Ok(c) => Some(c),
    }
}

async fn start_kernel(k: &config::Kernel, keep_stale: bool) -> anyhow::Result<FibSync> {
    if let Err(e) = hagw_kernel::install_proto_name() {
        tracing::warn!(
            "cannot name protocol {} in rt_protos.d: {e}",
            hagw_kernel::RTPROT_HAGW
        );
    }
    hagw_kernel::set_multipath_hash_policy(k.multipath_hash == MultipathHash::L4)
        .context("cannot set fib_multipath_hash_policy")?;
    let cfg = FibConfig {
        table: k.table,
        metric: k.metric,
        protocol: hagw_kernel::RTPROT_HAGW,
        dhcp_default: k.dhcp_default,
        statics: k.statics.clone(),
        max_paths: k.maximum_paths,
        keep_stale,
    };
    FibSync::start(cfg)
        .await
        .context("cannot start the kernel route sync")
}

impl Daemon {
    pub async fn status(&self) -> Status {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut peers: Vec<PeerStatus> = self
            .registry
            .all()
            .iter()
            .map(|p| {
                let (kind, range) = match &p.kind {
                    PeerKind::Dynamic { range } => ("dynamic", self.ranges.get(*range).cloned()),
                    PeerKind::Neighbor { .. } => ("neighbor", None),
                };
                let state = p.state();
                PeerStatus {
                    address: p.address.to_string(),
                    kind: kind.into(),
                    range,
                    remote_asn: (p.remote_asn() != 0).then_some(p.remote_asn()),
                    state: state.name().into(),
                    uptime_secs: p
                        .established_since()
                        .filter(|_| state == State::Established)
                        .map(|t| now.saturating_sub(t)),
                    prefixes_received: p.received.load(std::sync::atomic::Ordering::Relaxed),
                    prefixes_sent: p.sent(),
                    last_error: p.last_error(),
                }
            })
            .collect();
        peers.sort_by(|a, b| {
            let ka = a.address.parse::<IpAddr>().ok();
            let kb = b.address.parse::<IpAddr>().ok();
            ka.cmp(&kb)
        });
        let routes = match &self.fib {
            Some(fib) => fib
                .snapshot()
                .await
                .into_iter()
                .map(|(prefix, hops, error)| RouteStatus {
                    prefix: prefix.to_string(),
                    nexthops: hops.iter().map(ToString::to_string).collect(),
                    installed: true,
                    error,
                })
                .collect(),
            None => {
                let (tx, rx) = oneshot::channel();
                let _ = self.rib.send(RibEvent::Routes(tx));
                rx.await
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(prefix, hops)| RouteStatus {
                        prefix: prefix.to_string(),
                        nexthops: hops.iter().map(ToString::to_string).collect(),
                        installed: false,
                        error: None,
                    })
                    .collect()
            }
        };
        let health = self
            .health
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let policy_routing = match &self.policy {
            Some(p) => Some(crate::policy_routing::status(p).await),
            None => None,
        };
        let bfd = match &self.bfd {
            Some(b) => b
                .status()
                .await
                .into_iter()
                .map(|s| control::BfdStatus {
                    peer: s.peer.to_string(),
                    local: s.local.to_string(),
                    state: s.state.to_string(),
                    remote_state: s.remote_state.to_string(),
                    diag: s.local_diag.to_string(),
                    tx_interval_ms: s.tx_interval.map(|d| d.as_secs_f64() * 1000.0),
                    detection_ms: s.detection_time.map(|d| d.as_secs_f64() * 1000.0),
                    counters: s.counters,
                })
                .collect(),
            None => Vec::new(),
        };
        let pinning = match &self.pinning {
            Some(p) => p
                .snapshot()
                .await
                .into_iter()
                .map(|r| control::PinStatus {
                    router: r.nexthop.addr.to_string(),
                    slot: r.slot,
                    table: r.table,
                    mark: format!("{:#x}", r.mark),
                    active: r.active,
                    error: r.error,
                })
                .collect(),
            None => Vec::new(),
        };
        let vrrp = match &self.vrrp {
            Some(v) => v.status().await,
            None => Vec::new(),
        };
        let convergent = match &self.convergent {
            Some(c) => Some(c.status().await),
            None => None,
        };
        let vnet = match &self.vnet {
            Some(v) => v
                .snapshot()
                .await
                .into_iter()
                .map(control::VnetStatus::from)
                .collect(),
            None => Vec::new(),
        };
        Status {
            peers,
            routes,
            health,
            pinning,
            bfd,
            bfd_thread: self.bfd.as_ref().map(|b| b.scheduling()),
            policy_routing,
            vrrp,
            convergent,
            vnet,
        }
    }
}
