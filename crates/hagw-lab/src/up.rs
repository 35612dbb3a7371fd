//! `hagw lab up`: build a topology (persistent), start the test server,
//! hagw on every node and the flow holder, each recorded in the state file
//! as soon as it runs; on any failure or Ctrl-C, tear down what was made.

use std::fs;
use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use hagw_testkit::{Netns, ProcRecord};

use crate::cli::{all_lab_namespaces, require_root, StatusText, UpArgs, MAX_FLOWS};
use crate::down::teardown;
use crate::state::{self, State};
use crate::status::{diagnose, join, print_spread, tail};
use crate::topology::{self, Topology};
use crate::{flows, route};

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

pub(crate) fn up(a: UpArgs, status_text: StatusText) -> anyhow::Result<()> {
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
    let leftovers: Vec<String> = all_lab_namespaces()
        .into_iter()
        .filter(|n| Netns::exists(n))
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
        namespaces: topo.namespaces(),
        procs: Vec::new(),
        cut: Vec::new(),
        flows_socket: None,
        flows_requested: a.flows,
        flows_bind_first: a.flows_bind_first,
    };
    let built = st
        .save()
        .and_then(|()| build_and_start(&*topo, &a, &mut st, &intr, status_text));
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
    status_text: StatusText,
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
    intr.check()?;
    topo.build().context("cannot build the topology")?;

    // The server on "the internet".
    intr.check()?;
    let (server_ns, server_addr) = topo.server();
    let ready = state::path_in("server.ready");
    let server = start(
        st,
        "server",
        &server_ns,
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
            &node.ns,
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

    // A topology of its own (attach VMs, check reachability)...
    intr.check()?;
    if let Some(report) = topo
        .settle(Duration::from_secs(a.timeout))
        .map_err(|e| e.context(diagnose(topo, st, status_text)))?
    {
        println!("\n{report}");
        println!(
            "\nthe lab is up. Next: `hagw lab status`, `hagw lab down`.\n\
             Logs and configs: {}",
            state::dir().display()
        );
        return Ok(());
    }

    // ...or the host's default route with every router.
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
                tail(&dead.log, 20)
            );
        }
        let have = route::default_nexthops(&host)?;
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
                diagnose(topo, st, status_text)
            );
        }
        intr.sleep(Duration::from_millis(50))?;
    }
    println!("after {} ms", t0.elapsed().as_millis());
    println!("\n{host}: ip route");
    for line in Netns::attach(&host)?.try_ip(&["route"])?.lines() {
        println!("  {line}");
    }

    // The flows.
    if a.flows > 0 && topo.flows() {
        intr.check()?;
        let (_, target) = topo.server();
        let socket = state::path_in("flows.sock");
        let ready = state::path_in("flows.ready");
        let holder = start(
            st,
            "flows",
            &host,
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
                tail(&holder.log, 10)
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
    // Plain logs in the files (no colour escapes).
    let p = Netns::attach(ns)?
        .spawn_detached(name, exe, args, &[("NO_COLOR", "1")], &log)
        .with_context(|| format!("cannot start {name} in {ns}"))?;
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
                tail(&p.log, 20)
            );
        }
        if t0.elapsed() > within {
            bail!(
                "{} (pid {}) not ready after {} s; the end of {}:\n{}",
                p.name,
                p.pid,
                within.as_secs(),
                p.log.display(),
                tail(&p.log, 20)
            );
        }
        intr.sleep(Duration::from_millis(20))?;
    }
}
