//! The `memory` backend: nothing survives the process. Commits succeed at once, so with it the
//! node acknowledges writes as soon as shards applied them.
use super::{Backend, Mutation, StorageError};
use crate::protocol::types::Timestamp;

#[derive(Default)]
pub struct MemoryBackend;

impl Backend for MemoryBackend {
    fn commit(&mut self, _: &[Mutation], _: Option<&Timestamp>) -> Result<(), StorageError> {
        Ok(())
    }

    fn size_bytes(&self) -> u64 {
        0
    }

    fn name(&self) -> &'static str {
        "memory"
    }
}
