//! Where a write goes in a cluster, and when it may be acknowledged.
//!
//! The partition table says who must have a write durably before its client hears OP_ACK. The
//! node the client sent the batch to (the origin) applies the ops of the partitions it keeps
//! and forwards each group of ops to its partitions' owner. The owner applies it and re-sends
//! the same body to the partitions' backups, which are waited for with `--write-ack
//! owner+backup`; with `--placement full` every other member gets it too, asynchronously. The
//! origin acks when its own apply, the owners and (through them) the backups are durable. A
//! peer that does not answer within the cluster timeout fails the batch: the client gets
//! ERROR, keeps its ops and resends them, which the LWW/OR merge makes harmless.
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::future::LocalBoxFuture;
use serde::Serialize;
use slog::{debug, Logger};

use super::error::{ClusterError, Peer};
use super::peer::{Call, Notify};
use super::peer_error::PeerError;
use super::plane::DataPlane;
use super::state::ClusterState;
use super::table::{PartitionTable, Role};
use super::wire::{self, Kind, Trace, WriteDone};
use crate::config::WriteAck;
use crate::data::writes::{apply_writes, apply_writes_from, WriteOutcome};
use crate::protocol::types::LwwRecord;
use crate::protocol::{ClientOp, OpKind, OpRejected};
use crate::queue::ConnId;
use crate::shard::fnv::partition_of;

/// How long a write waits for the link to a member that just joined.
const LINK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Serializes exactly like [`wire::Write`] without copying the ops.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct WriteRef<'a> {
    pub trace: &'a Trace,
    pub ops: Vec<&'a ClientOp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub origin_kept: Option<Vec<u16>>,
}

/// The origin's part: apply locally what this node keeps, forward to owners, replicate what
/// this node owns.
pub fn route_client_write(
    node: &Arc<DataPlane>,
    writer: ConnId,
    trace: Trace,
    mut ops: Vec<ClientOp>,
    log: &Logger,
) -> LocalBoxFuture<'static, WriteOutcome> {
    let cluster = &node.cluster;
    let table = cluster.table();
    if table.members().len() <= 1 {
        return Box::pin(apply_writes(&node.shards, writer, ops));
    }
    let mut trace = trace;
    if writer != 0 {
        trace.writer = Some(writer);
    }
    stamp_bare_removes(cluster, &mut ops);
    let partitions_of_ops: Vec<u16> = ops.iter().map(|op| partition_of(&op.key)).collect();
    let mut groups: BTreeMap<&str, (Vec<usize>, BTreeSet<u16>)> = BTreeMap::new();
    for (i, &partition) in partitions_of_ops.iter().enumerate() {
        let owner = table
            .owner(partition)
            .map_or(cluster.node_id.as_str(), |m| m.node_id.as_str());
        let group = groups.entry(owner).or_default();
        group.0.push(i);
        group.1.insert(partition);
    }
    let mut peers: Vec<LocalBoxFuture<'static, Confirmation>> = Vec::new();
    for (owner, (indexes, partitions)) in groups {
        let ops_of_group = || indexes.iter().map(|&i| &ops[i]).collect();
        if owner == cluster.node_id {
            let body = wire::body(&WriteRef {
                trace: &trace,
                ops: ops_of_group(),
                origin_kept: None,
            });
            let replicated = replicate_or_hand_off(node, body, &cluster.node_id, None, partitions);
            peers.push(Box::pin(async move {
                Confirmation {
                    rejected: Vec::new(),
                    failure: replicated.await,
                }
            }));
            continue;
        }
        // What this node applies of the group (it keeps the partition): named in the forward,
        // and handed off again should the forward fail.
        let kept: Vec<u16> = partitions
            .iter()
            .copied()
            .filter(|&p| cluster.keeps(&table, p))
            .collect();
        let applied_here = !kept.is_empty();
        let body = wire::body(&WriteRef {
            trace: &trace,
            ops: ops_of_group(),
            origin_kept: cluster.partitioned().then_some(kept),
        });
        cluster
            .counters
            .forwarded
            .fetch_add(indexes.len() as u64, std::sync::atomic::Ordering::Relaxed);
        debug!(log, "write forwarded"; "requestId" => trace.request_id.as_deref(),
            "owner" => owner, "ops" => indexes.len());
        let forward = ask(node, owner, Kind::WriteForward, body.clone(), "owner");
        let node = node.clone();
        // Detached: the handoff must happen even when the caller stops waiting (its client
        // disconnected), since the records are applied here already.
        let (tx, rx) = tokio::sync::oneshot::channel();
        actix_rt::spawn(async move {
            let done = forward.await;
            if let (Some(f), true) = (&done.failure, applied_here) {
                super::handoff::hand_off(&node, body, partitions, f.clone());
            }
            let _ = tx.send(done);
        });
        peers.push(Box::pin(async move {
            rx.await.unwrap_or_else(|_| failed(ClusterError::Abandoned))
        }));
    }
    let kept: Vec<ClientOp> = if cluster.partitioned() {
        ops.into_iter()
            .zip(partitions_of_ops)
            .filter(|(_, p)| cluster.keeps(&table, *p))
            .map(|(op, _)| op)
            .collect()
    } else {
        ops
    };
    let local = apply_writes(&node.shards, writer, kept);
    Box::pin(async move {
        let mut outcome = local.await;
        for peer in peers {
            let done = peer.await;
            // An op this node applied too was rejected here already, by the same rules.
            for r in done.rejected {
                if !outcome.rejected.iter().any(|o| o.op_id == r.op_id) {
                    outcome.rejected.push(r);
                }
            }
            // The client's ERROR says why: `write not acknowledged: no connection to owner b`.
            if let Some(failure) = done.failure {
                outcome.failure.get_or_insert_with(|| failure.to_string());
            }
        }
        outcome
    })
}

/// The owner's part for a forwarded write: apply, and replicate to everyone but the origin.
pub fn own(
    node: &Arc<DataPlane>,
    body: Bytes,
    write: wire::Write,
) -> impl std::future::Future<Output = WriteDone> + 'static {
    let partitions: BTreeSet<u16> = write.ops.iter().map(|o| partition_of(&o.key)).collect();
    let origin_kept: Option<BTreeSet<u16>> = write
        .origin_kept
        .as_ref()
        .map(|kept| kept.iter().copied().collect());
    let replicated = replicate_or_hand_off(
        node,
        body,
        &write.trace.origin_node_id,
        origin_kept.as_ref(),
        partitions,
    );
    let writer = local_writer(&node.cluster, &write.trace);
    let local = apply_writes_from(&node.shards, writer, origin_of(&write.trace), write.ops);
    async move {
        let outcome = local.await;
        let failure = replicated.await;
        // A string on the wire: the origin may run another version.
        WriteDone {
            rejected: outcome.rejected,
            failure: outcome.failure.or(failure.map(|e| e.to_string())),
        }
    }
}

/// [`replicate`], and with partitioned placement, when a backup did not confirm, the write
/// handed to the partitions' holders again in the background ([`super::handoff`]): a backup
/// that missed it (it was down, or the table moved while the write was under way and a new
/// backup pulled the partition before it was applied here) has no other copy to get it from.
fn replicate_or_hand_off(
    node: &Arc<DataPlane>,
    body: Bytes,
    origin: &str,
    origin_kept: Option<&BTreeSet<u16>>,
    partitions: BTreeSet<u16>,
) -> LocalBoxFuture<'static, Option<ClusterError>> {
    let replicated = replicate(node, body.clone(), origin, origin_kept, &partitions);
    if !node.cluster.partitioned() {
        return replicated;
    }
    let node = node.clone();
    Box::pin(async move {
        let failure = replicated.await;
        if let Some(f) = &failure {
            super::handoff::hand_off(&node, body, partitions, f.clone());
        }
        failure
    })
}

/// A backup's or replica's part: apply.
pub fn replica(
    node: &Arc<DataPlane>,
    write: wire::Write,
) -> impl std::future::Future<Output = WriteDone> + 'static {
    let writer = local_writer(&node.cluster, &write.trace);
    let local = apply_writes_from(&node.shards, writer, origin_of(&write.trace), write.ops);
    async move {
        let outcome = local.await;
        WriteDone {
            rejected: outcome.rejected,
            failure: outcome.failure,
        }
    }
}

/// The writer's connection when the write came from a client of this node (an owner sends the
/// origin what it did not apply itself): its own events are not echoed to it.
fn local_writer(cluster: &ClusterState, trace: &Trace) -> ConnId {
    if trace.origin_node_id == cluster.node_id {
        trace.writer.unwrap_or(0)
    } else {
        0
    }
}

/// Where a peer's write came from, for its change events.
fn origin_of(trace: &Trace) -> Option<Arc<crate::queue::Origin>> {
    Some(Arc::new(crate::queue::Origin {
        node: trace.origin_node_id.clone(),
        writer: trace.writer.unwrap_or(0),
    }))
}

/// "backup" when this node backs up any partition of the ops, else "replica".
pub fn replica_role(cluster: &ClusterState, ops: &[ClientOp]) -> &'static str {
    let table = cluster.table();
    let backs_up = ops
        .iter()
        .any(|o| table.role(partition_of(&o.key), &cluster.node_id) != Role::Replica);
    if backs_up {
        "backup"
    } else {
        "replica"
    }
}

/// Sends `body` to every member but this node and `origin` (with partitioned placement, to the
/// partitions' backups only, and to the origin the ops of the partitions it backs up but did
/// not apply, `origin_kept` naming what it applied); resolves once the backups confirmed (or
/// at once with `--write-ack owner`). `Some(reason)`: not confirmed.
pub(super) fn replicate(
    node: &Arc<DataPlane>,
    body: Bytes,
    origin: &str,
    origin_kept: Option<&BTreeSet<u16>>,
    partitions: &BTreeSet<u16>,
) -> LocalBoxFuture<'static, Option<ClusterError>> {
    let cluster = &node.cluster;
    let table = cluster.table();
    let waited = cluster.ack == WriteAck::OwnerAndBackup;
    // Partitioned: a backup gets only the ops of the partitions it backs up.
    let mut decoded: Option<Option<wire::Write>> = None;
    let mut waits = Vec::new();
    for member in table.members() {
        let id = member.node_id.as_str();
        if id == cluster.node_id {
            continue;
        }
        let (holder, body) = if cluster.partitioned() {
            let wanted = copies_for(&table, id, origin, origin_kept, partitions);
            if wanted.is_empty() {
                continue;
            }
            let body = if wanted.len() == partitions.len() {
                body.clone()
            } else {
                let write = decoded.get_or_insert_with(|| wire::decode(&body).ok());
                match write {
                    Some(w) => wire::body(&WriteRef {
                        trace: &w.trace,
                        ops: w
                            .ops
                            .iter()
                            .filter(|o| wanted.binary_search(&partition_of(&o.key)).is_ok())
                            .collect(),
                        origin_kept: None,
                    }),
                    // Our own encoding: cannot fail to decode; the whole body is still correct.
                    None => body.clone(),
                }
            };
            (true, body)
        } else if id == origin {
            continue;
        } else {
            let backs_up = partitions
                .iter()
                .any(|&p| table.backups(p).any(|m| m.node_id == id));
            (backs_up, body.clone())
        };
        if waited && holder {
            let wait = ask(node, id, Kind::WriteReplicate, body, "backup");
            waits.push(async move { wait.await.failure });
        } else if let Some(link) = cluster.link(id) {
            link.do_send(Notify {
                kind: Kind::WriteReplicate,
                body,
            });
        } else {
            // A member whose link is still in its handshake (it just joined) gets the write
            // once the link is up; missing it would leave that replica behind for good.
            let (node, id) = (node.clone(), id.to_owned());
            actix_rt::spawn(async move {
                if let Some(link) = node.cluster.wait_link(&id, LINK_WAIT).await {
                    link.do_send(Notify {
                        kind: Kind::WriteReplicate,
                        body,
                    });
                }
            });
        }
    }
    Box::pin(async move {
        let mut failure = None;
        for wait in waits {
            if let Some(f) = wait.await {
                failure.get_or_insert(f);
            }
        }
        failure
    })
}

/// With partitioned placement, the partitions of a write's `partitions` that member `id` must
/// get a copy of from the owner: those it backs up, and for the origin, those this table makes
/// it hold that it did not apply itself (`origin_kept`; `None`: it applied every one).
fn copies_for(
    table: &PartitionTable,
    id: &str,
    origin: &str,
    origin_kept: Option<&BTreeSet<u16>>,
    partitions: &BTreeSet<u16>,
) -> Vec<u16> {
    // In the order of `partitions` (sorted): the caller looks ops up by binary search.
    if id != origin {
        return partitions
            .iter()
            .copied()
            .filter(|&p| table.backups(p).any(|m| m.node_id == id))
            .collect();
    }
    let Some(kept) = origin_kept else {
        return Vec::new();
    };
    // The origin applied what it keeps by its own table, which may be older or newer than
    // this one while a rebalance spreads.
    partitions
        .iter()
        .copied()
        .filter(|&p| table.role(p, id) != Role::Replica && !kept.contains(&p))
        .collect()
}

/// A peer's answer to a write request: the ops it rejected, and why the write is not
/// confirmed there, if it is not.
pub(super) struct Confirmation {
    pub rejected: Vec<OpRejected>,
    pub failure: Option<ClusterError>,
}

/// A write request to `peer` (the write's `role`), failed (with a reason) when there is no
/// link, the peer does not answer within the timeout, or its apply was not durable.
pub(super) fn ask(
    node: &Arc<DataPlane>,
    peer: &str,
    kind: Kind,
    body: Bytes,
    role: &'static str,
) -> LocalBoxFuture<'static, Confirmation> {
    let who = Peer::confirming(role, peer);
    let peer = peer.to_owned();
    // An owner answers after its own wait for the backups, so the origin gives it two.
    let timeout = if kind == Kind::WriteForward {
        node.cluster.timeout * 2
    } else {
        node.cluster.timeout
    };
    // Sent now when the link is up, so requests to one peer keep their order.
    let ready = node.cluster.link(&peer).map(|link| {
        link.send(Call {
            kind,
            body: body.clone(),
        })
    });
    let node = node.clone();
    Box::pin(async move {
        let call = match ready {
            Some(call) => call,
            None => match node.cluster.wait_link(&peer, LINK_WAIT.min(timeout)).await {
                Some(link) => link.send(Call { kind, body }),
                None => return failed(ClusterError::NoLink { peer: who }),
            },
        };
        match tokio::time::timeout(timeout, call).await {
            Ok(Ok(Ok(reply))) => match wire::decode::<WriteDone>(&reply.body) {
                Ok(done) => Confirmation {
                    rejected: done.rejected,
                    failure: done
                        .failure
                        .map(|message| ClusterError::Remote { peer: who, message }),
                },
                Err(e) => failed(ClusterError::Undecodable {
                    peer: who,
                    detail: e.to_string(),
                }),
            },
            // The one way a link fails a call; named with the write's role here.
            Ok(Ok(Err(_))) => failed(ClusterError::Unanswered { peer: who }),
            Ok(Err(_)) => failed(ClusterError::LinkClosed { peer: who }),
            Err(_) => {
                node.cluster.counters.peer_error(PeerError::Timeout);
                failed(ClusterError::Timeout {
                    peer: who,
                    ms: timeout.as_millis(),
                })
            }
        }
    })
}

fn failed(failure: ClusterError) -> Confirmation {
    Confirmation {
        rejected: Vec::new(),
        failure: Some(failure),
    }
}

/// A REMOVE without a record would be stamped by each replica's own clock, and replicas would
/// disagree on the tombstone: stamp it once, here.
fn stamp_bare_removes(cluster: &ClusterState, ops: &mut [ClientOp]) {
    for op in ops.iter_mut() {
        if op.kind() == OpKind::Remove && op.lww_record().is_none() {
            op.record = Some(Some(LwwRecord {
                value: rmpv::Value::Nil,
                timestamp: cluster.stamp(),
                ttl_ms: None,
            }));
        }
    }
}

/// A topic message reaches subscribers on every node: one `TOPIC` to each linked peer.
pub fn publish_to_peers(cluster: &ClusterState, topic: &str, data: &rmpv::Value) {
    let links = cluster.links_except(&[]);
    if links.is_empty() {
        return;
    }
    let body = wire::body(&wire::Topic {
        topic: topic.to_owned(),
        data: data.clone(),
        origin_node_id: cluster.node_id.clone(),
    });
    for (_, link) in links {
        link.do_send(super::peer::Cast {
            kind: Kind::Topic,
            body: body.clone(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::table::of_ids as table;
    use crate::shard::fnv::PARTITION_COUNT;

    #[test]
    fn a_backup_gets_the_partitions_it_backs_up_and_nothing_else() {
        let t = table(&["a", "b", "c"]);
        let all: BTreeSet<u16> = (0..PARTITION_COUNT).collect();
        let to_c = copies_for(&t, "c", "a", None, &all);
        assert!(!to_c.is_empty());
        for p in &all {
            let backs_up = t.backups(*p).any(|m| m.node_id == "c");
            assert_eq!(to_c.contains(p), backs_up, "partition {p}");
        }
    }

    #[test]
    fn the_origin_gets_what_this_table_makes_it_hold_and_it_did_not_apply() {
        let t = table(&["a", "b", "c"]);
        // Partitions the origin `a` backs up by this (the owner's) table.
        let held: BTreeSet<u16> = (0..PARTITION_COUNT)
            .filter(|&p| t.role(p, "a") == Role::Backup)
            .take(4)
            .collect();
        let other = (0..PARTITION_COUNT)
            .find(|&p| t.role(p, "a") == Role::Replica)
            .expect("a partition a does not hold");
        let mut write: BTreeSet<u16> = held.clone();
        write.insert(other);
        // Applied everything (full placement, or an older peer): nothing to send back.
        assert!(copies_for(&t, "a", "a", None, &write).is_empty());
        // By its own table it kept them all: nothing either.
        assert!(copies_for(&t, "a", "a", Some(&held), &write).is_empty());
        // Its table had moved on and it applied none of them: every partition it holds here,
        // never the one it does not.
        let none = BTreeSet::new();
        let held_sorted: Vec<u16> = held.iter().copied().collect();
        assert_eq!(copies_for(&t, "a", "a", Some(&none), &write), held_sorted);
        // It applied one of them.
        let first = *held.iter().next().expect("held");
        let one: BTreeSet<u16> = [first].into();
        let rest: Vec<u16> = held.iter().copied().filter(|&p| p != first).collect();
        assert_eq!(copies_for(&t, "a", "a", Some(&one), &write), rest);
    }
}
