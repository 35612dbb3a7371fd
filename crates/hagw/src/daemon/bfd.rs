//! The BFD driver (RFC 5880 asynchronous mode, RFC 5881 single hop): one
//! thread owns every socket and every [`hagw_bfd::Session`].
//!
//! # Why a thread of its own
//! Detection at 10 ms x 3 is 30 ms: a millisecond lost is felt. The tokio
//! timer wheel rounds every deadline up to the next millisecond, and a
//! runtime busy with thousands of BGP sessions may poll the task late. This
//! thread waits in `ppoll(2)` with a nanosecond timeout, at real-time
//! priority (else with 1 µs timer slack), so packets go out and detection
//! fires on time whatever the BGP side is doing. Watchers get state changes
//! through tokio `watch` channels.
//!
//! # Sockets
//! * Receive: one IPv4 socket bound to `0.0.0.0:3784` and one IPv6
//!   (v6-only) socket bound to `[::]:3784`, with `IP_RECVTTL` /
//!   `IPV6_RECVHOPLIMIT`, read with `recvmsg`: a packet whose TTL / hop limit
//!   is not 255 (or unknown) is dropped and counted (RFC 5881 §5).
//! * Send: **one socket per local address**, bound to that address and a
//!   random source port in 49152-65535, with `IP_TTL` / `IPV6_UNICAST_HOPS`
//!   255. RFC 5881 §4 asks for a source port in that range that stays the
//!   same for the life of a session; a socket per local address keeps every
//!   session's port stable while holding one socket however many peers share
//!   the address (a socket per session would only multiply file descriptors
//!   and bound ports). Send sockets use `IP_FREEBIND`, so a session can be
//!   configured before its local address exists; sends fail (counted as
//!   `tx_errors`) until it does.
//!
//! # Timers
//! There is no timer per session: the thread sleeps until the earliest
//! [`hagw_bfd::Session::next_deadline`], reads what its sockets hold (a
//! packet that arrived just before a detection deadline still counts), runs
//! every session that is due, and goes back to waiting. At 10 ms intervals
//! this is a few wake-ups per interval however many sessions there are.
//!
//! # Sessions
//! Sessions exist only for peers someone [`Bfd::watch`]es (the BGP peers with
//! `bfd = true`): we are always the active side. A packet from a peer with no
//! session is dropped and counted (see [`Bfd::unattributed`]). Packets are
//! demultiplexed by Your Discriminator, or by source address when it is zero
//! (RFC 5881 §3); a packet whose discriminator belongs to another peer's
//! session is dropped as "no session". Jitter seeds and discriminators come
//! from `/dev/urandom` through a small xorshift generator.
//!
//! IPv6 link-local peers are not supported yet (the send path has no scope id).

use std::collections::HashMap;
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::num::NonZeroU32;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use hagw_bfd::packet::ControlPacket;
use hagw_bfd::{Diag, Output, Session, SessionConfig, CONTROL_PORT, SOURCE_PORTS, TTL};
use nix::poll::{ppoll, PollFd, PollFlags};
use nix::sys::socket::{
    recvmsg, setsockopt, sockopt, ControlMessageOwned, MsgFlags, SockaddrStorage,
};
use nix::sys::time::TimeSpec;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::{mpsc, oneshot, watch};

/// The session state every watcher sees (`Down`, `Init`, `Up`, `AdminDown`).
pub use hagw_bfd::State as BfdState;

/// How often sessions whose watchers are all gone are looked for.
const SWEEP: Duration = Duration::from_millis(250);
/// How long a failed send-socket bind waits before the next try.
const BIND_RETRY: Duration = Duration::from_secs(1);
/// At most this many datagrams per socket per wake-up, so timers keep running
/// under a flood.
const RECV_BATCH: usize = 64;
/// The shortest sleep between two rounds of timers.
const MIN_WAIT: Duration = Duration::from_micros(20);
/// SCHED_FIFO priority of the BFD thread (1-99; kernel threads use 50).
const RT_PRIORITY: u8 = 10;

/// Packet counters of one session (or of packets no session claims).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BfdCounters {
    /// Valid packets handed to the session.
    pub rx: u64,
    pub tx: u64,
    /// Sends that failed (no socket yet, address missing, buffer full).
    pub tx_errors: u64,
    /// TTL / hop limit not 255 (RFC 5881 §5).
    pub dropped_bad_ttl: u64,
    /// Failed an RFC 5880 §6.8.6 check (version, length, multiplier,
    /// discriminators, M bit).
    pub dropped_malformed: u64,
    /// Authentication present (unsupported) or malformed.
    pub dropped_auth: u64,
    /// No session for the packet: unknown peer, or a Your Discriminator that
    /// is not this peer's session.
    pub dropped_no_session: u64,
}

/// One session as [`Bfd::status`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BfdSessionStatus {
    pub peer: IpAddr,
    pub local: IpAddr,
    /// Our UDP source port (None until the send socket is bound).
    pub source_port: Option<u16>,
    pub state: BfdState,
    pub remote_state: BfdState,
    pub local_diag: Diag,
    pub remote_diag: Diag,
    pub local_disc: u32,
    pub remote_disc: u32,
    /// What we advertise (1 s while not Up: slow start).
    pub desired_min_tx: Duration,
    pub required_min_rx: Duration,
    /// What the peer advertises.
    pub remote_min_rx: Duration,
    pub remote_desired_min_tx: Duration,
    pub remote_multiplier: Option<u8>,
    /// Negotiated periodic transmit interval, before jitter.
    pub tx_interval: Option<Duration>,
    /// None until the peer has been heard.
    pub detection_time: Option<Duration>,
    pub poll_in_progress: bool,
    /// Time since the last state change.
    pub since_change: Duration,
    pub counters: BfdCounters,
    /// Why the last failed send failed.
    pub last_tx_error: Option<String>,
}

/// Handle on the BFD thread; clones share it. The thread ends (after sending
/// AdminDown on every session) when the last handle is dropped.
#[derive(Clone)]
pub struct Bfd {
    shared: Arc<Shared>,
    // Declared before `wake`: the last handle's sender is gone by the time
    // the last waker's drop wakes the thread to notice.
    cmd: mpsc::UnboundedSender<Cmd>,
    wake: Arc<Waker>,
}

/// Wakes the BFD thread out of `ppoll` (one byte on a datagram socket pair).
struct Waker(UnixDatagram);

impl Waker {
    fn wake(&self) {
        // A full buffer already holds a wake-up.
        let _ = self.0.send(&[1]);
    }
}

impl Drop for Waker {
    fn drop(&mut self) {
        self.wake();
    }
}

struct Watched {
    local: IpAddr,
    tx: watch::Sender<BfdState>,
    gen: u64,
    /// The peer's last packet said AdminDown (RFC 5882 §3.2).
    remote_admin_down: Arc<AtomicBool>,
}

#[derive(Default)]
struct Shared {
    /// Every watched peer; the thread's sessions follow this map. Held only
    /// briefly, never while logging: the real-time thread takes it too.
    watched: Mutex<HashMap<IpAddr, Watched>>,
    next_gen: AtomicU64,
    /// How the thread is scheduled ("SCHED_FIFO 10", or why not).
    scheduling: Mutex<String>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, HashMap<IpAddr, Watched>> {
        self.watched.lock().unwrap_or_else(|p| p.into_inner())
    }
}

enum Cmd {
    Add {
        peer: IpAddr,
        local: IpAddr,
        gen: u64,
        tx: watch::Sender<BfdState>,
        remote_admin_down: Arc<AtomicBool>,
    },
    Remove {
        peer: IpAddr,
        gen: u64,
    },
    Status(oneshot::Sender<(Vec<BfdSessionStatus>, BfdCounters)>),
    /// Removes every session; answered once the AdminDown repeats are sent.
    Shutdown(oneshot::Sender<()>),
}

impl Bfd {
    /// Binds the receive sockets and starts the BFD thread. `interval` is
    /// both the desired transmit and the required receive interval of every
    /// session once Up; `multiplier` is our Detect Mult; `realtime` asks for
    /// SCHED_FIFO (refused without CAP_SYS_NICE: logged, and the thread runs
    /// at normal priority). Fails if UDP port 3784 cannot be bound for IPv4
    /// (a missing IPv6 stack only logs a warning).
    pub fn start(interval: Duration, multiplier: u8, realtime: bool) -> io::Result<Bfd> {
        let rx4 = bind_rx(SocketAddr::new(
            IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            CONTROL_PORT,
        ))?;
        let rx6 = match bind_rx(SocketAddr::new(
            IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            CONTROL_PORT,
        )) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!("BFD: not receiving over IPv6: {e}");
                None
            }
        };
        let shared = Arc::new(Shared::default());
        let (cmd, cmds) = mpsc::unbounded_channel();
        let (wake_tx, wake_rx) = UnixDatagram::pair()?;
        wake_tx.set_nonblocking(true)?;
        wake_rx.set_nonblocking(true)?;
        let mut seed = seed();
        let driver = Driver {
            shared: shared.clone(),
            cmds,
            wake: wake_rx,
            rx4: Some(rx4),
            rx6,
            senders: HashMap::new(),
            sessions: HashMap::new(),
            by_disc: HashMap::new(),
            unattributed: BfdCounters::default(),
            cfg: SessionConfig::new(interval, multiplier.max(1)),
            rng: {
                seed |= 1;
                seed
            },
            out: Vec::new(),
            leaving: Vec::new(),
            drains: Vec::new(),
        };
        std::thread::Builder::new()
            .name("hagw-bfd".into())
            .spawn(move || {
                let sched = if realtime {
                    set_realtime()
                } else {
                    "normal ([bfd] realtime = false)".into()
                };
                *driver
                    .shared
                    .scheduling
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = sched;
                driver.run()
            })?;
        Ok(Bfd {
            shared,
            cmd,
            wake: Arc::new(Waker(wake_tx)),
        })
    }

    fn send(&self, c: Cmd) -> bool {
        let sent = self.cmd.send(c).is_ok();
        self.wake.wake();
        sent
    }

    /// Starts (or shares) a session to `peer` from `local`; the receiver
    /// sees every state change (starting at `Down`). Dropping all receivers
    /// for a peer (or calling [`Bfd::unwatch`]) removes the session, after
    /// sending AdminDown. A second `watch` for the same peer shares the
    /// existing session (and its local address).
    pub fn watch(&self, peer: IpAddr, local: IpAddr) -> watch::Receiver<BfdState> {
        let (peer, local) = (peer.to_canonical(), local.to_canonical());
        let mut m = self.shared.lock();
        if let Some(w) = m.get(&peer) {
            let (rx, from) = (w.tx.subscribe(), w.local);
            // Log after unlocking: the BFD thread takes this lock too.
            drop(m);
            if from != local {
                tracing::warn!("BFD: session to {peer} already runs from {from}, not {local}");
            }
            return rx;
        }
        let (tx, rx) = watch::channel(BfdState::Down);
        let gen = self.shared.next_gen.fetch_add(1, Ordering::Relaxed);
        let remote_admin_down = Arc::new(AtomicBool::new(false));
        m.insert(
            peer,
            Watched {
                local,
                tx: tx.clone(),
                gen,
                remote_admin_down: remote_admin_down.clone(),
            },
        );
        drop(m);
        self.send(Cmd::Add {
            peer,
            local,
            gen,
            tx,
            remote_admin_down,
        });
        rx
    }

    /// Whether `peer`'s last packet said AdminDown: its Down is then not a
    /// forwarding failure (RFC 5882 §3.2). Set before watchers see the change.
    pub fn peer_admin_down(&self, peer: IpAddr) -> bool {
        self.shared
            .lock()
            .get(&peer.to_canonical())
            .is_some_and(|w| w.remote_admin_down.load(Ordering::Acquire))
    }

    /// Gives up `rx`, a receiver of [`Bfd::watch`] for `peer`. If it was the
    /// last one, the session goes now (AdminDown, repeated; see `Leaving`)
    /// rather than at the next sweep; a session another watcher still holds
    /// (the same peer's new connection) stays.
    pub fn unwatch(&self, peer: IpAddr, rx: watch::Receiver<BfdState>) {
        let peer = peer.to_canonical();
        drop(rx);
        let removed = {
            let mut m = self.shared.lock();
            match m.get(&peer) {
                Some(w) if w.tx.receiver_count() == 0 => m.remove(&peer),
                _ => None,
            }
        };
        if let Some(w) = removed {
            self.send(Cmd::Remove { peer, gen: w.gen });
        }
    }

    /// Takes every remaining session down (AdminDown, repeated) and waits,
    /// at most `limit`, until the repeats are sent: the end of a daemon's
    /// shutdown, whatever its peer tasks managed to do before.
    pub async fn shutdown(&self, limit: Duration) {
        let (tx, rx) = oneshot::channel();
        if self.send(Cmd::Shutdown(tx)) {
            let _ = tokio::time::timeout(limit, rx).await;
        }
    }

    /// How the BFD thread is scheduled: "SCHED_FIFO 10", or why it is not.
    pub fn scheduling(&self) -> String {
        self.shared
            .scheduling
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Every session, by peer address.
    pub async fn status(&self) -> Vec<BfdSessionStatus> {
        self.query().await.0
    }

    /// Drops that no session could be charged with (packets from peers
    /// without a session, or that failed a check before their peer was known).
    pub async fn unattributed(&self) -> BfdCounters {
        self.query().await.1
    }

    async fn query(&self) -> (Vec<BfdSessionStatus>, BfdCounters) {
        let (tx, rx) = oneshot::channel();
        if !self.send(Cmd::Status(tx)) {
            return Default::default();
        }
        rx.await.unwrap_or_default()
    }
}

/// SCHED_FIFO at a low real-time priority: above every ordinary process, below
/// the kernel's own real-time threads. The thread does a few microseconds of
/// work per packet, so it keeps up with a flood of bad packets (half a million
/// a second, tested) and the good ones still count — at the price of the core
/// the flood costs. On a single CPU that could starve BGP itself, so there it
/// stays an ordinary thread.
///
/// Returns how the thread is scheduled, for `hagw status`.
fn set_realtime() -> String {
    if std::thread::available_parallelism().map_or(1, |n| n.get()) < 2 {
        tracing::info!("BFD: one CPU only; not running the BFD thread at real-time priority");
        return "normal (one CPU)".into();
    }
    use thread_priority::{
        set_thread_priority_and_policy, thread_native_id, RealtimeThreadSchedulePolicy,
        ThreadPriority, ThreadPriorityValue, ThreadSchedulePolicy,
    };
    let Ok(prio) = ThreadPriorityValue::try_from(RT_PRIORITY) else {
        return "normal".into();
    };
    match set_thread_priority_and_policy(
        thread_native_id(),
        ThreadPriority::Crossplatform(prio),
        ThreadSchedulePolicy::Realtime(RealtimeThreadSchedulePolicy::Fifo),
    ) {
        Ok(()) => {
            tracing::debug!("BFD: thread runs SCHED_FIFO priority {RT_PRIORITY}");
            format!("SCHED_FIFO {RT_PRIORITY}")
        }
        Err(e) => {
            tracing::warn!(
                "BFD: cannot run at real-time priority ({e:?}); a busy machine may delay \
                 BFD packets (set [bfd] realtime = false to silence this)"
            );
            format!("normal (real-time refused: {e:?})")
        }
    }
}

/// 64 bits from /dev/urandom (falling back to the clock and pid).
fn seed() -> u64 {
    use std::io::Read;
    let mut b = [0u8; 8];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .is_ok()
    {
        return u64::from_ne_bytes(b);
    }
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    t ^ (u64::from(std::process::id()) << 32)
}

fn bind_rx(addr: SocketAddr) -> io::Result<UdpSocket> {
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_address(true)?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
        setsockopt(&s, sockopt::Ipv6RecvHopLimit, &true).map_err(io::Error::from)?;
    } else {
        setsockopt(&s, sockopt::Ipv4RecvTtl, &true).map_err(io::Error::from)?;
    }
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    Ok(s.into())
}

/// A send socket on `local`, bound to a random port in 49152-65535.
/// Non-blocking: we never wait to send (a full buffer drops the packet,
/// counted), so no readiness is needed.
fn bind_tx(local: IpAddr, rng: &mut u64) -> io::Result<UdpSocket> {
    let s = Socket::new(
        Domain::for_address(SocketAddr::new(local, 0)),
        Type::DGRAM,
        Some(Protocol::UDP),
    )?;
    if local.is_ipv6() {
        s.set_only_v6(true)?;
        s.set_unicast_hops_v6(u32::from(TTL))?;
        s.set_freebind_v6(true)?;
    } else {
        s.set_ttl_v4(u32::from(TTL))?;
        s.set_freebind_v4(true)?;
    }
    s.set_nonblocking(true)?;
    let (lo, hi) = (*SOURCE_PORTS.start(), *SOURCE_PORTS.end());
    let span = u64::from(hi - lo) + 1;
    let start = lo + (xorshift(rng) % span) as u16;
    let mut last = io::Error::new(io::ErrorKind::AddrInUse, "no free BFD source port");
    // Random start, then linear probing through the whole range.
    for i in 0..span {
        let port = lo + ((u64::from(start - lo) + i) % span) as u16;
        match s.bind(&SocketAddr::new(local, port).into()) {
            Ok(()) => return Ok(s.into()),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => last = e,
            Err(e) => return Err(e),
        }
    }
    Err(last)
}

fn xorshift(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

/// One datagram: length, source, TTL / hop limit if the kernel said.
fn recv_one(
    sock: &UdpSocket,
    buf: &mut [u8],
) -> io::Result<(usize, Option<SocketAddr>, Option<u8>)> {
    let mut cmsg = nix::cmsg_space!(libc::c_int);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = recvmsg::<SockaddrStorage>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg[..]),
        MsgFlags::MSG_DONTWAIT,
    )
    .map_err(io::Error::from)?;
    let mut ttl = None;
    if let Ok(cmsgs) = msg.cmsgs() {
        for c in cmsgs {
            match c {
                ControlMessageOwned::Ipv4Ttl(t) | ControlMessageOwned::Ipv6HopLimit(t) => {
                    ttl = u8::try_from(t).ok();
                }
                _ => {}
            }
        }
    }
    let src = msg.address.as_ref().and_then(|a| {
        if let Some(v4) = a.as_sockaddr_in() {
            Some(SocketAddr::V4((*v4).into()))
        } else {
            a.as_sockaddr_in6().map(|v6| SocketAddr::V6((*v6).into()))
        }
    });
    Ok((msg.bytes, src, ttl))
}

/// A removed session's AdminDown, repeated for the peer's detection time.
/// One lost AdminDown would otherwise look like a failure: the peer's BFD
/// expires, and its BGP drops ours (Cease, BFD Down) — exactly what a
/// graceful restart must avoid. FRR's bfdd learnt the same (frr#22643).
struct Leaving {
    peer: IpAddr,
    sock: UdpSocket,
    packet: Vec<u8>,
    interval: Duration,
    next: Instant,
    left: u32,
}

/// The AdminDown repeats cover at most this long.
const LEAVING_MAX: Duration = Duration::from_secs(1);

struct SendSock {
    sock: Option<std::net::UdpSocket>,
    retry_at: Instant,
    users: usize,
}

struct Sess {
    fsm: Session,
    local: IpAddr,
    gen: u64,
    tx: watch::Sender<BfdState>,
    remote_admin_down: Arc<AtomicBool>,
    counters: BfdCounters,
    changed: Instant,
    last_tx_error: Option<String>,
}

struct Driver {
    shared: Arc<Shared>,
    cmds: mpsc::UnboundedReceiver<Cmd>,
    wake: UnixDatagram,
    rx4: Option<UdpSocket>,
    rx6: Option<UdpSocket>,
    /// By local address.
    senders: HashMap<IpAddr, SendSock>,
    /// By peer address.
    sessions: HashMap<IpAddr, Sess>,
    /// Local discriminator -> peer.
    by_disc: HashMap<u32, IpAddr>,
    unattributed: BfdCounters,
    cfg: SessionConfig,
    rng: u64,
    out: Vec<Output>,
    leaving: Vec<Leaving>,
    drains: Vec<oneshot::Sender<()>>,
}

enum DropKind {
    BadTtl,
    Malformed,
    Auth,
    NoSession,
}

impl Driver {
    fn run(mut self) {
        // For an ordinary thread (real-time ones get no slack): the default
        // 50 µs would be a 0.5 % error at 10 ms; 1 µs costs nothing at a few
        // wake-ups per interval.
        if let Err(e) = nix::sys::prctl::set_timerslack(1_000) {
            tracing::debug!("BFD: cannot lower the timer slack: {e}");
        }
        let mut buf = vec![0u8; 2048];
        let mut next_sweep = Instant::now() + SWEEP;
        loop {
            let wake_at = self
                .sessions
                .values()
                .filter_map(|s| s.fsm.next_deadline())
                .chain(self.leaving.iter().map(|l| l.next))
                .min()
                .map_or(next_sweep, |d| d.min(next_sweep));
            // Never a zero timeout: should a deadline fail to move on, a
            // real-time thread must not spin (packets still wake it at once).
            let timeout = TimeSpec::from_duration(
                wake_at
                    .saturating_duration_since(Instant::now())
                    .max(MIN_WAIT),
            );
            if let Err(e) = self.wait(timeout) {
                tracing::warn!("BFD: ppoll failed: {e}");
                std::thread::sleep(Duration::from_millis(10));
            }
            // Commands first, then every socket, then timers.
            let mut byte = [0u8; 64];
            while self.wake.recv(&mut byte).is_ok() {}
            loop {
                match self.cmds.try_recv() {
                    Ok(c) => self.command(c),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        // Every handle is gone: say goodbye, repeats included
                        // (port 3784 is let go first).
                        self.rx4 = None;
                        self.rx6 = None;
                        let peers: Vec<IpAddr> = self.sessions.keys().copied().collect();
                        for p in peers {
                            self.remove(p);
                        }
                        while let Some(next) = self.leaving.iter().map(|l| l.next).min() {
                            std::thread::sleep(next.saturating_duration_since(Instant::now()));
                            self.run_leaving(Instant::now());
                        }
                        return;
                    }
                }
            }
            self.drain(false, &mut buf);
            self.drain(true, &mut buf);
            let now = Instant::now();
            if now >= next_sweep {
                self.sweep();
                next_sweep = now + SWEEP;
            }
            self.run_timers(now);
            self.run_leaving(now);
        }
    }

    /// Sends the AdminDown repeats that are due.
    fn run_leaving(&mut self, now: Instant) {
        for l in self.leaving.iter_mut().filter(|l| l.next <= now) {
            if let Err(e) = l
                .sock
                .send_to(&l.packet, SocketAddr::new(l.peer, CONTROL_PORT))
            {
                tracing::debug!("BFD: AdminDown repeat to {} failed: {e}", l.peer);
            }
            l.left = l.left.saturating_sub(1);
            l.next = now + l.interval;
        }
        self.leaving.retain(|l| l.left > 0);
        if self.leaving.is_empty() {
            for d in self.drains.drain(..) {
                let _ = d.send(());
            }
        }
    }

    /// Sleeps until a socket is readable, a command arrives, or `timeout`.
    fn wait(&self, timeout: TimeSpec) -> nix::Result<()> {
        let mut fds = Vec::with_capacity(3);
        fds.push(PollFd::new(self.wake.as_fd(), PollFlags::POLLIN));
        for s in [&self.rx4, &self.rx6].into_iter().flatten() {
            fds.push(PollFd::new(s.as_fd(), PollFlags::POLLIN));
        }
        match ppoll(&mut fds, Some(timeout), None) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn command(&mut self, c: Cmd) {
        match c {
            Cmd::Add {
                peer,
                local,
                gen,
                tx,
                remote_admin_down,
            } => {
                // Skip an Add whose watchers already left (the sweep won).
                let live = self.shared.lock().get(&peer).is_some_and(|w| w.gen == gen);
                if live {
                    self.add(peer, local, gen, tx, remote_admin_down);
                }
            }
            Cmd::Remove { peer, gen } => {
                if self.sessions.get(&peer).is_some_and(|s| s.gen == gen) {
                    self.remove(peer);
                }
            }
            Cmd::Shutdown(reply) => {
                self.shared.lock().clear();
                let peers: Vec<IpAddr> = self.sessions.keys().copied().collect();
                for p in peers {
                    self.remove(p);
                }
                if self.leaving.is_empty() {
                    let _ = reply.send(());
                } else {
                    self.drains.push(reply);
                }
            }
            Cmd::Status(reply) => {
                let now = Instant::now();
                let mut v: Vec<BfdSessionStatus> = self
                    .sessions
                    .iter()
                    .map(|(&peer, s)| {
                        let f = &s.fsm;
                        BfdSessionStatus {
                            peer,
                            local: s.local,
                            source_port: self
                                .senders
                                .get(&s.local)
                                .and_then(|t| t.sock.as_ref())
                                .and_then(|t| t.local_addr().ok())
                                .map(|a| a.port()),
                            state: f.state(),
                            remote_state: f.remote_state(),
                            local_diag: f.local_diag(),
                            remote_diag: f.remote_diag(),
                            local_disc: f.local_disc(),
                            remote_disc: f.remote_disc(),
                            desired_min_tx: f.desired_min_tx(),
                            required_min_rx: f.required_min_rx(),
                            remote_min_rx: f.remote_min_rx(),
                            remote_desired_min_tx: f.remote_desired_min_tx(),
                            remote_multiplier: (f.remote_detect_mult() != 0)
                                .then(|| f.remote_detect_mult()),
                            tx_interval: f.tx_interval(),
                            detection_time: f.detection_time(),
                            poll_in_progress: f.poll_in_progress(),
                            since_change: now.saturating_duration_since(s.changed),
                            counters: s.counters,
                            last_tx_error: s.last_tx_error.clone(),
                        }
                    })
                    .collect();
                v.sort_by_key(|s| s.peer);
                let _ = reply.send((v, self.unattributed));
            }
        }
    }

    fn add(
        &mut self,
        peer: IpAddr,
        local: IpAddr,
        gen: u64,
        tx: watch::Sender<BfdState>,
        remote_admin_down: Arc<AtomicBool>,
    ) {
        let now = Instant::now();
        if self.sessions.contains_key(&peer) {
            self.remove(peer);
        }
        // A new session must not be followed by its predecessor's AdminDowns.
        self.leaving.retain(|l| l.peer != peer);
        self.run_leaving(now);
        let disc = loop {
            let d = xorshift(&mut self.rng) as u32;
            if let Some(d) = NonZeroU32::new(d) {
                if !self.by_disc.contains_key(&d.get()) {
                    break d;
                }
            }
        };
        let seed = xorshift(&mut self.rng);
        let rng = &mut self.rng;
        let sender = self.senders.entry(local).or_insert_with(|| SendSock {
            sock: None,
            retry_at: now,
            users: 0,
        });
        sender.users += 1;
        if sender.sock.is_none() {
            match bind_tx(local, rng) {
                Ok(s) => sender.sock = Some(s),
                Err(e) => {
                    tracing::warn!("BFD: cannot bind a send socket on {local}: {e}");
                    sender.retry_at = now + BIND_RETRY;
                }
            }
        }
        tracing::info!("BFD: session to {peer} from {local} (discriminator {disc:#x})");
        self.by_disc.insert(disc.get(), peer);
        self.sessions.insert(
            peer,
            Sess {
                fsm: Session::new(disc, self.cfg, seed, now),
                local,
                gen,
                tx,
                remote_admin_down,
                counters: BfdCounters::default(),
                changed: now,
                last_tx_error: None,
            },
        );
    }

    /// AdminDown on the wire and to the watchers, then forget the session.
    fn remove(&mut self, peer: IpAddr) {
        let Some(s) = self.sessions.get_mut(&peer) else {
            return;
        };
        let now = Instant::now();
        // The peer relies on our packets only while Up; its detection time
        // is our Detect Mult times the interval we were sending at.
        let repeat = (s.fsm.state() == BfdState::Up)
            .then(|| s.fsm.tx_interval())
            .flatten();
        s.fsm.set_admin_down(now, &mut self.out);
        let packet = self.out.iter().find_map(|o| match o {
            Output::Send(p) => Some(p.encode().to_vec()),
            Output::StateChange { .. } => None,
        });
        let sock = self
            .senders
            .get(&s.local)
            .and_then(|t| t.sock.as_ref())
            .and_then(|t| t.try_clone().ok());
        if let (Some(interval), Some(packet), Some(sock)) = (repeat, packet, sock) {
            // The peer times out Detect Mult intervals after our last periodic
            // packet, which may be most of an interval ago: repeat twice per
            // interval, the first after a quarter, so that every repeat but
            // the last lands inside that window.
            let step = interval / 2;
            let covers = interval.saturating_mul(u32::from(self.cfg.detect_mult));
            let left = (covers.min(LEAVING_MAX).as_nanos() / step.as_nanos().max(1)) as u32;
            if left > 0 {
                self.leaving.retain(|l| l.peer != peer);
                self.leaving.push(Leaving {
                    peer,
                    sock,
                    packet,
                    interval: step,
                    next: now + interval / 4,
                    left,
                });
            }
        }
        self.flush(peer);
        let Some(s) = self.sessions.remove(&peer) else {
            return;
        };
        tracing::info!("BFD: session to {peer} removed");
        self.by_disc.remove(&s.fsm.local_disc());
        if let Some(t) = self.senders.get_mut(&s.local) {
            t.users = t.users.saturating_sub(1);
            if t.users == 0 {
                self.senders.remove(&s.local);
            }
        }
    }

    /// Sessions whose watchers are all gone.
    fn sweep(&mut self) {
        let gone: Vec<(IpAddr, u64)> = {
            // Busy: try again at the next sweep rather than wait on a
            // watcher's thread.
            let mut m = match self.shared.watched.try_lock() {
                Ok(m) => m,
                Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
                Err(std::sync::TryLockError::WouldBlock) => return,
            };
            let gone: Vec<(IpAddr, u64)> = m
                .iter()
                .filter(|(_, w)| w.tx.receiver_count() == 0)
                .map(|(&p, w)| (p, w.gen))
                .collect();
            for (p, _) in &gone {
                m.remove(p);
            }
            gone
        };
        for (peer, gen) in gone {
            if self.sessions.get(&peer).is_some_and(|s| s.gen == gen) {
                self.remove(peer);
            }
        }
    }

    fn run_timers(&mut self, now: Instant) {
        let due: Vec<IpAddr> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.fsm.next_deadline().is_some_and(|d| d <= now))
            .map(|(&p, _)| p)
            .collect();
        for peer in due {
            if let Some(s) = self.sessions.get_mut(&peer) {
                s.fsm.on_timer(now, &mut self.out);
                self.flush(peer);
            }
        }
    }

    fn drain(&mut self, v6: bool, buf: &mut [u8]) {
        for _ in 0..RECV_BATCH {
            let sock = if v6 { &self.rx6 } else { &self.rx4 };
            let Some(sock) = sock else { return };
            match recv_one(sock, buf) {
                Ok((n, Some(src), ttl)) => {
                    let data = buf.get(..n).unwrap_or_default();
                    self.datagram(data, src.ip().to_canonical(), ttl);
                }
                Ok((_, None, _)) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::warn!("BFD: receive error: {e}");
                    return;
                }
            }
        }
    }

    fn count(&mut self, peer: IpAddr, what: DropKind) {
        let c = match self.sessions.get_mut(&peer) {
            Some(s) => &mut s.counters,
            None => &mut self.unattributed,
        };
        match what {
            DropKind::BadTtl => c.dropped_bad_ttl += 1,
            DropKind::Malformed => c.dropped_malformed += 1,
            DropKind::Auth => c.dropped_auth += 1,
            DropKind::NoSession => c.dropped_no_session += 1,
        }
    }

    fn datagram(&mut self, data: &[u8], src: IpAddr, ttl: Option<u8>) {
        if ttl != Some(TTL) {
            tracing::debug!("BFD: dropped a packet from {src} with TTL {ttl:?}");
            self.count(src, DropKind::BadTtl);
            return;
        }
        let pkt = match ControlPacket::decode(data) {
            Ok(p) => p,
            Err(e) => {
                tracing::debug!("BFD: dropped a packet from {src}: {e}");
                self.count(
                    src,
                    if e.is_auth() {
                        DropKind::Auth
                    } else {
                        DropKind::Malformed
                    },
                );
                return;
            }
        };
        let target = if pkt.your_disc != 0 {
            self.by_disc.get(&pkt.your_disc).copied()
        } else {
            self.sessions.contains_key(&src).then_some(src)
        };
        if target != Some(src) {
            self.count(src, DropKind::NoSession);
            return;
        }
        let now = Instant::now();
        let Some(s) = self.sessions.get_mut(&src) else {
            return;
        };
        s.counters.rx += 1;
        if let Err(e) = s.fsm.handle_packet(&pkt, now, &mut self.out) {
            tracing::trace!("BFD: packet from {src} ignored: {e}");
        }
        self.flush(src);
    }

    /// Acts on the outputs `peer`'s session just produced.
    fn flush(&mut self, peer: IpAddr) {
        if self.out.is_empty() {
            return;
        }
        let Some(s) = self.sessions.get_mut(&peer) else {
            self.out.clear();
            return;
        };
        let now = Instant::now();
        for o in self.out.drain(..) {
            match o {
                Output::Send(p) => {
                    let sent = match self.senders.get_mut(&s.local) {
                        Some(t) => {
                            if t.sock.is_none() && now >= t.retry_at {
                                match bind_tx(s.local, &mut self.rng) {
                                    Ok(sock) => t.sock = Some(sock),
                                    Err(_) => t.retry_at = now + BIND_RETRY,
                                }
                            }
                            match &t.sock {
                                Some(sock) => sock
                                    .send_to(&p.encode(), SocketAddr::new(peer, CONTROL_PORT))
                                    .map(|_| ()),
                                None => Err(io::Error::new(
                                    io::ErrorKind::NotConnected,
                                    "no send socket bound",
                                )),
                            }
                        }
                        None => Err(io::Error::other("no send socket")),
                    };
                    match sent {
                        Ok(()) => s.counters.tx += 1,
                        Err(e) => {
                            if s.counters.tx_errors == 0 {
                                tracing::warn!("BFD: cannot send to {peer}: {e}");
                            }
                            s.counters.tx_errors += 1;
                            s.last_tx_error = Some(e.to_string());
                        }
                    }
                }
                Output::StateChange { from, to, diag } => {
                    s.changed = now;
                    if to == BfdState::Up || from == BfdState::Up {
                        tracing::info!("BFD: {peer} {from} -> {to} ({diag})");
                    } else {
                        tracing::debug!("BFD: {peer} {from} -> {to} ({diag})");
                    }
                    s.remote_admin_down.store(
                        s.fsm.remote_state() == BfdState::AdminDown,
                        Ordering::Release,
                    );
                    s.tx.send_replace(to);
                }
            }
        }
    }
}
