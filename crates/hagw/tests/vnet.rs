//! Issue 13 scenarios: virtual networks on proxy ARP and policy routing
//! (seed 004), on the topology `hagw lab up vnet` builds ([`VnetLab`]):
//! hosts learn their VMs from neighbour entries and announce them to the
//! routers over BGP; the routers install one /32 per VM, hold the gateways
//! and NAT the networks.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use common::{Hagw, RawPeer};
use hagw_bgp::packet::{AsPath, Message, Origin, PathAttributes, Update};
use hagw_lab::topology::Options;
use hagw_lab::vnet::{
    self, host_config, move_and_measure, router_config, Pinger, HOSTS, ROUTERS, VMS,
};
use hagw_lab::{SilentCut, VnetLab};
use hagw_testkit::Netns;

/// The /32s of protocol hagw in a router's main table.
fn vm_routes(r: &Netns) -> Vec<String> {
    r.sh("ip route show proto hagw")
        .lines()
        .map(str::to_string)
        .collect()
}

fn wait_routes(r: &Netns, want: &[(&str, &str)], timeout: Duration) {
    r.wait_for(&format!("routes {want:?}"), timeout, |r| {
        let have = vm_routes(r);
        have.len() == want.len()
            && want.iter().all(|(vm, via)| {
                have.iter()
                    .any(|l| l.starts_with(&format!("{vm} via {via} ")))
            })
    });
}

fn pings(from: &Netns, to: &str) -> bool {
    // The first packet to a new destination waits for ARP (proxied: up to
    // 0.1 s on each side).
    from.try_sh(&format!("ping -n -c 3 -i 0.2 -W 2 {to}"))
        .is_ok()
}

/// The lab with hagw on `routers` routers and both hosts, VMs attached.
struct Running {
    hosts: Vec<Hagw>,
    routers: Vec<Hagw>,
    lab: VnetLab,
}

fn start(routers: usize) -> Running {
    let lab = VnetLab::build(routers);
    let opts = Options::default();
    let routers_hagw = ROUTERS[..routers]
        .iter()
        .map(|r| Hagw::start(lab.router(r.name), &router_config(r, &opts)))
        .collect();
    let hosts = HOSTS
        .iter()
        .map(|h| Hagw::start(lab.host(h.name), &host_config(h, routers, &opts)))
        .collect();
    lab.attach_all(Duration::from_secs(10))
        .expect("attach the VMs");
    Running {
        hosts,
        routers: routers_hagw,
        lab,
    }
}

const ALL_VMS: [(&str, &str); 4] = [
    ("10.10.10.10", "192.168.56.103"),
    ("10.10.20.11", "192.168.56.103"),
    ("10.10.10.12", "192.168.56.104"),
    ("10.10.20.13", "192.168.56.104"),
];

#[test]
fn vms_reach_across_hosts_networks_and_out_and_follow_moves_and_restarts() {
    let run = start(1);
    let lab = &run.lab;
    let r1 = lab.router("r1");

    // Exactly one /32 per VM, through its host.
    wait_routes(r1, &ALL_VMS, Duration::from_secs(15));
    // The gateways on lo, the NAT set.
    let lo = r1.sh("ip -4 addr show dev lo");
    assert!(
        lo.contains("10.10.10.1/32") && lo.contains("10.10.20.1/32"),
        "{lo}"
    );
    let nft = r1.sh("nft list table inet hagw_vnet");
    assert!(nft.contains("10.10.10.0/24 . \"uplink\""), "{nft}");

    // The host side: bridge, proxy ARP, table, rule.
    let h1 = lab.host("host1");
    assert_eq!(
        h1.sh("cat /proc/sys/net/ipv4/conf/br_net1/proxy_arp")
            .trim(),
        "1"
    );
    let rules = h1.sh("ip rule");
    assert!(
        rules.contains("iif br_net1 lookup 101 proto hagw"),
        "{rules}"
    );
    let t101 = h1.sh("ip route show table 101");
    assert!(t101.contains("default via 192.168.56.101"), "{t101}");
    assert!(t101.contains("10.10.10.0/24 via 192.168.56.101"), "{t101}");
    assert!(t101.contains("10.10.10.10 dev br_net1"), "{t101}");

    // Every direction.
    let vm1 = lab.vm("vm1");
    for (to, what) in [
        ("10.10.10.12", "same network, other host"),
        ("10.10.20.11", "other network, same host"),
        ("10.10.20.13", "other network, other host"),
        ("203.0.113.1", "the outside through the router's NAT"),
    ] {
        assert!(pings(vm1, to), "vm1 -> {to} ({what})");
    }
    assert!(pings(lab.vm("vm4"), "10.10.10.10"), "vm4 -> vm1");

    // A host announcing a /32 outside every network is refused; past its
    // max_prefixes it is cut off (Cease/1), the other hosts untouched.
    h1.sh("ip addr add 192.168.56.105/24 dev eth1");
    let mut rogue = h1.run(|| {
        RawPeer::connect(
            "192.168.56.105".parse().expect("ip"),
            SocketAddr::new(IpAddr::V4(ROUTERS[0].lan_addr), 179),
        )
        .expect("connect to r1")
    });
    rogue.establish(65100, Ipv4Addr::new(192, 168, 56, 105));
    let announce = |peer: &mut RawPeer, nlri: Vec<&str>| {
        peer.send(&Message::Update(Update {
            withdrawn: vec![],
            attrs: PathAttributes {
                origin: Some(Origin::Igp),
                as_path: Some(AsPath::sequence([65100])),
                next_hop: Some(Ipv4Addr::new(192, 168, 56, 105)),
                ..PathAttributes::default()
            },
            nlri: nlri.iter().map(|s| s.parse().expect("prefix")).collect(),
            treat_as_withdraw: None,
            discarded: vec![],
        }))
    };
    announce(
        &mut rogue,
        vec!["10.99.0.1/32", "10.10.10.77/32", "10.10.10.0/25"],
    );
    r1.wait_for("the accepted /32", Duration::from_secs(5), |r| {
        r.sh("ip route show proto hagw")
            .contains("10.10.10.77 via 192.168.56.105")
    });
    let routes = r1.sh("ip route show proto hagw");
    assert!(
        !routes.contains("10.99.0.1"),
        "outside every network: {routes}"
    );
    assert!(
        !routes.contains("10.10.10.0/25"),
        "not a host route: {routes}"
    );
    let many: Vec<String> = (100..170).map(|i| format!("10.10.10.{i}/32")).collect();
    announce(&mut rogue, many.iter().map(String::as_str).collect());
    let mut cease = None;
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(5) {
        match rogue.recv(Duration::from_millis(200)) {
            Some(Message::Notification(n)) => {
                cease = Some((n.code, n.subcode));
                break;
            }
            Some(_) => {}
            None => {}
        }
    }
    assert_eq!(
        cease,
        Some((6, 1)),
        "Cease, Maximum Number of Prefixes Reached"
    );
    wait_routes(r1, &ALL_VMS, Duration::from_secs(5));
    assert_eq!(
        run.routers[0].established(),
        2,
        "the hosts' sessions stay up"
    );
    drop(rogue);

    // A VM that disappears (stops answering) is withdrawn within the
    // neighbour timeout: 6.5 s by the bridge's timers, plus BGP.
    let t0 = Instant::now();
    lab.vm("vm2").sh("ip addr flush dev eth0");
    wait_routes(
        r1,
        &[ALL_VMS[0], ALL_VMS[2], ALL_VMS[3]],
        Duration::from_secs(10),
    );
    let gone = t0.elapsed();
    eprintln!("a silent VM was withdrawn after {gone:?}");
    assert!(gone < Duration::from_millis(7500), "{gone:?}");

    // Migration: vm3 from host2 to host1, pinged from vm4 (host2, net2).
    let vm3 = vnet::vm_spec("vm3").expect("vm3");
    let report = move_and_measure(&lab.hosts, &lab.vms, vm3, 0).expect("move");
    eprintln!("{report}");
    if report.answer_ms.is_none() {
        for (ns, cmd) in [
            (r1, "ip route show proto hagw"),
            (h1, "ip neigh show dev br_net1; ip route show table 101; bridge link; ip -d link show br_net1"),
            (lab.host("host2"), "ip neigh show dev br_net1; ip route show table 101; bridge link"),
            (lab.vm("vm3"), "ip neigh; ip link"),
            (lab.vm("vm4"), "ip neigh; ping -c1 -W1 10.10.10.12"),
        ] {
            eprintln!("--- {}: {cmd}\n{}", ns.name(), ns.try_sh(cmd).unwrap_or_else(|e| e));
        }
    }
    let answer = report.answer_ms.expect("pings answer after the move");
    assert!(answer < 1000.0, "{report}");
    wait_routes(
        r1,
        &[ALL_VMS[0], ("10.10.10.12", "192.168.56.103"), ALL_VMS[3]],
        Duration::from_secs(5),
    );

    // host2 restarts under graceful restart: pings to its VM (vm4) from vm1
    // lose nothing.
    let mut hosts = run.hosts;
    let pinger = Pinger::start(vm1.name(), VMS[3].addr).expect("ping");
    assert!(pinger
        .first_after(vnet::unix_now(), Duration::from_secs(5))
        .is_some());
    let before = vnet::unix_now();
    let h2 = hosts.pop().expect("host2");
    h2.proc.stop();
    drop(h2);
    let h2 = Hagw::start(
        lab.host("host2"),
        &host_config(&HOSTS[1], 1, &Options::default()),
    );
    r1.wait_for("host2's session back", Duration::from_secs(15), |_| {
        run.routers[0].peer_state("192.168.56.104").as_deref() == Some("Established")
    });
    std::thread::sleep(Duration::from_secs(1));
    let replies = pinger.replies();
    drop(pinger);
    let during: Vec<u32> = replies
        .iter()
        .filter(|r| r.at > before - 0.5)
        .map(|r| r.seq)
        .collect();
    let expected = during.last().copied().unwrap_or(0) - during.first().copied().unwrap_or(0) + 1;
    assert_eq!(
        during.len() as u32,
        expected,
        "pings lost while host2 restarted: {} of {expected}",
        expected - during.len() as u32
    );
    wait_routes(
        r1,
        &[ALL_VMS[0], ("10.10.10.12", "192.168.56.103"), ALL_VMS[3]],
        Duration::from_secs(10),
    );
    drop(h2);
}

#[test]
fn two_routers_share_the_hosts_and_one_dying_costs_a_detection_time() {
    let run = start(2);
    let lab = &run.lab;
    for r in ["r1", "r2"] {
        wait_routes(lab.router(r), &ALL_VMS, Duration::from_secs(15));
    }
    let h1 = lab.host("host1");
    let t101 = h1.sh("ip route show table 101");
    assert!(
        t101.contains("nexthop via 192.168.56.101") && t101.contains("nexthop via 192.168.56.102"),
        "ECMP through both routers: {t101}"
    );
    let vm1 = lab.vm("vm1");
    assert!(pings(vm1, "10.10.10.12"));
    assert!(pings(vm1, "203.0.113.1"));

    // r1 dies (its LAN link silently dead): BFD (50 ms x 3) takes it out of
    // the hosts' tables; pings through the fabric resume at once.
    let pinger = Pinger::start(vm1.name(), VMS[2].addr).expect("ping");
    assert!(pinger
        .first_after(vnet::unix_now(), Duration::from_secs(5))
        .is_some());
    let t0 = Instant::now();
    let cut = SilentCut::new(lab.router("r1"), vnet::LAN_IF);
    h1.wait_for("r1 out of table 101", Duration::from_secs(5), |h| {
        let t = h.sh("ip route show table 101");
        !t.contains("192.168.56.101") && t.contains("default via 192.168.56.102")
    });
    eprintln!("r1 left host1's table after {:?}", t0.elapsed());
    let after = vnet::unix_now();
    assert!(
        pinger.first_after(after, Duration::from_secs(3)).is_some(),
        "pings go through r2"
    );
    drop(pinger);
    assert!(pings(vm1, "10.10.20.13"));
    assert!(pings(lab.vm("vm4"), "203.0.113.1"));
    drop(cut);
    // r1 back: both routers again.
    h1.wait_for("r1 back in table 101", Duration::from_secs(15), |h| {
        h.sh("ip route show table 101")
            .contains("nexthop via 192.168.56.101")
    });
    drop(run.hosts);
    drop(run.routers);
}

#[test]
fn check_names_the_bad_keys_of_a_host() {
    hagw_testkit::require_root();
    let ns = Netns::new("vnck");
    let peer = Netns::new("vnck2");
    hagw_testkit::veth(&ns, "eth1", &peer, "eth1");
    hagw_testkit::addr(&ns, "eth1", "192.168.56.103/24");
    let path = format!("{}/hagw.toml", ns.dir().display());
    std::fs::write(
        &path,
        r#"
[[vnet]]
name = "net1"
bridge = "eth1"
address = "10.10.10.2/24"
router = "192.168.77.1"
table = 101
"#,
    )
    .expect("write");
    let out = ns.run(|| {
        std::process::Command::new(common::HAGW)
            .args(["check", "--config", &path])
            .output()
            .expect("hagw check")
    });
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("vnet[0].bridge: eth1 is a veth link, not a bridge"),
        "{text}"
    );
    assert!(
        text.contains("vnet[0].router: 192.168.77.1 is not reachable"),
        "{text}"
    );
}
