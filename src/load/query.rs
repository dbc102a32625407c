//! Query latency: `connections` clients each run a sorted, limited query in a loop, one at a
//! time: `QUERY_SUB` (sort by `sort` descending, `limit`), wait for its `QUERY_RESP`, then
//! `QUERY_UNSUB`. The latency is `QUERY_SUB` sent → `QUERY_RESP` received: on one node the
//! shards' top-k merge, in a partitioned cluster the gather from the holders too. Fill the map
//! first (fire-and-wait writes `n`, the op id, into every value).
use std::time::{Duration, Instant};

use futures_util::SinkExt;
use serde_json::{json, Value};

use super::conn::{self, Incoming, Ws};
use super::fire::total_connected;
use super::{now_us, stats, Common};
use crate::protocol::{ClientMessage, Query, QuerySub, QueryUnsub, SortDirection, SortField};

/// How long one query may take before its connection gives up.
const ANSWER_WITHIN: Duration = Duration::from_secs(10);

#[derive(Clone, Debug)]
pub struct QueryOpts {
    pub common: Common,
    pub map: String,
    pub sort: String,
    pub limit: u32,
}

#[derive(Default)]
struct ConnResult {
    queries: u64,
    errors: u64,
    hist: Option<hdrhistogram::Histogram<u64>>,
}

pub async fn run(opts: QueryOpts) -> Value {
    let c = &opts.common;
    conn::raise_nofile_limit();
    let opened = conn::open_all(
        &c.target,
        c.connections,
        c.connect_concurrency,
        c.connect_timeout,
        |_, ws| async move { Ok(ws) },
    )
    .await;
    let start = Instant::now();
    let measure_from = start + c.warmup;
    let end = start + c.warmup + c.duration;
    let tasks: Vec<_> = opened
        .conns
        .into_iter()
        .map(|(ix, ws)| tokio::spawn(drive(ws, ix, opts.clone(), measure_from, end)))
        .collect();
    let mut hist = stats::histogram();
    let (mut queries, mut errors) = (0u64, 0u64);
    for t in tasks {
        if let Ok(r) = t.await {
            queries += r.queries;
            errors += r.errors;
            if let Some(h) = r.hist {
                let _ = hist.add(h);
            }
        }
    }
    let secs = c.duration.as_secs_f64();
    json!({
        "scenario": "query",
        "connected": total_connected(c.connections, &opened.failed),
        "map": opts.map,
        "sort": opts.sort,
        "limit": opts.limit,
        "queries": queries,
        "queries_per_sec": stats::per_sec(queries, secs),
        "errors": errors,
        "query_latency": stats::latency_json(&hist),
    })
}

async fn drive(
    mut ws: Ws,
    ix: usize,
    opts: QueryOpts,
    measure_from: Instant,
    end: Instant,
) -> ConnResult {
    let mut r = ConnResult::default();
    let mut hist = stats::histogram();
    let query = Query {
        sort: Some(vec![SortField {
            field: opts.sort.clone(),
            direction: SortDirection::Desc,
        }]),
        limit: Some(opts.limit),
        ..Query::default()
    };
    let mut n = 0u64;
    while Instant::now() < end {
        n += 1;
        let query_id = format!("q{ix}-{n}");
        let sub = ClientMessage::QuerySub(QuerySub {
            query_id: query_id.clone(),
            map_name: opts.map.clone(),
            query: query.clone(),
            fields: None,
        });
        let sent = now_us();
        if ws.send(conn::encode(&sub)).await.is_err() {
            r.errors += 1;
            break;
        }
        let answered = tokio::time::timeout(ANSWER_WITHIN, async {
            loop {
                match conn::next(&mut ws).await {
                    Some(Incoming::QueryResp) => return true,
                    None => return false,
                    Some(_) => continue,
                }
            }
        })
        .await;
        if answered != Ok(true) {
            r.errors += 1;
            break;
        }
        if Instant::now() >= measure_from {
            r.queries += 1;
            stats::record(&mut hist, now_us().saturating_sub(sent));
        }
        let unsub = ClientMessage::QueryUnsub(QueryUnsub { query_id });
        if ws.send(conn::encode(&unsub)).await.is_err() {
            r.errors += 1;
            break;
        }
    }
    r.hist = Some(hist);
    r
}
