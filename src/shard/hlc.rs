//! The node's hybrid logical clock (protocol.md 4.1): hands out strictly increasing timestamps
//! and absorbs the timestamps of accepted remote writes, rejecting those too far in the future.
//! The wall clock is passed in (`wall_ms`) so tests control time; `system_millis` reads the real
//! one. Who owns the clock (one per node, shared by shards or not) is the caller's business.
use std::time::{SystemTime, UNIX_EPOCH};

use thiserror::Error;

use crate::protocol::types::Timestamp;

/// Default tolerance for remote timestamps ahead of our wall clock (protocol.md 4.1: 60,000 ms).
pub const DEFAULT_MAX_DRIFT_MS: u64 = 60_000;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum HlcError {
    /// Accepting the timestamp would drag every later local timestamp that far into the future.
    #[error("remote timestamp {remote_millis} is {ahead_ms} ms ahead of the wall clock {wall_ms} (max {max_drift_ms})")]
    TooFarAhead {
        remote_millis: u64,
        wall_ms: u64,
        ahead_ms: u64,
        max_drift_ms: u64,
    },
}

impl HlcError {
    /// Bounded code for logs and metric labels (style.md "Errors").
    pub fn code(&self) -> &'static str {
        match self {
            HlcError::TooFarAhead { .. } => "clock_drift",
        }
    }
}

/// Milliseconds since the Unix epoch from the system clock; 0 if the clock is before 1970
/// (the HLC then simply keeps counting from its last value).
pub fn system_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[derive(Debug, Clone)]
pub struct Hlc {
    node_id: String,
    last_millis: u64,
    counter: u32,
    /// Remote timestamps more than this far ahead of the wall clock are refused.
    max_drift_ms: u64,
}

impl Hlc {
    pub fn new(node_id: impl Into<String>, max_drift_ms: u64) -> Self {
        Hlc {
            node_id: node_id.into(),
            last_millis: 0,
            counter: 0,
            max_drift_ms,
        }
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    pub fn max_drift_ms(&self) -> u64 {
        self.max_drift_ms
    }

    /// The clock's current state as a timestamp (the last value handed out or absorbed).
    pub fn last(&self) -> Timestamp {
        Timestamp {
            millis: self.last_millis,
            counter: self.counter,
            node_id: self.node_id.clone(),
        }
    }

    /// A fresh timestamp strictly greater than every timestamp this clock handed out or absorbed.
    /// Raises the clock to at least `ts` without the drift check: for recovery, where `ts` was
    /// already accepted once and the node must never hand out a lower timestamp again.
    pub fn observe_stored(&mut self, ts: &Timestamp) {
        if (ts.millis, ts.counter) > (self.last_millis, self.counter) {
            self.last_millis = ts.millis;
            self.counter = ts.counter;
        }
    }

    pub fn now(&mut self, wall_ms: u64) -> Timestamp {
        if wall_ms > self.last_millis {
            self.last_millis = wall_ms;
            self.counter = 0;
        } else {
            self.bump(self.counter);
        }
        self.last()
    }

    /// Absorbs a remote timestamp (4.1 `update`). Refuses, and leaves the clock untouched, if
    /// `remote` is more than `max_drift_ms` ahead of `wall_ms`.
    pub fn update(&mut self, remote: &Timestamp, wall_ms: u64) -> Result<(), HlcError> {
        let ahead_ms = remote.millis.saturating_sub(wall_ms);
        if ahead_ms > self.max_drift_ms {
            return Err(HlcError::TooFarAhead {
                remote_millis: remote.millis,
                wall_ms,
                ahead_ms,
                max_drift_ms: self.max_drift_ms,
            });
        }
        let new_millis = self.last_millis.max(wall_ms).max(remote.millis);
        let from_last = new_millis == self.last_millis;
        let from_remote = new_millis == remote.millis;
        match (from_last, from_remote) {
            (true, true) => self.bump(self.counter.max(remote.counter)),
            (true, false) => self.bump(self.counter),
            (false, true) => {
                self.last_millis = new_millis;
                self.bump(remote.counter);
            }
            (false, false) => {
                self.last_millis = new_millis;
                self.counter = 0;
            }
        }
        Ok(())
    }

    /// Sets the counter to `base + 1`; on u32 overflow moves to the next millisecond instead
    /// (the Rust reference's rule), which keeps the result strictly greater than `base`.
    fn bump(&mut self, base: u32) {
        match base.checked_add(1) {
            Some(c) => self.counter = c,
            None => {
                self.last_millis = self.last_millis.saturating_add(1);
                self.counter = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(millis: u64, counter: u32, node: &str) -> Timestamp {
        Timestamp {
            millis,
            counter,
            node_id: node.into(),
        }
    }

    #[test]
    fn now_follows_wall_clock_then_counts() {
        let mut c = Hlc::new("n", DEFAULT_MAX_DRIFT_MS);
        assert_eq!(c.now(100), ts(100, 0, "n"));
        assert_eq!(c.now(100), ts(100, 1, "n"));
        // Wall clock going backwards never makes time go backwards.
        assert_eq!(c.now(50), ts(100, 2, "n"));
        assert_eq!(c.now(101), ts(101, 0, "n"));
    }

    #[test]
    fn counter_overflow_rolls_to_next_millisecond() {
        let mut c = Hlc::new("n", DEFAULT_MAX_DRIFT_MS);
        c.update(&ts(100, u32::MAX - 1, "r"), 100).unwrap();
        assert_eq!(c.last(), ts(100, u32::MAX, "n"));
        assert_eq!(c.now(100), ts(101, 0, "n"));
        // update with a remote at u32::MAX on the same millis also rolls over.
        let mut c = Hlc::new("n", DEFAULT_MAX_DRIFT_MS);
        c.update(&ts(100, u32::MAX, "r"), 100).unwrap();
        assert_eq!(c.last(), ts(101, 0, "n"));
    }

    #[test]
    fn update_cases_of_4_1() {
        // Both last and remote hold the max millis: max(counters) + 1.
        let mut c = Hlc::new("n", DEFAULT_MAX_DRIFT_MS);
        c.now(200);
        c.now(200); // (200, 1)
        c.update(&ts(200, 7, "r"), 150).unwrap();
        assert_eq!(c.last(), ts(200, 8, "n"));
        // Only last: local + 1.
        c.update(&ts(100, 50, "r"), 150).unwrap();
        assert_eq!(c.last(), ts(200, 9, "n"));
        // Only remote: remote + 1.
        c.update(&ts(300, 4, "r"), 250).unwrap();
        assert_eq!(c.last(), ts(300, 5, "n"));
        // Only wall: 0.
        c.update(&ts(10, 4, "r"), 400).unwrap();
        assert_eq!(c.last(), ts(400, 0, "n"));
    }

    #[test]
    fn rejects_remote_too_far_ahead_and_stays_unchanged() {
        let mut c = Hlc::new("n", 1_000);
        c.now(10_000);
        let before = c.last();
        let err = c.update(&ts(11_001, 0, "r"), 10_000).unwrap_err();
        assert_eq!(err.code(), "clock_drift");
        assert!(matches!(
            err,
            HlcError::TooFarAhead {
                ahead_ms: 1_001,
                ..
            }
        ));
        assert_eq!(c.last(), before);
        // Exactly at the limit is accepted.
        c.update(&ts(11_000, 0, "r"), 10_000).unwrap();
        assert_eq!(c.last(), ts(11_000, 1, "n"));
    }

    /// Never hand out a timestamp lower than (or equal to) anything observed, whatever the
    /// interleaving of wall clock jumps and remote timestamps (including tie-breaking node ids
    /// that sort above ours).
    #[test]
    fn never_hands_out_a_timestamp_at_or_below_an_observed_one() {
        let mut c = Hlc::new("a", DEFAULT_MAX_DRIFT_MS);
        let mut max_seen = ts(0, 0, "");
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..10_000 {
            let wall = 1_000 + next() % 50;
            if next() % 2 == 0 {
                let remote = ts(
                    1_000 + next() % 60,
                    (next() % 4) as u32 + if next() % 50 == 0 { u32::MAX - 3 } else { 0 },
                    "zzz",
                );
                if c.update(&remote, wall).is_ok() && remote > max_seen {
                    max_seen = remote;
                }
            } else {
                let t = c.now(wall);
                assert!(t > max_seen, "{t} not above {max_seen}");
                max_seen = t;
            }
        }
    }

    #[test]
    fn system_millis_is_plausible() {
        assert!(system_millis() > 1_600_000_000_000);
    }
}
