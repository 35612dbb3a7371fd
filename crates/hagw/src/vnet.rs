//! Virtual networks (`[[vnet]]`): the checks that need the live system,
//! shared by `hagw check` and `hagw run` (the daemon's side is
//! [`crate::daemon::vnet`]).

use std::net::IpAddr;

use anyhow::Context;
use hagw_kernel::netlink::view::SystemView;
use ipnet::IpNet;

use crate::config::{Config, Problem};

/// Problems of `cfg`'s virtual networks in `view`: a bridge name that is an
/// existing link of another kind (a physical port, a veth...), a router that
/// is not inside the subnet of any interface (a next hop must be on-link).
pub fn check(cfg: &Config, view: &SystemView) -> Vec<Problem> {
    let mut out = Vec::new();
    let bridges: Vec<&str> = cfg.vnet.iter().map(|v| v.bridge.as_str()).collect();
    for (i, v) in cfg.vnet.iter().enumerate() {
        if let Some(l) = view.link(&v.bridge) {
            if l.kind.as_deref() != Some("bridge") {
                let what = match l.kind.as_deref() {
                    None if l.loopback => "the loopback".to_string(),
                    None => "a physical port".to_string(),
                    Some(k) => format!("a {k} link"),
                };
                out.push(Problem {
                    key: format!("vnet[{i}].bridge"),
                    message: format!(
                        "{} is {what}, not a bridge: hagw creates the bridge or adopts an existing one",
                        v.bridge
                    ),
                });
            }
        }
        for (j, r) in v.routers.iter().enumerate() {
            if on_link(view, *r, &bridges) {
                continue;
            }
            let key = if v.routers.len() == 1 {
                format!("vnet[{i}].router")
            } else {
                format!("vnet[{i}].router[{j}]")
            };
            out.push(Problem {
                key,
                message: format!(
                    "{r} is not reachable through any interface (no interface has an address in its subnet)"
                ),
            });
        }
    }
    out
}

/// Whether `a` is inside the subnet of an address of some interface other
/// than the virtual networks' bridges (link-local IPv6: assumed so).
fn on_link(view: &SystemView, a: IpAddr, bridges: &[&str]) -> bool {
    if let IpAddr::V6(v6) = a {
        if (v6.segments()[0] & 0xffc0) == 0xfe80 {
            return true;
        }
    }
    view.addrs.iter().any(|ad| {
        let skip = view
            .links
            .iter()
            .find(|l| l.index == ad.index)
            .is_none_or(|l| l.loopback || bridges.contains(&l.name.as_str()));
        !skip
            && ad
                .subnet()
                .is_some_and(|n: IpNet| n.contains(&a) && ad.addr != a)
    })
}

/// [`check`] on this network namespace (for `hagw check` and `hagw run`).
pub fn check_system(cfg: &Config) -> Vec<Problem> {
    if cfg.vnet.is_empty() {
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
        Ok(v) => check(cfg, &v),
        Err(e) => vec![Problem {
            key: "vnet".into(),
            message: format!("{e:#}"),
        }],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hagw_kernel::netlink::{addr::Addr, link::Link};

    fn link(index: u32, name: &str, kind: Option<&str>) -> Link {
        Link {
            index,
            name: name.into(),
            up: true,
            loopback: false,
            kind: kind.map(String::from),
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

    const CFG: &str = r#"
[[vnet]]
name = "net1"
bridge = "eth0"
address = "10.10.10.2/24"
router = ["192.168.56.101", "192.168.77.1"]
table = 101
"#;

    #[test]
    fn a_physical_port_and_an_unreachable_router_are_refused_with_their_keys() {
        let cfg = crate::config::parse(CFG).expect("config");
        let view = SystemView {
            links: vec![link(2, "eth0", None), link(3, "eth1", None)],
            addrs: vec![addr(3, "192.168.56.103", 24)],
            ..SystemView::default()
        };
        let p: Vec<String> = check(&cfg, &view).iter().map(ToString::to_string).collect();
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(
            p[0].starts_with("vnet[0].bridge: eth0 is a physical port"),
            "{p:?}"
        );
        assert!(
            p[1].starts_with("vnet[0].router[1]: 192.168.77.1 is not reachable"),
            "{p:?}"
        );
        let view = SystemView {
            links: vec![link(2, "eth0", Some("bridge")), link(3, "eth1", None)],
            addrs: vec![addr(3, "192.168.56.103", 24), addr(3, "192.168.77.5", 24)],
            ..SystemView::default()
        };
        assert!(check(&cfg, &view).is_empty());
    }
}
