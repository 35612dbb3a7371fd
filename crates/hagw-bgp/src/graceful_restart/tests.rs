//! Graceful restart beside the RIB, driven with virtual time: no tasks, no clock.

use super::*;
use crate::rib::Path;
use ipnet::IpNet;

const A: &str = "192.168.100.20";
const B: &str = "192.168.100.21";
const RESTART: Duration = Duration::from_secs(60);

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

fn net(s: &str) -> IpNet {
    s.parse().expect("prefix")
}

fn path(nh: IpAddr) -> Path {
    Path {
        next_hop: nh,
        local_pref: 100,
        as_path_len: 1,
        origin: 0,
        med: 0,
        neighbor_as: 65000,
        ebgp: true,
        peer_id: 1,
    }
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// A RIB, the graceful-restart state beside it, and the time they started.
struct World {
    rib: Rib,
    gr: Restarts,
    t0: Instant,
    out: Vec<Output>,
}

impl World {
    fn new(deferral: Option<Deferral>) -> World {
        let t0 = Instant::now();
        World {
            rib: Rib::new(8),
            gr: Restarts::new(deferral, t0),
            t0,
            out: Vec::new(),
        }
    }

    /// Deferring for neighbors A and B, for the restart time at most.
    fn deferring() -> World {
        World::new(Some(Deferral {
            neighbors: [ip(A), ip(B)].into(),
            limit: RESTART,
        }))
    }

    fn at(&self, s: u64) -> Instant {
        self.t0 + secs(s)
    }

    fn up(&mut self, peer: &str, kept: Option<&[bool]>, s: u64) {
        let now = self.at(s);
        self.gr
            .peer_up(&mut self.rib, ip(peer), kept, false, now, &mut self.out);
    }

    fn down(&mut self, peer: &str, stale_for: Option<Duration>, s: u64) {
        let now = self.at(s);
        self.gr
            .peer_down(&mut self.rib, ip(peer), stale_for, now, &mut self.out);
    }

    /// `peer` announces `prefix` via itself, as the driver does for an UPDATE.
    fn announce(&mut self, peer: &str, prefix: &str) {
        let mut changes = Vec::new();
        self.rib
            .announce(ip(peer), net(prefix), path(ip(peer)), &mut changes);
        self.gr.forward(&mut changes, &mut self.out);
    }

    fn eor(&mut self, peer: &str, v6: bool) {
        self.gr
            .end_of_rib(&mut self.rib, ip(peer), v6, &mut self.out);
    }

    fn timer(&mut self, s: u64) {
        let now = self.at(s);
        self.gr.on_timer(&mut self.rib, now, &mut self.out);
    }

    fn routes(&self) -> usize {
        self.rib.installed_len()
    }

    fn take(&mut self) -> Vec<Output> {
        std::mem::take(&mut self.out)
    }
}

fn route(prefix: &str, hops: &[&str]) -> Output {
    Output::Route(Change {
        prefix: net(prefix),
        next_hops: hops.iter().map(|h| ip(h)).collect(),
    })
}

/// A peer with IPv4 graceful restart, its default route, then gone with
/// graceful restart for `RESTART`.
fn restarting_a() -> World {
    let mut w = World::new(None);
    w.up(A, Some(&[false]), 0);
    w.announce(A, "0.0.0.0/0");
    w.down(A, Some(RESTART), 0);
    w.take();
    w
}

/// A restarted peer whose OPEN keeps forwarding state for IPv4 (F bit) keeps
/// its stale IPv4 routes until End-of-RIB; one that does not loses them at
/// once (RFC 4724 §4.2).
#[test]
fn stale_routes_follow_the_f_bit_of_the_new_session() {
    let cases: [(Option<&[bool]>, usize); 3] = [(Some(&[false]), 1), (Some(&[]), 0), (None, 0)];
    for (kept, expect) in cases {
        let mut w = restarting_a();
        assert_eq!(w.routes(), 1, "kept, stale, while the peer restarts");
        w.up(A, kept, 1);
        assert_eq!(w.routes(), expect, "new OPEN {kept:?}");
    }
}

#[test]
fn only_the_families_without_the_f_bit_go_at_once() {
    let mut w = World::new(None);
    w.up(A, Some(&[false, true]), 0);
    w.announce(A, "0.0.0.0/0");
    w.announce(A, "::/0");
    w.down(A, Some(RESTART), 0);
    w.take();
    w.up(A, Some(&[true]), 1);
    assert_eq!(w.take(), vec![route("0.0.0.0/0", &[])]);
    assert_eq!(w.routes(), 1, "the IPv6 default waits for its End-of-RIB");
}

/// RFC 4724 §4.2: the restart timer stops once the peer is back; its stale
/// routes then wait for End-of-RIB, bounded by the stale-path time.
#[test]
fn the_restart_timer_stops_when_the_peer_is_back() {
    let mut w = restarting_a();
    assert_eq!(w.gr.next_deadline(), Some(w.at(60)), "the restart time");
    w.up(A, Some(&[false]), 10);
    assert_eq!(w.gr.next_deadline(), Some(w.at(10) + STALE_PATH_TIME));
    w.timer(90);
    assert_eq!(w.routes(), 1, "kept past the restart time");
    assert!(w.take().is_empty());
}

#[test]
fn the_stale_path_time_bounds_waiting_for_end_of_rib() {
    let mut w = restarting_a();
    w.up(A, Some(&[false]), 10);
    let end = 10 + STALE_PATH_TIME.as_secs();
    w.timer(end - 1);
    assert_eq!(w.routes(), 1);
    w.timer(end);
    assert_eq!(w.routes(), 0, "gone after the stale-path time");
    assert_eq!(
        w.take(),
        vec![
            Output::StaleTimeOver {
                peer: ip(A),
                timer: Timer::StalePath
            },
            route("0.0.0.0/0", &[]),
        ]
    );
    assert_eq!(w.gr.next_deadline(), None);
}

#[test]
fn a_peer_not_back_within_its_restart_time_loses_its_stale_routes() {
    let mut w = restarting_a();
    w.timer(59);
    assert_eq!(w.routes(), 1);
    w.timer(60);
    assert_eq!(w.routes(), 0);
    assert_eq!(
        w.take(),
        vec![
            Output::StaleTimeOver {
                peer: ip(A),
                timer: Timer::Restart
            },
            route("0.0.0.0/0", &[]),
        ]
    );
}

#[test]
fn end_of_rib_removes_what_was_not_announced_again_and_stops_the_timer() {
    let mut w = World::new(None);
    w.up(A, Some(&[false]), 0);
    w.announce(A, "0.0.0.0/0");
    w.announce(A, "10.9.0.0/16");
    w.down(A, Some(RESTART), 0);
    w.take();
    w.up(A, Some(&[false]), 1);
    w.announce(A, "0.0.0.0/0");
    assert!(w.take().is_empty(), "the same next hop: nothing to do");
    w.eor(A, false);
    assert_eq!(w.take(), vec![route("10.9.0.0/16", &[])]);
    assert_eq!(w.routes(), 1);
    assert_eq!(w.gr.next_deadline(), None, "nothing stale left to time");
}

/// Down at 0 (restart time 60), back at 10, down again at 20: the first
/// restart timer, due at 60, belongs to an earlier session and does nothing;
/// the current one is due at 80.
#[test]
fn a_timer_of_an_earlier_session_is_ignored() {
    let mut w = restarting_a();
    w.up(A, Some(&[false]), 10);
    w.down(A, Some(RESTART), 20);
    assert_eq!(w.gr.next_deadline(), Some(w.at(80)));
    w.timer(60);
    assert_eq!(w.routes(), 1, "the old restart timer is gone");
    w.timer(79);
    assert_eq!(w.routes(), 1);
    w.timer(80);
    assert_eq!(w.routes(), 0);
}

#[test]
fn a_hard_end_removes_the_routes_and_the_timer() {
    let mut w = restarting_a();
    w.up(A, Some(&[false]), 10);
    w.down(A, None, 20);
    assert_eq!(w.take(), vec![route("0.0.0.0/0", &[])]);
    assert_eq!(w.gr.next_deadline(), None);
}

/// A session that replaces one whose end was never reported: with graceful
/// restart the old paths become stale and wait for End-of-RIB; without, they go.
#[test]
fn a_replaced_session_keeps_its_paths_stale_only_with_graceful_restart() {
    for (kept, expect) in [(Some(&[false][..]), 1), (None, 0)] {
        let mut w = World::new(None);
        w.up(A, kept, 0);
        w.announce(A, "0.0.0.0/0");
        let now = w.at(1);
        w.gr.peer_up(&mut w.rib, ip(A), kept, true, now, &mut w.out);
        assert_eq!(w.routes(), expect, "{kept:?}");
        assert_eq!(w.rib.stale_count(ip(A)), expect);
    }
}

/// RFC 4724 §4.1: while we defer, the kernel hears nothing; when every
/// neighbor has sent End-of-RIB it gets the whole RIB at once, then purges.
#[test]
fn the_deferral_ends_when_every_neighbor_sent_end_of_rib() {
    let mut w = World::deferring();
    assert!(w.gr.deferring());
    assert_eq!(w.gr.next_deadline(), Some(w.at(60)));
    w.up(A, Some(&[false]), 1);
    w.up(B, Some(&[false]), 1);
    w.announce(A, "0.0.0.0/0");
    w.announce(B, "0.0.0.0/0");
    w.eor(A, false);
    assert!(w.take().is_empty(), "still waiting for B");
    assert!(w.gr.deferring());
    w.eor(B, false);
    assert_eq!(
        w.take(),
        vec![route("0.0.0.0/0", &[A, B]), Output::DeferralOver]
    );
    assert!(!w.gr.deferring());
}

#[test]
fn the_deferral_syncs_the_whole_rib_then_purges() {
    let mut w = World::deferring();
    w.up(A, Some(&[false]), 1);
    w.up(B, Some(&[false]), 1);
    w.announce(A, "0.0.0.0/0");
    w.announce(B, "0.0.0.0/0");
    w.announce(B, "10.9.0.0/16");
    w.eor(A, false);
    w.eor(B, false);
    assert_eq!(
        w.take(),
        vec![
            route("0.0.0.0/0", &[A, B]),
            route("10.9.0.0/16", &[B]),
            Output::DeferralOver,
        ]
    );
    assert!(!w.gr.deferring());
    w.announce(A, "10.8.0.0/16");
    assert_eq!(w.take(), vec![route("10.8.0.0/16", &[A])], "live now");
}

#[test]
fn the_deferral_ends_when_its_limit_passes() {
    let mut w = World::deferring();
    w.up(A, Some(&[false]), 1);
    w.announce(A, "0.0.0.0/0");
    w.eor(A, false);
    w.timer(59);
    assert!(w.gr.deferring(), "B still has time");
    assert!(w.take().is_empty());
    w.timer(60);
    assert_eq!(
        w.take(),
        vec![route("0.0.0.0/0", &[A]), Output::DeferralOver]
    );
    assert_eq!(w.gr.next_deadline(), None);
}

#[test]
fn the_deferral_does_not_wait_for_an_unreachable_neighbor() {
    let mut w = World::deferring();
    w.up(A, Some(&[false]), 1);
    w.announce(A, "0.0.0.0/0");
    w.eor(A, false);
    w.gr.unreachable(&w.rib, ip(B), &mut w.out);
    assert_eq!(
        w.take(),
        vec![
            Output::NotWaitingFor(ip(B)),
            route("0.0.0.0/0", &[A]),
            Output::DeferralOver,
        ]
    );
    w.gr.unreachable(&w.rib, ip(B), &mut w.out);
    assert!(w.take().is_empty(), "said once");
}

#[test]
fn the_deferral_does_not_wait_for_a_neighbor_whose_session_ended_hard() {
    let mut w = World::deferring();
    w.up(A, Some(&[false]), 1);
    w.up(B, Some(&[false]), 1);
    w.announce(A, "0.0.0.0/0");
    w.announce(B, "0.0.0.0/0");
    w.eor(A, false);
    // A graceful end keeps waiting: B is restarting and will be back.
    w.down(B, Some(RESTART), 2);
    assert!(w.take().is_empty());
    assert!(w.gr.deferring());
    w.down(B, None, 3);
    assert_eq!(
        w.take(),
        vec![
            Output::NotWaitingFor(ip(B)),
            route("0.0.0.0/0", &[A]),
            Output::DeferralOver,
        ]
    );
}

#[test]
fn an_unknown_peer_neither_waits_nor_ends_the_deferral() {
    let mut w = World::deferring();
    w.up("10.0.0.9", None, 1);
    w.announce("10.0.0.9", "0.0.0.0/0");
    w.eor("10.0.0.9", false);
    w.gr.unreachable(&w.rib, ip("10.0.0.9"), &mut w.out);
    assert!(w.take().is_empty());
    assert!(w.gr.deferring());
}

#[test]
fn a_restart_timer_during_the_deferral_changes_only_the_rib() {
    let mut w = World::new(Some(Deferral {
        neighbors: [ip(B)].into(),
        limit: secs(600),
    }));
    w.up(A, Some(&[false]), 0);
    w.announce(A, "0.0.0.0/0");
    w.down(A, Some(RESTART), 0);
    w.timer(60);
    assert_eq!(
        w.take(),
        vec![Output::StaleTimeOver {
            peer: ip(A),
            timer: Timer::Restart
        }],
        "no route for the kernel while deferring"
    );
    assert_eq!(w.routes(), 0);
    w.timer(600);
    assert_eq!(w.take(), vec![Output::DeferralOver], "an empty RIB to sync");
}
