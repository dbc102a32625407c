//! The per-connection token bucket of protocol.md 1.5: refill `rate` tokens per second up to
//! `capacity`; a frame costs its op count (capped at the capacity, so one huge batch can still
//! pass on a full bucket instead of being refused forever).
use std::time::Instant;

#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    capacity: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub fn new(rate: u32, capacity: u32, now: Instant) -> Self {
        TokenBucket {
            rate: f64::from(rate),
            capacity: f64::from(capacity),
            tokens: f64::from(capacity),
            last: now,
        }
    }

    /// Takes `cost` tokens if the bucket holds them.
    pub fn try_take(&mut self, cost: u32, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.capacity);
        let cost = f64::from(cost.max(1)).min(self.capacity);
        if self.tokens >= cost {
            self.tokens -= cost;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn drains_then_refills_at_the_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10, 20, t0);
        assert!(b.try_take(20, t0));
        assert!(!b.try_take(1, t0));
        assert!(b.try_take(5, t0 + Duration::from_millis(500)));
        assert!(!b.try_take(1, t0 + Duration::from_millis(500)));
    }

    #[test]
    fn cost_is_capped_at_capacity() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10, 20, t0);
        assert!(b.try_take(1_000_000, t0));
        assert!(!b.try_take(1, t0));
    }
}
