//! Migration in pieces: partitions move between real node processes in chunks of about 1 MiB
//! under the puller's grants, whatever the size of a partition.
mod common;

use common::cluster::*;
use common::proto::*;
use common::*;
use rmpv::Value;

/// Records of 512 KiB, all in one partition: 72 MiB, over the 64 MiB node-to-node frame, so
/// the partition can only move in pieces.
const RECORDS: usize = 144;
const VALUE_BYTES: usize = 512 * 1024;

/// `RECORDS` keys whose partition is `partition`.
fn keys_of_partition(partition: u32) -> Vec<String> {
    (0..)
        .map(|i| format!("big-{i}"))
        .filter(|k| fnv1a(k) % PARTITIONS as u32 == partition)
        .take(RECORDS)
        .collect()
}

/// A value that names its key, so a record that moved to the wrong key shows.
fn value_of(key: &str) -> Value {
    let mut bytes = vec![0u8; VALUE_BYTES];
    for (i, b) in key.bytes().cycle().zip(bytes.iter_mut()) {
        *b = i;
    }
    Value::Binary(bytes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_larger_than_a_peer_frame_moves_to_a_joining_node() {
    let a = start("node-a", None, 0, &[]);
    let keys = keys_of_partition(7);
    let mut c = connect(&a).await;
    for (i, key) in keys.iter().enumerate() {
        let id = format!("op-{i}");
        let op = put(&id, "big", key, &value_of(key), 0);
        write_acked(&mut c, "node-a", &op_batch(vec![op]), &id).await;
    }
    drop(c);

    // Two nodes with one backup: the joining node keeps every partition, and it is ready only
    // once its initial pull is complete.
    let b = start("node-b", Some(a.cluster_port), 0, &[]);
    let s = wait_scrape(&b.node, "every record on the joining node", |s| {
        s.value_or_zero("topgun_map_size_items", &[("map", "big")]) == RECORDS as f64
            && s.value_or_zero("topgun_migration_partitions_pending", &[]) == 0.0
    });
    assert!(s.value_or_zero("topgun_migration_records_total", &[]) >= RECORDS as f64);
    for m in [&a, &b] {
        let s = m.node.scrape();
        for reason in ["bad_frame", "lost", "timeout"] {
            assert_eq!(
                s.value_or_zero("topgun_cluster_peer_errors_total", &[("reason", reason)]),
                0.0,
                "{}: peer errors {reason}",
                m.id
            );
        }
    }
    // The partition went out in many chunks of one pull, not in one piece.
    wait_line(&a, "partitions sent to peer", "every record", |l| {
        l["records"].as_u64().is_some_and(|r| r >= RECORDS as u64)
    });

    // Every record on b is the one written, read from b's own copy in pages (a test client
    // takes messages of up to 64 MiB).
    let mut found = std::collections::BTreeMap::new();
    let mut reader = connect(&b).await;
    let mut cursor: Option<String> = None;
    for page in 0.. {
        assert!(page <= RECORDS / 16, "more pages than records");
        let mut q = vec![("limit", Value::from(16))];
        if let Some(c) = &cursor {
            q.push(("cursor", Value::from(c.as_str())));
        }
        let resp = reader
            .subscribe(&format!("page-{page}"), "big", map(&q))
            .await;
        found.extend(results(&resp));
        cursor = pstr(&resp, "nextCursor").map(str::to_owned);
        if get(payload(&resp), "hasMore").and_then(Value::as_bool) != Some(true) {
            break;
        }
    }
    assert_eq!(found.len(), RECORDS);
    for key in &keys {
        assert!(
            found.get(key) == Some(&value_of(key)),
            "node-b: {key} missing or changed"
        );
    }
    // b received the data once: its catch-up from a was covered by the migration.
    let catch_up = wait_line(&b, "catch-up started", "any count", |_| true);
    assert_eq!(catch_up["partitions"].as_u64(), Some(0), "{catch_up}");
}
