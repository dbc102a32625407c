//! Data model: partitions, CRDT maps, HLC, Merkle trees, queries.
pub mod fnv;
pub mod hlc;
pub mod lww;
pub mod merkle;
pub mod ormap;
pub mod query;
