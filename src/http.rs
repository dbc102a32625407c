//! The HTTP surface, kept thin: WebSocket upgrade (`/ws` and `/`), `/metrics`, `/health`,
//! `/ready`, and beside `/metrics` the token-guarded `/debug/actors`, `/debug/cluster` and
//! `/debug/log-level`.
//! Each handler asks an actor and formats the answer.
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::node::events::LogLevelChanged;
use crate::telemetry::event::{Event, Shown};
use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use actix_web_actors::ws;

use crate::config::LogLevel;
use crate::net::connection::ConnectionActor;
use crate::net::gate::{AdmissionVoided, Admit, Refusal};
use crate::net::http_sync;
use crate::net::NodeContext;
use crate::protocol;
use crate::telemetry::debug::MAX_TOP;
use crate::telemetry::metrics::{DebugActors, Scrape};

/// Prometheus text format 0.0.4.
const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A scrape that the metrics actor has not answered by then gets a 503, never a hung request.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(2);

/// Routes of the client port; `/metrics` only when it has no port of its own.
pub fn client_routes(cfg: &mut web::ServiceConfig, with_metrics: bool) {
    cfg.route("/ws", web::get().to(upgrade))
        .route("/", web::get().to(upgrade))
        .route("/health", web::get().to(health))
        .route("/ready", web::get().to(ready))
        .route("/sync", web::post().to(sync));
    if with_metrics {
        cfg.route("/metrics", web::get().to(metrics));
        debug_routes(cfg);
    }
}

/// Routes of the dedicated metrics port.
pub fn metrics_routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/metrics", web::get().to(metrics))
        .route("/health", web::get().to(health))
        .route("/ready", web::get().to(ready));
    debug_routes(cfg);
}

/// Live introspection for people, served where `/metrics` is. 404 unless `debug_token` is set.
fn debug_routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/debug/actors", web::get().to(debug_actors))
        .route("/debug/cluster", web::get().to(debug_cluster))
        .route("/debug/log-level", web::get().to(get_log_level))
        .route("/debug/log-level", web::put().to(put_log_level));
}

async fn upgrade(
    req: HttpRequest,
    stream: web::Payload,
    node: web::Data<Arc<NodeContext>>,
) -> HttpResponse {
    // Not a WebSocket request (a browser or a probe hitting `/`): answer plainly, and never
    // count it against the connection limiter.
    if let Err(e) = ws::handshake(&req) {
        return HttpResponse::BadRequest()
            .content_type("text/plain; charset=utf-8")
            .body(format!("topgun-node: WebSocket upgrade expected ({e})\n"));
    }
    // RFC 6455 4.2.1: the key is 16 random bytes in base64; actix only checks it is there.
    if !valid_websocket_key(req.headers().get(header::SEC_WEBSOCKET_KEY)) {
        return HttpResponse::BadRequest()
            .content_type("text/plain; charset=utf-8")
            .body("topgun-node: Sec-WebSocket-Key must be 16 bytes in base64 (RFC 6455 4.2.1)\n");
    }
    let id = match node.gate.send(Admit).await {
        Ok(Ok(id)) => id,
        // Draining: this node is going away, so no Retry-After; a client (or its balancer)
        // should try another node.
        Ok(Err(Refusal::Draining)) => {
            return HttpResponse::ServiceUnavailable()
                .content_type("text/plain; charset=utf-8")
                .body("connection refused: draining (the node is shutting down; connect to another node)\n");
        }
        Ok(Err(refusal)) => {
            return HttpResponse::TooManyRequests()
                .insert_header((header::RETRY_AFTER, "1"))
                .content_type("text/plain; charset=utf-8")
                .body(format!("connection refused: {}\n", refusal.code()));
        }
        Err(_) => return HttpResponse::ServiceUnavailable().finish(),
    };
    let peer = req
        .peer_addr()
        .map_or_else(|| "unknown".to_owned(), |a| a.to_string());
    let actor = ConnectionActor::new(id, peer, node.get_ref().clone());
    match ws::WsResponseBuilder::new(actor, &req, stream)
        .frame_size(node.config.max_frame_bytes)
        .start()
    {
        Ok(response) => response,
        Err(e) => {
            node.gate.do_send(AdmissionVoided { id });
            HttpResponse::from_error(e)
        }
    }
}

fn valid_websocket_key(key: Option<&header::HeaderValue>) -> bool {
    use base64::Engine;
    key.and_then(|k| {
        base64::engine::general_purpose::STANDARD
            .decode(k.as_bytes())
            .ok()
    })
    .is_some_and(|bytes| bytes.len() == 16)
}

/// How long a `POST /sync` body may take to arrive in full.
const SYNC_BODY_TIMEOUT: Duration = Duration::from_secs(5);

/// A request body of at most `limit` bytes that arrives within `within`, read as it comes (a
/// chunked body announcing a huge chunk and sending nothing must not hold the request for
/// ever): 413 past the limit, 408 past the time.
async fn read_body(
    mut payload: web::Payload,
    limit: usize,
    within: Duration,
) -> Result<web::Bytes, HttpResponse> {
    use futures_util::StreamExt;
    let deadline = tokio::time::Instant::now() + within;
    let mut body = web::BytesMut::new();
    loop {
        match tokio::time::timeout_at(deadline, payload.next()).await {
            Err(_) => {
                return Err(HttpResponse::RequestTimeout().json(serde_json::json!({
                    "error": "body not received in time", "timeoutMs": within.as_millis() as u64
                })))
            }
            Ok(None) => return Ok(body.freeze()),
            Ok(Some(Err(e))) => {
                return Err(HttpResponse::BadRequest()
                    .json(serde_json::json!({"error": format!("body: {e}")})))
            }
            Ok(Some(Ok(chunk))) => {
                if body.len() + chunk.len() > limit {
                    return Err(HttpResponse::PayloadTooLarge().json(serde_json::json!({
                        "error": "body too large", "limit": limit
                    })));
                }
                body.extend_from_slice(&chunk);
            }
        }
    }
}

/// protocol.md 1.8: MessagePack in, MessagePack out; an undecodable or too deep body is a 400
/// with a small JSON error.
async fn sync(payload: web::Payload, node: web::Data<Arc<NodeContext>>) -> HttpResponse {
    let body = match read_body(payload, node.config.max_frame_bytes, SYNC_BODY_TIMEOUT).await {
        Ok(body) => body,
        Err(refusal) => return refusal,
    };
    let req = match protocol::http_sync::decode_http_sync(&body) {
        Ok(req) => req,
        Err(e) => {
            return HttpResponse::BadRequest()
                .json(serde_json::json!({"error": e.to_string(), "code": e.code()}))
        }
    };
    let resp = http_sync::handle(node.get_ref().clone(), req).await;
    HttpResponse::Ok()
        .content_type("application/msgpack")
        .body(protocol::http_sync::encode_http_sync(&resp))
}

async fn metrics(node: web::Data<Arc<NodeContext>>) -> HttpResponse {
    match tokio::time::timeout(SCRAPE_TIMEOUT, node.metrics.send(Scrape)).await {
        Ok(Ok(text)) => HttpResponse::Ok()
            .content_type(METRICS_CONTENT_TYPE)
            .body(text),
        _ => HttpResponse::ServiceUnavailable()
            .content_type("text/plain; charset=utf-8")
            .body("metrics actor did not answer in time\n"),
    }
}

async fn health() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({"status": "ok"}))
}

async fn ready(node: web::Data<Arc<NodeContext>>) -> HttpResponse {
    if node.draining.load(Ordering::Acquire) {
        HttpResponse::ServiceUnavailable().json(serde_json::json!({
            "status": "draining",
            "nodeId": node.node_id,
            "reason": "shutting down: open connections are served until the drain closes them, new ones are turned away",
        }))
    } else if !node.ready.load(Ordering::Acquire) {
        HttpResponse::ServiceUnavailable().json(serde_json::json!({"status": "not ready"}))
    } else if !node.cluster.data_ready() {
        HttpResponse::ServiceUnavailable().json(serde_json::json!({
            "status": "not ready",
            "reason": "joining the cluster: waiting for a seed and the first data pull",
        }))
    } else {
        let missing = node.cluster.missing_links();
        if missing.is_empty() {
            HttpResponse::Ok().json(serde_json::json!({"status": "ready", "nodeId": node.node_id}))
        } else {
            // Still 200: the node serves, and a balancer draining every node of a cluster whose
            // links broke would turn a partial fault into an outage. Writes owned or backed
            // up by an unlinked member fail on this node until the link is back.
            HttpResponse::Ok().json(serde_json::json!({
                "status": "degraded",
                "nodeId": node.node_id,
                "reason": "no node-to-node link to members that membership sees alive",
                "missingLinks": missing.iter().map(|m| m.to_json()).collect::<Vec<_>>(),
            }))
        }
    }
}

/// The refusal, if any: 404 while no token is configured (the endpoints do not exist), 401
/// without the right `Authorization: Bearer <token>`.
fn refuse(req: &HttpRequest, node: &NodeContext) -> Option<HttpResponse> {
    let Some(token) = &node.config.debug_token else {
        return Some(HttpResponse::NotFound().finish());
    };
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match presented {
        Some(p) if token.matches(p.trim()) => None,
        _ => Some(
            HttpResponse::Unauthorized()
                .insert_header((header::WWW_AUTHENTICATE, "Bearer realm=\"topgun-debug\""))
                .json(serde_json::json!({"error": "bearer token required"})),
        ),
    }
}

fn wants_text(req: &HttpRequest) -> bool {
    req.headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/plain"))
}

/// Every actor kind and bounded-family member: mailbox depth, messages/s, mean and max handle
/// time, busy share, restarts; plus runtime lag per arbiter. JSON, or a table for `text/plain`.
/// The partition table and peer links as this node sees them (no actor to ask: shared state).
async fn debug_cluster(req: HttpRequest, node: web::Data<Arc<NodeContext>>) -> HttpResponse {
    if let Some(refused) = refuse(&req, &node) {
        return refused;
    }
    HttpResponse::Ok().json(node.cluster.describe())
}

/// `?top=N`: how many actors of each kind `/debug/actors` lists by mailbox depth, mailbox wait
/// and busy time (default 10, at most `debug::MAX_TOP`; 0 for none).
#[derive(serde::Deserialize)]
struct DebugActorsQuery {
    top: Option<usize>,
}

const DEFAULT_TOP: usize = 10;

async fn debug_actors(req: HttpRequest, node: web::Data<Arc<NodeContext>>) -> HttpResponse {
    if let Some(refused) = refuse(&req, &node) {
        return refused;
    }
    let top = match web::Query::<DebugActorsQuery>::from_query(req.query_string()) {
        Ok(q) => q.top.unwrap_or(DEFAULT_TOP).min(MAX_TOP),
        Err(e) => {
            return HttpResponse::BadRequest()
                .json(serde_json::json!({"error": format!("query: {e}")}))
        }
    };
    let ask = node.metrics.send(DebugActors { top });
    let snapshot = match tokio::time::timeout(SCRAPE_TIMEOUT, ask).await {
        Ok(Ok(s)) => s,
        _ => {
            return HttpResponse::ServiceUnavailable()
                .content_type("text/plain; charset=utf-8")
                .body("metrics actor did not answer in time\n")
        }
    };
    if wants_text(&req) {
        return HttpResponse::Ok()
            .content_type("text/plain; charset=utf-8")
            .body(snapshot.to_table());
    }
    let mut body = serde_json::to_value(&snapshot).unwrap_or_default();
    if let Some(obj) = body.as_object_mut() {
        obj.insert("nodeId".into(), node.node_id.clone().into());
    }
    HttpResponse::Ok().json(body)
}

async fn get_log_level(req: HttpRequest, node: web::Data<Arc<NodeContext>>) -> HttpResponse {
    if let Some(refused) = refuse(&req, &node) {
        return refused;
    }
    HttpResponse::Ok().json(serde_json::json!({"level": node.log_level.get().to_string()}))
}

/// Body: a level name (`debug`, `info`, ...), as `LOG_LEVEL` takes it. Not persisted: a restart
/// goes back to the configured level.
async fn put_log_level(
    req: HttpRequest,
    body: web::Bytes,
    node: web::Data<Arc<NodeContext>>,
) -> HttpResponse {
    if let Some(refused) = refuse(&req, &node) {
        return refused;
    }
    let text = String::from_utf8_lossy(&body);
    let level: LogLevel = match text.trim().trim_matches('"').parse() {
        Ok(l) => l,
        Err(e) => return HttpResponse::BadRequest().json(serde_json::json!({"error": e})),
    };
    let previous = node.log_level.get();
    // Logged under the more verbose of the two levels, so the line survives the change.
    let note = || {
        LogLevelChanged {
            from: Shown(&previous),
            to: Shown(&level),
        }
        .emit(&node.log)
    };
    if level < previous {
        node.log_level.set(level);
        note();
    } else {
        note();
        node.log_level.set(level);
    }
    HttpResponse::Ok().json(serde_json::json!({
        "level": level.to_string(), "previous": previous.to_string()
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_websocket_key_is_16_bytes_in_base64() {
        let key = |k: &'static str| Some(header::HeaderValue::from_static(k));
        assert!(valid_websocket_key(
            key("dGhlIHNhbXBsZSBub25jZQ==").as_ref()
        ));
        assert!(!valid_websocket_key(None));
        assert!(!valid_websocket_key(key("not base64!").as_ref()));
        assert!(
            !valid_websocket_key(key("dGhlIHNhbXBsZQ==").as_ref()),
            "10 bytes"
        );
        assert!(!valid_websocket_key(key("").as_ref()));
    }
}
