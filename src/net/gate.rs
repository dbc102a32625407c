//! The connection gate: admits new WebSocket connections at a bounded rate and a bounded
//! number of unfinished handshakes, keeps the list of open connections (for the shutdown
//! broadcast) and owns the connection-rate families of the seed:
//! `topgun_connections_{accepted_total,rejected_total,pending}`, `topgun_connection_rate_per_second`
//! and `topgun_connected_clients`, and `topgun_draining`. One actor, so every count is exact
//! without shared state.
//!
//! The drain of a shutdown happens here too: [`StartDraining`] turns new connections away,
//! [`CloseSpread`] closes the open ones in small groups at an even pace over a window, and
//! [`CloseAll`] closes whatever is left at once. The shutdown sequence (`node::shutdown`)
//! decides when.
use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use actix::prelude::*;
use slog::{debug, Logger};

use super::connection::{ConnectionActor, PushPartitionMap, Shutdown};
use crate::net::events::{ClosingClients, ConnectionRateLimited, ConnectionRefusedDraining};
use crate::telemetry::event::{ErrField, Event};
use crate::telemetry::metrics::{Metrics, MetricsActor};
use crate::telemetry::report::{
    ActorKind, ActorStats, Mailbox, Report, Reported, StatsDelta, UNBOUNDED_MAILBOX,
};
use crate::telemetry::throttle::Throttle;

/// The limiter's window (metrics.md: 100 connections per second, window 1 s).
const WINDOW: Duration = Duration::from_secs(1);

/// The pace of a spread close: one group every 50 ms, so 1,000 clients over 10 s go 5 at a
/// time and a client's reconnect lands in a different 50 ms than most others'.
const SPREAD_TICK: Duration = Duration::from_millis(50);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// More than the configured connections in the trailing second.
    RateLimited,
    /// Too many connections still in their handshake.
    TooManyPending,
    /// The node is draining (shutting down): the client should connect to another node.
    Draining,
}

impl Refusal {
    pub fn code(self) -> &'static str {
        match self {
            Refusal::RateLimited => "rate_limited",
            Refusal::TooManyPending => "too_many_pending",
            Refusal::Draining => "draining",
        }
    }
}

/// Asks to let one connection in; the answer carries its connection number.
#[derive(Message)]
#[rtype(result = "Result<u64, Refusal>")]
pub struct Admit;

/// An admitted connection that failed to upgrade gives its slot back.
#[derive(Message)]
#[rtype(result = "()")]
pub struct AdmissionVoided {
    pub id: u64,
}

/// A connection actor started.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Register {
    pub id: u64,
    pub mailbox: Mailbox<ConnectionActor>,
}

/// A connection finished its handshake (authenticated).
#[derive(Message)]
#[rtype(result = "()")]
pub struct HandshakeFinished {
    pub id: u64,
}

/// A connection actor stopped.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Unregister {
    pub id: u64,
}

/// Shutdown begins: turn every new connection away (HTTP 503) from now on, like NATS's lame
/// duck mode, while the open ones are still served. Answers how many are open.
#[derive(Message)]
#[rtype(result = "usize")]
pub struct StartDraining;

/// Shutdown: close every open connection with 1001, in small groups at an even pace over
/// `over` (all at once when it is zero), so their reconnects reach the other nodes at a rate
/// their connection limiters admit. Answers how many were told, once the last group was.
#[derive(Message)]
#[rtype(result = "usize")]
pub struct CloseSpread {
    pub over: Duration,
}

/// Shutdown: close every open connection with 1001 now, a spread in progress included (a
/// second signal). Answers how many were told in all, that spread's earlier groups included.
#[derive(Message)]
#[rtype(result = "usize")]
pub struct CloseAll;

/// A cluster client asked for the partition map: every later map is pushed to it.
#[derive(Message)]
#[rtype(result = "()")]
pub struct WantsPartitionMap {
    pub id: u64,
}

/// The partition table changed: push the new map to the connections that asked for one.
#[derive(Message)]
#[rtype(result = "()")]
pub struct PartitionTableChanged;

/// Counts open connections now.
#[derive(Message)]
#[rtype(result = "usize")]
pub struct OpenConnections;

/// Answered once no connection is open (at once if none is): the shutdown sequence waits on
/// it instead of asking for the count in a loop.
#[derive(Message)]
#[rtype(result = "()")]
pub struct AllClosed;

pub struct ConnectionGateActor {
    rate: usize,
    max_pending: usize,
    origin: Instant,
    window: VecDeque<Instant>,
    next_id: u64,
    pending: HashSet<u64>,
    connections: HashMap<u64, Option<Mailbox<ConnectionActor>>>,
    /// Connections of cluster clients (they sent PARTITION_MAP_REQUEST).
    map_clients: HashSet<u64>,
    accepted: u64,
    rejected: u64,
    current_second: u64,
    accepted_this_second: u64,
    accepted_last_full_second: u64,
    /// New connections are turned away ([`StartDraining`]).
    draining: bool,
    /// Connections that register from now on are closed at once ([`CloseSpread`], [`CloseAll`]).
    closing: bool,
    /// The spread close in progress.
    spread: Option<Spread>,
    /// Answers to [`AllClosed`], sent when the last connection goes.
    all_closed: Vec<tokio::sync::oneshot::Sender<()>>,
    refusal_log: Throttle,
    draining_refusal_log: Throttle,
    stats: ActorStats,
    log: Logger,
    metrics: Mailbox<MetricsActor>,
    report_interval: Duration,
}

impl ConnectionGateActor {
    pub fn new(
        rate: u32,
        max_pending: u32,
        log: &Logger,
        metrics: Mailbox<MetricsActor>,
        report_interval: Duration,
        timed: bool,
    ) -> Self {
        ConnectionGateActor {
            rate: rate as usize,
            max_pending: max_pending as usize,
            origin: Instant::now(),
            window: VecDeque::new(),
            next_id: 1,
            pending: HashSet::new(),
            connections: HashMap::new(),
            map_clients: HashSet::new(),
            accepted: 0,
            rejected: 0,
            current_second: 0,
            accepted_this_second: 0,
            accepted_last_full_second: 0,
            draining: false,
            closing: false,
            spread: None,
            all_closed: Vec::new(),
            refusal_log: Throttle::new(Duration::from_secs(10)),
            draining_refusal_log: Throttle::new(Duration::from_secs(10)),
            stats: ActorStats::new(ActorKind::Gate, timed),
            log: log.new(slog::o!("actor" => "gate")),
            metrics,
            report_interval,
        }
    }

    pub fn stats(&self) -> &ActorStats {
        &self.stats
    }

    /// Moves the per-second counter to the second `now` falls in.
    fn roll_second(&mut self, now: Instant) {
        let second = now.duration_since(self.origin).as_secs();
        if second != self.current_second {
            self.accepted_last_full_second = if second == self.current_second + 1 {
                self.accepted_this_second
            } else {
                0
            };
            self.current_second = second;
            self.accepted_this_second = 0;
        }
    }

    /// Tells the connection `id` to close with 1001, if it is still open; true if told. One
    /// that has not registered yet is told when it does (`closing`).
    fn tell_to_close(&self, id: u64) -> bool {
        match self.connections.get(&id) {
            Some(Some(mailbox)) => {
                mailbox.do_send(Shutdown);
                true
            }
            _ => false,
        }
    }

    /// One group of the spread: the connections due by this tick. Answers the waiters and
    /// stops the timer after the last group.
    fn spread_tick(&mut self, ctx: &mut Context<Self>) {
        let Some(mut spread) = self.spread.take() else {
            return;
        };
        spread.tick += 1;
        let due = spread_due(spread.total, spread.tick, spread.ticks);
        while spread.taken < due {
            let Some(id) = spread.queue.pop_front() else {
                break;
            };
            spread.taken += 1;
            if self.tell_to_close(id) {
                spread.told += 1;
            }
        }
        if spread.queue.is_empty() {
            self.finish_spread(spread, ctx);
        } else {
            self.spread = Some(spread);
        }
    }

    fn finish_spread(&mut self, spread: Spread, ctx: &mut Context<Self>) {
        if let Some(timer) = spread.timer {
            ctx.cancel_future(timer);
        }
        for waiter in spread.waiters {
            let _ = waiter.send(spread.told);
        }
    }

    fn wake_if_all_closed(&mut self) {
        if self.connections.is_empty() {
            for waiter in self.all_closed.drain(..) {
                let _ = waiter.send(());
            }
        }
    }

    fn report(&mut self) {
        self.roll_second(Instant::now());
        let report = GateReport {
            stats: self.stats.take(),
            accepted: std::mem::take(&mut self.accepted),
            rejected: std::mem::take(&mut self.rejected),
            pending: self.pending.len() as i64,
            connected: self.connections.len() as i64,
            rate: self.accepted_last_full_second as i64,
            draining: i64::from(self.draining),
        };
        self.metrics.do_send(Reported(Box::new(report)));
    }
}

/// The gate's numbers: absolute gauges (it is the only source) and counter deltas.
struct GateReport {
    stats: StatsDelta,
    accepted: u64,
    rejected: u64,
    pending: i64,
    connected: i64,
    rate: i64,
    draining: i64,
}

/// A close spread over a window: the connections open when it began, oldest first, told in
/// `ticks` groups one [`SPREAD_TICK`] apart.
struct Spread {
    queue: VecDeque<u64>,
    total: usize,
    ticks: u32,
    tick: u32,
    /// Taken off the queue (told, or gone on their own meanwhile).
    taken: usize,
    told: usize,
    timer: Option<SpawnHandle>,
    waiters: Vec<tokio::sync::oneshot::Sender<usize>>,
}

/// Groups of a spread over `over`: one per [`SPREAD_TICK`], at least one.
fn spread_ticks(over: Duration) -> u32 {
    let ticks = over.as_millis() / SPREAD_TICK.as_millis();
    u32::try_from(ticks).unwrap_or(u32::MAX).max(1)
}

/// How many of `total` connections are told to close once group `tick` (1-based) of `ticks`
/// is sent: an even share per group, rounded up, so the last group takes the rest.
fn spread_due(total: usize, tick: u32, ticks: u32) -> usize {
    let (total, tick, ticks) = (total as u128, u128::from(tick), u128::from(ticks.max(1)));
    let due = (total * tick.min(ticks)).div_ceil(ticks);
    usize::try_from(due).unwrap_or(usize::MAX)
}

impl Report for GateReport {
    fn apply(self: Box<Self>, m: &mut Metrics) {
        self.stats.apply(m);
        m.connections_accepted_total.inc_by(self.accepted);
        m.connections_rejected_total.inc_by(self.rejected);
        m.connections_pending.set(self.pending);
        m.connected_clients.set(self.connected);
        m.connection_rate_per_second.set(self.rate);
        m.draining.set(self.draining);
    }
}

impl Actor for ConnectionGateActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        // Admission is decided here, so its mailbox must never refuse.
        ctx.set_mailbox_capacity(UNBOUNDED_MAILBOX);
        ctx.run_interval(
            self.report_interval.min(Duration::from_millis(250)),
            |act, _| act.report(),
        );
    }
}

// Messages sent through a `Mailbox` arrive wrapped, with the time they were sent.
crate::telemetry::mailbox::mailbox_handlers!(ConnectionGateActor, stats);

impl Handler<Admit> for ConnectionGateActor {
    type Result = Result<u64, Refusal>;

    fn handle(&mut self, _: Admit, _: &mut Context<Self>) -> Result<u64, Refusal> {
        let t0 = self.stats.begin();
        let now = Instant::now();
        while self
            .window
            .front()
            .is_some_and(|t| now.duration_since(*t) >= WINDOW)
        {
            self.window.pop_front();
        }
        let verdict = if self.draining || self.closing {
            Err(Refusal::Draining)
        } else if self.window.len() >= self.rate {
            Err(Refusal::RateLimited)
        } else if self.pending.len() >= self.max_pending {
            Err(Refusal::TooManyPending)
        } else {
            Ok(())
        };
        let result = match verdict {
            Ok(()) => {
                let id = self.next_id;
                self.next_id += 1;
                self.window.push_back(now);
                self.pending.insert(id);
                self.connections.insert(id, None);
                self.accepted += 1;
                self.roll_second(now);
                self.accepted_this_second += 1;
                Ok(id)
            }
            Err(Refusal::Draining) => {
                // Not the limiter's doing: `topgun_connections_rejected_total` (and its alert)
                // stay for the limiter; the event's series counts these.
                let suppressed = self.draining_refusal_log.check(now);
                ConnectionRefusedDraining {
                    suppressed: suppressed.unwrap_or(0),
                    err: ErrField::fixed(
                        Refusal::Draining.code(),
                        "the node is shutting down: connect to another node",
                    ),
                }
                .emit_if(&self.log, suppressed.is_some());
                Err(Refusal::Draining)
            }
            Err(refusal) => {
                self.rejected += 1;
                let suppressed = self.refusal_log.check(now);
                ConnectionRateLimited {
                    reason: refusal.code(),
                    pending: self.pending.len(),
                    limit_per_second: self.rate,
                    suppressed: suppressed.unwrap_or(0),
                    err: ErrField::new(refusal.code(), "the connection was refused at the gate"),
                }
                .emit_if(&self.log, suppressed.is_some());
                Err(refusal)
            }
        };
        self.stats.end(t0);
        result
    }
}

impl Handler<AdmissionVoided> for ConnectionGateActor {
    type Result = ();

    fn handle(&mut self, msg: AdmissionVoided, _: &mut Context<Self>) {
        let t0 = self.stats.begin();
        self.pending.remove(&msg.id);
        self.connections.remove(&msg.id);
        self.wake_if_all_closed();
        self.stats.end(t0);
    }
}

impl Handler<Register> for ConnectionGateActor {
    type Result = ();

    fn handle(&mut self, msg: Register, _: &mut Context<Self>) {
        let t0 = self.stats.begin();
        if self.closing {
            msg.mailbox.do_send(Shutdown);
        }
        self.connections.insert(msg.id, Some(msg.mailbox));
        self.stats.end(t0);
    }
}

impl Handler<HandshakeFinished> for ConnectionGateActor {
    type Result = ();

    fn handle(&mut self, msg: HandshakeFinished, _: &mut Context<Self>) {
        let t0 = self.stats.begin();
        self.pending.remove(&msg.id);
        self.stats.end(t0);
    }
}

impl Handler<Unregister> for ConnectionGateActor {
    type Result = ();

    fn handle(&mut self, msg: Unregister, _: &mut Context<Self>) {
        let t0 = self.stats.begin();
        self.pending.remove(&msg.id);
        self.connections.remove(&msg.id);
        self.map_clients.remove(&msg.id);
        self.wake_if_all_closed();
        self.stats.end(t0);
    }
}

impl Handler<StartDraining> for ConnectionGateActor {
    type Result = usize;

    fn handle(&mut self, _: StartDraining, _: &mut Context<Self>) -> usize {
        let t0 = self.stats.begin();
        self.draining = true;
        // At once, not at the next report: a scrape during the drain should show it.
        self.report();
        self.stats.end(t0);
        self.connections.len()
    }
}

impl Handler<CloseSpread> for ConnectionGateActor {
    type Result = ResponseFuture<usize>;

    fn handle(&mut self, msg: CloseSpread, ctx: &mut Context<Self>) -> Self::Result {
        let t0 = self.stats.begin();
        self.draining = true;
        self.closing = true;
        let (tx, rx) = tokio::sync::oneshot::channel();
        match &mut self.spread {
            // Asked twice: answered when the one under way ends.
            Some(spread) => spread.waiters.push(tx),
            None => {
                let mut ids: Vec<u64> = self.connections.keys().copied().collect();
                ids.sort_unstable();
                let total = ids.len();
                let ticks = if msg.over.is_zero() {
                    1
                } else {
                    spread_ticks(msg.over)
                };
                ClosingClients {
                    connections: total,
                    spread_ms: msg.over.as_millis() as u64,
                    groups: ticks.min(u32::try_from(total).unwrap_or(u32::MAX)),
                    group_every_ms: SPREAD_TICK.as_millis() as u64,
                }
                .emit(&self.log);
                self.spread = Some(Spread {
                    queue: ids.into(),
                    total,
                    ticks,
                    tick: 0,
                    taken: 0,
                    told: 0,
                    timer: None,
                    waiters: vec![tx],
                });
                // The first group now, the others one tick apart.
                self.spread_tick(ctx);
                if let Some(spread) = &mut self.spread {
                    spread.timer =
                        Some(ctx.run_interval(SPREAD_TICK, |act, ctx| act.spread_tick(ctx)));
                }
            }
        }
        self.report();
        self.stats.end(t0);
        // A dropped sender (the gate stopped) answers 0: nothing more was told.
        Box::pin(async move { rx.await.unwrap_or(0) })
    }
}

impl Handler<CloseAll> for ConnectionGateActor {
    type Result = usize;

    fn handle(&mut self, _: CloseAll, ctx: &mut Context<Self>) -> usize {
        let t0 = self.stats.begin();
        self.draining = true;
        self.closing = true;
        let mut told = 0;
        let total = match self.spread.take() {
            // Those the spread has not told yet; every other one was told already.
            Some(mut spread) => {
                while let Some(id) = spread.queue.pop_front() {
                    spread.taken += 1;
                    if self.tell_to_close(id) {
                        spread.told += 1;
                        told += 1;
                    }
                }
                let total = spread.told;
                self.finish_spread(spread, ctx);
                total
            }
            None => {
                for mailbox in self.connections.values().flatten() {
                    mailbox.do_send(Shutdown);
                    told += 1;
                }
                told
            }
        };
        ClosingClients {
            connections: told,
            spread_ms: 0,
            groups: u32::from(told > 0),
            group_every_ms: 0,
        }
        .emit(&self.log);
        self.report();
        self.stats.end(t0);
        total
    }
}

impl Handler<WantsPartitionMap> for ConnectionGateActor {
    type Result = ();

    fn handle(&mut self, msg: WantsPartitionMap, _: &mut Context<Self>) {
        let t0 = self.stats.begin();
        if self.connections.contains_key(&msg.id) {
            self.map_clients.insert(msg.id);
        }
        self.stats.end(t0);
    }
}

impl Handler<PartitionTableChanged> for ConnectionGateActor {
    type Result = ();

    fn handle(&mut self, _: PartitionTableChanged, _: &mut Context<Self>) {
        let t0 = self.stats.begin();
        let mut pushed = 0usize;
        for id in &self.map_clients {
            if let Some(Some(mailbox)) = self.connections.get(id) {
                mailbox.do_send(PushPartitionMap);
                pushed += 1;
            }
        }
        debug!(self.log, "partition map pushed to cluster clients"; "connections" => pushed);
        self.stats.end(t0);
    }
}

impl Handler<AllClosed> for ConnectionGateActor {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: AllClosed, _: &mut Context<Self>) -> Self::Result {
        let t0 = self.stats.begin();
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.all_closed.push(tx);
        self.wake_if_all_closed();
        self.stats.end(t0);
        Box::pin(async move {
            let _ = rx.await;
        })
    }
}

impl Handler<OpenConnections> for ConnectionGateActor {
    type Result = usize;

    fn handle(&mut self, _: OpenConnections, _: &mut Context<Self>) -> usize {
        let t0 = self.stats.begin();
        self.stats.end(t0);
        self.connections.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spread_closes_even_groups_and_everyone_by_the_last() {
        // 1,000 connections over 10 s: 200 groups of 5.
        let ticks = spread_ticks(Duration::from_secs(10));
        assert_eq!(ticks, 200);
        let groups: Vec<usize> = (1..=ticks)
            .map(|k| spread_due(1000, k, ticks) - spread_due(1000, k - 1, ticks))
            .collect();
        assert!(groups.iter().all(|&g| g == 5), "{groups:?}");
        // 50 over 2 s: 40 groups of 1 or 2, never more, all 50 by the last.
        let ticks = spread_ticks(Duration::from_secs(2));
        let groups: Vec<usize> = (1..=ticks)
            .map(|k| spread_due(50, k, ticks) - spread_due(50, k - 1, ticks))
            .collect();
        assert!(groups.iter().all(|&g| (1..=2).contains(&g)), "{groups:?}");
        assert_eq!(groups.iter().sum::<usize>(), 50);
        // Fewer connections than groups: one now and then, none twice.
        let ticks = spread_ticks(Duration::from_secs(10));
        let groups: Vec<usize> = (1..=ticks)
            .map(|k| spread_due(3, k, ticks) - spread_due(3, k - 1, ticks))
            .collect();
        assert_eq!(groups.iter().filter(|&&g| g == 1).count(), 3);
        assert!(groups.iter().all(|&g| g <= 1));
        // Past the last group, or a window shorter than a tick: everyone.
        assert_eq!(spread_due(7, 9, 4), 7);
        assert_eq!(spread_ticks(Duration::from_millis(10)), 1);
        assert_eq!(spread_due(7, 1, 1), 7);
        assert_eq!(spread_due(0, 1, 1), 0);
        assert_eq!(spread_ticks(Duration::MAX), u32::MAX);
    }
}
