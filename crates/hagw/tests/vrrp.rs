//! VRRPv3 (issue 11): `hagw run` pairs, and hagw beside keepalived, in
//! namespaces each test makes and removes. Two nodes `a` (10.0.0.1,
//! fd00::1) and `b` (10.0.0.2, fd00::2) and a client `c` (10.0.0.9) on one
//! bridge; the VIP is 10.0.0.100/24 (fe80::100 and fd00::100 for IPv6).
//! A node is cut off by disabling its bridge port (both ways, a split
//! brain while it lasts) or silenced by dropping its outgoing protocol 112
//! (as the benchmark does); adverts are 100 ms so every test is a few
//! seconds.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use common::Hagw;
use hagw_testkit::{bridge, veth, wait_until, Netns};
use hagw_vrrp::{Advertisement, ChecksumMode};

const VIP: &str = "10.0.0.100";
const WAIT: Duration = Duration::from_secs(5);

/// Three hosts on a bridge in a fourth namespace.
struct Lan {
    a: Netns,
    b: Netns,
    c: Netns,
    sw: Netns,
}

impl Lan {
    fn new(label: &str) -> Lan {
        hagw_testkit::require_root();
        let sw = Netns::new(&format!("{label}s"));
        let a = Netns::new(&format!("{label}a"));
        let b = Netns::new(&format!("{label}b"));
        let c = Netns::new(&format!("{label}c"));
        for (i, ns) in [&a, &b, &c].into_iter().enumerate() {
            // Usable IPv6 link-locals at once (no DAD wait).
            ns.sysctl("net.ipv6.conf.default.accept_dad", "0");
            ns.sysctl("net.ipv6.conf.all.accept_dad", "0");
            veth(ns, "eth0", &sw, &format!("p{i}"));
        }
        bridge(&sw, "br0", &["p0", "p1", "p2"]);
        // Multicast floods to every port (no querier on this LAN).
        sw.sh("ip link set br0 type bridge mcast_snooping 0");
        for (ns, n) in [(&a, 1), (&b, 2), (&c, 9)] {
            ns.sh(&format!(
                "ip addr add 10.0.0.{n}/24 dev eth0 && ip addr add fd00::{n}/64 dev eth0 nodad"
            ));
        }
        Lan { a, b, c, sw }
    }

    /// Cuts node `i` (0 = a, 1 = b) off the LAN both ways: the bridge
    /// drops every frame to and from its port (its link stays up, as
    /// behind a failed switch).
    fn cut(&self, i: u8) {
        self.sw.sh(&format!(
            "nft add table bridge cut && nft add chain bridge cut f '{{ type filter hook forward priority 0; }}' \
             && nft add rule bridge cut f iifname p{i} drop && nft add rule bridge cut f oifname p{i} drop"
        ));
    }

    fn heal(&self) {
        self.sw.sh("nft delete table bridge cut");
    }
}

/// A `[[vrrp]]` for node `n` (1 or 2) peering with the other, 100 ms.
fn v4(n: u8, priority: u8, extra: &str) -> String {
    format!(
        r#"[[vrrp]]
name = "gw"
interface = "eth0"
vrid = 10
priority = {priority}
advert_interval_ms = 100
peers = ["10.0.0.{peer}"]
virtual_addresses = ["{VIP}/24"]
accept = true
garp_interval_ms = 100
{extra}
"#,
        peer = 3 - n
    )
}

fn vrrp(h: &Hagw) -> serde_json::Value {
    h.status()["vrrp"][0].clone()
}

fn state(h: &Hagw) -> String {
    vrrp(h)["state"].as_str().unwrap_or("").to_string()
}

fn wait_state(h: &Hagw, want: &str, limit: Duration) {
    wait_until(&format!("VRRP state {want}"), limit, || state(h) == want);
}

fn has(ns: &Netns, addr: &str) -> bool {
    ns.sh("ip -o addr show dev eth0")
        .contains(&format!(" {addr}/"))
}

fn silence(ns: &Netns) {
    ns.sh("nft add table inet cut && nft add chain inet cut out '{ type filter hook output priority 0; }' && nft add rule inet cut out meta l4proto 112 drop");
}

fn unsilence(ns: &Netns) {
    ns.sh("nft delete table inet cut");
}

fn mac(ns: &Netns) -> String {
    let l = ns.sh("ip -o link show eth0");
    l.split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .unwrap_or("")
        .to_string()
}

/// The MAC the client has for the VIP (after one ping).
fn client_mac_for_vip(c: &Netns) -> String {
    let n = c.sh(&format!("ip neigh show {VIP} dev eth0"));
    n.split_whitespace()
        .skip_while(|w| *w != "lladdr")
        .nth(1)
        .unwrap_or("")
        .to_string()
}

#[test]
fn v4_pair_elects_fails_over_and_heals_with_garp() {
    let lan = Lan::new("v4");
    let a = Hagw::start(&lan.a, &v4(1, 200, ""));
    let b = Hagw::start(&lan.b, &v4(2, 100, ""));
    wait_state(&a, "Master", WAIT);
    wait_state(&b, "Backup", WAIT);
    wait_until("the VIP on a", WAIT, || has(&lan.a, VIP));
    assert!(!has(&lan.b, VIP), "the Backup holds no VIP");
    let st = vrrp(&b);
    assert_eq!(st["master"], "10.0.0.1", "{st}");
    assert_eq!(st["master_priority"], 200, "{st}");
    lan.c.sh(&format!("ping -c1 -W1 {VIP}"));
    assert_eq!(client_mac_for_vip(&lan.c), mac(&lan.a));

    // a is cut off: b takes over within Master_Down_Interval (3 x 100 ms
    // + skew), plus what the test's polling costs.
    let t0 = Instant::now();
    lan.cut(0);
    wait_until("the VIP on b", WAIT, || has(&lan.b, VIP));
    let took = t0.elapsed();
    assert!(took < Duration::from_millis(800), "takeover took {took:?}");
    wait_state(&b, "Master", WAIT);
    let st = vrrp(&b);
    assert_eq!(st["last_transition"], "master down timer", "{st}");
    assert!(
        st["vip_latency_ms"].as_f64().is_some_and(|l| l < 50.0),
        "{st}"
    );
    // b's gratuitous ARP moved the client (a, cut off, is still Master).
    wait_until("the client's ARP entry on b", WAIT, || {
        client_mac_for_vip(&lan.c) == mac(&lan.b)
    });
    lan.c.sh(&format!("ping -c1 -W1 {VIP}"));

    // Healed: a (higher, preempting) hears b, answers at once and announces;
    // b steps down and removes the VIP; the client follows a again
    // (keepalived #950, #166, #1528).
    assert_eq!(state(&a), "Master");
    lan.heal();
    wait_state(&b, "Backup", WAIT);
    wait_until("the VIP gone from b", WAIT, || !has(&lan.b, VIP));
    assert_eq!(state(&a), "Master");
    wait_until("the client's ARP entry back on a", WAIT, || {
        client_mac_for_vip(&lan.c) == mac(&lan.a)
    });
    let st = vrrp(&b);
    assert_eq!(st["last_transition"], "preempted", "{st}");
    assert!(st["counters"]["became_master"] == 1, "{st}");
    let sa = vrrp(&a);
    assert!(sa["announcements"].as_u64().is_some_and(|n| n >= 2), "{sa}");
    lan.c.sh(&format!("ping -c1 -W1 {VIP}"));
}

#[test]
fn no_preempt_keeps_a_lower_master_and_preempt_takes_over() {
    let lan = Lan::new("np");
    let b = Hagw::start(&lan.b, &v4(2, 100, ""));
    wait_state(&b, "Master", WAIT);
    let a = Hagw::start(&lan.a, &v4(1, 200, "preempt = false"));
    wait_state(&a, "Backup", WAIT);
    // Well past its Master_Down_Interval: still Backup, b still Master.
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!((state(&a), state(&b)), ("Backup".into(), "Master".into()));
    assert!(has(&lan.b, VIP) && !has(&lan.a, VIP));
    drop(a);
    // The same node with preempt takes over after its Master_Down_Interval.
    let a = Hagw::start(&lan.a, &v4(1, 200, ""));
    wait_state(&a, "Master", WAIT);
    wait_state(&b, "Backup", WAIT);
    wait_until("the VIP on a only", WAIT, || {
        has(&lan.a, VIP) && !has(&lan.b, VIP)
    });
}

#[test]
fn the_owner_is_master_at_once_and_its_address_stays() {
    let lan = Lan::new("own");
    // a owns 10.0.0.1; b backs it up.
    let own = |n: u8, p: u8| v4(n, p, "").replace(&format!("{VIP}/24"), "10.0.0.1/24");
    let a = Hagw::start(&lan.a, &own(1, 255));
    wait_state(&a, "Master", WAIT);
    let st = vrrp(&a);
    assert_eq!(st["last_transition"], "start", "{st}");
    assert_eq!(st["vips"][0]["foreign"], true, "{st}");
    let b = Hagw::start(&lan.b, &own(2, 100));
    wait_state(&b, "Backup", WAIT);
    // The owner stops: priority 0, b takes over after Skew_Time, and the
    // owner's own address is never removed.
    a.proc.stop();
    wait_state(&b, "Master", Duration::from_secs(2));
    assert!(has(&lan.a, "10.0.0.1"), "the owner's address stays");
    assert!(vrrp(&b)["counters"]["priority_zero_in"].as_u64() >= Some(1));
}

#[test]
fn accept_false_drops_packets_to_the_vip_on_a_non_owner_master() {
    let lan = Lan::new("acc");
    let a = Hagw::start(
        &lan.a,
        &v4(1, 200, "").replace("accept = true", "accept = false"),
    );
    wait_state(&a, "Master", WAIT);
    wait_until("the VIP on a", WAIT, || has(&lan.a, VIP));
    assert!(lan.c.try_sh(&format!("ping -c1 -W1 {VIP}")).is_err());
    lan.c.sh("ping -c1 -W1 10.0.0.1");
    let t = lan.a.sh("nft list table inet hagw_vrrp");
    assert!(
        t.contains(&format!("ip daddr {VIP} counter packets")),
        "{t}"
    );
    // Stopping removes the filter and the VIP.
    a.proc.stop();
    assert!(lan.a.try_sh("nft list table inet hagw_vrrp").is_err());
    assert!(!has(&lan.a, VIP));
}

/// A raw IP socket for protocol 112 in the calling thread's namespace.
fn raw112(ttl: u32) -> socket2::Socket {
    let s = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::RAW,
        Some(socket2::Protocol::from(112)),
    )
    .expect("raw socket");
    s.set_ttl_v4(ttl).expect("ttl");
    s
}

fn advert(prio: u8, src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
    Advertisement {
        vrid: 10,
        priority: prio,
        max_advert_interval_cs: 100,
        addresses: vec![IpAddr::V4(VIP.parse().expect("vip"))],
    }
    .encode(IpAddr::V4(src), IpAddr::V4(dst), ChecksumMode::Rfc9568)
    .expect("encode")
}

#[test]
fn bad_adverts_are_counted_and_a_lower_one_answered_at_once() {
    let lan = Lan::new("inj");
    // 1 s adverts: an answer within 100 ms is not the periodic one.
    let a = Hagw::start(
        &lan.a,
        &v4(1, 200, "").replace("advert_interval_ms = 100", "advert_interval_ms = 1000"),
    );
    wait_state(&a, "Master", Duration::from_secs(6));
    let (me, peer, stranger) = (
        Ipv4Addr::new(10, 0, 0, 1),
        Ipv4Addr::new(10, 0, 0, 2),
        Ipv4Addr::new(10, 0, 0, 9),
    );
    let to = SocketAddr::new(IpAddr::V4(me), 0);
    // From the peer's address with TTL 64, and from a stranger with 255.
    lan.b.run(|| {
        raw112(64)
            .send_to(&advert(100, peer, me), &to.into())
            .expect("send")
    });
    lan.c.run(|| {
        raw112(255)
            .send_to(&advert(100, stranger, me), &to.into())
            .expect("send")
    });
    wait_until("both drops counted", WAIT, || {
        let c = &vrrp(&a)["counters"];
        c["dropped_ttl"] == 1 && c["dropped_not_peer"] == 1
    });
    let st = vrrp(&a);
    assert_eq!(st["dropped"], 2, "{st}");
    assert_eq!(st["adverts_in"], 0, "{st}");
    assert!(
        st["last_drop"]
            .as_str()
            .is_some_and(|d| d.contains("10.0.0.9 is not a configured peer")),
        "{st}"
    );
    // A valid lower-priority advert from the peer: answered now (keepalived
    // #950), not at the next 1 s tick.
    let out_before = st["adverts_out"].as_u64().unwrap_or(0);
    let t0 = Instant::now();
    lan.b.run(|| {
        raw112(255)
            .send_to(&advert(100, peer, me), &to.into())
            .expect("send")
    });
    wait_until("the answer", WAIT, || {
        vrrp(&a)["adverts_out"].as_u64().unwrap_or(0) > out_before
    });
    assert!(
        t0.elapsed() < Duration::from_millis(500),
        "{:?}",
        t0.elapsed()
    );
    assert_eq!(vrrp(&a)["adverts_in"], 1);
    assert_eq!(state(&a), "Master");
}

#[test]
fn v6_multicast_pair_elects_and_fails_over() {
    let lan = Lan::new("v6");
    let cfg = |p: u8| {
        format!(
            r#"[[vrrp]]
name = "gw6"
interface = "eth0"
vrid = 10
priority = {p}
advert_interval_ms = 100
virtual_addresses = ["fe80::100/64", "fd00::100/64"]
accept = true
"#
        )
    };
    let a = Hagw::start(&lan.a, &cfg(200));
    let b = Hagw::start(&lan.b, &cfg(100));
    wait_state(&a, "Master", WAIT);
    wait_state(&b, "Backup", WAIT);
    wait_until("the VIPs on a", WAIT, || has(&lan.a, "fd00::100"));
    assert!(!has(&lan.b, "fd00::100"));
    let st = vrrp(&b);
    assert!(
        st["master"]
            .as_str()
            .is_some_and(|m| m.starts_with("fe80::")),
        "{st}"
    );
    assert_eq!(st["transport"], "multicast");
    lan.c.sh("ping -c1 -W1 fd00::100");
    lan.cut(0);
    wait_until("the VIPs on b", WAIT, || has(&lan.b, "fd00::100"));
    wait_state(&b, "Master", WAIT);
    // The unsolicited NA moved the client's entry to b.
    wait_until("the client's ND entry on b", WAIT, || {
        lan.c
            .sh("ip -6 neigh show fd00::100 dev eth0")
            .contains(&mac(&lan.b))
    });
    lan.heal();
    wait_state(&b, "Backup", WAIT);
    wait_until("the VIPs gone from b", WAIT, || !has(&lan.b, "fd00::100"));
    wait_until("the client's ND entry back on a", WAIT, || {
        lan.c
            .sh("ip -6 neigh show fd00::100 dev eth0")
            .contains(&mac(&lan.a))
    });
}

/// keepalived in `ns` (unicast VRRPv3, `advert_int` 0.1 s) peering with
/// `peer`; stopped by PID when the returned process drops.
fn keepalived(ns: &Netns, me: &str, peer: &str, prio: u8) -> hagw_testkit::Proc {
    let dir = ns.dir();
    let conf = dir.join("keepalived.conf");
    std::fs::write(
        &conf,
        format!(
            r#"global_defs {{
  vrrp_version 3
  script_user root
  enable_script_security
}}
vrrp_instance gw {{
  state BACKUP
  interface eth0
  virtual_router_id 10
  priority {prio}
  advert_int 0.1
  unicast_src_ip {me}
  unicast_peer {{ {peer} }}
  virtual_ipaddress {{ {VIP}/24 }}
}}
"#
        ),
    )
    .expect("write keepalived.conf");
    let p = |f: &str| dir.join(f).display().to_string();
    ns.spawn(
        "/usr/sbin/keepalived",
        &[
            "-f",
            &p("keepalived.conf"),
            "-p",
            &p("k.pid"),
            "-r",
            &p("v.pid"),
            "--log-console",
            "-n",
            "-P",
        ],
    )
}

fn keepalived_interop(hagw_prio: u8, ka_prio: u8) {
    if !std::path::Path::new("/usr/sbin/keepalived").exists() {
        panic!("keepalived is not installed (.ci/install-deps installs it)");
    }
    let lan = Lan::new(&format!("ka{hagw_prio}"));
    let h = Hagw::start(&lan.a, &v4(1, hagw_prio, "checksum = \"pseudo-header\""));
    let ka = keepalived(&lan.b, "10.0.0.2", "10.0.0.1", ka_prio);
    let (hi, lo) = if hagw_prio > ka_prio {
        (&lan.a, &lan.b)
    } else {
        (&lan.b, &lan.a)
    };
    let one_master = |m: &Netns, o: &Netns| {
        wait_until("one VIP, on the higher priority", WAIT, || {
            has(m, VIP) && !has(o, VIP)
        });
    };
    one_master(hi, lo);
    // The Master goes silent: the other takes over; back: the higher
    // (preempting) one takes over again.
    silence(hi);
    wait_until("the VIP on the lower priority", WAIT, || has(lo, VIP));
    unsilence(hi);
    one_master(hi, lo);
    // keepalived was Master once: its adverts were taken, none dropped (the
    // pseudo-header checksum is keepalived's).
    let st = vrrp(&h);
    assert!(st["adverts_in"].as_u64() > Some(0), "{st}\n{}", ka.log());
    assert_eq!(st["dropped"], 0, "{st}");
    assert!(ka.is_running(), "{}", ka.log());
}

#[test]
fn keepalived_backup_of_a_hagw_master() {
    keepalived_interop(200, 100);
}

#[test]
fn hagw_backup_of_a_keepalived_master() {
    keepalived_interop(100, 200);
}

#[test]
fn bfd_takes_over_at_once_instead_of_after_master_down_interval() {
    let lan = Lan::new("bfd");
    // 1 s adverts: Master_Down_Interval is 3.6 s; BFD 10 ms x 3 is 30 ms.
    let cfg = |n: u8, p: u8| {
        v4(n, p, "bfd = true").replace("advert_interval_ms = 100", "advert_interval_ms = 1000")
            + "[bfd]\ninterval_ms = 10\nmultiplier = 3\n"
    };
    let a = Hagw::start(&lan.a, &cfg(1, 200));
    let b = Hagw::start(&lan.b, &cfg(2, 100));
    wait_state(&a, "Master", Duration::from_secs(8));
    wait_state(&b, "Backup", WAIT);
    wait_until("BFD up on b", WAIT, || {
        b.status()["bfd"][0]["state"] == "Up" && vrrp(&b)["master"] == "10.0.0.1"
    });
    let t0 = Instant::now();
    lan.cut(0);
    wait_until("the VIP on b", WAIT, || has(&lan.b, VIP));
    let took = t0.elapsed();
    let st = vrrp(&b);
    assert_eq!(st["last_transition"], "peer down", "{st}");
    assert!(took < Duration::from_millis(1000), "took {took:?}: {st}");
}

#[test]
fn a_missing_source_is_waited_for_and_hooks_say_each_state() {
    let lan = Lan::new("src");
    let log = lan.a.dir().join("hook.log");
    let hook = lan.a.dir().join("hook.sh");
    std::fs::write(
        &hook,
        format!(
            "#!/bin/sh\necho \"$HAGW_VRRP_NAME $HAGW_VRRP_STATE $HAGW_VRRP_VIPS\" >> {}\n",
            log.display()
        ),
    )
    .expect("hook");
    lan.a.sh(&format!("chmod +x {}", hook.display()));
    let h = hook.display();
    // keepalived #1847: a unicast source that is not assigned yet.
    let a = Hagw::start(
        &lan.a,
        &v4(
            1,
            200,
            &format!(
                "source = \"10.0.0.5\"\non_master = \"{h}\"\non_backup = \"{h}\"\non_fault = \"{h}\""
            ),
        ),
    );
    wait_state(&a, "Fault", WAIT);
    let st = vrrp(&a);
    assert!(
        st["fault"]
            .as_str()
            .is_some_and(|f| f.contains("source 10.0.0.5 is not on eth0 (yet)")),
        "{st}"
    );
    lan.a.sh("ip addr add 10.0.0.5/24 dev eth0");
    wait_state(&a, "Master", WAIT);
    assert_eq!(vrrp(&a)["source"], "10.0.0.5");
    // The link goes down: Fault, the VIP goes; up again: back to Master.
    lan.a.sh("ip link set eth0 down");
    wait_state(&a, "Fault", WAIT);
    assert!(!has(&lan.a, VIP));
    lan.a.sh("ip link set eth0 up");
    wait_state(&a, "Master", WAIT);
    wait_until("the hooks' lines", WAIT, || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.lines().count() >= 6)
    });
    let lines = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(
        lines.lines().collect::<Vec<_>>(),
        vec![
            "gw fault 10.0.0.100/24",
            "gw backup 10.0.0.100/24",
            "gw master 10.0.0.100/24",
            "gw fault 10.0.0.100/24",
            "gw backup 10.0.0.100/24",
            "gw master 10.0.0.100/24",
        ],
        "in order, each once"
    );
}

#[test]
fn a_failing_probe_lowers_the_priority_and_the_backup_preempts() {
    let lan = Lan::new("trk");
    let probe = "[[health]]\ntarget = \"10.0.0.9\"\ninterval_ms = 100\nfall = 1\nrise = 1\nvrrp = \"gw\"\npriority_decrement = 150\n";
    let a = Hagw::start(&lan.a, &(v4(1, 200, "") + probe));
    let b = Hagw::start(&lan.b, &v4(2, 100, ""));
    wait_state(&a, "Master", WAIT);
    wait_state(&b, "Backup", WAIT);
    // The probe target stops answering: 200 - 150 = 50 < 100.
    lan.c.sh("nft add table inet mute && nft add chain inet mute in '{ type filter hook input priority 0; }' && nft add rule inet mute in icmp type echo-request drop");
    wait_until("a's priority 50", WAIT, || vrrp(&a)["priority"] == 50);
    wait_state(&b, "Master", WAIT);
    wait_state(&a, "Backup", WAIT);
    assert!(has(&lan.b, VIP) && !has(&lan.a, VIP));
    // It answers again: 200, and a (preempting) takes back over.
    lan.c.sh("nft delete table inet mute");
    wait_state(&a, "Master", WAIT);
    wait_state(&b, "Backup", WAIT);
}

#[test]
fn hagw_check_names_live_problems() {
    let lan = Lan::new("chk");
    lan.a.sh(
        "ip link add dummy1 type veth peer name dummy2 && ip addr add 10.5.0.100/24 dev dummy1",
    );
    let path = lan.a.dir().join("bad.toml");
    std::fs::write(
        &path,
        r#"
[[vrrp]]
name = "gw"
interface = "eth0"
vrid = 10
peers = ["10.9.0.2"]
virtual_addresses = ["10.5.0.100/24"]
[[vrrp]]
name = "gw2"
interface = "eth0"
vrid = 10
virtual_addresses = ["10.0.0.101/24"]
"#,
    )
    .expect("config");
    let out = lan.a.try_sh(&format!(
        "{} check --config {}",
        common::HAGW,
        path.display()
    ));
    let err = out.expect_err("refused");
    assert!(
        err.contains("vrrp[1].vrid: IPv4 VRID 10 on eth0 is also vrrp[0]"),
        "{err}"
    );
    // With the duplicate gone, the live problems come out.
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    std::fs::write(
        &path,
        text.replace(
            "vrid = 10\nvirtual_addresses = [\"10.0.0.101",
            "vrid = 11\nvirtual_addresses = [\"10.0.0.101",
        ),
    )
    .expect("config");
    let err = lan
        .a
        .try_sh(&format!(
            "{} check --config {}",
            common::HAGW,
            path.display()
        ))
        .expect_err("refused");
    for want in [
        "vrrp[0].peers[0]: 10.9.0.2 is not on a subnet of eth0",
        "vrrp[0].virtual_addresses[0]: 10.5.0.100 is already an address of dummy1, not of eth0",
    ] {
        assert!(err.contains(want), "{want:?} missing:\n{err}");
    }
}

#[test]
fn gate_bgp_announces_the_default_only_while_master() {
    use hagw_bgp::packet::Message;
    let lan = Lan::new("gate");
    let bgp = r#"
gate_bgp = true
[bgp]
asn = 65000
router_id = "10.0.0.1"
listen = ["10.0.0.1"]
[[bgp.dynamic]]
range = "10.0.0.0/24"
remote_asn = "external"
default_originate = true
"#;
    let a = Hagw::start(&lan.a, &v4(1, 100, bgp));
    let b = Hagw::start(&lan.b, &v4(2, 200, ""));
    wait_state(&b, "Master", WAIT);
    wait_state(&a, "Backup", WAIT);
    let mut peer = lan.c.run(|| {
        common::RawPeer::connect(
            IpAddr::V4(Ipv4Addr::new(10, 0, 0, 9)),
            SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), 179),
        )
        .expect("connect")
    });
    peer.establish(65009, Ipv4Addr::new(10, 0, 0, 9));
    // a is Backup: no default.
    assert_eq!(peer.wait_default(Duration::from_millis(700)), None);
    // b goes away: a is Master and announces.
    b.proc.stop();
    wait_state(&a, "Master", WAIT);
    assert!(peer.wait_default(WAIT).is_some(), "default announced");
    // b is back (200, preempting): a withdraws.
    let _b = Hagw::start(&lan.b, &v4(2, 200, ""));
    wait_state(&a, "Backup", WAIT);
    let end = Instant::now() + WAIT;
    let mut withdrawn = false;
    while Instant::now() < end && !withdrawn {
        if let Some(Message::Update(u)) = peer.recv(Duration::from_millis(200)) {
            withdrawn = u.withdrawn.iter().any(|p| p.prefix_len() == 0);
        }
    }
    assert!(withdrawn, "default withdrawn when a stopped being Master");
}
