//! `hagw lab down`, and the teardown `up` runs when it fails: stop what the
//! lab started (by PID and start time), then anything else left in its
//! namespaces, delete the namespaces and the state directory.

use std::fs;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use hagw_testkit::{ns_pids, remove_named, stop_pid, Netns};

use crate::cli::{all_lab_namespaces, require_root};
use crate::state::{self, State};

pub(crate) fn down() -> anyhow::Result<()> {
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
pub(crate) fn teardown(st: Option<&State>) -> anyhow::Result<()> {
    let mut did = false;
    if let Some(st) = st {
        for p in st.procs.iter().rev() {
            if p.stop(Duration::from_secs(3)) {
                println!("  stopped {} (pid {})", p.name, p.pid);
                did = true;
            }
        }
    }
    let mut names: Vec<String> = all_lab_namespaces();
    if let Some(st) = st {
        for n in &st.namespaces {
            if !names.contains(n) {
                names.push(n.clone());
            }
        }
    }
    let mut failed = Vec::new();
    for ns in names.iter().filter(|n| Netns::exists(n)) {
        for pid in ns_pids(ns) {
            println!("  stopping pid {pid} (left in {ns})");
            stop_pid(pid, Duration::from_secs(3));
        }
        match remove_named(ns) {
            Ok(()) => println!("  deleted namespace {ns}"),
            Err(e) => failed.push(format!("{e}")),
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
