//! Live events across nodes, the queue's side (partitioned placement): which maps this node
//! has live subscriptions on (`local`, published by stripe 0, which holds every subscription
//! for its keys), which maps other nodes want events of (`wanted`, learnt from their
//! `INTEREST` messages), and the channel on which shards hand over copies of the events of
//! wanted maps for the cluster to send (`out`). A full channel drops the copies and counts
//! them: the write is applied and acknowledged, and subscribers elsewhere recover by Merkle
//! sync, as with a full stripe.
use std::collections::{BTreeSet, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};

use tokio::sync::{mpsc, watch};

use super::ChangeEvent;

/// Event batches waiting for the cluster to send them.
pub const OUT_CAPACITY: usize = 4096;

pub type MapSet = Arc<BTreeSet<Arc<str>>>;

pub struct CrossNode {
    local: watch::Sender<MapSet>,
    wanted: RwLock<Arc<HashSet<Arc<str>>>>,
    out: OnceLock<mpsc::Sender<Vec<ChangeEvent>>>,
    pub dropped: AtomicU64,
}

impl Default for CrossNode {
    fn default() -> Self {
        CrossNode {
            local: watch::Sender::new(Arc::new(BTreeSet::new())),
            wanted: RwLock::new(Arc::new(HashSet::new())),
            out: OnceLock::new(),
            dropped: AtomicU64::new(0),
        }
    }
}

impl CrossNode {
    /// Stripe 0's maps with subscriptions; a change wakes [`CrossNode::local_changes`].
    pub fn publish_local(&self, maps: impl Iterator<Item = Arc<str>>) {
        let maps: BTreeSet<Arc<str>> = maps.collect();
        self.local.send_if_modified(|current| {
            if **current == maps {
                return false;
            }
            *current = Arc::new(maps);
            true
        });
    }

    pub fn local_changes(&self) -> watch::Receiver<MapSet> {
        self.local.subscribe()
    }

    /// The union of the maps other nodes want events of.
    pub fn set_wanted(&self, maps: HashSet<Arc<str>>) {
        let maps = Arc::new(maps);
        match self.wanted.write() {
            Ok(mut w) => *w = maps,
            Err(poisoned) => *poisoned.into_inner() = maps,
        }
    }

    /// Where shards hand over events of wanted maps; set once, by the cluster.
    pub fn connect(&self, out: mpsc::Sender<Vec<ChangeEvent>>) {
        let _ = self.out.set(out);
    }

    /// Hands copies of the events of wanted maps to the cluster (nothing without a peer that
    /// wants any).
    pub fn offer(&self, events: &[ChangeEvent]) {
        let Some(out) = self.out.get() else { return };
        let wanted = match self.wanted.read() {
            Ok(w) => w.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        if wanted.is_empty() {
            return;
        }
        let copies: Vec<ChangeEvent> = events
            .iter()
            .filter(|e| !e.from_peer && wanted.contains(&e.map))
            .cloned()
            .collect();
        if copies.is_empty() {
            return;
        }
        let n = copies.len() as u64;
        if out.try_send(copies).is_err() {
            self.dropped.fetch_add(n, Ordering::Relaxed);
        }
    }
}
