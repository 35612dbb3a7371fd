//! The cloud as the arbiter of a floating VIP: when to claim, when to check,
//! when a master must step down. Sans-IO: VRRP state changes, call results,
//! observations and `now` go in; requests and fencing decisions come out.
//!
//! Why: VRRP alone cannot tell a dead peer from a partition, and in a cloud
//! the VIP is wherever the provider's API last put it, not where gratuitous
//! ARP says. keepalived runs a notify script on the transition edge and never
//! looks again (acassen/keepalived#950: a backup that was briefly master keeps
//! the cloud's IP while the real master holds it locally). Here every master
//! claims at once, confirms the claim, and re-checks the cloud's owner every
//! [`ArbiterConfig::recheck`] while it is master; a master that finds the VIP
//! owned elsewhere *after* its own claim was confirmed is fenced (it gives the
//! VIP up locally) and does not claim again until VRRP gives it fresh reason
//! (it heard its peer and became master again) or the cloud shows the VIP
//! free. Under a partition the VIP therefore moves at most once: the node that
//! claimed last keeps it, the other sees it gone and steps down.

use std::time::{Duration, Instant};

/// Who the cloud says holds the VIP (or the route's next hop).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    Me,
    Other(String),
    Nobody,
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send the claim (AssignPrivateIpAddresses with reassignment, or
    /// ReplaceRoute) now.
    Claim,
    /// Ask the cloud who owns the VIP (IMDS where it answers, else the API).
    Check,
    /// The VIP is someone else's: step down locally (`Instance::fence`).
    Fence { owner: String },
    /// The VIP is free again: VRRP may take it (`Instance::unfence`).
    Unfence,
}

#[derive(Debug, Clone, Copy)]
pub struct ArbiterConfig {
    /// How often a master (or a fenced node) re-checks the owner: at most 5 s.
    pub recheck: Duration,
    /// How long a claim may take to show up in the cloud (AWS applies it
    /// asynchronously) before it is sent again.
    pub confirm_within: Duration,
    /// Wait before re-sending a claim that failed (the client has already
    /// retried throttling and 5xx inside the call).
    pub claim_retry: Duration,
}

impl Default for ArbiterConfig {
    fn default() -> Self {
        ArbiterConfig {
            recheck: Duration::from_secs(2),
            confirm_within: Duration::from_secs(10),
            claim_retry: Duration::from_secs(2),
        }
    }
}

/// Where this node stands with the cloud.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// Not master: nothing to do.
    Idle,
    /// Master; the claim is in flight (since).
    Claiming { since: Instant },
    /// Master; the claim failed, sent again at `retry_at`.
    ClaimFailed { retry_at: Instant, error: String },
    /// Master; the claim was answered, waiting to see it in the cloud.
    Confirming { claimed: Instant, check_at: Instant },
    /// Master and the cloud's owner; next check then.
    Owner { check_at: Instant },
    /// Stepped down because the cloud gave the VIP to `owner`.
    Fenced { owner: String, check_at: Instant },
}

/// One VIP's arbiter.
#[derive(Debug)]
pub struct Arbiter {
    cfg: ArbiterConfig,
    phase: Phase,
    /// A check is in flight: no second one until it is answered.
    checking: bool,
    /// Claim latency of the last confirmed claim (request to confirmation).
    last_claim: Option<Duration>,
}

impl Arbiter {
    pub fn new(mut cfg: ArbiterConfig) -> Arbiter {
        cfg.recheck = cfg.recheck.min(Duration::from_secs(5));
        Arbiter {
            cfg,
            phase: Phase::Idle,
            checking: false,
            last_claim: None,
        }
    }

    pub fn phase(&self) -> &Phase {
        &self.phase
    }

    /// From the claim request to the cloud showing it, for the last claim.
    pub fn last_claim_latency(&self) -> Option<Duration> {
        self.last_claim
    }

    /// VRRP made this node master: claim at once.
    pub fn became_master(&mut self, now: Instant, out: &mut Vec<Action>) {
        self.phase = Phase::Claiming { since: now };
        out.push(Action::Claim);
    }

    /// VRRP left master (backup, shutdown). A fenced node stays fenced: VRRP
    /// reports the fencing itself as a transition.
    pub fn left_master(&mut self) {
        if !matches!(self.phase, Phase::Fenced { .. }) {
            self.phase = Phase::Idle;
        }
    }

    /// VRRP left the fenced state on its own (it heard its peer).
    pub fn unfenced_by_vrrp(&mut self) {
        if matches!(self.phase, Phase::Fenced { .. }) {
            self.phase = Phase::Idle;
        }
    }

    /// The claim call returned.
    pub fn claim_result(&mut self, result: Result<(), String>, now: Instant) {
        let Phase::Claiming { since } = self.phase else {
            return;
        };
        self.phase = match result {
            Ok(()) => Phase::Confirming {
                claimed: since,
                check_at: now,
            },
            Err(error) => Phase::ClaimFailed {
                retry_at: now + self.cfg.claim_retry,
                error,
            },
        };
    }

    /// A check was answered (`Err`: the cloud could not be asked; nothing
    /// changes, the next check is scheduled).
    pub fn observed(&mut self, owner: Result<Owner, String>, now: Instant, out: &mut Vec<Action>) {
        self.checking = false;
        let next = now + self.cfg.recheck;
        let Ok(owner) = owner else {
            match &mut self.phase {
                Phase::Owner { check_at }
                | Phase::Fenced { check_at, .. }
                | Phase::Confirming { check_at, .. } => {
                    *check_at = next.min(*check_at + self.cfg.recheck)
                }
                _ => {}
            }
            return;
        };
        match (&self.phase, owner) {
            (Phase::Confirming { claimed, .. }, Owner::Me) => {
                self.last_claim = Some(now.saturating_duration_since(*claimed));
                self.phase = Phase::Owner { check_at: next };
            }
            (Phase::Confirming { claimed, .. }, seen) => {
                let late = now.saturating_duration_since(*claimed) >= self.cfg.confirm_within;
                match seen {
                    // Still elsewhere long after our claim was accepted:
                    // someone claimed after us. Claiming again would make
                    // the VIP flap between two masters: step down.
                    Owner::Other(owner) if late => {
                        out.push(Action::Fence {
                            owner: owner.clone(),
                        });
                        self.phase = Phase::Fenced {
                            owner,
                            check_at: next,
                        };
                    }
                    // Lost on the way: send it again.
                    Owner::Nobody if late => {
                        self.phase = Phase::Claiming { since: now };
                        out.push(Action::Claim);
                    }
                    // Not visible yet (AWS moves it asynchronously).
                    _ => {
                        let soon = now + (self.cfg.recheck / 4).max(Duration::from_millis(100));
                        self.phase = Phase::Confirming {
                            claimed: *claimed,
                            check_at: soon,
                        };
                    }
                }
            }
            (Phase::Owner { .. }, Owner::Me) => self.phase = Phase::Owner { check_at: next },
            (Phase::Owner { .. }, Owner::Other(owner)) => {
                out.push(Action::Fence {
                    owner: owner.clone(),
                });
                self.phase = Phase::Fenced {
                    owner,
                    check_at: next,
                };
            }
            // Nobody has it (released, or the ENI went away): take it back.
            (Phase::Owner { .. }, Owner::Nobody) => {
                self.phase = Phase::Claiming { since: now };
                out.push(Action::Claim);
            }
            (Phase::Fenced { .. }, Owner::Nobody) => {
                self.phase = Phase::Idle;
                out.push(Action::Unfence);
            }
            (Phase::Fenced { .. }, Owner::Other(owner)) => {
                self.phase = Phase::Fenced {
                    owner,
                    check_at: next,
                }
            }
            // Fenced but the cloud says it is ours again (someone moved it
            // back): VRRP decides; free to be master.
            (Phase::Fenced { .. }, Owner::Me) => {
                self.phase = Phase::Idle;
                out.push(Action::Unfence);
            }
            _ => {}
        }
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        match &self.phase {
            Phase::ClaimFailed { retry_at, .. } => Some(*retry_at),
            Phase::Confirming { check_at, .. }
            | Phase::Owner { check_at }
            | Phase::Fenced { check_at, .. }
                if !self.checking =>
            {
                Some(*check_at)
            }
            _ => None,
        }
    }

    pub fn on_timer(&mut self, now: Instant, out: &mut Vec<Action>) {
        match &self.phase {
            Phase::ClaimFailed { retry_at, .. } if *retry_at <= now => {
                self.phase = Phase::Claiming { since: now };
                out.push(Action::Claim);
            }
            Phase::Confirming { check_at, .. }
            | Phase::Owner { check_at }
            | Phase::Fenced { check_at, .. }
                if *check_at <= now && !self.checking =>
            {
                self.checking = true;
                out.push(Action::Check);
            }
            _ => {}
        }
    }

    /// The last claim error, while it is the current state.
    pub fn error(&self) -> Option<&str> {
        match &self.phase {
            Phase::ClaimFailed { error, .. } => Some(error),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn run(a: &mut Arbiter, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        a.on_timer(now, &mut out);
        out
    }

    fn owned(t0: Instant) -> Arbiter {
        let mut a = Arbiter::new(ArbiterConfig::default());
        let mut out = Vec::new();
        a.became_master(t0, &mut out);
        assert_eq!(out, [Action::Claim]);
        a.claim_result(Ok(()), t0 + S / 10);
        assert_eq!(run(&mut a, t0 + S / 10), [Action::Check]);
        a.observed(Ok(Owner::Me), t0 + S / 5, &mut out);
        assert!(matches!(a.phase(), Phase::Owner { .. }));
        a
    }

    #[test]
    fn a_new_master_claims_at_once_then_confirms() {
        let t0 = Instant::now();
        let a = owned(t0);
        assert_eq!(a.last_claim_latency(), Some(S / 5));
        // Re-checked within the recheck period while master.
        assert!(a.next_deadline().is_some_and(|d| d <= t0 + S / 5 + 5 * S));
    }

    #[test]
    fn recheck_is_capped_at_five_seconds() {
        let a = Arbiter::new(ArbiterConfig {
            recheck: Duration::from_secs(60),
            ..ArbiterConfig::default()
        });
        assert_eq!(a.cfg.recheck, Duration::from_secs(5));
    }

    /// Drives checks until `stop` says so, answering each with `seen`.
    fn confirm_loop(a: &mut Arbiter, t0: Instant, seen: Owner) -> (Instant, Vec<Action>) {
        let mut now = t0;
        for _ in 0..1000 {
            let Some(d) = a.next_deadline() else { break };
            now = d;
            for act in run(a, now) {
                assert_eq!(act, Action::Check);
                let mut out = Vec::new();
                a.observed(Ok(seen.clone()), now, &mut out);
                if !out.is_empty() {
                    return (now, out);
                }
            }
        }
        (now, Vec::new())
    }

    #[test]
    fn a_claim_overtaken_by_another_is_not_repeated_but_fenced() {
        let t0 = Instant::now();
        let mut a = Arbiter::new(ArbiterConfig::default());
        let mut out = Vec::new();
        a.became_master(t0, &mut out);
        a.claim_result(Ok(()), t0);
        // The peer's claim landed after ours: the owner stays the peer.
        let (now, out) = confirm_loop(&mut a, t0, Owner::Other("eni-b".into()));
        assert_eq!(
            out,
            [Action::Fence {
                owner: "eni-b".into()
            }]
        );
        assert!(now >= t0 + ArbiterConfig::default().confirm_within);
        assert!(now < t0 + ArbiterConfig::default().confirm_within + 2 * S);
    }

    #[test]
    fn a_claim_that_never_shows_is_sent_again() {
        let t0 = Instant::now();
        let mut a = Arbiter::new(ArbiterConfig::default());
        let mut out = Vec::new();
        a.became_master(t0, &mut out);
        a.claim_result(Ok(()), t0);
        let (_, out) = confirm_loop(&mut a, t0, Owner::Nobody);
        assert_eq!(out, [Action::Claim]);
    }

    #[test]
    fn an_owner_that_loses_the_vip_is_fenced_and_stays_fenced() {
        let t0 = Instant::now();
        let mut a = owned(t0);
        let now = a.next_deadline().expect("recheck");
        assert_eq!(run(&mut a, now), [Action::Check]);
        let mut out = Vec::new();
        a.observed(Ok(Owner::Other("eni-b".into())), now, &mut out);
        assert_eq!(
            out,
            [Action::Fence {
                owner: "eni-b".into()
            }]
        );
        // VRRP reports the step-down: still fenced, no claim.
        a.left_master();
        assert!(matches!(a.phase(), Phase::Fenced { .. }));
        let now = a.next_deadline().expect("fenced nodes keep looking");
        assert_eq!(run(&mut a, now), [Action::Check]);
        out.clear();
        a.observed(Ok(Owner::Other("eni-b".into())), now, &mut out);
        assert!(out.is_empty(), "the VIP moved at most once");
        // The cloud shows it free: VRRP may take it again.
        let now = a.next_deadline().expect("check");
        run(&mut a, now);
        a.observed(Ok(Owner::Nobody), now, &mut out);
        assert_eq!(out, [Action::Unfence]);
        assert_eq!(a.phase(), &Phase::Idle);
    }

    #[test]
    fn hearing_the_peer_ends_fencing_without_the_cloud() {
        let t0 = Instant::now();
        let mut a = owned(t0);
        let now = a.next_deadline().expect("recheck");
        run(&mut a, now);
        let mut out = Vec::new();
        a.observed(Ok(Owner::Other("eni-b".into())), now, &mut out);
        a.unfenced_by_vrrp();
        assert_eq!(a.phase(), &Phase::Idle);
        assert_eq!(a.next_deadline(), None);
    }

    #[test]
    fn a_failed_claim_is_retried_and_never_fences() {
        let t0 = Instant::now();
        let mut a = Arbiter::new(ArbiterConfig::default());
        let mut out = Vec::new();
        a.became_master(t0, &mut out);
        a.claim_result(Err("UnauthorizedOperation".into()), t0);
        assert_eq!(a.error(), Some("UnauthorizedOperation"));
        let at = a.next_deadline().expect("retry");
        assert_eq!(at, t0 + ArbiterConfig::default().claim_retry);
        assert!(run(&mut a, at - Duration::from_millis(1)).is_empty());
        assert_eq!(run(&mut a, at), [Action::Claim]);
    }

    #[test]
    fn an_unanswered_check_changes_nothing() {
        let t0 = Instant::now();
        let mut a = owned(t0);
        let now = a.next_deadline().expect("recheck");
        run(&mut a, now);
        assert_eq!(a.next_deadline(), None, "one check at a time");
        let mut out = Vec::new();
        a.observed(Err("IMDS timeout".into()), now, &mut out);
        assert!(out.is_empty());
        assert!(matches!(a.phase(), Phase::Owner { .. }));
        assert!(a.next_deadline().is_some());
    }

    #[test]
    fn backup_does_nothing() {
        let t0 = Instant::now();
        let mut a = owned(t0);
        a.left_master();
        assert_eq!(a.phase(), &Phase::Idle);
        assert_eq!(a.next_deadline(), None);
        let mut out = Vec::new();
        a.observed(Ok(Owner::Other("x".into())), t0, &mut out);
        assert!(out.is_empty());
    }
}
