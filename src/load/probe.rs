//! Observing the server from outside: how long a `/metrics` scrape takes under load, and the
//! server process's resident memory from `/proc/<pid>/status`.
//!
//! The scrape is a hand-written HTTP/1.1 GET on a fresh TCP connection (`Connection: close`,
//! read to EOF): a scraper like Prometheus opens its own connection too, and this avoids an
//! HTTP client crate for one request line.
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::stats;

/// `http://host:port/metrics` for a `ws://host:port/...` URL.
pub fn metrics_url_for(ws_url: &str) -> Option<String> {
    let rest = ws_url.strip_prefix("ws://")?;
    let authority = rest.split('/').next()?;
    Some(format!("http://{authority}/metrics"))
}

/// Result of one scrape.
#[derive(Debug)]
pub struct Scraped {
    pub took: Duration,
    pub status: u16,
    pub bytes: usize,
}

/// GETs `url` (plain `http://host:port/path` only) within `timeout`.
pub async fn scrape(url: &str, timeout: Duration) -> Result<Scraped, String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url}: only http:// URLs are supported"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, "/"),
    };
    let t0 = Instant::now();
    let fut = async {
        let mut s = TcpStream::connect(authority)
            .await
            .map_err(|e| format!("connect {authority}: {e}"))?;
        let req = format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes())
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut buf = Vec::with_capacity(64 * 1024);
        s.read_to_end(&mut buf)
            .await
            .map_err(|e| format!("read: {e}"))?;
        Ok::<_, String>(buf)
    };
    let buf = tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| format!("no full answer within {timeout:?}"))??;
    let took = t0.elapsed();
    // "HTTP/1.1 200 OK": the status is the second word of the first line.
    let status = buf
        .split(|&b| b == b'\r')
        .next()
        .and_then(|line| std::str::from_utf8(line).ok())
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    Ok(Scraped {
        took,
        status,
        bytes: buf.len(),
    })
}

/// Scrapes `url` every `every` until `until`, for "scrape time at saturation".
pub async fn scrape_loop(url: String, every: Duration, until: Instant) -> Value {
    let mut h = stats::histogram();
    let mut failures = stats::Tally::default();
    let mut last_bytes = 0;
    while Instant::now() + every < until {
        tokio::time::sleep(every).await;
        match scrape(&url, Duration::from_secs(5)).await {
            Ok(s) if s.status == 200 => {
                stats::record(
                    &mut h,
                    u64::try_from(s.took.as_micros()).unwrap_or(u64::MAX),
                );
                last_bytes = s.bytes;
            }
            Ok(s) => failures.add(format!("http_{}", s.status), 1),
            Err(_) => failures.add("error", 1),
        }
    }
    json!({"url": url, "scrape": stats::latency_json(&h), "bytes": last_bytes,
           "failures": failures.json()})
}

/// `VmRSS` of `pid` in bytes.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// CPU time (user + system) of process `pid` so far, all threads: fields 14 and 15 of
/// `/proc/<pid>/stat`, in USER_HZ ticks, which the kernel ABI fixes at 100 per second.
pub fn cpu_secs(pid: u32) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; fields are counted after its ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / 100.0)
}

/// CPU used by the load generator and (with its pid) the server over a phase: on a shared
/// machine it shows whether the generator starved the server.
pub struct CpuMeter {
    server: Option<u32>,
    start: std::time::Instant,
    own0: Option<f64>,
    server0: Option<f64>,
}

impl CpuMeter {
    pub fn start(server: Option<u32>) -> Self {
        CpuMeter {
            server,
            start: std::time::Instant::now(),
            own0: cpu_secs(std::process::id()),
            server0: server.and_then(cpu_secs),
        }
    }

    /// `{wall_secs, load_generator_cpu_secs, server_cpu_secs}` since [`CpuMeter::start`].
    pub fn json(&self) -> Value {
        let r = |x: f64| (x * 100.0).round() / 100.0;
        let own = cpu_secs(std::process::id())
            .zip(self.own0)
            .map(|(a, b)| r(a - b));
        let server = self
            .server
            .and_then(cpu_secs)
            .zip(self.server0)
            .map(|(a, b)| r(a - b));
        json!({"wall_secs": r(self.start.elapsed().as_secs_f64()),
               "load_generator_cpu_secs": own, "server_cpu_secs": server})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_url() {
        assert_eq!(
            metrics_url_for("ws://127.0.0.1:8080/ws").as_deref(),
            Some("http://127.0.0.1:8080/metrics")
        );
        assert_eq!(metrics_url_for("wss://x/ws"), None);
    }

    #[test]
    fn own_rss_and_cpu() {
        assert!(rss_bytes(std::process::id()).is_some_and(|b| b > 0));
        assert!(cpu_secs(std::process::id()).is_some_and(|s| s >= 0.0));
    }
}
