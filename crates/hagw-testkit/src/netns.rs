//! Network namespaces and the links between them.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Once, Weak};
use std::thread;
use std::time::Duration;

use nix::sched::{setns, CloneFlags};

use crate::process::{self, Proc, ProcInner, ProcRecord};
use crate::{
    cleanup_stale, live_names, remove_ns, require_root, run_cmd, scratch_root, try_remove_ns,
    valid_name, Error,
};

/// A network namespace. One made for a test ([`Netns::new`]) is removed
/// when dropped: the processes spawned in it are stopped, then any other
/// process still living in it (by PID), then the namespace and its scratch
/// directory are deleted. One made with [`Netns::create_persistent`] or
/// found with [`Netns::attach`] stays when the handle drops (its spawned
/// [`Proc`]s still stop with theirs); [`remove_named`] deletes it.
pub struct Netns {
    name: String,
    dir: PathBuf,
    procs: Mutex<Vec<Weak<ProcInner>>>,
    spawned: AtomicU32,
    /// Deleted on drop (a test's namespace), or left standing.
    owned: bool,
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
        // From here on Drop removes whatever was made.
        let ns = Netns::handle(name, true);
        ns.make_dir()
            .unwrap_or_else(|e| panic!("in netns {}: {e}", ns.name));
        ns.sh("ip link set lo up");
        ns
    }

    /// Creates namespace `name` exactly (no [`crate::unique_name`]) with
    /// `lo` up, to outlive this handle and this process: `hagw lab up`
    /// builds the lab and exits, `hagw lab fail` finds it later by name
    /// ([`Netns::attach`]), `hagw lab down` removes it ([`remove_named`]).
    /// Fails if it exists. A half-made namespace (lo failed) is deleted.
    pub fn create_persistent(name: &str) -> Result<Netns, Error> {
        if !valid_name(name) {
            return Err(Error::Name(name.to_string()));
        }
        if Netns::exists(name) {
            return Err(Error::Exists(name.to_string()));
        }
        run_cmd(Command::new("ip").args(["netns", "add", name])).map_err(Error::Command)?;
        let ns = Netns::handle(name.to_string(), false);
        if let Err(e) = ns.try_ip(&["link", "set", "lo", "up"]) {
            let _ = try_remove_ns(name);
            return Err(e);
        }
        Ok(ns)
    }

    /// A handle on the existing namespace `name` (made by another process,
    /// e.g. with [`Netns::create_persistent`]); dropping it leaves the
    /// namespace.
    pub fn attach(name: &str) -> Result<Netns, Error> {
        if !valid_name(name) {
            return Err(Error::Name(name.to_string()));
        }
        if !Netns::exists(name) {
            return Err(Error::Missing(name.to_string()));
        }
        Ok(Netns::handle(name.to_string(), false))
    }

    /// Whether a namespace `name` exists (`/run/netns/<name>`).
    pub fn exists(name: &str) -> bool {
        Path::new("/run/netns").join(name).exists()
    }

    fn handle(name: String, owned: bool) -> Netns {
        Netns {
            dir: scratch_root().join(&name),
            name,
            procs: Mutex::new(Vec::new()),
            spawned: AtomicU32::new(0),
            owned,
        }
    }

    /// Creates the scratch directory (and its root), world-traversable.
    fn make_dir(&self) -> Result<(), Error> {
        fs::create_dir_all(&self.dir)
            .map_err(|e| Error::io(format!("cannot create {}", self.dir.display()), e))?;
        for d in [&scratch_root(), &self.dir] {
            let _ = fs::set_permissions(d, fs::Permissions::from_mode(0o755));
        }
        Ok(())
    }

    /// Whether dropping this handle leaves the namespace standing.
    pub fn is_persistent(&self) -> bool {
        !self.owned
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

    /// `ip -n NAME args...`: its stdout, or the failure with the command
    /// line, stdout and stderr. No shell, so arguments need no quoting.
    pub fn try_ip(&self, args: &[&str]) -> Result<String, Error> {
        run_cmd(Command::new("ip").args(["-n", &self.name]).args(args)).map_err(Error::Command)
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
        if !self.dir.exists() {
            self.make_dir()
                .unwrap_or_else(|e| panic!("in netns {}: {e}", self.name));
        }
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

    /// Starts `program args..` inside the namespace **detached**: in its own
    /// process group (a Ctrl-C at the terminal does not reach it), stdout
    /// and stderr appended to `log`, and not stopped by anything here: it
    /// outlives the caller, who keeps the returned [`ProcRecord`] to check
    /// and stop it later, from any process. `ip netns exec` execs the
    /// program, so the PID recorded is the program's own.
    pub fn spawn_detached(
        &self,
        name: &str,
        program: &Path,
        args: &[String],
        env: &[(&str, &str)],
        log: &Path,
    ) -> Result<ProcRecord, Error> {
        let cannot_open = |e| Error::io(format!("cannot open {}", log.display()), e);
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(cannot_open)?;
        let err = out.try_clone().map_err(cannot_open)?;
        let child = Command::new("ip")
            .args(["netns", "exec", &self.name])
            .arg(program)
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .map_err(|e| Error::io(format!("cannot start {name} in {}", self.name), e))?;
        let pid = child.id();
        // The child is reaped by whoever outlives it (init once the caller
        // exits); until then it is checked by PID and start time.
        drop(child);
        Ok(ProcRecord {
            name: name.to_string(),
            ns: self.name.clone(),
            pid,
            start_time: process::start_time(pid).unwrap_or(0),
            log: log.to_path_buf(),
        })
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
        self.open_file().unwrap_or_else(|e| panic!("{e}"))
    }

    fn open_file(&self) -> Result<File, Error> {
        File::open(self.path())
            .map_err(|e| Error::io(format!("cannot open {}", self.path().display()), e))
    }

    /// Sets a sysctl inside the namespace (`net.*` keys are per namespace),
    /// e.g. `ns.sysctl("net.ipv4.ip_forward", "1")`.
    pub fn sysctl(&self, key: &str, value: &str) {
        self.try_sysctl(key, value)
            .unwrap_or_else(|e| panic!("in netns {}: {e}", self.name));
    }

    /// [`Netns::sysctl`] returning the failure.
    pub fn try_sysctl(&self, key: &str, value: &str) -> Result<(), Error> {
        let path = Path::new("/proc/sys").join(key.replace('.', "/"));
        let file = path.to_string_lossy().into_owned();
        let ns = self.open_file()?;
        let name = &self.name;
        // /proc/sys/net resolves against the opening thread's namespace.
        let written = thread::scope(|s| {
            s.spawn(|| {
                setns(&ns, CloneFlags::CLONE_NEWNET)
                    .map_err(|e| format!("setns into netns {name} failed: {e}"))?;
                fs::write(&path, value).map_err(|e| format!("{file}: {e}"))
            })
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
        });
        written.map_err(|e| Error::Command(format!("sysctl {key}={value} in netns {name}: {e}")))
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
        if !self.owned {
            return;
        }
        remove_ns(&self.name);
        live_names()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.name);
    }
}

/// Deletes namespace `name` (one made with [`Netns::create_persistent`],
/// perhaps by another process): stops every process living in it by PID
/// (TERM, up to 5 s, then KILL), deletes it and the harness's directories
/// for it. Deleting one that does not exist is not an error.
pub fn remove_named(name: &str) -> Result<(), Error> {
    if !valid_name(name) {
        return Err(Error::Name(name.to_string()));
    }
    if !Netns::exists(name) {
        return Ok(());
    }
    try_remove_ns(name)
}

fn check_ifname(name: &str) -> Result<(), Error> {
    if valid_name(name) {
        Ok(())
    } else {
        Err(Error::Name(name.to_string()))
    }
}

/// Creates a veth pair `a_if` (in `a`) <-> `b_if` (in `b`) and sets both ends
/// up. The pair is created from inside `a` with its peer placed directly in
/// `b`, so nothing ever appears in the root namespace.
pub fn veth(a: &Netns, a_if: &str, b: &Netns, b_if: &str) {
    try_veth(a, a_if, b, b_if).unwrap_or_else(|e| panic!("veth {a_if} <-> {b_if}: {e}"));
}

/// [`veth`] returning the failure.
pub fn try_veth(a: &Netns, a_if: &str, b: &Netns, b_if: &str) -> Result<(), Error> {
    check_ifname(a_if)?;
    check_ifname(b_if)?;
    a.try_ip(&[
        "link",
        "add",
        a_if,
        "type",
        "veth",
        "peer",
        "name",
        b_if,
        "netns",
        b.name(),
    ])?;
    a.try_ip(&["link", "set", a_if, "up"])?;
    b.try_ip(&["link", "set", b_if, "up"])?;
    Ok(())
}

/// Creates bridge `name` in `ns`, sets it up and enslaves `ports` (also set
/// up). STP stays off, so ports forward at once.
pub fn bridge(ns: &Netns, name: &str, ports: &[&str]) {
    try_bridge(ns, name, ports).unwrap_or_else(|e| panic!("bridge {name}: {e}"));
}

/// [`bridge`] returning the failure.
pub fn try_bridge(ns: &Netns, name: &str, ports: &[&str]) -> Result<(), Error> {
    check_ifname(name)?;
    ns.try_ip(&["link", "add", name, "type", "bridge"])?;
    ns.try_ip(&["link", "set", name, "up"])?;
    for p in ports {
        check_ifname(p)?;
        ns.try_ip(&["link", "set", p, "master", name, "up"])?;
    }
    Ok(())
}

/// Adds address `cidr` (e.g. `10.0.0.1/24`, `fd00::1/64`) to `ifname` in
/// `ns`. IPv6 addresses skip duplicate address detection so they are usable
/// at once.
pub fn addr(ns: &Netns, ifname: &str, cidr: &str) {
    try_addr(ns, ifname, cidr).unwrap_or_else(|e| panic!("addr {cidr} on {ifname}: {e}"));
}

/// [`addr`] returning the failure.
pub fn try_addr(ns: &Netns, ifname: &str, cidr: &str) -> Result<(), Error> {
    let mut args = vec!["addr", "add", cidr, "dev", ifname];
    if cidr.contains(':') {
        args.push("nodad");
    }
    ns.try_ip(&args)?;
    Ok(())
}
