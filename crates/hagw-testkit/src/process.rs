//! Processes started by the harness, stopped by PID: [`Proc`] owns a child
//! for the length of a test; [`ProcRecord`] names a detached process (one
//! that outlives whoever started it) by PID and start time.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::STOP_GRACE;

/// A process started inside a namespace by [`crate::Netns::spawn`]; its
/// stdout and stderr go to a log file. Dropping it stops it (by PID: TERM,
/// up to 5 s, then KILL). While the test is panicking the drop also prints
/// the tail of the log, so failures show what the daemon said.
pub struct Proc {
    pub(crate) inner: Arc<ProcInner>,
}

pub(crate) struct ProcInner {
    pid: u32,
    what: String,
    log: PathBuf,
    /// The child is only reaped by us, so its PID cannot be reused by another
    /// process while we may still signal it.
    child: Mutex<Child>,
}

impl ProcInner {
    pub(crate) fn new(child: Child, what: String, log: PathBuf) -> ProcInner {
        ProcInner {
            pid: child.id(),
            what,
            log,
            child: Mutex::new(child),
        }
    }

    fn child(&self) -> MutexGuard<'_, Child> {
        self.child.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn running(child: &mut Child) -> bool {
        matches!(child.try_wait(), Ok(None))
    }

    pub(crate) fn stop_within(&self, grace: Duration) {
        let mut child = self.child();
        if !Self::running(&mut child) {
            return;
        }
        let _ = kill(Pid::from_raw(self.pid as i32), Signal::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if !Self::running(&mut child) {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        eprintln!(
            "hagw-testkit: {} (pid {}) ignored SIGTERM for {grace:?}, killing",
            self.what, self.pid
        );
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Proc {
    /// The process id.
    pub fn pid(&self) -> u32 {
        self.inner.pid
    }

    /// Path of the file collecting stdout and stderr.
    pub fn log_path(&self) -> &Path {
        &self.inner.log
    }

    /// Everything the process wrote to stdout and stderr so far.
    pub fn log(&self) -> String {
        fs::read(&self.inner.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// True until the process has exited.
    pub fn is_running(&self) -> bool {
        ProcInner::running(&mut self.inner.child())
    }

    /// Stops the process: SIGTERM, up to 5 s grace, then SIGKILL; reaps it.
    /// Does nothing if it already exited.
    pub fn stop(&self) {
        self.inner.stop_within(STOP_GRACE);
    }

    /// Like [`Proc::stop`] with a custom grace period before SIGKILL.
    pub fn stop_within(&self, grace: Duration) {
        self.inner.stop_within(grace);
    }

    /// SIGKILLs the process at once and reaps it: simulates a crash.
    pub fn kill(&self) {
        let mut child = self.inner.child();
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Waits up to `timeout` for the process to exit by itself; returns its
    /// exit code (`None` when killed by a signal). Panics on timeout.
    pub fn wait_exit(&self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.inner.child().try_wait() {
                return status.code();
            }
            if Instant::now() >= deadline {
                panic!(
                    "{} (pid {}) still running after {timeout:?}; log:\n{}",
                    self.inner.what,
                    self.pid(),
                    self.log()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Panics with the log when the process has exited.
    pub(crate) fn assert_running(&self, context: &str) {
        assert!(
            self.is_running(),
            "{context}: {} (pid {}) exited; log {}:\n{}",
            self.inner.what,
            self.pid(),
            self.inner.log.display(),
            self.log()
        );
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.inner.stop_within(STOP_GRACE);
        if thread::panicking() {
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(40)..];
            // eprintln! (not a raw stderr write) so the test harness captures
            // it and shows it with the failure.
            eprintln!(
                "--- hagw-testkit: last {} log lines of {} (pid {}) ---\n{}",
                tail.len(),
                self.inner.what,
                self.pid(),
                tail.join("\n")
            );
        }
    }
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

/// The start time of a living (not zombie) process.
pub(crate) fn start_time(pid: u32) -> Option<u64> {
    match stat(pid) {
        Some((state, start)) if state != 'Z' && state != 'X' => Some(start),
        _ => None,
    }
}

/// `pid` is running and is still the process that had `start` then.
pub(crate) fn same_process(pid: u32, start: u64) -> bool {
    start_time(pid) == Some(start)
}

/// Signals `pid` only while it is still the process started at `start`.
pub(crate) fn signal_if_same(pid: u32, start: u64, sig: Signal) {
    if same_process(pid, start) {
        if let Ok(raw) = i32::try_from(pid) {
            let _ = kill(Pid::from_raw(raw), sig);
        }
    }
}

/// Polls `dead` every 50 ms for up to `within`; true once it holds.
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

/// TERM, up to `grace`, then KILL (and up to 2 s more), each signal sent
/// only while `pid` is still the process started at `start`. True when it
/// was running.
fn stop_same(pid: u32, start: u64, grace: Duration) -> bool {
    if !same_process(pid, start) {
        return false;
    }
    signal_if_same(pid, start, Signal::SIGTERM);
    if !wait_dead(|| !same_process(pid, start), grace) {
        signal_if_same(pid, start, Signal::SIGKILL);
        wait_dead(|| !same_process(pid, start), Duration::from_secs(2));
    }
    true
}

/// Stops a process found somewhere (say, left in a namespace by a crash)
/// that nobody recorded: TERM, up to `grace`, then KILL, checked by the
/// start time it has now. True when it was running.
pub fn stop_pid(pid: u32, grace: Duration) -> bool {
    match start_time(pid) {
        Some(start) => stop_same(pid, start, grace),
        None => false,
    }
}

/// A detached process, started by [`crate::Netns::spawn_detached`]: it
/// outlives the process that started it (`hagw lab up` exits, its daemons
/// run on), which recorded it here and saved the record. The PID alone could
/// be reused after the process ends; the PID with its start time cannot.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProcRecord {
    /// What it is: "r1", "host", "server", "flows"...
    pub name: String,
    /// The namespace it runs in.
    pub ns: String,
    pub pid: u32,
    /// Field 22 of /proc/PID/stat (clock ticks after boot).
    pub start_time: u64,
    /// Where its stdout and stderr go.
    pub log: PathBuf,
}

impl ProcRecord {
    /// Running, and still the process that was started.
    pub fn alive(&self) -> bool {
        same_process(self.pid, self.start_time)
    }

    /// TERM, up to `grace` to exit, then KILL. Signals only the recorded
    /// process, and only while it is still the one that was started. True
    /// when it was running.
    pub fn stop(&self, grace: Duration) -> bool {
        stop_same(self.pid, self.start_time, grace)
    }
}
