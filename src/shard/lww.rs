//! One LWW map (protocol.md 4.2, with the project's merge rule): `key → LwwRecord`, kept in step
//! with its Merkle tree. Owns the merge rule, tombstones and their garbage collection, TTL
//! visibility and sweeping, and what a sync leaf lists. It does not stamp timestamps or check
//! clock drift (that is `hlc.rs`, called by whoever applies client ops).
//!
//! Visibility rules, in one place:
//! - merge: a record replaces the stored one iff there is none or its timestamp is strictly
//!   greater (the TS client's rule); equal timestamps keep the first arrival.
//! - a tombstone (`value` nil) is stored like any record, counted in the Merkle tree (the client
//!   hashes tombstones too) and listed in sync leaves, so offline clients learn the delete; it is
//!   never visible to `get`, iteration or queries; `sweep` drops it once older than the
//!   configured age.
//! - TTL: a non-tombstone with `timestamp.millis + ttlMs < now` is expired: invisible to `get`,
//!   iteration, queries and sync leaves at once, but it stays in the map *and in the Merkle tree*
//!   until `sweep` removes it from both. The root may thus count an entry no leaf lists for up
//!   to one sweep interval; the client then just walks down and finds nothing to merge.
//! - Known limit shared by both kinds of removal: once a key is swept, a delayed write older
//!   than the swept record is accepted again (there is nothing left to compare it with). The
//!   tombstone age bounds how late such a write may arrive for deletes.
use std::collections::HashMap;

use crate::protocol::types::LwwRecord;
use crate::shard::merkle::{LeafPath, MerkleTree};

/// Default age after which a tombstone is garbage-collected: 7 days. Long enough for clients
/// that were offline that long to learn the delete through sync.
pub const DEFAULT_TOMBSTONE_MAX_AGE_MS: u64 = 7 * 24 * 60 * 60 * 1000;

/// Whether a record's TTL has run out at `now` (`millis + ttlMs < now`, the client's rule).
#[inline]
pub fn is_expired(record: &LwwRecord, now: u64) -> bool {
    record
        .ttl_ms
        .is_some_and(|ttl| record.timestamp.millis.saturating_add(ttl) < now)
}

/// Whether reads and queries see the record: neither a tombstone nor expired.
#[inline]
pub fn is_visible(record: &LwwRecord, now: u64) -> bool {
    !record.is_tombstone() && !is_expired(record, now)
}

/// Whether a sync leaf lists the record: tombstones yes (deletes must reach clients), expired
/// values no (they are gone for every reader).
#[inline]
pub fn is_synced(record: &LwwRecord, now: u64) -> bool {
    record.is_tombstone() || !is_expired(record, now)
}

#[derive(Debug, Clone, PartialEq)]
pub enum MergeOutcome {
    /// The record is now stored. `previous` is the record it replaced, as stored (it may have
    /// been a tombstone or expired: check with [`is_visible`]).
    Applied { previous: Option<LwwRecord> },
    /// The stored record's timestamp is equal or greater; nothing changed.
    Stale,
}

impl MergeOutcome {
    pub fn is_applied(&self) -> bool {
        matches!(self, MergeOutcome::Applied { .. })
    }
}

/// Why `sweep` dropped a key. Expired keys were visible until their TTL ran out, so live
/// queries that still hold them need a LEAVE; purged tombstones were invisible already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SweptKind {
    Expired,
    Tombstone,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Swept {
    pub key: String,
    pub kind: SweptKind,
    /// The removed record's timestamp: an expiry is announced to live subscribers with it,
    /// so clients that merge the announcement never take it for a newer write.
    pub timestamp: crate::protocol::types::Timestamp,
}

#[derive(Debug, Clone, Default)]
pub struct LwwMap {
    entries: HashMap<Box<str>, LwwRecord>,
    tree: MerkleTree,
    /// Stored tombstones, kept as a counter so metrics and `sweep` need no scan.
    tombstones: usize,
    /// Stored non-tombstones with a TTL; `sweep` skips its scan when this and `tombstones`
    /// are both 0, which is the common case for maps that never delete.
    with_ttl: usize,
}

impl LwwMap {
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies `record` to `key` under the LWW rule (module header). O(1) map work plus an
    /// O(depth) Merkle update; allocates only for a key seen for the first time.
    pub fn merge(&mut self, key: &str, record: LwwRecord) -> MergeOutcome {
        let (new_t, new_l) = Self::weights(&record);
        let previous = match self.entries.get_mut(key) {
            Some(current) => {
                if record.timestamp <= current.timestamp {
                    return MergeOutcome::Stale;
                }
                self.tree.update(key, &record.timestamp);
                Some(std::mem::replace(current, record))
            }
            None => {
                self.tree.update(key, &record.timestamp);
                self.entries.insert(key.into(), record);
                None
            }
        };
        if let Some(prev) = &previous {
            self.uncount(prev);
        }
        self.tombstones += new_t;
        self.with_ttl += new_l;
        MergeOutcome::Applied { previous }
    }

    fn weights(r: &LwwRecord) -> (usize, usize) {
        if r.is_tombstone() {
            (1, 0)
        } else {
            (0, usize::from(r.ttl_ms.is_some()))
        }
    }

    fn uncount(&mut self, r: &LwwRecord) {
        let (t, l) = Self::weights(r);
        self.tombstones -= t;
        self.with_ttl -= l;
    }

    /// The visible record of `key` (`None` for a tombstone, an expired entry or no entry).
    pub fn get(&self, key: &str, now: u64) -> Option<&LwwRecord> {
        self.entries.get(key).filter(|r| is_visible(r, now))
    }

    /// The stored record of `key` whatever its state (tombstones and expired entries too): what
    /// LWW compares against.
    pub fn get_stored(&self, key: &str) -> Option<&LwwRecord> {
        self.entries.get(key)
    }

    /// Visible entries, in no particular order.
    pub fn iter_live(&self, now: u64) -> impl Iterator<Item = (&str, &LwwRecord)> + '_ {
        self.entries
            .iter()
            .filter(move |(_, r)| is_visible(r, now))
            .map(|(k, r)| (&**k, r))
    }

    /// Every stored entry (tombstones and expired ones included): for persistence snapshots.
    pub fn iter_stored(&self) -> impl Iterator<Item = (&str, &LwwRecord)> + '_ {
        self.entries.iter().map(|(k, r)| (&**k, r))
    }

    /// Stored non-tombstone entries. Entries whose TTL ran out count until the next sweep (an
    /// exact count would need the clock on every read of a metric).
    pub fn live_len(&self) -> usize {
        self.entries.len() - self.tombstones
    }

    pub fn tombstone_len(&self) -> usize {
        self.tombstones
    }

    /// Stored entries of any kind.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Drops tombstones older than `tombstone_max_age_ms` and expired entries, from the map and
    /// the Merkle tree. A full scan, skipped when the map holds neither kind; callers run it on
    /// a timer, not per op.
    pub fn sweep(&mut self, now: u64, tombstone_max_age_ms: u64) -> Vec<Swept> {
        if self.tombstones == 0 && self.with_ttl == 0 {
            return Vec::new();
        }
        let mut swept = Vec::new();
        self.entries.retain(|key, r| {
            let kind = if r.is_tombstone() {
                let purge = r.timestamp.millis.saturating_add(tombstone_max_age_ms) < now;
                purge.then_some(SweptKind::Tombstone)
            } else {
                is_expired(r, now).then_some(SweptKind::Expired)
            };
            match kind {
                Some(kind) => {
                    swept.push(Swept {
                        key: key.to_string(),
                        kind,
                        timestamp: r.timestamp.clone(),
                    });
                    false
                }
                None => true,
            }
        });
        for s in &swept {
            self.tree.remove(&s.key);
            match s.kind {
                SweptKind::Tombstone => self.tombstones -= 1,
                SweptKind::Expired => self.with_ttl -= 1,
            }
        }
        swept
    }

    /// Removes every key `drop` selects, from the map and the Merkle tree (a partition handed
    /// to its new holders); returns the removed keys.
    pub fn remove_keys(&mut self, mut drop: impl FnMut(&str) -> bool) -> Vec<String> {
        let mut removed = Vec::new();
        let mut uncounted = (0, 0);
        self.entries.retain(|key, r| {
            if !drop(key) {
                return true;
            }
            let (t, l) = Self::weights(r);
            uncounted.0 += t;
            uncounted.1 += l;
            removed.push(key.to_string());
            false
        });
        self.tombstones -= uncounted.0;
        self.with_ttl -= uncounted.1;
        for key in &removed {
            self.tree.remove(key);
        }
        removed
    }

    pub fn merkle(&self) -> &MerkleTree {
        &self.tree
    }

    pub fn merkle_root(&self) -> u32 {
        self.tree.root()
    }

    /// See [`MerkleTree::buckets`].
    pub fn merkle_buckets(&self, path: &str) -> Option<std::collections::BTreeMap<char, u32>> {
        self.tree.buckets(path)
    }

    /// Leaf hashes for a cross-store [`crate::shard::merkle::MerkleUnion`].
    pub fn merkle_leaf_hashes(&self) -> Vec<(LeafPath, u32)> {
        self.tree.leaf_hashes()
    }

    /// The records a `SYNC_RESP_LEAF` for the 3-char `path` lists: tombstones included (so the
    /// client learns deletes), expired entries excluded. `None` if no such leaf exists.
    pub fn leaf_records(&self, path: &str, now: u64) -> Option<Vec<(&str, &LwwRecord)>> {
        let keys = self.tree.leaf_keys(path)?;
        Some(
            keys.into_iter()
                .filter_map(|k| {
                    let (key, r) = self.entries.get_key_value(k)?;
                    is_synced(r, now).then_some((&**key, r))
                })
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::types::Timestamp;
    use rmpv::Value;

    fn rec(v: impl Into<Value>, millis: u64, counter: u32, node: &str) -> LwwRecord {
        LwwRecord {
            value: v.into(),
            timestamp: Timestamp {
                millis,
                counter,
                node_id: node.into(),
            },
            ttl_ms: None,
        }
    }

    fn tomb(millis: u64) -> LwwRecord {
        rec(Value::Nil, millis, 0, "n")
    }

    #[test]
    fn newer_wins_older_and_equal_are_stale() {
        let mut m = LwwMap::new();
        assert_eq!(
            m.merge("k", rec(1, 100, 0, "a")),
            MergeOutcome::Applied { previous: None }
        );
        assert_eq!(m.merge("k", rec(2, 99, 9, "z")), MergeOutcome::Stale);
        assert_eq!(m.merge("k", rec(3, 100, 0, "a")), MergeOutcome::Stale);
        // Same millis and counter: node id bytes break the tie.
        assert_eq!(
            m.merge("k", rec(4, 100, 0, "b")),
            MergeOutcome::Applied {
                previous: Some(rec(1, 100, 0, "a"))
            }
        );
        assert_eq!(m.get("k", 0).map(|r| &r.value), Some(&Value::from(4)));
    }

    #[test]
    fn tombstones_hide_count_and_stay_in_tree() {
        let mut m = LwwMap::new();
        m.merge("a", rec("x", 100, 0, "n"));
        m.merge("b", rec("y", 100, 0, "n"));
        let root_before = m.merkle_root();
        m.merge("a", tomb(200));
        assert_eq!(m.get("a", 0), None);
        assert!(m.get_stored("a").is_some_and(LwwRecord::is_tombstone));
        assert_eq!((m.live_len(), m.tombstone_len(), m.len()), (1, 1, 2));
        assert_ne!(m.merkle_root(), root_before, "the tombstone re-hashes a");
        assert_eq!(m.merkle().len(), 2);
        let keys: Vec<_> = m.iter_live(0).map(|(k, _)| k).collect();
        assert_eq!(keys, vec!["b"]);
        // The sync leaf of "a" lists the tombstone.
        let path = crate::shard::merkle::path_string(&crate::shard::merkle::leaf_path_of("a"));
        let leaf = m.leaf_records(&path, 0).unwrap();
        assert!(leaf.iter().any(|(k, r)| *k == "a" && r.is_tombstone()));
        // A stale write cannot resurrect it.
        assert_eq!(m.merge("a", rec("old", 150, 0, "n")), MergeOutcome::Stale);
        // A newer one can.
        m.merge("a", rec("new", 300, 0, "n"));
        assert_eq!((m.live_len(), m.tombstone_len()), (2, 0));
    }

    #[test]
    fn tombstone_gc_after_max_age() {
        let mut m = LwwMap::new();
        m.merge("a", tomb(1_000));
        m.merge("b", rec(1, 1_000, 0, "n"));
        assert!(m.sweep(1_500, 500).is_empty(), "not older than the age yet");
        let swept = m.sweep(1_501, 500);
        assert_eq!(
            swept,
            vec![Swept {
                key: "a".into(),
                kind: SweptKind::Tombstone,
                timestamp: tomb(1_000).timestamp,
            }]
        );
        assert_eq!((m.len(), m.tombstone_len()), (1, 0));
        let mut only_b = LwwMap::new();
        only_b.merge("b", rec(1, 1_000, 0, "n"));
        assert_eq!(m.merkle_root(), only_b.merkle_root());
        assert_eq!(m.merkle().len(), 1);
    }

    #[test]
    fn ttl_expiry_is_invisible_then_swept() {
        let mut m = LwwMap::new();
        let mut r = rec("v", 1_000, 0, "n");
        r.ttl_ms = Some(100);
        m.merge("t", r);
        m.merge("p", rec("keep", 1_000, 0, "n"));
        let path = crate::shard::merkle::path_string(&crate::shard::merkle::leaf_path_of("t"));
        // Exactly at millis + ttl it is still visible (`<`, the client's rule).
        assert!(m.get("t", 1_100).is_some());
        assert!(m.get("t", 1_101).is_none());
        assert_eq!(m.iter_live(1_101).count(), 1);
        assert!(m
            .leaf_records(&path, 1_101)
            .unwrap()
            .iter()
            .all(|(k, _)| *k != "t"));
        // Still in the tree until swept.
        assert_eq!(m.merkle().len(), 2);
        let swept = m.sweep(1_101, DEFAULT_TOMBSTONE_MAX_AGE_MS);
        assert_eq!(
            swept,
            vec![Swept {
                key: "t".into(),
                kind: SweptKind::Expired,
                timestamp: rec("v", 1_000, 0, "n").timestamp,
            }]
        );
        assert_eq!((m.len(), m.merkle().len()), (1, 1));
        assert!(m.sweep(10_000, DEFAULT_TOMBSTONE_MAX_AGE_MS).is_empty());
    }

    #[test]
    fn ttl_overflow_never_panics() {
        let mut m = LwwMap::new();
        let mut r = rec("v", u64::MAX, 0, "n");
        r.ttl_ms = Some(u64::MAX);
        m.merge("t", r);
        assert!(m.get("t", u64::MAX).is_some());
        assert!(m.sweep(u64::MAX, u64::MAX).is_empty());
    }

    #[test]
    fn counters_follow_replacements() {
        let mut m = LwwMap::new();
        let mut r = rec("v", 1, 0, "n");
        r.ttl_ms = Some(5);
        m.merge("k", r);
        m.merge("k", tomb(2));
        m.merge("k", rec("w", 3, 0, "n"));
        assert_eq!((m.live_len(), m.tombstone_len()), (1, 0));
        // No tombstone and no TTL left: sweep does nothing even far in the future.
        assert!(m.sweep(u64::MAX, 0).is_empty());
    }

    mod convergence {
        use super::*;
        use proptest::prelude::*;

        type RawOp = (u8, u64, u32, u8, Option<i64>, Option<u64>);

        /// Ops with unique timestamps per (millis, counter, node): honest HLCs never reuse one.
        fn ops() -> impl Strategy<Value = Vec<RawOp>> {
            prop::collection::vec(
                (
                    0u8..6,
                    0u64..20,
                    0u32..3,
                    0u8..3,
                    prop::option::of(0i64..5),
                    prop::option::of(0u64..30),
                ),
                0..60,
            )
        }

        fn to_records(raw: &[RawOp]) -> Vec<(String, LwwRecord)> {
            let mut seen = std::collections::HashSet::new();
            raw.iter()
                .filter(|(k, m, c, n, _, _)| seen.insert((*k, *m, *c, *n)))
                .map(|&(k, m, c, n, v, ttl)| {
                    let mut r = rec(v.map_or(Value::Nil, Value::from), m, c, &format!("n{n}"));
                    r.ttl_ms = ttl;
                    (format!("key{k}"), r)
                })
                .collect()
        }

        proptest! {
            /// Merge is commutative, associative and idempotent: any delivery order, with
            /// duplicates, converges to the same contents and the same Merkle root.
            #[test]
            fn any_order_converges(raw in ops(), seed in any::<u64>()) {
                let ops = to_records(&raw);
                let mut a = LwwMap::new();
                for (k, r) in &ops {
                    a.merge(k, r.clone());
                }
                let mut shuffled = ops.clone();
                // Deterministic shuffle from the seed, then replay some ops twice.
                let mut s = seed | 1;
                for i in (1..shuffled.len()).rev() {
                    s ^= s << 13; s ^= s >> 7; s ^= s << 17;
                    shuffled.swap(i, (s % (i as u64 + 1)) as usize);
                }
                let dupes: Vec<_> = shuffled.iter().step_by(3).cloned().collect();
                shuffled.extend(dupes);
                let mut b = LwwMap::new();
                for (k, r) in &shuffled {
                    b.merge(k, r.clone());
                }
                let sorted = |m: &LwwMap| {
                    let mut v: Vec<_> = m.iter_stored().map(|(k, r)| (k.to_string(), r.clone())).collect();
                    v.sort_by(|x, y| x.0.cmp(&y.0));
                    v
                };
                prop_assert_eq!(sorted(&a), sorted(&b));
                prop_assert_eq!(a.merkle_root(), b.merkle_root());
                prop_assert_eq!((a.live_len(), a.tombstone_len()), (b.live_len(), b.tombstone_len()));
                // Sweeping both at the same instant keeps them equal.
                a.sweep(25, 5);
                b.sweep(25, 5);
                prop_assert_eq!(sorted(&a), sorted(&b));
                prop_assert_eq!(a.merkle_root(), b.merkle_root());
                // The incremental tree equals one rebuilt from the contents.
                let mut rebuilt = MerkleTree::new();
                for (k, r) in a.iter_stored() {
                    rebuilt.update(k, &r.timestamp);
                }
                prop_assert_eq!(rebuilt.root(), a.merkle_root());
            }
        }
    }
}
