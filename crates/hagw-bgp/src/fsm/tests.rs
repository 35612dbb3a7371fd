//! FSM transitions, driven with virtual time: no sockets, no clock.

use super::*;
use crate::packet::{PathAttributes, RouteRefresh, AFI_IPV6};

const LOCAL_ASN: u32 = 65000;
const PEER_ASN: u32 = 65001;

fn cfg(peer_as: PeerAs, hold: u16) -> Arc<SessionConfig> {
    Arc::new(SessionConfig::new(
        LOCAL_ASN,
        Ipv4Addr::new(10, 0, 0, 1),
        peer_as,
        hold,
        vec![(AFI_IPV4, SAFI_UNICAST), (AFI_IPV6, SAFI_UNICAST)],
        None,
    ))
}

fn encode(m: Message, ctx: CodecCtx) -> Vec<u8> {
    let mut b = BytesMut::new();
    m.encode(&ctx, &mut b).expect("encodes");
    b.to_vec()
}

fn peer_open(asn: u32, hold: u16, caps: Vec<Capability>) -> Vec<u8> {
    encode(
        Message::Open(Open {
            version: 4,
            asn,
            hold_time: hold,
            bgp_id: Ipv4Addr::new(10, 0, 0, 2),
            capabilities: caps,
        }),
        CodecCtx::default(),
    )
}

fn full_caps(asn: u32) -> Vec<Capability> {
    vec![
        Capability::Multiprotocol {
            afi: AFI_IPV4,
            safi: SAFI_UNICAST,
        },
        Capability::RouteRefresh,
        Capability::FourOctetAs(asn),
    ]
}

fn keepalive_bytes() -> Vec<u8> {
    KEEPALIVE_BYTES.to_vec()
}

fn sent_notification(actions: &[Action]) -> Option<(u8, u8)> {
    actions.iter().find_map(|a| match a {
        Action::Disconnect {
            reason: DownReason::NotificationSent(n),
            ..
        } => Some((n.code, n.subcode)),
        _ => None,
    })
}

/// A passive session that accepted a connection and is in OpenSent.
fn open_sent(c: Arc<SessionConfig>, t: Instant) -> (Session, Vec<Action>) {
    let mut s = Session::new(c);
    let mut out = Vec::new();
    s.handle(Event::ManualStartWithPassiveTcpEstablishment, t, &mut out);
    assert_eq!(s.state(), State::Active);
    s.handle(Event::TcpConnectionConfirmed, t, &mut out);
    (s, out)
}

fn established(hold: u16, t: Instant) -> Session {
    let (mut s, _) = open_sent(cfg(PeerAs::External, hold), t);
    let mut out = Vec::new();
    s.receive(&peer_open(PEER_ASN, hold, full_caps(PEER_ASN)), t, &mut out);
    s.receive(&keepalive_bytes(), t, &mut out);
    assert_eq!(s.state(), State::Established);
    s
}

#[test]
fn accepted_connection_sends_our_open_and_waits_in_opensent() {
    let t = Instant::now();
    let (s, out) = open_sent(cfg(PeerAs::External, 90), t);
    assert_eq!(s.state(), State::OpenSent);
    let Some(Action::Send(b)) = out.first() else {
        panic!("expected our OPEN, got {out:?}")
    };
    match Message::decode(b, &CodecCtx::default()).expect("our OPEN decodes") {
        Message::Open(o) => {
            assert_eq!(o.asn, LOCAL_ASN);
            assert_eq!(o.hold_time, 90);
            assert_eq!(o.capability_four_octet_as(), Some(LOCAL_ASN));
            assert!(o.supports_route_refresh());
        }
        m => panic!("expected OPEN, got {m:?}"),
    }
    // RFC 4271 §8.2.2: a large hold timer guards OpenSent.
    assert_eq!(s.next_deadline(), Some(t + LARGE_HOLD));
}

#[test]
fn open_then_keepalive_establishes_with_negotiated_values() {
    let t = Instant::now();
    let (mut s, _) = open_sent(cfg(PeerAs::External, 90), t);
    let mut out = Vec::new();
    s.receive(
        &peer_open(4_200_000_001, 30, full_caps(4_200_000_001)),
        t,
        &mut out,
    );
    assert_eq!(s.state(), State::OpenConfirm);
    assert_eq!(out, vec![Action::Send(keepalive())]);
    out.clear();
    s.receive(&keepalive_bytes(), t, &mut out);
    assert_eq!(s.state(), State::Established);
    let Some(Action::Established(n)) = out.first() else {
        panic!("expected Established, got {out:?}")
    };
    assert_eq!(n.remote_asn, 4_200_000_001);
    assert_eq!(n.hold_time, 30, "hold time is the smaller of the two");
    assert!(n.four_octet_as);
    assert!(s.codec().four_octet_as);
    assert_eq!(n.families, vec![(AFI_IPV4, SAFI_UNICAST)]);
    // Keepalive every hold/3.
    assert_eq!(s.next_deadline(), Some(t + Duration::from_secs(10)));
}

#[test]
fn peer_without_multiprotocol_capability_gets_ipv4_unicast() {
    let t = Instant::now();
    let (mut s, _) = open_sent(cfg(PeerAs::External, 90), t);
    let mut out = Vec::new();
    s.receive(&peer_open(PEER_ASN, 90, vec![]), t, &mut out);
    let n = s.negotiated().expect("negotiated");
    assert_eq!(n.families, vec![(AFI_IPV4, SAFI_UNICAST)]);
    assert!(!n.four_octet_as);
}

#[test]
fn wrong_peer_as_sends_bad_peer_as() {
    let t = Instant::now();
    let (mut s, _) = open_sent(cfg(PeerAs::Exact(65099), 90), t);
    let mut out = Vec::new();
    s.receive(&peer_open(PEER_ASN, 90, full_caps(PEER_ASN)), t, &mut out);
    assert_eq!(sent_notification(&out), Some((2, 2)));
    assert_eq!(s.state(), State::Idle);
}

#[test]
fn external_range_refuses_our_own_asn() {
    let t = Instant::now();
    let (mut s, _) = open_sent(cfg(PeerAs::External, 90), t);
    let mut out = Vec::new();
    s.receive(&peer_open(LOCAL_ASN, 90, full_caps(LOCAL_ASN)), t, &mut out);
    assert_eq!(sent_notification(&out), Some((2, 2)));
}

#[test]
fn ibgp_peer_with_our_router_id_is_bad_bgp_identifier() {
    let t = Instant::now();
    let (mut s, _) = open_sent(cfg(PeerAs::Internal, 90), t);
    let mut out = Vec::new();
    let open = encode(
        Message::Open(Open {
            version: 4,
            asn: LOCAL_ASN,
            hold_time: 90,
            bgp_id: Ipv4Addr::new(10, 0, 0, 1),
            capabilities: full_caps(LOCAL_ASN),
        }),
        CodecCtx::default(),
    );
    s.receive(&open, t, &mut out);
    assert_eq!(sent_notification(&out), Some((2, 3)));
}

#[test]
fn hold_time_zero_runs_no_timers() {
    let t = Instant::now();
    let s = established(0, t);
    assert_eq!(s.next_deadline(), None);
}

#[test]
fn hold_timer_expiry_sends_hold_timer_expired() {
    let t = Instant::now();
    let mut s = established(9, t);
    let mut out = Vec::new();
    s.on_timer(t + Duration::from_secs(9), &mut out);
    assert_eq!(sent_notification(&out), Some((4, 0)));
    assert!(matches!(
        out.last(),
        Some(Action::Disconnect {
            was_established: true,
            ..
        })
    ));
    assert_eq!(s.state(), State::Idle);
}

#[test]
fn keepalive_timer_sends_keepalive_and_rearms() {
    let t = Instant::now();
    let mut s = established(9, t);
    let mut out = Vec::new();
    s.on_timer(t + Duration::from_secs(3), &mut out);
    assert_eq!(out, vec![Action::Send(keepalive())]);
    assert_eq!(s.next_deadline(), Some(t + Duration::from_secs(6)));
}

#[test]
fn received_keepalive_restarts_the_hold_timer() {
    let t = Instant::now();
    let mut s = established(9, t);
    let mut out = Vec::new();
    let later = t + Duration::from_secs(8);
    s.receive(&keepalive_bytes(), later, &mut out);
    s.on_timer(t + Duration::from_secs(9), &mut out);
    assert_eq!(s.state(), State::Established, "{out:?}");
}

#[test]
fn sent_update_postpones_the_keepalive() {
    let t = Instant::now();
    let mut s = established(9, t);
    s.sent_update(t + Duration::from_secs(2));
    let mut out = Vec::new();
    s.on_timer(t + Duration::from_secs(3), &mut out);
    assert!(out.is_empty(), "{out:?}");
}

#[test]
fn update_in_established_is_delivered() {
    let t = Instant::now();
    let mut s = established(90, t);
    let mut out = Vec::new();
    let u = Update {
        withdrawn: vec!["10.1.0.0/16".parse().expect("prefix")],
        attrs: PathAttributes::default(),
        nlri: vec![],
        treat_as_withdraw: None,
        discarded: vec![],
    };
    s.receive(&encode(Message::Update(u.clone()), *s.codec()), t, &mut out);
    assert_eq!(out, vec![Action::Update(Box::new(u))]);
}

#[test]
fn update_in_openconfirm_is_an_fsm_error() {
    let t = Instant::now();
    let (mut s, _) = open_sent(cfg(PeerAs::External, 90), t);
    let mut out = Vec::new();
    s.receive(&peer_open(PEER_ASN, 90, full_caps(PEER_ASN)), t, &mut out);
    out.clear();
    let eor = encode(
        Message::Update(Update::end_of_rib(AFI_IPV4, SAFI_UNICAST)),
        CodecCtx::default(),
    );
    s.receive(&eor, t, &mut out);
    assert_eq!(sent_notification(&out), Some((5, 2)));
}

#[test]
fn keepalive_in_opensent_is_an_fsm_error() {
    let t = Instant::now();
    let (mut s, _) = open_sent(cfg(PeerAs::External, 90), t);
    let mut out = Vec::new();
    s.receive(&keepalive_bytes(), t, &mut out);
    assert_eq!(sent_notification(&out), Some((5, 1)));
}

#[test]
fn open_in_established_is_an_fsm_error() {
    let t = Instant::now();
    let mut s = established(90, t);
    let mut out = Vec::new();
    s.receive(&peer_open(PEER_ASN, 90, full_caps(PEER_ASN)), t, &mut out);
    assert_eq!(sent_notification(&out), Some((5, 3)));
}

#[test]
fn notification_received_closes_the_session() {
    let t = Instant::now();
    let mut s = established(90, t);
    let mut out = Vec::new();
    let n = Notification {
        code: 6,
        subcode: 2,
        data: vec![],
    };
    s.receive(
        &encode(Message::Notification(n.clone()), *s.codec()),
        t,
        &mut out,
    );
    assert_eq!(
        out,
        vec![Action::Disconnect {
            reason: DownReason::NotificationReceived(n),
            was_established: true
        }]
    );
}

#[test]
fn a_bad_marker_sends_connection_not_synchronized() {
    let t = Instant::now();
    let mut s = established(90, t);
    let mut out = Vec::new();
    let mut bad = keepalive_bytes();
    bad[0] = 0;
    let used = s.receive(&bad, t, &mut out);
    assert_eq!(used, bad.len());
    assert_eq!(sent_notification(&out), Some((1, 1)));
}

#[test]
fn a_partial_message_is_left_for_the_next_read() {
    let t = Instant::now();
    let mut s = established(90, t);
    let mut out = Vec::new();
    let mut two = keepalive_bytes();
    two.extend_from_slice(&keepalive_bytes()[..7]);
    assert_eq!(s.receive(&two, t, &mut out), 19);
    assert!(out.is_empty());
}

#[test]
fn route_refresh_for_a_negotiated_family_is_passed_on() {
    let t = Instant::now();
    let mut s = established(90, t);
    let mut out = Vec::new();
    let rr = |afi| {
        encode(
            Message::RouteRefresh(RouteRefresh {
                afi,
                subtype: 0,
                safi: SAFI_UNICAST,
            }),
            CodecCtx::default(),
        )
    };
    s.receive(&rr(AFI_IPV4), t, &mut out);
    s.receive(&rr(AFI_IPV6), t, &mut out);
    assert_eq!(
        out,
        vec![Action::RouteRefresh {
            afi: AFI_IPV4,
            safi: SAFI_UNICAST
        }],
        "IPv6 was not negotiated and is ignored (RFC 2918 §4)"
    );
}

#[test]
fn manual_stop_sends_cease_admin_shutdown() {
    let t = Instant::now();
    let mut s = established(90, t);
    let mut out = Vec::new();
    s.handle(Event::ManualStop, t, &mut out);
    assert_eq!(sent_notification(&out), Some((6, 2)));
    assert_eq!(
        s.next_deadline(),
        None,
        "a stopped session does not come back"
    );
}

#[test]
fn collision_dump_sends_cease_collision_resolution() {
    let t = Instant::now();
    let (mut s, _) = open_sent(cfg(PeerAs::External, 90), t);
    let mut out = Vec::new();
    s.handle(Event::OpenCollisionDump, t, &mut out);
    assert_eq!(sent_notification(&out), Some((6, 7)));
}

#[test]
fn collision_keeps_the_connection_of_the_higher_identifier() {
    let lo = Ipv4Addr::new(10, 0, 0, 1);
    let hi = Ipv4Addr::new(10, 0, 0, 2);
    assert!(keep_locally_initiated(hi, lo));
    assert!(!keep_locally_initiated(lo, hi));
}

#[test]
fn active_session_connects_and_backs_off_on_failure() {
    let t = Instant::now();
    let mut s = Session::new(cfg(PeerAs::External, 90));
    let mut out = Vec::new();
    s.handle(Event::ManualStart, t, &mut out);
    assert_eq!(out, vec![Action::Connect]);
    assert_eq!(s.state(), State::Connect);
    out.clear();
    s.handle(Event::TcpConnectionFails, t, &mut out);
    assert_eq!(s.state(), State::Active);
    assert_eq!(s.next_deadline(), Some(t + Duration::from_secs(1)));
    let t1 = t + Duration::from_secs(1);
    s.on_timer(t1, &mut out);
    assert_eq!(out, vec![Action::Connect]);
    out.clear();
    s.handle(Event::TcpConnectionFails, t1, &mut out);
    assert_eq!(
        s.next_deadline(),
        Some(t1 + Duration::from_secs(2)),
        "backoff doubles"
    );
}

#[test]
fn active_session_reconnects_after_losing_an_established_session() {
    let t = Instant::now();
    let mut s = Session::new(cfg(PeerAs::External, 90));
    let mut out = Vec::new();
    s.handle(Event::ManualStart, t, &mut out);
    s.handle(Event::TcpCrAcked, t, &mut out);
    assert_eq!(s.state(), State::OpenSent);
    s.receive(&peer_open(PEER_ASN, 90, full_caps(PEER_ASN)), t, &mut out);
    s.receive(&keepalive_bytes(), t, &mut out);
    assert_eq!(s.state(), State::Established);
    out.clear();
    s.handle(Event::TcpConnectionFails, t, &mut out);
    assert_eq!(
        out,
        vec![Action::Disconnect {
            reason: DownReason::TcpFailed,
            was_established: true
        }]
    );
    assert_eq!(s.state(), State::Idle);
    out.clear();
    s.on_timer(t + Duration::from_secs(1), &mut out);
    assert_eq!(out, vec![Action::Connect]);
}

#[test]
fn passive_session_ends_idle_after_failure() {
    let t = Instant::now();
    let mut s = established(90, t);
    let mut out = Vec::new();
    s.handle(Event::TcpConnectionFails, t, &mut out);
    assert_eq!(s.state(), State::Idle);
    assert_eq!(s.next_deadline(), None);
}

#[test]
fn graceful_restart_capability_is_announced_when_configured() {
    let c = Arc::new(SessionConfig::new(
        LOCAL_ASN,
        Ipv4Addr::new(10, 0, 0, 1),
        PeerAs::External,
        90,
        vec![(AFI_IPV4, SAFI_UNICAST)],
        Some(GracefulRestart {
            restart_time: 120,
            restarting: true,
        }),
    ));
    let (_, out) = open_sent(c, Instant::now());
    let Some(Action::Send(b)) = out.first() else {
        panic!("no OPEN")
    };
    let Ok(Message::Open(o)) = Message::decode(b, &CodecCtx::default()) else {
        panic!("bad OPEN")
    };
    let gr = o.graceful_restart().expect("GR capability");
    assert!(gr.restarting);
    assert_eq!(gr.restart_time, 120);
    assert!(gr.families.iter().all(|f| f.forwarding_preserved));
}

#[test]
fn bfd_down_closes_the_session_with_cease_bfd_down() {
    let t = Instant::now();
    let mut s = established(90, t);
    let mut out = Vec::new();
    s.handle(Event::BfdDown, t, &mut out);
    assert_eq!(sent_notification(&out), Some((6, 10)));
    assert!(matches!(
        out.last(),
        Some(Action::Disconnect {
            was_established: true,
            ..
        })
    ));
}

#[test]
fn too_many_prefixes_close_the_session_with_cease_maximum_prefixes() {
    let t = Instant::now();
    let mut s = established(90, t);
    let mut out = Vec::new();
    s.handle(
        Event::MaxPrefixes {
            afi: 1,
            safi: 1,
            limit: 100,
        },
        t,
        &mut out,
    );
    assert_eq!(sent_notification(&out), Some((6, 1)));
    let Some(Action::Send(b)) = out.first() else {
        panic!("no NOTIFICATION")
    };
    // RFC 4486 §4: AFI (2), SAFI (1), upper bound (4) after code and subcode.
    assert_eq!(&b[21..], &[0, 1, 1, 0, 0, 0, 100]);
    assert_eq!(s.state(), State::Idle);
}

/// The driver decides on graceful restart after the Disconnect, from what the
/// ended session negotiated; a session that never got there has nothing.
#[test]
fn negotiated_stays_readable_in_idle_after_an_established_session_ends() {
    let t = Instant::now();
    let mut s = established(90, t);
    let mut out = Vec::new();
    s.handle(Event::TcpConnectionFails, t, &mut out);
    assert_eq!(s.state(), State::Idle);
    assert_eq!(s.negotiated().map(|n| n.remote_asn), Some(PEER_ASN));

    let (mut s, _) = open_sent(cfg(PeerAs::External, 90), t);
    s.handle(Event::TcpConnectionFails, t, &mut out);
    assert_eq!(s.state(), State::Idle);
    assert_eq!(s.negotiated(), None);
}

/// Reconnecting leaves the ended session behind: Connect, Active and OpenSent
/// have no negotiated values.
#[test]
fn an_active_session_reconnecting_forgets_the_ended_session() {
    let t = Instant::now();
    let mut s = Session::new(cfg(PeerAs::External, 90));
    let mut out = Vec::new();
    s.handle(Event::ManualStart, t, &mut out);
    s.handle(Event::TcpCrAcked, t, &mut out);
    s.receive(&peer_open(PEER_ASN, 90, full_caps(PEER_ASN)), t, &mut out);
    s.receive(&keepalive_bytes(), t, &mut out);
    s.handle(Event::TcpConnectionFails, t, &mut out);
    assert!(s.negotiated().is_some());
    out.clear();
    s.on_timer(t + Duration::from_secs(1), &mut out);
    assert_eq!(out, vec![Action::Connect]);
    assert_eq!(s.state(), State::Connect);
    assert_eq!(s.negotiated(), None);
    s.handle(Event::TcpCrAcked, t, &mut out);
    assert_eq!(s.state(), State::OpenSent);
    assert_eq!(s.negotiated(), None);
}

#[test]
fn openconfirm_runs_the_negotiated_hold_and_keepalive_timers() {
    let t = Instant::now();
    let (mut s, _) = open_sent(cfg(PeerAs::External, 9), t);
    let mut out = Vec::new();
    s.receive(&peer_open(PEER_ASN, 9, full_caps(PEER_ASN)), t, &mut out);
    assert_eq!(s.state(), State::OpenConfirm);
    assert_eq!(s.next_deadline(), Some(t + Duration::from_secs(3)));
    out.clear();
    s.on_timer(t + Duration::from_secs(3), &mut out);
    assert_eq!(out, vec![Action::Send(keepalive())]);
    out.clear();
    s.on_timer(t + Duration::from_secs(9), &mut out);
    assert_eq!(sent_notification(&out), Some((4, 0)));
    assert_eq!(s.negotiated(), None, "it never was Established");
}
