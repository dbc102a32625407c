//! Guards OR-Map sync (protocol.md 4.4): a client that was offline learns every OR record and
//! removed tag through ORMAP_SYNC_INIT → buckets → leaf entries, ORMAP_DIFF_REQUEST answers the
//! named keys, and ORMAP_PUSH_DIFF from a client is applied like OR_ADD/OR_REMOVE ops.
mod common;

use std::collections::BTreeMap;

use common::proto::*;
use common::*;
use rmpv::Value;

fn or_add(key: &str, tag: &str, value: Value, t: &Ts) -> Value {
    client_op(map(&[
        ("id", "1".into()),
        ("mapName", "tags".into()),
        ("key", key.into()),
        ("opType", "OR_ADD".into()),
        (
            "orRecord",
            map(&[
                ("value", value),
                ("timestamp", t.wire()),
                ("tag", tag.into()),
            ]),
        ),
    ]))
}

fn or_remove(key: &str, tag: &str) -> Value {
    client_op(map(&[
        ("id", "2".into()),
        ("mapName", "tags".into()),
        ("key", key.into()),
        ("opType", "OR_REMOVE".into()),
        ("orTag", tag.into()),
    ]))
}

/// Walks the OR tree from the root to every leaf: key → (live tags, removed tags).
async fn or_walk(c: &mut Client) -> BTreeMap<String, (Vec<String>, Vec<String>)> {
    c.send(&map(&[
        ("type", "ORMAP_SYNC_INIT".into()),
        ("mapName", "tags".into()),
        ("rootHash", 0.into()),
        ("bucketHashes", map(&[])),
    ]))
    .await;
    let root = c.recv_type("ORMAP_SYNC_RESP_ROOT").await.expect("root");
    let mut out = BTreeMap::new();
    if get(payload(&root), "rootHash").and_then(Value::as_u64) == Some(0) {
        return out;
    }
    let mut paths = vec![String::new()];
    while let Some(path) = paths.pop() {
        c.send(&wrapped(
            "ORMAP_MERKLE_REQ_BUCKET",
            map(&[("mapName", "tags".into()), ("path", path.clone().into())]),
        ))
        .await;
        let reply = c.recv().await.expect("reply");
        let p = payload(&reply);
        assert_eq!(pstr(&reply, "path"), Some(path.as_str()));
        match msg_type(&reply) {
            "ORMAP_SYNC_RESP_BUCKETS" => {
                for (k, h) in get(p, "buckets")
                    .and_then(Value::as_map)
                    .cloned()
                    .unwrap_or_default()
                {
                    if h.as_u64() != Some(0) {
                        paths.push(format!("{path}{}", k.as_str().unwrap_or_default()));
                    }
                }
            }
            "ORMAP_SYNC_RESP_LEAF" => {
                for e in get(p, "entries")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default()
                {
                    let key = get(&e, "key").and_then(Value::as_str).unwrap().to_owned();
                    let tags = get(&e, "records")
                        .and_then(Value::as_array)
                        .unwrap()
                        .iter()
                        .map(|r| get(r, "tag").and_then(Value::as_str).unwrap().to_owned())
                        .collect();
                    let removed = get(&e, "tombstones")
                        .and_then(Value::as_array)
                        .unwrap()
                        .iter()
                        .map(|t| t.as_str().unwrap().to_owned())
                        .collect();
                    out.insert(key, (tags, removed));
                }
            }
            other => panic!("unexpected {other}"),
        }
    }
    out
}

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
