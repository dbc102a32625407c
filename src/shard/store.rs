//! `MapStore`: the named LWW maps and OR maps of one set of partitions (what one shard owns),
//! created on first write. The single entry point for applying ops, reads, queries, sweeps,
//! counters and Merkle access per map. It does not route keys (the caller sends a key only to
//! the store owning `partition_of(key)`), stamp or check timestamps (`hlc.rs`), or talk to
//! anyone (the `ShardActor` wraps it).
//!
//! Merkle across stores: each store keeps one client-shaped tree per map over its own keys.
//! Stores hold disjoint keys, so the node-wide tree of a map is rebuilt exactly by feeding every
//! store's `merkle_leaf_hashes(map)` into one `MerkleUnion` (root and buckets), and a leaf's
//! records are the concatenation of every store's `leaf_records(map, path, now)`.
use std::collections::{BTreeMap, HashMap};

use crate::protocol::types::{LwwRecord, OrMapRecord};
use crate::shard::aggregate::Groups;
use crate::shard::digest;
use crate::shard::fnv::{partition_of, PARTITION_COUNT};
use crate::shard::lww::{LwwMap, MergeOutcome, Swept};
use crate::shard::merkle::LeafPath;
use crate::shard::ormap::{OrAddOutcome, OrMap};
use crate::shard::query::{CompiledQuery, PartialResult, QueryPage};
use crate::storage::Mutation;

/// Per-map counters for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MapStats {
    /// LWW entries that are not tombstones (expired ones count until swept).
    pub live: usize,
    pub tombstones: usize,
    pub or_records: usize,
    pub or_tombstones: usize,
}

/// Whether `key` is in `partitions` (no set: every key).
fn within(partitions: Option<&[bool]>, key: &str) -> bool {
    partitions.is_none_or(|set| {
        set.get(usize::from(partition_of(key)))
            .copied()
            .unwrap_or(false)
    })
}

#[derive(Debug, Clone)]
pub struct MapStore {
    /// Indexed by partition id: whether this store owns it.
    owned: Vec<bool>,
    lww: HashMap<String, LwwMap>,
    or: HashMap<String, OrMap>,
    /// Indexed by partition id: keys stored (LWW keys with tombstones, and OR keys).
    keys: Vec<u64>,
    /// Indexed by partition id: the value of `changes` at the partition's last change, so a
    /// partition handed to its new holders is dropped only if nothing changed since.
    touched: Vec<u64>,
    changes: u64,
}

impl MapStore {
    /// A store for `partitions` (ids at or above 271 are ignored).
    pub fn new(partitions: impl IntoIterator<Item = u16>) -> Self {
        let mut owned = vec![false; usize::from(PARTITION_COUNT)];
        for p in partitions {
            if let Some(slot) = owned.get_mut(usize::from(p)) {
                *slot = true;
            }
        }
        MapStore {
            owned,
            lww: HashMap::new(),
            or: HashMap::new(),
            keys: vec![0; usize::from(PARTITION_COUNT)],
            touched: vec![0; usize::from(PARTITION_COUNT)],
            changes: 0,
        }
    }

    /// Whether `key` routes to this store. For the caller's assertions: applying a foreign key
    /// works but breaks the disjointness the Merkle union relies on.
    pub fn owns(&self, key: &str) -> bool {
        self.owned
            .get(usize::from(partition_of(key)))
            .copied()
            .unwrap_or(false)
    }

    pub fn partitions(&self) -> impl Iterator<Item = u16> + '_ {
        (0..PARTITION_COUNT).filter(|&p| self.owned[usize::from(p)])
    }

    // The apply paths try `get_mut` first, so the map name is copied only for a new map.
    fn lww_mut(&mut self, map: &str) -> &mut LwwMap {
        self.lww.entry(map.to_string()).or_default()
    }

    fn or_mut(&mut self, map: &str) -> &mut OrMap {
        self.or.entry(map.to_string()).or_default()
    }

    /// PUT or REMOVE (a tombstone record) under the LWW rule.
    pub fn apply_lww(&mut self, map: &str, key: &str, record: LwwRecord) -> MergeOutcome {
        let outcome = match self.lww.get_mut(map) {
            Some(m) => m.merge(key, record),
            None => self.lww_mut(map).merge(key, record),
        };
        if let MergeOutcome::Applied { previous } = &outcome {
            self.note_change(key, previous.is_none());
        }
        outcome
    }

    pub fn apply_or_add(&mut self, map: &str, key: &str, record: OrMapRecord) -> OrAddOutcome {
        let new_key = !self.or.get(map).is_some_and(|m| m.contains_key(key));
        let outcome = match self.or.get_mut(map) {
            Some(m) => m.add(key, record),
            None => self.or_mut(map).add(key, record),
        };
        self.note_change(key, new_key);
        outcome
    }

    pub fn apply_or_remove(&mut self, map: &str, key: &str, tag: &str) -> Option<OrMapRecord> {
        let new_key = !self.or.get(map).is_some_and(|m| m.contains_key(key));
        let removed = match self.or.get_mut(map) {
            Some(m) => m.remove(key, tag),
            None => self.or_mut(map).remove(key, tag),
        };
        self.note_change(key, new_key);
        removed
    }

    fn note_change(&mut self, key: &str, new_key: bool) {
        let p = usize::from(partition_of(key));
        self.changes += 1;
        if let Some(t) = self.touched.get_mut(p) {
            *t = self.changes;
        }
        if new_key {
            if let Some(k) = self.keys.get_mut(p) {
                *k += 1;
            }
        }
    }

    fn note_gone(&mut self, key: &str) {
        if let Some(k) = self.keys.get_mut(usize::from(partition_of(key))) {
            *k = k.saturating_sub(1);
        }
    }

    /// Keys stored for `partition`, and its last change (see `touched`).
    pub fn census(&self, partition: u16) -> (u64, u64) {
        let p = usize::from(partition);
        (
            self.keys.get(p).copied().unwrap_or(0),
            self.touched.get(p).copied().unwrap_or(0),
        )
    }

    /// Removes everything stored for `partition` if it did not change since `touched` (its
    /// records were handed to their new holders as of then): the storage mutations that
    /// delete it, or `None` when it changed (hand it over again).
    pub fn drop_partition(&mut self, partition: u16, touched: u64) -> Option<Vec<Mutation>> {
        if self.census(partition).1 != touched {
            return None;
        }
        let mut purges = Vec::new();
        let of_partition = |k: &str| partition_of(k) == partition;
        for (map, m) in &mut self.lww {
            for key in m.remove_keys(of_partition) {
                purges.push(Mutation::Purge {
                    map: map.clone(),
                    key,
                });
            }
        }
        for (map, m) in &mut self.or {
            for (key, tags, removed) in m.remove_keys(of_partition) {
                purges.push(Mutation::PurgeOr {
                    map: map.clone(),
                    key,
                    tags,
                    removed,
                });
            }
        }
        if let Some(k) = self.keys.get_mut(usize::from(partition)) {
            *k = 0;
        }
        Some(purges)
    }

    /// The anti-entropy digest ([`crate::shard::digest`]) of each partition in `wanted`, in
    /// one pass over the store.
    pub fn partition_digests(&self, wanted: &[u16]) -> Vec<(u16, u64)> {
        let mut asked = vec![false; usize::from(PARTITION_COUNT)];
        for &p in wanted {
            if let Some(a) = asked.get_mut(usize::from(p)) {
                *a = true;
            }
        }
        let mut digests = vec![0u64; usize::from(PARTITION_COUNT)];
        let slot = |key: &str| {
            let p = usize::from(partition_of(key));
            asked[p].then_some(p)
        };
        for (map, m) in &self.lww {
            for (key, record) in m.iter_stored() {
                if record.is_tombstone() || record.ttl_ms.is_some() {
                    continue;
                }
                if let Some(p) = slot(key) {
                    digests[p] ^= digest::lww_record(map, key, &record.timestamp);
                }
            }
        }
        for (map, m) in &self.or {
            for key in m.keys() {
                let Some(p) = slot(key) else { continue };
                for record in m.get(key, 0).into_iter().filter(|r| r.ttl_ms.is_none()) {
                    digests[p] ^= digest::or_record(map, key, &record.tag);
                }
            }
        }
        wanted
            .iter()
            .filter(|&&p| p < PARTITION_COUNT)
            .map(|&p| (p, digests[usize::from(p)]))
            .collect()
    }

    /// The visible LWW record of `key` in `map`.
    pub fn get(&self, map: &str, key: &str, now: u64) -> Option<&LwwRecord> {
        self.lww.get(map)?.get(key, now)
    }

    /// The visible OR records of `key` in `map`.
    pub fn get_or(&self, map: &str, key: &str, now: u64) -> Vec<&OrMapRecord> {
        self.or
            .get(map)
            .map(|m| m.get(key, now))
            .unwrap_or_default()
    }

    pub fn lww_map(&self, map: &str) -> Option<&LwwMap> {
        self.lww.get(map)
    }

    pub fn or_map(&self, map: &str) -> Option<&OrMap> {
        self.or.get(map)
    }

    pub fn lww_maps(&self) -> impl Iterator<Item = (&str, &LwwMap)> + '_ {
        self.lww.iter().map(|(name, m)| (name.as_str(), m))
    }

    pub fn or_maps(&self) -> impl Iterator<Item = (&str, &OrMap)> + '_ {
        self.or.iter().map(|(name, m)| (name.as_str(), m))
    }

    /// Maps held, an LWW and an OR map of one name counted twice: cheap, for noticing new ones.
    pub fn map_count(&self) -> usize {
        self.lww.len() + self.or.len()
    }

    /// Names of maps of either kind, sorted, without duplicates.
    pub fn map_names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self
            .lww
            .keys()
            .chain(self.or.keys())
            .map(String::as_str)
            .collect();
        names.sort_unstable();
        names.dedup();
        names
    }

    pub fn stats(&self, map: &str) -> MapStats {
        let mut s = MapStats::default();
        if let Some(m) = self.lww.get(map) {
            s.live = m.live_len();
            s.tombstones = m.tombstone_len();
        }
        if let Some(m) = self.or.get(map) {
            s.or_records = m.record_len();
            s.or_tombstones = m.tombstone_len();
        }
        s
    }

    /// This store's share of a query over the visible records of LWW map `map` (6.1: only LWW
    /// records take part). Combine shares with `CompiledQuery::merge`.
    pub fn query(&self, map: &str, query: &CompiledQuery, now: u64, cap: usize) -> PartialResult {
        self.query_within(map, query, now, cap, None)
    }

    /// [`MapStore::query`] over the keys of `partitions` only (indexed by partition id), so
    /// that a gathered read counts each partition at one holder.
    pub fn query_within(
        &self,
        map: &str,
        query: &CompiledQuery,
        now: u64,
        cap: usize,
        partitions: Option<&[bool]>,
    ) -> PartialResult {
        match self.lww.get(map) {
            Some(m) => query.select(
                m.iter_live(now)
                    .filter(|(k, _)| within(partitions, k))
                    .map(|(k, r)| (k, &r.value)),
                cap,
            ),
            None => PartialResult::default(),
        }
    }

    /// The groups of a grouped query over this store's live matching records (empty for an
    /// ungrouped query).
    pub fn group(
        &self,
        map: &str,
        query: &CompiledQuery,
        now: u64,
        partitions: Option<&[bool]>,
    ) -> Groups {
        let mut groups = Groups::default();
        if let (Some(spec), Some(m)) = (query.group(), self.lww.get(map)) {
            for (_, record) in m.iter_live(now).filter(|(k, _)| within(partitions, k)) {
                if query.matches(&record.value) {
                    groups.add(spec, &record.value);
                }
            }
        }
        groups
    }

    /// A whole page when this store is the only one holding the map.
    pub fn query_page(&self, map: &str, query: &CompiledQuery, now: u64, cap: usize) -> QueryPage {
        query.merge(&[self.query(map, query, now, cap)], cap)
    }

    /// Root of this store's tree of `map` (0 for an unknown map).
    pub fn merkle_root(&self, map: &str) -> u32 {
        self.lww.get(map).map_or(0, LwwMap::merkle_root)
    }

    /// This store's buckets at `path` (single-store use; across stores use `MerkleUnion`).
    pub fn merkle_buckets(&self, map: &str, path: &str) -> Option<BTreeMap<char, u32>> {
        self.lww.get(map)?.merkle_buckets(path)
    }

    /// This store's leaves of `map` for a `MerkleUnion`.
    pub fn merkle_leaf_hashes(&self, map: &str) -> Vec<(LeafPath, u32)> {
        self.lww
            .get(map)
            .map(LwwMap::merkle_leaf_hashes)
            .unwrap_or_default()
    }

    /// This store's leaves of `map` over the keys of `partitions` only (see
    /// `MerkleTree::leaf_hashes_where`); every leaf with `None`.
    pub fn merkle_leaf_hashes_within(
        &self,
        map: &str,
        partitions: Option<&[bool]>,
    ) -> Vec<(LeafPath, u32)> {
        match (partitions, self.lww.get(map)) {
            (_, None) => Vec::new(),
            (None, Some(m)) => m.merkle_leaf_hashes(),
            (Some(_), Some(m)) => m.merkle().leaf_hashes_where(|k| within(partitions, k)),
        }
    }

    /// Whether `key` is in `partitions` (`None`: every key).
    pub fn within(partitions: Option<&[bool]>, key: &str) -> bool {
        within(partitions, key)
    }

    /// This store's part of a `SYNC_RESP_LEAF` (see `LwwMap::leaf_records`).
    pub fn leaf_records(&self, map: &str, path: &str, now: u64) -> Option<Vec<(&str, &LwwRecord)>> {
        self.lww.get(map)?.leaf_records(path, now)
    }

    /// Sweeps every map (expired entries, old tombstones; expired OR records). Returns the
    /// swept LWW keys per map; `Expired` ones need a LEAVE for live queries holding them.
    pub fn sweep(&mut self, now: u64, tombstone_max_age_ms: u64) -> Vec<(String, Swept)> {
        let mut out = Vec::new();
        let mut gone: Vec<Box<str>> = Vec::new();
        for (name, m) in &mut self.lww {
            for s in m.sweep(now, tombstone_max_age_ms) {
                gone.push(s.key.as_str().into());
                out.push((name.clone(), s));
            }
        }
        for m in self.or.values_mut() {
            gone.extend(m.sweep_keys(now).1);
        }
        for key in gone {
            self.note_gone(&key);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::types::Timestamp;
    use crate::shard::merkle::path_string;
    use crate::shard::merkle::MerkleUnion;
    use crate::shard::query::QuerySpec;
    use rmpv::Value;

    fn rec(v: impl Into<Value>, millis: u64) -> LwwRecord {
        LwwRecord {
            value: v.into(),
            timestamp: Timestamp {
                millis,
                counter: 0,
                node_id: "n".into(),
            },
            ttl_ms: None,
        }
    }

    /// Two stores splitting the partitions, and one store holding everything.
    fn split_and_whole(n: u64) -> ([MapStore; 2], MapStore) {
        let mut parts = [
            MapStore::new((0..PARTITION_COUNT).filter(|p| p % 2 == 0)),
            MapStore::new((0..PARTITION_COUNT).filter(|p| p % 2 == 1)),
        ];
        let mut whole = MapStore::new(0..PARTITION_COUNT);
        for i in 0..n {
            let key = format!("user:{i}");
            let r = if i % 10 == 0 {
                rec(Value::Nil, 1_000 + i)
            } else {
                rec(i, 1_000 + i)
            };
            let owner = usize::from(!parts[0].owns(&key));
            assert!(parts[owner].owns(&key));
            parts[owner].apply_lww("m", &key, r.clone());
            whole.apply_lww("m", &key, r);
        }
        (parts, whole)
    }

    #[test]
    fn partition_digests_are_equal_exactly_when_the_live_records_are() {
        let (parts, whole) = split_and_whole(500);
        let all: Vec<u16> = (0..PARTITION_COUNT).collect();
        let mut split: Vec<(u16, u64)> = parts
            .iter()
            .flat_map(|s| s.partition_digests(&s.partitions().collect::<Vec<_>>()))
            .collect();
        split.sort();
        assert_eq!(split, whole.partition_digests(&all), "shards do not matter");

        let key = "user:7";
        let p = partition_of(key);
        let digest_of = |s: &MapStore| s.partition_digests(&[p])[0].1;
        let before = digest_of(&whole);
        // A newer value, then a delete, each change it; a tombstone where the other store
        // never had the key does not.
        let mut newer = whole.clone();
        newer.apply_lww("m", key, rec(99, 5_000));
        assert_ne!(digest_of(&newer), before);
        newer.apply_lww("m", key, rec(Value::Nil, 6_000));
        let mut without = MapStore::new(0..PARTITION_COUNT);
        if let Some(m) = whole.lww_map("m") {
            for (k, r) in m.iter_stored().filter(|(k, _)| *k != key) {
                without.apply_lww("m", k, r.clone());
            }
        }
        assert_eq!(digest_of(&newer), digest_of(&without));
        assert_ne!(digest_of(&newer), before);
        // OR-Map entries count by tag.
        let mut or = whole.clone();
        let add = |tag: &str| OrMapRecord {
            value: Value::from(1),
            timestamp: rec(1, 7_000).timestamp,
            tag: tag.into(),
            ttl_ms: None,
        };
        or.apply_or_add("o", key, add("t1"));
        let one = digest_of(&or);
        assert_ne!(one, before);
        or.apply_or_add("o", key, add("t2"));
        assert_ne!(digest_of(&or), one);
        or.apply_or_remove("o", key, "t2");
        assert_eq!(digest_of(&or), one);
    }

    #[test]
    fn a_partition_is_counted_and_dropped_whole_only_if_unchanged_since_its_handover() {
        let mut store = MapStore::new(0..PARTITION_COUNT);
        let keys: Vec<String> = (0..500).map(|i| format!("k{i}")).collect();
        for (i, k) in keys.iter().enumerate() {
            store.apply_lww("m", k, rec(i as i64, 10));
        }
        store.apply_or_add(
            "o",
            &keys[0],
            OrMapRecord {
                value: Value::from(1),
                timestamp: rec(0, 10).timestamp,
                tag: "t1".into(),
                ttl_ms: None,
            },
        );
        let p = partition_of(&keys[0]);
        let in_p: Vec<&String> = keys.iter().filter(|k| partition_of(k) == p).collect();
        let (count, touched) = store.census(p);
        assert_eq!(count, in_p.len() as u64 + 1, "LWW keys and the OR key");
        // A stale write does not count as a change; a new one does.
        store.apply_lww("m", in_p[0], rec(0, 5));
        assert_eq!(store.census(p).1, touched);
        store.apply_lww("m", in_p[0], rec(1, 20));
        assert!(store.drop_partition(p, touched).is_none(), "changed since");
        let (_, touched) = store.census(p);
        let purges = store.drop_partition(p, touched).expect("unchanged");
        assert_eq!(purges.len(), in_p.len() + 1);
        assert!(purges
            .iter()
            .any(|m| matches!(m, Mutation::PurgeOr { tags, .. } if tags == &["t1".to_string()])));
        assert_eq!(store.census(p).0, 0);
        for k in &keys {
            let gone = partition_of(k) == p;
            assert_eq!(store.get("m", k, 0).is_none(), gone, "{k}");
        }
        // The rest of the map and its Merkle tree are what a store without p would hold.
        let mut without = MapStore::new(0..PARTITION_COUNT);
        for (i, k) in keys
            .iter()
            .enumerate()
            .filter(|(_, k)| partition_of(k) != p)
        {
            without.apply_lww("m", k, rec(i as i64, 10));
        }
        assert_eq!(store.merkle_root("m"), without.merkle_root("m"));
        assert_eq!(store.stats("m"), without.stats("m"));
    }

    #[test]
    fn merkle_union_of_two_stores_equals_one_store() {
        let (parts, whole) = split_and_whole(3_000);
        let mut u = MerkleUnion::new();
        for s in &parts {
            for (path, h) in s.merkle_leaf_hashes("m") {
                u.add_leaf(path, h);
            }
        }
        assert_ne!(whole.merkle_root("m"), 0);
        assert_eq!(u.root(), whole.merkle_root("m"));
        for path in ["", "0", "7", "f", "00", "a5", "ff"] {
            assert_eq!(u.buckets(path), whole.merkle_buckets("m", path), "{path}");
        }
        // Leaves: the union of the stores' records equals the single store's.
        let leaves = whole.merkle_leaf_hashes("m");
        let path = &path_string(&leaves[leaves.len() / 2].0);
        let mut joined: Vec<_> = parts
            .iter()
            .filter_map(|s| s.leaf_records("m", path, 0))
            .flatten()
            .collect();
        joined.sort_by_key(|(k, _)| *k);
        let mut single = whole.leaf_records("m", path, 0).unwrap();
        assert!(!single.is_empty());
        single.sort_by_key(|(k, _)| *k);
        assert_eq!(joined, single);
    }

    #[test]
    fn query_across_stores_equals_single_store() {
        let (parts, whole) = split_and_whole(500);
        let q = CompiledQuery::new(&QuerySpec {
            limit: Some(20),
            ..Default::default()
        });
        let shares: Vec<_> = parts.iter().map(|s| s.query("m", &q, 0, 10_000)).collect();
        let page = q.merge(&shares, 10_000);
        assert_eq!(page, whole.query_page("m", &q, 0, 10_000));
        assert_eq!(page.rows.len(), 20);
        assert!(page.has_more);
        // Tombstoned keys never match.
        assert!(page.rows.iter().all(|r| !r.value.is_nil()));
    }

    #[test]
    fn maps_are_created_lazily_and_counted() {
        let mut s = MapStore::new([0, 1, 2, 500]);
        assert_eq!(s.partitions().collect::<Vec<_>>(), vec![0, 1, 2]);
        assert_eq!(s.merkle_root("none"), 0);
        assert!(s.map_names().is_empty());
        assert!(s.apply_lww("a", "k", rec(1, 10)).is_applied());
        s.apply_lww("a", "d", rec(Value::Nil, 10));
        s.apply_or_add(
            "b",
            "k",
            OrMapRecord {
                value: 1.into(),
                timestamp: Timestamp {
                    millis: 1,
                    counter: 0,
                    node_id: "n".into(),
                },
                tag: "t".into(),
                ttl_ms: None,
            },
        );
        s.apply_or_remove("b", "k", "gone");
        assert_eq!(s.map_names(), vec!["a", "b"]);
        assert_eq!(
            s.stats("a"),
            MapStats {
                live: 1,
                tombstones: 1,
                ..Default::default()
            }
        );
        assert_eq!(
            s.stats("b"),
            MapStats {
                or_records: 1,
                or_tombstones: 1,
                ..Default::default()
            }
        );
        assert_eq!(s.get("a", "k", 0).map(|r| &r.value), Some(&Value::from(1)));
        assert_eq!(s.get("a", "d", 0), None);
        assert_eq!(s.get_or("b", "k", 0).len(), 1);
        let swept = s.sweep(10 + 5 + 1, 5);
        assert_eq!(swept.len(), 1);
        assert_eq!(swept[0].0, "a");
        assert_eq!(s.stats("a").tombstones, 0);
    }
}
