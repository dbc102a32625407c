//! Shard hot path: a `MapStore` applying a 100-op batch (new keys, and newer writes to existing
//! keys), and the whole per-op path a write takes through the node minus the actors and the
//! socket: decode the client's frame, apply its records, encode the OP_ACK.
//!
//! Frames are built with rmpv in the real client's shape (float64 millis, extra keys), never
//! with our own encoder. Every group reports per op (`Throughput::Elements`), so criterion's
//! "thrpt" line reads directly as ops/s and "time / elements" as ns/op.
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use rmpv::Value;
use std::hint::black_box;
use topgun_node::protocol::{decode, encode, ClientMessage, LwwRecord, ServerMessage, Timestamp};
use topgun_node::shard::{MapStore, PARTITION_COUNT};

const BATCH: usize = 100;
const BASE_MILLIS: u64 = 1_700_000_000_000;

fn s(v: &str) -> Value {
    Value::from(v)
}

fn record(i: usize, millis: u64) -> LwwRecord {
    LwwRecord {
        value: Value::Map(vec![
            (s("title"), s("buy milk")),
            (s("done"), Value::Boolean(false)),
            (s("prio"), Value::from(i as u64 % 5)),
        ]),
        timestamp: Timestamp {
            millis,
            counter: 0,
            node_id: "client-3f2a9c".into(),
        },
        ttl_ms: None,
    }
}

fn client_ts(millis: u64) -> Value {
    Value::Map(vec![
        (s("millis"), Value::F64(millis as f64)),
        (s("counter"), Value::from(0)),
        (s("nodeId"), s("client-3f2a9c")),
    ])
}

fn client_op(i: usize, millis: u64) -> Value {
    Value::Map(vec![
        (s("id"), s(&i.to_string())),
        (s("mapName"), s("todos")),
        (s("key"), s(&format!("todo-{i}"))),
        (s("opType"), s("PUT")),
        (
            s("record"),
            Value::Map(vec![
                (
                    s("value"),
                    Value::Map(vec![
                        (s("title"), s("buy milk")),
                        (s("done"), Value::Boolean(false)),
                        (s("prio"), Value::from(i as u64 % 5)),
                    ]),
                ),
                (s("timestamp"), client_ts(millis)),
            ]),
        ),
        (s("timestamp"), client_ts(millis)),
        (s("synced"), Value::Boolean(false)),
    ])
}

fn frame(tag: &str, payload: Value) -> Vec<u8> {
    let msg = Value::Map(vec![(s("type"), s(tag)), (s("payload"), payload)]);
    let mut out = Vec::new();
    rmpv::encode::write_value(&mut out, &msg).expect("writing to a Vec cannot fail");
    out
}

/// A store owning every partition (the single-shard case), with `n` keys already written.
fn store_with(n: usize) -> MapStore {
    let mut store = MapStore::new(0..PARTITION_COUNT);
    for i in 0..n {
        store.apply_lww("todos", &format!("todo-{i}"), record(i, BASE_MILLIS));
    }
    store
}

/// Applies every LWW record of a decoded message; returns the id to ack.
fn apply(store: &mut MapStore, msg: ClientMessage) -> Option<String> {
    let ops = match msg {
        ClientMessage::ClientOp(op) => vec![op],
        ClientMessage::OpBatch(b) => b.ops,
        _ => unreachable!("bench frames are writes"),
    };
    let mut last = None;
    for op in ops {
        if let Some(Some(r)) = op.record {
            black_box(store.apply_lww(&op.map_name, &op.key, r));
        }
        last = op.id;
    }
    last
}

fn benches(c: &mut Criterion) {
    let keys: Vec<String> = (0..BATCH).map(|i| format!("todo-{i}")).collect();
    let fresh: Vec<LwwRecord> = (0..BATCH).map(|i| record(i, BASE_MILLIS)).collect();
    let newer: Vec<LwwRecord> = (0..BATCH).map(|i| record(i, BASE_MILLIS + 1)).collect();

    let mut g = c.benchmark_group("store_apply_lww_100");
    g.throughput(Throughput::Elements(BATCH as u64));
    g.bench_function("new_keys", |b| {
        b.iter_batched(
            || (MapStore::new(0..PARTITION_COUNT), fresh.clone()),
            |(mut store, recs)| {
                for (k, r) in keys.iter().zip(recs) {
                    black_box(store.apply_lww("todos", k, r));
                }
                store
            },
            BatchSize::SmallInput,
        )
    });
    g.bench_function("existing_keys", |b| {
        b.iter_batched(
            || (store_with(BATCH), newer.clone()),
            |(mut store, recs)| {
                for (k, r) in keys.iter().zip(recs) {
                    black_box(store.apply_lww("todos", k, r));
                }
                store
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();

    // decode + apply + encode ack, per op: one CLIENT_OP frame per op, and one 100-op
    // OP_BATCH frame (one ack for the batch).
    let single: Vec<Vec<u8>> = (0..BATCH)
        .map(|i| frame("CLIENT_OP", client_op(i, BASE_MILLIS + 1)))
        .collect();
    let batch = frame(
        "OP_BATCH",
        Value::Map(vec![(
            s("ops"),
            Value::Array((0..BATCH).map(|i| client_op(i, BASE_MILLIS + 1)).collect()),
        )]),
    );
    let mut g = c.benchmark_group("decode_apply_ack");
    g.throughput(Throughput::Elements(BATCH as u64));
    g.bench_function("client_op_x100", |b| {
        b.iter_batched(
            || store_with(BATCH),
            |mut store| {
                for f in &single {
                    let msg = decode(black_box(f)).expect("valid frame");
                    let last = apply(&mut store, msg);
                    black_box(encode(&ServerMessage::op_ack_applied(last.as_deref())));
                }
                store
            },
            BatchSize::SmallInput,
        )
    });
    g.bench_function("op_batch_100", |b| {
        b.iter_batched(
            || store_with(BATCH),
            |mut store| {
                let msg = decode(black_box(&batch)).expect("valid frame");
                let last = apply(&mut store, msg);
                black_box(encode(&ServerMessage::op_ack_applied(last.as_deref())));
                store
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(shard, benches);
criterion_main!(shard);
