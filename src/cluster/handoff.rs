//! Hinted handoff of forwards that failed.
//!
//! The origin applies a client's batch before it forwards it to the owner (so its own reads
//! see it at once). When the forward fails (no link to the owner, no answer in time) the
//! client hears ERROR and resends, but if it never does, the origin would hold records nobody
//! else has: its clients see them, the others never, and the Merkle roots differ for good.
//! So the origin keeps the forward and hands it to the partition's current owner again once
//! it can be reached, with a doubling backoff, for up to [`GIVE_UP_AFTER`]. The merge is
//! idempotent: a forward that did arrive, or the client's own resend, changes nothing twice.
//!
//! Bounded: at most [`MAX_PENDING`] forwards of [`MAX_PENDING_BYTES`] in all wait at once;
//! beyond that, and after
//! `GIVE_UP_AFTER`, a forward is dropped, counted and logged (the catch-up of the next
//! reconnection, or the client's resend, remains).
use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use slog::debug;

use super::error::ClusterError;
use super::events as ev;
use super::plane::DataPlane;
use super::replication::{ask, replicate};
use super::wire::Kind;
use crate::telemetry::event::{ErrField, Event};

/// Forwards waiting for a handoff at most, and their bodies' bytes at most.
pub const MAX_PENDING: usize = 10_000;
pub const MAX_PENDING_BYTES: usize = 64 << 20;
/// How long a forward is retried before it is dropped.
pub const GIVE_UP_AFTER: Duration = Duration::from_secs(120);
const FIRST_RETRY: Duration = Duration::from_millis(500);
const MAX_RETRY: Duration = Duration::from_secs(10);

/// Retries, in the background, a forward of `body` (ops of `partitions`) that failed with
/// `failure`.
pub fn hand_off(
    node: &Arc<DataPlane>,
    body: Bytes,
    partitions: BTreeSet<u16>,
    failure: ClusterError,
) {
    let counters = &node.cluster.counters;
    let size = body.len() as i64;
    let waiting = counters.handoffs_pending.fetch_add(1, Ordering::Relaxed);
    let bytes = counters.handoff_bytes.fetch_add(size, Ordering::Relaxed);
    if waiting >= MAX_PENDING as i64 || bytes + size > MAX_PENDING_BYTES as i64 {
        counters.handoffs_pending.fetch_sub(1, Ordering::Relaxed);
        counters.handoff_bytes.fetch_sub(size, Ordering::Relaxed);
        counters.handoffs_dropped.fetch_add(1, Ordering::Relaxed);
        let suppressed = node.cluster.may_log("handoff_full");
        ev::HandoffDropped {
            pending: waiting,
            pending_bytes: bytes,
            suppressed: suppressed.unwrap_or(0),
            err: ErrField::new(failure.code(), &failure),
        }
        .emit_if(&node.log, suppressed.is_some());
        return;
    }
    let node = node.clone();
    actix_rt::spawn(async move {
        let delivered = retry(&node, body, &partitions).await;
        let counters = &node.cluster.counters;
        counters.handoffs_pending.fetch_sub(1, Ordering::Relaxed);
        counters.handoff_bytes.fetch_sub(size, Ordering::Relaxed);
        match delivered {
            Ok(owner) => {
                counters.handoffs_delivered.fetch_add(1, Ordering::Relaxed);
                debug!(node.log, "write handed off"; "owner" => owner,
                    "partitions" => partitions.len());
            }
            Err(last) => {
                counters.handoffs_dropped.fetch_add(1, Ordering::Relaxed);
                let suppressed = node.cluster.may_log("handoff_expired");
                ev::HandoffGivenUp {
                    partitions: partitions.len(),
                    tried_for_ms: GIVE_UP_AFTER.as_millis() as u64,
                    suppressed: suppressed.unwrap_or(0),
                    err: ErrField::new(last.code(), &last),
                }
                .emit_if(&node.log, suppressed.is_some());
            }
        }
    });
}

/// Sends the forward to the current owner until one confirms it; the owner's node id, or the
/// last failure once [`GIVE_UP_AFTER`] passed.
async fn retry(
    node: &Arc<DataPlane>,
    body: Bytes,
    partitions: &BTreeSet<u16>,
) -> Result<String, ClusterError> {
    let started = Instant::now();
    let mut wait = FIRST_RETRY;
    loop {
        tokio::time::sleep(wait).await;
        let table = node.cluster.table();
        let first = partitions.iter().next().copied().unwrap_or(0);
        let owner = table
            .owner(first)
            .map_or_else(|| node.cluster.node_id.clone(), |m| m.node_id.clone());
        // The old owner is gone and this node owns the partitions now: it replicates itself.
        let failure = if owner == node.cluster.node_id {
            replicate(node, body.clone(), &owner, None, partitions).await
        } else {
            ask(node, &owner, Kind::WriteForward, body.clone(), "owner")
                .await
                .failure
        };
        match failure {
            None => return Ok(owner),
            Some(f) if started.elapsed() >= GIVE_UP_AFTER => return Err(f),
            Some(_) => wait = (wait * 2).min(MAX_RETRY),
        }
    }
}
