//! Runtime lag: how late a periodic tick runs on an arbiter thread, the counterpart of Node's
//! event-loop lag. One probe per arbiter; a busy handler or a blocking call on that thread
//! shows up as lag of every actor living there.
use std::time::{Duration, Instant};

use actix::prelude::*;

use super::metrics::{LagReport, MetricsActor};
use super::report::{Mailbox, Reported};

/// Ticks often enough to see a 10 ms stall, rarely enough to cost nothing.
const TICK: Duration = Duration::from_millis(50);

pub struct LagProbe {
    arbiter: String,
    metrics: Mailbox<MetricsActor>,
    report_interval: Duration,
    expected: Instant,
    worst: Duration,
    last_report: Instant,
}

impl LagProbe {
    pub fn new(
        arbiter: impl Into<String>,
        metrics: Mailbox<MetricsActor>,
        report_interval: Duration,
    ) -> Self {
        let now = Instant::now();
        LagProbe {
            arbiter: arbiter.into(),
            metrics,
            report_interval,
            expected: now + TICK,
            worst: Duration::ZERO,
            last_report: now,
        }
    }
}

impl Actor for LagProbe {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.expected = Instant::now() + TICK;
        ctx.run_interval(TICK, |act, _| {
            let now = Instant::now();
            act.worst = act.worst.max(now.saturating_duration_since(act.expected));
            act.expected = now + TICK;
            if now.duration_since(act.last_report) >= act.report_interval {
                act.metrics.do_send(Reported(Box::new(LagReport {
                    arbiter: act.arbiter.clone(),
                    seconds: act.worst.as_secs_f64(),
                })));
                act.worst = Duration::ZERO;
                act.last_report = now;
            }
        });
    }
}
