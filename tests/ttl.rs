//! Guards TTL enforcement (issue 4, open question 4 decided "enforce"): a record written with
//! `ttlMs` disappears once `timestamp.millis + ttlMs` has passed: from QUERY_SUB snapshots, from
//! Merkle leaves and the root (after the sweep), from `topgun_map_size_items`, and from live
//! query results. The reference dropped `ttlMs`, so expiring data lived forever.
mod common;

use std::time::{Duration, Instant};

use common::proto::*;
use common::*;
use rmpv::Value;

const TTL_MS: u64 = 1_500;

fn node() -> Node {
    Node::start_with(NodeOptions::default().args(&["--sweep-interval-ms", "100"]))
}

#[tokio::test]
async fn expired_record_vanishes_from_queries_sync_and_gauge() {
    let node = node();
    let mut live = node.authed_client().await;
    live.subscribe("all", "sessions", map(&[])).await;

    let mut w = node.authed_client().await;
    let now = now_millis();
    let short = Ts::new(now, 0, "w");
    let long = Ts::new(now, 1, "w");
    let plain = Ts::new(now, 2, "w");
    let stale = Ts::new(now - 10_000, 0, "w");
    w.send_acked(&op_batch(vec![
        put_ttl_op("1", "sessions", "short", "s".into(), &short, TTL_MS),
        put_ttl_op("2", "sessions", "long", "l".into(), &long, 3_600_000),
        put_op("3", "sessions", "plain", "p".into(), &plain),
        // Already expired when it arrives: acked, never visible.
        put_ttl_op("4", "sessions", "dead", "d".into(), &stale, 1_000),
    ]))
    .await;

    let mut probe = node.authed_client().await;
    let snapshot = probe.subscribe("q0", "sessions", map(&[])).await;
    assert!(
        now_millis() < now + TTL_MS,
        "machine too slow for this test's TTL"
    );
    assert_eq!(
        {
            let mut k = result_keys(&snapshot);
            k.sort();
            k
        },
        ["long", "plain", "short"]
    );
    node.wait_metric("topgun_map_size_items", &[("map", "sessions")], 3.0);

    // Poll the snapshot until "short" is gone; it must not go before its time.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut n = 0;
    loop {
        n += 1;
        let resp = probe
            .subscribe(&format!("poll{n}"), "sessions", map(&[]))
            .await;
        probe.send(&query_unsub(&format!("poll{n}"))).await;
        let keys = result_keys(&resp);
        if !keys.iter().any(|k| k == "short") {
            assert!(
                now_millis() > now + TTL_MS,
                "expired {} ms early",
                now + TTL_MS - now_millis()
            );
            let mut keys = keys;
            keys.sort();
            assert_eq!(keys, ["long", "plain"]);
            break;
        }
        assert!(Instant::now() < deadline, "\"short\" never expired");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The sweep removes it from the map and the tree; the gauge follows.
    node.wait_metric("topgun_map_size_items", &[("map", "sessions")], 2.0);
    let walk = probe.walk("sessions").await;
    assert_eq!(
        walk.records.keys().cloned().collect::<Vec<_>>(),
        ["long", "plain"]
    );
    assert_eq!(
        get(&walk.records["long"], "ttlMs").map(as_u64),
        Some(3_600_000),
        "ttlMs kept on the synced record"
    );
    let mut expected = Tree::default();
    expected.insert("long", &long);
    expected.insert("plain", &plain);
    assert_eq!(probe.sync_root("sessions").await, expected.root());
    assert_eq!(walk.tree().root(), expected.root());
    let s = node.scrape();
    assert_eq!(
        s.value_or_zero("topgun_map_tombstones", &[("map", "sessions")]),
        0.0,
        "expiry is not a delete"
    );
    drop(live);
}

#[tokio::test]
async fn live_subscriber_gets_leave_when_a_row_expires() {
    let node = node();
    let mut live = node.authed_client().await;
    live.subscribe("all", "sessions", map(&[])).await;
    let mut w = node.authed_client().await;
    let t = Ts::new(now_millis(), 0, "w");
    w.send_acked(&client_op(put_ttl_op(
        "1",
        "sessions",
        "short",
        "s".into(),
        &t,
        TTL_MS,
    )))
    .await;
    let enter = live.recv_type("QUERY_UPDATE").await.expect("ENTER");
    assert_eq!(pstr(&enter, "changeType"), Some("ENTER"));
    // The row is no longer in the query's result once expired: the subscriber must hear so.
    let leave = live
        .recv_type_within("QUERY_UPDATE", Duration::from_millis(TTL_MS + 3_000))
        .await
        .expect("a LEAVE for the expired row");
    assert_eq!(pstr(&leave, "key"), Some("short"));
    assert_eq!(pstr(&leave, "changeType"), Some("LEAVE"));
    assert_eq!(get(payload(&leave), "value"), Some(&Value::Nil));
}
