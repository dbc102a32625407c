//! Durable storage behind a small trait: `redb` (embedded, the default) and `memory` (tests and
//! caches). Shards hand applied changes to the storage actor in batches; it commits them in
//! groups, and only then are the writes acknowledged.
//!
//! What is stored: every LWW record (tombstones included), OR-Map records and removed tags,
//! and the HLC high-water mark, so a restarted node never hands out a lower timestamp.
pub mod actor;
pub mod events;
pub mod memory;
pub mod redb;

use crate::protocol::types::{LwwRecord, OrMapRecord, Timestamp};

/// One durable change.
#[derive(Clone, Debug, PartialEq)]
pub enum Mutation {
    Lww {
        map: String,
        key: String,
        record: LwwRecord,
    },
    OrAdd {
        map: String,
        key: String,
        record: OrMapRecord,
    },
    OrRemove {
        map: String,
        key: String,
        tag: String,
    },
    /// A swept LWW key (expired TTL or garbage-collected tombstone), or one of a partition
    /// this node no longer keeps.
    Purge { map: String, key: String },
    /// An OR-Map key of a partition this node no longer keeps: its records and removed tags.
    PurgeOr {
        map: String,
        key: String,
        tags: Vec<String>,
        removed: Vec<String>,
    },
}

impl Mutation {
    /// The newest timestamp this change carries, for the HLC high-water mark.
    pub fn timestamp(&self) -> Option<&Timestamp> {
        match self {
            Mutation::Lww { record, .. } => Some(&record.timestamp),
            Mutation::OrAdd { record, .. } => Some(&record.timestamp),
            _ => None,
        }
    }

    pub fn key(&self) -> &str {
        match self {
            Mutation::Lww { key, .. }
            | Mutation::OrAdd { key, .. }
            | Mutation::OrRemove { key, .. }
            | Mutation::Purge { key, .. }
            | Mutation::PurgeOr { key, .. } => key,
        }
    }
}

/// What a backend held at start.
#[derive(Default, Debug)]
pub struct Recovered {
    pub lww: Vec<(String, String, LwwRecord)>,
    pub or_records: Vec<(String, String, OrMapRecord)>,
    pub or_removed: Vec<(String, String, String)>,
    pub hlc: Option<Timestamp>,
}

impl Recovered {
    pub fn records(&self) -> usize {
        self.lww.len() + self.or_records.len()
    }
}

/// A failed open: one line for the operator, then exit non-zero (never a fresh start over
/// data the node could not read).
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("{path} is locked by another process (is another topgun-node using this data dir?)")]
    Locked { path: String },
    #[error("cannot open {path}: {message}")]
    Unusable { path: String, message: String },
    #[error("{path} is corrupt or not a topgun-node database: {message}")]
    Corrupt { path: String, message: String },
}

impl OpenError {
    pub fn code(&self) -> &'static str {
        match self {
            OpenError::Locked { .. } => "storage_locked",
            OpenError::Unusable { .. } => "storage_unusable",
            OpenError::Corrupt { .. } => "storage_corrupt",
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{op} failed: {message}")]
pub struct StorageError {
    /// Bounded: the `op` label of `topgun_storage_errors_total`.
    pub op: &'static str,
    pub message: String,
}

/// A storage backend: one writer (the storage actor) commits batches of mutations.
pub trait Backend: Send {
    /// Commits all mutations and the high-water mark durably, or none of them.
    fn commit(
        &mut self,
        mutations: &[Mutation],
        hlc: Option<&Timestamp>,
    ) -> Result<(), StorageError>;
    /// Bytes on disk (0 in memory).
    fn size_bytes(&self) -> u64;
    fn name(&self) -> &'static str;
}
