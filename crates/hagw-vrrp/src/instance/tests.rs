//! Instance FSM tests in virtual time: single-instance rules with
//! hand-made adverts, and a two-instance harness over a virtual link.

use std::net::{Ipv4Addr, Ipv6Addr};

use super::*;
use crate::packet::Advertisement;

const MS: Duration = Duration::from_millis(1);
const SEC: Duration = Duration::from_secs(1);

fn ns(n: u64) -> Duration {
    Duration::from_nanos(n)
}

fn ip(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 0, last))
}

fn vip() -> IpAddr {
    ip(100)
}

fn group() -> IpAddr {
    IpAddr::V4(crate::MULTICAST_V4)
}

/// VRID 1, VIP 10.0.0.100, from 10.0.0.`last`, 1 s, preempt, multicast.
fn cfg(priority: u8, last: u8) -> InstanceConfig {
    InstanceConfig::new(1, priority, ip(last), vec![vip()])
}

fn new(c: InstanceConfig) -> Instance {
    match Instance::new(c) {
        Ok(i) => i,
        Err(e) => panic!("config refused: {e}"),
    }
}

/// An advert from 10.0.0.`last` to the group, as on the wire.
fn advert(priority: u8, last: u8, interval_cs: u16) -> Vec<u8> {
    advert_with(priority, last, interval_cs, vec![vip()])
}

fn advert_with(priority: u8, last: u8, interval_cs: u16, addresses: Vec<IpAddr>) -> Vec<u8> {
    let a = Advertisement {
        vrid: 1,
        priority,
        max_advert_interval_cs: interval_cs,
        addresses,
    };
    a.encode(ip(last), group(), ChecksumMode::Rfc9568)
        .unwrap_or_default()
}

/// Hands a valid advert from 10.0.0.`last` to `i`; its outputs.
fn feed(i: &mut Instance, last: u8, payload: &[u8], now: Instant) -> Vec<Output> {
    let mut out = Vec::new();
    let r = i.handle_packet(ip(last), group(), TTL, payload, now, &mut out);
    assert_eq!(r, Ok(()));
    out
}

fn transmits(out: &[Output]) -> Vec<(IpAddr, Vec<u8>)> {
    out.iter()
        .filter_map(|o| match o {
            Output::Transmit { dst, payload } => Some((*dst, payload.clone())),
            _ => None,
        })
        .collect()
}

fn changes(out: &[Output]) -> Vec<(StateKind, StateKind, Reason)> {
    out.iter()
        .filter_map(|o| match *o {
            Output::StateChange { from, to, reason } => Some((from, to, reason)),
            _ => None,
        })
        .collect()
}

/// The priority in a transmitted advert.
fn prio_of(payload: &[u8], src: IpAddr, dst: IpAddr) -> Option<u8> {
    Advertisement::decode(payload, Family::of(src), src, dst, ChecksumMode::Rfc9568)
        .ok()
        .map(|a| a.priority)
}

/// A started instance driven to Master by its own timer.
fn master(c: InstanceConfig, t0: Instant) -> (Instance, Instant) {
    let mut i = new(c);
    let mut out = Vec::new();
    i.start(t0, &mut out);
    let at = i.next_deadline().unwrap_or(t0);
    i.on_timer(at, &mut out);
    assert_eq!(i.state(), StateKind::Master);
    (i, at)
}

#[test]
fn timer_arithmetic_is_exact_in_nanoseconds() {
    // (256 - 100) / 256 s = 0.609375 s: not a whole number of centiseconds.
    assert_eq!(skew_time(100, SEC), ns(609_375_000));
    assert_eq!(master_down_interval(100, SEC), ns(3_609_375_000));
    assert_eq!(skew_time(200, SEC), ns(218_750_000));
    assert_eq!(skew_time(255, SEC), ns(3_906_250));
    assert_eq!(skew_time(1, 10 * MS), ns(9_960_937));
    assert_eq!(
        master_down_interval(1, Duration::from_millis(40_950)),
        ns(122_850_000_000 + 40_790_039_062)
    );
}

#[test]
fn config_is_validated() {
    let ok = cfg(100, 1);
    assert_eq!(ok.validate(), Ok(()));
    let check = |f: &dyn Fn(&mut InstanceConfig)| {
        let mut c = cfg(100, 1);
        f(&mut c);
        Instance::new(c).err()
    };
    assert_eq!(check(&|c| c.vrid = 0), Some(ConfigError::ZeroVrid));
    assert_eq!(check(&|c| c.priority = 0), Some(ConfigError::ZeroPriority));
    for d in [
        Duration::ZERO,
        15 * MS,
        Duration::from_millis(40_960),
        5 * MS,
    ] {
        assert_eq!(
            check(&|c| c.advert_interval = d),
            Some(ConfigError::Interval(d))
        );
    }
    assert_eq!(check(&|c| c.advert_interval = 10 * MS), None);
    assert_eq!(
        check(&|c| c.advert_interval = Duration::from_millis(40_950)),
        None
    );
    assert_eq!(
        check(&|c| c.source = group()),
        Some(ConfigError::BadSource(group()))
    );
    assert_eq!(
        check(&|c| c.virtual_addresses.clear()),
        Some(ConfigError::VirtualAddressCount(0))
    );
    assert_eq!(
        check(&|c| c.transport = Transport::Unicast(vec![])),
        Some(ConfigError::NoPeers)
    );
    let v6 = IpAddr::V6(Ipv6Addr::LOCALHOST);
    assert_eq!(
        check(&|c| c.transport = Transport::Unicast(vec![ip(2), v6])),
        Some(ConfigError::FamilyMismatch {
            src: ip(1),
            addr: v6
        })
    );
    assert_eq!(
        check(&|c| c.virtual_addresses.push(v6)),
        Some(ConfigError::FamilyMismatch {
            src: ip(1),
            addr: v6
        })
    );
    let ll = |s: &str| s.parse::<Ipv6Addr>().unwrap_or(Ipv6Addr::LOCALHOST);
    let mut c6 = InstanceConfig::new(1, 100, IpAddr::V6(ll("fe80::1")), vec![]);
    c6.virtual_addresses = vec![IpAddr::V6(ll("2001:db8::1")), IpAddr::V6(ll("fe80::100"))];
    assert_eq!(
        c6.validate(),
        Err(ConfigError::FirstNotLinkLocal(ll("2001:db8::1")))
    );
    c6.virtual_addresses.reverse();
    assert_eq!(c6.validate(), Ok(()));
    let long = MAX_STARTUP_DELAY + MS;
    assert_eq!(
        check(&|c| c.startup_delay = long),
        Some(ConfigError::StartupDelay(long))
    );
}

#[test]
fn owner_becomes_master_at_once() {
    let t0 = Instant::now();
    let mut i = new(cfg(255, 1));
    let mut out = Vec::new();
    i.start(t0, &mut out);
    assert_eq!(i.state(), StateKind::Master);
    assert_eq!(
        out,
        vec![
            Output::StateChange {
                from: StateKind::Initialize,
                to: StateKind::Master,
                reason: Reason::Start
            },
            Output::AddVirtualAddresses(vec![vip()]),
            Output::Transmit {
                dst: group(),
                payload: advert(255, 1, 100)
            },
            Output::Announce(vec![vip()]),
        ]
    );
    assert_eq!(i.next_deadline(), Some(t0 + SEC));
    assert_eq!(i.last_transition(), Some(t0));
    assert_eq!(i.master(), Some(ip(1)));
    assert_eq!(i.counters().became_master, 1);
    // Adverts every Advertisement_Interval.
    for k in 1..=3 {
        out.clear();
        i.on_timer(t0 + SEC * k, &mut out);
        assert_eq!(transmits(&out).len(), 1);
        assert_eq!(i.next_deadline(), Some(t0 + SEC * (k + 1)));
    }
    assert_eq!(i.counters().adverts_out, 4);
    // Another owner, from a lower address: counted, and beaten.
    let out = feed(&mut i, 0, &advert(255, 0, 100), t0 + 4 * SEC);
    assert!(out.contains(&Output::Announce(vec![vip()])));
    assert_eq!(i.counters().owner_conflict, 1);
    assert_eq!(i.state(), StateKind::Master);
}

#[test]
fn non_owner_starts_backup_and_takes_over_after_master_down_interval() {
    let t0 = Instant::now();
    let mut i = new(cfg(100, 1));
    let mut out = Vec::new();
    i.start(t0, &mut out);
    assert_eq!(i.state(), StateKind::Backup);
    assert_eq!(
        changes(&out),
        vec![(StateKind::Initialize, StateKind::Backup, Reason::Start)]
    );
    assert!(transmits(&out).is_empty());
    let mdi = ns(3_609_375_000);
    assert_eq!(i.next_deadline(), Some(t0 + mdi));
    out.clear();
    i.on_timer(t0 + mdi - ns(1), &mut out);
    assert!(out.is_empty());
    i.on_timer(t0 + mdi, &mut out);
    assert_eq!(i.state(), StateKind::Master);
    assert_eq!(
        changes(&out),
        vec![(StateKind::Backup, StateKind::Master, Reason::MasterDown)]
    );
}

#[test]
fn startup_delay_holds_back_master() {
    let t0 = Instant::now();
    // Owner: waits exactly the delay.
    let mut c = cfg(255, 1);
    c.startup_delay = 2 * SEC;
    let mut i = new(c);
    let mut out = Vec::new();
    i.start(t0, &mut out);
    assert_eq!(i.state(), StateKind::Backup);
    assert_eq!(i.next_deadline(), Some(t0 + 2 * SEC));
    // A lower-priority Master is ignored: the owner always preempts.
    feed(&mut i, 2, &advert(100, 2, 100), t0 + SEC);
    assert_eq!(i.next_deadline(), Some(t0 + 2 * SEC));
    i.on_timer(t0 + 2 * SEC, &mut out);
    assert_eq!(i.state(), StateKind::Master);

    // Non-owner, delay below Master_Down_Interval: the interval wins.
    let mut c = cfg(100, 1);
    c.startup_delay = SEC;
    let mut i = new(c);
    i.start(t0, &mut out);
    assert_eq!(i.next_deadline(), Some(t0 + ns(3_609_375_000)));

    // Non-owner, long delay: even a priority-0 advert (Skew_Time) cannot
    // make it Master before the delay is over.
    let mut c = cfg(100, 1);
    c.startup_delay = 10 * SEC;
    let mut i = new(c);
    i.start(t0, &mut out);
    assert_eq!(i.next_deadline(), Some(t0 + 10 * SEC));
    feed(&mut i, 2, &advert(0, 2, 100), t0 + SEC);
    assert_eq!(i.next_deadline(), Some(t0 + 10 * SEC));
    i.on_timer(t0 + 10 * SEC - ns(1), &mut out);
    assert_eq!(i.state(), StateKind::Backup);
    i.on_timer(t0 + 10 * SEC, &mut out);
    assert_eq!(i.state(), StateKind::Master);
}

#[test]
fn backup_follows_the_rules_of_6_4_2() {
    let t0 = Instant::now();
    let now = t0 + SEC;
    let started = |preempt: bool| {
        let mut c = cfg(100, 1);
        c.preempt = preempt;
        let mut i = new(c);
        i.start(t0, &mut Vec::new());
        i
    };
    // Priority 0: Master_Down_Timer = Skew_Time.
    let mut i = started(true);
    let out = feed(&mut i, 2, &advert(0, 2, 100), now);
    assert!(out.is_empty());
    assert_eq!(i.next_deadline(), Some(now + ns(609_375_000)));
    assert_eq!(i.counters().priority_zero_in, 1);
    // Higher or equal: reset to Master_Down_Interval, follow that Master.
    for p in [100, 101, 254] {
        let mut i = started(true);
        feed(&mut i, 2, &advert(p, 2, 100), now);
        assert_eq!(i.next_deadline(), Some(now + ns(3_609_375_000)), "{p}");
        assert_eq!((i.master(), i.master_priority()), (Some(ip(2)), Some(p)));
    }
    // Lower with preempt: ignored, the timer keeps running.
    let mut i = started(true);
    feed(&mut i, 2, &advert(99, 2, 100), now);
    assert_eq!(i.next_deadline(), Some(t0 + ns(3_609_375_000)));
    assert_eq!(i.master(), None);
    // Lower without preempt: reset.
    let mut i = started(false);
    feed(&mut i, 2, &advert(1, 2, 100), now);
    assert_eq!(i.next_deadline(), Some(now + ns(3_609_375_000)));
    assert_eq!(i.master(), Some(ip(2)));
}

#[test]
fn backup_adopts_the_masters_interval() {
    let t0 = Instant::now();
    let mut i = new(cfg(100, 1));
    i.start(t0, &mut Vec::new());
    assert_eq!(i.master_advert_interval(), SEC);
    // 2.5 s from the Master: Master_Down_Interval = 7.5 s + 156/256 × 2.5 s.
    feed(&mut i, 2, &advert(150, 2, 250), t0);
    assert_eq!(i.master_advert_interval(), 2500 * MS);
    assert_eq!(
        i.next_deadline(),
        Some(t0 + ns(7_500_000_000 + 1_523_437_500))
    );
    // Priority 0 uses the adopted interval for Skew_Time.
    feed(&mut i, 2, &advert(0, 2, 100), t0 + SEC);
    assert_eq!(i.master_advert_interval(), 2500 * MS);
    assert_eq!(i.next_deadline(), Some(t0 + SEC + ns(1_523_437_500)));
}

#[test]
fn master_follows_the_rules_of_6_4_3() {
    let t0 = Instant::now();
    let (mut i, at) = master(cfg(200, 5), t0);
    let now = at + 300 * MS;

    // Priority 0: advertise at once, restart Adver_Timer; no Announce.
    let out = feed(&mut i, 2, &advert(0, 2, 100), now);
    let tx = transmits(&out);
    assert_eq!(tx.len(), 1);
    assert_eq!(prio_of(&tx[0].1, ip(5), group()), Some(200));
    assert!(!out.iter().any(|o| matches!(o, Output::Announce(_))));
    assert_eq!(i.next_deadline(), Some(now + SEC));

    // Lower priority, and equal priority from a lower address: we win;
    // answer at once (keepalived #950); the first starts a split brain and
    // announces (keepalived #166), the second does not again.
    for (p, last, announce) in [(100, 9, true), (200, 4, false)] {
        let out = feed(&mut i, last, &advert(p, last, 100), now + MS);
        assert_eq!(i.state(), StateKind::Master);
        let mut want = vec![Output::Transmit {
            dst: group(),
            payload: advert(200, 5, 100),
        }];
        if announce {
            want.push(Output::Announce(vec![vip()]));
        }
        assert_eq!(out, want, "{p} from .{last}");
        assert_eq!(i.next_deadline(), Some(now + MS + SEC));
    }

    // Equal priority from a greater address: step down, adopt its
    // interval, and say one last time that we were Master.
    let out = feed(&mut i, 6, &advert(200, 6, 300), now + 2 * MS);
    assert_eq!(i.state(), StateKind::Backup);
    assert_eq!(
        out,
        vec![
            Output::StateChange {
                from: StateKind::Master,
                to: StateKind::Backup,
                reason: Reason::Preempted
            },
            Output::RemoveVirtualAddresses(vec![vip()]),
            Output::Transmit {
                dst: group(),
                payload: advert(200, 5, 100)
            },
        ]
    );
    assert_eq!(i.master(), Some(ip(6)));
    assert_eq!(i.master_advert_interval(), 3 * SEC);
    assert_eq!(
        i.next_deadline(),
        Some(now + 2 * MS + 9 * SEC + skew_time(200, 3 * SEC))
    );

    // Higher priority, whatever the address.
    let (mut i, at) = master(cfg(200, 5), t0);
    feed(&mut i, 2, &advert(201, 2, 100), at);
    assert_eq!(i.state(), StateKind::Backup);
}

#[test]
fn shutdown_sends_priority_zero_and_removes_addresses() {
    let t0 = Instant::now();
    let (mut i, at) = master(cfg(200, 1), t0);
    let mut out = Vec::new();
    i.shutdown(at + MS, &mut out);
    assert_eq!(i.state(), StateKind::Initialize);
    assert_eq!(
        out,
        vec![
            Output::StateChange {
                from: StateKind::Master,
                to: StateKind::Initialize,
                reason: Reason::Shutdown
            },
            Output::Transmit {
                dst: group(),
                payload: advert(0, 1, 100)
            },
            Output::RemoveVirtualAddresses(vec![vip()]),
        ]
    );
    assert_eq!(i.counters().priority_zero_out, 1);
    assert_eq!(i.next_deadline(), None);
    // Stopped: packets are dropped, and it can start again.
    let r = i.handle_packet(ip(2), group(), TTL, &advert(100, 2, 100), at, &mut out);
    assert_eq!(r, Err(Discard::NotRunning));
    assert_eq!(i.counters().drop_not_running, 1);
    out.clear();
    i.start(at + 3 * MS, &mut out);
    assert_eq!(i.state(), StateKind::Backup);
    // A Backup just stops, silently.
    out.clear();
    i.shutdown(at + 4 * MS, &mut out);
    assert_eq!(
        out,
        vec![Output::StateChange {
            from: StateKind::Backup,
            to: StateKind::Initialize,
            reason: Reason::Shutdown
        }]
    );
}

#[test]
fn invalid_packets_are_dropped_and_counted_by_reason() {
    let t0 = Instant::now();
    let mut i = new(cfg(100, 1));
    i.start(t0, &mut Vec::new());
    let deadline = i.next_deadline();
    let good = advert(200, 2, 100);
    // Nothing here produces output: drops are silent, and a Backup
    // resetting its timer has nothing to say.
    let rx = |i: &mut Instance, src: IpAddr, ttl: u8, p: &[u8]| {
        let mut out = Vec::new();
        let r = i.handle_packet(src, group(), ttl, p, t0 + SEC, &mut out);
        assert!(out.is_empty(), "{out:?}");
        r
    };
    assert_eq!(rx(&mut i, ip(2), 254, &good), Err(Discard::Ttl(254)));
    assert_eq!(rx(&mut i, ip(2), 1, &good), Err(Discard::Ttl(1)));
    assert_eq!(
        rx(&mut i, ip(1), TTL, &advert(200, 1, 100)),
        Err(Discard::Looped)
    );
    let mut bad = good.clone();
    bad[9] ^= 0xff;
    assert!(matches!(
        rx(&mut i, ip(2), TTL, &bad),
        Err(Discard::Decode(DecodeError::ChecksumMismatch { .. }))
    ));
    let mut v2 = good.clone();
    v2[0] = 0x21;
    assert_eq!(
        rx(&mut i, ip(2), TTL, &v2),
        Err(Discard::Decode(DecodeError::BadVersion(2)))
    );
    let mut t2 = good.clone();
    t2[0] = 0x32;
    assert_eq!(
        rx(&mut i, ip(2), TTL, &t2),
        Err(Discard::Decode(DecodeError::BadType(2)))
    );
    assert_eq!(
        rx(&mut i, ip(2), TTL, &good[..5]),
        Err(Discard::Decode(DecodeError::Truncated(5)))
    );
    let other = Advertisement {
        vrid: 2,
        priority: 200,
        max_advert_interval_cs: 100,
        addresses: vec![vip()],
    }
    .encode(ip(2), group(), ChecksumMode::Rfc9568)
    .unwrap_or_default();
    assert_eq!(rx(&mut i, ip(2), TTL, &other), Err(Discard::OtherVrid(2)));
    // A pseudo-header checksum when we expect RFC 9568's.
    let ph = Advertisement::decode(&good, Family::V4, ip(2), group(), ChecksumMode::Rfc9568)
        .and_then(|a| {
            a.encode(ip(2), group(), ChecksumMode::PseudoHeader)
                .map_err(|_| DecodeError::NoAddresses)
        })
        .unwrap_or_default();
    assert!(matches!(
        rx(&mut i, ip(2), TTL, &ph),
        Err(Discard::Decode(DecodeError::ChecksumMismatch { .. }))
    ));
    // None of that touched the state.
    assert_eq!(i.next_deadline(), deadline);
    assert_eq!(i.master(), None);
    let c = *i.counters();
    assert_eq!(
        (
            c.drop_ttl,
            c.drop_looped,
            c.drop_checksum,
            c.drop_version,
            c.drop_type
        ),
        (2, 1, 2, 1, 1)
    );
    assert_eq!((c.drop_malformed, c.other_vrid, c.adverts_in), (1, 1, 0));

    // A different address list is counted but accepted (RFC 9568 §7.1 MAY).
    let odd = advert_with(200, 2, 100, vec![ip(101), vip()]);
    assert_eq!(rx(&mut i, ip(2), TTL, &odd), Ok(()));
    // Same addresses in another order is no mismatch.
    let two = |i: &mut Instance| {
        let mut c = i.config().clone();
        c.virtual_addresses = vec![vip(), ip(101)];
        new(c)
    };
    let mut j = two(&mut i);
    j.start(t0, &mut Vec::new());
    feed(&mut j, 2, &odd, t0 + SEC);
    assert_eq!(j.counters().address_list_mismatch, 0);
    let c = *i.counters();
    assert_eq!((c.address_list_mismatch, c.adverts_in), (1, 1));
    assert_eq!(i.master(), Some(ip(2)));
}

#[test]
fn unicast_sends_to_each_peer_and_drops_strangers() {
    let t0 = Instant::now();
    let mut c = cfg(255, 1);
    c.transport = Transport::Unicast(vec![ip(2), ip(3)]);
    c.checksum_mode = ChecksumMode::PseudoHeader;
    let mut i = new(c);
    let mut out = Vec::new();
    i.start(t0, &mut out);
    let tx = transmits(&out);
    assert_eq!(
        tx.iter().map(|t| t.0).collect::<Vec<_>>(),
        vec![ip(2), ip(3)]
    );
    // The pseudo-header holds the peer, so each copy has its own checksum.
    assert_ne!(tx[0].1, tx[1].1);
    for (dst, p) in &tx {
        let a = Advertisement::decode(p, Family::V4, ip(1), *dst, ChecksumMode::PseudoHeader);
        assert_eq!(a.map(|a| a.priority), Ok(255));
    }
    assert_eq!(i.counters().adverts_out, 2);
    // A stranger is dropped before decoding.
    let mut out = Vec::new();
    let r = i.handle_packet(ip(9), ip(1), TTL, &[0; 3], t0, &mut out);
    assert_eq!(r, Err(Discard::NotPeer(ip(9))));
    assert_eq!(i.counters().drop_not_peer, 1);
    // A peer's priority-0 advert is answered.
    let p0 = Advertisement {
        vrid: 1,
        priority: 0,
        max_advert_interval_cs: 100,
        addresses: vec![vip()],
    }
    .encode(ip(2), ip(1), ChecksumMode::PseudoHeader)
    .unwrap_or_default();
    let r = i.handle_packet(ip(2), ip(1), TTL, &p0, t0, &mut out);
    assert_eq!(r, Ok(()));
    assert_eq!(transmits(&out).len(), 2);
}

#[test]
fn set_priority_is_advertised_at_once_by_a_master() {
    let t0 = Instant::now();
    let (mut i, at) = master(cfg(200, 1), t0);
    let mut out = Vec::new();
    assert_eq!(
        i.set_priority(0, at, &mut out),
        Err(ConfigError::ZeroPriority)
    );
    assert_eq!(i.set_priority(200, at, &mut out), Ok(()));
    assert!(out.is_empty(), "unchanged: nothing to say");
    assert_eq!(i.set_priority(90, at + MS, &mut out), Ok(()));
    assert_eq!(i.priority(), 90);
    let tx = transmits(&out);
    assert_eq!(tx.len(), 1);
    assert_eq!(prio_of(&tx[0].1, ip(1), group()), Some(90));
    assert_eq!(i.next_deadline(), Some(at + MS + SEC));
    // Still Master: stepping down is for the Backups to decide.
    assert_eq!(i.state(), StateKind::Master);
}

#[test]
fn peer_down_takes_over_from_that_master_only() {
    let t0 = Instant::now();
    let mut i = new(cfg(100, 1));
    i.start(t0, &mut Vec::new());
    let mut out = Vec::new();
    // No Master known yet: nothing to do.
    i.peer_down(ip(2), t0, &mut out);
    assert!(out.is_empty());
    feed(&mut i, 2, &advert(200, 2, 100), t0 + SEC);
    i.peer_down(ip(3), t0 + 2 * SEC, &mut out);
    assert_eq!(i.state(), StateKind::Backup);
    i.peer_down(ip(2), t0 + 2 * SEC, &mut out);
    assert_eq!(i.state(), StateKind::Master);
    assert_eq!(i.last_transition(), Some(t0 + 2 * SEC));
    assert_eq!(
        changes(&out),
        vec![(StateKind::Backup, StateKind::Master, Reason::PeerDown)]
    );
    assert!(out.contains(&Output::AddVirtualAddresses(vec![vip()])));
    // As Master it is ignored.
    out.clear();
    i.peer_down(ip(2), t0 + 3 * SEC, &mut out);
    assert!(out.is_empty());
}

#[test]
fn fenced_stays_out_until_unfenced() {
    let t0 = Instant::now();
    let (mut i, at) = master(cfg(200, 1), t0);
    let mut out = Vec::new();
    i.fence(at + MS, &mut out);
    assert_eq!(i.state(), StateKind::Fenced);
    assert_eq!(
        out,
        vec![
            Output::StateChange {
                from: StateKind::Master,
                to: StateKind::Fenced,
                reason: Reason::Fence
            },
            Output::RemoveVirtualAddresses(vec![vip()]),
        ]
    );
    // No adverts, no takeover, however long.
    assert_eq!(i.next_deadline(), None);
    out.clear();
    i.on_timer(at + Duration::from_secs(60), &mut out);
    i.fence(at + Duration::from_secs(60), &mut out);
    assert!(out.is_empty());
    // Unfenced: a normal Backup with a fresh Master_Down_Timer.
    let t = at + Duration::from_secs(61);
    i.unfence(t, &mut out);
    assert_eq!(
        changes(&out),
        vec![(StateKind::Fenced, StateKind::Backup, Reason::Unfence)]
    );
    assert_eq!(i.next_deadline(), Some(t + ns(3_218_750_000)));
    i.on_timer(t + ns(3_218_750_000), &mut out);
    assert_eq!(i.state(), StateKind::Master);

    // A fenced Backup does not take over either.
    let mut b = new(cfg(100, 2));
    b.start(t0, &mut out);
    b.fence(t0 + MS, &mut out);
    assert_eq!((b.state(), b.next_deadline()), (StateKind::Fenced, None));
}

#[test]
fn fenced_returns_to_backup_on_a_peer_advert() {
    let t0 = Instant::now();
    let (mut i, at) = master(cfg(100, 1), t0);
    i.fence(at, &mut Vec::new());
    let now = at + SEC;
    let out = feed(&mut i, 2, &advert(150, 2, 200), now);
    assert_eq!(
        changes(&out),
        vec![(StateKind::Fenced, StateKind::Backup, Reason::Advert)]
    );
    // ...and the advert is then taken by the Backup rules.
    assert_eq!(i.master(), Some(ip(2)));
    assert_eq!(i.master_advert_interval(), 2 * SEC);
    assert_eq!(
        i.next_deadline(),
        Some(now + master_down_interval(100, 2 * SEC))
    );
    // Invalid packets do not unfence.
    let (mut i, at) = master(cfg(100, 1), t0);
    i.fence(at, &mut Vec::new());
    let mut out = Vec::new();
    let r = i.handle_packet(ip(2), group(), 64, &advert(150, 2, 100), at, &mut out);
    assert_eq!(r, Err(Discard::Ttl(64)));
    assert!(out.is_empty());
    assert_eq!(i.state(), StateKind::Fenced);
}

// ===== two instances over a virtual link =====

/// Two instances on one zero-delay link, in virtual time.
struct Net {
    t0: Instant,
    now: Instant,
    nodes: [Instance; 2],
    link_up: bool,
    /// (time since t0, node, from, to, reason)
    log: Vec<(Duration, usize, StateKind, StateKind, Reason)>,
    /// Every output, with its time and node.
    outputs: Vec<(Duration, usize, Output)>,
}

impl Net {
    fn new(a: InstanceConfig, b: InstanceConfig) -> Net {
        let t0 = Instant::now();
        Net {
            t0,
            now: t0,
            nodes: [new(a), new(b)],
            link_up: true,
            log: Vec::new(),
            outputs: Vec::new(),
        }
    }

    fn start(&mut self, n: usize) {
        let mut out = Vec::new();
        self.nodes[n].start(self.now, &mut out);
        self.deliver(n, out);
    }

    fn with(&mut self, n: usize, f: impl FnOnce(&mut Instance, Instant, &mut Vec<Output>)) {
        let mut out = Vec::new();
        f(&mut self.nodes[n], self.now, &mut out);
        self.deliver(n, out);
    }

    fn deliver(&mut self, from: usize, out: Vec<Output>) {
        let mut queue: Vec<(usize, Output)> = out.into_iter().map(|o| (from, o)).collect();
        while !queue.is_empty() {
            let (from, o) = queue.remove(0);
            let at = self.now - self.t0;
            if let Output::StateChange {
                from: f,
                to,
                reason,
            } = o
            {
                self.log.push((at, from, f, to, reason));
            }
            self.outputs.push((at, from, o.clone()));
            let Output::Transmit { dst, payload } = o else {
                continue;
            };
            if !self.link_up {
                continue;
            }
            let to = 1 - from;
            let src = self.nodes[from].config().source;
            assert!(
                dst == multicast_group(Family::of(src)) || dst == self.nodes[to].config().source,
                "sent to {dst}"
            );
            let mut o2 = Vec::new();
            let r = self.nodes[to].handle_packet(src, dst, TTL, &payload, self.now, &mut o2);
            assert!(r.is_ok() || r == Err(Discard::NotRunning), "{r:?}");
            queue.extend(o2.into_iter().map(|o| (to, o)));
        }
    }

    fn run_until(&mut self, until: Duration) {
        let until = self.t0 + until;
        loop {
            let next = self.nodes.iter().filter_map(|i| i.next_deadline()).min();
            let Some(next) = next.filter(|&n| n <= until) else {
                self.now = until;
                return;
            };
            self.now = next.max(self.now);
            for n in 0..2 {
                let mut out = Vec::new();
                self.nodes[n].on_timer(self.now, &mut out);
                self.deliver(n, out);
            }
        }
    }

    fn states(&self) -> (StateKind, StateKind) {
        (self.nodes[0].state(), self.nodes[1].state())
    }

    /// When node `n` last became Master.
    fn became_master(&self, n: usize) -> Option<Duration> {
        self.log
            .iter()
            .rev()
            .find(|e| e.1 == n && e.3 == StateKind::Master)
            .map(|e| e.0)
    }

    fn count(&self, n: usize, pred: impl Fn(&Output) -> bool) -> usize {
        self.outputs
            .iter()
            .filter(|o| o.1 == n && pred(&o.2))
            .count()
    }
}

const BACKUP: StateKind = StateKind::Backup;
const MASTER: StateKind = StateKind::Master;

#[test]
fn the_higher_priority_wins_the_election_either_way() {
    for (pa, pb, winner) in [(200, 100, 0), (100, 200, 1)] {
        let mut net = Net::new(cfg(pa, 1), cfg(pb, 2));
        net.start(0);
        net.start(1);
        net.run_until(Duration::from_secs(30));
        let want = if winner == 0 {
            (MASTER, BACKUP)
        } else {
            (BACKUP, MASTER)
        };
        assert_eq!(net.states(), want, "{pa} vs {pb}: {:?}", net.log);
        // The winner's Master_Down_Interval: 3 s + 56/256 s.
        assert_eq!(net.became_master(winner), Some(ns(3_218_750_000)));
        assert_eq!(net.log.len(), 3, "no flaps: {:?}", net.log);
        let loser = &net.nodes[1 - winner];
        assert_eq!(loser.master(), Some(ip(winner as u8 + 1)));
        assert_eq!(loser.counters().adverts_in, 27);
    }
}

#[test]
fn owner_wins_at_start_and_stays() {
    let mut net = Net::new(cfg(100, 1), cfg(255, 2));
    net.start(0);
    net.start(1);
    assert_eq!(net.states(), (BACKUP, MASTER));
    assert_eq!(net.became_master(1), Some(Duration::ZERO));
    net.run_until(Duration::from_secs(30));
    assert_eq!(net.states(), (BACKUP, MASTER));
    assert_eq!(net.log.len(), 2);
}

#[test]
fn preempt_takes_over_a_lower_master() {
    let mut net = Net::new(cfg(100, 1), cfg(200, 2));
    net.start(0);
    net.run_until(5 * SEC);
    assert_eq!(net.became_master(0), Some(ns(3_609_375_000)));
    net.start(1);
    // b ignores the lower adverts and takes over after its own
    // Master_Down_Interval; a hears it and steps down at once.
    net.run_until(Duration::from_secs(30));
    assert_eq!(net.states(), (BACKUP, MASTER));
    let at = 5 * SEC + ns(3_218_750_000);
    assert_eq!(net.became_master(1), Some(at));
    assert!(net
        .log
        .contains(&(at, 0, MASTER, BACKUP, Reason::Preempted)));
    assert_eq!(
        net.count(0, |o| matches!(o, Output::RemoveVirtualAddresses(_))),
        1
    );
}

#[test]
fn no_preempt_leaves_a_lower_master_alone() {
    let mut b = cfg(200, 2);
    b.preempt = false;
    let mut net = Net::new(cfg(100, 1), b);
    net.start(0);
    net.run_until(5 * SEC);
    net.start(1);
    net.run_until(Duration::from_secs(60));
    assert_eq!(net.states(), (MASTER, BACKUP));
    assert_eq!(net.nodes[1].master(), Some(ip(1)));
    // But it still takes over when that Master goes silent.
    net.link_up = false;
    net.run_until(Duration::from_secs(70));
    assert_eq!(net.nodes[1].state(), MASTER);
}

#[test]
fn a_silenced_master_is_replaced_after_exactly_master_down_interval() {
    let mut net = Net::new(cfg(200, 1), cfg(100, 2));
    net.start(0);
    net.start(1);
    net.run_until(ns(10_500_000_000));
    // a's adverts: 3.21875 s + k s; the last one b heard is at 10.21875 s.
    net.link_up = false;
    net.run_until(Duration::from_secs(20));
    assert_eq!(net.states(), (MASTER, MASTER));
    assert_eq!(
        net.became_master(1),
        Some(ns(10_218_750_000) + ns(3_609_375_000))
    );
    // Healed at 20.5 s, before a's next advert (21.21875 s): b's advert at
    // 20.828125 s is answered at once (keepalived #950) and a announces, so
    // b steps down then, not at a's next periodic advert.
    net.run_until(ns(20_500_000_000));
    net.link_up = true;
    let announced = net.count(0, |o| matches!(o, Output::Announce(_)));
    net.run_until(Duration::from_secs(25));
    assert_eq!(net.states(), (MASTER, BACKUP));
    let healed = ns(20_828_125_000);
    assert!(
        net.log
            .contains(&(healed, 1, MASTER, BACKUP, Reason::Preempted)),
        "{:?}",
        net.log
    );
    assert!(net
        .outputs
        .contains(&(healed, 0, Output::Announce(vec![vip()]))));
    // And once more when b's adverts have stopped for a's
    // Master_Down_Interval (200, 1 s): the split is over.
    let over = healed + master_down_interval(200, SEC);
    assert!(net
        .outputs
        .contains(&(over, 0, Output::Announce(vec![vip()]))));
    assert_eq!(
        net.count(0, |o| matches!(o, Output::Announce(_))),
        announced + 2
    );
    assert_eq!(net.nodes[0].counters().split_brain_healed, 1);
}

/// A partition heals just before the winner's next advert: it crosses
/// first, and the loser steps down at once. Its last advert tells the
/// winner there were two Masters, so the winner still repairs the caches
/// (keepalived #166), at once and when the split is over.
#[test]
fn a_healed_partition_is_announced_whichever_advert_crosses_first() {
    let mut net = Net::new(cfg(200, 1), cfg(100, 2));
    net.start(0);
    net.start(1);
    net.run_until(ns(10_500_000_000));
    net.link_up = false;
    net.run_until(Duration::from_secs(21));
    assert_eq!(net.states(), (MASTER, MASTER));
    // a's adverts at 3.21875 + k s: the next is 21.21875 s; b's at
    // 13.828125 + k s: the next is 21.828125 s.
    net.run_until(ns(21_200_000_000));
    net.link_up = true;
    let announced = net.count(0, |o| matches!(o, Output::Announce(_)));
    net.run_until(Duration::from_secs(26));
    assert_eq!(net.states(), (MASTER, BACKUP));
    let crossed = ns(21_218_750_000);
    assert!(
        net.log
            .contains(&(crossed, 1, MASTER, BACKUP, Reason::Preempted)),
        "{:?}",
        net.log
    );
    assert!(net
        .outputs
        .contains(&(crossed, 0, Output::Announce(vec![vip()]))));
    assert_eq!(
        net.count(0, |o| matches!(o, Output::Announce(_))),
        announced + 2
    );
}

/// Our adverts are lost but the other Master's reach us (a one-way
/// split): announcing at each of its adverts would have both sides fight
/// over the neighbours' caches every interval. Once when it starts, once
/// when it ends.
#[test]
fn a_one_way_split_brain_announces_at_its_start_and_end_only() {
    let t0 = Instant::now();
    let (mut i, at) = master(cfg(200, 5), t0);
    let mut announces = Vec::new();
    let mut t = at;
    for k in 0..10u32 {
        t = at + k * SEC + 10 * MS;
        let mut out = feed(&mut i, 2, &advert(100, 2, 100), t);
        // Our own timer keeps running in between.
        i.on_timer(t + 500 * MS, &mut out);
        announces.extend(
            out.iter()
                .filter(|o| matches!(o, Output::Announce(_)))
                .map(|_| t),
        );
        assert_eq!(i.state(), StateKind::Master);
    }
    assert_eq!(announces, vec![at + 10 * MS]);
    // The other side is quiet from t on: the split has healed.
    let healed = t + master_down_interval(200, SEC);
    let mut out = Vec::new();
    i.on_timer(healed - MS, &mut out);
    assert!(!out.iter().any(|o| matches!(o, Output::Announce(_))));
    assert!(i.next_deadline() <= Some(healed));
    i.on_timer(healed, &mut out);
    assert!(out.contains(&Output::Announce(vec![vip()])));
    assert_eq!(i.counters().split_brain_healed, 1);
    // A later split is a new one: announced again.
    let out = feed(&mut i, 2, &advert(100, 2, 100), healed + SEC);
    assert!(out.contains(&Output::Announce(vec![vip()])));
}

#[test]
fn equal_priority_split_brain_resolves_to_the_greater_address() {
    for first in [0, 1] {
        let mut net = Net::new(cfg(100, 1), cfg(100, 2));
        net.link_up = false;
        net.start(first);
        net.run_until(SEC);
        net.start(1 - first);
        net.run_until(10 * SEC);
        assert_eq!(net.states(), (MASTER, MASTER));
        net.link_up = true;
        net.run_until(15 * SEC);
        assert_eq!(net.states(), (BACKUP, MASTER), "{:?}", net.log);
        assert_eq!(net.nodes[0].master(), Some(ip(2)));
    }
}

#[test]
fn the_backup_uses_the_masters_interval_for_takeover() {
    let mut a = cfg(200, 1);
    a.advert_interval = 2 * SEC;
    let mut net = Net::new(a, cfg(100, 2));
    net.start(0);
    net.start(1);
    net.run_until(ns(20_500_000_000));
    // b (1 s) became Master first at 3.609375 s; a (2 s, preempting) took
    // over at its own 6 s + 56/256 × 2 s = 6.4375 s.
    assert_eq!(net.became_master(0), Some(ns(6_437_500_000)));
    assert_eq!(net.states(), (MASTER, BACKUP));
    assert_eq!(net.nodes[1].master_advert_interval(), 2 * SEC);
    // a's adverts: 6.4375 + 2k s, the last heard at 20.4375 s; b waits
    // 3 × 2 s + 156/256 × 2 s, not its own 3.609375 s.
    net.link_up = false;
    net.run_until(Duration::from_secs(40));
    assert_eq!(
        net.became_master(1),
        Some(ns(20_437_500_000) + ns(6_000_000_000 + 1_218_750_000))
    );
}

#[test]
fn shutdown_hands_over_after_skew_time() {
    let mut net = Net::new(cfg(200, 1), cfg(100, 2));
    net.start(0);
    net.start(1);
    net.run_until(ns(10_500_000_000));
    net.with(0, |i, now, out| i.shutdown(now, out));
    assert_eq!(
        net.nodes[1].next_deadline(),
        Some(net.now + ns(609_375_000))
    );
    net.run_until(Duration::from_secs(20));
    assert_eq!(net.states(), (StateKind::Initialize, MASTER));
    assert_eq!(
        net.became_master(1),
        Some(ns(10_500_000_000) + ns(609_375_000))
    );
    assert_eq!(net.nodes[1].counters().priority_zero_in, 1);
}

#[test]
fn a_lowered_master_priority_lets_a_preempting_backup_take_over() {
    let mut net = Net::new(cfg(200, 1), cfg(150, 2));
    net.start(0);
    net.start(1);
    net.run_until(ns(10_500_000_000));
    net.with(0, |i, now, out| {
        assert_eq!(i.set_priority(100, now, out), Ok(()));
    });
    net.run_until(Duration::from_secs(20));
    assert_eq!(net.states(), (BACKUP, MASTER));
    // b ignores 100 < 150 and waits out its Master_Down_Interval from a's
    // last 200 (10.21875 s): 3 s + 106/256 s.
    assert_eq!(
        net.became_master(1),
        Some(ns(10_218_750_000) + ns(3_414_062_500))
    );
}

#[test]
fn peer_down_skips_the_master_down_wait() {
    let mut net = Net::new(cfg(200, 1), cfg(100, 2));
    net.start(0);
    net.start(1);
    net.run_until(ns(10_500_000_000));
    // a dies; BFD tells b 50 ms later.
    net.link_up = false;
    net.with(0, |i, now, out| i.shutdown(now, out));
    net.run_until(ns(10_550_000_000));
    net.with(1, |i, now, out| i.peer_down(ip(1), now, out));
    assert_eq!(net.nodes[1].state(), MASTER);
    assert_eq!(net.became_master(1), Some(ns(10_550_000_000)));
    assert!(net
        .log
        .contains(&(ns(10_550_000_000), 1, BACKUP, MASTER, Reason::PeerDown)));
}

#[test]
fn fencing_a_master_hands_over_and_a_peer_advert_unfences() {
    let mut net = Net::new(cfg(200, 1), cfg(100, 2));
    net.start(0);
    net.start(1);
    net.run_until(ns(10_500_000_000));
    net.with(0, |i, now, out| i.fence(now, out));
    let sent = net.count(0, |o| matches!(o, Output::Transmit { .. }));
    // a is silent: b takes over after Master_Down_Interval from a's last
    // advert, and its first advert brings a back to Backup.
    net.run_until(Duration::from_secs(14));
    assert_eq!(
        net.became_master(1),
        Some(ns(10_218_750_000) + ns(3_609_375_000))
    );
    assert_eq!(net.count(0, |o| matches!(o, Output::Transmit { .. })), sent);
    assert_eq!(net.nodes[0].state(), BACKUP);
    assert!(net.log.contains(&(
        ns(13_828_125_000),
        0,
        StateKind::Fenced,
        BACKUP,
        Reason::Advert
    )));
    // From there the normal rules apply: a preempts the lower b.
    net.run_until(Duration::from_secs(30));
    assert_eq!(net.states(), (MASTER, BACKUP));
    assert_eq!(
        net.became_master(0),
        Some(ns(13_828_125_000) + ns(3_218_750_000))
    );
}

#[test]
fn ipv6_election_with_the_pseudo_header() {
    let ll = |n: u16| IpAddr::V6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, n));
    let v6cfg = |p, n| {
        let mut c = InstanceConfig::new(9, p, ll(n), vec![ll(0x100)]);
        c.advert_interval = 100 * MS;
        c
    };
    let mut net = Net::new(v6cfg(150, 1), v6cfg(120, 2));
    net.start(0);
    net.start(1);
    net.run_until(5 * SEC);
    assert_eq!(net.states(), (MASTER, BACKUP));
    assert_eq!(
        net.became_master(0),
        Some(300 * MS + skew_time(150, 100 * MS))
    );
    let tx = net.outputs.iter().find_map(|o| match &o.2 {
        Output::Transmit { dst, .. } => Some(*dst),
        _ => None,
    });
    assert_eq!(tx, Some(IpAddr::V6(crate::MULTICAST_V6)));
}
