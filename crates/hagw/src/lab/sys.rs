//! The lab's hands on the system: `ip`/`nft` commands, namespaces, and the
//! processes the lab starts (recorded by PID and start time, so a recycled PID
//! is never signalled).

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

/// Runs a command to completion (in its own process group, so a Ctrl-C at the
/// terminal reaches only the lab, which then tears down in order) and returns
/// its stdout; a failure carries the command line and its stderr.
pub fn run(prog: &str, args: &[&str]) -> anyhow::Result<String> {
    run_stdin(prog, args, None)
}

/// [`run`] with `input` written to the command's stdin.
pub fn run_stdin(prog: &str, args: &[&str], input: Option<&str>) -> anyhow::Result<String> {
    let line = format!("{prog} {}", args.join(" "));
    let mut cmd = Command::new(prog);
    cmd.args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot run `{line}`"))?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin
            .write_all(text.as_bytes())
            .with_context(|| format!("cannot write to `{line}`"))?;
    }
    let out = child
        .wait_with_output()
        .with_context(|| format!("cannot run `{line}`"))?;
    if !out.status.success() {
        bail!(
            "`{line}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `ip -n NS ARGS...`
pub fn ip_ns(ns: &str, args: &[&str]) -> anyhow::Result<String> {
    let mut all = vec!["-n", ns];
    all.extend_from_slice(args);
    run("ip", &all)
}

/// `ip netns exec NS PROG ARGS...`
pub fn ns_exec(ns: &str, prog: &str, args: &[&str]) -> anyhow::Result<String> {
    let mut all = vec!["netns", "exec", ns, prog];
    all.extend_from_slice(args);
    run("ip", &all)
}

/// Loads an nftables ruleset into a namespace.
pub fn nft_load(ns: &str, ruleset: &str) -> anyhow::Result<()> {
    run_stdin(
        "ip",
        &["netns", "exec", ns, "nft", "-f", "-"],
        Some(ruleset),
    )?;
    Ok(())
}

pub fn ns_exists(ns: &str) -> bool {
    Path::new("/run/netns").join(ns).exists()
}

pub fn sysctl(ns: &str, key: &str, value: &str) -> anyhow::Result<()> {
    ns_exec(ns, "sysctl", &["-qw", &format!("{key}={value}")])?;
    Ok(())
}

/// PIDs of processes living in namespace `ns`.
pub fn ns_pids(ns: &str) -> Vec<u32> {
    let me = std::process::id();
    run("ip", &["netns", "pids", ns])
        .map(|out| {
            out.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .filter(|&p| p != me)
                .collect()
        })
        .unwrap_or_default()
}

/// A process the lab started: the PID alone could be reused after the
/// process ends, the PID with its start time cannot.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProcRecord {
    /// What it is: "r1", "host", "server", "flows"...
    pub name: String,
    pub ns: String,
    pub pid: u32,
    /// Field 22 of /proc/PID/stat (clock ticks after boot).
    pub start_time: u64,
    pub log: PathBuf,
}

/// (state letter, start time) from /proc/PID/stat.
fn stat(pid: u32) -> Option<(char, u64)> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses: the
    // fields that follow start after the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    // `rest` begins at field 3, so start time (field 22) is 19 further on.
    let start = fields.nth(18)?.parse().ok()?;
    Some((state, start))
}

impl ProcRecord {
    /// Spawns `ip netns exec NS PROG ARGS...` in the background with stdout
    /// and stderr appended to `log`. `ip netns exec` execs PROG, so the PID
    /// recorded is PROG's own.
    pub fn spawn(
        name: &str,
        ns: &str,
        prog: &Path,
        args: &[String],
        log: &Path,
    ) -> anyhow::Result<ProcRecord> {
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("cannot open {}", log.display()))?;
        let err = out
            .try_clone()
            .with_context(|| format!("cannot open {}", log.display()))?;
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(prog)
            .args(args)
            .stdin(Stdio::null())
            // Plain logs in the files (no colour escapes).
            .env("NO_COLOR", "1")
            .stdout(out)
            .stderr(err)
            // Its own process group: a Ctrl-C in the terminal that ran
            // `hagw lab up` does not reach the lab's daemons.
            .process_group(0)
            .spawn()
            .with_context(|| format!("cannot start {name} in {ns}"))?;
        let pid = child.id();
        // The child is reaped by whoever outlives it (init once `up` exits);
        // until then it is checked by PID like any other lab process.
        drop(child);
        let start_time = stat(pid).map(|(_, s)| s).unwrap_or(0);
        Ok(ProcRecord {
            name: name.to_string(),
            ns: ns.to_string(),
            pid,
            start_time,
            log: log.to_path_buf(),
        })
    }

    /// Running, and still the process we started.
    pub fn alive(&self) -> bool {
        match stat(self.pid) {
            Some((state, start)) => start == self.start_time && state != 'Z' && state != 'X',
            None => false,
        }
    }

    /// TERM, up to `grace` to exit, then KILL. Signals only the recorded
    /// process, and only while it is still the one the lab started.
    pub fn stop(&self, grace: Duration) -> bool {
        if !self.alive() {
            return false;
        }
        signal(self.pid, "TERM");
        if wait_dead(|| !self.alive(), grace) {
            return true;
        }
        if self.alive() {
            signal(self.pid, "KILL");
            wait_dead(|| !self.alive(), Duration::from_secs(2));
        }
        true
    }
}

/// Stops a process found in one of the lab's namespaces (one the lab did not
/// record, e.g. left by a crash): TERM, then KILL, checked by start time.
pub fn stop_pid(pid: u32, grace: Duration) {
    let Some((_, start)) = stat(pid) else {
        return;
    };
    let same = || matches!(stat(pid), Some((s, t)) if t == start && s != 'Z' && s != 'X');
    signal(pid, "TERM");
    if !wait_dead(|| !same(), grace) && same() {
        signal(pid, "KILL");
        wait_dead(|| !same(), Duration::from_secs(2));
    }
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

fn wait_dead(dead: impl Fn() -> bool, within: Duration) -> bool {
    let end = Instant::now() + within;
    while Instant::now() < end {
        if dead() {
            return true;
        }
        thread::sleep(Duration::from_millis(50));
    }
    dead()
}

/// The last `lines` lines of a log file (for error messages).
pub fn tail(path: &Path, lines: usize) -> String {
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
