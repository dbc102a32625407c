//! Guards OR-Map sync (protocol.md 4.4): a client that was offline learns every OR record and
//! removed tag through ORMAP_SYNC_INIT → buckets → leaf entries, ORMAP_DIFF_REQUEST answers the
//! named keys, and ORMAP_PUSH_DIFF from a client is applied like OR_ADD/OR_REMOVE ops.
mod common;

use common::proto::*;
use common::*;
use rmpv::Value;

#[tokio::test]
async fn an_offline_client_learns_or_records_and_removals_through_sync() {
    let node = Node::start();
    let mut writer = node.authed_client().await;
    let t = Ts::new(now_millis(), 0, "w");
    for (key, tag) in [("a", "t1"), ("a", "t2"), ("b", "t3")] {
        writer.send(&or_add(key, tag, "x".into(), &t)).await;
        assert_eq!(
            msg_type(&writer.recv_type("OP_ACK").await.unwrap()),
            "OP_ACK"
        );
    }
    writer.send(&or_remove("a", "t1")).await;
    writer.recv_type("OP_ACK").await.unwrap();

    let mut offline = node.authed_client().await;
    let found = or_walk(&mut offline).await;
    assert_eq!(found["a"], (vec!["t2".to_owned()], vec!["t1".to_owned()]));
    assert_eq!(found["b"], (vec!["t3".to_owned()], vec![]));

    offline
        .send(&wrapped(
            "ORMAP_DIFF_REQUEST",
            map(&[
                ("mapName", "tags".into()),
                ("keys", Value::Array(vec!["b".into(), "zz".into()])),
            ]),
        ))
        .await;
    let diff = offline.recv_type("ORMAP_DIFF_RESPONSE").await.unwrap();
    let entries = get(payload(&diff), "entries")
        .and_then(Value::as_array)
        .unwrap();
    assert_eq!(entries.len(), 1, "{diff:?}");
    assert_eq!(get(&entries[0], "key").and_then(Value::as_str), Some("b"));
}

#[tokio::test]
async fn a_pushed_diff_is_applied() {
    let node = Node::start();
    let mut c = node.authed_client().await;
    let t = Ts::new(now_millis(), 0, "c");
    c.send(&wrapped(
        "ORMAP_PUSH_DIFF",
        map(&[
            ("mapName", "tags".into()),
            (
                "entries",
                Value::Array(vec![map(&[
                    ("key", "k".into()),
                    (
                        "records",
                        Value::Array(vec![map(&[
                            ("value", 1.into()),
                            ("timestamp", t.wire()),
                            ("tag", "p1".into()),
                        ])]),
                    ),
                    ("tombstones", Value::Array(vec!["gone".into()])),
                ])]),
            ),
        ]),
    ))
    .await;
    node.wait_metric("topgun_ops_total", &[("type", "PUT"), ("map", "tags")], 1.0);
    let mut other = node.authed_client().await;
    let found = or_walk(&mut other).await;
    assert_eq!(found["k"], (vec!["p1".to_owned()], vec!["gone".to_owned()]));
    // An empty OR map has root 0.
    let empty = Node::start();
    let mut c = empty.authed_client().await;
    assert!(or_walk(&mut c).await.is_empty());
}
