//! How a number travels from an actor to a scrape.
//!
//! Every component actor owns an [`ActorStats`] (its messages, handle times and mailbox depth)
//! plus counters of its own kind, all plain fields mutated without locks. On a timer it takes
//! the deltas and sends one [`Reported`] message to the `MetricsActor`, which applies them to the
//! registry. So the hot path never touches a shared metric, there is no message per operation,
//! and a scrape reads only what the metrics actor already holds.
//!
//! Adding an actor kind = a variant of [`ActorKind`] plus a report type implementing [`Report`]
//! next to the actor; the metrics actor needs no change.
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use actix::dev::ToEnvelope;
use actix::prelude::*;

use super::histogram::{LocalHistogram, HANDLE_SECONDS};
use super::metrics::Metrics;

/// The `actor` label of the per-actor families.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ActorKind {
    Connection,
    Gate,
    Shard,
    EventQueue,
    Cluster,
    Storage,
    Metrics,
}

impl ActorKind {
    pub const ALL: [ActorKind; 7] = [
        ActorKind::Connection,
        ActorKind::Gate,
        ActorKind::Shard,
        ActorKind::EventQueue,
        ActorKind::Cluster,
        ActorKind::Storage,
        ActorKind::Metrics,
    ];

    pub fn label(self) -> &'static str {
        match self {
            ActorKind::Connection => "connection",
            ActorKind::Gate => "gate",
            ActorKind::Shard => "shard",
            ActorKind::EventQueue => "event_queue",
            ActorKind::Cluster => "cluster",
            ActorKind::Storage => "storage",
            ActorKind::Metrics => "metrics",
        }
    }
}

/// What an actor knows about itself between two reports.
#[derive(Debug)]
pub struct ActorStats {
    kind: ActorKind,
    /// Index within a bounded family (shard 0, stripe 1), for the `/debug/actors` rows.
    member: Option<u32>,
    timed: bool,
    messages: u64,
    handle: LocalHistogram,
    depth: Arc<AtomicI64>,
    reported_depth: i64,
    restarts: u64,
    /// Longest handle time since the last take (the histogram keeps buckets, not the max).
    max_handle: f64,
}

impl ActorStats {
    /// `timed`: measure handle times (the per-actor telemetry switch).
    pub fn new(kind: ActorKind, timed: bool) -> Self {
        ActorStats {
            kind,
            member: None,
            timed,
            messages: 0,
            handle: LocalHistogram::new(HANDLE_SECONDS),
            depth: Arc::new(AtomicI64::new(0)),
            reported_depth: 0,
            restarts: 0,
            max_handle: 0.0,
        }
    }

    /// Marks the actor as member `index` of a bounded family (shards, stripes), so
    /// `/debug/actors` lists it on its own row. Metrics labels stay per kind.
    pub fn member(mut self, index: usize) -> Self {
        self.member = u32::try_from(index).ok();
        self
    }

    pub fn kind(&self) -> ActorKind {
        self.kind
    }

    /// The counter senders bump; pair it with the actor's `Addr` in a [`Mailbox`].
    pub fn depth_counter(&self) -> Arc<AtomicI64> {
        self.depth.clone()
    }

    /// Start of a mailbox message: it leaves the mailbox now.
    #[inline]
    pub fn begin(&self) -> Option<Instant> {
        self.depth.fetch_sub(1, Ordering::Relaxed);
        self.begin_item()
    }

    /// Start of a stream item (a WebSocket frame): it never was in the mailbox.
    #[inline]
    pub fn begin_item(&self) -> Option<Instant> {
        self.timed.then(Instant::now)
    }

    #[inline]
    pub fn end(&mut self, started: Option<Instant>) {
        self.messages += 1;
        if let Some(t0) = started {
            let seconds = t0.elapsed().as_secs_f64();
            self.handle.observe(seconds);
            self.max_handle = self.max_handle.max(seconds);
        }
    }

    pub fn restarted(&mut self) {
        self.restarts += 1;
    }

    pub fn is_dirty(&self) -> bool {
        self.messages > 0
            || self.restarts > 0
            || self.depth.load(Ordering::Relaxed) != self.reported_depth
    }

    /// The deltas since the last take.
    pub fn take(&mut self) -> StatsDelta {
        let depth = self.depth.load(Ordering::Relaxed);
        let delta = StatsDelta {
            kind: self.kind,
            member: self.member,
            messages: std::mem::take(&mut self.messages),
            handle: self.handle.take(),
            max_handle: std::mem::take(&mut self.max_handle),
            depth_delta: depth - self.reported_depth,
            restarts: std::mem::take(&mut self.restarts),
        };
        self.reported_depth = depth;
        delta
    }

    /// The last deltas of a stopping actor: its share of the mailbox gauge goes back to 0.
    pub fn take_final(&mut self) -> StatsDelta {
        let mut delta = self.take();
        delta.depth_delta -= self.reported_depth;
        self.reported_depth = 0;
        delta
    }
}

/// Per-actor deltas inside a report.
#[derive(Debug)]
pub struct StatsDelta {
    pub(super) kind: ActorKind,
    pub(super) member: Option<u32>,
    pub(super) messages: u64,
    pub(super) handle: LocalHistogram,
    pub(super) max_handle: f64,
    pub(super) depth_delta: i64,
    pub(super) restarts: u64,
}

impl StatsDelta {
    pub fn apply(&self, m: &mut Metrics) {
        m.actors.record(self, std::time::Instant::now());
        let label = [self.kind.label()];
        if self.messages > 0 {
            m.actor_messages_total
                .with_label_values(&label)
                .inc_by(self.messages);
        }
        if self.depth_delta != 0 {
            m.actor_mailbox_depth
                .with_label_values(&label)
                .add(self.depth_delta);
        }
        if self.restarts > 0 {
            m.actor_restarts_total
                .with_label_values(&label)
                .inc_by(self.restarts);
        }
        m.actor_handle_seconds.merge(&label, &self.handle);
    }
}

/// A report from one actor: applied by the metrics actor, which owns the registry.
pub trait Report: Send + 'static {
    fn apply(self: Box<Self>, metrics: &mut Metrics);
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct Reported(pub Box<dyn Report>);

/// A report of nothing but actor stats (actors with no counters of their own).
pub struct StatsOnly(pub StatsDelta);

impl Report for StatsOnly {
    fn apply(self: Box<Self>, metrics: &mut Metrics) {
        self.0.apply(metrics);
    }
}

/// An `Addr` that counts what it sends into the receiver's mailbox-depth gauge.
pub struct Mailbox<A: Actor> {
    pub addr: Addr<A>,
    depth: Arc<AtomicI64>,
}

impl<A: Actor> Clone for Mailbox<A> {
    fn clone(&self) -> Self {
        Mailbox {
            addr: self.addr.clone(),
            depth: self.depth.clone(),
        }
    }
}

impl<A: Actor> Mailbox<A> {
    pub fn new(addr: Addr<A>, depth: Arc<AtomicI64>) -> Self {
        Mailbox { addr, depth }
    }

    /// Control messages the sender must not lose (ignores the mailbox capacity).
    pub fn do_send<M>(&self, msg: M)
    where
        M: Message + Send + 'static,
        M::Result: Send,
        A: Handler<M>,
        A::Context: ToEnvelope<A, M>,
    {
        if self.addr.connected() {
            self.depth.fetch_add(1, Ordering::Relaxed);
            self.addr.do_send(msg);
        }
    }

    /// Client-driven volume: fails when the mailbox is full, which the caller counts.
    pub fn try_send<M>(&self, msg: M) -> Result<(), SendError<M>>
    where
        M: Message + Send + 'static,
        M::Result: Send,
        A: Handler<M>,
        A::Context: ToEnvelope<A, M>,
    {
        self.depth.fetch_add(1, Ordering::Relaxed);
        let sent = self.addr.try_send(msg);
        if sent.is_err() {
            self.depth.fetch_sub(1, Ordering::Relaxed);
        }
        sent
    }

    /// Request/response.
    pub fn send<M>(&self, msg: M) -> Request<A, M>
    where
        M: Message + Send + 'static,
        M::Result: Send,
        A: Handler<M>,
        A::Context: ToEnvelope<A, M>,
    {
        self.depth.fetch_add(1, Ordering::Relaxed);
        self.addr.send(msg)
    }
}

/// Mailbox capacity for actors whose senders must never be refused (reports, admissions).
/// `do_send` ignores capacity anyway; this bounds only `send`, far above any real backlog.
/// (`usize::MAX` overflows inside actix.)
pub const UNBOUNDED_MAILBOX: usize = 1 << 16;
