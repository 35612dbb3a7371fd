//! The control socket: a Unix stream socket where `hagw status` asks the running
//! daemon. One request line ("status"), one JSON answer, then close.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::daemon::Daemon;

#[derive(Debug, Serialize, Deserialize)]
pub struct Status {
    pub peers: Vec<PeerStatus>,
    pub routes: Vec<RouteStatus>,
    /// Uplink probes (router role): while one is down, routes are withdrawn.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub health: Vec<crate::daemon::health::ProbeStatus>,
    /// Connection pinning: each router of the default, its slot, table and mark.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pinning: Vec<PinStatus>,
    /// BFD sessions (peers with `bfd = true`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bfd: Vec<BfdStatus>,
    /// How the BFD thread is scheduled ("SCHED_FIFO 10", or why not).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bfd_thread: Option<String>,
    /// Multi-NIC source policy routing (`[policy_routing]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_routing: Option<crate::policy_routing::PolicyStatus>,
    /// VRRP instances (`[[vrrp]]`): state, Master, counters, VIPs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vrrp: Vec<crate::daemon::vrrp::VrrpStatus>,
    /// Anycast gateways and the NAT table (`[[gateway]]`, `[nat]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub convergent: Option<crate::convergent::ConvergentStatus>,
    /// Virtual networks on this host (`[[vnet]]`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vnet: Vec<VnetStatus>,
}

/// One virtual network of a host.
#[derive(Debug, Serialize, Deserialize)]
pub struct VnetStatus {
    pub name: String,
    pub bridge: String,
    /// hagw created the bridge (else it adopted an existing one).
    pub created: bool,
    pub table: u32,
    /// The routers the table's routes go through now.
    pub routers: Vec<String>,
    /// The VMs announced: "ADDR" learned, "ADDR (static)" configured.
    pub vms: Vec<String>,
    pub error: Option<String>,
}

impl From<hagw_kernel::vnet::NetworkStatus> for VnetStatus {
    fn from(n: hagw_kernel::vnet::NetworkStatus) -> VnetStatus {
        VnetStatus {
            name: n.name,
            bridge: n.bridge,
            created: n.created,
            table: n.table,
            routers: n.routers.iter().map(ToString::to_string).collect(),
            vms: n
                .vms
                .iter()
                .map(|(a, src)| match src {
                    hagw_kernel::vnet::VmSource::Learned => a.to_string(),
                    hagw_kernel::vnet::VmSource::Static => format!("{a} (static)"),
                })
                .collect(),
            error: n.error,
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct PinStatus {
    pub router: String,
    pub slot: u32,
    pub table: u32,
    pub mark: String,
    /// Table route, fwmark rule and nft entries all in place.
    pub active: bool,
    pub error: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct BfdStatus {
    pub peer: String,
    pub local: String,
    pub state: String,
    pub remote_state: String,
    /// Why the session last went down (RFC 5880 diagnostic).
    pub diag: String,
    pub tx_interval_ms: Option<f64>,
    pub detection_ms: Option<f64>,
    pub counters: crate::daemon::bfd::BfdCounters,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct PeerStatus {
    pub address: String,
    /// "dynamic" (from a listen range) or "neighbor" (configured).
    pub kind: String,
    pub range: Option<String>,
    pub remote_asn: Option<u32>,
    /// The RFC 4271 state name.
    pub state: String,
    pub uptime_secs: Option<u64>,
    pub prefixes_received: usize,
    pub prefixes_sent: usize,
    pub last_error: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct RouteStatus {
    pub prefix: String,
    pub nexthops: Vec<String>,
    /// In the kernel (hagw's `[kernel] install`), or only selected.
    pub installed: bool,
    pub error: Option<String>,
}

/// Removes the socket file when the daemon stops.
pub struct Guard(PathBuf);

impl Guard {
    pub fn remove(self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

pub async fn serve(path: &Path, daemon: Arc<Daemon>) -> anyhow::Result<Guard> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    if path.exists() {
        // A live daemon answers; a stale file from a crash does not.
        if UnixStream::connect(path).await.is_ok() {
            anyhow::bail!("another hagw is running on {}", path.display());
        }
        std::fs::remove_file(path)
            .with_context(|| format!("cannot remove stale {}", path.display()))?;
    }
    let listener = UnixListener::bind(path)?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let d = daemon.clone();
            tokio::spawn(async move {
                if let Err(e) = answer(stream, d).await {
                    tracing::debug!("control request failed: {e}");
                }
            });
        }
    });
    Ok(Guard(path.to_owned()))
}

async fn answer(stream: UnixStream, daemon: Arc<Daemon>) -> anyhow::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut line = String::new();
    BufReader::new(r.take(256)).read_line(&mut line).await?;
    let reply = match line.trim() {
        "status" => serde_json::to_vec(&daemon.status().await)?,
        other => serde_json::to_vec(
            &serde_json::json!({ "error": format!("unknown request {other:?}") }),
        )?,
    };
    w.write_all(&reply).await?;
    w.shutdown().await?;
    Ok(())
}

/// Asks a running daemon for its status.
pub async fn request_status(path: &Path) -> anyhow::Result<Status> {
    let mut s = UnixStream::connect(path).await.with_context(|| {
        format!(
            "cannot reach hagw at {} (is `hagw run` running? --socket sets the path)",
            path.display()
        )
    })?;
    s.write_all(b"status\n").await?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    serde_json::from_slice(&buf).context("the daemon's answer is not a status")
}
