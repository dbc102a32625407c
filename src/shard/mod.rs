//! Data model: partitions, CRDT maps, HLC, Merkle trees, queries.
