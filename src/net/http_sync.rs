//! `POST /sync`: a client without a WebSocket sends its pending ops and one-shot queries in
//! one request. Writes go through the same shard path as `OP_BATCH` and wait for a slot under
//! the same node-wide backpressure limit (up to the backoff timeout, then a 429 in `errors`);
//! queries are one-shot snapshots.
use std::collections::HashMap;
use std::sync::Arc;

use super::NodeContext;
use crate::cluster::gather::{self, ReadRequest};
use crate::data::ops::{op_label, query_spec};
use crate::protocol::http_sync::{
    HttpQueryResult, HttpSyncError, HttpSyncRequest, HttpSyncResponse,
};
use crate::protocol::{OpAck, QueryResultItem, WriteConcern};
use crate::shard::hlc::{system_millis, Hlc};
use crate::shard::query::CompiledQuery;
use crate::telemetry::metrics::Metrics;
use crate::telemetry::report::{Report, Reported};

/// HTTP requests have no connection actor to count their ops and flow control; one report per
/// request.
struct HttpOpsReport {
    ops: HashMap<(&'static str, String), u64>,
    waited: bool,
    timed_out: bool,
    /// Ops refused by the intake: (memory, maps).
    refused: (u64, u64),
}

impl Report for HttpOpsReport {
    fn apply(self: Box<Self>, m: &mut Metrics) {
        m.backpressure_waits_total.inc_by(u64::from(self.waited));
        m.backpressure_timeouts_total
            .inc_by(u64::from(self.timed_out));
        for (limit, n) in [("memory", self.refused.0), ("maps", self.refused.1)] {
            if n > 0 {
                m.limits_exceeded_total
                    .with_label_values(&[limit])
                    .inc_by(n);
            }
        }
        for ((op_type, map), n) in self.ops {
            let label = m.map_label(&map).to_owned();
            m.ops_total.with_label_values(&[op_type, &label]).inc_by(n);
        }
    }
}

pub async fn handle(node: Arc<NodeContext>, req: HttpSyncRequest) -> HttpSyncResponse {
    let mut counted: HashMap<(&'static str, String), u64> = HashMap::new();
    let mut errors = Vec::new();
    let mut waited = false;
    let mut timed_out = false;
    let mut hlc = Hlc::new(node.node_id.as_str(), node.config.max_drift_ms);
    if let Some(client) = &req.client_hlc {
        // Feeding the client's clock in only raises ours; a far-ahead one is just not used.
        let _ = hlc.update(client, system_millis());
    }

    let ops = req.operations.unwrap_or_default();
    for op in &ops {
        *counted
            .entry((op_label(op), op.map_name.clone()))
            .or_default() += 1;
    }
    let admission = crate::data::intake::admit(&node.data.budget, &node.data.maps, ops);
    let refused = (admission.refused_for_memory, admission.refused_for_maps);
    errors.extend(admission.refused.into_iter().map(HttpSyncError::from));
    let ack = match admission.ops {
        ops if !ops.is_empty() => {
            let last_id = ops.last().and_then(|o| o.id.clone());
            // The same node-wide cap as WebSocket writes; an HTTP client has no socket to stop
            // reading, so the request itself waits, up to the backoff timeout.
            let (reserved, had_to_wait) = node
                .write_slots
                .reserve_until(
                    node.config.backpressure_limit as i64,
                    tokio::time::Instant::now() + node.config.backpressure_timeout,
                )
                .await;
            waited = had_to_wait;
            if reserved {
                let trace = crate::cluster::wire::Trace {
                    request_id: last_id.clone(),
                    origin_node_id: node.node_id.clone(),
                    client_id: req.client_id.clone().unwrap_or_else(|| "http".into()),
                    writer: None,
                };
                let outcome = crate::cluster::replication::route_client_write(
                    &node.data, 0, trace, ops, &node.log,
                )
                .await;
                node.write_slots.release();
                errors.extend(outcome.rejected.into_iter().map(HttpSyncError::from));
                match outcome.failure {
                    Some(reason) => {
                        errors.push(HttpSyncError {
                            code: 500,
                            message: format!("write not acknowledged: {reason}"),
                            context: None,
                        });
                        None
                    }
                    None => Some(OpAck {
                        last_id: last_id.unwrap_or_else(|| "unknown".into()),
                        achieved_level: Some(WriteConcern::Applied),
                        results: None,
                    }),
                }
            } else {
                timed_out = true;
                errors.push(HttpSyncError {
                    code: 429,
                    message: format!(
                        "server overloaded: {} ops not applied, retry later",
                        ops.len()
                    ),
                    context: None,
                });
                None
            }
        }
        _ => None,
    };

    let mut query_results = Vec::new();
    for q in req.queries.into_iter().flatten() {
        *counted.entry(("GET", q.map_name.clone())).or_default() += 1;
        let spec = match query_spec(&q.query, None) {
            Ok(spec) => spec,
            Err(message) => {
                errors.push(HttpSyncError {
                    code: 400,
                    message,
                    context: Some(q.query_id),
                });
                continue;
            }
        };
        let read = ReadRequest {
            map: Arc::from(q.map_name.as_str()),
            wire: q.query,
            fields: None,
            query: Arc::new(CompiledQuery::new(&spec)),
            cap: node.config.query_max_results,
        };
        let page = match gather::read(&node.data, read).await {
            Ok(g) => g.page,
            Err(e) => {
                errors.push(HttpSyncError {
                    code: 503,
                    message: e.to_string(),
                    context: Some(q.query_id),
                });
                continue;
            }
        };
        query_results.push(HttpQueryResult {
            query_id: q.query_id,
            results: page
                .rows
                .into_iter()
                .map(|r| QueryResultItem {
                    key: r.key,
                    value: r.value,
                })
                .collect(),
            has_more: page.has_more.then_some(true),
        });
    }
    if !counted.is_empty() || waited {
        node.metrics.do_send(Reported(Box::new(HttpOpsReport {
            ops: counted,
            waited,
            timed_out,
            refused,
        })));
    }
    HttpSyncResponse {
        server_hlc: hlc.now(system_millis()),
        ack,
        query_results: (!query_results.is_empty()).then_some(query_results),
        errors: (!errors.is_empty()).then_some(errors),
    }
}
