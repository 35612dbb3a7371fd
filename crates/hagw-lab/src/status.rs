//! `hagw lab status`, and the views other commands share: a node's `hagw
//! status`, the flows per router, the end of a log.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::net::Ipv4Addr;
use std::path::Path;

use hagw_testkit::Netns;

use crate::cli::{all_lab_namespaces, StatusText};
use crate::flows::{self, Report};
use crate::state::State;
use crate::topology::{self, Kind, Topology};

/// What to show when the host has not got its route: the host's own view
/// (`hagw status`) and the ends of the daemons' logs.
pub(crate) fn diagnose(topo: &dyn Topology, st: &State, status_text: StatusText) -> String {
    let mut s = String::new();
    for node in topo.nodes(&topology::Options::default()) {
        s.push_str(&format!(
            "--- {} `hagw status --socket {}`:\n",
            node.name,
            node.socket.display()
        ));
        match status_text(&node.socket) {
            Ok(text) => s.push_str(&indent(&text)),
            Err(e) => s.push_str(&format!("    {e:#}\n")),
        }
        if let Some(p) = st.proc(node.name) {
            let n = if node.ns == topo.host_ns() { 25 } else { 8 };
            s.push_str(&format!(
                "--- the end of {}:\n{}\n",
                p.log.display(),
                tail(&p.log, n)
            ));
        }
    }
    s
}

pub(crate) fn indent(text: &str) -> String {
    text.lines().map(|l| format!("    {l}\n")).collect()
}

pub(crate) fn join(addrs: &[Ipv4Addr]) -> String {
    addrs
        .iter()
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

// ---------------------------------------------------------------------------
// Flows per router.

/// Healthy flows per router name; "?" for a source the topology does not know.
pub(crate) fn healthy_by_router(
    topo: &dyn Topology,
    report: &Report,
) -> BTreeMap<usize, &'static str> {
    report
        .flows
        .iter()
        .filter(|f| f.healthy())
        .map(|f| {
            let router = match f.seen_as {
                Some(std::net::IpAddr::V4(a)) => topo.router_by_egress(a).unwrap_or("?"),
                _ => "?",
            };
            (f.id, router)
        })
        .collect()
}

pub(crate) fn print_spread(topo: &dyn Topology, report: &Report) {
    let healthy = healthy_by_router(topo, report);
    let total = report.flows.len();
    for r in topo.routers() {
        let n = healthy.values().filter(|&&name| name == r.name).count();
        let pct = if total == 0 {
            0.0
        } else {
            100.0 * n as f64 / total as f64
        };
        let bar = "#".repeat((pct / 2.5).round() as usize);
        let src = format!("({})", r.egress_addr);
        println!(
            "  via {:<3} {src:<15} {n:>5} open  {pct:>5.1}%  {bar}",
            r.name
        );
    }
    let unknown = healthy.values().filter(|&&name| name == "?").count();
    if unknown > 0 {
        println!("  via an unknown source: {unknown} open");
    }
    let stalled = report.flows.iter().filter(|f| f.stalled()).count();
    let broken = report
        .flows
        .iter()
        .filter(|f| f.state == flows::FlowState::Broken)
        .count();
    let connecting = report
        .flows
        .iter()
        .filter(|f| f.state == flows::FlowState::Connecting)
        .count();
    println!(
        "  stalled (no echo for {} ms) {stalled}, broken {broken}{}",
        flows::STALL_MS,
        if connecting > 0 {
            format!(", connecting {connecting}")
        } else {
            String::new()
        }
    );
}

// ---------------------------------------------------------------------------
// status

pub(crate) fn status(status_text: StatusText) -> anyhow::Result<()> {
    let st = State::load()?;
    let present: Vec<String> = all_lab_namespaces()
        .into_iter()
        .filter(|n| Netns::exists(n))
        .collect();
    let Some(st) = st else {
        if present.is_empty() {
            println!("the lab is down. `hagw lab up` starts it.");
        } else {
            println!(
                "no lab state ({}), but namespaces {} exist: `hagw lab down` removes them.",
                State::file().display(),
                present.join(", ")
            );
        }
        return Ok(());
    };
    let topo = Kind::from_name(&st.topology)?.topology();
    println!(
        "topology {}  (state {})",
        st.topology,
        State::file().display()
    );

    println!("\nnamespaces");
    for ns in &st.namespaces {
        println!(
            "  {:<14} {}",
            ns,
            if Netns::exists(ns) {
                "present"
            } else {
                "MISSING"
            }
        );
    }

    println!("\nprocesses");
    for p in &st.procs {
        println!(
            "  {:<7} pid {:<8} in {:<14} {}  log {}",
            p.name,
            p.pid,
            p.ns,
            if p.alive() { "running" } else { "NOT RUNNING" },
            p.log.display()
        );
    }

    if !st.cut.is_empty() {
        println!("\ncut (by `hagw lab fail`): {}", st.cut.join(", "));
    }

    for node in topo.nodes(&topology::Options::default()) {
        println!("\nhagw on {} ({}):", node.name, node.ns);
        match status_text(&node.socket) {
            Ok(text) => print!("{}", indent(&text)),
            Err(e) => println!("    {e:#}"),
        }
    }

    let host = topo.host_ns();
    println!("\n{host}: ip route show default");
    let route = Netns::attach(&host)
        .map_err(anyhow::Error::from)
        .and_then(|ns| Ok(ns.try_ip(&["route", "show", "default"])?));
    match route {
        Ok(out) if out.trim().is_empty() => println!("  (no default route)"),
        Ok(out) => print!("{}", indent(&out).replacen("    ", "  ", usize::MAX)),
        Err(e) => println!("  {e:#}"),
    }

    println!();
    match &st.flows_socket {
        None => println!("flows: none (`hagw lab up --flows N` holds N)"),
        Some(sock) => match flows::query(sock) {
            Ok(report) => {
                println!("flows: {} held to {}", report.flows.len(), report.target);
                print_spread(&*topo, &report);
            }
            Err(e) => println!("flows: {e:#}"),
        },
    }
    Ok(())
}

/// The last `lines` lines of a log file (for error messages).
pub(crate) fn tail(path: &Path, lines: usize) -> String {
    let Ok(mut f) = File::open(path) else {
        return format!("({} is missing)", path.display());
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let all: Vec<&str> = text.lines().collect();
    let from = all.len().saturating_sub(lines);
    if all.is_empty() {
        return format!("({} is empty)", path.display());
    }
    all[from..]
        .iter()
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}
