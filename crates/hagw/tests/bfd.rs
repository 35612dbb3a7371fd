//! BFD (issue 6, item 1): hagw's BFD driver against FRR bfdd and against
//! itself, in namespaces each test makes and removes. The hagw side is the
//! `Bfd` API driven directly, started inside the namespace (the BFD thread it
//! spawns, and so every socket it opens, live there) with a tokio runtime for
//! the watchers.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use hagw::daemon::bfd::{Bfd, BfdSessionStatus, BfdState};
use hagw_bfd::packet::ControlPacket;
use hagw_bfd::{Diag, State};
use hagw_lab::SilentCut;
use hagw_testkit::{addr, veth, wait_until, Frr, Netns};
use tokio::runtime::Runtime;
use tokio::sync::watch;

const MS: Duration = Duration::from_millis(1);

/// A `Bfd` running on a runtime inside a namespace.
struct Side {
    rt: Runtime,
    bfd: Bfd,
}

impl Side {
    fn start(ns: &Netns, interval: Duration, mult: u8) -> Side {
        ns.run(|| {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("tokio runtime");
            let bfd = {
                let _g = rt.enter();
                Bfd::start(interval, mult, true).expect("Bfd::start")
            };
            Side { rt, bfd }
        })
    }

    fn session(&self, peer: &str) -> BfdSessionStatus {
        let peer: IpAddr = peer.parse().expect("peer address");
        self.rt
            .block_on(self.bfd.status())
            .into_iter()
            .find(|s| s.peer == peer)
            .unwrap_or_else(|| panic!("no BFD session to {peer}"))
    }

    /// Waits (up to `limit`) for the watched state to become `want`; returns
    /// how long that took.
    fn wait_state(
        &self,
        rx: &mut watch::Receiver<BfdState>,
        want: BfdState,
        limit: Duration,
    ) -> Duration {
        let start = Instant::now();
        self.rt
            .block_on(async {
                tokio::time::timeout(limit, rx.wait_for(|s| *s == want))
                    .await
                    .map(|r| r.is_ok())
            })
            .ok()
            .filter(|ok| *ok)
            .unwrap_or_else(|| panic!("BFD state not {want} within {limit:?}"));
        start.elapsed()
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("address")
}

/// Two namespaces on one veth: `a` 10.0.N.1 (+ fd00:N::1), `b` .2.
fn pair(label: &str, net: u8) -> (Netns, Netns) {
    hagw_testkit::require_root();
    let a = Netns::new(&format!("{label}a"));
    let b = Netns::new(&format!("{label}b"));
    veth(&a, "e0", &b, "e0");
    addr(&a, "e0", &format!("10.0.{net}.1/24"));
    addr(&b, "e0", &format!("10.0.{net}.2/24"));
    addr(&a, "e0", &format!("fd00:{net}::1/64"));
    addr(&b, "e0", &format!("fd00:{net}::2/64"));
    (a, b)
}

#[test]
fn interop_with_frr_bfdd_up_and_silent_cut() {
    let (h, f) = pair("bfdfrr", 1);
    let frr = Frr::start(
        &f,
        "bfd\n peer 10.0.1.1 local-address 10.0.1.2\n  receive-interval 50\n  transmit-interval 50\n !\n!\n",
        true,
    );
    let side = Side::start(&h, 50 * MS, 3);
    let mut rx = side.bfd.watch(ip("10.0.1.2"), ip("10.0.1.1"));
    let up = side.wait_state(&mut rx, BfdState::Up, Duration::from_secs(15));
    println!("hagw side Up after {up:?}");
    wait_until("FRR's BFD peer up", Duration::from_secs(10), || {
        frr.vtysh("show bfd peers").contains("Status: up")
    });
    // Both Poll Sequences done: fast timers both ways.
    wait_until("BFD poll done", Duration::from_secs(5), || {
        let s = side.session("10.0.1.2");
        !s.poll_in_progress && s.remote_desired_min_tx == 50 * MS
    });
    let st = side.session("10.0.1.2");
    println!("hagw status: {st:?}");
    assert_eq!(st.state, State::Up);
    assert_eq!(st.remote_state, State::Up);
    assert_eq!(st.desired_min_tx, 50 * MS);
    assert_eq!(st.remote_min_rx, 50 * MS);
    assert_eq!(st.tx_interval, Some(50 * MS));
    assert_eq!(st.detection_time, Some(150 * MS));
    assert!(st.source_port.is_some_and(|p| p >= 49152));
    assert_eq!(st.counters.dropped_bad_ttl, 0);
    assert_eq!(st.counters.dropped_malformed, 0);
    assert_eq!(st.counters.tx_errors, 0, "{:?}", st.last_tx_error);
    let peers = frr.vtysh("show bfd peers");
    println!("{peers}");
    assert!(
        peers.contains("Remote timers") && peers.contains("Receive interval: 50ms"),
        "{peers}"
    );
    // FRR sees our fast timers after the Poll.
    wait_until("FRR sees 50 ms from hagw", Duration::from_secs(5), || {
        let p = frr.vtysh("show bfd peers");
        p.split("Remote timers:")
            .nth(1)
            .is_some_and(|r| r.contains("Transmission interval: 50ms"))
    });

    // Silent cut of the hagw side's link: nothing arrives any more (and
    // nothing leaves: FRR times out too).
    let silent = SilentCut::new(&h, "e0");
    let cut = Instant::now();
    side.wait_state(&mut rx, BfdState::Down, Duration::from_secs(2));
    let measured = cut.elapsed();
    println!("hagw detected the silent FRR peer after {measured:?} (detection time 150 ms)");
    assert!(measured < Duration::from_secs(1), "{measured:?}");
    let st = side.session("10.0.1.2");
    assert_eq!(st.local_diag, Diag::CONTROL_DETECTION_TIME_EXPIRED);
    assert_eq!(
        st.desired_min_tx,
        Duration::from_secs(1),
        "slow start again"
    );
    wait_until("FRR's BFD peer down", Duration::from_secs(5), || {
        frr.vtysh("show bfd peers").contains("Status: down")
    });

    // Heal: back Up.
    silent.restore();
    let again = side.wait_state(&mut rx, BfdState::Up, Duration::from_secs(15));
    println!("Up again {again:?} after the heal");
    wait_until("FRR's BFD peer up again", Duration::from_secs(10), || {
        frr.vtysh("show bfd peers").contains("Status: up")
    });

    // unwatch: FRR hears AdminDown (it shows the peer down, diag admin down).
    side.bfd.unwatch(ip("10.0.1.2"), rx);
    wait_until("FRR sees AdminDown", Duration::from_secs(5), || {
        frr.vtysh("show bfd peers").contains("Status: down")
    });
    assert!(side.rt.block_on(side.bfd.status()).is_empty());
}

#[test]
fn hagw_to_hagw_10ms_both_families_and_silent_cut() {
    let (a, b) = pair("bfdhh", 2);
    let sa = Side::start(&a, 10 * MS, 3);
    let sb = Side::start(&b, 10 * MS, 3);
    let mut a4 = sa.bfd.watch(ip("10.0.2.2"), ip("10.0.2.1"));
    let mut b4 = sb.bfd.watch(ip("10.0.2.1"), ip("10.0.2.2"));
    let mut a6 = sa.bfd.watch(ip("fd00:2::2"), ip("fd00:2::1"));
    let mut b6 = sb.bfd.watch(ip("fd00:2::1"), ip("fd00:2::2"));
    // A second watcher shares the session.
    let a4_again = sa.bfd.watch(ip("10.0.2.2"), ip("10.0.2.1"));
    for (s, rx) in [
        (&sa, &mut a4),
        (&sb, &mut b4),
        (&sa, &mut a6),
        (&sb, &mut b6),
    ] {
        let t = s.wait_state(rx, BfdState::Up, Duration::from_secs(10));
        println!("Up after {t:?}");
    }
    assert_eq!(*a4_again.borrow(), BfdState::Up);
    // Giving up a shared watch leaves the session to the other watcher.
    a4.mark_unchanged();
    sa.bfd.unwatch(ip("10.0.2.2"), a4_again);
    std::thread::sleep(100 * MS);
    assert!(
        !a4.has_changed().unwrap_or(true),
        "the shared session changed"
    );
    assert_eq!(sa.session("10.0.2.2").state, State::Up);
    for (s, peer) in [
        (&sa, "10.0.2.2"),
        (&sb, "10.0.2.1"),
        (&sa, "fd00:2::2"),
        (&sb, "fd00:2::1"),
    ] {
        wait_until("10 ms timers", Duration::from_secs(5), || {
            let st = s.session(peer);
            !st.poll_in_progress && st.detection_time == Some(30 * MS)
        });
        let st = s.session(peer);
        assert_eq!((st.state, st.tx_interval), (State::Up, Some(10 * MS)));
    }
    // Stable for a second (report flaps rather than fail on a loaded box).
    std::thread::sleep(Duration::from_secs(1));
    let st = sa.session("10.0.2.2");
    println!(
        "after 1 s: rx {} tx {} (state {}), since last change {:?}",
        st.counters.rx, st.counters.tx, st.state, st.since_change
    );
    assert!(st.counters.rx > 50, "{st:?}");
    assert_eq!(sa.rt.block_on(sa.bfd.status()).len(), 2);

    // Silent cut both ways of b's link: everyone must time out.
    let _silent = SilentCut::new(&b, "e0");
    let cut = Instant::now();
    let mut times = Vec::new();
    for (name, s, rx) in [
        ("a->b v4", &sa, &mut a4),
        ("b->a v4", &sb, &mut b4),
        ("a->b v6", &sa, &mut a6),
        ("b->a v6", &sb, &mut b6),
    ] {
        s.wait_state(rx, BfdState::Down, Duration::from_secs(2));
        let _ = name;
        times.push(cut.elapsed());
    }
    // The waits run one after another: the first is exact, the others are
    // upper bounds; each session's own view is checked below.
    println!(
        "silent cut detected (10 ms x 3 = 30 ms): first after {:?}, all by {:?}",
        times[0], times[3]
    );
    assert!(times[3] < Duration::from_secs(1), "{times:?}");
    for (s, peer) in [
        (&sa, "10.0.2.2"),
        (&sb, "10.0.2.1"),
        (&sa, "fd00:2::2"),
        (&sb, "fd00:2::1"),
    ] {
        let st = s.session(peer);
        assert_eq!(st.state, State::Down);
        assert_eq!(
            st.local_diag,
            Diag::CONTROL_DETECTION_TIME_EXPIRED,
            "{peer}"
        );
    }
    // Dropping every receiver removes the session.
    drop(a6);
    wait_until("a's v6 session removed", Duration::from_secs(3), || {
        sa.rt.block_on(sa.bfd.status()).len() == 1
    });
}

/// Two hagw sides Up at 50 ms; returns the sides, a's watch on b and b's on
/// a, and the discriminators (a's, b's) of that session.
fn up_pair(
    a: &Netns,
    b: &Netns,
    net: u8,
) -> (Side, Side, Vec<watch::Receiver<BfdState>>, u32, u32) {
    up_pair_at(a, b, net, 50 * MS)
}

/// [`up_pair`] at `interval`, both sides past their Poll Sequence.
fn up_pair_at(
    a: &Netns,
    b: &Netns,
    net: u8,
    interval: Duration,
) -> (Side, Side, Vec<watch::Receiver<BfdState>>, u32, u32) {
    let sa = Side::start(a, interval, 3);
    let sb = Side::start(b, interval, 3);
    let (pa, pb) = (format!("10.0.{net}.1"), format!("10.0.{net}.2"));
    let mut ra = sa.bfd.watch(ip(&pb), ip(&pa));
    let rb = sb.bfd.watch(ip(&pa), ip(&pb));
    sa.wait_state(&mut ra, BfdState::Up, Duration::from_secs(10));
    wait_until("poll done", Duration::from_secs(5), || {
        !sa.session(&pb).poll_in_progress && !sb.session(&pa).poll_in_progress
    });
    let st = sa.session(&pb);
    let (da, db) = (st.local_disc, st.remote_disc);
    (sa, sb, vec![ra, rb], da, db)
}

/// A UDP socket in `ns` on `src` (port 40000, outside the BFD source range)
/// with TTL `ttl` sending `data` to port 3784.
fn send_raw(ns: &Netns, src: &str, dst: &str, ttl: u32, data: &[u8]) {
    let (src, dst) = (ip(src), ip(dst));
    let data = data.to_vec();
    ns.run(move || {
        let s = UdpSocket::bind(SocketAddr::new(src, 40000)).expect("bind");
        s.set_ttl(ttl).expect("ttl");
        s.send_to(&data, SocketAddr::new(dst, 3784)).expect("send");
    });
}

/// An AdminDown from b to a: would take a's session Down if accepted.
fn admin_down(da: u32, db: u32) -> ControlPacket {
    ControlPacket {
        diag: Diag::ADMINISTRATIVELY_DOWN,
        state: State::AdminDown,
        poll: false,
        final_: false,
        cpi: false,
        demand: false,
        detect_mult: 3,
        my_disc: db,
        your_disc: da,
        desired_min_tx_us: 1_000_000,
        required_min_rx_us: 50_000,
        required_min_echo_rx_us: 0,
    }
}

#[test]
fn packets_with_ttl_below_255_are_ignored_and_counted() {
    let (a, b) = pair("bfdttl", 3);
    let (sa, _sb, mut rx, da, db) = up_pair(&a, &b, 3);
    let before = sa.session("10.0.3.2").counters;
    let pkt = admin_down(da, db).encode();
    for ttl in [64, 254, 1] {
        send_raw(&b, "10.0.3.2", "10.0.3.1", ttl, &pkt);
    }
    wait_until("bad TTL counted", Duration::from_secs(3), || {
        sa.session("10.0.3.2").counters.dropped_bad_ttl == before.dropped_bad_ttl + 3
    });
    std::thread::sleep(200 * MS);
    let st = sa.session("10.0.3.2");
    assert_eq!(st.state, State::Up, "{st:?}");
    assert!(!rx[0].has_changed().unwrap_or(true), "no state change");
    println!("bad TTL dropped: {}", st.counters.dropped_bad_ttl);
    // The same packet at TTL 255 is honoured: the check was the TTL. b's
    // own packets are held back so a's diagnostic stays the one it sets.
    b.sh("iptables -I OUTPUT -p udp --dport 3784 --sport 49152:65535 -j DROP");
    send_raw(&b, "10.0.3.2", "10.0.3.1", 255, &pkt);
    sa.wait_state(&mut rx[0], BfdState::Down, Duration::from_secs(2));
    let st = sa.session("10.0.3.2");
    assert_eq!(st.local_diag, Diag::NEIGHBOR_SIGNALED_DOWN);
}

#[test]
fn malformed_auth_and_unknown_peer_packets_are_dropped_and_counted() {
    let (a, b) = pair("bfdbad", 4);
    addr(&b, "e0", "10.0.4.3/24");
    let (sa, _sb, rx, da, db) = up_pair(&a, &b, 4);
    let good = admin_down(da, db).encode();
    let mut v2 = good;
    v2[0] = (2 << 5) | 7; // version 2
    let mut long = good;
    long[3] = 40; // Length beyond the payload
    let mut mult0 = good;
    mult0[2] = 0;
    let mut auth = good.to_vec();
    auth[1] |= 0x04;
    auth[3] = 31;
    auth.extend_from_slice(&[1, 7, 1, b'p', b'w', b'd', b'x']);
    let mut wrong_disc = admin_down(da, db);
    wrong_disc.your_disc = da.wrapping_add(1).max(1);
    let before = sa.session("10.0.4.2").counters;
    for p in [&v2[..], &long[..], &mult0[..], &good[..10]] {
        send_raw(&b, "10.0.4.2", "10.0.4.1", 255, p);
    }
    send_raw(&b, "10.0.4.2", "10.0.4.1", 255, &auth);
    send_raw(&b, "10.0.4.2", "10.0.4.1", 255, &wrong_disc.encode());
    // From an address with no session (passive role: dropped).
    let stranger = ControlPacket {
        your_disc: 0,
        state: State::Down,
        ..admin_down(da, 77)
    };
    send_raw(&b, "10.0.4.3", "10.0.4.1", 255, &stranger.encode());
    wait_until("drops counted", Duration::from_secs(3), || {
        let c = sa.session("10.0.4.2").counters;
        c.dropped_malformed == before.dropped_malformed + 4
            && c.dropped_auth == before.dropped_auth + 1
            && c.dropped_no_session == before.dropped_no_session + 1
    });
    let global = sa.rt.block_on(sa.bfd.unattributed());
    assert_eq!(global.dropped_no_session, 1, "{global:?}");
    std::thread::sleep(200 * MS);
    let st = sa.session("10.0.4.2");
    println!(
        "counters after bad packets: {:?} (last tx error {:?})",
        st.counters, st.last_tx_error
    );
    assert_eq!(st.state, State::Up);
    assert!(!rx[0].has_changed().unwrap_or(true), "session unaffected");
    assert_eq!(
        sa.rt.block_on(sa.bfd.status()).len(),
        1,
        "no session for the stranger"
    );
}

#[test]
fn a_flood_of_bad_packets_neither_flaps_a_10ms_session_nor_stops_it() {
    let (a, b) = pair("bfdflood", 6);
    let (sa, _sb, mut rx, _, _) = up_pair_at(&a, &b, 6, 10 * MS);
    let ra = &mut rx[0];
    ra.mark_unchanged();
    let before = sa.session("10.0.6.2").counters;
    // One second of version-2 packets from the peer's own address, TTL 255,
    // as fast as one sender can go.
    let mut bad = admin_down(1, 2).encode();
    bad[0] = (2 << 5) | 7;
    let sent = b.run(move || {
        let s = UdpSocket::bind("10.0.6.2:40000").expect("bind");
        s.set_ttl(255).expect("ttl");
        let dst: SocketAddr = "10.0.6.1:3784".parse().expect("dst");
        let (start, mut n) = (Instant::now(), 0u64);
        while start.elapsed() < Duration::from_secs(1) {
            for _ in 0..100 {
                if s.send_to(&bad, dst).is_ok() {
                    n += 1;
                }
            }
        }
        n
    });
    std::thread::sleep(100 * MS);
    let st = sa.session("10.0.6.2");
    let dropped = st.counters.dropped_malformed - before.dropped_malformed;
    println!(
        "flood: {sent} sent in 1 s, {dropped} read and dropped as malformed, {} good packets in the meantime",
        st.counters.rx - before.rx
    );
    assert_eq!(st.state, State::Up);
    assert!(
        !ra.has_changed().unwrap_or(true),
        "the session flapped under the flood"
    );
    assert!(dropped > 1000, "the flood was not read: {dropped}");
    assert!(st.counters.rx - before.rx > 50, "good packets kept coming");
}

/// A session removed while Up repeats its AdminDown for the peer's detection
/// time: with the first one lost, the peer still learns AdminDown (and keeps
/// its BGP, RFC 5882 §3.2) instead of timing out.
#[test]
fn a_lost_admin_down_is_repeated_so_the_peer_sees_no_failure() {
    let (a, b) = pair("bfdadm", 7);
    let (sa, sb, mut rx, _, _) = up_pair_at(&a, &b, 7, 10 * MS);
    let rb = rx.pop().expect("b's watch");
    let ra = &mut rx[0];
    // b's first AdminDown (State bits 00) is dropped on its way out.
    b.sh("nft -f - <<'EOF'\n\
          table inet hgtdrop {\n\
            chain out {\n\
              type filter hook output priority 0; policy accept;\n\
              udp dport 3784 @ih,8,2 0 quota until 60 bytes counter drop\n\
            }\n\
          }\n\
          EOF");
    sb.bfd.unwatch(ip("10.0.7.1"), rb);
    sa.wait_state(ra, BfdState::Down, Duration::from_secs(2));
    std::thread::sleep(50 * MS);
    let st = sa.session("10.0.7.2");
    let dropped = b.sh("nft list chain inet hgtdrop out");
    println!("a after b left: {st:?}\nb's drop rule: {dropped}");
    assert!(
        dropped.contains("packets 1 "),
        "the first AdminDown was not dropped: {dropped}"
    );
    assert_eq!(st.remote_state, State::AdminDown, "{st:?}");
    assert_eq!(st.local_diag, Diag::NEIGHBOR_SIGNALED_DOWN, "{st:?}");
    assert!(sa.bfd.peer_admin_down(ip("10.0.7.2")));
    sb.rt.block_on(sb.bfd.shutdown(Duration::from_secs(1)));
}
