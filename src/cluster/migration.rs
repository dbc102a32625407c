//! Pulling partitions from a peer (after a rebalance, and to catch up): one partition at a
//! time, the peer streams what its shards hold for it (`PULL` → `PULL_CHUNK`s → `PULL_DONE`),
//! and each chunk is merged into the local shards like a write, durably, before the next is
//! read; the next partition is asked for once this one is merged. So neither side holds more
//! than one partition of the pull in memory (a 1 GiB data set is 271 requests of about 4 MiB),
//! and a pull that fails part way is resumed where it stopped. Merging is LWW/OR, so pulling
//! data this node already has, or racing live writes, changes nothing that should not change.
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::peer::{CallStream, PeerConn};
use super::wire::{self, Kind, Pull, PullChunk, PullDone};
use crate::data::writes::{apply_writes, merge_quietly};
use crate::data::DataPlane;

/// How long a pull waits for the link to its source to come up (it was just dialled).
const LINK_WAIT: Duration = Duration::from_secs(5);

/// How a pull ended: the records merged and the partitions completed (a prefix of the ones
/// asked for), and why it stopped early, if it did.
#[derive(Debug, Default)]
pub struct Pulled {
    pub records: u64,
    pub partitions_done: usize,
    pub failure: Option<String>,
}

/// How pulled records are merged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Merge {
    /// Like writes, live events included (a catch-up brings changes subscribers missed).
    Announced,
    /// Without live events: a partition moved here with partitioned placement, whose holders
    /// sent its changes to every subscriber as they happened.
    Quiet,
}

/// Pulls `partitions` from `source` in order, calling `done` after each one is merged.
pub async fn pull(
    node: &Arc<DataPlane>,
    source: &str,
    partitions: &[u16],
    merge: Merge,
    mut done: impl FnMut(u16),
) -> Pulled {
    let mut pulled = Pulled::default();
    let Some(link) = node.cluster.wait_link(source, LINK_WAIT).await else {
        pulled.failure = Some(format!("no connection to {source}"));
        return pulled;
    };
    for &partition in partitions {
        match pull_one(node, &link, source, partition, merge).await {
            Ok(records) => {
                pulled.records += records;
                pulled.partitions_done += 1;
                done(partition);
            }
            Err(failure) => {
                pulled.failure = Some(failure);
                break;
            }
        }
    }
    pulled
}

/// One partition: its records merged durably, or why not.
async fn pull_one(
    node: &Arc<DataPlane>,
    link: &actix::Addr<PeerConn>,
    source: &str,
    partition: u16,
    merge: Merge,
) -> Result<u64, String> {
    let body = wire::body(&Pull {
        partitions: vec![partition],
    });
    let mut answers = link
        .send(CallStream {
            kind: Kind::Pull,
            body,
        })
        .await
        .map_err(|_| format!("connection to {source} closed"))?;
    let mut records = 0u64;
    // The peer's connection fails the stream (closes it) after a silence of the cluster
    // timeout, so this loop cannot wait forever.
    while let Some(reply) = answers.recv().await {
        match reply.kind {
            Kind::PullChunk => {
                let chunk: PullChunk = wire::decode(&reply.body).map_err(|e| e.to_string())?;
                let n = chunk.ops.len() as u64;
                let outcome = match merge {
                    Merge::Announced => apply_writes(&node.shards, 0, chunk.ops).await,
                    Merge::Quiet => merge_quietly(&node.shards, chunk.ops).await,
                };
                if let Some(failure) = outcome.failure {
                    return Err(format!("merging pulled records failed: {failure}"));
                }
                records += n;
                node.cluster
                    .counters
                    .migration_records
                    .fetch_add(n, Ordering::Relaxed);
            }
            Kind::PullDone => {
                let done: PullDone = wire::decode(&reply.body).map_err(|e| e.to_string())?;
                return match done.failure {
                    Some(f) => Err(format!("{source} could not export: {f}")),
                    None => Ok(records),
                };
            }
            other => return Err(format!("unexpected {other:?} in a pull")),
        }
    }
    Err(format!(
        "pull from {source} ended early (connection lost or timed out)"
    ))
}
