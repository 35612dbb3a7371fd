//! The thin async driver around [`hagw_bgp::fsm::Session`]: one task per peer,
//! holding at most two connections (the second only during an RFC 4271 §6.8
//! collision). Per-peer memory is kept small because a router has thousands of
//! these: no read buffer of its own (reads go through a per-thread scratch
//! buffer; only a partial message's tail is kept), one reusable timer, and the
//! announcement is the range's shared encoded `Bytes`.

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use hagw_bgp::fsm::{self, Action, DownReason, Event, Negotiated, Session, SessionConfig, State};
use hagw_bgp::packet::{Update, AFI_IPV6, SAFI_UNICAST};
use ipnet::IpNet;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{mpsc, watch, Notify};

use super::advert::{encode_delta, Advert, SessionNote, Shape};
use super::bfd::{Bfd, BfdState};
use super::import::{Count, ImportPolicy};
use super::routing::RibEvent;

/// How a peer came to be.
#[derive(Debug, Clone)]
pub enum PeerKind {
    /// Accepted from a listen range (index into `bgp.dynamic`).
    Dynamic { range: usize },
    /// Configured: we connect (unless passive) and accept its connections.
    Neighbor {
        index: usize,
        remote: SocketAddr,
        local: Option<IpAddr>,
        passive: bool,
    },
}

/// What `hagw status` sees of a peer, and how the daemon pokes it.
#[derive(Debug)]
pub struct PeerShared {
    /// Unique per peer object: a dynamic peer that reconnects is a new one, so
    /// a late event of the old session can be told from the new session's.
    pub id: u64,
    pub address: IpAddr,
    pub kind: PeerKind,
    state: AtomicU8,
    remote_asn: AtomicU32,
    /// Unix seconds when the session became Established (0 = not).
    since: AtomicU64,
    pub received: AtomicUsize,
    sent: AtomicUsize,
    last_error: Mutex<Option<String>>,
    graceful_restart: AtomicBool,
    /// Set with `wake`: leave now (collision loser or daemon shutdown).
    stop: AtomicBool,
    stop_cease: AtomicBool,
    wake: Notify,
}

impl PeerShared {
    pub fn new(address: IpAddr, kind: PeerKind) -> PeerShared {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        PeerShared {
            id: NEXT.fetch_add(1, Ordering::Relaxed),
            address,
            kind,
            state: AtomicU8::new(0),
            remote_asn: AtomicU32::new(0),
            since: AtomicU64::new(0),
            received: AtomicUsize::new(0),
            sent: AtomicUsize::new(0),
            last_error: Mutex::new(None),
            graceful_restart: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            stop_cease: AtomicBool::new(false),
            wake: Notify::new(),
        }
    }

    pub fn state(&self) -> State {
        match self.state.load(Ordering::Relaxed) {
            1 => State::Connect,
            2 => State::Active,
            3 => State::OpenSent,
            4 => State::OpenConfirm,
            5 => State::Established,
            _ => State::Idle,
        }
    }

    fn set_state(&self, s: State) {
        let v = match s {
            State::Idle => 0,
            State::Connect => 1,
            State::Active => 2,
            State::OpenSent => 3,
            State::OpenConfirm => 4,
            State::Established => 5,
        };
        self.state.store(v, Ordering::Relaxed);
    }

    pub fn remote_asn(&self) -> u32 {
        self.remote_asn.load(Ordering::Relaxed)
    }

    pub fn established_since(&self) -> Option<u64> {
        match self.since.load(Ordering::Relaxed) {
            0 => None,
            t => Some(t),
        }
    }

    /// The Established session negotiated graceful restart (RFC 4724).
    pub fn graceful_restart(&self) -> bool {
        self.graceful_restart.load(Ordering::Relaxed)
    }

    pub fn sent(&self) -> usize {
        self.sent.load(Ordering::Relaxed)
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn set_error(&self, e: String) {
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
    }

    /// Ask the peer task to end its session(s): with a Cease NOTIFICATION, or by
    /// just closing (graceful restart, collision replacement).
    pub fn stop(&self, cease: bool) {
        self.stop_cease.store(cease, Ordering::Relaxed);
        self.stop.store(true, Ordering::Release);
        self.wake.notify_one();
    }
}

struct Conn {
    session: Session,
    stream: TcpStream,
    /// Bytes of a message not yet complete.
    tail: Vec<u8>,
    local: SocketAddr,
    locally_initiated: bool,
}

type Connecting = Pin<Box<dyn Future<Output = io::Result<TcpStream>> + Send>>;

/// Everything a peer task needs.
pub struct PeerTask {
    pub shared: Arc<PeerShared>,
    pub cfg: Arc<SessionConfig>,
    pub advert: Arc<Advert>,
    pub rib: mpsc::UnboundedSender<RibEvent>,
    /// Connections to this neighbor accepted by the listener.
    pub incoming: Option<mpsc::Receiver<TcpStream>>,
    /// Set when this peer has `bfd = true`.
    pub bfd: Option<Bfd>,
    /// What may be accepted from this peer (a listen range's policy).
    pub import: Option<Arc<ImportPolicy>>,
}

thread_local! {
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(vec![0; 64 * 1024]);
}

impl PeerTask {
    /// Runs an accepted connection from a listen range to its end.
    pub async fn run_accepted(self, stream: TcpStream) {
        let mut me = Driver::new(self);
        let now = Instant::now();
        let mut s = Session::new(me.task.cfg.clone());
        let mut out = Vec::new();
        s.handle(Event::ManualStartWithPassiveTcpEstablishment, now, &mut out);
        if let Some(c) = me.conn(s, stream, false) {
            me.conns[0] = Some(c);
            me.event(0, Event::TcpConnectionConfirmed).await;
            me.run().await;
        }
    }

    /// Runs a configured neighbor forever (until the daemon stops it).
    pub async fn run_neighbor(self) {
        let passive = matches!(self.shared.kind, PeerKind::Neighbor { passive: true, .. });
        let mut me = Driver::new(self);
        me.active = Some(Session::new(me.task.cfg.clone()));
        let now = Instant::now();
        let mut out = Vec::new();
        if let Some(s) = me.active.as_mut() {
            if passive {
                s.handle(Event::ManualStartWithPassiveTcpEstablishment, now, &mut out);
            } else {
                s.handle(Event::ManualStart, now, &mut out);
            }
        }
        me.apply_idle(out);
        me.run().await;
    }
}

struct Driver {
    task: PeerTask,
    conns: [Option<Conn>; 2],
    /// A configured neighbor's session while it has no connection (Idle, Connect,
    /// Active): it owns the retry timer.
    active: Option<Session>,
    connecting: Option<Connecting>,
    out: Vec<Action>,
    wbuf: BytesMut,
    established: Option<usize>,
    /// A connection the collision rule (§6.8) says must go.
    collision_loser: Option<usize>,
    /// The uplink gate of our announcement, and whether the peer has our routes.
    gate: Option<watch::Receiver<bool>>,
    advertised: bool,
    /// BFD for the Established session (RFC 5882), and whether it reached Up:
    /// only an Up -> Down transition takes the session down.
    bfd: Option<watch::Receiver<BfdState>>,
    bfd_was_up: bool,
    /// Since when every connect has been refused (see [`REFUSED_GIVE_UP`]).
    refused_since: Option<Instant>,
    /// The run-time routes (see [`super::advert::Dynamic`]): changes wake
    /// this receiver; what the peer has of them, as of which generation.
    dyn_rx: Option<watch::Receiver<u64>>,
    dyn_gen: u64,
    dyn_sent: HashMap<IpNet, u32>,
    /// End-of-RIB waits until the run-time routes known at start are in.
    eor_pending: bool,
    /// Prefixes accepted from this session, for `max_prefixes`.
    count: Count,
    /// The session must end for announcing too many prefixes: (connection,
    /// AFI, limit).
    cut: Option<(usize, u16, u32)>,
    /// Refusals were logged once this session (then only at debug).
    refusal_logged: bool,
}

/// A neighbor that refuses connections is alive (its kernel answers) and a
/// graceful-restart deferral keeps waiting for it — for this long: a BGP
/// restart takes seconds, and a neighbor whose BGP is gone for good must not
/// freeze our kernel routes for the whole restart time.
const REFUSED_GIVE_UP: Duration = Duration::from_secs(10);

impl Driver {
    fn new(task: PeerTask) -> Driver {
        Driver {
            conns: [None, None],
            active: None,
            connecting: None,
            out: Vec::new(),
            wbuf: BytesMut::new(),
            established: None,
            collision_loser: None,
            gate: task.advert.gate(),
            advertised: false,
            bfd: None,
            bfd_was_up: false,
            refused_since: None,
            dyn_rx: task.advert.dynamic().map(|d| d.subscribe()),
            dyn_gen: 0,
            dyn_sent: HashMap::new(),
            eor_pending: false,
            count: Count::default(),
            cut: None,
            refusal_logged: false,
            task,
        }
    }

    fn is_neighbor(&self) -> bool {
        matches!(self.task.shared.kind, PeerKind::Neighbor { .. })
    }

    fn conn(&self, session: Session, stream: TcpStream, locally_initiated: bool) -> Option<Conn> {
        let local = stream.local_addr().ok()?;
        let _ = stream.set_nodelay(true);
        Some(Conn {
            session,
            stream,
            tail: Vec::new(),
            local,
            locally_initiated,
        })
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.conns
            .iter()
            .flatten()
            .filter_map(|c| c.session.next_deadline())
            .chain(self.active.as_ref().and_then(Session::next_deadline))
            .min()
    }

    fn publish_state(&self) {
        let best = self
            .conns
            .iter()
            .flatten()
            .map(|c| c.session.state())
            .chain(self.active.as_ref().map(Session::state))
            .max_by_key(|s| *s as u8);
        self.task.shared.set_state(best.unwrap_or(State::Idle));
    }

    async fn run(&mut self) {
        let far = Instant::now() + Duration::from_secs(86_400 * 365);
        let sleep = tokio::time::sleep_until(far.into());
        tokio::pin!(sleep);
        let mut armed = far;
        let shared = self.task.shared.clone();
        loop {
            self.publish_state();
            while let Some(loser) = self.collision_loser.take() {
                tracing::info!(peer = %shared.address, "connection collision: closing one");
                self.event(loser, Event::OpenCollisionDump).await;
            }
            if let Some((i, afi, limit)) = self.cut.take() {
                tracing::warn!(peer = %shared.address, limit, "more prefixes than max_prefixes: cut off (Cease, maximum prefixes)");
                self.event(
                    i,
                    Event::MaxPrefixes {
                        afi,
                        safi: SAFI_UNICAST,
                        limit,
                    },
                )
                .await;
            }
            if self.conns.iter().all(Option::is_none) && self.active.is_none() {
                return;
            }
            if shared.stop.load(Ordering::Acquire) {
                self.shutdown().await;
                return;
            }
            let d = self.next_deadline().unwrap_or(far);
            if d != armed {
                sleep.as_mut().reset(d.into());
                armed = d;
            }
            let c0 = self.conns[0].as_ref().map(|c| &c.stream);
            let c1 = self.conns[1].as_ref().map(|c| &c.stream);
            let connecting = self.connecting.as_mut();
            let incoming = self.task.incoming.as_mut();
            let gate = self.gate.as_mut();
            let bfd = self.bfd.as_mut();
            let dynamic = self.dyn_rx.as_mut();
            tokio::select! {
                r = bfd_changed(bfd) => self.on_bfd(r).await,
                r = gate_changed(gate) => self.on_gate(r).await,
                r = generation_changed(dynamic) => self.on_dynamic(r).await,
                r = readable(c0) => self.on_readable(0, r).await,
                r = readable(c1) => self.on_readable(1, r).await,
                r = opt_future(connecting) => self.on_connected(r).await,
                s = opt_recv(incoming) => self.on_incoming(s).await,
                () = &mut sleep => self.on_timer().await,
                () = shared.wake.notified() => {}
            }
        }
    }

    async fn on_readable(&mut self, i: usize, r: io::Result<()>) {
        if r.is_err() {
            self.event(i, Event::TcpConnectionFails).await;
            return;
        }
        let now = Instant::now();
        let mut out = std::mem::take(&mut self.out);
        let mut failed = false;
        if let Some(c) = self.conns[i].as_mut() {
            SCRATCH.with(|s| {
                let mut buf = s.borrow_mut();
                let have = c.tail.len();
                if have > 0 {
                    buf[..have].copy_from_slice(&c.tail);
                }
                match c.stream.try_read(&mut buf[have..]) {
                    Ok(0) => failed = true,
                    Ok(n) => {
                        let used = c.session.receive(&buf[..have + n], now, &mut out);
                        c.tail.clear();
                        if let Some(rest) = buf.get(used..have + n) {
                            c.tail.extend_from_slice(rest);
                        }
                        if c.tail.capacity() > 8192 && c.tail.is_empty() {
                            c.tail = Vec::new();
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => failed = true,
                }
            });
        }
        self.apply(i, &mut out).await;
        self.out = out;
        if failed {
            self.event(i, Event::TcpConnectionFails).await;
        }
    }

    async fn on_timer(&mut self) {
        let now = Instant::now();
        for i in 0..2 {
            let mut out = std::mem::take(&mut self.out);
            if let Some(c) = self.conns[i].as_mut() {
                c.session.on_timer(now, &mut out);
            }
            self.apply(i, &mut out).await;
            self.out = out;
        }
        let mut out = Vec::new();
        if let Some(s) = self.active.as_mut() {
            s.on_timer(now, &mut out);
        }
        self.apply_idle(out);
    }

    /// Actions of the connection-less neighbor session: only Connect matters.
    fn apply_idle(&mut self, out: Vec<Action>) {
        for a in out {
            if let Action::Connect = a {
                self.start_connect();
            }
        }
    }

    fn start_connect(&mut self) {
        let PeerKind::Neighbor { remote, local, .. } = self.task.shared.kind else {
            return;
        };
        self.task.shared.set_state(State::Connect);
        self.connecting = Some(Box::pin(async move {
            let sock = if remote.is_ipv4() {
                TcpSocket::new_v4()?
            } else {
                TcpSocket::new_v6()?
            };
            if let Some(l) = local {
                sock.bind(SocketAddr::new(l, 0))?;
            }
            match tokio::time::timeout(Duration::from_secs(5), sock.connect(remote)).await {
                Ok(r) => r,
                Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out")),
            }
        }));
    }

    async fn on_connected(&mut self, r: io::Result<TcpStream>) {
        self.connecting = None;
        let now = Instant::now();
        let mut out = Vec::new();
        let Some(mut s) = self.active.take() else {
            return;
        };
        match r.map(|st| (st.local_addr(), st)) {
            Ok((Ok(_), stream)) if self.conns[0].is_none() => {
                self.refused_since = None;
                s.handle(Event::TcpCrAcked, now, &mut out);
                match self.conn(s, stream, true) {
                    Some(c) => {
                        self.conns[0] = Some(c);
                        self.apply(0, &mut out).await;
                    }
                    None => self.restart_active(),
                }
            }
            Ok(_) => {
                // An accepted connection got there first: drop ours.
                self.active = Some(s);
            }
            Err(e) => {
                self.task
                    .shared
                    .set_error(format!("connect to {}: {e}", self.task.shared.address));
                // A refusal comes from the neighbor's kernel: it is alive and
                // forwarding, only its BGP is (re)starting, and a graceful
                // restart deferral should keep waiting for it (for a while).
                // No answer, or no route to it, means it is gone: stop waiting.
                let refused = matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionReset
                );
                let since = *self.refused_since.get_or_insert(now);
                if !refused {
                    self.refused_since = None;
                }
                if !refused || now.duration_since(since) >= REFUSED_GIVE_UP {
                    let _ = self.task.rib.send(RibEvent::Unreachable {
                        peer: self.task.shared.address,
                    });
                    if let Some(d) = self.task.advert.dynamic() {
                        d.note(SessionNote::Unreachable);
                    }
                }
                s.handle(Event::TcpConnectionFails, now, &mut out);
                self.active = Some(s);
                self.apply_idle(out);
            }
        }
    }

    /// The neighbor's own address connected to us.
    async fn on_incoming(&mut self, stream: Option<TcpStream>) {
        let Some(stream) = stream else {
            self.task.incoming = None;
            return;
        };
        let now = Instant::now();
        let mut out = Vec::new();
        if let Some(mut s) = self.active.take() {
            // Connect/Active + Event 17: use the peer's connection, drop our attempt.
            self.connecting = None;
            s.handle(Event::TcpConnectionConfirmed, now, &mut out);
            if let Some(c) = self.conn(s, stream, false) {
                self.conns[0] = Some(c);
                self.apply(0, &mut out).await;
            } else {
                self.restart_active();
            }
            return;
        }
        let slot = if self.conns[0].is_none() { 0 } else { 1 };
        if self.conns[slot].is_some() {
            return; // a third connection: refuse by dropping it
        }
        let mut s = Session::new(self.task.cfg.clone());
        s.handle(Event::ManualStartWithPassiveTcpEstablishment, now, &mut out);
        if let Some(c) = self.conn(s, stream, false) {
            self.conns[slot] = Some(c);
            self.event(slot, Event::TcpConnectionConfirmed).await;
        }
    }

    async fn event(&mut self, i: usize, ev: Event) {
        let now = Instant::now();
        let mut out = std::mem::take(&mut self.out);
        if let Some(c) = self.conns[i].as_mut() {
            c.session.handle(ev, now, &mut out);
        }
        self.apply(i, &mut out).await;
        self.out = out;
    }

    /// Carries out what connection `i`'s session asked for.
    async fn apply(&mut self, i: usize, out: &mut Vec<Action>) {
        let mut close = false;
        for a in out.drain(..) {
            match a {
                Action::Send(b) => self.wbuf.extend_from_slice(&b),
                Action::Connect => self.start_connect(),
                Action::Established(n) => self.on_established(i, n),
                Action::Update(u) => self.on_update(i, u),
                Action::RouteRefresh { .. } => {
                    if let Some(enc) = self.encoded(i).filter(|_| self.advertised) {
                        self.wbuf.extend_from_slice(&enc.announce);
                    }
                    self.resend_dynamic(i);
                }
                Action::Disconnect {
                    reason,
                    was_established,
                } => {
                    tracing::info!(peer = %self.task.shared.address, "session down: {reason}");
                    self.task.shared.set_error(reason.to_string());
                    if was_established {
                        // RFC 4724 §4.2: a session lost without a NOTIFICATION
                        // keeps the peer's routes, stale, for its restart time.
                        let gr = (reason == DownReason::TcpFailed)
                            .then(|| self.restart_time(i))
                            .flatten();
                        self.on_down(gr);
                    }
                    close = true;
                }
            }
        }
        if self.flush(i).await {
            // The write failed and closed connection i; the slot may now hold
            // the other connection, which must not be touched here.
            return;
        }
        if close {
            self.close(i);
        } else {
            self.check_collision(i);
        }
    }

    /// Writes the pending bytes to connection `i`; true if that failed and the
    /// connection was closed.
    async fn flush(&mut self, i: usize) -> bool {
        if self.wbuf.is_empty() {
            return false;
        }
        let buf = self.wbuf.split().freeze();
        let mut failed = false;
        if let Some(c) = self.conns[i].as_mut() {
            // A peer that stops reading must not stall this task past its hold
            // time: timers, BFD and stop requests are handled here too.
            let limit = match c.session.negotiated().map(|n| n.hold_time) {
                Some(h) if h > 0 => Duration::from_secs(u64::from(h)),
                _ => Duration::from_secs(90),
            };
            let r = match tokio::time::timeout(limit, write(&mut c.stream, buf)).await {
                Ok(r) => r,
                Err(_) => Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("peer read nothing for {limit:?}"),
                )),
            };
            if let Err(e) = r {
                failed = true;
                tracing::debug!(peer = %self.task.shared.address, "write failed: {e}");
                let now = Instant::now();
                let mut out = Vec::new();
                let gr = c
                    .session
                    .negotiated()
                    .and_then(|n| n.graceful_restart.as_ref())
                    .filter(|_| c.session.config().graceful_restart.is_some())
                    .map(|g| g.restart_time);
                c.session.handle(Event::TcpConnectionFails, now, &mut out);
                for a in out {
                    if let Action::Disconnect {
                        was_established: true,
                        ..
                    } = a
                    {
                        self.on_down(gr);
                    }
                }
                self.close(i);
            }
        }
        if self.wbuf.capacity() > 64 * 1024 {
            self.wbuf = BytesMut::new();
        }
        failed
    }

    fn close(&mut self, i: usize) {
        let Some(c) = self.conns[i].take() else {
            return;
        };
        if self.established == Some(i) {
            self.established = None;
        }
        // A configured neighbor's session outlives its last connection and
        // reconnects; while another connection lives, that one is the session.
        let alone = self.conns.iter().all(Option::is_none) && self.active.is_none();
        if self.is_neighbor() && alone {
            if c.locally_initiated && c.session.next_deadline().is_some() {
                self.active = Some(c.session);
            } else {
                self.restart_active();
            }
        }
        if i == 0 {
            self.conns.swap(0, 1);
            if let Some(e) = self.established.as_mut() {
                *e = 0;
            }
        }
    }

    /// A neighbor whose last connection was the peer's: start over on our side.
    fn restart_active(&mut self) {
        if self.task.shared.stop.load(Ordering::Acquire) {
            return;
        }
        let passive = matches!(
            self.task.shared.kind,
            PeerKind::Neighbor { passive: true, .. }
        );
        let mut s = Session::new(self.task.cfg.clone());
        let mut out = Vec::new();
        let ev = if passive {
            Event::ManualStartWithPassiveTcpEstablishment
        } else {
            Event::AutomaticStart
        };
        s.handle(ev, Instant::now(), &mut out);
        self.active = Some(s);
    }

    /// RFC 4271 §6.8, when connection `i` has just accepted the peer's OPEN.
    fn check_collision(&mut self, i: usize) {
        let j = 1 - i;
        let (Some(a), Some(b)) = (self.conns[i].as_ref(), self.conns[j].as_ref()) else {
            return;
        };
        if a.session.state() != State::OpenConfirm {
            return;
        }
        let Some(remote_id) = a.session.negotiated().map(|n| n.remote_id) else {
            return;
        };
        let loser = match b.session.state() {
            // §6.8: a connection colliding with an Established one is closed —
            // unless the peer restarted with graceful restart (RFC 4724 §4.2).
            State::Established => {
                let gr = b
                    .session
                    .negotiated()
                    .is_some_and(|n| n.graceful_restart.is_some());
                if gr {
                    j
                } else {
                    i
                }
            }
            State::OpenSent | State::OpenConfirm => {
                let keep_local =
                    fsm::keep_locally_initiated(a.session.config().local_id, remote_id);
                if a.locally_initiated == keep_local {
                    j
                } else {
                    i
                }
            }
            _ => return,
        };
        self.collision_loser = Some(loser);
    }

    /// The peer's restart time when both sides negotiated graceful restart.
    fn restart_time(&self, i: usize) -> Option<u16> {
        let c = self.conns[i].as_ref()?;
        c.session.config().graceful_restart?;
        c.session
            .negotiated()?
            .graceful_restart
            .as_ref()
            .map(|g| g.restart_time)
    }

    fn encoded(&self, i: usize) -> Option<super::advert::Encoded> {
        let c = self.conns[i].as_ref()?;
        let n = c.session.negotiated()?;
        let shape = Shape::new(c.local.ip(), c.session.config().local_asn, n);
        Some(self.task.advert.encoded(shape))
    }

    /// The uplink gate moved: announce or withdraw on the Established session.
    async fn on_gate(&mut self, changed: Result<(), watch::error::RecvError>) {
        if changed.is_err() {
            self.gate = None;
        }
        let open = self.task.advert.open();
        let Some(i) = self.established else { return };
        let Some(enc) = self.encoded(i) else { return };
        if open && !self.advertised {
            self.wbuf.extend_from_slice(&enc.announce);
            self.task.shared.sent.store(enc.prefixes, Ordering::Relaxed);
        } else if !open && self.advertised {
            self.wbuf.extend_from_slice(&enc.withdraw);
            self.task.shared.sent.store(0, Ordering::Relaxed);
        } else {
            return;
        }
        self.advertised = open;
        if let Some(c) = self.conns[i].as_mut() {
            c.session.sent_update(Instant::now());
        }
        self.flush(i).await;
    }

    /// The run-time routes changed: send the peer what it does not have.
    async fn on_dynamic(&mut self, changed: Result<(), watch::error::RecvError>) {
        if changed.is_err() {
            self.dyn_rx = None;
            return;
        }
        let Some(d) = self.task.advert.dynamic().cloned() else {
            return;
        };
        let Some(i) = self.established else { return };
        let Some(c) = self.conns[i].as_ref() else {
            return;
        };
        let Some(n) = c.session.negotiated() else {
            return;
        };
        let local_asn = c.session.config().local_asn;
        let shape = Shape::new(c.local.ip(), local_asn, n);
        let (gen, changes) = d.since(self.dyn_gen);
        let changes: Vec<(IpNet, Option<u32>)> = match changes {
            Some(c) => c,
            None => {
                // Too far behind the journal: compare the whole set.
                let (_, all) = d.all();
                let all: HashMap<IpNet, u32> = all.into_iter().collect();
                self.dyn_sent
                    .keys()
                    .filter(|p| !all.contains_key(p))
                    .map(|p| (*p, None))
                    .chain(all.iter().map(|(p, m)| (*p, Some(*m))))
                    .collect()
            }
        };
        self.dyn_gen = gen;
        let mut announce = Vec::new();
        let mut withdraw = Vec::new();
        for (p, med) in changes {
            match med {
                Some(m) if self.dyn_sent.get(&p) != Some(&m) => {
                    self.dyn_sent.insert(p, m);
                    announce.push((p, m));
                }
                None if self.dyn_sent.remove(&p).is_some() => withdraw.push(p),
                _ => {}
            }
        }
        let (bytes, _) = encode_delta(local_asn, shape, &announce, &withdraw);
        self.wbuf.extend_from_slice(&bytes);
        let fixed = if self.advertised {
            self.encoded(i).map_or(0, |e| e.prefixes)
        } else {
            0
        };
        self.task
            .shared
            .sent
            .store(fixed + self.dyn_sent.len(), Ordering::Relaxed);
        if self.eor_pending && d.ready() {
            self.eor_pending = false;
            if let Some(enc) = self.encoded(i) {
                self.wbuf.extend_from_slice(&enc.eor);
            }
        }
        if self.wbuf.is_empty() {
            return;
        }
        if let Some(c) = self.conns[i].as_mut() {
            c.session.sent_update(Instant::now());
        }
        self.flush(i).await;
    }

    /// ROUTE-REFRESH: the run-time routes again.
    fn resend_dynamic(&mut self, i: usize) {
        if self.dyn_sent.is_empty() {
            return;
        }
        let Some(c) = self.conns[i].as_ref() else {
            return;
        };
        let Some(n) = c.session.negotiated() else {
            return;
        };
        let shape = Shape::new(c.local.ip(), c.session.config().local_asn, n);
        let all: Vec<(IpNet, u32)> = self.dyn_sent.iter().map(|(p, m)| (*p, *m)).collect();
        let (bytes, _) = encode_delta(c.session.config().local_asn, shape, &all, &[]);
        self.wbuf.extend_from_slice(&bytes);
    }

    /// RFC 5882 §4.3.1: BFD Down brings the BGP session down at once — unless
    /// the peer said AdminDown (RFC 5882 §3.2: it is restarting its control
    /// plane or was disabled by hand, and the forwarding path may be fine).
    /// Our own AdminDown (the session being removed, e.g. at our shutdown) is
    /// no failure either.
    async fn on_bfd(&mut self, changed: Result<(), watch::error::RecvError>) {
        let Some(rx) = self.bfd.as_mut() else { return };
        if changed.is_err() {
            self.bfd = None;
            return;
        }
        let state = *rx.borrow_and_update();
        match state {
            BfdState::Up => self.bfd_was_up = true,
            BfdState::AdminDown => self.bfd_was_up = false,
            BfdState::Down if self.bfd_was_up => {
                self.bfd_was_up = false;
                let peer = self.task.shared.address;
                if self
                    .task
                    .bfd
                    .as_ref()
                    .is_some_and(|b| b.peer_admin_down(peer))
                {
                    tracing::info!(peer = %peer, "BFD: peer signalled AdminDown; keeping the BGP session");
                    return;
                }
                tracing::warn!(peer = %peer, "BFD Down: taking the BGP session down");
                if let Some(i) = self.established {
                    self.event(i, Event::BfdDown).await;
                }
            }
            _ => {}
        }
    }

    fn on_established(&mut self, i: usize, n: Box<Negotiated>) {
        let Some(c) = self.conns[i].as_ref() else {
            return;
        };
        if let Some(b) = &self.task.bfd {
            let rx = b.watch(self.task.shared.address, c.local.ip());
            // A session shared with an earlier watcher may already be Up.
            self.bfd_was_up = *rx.borrow() == BfdState::Up;
            self.bfd = Some(rx);
        }
        let shared = &self.task.shared;
        shared.remote_asn.store(n.remote_asn, Ordering::Relaxed);
        shared
            .graceful_restart
            .store(n.graceful_restart.is_some(), Ordering::Relaxed);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_secs().max(1));
        shared.since.store(now, Ordering::Relaxed);
        *shared.last_error.lock().unwrap_or_else(|p| p.into_inner()) = None;
        tracing::debug!(peer = %shared.address, asn = n.remote_asn, "Established");
        let local_asn = c.session.config().local_asn;
        let shape = Shape::new(c.local.ip(), local_asn, &n);
        let enc = self.task.advert.encoded(shape);
        self.advertised = self.task.advert.open();
        if self.advertised {
            shared.sent.store(enc.prefixes, Ordering::Relaxed);
            self.wbuf.extend_from_slice(&enc.announce);
        }
        self.established = Some(i);
        self.eor_pending = false;
        self.count.clear();
        self.refusal_logged = false;
        if let Some(d) = self.task.advert.dynamic().cloned() {
            let (gen, all) = d.all();
            let (bytes, n) = encode_delta(local_asn, shape, &all, &[]);
            self.wbuf.extend_from_slice(&bytes);
            self.dyn_gen = gen;
            self.dyn_sent = all.into_iter().collect();
            shared.sent.fetch_add(n, Ordering::Relaxed);
            // Our restart (RFC 4724): End-of-RIB only once every VM known at
            // start is in, or the router would sweep the ones still coming.
            self.eor_pending = !d.ready();
            d.note(SessionNote::Up);
        }
        if !self.eor_pending {
            self.wbuf.extend_from_slice(&enc.eor);
        }
        let _ = self.task.rib.send(RibEvent::Up {
            peer: shared.clone(),
            ebgp: n.remote_asn != local_asn,
            remote_asn: n.remote_asn,
            remote_id: n.remote_id,
            graceful_restart: n.graceful_restart.as_ref().map(|g| {
                g.families
                    .iter()
                    .filter(|f| f.forwarding_preserved && f.safi == SAFI_UNICAST)
                    .map(|f| f.afi == AFI_IPV6)
                    .collect()
            }),
        });
    }

    fn on_update(&mut self, i: usize, mut u: Box<Update>) {
        if self.cut.is_some() {
            return; // this session is being cut off
        }
        if let Some(policy) = self.task.import.clone() {
            let (refused, first) = policy.filter(&mut u);
            if refused > 0 {
                let peer = self.task.shared.address;
                let first = first.map(|p| p.to_string()).unwrap_or_default();
                if self.refusal_logged {
                    tracing::debug!(peer = %peer, refused, first = %first, "refused prefixes outside the virtual networks");
                } else {
                    self.refusal_logged = true;
                    tracing::info!(peer = %peer, refused, first = %first, "refused prefixes outside the virtual networks (only their VMs' host routes are accepted; further refusals at debug)");
                }
            }
            if let Some(limit) = policy.max_prefixes {
                if let Some(afi) = self.count.apply(&u, limit) {
                    self.cut = Some((i, afi, limit));
                    return;
                }
            }
        }
        if let Some(e) = &u.treat_as_withdraw {
            tracing::warn!(peer = %self.task.shared.address, "malformed UPDATE treated as withdraw (RFC 7606): {e:?}");
        }
        for e in &u.discarded {
            tracing::info!(peer = %self.task.shared.address, "attribute discarded (RFC 7606): {e:?}");
        }
        let _ = self.task.rib.send(RibEvent::Update {
            peer: self.task.shared.clone(),
            update: u,
        });
    }

    /// The Established session is gone; `stale_for` keeps its routes (GR).
    fn on_down(&mut self, stale_for: Option<u16>) {
        let shared = &self.task.shared;
        shared.since.store(0, Ordering::Relaxed);
        shared.sent.store(0, Ordering::Relaxed);
        self.advertised = false;
        self.dyn_sent.clear();
        self.eor_pending = false;
        self.count.clear();
        if let Some(d) = self.task.advert.dynamic() {
            d.note(SessionNote::Down {
                stale_for: stale_for.map(|s| Duration::from_secs(u64::from(s))),
            });
        }
        // Dropping our receiver ends the BFD session once no one else watches
        // it (the same host's new connection may already share it).
        self.bfd = None;
        let _ = self.task.rib.send(RibEvent::Down {
            peer: shared.clone(),
            stale_for: stale_for.map(|s| Duration::from_secs(u64::from(s))),
        });
    }

    async fn shutdown(&mut self) {
        let cease = self.task.shared.stop_cease.load(Ordering::Relaxed);
        if let (Some(b), Some(rx)) = (&self.task.bfd, self.bfd.take()) {
            // AdminDown first, so the peer's BFD does not take its BGP down
            // while we restart (RFC 5882 §3.2) — unless the same peer's new
            // connection shares the session.
            b.unwatch(self.task.shared.address, rx);
        }
        for i in 0..2 {
            if cease {
                let now = Instant::now();
                let mut out = std::mem::take(&mut self.out);
                if let Some(c) = self.conns[i].as_mut() {
                    c.session.handle(Event::ManualStop, now, &mut out);
                }
                self.apply(i, &mut out).await;
                self.out = out;
            } else if self.conns[i]
                .as_ref()
                .is_some_and(|c| c.session.state() == State::Established)
            {
                // Replaced by the same peer's new connection, or our own
                // graceful-restart exit: no NOTIFICATION, routes kept stale.
                let gr = self.restart_time(i);
                self.on_down(gr);
            }
        }
        self.conns = [None, None];
        self.active = None;
        self.connecting = None;
    }
}

async fn write(stream: &mut TcpStream, buf: Bytes) -> io::Result<()> {
    // Most writes fit the socket buffer: try without a waker first.
    match stream.try_write(&buf) {
        Ok(n) if n == buf.len() => Ok(()),
        Ok(n) => stream.write_all(&buf[n..]).await,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => stream.write_all(&buf).await,
        Err(e) => Err(e),
    }
}

async fn bfd_changed(
    b: Option<&mut watch::Receiver<BfdState>>,
) -> Result<(), watch::error::RecvError> {
    match b {
        Some(b) => b.changed().await,
        None => std::future::pending().await,
    }
}

async fn generation_changed(
    g: Option<&mut watch::Receiver<u64>>,
) -> Result<(), watch::error::RecvError> {
    match g {
        Some(g) => g.changed().await,
        None => std::future::pending().await,
    }
}

async fn gate_changed(
    g: Option<&mut watch::Receiver<bool>>,
) -> Result<(), watch::error::RecvError> {
    match g {
        Some(g) => g.changed().await,
        None => std::future::pending().await,
    }
}

async fn readable(s: Option<&TcpStream>) -> io::Result<()> {
    match s {
        Some(s) => s.readable().await,
        None => std::future::pending().await,
    }
}

async fn opt_future(f: Option<&mut Connecting>) -> io::Result<TcpStream> {
    match f {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

async fn opt_recv(r: Option<&mut mpsc::Receiver<TcpStream>>) -> Option<TcpStream> {
    match r {
        Some(r) => r.recv().await,
        None => std::future::pending().await,
    }
}
