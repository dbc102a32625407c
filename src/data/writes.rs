//! The local write path: a batch of client ops split per shard, applied, and the outcome that
//! decides the client's acknowledgement. Client connections and peers call it alike.
use crate::protocol::{ClientOp, OpRejected};
use std::sync::Arc;

use crate::queue::{ConnId, Origin};
use crate::shard::actor::{ApplyOps, OpOutcome, ShardOp};
use crate::shard::router::Shards;

use super::ops::shard_op;

/// What became of a write batch.
pub struct WriteOutcome {
    pub rejected: Vec<OpRejected>,
    /// Why the batch must not be acknowledged (a shard did not answer, or a storage commit
    /// failed): the client keeps its ops and resends them, which LWW makes harmless.
    pub failure: Option<String>,
}

/// Splits a batch per shard and sends one `ApplyOps` to each (now, so that later requests of
/// the same sender queue behind it); the future resolves once every shard answered.
pub fn apply_writes(
    shards: &Shards,
    writer: ConnId,
    ops: Vec<ClientOp>,
) -> impl std::future::Future<Output = WriteOutcome> + 'static {
    apply(shards, writer, None, true, ops)
}

/// [`apply_writes`] of records moved here (a migration with partitioned placement): merged
/// and stored like writes, but no live events (the partition's holders sent them already).
pub fn merge_quietly(
    shards: &Shards,
    ops: Vec<ClientOp>,
) -> impl std::future::Future<Output = WriteOutcome> + 'static {
    apply(shards, 0, None, false, ops)
}

/// [`apply_writes`] of a peer's write: its change events carry `origin` (so the writer's
/// connection, on its own node, gets no echo from any other node).
pub fn apply_writes_from(
    shards: &Shards,
    writer: ConnId,
    origin: Option<Arc<Origin>>,
    ops: Vec<ClientOp>,
) -> impl std::future::Future<Output = WriteOutcome> + 'static {
    apply(shards, writer, origin, true, ops)
}

fn apply(
    shards: &Shards,
    writer: ConnId,
    origin: Option<Arc<Origin>>,
    announce: bool,
    ops: Vec<ClientOp>,
) -> impl std::future::Future<Output = WriteOutcome> + 'static {
    let mut per_shard: Vec<(Vec<Option<String>>, Vec<ShardOp>)> = (0..shards.len())
        .map(|_| (Vec::new(), Vec::new()))
        .collect();
    let mut rejected = Vec::new();
    for mut op in ops {
        let id = op.id.take();
        let s = shards.of_key(&op.key);
        match shard_op(op) {
            Ok(Some(sop)) => {
                per_shard[s].0.push(id);
                per_shard[s].1.push(sop);
            }
            Ok(None) => {}
            Err(reason) => rejected.push(rejection(id, reason)),
        }
    }
    let requests: Vec<_> = per_shard
        .into_iter()
        .enumerate()
        .filter(|(_, (_, ops))| !ops.is_empty())
        .map(|(s, (ids, ops))| {
            let origin = origin.clone();
            (
                ids,
                shards.mailboxes[s].send(ApplyOps {
                    writer,
                    ops,
                    origin,
                    announce,
                }),
            )
        })
        .collect();
    async move {
        let mut failure = None;
        for (ids, req) in requests {
            match req.await {
                Ok(outcomes) => {
                    for (id, outcome) in ids.into_iter().zip(outcomes) {
                        match outcome {
                            OpOutcome::Rejected { reason } => rejected.push(rejection(id, reason)),
                            OpOutcome::NotDurable { reason } => failure = Some(reason),
                            OpOutcome::Applied | OpOutcome::Stale => {}
                        }
                    }
                }
                Err(_) => failure = Some("shard unavailable".to_owned()),
            }
        }
        WriteOutcome { rejected, failure }
    }
}

fn rejection(id: Option<String>, reason: String) -> OpRejected {
    OpRejected {
        op_id: id.unwrap_or_else(|| "unknown".into()),
        reason,
        code: Some(400),
    }
}
