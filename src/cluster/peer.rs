//! `PeerConn`: one TCP connection of the node-to-node transport ([`super::wire`]), as an actor
//! on the main arbiter.
//!
//! Outbound connections are dialled by the `ClusterActor`, one per member, and carry this
//! node's requests (forwarded and replicated writes, pulls, topics); their answers come back on
//! the same connection, matched by correlation id. Inbound connections serve the peer's
//! requests. A request waits at most the cluster timeout: a peer that stops answering fails its
//! callers (counted as `timeout`) instead of holding client acks forever.
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::io::{FramedWrite, WriteHandler};
use actix::prelude::*;
use bytes::{Bytes, BytesMut};
use serde_bytes::ByteBuf;
use slog::{debug, Logger};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_util::codec::{FramedRead, LengthDelimitedCodec};

use super::actor::{ClusterActor, LinkDown, LinkUp, PeerConnected};
use super::error::{ClusterError, Peer};
use super::events as ev;
use super::peer_error::PeerError;
use super::plane::DataPlane;
use super::replication;
use super::secret;
use super::state::ClusterState;
use super::wire::{self, Frame, Hello, Kind, Refused, PEER_MAGIC, PEER_VERSION};
use crate::queue::actor::TopicPublish;
use crate::telemetry::event::{ErrField, Event, Shown};
use crate::telemetry::logging::err_kv;
use crate::telemetry::mailbox::Mailbox;
use crate::telemetry::report::Reported;
use crate::telemetry::report::{ActorKind, ActorStats, StatsOnly};

/// Inbound connections still in their handshake at once: silent connections to the cluster
/// port are closed after the cluster timeout, and beyond this many they are not even kept, so
/// a flood of them cannot take the node's file descriptors.
pub const MAX_HANDSHAKING: usize = 64;
/// Inbound connections in all (a peer holds one or two; the rest of the descriptors are the
/// clients').
pub const MAX_INBOUND: usize = 1_024;

/// Pulls one connection serves at once (a migration and a catch-up of one peer need two).
const MAX_EXPORTS: usize = 4;
/// Chunks an exporter sends ahead of the grants at most, whatever the puller asks.
const MAX_WINDOW: u32 = 64;

/// How long a refused connection stays open so the REFUSED frame leaves.
const REFUSE_FLUSH: Duration = Duration::from_millis(100);
/// How often waiting requests are checked against the timeout, and the link's unsent bytes
/// against its bound.
const SWEEP_EVERY: Duration = Duration::from_millis(100);
/// actix's write buffer low mark (its default).
const WRITE_LOW_WATERMARK: usize = 4 * 1024;
/// TCP keepalive on peer links: first probe after this much silence, then one per interval;
/// after this many unanswered the kernel ends the connection (about 5 s in all).
const KEEPALIVE_IDLE: Duration = Duration::from_secs(2);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(1);
#[cfg(target_os = "linux")]
const KEEPALIVE_PROBES: u32 = 3;

pub fn codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .max_frame_length(wire::MAX_PEER_FRAME)
        .new_codec()
}

/// The frame decoder of a connection, noting since when an incomplete frame has received no
/// byte: a peer that sends part of a frame and then nothing (a length prefix of 64 MiB and no
/// body) would otherwise hold the connection and its buffer for ever.
///
/// Until the peer's HELLO is accepted a frame may be at most [`MAX_HELLO_FRAME`]: the codec
/// reserves a buffer of the announced length, and a stranger should not make it reserve 64 MiB.
pub struct WatchedCodec {
    inner: LengthDelimitedCodec,
    stalled_since: std::rc::Rc<std::cell::Cell<Option<Instant>>>,
    buffered: usize,
    greeted: std::rc::Rc<std::cell::Cell<bool>>,
    widened: bool,
}

/// The largest frame read before a HELLO was accepted; a HELLO is a few dozen bytes.
const MAX_HELLO_FRAME: usize = 64 * 1024;

impl tokio_util::codec::Decoder for WatchedCodec {
    type Item = BytesMut;
    type Error = std::io::Error;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<BytesMut>, std::io::Error> {
        if !self.widened && self.greeted.get() {
            // The actor handles each frame before the next is decoded, so no frame head was
            // read under the small bound after the HELLO was accepted.
            self.inner.set_max_frame_length(wire::MAX_PEER_FRAME);
            self.widened = true;
        }
        let frame = self.inner.decode(src)?;
        if frame.is_some() || src.is_empty() {
            self.stalled_since.set(None);
        } else if src.len() != self.buffered || self.stalled_since.get().is_none() {
            // Bytes came: the wait for the rest starts again.
            self.stalled_since.set(Some(Instant::now()));
        }
        self.buffered = src.len();
        Ok(frame)
    }
}

/// The write half of a peer connection, counting the bytes the kernel took: with the bytes the
/// connection wrote into its buffer, that is what waits unsent ([`PeerConn::unsent`]).
pub struct CountingWriter {
    inner: Box<dyn AsyncWrite + Unpin>,
    taken: std::rc::Rc<std::cell::Cell<u64>>,
}

impl tokio::io::AsyncWrite for CountingWriter {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_write(cx, buf);
        if let std::task::Poll::Ready(Ok(n)) = &polled {
            self.taken.set(self.taken.get() + *n as u64);
        }
        polled
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A connected peer stream with the socket options of a link set, plain or inside the
/// cluster's TLS: the halves the connection reads and writes.
pub struct PeerStream {
    read: Box<dyn AsyncRead + Unpin>,
    write: Box<dyn AsyncWrite + Unpin>,
    remote: Option<SocketAddr>,
}

/// A TLS handshake that failed: the peer (or this node) has no certificate the other's CA
/// signed, or does not speak TLS at all.
#[derive(Debug)]
pub struct TlsFailure(pub std::io::Error);

impl PeerStream {
    /// `stream` as a link: through the cluster's TLS when it has one (the server side when
    /// the peer dialled), within the cluster timeout.
    pub async fn establish(
        cluster: &ClusterState,
        stream: TcpStream,
        dialled: bool,
    ) -> Result<PeerStream, TlsFailure> {
        let _ = stream.set_nodelay(true);
        watch_liveness(&stream, cluster.timeout);
        let remote = stream.peer_addr().ok();
        let Some(tls) = &cluster.tls else {
            let (read, write) = stream.into_split();
            return Ok(PeerStream {
                read: Box::new(read),
                write: Box::new(write),
                remote,
            });
        };
        let handshake = async {
            if dialled {
                tls.connect(stream).await
            } else {
                tls.accept(stream).await
            }
        };
        let stream = tokio::time::timeout(cluster.timeout, handshake)
            .await
            .map_err(|_| {
                TlsFailure(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "no TLS handshake within the cluster timeout",
                ))
            })?
            .map_err(TlsFailure)?;
        let (read, write) = tokio::io::split(stream);
        Ok(PeerStream {
            read: Box::new(read),
            write: Box::new(write),
            remote,
        })
    }
}

/// The cluster listener's inbound connections, and of them those still in their handshake.
#[derive(Default)]
pub struct InboundCount {
    total: AtomicUsize,
    handshaking: AtomicUsize,
}

/// An answer to a request: its kind and undecoded body.
#[derive(Debug)]
pub struct Reply {
    pub kind: Kind,
    pub body: Bytes,
}

enum Waiter {
    Once(oneshot::Sender<Reply>),
    Stream(mpsc::UnboundedSender<Reply>),
    /// Nobody waits (an asynchronous replica); kept to measure the replication lag.
    Untracked,
}

struct Pending {
    waiter: Waiter,
    sent: Instant,
}

/// A request that expects one answer. Fails ([`ClusterError::Unanswered`]) when the connection
/// is lost or the peer does not answer within the cluster timeout.
#[derive(Message)]
#[rtype(result = "Result<Reply, ClusterError>")]
pub struct Call {
    pub kind: Kind,
    pub body: Bytes,
}

/// A request whose answers (`PULL_CHUNK`s, then `PULL_DONE`) arrive on a channel; the
/// request's correlation id names it in [`Grant`]s.
#[derive(Message)]
#[rtype(result = "(u64, mpsc::UnboundedReceiver<Reply>)")]
pub struct CallStream {
    pub kind: Kind,
    pub body: Bytes,
}

/// The puller's `PULL_MORE` for the pull `corr`: the exporter may send `granted` more chunks.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Grant {
    pub corr: u64,
    pub granted: u32,
}

/// One answer frame of a request this connection serves, from the task that produces it
/// (an export).
#[derive(Message)]
#[rtype(result = "()")]
struct Answer {
    kind: Kind,
    corr: u64,
    body: Bytes,
}

/// A request nobody waits for; its answer only measures the lag.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Notify {
    pub kind: Kind,
    pub body: Bytes,
}

/// One-way: no answer (topics).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Cast {
    pub kind: Kind,
    pub body: Bytes,
}

pub enum Direction {
    /// Dialled by this node to a member: the node id expected in its HELLO, and the oldest
    /// generation accepted (the one the partition table knows).
    Outbound {
        node_id: String,
        generation: u64,
        manager: Addr<ClusterActor>,
    },
    /// Dialled by this node, alone, to a seed address, to learn whether the seed shares this
    /// node's cluster secret: the handshake goes as far as the seed's proof, then closes.
    SecretProbe,
    /// Dialled by a peer; the manager hears of each accepted HELLO (it schedules catch-ups).
    /// `count` is the listener's, released when the connection ends.
    Inbound {
        manager: Addr<ClusterActor>,
        count: Arc<InboundCount>,
    },
}

/// Whether the HELLO of an outbound link answers as the member dialled: the same node id, at
/// the generation the table knows or a newer one (the member rejoined as a new generation and
/// this node's membership has not heard yet). An older generation is a stale process.
fn check_answer(node_id: &str, generation: u64, hello: &Hello) -> Result<(), String> {
    if hello.node_id != node_id || hello.generation < generation {
        return Err(format!(
            "expected {node_id} generation {generation} or newer, got {} generation {}",
            hello.node_id, hello.generation
        ));
    }
    Ok(())
}

pub struct PeerConn {
    node: Arc<DataPlane>,
    writer: FramedWrite<Bytes, CountingWriter, LengthDelimitedCodec>,
    /// Bytes written into `writer` (frames with their length prefix), and of them the ones
    /// the kernel took: the difference waits in this process.
    written: u64,
    taken: std::rc::Rc<std::cell::Cell<u64>>,
    /// The unsent bytes last added to the node-wide gauge.
    reported_unsent: i64,
    /// Past the link's byte bound: frames are dropped until the sweep cuts the link.
    overflowed: bool,
    direction: Direction,
    /// The peer's node id once its HELLO was accepted.
    peer: Option<String>,
    next_corr: u64,
    pending: HashMap<u64, Pending>,
    /// Exports this connection serves, by the pull's correlation id: where its grants go.
    exports: HashMap<u64, mpsc::UnboundedSender<u32>>,
    /// Since when an incomplete frame has received nothing ([`WatchedCodec`]).
    stalled_since: std::rc::Rc<std::cell::Cell<Option<Instant>>>,
    /// Set once the peer's HELLO is accepted: its frames may then be of any allowed size.
    greeted: std::rc::Rc<std::cell::Cell<bool>>,
    /// Refused: closing, the rest of the stream is ignored.
    refused: bool,
    /// This side's fresh nonce for the handshake (sent only with a cluster secret).
    nonce: [u8; secret::NONCE_LEN],
    /// Inbound with a cluster secret: the dialler's HELLO, accepted but for its AUTH.
    awaiting_auth: Option<Hello>,
    remote_ip: Option<IpAddr>,
    stats: ActorStats,
    log: Logger,
}

impl PeerConn {
    /// Starts the actor on the current arbiter for a connected stream.
    pub fn start(node: Arc<DataPlane>, stream: PeerStream, direction: Direction) -> Addr<Self> {
        let PeerStream {
            read,
            write,
            remote: remote_addr,
        } = stream;
        let remote = remote_addr.map_or_else(|| "?".into(), |a| a.to_string());
        let taken = std::rc::Rc::new(std::cell::Cell::new(0));
        let write = CountingWriter {
            inner: write,
            taken: taken.clone(),
        };
        let stalled_since = std::rc::Rc::new(std::cell::Cell::new(None));
        let greeted = std::rc::Rc::new(std::cell::Cell::new(false));
        let mut inner = codec();
        inner.set_max_frame_length(MAX_HELLO_FRAME);
        let decoder = WatchedCodec {
            inner,
            stalled_since: stalled_since.clone(),
            buffered: 0,
            greeted: greeted.clone(),
            widened: false,
        };
        PeerConn::create(move |ctx| {
            ctx.add_stream(FramedRead::new(read, decoder));
            let dir = match &direction {
                Direction::Outbound { .. } => "out",
                Direction::SecretProbe => "probe",
                Direction::Inbound { .. } => "in",
            };
            let log = node
                .log
                .new(slog::o!("actor" => "peer", "remote" => remote.clone(), "direction" => dir));
            PeerConn {
                writer: {
                    let mut w = FramedWrite::new(write, codec(), ctx);
                    // actix stops handling messages while the buffer is past its high mark,
                    // which would pile them up in the mailbox instead; the byte bound of the
                    // link (checked by the sweep) is what limits the buffer.
                    w.set_buffer_capacity(WRITE_LOW_WATERMARK, usize::MAX);
                    w
                },
                written: 0,
                taken,
                reported_unsent: 0,
                overflowed: false,
                // By its address until the peer's HELLO names it.
                stats: ActorStats::new(ActorKind::Cluster, node.config.actor_telemetry)
                    .named(&remote),
                node,
                direction,
                peer: None,
                next_corr: 1,
                pending: HashMap::new(),
                exports: HashMap::new(),
                stalled_since,
                greeted,
                refused: false,
                nonce: secret::nonce(),
                awaiting_auth: None,
                remote_ip: remote_addr.map(|a| a.ip()),
                log,
            }
        })
    }

    fn cluster(&self) -> &ClusterState {
        &self.node.cluster
    }

    fn send_frame(&mut self, kind: Kind, corr: u64, body: &[u8]) {
        if self.overflowed {
            // The link is being cut: whoever waits for an answer hears it fail.
            return;
        }
        if self.unsent() > self.node.config.cluster_link_buffer as u64 {
            self.overflowed = true;
            return;
        }
        let frame = wire::frame(kind, corr, body);
        self.written += frame.len() as u64 + 4;
        self.writer.write(frame);
    }

    /// Requests sent on this link and not answered yet.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Bytes written to this link that the kernel has not taken yet.
    fn unsent(&self) -> u64 {
        self.written.saturating_sub(self.taken.get())
    }

    /// The peer stopped reading and the link holds more than its byte bound: cut it. The
    /// requests waiting on it fail now (their callers resend or hand off), and the peer is
    /// caught up when a link comes back (it pulls what it missed on reconnection).
    fn cut_if_overflowed(&mut self, ctx: &mut Context<Self>) {
        self.report_unsent();
        if !self.overflowed {
            return;
        }
        self.cluster().counters.peer_error(PeerError::Backlog);
        let suppressed = self.cluster().may_log("backlog");
        ev::LinkBacklogCut {
            unsent_bytes: self.unsent(),
            bound_bytes: self.node.config.cluster_link_buffer,
            suppressed: suppressed.unwrap_or(0),
            err: ErrField::new(
                PeerError::Backlog.code(),
                "the link's byte bound was reached",
            ),
        }
        .emit_if(&self.log, suppressed.is_some());
        ctx.stop();
    }

    /// Moves the node-wide gauge of unsent peer bytes by this link's change.
    fn report_unsent(&mut self) {
        let now = i64::try_from(self.unsent()).unwrap_or(i64::MAX);
        let delta = now - self.reported_unsent;
        if delta != 0 {
            self.cluster()
                .counters
                .link_unsent
                .fetch_add(delta, AtomicOrdering::Relaxed);
            self.reported_unsent = now;
        }
    }

    /// This node's HELLO: with a cluster secret it carries this side's nonce, and the
    /// listener's answer its `proofs`.
    fn hello(&self, proofs: Vec<Vec<u8>>) -> Bytes {
        wire::body(&Hello {
            magic: PEER_MAGIC.into(),
            version: PEER_VERSION,
            node_id: self.cluster().node_id.clone(),
            generation: self.cluster().generation(),
            placement: self.cluster().placement.to_string(),
            nonce: self
                .cluster()
                .keys
                .as_ref()
                .map(|_| ByteBuf::from(self.nonce.to_vec())),
            proofs: proofs.into_iter().map(ByteBuf::from).collect(),
        })
    }

    /// Whether a refusal for `reason` may be logged now: a peer refused for the cluster secret
    /// once a minute per address, anything else once per 10 s per reason.
    fn may_log_refusal(&self, reason: PeerError) -> Option<u64> {
        match (reason, self.remote_ip) {
            (PeerError::Auth, Some(ip)) => self.cluster().may_log_refused(ip, "auth"),
            _ => self.cluster().may_log(reason.code()),
        }
    }

    fn refuse(&mut self, ctx: &mut Context<Self>, reason: PeerError, detail: String) {
        self.cluster().counters.peer_error(reason);
        let suppressed = self.may_log_refusal(reason);
        ev::PeerRefused {
            reason: reason.code(),
            detail: &detail,
            suppressed: suppressed.unwrap_or(0),
            err: ErrField::new(reason.code(), &detail),
        }
        .emit_if(&self.log, suppressed.is_some());
        let body = wire::body(&Refused {
            reason: format!("{}: {detail}", reason.code()),
        });
        self.send_frame(Kind::Refused, 0, &body);
        self.writer.close();
        // Stopping at once would drop the REFUSED frame unsent; nothing more is read meanwhile.
        self.refused = true;
        ctx.run_later(REFUSE_FLUSH, |_, ctx| ctx.stop());
    }

    fn register(&mut self, waiter: Waiter) -> u64 {
        let corr = self.next_corr;
        self.next_corr += 1;
        self.pending.insert(
            corr,
            Pending {
                waiter,
                sent: Instant::now(),
            },
        );
        corr
    }

    fn on_hello(&mut self, frame: Frame, ctx: &mut Context<Self>) {
        let hello: Hello = match wire::decode(&frame.body) {
            Ok(h) => h,
            Err(e) => return self.refuse(ctx, PeerError::BadHello, e.to_string()),
        };
        if hello.magic != PEER_MAGIC {
            return self.refuse(ctx, PeerError::BadHello, format!("magic {:?}", hello.magic));
        }
        if hello.version != PEER_VERSION {
            return self.refuse(
                ctx,
                PeerError::Version,
                format!(
                    "peer speaks version {}, this node {PEER_VERSION}",
                    hello.version
                ),
            );
        }
        let placement = self.cluster().placement.to_string();
        if hello.placement != placement {
            return self.refuse(
                ctx,
                PeerError::Placement,
                format!(
                    "peer keeps {} placement, this node {placement}",
                    hello.placement
                ),
            );
        }
        if hello.node_id == self.cluster().node_id
            && hello.generation != self.cluster().generation()
        {
            return self.refuse(
                ctx,
                PeerError::NodeIdClash,
                format!("another process uses node id {:?}", hello.node_id),
            );
        }
        let keys = self.cluster().keys.clone();
        match (&self.direction, keys) {
            (Direction::Inbound { .. }, Some(keys)) => {
                let Some(nd) = hello
                    .nonce
                    .as_ref()
                    .filter(|n| n.len() == secret::NONCE_LEN)
                else {
                    return self.refuse(
                        ctx,
                        PeerError::Auth,
                        "the peer proves no cluster secret (it has none set)".into(),
                    );
                };
                let proofs =
                    keys.accept_proofs(nd, &self.nonce, &self.cluster().node_id, &hello.node_id);
                let body = self.hello(proofs);
                self.send_frame(Kind::Hello, 0, &body);
                self.awaiting_auth = Some(hello);
            }
            (Direction::Inbound { .. }, None) if hello.nonce.is_some() => self.refuse(
                ctx,
                PeerError::Auth,
                "the peer has a cluster secret and this node none".into(),
            ),
            (Direction::Inbound { .. }, None) => {
                let body = self.hello(Vec::new());
                self.send_frame(Kind::Hello, 0, &body);
                self.accepted_inbound(hello);
            }
            (Direction::SecretProbe, keys) => {
                let me = self.cluster().node_id.clone();
                let shared = match (keys, &hello.nonce) {
                    (Some(keys), Some(nl)) => keys.accept_verifies(
                        &hello.proofs[..hello.proofs.len().min(2)],
                        &self.nonce,
                        nl,
                        &hello.node_id,
                        &me,
                    ),
                    (None, None) => true,
                    _ => false,
                };
                if shared {
                    debug!(self.log, "seed shares the cluster secret"; "seed" => &hello.node_id);
                } else {
                    self.cluster().counters.peer_error(PeerError::Auth);
                    let suppressed = self.may_log_refusal(PeerError::Auth);
                    ev::SeedSecretDiffers {
                        seed: &hello.node_id,
                        suppressed: suppressed.unwrap_or(0),
                        err: ErrField::new(
                            PeerError::Auth.code(),
                            "the seed's proof does not match any cluster secret of this node",
                        ),
                    }
                    .emit_if(&self.log, suppressed.is_some());
                }
                ctx.stop();
            }
            (
                Direction::Outbound {
                    node_id,
                    generation,
                    manager,
                },
                keys,
            ) => {
                if let Err(detail) = check_answer(node_id, *generation, &hello) {
                    return self.refuse(ctx, PeerError::BadHello, detail);
                }
                let (node_id, manager) = (node_id.clone(), manager.clone());
                match (keys, &hello.nonce) {
                    (Some(keys), Some(nl)) => {
                        let me = self.cluster().node_id.clone();
                        if !keys.accept_verifies(
                            &hello.proofs[..hello.proofs.len().min(2)],
                            &self.nonce,
                            nl,
                            &node_id,
                            &me,
                        ) {
                            return self.refuse(
                                ctx,
                                PeerError::Auth,
                                "the peer did not prove this node's cluster secret: the secrets differ".into(),
                            );
                        }
                        let proofs = keys.dial_proofs(nl, &self.nonce, &me, &node_id);
                        let body = wire::body(&wire::Auth {
                            proofs: proofs.into_iter().map(ByteBuf::from).collect(),
                        });
                        self.send_frame(Kind::Auth, 0, &body);
                    }
                    (Some(_), None) => {
                        return self.refuse(
                            ctx,
                            PeerError::Auth,
                            "the peer proves no cluster secret (it has none set)".into(),
                        )
                    }
                    (None, Some(_)) => {
                        return self.refuse(
                            ctx,
                            PeerError::Auth,
                            "the peer has a cluster secret and this node none".into(),
                        )
                    }
                    (None, None) => {}
                }
                manager.do_send(LinkUp {
                    node_id: node_id.clone(),
                    generation: hello.generation,
                    link: Mailbox::new(
                        ctx.address(),
                        self.stats.tap(),
                        self.node.metrics.dead_letters(),
                    ),
                });
                ev::LinkUp {
                    peer: &node_id,
                    generation: hello.generation,
                }
                .emit(&self.log);
                self.greet(hello);
            }
        }
    }

    /// The dialler's AUTH: its proof of the cluster secret, checked against this side's nonce.
    fn on_auth(&mut self, hello: Hello, frame: Frame, ctx: &mut Context<Self>) {
        let (Some(keys), Some(nd)) = (self.cluster().keys.clone(), hello.nonce.as_ref()) else {
            return self.refuse(ctx, PeerError::Auth, "AUTH without a challenge".into());
        };
        let proven = wire::decode::<wire::Auth>(&frame.body).is_ok_and(|auth| {
            keys.dial_verifies(
                &auth.proofs[..auth.proofs.len().min(2)],
                &self.nonce,
                nd,
                &hello.node_id,
                &self.cluster().node_id,
            )
        });
        if !proven {
            return self.refuse(
                ctx,
                PeerError::Auth,
                "the peer did not prove this node's cluster secret: the secrets differ".into(),
            );
        }
        self.accepted_inbound(hello);
    }

    /// An inbound peer is in: the manager schedules its catch-up, live interest goes to it.
    fn accepted_inbound(&mut self, hello: Hello) {
        let Direction::Inbound { manager, count } = &self.direction else {
            return;
        };
        let manager = manager.clone();
        count.handshaking.fetch_sub(1, AtomicOrdering::Relaxed);
        self.cluster().peer_connected(&hello.node_id);
        if self.cluster().partitioned() {
            let interest = super::live::interest_body(&self.node);
            self.send_frame(Kind::Interest, 0, &interest);
        }
        debug!(self.log, "peer connected"; "peer" => &hello.node_id,
            "generation" => hello.generation);
        manager.do_send(PeerConnected {
            node_id: hello.node_id.clone(),
            generation: hello.generation,
        });
        self.greet(hello);
    }

    /// The handshake is over: frames of any allowed size and every kind are read from now on.
    fn greet(&mut self, hello: Hello) {
        self.log = self.log.new(slog::o!("peer" => hello.node_id.clone()));
        self.stats.set_name(Arc::from(hello.node_id.as_str()));
        self.peer = Some(hello.node_id);
        self.greeted.set(true);
    }

    fn on_frame(&mut self, frame: Frame, ctx: &mut Context<Self>) {
        if self.peer.is_none() {
            if let Some(hello) = self.awaiting_auth.take() {
                return match frame.kind {
                    Kind::Auth => self.on_auth(hello, frame, ctx),
                    Kind::Refused => self.refused_by_peer(&frame, ctx),
                    other => self.refuse(ctx, PeerError::Auth, format!("{other:?} before AUTH")),
                };
            }
            return match frame.kind {
                Kind::Hello => self.on_hello(frame, ctx),
                Kind::Refused => self.refused_by_peer(&frame, ctx),
                other => self.refuse(ctx, PeerError::BadHello, format!("{other:?} before HELLO")),
            };
        }
        match frame.kind {
            Kind::WriteForward | Kind::WriteReplicate => self.serve_write(frame, ctx),
            Kind::Pull => self.serve_pull(frame, ctx),
            Kind::PullMore => self.granted(frame),
            Kind::Query => self.serve_query(frame, ctx),
            Kind::SyncRead => self.serve_sync(frame, ctx),
            Kind::Topic => self.serve_topic(frame),
            Kind::Digests => self.serve_digests(frame, ctx),
            Kind::Repair => self.serve_repair(frame),
            Kind::Interest | Kind::Events => self.live_from_peer(frame),
            Kind::WriteDone
            | Kind::PullChunk
            | Kind::PullDone
            | Kind::QueryDone
            | Kind::SyncDone
            | Kind::DigestsDone => self.answered(frame),
            Kind::Refused => self.refused_by_peer(&frame, ctx),
            Kind::Hello => self.refuse(ctx, PeerError::BadHello, "second HELLO".into()),
            Kind::Auth => self.refuse(ctx, PeerError::BadHello, "AUTH after the handshake".into()),
        }
    }

    /// The peer refused this node (another version, a clash): log why and close.
    fn refused_by_peer(&mut self, frame: &Frame, ctx: &mut Context<Self>) {
        let why = wire::decode::<Refused>(&frame.body).map_or_else(|e| e.to_string(), |r| r.reason);
        if why.starts_with("auth") {
            // The other side of a secret mismatch: this node's operator must hear it as well.
            self.cluster().counters.peer_error(PeerError::Auth);
            let suppressed = self.may_log_refusal(PeerError::Auth);
            ev::RefusedForSecret {
                reason: &why,
                suppressed: suppressed.unwrap_or(0),
                err: ErrField::new(PeerError::Auth.code(), &why),
            }
            .emit_if(&self.log, suppressed.is_some());
        } else {
            let suppressed = self.cluster().may_log("refused_by_peer");
            ev::RefusedByPeer {
                reason: &why,
                suppressed: suppressed.unwrap_or(0),
                err: ErrField::new("refused_by_peer", &why),
            }
            .emit_if(&self.log, suppressed.is_some());
        }
        ctx.stop();
    }

    fn answered(&mut self, frame: Frame) {
        let last = frame.kind != Kind::PullChunk;
        let Some(p) = self.pending.get(&frame.corr) else {
            // Timed out already: the caller has its answer.
            return;
        };
        if frame.kind == Kind::WriteDone {
            self.cluster().counters.observe_lag(p.sent.elapsed());
        }
        let reply = Reply {
            kind: frame.kind,
            body: frame.body,
        };
        if !last {
            if let Waiter::Stream(tx) = &p.waiter {
                let _ = tx.send(reply);
            }
            if let Some(p) = self.pending.get_mut(&frame.corr) {
                // Chunks keep a pull alive: the timeout is for silence, not for its size.
                p.sent = Instant::now();
            }
            return;
        }
        if let Some(p) = self.pending.remove(&frame.corr) {
            match p.waiter {
                Waiter::Once(tx) => {
                    let _ = tx.send(reply);
                }
                Waiter::Stream(tx) => {
                    let _ = tx.send(reply);
                }
                Waiter::Untracked => {}
            }
        }
    }

    fn serve_write(&mut self, frame: Frame, ctx: &mut Context<Self>) {
        let corr = frame.corr;
        let forwarded = frame.kind == Kind::WriteForward;
        let write: wire::Write = match wire::decode(&frame.body) {
            Ok(w) => w,
            Err(e) => {
                self.cluster().counters.peer_error(PeerError::BadFrame);
                ev::UndecodableWrite {
                    err: ErrField::new(PeerError::BadFrame.code(), &e),
                }
                .emit(&self.log);
                let done = wire::WriteDone {
                    rejected: Vec::new(),
                    failure: Some(format!("undecodable write: {e}")),
                };
                self.send_frame(Kind::WriteDone, corr, &wire::body(&done));
                return;
            }
        };
        let trace = write.trace.clone();
        let ops = write.ops.len();
        let role = if forwarded {
            "owner"
        } else {
            replication::replica_role(self.cluster(), &write.ops)
        };
        let counters = &self.cluster().counters;
        match role {
            "owner" => &counters.applied_owner,
            "backup" => &counters.applied_backup,
            _ => &counters.applied_replica,
        }
        .fetch_add(ops as u64, std::sync::atomic::Ordering::Relaxed);
        let applied = if forwarded {
            futures_util::future::Either::Left(replication::own(&self.node, frame.body, write))
        } else {
            futures_util::future::Either::Right(replication::replica(&self.node, write))
        };
        ctx.spawn(applied.into_actor(self).map(move |done, act, _| {
            debug!(act.log, "write applied for peer";
                "requestId" => trace.request_id.as_deref(), "originNodeId" => &trace.origin_node_id,
                "clientId" => &trace.client_id, "role" => role, "ops" => ops,
                "durable" => done.failure.is_none(), "failure" => done.failure.as_deref());
            if corr != 0 {
                act.send_frame(Kind::WriteDone, corr, &wire::body(&done));
            }
        }));
    }

    fn serve_pull(&mut self, frame: Frame, ctx: &mut Context<Self>) {
        let corr = frame.corr;
        let pull: wire::Pull = match wire::decode(&frame.body) {
            Ok(p) => p,
            Err(e) => {
                self.cluster().counters.peer_error(PeerError::BadFrame);
                let done = wire::PullDone {
                    records: 0,
                    failure: Some(format!("undecodable pull: {e}")),
                };
                self.send_frame(Kind::PullDone, corr, &wire::body(&done));
                return;
            }
        };
        self.exports.retain(|_, grants| !grants.is_closed());
        if self.exports.len() >= MAX_EXPORTS {
            // A peer pulls one stream at a time per purpose; more is a peer gone wrong, and
            // each export holds a pass of keys.
            self.cluster().counters.peer_error(PeerError::BadFrame);
            let done = wire::PullDone {
                records: 0,
                failure: Some(format!("more than {MAX_EXPORTS} pulls at once")),
            };
            self.send_frame(Kind::PullDone, corr, &wire::body(&done));
            return;
        }
        let (grants, granted) = mpsc::unbounded_channel();
        self.exports.insert(corr, grants);
        let stall = self.cluster().timeout * 2;
        actix_rt::spawn(stream_export(
            self.node.clone(),
            ctx.address(),
            corr,
            pull,
            granted,
            stall,
            self.log.clone(),
        ));
    }

    /// A `PULL_MORE` of a pull this connection serves (one that ended is ignored).
    fn granted(&mut self, frame: Frame) {
        match wire::decode::<wire::PullMore>(&frame.body) {
            Ok(more) => {
                if let Some(grants) = self.exports.get(&frame.corr) {
                    let _ = grants.send(more.granted);
                }
            }
            Err(e) => {
                self.cluster().counters.peer_error(PeerError::BadFrame);
                debug!(self.log, "undecodable PULL_MORE from peer"; "err" => err_kv(PeerError::BadFrame.code(), &e));
            }
        }
    }

    fn serve_query(&mut self, frame: Frame, ctx: &mut Context<Self>) {
        let corr = frame.corr;
        let query: wire::Query = match wire::decode(&frame.body) {
            Ok(q) => q,
            Err(e) => {
                self.cluster().counters.peer_error(PeerError::BadFrame);
                let done = wire::QueryDone {
                    table_version: self.cluster().table().version,
                    error: Some(format!("undecodable query: {e}")),
                    ..wire::QueryDone::default()
                };
                self.send_frame(Kind::QueryDone, corr, &wire::body(&done));
                return;
            }
        };
        let served = super::gather::serve(self.node.clone(), query);
        ctx.spawn(served.into_actor(self).map(move |done, act, _| {
            let body = bounded(&done, |why| wire::QueryDone {
                table_version: done.table_version,
                error: Some(format!("{why}: ask for fewer rows (limit) or fields")),
                ..wire::QueryDone::default()
            });
            act.send_frame(Kind::QueryDone, corr, &body);
        }));
    }

    fn serve_sync(&mut self, frame: Frame, ctx: &mut Context<Self>) {
        let corr = frame.corr;
        let read: wire::SyncRead = match wire::decode(&frame.body) {
            Ok(r) => r,
            Err(e) => {
                self.cluster().counters.peer_error(PeerError::BadFrame);
                let done = wire::SyncDone {
                    table_version: self.cluster().table().version,
                    error: Some(format!("undecodable sync read: {e}")),
                    ..wire::SyncDone::default()
                };
                self.send_frame(Kind::SyncDone, corr, &wire::body(&done));
                return;
            }
        };
        let served = super::gather::serve_sync(self.node.clone(), read);
        ctx.spawn(served.into_actor(self).map(move |done, act, _| {
            let body = bounded(&done, |why| wire::SyncDone {
                table_version: done.table_version,
                error: Some(why),
                ..wire::SyncDone::default()
            });
            act.send_frame(Kind::SyncDone, corr, &body);
        }));
    }

    fn live_from_peer(&mut self, frame: Frame) {
        let Some(peer) = self.peer.clone() else {
            return;
        };
        let decoded = match frame.kind {
            Kind::Interest => wire::decode(&frame.body)
                .map(|i| super::live::interest_received(&self.node, &peer, i)),
            _ => wire::decode(&frame.body).map(|e| super::live::events_received(&self.node, e)),
        };
        if let Err(e) = decoded {
            self.cluster().counters.peer_error(PeerError::BadFrame);
            debug!(self.log, "undecodable live message from peer"; "kind" => ?frame.kind,
                "err" => err_kv(PeerError::BadFrame.code(), &e));
        }
    }

    /// Anti-entropy: this node's digests of the asked partitions it holds and finished pulling.
    fn serve_digests(&mut self, frame: Frame, ctx: &mut Context<Self>) {
        let corr = frame.corr;
        let asked: wire::Partitions = match wire::decode(&frame.body) {
            Ok(a) => a,
            Err(e) => {
                self.cluster().counters.peer_error(PeerError::BadFrame);
                debug!(self.log, "undecodable digests request"; "err" => err_kv(PeerError::BadFrame.code(), &e));
                let empty = wire::body(&wire::DigestsDone::default());
                self.send_frame(Kind::DigestsDone, corr, &empty);
                return;
            }
        };
        let node = self.node.clone();
        let served = async move {
            let held = super::antientropy::settled_holdings(&node, &asked.partitions);
            super::antientropy::local_digests(&node, &held).await
        };
        ctx.spawn(served.into_actor(self).map(move |digests, act, _| {
            let body = wire::body(&wire::DigestsDone { digests });
            act.send_frame(Kind::DigestsDone, corr, &body);
        }));
    }

    /// Anti-entropy: the peer merged our copy of these partitions; merge its copy here.
    fn serve_repair(&mut self, frame: Frame) {
        let Some(peer) = self.peer.clone() else {
            return;
        };
        match wire::decode::<wire::Partitions>(&frame.body) {
            Ok(asked) => {
                actix_rt::spawn(super::antientropy::repaired_by(
                    self.node.clone(),
                    peer,
                    asked.partitions,
                ));
            }
            Err(e) => {
                self.cluster().counters.peer_error(PeerError::BadFrame);
                debug!(self.log, "undecodable repair request"; "err" => err_kv(PeerError::BadFrame.code(), &e));
            }
        }
    }

    fn serve_topic(&mut self, frame: Frame) {
        let topic: wire::Topic = match wire::decode(&frame.body) {
            Ok(t) => t,
            Err(e) => {
                self.cluster().counters.peer_error(PeerError::BadFrame);
                debug!(self.log, "undecodable topic from peer"; "err" => err_kv(PeerError::BadFrame.code(), &e));
                return;
            }
        };
        let queue = &self.node.queue;
        queue.stripes[queue.stripe_of_topic(&topic.topic)]
            .mailbox
            .do_send(TopicPublish {
                topic: Arc::from(topic.topic),
                data: topic.data,
                // No local connection published it: every local subscriber gets it.
                publisher: 0,
            });
    }

    /// Drops requests nobody can still be waiting for (callers time out after at most twice
    /// the cluster timeout; a pull fails after that much silence), and reports the oldest wait
    /// as replication lag.
    fn sweep(&mut self) {
        let timeout = self.cluster().timeout * 2;
        let mut expired = Vec::new();
        self.exports.retain(|_, grants| !grants.is_closed());
        for (corr, p) in &self.pending {
            let waited = p.sent.elapsed();
            if !matches!(p.waiter, Waiter::Stream(_)) {
                self.cluster().counters.observe_lag(waited);
            }
            if waited >= timeout {
                expired.push(*corr);
            }
        }
        for corr in expired {
            if let Some(p) = self.pending.remove(&corr) {
                // Write callers count their own timeouts; a pull has no other clock.
                if matches!(p.waiter, Waiter::Stream(_)) {
                    self.cluster().counters.peer_error(PeerError::Timeout);
                }
            }
        }
    }
}

impl PeerConn {
    /// A frame begun and then left without a byte for the cluster timeout ends the connection.
    fn end_a_stalled_frame(&mut self, ctx: &mut Context<Self>) {
        let timeout = self.cluster().timeout;
        if self
            .stalled_since
            .get()
            .is_some_and(|since| since.elapsed() >= timeout)
        {
            self.cluster().counters.peer_error(PeerError::Timeout);
            debug!(self.log, "peer connection closed: a frame stalled";
                "err" => err_kv("timeout", format!("no byte of an incomplete frame for {} ms", timeout.as_millis())));
            ctx.stop();
        }
    }
}

impl Actor for PeerConn {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        if let Direction::Outbound { .. } | Direction::SecretProbe = self.direction {
            let body = self.hello(Vec::new());
            self.send_frame(Kind::Hello, 0, &body);
        }
        // A connection that never completes its handshake (a silent dialler, a peer that
        // accepted and froze) is not held: an outbound one is dialled again.
        ctx.run_later(self.cluster().timeout, |act, ctx| {
            if act.peer.is_none() && !act.refused {
                act.cluster().counters.peer_error(PeerError::Timeout);
                debug!(act.log, "peer handshake timed out");
                ctx.stop();
            }
        });
        ctx.run_interval(SWEEP_EVERY, |act, ctx| {
            act.sweep();
            act.end_a_stalled_frame(ctx);
            act.cut_if_overflowed(ctx);
        });
        let every = self.node.config.report_interval;
        ctx.run_interval(every, |act, _| {
            if act.stats.is_dirty() {
                let report = StatsOnly(act.stats.take());
                act.node.metrics.do_send(Reported(Box::new(report)));
            }
        });
    }

    fn stopped(&mut self, ctx: &mut Context<Self>) {
        // What is still buffered goes with the connection.
        self.written = self.taken.get();
        self.report_unsent();
        let waiting = self.pending.len();
        self.pending.clear();
        if let Direction::Inbound { count, .. } = &self.direction {
            count.total.fetch_sub(1, AtomicOrdering::Relaxed);
            if self.peer.is_none() {
                count.handshaking.fetch_sub(1, AtomicOrdering::Relaxed);
            }
        }
        if let Direction::Outbound {
            node_id, manager, ..
        } = &self.direction
        {
            manager.do_send(LinkDown {
                node_id: node_id.clone(),
                link: ctx.address(),
            });
        }
        debug!(self.log, "peer connection closed"; "failedRequests" => waiting);
        self.node
            .metrics
            .do_send(Reported(Box::new(StatsOnly(self.stats.take_final()))));
    }
}

// Writers reach a link through a `Mailbox` (`ClusterState::link`): their messages arrive timed.
crate::telemetry::mailbox::mailbox_handlers!(PeerConn, stats);

impl StreamHandler<Result<BytesMut, std::io::Error>> for PeerConn {
    fn handle(&mut self, item: Result<BytesMut, std::io::Error>, ctx: &mut Context<Self>) {
        if self.refused {
            return;
        }
        let t0 = self.stats.begin_item();
        match item {
            Ok(payload) => match wire::parse(payload.freeze()) {
                Ok(frame) => self.on_frame(frame, ctx),
                Err(e) => {
                    let detail = e.to_string();
                    self.refuse(ctx, e.code(), detail);
                }
            },
            Err(e) => {
                // An oversized length prefix or a reset: the stream cannot be trusted further.
                let reason = if e.kind() == std::io::ErrorKind::InvalidData {
                    PeerError::BadFrame
                } else {
                    PeerError::Lost
                };
                self.cluster().counters.peer_error(reason);
                debug!(self.log, "peer connection failed"; "err" => err_kv(reason.code(), &e));
                ctx.stop();
            }
        }
        self.stats.end(t0);
    }

    fn finished(&mut self, ctx: &mut Context<Self>) {
        if self.peer.is_some() && matches!(self.direction, Direction::Outbound { .. }) {
            self.cluster().counters.peer_error(PeerError::Lost);
        }
        ctx.stop();
    }
}

impl WriteHandler<std::io::Error> for PeerConn {
    fn error(&mut self, err: std::io::Error, _: &mut Context<Self>) -> Running {
        self.cluster().counters.peer_error(PeerError::Lost);
        debug!(self.log, "peer write failed"; "err" => err_kv("lost", &err));
        Running::Stop
    }
}

impl Handler<Call> for PeerConn {
    type Result = ResponseFuture<Result<Reply, ClusterError>>;

    fn handle(&mut self, msg: Call, _: &mut Context<Self>) -> Self::Result {
        let t0 = self.stats.begin_item();
        let (tx, rx) = oneshot::channel();
        let corr = self.register(Waiter::Once(tx));
        self.send_frame(msg.kind, corr, &msg.body);
        self.stats.end(t0);
        let peer = Peer::node(self.peer.as_deref().unwrap_or_default());
        Box::pin(async move { rx.await.map_err(|_| ClusterError::Unanswered { peer }) })
    }
}

impl Handler<CallStream> for PeerConn {
    type Result = MessageResult<CallStream>;

    fn handle(&mut self, msg: CallStream, _: &mut Context<Self>) -> Self::Result {
        let t0 = self.stats.begin_item();
        let (tx, rx) = mpsc::unbounded_channel();
        let corr = self.register(Waiter::Stream(tx));
        self.send_frame(msg.kind, corr, &msg.body);
        self.stats.end(t0);
        MessageResult((corr, rx))
    }
}

impl Handler<Grant> for PeerConn {
    type Result = ();

    fn handle(&mut self, msg: Grant, _: &mut Context<Self>) {
        let t0 = self.stats.begin_item();
        let body = wire::body(&wire::PullMore {
            granted: msg.granted,
        });
        self.send_frame(Kind::PullMore, msg.corr, &body);
        self.stats.end(t0);
    }
}

impl Handler<Answer> for PeerConn {
    type Result = ();

    fn handle(&mut self, msg: Answer, _: &mut Context<Self>) {
        let t0 = self.stats.begin_item();
        self.send_frame(msg.kind, msg.corr, &msg.body);
        self.stats.end(t0);
    }
}

/// Reads the chunks of `partitions` into `out` until the export ends, fails, or nobody reads.
async fn read_chunks(
    node: Arc<DataPlane>,
    partitions: Vec<u16>,
    out: mpsc::Sender<Result<Option<super::export::Chunk>, ClusterError>>,
) {
    let mut exporter = match super::export::Exporter::new(node, &partitions).await {
        Ok(e) => e,
        Err(f) => {
            let _ = out.send(Err(f)).await;
            return;
        }
    };
    loop {
        let next = exporter.next().await;
        let more = matches!(next, Ok(Some(_)));
        if out.send(next).await.is_err() || !more {
            return;
        }
    }
}

/// Serves a pull: the partitions' chunks, at most the granted number ahead of the puller
/// (it grants one per chunk merged), then `PULL_DONE`. A puller that grants nothing for
/// `stall` is given up on; a closed connection ends the export.
async fn stream_export(
    node: Arc<DataPlane>,
    conn: Addr<PeerConn>,
    corr: u64,
    pull: wire::Pull,
    mut granted: mpsc::UnboundedReceiver<u32>,
    stall: Duration,
    log: Logger,
) {
    let t0 = Instant::now();
    let mut credit = u64::from(pull.window.clamp(1, MAX_WINDOW));
    let mut records = 0u64;
    // The next chunk is read while this one waits for its grant and goes out.
    let (read_ahead, mut chunks) = mpsc::channel(1);
    actix_rt::spawn(read_chunks(node, pull.partitions.clone(), read_ahead));
    let failure = loop {
        let chunk = match chunks.recv().await {
            Some(Ok(Some(chunk))) => chunk,
            Some(Ok(None)) => break None,
            Some(Err(f)) => break Some(f),
            None => break Some(ClusterError::ExportStopped),
        };
        while credit == 0 {
            match tokio::time::timeout(stall, granted.recv()).await {
                Ok(Some(n)) => credit += u64::from(n),
                // The connection is gone: nobody to answer.
                Ok(None) => return,
                Err(_) => break,
            }
        }
        if credit == 0 {
            break Some(ClusterError::PullerStalled {
                ms: stall.as_millis(),
            });
        }
        credit -= 1;
        records += chunk.ops.len() as u64;
        let body = wire::body(&wire::PullChunk {
            partition: chunk.partition,
            ops: chunk.ops,
            last: chunk.last,
        });
        let answer = Answer {
            kind: Kind::PullChunk,
            corr,
            body,
        };
        if conn.send(answer).await.is_err() {
            return;
        }
    };
    // A string on the wire: the puller may run another version.
    let done = wire::PullDone {
        records,
        failure: failure.as_ref().map(ToString::to_string),
    };
    let _ = conn
        .send(Answer {
            kind: Kind::PullDone,
            corr,
            body: wire::body(&done),
        })
        .await;
    match failure {
        None => ev::PartitionsSent {
            partitions: pull.partitions.len(),
            records,
            took_ms: t0.elapsed().as_millis() as u64,
        }
        .emit(&log),
        Some(f) => ev::PartitionsNotSent {
            partitions: pull.partitions.len(),
            records,
            err: ErrField::new(f.code(), &f),
        }
        .emit(&log),
    }
}

impl Handler<Notify> for PeerConn {
    type Result = ();

    fn handle(&mut self, msg: Notify, _: &mut Context<Self>) {
        let t0 = self.stats.begin_item();
        let corr = self.register(Waiter::Untracked);
        self.send_frame(msg.kind, corr, &msg.body);
        self.stats.end(t0);
    }
}

impl Handler<Cast> for PeerConn {
    type Result = ();

    fn handle(&mut self, msg: Cast, _: &mut Context<Self>) {
        let t0 = self.stats.begin_item();
        self.send_frame(msg.kind, 0, &msg.body);
        self.stats.end(t0);
    }
}

/// A peer that vanishes without closing (a cut network, a host gone) must end its links, or
/// writes wait on a dead connection until they time out, one after another, and the link is
/// never redialled: TCP keepalive probes an idle link within seconds, and `TCP_USER_TIMEOUT`
/// ends one whose data stays unacknowledged for the cluster timeout.
fn watch_liveness(stream: &TcpStream, timeout: Duration) {
    let socket = socket2::SockRef::from(stream);
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL);
    #[cfg(target_os = "linux")]
    let keepalive = keepalive.with_retries(KEEPALIVE_PROBES);
    let _ = socket.set_tcp_keepalive(&keepalive);
    #[cfg(target_os = "linux")]
    let _ = socket.set_tcp_user_timeout(Some(timeout.max(Duration::from_secs(1))));
    #[cfg(not(target_os = "linux"))]
    let _ = timeout;
}

/// Accepts peer connections on the cluster's TCP listener, one `PeerConn` each, within
/// [`MAX_HANDSHAKING`] and [`MAX_INBOUND`]; a connection beyond is closed at once and counted
/// (`capacity`). An accept error (out of descriptors) is counted, logged at most once per
/// 10 s, and backs off from 10 ms to 1 s.
pub async fn accept_peers(
    listener: tokio::net::TcpListener,
    node: Arc<DataPlane>,
    manager: Addr<ClusterActor>,
) {
    const FIRST_BACKOFF: Duration = Duration::from_millis(10);
    const MAX_BACKOFF: Duration = Duration::from_secs(1);
    let count = Arc::new(InboundCount::default());
    let mut backoff = FIRST_BACKOFF;
    loop {
        match listener.accept().await {
            Ok((stream, from)) => {
                backoff = FIRST_BACKOFF;
                let handshaking = count.handshaking.load(AtomicOrdering::Relaxed);
                let total = count.total.load(AtomicOrdering::Relaxed);
                if handshaking >= MAX_HANDSHAKING || total >= MAX_INBOUND {
                    node.cluster.counters.peer_error(PeerError::Capacity);
                    let suppressed = node.cluster.may_log("capacity");
                    let why = format_args!(
                        "{handshaking} connections in their handshake (at most \
                         {MAX_HANDSHAKING}), {total} in all (at most {MAX_INBOUND})"
                    );
                    ev::TooManyConnections {
                        from: Shown(&from),
                        suppressed: suppressed.unwrap_or(0),
                        err: ErrField::new(PeerError::Capacity.code(), why),
                    }
                    .emit_if(&node.log, suppressed.is_some());
                    drop(stream);
                    continue;
                }
                count.total.fetch_add(1, AtomicOrdering::Relaxed);
                count.handshaking.fetch_add(1, AtomicOrdering::Relaxed);
                let direction = Direction::Inbound {
                    manager: manager.clone(),
                    count: count.clone(),
                };
                let node = node.clone();
                actix_rt::spawn(async move {
                    match PeerStream::establish(&node.cluster, stream, false).await {
                        Ok(stream) => {
                            PeerConn::start(node, stream, direction);
                        }
                        Err(TlsFailure(e)) => {
                            if let Direction::Inbound { count, .. } = direction {
                                count.total.fetch_sub(1, AtomicOrdering::Relaxed);
                                count.handshaking.fetch_sub(1, AtomicOrdering::Relaxed);
                            }
                            node.cluster.counters.peer_error(PeerError::Tls);
                            let suppressed = node.cluster.may_log_refused(from.ip(), "tls_accept");
                            ev::AcceptTlsFailed {
                                from: Shown(&from),
                                suppressed: suppressed.unwrap_or(0),
                                err: ErrField::new(PeerError::Tls.code(), e),
                            }
                            .emit_if(&node.log, suppressed.is_some());
                        }
                    }
                });
            }
            Err(e) => {
                node.cluster.counters.peer_error(PeerError::Accept);
                let suppressed = node.cluster.may_log("accept");
                ev::AcceptFailed {
                    suppressed: suppressed.unwrap_or(0),
                    retry_in_ms: backoff.as_millis() as u64,
                    err: ErrField::new(PeerError::Accept.code(), e),
                }
                .emit_if(&node.log, suppressed.is_some());
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// The encoded answer, or the error answer `too_big` makes when it would not fit a frame (the
/// asker would close the link on it).
fn bounded<T: serde::Serialize, E: serde::Serialize>(
    answer: &T,
    too_big: impl FnOnce(String) -> E,
) -> Bytes {
    let body = wire::body(answer);
    if body.len() + 9 <= wire::MAX_PEER_FRAME {
        return body;
    }
    wire::body(&too_big(format!(
        "a share of {} MiB is over the {} MiB node-to-node frame limit",
        body.len() >> 20,
        wire::MAX_PEER_FRAME >> 20
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(node_id: &str, generation: u64) -> Hello {
        Hello {
            magic: PEER_MAGIC.into(),
            version: PEER_VERSION,
            node_id: node_id.into(),
            generation,
            placement: "full".into(),
            nonce: None,
            proofs: Vec::new(),
        }
    }

    #[test]
    fn an_outbound_link_accepts_the_member_at_its_generation_or_newer() {
        assert!(check_answer("b", 10, &hello("b", 10)).is_ok());
        // Rejoined as a new generation before this node's membership heard of it.
        assert!(check_answer("b", 10, &hello("b", 11)).is_ok());
        // A stale process, or someone else on the address.
        assert!(check_answer("b", 10, &hello("b", 9)).is_err());
        assert!(check_answer("b", 10, &hello("c", 10)).is_err());
    }
}
