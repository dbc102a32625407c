//! Partitions read out of this node's shards in bounded pieces, for a peer's pull and for a
//! handover. The partitions are taken in the order asked, a group at a time: one pass over
//! each shard lists the keys of a group (groups are cut so that a pass lists at most about
//! [`KEYS_PER_PASS`] keys), then the records are read a chunk at a time (about
//! [`CHUNK_BYTES`]). So an export holds at most one group's keys and one chunk's records,
//! whatever the size of a partition, and a full pull costs a few passes over the store, not
//! one per partition.
use std::collections::VecDeque;
use std::sync::Arc;

use super::error::ClusterError;
use super::plane::DataPlane;
use crate::protocol::ClientOp;
use crate::shard::actor::{ListKeys, PartitionCensus, ReadChunk};
use crate::shard::export::PartitionKeys;
use crate::shard::fnv::PARTITION_COUNT;
use crate::shard::router::shard_of_partition;

/// Estimated encoded size a chunk stops growing at.
pub const CHUNK_BYTES: usize = 1 << 20;
/// Ops per chunk at most (small records).
pub const CHUNK_OPS: usize = 4_096;
/// Keys listed per pass over the shards at most (a partition with more is listed alone).
pub const KEYS_PER_PASS: u64 = 65_536;

/// A piece of one partition; `last` when it is the partition's final one (possibly with no
/// ops: an empty partition is one such piece).
#[derive(Debug)]
pub struct Chunk {
    pub partition: u16,
    pub ops: Vec<ClientOp>,
    pub last: bool,
    /// The partition's last change when its keys were listed (`MapStore::census`).
    pub touched: u64,
}

/// Cuts `partitions` (in order) into consecutive groups whose keys sum to at most `budget`;
/// a partition over the budget is a group of its own.
pub fn groups(partitions: &[u16], keys_of: impl Fn(u16) -> u64, budget: u64) -> Vec<Vec<u16>> {
    let mut out: Vec<Vec<u16>> = Vec::new();
    let mut sum = 0u64;
    for &p in partitions {
        let keys = keys_of(p);
        match out.last_mut() {
            Some(group) if sum + keys <= budget => {
                group.push(p);
                sum += keys;
            }
            _ => {
                out.push(vec![p]);
                sum = keys;
            }
        }
    }
    out
}

pub struct Exporter {
    node: Arc<DataPlane>,
    groups: VecDeque<Vec<u16>>,
    /// The current group's partitions, listed and not yet fully read, in order.
    listed: VecDeque<PartitionKeys>,
}

impl Exporter {
    /// An export of `partitions` (ids at or above 271 and repeats are ignored), in that order.
    pub async fn new(node: Arc<DataPlane>, partitions: &[u16]) -> Result<Self, ClusterError> {
        let mut keys = vec![0u64; usize::from(PARTITION_COUNT)];
        let census: Vec<_> = node
            .shards
            .mailboxes
            .iter()
            .map(|s| s.send(PartitionCensus))
            .collect();
        for c in census {
            for (p, n, _) in c.await.map_err(|_| ClusterError::ShardUnavailable)? {
                keys[usize::from(p)] = n;
            }
        }
        // Each partition once, in the order asked: a request naming one many times must not
        // make this node export it many times.
        let mut seen = vec![false; usize::from(PARTITION_COUNT)];
        let wanted: Vec<u16> = partitions
            .iter()
            .copied()
            .filter(|&p| p < PARTITION_COUNT && !std::mem::replace(&mut seen[usize::from(p)], true))
            .collect();
        let groups = groups(&wanted, |p| keys[usize::from(p)], KEYS_PER_PASS).into();
        Ok(Exporter {
            node,
            groups,
            listed: VecDeque::new(),
        })
    }

    /// The next piece, `None` once every partition was exported; `Err` when a shard did
    /// not answer (a partial export must not pass for a complete one).
    pub async fn next(&mut self) -> Result<Option<Chunk>, ClusterError> {
        if self.listed.is_empty() {
            let Some(group) = self.groups.pop_front() else {
                return Ok(None);
            };
            self.listed = self.list(&group).await?.into();
        }
        let Some(front) = self.listed.front_mut() else {
            return Ok(None);
        };
        let partition = front.partition;
        let touched = front.touched;
        let mut ops = Vec::new();
        while ops.is_empty() {
            let Some(keys) = front.maps.pop() else {
                break;
            };
            let shards = &self.node.shards;
            let (read, rest) = shards.mailboxes[shard_of_partition(partition, shards.len())]
                .send(ReadChunk {
                    keys,
                    max_bytes: CHUNK_BYTES,
                    max_ops: CHUNK_OPS,
                })
                .await
                .map_err(|_| ClusterError::ShardUnavailable)?;
            if !rest.keys.is_empty() {
                front.maps.push(rest);
            }
            ops = read;
        }
        let last = front.maps.is_empty();
        if last {
            self.listed.pop_front();
        }
        Ok(Some(Chunk {
            partition,
            ops,
            last,
            touched,
        }))
    }

    /// The keys of `group`'s partitions, in the group's order.
    async fn list(&self, group: &[u16]) -> Result<Vec<PartitionKeys>, ClusterError> {
        let mut marked = vec![false; usize::from(PARTITION_COUNT)];
        let shards = &self.node.shards;
        let mut asked = vec![false; shards.len()];
        for &p in group {
            marked[usize::from(p)] = true;
            asked[shard_of_partition(p, shards.len())] = true;
        }
        let marked = Arc::new(marked);
        let requests: Vec<_> = asked
            .iter()
            .enumerate()
            .filter(|(_, asked)| **asked)
            .map(|(s, _)| {
                shards.mailboxes[s].send(ListKeys {
                    partitions: marked.clone(),
                })
            })
            .collect();
        let mut by_partition: Vec<Option<PartitionKeys>> =
            (0..PARTITION_COUNT).map(|_| None).collect();
        for r in requests {
            for listed in r.await.map_err(|_| ClusterError::ShardUnavailable)? {
                let p = usize::from(listed.partition);
                by_partition[p] = Some(listed);
            }
        }
        group
            .iter()
            .map(|&p| {
                by_partition[usize::from(p)]
                    .take()
                    .ok_or(ClusterError::NotListed { partition: p })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_keep_the_order_and_stay_within_the_budget() {
        let keys = |p: u16| [10, 50, 45, 5, 200, 0, 0, 30][usize::from(p)];
        let parts: Vec<u16> = (0..8).collect();
        assert_eq!(
            groups(&parts, keys, 100),
            vec![vec![0, 1], vec![2, 3], vec![4], vec![5, 6, 7]]
        );
        // Asked out of order: the order is kept.
        assert_eq!(groups(&[3, 0, 7], keys, 100), vec![vec![3, 0, 7]]);
        assert!(groups(&[], keys, 100).is_empty());
        // Every group within the budget unless it is one partition.
        for g in groups(&parts, keys, 60) {
            assert!(g.len() == 1 || g.iter().map(|&p| keys(p)).sum::<u64>() <= 60);
        }
    }
}
