//! `hagw lab`: the articles' topologies in network namespaces on this machine,
//! with hagw on every node, long-lived TCP flows through the gateways, and
//! failover measured the way `bench/failover-measure.sh` measures FRR.
//!
//! Each topology is defined once, in [`topology`], and built in one of two
//! modes ([`Mode`]): **persistent** for `hagw lab` (fixed `hagwlab-*` names,
//! left standing between `hagw lab up` and `hagw lab down`, which run as
//! separate processes), or **test** (unique names, removed when the handle
//! drops, also on panic) for the scenario tests:
//!
//! ```no_run
//! use hagw_lab::Seed000;
//!
//! // The seed-000 wiring with something started on each router.
//! let lab = Seed000::with_routers(|ns, _router| ns.spawn("sleep", &["600"]));
//! // r1's LAN link silently dead until `cut` drops.
//! let cut = lab.cut("r1");
//! lab.host.sh("ip route");
//! drop(cut);
//! ```
//!
//! Namespaces, links and processes come from `hagw-testkit`; every nft
//! ruleset (the routers' SNAT, the silent cut) goes through
//! `hagw_kernel::nft`.
//!
//! Everything `hagw lab` makes is named `hagwlab-*` (namespaces) or lives in
//! `/run/hagw-lab` (configs, logs, sockets, `state.json` with the PIDs it
//! started); `hagw lab down` removes exactly that.
//!
//! Layout: [`topology`] (the topologies, one file each), [`cut`] (the silent
//! cut), `cli` (the command line and its dispatch), `up`, `status`, `measure`
//! (`fail`, `heal`, `time-cut`) and `down` (the commands), `flows` (the TCP
//! server and the flow holder), `route` and `watch` (the host's default
//! route, read and watched), `state` (what a running lab is made of).

mod cli;
pub mod cut;
mod down;
mod flows;
mod measure;
mod route;
mod state;
mod status;
pub mod topology;
mod up;
mod watch;

pub use cli::{run, LabArgs, LabCmd, MoveArgs, RouterArgs, StatusText, TimeCutArgs, UpArgs};
pub use cut::SilentCut;
pub use topology::seed000::{self, Seed000};
pub use topology::vnet::{self as vnet, VnetLab};
pub use topology::{Kind, Mode, Topology};

/// Why building a topology or cutting a link failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A namespace, link, address, route or process.
    #[error(transparent)]
    Netns(#[from] hagw_testkit::Error),
    /// An nft ruleset (SNAT, a silent cut).
    #[error(transparent)]
    Nft(#[from] hagw_kernel::nft::NftError),
    #[error("no router {name:?} in the {topology} lab (routers: {routers})")]
    NoRouter {
        name: String,
        topology: &'static str,
        routers: String,
    },
    #[error(
        "the lab state names topology {0:?}, which this hagw does not know \
         (built by another version?); remove it with `hagw lab down`"
    )]
    UnknownTopology(String),
    /// A step of the virtual network lab (attach, move, measure).
    #[error("{0}")]
    Vnet(String),
}
