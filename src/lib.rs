//! `topgun-node`: one node of the TopGun real-time, local-first data grid.
//!
//! # Layout
//! - [`cluster`]: membership (ClusterActor, foca SWIM), the partition table, the node-to-node
//!   transport, write routing and replication, migration and catch-up; the `DataPlane`.
//! - [`config`]: flags, environment, TOML file; precedence and validation.
//! - [`data`]: the data plane shared by client connections and peers: the local write and read
//!   paths, wire ops and queries translated for the shards.
//! - [`node`]: wiring of the actors in dependency order, the HTTP server, the shutdown sequence.
//! - [`http`]: the routes (`/ws`, `/`, `/metrics`, `/health`, `/ready`), kept thin.
//! - [`protocol`]: the client wire types and their MessagePack codec; plain Rust, no actix.
//! - [`net`]: the `ConnectionActor` (one per WebSocket), authentication, the connection gate.
//! - [`shard`]: CRDT maps, HLC, Merkle trees, queries; the `ShardActor`s that own partitions.
//! - [`queue`]: the bounded, striped event queue and subscription routing.
//! - [`storage`]: durable group commit (redb) behind a small backend trait; recovery.
//! - [`telemetry`]: Pino-shaped logging, the `MetricsActor`, the reporting path.
//!
//! The modules are layers: none imports from a higher one (`docs/architecture.md`, "Layers",
//! checked by `scripts/check-layers`).
pub mod cluster;
pub mod config;
pub mod data;
pub mod http;
pub mod load;
pub mod net;
pub mod node;
pub mod protocol;
pub mod queue;
pub mod shard;
pub mod storage;
pub mod telemetry;
