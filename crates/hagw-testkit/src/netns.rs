//! Network namespaces and the links between them.

use std::fs::{self, File};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Once, Weak};
use std::thread;
use std::time::Duration;

use nix::sched::{setns, CloneFlags};

use crate::process::{Proc, ProcInner};
use crate::{cleanup_stale, live_names, remove_ns, require_root, run_cmd, scratch_root};

/// A network namespace made for one test. Dropping it stops the processes
/// spawned in it, then any other process still living in it (by PID), then
/// deletes the namespace and its scratch directory.
pub struct Netns {
    name: String,
    dir: PathBuf,
    procs: Mutex<Vec<Weak<ProcInner>>>,
    spawned: AtomicU32,
}

impl Netns {
    /// Creates a namespace named by [`crate::unique_name`]`(label)` with `lo`
    /// up. The first call in a process also runs [`crate::cleanup_stale`].
    pub fn new(label: &str) -> Netns {
        static CLEANUP: Once = Once::new();
        require_root();
        CLEANUP.call_once(cleanup_stale);
        let name = crate::unique_name(label);
        // Registered before it exists, so a concurrent cleanup_stale() in this
        // process never mistakes it for a leftover.
        live_names()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.clone());
        if let Err(e) = run_cmd(Command::new("ip").args(["netns", "add", &name])) {
            live_names()
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&name);
            panic!("cannot create namespace {name}: {e}");
        }
        let root = scratch_root();
        let dir = root.join(&name);
        // From here on Drop removes whatever was made.
        let ns = Netns {
            name,
            dir,
            procs: Mutex::new(Vec::new()),
            spawned: AtomicU32::new(0),
        };
        fs::create_dir_all(&ns.dir)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", ns.dir.display()));
        for d in [&root, &ns.dir] {
            let _ = fs::set_permissions(d, fs::Permissions::from_mode(0o755));
        }
        ns.sh("ip link set lo up");
        ns
    }

    /// The namespace name (as listed by `ip netns list`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/<name>`, the handle file `setns` uses.
    pub fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    /// This namespace's scratch directory (logs, daemon configs, sockets),
    /// removed with the namespace.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Runs `sh -c script` inside the namespace and returns its stdout;
    /// panics with stdout and stderr when it exits non-zero. Do not leave
    /// background jobs holding stdout open (use [`Netns::spawn`] for those).
    pub fn sh(&self, script: &str) -> String {
        self.try_sh(script)
            .unwrap_or_else(|e| panic!("in netns {}: {e}", self.name))
    }

    /// Like [`Netns::sh`] but returns the failure (with stdout and stderr)
    /// as `Err` instead of panicking.
    pub fn try_sh(&self, script: &str) -> Result<String, String> {
        run_cmd(Command::new("ip").args(["netns", "exec", &self.name, "sh", "-c", script]))
    }

    /// Starts `program args..` inside the namespace with stdout and stderr
    /// going to a log file in [`Netns::dir`]. The returned [`Proc`] stops it
    /// when dropped; dropping the namespace stops it too.
    pub fn spawn(&self, program: &str, args: &[&str]) -> Proc {
        self.spawn_env(program, args, &[])
    }

    /// Like [`Netns::spawn`], with extra environment variables.
    pub fn spawn_env(&self, program: &str, args: &[&str], env: &[(&str, &str)]) -> Proc {
        let n = self.spawned.fetch_add(1, Ordering::Relaxed);
        let base = Path::new(program)
            .file_name()
            .and_then(|s| s.to_str())
            .unwrap_or("proc");
        let log = self.dir.join(format!("{base}-{n}.log"));
        let out = File::create(&log)
            .unwrap_or_else(|e| panic!("cannot create log {}: {e}", log.display()));
        let err = out
            .try_clone()
            .unwrap_or_else(|e| panic!("cannot dup log fd: {e}"));
        // `ip netns exec` execs the program in place: the child's pid is the
        // program's pid.
        let child = Command::new("ip")
            .args(["netns", "exec", &self.name, program])
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn {program} in netns {}: {e}", self.name));
        let what = format!("{base} in netns {}", self.name);
        let inner = Arc::new(ProcInner::new(child, what, log));
        let mut procs = self.procs.lock().unwrap_or_else(|e| e.into_inner());
        procs.retain(|w| w.strong_count() > 0);
        procs.push(Arc::downgrade(&inner));
        Proc { inner }
    }

    /// Runs `f` on a new OS thread that has `setns()`'d into this namespace
    /// and returns its result (a panic in `f` is propagated). Sockets and
    /// netlink handles opened inside belong to the namespace for their whole
    /// life, so they may be returned and used from any thread. `f` may borrow
    /// from the caller. Threads `f` starts (e.g. a tokio runtime's workers)
    /// inherit the namespace.
    pub fn run<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        let ns = self.open();
        let name = &self.name;
        thread::scope(|s| {
            let h = thread::Builder::new()
                .name(format!("netns-{name}"))
                .spawn_scoped(s, move || {
                    enter(&ns, name);
                    f()
                })
                .unwrap_or_else(|e| panic!("cannot start thread: {e}"));
            h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }

    /// Runs an async body to completion inside this namespace on a fresh
    /// two-worker tokio runtime: sockets the body (or tasks it spawns, such
    /// as FibSync) opens belong to the namespace, and spawned tasks keep
    /// running while the body blocks on `ip` commands.
    pub fn block_on<R: Send, Fut: std::future::Future<Output = R>>(
        &self,
        f: impl FnOnce() -> Fut + Send,
    ) -> R {
        self.run(|| {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap_or_else(|e| panic!("cannot start a tokio runtime: {e}"));
            rt.block_on(f())
        })
    }

    /// Like [`Netns::run`] but does not wait: `f` runs on a background thread
    /// inside the namespace (e.g. a daemon's event loop).
    pub fn spawn_thread<R: Send + 'static>(
        &self,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> thread::JoinHandle<R> {
        let ns = self.open();
        let name = self.name.clone();
        thread::Builder::new()
            .name(format!("netns-{name}"))
            .spawn(move || {
                enter(&ns, &name);
                f()
            })
            .unwrap_or_else(|e| panic!("cannot start thread: {e}"))
    }

    fn open(&self) -> File {
        File::open(self.path())
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", self.path().display()))
    }

    /// Sets a sysctl inside the namespace (`net.*` keys are per namespace),
    /// e.g. `ns.sysctl("net.ipv4.ip_forward", "1")`.
    pub fn sysctl(&self, key: &str, value: &str) {
        let path = Path::new("/proc/sys").join(key.replace('.', "/"));
        let file = path.to_string_lossy().into_owned();
        // /proc/sys/net resolves against the opening thread's namespace.
        self.run(|| fs::write(&path, value))
            .unwrap_or_else(|e| panic!("sysctl {key}={value} in netns {}: {file}: {e}", self.name));
    }

    /// Polls `check` every 20 ms until it returns true; panics mentioning
    /// `what` (and the namespace) when `timeout` passes first.
    pub fn wait_for(&self, what: &str, timeout: Duration, mut check: impl FnMut(&Netns) -> bool) {
        crate::wait_until(&format!("{what} (netns {})", self.name), timeout, || {
            check(self)
        });
    }
}

fn enter(ns: &File, name: &str) {
    setns(ns, CloneFlags::CLONE_NEWNET)
        .unwrap_or_else(|e| panic!("setns into netns {name} failed: {e}"));
}

impl Drop for Netns {
    fn drop(&mut self) {
        let procs = std::mem::take(&mut *self.procs.lock().unwrap_or_else(|e| e.into_inner()));
        for p in procs.iter().rev().filter_map(Weak::upgrade) {
            p.stop_within(crate::STOP_GRACE);
        }
        remove_ns(&self.name);
        live_names()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.name);
    }
}

fn check_ifname(name: &str) {
    assert!(
        !name.is_empty() && name.len() <= crate::MAX_NAME,
        "interface name {name:?} must be 1..={} chars",
        crate::MAX_NAME
    );
}

/// Creates a veth pair `a_if` (in `a`) <-> `b_if` (in `b`) and sets both ends
/// up. The pair is created from inside `a` with its peer placed directly in
/// `b`, so nothing ever appears in the root namespace.
pub fn veth(a: &Netns, a_if: &str, b: &Netns, b_if: &str) {
    check_ifname(a_if);
    check_ifname(b_if);
    a.sh(&format!(
        "ip link add {a_if} type veth peer name {b_if} netns {} && ip link set {a_if} up",
        b.name()
    ));
    b.sh(&format!("ip link set {b_if} up"));
}

/// Creates bridge `name` in `ns`, sets it up and enslaves `ports` (also set
/// up). STP stays off, so ports forward at once.
pub fn bridge(ns: &Netns, name: &str, ports: &[&str]) {
    check_ifname(name);
    let mut script = format!("ip link add {name} type bridge && ip link set {name} up");
    for p in ports {
        script.push_str(&format!(
            " && ip link set {p} master {name} && ip link set {p} up"
        ));
    }
    ns.sh(&script);
}

/// Adds address `cidr` (e.g. `10.0.0.1/24`, `fd00::1/64`) to `ifname` in
/// `ns`. IPv6 addresses skip duplicate address detection so they are usable
/// at once.
pub fn addr(ns: &Netns, ifname: &str, cidr: &str) {
    let nodad = if cidr.contains(':') { " nodad" } else { "" };
    ns.sh(&format!("ip addr add {cidr} dev {ifname}{nodad}"));
}
