//! What actor telemetry costs per mailbox message (issue 17: "telemetry on vs off ≤ 3 %"): one
//! actor handling 1,000 messages sent through a `Mailbox`, with telemetry on (each send stamped,
//! its mailbox wait and handle time recorded) and off (the depth gauge only), and through a bare
//! `Addr`, with handle times recorded (the mailbox wait's share is what the first case adds on
//! top) and without (the floor). Sender and actor share one thread, so the figures are CPU per message,
//! not hand-off latency; "time / elements" reads as ns per message.
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use topgun_node::telemetry::mailbox::{DeadLetters, Forward, Mailbox, Timed};
use topgun_node::telemetry::report::{ActorKind, ActorStats};

const MESSAGES: u64 = 1_000;

#[derive(Message)]
#[rtype(result = "()")]
struct Ping(u64);

/// Answered after every `Ping` sent before it: the end of one batch.
#[derive(Message)]
#[rtype(result = "u64")]
struct Total;

/// Handles each message as the node's actors do: timed between `begin` and `end`.
struct Sink {
    stats: ActorStats,
    sum: u64,
}

impl Actor for Sink {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(topgun_node::telemetry::mailbox::UNBOUNDED_MAILBOX);
    }
}

impl Handler<Ping> for Sink {
    type Result = ();

    fn handle(&mut self, msg: Ping, _: &mut Context<Self>) {
        let t0 = self.stats.begin();
        self.sum = self.sum.wrapping_add(black_box(msg.0));
        self.stats.end(t0);
    }
}

impl Handler<Total> for Sink {
    type Result = u64;

    fn handle(&mut self, _: Total, _: &mut Context<Self>) -> u64 {
        self.sum
    }
}

// What `mailbox_handlers!(Sink, stats)` declares for the node's own actors.
impl<M> Handler<Timed<M>> for Sink
where
    M: Message,
    Sink: Handler<M>,
{
    type Result = Forward<<Sink as Handler<M>>::Result>;

    fn handle(&mut self, msg: Timed<M>, ctx: &mut Context<Self>) -> Self::Result {
        let msg = self.stats.received(msg);
        let answer = <Sink as Handler<M>>::handle(self, msg, ctx);
        self.stats.handled();
        Forward(answer)
    }
}

enum Via {
    Mailbox(Mailbox<Sink>),
    Addr(Addr<Sink>),
}

fn start(sys: &actix::SystemRunner, timed: bool, mailbox: bool) -> Via {
    let stats = ActorStats::new(ActorKind::Shard, timed);
    let tap = stats.tap();
    let addr = sys.block_on(async move { Sink { stats, sum: 0 }.start() });
    if mailbox {
        Via::Mailbox(Mailbox::new(addr, tap, Arc::new(DeadLetters::default())))
    } else {
        Via::Addr(addr)
    }
}

fn batches(sys: &actix::SystemRunner, via: &Via, iters: u64) -> Duration {
    sys.block_on(async {
        let t0 = Instant::now();
        for _ in 0..iters {
            let total = match via {
                Via::Mailbox(m) => {
                    for i in 0..MESSAGES {
                        m.do_send(Ping(i));
                    }
                    m.send(Total).await
                }
                Via::Addr(a) => {
                    for i in 0..MESSAGES {
                        a.do_send(Ping(i));
                    }
                    a.send(Total).await
                }
            };
            black_box(total.ok());
        }
        t0.elapsed()
    })
}

fn mailbox(c: &mut Criterion) {
    let sys = actix::System::new();
    let mut g = c.benchmark_group("mailbox_1000_messages");
    g.throughput(Throughput::Elements(MESSAGES));
    for (name, timed, via_mailbox) in [
        ("mailbox_telemetry_on", true, true),
        ("mailbox_telemetry_off", false, true),
        // The handle timing alone (what the node measured before mailbox waits), no depth.
        ("bare_addr_handle_timed", true, false),
        ("bare_addr_untimed", false, false),
    ] {
        let via = start(&sys, timed, via_mailbox);
        g.bench_function(name, |b| b.iter_custom(|iters| batches(&sys, &via, iters)));
    }
    g.finish();
}

criterion_group!(benches, mailbox);
criterion_main!(benches);
