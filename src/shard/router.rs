//! Which shard owns a key: partition `fnv1a(key) % 271`, partition `p` to shard `p % shards`.
//! Fixed for the life of the process, so every connection routes the same way.
use std::sync::Arc;

use actix::dev::ToEnvelope;
use actix::{Actor, Handler, Message};

use super::actor::ShardActor;
use super::fnv::{partition_of, PARTITION_COUNT};
use crate::telemetry::report::Mailbox;

#[derive(Clone)]
pub struct Shards {
    pub mailboxes: Arc<[Mailbox<ShardActor>]>,
}

impl Shards {
    pub fn len(&self) -> usize {
        self.mailboxes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.mailboxes.is_empty()
    }

    pub fn of_key(&self, key: &str) -> usize {
        shard_of_partition(partition_of(key), self.mailboxes.len())
    }

    /// Asks every shard (all at once) and joins their lists; a shard that does not answer is
    /// left out, for the caller's next pass to cover.
    pub async fn collect<M, T>(&self, make: impl Fn() -> M) -> Vec<T>
    where
        M: Message<Result = Vec<T>> + Send + 'static,
        T: Send + 'static,
        ShardActor: Handler<M>,
        <ShardActor as Actor>::Context: ToEnvelope<ShardActor, M>,
    {
        let asks: Vec<_> = self.mailboxes.iter().map(|s| s.send(make())).collect();
        let mut all = Vec::new();
        for ask in asks {
            if let Ok(part) = ask.await {
                all.extend(part);
            }
        }
        all
    }
}

pub fn shard_of_partition(partition: u16, shards: usize) -> usize {
    usize::from(partition) % shards.max(1)
}

/// The partitions shard `index` of `shards` owns.
pub fn partitions_of(index: usize, shards: usize) -> Vec<u16> {
    (0..PARTITION_COUNT)
        .filter(|p| shard_of_partition(*p, shards) == index)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_partition_has_exactly_one_shard() {
        for shards in 1..=8 {
            let mut all: Vec<u16> = (0..shards).flat_map(|i| partitions_of(i, shards)).collect();
            all.sort_unstable();
            assert_eq!(all, (0..PARTITION_COUNT).collect::<Vec<_>>());
        }
    }
}
