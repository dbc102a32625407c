//! The load generator behind `topgun-load` (issue 6): real WebSocket clients speaking the
//! client protocol (protocol.md) against any server at `--url`, the node or another TopGun
//! server, or against several (the nodes of a cluster): connection `n` goes to the URL
//! `n mod count` ([`conn::Target`]).
//!
//! Owns: connecting and authenticating clients ([`conn`]), the scenarios ([`fire`],
//! [`fanout`], [`query`], [`storm`], [`idle`], [`teardown`]), latency and counter bookkeeping ([`stats`]), and the few
//! observations of the server from outside ([`probe`]: `/metrics` scrape time, VmRSS from
//! `/proc`). Leaves to `src/bin/topgun-load.rs` the command line and the output format, and
//! to `scripts/bench*` starting and stopping servers.
//!
//! Everything here is a client of a server it does not trust: a frame that does not decode is
//! counted, never a panic, and every wait has a deadline.
pub mod conn;
pub mod fanout;
pub mod fire;
pub mod idle;
pub mod probe;
pub mod query;
pub mod stats;
pub mod storm;
pub mod teardown;

use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The one clock every task of the process shares, so a timestamp written by the fan-out
/// writer can be subtracted from the time a subscriber task receives it.
pub fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Microseconds since [`epoch`].
pub fn now_us() -> u64 {
    u64::try_from(epoch().elapsed().as_micros()).unwrap_or(u64::MAX)
}

/// Options every scenario shares.
#[derive(Clone, Debug)]
pub struct Common {
    pub target: conn::Target,
    pub connections: usize,
    /// Hard bound on the measured phase.
    pub duration: Duration,
    /// Hard bound on the number of ops (writes) the run sends in total.
    pub max_ops: u64,
    /// Time excluded from the figures at the start of the measured phase.
    pub warmup: Duration,
    /// Connection attempts in flight at once while opening connections.
    pub connect_concurrency: usize,
    /// The whole connect phase must finish within this (429s from the node's connection gate
    /// are retried until then).
    pub connect_timeout: Duration,
    /// `/metrics` to scrape (None: derived from `--url`).
    pub metrics_url: Option<String>,
    /// Scrape `/metrics` this often during the measured phase (None: never).
    pub scrape_every: Option<Duration>,
    /// The server's pid when it runs on this machine: its CPU time and RSS are read from
    /// `/proc`.
    pub server_pid: Option<u32>,
}

/// A [`Duration`] from `10s`, `500ms`, `2m` or a plain number of seconds (`1.5`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (e.g. 10s, 500ms, 2m)"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        _ => return Err(format!("unknown unit in {s:?} (use ms, s or m)")),
    };
    Duration::try_from_secs_f64(secs).map_err(|e| format!("{s:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("x").is_err());
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("3h").is_err());
    }
}
