//! The local read path of a query: every shard's share merged into one page (rows, or groups for
//! a grouped query), with each shard's apply sequence for the live handshake. A share may be
//! restricted to some partitions: a gathered read takes each partition from one holder.
use std::sync::Arc;

use crate::shard::actor::{GroupQuery, PartitionMask, RunQuery};
use crate::shard::aggregate::{GroupSpec, Groups};
use crate::shard::query::{CompiledQuery, PartialResult, QueryPage};
use crate::shard::router::Shards;

/// One query over every shard: the merged page, each shard's apply sequence at the time, and
/// the shards' shares (a live window is seeded from them).
pub async fn run_query(
    shards: &Shards,
    map: Arc<str>,
    query: Arc<CompiledQuery>,
    cap: usize,
) -> (QueryPage, Vec<u64>, Vec<PartialResult>) {
    if let Some(spec) = query.group().cloned() {
        let (groups, seen) = local_groups(shards, map, query.clone(), None).await;
        return (grouped_page(&query, &spec, groups, cap), seen, Vec::new());
    }
    let (parts, seen) = local_rows(shards, map, query.clone(), cap, None).await;
    (query.merge(&parts, cap), seen, parts)
}

/// Every shard's share of an ungrouped query over `partitions`, and each shard's apply
/// sequence (`u64::MAX` for a shard that did not answer).
pub async fn local_rows(
    shards: &Shards,
    map: Arc<str>,
    query: Arc<CompiledQuery>,
    cap: usize,
    partitions: PartitionMask,
) -> (Vec<PartialResult>, Vec<u64>) {
    let requests: Vec<_> = shards
        .mailboxes
        .iter()
        .map(|s| {
            s.send(RunQuery {
                map: map.clone(),
                query: query.clone(),
                cap,
                partitions: partitions.clone(),
            })
        })
        .collect();
    let mut parts = Vec::with_capacity(requests.len());
    let mut seen = Vec::with_capacity(requests.len());
    for req in requests {
        match req.await {
            Ok((part, seq)) => {
                parts.push(part);
                seen.push(seq);
            }
            Err(_) => seen.push(u64::MAX),
        }
    }
    (parts, seen)
}

/// The groups of a grouped query over `partitions`, merged across shards, and each shard's
/// apply sequence.
pub async fn local_groups(
    shards: &Shards,
    map: Arc<str>,
    query: Arc<CompiledQuery>,
    partitions: PartitionMask,
) -> (Groups, Vec<u64>) {
    let requests: Vec<_> = shards
        .mailboxes
        .iter()
        .map(|s| {
            s.send(GroupQuery {
                map: map.clone(),
                query: query.clone(),
                partitions: partitions.clone(),
            })
        })
        .collect();
    let mut groups = Groups::default();
    let mut seen = Vec::with_capacity(requests.len());
    for req in requests {
        match req.await {
            Ok((part, seq)) => {
                groups.merge(part);
                seen.push(seq);
            }
            Err(_) => seen.push(u64::MAX),
        }
    }
    (groups, seen)
}

/// The group rows of merged groups through the query's sort, limit, cursor and fields.
pub fn grouped_page(
    query: &CompiledQuery,
    spec: &GroupSpec,
    groups: Groups,
    cap: usize,
) -> QueryPage {
    let rows = groups.rows(spec);
    query
        .rows_query()
        .run(rows.iter().map(|(k, v)| (k.as_str(), v)), cap)
}
