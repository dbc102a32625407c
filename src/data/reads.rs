//! The local read path of a query: every shard's share merged into one page (rows, or groups for
//! a grouped query), with each shard's apply sequence for the live handshake.
use std::sync::Arc;

use crate::shard::actor::{GroupQuery, RunQuery};
use crate::shard::aggregate::{GroupSpec, Groups};
use crate::shard::query::{CompiledQuery, PartialResult, QueryPage};
use crate::shard::router::Shards;

/// One query over every shard: the merged page, and each shard's apply sequence at the time.
pub async fn run_query(
    shards: &Shards,
    map: Arc<str>,
    query: Arc<CompiledQuery>,
    cap: usize,
) -> (QueryPage, Vec<u64>, Vec<PartialResult>) {
    if let Some(spec) = query.group().cloned() {
        let (page, seen) = run_grouped(shards, map, &query, &spec, cap).await;
        return (page, seen, Vec::new());
    }
    let requests: Vec<_> = shards
        .mailboxes
        .iter()
        .map(|s| {
            s.send(RunQuery {
                map: map.clone(),
                query: query.clone(),
                cap,
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
    (query.merge(&parts, cap), seen, parts)
}

/// A grouped query over every shard: the shards' groups merged, then the group rows through
/// the query's sort, limit, cursor and fields.
async fn run_grouped(
    shards: &Shards,
    map: Arc<str>,
    query: &CompiledQuery,
    spec: &GroupSpec,
    cap: usize,
) -> (QueryPage, Vec<u64>) {
    let query_arc = Arc::new(query.clone());
    let requests: Vec<_> = shards
        .mailboxes
        .iter()
        .map(|s| {
            s.send(GroupQuery {
                map: map.clone(),
                query: query_arc.clone(),
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
    let rows = groups.rows(spec);
    let page = query
        .rows_query()
        .run(rows.iter().map(|(k, v)| (k.as_str(), v)), cap);
    (page, seen)
}
