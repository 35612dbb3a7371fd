//! When to try an EC2 call again, how long to wait, and the client-side
//! rate limit.
//!
//! Retried: throttling (`RequestLimitExceeded`, `Throttling`, HTTP 429),
//! server faults (5xx, `InternalError`, `Unavailable`...) and requests that
//! got no answer. Never retried: everything else, in particular
//! authentication and authorization (`AuthFailure`,
//! `UnauthorizedOperation`) and invalid parameters — the same request would
//! fail the same way, and each try spends the account's API budget.

use std::time::Duration;

use ring::rand::{SecureRandom, SystemRandom};
use tokio::sync::Mutex;
// tokio's clock, so tests with paused time see the bucket refill.
use tokio::time::Instant;

/// Bounds of the retry loop of one call.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in total, the first included (at least 1).
    pub max_attempts: u32,
    /// Backoff before the 2nd attempt; doubles each time.
    pub base_delay: Duration,
    /// Cap of one backoff.
    pub max_delay: Duration,
    /// No new attempt starts after this much time since the first.
    pub max_total: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 6,
            base_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(5),
            max_total: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// The wait before attempt `attempt + 1` (`attempt` >= 1 attempts made):
    /// "equal jitter", uniform in [cap/2, cap] with
    /// cap = min(max_delay, base_delay * 2^(attempt-1)). Half is fixed so a
    /// throttled client really slows down; half is random so the two
    /// gateways of a pair do not retry in lockstep.
    pub fn backoff(&self, attempt: u32, random: f64) -> Duration {
        let exp = attempt.saturating_sub(1).min(30);
        let cap = self
            .base_delay
            .saturating_mul(1u32 << exp)
            .min(self.max_delay);
        let half = cap / 2;
        half + half.mul_f64(random.clamp(0.0, 1.0))
    }
}

/// Error codes that mean "slow down".
const THROTTLING: &[&str] = &[
    "RequestLimitExceeded",
    "Throttling",
    "ThrottlingException",
    "RequestThrottled",
    "RequestThrottledException",
    "TooManyRequestsException",
    "SlowDown",
];

/// Error codes of transient server trouble.
const TRANSIENT: &[&str] = &[
    "InternalError",
    "InternalFailure",
    "ServiceUnavailable",
    "Unavailable",
    "RequestTimeout",
    "RequestTimeoutException",
];

/// Why an API error deserves another attempt, if it does.
pub(crate) fn retryable_api_error(status: u16, code: &str) -> Option<&'static str> {
    if THROTTLING.contains(&code) || status == 429 {
        Some("throttled")
    } else if TRANSIENT.contains(&code) || (500..600).contains(&status) {
        Some("server error")
    } else {
        None
    }
}

/// A uniform random number in [0, 1) for jitter.
pub(crate) fn random_unit() -> f64 {
    let mut b = [0u8; 8];
    if SystemRandom::new().fill(&mut b).is_err() {
        return 0.5;
    }
    (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
}

/// The client-side rate limit: a token bucket shared by all calls of one
/// client, so a flapping VRRP pair cannot burn the account's EC2 API budget
/// (which other tooling of the account shares).
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimit {
    /// Sustained requests per second (attempts, retries included).
    pub per_second: f64,
    /// Requests allowed at once after a quiet period.
    pub burst: u32,
}

impl Default for RateLimit {
    fn default() -> Self {
        RateLimit {
            per_second: 5.0,
            burst: 10,
        }
    }
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

#[derive(Debug)]
pub(crate) struct TokenBucket {
    limit: RateLimit,
    bucket: Mutex<Bucket>,
}

impl TokenBucket {
    pub fn new(limit: RateLimit) -> TokenBucket {
        let burst = f64::from(limit.burst.max(1));
        TokenBucket {
            limit,
            bucket: Mutex::new(Bucket {
                tokens: burst,
                last: Instant::now(),
            }),
        }
    }

    /// Takes one token, waiting for it if needed; returns the time waited.
    /// Waiters are served in order (tokio's mutex is fair).
    pub async fn acquire(&self) -> Duration {
        let started = Instant::now();
        let mut b = self.bucket.lock().await;
        let rate = self.limit.per_second.max(0.001);
        let burst = f64::from(self.limit.burst.max(1));
        loop {
            let now = Instant::now();
            b.tokens = (b.tokens + now.duration_since(b.last).as_secs_f64() * rate).min(burst);
            b.last = now;
            if b.tokens >= 1.0 {
                b.tokens -= 1.0;
                return started.elapsed();
            }
            // Sleep holding the lock: later callers queue behind us.
            let wait = Duration::from_secs_f64((1.0 - b.tokens) / rate);
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_equal_jitter_and_caps() {
        let p = RetryPolicy {
            max_attempts: 10,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(1000),
            max_total: Duration::from_secs(10),
        };
        assert_eq!(p.backoff(1, 0.0), Duration::from_millis(50));
        assert_eq!(p.backoff(1, 1.0), Duration::from_millis(100));
        assert_eq!(p.backoff(2, 0.0), Duration::from_millis(100));
        assert_eq!(p.backoff(3, 0.5), Duration::from_millis(300));
        assert_eq!(p.backoff(9, 1.0), Duration::from_millis(1000));
        assert_eq!(p.backoff(u32::MAX, 1.0), Duration::from_millis(1000));
    }

    #[test]
    fn classification() {
        assert_eq!(
            retryable_api_error(503, "RequestLimitExceeded"),
            Some("throttled")
        );
        assert_eq!(retryable_api_error(400, "Throttling"), Some("throttled"));
        assert_eq!(retryable_api_error(429, "HTTP429"), Some("throttled"));
        assert_eq!(
            retryable_api_error(500, "InternalError"),
            Some("server error")
        );
        assert_eq!(retryable_api_error(502, "HTTP502"), Some("server error"));
        assert_eq!(retryable_api_error(401, "AuthFailure"), None);
        assert_eq!(retryable_api_error(403, "UnauthorizedOperation"), None);
        assert_eq!(retryable_api_error(400, "InvalidParameterValue"), None);
        assert_eq!(
            retryable_api_error(400, "InvalidNetworkInterfaceID.NotFound"),
            None
        );
    }

    #[test]
    fn random_unit_is_in_range() {
        for _ in 0..100 {
            let r = random_unit();
            assert!((0.0..1.0).contains(&r), "{r}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn bucket_allows_a_burst_then_paces() {
        let b = TokenBucket::new(RateLimit {
            per_second: 10.0,
            burst: 3,
        });
        let start = tokio::time::Instant::now();
        for _ in 0..3 {
            assert_eq!(b.acquire().await, Duration::ZERO);
        }
        for _ in 0..5 {
            b.acquire().await;
        }
        let elapsed = start.elapsed();
        // 5 tokens at 10/s after the burst: ~0.5 s.
        assert!(
            elapsed >= Duration::from_millis(490) && elapsed < Duration::from_millis(600),
            "{elapsed:?}"
        );
    }
}
