//! What a `ConnectionActor` does with data messages: writes go to the shards owning their keys
//! (one message per shard per client frame), reads and queries gather from every shard, topic
//! messages go to their stripe. Requests run concurrently but their replies leave in request
//! order ([`super::pipeline`]); write batches are subject to node-wide flow control.
use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;
use actix_web_actors::ws;
use slog::debug;

use super::connection::ConnectionActor;
use crate::cluster::gather::{self, sync_read, Gathered, ReadRequest};
use crate::data::ops::{op_label, query_spec};
use crate::data::sync::{SyncAsk, SyncShare};
use crate::net::events::{BackpressureTimeout, LimitExceeded};
use crate::protocol::{
    self, ClientOp, LeafRecord, MerkleReqBucket, QueryResp, QueryResultItem, QuerySub, QueryUnsub,
    ServerMessage, SyncInit, SyncRespBuckets, SyncRespLeaf, SyncRespRoot, TopicPub,
};
use crate::protocol::{
    OrMapRecord, OrmapDiffRequest, OrmapDiffResponse, OrmapPushDiff, OrmapSyncInit,
    OrmapSyncRespLeaf, OrmapSyncRespRoot,
};
use crate::queue::actor::{
    SnapshotLoaded, Subscribe, TopicPublish, TopicSubscribe, TopicUnsubscribe, Unsubscribe,
};
use crate::queue::subscriptions::SubKey;
use crate::shard::live::LiveQuery;
use crate::shard::query::CompiledQuery;
use crate::telemetry::event::{ErrField, Event};

/// A QUERY_RESP that answers a subscription with an error instead of rows.
fn query_refused(query_id: String, error: String, code: &str) -> ServerMessage {
    ServerMessage::QueryResp {
        payload: QueryResp {
            query_id,
            results: Vec::new(),
            next_cursor: None,
            has_more: None,
            cursor_status: None,
            merkle_root_hash: None,
            error: Some(error),
            code: Some(code.into()),
        },
    }
}

/// Leaf records sorted by key: gathered from several shards or nodes, in one order whatever
/// answered first.
fn leaf_records_in_key_order(
    mut records: Vec<(String, crate::protocol::types::LwwRecord)>,
) -> Vec<LeafRecord> {
    records.sort_by(|a, b| a.0.cmp(&b.0));
    records
        .into_iter()
        .map(|(key, record)| LeafRecord { key, record })
        .collect()
}

fn entries_in_key_order(
    mut entries: Vec<crate::protocol::OrMapEntry>,
) -> Vec<crate::protocol::OrMapEntry> {
    entries.sort_by(|a, b| a.key.cmp(&b.key));
    entries
}

fn or_op(map: &str, key: &str, record: Option<OrMapRecord>, tag: Option<String>) -> ClientOp {
    ClientOp {
        id: None,
        map_name: map.to_owned(),
        key: key.to_owned(),
        op_type: None,
        record: None,
        or_record: record,
        or_tag: tag,
        write_concern: None,
        timeout: None,
    }
}

/// A Merkle path the node can answer: up to 3 lowercase hex characters.
fn valid_merkle_path(path: &str) -> bool {
    path.len() <= 3
        && path
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Rows outside a `limit` window remembered for refills, per subscription.
const WINDOW_RESERVE: usize = 256;

/// A finished request: the frames to send, then what to do once they are out.
pub struct Completion {
    frames: Vec<Vec<u8>>,
    after: Option<After>,
}

impl Completion {
    fn frames(frames: Vec<Vec<u8>>) -> Self {
        Completion {
            frames,
            after: None,
        }
    }
}

/// Follow-ups that must happen after the reply was written.
// One per request, alive until its frames are out: boxing the big variant saves nothing.
#[allow(clippy::large_enum_variant)]
pub enum After {
    /// The QUERY_RESP is out: stripes may now route this subscription's live updates.
    SnapshotLoaded {
        key: SubKey,
        members: Vec<Vec<Arc<str>>>,
        seen: Arc<[u64]>,
        /// A `limit` query's window, seeded with what the QUERY_RESP sent.
        window: Option<LiveQuery>,
        /// A grouped query's rows as the QUERY_RESP sent them.
        groups: Option<super::grouped::LiveGroups>,
    },
    /// The snapshot could not be read (the QUERY_RESP carries the error): the subscription
    /// registered for it is dropped.
    SnapshotFailed { query_id: Arc<str> },
}

/// Why a write batch did not go through flow control.
enum Flow {
    Go,
    TimedOut,
}

impl ConnectionActor {
    /// Runs `fut` off the actor; its result is released in request order by `finish`.
    fn start_request(&mut self, fut: impl std::future::Future<Output = Completion> + 'static) {
        let seq = self.pipeline.open();
        let tx = self.completions.clone();
        actix_rt::spawn(async move {
            let done = fut.await;
            if let Some(tx) = tx {
                let _ = tx.send((seq, done));
            }
        });
    }

    /// Writes a due completion's frames, then runs its follow-up.
    pub(super) fn finish(&mut self, ctx: &mut ws::WebsocketContext<Self>, done: Completion) {
        for frame in done.frames {
            ctx.binary(frame);
        }
        match done.after {
            None => {}
            Some(After::SnapshotLoaded {
                key,
                members,
                seen,
                window,
                groups,
            }) => {
                match groups {
                    Some(g) => {
                        self.groups.insert(key.1.clone(), g);
                    }
                    None => {
                        self.groups.remove(&key.1);
                    }
                }
                match window {
                    Some(w) => {
                        self.windows.insert(key.1.clone(), w);
                    }
                    None => {
                        self.windows.remove(&key.1);
                    }
                }
                for (stripe, members) in self.node.queue.stripes.iter().zip(members) {
                    stripe.mailbox.do_send(SnapshotLoaded {
                        key: key.clone(),
                        members,
                        seen: seen.clone(),
                    });
                }
            }
            Some(After::SnapshotFailed { query_id }) => self.drop_subscription(query_id),
        }
    }

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
                    err: ErrField::new("backpressure_timeout", "no pending-batch slot in time"),
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
    fn admit_writes(&mut self, ops: Vec<ClientOp>) -> Vec<ClientOp> {
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
    fn submit_writes(&mut self, ops: Vec<ClientOp>) {
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

    /// SYNC_INIT: the root of the map's client-shaped tree over every partition.
    pub(super) fn on_sync_init(&mut self, m: SyncInit) {
        self.tel.count_ops("GET", &m.map_name, 1);
        let map_name = m.map_name.clone();
        self.sync_step(&m.map_name, SyncAsk::Leaves, move |share| {
            Some(ServerMessage::SyncRespRoot {
                payload: SyncRespRoot {
                    map_name,
                    root_hash: share.union().root(),
                    timestamp: share.timestamp?,
                },
            })
        });
    }

    /// A path that is no node of the tree (the reference stays silent): `ERROR 400`, in order
    /// with this connection's other answers, and counted as `bad_merkle_path`.
    fn refuse_merkle_path(&mut self, kind: &str, m: &MerkleReqBucket) {
        self.tel.count_invalid("bad_merkle_path");
        debug!(self.tel.log, "merkle path refused"; "map" => &m.map_name, "path" => &m.path);
        let error = ServerMessage::error(
            400,
            format!(
                "{kind}: path {:?} of map {:?} is not a node of the tree (up to 3 hex digits, \
                 0-9 a-f)",
                m.path, m.map_name
            ),
        );
        let frame = protocol::encode(&error);
        self.start_request(async move { Completion::frames(vec![frame]) });
    }

    /// MERKLE_REQ_BUCKET: buckets above depth 3, records at a leaf.
    pub(super) fn on_merkle_request(&mut self, m: MerkleReqBucket) {
        if !valid_merkle_path(&m.path) {
            return self.refuse_merkle_path("MERKLE_REQ_BUCKET", &m);
        }
        let MerkleReqBucket { map_name, path } = m;
        if path.len() == 3 {
            let ask = SyncAsk::LeafRecords { path: path.clone() };
            self.sync_step(&map_name.clone(), ask, move |share| {
                Some(ServerMessage::SyncRespLeaf {
                    payload: SyncRespLeaf {
                        map_name,
                        path,
                        records: leaf_records_in_key_order(share.records),
                    },
                })
            });
        } else {
            self.sync_step(&map_name.clone(), SyncAsk::Leaves, move |share| {
                Some(ServerMessage::SyncRespBuckets {
                    payload: SyncRespBuckets {
                        map_name,
                        buckets: share.union().buckets(&path).unwrap_or_default(),
                        path,
                    },
                })
            });
        }
    }

    /// One step of a Merkle or OR-Map sync: `ask` read over every partition (gathered from
    /// the holders with partitioned placement), answered with `reply` of it, or with ERROR
    /// when it could not be read (or `reply` found nothing to answer with).
    fn sync_step(
        &mut self,
        map_name: &str,
        ask: SyncAsk,
        reply: impl FnOnce(SyncShare) -> Option<ServerMessage> + 'static,
    ) {
        let (data, map) = (self.node.data.clone(), Arc::from(map_name));
        self.start_request(async move {
            let message = match sync_read(&data, map, ask).await {
                Ok(share) => {
                    reply(share).unwrap_or_else(|| ServerMessage::error(500, "sync unavailable"))
                }
                Err(e) => ServerMessage::error(500, e.to_string()),
            };
            Completion::frames(vec![protocol::encode(&message)])
        });
    }

    /// QUERY_SUB: register with every stripe (events are buffered from then on), take the
    /// snapshot from every shard, answer QUERY_RESP, then let the stripes go live.
    pub(super) fn on_query_sub(&mut self, ctx: &mut ws::WebsocketContext<Self>, m: QuerySub) {
        self.tel.count_ops("SUBSCRIBE", &m.map_name, 1);
        debug!(self.tel.log, "query subscribed"; "requestId" => &m.query_id, "map" => &m.map_name);
        let spec = match query_spec(&m.query, m.fields.as_ref()) {
            Ok(spec) => spec,
            Err(reason) => {
                let reply = query_refused(m.query_id, reason, "unsupported_query");
                self.send(ctx, &reply);
                return;
            }
        };
        let Some(outbound) = self.outbound.clone() else {
            return;
        };
        let max = self.node.config.max_live_queries_per_connection;
        if self.subscriptions.len() >= max && !self.subscriptions.contains(m.query_id.as_str()) {
            let error = self.over_limit(
                "live_queries",
                max,
                format!(
                    "this connection holds {max} live queries, the most one connection may \
                     (--max-live-queries-per-connection): send QUERY_UNSUB for one first"
                ),
            );
            let reply = query_refused(m.query_id, error, "limit_exceeded");
            self.send(ctx, &reply);
            return;
        }
        let query = Arc::new(CompiledQuery::new(&spec));
        let query_id: Arc<str> = Arc::from(m.query_id.as_str());
        let map: Arc<str> = Arc::from(m.map_name.as_str());
        let key: SubKey = (self.id, query_id.clone());
        self.subscriptions.insert(query_id);
        let registrations: Vec<_> = self
            .node
            .queue
            .stripes
            .iter()
            .map(|s| {
                s.mailbox.send(Subscribe {
                    key: key.clone(),
                    map: map.clone(),
                    query: query.clone(),
                    outbound: outbound.clone(),
                })
            })
            .collect();
        let data = self.node.data.clone();
        let queue = self.node.queue.clone();
        let cap = self.node.config.query_max_results;
        if query.group().is_none() && query.limit().is_some_and(|limit| limit > cap) {
            // Not refused: the snapshot says hasMore, and the live window is cut to match.
            self.tel.count_limit_exceeded("live_window");
        }
        let wire = m.query.clone();
        let read = ReadRequest {
            map: map.clone(),
            wire: m.query.clone(),
            fields: m.fields.clone(),
            query: query.clone(),
            cap,
        };
        self.start_request(async move {
            for r in registrations {
                let _ = r.await;
            }
            let Gathered { page, seen, parts } = match gather::read(&data, read).await {
                Ok(g) => g,
                Err(error) => {
                    let reply = query_refused(m.query_id, error.to_string(), "unavailable");
                    return Completion {
                        frames: vec![protocol::encode(&reply)],
                        after: Some(After::SnapshotFailed { query_id: key.1 }),
                    };
                }
            };
            let grouped = query.group().is_some();
            let window = query.limit().filter(|_| !grouped).map(|_| {
                // Capped like the snapshot: a window of limit 10^9 would grow without bound.
                let mut live = LiveQuery::new((*query).clone(), WINDOW_RESERVE, cap);
                live.seed(&parts, cap);
                live
            });
            let groups = grouped.then(|| {
                super::grouped::LiveGroups::new(map, wire, query.clone(), page.rows.clone())
            });
            let mut members: Vec<Vec<Arc<str>>> = vec![Vec::new(); queue.stripes.len()];
            let results = page
                .rows
                .into_iter()
                .map(|row| {
                    members[queue.stripe_of_key(&row.key)].push(Arc::from(row.key.as_str()));
                    QueryResultItem {
                        key: row.key,
                        value: row.value,
                    }
                })
                .collect();
            let reply = ServerMessage::QueryResp {
                payload: QueryResp {
                    query_id: m.query_id,
                    results,
                    next_cursor: page.next_cursor,
                    has_more: page.has_more.then_some(true),
                    cursor_status: Some(match page.cursor_status {
                        crate::shard::query::CursorStatus::Valid => protocol::CursorStatus::Valid,
                        crate::shard::query::CursorStatus::Invalid => {
                            protocol::CursorStatus::Invalid
                        }
                        crate::shard::query::CursorStatus::None => protocol::CursorStatus::None,
                    }),
                    merkle_root_hash: None,
                    error: None,
                    code: None,
                },
            };
            Completion {
                frames: vec![protocol::encode(&reply)],
                after: Some(After::SnapshotLoaded {
                    key,
                    members,
                    seen: seen.into(),
                    window,
                    groups,
                }),
            }
        });
    }

    /// A change of a key of a windowed (`limit`) subscription: the window decides.
    pub(super) fn on_window_change(
        &mut self,
        ctx: &mut ws::WebsocketContext<Self>,
        query_id: &Arc<str>,
        key: &str,
        value: Option<&rmpv::Value>,
        own: bool,
    ) {
        if self.groups.contains_key(query_id) {
            return self.on_group_change(ctx, query_id);
        }
        let Some(window) = self.windows.get_mut(query_id) else {
            return;
        };
        for ev in window.on_change(key, value) {
            if own {
                continue;
            }
            let change_type = match ev.change {
                crate::shard::live::ChangeType::Enter => protocol::ChangeType::Enter,
                crate::shard::live::ChangeType::Update => protocol::ChangeType::Update,
                crate::shard::live::ChangeType::Leave => protocol::ChangeType::Leave,
            };
            ctx.binary(protocol::encode(&ServerMessage::QueryUpdate {
                payload: protocol::QueryUpdate {
                    query_id: query_id.to_string(),
                    key: ev.key,
                    value: ev.value,
                    change_type,
                },
            }));
        }
    }

    pub(super) fn on_query_unsub(&mut self, m: QueryUnsub) {
        debug!(self.tel.log, "query unsubscribed"; "requestId" => &m.query_id);
        self.drop_subscription(Arc::from(m.query_id.as_str()));
    }

    fn drop_subscription(&mut self, query_id: Arc<str>) {
        self.subscriptions.remove(&query_id);
        self.windows.remove(&query_id);
        self.groups.remove(&query_id);
        for s in self.node.queue.stripes.iter() {
            s.mailbox.do_send(Unsubscribe((self.id, query_id.clone())));
        }
    }

    /// ORMAP_SYNC_INIT: the root of the node's OR tree for the map over every partition.
    pub(super) fn on_ormap_sync_init(&mut self, m: OrmapSyncInit) {
        self.tel.count_ops("GET", &m.map_name, 1);
        let map_name = m.map_name.clone();
        self.sync_step(&m.map_name, SyncAsk::OrLeaves, move |share| {
            Some(ServerMessage::OrmapSyncRespRoot {
                payload: OrmapSyncRespRoot {
                    map_name,
                    root_hash: share.union().root(),
                    timestamp: share.timestamp?,
                    covering_epoch: None,
                    full_resync: None,
                },
            })
        });
    }

    /// ORMAP_MERKLE_REQ_BUCKET: buckets above depth 3, entries (records and removed tags) at a
    /// leaf.
    pub(super) fn on_ormap_merkle_request(&mut self, m: MerkleReqBucket) {
        if !valid_merkle_path(&m.path) {
            return self.refuse_merkle_path("ORMAP_MERKLE_REQ_BUCKET", &m);
        }
        let MerkleReqBucket { map_name, path } = m;
        if path.len() == 3 {
            let ask = SyncAsk::OrPath { path: path.clone() };
            self.sync_step(&map_name.clone(), ask, move |share| {
                Some(ServerMessage::OrmapSyncRespLeaf {
                    payload: OrmapSyncRespLeaf {
                        map_name,
                        path,
                        entries: entries_in_key_order(share.entries),
                        covering_epoch: None,
                    },
                })
            });
        } else {
            self.sync_step(&map_name.clone(), SyncAsk::OrLeaves, move |share| {
                Some(ServerMessage::OrmapSyncRespBuckets {
                    payload: SyncRespBuckets {
                        map_name,
                        buckets: share.union().buckets(&path).unwrap_or_default(),
                        path,
                    },
                })
            });
        }
    }

    /// ORMAP_DIFF_REQUEST: the entries of the named keys, each from a holder of its partition.
    pub(super) fn on_ormap_diff_request(&mut self, m: OrmapDiffRequest) {
        let map_name = m.map_name.clone();
        self.sync_step(
            &m.map_name,
            SyncAsk::OrKeys { keys: m.keys },
            move |share| {
                Some(ServerMessage::OrmapDiffResponse {
                    payload: OrmapDiffResponse {
                        map_name,
                        entries: share.entries,
                    },
                })
            },
        );
    }

    /// ORMAP_PUSH_DIFF: the client's records and removed tags are writes like OR_ADD /
    /// OR_REMOVE ops (same shards, storage and events); the protocol has no reply for it.
    pub(super) fn on_ormap_push_diff(&mut self, m: OrmapPushDiff) {
        let mut ops = Vec::new();
        for entry in m.entries {
            for record in entry.records {
                ops.push(or_op(&m.map_name, &entry.key, Some(record), None));
            }
            for tag in entry.tombstones {
                ops.push(or_op(&m.map_name, &entry.key, None, Some(tag)));
            }
        }
        for op in &ops {
            self.tel.count_ops(op_label(op), &op.map_name, 1);
        }
        if !ops.is_empty() {
            let trace = crate::cluster::wire::Trace {
                request_id: None,
                origin_node_id: self.node.node_id.clone(),
                client_id: self.client_id.to_string(),
                writer: None,
            };
            let applied = crate::cluster::replication::route_client_write(
                &self.node.data,
                self.id,
                trace,
                ops,
                &self.tel.log,
            );
            actix_rt::spawn(async move {
                applied.await;
            });
        }
    }

    pub(super) fn on_topic_sub(&mut self, ctx: &mut ws::WebsocketContext<Self>, topic: String) {
        let Some(outbound) = self.outbound.clone() else {
            return;
        };
        if !protocol::is_valid_topic(&topic) {
            self.tel.count_invalid("malformed");
            return;
        }
        let max = self.node.config.max_topics_per_connection;
        if self.topics.len() >= max && !self.topics.contains(topic.as_str()) {
            let error = self.over_limit(
                "topics",
                max,
                format!(
                    "this connection is subscribed to {max} topics, the most one connection may \
                     (--max-topics-per-connection): TOPIC_UNSUB one first"
                ),
            );
            self.send(ctx, &ServerMessage::error(429, &error));
            return;
        }
        let topic: Arc<str> = Arc::from(topic);
        self.topics.insert(topic.clone());
        let stripe = &self.node.queue.stripes[self.node.queue.stripe_of_topic(&topic)];
        stripe.mailbox.do_send(TopicSubscribe {
            conn: self.id,
            topic,
            outbound,
        });
    }

    /// Counts and logs (at most once per interval) a request refused by `limit`: the error
    /// text for the client.
    fn over_limit(&mut self, limit: &'static str, max: usize, error: String) -> String {
        self.tel.count_limit_exceeded(limit);
        self.log_limit(limit, max, &error);
        error
    }

    fn log_limit(&mut self, limit: &'static str, max: usize, error: &str) {
        let suppressed = self.tel.limit_log.check(std::time::Instant::now());
        LimitExceeded {
            limit,
            max,
            suppressed: suppressed.unwrap_or(0),
            err: ErrField::new("limit_exceeded", error),
        }
        .emit_if(&self.tel.log, suppressed.is_some());
    }

    pub(super) fn on_topic_unsub(&mut self, topic: String) {
        self.topics.remove(topic.as_str());
        let stripe = &self.node.queue.stripes[self.node.queue.stripe_of_topic(&topic)];
        stripe.mailbox.do_send(TopicUnsubscribe {
            conn: self.id,
            topic: Arc::from(topic),
        });
    }

    pub(super) fn on_topic_pub(&mut self, m: TopicPub) {
        if !protocol::is_valid_topic(&m.topic) {
            self.tel.count_invalid("malformed");
            return;
        }
        crate::cluster::replication::publish_to_peers(&self.node.cluster, &m.topic, &m.data);
        let stripe = &self.node.queue.stripes[self.node.queue.stripe_of_topic(&m.topic)];
        stripe.mailbox.do_send(TopicPublish {
            topic: Arc::from(m.topic),
            data: m.data,
            publisher: self.id,
        });
    }
}
