//! The way into an actor's mailbox that its telemetry sees (Akka's mailbox time and dead
//! letters, BEAM's `message_queue_len`).
//!
//! [`Mailbox`] (an `Addr`) and [`MailboxRecipient`] (a `Recipient` of one message type) count
//! what they send in the receiver's mailbox-depth gauge, stamp it with the time it was sent
//! while actor telemetry is on, and count what they could not deliver because the receiver had
//! stopped in the node-wide [`DeadLetters`]. A message travels as [`Timed<M>`]; an actor kind
//! that takes mailbox messages declares [`mailbox_handlers!`] once, which unwraps it, records
//! its wait in the actor's `ActorStats` and calls the actor's own `Handler<M>`, whose answer
//! goes back unchanged ([`Forward`]). (A blanket `impl Handler<Timed<M>> for A` is refused by
//! the orphan rule, hence one line per actor type.)
//!
//! Not counted, by design: stream items (WebSocket frames, peer frames, datagrams, a
//! connection's completions) never wait in a mailbox; messages sent with a plain `Addr` (an
//! actor to itself, a peer link to the cluster actor) are handled and timed but have neither a
//! wait nor a place in the depth gauge.
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use actix::dev::{MessageResponse, OneshotSender, ToEnvelope};
use actix::prelude::*;

use super::report::ActorKind;

/// Mailbox capacity for actors whose senders must never be refused (reports, admissions).
/// `do_send` ignores capacity anyway; this bounds only `send`, far above any real backlog.
/// (`usize::MAX` overflows inside actix.)
pub const UNBOUNDED_MAILBOX: usize = 1 << 16;

/// A message on its way through a mailbox: when it was sent (`None` with actor telemetry
/// off, which then costs no clock read).
pub struct Timed<M> {
    pub(super) sent: Option<Instant>,
    pub(super) msg: M,
}

impl<M: Message> Message for Timed<M> {
    type Result = M::Result;
}

/// The answer of the inner handler, passed on as the answer to its [`Timed`] message: both
/// messages have the same `Result`, so the same oneshot sender serves.
pub struct Forward<R>(pub R);

impl<A, M, R> MessageResponse<A, Timed<M>> for Forward<R>
where
    A: Actor,
    M: Message,
    R: MessageResponse<A, M>,
{
    fn handle(self, ctx: &mut A::Context, tx: Option<OneshotSender<M::Result>>) {
        self.0.handle(ctx, tx);
    }
}

/// `mailbox_handlers!(ShardActor, stats)`: the actor takes [`Timed`] messages for every
/// message it handles, recording their mailbox wait in `self.stats` (a field path:
/// `tel.stats` works too) before its own handler runs.
macro_rules! mailbox_handlers {
    ($actor:ty, $($stats:ident).+) => {
        impl<M> ::actix::Handler<$crate::telemetry::mailbox::Timed<M>> for $actor
        where
            M: ::actix::Message,
            $actor: ::actix::Handler<M>,
        {
            type Result =
                $crate::telemetry::mailbox::Forward<<$actor as ::actix::Handler<M>>::Result>;

            fn handle(
                &mut self,
                msg: $crate::telemetry::mailbox::Timed<M>,
                ctx: &mut <$actor as ::actix::Actor>::Context,
            ) -> Self::Result {
                let msg = self.$($stats).+.received(msg);
                let answer = <$actor as ::actix::Handler<M>>::handle(self, msg, ctx);
                self.$($stats).+.handled();
                $crate::telemetry::mailbox::Forward(answer)
            }
        }
    };
}
pub(crate) use mailbox_handlers;

/// What a sender needs of the receiver's telemetry: its depth gauge, whether to stamp
/// messages, and its kind (for dead letters). From `ActorStats::tap`.
#[derive(Clone, Debug)]
pub struct Tap {
    pub(super) depth: Arc<AtomicI64>,
    pub(super) timed: bool,
    pub(super) kind: ActorKind,
}

impl Tap {
    #[inline]
    fn stamp<M>(&self, msg: M) -> Timed<M> {
        Timed {
            sent: self.timed.then(Instant::now),
            msg,
        }
    }
}

/// Messages sent to actors that had stopped, per kind, node-wide: created once by the node,
/// shared by every [`Mailbox`] (reach it from any of them with [`Mailbox::dead_letters`]) and
/// read by the metrics actor. An actor's own report cannot carry these: it has stopped.
#[derive(Debug, Default)]
pub struct DeadLetters {
    counts: [AtomicU64; ActorKind::ALL.len()],
}

impl DeadLetters {
    #[inline]
    pub fn count(&self, kind: ActorKind, n: u64) {
        if let Some(c) = self.counts.get(kind.index()) {
            c.fetch_add(n, Ordering::Relaxed);
        }
    }

    pub fn get(&self, kind: ActorKind) -> u64 {
        self.counts
            .get(kind.index())
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }
}

/// An `Addr` that counts what it sends into the receiver's mailbox-depth gauge, stamps it for
/// the mailbox-wait histogram, and counts it as a dead letter when the receiver has stopped.
pub struct Mailbox<A: Actor> {
    pub addr: Addr<A>,
    tap: Tap,
    dead: Arc<DeadLetters>,
}

impl<A: Actor> Clone for Mailbox<A> {
    fn clone(&self) -> Self {
        Mailbox {
            addr: self.addr.clone(),
            tap: self.tap.clone(),
            dead: self.dead.clone(),
        }
    }
}

impl<A: Actor> Mailbox<A> {
    pub fn new(addr: Addr<A>, tap: Tap, dead: Arc<DeadLetters>) -> Self {
        Mailbox { addr, tap, dead }
    }

    /// The node's dead-letter counters, for the mailboxes of actors started later.
    pub fn dead_letters(&self) -> Arc<DeadLetters> {
        self.dead.clone()
    }

    /// Control messages the sender must not lose (ignores the mailbox capacity). A receiver
    /// that stopped counts a dead letter; one that stops between the check and the send drops
    /// the message uncounted (actix's `do_send` does not tell).
    pub fn do_send<M>(&self, msg: M)
    where
        M: Message + Send + 'static,
        M::Result: Send,
        A: Handler<Timed<M>>,
        A::Context: ToEnvelope<A, Timed<M>>,
    {
        if self.addr.connected() {
            self.tap.depth.fetch_add(1, Ordering::Relaxed);
            self.addr.do_send(self.tap.stamp(msg));
        } else {
            self.dead.count(self.tap.kind, 1);
        }
    }

    /// Client-driven volume: fails when the mailbox is full, which the caller counts.
    pub fn try_send<M>(&self, msg: M) -> Result<(), SendError<M>>
    where
        M: Message + Send + 'static,
        M::Result: Send,
        A: Handler<Timed<M>>,
        A::Context: ToEnvelope<A, Timed<M>>,
    {
        try_send_timed(&self.tap, &self.dead, msg, |m| self.addr.try_send(m))
    }

    /// Request/response. A receiver that stopped answers `MailboxError::Closed`, and counts a
    /// dead letter.
    pub fn send<M>(&self, msg: M) -> Request<A, Timed<M>>
    where
        M: Message + Send + 'static,
        M::Result: Send,
        A: Handler<Timed<M>>,
        A::Context: ToEnvelope<A, Timed<M>>,
    {
        if self.addr.connected() {
            self.tap.depth.fetch_add(1, Ordering::Relaxed);
        } else {
            self.dead.count(self.tap.kind, 1);
        }
        self.addr.send(self.tap.stamp(msg))
    }

    /// The same accounting for one message type, without naming the actor type.
    pub fn recipient<M>(&self) -> MailboxRecipient<M>
    where
        A: Handler<Timed<M>>,
        A::Context: ToEnvelope<A, Timed<M>>,
        M: Message + Send + 'static,
        M::Result: Send,
    {
        MailboxRecipient {
            recipient: self.addr.clone().recipient(),
            tap: self.tap.clone(),
            dead: self.dead.clone(),
        }
    }
}

/// A [`Mailbox`] for one message type (the event queue sends live events to "whoever handles
/// `Deliver`", knowing nothing of connections).
pub struct MailboxRecipient<M>
where
    M: Message + Send,
    M::Result: Send,
{
    recipient: Recipient<Timed<M>>,
    tap: Tap,
    dead: Arc<DeadLetters>,
}

impl<M> MailboxRecipient<M>
where
    M: Message + Send + 'static,
    M::Result: Send,
{
    /// As [`Mailbox::try_send`].
    pub fn try_send(&self, msg: M) -> Result<(), SendError<M>> {
        try_send_timed(&self.tap, &self.dead, msg, |m| self.recipient.try_send(m))
    }
}

/// The depth is raised before the send (the receiver may handle the message before `try_send`
/// returns) and lowered again if it was refused; a refusal because the receiver stopped is a
/// dead letter, one because its mailbox is full is the caller's to count.
#[inline]
fn try_send_timed<M>(
    tap: &Tap,
    dead: &DeadLetters,
    msg: M,
    send: impl FnOnce(Timed<M>) -> Result<(), SendError<Timed<M>>>,
) -> Result<(), SendError<M>> {
    tap.depth.fetch_add(1, Ordering::Relaxed);
    match send(tap.stamp(msg)) {
        Ok(()) => Ok(()),
        Err(SendError::Full(t)) => {
            tap.depth.fetch_sub(1, Ordering::Relaxed);
            Err(SendError::Full(t.msg))
        }
        Err(SendError::Closed(t)) => {
            tap.depth.fetch_sub(1, Ordering::Relaxed);
            dead.count(tap.kind, 1);
            Err(SendError::Closed(t.msg))
        }
    }
}
