//! Codec hot paths: decoding a CLIENT_OP and a 100-op OP_BATCH as the real TS client sends them
//! (float64 millis, extra `timestamp`/`synced` keys), and encoding the OP_ACK that answers both.
//!
//! Frames are built with rmpv, not with our own encoder, so the input has the client's shape.
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use rmpv::Value;
use std::hint::black_box;
use topgun_node::protocol::{decode, encode, encode_into, ServerMessage};

fn s(v: &str) -> Value {
    Value::from(v)
}

fn client_ts(millis: f64, counter: u32) -> Value {
    Value::Map(vec![
        (s("millis"), Value::F64(millis)),
        (s("counter"), Value::from(counter)),
        (s("nodeId"), s("client-3f2a9c")),
    ])
}

/// One op as `@topgunbuild/client` sends it: an object value, a float64 timestamp, and the
/// extra keys the server ignores.
fn client_op(i: u32) -> Value {
    let millis = 1_700_000_000_000.0 + f64::from(i);
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
                        (s("prio"), Value::from(3)),
                    ]),
                ),
                (s("timestamp"), client_ts(millis, i % 4)),
            ]),
        ),
        (s("timestamp"), client_ts(millis, i % 4)),
        (s("synced"), Value::Boolean(false)),
    ])
}

fn frame(tag: &str, payload: Value) -> Vec<u8> {
    let msg = Value::Map(vec![(s("type"), s(tag)), (s("payload"), payload)]);
    let mut out = Vec::new();
    rmpv::encode::write_value(&mut out, &msg).expect("writing to a Vec cannot fail");
    out
}

fn benches(c: &mut Criterion) {
    let op = frame("CLIENT_OP", client_op(1));
    let batch = frame(
        "OP_BATCH",
        Value::Map(vec![(
            s("ops"),
            Value::Array((0..100).map(client_op).collect()),
        )]),
    );
    assert!(decode(&op).is_ok() && decode(&batch).is_ok());

    let mut g = c.benchmark_group("decode");
    g.throughput(Throughput::Elements(1));
    g.bench_function("client_op", |b| b.iter(|| decode(black_box(&op))));
    g.throughput(Throughput::Elements(100));
    g.bench_function("op_batch_100", |b| b.iter(|| decode(black_box(&batch))));
    g.finish();

    let ack = ServerMessage::op_ack_applied(Some("12345"));
    let mut g = c.benchmark_group("encode");
    g.bench_function("op_ack", |b| b.iter(|| encode(black_box(&ack))));
    g.bench_function("op_ack_reused_buffer", |b| {
        b.iter_batched_ref(
            || Vec::with_capacity(64),
            |buf| {
                buf.clear();
                encode_into(black_box(&ack), buf)
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(codec, benches);
criterion_main!(codec);
