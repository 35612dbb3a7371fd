//! `hagw lab fail` and `heal` (a silent cut of a router's LAN link, or its
//! end, timed to the host's route change over netlink, then the flows that
//! broke counted), and `hagw lab time-cut` (the same cut and timing on any
//! namespaces).

use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use hagw_kernel::nft;
use hagw_testkit::Netns;

use crate::cli::{loaded, require_root, RouterArgs, StatusText, TimeCutArgs};
use crate::flows::{self, Report};
use crate::state::{self, State};
use crate::status::{diagnose, healthy_by_router, join, print_spread};
use crate::topology::Topology;
use crate::{cut, route, watch};

/// A namespace name that may go into a path and a command line.
fn plain(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'))
        && !s.starts_with('.')
}

pub(crate) fn time_cut(a: &TimeCutArgs) -> anyhow::Result<()> {
    require_root()?;
    // Names go into a path and an nft ruleset: plain names only.
    for ns in [&a.host_ns, &a.router_ns] {
        if !plain(ns) {
            bail!("namespace name {ns:?}: only letters, digits and - _ . @");
        }
        if !Netns::exists(ns) {
            bail!("no network namespace {ns}");
        }
    }
    if !nft::valid_interface(&a.dev) {
        bail!(
            "interface name {:?}: at most 15 of letters, digits and - _ . @",
            a.dev
        );
    }
    let nh = a.nexthop;
    let timeout = Duration::from_secs(a.timeout);
    let w = watch::Watch::start(&a.host_ns, move |nhs| !nhs.contains(&nh), timeout)
        .with_context(|| format!("{} must list {nh} in its default route first", a.host_ns))?;
    let t0 = Instant::now();
    cut::cut(&a.router_ns, &a.dev)
        .with_context(|| format!("cannot cut {} in {}", a.dev, a.router_ns))?;
    let in_place = t0.elapsed();
    let gone = w.wait();
    let restored = cut::restore(&a.router_ns);
    let Some(at) = gone? else {
        bail!(
            "{}'s default route still lists {nh} after {timeout:?}",
            a.host_ns
        );
    };
    restored.with_context(|| format!("cannot restore {} in {}", a.dev, a.router_ns))?;
    let e = at.saturating_duration_since(t0);
    println!(
        "failover_ms={:.1} after_cut_ms={:.1} cut_cmd_ms={:.1}",
        e.as_secs_f64() * 1e3,
        e.saturating_sub(in_place).as_secs_f64() * 1e3,
        in_place.as_secs_f64() * 1e3
    );
    Ok(())
}

fn flows_snapshot(st: &State) -> Option<Report> {
    let sock = st.flows_socket.as_ref()?;
    match flows::query(sock) {
        Ok(r) => Some(r),
        Err(e) => {
            eprintln!("flows: not counted ({e:#})");
            None
        }
    }
}

/// Waits `settle`, then (up to 10 s more) while flows that were healthy
/// before are stalled rather than clearly open or broken.
fn settle_flows(st: &State, before: &Report, settle: Duration) -> Option<Report> {
    println!("letting flows settle for {} s ...", settle.as_secs());
    thread::sleep(settle);
    let was: Vec<usize> = before
        .flows
        .iter()
        .filter(|f| f.healthy())
        .map(|f| f.id)
        .collect();
    let t = Instant::now();
    loop {
        let now = flows_snapshot(st)?;
        let undecided = now
            .flows
            .iter()
            .filter(|f| {
                was.contains(&f.id) && f.stalled() && f.echo_age_ms.is_some_and(|a| a < 30_000)
            })
            .count();
        if undecided == 0 || t.elapsed() > Duration::from_secs(10) {
            return Some(now);
        }
        thread::sleep(Duration::from_millis(250));
    }
}

/// (per router: open before, broken of those) and the totals.
struct Broken {
    per_router: Vec<(&'static str, usize, usize)>,
    before: usize,
    broken: usize,
}

fn count_broken(topo: &dyn Topology, before: &Report, after: &Report) -> Broken {
    let was = healthy_by_router(topo, before);
    let still: std::collections::BTreeSet<usize> = after
        .flows
        .iter()
        .filter(|f| f.healthy())
        .map(|f| f.id)
        .collect();
    let mut names: Vec<&'static str> = topo.routers().iter().map(|r| r.name).collect();
    if was.values().any(|&n| n == "?") {
        names.push("?");
    }
    let per_router: Vec<(&'static str, usize, usize)> = names
        .into_iter()
        .map(|name| {
            let ids: Vec<usize> = was
                .iter()
                .filter(|(_, &n)| n == name)
                .map(|(&id, _)| id)
                .collect();
            let broken = ids.iter().filter(|id| !still.contains(id)).count();
            (name, ids.len(), broken)
        })
        .collect();
    Broken {
        before: was.len(),
        broken: per_router.iter().map(|(_, _, b)| b).sum(),
        per_router,
    }
}

/// `flows_broken=97 (r1: 97 of 97, r2: 0 of 103)` and the key=value tail of
/// the machine-readable line.
fn broken_words(b: &Broken) -> (String, String) {
    let human = format!(
        "flows_broken={} ({})",
        b.broken,
        b.per_router
            .iter()
            .map(|(n, before, broken)| format!("{n}: {broken} of {before}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let mut machine = format!("flows_before={} flows_broken={}", b.before, b.broken);
    for (n, before, broken) in &b.per_router {
        let key = if *n == "?" { "unknown" } else { n };
        machine.push_str(&format!(" {key}_before={before} {key}_broken={broken}"));
    }
    (human, machine)
}

enum Event {
    Fail,
    Heal,
}

pub(crate) fn fail(a: RouterArgs, status_text: StatusText) -> anyhow::Result<()> {
    measure(a, Event::Fail, status_text)
}

pub(crate) fn heal(a: RouterArgs, status_text: StatusText) -> anyhow::Result<()> {
    measure(a, Event::Heal, status_text)
}

fn measure(a: RouterArgs, ev: Event, status_text: StatusText) -> anyhow::Result<()> {
    require_root()?;
    let _lock = state::lock()?;
    let (mut st, topo) = loaded()?;
    let r = topo.router(&a.router)?;
    let host = topo.host_ns();
    let is_cut = st.cut.iter().any(|c| c == r.name);
    let nhs = route::default_nexthops(&host)?;
    match ev {
        Event::Fail => {
            if is_cut {
                bail!(
                    "{} is already cut: `hagw lab heal {}` restores it",
                    r.name,
                    r.name
                );
            }
            if !nhs.contains(&r.lan_addr) {
                bail!(
                    "the host's default route does not use {} ({}) now (next hops: [{}]): nothing to fail over",
                    r.name,
                    r.lan_addr,
                    join(&nhs)
                );
            }
        }
        Event::Heal => {
            if !is_cut {
                bail!("{} is not cut (`hagw lab fail {}` cuts it)", r.name, r.name);
            }
        }
    }
    let before = flows_snapshot(&st);
    let timeout = Duration::from_secs(a.timeout);

    // Watched over netlink, subscribed before the change: the figures run
    // from the nft command's start (like ../shared/bench/failover-measure.sh)
    // and from its return (the cut in place) to the route notification.
    let lan = r.lan_addr;
    let fail = matches!(ev, Event::Fail);
    let watch = watch::Watch::start(&host, move |nhs| nhs.contains(&lan) != fail, timeout)
        .context("cannot watch the host's default route")?;
    let t0 = Instant::now();
    let (what, key) = match ev {
        Event::Fail => {
            cut::cut(&r.ns, r.lan_if)
                .with_context(|| format!("cannot cut {}'s LAN link", r.name))?;
            ("failover", "failover_ms")
        }
        Event::Heal => {
            cut::restore(&r.ns).with_context(|| format!("cannot restore {}'s LAN link", r.name))?;
            ("heal", "heal_ms")
        }
    };
    let in_place = Instant::now();
    if fail {
        st.cut.push(r.name.to_string());
    } else {
        st.cut.retain(|c| c != r.name);
    }
    st.save()?;
    if fail {
        println!(
            "{}: LAN link {} cut (all frames dropped both ways, no RST)",
            r.name, r.lan_if
        );
    } else {
        println!("{}: LAN link {} restored", r.name, r.lan_if);
    }
    let elapsed = watch.wait()?.map(|at| at.saturating_duration_since(t0));
    let after_cut = elapsed.map(|e| e.saturating_sub(in_place.saturating_duration_since(t0)));
    let Some(elapsed) = elapsed else {
        let hint = match ev {
            Event::Fail => format!(
                "{} stays cut; `hagw lab heal {}` restores it",
                r.name, r.name
            ),
            Event::Heal => format!("{}'s link is restored", r.name),
        };
        bail!(
            "{what}: after {} s the host's default route still {} {} ({hint}).\n{}",
            a.timeout,
            if matches!(ev, Event::Fail) {
                "lists"
            } else {
                "does not list"
            },
            r.name,
            diagnose(&*topo, &st, status_text)
        );
    };
    let ms = elapsed.as_millis();
    let nft_ms = in_place.saturating_duration_since(t0).as_millis();
    let after_ms = after_cut.map_or(0, |d| d.as_millis());
    let now: Vec<String> = route::defaults(&host)?
        .iter()
        .map(|d| format!("proto {} via [{}]", d.protocol, join(&d.nexthops)))
        .collect();
    println!(
        "{what}: the host's default route {} {} after {ms} ms ({after_ms} ms after the nft \
         command that {} returned; it took {nft_ms} ms); now: {}",
        if matches!(ev, Event::Fail) {
            "dropped"
        } else {
            "lists"
        },
        r.name,
        if fail { "cut it" } else { "restored it" },
        if now.is_empty() {
            "(no default route)".to_string()
        } else {
            now.join("; ")
        }
    );

    let event = match ev {
        Event::Fail => "fail",
        Event::Heal => "heal",
    };
    let mut machine = format!(
        "lab-result event={event} topology={} router={} {key}={ms} after_cut_ms={after_ms} \
         settle_ms={}",
        st.topology,
        r.name,
        a.settle * 1000
    );
    let after = before
        .as_ref()
        .and_then(|b| settle_flows(&st, b, Duration::from_secs(a.settle)).map(|a| (b, a)));
    match after {
        Some((before, after)) => {
            let b = count_broken(&*topo, before, &after);
            let (human, tail) = broken_words(&b);
            println!("\n{key}={ms} {human}");
            let elsewhere: usize = b
                .per_router
                .iter()
                .filter(|(n, _, _)| *n != r.name)
                .map(|(_, _, broken)| broken)
                .sum();
            if elsewhere > 0 && !st.flows_bind_first {
                println!(
                    "note: {elsewhere} flow(s) not through {} broke too. The flows were opened with a plain\n\
                     \x20     connect(), routed before their source port was known; this route change re-hashed\n\
                     \x20     them by 5-tuple and moved some to another router, whose SNAT the server does not\n\
                     \x20     know (RST). `hagw lab up --flows-bind-first` opens flows that keep their path.",
                    r.name
                );
            }
            machine.push(' ');
            machine.push_str(&tail);
            println!("flows now:");
            print_spread(&*topo, &after);
        }
        None => println!("\n{key}={ms} (flows not counted)"),
    }
    println!("{machine}");
    Ok(())
}
