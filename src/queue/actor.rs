//! `StripeActor`: one stripe of the event queue, on a shard's data thread. Takes batches of change
//! events from the shards, routes each to the subscribed connections through their bounded
//! outbound queues, and keeps the subscription registry of its keys and topics.
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use bytes::Bytes;
use rmpv::Value;
use slog::Logger;

use super::events::{StripeDrained, StripeNearFull};
use crate::telemetry::event::Event;

use super::outbound::{Delivered, Outbound};
use super::subscriptions::{Delivery, Registry, Routed, SubKey};
use super::{ChangeEvent, ConnId};
use crate::protocol::{self, ServerMessage, TopicMessage};
use crate::shard::hlc::system_millis;
use crate::shard::query::CompiledQuery;
use crate::telemetry::metrics::{Metrics, MetricsActor};
use crate::telemetry::report::{ActorKind, ActorStats, Mailbox, Report, Reported, StatsDelta};

/// Change events to route; room for them was reserved in this stripe's counter.
#[derive(Message)]
#[rtype(result = "()")]
pub struct RouteEvents(pub Vec<ChangeEvent>);

/// Registers a query subscription; answered once registered, so the caller can take the
/// snapshot knowing every later event is buffered for it.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Subscribe {
    pub key: SubKey,
    pub map: Arc<str>,
    pub query: Arc<CompiledQuery>,
    pub outbound: Arc<Outbound>,
}

/// The snapshot of a subscription was sent; `members` are this stripe's keys of it and
/// `seen[shard]` the apply sequence each shard had reached.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SnapshotLoaded {
    pub key: SubKey,
    pub members: Vec<Arc<str>>,
    pub seen: Arc<[u64]>,
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct Unsubscribe(pub SubKey);

#[derive(Message)]
#[rtype(result = "()")]
pub struct TopicSubscribe {
    pub conn: ConnId,
    pub topic: Arc<str>,
    pub outbound: Arc<Outbound>,
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct TopicUnsubscribe {
    pub conn: ConnId,
    pub topic: Arc<str>,
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct TopicPublish {
    pub topic: Arc<str>,
    pub data: Value,
    pub publisher: ConnId,
}

/// A connection closed: drop its subscriptions and topics.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ConnectionClosed(pub ConnId);

/// Subscriptions a stripe removes per message when a connection closed: a connection with
/// 100,000 live queries is torn down in two hundred short slices, between the writes and events
/// of everyone else on the same thread.
const TEARDOWN_SLICE: usize = 500;

pub struct StripeActor {
    index: usize,
    stripes: usize,
    capacity: usize,
    queued: Arc<AtomicUsize>,
    near_full: bool,
    registry: Registry,
    outbound: HashMap<ConnId, Arc<Outbound>>,
    tel: StripeCounters,
    stats: ActorStats,
    log: Logger,
    metrics: Mailbox<MetricsActor>,
    report_interval: Duration,
    cross: Arc<super::cross::CrossNode>,
    /// Partitioned placement: changes of other nodes arrive from each holder, and are
    /// routed once (see `recency`).
    recency: Option<super::recency::Recency>,
}

#[derive(Default)]
struct StripeCounters {
    dequeued: u64,
    routed: u64,
    filtered: u64,
    /// Subscriber count → number of routed events that had it.
    subscribers: HashMap<u64, u64>,
    outbound_dropped: u64,
    /// Copies of a change already routed (from another holder), dropped.
    duplicates: u64,
}

impl StripeActor {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        index: usize,
        stripes: usize,
        capacity: usize,
        log: &Logger,
        metrics: Mailbox<MetricsActor>,
        report_interval: Duration,
        timed: bool,
        cross: Arc<super::cross::CrossNode>,
        partitioned: bool,
    ) -> Self {
        StripeActor {
            index,
            stripes,
            capacity,
            queued: Arc::new(AtomicUsize::new(0)),
            near_full: false,
            registry: Registry::default(),
            outbound: HashMap::new(),
            tel: StripeCounters::default(),
            stats: ActorStats::new(ActorKind::EventQueue, timed).member(index),
            log: log.new(slog::o!("actor" => "event_queue", "stripe" => index)),
            metrics,
            report_interval,
            cross,
            recency: partitioned.then(super::recency::Recency::default),
        }
    }

    /// Stripe 0 holds every subscription (each registers with every stripe): it tells the
    /// cluster which maps this node has live subscribers for.
    fn publish_interest(&self) {
        if self.index == 0 {
            self.cross.publish_local(self.registry.maps().cloned());
        }
    }

    /// The counter shards reserve room in.
    pub fn queued_counter(&self) -> Arc<AtomicUsize> {
        self.queued.clone()
    }

    pub fn tap(&self) -> crate::telemetry::mailbox::Tap {
        self.stats.tap()
    }

    fn deliver(&mut self, routed: Routed) {
        for (conn, delivery) in routed.deliveries {
            self.send_to(conn, delivery);
        }
    }

    fn send_to(&mut self, conn: ConnId, delivery: Delivery) {
        if let Some(out) = self.outbound.get(&conn) {
            if out.deliver(delivery) == Delivered::Full {
                self.tel.outbound_dropped += 1;
            }
        }
    }

    fn report(&mut self) {
        let t = std::mem::take(&mut self.tel);
        let report = StripeReport {
            stats: self.stats.take(),
            index: self.index,
            stripes: self.stripes,
            capacity: self.capacity,
            queued: self.queued.load(Ordering::Acquire),
            counters: t,
        };
        self.metrics.do_send(Reported(Box::new(report)));
    }

    fn watch_fill(&mut self) {
        let queued = self.queued.load(Ordering::Acquire);
        let threshold = self.capacity * 8 / 10;
        if !self.near_full && queued >= threshold {
            self.near_full = true;
            StripeNearFull {
                queued,
                capacity: self.capacity,
            }
            .emit(&self.log);
        } else if self.near_full && queued < threshold {
            self.near_full = false;
            StripeDrained { queued }.emit(&self.log);
        }
    }
}

struct StripeReport {
    stats: StatsDelta,
    index: usize,
    stripes: usize,
    capacity: usize,
    queued: usize,
    counters: StripeCounters,
}

impl Report for StripeReport {
    fn apply(self: Box<Self>, m: &mut Metrics) {
        self.stats.apply(m);
        let c = self.counters;
        m.event_queue_dequeued_total.inc_by(c.dequeued);
        m.events_routed_total.inc_by(c.routed);
        m.events_filtered_by_subscription.inc_by(c.filtered);
        m.outbound_dropped_total.inc_by(c.outbound_dropped);
        m.cluster_live_events_total
            .with_label_values(&["duplicate"])
            .inc_by(c.duplicates);
        m.subscribers_per_event.observe_counts(c.subscribers);
        m.event_queue_stripe_size
            .with_label_values(&[&self.index.to_string()])
            .set(self.queued as i64);
        let total: i64 = (0..self.stripes)
            .map(|i| {
                m.event_queue_stripe_size
                    .with_label_values(&[&i.to_string()])
                    .get()
            })
            .sum();
        m.event_queue_size.set(total);
        m.event_queue_capacity
            .set((self.capacity * self.stripes) as i64);
    }
}

impl Actor for StripeActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        // Bounded by the `queued` reservation, not by the mailbox.
        ctx.set_mailbox_capacity(crate::telemetry::report::UNBOUNDED_MAILBOX);
        ctx.run_interval(self.report_interval, |act, _| act.report());
        if self.recency.is_some() {
            ctx.run_interval(super::recency::WINDOW, |act, _| {
                if let Some(r) = &mut act.recency {
                    r.expire(std::time::Instant::now());
                }
            });
        }
    }
}

// Messages sent through a `Mailbox` arrive wrapped, with the time they were sent.
crate::telemetry::mailbox::mailbox_handlers!(StripeActor, stats);

impl Handler<RouteEvents> for StripeActor {
    type Result = ();

    fn handle(&mut self, msg: RouteEvents, _: &mut Context<Self>) {
        let t0 = self.stats.begin();
        self.watch_fill();
        let now = system_millis();
        let n = msg.0.len();
        let instant = std::time::Instant::now();
        for ev in &msg.0 {
            if let Some(recency) = &mut self.recency {
                // Another holder's copy, or this node's own apply of a change a holder sent
                // first: routed once. An expiry carries the old timestamp on purpose.
                if !recency.fresh(ev, instant) && !ev.expiry {
                    self.tel.duplicates += 1;
                    continue;
                }
            }
            let routed = self.registry.route(ev, now);
            self.tel.routed += 1;
            if routed.recipients == 0 {
                self.tel.filtered += 1;
            } else {
                *self
                    .tel
                    .subscribers
                    .entry(routed.recipients as u64)
                    .or_default() += 1;
            }
            self.deliver(routed);
        }
        self.tel.dequeued += n as u64;
        self.queued.fetch_sub(n, Ordering::AcqRel);
        self.watch_fill();
        self.stats.end(t0);
    }
}

impl Handler<Subscribe> for StripeActor {
    type Result = ();

    fn handle(&mut self, msg: Subscribe, _: &mut Context<Self>) {
        let t0 = self.stats.begin();
        self.outbound.insert(msg.key.0, msg.outbound);
        if self.registry.subscribe(msg.key, msg.map, msg.query) {
            self.publish_interest();
        }
        self.stats.end(t0);
    }
}

impl Handler<SnapshotLoaded> for StripeActor {
    type Result = ();

    fn handle(&mut self, msg: SnapshotLoaded, _: &mut Context<Self>) {
        let t0 = self.stats.begin();
        let routed =
            self.registry
                .snapshot_loaded(&msg.key, msg.members, &msg.seen, system_millis());
        self.deliver(routed);
        self.stats.end(t0);
    }
}

impl Handler<Unsubscribe> for StripeActor {
    type Result = ();

    fn handle(&mut self, msg: Unsubscribe, _: &mut Context<Self>) {
        let t0 = self.stats.begin();
        if self.registry.unsubscribe(&msg.0) {
            self.publish_interest();
        }
        self.stats.end(t0);
    }
}

impl Handler<TopicSubscribe> for StripeActor {
    type Result = ();

    fn handle(&mut self, msg: TopicSubscribe, _: &mut Context<Self>) {
        let t0 = self.stats.begin();
        self.outbound.insert(msg.conn, msg.outbound);
        self.registry.topic_subscribe(msg.conn, msg.topic);
        self.stats.end(t0);
    }
}

impl Handler<TopicUnsubscribe> for StripeActor {
    type Result = ();

    fn handle(&mut self, msg: TopicUnsubscribe, _: &mut Context<Self>) {
        let t0 = self.stats.begin();
        self.registry.topic_unsubscribe(msg.conn, &msg.topic);
        self.stats.end(t0);
    }
}

impl Handler<TopicPublish> for StripeActor {
    type Result = ();

    fn handle(&mut self, msg: TopicPublish, _: &mut Context<Self>) {
        let t0 = self.stats.begin();
        let recipients = self.registry.topic_recipients(&msg.topic, msg.publisher);
        if !recipients.is_empty() {
            let frame = Bytes::from(protocol::encode(&ServerMessage::TopicMessage {
                payload: TopicMessage {
                    topic: msg.topic.to_string(),
                    data: msg.data,
                    publisher_id: None,
                    timestamp: system_millis(),
                },
            }));
            for conn in recipients {
                self.send_to(conn, Delivery::Frame(frame.clone()));
            }
        }
        self.stats.end(t0);
    }
}

/// The node was cut off from the grid (it rejoined, or a peer link came back): changes other
/// nodes sent while apart did not arrive, so every connection with a live query here is told
/// to resubscribe ([`Delivery::Resync`]).
#[derive(Message)]
#[rtype(result = "()")]
pub struct ResyncLiveQueries;

impl Handler<ResyncLiveQueries> for StripeActor {
    type Result = ();

    fn handle(&mut self, _: ResyncLiveQueries, _: &mut Context<Self>) {
        let t0 = self.stats.begin();
        let conns: Vec<ConnId> = self.registry.live_connections().collect();
        for conn in conns {
            self.send_to(conn, Delivery::Resync);
        }
        self.stats.end(t0);
    }
}

impl Handler<ConnectionClosed> for StripeActor {
    type Result = ();

    fn handle(&mut self, msg: ConnectionClosed, ctx: &mut Context<Self>) {
        let t0 = self.stats.begin();
        self.outbound.remove(&msg.0);
        self.tear_down(msg.0, ctx);
        self.stats.end(t0);
    }
}

impl StripeActor {
    /// One slice of a closed connection's subscriptions; the next is scheduled if any is left.
    fn tear_down(&mut self, conn: ConnId, ctx: &mut Context<Self>) {
        let (done, maps_changed) = self.registry.connection_closed(conn, TEARDOWN_SLICE);
        if maps_changed {
            self.publish_interest();
        }
        if !done {
            // The rest on a later turn of the thread's loop (a timer, not the mailbox, which
            // this actor would drain in the same turn): the shard on this thread applies
            // writes in between.
            ctx.run_later(Duration::ZERO, move |act, ctx| act.tear_down(conn, ctx));
        }
    }
}
