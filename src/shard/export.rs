//! A store's partitions exported in pieces, for a peer's pull and for a handover: first the
//! keys of some partitions are listed in one pass over the store, then their records are read
//! a chunk at a time, each chunk cut by an estimate of its encoded size. So the exporter holds
//! keys, not records, and a record written after the listing goes out in its newer version
//! (the receiver merges by LWW/OR, so either version is correct to send).
//!
//! Records go out as client ops another node merges: LWW records as PUT (tombstones and
//! not-yet-swept expired entries included), OR records as OR_ADD and removed tags as
//! OR_REMOVE.
use rmpv::Value;

use crate::protocol::ClientOp;
use crate::shard::fnv::{partition_of, PARTITION_COUNT};
use crate::shard::store::MapStore;

/// The keys one partition stores, per map.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct PartitionKeys {
    pub partition: u16,
    pub maps: Vec<MapKeys>,
    /// The partition's last change when its keys were listed (`MapStore::census`): a
    /// handover drops the partition only if it did not change since.
    pub touched: u64,
}

impl PartitionKeys {
    pub fn len(&self) -> usize {
        self.maps.iter().map(|m| m.keys.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.maps.iter().all(|m| m.keys.is_empty())
    }
}

/// Keys of one map, still to be exported; taken from the end.
#[derive(Debug, Clone, PartialEq)]
pub struct MapKeys {
    pub map: String,
    pub or: bool,
    pub keys: Vec<Box<str>>,
}

/// One pass over `store`: the keys of each partition it owns that is marked in `wanted`
/// (indexed by partition id), in partition order, partitions without keys included.
pub fn list_keys(store: &MapStore, wanted: &[bool]) -> Vec<PartitionKeys> {
    let mut slot: Vec<Option<usize>> = vec![None; usize::from(PARTITION_COUNT)];
    let mut out: Vec<PartitionKeys> = Vec::new();
    for partition in store.partitions() {
        if wanted.get(usize::from(partition)).copied().unwrap_or(false) {
            slot[usize::from(partition)] = Some(out.len());
            out.push(PartitionKeys {
                partition,
                maps: Vec::new(),
                touched: store.census(partition).1,
            });
        }
    }
    if out.is_empty() {
        return out;
    }
    let mut buckets: Vec<Vec<Box<str>>> = vec![Vec::new(); out.len()];
    // Buckets filled by the current map: a store may hold many small maps.
    let mut filled: Vec<usize> = Vec::new();
    let mut gather = |map: &str, or: bool, keys: &mut dyn Iterator<Item = &str>| {
        for key in keys {
            if let Some(i) = slot[usize::from(partition_of(key))] {
                if buckets[i].is_empty() {
                    filled.push(i);
                }
                buckets[i].push(key.into());
            }
        }
        for i in filled.drain(..) {
            out[i].maps.push(MapKeys {
                map: map.to_owned(),
                or,
                keys: std::mem::take(&mut buckets[i]),
            });
        }
    };
    for (map, m) in store.lww_maps() {
        gather(map, false, &mut m.iter_stored().map(|(k, _)| k));
    }
    for (map, m) in store.or_maps() {
        gather(map, true, &mut m.keys());
    }
    out
}

/// Reads the records of keys taken from the end of `keys` until the chunk reaches
/// `max_bytes` (estimated) or `max_ops`; at least one key is taken when any is left. Keys
/// whose records are gone since the listing (swept) are skipped.
pub fn read_chunk(
    store: &MapStore,
    keys: &mut MapKeys,
    max_bytes: usize,
    max_ops: usize,
) -> Vec<ClientOp> {
    let mut out = Vec::new();
    let mut bytes = 0usize;
    while bytes < max_bytes && out.len() < max_ops {
        let Some(key) = keys.keys.pop() else {
            break;
        };
        if keys.or {
            let Some(m) = store.or_map(&keys.map) else {
                continue;
            };
            // `now = 0`: nothing counts as expired, the receiver sweeps by its own clock.
            for record in m.get(&key, 0) {
                bytes += approx_len(&record.value) + key.len() + record.tag.len() + 64;
                out.push(ClientOp {
                    or_record: Some(record.clone()),
                    ..op(&keys.map, &key, "OR_ADD")
                });
            }
            for tag in m.removed_tags(&key) {
                bytes += key.len() + tag.len() + 48;
                out.push(ClientOp {
                    or_tag: Some(tag.to_owned()),
                    ..op(&keys.map, &key, "OR_REMOVE")
                });
            }
        } else if let Some(record) = store.lww_map(&keys.map).and_then(|m| m.get_stored(&key)) {
            bytes += approx_len(&record.value) + key.len() + 64;
            out.push(ClientOp {
                record: Some(Some(record.clone())),
                ..op(&keys.map, &key, "PUT")
            });
        }
    }
    out
}

fn op(map: &str, key: &str, op_type: &str) -> ClientOp {
    ClientOp {
        id: None,
        map_name: map.to_owned(),
        key: key.to_owned(),
        op_type: Some(op_type.to_owned()),
        record: None,
        or_record: None,
        or_tag: None,
        write_concern: None,
        timeout: None,
    }
}

/// About the MessagePack size of `v` (exact for scalars and strings, headers rounded up):
/// enough to cut chunks near a byte budget without encoding twice.
pub fn approx_len(v: &Value) -> usize {
    match v {
        Value::Nil | Value::Boolean(_) => 1,
        Value::Integer(_) | Value::F32(_) | Value::F64(_) => 9,
        Value::String(s) => 5 + s.as_bytes().len(),
        Value::Binary(b) => 5 + b.len(),
        Value::Ext(_, b) => 6 + b.len(),
        Value::Array(items) => 5 + items.iter().map(approx_len).sum::<usize>(),
        Value::Map(entries) => {
            5 + entries
                .iter()
                .map(|(k, v)| approx_len(k) + approx_len(v))
                .sum::<usize>()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::types::{LwwRecord, OrMapRecord, Timestamp};

    fn ts(millis: u64) -> Timestamp {
        Timestamp {
            millis,
            counter: 0,
            node_id: "n".into(),
        }
    }

    fn lww(value: Value, millis: u64) -> LwwRecord {
        LwwRecord {
            value,
            timestamp: ts(millis),
            ttl_ms: None,
        }
    }

    fn store_with(n: usize, value: &Value) -> MapStore {
        let mut s = MapStore::new(0..PARTITION_COUNT);
        for i in 0..n {
            s.apply_lww("m", &format!("k{i}"), lww(value.clone(), 10 + i as u64));
        }
        s
    }

    #[test]
    fn keys_are_listed_per_partition_and_only_for_the_wanted_ones() {
        let mut s = store_with(3_000, &Value::from(1));
        s.apply_or_add(
            "o",
            "k7",
            OrMapRecord {
                value: 1.into(),
                timestamp: ts(1),
                tag: "t".into(),
                ttl_ms: None,
            },
        );
        let wanted: Vec<bool> = (0..PARTITION_COUNT).map(|p| p % 3 == 0).collect();
        let listed = list_keys(&s, &wanted);
        let mut total = 0;
        for p in &listed {
            assert!(wanted[usize::from(p.partition)]);
            assert_eq!(p.touched, s.census(p.partition).1);
            for m in &p.maps {
                for k in &m.keys {
                    assert_eq!(partition_of(k), p.partition);
                }
            }
            total += p
                .maps
                .iter()
                .filter(|m| !m.or)
                .map(|m| m.keys.len())
                .sum::<usize>();
        }
        let expected = (0..3_000)
            .filter(|i| wanted[usize::from(partition_of(&format!("k{i}")))])
            .count();
        assert_eq!(total, expected);
        assert!(listed.windows(2).all(|w| w[0].partition < w[1].partition));
        // Every wanted partition is listed, the empty ones too (a handover needs `touched`).
        assert_eq!(listed.len(), wanted.iter().filter(|w| **w).count());
        let or_partition = partition_of("k7");
        let or_listed = listed
            .iter()
            .flat_map(|p| &p.maps)
            .any(|m| m.or && m.keys.iter().any(|k| &**k == "k7"));
        assert_eq!(or_listed, wanted[usize::from(or_partition)]);
    }

    #[test]
    fn chunks_are_cut_by_estimated_bytes_and_by_count() {
        let big = Value::Binary(vec![0u8; 10_000]);
        let s = store_with(100, &big);
        let all = vec![true; usize::from(PARTITION_COUNT)];
        let mut keys: Vec<MapKeys> = list_keys(&s, &all)
            .into_iter()
            .flat_map(|p| p.maps)
            .collect();
        let mut chunks = Vec::new();
        for m in &mut keys {
            while !m.keys.is_empty() {
                chunks.push(read_chunk(&s, m, 25_000, 1_000));
            }
        }
        // 10 kB records against a 25 kB budget: three per chunk (the third crosses it).
        assert!(
            chunks.iter().all(|c| !c.is_empty() && c.len() <= 3),
            "{chunks:?}"
        );
        assert_eq!(chunks.iter().map(Vec::len).sum::<usize>(), 100);
        // Small records: the op count cuts.
        let s = store_with(100, &Value::from(1));
        let mut m = MapKeys {
            map: "m".into(),
            or: false,
            keys: (0..100).map(|i| format!("k{i}").into()).collect(),
        };
        assert_eq!(read_chunk(&s, &mut m, 1 << 20, 30).len(), 30);
        assert_eq!(m.keys.len(), 70);
    }

    #[test]
    fn a_key_gone_since_the_listing_is_skipped_and_a_newer_record_sent() {
        let mut s = store_with(10, &Value::from(1));
        let mut m = MapKeys {
            map: "m".into(),
            or: false,
            keys: vec!["k1".into(), "absent".into(), "k2".into()],
        };
        s.apply_lww("m", "k1", lww(Value::from(2), 1_000));
        let ops = read_chunk(&s, &mut m, 1 << 20, 100);
        let keys: Vec<&str> = ops.iter().map(|o| o.key.as_str()).collect();
        assert_eq!(keys, vec!["k2", "k1"]);
        assert_eq!(
            ops[1].lww_record().map(|r| r.value.clone()),
            Some(Value::from(2))
        );
    }

    #[test]
    fn the_size_estimate_is_near_the_encoding() {
        let v = Value::Map(vec![
            (Value::from("name"), Value::from("x".repeat(300))),
            (
                Value::from("tags"),
                Value::Array(vec![Value::from(1), Value::from("abc")]),
            ),
        ]);
        let mut exact = Vec::new();
        rmpv::encode::write_value(&mut exact, &v).expect("encode");
        let est = approx_len(&v);
        assert!(
            est >= exact.len() && est <= exact.len() + 32,
            "{est} vs {}",
            exact.len()
        );
    }
}
