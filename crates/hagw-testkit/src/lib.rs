//! Namespace test harness for hagw integration tests.
//!
//! Every scenario builds its own little network out of Linux network
//! namespaces, veth pairs and bridges, optionally with FRR or BIRD peers, and
//! everything is torn down again when the handles drop, also when the test
//! panics:
//!
//! ```no_run
//! use hagw_testkit::{addr, veth, Netns};
//!
//! let host = Netns::new("host");
//! let rtr = Netns::new("rtr");
//! veth(&host, "eth0", &rtr, "eth0");
//! addr(&host, "eth0", "10.0.0.1/24");
//! addr(&rtr, "eth0", "10.0.0.2/24");
//! host.sh("ping -c1 -W1 10.0.0.2");
//! ```
//!
//! Rules the harness keeps, because the machine is shared with other runs:
//! * names come from [`unique_name`] (creating process id + counter), so they
//!   never collide with another live process;
//! * nothing is created in the root namespace: veth pairs are created from
//!   inside the first namespace and their peer goes straight to the second;
//! * only processes the harness started are stopped, by PID (TERM, up to 5 s,
//!   then KILL); on namespace drop any process still living in that namespace
//!   (a daemon that forked away from its `Proc`) is stopped the same way;
//! * leftovers of a killed run (namespaces whose creating process is gone)
//!   are removed by [`cleanup_stale`], called once per process by
//!   [`Netns::new`].
//!
//! All functions panic with a descriptive message on failure: this is test
//! code. The exceptions are the `try_*` functions and the namespaces that
//! outlive their handle ([`Netns::create_persistent`], [`Netns::attach`]):
//! `hagw lab` builds its topologies with them, and a command must report a
//! failure and tear down, not panic. They return [`Error`].
//!
//! Persistent namespaces carry the names the caller gives them (no
//! [`unique_name`], so [`cleanup_stale`] never touches them); the processes
//! started in them with [`Netns::spawn_detached`] are recorded by PID and
//! start time ([`ProcRecord`]), so a later process can stop exactly them and
//! never a recycled PID.

mod daemons;
mod netns;
mod process;

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

pub use daemons::{Bird, Frr};
pub use netns::{addr, bridge, remove_named, try_addr, try_bridge, try_veth, veth, Netns};
pub use process::{stop_pid, Proc, ProcRecord};

/// Why a fallible harness call failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A command could not run or exited non-zero: the command line, its
    /// status, stdout and stderr.
    #[error("{0}")]
    Command(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("network namespace {0} already exists")]
    Exists(String),
    #[error("no network namespace {0}")]
    Missing(String),
    /// A namespace or interface name that is empty, too long or would not
    /// survive a path or a command line.
    #[error("name {0:?}: at most 15 of letters, digits and - _ . @")]
    Name(String),
}

impl Error {
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Error {
        Error::Io {
            what: what.into(),
            source,
        }
    }
}

/// Whether `name` may name a namespace or an interface: it goes into
/// `/run/netns/<name>`, command lines and nft rulesets.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'))
}

/// Prefix of every name made by [`unique_name`]; [`cleanup_stale`] only ever
/// looks at names carrying it.
const PREFIX: &str = "hgt";
/// Longest usable netns / interface name (IFNAMSIZ 16 minus the NUL).
pub const MAX_NAME: usize = 15;
/// How long a stopped process gets between SIGTERM and SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Names of the namespaces this process created and has not removed yet.
fn live_names() -> &'static Mutex<HashSet<String>> {
    static LIVE: OnceLock<Mutex<HashSet<String>>> = OnceLock::new();
    LIVE.get_or_init(Default::default)
}

fn base36(mut n: u32) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).unwrap_or_default()
}

/// A name unique on this machine among live processes, at most 15 chars, so
/// it is usable both as a netns name and as an interface name:
/// `hgt<pid base36>-<counter base36>-<label>`; the label is reduced to ASCII
/// alphanumerics and truncated to fit (it is only decoration).
pub fn unique_name(label: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut name = format!("{PREFIX}{}-{}", base36(std::process::id()), base36(n));
    let label: String = label
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .take(MAX_NAME.saturating_sub(name.len() + 1))
        .collect();
    if !label.is_empty() {
        name.push('-');
        name.push_str(&label);
    }
    assert!(
        name.len() <= MAX_NAME,
        "unique_name: {name:?} is longer than {MAX_NAME} chars (counter overflow?)"
    );
    name
}

/// The creating pid encoded in a name made by [`unique_name`], or `None` when
/// the name is not one of ours.
fn pid_of_name(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(PREFIX)?;
    let mut parts = rest.splitn(3, '-');
    let pid = parts.next()?;
    let counter = parts.next()?;
    let is_b36 = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
    };
    if !is_b36(pid) || !is_b36(counter) {
        return None;
    }
    u32::from_str_radix(pid, 36).ok()
}

/// Panics with a clear message unless running as root (namespaces, veth
/// pairs and routing daemons all need it).
pub fn require_root() {
    let euid = nix::unistd::geteuid();
    assert!(
        euid.is_root(),
        "hagw-testkit: namespace tests must run as root (euid is {euid}); \
         run them as root, e.g. `sudo -E cargo test`, or via ./test.sh in CI"
    );
}

/// Scratch directory of a namespace (logs, daemon configs and sockets);
/// world-traversable so the `frr` user can reach its own subdirectory.
fn scratch_root() -> PathBuf {
    std::env::temp_dir().join("hagw-testkit")
}

/// PIDs of the processes (other than ourselves) living in namespace `name`.
pub fn ns_pids(name: &str) -> Vec<u32> {
    let Ok(out) = Command::new("ip").args(["netns", "pids", name]).output() else {
        return Vec::new();
    };
    let me = std::process::id();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .filter(|&p| p != me)
        .collect()
}

/// Stops every process (other than ourselves) living in namespace `name`,
/// by PID: TERM, up to [`STOP_GRACE`], then KILL. Each PID is signalled
/// only while it still has the start time it had when found, so a PID
/// recycled meanwhile is never hit.
fn stop_ns_processes(name: &str) {
    let found: Vec<(u32, u64)> = ns_pids(name)
        .into_iter()
        .filter_map(|p| process::start_time(p).map(|t| (p, t)))
        .collect();
    if found.is_empty() {
        return;
    }
    for &(p, t) in &found {
        process::signal_if_same(p, t, Signal::SIGTERM);
    }
    let deadline = Instant::now() + STOP_GRACE;
    let living = || {
        found
            .iter()
            .copied()
            .filter(|&(p, t)| process::same_process(p, t))
            .collect::<Vec<_>>()
    };
    while Instant::now() < deadline {
        if living().is_empty() {
            return;
        }
        thread::sleep(Duration::from_millis(20));
    }
    for (p, t) in living() {
        process::signal_if_same(p, t, Signal::SIGKILL);
    }
}

/// Removes namespace `name` and everything the harness keeps for it:
/// stops the processes living in it, deletes it, and removes FRR's empty
/// pathspace directory and the namespace's scratch directory.
fn try_remove_ns(name: &str) -> Result<(), Error> {
    stop_ns_processes(name);
    let deleted = run_cmd(Command::new("ip").args(["netns", "del", name]));
    // FRR's -N pathspace makes an (empty) /run/frr/<name>; remove only that.
    let _ = fs::remove_dir(Path::new("/run/frr").join(name));
    let _ = fs::remove_dir_all(scratch_root().join(name));
    match deleted {
        Err(e) if Path::new("/run/netns").join(name).exists() => Err(Error::Command(e)),
        _ => Ok(()),
    }
}

/// [`try_remove_ns`] for Drop and cleanup: a failure is printed, not raised.
fn remove_ns(name: &str) {
    if let Err(e) = try_remove_ns(name) {
        eprintln!("hagw-testkit: cannot delete namespace {name}: {e}");
    }
}

/// Removes `hgt*` namespaces (and their scratch directories) whose creating
/// process is gone: leftovers of a killed test run. Processes still running
/// inside such a namespace are stopped by PID first. Namespaces of live
/// processes are never touched. [`Netns::new`] calls this once per process.
pub fn cleanup_stale() {
    let me = std::process::id();
    let is_stale = |name: &str| -> bool {
        let Some(pid) = pid_of_name(name) else {
            return false;
        };
        if pid == me {
            // Our pid, but not made by us: an earlier process had our pid.
            let live = live_names().lock().unwrap_or_else(|e| e.into_inner());
            return !live.contains(name);
        }
        !Path::new(&format!("/proc/{pid}")).exists()
    };
    let mut names = HashSet::new();
    for dir in [PathBuf::from("/run/netns"), scratch_root()] {
        if let Ok(entries) = fs::read_dir(&dir) {
            for e in entries.flatten() {
                if let Some(n) = e.file_name().to_str() {
                    names.insert(n.to_string());
                }
            }
        }
    }
    for name in names.iter().filter(|n| is_stale(n)) {
        eprintln!("hagw-testkit: removing stale namespace {name}");
        remove_ns(name);
    }
}

/// Polls `check` every 20 ms until it returns true; panics mentioning `what`
/// when `timeout` passes first.
pub fn wait_until(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    loop {
        if check() {
            return;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Runs a command to completion; Ok(stdout) on success, Err(description with
/// stdout and stderr) otherwise. The command runs in its own process group,
/// so a Ctrl-C at the terminal reaches only the caller (which then tears
/// down in order), not a half-done `ip` command.
fn run_cmd(cmd: &mut Command) -> Result<String, String> {
    use std::os::unix::process::CommandExt;
    let shown = format!("{cmd:?}");
    let out = cmd
        .stdin(std::process::Stdio::null())
        .process_group(0)
        .output()
        .map_err(|e| format!("cannot run {shown}: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        Ok(stdout)
    } else {
        Err(format!(
            "{shown} failed ({})\n--- stdout ---\n{stdout}\n--- stderr ---\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn names_fit_and_parse() {
        let a = unique_name("averyveryverylonglabel");
        let b = unique_name("x/y:z");
        assert!(a.len() <= MAX_NAME && b.len() <= MAX_NAME, "{a} {b}");
        assert_ne!(a, b);
        assert!(b.ends_with("-xyz"), "{b}");
        assert_eq!(pid_of_name(&a), Some(std::process::id()));
        assert_eq!(pid_of_name(&unique_name("")), Some(std::process::id()));
        assert_eq!(pid_of_name("hgtest"), None);
        assert_eq!(pid_of_name("other-1-x"), None);
        assert_eq!(base36(4_194_304).len(), 5);
        assert_eq!(u32::from_str_radix(&base36(4_194_304), 36), Ok(4_194_304));
    }
}
