//! Demux tests in virtual time: two speakers over a wire, demultiplexing by
//! discriminator and by source, drops and their counters, AdminDown repeats,
//! and timers.

use std::net::Ipv4Addr;

use super::*;

const MS: Duration = Duration::from_millis(1);
const A: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
const B: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2));
const C: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 3));
/// Has no session anywhere.
const D: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 4));
const GOOD_TTL: Option<u8> = Some(TTL);

fn fast() -> SessionConfig {
    SessionConfig::new(10 * MS, 3)
}

/// The wire form of a packet from a peer whose discriminator is `my_disc`.
fn wire(state: State, my_disc: u32, your_disc: u32) -> [u8; 24] {
    ControlPacket {
        diag: Diag::NONE,
        state,
        poll: false,
        final_: false,
        cpi: false,
        demand: false,
        detect_mult: 3,
        my_disc,
        your_disc,
        desired_min_tx_us: 10_000,
        required_min_rx_us: 10_000,
        required_min_echo_rx_us: 0,
    }
    .encode()
}

fn sends(out: &[Output]) -> Vec<(IpAddr, IpAddr, ControlPacket)> {
    out.iter()
        .filter_map(|o| match *o {
            Output::Send {
                peer,
                local,
                packet,
            } => Some((peer, local, packet)),
            _ => None,
        })
        .collect()
}

fn changes(out: &[Output]) -> Vec<(IpAddr, State, State, Diag)> {
    out.iter()
        .filter_map(|o| match *o {
            Output::StateChange {
                peer,
                from,
                to,
                diag,
                ..
            } => Some((peer, from, to, diag)),
            _ => None,
        })
        .collect()
}

fn state(d: &Demux, peer: IpAddr) -> Option<State> {
    d.get(peer).map(|s| s.session().state())
}

fn counters(d: &Demux, peer: IpAddr) -> Counters {
    d.get(peer).map(|s| s.counters()).unwrap_or_default()
}

/// Speaker `a` (at A, one session to B) and speaker `b` (at B, one session
/// to A) over a wire with zero delay, in virtual time.
struct Wire {
    t0: Instant,
    now: Instant,
    a: Demux,
    b: Demux,
    link_up: bool,
    /// Every output, with when and by whom ('a' or 'b').
    log: Vec<(Duration, char, Output)>,
}

impl Wire {
    fn new(cfg: SessionConfig) -> Wire {
        let t0 = Instant::now();
        let mut w = Wire {
            t0,
            now: t0,
            a: Demux::new(cfg, 1),
            b: Demux::new(cfg, 2),
            link_up: true,
            log: Vec::new(),
        };
        let mut out = Vec::new();
        w.a.add(B, A, t0, &mut out);
        w.b.add(A, B, t0 + 3 * MS, &mut out);
        assert!(out.is_empty(), "{out:?}");
        w
    }

    /// Both Up, with the Polls done (fast timers on both sides).
    fn up(cfg: SessionConfig) -> Wire {
        let mut w = Wire::new(cfg);
        w.time_until(Duration::from_secs(3), |w| {
            state(&w.a, B) == Some(State::Up) && state(&w.b, A) == Some(State::Up)
        });
        w.run_for(Duration::from_secs(2));
        for (d, peer) in [(&w.a, B), (&w.b, A)] {
            let s = d.get(peer).map(|s| s.session().clone());
            assert!(s.as_ref().is_some_and(|s| !s.poll_in_progress()), "{s:?}");
        }
        w
    }

    fn deliver(&mut self, from_a: bool, out: Vec<Output>) {
        let mut queue: Vec<(bool, Output)> = out.into_iter().map(|o| (from_a, o)).collect();
        while !queue.is_empty() {
            let (from_a, o) = queue.remove(0);
            let (me, other) = if from_a { (A, B) } else { (B, A) };
            self.log
                .push((self.now - self.t0, if from_a { 'a' } else { 'b' }, o));
            let (Output::Send {
                peer,
                local,
                packet,
            }
            | Output::Repeat {
                peer,
                local,
                packet,
                ..
            }) = o
            else {
                continue;
            };
            assert_eq!((peer, local), (other, me), "{o:?}");
            if !self.link_up {
                continue;
            }
            let dst = if from_a { &mut self.b } else { &mut self.a };
            let mut o2 = Vec::new();
            // A packet no session takes is counted; the test looks at that.
            let _ = dst.receive(&packet.encode(), me, GOOD_TTL, self.now, &mut o2);
            queue.extend(o2.into_iter().map(|o| (!from_a, o)));
        }
    }

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
    fn time_until(&mut self, limit: Duration, pred: impl Fn(&Wire) -> bool) -> Duration {
        let start = self.now;
        while !pred(self) {
            assert!(self.now - start < limit, "not within {limit:?}");
            self.run_for(MS);
        }
        self.now - start
    }

    /// `a` removes its session to B now; its outputs go on the wire.
    fn a_removes_b(&mut self) -> Vec<Output> {
        let mut out = Vec::new();
        assert!(self.a.remove(B, self.now, &mut out));
        self.deliver(true, out.clone());
        out
    }

    /// When `a` sent repeats, since `since`.
    fn repeats_since(&self, since: Duration) -> Vec<Duration> {
        self.log
            .iter()
            .filter(|(t, who, o)| *who == 'a' && *t >= since && matches!(o, Output::Repeat { .. }))
            .map(|(t, _, _)| *t - since)
            .collect()
    }

    fn state_changes(&self, who: char) -> Vec<(IpAddr, State, State, Diag)> {
        let out: Vec<Output> = self
            .log
            .iter()
            .filter(|(_, w, _)| *w == who)
            .map(|(_, _, o)| *o)
            .collect();
        changes(&out)
    }
}

#[test]
fn two_demuxes_come_up_and_detect_a_silent_peer() {
    let mut w = Wire::new(fast());
    let up = w.time_until(Duration::from_secs(3), |w| {
        state(&w.a, B) == Some(State::Up) && state(&w.b, A) == Some(State::Up)
    });
    assert!(up < 10 * MS, "up after {up:?}: {:?}", w.log);
    w.run_for(Duration::from_secs(2));
    for (d, peer) in [(&w.a, B), (&w.b, A)] {
        let s = d.get(peer).map(|s| s.session().clone());
        assert_eq!(s.as_ref().and_then(|s| s.tx_interval()), Some(10 * MS));
        assert_eq!(s.as_ref().and_then(|s| s.detection_time()), Some(30 * MS));
        let c = counters(d, peer);
        assert!(c.rx > 150, "{c:?}");
        assert_eq!(
            c,
            Counters {
                rx: c.rx,
                ..Counters::default()
            }
        );
        assert_eq!(d.unattributed(), Counters::default());
    }
    // State changes name the peer; no flaps.
    use State::*;
    assert_eq!(w.state_changes('a'), vec![(B, Down, Up, Diag::NONE)]);
    assert_eq!(
        w.state_changes('b'),
        vec![(A, Down, Init, Diag::NONE), (A, Init, Up, Diag::NONE)]
    );

    // Silent cut: both detect within the 30 ms detection time, and note when.
    w.link_up = false;
    let down = w.time_until(Duration::from_secs(1), |w| {
        state(&w.a, B) == Some(Down) && state(&w.b, A) == Some(Down)
    });
    assert!(
        (20 * MS..=30 * MS).contains(&down),
        "detected after {down:?}"
    );
    let expired = (B, Up, Down, Diag::CONTROL_DETECTION_TIME_EXPIRED);
    assert_eq!(w.state_changes('a').last(), Some(&expired));
    let changed = w.a.get(B).map(|s| s.changed() - w.t0);
    assert!(
        changed.is_some_and(|c| c > Duration::from_secs(2)),
        "{changed:?}"
    );
}

#[test]
fn timers_fire_at_the_virtual_times_they_announce() {
    let t0 = Instant::now();
    let mut d = Demux::new(fast(), 7);
    let mut out = Vec::new();
    assert_eq!(d.next_deadline(), None);
    let disc = d.add(B, A, t0, &mut out).get();
    // The first packet is due at once.
    assert_eq!(d.next_deadline(), Some(t0));
    d.on_timer(t0, &mut out);
    let p = sends(&out);
    assert_eq!(p.len(), 1, "{out:?}");
    assert_eq!((p[0].0, p[0].1, p[0].2.state), (B, A, State::Down));
    assert_eq!((p[0].2.my_disc, p[0].2.your_disc), (disc, 0));
    // Slow start: the next one 0.75-1 s later, and not a nanosecond early.
    let next = d.next_deadline().expect("a periodic packet");
    assert!(
        (750 * MS..=1000 * MS).contains(&(next - t0)),
        "{:?}",
        next - t0
    );
    out.clear();
    d.on_timer(next - Duration::from_nanos(1), &mut out);
    assert!(out.is_empty(), "{out:?}");
    d.on_timer(next, &mut out);
    assert_eq!(sends(&out).len(), 1);

    // The peer says Init: Up, and detection 30 ms after its last packet.
    let t1 = next + MS;
    out.clear();
    let r = d.receive(&wire(State::Init, 0xb, disc), B, GOOD_TTL, t1, &mut out);
    assert_eq!(r, Ok(()));
    assert_eq!(changes(&out), vec![(B, State::Down, State::Up, Diag::NONE)]);
    assert_eq!(d.get(B).map(|s| s.changed()), Some(t1));
    let mut now = t1;
    loop {
        let next = d.next_deadline().expect("a deadline");
        if next >= t1 + 30 * MS {
            assert_eq!(next, t1 + 30 * MS);
            break;
        }
        now = next;
        out.clear();
        d.on_timer(now, &mut out);
        assert_eq!(state(&d, B), Some(State::Up), "at {:?}", now - t1);
        assert!(changes(&out).is_empty());
    }
    assert!(now > t1 + 20 * MS, "10 ms packets ran until {:?}", now - t1);
    out.clear();
    d.on_timer(t1 + 30 * MS, &mut out);
    assert_eq!(
        changes(&out),
        vec![(
            B,
            State::Up,
            State::Down,
            Diag::CONTROL_DETECTION_TIME_EXPIRED
        )]
    );
    assert_eq!(d.get(B).map(|s| s.changed()), Some(t1 + 30 * MS));
}

#[test]
fn demux_by_your_discriminator_or_by_source_when_zero() {
    let t0 = Instant::now();
    let mut d = Demux::new(fast(), 3);
    let mut out = Vec::new();
    let db = d.add(B, A, t0, &mut out).get();
    let dc = d.add(C, A, t0, &mut out).get();
    assert_ne!(db, dc);
    d.on_timer(t0, &mut out);
    out.clear();

    // Your Discriminator zero: by source address.
    let r = d.receive(&wire(State::Down, 0xb, 0), B, GOOD_TTL, t0, &mut out);
    assert_eq!(r, Ok(()));
    assert_eq!(
        changes(&out),
        vec![(B, State::Down, State::Init, Diag::NONE)]
    );
    assert!(sends(&out)
        .iter()
        .all(|&(p, l, pkt)| p == B && l == A && pkt.your_disc == 0xb));
    assert_eq!((state(&d, B), counters(&d, B).rx), (Some(State::Init), 1));
    assert_eq!((state(&d, C), counters(&d, C).rx), (Some(State::Down), 0));

    // By Your Discriminator.
    out.clear();
    let r = d.receive(&wire(State::Init, 0xc, dc), C, GOOD_TTL, t0, &mut out);
    assert_eq!(r, Ok(()));
    assert_eq!(changes(&out), vec![(C, State::Down, State::Up, Diag::NONE)]);
    assert_eq!(counters(&d, C).rx, 1);

    // C's discriminator from B: not B's to use. Dropped, charged to B.
    out.clear();
    let r = d.receive(&wire(State::Up, 0xb, dc), B, GOOD_TTL, t0, &mut out);
    assert_eq!(r, Err(RxError::NoSession));
    assert!(out.is_empty(), "{out:?}");
    let cb = counters(&d, B);
    assert_eq!((cb.rx, cb.dropped_no_session), (1, 1));
    assert_eq!(
        counters(&d, C),
        Counters {
            rx: 1,
            ..Counters::default()
        }
    );
    assert_eq!(
        (state(&d, B), state(&d, C)),
        (Some(State::Init), Some(State::Up))
    );

    // A discriminator nobody has.
    let unknown = (1..).find(|v| *v != db && *v != dc).unwrap_or(u32::MAX);
    let r = d.receive(&wire(State::Up, 0xb, unknown), B, GOOD_TTL, t0, &mut out);
    assert_eq!(r, Err(RxError::NoSession));
    assert_eq!(counters(&d, B).dropped_no_session, 2);
    assert_eq!(d.unattributed(), Counters::default());

    // From a source without a session, by discriminator or by source:
    // unattributed.
    let r = d.receive(&wire(State::Init, 0xd, db), D, GOOD_TTL, t0, &mut out);
    assert_eq!(r, Err(RxError::NoSession));
    let r = d.receive(&wire(State::Down, 0xd, 0), D, GOOD_TTL, t0, &mut out);
    assert_eq!(r, Err(RxError::NoSession));
    assert_eq!(d.unattributed().dropped_no_session, 2);
    assert_eq!(counters(&d, B).dropped_no_session, 2);
    assert!(out.is_empty(), "{out:?}");

    // B's own discriminator from B: B's session.
    let r = d.receive(&wire(State::Init, 0xb, db), B, GOOD_TTL, t0, &mut out);
    assert_eq!(r, Ok(()));
    assert_eq!(changes(&out), vec![(B, State::Init, State::Up, Diag::NONE)]);
    assert_eq!(counters(&d, B).rx, 2);
}

#[test]
fn ttl_below_255_or_unknown_is_dropped_and_counted() {
    let t0 = Instant::now();
    let mut d = Demux::new(fast(), 3);
    let mut out = Vec::new();
    d.add(B, A, t0, &mut out);
    let good = wire(State::Down, 0xb, 0);
    for ttl in [Some(254), Some(1), None] {
        let r = d.receive(&good, B, ttl, t0, &mut out);
        assert_eq!(r, Err(RxError::BadTtl(ttl)));
    }
    // Checked before decoding: garbage with a bad TTL is a bad TTL.
    let r = d.receive(&[0; 3], B, Some(64), t0, &mut out);
    assert_eq!(r, Err(RxError::BadTtl(Some(64))));
    assert!(out.is_empty(), "{out:?}");
    assert_eq!(
        counters(&d, B),
        Counters {
            dropped_bad_ttl: 4,
            ..Counters::default()
        }
    );
    assert_eq!(state(&d, B), Some(State::Down));
    // From a peer without a session: unattributed.
    let r = d.receive(&good, D, Some(254), t0, &mut out);
    assert_eq!(r, Err(RxError::BadTtl(Some(254))));
    assert_eq!(
        d.unattributed(),
        Counters {
            dropped_bad_ttl: 1,
            ..Counters::default()
        }
    );
}

#[test]
fn malformed_and_authenticated_packets_are_counted_apart() {
    let t0 = Instant::now();
    let mut d = Demux::new(fast(), 3);
    let mut out = Vec::new();
    d.add(B, A, t0, &mut out);
    let good = wire(State::Down, 0xb, 0);
    let mut version2 = good;
    version2[0] = (2 << 5) | (version2[0] & 0x1f);
    let mut auth = good.to_vec();
    auth[1] |= 0x04;
    auth[3] = 31;
    auth.extend_from_slice(&[1, 7, 1, b'p', b'w', b'd', b'x']);
    let truncated = good.get(..20).unwrap_or_default();
    for (src, data) in [
        (B, truncated),
        (B, &version2[..]),
        (B, &auth[..]),
        (D, &auth[..]),
    ] {
        let r = d.receive(data, src, GOOD_TTL, t0, &mut out);
        assert!(matches!(r, Err(RxError::Decode(_))), "{r:?}");
    }
    assert!(out.is_empty(), "{out:?}");
    assert_eq!(
        counters(&d, B),
        Counters {
            dropped_malformed: 2,
            dropped_auth: 1,
            ..Counters::default()
        }
    );
    assert_eq!(
        d.unattributed(),
        Counters {
            dropped_auth: 1,
            ..Counters::default()
        }
    );
}

#[test]
fn removal_while_up_repeats_admin_down_for_the_detection_time() {
    let mut w = Wire::up(fast());
    let old = w.a.get(B).map(|s| s.session().local_disc());
    let since = w.now - w.t0;
    // The first AdminDown is lost on its way out.
    w.link_up = false;
    let out = w.a_removes_b();
    w.link_up = true;
    use State::*;
    assert_eq!(
        changes(&out),
        vec![(B, Up, AdminDown, Diag::ADMINISTRATIVELY_DOWN)]
    );
    let sent = sends(&out);
    assert_eq!(sent.len(), 1, "{out:?}");
    let admin_down = sent[0].2;
    assert_eq!(
        (admin_down.state, admin_down.diag),
        (AdminDown, Diag::ADMINISTRATIVELY_DOWN)
    );
    assert!(!w.a.contains(B) && w.a.is_empty());
    assert!(w.a.is_leaving(B) && w.a.any_leaving());
    assert_eq!(w.a.next_deadline(), Some(w.now + 10 * MS / 4));

    w.run_for(100 * MS);
    // Twice per 10 ms interval from a quarter interval on, for 3 x 10 ms.
    let want: Vec<Duration> = [2500, 7500, 12500, 17500, 22500, 27500]
        .into_iter()
        .map(Duration::from_micros)
        .collect();
    assert_eq!(w.repeats_since(since), want);
    let repeats: Vec<(ControlPacket, bool)> = w
        .log
        .iter()
        .filter_map(|(_, who, o)| match *o {
            Output::Repeat { packet, last, .. } if *who == 'a' => Some((packet, last)),
            _ => None,
        })
        .collect();
    let lasts: Vec<bool> = repeats.iter().map(|r| r.1).collect();
    assert_eq!(lasts, [false, false, false, false, false, true]);
    assert!(repeats.iter().all(|r| r.0 == admin_down));
    assert!(!w.a.any_leaving());
    assert_eq!(w.a.next_deadline(), None);
    // The peer learnt AdminDown from a repeat: Neighbor Signaled Down, not
    // a detection timeout, and it knows the peer said AdminDown.
    let b_down = w.log.iter().find_map(|(_, who, o)| match *o {
        Output::StateChange {
            to: Down,
            diag,
            remote,
            ..
        } if *who == 'b' => Some((diag, remote)),
        _ => None,
    });
    assert_eq!(b_down, Some((Diag::NEIGHBOR_SIGNALED_DOWN, AdminDown)));
    // b's packets still name a's old discriminator: no session takes them.
    assert!(w.a.unattributed().dropped_no_session > 0);
    assert!(old.is_some_and(|d| !w.a.by_disc.contains_key(&d)));
}

#[test]
fn admin_down_repeats_cover_at_most_one_second() {
    // 300 ms x 5 is 1.5 s: repeats every 150 ms stop after 1 s.
    let mut w = Wire::up(SessionConfig::new(300 * MS, 5));
    assert_eq!(
        w.a.get(B).and_then(|s| s.session().tx_interval()),
        Some(300 * MS)
    );
    let since = w.now - w.t0;
    w.a_removes_b();
    w.run_for(Duration::from_secs(3));
    let want: Vec<Duration> = (0..6).map(|i| 75 * MS + i * 150 * MS).collect();
    assert_eq!(w.repeats_since(since), want);
}

#[test]
fn no_repeats_for_a_session_that_was_not_up() {
    let t0 = Instant::now();
    let mut d = Demux::new(fast(), 3);
    let mut out = Vec::new();
    d.add(B, A, t0, &mut out);
    d.on_timer(t0, &mut out);
    let r = d.receive(&wire(State::Down, 0xb, 0), B, GOOD_TTL, t0, &mut out);
    assert_eq!(r, Ok(()));
    assert_eq!(state(&d, B), Some(State::Init));
    out.clear();
    assert!(d.remove(B, t0 + MS, &mut out));
    assert_eq!(
        changes(&out),
        vec![(
            B,
            State::Init,
            State::AdminDown,
            Diag::ADMINISTRATIVELY_DOWN
        )]
    );
    assert_eq!(sends(&out).len(), 1);
    assert!(!d.any_leaving());
    assert_eq!(d.next_deadline(), None);
    out.clear();
    assert!(!d.remove(B, t0 + MS, &mut out));
    assert!(out.is_empty());
}

#[test]
fn a_new_session_to_the_same_peer_stops_the_repeats() {
    let mut w = Wire::up(fast());
    let old = w.a.get(B).map(|s| s.session().local_disc());
    let since = w.now - w.t0;
    w.a_removes_b();
    w.run_for(3 * MS);
    assert_eq!(w.repeats_since(since).len(), 1);
    let mut out = Vec::new();
    let new = w.a.add(B, A, w.now, &mut out).get();
    assert!(out.is_empty(), "{out:?}");
    assert!(!w.a.is_leaving(B));
    assert_ne!(Some(new), old);
    assert_eq!(w.a.next_deadline(), Some(w.now));
    w.run_for(Duration::from_secs(3));
    assert_eq!(w.repeats_since(since).len(), 1, "repeats after the re-add");
    // No AdminDown from a after the re-add: the two come Up again.
    let after = w.now - Duration::from_secs(3) - w.t0;
    assert!(!w.log.iter().any(|(t, who, o)| *t >= after
        && *who == 'a'
        && matches!(o, Output::Send { packet, .. } | Output::Repeat { packet, .. }
            if packet.state == State::AdminDown)));
    assert_eq!(state(&w.a, B), Some(State::Up));
    assert_eq!(state(&w.b, A), Some(State::Up));
}

#[test]
fn adding_a_running_session_again_replaces_it_without_repeats() {
    let mut w = Wire::up(fast());
    let old = w.a.get(B).map(|s| s.session().local_disc()).unwrap_or(0);
    let mut out = Vec::new();
    let new = w.a.add(B, A, w.now, &mut out).get();
    assert_ne!(new, old);
    assert_eq!(
        changes(&out),
        vec![(B, State::Up, State::AdminDown, Diag::ADMINISTRATIVELY_DOWN)]
    );
    assert!(!w.a.any_leaving());
    assert_eq!(w.a.len(), 1);
    assert_eq!(state(&w.a, B), Some(State::Down));
    // The old discriminator leads nowhere now.
    let r =
        w.a.receive(&wire(State::Up, 0xb, old), B, GOOD_TTL, w.now, &mut out);
    assert_eq!(r, Err(RxError::NoSession));
}

#[test]
fn cancelled_repeats_stop() {
    let mut w = Wire::up(fast());
    let since = w.now - w.t0;
    w.a_removes_b();
    w.a.cancel_leaving(B);
    assert!(!w.a.any_leaving());
    w.run_for(100 * MS);
    assert!(w.repeats_since(since).is_empty());
}

#[test]
fn discriminators_are_unique_nonzero_and_follow_the_seed() {
    let t0 = Instant::now();
    let peers: Vec<IpAddr> = (0..2000u32)
        .map(|i| IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)))
        .collect();
    let discs = |seed: u64| -> Vec<u32> {
        let mut d = Demux::new(fast(), seed);
        let mut out = Vec::new();
        peers
            .iter()
            .map(|&p| d.add(p, A, t0, &mut out).get())
            .collect()
    };
    let one = discs(1);
    let mut sorted = one.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), peers.len());
    assert_eq!(discs(1), one, "same seed, same discriminators");
    assert_ne!(discs(2), one);
    // Seed 0 is fine too.
    assert!(discs(0).iter().all(|&d| d != 0));
}

#[test]
fn detect_mult_zero_is_taken_as_one() {
    let d = Demux::new(SessionConfig::new(10 * MS, 0), 1);
    assert_eq!(d.config().detect_mult, 1);
}
