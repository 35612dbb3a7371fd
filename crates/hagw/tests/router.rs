//! Router role (issue 3): dynamic peers from a listen range, each sent a default.
//! Real kernel, real FRR and BIRD, in namespaces each test makes and removes.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use common::{Hagw, RawPeer};
use hagw_bgp::packet::{Message, Notification};
use hagw_testkit::{addr, veth, wait_until, Bird, Frr, Netns};

const ROUTER_CONFIG: &str = r#"
[bgp]
asn = 65000
router_id = "10.200.0.1"
listen = ["10.200.0.1"]

[[bgp.dynamic]]
range = "10.200.0.0/16"
remote_asn = "external"
default_originate = true
advertise = ["10.0.0.0/16"]
hold_time = 9
"#;

/// A router namespace running hagw on 10.200.0.1/16 and a hosts namespace
/// behind one veth.
fn router_and_hosts() -> (Netns, Netns, Hagw) {
    hagw_testkit::require_root();
    let r = Netns::new("rtr");
    let h = Netns::new("hosts");
    veth(&r, "r0", &h, "h0");
    addr(&r, "r0", "10.200.0.1/16");
    addr(&h, "h0", "10.200.1.1/16");
    let hagw = Hagw::start(&r, ROUTER_CONFIG);
    (r, h, hagw)
}

fn router_addr() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 200, 0, 1)), 179)
}

#[test]
fn frr_host_gets_the_default_via_hagw() {
    let (_r, h, hagw) = router_and_hosts();
    let frr = Frr::start(
        &h,
        "frr defaults datacenter\n\
         router bgp 65101\n bgp router-id 10.200.1.1\n no bgp ebgp-requires-policy\n\
         neighbor 10.200.0.1 remote-as 65000\n",
        false,
    );
    h.wait_for(
        "FRR's default via hagw in the kernel",
        Duration::from_secs(30),
        |ns| ns.sh("ip route show default").contains("via 10.200.0.1"),
    );
    let route = h.sh("ip route show 10.0.0.0/16");
    assert!(
        route.contains("via 10.200.0.1"),
        "advertise list reached FRR: {route}"
    );
    assert_eq!(
        hagw.peer_state("10.200.1.1").as_deref(),
        Some("Established")
    );
    let st = hagw.status();
    let peer = &st["peers"][0];
    assert_eq!(peer["remote_asn"], 65101);
    assert_eq!(peer["prefixes_sent"], 2);
    drop(frr);
}

#[test]
fn bird_host_gets_the_default_via_hagw() {
    let (_r, h, hagw) = router_and_hosts();
    let _bird = Bird::start(
        &h,
        "router id 10.200.1.1;\n\
         protocol device {}\n\
         protocol kernel { ipv4 { export all; }; }\n\
         protocol bgp uplink { local 10.200.1.1 as 65102; neighbor 10.200.0.1 as 65000;\n\
           ipv4 { import all; export none; }; }\n",
    );
    h.wait_for(
        "BIRD's default via hagw in the kernel",
        Duration::from_secs(30),
        |ns| ns.sh("ip route show default").contains("via 10.200.0.1"),
    );
    assert_eq!(
        hagw.peer_state("10.200.1.1").as_deref(),
        Some("Established")
    );
}

#[test]
fn two_hundred_hosts_all_receive_the_default() {
    let (_r, h, hagw) = router_and_hosts();
    let n: u32 = 200;
    let batch: String = (1..n)
        .map(|i| {
            format!(
                "addr add 10.200.{}.{}/16 dev h0\n",
                1 + i / 250,
                i % 250 + 1
            )
        })
        .collect();
    std::fs::write(h.dir().join("addrs"), batch).expect("write batch");
    h.sh(&format!("ip -batch {}/addrs", h.dir().display()));
    let got = h.run(move || {
        let mut peers: Vec<RawPeer> = (1..=n)
            .map(|i| i - 1)
            .map(|i| {
                let src = Ipv4Addr::new(10, 200, (1 + i / 250) as u8, (i % 250 + 1) as u8);
                RawPeer::connect(IpAddr::V4(src), router_addr()).expect("connect")
            })
            .collect();
        for (i, p) in peers.iter_mut().enumerate() {
            p.send(&Message::Open(common::open(
                4_200_000_000 + i as u32,
                Ipv4Addr::from(0x0a00_0000 + i as u32 + 1),
            )));
            p.send(&Message::Keepalive);
        }
        let got = peers
            .iter_mut()
            .map(|p| p.wait_default(Duration::from_secs(20)))
            .filter(|nh| *nh == Some(Ipv4Addr::new(10, 200, 0, 1)))
            .count();
        (got, peers)
    });
    let (got, _peers_still_connected) = got;
    assert_eq!(got, n as usize, "every host got the default via 10.200.0.1");
    assert_eq!(hagw.established(), n as usize);
}

#[test]
fn a_connection_from_outside_every_range_is_refused_and_logged() {
    let (_r, h, hagw) = router_and_hosts();
    addr(&h, "h0", "10.99.0.2/16");
    // The router needs a way back to 10.99.0.2.
    _r.sh("ip route add 10.99.0.0/16 dev r0");
    let refused = h.run(|| {
        let src = IpAddr::V4(Ipv4Addr::new(10, 99, 0, 2));
        match RawPeer::connect(src, router_addr()) {
            Err(_) => true,
            Ok(mut p) => {
                p.send(&Message::Open(common::open(
                    65111,
                    Ipv4Addr::new(10, 99, 0, 2),
                )));
                p.recv(Duration::from_secs(3)).is_none()
            }
        }
    });
    assert!(
        refused,
        "no OPEN from hagw to an address outside the ranges"
    );
    wait_until("refusal logged", Duration::from_secs(5), || {
        hagw.proc
            .log()
            .contains("refused BGP connection from 10.99.0.2")
    });
    assert_eq!(hagw.established(), 0);
}

#[test]
fn a_malformed_update_gets_rfc7606_treatment_and_spares_other_sessions() {
    let (_r, h, hagw) = router_and_hosts();
    addr(&h, "h0", "10.200.1.2/16");
    addr(&h, "h0", "10.200.1.3/16");
    let notifications = h.run(|| {
        let mut good = RawPeer::connect(IpAddr::V4(Ipv4Addr::new(10, 200, 1, 1)), router_addr())
            .expect("connect");
        good.establish(65201, Ipv4Addr::new(10, 200, 1, 1));
        let mut taw = RawPeer::connect(IpAddr::V4(Ipv4Addr::new(10, 200, 1, 2)), router_addr())
            .expect("connect");
        taw.establish(65202, Ipv4Addr::new(10, 200, 1, 2));
        let mut bad = RawPeer::connect(IpAddr::V4(Ipv4Addr::new(10, 200, 1, 3)), router_addr())
            .expect("connect");
        bad.establish(65203, Ipv4Addr::new(10, 200, 1, 3));

        // ORIGIN with an undefined value 7: RFC 7606 §7.1 treat-as-withdraw, the
        // session stays up.
        let mut update = vec![0xff; 16];
        let body: Vec<u8> = [
            &[0u8, 0][..],                // no withdrawn routes
            &[0, 14],                     // path attribute length
            &[0x40, 1, 1, 7],             // ORIGIN = 7 (malformed)
            &[0x40, 2, 0],                // AS_PATH empty
            &[0x40, 3, 4, 10, 200, 1, 2], // NEXT_HOP
            &[16, 10, 1],                 // NLRI 10.1.0.0/16
        ]
        .concat();
        update.extend_from_slice(&((19 + body.len()) as u16).to_be_bytes());
        update.push(2);
        update.extend_from_slice(&body);
        taw.send_raw(&update);

        // Total path attribute length overruns the message: session reset with
        // UPDATE Message Error / Malformed Attribute List (3/1).
        let mut broken = vec![0xff; 16];
        let body = [0u8, 0, 0, 50, 0x40, 1, 1, 0];
        broken.extend_from_slice(&((19 + body.len()) as u16).to_be_bytes());
        broken.push(2);
        broken.extend_from_slice(&body);
        bad.send_raw(&broken);
        let mut got = None;
        for _ in 0..20 {
            match bad.recv(Duration::from_millis(500)) {
                Some(Message::Notification(n)) => {
                    got = Some(n);
                    break;
                }
                Some(_) => {}
                None => break,
            }
        }
        (got, good, taw)
    });
    let (n, _good, _taw) = notifications;
    let n: Notification = n.expect("a NOTIFICATION for the broken UPDATE");
    assert_eq!((n.code, n.subcode), (3, 1));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        hagw.peer_state("10.200.1.1").as_deref(),
        Some("Established")
    );
    assert_eq!(
        hagw.peer_state("10.200.1.2").as_deref(),
        Some("Established"),
        "treat-as-withdraw keeps the session"
    );
    assert_ne!(
        hagw.peer_state("10.200.1.3").as_deref(),
        Some("Established")
    );
    assert!(
        hagw.proc.log().contains("treated as withdraw"),
        "{}",
        hagw.proc.log()
    );
}

#[test]
fn a_bad_config_is_refused_with_the_check_messages() {
    let dir = std::env::temp_dir().join(format!("hagw-badcfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("bad.toml");
    std::fs::write(&path, "[bgp]\nasn = 65000\nrouter_id = \"x\"\n[[bgp.dynamic]]\nrange = \"10.0.0.0/33\"\nremote_asn = \"external\"\n").expect("write");
    let p = path.to_str().expect("utf8");
    let check = std::process::Command::new(common::HAGW)
        .args(["check", "--config", p])
        .output()
        .expect("check");
    let run = std::process::Command::new(common::HAGW)
        .args(["run", "--config", p])
        .output()
        .expect("run");
    std::fs::remove_dir_all(&dir).ok();
    assert!(!check.status.success() && !run.status.success());
    let c = String::from_utf8_lossy(&check.stderr);
    assert!(
        c.contains("bgp.router_id") && c.contains("bgp.dynamic[0].range"),
        "{c}"
    );
    assert_eq!(
        c,
        String::from_utf8_lossy(&run.stderr),
        "run refuses with the same words as check"
    );
}

#[test]
fn frr_gets_the_ipv6_default_over_an_ipv6_session() {
    hagw_testkit::require_root();
    let r = Netns::new("rtr6");
    let h = Netns::new("host6");
    veth(&r, "r0", &h, "h0");
    addr(&r, "r0", "fd00:200::1/64");
    addr(&h, "h0", "fd00:200::2/64");
    let hagw = Hagw::start(
        &r,
        r#"
[bgp]
asn = 65000
router_id = "10.200.0.1"
[[bgp.dynamic]]
range = "fd00:200::/64"
remote_asn = "external"
default_originate = true
"#,
    );
    let _frr = Frr::start(
        &h,
        "frr defaults datacenter\n\
         router bgp 65101\n bgp router-id 10.200.1.1\n no bgp ebgp-requires-policy\n\
         neighbor fd00:200::1 remote-as 65000\n\
         address-family ipv6 unicast\n  neighbor fd00:200::1 activate\n exit-address-family\n",
        false,
    );
    h.wait_for(
        "FRR's IPv6 default via hagw",
        Duration::from_secs(30),
        |ns| {
            ns.sh("ip -6 route show default")
                .contains("via fd00:200::1")
        },
    );
    assert_eq!(
        hagw.peer_state("fd00:200::2").as_deref(),
        Some("Established")
    );
}

#[test]
fn a_range_at_its_peer_limit_refuses_the_next_host() {
    hagw_testkit::require_root();
    let r = Netns::new("rtrl");
    let h = Netns::new("hostl");
    veth(&r, "r0", &h, "h0");
    addr(&r, "r0", "10.200.0.1/16");
    for a in ["10.200.1.1/16", "10.200.1.2/16", "10.200.1.3/16"] {
        addr(&h, "h0", a);
    }
    let hagw = Hagw::start(
        &r,
        &ROUTER_CONFIG.replace("hold_time = 9", "hold_time = 9\nlimit = 2"),
    );
    let (third_refused, _kept) = h.run(|| {
        let mut kept = Vec::new();
        for last in [1u8, 2] {
            let mut p =
                RawPeer::connect(IpAddr::V4(Ipv4Addr::new(10, 200, 1, last)), router_addr())
                    .expect("connect");
            p.establish(65300 + u32::from(last), Ipv4Addr::new(10, 200, 1, last));
            kept.push(p);
        }
        let refused =
            match RawPeer::connect(IpAddr::V4(Ipv4Addr::new(10, 200, 1, 3)), router_addr()) {
                Err(_) => true,
                Ok(mut p) => {
                    p.send(&Message::Open(common::open(
                        65303,
                        Ipv4Addr::new(10, 200, 1, 3),
                    )));
                    p.recv(Duration::from_secs(2)).is_none()
                }
            };
        (refused, kept)
    });
    assert!(third_refused, "the third host gets no OPEN");
    assert_eq!(hagw.established(), 2);
    wait_until("limit logged", Duration::from_secs(5), || {
        hagw.proc.log().contains("at its limit of 2 peers")
    });
}

#[test]
fn a_bad_config_on_sighup_is_reported_and_the_running_config_kept() {
    let (r, h, hagw) = router_and_hosts();
    let _frr = Frr::start(
        &h,
        "frr defaults datacenter\n\
         router bgp 65101\n bgp router-id 10.200.1.1\n no bgp ebgp-requires-policy\n\
         neighbor 10.200.0.1 remote-as 65000\n",
        false,
    );
    h.wait_for("FRR's default via hagw", Duration::from_secs(30), |ns| {
        ns.sh("ip route show default").contains("via 10.200.0.1")
    });
    std::fs::write(
        r.dir().join("hagw.toml"),
        "[bgp]\nasn = \"sixty-five thousand\"\n",
    )
    .expect("overwrite config");
    std::process::Command::new("kill")
        .args(["-HUP", &hagw.proc.pid().to_string()])
        .status()
        .expect("kill -HUP");
    wait_until(
        "the reload refused in the log",
        Duration::from_secs(5),
        || hagw.proc.log().contains("keeping the running config"),
    );
    assert!(hagw.proc.log().contains("bgp.asn"), "names the bad key");
    assert!(hagw.proc.is_running());
    assert_eq!(
        hagw.peer_state("10.200.1.1").as_deref(),
        Some("Established")
    );
    assert!(h.sh("ip route show default").contains("via 10.200.0.1"));
}
