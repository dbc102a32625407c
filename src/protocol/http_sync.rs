//! `POST /sync` (protocol.md 1.8): one MessagePack request, one MessagePack response, for
//! clients that cannot hold a WebSocket. Same limits as a frame: 2 MiB, 256 levels.
use serde::{Deserialize, Serialize};

use super::codec::{scan, validate_map_name, validate_op, validate_timestamp};
use super::messages::{ClientOp, OpAck, OpRejected, Query, QueryResultItem};
use super::types::Timestamp;
use super::DecodeError;

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct HttpSyncRequest {
    pub client_id: Option<String>,
    pub client_hlc: Option<Timestamp>,
    pub operations: Option<Vec<ClientOp>>,
    pub queries: Option<Vec<HttpQuery>>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpQuery {
    pub query_id: String,
    pub map_name: String,
    #[serde(default)]
    pub query: Query,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpSyncResponse {
    pub server_hlc: Timestamp,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ack: Option<OpAck>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub query_results: Option<Vec<HttpQueryResult>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errors: Option<Vec<HttpSyncError>>,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpQueryResult {
    pub query_id: String,
    pub results: Vec<QueryResultItem>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub has_more: Option<bool>,
}

/// A per-item failure inside an otherwise answered request (a rejected op, a bad query).
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpSyncError {
    pub code: u32,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub context: Option<String>,
}

impl From<OpRejected> for HttpSyncError {
    fn from(r: OpRejected) -> Self {
        HttpSyncError {
            code: r.code.unwrap_or(400),
            message: r.reason,
            context: Some(r.op_id),
        }
    }
}

/// Decodes a request body; an empty body is the default request.
pub fn decode_http_sync(body: &[u8]) -> Result<HttpSyncRequest, DecodeError> {
    if body.is_empty() {
        return Ok(HttpSyncRequest::default());
    }
    scan(body)?;
    let req: HttpSyncRequest = rmp_serde::from_slice(body).map_err(DecodeError::from_serde)?;
    if let Some(ts) = &req.client_hlc {
        validate_timestamp(ts)?;
    }
    req.operations.iter().flatten().try_for_each(validate_op)?;
    // The same rule as on the WebSocket: a name a write would be refused with is no query.
    req.queries
        .iter()
        .flatten()
        .try_for_each(|q| validate_map_name(&q.map_name))?;
    Ok(req)
}

pub fn encode_http_sync(resp: &HttpSyncResponse) -> Vec<u8> {
    // Serializing our own plain structs into a Vec cannot fail.
    rmp_serde::to_vec_named(resp).unwrap_or_default()
}
