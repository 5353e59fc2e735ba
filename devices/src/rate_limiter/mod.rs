//! Firecracker-style rate limiting: token buckets for bandwidth (bytes) and operations. A
//! bucket holds `size` tokens, refills them linearly over `refill_time`, and may carry a
//! one-time burst spent first. A request larger than the bucket is let through when the
//! bucket is full and leaves a debt, so the long-run rate still holds.

use std::time::{Duration, Instant};

pub mod state;
pub use state::{RateLimiterState, TokenBucketState};

/// One bucket.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    size: u64,
    refill: Duration,
    burst: u64,
    /// Tokens available; negative is a debt from an oversized request.
    budget: i128,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket of `size` tokens refilled every `refill`, with a one-time burst.
    pub fn new(size: u64, one_time_burst: u64, refill: Duration, now: Instant) -> Self {
        Self {
            size,
            refill,
            burst: one_time_burst,
            budget: i128::from(size),
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_nanos();
        let period = self.refill.as_nanos().max(1);
        let tokens = elapsed * u128::from(self.size) / period;
        if tokens == 0 {
            return;
        }
        // Advance by the time those whole tokens took, so fractions carry over.
        let used = tokens * period / u128::from(self.size.max(1));
        self.last += Duration::from_nanos(used.min(u128::from(u64::MAX)) as u64);
        self.budget = (self.budget + tokens as i128).min(i128::from(self.size));
    }

    /// Takes `tokens` if they are there; returns whether it did.
    pub fn consume(&mut self, tokens: u64, now: Instant) -> bool {
        self.refill(now);
        let from_burst = tokens.min(self.burst);
        let rest = tokens - from_burst;
        // An oversized request waits for a full bucket, then goes into debt.
        let needed = i128::from(rest.min(self.size));
        if rest > 0 && self.budget < needed {
            return false;
        }
        self.burst -= from_burst;
        self.budget -= i128::from(rest);
        true
    }

    /// Gives tokens back (when the other bucket of a limiter refused).
    pub fn refund(&mut self, tokens: u64) {
        self.budget = (self.budget + i128::from(tokens)).min(i128::from(self.size));
    }

    /// How long until `tokens` could be taken.
    pub fn wait_for(&self, tokens: u64, now: Instant) -> Duration {
        let needed = i128::from(tokens.saturating_sub(self.burst).min(self.size));
        let mut b = self.clone();
        b.refill(now);
        let missing = (needed - b.budget).max(0) as u128;
        if missing == 0 {
            return Duration::ZERO;
        }
        let ns = missing * b.refill.as_nanos() / u128::from(b.size.max(1)) + 1;
        Duration::from_nanos(ns.min(u128::from(u64::MAX)) as u64)
    }
}

/// Bandwidth and operation limits of one device.
#[derive(Debug, Clone, Default)]
pub struct RateLimiter {
    /// Bytes.
    pub bandwidth: Option<TokenBucket>,
    /// Requests.
    pub ops: Option<TokenBucket>,
}

impl RateLimiter {
    /// Admits a request of `bytes` (one operation), or says how long to wait.
    pub fn admit(&mut self, bytes: u64, now: Instant) -> Result<(), Duration> {
        if let Some(b) = self.bandwidth.as_mut() {
            if !b.consume(bytes, now) {
                return Err(b.wait_for(bytes, now));
            }
        }
        if let Some(o) = self.ops.as_mut() {
            if !o.consume(1, now) {
                let wait = o.wait_for(1, now);
                if let Some(b) = self.bandwidth.as_mut() {
                    b.refund(bytes);
                }
                return Err(wait);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn a_full_bucket_then_its_refill_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1000, 0, S, t0);
        assert!(b.consume(1000, t0));
        assert!(!b.consume(1, t0));
        assert_eq!(b.wait_for(500, t0), Duration::from_nanos(500_000_001));
        assert!(!b.consume(500, t0 + Duration::from_millis(499)));
        assert!(b.consume(500, t0 + Duration::from_millis(500)));
        assert!(!b.consume(1000, t0 + Duration::from_millis(600)));
        assert!(b.consume(1000, t0 + Duration::from_millis(1500)));
    }

    #[test]
    fn the_one_time_burst_is_spent_first_and_once() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(100, 1000, S, t0);
        assert!(b.consume(1000, t0), "burst");
        assert!(b.consume(100, t0), "then the bucket");
        assert!(!b.consume(1, t0), "the burst does not come back");
    }

    #[test]
    fn oversized_requests_pass_when_full_and_leave_a_debt() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(100, 0, S, t0);
        assert!(b.consume(300, t0));
        // The debt of 200 must be repaid before anything passes.
        assert!(!b.consume(1, t0 + Duration::from_millis(1500)));
        assert!(b.consume(100, t0 + Duration::from_millis(3000)));
    }

    #[test]
    fn long_run_rate_holds() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1 << 20, 0, S, t0);
        let mut now = t0;
        let mut moved = 0u64;
        while now < t0 + Duration::from_secs(10) {
            if b.consume(65536, now) {
                moved += 65536;
            } else {
                now += b.wait_for(65536, now);
            }
        }
        // One full bucket up front, then 1 MiB/s for 10 s.
        let mib = moved as f64 / f64::from(1 << 20);
        assert!((10.5..=11.1).contains(&mib), "{mib} MiB in 10 s");
    }

    #[test]
    fn a_limiter_refunds_bandwidth_when_ops_refuse() {
        let t0 = Instant::now();
        let mut l = RateLimiter {
            bandwidth: Some(TokenBucket::new(1000, 0, S, t0)),
            ops: Some(TokenBucket::new(1, 0, S, t0)),
        };
        assert_eq!(l.admit(100, t0), Ok(()));
        assert!(l.admit(100, t0).is_err(), "one op per second");
        assert_eq!(
            l.admit(900, t0 + S),
            Ok(()),
            "the refused request's bytes were refunded"
        );
    }
}
