//! The node-wide cap on client write batches in flight (`--backpressure-limit`): a batch holds
//! a slot from its submission until the shards (and, in a cluster, the owner and backups)
//! answered. A writer that finds no slot waits until one is released, woken by the release
//! itself, up to its deadline.
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;
use tokio::time::Instant;

pub struct BatchSlots {
    /// Shared with the metrics actor, which samples it as `topgun_pending_batches`.
    in_flight: Arc<AtomicI64>,
    released: Notify,
}

impl Default for BatchSlots {
    fn default() -> Self {
        BatchSlots::new()
    }
}

impl BatchSlots {
    pub fn new() -> BatchSlots {
        BatchSlots {
            in_flight: Arc::new(AtomicI64::new(0)),
            released: Notify::new(),
        }
    }

    /// The counter the metrics actor samples.
    pub fn gauge(&self) -> Arc<AtomicI64> {
        self.in_flight.clone()
    }

    pub fn in_flight(&self) -> i64 {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Takes a slot if fewer than `limit` are taken (the limit is a hard cap).
    pub fn try_reserve(&self, limit: i64) -> bool {
        self.in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .is_ok()
    }

    /// Takes a slot, waiting for releases until `deadline`. Returns (got one, had to wait).
    /// Each release wakes one waiter, so when the count dips only as many go on as there is
    /// room for, never every waiter at once.
    pub async fn reserve_until(&self, limit: i64, deadline: Instant) -> (bool, bool) {
        let mut waited = false;
        loop {
            // Registered before the check: a release between the check and the wait is not lost.
            let released = self.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            if self.try_reserve(limit) {
                return (true, waited);
            }
            waited = true;
            if tokio::time::timeout_at(deadline, released).await.is_err() {
                return (false, true);
            }
        }
    }

    /// Gives a slot back and wakes one waiter.
    pub fn release(&self) {
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.released.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn slots_are_capped() {
        let slots = BatchSlots::new();
        assert!(slots.try_reserve(2));
        assert!(slots.try_reserve(2));
        assert!(!slots.try_reserve(2));
        assert_eq!(slots.in_flight(), 2);
        slots.release();
        assert!(slots.try_reserve(2));
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_gets_a_released_slot_or_times_out() {
        let slots = Arc::new(BatchSlots::new());
        assert!(slots.try_reserve(1));
        let soon = Instant::now() + Duration::from_millis(20);
        assert_eq!(slots.reserve_until(1, soon).await, (false, true));

        let releaser = slots.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(10)).await;
            releaser.release();
        });
        let t0 = Instant::now();
        let later = t0 + Duration::from_secs(5);
        assert_eq!(slots.reserve_until(1, later).await, (true, true));
        // Woken by the release, not by a later look at the count.
        assert_eq!(t0.elapsed(), Duration::from_millis(10));
        assert_eq!(slots.in_flight(), 1);
        slots.release();
        assert_eq!(slots.reserve_until(1, t0).await, (true, false));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_release_lets_one_waiter_on_and_none_is_forgotten() {
        let slots = Arc::new(BatchSlots::new());
        assert!(slots.try_reserve(1));
        let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let deadline = Instant::now() + Duration::from_secs(10);
        let waiters: Vec<_> = (0..8)
            .map(|_| {
                let (s, done) = (slots.clone(), done.clone());
                tokio::spawn(async move {
                    let got = s.reserve_until(1, deadline).await;
                    done.fetch_add(1, Ordering::AcqRel);
                    got
                })
            })
            .collect();
        for i in 1..=8 {
            slots.release();
            let until = Instant::now() + Duration::from_secs(5);
            while done.load(Ordering::Acquire) < i && Instant::now() < until {
                tokio::task::yield_now().await;
            }
            assert_eq!(done.load(Ordering::Acquire), i, "release {i} woke nobody");
            assert_eq!(slots.in_flight(), 1);
        }
        for w in waiters {
            // (A waiter that started after a release took that slot without waiting.)
            assert!(w.await.expect("waiter").0);
        }
    }
}
