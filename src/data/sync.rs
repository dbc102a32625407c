//! The local read path of Merkle and OR-Map sync: what every shard holds of one map's tree,
//! of one leaf, or of some OR keys, optionally restricted to some partitions (a gathered
//! sync takes each partition from one holder). A leaf hash is a wrapping sum over its keys,
//! so leaves of disjoint key sets add up to the leaf of their union (`MerkleUnion`); the
//! levels above are recomputed from the summed leaves by whoever asks.
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::protocol::types::{LwwRecord, Timestamp};
use crate::protocol::OrMapEntry;
use crate::shard::actor::{
    LeafRecords, MerkleLeaves, OrEntries, OrLeaves, OrSelect, PartitionMask,
};
use crate::shard::merkle::{LeafPath, MerkleUnion};
use crate::shard::router::Shards;

/// What a sync step reads.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum SyncAsk {
    /// The LWW tree's leaves (for the root and buckets).
    Leaves,
    /// The records under one 3-char leaf path.
    LeafRecords { path: String },
    /// The OR tree's leaves.
    OrLeaves,
    /// OR entries under a leaf path.
    OrPath { path: String },
    /// OR entries of named keys.
    OrKeys { keys: Vec<String> },
}

/// What the shards (or the holders) answered; shares of disjoint partitions merge by
/// concatenation.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SyncShare {
    #[serde(default)]
    pub leaves: Vec<(LeafPath, u32)>,
    #[serde(default)]
    pub records: Vec<(String, LwwRecord)>,
    #[serde(default)]
    pub entries: Vec<OrMapEntry>,
    /// The newest HLC timestamp a shard gave (for the root answers); `None` when none answered.
    pub timestamp: Option<Timestamp>,
}

impl SyncShare {
    pub fn merge(&mut self, other: SyncShare) {
        self.leaves.extend(other.leaves);
        self.records.extend(other.records);
        self.entries.extend(other.entries);
        self.timestamp = self.timestamp.take().max(other.timestamp);
    }

    /// The tree of every leaf in the share.
    pub fn union(&self) -> MerkleUnion {
        let mut union = MerkleUnion::new();
        for (path, hash) in &self.leaves {
            union.add_leaf(*path, *hash);
        }
        union
    }
}

/// Every shard's share of `ask` on `map` over `partitions`. A shard that does not answer
/// contributes nothing (and no timestamp).
pub async fn local_sync(
    shards: &Shards,
    map: Arc<str>,
    ask: &SyncAsk,
    partitions: PartitionMask,
) -> SyncShare {
    let mut share = SyncShare::default();
    let all = shards.mailboxes.iter();
    match ask {
        SyncAsk::Leaves | SyncAsk::OrLeaves => {
            let lww = matches!(ask, SyncAsk::Leaves);
            let requests: Vec<_> = all
                .map(|s| {
                    let (map, partitions) = (map.clone(), partitions.clone());
                    let s = s.clone();
                    async move {
                        if lww {
                            s.send(MerkleLeaves { map, partitions }).await
                        } else {
                            s.send(OrLeaves { map, partitions }).await
                        }
                    }
                })
                .collect();
            for (leaves, ts) in futures_util::future::join_all(requests)
                .await
                .into_iter()
                .flatten()
            {
                share.leaves.extend(leaves);
                share.timestamp = share.timestamp.take().max(Some(ts));
            }
        }
        SyncAsk::LeafRecords { path } => {
            let requests: Vec<_> = all
                .map(|s| {
                    s.send(LeafRecords {
                        map: map.clone(),
                        path: path.clone(),
                        partitions: partitions.clone(),
                    })
                })
                .collect();
            for records in futures_util::future::join_all(requests)
                .await
                .into_iter()
                .flatten()
            {
                share.records.extend(records);
            }
        }
        SyncAsk::OrPath { .. } | SyncAsk::OrKeys { .. } => {
            let requests: Vec<_> = all
                .enumerate()
                .filter_map(|(i, s)| {
                    let select = match ask {
                        SyncAsk::OrPath { path } => OrSelect::Path(path.clone()),
                        SyncAsk::OrKeys { keys } => {
                            // Each key from the shard owning it.
                            let mine: Vec<String> = keys
                                .iter()
                                .filter(|k| shards.of_key(k) == i)
                                .cloned()
                                .collect();
                            if mine.is_empty() {
                                return None;
                            }
                            OrSelect::Keys(mine)
                        }
                        _ => return None,
                    };
                    Some(s.send(OrEntries {
                        map: map.clone(),
                        select,
                        partitions: partitions.clone(),
                    }))
                })
                .collect();
            for entries in futures_util::future::join_all(requests)
                .await
                .into_iter()
                .flatten()
            {
                share.entries.extend(entries);
            }
        }
    }
    share
}
