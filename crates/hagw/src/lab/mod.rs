//! `hagw lab`: the articles' topologies in network namespaces on this machine,
//! with hagw on every node, long-lived TCP flows through the gateways, and
//! failover measured the way `bench/failover-measure.sh` measures FRR.
//!
//! Everything the lab makes is named `hagwlab-*` (namespaces) or lives in
//! `/run/hagw-lab` (configs, logs, sockets, `state.json` with the PIDs it
//! started); `hagw lab down` removes exactly that.
//!
//! Layout: [`topology`] describes a topology (namespaces, wiring, daemons and
//! their configs, routers); this file drives `up`/`status`/`fail`/`heal`/`down`
//! from that description; `flows` is the TCP server and the flow holder;
//! `route` reads the host's default route; `sys` runs commands and tracks
//! processes; `state` persists what is running.

mod flows;
mod route;
mod state;
mod sys;
pub mod topology;
mod watch;

use std::collections::BTreeMap;
use std::fs;
use std::net::Ipv4Addr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use self::flows::Report;
use self::state::State;
use self::sys::ProcRecord;
use self::topology::{Kind, Router, Topology};

/// `hagw lab` subcommands.
#[derive(clap::Args, Debug)]
pub struct LabArgs {
    #[command(subcommand)]
    pub cmd: LabCmd,
}

#[derive(clap::Args, Debug)]
pub struct TimeCutArgs {
    /// Namespace whose main-table default route is watched.
    pub host_ns: String,
    /// Namespace of the router to cut.
    pub router_ns: String,
    /// The router's interface toward the host.
    pub dev: String,
    /// The router's address as the host's next hop.
    pub nexthop: Ipv4Addr,
    /// Seconds to wait for the route change.
    #[arg(long, default_value_t = 30)]
    pub timeout: u64,
}

#[derive(clap::Subcommand, Debug)]
pub enum LabCmd {
    /// Build a topology in network namespaces, start hagw on every node, and
    /// open long-lived TCP flows from the host through the gateways.
    Up(UpArgs),
    /// Show the lab: namespaces, processes, BGP peers, the host's default
    /// route, and the flows per router.
    Status,
    /// Cut a router's LAN link silently (everything dropped, no RST) and time
    /// until the host's default route stops using it; then count the flows
    /// that broke.
    Fail(RouterArgs),
    /// Undo `fail`: time until the host's default route uses the router
    /// again, and count the flows the heal broke.
    Heal(RouterArgs),
    /// Stop everything the lab started and delete its namespaces (idempotent).
    Down,
    /// Time a silent cut on any namespaces (the lab's own, or another
    /// daemon's lab): cut DEV in ROUTER_NS like `fail` does, time until
    /// HOST_NS's default route drops NEXTHOP (netlink, no polling), restore.
    /// Prints `failover_ms=` (from the cut command's start) and
    /// `after_cut_ms=` (from its return). Used by bench/lab-failover.sh.
    TimeCut(TimeCutArgs),
    /// (internal) The lab's TCP server, run inside the "internet" namespace.
    #[command(hide = true)]
    ServeInternal(flows::ServeArgs),
    /// (internal) The lab's flow holder, run inside the host namespace.
    #[command(hide = true)]
    FlowsInternal(flows::HoldArgs),
}

#[derive(clap::Args, Debug)]
pub struct UpArgs {
    /// The topology to build.
    #[arg(value_enum, default_value_t = Kind::Egress)]
    pub topology: Kind,
    /// How many long-lived TCP flows the host holds through the gateways (0: none).
    #[arg(long, default_value_t = 200)]
    pub flows: usize,
    /// Seconds to wait for the host's default route to have every router.
    #[arg(long, default_value_t = 20)]
    pub timeout: u64,
    /// Bind each flow's socket before connecting. A plain connect() (what most
    /// programs do) gets its first path from a route lookup made before the
    /// kernel picked its source port; the first route change (a fail, a heal)
    /// then re-hashes it by its 5-tuple and about half of the flows move to
    /// the other router, whose SNAT the server does not know (RST). Bound
    /// flows start on their 5-tuple path and stay there: compare `heal`.
    #[arg(long)]
    pub flows_bind_first: bool,
    /// BFD interval in ms (x3) on every session; 0 turns BFD off and leaves
    /// failure detection to the 3 s hold timer.
    #[arg(long, default_value_t = 50)]
    pub bfd_ms: u32,
}

#[derive(clap::Args, Debug)]
pub struct RouterArgs {
    /// The router (r1 or r2 in the egress topology).
    pub router: String,
    /// Seconds to let flows settle after the route changed, before counting
    /// the broken ones.
    #[arg(long, default_value_t = 5)]
    pub settle: u64,
    /// Seconds to wait for the host's default route to change.
    #[arg(long, default_value_t = 60)]
    pub timeout: u64,
}

/// `--flows` above this is refused (each flow is a socket in the lab).
const MAX_FLOWS: usize = 20_000;

pub fn run(args: LabArgs) -> anyhow::Result<()> {
    match args.cmd {
        LabCmd::Up(a) => up(a),
        LabCmd::Status => status(),
        LabCmd::Fail(a) => fail(a),
        LabCmd::Heal(a) => heal(a),
        LabCmd::Down => down(),
        LabCmd::TimeCut(a) => time_cut(&a),
        LabCmd::ServeInternal(a) => flows::serve(a.listen, a.ready.as_deref()),
        LabCmd::FlowsInternal(a) => flows::hold(&a),
    }
}

fn require_root() -> anyhow::Result<()> {
    // /proc/self belongs to the process's effective uid.
    let uid = fs::metadata("/proc/self")
        .context("cannot read /proc/self")?
        .uid();
    if uid != 0 {
        bail!("hagw lab builds network namespaces: run it as root");
    }
    Ok(())
}

/// Every namespace any lab topology uses: `down` and the "already up" check
/// look at all of them, whatever topology the state file names.
fn all_lab_namespaces() -> Vec<&'static str> {
    let mut all: Vec<&'static str> = <Kind as clap::ValueEnum>::value_variants()
        .iter()
        .flat_map(|k| k.topology().namespaces())
        .collect();
    all.sort_unstable();
    all.dedup();
    all
}

fn loaded() -> anyhow::Result<(State, Box<dyn Topology>)> {
    let Some(st) = State::load()? else {
        bail!(
            "the lab is not up (no {}); start it with `hagw lab up`",
            State::file().display()
        );
    };
    let topo = Kind::from_name(&st.topology)?.topology();
    Ok((st, topo))
}

// ---------------------------------------------------------------------------
// Ctrl-C while building.

/// SIGINT, SIGTERM and SIGHUP set a flag instead of killing `up`, which then
/// stops at its next step and tears down what it made.
struct Interrupt {
    flag: Arc<AtomicBool>,
    _rt: tokio::runtime::Runtime,
}

impl Interrupt {
    fn install() -> anyhow::Result<Interrupt> {
        use tokio::signal::unix::{signal, SignalKind};
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .context("cannot start the async runtime")?;
        let flag = Arc::new(AtomicBool::new(false));
        for kind in [
            SignalKind::interrupt(),
            SignalKind::terminate(),
            SignalKind::hangup(),
        ] {
            let _guard = rt.enter();
            let mut sig = signal(kind).context("cannot install a signal handler")?;
            let f = flag.clone();
            rt.spawn(async move {
                if sig.recv().await.is_some() {
                    f.store(true, Ordering::SeqCst);
                }
            });
        }
        Ok(Interrupt { flag, _rt: rt })
    }

    fn check(&self) -> anyhow::Result<()> {
        if self.flag.load(Ordering::SeqCst) {
            bail!("interrupted");
        }
        Ok(())
    }

    fn sleep(&self, d: Duration) -> anyhow::Result<()> {
        let end = Instant::now() + d;
        loop {
            self.check()?;
            let now = Instant::now();
            if now >= end {
                return Ok(());
            }
            thread::sleep((end - now).min(Duration::from_millis(50)));
        }
    }
}

// ---------------------------------------------------------------------------
// up

fn up(a: UpArgs) -> anyhow::Result<()> {
    require_root()?;
    if a.flows > MAX_FLOWS {
        bail!("--flows {}: at most {MAX_FLOWS}", a.flows);
    }
    let _lock = state::lock()?;
    let topo = a.topology.topology();
    let dir = state::dir();
    if dir.exists() {
        bail!(
            "the lab is already up ({} exists): `hagw lab status` shows it, `hagw lab down` removes it",
            dir.display()
        );
    }
    let leftovers: Vec<&str> = all_lab_namespaces()
        .into_iter()
        .filter(|n| sys::ns_exists(n))
        .collect();
    if !leftovers.is_empty() {
        bail!(
            "namespaces {} already exist (an earlier lab?): `hagw lab down` removes them",
            leftovers.join(", ")
        );
    }
    let intr = Interrupt::install()?;
    fs::create_dir(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut st = State {
        topology: topo.kind().name().to_string(),
        namespaces: topo.namespaces().iter().map(|s| s.to_string()).collect(),
        procs: Vec::new(),
        cut: Vec::new(),
        flows_socket: None,
        flows_requested: a.flows,
        flows_bind_first: a.flows_bind_first,
    };
    let built = st
        .save()
        .and_then(|()| build_and_start(&*topo, &a, &mut st, &intr));
    if let Err(e) = built {
        eprintln!("\nhagw lab up failed; tearing down what it made:");
        if let Err(down_err) = teardown(Some(&st)) {
            eprintln!("  teardown incomplete: {down_err:#}");
        }
        return Err(e.context("hagw lab up failed; the lab was torn down"));
    }
    Ok(())
}

fn build_and_start(
    topo: &dyn Topology,
    a: &UpArgs,
    st: &mut State,
    intr: &Interrupt,
) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("cannot find the hagw binary (current_exe)")?;
    let opts = topology::Options { bfd_ms: a.bfd_ms };
    println!("{}", topo.describe());
    match opts.bfd_ms {
        0 => println!("  BFD off: a dead router is noticed by the 3 s hold timer\n"),
        ms => println!(
            "  BFD {ms} ms x 3 on every session: a dead router is gone in ~{} ms\n",
            3 * ms
        ),
    }

    println!("building namespaces: {}", topo.namespaces().join(" "));
    for ns in topo.namespaces() {
        intr.check()?;
        sys::run("ip", &["netns", "add", ns])?;
        sys::ip_ns(ns, &["link", "set", "lo", "up"])?;
    }
    intr.check()?;
    topo.build().context("cannot wire the topology")?;

    // The server on "the internet".
    intr.check()?;
    let (server_ns, server_addr) = topo.server();
    let ready = state::path_in("server.ready");
    let server = start(
        st,
        "server",
        server_ns,
        &exe,
        &[
            "lab".into(),
            "serve-internal".into(),
            "--listen".into(),
            server_addr.to_string(),
            "--ready".into(),
            ready.display().to_string(),
        ],
    )?;
    wait_file(&ready, &server, Duration::from_secs(5), intr)?;
    println!(
        "server: listening on {server_addr} in {server_ns} (pid {})",
        server.pid
    );

    // hagw on every node.
    for node in topo.nodes(&opts) {
        intr.check()?;
        let config = state::path_in(&format!("{}.toml", node.name));
        fs::write(&config, &node.config)
            .with_context(|| format!("cannot write {}", config.display()))?;
        let p = start(
            st,
            node.name,
            node.ns,
            &exe,
            &[
                "run".into(),
                "--config".into(),
                config.display().to_string(),
                "--log".into(),
                "info".into(),
            ],
        )?;
        println!(
            "hagw:   {:<6} in {:<13} pid {:<7} config {}  log {}",
            node.name,
            node.ns,
            p.pid,
            config.display(),
            p.log.display()
        );
    }

    // The host's default route with every router.
    let host = topo.host_ns();
    let want: Vec<Ipv4Addr> = topo.routers().iter().map(|r| r.lan_addr).collect();
    print!(
        "waiting for the host's default route to list {} ... ",
        join(&want)
    );
    let _ = std::io::Write::flush(&mut std::io::stdout());
    let t0 = Instant::now();
    let timeout = Duration::from_secs(a.timeout);
    loop {
        intr.check()?;
        if let Some(dead) = st.procs.iter().find(|p| !p.alive()) {
            println!();
            bail!(
                "{} (pid {}) exited; the end of {}:\n{}",
                dead.name,
                dead.pid,
                dead.log.display(),
                sys::tail(&dead.log, 20)
            );
        }
        let have = route::default_nexthops(host)?;
        if want.iter().all(|w| have.contains(w)) {
            break;
        }
        if t0.elapsed() > timeout {
            println!();
            bail!(
                "after {} s the host's default route lists [{}], not every router [{}].\n{}",
                a.timeout,
                join(&have),
                join(&want),
                diagnose(topo, st)
            );
        }
        intr.sleep(Duration::from_millis(50))?;
    }
    println!("after {} ms", t0.elapsed().as_millis());
    println!("\n{host}: ip route");
    for line in sys::ip_ns(host, &["route"])?.lines() {
        println!("  {line}");
    }

    // The flows.
    if a.flows > 0 {
        intr.check()?;
        let (_, target) = topo.server();
        let socket = state::path_in("flows.sock");
        let ready = state::path_in("flows.ready");
        let holder = start(
            st,
            "flows",
            host,
            &exe,
            &[
                "lab".into(),
                "flows-internal".into(),
                "--target".into(),
                target.to_string(),
                "--count".into(),
                a.flows.to_string(),
                "--socket".into(),
                socket.display().to_string(),
                "--ready".into(),
                ready.display().to_string(),
            ]
            .into_iter()
            .chain(a.flows_bind_first.then(|| "--bind-first".to_string()))
            .collect::<Vec<_>>(),
        )?;
        st.flows_socket = Some(socket.clone());
        st.save()?;
        wait_file(&ready, &holder, Duration::from_secs(20), intr)?;
        let report = flows::query(&socket)?;
        println!(
            "\nflows: {} TCP connections from {host} to {target} (pid {}){}, a line a second each:",
            a.flows,
            holder.pid,
            if a.flows_bind_first {
                ", bound before connect"
            } else {
                ""
            }
        );
        print_spread(topo, &report);
        let opened = report.flows.iter().filter(|f| f.healthy()).count();
        if opened == 0 {
            let why = report
                .flows
                .iter()
                .find_map(|f| f.error.clone())
                .unwrap_or_else(|| "no error recorded".into());
            bail!(
                "no flow opened (first error: {why}); the holder's log:\n{}",
                sys::tail(&holder.log, 10)
            );
        }
    }

    println!(
        "\nthe lab is up. Next: `hagw lab status`, `hagw lab fail r1`, `hagw lab heal r1`, `hagw lab down`.\n\
         Logs and configs: {}",
        state::dir().display()
    );
    Ok(())
}

/// Starts a lab process and records it at once (so a failure from here on
/// stops it).
fn start(
    st: &mut State,
    name: &str,
    ns: &str,
    exe: &Path,
    args: &[String],
) -> anyhow::Result<ProcRecord> {
    let log = state::path_in(&format!("{name}.log"));
    let p = ProcRecord::spawn(name, ns, exe, args, &log)?;
    st.procs.push(p.clone());
    st.save()?;
    Ok(p)
}

fn wait_file(
    file: &Path,
    p: &ProcRecord,
    within: Duration,
    intr: &Interrupt,
) -> anyhow::Result<()> {
    let t0 = Instant::now();
    loop {
        if file.exists() {
            return Ok(());
        }
        if !p.alive() {
            bail!(
                "{} (pid {}) exited while starting; the end of {}:\n{}",
                p.name,
                p.pid,
                p.log.display(),
                sys::tail(&p.log, 20)
            );
        }
        if t0.elapsed() > within {
            bail!(
                "{} (pid {}) not ready after {} s; the end of {}:\n{}",
                p.name,
                p.pid,
                within.as_secs(),
                p.log.display(),
                sys::tail(&p.log, 20)
            );
        }
        intr.sleep(Duration::from_millis(20))?;
    }
}

/// What to show when the host has not got its route: the host's own view
/// (`hagw status`) and the ends of the daemons' logs.
fn diagnose(topo: &dyn Topology, st: &State) -> String {
    let mut s = String::new();
    for node in topo.nodes(&topology::Options::default()) {
        s.push_str(&format!(
            "--- {} `hagw status --socket {}`:\n",
            node.name,
            node.socket.display()
        ));
        match hagw_status(&node.socket) {
            Ok(text) => s.push_str(&indent(&text)),
            Err(e) => s.push_str(&format!("    {e:#}\n")),
        }
        if let Some(p) = st.proc(node.name) {
            let n = if node.ns == topo.host_ns() { 25 } else { 8 };
            s.push_str(&format!(
                "--- the end of {}:\n{}\n",
                p.log.display(),
                sys::tail(&p.log, n)
            ));
        }
    }
    s
}

fn hagw_status_raw(socket: &Path) -> anyhow::Result<crate::control::Status> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async {
        tokio::time::timeout(
            Duration::from_secs(3),
            crate::control::request_status(socket),
        )
        .await
        .map_err(|_| anyhow::anyhow!("no answer from {} within 3 s", socket.display()))?
    })
}

fn hagw_status(socket: &Path) -> anyhow::Result<String> {
    Ok(crate::status_text(&hagw_status_raw(socket)?))
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("    {l}\n")).collect()
}

fn join(addrs: &[Ipv4Addr]) -> String {
    addrs
        .iter()
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

// ---------------------------------------------------------------------------
// Flows per router.

/// Healthy flows per router name; "?" for a source the topology does not know.
fn healthy_by_router(topo: &dyn Topology, report: &Report) -> BTreeMap<usize, &'static str> {
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

fn print_spread(topo: &dyn Topology, report: &Report) {
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

fn status() -> anyhow::Result<()> {
    let st = State::load()?;
    let present: Vec<&str> = all_lab_namespaces()
        .into_iter()
        .filter(|n| sys::ns_exists(n))
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
            if sys::ns_exists(ns) {
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
        match hagw_status(&node.socket) {
            Ok(text) => print!("{}", indent(&text)),
            Err(e) => println!("    {e:#}"),
        }
    }

    let host = topo.host_ns();
    println!("\n{host}: ip route show default");
    match sys::ip_ns(host, &["route", "show", "default"]) {
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

// ---------------------------------------------------------------------------
// fail / heal

/// A netdev table on the router's LAN interface that drops every frame in
/// and out (ARP included): the link is dead, nothing answers, no RST.
fn cut_ruleset(dev: &str) -> String {
    format!(
        "table netdev hagwlab_cut {{\n\
         \x20 chain in {{ type filter hook ingress device \"{dev}\" priority -500; policy drop; }}\n\
         \x20 chain out {{ type filter hook egress device \"{dev}\" priority -500; policy drop; }}\n\
         }}\n"
    )
}

fn cut(r: &Router) -> anyhow::Result<()> {
    sys::nft_load(r.ns, &cut_ruleset(r.lan_if))
        .with_context(|| format!("cannot cut {}'s LAN link", r.name))
}

fn uncut(r: &Router) -> anyhow::Result<()> {
    sys::ns_exec(r.ns, "nft", &["delete", "table", "netdev", "hagwlab_cut"])
        .with_context(|| format!("cannot restore {}'s LAN link", r.name))?;
    Ok(())
}

fn time_cut(a: &TimeCutArgs) -> anyhow::Result<()> {
    require_root()?;
    // Names go into a path and an nft ruleset: plain names only.
    let plain = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'))
            && !s.starts_with('.')
    };
    for ns in [&a.host_ns, &a.router_ns] {
        if !plain(ns) {
            bail!("namespace name {ns:?}: only letters, digits and - _ . @");
        }
        if !sys::ns_exists(ns) {
            bail!("no network namespace {ns}");
        }
    }
    if !plain(&a.dev) || a.dev.len() > 15 {
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
    sys::nft_load(&a.router_ns, &cut_ruleset(&a.dev))
        .with_context(|| format!("cannot cut {} in {}", a.dev, a.router_ns))?;
    let in_place = t0.elapsed();
    let gone = w.wait();
    let restored = sys::ns_exec(
        &a.router_ns,
        "nft",
        &["delete", "table", "netdev", "hagwlab_cut"],
    );
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

fn fail(a: RouterArgs) -> anyhow::Result<()> {
    measure(a, Event::Fail)
}

fn heal(a: RouterArgs) -> anyhow::Result<()> {
    measure(a, Event::Heal)
}

fn measure(a: RouterArgs, ev: Event) -> anyhow::Result<()> {
    require_root()?;
    let _lock = state::lock()?;
    let (mut st, topo) = loaded()?;
    let r = topo.router(&a.router)?;
    let host = topo.host_ns();
    let is_cut = st.cut.iter().any(|c| c == r.name);
    let nhs = route::default_nexthops(host)?;
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
    let watch = watch::Watch::start(host, move |nhs| nhs.contains(&lan) != fail, timeout)
        .context("cannot watch the host's default route")?;
    let t0 = Instant::now();
    let (what, key) = match ev {
        Event::Fail => {
            cut(&r)?;
            ("failover", "failover_ms")
        }
        Event::Heal => {
            uncut(&r)?;
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
            diagnose(&*topo, &st)
        );
    };
    let ms = elapsed.as_millis();
    let nft_ms = in_place.saturating_duration_since(t0).as_millis();
    let after_ms = after_cut.map_or(0, |d| d.as_millis());
    let now: Vec<String> = route::defaults(host)?
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

// ---------------------------------------------------------------------------
// down

fn down() -> anyhow::Result<()> {
    require_root()?;
    let _lock = state::lock()?;
    let st = match State::load() {
        Ok(st) => st,
        Err(e) => {
            eprintln!("({e:#}; removing the lab's namespaces by name)");
            None
        }
    };
    teardown(st.as_ref())
}

/// Stops the recorded processes (last started first), anything else left in
/// the lab's namespaces, deletes the namespaces and the state directory.
fn teardown(st: Option<&State>) -> anyhow::Result<()> {
    let mut did = false;
    if let Some(st) = st {
        for p in st.procs.iter().rev() {
            if p.stop(Duration::from_secs(3)) {
                println!("  stopped {} (pid {})", p.name, p.pid);
                did = true;
            }
        }
    }
    let mut names: Vec<String> = all_lab_namespaces().iter().map(|s| s.to_string()).collect();
    if let Some(st) = st {
        for n in &st.namespaces {
            if !names.contains(n) {
                names.push(n.clone());
            }
        }
    }
    let mut failed = Vec::new();
    for ns in names.iter().filter(|n| sys::ns_exists(n)) {
        for pid in sys::ns_pids(ns) {
            println!("  stopping pid {pid} (left in {ns})");
            sys::stop_pid(pid, Duration::from_secs(3));
        }
        match sys::run("ip", &["netns", "del", ns]) {
            Ok(_) => println!("  deleted namespace {ns}"),
            Err(e) => failed.push(format!("{e:#}")),
        }
        did = true;
    }
    let dir: PathBuf = state::dir();
    if dir.exists() {
        fs::remove_dir_all(&dir).with_context(|| format!("cannot remove {}", dir.display()))?;
        println!("  removed {}", dir.display());
        did = true;
    }
    if !failed.is_empty() {
        bail!("{}", failed.join("\n"));
    }
    if did {
        println!("the lab is down.");
    } else {
        println!("the lab is not up: nothing to do.");
    }
    Ok(())
}
