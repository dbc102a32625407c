//! Guards the LWW rule of issue 4: the node merges by the HLC timestamp the client wrote (it does
//! not re-stamp like the reference), so two clients writing one key converge on the later-stamped
//! value whatever the arrival order, an edit made offline long ago and synced now does not
//! overwrite a newer one (and is still acked), and a timestamp too far ahead is refused with an
//! explicit OP_REJECTED instead of poisoning every clock that merges it.
mod common;

use std::time::Duration;

use common::proto::*;
use common::*;
use rmpv::Value;

/// One stripe: every live event goes through one queue, so a sentinel write's event proves all
/// earlier events were delivered.
fn one_stripe() -> NodeOptions {
    NodeOptions::default().args(&["--event-queue-stripes", "1"])
}

/// What a third client sees of `key`: the QUERY_SUB snapshot value and the sync leaf record.
async fn observed(c: &mut Client, map_name: &str, key: &str) -> (Option<Value>, Value) {
    let resp = c
        .subscribe(&format!("probe-{key}"), map_name, map(&[]))
        .await;
    let snap = results(&resp)
        .into_iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v);
    c.send(&query_unsub(&format!("probe-{key}"))).await;
    let walk = c.walk(map_name).await;
    let rec = walk
        .records
        .get(key)
        .cloned()
        .expect("key in the sync leaves");
    (snap, rec)
}

/// Live updates `sub` got per key (change type, value) until the sentinel key's update.
async fn updates_until_sentinel(
    sub: &mut Client,
    sentinel: &str,
) -> std::collections::BTreeMap<String, Vec<(String, Value)>> {
    let mut out = std::collections::BTreeMap::<String, Vec<(String, Value)>>::new();
    loop {
        let v = sub
            .recv_type_within("QUERY_UPDATE", Duration::from_secs(5))
            .await
            .expect("QUERY_UPDATE");
        let k = pstr(&v, "key").unwrap().to_owned();
        if k == sentinel {
            return out;
        }
        out.entry(k).or_default().push((
            pstr(&v, "changeType").unwrap().to_owned(),
            get(payload(&v), "value").cloned().unwrap_or(Value::Nil),
        ));
    }
}

#[tokio::test]
async fn later_stamp_wins_in_either_arrival_order() {
    let node = Node::start_with(one_stripe());
    let mut a = node.authed_client().await;
    let mut b = node.authed_client().await;
    let mut watcher = node.authed_client().await;
    watcher.subscribe("all", "doc", map(&[])).await;
    let now = now_millis();
    let older = Ts::new(now - 1_000, 0, "client-a");
    let newer = Ts::new(now - 500, 0, "client-b");

    // Older first, then newer: both apply, in order.
    a.send_acked(&client_op(put_op(
        "1",
        "doc",
        "k1",
        "from-a".into(),
        &older,
    )))
    .await;
    b.send_acked(&client_op(put_op(
        "1",
        "doc",
        "k1",
        "from-b".into(),
        &newer,
    )))
    .await;
    // Newer first, then older: the older one is acked but merged away.
    b.send_acked(&client_op(put_op(
        "2",
        "doc",
        "k2",
        "from-b".into(),
        &newer,
    )))
    .await;
    let ack = a
        .send_acked(&client_op(put_op(
            "2",
            "doc",
            "k2",
            "from-a".into(),
            &older,
        )))
        .await;
    assert_eq!(ack.len(), 1, "a stale write is not rejected: {ack:?}");
    assert_eq!(pstr(&ack[0], "lastId"), Some("2"));

    a.send_acked(&client_op(put_op(
        "3",
        "doc",
        "zz-sentinel",
        0.into(),
        &newer,
    )))
    .await;
    let seen = updates_until_sentinel(&mut watcher, "zz-sentinel").await;
    assert_eq!(
        seen["k1"],
        vec![
            ("ENTER".to_owned(), Value::from("from-a")),
            ("UPDATE".to_owned(), Value::from("from-b"))
        ]
    );
    assert_eq!(
        seen["k2"],
        vec![("ENTER".to_owned(), Value::from("from-b"))],
        "the stale write produced no event"
    );
    assert_eq!(seen.len(), 2, "{seen:?}");

    let mut third = node.authed_client().await;
    for key in ["k1", "k2"] {
        let (snap, rec) = observed(&mut third, "doc", key).await;
        assert_eq!(snap, Some(Value::from("from-b")), "{key} snapshot");
        assert_eq!(
            get(&rec, "value"),
            Some(&Value::from("from-b")),
            "{key} sync"
        );
        assert_eq!(Ts::from_wire(get(&rec, "timestamp").unwrap()), newer);
    }
}

#[tokio::test]
async fn offline_edit_with_an_older_stamp_does_not_overwrite() {
    let node = Node::start();
    let mut online = node.authed_client().await;
    let mut offline = node.authed_client().await;
    let now = now_millis();
    let fresh = Ts::new(now, 0, "online");
    online
        .send_acked(&client_op(put_op(
            "1",
            "todos",
            "t1",
            "fresh".into(),
            &fresh,
        )))
        .await;

    // Made an hour ago, synced now (in the batch a reconnecting client sends).
    let hour_ago = Ts::new(now - 3_600_000, 0, "offline");
    let replies = offline
        .send_acked(&op_batch(vec![
            put_op("7", "todos", "t1", "stale".into(), &hour_ago),
            put_op("8", "todos", "t2", "only-offline".into(), &hour_ago),
        ]))
        .await;
    assert_eq!(replies.len(), 1, "only the OP_ACK: {replies:?}");
    assert_eq!(pstr(&replies[0], "lastId"), Some("8"));
    assert_eq!(pstr(&replies[0], "achievedLevel"), Some("APPLIED"));

    let mut third = node.authed_client().await;
    let (snap, rec) = observed(&mut third, "todos", "t1").await;
    assert_eq!(snap, Some(Value::from("fresh")));
    assert_eq!(Ts::from_wire(get(&rec, "timestamp").unwrap()), fresh);
    let (snap, _) = observed(&mut third, "todos", "t2").await;
    assert_eq!(snap, Some(Value::from("only-offline")));

    // A delete made offline before the fresh write loses too.
    offline
        .send_acked(&client_op(remove_op("9", "todos", "t1", &hour_ago)))
        .await;
    let (snap, _) = observed(&mut third, "todos", "t1").await;
    assert_eq!(snap, Some(Value::from("fresh")));
}

#[tokio::test]
async fn far_future_stamp_is_rejected_with_a_reason_and_the_batch_acked() {
    let node = Node::start();
    let mut c = node.authed_client().await;
    let now = now_millis();
    let future = Ts::new(now + 120_000, 0, "skewed");
    let ok = Ts::new(now + 30_000, 0, "ahead-but-ok");
    let replies = c
        .send_acked(&op_batch(vec![
            put_op("1", "clock", "far", "x".into(), &future),
            put_op("2", "clock", "near", "y".into(), &ok),
        ]))
        .await;
    assert_eq!(replies.len(), 2, "{replies:?}");
    assert_eq!(msg_type(&replies[0]), "OP_REJECTED");
    assert_eq!(pstr(&replies[0], "opId"), Some("1"));
    let reason = pstr(&replies[0], "reason").expect("reason");
    assert!(!reason.is_empty());
    assert_eq!(msg_type(&replies[1]), "OP_ACK");
    assert_eq!(pstr(&replies[1], "lastId"), Some("2"));

    // A single CLIENT_OP too.
    let replies = c
        .send_acked(&client_op(put_op("3", "clock", "far", "z".into(), &future)))
        .await;
    assert_eq!(
        replies.iter().map(msg_type).collect::<Vec<_>>(),
        ["OP_REJECTED", "OP_ACK"]
    );
    assert_eq!(pstr(&replies[0], "opId"), Some("3"));

    // Nothing of the rejected writes is stored; the accepted one advanced the node's clock.
    let resp = c.subscribe("q", "clock", map(&[])).await;
    assert_eq!(result_keys(&resp), ["near"]);
    c.send(&sync_init("clock")).await;
    let root = c.recv_type("SYNC_RESP_ROOT").await.unwrap();
    let server_ts = Ts::from_wire(get(payload(&root), "timestamp").unwrap());
    assert!(
        (server_ts.millis, server_ts.counter) > (ok.millis, ok.counter),
        "server HLC {server_ts:?} not advanced past {ok:?}"
    );
}

#[tokio::test]
async fn drift_limit_is_configurable() {
    let node = Node::start_with(NodeOptions::default().args(&["--max-drift-ms", "5000"]));
    let mut c = node.authed_client().await;
    let t = Ts::new(now_millis() + 20_000, 0, "c");
    let replies = c
        .send_acked(&client_op(put_op("1", "m", "k", 1.into(), &t)))
        .await;
    assert_eq!(
        replies.iter().map(msg_type).collect::<Vec<_>>(),
        ["OP_REJECTED", "OP_ACK"]
    );
}

#[tokio::test]
async fn float64_and_integer_millis_are_both_accepted() {
    let node = Node::start();
    let mut c = node.authed_client().await;
    let now = now_millis() - 100;
    // float64 millis (what Date.now() becomes through msgpackr), via the helpers.
    c.send_acked(&client_op(put_op(
        "1",
        "m",
        "f",
        1.into(),
        &Ts::new(now, 0, "c"),
    )))
    .await;
    // uint64 millis.
    let int_ts = map(&[
        ("millis", Value::from(now + 1)),
        ("counter", Value::F64(2.0)),
        ("nodeId", "c".into()),
    ]);
    let op = map(&[
        ("id", "2".into()),
        ("mapName", "m".into()),
        ("key", "i".into()),
        ("opType", "PUT".into()),
        ("record", map(&[("value", 2.into()), ("timestamp", int_ts)])),
    ]);
    let replies = c.send_acked(&client_op(op)).await;
    assert_eq!(replies.len(), 1, "{replies:?}");
    let walk = c.walk("m").await;
    assert_eq!(
        Ts::from_wire(get(&walk.records["f"], "timestamp").unwrap()),
        Ts::new(now, 0, "c")
    );
    assert_eq!(
        Ts::from_wire(get(&walk.records["i"], "timestamp").unwrap()),
        Ts::new(now + 1, 2, "c")
    );
}

#[tokio::test]
async fn equal_millis_and_counter_tie_breaks_on_node_id_bytes() {
    let node = Node::start();
    let mut c = node.authed_client().await;
    let now = now_millis() - 100;
    // Byte order: "Zed" (0x5a…) < "alpha" (0x61…); localeCompare would say the opposite.
    let upper = Ts::new(now, 3, "Zed");
    let lower = Ts::new(now, 3, "alpha");
    c.send_acked(&client_op(put_op("1", "tie", "x", "Zed".into(), &upper)))
        .await;
    c.send_acked(&client_op(put_op("2", "tie", "x", "alpha".into(), &lower)))
        .await;
    c.send_acked(&client_op(put_op("3", "tie", "y", "alpha".into(), &lower)))
        .await;
    c.send_acked(&client_op(put_op("4", "tie", "y", "Zed".into(), &upper)))
        .await;
    let resp = c.subscribe("q", "tie", map(&[])).await;
    let mut got = results(&resp);
    got.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        got,
        vec![
            ("x".to_owned(), Value::from("alpha")),
            ("y".to_owned(), Value::from("alpha"))
        ]
    );
}
