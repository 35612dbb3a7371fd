//! Multi-NIC source policy routing (issue 5) in namespaces: a "VPC" whose
//! bridge drops frames with a source IP the port does not own (as AWS does),
//! an instance with two NICs in one subnet, and a remote client behind the
//! VPC's gateway.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::{Hagw, HAGW};
use hagw_testkit::{addr, bridge, veth, Netns};

const PORT: u16 = 7070;
/// Convergence promised after an event.
const CONVERGE: Duration = Duration::from_secs(1);

/// Only `[policy_routing]`: no [bgp], no [kernel]. eth3 (hot-plugged later)
/// gets a gateway outside its subnet, to see one interface in error while
/// the others keep working.
const POLICY_ONLY: &str = r#"
[policy_routing]

[[policy_routing.gateway]]
interface = "eth3"
ipv4 = "192.168.77.1"
"#;

struct Lab {
    vpc: Netns,
    remote: Netns,
    inst: Netns,
}

fn no_dad(ns: &Netns) {
    ns.sysctl("net.ipv6.conf.default.accept_dad", "0");
    ns.sysctl("net.ipv6.conf.all.accept_dad", "0");
}

/// The VPC (bridge br0 with anti-spoofing, gateway 10.0.0.1 / fe80::1,
/// routing to the remote's 172.16.0.0/24 and fd00:16::/64), the instance
/// (eth0 10.0.0.129 primary, eth1 10.0.0.204) and the remote (172.16.0.2).
fn lab() -> Lab {
    hagw_testkit::require_root();
    let vpc = Netns::new("vpc");
    let remote = Netns::new("remote");
    let inst = Netns::new("inst");
    for ns in [&vpc, &remote, &inst] {
        no_dad(ns);
    }
    veth(&vpc, "p0", &inst, "eth0");
    veth(&vpc, "p1", &inst, "eth1");
    veth(&vpc, "vr", &remote, "r0");
    bridge(&vpc, "br0", &["p0", "p1"]);
    addr(&vpc, "br0", "10.0.0.1/24");
    addr(&vpc, "br0", "fd00:10::1/64");
    addr(&vpc, "br0", "fe80::1/64");
    addr(&vpc, "vr", "172.16.0.1/24");
    addr(&vpc, "vr", "fd00:16::1/64");
    vpc.sysctl("net.ipv4.ip_forward", "1");
    vpc.sysctl("net.ipv6.conf.all.forwarding", "1");
    // AWS-like anti-spoofing: a port may only send from the address it owns.
    vpc.sh("nft -f - <<'EOF'
table bridge antispoof {
  chain pre {
    type filter hook prerouting priority 0; policy accept;
    iifname \"p0\" ip saddr != 10.0.0.129 counter drop
    iifname \"p0\" ip6 saddr != { fd00:10::129, fe80::/10, :: } counter drop
    iifname \"p1\" ip saddr != 10.0.0.204 counter drop
    iifname \"p1\" ip6 saddr != { fd00:10::204, fe80::/10, :: } counter drop
  }
}
EOF");
    addr(&remote, "r0", "172.16.0.2/24");
    addr(&remote, "r0", "fd00:16::2/64");
    remote.sh("ip route add default via 172.16.0.1 && ip -6 route add default via fd00:16::1");
    // Each NIC answers ARP only for its own addresses (no ARP flux).
    inst.sysctl("net.ipv4.conf.all.arp_ignore", "1");
    addr(&inst, "eth0", "10.0.0.129/24");
    addr(&inst, "eth0", "fd00:10::129/64");
    addr(&inst, "eth1", "10.0.0.204/24");
    addr(&inst, "eth1", "fd00:10::204/64");
    // As in the seed: DHCP defaults on both NICs, the primary's best; the
    // IPv6 defaults as router advertisements would install them.
    inst.sh("ip route add default via 10.0.0.1 dev eth0 && \
         ip route add default via 10.0.0.1 dev eth1 metric 300 && \
         ip -6 route add default via fe80::1 dev eth0 proto ra metric 1024 && \
         ip -6 route add default via fe80::1 dev eth1 proto ra metric 1100");
    Lab { vpc, remote, inst }
}

/// A TCP server in a namespace answering "ok" to every connection, on
/// [::]:PORT (IPv4 too).
struct Server {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    fn start(ns: &Netns) -> Server {
        let listener = ns.run(|| TcpListener::bind(("::", PORT)).expect("bind [::]:PORT"));
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut c, _)) => {
                        let _ = c.set_nonblocking(false);
                        let _ = c.write_all(b"ok");
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Server {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Whether the remote client gets "ok" from `dst` within `timeout`.
fn connects(remote: &Netns, dst: &str, timeout: Duration) -> bool {
    let to: SocketAddr = SocketAddr::new(dst.parse().expect("ip"), PORT);
    remote.run(|| {
        let Ok(mut s) = TcpStream::connect_timeout(&to, timeout) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(timeout));
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
        buf == b"ok"
    })
}

fn ifindex(ns: &Netns, ifname: &str) -> u32 {
    ns.sh(&format!("cat /sys/class/net/{ifname}/ifindex"))
        .trim()
        .parse()
        .expect("ifindex")
}

/// `ip rule` lines of both families.
fn rules(ns: &Netns) -> String {
    ns.sh("ip -4 rule show; ip -6 rule show")
}

fn has_rule(ns: &Netns, from: &str, table: u32) -> bool {
    rules(ns).lines().any(|l| {
        l.starts_with(&format!("{table}:"))
            && l.contains(&format!("from {from} lookup {table}"))
            && (l.contains("proto hagw") || l.contains("proto 199"))
    })
}

fn table(ns: &Netns, table: u32) -> String {
    // `ip -6` fails on a table without IPv6 routes.
    ns.sh(&format!(
        "{{ ip -4 route show table {table}; ip -6 route show table {table}; }} 2>/dev/null || true"
    ))
}

/// Waits until `check` holds; returns how long it took. Panics after `limit`.
fn converge(
    ns: &Netns,
    what: &str,
    limit: Duration,
    mut check: impl FnMut(&Netns) -> bool,
) -> Duration {
    let t0 = Instant::now();
    ns.wait_for(what, limit, |ns| check(ns));
    t0.elapsed()
}

/// Packets the VPC dropped from eth0's port for a wrong source address.
fn spoof_drops(vpc: &Netns) -> u64 {
    vpc.sh("nft list chain bridge antispoof pre")
        .lines()
        .filter(|l| l.contains("iifname \"p0\""))
        .filter_map(|l| {
            l.split("counter packets ")
                .nth(1)?
                .split(' ')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

fn foreign_present(ns: &Netns) -> bool {
    ns.sh("ip rule show").contains("from 192.0.2.7 lookup 500")
        && ns
            .sh("ip route show table 500")
            .contains("unreachable 198.51.100.0/24")
}

fn policy_iface<'a>(st: &'a serde_json::Value, name: &str) -> Option<&'a serde_json::Value> {
    st["policy_routing"]["interfaces"]
        .as_array()?
        .iter()
        .find(|i| i["name"] == name)
}

#[test]
fn secondary_nic_replies_leave_by_their_own_nic() {
    let Lab { vpc, remote, inst } = lab();
    let _server = Server::start(&inst);
    let t1 = 10_000 + ifindex(&inst, "eth1");

    // Something hagw did not make, and must never touch.
    inst.sh("ip rule add from 192.0.2.7 lookup 500 && \
         ip route add unreachable 198.51.100.0/24 table 500");
    // Leftovers of an earlier hagw run: a stale rule and a stale route of
    // hagw's protocol, to be removed at start.
    inst.sh(&format!(
        "ip rule add from 10.0.0.99 lookup {t1} priority {t1} proto 199 && \
         ip route add 203.0.113.0/24 dev eth1 table {t1} proto 199"
    ));

    // Without hagw: the primary works, the secondary's replies leave by eth0
    // and the VPC drops them.
    let short = Duration::from_millis(1200);
    assert!(connects(&remote, "10.0.0.129", short), "primary IPv4");
    assert!(connects(&remote, "fd00:10::129", short), "primary IPv6");
    assert!(
        !connects(&remote, "10.0.0.204", short),
        "secondary IPv4 without hagw"
    );
    assert!(
        !connects(&remote, "fd00:10::204", short),
        "secondary IPv6 without hagw"
    );
    // ...dropped by the anti-spoofing of eth0's port (p0), not lost otherwise.
    assert!(spoof_drops(&vpc) > 0, "{}", vpc.sh("nft list ruleset"));

    let hagw = Hagw::start(&inst, POLICY_ONLY);
    converge(&inst, "eth1's rules", Duration::from_secs(3), |ns| {
        has_rule(ns, "10.0.0.204", t1) && has_rule(ns, "fd00:10::204", t1)
    });
    let r = rules(&inst);
    assert!(
        !r.contains("10.0.0.129") && !r.contains("fd00:10::129"),
        "primary got a rule:\n{r}"
    );
    assert!(!r.contains("10.0.0.99"), "stale hagw rule survived:\n{r}");
    let t = table(&inst, t1);
    assert!(t.contains("default via 10.0.0.1 dev eth1"), "{t}");
    assert!(
        t.contains("10.0.0.0/24 dev eth1") && t.contains("scope link src 10.0.0.204"),
        "{t}"
    );
    assert!(t.contains("default via fe80::1 dev eth1"), "{t}");
    assert!(t.contains("fd00:10::/64 dev eth1"), "{t}");
    assert!(
        !t.contains("203.0.113.0"),
        "stale hagw route survived:\n{t}"
    );

    for dst in ["10.0.0.204", "fd00:10::204", "10.0.0.129", "fd00:10::129"] {
        assert!(
            connects(&remote, dst, Duration::from_secs(3)),
            "{dst} with hagw"
        );
    }

    let st = hagw.status();
    assert_eq!(st["policy_routing"]["primary"], "eth0", "{st:#}");
    let e1 = policy_iface(&st, "eth1").unwrap_or_else(|| panic!("{st:#}"));
    assert_eq!(e1["table"], t1);
    assert_eq!(e1["ifindex"], t1 - 10_000);
    assert_eq!(e1["gateway_ipv4"], "10.0.0.1");
    assert_eq!(e1["gateway_ipv4_source"], "subnet-first-address");
    assert_eq!(e1["gateway_ipv6"], "fe80::1");
    assert_eq!(
        e1["rules"],
        serde_json::json!(["10.0.0.204", "fd00:10::204"])
    );
    assert!(e1.get("error").is_none(), "{e1}");

    // Hot-plug a third NIC: table and rule within 1 s.
    veth(&vpc, "p2", &inst, "eth2");
    vpc.sh("ip link set p2 master br0");
    let t2 = 10_000 + ifindex(&inst, "eth2");
    addr(&inst, "eth2", "10.0.0.50/24");
    let took = converge(&inst, "hot-plugged eth2's rule and table", CONVERGE, |ns| {
        has_rule(ns, "10.0.0.50", t2) && table(ns, t2).contains("default via 10.0.0.1 dev eth2")
    });
    eprintln!("hot-plug converged in {took:?}");

    // A secondary address: its own rule.
    addr(&inst, "eth1", "10.0.0.205/24");
    converge(&inst, "rule for the secondary address", CONVERGE, |ns| {
        has_rule(ns, "10.0.0.205", t1)
    });

    // Link down: its rules go; up: they come back.
    inst.sh("ip link set eth2 down");
    converge(&inst, "eth2 down: rule removed", CONVERGE, |ns| {
        !has_rule(ns, "10.0.0.50", t2)
    });
    inst.sh("ip link set eth2 up");
    converge(&inst, "eth2 up: rule and table back", CONVERGE, |ns| {
        has_rule(ns, "10.0.0.50", t2) && table(ns, t2).contains("default via 10.0.0.1 dev eth2")
    });

    // A NIC whose configured gateway is outside its subnet: reported, the
    // others keep working.
    veth(&vpc, "p3", &inst, "eth3");
    let t3 = 10_000 + ifindex(&inst, "eth3");
    addr(&inst, "eth3", "10.0.0.60/24");
    converge(&inst, "eth3's rule", CONVERGE, |ns| {
        has_rule(ns, "10.0.0.60", t3)
    });
    assert!(
        !table(&inst, t3).contains("default"),
        "{}",
        table(&inst, t3)
    );
    let st = hagw.status();
    let e3 = policy_iface(&st, "eth3").unwrap_or_else(|| panic!("{st:#}"));
    assert_eq!(
        e3["error"], "gateway 192.168.77.1 is outside eth3's subnets (10.0.0.0/24)",
        "{st:#}"
    );
    assert!(policy_iface(&st, "eth1").is_some_and(|i| i.get("error").is_none()));
    assert!(connects(&remote, "10.0.0.204", Duration::from_secs(3)));

    // Unplug eth2: rule and table gone within 1 s.
    inst.sh("ip link del eth2");
    converge(
        &inst,
        "unplugged eth2's rule and table gone",
        CONVERGE,
        |ns| !has_rule(ns, "10.0.0.50", t2) && table(ns, t2).trim().is_empty(),
    );
    // Deleting hagw's rule by hand: it comes back.
    inst.sh(&format!("ip rule del from 10.0.0.204 lookup {t1}"));
    converge(&inst, "hand-deleted rule restored", CONVERGE, |ns| {
        has_rule(ns, "10.0.0.204", t1)
    });
    assert!(foreign_present(&inst));

    // Stop: hagw removes its rules and tables, and nothing else.
    drop(hagw);
    let r = rules(&inst);
    assert!(
        !r.contains("proto hagw") && !r.contains("proto 199"),
        "left rules:\n{r}"
    );
    for t in [t1, t3] {
        assert!(
            table(&inst, t).trim().is_empty(),
            "table {t} left:\n{}",
            table(&inst, t)
        );
    }
    assert!(foreign_present(&inst), "foreign rule/route after stop");

    // With eth3 present, the config's eth3 gateway is now a start-up error
    // (`hagw run` checks the live system like `hagw check`): unplug it.
    inst.sh("ip link del eth3");
    // Beside BGP; then a crash (SIGKILL) and a restart that adopts.
    let with_bgp = format!(
        "[bgp]\nasn = 65000\nrouter_id = \"10.0.0.129\"\nlisten = [\"10.0.0.129\"]\nport = 17900\n{POLICY_ONLY}"
    );
    let hagw = Hagw::start(&inst, &with_bgp);
    converge(
        &inst,
        "rules back beside BGP",
        Duration::from_secs(3),
        |ns| has_rule(ns, "10.0.0.204", t1) && has_rule(ns, "10.0.0.205", t1),
    );
    assert!(connects(&remote, "fd00:10::204", Duration::from_secs(3)));
    hagw.proc.kill();
    let hagw = Hagw::start(&inst, POLICY_ONLY);
    let st = hagw.status();
    assert!(policy_iface(&st, "eth1").is_some(), "{st:#}");
    let r = rules(&inst);
    assert_eq!(
        r.matches("from 10.0.0.204 lookup").count(),
        1,
        "adopted, not duplicated:\n{r}"
    );
    assert!(connects(&remote, "10.0.0.204", Duration::from_secs(3)));
    assert!(foreign_present(&inst), "foreign rule/route after restarts");
    drop(hagw);
    assert!(foreign_present(&inst));
}

#[test]
fn check_and_run_report_live_problems() {
    hagw_testkit::require_root();
    let ns = Netns::new("chk");
    ns.sh(
        "ip link add eth0 type veth peer name eth1 && ip link set eth0 up && ip link set eth1 up",
    );
    addr(&ns, "eth0", "10.1.0.2/24");
    addr(&ns, "eth1", "10.1.0.3/24");
    ns.sh("ip route add default via 10.1.0.1 dev eth0 && ip route add unreachable 192.0.2.0/24 table 20005 proto static");
    let path = ns.dir().join("bad.toml");
    std::fs::write(
        &path,
        "[policy_routing]\nprimary = \"ens99\"\ntable_base = 20000\n\n\
         [[policy_routing.gateway]]\ninterface = \"eth1\"\nipv4 = \"192.168.9.1\"\n",
    )
    .expect("write");
    let p = path.display();
    let check = ns
        .try_sh(&format!("{HAGW} check --config {p}"))
        .expect_err("check must fail");
    for want in [
        "policy_routing.primary: primary interface \"ens99\" does not exist (interfaces: eth",
        "policy_routing.gateway[0].ipv4: gateway 192.168.9.1 is outside eth1's subnets (10.1.0.0/24)",
        "policy_routing.table_base: tables 20005 in hagw's range 20001..=32765 already hold routes of other protocols",
    ] {
        assert!(check.contains(want), "missing {want:?} in:\n{check}");
    }
    let run = ns
        .try_sh(&format!("timeout 10 {HAGW} run --config {p}"))
        .expect_err("run must refuse");
    let words = |s: &str| -> Vec<String> {
        s.lines()
            .filter(|l| l.trim_start().starts_with("policy_routing"))
            .map(|l| l.trim().to_string())
            .collect()
    };
    assert_eq!(
        words(&check),
        words(&run),
        "check and run differ:\n{check}\n{run}"
    );
    assert_eq!(words(&check).len(), 3);

    // A sound config passes.
    let good = ns.dir().join("good.toml");
    std::fs::write(
        &good,
        "[policy_routing]\ntable_base = 21000\n\n[[policy_routing.gateway]]\ninterface = \"eth1\"\nipv4 = \"10.1.0.1\"\n",
    )
    .expect("write");
    ns.sh(&format!("{HAGW} check --config {}", good.display()));
}
