//! Connection pinning against the real kernel. The flow tests build the
//! egress lab in namespaces (host, switch, two SNAT routers, "internet" with
//! a server; IPv4 and IPv6), keep the host's multipath default with FibSync and drive
//! [`Pinning`] by hand, and count broken TCP flows when a router leaves and
//! returns. Needs root.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    collections::BTreeSet,
    io::{BufRead, BufReader, ErrorKind, Read, Write},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    time::{Duration, Instant},
};

use hagw_kernel::{
    pinning::{PinConfig, Pinning},
    set_multipath_hash_policy, FibConfig, FibSync, Nexthop, RouteOwner,
};
use hagw_testkit::{addr, bridge, require_root, veth, Netns};
use ipnet::IpNet;

/// One address family of the (dual-stack) lab.
#[derive(Clone, Copy)]
struct Fam {
    ra: &'static str,
    rb: &'static str,
    /// The source address the server sees through A's / B's masquerade.
    snat_a: &'static str,
    snat_b: &'static str,
    server: &'static str,
    default: &'static str,
}

const V4: Fam = Fam {
    ra: "192.168.100.20",
    rb: "192.168.100.21",
    snat_a: "198.51.100.1",
    snat_b: "198.51.100.5",
    server: "203.0.113.1:8080",
    default: "0.0.0.0/0",
};

const V6: Fam = Fam {
    ra: "fd00:100::20",
    rb: "fd00:100::21",
    snat_a: "fd00:51::1",
    snat_b: "fd00:51::5",
    server: "[fd00:203::1]:8080",
    default: "::/0",
};

const RA: &str = V4.ra;
const RB: &str = V4.rb;
const SNAT_A: &str = V4.snat_a;
const SNAT_B: &str = V4.snat_b;
const SERVER: &str = V4.server;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn nh(s: &str) -> Nexthop {
    Nexthop::new(ip(s))
}

/// The egress lab: host 192.168.100.100 / fd00:100::100 on a bridge with
/// routers A (.20, ::20) and B (.21, ::21), each masquerading (IPv4 and IPv6)
/// out of its uplink to "inet", which holds the server addresses.
struct Lab {
    host: Netns,
    ra: Netns,
    _rb: Netns,
    _sw: Netns,
    _inet: Netns,
}

impl Lab {
    fn new() -> Lab {
        require_root();
        let host = Netns::new("pinh");
        let sw = Netns::new("pins");
        let ra = Netns::new("pina");
        let rb = Netns::new("pinb");
        let inet = Netns::new("pini");
        veth(&host, "eth0", &sw, "ph");
        veth(&ra, "eth0", &sw, "pa");
        veth(&rb, "eth0", &sw, "pb");
        bridge(&sw, "br0", &["ph", "pa", "pb"]);
        addr(&host, "eth0", "192.168.100.100/24");
        addr(&ra, "eth0", &format!("{RA}/24"));
        addr(&rb, "eth0", &format!("{RB}/24"));
        // The cut is a link down: IPv6 addresses must survive it.
        for r in [&ra, &rb] {
            r.sysctl("net.ipv6.conf.all.keep_addr_on_down", "1");
            r.sysctl("net.ipv6.conf.eth0.keep_addr_on_down", "1");
        }
        host.sh("ip addr add fd00:100::100/64 dev eth0 nodad");
        ra.sh("ip addr add fd00:100::20/64 dev eth0 nodad");
        rb.sh("ip addr add fd00:100::21/64 dev eth0 nodad");
        for (r, up, uplink, peer, uplink6, peer6) in [
            (
                &ra,
                "ua",
                "198.51.100.1/30",
                "198.51.100.2",
                "fd00:51::1",
                "fd00:51::2",
            ),
            (
                &rb,
                "ub",
                "198.51.100.5/30",
                "198.51.100.6",
                "fd00:51::5",
                "fd00:51::6",
            ),
        ] {
            veth(r, "up0", &inet, up);
            addr(r, "up0", uplink);
            let inet_cidr = format!("{peer}/30");
            addr(&inet, up, &inet_cidr);
            r.sh(&format!("ip addr add {uplink6}/126 dev up0 nodad"));
            inet.sh(&format!("ip addr add {peer6}/126 dev {up} nodad"));
            r.sh(&format!("ip route add default via {peer}"));
            r.sh(&format!("ip -6 route add default via {peer6}"));
            r.sysctl("net.ipv4.ip_forward", "1");
            r.sysctl("net.ipv6.conf.all.forwarding", "1");
            r.sh("nft -f - <<'EOF'\n\
                  table inet hgtnat {\n\
                    chain post {\n\
                      type nat hook postrouting priority srcnat; policy accept;\n\
                      oifname \"up0\" masquerade\n\
                    }\n\
                  }\n\
                  EOF");
        }
        inet.sh("ip addr add 203.0.113.1/32 dev lo && ip addr add fd00:203::1/128 dev lo");
        for r in [RA, RB, V6.ra, V6.rb] {
            host.sh(&format!("ping -c1 -W2 {r} >/dev/null"));
        }
        Lab {
            host,
            ra,
            _rb: rb,
            _sw: sw,
            _inet: inet,
        }
    }

    /// Starts the servers (IPv4 and IPv6): every connection is told the
    /// source address the server sees (which router's SNAT), then its lines
    /// are echoed.
    fn serve(&self) {
        for server in [V4.server, V6.server] {
            let listener = self
                ._inet
                .run(move || TcpListener::bind(server).expect("bind server"));
            serve_on(listener);
        }
    }

    fn cut_a(&self) {
        self.ra.sh("ip link set eth0 down");
    }

    fn heal_a(&self) {
        self.ra.sh("ip link set eth0 up");
        self.host
            .wait_for("router A reachable", Duration::from_secs(10), |ns| {
                ns.try_sh(&format!("ping -c1 -W1 {RA}")).is_ok()
                    && ns.try_sh(&format!("ping -c1 -W1 {}", V6.ra)).is_ok()
            });
    }
}

/// Answers every connection on `listener` (see [`Lab::serve`]).
fn serve_on(listener: TcpListener) {
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut s) = conn else { continue };
            std::thread::spawn(move || {
                let peer = s
                    .peer_addr()
                    .map(|a| a.ip().to_string())
                    .unwrap_or_default();
                if s.write_all(format!("{peer}\n").as_bytes()).is_err() {
                    return;
                }
                let mut buf = [0u8; 256];
                loop {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if s.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
}

struct Flow {
    s: TcpStream,
    /// The source address the server sees: which router carries it.
    via: String,
    alive: bool,
}

/// Opens `n` flows to `server` with a plain `connect()` (kernel-chosen
/// source port).
fn open_flows(n: usize, server: &str) -> Vec<Flow> {
    let server: SocketAddr = server.parse().unwrap();
    (0..n)
        .map(|i| {
            let s = TcpStream::connect_timeout(&server, Duration::from_secs(3))
                .unwrap_or_else(|e| panic!("flow {i}: connect: {e}"));
            s.set_nodelay(true).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
            let mut line = Vec::new();
            let mut b = [0u8; 1];
            while b[0] != b'\n' {
                (&s).read_exact(&mut b)
                    .unwrap_or_else(|e| panic!("flow {i}: greeting: {e}"));
                line.push(b[0]);
            }
            let via = String::from_utf8_lossy(&line).trim().to_string();
            Flow {
                s,
                via,
                alive: true,
            }
        })
        .collect()
}

/// One round: every live flow sends a line; those without their echo
/// within a second (or with a socket error) are broken. Returns the broken
/// ones of this round by router (SNAT address).
fn check(flows: &mut [Flow]) -> Vec<(String, usize)> {
    for f in flows.iter_mut().filter(|f| f.alive) {
        if f.s.write_all(b"ping\n").is_err() {
            f.alive = false;
        }
    }
    std::thread::sleep(Duration::from_millis(1000));
    let mut broken: Vec<(String, usize)> = Vec::new();
    for f in flows.iter_mut() {
        if !f.alive {
            continue;
        }
        f.s.set_nonblocking(true).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 64];
        let ok = loop {
            match f.s.read(&mut buf) {
                Ok(0) => break false,
                Ok(n) => {
                    got.extend_from_slice(&buf[..n]);
                    if got.ends_with(b"ping\n") {
                        break true;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break false,
                Err(_) => break false,
            }
        };
        f.s.set_nonblocking(false).unwrap();
        if !ok {
            f.alive = false;
            match broken.iter_mut().find(|(v, _)| *v == f.via) {
                Some((_, n)) => *n += 1,
                None => broken.push((f.via.clone(), 1)),
            }
        }
    }
    broken
}

fn count(flows: &[Flow], via: &str) -> usize {
    flows.iter().filter(|f| f.via == via && f.alive).count()
}

fn broken_via(b: &[(String, usize)], via: &str) -> usize {
    b.iter().find(|(v, _)| v == via).map_or(0, |(_, n)| *n)
}

async fn wait_active(pin: &Pinning, routers: &[&str]) {
    let t0 = Instant::now();
    loop {
        let snap = pin.snapshot().await;
        let active: Vec<IpAddr> = snap
            .iter()
            .filter(|r| r.active)
            .map(|r| r.nexthop.addr)
            .collect();
        if snap.len() == routers.len() && routers.iter().all(|r| active.contains(&ip(r))) {
            return;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "pinning not active for {routers:?}: {snap:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What happened to the flows: (A's flows, B's flows, broken on cut by
/// router, broken on heal by router).
struct Outcome {
    on_a: usize,
    on_b: usize,
    cut: Vec<(String, usize)>,
    heal: Vec<(String, usize)>,
}

/// The scenario: 200 flows over A and B; A leaves the set and is cut; A is
/// healed and returns. With `pin`, Pinning follows the next-hop set.
fn scenario(pin: bool, f: Fam) -> Outcome {
    let lab = Lab::new();
    lab.serve();
    let default = net(f.default);
    let lab = &lab;
    lab.host.block_on(|| async move {
        set_multipath_hash_policy(true).unwrap();
        let fib = FibSync::start(FibConfig::default()).await.unwrap();
        let pinning = if pin {
            Some(Pinning::start(PinConfig::default()).await.unwrap())
        } else {
            None
        };
        let set = |nhs: Vec<Nexthop>| {
            // FIB first, then pinning, as the daemon does.
            fib.set_route(RouteOwner::Bgp, default, nhs.clone());
            if let Some(p) = &pinning {
                p.set_default(default, nhs);
            }
        };
        set(vec![nh(f.ra), nh(f.rb)]);
        assert_eq!(fib.snapshot().await.len(), 1);
        if let Some(p) = &pinning {
            wait_active(p, &[f.ra, f.rb]).await;
        }

        let mut flows = open_flows(200, f.server);
        let (on_a, on_b) = (count(&flows, f.snat_a), count(&flows, f.snat_b));
        eprintln!("200 flows: {on_a} via A, {on_b} via B");
        assert_eq!(on_a + on_b, 200, "every flow goes through A or B");
        assert!(on_a > 20 && on_b > 20, "ECMP spreads flows: {on_a}/{on_b}");
        let pre = check(&mut flows);
        assert!(pre.is_empty(), "flows broken before any change: {pre:?}");

        // A leaves: withdrawn from the set, and cut.
        set(vec![nh(f.rb)]);
        lab.cut_a();
        fib.snapshot().await;
        if let Some(p) = &pinning {
            wait_active(p, &[f.rb]).await;
        }
        let mut cut = check(&mut flows);
        for _ in 0..2 {
            for (v, n) in check(&mut flows) {
                cut.push((v, n));
            }
        }
        eprintln!("cut A: broken {cut:?}");

        // A returns.
        lab.heal_a();
        set(vec![nh(f.ra), nh(f.rb)]);
        fib.snapshot().await;
        if let Some(p) = &pinning {
            wait_active(p, &[f.ra, f.rb]).await;
        }
        let mut heal = Vec::new();
        for _ in 0..3 {
            heal.extend(check(&mut flows));
        }
        eprintln!("heal A: broken {heal:?}");

        if let Some(p) = &pinning {
            // New flows use both routers again, and work.
            let mut fresh = open_flows(40, f.server);
            let (fa, fb) = (count(&fresh, f.snat_a), count(&fresh, f.snat_b));
            assert!(
                fa > 0 && fb > 0,
                "new flows after heal: {fa} via A, {fb} via B"
            );
            let b = check(&mut fresh);
            assert!(b.is_empty(), "new flows broken after heal: {b:?}");
            p.shutdown().await;
        }
        fib.shutdown(true).await;
        Outcome {
            on_a,
            on_b,
            cut,
            heal,
        }
    })
}

fn sum(b: &[(String, usize)], via: &str) -> usize {
    b.iter().filter(|(v, _)| v == via).map(|(_, n)| n).sum()
}

#[test]
fn pinned_flows_survive_a_router_return() {
    pinned_flows_survive(V4);
}

#[test]
fn pinned_ipv6_flows_survive_a_router_return() {
    pinned_flows_survive(V6);
}

fn pinned_flows_survive(f: Fam) {
    let o = scenario(true, f);
    // The cut breaks exactly A's flows ...
    assert_eq!(sum(&o.cut, f.snat_a), o.on_a, "cut: {:?}", o.cut);
    assert_eq!(sum(&o.cut, f.snat_b), 0, "cut broke B's flows: {:?}", o.cut);
    // ... and the return breaks none.
    assert!(o.heal.is_empty(), "heal broke flows: {:?}", o.heal);
    let _ = (o.on_b, broken_via(&o.heal, f.snat_b));
}

/// The problem pinning solves, measured the same way: without it, A's
/// return rehashes a share of B's surviving flows onto A, whose SNAT does
/// not know them.
#[test]
fn without_pinning_a_router_return_breaks_flows() {
    flows_break_without_pinning(V4);
}

#[test]
fn without_pinning_an_ipv6_router_return_breaks_flows() {
    flows_break_without_pinning(V6);
}

fn flows_break_without_pinning(f: Fam) {
    let o = scenario(false, f);
    assert_eq!(sum(&o.cut, f.snat_b), 0, "cut broke B's flows: {:?}", o.cut);
    let broken = sum(&o.heal, f.snat_b);
    eprintln!(
        "without pinning: heal broke {broken} of {} flows via B",
        o.on_b
    );
    assert!(
        broken > 0,
        "expected ECMP rehash to break flows: {:?}",
        o.heal
    );
}

/// Command output, with iproute2's name for protocol 199 (when
/// rt_protos.d names it) turned back into the number.
fn sh_lines(ns: &Netns, cmd: &str) -> String {
    ns.sh(cmd).replace("proto hagw", "proto 199")
}

/// Leftovers of a previous run are removed at start (and their slots
/// reused), foreign rules, routes and tables are left alone, IPv6 works,
/// shutdown removes everything of ours.
#[test]
fn leftovers_foreign_state_and_ipv6() {
    require_root();
    let ns = Netns::new("pinl");
    ns.sh("ip link add eth0 type veth peer name peer0 && \
           ip link set eth0 up && ip link set peer0 up && \
           ip addr add 10.1.0.1/24 dev eth0 && \
           ip -6 addr add 2001:db8:1::1/64 dev eth0 nodad");
    // Leftovers of hagw's pinning.
    ns.sh(
        "ip rule add priority 32700 fwmark 0x500/0xff00 lookup 9005 proto 199 && \
           ip route add default via 10.1.0.2 table 9005 proto 199 && \
           ip rule add priority 32700 fwmark 0x700/0xff00 lookup 9007 proto 199 && \
           ip route add default via 10.1.0.7 table 9007 proto 199 && \
           nft add table inet hagw_pin && \
           nft add chain inet hagw_pin stale",
    );
    // Foreign state.
    ns.sh(
        "ip rule add priority 32700 fwmark 0x600/0xff00 lookup 9006 proto static && \
           ip route add default via 10.1.0.3 table 9006 proto static && \
           ip rule add priority 1000 lookup 9008 proto 199 && \
           ip route add 10.9.0.0/16 via 10.1.0.3 proto 199 && \
           nft add table inet foreign && nft add chain inet foreign c",
    );
    let foreign = |ns: &Netns| {
        let rules = sh_lines(ns, "ip rule show");
        assert!(
            rules.contains("fwmark 0x600/0xff00 lookup 9006 proto static"),
            "{rules}"
        );
        assert!(
            rules.contains("1000:\tfrom all lookup 9008 proto 199"),
            "{rules}"
        );
        let r = sh_lines(ns, "ip route show table 9006");
        assert!(r.contains("default via 10.1.0.3"), "{r}");
        let r = sh_lines(ns, "ip route show");
        assert!(r.contains("10.9.0.0/16 via 10.1.0.3"), "{r}");
        let t = sh_lines(ns, "nft list tables");
        assert!(t.contains("table inet foreign"), "{t}");
    };
    ns.block_on(|| async {
        let pin = Pinning::start(PinConfig::default()).await.unwrap();
        let rules = sh_lines(&ns, "ip rule show");
        assert!(
            !rules.contains("lookup 9005") && !rules.contains("lookup 9007"),
            "{rules}"
        );
        assert!(sh_lines(&ns, "ip route show table 9005").is_empty());
        assert!(sh_lines(&ns, "ip route show table 9007").is_empty());
        // The table exists (empty chains) while pinning runs; the stale one is gone.
        assert!(!sh_lines(&ns, "nft list table inet hagw_pin").contains("stale"));
        foreign(&ns);

        pin.set_default(net("0.0.0.0/0"), vec![nh("10.1.0.2")]);
        pin.set_default(net("::/0"), vec![nh("2001:db8:1::2")]);
        let snap = pin.snapshot().await;
        assert_eq!(snap.len(), 2, "{snap:?}");
        assert!(snap.iter().all(|r| r.active), "{snap:?}");
        // The router of the leftover table 9005 gets its slot back.
        let a = snap
            .iter()
            .find(|r| r.nexthop.addr == ip("10.1.0.2"))
            .unwrap();
        assert_eq!((a.slot, a.table, a.mark), (5, 9005, 0x500));
        let v6 = snap.iter().find(|r| r.nexthop.addr.is_ipv6()).unwrap();
        assert_ne!(v6.slot, 5);
        assert_ne!(v6.slot, 7, "a slot left by another router is avoided");

        let rules = sh_lines(&ns, "ip rule show");
        assert!(
            rules.contains("32700:\tfrom all fwmark 0x500/0xff00 lookup 9005 proto 199"),
            "{rules}"
        );
        let rules6 = sh_lines(&ns, "ip -6 rule show");
        let want6 = format!("fwmark {:#x}/0xff00 lookup {} proto 199", v6.mark, v6.table);
        assert!(rules6.contains(&want6), "{rules6}");
        let r = sh_lines(&ns, "ip route show table 9005");
        assert!(r.contains("default via 10.1.0.2 dev eth0 proto 199"), "{r}");
        let r = sh_lines(&ns, &format!("ip -6 route show table {}", v6.table));
        assert!(
            r.contains("default via 2001:db8:1::2 dev eth0 proto 199"),
            "{r}"
        );
        let t = sh_lines(&ns, "nft list table inet hagw_pin");
        assert!(
            t.contains("rt ip nexthop vmap { 10.1.0.2 : jump pin_5 }"),
            "{t}"
        );
        assert!(
            t.contains("rt ip6 nexthop vmap { 2001:db8:1::2 : jump pin_"),
            "{t}"
        );

        // A router leaving loses its rule and table at once; its nft entry
        // follows a moment later (the reload is kept off the failover path).
        pin.set_default(net("0.0.0.0/0"), vec![]);
        let snap = pin.snapshot().await;
        assert_eq!(snap.len(), 1);
        assert!(!sh_lines(&ns, "ip rule show").contains("lookup 9005"));
        assert!(sh_lines(&ns, "ip route show table 9005").is_empty());
        let t = Instant::now();
        while sh_lines(&ns, "nft list table inet hagw_pin").contains("10.1.0.2") {
            assert!(t.elapsed() < Duration::from_secs(2), "nft entry kept");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        pin.shutdown().await;
        foreign(&ns);
        let rules6 = sh_lines(&ns, "ip -6 rule show");
        assert!(!rules6.contains("proto 199"), "{rules6}");
        assert!(!sh_lines(&ns, "nft list tables").contains("hagw_pin"));
    });
}

/// Mark bits outside the mask (packet mark and conntrack mark) set by
/// someone else survive pinning, and the pinned slot is set next to them.
#[test]
fn foreign_mark_bits_are_preserved() {
    let lab = Lab::new();
    lab.serve();
    // Another user's marks: packet bit 0x1 (before hagw's output chain) and
    // conntrack bit 0x10000 (once conntrack has the connection, before hagw's
    // postrouting chain); counters after hagw's chains see both.
    lab.host.sh("nft -f - <<'EOF'\n\
        table inet other {\n\
          chain out {\n\
            type route hook output priority -300; policy accept;\n\
            ip daddr 203.0.113.1 meta mark set meta mark or 0x1\n\
          }\n\
          chain outct {\n\
            type filter hook output priority 0; policy accept;\n\
            ip daddr 203.0.113.1 ct mark set ct mark or 0x10000\n\
          }\n\
          chain post {\n\
            type filter hook postrouting priority 300; policy accept;\n\
            ip daddr 203.0.113.1 meta mark and 0x1 == 0x1 meta mark and 0xff00 != 0 counter\n\
            ip daddr 203.0.113.1 ct mark and 0x10000 == 0x10000 ct mark and 0xff00 != 0 counter\n\
            ip daddr 203.0.113.1 meta mark and 0x1 == 0 counter\n\
          }\n\
        }\n\
        EOF");
    let default = net("0.0.0.0/0");
    lab.host.block_on(|| async {
        set_multipath_hash_policy(true).unwrap();
        let fib = FibSync::start(FibConfig::default()).await.unwrap();
        let pin = Pinning::start(PinConfig::default()).await.unwrap();
        fib.set_route(RouteOwner::Bgp, default, vec![nh(RA), nh(RB)]);
        pin.set_default(default, vec![nh(RA), nh(RB)]);
        fib.snapshot().await;
        wait_active(&pin, &[RA, RB]).await;
        let mut flows = open_flows(20, SERVER);
        assert!(check(&mut flows).is_empty());
        let out = lab.host.sh("nft list chain inet other post");
        let counts: Vec<u64> = out
            .lines()
            .filter_map(|l| l.split("packets ").nth(1))
            .map(|s| s.split_whitespace().next().unwrap().parse().unwrap())
            .collect();
        assert_eq!(counts.len(), 3, "{out}");
        // Packets after the first of each flow carry both bits in both marks.
        assert!(counts[0] >= 40, "packet mark lost a bit: {out}");
        assert!(counts[1] >= 40, "conntrack mark lost a bit: {out}");
        assert_eq!(counts[2], 0, "foreign packet bit cleared: {out}");
        pin.shutdown().await;
        fib.shutdown(true).await;
    });
}

/// A container behind the host (masqueraded by the host, as Docker does): its
/// connections are pinned like the host's own, and the replies, un-NATed after
/// the mark would be copied, must still reach the container (only a
/// connection's original direction follows its router).
#[test]
fn a_container_behind_the_host_keeps_working_with_pinning() {
    let lab = Lab::new();
    lab.serve();
    let ctr = Netns::new("pinc");
    veth(&lab.host, "ct0", &ctr, "eth0");
    addr(&lab.host, "ct0", "172.17.0.1/24");
    addr(&ctr, "eth0", "172.17.0.2/24");
    ctr.sh("ip route add default via 172.17.0.1");
    lab.host.sysctl("net.ipv4.ip_forward", "1");
    lab.host.sh("nft -f - <<'EOF'\n\
         table ip hgtdocker {\n\
           chain post {\n\
             type nat hook postrouting priority srcnat; policy accept;\n\
             ip saddr 172.17.0.0/24 oifname \"eth0\" masquerade\n\
           }\n\
         }\n\
         EOF");
    let default = net("0.0.0.0/0");
    let host = &lab.host;
    let ctr = &ctr;
    host.block_on(|| async move {
        let fib = FibSync::start(FibConfig::default()).await.unwrap();
        let pin = Pinning::start(PinConfig::default()).await.unwrap();
        fib.set_route(RouteOwner::Bgp, default, vec![nh(RA), nh(RB)]);
        pin.set_default(default, vec![nh(RA), nh(RB)]);
        wait_active(&pin, &[RA, RB]).await;
        let (ok, via) = ctr.run(|| {
            let mut ok = 0;
            let mut via = BTreeSet::new();
            for _ in 0..40 {
                let Ok(mut s) = std::net::TcpStream::connect_timeout(
                    &SERVER.parse().unwrap(),
                    Duration::from_secs(2),
                ) else {
                    continue;
                };
                s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                let mut r = BufReader::new(s.try_clone().unwrap());
                let mut seen = String::new();
                let mut echo = String::new();
                if r.read_line(&mut seen).is_ok()
                    && s.write_all(b"ping\n").is_ok()
                    && r.read_line(&mut echo).is_ok()
                    && echo == "ping\n"
                {
                    ok += 1;
                    via.insert(seen.trim().to_owned());
                }
            }
            (ok, via)
        });
        assert_eq!(ok, 40, "every container connection works through pinning");
        assert!(
            via.contains(SNAT_A) || via.contains(SNAT_B),
            "went out through the routers: {via:?}"
        );
        pin.shutdown().await;
        fib.shutdown(true).await;
    });
}
