//! A connection's writes: CLIENT_OP and OP_BATCH go to the shards owning their keys (one
//! message per shard per client frame), under node-wide flow control (pending-batch slots).
use std::time::Instant;

use actix::prelude::*;
use actix_web_actors::ws;

use super::connection::ConnectionActor;
use super::requests::Completion;
use crate::data::ops::op_label;
use crate::net::events::BackpressureTimeout;
use crate::protocol::{self, ClientOp, ServerMessage};
use crate::telemetry::event::{ErrField, Event};

/// Why a write batch did not go through flow control.
enum Flow {
    Go,
    TimedOut,
}

impl ConnectionActor {
    /// CLIENT_OP and OP_BATCH: count, apply flow control, submit.
    pub(super) fn on_writes(&mut self, ctx: &mut ws::WebsocketContext<Self>, ops: Vec<ClientOp>) {
        for op in &ops {
            self.tel.count_ops(op_label(op), &op.map_name, 1);
        }
        let ops = self.admit_writes(ops);
        if ops.is_empty() {
            return;
        }
        let cfg = &self.node.config;
        let limit = cfg.backpressure_limit as i64;
        let slots = self.node.write_slots.clone();
        let pending = slots.in_flight();
        self.batches += 1;
        let every_nth = self.batches.is_multiple_of(cfg.backpressure_sync_every);
        let crowded = pending * 5 > limit * 4 && rand::random::<f64>() < 0.1;
        let force_sync = every_nth || crowded;
        if !force_sync && slots.try_reserve(limit) {
            self.submit_writes(ops);
            return;
        }
        let at_limit = slots.in_flight() >= limit;
        if force_sync {
            self.tel.count_sync_forced();
        }
        if at_limit {
            self.tel.count_backpressure_wait();
        }
        // Stop reading the socket (ctx.wait pauses this actor's stream) until our in-flight
        // writes are applied and/or the node is under its limit again.
        let applied = self.writes_applied.clone();
        let target = self.writes_submitted;
        let timeout = cfg.backpressure_timeout;
        let wait = async move {
            if force_sync {
                applied.reached(target).await;
            }
            let deadline = tokio::time::Instant::now() + timeout;
            match slots.reserve_until(limit, deadline).await {
                (true, _) => Flow::Go,
                (false, _) => Flow::TimedOut,
            }
        };
        ctx.wait(wait.into_actor(self).map(move |flow, act, ctx| match flow {
            Flow::Go => act.submit_writes(ops),
            Flow::TimedOut => {
                act.tel.count_backpressure_timeout();
                let suppressed = act.tel.backpressure_log.check(Instant::now());
                BackpressureTimeout {
                    ops: ops.len(),
                    timeout_ms: timeout.as_millis() as u64,
                    suppressed: suppressed.unwrap_or(0),
                    err: ErrField::fixed("backpressure_timeout", "no pending-batch slot in time"),
                }
                .emit_if(&act.tel.log, suppressed.is_some());
                let reply = ServerMessage::error(
                    429,
                    format!(
                        "server overloaded: batch of {} ops not applied, retry later",
                        ops.len()
                    ),
                );
                act.send(ctx, &reply);
            }
        }));
    }

    /// The ops the node takes in (memory budget, map count); the refused ones are answered,
    /// in request order, with an `OP_REJECTED` each and one `ERROR` saying why.
    pub(super) fn admit_writes(&mut self, ops: Vec<ClientOp>) -> Vec<ClientOp> {
        let data = &self.node.data;
        let admission = crate::data::intake::admit(&data.budget, &data.maps, ops);
        let Some((code, message)) = admission.error else {
            return admission.ops;
        };
        let limits = [
            ("memory", admission.refused_for_memory, data.budget.limit()),
            ("maps", admission.refused_for_maps, data.maps.max() as u64),
        ];
        for (limit, n, max) in limits {
            if n > 0 {
                self.tel.count_limit_exceeded_by(limit, n);
                self.log_limit(limit, max as usize, &message);
            }
        }
        let mut frames: Vec<Vec<u8>> = admission
            .refused
            .into_iter()
            .map(|payload| protocol::encode(&ServerMessage::OpRejected { payload }))
            .collect();
        frames.push(protocol::encode(&ServerMessage::error(code, message)));
        self.start_request(async move { Completion::frames(frames) });
        admission.ops
    }

    /// Submits a write batch whose pending slot is already reserved; its ack (or rejections)
    /// leave in request order, and the slot is released when the shards answered.
    pub(super) fn submit_writes(&mut self, ops: Vec<ClientOp>) {
        let last_id = ops.last().and_then(|o| o.id.clone());
        let trace = crate::cluster::wire::Trace {
            request_id: last_id.clone(),
            origin_node_id: self.node.node_id.clone(),
            client_id: self.client_id.to_string(),
            writer: None,
        };
        let applied_future = crate::cluster::replication::route_client_write(
            &self.node.data,
            self.id,
            trace,
            ops,
            &self.tel.log,
        );
        self.writes_submitted += 1;
        let slots = self.node.write_slots.clone();
        let applied = self.writes_applied.clone();
        self.start_request(async move {
            let outcome = applied_future.await;
            let mut frames: Vec<Vec<u8>> = outcome
                .rejected
                .into_iter()
                .map(|payload| protocol::encode(&ServerMessage::OpRejected { payload }))
                .collect();
            frames.push(protocol::encode(&if let Some(reason) = outcome.failure {
                ServerMessage::error(500, format!("write not acknowledged: {reason}"))
            } else {
                ServerMessage::op_ack_applied(last_id.as_deref())
            }));
            slots.release();
            applied.one_more();
            Completion::frames(frames)
        });
    }
}
