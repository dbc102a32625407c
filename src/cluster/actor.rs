//! The ClusterActor: cluster membership over UDP with foca (SWIM).
//!
//! foca does no I/O: the actor owns it outright, feeds it the datagrams of the cluster socket
//! (a stream on this actor), schedules its timers with `ctx.run_later`, sends what it asks to
//! send, and turns its notifications into log lines and `topgun_cluster_members`. The socket
//! is bound by `node.rs` before any actor starts, so a busy cluster port stops the node whole.
//!
//! Seeds (`--seed-nodes`) are resolved off the actor (`tokio::net::lookup_host`) and announced
//! to at start and again every two probe periods until a member is known; an entry resolving
//! to this node is ignored, one that does not resolve is logged (at most every 10 s). Garbage on the port is counted
//! (`topgun_cluster_invalid_datagrams_total`) and logged at most once per 10 s.
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use bytes::Bytes;
use foca::{AccumulatingRuntime, Foca, NoCustomBroadcast, OwnedNotification, State, Timer};
use rand_foca::rngs::StdRng;
use rand_foca::SeedableRng;
use slog::{debug, info, warn, Logger};
use tokio::net::UdpSocket;

use super::membership::{foca_config, refusal_code, NodeIdentity, WireCodec};
use crate::telemetry::logging::err_kv;
use crate::telemetry::metrics::{Metrics, MetricsActor};
use crate::telemetry::report::{
    ActorKind, ActorStats, Mailbox, Report, Reported, StatsDelta, UNBOUNDED_MAILBOX,
};
use crate::telemetry::throttle::Throttle;

/// Largest datagram read; foca's packets are at most 1400 bytes, more is garbage.
const MAX_DATAGRAM: usize = 2048;
/// One warning per this interval for repeating trouble (garbage, unresolvable seeds).
const WARN_EVERY: Duration = Duration::from_secs(10);

/// Graceful shutdown: tell the cluster this node leaves, and wait until that is sent.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Leave;

/// A datagram read from the cluster socket (a stream item, never in the mailbox).
pub struct Datagram(std::io::Result<(Vec<u8>, SocketAddr)>);

type Membership = Foca<NodeIdentity, WireCodec, StdRng, NoCustomBroadcast>;

pub struct ClusterActor {
    foca: Membership,
    runtime: AccumulatingRuntime<NodeIdentity>,
    socket: Arc<UdpSocket>,
    identity: NodeIdentity,
    seeds: Vec<String>,
    probe: Duration,
    /// Last known state of each member, to log suspicions and tell a leave from a failure.
    states: HashMap<NodeIdentity, State>,
    leaving: bool,
    /// A seed resolution is in flight.
    resolving: bool,
    invalid: u64,
    invalid_log: Throttle,
    seed_log: Throttle,
    retry_log: Throttle,
    stats: ActorStats,
    log: Logger,
    metrics: Mailbox<MetricsActor>,
    report_interval: Duration,
}

impl ClusterActor {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        identity: NodeIdentity,
        socket: UdpSocket,
        seeds: Vec<String>,
        probe: Duration,
        log: &Logger,
        metrics: Mailbox<MetricsActor>,
        report_interval: Duration,
        timed: bool,
    ) -> Self {
        let rng = StdRng::seed_from_u64(rand::random());
        let foca = Foca::new(identity.clone(), foca_config(probe), rng, WireCodec);
        ClusterActor {
            foca,
            runtime: AccumulatingRuntime::new(),
            socket: Arc::new(socket),
            identity,
            seeds,
            probe,
            states: HashMap::new(),
            leaving: false,
            resolving: false,
            invalid: 0,
            invalid_log: Throttle::new(WARN_EVERY),
            seed_log: Throttle::new(WARN_EVERY),
            retry_log: Throttle::new(WARN_EVERY),
            stats: ActorStats::new(ActorKind::Cluster, timed),
            log: log.new(slog::o!("actor" => "cluster")),
            metrics,
            report_interval,
        }
    }

    pub fn depth_counter(&self) -> Arc<std::sync::atomic::AtomicI64> {
        self.stats.depth_counter()
    }

    /// Active members including this node.
    fn members(&self) -> usize {
        self.foca.num_members() + 1
    }

    /// Resolves the seeds off the actor (host names may take a while) and announces to them.
    /// One resolution at a time; an entry that is this node is skipped.
    fn announce_to_seeds(&mut self, ctx: &mut Context<Self>) {
        if self.resolving {
            return;
        }
        self.resolving = true;
        let seeds = self.seeds.clone();
        let resolve = async move {
            let mut out = Vec::with_capacity(seeds.len());
            for seed in seeds {
                let addrs = tokio::net::lookup_host(seed.as_str())
                    .await
                    .map(|a| a.collect::<Vec<SocketAddr>>());
                out.push((seed, addrs));
            }
            out
        };
        ctx.spawn(resolve.into_actor(self).map(|resolved, act, ctx| {
            act.resolving = false;
            act.announce_resolved(resolved, ctx);
        }));
    }

    fn announce_resolved(
        &mut self,
        resolved: Vec<(String, std::io::Result<Vec<SocketAddr>>)>,
        ctx: &mut Context<Self>,
    ) {
        if self.leaving {
            return;
        }
        for (seed, addrs) in resolved {
            match addrs {
                // One address per seed: the first that is not this node.
                Ok(addrs) => {
                    if let Some(addr) = addrs.into_iter().find(|a| !self.is_self(*a)) {
                        debug!(self.log, "announcing to seed"; "seed" => &seed, "addr" => %addr);
                        if let Err(e) = self
                            .foca
                            .announce(NodeIdentity::seed(addr), &mut self.runtime)
                        {
                            warn!(self.log, "announce failed"; "seed" => &seed,
                                "addr" => %addr, "err" => err_kv("foca", e));
                        }
                    }
                }
                Err(e) => {
                    if let Some(suppressed) = self.seed_log.check(Instant::now()) {
                        warn!(self.log, "seed does not resolve"; "seed" => &seed,
                            "suppressed" => suppressed, "err" => err_kv("resolve", e));
                    }
                }
            }
        }
        self.drain(ctx);
    }

    fn is_self(&self, addr: SocketAddr) -> bool {
        let me = self.identity.addr;
        let local = self.socket.local_addr().ok();
        addr == me
            || local == Some(addr)
            || (addr.port() == me.port()
                && (addr.ip().is_loopback() || addr.ip().is_unspecified())
                && local.is_some_and(|l| l.ip().is_unspecified() || l.ip().is_loopback()))
    }

    /// Carries out what foca asked for: datagrams, timers, notifications.
    fn drain(&mut self, ctx: &mut Context<Self>) {
        while let Some((to, data)) = self.runtime.to_send() {
            self.send(to.addr, data);
        }
        while let Some((after, timer)) = self.runtime.to_schedule() {
            ctx.run_later(after, move |act, ctx| act.timer(timer, ctx));
        }
        while let Some(n) = self.runtime.to_notify() {
            self.notified(n);
        }
        self.watch_states();
    }

    fn send(&self, to: SocketAddr, data: Bytes) {
        match self.socket.try_send_to(&data, to) {
            Ok(_) => {}
            // A fresh socket may not be writable until the reactor polled it once.
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                let socket = self.socket.clone();
                actix_rt::spawn(async move {
                    let _ = socket.send_to(&data, to).await;
                });
            }
            Err(e) => {
                debug!(self.log, "cluster send failed"; "addr" => %to, "err" => err_kv("send", e));
            }
        }
    }

    fn timer(&mut self, timer: Timer<NodeIdentity>, ctx: &mut Context<Self>) {
        if self.leaving {
            return;
        }
        let t0 = self.stats.begin_item();
        if let Err(e) = self.foca.handle_timer(timer, &mut self.runtime) {
            debug!(self.log, "membership timer failed"; "err" => err_kv("foca", e));
        }
        self.drain(ctx);
        self.stats.end(t0);
    }

    fn notified(&mut self, n: OwnedNotification<NodeIdentity>) {
        match n {
            OwnedNotification::MemberUp(id) => {
                if id.node_id == self.identity.node_id {
                    warn!(self.log, "node id clash"; "peer" => &id.node_id, "addr" => %id.addr,
                        "ownAddr" => %self.identity.addr);
                }
                info!(self.log, "member joined"; "peer" => &id.node_id, "addr" => %id.addr,
                    "generation" => id.generation, "members" => self.members());
            }
            OwnedNotification::MemberDown(id) => {
                if self.states.get(&id) == Some(&State::Suspect) {
                    warn!(self.log, "member down"; "peer" => &id.node_id, "addr" => %id.addr,
                        "generation" => id.generation, "members" => self.members());
                } else {
                    info!(self.log, "member left"; "peer" => &id.node_id, "addr" => %id.addr,
                        "generation" => id.generation, "members" => self.members());
                }
            }
            OwnedNotification::Rename(old, new) => {
                info!(self.log, "member rejoined"; "peer" => &new.node_id, "addr" => %new.addr,
                    "generation" => new.generation, "previousPeer" => &old.node_id,
                    "previousGeneration" => old.generation, "members" => self.members());
            }
            OwnedNotification::Rejoin(id) => {
                warn!(self.log, "cluster rejoined as a new generation";
                    "generation" => id.generation, "previousGeneration" => self.identity.generation);
                self.identity = id;
            }
            OwnedNotification::Active => {
                info!(self.log, "cluster active"; "members" => self.members());
            }
            OwnedNotification::Idle => {
                info!(self.log, "cluster idle"; "members" => 1);
            }
            OwnedNotification::Defunct => {
                warn!(
                    self.log,
                    "cluster membership defunct: declared down by the others"
                );
            }
            #[allow(unreachable_patterns)]
            _ => {}
        }
    }

    /// Logs members newly suspected and keeps the state table for the next notification.
    fn watch_states(&mut self) {
        let mut now: HashMap<NodeIdentity, State> = HashMap::with_capacity(self.states.len());
        for m in self.foca.iter_membership_state() {
            let before = self.states.get(m.id());
            if m.state() == State::Suspect && before != Some(&State::Suspect) {
                warn!(self.log, "member suspected"; "peer" => &m.id().node_id,
                    "addr" => %m.id().addr, "generation" => m.id().generation);
            }
            now.insert(m.id().clone(), m.state());
        }
        self.states = now;
    }

    fn invalid_datagram(&mut self, from: Option<SocketAddr>, reason: &'static str, len: usize) {
        self.invalid += 1;
        if let Some(suppressed) = self.invalid_log.check(Instant::now()) {
            warn!(self.log, "invalid cluster datagram";
                "from" => from.map(|a| a.to_string()), "reason" => reason, "bytes" => len,
                "suppressed" => suppressed);
        }
    }

    fn report(&mut self) {
        let report = ClusterReport {
            stats: self.stats.take(),
            members: self.members() as i64,
            invalid: std::mem::take(&mut self.invalid),
        };
        self.metrics.do_send(Reported(Box::new(report)));
    }
}

/// Membership numbers: the members gauge (this actor is its only source) and counter deltas.
struct ClusterReport {
    stats: StatsDelta,
    members: i64,
    invalid: u64,
}

impl Report for ClusterReport {
    fn apply(self: Box<Self>, m: &mut Metrics) {
        self.stats.apply(m);
        m.cluster_members.set(self.members);
        m.cluster_invalid_datagrams_total.inc_by(self.invalid);
    }
}

impl Actor for ClusterActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(UNBOUNDED_MAILBOX);
        let socket = self.socket.clone();
        let datagrams = futures_util::stream::unfold(socket, |socket| async move {
            let mut buf = vec![0u8; MAX_DATAGRAM];
            let read = socket.recv_from(&mut buf).await.map(|(n, from)| {
                buf.truncate(n);
                (buf, from)
            });
            Some((Datagram(read), socket))
        });
        ctx.add_stream(datagrams);
        info!(self.log, "cluster membership started";
            "addr" => %self.identity.addr, "generation" => self.identity.generation,
            "seeds" => self.seeds.join(","), "probeMs" => self.probe.as_millis() as u64);
        if !self.seeds.is_empty() {
            self.announce_to_seeds(ctx);
            let every = (self.probe * 2).max(Duration::from_millis(200));
            ctx.run_interval(every, |act, ctx| {
                if act.leaving || act.foca.num_members() > 0 {
                    return;
                }
                if let Some(suppressed) = act.retry_log.check(Instant::now()) {
                    info!(act.log, "no cluster member known yet; announcing to seeds again";
                        "seeds" => act.seeds.join(","), "suppressed" => suppressed);
                }
                act.announce_to_seeds(ctx);
            });
        }
        ctx.run_interval(
            self.report_interval.min(Duration::from_millis(250)),
            |act, _| act.report(),
        );
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        let report = ClusterReport {
            stats: self.stats.take_final(),
            members: 1,
            invalid: std::mem::take(&mut self.invalid),
        };
        self.metrics.do_send(Reported(Box::new(report)));
    }
}

impl StreamHandler<Datagram> for ClusterActor {
    fn handle(&mut self, item: Datagram, ctx: &mut Context<Self>) {
        let t0 = self.stats.begin_item();
        match item.0 {
            Ok((data, from)) => {
                if self.leaving {
                    // Gone from the cluster: answering would bring us back.
                } else if data.len() >= MAX_DATAGRAM {
                    self.invalid_datagram(Some(from), "too_big", data.len());
                } else if let Err(e) = self.foca.handle_data(&data, &mut self.runtime) {
                    self.invalid_datagram(Some(from), refusal_code(&e), data.len());
                }
                self.drain(ctx);
            }
            Err(e) => {
                if let Some(suppressed) = self.invalid_log.check(Instant::now()) {
                    warn!(self.log, "cluster socket read failed";
                        "suppressed" => suppressed, "err" => err_kv("recv", e));
                }
            }
        }
        self.stats.end(t0);
    }

    /// The datagram stream never ends on its own; keep the actor regardless.
    fn finished(&mut self, _: &mut Context<Self>) {}
}

impl Handler<Leave> for ClusterActor {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: Leave, _: &mut Context<Self>) -> Self::Result {
        let t0 = self.stats.begin();
        let members = self.members();
        if let Err(e) = self.foca.leave_cluster(&mut self.runtime) {
            warn!(self.log, "leaving the cluster failed"; "err" => err_kv("foca", e));
        }
        self.leaving = true;
        let mut out = Vec::new();
        while let Some((to, data)) = self.runtime.to_send() {
            out.push((to.addr, data));
        }
        // Timers and notifications of a node that left no longer matter.
        while self.runtime.to_schedule().is_some() {}
        while self.runtime.to_notify().is_some() {}
        info!(self.log, "cluster left"; "members" => members, "told" => out.len());
        self.stats.end(t0);
        let socket = self.socket.clone();
        Box::pin(async move {
            for (to, data) in out {
                let _ = socket.send_to(&data, to).await;
            }
        })
    }
}
