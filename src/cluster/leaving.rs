//! Leaving gracefully (SIGTERM): before this node tells the cluster it leaves, the backups of
//! the partitions it owns, which become their owners once it is gone, get every record it has.
//!
//! With `--write-ack owner+backup` they have every acknowledged write already; with
//! `--write-ack owner` the copies the node sent them may still be in flight, and some it
//! acknowledged alone. So the node compares each owned partition's digest with each backup's
//! (the anti-entropy digests) and sends the partitions that differ, each confirmed durable,
//! within a time budget. Then it leaves, and the others take over at once, not after failure
//! detection.
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::antientropy::local_digests;
use super::error::{ClusterError, Peer};
use super::gather::call;
use super::plane::DataPlane;
use super::release::send_partition;
use super::wire::{self, Kind};
use crate::shard::digest::PartitionDigest;

/// What the handover before leaving did.
#[derive(Debug, Default)]
pub struct Handover {
    /// Owned partitions compared with a backup's copy.
    pub compared: usize,
    /// Of them, sent because they differed.
    pub sent: usize,
    pub records: u64,
    pub took: Duration,
    pub failure: Option<ClusterError>,
}

/// Brings the backups of this node's partitions up to date with it, within `budget`.
pub async fn hand_over(node: &Arc<DataPlane>, budget: Duration) -> Handover {
    let t0 = Instant::now();
    let mut out = Handover::default();
    match tokio::time::timeout(budget, hand_over_all(node, &mut out)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => out.failure = Some(e),
        Err(_) => {
            out.failure = Some(ClusterError::NotFinished {
                ms: budget.as_millis(),
            })
        }
    }
    out.took = t0.elapsed();
    out
}

async fn hand_over_all(node: &Arc<DataPlane>, out: &mut Handover) -> Result<(), ClusterError> {
    let table = node.cluster.table();
    let by_backup = table.owned_by_backup(&node.cluster.node_id, |_| false);
    if by_backup.is_empty() {
        return Ok(());
    }
    let mut owned: Vec<u16> = by_backup.values().flatten().copied().collect();
    owned.sort_unstable();
    owned.dedup();
    let mine: BTreeMap<u16, PartitionDigest> = local_digests(node, &owned)
        .await
        .into_iter()
        .map(|d| (d.partition, d))
        .collect();
    let mut failure = None;
    for (backup, partitions) in by_backup {
        let body = wire::body(&wire::Partitions {
            partitions: partitions.clone(),
        });
        let theirs: BTreeMap<u16, u64> =
            match call(node, &backup, Kind::Digests, Kind::DigestsDone, body).await {
                Ok(reply) => wire::decode::<wire::DigestsDone>(&reply)
                    .map_err(|e| ClusterError::Undecodable {
                        peer: Peer::node(&backup),
                        detail: e.to_string(),
                    })?
                    .digests
                    .into_iter()
                    .map(|d| (d.partition, d.digest))
                    .collect(),
                // Without its digests every partition goes: better more than a loss.
                Err(_) => BTreeMap::new(),
            };
        for p in partitions {
            out.compared += 1;
            let same = match (mine.get(&p), theirs.get(&p)) {
                (Some(m), Some(t)) => m.digest == *t,
                _ => false,
            };
            if same {
                continue;
            }
            match send_partition(node, std::slice::from_ref(&backup), p).await {
                Ok((_, records)) => {
                    out.sent += 1;
                    out.records += records;
                }
                Err(e) => {
                    failure.get_or_insert(e);
                }
            }
        }
    }
    failure.map_or(Ok(()), Err)
}
