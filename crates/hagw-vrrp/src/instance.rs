//! One virtual router's state machine (RFC 9568 §6), sans-IO.
//!
//! The driver hands every VRRP packet received on the interface to
//! [`Instance::handle_packet`] with its source, destination and TTL; the
//! instance checks them (RFC 9568 §7.1), decodes, and counts what it drops.
//! It calls [`Instance::on_timer`] at [`Instance::next_deadline`] and carries
//! out every [`Output`] in order.
//!
//! Timers, per RFC 9568 §6.1, kept in nanoseconds (never rounded to
//! centiseconds):
//! * Skew_Time = ((256 - Priority) × Master_Adver_Interval) / 256;
//! * Master_Down_Interval = 3 × Master_Adver_Interval + Skew_Time, where
//!   Master_Adver_Interval is the interval in the Master's adverts (adopted
//!   by a Backup from each advert it accepts), and at first our own.
//!
//! Beyond the RFC:
//! * a Master that hears an advert it beats (lower priority, or equal
//!   priority from a lower address) answers at once: the other side learns
//!   now that it must step down (keepalived #950). RFC 9568 would discard
//!   the advert. Such adverts mean a split brain; the Master emits
//!   [`Output::Announce`] when the first one comes and again when they have
//!   stopped for a Master_Down_Interval (the split healed): the neighbours'
//!   ARP/ND caches, which the other side took over, are repaired
//!   (keepalived #166, #1528). Not on every such advert: while a one-way
//!   split lasts (our adverts lost, theirs heard) that would have both
//!   sides fight over the caches at every interval;
//! * a Master that steps down for a better advert sends one last advert
//!   with its own priority: when a partition heals and the winner's advert
//!   crosses first, the loser would otherwise step down without the winner
//!   ever hearing that there were two Masters, and the caches the loser
//!   took over would stay wrong. A Backup takes that advert like any other
//!   (the winner's follows within an interval);
//! * `startup_delay`: a non-owner stays Backup at least max(startup_delay,
//!   Master_Down_Interval) after [`Instance::start`], and no Backup becomes
//!   Master before the delay is over, so a node whose links come up slowly
//!   does not start as a second Master (keepalived #951, #2387);
//! * [`Instance::peer_down`]: BFD saw the current Master die, so a Backup
//!   takes over at once instead of waiting Master_Down_Interval;
//! * the Fenced state ([`Instance::fence`]): the cloud says the virtual
//!   address is owned elsewhere, so we hold no addresses, send no adverts
//!   and never become Master until a peer's advert or
//!   [`Instance::unfence`] brings us back to Backup.
//!
//! RFC 9568 §7.1 had an owner drop every advert; erratum 8298 (verified)
//! turned that into "SHOULD log": adverts are processed as usual, so two
//! misconfigured owners resolve to one Master, and an owner hearing another
//! Master is counted in [`Counters::owner_conflict`].

use std::net::{IpAddr, Ipv6Addr};
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::packet::{Advertisement, ChecksumMode, DecodeError, Family, MAX_INTERVAL_CS};
use crate::{multicast_group, TTL};

/// Priority of the address owner, which always preempts (RFC 9568 §6.1).
pub const OWNER_PRIORITY: u8 = 255;
/// Advertisement intervals are centiseconds on the wire.
pub const INTERVAL_STEP: Duration = Duration::from_millis(10);
/// The longest startup delay accepted: anything longer is a typo.
pub const MAX_STARTUP_DELAY: Duration = Duration::from_secs(3600);

/// Where adverts go. Explicit so an empty peer list can never silently mean
/// multicast.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Transport {
    /// To 224.0.0.18 / ff02::12 (RFC 9568 §5.1.1.2, §5.1.2.2).
    Multicast,
    /// One copy to each peer; adverts from anyone else are dropped. For
    /// networks without multicast (most clouds).
    Unicast(Vec<IpAddr>),
}

/// What the instance is configured with.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct InstanceConfig {
    /// VRID, 1..=255.
    pub vrid: u8,
    /// 1..=255; 255 means we own the virtual addresses.
    pub priority: u8,
    /// Advertisement_Interval: 10 ms steps, 10 ms..=40.95 s.
    pub advert_interval: Duration,
    /// Preempt_Mode: a higher-priority Backup takes over from a lower
    /// Master (an owner always does).
    pub preempt: bool,
    /// Accept_Mode; only carried here, the driver applies it.
    pub accept: bool,
    pub transport: Transport,
    /// Our primary address (IPv4) or link-local address (IPv6): the
    /// source of our adverts, and the tie-breaker at equal priority. Its
    /// family is the instance's.
    pub source: IpAddr,
    /// The protected addresses, 1..=255 of them, of the source's family;
    /// for IPv6 the first is link-local (RFC 9568 §6.1).
    pub virtual_addresses: Vec<IpAddr>,
    pub checksum_mode: ChecksumMode,
    /// Zero for none; at most [`MAX_STARTUP_DELAY`].
    pub startup_delay: Duration,
}

impl InstanceConfig {
    /// Multicast, preempting, 1 s, RFC 9568 checksums, no startup delay.
    pub fn new(vrid: u8, priority: u8, source: IpAddr, virtual_addresses: Vec<IpAddr>) -> Self {
        InstanceConfig {
            vrid,
            priority,
            advert_interval: Duration::from_secs(1),
            preempt: true,
            accept: false,
            transport: Transport::Multicast,
            source,
            virtual_addresses,
            checksum_mode: ChecksumMode::Rfc9568,
            startup_delay: Duration::ZERO,
        }
    }

    /// Every problem that would stop the instance from working.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.vrid == 0 {
            return Err(ConfigError::ZeroVrid);
        }
        if self.priority == 0 {
            return Err(ConfigError::ZeroPriority);
        }
        interval_cs(self.advert_interval)?;
        if self.source.is_unspecified() || self.source.is_multicast() {
            return Err(ConfigError::BadSource(self.source));
        }
        let n = self.virtual_addresses.len();
        if n == 0 || n > 255 {
            return Err(ConfigError::VirtualAddressCount(n));
        }
        let peers: &[IpAddr] = match &self.transport {
            Transport::Multicast => &[],
            Transport::Unicast(p) if p.is_empty() => return Err(ConfigError::NoPeers),
            Transport::Unicast(p) => p,
        };
        let family = Family::of(self.source);
        if let Some(&addr) = self
            .virtual_addresses
            .iter()
            .chain(peers)
            .find(|a| Family::of(**a) != family)
        {
            return Err(ConfigError::FamilyMismatch {
                src: self.source,
                addr,
            });
        }
        if let Some(IpAddr::V6(first)) = self.virtual_addresses.first() {
            if !first.is_unicast_link_local() {
                return Err(ConfigError::FirstNotLinkLocal(*first));
            }
        }
        if self.startup_delay > MAX_STARTUP_DELAY {
            return Err(ConfigError::StartupDelay(self.startup_delay));
        }
        Ok(())
    }
}

/// A configuration the instance refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum ConfigError {
    #[error("VRID 0 is reserved")]
    ZeroVrid,
    #[error("priority 0 is reserved for a Master that is leaving")]
    ZeroPriority,
    #[error("advertisement interval {0:?} is not a multiple of 10 ms within 10 ms..=40.95 s")]
    Interval(Duration),
    #[error("source address {0} is unspecified or multicast")]
    BadSource(IpAddr),
    #[error("{0} virtual addresses: 1 to 255 are allowed")]
    VirtualAddressCount(usize),
    #[error("unicast transport with no peers")]
    NoPeers,
    #[error("{addr} is not of the family of the source {src}")]
    FamilyMismatch { src: IpAddr, addr: IpAddr },
    #[error("the first IPv6 virtual address {0} is not link-local")]
    FirstNotLinkLocal(Ipv6Addr),
    #[error("startup delay {0:?} exceeds an hour")]
    StartupDelay(Duration),
}

/// The state, without its data: for status and [`Output::StateChange`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum StateKind {
    Initialize,
    Backup,
    Master,
    /// Stepped down because the cloud says the address is owned elsewhere.
    Fenced,
}

impl StateKind {
    pub fn name(self) -> &'static str {
        match self {
            StateKind::Initialize => "Initialize",
            StateKind::Backup => "Backup",
            StateKind::Master => "Master",
            StateKind::Fenced => "Fenced",
        }
    }
}

impl std::fmt::Display for StateKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Why the state changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// [`Instance::start`].
    Start,
    /// Master_Down_Timer fired (or the startup delay ended).
    MasterDown,
    /// [`Instance::peer_down`] for the current Master.
    PeerDown,
    /// A Master heard a higher priority, or an equal one from a greater
    /// address (RFC 9568 §6.4.3).
    Preempted,
    /// [`Instance::shutdown`].
    Shutdown,
    /// [`Instance::fence`].
    Fence,
    /// [`Instance::unfence`].
    Unfence,
    /// A Fenced instance accepted an advert from a peer.
    Advert,
}

impl Reason {
    pub fn name(self) -> &'static str {
        match self {
            Reason::Start => "start",
            Reason::MasterDown => "master down timer",
            Reason::PeerDown => "peer down",
            Reason::Preempted => "preempted",
            Reason::Shutdown => "shutdown",
            Reason::Fence => "fenced",
            Reason::Unfence => "unfenced",
            Reason::Advert => "advert received",
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What the driver must do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Send `payload` (the VRRP message, checksum included) to `dst` from
    /// the configured source, IP protocol 112, TTL / hop limit 255.
    Transmit { dst: IpAddr, payload: Vec<u8> },
    StateChange {
        from: StateKind,
        to: StateKind,
        reason: Reason,
    },
    /// Configure these virtual addresses (we are Master).
    AddVirtualAddresses(Vec<IpAddr>),
    /// Remove them (we stopped being Master).
    RemoveVirtualAddresses(Vec<IpAddr>),
    /// Send gratuitous ARP (IPv4) or unsolicited Neighbor Advertisements
    /// with the Router flag (IPv6) for these addresses.
    Announce(Vec<IpAddr>),
}

/// Why [`Instance::handle_packet`] dropped a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum Discard {
    #[error("the instance is not running")]
    NotRunning,
    #[error("TTL / hop limit {0} is not 255")]
    Ttl(u8),
    #[error("{0} is not a configured peer")]
    NotPeer(IpAddr),
    #[error("our own advert, looped back")]
    Looped,
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// Normal on a shared interface: counted apart from errors.
    #[error("VRID {0} is another virtual router's")]
    OtherVrid(u8),
}

/// Packet counters, for status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Counters {
    /// Adverts that passed every check.
    pub adverts_in: u64,
    /// One per [`Output::Transmit`].
    pub adverts_out: u64,
    pub priority_zero_in: u64,
    pub priority_zero_out: u64,
    pub became_master: u64,
    /// Accepted adverts whose address list differs from ours (RFC 9568 §7.1:
    /// MAY be logged, still accepted).
    pub address_list_mismatch: u64,
    /// Adverts (priority above 0) heard while we are the address owner: a
    /// second owner or Master is misconfigured (RFC 9568 erratum 8298: log).
    pub owner_conflict: u64,
    /// Split brains seen to end (adverts we beat stopped coming).
    pub split_brain_healed: u64,
    pub other_vrid: u64,
    /// Dropped while in Initialize.
    pub drop_not_running: u64,
    pub drop_ttl: u64,
    pub drop_not_peer: u64,
    pub drop_looped: u64,
    pub drop_version: u64,
    pub drop_type: u64,
    pub drop_checksum: u64,
    /// Truncated, wrong length or address count, wrong family, interval 0.
    pub drop_malformed: u64,
}

impl Counters {
    fn count(&mut self, d: &Discard) {
        let c = match d {
            Discard::NotRunning => &mut self.drop_not_running,
            Discard::Ttl(_) => &mut self.drop_ttl,
            Discard::NotPeer(_) => &mut self.drop_not_peer,
            Discard::Looped => &mut self.drop_looped,
            Discard::OtherVrid(_) => &mut self.other_vrid,
            Discard::Decode(DecodeError::BadVersion(_)) => &mut self.drop_version,
            Discard::Decode(DecodeError::BadType(_)) => &mut self.drop_type,
            Discard::Decode(DecodeError::ChecksumMismatch { .. }) => &mut self.drop_checksum,
            Discard::Decode(_) => &mut self.drop_malformed,
        };
        *c += 1;
    }
}

/// The Master we follow: the sender of the last advert we accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Heard {
    address: IpAddr,
    priority: u8,
}

/// Backup's data (RFC 9568 §6.4.2).
#[derive(Debug, Clone, Copy)]
struct Backup {
    master_down_at: Instant,
    /// Master_Adver_Interval.
    master_adver_interval: Duration,
    master: Option<Heard>,
}

#[derive(Debug, Clone, Copy)]
enum State {
    Initialize,
    Backup(Backup),
    Master {
        advert_at: Instant,
        /// A split brain: adverts we beat are heard; it has healed when
        /// none came by this instant.
        split_until: Option<Instant>,
    },
    /// Like Backup without the timer: it never takes over by itself.
    Fenced {
        master_adver_interval: Duration,
        master: Option<Heard>,
    },
}

impl State {
    fn kind(&self) -> StateKind {
        match self {
            State::Initialize => StateKind::Initialize,
            State::Backup(_) => StateKind::Backup,
            State::Master { .. } => StateKind::Master,
            State::Fenced { .. } => StateKind::Fenced,
        }
    }
}

/// One virtual router of one family on one interface.
#[derive(Debug, Clone)]
pub struct Instance {
    cfg: InstanceConfig,
    family: Family,
    /// Advertisement_Interval in centiseconds.
    interval_cs: u16,
    /// The current priority: the configured one until [`Instance::set_priority`].
    priority: u8,
    /// Our virtual addresses sorted, to compare with advertised lists.
    sorted_vips: Vec<IpAddr>,
    state: State,
    /// No Backup becomes Master before this (the startup delay).
    hold_until: Option<Instant>,
    last_transition: Option<Instant>,
    counters: Counters,
}

fn interval_cs(d: Duration) -> Result<u16, ConfigError> {
    let step = INTERVAL_STEP.as_nanos();
    let cs = d.as_nanos() / step;
    if cs * step != d.as_nanos() {
        return Err(ConfigError::Interval(d));
    }
    u16::try_from(cs)
        .ok()
        .filter(|cs| (1..=MAX_INTERVAL_CS).contains(cs))
        .ok_or(ConfigError::Interval(d))
}

fn from_cs(cs: u16) -> Duration {
    INTERVAL_STEP * u32::from(cs)
}

/// Skew_Time for `priority` (RFC 9568 §6.1), exact to the nanosecond.
pub fn skew_time(priority: u8, master_adver_interval: Duration) -> Duration {
    let n = master_adver_interval.as_nanos() * (256 - u128::from(priority)) / 256;
    Duration::from_nanos(u64::try_from(n).unwrap_or(u64::MAX))
}

/// Master_Down_Interval for `priority` (RFC 9568 §6.1).
pub fn master_down_interval(priority: u8, master_adver_interval: Duration) -> Duration {
    master_adver_interval.saturating_mul(3) + skew_time(priority, master_adver_interval)
}

/// `now + d`; the durations here are bounded (at most 3 × 40.95 s plus an
/// hour), so this cannot overflow a real clock: `now` is only a fallback.
fn after(now: Instant, d: Duration) -> Instant {
    now.checked_add(d).unwrap_or(now)
}

impl Instance {
    /// A stopped instance (Initialize); [`Instance::start`] starts it.
    pub fn new(cfg: InstanceConfig) -> Result<Instance, ConfigError> {
        cfg.validate()?;
        let interval_cs = interval_cs(cfg.advert_interval)?;
        let mut sorted_vips = cfg.virtual_addresses.clone();
        sorted_vips.sort_unstable();
        Ok(Instance {
            family: Family::of(cfg.source),
            interval_cs,
            priority: cfg.priority,
            sorted_vips,
            state: State::Initialize,
            hold_until: None,
            last_transition: None,
            counters: Counters::default(),
            cfg,
        })
    }

    pub fn config(&self) -> &InstanceConfig {
        &self.cfg
    }
    pub fn family(&self) -> Family {
        self.family
    }
    pub fn state(&self) -> StateKind {
        self.state.kind()
    }
    /// The current priority (the configured one, or as tracking set it).
    pub fn priority(&self) -> u8 {
        self.priority
    }
    pub fn counters(&self) -> &Counters {
        &self.counters
    }
    /// When the state last changed; `None` before [`Instance::start`].
    pub fn last_transition(&self) -> Option<Instant> {
        self.last_transition
    }

    /// The current Master: us when Master, else the sender of the last
    /// advert accepted in this Backup (or Fenced) period.
    pub fn master(&self) -> Option<IpAddr> {
        match &self.state {
            State::Master { .. } => Some(self.cfg.source),
            State::Backup(b) => b.master.map(|m| m.address),
            State::Fenced { master, .. } => master.map(|m| m.address),
            State::Initialize => None,
        }
    }

    /// The current Master's priority, as last advertised.
    pub fn master_priority(&self) -> Option<u8> {
        match &self.state {
            State::Master { .. } => Some(self.priority),
            State::Backup(b) => b.master.map(|m| m.priority),
            State::Fenced { master, .. } => master.map(|m| m.priority),
            State::Initialize => None,
        }
    }

    /// Master_Adver_Interval: the Master's advertised interval as a Backup
    /// learnt it; our own when Master or before any advert.
    pub fn master_advert_interval(&self) -> Duration {
        match &self.state {
            State::Backup(b) => b.master_adver_interval,
            State::Fenced {
                master_adver_interval,
                ..
            } => *master_adver_interval,
            State::Master { .. } | State::Initialize => self.cfg.advert_interval,
        }
    }

    /// The earliest instant at which [`Instance::on_timer`] has work.
    pub fn next_deadline(&self) -> Option<Instant> {
        match &self.state {
            State::Backup(b) => Some(self.takeover_at(b)),
            State::Master {
                advert_at,
                split_until,
            } => Some(split_until.map_or(*advert_at, |s| s.min(*advert_at))),
            State::Initialize | State::Fenced { .. } => None,
        }
    }

    fn takeover_at(&self, b: &Backup) -> Instant {
        match self.hold_until {
            Some(h) => b.master_down_at.max(h),
            None => b.master_down_at,
        }
    }

    /// Whether we take over from a lower-priority Master.
    fn preempts(&self) -> bool {
        self.cfg.preempt || self.priority == OWNER_PRIORITY
    }

    fn backup(&self, now: Instant, mai: Duration, master: Option<Heard>) -> Backup {
        Backup {
            master_down_at: after(now, master_down_interval(self.priority, mai)),
            master_adver_interval: mai,
            master,
        }
    }

    /// The Startup event (RFC 9568 §6.4.1): the owner becomes Master at once,
    /// anyone else Backup. With a startup delay the owner waits it out as a
    /// Backup, and a non-owner's first Master_Down_Timer is at least the
    /// delay. Ignored unless in Initialize.
    pub fn start(&mut self, now: Instant, out: &mut Vec<Output>) {
        if !matches!(self.state, State::Initialize) {
            return;
        }
        let delay = self.cfg.startup_delay;
        self.hold_until = (!delay.is_zero()).then(|| after(now, delay));
        let own = self.cfg.advert_interval;
        if self.priority == OWNER_PRIORITY {
            if delay.is_zero() {
                self.become_master(Reason::Start, now, out);
                return;
            }
            let b = Backup {
                master_down_at: after(now, delay),
                master_adver_interval: own,
                master: None,
            };
            self.set_state(State::Backup(b), Reason::Start, now, out);
            return;
        }
        let mut b = self.backup(now, own, None);
        b.master_down_at = b.master_down_at.max(after(now, delay));
        self.set_state(State::Backup(b), Reason::Start, now, out);
    }

    /// The Shutdown event (RFC 9568 §6.4.2, §6.4.3): a Master sends a
    /// priority-0 advert (so a Backup takes over after Skew_Time instead of
    /// Master_Down_Interval) and removes its addresses.
    pub fn shutdown(&mut self, now: Instant, out: &mut Vec<Output>) {
        let was_master = matches!(self.state, State::Master { .. });
        if matches!(self.state, State::Initialize) {
            return;
        }
        self.set_state(State::Initialize, Reason::Shutdown, now, out);
        self.hold_until = None;
        if was_master {
            self.send_advert(0, out);
            out.push(Output::RemoveVirtualAddresses(
                self.cfg.virtual_addresses.clone(),
            ));
        }
    }

    /// A received VRRP packet: `payload` is the IP payload, `ttl` the
    /// received TTL / hop limit. Everything invalid is dropped and counted
    /// (RFC 9568 §7.1); the error says why.
    pub fn handle_packet(
        &mut self,
        src: IpAddr,
        dst: IpAddr,
        ttl: u8,
        payload: &[u8],
        now: Instant,
        out: &mut Vec<Output>,
    ) -> Result<(), Discard> {
        let r = self.check(src, dst, ttl, payload);
        let adv = match r {
            Ok(adv) => adv,
            Err(d) => {
                self.counters.count(&d);
                return Err(d);
            }
        };
        self.counters.adverts_in += 1;
        if adv.priority == 0 {
            self.counters.priority_zero_in += 1;
        }
        let mut theirs = adv.addresses.clone();
        theirs.sort_unstable();
        if theirs != self.sorted_vips {
            self.counters.address_list_mismatch += 1;
        }
        if self.priority == OWNER_PRIORITY && adv.priority != 0 {
            self.counters.owner_conflict += 1;
        }
        self.on_advert(src, &adv, now, out);
        Ok(())
    }

    fn check(
        &self,
        src: IpAddr,
        dst: IpAddr,
        ttl: u8,
        payload: &[u8],
    ) -> Result<Advertisement, Discard> {
        if matches!(self.state, State::Initialize) {
            return Err(Discard::NotRunning);
        }
        if ttl != TTL {
            return Err(Discard::Ttl(ttl));
        }
        if let Transport::Unicast(peers) = &self.cfg.transport {
            if !peers.contains(&src) {
                return Err(Discard::NotPeer(src));
            }
        }
        if src == self.cfg.source {
            return Err(Discard::Looped);
        }
        let adv = Advertisement::decode(payload, self.family, src, dst, self.cfg.checksum_mode)?;
        if adv.vrid != self.cfg.vrid {
            return Err(Discard::OtherVrid(adv.vrid));
        }
        Ok(adv)
    }

    fn on_advert(&mut self, src: IpAddr, adv: &Advertisement, now: Instant, out: &mut Vec<Output>) {
        let heard = Heard {
            address: src,
            priority: adv.priority,
        };
        if let State::Fenced {
            master_adver_interval,
            master,
        } = self.state
        {
            // A live peer: let the normal Backup rules decide from here.
            let b = self.backup(now, master_adver_interval, master);
            self.set_state(State::Backup(b), Reason::Advert, now, out);
        }
        let preempts = self.preempts();
        match &mut self.state {
            State::Backup(b) => {
                if adv.priority == 0 {
                    // The Master is leaving: take over after Skew_Time only.
                    b.master = Some(heard);
                    b.master_down_at =
                        after(now, skew_time(self.priority, b.master_adver_interval));
                } else if !preempts || adv.priority >= self.priority {
                    b.master = Some(heard);
                    b.master_adver_interval = from_cs(adv.max_advert_interval_cs);
                    b.master_down_at = after(
                        now,
                        master_down_interval(self.priority, b.master_adver_interval),
                    );
                }
                // Else we preempt: ignore it, take over when the timer fires.
            }
            State::Master { .. } => {
                if adv.priority == 0 {
                    self.advertise(now, out);
                } else if adv.priority > self.priority
                    || (adv.priority == self.priority && src > self.cfg.source)
                {
                    let mai = from_cs(adv.max_advert_interval_cs);
                    let b = self.backup(now, mai, Some(heard));
                    self.set_state(State::Backup(b), Reason::Preempted, now, out);
                    out.push(Output::RemoveVirtualAddresses(
                        self.cfg.virtual_addresses.clone(),
                    ));
                    // Tell the winner there were two of us.
                    self.send_advert(self.priority, out);
                } else {
                    // We win: say so now. A split brain starts (or goes
                    // on): repair ARP / ND caches when it starts.
                    self.advertise(now, out);
                    let mai = from_cs(adv.max_advert_interval_cs);
                    let until = after(now, master_down_interval(self.priority, mai));
                    if let State::Master { split_until, .. } = &mut self.state {
                        if split_until.replace(until).is_none() {
                            out.push(Output::Announce(self.cfg.virtual_addresses.clone()));
                        }
                    }
                }
            }
            State::Initialize | State::Fenced { .. } => {}
        }
    }

    /// Timers: Master_Down_Timer in Backup; Adver_Timer and the end of a
    /// split brain in Master.
    pub fn on_timer(&mut self, now: Instant, out: &mut Vec<Output>) {
        match &mut self.state {
            State::Backup(b) => {
                let b = *b;
                if self.takeover_at(&b) <= now {
                    self.become_master(Reason::MasterDown, now, out);
                }
            }
            State::Master {
                advert_at,
                split_until,
            } => {
                if split_until.is_some_and(|t| t <= now) {
                    // The other side went quiet: it stepped down (or died),
                    // and caches may still point at it.
                    *split_until = None;
                    self.counters.split_brain_healed += 1;
                    out.push(Output::Announce(self.cfg.virtual_addresses.clone()));
                }
                if *advert_at <= now {
                    self.advertise(now, out);
                }
            }
            _ => {}
        }
    }

    /// Tracking changed our priority (1..=255). A Master advertises the new
    /// one at once and stays Master: the Backups decide with their own
    /// preempt settings (RFC 9568 has a Master step down only for an advert).
    /// A Backup's running timer is kept; the next advert is judged, and
    /// Skew_Time computed, with the new priority.
    pub fn set_priority(
        &mut self,
        priority: u8,
        now: Instant,
        out: &mut Vec<Output>,
    ) -> Result<(), ConfigError> {
        if priority == 0 {
            return Err(ConfigError::ZeroPriority);
        }
        if priority == self.priority {
            return Ok(());
        }
        self.priority = priority;
        if matches!(self.state, State::Master { .. }) {
            self.advertise(now, out);
        }
        Ok(())
    }

    /// BFD says `peer` is down: a Backup following `peer` acts as if
    /// Master_Down_Timer fired now (still not before the startup delay is
    /// over). Anything else is ignored.
    pub fn peer_down(&mut self, peer: IpAddr, now: Instant, out: &mut Vec<Output>) {
        if let State::Backup(b) = &mut self.state {
            if b.master.is_some_and(|m| m.address == peer) {
                b.master_down_at = now;
                let b = *b;
                if self.takeover_at(&b) <= now {
                    self.become_master(Reason::PeerDown, now, out);
                }
            }
        }
    }

    /// The cloud says the virtual address is owned elsewhere: a Master drops
    /// its addresses and stops advertising; a Backup stops waiting to take
    /// over. Both go Fenced.
    pub fn fence(&mut self, now: Instant, out: &mut Vec<Output>) {
        match self.state {
            State::Master { .. } => {
                let f = State::Fenced {
                    master_adver_interval: self.cfg.advert_interval,
                    master: None,
                };
                self.set_state(f, Reason::Fence, now, out);
                out.push(Output::RemoveVirtualAddresses(
                    self.cfg.virtual_addresses.clone(),
                ));
            }
            State::Backup(b) => {
                let f = State::Fenced {
                    master_adver_interval: b.master_adver_interval,
                    master: b.master,
                };
                self.set_state(f, Reason::Fence, now, out);
            }
            State::Initialize | State::Fenced { .. } => {}
        }
    }

    /// The cloud shows the virtual address free: Fenced becomes Backup with a
    /// fresh Master_Down_Timer.
    pub fn unfence(&mut self, now: Instant, out: &mut Vec<Output>) {
        if let State::Fenced {
            master_adver_interval,
            master,
        } = self.state
        {
            let b = self.backup(now, master_adver_interval, master);
            self.set_state(State::Backup(b), Reason::Unfence, now, out);
        }
    }

    fn become_master(&mut self, reason: Reason, now: Instant, out: &mut Vec<Output>) {
        let m = State::Master {
            advert_at: after(now, self.cfg.advert_interval),
            split_until: None,
        };
        self.set_state(m, reason, now, out);
        self.counters.became_master += 1;
        out.push(Output::AddVirtualAddresses(
            self.cfg.virtual_addresses.clone(),
        ));
        self.send_advert(self.priority, out);
        out.push(Output::Announce(self.cfg.virtual_addresses.clone()));
    }

    /// Sends an advert now and restarts Adver_Timer.
    fn advertise(&mut self, now: Instant, out: &mut Vec<Output>) {
        self.send_advert(self.priority, out);
        if let State::Master { advert_at, .. } = &mut self.state {
            *advert_at = after(now, self.cfg.advert_interval);
        }
    }

    fn send_advert(&mut self, priority: u8, out: &mut Vec<Output>) {
        let adv = Advertisement {
            vrid: self.cfg.vrid,
            priority,
            max_advert_interval_cs: self.interval_cs,
            addresses: self.cfg.virtual_addresses.clone(),
        };
        let group = [multicast_group(self.family)];
        let dsts: &[IpAddr] = match &self.cfg.transport {
            Transport::Multicast => &group,
            Transport::Unicast(peers) => peers,
        };
        for &dst in dsts {
            // Cannot fail: validate() checked count, interval and families.
            if let Ok(payload) = adv.encode(self.cfg.source, dst, self.cfg.checksum_mode) {
                self.counters.adverts_out += 1;
                if priority == 0 {
                    self.counters.priority_zero_out += 1;
                }
                out.push(Output::Transmit { dst, payload });
            }
        }
    }

    fn set_state(&mut self, to: State, reason: Reason, now: Instant, out: &mut Vec<Output>) {
        let from = self.state.kind();
        self.state = to;
        self.last_transition = Some(now);
        out.push(Output::StateChange {
            from,
            to: to.kind(),
            reason,
        });
    }
}

#[cfg(test)]
mod tests;
