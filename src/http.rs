//! The HTTP surface, kept thin: WebSocket upgrade (`/ws` and `/`), `/metrics`, `/health`,
//! `/ready`. Each handler asks an actor and formats the answer.
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use actix_web_actors::ws;

use crate::net::connection::ConnectionActor;
use crate::net::gate::{AdmissionVoided, Admit};
use crate::net::http_sync;
use crate::net::NodeContext;
use crate::protocol;
use crate::telemetry::metrics::Scrape;

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
    }
}

/// Routes of the dedicated metrics port.
pub fn metrics_routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/metrics", web::get().to(metrics))
        .route("/health", web::get().to(health))
        .route("/ready", web::get().to(ready));
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
    let id = match node.gate.send(Admit).await {
        Ok(Ok(id)) => id,
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

/// protocol.md 1.8: MessagePack in, MessagePack out; an undecodable or too deep body is a 400
/// with a small JSON error.
async fn sync(body: web::Bytes, node: web::Data<Arc<NodeContext>>) -> HttpResponse {
    if body.len() > node.config.max_frame_bytes {
        return HttpResponse::PayloadTooLarge().json(serde_json::json!({
            "error": "body too large", "limit": node.config.max_frame_bytes
        }));
    }
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
    if node.ready.load(Ordering::Acquire) {
        HttpResponse::Ok().json(serde_json::json!({"status": "ready", "nodeId": node.node_id}))
    } else {
        HttpResponse::ServiceUnavailable().json(serde_json::json!({"status": "not ready"}))
    }
}
