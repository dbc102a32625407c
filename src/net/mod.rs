//! Client connections: the `ConnectionActor` (one per WebSocket), the connection gate (rate
//! limiter and registry of open connections), JWT verification, the per-connection token bucket.
pub mod auth;
pub mod conn_telemetry;
pub mod connection;
pub mod events;
pub mod flow;
pub mod gate;
pub mod grouped;
pub mod http_sync;
pub mod jwks;
pub mod keyset;
pub mod pipeline;
pub mod queries;
pub mod requests;
pub mod socket;
pub mod sync;
pub mod tls;
pub mod token_bucket;
pub mod topics;
pub mod writes;

use std::ops::Deref;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use crate::cluster::plane::DataPlane;
use crate::telemetry::logging::LevelHandle;
use crate::telemetry::report::Mailbox;
use auth::Verifier;
use gate::ConnectionGateActor;

/// What every client connection needs to reach: the data plane, and what only clients use.
/// Immutable after start, shared by `Arc`.
pub struct NodeContext {
    pub data: Arc<DataPlane>,
    /// `None` when authentication is off.
    pub verifier: Option<Verifier>,
    pub gate: Mailbox<ConnectionGateActor>,
    /// The runtime log level (`PUT /debug/log-level`).
    pub log_level: LevelHandle,
    /// `/ready`: storage open and cluster joined; false again once shutdown starts.
    pub ready: Arc<AtomicBool>,
    /// Set once shutdown starts, before `ready` falls: `/ready` then says `draining`.
    pub draining: Arc<AtomicBool>,
    /// `ws://host:port/ws` as peers and clients should reach this node.
    pub public_url: String,
}

/// A connection reads the data plane's fields as its own (`node.shards`, `node.config`).
impl Deref for NodeContext {
    type Target = DataPlane;

    fn deref(&self) -> &DataPlane {
        &self.data
    }
}
