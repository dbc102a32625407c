//! `StorageActor`: the one writer of the backend, on its own arbiter (a commit blocks on fsync).
//! Group commit: persist requests accumulate while more are queued in the mailbox and are
//! committed together, in one durable transaction, when the mailbox is drained, when the group
//! reaches `max_records`, or after `max_delay` at the latest. Each request is answered after
//! its group's commit, which is when shards release the `OP_ACK`s.
use std::time::{Duration, Instant};

use actix::prelude::*;
use slog::Logger;
use tokio::sync::oneshot;

use super::events::{CommitFailed, Flushed};
use super::{Backend, Mutation};
use crate::protocol::types::Timestamp;
use crate::telemetry::event::{ErrField, Event};
use crate::telemetry::histogram::{LocalHistogram, COMMIT_RECORDS, COMMIT_SECONDS};
use crate::telemetry::metrics::{Metrics, MetricsActor};
use crate::telemetry::report::{ActorKind, ActorStats, Mailbox, Report, Reported, StatsDelta};

/// Why a persist request failed: its writes are applied in memory but not durable, so they
/// must not be acknowledged.
#[derive(Debug, Clone, thiserror::Error)]
#[error("storage commit failed: {0}")]
pub struct NotDurable(pub String);

impl NotDurable {
    pub fn code(&self) -> &'static str {
        "not_durable"
    }
}

/// Mutations to make durable; answered after the commit of the group they joined.
#[derive(Message)]
#[rtype(result = "Result<(), NotDurable>")]
pub struct Persist(pub Vec<Mutation>);

/// Commits whatever is pending now (graceful shutdown).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Flush;

pub struct StorageActor {
    backend: Box<dyn Backend>,
    pending: Vec<Mutation>,
    waiting: Vec<oneshot::Sender<Result<(), NotDurable>>>,
    hlc: Option<Timestamp>,
    max_records: usize,
    max_delay: Duration,
    timer: Option<SpawnHandle>,
    counters: StorageCounters,
    stats: ActorStats,
    log: Logger,
    metrics: Mailbox<MetricsActor>,
    report_interval: Duration,
}

struct StorageCounters {
    commit_seconds: LocalHistogram,
    commit_records: LocalHistogram,
    errors: u64,
}

impl StorageActor {
    pub fn new(
        backend: Box<dyn Backend>,
        max_records: usize,
        max_delay: Duration,
        log: &Logger,
        metrics: Mailbox<MetricsActor>,
        report_interval: Duration,
        timed: bool,
    ) -> Self {
        StorageActor {
            log: log.new(slog::o!("actor" => "storage", "backend" => backend.name())),
            backend,
            pending: Vec::new(),
            waiting: Vec::new(),
            hlc: None,
            max_records,
            max_delay,
            timer: None,
            counters: StorageCounters {
                commit_seconds: LocalHistogram::new(COMMIT_SECONDS),
                commit_records: LocalHistogram::new(COMMIT_RECORDS),
                errors: 0,
            },
            stats: ActorStats::new(ActorKind::Storage, timed),
            metrics,
            report_interval,
        }
    }

    pub fn tap(&self) -> crate::telemetry::mailbox::Tap {
        self.stats.tap()
    }

    fn commit(&mut self, ctx: &mut Context<Self>) {
        if let Some(t) = self.timer.take() {
            ctx.cancel_future(t);
        }
        if self.waiting.is_empty() {
            return;
        }
        let t0 = Instant::now();
        let records = self.pending.len();
        let result = self.backend.commit(&self.pending, self.hlc.as_ref());
        self.counters
            .commit_seconds
            .observe(t0.elapsed().as_secs_f64());
        self.counters.commit_records.observe(records as f64);
        let answer = match result {
            Ok(()) => Ok(()),
            Err(e) => {
                self.counters.errors += 1;
                CommitFailed {
                    records,
                    requests: self.waiting.len(),
                    err: ErrField::new(e.op, &e.message),
                }
                .emit(&self.log);
                Err(NotDurable(e.message))
            }
        };
        self.pending.clear();
        for tx in self.waiting.drain(..) {
            let _ = tx.send(answer.clone());
        }
    }

    fn report(&mut self) {
        let report = StorageReport {
            stats: self.stats.take(),
            commit_seconds: self.counters.commit_seconds.take(),
            commit_records: self.counters.commit_records.take(),
            errors: std::mem::take(&mut self.counters.errors),
            size_bytes: self.backend.size_bytes(),
        };
        self.metrics.do_send(Reported(Box::new(report)));
    }
}

struct StorageReport {
    stats: StatsDelta,
    commit_seconds: LocalHistogram,
    commit_records: LocalHistogram,
    errors: u64,
    size_bytes: u64,
}

impl Report for StorageReport {
    fn apply(self: Box<Self>, m: &mut Metrics) {
        self.stats.apply(m);
        m.storage_commit_seconds.merge(&[], &self.commit_seconds);
        m.storage_commit_records.merge(&[], &self.commit_records);
        if self.errors > 0 {
            m.storage_errors_total
                .with_label_values(&["commit"])
                .inc_by(self.errors);
        }
        m.storage_size_bytes.set(self.size_bytes as i64);
    }
}

impl Actor for StorageActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        // Shards send with `send`; the group size, not the mailbox, bounds the work.
        ctx.set_mailbox_capacity(crate::telemetry::report::UNBOUNDED_MAILBOX);
        ctx.run_interval(self.report_interval, |act, _| act.report());
    }

    fn stopping(&mut self, ctx: &mut Context<Self>) -> Running {
        self.commit(ctx);
        Flushed {}.emit(&self.log);
        Running::Stop
    }
}

// Messages sent through a `Mailbox` arrive wrapped, with the time they were sent.
crate::telemetry::mailbox::mailbox_handlers!(StorageActor, stats);

impl Handler<Persist> for StorageActor {
    type Result = ResponseFuture<Result<(), NotDurable>>;

    fn handle(&mut self, msg: Persist, ctx: &mut Context<Self>) -> Self::Result {
        let t0 = self.stats.begin();
        for m in &msg.0 {
            if let Some(ts) = m.timestamp() {
                if self.hlc.as_ref().is_none_or(|h| ts > h) {
                    self.hlc = Some(ts.clone());
                }
            }
        }
        self.pending.extend(msg.0);
        let (tx, rx) = oneshot::channel();
        self.waiting.push(tx);
        // More requests already queued behind this one join the group; an idle mailbox or a
        // full group commits now; otherwise the timer bounds the wait.
        let queued = self.stats.depth();
        if queued <= 0 || self.pending.len() >= self.max_records {
            self.commit(ctx);
        } else if self.timer.is_none() {
            self.timer = Some(ctx.run_later(self.max_delay, |act, ctx| {
                act.timer = None;
                act.commit(ctx);
            }));
        }
        self.stats.end(t0);
        Box::pin(async move {
            rx.await
                .unwrap_or_else(|_| Err(NotDurable("storage stopped".into())))
        })
    }
}

impl Handler<Flush> for StorageActor {
    type Result = ();

    fn handle(&mut self, _: Flush, ctx: &mut Context<Self>) {
        let t0 = self.stats.begin();
        self.commit(ctx);
        self.stats.end(t0);
    }
}
