//! Processes started by the harness, stopped by PID.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

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
