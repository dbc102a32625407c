//! Rate limit for repeated warnings: at most one line per interval, carrying how many were
//! suppressed since the last one, so a flood (queue full, clients rate-limited) costs one line.
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct Throttle {
    interval: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl Throttle {
    pub fn new(interval: Duration) -> Self {
        Throttle {
            interval,
            last: None,
            suppressed: 0,
        }
    }

    /// `Some(suppressed)` when a line may be written now (with the count of lines swallowed
    /// since the previous one), `None` when this one is swallowed.
    pub fn check(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(last) if now.duration_since(last) < self.interval => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_with_the_suppressed_count() {
        let mut t = Throttle::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(t.check(t0), Some(0));
        assert_eq!(t.check(t0 + Duration::from_secs(1)), None);
        assert_eq!(t.check(t0 + Duration::from_secs(2)), None);
        assert_eq!(t.check(t0 + Duration::from_secs(11)), Some(2));
        assert_eq!(t.check(t0 + Duration::from_secs(12)), None);
    }
}
