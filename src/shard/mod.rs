//! Data model: partitions, CRDT maps, HLC, Merkle trees, queries.
//!
//! Plain logic, no actix and no I/O; the `ShardActor` wraps a [`MapStore`]. Layout:
//! - [`fnv`]: the bit-exact hashes of protocol.md 5.1 and the partition of a key (section 7).
//! - [`hlc`]: the node's hybrid logical clock (4.1) with drift rejection.
//! - [`merkle`]: the client's depth-3 tree (5.2), incremental; [`MerkleUnion`] merges stores.
//! - [`lww`]: one LWW map: merge rule, tombstones, TTL, sweep, sync leaves.
//! - [`ormap`]: one OR-Map (4.4).
//! - [`query`]: filter, sort, limit, cursor, projection (6.1) over plain model types.
//! - [`live`]: per-subscription ENTER / UPDATE / LEAVE decisions (6.3).
//! - [`store`]: [`MapStore`], the maps of one set of partitions.
//! - [`catalog`]: the node's map names, bounded by `--max-maps`.
//! - [`digest`]: one hash per partition's live records, for anti-entropy between holders.
pub mod actor;
pub mod aggregate;
pub mod catalog;
pub mod digest;
pub mod export;
pub mod fnv;
pub mod hlc;
pub mod live;
pub mod lww;
pub mod merkle;
pub mod ormap;
pub mod query;
pub mod router;
pub mod store;

pub use fnv::{fnv1a, partition_of, PARTITION_COUNT};
pub use hlc::{system_millis, Hlc, HlcError, DEFAULT_MAX_DRIFT_MS};
pub use live::{ChangeType, LiveEvent, LiveQuery};
pub use lww::{is_visible, LwwMap, MergeOutcome, Swept, SweptKind, DEFAULT_TOMBSTONE_MAX_AGE_MS};
pub use merkle::{LeafPath, MerkleTree, MerkleUnion};
pub use ormap::{OrAddOutcome, OrMap};
pub use query::{
    CompiledQuery, CursorStatus, Filter, PartialResult, Predicate, PredicateOp, QueryPage,
    QueryRow, QuerySpec, SortDirection, SortField,
};
pub use store::{MapStats, MapStore};
