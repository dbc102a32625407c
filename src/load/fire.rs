//! Write throughput: every connection sends `CLIENT_OP`s (or `OP_BATCH`es of `batch` ops)
//! with at most `window` unacknowledged at a time. `window = 1` is fire-and-wait (send, wait
//! for the `OP_ACK`, send the next); a larger window is fire-and-forget with a bound, which
//! keeps the run from measuring an ever-growing queue instead of the server.
//!
//! Op ids are increasing decimal strings per connection, as the TS client's op log makes them,
//! so an `OP_ACK`'s `lastId` acknowledges every outstanding batch up to it (the client rule,
//! protocol.md 2.4). An `ERROR` reply carries no id: with the node answering a connection's
//! frames in order it belongs to the oldest outstanding batch, which is then counted as
//! rejected (by code) instead of acknowledged.
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::SinkExt;
use hdrhistogram::Histogram;
use rmpv::Value as Mp;
use serde_json::{json, Value};

use super::conn::{self, Incoming, Ws};
use super::{probe, stats, Common};
use crate::protocol::{ClientMessage, ClientOp, LwwRecord, OpBatch, Timestamp};

/// The TS client pings every 5 s and the node closes a connection silent for 60 s; runs longer
/// than that must keep the heartbeat going.
pub const PING_EVERY: Duration = Duration::from_secs(5);

/// How long in-flight batches may still be answered after the measured phase ends.
const DRAIN: Duration = Duration::from_secs(5);

#[derive(Clone, Debug)]
pub struct FireOpts {
    pub common: Common,
    /// Ops per frame: 1 sends `CLIENT_OP`, more sends `OP_BATCH`.
    pub batch: usize,
    /// Unacknowledged frames allowed per connection.
    pub window: usize,
    pub map: String,
    /// Distinct keys written (spread over all connections).
    pub keys: u64,
    /// Extra bytes of padding in each value (a field `p`), to fill a node with data.
    pub value_bytes: usize,
}

/// The measured phase, shared read-only by every task.
struct Phase {
    measure_from: Instant,
    end: Instant,
    /// Ops the run may still send (the `--ops` bound).
    ops_left: AtomicU64,
}

#[derive(Default)]
struct ConnResult {
    sent_ops: u64,
    acked_ops: u64,
    rejected_ops: u64,
    errors: stats::Tally,
    bad_frames: u64,
    unanswered_frames: u64,
    closed_by_server: bool,
    last_ack: Option<Instant>,
    hist: Option<Histogram<u64>>,
}

/// Builds one frame of `batch` ops with ids `first_id..first_id+batch`.
fn frame(opts: &FireOpts, conn_ix: usize, node_id: &str, first_id: u64) -> ClientMessage {
    let millis = conn::wall_ms();
    let mut ops = Vec::with_capacity(opts.batch);
    for i in 0..opts.batch as u64 {
        let id = first_id + i;
        // Keys spread over the key space so connections contend on shards, not one key.
        let key = (conn_ix as u64).wrapping_mul(7919).wrapping_add(id) % opts.keys.max(1);
        ops.push(ClientOp {
            id: Some(id.to_string()),
            map_name: opts.map.clone(),
            key: format!("k{key}"),
            op_type: Some("PUT".into()),
            record: Some(Some(LwwRecord {
                value: Mp::Map(value_fields(id, conn_ix, opts.value_bytes)),
                // A valid HLC at wall-clock now: the node refuses clocks too far ahead.
                timestamp: Timestamp {
                    millis,
                    counter: u32::try_from(id % u64::from(u32::MAX)).unwrap_or(0),
                    node_id: node_id.to_owned(),
                },
                ttl_ms: None,
            })),
            or_record: None,
            or_tag: None,
            write_concern: None,
            timeout: None,
        });
    }
    if opts.batch == 1 {
        if let Some(op) = ops.pop() {
            return ClientMessage::ClientOp(op);
        }
    }
    ClientMessage::OpBatch(OpBatch {
        ops,
        write_concern: None,
        timeout: None,
    })
}

/// The written value: the op id and connection, and `value_bytes` of padding when asked for.
fn value_fields(id: u64, conn_ix: usize, value_bytes: usize) -> Vec<(Mp, Mp)> {
    let mut fields = vec![
        ("n".into(), Mp::from(id)),
        ("c".into(), Mp::from(conn_ix as u64)),
    ];
    if value_bytes > 0 {
        fields.push(("p".into(), Mp::from("x".repeat(value_bytes))));
    }
    fields
}

async fn drive(mut ws: Ws, ix: usize, opts: Arc<FireOpts>, phase: Arc<Phase>) -> ConnResult {
    let mut r = ConnResult::default();
    let mut hist = stats::histogram();
    let node_id = format!("load-{ix}");
    let batch = opts.batch as u64;
    let mut next_id = 1u64;
    // (last op id, sent at, ops) per outstanding frame, oldest first.
    let mut inflight: VecDeque<(u64, Instant, u64)> = VecDeque::with_capacity(opts.window);
    let mut last_ping = Instant::now();
    let drain_until = phase.end + DRAIN;
    let mut sending = true;
    loop {
        let now = Instant::now();
        if sending && now >= phase.end {
            sending = false;
        }
        let mut wrote = false;
        while sending && inflight.len() < opts.window {
            // Claim the ops from the global bound before sending them.
            let claimed =
                phase
                    .ops_left
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
                        left.checked_sub(batch)
                    });
            if claimed.is_err() {
                sending = false;
                break;
            }
            let msg = conn::encode(&frame(&opts, ix, &node_id, next_id));
            let last = next_id + batch - 1;
            next_id += batch;
            if ws.feed(msg).await.is_err() {
                r.closed_by_server = true;
                break;
            }
            inflight.push_back((last, Instant::now(), batch));
            r.sent_ops += batch;
            wrote = true;
        }
        if now.duration_since(last_ping) >= PING_EVERY {
            last_ping = now;
            wrote |= ws.feed(conn::ping()).await.is_ok();
        }
        if r.closed_by_server || (wrote && ws.flush().await.is_err()) {
            r.closed_by_server = true;
            break;
        }
        if inflight.is_empty() {
            break;
        }
        let msg = match tokio::time::timeout_at(drain_until.into(), conn::next(&mut ws)).await {
            Err(_) => break,
            Ok(None) => {
                r.closed_by_server = true;
                break;
            }
            Ok(Some(m)) => m,
        };
        let at = Instant::now();
        let counted = at >= phase.measure_from && at <= phase.end;
        match msg {
            Incoming::OpAck { last_id } => {
                // A lastId that is not one of our numbers ("unknown") acknowledges all, as
                // in the client.
                let upto = last_id.parse::<u64>().unwrap_or(u64::MAX);
                while let Some(&(last, sent, n)) = inflight.front() {
                    if last > upto {
                        break;
                    }
                    inflight.pop_front();
                    if counted {
                        r.acked_ops += n;
                        stats::record(
                            &mut hist,
                            u64::try_from(at.duration_since(sent).as_micros()).unwrap_or(u64::MAX),
                        );
                        r.last_ack = Some(at);
                    }
                }
            }
            Incoming::Error { code } => {
                r.errors.add(code.to_string(), 1);
                if let Some((_, _, n)) = inflight.pop_front() {
                    if counted {
                        r.rejected_ops += n;
                    }
                }
            }
            Incoming::Bad => r.bad_frames += 1,
            _ => {}
        }
    }
    r.unanswered_frames = inflight.len() as u64;
    let _ = ws.close(None).await;
    r.hist = Some(hist);
    r
}

pub async fn run(opts: FireOpts) -> Value {
    let opts = Arc::new(opts);
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
    let per_url = c.target.per_url(opened.conns.iter().map(|(ix, _)| *ix));
    let start = Instant::now();
    let phase = Arc::new(Phase {
        measure_from: start + c.warmup,
        end: start + c.warmup + c.duration,
        ops_left: AtomicU64::new(c.max_ops),
    });
    let scraper = spawn_scraper(c, phase.measure_from, phase.end);
    // Ends with the phase, or when every connection is done (the --ops bound ran out).
    let writers_done = Arc::new(tokio::sync::Notify::new());
    let cpu = tokio::spawn(cpu_until(
        c.server_pid,
        phase.measure_from,
        phase.end,
        writers_done.clone(),
    ));
    let tasks: Vec<_> = opened
        .conns
        .into_iter()
        .map(|(ix, ws)| tokio::spawn(drive(ws, ix, opts.clone(), phase.clone())))
        .collect();
    let mut hist = stats::histogram();
    let mut total = ConnResult::default();
    let mut closed = 0u64;
    let mut panicked = 0u64;
    for t in tasks {
        match t.await {
            Ok(r) => {
                total.sent_ops += r.sent_ops;
                total.acked_ops += r.acked_ops;
                total.rejected_ops += r.rejected_ops;
                total.errors.merge(&r.errors);
                total.bad_frames += r.bad_frames;
                total.unanswered_frames += r.unanswered_frames;
                closed += u64::from(r.closed_by_server);
                total.last_ack = total.last_ack.max(r.last_ack);
                if let Some(h) = &r.hist {
                    // Same bounds on both sides, so add cannot fail.
                    let _ = hist.add(h);
                }
            }
            Err(_) => panicked += 1,
        }
    }
    writers_done.notify_one();
    // The window: the measured phase, or less if the --ops bound ended the run early.
    let window_end = match total.last_ack {
        Some(t) if t < phase.end => t,
        _ => phase.end,
    };
    let secs = window_end
        .saturating_duration_since(phase.measure_from)
        .as_secs_f64();
    let scrape = match scraper {
        Some(h) => h.await.unwrap_or(Value::Null),
        None => Value::Null,
    };
    let cpu = cpu.await.unwrap_or(Value::Null);
    let scenario = if opts.window == 1 {
        "fire-and-wait"
    } else {
        "fire-and-forget"
    };
    json!({
        "scenario": scenario,
        "url": c.target.label(),
        "url_count": c.target.urls.len(),
        "connections": c.connections,
        "connected": total_connected(c.connections, &opened.failed),
        "connected_per_url": per_url,
        "connect_failed": opened.failed.json(),
        "connect_retries": opened.retries,
        "connect_secs": round3(opened.took.as_secs_f64()),
        "batch": opts.batch,
        "window": opts.window,
        "warmup_secs": round3(c.warmup.as_secs_f64()),
        "measured_secs": round3(secs),
        "sent_ops": total.sent_ops,
        "acked_ops": total.acked_ops,
        "ops_per_sec": stats::per_sec(total.acked_ops, secs),
        "rejected_ops": total.rejected_ops,
        "rejected_pct": pct(total.rejected_ops, total.acked_ops + total.rejected_ops),
        "errors_by_code": total.errors.json(),
        "ack_latency": stats::latency_json(&hist),
        "bad_frames": total.bad_frames,
        "unanswered_frames": total.unanswered_frames,
        "closed_by_server": closed,
        "tasks_panicked": panicked,
        "metrics_scrape": scrape,
        "cpu": cpu,
    })
}

/// CPU used by this process and the server between `from` and `until`.
pub async fn cpu_over(server: Option<u32>, from: Instant, until: Instant) -> Value {
    cpu_until(server, from, until, Arc::new(tokio::sync::Notify::new())).await
}

/// [`cpu_over`], ending early when `done` is notified.
async fn cpu_until(
    server: Option<u32>,
    from: Instant,
    until: Instant,
    done: Arc<tokio::sync::Notify>,
) -> Value {
    tokio::select! {
        _ = tokio::time::sleep_until(from.into()) => {}
        _ = done.notified() => return probe::CpuMeter::start(server).json(),
    }
    let meter = probe::CpuMeter::start(server);
    tokio::select! {
        _ = tokio::time::sleep_until(until.into()) => {}
        _ = done.notified() => {}
    }
    meter.json()
}

/// Scrapes `/metrics` every `--scrape-every` between `from` and `until` (after the warm-up:
/// the figure asked for is the scrape time at saturation).
pub fn spawn_scraper(
    c: &Common,
    from: Instant,
    until: Instant,
) -> Option<tokio::task::JoinHandle<Value>> {
    let every = c.scrape_every?;
    let url = c
        .metrics_url
        .clone()
        .or_else(|| probe::metrics_url_for(c.target.first_url()))?;
    Some(tokio::spawn(async move {
        tokio::time::sleep_until(from.into()).await;
        probe::scrape_loop(url, every, until).await
    }))
}

pub fn total_connected(wanted: usize, failed: &stats::Tally) -> u64 {
    (wanted as u64).saturating_sub(failed.total())
}

pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

pub fn pct(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        (part as f64 * 10000.0 / whole as f64).round() / 100.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::codec;

    fn opts(batch: usize) -> FireOpts {
        FireOpts {
            common: Common {
                target: conn::Target {
                    urls: vec!["ws://127.0.0.1:1/ws".into()],
                    secret: None,
                },
                connections: 1,
                duration: Duration::from_secs(1),
                max_ops: 10,
                warmup: Duration::ZERO,
                connect_concurrency: 1,
                connect_timeout: Duration::from_secs(1),
                metrics_url: None,
                scrape_every: None,
                server_pid: None,
            },
            batch,
            window: 1,
            map: "bench".into(),
            keys: 100,
            value_bytes: 0,
        }
    }

    #[test]
    fn frames_decode_as_the_node_reads_them() {
        let one = codec::encode_client(&frame(&opts(1), 3, "load-3", 7)).expect("encode");
        match codec::decode(&one).expect("decode") {
            ClientMessage::ClientOp(op) => assert_eq!(op.id.as_deref(), Some("7")),
            other => panic!("{other:?}"),
        }
        let ten = codec::encode_client(&frame(&opts(10), 3, "load-3", 11)).expect("encode");
        match codec::decode(&ten).expect("decode") {
            ClientMessage::OpBatch(b) => {
                assert_eq!(b.ops.len(), 10);
                assert_eq!(b.ops.last().and_then(|o| o.id.as_deref()), Some("20"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn percentages() {
        assert_eq!(pct(1, 3), 33.33);
        assert_eq!(pct(0, 0), 0.0);
    }
}
