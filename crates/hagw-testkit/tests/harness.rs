//! The harness proving itself (run as root).

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hagw_testkit::{addr, bridge, cleanup_stale, veth, Bird, Frr, Netns};

fn ns_exists(name: &str) -> bool {
    Path::new("/run/netns").join(name).exists()
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

#[test]
fn veth_ping_between_namespaces() {
    let a = Netns::new("a");
    let b = Netns::new("b");
    veth(&a, "eth0", &b, "eth0");
    addr(&a, "eth0", "10.99.0.1/24");
    addr(&b, "eth0", "10.99.0.2/24");
    a.sh("ping -c1 -W2 10.99.0.2");
    // The interfaces never showed up in the root namespace.
    assert!(!a.sh("ip -br link").is_empty());
    assert!(a.try_sh("ping -c1 -W1 10.99.0.3").is_err());
}

#[test]
fn bridge_joins_three_namespaces() {
    let sw = Netns::new("sw");
    let hosts: Vec<Netns> = (1..=2).map(|i| Netns::new(&format!("h{i}"))).collect();
    for (i, h) in hosts.iter().enumerate() {
        veth(h, "eth0", &sw, &format!("p{i}"));
        addr(h, "eth0", &format!("10.98.0.{}/24", i + 1));
    }
    bridge(&sw, "br0", &["p0", "p1"]);
    hosts[0].sh("ping -c1 -W2 10.98.0.2");
}

#[test]
fn run_opens_sockets_inside_the_namespace() {
    let a = Netns::new("ra");
    let b = Netns::new("rb");
    a.sh("ip link add br9 type bridge && ip link set br9 up");
    veth(&a, "va", &b, "vb");
    addr(&a, "va", "10.97.0.1/24");
    addr(&b, "vb", "10.97.0.2/24");

    let names: BTreeSet<String> = a.run(|| {
        nix::ifaddrs::getifaddrs()
            .expect("getifaddrs")
            .map(|i| i.interface_name)
            .collect()
    });
    let want: BTreeSet<String> = ["lo", "br9", "va"].iter().map(|s| s.to_string()).collect();
    assert_eq!(names, want);

    // A listener opened in b keeps belonging to b after the thread is gone;
    // a client opened in a reaches it over the veth.
    let listener = b.run(|| TcpListener::bind("10.97.0.2:0").expect("bind in b"));
    let port = listener.local_addr().expect("local addr").port();
    let mut client =
        a.run(move || TcpStream::connect(("10.97.0.2", port)).expect("connect from a"));
    let (mut server, peer) = listener.accept().expect("accept");
    assert_eq!(peer.ip().to_string(), "10.97.0.1");
    client.write_all(b"hi").expect("write");
    let mut buf = [0u8; 2];
    server.read_exact(&mut buf).expect("read");
    assert_eq!(&buf, b"hi");

    // run may borrow and propagates panics.
    let label = String::from("x");
    assert_eq!(a.run(|| label.len()), 1);
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| a.run(|| panic!("inner"))));
    assert!(r.is_err());
}

#[test]
fn sysctl_is_per_namespace() {
    let a = Netns::new("sc");
    a.sysctl("net.ipv4.ip_forward", "1");
    assert_eq!(a.sh("cat /proc/sys/net/ipv4/ip_forward").trim(), "1");
    let b = Netns::new("sc");
    assert_eq!(b.sh("cat /proc/sys/net/ipv4/ip_forward").trim(), "0");
}

#[test]
fn proc_is_stopped_on_drop() {
    let ns = Netns::new("proc");
    let p = ns.spawn("sh", &["-c", "echo started; exec sleep 1000"]);
    let pid = p.pid();
    ns.wait_for("sleep to log", Duration::from_secs(5), |_| {
        p.log().contains("started")
    });
    assert!(p.is_running());
    // It really runs inside the namespace.
    let inside = Command::new("ip")
        .args(["netns", "identify", &pid.to_string()])
        .output()
        .expect("ip netns identify");
    assert_eq!(String::from_utf8_lossy(&inside.stdout).trim(), ns.name());
    drop(p);
    assert!(!pid_alive(pid), "pid {pid} survived Proc drop");
}

#[test]
fn stubborn_and_escaped_processes_are_killed() {
    let ns = Netns::new("stub");
    // Ignores TERM; its background child (started before the trap, so it
    // does not inherit the ignore) escapes the Proc.
    let p = ns.spawn(
        "sh",
        &[
            "-c",
            "sleep 1000 & echo $!; trap '' TERM; while :; do sleep 0.1; done",
        ],
    );
    ns.wait_for("child pid", Duration::from_secs(5), |_| !p.log().is_empty());
    let child: u32 = p.log().trim().parse().expect("child pid");
    let t = Instant::now();
    p.stop_within(Duration::from_millis(200));
    assert!(!p.is_running());
    assert!(t.elapsed() < Duration::from_secs(3));
    assert!(pid_alive(child), "the escaped child should still run");
    let name = ns.name().to_string();
    drop(ns);
    assert!(!ns_exists(&name));
    // Orphan reaped by init (or whoever) shortly after the KILL/TERM.
    hagw_testkit::wait_until("escaped child to die", Duration::from_secs(5), || {
        !pid_alive(child)
            || std::fs::read_to_string(format!("/proc/{child}/stat"))
                .map(|s| s.contains(") Z "))
                .unwrap_or(true)
    });
}

#[test]
fn namespace_removed_after_panic() {
    let seen: Mutex<Option<(String, u32)>> = Mutex::new(None);
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let ns = Netns::new("pan");
        let p = ns.spawn("sleep", &["1000"]);
        *seen.lock().expect("lock") = Some((ns.name().to_string(), p.pid()));
        assert!(ns_exists(ns.name()));
        panic!("deliberate test panic");
    }));
    assert!(r.is_err());
    let (name, pid) = seen.lock().expect("lock").clone().expect("closure ran");
    assert!(!ns_exists(&name), "namespace {name} left behind");
    assert!(!pid_alive(pid), "process {pid} left behind");
    let list = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip");
    assert!(!String::from_utf8_lossy(&list.stdout).contains(&name));
}

#[test]
fn stale_namespaces_of_dead_processes_are_removed() {
    let _me = Netns::new("live"); // also runs the once-per-process cleanup
    let mut child = Command::new("true").spawn().expect("spawn true");
    let dead = child.id();
    child.wait().expect("wait");
    let b36 = |mut n: u32| {
        let mut s = Vec::new();
        loop {
            s.push(b"0123456789abcdefghijklmnopqrstuvwxyz"[(n % 36) as usize]);
            n /= 36;
            if n == 0 {
                break;
            }
        }
        s.reverse();
        String::from_utf8(s).expect("ascii")
    };
    let stale = format!("hgt{}-0-old", b36(dead));
    let foreign = format!("hgtx{}", std::process::id() % 10000); // not our format
    for n in [&stale, &foreign] {
        let ok = Command::new("ip")
            .args(["netns", "add", n])
            .status()
            .expect("ip");
        assert!(ok.success());
    }
    cleanup_stale();
    let foreign_left = ns_exists(&foreign);
    let _ = Command::new("ip").args(["netns", "del", &foreign]).status();
    assert!(!ns_exists(&stale), "stale {stale} not removed");
    assert!(
        foreign_left,
        "cleanup touched {foreign}, not made by the harness"
    );
    assert!(ns_exists(_me.name()), "cleanup removed a live namespace");
}

#[test]
fn frr_starts_and_answers_vtysh() {
    let ns = Netns::new("frr");
    let frr = Frr::start(
        &ns,
        "frr defaults datacenter\nhostname t1\nrouter bgp 65001\n bgp router-id 10.0.0.1\n",
        true,
    );
    assert!(frr.vtysh("show version").contains("FRRouting"));
    assert!(frr
        .vtysh("show running-config")
        .contains("router bgp 65001"));
    frr.vtysh("show bfd peers");
    let zebra = frr.daemon("zebra").pid();
    drop(frr);
    assert!(!pid_alive(zebra));
}

#[test]
fn bird_starts_and_answers_birdc() {
    let ns = Netns::new("bird");
    let bird = Bird::start(&ns, "router id 10.0.0.2;\nprotocol device {}\n");
    let status = bird.birdc("show status");
    assert!(status.contains("Daemon is up and running"), "{status}");
    let pid = bird.proc().pid();
    drop(bird);
    assert!(!pid_alive(pid));
}

#[test]
fn frr_and_bird_establish_bgp() {
    let f = Netns::new("f");
    let b = Netns::new("b");
    veth(&f, "eth0", &b, "eth0");
    addr(&f, "eth0", "10.96.0.1/30");
    addr(&b, "eth0", "10.96.0.2/30");
    let frr = Frr::start(
        &f,
        "frr defaults datacenter
hostname f
router bgp 65001
 bgp router-id 10.96.0.1
 no bgp ebgp-requires-policy
 neighbor 10.96.0.2 remote-as 65002
 neighbor 10.96.0.2 timers 1 3
 neighbor 10.96.0.2 timers connect 1
 address-family ipv4 unicast
  network 192.0.2.0/24
 exit-address-family
",
        false,
    );
    f.sh("ip route add blackhole 192.0.2.0/24");
    let bird = Bird::start(
        &b,
        "router id 10.96.0.2;
protocol device {}
protocol bgp up {
  local 10.96.0.2 as 65002;
  neighbor 10.96.0.1 as 65001;
  connect delay time 1;
  connect retry time 1;
  ipv4 { import all; export none; };
}
",
    );
    b.wait_for("BGP session to establish", Duration::from_secs(20), |_| {
        bird.birdc("show protocols up").contains("Established")
    });
    b.wait_for(
        "192.0.2.0/24 learned from FRR",
        Duration::from_secs(10),
        |_| {
            // birdc exits non-zero on "Network not found".
            bird.try_birdc("show route 192.0.2.0/24")
                .is_ok_and(|r| r.contains("192.0.2.0/24"))
        },
    );
    assert!(frr.vtysh("show bgp summary").contains("10.96.0.2"));
}

/// Deletes a persistent namespace when dropped, so a failing test leaves
/// nothing behind.
struct RemoveNamed(String);

impl Drop for RemoveNamed {
    fn drop(&mut self) {
        let _ = hagw_testkit::remove_named(&self.0);
    }
}

#[test]
fn a_persistent_namespace_outlives_its_handle_and_its_detached_process_too() {
    hagw_testkit::require_root();
    // Not a unique_name(): cleanup_stale must never take it for a leftover.
    let name = format!("hgtkeep{}", std::process::id());
    let _guard = RemoveNamed(name.clone());
    let ns = Netns::create_persistent(&name).expect("create");
    assert!(ns.is_persistent());
    assert!(matches!(
        Netns::create_persistent(&name),
        Err(hagw_testkit::Error::Exists(_))
    ));
    let log = std::env::temp_dir().join(format!("{name}.log"));
    let p = ns
        .spawn_detached("sleeper", Path::new("sleep"), &["600".into()], &[], &log)
        .expect("spawn");
    drop(ns);
    // Still there, and so is the process, found again by name.
    assert!(Netns::exists(&name));
    assert!(p.alive(), "{p:?}");
    let again = Netns::attach(&name).expect("attach");
    assert!(again.try_ip(&["link", "show", "lo"]).is_ok());
    assert!(hagw_testkit::ns_pids(&name).contains(&p.pid));
    // A record with another start time is another process: left alone.
    let other = hagw_testkit::ProcRecord {
        start_time: p.start_time + 1,
        ..p.clone()
    };
    assert!(!other.alive() && !other.stop(Duration::from_millis(100)));
    assert!(p.alive());
    assert!(p.stop(Duration::from_secs(2)));
    assert!(!p.alive());
    drop(again);
    hagw_testkit::remove_named(&name).expect("remove");
    assert!(!Netns::exists(&name));
    assert!(matches!(
        Netns::attach(&name),
        Err(hagw_testkit::Error::Missing(_))
    ));
    let _ = std::fs::remove_file(log);
}
