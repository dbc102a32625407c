//! What one connection counts between reports, and the report that carries it to the metrics
//! actor. Plain fields, no atomics: only the connection's own actor touches them.
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use slog::Logger;

use crate::telemetry::metrics::Metrics;
use crate::telemetry::report::{ActorKind, ActorStats, Report, StatsDelta};
use crate::telemetry::throttle::Throttle;

/// The `type` label values of `topgun_ops_total`.
pub const OP_TYPES: [&str; 4] = ["PUT", "DELETE", "GET", "SUBSCRIBE"];

/// Per-connection warnings: one line per interval at most.
const WARN_INTERVAL: Duration = Duration::from_secs(10);

pub struct ConnectionTelemetry {
    pub log: Logger,
    pub stats: ActorStats,
    pub rate_limit_log: Throttle,
    pub invalid_log: Throttle,
    pub backpressure_log: Throttle,
    pub limit_log: Throttle,
    sync_forced: u64,
    backpressure_waits: u64,
    backpressure_timeouts: u64,
    invalid: Vec<(&'static str, u64)>,
    limits_exceeded: Vec<(&'static str, u64)>,
    auth_failures: Vec<(&'static str, u64)>,
    rate_limited: u64,
    closed: Option<&'static str>,
    /// map name → ops per type (index in [`OP_TYPES`]); keyed by map so the per-op lookup
    /// borrows the name instead of allocating one. The label cap is the metrics actor's.
    ops: HashMap<Box<str>, [u64; OP_TYPES.len()]>,
}

impl ConnectionTelemetry {
    /// `name`: what `/debug/actors` calls the connection (see `ActorStats::set_name`).
    pub fn new(log: Logger, timed: bool, name: Arc<str>) -> Self {
        let mut stats = ActorStats::new(ActorKind::Connection, timed);
        stats.set_name(name);
        ConnectionTelemetry {
            log,
            stats,
            rate_limit_log: Throttle::new(WARN_INTERVAL),
            invalid_log: Throttle::new(WARN_INTERVAL),
            backpressure_log: Throttle::new(WARN_INTERVAL),
            limit_log: Throttle::new(WARN_INTERVAL),
            sync_forced: 0,
            backpressure_waits: 0,
            backpressure_timeouts: 0,
            invalid: Vec::new(),
            limits_exceeded: Vec::new(),
            auth_failures: Vec::new(),
            rate_limited: 0,
            closed: None,
            ops: HashMap::new(),
        }
    }

    pub fn count_invalid(&mut self, reason: &'static str) {
        bump(&mut self.invalid, reason, 1);
    }

    /// `limit` is one of `telemetry::metrics::LIMITS`.
    pub fn count_limit_exceeded(&mut self, limit: &'static str) {
        self.count_limit_exceeded_by(limit, 1);
    }

    pub fn count_limit_exceeded_by(&mut self, limit: &'static str, n: u64) {
        bump(&mut self.limits_exceeded, limit, n);
    }

    pub fn count_auth_failure(&mut self, reason: &'static str) {
        bump(&mut self.auth_failures, reason, 1);
    }

    pub fn count_rate_limited(&mut self) {
        self.rate_limited += 1;
    }

    pub fn count_closed(&mut self, reason: &'static str) {
        self.closed.get_or_insert(reason);
    }

    pub fn count_ops(&mut self, op_type: &'static str, map: &str, n: u64) {
        let slot = OP_TYPES.iter().position(|t| *t == op_type).unwrap_or(0);
        if let Some(counts) = self.ops.get_mut(map) {
            counts[slot] += n;
        } else {
            let mut counts = [0; OP_TYPES.len()];
            counts[slot] = n;
            self.ops.insert(Box::from(map), counts);
        }
    }

    pub fn count_sync_forced(&mut self) {
        self.sync_forced += 1;
    }

    pub fn count_backpressure_wait(&mut self) {
        self.backpressure_waits += 1;
    }

    pub fn count_backpressure_timeout(&mut self) {
        self.backpressure_timeouts += 1;
    }

    fn is_dirty(&self) -> bool {
        self.stats.is_dirty()
            || !self.invalid.is_empty()
            || !self.limits_exceeded.is_empty()
            || !self.auth_failures.is_empty()
            || self.rate_limited > 0
            || !self.ops.is_empty()
            || self.sync_forced > 0
            || self.backpressure_waits > 0
            || self.backpressure_timeouts > 0
    }

    /// The deltas since the last report; `None` when nothing changed. The last report of a
    /// stopping connection also carries why it closed.
    pub fn take_report(&mut self, last: bool) -> Option<ConnectionReport> {
        if !last && !self.is_dirty() {
            return None;
        }
        Some(ConnectionReport {
            stats: if last {
                self.stats.take_final()
            } else {
                self.stats.take()
            },
            invalid: std::mem::take(&mut self.invalid),
            limits_exceeded: std::mem::take(&mut self.limits_exceeded),
            auth_failures: std::mem::take(&mut self.auth_failures),
            rate_limited: std::mem::take(&mut self.rate_limited),
            closed: if last {
                self.closed.or(Some("client"))
            } else {
                None
            },
            ops: std::mem::take(&mut self.ops),
            sync_forced: std::mem::take(&mut self.sync_forced),
            backpressure_waits: std::mem::take(&mut self.backpressure_waits),
            backpressure_timeouts: std::mem::take(&mut self.backpressure_timeouts),
        })
    }
}

fn bump(list: &mut Vec<(&'static str, u64)>, reason: &'static str, n: u64) {
    match list.iter_mut().find(|(r, _)| *r == reason) {
        Some((_, c)) => *c += n,
        None => list.push((reason, n)),
    }
}

pub struct ConnectionReport {
    stats: StatsDelta,
    invalid: Vec<(&'static str, u64)>,
    limits_exceeded: Vec<(&'static str, u64)>,
    auth_failures: Vec<(&'static str, u64)>,
    rate_limited: u64,
    closed: Option<&'static str>,
    ops: HashMap<Box<str>, [u64; OP_TYPES.len()]>,
    sync_forced: u64,
    backpressure_waits: u64,
    backpressure_timeouts: u64,
}

impl Report for ConnectionReport {
    fn apply(self: Box<Self>, m: &mut Metrics) {
        self.stats.apply(m);
        for (reason, n) in &self.invalid {
            m.invalid_messages_total
                .with_label_values(&[reason])
                .inc_by(*n);
        }
        for (limit, n) in &self.limits_exceeded {
            m.limits_exceeded_total
                .with_label_values(&[limit])
                .inc_by(*n);
        }
        for (reason, n) in &self.auth_failures {
            m.auth_failures_total
                .with_label_values(&[reason])
                .inc_by(*n);
        }
        m.client_rate_limited_total.inc_by(self.rate_limited);
        m.backpressure_sync_forced_total.inc_by(self.sync_forced);
        m.backpressure_waits_total.inc_by(self.backpressure_waits);
        m.backpressure_timeouts_total
            .inc_by(self.backpressure_timeouts);
        if let Some(reason) = self.closed {
            m.connections_closed_total
                .with_label_values(&[reason])
                .inc();
        }
        for (map, counts) in &self.ops {
            let label = m.map_label(map).to_owned();
            for (op_type, n) in OP_TYPES.iter().zip(counts) {
                if *n > 0 {
                    m.ops_total
                        .with_label_values(&[*op_type, label.as_str()])
                        .inc_by(*n);
                }
            }
        }
    }
}
