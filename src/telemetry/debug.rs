//! Live introspection for people (what BEAM's observer gives Erlang operators): the table behind
//! `GET /debug/actors`.
//!
//! The metrics actor already receives every actor's report; [`ActorTable`] keeps, next to the
//! registry, one row per actor kind and per member of a bounded family (shard 0, stripe 1), with
//! the mailbox depth, totals, and a few checkpoints of those totals so that rates, mean and max
//! handle times cover the last [`WINDOW`] rather than the whole uptime. Connections are many and
//! short-lived, so they share one row (their kind). Nothing here is on the hot path: a row
//! changes when a report arrives, and the answer is computed when someone asks.
use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::report::{ActorKind, StatsDelta};

/// Rates, means and maxima cover roughly this much recent time.
pub const WINDOW: Duration = Duration::from_secs(10);

/// Checkpoints are at least this far apart: connections report one by one, and thousands of
/// them must not grow a row's history.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(500);

/// Totals of a row as they stood at `at` (every report up to `at` included), plus the longest
/// handle time among the reports since the previous checkpoint.
#[derive(Clone, Copy, Debug)]
struct Checkpoint {
    at: Instant,
    messages: u64,
    handled: u64,
    handle_sum: f64,
    max_handle: f64,
}

#[derive(Debug)]
struct Row {
    depth: i64,
    messages: u64,
    /// Messages whose handle time was measured (0 with actor telemetry off).
    handled: u64,
    handle_sum: f64,
    restarts: u64,
    /// Oldest first, at least [`CHECKPOINT_EVERY`] apart (the newest one moves forward until
    /// then); `[0]` is the newest checkpoint at or before `now - WINDOW` once the row is older
    /// than the window.
    history: VecDeque<Checkpoint>,
}

impl Row {
    fn new(since: Instant) -> Row {
        Row {
            depth: 0,
            messages: 0,
            handled: 0,
            handle_sum: 0.0,
            restarts: 0,
            history: VecDeque::from([Checkpoint {
                at: since,
                messages: 0,
                handled: 0,
                handle_sum: 0.0,
                max_handle: 0.0,
            }]),
        }
    }

    fn prune(&mut self, now: Instant) {
        let Some(edge) = now.checked_sub(WINDOW) else {
            return;
        };
        while self.history.len() >= 2 && self.history[1].at <= edge {
            self.history.pop_front();
        }
    }
}

/// The rows, updated from reports by the metrics actor.
#[derive(Debug)]
pub struct ActorTable {
    rows: BTreeMap<(ActorKind, Option<u32>), Row>,
    /// Runtime lag per arbiter thread (the last reported value).
    lag: BTreeMap<String, f64>,
    /// A first report covers one interval; its row starts that long before it arrives.
    report_interval: Duration,
}

impl ActorTable {
    pub fn new(report_interval: Duration) -> ActorTable {
        ActorTable {
            rows: BTreeMap::new(),
            lag: BTreeMap::new(),
            report_interval,
        }
    }

    /// Adds one actor's report.
    pub fn record(&mut self, d: &StatsDelta, now: Instant) {
        let since = now.checked_sub(self.report_interval).unwrap_or(now);
        let row = self
            .rows
            .entry((d.kind, d.member))
            .or_insert_with(|| Row::new(since));
        row.depth += d.depth_delta;
        row.messages += d.messages;
        row.handled += d.handle.count();
        row.handle_sum += d.handle.sum();
        row.restarts += d.restarts;
        let mut checkpoint = Checkpoint {
            at: now,
            messages: row.messages,
            handled: row.handled,
            handle_sum: row.handle_sum,
            max_handle: d.max_handle,
        };
        let n = row.history.len();
        let coalesce = n >= 2 && now.duration_since(row.history[n - 2].at) < CHECKPOINT_EVERY;
        match row.history.back_mut() {
            Some(last) if coalesce => {
                checkpoint.max_handle = checkpoint.max_handle.max(last.max_handle);
                *last = checkpoint;
            }
            _ => row.history.push_back(checkpoint),
        }
        row.prune(now);
    }

    pub fn record_lag(&mut self, arbiter: &str, seconds: f64) {
        match self.lag.get_mut(arbiter) {
            Some(v) => *v = seconds,
            None => {
                self.lag.insert(arbiter.to_owned(), seconds);
            }
        }
    }

    /// The rows as of `now`, in kind order then member order.
    pub fn snapshot(&mut self, now: Instant) -> ActorsSnapshot {
        let mut actors = Vec::with_capacity(self.rows.len());
        for ((kind, member), row) in &mut self.rows {
            row.prune(now);
            let base = row.history[0];
            let elapsed = now.duration_since(base.at).as_secs_f64().max(1e-3);
            let handled = row.handled - base.handled;
            let handle_sum = row.handle_sum - base.handle_sum;
            // [0] covers reports before the window (or is the empty start of the row).
            let max = row
                .history
                .iter()
                .skip(1)
                .map(|c| c.max_handle)
                .fold(0.0, f64::max);
            actors.push(ActorRow {
                actor: kind.label(),
                member: member.map(|i| member_name(*kind, i)),
                mailbox_depth: row.depth,
                messages_total: row.messages,
                messages_per_second: (row.messages - base.messages) as f64 / elapsed,
                handle_mean_seconds: (handled > 0).then(|| handle_sum / handled as f64),
                handle_max_seconds: (handled > 0).then_some(max),
                busy_percent: (row.handled > 0).then(|| 100.0 * handle_sum / elapsed),
                restarts_total: row.restarts,
            });
        }
        let arbiters = self
            .lag
            .iter()
            .map(|(name, lag)| ArbiterLag {
                arbiter: name.clone(),
                lag_seconds: *lag,
            })
            .collect();
        ActorsSnapshot {
            window_seconds: WINDOW.as_secs_f64(),
            actors,
            arbiters,
        }
    }
}

/// `shard-0`, `stripe-1`: the names the lag probes and log lines use too.
fn member_name(kind: ActorKind, index: u32) -> String {
    let prefix = match kind {
        ActorKind::EventQueue => "stripe",
        other => other.label(),
    };
    format!("{prefix}-{index}")
}

/// `GET /debug/actors` as JSON.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ActorsSnapshot {
    pub window_seconds: f64,
    pub actors: Vec<ActorRow>,
    pub arbiters: Vec<ArbiterLag>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ActorRow {
    /// The kind, as in the `actor` label of the per-actor metric families.
    pub actor: &'static str,
    /// The member of a bounded family (`shard-0`); `None` for a kind's only or shared row.
    pub member: Option<String>,
    pub mailbox_depth: i64,
    pub messages_total: u64,
    /// Over the last window.
    pub messages_per_second: f64,
    /// Over the last window; `None` when nothing was timed in it.
    pub handle_mean_seconds: Option<f64>,
    pub handle_max_seconds: Option<f64>,
    /// Share of the window spent handling messages: near 100 % for one member means its thread
    /// is saturated (a kind's shared row can exceed 100 %: it sums many actors).
    pub busy_percent: Option<f64>,
    pub restarts_total: u64,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ArbiterLag {
    pub arbiter: String,
    pub lag_seconds: f64,
}

impl ActorsSnapshot {
    /// The plain-text table for `Accept: text/plain` (a terminal, `watch curl ...`).
    pub fn to_table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:<12} {:<10} {:>8} {:>10} {:>12} {:>9} {:>9} {:>7} {:>8}",
            "ACTOR", "MEMBER", "MAILBOX", "MSG/S", "MESSAGES", "MEAN", "MAX", "BUSY%", "RESTARTS"
        );
        for r in &self.actors {
            let _ = writeln!(
                out,
                "{:<12} {:<10} {:>8} {:>10.1} {:>12} {:>9} {:>9} {:>7} {:>8}",
                r.actor,
                r.member.as_deref().unwrap_or("-"),
                r.mailbox_depth,
                r.messages_per_second,
                r.messages_total,
                r.handle_mean_seconds.map_or_else(|| "-".into(), duration),
                r.handle_max_seconds.map_or_else(|| "-".into(), duration),
                r.busy_percent
                    .map_or_else(|| "-".into(), |b| format!("{b:.1}")),
                r.restarts_total,
            );
        }
        let _ = writeln!(
            out,
            "\n(rates, MEAN, MAX and BUSY% over the last {:.0} s)\n\n{:<12} {:>9}",
            self.window_seconds, "ARBITER", "LAG"
        );
        for a in &self.arbiters {
            let _ = writeln!(out, "{:<12} {:>9}", a.arbiter, duration(a.lag_seconds));
        }
        out
    }
}

/// Seconds in the unit a person reads at a glance.
fn duration(seconds: f64) -> String {
    if seconds >= 1.0 {
        format!("{seconds:.2}s")
    } else if seconds >= 1e-3 {
        format!("{:.1}ms", seconds * 1e3)
    } else {
        format!("{:.0}µs", seconds * 1e6)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::report::ActorStats;

    fn delta(kind: ActorKind, member: Option<usize>, messages: u64, each: f64) -> StatsDelta {
        let mut s = ActorStats::new(kind, true);
        if let Some(i) = member {
            s = s.member(i);
        }
        for _ in 0..messages {
            s.end(None);
        }
        let mut d = s.take();
        for _ in 0..messages {
            d.handle.observe(each);
        }
        d.max_handle = each;
        d
    }

    #[test]
    fn members_get_rows_and_rates_cover_the_window() {
        let mut t = ActorTable::new(Duration::from_secs(1));
        let t0 = Instant::now();
        t.record(&delta(ActorKind::Shard, Some(0), 10, 0.001), t0);
        t.record(&delta(ActorKind::Shard, Some(1), 1, 0.5), t0);
        t.record(&delta(ActorKind::Connection, None, 4, 0.0), t0);
        let s = t.snapshot(t0);
        let names: Vec<_> = s.actors.iter().map(|r| r.member.as_deref()).collect();
        assert_eq!(names, vec![None, Some("shard-0"), Some("shard-1")]);
        let shard0 = &s.actors[1];
        assert_eq!(shard0.messages_total, 10);
        // The first report covers one interval (1 s).
        assert!((shard0.messages_per_second - 10.0).abs() < 0.01);
        assert!((shard0.handle_mean_seconds.unwrap() - 0.001).abs() < 1e-9);
        assert_eq!(s.actors[2].handle_max_seconds, Some(0.5));

        // Long after: nothing new in the window, so the rate falls to 0, the totals stay.
        let later = t0 + WINDOW * 3;
        let s = t.snapshot(later);
        assert_eq!(s.actors[1].messages_total, 10);
        assert_eq!(s.actors[1].messages_per_second, 0.0);
        assert_eq!(s.actors[1].handle_mean_seconds, None);
    }

    #[test]
    fn steady_reports_give_the_steady_rate_and_max() {
        let mut t = ActorTable::new(Duration::from_millis(100));
        let t0 = Instant::now();
        for i in 1..=300u32 {
            let at = t0 + Duration::from_millis(100 * u64::from(i));
            let each = if i == 290 { 0.25 } else { 0.001 };
            t.record(&delta(ActorKind::Storage, None, 10, each), at);
        }
        let s = t.snapshot(t0 + Duration::from_secs(30));
        let row = &s.actors[0];
        assert!((row.messages_per_second - 100.0).abs() < 2.0, "{row:?}");
        assert_eq!(row.handle_max_seconds, Some(0.25));
        // 100 msg/s × ~1 ms each ≈ 10 % of the time, one 250 ms batch on top.
        let busy = row.busy_percent.unwrap();
        assert!(busy > 10.0 && busy < 40.0, "{busy}");
    }

    #[test]
    fn history_stays_bounded_under_many_reporters() {
        let mut t = ActorTable::new(Duration::from_millis(100));
        let t0 = Instant::now();
        for i in 0..100_000u32 {
            let at = t0 + Duration::from_millis(u64::from(i) / 10);
            t.record(&delta(ActorKind::Connection, None, 1, 0.0), at);
        }
        let row = &t.rows[&(ActorKind::Connection, None)];
        assert!(row.history.len() <= 2 + (WINDOW.as_millis() / 500) as usize);
        assert_eq!(row.messages, 100_000);
    }

    #[test]
    fn table_has_a_header_and_a_line_per_row() {
        let mut t = ActorTable::new(Duration::from_secs(1));
        let now = Instant::now();
        t.record(&delta(ActorKind::EventQueue, Some(2), 3, 0.002), now);
        t.record_lag("shard-0", 0.012);
        let text = t.snapshot(now).to_table();
        assert!(text.starts_with("ACTOR "), "{text}");
        assert!(text.contains("event_queue  stripe-2"), "{text}");
        assert!(text.contains("2.0ms"), "{text}");
        assert!(text.contains("\nshard-0         12.0ms\n"), "{text}");
    }
}
