//! Fan-out: `subscribers` connections each hold a match-all live query (`QUERY_SUB` with an
//! empty query) on one map, and one writer connection puts values at `rate` writes/s. Each
//! value carries its send time (`t`, µs on the process-wide clock), so every subscriber task
//! measures write→`QUERY_UPDATE` latency for every delivery.
//!
//! The writer cycles over `keys` keys, so after the first round every write is an `UPDATE` of
//! a result set of fixed size: the run measures routing cost, not a growing result set.
//! Deliveries are counted against `writes sent × subscribers`; what the node drops (slow
//! consumers, full queues) shows up as the gap.
//!
//! With several URLs (a cluster) the subscribers spread over them and the writer, connection
//! number `subscribers`, follows the same rule: most deliveries then cross nodes.
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use rmpv::Value as Mp;
use serde_json::{json, Value};

use super::conn::{self, ConnectError, Incoming, Ws};
use super::fire::{pct, round3, spawn_scraper, total_connected, PING_EVERY};
use super::{now_us, stats, Common};
use crate::protocol::{ClientMessage, ClientOp, LwwRecord, Query, QuerySub, Timestamp};

/// A delivery later than this counts as not delivered (the "% within 5 s"); also how
/// long subscribers keep listening after the last write.
pub const DELIVERY_DEADLINE: Duration = Duration::from_secs(5);

#[derive(Clone, Debug)]
pub struct FanoutOpts {
    pub common: Common,
    pub subscribers: usize,
    /// Writes per second of the single writer.
    pub rate: f64,
    pub map: String,
    pub keys: u64,
}

struct Shared {
    writes_sent: AtomicU64,
    writer_done: AtomicBool,
    /// Subscribers stop listening at this point at the latest (set once the writer is done).
    listen_until: Instant,
}

#[derive(Default)]
struct SubResult {
    delivered: u64,
    within_deadline: u64,
    foreign: u64,
    bad_frames: u64,
    closed_by_server: bool,
    last_delivery_us: u64,
    hist: Option<hdrhistogram::Histogram<u64>>,
}

async fn subscribe(ws: Ws, ix: usize, map: String) -> Result<Ws, ConnectError> {
    let mut ws = ws;
    let msg = ClientMessage::QuerySub(QuerySub {
        query_id: format!("fanout-{ix}"),
        map_name: map,
        query: Query::default(),
        fields: None,
    });
    ws.send(conn::encode(&msg))
        .await
        .map_err(|e| ConnectError::Io(e.to_string()))?;
    loop {
        match conn::next(&mut ws).await {
            None => return Err(ConnectError::Closed),
            Some(Incoming::QueryResp) => return Ok(ws),
            Some(_) => {}
        }
    }
}

async fn listen(mut ws: Ws, shared: Arc<Shared>) -> SubResult {
    let mut r = SubResult::default();
    let mut hist = stats::histogram();
    let deadline_us = u64::try_from(DELIVERY_DEADLINE.as_micros()).unwrap_or(u64::MAX);
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.tick().await;
    let until = tokio::time::Instant::from_std(shared.listen_until);
    loop {
        if shared.writer_done.load(Ordering::Acquire)
            && r.delivered + r.foreign >= shared.writes_sent.load(Ordering::Acquire)
        {
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep_until(until) => break,
            _ = ping.tick() => {
                if ws.send(conn::ping()).await.is_err() {
                    r.closed_by_server = true;
                    break;
                }
            }
            m = conn::next(&mut ws) => match m {
                None => { r.closed_by_server = true; break; }
                Some(Incoming::QueryUpdate { sent_us: Some(t) }) => {
                    let now = now_us();
                    let lat = now.saturating_sub(t);
                    stats::record(&mut hist, lat);
                    r.delivered += 1;
                    if lat <= deadline_us {
                        r.within_deadline += 1;
                    }
                    r.last_delivery_us = now;
                }
                Some(Incoming::QueryUpdate { sent_us: None }) => r.foreign += 1,
                Some(Incoming::Bad) => r.bad_frames += 1,
                Some(_) => {}
            }
        }
    }
    let _ = ws.close(None).await;
    r.hist = Some(hist);
    r
}

pub async fn run(opts: FanoutOpts) -> Value {
    let c = &opts.common;
    conn::raise_nofile_limit();
    // A fresh map per run: a previous run's keys would change the result-set size.
    let map = format!("{}-{}", opts.map, conn::wall_ms());
    let sub_map = map.clone();
    let opened = conn::open_all(
        &c.target,
        opts.subscribers,
        c.connect_concurrency,
        c.connect_timeout,
        move |ix, ws| subscribe(ws, ix, sub_map.clone()),
    )
    .await;
    let subscribed = opened.conns.len();
    let per_url = c.target.per_url(opened.conns.iter().map(|(ix, _)| *ix));
    let writer = conn::open_retrying(
        &c.target,
        opts.subscribers,
        Instant::now() + c.connect_timeout,
    )
    .await;
    let Ok((writer, _)) = writer else {
        return json!({"scenario": "fanout", "error": "writer could not connect"});
    };

    let start = Instant::now();
    let end = start + c.duration;
    let shared = Arc::new(Shared {
        writes_sent: AtomicU64::new(0),
        writer_done: AtomicBool::new(false),
        listen_until: end + DELIVERY_DEADLINE,
    });
    let subs: Vec<_> = opened
        .conns
        .into_iter()
        .map(|(_, ws)| tokio::spawn(listen(ws, shared.clone())))
        .collect();
    let scraper = spawn_scraper(c, start, end);
    let cpu = tokio::spawn(super::fire::cpu_over(c.server_pid, start, end));

    // The writer: a reader half counting acks, a paced sender.
    let (mut tx, mut rx) = writer.split();
    let acks = tokio::spawn(async move {
        let (mut acked, mut errors, mut bad) = (0u64, stats::Tally::default(), 0u64);
        let until = tokio::time::Instant::from_std(end + DELIVERY_DEADLINE);
        while let Ok(Some(m)) = tokio::time::timeout_at(until, rx.next()).await {
            match m {
                Ok(tokio_tungstenite::tungstenite::Message::Binary(b)) => {
                    match conn::classify(&b) {
                        Incoming::OpAck { .. } => acked += 1,
                        Incoming::Error { code } => errors.add(code.to_string(), 1),
                        Incoming::Bad => bad += 1,
                        _ => {}
                    }
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        (acked, errors, bad)
    });
    let period = Duration::from_secs_f64(1.0 / opts.rate.max(0.001));
    let mut tick = tokio::time::interval(period);
    let mut last_ping = Instant::now();
    let mut seq = 0u64;
    let mut writer_broken = false;
    while Instant::now() < end && seq < c.max_ops {
        tick.tick().await;
        seq += 1;
        let op = ClientOp {
            id: Some(seq.to_string()),
            map_name: map.clone(),
            key: format!("k{}", seq % opts.keys.max(1)),
            op_type: Some("PUT".into()),
            record: Some(Some(LwwRecord {
                value: Mp::Map(vec![
                    (conn::SENT_AT_KEY.into(), Mp::from(now_us())),
                    ("s".into(), Mp::from(seq)),
                ]),
                timestamp: Timestamp {
                    millis: conn::wall_ms(),
                    counter: u32::try_from(seq % u64::from(u32::MAX)).unwrap_or(0),
                    node_id: "load-writer".into(),
                },
                ttl_ms: None,
            })),
            or_record: None,
            or_tag: None,
            write_concern: None,
            timeout: None,
        };
        if tx
            .send(conn::encode(&ClientMessage::ClientOp(op)))
            .await
            .is_err()
        {
            writer_broken = true;
            break;
        }
        shared.writes_sent.store(seq, Ordering::Release);
        if last_ping.elapsed() >= PING_EVERY {
            last_ping = Instant::now();
            let _ = tx.send(conn::ping()).await;
        }
    }
    let write_secs = start.elapsed().as_secs_f64();
    let write_end_us = now_us();
    shared.writer_done.store(true, Ordering::Release);

    let mut hist = stats::histogram();
    let mut total = SubResult::default();
    let mut closed = 0u64;
    for s in subs {
        if let Ok(r) = s.await {
            total.delivered += r.delivered;
            total.within_deadline += r.within_deadline;
            total.foreign += r.foreign;
            total.bad_frames += r.bad_frames;
            closed += u64::from(r.closed_by_server);
            total.last_delivery_us = total.last_delivery_us.max(r.last_delivery_us);
            if let Some(h) = &r.hist {
                let _ = hist.add(h);
            }
        }
    }
    let _ = tx.close().await;
    let (acked, errors, writer_bad) = acks.await.unwrap_or_default();
    let scrape = match scraper {
        Some(h) => h.await.unwrap_or(Value::Null),
        None => Value::Null,
    };
    let cpu = cpu.await.unwrap_or(Value::Null);
    let expected = seq * subscribed as u64;
    // Events routed per second over the time they took to arrive: from the first write to
    // the last delivery (at least the write phase).
    let drain_secs = total.last_delivery_us.saturating_sub(write_end_us) as f64 / 1e6;
    let routed_secs = write_secs + drain_secs.max(0.0);
    json!({
        "scenario": "fanout",
        "url": c.target.label(),
        "url_count": c.target.urls.len(),
        "subscribers": opts.subscribers,
        "subscribed": subscribed,
        "subscribed_per_url": per_url,
        "subscribe_failed": opened.failed.json(),
        "connect_secs": round3(opened.took.as_secs_f64()),
        "connected": total_connected(opts.subscribers, &opened.failed),
        "target_rate": opts.rate,
        "keys": opts.keys,
        "writes_sent": seq,
        "writes_acked": acked,
        "writer_errors_by_code": errors.json(),
        "writer_closed": writer_broken,
        "writes_per_sec": stats::per_sec(seq, write_secs),
        "expected_deliveries": expected,
        "delivered": total.delivered,
        "delivered_within_5s": total.within_deadline,
        "delivered_within_5s_pct": pct(total.within_deadline, expected),
        "routed_events_per_sec": stats::per_sec(total.delivered, routed_secs),
        "delivery_latency": stats::latency_json(&hist),
        "foreign_updates": total.foreign,
        "bad_frames": total.bad_frames + writer_bad,
        "subscribers_closed_by_server": closed,
        "metrics_scrape": scrape,
        "cpu": cpu,
    })
}
