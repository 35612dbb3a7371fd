//! The BGP session FSM (RFC 4271 §8), sans-IO.
//!
//! One [`Session`] is one BGP connection's life: bytes, events and `now` go in;
//! [`Action`]s come out, and [`Session::next_deadline`] says when to call
//! [`Session::on_timer`]. The driver owns the socket and the clock.
//!
//! Event names follow RFC 4271 §8.1 so the transitions can be checked against the
//! RFC line by line. Not implemented (all optional in the RFC): DelayOpen,
//! DampPeerOscillations, the TCP-connection-invalid events (the driver only hands
//! us connections it accepted).

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use crate::packet::{
    frame_len, Capability, CodecCtx, GracefulRestartCap, Message, Notification, Open, Update,
    AFI_IPV4, KEEPALIVE_BYTES, SAFI_UNICAST,
};

/// RFC 4271 §8.2.2: the hold timer before an OPEN arrives ("a large value", 4 min).
const LARGE_HOLD: Duration = Duration::from_secs(240);
const FIRST_RETRY: Duration = Duration::from_secs(1);

/// NOTIFICATION codes the FSM itself sends (the codec sends the rest).
mod err {
    pub use crate::packet::codes::cease::{
        ADMINISTRATIVE_SHUTDOWN as CEASE_ADMIN_SHUTDOWN, BFD_DOWN as CEASE_BFD_DOWN,
        CONNECTION_COLLISION_RESOLUTION as CEASE_COLLISION,
        MAXIMUM_PREFIXES_REACHED as CEASE_MAX_PREFIXES,
    };
    /// RFC 6608 subcodes say which state received the unexpected message.
    pub use crate::packet::codes::fsm::{
        UNEXPECTED_IN_ESTABLISHED as FSM_IN_ESTABLISHED,
        UNEXPECTED_IN_OPEN_CONFIRM as FSM_IN_OPENCONFIRM,
        UNEXPECTED_IN_OPEN_SENT as FSM_IN_OPENSENT,
    };
    pub use crate::packet::codes::open::{
        BAD_BGP_IDENTIFIER as OPEN_BAD_BGP_ID, BAD_PEER_AS as OPEN_BAD_PEER_AS,
    };
    pub use crate::packet::codes::{
        CEASE, FSM_ERROR as FSM, HOLD_TIMER_EXPIRED as HOLD_EXPIRED, OPEN_MESSAGE_ERROR as OPEN,
    };
}

/// Which remote AS a peer may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerAs {
    /// Any AS but ours (eBGP).
    External,
    /// Exactly ours (iBGP).
    Internal,
    Exact(u32),
}

impl PeerAs {
    pub fn accepts(self, local: u32, remote: u32) -> bool {
        match self {
            PeerAs::External => remote != local,
            PeerAs::Internal => remote == local,
            PeerAs::Exact(n) => remote == n,
        }
    }
}

impl std::fmt::Display for PeerAs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PeerAs::External => f.write_str("external"),
            PeerAs::Internal => f.write_str("internal"),
            PeerAs::Exact(n) => write!(f, "{n}"),
        }
    }
}

/// Graceful restart (RFC 4724) as we announce it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GracefulRestart {
    pub restart_time: u16,
    /// We are coming back from a restart with forwarding state kept (R bit and F bits).
    pub restarting: bool,
}

/// What one session (or every session of a listen range: it is shared) is set up with.
#[derive(Debug)]
pub struct SessionConfig {
    pub local_asn: u32,
    pub local_id: Ipv4Addr,
    pub peer_as: PeerAs,
    /// Proposed hold time; 0 = no keepalives.
    pub hold_time: u16,
    /// (AFI, SAFI) pairs we offer.
    pub families: Vec<(u16, u8)>,
    pub graceful_restart: Option<GracefulRestart>,
    /// Upper bound of the reconnect backoff (active sessions only).
    pub max_retry: Duration,
    /// Our OPEN, encoded once for every session sharing this config.
    open: Bytes,
}

impl SessionConfig {
    pub fn new(
        local_asn: u32,
        local_id: Ipv4Addr,
        peer_as: PeerAs,
        hold_time: u16,
        families: Vec<(u16, u8)>,
        graceful_restart: Option<GracefulRestart>,
    ) -> SessionConfig {
        let mut caps: Vec<Capability> = families
            .iter()
            .map(|&(afi, safi)| Capability::Multiprotocol { afi, safi })
            .collect();
        caps.push(Capability::RouteRefresh);
        caps.push(Capability::FourOctetAs(local_asn));
        if let Some(gr) = graceful_restart {
            caps.push(Capability::GracefulRestart(GracefulRestartCap {
                restarting: gr.restarting,
                notification: false,
                restart_time: gr.restart_time.min(4095),
                families: families
                    .iter()
                    .map(|&(afi, safi)| crate::packet::GrFamily {
                        afi,
                        safi,
                        forwarding_preserved: gr.restarting,
                    })
                    .collect(),
            }));
        }
        let open = Message::Open(Open {
            version: 4,
            asn: local_asn,
            hold_time,
            bgp_id: local_id,
            capabilities: caps,
        });
        let mut buf = BytesMut::with_capacity(64);
        // An OPEN with a handful of capabilities is far below 4096 bytes.
        let encoded = open.encode(&CodecCtx::default(), &mut buf);
        debug_assert!(encoded.is_ok());
        SessionConfig {
            local_asn,
            local_id,
            peer_as,
            hold_time,
            families,
            graceful_restart,
            max_retry: Duration::from_secs(30),
            open: buf.freeze(),
        }
    }
}

/// RFC 4271 §8.2.2 states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    Idle,
    Connect,
    Active,
    OpenSent,
    OpenConfirm,
    Established,
}

impl State {
    pub fn name(self) -> &'static str {
        match self {
            State::Idle => "Idle",
            State::Connect => "Connect",
            State::Active => "Active",
            State::OpenSent => "OpenSent",
            State::OpenConfirm => "OpenConfirm",
            State::Established => "Established",
        }
    }
}

/// Administrative and TCP events from the driver (RFC 4271 §8.1.2, §8.1.4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Event 1: start, and connect to the peer.
    ManualStart,
    /// Event 3: start, and connect after the retry interval (a restart after the
    /// peer's own connection went away).
    AutomaticStart,
    /// Event 4: start, and wait for the peer to connect.
    ManualStartWithPassiveTcpEstablishment,
    /// Event 2: stop, with a Cease NOTIFICATION.
    ManualStop,
    /// Event 16: our outgoing connection succeeded.
    TcpCrAcked,
    /// Event 17: we accepted the peer's connection.
    TcpConnectionConfirmed,
    /// Event 18: the connection failed or closed.
    TcpConnectionFails,
    /// Event 23: the collision rule (§6.8) says this connection loses.
    OpenCollisionDump,
    /// RFC 5882 §4.3.1: BFD says the path to the peer is gone.
    BfdDown,
    /// The peer announced more prefixes of a family than it may (the
    /// driver counts): Cease, Maximum Number of Prefixes Reached (RFC 4486
    /// §4: the data is AFI, SAFI and the limit).
    MaxPrefixes { afi: u16, safi: u8, limit: u32 },
}

/// What the session learned from the peer's OPEN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    pub remote_asn: u32,
    pub remote_id: Ipv4Addr,
    pub hold_time: u16,
    pub families: Vec<(u16, u8)>,
    pub four_octet_as: bool,
    pub route_refresh: bool,
    pub graceful_restart: Option<GracefulRestartCap>,
}

impl Negotiated {
    pub fn has_family(&self, afi: u16, safi: u8) -> bool {
        self.families.contains(&(afi, safi))
    }
}

/// Why a session left the connected states.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DownReason {
    NotificationSent(Notification),
    NotificationReceived(Notification),
    TcpFailed,
}

impl std::fmt::Display for DownReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DownReason::NotificationSent(n) => write!(f, "sent NOTIFICATION {}", n.describe()),
            DownReason::NotificationReceived(n) => {
                write!(f, "received NOTIFICATION {}", n.describe())
            }
            DownReason::TcpFailed => f.write_str("TCP connection closed or failed"),
        }
    }
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Open a TCP connection to the peer.
    Connect,
    /// Write these bytes.
    Send(Bytes),
    /// The session is Established.
    Established(Box<Negotiated>),
    /// A received UPDATE, decoded (RFC 7606 outcomes are on it). Boxed: the
    /// driver keeps a Vec of actions per peer, so their size is per-peer memory.
    Update(Box<Update>),
    /// The peer asked for our routes again (RFC 2918).
    RouteRefresh { afi: u16, safi: u8 },
    /// Drop the TCP connection; `was_established` says whether routes learned on
    /// this session must go.
    Disconnect {
        reason: DownReason,
        was_established: bool,
    },
}

/// Where the session is, with the data that state has and no other: there is
/// no Established without what its OPEN negotiated, no hold timer in Idle.
#[derive(Debug)]
enum Phase {
    Idle {
        /// When an active session connects again (§8.1.1 automatic start).
        retry_at: Option<Instant>,
        /// What the Established session that just ended negotiated: the driver
        /// reads its graceful restart after the Disconnect.
        ended: Option<Negotiated>,
    },
    /// Our connection attempt is under way (the driver times it out).
    Connect,
    Active {
        /// ConnectRetryTimer; None for a passive session.
        retry_at: Option<Instant>,
    },
    OpenSent {
        /// The large hold timer that guards waiting for the OPEN (§8.2.2).
        hold_at: Instant,
    },
    OpenConfirm(Opened),
    Established(Opened),
}

/// An accepted OPEN: what it negotiated and the two timers it runs.
#[derive(Debug)]
struct Opened {
    negotiated: Negotiated,
    /// None when the negotiated hold time is 0.
    hold_at: Option<Instant>,
    keepalive_at: Option<Instant>,
}

impl Opened {
    /// The negotiated hold time; None when it is 0 (no timers at all).
    fn hold(&self) -> Option<Duration> {
        match self.negotiated.hold_time {
            0 => None,
            h => Some(Duration::from_secs(u64::from(h))),
        }
    }

    fn restart_hold(&mut self, now: Instant) {
        self.hold_at = self.hold().map(|h| now + h);
    }

    fn restart_keepalive(&mut self, now: Instant) {
        // §4.4: a third of the hold time; no keepalives when the hold time is 0.
        self.keepalive_at = self.hold().map(|h| now + h / 3);
    }
}

impl Phase {
    fn state(&self) -> State {
        match self {
            Phase::Idle { .. } => State::Idle,
            Phase::Connect => State::Connect,
            Phase::Active { .. } => State::Active,
            Phase::OpenSent { .. } => State::OpenSent,
            Phase::OpenConfirm(_) => State::OpenConfirm,
            Phase::Established(_) => State::Established,
        }
    }
}

/// One BGP connection's state machine.
#[derive(Debug)]
pub struct Session {
    cfg: Arc<SessionConfig>,
    phase: Phase,
    /// Active sessions reconnect by themselves; passive ones end in Idle.
    passive: bool,
    ctx: CodecCtx,
    retry_interval: Duration,
    last_down: Option<DownReason>,
}

fn keepalive() -> Bytes {
    Bytes::from_static(&KEEPALIVE_BYTES)
}

impl Session {
    pub fn new(cfg: Arc<SessionConfig>) -> Session {
        Session {
            cfg,
            phase: Phase::Idle {
                retry_at: None,
                ended: None,
            },
            passive: false,
            ctx: CodecCtx::default(),
            retry_interval: FIRST_RETRY,
            last_down: None,
        }
    }

    pub fn state(&self) -> State {
        self.phase.state()
    }

    pub fn config(&self) -> &Arc<SessionConfig> {
        &self.cfg
    }

    /// What the peer's OPEN negotiated: in OpenConfirm and Established, and in
    /// Idle right after an Established session ended.
    pub fn negotiated(&self) -> Option<&Negotiated> {
        match &self.phase {
            Phase::OpenConfirm(o) | Phase::Established(o) => Some(&o.negotiated),
            Phase::Idle { ended, .. } => ended.as_ref(),
            Phase::Connect | Phase::Active { .. } | Phase::OpenSent { .. } => None,
        }
    }

    pub fn codec(&self) -> &CodecCtx {
        &self.ctx
    }

    pub fn last_down(&self) -> Option<&DownReason> {
        self.last_down.as_ref()
    }

    /// The earliest instant at which [`Session::on_timer`] has work.
    pub fn next_deadline(&self) -> Option<Instant> {
        match &self.phase {
            Phase::Idle { retry_at, .. } | Phase::Active { retry_at } => *retry_at,
            Phase::Connect => None,
            Phase::OpenSent { hold_at } => Some(*hold_at),
            Phase::OpenConfirm(o) | Phase::Established(o) => {
                [o.hold_at, o.keepalive_at].into_iter().flatten().min()
            }
        }
    }

    /// Administrative and TCP events.
    pub fn handle(&mut self, ev: Event, now: Instant, out: &mut Vec<Action>) {
        use State::*;
        match (self.state(), ev) {
            (Idle, Event::ManualStart) => {
                self.passive = false;
                self.retry_interval = FIRST_RETRY;
                self.enter_connect(out);
            }
            (Idle, Event::AutomaticStart) => {
                self.passive = false;
                self.set_retry(Some(now + self.retry_interval));
            }
            (Idle, Event::ManualStartWithPassiveTcpEstablishment) => {
                self.passive = true;
                self.phase = Phase::Active { retry_at: None };
            }
            (
                _,
                Event::ManualStart
                | Event::AutomaticStart
                | Event::ManualStartWithPassiveTcpEstablishment,
            ) => {}
            (Idle, Event::ManualStop) => self.set_retry(None),
            (Connect | Active, Event::ManualStop) => {
                self.phase = Phase::Idle {
                    retry_at: None,
                    ended: None,
                };
                // Nothing was said on the wire: just drop whatever connection is pending.
                self.passive = true;
                out.push(Action::Disconnect {
                    reason: DownReason::TcpFailed,
                    was_established: false,
                });
            }
            (OpenSent | OpenConfirm | Established, Event::ManualStop) => {
                self.passive = true; // a stopped session stays down
                self.notify_and_close(
                    Notification {
                        code: err::CEASE,
                        subcode: err::CEASE_ADMIN_SHUTDOWN,
                        data: Vec::new(),
                    },
                    now,
                    out,
                );
            }
            (Connect | Active, Event::TcpCrAcked | Event::TcpConnectionConfirmed) => {
                self.phase = Phase::OpenSent {
                    hold_at: now + LARGE_HOLD,
                };
                out.push(Action::Send(self.cfg.open.clone()));
            }
            (Connect, Event::TcpConnectionFails) => {
                // §8.2.2 Connect, Event 18: wait for the retry timer in Active.
                self.phase = Phase::Active {
                    retry_at: Some(now + self.retry_interval),
                };
                self.bump_retry();
            }
            (Active, Event::TcpConnectionFails) => {
                if self.passive {
                    self.enter_idle(DownReason::TcpFailed, now, out);
                } else {
                    self.set_retry(Some(now + self.retry_interval));
                    self.bump_retry();
                }
            }
            (OpenSent | OpenConfirm | Established, Event::TcpConnectionFails) => {
                self.enter_idle(DownReason::TcpFailed, now, out);
            }
            (OpenSent | OpenConfirm, Event::OpenCollisionDump) => {
                self.notify_and_close(
                    Notification {
                        code: err::CEASE,
                        subcode: err::CEASE_COLLISION,
                        data: Vec::new(),
                    },
                    now,
                    out,
                );
            }
            (OpenSent | OpenConfirm | Established, Event::BfdDown) => {
                self.notify_and_close(
                    Notification {
                        code: err::CEASE,
                        subcode: err::CEASE_BFD_DOWN,
                        data: Vec::new(),
                    },
                    now,
                    out,
                );
            }
            (OpenSent | OpenConfirm | Established, Event::MaxPrefixes { afi, safi, limit }) => {
                let mut data = Vec::with_capacity(7);
                data.extend_from_slice(&afi.to_be_bytes());
                data.push(safi);
                data.extend_from_slice(&limit.to_be_bytes());
                self.notify_and_close(
                    Notification {
                        code: err::CEASE,
                        subcode: err::CEASE_MAX_PREFIXES,
                        data,
                    },
                    now,
                    out,
                );
            }
            (Established, Event::OpenCollisionDump) => {
                // RFC 4724 §4.2: a restarting peer's new connection replaces the old
                // one; the old one is closed without a NOTIFICATION.
                self.enter_idle(DownReason::TcpFailed, now, out);
            }
            // One Session is one connection: a second one is a second Session
            // (the driver resolves the collision with `keep_locally_initiated`).
            (
                OpenSent | OpenConfirm | Established,
                Event::TcpCrAcked | Event::TcpConnectionConfirmed,
            ) => {}
            (Idle, _)
            | (
                Connect | Active,
                Event::OpenCollisionDump | Event::BfdDown | Event::MaxPrefixes { .. },
            ) => {}
        }
    }

    /// Bytes read from the connection. Whole messages are consumed; the return
    /// value is how many bytes were, so the driver keeps only a partial tail.
    pub fn receive(&mut self, buf: &[u8], now: Instant, out: &mut Vec<Action>) -> usize {
        let mut off = 0;
        while matches!(
            self.state(),
            State::OpenSent | State::OpenConfirm | State::Established
        ) {
            let rest = buf.get(off..).unwrap_or_default();
            match frame_len(rest) {
                Ok(None) => break,
                Ok(Some(len)) => {
                    let Some(msg) = rest.get(..len) else { break };
                    off += len;
                    match Message::decode(msg, &self.ctx) {
                        Ok(m) => self.on_message(m, now, out),
                        Err(e) => {
                            let n = e.notification();
                            self.notify_and_close(n, now, out);
                        }
                    }
                }
                Err(e) => {
                    // BGPHeaderErr (Event 21).
                    self.notify_and_close(e.notification(), now, out);
                    return buf.len();
                }
            }
        }
        if matches!(self.state(), State::Idle | State::Active) {
            // The connection is going away: nothing left is worth keeping.
            return buf.len();
        }
        off
    }

    /// Timer expiries due at `now`.
    pub fn on_timer(&mut self, now: Instant, out: &mut Vec<Action>) {
        let hold_at = match &self.phase {
            Phase::OpenSent { hold_at } => Some(*hold_at),
            Phase::OpenConfirm(o) | Phase::Established(o) => o.hold_at,
            Phase::Idle { .. } | Phase::Connect | Phase::Active { .. } => None,
        };
        if hold_at.is_some_and(|d| d <= now) {
            // Event 10: HoldTimer_Expires.
            self.notify_and_close(
                Notification {
                    code: err::HOLD_EXPIRED,
                    subcode: 0,
                    data: Vec::new(),
                },
                now,
                out,
            );
            return;
        }
        match &mut self.phase {
            Phase::OpenConfirm(o) | Phase::Established(o) => {
                if o.keepalive_at.is_some_and(|d| d <= now) {
                    // Event 11: KeepaliveTimer_Expires.
                    out.push(Action::Send(keepalive()));
                    o.restart_keepalive(now);
                }
            }
            Phase::Idle { retry_at, .. } | Phase::Active { retry_at } => {
                if retry_at.is_some_and(|d| d <= now) {
                    // Event 9: ConnectRetryTimer_Expires, or the end of our idle
                    // hold after a failure: either way, try to connect again.
                    *retry_at = None;
                    if !self.passive {
                        self.enter_connect(out);
                    }
                }
            }
            Phase::Connect | Phase::OpenSent { .. } => {}
        }
    }

    /// The driver wrote an UPDATE: a KEEPALIVE is not needed until later (§4.4).
    pub fn sent_update(&mut self, now: Instant) {
        if let Phase::Established(o) = &mut self.phase {
            o.restart_keepalive(now);
        }
    }

    fn enter_connect(&mut self, out: &mut Vec<Action>) {
        self.phase = Phase::Connect;
        out.push(Action::Connect);
    }

    /// Sets the retry timer of Idle or Active (the states that have one).
    fn set_retry(&mut self, at: Option<Instant>) {
        if let Phase::Idle { retry_at, .. } | Phase::Active { retry_at } = &mut self.phase {
            *retry_at = at;
        }
    }

    fn bump_retry(&mut self) {
        self.retry_interval = (self.retry_interval * 2).min(self.cfg.max_retry);
    }

    fn on_message(&mut self, m: Message, now: Instant, out: &mut Vec<Action>) {
        use State::*;
        match (self.state(), m) {
            (OpenSent, Message::Open(open)) => self.on_open(open, now, out),
            (OpenConfirm, Message::Keepalive) => {
                // Event 26 in OpenConfirm.
                self.phase = match self.take_phase() {
                    Phase::OpenConfirm(mut o) => {
                        o.restart_hold(now);
                        out.push(Action::Established(Box::new(o.negotiated.clone())));
                        Phase::Established(o)
                    }
                    other => other,
                };
                self.retry_interval = FIRST_RETRY;
            }
            (Established, Message::Keepalive) => self.restart_hold(now),
            (Established, Message::Update(u)) => {
                self.restart_hold(now);
                out.push(Action::Update(Box::new(u)));
            }
            (Established, Message::RouteRefresh(rr)) => {
                self.restart_hold(now);
                // RFC 2918 §4: a family we did not negotiate is ignored.
                let ok = self
                    .negotiated()
                    .is_some_and(|n| n.has_family(rr.afi, rr.safi));
                if ok {
                    out.push(Action::RouteRefresh {
                        afi: rr.afi,
                        safi: rr.safi,
                    });
                }
            }
            (_, Message::Notification(n)) => {
                // Events 24/25.
                self.enter_idle(DownReason::NotificationReceived(n), now, out);
            }
            (state, _) => {
                // Anything else is an FSM error (RFC 6608 subcodes).
                let subcode = match state {
                    OpenSent => err::FSM_IN_OPENSENT,
                    OpenConfirm => err::FSM_IN_OPENCONFIRM,
                    Established => err::FSM_IN_ESTABLISHED,
                    _ => 0,
                };
                self.notify_and_close(
                    Notification {
                        code: err::FSM,
                        subcode,
                        data: Vec::new(),
                    },
                    now,
                    out,
                );
            }
        }
    }

    /// Event 19 (BGPOpen) in OpenSent, after the codec checked the syntax.
    fn on_open(&mut self, open: Open, now: Instant, out: &mut Vec<Action>) {
        let cfg = &self.cfg;
        if !cfg.peer_as.accepts(cfg.local_asn, open.asn) {
            self.notify_and_close(
                Notification {
                    code: err::OPEN,
                    subcode: err::OPEN_BAD_PEER_AS,
                    data: bad_peer_as_data(open.asn),
                },
                now,
                out,
            );
            return;
        }
        // RFC 6286 §2.1: identifiers need only be unique within an AS.
        if open.asn == cfg.local_asn && open.bgp_id == cfg.local_id {
            self.notify_and_close(
                Notification {
                    code: err::OPEN,
                    subcode: err::OPEN_BAD_BGP_ID,
                    data: open.bgp_id.octets().to_vec(),
                },
                now,
                out,
            );
            return;
        }
        let four_octet_as = open.capability_four_octet_as().is_some();
        let offered: Vec<(u16, u8)> = open.multiprotocol().collect();
        // RFC 4760 §8: a speaker with no MP capability does IPv4 unicast only.
        let theirs = if offered.is_empty() {
            vec![(AFI_IPV4, SAFI_UNICAST)]
        } else {
            offered
        };
        let families = cfg
            .families
            .iter()
            .copied()
            .filter(|f| theirs.contains(f))
            .collect();
        let hold_time = cfg.hold_time.min(open.hold_time);
        self.ctx = CodecCtx { four_octet_as };
        let mut o = Opened {
            negotiated: Negotiated {
                remote_asn: open.asn,
                remote_id: open.bgp_id,
                hold_time,
                families,
                four_octet_as,
                route_refresh: open.supports_route_refresh(),
                graceful_restart: open.graceful_restart().cloned(),
            },
            hold_at: None,
            keepalive_at: None,
        };
        out.push(Action::Send(keepalive()));
        o.restart_hold(now);
        o.restart_keepalive(now);
        self.phase = Phase::OpenConfirm(o);
    }

    /// Restarts the hold timer of OpenConfirm or Established.
    fn restart_hold(&mut self, now: Instant) {
        if let Phase::OpenConfirm(o) | Phase::Established(o) = &mut self.phase {
            o.restart_hold(now);
        }
    }

    /// Moves the phase out; the caller puts the next one in at once (the
    /// placeholder is never seen).
    fn take_phase(&mut self) -> Phase {
        std::mem::replace(&mut self.phase, Phase::Connect)
    }

    fn notify_and_close(&mut self, n: Notification, now: Instant, out: &mut Vec<Action>) {
        let mut buf = BytesMut::with_capacity(21 + n.data.len());
        if Message::Notification(n.clone())
            .encode(&self.ctx, &mut buf)
            .is_ok()
        {
            out.push(Action::Send(buf.freeze()));
        }
        self.enter_idle(DownReason::NotificationSent(n), now, out);
    }

    /// Leave the connected states. Active sessions come back by themselves after
    /// the retry interval (§8.1.1 automatic start); passive ones stay Idle.
    fn enter_idle(&mut self, reason: DownReason, now: Instant, out: &mut Vec<Action>) {
        let ended = match self.take_phase() {
            Phase::Established(o) => Some(o.negotiated),
            _ => None,
        };
        let was_established = ended.is_some();
        let retry_at = (!self.passive).then(|| now + self.retry_interval);
        if retry_at.is_some() {
            self.bump_retry();
        }
        self.phase = Phase::Idle { retry_at, ended };
        self.last_down = Some(reason.clone());
        out.push(Action::Disconnect {
            reason,
            was_established,
        });
    }
}

/// RFC 4271 §6.2 gives Bad Peer AS no data; FRR and BIRD send the AS we saw, which
/// helps whoever reads the log on the other side.
fn bad_peer_as_data(asn: u32) -> Vec<u8> {
    match u16::try_from(asn) {
        Ok(a) => a.to_be_bytes().to_vec(),
        Err(_) => asn.to_be_bytes().to_vec(),
    }
}

/// RFC 4271 §6.8: which of two colliding connections to keep. The one initiated
/// by the speaker with the higher BGP Identifier survives.
pub fn keep_locally_initiated(local_id: Ipv4Addr, remote_id: Ipv4Addr) -> bool {
    u32::from(local_id) > u32::from(remote_id)
}

#[cfg(test)]
mod tests;
