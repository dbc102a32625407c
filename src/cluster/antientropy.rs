//! Anti-entropy between the holders of a partition: replicas that diverged without any
//! membership change (a write lost with a cut link, a backup that was frozen, a bug) are found
//! and repaired by the CRDT merge, both ways.
//!
//! Every `--anti-entropy-interval-ms` the owner of partitions asks each of their backups for
//! its digests of them (`DIGESTS`, one request per backup) and computes its own
//! ([`crate::shard::digest`]: the XOR of one hash per live record). A partition whose digests
//! differ, and that neither holder changed since the previous round, is repaired: the owner
//! pulls it from the backup and merges it, then sends `REPAIR` and the backup pulls the owner's
//! copy. The merge keeps the newer record of each key, so the two end equal.
//!
//! Cheap when nothing differs: a shard hashes only the partitions changed since it was last
//! asked, and an unchanged partition costs one cached digest.
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use slog::debug;

use super::error::{ClusterError, Peer};
use super::events as ev;
use super::gather::call;
use super::migration::{self, Merge};
use super::peer::Cast;
use super::peer_error::PeerError;
use super::plane::DataPlane;
use super::wire::{self, Kind};
use crate::shard::actor::PartitionDigests;
use crate::shard::digest::PartitionDigest;
use crate::telemetry::event::{ErrField, Event};
use crate::telemetry::logging::err_kv;

/// What one round did.
#[derive(Debug, Default)]
pub struct Round {
    /// Partitions compared with a backup (both holders quiet since the last round).
    pub compared: usize,
    /// Partitions left for the next round: written to since the last one.
    pub busy: usize,
    pub repaired: usize,
    pub failed: usize,
    pub took: Duration,
}

/// This node's digests of `partitions`, from every shard (each answers for its own).
pub async fn local_digests(node: &Arc<DataPlane>, partitions: &[u16]) -> Vec<PartitionDigest> {
    if partitions.is_empty() {
        return Vec::new();
    }
    // A shard that does not answer leaves its partitions out of this round.
    node.shards
        .collect(|| PartitionDigests {
            partitions: partitions.to_vec(),
        })
        .await
}

/// The partitions of `partitions` this node holds now and has finished pulling.
pub fn settled_holdings(node: &DataPlane, partitions: &[u16]) -> Vec<u16> {
    let table = node.cluster.table();
    partitions
        .iter()
        .copied()
        .filter(|&p| node.cluster.keeps(&table, p) && !node.cluster.is_arriving(p))
        .collect()
}

/// One round of this node as owner. Runs in the background; the ClusterActor starts the next
/// only after it ended.
pub async fn round(node: Arc<DataPlane>) -> Round {
    let t0 = Instant::now();
    let mut out = Round::default();
    let table = node.cluster.table();
    // A partition still arriving would differ for that alone.
    let by_backup = table.owned_by_backup(&node.cluster.node_id, |p| node.cluster.is_arriving(p));
    if by_backup.is_empty() {
        out.took = t0.elapsed();
        return out;
    }
    let owned: Vec<u16> = {
        let mut all: Vec<u16> = by_backup.values().flatten().copied().collect();
        all.sort_unstable();
        all.dedup();
        all
    };
    let mine: BTreeMap<u16, PartitionDigest> = local_digests(&node, &owned)
        .await
        .into_iter()
        .map(|d| (d.partition, d))
        .collect();
    for (backup, partitions) in by_backup {
        let body = wire::body(&wire::Partitions {
            partitions: partitions.clone(),
        });
        let theirs: wire::DigestsDone =
            match call(&node, &backup, Kind::Digests, Kind::DigestsDone, body).await {
                Ok(reply) => match wire::decode(&reply) {
                    Ok(d) => d,
                    Err(e) => {
                        node.cluster.counters.peer_error(PeerError::BadFrame);
                        debug!(node.log, "anti-entropy: undecodable digests"; "peer" => &backup,
                            "err" => err_kv(PeerError::BadFrame.code(), &e));
                        continue;
                    }
                },
                Err(e) => {
                    // The link is down or the peer is slow: the next round asks again.
                    debug!(node.log, "anti-entropy: digests not received"; "peer" => &backup,
                        "err" => err_kv(e.code(), &e));
                    continue;
                }
            };
        let mut differ = Vec::new();
        for d in &theirs.digests {
            let Some(own) = mine.get(&d.partition) else {
                continue;
            };
            if !partitions.contains(&d.partition) {
                continue;
            }
            if !(own.stable && d.stable) {
                out.busy += 1;
                continue;
            }
            out.compared += 1;
            if own.digest != d.digest {
                differ.push(d.partition);
            }
        }
        for p in differ {
            match repair(&node, &backup, p).await {
                Ok(()) => out.repaired += 1,
                Err(e) => {
                    out.failed += 1;
                    ev::RepairFailed {
                        partition: p,
                        peer: &backup,
                        err: ErrField::new(e.code(), &e),
                    }
                    .emit(&node.log);
                }
            }
        }
    }
    node.cluster
        .counters
        .antientropy_rounds
        .fetch_add(1, Ordering::Relaxed);
    node.cluster
        .counters
        .antientropy_repaired
        .fetch_add(out.repaired as u64, Ordering::Relaxed);
    out.took = t0.elapsed();
    out
}

/// Merges `peer`'s copy of `partition` here, then asks `peer` to merge this node's.
async fn repair(node: &Arc<DataPlane>, peer: &str, partition: u16) -> Result<(), ClusterError> {
    let pulled = migration::pull(node, peer, &[partition], Merge::Announced, |_| {}).await;
    if let Some(f) = pulled.failure {
        return Err(f);
    }
    ev::Repaired {
        partition,
        peer,
        records: pulled.records,
        direction: "pulled",
    }
    .emit(&node.log);
    let Some(link) = node.cluster.link(peer) else {
        return Err(ClusterError::NoLink {
            peer: Peer::node(peer),
        });
    };
    link.do_send(Cast {
        kind: Kind::Repair,
        body: wire::body(&wire::Partitions {
            partitions: vec![partition],
        }),
    });
    Ok(())
}

/// A `REPAIR` from `peer`: pull its copy of each partition this node holds, one at a time.
pub async fn repaired_by(node: Arc<DataPlane>, peer: String, partitions: Vec<u16>) {
    for p in settled_holdings(&node, &partitions) {
        let pulled = migration::pull(&node, &peer, &[p], Merge::Announced, |_| {}).await;
        match pulled.failure {
            None => {
                ev::Repaired {
                    partition: p,
                    peer: &peer,
                    records: pulled.records,
                    direction: "pulled on request",
                }
                .emit(&node.log);
            }
            Some(e) => {
                ev::RepairFailed {
                    partition: p,
                    peer: &peer,
                    err: ErrField::new(e.code(), &e),
                }
                .emit(&node.log);
            }
        }
    }
}
