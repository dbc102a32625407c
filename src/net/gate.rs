//! The connection gate: admits new WebSocket connections at a bounded rate and a bounded
//! number of unfinished handshakes, keeps the list of open connections (for the shutdown
//! broadcast) and owns the connection-rate families of the seed:
//! `topgun_connections_{accepted_total,rejected_total,pending}`, `topgun_connection_rate_per_second`
//! and `topgun_connected_clients`. One actor, so every count is exact without shared state.
use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use actix::prelude::*;
use slog::{debug, Logger};

use super::connection::{ConnectionActor, PushPartitionMap, Shutdown};
use crate::net::events::{ClosingClients, ConnectionRateLimited};
use crate::telemetry::event::{ErrField, Event};
use crate::telemetry::metrics::{Metrics, MetricsActor};
use crate::telemetry::report::{
    ActorKind, ActorStats, Mailbox, Report, Reported, StatsDelta, UNBOUNDED_MAILBOX,
};
use crate::telemetry::throttle::Throttle;

/// The limiter's window (metrics.md: 100 connections per second, window 1 s).
const WINDOW: Duration = Duration::from_secs(1);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// More than the configured connections in the trailing second.
    RateLimited,
    /// Too many connections still in their handshake.
    TooManyPending,
}

impl Refusal {
    pub fn code(self) -> &'static str {
        match self {
            Refusal::RateLimited => "rate_limited",
            Refusal::TooManyPending => "too_many_pending",
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

/// Shutdown: close every open connection with 1001. Answers how many were told.
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
    closing: bool,
    /// Answers to [`AllClosed`], sent when the last connection goes.
    all_closed: Vec<tokio::sync::oneshot::Sender<()>>,
    refusal_log: Throttle,
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
            closing: false,
            all_closed: Vec::new(),
            refusal_log: Throttle::new(Duration::from_secs(10)),
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
}

impl Report for GateReport {
    fn apply(self: Box<Self>, m: &mut Metrics) {
        self.stats.apply(m);
        m.connections_accepted_total.inc_by(self.accepted);
        m.connections_rejected_total.inc_by(self.rejected);
        m.connections_pending.set(self.pending);
        m.connected_clients.set(self.connected);
        m.connection_rate_per_second.set(self.rate);
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
        let verdict = if self.closing || self.window.len() >= self.rate {
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

impl Handler<CloseAll> for ConnectionGateActor {
    type Result = usize;

    fn handle(&mut self, _: CloseAll, _: &mut Context<Self>) -> usize {
        let t0 = self.stats.begin();
        self.closing = true;
        let mut told = 0;
        for mailbox in self.connections.values().flatten() {
            mailbox.do_send(Shutdown);
            told += 1;
        }
        ClosingClients { connections: told }.emit(&self.log);
        self.report();
        self.stats.end(t0);
        told
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
