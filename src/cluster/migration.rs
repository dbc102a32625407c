//! Pulling partitions from a peer (after a rebalance, and to catch up). One `PULL` names the
//! partitions; the peer exports them in that order in chunks of about 1 MiB
//! (`cluster::export`), each marked with its partition and the last one of a partition as
//! such, and sends at most [`WINDOW`] chunks ahead of this node's grants (`PULL_MORE`, one per
//! chunk merged). Each chunk is merged into the local shards like a write, durably, before its
//! grant goes out. So neither side holds more than a few chunks of the pull in memory,
//! whatever the size of a partition, and a pull that fails part way resumes at the first
//! partition not complete. Merging is LWW/OR, so pulling data this node already has, or racing
//! live writes, changes nothing that should not change.
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::Either;
use futures_util::stream::{FuturesOrdered, StreamExt};

use super::error::{ClusterError, Peer};
use super::peer::{CallStream, Grant};
use super::plane::DataPlane;
use super::wire::{self, Kind, Pull, PullChunk, PullDone};
use crate::data::writes::{apply_writes, merge_quietly};
use crate::shard::fnv::partition_of;

/// How long a pull waits for the link to its source to come up (it was just dialled).
const LINK_WAIT: Duration = Duration::from_secs(5);

/// How a pull ended: the records merged and the partitions completed (a prefix of the ones
/// asked for), and why it stopped early, if it did.
#[derive(Debug, Default)]
pub struct Pulled {
    pub records: u64,
    pub partitions_done: usize,
    pub failure: Option<ClusterError>,
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

/// Chunks the exporter may send ahead of the merges: enough to keep the link busy while one
/// merges, few enough that a pull costs a few MiB in flight.
pub const WINDOW: u32 = 4;

/// Pulls `partitions` from `source` in order, calling `done` after each one is merged.
pub async fn pull(
    node: &Arc<DataPlane>,
    source: &str,
    partitions: &[u16],
    merge: Merge,
    done: impl FnMut(u16),
) -> Pulled {
    if partitions.is_empty() {
        return Pulled::default();
    }
    let pulled = pull_in_order(node, source, partitions, merge, done).await;
    if pulled.failure.is_some() {
        // What was asked and not merged must not count as covering a catch-up.
        let left = &partitions[pulled.partitions_done.min(partitions.len())..];
        node.cluster.pull_incomplete(source, left);
    }
    pulled
}

async fn pull_in_order(
    node: &Arc<DataPlane>,
    source: &str,
    partitions: &[u16],
    merge: Merge,
    mut done: impl FnMut(u16),
) -> Pulled {
    let mut pulled = Pulled::default();
    let peer = || Peer::node(source);
    // Asked once the source's own connection to this node is up (and settled), this pull
    // covers the catch-up that connection triggers (`catchup::PullLog`): the data comes once.
    node.cluster.pull_planned(source, partitions);
    let Some(link) = node.cluster.wait_link(source, LINK_WAIT).await else {
        pulled.failure = Some(ClusterError::NoLink { peer: peer() });
        return pulled;
    };
    node.cluster.wait_connected(source, LINK_WAIT).await;
    node.cluster.pull_asked(source, partitions);
    let body = wire::body(&Pull {
        partitions: partitions.to_vec(),
        window: WINDOW,
    });
    let Ok((corr, mut answers)) = link
        .send(CallStream {
            kind: Kind::Pull,
            body,
        })
        .await
    else {
        pulled.failure = Some(ClusterError::LinkClosed { peer: peer() });
        return pulled;
    };
    // Chunks are merged as they come, up to [`WINDOW`] at a time (consecutive partitions
    // live on different shards, so their merges run side by side); they complete in order,
    // and each completion grants the exporter one more chunk. The peer's connection fails the
    // stream (closes it) after a silence of the cluster timeout, so this cannot wait forever.
    let mut merging = FuturesOrdered::new();
    // Index in `partitions` of the partition the next chunk must belong to.
    let mut arriving = 0usize;
    let mut ended: Option<Option<ClusterError>> = None;
    let failure = loop {
        if ended.is_some() && merging.is_empty() {
            break ended.flatten();
        }
        tokio::select! {
            biased;
            Some(merged) = merging.next(), if !merging.is_empty() => match merged {
                Ok(Merged { records, completed }) => {
                    link.do_send(Grant { corr, granted: 1 });
                    pulled.records += records;
                    node.cluster
                        .counters
                        .migration_records
                        .fetch_add(records, Ordering::Relaxed);
                    if let Some(p) = completed {
                        pulled.partitions_done += 1;
                        done(p);
                    }
                }
                Err(failure) => break Some(failure),
            },
            reply = answers.recv(), if ended.is_none() && merging.len() < WINDOW as usize => {
                // The link closes the stream when the connection is lost or falls silent.
                let Some(reply) = reply else {
                    break Some(ClusterError::Unanswered { peer: peer() });
                };
                match reply.kind {
                    Kind::PullChunk => {
                        let chunk = match wire::decode::<PullChunk>(&reply.body) {
                            Ok(chunk) => chunk,
                            Err(e) => break Some(ClusterError::Undecodable {
                                peer: peer(),
                                detail: e.to_string(),
                            }),
                        };
                        let expected = partitions.get(arriving).copied();
                        if let Err(detail) = check_chunk(&chunk, expected) {
                            break Some(ClusterError::Invalid { peer: peer(), detail });
                        }
                        if chunk.last {
                            arriving += 1;
                        }
                        merging.push_back(merge_chunk(node, chunk, merge));
                    }
                    Kind::PullDone => {
                        ended = Some(match wire::decode::<PullDone>(&reply.body) {
                            Ok(PullDone { failure: None, .. }) if arriving == partitions.len() => {
                                None
                            }
                            Ok(PullDone { failure: None, .. }) => {
                                Some(ClusterError::PullIncomplete {
                                    peer: peer(),
                                    done: arriving,
                                    asked: partitions.len(),
                                })
                            }
                            Ok(PullDone {
                                failure: Some(message),
                                ..
                            }) => Some(ClusterError::Remote {
                                peer: peer(),
                                message,
                            }),
                            Err(e) => Some(ClusterError::Undecodable {
                                peer: peer(),
                                detail: e.to_string(),
                            }),
                        });
                    }
                    other => {
                        break Some(ClusterError::UnexpectedAnswer {
                            peer: peer(),
                            asked: Kind::Pull,
                            answer: other,
                        })
                    }
                }
            }
        }
    };
    pulled.failure = failure;
    pulled
}

struct Merged {
    records: u64,
    /// The partition this chunk completed.
    completed: Option<u16>,
}

/// A chunk is of the partition due and holds only keys of it.
fn check_chunk(chunk: &PullChunk, expected: Option<u16>) -> Result<(), String> {
    if expected != Some(chunk.partition) {
        return Err(format!(
            "a chunk of partition {} where {expected:?} was due",
            chunk.partition
        ));
    }
    match chunk
        .ops
        .iter()
        .find(|op| partition_of(&op.key) != chunk.partition)
    {
        Some(stray) => Err(format!(
            "a chunk of partition {} holds key {:?} of partition {}",
            chunk.partition,
            stray.key,
            partition_of(&stray.key)
        )),
        None => Ok(()),
    }
}

/// Merges one chunk durably; a chunk of a partition this node no longer keeps (the table
/// moved it away since the pull began) is dropped: its holders have it, and merging it would
/// leave a stray copy and, for a catch-up, announce records nobody changed.
fn merge_chunk(
    node: &Arc<DataPlane>,
    mut chunk: PullChunk,
    merge: Merge,
) -> impl std::future::Future<Output = Result<Merged, ClusterError>> + 'static {
    if !node.cluster.keeps(&node.cluster.table(), chunk.partition) {
        chunk.ops.clear();
    }
    let records = chunk.ops.len() as u64;
    let completed = chunk.last.then_some(chunk.partition);
    let applied = match merge {
        Merge::Announced => Either::Left(apply_writes(&node.shards, 0, chunk.ops)),
        Merge::Quiet => Either::Right(merge_quietly(&node.shards, chunk.ops)),
    };
    async move {
        match applied.await.failure {
            Some(reason) => Err(ClusterError::MergeFailed { reason }),
            None => Ok(Merged { records, completed }),
        }
    }
}
