//! The silent cut, written once: `hagw lab fail`, `hagw lab time-cut`, the
//! failover benchmarks and the scenario tests all cut a link this way.
//!
//! A netdev table on the interface drops every frame in and out (ARP and
//! neighbour discovery included) before anything else sees it: the link is
//! dead, nothing answers, no RST, no ICMP error, and the interface stays up
//! (no carrier change a daemon could notice). One cut per namespace: the
//! table has a fixed name, so `hagw lab heal` in another process finds it.

use hagw_kernel::nft::{silent_cut_body, Family, Nft, Table};
use hagw_testkit::Netns;

use crate::Error;

/// The cut's table (in the cut namespace).
pub const TABLE: &str = "hagwlab_cut";

fn table() -> Result<Table, Error> {
    Ok(Table::new(Family::Netdev, TABLE)?)
}

/// Cuts `dev` in namespace `ns` (by name): one `nft -f -` transaction, in
/// place when it returns. Replaces an earlier cut in `ns`.
pub fn cut(ns: &str, dev: &str) -> Result<(), Error> {
    let body = silent_cut_body(dev)?;
    Nft::in_netns(ns).replace_blocking(&table()?, &body)?;
    Ok(())
}

/// Undoes [`cut`] in namespace `ns`; nothing to do when there is none.
pub fn restore(ns: &str) -> Result<(), Error> {
    Nft::in_netns(ns).delete_blocking(&table()?)?;
    Ok(())
}

/// A silent cut for a test: in place from [`SilentCut::new`] until
/// [`SilentCut::restore`] or the drop.
#[must_use = "the cut is restored when the guard drops"]
pub struct SilentCut {
    ns: String,
    dev: String,
    restored: bool,
}

impl SilentCut {
    /// Cuts `dev` in `ns`; panics on failure (test code).
    pub fn new(ns: &Netns, dev: &str) -> SilentCut {
        cut(ns.name(), dev).unwrap_or_else(|e| panic!("cannot cut {dev} in {}: {e}", ns.name()));
        SilentCut {
            ns: ns.name().to_string(),
            dev: dev.to_string(),
            restored: false,
        }
    }

    /// Restores the link now; panics on failure.
    pub fn restore(mut self) {
        self.restored = true;
        restore(&self.ns)
            .unwrap_or_else(|e| panic!("cannot restore {} in {}: {e}", self.dev, self.ns));
    }
}

impl Drop for SilentCut {
    fn drop(&mut self) {
        if self.restored {
            return;
        }
        // The namespace may be gone already (then so is the cut).
        if Netns::exists(&self.ns) {
            if let Err(e) = restore(&self.ns) {
                eprintln!("hagw-lab: cannot restore {} in {}: {e}", self.dev, self.ns);
            }
        }
    }
}
