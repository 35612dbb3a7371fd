//! Virtual networks in the daemon.
//!
//! Host (`[[vnet]]`): the kernel side ([`hagw_kernel::vnet::VnetSync`])
//! reports VMs coming and going; each becomes a /32 (/128) announced to the
//! network's routers (their [`Dynamic`] routes). Its MED says how recently
//! this host learned the VM ([`mobility_med`]), so when a VM moves, the
//! router prefers the new host at once, even while the old one still
//! announces it. The routers' sessions say which routers the networks'
//! tables go through: a router whose session is down (BFD, hold timer, a
//! NOTIFICATION) leaves the multipath routes at once; one restarting with
//! graceful restart stays for its restart time.
//!
//! Router (`[[vnet_router]]`): gateways on `lo` and the NAT set
//! ([`hagw_kernel::vnet::VnetRouter`]); what the hosts may announce is the
//! listen ranges' [`ImportPolicy`].

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use hagw_kernel::vnet::{
    default_mac, GatewayNet, NetworkConfig, NetworkStatus, VmEvent, VnetConfig, VnetRouter,
    VnetSync,
};
use ipnet::IpNet;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::advert::{Dynamic, SessionNote};
use super::import::ImportPolicy;
use crate::config::{Config, DynamicRange};

/// The host side, running.
pub struct Vnet {
    pub sync: VnetSync,
    /// Per router (a configured neighbor): the VMs announced to it.
    pub dynamic: HashMap<IpAddr, Arc<Dynamic>>,
    frozen: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

/// The MED a host gives a VM it learns now: lower for a later learn, so a
/// router with two hosts announcing one VM (it moved; the old host has not
/// noticed yet) prefers the new one (RFC 4271 compares MEDs between paths
/// from one neighbour AS: hosts of a fabric share theirs). Tenths of a
/// second since 2024-01-01, counted down from `u32::MAX`: good until 2037,
/// assuming the hosts' clocks agree to a tenth of a second (NTP).
pub fn mobility_med(now: SystemTime) -> u32 {
    const EPOCH_2024: u64 = 1_704_067_200;
    let tenths = now
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() / 100) as u64;
    let since = tenths.saturating_sub(EPOCH_2024 * 10);
    u32::MAX - u32::try_from(since).unwrap_or(u32::MAX)
}

fn network_configs(cfg: &Config) -> Vec<NetworkConfig> {
    cfg.vnet
        .iter()
        .map(|v| NetworkConfig {
            name: v.name.clone(),
            bridge: v.bridge.clone(),
            address: v.address,
            address6: v.address6,
            table: v.table,
            priority: v.rule_priority,
            routers: v.routers.clone(),
            static_vms: v.vms.clone(),
            mac: v.mac.unwrap_or_else(|| default_mac(v.address.trunc())),
        })
        .collect()
}

/// Starts the host side when `[[vnet]]` is configured.
pub async fn start(cfg: &Config) -> anyhow::Result<Option<Vnet>> {
    if cfg.vnet.is_empty() {
        return Ok(None);
    }
    if let Err(e) = hagw_kernel::install_proto_name() {
        tracing::warn!("cannot name protocol 199 in rt_protos.d: {e}");
    }
    let (vm_tx, vm_rx) = mpsc::unbounded_channel();
    let (note_tx, note_rx) = mpsc::unbounded_channel();
    let neighbors: Vec<IpAddr> = cfg
        .bgp
        .as_ref()
        .map(|b| b.neighbors.iter().map(|n| n.address).collect())
        .unwrap_or_default();
    let mut dynamic = HashMap::new();
    for r in cfg.vnet.iter().flat_map(|v| v.routers.iter()) {
        if neighbors.contains(r) {
            dynamic
                .entry(*r)
                .or_insert_with(|| Arc::new(Dynamic::new(*r, Some(note_tx.clone()))));
        }
    }
    let sync = VnetSync::start(VnetConfig::new(network_configs(cfg)), vm_tx)
        .await
        .context("cannot set up the virtual networks")?;
    let frozen = Arc::new(AtomicBool::new(false));
    let glue = Glue {
        routers: cfg.vnet.iter().map(|v| v.routers.clone()).collect(),
        max_vms: cfg.vnet.iter().map(|v| v.max_vms).collect(),
        names: cfg.vnet.iter().map(|v| v.name.clone()).collect(),
        announced: vec![BTreeSet::new(); cfg.vnet.len()],
        dynamic: dynamic.clone(),
        live: dynamic.keys().map(|r| (*r, Live::Assumed)).collect(),
        sync: sync.clone(),
        frozen: frozen.clone(),
    };
    let task = tokio::spawn(glue.run(vm_rx, note_rx));
    Ok(Some(Vnet {
        sync,
        dynamic,
        frozen,
        task,
    }))
}

impl Vnet {
    /// Stops following the sessions: our own shutdown closes them, and the
    /// tables must not follow that.
    pub fn freeze(&self) {
        self.frozen.store(true, Ordering::SeqCst);
    }

    /// Stops; with `remove`, the rules and table routes go (bridges stay).
    pub async fn shutdown(self, remove: bool) {
        self.freeze();
        self.task.abort();
        self.sync.shutdown(remove).await;
    }

    pub async fn status(&self) -> Vec<NetworkStatus> {
        self.sync.snapshot().await
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Live {
    /// Not heard of yet (start): used, so a restart changes nothing.
    Assumed,
    Up,
    /// Restarting with graceful restart: used until then.
    Restarting(Instant),
    Down,
}

struct Glue {
    /// Per network: its routers.
    routers: Vec<Vec<IpAddr>>,
    max_vms: Vec<usize>,
    names: Vec<String>,
    /// Per network: the VMs announced.
    announced: Vec<BTreeSet<IpAddr>>,
    dynamic: HashMap<IpAddr, Arc<Dynamic>>,
    live: HashMap<IpAddr, Live>,
    sync: VnetSync,
    frozen: Arc<AtomicBool>,
}

impl Glue {
    async fn run(
        mut self,
        mut vms: mpsc::UnboundedReceiver<VmEvent>,
        mut notes: mpsc::UnboundedReceiver<(IpAddr, SessionNote)>,
    ) {
        loop {
            let deadline = self
                .live
                .values()
                .filter_map(|l| match l {
                    Live::Restarting(t) => Some(*t),
                    _ => None,
                })
                .min();
            tokio::select! {
                ev = vms.recv() => match ev {
                    Some(ev) => self.on_vm(ev),
                    None => return,
                },
                n = notes.recv() => match n {
                    Some((peer, note)) => self.on_note(peer, note),
                    None => return,
                },
                () = sleep_until(deadline) => self.expire(),
            }
        }
    }

    fn on_vm(&mut self, ev: VmEvent) {
        let (network, addr, up) = match ev {
            VmEvent::Up { network, addr } => (network, addr, true),
            VmEvent::Down { network, addr } => (network, addr, false),
            VmEvent::Ready => {
                for d in self.dynamic.values() {
                    d.set_ready();
                }
                return;
            }
        };
        let (Some(routers), Some(set)) =
            (self.routers.get(network), self.announced.get_mut(network))
        else {
            return;
        };
        let med = if up {
            if set.len() >= self.max_vms[network] && !set.contains(&addr) {
                tracing::warn!(network = %self.names[network], vm = %addr, limit = self.max_vms[network], "max_vms reached: not announcing this VM");
                return;
            }
            set.insert(addr);
            Some(mobility_med(SystemTime::now()))
        } else {
            if !set.remove(&addr) {
                return;
            }
            None
        };
        for r in routers {
            if let Some(d) = self.dynamic.get(r) {
                d.set(IpNet::from(addr), med);
            }
        }
    }

    fn on_note(&mut self, peer: IpAddr, note: SessionNote) {
        let new = match note {
            SessionNote::Up => Live::Up,
            SessionNote::Down { stale_for: Some(d) } => Live::Restarting(Instant::now() + d),
            SessionNote::Down { stale_for: None } | SessionNote::Unreachable => Live::Down,
        };
        let Some(old) = self.live.get_mut(&peer) else {
            return;
        };
        // A restarting router stays restarting until it is back or its time
        // is over, whatever failed connects say meanwhile.
        if matches!(old, Live::Restarting(_)) && note == SessionNote::Unreachable {
            return;
        }
        if *old != new {
            tracing::info!(router = %peer, state = ?new, "virtual networks: router");
            *old = new;
            self.publish();
        }
    }

    fn expire(&mut self) {
        let now = Instant::now();
        let mut changed = false;
        for l in self.live.values_mut() {
            if matches!(l, Live::Restarting(t) if *t <= now) {
                *l = Live::Down;
                changed = true;
            }
        }
        if changed {
            self.publish();
        }
    }

    fn publish(&self) {
        if self.frozen.load(Ordering::SeqCst) {
            return;
        }
        // Routers without a session of ours (not BGP neighbors) always count.
        let mut alive: Vec<IpAddr> = self
            .routers
            .iter()
            .flatten()
            .filter(|r| !matches!(self.live.get(r), Some(Live::Down)))
            .copied()
            .collect();
        alive.sort();
        alive.dedup();
        self.sync.set_routers(Some(alive));
    }
}

async fn sleep_until(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// The router side, when `[[vnet_router]]` is configured.
pub async fn start_router(cfg: &Config) -> anyhow::Result<Option<VnetRouter>> {
    if cfg.vnet_router.is_empty() {
        return Ok(None);
    }
    let nets = cfg
        .vnet_router
        .iter()
        .map(|r| GatewayNet {
            network: r.network,
            gateway: r.gateway,
            masquerade_out: r.masquerade_out.clone(),
        })
        .collect();
    let r = VnetRouter::start(nets, hagw_kernel::nft::Nft::default())
        .await
        .context("cannot set up the virtual networks' gateways")?;
    Ok(Some(r))
}

/// What a listen range accepts: with `[[vnet_router]]`, only the VMs' host
/// routes inside the networks; `max_prefixes` per peer.
pub fn import_policy(cfg: &Config, d: &DynamicRange) -> Option<Arc<ImportPolicy>> {
    let host_routes_in =
        (!cfg.vnet_router.is_empty()).then(|| cfg.vnet_router.iter().map(|r| r.network).collect());
    let p = ImportPolicy {
        host_routes_in,
        max_prefixes: d.max_prefixes,
    };
    (p != ImportPolicy::default()).then(|| Arc::new(p))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_later_learn_gets_a_lower_med() {
        let t = UNIX_EPOCH + Duration::from_secs(1_750_000_000);
        let a = mobility_med(t);
        let b = mobility_med(t + Duration::from_millis(100));
        assert!(b < a);
        assert_eq!(a - b, 1);
        assert_eq!(mobility_med(UNIX_EPOCH), u32::MAX);
    }
}
