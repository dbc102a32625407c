//! `ConnectionActor`: one per client WebSocket. It reassembles and decodes binary frames,
//! runs the handshake (protocol.md section 3), answers PING, enforces the heartbeat, the auth
//! timeout and the per-connection token bucket, hands data messages on, and writes replies.
//!
//! Every close the node initiates sends a Close frame with a code and a reason: 4001 after
//! AUTH_FAIL, 1000 on timeouts, 1009 for an oversize message, 1002 for a protocol error, 1001
//! on shutdown. Frames are processed strictly in order.
use std::collections::HashSet;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use actix::prelude::*;
use actix_http::ws::Item;
use actix_web_actors::ws::{self, CloseCode, CloseReason, ProtocolError};
use bytes::BytesMut;
use slog::debug;

use super::auth::AuthError;
use super::conn_telemetry::ConnectionTelemetry;
use super::gate::{HandshakeFinished, Register, Unregister, WantsPartitionMap};
use super::jwks::KidUnknown;
use super::pipeline::Pipeline;
use super::requests::Completion;
use super::token_bucket::TokenBucket;
use super::NodeContext;
use crate::net::events::{
    invalid_frame, ClientAuthFailed, ClientAuthenticated, ClientConnected, ClientDisconnected,
    ClientEvicted, ClientRateLimited,
};
use crate::protocol::{self, ClientMessage, ServerMessage};
use crate::queue::actor::ConnectionClosed;
use crate::queue::outbound::{Deliver, Outbound};
use crate::queue::subscriptions::Delivery;
use crate::shard::live::LiveQuery;
use crate::telemetry::report::{Mailbox, Reported};

/// Close the socket with this code/reason and count it under `label`.
struct Close {
    code: u16,
    text: &'static str,
    label: &'static str,
}

const CLOSE_AUTH_FAILED: Close = Close {
    code: 4001,
    text: "authentication failed",
    label: "auth_failed",
};
const CLOSE_AUTH_TIMEOUT: Close = Close {
    code: 1000,
    text: "authentication timeout",
    label: "auth_timeout",
};
const CLOSE_IDLE: Close = Close {
    code: 1000,
    text: "idle timeout",
    label: "idle_timeout",
};
const CLOSE_TOO_BIG: Close = Close {
    code: 1009,
    text: "message too big",
    label: "frame_too_large",
};
const CLOSE_PROTOCOL: Close = Close {
    code: 1002,
    text: "protocol error",
    label: "protocol_error",
};
const CLOSE_SLOW: Close = Close {
    code: 1013,
    text: "slow consumer: reconnect and resync",
    label: "slow_consumer",
};
const CLOSE_RESYNC: Close = Close {
    code: 1013,
    text: "live queries missed changes: reconnect and resync",
    label: "resync",
};
const CLOSE_SHUTDOWN: Close = Close {
    code: 1001,
    text: "server shutting down",
    label: "shutdown",
};

/// The node is stopping: close with 1001.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Shutdown;

/// The partition table changed: a cluster client gets the new map without asking.
#[derive(Message)]
#[rtype(result = "()")]
pub struct PushPartitionMap;

enum AuthState {
    /// JWT mode, no valid AUTH yet.
    Pending,
    Authenticated,
}

pub struct ConnectionActor {
    pub(super) id: u64,
    pub(super) node: Arc<NodeContext>,
    /// Also in every log line of this connection; carried with its writes to other nodes.
    pub(super) client_id: Arc<str>,
    peer: String,
    auth: AuthState,
    last_heartbeat: Instant,
    bucket: TokenBucket,
    /// A fragmented message being reassembled (continuation frames).
    fragments: Option<BytesMut>,
    closing: bool,
    device_acked: bool,
    /// Frames received, for the disconnect log line.
    frames: u64,
    pub(super) tel: ConnectionTelemetry,
    /// Replies leave in request order (see `pipeline`).
    pub(super) pipeline: Pipeline<Completion>,
    pub(super) completions: Option<tokio::sync::mpsc::UnboundedSender<(u64, Completion)>>,
    /// Write batches sent to shards, and how many of them have been applied: the forced sync
    /// waits for the two to meet, while the actor itself is paused.
    pub(super) writes_submitted: u64,
    pub(super) writes_applied: Rc<super::flow::AppliedWrites>,
    pub(super) batches: u64,
    pub(super) outbound: Option<Arc<Outbound>>,
    pub(super) subscriptions: HashSet<Arc<str>>,
    /// Topics this connection subscribed to (counted against --max-topics-per-connection).
    pub(super) topics: HashSet<Arc<str>>,
    /// Live windows of this connection's `limit` queries, by query id.
    pub(super) windows: std::collections::HashMap<Arc<str>, LiveQuery>,
    /// Live grouped (`groupBy`/`aggregations`) queries, by query id.
    pub(super) groups: std::collections::HashMap<Arc<str>, super::grouped::LiveGroups>,
    /// A cluster client: it asked for the partition map once, and gets every new one.
    wants_partition_map: bool,
}

impl ConnectionActor {
    pub fn new(id: u64, peer: String, node: Arc<NodeContext>) -> Self {
        let client_id: Arc<str> = Arc::from(uuid::Uuid::new_v4().to_string());
        let log = node
            .log
            .new(slog::o!("actor" => "connection", "clientId" => client_id.clone()));
        let now = Instant::now();
        // `/debug/actors` names a connection by its clientId once it is authenticated, and by
        // its address until then.
        let name = if node.verifier.is_some() {
            Arc::from(peer.as_str())
        } else {
            client_id.clone()
        };
        ConnectionActor {
            id,
            client_id,
            peer,
            auth: if node.verifier.is_some() {
                AuthState::Pending
            } else {
                AuthState::Authenticated
            },
            last_heartbeat: now,
            bucket: TokenBucket::new(node.config.client_rate, node.config.client_burst, now),
            fragments: None,
            closing: false,
            device_acked: false,
            frames: 0,
            tel: ConnectionTelemetry::new(log, node.config.actor_telemetry, name),
            pipeline: Pipeline::default(),
            completions: None,
            writes_submitted: 0,
            writes_applied: Rc::default(),
            batches: 0,
            outbound: None,
            subscriptions: HashSet::new(),
            topics: HashSet::new(),
            windows: std::collections::HashMap::new(),
            groups: std::collections::HashMap::new(),
            wants_partition_map: false,
            node,
        }
    }

    fn send_partition_map(&mut self, ctx: &mut ws::WebsocketContext<Self>) {
        let map = self.node.cluster.table().to_wire(wall_millis());
        self.send(ctx, &ServerMessage::PartitionMap { payload: map });
    }

    pub(super) fn send(&mut self, ctx: &mut ws::WebsocketContext<Self>, msg: &ServerMessage) {
        ctx.binary(protocol::encode(msg));
    }

    fn close(&mut self, ctx: &mut ws::WebsocketContext<Self>, close: Close) {
        if self.closing {
            return;
        }
        self.closing = true;
        // Shutdown and resync are the node's doing, logged once by whoever decided them.
        if !matches!(close.label, "shutdown" | "client" | "resync") {
            ClientEvicted::new(close.label, close.code).emit_on(&mut self.tel);
        } else {
            self.tel.count_closed(close.label);
        }
        ctx.close(Some(CloseReason {
            code: CloseCode::from(close.code),
            description: Some(close.text.into()),
        }));
        ctx.stop();
    }

    fn report(&mut self, last: bool) {
        if let Some(report) = self.tel.take_report(last) {
            self.node.metrics.do_send(Reported(Box::new(report)));
        }
    }

    fn authenticated(&mut self, ctx: &mut ws::WebsocketContext<Self>, user_id: Option<String>) {
        self.auth = AuthState::Authenticated;
        self.tel.stats.set_name(self.client_id.clone());
        self.last_heartbeat = Instant::now();
        self.node.gate.do_send(HandshakeFinished { id: self.id });
        ClientAuthenticated {
            user_id: user_id.as_deref(),
        }
        .emit_on(&mut self.tel);
        self.send(
            ctx,
            &ServerMessage::AuthAck(protocol::AuthAck {
                user_id,
                ..Default::default()
            }),
        );
    }

    /// One complete binary message.
    fn on_message(&mut self, ctx: &mut ws::WebsocketContext<Self>, frame: &[u8]) {
        let msg = match protocol::decode(frame) {
            Ok(msg) => msg,
            Err(e) => {
                invalid_frame(&mut self.tel, e.code(), &e);
                self.refuse_undecodable(ctx, frame, &e);
                return;
            }
        };
        if matches!(self.auth, AuthState::Pending) {
            self.on_message_before_auth(ctx, msg);
            return;
        }
        let cost = protocol::frame_cost(&msg);
        if !self
            .bucket
            .try_take(cost.min(u64::from(u32::MAX)) as u32, Instant::now())
        {
            ClientRateLimited {
                cost,
                ..Default::default()
            }
            .emit_on(&mut self.tel);
            self.send(
                ctx,
                &ServerMessage::error(429, "rate limit exceeded, slow down"),
            );
            return;
        }
        match msg {
            ClientMessage::Batch(batch) => match protocol::batch_items(&batch.data) {
                Ok(items) => {
                    for item in items {
                        self.on_batch_item(ctx, item);
                    }
                }
                Err(_) => {
                    invalid_frame(&mut self.tel, "batch_too_large", &"more than 8192 items");
                    self.send(
                        ctx,
                        &ServerMessage::error(413, "batch exceeds maximum inner item count"),
                    );
                }
            },
            other => self.dispatch(ctx, other),
        }
    }

    /// A BATCH item is handled as if it were its own frame, except that a BATCH inside a BATCH
    /// is refused (it would let one frame recurse without bound).
    fn on_batch_item(&mut self, ctx: &mut ws::WebsocketContext<Self>, item: &[u8]) {
        match protocol::decode(item) {
            Ok(ClientMessage::Batch(_)) => {
                invalid_frame(&mut self.tel, "malformed", &"BATCH nested in BATCH")
            }
            Ok(msg) => self.dispatch(ctx, msg),
            Err(e) => {
                invalid_frame(&mut self.tel, e.code(), &e);
                self.refuse_undecodable(ctx, item, &e);
            }
        }
    }

    /// Answers a request that did not decode (`protocol::refusal`; the connection stays):
    /// before authentication only an `AUTH` is answered, with `AUTH_FAIL` and a close, as a
    /// wrong token would be; frames the protocol drops stay unanswered (counted all the same).
    fn refuse_undecodable(
        &mut self,
        ctx: &mut ws::WebsocketContext<Self>,
        frame: &[u8],
        error: &protocol::DecodeError,
    ) {
        if matches!(self.auth, AuthState::Pending) {
            if protocol::refusal::is_auth(frame) {
                self.fail_auth(ctx, "malformed");
            }
            return;
        }
        for answer in protocol::refusal::refusal(frame, error) {
            self.send(ctx, &answer);
        }
    }

    fn on_message_before_auth(&mut self, ctx: &mut ws::WebsocketContext<Self>, msg: ClientMessage) {
        let ClientMessage::Auth(auth) = msg else {
            // protocol.md 3.3: before AUTH every other frame (PING and DEVICE_HELLO too) is
            // dropped.
            invalid_frame(&mut self.tel, "before_auth", &msg.tag());
            return;
        };
        let Some(verifier) = &self.node.verifier else {
            return;
        };
        match verifier.verify(&auth.token) {
            Ok(principal) => self.authenticated(ctx, Some(principal.user_id)),
            Err(AuthError::UnknownKid) if verifier.refresher().is_some() => {
                self.verify_after_refresh(ctx, auth.token)
            }
            Err(e) => self.fail_auth(ctx, e.code()),
        }
    }

    /// A token whose `kid` the key set lacks may be signed with a key the IdP published since
    /// the last fetch: ask for a fresh set and check the token again once it is in (the key
    /// actor fetches at most once per `--jwks-min-refresh-interval-ms`; when it will not, the
    /// token is refused as it is). The connection handles nothing else meanwhile (`ctx.wait`),
    /// so frames stay in order; the fetch is bounded by its timeout.
    fn verify_after_refresh(&mut self, ctx: &mut ws::WebsocketContext<Self>, token: String) {
        let Some(refresher) = self.node.verifier.as_ref().and_then(|v| v.refresher()) else {
            return self.fail_auth(ctx, AuthError::UnknownKid.code());
        };
        let asked = refresher.send(KidUnknown);
        let refreshed = async move {
            if let Ok(Some(done)) = asked.await {
                let _ = done.await;
            }
        };
        ctx.wait(refreshed.into_actor(self).map(move |(), act, ctx| {
            let verified = match &act.node.verifier {
                Some(verifier) => verifier.verify(&token),
                None => return,
            };
            match verified {
                Ok(principal) => act.authenticated(ctx, Some(principal.user_id)),
                Err(e) => act.fail_auth(ctx, e.code()),
            }
        }));
    }

    /// A refused AUTH: counted and logged with `reason`, answered `AUTH_FAIL` (the reason is
    /// not told to the client), and the connection closed with 4001.
    fn fail_auth(&mut self, ctx: &mut ws::WebsocketContext<Self>, reason: &'static str) {
        ClientAuthFailed::new(reason).emit_on(&mut self.tel);
        self.send(
            ctx,
            &ServerMessage::AuthFail(protocol::AuthFail {
                error: Some("Authentication failed".into()),
                code: None,
            }),
        );
        self.close(ctx, CLOSE_AUTH_FAILED);
    }

    /// A decoded message of an authenticated connection.
    fn dispatch(&mut self, ctx: &mut ws::WebsocketContext<Self>, msg: ClientMessage) {
        match msg {
            ClientMessage::Ping(ping) => {
                self.last_heartbeat = Instant::now();
                let reply = ServerMessage::pong(ping.timestamp, wall_millis());
                self.send(ctx, &reply);
            }
            ClientMessage::Auth(auth) => {
                // JWT mode: a second AUTH after success is ignored (the TS client sends two).
                // No-auth mode: a client that brings a token still gets its AUTH_ACK, otherwise
                // it would wait for one forever.
                if self.node.verifier.is_none() && !auth.token.is_empty() {
                    self.send(ctx, &ServerMessage::AuthAck(protocol::AuthAck::default()));
                }
            }
            ClientMessage::DeviceHello(_) => {
                if self.node.verifier.is_none() && !self.device_acked {
                    self.device_acked = true;
                    self.send(
                        ctx,
                        &ServerMessage::DeviceAck(protocol::DeviceAck {
                            device_id: Some(uuid::Uuid::new_v4().to_string()),
                            device_token: None,
                        }),
                    );
                }
            }
            ClientMessage::ClientApplyAck(_) => {}
            ClientMessage::Batch(_) => {}
            ClientMessage::ClientOp(op) => self.on_writes(ctx, vec![op]),
            ClientMessage::OpBatch(batch) => self.on_writes(ctx, batch.ops),
            ClientMessage::SyncInit(m) => self.on_sync_init(m),
            ClientMessage::MerkleReqBucket(m) => self.on_merkle_request(m),
            ClientMessage::QuerySub(m) => self.on_query_sub(ctx, m),
            ClientMessage::QueryUnsub(m) => self.on_query_unsub(m),
            ClientMessage::QuerySyncInit(_) => {}
            ClientMessage::OrmapSyncInit(m) => self.on_ormap_sync_init(m),
            ClientMessage::OrmapMerkleReqBucket(m) => self.on_ormap_merkle_request(m),
            ClientMessage::OrmapDiffRequest(m) => self.on_ormap_diff_request(m),
            ClientMessage::OrmapPushDiff(m) => self.on_ormap_push_diff(m),
            ClientMessage::PartitionMapRequest(_) => {
                if !std::mem::replace(&mut self.wants_partition_map, true) {
                    self.node.gate.do_send(WantsPartitionMap { id: self.id });
                }
                self.send_partition_map(ctx);
            }
            ClientMessage::TopicSub(m) => self.on_topic_sub(ctx, m.topic),
            ClientMessage::TopicUnsub(m) => self.on_topic_unsub(m.topic),
            ClientMessage::TopicPub(m) => self.on_topic_pub(m),
            other => {
                debug!(self.tel.log, "operation not implemented"; "type" => other.tag());
                self.send(
                    ctx,
                    &ServerMessage::error(501, format!("{} is not implemented", other.tag())),
                );
            }
        }
    }

    fn on_continuation(&mut self, ctx: &mut ws::WebsocketContext<Self>, item: Item) {
        let (first, chunk, last) = match item {
            Item::FirstBinary(b) => (Some(true), b, false),
            Item::FirstText(b) => (Some(false), b, false),
            Item::Continue(b) => (None, b, false),
            Item::Last(b) => (None, b, true),
        };
        match first {
            Some(binary) => {
                if !binary {
                    // Text messages are ignored whole (protocol.md 1.2); its later fragments
                    // find no buffer and are skipped.
                    invalid_frame(&mut self.tel, "text_frame", &"fragmented text message");
                    self.fragments = None;
                    return;
                }
                self.fragments = Some(BytesMut::from(&chunk[..]));
            }
            None => match &mut self.fragments {
                Some(buf) => buf.extend_from_slice(&chunk),
                None => return, // continuation of an ignored text message
            },
        }
        let too_big = self
            .fragments
            .as_ref()
            .is_some_and(|b| b.len() > self.node.config.max_frame_bytes);
        if too_big {
            self.fragments = None;
            invalid_frame(
                &mut self.tel,
                "frame_too_large",
                &"fragmented message over the limit",
            );
            self.close(ctx, CLOSE_TOO_BIG);
            return;
        }
        if last {
            if let Some(buf) = self.fragments.take() {
                self.on_message(ctx, &buf);
            }
        }
    }
}

fn wall_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Actor for ConnectionActor {
    type Context = ws::WebsocketContext<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // The mailbox is the outbound queue (protocol.md 1.4): while the client does not read,
        // this actor is not polled, the mailbox fills and live broadcasts are refused.
        ctx.set_mailbox_capacity(self.node.config.outbound_queue);
        let mailbox = Mailbox::new(
            ctx.address(),
            self.tel.stats.tap(),
            self.node.metrics.dead_letters(),
        );
        self.outbound = Some(Arc::new(Outbound::new(mailbox.recipient())));
        self.node.gate.do_send(Register {
            id: self.id,
            mailbox,
        });
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        self.completions = Some(tx);
        ctx.add_stream(futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|c| (c, rx))
        }));
        let auth_required = self.node.verifier.is_some();
        ClientConnected {
            peer: &self.peer,
            auth_required,
        }
        .emit_on(&mut self.tel);
        if auth_required {
            self.send(ctx, &ServerMessage::AuthRequired);
            ctx.run_later(self.node.config.auth_timeout, |act, ctx| {
                if matches!(act.auth, AuthState::Pending) {
                    ClientAuthFailed::new("timeout").emit_on(&mut act.tel);
                    act.close(ctx, CLOSE_AUTH_TIMEOUT);
                }
            });
        } else {
            self.node.gate.do_send(HandshakeFinished { id: self.id });
        }
        let timeout = self.node.config.heartbeat_timeout;
        ctx.run_interval(self.node.config.heartbeat_check, move |act, ctx| {
            if act.outbound.as_ref().is_some_and(|o| o.must_evict()) {
                act.close(ctx, CLOSE_SLOW);
            } else if matches!(act.auth, AuthState::Authenticated)
                && act.last_heartbeat.elapsed() > timeout
            {
                act.close(ctx, CLOSE_IDLE);
            }
        });
        ctx.run_interval(self.node.config.report_interval, |act, _| act.report(false));
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        if !self.closing {
            if self.outbound.as_ref().is_some_and(|o| o.must_evict()) {
                // A client that stopped reading, cut by the kernel (net/socket.rs) while the
                // actor stood still: no Close frame could reach it.
                ClientEvicted::new(CLOSE_SLOW.label, 1006).emit_on(&mut self.tel);
            } else {
                ClientDisconnected {
                    reason: "client",
                    frames: self.frames,
                }
                .emit_on(&mut self.tel);
            }
        }
        self.node.gate.do_send(Unregister { id: self.id });
        for stripe in self.node.queue.stripes.iter() {
            stripe.mailbox.do_send(ConnectionClosed(self.id));
        }
        self.report(true);
    }
}

// Messages sent through a `Mailbox` arrive wrapped, with the time they were sent.
crate::telemetry::mailbox::mailbox_handlers!(ConnectionActor, tel.stats);

impl StreamHandler<Result<ws::Message, ProtocolError>> for ConnectionActor {
    fn handle(&mut self, msg: Result<ws::Message, ProtocolError>, ctx: &mut Self::Context) {
        let t0 = self.tel.stats.begin_item();
        self.frames += 1;
        match msg {
            Ok(ws::Message::Binary(bytes)) => {
                if self.fragments.take().is_some() {
                    // A new message while a fragmented one is open breaks RFC 6455.
                    self.close(ctx, CLOSE_PROTOCOL);
                } else {
                    self.on_message(ctx, &bytes);
                }
            }
            Ok(ws::Message::Continuation(item)) => self.on_continuation(ctx, item),
            Ok(ws::Message::Text(_)) => invalid_frame(&mut self.tel, "text_frame", &"text frame"),
            Ok(ws::Message::Ping(payload)) => ctx.pong(&payload),
            Ok(ws::Message::Pong(_)) | Ok(ws::Message::Nop) => {}
            Ok(ws::Message::Close(reason)) => {
                // Answer the client's Close, then stop.
                if !self.closing {
                    self.closing = true;
                    ClientDisconnected {
                        reason: "client",
                        frames: self.frames,
                    }
                    .emit_on(&mut self.tel);
                }
                ctx.close(reason);
                ctx.stop();
            }
            Err(ProtocolError::Overflow) => {
                invalid_frame(&mut self.tel, "frame_too_large", &"message over the limit");
                self.close(ctx, CLOSE_TOO_BIG);
            }
            // actix-web-actors reports two different things as `Io`: a text frame that is not
            // UTF-8 (a text frame like any other: ignored, protocol.md 1.2) and the transport
            // failing under the stream (the client vanished without a Close: a disconnect,
            // not a bad frame, and there is no one left to send a Close to).
            Err(ProtocolError::Io(e)) if e.to_string().contains("utf-8") => {
                invalid_frame(&mut self.tel, "text_frame", &"text frame that is not UTF-8")
            }
            Err(ProtocolError::Io(_)) => {
                if !self.closing {
                    self.closing = true;
                    ClientDisconnected {
                        reason: "client",
                        frames: self.frames,
                    }
                    .emit_on(&mut self.tel);
                }
                ctx.stop();
            }
            Err(e) => {
                invalid_frame(&mut self.tel, "protocol_error", &e);
                self.close(ctx, CLOSE_PROTOCOL);
            }
        }
        self.tel.stats.end(t0);
    }

    fn finished(&mut self, ctx: &mut Self::Context) {
        // The client's side of the stream ended (TCP closed without a Close frame).
        ctx.stop();
    }
}

impl Handler<Shutdown> for ConnectionActor {
    type Result = ();

    fn handle(&mut self, _: Shutdown, ctx: &mut Self::Context) {
        let t0 = self.tel.stats.begin();
        self.close(ctx, CLOSE_SHUTDOWN);
        self.tel.stats.end(t0);
    }
}

impl Handler<PushPartitionMap> for ConnectionActor {
    type Result = ();

    fn handle(&mut self, _: PushPartitionMap, ctx: &mut Self::Context) {
        let t0 = self.tel.stats.begin();
        if !self.closing {
            self.send_partition_map(ctx);
        }
        self.tel.stats.end(t0);
    }
}

impl Handler<Deliver> for ConnectionActor {
    type Result = ();

    fn handle(&mut self, msg: Deliver, ctx: &mut Self::Context) {
        let t0 = self.tel.stats.begin();
        if self.outbound.as_ref().is_some_and(|o| o.must_evict()) {
            self.close(ctx, CLOSE_SLOW);
        } else if !self.closing {
            match msg.0 {
                Delivery::Frame(frame) => ctx.binary(frame),
                Delivery::Frames(frames) => {
                    for frame in frames {
                        ctx.binary(frame);
                    }
                }
                Delivery::WindowChange {
                    query_id,
                    key,
                    value,
                    own,
                } => self.on_window_change(ctx, &query_id, &key, value.as_ref(), own),
                Delivery::Resync => self.close(ctx, CLOSE_RESYNC),
            }
        }
        self.tel.stats.end(t0);
    }
}

impl StreamHandler<(u64, Completion)> for ConnectionActor {
    fn handle(&mut self, (seq, completion): (u64, Completion), ctx: &mut Self::Context) {
        let t0 = self.tel.stats.begin_item();
        for due in self.pipeline.complete(seq, completion) {
            self.finish(ctx, due);
        }
        self.tel.stats.end(t0);
    }

    fn finished(&mut self, _: &mut Self::Context) {
        // Our own sender lives as long as the actor; nothing to do.
    }
}
