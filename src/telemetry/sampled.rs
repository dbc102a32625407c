//! What the metrics actor samples of state owned by higher layers: the memory budget
//! (`data::budget`, which refuses writes on it) and the map catalog (`shard::catalog`).
//! Telemetry sits below both, so it sees them through these traits, which their owners
//! implement; `node` hands the actor the real ones. Also here: the process's resident memory,
//! which the metrics actor measures for the budget.

/// The memory budget as its sampler sees it.
pub trait SampledBudget: Send + Sync {
    /// 0: no budget.
    fn limit(&self) -> u64;
    /// Resident memory at the last sample.
    fn used(&self) -> u64;
    /// Whether new writes are refused.
    fn exceeded(&self) -> bool;
    /// Records a sample; returns the crossing it makes, if any.
    fn observe(&self, used: u64) -> Option<Crossing>;
}

/// A crossing of the budget, for the sampler to log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Crossing {
    /// Resident memory reached the budget: new writes are refused from now on.
    Exceeded { used: u64 },
    /// Back under the budget's resume share of it: writes are taken again.
    Recovered { used: u64 },
}

/// A count shown as a gauge at scrape time.
pub trait SampledCount: Send + Sync {
    fn count(&self) -> usize;
}

/// The process's resident memory in bytes (`None` where `/proc` does not exist).
pub fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    kib_field(&status, "VmRSS:").map(|kib| kib * 1024)
}

/// `Name:   1234 kB` from a `/proc` status-like text.
pub fn kib_field(text: &str, name: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(name))?;
    line[name.len()..]
        .split_whitespace()
        .next()?
        .parse::<u64>()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_fields_parse() {
        let status = "Name:\tx\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\n";
        assert_eq!(kib_field(status, "VmRSS:"), Some(1024));
        assert_eq!(kib_field(status, "VmSwap:"), None);
        assert_eq!(kib_field("VmRSS: lots kB", "VmRSS:"), None);
    }

    #[test]
    fn this_process_is_measured() {
        assert!(resident_bytes().is_some_and(|b| b > 0));
    }
}
