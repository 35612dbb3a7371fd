//! Benchmark: applying one change (one port forward added, one removed) to
//! a NAT ruleset of N full-NAT port forwards, four ways, in one run:
//!
//! 1. hagw: `Nat::set` until the reconciler reports the table in sync
//!    (render + one `nft -f` transaction replacing `inet hagw`);
//! 2. `nft -f` of the same ruleset written by hand, the seed's way
//!    (`flush ruleset`, then the whole table);
//! 3. `iptables-restore` of the same rules (the nat table replaced);
//! 4. `nft -f` of an incremental change by hand: `add rule` + `delete rule
//!    handle H` in one transaction (what a hand-tuned script could do).
//!
//! Run it inside a scratch network namespace (it flushes that namespace's
//! ruleset): `bench/nat-apply.sh` does. Usage: `nat_apply [N] [ROUNDS]`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    fmt::Write as _,
    io::Write as _,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use hagw_kernel::nat::{Forward, FullNat, Nat, NatConfig, NatSpec, Ports, Protocol, SourceNat};

const FIRST_PORT: u16 = 10_000;

fn guest(i: u16) -> std::net::Ipv4Addr {
    std::net::Ipv4Addr::new(10, 5, (i / 250) as u8 + 5, (i % 250) as u8 + 2)
}

/// Forwards `range` (port FIRST_PORT+i to guest(i):22, full-NAT).
fn spec(range: impl Iterator<Item = u16>) -> NatSpec {
    NatSpec {
        sources: vec![SourceNat {
            name: "nat.source[0]".into(),
            networks: vec!["10.5.0.0/16".parse().unwrap()],
            out_interface: "xenbr0".into(),
            to: Some("192.168.122.11".parse().unwrap()),
        }],
        forwards: range
            .map(|i| Forward {
                name: format!("nat.forward[{i}]"),
                in_interface: "xenbr0".into(),
                protocol: Protocol::Tcp,
                ports: Ports::one(FIRST_PORT + i).unwrap(),
                to: guest(i).into(),
                to_port: Some(22),
                full_nat: Some(FullNat {
                    out_interface: "guestbr0".into(),
                    source: "10.5.5.251".parse().unwrap(),
                }),
            })
            .collect(),
    }
}

/// The same rules as nft text, the way the seed writes them.
fn by_hand_nft(range: impl Iterator<Item = u16> + Clone) -> String {
    let mut s = String::from("flush ruleset\ntable ip nat {\n\tchain prerouting {\n\t\ttype nat hook prerouting priority dstnat;\n");
    for i in range.clone() {
        let _ = writeln!(
            s,
            "\t\tiif \"xenbr0\" fib daddr type local tcp dport {} dnat to {}:22",
            FIRST_PORT + i,
            guest(i)
        );
    }
    s.push_str("\t}\n\tchain postrouting {\n\t\ttype nat hook postrouting priority srcnat;\n");
    for i in range {
        let _ = writeln!(
            s,
            "\t\toif \"guestbr0\" ct status dnat ip daddr {} tcp dport 22 ct original proto-dst {} snat to 10.5.5.251",
            guest(i),
            FIRST_PORT + i
        );
    }
    s.push_str("\t\tip saddr 10.5.0.0/16 oif \"xenbr0\" snat to 192.168.122.11\n\t}\n}\n");
    s
}

/// The same rules for `iptables-restore`.
fn by_hand_iptables(range: impl Iterator<Item = u16> + Clone) -> String {
    let mut s = String::from("*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n");
    for i in range.clone() {
        let _ = writeln!(
            s,
            "-A PREROUTING -i xenbr0 -m addrtype --dst-type LOCAL -p tcp --dport {} -j DNAT --to-destination {}:22",
            FIRST_PORT + i,
            guest(i)
        );
    }
    for i in range {
        let _ = writeln!(
            s,
            "-A POSTROUTING -o guestbr0 -d {}/32 -p tcp --dport 22 -m conntrack --ctstate DNAT --ctorigdstport {} -j SNAT --to-source 10.5.5.251",
            guest(i),
            FIRST_PORT + i
        );
    }
    s.push_str(
        "-A POSTROUTING -s 10.5.0.0/16 -o xenbr0 -j SNAT --to-source 192.168.122.11\nCOMMIT\n",
    );
    s
}

fn feed(cmd: &mut Command, input: &str) -> Duration {
    let t = Instant::now();
    let mut c = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    c.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let out = c.wait_with_output().unwrap();
    let d = t.elapsed();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    d
}

fn sh(script: &str) -> String {
    let out = Command::new("sh").args(["-c", script]).output().unwrap();
    assert!(out.status.success(), "{script}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn report(what: &str, mut v: Vec<Duration>) {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{what:<58} median {:>7.1} ms   min {:>7.1}   p90 {:>7.1}   (n={})",
        ms(v[v.len() / 2]),
        ms(v[0]),
        ms(v[v.len() * 9 / 10]),
        v.len()
    );
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let n: u16 = args.next().map_or(1000, |a| a.parse().unwrap());
    let rounds: u16 = args.next().map_or(20, |a| a.parse().unwrap());
    // Round r: forwards r+1 ..= n+r (forward r removed, forward n+r added).
    let window = |r: u16| r..n + r;
    println!("{n} full-NAT port forwards (DNAT + SNAT each: {} rules), one added and one removed per change, {rounds} changes each way\n", 2 * n + 1);

    sh("nft flush ruleset");
    let t = Instant::now();
    let rs = hagw_kernel::nat::render(&spec(window(0))).unwrap();
    let render = t.elapsed();
    let nat = Nat::start(NatConfig::default(), spec(window(0)))
        .await
        .unwrap();
    let mut hagw = Vec::new();
    for r in 1..=rounds {
        let t = Instant::now();
        nat.set(spec(window(r)));
        let snap = nat.snapshot().await;
        hagw.push(t.elapsed());
        assert!(snap.in_sync, "{snap:?}");
    }
    let rules = sh("nft -a list table inet hagw | grep -c comment")
        .trim()
        .to_string();
    nat.shutdown(true).await;
    println!(
        "hagw renders the table in {:.1} ms ({} bytes, {rules} rules)",
        render.as_secs_f64() * 1000.0,
        rs.body.len()
    );
    report(
        "hagw: Nat::set, whole table replaced (one transaction)",
        hagw,
    );

    let mut nft = Vec::new();
    for r in 1..=rounds {
        nft.push(feed(
            Command::new("nft").args(["-f", "-"]),
            &by_hand_nft(window(r)),
        ));
    }
    report("nft -f by hand: flush ruleset + whole table", nft);

    sh("nft flush ruleset");
    let mut ipt = Vec::new();
    for r in 1..=rounds {
        ipt.push(feed(
            &mut Command::new("iptables-restore"),
            &by_hand_iptables(window(r)),
        ));
    }
    report("iptables-restore (nf_tables backend): nat table", ipt);

    sh("nft flush ruleset");
    feed(
        Command::new("nft").args(["-f", "-"]),
        &by_hand_nft(window(0)),
    );
    let mut inc = Vec::new();
    for r in 1..=rounds {
        // The handles of forward r-1's rules, looked up outside the timing.
        let port = FIRST_PORT + r - 1;
        let handle = |chain: &str, needle: String| {
            sh(&format!("nft -a list chain ip nat {chain}"))
                .lines()
                .find(|l| l.contains(&needle))
                .and_then(|l| l.rsplit("handle ").next())
                .map(|h| h.trim().to_string())
                .expect("handle")
        };
        let dnat = handle("prerouting", format!("dport {port} "));
        let snat = handle("postrouting", format!("proto-dst {port} "));
        let i = n + r - 1;
        let script = format!(
            "add rule ip nat prerouting iif \"xenbr0\" fib daddr type local tcp dport {} dnat to {}:22\n\
             add rule ip nat postrouting oif \"guestbr0\" ct status dnat ip daddr {} tcp dport 22 ct original proto-dst {} snat to 10.5.5.251\n\
             delete rule ip nat prerouting handle {dnat}\ndelete rule ip nat postrouting handle {snat}\n",
            FIRST_PORT + i,
            guest(i),
            guest(i),
            FIRST_PORT + i
        );
        inc.push(feed(Command::new("nft").args(["-f", "-"]), &script));
    }
    report(
        "nft -f by hand, incremental: 2 add rule + 2 delete handle",
        inc,
    );
    sh("nft flush ruleset");
}
