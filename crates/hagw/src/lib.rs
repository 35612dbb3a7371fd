//! hagw: the daemon ([`daemon`]), its config schema ([`config`]) and its control
//! socket ([`control`]). The protocols live in `hagw-bgp`, the kernel in
//! `hagw-kernel`, `hagw lab` in `hagw-lab`.

pub mod config;
pub mod control;
pub mod convergent;
pub mod daemon;
pub mod policy_routing;
pub mod vnet;
pub mod vrrp;

use std::fmt::Write;

/// `hagw status` without `--json`.
pub fn status_text(st: &control::Status) -> String {
    let mut s = String::new();
    // A gateway-only node (no BGP) has no peers table to show.
    if !st.peers.is_empty() || st.convergent.is_none() {
        let _ = writeln!(
            s,
            "{:<40} {:>10} {:<12} {:>9} {:>6} {:>6}  note",
            "peer", "asn", "state", "uptime", "rcvd", "sent"
        );
    }
    for p in &st.peers {
        let _ = writeln!(
            s,
            "{:<40} {:>10} {:<12} {:>9} {:>6} {:>6}  {}",
            p.address,
            p.remote_asn.map_or("-".into(), |a| a.to_string()),
            p.state,
            p.uptime_secs.map_or("-".into(), |u| format!("{u}s")),
            p.prefixes_received,
            p.prefixes_sent,
            p.last_error.as_deref().unwrap_or(""),
        );
    }
    if !st.pinning.is_empty() {
        let _ = writeln!(s, "\nconnection pinning");
        for p in &st.pinning {
            let _ = writeln!(
                s,
                "  {} slot {} table {} mark {} {}{}",
                p.router,
                p.slot,
                p.table,
                p.mark,
                if p.active { "active" } else { "not active" },
                p.error
                    .as_deref()
                    .map(|e| format!("  error: {e}"))
                    .unwrap_or_default()
            );
        }
    }
    if !st.bfd.is_empty() {
        let thread = st
            .bfd_thread
            .as_ref()
            .map(|t| format!(" (thread: {t})"))
            .unwrap_or_default();
        let _ = writeln!(s, "\nbfd{thread}");
        for b in &st.bfd {
            let _ = writeln!(
                s,
                "  {} from {}: {} (remote {}), tx {} ms, detect {} ms, rx {} tx {} dropped {}  {}",
                b.peer,
                b.local,
                b.state,
                b.remote_state,
                b.tx_interval_ms.map_or("-".into(), |v| format!("{v:.0}")),
                b.detection_ms.map_or("-".into(), |v| format!("{v:.0}")),
                b.counters.rx,
                b.counters.tx,
                b.counters.dropped_bad_ttl
                    + b.counters.dropped_malformed
                    + b.counters.dropped_auth
                    + b.counters.dropped_no_session,
                b.diag,
            );
        }
    }
    if !st.health.is_empty() {
        let _ = writeln!(
            s,
            "\nuplink probes (routes are announced only while all are up)"
        );
        for h in &st.health {
            let _ = writeln!(
                s,
                "  {} {} {}  ok {} / failed {}{}",
                h.probe,
                h.target,
                h.state,
                h.successes,
                h.failures,
                h.last_error
                    .as_deref()
                    .map(|e| format!("  last error: {e}"))
                    .unwrap_or_default()
            );
        }
    }
    if !st.routes.is_empty() {
        let _ = writeln!(s, "\nroutes");
        for r in &st.routes {
            let _ = writeln!(
                s,
                "  {} via {}{}{}",
                r.prefix,
                r.nexthops.join(", "),
                if r.installed { "" } else { " (not installed)" },
                r.error
                    .as_deref()
                    .map(|e| format!("  error: {e}"))
                    .unwrap_or_default()
            );
        }
    }
    if let Some(p) = &st.policy_routing {
        s.push_str(&policy_routing::status_text(p));
    }
    if !st.vrrp.is_empty() {
        s.push_str(&vrrp::status_text(&st.vrrp));
    }
    if let Some(c) = &st.convergent {
        s.push_str(&convergent::status_text(c));
    }
    if !st.vnet.is_empty() {
        let _ = writeln!(s, "\nvirtual networks");
        for v in &st.vnet {
            let _ = writeln!(
                s,
                "  {} bridge {} ({}) table {} via {}{}\n    VMs: {}",
                v.name,
                v.bridge,
                if v.created { "created" } else { "adopted" },
                v.table,
                if v.routers.is_empty() {
                    "no router (unreachable)".to_string()
                } else {
                    v.routers.join(", ")
                },
                v.error
                    .as_deref()
                    .map(|e| format!("  error: {e}"))
                    .unwrap_or_default(),
                if v.vms.is_empty() {
                    "none".to_string()
                } else {
                    v.vms.join(", ")
                },
            );
        }
    }
    s
}
