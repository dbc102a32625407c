//! One OR-Map (protocol.md 4.4): `key → {tag → OrMapRecord}` plus the tags removed from that
//! key. An add is visible until its tag is removed; a removed tag stays removed, so an add
//! delivered after its remove does not come back (observed-remove semantics).
//!
//! Project decisions: the client's `tag` is kept as sent (it is the record's identity on the
//! client, so re-tagging would make client and server disagree about which record a later
//! OR_REMOVE names); only an empty tag is replaced, by the record timestamp's string form
//! `"<millis>:<counter>:<nodeId>"` (the reference's tag format). Removed tags are kept forever
//! (no GC yet) and the OR Merkle sync of 4.4 is not implemented here. TTL hides expired records
//! from `get`; `sweep` drops them.
use std::collections::{BTreeMap, HashMap, HashSet};

use crate::protocol::types::OrMapRecord;

#[derive(Debug, Clone, PartialEq)]
pub enum OrAddOutcome {
    /// The record is stored under `tag` (new, or replacing a same-tag record with an older
    /// timestamp: a re-delivery carrying a fresher stamp).
    Applied { tag: String },
    /// Nothing changed: the tag was removed already, or the same tag is stored with an equal or
    /// newer timestamp.
    Ignored { tag: String },
}

impl OrAddOutcome {
    pub fn tag(&self) -> &str {
        match self {
            OrAddOutcome::Applied { tag } | OrAddOutcome::Ignored { tag } => tag,
        }
    }
}

#[derive(Debug, Clone, Default)]
struct OrEntry {
    /// By tag: ordered so `get` returns records in a stable order.
    records: BTreeMap<String, OrMapRecord>,
    removed: HashSet<String>,
}

#[derive(Debug, Clone, Default)]
pub struct OrMap {
    entries: HashMap<Box<str>, OrEntry>,
    records: usize,
    removed: usize,
}

fn expired(r: &OrMapRecord, now: u64) -> bool {
    r.ttl_ms
        .is_some_and(|ttl| r.timestamp.millis.saturating_add(ttl) < now)
}

impl OrMap {
    pub fn new() -> Self {
        Self::default()
    }

    /// OR_ADD. Keeps the client's tag unless empty (module header).
    pub fn add(&mut self, key: &str, mut record: OrMapRecord) -> OrAddOutcome {
        if record.tag.is_empty() {
            record.tag = record.timestamp.to_string();
        }
        let tag = record.tag.clone();
        let entry = match self.entries.get_mut(key) {
            Some(e) => e,
            None => self.entries.entry(key.into()).or_default(),
        };
        if entry.removed.contains(&tag) {
            return OrAddOutcome::Ignored { tag };
        }
        match entry.records.get_mut(&tag) {
            Some(current) if record.timestamp <= current.timestamp => OrAddOutcome::Ignored { tag },
            Some(current) => {
                *current = record;
                OrAddOutcome::Applied { tag }
            }
            None => {
                entry.records.insert(tag.clone(), record);
                self.records += 1;
                OrAddOutcome::Applied { tag }
            }
        }
    }

    /// OR_REMOVE: tombstones `tag` under `key` whether or not it was seen yet. Returns the
    /// record it removed, if one was stored.
    pub fn remove(&mut self, key: &str, tag: &str) -> Option<OrMapRecord> {
        let entry = match self.entries.get_mut(key) {
            Some(e) => e,
            None => self.entries.entry(key.into()).or_default(),
        };
        if entry.removed.insert(tag.to_string()) {
            self.removed += 1;
        }
        let gone = entry.records.remove(tag);
        if gone.is_some() {
            self.records -= 1;
        }
        gone
    }

    /// The visible records of `key` (not removed, not expired), in tag order.
    pub fn get(&self, key: &str, now: u64) -> Vec<&OrMapRecord> {
        self.entries
            .get(key)
            .map(|e| e.records.values().filter(|r| !expired(r, now)).collect())
            .unwrap_or_default()
    }

    /// The removed tags of `key` (for an OR sync leaf), unordered.
    pub fn removed_tags(&self, key: &str) -> impl Iterator<Item = &str> + '_ {
        self.entries
            .get(key)
            .into_iter()
            .flat_map(|e| e.removed.iter().map(String::as_str))
    }

    /// Keys known to the map (with records or only removed tags).
    pub fn keys(&self) -> impl Iterator<Item = &str> + '_ {
        self.entries.keys().map(|k| &**k)
    }

    pub fn key_len(&self) -> usize {
        self.entries.len()
    }

    /// Stored records (expired ones count until swept).
    pub fn record_len(&self) -> usize {
        self.records
    }

    /// Removed tags kept as tombstones.
    pub fn tombstone_len(&self) -> usize {
        self.removed
    }

    /// Drops expired records. Their tags are not tombstoned: a re-delivered add carries the
    /// same TTL and is expired again.
    pub fn sweep(&mut self, now: u64) -> usize {
        self.sweep_keys(now).0
    }

    /// [`OrMap::sweep`], also returning the keys left with nothing (they are gone).
    pub fn sweep_keys(&mut self, now: u64) -> (usize, Vec<Box<str>>) {
        let mut dropped = 0;
        for e in self.entries.values_mut() {
            let before = e.records.len();
            e.records.retain(|_, r| !expired(r, now));
            dropped += before - e.records.len();
        }
        let mut gone = Vec::new();
        self.entries.retain(|k, e| {
            let keep = !e.records.is_empty() || !e.removed.is_empty();
            if !keep {
                gone.push(k.clone());
            }
            keep
        });
        self.records -= dropped;
        (dropped, gone)
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.entries.contains_key(key)
    }

    /// Removes every key `drop` selects, with its records and removed tags: (key, tags of its
    /// records, removed tags), so storage can delete them too.
    pub fn remove_keys(
        &mut self,
        mut drop: impl FnMut(&str) -> bool,
    ) -> Vec<(String, Vec<String>, Vec<String>)> {
        let mut out = Vec::new();
        self.entries.retain(|k, e| {
            if !drop(k) {
                return true;
            }
            let tags: Vec<String> = e.records.keys().cloned().collect();
            let removed: Vec<String> = e.removed.iter().cloned().collect();
            out.push((k.to_string(), tags, removed));
            false
        });
        for (_, tags, removed) in &out {
            self.records -= tags.len();
            self.removed -= removed.len();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::types::Timestamp;
    use rmpv::Value;

    fn rec(v: i64, millis: u64, tag: &str) -> OrMapRecord {
        OrMapRecord {
            value: Value::from(v),
            timestamp: Timestamp {
                millis,
                counter: 0,
                node_id: "n".into(),
            },
            tag: tag.into(),
            ttl_ms: None,
        }
    }

    fn values(m: &OrMap, key: &str) -> Vec<i64> {
        m.get(key, 0)
            .iter()
            .filter_map(|r| r.value.as_i64())
            .collect()
    }

    #[test]
    fn add_remove_and_counts() {
        let mut m = OrMap::new();
        assert_eq!(
            m.add("k", rec(1, 10, "t1")),
            OrAddOutcome::Applied { tag: "t1".into() }
        );
        m.add("k", rec(2, 11, "t2"));
        assert_eq!(values(&m, "k"), vec![1, 2]);
        assert_eq!(m.remove("k", "t1").map(|r| r.tag), Some("t1".into()));
        assert_eq!(values(&m, "k"), vec![2]);
        assert_eq!((m.key_len(), m.record_len(), m.tombstone_len()), (1, 1, 1));
        assert_eq!(m.removed_tags("k").collect::<Vec<_>>(), vec!["t1"]);
        assert!(m.get("other", 0).is_empty());
    }

    #[test]
    fn remove_before_add_wins() {
        let mut m = OrMap::new();
        assert_eq!(m.remove("k", "t1"), None);
        assert_eq!(
            m.add("k", rec(1, 10, "t1")),
            OrAddOutcome::Ignored { tag: "t1".into() }
        );
        assert!(values(&m, "k").is_empty());
    }

    #[test]
    fn same_tag_keeps_newest_and_empty_tag_gets_timestamp() {
        let mut m = OrMap::new();
        m.add("k", rec(1, 10, "t"));
        assert!(matches!(
            m.add("k", rec(2, 9, "t")),
            OrAddOutcome::Ignored { .. }
        ));
        assert!(matches!(
            m.add("k", rec(3, 11, "t")),
            OrAddOutcome::Applied { .. }
        ));
        assert_eq!(values(&m, "k"), vec![3]);
        let out = m.add("k", rec(4, 12, ""));
        assert_eq!(out.tag(), "12:0:n");
        assert_eq!(m.record_len(), 2);
    }

    #[test]
    fn ttl_hides_then_sweeps() {
        let mut m = OrMap::new();
        let mut r = rec(1, 100, "t");
        r.ttl_ms = Some(10);
        m.add("k", r);
        assert_eq!(m.get("k", 110).len(), 1);
        assert!(m.get("k", 111).is_empty());
        assert_eq!(m.sweep(111), 1);
        assert_eq!((m.key_len(), m.record_len()), (0, 0));
    }
}
