//! Data model: partitions, CRDT maps, HLC, Merkle trees, queries.
pub mod fnv;
pub mod hlc;
pub mod merkle;
