//! The cloud claim of a VRRP instance (`[vrrp.cloud]`): a thin driver around
//! [`hagw_cloud::Arbiter`]. The VRRP state machine tells it its transitions and
//! never waits for it; it tells the state machine to fence or unfence.
//!
//! * `secondary-ip` mode (seed 002): the master claims the VIP as a secondary
//!   private IP of its ENI (AssignPrivateIpAddresses, AllowReassignment);
//!   ownership is read from IMDS (`local-ipv4s` of our MAC: no API budget),
//!   else from the API (which ENI holds the address).
//! * `route` mode: the master points each route table's `destination` at its
//!   ENI (ReplaceRoute); ownership is read from the route tables.

use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use hagw_cloud::{
    Action, Arbiter, ArbiterConfig, ChainSources, CredentialsChain, Ec2Client, Ec2Config, Imds,
    ImdsConfig, Owner,
};
use ipnet::IpNet;
use tokio::sync::mpsc;

/// How the VIP is held in the cloud.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    SecondaryIp,
    Route {
        tables: Vec<String>,
        destination: IpNet,
    },
}

/// A `[vrrp.cloud]` section, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloudSpec {
    pub instance: String,
    pub mode: Mode,
    pub region: String,
    pub endpoint: Option<String>,
    /// This node's ENI; `None`: from IMDS by `mac`.
    pub network_interface: Option<String>,
    pub imds_endpoint: String,
    /// The VRRP interface's MAC (`aa:bb:..`), for IMDS.
    pub mac: String,
    /// The first IPv4 virtual address (secondary-ip mode).
    pub vip: Option<Ipv4Addr>,
    pub recheck: Duration,
}

/// What the VRRP driver tells the cloud side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Edge {
    BecameMaster,
    LeftMaster,
    /// VRRP left Fenced by itself (it heard its peer).
    Unfenced,
}

/// What the cloud side tells the VRRP driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Fence { owner: String },
    Unfence,
}

/// What the claim knows, copied into the instance's status.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CloudStatus {
    pub mode: String,
    pub eni: Option<String>,
    /// The owner as last confirmed, and when (seconds since the epoch).
    pub owner: Option<String>,
    pub owner_checked_at: Option<u64>,
    pub phase: String,
    pub last_claim_ms: Option<u64>,
    pub last_claim_request_id: Option<String>,
    pub claims: u64,
    pub last_error: Option<String>,
}

/// A handle; dropping every handle ends the task.
#[derive(Clone)]
pub struct CloudClaim {
    tx: mpsc::UnboundedSender<Edge>,
    status: Arc<Mutex<CloudStatus>>,
}

impl CloudClaim {
    /// Spawns the task; `verdicts` carries fencing decisions to the VRRP
    /// driver.
    pub fn start(
        spec: CloudSpec,
        verdicts: mpsc::UnboundedSender<Verdict>,
    ) -> anyhow::Result<CloudClaim> {
        let imds = Arc::new(Imds::new(ImdsConfig {
            endpoint: spec.imds_endpoint.clone(),
            ..ImdsConfig::default()
        })?);
        let creds = Arc::new(CredentialsChain::new(ChainSources::from_env(Some(
            imds.clone(),
        ))));
        let mut ec2 = Ec2Config::new(spec.region.clone());
        ec2.endpoint = spec.endpoint.clone();
        let client = Ec2Client::new(ec2, creds)?;
        let status = Arc::new(Mutex::new(CloudStatus {
            mode: match spec.mode {
                Mode::SecondaryIp => "secondary-ip".into(),
                Mode::Route { .. } => "route".into(),
            },
            eni: spec.network_interface.clone(),
            phase: "idle".into(),
            ..CloudStatus::default()
        }));
        let (tx, rx) = mpsc::unbounded_channel();
        let task = Task {
            arbiter: Arbiter::new(ArbiterConfig {
                recheck: spec.recheck,
                ..ArbiterConfig::default()
            }),
            eni: spec.network_interface.clone(),
            spec,
            client,
            imds,
            status: status.clone(),
            verdicts,
            master_since: None,
        };
        tokio::spawn(task.run(rx));
        Ok(CloudClaim { tx, status })
    }

    /// Never blocks: the VRRP state machine does not wait on the cloud.
    pub fn edge(&self, e: Edge) {
        let _ = self.tx.send(e);
    }

    pub fn status(&self) -> CloudStatus {
        self.status.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

enum Done {
    Claim(Result<Option<String>, String>),
    Check(Result<Owner, String>),
    /// This node's ENI, once found in IMDS.
    Eni(String),
}

struct Task {
    spec: CloudSpec,
    arbiter: Arbiter,
    client: Ec2Client,
    imds: Arc<Imds>,
    eni: Option<String>,
    status: Arc<Mutex<CloudStatus>>,
    verdicts: mpsc::UnboundedSender<Verdict>,
    /// When VRRP made us master (claim latency is counted from there).
    master_since: Option<Instant>,
}

fn epoch_secs() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Task {
    fn set_status(&self, f: impl FnOnce(&mut CloudStatus)) {
        if let Ok(mut s) = self.status.lock() {
            f(&mut s);
            s.phase = phase_name(self.arbiter.phase()).into();
        }
    }

    async fn run(mut self, mut edges: mpsc::UnboundedReceiver<Edge>) {
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Done>();
        let mut actions = Vec::new();
        loop {
            let deadline = self.arbiter.next_deadline();
            tokio::select! {
                e = edges.recv() => match e {
                    None => return,
                    Some(Edge::BecameMaster) => {
                        self.master_since = Some(Instant::now());
                        self.arbiter.became_master(Instant::now(), &mut actions);
                    }
                    Some(Edge::LeftMaster) => self.arbiter.left_master(),
                    Some(Edge::Unfenced) => self.arbiter.unfenced_by_vrrp(),
                },
                d = done_rx.recv() => match d {
                    None => return,
                    Some(Done::Claim(r)) => {
                        let now = Instant::now();
                        match &r {
                            Ok(request_id) => {
                                let ms = self.master_since.map(|t| now.duration_since(t).as_millis() as u64);
                                tracing::info!(instance = %self.spec.instance, claim_ms = ms, request_id = request_id.as_deref().unwrap_or("-"), "cloud claim accepted");
                                self.set_status(|s| {
                                    s.claims += 1;
                                    s.last_claim_ms = ms;
                                    s.last_claim_request_id = request_id.clone();
                                    s.last_error = None;
                                });
                            }
                            Err(e) => {
                                tracing::error!(instance = %self.spec.instance, error = %e, "cloud claim failed; retrying");
                                self.set_status(|s| s.last_error = Some(e.clone()));
                            }
                        }
                        self.arbiter.claim_result(r.map(|_| ()), now);
                    }
                    Some(Done::Eni(e)) => {
                        if self.eni.is_none() {
                            tracing::info!(instance = %self.spec.instance, eni = %e, "this node's ENI (from IMDS)");
                            self.set_status(|s| s.eni = Some(e.clone()));
                            self.eni = Some(e);
                        }
                    }
                    Some(Done::Check(r)) => {
                        if let Ok(owner) = &r {
                            let shown = match owner {
                                Owner::Me => self.eni.clone().or(Some("self".into())),
                                Owner::Other(o) => Some(o.clone()),
                                Owner::Nobody => None,
                            };
                            self.set_status(|s| {
                                s.owner = shown;
                                s.owner_checked_at = Some(epoch_secs());
                            });
                        } else if let Err(e) = &r {
                            tracing::warn!(instance = %self.spec.instance, error = %e, "cannot read the VIP's owner from the cloud");
                            self.set_status(|s| s.last_error = Some(e.clone()));
                        }
                        self.arbiter.observed(r, Instant::now(), &mut actions);
                    }
                },
                _ = async { match deadline {
                    Some(t) => tokio::time::sleep_until(t.into()).await,
                    None => std::future::pending().await,
                } } => self.arbiter.on_timer(Instant::now(), &mut actions),
            }
            for a in actions.drain(..) {
                self.act(a, &done_tx);
            }
            self.set_status(|_| {});
        }
    }

    fn act(&mut self, a: Action, done: &mpsc::UnboundedSender<Done>) {
        match a {
            Action::Claim => {
                if let Some(t) = self.master_since {
                    tracing::info!(instance = %self.spec.instance, after_transition_us = t.elapsed().as_micros() as u64, "cloud claim sent");
                }
                let (client, imds, spec, eni, done) = (
                    self.client.clone(),
                    self.imds.clone(),
                    self.spec.clone(),
                    self.eni.clone(),
                    done.clone(),
                );
                tokio::spawn(async move {
                    if eni.is_none() {
                        if let Ok(e) = my_eni(&imds, &spec, None).await {
                            let _ = done.send(Done::Eni(e));
                        }
                    }
                    let r = claim(&client, &imds, &spec, eni).await;
                    let _ = done.send(Done::Claim(r));
                });
            }
            Action::Check => {
                let (client, imds, spec, eni, done) = (
                    self.client.clone(),
                    self.imds.clone(),
                    self.spec.clone(),
                    self.eni.clone(),
                    done.clone(),
                );
                tokio::spawn(async move {
                    let r = check(&client, &imds, &spec, eni).await;
                    let _ = done.send(Done::Check(r));
                });
            }
            Action::Fence { owner } => {
                tracing::warn!(instance = %self.spec.instance, %owner, "the cloud gave the VIP to another node: stepping down (fenced)");
                let _ = self.verdicts.send(Verdict::Fence { owner });
            }
            Action::Unfence => {
                tracing::info!(instance = %self.spec.instance, "the cloud shows the VIP free: VRRP may take it");
                let _ = self.verdicts.send(Verdict::Unfence);
            }
        }
    }
}

fn phase_name(p: &hagw_cloud::arbiter::Phase) -> &'static str {
    use hagw_cloud::arbiter::Phase::*;
    match p {
        Idle => "idle",
        Claiming { .. } => "claiming",
        ClaimFailed { .. } => "claim-failed",
        Confirming { .. } => "confirming",
        Owner { .. } => "owner",
        Fenced { .. } => "fenced",
    }
}

/// This node's ENI: configured, else from IMDS by MAC.
async fn my_eni(imds: &Imds, spec: &CloudSpec, known: Option<String>) -> Result<String, String> {
    if let Some(e) = known {
        return Ok(e);
    }
    imds.interface_id(&spec.mac).await.map_err(|e| {
        format!(
            "cannot find this node's ENI from IMDS (MAC {}): {e}",
            spec.mac
        )
    })
}

/// Sends the claim; `Ok(request id)`.
async fn claim(
    client: &Ec2Client,
    imds: &Imds,
    spec: &CloudSpec,
    eni: Option<String>,
) -> Result<Option<String>, String> {
    let eni = my_eni(imds, spec, eni).await?;
    match &spec.mode {
        Mode::SecondaryIp => {
            let vip = spec.vip.ok_or("no IPv4 virtual address to claim")?;
            let r = client
                .claim_secondary_ip(&eni, vip)
                .await
                .map_err(|e| e.to_string())?;
            Ok(r.call.request_id)
        }
        Mode::Route {
            tables,
            destination,
        } => {
            let mut last = None;
            for t in tables {
                let r = client
                    .replace_route(t, *destination, &eni)
                    .await
                    .map_err(|e| e.to_string())?;
                last = r.request_id;
            }
            Ok(last)
        }
    }
}

/// Who holds the VIP now: IMDS first in secondary-ip mode (free), then the
/// API.
async fn check(
    client: &Ec2Client,
    imds: &Imds,
    spec: &CloudSpec,
    eni: Option<String>,
) -> Result<Owner, String> {
    let eni = my_eni(imds, spec, eni).await?;
    match &spec.mode {
        Mode::SecondaryIp => {
            let vip = spec.vip.ok_or("no IPv4 virtual address")?;
            if let Ok(ips) = imds.local_ipv4s(&spec.mac).await {
                if ips.contains(&vip) {
                    return Ok(Owner::Me);
                }
            }
            let owner = client
                .owner_of_private_ip(vip, &[eni.as_str()])
                .await
                .map_err(|e| e.to_string())?;
            Ok(match owner {
                Some(o) if o == eni => Owner::Me,
                Some(o) => Owner::Other(o),
                None => Owner::Nobody,
            })
        }
        Mode::Route {
            tables,
            destination,
        } => {
            // The first table decides; the others follow it.
            let Some(t) = tables.first() else {
                return Err("no route table".into());
            };
            let target = client
                .route_target(t, *destination)
                .await
                .map_err(|e| e.to_string())?;
            Ok(match target {
                Some(o) if o == eni => Owner::Me,
                Some(o) => Owner::Other(o),
                None => Owner::Nobody,
            })
        }
    }
}

impl CloudSpec {
    /// The spec of instance `v`'s `[vrrp.cloud]`, with the interface's MAC
    /// read from sysfs.
    pub fn of(v: &crate::config::Vrrp, c: &crate::config::VrrpCloud) -> anyhow::Result<CloudSpec> {
        let mac_path = format!("/sys/class/net/{}/address", v.interface);
        let mac = std::fs::read_to_string(&mac_path)
            .map(|m| m.trim().to_string())
            .map_err(|e| {
                anyhow::anyhow!(
                    "vrrp {}: cloud claim needs the MAC of {} ({mac_path}: {e})",
                    v.name,
                    v.interface
                )
            })?;
        Ok(CloudSpec {
            instance: v.name.clone(),
            mode: match &c.mode {
                crate::config::CloudMode::SecondaryIp => Mode::SecondaryIp,
                crate::config::CloudMode::Route {
                    tables,
                    destination,
                } => Mode::Route {
                    tables: tables.clone(),
                    destination: *destination,
                },
            },
            region: c.region.clone(),
            endpoint: c.endpoint.clone(),
            network_interface: c.network_interface.clone(),
            imds_endpoint: c.imds_endpoint.clone(),
            mac,
            vip: v.virtual_addresses.iter().find_map(|n| match n.addr() {
                std::net::IpAddr::V4(a) => Some(a),
                _ => None,
            }),
            recheck: Duration::from_millis(u64::from(c.recheck_ms)),
        })
    }
}

/// Joins a VRRP instance and its cloud claim: transitions go to the claim,
/// fencing verdicts to the instance, the claim's state into the instance's
/// status. Returns at once; the work runs in a task.
pub fn attach(spec: CloudSpec, h: super::vrrp::InstanceHandle) -> anyhow::Result<()> {
    use super::vrrp::VrrpState;
    let (vtx, mut vrx) = mpsc::unbounded_channel();
    let claim = CloudClaim::start(spec, vtx)?;
    let mut transitions = h.transitions();
    tokio::spawn(async move {
        let mut last = VrrpState::Initialize;
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                changed = transitions.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let state = transitions.borrow_and_update().state;
                    match (last, state) {
                        (a, VrrpState::Master) if a != VrrpState::Master => claim.edge(Edge::BecameMaster),
                        (VrrpState::Master, b) if b != VrrpState::Master => claim.edge(Edge::LeftMaster),
                        (VrrpState::Fenced, b) if b != VrrpState::Fenced && b != VrrpState::Master => claim.edge(Edge::Unfenced),
                        _ => {}
                    }
                    last = state;
                }
                v = vrx.recv() => match v {
                    None => return,
                    Some(Verdict::Fence { .. }) => h.fence(),
                    Some(Verdict::Unfence) => h.unfence(),
                },
                _ = tick.tick() => {
                    let c = claim.status();
                    h.set_cloud_status(Some(super::vrrp::CloudStatus {
                        owner: c.owner.clone(),
                        confirmed_secs_ago: c.owner_checked_at.map(|t| epoch_secs().saturating_sub(t) as f64),
                        last_claim: c.eni.as_ref().map(|e| format!("{} ({} claims, phase {})", e, c.claims, c.phase))
                            .or(Some(format!("{} claims, phase {}", c.claims, c.phase))),
                        last_claim_ms: c.last_claim_ms.map(|m| m as f64),
                        last_error: c.last_error.clone(),
                    }));
                }
            }
        }
    });
    Ok(())
}
