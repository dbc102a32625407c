//! Live `groupBy`/`aggregations` subscriptions of one connection.
//!
//! A group's aggregates change with any record of its map, and min or max cannot be taken
//! back without the other values, so the stripes forward every change of the map (as for a
//! `limit` window) and the connection recomputes the groups from the shards: at most once per
//! [`REFRESH_EVERY`], never two at a time, and one more after a recomputation if changes came
//! meanwhile. The rows it sent last are diffed against the new ones: a new group is an
//! `ENTER`, a changed one an `UPDATE`, a gone one (or one pushed out of a `limit`) a `LEAVE`.
//! The writer gets its own changes' updates too: a client cannot compute aggregates of records
//! it does not hold. Cost: one pass over the map per refresh per subscription.
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use actix_web_actors::ws;

use super::connection::ConnectionActor;
use crate::cluster::gather::{self, ReadRequest};
use crate::protocol::{self, ServerMessage};
use crate::shard::query::{CompiledQuery, QueryRow};

/// How often a live grouped query is recomputed at most while its map changes.
pub const REFRESH_EVERY: Duration = Duration::from_millis(50);

pub struct LiveGroups {
    map: Arc<str>,
    /// The query as the client sent it, for gathering from the holders.
    wire: Box<protocol::Query>,
    query: Arc<CompiledQuery>,
    /// The rows the client holds, in the page's order.
    sent: Vec<QueryRow>,
    /// A change came since the last recomputation started.
    dirty: bool,
    running: bool,
}

impl LiveGroups {
    pub fn new(
        map: Arc<str>,
        wire: protocol::Query,
        query: Arc<CompiledQuery>,
        sent: Vec<QueryRow>,
    ) -> Self {
        LiveGroups {
            map,
            wire: Box::new(wire),
            query,
            sent,
            dirty: false,
            running: false,
        }
    }
}

/// One change of a grouped result.
#[derive(Debug, Clone, PartialEq)]
pub struct RowChange {
    pub change: protocol::ChangeType,
    pub key: String,
    pub value: rmpv::Value,
}

/// What turns `before` into `after`: leaves first, then entries and updates in `after`'s order.
pub fn row_changes(before: &[QueryRow], after: &[QueryRow]) -> Vec<RowChange> {
    let mut out: Vec<RowChange> = before
        .iter()
        .filter(|b| !after.iter().any(|a| a.key == b.key))
        .map(|b| RowChange {
            change: protocol::ChangeType::Leave,
            key: b.key.clone(),
            value: rmpv::Value::Nil,
        })
        .collect();
    for a in after {
        match before.iter().find(|b| b.key == a.key) {
            None => out.push(RowChange {
                change: protocol::ChangeType::Enter,
                key: a.key.clone(),
                value: a.value.clone(),
            }),
            Some(b) if b.value != a.value => out.push(RowChange {
                change: protocol::ChangeType::Update,
                key: a.key.clone(),
                value: a.value.clone(),
            }),
            Some(_) => {}
        }
    }
    out
}

/// A recomputation of `query_id` finished with these rows.
struct Refreshed {
    query_id: Arc<str>,
    rows: Vec<QueryRow>,
}

impl ConnectionActor {
    /// A record of a grouped subscription's map changed.
    pub(super) fn on_group_change(&mut self, ctx: &mut ws::WebsocketContext<Self>, id: &Arc<str>) {
        let Some(live) = self.groups.get_mut(id) else {
            return;
        };
        if live.dirty || live.running {
            live.dirty = true;
            return;
        }
        live.dirty = true;
        let id = id.clone();
        ctx.run_later(REFRESH_EVERY, move |act, ctx| act.refresh_groups(ctx, id));
    }

    fn refresh_groups(&mut self, ctx: &mut ws::WebsocketContext<Self>, id: Arc<str>) {
        let Some(live) = self.groups.get_mut(&id) else {
            return;
        };
        live.dirty = false;
        live.running = true;
        let data = self.node.data.clone();
        let read = ReadRequest {
            map: live.map.clone(),
            wire: (*live.wire).clone(),
            fields: None,
            query: live.query.clone(),
            cap: self.node.config.query_max_results,
        };
        let recompute = async move { gather::read(&data, read).await.map(|g| g.page.rows) };
        ctx.spawn(
            recompute
                .into_actor(self)
                .map(move |rows, act, ctx| match rows {
                    Ok(rows) => act.on_groups_refreshed(ctx, Refreshed { query_id: id, rows }),
                    // Not readable now (a holder is missing): the rows stay as the client has them,
                    // and the next change tries again.
                    Err(_) => {
                        if let Some(live) = act.groups.get_mut(&id) {
                            live.running = false;
                            live.dirty = true;
                        }
                    }
                }),
        );
    }

    fn on_groups_refreshed(&mut self, ctx: &mut ws::WebsocketContext<Self>, r: Refreshed) {
        // Unsubscribed meanwhile: nothing to send.
        let Some(live) = self.groups.get_mut(&r.query_id) else {
            return;
        };
        live.running = false;
        for c in row_changes(&live.sent, &r.rows) {
            ctx.binary(protocol::encode(&ServerMessage::QueryUpdate {
                payload: protocol::QueryUpdate {
                    query_id: r.query_id.to_string(),
                    key: c.key,
                    value: c.value,
                    change_type: c.change,
                },
            }));
        }
        live.sent = r.rows;
        if live.dirty {
            let id = r.query_id.clone();
            ctx.run_later(REFRESH_EVERY, move |act, ctx| act.refresh_groups(ctx, id));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::ChangeType::*;

    fn row(key: &str, n: u64) -> QueryRow {
        QueryRow {
            key: key.into(),
            value: rmpv::Value::from(n),
        }
    }

    #[test]
    fn changes_are_leaves_then_enters_and_updates_in_the_new_order() {
        let before = [row("a", 1), row("b", 2), row("c", 3)];
        let after = [row("d", 9), row("a", 1), row("c", 4)];
        let got: Vec<(protocol::ChangeType, String)> = row_changes(&before, &after)
            .into_iter()
            .map(|c| (c.change, c.key))
            .collect();
        assert_eq!(
            got,
            [
                (Leave, "b".to_owned()),
                (Enter, "d".to_owned()),
                (Update, "c".to_owned())
            ]
        );
        assert!(row_changes(&after, &after).is_empty());
    }
}
