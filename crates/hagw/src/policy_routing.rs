//! Multi-NIC source policy routing (`[policy_routing]`): the daemon's side of
//! [`hagw_kernel::policy`] — config translation, the live-system check shared
//! by `hagw check` and `hagw run`, and the status section.

use std::fmt::Write;
use std::path::Path;

use anyhow::Context;
use hagw_kernel::policy_routing::{
    CheckKey, GatewayOverride, PolicyConfig, PolicySnapshot, PolicySync,
};
use serde::{Deserialize, Serialize};

use crate::config::{Config, ConfigError, PolicyRouting, Problem};

/// `policy_routing` of `hagw status --json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PolicyStatus {
    /// The interface left to the main table.
    pub primary: Option<String>,
    /// A problem that pauses policy routing as a whole (no primary).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub interfaces: Vec<PolicyInterfaceStatus>,
}

/// One non-primary interface with global addresses.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PolicyInterfaceStatus {
    pub name: String,
    pub ifindex: u32,
    pub table: u32,
    pub up: bool,
    /// The source addresses with a `from ADDR lookup TABLE` rule.
    pub rules: Vec<String>,
    pub gateway_ipv4: Option<String>,
    /// "config", "dhcp-lease" or "subnet-first-address".
    pub gateway_ipv4_source: Option<String>,
    pub gateway_ipv6: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The kernel side's config for `p`.
pub fn kernel_config(p: &PolicyRouting) -> PolicyConfig {
    PolicyConfig {
        primary: p.primary.clone(),
        table_base: p.table_base,
        ipv6: p.ipv6,
        gateways: p
            .gateways
            .iter()
            .map(|g| GatewayOverride {
                interface: g.interface.clone(),
                ipv4: g.ipv4,
            })
            .collect(),
        ..PolicyConfig::default()
    }
}

/// Checks the parts of `cfg` that need the live system (this network
/// namespace): a named primary interface that does not exist, a gateway
/// outside its interface's subnets, a `table_base` whose tables already hold
/// routes of other protocols. Empty when policy routing is off.
pub fn check_system(cfg: &Config) -> Vec<Problem> {
    let Some(p) = cfg.policy_routing.as_ref().filter(|p| p.enabled) else {
        return Vec::new();
    };
    let kcfg = kernel_config(p);
    let view = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
        .and_then(|rt| {
            rt.block_on(hagw_kernel::netlink::view::inspect())
                .context("cannot read the interfaces")
        });
    let view = match view {
        Ok(v) => v,
        Err(e) => {
            return vec![Problem {
                key: "policy_routing".into(),
                message: format!("{e:#}"),
            }]
        }
    };
    hagw_kernel::policy_routing::check(&kcfg, &view)
        .into_iter()
        .map(|c| Problem {
            key: match c.key {
                CheckKey::Primary => "policy_routing.primary".into(),
                CheckKey::Gateway(i) => format!("policy_routing.gateway[{i}].ipv4"),
                CheckKey::TableBase => "policy_routing.table_base".into(),
            },
            message: c.message,
        })
        .collect()
}

/// [`check_system`] as a [`ConfigError`] of `path`, for `hagw check` and
/// `hagw run` (the same words in both).
pub fn check_live(path: &Path, cfg: Config) -> Result<Config, ConfigError> {
    let mut problems = check_system(&cfg);
    problems.extend(crate::vrrp::check_system(&cfg));
    problems.extend(crate::vnet::check_system(&cfg));
    if problems.is_empty() {
        Ok(cfg)
    } else {
        Err(ConfigError {
            path: path.to_owned(),
            problems,
        })
    }
}

/// Starts the policy routing task for `p` in this network namespace.
pub async fn start(p: &PolicyRouting) -> anyhow::Result<PolicySync> {
    if let Err(e) = hagw_kernel::install_proto_name() {
        tracing::warn!(
            "cannot name protocol {} in rt_protos.d: {e}",
            hagw_kernel::RTPROT_HAGW
        );
    }
    PolicySync::start(kernel_config(p))
        .await
        .context("cannot start policy routing")
}

/// The status section from the task's snapshot.
pub async fn status(ps: &PolicySync) -> PolicyStatus {
    from_snapshot(ps.snapshot().await)
}

fn from_snapshot(s: PolicySnapshot) -> PolicyStatus {
    PolicyStatus {
        primary: s.primary,
        error: s.error,
        interfaces: s
            .interfaces
            .into_iter()
            .map(|i| PolicyInterfaceStatus {
                name: i.name,
                ifindex: i.index,
                table: i.table,
                up: i.up,
                rules: i.rules.iter().map(ToString::to_string).collect(),
                gateway_ipv4: i.gateway4.map(|g| g.0.to_string()),
                gateway_ipv4_source: i.gateway4.map(|g| g.1.as_str().to_string()),
                gateway_ipv6: i.gateway6.map(|g| g.to_string()),
                error: i.error,
            })
            .collect(),
    }
}

/// The policy routing part of `hagw status` without `--json`.
pub fn status_text(p: &PolicyStatus) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\npolicy routing (primary {})",
        p.primary.as_deref().unwrap_or("-")
    );
    if let Some(e) = &p.error {
        let _ = writeln!(s, "  error: {e}");
    }
    for i in &p.interfaces {
        let gws: Vec<&str> = [i.gateway_ipv4.as_deref(), i.gateway_ipv6.as_deref()]
            .into_iter()
            .flatten()
            .collect();
        let _ = writeln!(
            s,
            "  {} (#{}) table {}{}: from {} via {}{}",
            i.name,
            i.ifindex,
            i.table,
            if i.up { "" } else { " down" },
            if i.rules.is_empty() {
                "-".into()
            } else {
                i.rules.join(", ")
            },
            if gws.is_empty() {
                "-".into()
            } else {
                gws.join(", ")
            },
            i.error
                .as_deref()
                .map(|e| format!("  error: {e}"))
                .unwrap_or_default()
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disabled_checks_nothing() {
        let cfg = crate::config::parse(
            "[policy_routing]\nenabled = false\nprimary = \"does-not-exist0\"\n",
        )
        .expect("config");
        assert!(check_system(&cfg).is_empty());
        let k = kernel_config(cfg.policy_routing.as_ref().expect("section"));
        assert_eq!(k.table_base, 10_000);
        assert_eq!(k.protocol, hagw_kernel::RTPROT_HAGW);
    }

    #[test]
    fn status_json_and_text() {
        let st = PolicyStatus {
            primary: Some("ens5".into()),
            error: None,
            interfaces: vec![PolicyInterfaceStatus {
                name: "ens6".into(),
                ifindex: 3,
                table: 10003,
                up: true,
                rules: vec!["10.0.0.204".into()],
                gateway_ipv4: Some("10.0.0.1".into()),
                gateway_ipv4_source: Some("subnet-first-address".into()),
                gateway_ipv6: None,
                error: None,
            }],
        };
        let j = serde_json::to_value(&st).expect("json");
        assert_eq!(j["interfaces"][0]["table"], 10003);
        assert!(j["interfaces"][0].get("error").is_none());
        let t = status_text(&st);
        assert!(
            t.contains("ens6 (#3) table 10003: from 10.0.0.204 via 10.0.0.1"),
            "{t}"
        );
    }
}
