//! Session FSM tests with virtual time: every transition of RFC 5880 §6.8.6,
//! Poll/Final, slow start, detection, jitter, and a two-endpoint harness.

use super::*;

const MS: Duration = Duration::from_millis(1);
const OURS: u32 = 0x0a0a_0001;
const THEIRS: u32 = 0x0b0b_0002;

fn disc(v: u32) -> NonZeroU32 {
    NonZeroU32::new(v).unwrap_or(NonZeroU32::MIN)
}

fn fast() -> SessionConfig {
    SessionConfig::new(10 * MS, 3)
}

fn new_session(now: Instant) -> (Session, Vec<Output>) {
    let mut s = Session::new(disc(OURS), fast(), 42, now);
    let mut out = Vec::new();
    s.on_timer(now, &mut out);
    (s, out)
}

/// A packet from the peer in `state`, timers 10 ms, no P/F.
fn from_peer(state: State) -> ControlPacket {
    ControlPacket {
        diag: Diag::NONE,
        state,
        poll: false,
        final_: false,
        cpi: false,
        demand: false,
        detect_mult: 3,
        my_disc: THEIRS,
        your_disc: if matches!(state, State::Down | State::AdminDown) {
            0
        } else {
            OURS
        },
        desired_min_tx_us: 10_000,
        required_min_rx_us: 10_000,
        required_min_echo_rx_us: 0,
    }
}

fn sent(out: &[Output]) -> Vec<ControlPacket> {
    out.iter()
        .filter_map(|o| match o {
            Output::Send(p) => Some(*p),
            Output::StateChange { .. } => None,
        })
        .collect()
}

fn changes(out: &[Output]) -> Vec<(State, State, Diag)> {
    out.iter()
        .filter_map(|o| match *o {
            Output::StateChange { from, to, diag } => Some((from, to, diag)),
            Output::Send(_) => None,
        })
        .collect()
}

/// A session driven to `target` (Down, Init or Up) by peer packets.
fn session_in(target: State, now: Instant) -> Session {
    let (mut s, _) = new_session(now);
    let mut out = Vec::new();
    match target {
        State::Down => {}
        State::Init => {
            s.handle_packet(&from_peer(State::Down), now, &mut out)
                .unwrap_or_default();
        }
        State::Up => {
            s.handle_packet(&from_peer(State::Init), now, &mut out)
                .unwrap_or_default();
        }
        State::AdminDown => s.set_admin_down(now, &mut out),
    }
    assert_eq!(s.state(), target);
    s
}

#[test]
fn starts_down_in_slow_start_and_sends_at_once() {
    let t0 = Instant::now();
    let (s, out) = new_session(t0);
    let p = sent(&out);
    assert_eq!(p.len(), 1);
    let p = p[0];
    assert_eq!(p.state, State::Down);
    assert_eq!((p.my_disc, p.your_disc), (OURS, 0));
    assert_eq!(
        p.desired_min_tx_us, 1_000_000,
        "slow start: 1 s while not Up"
    );
    assert_eq!(p.required_min_rx_us, 10_000);
    assert_eq!(p.detect_mult, 3);
    assert!(!p.poll && !p.final_);
    assert_eq!(ControlPacket::decode(&p.encode()), Ok(p));
    // Next packet in 0.75-1 s (RemoteMinRx is 1 µs until the peer speaks).
    let next = s.next_deadline().map(|d| d - t0);
    assert!(
        next.is_some_and(|d| d >= 750 * MS && d <= 1000 * MS),
        "{next:?}"
    );
    assert_eq!(s.detection_time(), None);
}

#[test]
fn every_transition_of_6_8_6() {
    use State::*;
    let nsd = Diag::NEIGHBOR_SIGNALED_DOWN;
    // (our state, received state) -> (new state, Some(diag) when it changed)
    let table = [
        (Down, AdminDown, Down, None),
        (Down, Down, Init, Some(Diag::NONE)),
        (Down, Init, Up, Some(Diag::NONE)),
        (Down, Up, Down, None),
        (Init, AdminDown, Down, Some(nsd)),
        (Init, Down, Init, None),
        (Init, Init, Up, Some(Diag::NONE)),
        (Init, Up, Up, Some(Diag::NONE)),
        (Up, AdminDown, Down, Some(nsd)),
        (Up, Down, Down, Some(nsd)),
        (Up, Init, Up, None),
        (Up, Up, Up, None),
    ];
    for (ours, theirs, want, diag) in table {
        let t0 = Instant::now();
        let mut s = session_in(ours, t0);
        let mut out = Vec::new();
        let r = s.handle_packet(&from_peer(theirs), t0 + MS, &mut out);
        assert_eq!(r, Ok(()), "{ours} + {theirs}");
        assert_eq!(s.state(), want, "{ours} + {theirs}");
        assert_eq!(s.remote_state(), theirs);
        assert_eq!(s.remote_disc(), THEIRS);
        let ch = changes(&out);
        match diag {
            None => assert!(ch.is_empty(), "{ours} + {theirs}: {ch:?}"),
            Some(d) => {
                assert_eq!(ch, vec![(ours, want, d)], "{ours} + {theirs}");
                assert_eq!(s.local_diag(), d);
                // A state change is announced at once, with the new state.
                let p = sent(&out);
                assert_eq!(p.first().map(|p| p.state), Some(want));
                assert_eq!(p.first().map(|p| p.your_disc), Some(THEIRS));
            }
        }
    }
}

#[test]
fn admin_down_ignores_packets_and_comes_back_down() {
    let t0 = Instant::now();
    let mut s = session_in(State::Up, t0);
    let mut out = Vec::new();
    s.set_admin_down(t0 + MS, &mut out);
    assert_eq!(
        changes(&out),
        vec![(State::Up, State::AdminDown, Diag::ADMINISTRATIVELY_DOWN)]
    );
    let p = sent(&out);
    assert_eq!(p.len(), 1);
    assert_eq!(
        (p[0].state, p[0].diag),
        (State::AdminDown, Diag::ADMINISTRATIVELY_DOWN)
    );
    assert_eq!(p[0].desired_min_tx_us, 1_000_000);
    // No detection while AdminDown; packets are discarded.
    out.clear();
    for st in [State::Down, State::Init, State::Up] {
        assert_eq!(
            s.handle_packet(&from_peer(st), t0 + 2 * MS, &mut out),
            Err(SessionError::AdminDown)
        );
    }
    assert!(changes(&out).is_empty());
    s.on_timer(t0 + Duration::from_secs(5), &mut out);
    assert_eq!(s.state(), State::AdminDown);
    out.clear();
    s.set_admin_up(t0 + Duration::from_secs(5), &mut out);
    assert_eq!(
        changes(&out),
        vec![(State::AdminDown, State::Down, Diag::NONE)]
    );
    s.handle_packet(
        &from_peer(State::Init),
        t0 + Duration::from_secs(5),
        &mut out,
    )
    .unwrap_or_default();
    assert_eq!(s.state(), State::Up);
}

#[test]
fn peer_admin_down_takes_us_down_with_diag_3() {
    let t0 = Instant::now();
    let mut s = session_in(State::Up, t0);
    let mut out = Vec::new();
    let mut p = from_peer(State::AdminDown);
    p.diag = Diag::ADMINISTRATIVELY_DOWN;
    s.handle_packet(&p, t0 + MS, &mut out).unwrap_or_default();
    assert_eq!(s.state(), State::Down);
    assert_eq!(s.local_diag(), Diag::NEIGHBOR_SIGNALED_DOWN);
    assert_eq!(s.remote_diag(), Diag::ADMINISTRATIVELY_DOWN);
}

#[test]
fn wrong_your_discriminator_is_rejected() {
    let t0 = Instant::now();
    let mut s = session_in(State::Init, t0);
    let mut out = Vec::new();
    let mut p = from_peer(State::Up);
    p.your_disc = OURS + 1;
    assert_eq!(
        s.handle_packet(&p, t0, &mut out),
        Err(SessionError::WrongDiscriminator {
            got: OURS + 1,
            ours: OURS
        })
    );
    assert_eq!(s.state(), State::Init);
    assert!(out.is_empty());
}

#[test]
fn going_up_polls_for_the_configured_intervals() {
    let t0 = Instant::now();
    let (mut s, _) = new_session(t0);
    let mut out = Vec::new();
    s.handle_packet(&from_peer(State::Init), t0, &mut out)
        .unwrap_or_default();
    assert_eq!(s.state(), State::Up);
    let p = sent(&out);
    assert_eq!(p.len(), 1, "{out:?}");
    assert!(p[0].poll && !p[0].final_);
    assert_eq!(p[0].state, State::Up);
    assert_eq!(p[0].desired_min_tx_us, 10_000);
    assert!(s.poll_in_progress());
    // Decreasing our transmit interval applies at once.
    assert_eq!(s.tx_interval(), Some(10 * MS));
    // Every periodic packet keeps P until the Final.
    for i in 1..5 {
        out.clear();
        let now = t0 + 10 * MS * i;
        s.on_timer(now, &mut out);
        let p = sent(&out);
        assert_eq!(p.len(), 1);
        assert!(p[0].poll);
        // Keep the session alive.
        s.handle_packet(&from_peer(State::Up), now, &mut Vec::new())
            .unwrap_or_default();
    }
    let mut fin = from_peer(State::Up);
    fin.final_ = true;
    s.handle_packet(&fin, t0 + 50 * MS, &mut out)
        .unwrap_or_default();
    assert!(!s.poll_in_progress());
    out.clear();
    s.on_timer(t0 + 60 * MS, &mut out);
    assert!(sent(&out).iter().all(|p| !p.poll));
}

#[test]
fn a_poll_is_answered_at_once_with_final_only() {
    let t0 = Instant::now();
    let mut s = session_in(State::Up, t0);
    assert!(s.poll_in_progress(), "our own poll from going Up");
    let mut out = Vec::new();
    let mut p = from_peer(State::Up);
    p.poll = true;
    p.desired_min_tx_us = 50_000;
    s.handle_packet(&p, t0 + MS, &mut out).unwrap_or_default();
    let f = sent(&out);
    assert_eq!(f.len(), 1);
    assert!(
        f[0].final_ && !f[0].poll,
        "F without P even during our Poll"
    );
    assert_eq!(s.remote_desired_min_tx(), 50 * MS);
    // Detection now uses the remote's slower transmit interval.
    assert_eq!(s.detection_time(), Some(150 * MS));
}

#[test]
fn interval_changes_wait_for_the_final() {
    let t0 = Instant::now();
    let mut s = session_in(State::Up, t0);
    let mut out = Vec::new();
    let mut fin = from_peer(State::Up);
    fin.final_ = true;
    s.handle_packet(&fin, t0, &mut out).unwrap_or_default();
    assert!(!s.poll_in_progress());
    assert_eq!(s.detection_time(), Some(30 * MS));

    // Slower tx (increase), faster rx (decrease).
    out.clear();
    let cfg = SessionConfig {
        desired_min_tx: 100 * MS,
        required_min_rx: 5 * MS,
        detect_mult: 3,
    };
    s.set_intervals(cfg, t0 + MS, &mut out);
    let p = sent(&out);
    assert_eq!(p.len(), 1);
    assert!(p[0].poll);
    assert_eq!(
        (p[0].desired_min_tx_us, p[0].required_min_rx_us),
        (100_000, 5_000)
    );
    // Until the Final: old tx interval, old detection time.
    assert_eq!(s.tx_interval(), Some(10 * MS));
    s.handle_packet(&from_peer(State::Up), t0 + 2 * MS, &mut out)
        .unwrap_or_default();
    assert_eq!(s.detection_time(), Some(30 * MS));
    // Final: the new values apply (peer sends 5 ms now too).
    let mut fin = from_peer(State::Up);
    fin.final_ = true;
    fin.desired_min_tx_us = 5_000;
    s.handle_packet(&fin, t0 + 3 * MS, &mut out)
        .unwrap_or_default();
    assert!(!s.poll_in_progress());
    assert_eq!(s.tx_interval(), Some(100 * MS));
    assert_eq!(s.detection_time(), Some(15 * MS));
    // Unchanged intervals start no Poll.
    out.clear();
    s.set_intervals(cfg, t0 + 4 * MS, &mut out);
    assert!(out.is_empty() && !s.poll_in_progress());
}

#[test]
fn intervals_set_while_down_keep_slow_start() {
    let t0 = Instant::now();
    let (mut s, _) = new_session(t0);
    let mut out = Vec::new();
    s.set_intervals(SessionConfig::new(20 * MS, 5), t0, &mut out);
    let p = sent(&out);
    assert_eq!(p.len(), 1);
    assert_eq!(
        (
            p[0].desired_min_tx_us,
            p[0].required_min_rx_us,
            p[0].detect_mult
        ),
        (1_000_000, 20_000, 5)
    );
    assert!(p[0].poll, "RequiredMinRx changed: Poll");
}

#[test]
fn detection_timeout_takes_the_session_down() {
    let t0 = Instant::now();
    let mut s = session_in(State::Up, t0);
    assert_eq!(s.detection_time(), Some(30 * MS));
    let mut out = Vec::new();
    // Keep sending while silent: no state change before the deadline.
    let mut now = t0;
    while now < t0 + 29 * MS {
        now = s.next_deadline().unwrap_or(now + MS);
        if now >= t0 + 30 * MS {
            break;
        }
        s.on_timer(now, &mut out);
        assert_eq!(s.state(), State::Up, "at {:?}", now - t0);
    }
    s.on_timer(t0 + 30 * MS, &mut out);
    assert_eq!(s.state(), State::Down);
    assert_eq!(s.local_diag(), Diag::CONTROL_DETECTION_TIME_EXPIRED);
    assert_eq!(s.remote_disc(), 0);
    assert!(changes(&out).contains(&(
        State::Up,
        State::Down,
        Diag::CONTROL_DETECTION_TIME_EXPIRED
    )));
    let last = sent(&out).last().copied();
    assert_eq!(last.map(|p| (p.state, p.your_disc)), Some((State::Down, 0)));
    assert_eq!(last.map(|p| p.desired_min_tx_us), Some(1_000_000));
    // Init times out too; Down just forgets the remote.
    let mut s = session_in(State::Init, t0);
    s.on_timer(t0 + 30 * MS, &mut out);
    assert_eq!(s.state(), State::Down);
    let mut s = session_in(State::Down, t0);
    s.handle_packet(&from_peer(State::AdminDown), t0, &mut out)
        .unwrap_or_default();
    assert_eq!(s.remote_disc(), THEIRS);
    s.on_timer(t0 + 30 * MS, &mut out);
    assert_eq!((s.state(), s.remote_disc()), (State::Down, 0));
}

#[test]
fn tx_is_jittered_75_to_100_percent() {
    for (mult, max_pct) in [(3u8, 100u32), (1, 90)] {
        let t0 = Instant::now();
        let mut s = Session::new(disc(OURS), SessionConfig::new(10 * MS, mult), 7, t0);
        let mut out = Vec::new();
        let mut now = t0;
        s.on_timer(now, &mut out);
        let (mut lo, mut hi) = (Duration::MAX, Duration::ZERO);
        for _ in 0..2000 {
            let next = s.next_deadline().unwrap_or(now);
            let gap = next - now;
            lo = lo.min(gap);
            hi = hi.max(gap);
            now = next;
            s.on_timer(now, &mut out);
        }
        assert!(
            lo >= 750 * MS && hi <= 10 * max_pct * MS,
            "mult {mult}: {lo:?}..{hi:?}"
        );
        assert!(
            lo < 760 * MS && hi > 10 * (max_pct - 1) * MS,
            "spread: {lo:?}..{hi:?}"
        );
    }
}

#[test]
fn remote_min_rx_zero_stops_periodic_tx() {
    let t0 = Instant::now();
    let (mut s, _) = new_session(t0);
    let mut p = from_peer(State::Down);
    p.required_min_rx_us = 0;
    let mut out = Vec::new();
    s.handle_packet(&p, t0, &mut out).unwrap_or_default();
    assert_eq!(s.tx_interval(), None);
    out.clear();
    // Only the detection deadline remains.
    let d = s.next_deadline();
    assert_eq!(d, s.detection_time().map(|t| t0 + t));
}

/// Two sessions over a virtual link with zero delay.
struct Harness {
    now: Instant,
    a: Session,
    b: Session,
    /// Packets on the wire: (to_b, packet).
    link_up: bool,
    log: Vec<(Duration, char, State, State, Diag)>,
    t0: Instant,
}

impl Harness {
    fn new(a: SessionConfig, b: SessionConfig) -> Harness {
        let t0 = Instant::now();
        Harness {
            now: t0,
            a: Session::new(disc(1), a, 1, t0),
            b: Session::new(disc(2), b, 2, t0 + 3 * MS),
            link_up: true,
            log: Vec::new(),
            t0,
        }
    }

    fn deliver(&mut self, from_a: bool, out: Vec<Output>) {
        let mut queue: Vec<(bool, Output)> = out.into_iter().map(|o| (from_a, o)).collect();
        while !queue.is_empty() {
            let (from_a, o) = queue.remove(0);
            match o {
                Output::StateChange { from, to, diag } => {
                    let who = if from_a { 'a' } else { 'b' };
                    self.log.push((self.now - self.t0, who, from, to, diag));
                }
                Output::Send(p) => {
                    if !self.link_up {
                        continue;
                    }
                    // Through the codec, as on the wire.
                    let Ok(p) = ControlPacket::decode(&p.encode()) else {
                        panic!("undecodable packet {p:?}");
                    };
                    let dst = if from_a { &mut self.b } else { &mut self.a };
                    let mut o2 = Vec::new();
                    let r = dst.handle_packet(&p, self.now, &mut o2);
                    assert!(r.is_ok() || r == Err(SessionError::AdminDown), "{r:?}");
                    queue.extend(o2.into_iter().map(|o| (!from_a, o)));
                }
            }
        }
    }

    /// Runs timers until `until`.
    fn run_until(&mut self, until: Instant) {
        loop {
            let next = [self.a.next_deadline(), self.b.next_deadline()]
                .into_iter()
                .flatten()
                .min();
            let Some(next) = next.filter(|&n| n <= until) else {
                self.now = until;
                return;
            };
            self.now = next.max(self.now);
            let mut out = Vec::new();
            self.a.on_timer(self.now, &mut out);
            self.deliver(true, out);
            let mut out = Vec::new();
            self.b.on_timer(self.now, &mut out);
            self.deliver(false, out);
        }
    }

    fn run_for(&mut self, d: Duration) {
        self.run_until(self.now + d);
    }

    /// Time (since now) until `pred`, stepping 1 ms, at most `limit`.
    fn time_until(&mut self, limit: Duration, pred: impl Fn(&Harness) -> bool) -> Duration {
        let start = self.now;
        while !pred(self) {
            assert!(
                self.now - start < limit,
                "not within {limit:?}: {:?}",
                self.log
            );
            self.run_for(MS);
        }
        self.now - start
    }
}

#[test]
fn two_endpoints_come_up_and_detect_a_silent_peer() {
    let mut h = Harness::new(fast(), fast());
    let up = h.time_until(Duration::from_secs(3), |h| {
        h.a.state() == State::Up && h.b.state() == State::Up
    });
    // The handshake needs no slow-start wait: state changes send at once.
    assert!(up < 10 * MS, "up after {up:?}: {:?}", h.log);
    // Both Polls complete; fast timers on both sides.
    h.run_for(100 * MS);
    for s in [&h.a, &h.b] {
        assert!(!s.poll_in_progress());
        assert_eq!(s.tx_interval(), Some(10 * MS));
        assert_eq!(s.detection_time(), Some(30 * MS));
        assert_eq!(s.desired_min_tx(), 10 * MS);
    }
    // Stable for a while.
    h.run_for(Duration::from_secs(2));
    assert_eq!((h.a.state(), h.b.state()), (State::Up, State::Up));
    assert_eq!(h.log.len(), 3, "no flaps: {:?}", h.log);

    // Silent cut: both detect within the 30 ms detection time.
    h.link_up = false;
    let down = h.time_until(Duration::from_secs(1), |h| {
        h.a.state() == State::Down && h.b.state() == State::Down
    });
    assert!(down <= 30 * MS, "detected after {down:?}");
    assert!(down >= 20 * MS, "detected after {down:?}");
    assert_eq!(h.a.local_diag(), Diag::CONTROL_DETECTION_TIME_EXPIRED);
    assert_eq!(h.b.local_diag(), Diag::CONTROL_DETECTION_TIME_EXPIRED);
    // Down: back to slow start.
    assert_eq!(h.a.desired_min_tx(), SLOW_TX);

    // Heal: Up again within a slow-start interval or two.
    h.link_up = true;
    let again = h.time_until(Duration::from_secs(5), |h| {
        h.a.state() == State::Up && h.b.state() == State::Up
    });
    assert!(again <= 2 * SLOW_TX, "{again:?}");
}

#[test]
fn two_endpoints_with_different_timers_and_admin_down() {
    let slow_b = SessionConfig {
        desired_min_tx: 50 * MS,
        required_min_rx: 20 * MS,
        detect_mult: 5,
    };
    let mut h = Harness::new(SessionConfig::new(10 * MS, 3), slow_b);
    h.time_until(Duration::from_secs(3), |h| {
        h.a.state() == State::Up && h.b.state() == State::Up
    });
    h.run_for(200 * MS);
    // a sends at max(10, b's rx 20) = 20 ms; b at max(50, 10) = 50 ms.
    assert_eq!(h.a.tx_interval(), Some(20 * MS));
    assert_eq!(h.b.tx_interval(), Some(50 * MS));
    // Detection uses the remote multiplier: a waits 5 × max(10, 50) for b,
    // b waits 3 × max(20, 10) for a.
    assert_eq!(h.a.detection_time(), Some(250 * MS));
    assert_eq!(h.b.detection_time(), Some(60 * MS));

    // Admin down on a: b goes Down with diag 3 at once, and stays Down.
    let mut out = Vec::new();
    h.a.set_admin_down(h.now, &mut out);
    h.deliver(true, out);
    assert_eq!(h.b.state(), State::Down);
    assert_eq!(h.b.local_diag(), Diag::NEIGHBOR_SIGNALED_DOWN);
    h.run_for(Duration::from_secs(3));
    assert_eq!((h.a.state(), h.b.state()), (State::AdminDown, State::Down));
    let mut out = Vec::new();
    h.a.set_admin_up(h.now, &mut out);
    h.deliver(true, out);
    h.time_until(Duration::from_secs(3), |h| {
        h.a.state() == State::Up && h.b.state() == State::Up
    });
}
