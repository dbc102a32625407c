//! Client connections: the `ConnectionActor` (one per WebSocket), the connection gate (rate
//! limiter and registry of open connections), JWT verification, the per-connection token bucket.
pub mod auth;
pub mod conn_telemetry;
pub mod connection;
pub mod gate;
pub mod token_bucket;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use slog::Logger;

use crate::config::Config;
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
    /// `/ready`: storage open and cluster joined; false again once shutdown starts.
    pub ready: Arc<AtomicBool>,
}
