//! Per-token request rate limits: a generic cell rate algorithm (GCRA) per token, allowing a
//! burst of one second's worth of requests. Kept per node: behind a load balancer each node
//! enforces the limit on what it sees.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Default)]
pub(crate) struct RateLimiter {
    /// Per key, the theoretical arrival time of its next request.
    next: Mutex<HashMap<i64, Instant>>,
}

impl RateLimiter {
    /// Admits one request of `key` at `per_second` requests per second, or says how long to
    /// wait before the next one would be admitted.
    pub fn check(&self, key: i64, per_second: u32, now: Instant) -> Result<(), Duration> {
        if per_second == 0 {
            return Ok(());
        }
        let interval = Duration::from_secs(1) / per_second;
        // A full second's worth may come at once; beyond it requests are spaced out.
        let burst = interval * (per_second - 1);
        let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
        if next.len() > 10_000 {
            next.retain(|_, at| *at > now);
        }
        let at = next.get(&key).copied().unwrap_or(now).max(now);
        let early = at.duration_since(now);
        if early > burst {
            return Err(early - burst);
        }
        next.insert(key, at + interval);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seconds_worth_passes_then_requests_are_spaced() {
        let limiter = RateLimiter::default();
        let t0 = Instant::now();
        for _ in 0..10 {
            assert!(limiter.check(1, 10, t0).is_ok());
        }
        let wait = limiter.check(1, 10, t0).unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(100),
            "{wait:?}"
        );
        // Another token has its own budget.
        assert!(limiter.check(2, 10, t0).is_ok());
        // After the wait, one more passes, and only one.
        let later = t0 + wait;
        assert!(limiter.check(1, 10, later).is_ok());
        assert!(limiter.check(1, 10, later).is_err());
        // A second later the budget is whole again.
        let t1 = t0 + Duration::from_secs(2);
        for _ in 0..10 {
            assert!(limiter.check(1, 10, t1).is_ok());
        }
    }

    #[test]
    fn zero_means_no_limit() {
        let limiter = RateLimiter::default();
        let t0 = Instant::now();
        for _ in 0..1000 {
            assert!(limiter.check(1, 0, t0).is_ok());
        }
    }
}
