//! Graceful restart on the RIB side (RFC 4724 §4.1, §4.2), sans-IO.
//!
//! [`Restarts`] holds two things that wait:
//! * our own restart's selection deferral (§4.1): the kernel still holds the
//!   routes of our previous run, so RIB changes are kept from it until every
//!   configured neighbor has sent End-of-RIB (or the restart time passes); then
//!   the kernel gets the whole RIB in one pass and what was not refreshed goes;
//! * each restarting peer's stale paths (§4.2): kept for its restart time while
//!   it is away, then, once it is back, until its End-of-RIB, bounded by
//!   [`STALE_PATH_TIME`].
//!
//! It drives the [`Rib`] directly. Events and `now` go in; [`Output`]s come out,
//! and [`Restarts::next_deadline`] says when to call [`Restarts::on_timer`].
//! Every RIB change passes through here on its way to the kernel, the driver's
//! own (UPDATEs) through [`Restarts::forward`], so the deferral is kept in one
//! place.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::rib::{Change, Rib};

/// After a restarting peer is back, its stale paths wait this long at most for
/// its End-of-RIB (RFC 4724 §4.2 allows such an upper bound; FRR's
/// stalepath-time default).
pub const STALE_PATH_TIME: Duration = Duration::from_secs(360);

/// We restarted with graceful restart: wait for these neighbors' End-of-RIB,
/// `limit` at most, before touching the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deferral {
    pub neighbors: HashSet<IpAddr>,
    pub limit: Duration,
}

/// Which of a peer's two timers ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timer {
    /// The peer did not come back within its restart time.
    Restart,
    /// The peer came back but sent no End-of-RIB within [`STALE_PATH_TIME`].
    StalePath,
}

/// What the driver must do, or may want to log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Give the kernel this prefix's next hops (none: remove the prefix).
    Route(Change),
    /// Our selection deferral is over and the whole RIB was just given as
    /// [`Output::Route`]s: what the kernel still holds from the previous run
    /// and was not refreshed goes now.
    DeferralOver,
    /// The deferral no longer waits for this neighbor's End-of-RIB: it cannot
    /// be reached, or its session ended hard. Waiting would freeze the kernel's
    /// routes, its own stale next hop included.
    NotWaitingFor(IpAddr),
    /// This peer's timer ran out and its stale paths were removed.
    StaleTimeOver { peer: IpAddr, timer: Timer },
}

/// The deferral while it lasts.
#[derive(Debug)]
struct Waiting {
    neighbors: HashSet<IpAddr>,
    until: Instant,
}

/// A peer's running timer. One per peer, replaced by every session change, so
/// a timer of an earlier session (an earlier epoch) can never fire.
#[derive(Debug, Clone, Copy)]
struct StaleTimer {
    at: Instant,
    kind: Timer,
}

/// Graceful restart's state beside the RIB: see the module documentation.
#[derive(Debug)]
pub struct Restarts {
    /// Some while our own restart's selection deferral lasts.
    deferral: Option<Waiting>,
    timers: HashMap<IpAddr, StaleTimer>,
    /// The RIB's changes during one call, before the deferral filters them.
    changes: Vec<Change>,
}

impl Restarts {
    /// `deferral`: we restarted with graceful restart and the kernel still holds
    /// the previous run's routes (None when there is no kernel to protect).
    pub fn new(deferral: Option<Deferral>, now: Instant) -> Restarts {
        Restarts {
            deferral: deferral.map(|d| Waiting {
                neighbors: d.neighbors,
                until: now + d.limit,
            }),
            timers: HashMap::new(),
            changes: Vec::new(),
        }
    }

    /// Our selection deferral still holds the kernel back.
    pub fn deferring(&self) -> bool {
        self.deferral.is_some()
    }

    /// The earliest instant at which [`Restarts::on_timer`] has work.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.deferral
            .as_ref()
            .map(|w| w.until)
            .into_iter()
            .chain(self.timers.values().map(|t| t.at))
            .min()
    }

    /// A session with `peer` is Established. `kept`: with the graceful restart
    /// capability, the families whose forwarding state the peer kept (F bit),
    /// as "is IPv6"; None without the capability. `replaces_session`: the same
    /// address's previous session never reported its end, so it ends now.
    pub fn peer_up(
        &mut self,
        rib: &mut Rib,
        peer: IpAddr,
        kept: Option<&[bool]>,
        replaces_session: bool,
        now: Instant,
        out: &mut Vec<Output>,
    ) {
        if replaces_session {
            match kept {
                Some(_) => rib.peer_restarting(peer),
                None => rib.peer_down(peer, &mut self.changes),
            }
        }
        // §4.2: back without the capability, or without forwarding state kept
        // for a family (F bit clear, family absent): those stale paths go now;
        // the others wait for End-of-RIB.
        match kept {
            None => rib.sweep_stale(peer, None, &mut self.changes),
            Some(kept) => {
                for v6 in [false, true] {
                    if !kept.contains(&v6) {
                        rib.sweep_stale(peer, Some(v6), &mut self.changes);
                    }
                }
            }
        }
        // Back: the restart timer stops; what is still stale waits for
        // End-of-RIB, bounded by the stale-path time.
        self.timers.remove(&peer);
        if rib.stale_count(peer) > 0 {
            self.timers.insert(
                peer,
                StaleTimer {
                    at: now + STALE_PATH_TIME,
                    kind: Timer::StalePath,
                },
            );
        }
        self.emit(out);
    }

    /// The Established session with `peer` ended. `stale_for`: graceful
    /// restart keeps its paths, stale, this long (the peer's restart time);
    /// None: they go now.
    pub fn peer_down(
        &mut self,
        rib: &mut Rib,
        peer: IpAddr,
        stale_for: Option<Duration>,
        now: Instant,
        out: &mut Vec<Output>,
    ) {
        self.timers.remove(&peer);
        match stale_for {
            Some(d) => {
                rib.peer_restarting(peer);
                if rib.stale_count(peer) > 0 {
                    self.timers.insert(
                        peer,
                        StaleTimer {
                            at: now + d,
                            kind: Timer::Restart,
                        },
                    );
                }
            }
            None => {
                rib.peer_down(peer, &mut self.changes);
                self.stop_waiting(rib, peer, out);
            }
        }
        self.emit(out);
    }

    /// `peer` sent End-of-RIB for a family: its paths of that family not
    /// announced again are gone, and the deferral may be over.
    pub fn end_of_rib(&mut self, rib: &mut Rib, peer: IpAddr, v6: bool, out: &mut Vec<Output>) {
        rib.sweep_stale(peer, Some(v6), &mut self.changes);
        if rib.stale_count(peer) == 0 {
            self.timers.remove(&peer);
        }
        self.emit(out);
        let Some(w) = &mut self.deferral else {
            return;
        };
        if w.neighbors.remove(&peer) && w.neighbors.is_empty() {
            self.end_deferral(rib, out);
        }
    }

    /// A configured neighbor could not be reached: no answer or no route, or
    /// refusals for a while (a refusing neighbor is alive, its BGP restarting).
    pub fn unreachable(&mut self, rib: &Rib, peer: IpAddr, out: &mut Vec<Output>) {
        self.stop_waiting(rib, peer, out);
    }

    /// RIB changes the driver made itself (UPDATEs), drained from `changes`:
    /// to the kernel, unless the deferral holds them back.
    pub fn forward(&mut self, changes: &mut Vec<Change>, out: &mut Vec<Output>) {
        if self.deferral.is_none() {
            out.extend(changes.drain(..).map(Output::Route));
        } else {
            changes.clear();
        }
    }

    /// Timers due at `now`: stale paths of peers whose time is up go, and the
    /// deferral ends when its limit has passed.
    pub fn on_timer(&mut self, rib: &mut Rib, now: Instant, out: &mut Vec<Output>) {
        let due: Vec<(IpAddr, Timer)> = self
            .timers
            .iter()
            .filter(|(_, t)| t.at <= now)
            .map(|(p, t)| (*p, t.kind))
            .collect();
        for (peer, timer) in due {
            self.timers.remove(&peer);
            if rib.stale_count(peer) > 0 {
                rib.sweep_stale(peer, None, &mut self.changes);
                out.push(Output::StaleTimeOver { peer, timer });
            }
        }
        self.emit(out);
        if self.deferral.as_ref().is_some_and(|w| w.until <= now) {
            self.end_deferral(rib, out);
        }
    }

    /// The RIB changes of this call go to the kernel unless we defer.
    fn emit(&mut self, out: &mut Vec<Output>) {
        let mut changes = std::mem::take(&mut self.changes);
        self.forward(&mut changes, out);
        self.changes = changes;
    }

    /// Stops waiting for `peer`'s End-of-RIB, which may end the deferral.
    fn stop_waiting(&mut self, rib: &Rib, peer: IpAddr, out: &mut Vec<Output>) {
        let Some(w) = &mut self.deferral else {
            return;
        };
        if !w.neighbors.remove(&peer) {
            return;
        }
        out.push(Output::NotWaitingFor(peer));
        if w.neighbors.is_empty() {
            self.end_deferral(rib, out);
        }
    }

    /// The kernel is brought to the RIB in one pass, then told to purge.
    fn end_deferral(&mut self, rib: &Rib, out: &mut Vec<Output>) {
        if self.deferral.take().is_none() {
            return;
        }
        self.changes.clear();
        let mut all: Vec<Change> = rib
            .installed()
            .map(|(prefix, n)| Change {
                prefix,
                next_hops: n.clone(),
            })
            .collect();
        // In prefix order, as a replay expects (the RIB's table has none).
        all.sort_unstable_by_key(|c| c.prefix);
        out.extend(all.into_iter().map(Output::Route));
        out.push(Output::DeferralOver);
    }
}

#[cfg(test)]
mod tests;
