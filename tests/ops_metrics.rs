//! Guards `topgun_ops_total{type,map}`, `topgun_map_size_items{map}` and
//! `topgun_map_tombstones{map}` (metrics.md): one count per op, ops inside OP_BATCH and
//! `POST /sync` each counted, reads (`SYNC_INIT`, HTTP queries) as GET, QUERY_SUB as SUBSCRIBE,
//! deletes (REMOVE, put of null) as DELETE, exact values, and the `map` label capped into
//! `__other__`. In the seed server `topgun_ops_total` was registered and never moved.
mod common;

use common::proto::*;
use common::*;
use rmpv::Value;

fn ops(node: &Node, t: &str, m: &str, want: f64) {
    node.wait_metric("topgun_ops_total", &[("type", t), ("map", m)], want);
}

/// A PUT whose record value is nil without `opType: "REMOVE"`: a delete for the metrics.
fn put_null_op(id: &str, map_name: &str, key: &str, t: &Ts) -> Value {
    map(&[
        ("id", id.into()),
        ("mapName", map_name.into()),
        ("key", key.into()),
        (
            "record",
            map(&[("value", Value::Nil), ("timestamp", t.wire())]),
        ),
    ])
}

#[tokio::test]
async fn ops_are_counted_exactly_per_type_and_map() {
    let node = Node::start();
    let mut c = node.authed_client().await;
    let base = now_millis() - 10_000;
    let t = |i: u64| Ts::new(base + i, 0, "c");

    // map a: 2 CLIENT_OP PUT, then a batch of 3 PUT + 1 REMOVE.
    c.send_acked(&client_op(put_op("1", "a", "k1", 1.into(), &t(1))))
        .await;
    c.send_acked(&client_op(put_op("2", "a", "k2", 2.into(), &t(2))))
        .await;
    c.send_acked(&op_batch(vec![
        put_op("3", "a", "k3", 3.into(), &t(3)),
        put_op("4", "a", "k4", 4.into(), &t(4)),
        put_op("5", "a", "k5", 5.into(), &t(5)),
        remove_op("6", "a", "k1", &t(6)),
    ]))
    .await;
    // map b: a batch of 2 PUT, a CLIENT_OP REMOVE, a put of null.
    c.send_acked(&op_batch(vec![
        put_op("7", "b", "b1", 1.into(), &t(7)),
        put_op("8", "b", "b2", 2.into(), &t(8)),
    ]))
    .await;
    c.send_acked(&client_op(remove_op("9", "b", "b1", &t(9))))
        .await;
    c.send_acked(&client_op(put_null_op("10", "b", "b2", &t(10))))
        .await;
    // Reads and subscriptions.
    c.sync_root("a").await;
    c.sync_root("a").await;
    c.subscribe("q", "a", map(&[])).await;

    // POST /sync: 2 PUT + 1 REMOVE on map c, one query on map a.
    let body = map(&[
        ("clientId", "http-client".into()),
        ("clientHlc", t(20).wire()),
        (
            "operations",
            Value::Array(vec![
                put_op("11", "c", "c1", 1.into(), &t(11)),
                put_op("12", "c", "c2", 2.into(), &t(12)),
                remove_op("13", "c", "c1", &t(13)),
            ]),
        ),
        (
            "queries",
            Value::Array(vec![map(&[
                ("queryId", "hq".into()),
                ("mapName", "a".into()),
                ("query", map(&[])),
            ])]),
        ),
    ]);
    let resp = post_sync(node.port, &body);
    assert!(get(&resp, "serverHlc").is_some(), "{resp:?}");
    let ack = get(&resp, "ack").expect("ack");
    assert_eq!(get(ack, "lastId").and_then(Value::as_str), Some("13"));
    let qr = get(&resp, "queryResults")
        .and_then(Value::as_array)
        .expect("queryResults");
    assert_eq!(qr.len(), 1);
    assert_eq!(get(&qr[0], "queryId").and_then(Value::as_str), Some("hq"));
    assert_eq!(
        get(&qr[0], "results")
            .and_then(Value::as_array)
            .map(Vec::len),
        Some(4),
        "k2..k5 live in map a"
    );

    ops(&node, "PUT", "a", 5.0);
    ops(&node, "DELETE", "a", 1.0);
    ops(&node, "GET", "a", 3.0);
    ops(&node, "SUBSCRIBE", "a", 1.0);
    ops(&node, "PUT", "b", 2.0);
    ops(&node, "DELETE", "b", 2.0);
    ops(&node, "PUT", "c", 2.0);
    ops(&node, "DELETE", "c", 1.0);
    let s = node.scrape();
    for (t, m) in [
        ("GET", "b"),
        ("SUBSCRIBE", "b"),
        ("GET", "c"),
        ("SUBSCRIBE", "c"),
    ] {
        assert_eq!(
            s.value_or_zero("topgun_ops_total", &[("type", t), ("map", m)]),
            0.0,
            "{t} {m}"
        );
    }
    assert_eq!(s.type_of("topgun_ops_total").as_deref(), Some("counter"));

    // Live items and tombstones per map.
    for (m, live, tomb) in [("a", 4.0, 1.0), ("b", 0.0, 2.0), ("c", 1.0, 1.0)] {
        node.wait_metric("topgun_map_size_items", &[("map", m)], live);
        node.wait_metric("topgun_map_tombstones", &[("map", m)], tomb);
    }

    // Overwriting a tombstone with a value moves it back.
    c.send_acked(&client_op(put_op("14", "a", "k1", 9.into(), &t(30))))
        .await;
    node.wait_metric("topgun_map_size_items", &[("map", "a")], 5.0);
    node.wait_metric("topgun_map_tombstones", &[("map", "a")], 0.0);
    ops(&node, "PUT", "a", 6.0);
}

#[tokio::test]
async fn map_label_is_capped_into_other() {
    let node = Node::start_with(NodeOptions::default().args(&["--map-label-cap", "2"]));
    let mut c = node.authed_client().await;
    let t = Ts::new(now_millis() - 1_000, 0, "c");
    c.send_acked(&client_op(put_op("1", "m1", "k", 1.into(), &t)))
        .await;
    ops(&node, "PUT", "m1", 1.0);
    c.send_acked(&client_op(put_op("2", "m2", "k", 1.into(), &t)))
        .await;
    ops(&node, "PUT", "m2", 1.0);
    c.send_acked(&client_op(put_op("3", "m3", "k", 1.into(), &t)))
        .await;
    c.send_acked(&op_batch(vec![
        put_op("4", "m4", "k", 1.into(), &t),
        put_op("5", "m4", "j", 1.into(), &t),
    ]))
    .await;
    ops(&node, "PUT", "__other__", 3.0);
    node.wait_metric("topgun_map_size_items", &[("map", "__other__")], 3.0);
    node.wait_metric("topgun_map_size_items", &[("map", "m1")], 1.0);
    c.sync_root("m9").await;
    ops(&node, "GET", "__other__", 1.0);
    let s = node.scrape();
    for m in ["m3", "m4", "m9"] {
        assert!(
            s.value("topgun_ops_total", &[("map", m)]).is_none(),
            "{m} got its own label"
        );
        assert!(s.value("topgun_map_size_items", &[("map", m)]).is_none());
    }
}
