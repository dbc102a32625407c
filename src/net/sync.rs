//! A connection's Merkle sync of LWW maps and OR maps: roots, buckets, leaves and diffs,
//! read over every partition (gathered from the holders with partitioned placement).
use std::sync::Arc;

use slog::debug;

use super::connection::ConnectionActor;
use super::requests::Completion;
use crate::cluster::gather::sync_read;
use crate::data::ops::op_label;
use crate::data::sync::{SyncAsk, SyncShare};
use crate::protocol::{
    self, ClientOp, LeafRecord, MerkleReqBucket, ServerMessage, SyncInit, SyncRespBuckets,
    SyncRespLeaf, SyncRespRoot,
};
use crate::protocol::{
    OrMapRecord, OrmapDiffRequest, OrmapDiffResponse, OrmapPushDiff, OrmapSyncInit,
    OrmapSyncRespLeaf, OrmapSyncRespRoot,
};

/// Leaf records sorted by key: gathered from several shards or nodes, in one order whatever
/// answered first.
fn leaf_records_in_key_order(
    mut records: Vec<(String, crate::protocol::types::LwwRecord)>,
) -> Vec<LeafRecord> {
    records.sort_by(|a, b| a.0.cmp(&b.0));
    records
        .into_iter()
        .map(|(key, record)| LeafRecord { key, record })
        .collect()
}

fn entries_in_key_order(
    mut entries: Vec<crate::protocol::OrMapEntry>,
) -> Vec<crate::protocol::OrMapEntry> {
    entries.sort_by(|a, b| a.key.cmp(&b.key));
    entries
}

fn or_op(map: &str, key: &str, record: Option<OrMapRecord>, tag: Option<String>) -> ClientOp {
    ClientOp {
        id: None,
        map_name: map.to_owned(),
        key: key.to_owned(),
        op_type: None,
        record: None,
        or_record: record,
        or_tag: tag,
        write_concern: None,
        timeout: None,
    }
}

/// A Merkle path the node can answer: up to 3 lowercase hex characters.
fn valid_merkle_path(path: &str) -> bool {
    path.len() <= 3
        && path
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl ConnectionActor {
    /// SYNC_INIT: the root of the map's client-shaped tree over every partition.
    pub(super) fn on_sync_init(&mut self, m: SyncInit) {
        self.tel.count_ops("GET", &m.map_name, 1);
        let map_name = m.map_name.clone();
        self.sync_step(&m.map_name, SyncAsk::Leaves, move |share| {
            Some(ServerMessage::SyncRespRoot {
                payload: SyncRespRoot {
                    map_name,
                    root_hash: share.union().root(),
                    timestamp: share.timestamp?,
                },
            })
        });
    }

    /// A path that is no node of the tree (the reference stays silent): `ERROR 400`, in order
    /// with this connection's other answers, and counted as `bad_merkle_path`.
    pub(super) fn refuse_merkle_path(&mut self, kind: &str, m: &MerkleReqBucket) {
        self.tel.count_invalid("bad_merkle_path");
        debug!(self.tel.log, "merkle path refused"; "map" => &m.map_name, "path" => &m.path);
        let error = ServerMessage::error(
            400,
            format!(
                "{kind}: path {:?} of map {:?} is not a node of the tree (up to 3 hex digits, \
                 0-9 a-f)",
                m.path, m.map_name
            ),
        );
        let frame = protocol::encode(&error);
        self.start_request(async move { Completion::frames(vec![frame]) });
    }

    /// MERKLE_REQ_BUCKET: buckets above depth 3, records at a leaf.
    pub(super) fn on_merkle_request(&mut self, m: MerkleReqBucket) {
        if !valid_merkle_path(&m.path) {
            return self.refuse_merkle_path("MERKLE_REQ_BUCKET", &m);
        }
        let MerkleReqBucket { map_name, path } = m;
        if path.len() == 3 {
            let ask = SyncAsk::LeafRecords { path: path.clone() };
            self.sync_step(&map_name.clone(), ask, move |share| {
                Some(ServerMessage::SyncRespLeaf {
                    payload: SyncRespLeaf {
                        map_name,
                        path,
                        records: leaf_records_in_key_order(share.records),
                    },
                })
            });
        } else {
            self.sync_step(&map_name.clone(), SyncAsk::Leaves, move |share| {
                Some(ServerMessage::SyncRespBuckets {
                    payload: SyncRespBuckets {
                        map_name,
                        buckets: share.union().buckets(&path).unwrap_or_default(),
                        path,
                    },
                })
            });
        }
    }

    /// One step of a Merkle or OR-Map sync: `ask` read over every partition (gathered from
    /// the holders with partitioned placement), answered with `reply` of it, or with ERROR
    /// when it could not be read (or `reply` found nothing to answer with).
    pub(super) fn sync_step(
        &mut self,
        map_name: &str,
        ask: SyncAsk,
        reply: impl FnOnce(SyncShare) -> Option<ServerMessage> + 'static,
    ) {
        let (data, map) = (self.node.data.clone(), Arc::from(map_name));
        self.start_request(async move {
            let message = match sync_read(&data, map, ask).await {
                Ok(share) => {
                    reply(share).unwrap_or_else(|| ServerMessage::error(500, "sync unavailable"))
                }
                Err(e) => ServerMessage::error(500, e.to_string()),
            };
            Completion::frames(vec![protocol::encode(&message)])
        });
    }

    /// ORMAP_SYNC_INIT: the root of the node's OR tree for the map over every partition.
    pub(super) fn on_ormap_sync_init(&mut self, m: OrmapSyncInit) {
        self.tel.count_ops("GET", &m.map_name, 1);
        let map_name = m.map_name.clone();
        self.sync_step(&m.map_name, SyncAsk::OrLeaves, move |share| {
            Some(ServerMessage::OrmapSyncRespRoot {
                payload: OrmapSyncRespRoot {
                    map_name,
                    root_hash: share.union().root(),
                    timestamp: share.timestamp?,
                    covering_epoch: None,
                    full_resync: None,
                },
            })
        });
    }

    /// ORMAP_MERKLE_REQ_BUCKET: buckets above depth 3, entries (records and removed tags) at a
    /// leaf.
    pub(super) fn on_ormap_merkle_request(&mut self, m: MerkleReqBucket) {
        if !valid_merkle_path(&m.path) {
            return self.refuse_merkle_path("ORMAP_MERKLE_REQ_BUCKET", &m);
        }
        let MerkleReqBucket { map_name, path } = m;
        if path.len() == 3 {
            let ask = SyncAsk::OrPath { path: path.clone() };
            self.sync_step(&map_name.clone(), ask, move |share| {
                Some(ServerMessage::OrmapSyncRespLeaf {
                    payload: OrmapSyncRespLeaf {
                        map_name,
                        path,
                        entries: entries_in_key_order(share.entries),
                        covering_epoch: None,
                    },
                })
            });
        } else {
            self.sync_step(&map_name.clone(), SyncAsk::OrLeaves, move |share| {
                Some(ServerMessage::OrmapSyncRespBuckets {
                    payload: SyncRespBuckets {
                        map_name,
                        buckets: share.union().buckets(&path).unwrap_or_default(),
                        path,
                    },
                })
            });
        }
    }

    /// ORMAP_DIFF_REQUEST: the entries of the named keys, each from a holder of its partition.
    pub(super) fn on_ormap_diff_request(&mut self, m: OrmapDiffRequest) {
        let map_name = m.map_name.clone();
        self.sync_step(
            &m.map_name,
            SyncAsk::OrKeys { keys: m.keys },
            move |share| {
                Some(ServerMessage::OrmapDiffResponse {
                    payload: OrmapDiffResponse {
                        map_name,
                        entries: share.entries,
                    },
                })
            },
        );
    }

    /// ORMAP_PUSH_DIFF: the client's records and removed tags are writes like OR_ADD /
    /// OR_REMOVE ops (same shards, storage and events); the protocol has no reply for it.
    pub(super) fn on_ormap_push_diff(&mut self, m: OrmapPushDiff) {
        let mut ops = Vec::new();
        for entry in m.entries {
            for record in entry.records {
                ops.push(or_op(&m.map_name, &entry.key, Some(record), None));
            }
            for tag in entry.tombstones {
                ops.push(or_op(&m.map_name, &entry.key, None, Some(tag)));
            }
        }
        for op in &ops {
            self.tel.count_ops(op_label(op), &op.map_name, 1);
        }
        if !ops.is_empty() {
            let trace = crate::cluster::wire::Trace {
                request_id: None,
                origin_node_id: self.node.node_id.clone(),
                client_id: self.client_id.to_string(),
                writer: None,
            };
            let applied = crate::cluster::replication::route_client_write(
                &self.node.data,
                self.id,
                trace,
                ops,
                &self.tel.log,
            );
            actix_rt::spawn(async move {
                applied.await;
            });
        }
    }
}
