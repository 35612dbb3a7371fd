//! `hagw lab` on the command line: the arguments (clap, flattened into the
//! `hagw` binary's `lab` subcommand) and their dispatch to the commands.

use std::fs;
use std::net::Ipv4Addr;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use anyhow::{bail, Context};

use crate::state::State;
use crate::topology::{Kind, Topology};
use crate::{down, flows, measure, status, up};

/// `hagw status` of the daemon on a control socket, as text (or why not,
/// within 3 s). The lab shows it for every node; the hagw crate provides it
/// (it depends on this crate, so this crate cannot call it directly).
pub type StatusText = fn(&Path) -> anyhow::Result<String>;

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
    /// Virtual networks (`up vnet`): move VM to HOST (live migration as the
    /// network sees it) while another VM pings it, and print how soon the
    /// pings answer again.
    Move(MoveArgs),
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
pub struct MoveArgs {
    /// The VM (vm1..vm4).
    pub vm: String,
    /// The host it moves to (host1 or host2).
    pub host: String,
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
pub(crate) const MAX_FLOWS: usize = 20_000;

/// Runs a `hagw lab` command. The lab starts the binary it runs in
/// (`current_exe`) on every node; `status_text` renders a node's status.
pub fn run(args: LabArgs, status_text: StatusText) -> anyhow::Result<()> {
    match args.cmd {
        LabCmd::Up(a) => up::up(a, status_text),
        LabCmd::Status => status::status(status_text),
        LabCmd::Fail(a) => measure::fail(a, status_text),
        LabCmd::Heal(a) => measure::heal(a, status_text),
        LabCmd::Down => down::down(),
        LabCmd::TimeCut(a) => measure::time_cut(&a),
        LabCmd::Move(a) => move_vm(&a),
        LabCmd::ServeInternal(a) => flows::serve(a.listen, a.ready.as_deref()),
        LabCmd::FlowsInternal(a) => flows::hold(&a),
    }
}

/// `hagw lab move VM HOST`.
fn move_vm(a: &MoveArgs) -> anyhow::Result<()> {
    use crate::topology::vnet;
    require_root()?;
    let _lock = crate::state::lock()?;
    let (st, _) = loaded()?;
    if st.topology != Kind::Vnet.name() {
        bail!(
            "`move` works on the vnet lab (`hagw lab up vnet`); this one is {}",
            st.topology
        );
    }
    let Some(v) = vnet::vm_spec(&a.vm) else {
        bail!("no VM {:?} (vm1..vm4)", a.vm);
    };
    let Some(to) = vnet::host_index(&a.host) else {
        bail!("no host {:?} (host1 or host2)", a.host);
    };
    let (hosts, vms) = vnet::Vnet::attach_lab()?;
    let r = vnet::move_and_measure(&hosts, &vms, v, to)?;
    println!("{r}");
    Ok(())
}

pub(crate) fn require_root() -> anyhow::Result<()> {
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
pub(crate) fn all_lab_namespaces() -> Vec<String> {
    let mut all: Vec<String> = <Kind as clap::ValueEnum>::value_variants()
        .iter()
        .flat_map(|k| k.topology().namespaces())
        .collect();
    all.sort_unstable();
    all.dedup();
    all
}

pub(crate) fn loaded() -> anyhow::Result<(State, Box<dyn Topology>)> {
    let Some(st) = State::load()? else {
        bail!(
            "the lab is not up (no {}); start it with `hagw lab up`",
            State::file().display()
        );
    };
    let topo = Kind::from_name(&st.topology)?.topology();
    Ok((st, topo))
}
