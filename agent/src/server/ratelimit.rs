//! A token bucket for the HTTP API: the endpoints that lock the tracker and
//! render (/metrics, /api/v1/leaks) answer 429 beyond a steady rate, so a
//! misbehaving client cannot keep the agent busy rendering. Health probes
//! are never limited: a kubelet must always get its answer.

use crate::lock::lock;
use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

/// Requests per second allowed on average, and the burst above it. A
/// Prometheus scrape every few seconds and a person with the CLI are far
/// below; a loop hammering the endpoint is not.
pub const RATE: f64 = 50.0;
pub const BURST: f64 = 100.0;

#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    state: Mutex<(f64, Instant)>,
}

impl RateLimiter {
    pub fn new(rate: f64, burst: f64) -> Self {
        Self {
            rate,
            burst,
            state: Mutex::new((burst, Instant::now())),
        }
    }

    /// Takes one token if there is one.
    pub fn allow(&self) -> bool {
        self.allow_at(Instant::now())
    }

    fn allow_at(&self, now: Instant) -> bool {
        let mut state = lock(&self.state);
        let (tokens, last) = *state;
        let elapsed = now.saturating_duration_since(last).as_secs_f64();
        let tokens = (tokens + elapsed * self.rate).min(self.burst);
        let (tokens, ok) = if tokens >= 1.0 {
            (tokens - 1.0, true)
        } else {
            (tokens, false)
        };
        *state = (tokens, now.max(last));
        ok
    }
}

impl Default for RateLimiter {
    fn default() -> Self {
        Self::new(RATE, BURST)
    }
}

/// How long a refused client should wait.
pub const RETRY_AFTER: Duration = Duration::from_secs(1);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_then_refills_at_the_rate() {
        let limiter = RateLimiter::new(10.0, 5.0);
        let t0 = Instant::now();
        assert_eq!((0..8).filter(|_| limiter.allow_at(t0)).count(), 5);
        // 0.3 s later: three more tokens, no more.
        let t1 = t0 + Duration::from_millis(300);
        assert_eq!((0..8).filter(|_| limiter.allow_at(t1)).count(), 3);
        // A long pause refills only up to the burst.
        let t2 = t1 + Duration::from_mins(1);
        assert_eq!((0..20).filter(|_| limiter.allow_at(t2)).count(), 5);
        // A clock that goes backwards gives nothing away.
        assert!(!limiter.allow_at(t0));
    }
}
