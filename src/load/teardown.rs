//! What a client leaving many live queries costs everyone else (issue 15): one connection opens
//! `queries` live queries and disconnects, while a canary connection writes one op every
//! `every` and waits for each ack. The figure is the canary's ack latency after the
//! disconnect (the teardown) beside its latency before it.
use std::time::{Duration, Instant};

use futures_util::SinkExt;
use serde_json::{json, Value};

use super::conn::{self, Incoming, Ws};
use super::{stats, Common};
use crate::protocol::types::{LwwRecord, Timestamp};
use crate::protocol::{ClientMessage, ClientOp, Query, QuerySub};

/// How long one canary ack or the heavy client's subscriptions may take before the run fails.
const ANSWER_WITHIN: Duration = Duration::from_secs(120);
/// Subscriptions sent before their answers are awaited.
const SUBSCRIBE_CHUNK: usize = 5_000;

#[derive(Clone, Debug)]
pub struct TeardownOpts {
    pub common: Common,
    pub queries: usize,
    pub every: Duration,
}

pub async fn run(opts: TeardownOpts) -> Value {
    match measure(&opts).await {
        Ok(report) => report,
        Err(error) => json!({"scenario": "teardown", "connected": 0, "error": error}),
    }
}

async fn measure(opts: &TeardownOpts) -> Result<Value, String> {
    let target = &opts.common.target;
    let timeout = opts.common.connect_timeout;
    let mut heavy = conn::open(target, 0, timeout)
        .await
        .map_err(|e| e.to_string())?;
    let mut canary = conn::open(target, 1, timeout)
        .await
        .map_err(|e| e.to_string())?;
    let map = format!("teardown-{}", conn::wall_ms());
    let t0 = Instant::now();
    // In chunks, resending what the connection's token bucket refused (ERROR 429): a burst of
    // 100,000 frames is more than a client may send at once.
    let mut next_id = 0usize;
    let mut answered = 0usize;
    let mut refused = 0u64;
    while answered < opts.queries {
        let chunk = SUBSCRIBE_CHUNK.min(opts.queries - answered);
        for _ in 0..chunk {
            next_id += 1;
            let sub = ClientMessage::QuerySub(QuerySub {
                query_id: format!("q{next_id}"),
                map_name: map.clone(),
                query: Query::default(),
                fields: None,
            });
            heavy
                .feed(conn::encode(&sub))
                .await
                .map_err(|e| e.to_string())?;
        }
        heavy.flush().await.map_err(|e| e.to_string())?;
        let mut seen = 0;
        while seen < chunk {
            match tokio::time::timeout(ANSWER_WITHIN, conn::next(&mut heavy)).await {
                Ok(Some(Incoming::QueryResp)) => {
                    seen += 1;
                    answered += 1;
                }
                Ok(Some(Incoming::Error { code: 429 })) => {
                    seen += 1;
                    refused += 1;
                }
                Ok(Some(_)) => {}
                _ => {
                    return Err(format!(
                        "{answered} of {} live queries answered",
                        opts.queries
                    ))
                }
            }
        }
        if seen > 0 && answered < opts.queries && refused > 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let subscribe_secs = t0.elapsed().as_secs_f64();

    // Half the run before the disconnect, half after it.
    let half = opts.common.duration / 2;
    let mut before = stats::histogram();
    let mut after = stats::histogram();
    let mut id = 0u64;
    // Another map than the live queries watch: the figure is the teardown, not a fan-out of
    // each canary write to 100,000 queries.
    let canary_map = format!("{map}-canary");
    let until = Instant::now() + half;
    canary_writes(
        &mut canary,
        &canary_map,
        opts.every,
        until,
        &mut id,
        &mut before,
    )
    .await?;
    let _ = heavy.close(None).await;
    drop(heavy);
    let left_at = Instant::now();
    let until = left_at + half;
    canary_writes(
        &mut canary,
        &canary_map,
        opts.every,
        until,
        &mut id,
        &mut after,
    )
    .await?;
    Ok(json!({
        "scenario": "teardown",
        "connected": 2,
        "live_queries": opts.queries,
        "subscribe_secs": super::fire::round3(subscribe_secs),
        "subscribe_refused_429": refused,
        "write_every_ms": opts.every.as_millis() as u64,
        "before": stats::latency_json(&before),
        "after_disconnect": stats::latency_json(&after),
    }))
}

/// One write at a time, one every `every`, until `until`; each ack's latency into `hist`.
async fn canary_writes(
    ws: &mut Ws,
    map: &str,
    every: Duration,
    until: Instant,
    id: &mut u64,
    hist: &mut hdrhistogram::Histogram<u64>,
) -> Result<(), String> {
    while Instant::now() < until {
        *id += 1;
        let op = ClientOp {
            id: Some(id.to_string()),
            map_name: map.to_owned(),
            key: format!("canary-{id}"),
            op_type: Some("PUT".into()),
            record: Some(Some(LwwRecord {
                value: rmpv::Value::from(*id),
                timestamp: Timestamp {
                    millis: conn::wall_ms(),
                    counter: 0,
                    node_id: "canary".into(),
                },
                ttl_ms: None,
            })),
            or_record: None,
            or_tag: None,
            write_concern: None,
            timeout: None,
        };
        let sent = Instant::now();
        ws.send(conn::encode(&ClientMessage::ClientOp(op)))
            .await
            .map_err(|e| e.to_string())?;
        let want = id.to_string();
        loop {
            match tokio::time::timeout(ANSWER_WITHIN, conn::next(ws)).await {
                Ok(Some(Incoming::OpAck { last_id })) if last_id == want => break,
                Ok(Some(_)) => {}
                _ => return Err(format!("the canary's write {want} was not acknowledged")),
            }
        }
        stats::record(hist, sent.elapsed().as_micros() as u64);
        tokio::time::sleep(every.saturating_sub(sent.elapsed())).await;
    }
    Ok(())
}
