//! `hagw lab` end to end (run as root): up, fail r1, heal r1, down; and the
//! configs it writes.
//!
//! The lab uses fixed names (`hagwlab-*`, /run/hagw-lab), so this test holds
//! an exclusive lock on /run/hagw-lab-test.lock for its whole run, refuses to
//! touch a lab it did not start, and always runs `hagw lab down` (a Drop
//! guard) once it has started one.

use std::fs::OpenOptions;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Output};

const HAGW: &str = env!("CARGO_BIN_EXE_hagw");

fn is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

fn lab(args: &[&str]) -> Output {
    let out = Command::new(HAGW)
        .arg("lab")
        .args(args)
        .output()
        .expect("run hagw lab");
    eprintln!(
        "$ hagw lab {} -> {}\n{}{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn lab_namespaces() -> Vec<String> {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with("hagwlab-"))
        .map(str::to_owned)
        .collect()
}

/// `key=value` from the `lab-result` line.
fn result_field(out: &str, key: &str) -> Option<u64> {
    let line = out.lines().find(|l| l.starts_with("lab-result "))?;
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
        .and_then(|v| v.parse().ok())
}

/// Runs `hagw lab down` when dropped, whatever happened before.
struct Down;

impl Drop for Down {
    fn drop(&mut self) {
        let _ = lab(&["down"]);
    }
}

#[test]
fn lab_up_fail_heal_down() {
    if !is_root() {
        eprintln!("skipped: hagw lab needs root");
        return;
    }
    // One run at a time on this machine; released when this process ends.
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open("/run/hagw-lab-test.lock")
        .expect("open /run/hagw-lab-test.lock");
    lock.lock().expect("lock /run/hagw-lab-test.lock");

    assert!(
        !Path::new("/run/hagw-lab").exists() && lab_namespaces().is_empty(),
        "a hagw lab is already up on this machine (not started by this test); \
         `hagw lab down` removes it"
    );
    let _down = Down;

    let up = lab(&["up", "--flows", "20"]);
    assert!(up.status.success(), "hagw lab up failed");
    assert!(stdout(&up).contains("20 TCP connections"));

    // A second `up` refuses and leaves the running lab alone.
    let again = lab(&["up", "--flows", "20"]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already up"));

    let route = Command::new("ip")
        .args(["-n", "hagwlab-host", "route", "show", "default"])
        .output()
        .expect("ip route");
    let route = String::from_utf8_lossy(&route.stdout);
    assert!(
        route.contains("proto hagw") || route.contains("proto 199"),
        "the host's default is not hagw's: {route}"
    );
    assert!(
        route.contains("via 192.168.100.20"),
        "no r1 next hop: {route}"
    );
    assert!(
        route.contains("via 192.168.100.21"),
        "no r2 next hop: {route}"
    );

    let status = lab(&["status"]);
    assert!(status.status.success());
    assert!(stdout(&status).contains("Established"));

    let fail = lab(&["fail", "r1"]);
    assert!(fail.status.success(), "hagw lab fail r1 failed");
    let out = stdout(&fail);
    let ms = result_field(&out, "failover_ms").expect("a failover_ms figure");
    assert!(ms > 0 && ms < 60_000, "failover_ms={ms}");
    assert!(out.contains(&format!("failover_ms={ms} flows_broken=")));
    assert_eq!(result_field(&out, "r2_broken"), Some(0), "r2 flows broke");
    assert_eq!(
        result_field(&out, "r1_broken"),
        result_field(&out, "r1_before"),
        "a flow through the cut router survived"
    );
    let route = Command::new("ip")
        .args(["-n", "hagwlab-host", "route", "show", "default"])
        .output()
        .expect("ip route");
    let route = String::from_utf8_lossy(&route.stdout);
    assert!(
        !route.contains("192.168.100.20"),
        "r1 still listed: {route}"
    );

    let heal = lab(&["heal", "r1"]);
    assert!(heal.status.success(), "hagw lab heal r1 failed");
    assert!(result_field(&stdout(&heal), "heal_ms").is_some());
    // Connection pinning (on by default): r1's return moves no surviving flow.
    assert_eq!(
        result_field(&stdout(&heal), "flows_broken"),
        Some(0),
        "heal broke flows:\n{}",
        stdout(&heal)
    );

    let down = lab(&["down"]);
    assert!(down.status.success());
    assert!(lab_namespaces().is_empty(), "left: {:?}", lab_namespaces());
    assert!(!Path::new("/run/hagw-lab").exists());
}

/// The configs `hagw lab up` writes are valid hagw configs, for every
/// topology, BFD on and off.
#[test]
fn lab_configs_are_valid() {
    use hagw_lab::topology::Options;
    for kind in <hagw_lab::Kind as clap::ValueEnum>::value_variants() {
        for bfd_ms in [0, 50] {
            for node in kind.topology().nodes(&Options { bfd_ms }) {
                if let Err(problems) = hagw::config::parse(&node.config) {
                    panic!("{} config: {problems:?}\n{}", node.name, node.config);
                }
            }
        }
    }
}
