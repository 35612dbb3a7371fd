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
