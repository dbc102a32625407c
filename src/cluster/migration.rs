//! Pulling partitions from a peer after a rebalance: the peer streams what its shards hold for
//! them (`PULL` → `PULL_CHUNK`s → `PULL_DONE`), and each chunk is merged into the local shards
//! like a write, durably, before the next is read. Merging is LWW/OR, so pulling data this node
//! already has, or racing live writes, changes nothing that should not change.
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::peer::CallStream;
use super::wire::{self, Kind, Pull, PullChunk, PullDone};
use crate::net::requests::apply_writes;
use crate::net::NodeContext;

/// How long a pull waits for the link to its source to come up (it was just dialled).
const LINK_WAIT: Duration = Duration::from_secs(5);

/// Pulls `partitions` from `source`; the number of records merged.
pub async fn pull(
    node: &Arc<NodeContext>,
    source: &str,
    partitions: &[u16],
) -> Result<u64, String> {
    let cluster = &node.cluster;
    let link = cluster
        .wait_link(source, LINK_WAIT)
        .await
        .ok_or_else(|| format!("no connection to {source}"))?;
    let body = wire::body(&Pull {
        partitions: partitions.to_vec(),
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
                let outcome = apply_writes(&node.shards, 0, chunk.ops).await;
                if let Some(failure) = outcome.failure {
                    return Err(format!("merging pulled records failed: {failure}"));
                }
                records += n;
                cluster
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
