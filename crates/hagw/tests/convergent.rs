//! Convergent gateways and NAT (issue 12, seed 003) in namespaces, on the
//! real kernel with br_netfilter in effect:
//!
//! ```text
//!                    client 192.168.122.1 (and the "outside" server)
//!                       | lan bridge
//!          +------------+-------------+
//!    xenbr0 .11                  xenbr0 .12
//!     [ xen1 ]                    [ xen2 ]         hagw on each, ONE config
//!    guestbr0 .254 + .251        guestbr0 .254 + .252
//!     |      \ up0                up0 /      |
//!   guest1    +---- sw (the VLAN) ---+     guest2
//!  10.5.5.201                             10.5.5.202   (gateway 10.5.5.254)
//! ```
//!
//! One test walks the whole story (the nodes take a while to build, and
//! every step needs the ones before): gateway MACs, outbound SNAT, TCP and
//! UDP forwards through both nodes with full-NAT, the seed's hand-written
//! rule shown to NAT twice where hagw's does not, a live reload that only
//! touches the set, long connections through a node whose neighbour
//! restarts hagw and through the restarting node itself, foreign nft and
//! iptables-nft rules untouched, hagw's tables back after `nft flush
//! ruleset`, a forward withdrawn while its guest is down, and ARP for the
//! gateway never on the VLAN (captured).

mod common;

use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::Hagw;
use hagw_testkit::{addr, bridge, veth, wait_until, Netns, Proc};

const HTTP: u16 = 8080;
const SSH: u16 = 2222;
const NTP: u16 = 123;
const OUTSIDE: &str = "192.168.122.1:9000";
const NODE_ADDR: [&str; 2] = ["192.168.122.11", "192.168.122.12"];
const OWN: [&str; 2] = ["10.5.5.251", "10.5.5.252"];
const GUEST: [&str; 2] = ["10.5.5.201", "10.5.5.202"];

/// One config for both nodes: what differs is keyed by node name. The
/// nodes' hostnames are the test machine's: each finds itself by its
/// addresses (192.168.122.11 is on xen1 only).
const CONFIG: &str = r#"
[[gateway]]
bridge = "guestbr0"
address = "10.5.5.254/24"
node_address = { xen1 = "10.5.5.251/24", xen2 = "10.5.5.252/24" }
hide_on = ["up0"]

[[nat.source]]
networks = ["10.5.5.0/24"]
out_interface = "xenbr0"
to = { xen1 = "192.168.122.11", xen2 = "192.168.122.12" }

# HTTP-like, as in the seed: each node forwards port 80 to the other's guest.
[[nat.forward]]
in_interface = "xenbr0"
protocol = "tcp"
port = 80
to = { xen1 = "10.5.5.202:8080", xen2 = "10.5.5.201:8080" }
full_nat = true

# SSH-like: one port per guest, on every node.
[[nat.forward]]
in_interface = "xenbr0"
protocol = "tcp"
port = 2201
to = "10.5.5.201:2222"
full_nat = true
health = { probe = "tcp", interval_ms = 200, fall = 2, rise = 2 }

[[nat.forward]]
in_interface = "xenbr0"
protocol = "tcp"
port = 2202
to = "10.5.5.202:2222"
full_nat = true

# NTP-like request/response over UDP.
[[nat.forward]]
in_interface = "xenbr0"
protocol = "udp"
port = 1231
to = "10.5.5.201:123"
full_nat = true

[[nat.forward]]
in_interface = "xenbr0"
protocol = "udp"
port = 1232
to = "10.5.5.202:123"
full_nat = true
"#;

/// The seed-003 topology (a helper until the lab crate has it).
struct Lab {
    client: Netns,
    nodes: [Netns; 2],
    guests: [Netns; 2],
    sw: Netns,
}

fn lab() -> Lab {
    hagw_testkit::require_root();
    let client = Netns::new("client");
    let sw = Netns::new("vlan");
    let nodes = [Netns::new("xen1"), Netns::new("xen2")];
    let guests = [Netns::new("guest1"), Netns::new("guest2")];
    for (i, n) in nodes.iter().enumerate() {
        veth(&client, &format!("c{i}"), n, "wan0");
        veth(&sw, &format!("u{i}"), n, "up0");
        veth(n, "g0", &guests[i], "eth0");
        bridge(n, "xenbr0", &["wan0"]);
        bridge(n, "guestbr0", &["g0", "up0"]);
        addr(n, "xenbr0", &format!("{}/24", NODE_ADDR[i]));
        // What Docker does to a host: bridged frames pass the IP hooks.
        n.sysctl("net.bridge.bridge-nf-call-iptables", "1");
        let g = &guests[i];
        addr(g, "eth0", &format!("{}/24", GUEST[i]));
        g.sh("ip route add default via 10.5.5.254");
    }
    bridge(&client, "lan", &["c0", "c1"]);
    addr(&client, "lan", "192.168.122.1/24");
    bridge(&sw, "vlan", &["u0", "u1"]);
    Lab {
        client,
        nodes,
        guests,
        sw,
    }
}

/// Servers in a namespace, run by threads of the test: each answers with
/// its name and the peer address it sees.
struct Servers {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Servers {
    fn new() -> Servers {
        Servers {
            stop: Arc::new(AtomicBool::new(false)),
            threads: Vec::new(),
        }
    }

    /// TCP on `port`: "NAME saw PEER\n", then (`echo`) every line back.
    fn tcp(&mut self, ns: &Netns, port: u16, name: &str, echo: bool) {
        let l = ns.run(|| TcpListener::bind(("0.0.0.0", port)).expect("bind"));
        l.set_nonblocking(true).expect("nonblocking");
        let (stop, name) = (self.stop.clone(), name.to_string());
        self.threads.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((mut c, peer)) => {
                        let _ = c.set_nonblocking(false);
                        let _ = writeln!(c, "{name} saw {}", peer.ip());
                        if echo {
                            std::thread::spawn(move || {
                                let mut r = BufReader::new(c.try_clone().expect("clone"));
                                let mut line = String::new();
                                while r.read_line(&mut line).is_ok_and(|n| n > 0) {
                                    if c.write_all(line.as_bytes()).is_err() {
                                        break;
                                    }
                                    line.clear();
                                }
                            });
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        }));
    }

    /// UDP on `port`: every datagram answered with "NAME saw PEER".
    fn udp(&mut self, ns: &Netns, port: u16, name: &str) {
        let s = ns.run(|| UdpSocket::bind(("0.0.0.0", port)).expect("bind"));
        s.set_read_timeout(Some(Duration::from_millis(50)))
            .expect("timeout");
        let (stop, name) = (self.stop.clone(), name.to_string());
        self.threads.push(std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while !stop.load(Ordering::Relaxed) {
                if let Ok((_, peer)) = s.recv_from(&mut buf) {
                    let _ = s.send_to(format!("{name} saw {}", peer.ip()).as_bytes(), peer);
                }
            }
        }));
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn connect(ns: &Netns, to: &str) -> std::io::Result<TcpStream> {
    let to: SocketAddr = to.parse().expect("addr");
    let s = ns.run(|| TcpStream::connect_timeout(&to, Duration::from_secs(2)))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    Ok(s)
}

/// The first line a TCP service at `to` says to a client in `ns`.
fn ask_tcp(ns: &Netns, to: &str) -> String {
    let s = connect(ns, to).unwrap_or_else(|e| panic!("connect {to} from {}: {e}", ns.name()));
    let mut line = String::new();
    BufReader::new(s)
        .read_line(&mut line)
        .unwrap_or_else(|e| panic!("read from {to}: {e}"));
    line.trim().to_string()
}

/// The answer of a UDP service at `to` (three tries).
fn ask_udp(ns: &Netns, to: &str) -> String {
    let s = ns.run(|| UdpSocket::bind("0.0.0.0:0").expect("bind"));
    s.set_read_timeout(Some(Duration::from_millis(700)))
        .expect("timeout");
    let mut buf = [0u8; 512];
    for _ in 0..3 {
        s.send_to(b"time?", to).expect("send");
        if let Ok(n) = s.recv(&mut buf) {
            return String::from_utf8_lossy(&buf[..n]).into_owned();
        }
    }
    panic!("no UDP answer from {to}");
}

/// A long connection: one line out, the same line back, within a second.
struct Session {
    r: BufReader<TcpStream>,
    w: TcpStream,
}

impl Session {
    fn open(ns: &Netns, to: &str) -> (Session, String) {
        let s = connect(ns, to).expect("connect");
        let mut r = BufReader::new(s.try_clone().expect("clone"));
        let mut banner = String::new();
        r.read_line(&mut banner).expect("banner");
        (Session { r, w: s }, banner.trim().to_string())
    }

    fn ping(&mut self, n: u32) -> Result<(), String> {
        let line = format!("line {n}\n");
        self.w
            .write_all(line.as_bytes())
            .map_err(|e| e.to_string())?;
        let mut back = String::new();
        self.r.read_line(&mut back).map_err(|e| e.to_string())?;
        if back == line {
            Ok(())
        } else {
            Err(format!("got {back:?}"))
        }
    }
}

fn mac(ns: &Netns, dev: &str) -> String {
    ns.sh(&format!("cat /sys/class/net/{dev}/address"))
        .trim()
        .to_string()
}

/// The MAC a guest resolves the gateway to, from a fresh ARP exchange.
fn gateway_mac(g: &Netns) -> String {
    g.sh("ip neigh flush dev eth0 && ping -c1 -W1 10.5.5.254 >/dev/null && ip neigh show 10.5.5.254 dev eth0")
        .split_whitespace()
        .skip_while(|w| *w != "lladdr")
        .nth(1)
        .unwrap_or_default()
        .to_string()
}

fn start(ns: &Netns) -> Hagw {
    Hagw::start(ns, CONFIG)
}

/// Rewrites the node's config (keeping its control socket) and sends SIGHUP.
fn reload(ns: &Netns, h: &Hagw, config: &str) {
    let path = format!("{}/hagw.toml", ns.dir().display());
    std::fs::write(
        &path,
        format!("{config}\n[control]\nsocket = \"{}\"\n", h.socket),
    )
    .expect("write");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(h.proc.pid() as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .expect("SIGHUP");
}

fn nat_rule(h: &Hagw, name: &str) -> u64 {
    h.status()["convergent"]["nat"]["rules"]
        .as_array()
        .and_then(|r| r.iter().find(|r| r["name"] == name))
        .and_then(|r| r["packets"].as_u64())
        .unwrap_or_else(|| panic!("no rule {name} in status"))
}

/// `tcpdump` of every ARP frame on a VLAN port.
fn capture(sw: &Netns, port: &str) -> Proc {
    let p = sw.spawn("tcpdump", &["-i", port, "-nn", "-l", "-e", "arp"]);
    wait_until("tcpdump listening", Duration::from_secs(5), || {
        p.log().contains("listening on")
    });
    p
}

/// Foreign rules on a node: an nft table and an iptables-nft rule.
fn foreign(n: &Netns) -> String {
    n.sh("nft list table inet theirs; iptables -t nat -S POSTROUTING")
}

#[test]
fn convergent_gateways_and_nat() {
    let lab = lab();
    let [xen1, xen2] = &lab.nodes;
    let [g1, g2] = &lab.guests;
    for n in &lab.nodes {
        assert_eq!(
            n.sh("cat /proc/sys/net/bridge/bridge-nf-call-iptables")
                .trim(),
            "1",
            "br_netfilter must be in effect for this test to mean anything"
        );
    }
    xen1.sh("nft add table inet theirs && nft add chain inet theirs c '{ type filter hook forward priority 0; }' && nft add rule inet theirs c meta mark 0x1234 accept");
    xen1.sh("iptables -t nat -A POSTROUTING -s 10.99.0.0/16 -o xenbr0 -j MASQUERADE");
    let theirs = foreign(xen1);

    let mut servers = Servers::new();
    let mut ssh1 = Servers::new();
    for (i, g) in lab.guests.iter().enumerate() {
        let name = format!("guest{}", i + 1);
        servers.tcp(g, HTTP, &name, false);
        servers.udp(g, NTP, &name);
        if i == 0 {
            ssh1.tcp(g, SSH, &name, true);
        } else {
            servers.tcp(g, SSH, &name, true);
        }
    }
    servers.tcp(&lab.client, 9000, "outside", false);
    let caps = [capture(&lab.sw, "u0"), capture(&lab.sw, "u1")];

    let mut hagw = [Some(start(xen1)), Some(start(xen2))];
    let h = |i: usize, hagw: &[Option<Hagw>; 2]| -> serde_json::Value {
        hagw[i].as_ref().expect("running").status()
    };
    for (i, n) in ["xen1", "xen2"].iter().enumerate() {
        let st = h(i, &hagw);
        assert_eq!(st["convergent"]["node"], *n, "found by its address: {st:#}");
        assert_eq!(st["convergent"]["gateways"][0]["addresses"], true, "{st:#}");
        assert_eq!(st["convergent"]["uplinks"][0]["filtering"], true, "{st:#}");
        assert_eq!(st["convergent"]["nat"]["in_sync"], true, "{st:#}");
    }
    assert_eq!(theirs, foreign(xen1), "foreign rules untouched by start");

    // Each guest's gateway is its own node.
    for (g, n) in [(g1, xen1), (g2, xen2)] {
        for _ in 0..3 {
            assert_eq!(gateway_mac(g), mac(n, "guestbr0"), "{}'s gateway", g.name());
        }
    }

    // Outbound leaves through the guest's node, with that node's address.
    assert_eq!(ask_tcp(g1, OUTSIDE), "outside saw 192.168.122.11");
    assert_eq!(ask_tcp(g2, OUTSIDE), "outside saw 192.168.122.12");

    // Inbound through either node reaches either guest; the guest sees the
    // entry node's own bridge address (full-NAT), so replies go back the
    // way the connection came.
    xen1.sh("ip neigh flush dev guestbr0"); // the capture's positive control
    for (i, entry) in NODE_ADDR.iter().enumerate() {
        let own = OWN[i];
        let other = if i == 0 { "guest2" } else { "guest1" };
        assert_eq!(
            ask_tcp(&lab.client, &format!("{entry}:80")),
            format!("{other} saw {own}")
        );
        assert_eq!(
            ask_tcp(&lab.client, &format!("{entry}:2201")),
            format!("guest1 saw {own}")
        );
        assert_eq!(
            ask_tcp(&lab.client, &format!("{entry}:2202")),
            format!("guest2 saw {own}")
        );
        assert_eq!(
            ask_udp(&lab.client, &format!("{entry}:1231")),
            format!("guest1 saw {own}")
        );
        assert_eq!(
            ask_udp(&lab.client, &format!("{entry}:1232")),
            format!("guest2 saw {own}")
        );
    }
    assert!(nat_rule(hagw[1].as_ref().expect("xen2"), "nat.forward[1] full-nat") > 0);
    assert!(nat_rule(hagw[0].as_ref().expect("xen1"), "nat.source[0]") > 0);

    // The seed's hand-written full-NAT rule on xen1 also NATs what xen2
    // full-NATed towards guest1, bridged through xen1: guest1 then sees
    // xen1's address. hagw's rules did not (above).
    xen1.sh("nft add table ip seed && nft add chain ip seed post '{ type nat hook postrouting priority srcnat; }' && nft add rule ip seed post ip daddr 10.5.5.0/24 oif guestbr0 snat to 10.5.5.251");
    assert_eq!(
        ask_tcp(&lab.client, "192.168.122.12:2201"),
        "guest1 saw 10.5.5.251"
    );
    xen1.sh("nft delete table ip seed");
    assert_eq!(
        ask_tcp(&lab.client, "192.168.122.12:2201"),
        "guest1 saw 10.5.5.252"
    );

    // A network added on reload: the set changes in place, the rules (and
    // their counters) stay.
    let before = nat_rule(hagw[0].as_ref().expect("xen1"), "nat.source[0]");
    reload(
        xen1,
        hagw[0].as_ref().expect("xen1"),
        &CONFIG.replace(
            "networks = [\"10.5.5.0/24\"]",
            "networks = [\"10.5.5.0/24\", \"10.77.0.0/16\"]",
        ),
    );
    wait_until("the set updated", Duration::from_secs(5), || {
        h(0, &hagw)["convergent"]["nat"]["set_updates"] == 1
    });
    assert!(xen1
        .sh("nft list set inet hagw snat_0_v4")
        .contains("10.77.0.0/16"));
    assert_eq!(
        h(0, &hagw)["convergent"]["nat"]["replaces"],
        1,
        "no table replace"
    );
    assert!(
        nat_rule(hagw[0].as_ref().expect("xen1"), "nat.source[0]") >= before,
        "counters kept"
    );
    assert_eq!(theirs, foreign(xen1), "foreign rules untouched by reload");

    // Long connections while xen2 restarts hagw: one through xen1 to guest2
    // (bridged through xen2), one through xen2 itself (its NAT table stays).
    let (mut via1, b1) = Session::open(&lab.client, "192.168.122.11:2202");
    let (mut via2, b2) = Session::open(&lab.client, "192.168.122.12:2201");
    assert_eq!(
        (b1.as_str(), b2.as_str()),
        ("guest2 saw 10.5.5.251", "guest1 saw 10.5.5.252")
    );
    let restart = {
        let old = hagw[1].take().expect("xen2");
        std::thread::scope(|s| {
            let t = s.spawn(|| {
                old.proc.stop();
                start(xen2)
            });
            let mut n = 0;
            while !t.is_finished() {
                n += 1;
                via1.ping(n)
                    .unwrap_or_else(|e| panic!("via xen1, line {n}: {e}"));
                via2.ping(n)
                    .unwrap_or_else(|e| panic!("via xen2, line {n}: {e}"));
                std::thread::sleep(Duration::from_millis(50));
            }
            t.join().expect("restart")
        })
    };
    hagw[1] = Some(restart);
    for n in 1000..1010 {
        via1.ping(n).expect("via xen1 after the restart");
        via2.ping(n).expect("via xen2 after the restart");
    }
    assert!(
        xen2.sh("nft list table inet hagw")
            .contains("nat.forward[1]"),
        "the restarted hagw adopted its table"
    );

    // A guest whose service stops: its forward is withdrawn on both nodes,
    // so a client fails fast there (refused) instead of waiting; back when
    // it answers again.
    drop(ssh1);
    for (i, entry) in NODE_ADDR.iter().enumerate() {
        wait_until("forward[1] withdrawn", Duration::from_secs(5), || {
            h(i, &hagw)["convergent"]["nat"]["withdrawn"][0] == "nat.forward[1]"
        });
        let t = Instant::now();
        let e = connect(&lab.client, &format!("{entry}:2201")).expect_err("withdrawn");
        assert_eq!(e.kind(), ErrorKind::ConnectionRefused, "{e}");
        assert!(t.elapsed() < Duration::from_millis(500));
    }
    let mut ssh1 = Servers::new();
    ssh1.tcp(g1, SSH, "guest1", true);
    for (i, entry) in NODE_ADDR.iter().enumerate() {
        wait_until("forward[1] restored", Duration::from_secs(5), || {
            h(i, &hagw)["convergent"]["nat"]["withdrawn"]
                .as_array()
                .is_some_and(|w| w.is_empty())
        });
        assert_eq!(
            ask_tcp(&lab.client, &format!("{entry}:2201")),
            format!("guest1 saw {}", OWN[i])
        );
    }

    // Stop: hagw's table and gateway stay (keep_on_stop), foreign untouched.
    hagw[0].take().expect("xen1").proc.stop();
    assert_eq!(theirs, foreign(xen1), "foreign rules untouched by stop");
    assert!(xen1.sh("nft list tables").contains("table inet hagw"));
    assert_eq!(
        ask_tcp(&lab.client, "192.168.122.11:2202"),
        "guest2 saw 10.5.5.251"
    );

    // Someone flushes the whole ruleset: hagw's tables come back.
    hagw[0] = Some(start(xen1));
    xen1.sh("nft flush ruleset");
    wait_until("hagw's tables back", Duration::from_secs(3), || {
        let t = xen1.sh("nft list tables");
        t.contains("table inet hagw") && t.contains("table netdev hagw_hide_up0")
    });
    assert_eq!(
        ask_tcp(&lab.client, "192.168.122.11:2202"),
        "guest2 saw 10.5.5.251"
    );
    assert_eq!(gateway_mac(g1), mac(xen1, "guestbr0"));
    assert!(h(0, &hagw)["convergent"]["nat"]["restores"].as_u64() >= Some(1));

    // Not one ARP frame for the gateway crossed the VLAN, while ARP for the
    // nodes' own addresses did (the capture works).
    std::thread::sleep(Duration::from_millis(200));
    for c in &caps {
        c.stop();
        let log = c.log();
        assert!(
            !log.contains("10.5.5.254"),
            "ARP for the gateway on the VLAN:\n{log}"
        );
        assert!(
            log.contains("tell 10.5.5.251"),
            "no ARP seen at all?\n{log}"
        );
    }
    let st = h(0, &hagw);
    assert!(
        st["convergent"]["uplinks"][0]["dropped"].as_u64() > Some(0),
        "the filter did drop guests' ARP for the gateway: {st:#}"
    );
}
