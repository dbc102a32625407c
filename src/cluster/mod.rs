//! The cluster: membership ([`actor::ClusterActor`] over foca, [`membership`]) and the
//! cluster as clients see it. Partition ownership across nodes is not built yet (issue 8): each
//! node still owns all 271 partitions itself, and `PARTITION_MAP_REQUEST` says exactly that.
pub mod actor;
pub mod membership;

use crate::protocol::{NodeEndpoints, PartitionMap, PartitionMapNode, PartitionOwner};
use crate::shard::fnv::PARTITION_COUNT;

/// Version of the single-node table; a real table versions itself on every rebalance.
const SINGLE_NODE_VERSION: u32 = 1;

pub fn single_node_map(node_id: &str, websocket_url: &str, now_ms: u64) -> PartitionMap {
    PartitionMap {
        version: SINGLE_NODE_VERSION,
        partition_count: u32::from(PARTITION_COUNT),
        nodes: vec![PartitionMapNode {
            node_id: node_id.to_owned(),
            endpoints: NodeEndpoints {
                websocket: websocket_url.to_owned(),
                http: None,
            },
            status: "ACTIVE".into(),
        }],
        partitions: (0..u32::from(PARTITION_COUNT))
            .map(|p| PartitionOwner {
                partition_id: p,
                owner_node_id: node_id.to_owned(),
                backup_node_ids: Vec::new(),
            })
            .collect(),
        generated_at: now_ms,
    }
}

/// The URL clients should use: the advertised host (or the bind address when it is specific,
/// else the host name) and the bound port.
pub fn advertised_url(advertise_host: Option<&str>, bind: std::net::IpAddr, port: u16) -> String {
    let host = match advertise_host {
        Some(h) => h.to_owned(),
        None if !bind.is_unspecified() => bind.to_string(),
        None => hostname::get()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_else(|_| "localhost".into()),
    };
    format!("ws://{host}:{port}/ws")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_node_owns_every_partition() {
        let m = single_node_map("n1", "ws://h:1/ws", 5);
        assert_eq!(m.partitions.len(), 271);
        assert!(m.partitions.iter().all(|p| p.owner_node_id == "n1"));
        assert_eq!(
            advertised_url(None, "10.0.0.1".parse().unwrap(), 8080),
            "ws://10.0.0.1:8080/ws"
        );
        assert_eq!(
            advertised_url(Some("db.example"), "0.0.0.0".parse().unwrap(), 1),
            "ws://db.example:1/ws"
        );
    }
}
