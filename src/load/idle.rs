//! Idle connections: `connections` authenticated clients that send nothing but a PING every
//! 5 s (what an idle TS client does). With the server's pid, reads its VmRSS before and after
//! to give the resident memory per connection, and times `/metrics` scrapes at that load.
//! Connections are held for `duration` (the PINGs keep them alive past the node's 60 s
//! heartbeat timeout), then closed. With several URLs the pid is the first URL's server, and
//! its RSS growth is divided by the connections that went to it.
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::SinkExt;
use serde_json::{json, Value};
use tokio::sync::Notify;

use super::conn::{self, Incoming, Ws};
use super::fire::{round3, total_connected, PING_EVERY};
use super::{probe, stats, Common};

/// Time for the server to settle after the last handshake before RSS is read (handshake
/// buffers freed, telemetry reported), so the figure is what a connection costs at rest.
const SETTLE: Duration = Duration::from_secs(3);

#[derive(Default)]
struct IdleResult {
    pongs: u64,
    closed_by_server: bool,
}

async fn hold(mut ws: Ws, ix: usize, stop: Arc<Notify>, until: Instant) -> IdleResult {
    let mut r = IdleResult::default();
    // Stagger the PINGs so thousands of connections do not all ping in the same millisecond.
    let offset = Duration::from_millis((ix as u64 * 7) % 5000);
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + offset, PING_EVERY);
    let stopped = stop.notified();
    tokio::pin!(stopped);
    loop {
        tokio::select! {
            _ = &mut stopped => break,
            _ = tokio::time::sleep_until(until.into()) => break,
            _ = ping.tick() => {
                if ws.send(conn::ping()).await.is_err() {
                    r.closed_by_server = true;
                    break;
                }
            }
            m = conn::next(&mut ws) => match m {
                None => { r.closed_by_server = true; break; }
                Some(Incoming::Pong) => r.pongs += 1,
                Some(_) => {}
            }
        }
    }
    let _ = ws.close(None).await;
    r
}

pub async fn run(c: Common) -> Value {
    let pid = c.server_pid;
    conn::raise_nofile_limit();
    let rss_before = pid.and_then(probe::rss_bytes);
    let opened = conn::open_all(
        &c.target,
        c.connections,
        c.connect_concurrency,
        c.connect_timeout,
        |_, ws| async move { Ok(ws) },
    )
    .await;
    let per_url = c.target.per_url(opened.conns.iter().map(|(ix, _)| *ix));
    // The pid is the first URL's server: RSS is divided by the connections it holds.
    let n = per_url.first().copied().unwrap_or(0);
    let stop = Arc::new(Notify::new());
    // Bounded in time even if the rest of the run stalls: connect phase + settle + scrapes +
    // hold, plus a margin.
    let until = Instant::now() + SETTLE + c.duration + Duration::from_secs(30);
    let tasks: Vec<_> = opened
        .conns
        .into_iter()
        .map(|(ix, ws)| tokio::spawn(hold(ws, ix, stop.clone(), until)))
        .collect();
    tokio::time::sleep(SETTLE).await;
    let rss_after = pid.and_then(probe::rss_bytes);
    let url = c
        .metrics_url
        .clone()
        .or_else(|| probe::metrics_url_for(c.target.first_url()));
    let mut scrape_hist = stats::histogram();
    let mut scrape_failures = 0u64;
    if let Some(url) = &url {
        for _ in 0..5 {
            match probe::scrape(url, Duration::from_secs(5)).await {
                Ok(s) if s.status == 200 => stats::record(
                    &mut scrape_hist,
                    u64::try_from(s.took.as_micros()).unwrap_or(u64::MAX),
                ),
                _ => scrape_failures += 1,
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    tokio::time::sleep(c.duration).await;
    // Counted before the close: a connection the server dropped while idle is a finding.
    let rss_end = pid.and_then(probe::rss_bytes);
    stop.notify_waiters();
    let mut pongs = 0;
    let mut closed = 0u64;
    for t in tasks {
        if let Ok(r) = t.await {
            pongs += r.pongs;
            closed += u64::from(r.closed_by_server);
        }
    }
    let per_conn = match (rss_before, rss_after) {
        (Some(b), Some(a)) if n > 0 => Some((a.saturating_sub(b)) / n),
        _ => None,
    };
    json!({
        "scenario": "idle",
        "url": c.target.label(),
        "url_count": c.target.urls.len(),
        "connections": c.connections,
        "connected": total_connected(c.connections, &opened.failed),
        "connected_per_url": per_url,
        "connect_failed": opened.failed.json(),
        "connect_retries": opened.retries,
        "connect_secs": round3(opened.took.as_secs_f64()),
        "held_secs": round3(c.duration.as_secs_f64()),
        "pid": pid,
        "rss_before_bytes": rss_before,
        "rss_after_bytes": rss_after,
        "rss_end_bytes": rss_end,
        "rss_per_connection_bytes": per_conn,
        "rss_per_connection_kib": per_conn.map(|b| round3(b as f64 / 1024.0)),
        "metrics_scrape": stats::latency_json(&scrape_hist),
        "metrics_scrape_failures": scrape_failures,
        "pongs": pongs,
        "closed_by_server": closed,
    })
}
