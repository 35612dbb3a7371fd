//! Issue 6 scenarios: uplink-gated announcements and graceful restart, on the
//! seed-000 topology (host, r1, r2 on a switch; r1/r2 uplinks to an "internet").

mod common;

use std::time::{Duration, Instant};

use common::Hagw;
use hagw_testkit::{addr, bridge, veth, Netns};

struct Lab {
    _sw: Netns,
    host: Netns,
    r1: Netns,
    r2: Netns,
    inet: Netns,
}

fn lab() -> Lab {
    hagw_testkit::require_root();
    let sw = Netns::new("sw");
    let host = Netns::new("host");
    let r1 = Netns::new("r1");
    let r2 = Netns::new("r2");
    let inet = Netns::new("inet");
    veth(&host, "eth1", &sw, "p0");
    veth(&r1, "eth1", &sw, "p1");
    veth(&r2, "eth1", &sw, "p2");
    bridge(&sw, "br0", &["p0", "p1", "p2"]);
    addr(&host, "eth1", "192.168.100.100/24");
    addr(&r1, "eth1", "192.168.100.20/24");
    addr(&r2, "eth1", "192.168.100.21/24");
    veth(&r1, "wan", &inet, "i1");
    veth(&r2, "wan", &inet, "i2");
    addr(&r1, "wan", "198.51.100.1/30");
    addr(&inet, "i1", "198.51.100.2/30");
    addr(&r2, "wan", "198.51.100.5/30");
    addr(&inet, "i2", "198.51.100.6/30");
    inet.sh("ip addr add 203.0.113.1/32 dev lo && ip route add 192.168.100.0/24 nexthop via 198.51.100.1 nexthop via 198.51.100.5");
    r1.sh("ip route add default via 198.51.100.2");
    r2.sh("ip route add default via 198.51.100.6");
    r1.sysctl("net.ipv4.ip_forward", "1");
    r2.sysctl("net.ipv4.ip_forward", "1");
    Lab {
        _sw: sw,
        host,
        r1,
        r2,
        inet,
    }
}

fn router_config(id: &str, extra: &str) -> String {
    format!(
        r#"
[bgp]
asn = 65000
router_id = "{id}"
listen = ["{id}"]
{extra}
[[bgp.dynamic]]
range = "192.168.100.96/27"
remote_asn = "external"
default_originate = true
hold_time = 3
"#
    )
}

const HOST_CONFIG: &str = r#"
[bgp]
asn = 65100
router_id = "192.168.100.100"
[bgp.graceful_restart]
enabled = true
restart_time = 30
[[bgp.neighbor]]
address = "192.168.100.20"
remote_asn = 65000
hold_time = 3
[[bgp.neighbor]]
address = "192.168.100.21"
remote_asn = 65000
hold_time = 3
[kernel]
install = true
pin_connections = false
"#;

const GR: &str = "[bgp.graceful_restart]\nenabled = true\nrestart_time = 30\n";

fn default_route(ns: &Netns) -> String {
    ns.sh("ip route show default")
}

fn wait_hops(ns: &Netns, hops: &[&str], timeout: Duration) {
    ns.wait_for(&format!("default via {hops:?}"), timeout, |ns| {
        let r = default_route(ns);
        hops.iter().all(|h| r.contains(&format!("via {h}")))
            && r.matches("via").count() == hops.len()
    });
}

/// Runs `ping -i 0.002` from the host for `secs` while `during` runs; returns
/// (sent, received).
fn ping_while(lab: &Lab, secs: u32, during: impl FnOnce()) -> (u32, u32) {
    let p = lab.host.spawn(
        "ping",
        &[
            "-n",
            "-q",
            "-i",
            "0.002",
            "-w",
            &secs.to_string(),
            "203.0.113.1",
        ],
    );
    std::thread::sleep(Duration::from_millis(300));
    during();
    let deadline = Instant::now() + Duration::from_secs(u64::from(secs) + 5);
    while p.is_running() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = p.log();
    let line = log
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .unwrap_or_else(|| panic!("no ping summary:\n{log}"));
    let nums: Vec<u32> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|w| w.parse().ok())
        .collect();
    (nums[0], nums[1])
}

#[test]
fn the_uplink_probe_withdraws_and_restores_the_default() {
    let lab = lab();
    let probe = "[[health]]\nprobe = \"icmp\"\ntarget = \"203.0.113.1\"\ninterval_ms = 100\nfall = 3\nrise = 3\n";
    let _r1 = Hagw::start(
        &lab.r1,
        &format!("{}{probe}", router_config("192.168.100.20", "")),
    );
    let _r2 = Hagw::start(&lab.r2, &router_config("192.168.100.21", ""));
    let host = Hagw::start(&lab.host, HOST_CONFIG);
    wait_hops(
        &lab.host,
        &["192.168.100.20", "192.168.100.21"],
        Duration::from_secs(20),
    );

    // r1's uplink dies (silently): r1 withdraws, the host keeps only r2.
    lab.inet.sh("nft add table inet cut && nft add chain inet cut c '{ type filter hook input priority 0; }' && nft add rule inet cut c iifname i1 drop");
    let t = Instant::now();
    wait_hops(&lab.host, &["192.168.100.21"], Duration::from_secs(5));
    eprintln!(
        "withdrawn {} ms after the uplink cut",
        t.elapsed().as_millis()
    );
    assert_eq!(
        host.peer_state("192.168.100.20").as_deref(),
        Some("Established"),
        "the session stays up"
    );
    let st = _r1.status();
    assert_eq!(st["health"][0]["state"], "down", "{st}");

    lab.inet.sh("nft delete table inet cut");
    wait_hops(
        &lab.host,
        &["192.168.100.20", "192.168.100.21"],
        Duration::from_secs(5),
    );
}

#[test]
fn an_unreachable_probe_target_at_start_is_reported_not_fatal() {
    let lab = lab();
    let probe =
        "[[health]]\nprobe = \"tcp\"\ntarget = \"203.0.113.99\"\nport = 443\ninterval_ms = 200\n";
    let r1 = Hagw::start(
        &lab.r1,
        &format!("{}{probe}", router_config("192.168.100.20", "")),
    );
    let _host = Hagw::start(&lab.host, HOST_CONFIG);
    lab.r1
        .wait_for("probe reported down", Duration::from_secs(5), |_| {
            r1.status()["health"][0]["state"] == "down"
        });
    let st = r1.status();
    assert!(st["health"][0]["last_error"].as_str().is_some(), "{st}");
    assert!(r1.proc.is_running());
    // Established, but no default for the host while the uplink is down.
    lab.host
        .wait_for("session up", Duration::from_secs(10), |_| {
            _host.peer_state("192.168.100.20").as_deref() == Some("Established")
        });
    assert!(!default_route(&lab.host).contains("192.168.100.20"));
}

const BOTH: [&str; 2] = ["192.168.100.20", "192.168.100.21"];

/// Which hagw restarts while the stream runs.
#[derive(Clone, Copy)]
enum Restart {
    Host,
    R1,
}

/// Host and routers with graceful restart; `ping -i 0.002` through them while
/// one hagw stops and starts again: no packet may be lost, and the sessions
/// and both next hops come back.
fn graceful_restart_loses_no_packet(which: Restart) {
    let lab = lab();
    let r1_config = router_config("192.168.100.20", GR);
    let r1 = Hagw::start(&lab.r1, &r1_config);
    let _r2 = Hagw::start(&lab.r2, &router_config("192.168.100.21", GR));
    let host = Hagw::start(&lab.host, HOST_CONFIG);
    wait_hops(&lab.host, &BOTH, Duration::from_secs(20));

    let mut restarted = None;
    let (sent, received) = ping_while(&lab, 6, || {
        let (old, ns, config) = match which {
            Restart::Host => (&host, &lab.host, HOST_CONFIG),
            Restart::R1 => (&r1, &lab.r1, r1_config.as_str()),
        };
        old.proc.stop();
        // The restarting host keeps its kernel routes; a helper host keeps
        // the restarting router's next hop.
        std::thread::sleep(Duration::from_millis(300));
        assert!(
            default_route(&lab.host).contains("via 192.168.100.20"),
            "the default keeps r1 while hagw is away"
        );
        restarted = Some(Hagw::start(ns, config));
    });
    eprintln!("restart: {sent} sent, {received} received");
    assert!(sent > 1000, "the stream ran: {sent}");
    assert_eq!(sent, received, "no packet lost across the restart");
    let back = restarted.expect("restarted");
    let host_now = match which {
        Restart::Host => &back,
        Restart::R1 => &host,
    };
    lab.host
        .wait_for("both sessions back", Duration::from_secs(15), |_| {
            BOTH.iter()
                .all(|r| host_now.peer_state(r).as_deref() == Some("Established"))
        });
    wait_hops(&lab.host, &BOTH, Duration::from_secs(5));
}

#[test]
fn a_host_restart_with_graceful_restart_loses_no_packet() {
    graceful_restart_loses_no_packet(Restart::Host);
}

#[test]
fn a_router_restart_with_graceful_restart_loses_no_packet() {
    graceful_restart_loses_no_packet(Restart::R1);
}

#[test]
fn without_graceful_restart_a_stopped_router_is_withdrawn_at_once() {
    let lab = lab();
    let r1 = Hagw::start(&lab.r1, &router_config("192.168.100.20", ""));
    let _r2 = Hagw::start(&lab.r2, &router_config("192.168.100.21", ""));
    let _host = Hagw::start(&lab.host, HOST_CONFIG);
    wait_hops(
        &lab.host,
        &["192.168.100.20", "192.168.100.21"],
        Duration::from_secs(20),
    );
    r1.proc.stop();
    // r1 sent a Cease: its next hop goes at once, the default never disappears.
    wait_hops(&lab.host, &["192.168.100.21"], Duration::from_secs(2));
}

#[test]
fn bfd_takes_a_silently_cut_router_out_before_the_hold_timer() {
    let lab = lab();
    let bfd = "[bfd]\ninterval_ms = 10\nmultiplier = 3\n";
    let range_bfd = |id: &str| format!("{}bfd = true\n{bfd}", router_config(id, ""));
    let _r1 = Hagw::start(&lab.r1, &range_bfd("192.168.100.20"));
    let _r2 = Hagw::start(&lab.r2, &range_bfd("192.168.100.21"));
    let host_cfg = HOST_CONFIG.replace("hold_time = 3\n", "hold_time = 30\nbfd = true\n") + bfd;
    let host = Hagw::start(&lab.host, &host_cfg);
    wait_hops(
        &lab.host,
        &["192.168.100.20", "192.168.100.21"],
        Duration::from_secs(20),
    );
    // Let BFD come up (slow start at 1 s, then a Poll to 10 ms).
    std::thread::sleep(Duration::from_secs(3));
    let st = host.status();
    let up = st["bfd"]
        .as_array()
        .map_or(0, |a| a.iter().filter(|b| b["state"] == "Up").count());
    assert_eq!(up, 2, "both BFD sessions Up in hagw status: {st}");
    assert_eq!(st["bfd"][0]["detection_ms"], 30.0, "{st}");
    // SCHED_FIFO where the machine allows it (one CPU, or a cgroup without
    // real-time runtime, says why not).
    let sched = st["bfd_thread"].as_str().unwrap_or_default();
    eprintln!("BFD thread: {sched}");
    assert!(
        sched == "SCHED_FIFO 10" || sched.starts_with("normal ("),
        "{st}"
    );
    let t = Instant::now();
    lab.r1.sh("nft add table inet cut && nft add chain inet cut i '{ type filter hook input priority -300; }' && nft add chain inet cut o '{ type filter hook output priority -300; }' && nft add rule inet cut i iifname eth1 drop && nft add rule inet cut o oifname eth1 drop");
    wait_hops(&lab.host, &["192.168.100.21"], Duration::from_secs(5));
    let ms = t.elapsed().as_millis();
    eprintln!("BFD 10 ms x 3: r1 left the default after {ms} ms");
    assert!(
        ms < 1000,
        "BFD, not the 30 s hold timer, took r1 out: {ms} ms"
    );
    assert!(host.proc.log().contains("BFD Down"), "{}", host.proc.log());
}

#[test]
fn an_unreachable_neighbor_does_not_hold_a_restart_deferral() {
    let lab = lab();
    // r2 is gone: its link is down, so the host's connects find no route.
    lab.r2.sh("ip link set eth1 down");
    let _r1 = Hagw::start(&lab.r1, &router_config("192.168.100.20", GR));
    let host = Hagw::start(&lab.host, HOST_CONFIG);
    wait_hops(&lab.host, &["192.168.100.20"], Duration::from_secs(20));
    host.proc.stop();
    let t = Instant::now();
    let again = Hagw::start(&lab.host, HOST_CONFIG);
    lab.host
        .wait_for("deferral over", Duration::from_secs(10), |_| {
            again.proc.log().contains("selection deferral over")
        });
    eprintln!(
        "deferral ended {} ms after the restart",
        t.elapsed().as_millis()
    );
    assert!(
        again.proc.log().contains("not waiting for this neighbor"),
        "{}",
        again.proc.log()
    );
    wait_hops(&lab.host, &["192.168.100.20"], Duration::from_secs(5));
}

#[test]
fn a_neighbor_whose_bgp_is_restarting_holds_the_restart_deferral() {
    let lab = lab();
    let _r1 = Hagw::start(&lab.r1, &router_config("192.168.100.20", GR));
    let r2 = Hagw::start(&lab.r2, &router_config("192.168.100.21", GR));
    let host = Hagw::start(&lab.host, HOST_CONFIG);
    wait_hops(
        &lab.host,
        &["192.168.100.20", "192.168.100.21"],
        Duration::from_secs(20),
    );
    // r2's daemon stops (its kernel keeps forwarding) and the host restarts
    // meanwhile: r2 refuses the host's connections.
    r2.proc.stop();
    host.proc.stop();
    let again = Hagw::start(&lab.host, HOST_CONFIG);
    std::thread::sleep(Duration::from_secs(3));
    let log = again.proc.log();
    assert!(
        !log.contains("selection deferral over"),
        "a refusing neighbor ended the deferral:\n{log}"
    );
    let r = default_route(&lab.host);
    assert!(
        r.contains("via 192.168.100.20") && r.contains("via 192.168.100.21"),
        "the previous run's routes were not kept: {r}"
    );
    let _r2 = Hagw::start(&lab.r2, &router_config("192.168.100.21", GR));
    lab.host
        .wait_for("deferral over", Duration::from_secs(15), |_| {
            again.proc.log().contains("selection deferral over")
        });
    wait_hops(
        &lab.host,
        &["192.168.100.20", "192.168.100.21"],
        Duration::from_secs(5),
    );
}
