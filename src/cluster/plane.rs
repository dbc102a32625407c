//! [`DataPlane`]: what client connections and peers both reach: the shards, the event queue,
//! the write backpressure and the limits (the handles of `data`'s write and read paths) plus
//! the cluster's shared state. It lives in the cluster layer, the lowest that knows
//! [`ClusterState`]; the functions of `data` take only the handles they use, so `data` never
//! names the cluster.
use std::sync::Arc;

use slog::Logger;

use super::state::ClusterState;
use crate::config::Config;
use crate::data::budget::MemoryBudget;
use crate::data::slots::BatchSlots;
use crate::queue::EventQueue;
use crate::shard::catalog::MapCatalog;
use crate::shard::router::Shards;
use crate::telemetry::metrics::MetricsActor;
use crate::telemetry::report::Mailbox;

/// Immutable after start, shared by `Arc`.
pub struct DataPlane {
    pub config: Arc<Config>,
    pub node_id: String,
    pub metrics: Mailbox<MetricsActor>,
    pub log: Logger,
    pub shards: Shards,
    pub queue: EventQueue,
    /// Write batches accepted from clients and not yet applied, node-wide (backpressure).
    pub write_slots: Arc<BatchSlots>,
    /// The partition table, peer links and write settings of the cluster.
    pub cluster: Arc<ClusterState>,
    /// `--max-memory`: sampled by the metrics actor, read by the write intake.
    pub budget: Arc<MemoryBudget>,
    /// `--max-maps`: filled by the shards, read by the write intake.
    pub maps: Arc<MapCatalog>,
}
