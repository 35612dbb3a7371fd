//! VRRP (`[[vrrp]]`): the daemon's side beside the driver
//! ([`crate::daemon::vrrp`]) — the live-system check shared by `hagw check`
//! and `hagw run`, and the status section.

use std::fmt::Write;
use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;

use anyhow::Context;
use hagw_kernel::netlink::view::SystemView;
use ipnet::IpNet;

use crate::config::{Config, Problem, Vrrp};
use crate::daemon::vrrp::VrrpStatus;

/// Checks what needs the live system (this network namespace): the
/// interface exists; each unicast peer is on one of its subnets; no VIP is
/// an address of another interface; an owner's (priority 255) VIPs are
/// addresses of its interface; a configured source is not another
/// interface's; hooks are executable files. A source not assigned anywhere
/// yet is not a problem: the instance waits for it (keepalived #1847).
pub fn check_system(cfg: &Config) -> Vec<Problem> {
    if cfg.vrrp.is_empty() {
        return Vec::new();
    }
    let view = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
        .and_then(|rt| {
            rt.block_on(hagw_kernel::netlink::view::inspect())
                .context("cannot read the interfaces")
        });
    match view {
        Ok(v) => check(&cfg.vrrp, &v),
        Err(e) => vec![Problem {
            key: "vrrp".into(),
            message: format!("{e:#}"),
        }],
    }
}

/// [`check_system`] on a given view (plain, testable).
pub fn check(instances: &[Vrrp], view: &SystemView) -> Vec<Problem> {
    let mut out = Vec::new();
    let mut problem = |key: String, message: String| out.push(Problem { key, message });
    let name_of = |index: u32| {
        view.links
            .iter()
            .find(|l| l.index == index)
            .map_or_else(|| format!("#{index}"), |l| l.name.clone())
    };
    for (i, v) in instances.iter().enumerate() {
        let key = format!("vrrp[{i}]");
        for (hook, cmd) in [
            ("on_master", &v.hooks.on_master),
            ("on_backup", &v.hooks.on_backup),
            ("on_fault", &v.hooks.on_fault),
        ] {
            let Some(program) = cmd.as_deref().and_then(|c| c.split_whitespace().next()) else {
                continue;
            };
            match std::fs::metadata(program) {
                Err(e) => problem(format!("{key}.{hook}"), format!("{program}: {e}")),
                Ok(m) if !m.is_file() || m.permissions().mode() & 0o111 == 0 => problem(
                    format!("{key}.{hook}"),
                    format!("{program} is not an executable file"),
                ),
                Ok(_) => {}
            }
        }
        let Some(link) = view.link(&v.interface) else {
            problem(
                format!("{key}.interface"),
                format!("\"{}\" does not exist", v.interface),
            );
            continue;
        };
        let index = link.index;
        let subnets: Vec<IpNet> = view
            .addrs
            .iter()
            .filter(|a| a.index == index && a.global)
            .filter_map(|a| a.subnet())
            .collect();
        for (j, p) in v.peers.iter().enumerate() {
            if matches!(p, IpAddr::V6(a) if a.is_unicast_link_local()) {
                continue;
            }
            let same_family: Vec<&IpNet> = subnets
                .iter()
                .filter(|n| n.addr().is_ipv4() == p.is_ipv4())
                .collect();
            // No address of that family yet: nothing to judge by.
            if !same_family.is_empty() && !same_family.iter().any(|n| n.contains(p)) {
                problem(
                    format!("{key}.peers[{j}]"),
                    format!(
                        "{p} is not on a subnet of {} ({}): adverts would leave through the wrong interface or not at all",
                        v.interface,
                        same_family
                            .iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                );
            }
        }
        for (k, n) in v.virtual_addresses.iter().enumerate() {
            let holders: Vec<u32> = view
                .addrs
                .iter()
                .filter(|a| a.addr == n.addr())
                .map(|a| a.index)
                .collect();
            if let Some(other) = holders.iter().find(|&&h| h != index) {
                problem(
                    format!("{key}.virtual_addresses[{k}]"),
                    format!(
                        "{} is already an address of {}, not of {}",
                        n.addr(),
                        name_of(*other),
                        v.interface
                    ),
                );
            } else if v.owner() && !holders.contains(&index) {
                problem(
                    format!("{key}.priority"),
                    format!(
                        "255 makes this the address owner, but {} is not an address of {} (add it, or use a priority below 255)",
                        n.addr(),
                        v.interface
                    ),
                );
            }
        }
        if let Some(s) = v.source {
            if let Some(a) = view.addrs.iter().find(|a| a.addr == s && a.index != index) {
                problem(
                    format!("{key}.source"),
                    format!(
                        "{s} is an address of {}, not of {}",
                        name_of(a.index),
                        v.interface
                    ),
                );
            }
        }
    }
    out
}

/// The VRRP part of `hagw status` without `--json`.
pub fn status_text(v: &[VrrpStatus]) -> String {
    let mut s = String::from("\nvrrp\n");
    for i in v {
        let _ = writeln!(
            s,
            "  {} ({} VRID {} {}, {}): {} priority {}/{}, master {}{}, since {}{}",
            i.name,
            i.interface,
            i.vrid,
            i.family,
            i.transport,
            i.state,
            i.priority,
            i.configured_priority,
            i.master.as_deref().unwrap_or("-"),
            i.master_priority
                .map(|p| format!(" (priority {p})"))
                .unwrap_or_default(),
            i.since_secs.map_or("-".into(), |t| format!("{t:.1}s")),
            i.last_transition
                .as_deref()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default(),
        );
        let c = &i.counters;
        let vips: Vec<String> = i
            .vips
            .iter()
            .map(|a| {
                let mark = match (a.in_kernel, a.foreign) {
                    (true, true) => " foreign",
                    (true, false) => " up",
                    (false, _) => " down",
                };
                format!("{}{mark}", a.address)
            })
            .collect();
        let _ = writeln!(
            s,
            "    adverts in {} out {} dropped {} (ttl {}, not peer {}, checksum {}, version {}, malformed {}); vips {}{}",
            i.adverts_in,
            i.adverts_out,
            i.dropped,
            c.dropped_ttl,
            c.dropped_not_peer,
            c.dropped_checksum,
            c.dropped_version,
            c.dropped_malformed,
            if vips.is_empty() { "-".into() } else { vips.join(", ") },
            i.vip_latency_ms
                .map(|l| format!(" (last added in {l:.2} ms)"))
                .unwrap_or_default(),
        );
        for (what, v) in [
            ("fault", &i.fault),
            ("last drop", &i.last_drop),
            ("last error", &i.last_error),
        ] {
            if let Some(v) = v {
                let _ = writeln!(s, "    {what}: {v}");
            }
        }
        if let Some(c) = &i.cloud {
            let _ = writeln!(
                s,
                "    cloud: owner {} (confirmed {}), last claim {}{}{}",
                c.owner.as_deref().unwrap_or("-"),
                c.confirmed_secs_ago
                    .map_or("-".into(), |t| format!("{t:.1}s ago")),
                c.last_claim.as_deref().unwrap_or("-"),
                c.last_claim_ms
                    .map(|l| format!(" in {l:.0} ms"))
                    .unwrap_or_default(),
                c.last_error
                    .as_deref()
                    .map(|e| format!("  error: {e}"))
                    .unwrap_or_default(),
            );
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::vrrp::{VipStatusJson, VrrpCounters};
    use hagw_kernel::netlink::addr::Addr;
    use hagw_kernel::netlink::link::Link;

    fn link(index: u32, name: &str) -> Link {
        Link {
            index,
            name: name.into(),
            up: true,
            loopback: false,
            kind: None,
            master: None,
        }
    }

    fn addr(index: u32, a: &str, len: u8) -> Addr {
        Addr {
            index,
            addr: a.parse().expect("ip"),
            prefix_len: len,
            global: true,
            secondary: false,
        }
    }

    fn vrrp(text: &str) -> Vec<Vrrp> {
        crate::config::parse(text).expect("valid").vrrp
    }

    #[test]
    fn live_problems_are_named_by_their_key() {
        let view = SystemView {
            links: vec![link(2, "eth0"), link(3, "eth1")],
            addrs: vec![
                addr(2, "10.0.0.2", 24),
                addr(3, "10.1.0.2", 24),
                addr(3, "10.0.0.100", 32),
            ],
            ..SystemView::default()
        };
        let v = vrrp(
            r#"
[[vrrp]]
name = "a"
interface = "eth0"
vrid = 1
peers = ["10.0.0.3", "10.9.0.3"]
source = "10.1.0.2"
virtual_addresses = ["10.0.0.100/24"]
[[vrrp]]
name = "own"
interface = "eth0"
vrid = 2
priority = 255
virtual_addresses = ["10.0.0.2/24", "10.0.0.77/24"]
[[vrrp]]
name = "gone"
interface = "eth7"
vrid = 3
virtual_addresses = ["10.0.0.101/24"]
on_master = "/nonexistent/hook.sh"
"#,
        );
        let p: Vec<String> = check(&v, &view).iter().map(ToString::to_string).collect();
        assert_eq!(
            p,
            vec![
                "vrrp[0].peers[1]: 10.9.0.3 is not on a subnet of eth0 (10.0.0.0/24): adverts would leave through the wrong interface or not at all",
                "vrrp[0].virtual_addresses[0]: 10.0.0.100 is already an address of eth1, not of eth0",
                "vrrp[0].source: 10.1.0.2 is an address of eth1, not of eth0",
                "vrrp[1].priority: 255 makes this the address owner, but 10.0.0.77 is not an address of eth0 (add it, or use a priority below 255)",
                "vrrp[2].on_master: /nonexistent/hook.sh: No such file or directory (os error 2)",
                "vrrp[2].interface: \"eth7\" does not exist",
            ]
        );
        // A source not assigned yet is waited for, not refused (#1847).
        let ok = vrrp("[[vrrp]]\nname = \"a\"\ninterface = \"eth0\"\nvrid = 1\nsource = \"10.0.0.9\"\npeers = [\"10.0.0.3\"]\nvirtual_addresses = [\"10.0.0.100/24\"]\n");
        let view = SystemView {
            addrs: vec![addr(2, "10.0.0.2", 24)],
            ..view
        };
        assert!(check(&ok, &view).is_empty());
    }

    #[test]
    fn status_json_and_text() {
        let st = VrrpStatus {
            name: "gw".into(),
            interface: "eth0".into(),
            vrid: 10,
            family: "IPv4".into(),
            state: "Master".into(),
            priority: 150,
            configured_priority: 200,
            master: Some("10.0.0.2".into()),
            master_priority: Some(150),
            source: Some("10.0.0.2".into()),
            transport: "unicast to 10.0.0.3".into(),
            since_secs: Some(3.25),
            last_transition: Some("master down timer".into()),
            adverts_in: 5,
            adverts_out: 9,
            dropped: 2,
            counters: VrrpCounters {
                dropped_ttl: 1,
                dropped_not_peer: 1,
                ..VrrpCounters::default()
            },
            vips: vec![VipStatusJson {
                address: "10.0.0.100/24".into(),
                in_kernel: true,
                foreign: false,
            }],
            vip_latency_ms: Some(0.42),
            announcements: 3,
            fault: None,
            last_drop: Some("from 10.0.0.9: 10.0.0.9 is not a configured peer".into()),
            last_error: None,
            cloud: None,
        };
        let j = serde_json::to_value(&st).expect("json");
        assert_eq!(j["state"], "Master");
        assert_eq!(j["counters"]["dropped_ttl"], 1);
        assert!(j.get("cloud").is_none());
        let t = status_text(&[st]);
        assert!(
            t.contains("gw (eth0 VRID 10 IPv4, unicast to 10.0.0.3): Master priority 150/200, master 10.0.0.2 (priority 150), since 3.2s (master down timer)"),
            "{t}"
        );
        assert!(t.contains("adverts in 5 out 9 dropped 2 (ttl 1, not peer 1, checksum 0, version 0, malformed 0); vips 10.0.0.100/24 up (last added in 0.42 ms)"), "{t}");
        assert!(t.contains("last drop: from 10.0.0.9"), "{t}");
    }
}
