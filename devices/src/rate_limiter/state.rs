//! The saved state of a rate limiter: each bucket's configuration and what is left of it.
//! No instant is saved: a restored bucket starts its refill clock at the restore.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::{RateLimiter, TokenBucket};

/// One bucket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenBucketState {
    /// Tokens a full bucket holds.
    pub size: u64,
    /// Time to refill a whole bucket, in nanoseconds.
    pub refill_ns: u64,
    /// What is left of the one-time burst.
    pub burst: u64,
    /// Tokens available at the snapshot; negative is a debt.
    pub budget: i128,
}

/// A device's limiter.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateLimiterState {
    /// Bytes.
    pub bandwidth: Option<TokenBucketState>,
    /// Operations.
    pub ops: Option<TokenBucketState>,
}

crate::state::first_version!(TokenBucketState, RateLimiterState);

impl TokenBucket {
    /// The bucket's configuration and its budget at `now` (tokens earned until `now` count).
    pub fn state(&self, now: Instant) -> TokenBucketState {
        let mut b = self.clone();
        b.refill(now);
        TokenBucketState {
            size: b.size,
            refill_ns: u64::try_from(b.refill.as_nanos()).unwrap_or(u64::MAX),
            burst: b.burst,
            budget: b.budget,
        }
    }

    /// A bucket from its saved state, refilling from `now` on. A budget above the bucket's
    /// size cannot have been saved and is refused.
    pub fn from_state(s: &TokenBucketState, now: Instant) -> Result<Self, String> {
        if s.budget > i128::from(s.size) {
            return Err(format!(
                "a token bucket of {} tokens holding {}",
                s.size, s.budget
            ));
        }
        Ok(Self {
            size: s.size,
            refill: Duration::from_nanos(s.refill_ns),
            burst: s.burst,
            budget: s.budget,
            last: now,
        })
    }
}

impl RateLimiter {
    /// Both buckets' states at `now`.
    pub fn state(&self, now: Instant) -> RateLimiterState {
        RateLimiterState {
            bandwidth: self.bandwidth.as_ref().map(|b| b.state(now)),
            ops: self.ops.as_ref().map(|b| b.state(now)),
        }
    }

    /// A limiter from its saved state, refilling from `now` on.
    pub fn from_state(s: &RateLimiterState, now: Instant) -> Result<Self, String> {
        let bucket = |b: &Option<TokenBucketState>| {
            b.as_ref()
                .map(|b| TokenBucket::from_state(b, now))
                .transpose()
        };
        Ok(Self {
            bandwidth: bucket(&s.bandwidth)?,
            ops: bucket(&s.ops)?,
        })
    }
}

/// The saved state of an optional limiter (a device without one saves `None`).
pub fn save_limiter(l: Option<&RateLimiter>) -> Option<RateLimiterState> {
    l.map(|l| l.state(Instant::now()))
}

/// Rebuilds an optional limiter from its saved state.
pub fn restore_limiter(s: Option<&RateLimiterState>) -> Result<Option<RateLimiter>, String> {
    s.map(|s| RateLimiter::from_state(s, Instant::now()))
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn a_restored_bucket_keeps_its_budget_debt_and_burst() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(100, 50, S, t0);
        assert!(b.consume(50, t0), "the burst");
        assert!(
            b.consume(300, t0),
            "a full bucket lets an oversized request through"
        );
        let s = b.state(t0);
        assert_eq!(
            s,
            TokenBucketState {
                size: 100,
                refill_ns: 1_000_000_000,
                burst: 0,
                budget: -200,
            }
        );
        let t1 = t0 + Duration::from_secs(3600);
        let mut r = TokenBucket::from_state(&s, t1).unwrap();
        // The debt is still owed after the restore: 2 s to repay it, then 1 s for a full bucket.
        assert!(!r.consume(1, t1 + Duration::from_millis(1500)));
        assert!(r.consume(100, t1 + Duration::from_millis(3000)));
    }

    #[test]
    fn tokens_earned_before_the_snapshot_are_saved() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1000, 0, S, t0);
        assert!(b.consume(1000, t0));
        assert_eq!(b.state(t0 + Duration::from_millis(250)).budget, 250);
    }

    #[test]
    fn a_budget_over_the_size_is_refused() {
        let s = TokenBucketState {
            size: 10,
            refill_ns: 1,
            burst: 0,
            budget: 11,
        };
        let e = TokenBucket::from_state(&s, Instant::now()).unwrap_err();
        assert!(e.contains("holding 11"), "{e}");
    }

    #[test]
    fn a_limiter_round_trips() {
        let t0 = Instant::now();
        let l = RateLimiter {
            bandwidth: Some(TokenBucket::new(4096, 7, S, t0)),
            ops: None,
        };
        let s = l.state(t0);
        let r = RateLimiter::from_state(&s, t0).unwrap();
        assert_eq!(r.state(t0), s);
        assert!(r.ops.is_none());
    }
}
