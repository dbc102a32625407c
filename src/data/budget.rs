//! The node-wide memory budget (`--max-memory`): the process's resident memory, sampled, against
//! a limit. Above it the node takes no new data (writes other than deletes are refused where
//! they enter); below [`RESUME_PERCENT`] of it, it takes them again. The gap keeps a node that
//! hovers at its limit from flapping between the two states with every sample.
//!
//! Resident memory (not the allocator's count) is what a cgroup limit and the OOM killer weigh,
//! so it is what the budget weighs too.
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::telemetry::sampled::{kib_field, Crossing, SampledBudget};

/// Writes resume once resident memory is back under this share of the budget.
pub const RESUME_PERCENT: u64 = 95;

/// The default budget's share of the memory the node may use (the cgroup's limit, else the
/// machine's): the rest is headroom for what is in flight when the budget trips.
pub const DEFAULT_PERCENT: u64 = 80;

/// Where the budget's limit came from, for the start log line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LimitSource {
    Configured,
    Cgroup,
    Machine,
}

impl LimitSource {
    pub fn as_str(self) -> &'static str {
        match self {
            LimitSource::Configured => "configured",
            LimitSource::Cgroup => "cgroup",
            LimitSource::Machine => "machine",
        }
    }
}

/// Shared by every connection (which reads [`MemoryBudget::exceeded`] once per write batch)
/// and the sampler (which alone writes).
#[derive(Debug)]
pub struct MemoryBudget {
    /// 0: no budget.
    limit: u64,
    used: AtomicU64,
    exceeded: AtomicBool,
}

impl MemoryBudget {
    pub fn new(limit: u64) -> Self {
        MemoryBudget {
            limit,
            used: AtomicU64::new(0),
            exceeded: AtomicBool::new(false),
        }
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Resident memory at the last sample.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// Whether new writes are refused.
    pub fn exceeded(&self) -> bool {
        self.exceeded.load(Ordering::Relaxed)
    }

    /// Records a sample; returns the crossing it makes, if any.
    pub fn observe(&self, used: u64) -> Option<Crossing> {
        self.used.store(used, Ordering::Relaxed);
        if self.limit == 0 {
            return None;
        }
        let was = self.exceeded();
        let now = if was {
            used.saturating_mul(100) >= self.limit.saturating_mul(RESUME_PERCENT)
        } else {
            used >= self.limit
        };
        if now == was {
            return None;
        }
        self.exceeded.store(now, Ordering::Relaxed);
        Some(if now {
            Crossing::Exceeded { used }
        } else {
            Crossing::Recovered { used }
        })
    }
}

/// The metrics actor samples the budget (every [`crate::telemetry::metrics::BUDGET_SAMPLE`]).
impl SampledBudget for MemoryBudget {
    fn limit(&self) -> u64 {
        MemoryBudget::limit(self)
    }

    fn used(&self) -> u64 {
        MemoryBudget::used(self)
    }

    fn exceeded(&self) -> bool {
        MemoryBudget::exceeded(self)
    }

    fn observe(&self, used: u64) -> Option<Crossing> {
        MemoryBudget::observe(self, used)
    }
}

/// The default budget: [`DEFAULT_PERCENT`] of the cgroup's memory limit, else of the
/// machine's memory. `None` when neither can be read (no budget then).
pub fn default_limit() -> Option<(u64, LimitSource)> {
    let machine = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| kib_field(&m, "MemTotal:"))
        .map(|kib| kib * 1024);
    let cgroup = cgroup_limit();
    let (total, source) = match (cgroup, machine) {
        (Some(c), Some(m)) if c < m => (c, LimitSource::Cgroup),
        (Some(c), None) => (c, LimitSource::Cgroup),
        (_, Some(m)) => (m, LimitSource::Machine),
        (None, None) => return None,
    };
    Some((total / 100 * DEFAULT_PERCENT, source))
}

/// cgroup v2's `memory.max`, else v1's `memory.limit_in_bytes`; "no limit" is `None`.
fn cgroup_limit() -> Option<u64> {
    let v2 = std::fs::read_to_string("/sys/fs/cgroup/memory.max").ok();
    let v1 = || std::fs::read_to_string("/sys/fs/cgroup/memory/memory.limit_in_bytes").ok();
    let text = v2.or_else(v1)?;
    // "max" (v2) or a page-rounded i64::MAX (v1) both mean no limit.
    text.trim()
        .parse::<u64>()
        .ok()
        .filter(|&bytes| bytes < 1 << 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trips_at_the_limit_and_resumes_below_the_gap() {
        let b = MemoryBudget::new(1000);
        assert_eq!(b.observe(999), None);
        assert!(!b.exceeded());
        assert_eq!(b.observe(1000), Some(Crossing::Exceeded { used: 1000 }));
        assert!(b.exceeded());
        // Between 95 % and the limit: still refusing, no new crossing.
        assert_eq!(b.observe(960), None);
        assert!(b.exceeded());
        assert_eq!(b.observe(949), Some(Crossing::Recovered { used: 949 }));
        assert!(!b.exceeded());
        assert_eq!(b.used(), 949);
    }

    #[test]
    fn no_limit_never_trips() {
        let b = MemoryBudget::new(0);
        assert_eq!(b.observe(u64::MAX), None);
        assert!(!b.exceeded());
    }

    #[test]
    fn a_default_is_found() {
        let (limit, _) = default_limit().expect("a Linux machine has /proc/meminfo");
        assert!(limit > 0);
    }
}
