//! How a number travels from an actor to a scrape.
//!
//! Every component actor owns an [`ActorStats`] (its messages, handle times and mailbox depth)
//! plus counters of its own kind, all plain fields mutated without locks. On a timer it takes
//! the deltas and sends one [`Reported`] message to the `MetricsActor`, which applies them to the
//! registry. So the hot path never touches a shared metric, there is no message per operation,
//! and a scrape reads only what the metrics actor already holds.
//!
//! What senders do (the depth gauge, mailbox waits, dead letters) is in [`super::mailbox`].
//!
//! Adding an actor kind = a variant of [`ActorKind`] plus a report type implementing [`Report`]
//! next to the actor, and `mailbox_handlers!` for it; the metrics actor needs no change.
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;

use super::histogram::{LocalHistogram, HANDLE_SECONDS, WAIT_SECONDS};
use super::mailbox::{Tap, Timed};
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
    /// The client port's TLS reloader (only with `--tls-cert`).
    Tls,
    /// The JWT keys' reloader (only with `--jwt-keys-file` or `--jwks-url`).
    Keys,
}

impl ActorKind {
    pub const ALL: [ActorKind; 9] = [
        ActorKind::Connection,
        ActorKind::Gate,
        ActorKind::Shard,
        ActorKind::EventQueue,
        ActorKind::Cluster,
        ActorKind::Storage,
        ActorKind::Metrics,
        ActorKind::Tls,
        ActorKind::Keys,
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
            ActorKind::Tls => "tls",
            ActorKind::Keys => "keys",
        }
    }

    /// Position in [`ActorKind::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// Numbers actor instances for `/debug/actors` (connections come and go; a name such as a
/// peer's node id may be shared by two links). Only taken when an actor starts.
static NEXT_INSTANCE: AtomicU64 = AtomicU64::new(1);

/// What an actor knows about itself between two reports.
#[derive(Debug)]
pub struct ActorStats {
    kind: ActorKind,
    /// Index within a bounded family (shard 0, stripe 1), for the `/debug/actors` rows.
    member: Option<u32>,
    /// This actor among all of its kind, in `/debug/actors`.
    instance: u64,
    /// What `/debug/actors` calls it (a clientId, a peer's node id); `None`: its member name,
    /// or its kind's.
    name: Option<Arc<str>>,
    timed: bool,
    messages: u64,
    handle: LocalHistogram,
    /// Time between a [`Mailbox`] send and the start of its handler.
    wait: LocalHistogram,
    /// When the mailbox message being handled was taken out: the end of its wait is the start
    /// of its handling, so [`ActorStats::begin`] reuses this reading instead of the clock.
    taken_at: Option<Instant>,
    depth: Arc<AtomicI64>,
    reported_depth: i64,
    restarts: u64,
    /// Longest handle time and mailbox wait since the last take (histograms keep buckets, not
    /// the max).
    max_handle: f64,
    max_wait: f64,
}

impl ActorStats {
    /// `timed`: measure handle times and mailbox waits (the per-actor telemetry switch).
    pub fn new(kind: ActorKind, timed: bool) -> Self {
        ActorStats {
            kind,
            member: None,
            instance: NEXT_INSTANCE.fetch_add(1, Ordering::Relaxed),
            name: None,
            timed,
            messages: 0,
            handle: LocalHistogram::new(HANDLE_SECONDS),
            wait: LocalHistogram::new(WAIT_SECONDS),
            taken_at: None,
            depth: Arc::new(AtomicI64::new(0)),
            reported_depth: 0,
            restarts: 0,
            max_handle: 0.0,
            max_wait: 0.0,
        }
    }

    /// Marks the actor as member `index` of a bounded family (shards, stripes), so
    /// `/debug/actors` lists it on its own row. Metrics labels stay per kind.
    pub fn member(mut self, index: usize) -> Self {
        self.member = u32::try_from(index).ok();
        self
    }

    /// What `/debug/actors` calls this actor (one of a kind with several, not a member).
    pub fn named(mut self, name: &str) -> Self {
        self.name = Some(Arc::from(name));
        self
    }

    /// What `/debug/actors` calls this actor from its next report on.
    pub fn set_name(&mut self, name: Arc<str>) {
        self.name = Some(name);
    }

    pub fn kind(&self) -> ActorKind {
        self.kind
    }

    /// The messages sent and not yet handled (the storage actor groups commits by it).
    pub fn depth(&self) -> i64 {
        self.depth.load(Ordering::Relaxed)
    }

    /// What senders need: pair it with the actor's `Addr` in a [`Mailbox`].
    pub fn tap(&self) -> Tap {
        Tap {
            depth: self.depth.clone(),
            timed: self.timed,
            kind: self.kind,
        }
    }

    /// A mailbox message is taken out: it leaves the depth gauge and its wait is recorded.
    /// Called by the handlers [`mailbox_handlers!`](super::mailbox) declares, before the
    /// actor's own.
    #[inline]
    pub fn received<M>(&mut self, msg: Timed<M>) -> M {
        self.depth.fetch_sub(1, Ordering::Relaxed);
        if let Some(sent) = msg.sent {
            let now = Instant::now();
            let seconds = now.saturating_duration_since(sent).as_secs_f64();
            self.wait.observe(seconds);
            self.max_wait = self.max_wait.max(seconds);
            self.taken_at = Some(now);
        }
        msg.msg
    }

    /// After the actor's own handler of a mailbox message: a reading it did not use must not
    /// become the start of the next item.
    #[inline]
    pub fn handled(&mut self) {
        self.taken_at = None;
    }

    /// Start of a handler (a mailbox message or a stream item). Clock reads are most of what
    /// telemetry costs per message (about 20 ns each here), so a mailbox message's handling
    /// starts at the instant its wait ended.
    #[inline]
    pub fn begin(&mut self) -> Option<Instant> {
        if !self.timed {
            return None;
        }
        Some(self.taken_at.take().unwrap_or_else(Instant::now))
    }

    /// Start of a stream item (a WebSocket frame): such items never were in the mailbox.
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
            || !self.wait.is_empty()
            || self.depth.load(Ordering::Relaxed) != self.reported_depth
    }

    /// The deltas since the last take.
    pub fn take(&mut self) -> StatsDelta {
        let depth = self.depth.load(Ordering::Relaxed);
        let delta = StatsDelta {
            kind: self.kind,
            member: self.member,
            instance: self.instance,
            name: self.name.clone(),
            messages: std::mem::take(&mut self.messages),
            handle: self.handle.take(),
            max_handle: std::mem::take(&mut self.max_handle),
            wait: self.wait.take(),
            max_wait: std::mem::take(&mut self.max_wait),
            depth,
            depth_delta: depth - self.reported_depth,
            restarts: std::mem::take(&mut self.restarts),
            last: false,
            dead_letters: 0,
        };
        self.reported_depth = depth;
        delta
    }

    /// The last deltas of a stopping actor: its share of the mailbox gauge goes back to 0, and
    /// what is still in its mailbox will never be handled: dead letters. (A sender racing the
    /// stop may find the mailbox closed a moment later and count its message again: a
    /// nanosecond window, against no count at all.)
    pub fn take_final(&mut self) -> StatsDelta {
        let mut delta = self.take();
        delta.depth_delta -= self.reported_depth;
        delta.dead_letters = u64::try_from(self.reported_depth).unwrap_or(0);
        delta.depth = 0;
        delta.last = true;
        self.reported_depth = 0;
        delta
    }
}

/// Per-actor deltas inside a report.
#[derive(Debug)]
pub struct StatsDelta {
    pub(super) kind: ActorKind,
    pub(super) member: Option<u32>,
    pub(super) instance: u64,
    pub(super) name: Option<Arc<str>>,
    pub(super) messages: u64,
    pub(super) handle: LocalHistogram,
    pub(super) max_handle: f64,
    pub(super) wait: LocalHistogram,
    pub(super) max_wait: f64,
    /// The mailbox depth when taken, and its change since the previous take.
    pub(super) depth: i64,
    pub(super) depth_delta: i64,
    pub(super) restarts: u64,
    /// The actor's final report: it stopped.
    pub(super) last: bool,
    /// Messages left in the mailbox of an actor that stopped.
    pub(super) dead_letters: u64,
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
        if self.dead_letters > 0 {
            m.actor_dead_letters_total
                .with_label_values(&label)
                .inc_by(self.dead_letters);
        }
        m.actor_handle_seconds.merge(&label, &self.handle);
        m.actor_mailbox_wait_seconds.merge(&label, &self.wait);
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

pub use super::mailbox::{Mailbox, UNBOUNDED_MAILBOX};
