//! Client connections: the `ConnectionActor` (one per WebSocket), the connection gate (rate
//! limiter and registry of open connections), JWT verification, the per-connection token bucket.
pub mod auth;
pub mod conn_telemetry;
pub mod connection;
pub mod gate;
pub mod grouped;
pub mod http_sync;
pub mod ops;
pub mod pipeline;
pub mod requests;
pub mod token_bucket;

use std::sync::atomic::{AtomicBool, AtomicI64};
use std::sync::Arc;

use slog::Logger;

use crate::config::Config;
use crate::queue::EventQueue;
use crate::shard::router::Shards;
use crate::telemetry::logging::LevelHandle;
use crate::telemetry::metrics::MetricsActor;
use crate::telemetry::report::Mailbox;
use auth::Verifier;
use gate::ConnectionGateActor;

/// What every connection needs to reach: immutable after start, shared by `Arc`.
pub struct NodeContext {
    pub config: Arc<Config>,
    pub node_id: String,
    /// `None` when authentication is off.
    pub verifier: Option<Verifier>,
    pub gate: Mailbox<ConnectionGateActor>,
    pub metrics: Mailbox<MetricsActor>,
    pub log: Logger,
    /// The runtime log level (`PUT /debug/log-level`).
    pub log_level: LevelHandle,
    /// `/ready`: storage open and cluster joined; false again once shutdown starts.
    pub ready: Arc<AtomicBool>,
    pub shards: Shards,
    pub queue: EventQueue,
    /// Write batches accepted from clients and not yet applied, node-wide (backpressure).
    pub pending_batches: Arc<AtomicI64>,
    /// `ws://host:port/ws` as peers and clients should reach this node.
    pub public_url: String,
    /// The partition table, peer links and write settings of the cluster.
    pub cluster: Arc<crate::cluster::state::ClusterState>,
}
