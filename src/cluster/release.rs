//! Handing over the partitions this node no longer keeps (partitioned placement).
//!
//! After a rebalance a node may still store partitions it has no role for any more (it was
//! their owner or backup before), and a stale forward can leave records of a partition on a
//! node that does not keep it. Such a partition is dropped only once its current holders
//! confirmed they have every record of it durably: one partition at a time, this node sends
//! what it stores (in chunks, as replicated writes the holders merge and answer once durable),
//! then deletes it, from memory and storage, if nothing was written to it meanwhile; otherwise
//! it keeps it and hands it over again next time. So a drop never loses a record, and the
//! node holds at most one chunk of the handover in memory besides its data.
//!
//! The same pass counts the records stored here by this node's role for their partition,
//! for `topgun_partition_records{role}`.
use std::sync::Arc;

use super::error::ClusterError;
use super::export::Exporter;
use super::plane::DataPlane;
use super::replication::{ask, WriteRef};
use super::table::{PartitionTable, Role};
use super::wire::{self, Kind, Trace};
use crate::shard::actor::{DropPartition, PartitionCensus};
use crate::shard::router::shard_of_partition;

/// What one pass did.
#[derive(Debug, Default)]
pub struct Released {
    /// Records stored here per role of this node for their partition: owner, backup, none.
    pub records_by_role: [u64; 3],
    pub partitions: usize,
    pub records: u64,
    /// Handed over but kept: written to meanwhile, or a holder did not confirm.
    pub kept_back: usize,
    pub failure: Option<ClusterError>,
}

/// Counts records by role and, when `hand_over`, hands over and drops the partitions this
/// node does not keep.
pub async fn release(node: &Arc<DataPlane>, hand_over: bool) -> Released {
    let mut out = Released::default();
    let table = node.cluster.table();
    let census = census(node).await;
    let me = node.cluster.node_id.as_str();
    let (by_role, strays) = tally(
        &census,
        |p| table.role(p, me),
        |p| node.cluster.keeps(&table, p),
    );
    out.records_by_role = by_role;
    if !hand_over || table.members().len() <= 1 {
        return out;
    }
    for p in strays {
        match hand_over_one(node, &table, p).await {
            Ok(keys) => {
                out.partitions += 1;
                out.records += keys;
            }
            Err(e) => {
                out.kept_back += 1;
                out.failure.get_or_insert(e);
            }
        }
    }
    out
}

/// Of a census (partition, records, last change), the records by this node's `role` for
/// their partition (owner, backup, none), and the partitions stored here that it does not
/// `keep`: the strays a pass hands over. With full placement it keeps every partition.
fn tally(
    census: &[(u16, u64, u64)],
    role: impl Fn(u16) -> Role,
    keeps: impl Fn(u16) -> bool,
) -> ([u64; 3], Vec<u16>) {
    let mut by_role = [0u64; 3];
    let mut strays = Vec::new();
    for &(p, keys, _) in census {
        let i = match role(p) {
            Role::Owner => 0,
            Role::Backup => 1,
            Role::Replica => 2,
        };
        by_role[i] += keys;
        if i == 2 && !keeps(p) {
            strays.push(p);
        }
    }
    (by_role, strays)
}

async fn census(node: &Arc<DataPlane>) -> Vec<(u16, u64, u64)> {
    // A shard that does not answer is counted next time.
    node.shards.collect(|| PartitionCensus).await
}

/// Sends partition `p` to its holders, a chunk at a time (each confirmed durable by every
/// holder before the next is read), then drops it here: the keys dropped.
async fn hand_over_one(
    node: &Arc<DataPlane>,
    table: &PartitionTable,
    p: u16,
) -> Result<u64, ClusterError> {
    let holders: Vec<String> = table
        .holders(p)
        .filter(|m| m.node_id != node.cluster.node_id)
        .map(|m| m.node_id.clone())
        .collect();
    if holders.is_empty() {
        return Err(ClusterError::NoOtherHolder { partition: p });
    }
    let (touched, _) = send_partition(node, &holders, p).await?;
    let shard = &node.shards.mailboxes[shard_of_partition(p, node.shards.len())];
    shard
        .send(DropPartition {
            partition: p,
            touched,
        })
        .await
        .map_err(|_| ClusterError::ShardUnavailable)?
        .map_err(|reason| ClusterError::Kept {
            partition: p,
            reason,
        })
}

/// Sends what this node stores of partition `p` to `holders`, a chunk at a time, each
/// confirmed durable by every holder before the next is read: the partition's last change
/// when it was listed, and the records sent.
pub async fn send_partition(
    node: &Arc<DataPlane>,
    holders: &[String],
    p: u16,
) -> Result<(u64, u64), ClusterError> {
    let trace = Trace {
        request_id: None,
        origin_node_id: node.cluster.node_id.clone(),
        client_id: "handover".to_owned(),
        writer: None,
    };
    let mut exporter = Exporter::new(node.clone(), &[p]).await?;
    let mut touched = None;
    let mut records = 0u64;
    while let Some(chunk) = exporter.next().await? {
        if chunk.last {
            touched = Some(chunk.touched);
        }
        if chunk.ops.is_empty() {
            continue;
        }
        records += chunk.ops.len() as u64;
        let body = wire::body(&WriteRef {
            trace: &trace,
            ops: chunk.ops.iter().collect(),
            origin_kept: None,
        });
        let confirmations: Vec<_> = holders
            .iter()
            .map(|h| ask(node, h, Kind::WriteReplicate, body.clone(), "holder"))
            .collect();
        for done in futures_util::future::join_all(confirmations).await {
            if let Some(cause) = done.failure {
                return Err(ClusterError::NotHandedOver {
                    partition: p,
                    cause: Box::new(cause),
                });
            }
        }
    }
    let touched = touched.ok_or(ClusterError::NotExportedWhole { partition: p })?;
    Ok((touched, records))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::table::of_ids;

    #[test]
    fn records_are_counted_by_role_and_unkept_partitions_are_strays() {
        let t = of_ids(&["a", "b", "c"]);
        let role = |p| t.role(p, "a");
        let find = |r: Role| (0..271).find(|&p| role(p) == r).expect("a has every role");
        let (owned, backed, other) = (find(Role::Owner), find(Role::Backup), find(Role::Replica));
        let census = [(owned, 10, 1), (backed, 20, 2), (other, 5, 3)];
        // Partitioned: a keeps what it owns or backs up; the rest is handed over.
        let partitioned = |p| role(p) != Role::Replica;
        assert_eq!(
            tally(&census, role, partitioned),
            ([10, 20, 5], vec![other])
        );
        // Full placement: every node keeps every partition, nothing is a stray.
        assert_eq!(tally(&census, role, |_| true), ([10, 20, 5], vec![]));
        assert_eq!(tally(&[], role, partitioned), ([0; 3], vec![]));
    }
}
