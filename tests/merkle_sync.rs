//! Guards Merkle sync (protocol.md 5): the node must hash exactly like the TS client's single
//! depth-3 tree, tombstones included, or a client that was offline never learns that it is in
//! sync (or worse, never learns of a delete). The hashing is computed here from the spec's
//! formulas (`common::proto`), independently of the node, and checked against the spec's own
//! vectors first.
mod common;

use std::collections::BTreeMap;

use common::proto::*;
use common::*;
use rmpv::Value;

#[test]
fn spec_vectors_hold_for_the_test_implementation() {
    assert_eq!(fnv1a(""), 2_166_136_261);
    assert_eq!(fnv1a("hello"), 1_335_831_723);
    assert_eq!(fnv1a("key1"), 927_623_783);
    assert_eq!(fnv1a("key1:100:0:test"), 3_988_528_110);
    assert_eq!(mix(0), 0);
    assert_eq!(mix(1), 0x514e_28b7);
    assert_eq!(combine([]), 0);

    let alice = Ts::new(1_700_000_000_000, 0, "srv");
    let bob = Ts::new(1_700_000_000_001, 0, "srv");
    assert_eq!(route("alice"), "872213e7");
    assert_eq!(route("bob"), "86c6a0d4");
    assert_eq!(item_hash("alice", &alice), 3_481_118_468);
    assert_eq!(item_hash("bob", &bob), 2_368_672_400);
    let mut t = Tree::default();
    t.insert("alice", &alice);
    t.insert("bob", &bob);
    assert_eq!(t.root(), 18_126_308);
    assert_eq!(
        t.buckets(""),
        BTreeMap::from([("8".to_owned(), 2_370_988_415)])
    );
    assert_eq!(
        t.buckets("8"),
        BTreeMap::from([("6".to_owned(), 650_017_920), ("7".to_owned(), 239_843_490)])
    );
    assert_eq!(Tree::default().root(), 0);
}

#[tokio::test]
async fn node_reproduces_the_spec_vector_and_empty_root_is_zero() {
    let node = Node::start();
    let mut c = node.authed_client().await;
    assert_eq!(
        c.sync_root("vec").await,
        0,
        "a map never written has root 0"
    );

    let alice = Ts::new(1_700_000_000_000, 0, "srv");
    let bob = Ts::new(1_700_000_000_001, 0, "srv");
    c.send_acked(&op_batch(vec![
        put_op("1", "vec", "alice", "A".into(), &alice),
        put_op("2", "vec", "bob", "B".into(), &bob),
    ]))
    .await;
    assert_eq!(c.sync_root("vec").await, 18_126_308);
    let root = c.merkle("vec", "").await;
    assert_eq!(msg_type(&root), "SYNC_RESP_BUCKETS");
    let buckets = |v: &Value| -> BTreeMap<String, u64> {
        get(payload(v), "buckets")
            .and_then(Value::as_map)
            .unwrap()
            .iter()
            .map(|(k, h)| (k.as_str().unwrap().to_owned(), as_u64(h)))
            .collect()
    };
    assert_eq!(
        buckets(&root),
        BTreeMap::from([("8".to_owned(), 2_370_988_415)])
    );
    let eight = c.merkle("vec", "8").await;
    assert_eq!(
        buckets(&eight),
        BTreeMap::from([("6".to_owned(), 650_017_920), ("7".to_owned(), 239_843_490)])
    );
    // Another map on the same node is unaffected.
    assert_eq!(c.sync_root("other").await, 0);
}

#[tokio::test]
async fn root_matches_the_test_tree_including_tombstones_and_walk_lists_everything() {
    let node = Node::start_with(NodeOptions::default().args(&["--shards", "3"]));
    let mut w = node.authed_client().await;
    let mut expected = Tree::default();
    let base = now_millis() - 10_000;

    // CLIENT_OPs and an OP_BATCH, keys spread over shards and leaves.
    for i in 0..10u32 {
        let t = Ts::new(base + u64::from(i), i % 3, "writer-a");
        let key = format!("user-{i}");
        w.send_acked(&client_op(put_op(
            &i.to_string(),
            "people",
            &key,
            map(&[("n", i.into())]),
            &t,
        )))
        .await;
        expected.insert(&key, &t);
    }
    let ops: Vec<Value> = (10..60u32)
        .map(|i| {
            let t = Ts::new(base + 100 + u64::from(i), 0, "writer-b");
            let key = format!("user-{i}");
            expected.insert(&key, &t);
            put_op(&i.to_string(), "people", &key, i.into(), &t)
        })
        .collect();
    w.send_acked(&op_batch(ops)).await;
    let mut probe = node.authed_client().await;
    assert_eq!(probe.sync_root("people").await, expected.root());

    // A REMOVE keeps a tombstone stamped with the delete's timestamp: it stays in the tree.
    let del = Ts::new(base + 5_000, 0, "writer-a");
    w.send_acked(&client_op(remove_op("61", "people", "user-3", &del)))
        .await;
    expected.insert("user-3", &del);
    let root = probe.sync_root("people").await;
    assert_eq!(root, expected.root(), "tombstone hashed like a record");
    assert_ne!(root, 0);

    // The walk: every bucket equals the test's, every record (the tombstone with nil value).
    let walk = probe.walk("people").await;
    for (path, got) in &walk.buckets {
        assert_eq!(*got, expected.buckets(path), "buckets at {path:?}");
    }
    assert_eq!(walk.records.len(), 60);
    assert_eq!(walk.tree().items, expected.items);
    assert_eq!(walk.value("user-3"), Some(&Value::Nil));
    assert_eq!(walk.value("user-4"), Some(&map(&[("n", 4.into())])));
    assert_eq!(walk.value("user-42"), Some(&Value::from(42)));
    let rec = walk.records.get("user-3").unwrap();
    assert_eq!(Ts::from_wire(get(rec, "timestamp").unwrap()), del);
}

#[tokio::test]
async fn offline_client_converges_through_the_walk_and_learns_of_a_delete() {
    let node = Node::start();
    let mut online = node.authed_client().await;
    let base = now_millis() - 60_000;

    let ops: Vec<Value> = (0..30u32)
        .map(|i| {
            let t = Ts::new(base + u64::from(i), 0, "online");
            put_op(&i.to_string(), "notes", &format!("n{i}"), i.into(), &t)
        })
        .collect();
    online.send_acked(&op_batch(ops)).await;

    // The offline client syncs once, keeps its local copy, goes away.
    let mut offline = node.authed_client().await;
    let first = offline.walk("notes").await;
    let mut local: BTreeMap<String, Value> = first.records.clone();
    assert_eq!(local.len(), 30);
    let local_tree = |l: &BTreeMap<String, Value>| {
        let mut t = Tree::default();
        for (k, r) in l {
            t.insert(k, &Ts::from_wire(get(r, "timestamp").unwrap()));
        }
        t
    };
    assert_eq!(
        offline.sync_root("notes").await,
        local_tree(&local).root(),
        "an up-to-date client stops at the root"
    );
    drop(offline);

    // While it is away: new keys, updates, a delete.
    let mut ops = Vec::new();
    for i in 30..35u32 {
        let t = Ts::new(base + 1_000 + u64::from(i), 0, "online");
        ops.push(put_op(
            &i.to_string(),
            "notes",
            &format!("n{i}"),
            i.into(),
            &t,
        ));
    }
    for i in [1u32, 2, 3] {
        let t = Ts::new(base + 2_000 + u64::from(i), 0, "online");
        ops.push(put_op(
            &format!("u{i}"),
            "notes",
            &format!("n{i}"),
            "updated".into(),
            &t,
        ));
    }
    online.send_acked(&op_batch(ops)).await;
    let del = Ts::new(base + 3_000, 0, "online");
    online
        .send_acked(&client_op(remove_op("99", "notes", "n7", &del)))
        .await;

    // It comes back: the root differs, it walks and merges with the LWW rule.
    let mut back = node.authed_client().await;
    let server_root = back.sync_root("notes").await;
    assert_ne!(server_root, local_tree(&local).root());
    let walk = back.walk("notes").await;
    for (k, r) in &walk.records {
        let remote = Ts::from_wire(get(r, "timestamp").unwrap());
        let newer = local
            .get(k)
            .is_none_or(|l| remote > Ts::from_wire(get(l, "timestamp").unwrap()));
        if newer {
            local.insert(k.clone(), r.clone());
        }
    }
    assert_eq!(local_tree(&local).root(), server_root, "converged");
    assert_eq!(local.len(), 35);
    assert_eq!(
        get(&local["n7"], "value"),
        Some(&Value::Nil),
        "the delete arrived as a tombstone record"
    );
    assert_eq!(Ts::from_wire(get(&local["n7"], "timestamp").unwrap()), del);
    assert_eq!(get(&local["n2"], "value"), Some(&Value::from("updated")));
    assert_eq!(get(&local["n33"], "value"), Some(&Value::from(33)));
}
