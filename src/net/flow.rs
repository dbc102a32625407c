//! One connection's count of its write batches the shards answered, for the forced sync of
//! backpressure: the connection stops reading until its earlier batches are applied, woken by
//! the answer of the last one (no polling).
use std::cell::Cell;

use tokio::sync::Notify;

#[derive(Default)]
pub struct AppliedWrites {
    count: Cell<u64>,
    changed: Notify,
}

impl AppliedWrites {
    pub fn get(&self) -> u64 {
        self.count.get()
    }

    pub fn one_more(&self) {
        self.count.set(self.count.get() + 1);
        self.changed.notify_waiters();
    }

    /// Returns once `target` batches were applied.
    pub async fn reached(&self, target: u64) {
        loop {
            // Registered before the check: an answer between the two is not lost.
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.count.get() >= target {
                return;
            }
            changed.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::rc::Rc;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn a_waiter_is_woken_by_the_answer_it_waits_for() {
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async {
                let applied = Rc::new(AppliedWrites::default());
                applied.one_more();
                applied.reached(1).await;
                let answers = applied.clone();
                tokio::task::spawn_local(async move {
                    for _ in 0..3 {
                        tokio::time::sleep(Duration::from_millis(7)).await;
                        answers.one_more();
                    }
                });
                let t0 = tokio::time::Instant::now();
                applied.reached(4).await;
                assert_eq!(t0.elapsed(), Duration::from_millis(21));
                assert_eq!(applied.get(), 4);
            })
            .await;
    }
}
