//! The shutdown sequence (SIGTERM or SIGINT), each step logged with its time since the signal:
//!
//! 1. **Drain** (lame duck, as NATS calls it): `/ready` answers 503 and the gate turns new
//!    connections away (HTTP 503) at once; the open ones are served for `drain_delay`, so a
//!    load balancer takes the node out before anyone is closed, then closed with 1001 in
//!    small even groups over `drain_spread`, so their reconnects reach the other nodes at a
//!    rate their connection limiters admit. A second SIGTERM or SIGINT skips what is left of
//!    both and closes everyone at once.
//! 2. Stop the HTTP servers, hand this node's partitions over and leave the cluster, flush
//!    storage. These run after a second signal too: they are what keeps every acknowledged
//!    write.
//!
//! A watchdog ends the process if a step hangs, so the node always exits within
//! `shutdown_timeout`; [`DrainPlan`] makes the drain leave the later steps their share of it.
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::dev::ServerHandle;
use slog::Logger;
use tokio::signal::unix::{signal, Signal, SignalKind};

use super::events as ev;
use super::StartError;
use crate::cluster::actor::{ClusterActor, Leave};
use crate::cluster::plane::DataPlane;
use crate::config::Config;
use crate::net::gate::{
    AllClosed, CloseAll, CloseSpread, ConnectionGateActor, OpenConnections, StartDraining,
};
use crate::storage::actor::{Flush, StorageActor};
use crate::telemetry::event::{ErrField, Event};
use crate::telemetry::mailbox::Mailbox;

/// How long client connections get to close after the last 1001 before the server stops anyway.
const CLIENT_CLOSE_GRACE: Duration = Duration::from_secs(2);
/// The least a clustered node's handover of its partitions is left: what it had when the
/// shutdown timeout was 8 s and there was no drain.
const HANDOVER_MIN: Duration = Duration::from_secs(4);
/// Shutdown time kept for leaving the cluster and flushing storage after the handover.
const LEAVE_RESERVE: Duration = Duration::from_secs(2);
/// What the steps after the drain are kept of the shutdown timeout: the drain gets the rest.
pub const AFTER_DRAIN: Duration = Duration::from_secs(
    CLIENT_CLOSE_GRACE.as_secs() + HANDOVER_MIN.as_secs() + LEAVE_RESERVE.as_secs(),
);
/// How long a node that left still answers its peers: their forwards routed here before they
/// heard of the leave.
const LEAVE_LINGER: Duration = Duration::from_millis(500);

/// What the shutdown sequence stops, in its order.
pub(super) struct Running {
    pub config: Arc<Config>,
    pub log: Logger,
    pub ready: Arc<AtomicBool>,
    pub draining: Arc<AtomicBool>,
    pub gate: Mailbox<ConnectionGateActor>,
    /// The client server first, then the metrics server if it has its own port.
    pub http: Vec<ServerHandle>,
    pub data_plane: Arc<DataPlane>,
    pub cluster: Mailbox<ClusterActor>,
    pub storage: Option<Mailbox<StorageActor>>,
}

/// The drain as it will run: the configured delay and spread, or both cut by the same factor
/// when together they would leave the steps after them less than [`AFTER_DRAIN`] of the
/// shutdown timeout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DrainPlan {
    pub delay: Duration,
    pub spread: Duration,
}

impl DrainPlan {
    pub fn of(config: &Config) -> DrainPlan {
        DrainPlan::fit(
            config.drain_delay,
            config.drain_spread,
            config.shutdown_timeout,
        )
    }

    pub fn fit(delay: Duration, spread: Duration, timeout: Duration) -> DrainPlan {
        let room = timeout.saturating_sub(AFTER_DRAIN);
        let wanted = delay.saturating_add(spread);
        if wanted <= room {
            return DrainPlan { delay, spread };
        }
        // f64 keeps absurd configured values (u64::MAX ms) from overflowing; a millisecond
        // is all the precision that matters, and `as` saturates.
        let share = room.as_millis() as f64 / wanted.as_millis().max(1) as f64;
        let delay = Duration::from_millis((delay.as_millis() as f64 * share) as u64).min(room);
        DrainPlan {
            delay,
            spread: room.saturating_sub(delay),
        }
    }
}

/// Logged at start, so an operator learns it before the shutdown that would show it.
pub(super) fn announce_drain(config: &Config, log: &Logger) {
    let plan = DrainPlan::of(config);
    if plan.delay != config.drain_delay || plan.spread != config.drain_spread {
        ev::DrainShortened {
            configured_delay_ms: ms(config.drain_delay),
            configured_spread_ms: ms(config.drain_spread),
            delay_ms: ms(plan.delay),
            spread_ms: ms(plan.spread),
            shutdown_timeout_ms: ms(config.shutdown_timeout),
            reserved_ms: ms(AFTER_DRAIN),
        }
        .emit(log);
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// SIGTERM and SIGINT, registered once before the node serves: the second signal of a drain
/// must find its listener in place, and from then on neither ends the process by default.
pub(super) struct Signals {
    term: Signal,
    int: Signal,
}

impl Signals {
    pub fn listen() -> Result<Signals, StartError> {
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    pub async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

pub(super) async fn shut_down(node: Running, signal: &'static str, mut signals: Signals) {
    let log = &node.log;
    let started = Instant::now();
    let deadline = started + node.config.shutdown_timeout;
    ev::ShutdownStarted {
        signal,
        timeout_ms: ms(node.config.shutdown_timeout),
    }
    .emit(log);
    start_watchdog(node.config.shutdown_timeout, log.clone());
    node.draining.store(true, Ordering::Release);
    node.ready.store(false, Ordering::Release);

    let told = drain(&node, &mut signals, started).await;
    // Any further signal is left unanswered: the handover and the flush keep acknowledged
    // writes, and the watchdog bounds them.
    let _ = tokio::time::timeout(CLIENT_CLOSE_GRACE, node.gate.send(AllClosed)).await;
    let still_open = node.gate.send(OpenConnections).await.unwrap_or(0);
    ev::ClientsClosed {
        told,
        still_open,
        at_ms: ms(started.elapsed()),
    }
    .emit(log);
    for server in &node.http {
        server.stop(true).await;
    }
    ev::HttpStopped {
        at_ms: ms(started.elapsed()),
    }
    .emit(log);
    leave_cluster(&node, started, deadline).await;
    if let Some(storage) = &node.storage {
        let _ = storage.send(Flush).await;
        ev::StorageFlushed {
            at_ms: ms(started.elapsed()),
        }
        .emit(log);
    }
    ev::ShutdownComplete {
        took_ms: ms(started.elapsed()),
    }
    .emit(log);
}

/// New connections turned away now, the open ones served for the delay and then closed over
/// the spread; a second signal closes the rest at once. Answers how many were told to close.
async fn drain(node: &Running, signals: &mut Signals, started: Instant) -> usize {
    let plan = DrainPlan::of(&node.config);
    let open = node.gate.send(StartDraining).await.unwrap_or(0);
    ev::DrainStarted {
        connections: open,
        delay_ms: ms(plan.delay),
        spread_ms: ms(plan.spread),
        at_ms: ms(started.elapsed()),
    }
    .emit(&node.log);
    let phase = Cell::new("delay");
    let steps = async {
        if !plan.delay.is_zero() {
            tokio::time::sleep(plan.delay).await;
            let open = node.gate.send(OpenConnections).await.unwrap_or(0);
            ev::DrainDelayOver {
                connections: open,
                at_ms: ms(started.elapsed()),
            }
            .emit(&node.log);
        }
        phase.set("spread");
        node.gate
            .send(CloseSpread { over: plan.spread })
            .await
            .unwrap_or(0)
    };
    tokio::select! {
        told = steps => told,
        signal = signals.next() => {
            ev::DrainInterrupted {
                signal,
                phase: phase.get(),
                at_ms: ms(started.elapsed()),
            }
            .emit(&node.log);
            node.gate.send(CloseAll).await.unwrap_or(0)
        }
    }
}

async fn leave_cluster(node: &Running, started: Instant, deadline: Instant) {
    let leave = || tokio::time::timeout(Duration::from_secs(1), node.cluster.send(Leave));
    if node.data_plane.cluster.table().members().len() <= 1 {
        let _ = leave().await;
        return;
    }
    // The backups of this node's partitions become their owners: they get what they lack of
    // it first, so that nothing this node acknowledged depends on a copy in flight. It gets
    // what the drain and the close left of the timeout, less the time to leave and flush.
    let budget = deadline
        .saturating_duration_since(Instant::now())
        .saturating_sub(LEAVE_RESERVE);
    let h = crate::cluster::leaving::hand_over(&node.data_plane, budget).await;
    let took_ms = ms(h.took);
    let at_ms = ms(started.elapsed());
    match &h.failure {
        None => ev::HandedOverBeforeLeaving {
            compared: h.compared,
            sent: h.sent,
            records: h.records,
            took_ms,
            at_ms,
        }
        .emit(&node.log),
        Some(e) => ev::HandoverBeforeLeavingIncomplete {
            compared: h.compared,
            sent: h.sent,
            records: h.records,
            took_ms,
            at_ms,
            err: ErrField::new(e.code(), e),
        }
        .emit(&node.log),
    }
    // Then the others take over at once, not after failure detection. Forwards they routed
    // here before they heard it are still answered while the node lingers.
    let _ = leave().await;
    tokio::time::sleep(LEAVE_LINGER).await;
}

/// If a shutdown step hangs, the process still ends: the operator was promised an exit.
fn start_watchdog(limit: Duration, log: Logger) {
    let _ = std::thread::Builder::new()
        .name("topgun-shutdown-watchdog".into())
        .spawn(move || {
            std::thread::sleep(limit);
            ev::ShutdownTimedOut {
                limit_ms: ms(limit),
                err: ErrField::fixed("shutdown_timeout", "a shutdown step did not finish in time"),
            }
            .emit(&log);
            std::thread::sleep(Duration::from_millis(200));
            std::process::exit(1);
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;
    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn a_drain_that_fits_runs_as_configured() {
        // The defaults: 5 s + 10 s + the 8 s after them fit in 25 s.
        let d = Config::default();
        assert_eq!(
            DrainPlan::of(&d),
            DrainPlan {
                delay: d.drain_delay,
                spread: d.drain_spread
            }
        );
        assert!(d.drain_delay + d.drain_spread + AFTER_DRAIN <= d.shutdown_timeout);
        let plan = DrainPlan::fit(MS(0), MS(0), S(1));
        assert_eq!((plan.delay, plan.spread), (MS(0), MS(0)));
        let plan = DrainPlan::fit(S(2), S(20), S(30));
        assert_eq!((plan.delay, plan.spread), (S(2), S(20)));
    }

    #[test]
    fn a_drain_that_does_not_fit_is_cut_in_proportion() {
        // 10 s leaves 2 s for 4 s + 8 s: a sixth of each.
        let plan = DrainPlan::fit(S(4), S(8), S(10));
        assert_eq!(plan.delay, MS(666));
        assert_eq!(plan.spread, MS(1334));
        // The old default timeout (8 s) leaves nothing: the drain is skipped.
        let plan = DrainPlan::fit(S(5), S(10), S(8));
        assert_eq!((plan.delay, plan.spread), (MS(0), MS(0)));
        let plan = DrainPlan::fit(S(5), S(10), S(0));
        assert_eq!((plan.delay, plan.spread), (MS(0), MS(0)));
        // Absurd values neither overflow nor exceed the room.
        let huge = Duration::from_millis(u64::MAX);
        let plan = DrainPlan::fit(huge, huge, S(20));
        assert_eq!(plan.delay + plan.spread, S(12));
        let plan = DrainPlan::fit(huge, MS(0), S(20));
        assert_eq!((plan.delay, plan.spread), (S(12), MS(0)));
    }
}
