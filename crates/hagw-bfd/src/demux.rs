//! Every session of a BFD speaker, and which one a received packet is for
//! (RFC 5881 §3, RFC 5880 §6.3 and §6.8.6), sans-IO.
//!
//! The driver reads a datagram with its source address and TTL / hop limit
//! and hands it to [`Demux::receive`]; it calls [`Demux::on_timer`] at
//! [`Demux::next_deadline`], and acts on every [`Output`]: packets to send
//! (from the session's local address, UDP 3784, TTL 255) and state changes to
//! report. Sockets, the clock and randomness stay with the driver: the
//! discriminators and every session's jitter come from the seed it supplies.
//!
//! # Demultiplexing
//! A packet whose TTL / hop limit is not 255 (or unknown) is dropped (RFC 5881
//! §5), then one that fails [`ControlPacket::decode`]. A packet with a Your
//! Discriminator goes to the session with that local discriminator, else to
//! the session of its source address (RFC 5881 §3); the session found must be
//! the source's own, or the packet is dropped as "no session" (a
//! discriminator of another peer's session is not this peer's to use). Every
//! drop is counted on the source's session if it has one, else apart (see
//! [`Demux::unattributed`]). We are always the active side: a peer with no
//! session gets none.
//!
//! # Leaving
//! [`Demux::remove`] takes a session AdminDown and forgets it, but while it
//! was Up its AdminDown is repeated for the peer's detection time (at most
//! [`LEAVING_MAX`]). One lost AdminDown would otherwise look like a failure:
//! the peer's BFD expires, and its BGP drops ours (Cease, BFD Down) — exactly
//! what a graceful restart must avoid. FRR's bfdd learnt the same
//! (frr#22643). A new session to the same peer stops the repeats.
//!
//! Addresses are compared as given: the driver passes them canonical
//! (`IpAddr::to_canonical`), so that an IPv4-mapped source finds its session.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::packet::{ControlPacket, DecodeError, Diag, State};
use crate::session::{self, Session, SessionConfig, SessionError};
use crate::TTL;

/// The AdminDown repeats of a removed session cover at most this long.
pub const LEAVING_MAX: Duration = Duration::from_secs(1);

/// What the driver must do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// Send `packet` to `peer` (UDP 3784, TTL 255) from `local`, on the
    /// session's send socket.
    Send {
        peer: IpAddr,
        local: IpAddr,
        packet: ControlPacket,
    },
    /// Send a removed session's AdminDown to `peer` again (see
    /// [`Demux::remove`]); the session is gone, so nothing counts it. After
    /// the `last` one the driver may let go of what it sends them with (as
    /// it may when [`Demux::add`] or [`Demux::cancel_leaving`] stop them).
    Repeat {
        peer: IpAddr,
        local: IpAddr,
        packet: ControlPacket,
        last: bool,
    },
    /// `peer`'s session changed state; `diag` is the local diagnostic now
    /// set, `remote` the state the peer last reported (AdminDown: its Down is
    /// no forwarding failure, RFC 5882 §3.2).
    StateChange {
        peer: IpAddr,
        from: State,
        to: State,
        diag: Diag,
        remote: State,
    },
}

/// Why [`Demux::receive`] did not give a packet to a session, or what the
/// session made of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum RxError {
    /// Dropped: TTL / hop limit not 255, or unknown (RFC 5881 §5).
    #[error("TTL / hop limit {0:?}, not 255")]
    BadTtl(Option<u8>),
    /// Dropped by the codec (RFC 5880 §6.8.6).
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// Dropped: no session of the source's has this Your Discriminator, or
    /// the source has no session.
    #[error("no session for this packet")]
    NoSession,
    /// Received (counted in `rx`), but the session ignored it.
    #[error(transparent)]
    Session(#[from] SessionError),
}

/// Packets counted on one session (or on no session): what was received,
/// and what was dropped and why.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Packets handed to the session.
    pub rx: u64,
    /// TTL / hop limit not 255, or unknown (RFC 5881 §5).
    pub dropped_bad_ttl: u64,
    /// Failed an RFC 5880 §6.8.6 check other than authentication.
    pub dropped_malformed: u64,
    /// Authentication present (unsupported) or malformed.
    pub dropped_auth: u64,
    /// Unknown peer, or a Your Discriminator that is not this peer's session.
    pub dropped_no_session: u64,
}

impl Counters {
    fn count(&mut self, e: &RxError) {
        match e {
            RxError::BadTtl(_) => self.dropped_bad_ttl += 1,
            RxError::Decode(d) if d.is_auth() => self.dropped_auth += 1,
            RxError::Decode(_) => self.dropped_malformed += 1,
            RxError::NoSession => self.dropped_no_session += 1,
            RxError::Session(_) => {}
        }
    }
}

/// One peer's session, as the demux holds it.
#[derive(Debug, Clone)]
pub struct PeerSession {
    session: Session,
    local: IpAddr,
    counters: Counters,
    changed: Instant,
}

impl PeerSession {
    /// The state machine (state, timers, what the peer said).
    pub fn session(&self) -> &Session {
        &self.session
    }
    /// The address packets go out from.
    pub fn local(&self) -> IpAddr {
        self.local
    }
    pub fn counters(&self) -> Counters {
        self.counters
    }
    /// When the state last changed (or the session was added).
    pub fn changed(&self) -> Instant {
        self.changed
    }
}

/// A removed session's AdminDown, still being repeated.
#[derive(Debug, Clone)]
struct Leaving {
    peer: IpAddr,
    local: IpAddr,
    packet: ControlPacket,
    interval: Duration,
    next: Instant,
    left: u32,
}

/// The sessions of one speaker, by peer address.
#[derive(Debug, Clone)]
pub struct Demux {
    cfg: SessionConfig,
    sessions: HashMap<IpAddr, PeerSession>,
    /// Local discriminator -> peer.
    by_disc: HashMap<u32, IpAddr>,
    unattributed: Counters,
    leaving: Vec<Leaving>,
    /// Discriminators and jitter seeds.
    rng: u64,
    /// One session's outputs, before they are tagged with its peer.
    scratch: Vec<session::Output>,
}

impl Demux {
    /// No sessions yet. Every session gets `cfg` (Detect Mult 0 is taken as
    /// 1); `seed` (any value) drives discriminators and jitter, so that a
    /// test is deterministic and the driver owns the random source.
    pub fn new(cfg: SessionConfig, seed: u64) -> Demux {
        Demux {
            cfg: SessionConfig {
                detect_mult: cfg.detect_mult.max(1),
                ..cfg
            },
            sessions: HashMap::new(),
            by_disc: HashMap::new(),
            unattributed: Counters::default(),
            leaving: Vec::new(),
            rng: seed | 1,
            scratch: Vec::new(),
        }
    }

    pub fn config(&self) -> SessionConfig {
        self.cfg
    }

    /// Starts a session to `peer` from `local`, in Down, sending its first
    /// packet at `now` (at the next [`Demux::on_timer`]). Stops the AdminDown
    /// repeats of an earlier session to `peer`: they would tear the new one
    /// down. A session to `peer` that still runs is removed first (its
    /// AdminDown comes out in `out`); a driver that routes state changes by
    /// peer removes it itself beforehand. Returns the local discriminator.
    pub fn add(
        &mut self,
        peer: IpAddr,
        local: IpAddr,
        now: Instant,
        out: &mut Vec<Output>,
    ) -> NonZeroU32 {
        if self.sessions.contains_key(&peer) {
            self.remove(peer, now, out);
        }
        self.cancel_leaving(peer);
        let disc = loop {
            if let Some(d) = NonZeroU32::new(xorshift(&mut self.rng) as u32) {
                if !self.by_disc.contains_key(&d.get()) {
                    break d;
                }
            }
        };
        let seed = xorshift(&mut self.rng);
        self.by_disc.insert(disc.get(), peer);
        self.sessions.insert(
            peer,
            PeerSession {
                session: Session::new(disc, self.cfg, seed, now),
                local,
                counters: Counters::default(),
                changed: now,
            },
        );
        disc
    }

    /// Takes `peer`'s session AdminDown (the state change and the packet
    /// come out in `out`) and forgets it. If it was Up, its AdminDown is then
    /// repeated (as [`Output::Repeat`]) twice per transmit interval, the
    /// first a quarter interval from `now`, for our Detect Mult intervals
    /// (the peer's detection time) but at most [`LEAVING_MAX`]: the peer
    /// times out Detect Mult intervals after our last periodic packet, which
    /// may be most of an interval ago, so every repeat but the last lands
    /// inside that window. Returns whether there was a session.
    pub fn remove(&mut self, peer: IpAddr, now: Instant, out: &mut Vec<Output>) -> bool {
        let Some(mut s) = self.sessions.remove(&peer) else {
            return false;
        };
        self.by_disc.remove(&s.session.local_disc());
        // The peer relies on our packets only while Up; its detection time
        // is our Detect Mult times the interval we were sending at.
        let repeat = (s.session.state() == State::Up)
            .then(|| s.session.tx_interval())
            .flatten();
        self.scratch.clear();
        s.session.set_admin_down(now, &mut self.scratch);
        let packet = self.scratch.iter().find_map(|o| match o {
            session::Output::Send(p) => Some(*p),
            session::Output::StateChange { .. } => None,
        });
        tag(peer, &mut s, &mut self.scratch, now, out);
        if let (Some(interval), Some(packet)) = (repeat, packet) {
            let step = interval / 2;
            let covers = interval.saturating_mul(u32::from(self.cfg.detect_mult));
            let left = (covers.min(LEAVING_MAX).as_nanos() / step.as_nanos().max(1)) as u32;
            if left > 0 {
                self.cancel_leaving(peer);
                self.leaving.push(Leaving {
                    peer,
                    local: s.local,
                    packet,
                    interval: step,
                    next: now + interval / 4,
                    left,
                });
            }
        }
        true
    }

    /// Stops the AdminDown repeats to `peer` (when the driver cannot send
    /// them, say: no socket).
    pub fn cancel_leaving(&mut self, peer: IpAddr) {
        self.leaving.retain(|l| l.peer != peer);
    }

    /// Whether `peer`'s AdminDown is still being repeated.
    pub fn is_leaving(&self, peer: IpAddr) -> bool {
        self.leaving.iter().any(|l| l.peer == peer)
    }

    /// Whether any AdminDown is still being repeated (a shutdown waits for
    /// them).
    pub fn any_leaving(&self) -> bool {
        !self.leaving.is_empty()
    }

    /// A datagram received from `src` with TTL / hop limit `ttl` (None if
    /// the kernel did not say): checked, decoded and handed to its session
    /// (see the module doc). A drop is counted before it is returned.
    pub fn receive(
        &mut self,
        data: &[u8],
        src: IpAddr,
        ttl: Option<u8>,
        now: Instant,
        out: &mut Vec<Output>,
    ) -> Result<(), RxError> {
        let r = self.deliver(data, src, ttl, now, out);
        if let Err(e) = &r {
            self.sessions
                .get_mut(&src)
                .map_or(&mut self.unattributed, |s| &mut s.counters)
                .count(e);
        }
        r
    }

    fn deliver(
        &mut self,
        data: &[u8],
        src: IpAddr,
        ttl: Option<u8>,
        now: Instant,
        out: &mut Vec<Output>,
    ) -> Result<(), RxError> {
        if ttl != Some(TTL) {
            return Err(RxError::BadTtl(ttl));
        }
        let pkt = ControlPacket::decode(data)?;
        let target = if pkt.your_disc != 0 {
            self.by_disc.get(&pkt.your_disc).copied()
        } else {
            self.sessions.contains_key(&src).then_some(src)
        };
        if target != Some(src) {
            return Err(RxError::NoSession);
        }
        let Some(s) = self.sessions.get_mut(&src) else {
            return Err(RxError::NoSession);
        };
        s.counters.rx += 1;
        self.scratch.clear();
        let r = s.session.handle_packet(&pkt, now, &mut self.scratch);
        tag(src, s, &mut self.scratch, now, out);
        Ok(r?)
    }

    /// Runs every session whose deadline has come (detection, periodic
    /// packets), then the AdminDown repeats that are due.
    pub fn on_timer(&mut self, now: Instant, out: &mut Vec<Output>) {
        for (&peer, s) in &mut self.sessions {
            if s.session.next_deadline().is_some_and(|d| d <= now) {
                self.scratch.clear();
                s.session.on_timer(now, &mut self.scratch);
                tag(peer, s, &mut self.scratch, now, out);
            }
        }
        for l in self.leaving.iter_mut().filter(|l| l.next <= now) {
            l.left = l.left.saturating_sub(1);
            l.next = now + l.interval;
            out.push(Output::Repeat {
                peer: l.peer,
                local: l.local,
                packet: l.packet,
                last: l.left == 0,
            });
        }
        self.leaving.retain(|l| l.left > 0);
    }

    /// The earliest instant at which [`Demux::on_timer`] has work.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.sessions
            .values()
            .filter_map(|s| s.session.next_deadline())
            .chain(self.leaving.iter().map(|l| l.next))
            .min()
    }

    pub fn get(&self, peer: IpAddr) -> Option<&PeerSession> {
        self.sessions.get(&peer)
    }

    pub fn contains(&self, peer: IpAddr) -> bool {
        self.sessions.contains_key(&peer)
    }

    /// Every session, in no particular order.
    pub fn sessions(&self) -> impl Iterator<Item = (IpAddr, &PeerSession)> {
        self.sessions.iter().map(|(&p, s)| (p, s))
    }

    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    /// Drops no session could be charged with: packets from peers without a
    /// session.
    pub fn unattributed(&self) -> Counters {
        self.unattributed
    }
}

/// Moves one session's outputs into `out`, tagged with its peer, noting
/// when its state changed.
fn tag(
    peer: IpAddr,
    s: &mut PeerSession,
    from: &mut Vec<session::Output>,
    now: Instant,
    out: &mut Vec<Output>,
) {
    for o in from.drain(..) {
        out.push(match o {
            session::Output::Send(packet) => Output::Send {
                peer,
                local: s.local,
                packet,
            },
            session::Output::StateChange { from, to, diag } => {
                s.changed = now;
                Output::StateChange {
                    peer,
                    from,
                    to,
                    diag,
                    remote: s.session.remote_state(),
                }
            }
        });
    }
}

fn xorshift(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

#[cfg(test)]
mod tests;
