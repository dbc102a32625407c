//! Scatter-gather reads: with partitioned placement no node holds every partition, so a query
//! from any node is answered by the holders of the partitions. Each partition is taken from
//! one member that serves it (this node when it can, else the owner, else a backup): one
//! request per member, not per partition. Each member answers its share cut to one page (a
//! top-k for sort + limit), or its partial groups; the asking node merges them exactly as it
//! merges its own shards' shares, so the answer is the one a node holding everything gives.
//!
//! A member that does not answer in time, answers garbage, or no longer serves a partition
//! (`refused`: the table moved it, or it is still pulling it) is passed over, and its
//! partitions are asked of their next holder. When a partition has no holder left to ask,
//! the read fails with an error naming it: never a partial answer passed off as whole.
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use futures_util::future::{join_all, LocalBoxFuture};

use super::error::{ClusterError, Peer};
use super::peer::Call;
use super::peer_error::PeerError;
use super::plane::DataPlane;
use super::table::PartitionTable;
use super::wire::{self, Kind, QueryDone};
use crate::data::reads::{grouped_page, local_groups, local_rows, run_query};
use crate::data::sync::{local_sync, SyncAsk, SyncShare};
use crate::protocol;
use crate::shard::actor::PartitionMask;
use crate::shard::aggregate::Groups;
use crate::shard::fnv::PARTITION_COUNT;
use crate::shard::query::{CompiledQuery, PartialResult, QueryPage};

/// Which member is asked for which partitions.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub local: Vec<u16>,
    pub remote: BTreeMap<String, Vec<u16>>,
    /// No holder is left to ask.
    pub unavailable: Vec<u16>,
}

/// Plans `partitions`: this node for those it serves, else the first holder (owner, then
/// backups) not in `passed_over`.
pub fn plan(
    table: &PartitionTable,
    me: &str,
    partitions: impl IntoIterator<Item = u16>,
    serves_here: impl Fn(u16) -> bool,
    passed_over: &BTreeSet<String>,
) -> Plan {
    let mut out = Plan::default();
    for p in partitions {
        if serves_here(p) {
            out.local.push(p);
            continue;
        }
        let holder = table
            .holders(p)
            .find(|m| m.node_id != me && !passed_over.contains(&m.node_id));
        match holder {
            Some(m) => out.remote.entry(m.node_id.clone()).or_default().push(p),
            None => out.unavailable.push(p),
        }
    }
    out
}

/// What a gathered read needs of the client's request.
pub struct ReadRequest {
    pub map: Arc<str>,
    /// The query as the client sent it: peers compile it themselves.
    pub wire: protocol::Query,
    pub fields: Option<Vec<String>>,
    pub query: Arc<CompiledQuery>,
    pub cap: usize,
}

/// A gathered answer: the page, this node's shards' apply sequences (for the live handshake)
/// and every share, local and remote (a live window is seeded from them).
pub struct Gathered {
    pub page: QueryPage,
    pub seen: Vec<u64>,
    pub parts: Vec<PartialResult>,
}

/// Answers `request` over every partition: locally with full placement (or alone), gathered
/// from the holders with partitioned placement. `Err` names what could not be read.
pub async fn read(node: &Arc<DataPlane>, request: ReadRequest) -> Result<Gathered, ClusterError> {
    let cluster = &node.cluster;
    let table = cluster.table();
    if !cluster.partitioned() || table.members().len() <= 1 {
        let (page, seen, parts) = run_query(
            &node.shards,
            request.map.clone(),
            request.query.clone(),
            request.cap,
        )
        .await;
        return Ok(Gathered { page, seen, parts });
    }
    let result = gather(node, &table, &request).await;
    let counter = match &result {
        Ok(_) => &cluster.counters.gathers_ok,
        Err(_) => &cluster.counters.gathers_failed,
    };
    counter.fetch_add(1, Ordering::Relaxed);
    result
}

enum Share {
    Rows(Vec<PartialResult>),
    Groups(Groups),
}

/// One member's share of a gathered read and the asked partitions it refused.
type Answer<T> = Result<(T, Vec<u16>), ClusterError>;

/// Asks every partition of one member that serves it: this node's share from `local` (over
/// the partitions it serves), the others' from `remote` (peer, its partitions). Shares that
/// fail or refuse partitions are asked again of the next holders, until every partition has
/// a share or one has no holder left (`Err`). Local share first when there is one.
async fn scatter<'a, T>(
    node: &'a Arc<DataPlane>,
    table: &'a PartitionTable,
    what: &str,
    local: impl Fn(Arc<Vec<bool>>) -> LocalBoxFuture<'a, T>,
    remote: impl Fn(String, Vec<u16>) -> LocalBoxFuture<'a, Answer<T>>,
) -> Result<Vec<T>, ClusterError> {
    let cluster = &node.cluster;
    let mut passed_over: BTreeSet<String> = BTreeSet::new();
    let mut why: Vec<ClusterError> = Vec::new();
    let mut todo: Vec<u16> = (0..PARTITION_COUNT).collect();
    let mut shares = Vec::new();
    let mut local_done = false;
    // Each round passes over at least one member, so the rounds end.
    while !todo.is_empty() {
        let plan = plan(
            table,
            &cluster.node_id,
            todo.iter().copied(),
            |p| !local_done && cluster.serves(table, p),
            &passed_over,
        );
        if let Some(&first) = plan.unavailable.first() {
            // In the order of their text, each once: what the client has always read.
            why.sort_by_cached_key(ToString::to_string);
            why.dedup();
            return Err(ClusterError::Unreadable {
                what: what.to_owned(),
                partitions: plan.unavailable.len(),
                first,
                why,
            });
        }
        let local_share = async {
            match plan.local.is_empty() {
                true => None,
                false => Some(local(mask(&plan.local)).await),
            }
        };
        let asks = plan
            .remote
            .iter()
            .map(|(peer, parts)| remote(peer.clone(), parts.clone()));
        let (mine, answers) = futures_util::future::join(local_share, join_all(asks)).await;
        if let Some(share) = mine {
            local_done = true;
            shares.push(share);
        }
        todo.clear();
        for ((peer, parts), answer) in plan.remote.iter().zip(answers) {
            let refused = match answer {
                Ok((share, refused)) => {
                    shares.push(share);
                    if refused.is_empty() {
                        continue;
                    }
                    why.push(ClusterError::NotServed {
                        peer: Peer::node(peer),
                    });
                    refused
                }
                Err(e) => {
                    why.push(e);
                    parts.clone()
                }
            };
            cluster
                .counters
                .gathers_retried
                .fetch_add(1, Ordering::Relaxed);
            passed_over.insert(peer.clone());
            todo.extend(refused);
        }
    }
    Ok(shares)
}

/// A query share, with this node's shards' apply sequences when it is the local one.
struct QueryShare {
    share: Share,
    seen: Option<Vec<u64>>,
}

async fn gather(
    node: &Arc<DataPlane>,
    table: &PartitionTable,
    request: &ReadRequest,
) -> Result<Gathered, ClusterError> {
    let spec = request.query.group().cloned();
    let grouped = spec.is_some();
    let shares = scatter(
        node,
        table,
        &format!("map {}", request.map),
        |m| {
            Box::pin(async move {
                let (share, seen) = local_share(node, request, m).await;
                QueryShare {
                    share,
                    seen: Some(seen),
                }
            })
        },
        |peer, parts| {
            Box::pin(async move {
                let done = ask(node, table, request, &peer, &parts).await?;
                let (share, refused) = accept(request, grouped, &peer, &parts, done)?;
                Ok((QueryShare { share, seen: None }, refused))
            })
        },
    )
    .await?;
    let mut rows: Vec<PartialResult> = Vec::new();
    let mut groups = Groups::default();
    let mut seen = Vec::new();
    for s in shares {
        if let Some(s) = s.seen {
            seen = s;
        }
        match s.share {
            Share::Rows(p) => rows.extend(p),
            Share::Groups(g) => groups.merge(g),
        }
    }
    let page = match &spec {
        Some(spec) => grouped_page(&request.query, spec, groups, request.cap),
        None => request.query.merge(&rows, request.cap),
    };
    Ok(Gathered {
        page,
        seen,
        parts: rows,
    })
}

/// A Merkle or OR-Map sync step over every partition: this node's shards with full placement
/// (or alone), gathered from the holders with partitioned placement.
pub async fn sync_read(
    node: &Arc<DataPlane>,
    map: Arc<str>,
    ask: SyncAsk,
) -> Result<SyncShare, ClusterError> {
    let cluster = &node.cluster;
    let table = cluster.table();
    if !cluster.partitioned() || table.members().len() <= 1 {
        return Ok(local_sync(&node.shards, map, &ask, None).await);
    }
    let (map_ref, ask_ref, table_ref) = (&map, &ask, &table);
    let shares = scatter(
        node,
        table_ref,
        &format!("map {map}"),
        |m| {
            Box::pin(
                async move { local_sync(&node.shards, map_ref.clone(), ask_ref, Some(m)).await },
            )
        },
        |peer, parts| {
            Box::pin(async move {
                let body = wire::body(&wire::SyncRead {
                    map: map_ref.to_string(),
                    ask: ask_ref.clone(),
                    partitions: parts.clone(),
                    table_version: table_ref.version,
                });
                let reply = call(node, &peer, Kind::SyncRead, Kind::SyncDone, body).await?;
                let done: wire::SyncDone = wire::decode(&reply).map_err(|e| {
                    node.cluster.counters.peer_error(PeerError::BadFrame);
                    ClusterError::Undecodable {
                        peer: Peer::node(&peer),
                        detail: e.to_string(),
                    }
                })?;
                if let Some(message) = done.error {
                    return Err(ClusterError::Remote {
                        peer: Peer::node(&peer),
                        message,
                    });
                }
                check_sync_share(&peer, &done.share, &parts, &done.refused)
                    .inspect_err(|_| node.cluster.counters.peer_error(PeerError::BadFrame))?;
                Ok((done.share, done.refused))
            })
        },
    )
    .await;
    let counter = match &shares {
        Ok(_) => &cluster.counters.gathers_ok,
        Err(_) => &cluster.counters.gathers_failed,
    };
    counter.fetch_add(1, Ordering::Relaxed);
    let mut all = SyncShare::default();
    for s in shares? {
        all.merge(s);
    }
    Ok(all)
}

/// `peer`'s sync share must name only leaves that exist and keys of the partitions it served.
pub fn check_sync_share(
    peer: &str,
    share: &SyncShare,
    asked: &[u16],
    refused: &[u16],
) -> Result<(), ClusterError> {
    let invalid = |detail: &str| ClusterError::Invalid {
        peer: Peer::node(peer),
        detail: detail.to_owned(),
    };
    if share.leaves.iter().any(|(p, _)| p.iter().any(|&n| n > 15)) {
        return Err(invalid("a leaf path outside the tree"));
    }
    let served = |key: &str| {
        let p = crate::shard::fnv::partition_of(key);
        asked.contains(&p) && !refused.contains(&p)
    };
    if share.records.iter().any(|(k, _)| !served(k))
        || share.entries.iter().any(|e| !served(&e.key))
    {
        return Err(invalid("records of partitions it was not asked for"));
    }
    if refused.iter().any(|p| !asked.contains(p)) {
        return Err(invalid("refused partitions it was not asked for"));
    }
    Ok(())
}

/// A peer's side of a sync step: its share over the asked partitions it serves.
pub async fn serve_sync(node: Arc<DataPlane>, read: wire::SyncRead) -> wire::SyncDone {
    let table = node.cluster.table();
    let (served, refused): (Vec<u16>, Vec<u16>) = read
        .partitions
        .iter()
        .filter(|&&p| p < PARTITION_COUNT)
        .partition(|&&p| node.cluster.serves(&table, p));
    let share = local_sync(
        &node.shards,
        Arc::from(read.map.as_str()),
        &read.ask,
        Some(mask(&served)),
    )
    .await;
    wire::SyncDone {
        share,
        refused,
        table_version: table.version,
        error: None,
    }
}

/// A request to `peer` answered with `answer_kind` within the cluster timeout: its body.
pub(super) async fn call(
    node: &Arc<DataPlane>,
    peer: &str,
    kind: Kind,
    answer_kind: Kind,
    body: bytes::Bytes,
) -> Result<bytes::Bytes, ClusterError> {
    let Some(link) = node.cluster.link(peer) else {
        return Err(ClusterError::NoLink {
            peer: Peer::node(peer),
        });
    };
    let timeout = node.cluster.timeout;
    match tokio::time::timeout(timeout, link.send(Call { kind, body })).await {
        Ok(Ok(Ok(reply))) if reply.kind == answer_kind => Ok(reply.body),
        Ok(Ok(Ok(reply))) => {
            node.cluster.counters.peer_error(PeerError::BadFrame);
            Err(ClusterError::UnexpectedAnswer {
                peer: Peer::node(peer),
                asked: kind,
                answer: reply.kind,
            })
        }
        Ok(Ok(Err(e))) => Err(e),
        Ok(Err(_)) => Err(ClusterError::LinkClosed {
            peer: Peer::node(peer),
        }),
        Err(_) => {
            node.cluster.counters.peer_error(PeerError::Timeout);
            Err(ClusterError::Timeout {
                peer: Peer::node(peer),
                ms: timeout.as_millis(),
            })
        }
    }
}

fn mask(partitions: &[u16]) -> Arc<Vec<bool>> {
    let mut m = vec![false; usize::from(PARTITION_COUNT)];
    for &p in partitions {
        if let Some(slot) = m.get_mut(usize::from(p)) {
            *slot = true;
        }
    }
    Arc::new(m)
}

async fn local_share(
    node: &Arc<DataPlane>,
    request: &ReadRequest,
    partitions: Arc<Vec<bool>>,
) -> (Share, Vec<u64>) {
    let partitions: PartitionMask = Some(partitions);
    if request.query.group().is_some() {
        let (g, seen) = local_groups(
            &node.shards,
            request.map.clone(),
            request.query.clone(),
            partitions,
        )
        .await;
        (Share::Groups(g), seen)
    } else {
        let (p, seen) = local_rows(
            &node.shards,
            request.map.clone(),
            request.query.clone(),
            request.cap,
            partitions,
        )
        .await;
        (Share::Rows(p), seen)
    }
}

/// One member's share, or why there is none.
async fn ask(
    node: &Arc<DataPlane>,
    table: &PartitionTable,
    request: &ReadRequest,
    peer: &str,
    partitions: &[u16],
) -> Result<QueryDone, ClusterError> {
    let body = wire::body(&wire::Query {
        map: request.map.to_string(),
        query: request.wire.clone(),
        fields: request.fields.clone(),
        partitions: partitions.to_vec(),
        cap: u32::try_from(request.cap).unwrap_or(u32::MAX),
        table_version: table.version,
    });
    let reply = call(node, peer, Kind::Query, Kind::QueryDone, body).await?;
    wire::decode::<QueryDone>(&reply).map_err(|e| {
        node.cluster.counters.peer_error(PeerError::BadFrame);
        ClusterError::Undecodable {
            peer: Peer::node(peer),
            detail: e.to_string(),
        }
    })
}

/// `peer`'s answer checked against what was asked: its share, and the partitions it
/// refused (a subset of `asked`, else the answer is garbage).
fn accept(
    request: &ReadRequest,
    grouped: bool,
    peer: &str,
    asked: &[u16],
    done: QueryDone,
) -> Result<(Share, Vec<u16>), ClusterError> {
    let invalid = |detail: &str| ClusterError::Invalid {
        peer: Peer::node(peer),
        detail: detail.to_owned(),
    };
    if let Some(message) = done.error {
        return Err(ClusterError::Remote {
            peer: Peer::node(peer),
            message,
        });
    }
    if done.refused.iter().any(|p| !asked.contains(p)) {
        return Err(invalid("refused partitions it was not asked for"));
    }
    let share = if grouped {
        let groups = done.groups.unwrap_or_default();
        match request.query.group() {
            Some(spec) if groups.fits(spec) => Share::Groups(groups),
            _ => return Err(invalid("groups of another shape")),
        }
    } else {
        Share::Rows(vec![request.query.share_from_peer(
            &done.rows,
            done.has_more,
            request.cap,
        )])
    };
    Ok((share, done.refused))
}

/// A peer's side: this node's share of `query` over the asked partitions it serves.
pub async fn serve(node: Arc<DataPlane>, query: wire::Query) -> QueryDone {
    let table = node.cluster.table();
    let spec = match crate::data::ops::query_spec(&query.query, query.fields.as_ref()) {
        Ok(spec) => spec,
        Err(e) => {
            return QueryDone {
                table_version: table.version,
                error: Some(e),
                ..QueryDone::default()
            }
        }
    };
    let compiled = Arc::new(CompiledQuery::new(&spec));
    let (served, refused): (Vec<u16>, Vec<u16>) = query
        .partitions
        .iter()
        .filter(|&&p| p < PARTITION_COUNT)
        .partition(|&&p| node.cluster.serves(&table, p));
    let request = ReadRequest {
        map: Arc::from(query.map.as_str()),
        wire: query.query,
        fields: query.fields,
        query: compiled.clone(),
        cap: (query.cap as usize).min(node.config.query_max_results),
    };
    let (share, _) = local_share(&node, &request, mask(&served)).await;
    let mut done = QueryDone {
        refused,
        table_version: table.version,
        ..QueryDone::default()
    };
    match share {
        Share::Rows(parts) => {
            let (rows, has_more) = compiled.combine(parts, request.cap).into_rows();
            done.rows = rows;
            done.has_more = has_more;
        }
        Share::Groups(g) => done.groups = Some(g),
    }
    done
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::table::of_ids as table;

    #[test]
    fn each_partition_is_asked_of_one_member_and_each_member_once() {
        let t = table(&["a", "b", "c"]);
        let serves_a = |p: u16| t.role(p, "a") != crate::cluster::table::Role::Replica;
        let plan = plan(&t, "a", 0..PARTITION_COUNT, serves_a, &BTreeSet::new());
        let mut all: Vec<u16> = plan.local.clone();
        for parts in plan.remote.values() {
            all.extend(parts);
        }
        all.sort_unstable();
        assert_eq!(all, (0..PARTITION_COUNT).collect::<Vec<_>>());
        assert!(plan.unavailable.is_empty());
        assert!(!plan.remote.contains_key("a"));
        // What a keeps is read here; the rest from its owner (never a: it keeps none of it).
        for (peer, parts) in &plan.remote {
            for &p in parts {
                assert_eq!(t.owner(p).map(|m| m.node_id.as_str()), Some(peer.as_str()));
            }
        }
    }

    #[test]
    fn a_sync_share_naming_what_was_not_asked_is_refused_as_garbage() {
        use crate::protocol::types::{LwwRecord, Timestamp};
        let key = "k1";
        let p = crate::shard::fnv::partition_of(key);
        let other = (p + 1) % PARTITION_COUNT;
        let record = |k: &str| {
            (
                k.to_owned(),
                LwwRecord {
                    value: rmpv::Value::Nil,
                    timestamp: Timestamp {
                        millis: 1,
                        counter: 0,
                        node_id: "b".into(),
                    },
                    ttl_ms: None,
                },
            )
        };
        let share = |records: Vec<(String, LwwRecord)>, leaves| SyncShare {
            leaves,
            records,
            ..SyncShare::default()
        };
        let check = |s: &SyncShare, asked: &[u16], refused: &[u16]| {
            check_sync_share("b", s, asked, refused).map_err(|e| (e.code(), e.to_string()))
        };
        assert_eq!(check(&share(vec![record(key)], vec![]), &[p], &[]), Ok(()));
        assert_eq!(
            check(&share(vec![], vec![([15, 0, 1], 3)]), &[p], &[]),
            Ok(())
        );
        assert_eq!(
            check(&share(vec![], vec![([16, 0, 0], 3)]), &[p], &[]),
            Err((
                "invalid_answer",
                "b answered garbage: a leaf path outside the tree".to_owned()
            ))
        );
        let stray = "b answered garbage: records of partitions it was not asked for";
        assert_eq!(
            check(&share(vec![record(key)], vec![]), &[other], &[]),
            Err(("invalid_answer", stray.to_owned()))
        );
        // Refused and still sent: as bad as never asked.
        assert_eq!(
            check(&share(vec![record(key)], vec![]), &[p], &[p]),
            Err(("invalid_answer", stray.to_owned()))
        );
        assert_eq!(
            check(&share(vec![], vec![]), &[p], &[other]),
            Err((
                "invalid_answer",
                "b answered garbage: refused partitions it was not asked for".to_owned()
            ))
        );
    }

    #[test]
    fn a_member_passed_over_is_replaced_by_the_next_holder_or_the_partition_is_unavailable() {
        let t = table(&["a", "b", "c"]);
        let nothing_here = |_| false;
        let passed: BTreeSet<String> = ["b".to_owned()].into();
        let plan = plan(&t, "a", 0..PARTITION_COUNT, nothing_here, &passed);
        for (peer, parts) in &plan.remote {
            assert_ne!(peer, "b");
            for &p in parts {
                assert!(t.holders(p).any(|m| &m.node_id == peer));
            }
        }
        // Held by b and a only (owner and backup): a cannot serve them, b is passed over.
        for &p in &plan.unavailable {
            let holders: BTreeSet<&str> = t.holders(p).map(|m| m.node_id.as_str()).collect();
            assert!(!holders.contains("c"));
        }
        assert!(!plan.unavailable.is_empty());
    }
}
