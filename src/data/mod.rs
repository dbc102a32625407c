//! The data plane: what a node does with data, whoever asks (a client connection, a peer).
//! [`DataPlane`] is what both reach: the shards, the event queue, the cluster state and the
//! write backpressure. The local write path ([`writes`]) and read path ([`reads`]), and the
//! translation of wire messages into shard operations and queries ([`ops`]), exist once here,
//! as do the limits on what clients may add ([`intake`], over [`budget`] and the map catalog).
//! Nothing here knows client connections.
pub mod budget;
pub mod intake;
pub mod ops;
pub mod reads;
pub mod slots;
pub mod sync;
pub mod writes;

use std::sync::Arc;

use slog::Logger;

use crate::cluster::state::ClusterState;
use crate::config::Config;
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
    pub write_slots: Arc<slots::BatchSlots>,
    /// The partition table, peer links and write settings of the cluster.
    pub cluster: Arc<ClusterState>,
    /// `--max-memory`: sampled by the metrics actor, read by the write intake.
    pub budget: Arc<budget::MemoryBudget>,
    /// `--max-maps`: filled by the shards, read by the write intake.
    pub maps: Arc<MapCatalog>,
}
