//! `/proc/sys` knobs. `/proc/sys/net` resolves against the network namespace
//! of the calling thread, so these act on the caller's netns.

use crate::KernelError;

const HASH_POLICY: [&str; 2] = [
    "/proc/sys/net/ipv4/fib_multipath_hash_policy",
    "/proc/sys/net/ipv6/fib_multipath_hash_policy",
];

/// Sets `net.ipv4.fib_multipath_hash_policy` and
/// `net.ipv6.fib_multipath_hash_policy` to 1 (L4: hash on the 5-tuple) when
/// `l4`, else 0 (L3). Acts on the calling thread's network namespace.
pub fn set_multipath_hash_policy(l4: bool) -> Result<(), KernelError> {
    let value = if l4 { "1" } else { "0" };
    for path in HASH_POLICY {
        write(path, value)?;
    }
    Ok(())
}

/// Writes one sysctl file.
pub fn write(path: &str, value: &str) -> Result<(), KernelError> {
    std::fs::write(path, value).map_err(|source| KernelError::Sysctl {
        path: path.to_string(),
        source,
    })
}

/// Reads one sysctl file (trimmed).
pub fn read(path: &str) -> Result<String, KernelError> {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .map_err(|source| KernelError::Sysctl {
            path: path.to_string(),
            source,
        })
}

/// Writes `net.{ipv4,ipv6}.conf.DEV.KEY` (`v6` picks the family).
pub fn set_conf(v6: bool, dev: &str, key: &str, value: &str) -> Result<(), KernelError> {
    write(&conf_path(v6, "conf", dev, key), value)
}

/// Reads `net.{ipv4,ipv6}.conf.DEV.KEY`.
pub fn get_conf(v6: bool, dev: &str, key: &str) -> Result<String, KernelError> {
    read(&conf_path(v6, "conf", dev, key))
}

/// Writes `net.{ipv4,ipv6}.neigh.DEV.KEY` (neighbour timers of one interface).
pub fn set_neigh(v6: bool, dev: &str, key: &str, value: &str) -> Result<(), KernelError> {
    write(&conf_path(v6, "neigh", dev, key), value)
}

/// `/proc/sys/net/ipv4/conf/DEV/KEY`. Interface names are used as they are
/// (a dot in `eth0.100` is part of the directory name under `/proc`).
/// `dev` must be an interface name, `all` or `default`: a name with a slash
/// or `..` could leave the directory, so it is replaced by one that cannot
/// exist and the write fails.
fn conf_path(v6: bool, section: &str, dev: &str, key: &str) -> String {
    let fam = if v6 { "ipv6" } else { "ipv4" };
    let dev = if dev.contains('/') || dev == "." || dev == ".." || dev.is_empty() {
        "(invalid interface name)"
    } else {
        dev
    };
    format!("/proc/sys/net/{fam}/{section}/{dev}/{key}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_interface_paths_stay_in_their_directory() {
        assert_eq!(
            conf_path(false, "conf", "br_net1", "proxy_arp"),
            "/proc/sys/net/ipv4/conf/br_net1/proxy_arp"
        );
        assert_eq!(
            conf_path(true, "neigh", "eth0.100", "retrans_time_ms"),
            "/proc/sys/net/ipv6/neigh/eth0.100/retrans_time_ms"
        );
        assert!(conf_path(false, "conf", "../../x", "y").contains("(invalid"));
    }
}
