//! FRR and BIRD peers running inside a namespace.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use nix::unistd::{chown, Group, User};

use crate::{run_cmd, wait_until, Netns, Proc};

/// How long a daemon gets to start answering on its control socket.
const START_TIMEOUT: Duration = Duration::from_secs(15);

static INSTANCE: AtomicU32 = AtomicU32::new(0);

/// A fresh per-instance directory under the namespace's scratch dir.
fn instance_dir(ns: &Netns, kind: &str) -> PathBuf {
    let dir = ns.dir().join(format!(
        "{kind}-{}",
        INSTANCE.fetch_add(1, Ordering::Relaxed)
    ));
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    dir
}

fn write(path: &Path, text: &str) {
    fs::write(path, text).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
}

/// zebra + bgpd (+ bfdd) in a namespace, each spawned in the foreground (so
/// the harness owns the PIDs) with pid files, zserv socket, vty sockets and
/// bfdd control socket in a private directory owned by the `frr` user.
/// Dropping it stops the daemons by PID (bgpd/bfdd first, zebra last).
pub struct Frr {
    dir: PathBuf,
    /// (daemon, process) in start order.
    daemons: Vec<(&'static str, Proc)>,
}

impl Frr {
    /// Writes `config` (an integrated `frr.conf`; every daemon reads the
    /// parts it knows) and starts zebra, bgpd and, if `bfd`, bfdd in `ns`;
    /// returns once every daemon answers vtysh. Panics with the daemon logs
    /// if one dies or does not answer within 15 s.
    pub fn start(ns: &Netns, config: &str, bfd: bool) -> Frr {
        let dir = instance_dir(ns, "frr");
        let conf = dir.join("frr.conf");
        write(&conf, config);
        let user = User::from_name("frr")
            .ok()
            .flatten()
            .unwrap_or_else(|| panic!("no `frr` user: is the frr package installed?"));
        let group = Group::from_name("frr").ok().flatten().map(|g| g.gid);
        for p in [&dir, &conf] {
            chown(p.as_path(), Some(user.uid), group.or(Some(user.gid)))
                .unwrap_or_else(|e| panic!("cannot chown {} to frr: {e}", p.display()));
        }
        let mut frr = Frr {
            dir,
            daemons: Vec::new(),
        };
        let mut names = vec!["zebra"];
        if bfd {
            names.push("bfdd");
        }
        names.push("bgpd");
        for daemon in names {
            let d = |f: &str| frr.dir.join(f).to_string_lossy().into_owned();
            let (conf, pid, zserv, vty) = (
                d("frr.conf"),
                d(&format!("{daemon}.pid")),
                d("zserv.api"),
                d(""),
            );
            let bfdctl = d("bfdd.sock");
            let mut args = vec![
                "-N",
                ns.name(),
                "-f",
                &conf,
                "-i",
                &pid,
                "-z",
                &zserv,
                "--vty_socket",
                &vty,
                "-u",
                "frr",
                "-g",
                "frr",
                "--log",
                "stdout",
            ];
            if daemon == "bfdd" {
                args.extend(["--bfdctl", &bfdctl]);
            }
            let proc = ns.spawn(&format!("/usr/lib/frr/{daemon}"), &args);
            frr.daemons.push((daemon, proc));
            // zebra must own the zserv socket before its clients start.
            frr.wait_ready(daemon);
        }
        frr
    }

    fn wait_ready(&self, daemon: &str) {
        wait_until(
            &format!("FRR {daemon} to answer vtysh in {}", self.dir.display()),
            START_TIMEOUT,
            || {
                for (_, p) in &self.daemons {
                    p.assert_running("FRR start");
                }
                self.vtysh_cmd(Some(daemon), "show version").is_ok()
            },
        );
    }

    fn vtysh_cmd(&self, daemon: Option<&str>, cmd: &str) -> Result<String, String> {
        let mut c = Command::new("vtysh");
        c.arg("--vty_socket").arg(&self.dir);
        if let Some(d) = daemon {
            c.args(["-d", d]);
        }
        run_cmd(c.args(["-c", cmd]))
    }

    /// Runs `vtysh -c cmd` against this instance and returns its output;
    /// panics (with the output) when vtysh fails. Several commands may be
    /// separated by newlines, e.g. `"configure terminal\nrouter bgp 65001\n..."`.
    pub fn vtysh(&self, cmd: &str) -> String {
        self.try_vtysh(cmd)
            .unwrap_or_else(|e| panic!("FRR in {}: {e}", self.dir.display()))
    }

    /// Like [`Frr::vtysh`] but returns failures as `Err`.
    pub fn try_vtysh(&self, cmd: &str) -> Result<String, String> {
        self.vtysh_cmd(None, cmd)
    }

    /// The daemon process, e.g. `frr.daemon("bgpd")` to kill it.
    pub fn daemon(&self, name: &str) -> &Proc {
        self.daemons
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, p)| p)
            .unwrap_or_else(|| panic!("FRR daemon {name} was not started"))
    }

    /// The instance directory (config, sockets, pid files).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// All daemon logs, each under a header.
    pub fn logs(&self) -> String {
        self.daemons
            .iter()
            .map(|(n, p)| format!("--- {n} ---\n{}", p.log()))
            .collect()
    }
}

impl Drop for Frr {
    fn drop(&mut self) {
        // Clients before zebra, so they do not log zserv errors on the way.
        while let Some((_, p)) = self.daemons.pop() {
            p.stop();
        }
    }
}

/// A BIRD 2 instance in a namespace: `bird -f -c CONF -s SOCK`, foreground
/// so the harness owns the PID. Dropping it stops it by PID.
pub struct Bird {
    dir: PathBuf,
    sock: PathBuf,
    proc: Proc,
}

impl Bird {
    /// Writes `config` and starts BIRD in `ns`; returns once `birdc` gets an
    /// answer. If the config has no `log` statement, `log stderr all;` is
    /// prepended so the process log shows what BIRD says. Panics with the
    /// log if BIRD exits (e.g. config error) or does not answer within 15 s.
    /// The config must set a `router id` unless `ns` has an IPv4 address.
    pub fn start(ns: &Netns, config: &str) -> Bird {
        let dir = instance_dir(ns, "bird");
        let conf = dir.join("bird.conf");
        let sock = dir.join("bird.ctl");
        let has_log = config.lines().any(|l| l.trim_start().starts_with("log "));
        let text = if has_log {
            config.to_string()
        } else {
            format!("log stderr all;\n{config}")
        };
        write(&conf, &text);
        let (c, s) = (conf.to_string_lossy(), sock.to_string_lossy());
        let proc = ns.spawn("bird", &["-f", "-c", &c, "-s", &s]);
        let bird = Bird { dir, sock, proc };
        wait_until(
            &format!("BIRD in {} to answer birdc", bird.dir.display()),
            START_TIMEOUT,
            || {
                bird.proc.assert_running("BIRD start");
                bird.try_birdc("show status").is_ok()
            },
        );
        bird
    }

    /// Runs `birdc -s SOCK cmd` and returns its output; panics when birdc
    /// fails (e.g. cannot connect).
    pub fn birdc(&self, cmd: &str) -> String {
        self.try_birdc(cmd)
            .unwrap_or_else(|e| panic!("BIRD in {}: {e}", self.dir.display()))
    }

    /// Like [`Bird::birdc`] but returns failures as `Err`.
    pub fn try_birdc(&self, cmd: &str) -> Result<String, String> {
        run_cmd(Command::new("birdc").arg("-s").arg(&self.sock).arg(cmd))
    }

    /// The BIRD process (its log, pid; `kill()` to simulate a crash).
    pub fn proc(&self) -> &Proc {
        &self.proc
    }

    /// The instance directory (config and control socket).
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}
