//! The NAT and anycast-gateway reconcilers against the real kernel, each in
//! a namespace of its own: rendered tables load, hagw's tables come back
//! after `nft flush ruleset` while foreign ones are left alone, a change of
//! networks only touches the set, an `nft` failure keeps the last good
//! table, and the gateway's addresses and uplink filters follow the links.
//! Needs root.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use hagw_kernel::{
    gateway::{Gateway, GatewaySpec},
    nat::{Forward, FullNat, Nat, NatConfig, NatSpec, Ports, Protocol, SourceNat},
    nft::Nft,
};
use hagw_testkit::{require_root, wait_until, Netns};

/// Within this the table is back after someone deletes it (events).
const RESTORE: Duration = Duration::from_secs(2);

fn spec(networks: &[&str]) -> NatSpec {
    NatSpec {
        sources: vec![
            SourceNat {
                name: "nat.source[0]".into(),
                networks: networks.iter().map(|n| n.parse().unwrap()).collect(),
                out_interface: "wan0".into(),
                to: Some("192.168.122.11".parse().unwrap()),
            },
            SourceNat {
                name: "nat.source[1]".into(),
                networks: vec![
                    "fd00:5::/64".parse().unwrap(),
                    "10.7.0.0/16".parse().unwrap(),
                ],
                out_interface: "wan0".into(),
                to: None,
            },
        ],
        forwards: vec![
            Forward {
                name: "nat.forward[0]".into(),
                in_interface: "wan0".into(),
                protocol: Protocol::Tcp,
                ports: Ports::one(2201).unwrap(),
                to: "10.5.5.201".parse().unwrap(),
                to_port: Some(22),
                full_nat: Some(FullNat {
                    out_interface: "guestbr0".into(),
                    source: "10.5.5.251".parse().unwrap(),
                }),
            },
            Forward {
                name: "nat.forward[1]".into(),
                in_interface: "wan0".into(),
                protocol: Protocol::Udp,
                ports: Ports::new(2200, 2299).unwrap(),
                to: "10.5.5.202".parse().unwrap(),
                to_port: None,
                full_nat: Some(FullNat {
                    out_interface: "guestbr0".into(),
                    source: "10.5.5.251".parse().unwrap(),
                }),
            },
            Forward {
                name: "nat.forward[2]".into(),
                in_interface: "wan0".into(),
                protocol: Protocol::Tcp,
                ports: Ports::one(80).unwrap(),
                to: "fd00:5::10".parse().unwrap(),
                to_port: Some(8080),
                full_nat: Some(FullNat {
                    out_interface: "guestbr0".into(),
                    source: "fd00:5::251".parse().unwrap(),
                }),
            },
        ],
    }
}

fn tables(ns: &Netns) -> String {
    ns.sh("nft list tables")
}

#[test]
fn nat_table_is_kept_restored_and_only_ours_is_touched() {
    require_root();
    let ns = Netns::new("nat");
    ns.sh("nft add table ip foreign && nft add chain ip foreign c '{ type filter hook input priority 0; }' && nft add rule ip foreign c counter");
    ns.sh("iptables -t nat -A POSTROUTING -o wan0 -j MASQUERADE -m comment --comment theirs");
    let foreign_before = ns.sh("nft list table ip foreign");
    ns.block_on(|| async {
        let nat = Nat::start(NatConfig::default(), spec(&["10.5.5.0/24"]))
            .await
            .expect("start");
        let snap = nat.snapshot().await;
        assert!(snap.in_sync && snap.error.is_none(), "{snap:?}");
        let listed = ns.sh("nft list table inet hagw");
        assert!(listed.contains("dnat ip to 10.5.5.201:22"), "{listed}");
        assert!(listed.contains("dnat ip6 to [fd00:5::10]:8080"), "{listed}");
        assert!(listed.contains("elements = { 10.5.5.0/24 }"), "{listed}");
        let counters = nat.counters().await.expect("counters");
        let names: Vec<_> = counters.iter().filter_map(|c| c.comment.clone()).collect();
        assert!(names.contains(&"nat.forward[1] full-nat".to_string()), "{names:?}");
        assert!(names.contains(&"nat.source[1] ipv6".to_string()), "{names:?}");

        // Someone flushes everything: ours comes back, theirs is theirs.
        ns.sh("nft flush ruleset");
        wait_until("the nat table restored", RESTORE, || {
            tables(&ns).contains("table inet hagw")
        });
        // Someone empties one chain of ours: restored too.
        ns.sh("nft flush chain inet hagw prerouting");
        wait_until("the prerouting chain restored", RESTORE, || {
            ns.sh("nft list chain inet hagw prerouting").contains("nat.forward[2]")
        });
        assert_eq!(nat.snapshot().await.restores, 2);

        // (The flush took the foreign rules too: theirs again.)
        ns.sh("nft add table ip foreign && nft add chain ip foreign c '{ type filter hook input priority 0; }' && nft add rule ip foreign c counter");
        ns.sh("iptables -t nat -A POSTROUTING -o wan0 -j MASQUERADE -m comment --comment theirs");
        // A network added: only the set changes, the rules keep their counters.
        let before = ns.sh("nft -a list chain inet hagw postrouting");
        nat.set(spec(&["10.5.5.0/24", "10.6.0.0/16"]));
        let snap = nat.snapshot().await;
        assert_eq!(snap.set_updates, 1, "{snap:?}");
        assert!(ns.sh("nft list set inet hagw snat_0_v4").contains("10.5.5.0/24, 10.6.0.0/16"));
        assert_eq!(before, ns.sh("nft -a list chain inet hagw postrouting"), "rules untouched");

        // A withdrawn forward leaves the table; restored, it comes back.
        nat.withdraw("nat.forward[0]", true);
        let snap = nat.snapshot().await;
        assert_eq!(snap.withdrawn, vec!["nat.forward[0]".to_string()]);
        assert!(!ns.sh("nft list table inet hagw").contains("comment \"nat.forward[0]\""));
        nat.withdraw("nat.forward[0]", false);
        nat.snapshot().await;
        assert!(ns.sh("nft list table inet hagw").contains("comment \"nat.forward[0]\""));
        // Our own transactions (and their events) are never taken for
        // someone else's.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let snap = nat.snapshot().await;
        assert_eq!((snap.restores, snap.replaces), (2, 5), "{snap:?}");

        nat.shutdown(true).await;
    });
    assert!(!tables(&ns).contains("inet hagw"), "removed on shutdown");
    assert_eq!(foreign_before, ns.sh("nft list table ip foreign"));
    assert!(ns.sh("iptables -t nat -S POSTROUTING").contains("theirs"));
}

#[test]
fn an_nft_failure_keeps_the_last_good_table_and_says_why() {
    require_root();
    let ns = Netns::new("natfail");
    // An nft that refuses every script once the flag file exists.
    let flag = ns.dir().join("fail");
    let wrapper = ns.dir().join("nft");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nif [ -e {} ] && [ \"$1\" = -f ]; then echo 'Error: simulated refusal' >&2; exit 1; fi\nexec nft \"$@\"\n",
            flag.display()
        ),
    )
    .unwrap();
    ns.sh(&format!("chmod +x {}", wrapper.display()));
    ns.block_on(|| async {
        let cfg = NatConfig {
            nft: wrapper.display().to_string(),
            ..NatConfig::default()
        };
        let nat = Nat::start(cfg, spec(&["10.5.5.0/24"]))
            .await
            .expect("start");
        assert!(nat.snapshot().await.in_sync);
        let good = ns.sh("nft list table inet hagw");
        std::fs::write(&flag, "").unwrap();
        let mut changed = spec(&["10.5.5.0/24"]);
        changed.forwards.pop();
        nat.set(changed);
        let snap = nat.snapshot().await;
        assert!(!snap.in_sync);
        assert!(
            snap.error
                .as_deref()
                .is_some_and(|e| e.contains("simulated refusal")),
            "{snap:?}"
        );
        assert_eq!(
            good,
            ns.sh("nft list table inet hagw"),
            "the last good table stays"
        );
        std::fs::remove_file(&flag).unwrap();
        // The retry (1 s backoff) loads it and clears the error.
        wait_until("the retry to succeed", Duration::from_secs(5), || {
            !ns.sh("nft list table inet hagw").contains("fd00:5::10")
        });
        let snap = nat.snapshot().await;
        assert!(snap.in_sync && snap.error.is_none(), "{snap:?}");
        nat.shutdown(true).await;
    });
}

#[test]
fn generations_and_table_presence_come_from_netlink() {
    require_root();
    let ns = Netns::new("natgen");
    ns.block_on(|| async {
        use hagw_kernel::nft::{watch, Family};
        let g0 = watch::generation().await.expect("generation");
        assert!(!watch::table_exists(Family::Inet, "hagw")
            .await
            .expect("get"));
        ns.sh("nft add table inet hagw");
        let g1 = watch::generation().await.expect("generation");
        assert!(g1 > g0, "{g0} -> {g1}");
        assert!(watch::table_exists(Family::Inet, "hagw")
            .await
            .expect("get"));
        assert!(!watch::table_exists(Family::Ip, "hagw").await.expect("get"));
        ns.sh("nft add chain inet hagw c && nft add rule inet hagw c counter comment '\"nat.forward[7]\"' && nft add rule inet hagw c accept");
        let r = watch::rules(Family::Inet, "hagw").await.expect("dump");
        assert_eq!(r.len(), 2, "{r:?}");
        assert_eq!(r[0].chain, "c");
        assert_eq!(r[0].comment.as_deref(), Some("nat.forward[7]"));
        assert_eq!(r[1].comment, None);
        assert!(r[1].handle > r[0].handle);
        assert!(ns.sh("nft -a list chain inet hagw c").contains(&format!("# handle {}", r[0].handle)));
        assert!(watch::rules(Family::Inet, "nope").await.expect("dump").is_empty());
    });
}

#[test]
fn rendered_rulesets_are_valid_nft() {
    require_root();
    let ns = Netns::new("natcheck");
    let rs = hagw_kernel::nat::render(&spec(&["10.5.5.0/24", "10.9.0.0/16"])).unwrap();
    let t = hagw_kernel::nft::Table::new(hagw_kernel::nft::Family::Inet, "hagw").unwrap();
    Nft::in_netns(ns.name())
        .run_blocking(&t.replace_script(&rs.body))
        .expect("loads");
    let body = hagw_kernel::gateway::hide_body(
        "lo",
        &["10.5.5.254".parse().unwrap(), "fd00:5::fe".parse().unwrap()],
    )
    .unwrap();
    let t = hagw_kernel::gateway::hide_table("lo").unwrap();
    Nft::in_netns(ns.name())
        .run_blocking(&t.replace_script(&body))
        .expect("loads");
}

#[test]
fn gateway_addresses_and_filters_follow_the_links() {
    require_root();
    let ns = Netns::new("gw");
    ns.sh("ip link add guestbr0 type bridge && ip link set guestbr0 up && ip link add up0 type veth peer name up0p && ip link set up0 up");
    // A previous run's filter for an uplink no longer configured.
    ns.sh("nft add table netdev hagw_hide_old0");
    let g = GatewaySpec {
        name: "gateway[0]".into(),
        bridge: "guestbr0".into(),
        address: "10.5.5.254/24".parse().unwrap(),
        node_address: Some("10.5.5.251/24".parse().unwrap()),
        hide_on: vec!["up0".into(), "up1".into()],
        keep_on_stop: false,
    };
    ns.block_on(|| async {
        let gw = Gateway::start("nft", vec![g.clone()]).await.expect("start");
        let snap = gw.snapshot().await;
        assert!(snap.gateways[0].addresses, "{snap:?}");
        let a = ns.sh("ip -4 -o addr show dev guestbr0");
        let first = a.find("10.5.5.251").unwrap();
        let second = a.find("10.5.5.254").unwrap();
        assert!(first < second, "the node's own address is the primary: {a}");
        assert!(a.contains("10.5.5.254/24 scope global secondary"), "{a}");
        let t = tables(&ns);
        assert!(t.contains("netdev hagw_hide_up0"), "{t}");
        assert!(!t.contains("hagw_hide_up1"), "up1 does not exist yet: {t}");
        assert!(!t.contains("hagw_hide_old0"), "stale filter removed: {t}");
        assert_eq!(
            ns.sh("cat /proc/sys/net/ipv4/conf/guestbr0/arp_announce")
                .trim(),
            "2"
        );
        assert_eq!(ns.sh("cat /proc/sys/net/ipv4/ip_forward").trim(), "1");

        // The uplink appears: its filter follows.
        ns.sh("ip link add up1 type veth peer name up1p");
        wait_until("up1's filter", RESTORE, || {
            tables(&ns).contains("hagw_hide_up1")
        });
        // Addresses removed by hand come back, the node's own first.
        ns.sh("ip addr flush dev guestbr0");
        wait_until("the addresses back", RESTORE, || {
            ns.sh("ip -4 -o addr show dev guestbr0")
                .contains("10.5.5.254/24 scope global secondary")
        });
        // The filters come back after a flush.
        ns.sh("nft flush ruleset");
        wait_until("the filters back", RESTORE, || {
            let t = tables(&ns);
            t.contains("hagw_hide_up0") && t.contains("hagw_hide_up1")
        });
        // The bridge re-created (a hypervisor restart): addresses again.
        ns.sh(
            "ip link del guestbr0 && ip link add guestbr0 type bridge && ip link set guestbr0 up",
        );
        wait_until("the addresses on the new bridge", RESTORE, || {
            ns.sh("ip -4 -o addr show dev guestbr0")
                .contains("10.5.5.254")
        });
        gw.shutdown(true).await;
    });
    assert!(!ns.sh("ip -4 -o addr show dev guestbr0").contains("10.5.5."));
    assert!(!tables(&ns).contains("hagw_hide"));
}
