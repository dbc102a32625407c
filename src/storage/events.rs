//! The storage actor's notable events.
use crate::events;
use crate::telemetry::event::ErrField;

events! {
    /// The writes of the group are not durable: their clients get an error, not an ack.
    Error CommitFailed = "storage_commit_failed", "storage commit failed" {
        records: usize => "records",
        requests: usize => "requests",
        err: ErrField => "err",
    }
    Info Flushed = "storage_actor_flushed", "storage flushed" {}
}
