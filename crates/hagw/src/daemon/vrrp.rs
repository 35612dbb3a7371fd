//! The VRRP driver: one task per `[[vrrp]]` instance around a sans-IO
//! [`hagw_vrrp::Instance`], which decides everything; this file only moves
//! packets, time and outputs.
//!
//! # Sockets
//! One raw IP socket for protocol 112 per instance, `SO_BINDTODEVICE` to
//! its interface, TTL / hop limit 255 on every send (unicast and
//! multicast), multicast loop off, the group joined only in multicast mode.
//! Each advert leaves with `IP_PKTINFO` / `IPV6_PKTINFO` naming the source
//! (the checksum covers it), so the socket needs no bind and works before
//! the source address exists; a send that fails then is counted and shown
//! (`last_error`), and the instance waits in Fault until the address comes
//! (keepalived #1847). IPv4 raw sockets deliver the IP header (TTL, source
//! and destination come from it); IPv6 ones deliver the hop limit and
//! destination as control messages.
//!
//! # Timing
//! The task sleeps until [`Instance::next_deadline`] (tokio's 1 ms
//! resolution is far below VRRP's 10 ms step), or a packet, a command or an
//! interface change. Nothing it does waits on anything slow: the virtual
//! addresses go to [`hagw_kernel::vip::VipSync`] (a channel send; the
//! reconciler adds them at once), hooks to a queue of their own, BFD and
//! probes arrive as commands.
//!
//! # Fault
//! The instance runs only while its interface exists and is up, its source
//! address is on it, its socket is open and no tracking probe without a
//! `priority_decrement` is down. Otherwise it is shut down (a Master sends
//! priority 0 and gives up the addresses), shown as `Fault` with the
//! reason, `on_fault` runs, and it starts again (as Backup) when all is
//! well.
//!
//! # The cloud seam
//! [`InstanceHandle`] is what another component (the cloud claim) holds: it
//! follows [`InstanceHandle::transitions`], calls [`InstanceHandle::fence`]
//! / [`InstanceHandle::unfence`] when the cloud says the address is owned
//! elsewhere / free, and shows what it knows with
//! [`InstanceHandle::set_cloud_status`].

use std::io::{self, IoSlice, IoSliceMut};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hagw_kernel::nft::{self, Nft, Table};
use hagw_kernel::vip::{self, Interfaces, VipSync};
use hagw_vrrp::{Family, Instance, Output, StateKind};
use ipnet::IpNet;
use nix::sys::socket::{
    recvmsg, sendmsg, setsockopt, sockopt, ControlMessage, ControlMessageOwned, MsgFlags,
    SockaddrIn, SockaddrIn6,
};
use serde::{Deserialize, Serialize};
use socket2::{Domain, InterfaceIndexOrAddress, Protocol, Socket, Type};
use tokio::io::Interest;
use tokio::sync::{mpsc, oneshot, watch};

use crate::config;
use crate::daemon::bfd::{Bfd, BfdState};

/// How long a hook may run before it is killed.
const HOOK_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a failed socket waits before the next try.
const SOCKET_RETRY: Duration = Duration::from_secs(1);
/// At most this many packets per wake-up, so timers run under a flood.
const RECV_BATCH: usize = 64;

/// The state an operator sees: the core's, or Fault (the driver stopped it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum VrrpState {
    Initialize,
    Backup,
    Master,
    Fenced,
    Fault,
}

impl VrrpState {
    fn of(k: StateKind) -> VrrpState {
        match k {
            StateKind::Initialize => VrrpState::Initialize,
            StateKind::Backup => VrrpState::Backup,
            StateKind::Master => VrrpState::Master,
            StateKind::Fenced => VrrpState::Fenced,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            VrrpState::Initialize => "Initialize",
            VrrpState::Backup => "Backup",
            VrrpState::Master => "Master",
            VrrpState::Fenced => "Fenced",
            VrrpState::Fault => "Fault",
        }
    }
}

/// One state change, as [`InstanceHandle::transitions`] delivers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    /// Counts up from 0 (the initial value, before any change).
    pub seq: u64,
    pub state: VrrpState,
    /// Why ("master down timer", "peer down", "interface eth0 is down"...).
    pub reason: String,
    pub at: Instant,
}

/// What the cloud claim shows in `hagw status` (set through
/// [`InstanceHandle::set_cloud_status`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CloudStatus {
    /// The owner of the address as last confirmed by the cloud's API.
    pub owner: Option<String>,
    pub confirmed_secs_ago: Option<f64>,
    /// The last claim ("assign 10.0.0.100 to eni-..."), its latency, and
    /// how it ended.
    pub last_claim: Option<String>,
    pub last_claim_ms: Option<f64>,
    pub last_error: Option<String>,
}

/// Per-reason drop counters and the rest of the core's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VrrpCounters {
    pub became_master: u64,
    pub priority_zero_in: u64,
    pub priority_zero_out: u64,
    pub dropped_ttl: u64,
    pub dropped_not_peer: u64,
    pub dropped_checksum: u64,
    pub dropped_version: u64,
    pub dropped_malformed: u64,
    /// Adverts of other virtual routers on the interface (not errors).
    pub other_vrid: u64,
    pub address_list_mismatch: u64,
    pub owner_conflict: u64,
    /// Split brains seen to end (the other Master went quiet).
    pub split_brain_healed: u64,
    pub tx_errors: u64,
}

/// One virtual address in the status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VipStatusJson {
    pub address: String,
    pub in_kernel: bool,
    /// On the interface but not added by hagw: never touched.
    pub foreign: bool,
}

/// One instance in `hagw status` (the `vrrp` array of `--json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VrrpStatus {
    pub name: String,
    pub interface: String,
    pub vrid: u8,
    pub family: String,
    pub state: String,
    /// The current priority (lowered by tracking) and the configured one.
    pub priority: u8,
    pub configured_priority: u8,
    /// The Master's address (ours when Master) and advertised priority.
    pub master: Option<String>,
    pub master_priority: Option<u8>,
    pub source: Option<String>,
    /// "multicast" or "unicast to a, b".
    pub transport: String,
    /// Seconds since the last state change, and why it changed.
    pub since_secs: Option<f64>,
    pub last_transition: Option<String>,
    pub adverts_in: u64,
    pub adverts_out: u64,
    pub dropped: u64,
    pub counters: VrrpCounters,
    pub vips: Vec<VipStatusJson>,
    /// From the Master decision to the last VIP in the kernel.
    pub vip_latency_ms: Option<f64>,
    /// Gratuitous ARPs / unsolicited NAs sent.
    pub announcements: u64,
    /// Why the instance is not running (Fault).
    pub fault: Option<String>,
    /// The last dropped advert and why.
    pub last_drop: Option<String>,
    pub last_error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloud: Option<CloudStatus>,
}

enum Cmd {
    /// BFD: this peer's session went Down.
    PeerDown(IpAddr),
    /// A tracking probe's result (index into the instance's trackers).
    Track(usize, bool),
    Fence,
    Unfence,
    Status(oneshot::Sender<VrrpStatus>),
    Shutdown(oneshot::Sender<()>),
}

/// A running instance: the seam for the cloud claim and for the daemon.
#[derive(Clone)]
pub struct InstanceHandle {
    name: String,
    cmd: mpsc::UnboundedSender<Cmd>,
    transitions: watch::Receiver<Transition>,
    master: watch::Receiver<bool>,
    cloud: Arc<Mutex<Option<CloudStatus>>>,
}

impl InstanceHandle {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Every state change (the latest one; `changed()` wakes on each).
    pub fn transitions(&self) -> watch::Receiver<Transition> {
        self.transitions.clone()
    }

    /// `true` while Master.
    pub fn master(&self) -> watch::Receiver<bool> {
        self.master.clone()
    }

    /// The cloud says the address is owned elsewhere: a Master gives up
    /// its addresses and adverts, a Backup stops waiting to take over; both
    /// stay Fenced until [`InstanceHandle::unfence`] or a peer's advert.
    pub fn fence(&self) {
        let _ = self.cmd.send(Cmd::Fence);
    }

    /// The cloud shows the address free: Fenced becomes Backup again.
    pub fn unfence(&self) {
        let _ = self.cmd.send(Cmd::Unfence);
    }

    /// What the cloud claim shows in `hagw status` (None removes it).
    pub fn set_cloud_status(&self, s: Option<CloudStatus>) {
        *self.cloud.lock().unwrap_or_else(|p| p.into_inner()) = s;
    }

    async fn status(&self) -> Option<VrrpStatus> {
        let (tx, rx) = oneshot::channel();
        self.cmd.send(Cmd::Status(tx)).ok()?;
        rx.await.ok()
    }
}

/// A probe that tracks an instance.
pub struct Tracker {
    pub instance: String,
    /// `None`: a failure takes the instance out (Fault).
    pub decrement: Option<u8>,
    /// `None` until the first result.
    pub up: watch::Receiver<Option<bool>>,
}

/// Every instance, the VIP reconciler and the Accept_Mode filter.
pub struct Vrrp {
    instances: Vec<InstanceHandle>,
    vips: VipSync,
    accept: Option<Table>,
}

impl Vrrp {
    /// Starts the VIP reconciler, the Accept_Mode filter and one task per
    /// instance. Fails only if netlink cannot be opened.
    pub async fn start(
        cfgs: &[config::Vrrp],
        bfd: Option<Bfd>,
        trackers: Vec<Tracker>,
    ) -> anyhow::Result<Vrrp> {
        use anyhow::Context;
        let vips = VipSync::start()
            .await
            .context("cannot start the VRRP address sync")?;
        let (accept, accept_error) = accept_filter(cfgs).await;
        let mut trackers = trackers;
        let mut instances = Vec::new();
        for c in cfgs {
            let mine: Vec<Tracker> = {
                let (m, rest) = trackers.into_iter().partition(|t| t.instance == c.name);
                trackers = rest;
                m
            };
            instances.push(spawn(
                c.clone(),
                vips.clone(),
                bfd.clone(),
                mine,
                accept_error.clone().filter(|_| !c.accept && !c.owner()),
            ));
        }
        Ok(Vrrp {
            instances,
            vips,
            accept,
        })
    }

    pub fn instances(&self) -> &[InstanceHandle] {
        &self.instances
    }

    pub fn get(&self, name: &str) -> Option<&InstanceHandle> {
        self.instances.iter().find(|i| i.name == name)
    }

    /// Open while every `gate_bgp` instance is Master; `None` if none is.
    pub fn bgp_gate(&self, cfgs: &[config::Vrrp]) -> Option<watch::Receiver<bool>> {
        let gates = cfgs
            .iter()
            .filter(|c| c.gate_bgp)
            .filter_map(|c| self.get(&c.name).map(InstanceHandle::master))
            .collect();
        all_open(gates)
    }

    /// Every instance, by configuration order.
    pub async fn status(&self) -> Vec<VrrpStatus> {
        let groups = self.vips.snapshot().await;
        let mut out = Vec::new();
        for i in &self.instances {
            let Some(mut s) = i.status().await else {
                continue;
            };
            if let Some(g) = groups.iter().find(|g| g.group == s.name) {
                s.vips = g
                    .vips
                    .iter()
                    .map(|v| VipStatusJson {
                        address: v.net.to_string(),
                        in_kernel: v.in_kernel,
                        foreign: v.foreign,
                    })
                    .collect();
                s.vip_latency_ms = g.last_add_latency.map(|d| d.as_secs_f64() * 1000.0);
                s.announcements = g.announcements;
                if let Some(e) = &g.last_error {
                    s.last_error = Some(e.clone());
                }
            }
            s.cloud = i.cloud.lock().unwrap_or_else(|p| p.into_inner()).clone();
            out.push(s);
        }
        out
    }

    /// Every instance shut down (a Master sends priority 0, so its Backup
    /// takes over after Skew_Time), the addresses removed, the filter gone.
    pub async fn shutdown(&self) {
        let mut waits = Vec::new();
        for i in &self.instances {
            let (tx, rx) = oneshot::channel();
            if i.cmd.send(Cmd::Shutdown(tx)).is_ok() {
                waits.push(rx);
            }
        }
        for w in waits {
            let _ = tokio::time::timeout(Duration::from_secs(2), w).await;
        }
        self.vips.shutdown(true).await;
        if let Some(t) = &self.accept {
            if let Err(e) = Nft::new("nft").delete(t).await {
                tracing::warn!("VRRP: cannot remove the Accept_Mode filter: {e}");
            }
        }
    }
}

/// Installs the Accept_Mode filter for the non-owner instances with
/// `accept = false`; the table, or the error every such instance shows.
async fn accept_filter(cfgs: &[config::Vrrp]) -> (Option<Table>, Option<String>) {
    let addrs: Vec<IpAddr> = cfgs
        .iter()
        .filter(|c| !c.accept && !c.owner())
        .flat_map(|c| c.virtual_addresses.iter().map(IpNet::addr))
        .collect();
    let table = match Table::new(nft::Family::Inet, vip::ACCEPT_TABLE) {
        Ok(t) => t,
        Err(e) => return (None, Some(e.to_string())),
    };
    let n = Nft::new("nft");
    if addrs.is_empty() {
        // A previous run's filter, if any.
        let _ = n.delete(&table).await;
        return (None, None);
    }
    match n.replace(&table, &vip::accept_filter_body(&addrs)).await {
        Ok(()) => (Some(table), None),
        Err(e) => {
            tracing::error!(
                "VRRP: cannot install the Accept_Mode filter ({e}): a Master with accept = false \
                 answers packets to its virtual addresses"
            );
            (None, Some(format!("accept = false is not enforced: {e}")))
        }
    }
}

/// A receiver that is `true` while all `gates` are (`None` for none).
pub fn all_open(gates: Vec<watch::Receiver<bool>>) -> Option<watch::Receiver<bool>> {
    if gates.is_empty() {
        return None;
    }
    if gates.len() == 1 {
        return gates.into_iter().next();
    }
    let all = Arc::new(gates);
    let now = all.iter().all(|g| *g.borrow());
    let (tx, rx) = watch::channel(now);
    let tx = Arc::new(tx);
    for i in 0..all.len() {
        let (all, tx) = (all.clone(), tx.clone());
        let mut mine = all[i].clone();
        tokio::spawn(async move {
            while mine.changed().await.is_ok() {
                let open = all.iter().all(|g| *g.borrow());
                tx.send_if_modified(|g| std::mem::replace(g, open) != open);
            }
        });
    }
    Some(rx)
}

fn spawn(
    cfg: config::Vrrp,
    vips: VipSync,
    bfd: Option<Bfd>,
    trackers: Vec<Tracker>,
    accept_error: Option<String>,
) -> InstanceHandle {
    let (cmd, cmds) = mpsc::unbounded_channel();
    let (ttx, transitions) = watch::channel(Transition {
        seq: 0,
        state: VrrpState::Initialize,
        reason: "not started".into(),
        at: Instant::now(),
    });
    let (mtx, master) = watch::channel(false);
    let cloud = Arc::new(Mutex::new(None));
    let mut forwarders = Vec::new();
    let mut tracked = Vec::new();
    for (i, mut t) in trackers.into_iter().enumerate() {
        tracked.push((t.decrement, None));
        let cmd = cmd.clone();
        forwarders.push(tokio::spawn(async move {
            loop {
                let up = *t.up.borrow_and_update();
                if let Some(up) = up {
                    if cmd.send(Cmd::Track(i, up)).is_err() {
                        return;
                    }
                }
                if t.up.changed().await.is_err() {
                    return;
                }
            }
        }));
    }
    let hooks = spawn_hooks(cfg.name.clone());
    let task = Task {
        family: cfg.family(),
        vips,
        ifaces_rx: None,
        sock: None,
        sock_retry: None,
        inst: None,
        fault: None,
        trackers: tracked,
        bfd,
        bfd_watching: None,
        forwarders,
        self_cmd: cmd.clone(),
        transitions: ttx,
        master: mtx,
        hooks,
        out: Vec::new(),
        tx_errors: 0,
        last_error: accept_error,
        last_drop: None,
        seq: 0,
        cfg,
    };
    let name = task.cfg.name.clone();
    tokio::spawn(task.run(cmds));
    InstanceHandle {
        name,
        cmd,
        transitions,
        master,
        cloud,
    }
}

/// The raw socket of one instance.
///
/// It sits on the reactor as a `tokio::net::UdpSocket`: `AsyncFd::new` is
/// deprecated as unsound and its replacement is `unsafe` (forbidden here),
/// while `UdpSocket::from(OwnedFd)` is safe and the reactor only watches the
/// descriptor's readiness, whatever its protocol. Every read and write goes
/// through `recvmsg` / `sendmsg` on the descriptor, never the UDP methods.
struct Sock {
    fd: tokio::net::UdpSocket,
    ifindex: u32,
    family: Family,
}

/// One received packet: source, destination, TTL / hop limit, IP payload.
struct Packet {
    src: IpAddr,
    dst: IpAddr,
    ttl: u8,
    payload: Vec<u8>,
}

impl Sock {
    fn open(cfg: &config::Vrrp, ifindex: u32) -> io::Result<Sock> {
        let family = cfg.family();
        let domain = match family {
            Family::V4 => Domain::IPV4,
            Family::V6 => Domain::IPV6,
        };
        let s = Socket::new(
            domain,
            Type::RAW,
            Some(Protocol::from(i32::from(hagw_vrrp::PROTOCOL))),
        )?;
        s.set_nonblocking(true)?;
        s.bind_device(Some(cfg.interface.as_bytes()))?;
        let ttl = u32::from(hagw_vrrp::TTL);
        let multicast = cfg.peers.is_empty();
        match family {
            Family::V4 => {
                s.set_ttl_v4(ttl)?;
                s.set_multicast_ttl_v4(ttl)?;
                s.set_multicast_loop_v4(false)?;
                if multicast {
                    s.join_multicast_v4_n(
                        &hagw_vrrp::MULTICAST_V4,
                        &InterfaceIndexOrAddress::Index(ifindex),
                    )?;
                }
            }
            Family::V6 => {
                // (IPV6_V6ONLY is refused on raw sockets, and moot.)
                s.set_unicast_hops_v6(ttl)?;
                s.set_multicast_hops_v6(ttl)?;
                s.set_multicast_loop_v6(false)?;
                s.set_multicast_if_v6(ifindex)?;
                setsockopt(&s, sockopt::Ipv6RecvHopLimit, &true).map_err(io::Error::from)?;
                setsockopt(&s, sockopt::Ipv6RecvPacketInfo, &true).map_err(io::Error::from)?;
                if multicast {
                    s.join_multicast_v6(&hagw_vrrp::MULTICAST_V6, ifindex)?;
                }
            }
        }
        let std_sock = std::net::UdpSocket::from(OwnedFd::from(s));
        Ok(Sock {
            fd: tokio::net::UdpSocket::from_std(std_sock)?,
            ifindex,
            family,
        })
    }

    /// Sends `payload` from `src` to `dst`; never waits (a full buffer is
    /// an error, counted).
    fn send(&self, src: IpAddr, dst: IpAddr, payload: &[u8]) -> io::Result<()> {
        let fd = self.fd.as_raw_fd();
        let iov = [IoSlice::new(payload)];
        let flags = MsgFlags::MSG_DONTWAIT;
        let r = match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                let info = libc::in_pktinfo {
                    ipi_ifindex: i32::try_from(self.ifindex).unwrap_or(0),
                    ipi_spec_dst: libc::in_addr {
                        s_addr: u32::from(s).to_be(),
                    },
                    ipi_addr: libc::in_addr { s_addr: 0 },
                };
                let to = SockaddrIn::from(SocketAddrV4::new(d, 0));
                sendmsg(
                    fd,
                    &iov,
                    &[ControlMessage::Ipv4PacketInfo(&info)],
                    flags,
                    Some(&to),
                )
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                let info = libc::in6_pktinfo {
                    ipi6_addr: libc::in6_addr {
                        s6_addr: s.octets(),
                    },
                    ipi6_ifindex: self.ifindex as _,
                };
                let scope = if d.is_unicast_link_local() || d.is_multicast() {
                    self.ifindex
                } else {
                    0
                };
                let to = SockaddrIn6::from(SocketAddrV6::new(d, 0, 0, scope));
                sendmsg(
                    fd,
                    &iov,
                    &[ControlMessage::Ipv6PacketInfo(&info)],
                    flags,
                    Some(&to),
                )
            }
            _ => return Err(io::Error::other("source and destination families differ")),
        };
        r.map(drop).map_err(io::Error::from)
    }

    /// Waits until readable, then reads what is there (at most a batch).
    async fn read_batch(&self) -> io::Result<Vec<Packet>> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 2048];
        loop {
            self.fd.readable().await?;
            while out.len() < RECV_BATCH {
                match self
                    .fd
                    .try_io(Interest::READABLE, || self.recv_one(&mut buf))
                {
                    Ok(Some(p)) => out.push(p),
                    Ok(None) => {}
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    // Readiness cleared: what we have is the batch.
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if out.is_empty() => return Err(e),
                    Err(_) => break,
                }
            }
            if !out.is_empty() {
                return Ok(out);
            }
        }
    }

    /// One packet; `None` for something that is not an IPv4/IPv6 packet we
    /// can read (too short, options past the end).
    fn recv_one(&self, buf: &mut [u8]) -> io::Result<Option<Packet>> {
        let fd = self.fd.as_raw_fd();
        match self.family {
            Family::V4 => {
                let n = nix::sys::socket::recv(fd, buf, MsgFlags::MSG_DONTWAIT)
                    .map_err(io::Error::from)?;
                Ok(parse_ipv4(buf.get(..n).unwrap_or_default()))
            }
            Family::V6 => {
                let mut cmsg = nix::cmsg_space!(libc::c_int, libc::in6_pktinfo);
                let mut iov = [IoSliceMut::new(buf)];
                let msg =
                    recvmsg::<SockaddrIn6>(fd, &mut iov, Some(&mut cmsg), MsgFlags::MSG_DONTWAIT)
                        .map_err(io::Error::from)?;
                let mut ttl = 0u8;
                let mut dst = None;
                if let Ok(cmsgs) = msg.cmsgs() {
                    for c in cmsgs {
                        match c {
                            ControlMessageOwned::Ipv6HopLimit(h) => {
                                ttl = u8::try_from(h).unwrap_or(0)
                            }
                            ControlMessageOwned::Ipv6PacketInfo(i) => {
                                dst = Some(Ipv6Addr::from(i.ipi6_addr.s6_addr))
                            }
                            _ => {}
                        }
                    }
                }
                let n = msg.bytes;
                let Some(src) = msg.address.map(|a| a.ip()) else {
                    return Ok(None);
                };
                let Some(dst) = dst else { return Ok(None) };
                Ok(Some(Packet {
                    src: IpAddr::V6(src),
                    dst: IpAddr::V6(dst),
                    ttl,
                    payload: buf.get(..n).unwrap_or_default().to_vec(),
                }))
            }
        }
    }
}

/// The IPv4 header a raw socket delivers: TTL, addresses and the payload
/// (the total length bounds it; options skipped).
fn parse_ipv4(b: &[u8]) -> Option<Packet> {
    let first = *b.first()?;
    if first >> 4 != 4 {
        return None;
    }
    let ihl = usize::from(first & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([*b.get(2)?, *b.get(3)?]));
    let ttl = *b.get(8)?;
    let addr = |at: usize| -> Option<Ipv4Addr> {
        let o: [u8; 4] = b.get(at..at + 4)?.try_into().ok()?;
        Some(Ipv4Addr::from(o))
    };
    let (src, dst) = (addr(12)?, addr(16)?);
    let payload = b.get(ihl..total.min(b.len()))?;
    if ihl < 20 {
        return None;
    }
    Some(Packet {
        src: IpAddr::V4(src),
        dst: IpAddr::V4(dst),
        ttl,
        payload: payload.to_vec(),
    })
}

/// The source address: the configured one if it is on the interface; else
/// the interface's primary IPv4 address (not hagw's, not a VIP unless we
/// own it) or its own IPv6 link-local address. `Err` says why there is none
/// yet.
fn pick_source(cfg: &config::Vrrp, iface: &vip::Iface) -> Result<IpAddr, String> {
    if let Some(s) = cfg.source {
        return if iface.has(s) {
            Ok(s)
        } else {
            Err(format!(
                "source {s} is not on {} (yet): waiting for it, retrying on every address change",
                cfg.interface
            ))
        };
    }
    let is_vip = |a: IpAddr| cfg.virtual_addresses.iter().any(|n| n.addr() == a);
    let mut cands: Vec<&vip::IfAddr> = iface
        .addrs
        .iter()
        // The owner's VIP is its own address; anyone else's is not a source.
        .filter(|a| !a.hagw && (cfg.owner() || !is_vip(a.addr)))
        .filter(|a| match (cfg.family(), a.addr) {
            (Family::V4, IpAddr::V4(v4)) => !v4.is_loopback(),
            (Family::V6, IpAddr::V6(v6)) => v6.is_unicast_link_local(),
            _ => false,
        })
        .collect();
    cands.sort_by_key(|a| a.secondary);
    cands.first().map(|a| a.addr).ok_or_else(|| {
        format!(
            "{} has no {} to send from yet: waiting for it",
            cfg.interface,
            match cfg.family() {
                Family::V4 => "IPv4 address",
                Family::V6 => "IPv6 link-local address",
            }
        )
    })
}

struct Task {
    cfg: config::Vrrp,
    family: Family,
    vips: VipSync,
    ifaces_rx: Option<watch::Receiver<Arc<Interfaces>>>,
    sock: Option<Arc<Sock>>,
    sock_retry: Option<Instant>,
    inst: Option<Instance>,
    /// Why the instance is not running.
    fault: Option<String>,
    /// (decrement, last result) per tracking probe.
    trackers: Vec<(Option<u8>, Option<bool>)>,
    bfd: Option<Bfd>,
    /// The local address the BFD sessions run from.
    bfd_watching: Option<IpAddr>,
    forwarders: Vec<tokio::task::JoinHandle<()>>,
    self_cmd: mpsc::UnboundedSender<Cmd>,
    transitions: watch::Sender<Transition>,
    master: watch::Sender<bool>,
    hooks: mpsc::UnboundedSender<Hook>,
    out: Vec<Output>,
    tx_errors: u64,
    last_error: Option<String>,
    last_drop: Option<String>,
    seq: u64,
}

impl Task {
    async fn run(mut self, mut cmds: mpsc::UnboundedReceiver<Cmd>) {
        let mut ifaces = self.vips.interfaces();
        // Leftovers of a crashed run go now: we start as Backup.
        self.vips.set(
            &self.cfg.name,
            &self.cfg.interface,
            self.cfg.virtual_addresses.clone(),
            false,
        );
        self.ifaces_rx = Some(ifaces.clone());
        self.check(Instant::now());
        self.flush();
        loop {
            let deadline = [
                self.inst.as_ref().and_then(Instance::next_deadline),
                self.sock_retry,
            ]
            .into_iter()
            .flatten()
            .min();
            let sock = self.sock.clone();
            tokio::select! {
                biased;
                c = cmds.recv() => {
                    let Some(c) = c else { break };
                    if self.command(c) {
                        break;
                    }
                }
                r = async {
                    match &sock {
                        Some(s) => s.read_batch().await,
                        None => std::future::pending().await,
                    }
                } => self.received(r),
                _ = async {
                    match deadline {
                        Some(d) => tokio::time::sleep_until(tokio::time::Instant::from_std(d)).await,
                        None => std::future::pending().await,
                    }
                } => {
                    let now = Instant::now();
                    if self.sock_retry.is_some_and(|t| t <= now) {
                        self.sock_retry = None;
                        self.check(now);
                    }
                    if let Some(i) = &mut self.inst {
                        i.on_timer(now, &mut self.out);
                    }
                }
                r = ifaces.changed() => {
                    if r.is_err() {
                        // The VIP reconciler is gone: nothing more to do.
                        break;
                    }
                    self.check(Instant::now());
                }
            }
            self.flush();
        }
        for f in &self.forwarders {
            f.abort();
        }
    }

    /// Handles a command; `true` to stop.
    fn command(&mut self, c: Cmd) -> bool {
        let now = Instant::now();
        match c {
            Cmd::PeerDown(peer) => {
                if let Some(i) = &mut self.inst {
                    tracing::info!(instance = %self.cfg.name, "VRRP: BFD says {peer} is down");
                    i.peer_down(peer, now, &mut self.out);
                }
            }
            Cmd::Track(idx, up) => {
                if let Some(t) = self.trackers.get_mut(idx) {
                    t.1 = Some(up);
                }
                self.check(now);
            }
            Cmd::Fence => {
                if let Some(i) = &mut self.inst {
                    i.fence(now, &mut self.out);
                }
            }
            Cmd::Unfence => {
                if let Some(i) = &mut self.inst {
                    i.unfence(now, &mut self.out);
                }
            }
            Cmd::Status(reply) => {
                let _ = reply.send(self.status(now));
            }
            Cmd::Shutdown(reply) => {
                if let Some(i) = &mut self.inst {
                    i.shutdown(now, &mut self.out);
                }
                self.flush();
                let _ = reply.send(());
                return true;
            }
        }
        false
    }

    /// The priority tracking leaves, or why the instance must stay out.
    fn tracked_priority(&self) -> Result<u8, String> {
        let mut lowered = 0u8;
        for (i, (dec, up)) in self.trackers.iter().enumerate() {
            if *up == Some(false) {
                match dec {
                    Some(d) => lowered = lowered.saturating_add(*d),
                    None => return Err(format!("tracking probe #{i} is down")),
                }
            }
        }
        // Priority 0 is a leaving Master's: tracking stops at 1. (The
        // owner is never tracked: the config refuses it.)
        Ok(self.cfg.priority.saturating_sub(lowered).max(1))
    }

    /// Looks at the interface, source, socket and tracking, and starts,
    /// stops or rebuilds the instance to match.
    fn check(&mut self, now: Instant) {
        let view = self
            .ifaces_rx
            .as_ref()
            .map(|r| r.borrow().clone())
            .unwrap_or_default();
        let ready = (|| -> Result<(IpAddr, u8), String> {
            let iface = view
                .get(&self.cfg.interface)
                .ok_or_else(|| format!("interface {} not found", self.cfg.interface))?;
            if !iface.up {
                return Err(format!("interface {} is down", self.cfg.interface));
            }
            let source = pick_source(&self.cfg, iface)?;
            let prio = self.tracked_priority()?;
            if self.sock.as_ref().is_none_or(|s| s.ifindex != iface.index) {
                if self.sock_retry.is_some_and(|t| t > now) {
                    return Err(self
                        .fault
                        .clone()
                        .unwrap_or_else(|| "waiting to retry the socket".into()));
                }
                match Sock::open(&self.cfg, iface.index) {
                    Ok(s) => self.sock = Some(Arc::new(s)),
                    Err(e) => {
                        self.sock = None;
                        self.sock_retry = Some(now + SOCKET_RETRY);
                        return Err(format!(
                            "cannot open the VRRP socket on {}: {e}",
                            self.cfg.interface
                        ));
                    }
                }
            }
            Ok((source, prio))
        })();
        match ready {
            Ok((source, prio)) => {
                let rebuild = self
                    .inst
                    .as_ref()
                    .is_none_or(|i| i.config().source != source);
                if rebuild {
                    if let Some(i) = &mut self.inst {
                        i.shutdown(now, &mut self.out);
                    }
                    match Instance::new(self.cfg.instance_config(source)) {
                        Ok(i) => self.inst = Some(i),
                        Err(e) => {
                            // The config check makes this unreachable.
                            self.enter_fault(format!("configuration refused: {e}"), now);
                            return;
                        }
                    }
                    self.watch_bfd(source);
                }
                if let Some(i) = &mut self.inst {
                    if let Err(e) = i.set_priority(prio, now, &mut self.out) {
                        tracing::warn!(instance = %self.cfg.name, "VRRP: priority {prio}: {e}");
                    }
                    if i.state() == StateKind::Initialize {
                        if let Some(f) = self.fault.take() {
                            tracing::info!(instance = %self.cfg.name, "VRRP: fault cleared ({f}): starting");
                        }
                        i.start(now, &mut self.out);
                    }
                }
            }
            Err(why) => self.enter_fault(why, now),
        }
    }

    fn enter_fault(&mut self, why: String, now: Instant) {
        if self.fault.as_deref() == Some(why.as_str()) {
            return;
        }
        let was = self.fault.replace(why.clone());
        if let Some(i) = &mut self.inst {
            i.shutdown(now, &mut self.out);
        }
        tracing::warn!(instance = %self.cfg.name, "VRRP: fault: {why}");
        self.publish(VrrpState::Fault, why.clone(), now);
        if was.is_none() {
            self.run_hook(VrrpState::Fault, &why);
        }
    }

    /// BFD sessions to every peer from `local` (once; a new source moves them).
    fn watch_bfd(&mut self, local: IpAddr) {
        let Some(bfd) = self.bfd.clone().filter(|_| self.cfg.bfd) else {
            return;
        };
        if self.bfd_watching == Some(local) {
            return;
        }
        if self.bfd_watching.is_some() {
            tracing::warn!(instance = %self.cfg.name, "VRRP: source changed to {local}: BFD sessions keep their first source until restart");
            return;
        }
        self.bfd_watching = Some(local);
        for &peer in &self.cfg.peers {
            let mut rx = bfd.watch(peer, local);
            let cmd = self.self_cmd.clone();
            let bfd = bfd.clone();
            self.forwarders.push(tokio::spawn(async move {
                let mut prev = *rx.borrow_and_update();
                while rx.changed().await.is_ok() {
                    let now = *rx.borrow_and_update();
                    // A peer that says AdminDown is stopping, not failing:
                    // its priority-0 advert hands over.
                    if prev == BfdState::Up
                        && now == BfdState::Down
                        && !bfd.peer_admin_down(peer)
                        && cmd.send(Cmd::PeerDown(peer)).is_err()
                    {
                        return;
                    }
                    prev = now;
                }
            }));
        }
    }

    fn received(&mut self, r: io::Result<Vec<Packet>>) {
        let pkts = match r {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(instance = %self.cfg.name, "VRRP: receive error: {e}");
                self.last_error = Some(format!("receive: {e}"));
                return;
            }
        };
        let Some(i) = &mut self.inst else { return };
        let now = Instant::now();
        for p in pkts {
            if let Err(d) = i.handle_packet(p.src, p.dst, p.ttl, &p.payload, now, &mut self.out) {
                if !matches!(d, hagw_vrrp::Discard::OtherVrid(_)) {
                    tracing::debug!(instance = %self.cfg.name, "VRRP: dropped an advert from {}: {d}", p.src);
                    self.last_drop = Some(format!("from {}: {d}", p.src));
                }
            }
        }
    }

    /// Carries out the core's outputs, in order.
    fn flush(&mut self) {
        let out = std::mem::take(&mut self.out);
        let now = Instant::now();
        for o in out {
            match o {
                Output::Transmit { dst, payload } => {
                    let Some(src) = self.inst.as_ref().map(|i| i.config().source) else {
                        continue;
                    };
                    let r = match &self.sock {
                        Some(s) => s.send(src, dst, &payload),
                        None => Err(io::Error::other("no socket")),
                    };
                    if let Err(e) = r {
                        if self.tx_errors == 0 {
                            tracing::warn!(instance = %self.cfg.name, "VRRP: cannot send to {dst} from {src}: {e}");
                        }
                        self.tx_errors += 1;
                        self.last_error = Some(format!("cannot send to {dst} from {src}: {e}"));
                    }
                }
                Output::StateChange { from, to, reason } => {
                    let prio = self.inst.as_ref().map_or(0, Instance::priority);
                    tracing::info!(
                        instance = %self.cfg.name,
                        "VRRP: {from} -> {to} ({reason}, priority {prio})"
                    );
                    let to = VrrpState::of(to);
                    // Shutting down for a fault: Fault was published already.
                    if !(to == VrrpState::Initialize && self.fault.is_some()) {
                        self.publish(to, reason.to_string(), now);
                        self.run_hook(to, reason.name());
                    }
                }
                Output::AddVirtualAddresses(_) => self.vips.set(
                    &self.cfg.name,
                    &self.cfg.interface,
                    self.cfg.virtual_addresses.clone(),
                    true,
                ),
                Output::RemoveVirtualAddresses(_) => self.vips.set(
                    &self.cfg.name,
                    &self.cfg.interface,
                    self.cfg.virtual_addresses.clone(),
                    false,
                ),
                Output::Announce(_) => self.vips.announce(
                    &self.cfg.name,
                    self.cfg.garp_repeat,
                    Duration::from_millis(u64::from(self.cfg.garp_interval_ms)),
                ),
            }
        }
    }

    fn publish(&mut self, state: VrrpState, reason: String, at: Instant) {
        self.seq += 1;
        self.transitions.send_replace(Transition {
            seq: self.seq,
            state,
            reason,
            at,
        });
        let m = state == VrrpState::Master;
        self.master
            .send_if_modified(|g| std::mem::replace(g, m) != m);
    }

    fn run_hook(&self, state: VrrpState, reason: &str) {
        let h = &self.cfg.hooks;
        let program = match state {
            VrrpState::Master => h.on_master.as_ref(),
            VrrpState::Backup | VrrpState::Fenced => h.on_backup.as_ref(),
            VrrpState::Fault => h.on_fault.as_ref(),
            VrrpState::Initialize => None,
        };
        let Some(program) = program else { return };
        let vips: Vec<String> = self
            .cfg
            .virtual_addresses
            .iter()
            .map(ToString::to_string)
            .collect();
        let _ = self.hooks.send(Hook {
            command: program.clone(),
            env: vec![
                ("HAGW_VRRP_NAME", self.cfg.name.clone()),
                ("HAGW_VRRP_STATE", state.name().to_ascii_lowercase()),
                ("HAGW_VRRP_REASON", reason.to_string()),
                ("HAGW_VRRP_INTERFACE", self.cfg.interface.clone()),
                ("HAGW_VRRP_VRID", self.cfg.vrid.to_string()),
                (
                    "HAGW_VRRP_PRIORITY",
                    self.inst
                        .as_ref()
                        .map_or(self.cfg.priority, Instance::priority)
                        .to_string(),
                ),
                ("HAGW_VRRP_VIPS", vips.join(" ")),
            ],
        });
    }

    fn status(&self, now: Instant) -> VrrpStatus {
        let c = self
            .inst
            .as_ref()
            .map(|i| *i.counters())
            .unwrap_or_default();
        let state = if self.fault.is_some() {
            VrrpState::Fault
        } else {
            self.inst
                .as_ref()
                .map_or(VrrpState::Initialize, |i| VrrpState::of(i.state()))
        };
        let t = self.transitions.borrow().clone();
        let dropped = c.drop_not_running
            + c.drop_ttl
            + c.drop_not_peer
            + c.drop_looped
            + c.drop_version
            + c.drop_type
            + c.drop_checksum
            + c.drop_malformed;
        VrrpStatus {
            name: self.cfg.name.clone(),
            interface: self.cfg.interface.clone(),
            vrid: self.cfg.vrid,
            family: self.family.to_string(),
            state: state.name().into(),
            priority: self
                .inst
                .as_ref()
                .map_or(self.cfg.priority, Instance::priority),
            configured_priority: self.cfg.priority,
            master: self
                .inst
                .as_ref()
                .and_then(Instance::master)
                .map(|a| a.to_string()),
            master_priority: self.inst.as_ref().and_then(Instance::master_priority),
            source: self.inst.as_ref().map(|i| i.config().source.to_string()),
            transport: if self.cfg.peers.is_empty() {
                "multicast".into()
            } else {
                format!(
                    "unicast to {}",
                    self.cfg
                        .peers
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            },
            since_secs: (t.seq > 0).then(|| now.saturating_duration_since(t.at).as_secs_f64()),
            last_transition: (t.seq > 0).then(|| t.reason.clone()),
            adverts_in: c.adverts_in,
            adverts_out: c.adverts_out,
            dropped,
            counters: VrrpCounters {
                became_master: c.became_master,
                priority_zero_in: c.priority_zero_in,
                priority_zero_out: c.priority_zero_out,
                dropped_ttl: c.drop_ttl,
                dropped_not_peer: c.drop_not_peer,
                dropped_checksum: c.drop_checksum,
                dropped_version: c.drop_version + c.drop_type,
                dropped_malformed: c.drop_malformed + c.drop_looped + c.drop_not_running,
                other_vrid: c.other_vrid,
                address_list_mismatch: c.address_list_mismatch,
                owner_conflict: c.owner_conflict,
                split_brain_healed: c.split_brain_healed,
                tx_errors: self.tx_errors,
            },
            vips: Vec::new(),
            vip_latency_ms: None,
            announcements: 0,
            fault: self.fault.clone(),
            last_drop: self.last_drop.clone(),
            last_error: self.last_error.clone(),
            cloud: None,
        }
    }
}

/// One hook run.
struct Hook {
    command: String,
    env: Vec<(&'static str, String)>,
}

/// The hooks of one instance run one at a time, in order (a `master` hook
/// never overtakes the `backup` one before it), each killed after
/// [`HOOK_TIMEOUT`]; the state machine only queues them.
fn spawn_hooks(name: String) -> mpsc::UnboundedSender<Hook> {
    let (tx, mut rx) = mpsc::unbounded_channel::<Hook>();
    tokio::spawn(async move {
        while let Some(h) = rx.recv().await {
            let mut words = h.command.split_whitespace();
            let Some(program) = words.next() else {
                continue;
            };
            let mut cmd = tokio::process::Command::new(program);
            cmd.args(words)
                .envs(h.env.iter().map(|(k, v)| (*k, v.as_str())))
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .kill_on_drop(true);
            let started = Instant::now();
            let child = match cmd.spawn() {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(instance = %name, "VRRP hook {program}: cannot start: {e}");
                    continue;
                }
            };
            match tokio::time::timeout(HOOK_TIMEOUT, child.wait_with_output()).await {
                Ok(Ok(o)) if o.status.success() => tracing::info!(
                    instance = %name,
                    "VRRP hook {program} done in {:.0} ms",
                    started.elapsed().as_secs_f64() * 1000.0
                ),
                Ok(Ok(o)) => tracing::warn!(
                    instance = %name,
                    "VRRP hook {program} failed ({}): {}",
                    o.status,
                    String::from_utf8_lossy(&o.stderr).trim()
                ),
                Ok(Err(e)) => tracing::warn!(instance = %name, "VRRP hook {program}: {e}"),
                Err(_) => tracing::warn!(
                    instance = %name,
                    "VRRP hook {program} still running after {HOOK_TIMEOUT:?}: killed"
                ),
            }
        }
    });
    tx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_headers_are_read_not_trusted() {
        let mut p = vec![0x45, 0, 0, 32, 0, 0, 0, 0, 255, 112, 0, 0];
        p.extend_from_slice(&[10, 0, 0, 1, 10, 0, 0, 2]);
        p.extend_from_slice(&[0x31; 12]);
        let pkt = parse_ipv4(&p).expect("parses");
        assert_eq!((pkt.ttl, pkt.payload.len()), (255, 12));
        assert_eq!(pkt.src, IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)));
        assert_eq!(pkt.dst, IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)));
        // Padding past the total length is not payload.
        let mut padded = p.clone();
        padded.extend_from_slice(&[0; 14]);
        assert_eq!(parse_ipv4(&padded).map(|p| p.payload.len()), Some(12));
        for bad in [&p[..19], &[0x65, 0, 0, 20][..], &[][..]] {
            assert!(parse_ipv4(bad).is_none());
        }
        let mut short_ihl = p.clone();
        short_ihl[0] = 0x44;
        assert!(parse_ipv4(&short_ihl).is_none());
    }

    fn cfg(text: &str) -> config::Vrrp {
        let c = config::parse(&format!(
            "[[vrrp]]\nname = \"gw\"\ninterface = \"eth0\"\nvrid = 1\n{text}"
        ))
        .expect("valid");
        c.vrrp.into_iter().next().expect("one")
    }

    fn iface(addrs: &[(&str, bool, bool)]) -> vip::Iface {
        vip::Iface {
            index: 2,
            up: true,
            addrs: addrs
                .iter()
                .map(|(a, secondary, hagw)| vip::IfAddr {
                    addr: a.parse().expect("ip"),
                    prefix_len: 24,
                    secondary: *secondary,
                    hagw: *hagw,
                })
                .collect(),
        }
    }

    #[test]
    fn the_source_is_the_primary_address_or_the_link_local_never_a_vip() {
        let c = cfg("virtual_addresses = [\"10.0.0.100/24\"]\n");
        let i = iface(&[
            ("10.0.0.100", false, true),
            ("10.0.0.7", true, false),
            ("10.0.0.2", false, false),
        ]);
        assert_eq!(pick_source(&c, &i), Ok("10.0.0.2".parse().expect("ip")));
        let e = pick_source(&c, &iface(&[("10.0.0.100", false, false)]));
        assert!(e.is_err_and(|e| e.contains("has no IPv4 address")));
        let owner = cfg("virtual_addresses = [\"10.0.0.1/24\"]\npriority = 255\n");
        let i = iface(&[("10.0.0.1", false, false)]);
        assert_eq!(pick_source(&owner, &i), Ok("10.0.0.1".parse().expect("ip")));
        let c6 = cfg("virtual_addresses = [\"fe80::1/64\"]\n");
        let i6 = iface(&[
            ("fe80::1", false, false),
            ("2001:db8::2", false, false),
            ("fe80::2", false, false),
        ]);
        assert_eq!(pick_source(&c6, &i6), Ok("fe80::2".parse().expect("ip")));
        // A configured source must be there (keepalived #1847: wait, say why).
        let cs = cfg("virtual_addresses = [\"10.0.0.100/24\"]\nsource = \"10.0.0.9\"\n");
        let e = pick_source(&cs, &i);
        assert!(e.is_err_and(|e| e.contains("source 10.0.0.9 is not on eth0 (yet)")));
    }

    #[tokio::test]
    async fn all_open_is_the_and_of_its_gates() {
        let (a_tx, a) = watch::channel(true);
        let (b_tx, b) = watch::channel(false);
        let mut g = all_open(vec![a, b]).expect("gate");
        assert!(!*g.borrow());
        b_tx.send_replace(true);
        g.changed().await.expect("changes");
        assert!(*g.borrow_and_update());
        a_tx.send_replace(false);
        g.changed().await.expect("changes");
        assert!(!*g.borrow());
        assert!(all_open(Vec::new()).is_none());
    }
}
