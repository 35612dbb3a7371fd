//! One BFD session's state machine (RFC 5880 §6.8, asynchronous mode), sans-IO.
//!
//! [`crate::demux`] demultiplexes received packets to a session (by Your
//! Discriminator, or by source address when that is zero: RFC 5880 §6.3,
//! RFC 5881 §3), checks the TTL (RFC 5881 §5), decodes with
//! [`ControlPacket::decode`] and hands the packet to
//! [`Session::handle_packet`]. It calls [`Session::on_timer`] at
//! [`Session::next_deadline`], and the driver sends every [`Output::Send`] to
//! the peer.
//!
//! Timers:
//! * while the session is not Up, bfd.DesiredMinTxInterval is at least one
//!   second (§6.8.3 "slow start"); on reaching Up the configured interval is
//!   advertised with a Poll Sequence (§6.5);
//! * [`Session::set_intervals`] starts a Poll Sequence; until its Final
//!   arrives an increased transmit interval is not used yet and a reduced
//!   receive interval does not shorten the detection time (§6.8.3);
//! * periodic packets are jittered to 75-100% of the interval (75-90% with
//!   Detect Mult 1, §6.8.7), from a xorshift generator seeded by the driver,
//!   so tests are deterministic;
//! * detection time = the remote Detect Mult × max(our RequiredMinRxInterval,
//!   the remote's DesiredMinTxInterval) (§6.8.4).
//!
//! Beyond the periodic packets, a packet goes out at once on every state
//! change and when a Poll Sequence starts (so the handshake and the switch
//! to fast timers do not wait for a slow-start interval), and a Final answers
//! every Poll immediately (§6.8.7).

use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::packet::{ControlPacket, Diag, State};

/// The minimum bfd.DesiredMinTxInterval while the session is not Up.
pub const SLOW_TX: Duration = Duration::from_secs(1);

/// What the session is configured with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionConfig {
    /// bfd.DesiredMinTxInterval once Up.
    pub desired_min_tx: Duration,
    /// bfd.RequiredMinRxInterval.
    pub required_min_rx: Duration,
    /// bfd.DetectMult (0 is treated as 1: a zero Detect Mult is invalid on
    /// the wire).
    pub detect_mult: u8,
}

impl SessionConfig {
    /// The same interval both ways.
    pub fn new(interval: Duration, detect_mult: u8) -> SessionConfig {
        SessionConfig {
            desired_min_tx: interval,
            required_min_rx: interval,
            detect_mult,
        }
    }
}

/// What the driver must do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// Send this packet to the peer (UDP 3784, TTL 255).
    Send(ControlPacket),
    /// bfd.SessionState changed; `diag` is the local diagnostic now set.
    StateChange { from: State, to: State, diag: Diag },
}

/// Why [`Session::handle_packet`] discarded a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum SessionError {
    #[error("Your Discriminator {got:#x} is not ours ({ours:#x})")]
    WrongDiscriminator { got: u32, ours: u32 },
    #[error("the session is administratively down")]
    AdminDown,
}

/// One session (RFC 5880 §6.8.1 state variables plus timers).
#[derive(Debug, Clone)]
pub struct Session {
    cfg: SessionConfig,
    state: State,
    remote_state: State,
    local_disc: u32,
    remote_disc: u32,
    local_diag: Diag,
    remote_diag: Diag,
    /// bfd.DesiredMinTxInterval, as advertised.
    desired_min_tx: Duration,
    /// bfd.RequiredMinRxInterval, as advertised.
    required_min_rx: Duration,
    /// The DesiredMinTxInterval that paces our packets (differs from the
    /// advertised one while a Poll for an increase is pending).
    tx_in_use: Duration,
    /// The RequiredMinRxInterval the detection time uses (differs while a
    /// Poll for a decrease is pending).
    rx_in_use: Duration,
    /// bfd.RemoteMinRxInterval (initially 1 µs).
    remote_min_rx: Duration,
    remote_desired_min_tx: Duration,
    /// 0 until a packet arrives (and again after a detection timeout).
    remote_detect_mult: u8,
    /// A Poll Sequence is in progress: our packets carry P until a Final.
    poll: bool,
    tx_deadline: Option<Instant>,
    detect_deadline: Option<Instant>,
    rng: u64,
}

fn us(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

fn from_us(v: u32) -> Duration {
    Duration::from_micros(u64::from(v))
}

impl Session {
    /// A new session in Down that sends its first packet at `now`.
    /// `rng_seed` drives the transmit jitter (any value; 0 is remapped).
    pub fn new(local_disc: NonZeroU32, cfg: SessionConfig, rng_seed: u64, now: Instant) -> Session {
        let cfg = SessionConfig {
            detect_mult: cfg.detect_mult.max(1),
            ..cfg
        };
        let slow = cfg.desired_min_tx.max(SLOW_TX);
        Session {
            cfg,
            state: State::Down,
            remote_state: State::Down,
            local_disc: local_disc.get(),
            remote_disc: 0,
            local_diag: Diag::NONE,
            remote_diag: Diag::NONE,
            desired_min_tx: slow,
            required_min_rx: cfg.required_min_rx,
            tx_in_use: slow,
            rx_in_use: cfg.required_min_rx,
            remote_min_rx: Duration::from_micros(1),
            remote_desired_min_tx: Duration::ZERO,
            remote_detect_mult: 0,
            poll: false,
            tx_deadline: Some(now),
            detect_deadline: None,
            rng: if rng_seed == 0 {
                0x9e37_79b9_7f4a_7c15
            } else {
                rng_seed
            },
        }
    }

    pub fn state(&self) -> State {
        self.state
    }
    pub fn remote_state(&self) -> State {
        self.remote_state
    }
    pub fn local_disc(&self) -> u32 {
        self.local_disc
    }
    pub fn remote_disc(&self) -> u32 {
        self.remote_disc
    }
    pub fn local_diag(&self) -> Diag {
        self.local_diag
    }
    pub fn remote_diag(&self) -> Diag {
        self.remote_diag
    }
    pub fn config(&self) -> SessionConfig {
        self.cfg
    }
    /// bfd.DesiredMinTxInterval as advertised now.
    pub fn desired_min_tx(&self) -> Duration {
        self.desired_min_tx
    }
    /// bfd.RequiredMinRxInterval as advertised now.
    pub fn required_min_rx(&self) -> Duration {
        self.required_min_rx
    }
    /// bfd.RemoteMinRxInterval.
    pub fn remote_min_rx(&self) -> Duration {
        self.remote_min_rx
    }
    pub fn remote_desired_min_tx(&self) -> Duration {
        self.remote_desired_min_tx
    }
    /// The remote Detect Mult; 0 until a packet arrives.
    pub fn remote_detect_mult(&self) -> u8 {
        self.remote_detect_mult
    }
    pub fn poll_in_progress(&self) -> bool {
        self.poll
    }

    /// The periodic transmit interval before jitter: max(DesiredMinTx,
    /// RemoteMinRx); `None` when the remote asked for no packets (§6.8.7).
    pub fn tx_interval(&self) -> Option<Duration> {
        (!self.remote_min_rx.is_zero()).then(|| self.tx_in_use.max(self.remote_min_rx))
    }

    /// The detection time (§6.8.4); `None` before any packet arrived.
    pub fn detection_time(&self) -> Option<Duration> {
        (self.remote_detect_mult != 0).then(|| {
            self.rx_in_use
                .max(self.remote_desired_min_tx)
                .saturating_mul(u32::from(self.remote_detect_mult))
        })
    }

    /// The earliest instant at which [`Session::on_timer`] has work.
    pub fn next_deadline(&self) -> Option<Instant> {
        match (self.tx_deadline, self.detect_deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// A received packet that passed the codec checks (RFC 5880 §6.8.6).
    pub fn handle_packet(
        &mut self,
        pkt: &ControlPacket,
        now: Instant,
        out: &mut Vec<Output>,
    ) -> Result<(), SessionError> {
        if pkt.your_disc != 0 && pkt.your_disc != self.local_disc {
            return Err(SessionError::WrongDiscriminator {
                got: pkt.your_disc,
                ours: self.local_disc,
            });
        }
        self.remote_disc = pkt.my_disc;
        self.remote_state = pkt.state;
        self.remote_diag = pkt.diag;
        self.remote_min_rx = from_us(pkt.required_min_rx_us);
        self.remote_desired_min_tx = from_us(pkt.desired_min_tx_us);
        self.remote_detect_mult = pkt.detect_mult;
        if pkt.final_ && self.poll {
            self.poll = false;
            self.tx_in_use = self.desired_min_tx;
            self.rx_in_use = self.required_min_rx;
        }
        // The transmit interval may have shrunk: do not wait out the old one.
        if let Some(iv) = self.tx_interval() {
            let latest = now.checked_add(iv);
            if self.tx_deadline.is_none() || self.tx_deadline > latest {
                let j = self.jittered(iv);
                self.tx_deadline = now.checked_add(j);
            }
        }
        if self.state == State::AdminDown {
            return Err(SessionError::AdminDown);
        }
        match (self.state, pkt.state) {
            (State::Init | State::Up, State::AdminDown) => {
                self.set_state(State::Down, Diag::NEIGHBOR_SIGNALED_DOWN, now, out)
            }
            (State::Down, State::Down) => self.set_state(State::Init, Diag::NONE, now, out),
            (State::Down, State::Init) => self.set_state(State::Up, Diag::NONE, now, out),
            (State::Init, State::Init | State::Up) => {
                self.set_state(State::Up, Diag::NONE, now, out)
            }
            (State::Up, State::Down) => {
                self.set_state(State::Down, Diag::NEIGHBOR_SIGNALED_DOWN, now, out)
            }
            _ => {}
        }
        if pkt.poll {
            // §6.8.7: answer a Poll at once, with F and never with P.
            let mut p = self.packet();
            p.poll = false;
            p.final_ = true;
            out.push(Output::Send(p));
        }
        self.detect_deadline = self.detection_time().and_then(|d| now.checked_add(d));
        Ok(())
    }

    /// Timers: detection timeout and periodic transmission.
    pub fn on_timer(&mut self, now: Instant, out: &mut Vec<Output>) {
        if self.detect_deadline.is_some_and(|d| d <= now) {
            self.detect_deadline = None;
            // §6.8.1: bfd.RemoteDiscr is zeroed after a Detection Time
            // without packets; §6.8.4: Init/Up go Down.
            self.remote_disc = 0;
            self.remote_state = State::Down;
            self.remote_detect_mult = 0;
            if matches!(self.state, State::Init | State::Up) {
                self.set_state(State::Down, Diag::CONTROL_DETECTION_TIME_EXPIRED, now, out);
            }
        }
        if self.tx_deadline.is_some_and(|d| d <= now) {
            self.transmit(now, out);
        }
    }

    /// Takes the session administratively down (§6.8.16): AdminDown with
    /// diag 7, announced at once; received packets are then ignored.
    pub fn set_admin_down(&mut self, now: Instant, out: &mut Vec<Output>) {
        if self.state != State::AdminDown {
            self.set_state(State::AdminDown, Diag::ADMINISTRATIVELY_DOWN, now, out);
        }
    }

    /// Leaves AdminDown for Down.
    pub fn set_admin_up(&mut self, now: Instant, out: &mut Vec<Output>) {
        if self.state == State::AdminDown {
            self.set_state(State::Down, Diag::NONE, now, out);
        }
    }

    /// New intervals (§6.8.3). A change of what we advertise starts a Poll
    /// Sequence; while it runs an increased transmit interval is not used
    /// yet and a reduced receive interval does not shorten the detection time.
    pub fn set_intervals(&mut self, cfg: SessionConfig, now: Instant, out: &mut Vec<Output>) {
        self.cfg = SessionConfig {
            detect_mult: cfg.detect_mult.max(1),
            ..cfg
        };
        let tx = if self.state == State::Up {
            cfg.desired_min_tx
        } else {
            cfg.desired_min_tx.max(SLOW_TX)
        };
        self.change_intervals(tx, cfg.required_min_rx, now, out);
    }

    fn change_intervals(
        &mut self,
        tx: Duration,
        rx: Duration,
        now: Instant,
        out: &mut Vec<Output>,
    ) {
        if tx == self.desired_min_tx && rx == self.required_min_rx {
            // Detect Mult may have changed: tell the peer in the next packet.
            return;
        }
        self.tx_in_use = self.tx_in_use.min(tx);
        self.rx_in_use = self.rx_in_use.max(rx);
        self.desired_min_tx = tx;
        self.required_min_rx = rx;
        self.poll = true;
        self.transmit(now, out);
    }

    fn set_state(&mut self, to: State, diag: Diag, now: Instant, out: &mut Vec<Output>) {
        let from = self.state;
        self.state = to;
        self.local_diag = diag;
        out.push(Output::StateChange { from, to, diag });
        if to == State::Up {
            // Leave slow start: advertise the configured interval by Poll.
            self.change_intervals(self.cfg.desired_min_tx, self.cfg.required_min_rx, now, out);
            if self.poll {
                return; // the Poll packet was just sent
            }
        } else {
            // Not Up: at least one second, taking effect at once (the peer
            // learns it from this very packet; no Poll is needed to slow down
            // a session that is not Up).
            let slow = self.cfg.desired_min_tx.max(SLOW_TX);
            self.desired_min_tx = slow;
            self.tx_in_use = slow;
            self.required_min_rx = self.cfg.required_min_rx;
            self.rx_in_use = self.cfg.required_min_rx;
            self.poll = false;
            if to == State::AdminDown {
                self.detect_deadline = None;
            }
        }
        self.transmit(now, out);
    }

    fn packet(&self) -> ControlPacket {
        ControlPacket {
            diag: self.local_diag,
            state: self.state,
            poll: self.poll,
            final_: false,
            cpi: false,
            demand: false,
            detect_mult: self.cfg.detect_mult,
            my_disc: self.local_disc,
            your_disc: self.remote_disc,
            desired_min_tx_us: us(self.desired_min_tx),
            required_min_rx_us: us(self.required_min_rx),
            required_min_echo_rx_us: 0,
        }
    }

    /// Sends a packet now and schedules the next periodic one.
    fn transmit(&mut self, now: Instant, out: &mut Vec<Output>) {
        out.push(Output::Send(self.packet()));
        self.tx_deadline = match self.tx_interval() {
            Some(iv) => {
                let j = self.jittered(iv);
                now.checked_add(j)
            }
            None => None,
        };
    }

    /// 75-100% of `iv` (75-90% with Detect Mult 1).
    fn jittered(&mut self, iv: Duration) -> Duration {
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        let span: u64 = if self.cfg.detect_mult == 1 { 15 } else { 25 };
        // Parts per 10_000 of the interval: 7500 ..= 7500 + span * 100.
        let ppm = 7500 + (x % (span * 100 + 1));
        let nanos = iv.as_nanos().saturating_mul(u128::from(ppm)) / 10_000;
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }
}

#[cfg(test)]
mod tests;
