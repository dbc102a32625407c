//! The metrics actor's own notable events.
use crate::events;
use crate::telemetry::event::ErrField;

events! {
    Warning MemoryBudgetExceeded = "memory_budget_exceeded",
        "memory budget exceeded: refusing writes that add data" {
        used_bytes: u64 => "usedBytes",
        budget_bytes: u64 => "budgetBytes",
        err: ErrField => "err",
    }
    Info MemoryBudgetRecovered = "memory_budget_recovered",
        "memory back under budget: taking writes again" {
        used_bytes: u64 => "usedBytes",
        budget_bytes: u64 => "budgetBytes",
    }
    Error ExpositionFailed = "metrics_exposition_failed", "metrics exposition failed" {
        err: ErrField => "err",
    }
}
