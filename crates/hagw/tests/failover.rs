//! Issue 6 scenarios: uplink-gated announcements and graceful restart, on the
//! seed-000 topology (host, r1, r2 on a switch; r1/r2 uplinks to an
//! "internet"), as `hagw lab` builds it ([`Seed000`]).

mod common;

use std::time::{Duration, Instant};

use common::Hagw;
use hagw_lab::seed000::RouterSpec;
use hagw_lab::Seed000;
use hagw_testkit::Netns;

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

/// Seed 000 with hagw on r1 and r2, each with `router_config(its address, extra)`.
fn lab_with_routers(extra: &'static str) -> Seed000<Hagw> {
    Seed000::with_routers(move |ns, r: &RouterSpec| {
        Hagw::start(ns, &router_config(&r.lan_addr.to_string(), extra))
    })
}

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
fn ping_while(host: &Netns, secs: u32, during: impl FnOnce()) -> (u32, u32) {
    let p = host.spawn(
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
    let probe = "[[health]]\nprobe = \"icmp\"\ntarget = \"203.0.113.1\"\ninterval_ms = 100\nfall = 3\nrise = 3\n";
    // r1 probes its uplink; r2 does not.
    let lab = Seed000::with_routers(|ns, r| {
        let config = router_config(&r.lan_addr.to_string(), "");
        match r.name {
            "r1" => Hagw::start(ns, &format!("{config}{probe}")),
            _ => Hagw::start(ns, &config),
        }
    });
    let host = Hagw::start(&lab.host, HOST_CONFIG);
    wait_hops(
        &lab.host,
        &["192.168.100.20", "192.168.100.21"],
        Duration::from_secs(20),
    );

    // r1's uplink dies (silently): r1 withdraws, the host keeps only r2.
    let cut = lab.cut_uplink("r1");
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
    let st = lab.daemon("r1").status();
    assert_eq!(st["health"][0]["state"], "down", "{st}");

    cut.restore();
    wait_hops(
        &lab.host,
        &["192.168.100.20", "192.168.100.21"],
        Duration::from_secs(5),
    );
}

#[test]
fn an_unreachable_probe_target_at_start_is_reported_not_fatal() {
    let lab = Seed000::build();
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
    let lab = lab_with_routers(GR);
    let r1_config = router_config("192.168.100.20", GR);
    let r1 = lab.daemon("r1");
    let host = Hagw::start(&lab.host, HOST_CONFIG);
    wait_hops(&lab.host, &BOTH, Duration::from_secs(20));

    let mut restarted = None;
    let (sent, received) = ping_while(&lab.host, 6, || {
        let (old, ns, config) = match which {
            Restart::Host => (&host, &lab.host, HOST_CONFIG),
            Restart::R1 => (r1, &lab.r1, r1_config.as_str()),
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
    let lab = lab_with_routers("");
    let _host = Hagw::start(&lab.host, HOST_CONFIG);
    wait_hops(
        &lab.host,
        &["192.168.100.20", "192.168.100.21"],
        Duration::from_secs(20),
    );
    lab.daemon("r1").proc.stop();
    // r1 sent a Cease: its next hop goes at once, the default never disappears.
    wait_hops(&lab.host, &["192.168.100.21"], Duration::from_secs(2));
}

#[test]
fn bfd_takes_a_silently_cut_router_out_before_the_hold_timer() {
    let bfd = "[bfd]\ninterval_ms = 10\nmultiplier = 3\n";
    let range_bfd = |id: &str| format!("{}bfd = true\n{bfd}", router_config(id, ""));
    let lab = Seed000::with_routers(|ns, r| Hagw::start(ns, &range_bfd(&r.lan_addr.to_string())));
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
    // r1's LAN link dies silently, as `hagw lab fail r1` cuts it.
    let _cut = lab.cut("r1");
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
    let lab = Seed000::build();
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
    let lab = lab_with_routers(GR);
    let r2 = lab.daemon("r2");
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
