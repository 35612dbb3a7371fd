//! The host's default route, as the kernel has it (`ip -j route show default`).

use std::net::Ipv4Addr;

use anyhow::Context;
use serde_json::Value;

use hagw_testkit::Netns;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefaultRoute {
    pub protocol: String,
    pub metric: Option<u64>,
    pub nexthops: Vec<Ipv4Addr>,
}

/// Every IPv4 default route of the main table in `ns`.
pub fn defaults(ns: &str) -> anyhow::Result<Vec<DefaultRoute>> {
    let out = Netns::attach(ns)?.try_ip(&["-j", "-4", "route", "show", "default"])?;
    parse(&out)
}

/// Every next hop of every default route in `ns`.
pub fn default_nexthops(ns: &str) -> anyhow::Result<Vec<Ipv4Addr>> {
    Ok(defaults(ns)?.into_iter().flat_map(|r| r.nexthops).collect())
}

pub fn parse(json: &str) -> anyhow::Result<Vec<DefaultRoute>> {
    if json.trim().is_empty() {
        return Ok(Vec::new());
    }
    let v: Value =
        serde_json::from_str(json).context("`ip -j route` printed something else than JSON")?;
    let mut routes = Vec::new();
    for r in v.as_array().map(Vec::as_slice).unwrap_or_default() {
        let gw = |o: &Value| {
            o.get("gateway")
                .and_then(Value::as_str)
                .and_then(|g| g.parse().ok())
        };
        let nexthops = match r.get("nexthops").and_then(Value::as_array) {
            Some(nhs) => nhs.iter().filter_map(gw).collect(),
            None => gw(r).into_iter().collect(),
        };
        routes.push(DefaultRoute {
            protocol: match r.get("protocol") {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Number(n)) => n.to_string(),
                _ => "boot".to_string(),
            },
            metric: r.get("metric").and_then(Value::as_u64),
            nexthops,
        });
    }
    Ok(routes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multipath_and_single() {
        let multi = r#"[{"dst":"default","protocol":"hagw","metric":20,"flags":[],"nexthops":[{"gateway":"192.168.100.20","dev":"eth1","weight":1,"flags":[]},{"gateway":"192.168.100.21","dev":"eth1","weight":1,"flags":[]}]}]"#;
        let r = parse(multi).expect("parses");
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].protocol, "hagw");
        assert_eq!(r[0].metric, Some(20));
        assert_eq!(
            r[0].nexthops,
            vec![
                Ipv4Addr::new(192, 168, 100, 20),
                Ipv4Addr::new(192, 168, 100, 21)
            ]
        );
        let single = r#"[{"dst":"default","gateway":"192.168.100.21","dev":"eth1","protocol":"199","metric":20,"flags":[]}]"#;
        let r = parse(single).expect("parses");
        assert_eq!(r[0].nexthops, vec![Ipv4Addr::new(192, 168, 100, 21)]);
        assert!(parse("").expect("parses").is_empty());
        assert!(parse("[]").expect("parses").is_empty());
    }
}
