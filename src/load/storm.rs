//! Connect storm: `connections` clients connect and authenticate at once. Reports how many
//! the server admitted, how many it refused with HTTP 429 (the node's connection gate), other
//! failures, and how long it took to serve them all. One attempt each, no retry: the point is
//! what the server does with a burst.
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::conn::{self, ConnectError};
use super::fire::round3;
use super::{stats, Common};

pub async fn run(c: Common) -> Value {
    conn::raise_nofile_limit();
    let t0 = Instant::now();
    let timeout = c.connect_timeout;
    let tasks: Vec<_> = (0..c.connections)
        .map(|i| {
            let target = c.target.clone();
            tokio::spawn(async move {
                let t = Instant::now();
                let r = conn::open(&target, i, timeout).await;
                (i, r, t.elapsed())
            })
        })
        .collect();
    let mut held = Vec::with_capacity(c.connections);
    let mut accepted_lat = stats::histogram();
    let mut failed = stats::Tally::default();
    let mut last_done = Duration::ZERO;
    for t in tasks {
        match t.await {
            Ok((i, Ok(ws), took)) => {
                stats::record(
                    &mut accepted_lat,
                    u64::try_from(took.as_micros()).unwrap_or(u64::MAX),
                );
                // Held until everyone is done, so the burst is concurrent to the end.
                held.push((i, ws));
            }
            Ok((_, Err(e), _)) => failed.add(e.code(), 1),
            Err(_) => failed.add("task_panicked", 1),
        }
        last_done = t0.elapsed();
    }
    let accepted = held.len() as u64;
    let per_url = c.target.per_url(held.iter().map(|(i, _)| *i));
    for (_, mut ws) in held {
        let _ = ws.close(None).await;
    }
    let rejected = failed
        .0
        .get(ConnectError::Rejected.code())
        .copied()
        .unwrap_or(0);
    let secs = last_done.as_secs_f64();
    json!({
        "scenario": "connect-storm",
        "url": c.target.label(),
        "url_count": c.target.urls.len(),
        "connections": c.connections,
        "accepted": accepted,
        "accepted_per_url": per_url,
        "rejected_429": rejected,
        "failed_other": failed.total() - rejected,
        "failed_by_reason": failed.json(),
        "secs": round3(secs),
        "accepted_per_sec": stats::per_sec(accepted, secs),
        "connect_latency": stats::latency_json(&accepted_lat),
    })
}
