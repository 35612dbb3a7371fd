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
//! # Sessions
//! Everything protocol-shaped is [`hagw_bfd::Demux`], sans-IO: the sessions
//! by peer, the TTL check, demultiplexing (by Your Discriminator, or by
//! source address when it is zero, RFC 5881 §3), drop counters, local
//! discriminators, timers across sessions and the AdminDown repeats of a
//! removed session. This driver feeds it datagrams and the time, and carries
//! out what it asks: packets to send, state changes to the watchers.
//! Sessions exist only for peers someone [`Bfd::watch`]es (the BGP peers with
//! `bfd = true`): we are always the active side. A packet from a peer with no
//! session is dropped and counted (see [`Bfd::unattributed`]). The demux's
//! seed (discriminators, jitter) and source ports come from `/dev/urandom`.
//!
//! # Timers
//! There is no timer per session: the thread sleeps until the demux's
//! [`hagw_bfd::Demux::next_deadline`], reads what its sockets hold (a
//! packet that arrived just before a detection deadline still counts), runs
//! what is due, and goes back to waiting. At 10 ms intervals this is a few
//! wake-ups per interval however many sessions there are.
//!
//! IPv6 link-local peers are not supported yet (the send path has no scope id).

use std::collections::HashMap;
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use hagw_bfd::demux::{self, Demux, RxError};
use hagw_bfd::{ControlPacket, Diag, SessionConfig, CONTROL_PORT, SOURCE_PORTS, TTL};
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
        let driver = Driver {
            shared: shared.clone(),
            cmds,
            wake: wake_rx,
            rx4: Some(rx4),
            rx6,
            senders: HashMap::new(),
            demux: Demux::new(SessionConfig::new(interval, multiplier.max(1)), seed()),
            links: HashMap::new(),
            repeat_socks: HashMap::new(),
            rng: seed() | 1,
            out: Vec::new(),
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
    /// last one, the session goes now (AdminDown, repeated; see
    /// [`hagw_bfd::Demux::remove`]) rather than at the next sweep; a session
    /// another watcher still holds (the same peer's new connection) stays.
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

/// A send socket on one local address, shared by every session from it.
struct SendSock {
    sock: Option<std::net::UdpSocket>,
    retry_at: Instant,
    users: usize,
}

/// What the driver keeps of a session beside the demux: its watchers, and
/// what its sends did (the demux counts what it receives).
struct Link {
    gen: u64,
    tx: watch::Sender<BfdState>,
    remote_admin_down: Arc<AtomicBool>,
    sent: u64,
    tx_errors: u64,
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
    /// Every session: state machines, demultiplexing, receive counters and
    /// the AdminDown repeats of removed sessions.
    demux: Demux,
    /// By peer: the same peers as the demux's sessions.
    links: HashMap<IpAddr, Link>,
    /// By peer: what a removed session's AdminDown repeats go out on, a
    /// clone of its send socket (which closes with its last session).
    repeat_socks: HashMap<IpAddr, UdpSocket>,
    /// Source ports.
    rng: u64,
    out: Vec<demux::Output>,
    drains: Vec<oneshot::Sender<()>>,
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
                .demux
                .next_deadline()
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
                        for p in self.peers() {
                            self.remove(p);
                        }
                        // No sessions left: only repeats have deadlines.
                        while let Some(next) = self.demux.next_deadline() {
                            std::thread::sleep(next.saturating_duration_since(Instant::now()));
                            self.on_timer(Instant::now());
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
            self.on_timer(now);
        }
    }

    fn peers(&self) -> Vec<IpAddr> {
        self.demux.sessions().map(|(p, _)| p).collect()
    }

    /// Runs the sessions and the AdminDown repeats that are due.
    fn on_timer(&mut self, now: Instant) {
        self.demux.on_timer(now, &mut self.out);
        self.flush();
        self.answer_drains();
    }

    /// Answers the shutdowns waiting for the AdminDown repeats, once there
    /// are none left.
    fn answer_drains(&mut self) {
        if !self.demux.any_leaving() {
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
                if self.links.get(&peer).is_some_and(|l| l.gen == gen) {
                    self.remove(peer);
                }
            }
            Cmd::Shutdown(reply) => {
                self.shared.lock().clear();
                for p in self.peers() {
                    self.remove(p);
                }
                if self.demux.any_leaving() {
                    self.drains.push(reply);
                } else {
                    let _ = reply.send(());
                }
            }
            Cmd::Status(reply) => {
                let now = Instant::now();
                let mut v: Vec<BfdSessionStatus> = self
                    .demux
                    .sessions()
                    .map(|(peer, s)| {
                        let f = s.session();
                        let link = self.links.get(&peer);
                        let c = s.counters();
                        BfdSessionStatus {
                            peer,
                            local: s.local(),
                            source_port: self
                                .senders
                                .get(&s.local())
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
                            since_change: now.saturating_duration_since(s.changed()),
                            counters: BfdCounters {
                                tx: link.map_or(0, |l| l.sent),
                                tx_errors: link.map_or(0, |l| l.tx_errors),
                                ..counters(c)
                            },
                            last_tx_error: link.and_then(|l| l.last_tx_error.clone()),
                        }
                    })
                    .collect();
                v.sort_by_key(|s| s.peer);
                let _ = reply.send((v, counters(self.demux.unattributed())));
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
        // The old session's AdminDown goes to its own watchers.
        if self.demux.contains(peer) {
            self.remove(peer);
        }
        let now = Instant::now();
        // This also stops the predecessor's AdminDown repeats: they would
        // take the new session down.
        let disc = self.demux.add(peer, local, now, &mut self.out);
        self.repeat_socks.remove(&peer);
        self.answer_drains();
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
        self.links.insert(
            peer,
            Link {
                gen,
                tx,
                remote_admin_down,
                sent: 0,
                tx_errors: 0,
                last_tx_error: None,
            },
        );
        self.flush();
    }

    /// AdminDown on the wire (repeated if it was Up, see
    /// [`Demux::remove`]) and to the watchers, then forget the session.
    fn remove(&mut self, peer: IpAddr) {
        let Some(local) = self.demux.get(peer).map(|s| s.local()) else {
            return;
        };
        self.demux.remove(peer, Instant::now(), &mut self.out);
        if self.demux.is_leaving(peer) {
            // The socket as it is now: a bind the AdminDown below may retry
            // comes too late for the repeats.
            let sock = self
                .senders
                .get(&local)
                .and_then(|t| t.sock.as_ref())
                .and_then(|t| t.try_clone().ok());
            match sock {
                Some(s) => {
                    self.repeat_socks.insert(peer, s);
                }
                // Nothing to repeat on: no repeats, nor a shutdown waiting
                // for them.
                None => self.demux.cancel_leaving(peer),
            }
        }
        self.flush();
        self.links.remove(&peer);
        tracing::info!("BFD: session to {peer} removed");
        if let Some(t) = self.senders.get_mut(&local) {
            t.users = t.users.saturating_sub(1);
            if t.users == 0 {
                self.senders.remove(&local);
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
            if self.links.get(&peer).is_some_and(|l| l.gen == gen) {
                self.remove(peer);
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

    /// One received datagram, to the demux (which counts drops).
    fn datagram(&mut self, data: &[u8], src: IpAddr, ttl: Option<u8>) {
        match self
            .demux
            .receive(data, src, ttl, Instant::now(), &mut self.out)
        {
            Ok(()) | Err(RxError::NoSession) => {}
            Err(RxError::BadTtl(ttl)) => {
                tracing::debug!("BFD: dropped a packet from {src} with TTL {ttl:?}");
            }
            Err(RxError::Decode(e)) => tracing::debug!("BFD: dropped a packet from {src}: {e}"),
            Err(RxError::Session(e)) => tracing::trace!("BFD: packet from {src} ignored: {e}"),
        }
        self.flush();
    }

    /// Acts on what the demux asked for.
    fn flush(&mut self) {
        if self.out.is_empty() {
            return;
        }
        let now = Instant::now();
        let mut out = std::mem::take(&mut self.out);
        for o in out.drain(..) {
            match o {
                demux::Output::Send {
                    peer,
                    local,
                    packet,
                } => self.send(peer, local, &packet, now),
                demux::Output::Repeat {
                    peer, packet, last, ..
                } => {
                    if let Some(sock) = self.repeat_socks.get(&peer) {
                        if let Err(e) =
                            sock.send_to(&packet.encode(), SocketAddr::new(peer, CONTROL_PORT))
                        {
                            tracing::debug!("BFD: AdminDown repeat to {peer} failed: {e}");
                        }
                    }
                    if last {
                        self.repeat_socks.remove(&peer);
                    }
                }
                demux::Output::StateChange {
                    peer,
                    from,
                    to,
                    diag,
                    remote,
                } => {
                    let Some(l) = self.links.get(&peer) else {
                        continue;
                    };
                    if to == BfdState::Up || from == BfdState::Up {
                        tracing::info!("BFD: {peer} {from} -> {to} ({diag})");
                    } else {
                        tracing::debug!("BFD: {peer} {from} -> {to} ({diag})");
                    }
                    l.remote_admin_down
                        .store(remote == BfdState::AdminDown, Ordering::Release);
                    l.tx.send_replace(to);
                }
            }
        }
        self.out = out;
    }

    /// Sends `peer`'s packet on `local`'s socket (binding it if a retry is
    /// due), counted on the session.
    fn send(&mut self, peer: IpAddr, local: IpAddr, packet: &ControlPacket, now: Instant) {
        let Some(l) = self.links.get_mut(&peer) else {
            return;
        };
        let sent = match self.senders.get_mut(&local) {
            Some(t) => {
                if t.sock.is_none() && now >= t.retry_at {
                    match bind_tx(local, &mut self.rng) {
                        Ok(sock) => t.sock = Some(sock),
                        Err(_) => t.retry_at = now + BIND_RETRY,
                    }
                }
                match &t.sock {
                    Some(sock) => sock
                        .send_to(&packet.encode(), SocketAddr::new(peer, CONTROL_PORT))
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
            Ok(()) => l.sent += 1,
            Err(e) => {
                if l.tx_errors == 0 {
                    tracing::warn!("BFD: cannot send to {peer}: {e}");
                }
                l.tx_errors += 1;
                l.last_tx_error = Some(e.to_string());
            }
        }
    }
}

/// The demux's receive counters as [`BfdCounters`] (no sends).
fn counters(c: demux::Counters) -> BfdCounters {
    BfdCounters {
        rx: c.rx,
        tx: 0,
        tx_errors: 0,
        dropped_bad_ttl: c.dropped_bad_ttl,
        dropped_malformed: c.dropped_malformed,
        dropped_auth: c.dropped_auth,
        dropped_no_session: c.dropped_no_session,
    }
}
