//! Live introspection for people (what BEAM's observer gives Erlang operators): the table behind
//! `GET /debug/actors`.
//!
//! The metrics actor already receives every actor's report; [`ActorTable`] keeps, next to the
//! registry, one row per actor kind and per member of a bounded family (shard 0, stripe 1), with
//! the mailbox depth, totals, and a few checkpoints of those totals so that rates, mean and max
//! handle times and mailbox waits cover the last [`WINDOW`] rather than the whole uptime.
//! Connections are many and short-lived, so they share one row (their kind).
//!
//! Beside the rows it keeps every actor that reported within the window (or still has
//! messages in its mailbox) as an [`Instance`], named (a connection by its clientId, a peer link
//! by the peer's node id), so an answer can list the top actors of each kind by mailbox depth,
//! mailbox wait and busy time: which of 100,000 connections is the slow one. An instance holds
//! two half-window slices of sums, not a history, so that many connections cost little; one
//! whose actor stopped goes with its final report, an idle one after the window.
//!
//! Nothing here is on the hot path: a row changes when a report arrives, and the answer is
//! computed when someone asks.
use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::report::{ActorKind, StatsDelta};

/// Rates, means and maxima cover roughly this much recent time.
pub const WINDOW: Duration = Duration::from_secs(10);

/// Checkpoints are at least this far apart: connections report one by one, and thousands of
/// them must not grow a row's history.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(500);

/// The slices of an [`Instance`]: its figures cover the last one to two of them.
const HALF_WINDOW: Duration = Duration::from_secs(WINDOW.as_secs() / 2);

/// The top lists of one answer hold at most this many actors each (`?top=N`).
pub const MAX_TOP: usize = 100;

/// Totals of a row as they stood at `at` (every report up to `at` included), plus the longest
/// handle time and mailbox wait among the reports since the previous checkpoint.
#[derive(Clone, Copy, Debug)]
struct Checkpoint {
    at: Instant,
    messages: u64,
    handled: u64,
    handle_sum: f64,
    max_handle: f64,
    waited: u64,
    wait_sum: f64,
    max_wait: f64,
}

impl Checkpoint {
    fn empty(at: Instant) -> Checkpoint {
        Checkpoint {
            at,
            messages: 0,
            handled: 0,
            handle_sum: 0.0,
            max_handle: 0.0,
            waited: 0,
            wait_sum: 0.0,
            max_wait: 0.0,
        }
    }
}

#[derive(Debug)]
struct Row {
    depth: i64,
    messages: u64,
    /// Messages whose handle time was measured (0 with actor telemetry off).
    handled: u64,
    handle_sum: f64,
    /// Mailbox messages whose wait was measured.
    waited: u64,
    wait_sum: f64,
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
            waited: 0,
            wait_sum: 0.0,
            restarts: 0,
            history: VecDeque::from([Checkpoint::empty(since)]),
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

/// Sums of one instance's reports over half a window.
#[derive(Clone, Copy, Debug, Default)]
struct Slice {
    messages: u64,
    handle_sum: f64,
    waited: u64,
    wait_sum: f64,
    max_wait: f64,
}

impl Slice {
    fn add(&mut self, d: &StatsDelta) {
        self.messages += d.messages;
        self.handle_sum += d.handle.sum();
        self.waited += d.wait.count();
        self.wait_sum += d.wait.sum();
        self.max_wait = self.max_wait.max(d.max_wait);
    }
}

/// One actor, as its reports describe it.
#[derive(Debug)]
struct Instance {
    member: Option<u32>,
    name: Option<Arc<str>>,
    depth: i64,
    /// Its first report covers one interval before it arrived.
    since: Instant,
    last_seen: Instant,
    /// `current` holds the reports since `current_from`, `previous` the half window before.
    current_from: Instant,
    current: Slice,
    previous: Slice,
}

impl Instance {
    fn roll(&mut self, now: Instant) {
        let age = now.saturating_duration_since(self.current_from);
        if age >= 2 * HALF_WINDOW {
            self.previous = Slice::default();
            self.current = Slice::default();
            self.current_from = now;
        } else if age >= HALF_WINDOW {
            self.previous = std::mem::take(&mut self.current);
            self.current_from += HALF_WINDOW;
        }
    }

    /// Idle for the whole window and nothing waiting for it: it need not be kept.
    fn is_stale(&self, now: Instant) -> bool {
        self.depth <= 0 && now.saturating_duration_since(self.last_seen) > WINDOW
    }

    /// Its figures over the slices as of `now` (rolled first).
    fn figures(&mut self, now: Instant) -> Figures {
        self.roll(now);
        let from = self.since.max(
            self.current_from
                .checked_sub(HALF_WINDOW)
                .unwrap_or(self.since),
        );
        let elapsed = now.saturating_duration_since(from).as_secs_f64().max(1e-3);
        let (p, c) = (self.previous, self.current);
        let waited = p.waited + c.waited;
        let handle_sum = p.handle_sum + c.handle_sum;
        Figures {
            depth: self.depth,
            messages_per_second: (p.messages + c.messages) as f64 / elapsed,
            wait_mean: (waited > 0).then(|| (p.wait_sum + c.wait_sum) / waited as f64),
            wait_max: (waited > 0).then(|| p.max_wait.max(c.max_wait)),
            busy: (handle_sum > 0.0).then(|| 100.0 * handle_sum / elapsed),
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Figures {
    depth: i64,
    messages_per_second: f64,
    wait_mean: Option<f64>,
    wait_max: Option<f64>,
    busy: Option<f64>,
}

/// The rows, updated from reports by the metrics actor.
#[derive(Debug)]
pub struct ActorTable {
    rows: BTreeMap<(ActorKind, Option<u32>), Row>,
    /// Every actor that reported within the window, or has messages waiting.
    instances: HashMap<(ActorKind, u64), Instance>,
    last_prune: Option<Instant>,
    /// Runtime lag per arbiter thread (the last reported value).
    lag: BTreeMap<String, f64>,
    /// A first report covers one interval; its row starts that long before it arrives.
    report_interval: Duration,
}

impl ActorTable {
    pub fn new(report_interval: Duration) -> ActorTable {
        ActorTable {
            rows: BTreeMap::new(),
            instances: HashMap::new(),
            last_prune: None,
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
        row.waited += d.wait.count();
        row.wait_sum += d.wait.sum();
        row.restarts += d.restarts;
        let mut checkpoint = Checkpoint {
            at: now,
            messages: row.messages,
            handled: row.handled,
            handle_sum: row.handle_sum,
            max_handle: d.max_handle,
            waited: row.waited,
            wait_sum: row.wait_sum,
            max_wait: d.max_wait,
        };
        let n = row.history.len();
        let coalesce = n >= 2 && now.duration_since(row.history[n - 2].at) < CHECKPOINT_EVERY;
        match row.history.back_mut() {
            Some(last) if coalesce => {
                checkpoint.max_handle = checkpoint.max_handle.max(last.max_handle);
                checkpoint.max_wait = checkpoint.max_wait.max(last.max_wait);
                *last = checkpoint;
            }
            _ => row.history.push_back(checkpoint),
        }
        row.prune(now);
        self.record_instance(d, since, now);
    }

    fn record_instance(&mut self, d: &StatsDelta, since: Instant, now: Instant) {
        let key = (d.kind, d.instance);
        if d.last {
            self.instances.remove(&key);
            return;
        }
        let inst = self.instances.entry(key).or_insert_with(|| Instance {
            member: d.member,
            name: None,
            depth: 0,
            since,
            last_seen: now,
            current_from: now,
            current: Slice::default(),
            previous: Slice::default(),
        });
        inst.roll(now);
        inst.current.add(d);
        inst.depth = d.depth;
        inst.last_seen = now;
        if inst.name.as_ref() != d.name.as_ref() {
            inst.name.clone_from(&d.name);
        }
    }

    /// Forgets the instances with nothing in the window (at most every quarter window: with
    /// many connections a pass costs a few milliseconds).
    pub fn prune(&mut self, now: Instant) {
        if self
            .last_prune
            .is_some_and(|t| now.saturating_duration_since(t) < WINDOW / 4)
        {
            return;
        }
        self.last_prune = Some(now);
        self.instances.retain(|_, i| !i.is_stale(now));
    }

    pub fn record_lag(&mut self, arbiter: &str, seconds: f64) {
        match self.lag.get_mut(arbiter) {
            Some(v) => *v = seconds,
            None => {
                self.lag.insert(arbiter.to_owned(), seconds);
            }
        }
    }

    /// The rows as of `now`, in kind order then member order, and the `top` (at most
    /// [`MAX_TOP`]) actors of each kind by mailbox depth, mailbox wait and busy time.
    pub fn snapshot(&mut self, now: Instant, top: usize) -> ActorsSnapshot {
        let mut actors = Vec::with_capacity(self.rows.len());
        for ((kind, member), row) in &mut self.rows {
            row.prune(now);
            let base = row.history[0];
            let elapsed = now.duration_since(base.at).as_secs_f64().max(1e-3);
            let handled = row.handled - base.handled;
            let handle_sum = row.handle_sum - base.handle_sum;
            let waited = row.waited - base.waited;
            let wait_sum = row.wait_sum - base.wait_sum;
            // [0] covers reports before the window (or is the empty start of the row).
            let recent = || row.history.iter().skip(1);
            let max_handle = recent().map(|c| c.max_handle).fold(0.0, f64::max);
            let max_wait = recent().map(|c| c.max_wait).fold(0.0, f64::max);
            actors.push(ActorRow {
                actor: kind.label(),
                member: member.map(|i| member_name(*kind, i)),
                mailbox_depth: row.depth,
                messages_total: row.messages,
                messages_per_second: (row.messages - base.messages) as f64 / elapsed,
                handle_mean_seconds: (handled > 0).then(|| handle_sum / handled as f64),
                handle_max_seconds: (handled > 0).then_some(max_handle),
                wait_mean_seconds: (waited > 0).then(|| wait_sum / waited as f64),
                wait_max_seconds: (waited > 0).then_some(max_wait),
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
            top: self.top(now, top.min(MAX_TOP)),
            arbiters,
        }
    }

    fn top(&mut self, now: Instant, n: usize) -> BTreeMap<&'static str, KindTop> {
        let mut out = BTreeMap::new();
        if n == 0 {
            return out;
        }
        self.instances.retain(|_, i| !i.is_stale(now));
        let mut by_kind: BTreeMap<ActorKind, Vec<(u64, Figures)>> = BTreeMap::new();
        for ((kind, instance), inst) in &mut self.instances {
            by_kind
                .entry(*kind)
                .or_default()
                .push((*instance, inst.figures(now)));
        }
        for (kind, all) in by_kind {
            // The only actor of its kind (the gate, storage, metrics) is its kind's row already.
            let single = match all.as_slice() {
                [(instance, _)] => self
                    .instances
                    .get(&(kind, *instance))
                    .is_some_and(|i| i.name.is_none() && i.member.is_none()),
                _ => false,
            };
            if single {
                continue;
            }
            let entry = |(instance, f): (u64, Figures)| TopEntry {
                id: self
                    .instances
                    .get(&(kind, instance))
                    .map_or_else(|| kind.label().to_owned(), |i| display_name(kind, i)),
                mailbox_depth: f.depth,
                messages_per_second: f.messages_per_second,
                wait_mean_seconds: f.wait_mean,
                wait_max_seconds: f.wait_max,
                busy_percent: f.busy,
            };
            let depth = |f: &Figures| (f.depth > 0).then_some(f.depth as f64);
            let wait = |f: &Figures| f.wait_mean;
            let busy = |f: &Figures| f.busy;
            out.insert(
                kind.label(),
                KindTop {
                    reporting: all.len(),
                    by_mailbox_depth: top_by(&all, n, depth).into_iter().map(entry).collect(),
                    by_mailbox_wait: top_by(&all, n, wait).into_iter().map(entry).collect(),
                    by_busy: top_by(&all, n, busy).into_iter().map(entry).collect(),
                },
            );
        }
        out
    }
}

/// The `n` items with the largest `key` (items without one left out), largest first; ties in
/// instance order, so that an answer does not shuffle between two asks.
fn top_by(
    all: &[(u64, Figures)],
    n: usize,
    key: impl Fn(&Figures) -> Option<f64>,
) -> Vec<(u64, Figures)> {
    let mut ranked: Vec<(f64, u64, Figures)> = all
        .iter()
        .filter_map(|(i, f)| key(f).map(|k| (k, *i, *f)))
        .collect();
    let order = |a: &(f64, u64, Figures), b: &(f64, u64, Figures)| {
        b.0.partial_cmp(&a.0)
            .unwrap_or(Ordering::Equal)
            .then(a.1.cmp(&b.1))
    };
    if ranked.len() > n {
        // Linear selection first: the full sort is then only over the `n` kept.
        ranked.select_nth_unstable_by(n - 1, order);
        ranked.truncate(n);
    }
    ranked.sort_unstable_by(order);
    ranked.into_iter().map(|(_, i, f)| (i, f)).collect()
}

/// A connection's clientId (or peer address before it authenticated), a peer link's node id,
/// `shard-0`, or the kind of an actor that is the only one of it.
fn display_name(kind: ActorKind, i: &Instance) -> String {
    match (&i.name, i.member) {
        (Some(name), _) => name.to_string(),
        (None, Some(index)) => member_name(kind, index),
        (None, None) => kind.label().to_owned(),
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
    /// By actor kind (its label): the actors that stand out.
    pub top: BTreeMap<&'static str, KindTop>,
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
    /// Time mailbox messages waited before their handler started, over the last window;
    /// `None` when none was timed in it.
    pub wait_mean_seconds: Option<f64>,
    pub wait_max_seconds: Option<f64>,
    /// Share of the window spent handling messages: near 100 % for one member means its thread
    /// is saturated (a kind's shared row can exceed 100 %: it sums many actors).
    pub busy_percent: Option<f64>,
    pub restarts_total: u64,
}

/// The actors of one kind that stand out over the last window, each list largest first.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KindTop {
    /// Actors of the kind that reported within the window (or have messages waiting).
    pub reporting: usize,
    /// Messages waiting now (actors with none are left out).
    pub by_mailbox_depth: Vec<TopEntry>,
    /// Mean mailbox wait.
    pub by_mailbox_wait: Vec<TopEntry>,
    /// Time spent handling (busy %).
    pub by_busy: Vec<TopEntry>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TopEntry {
    /// A connection's clientId (its peer address until it authenticated), a peer link's node
    /// id, `shard-0`, `stripe-1`, or the kind of a single actor.
    pub id: String,
    pub mailbox_depth: i64,
    pub messages_per_second: f64,
    pub wait_mean_seconds: Option<f64>,
    pub wait_max_seconds: Option<f64>,
    pub busy_percent: Option<f64>,
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
            "{:<12} {:<10} {:>8} {:>10} {:>12} {:>9} {:>9} {:>9} {:>9} {:>7} {:>8}",
            "ACTOR",
            "MEMBER",
            "MAILBOX",
            "MSG/S",
            "MESSAGES",
            "MEAN",
            "MAX",
            "WAIT",
            "WAITMAX",
            "BUSY%",
            "RESTARTS"
        );
        for r in &self.actors {
            let _ = writeln!(
                out,
                "{:<12} {:<10} {:>8} {:>10.1} {:>12} {:>9} {:>9} {:>9} {:>9} {:>7} {:>8}",
                r.actor,
                r.member.as_deref().unwrap_or("-"),
                r.mailbox_depth,
                r.messages_per_second,
                r.messages_total,
                opt_duration(r.handle_mean_seconds),
                opt_duration(r.handle_max_seconds),
                opt_duration(r.wait_mean_seconds),
                opt_duration(r.wait_max_seconds),
                opt_percent(r.busy_percent),
                r.restarts_total,
            );
        }
        let _ = writeln!(
            out,
            "\n(rates, MEAN, MAX, WAIT and BUSY% over the last {:.0} s)",
            self.window_seconds
        );
        for (kind, top) in &self.top {
            let lists = [
                ("mailbox depth", &top.by_mailbox_depth),
                ("mailbox wait", &top.by_mailbox_wait),
                ("busy", &top.by_busy),
            ];
            for (what, list) in lists {
                if list.is_empty() {
                    continue;
                }
                let _ = writeln!(
                    out,
                    "\nTOP {kind} BY {} ({} reporting)\n{:<38} {:>8} {:>10} {:>9} {:>9} {:>7}",
                    what.to_uppercase(),
                    top.reporting,
                    "ID",
                    "MAILBOX",
                    "MSG/S",
                    "WAIT",
                    "WAITMAX",
                    "BUSY%"
                );
                for e in list {
                    let _ = writeln!(
                        out,
                        "{:<38} {:>8} {:>10.1} {:>9} {:>9} {:>7}",
                        e.id,
                        e.mailbox_depth,
                        e.messages_per_second,
                        opt_duration(e.wait_mean_seconds),
                        opt_duration(e.wait_max_seconds),
                        opt_percent(e.busy_percent),
                    );
                }
            }
        }
        let _ = writeln!(out, "\n{:<12} {:>9}", "ARBITER", "LAG");
        for a in &self.arbiters {
            let _ = writeln!(out, "{:<12} {:>9}", a.arbiter, duration(a.lag_seconds));
        }
        out
    }
}

fn opt_duration(seconds: Option<f64>) -> String {
    seconds.map_or_else(|| "-".into(), duration)
}

fn opt_percent(p: Option<f64>) -> String {
    p.map_or_else(|| "-".into(), |b| format!("{b:.1}"))
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
        let s = t.snapshot(t0, 10);
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
        let s = t.snapshot(later, 10);
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
        let s = t.snapshot(t0 + Duration::from_secs(30), 10);
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
        let text = t.snapshot(now, 10).to_table();
        assert!(text.starts_with("ACTOR "), "{text}");
        assert!(text.contains("event_queue  stripe-2"), "{text}");
        assert!(text.contains("2.0ms"), "{text}");
        assert!(text.contains("\nshard-0         12.0ms\n"), "{text}");
    }

    /// One connection's actor stats, as it keeps them between reports.
    fn conn(name: &str) -> ActorStats {
        let mut s = ActorStats::new(ActorKind::Connection, true);
        s.set_name(Arc::from(name));
        s
    }

    /// What `s` reports after `messages` handled in `handle_each` seconds, each having waited
    /// `wait_each` in the mailbox, with `depth` messages still waiting.
    fn report(
        s: &mut ActorStats,
        messages: u64,
        handle_each: f64,
        wait_each: f64,
        depth: i64,
    ) -> StatsDelta {
        for _ in 0..messages {
            s.end(None);
        }
        let mut d = s.take();
        for _ in 0..messages {
            d.handle.observe(handle_each);
            d.wait.observe(wait_each);
        }
        d.max_wait = wait_each;
        d.depth = depth;
        d
    }

    fn ids(list: &[TopEntry]) -> Vec<&str> {
        list.iter().map(|e| e.id.as_str()).collect()
    }

    #[test]
    fn top_lists_rank_each_kind_by_depth_wait_and_busy() {
        let mut t = ActorTable::new(Duration::from_secs(1));
        let t0 = Instant::now();
        let (mut a, mut b, mut c, mut idle) = (conn("a"), conn("b"), conn("c"), conn("idle"));
        t.record(&report(&mut a, 100, 0.002, 1e-5, 0), t0);
        t.record(&report(&mut b, 10, 0.001, 0.5, 7), t0);
        t.record(&report(&mut c, 50, 0.001, 0.01, 2), t0);
        t.record(&report(&mut idle, 0, 0.0, 0.0, 0), t0);
        let mut shard = ActorStats::new(ActorKind::Shard, true).member(3);
        t.record(&report(&mut shard, 1000, 1e-4, 1e-4, 0), t0);

        let s = t.snapshot(t0 + Duration::from_secs(1), 2);
        let top = &s.top["connection"];
        assert_eq!(top.reporting, 4);
        // Only actors with something to show, largest first, at most `top`.
        assert_eq!(ids(&top.by_mailbox_depth), ["b", "c"]);
        assert_eq!(ids(&top.by_mailbox_wait), ["b", "c"]);
        assert_eq!(ids(&top.by_busy), ["a", "c"]);
        let a_row = &top.by_busy[0];
        // 100 × 2 ms over the 1 s interval the first report covers, plus the second since.
        let busy = a_row.busy_percent.unwrap();
        assert!((busy - 10.0).abs() < 0.5, "{busy}");
        assert!((a_row.messages_per_second - 50.0).abs() < 2.0, "{a_row:?}");
        assert_eq!(top.by_mailbox_wait[0].wait_max_seconds, Some(0.5));
        // Members are named as on their rows; a kind's only, unnamed actor is its row.
        assert_eq!(ids(&s.top["shard"].by_busy), ["shard-3"]);
        let mut gate = ActorStats::new(ActorKind::Gate, true);
        t.record(&report(&mut gate, 10, 1e-4, 1e-4, 0), t0);
        assert!(!t.snapshot(t0, 2).top.contains_key("gate"));
        assert!(t.snapshot(t0, 0).top.is_empty(), "top=0 lists nothing");
    }

    #[test]
    fn a_name_given_later_replaces_the_address() {
        let mut t = ActorTable::new(Duration::from_secs(1));
        let t0 = Instant::now();
        let mut c = conn("127.0.0.1:50112");
        t.record(&report(&mut c, 5, 0.001, 0.0, 0), t0);
        assert_eq!(
            ids(&t.snapshot(t0, 10).top["connection"].by_busy),
            ["127.0.0.1:50112"]
        );
        c.set_name(Arc::from("9c0e-client"));
        t.record(
            &report(&mut c, 5, 0.001, 0.0, 0),
            t0 + Duration::from_secs(1),
        );
        let s = t.snapshot(t0 + Duration::from_secs(1), 10);
        assert_eq!(ids(&s.top["connection"].by_busy), ["9c0e-client"]);
        assert_eq!(s.top["connection"].reporting, 1);
    }

    #[test]
    fn stopped_actors_leave_at_once_and_idle_ones_after_the_window() {
        let mut t = ActorTable::new(Duration::from_secs(1));
        let t0 = Instant::now();
        let (mut gone, mut idle, mut stuck) = (conn("gone"), conn("idle"), conn("stuck"));
        t.record(&report(&mut gone, 5, 0.001, 0.0, 0), t0);
        t.record(&report(&mut idle, 5, 0.001, 0.0, 0), t0);
        // A client that stopped reading: its actor is no longer polled, so it no longer
        // reports, and it is the one an operator looks for.
        t.record(&report(&mut stuck, 5, 0.001, 0.0, 40), t0);
        t.record(&gone.take_final(), t0 + Duration::from_secs(1));
        let s = t.snapshot(t0 + Duration::from_secs(1), 10);
        assert_eq!(s.top["connection"].reporting, 2);

        let later = t0 + WINDOW + Duration::from_secs(2);
        t.prune(later);
        let s = t.snapshot(later, 10);
        let top = &s.top["connection"];
        assert_eq!(top.reporting, 1);
        assert_eq!(ids(&top.by_mailbox_depth), ["stuck"]);
        // Its handling lies outside the window now.
        assert!(top.by_busy.is_empty(), "{:?}", top.by_busy);
        assert_eq!(t.instances.len(), 1);
    }

    #[test]
    fn figures_cover_the_last_half_windows_only() {
        let mut t = ActorTable::new(Duration::from_secs(1));
        let t0 = Instant::now();
        let mut c = conn("c");
        // A burst, then a steady trickle for long after.
        t.record(&report(&mut c, 1000, 0.001, 0.0, 0), t0);
        for i in 1..=30u64 {
            t.record(
                &report(&mut c, 10, 0.001, 0.0, 0),
                t0 + Duration::from_secs(i),
            );
        }
        let s = t.snapshot(t0 + Duration::from_secs(30), 10);
        let e = &s.top["connection"].by_busy[0];
        // 10 msg/s once the burst is out of the slices (they cover 5 to 10 s).
        assert!((e.messages_per_second - 10.0).abs() < 2.5, "{e:?}");
    }

    #[test]
    fn top_of_many_is_exact_and_bounded() {
        let mut t = ActorTable::new(Duration::from_secs(1));
        let t0 = Instant::now();
        for i in 0..10_000u64 {
            let mut c = conn(&format!("c{i}"));
            // Busy time grows with i, so the top three are the last three.
            t.record(&report(&mut c, 1, 1e-6 * (i + 1) as f64, 0.0, 0), t0);
        }
        let s = t.snapshot(t0, MAX_TOP + 50);
        let top = &s.top["connection"];
        assert_eq!(top.reporting, 10_000);
        assert_eq!(top.by_busy.len(), MAX_TOP, "bounded by MAX_TOP");
        assert_eq!(ids(&top.by_busy[..3]), ["c9999", "c9998", "c9997"]);
        let s = t.snapshot(t0, 3);
        assert_eq!(
            ids(&s.top["connection"].by_busy),
            ["c9999", "c9998", "c9997"]
        );
    }

    #[test]
    fn the_table_lists_the_tops_by_id() {
        let mut t = ActorTable::new(Duration::from_secs(1));
        let now = Instant::now();
        let mut c = conn("9c0e-busy-client");
        t.record(&report(&mut c, 20, 0.002, 0.003, 4), now);
        let text = t.snapshot(now, 10).to_table();
        assert!(
            text.contains("TOP connection BY BUSY (1 reporting)"),
            "{text}"
        );
        assert!(text.contains("TOP connection BY MAILBOX DEPTH"), "{text}");
        assert!(text.contains("\n9c0e-busy-client "), "{text}");
        assert!(text.contains("3.0ms"), "mean wait: {text}");
    }
}
