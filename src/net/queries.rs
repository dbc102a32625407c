//! A connection's live queries: subscribe (snapshot, then live changes through the stripes),
//! `limit` windows, unsubscribe.
use std::sync::Arc;

use actix_web_actors::ws;
use slog::debug;

use super::connection::ConnectionActor;
use super::requests::{After, Completion};
use crate::cluster::gather::{self, Gathered, ReadRequest};
use crate::data::ops::query_spec;
use crate::protocol::{self, QueryResp, QueryResultItem, QuerySub, QueryUnsub, ServerMessage};
use crate::queue::actor::{Subscribe, Unsubscribe};
use crate::queue::subscriptions::SubKey;
use crate::shard::live::LiveQuery;
use crate::shard::query::CompiledQuery;

/// A QUERY_RESP that answers a subscription with an error instead of rows.
fn query_refused(query_id: String, error: String, code: &str) -> ServerMessage {
    ServerMessage::QueryResp {
        payload: QueryResp {
            query_id,
            results: Vec::new(),
            next_cursor: None,
            has_more: None,
            cursor_status: None,
            merkle_root_hash: None,
            error: Some(error),
            code: Some(code.into()),
        },
    }
}

/// Rows outside a `limit` window remembered for refills, per subscription.
const WINDOW_RESERVE: usize = 256;

impl ConnectionActor {
    /// QUERY_SUB: register with every stripe (events are buffered from then on), take the
    /// snapshot from every shard, answer QUERY_RESP, then let the stripes go live.
    pub(super) fn on_query_sub(&mut self, ctx: &mut ws::WebsocketContext<Self>, m: QuerySub) {
        self.tel.count_ops("SUBSCRIBE", &m.map_name, 1);
        debug!(self.tel.log, "query subscribed"; "requestId" => &m.query_id, "map" => &m.map_name);
        let spec = match query_spec(&m.query, m.fields.as_ref()) {
            Ok(spec) => spec,
            Err(reason) => {
                let reply = query_refused(m.query_id, reason, "unsupported_query");
                self.send(ctx, &reply);
                return;
            }
        };
        let Some(outbound) = self.outbound.clone() else {
            return;
        };
        let max = self.node.config.max_live_queries_per_connection;
        if self.subscriptions.len() >= max && !self.subscriptions.contains(m.query_id.as_str()) {
            let error = self.over_limit(
                "live_queries",
                max,
                format!(
                    "this connection holds {max} live queries, the most one connection may \
                     (--max-live-queries-per-connection): send QUERY_UNSUB for one first"
                ),
            );
            let reply = query_refused(m.query_id, error, "limit_exceeded");
            self.send(ctx, &reply);
            return;
        }
        let query = Arc::new(CompiledQuery::new(&spec));
        let query_id: Arc<str> = Arc::from(m.query_id.as_str());
        let map: Arc<str> = Arc::from(m.map_name.as_str());
        let key: SubKey = (self.id, query_id.clone());
        self.subscriptions.insert(query_id);
        let registrations: Vec<_> = self
            .node
            .queue
            .stripes
            .iter()
            .map(|s| {
                s.mailbox.send(Subscribe {
                    key: key.clone(),
                    map: map.clone(),
                    query: query.clone(),
                    outbound: outbound.clone(),
                })
            })
            .collect();
        let data = self.node.data.clone();
        let queue = self.node.queue.clone();
        let cap = self.node.config.query_max_results;
        if query.group().is_none() && query.limit().is_some_and(|limit| limit > cap) {
            // Not refused: the snapshot says hasMore, and the live window is cut to match.
            self.tel.count_limit_exceeded("live_window");
        }
        let wire = m.query.clone();
        let read = ReadRequest {
            map: map.clone(),
            wire: m.query.clone(),
            fields: m.fields.clone(),
            query: query.clone(),
            cap,
        };
        self.start_request(async move {
            for r in registrations {
                let _ = r.await;
            }
            let Gathered { page, seen, parts } = match gather::read(&data, read).await {
                Ok(g) => g,
                Err(error) => {
                    let reply = query_refused(m.query_id, error.to_string(), "unavailable");
                    return Completion {
                        frames: vec![protocol::encode(&reply)],
                        after: Some(After::SnapshotFailed { query_id: key.1 }),
                    };
                }
            };
            let grouped = query.group().is_some();
            let window = query.limit().filter(|_| !grouped).map(|_| {
                // Capped like the snapshot: a window of limit 10^9 would grow without bound.
                let mut live = LiveQuery::new((*query).clone(), WINDOW_RESERVE, cap);
                live.seed(&parts, cap);
                live
            });
            let groups = grouped.then(|| {
                super::grouped::LiveGroups::new(map, wire, query.clone(), page.rows.clone())
            });
            let mut members: Vec<Vec<Arc<str>>> = vec![Vec::new(); queue.stripes.len()];
            let results = page
                .rows
                .into_iter()
                .map(|row| {
                    members[queue.stripe_of_key(&row.key)].push(Arc::from(row.key.as_str()));
                    QueryResultItem {
                        key: row.key,
                        value: row.value,
                    }
                })
                .collect();
            let reply = ServerMessage::QueryResp {
                payload: QueryResp {
                    query_id: m.query_id,
                    results,
                    next_cursor: page.next_cursor,
                    has_more: page.has_more.then_some(true),
                    cursor_status: Some(match page.cursor_status {
                        crate::shard::query::CursorStatus::Valid => protocol::CursorStatus::Valid,
                        crate::shard::query::CursorStatus::Invalid => {
                            protocol::CursorStatus::Invalid
                        }
                        crate::shard::query::CursorStatus::None => protocol::CursorStatus::None,
                    }),
                    merkle_root_hash: None,
                    error: None,
                    code: None,
                },
            };
            Completion {
                frames: vec![protocol::encode(&reply)],
                after: Some(After::SnapshotLoaded {
                    key,
                    members,
                    seen: seen.into(),
                    window,
                    groups,
                }),
            }
        });
    }

    /// A change of a key of a windowed (`limit`) subscription: the window decides.
    pub(super) fn on_window_change(
        &mut self,
        ctx: &mut ws::WebsocketContext<Self>,
        query_id: &Arc<str>,
        key: &str,
        value: Option<&rmpv::Value>,
        own: bool,
    ) {
        if self.groups.contains_key(query_id) {
            return self.on_group_change(ctx, query_id);
        }
        let Some(window) = self.windows.get_mut(query_id) else {
            return;
        };
        for ev in window.on_change(key, value) {
            if own {
                continue;
            }
            let change_type = match ev.change {
                crate::shard::live::ChangeType::Enter => protocol::ChangeType::Enter,
                crate::shard::live::ChangeType::Update => protocol::ChangeType::Update,
                crate::shard::live::ChangeType::Leave => protocol::ChangeType::Leave,
            };
            ctx.binary(protocol::encode(&ServerMessage::QueryUpdate {
                payload: protocol::QueryUpdate {
                    query_id: query_id.to_string(),
                    key: ev.key,
                    value: ev.value,
                    change_type,
                },
            }));
        }
    }

    pub(super) fn on_query_unsub(&mut self, m: QueryUnsub) {
        debug!(self.tel.log, "query unsubscribed"; "requestId" => &m.query_id);
        self.drop_subscription(Arc::from(m.query_id.as_str()));
    }

    pub(super) fn drop_subscription(&mut self, query_id: Arc<str>) {
        self.subscriptions.remove(&query_id);
        self.windows.remove(&query_id);
        self.groups.remove(&query_id);
        for s in self.node.queue.stripes.iter() {
            s.mailbox.do_send(Unsubscribe((self.id, query_id.clone())));
        }
    }
}
