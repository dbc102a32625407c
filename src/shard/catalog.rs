//! The node's map names, bounded (`--max-maps`): every map costs a store and a Merkle tree in
//! the shards that hold it, so clients may not name new maps without end. Shards register what
//! they hold (recovered, written, replicated, moved here); the write intake asks before a
//! client's op may name a new map.
//!
//! The intake reads a count, not the set, while the node is under the bound: the set is only
//! consulted once it is full. Batches in flight between the check and the shard may pass the
//! bound by a few maps; it is a bound on growth, not an exact quota.
use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::RwLock;

use crate::telemetry::sampled::SampledCount;

#[derive(Debug)]
pub struct MapCatalog {
    max: usize,
    count: AtomicUsize,
    names: RwLock<HashSet<Box<str>>>,
}

impl MapCatalog {
    pub fn new(max: usize) -> Self {
        MapCatalog {
            max,
            count: AtomicUsize::new(0),
            names: RwLock::new(HashSet::new()),
        }
    }

    pub fn max(&self) -> usize {
        self.max
    }

    pub fn len(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether a client may write to `map`: the node knows it already, or has room for it.
    pub fn admits(&self, map: &str) -> bool {
        if self.len() < self.max {
            return true;
        }
        // A poisoned lock only means a panic elsewhere while inserting: the set is intact.
        let names = self.names.read().unwrap_or_else(|p| p.into_inner());
        names.contains(map)
    }

    /// Records maps a shard holds. Never refuses: what a shard holds is there already.
    pub fn register<'a>(&self, maps: impl IntoIterator<Item = &'a str>) {
        let mut names = self.names.write().unwrap_or_else(|p| p.into_inner());
        for map in maps {
            if !names.contains(map) {
                names.insert(Box::from(map));
            }
        }
        self.count.store(names.len(), Ordering::Relaxed);
    }
}

/// The metrics actor shows the count as `topgun_maps`.
impl SampledCount for MapCatalog {
    fn count(&self) -> usize {
        self.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_names_stop_at_the_bound_known_ones_go_on() {
        let c = MapCatalog::new(2);
        assert!(c.admits("a"));
        c.register(["a", "b", "a"]);
        assert_eq!(c.len(), 2);
        assert!(c.admits("a") && c.admits("b"));
        assert!(!c.admits("c"));
        // Shards register what they hold even past the bound (recovery, peers).
        c.register(["c"]);
        assert_eq!(c.len(), 3);
        assert!(c.admits("c"));
        assert!(!c.admits("d"));
    }
}
