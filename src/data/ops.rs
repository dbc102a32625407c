//! From wire messages to what shards and stripes understand: a client op becomes a
//! [`ShardOp`] (or a reason to reject it), a wire query a [`QuerySpec`]. Plain functions, so the
//! rules of protocol.md 4.3 and 6.1 are tested without a socket.
use std::sync::Arc;

use crate::protocol::{self, ClientOp, OpKind as WireOpKind};
use crate::shard::actor::{OpKind, ShardOp};
use crate::shard::aggregate::{AggFunc, GroupSpec};
use crate::shard::query::{Filter, Predicate, PredicateOp, QuerySpec, SortDirection, SortField};

/// The `type` label of `topgun_ops_total` for a client op.
pub fn op_label(op: &ClientOp) -> &'static str {
    match op.kind() {
        WireOpKind::Remove | WireOpKind::OrRemove => "DELETE",
        WireOpKind::OrAdd => "PUT",
        WireOpKind::Put => match op.lww_record() {
            Some(r) if r.value.is_nil() => "DELETE",
            _ => "PUT",
        },
    }
}

/// The shard op for a client op, taking it apart (no record is copied): `Ok(None)` for a PUT
/// without a record (stores nothing, still acknowledged, as the reference does).
pub fn shard_op(op: ClientOp) -> Result<Option<ShardOp>, String> {
    let kind_of = op.kind();
    let ClientOp {
        map_name,
        key,
        record,
        or_record,
        or_tag,
        ..
    } = op;
    let kind = match kind_of {
        WireOpKind::Remove => OpKind::Lww(record.flatten().map(|mut tombstone| {
            // A REMOVE keeps the client's timestamp (so an older delete cannot erase a newer
            // write) but always stores a tombstone, whatever value came along.
            tombstone.value = rmpv::Value::Nil;
            tombstone
        })),
        WireOpKind::OrAdd => match or_record {
            Some(r) => OpKind::OrAdd(r),
            None => return Err("OR_ADD without orRecord".into()),
        },
        WireOpKind::OrRemove => match or_tag {
            Some(tag) => OpKind::OrRemove { tag },
            None => return Err("OR_REMOVE without orTag".into()),
        },
        WireOpKind::Put => match record.flatten() {
            Some(r) => OpKind::Lww(Some(r)),
            None => return Ok(None),
        },
    };
    Ok(Some(ShardOp {
        map: Arc::from(map_name),
        key: Arc::from(key),
        kind,
    }))
}

/// The model query for a `QUERY_SUB`. Errors name what is not supported.
pub fn query_spec(q: &protocol::Query, fields: Option<&Vec<String>>) -> Result<QuerySpec, String> {
    let group_by = q.group_by.as_deref().unwrap_or_default();
    let aggregations = q.aggregations.as_deref().unwrap_or_default();
    let group = (!group_by.is_empty() || !aggregations.is_empty()).then(|| {
        let aggs: Vec<(AggFunc, Option<String>)> = aggregations
            .iter()
            .map(|a| {
                let func = match a.func {
                    protocol::AggregateFunc::Count => AggFunc::Count,
                    protocol::AggregateFunc::Sum => AggFunc::Sum,
                    protocol::AggregateFunc::Min => AggFunc::Min,
                    protocol::AggregateFunc::Max => AggFunc::Max,
                    protocol::AggregateFunc::Avg => AggFunc::Avg,
                };
                (func, a.field.clone())
            })
            .collect();
        GroupSpec::new(group_by, &aggs)
    });
    // protocol.md 6.1: send one of them; the reference disagrees with itself when both are
    // present. We honour `predicate` when present, as its live path does.
    let filter = match (&q.predicate, &q.where_) {
        (Some(p), _) => Filter::Predicate(predicate(p)?),
        (None, Some(w)) => Filter::Where(w.iter().map(|(k, v)| (k.clone(), v.clone())).collect()),
        (None, None) => Filter::All,
    };
    let sort = q
        .sort
        .iter()
        .flatten()
        .map(|s| SortField {
            field: s.field.clone(),
            direction: match s.direction {
                protocol::SortDirection::Asc => SortDirection::Asc,
                protocol::SortDirection::Desc => SortDirection::Desc,
            },
        })
        .collect();
    Ok(QuerySpec {
        filter,
        sort,
        limit: q.limit,
        cursor: q.cursor.clone(),
        fields: fields.cloned(),
        group,
    })
}

/// Predicate trees nest as deep as the frame allowed (256), which the decoder bounded.
fn predicate(p: &protocol::PredicateNode) -> Result<Predicate, String> {
    use protocol::PredicateOp as W;
    let op = match p.op {
        W::Eq => PredicateOp::Eq,
        W::Neq => PredicateOp::Neq,
        W::Gt => PredicateOp::Gt,
        W::Gte => PredicateOp::Gte,
        W::Lt => PredicateOp::Lt,
        W::Lte => PredicateOp::Lte,
        W::Like => PredicateOp::Like,
        W::Regex => PredicateOp::Regex,
        W::And => PredicateOp::And,
        W::Or => PredicateOp::Or,
        W::Not => PredicateOp::Not,
        W::In => PredicateOp::In,
        W::Between => PredicateOp::Between,
        W::IsNull => PredicateOp::IsNull,
        W::IsNotNull => PredicateOp::IsNotNull,
        W::ContainsAll => PredicateOp::ContainsAll,
        W::ContainsAny => PredicateOp::ContainsAny,
        W::StartsWith => PredicateOp::StartsWith,
        W::EndsWith => PredicateOp::EndsWith,
    };
    let children = p
        .children
        .iter()
        .flatten()
        .map(predicate)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Predicate {
        op,
        attribute: p.attribute.clone(),
        value: p.value.clone(),
        value_ref: p.value_ref.clone(),
        children,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::types::{LwwRecord, OrMapRecord, Timestamp};
    use crate::shard::fnv::{partition_of, PARTITION_COUNT};
    use crate::shard::store::MapStore;
    use rmpv::Value;

    fn op(op_type: Option<&str>, record: Option<Option<LwwRecord>>) -> ClientOp {
        ClientOp {
            id: Some("1".into()),
            map_name: "m".into(),
            key: "k".into(),
            op_type: op_type.map(Into::into),
            record,
            or_record: None,
            or_tag: None,
            write_concern: None,
            timeout: None,
        }
    }

    fn rec(v: rmpv::Value) -> LwwRecord {
        LwwRecord {
            value: v,
            timestamp: Timestamp {
                millis: 5,
                counter: 0,
                node_id: "c".into(),
            },
            ttl_ms: None,
        }
    }

    #[test]
    fn remove_keeps_the_client_timestamp_as_a_tombstone() {
        let o = shard_op(op(Some("REMOVE"), Some(Some(rec(1.into())))))
            .unwrap()
            .unwrap();
        match o.kind {
            OpKind::Lww(Some(r)) => {
                assert!(r.value.is_nil());
                assert_eq!(r.timestamp.millis, 5);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            shard_op(op(None, Some(None))).unwrap().unwrap().kind,
            OpKind::Lww(None)
        ));
        assert_eq!(op_label(&op(Some("REMOVE"), None)), "DELETE");
    }

    #[test]
    fn put_without_record_is_a_no_op_and_put_of_null_is_a_delete() {
        assert!(shard_op(op(None, None)).unwrap().is_none());
        assert_eq!(
            op_label(&op(None, Some(Some(rec(rmpv::Value::Nil))))),
            "DELETE"
        );
        assert_eq!(op_label(&op(None, Some(Some(rec(1.into()))))), "PUT");
    }

    #[test]
    fn group_by_and_aggregations_make_a_grouped_spec() {
        let q = protocol::Query {
            group_by: Some(vec!["a".into()]),
            aggregations: Some(vec![protocol::Aggregation {
                func: protocol::AggregateFunc::Avg,
                field: Some("b".into()),
            }]),
            ..Default::default()
        };
        let spec = query_spec(&q, None).expect("grouped queries are answered");
        assert_eq!(
            spec.group,
            Some(GroupSpec::new(
                &["a".into()],
                &[(AggFunc::Avg, Some("b".into()))]
            ))
        );
        let plain = query_spec(&protocol::Query::default(), None).expect("plain query");
        assert_eq!(plain.group, None);
    }

    /// A store over every partition with `n` LWW records of map "m", every tenth a tombstone.
    fn filled(n: u64) -> MapStore {
        let mut store = MapStore::new(0..PARTITION_COUNT);
        for i in 0..n {
            let value = if i % 10 == 0 { Value::Nil } else { i.into() };
            let record = LwwRecord {
                value,
                timestamp: Timestamp {
                    millis: 1_000 + i,
                    counter: 0,
                    node_id: "n".into(),
                },
                ttl_ms: None,
            };
            store.apply_lww("m", &format!("user:{i}"), record);
        }
        store
    }

    /// Everything stored for the partitions marked in `wanted`, the way a pull sends it.
    fn export(store: &MapStore, wanted: &[bool]) -> Vec<ClientOp> {
        let mut out = Vec::new();
        for p in crate::shard::export::list_keys(store, wanted) {
            for mut m in p.maps {
                while !m.keys.is_empty() {
                    out.extend(crate::shard::export::read_chunk(
                        store,
                        &mut m,
                        1 << 16,
                        100,
                    ));
                }
            }
        }
        out
    }

    /// Applies exported ops the way a pulling node does: through the client-op conversion.
    fn import(into: &mut MapStore, ops: Vec<ClientOp>) {
        for op in ops {
            let Some(sop) = shard_op(op).unwrap() else {
                continue;
            };
            match sop.kind {
                OpKind::Lww(Some(r)) => {
                    into.apply_lww(&sop.map, &sop.key, r);
                }
                OpKind::Lww(None) => panic!("export never sends a bare REMOVE"),
                OpKind::OrAdd(r) => {
                    into.apply_or_add(&sop.map, &sop.key, r);
                }
                OpKind::OrRemove { tag } => {
                    into.apply_or_remove(&sop.map, &sop.key, &tag);
                }
            }
        }
    }

    #[test]
    fn an_export_of_some_partitions_rebuilds_exactly_those_partitions() {
        let mut whole = filled(2_000);
        let or_rec = |tag: &str| OrMapRecord {
            value: 7.into(),
            timestamp: Timestamp {
                millis: 5,
                counter: 0,
                node_id: "n".into(),
            },
            tag: tag.into(),
            ttl_ms: None,
        };
        for i in 0..200 {
            let key = format!("o:{i}");
            whole.apply_or_add("or", &key, or_rec(&format!("t{i}")));
            whole.apply_or_remove("or", &key, &format!("gone{i}"));
        }
        let even: Vec<bool> = (0..PARTITION_COUNT).map(|p| p % 2 == 0).collect();
        let mut copy = MapStore::new(0..PARTITION_COUNT);
        import(&mut copy, export(&whole, &even));
        // The same keys, tombstones included, as a store that only ever held even partitions.
        let mut expected = MapStore::new(0..PARTITION_COUNT);
        for (key, r) in whole.lww_map("m").unwrap().iter_stored() {
            if even[usize::from(partition_of(key))] {
                expected.apply_lww("m", key, r.clone());
            }
        }
        assert_eq!(copy.merkle_root("m"), expected.merkle_root("m"));
        assert_ne!(copy.merkle_root("m"), whole.merkle_root("m"));
        assert_eq!(copy.stats("m"), expected.stats("m"));
        let or = copy.or_map("or").unwrap();
        for key in or.keys() {
            assert!(even[usize::from(partition_of(key))], "{key} is odd");
            assert_eq!(copy.get_or("or", key, 0).len(), 1);
            assert_eq!(or.removed_tags(key).count(), 1);
        }
        assert!(or.key_len() > 50);
        // Everything exported twice changes nothing: a pull may repeat.
        let all = vec![true; usize::from(PARTITION_COUNT)];
        let mut twice = MapStore::new(0..PARTITION_COUNT);
        import(&mut twice, export(&whole, &all));
        import(&mut twice, export(&whole, &all));
        assert_eq!(twice.merkle_root("m"), whole.merkle_root("m"));
        assert_eq!(twice.stats("m"), whole.stats("m"));
    }
}
