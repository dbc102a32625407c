//! `ShardActor`: owns a fixed set of the 271 partitions (their maps, Merkle trees) and an HLC,
//! on its own arbiter. Applies the ops a connection sends it (one message per client batch and
//! shard, never per key), hands the resulting change events to the event queue in one batch per
//! stripe, answers the per-shard part of queries and Merkle sync, and sweeps expired entries
//! and old tombstones.
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use slog::{debug, Logger};

use crate::queue::events::StripeRejecting;
use crate::telemetry::event::{ErrField, Event};

use super::aggregate::Groups;
use super::catalog::MapCatalog;
use super::digest::PartitionDigest;
use super::hlc::{system_millis, Hlc};
use super::lww::MergeOutcome;
use super::merkle::LeafPath;
use super::query::{CompiledQuery, PartialResult};
use super::store::MapStore;
use crate::protocol::types::{LwwRecord, OrMapRecord, Timestamp};
use crate::queue::actor::RouteEvents;
use crate::queue::{Change, ChangeEvent, ConnId, EventQueue};
use crate::storage::actor::{Persist, StorageActor};
use crate::storage::Mutation;
use crate::telemetry::metrics::{Metrics, MetricsActor};
use crate::telemetry::report::{ActorKind, ActorStats, Mailbox, Report, Reported, StatsDelta};
use crate::telemetry::throttle::Throttle;

/// One op for this shard, already validated by the connection.
#[derive(Debug)]
pub struct ShardOp {
    pub map: Arc<str>,
    pub key: Arc<str>,
    pub kind: OpKind,
}

#[derive(Debug)]
pub enum OpKind {
    /// An LWW write (a tombstone for REMOVE). `None`: REMOVE without a client record, stamped
    /// by the shard's clock.
    Lww(Option<LwwRecord>),
    OrAdd(OrMapRecord),
    OrRemove {
        tag: String,
    },
}

/// What happened to one op.
#[derive(Debug, Clone, PartialEq)]
pub enum OpOutcome {
    Applied,
    /// Older than what the map holds: merged away, which is success for the client.
    Stale,
    Rejected {
        reason: String,
    },
    /// Applied in memory but the storage commit failed: must not be acknowledged.
    NotDurable {
        reason: String,
    },
}

/// Partitions by id: whether a share includes it. `None`: every partition.
pub type PartitionMask = Option<Arc<Vec<bool>>>;

/// The ops of one client frame that belong to this shard, in the client's order.
#[derive(Message)]
#[rtype(result = "Vec<OpOutcome>")]
pub struct ApplyOps {
    pub writer: ConnId,
    pub ops: Vec<ShardOp>,
    /// Where a peer's write came from (its change events carry it to other nodes).
    pub origin: Option<Arc<crate::queue::Origin>>,
    /// Raise change events for live subscribers (not for a partition moved here with
    /// partitioned placement: its holders sent every change of it to the subscribers already).
    pub announce: bool,
}

/// This shard's share of a query, and how far it had applied (for the live-update replay).
#[derive(Message)]
#[rtype(result = "(PartialResult, u64)")]
pub struct RunQuery {
    pub map: Arc<str>,
    pub query: Arc<CompiledQuery>,
    pub cap: usize,
    /// Only these partitions (indexed by id); `None`: every one.
    pub partitions: Option<Arc<Vec<bool>>>,
}

/// A grouped query's groups over this shard's matching records, and its apply sequence.
#[derive(Message)]
#[rtype(result = "(Groups, u64)")]
pub struct GroupQuery {
    pub map: Arc<str>,
    pub query: Arc<CompiledQuery>,
    pub partitions: Option<Arc<Vec<bool>>>,
}

/// Merkle leaf hashes of a map (the connection unions them across shards), and a fresh HLC
/// timestamp for `SYNC_RESP_ROOT`.
#[derive(Message)]
#[rtype(result = "(Vec<(LeafPath, u32)>, Timestamp)")]
pub struct MerkleLeaves {
    pub map: Arc<str>,
    /// Only keys of these partitions (a gathered sync); `None`: every key, from the tree.
    pub partitions: PartitionMask,
}

/// The records of one Merkle leaf path (tombstones included, expired entries not).
#[derive(Message)]
#[rtype(result = "Vec<(String, LwwRecord)>")]
pub struct LeafRecords {
    pub map: Arc<str>,
    pub path: String,
    pub partitions: PartitionMask,
}

/// OR-Map sync: this shard's leaf hashes of a map's OR keys, and a fresh HLC timestamp.
#[derive(Message)]
#[rtype(result = "(Vec<(LeafPath, u32)>, Timestamp)")]
pub struct OrLeaves {
    pub map: Arc<str>,
    pub partitions: PartitionMask,
}

/// Which OR-Map entries to read.
pub enum OrSelect {
    /// Every key under a Merkle leaf path.
    Path(String),
    Keys(Vec<String>),
}

/// OR-Map entries (live records and removed tags per key).
#[derive(Message)]
#[rtype(result = "Vec<crate::protocol::OrMapEntry>")]
pub struct OrEntries {
    pub map: Arc<str>,
    pub select: OrSelect,
    pub partitions: PartitionMask,
}

/// The keys this shard stores for the marked partitions it owns (indexed by partition id),
/// one entry per such partition, empty ones included: the first step of an export in pieces
/// (`shard::export`).
#[derive(Message)]
#[rtype(result = "Vec<crate::shard::export::PartitionKeys>")]
pub struct ListKeys {
    pub partitions: Arc<Vec<bool>>,
}

/// The records of keys taken from the end of `keys`, up to about `max_bytes` or `max_ops`,
/// and the keys left.
#[derive(Message)]
#[rtype(result = "(Vec<crate::protocol::ClientOp>, crate::shard::export::MapKeys)")]
pub struct ReadChunk {
    pub keys: crate::shard::export::MapKeys,
    pub max_bytes: usize,
    pub max_ops: usize,
}

/// Per partition of this shard with anything stored: (partition, keys, last change).
#[derive(Message)]
#[rtype(result = "Vec<(u16, u64, u64)>")]
pub struct PartitionCensus;

/// The anti-entropy digest of each asked partition this shard holds ([`super::digest`]), and
/// whether the partition is unchanged since the previous ask (only those are compared: a
/// partition being written differs between holders while its writes are in flight).
#[derive(Message)]
#[rtype(result = "Vec<PartitionDigest>")]
pub struct PartitionDigests {
    pub partitions: Vec<u16>,
}

/// Deletes a partition handed over, from memory and durably from storage, if it did not
/// change since `touched`. `Ok(keys dropped)`, `Err` when it changed or storage failed.
#[derive(Message)]
#[rtype(result = "Result<u64, String>")]
pub struct DropPartition {
    pub partition: u16,
    pub touched: u64,
}

/// Reads of the data-model knobs that matter to a shard.
#[derive(Clone, Debug)]
pub struct ShardSettings {
    pub max_drift_ms: u64,
    pub tombstone_max_age_ms: u64,
    pub sweep_interval: Duration,
    pub report_interval: Duration,
    pub timed: bool,
}

pub struct ShardActor {
    index: u16,
    store: MapStore,
    /// The node's map names; told whenever `store` holds a map it did not before.
    catalog: Arc<MapCatalog>,
    /// `store.map_count()` when `catalog` was last told.
    maps_registered: usize,
    hlc: Hlc,
    /// Apply sequence: bumped per change event, so a snapshot can say what it contains.
    seq: u64,
    queue: EventQueue,
    settings: ShardSettings,
    /// (live, tombstones) last reported per map, so reports carry deltas of node-wide sums.
    reported_sizes: HashMap<Arc<str>, (i64, i64)>,
    /// Per partition: its last change (`MapStore::census`) when its digest was computed, and
    /// the digest, so an unchanged partition is not hashed again.
    digests: HashMap<u16, (u64, u64)>,
    dirty_maps: Vec<Arc<str>>,
    enqueued: u64,
    rejected: u64,
    reject_log: Throttle,
    stats: ActorStats,
    log: Logger,
    metrics: Mailbox<MetricsActor>,
    /// `None` with the memory backend: nothing to wait for before acknowledging.
    storage: Option<Mailbox<StorageActor>>,
}

/// The actors a shard talks to.
#[derive(Clone)]
pub struct ShardLinks {
    pub queue: EventQueue,
    pub metrics: Mailbox<MetricsActor>,
    /// `None` with the memory backend.
    pub storage: Option<Mailbox<StorageActor>>,
    pub catalog: Arc<MapCatalog>,
}

/// What storage held for this shard's partitions at start.
#[derive(Default)]
pub struct ShardRecovery {
    pub mutations: Vec<Mutation>,
    pub hlc: Option<Timestamp>,
}

impl ShardActor {
    pub fn new(
        index: u16,
        partitions: Vec<u16>,
        node_id: &str,
        settings: ShardSettings,
        links: ShardLinks,
        log: &Logger,
        recovery: ShardRecovery,
    ) -> Self {
        let mut store = MapStore::new(partitions);
        let mut hlc = Hlc::new(node_id, settings.max_drift_ms);
        let mut dirty_maps: Vec<Arc<str>> = Vec::new();
        for m in recovery.mutations {
            let map = match m {
                Mutation::Lww { map, key, record } => {
                    hlc.observe_stored(&record.timestamp);
                    store.apply_lww(&map, &key, record);
                    map
                }
                Mutation::OrAdd { map, key, record } => {
                    hlc.observe_stored(&record.timestamp);
                    store.apply_or_add(&map, &key, record);
                    map
                }
                Mutation::OrRemove { map, key, tag } => {
                    store.apply_or_remove(&map, &key, &tag);
                    map
                }
                Mutation::Purge { map, .. } | Mutation::PurgeOr { map, .. } => map,
            };
            if !dirty_maps.iter().any(|d| **d == *map) {
                dirty_maps.push(Arc::from(map.as_str()));
            }
        }
        if let Some(ts) = &recovery.hlc {
            hlc.observe_stored(ts);
        }
        links.catalog.register(store.map_names());
        ShardActor {
            index,
            maps_registered: store.map_count(),
            store,
            catalog: links.catalog,
            hlc,
            seq: 0,
            queue: links.queue,
            stats: ActorStats::new(ActorKind::Shard, settings.timed).member(usize::from(index)),
            settings,
            reported_sizes: HashMap::new(),
            digests: HashMap::new(),
            dirty_maps,
            enqueued: 0,
            rejected: 0,
            reject_log: Throttle::new(Duration::from_secs(10)),
            log: log.new(slog::o!("actor" => "shard", "shard" => index)),
            metrics: links.metrics,
            storage: links.storage,
        }
    }

    pub fn tap(&self) -> crate::telemetry::mailbox::Tap {
        self.stats.tap()
    }

    fn apply_one(
        &mut self,
        op: ShardOp,
        (writer, origin): (ConnId, &Option<Arc<crate::queue::Origin>>),
        now: u64,
        events: &mut Vec<ChangeEvent>,
    ) -> OpOutcome {
        let change = match op.kind {
            OpKind::Lww(record) => {
                let record = match record {
                    Some(r) => {
                        if let Err(e) = self.hlc.update(&r.timestamp, now) {
                            return OpOutcome::Rejected {
                                reason: e.to_string(),
                            };
                        }
                        r
                    }
                    None => LwwRecord {
                        value: rmpv::Value::Nil,
                        timestamp: self.hlc.now(now),
                        ttl_ms: None,
                    },
                };
                match self.store.apply_lww(&op.map, &op.key, record.clone()) {
                    MergeOutcome::Applied { .. } => Change::Lww(record),
                    MergeOutcome::Stale => return OpOutcome::Stale,
                }
            }
            OpKind::OrAdd(record) => {
                if let Err(e) = self.hlc.update(&record.timestamp, now) {
                    return OpOutcome::Rejected {
                        reason: e.to_string(),
                    };
                }
                match self.store.apply_or_add(&op.map, &op.key, record.clone()) {
                    super::ormap::OrAddOutcome::Applied { tag } => {
                        Change::OrAdd(OrMapRecord { tag, ..record })
                    }
                    super::ormap::OrAddOutcome::Ignored { .. } => return OpOutcome::Stale,
                }
            }
            OpKind::OrRemove { tag } => {
                self.store.apply_or_remove(&op.map, &op.key, &tag);
                Change::OrRemove { tag }
            }
        };
        self.seq += 1;
        if !self.dirty_maps.contains(&op.map) {
            self.dirty_maps.push(op.map.clone());
        }
        events.push(ChangeEvent {
            map: op.map,
            key: op.key,
            change,
            writer,
            shard: self.index,
            seq: self.seq,
            origin: origin.clone(),
            from_peer: false,
            expiry: false,
        });
        OpOutcome::Applied
    }

    /// Hands events to their stripes, one message per stripe; what does not fit is rejected
    /// for routing (the writes stay applied).
    fn enqueue(&mut self, events: Vec<ChangeEvent>) {
        if events.is_empty() {
            return;
        }
        // Subscribers on nodes that do not keep these partitions hear of them from here.
        self.queue.cross.offer(&events);
        let stripes = self.queue.stripes.len();
        let mut per_stripe: Vec<Vec<ChangeEvent>> = (0..stripes).map(|_| Vec::new()).collect();
        for ev in events {
            let s = self.queue.stripe_of_key(&ev.key);
            per_stripe[s].push(ev);
        }
        for (s, mut batch) in per_stripe.into_iter().enumerate() {
            if batch.is_empty() {
                continue;
            }
            let stripe = &self.queue.stripes[s];
            let fits = stripe.reserve(batch.len());
            let refused = batch.len() - fits;
            if refused > 0 {
                batch.truncate(fits);
                self.rejected += refused as u64;
                let suppressed = self.reject_log.check(Instant::now());
                StripeRejecting {
                    stripe: s,
                    rejected: refused,
                    capacity: stripe.capacity(),
                    suppressed: suppressed.unwrap_or(0),
                    err: ErrField::fixed(
                        "event_queue_full",
                        "the stripe has no room for the events",
                    ),
                }
                .emit_if(&self.log, suppressed.is_some());
            }
            if fits > 0 {
                self.enqueued += fits as u64;
                stripe.mailbox.do_send(RouteEvents(batch));
            }
        }
    }

    fn sweep(&mut self) {
        let now = system_millis();
        let swept = self.store.sweep(now, self.settings.tombstone_max_age_ms);
        if swept.is_empty() {
            return;
        }
        debug!(self.log, "swept expired entries and old tombstones"; "count" => swept.len());
        let mut purges = Vec::with_capacity(swept.len());
        let mut expired = Vec::new();
        for (map, s) in swept {
            let map_arc: Arc<str> = Arc::from(map.as_str());
            if !self.dirty_maps.contains(&map_arc) {
                self.dirty_maps.push(map_arc.clone());
            }
            if s.kind == super::lww::SweptKind::Expired {
                // Live queries holding the key must see it LEAVE; a nil record with the old
                // timestamp does that without ever beating a real write at a client.
                self.seq += 1;
                expired.push(ChangeEvent {
                    map: map_arc,
                    key: Arc::from(s.key.as_str()),
                    change: Change::Lww(LwwRecord {
                        value: rmpv::Value::Nil,
                        timestamp: s.timestamp,
                        ttl_ms: None,
                    }),
                    writer: 0,
                    shard: self.index,
                    seq: self.seq,
                    origin: None,
                    from_peer: false,
                    expiry: true,
                });
            }
            purges.push(Mutation::Purge { map, key: s.key });
        }
        self.enqueue(expired);
        if let Some(storage) = &self.storage {
            // Best effort: a purge that does not commit is swept again after a restart.
            storage.do_send(Persist(purges));
        }
    }

    fn report(&mut self) {
        let mut sizes = Vec::new();
        for map in std::mem::take(&mut self.dirty_maps) {
            let stats = self.store.stats(&map);
            let now = (stats.live as i64, stats.tombstones as i64);
            let before = self
                .reported_sizes
                .insert(map.clone(), now)
                .unwrap_or((0, 0));
            if now != before {
                sizes.push((map, now.0 - before.0, now.1 - before.1));
            }
        }
        let report = ShardReport {
            stats: self.stats.take(),
            sizes,
            enqueued: std::mem::take(&mut self.enqueued),
            rejected: std::mem::take(&mut self.rejected),
        };
        self.metrics.do_send(Reported(Box::new(report)));
    }
}

struct ShardReport {
    stats: StatsDelta,
    /// (map, Δ live items, Δ tombstones)
    sizes: Vec<(Arc<str>, i64, i64)>,
    enqueued: u64,
    rejected: u64,
}

impl Report for ShardReport {
    fn apply(self: Box<Self>, m: &mut Metrics) {
        self.stats.apply(m);
        m.event_queue_enqueued_total.inc_by(self.enqueued);
        m.event_queue_rejected_total.inc_by(self.rejected);
        for (map, live, tombstones) in &self.sizes {
            let label = m.map_label(map).to_owned();
            m.map_size_items.with_label_values(&[&label]).add(*live);
            m.map_tombstones
                .with_label_values(&[&label])
                .add(*tombstones);
        }
    }
}

impl Actor for ShardActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        // Connections send with `send`, which parks on a full mailbox and could then reorder
        // two batches of one connection; client volume is bounded by backpressure instead.
        ctx.set_mailbox_capacity(crate::telemetry::report::UNBOUNDED_MAILBOX);
        ctx.run_interval(self.settings.report_interval, |act, _| act.report());
        ctx.run_interval(self.settings.sweep_interval, |act, _| act.sweep());
    }
}

// Messages sent through a `Mailbox` arrive wrapped, with the time they were sent.
crate::telemetry::mailbox::mailbox_handlers!(ShardActor, stats);

impl Handler<ApplyOps> for ShardActor {
    type Result = ResponseFuture<Vec<OpOutcome>>;

    /// Applies now (later reads see it), routes the change events now, and answers once the
    /// changes are durable: that answer is what releases the client's OP_ACK.
    fn handle(&mut self, msg: ApplyOps, _: &mut Context<Self>) -> Self::Result {
        let t0 = self.stats.begin();
        let now = system_millis();
        let mut events = Vec::with_capacity(msg.ops.len());
        let outcomes: Vec<OpOutcome> = msg
            .ops
            .into_iter()
            .map(|op| self.apply_one(op, (msg.writer, &msg.origin), now, &mut events))
            .collect();
        let persist = match &self.storage {
            Some(storage) if !events.is_empty() => {
                Some(storage.send(Persist(events.iter().map(Mutation::from).collect())))
            }
            _ => None,
        };
        if msg.announce {
            self.enqueue(events);
        }
        if self.store.map_count() != self.maps_registered {
            self.catalog.register(self.store.map_names());
            self.maps_registered = self.store.map_count();
        }
        self.stats.end(t0);
        Box::pin(async move {
            let Some(persist) = persist else {
                return outcomes;
            };
            let failure = match persist.await {
                Ok(Ok(())) => return outcomes,
                Ok(Err(e)) => e.to_string(),
                Err(_) => "storage unavailable".to_owned(),
            };
            outcomes
                .into_iter()
                .map(|o| match o {
                    OpOutcome::Applied => OpOutcome::NotDurable {
                        reason: failure.clone(),
                    },
                    other => other,
                })
                .collect()
        })
    }
}

/// What an applied change persists as. Here, where changes are persisted, rather than in
/// storage: storage sits below the event queue that defines the change.
impl From<&ChangeEvent> for Mutation {
    fn from(ev: &ChangeEvent) -> Self {
        let (map, key) = (ev.map.to_string(), ev.key.to_string());
        match &ev.change {
            Change::Lww(record) => Mutation::Lww {
                map,
                key,
                record: record.clone(),
            },
            Change::OrAdd(record) => Mutation::OrAdd {
                map,
                key,
                record: record.clone(),
            },
            Change::OrRemove { tag } => Mutation::OrRemove {
                map,
                key,
                tag: tag.clone(),
            },
        }
    }
}

impl Handler<RunQuery> for ShardActor {
    type Result = MessageResult<RunQuery>;

    fn handle(&mut self, msg: RunQuery, _: &mut Context<Self>) -> Self::Result {
        let t0 = self.stats.begin();
        let part = self.store.query_within(
            &msg.map,
            &msg.query,
            system_millis(),
            msg.cap,
            msg.partitions.as_deref().map(Vec::as_slice),
        );
        self.stats.end(t0);
        MessageResult((part, self.seq))
    }
}

impl Handler<GroupQuery> for ShardActor {
    type Result = MessageResult<GroupQuery>;

    fn handle(&mut self, msg: GroupQuery, _: &mut Context<Self>) -> Self::Result {
        let t0 = self.stats.begin();
        let groups = self.store.group(
            &msg.map,
            &msg.query,
            system_millis(),
            msg.partitions.as_deref().map(Vec::as_slice),
        );
        self.stats.end(t0);
        MessageResult((groups, self.seq))
    }
}

impl Handler<MerkleLeaves> for ShardActor {
    type Result = MessageResult<MerkleLeaves>;

    fn handle(&mut self, msg: MerkleLeaves, _: &mut Context<Self>) -> Self::Result {
        let t0 = self.stats.begin();
        let leaves = self
            .store
            .merkle_leaf_hashes_within(&msg.map, msg.partitions.as_deref().map(Vec::as_slice));
        let ts = self.hlc.now(system_millis());
        self.stats.end(t0);
        MessageResult((leaves, ts))
    }
}

/// The item hash of an OR-Map key in the node's OR tree: its live tags and removed tags,
/// sorted. Clients hash OR leaves differently (protocol.md 4.4), so roots never match and a
/// client always walks to the leaves; the tree only has to change whenever the key does.
fn or_item_hash(or: &super::ormap::OrMap, key: &str, now: u64) -> u32 {
    let mut live: Vec<&str> = or
        .get(key, now)
        .into_iter()
        .map(|r| r.tag.as_str())
        .collect();
    let mut removed: Vec<&str> = or.removed_tags(key).collect();
    live.sort_unstable();
    removed.sort_unstable();
    let mut h = super::fnv::Fnv1a::new();
    h.write_str(key);
    for t in live {
        h.write_str(":");
        h.write_str(t);
    }
    for t in removed {
        h.write_str(":!");
        h.write_str(t);
    }
    h.finish()
}

fn or_entry(or: &super::ormap::OrMap, key: &str, now: u64) -> crate::protocol::OrMapEntry {
    crate::protocol::OrMapEntry {
        key: key.to_owned(),
        records: or.get(key, now).into_iter().cloned().collect(),
        tombstones: or.removed_tags(key).map(str::to_owned).collect(),
    }
}

impl Handler<OrLeaves> for ShardActor {
    type Result = MessageResult<OrLeaves>;

    fn handle(&mut self, msg: OrLeaves, _: &mut Context<Self>) -> Self::Result {
        let t0 = self.stats.begin();
        let now = system_millis();
        // Built per request: OR-Map sync is rare next to LWW traffic, and this keeps writes
        // free of a second tree.
        let mut tree = super::merkle::MerkleTree::new();
        let mask = msg.partitions.as_deref().map(Vec::as_slice);
        if let Some(or) = self.store.or_map(&msg.map) {
            for key in or.keys().filter(|k| MapStore::within(mask, k)) {
                tree.update_item(key, or_item_hash(or, key, now));
            }
        }
        let ts = self.hlc.now(now);
        self.stats.end(t0);
        MessageResult((tree.leaf_hashes(), ts))
    }
}

impl Handler<OrEntries> for ShardActor {
    type Result = MessageResult<OrEntries>;

    fn handle(&mut self, msg: OrEntries, _: &mut Context<Self>) -> Self::Result {
        let t0 = self.stats.begin();
        let now = system_millis();
        let mask = msg.partitions.as_deref().map(Vec::as_slice);
        let entries = match self.store.or_map(&msg.map) {
            None => Vec::new(),
            Some(or) => match msg.select {
                OrSelect::Path(path) => or
                    .keys()
                    .filter(|k| {
                        MapStore::within(mask, k)
                            && super::merkle::path_string(&super::merkle::leaf_path_of(k))
                                .starts_with(&path)
                    })
                    .map(|k| or_entry(or, k, now))
                    .collect(),
                OrSelect::Keys(keys) => keys
                    .iter()
                    .filter(|k| MapStore::within(mask, k) && or.contains_key(k))
                    .map(|k| or_entry(or, k, now))
                    .collect(),
            },
        };
        self.stats.end(t0);
        MessageResult(entries)
    }
}

impl Handler<LeafRecords> for ShardActor {
    type Result = MessageResult<LeafRecords>;

    fn handle(&mut self, msg: LeafRecords, _: &mut Context<Self>) -> Self::Result {
        let t0 = self.stats.begin();
        let records = self
            .store
            .leaf_records(&msg.map, &msg.path, system_millis())
            .map(|rs| {
                let mask = msg.partitions.as_deref().map(Vec::as_slice);
                rs.into_iter()
                    .filter(|(k, _)| MapStore::within(mask, k))
                    .map(|(k, r)| (k.to_owned(), r.clone()))
                    .collect()
            })
            .unwrap_or_default();
        self.stats.end(t0);
        MessageResult(records)
    }
}

impl Handler<PartitionDigests> for ShardActor {
    type Result = MessageResult<PartitionDigests>;

    fn handle(&mut self, msg: PartitionDigests, _: &mut Context<Self>) -> Self::Result {
        let t0 = self.stats.begin();
        let mine: Vec<(u16, u64)> = msg
            .partitions
            .iter()
            .filter(|&&p| self.store.partitions().any(|q| q == p))
            .map(|&p| (p, self.store.census(p).1))
            .collect();
        let changed: Vec<u16> = mine
            .iter()
            .filter(|(p, touched)| self.digests.get(p).is_none_or(|(t, _)| t != touched))
            .map(|(p, _)| *p)
            .collect();
        let fresh: HashMap<u16, u64> = if changed.is_empty() {
            HashMap::new()
        } else {
            self.store.partition_digests(&changed).into_iter().collect()
        };
        let answer = mine
            .into_iter()
            .map(|(p, touched)| match fresh.get(&p) {
                Some(&digest) => {
                    // Changed since the last ask, or never asked: not known to be quiet.
                    self.digests.insert(p, (touched, digest));
                    PartitionDigest {
                        partition: p,
                        digest,
                        stable: false,
                    }
                }
                None => PartitionDigest {
                    partition: p,
                    digest: self.digests.get(&p).map_or(0, |(_, d)| *d),
                    stable: true,
                },
            })
            .collect();
        self.stats.end(t0);
        MessageResult(answer)
    }
}

impl Handler<PartitionCensus> for ShardActor {
    type Result = MessageResult<PartitionCensus>;

    fn handle(&mut self, _: PartitionCensus, _: &mut Context<Self>) -> Self::Result {
        let census = self
            .store
            .partitions()
            .map(|p| {
                let (keys, touched) = self.store.census(p);
                (p, keys, touched)
            })
            .filter(|(_, keys, _)| *keys > 0)
            .collect();
        MessageResult(census)
    }
}

impl Handler<ListKeys> for ShardActor {
    type Result = MessageResult<ListKeys>;

    fn handle(&mut self, msg: ListKeys, _: &mut Context<Self>) -> Self::Result {
        let t0 = self.stats.begin();
        let listed = crate::shard::export::list_keys(&self.store, &msg.partitions);
        self.stats.end(t0);
        MessageResult(listed)
    }
}

impl Handler<ReadChunk> for ShardActor {
    type Result = MessageResult<ReadChunk>;

    fn handle(&mut self, mut msg: ReadChunk, _: &mut Context<Self>) -> Self::Result {
        let t0 = self.stats.begin();
        let ops = crate::shard::export::read_chunk(
            &self.store,
            &mut msg.keys,
            msg.max_bytes,
            msg.max_ops,
        );
        self.stats.end(t0);
        MessageResult((ops, msg.keys))
    }
}

impl Handler<DropPartition> for ShardActor {
    type Result = ResponseFuture<Result<u64, String>>;

    fn handle(&mut self, msg: DropPartition, _: &mut Context<Self>) -> Self::Result {
        let t0 = self.stats.begin();
        let (keys, _) = self.store.census(msg.partition);
        let Some(purges) = self.store.drop_partition(msg.partition, msg.touched) else {
            self.stats.end(t0);
            return Box::pin(async { Err("written to since it was handed over".to_owned()) });
        };
        self.digests.remove(&msg.partition);
        for map in self.store.map_names() {
            let map: Arc<str> = Arc::from(map);
            if !self.dirty_maps.contains(&map) {
                self.dirty_maps.push(map);
            }
        }
        let persist = match &self.storage {
            Some(storage) if !purges.is_empty() => Some(storage.send(Persist(purges))),
            _ => None,
        };
        self.stats.end(t0);
        Box::pin(async move {
            let Some(persist) = persist else {
                return Ok(keys);
            };
            match persist.await {
                Ok(Ok(())) => Ok(keys),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err("storage unavailable".to_owned()),
            }
        })
    }
}
