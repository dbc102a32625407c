//! Live queries on a node that was apart from the others (paused past failure detection, or cut
//! off by the network) while writes went through them: the changes other nodes sent it
//! meanwhile never arrived, so once it is back and linked, its subscribers are closed with 1013
//! and resubscribe from a fresh snapshot holding every acknowledged write. Found by the chaos
//! run (scripts/chaos): before, such a subscriber kept the old values for good.
mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::cluster::*;
use common::firewall::{self, Cut};
use common::proto::*;
use common::*;
use rmpv::Value;

const MAP: &str = "live";

enum Apart {
    Paused,
    Cut,
}

async fn subscriber_resyncs_after(how: Apart, first: usize) {
    let ms = apart::<3>(first, &[]);
    let (a, b, c) = (&ms[0], &ms[1], &ms[2]);
    let mut sub = connect(c).await;
    sub.subscribe("q", MAP, map(&[])).await;
    let cut = match how {
        Apart::Cut => Some(Cut::between(&[c.node.host], &[a.node.host, b.node.host])),
        Apart::Paused => {
            c.node.signal("STOP");
            None
        }
    };
    wait_members(&[a, b], 2, Duration::from_secs(10));
    let mut w = connect(a).await;
    let mut want = BTreeMap::new();
    for i in 0..10 {
        let ops: Vec<Value> = (0..10)
            .map(|j| {
                let k = format!("k{:03}", i * 10 + j);
                let v = Value::from(format!("v{}", i * 10 + j));
                want.insert(k.clone(), v.clone());
                put(&format!("op{i}-{j}"), MAP, &k, &v, j)
            })
            .collect();
        write_acked(&mut w, "node-a", &op_batch(ops), &format!("op{i}-9")).await;
    }
    match cut {
        Some(cut) => cut.heal(),
        None => c.node.signal("CONT"),
    }
    wait_members(&[a, b, c], 3, Duration::from_secs(15));
    let (code, reason) = sub.expect_close(Duration::from_secs(15)).await;
    assert_eq!(code, 1013, "{reason}");
    assert!(reason.contains("resync"), "{reason}");
    // What the client does then: subscribe again, from a fresh snapshot.
    let mut again = connect(c).await;
    let resp = again.subscribe("q", MAP, map(&[])).await;
    let mut rows: BTreeMap<String, Value> = results(&resp).into_iter().collect();
    let snapshot = rows.len();
    // A change merged after the snapshot comes as an update.
    for v in again.drain(Duration::from_secs(3)).await {
        if msg_type(&v) == "QUERY_UPDATE" {
            if let (Some(k), Some(value)) = (pstr(&v, "key"), get(payload(&v), "value")) {
                rows.insert(k.to_owned(), value.clone());
            }
        }
    }
    eprintln!(
        "snapshot {snapshot} keys, {} with the updates after it",
        rows.len()
    );
    if let Some(d) = diff(&want, &rows) {
        panic!("the new subscription on node-c: {d}");
    }
    assert!(
        c.node
            .scrape()
            .value_or_zero("topgun_connections_closed_total", &[("reason", "resync")])
            >= 1.0
    );
    assert!(!lines_with(
        c,
        "live queries told to resubscribe: changes of other nodes may have been missed"
    )
    .is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_on_a_node_paused_past_failure_detection_resubscribes() {
    subscriber_resyncs_after(Apart::Paused, 60).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_on_a_node_cut_off_by_the_network_resubscribes() {
    if !firewall::available() {
        return;
    }
    subscriber_resyncs_after(Apart::Cut, 63).await;
}
