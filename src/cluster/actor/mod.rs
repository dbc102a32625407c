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
//!
//! One actor, its jobs in one file each: this file holds its state, start and messages;
//! `gossip` the membership (foca, seeds, datagrams, notifications), `dialing` the links to the
//! other members, `moves` the partition table and the data moves it starts, `report` its
//! telemetry. The decisions they take are plain functions of `cluster::membership`,
//! `cluster::links`, `cluster::migration`, `cluster::release` (unit-tested there).
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
use rand::rngs::StdRng;
use rand::SeedableRng;
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

mod dialing;
mod gossip;
mod moves;
mod report;

use dialing::StopLink;

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
                        err: ErrField::fixed(
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
        self.report_final();
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
