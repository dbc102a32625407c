//! The ClusterActor: cluster membership over UDP with foca (SWIM).
//!
//! foca does no I/O: the actor owns it outright, feeds it the datagrams of the cluster socket
//! (a stream on this actor), schedules its timers with `ctx.run_later`, sends what it asks to
//! send, and turns its notifications into log lines and `topgun_cluster_members`. The socket
//! is bound by `node::ports` before any actor starts, so a busy cluster port stops the node whole.
//!
//! Seeds (`--seed-nodes`) are resolved off the actor (`tokio::net::lookup_host`) and announced
//! to at start and, with former members, every two probe periods while no member is known;
//! with members, one seed or former member outside them every ten; an entry resolving
//! to this node is ignored, one that does not resolve is logged (at most every 10 s). Garbage on the port is counted
//! (`topgun_cluster_invalid_datagrams_total`) and logged at most once per 10 s.
use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use bytes::Bytes;
use foca::{
    AccumulatingRuntime, Codec, Foca, Message as FocaMessage, NoCustomBroadcast, OwnedNotification,
    State, Timer,
};
use rand_foca::rngs::StdRng;
use rand_foca::SeedableRng;
use slog::{debug, Logger};
use tokio::net::UdpSocket;

use super::catchup::CatchUps;
use super::error::ClusterError;
use super::events as ev;
use super::links::{link_changes, missing_since, LinkChanges};
use super::membership::{
    back_from_split, classify, foca_config, heeds_down_verdict, refusal_code, without_down_claims,
    Change, NodeIdentity, WireCodec,
};
use super::migration;
use super::peer::{Direction, PeerConn, PeerStream, TlsFailure};
use super::peer_error::PeerError;
use super::plane::DataPlane;
use super::secret::{self, SealError};
use super::state::MissingLink;
use super::table::{next_version, PartitionTable, TableMember};
use crate::queue::actor::ResyncLiveQueries;
use crate::shard::fnv::PARTITION_COUNT;
use crate::telemetry::event::{ErrField, Event, Shown};
use crate::telemetry::logging::err_kv;
use crate::telemetry::metrics::{Metrics, MetricsActor};
use crate::telemetry::report::{
    ActorKind, ActorStats, Mailbox, Report, Reported, StatsDelta, UNBOUNDED_MAILBOX,
};
use crate::telemetry::throttle::Throttle;

/// Largest datagram read; foca's packets are at most 1400 bytes, more is garbage.
pub const MAX_DATAGRAM: usize = 2048;
/// One warning per this interval for repeating trouble (garbage, unresolvable seeds).
const WARN_EVERY: Duration = Duration::from_secs(10);

/// Graceful shutdown: tell the cluster this node leaves, and wait until that is sent.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Leave;

/// An outbound peer connection finished its handshake: writes may use it. `generation` is
/// the one the peer announced (the dialled one or newer).
#[derive(Message)]
#[rtype(result = "()")]
pub struct LinkUp {
    pub node_id: String,
    pub generation: u64,
    /// Writers send to it through its mailbox (timed, counted); the manager keeps its `addr`.
    pub link: Mailbox<PeerConn>,
}

/// An outbound peer connection closed.
#[derive(Message)]
#[rtype(result = "()")]
pub struct LinkDown {
    pub node_id: String,
    pub link: Addr<PeerConn>,
}

/// A peer's HELLO on an inbound connection was accepted: its link to this node is (again) up,
/// so what it applied while that link was missing is pulled (see `catchup.rs`).
#[derive(Message)]
#[rtype(result = "()")]
pub struct PeerConnected {
    pub node_id: String,
    pub generation: u64,
}

/// A catch-up pull from `peer` ended.
#[derive(Message)]
#[rtype(result = "()")]
struct CatchUpEnded {
    peer: String,
    started: Instant,
    result: Result<u64, ClusterError>,
}

/// A pull of partitions from one peer ended (or stopped part way: `pulled.partitions_done` of
/// `partitions` are merged).
#[derive(Message)]
#[rtype(result = "()")]
struct PullEnded {
    round: u64,
    source: String,
    partitions: Vec<u16>,
    pulled: migration::Pulled,
    attempt: u32,
}

/// How long after a failed dial the link is tried again.
const REDIAL_AFTER: Duration = Duration::from_millis(300);
/// Longest wait for a peer's TCP connection to open (its TLS handshake has the cluster
/// timeout of its own): a member that does not answer is dialled again soon.
const DIAL_TIMEOUT: Duration = Duration::from_secs(2);
/// While a link stays missing, its warning is repeated this often.
const MISSING_LINK_LOG_EVERY: Duration = Duration::from_secs(60);
/// Addresses of former members remembered to re-announce to when alone (bounded), and for how
/// long after they were last seen as members.
const MAX_KNOWN_ADDRS: usize = 1024;
const KNOWN_ADDR_TTL: Duration = Duration::from_secs(3600);
/// A node that has members announces to one address outside them every this many ticks of the
/// announce timer (two probe periods each).
const OUTSIDE_PROBE_TICKS: u64 = 5;

/// A datagram read from the cluster socket (a stream item, never in the mailbox).
pub struct Datagram(std::io::Result<(Vec<u8>, SocketAddr)>);

/// The outbound link to one member. At most one attempt is under way at a time: a connect, then
/// its handshake; whatever ends it (failure, refusal, loss) schedules the next one.
struct Dial {
    /// The oldest generation accepted: the table's when dialled, the peer's once it answered.
    generation: u64,
    link: Option<Addr<PeerConn>>,
    /// The attempt under way (unique across dials, so a late answer of a replaced dial is
    /// recognised), and its connection while the handshake runs.
    attempt: Option<u64>,
    handshake: Option<Addr<PeerConn>>,
    /// Since when there is no link (dialled, or lost).
    down_since: Option<Instant>,
    /// The missing link was reported (log line, `/ready`); its recovery is logged too.
    reported: bool,
    missing_log: Throttle,
}

impl Dial {
    fn new(generation: u64) -> Self {
        Dial {
            generation,
            link: None,
            attempt: None,
            handshake: None,
            down_since: Some(Instant::now()),
            reported: false,
            missing_log: Throttle::new(MISSING_LINK_LOG_EVERY),
        }
    }

    /// Closes whatever it has open.
    fn close(self) {
        for conn in self.link.into_iter().chain(self.handshake) {
            conn.do_send(StopLink);
        }
    }
}

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
    /// Alone past the join timeout with a cluster secret: the seeds are asked, once a minute,
    /// whether they share it (a node started with another secret hears nothing otherwise).
    secret_probe_after: Instant,
    secret_probe: Throttle,
    stats: ActorStats,
    log: Logger,
    metrics: Mailbox<MetricsActor>,
    report_interval: Duration,
    node: Arc<DataPlane>,
    /// Outbound links by node id.
    dialled: HashMap<String, Dial>,
    next_attempt: u64,
    /// Bumped when foca is rebuilt after a rejoin, so timers of the old one are ignored.
    epoch: u64,
    /// Addresses of the members seen in the last [`KNOWN_ADDR_TTL`], with when: a node left
    /// alone announces to them (a split heals even when the seeds are gone).
    known_addrs: HashMap<SocketAddr, Instant>,
    /// What the seeds resolved to last time.
    seed_addrs: Vec<SocketAddr>,
    /// Ticks of the announce timer, for the slower outside probe.
    announce_ticks: u64,
    catchups: CatchUps,
    /// Members that left on purpose (SIGTERM), while foca still lists them as down.
    left: HashSet<NodeIdentity>,
    /// Members this node saw declared down (not leaving): since when, and their generation,
    /// so their return tells a healed split or pause from a restart.
    down: HashMap<String, (Instant, u64)>,
    /// Splits healed since the last report.
    heals: u64,
    /// Why this node's live queries may have missed changes of other nodes (it was apart from
    /// them): once every link is up and no migration runs, their clients are told to
    /// subscribe again.
    resync: Option<(&'static str, Instant)>,
    /// The generation of each peer's last inbound connection: a new connection at the same
    /// generation is a link that broke while the peer lived, and its changes meanwhile were lost.
    inbound_generation: HashMap<String, u64>,
    /// Set by a rejoin until the fresh membership view has a member (or a grace passed).
    rejoined_at: Option<Instant>,
    /// When the last rejoin happened: for a while after it, down claims are not believed.
    fresh_since: Option<Instant>,
    /// Down verdicts of members held down, ignored since when (per sender): after a grace the
    /// verdict is heeded, so two nodes that each think they are the majority cannot hold each
    /// other down for good.
    verdicts_ignored: HashMap<NodeIdentity, Instant>,
    rebalances: u64,
    /// Every partition was pulled from peers once since start: later rounds only pull the
    /// partitions this node gains a role for.
    synced: bool,
    rounds: migration::Rounds,
    /// A handover pass ([`super::release`]) is running.
    releasing: bool,
    /// An anti-entropy round runs (the next waits for it).
    comparing: bool,
    /// Records stored here by this node's role for their partition, as of the last pass.
    records_by_role: [u64; 3],
    /// Partitions handed over and dropped since the last report.
    released: u64,
    release_log: Throttle,
}

/// One anti-entropy round ended.
#[derive(Message)]
#[rtype(result = "()")]
struct AntiEntropyEnded(super::antientropy::Round);

/// One handover pass ended.
#[derive(Message)]
#[rtype(result = "()")]
struct ReleaseEnded(super::release::Released);

/// How often records are counted by role and, with partitioned placement, partitions this
/// node no longer keeps are handed over.
const RELEASE_EVERY: Duration = Duration::from_secs(5);
/// How long after a reason to resync live queries the node waits at least (for the
/// catch-ups its reconnections schedule) before it tells their clients.
const RESYNC_SETTLE: Duration = Duration::from_secs(1);
/// Members remembered as declared down at most (a member is forgotten when it returns).
const MAX_REMEMBERED_DOWN: usize = 1024;
/// How often a node alone asks its seeds whether they share its cluster secret.
const SECRET_PROBE_EVERY: Duration = Duration::from_secs(60);

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
        node: Arc<DataPlane>,
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
            secret_probe_after: Instant::now() + node.config.cluster_join_timeout,
            secret_probe: Throttle::new(SECRET_PROBE_EVERY),
            // Its peer links are of the same kind, named by their peer.
            stats: ActorStats::new(ActorKind::Cluster, timed).named("membership"),
            log: log.new(slog::o!("actor" => "cluster")),
            metrics,
            report_interval,
            node,
            dialled: HashMap::new(),
            next_attempt: 1,
            epoch: 0,
            known_addrs: HashMap::new(),
            seed_addrs: Vec::new(),
            announce_ticks: 0,
            catchups: CatchUps::default(),
            left: HashSet::new(),
            down: HashMap::new(),
            heals: 0,
            resync: None,
            inbound_generation: HashMap::new(),
            rejoined_at: None,
            fresh_since: None,
            verdicts_ignored: HashMap::new(),
            rebalances: 0,
            synced: false,
            rounds: migration::Rounds::default(),
            releasing: false,
            comparing: false,
            records_by_role: [0; 3],
            released: 0,
            release_log: Throttle::new(WARN_EVERY),
        }
    }

    pub fn tap(&self) -> crate::telemetry::mailbox::Tap {
        self.stats.tap()
    }

    /// Active members including this node.
    fn members(&self) -> usize {
        self.foca.num_members() + 1
    }

    /// Resolves the seeds off the actor (host names may take a while), then announces: to
    /// every seed address and former member when this node is alone, else to one of them that
    /// is not a member now ([`ClusterActor::probe_outside`]). One resolution at a time.
    fn announce_to_seeds(&mut self, ctx: &mut Context<Self>) {
        if self.resolving {
            return;
        }
        if self.seeds.is_empty() {
            self.announce_resolved(Vec::new(), ctx);
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
        let mut seed_addrs = Vec::new();
        for (seed, addrs) in resolved {
            match addrs {
                // Every address of a seed: a name may stand for many.
                Ok(addrs) => seed_addrs.extend(addrs.into_iter().filter(|a| !self.is_self(*a))),
                Err(e) => {
                    let suppressed = self.seed_log.check(Instant::now());
                    ev::SeedUnresolved {
                        seed: &seed,
                        suppressed: suppressed.unwrap_or(0),
                        err: ErrField::new("resolve", e),
                    }
                    .emit_if(&self.log, suppressed.is_some());
                }
            }
        }
        seed_addrs.sort();
        seed_addrs.dedup();
        self.seed_addrs = seed_addrs;
        if self.foca.num_members() == 0 {
            // Alone: everyone it may find, former members too, so a split heals without seeds.
            let mut all: BTreeSet<SocketAddr> = self.seed_addrs.iter().copied().collect();
            all.extend(self.known_addrs.keys().copied());
            for addr in all {
                debug!(self.log, "announcing while alone"; "addr" => %addr);
                self.announce_to(addr);
            }
            self.probe_seeds_secret(ctx);
        } else {
            self.probe_outside();
        }
        self.drain(ctx);
    }

    /// Alone past the join timeout with a cluster secret: a handshake with each seed address
    /// tells whether it shares the secret, and the probe logs an error when it does not.
    fn probe_seeds_secret(&mut self, ctx: &mut Context<Self>) {
        let now = Instant::now();
        if self.node.cluster.keys.is_none()
            || self.seed_addrs.is_empty()
            || now < self.secret_probe_after
            || self.secret_probe.check(now).is_none()
        {
            return;
        }
        for addr in self.seed_addrs.clone() {
            let node = self.node.clone();
            let connect = async move { dial_link(&node, addr).await };
            ctx.spawn(connect.into_actor(self).map(|res, act, _| {
                if let Ok(stream) = res {
                    PeerConn::start(act.node.clone(), stream, Direction::SecretProbe);
                }
            }));
        }
    }

    /// Announces to one seed address or former member that is not a member now. After a split
    /// longer than foca keeps down members (`remove_down_after`) the two sides have forgotten
    /// each other, and nothing else would ever cross: this finds the other side again.
    fn probe_outside(&mut self) {
        let members: BTreeSet<SocketAddr> = self.foca.iter_members().map(|m| m.id().addr).collect();
        let outside: Vec<SocketAddr> = self
            .seed_addrs
            .iter()
            .chain(self.known_addrs.keys())
            .copied()
            .filter(|a| !members.contains(a) && !self.is_self(*a))
            .collect();
        if outside.is_empty() {
            return;
        }
        let addr = outside[rand::random_range(0..outside.len())];
        debug!(self.log, "announcing to an address outside the membership"; "addr" => %addr);
        self.announce_to(addr);
    }

    /// Announces to `addr` unless it is this node.
    fn announce_to(&mut self, addr: SocketAddr) {
        if self.is_self(addr) {
            return;
        }
        if let Err(e) = self
            .foca
            .announce(NodeIdentity::seed(addr), &mut self.runtime)
        {
            ev::AnnounceFailed {
                addr: Shown(&addr),
                err: ErrField::new("foca", e),
            }
            .emit(&self.log);
        }
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

    /// Carries out what foca asked for: datagrams, timers, notifications (which may ask for
    /// more: a rejoin announces).
    fn drain(&mut self, ctx: &mut Context<Self>) {
        loop {
            let mut busy = false;
            let mut notes = Vec::new();
            while let Some(n) = self.runtime.to_notify() {
                notes.push(n);
            }
            if notes
                .iter()
                .any(|n| matches!(n, OwnedNotification::Rejoin(_)))
            {
                // What foca queued with the rejoin carries its old view (the other side of a
                // split as down) under the new identity: the rebuilt membership announces
                // instead.
                while self.runtime.to_send().is_some() {}
                while self.runtime.to_schedule().is_some() {}
            }
            while let Some((to, data)) = self.runtime.to_send() {
                busy = true;
                self.send(to.addr, data);
            }
            while let Some((after, timer)) = self.runtime.to_schedule() {
                busy = true;
                let epoch = self.epoch;
                ctx.run_later(after, move |act, ctx| {
                    if act.epoch == epoch {
                        act.timer(timer, ctx);
                    }
                });
            }
            for n in notes {
                busy = true;
                self.notified(n, ctx);
            }
            if !busy {
                break;
            }
        }
        self.watch_states();
        self.refresh_table(ctx);
    }

    /// Recomputes the partition table when the member list changed (by id or generation):
    /// publishes it, dials new members, drops links to gone ones, and starts the migration.
    fn refresh_table(&mut self, ctx: &mut Context<Self>) {
        if self.leaving {
            return;
        }
        if let Some(at) = self.rejoined_at {
            if self.foca.num_members() == 0 && at.elapsed() < self.probe * 5 {
                return;
            }
            self.rejoined_at = None;
        }
        let me = TableMember {
            node_id: self.identity.node_id.clone(),
            peer_addr: self.identity.addr,
            generation: self.identity.generation,
            ws_url: self.identity.ws_url.clone(),
        };
        let mut members = vec![me];
        members.extend(self.foca.iter_members().map(|m| {
            let id = m.id();
            TableMember {
                node_id: id.node_id.clone(),
                peer_addr: id.addr,
                generation: id.generation,
                ws_url: id.ws_url.clone(),
            }
        }));
        let cluster = self.node.cluster.clone();
        let old = cluster.table();
        if old.has_members(members.clone()) {
            return;
        }
        let now_secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let candidate = PartitionTable::compute(
            members,
            cluster.backups,
            next_version(old.version, now_secs),
        );
        let moved = candidate.moved_owners(&old);
        let (owned, backup) = candidate.counts(&cluster.node_id);
        self.rebalances += 1;
        ev::PartitionsRebalanced {
            version: candidate.version,
            previous_version: old.version,
            members: candidate.members().len(),
            owned,
            backup,
            moved_owners: moved,
            member_ids: candidate
                .members()
                .iter()
                .map(|m| m.node_id.as_str())
                .collect::<Vec<_>>()
                .join(","),
        }
        .emit(&self.log);
        cluster.set_table(candidate.clone());
        self.sync_links(&candidate, ctx);
        self.start_migration(&old, &candidate, ctx);
    }

    /// One outbound link per other member: a link to an older generation than the table's is
    /// closed and the member dialled again; a link to a newer one (the member rejoined and the
    /// table here has not caught up) is kept.
    fn sync_links(&mut self, table: &PartitionTable, ctx: &mut Context<Self>) {
        let me = self.identity.node_id.as_str();
        let dialled = self
            .dialled
            .iter()
            .map(|(id, d)| (id.as_str(), d.generation));
        let LinkChanges { close, dial } = link_changes(table, me, dialled);
        for id in close {
            if let Some(dial) = self.dialled.remove(&id) {
                if let Some(link) = &dial.link {
                    self.node.cluster.with_links(|l| {
                        if l.get(&id).map(|m| &m.addr) == Some(link) {
                            l.remove(&id);
                        }
                    });
                }
                // Stopping it fails its waiting requests now rather than at the timeout.
                dial.close();
            }
        }
        for m in dial {
            self.dialled
                .insert(m.node_id.clone(), Dial::new(m.generation));
            self.dial(m.clone(), ctx);
        }
        let now = Instant::now();
        for m in table.members() {
            if m.node_id == self.identity.node_id {
                continue;
            }
            if let Some(at) = self.catchups.member_now(&m.node_id, now) {
                self.schedule_catch_up(m.node_id.clone(), at, ctx);
            }
        }
    }

    /// Starts an attempt to link to `member`, unless one is under way or the link is up.
    fn dial(&mut self, member: TableMember, ctx: &mut Context<Self>) {
        let attempt = self.next_attempt;
        match self.dialled.get_mut(&member.node_id) {
            Some(dial) if dial.link.is_none() && dial.attempt.is_none() => {
                dial.attempt = Some(attempt);
            }
            _ => return,
        }
        self.next_attempt += 1;
        let node = self.node.clone();
        let addr = member.peer_addr;
        let connect = async move { dial_link(&node, addr).await };
        ctx.spawn(connect.into_actor(self).map(move |res, act, ctx| {
            let leaving = act.leaving;
            let Some(dial) = act
                .dialled
                .get_mut(&member.node_id)
                .filter(|d| d.attempt == Some(attempt))
            else {
                // Replaced (the member restarted or left meanwhile): the stream just drops.
                return;
            };
            let (reason, failure) = match res {
                Ok(_) if leaving => return,
                Ok(stream) => {
                    let conn = PeerConn::start(
                        act.node.clone(),
                        stream,
                        Direction::Outbound {
                            node_id: member.node_id.clone(),
                            generation: dial.generation,
                            manager: ctx.address(),
                        },
                    );
                    dial.handshake = Some(conn);
                    return;
                }
                Err(failure) => failure,
            };
            dial.attempt = None;
            act.node.cluster.counters.peer_error(reason);
            let refused = reason == PeerError::Tls;
            match refused.then(|| {
                act.node
                    .cluster
                    .may_log_refused(member.peer_addr.ip(), "tls_dial")
            }) {
                // A peer whose certificate this node does not trust (or the reverse) is a
                // misconfiguration an operator must see; a peer not listening yet is not.
                Some(suppressed) => ev::DialTlsFailed {
                    peer: &member.node_id,
                    addr: Shown(&member.peer_addr),
                    suppressed: suppressed.unwrap_or(0),
                    err: ErrField::new(reason.code(), failure),
                }
                .emit_if(&act.log, suppressed.is_some()),
                None => {
                    debug!(act.log, "peer dial failed"; "peer" => &member.node_id,
                        "addr" => %member.peer_addr, "err" => err_kv(reason.code(), failure));
                }
            }
            let id = member.node_id.clone();
            ctx.run_later(REDIAL_AFTER, move |act, ctx| act.redial(&id, ctx));
        }));
    }

    /// Dials `node_id` again if it is still a member, has no link and no attempt under way.
    fn redial(&mut self, node_id: &str, ctx: &mut Context<Self>) {
        let idle = self
            .dialled
            .get(node_id)
            .is_some_and(|d| d.link.is_none() && d.attempt.is_none());
        if self.leaving || !idle {
            return;
        }
        if let Some(member) = self.node.cluster.table().member(node_id).cloned() {
            self.dial(member, ctx);
        }
    }

    /// Pulls, from the peers that had them, the partitions this node newly holds a role for
    /// (after joining: every partition). Runs in the background; the node serves meanwhile.
    fn start_migration(
        &mut self,
        old: &PartitionTable,
        new: &PartitionTable,
        ctx: &mut Context<Self>,
    ) {
        let initial = !self.synced && new.members().len() > 1;
        let cluster = &self.node.cluster;
        let plan = migration::plan(old, new, &self.identity.node_id, initial, |p| {
            cluster.keeps(new, p)
        });
        if plan.is_empty() {
            if initial {
                self.synced = true;
            }
            self.ready_if_synced();
            return;
        }
        let partitions: usize = plan.values().map(Vec::len).sum();
        let round = self
            .rounds
            .start(plan.len(), partitions, initial, Instant::now());
        self.node
            .cluster
            .counters
            .migration_pending
            .fetch_add(partitions as i64, std::sync::atomic::Ordering::Relaxed);
        ev::MigrationStarted {
            round,
            partitions,
            sources: plan.keys().cloned().collect::<Vec<_>>().join(","),
            initial,
        }
        .emit(&self.log);
        for (source, parts) in plan {
            self.node.cluster.set_arriving(&parts, true);
            self.pull(round, source, parts, 1, ctx);
        }
    }

    fn pull(
        &mut self,
        round: u64,
        source: String,
        partitions: Vec<u16>,
        attempt: u32,
        ctx: &mut Context<Self>,
    ) {
        let node = self.node.clone();
        let me = ctx.address();
        actix_rt::spawn(async move {
            // Progress per partition: the pending gauge falls as the pull goes.
            let pending = &node.cluster.counters.migration_pending;
            let merge = if node.cluster.partitioned() {
                migration::Merge::Quiet
            } else {
                migration::Merge::Announced
            };
            let pulled = migration::pull(&node, &source, &partitions, merge, |p| {
                pending.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                node.cluster.set_arriving(&[p], false);
            })
            .await;
            me.do_send(PullEnded {
                round,
                source,
                partitions,
                pulled,
                attempt,
            });
        });
    }

    fn schedule_catch_up(&mut self, peer: String, at: Instant, ctx: &mut Context<Self>) {
        let after = at.saturating_duration_since(Instant::now());
        ctx.run_later(after, move |act, ctx| act.catch_up(peer, ctx));
    }

    /// Pulls from `peer` every partition this node keeps and merges it.
    fn catch_up(&mut self, peer: String, ctx: &mut Context<Self>) {
        let table = self.node.cluster.table();
        let is_member = table.member(&peer).is_some();
        let now = Instant::now();
        if self.leaving || !self.catchups.begin(&peer, is_member, now) {
            return;
        }
        let kept: Vec<u16> = (0..PARTITION_COUNT)
            .filter(|&p| self.node.cluster.keeps(&table, p))
            .collect();
        // A migration pull asked the peer for some of them since it connected: those come
        // whole with it.
        let partitions = self.node.cluster.not_pulled_since_connected(&peer, &kept);
        ev::CatchUpStarted {
            peer: &peer,
            partitions: partitions.len(),
            covered_by_pull: kept.len() - partitions.len(),
        }
        .emit(&self.log);
        let node = self.node.clone();
        let me = ctx.address();
        actix_rt::spawn(async move {
            let pulled = migration::pull(
                &node,
                &peer,
                &partitions,
                migration::Merge::Announced,
                |_| {},
            )
            .await;
            let result = match pulled.failure {
                None => Ok(pulled.records),
                Some(f) => Err(f),
            };
            me.do_send(CatchUpEnded {
                peer,
                started: now,
                result,
            });
        });
    }

    /// Compares the partitions this node owns with their backups and repairs what differs
    /// (`antientropy.rs`); not while a migration runs (partitions are still moving).
    fn anti_entropy(&mut self, ctx: &mut Context<Self>) {
        if self.comparing || self.leaving || !self.rounds.is_empty() {
            return;
        }
        self.comparing = true;
        let node = self.node.clone();
        let me = ctx.address();
        actix_rt::spawn(async move {
            let round = super::antientropy::round(node).await;
            me.do_send(AntiEntropyEnded(round));
        });
    }

    /// Counts records by role, and with partitioned placement hands over the partitions this
    /// node no longer keeps (not while a migration runs: the table is still moving).
    fn release(&mut self, ctx: &mut Context<Self>) {
        if self.releasing || self.leaving {
            return;
        }
        self.releasing = true;
        let hand_over = self.node.cluster.partitioned() && self.rounds.is_empty();
        let node = self.node.clone();
        let me = ctx.address();
        actix_rt::spawn(async move {
            let released = super::release::release(&node, hand_over).await;
            me.do_send(ReleaseEnded(released));
        });
    }

    /// Members alive without a link for longer than [`super::links::LINK_GRACE`]: logged
    /// (once, then every [`MISSING_LINK_LOG_EVERY`]) and published for `/ready`.
    fn check_links(&mut self) {
        if self.leaving {
            return;
        }
        let table = self.node.cluster.table();
        let now = Instant::now();
        let mut missing = Vec::new();
        for (id, dial) in &mut self.dialled {
            let Some(since) = missing_since(dial.down_since, table.member(id).is_some(), now)
            else {
                continue;
            };
            dial.reported = true;
            let suppressed = dial.missing_log.check(now);
            ev::LinkMissing {
                peer: id,
                down_for_ms: now.duration_since(since).as_millis() as u64,
                suppressed: suppressed.unwrap_or(0),
                err: ErrField::new(
                    "link_missing",
                    "no node-to-node connection to a live member",
                ),
            }
            .emit_if(&self.log, suppressed.is_some());
            missing.push(MissingLink {
                node_id: id.clone(),
                since,
            });
        }
        missing.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        let whole = missing.is_empty();
        self.node.cluster.set_missing_links(missing);
        if whole && self.rounds.is_empty() && self.catchups.idle() {
            self.resync_live_queries();
        }
    }

    fn ready_if_synced(&self) {
        if self.synced && !self.node.cluster.data_ready() {
            self.node.cluster.set_data_ready();
            ev::DataReady {
                members: self.node.cluster.table().members().len(),
            }
            .emit(&self.log);
        }
    }

    /// `data` as it goes on the wire: sealed with the cluster secret when there is one.
    fn sealed(&self, data: Bytes) -> Bytes {
        match &self.node.cluster.keys {
            Some(keys) => Bytes::from(keys.seal(&data)),
            None => data,
        }
    }

    fn send(&self, to: SocketAddr, data: Bytes) {
        let data = self.sealed(data);
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

    fn notified(&mut self, n: OwnedNotification<NodeIdentity>, ctx: &mut Context<Self>) {
        let states = &self.states;
        let change = classify(n, &self.identity.node_id, |id| states.get(id).copied());
        match change {
            Change::Joined { member, clash } => {
                if clash {
                    ev::NodeIdClash {
                        peer: &member.node_id,
                        addr: Shown(&member.addr),
                        own_addr: Shown(&self.identity.addr),
                        err: ErrField::new(
                            "node_id_clash",
                            "another member announces this node's id",
                        ),
                    }
                    .emit(&self.log);
                }
                ev::MemberJoined {
                    peer: &member.node_id,
                    addr: Shown(&member.addr),
                    generation: member.generation,
                    members: self.members(),
                }
                .emit(&self.log);
                self.back_from_down(&member);
            }
            Change::Down(id) => {
                ev::MemberDown {
                    peer: &id.node_id,
                    addr: Shown(&id.addr),
                    generation: id.generation,
                    members: self.members(),
                    err: ErrField::new(
                        "member_down",
                        "the member stopped answering probes and was declared down",
                    ),
                }
                .emit(&self.log);
                if self.down.len() < MAX_REMEMBERED_DOWN {
                    self.down
                        .insert(id.node_id.clone(), (Instant::now(), id.generation));
                }
            }
            Change::Left(id) => {
                ev::MemberLeft {
                    peer: &id.node_id,
                    addr: Shown(&id.addr),
                    generation: id.generation,
                    members: self.members(),
                }
                .emit(&self.log);
                self.left.insert(id);
            }
            Change::Renamed { old, new } => {
                ev::MemberRejoined {
                    peer: &new.node_id,
                    addr: Shown(&new.addr),
                    generation: new.generation,
                    previous_peer: &old.node_id,
                    previous_generation: old.generation,
                    members: self.members(),
                }
                .emit(&self.log);
                self.back_from_down(&new);
            }
            Change::Rejoined(id) => {
                ev::RejoinedAsNewGeneration {
                    generation: id.generation,
                    previous_generation: self.identity.generation,
                    members: self.members(),
                    err: ErrField::new(
                        "declared_down",
                        "the other members had declared this node down",
                    ),
                }
                .emit(&self.log);
                // The others declared this node down and it reaches them again: from this
                // side, the split (or the pause) healed.
                self.heals += 1;
                self.resync.get_or_insert(("rejoined", Instant::now()));
                ev::SplitHealed {
                    side: "rejoined",
                    generation: Some(id.generation),
                    members: self.members(),
                    ..Default::default()
                }
                .emit(&self.log);
                self.rejoin(id, ctx);
            }
            Change::Active => {
                ev::ClusterActive {
                    members: self.members(),
                }
                .emit(&self.log);
            }
            Change::Idle => {
                ev::ClusterIdle { members: 1 }.emit(&self.log);
            }
            Change::Defunct => {
                ev::MembershipDefunct {
                    err: ErrField::new("defunct", "the other members declared this node down"),
                }
                .emit(&self.log);
            }
            Change::Other => {}
        }
    }

    /// Tells every connection with a live query to subscribe again, when something made it
    /// miss changes (see `resync`).
    fn resync_live_queries(&mut self) {
        // The catch-ups the reconnections ask for are scheduled a moment after them.
        let Some((reason, _)) = self
            .resync
            .take_if(|(_, since)| since.elapsed() >= RESYNC_SETTLE)
        else {
            return;
        };
        for stripe in self.node.queue.stripes.iter() {
            stripe.mailbox.do_send(ResyncLiveQueries);
        }
        ev::LiveQueriesResynced {
            reason,
            members: self.members(),
        }
        .emit(&self.log);
    }

    /// A member this node saw declared down is back. With its next generation (foca renews an
    /// identity by one) it was cut off or paused, not restarted (a restart's generation is its
    /// start time): the split healed.
    fn back_from_down(&mut self, id: &NodeIdentity) {
        let Some((since, generation)) = self.down.remove(&id.node_id) else {
            return;
        };
        if !back_from_split(generation, id.generation) {
            return;
        }
        self.heals += 1;
        // Its side took writes meanwhile, and their changes never reached this side.
        self.resync.get_or_insert(("member back", Instant::now()));
        ev::SplitHealed {
            side: "stayed",
            peer: Some(&id.node_id),
            apart_ms: Some(since.elapsed().as_millis() as u64),
            members: self.members(),
            ..Default::default()
        }
        .emit(&self.log);
    }

    /// The cluster declared this node down and foca renewed its identity: continue as that
    /// generation with a fresh membership view. The old view holds the other side of a split
    /// as down, and would tell them so the moment they accept the new identity, making them
    /// rejoin too; a fresh one learns the cluster from the members' own answers.
    fn rejoin(&mut self, id: NodeIdentity, ctx: &mut Context<Self>) {
        let known: Vec<SocketAddr> = self
            .foca
            .iter_membership_state()
            .map(|m| m.id().addr)
            .collect();
        self.remember(known);
        let rng = StdRng::seed_from_u64(rand::random());
        self.foca = Foca::new(id.clone(), foca_config(self.probe), rng, WireCodec);
        self.epoch += 1;
        self.states.clear();
        self.left.clear();
        // Counted as healed once, as "rejoined": the members it held down come back with it.
        self.down.clear();
        // Every peer dials the new generation again, and each of those connections asks for
        // its catch-up: the ones asked for before the rejoin would only come first, for nothing.
        self.catchups = CatchUps::default();
        self.node.cluster.set_generation(id.generation);
        self.identity = id;
        // The fresh view has no members yet: keep the table (and the links) until it has, so
        // writes are not acknowledged by this node alone meanwhile.
        self.rejoined_at = Some(Instant::now());
        self.fresh_since = self.rejoined_at;
        self.verdicts_ignored.clear();
        let addrs: Vec<SocketAddr> = self.known_addrs.keys().copied().collect();
        for addr in addrs {
            self.announce_to(addr);
        }
        self.announce_to_seeds(ctx);
    }

    /// Notes `addrs` as member addresses seen now; forgets those unseen for a long time.
    fn remember(&mut self, addrs: impl IntoIterator<Item = SocketAddr>) {
        let now = Instant::now();
        self.known_addrs
            .retain(|_, seen| now.duration_since(*seen) < KNOWN_ADDR_TTL);
        for addr in addrs {
            if self.known_addrs.len() < MAX_KNOWN_ADDRS || self.known_addrs.contains_key(&addr) {
                self.known_addrs.insert(addr, now);
            }
        }
    }

    /// A datagram foca must not see: a member this node holds down, telling this node that it
    /// is the one down, while this node's side is a majority (see [`heeds_down_verdict`]) and
    /// for at most a few probe periods per sender (the other side rejoins within one round
    /// trip; if it does not, it thinks it is the majority too, and this node gives way).
    fn is_ignored_verdict(&mut self, data: &[u8]) -> bool {
        let Ok(header) = WireCodec.decode_header(data) else {
            return false;
        };
        if header.message != FocaMessage::TurnUndead {
            return false;
        }
        let (mut known, mut alive, mut sender_down) = (1, 1, false);
        for m in self.foca.iter_membership_state() {
            match m.state() {
                State::Alive | State::Suspect => alive += 1,
                State::Down => sender_down |= m.id() == &header.src,
            }
            // A member that left on purpose is not part of any side.
            if !self.left.contains(m.id()) {
                known += 1;
            }
        }
        if !sender_down || heeds_down_verdict(alive, known) {
            return false;
        }
        let now = Instant::now();
        let grace = self.probe * 3;
        self.verdicts_ignored
            .retain(|_, since| now.duration_since(*since) < grace * 10);
        let since = *self.verdicts_ignored.entry(header.src).or_insert(now);
        now.duration_since(since) < grace
    }

    /// What foca gets of a datagram: as it came, or for a few probe periods after a rejoin
    /// without its down claims (see [`without_down_claims`]).
    fn believed(&mut self, data: Vec<u8>) -> Vec<u8> {
        match self.fresh_since {
            Some(at) if at.elapsed() < self.probe * 5 => without_down_claims(&data).unwrap_or(data),
            Some(_) => {
                self.fresh_since = None;
                data
            }
            None => data,
        }
    }

    /// Logs members newly suspected and keeps the state table for the next notification.
    fn watch_states(&mut self) {
        let addrs: Vec<SocketAddr> = self.foca.iter_members().map(|m| m.id().addr).collect();
        self.remember(addrs);
        if !self.left.is_empty() {
            let known: HashSet<&NodeIdentity> =
                self.foca.iter_membership_state().map(|m| m.id()).collect();
            self.left.retain(|id| known.contains(id));
        }
        let mut now: HashMap<NodeIdentity, State> = HashMap::with_capacity(self.states.len());
        for m in self.foca.iter_membership_state() {
            let before = self.states.get(m.id());
            if m.state() == State::Suspect && before != Some(&State::Suspect) {
                ev::MemberSuspected {
                    peer: &m.id().node_id,
                    addr: Shown(&m.id().addr),
                    generation: m.id().generation,
                }
                .emit(&self.log);
            }
            now.insert(m.id().clone(), m.state());
        }
        self.states = now;
    }

    /// A datagram for foca, its seal (if any) checked and taken off.
    fn membership_datagram(&mut self, data: Vec<u8>, from: SocketAddr) {
        if self.is_ignored_verdict(&data) {
            debug!(self.log, "down verdict of a minority ignored"; "from" => %from);
        } else {
            let len = data.len();
            let data = self.believed(data);
            if let Err(e) = self.foca.handle_data(&data, &mut self.runtime) {
                self.invalid_datagram(Some(from), refusal_code(&e), len);
            }
        }
    }

    /// A datagram without the seal of this node's cluster secret: counted, and logged once a
    /// minute per address.
    fn unsealed_datagram(&mut self, from: SocketAddr, e: &SealError, len: usize) {
        self.invalid += 1;
        let suppressed = self.node.cluster.may_log_refused(from.ip(), "datagram");
        ev::DatagramUnsealed {
            from: Shown(&from),
            reason: e.code(),
            bytes: len,
            suppressed: suppressed.unwrap_or(0),
            err: ErrField::new(e.code(), e),
        }
        .emit_if(&self.log, suppressed.is_some());
    }

    fn invalid_datagram(&mut self, from: Option<SocketAddr>, reason: &'static str, len: usize) {
        self.invalid += 1;
        let suppressed = self.invalid_log.check(Instant::now());
        ev::DatagramInvalid {
            from: from.map(|a| a.to_string()),
            reason,
            bytes: len,
            suppressed: suppressed.unwrap_or(0),
            err: ErrField::new(reason, "the datagram was dropped"),
        }
        .emit_if(&self.log, suppressed.is_some());
    }

    fn report(&mut self) {
        let report = ClusterReport {
            stats: self.stats.take(),
            members: self.members() as i64,
            invalid: std::mem::take(&mut self.invalid),
            data: self.data_report(),
        };
        self.metrics.do_send(Reported(Box::new(report)));
    }

    fn data_report(&mut self) -> DataReport {
        let cluster = &self.node.cluster;
        let table = cluster.table();
        let (owned, backup) = table.counts(&cluster.node_id);
        let c = &cluster.counters;
        let take =
            |a: &std::sync::atomic::AtomicU64| a.swap(0, std::sync::atomic::Ordering::Relaxed);
        DataReport {
            owned: owned as i64,
            backup: backup as i64,
            version: i64::from(table.version),
            rebalances: std::mem::take(&mut self.rebalances),
            heals: std::mem::take(&mut self.heals),
            migration_pending: c
                .migration_pending
                .load(std::sync::atomic::Ordering::Relaxed),
            migration_records: take(&c.migration_records),
            forwarded: take(&c.forwarded),
            applied: [
                take(&c.applied_owner),
                take(&c.applied_backup),
                take(&c.applied_replica),
            ],
            lag: c.take_lag().as_secs_f64(),
            peer_errors: c.take_peer_errors(),
            links: self.dialled.values().filter(|d| d.link.is_some()).count() as i64,
            catch_ups: [take(&c.catch_ups_ok), take(&c.catch_ups_failed)],
            handoffs: [take(&c.handoffs_delivered), take(&c.handoffs_dropped)],
            records_by_role: self
                .records_by_role
                .map(|n| i64::try_from(n).unwrap_or(i64::MAX)),
            live: [
                take(&c.live_sent),
                take(&c.live_received),
                take(&self.node.queue.cross.dropped),
            ],
            released: std::mem::take(&mut self.released),
            gathers: [
                take(&c.gathers_ok),
                take(&c.gathers_failed),
                take(&c.gathers_retried),
            ],
            handoffs_pending: c
                .handoffs_pending
                .load(std::sync::atomic::Ordering::Relaxed),
            link_unsent: c.link_unsent.load(std::sync::atomic::Ordering::Relaxed),
            antientropy: [take(&c.antientropy_rounds), take(&c.antientropy_repaired)],
        }
    }
}

/// The data side of the cluster: partition counts, migration, routing counters.
struct DataReport {
    owned: i64,
    backup: i64,
    version: i64,
    rebalances: u64,
    heals: u64,
    migration_pending: i64,
    migration_records: u64,
    forwarded: u64,
    /// owner, backup, replica.
    applied: [u64; 3],
    lag: f64,
    peer_errors: Vec<(&'static str, u64)>,
    links: i64,
    /// finished, failed.
    catch_ups: [u64; 2],
    /// delivered, dropped.
    handoffs: [u64; 2],
    /// ok, failed, retried.
    gathers: [u64; 3],
    /// owner, backup, replica.
    records_by_role: [i64; 3],
    /// Live events sent, received, dropped.
    live: [u64; 3],
    released: u64,
    handoffs_pending: i64,
    link_unsent: i64,
    /// Rounds, partitions repaired.
    antientropy: [u64; 2],
}

impl DataReport {
    fn apply(self, m: &mut Metrics) {
        m.partitions_owned.set(self.owned);
        m.partitions_backup.set(self.backup);
        m.partition_table_version.set(self.version);
        m.rebalance_total.inc_by(self.rebalances);
        m.cluster_heals_total.inc_by(self.heals);
        m.migration_partitions_pending.set(self.migration_pending);
        m.migration_records_total.inc_by(self.migration_records);
        m.cluster_forwarded_total.inc_by(self.forwarded);
        for (role, n) in ["owner", "backup", "replica"].iter().zip(self.applied) {
            m.cluster_applied_total.with_label_values(&[role]).inc_by(n);
        }
        m.replication_lag_seconds.set(self.lag);
        for (reason, n) in self.peer_errors {
            m.cluster_peer_errors_total
                .with_label_values(&[reason])
                .inc_by(n);
        }
        m.cluster_peer_links.set(self.links);
        for (outcome, n) in ["ok", "failed"].iter().zip(self.catch_ups) {
            m.cluster_catch_ups_total
                .with_label_values(&[outcome])
                .inc_by(n);
        }
        for (outcome, n) in ["delivered", "dropped"].iter().zip(self.handoffs) {
            m.cluster_handoffs_total
                .with_label_values(&[outcome])
                .inc_by(n);
        }
        m.cluster_handoffs_pending.set(self.handoffs_pending);
        m.cluster_link_unsent_bytes.set(self.link_unsent);
        m.antientropy_rounds_total.inc_by(self.antientropy[0]);
        m.antientropy_repaired_total.inc_by(self.antientropy[1]);
        for (role, n) in ["owner", "backup", "replica"]
            .iter()
            .zip(self.records_by_role)
        {
            m.partition_records.with_label_values(&[role]).set(n);
        }
        m.partitions_released_total.inc_by(self.released);
        for (outcome, n) in ["sent", "received", "dropped"].iter().zip(self.live) {
            m.cluster_live_events_total
                .with_label_values(&[outcome])
                .inc_by(n);
        }
        for (outcome, n) in ["ok", "failed", "retried"].iter().zip(self.gathers) {
            m.cluster_gathers_total
                .with_label_values(&[outcome])
                .inc_by(n);
        }
    }
}

/// Membership numbers: the members gauge (this actor is its only source) and counter deltas.
struct ClusterReport {
    stats: StatsDelta,
    members: i64,
    invalid: u64,
    data: DataReport,
}

impl Report for ClusterReport {
    fn apply(self: Box<Self>, m: &mut Metrics) {
        self.stats.apply(m);
        m.cluster_members.set(self.members);
        m.cluster_invalid_datagrams_total.inc_by(self.invalid);
        self.data.apply(m);
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
        ev::MembershipStarted {
            addr: Shown(&self.identity.addr),
            generation: self.identity.generation,
            seeds: self.seeds.join(","),
            probe_ms: self.probe.as_millis() as u64,
        }
        .emit(&self.log);
        if self.seeds.is_empty() {
            // A cluster of one by choice: nothing to wait for. It still pulls everything from
            // the first peers that find it, like any node that joins.
            self.node.cluster.set_data_ready();
        } else {
            let wait = self.node.config.cluster_join_timeout;
            ctx.run_later(wait, move |act, _| {
                if !act.node.cluster.data_ready() {
                    ev::JoinTimedOut {
                        waited_ms: wait.as_millis() as u64,
                        seeds: act.seeds.join(","),
                        members: act.members(),
                        err: ErrField::new(
                            "join_timeout",
                            "no partition table with data pulled within the join timeout",
                        ),
                    }
                    .emit(&act.log);
                    act.node.cluster.set_data_ready();
                }
            });
        }
        if !self.seeds.is_empty() {
            self.announce_to_seeds(ctx);
        }
        // Alone (never joined, or cut off): announce to the seeds and former members every two
        // probe periods. With members: now and then to one address outside them.
        let every = (self.probe * 2).max(Duration::from_millis(200));
        ctx.run_interval(every, |act, ctx| {
            if act.leaving {
                return;
            }
            act.announce_ticks += 1;
            let alone = act.foca.num_members() == 0;
            if alone && (!act.seeds.is_empty() || !act.known_addrs.is_empty()) {
                let suppressed = act.retry_log.check(Instant::now());
                ev::Announcing {
                    seeds: act.seeds.join(","),
                    former_members: act.known_addrs.len(),
                    suppressed: suppressed.unwrap_or(0),
                }
                .emit_if(&act.log, suppressed.is_some());
                act.announce_to_seeds(ctx);
            } else if !alone && act.announce_ticks % OUTSIDE_PROBE_TICKS == 0 {
                act.announce_to_seeds(ctx);
            }
        });
        ctx.run_interval(
            self.report_interval.min(Duration::from_millis(250)),
            |act, _| act.report(),
        );
        ctx.run_interval(Duration::from_secs(1), |act, _| act.check_links());
        ctx.run_interval(RELEASE_EVERY, |act, ctx| act.release(ctx));
        if let Some(every) = self.node.config.anti_entropy_interval {
            ctx.run_interval(every, |act, ctx| act.anti_entropy(ctx));
        }
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        let report = ClusterReport {
            stats: self.stats.take_final(),
            members: 1,
            invalid: std::mem::take(&mut self.invalid),
            data: self.data_report(),
        };
        self.metrics.do_send(Reported(Box::new(report)));
    }
}

// Messages sent through a `Mailbox` arrive wrapped, with the time they were sent.
crate::telemetry::mailbox::mailbox_handlers!(ClusterActor, stats);

impl StreamHandler<Datagram> for ClusterActor {
    fn handle(&mut self, item: Datagram, ctx: &mut Context<Self>) {
        let t0 = self.stats.begin_item();
        match item.0 {
            Ok((mut data, from)) => {
                if self.leaving {
                    // Gone from the cluster: answering would bring us back.
                } else if data.len() >= MAX_DATAGRAM {
                    self.invalid_datagram(Some(from), "too_big", data.len());
                } else {
                    let keys = self.node.cluster.keys.as_ref();
                    match secret::open(keys, &data).map(|inner| data.len() - inner.len()) {
                        Err(e) => self.unsealed_datagram(from, &e, data.len()),
                        Ok(seal) => {
                            data.drain(..seal);
                            self.membership_datagram(data, from);
                        }
                    }
                }
                self.drain(ctx);
            }
            Err(e) => {
                let suppressed = self.invalid_log.check(Instant::now());
                ev::SocketReadFailed {
                    suppressed: suppressed.unwrap_or(0),
                    err: ErrField::new("recv", e),
                }
                .emit_if(&self.log, suppressed.is_some());
            }
        }
        self.stats.end(t0);
    }

    /// The datagram stream never ends on its own; keep the actor regardless.
    fn finished(&mut self, _: &mut Context<Self>) {}
}

/// How long a link to a member that left still waits for the answers to its requests.
const LINK_DRAIN: Duration = Duration::from_secs(1);

/// Closes an outbound link whose member left the table.
#[derive(Message)]
#[rtype(result = "()")]
pub struct StopLink;

impl Handler<StopLink> for PeerConn {
    type Result = ();

    fn handle(&mut self, _: StopLink, ctx: &mut Context<PeerConn>) {
        // A member that left gracefully still answers for a moment (it lingers): requests
        // already on the link get their answers instead of failing with the connection.
        if self.has_pending() {
            ctx.run_later(LINK_DRAIN, |_, ctx| ctx.stop());
        } else {
            ctx.stop();
        }
    }
}

impl Handler<LinkUp> for ClusterActor {
    type Result = ();

    fn handle(&mut self, msg: LinkUp, _: &mut Context<Self>) {
        let t0 = self.stats.begin_item();
        match self.dialled.get_mut(&msg.node_id) {
            Some(dial)
                if dial.handshake.as_ref() == Some(&msg.link.addr)
                    && msg.generation >= dial.generation =>
            {
                dial.generation = msg.generation;
                dial.handshake = None;
                dial.attempt = None;
                dial.link = Some(msg.link.addr.clone());
                if dial.reported {
                    let down = dial
                        .down_since
                        .map_or(0, |t| t.elapsed().as_millis() as u64);
                    ev::LinkRestored {
                        peer: &msg.node_id,
                        down_for_ms: down,
                    }
                    .emit(&self.log);
                }
                dial.down_since = None;
                let was_reported = std::mem::take(&mut dial.reported);
                self.node
                    .cluster
                    .with_links(|l| l.insert(msg.node_id, msg.link));
                if was_reported {
                    self.check_links();
                }
            }
            // The member left or restarted meanwhile: this connection is not its link.
            _ => msg.link.do_send(StopLink),
        }
        self.stats.end(t0);
    }
}

impl Handler<LinkDown> for ClusterActor {
    type Result = ();

    /// A link lost, or an attempt that connected and then failed its handshake (refused,
    /// reset, timed out): either way the member is dialled again.
    fn handle(&mut self, msg: LinkDown, ctx: &mut Context<Self>) {
        let t0 = self.stats.begin_item();
        self.node.cluster.with_links(|l| {
            if l.get(&msg.node_id).map(|m| &m.addr) == Some(&msg.link) {
                l.remove(&msg.node_id);
            }
        });
        if let Some(dial) = self.dialled.get_mut(&msg.node_id) {
            let redial = if dial.link.as_ref() == Some(&msg.link) {
                dial.link = None;
                dial.down_since = Some(Instant::now());
                ev::LinkLost { peer: &msg.node_id }.emit(&self.log);
                true
            } else if dial.handshake.as_ref() == Some(&msg.link) {
                dial.handshake = None;
                dial.attempt = None;
                true
            } else {
                false
            };
            if redial {
                let id = msg.node_id.clone();
                ctx.run_later(REDIAL_AFTER, move |act, ctx| act.redial(&id, ctx));
            }
        }
        self.stats.end(t0);
    }
}

impl Handler<PeerConnected> for ClusterActor {
    type Result = ();

    fn handle(&mut self, msg: PeerConnected, ctx: &mut Context<Self>) {
        let t0 = self.stats.begin_item();
        if !self.leaving && msg.node_id != self.identity.node_id {
            debug!(self.log, "peer connected: catch-up requested"; "peer" => &msg.node_id,
                "generation" => msg.generation);
            if self.inbound_generation.len() >= MAX_REMEMBERED_DOWN {
                self.inbound_generation.clear();
            }
            let before = self
                .inbound_generation
                .insert(msg.node_id.clone(), msg.generation);
            if before == Some(msg.generation) {
                self.resync.get_or_insert(("link restored", Instant::now()));
            }
            if let Some(at) = self.catchups.request(&msg.node_id, Instant::now()) {
                self.schedule_catch_up(msg.node_id, at, ctx);
            }
        }
        self.stats.end(t0);
    }
}

impl Handler<CatchUpEnded> for ClusterActor {
    type Result = ();

    fn handle(&mut self, msg: CatchUpEnded, ctx: &mut Context<Self>) {
        let t0 = self.stats.begin_item();
        let took = msg.started.elapsed().as_millis() as u64;
        let ok = msg.result.is_ok();
        let counters = &self.node.cluster.counters;
        match &msg.result {
            Ok(records) => {
                counters
                    .catch_ups_ok
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                ev::CatchUpFinished {
                    peer: &msg.peer,
                    records: *records,
                    took_ms: took,
                }
                .emit(&self.log);
            }
            Err(e) => {
                counters
                    .catch_ups_failed
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let attempt = self.catchups.failures(&msg.peer) + 1;
                let suppressed = self.node.cluster.may_log("catch_up_failed");
                ev::CatchUpFailed {
                    peer: &msg.peer,
                    attempt,
                    took_ms: took,
                    suppressed: suppressed.unwrap_or(0),
                    err: ErrField::new(e.code(), e),
                }
                .emit_if(&self.log, suppressed.is_some());
            }
        }
        if let Some(at) = self.catchups.ended(&msg.peer, ok, Instant::now()) {
            self.schedule_catch_up(msg.peer, at, ctx);
        }
        self.stats.end(t0);
    }
}

impl Handler<PullEnded> for ClusterActor {
    type Result = ();

    fn handle(&mut self, msg: PullEnded, ctx: &mut Context<Self>) {
        let t0 = self.stats.begin_item();
        let still_member = self.node.cluster.table().member(&msg.source).is_some();
        self.rounds.merged(msg.round, msg.pulled.records);
        let left = msg.partitions[msg.pulled.partitions_done.min(msg.partitions.len())..].to_vec();
        match msg.pulled.failure {
            Some(e) if migration::retries(msg.attempt, still_member) => {
                // Resumed where it stopped: the merged partitions are not pulled again.
                ev::PullFailed {
                    peer: &msg.source,
                    partitions: left.len(),
                    attempt: msg.attempt,
                    err: ErrField::new(e.code(), &e),
                }
                .emit(&self.log);
                let (round, source, attempt) = (msg.round, msg.source, msg.attempt + 1);
                ctx.run_later(REDIAL_AFTER * attempt, move |act, ctx| {
                    act.pull(round, source, left, attempt, ctx)
                });
                self.stats.end(t0);
                return;
            }
            failure => {
                // What was given up no longer counts as pending, and is served as it is.
                self.node
                    .cluster
                    .counters
                    .migration_pending
                    .fetch_sub(left.len() as i64, std::sync::atomic::Ordering::Relaxed);
                self.node.cluster.set_arriving(&left, false);
                if let Some(e) = &failure {
                    ev::PullGivenUp {
                        peer: &msg.source,
                        partitions: left.len(),
                        err: ErrField::new(e.code(), e),
                    }
                    .emit(&self.log);
                }
                if !left.is_empty() {
                    // A catch-up from the source may have skipped these for this pull.
                    if let Some(at) = self.catchups.request(&msg.source, Instant::now()) {
                        self.schedule_catch_up(msg.source.clone(), at, ctx);
                    }
                }
                if let Some(round) = self.rounds.source_ended(msg.round, failure.is_some()) {
                    ev::MigrationFinished {
                        round: msg.round,
                        partitions: round.partitions,
                        records: round.records,
                        failed_sources: round.failed,
                        took_ms: round.started.elapsed().as_millis() as u64,
                    }
                    .emit(&self.log);
                    if round.makes_ready() {
                        self.synced = true;
                        self.ready_if_synced();
                    }
                    if self.rounds.is_empty() && self.node.cluster.partitioned() {
                        // What this node gave up can be handed over now.
                        self.release(ctx);
                    }
                }
            }
        }
        self.stats.end(t0);
    }
}

impl Handler<AntiEntropyEnded> for ClusterActor {
    type Result = ();

    fn handle(&mut self, msg: AntiEntropyEnded, _: &mut Context<Self>) {
        let r = msg.0;
        self.comparing = false;
        debug!(self.log, "anti-entropy round"; "compared" => r.compared, "busy" => r.busy,
            "repaired" => r.repaired, "failed" => r.failed,
            "tookMs" => r.took.as_secs_f64() * 1000.0);
    }
}

impl Handler<ReleaseEnded> for ClusterActor {
    type Result = ();

    fn handle(&mut self, msg: ReleaseEnded, _: &mut Context<Self>) {
        let r = msg.0;
        self.releasing = false;
        self.records_by_role = r.records_by_role;
        self.released += r.partitions as u64;
        if r.partitions > 0 {
            ev::PartitionsHandedOver {
                partitions: r.partitions,
                records: r.records,
                kept_back: r.kept_back,
            }
            .emit(&self.log);
        }
        if let Some(e) = &r.failure {
            let suppressed = self.release_log.check(Instant::now());
            ev::HandoverIncomplete {
                kept_back: r.kept_back,
                suppressed: suppressed.unwrap_or(0),
                err: ErrField::new(e.code(), e),
            }
            .emit_if(&self.log, suppressed.is_some());
        }
    }
}

impl Handler<Leave> for ClusterActor {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: Leave, _: &mut Context<Self>) -> Self::Result {
        let t0 = self.stats.begin();
        let members = self.members();
        if let Err(e) = self.foca.leave_cluster(&mut self.runtime) {
            ev::LeaveFailed {
                err: ErrField::new("foca", e),
            }
            .emit(&self.log);
        }
        self.leaving = true;
        let mut out = Vec::new();
        while let Some((to, data)) = self.runtime.to_send() {
            out.push((to.addr, self.sealed(data)));
        }
        // Timers and notifications of a node that left no longer matter.
        while self.runtime.to_schedule().is_some() {}
        while self.runtime.to_notify().is_some() {}
        ev::ClusterLeft {
            members,
            told: out.len(),
        }
        .emit(&self.log);
        self.stats.end(t0);
        let socket = self.socket.clone();
        Box::pin(async move {
            for (to, data) in out {
                let _ = socket.send_to(&data, to).await;
            }
        })
    }
}

/// A link to the peer listening at `addr`: connected within [`DIAL_TIMEOUT`], then through
/// the cluster's TLS when it has one. A failure names its `topgun_cluster_peer_errors_total`
/// reason.
async fn dial_link(node: &DataPlane, addr: SocketAddr) -> Result<PeerStream, (PeerError, String)> {
    let connect = connect_from(node.config.cluster_host(), addr);
    let stream = match tokio::time::timeout(DIAL_TIMEOUT, connect).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return Err((PeerError::Connect, e.to_string())),
        Err(_) => return Err((PeerError::Connect, "timed out".to_owned())),
    };
    PeerStream::establish(&node.cluster, stream, true)
        .await
        .map_err(|TlsFailure(e)| (PeerError::Tls, e.to_string()))
}

/// Connects to a peer from this node's own address when `--host` names one, so its peer
/// traffic comes from the address it advertises (firewalls and the peers' logs see that one).
async fn connect_from(host: IpAddr, to: SocketAddr) -> std::io::Result<tokio::net::TcpStream> {
    if host.is_unspecified() || host.is_ipv4() != to.is_ipv4() {
        return tokio::net::TcpStream::connect(to).await;
    }
    let socket = if to.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.bind(SocketAddr::new(host, 0))?;
    socket.connect(to).await
}
