//! What a running lab is made of, kept in `/run/hagw-lab/state.json` so
//! `status`, `fail`, `heal` and `down` (separate invocations) find it.

use std::fs::{self, File, OpenOptions};
use std::path::PathBuf;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use hagw_testkit::ProcRecord;

/// The lab's state directory: configs, logs, sockets, state.json.
pub const DIR: &str = "/run/hagw-lab";
/// Held (flock) by `up`, `fail`, `heal` and `down` while they run, so two of
/// them never interleave. Outside DIR: DIR itself comes and goes.
pub const LOCK: &str = "/run/hagw-lab.lock";

pub fn dir() -> PathBuf {
    PathBuf::from(DIR)
}

pub fn path_in(name: &str) -> PathBuf {
    dir().join(name)
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    /// The topology's name (see `topology::Kind`).
    pub topology: String,
    /// Every namespace the lab made (or was about to make), in order.
    pub namespaces: Vec<String>,
    /// Every process the lab started, in start order.
    pub procs: Vec<ProcRecord>,
    /// Routers whose LAN link `fail` has cut (and `heal` not yet restored).
    #[serde(default)]
    pub cut: Vec<String>,
    /// The flow holder's control socket, once started.
    #[serde(default)]
    pub flows_socket: Option<PathBuf>,
    #[serde(default)]
    pub flows_requested: usize,
    /// `up --flows-bind-first`.
    #[serde(default)]
    pub flows_bind_first: bool,
}

impl State {
    pub fn file() -> PathBuf {
        path_in("state.json")
    }

    pub fn load() -> anyhow::Result<Option<State>> {
        let path = State::file();
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        let st = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a lab state file", path.display()))?;
        Ok(Some(st))
    }

    /// Written to a temporary file and renamed: a reader never sees half.
    pub fn save(&self) -> anyhow::Result<()> {
        let path = State::file();
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_string_pretty(self).context("cannot encode the lab state")?;
        fs::write(&tmp, text).with_context(|| format!("cannot write {}", tmp.display()))?;
        fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))?;
        Ok(())
    }

    pub fn proc(&self, name: &str) -> Option<&ProcRecord> {
        self.procs.iter().find(|p| p.name == name)
    }
}

/// An exclusive lock on [`LOCK`], released when dropped (or when the process
/// dies, whatever way).
pub struct LabLock(#[allow(dead_code)] File);

pub fn lock() -> anyhow::Result<LabLock> {
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(LOCK)
        .with_context(|| format!("cannot open {LOCK} (hagw lab must run as root)"))?;
    match f.try_lock() {
        Ok(()) => Ok(LabLock(f)),
        Err(fs::TryLockError::WouldBlock) => anyhow::bail!(
            "another `hagw lab` command is running (it holds {LOCK}); wait for it to finish"
        ),
        Err(fs::TryLockError::Error(e)) => Err(e).with_context(|| format!("cannot lock {LOCK}")),
    }
}
