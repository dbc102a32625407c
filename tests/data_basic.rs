//! A TopGun app's basic loop through the real binary: write, get OP_ACK, subscribe to a query
//! and see live ENTER/UPDATE/LEAVE from another client's writes.
mod common;

use common::*;
use rmpv::Value;

fn ts(millis: u64, counter: u32, node: &str) -> Value {
    map(&[
        ("millis", Value::F64(millis as f64)),
        ("counter", counter.into()),
        ("nodeId", node.into()),
    ])
}

fn put(id: &str, map_name: &str, key: &str, value: Value, millis: u64) -> Value {
    map(&[
        ("type", "CLIENT_OP".into()),
        (
            "payload",
            common::map(&[
                ("id", id.into()),
                ("mapName", map_name.into()),
                ("key", key.into()),
                ("opType", "PUT".into()),
                (
                    "record",
                    common::map(&[("value", value), ("timestamp", ts(millis, 0, "client-a"))]),
                ),
            ]),
        ),
    ])
}

#[tokio::test]
async fn write_ack_query_and_live_updates() {
    let node = Node::start();
    let mut writer = node.authed_client().await;
    let mut reader = node.authed_client().await;
    let now = now_millis();

    writer
        .send(&put("1", "todos", "a", map(&[("done", false.into())]), now))
        .await;
    let ack = writer.recv_type("OP_ACK").await.expect("OP_ACK");
    assert_eq!(
        get(payload(&ack), "lastId").and_then(|v| v.as_str()),
        Some("1")
    );

    let query = map(&[
        ("type", "QUERY_SUB".into()),
        (
            "payload",
            common::map(&[
                ("queryId", "q1".into()),
                ("mapName", "todos".into()),
                (
                    "query",
                    common::map(&[("where", common::map(&[("done", false.into())]))]),
                ),
            ]),
        ),
    ]);
    reader.send(&query).await;
    let resp = reader.recv_type("QUERY_RESP").await.expect("QUERY_RESP");
    let results = get(payload(&resp), "results")
        .unwrap()
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(results.len(), 1, "{resp:?}");

    writer
        .send(&put(
            "2",
            "todos",
            "b",
            map(&[("done", false.into())]),
            now + 1,
        ))
        .await;
    let update = reader.recv_type("QUERY_UPDATE").await.expect("ENTER");
    assert_eq!(
        get(payload(&update), "changeType").and_then(|v| v.as_str()),
        Some("ENTER")
    );
    writer
        .send(&put(
            "3",
            "todos",
            "b",
            map(&[("done", true.into())]),
            now + 2,
        ))
        .await;
    let update = reader.recv_type("QUERY_UPDATE").await.expect("LEAVE");
    assert_eq!(
        get(payload(&update), "changeType").and_then(|v| v.as_str()),
        Some("LEAVE")
    );

    node.wait_metric(
        "topgun_ops_total",
        &[("type", "PUT"), ("map", "todos")],
        3.0,
    );
    node.wait_metric(
        "topgun_ops_total",
        &[("type", "SUBSCRIBE"), ("map", "todos")],
        1.0,
    );
    node.wait_metric("topgun_map_size_items", &[("map", "todos")], 2.0);
}

#[tokio::test]
async fn a_single_node_is_a_cluster_of_one() {
    let node = Node::start();
    node.wait_metric("topgun_cluster_members", &[], 1.0);
    let mut c = node.authed_client().await;
    c.send(&map(&[("type", "PARTITION_MAP_REQUEST".into())]))
        .await;
    let reply = c.recv_type("PARTITION_MAP").await.expect("PARTITION_MAP");
    let p = payload(&reply);
    assert_eq!(get(p, "partitionCount").and_then(Value::as_u64), Some(271));
    let partitions = get(p, "partitions").and_then(Value::as_array).unwrap();
    assert_eq!(partitions.len(), 271);
    let nodes = get(p, "nodes").and_then(Value::as_array).unwrap();
    let url = get(get(&nodes[0], "endpoints").unwrap(), "websocket")
        .and_then(Value::as_str)
        .unwrap();
    assert_eq!(url, format!("ws://127.0.0.1:{}/ws", node.port));
}
