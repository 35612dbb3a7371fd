//! Host role (issue 4): hagw peers with every router and keeps one multipath
//! default in the kernel. The seed-000 topology as `hagw lab` builds it
//! ([`Seed000`]), in namespaces each test makes and removes: a switch
//! namespace with a bridge (which also answers as 192.168.100.1, the "subnet
//! gateway" of the DHCP and static routes), the host (192.168.100.100/24) and
//! two routers (192.168.100.20 and .21), each on its `eth1`, the routers
//! running hagw or FRR.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::Hagw;
use hagw_lab::seed000::RouterSpec;
use hagw_lab::Seed000;
use hagw_testkit::{addr, veth, wait_until, Netns};

const R1: &str = "192.168.100.20";
const R2: &str = "192.168.100.21";

/// Seed 000 with hagw on both routers ([`hagw_router`]).
fn lan_with_hagw_routers() -> Seed000<Hagw> {
    Seed000::with_routers(hagw_router)
}

/// A hagw router: every host of 192.168.100.96/27 gets a default.
fn hagw_router(ns: &Netns, r: &RouterSpec) -> Hagw {
    let id = r.lan_addr;
    Hagw::start(
        ns,
        &format!(
            r#"
[bgp]
asn = 65000
router_id = "{id}"

[[bgp.dynamic]]
range = "192.168.100.96/27"
remote_asn = "external"
default_originate = true
hold_time = 3
"#
        ),
    )
}

/// The host's config: a neighbor per address, `[kernel]` as in the issue,
/// then `kernel_extra` (more `[kernel]` keys, then `[[kernel.static]]`s).
fn host_config(neighbors: &[&str], kernel_extra: &str) -> String {
    let mut c = String::from("[bgp]\nasn = 65100\nrouter_id = \"192.168.100.100\"\n");
    for n in neighbors {
        c.push_str(&format!(
            "\n[[bgp.neighbor]]\naddress = \"{n}\"\nremote_asn = 65000\nhold_time = 3\n"
        ));
    }
    c.push_str(
        "\n[kernel]\ninstall = true\nmultipath_hash = \"l4\"\nmaximum_paths = 8\nmetric = 20\n",
    );
    c.push_str(kernel_extra);
    c
}

/// `ip -j route show <what>` in `ns`.
fn routes(ns: &Netns, what: &str) -> Vec<serde_json::Value> {
    let out = ns.sh(&format!("ip -j route show {what}"));
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("ip -j route: {e}: {out}"))
}

fn is_hagw(r: &serde_json::Value) -> bool {
    r["protocol"] == "hagw" || r["protocol"] == "199" || r["protocol"] == 199
}

/// The gateways of a route from `ip -j route` (single or multipath).
fn gateways(r: &serde_json::Value) -> Vec<String> {
    let mut g: Vec<String> = match r["nexthops"].as_array() {
        Some(hops) => hops
            .iter()
            .filter_map(|h| h["gateway"].as_str().map(str::to_owned))
            .collect(),
        None => r["gateway"]
            .as_str()
            .map(str::to_owned)
            .into_iter()
            .collect(),
    };
    g.sort();
    g
}

/// hagw's default routes in the host's main table.
fn hagw_defaults(ns: &Netns) -> Vec<serde_json::Value> {
    routes(ns, "default").into_iter().filter(is_hagw).collect()
}

/// The gateways of hagw's default, when there is exactly one such route.
fn hagw_default_gateways(ns: &Netns) -> Option<Vec<String>> {
    match hagw_defaults(ns).as_slice() {
        [r] => Some(gateways(r)),
        _ => None,
    }
}

fn wait_default_via(ns: &Netns, want: &[&str], timeout: Duration) {
    let want: Vec<String> = want.iter().map(|s| (*s).to_owned()).collect();
    ns.wait_for(&format!("hagw's default via {want:?}"), timeout, |ns| {
        hagw_default_gateways(ns).as_ref() == Some(&want)
    });
}

fn sysctl(ns: &Netns, key: &str) -> String {
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    ns.sh(&format!("cat {path}")).trim().to_owned()
}

/// The entry of `prefix` in `hagw status --json`'s routes.
fn status_route(h: &Hagw, prefix: &str) -> Option<serde_json::Value> {
    h.status()["routes"]
        .as_array()?
        .iter()
        .find(|r| r["prefix"] == prefix)
        .cloned()
}

fn status_peer(h: &Hagw, address: &str) -> Option<serde_json::Value> {
    h.status()["peers"]
        .as_array()?
        .iter()
        .find(|p| p["address"] == address)
        .cloned()
}

/// Watches the host's IPv4 main table from inside its namespace, reading
/// /proc/thread-self/net/route about every millisecond (no process per
/// sample), and counts the samples without any default route.
struct DefaultWatcher {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<(u64, u64)>,
}

/// (has a default route, has the host's 192.168.100.0/24 on eth1) in a
/// /proc/net/route table.
fn scan(table: &str) -> (bool, bool) {
    let (mut default, mut lan) = (false, false);
    for l in table.lines().skip(1) {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() > 7 {
            default |= f[1] == "00000000" && f[7] == "00000000";
            lan |= f[0] == "eth1" && f[1] == "0064A8C0" && f[7] == "00FFFFFF";
        }
    }
    (default, lan)
}

impl DefaultWatcher {
    fn start(ns: &Netns) -> DefaultWatcher {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let handle = ns.spawn_thread(move || {
            let (mut samples, mut missing) = (0u64, 0u64);
            while !s.load(Ordering::Relaxed) {
                // thread-self: this thread's namespace, not the process's.
                let t = std::fs::read_to_string("/proc/thread-self/net/route")
                    .expect("read /proc/thread-self/net/route");
                let (default, lan) = scan(&t);
                assert!(lan, "the watcher reads the host's table:\n{t}");
                samples += 1;
                if !default {
                    missing += 1;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            (samples, missing)
        });
        let w = DefaultWatcher { stop, handle };
        // A few samples before the event under test.
        std::thread::sleep(Duration::from_millis(50));
        w
    }

    /// Stops the watcher; (samples, samples without a default).
    fn finish(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().expect("watcher thread")
    }
}

/// `ip monitor route` in `ns`, to show afterwards that no default was deleted.
fn monitor(ns: &Netns) -> hagw_testkit::Proc {
    let m = ns.spawn("ip", &["monitor", "route"]);
    // Let it subscribe before anything happens.
    std::thread::sleep(Duration::from_millis(100));
    m
}

/// Deletions of a default route in the main table (`ip monitor` names every
/// other table, e.g. connection pinning's per-router tables).
fn deleted_defaults(mon: &hagw_testkit::Proc) -> Vec<String> {
    mon.log()
        .lines()
        .filter(|l| l.starts_with("Deleted") && l.contains("default") && !l.contains(" table "))
        .map(str::to_owned)
        .collect()
}

/// Asserts the watched default never left the host's main table: no sample
/// without one, no `Deleted default` from `ip monitor`.
fn assert_default_never_missing(w: DefaultWatcher, mon: &hagw_testkit::Proc, what: &str) {
    let (samples, missing) = w.finish();
    assert!(
        samples > 50,
        "{what}: the watcher took only {samples} samples"
    );
    assert_eq!(
        missing, 0,
        "{what}: the default was missing in {missing} of {samples} samples"
    );
    let deleted = deleted_defaults(mon);
    assert!(
        deleted.is_empty(),
        "{what}: a default route was deleted: {deleted:?}\nip monitor:\n{}",
        mon.log()
    );
}

// ---------------------------------------------------------------------------

#[test]
fn host_with_two_hagw_routers_installs_one_l4_multipath_default() {
    let lan = lan_with_hagw_routers();
    // Namespace defaults, but make sure: hagw is what sets them.
    lan.host.sysctl("net.ipv4.fib_multipath_hash_policy", "0");
    lan.host.sysctl("net.ipv6.fib_multipath_hash_policy", "0");
    let host = Hagw::start(&lan.host, &host_config(&[R1, R2], ""));
    wait_default_via(&lan.host, &[R1, R2], Duration::from_secs(10));

    let defaults = routes(&lan.host, "default");
    assert_eq!(defaults.len(), 1, "one default route: {defaults:?}");
    let d = &defaults[0];
    assert!(is_hagw(d), "proto hagw (199): {d}");
    assert_eq!(d["metric"], 20, "{d}");
    assert_eq!(gateways(d), vec![R1, R2], "{d}");
    for key in [
        "net.ipv4.fib_multipath_hash_policy",
        "net.ipv6.fib_multipath_hash_policy",
    ] {
        assert_eq!(sysctl(&lan.host, key), "1", "{key}");
    }

    let st = status_route(&host, "0.0.0.0/0").expect("0.0.0.0/0 in hagw status");
    let mut hops: Vec<String> = st["nexthops"]
        .as_array()
        .expect("nexthops")
        .iter()
        .filter_map(|h| h.as_str().map(str::to_owned))
        .collect();
    hops.sort();
    assert_eq!(hops, vec![R1, R2], "{st}");
    assert_eq!(st["installed"], true, "{st}");
    assert!(st["error"].is_null(), "{st}");
    for r in [R1, R2] {
        assert_eq!(host.peer_state(r).as_deref(), Some("Established"), "{r}");
    }
    // Connection pinning (on by default) shows both routers, each with its own table.
    lan.host
        .wait_for("both routers pinned", Duration::from_secs(5), |_| {
            host.status()["pinning"]
                .as_array()
                .is_some_and(|a| a.len() == 2 && a.iter().all(|p| p["active"] == true))
        });
}

#[test]
fn frr_router_withdrawing_leaves_one_next_hop_and_the_default_never_goes() {
    let lan = Seed000::with_frr();
    let f1 = lan.daemon("r1");
    let host = Hagw::start(&lan.host, &host_config(&[R1, R2], ""));
    wait_default_via(&lan.host, &[R1, R2], Duration::from_secs(20));
    assert_eq!(host.established(), 2);

    let mon = monitor(&lan.host);
    let w = DefaultWatcher::start(&lan.host);
    f1.vtysh(
        "configure terminal\nrouter bgp 65000\naddress-family ipv4 unicast\n\
         no neighbor fabric default-originate",
    );
    wait_default_via(&lan.host, &[R2], Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(100));
    assert_default_never_missing(w, &mon, "FRR r1 withdrew");
    assert_eq!(
        host.peer_state(R1).as_deref(),
        Some("Established"),
        "a withdrawal keeps the session"
    );
    let st = status_route(&host, "0.0.0.0/0").expect("0.0.0.0/0 in hagw status");
    assert_eq!(st["nexthops"], serde_json::json!([R2]), "{st}");
}

#[test]
fn stopping_a_hagw_router_leaves_one_next_hop_and_the_default_never_goes() {
    let lan = lan_with_hagw_routers();
    let r1 = lan.daemon("r1");
    let host = Hagw::start(&lan.host, &host_config(&[R1, R2], ""));
    wait_default_via(&lan.host, &[R1, R2], Duration::from_secs(10));

    let mon = monitor(&lan.host);
    let w = DefaultWatcher::start(&lan.host);
    let t0 = Instant::now();
    r1.proc.stop(); // SIGTERM: r1 sends Cease
    wait_default_via(&lan.host, &[R2], Duration::from_secs(10));
    let took = t0.elapsed();
    std::thread::sleep(Duration::from_millis(100));
    assert_default_never_missing(w, &mon, "r1's hagw stopped");
    // The Cease ends the session at once, not the 3 s hold timer.
    assert!(
        took < Duration::from_secs(2),
        "r1's next hop left after {took:?}"
    );
    assert_ne!(host.peer_state(R1).as_deref(), Some("Established"));
    let err = status_peer(&host, R1).expect("peer r1")["last_error"].clone();
    assert!(
        err.as_str().is_some_and(|e| !e.is_empty()),
        "r1's last_error says why: {err}"
    );
}

#[test]
fn a_dhcp_default_is_outranked() {
    let lan = lan_with_hagw_routers();
    lan.host
        .sh("ip route add default via 192.168.100.1 proto dhcp metric 1024");
    let host = Hagw::start(&lan.host, &host_config(&[R1, R2], ""));
    wait_default_via(&lan.host, &[R1, R2], Duration::from_secs(10));

    let dhcp = lan.host.sh("ip route show default proto dhcp");
    assert!(
        dhcp.contains("via 192.168.100.1"),
        "outrank leaves the DHCP default: {dhcp}"
    );
    let get = lan.host.sh("ip route get 203.0.113.1");
    assert!(
        get.contains(&format!("via {R1}")) || get.contains(&format!("via {R2}")),
        "hagw's next hop wins: {get}"
    );
    assert!(host.proc.is_running());
}

#[test]
fn dhcp_default_remove_deletes_it_and_again_when_re_added() {
    let lan = lan_with_hagw_routers();
    let dhcp = "ip route add default via 192.168.100.1 proto dhcp metric 1024";
    lan.host.sh(dhcp);
    let host = Hagw::start(
        &lan.host,
        &host_config(&[R1, R2], "dhcp_default = \"remove\"\n"),
    );
    let no_dhcp = |ns: &Netns| ns.sh("ip route show default proto dhcp").trim().is_empty();
    lan.host
        .wait_for("the DHCP default removed", Duration::from_secs(2), no_dhcp);
    wait_default_via(&lan.host, &[R1, R2], Duration::from_secs(10));

    lan.host.sh(dhcp);
    lan.host.wait_for(
        "the re-added DHCP default removed",
        Duration::from_secs(1),
        no_dhcp,
    );
    let get = lan.host.sh("ip route get 203.0.113.1");
    assert!(
        get.contains(&format!("via {R1}")) || get.contains(&format!("via {R2}")),
        "{get}"
    );
    assert!(
        host.proc.log().contains("removed foreign default route"),
        "{}",
        host.proc.log()
    );
}

/// With the DHCP default removed, policy routing finds the primary NIC by
/// hagw's own BGP default: the secondary NIC still gets its table and rule.
#[test]
fn dhcp_default_remove_with_policy_routing_finds_the_primary_by_the_bgp_default() {
    let lan = lan_with_hagw_routers();
    veth(&lan.host, "eth2", &lan.r2, "eth9");
    addr(&lan.host, "eth2", "10.9.0.5/24");
    addr(&lan.r2, "eth9", "10.9.0.1/24");
    lan.host
        .sh("ip route add default via 192.168.100.1 proto dhcp metric 1024");
    let host = Hagw::start(
        &lan.host,
        &host_config(&[R1, R2], "dhcp_default = \"remove\"\n\n[policy_routing]\n"),
    );
    wait_default_via(&lan.host, &[R1, R2], Duration::from_secs(10));
    lan.host
        .wait_for("eth2's source rule", Duration::from_secs(5), |ns| {
            ns.sh("ip rule show").contains("from 10.9.0.5 lookup")
        });
    assert!(
        lan.host
            .sh("ip route show default proto dhcp")
            .trim()
            .is_empty(),
        "the DHCP default is back"
    );
    let log = host.proc.log();
    assert!(log.contains("primary=eth1"), "{log}");
    assert!(!log.contains("policy routing paused"), "{log}");
}

#[test]
fn a_static_route_is_installed_and_comes_back_after_a_hand_delete() {
    let lan = Seed000::build();
    let _host = Hagw::start(
        &lan.host,
        "[kernel]\ninstall = true\nmetric = 20\n\n[[kernel.static]]\n\
         prefix = \"10.0.0.0/16\"\nvia = \"192.168.100.1\"\n",
    );
    let installed = |ns: &Netns| {
        routes(ns, "10.0.0.0/16")
            .iter()
            .any(|r| is_hagw(r) && gateways(r) == ["192.168.100.1"] && r["metric"] == 20)
    };
    lan.host
        .wait_for("the static route", Duration::from_secs(2), installed);
    lan.host.sh("ip route del 10.0.0.0/16");
    let t0 = Instant::now();
    lan.host
        .wait_for("the static route back", Duration::from_secs(1), installed);
    eprintln!("static route back after {:?}", t0.elapsed());
}

#[test]
fn stale_hagw_routes_are_removed_at_start_and_others_are_not() {
    let lan = Seed000::build();
    lan.host.sh(
        "ip route add 198.18.0.0/24 via 192.168.100.1 proto 199 metric 20 && \
         ip route add 198.18.1.0/24 via 192.168.100.1 proto 199 metric 500 && \
         ip route add default via 192.168.100.1 proto 199 metric 20 && \
         ip route add 198.18.2.0/24 via 192.168.100.1 proto static",
    );
    assert_eq!(
        routes(&lan.host, "proto 199").len(),
        3,
        "{}",
        lan.host.sh("ip route")
    );
    let _host = Hagw::start(&lan.host, &host_config(&[], ""));
    // FibSync cleans up before the control socket opens.
    let left = routes(&lan.host, "proto 199");
    assert!(left.is_empty(), "stale hagw routes left: {left:?}");
    let stat = routes(&lan.host, "198.18.2.0/24");
    assert_eq!(stat.len(), 1, "{stat:?}");
    assert_eq!(stat[0]["protocol"], "static", "{stat:?}");
}

#[test]
fn a_hand_deleted_hagw_default_comes_back() {
    let lan = lan_with_hagw_routers();
    let _host = Hagw::start(&lan.host, &host_config(&[R1, R2], ""));
    wait_default_via(&lan.host, &[R1, R2], Duration::from_secs(10));
    let mon = monitor(&lan.host);
    // `ip route del` fails unless it deleted hagw's default.
    lan.host.sh("ip route del default proto 199 metric 20");
    let t0 = Instant::now();
    wait_default_via(&lan.host, &[R1, R2], Duration::from_secs(1));
    eprintln!("default back after {:?}", t0.elapsed());
    // The same check the never-missing scenarios rely on sees a deletion.
    wait_until(
        "ip monitor shows the deletion",
        Duration::from_secs(1),
        || !deleted_defaults(&mon).is_empty(),
    );
}

#[test]
fn an_unreachable_neighbor_spares_the_others_and_a_dead_link_shows() {
    let lan = lan_with_hagw_routers();
    let dead = "192.168.100.50";
    let host = Hagw::start(&lan.host, &host_config(&[R1, R2, dead], ""));
    wait_default_via(&lan.host, &[R1, R2], Duration::from_secs(10));
    for r in [R1, R2] {
        assert_eq!(host.peer_state(r).as_deref(), Some("Established"), "{r}");
    }

    // Nothing answers ARP for .50: the connect fails (no route to host) or
    // times out; either way status says so.
    wait_until(
        "a last_error for the unreachable neighbor",
        Duration::from_secs(12),
        || {
            status_peer(&host, dead)
                .and_then(|p| p["last_error"].as_str().map(str::to_owned))
                .is_some()
        },
    );
    let p = status_peer(&host, dead).expect("peer .50");
    assert_ne!(p["state"], "Established", "{p}");
    let err = p["last_error"].as_str().unwrap_or_default().to_lowercase();
    assert!(
        err.contains("connect to 192.168.100.50")
            && (err.contains("no route to host")
                || err.contains("unreachable")
                || err.contains("timed out")),
        "last_error says why: {p}"
    );
    assert_eq!(
        hagw_default_gateways(&lan.host).unwrap_or_default(),
        [R1, R2]
    );

    // r2's link goes down: its session dies by the hold timer (3 s), the
    // default keeps r1, and status shows r2 down with the reason.
    lan.r2.sh("ip link set eth1 down");
    wait_default_via(&lan.host, &[R1], Duration::from_secs(6));
    wait_until("r2 not Established", Duration::from_secs(2), || {
        host.peer_state(R2).as_deref() != Some("Established")
    });
    let p = status_peer(&host, R2).expect("peer r2");
    let err = p["last_error"].as_str().unwrap_or_default().to_lowercase();
    assert!(err.contains("hold"), "r2's last_error says why: {p}");
    assert_eq!(host.peer_state(R1).as_deref(), Some("Established"));
    let st = status_route(&host, "0.0.0.0/0").expect("0.0.0.0/0 in hagw status");
    assert_eq!(st["nexthops"], serde_json::json!([R1]), "{st}");
}
