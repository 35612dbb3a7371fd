//! Uplink health probes for the router role. While any probe is down the
//! router withdraws its default and extra prefixes from every peer, so hosts
//! stop sending it traffic it cannot deliver; on recovery it announces again.
//!
//! The first probe result decides the starting state, so a router that boots
//! with a dead uplink never attracts traffic, and one with a good uplink does
//! not wait for `rise` successes.
//!
//! A probe with `vrrp = "NAME"` tracks that VRRP instance instead (its
//! priority, or whether it runs): it is left out of the BGP gate.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::sync::watch;

use crate::config::{Health, Probe};

/// What `hagw status` shows of one probe.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProbeStatus {
    pub target: String,
    pub probe: String,
    /// "up", "down", or "unknown" before the first answer.
    pub state: String,
    pub successes: u32,
    pub failures: u32,
    pub last_error: Option<String>,
}

/// Counts consecutive results: `fall` failures take it down, `rise` successes
/// bring it back. Plain logic, tested without sockets.
#[derive(Debug, Clone)]
pub struct Hysteresis {
    fall: u32,
    rise: u32,
    up: Option<bool>,
    ok_run: u32,
    fail_run: u32,
}

impl Hysteresis {
    pub fn new(fall: u32, rise: u32) -> Hysteresis {
        Hysteresis {
            fall,
            rise,
            up: None,
            ok_run: 0,
            fail_run: 0,
        }
    }

    /// Feeds one result; returns the state after it.
    pub fn record(&mut self, ok: bool) -> bool {
        if ok {
            self.ok_run += 1;
            self.fail_run = 0;
        } else {
            self.fail_run += 1;
            self.ok_run = 0;
        }
        let up = match self.up {
            None => ok,
            Some(true) => self.fail_run < self.fall,
            Some(false) => self.ok_run >= self.rise,
        };
        self.up = Some(up);
        up
    }

    pub fn state(&self) -> Option<bool> {
        self.up
    }
}

/// What [`start`] returns.
pub struct Probes {
    /// Open while every probe that tracks no VRRP instance is up; `None`
    /// when every probe tracks one.
    pub gate: Option<watch::Receiver<bool>>,
    pub status: Arc<Mutex<Vec<ProbeStatus>>>,
    /// Each probe's state, in config order (`None` before its first result).
    pub results: Vec<watch::Receiver<Option<bool>>>,
}

/// Starts every probe.
pub fn start(probes: &[Health]) -> Probes {
    let status = Arc::new(Mutex::new(
        probes
            .iter()
            .map(|h| ProbeStatus {
                target: h.target.to_string(),
                probe: match h.probe {
                    Probe::Icmp => "icmp".into(),
                    Probe::Tcp { port } => format!("tcp/{port}"),
                },
                state: "unknown".into(),
                successes: 0,
                failures: 0,
                last_error: None,
            })
            .collect::<Vec<_>>(),
    ));
    let (tx, rx) = watch::channel(false);
    let tx = Arc::new(tx);
    let gating: Vec<bool> = probes.iter().map(|h| h.vrrp.is_none()).collect();
    let states = Arc::new(Mutex::new(vec![None::<bool>; probes.len()]));
    let mut results = Vec::new();
    for (i, h) in probes.iter().cloned().enumerate() {
        let (tx, states, status) = (tx.clone(), states.clone(), status.clone());
        let gating = gating.clone();
        let (result_tx, result_rx) = watch::channel(None);
        results.push(result_rx);
        tokio::spawn(async move {
            let mut hy = Hysteresis::new(h.fall, h.rise);
            let interval = Duration::from_millis(u64::from(h.interval_ms));
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut seq: u16 = 0;
            loop {
                tick.tick().await;
                seq = seq.wrapping_add(1);
                // A probe may take at most its interval (and at most 1 s).
                let timeout = interval.min(Duration::from_secs(1));
                let result = match h.probe {
                    Probe::Icmp => icmp_echo(h.target, seq, timeout).await,
                    Probe::Tcp { port } => {
                        tcp_connect(SocketAddr::new(h.target, port), timeout).await
                    }
                };
                let before = hy.state();
                let up = hy.record(result.is_ok());
                {
                    let mut st = status.lock().unwrap_or_else(|p| p.into_inner());
                    if let Some(s) = st.get_mut(i) {
                        s.state = if up { "up" } else { "down" }.into();
                        match &result {
                            Ok(()) => s.successes += 1,
                            Err(e) => {
                                s.failures += 1;
                                s.last_error = Some(e.to_string());
                            }
                        }
                    }
                }
                if before != Some(up) {
                    result_tx.send_replace(Some(up));
                }
                if before != Some(up) && h.vrrp.is_some() {
                    let name = h.vrrp.as_ref().map_or("", |t| t.instance.as_str());
                    if up {
                        tracing::info!(target = %h.target, "tracking probe up: VRRP instance {name} recovers");
                    } else {
                        tracing::warn!(
                            target = %h.target,
                            "tracking probe down ({}): VRRP instance {name} lowers its priority or steps out",
                            result.as_ref().err().map_or(String::new(), ToString::to_string)
                        );
                    }
                } else if before != Some(up) {
                    if up {
                        tracing::info!(target = %h.target, "uplink probe up: announcing routes");
                    } else {
                        tracing::warn!(
                            target = %h.target,
                            "uplink probe down ({}): withdrawing routes from every peer",
                            result.as_ref().err().map_or(String::new(), ToString::to_string)
                        );
                    }
                    let mut s = states.lock().unwrap_or_else(|p| p.into_inner());
                    if let Some(slot) = s.get_mut(i) {
                        *slot = Some(up);
                    }
                    let all_up = s
                        .iter()
                        .zip(&gating)
                        .filter(|(_, g)| **g)
                        .all(|(x, _)| *x == Some(true));
                    tx.send_if_modified(|g| std::mem::replace(g, all_up) != all_up);
                }
            }
        });
    }
    Probes {
        gate: gating.iter().any(|g| *g).then_some(rx),
        status,
        results,
    }
}

async fn tcp_connect(to: SocketAddr, timeout: Duration) -> io::Result<()> {
    match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(to)).await {
        Ok(r) => r.map(drop),
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("no answer from {to} within {timeout:?}"),
        )),
    }
}

/// One ICMP echo over a raw socket (we run as root; ping sockets may be
/// disabled by net.ipv4.ping_group_range). Blocking with a receive timeout, on
/// tokio's blocking pool: registering a raw fd with the reactor needs `unsafe`.
async fn icmp_echo(to: IpAddr, seq: u16, timeout: Duration) -> io::Result<()> {
    tokio::task::spawn_blocking(move || icmp_echo_blocking(to, seq, timeout))
        .await
        .map_err(io::Error::other)?
}

fn icmp_echo_blocking(to: IpAddr, seq: u16, timeout: Duration) -> io::Result<()> {
    let (domain, proto, req, rep) = match to {
        IpAddr::V4(_) => (Domain::IPV4, Protocol::ICMPV4, 8u8, 0u8),
        IpAddr::V6(_) => (Domain::IPV6, Protocol::ICMPV6, 128, 129),
    };
    let sock = Socket::new(domain, Type::RAW, Some(proto))?;
    sock.connect(&SocketAddr::new(to, 0).into())?;
    let ident = (std::process::id() & 0xffff) as u16;
    let mut pkt = [0u8; 16];
    pkt[0] = req;
    pkt[4..6].copy_from_slice(&ident.to_be_bytes());
    pkt[6..8].copy_from_slice(&seq.to_be_bytes());
    pkt[8..16].copy_from_slice(b"hagwprob");
    if to.is_ipv4() {
        // The kernel computes ICMPv6 checksums itself, not ICMPv4 ones.
        let c = checksum(&pkt);
        pkt[2..4].copy_from_slice(&c.to_be_bytes());
    }
    let deadline = Instant::now() + timeout;
    sock.send(&pkt)?;
    let mut buf = [0u8; 1500];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no echo reply from {to} within {timeout:?}"),
            ));
        }
        sock.set_read_timeout(Some(left))?;
        let n = match io::Read::read(&mut &sock, &mut buf) {
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(e) => return Err(e),
        };
        let got = &buf[..n];
        // An IPv4 raw socket delivers the IP header too.
        let icmp = match to {
            IpAddr::V4(_) => {
                let ihl = usize::from(got.first().copied().unwrap_or(0) & 0x0f) * 4;
                got.get(ihl..).unwrap_or_default()
            }
            IpAddr::V6(_) => got,
        };
        if icmp.len() >= 8
            && icmp[0] == rep
            && icmp[4..6] == ident.to_be_bytes()
            && icmp[6..8] == seq.to_be_bytes()
        {
            return Ok(());
        }
    }
}

fn checksum(b: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for c in b.chunks(2) {
        let w = u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)]);
        sum += u32::from(w);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_result_decides_the_starting_state() {
        assert!(Hysteresis::new(3, 5).record(true));
        assert!(!Hysteresis::new(3, 5).record(false));
    }

    #[test]
    fn fall_failures_take_it_down_and_rise_successes_bring_it_back() {
        let mut h = Hysteresis::new(3, 2);
        h.record(true);
        assert!(h.record(false));
        assert!(h.record(false));
        assert!(!h.record(false), "third failure");
        assert!(!h.record(true));
        assert!(h.record(true), "second success");
    }

    #[test]
    fn a_success_resets_the_failure_count() {
        let mut h = Hysteresis::new(2, 1);
        h.record(true);
        h.record(false);
        h.record(true);
        assert!(h.record(false), "one failure after a success is not two");
    }

    #[test]
    fn icmp_checksum_matches_a_known_echo_request() {
        // type 8, code 0, id 1, seq 1, no payload: checksum 0xf7fd.
        let pkt = [8u8, 0, 0, 0, 0, 1, 0, 1];
        assert_eq!(checksum(&pkt), 0xf7fd);
    }
}
