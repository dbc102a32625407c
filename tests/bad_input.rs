//! Guards the node against hostile or broken clients (issue 4 "Bad input"): every bad case gets
//! its answer (a request that does not decode gets the refusal its client waits for: OP_REJECTED
//! per op, a QUERY_RESP with an error, ERROR 400 (issue 15); garbage and unknown types are
//! dropped; ERROR 413, close 1009), is counted in
//! `topgun_invalid_messages_total{reason}` and costs nothing else; random frames and random op
//! sequences from several connections never take the node down, and concurrent writers in any
//! arrival order converge on the state the LWW rule predicts (checked with the test's own
//! Merkle root). One panic on client input would take every client of the node with it.
mod common;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::time::Duration;

use common::proto::*;
use common::*;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use rmpv::Value;

/// A CLIENT_OP PUT with a hand-made timestamp map.
fn put_with_ts(map_name: &str, key: &str, value: Value, ts: Value) -> Value {
    client_op(map(&[
        ("id", "1".into()),
        ("mapName", map_name.into()),
        ("key", key.into()),
        ("opType", "PUT".into()),
        ("record", map(&[("value", value), ("timestamp", ts)])),
    ]))
}

/// `levels` nested non-empty arrays around an int.
fn nested(levels: usize) -> Value {
    let mut v = Value::from(1);
    for _ in 0..levels {
        v = Value::Array(vec![v]);
    }
    v
}

/// A BATCH envelope (protocol.md 1.6): big-endian length-prefixed items.
fn batch(items: &[Vec<u8>]) -> Value {
    let mut data = Vec::new();
    for i in items {
        data.extend_from_slice(&(i.len() as u32).to_be_bytes());
        data.extend_from_slice(i);
    }
    map(&[
        ("type", "BATCH".into()),
        ("count", (items.len() as u64).into()),
        ("data", Value::Binary(data)),
    ])
}

/// Sends `frame`, then proves the connection is alive and nothing came back.
async fn dropped_silently(c: &mut Client, frame: &Value) {
    c.send(frame).await;
    let replies = c.ping_pong().await;
    assert!(
        replies.is_empty(),
        "expected a silent drop, got {replies:?}"
    );
}

/// Sends `frame`, then proves the connection is alive and the one answer is `answer` (an
/// OP_REJECTED for op id "1" when it is one).
async fn refused_with(c: &mut Client, frame: &Value, answer: &str) {
    c.send(frame).await;
    let replies = c.ping_pong().await;
    assert_eq!(replies.len(), 1, "expected one {answer}, got {replies:?}");
    assert_eq!(msg_type(&replies[0]), answer, "{replies:?}");
    if answer == "OP_REJECTED" {
        assert_eq!(pstr(&replies[0], "opId"), Some("1"), "{replies:?}");
        assert_eq!(
            get(payload(&replies[0]), "code").map(as_u64),
            Some(400),
            "{replies:?}"
        );
    }
}

async fn wait_invalid(node: &Node, reason: &str, want: f64) {
    node.wait_metric("topgun_invalid_messages_total", &[("reason", reason)], want);
}

#[tokio::test]
async fn each_bad_case_is_answered_and_counted() {
    let node = Node::start();
    let mut c = node.authed_client().await;
    let now = now_millis() - 1_000;
    let good_ts = || Ts::new(now, 0, "c").wire();

    // Depth: 3 levels of message + 253 arrays = 256 is accepted; one more is refused.
    let replies = c
        .send_acked(&put_with_ts("deep", "ok", nested(253), good_ts()))
        .await;
    assert_eq!(replies.len(), 1);
    // Too deep to be read at all: dropped, counted.
    dropped_silently(&mut c, &put_with_ts("deep", "bad", nested(254), good_ts())).await;
    dropped_silently(
        &mut c,
        &put_with_ts("deep", "bad", nested(1_000), good_ts()),
    )
    .await;
    wait_invalid(&node, "too_deep", 2.0).await;

    // Fractional millis: the whole frame is refused, its op rejected.
    let frac = map(&[
        ("millis", Value::F64(now as f64 + 0.5)),
        ("counter", 0.into()),
        ("nodeId", "c".into()),
    ]);
    refused_with(
        &mut c,
        &put_with_ts("m", "frac", 1.into(), frac),
        "OP_REJECTED",
    )
    .await;
    wait_invalid(&node, "fractional_integer", 1.0).await;

    // nodeId with ':' would break the "<millis>:<counter>:<nodeId>" form.
    let colon = map(&[
        ("millis", Value::F64(now as f64)),
        ("counter", 0.into()),
        ("nodeId", "evil:node".into()),
    ]);
    refused_with(
        &mut c,
        &put_with_ts("m", "colon", 1.into(), colon),
        "OP_REJECTED",
    )
    .await;
    wait_invalid(&node, "bad_node_id", 1.0).await;

    // Unknown predicate operator: a QUERY_RESP with the error.
    let q = map(&[(
        "predicate",
        map(&[
            ("op", "sortOfEqual".into()),
            ("attribute", "a".into()),
            ("value", 1.into()),
        ]),
    )]);
    refused_with(&mut c, &query_sub("q", "m", q), "QUERY_RESP").await;
    wait_invalid(&node, "unknown_operator", 1.0).await;

    // Map names: too long, control character, reserved; 256 bytes is fine.
    let long = "n".repeat(257);
    for name in [long.as_str(), "tab\tname", "nul\u{0}", ""] {
        refused_with(
            &mut c,
            &put_with_ts(name, "k", 1.into(), good_ts()),
            "OP_REJECTED",
        )
        .await;
    }
    wait_invalid(&node, "bad_map_name", 4.0).await;
    refused_with(
        &mut c,
        &put_with_ts("_topgun_internal", "k", 1.into(), good_ts()),
        "OP_REJECTED",
    )
    .await;
    wait_invalid(&node, "reserved_map_name", 1.0).await;
    let max_name = "n".repeat(256);
    assert_eq!(
        c.send_acked(&put_with_ts(&max_name, "k", 1.into(), good_ts()))
            .await
            .len(),
        1
    );

    // BATCH of 8,193 items: refused whole with ERROR 413.
    let item = encode(&ping(1.0));
    let big = batch(&vec![item.clone(); 8_193]);
    c.send(&big).await;
    let err = c.recv_type("ERROR").await.expect("ERROR 413");
    assert_eq!(get(payload(&err), "code").map(as_u64), Some(413));
    assert_eq!(
        pstr(&err, "message"),
        Some("batch exceeds maximum inner item count")
    );
    assert!(
        c.ping_pong().await.is_empty(),
        "no PONG from the refused batch"
    );
    wait_invalid(&node, "batch_too_large", 1.0).await;
    // A small BATCH: valid items run, a broken one is skipped and counted.
    c.send(&batch(&[item.clone(), vec![0xc1], item.clone()]))
        .await;
    assert_eq!(msg_type(&c.recv().await.unwrap()), "PONG");
    assert_eq!(msg_type(&c.recv().await.unwrap()), "PONG");
    wait_invalid(&node, "not_a_map", 1.0).await;

    // Random bytes and other undecodable frames.
    c.send_raw(vec![0xc1, 0x00, 0xff]).await; // a never-used MessagePack byte
    c.send_raw(vec![0x93, 1, 2, 3]).await; // an array, not a map
    c.send_raw(vec![0x81, 0xc1, 0x00]).await; // a map holding garbage
    c.send_raw(vec![0x82, 0xa1, b'x', 0x01]).await; // a map cut short
    c.send_raw(vec![0x81, 0xa1, b'x', 0x01]).await; // a map without `type`
    dropped_silently(&mut c, &map(&[("type", "NO_SUCH_TYPE".into())])).await;
    wait_invalid(&node, "not_a_map", 3.0).await;
    wait_invalid(&node, "invalid_msgpack", 1.0).await;
    wait_invalid(&node, "truncated", 1.0).await;
    wait_invalid(&node, "missing_type", 1.0).await;
    wait_invalid(&node, "unknown_type", 1.0).await;

    // None of it was applied or counted as an op.
    let s = node.scrape();
    for m in ["m", "_topgun_internal", "tab\tname"] {
        assert!(s.value("topgun_ops_total", &[("map", m)]).is_none(), "{m}");
    }
    assert_eq!(
        s.value("topgun_ops_total", &[("type", "PUT"), ("map", "deep")]),
        Some(1.0)
    );
    let mut probe = node.authed_client().await;
    assert_eq!(
        result_keys(&probe.subscribe("d", "deep", map(&[])).await),
        ["ok"]
    );

    // A message of exactly 2 MiB is read (and dropped as garbage); one byte more closes 1009.
    c.send_raw(vec![0xc1; 2 * 1024 * 1024]).await;
    assert!(c.ping_pong().await.is_empty());
    wait_invalid(&node, "not_a_map", 4.0).await;
    c.send_raw(vec![0xc1; 2 * 1024 * 1024 + 1]).await;
    let (code, _) = c.expect_close(Duration::from_secs(10)).await;
    assert_eq!(code, 1009);
    wait_invalid(&node, "frame_too_large", 1.0).await;

    // The node is fine.
    assert_eq!(node.get("/health").0, 200);
    assert!(probe.ping_pong().await.is_empty());
}

// ---- property: random frames never take the node down ---------------------------------------

fn arb_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Nil),
        any::<bool>().prop_map(Value::Boolean),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::F64),
        ".{0,12}".prop_map(Value::from),
        prop::collection::vec(any::<u8>(), 0..16).prop_map(Value::Binary),
        prop_oneof![
            Just("type"),
            Just("payload"),
            Just("CLIENT_OP"),
            Just("OP_BATCH"),
            Just("QUERY_SUB"),
            Just("SYNC_INIT"),
            Just("MERKLE_REQ_BUCKET"),
            Just("TOPIC_PUB"),
            Just("BATCH"),
            Just("mapName"),
            Just("record"),
            Just("timestamp"),
            Just("millis"),
        ]
        .prop_map(Value::from),
    ];
    leaf.prop_recursive(6, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((inner.clone(), inner), 0..6).prop_map(Value::Map),
        ]
    })
}

/// Frames a real client sends, for mutation.
fn valid_frames() -> Vec<Vec<u8>> {
    let t = Ts::new(1_700_000_000_000, 0, "c");
    vec![
        encode(&client_op(put_op(
            "1",
            "fuzz",
            "k",
            map(&[("a", 1.into())]),
            &t,
        ))),
        encode(&op_batch(vec![
            put_op("1", "fuzz", "a", 1.into(), &t),
            remove_op("2", "fuzz", "b", &t),
        ])),
        encode(&query_sub(
            "q",
            "fuzz",
            map(&[
                (
                    "predicate",
                    map(&[
                        ("op", "gt".into()),
                        ("attribute", "a".into()),
                        ("value", 0.into()),
                    ]),
                ),
                ("limit", 5.into()),
            ]),
        )),
        encode(&sync_init("fuzz")),
        encode(&merkle_req("fuzz", "8")),
        encode(&topic_pub("t", Value::Array(vec![1.into()]))),
        encode(&batch(&[encode(&ping(1.0)), encode(&sync_init("fuzz"))])),
    ]
}

#[derive(Debug, Clone)]
enum Frame {
    Bytes(Vec<u8>),
    Value(Value),
    /// A valid frame with (position, byte) overwrites and a truncation.
    Mutated(usize, Vec<(usize, u8)>, Option<usize>),
    /// A valid message shape around a random payload.
    Shaped(&'static str, Value),
}

fn arb_frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..256).prop_map(Frame::Bytes),
        arb_value().prop_map(Frame::Value),
        (
            0..7usize,
            prop::collection::vec((any::<usize>(), any::<u8>()), 1..6),
            prop::option::of(any::<usize>())
        )
            .prop_map(|(i, m, t)| Frame::Mutated(i, m, t)),
        (
            prop_oneof![
                Just("CLIENT_OP"),
                Just("OP_BATCH"),
                Just("QUERY_SUB"),
                Just("MERKLE_REQ_BUCKET"),
                Just("TOPIC_PUB"),
                Just("QUERY_UNSUB"),
            ],
            arb_value()
        )
            .prop_map(|(t, p)| Frame::Shaped(t, p)),
    ]
}

fn frame_bytes(f: &Frame, valid: &[Vec<u8>]) -> Vec<u8> {
    match f {
        Frame::Bytes(b) => b.clone(),
        Frame::Value(v) => encode(v),
        Frame::Mutated(i, muts, cut) => {
            let mut b = valid[*i].clone();
            for (pos, byte) in muts {
                let n = b.len();
                b[pos % n] = *byte;
            }
            if let Some(c) = cut {
                b.truncate(c % (b.len() + 1));
            }
            b
        }
        Frame::Shaped(t, p) => encode(&wrapped(t, p.clone())),
    }
}

#[test]
fn random_frames_never_take_the_node_down() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let node = Node::start();
    // Taken out for a case and put back after it (a failed case just connects anew).
    let client = RefCell::new(None::<Client>);
    let valid = valid_frames();
    let mut runner = TestRunner::new(Config {
        cases: 32,
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&prop::collection::vec(arb_frame(), 1..8), |frames| {
        let taken = client.borrow_mut().take();
        rt.block_on(async {
            let mut c = match taken {
                Some(c) if c.closed.is_none() => c,
                _ => node.authed_client().await,
            };
            for f in &frames {
                c.send_raw(frame_bytes(f, &valid)).await;
            }
            // PING must still be answered on this connection (frames never close it: they are
            // all far below 2 MiB), whatever the frames provoked before the PONG.
            c.send(&ping(7.0)).await;
            loop {
                let v = c
                    .recv_within(Duration::from_secs(10))
                    .await
                    .ok_or_else(|| TestCaseError::fail(format!("no PONG after {frames:?}")))?;
                if msg_type(&v) == "PONG" {
                    break;
                }
            }
            let (status, _) = http_get(node.port, "/health")
                .map_err(|e| TestCaseError::fail(format!("/health: {e}")))?;
            prop_assert_eq!(status, 200);
            *client.borrow_mut() = Some(c);
            Ok(())
        })
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    // Pure garbage was counted: at least every case's random-bytes frames that failed to decode.
    let s = node.scrape();
    assert!(invalid_sum(&s) > 0.0);
    let mut fresh = rt.block_on(node.authed_client());
    assert!(rt.block_on(fresh.ping_pong()).is_empty());
}

#[test]
fn every_undecodable_random_frame_is_counted_once() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let node = Node::start();
    let client = RefCell::new(None::<Client>);
    let sent = RefCell::new(0u64);
    let mut runner = TestRunner::new(Config {
        cases: 24,
        failure_persistence: None,
        ..Config::default()
    });
    // Bytes that can never be a message: a reserved byte first, or a non-map value.
    let garbage = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..64).prop_map(|mut b| {
            b.insert(0, 0xc1);
            b
        }),
        any::<i64>().prop_map(|i| encode(&Value::from(i))),
        ".{0,20}".prop_map(|s| encode(&Value::from(s))),
    ];
    let result = runner.run(&prop::collection::vec(garbage, 1..5), |frames| {
        let taken = client.borrow_mut().take();
        rt.block_on(async {
            let mut c = match taken {
                Some(c) => c,
                None => node.authed_client().await,
            };
            for f in &frames {
                c.send_raw(f.clone()).await;
            }
            prop_assert!(c.ping_pong().await.is_empty());
            *sent.borrow_mut() += frames.len() as u64;
            *client.borrow_mut() = Some(c);
            Ok(())
        })
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    let want = *sent.borrow() as f64;
    wait_scrape(&node, "one count per undecodable frame", |s| {
        invalid_sum(s) == want
    });
}

// ---- property: maps converge whatever the arrival order -------------------------------------

#[derive(Debug, Clone)]
enum Op {
    Put {
        key: u8,
        value: i64,
        millis: u64,
        counter: u32,
    },
    Remove {
        key: u8,
        millis: u64,
        counter: u32,
    },
}

fn arb_ops() -> impl Strategy<Value = Vec<(usize, Op)>> {
    let op = prop_oneof![
        4 => (0u8..6, any::<i64>(), 0u64..40, 0u32..3)
            .prop_map(|(key, value, millis, counter)| Op::Put { key, value, millis, counter }),
        1 => (0u8..6, 0u64..40, 0u32..3)
            .prop_map(|(key, millis, counter)| Op::Remove { key, millis, counter }),
    ];
    prop::collection::vec((0usize..3, op), 1..40)
}

#[test]
fn concurrent_writers_converge_on_the_lww_state() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let node = Node::start_with(NodeOptions::default().args(&["--shards", "3"]));
    let clients = RefCell::new(None::<Vec<Client>>);
    let case = RefCell::new(0u32);
    let base = now_millis() - 60_000;
    let mut runner = TestRunner::new(Config {
        cases: 24,
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&arb_ops(), |ops| {
        *case.borrow_mut() += 1;
        let map_name = format!("conv-{}", case.borrow());
        let taken = clients.borrow_mut().take();
        rt.block_on(async {
            let mut conns = match taken {
                Some(c) => c,
                None => {
                    let mut v = Vec::new();
                    for _ in 0..3 {
                        v.push(node.authed_client().await);
                    }
                    v
                }
            };
            // Expected state: per key the greatest (millis, counter, nodeId); equal stamps
            // come from one client, whose first write wins.
            let mut expected: BTreeMap<String, (Ts, Value)> = BTreeMap::new();
            let mut per_client: Vec<Vec<Value>> = vec![Vec::new(); 3];
            for (i, (ci, op)) in ops.iter().enumerate() {
                let node_id = format!("c{ci}");
                let (key, t, value, wire) = match op {
                    Op::Put {
                        key,
                        value,
                        millis,
                        counter,
                    } => {
                        let t = Ts::new(base + millis, *counter, &node_id);
                        let k = format!("k{key}");
                        let w = put_op(&i.to_string(), &map_name, &k, (*value).into(), &t);
                        (k, t, Value::from(*value), w)
                    }
                    Op::Remove {
                        key,
                        millis,
                        counter,
                    } => {
                        let t = Ts::new(base + millis, *counter, &node_id);
                        let k = format!("k{key}");
                        let w = remove_op(&i.to_string(), &map_name, &k, &t);
                        (k, t, Value::Nil, w)
                    }
                };
                if expected.get(&key).is_none_or(|(cur, _)| t > *cur) {
                    expected.insert(key, (t, value));
                }
                per_client[*ci].push(wire);
            }
            // Every client sends all its ops without waiting: arrival order across
            // connections is up to the scheduler.
            for (c, ops) in conns.iter_mut().zip(&per_client) {
                for op in ops {
                    c.send(&client_op(op.clone())).await;
                }
            }
            for (c, ops) in conns.iter_mut().zip(&per_client) {
                for _ in ops {
                    let v = c
                        .recv_type_within("OP_ACK", Duration::from_secs(10))
                        .await
                        .ok_or_else(|| TestCaseError::fail("missing OP_ACK"))?;
                    prop_assert_eq!(msg_type(&v), "OP_ACK");
                }
            }
            let mut tree = Tree::default();
            for (k, (t, _)) in &expected {
                tree.insert(k, t);
            }
            let want_live: BTreeMap<String, Value> = expected
                .iter()
                .filter(|(_, (_, v))| !v.is_nil())
                .map(|(k, (_, v))| (k.clone(), v.clone()))
                .collect();
            for c in conns.iter_mut() {
                prop_assert_eq!(c.sync_root(&map_name).await, tree.root());
            }
            let resp = conns[0].subscribe("conv", &map_name, map(&[])).await;
            conns[0].send(&query_unsub("conv")).await;
            let got: BTreeMap<String, Value> = results(&resp).into_iter().collect();
            prop_assert_eq!(got, want_live);
            *clients.borrow_mut() = Some(conns);
            Ok(())
        })
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    assert_eq!(node.get("/health").0, 200);
}
