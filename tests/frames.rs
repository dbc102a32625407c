//! Guards the connection's frame handling (protocol.md 1.2-1.7) on the real binary: PING gets
//! PONG with the float64 timestamp echoed; a silent client is evicted with 1000 "idle
//! timeout"; every kind of bad frame (garbage, non-map, unknown or missing type, text, 257
//! levels deep, a fractional integer, a nodeId with ':') is dropped and counted under its own
//! reason while the connection and the node keep working; a frame over 2 MiB is closed with
//! 1009, a BATCH over 8,192 items refused with ERROR 413; the token bucket answers 429 and
//! counts exactly what it refused; a client's Close is answered with a Close.
mod common;

use std::time::{Duration, Instant};

use rmpv::Value;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

use common::*;

use futures_util::SinkExt;

/// The connection is alive and has processed everything sent before: PING answered.
async fn assert_alive(c: &mut Client, ts: f64) {
    c.send(&ping(ts)).await;
    let pong = c.recv_type("PONG").await.expect("PONG: connection alive");
    assert_eq!(
        get(&pong, "timestamp").and_then(Value::as_u64),
        Some(ts as u64)
    );
}

fn invalid(s: &Scrape, reason: &str) -> f64 {
    s.value_or_zero("topgun_invalid_messages_total", &[("reason", reason)])
}

/// Invalid frames counted under any reason.
fn invalid_total(s: &Scrape) -> f64 {
    s.samples
        .iter()
        .filter(|x| x.metric == "topgun_invalid_messages_total")
        .map(|x| match x.value {
            prometheus_parse::Value::Counter(v) => v,
            _ => 0.0,
        })
        .sum()
}

#[tokio::test]
async fn ping_pong_echoes_float64_timestamp() {
    let node = Node::start();
    let mut c = node.client().await;
    let ts = now_millis() as f64; // float64 on the wire, as msgpackr sends Date.now()
    c.send(&ping(ts)).await;
    let pong = c.recv().await.expect("PONG");
    assert_eq!(msg_type(&pong), "PONG");
    assert_eq!(
        get(&pong, "timestamp").and_then(Value::as_u64),
        Some(ts as u64)
    );
    let server_time = get(&pong, "serverTime")
        .and_then(Value::as_u64)
        .expect("serverTime is an integer");
    assert!(server_time.abs_diff(now_millis()) < 60_000, "{server_time}");
    // An integer timestamp works too.
    c.send(&map(&[("type", "PING".into()), ("timestamp", 42.into())]))
        .await;
    let pong = c.recv().await.expect("PONG");
    assert_eq!(get(&pong, "timestamp").and_then(Value::as_u64), Some(42));
}

#[tokio::test]
async fn heartbeat_eviction_closes_idle_clients() {
    // A 1 s timeout leaves the PINGing client a wide margin on a loaded machine.
    let node = Node::start_with(NodeOptions::default().args(&[
        "--heartbeat-timeout-ms",
        "1000",
        "--heartbeat-check-ms",
        "100",
    ]));
    let mut idle = node.client().await;
    let mut busy = node.client().await;
    // `busy` PINGs every 100 ms while `idle` says nothing.
    let started = Instant::now();
    let mut n = 0.0;
    let (code, reason) = loop {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "idle client not evicted"
        );
        n += 1.0;
        assert_alive(&mut busy, n).await;
        if idle.recv_within(Duration::from_millis(100)).await.is_none() && idle.closed.is_some() {
            break idle.expect_close(Duration::from_secs(1)).await;
        }
    };
    assert_eq!((code, reason.as_str()), (1000, "idle timeout"));
    node.wait_metric(
        "topgun_connections_closed_total",
        &[("reason", "idle_timeout")],
        1.0,
    );
    // The PINGing client outlived the timeout several times over.
    assert!(started.elapsed() >= Duration::from_millis(1000));
    assert_alive(&mut busy, 1000.0).await;
    node.wait_metric("topgun_connected_clients", &[], 1.0);
}

/// `depth` nested non-empty arrays, innermost holding 1.
fn nested(depth: usize) -> Value {
    let mut v = Value::from(1);
    for _ in 0..depth {
        v = Value::Array(vec![v]);
    }
    v
}

fn client_op(millis: Value, node_id: &str) -> Value {
    let ts = map(&[
        ("millis", millis),
        ("counter", 0.into()),
        ("nodeId", node_id.into()),
    ]);
    let record = map(&[("value", 1.into()), ("timestamp", ts)]);
    let payload = map(&[
        ("id", "1".into()),
        ("mapName", "m".into()),
        ("key", "k".into()),
        ("opType", "PUT".into()),
        ("record", record),
    ]);
    map(&[("type", "CLIENT_OP".into()), ("payload", payload)])
}

/// One connection, every bad-frame case in turn; after each, the connection answers PING and
/// exactly that reason moved by one.
#[tokio::test]
async fn bad_frames_are_dropped_counted_and_harmless() {
    let node = Node::start();
    let mut c = node.client().await;
    let at_start = node.scrape();

    let cases: Vec<(&str, Message)> = vec![
        (
            "not_a_map",
            Message::Binary(encode(&Value::Array(vec![1.into(), 2.into()])).into()),
        ),
        (
            "unknown_type",
            Message::Binary(encode(&map(&[("type", "NO_SUCH_TYPE".into())])).into()),
        ),
        (
            "missing_type",
            Message::Binary(encode(&map(&[("timestamp", 1.into())])).into()),
        ),
        ("text_frame", Message::Text("{\"type\":\"PING\"}".into())),
        (
            "too_deep",
            // The outer map is level 1, plus 256 arrays: 257 open at once.
            Message::Binary(
                encode(&map(&[
                    ("type", "PING".into()),
                    ("timestamp", 1.into()),
                    ("x", nested(256)),
                ]))
                .into(),
            ),
        ),
        (
            "fractional_integer",
            Message::Binary(encode(&client_op(Value::F64(1_700_000_000_000.5), "n1")).into()),
        ),
        (
            "bad_node_id",
            Message::Binary(encode(&client_op(Value::F64(1_700_000_000_000.0), "a:b")).into()),
        ),
        ("truncated", Message::Binary(vec![0x82, 0xa4, b't'].into())),
        (
            "invalid_msgpack",
            Message::Binary(vec![0x81, 0xa4, b't', b'y', b'p', b'e', 0xc1].into()),
        ),
    ];
    for (i, (reason, frame)) in cases.into_iter().enumerate() {
        assert_eq!(
            at_start.value("topgun_invalid_messages_total", &[("reason", reason)]),
            Some(0.0),
            "reason {reason} is not declared at 0 from the start"
        );
        let before = node.scrape();
        c.ws.send(frame).await.expect("send");
        assert_alive(&mut c, i as f64 + 1.0).await;
        let after = node.wait_metric(
            "topgun_invalid_messages_total",
            &[("reason", reason)],
            invalid(&before, reason) + 1.0,
        );
        assert_eq!(
            invalid_total(&after),
            invalid_total(&before) + 1.0,
            "{reason}: one frame counted once"
        );
    }

    // Random bytes: whatever the reason, the frame is counted and nothing breaks.
    let before = node.scrape();
    let mut x: u32 = 0x2545_f491;
    let garbage: Vec<u8> = (0..512)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect();
    c.send_raw(garbage).await;
    assert_alive(&mut c, 100.0).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = node.scrape();
        let moved = invalid_total(&s) - invalid_total(&before);
        if moved == 1.0 {
            break;
        }
        assert!(Instant::now() < deadline, "random bytes counted {moved}");
        std::thread::sleep(Duration::from_millis(50));
    }

    // Nothing above closed the connection or the node.
    assert!(c.closed.is_none());
    assert_eq!(node.get("/health").0, 200);
    let s = node.wait_metric("topgun_connected_clients", &[], 1.0);
    assert_eq!(
        s.value_or_zero("topgun_connections_closed_total", &[("reason", "client")]),
        0.0
    );
}

/// The boundaries are exact: 256 levels and a well-formed CLIENT_OP with a whole float are
/// decoded (not counted as invalid).
#[tokio::test]
async fn frames_at_the_limits_are_accepted() {
    let node = Node::start();
    let mut c = node.client().await;
    c.send(&map(&[
        ("type", "PING".into()),
        ("timestamp", 9.into()),
        ("x", nested(255)),
    ]))
    .await;
    let pong = c.recv().await.expect("a 256-deep PING is answered");
    assert_eq!(msg_type(&pong), "PONG");
    c.send(&client_op(Value::F64(1_700_000_000_000.0), "n1"))
        .await;
    assert_alive(&mut c, 2.0).await;
    let s = node.scrape();
    let total = invalid_total(&s);
    assert_eq!(total, 0.0, "nothing counted as invalid");
}

#[tokio::test]
async fn oversize_frame_closes_with_1009() {
    let node = Node::start();
    // Exactly 2 MiB: accepted.
    let mut c = node.client().await;
    let frame = |size: usize| -> Vec<u8> {
        let overhead = encode(&map(&[
            ("type", "PING".into()),
            ("timestamp", 5.into()),
            ("pad", Value::Binary(vec![0; 100_000])),
        ]))
        .len()
            - 100_000;
        let v = map(&[
            ("type", "PING".into()),
            ("timestamp", 5.into()),
            ("pad", Value::Binary(vec![0; size - overhead])),
        ]);
        let bytes = encode(&v);
        assert_eq!(bytes.len(), size);
        bytes
    };
    c.send_raw(frame(2 * 1024 * 1024)).await;
    let pong = c.recv().await.expect("a 2 MiB PING is answered");
    assert_eq!(msg_type(&pong), "PONG");

    // One byte more: Close 1009.
    c.send_raw(frame(2 * 1024 * 1024 + 1)).await;
    let (code, _) = c.expect_close(Duration::from_secs(5)).await;
    assert_eq!(code, 1009);
    node.wait_metric(
        "topgun_invalid_messages_total",
        &[("reason", "frame_too_large")],
        1.0,
    );
    node.wait_metric(
        "topgun_connections_closed_total",
        &[("reason", "frame_too_large")],
        1.0,
    );
    assert_eq!(node.get("/health").0, 200);
    let mut other = node.client().await;
    assert_alive(&mut other, 1.0).await;
}

/// `{type: BATCH, count, data}` with `data` = items, each a 4-byte big-endian length + bytes.
fn batch(items: &[Vec<u8>]) -> Value {
    let mut data = Vec::new();
    for item in items {
        data.extend_from_slice(&(item.len() as u32).to_be_bytes());
        data.extend_from_slice(item);
    }
    map(&[
        ("type", "BATCH".into()),
        ("count", (items.len() as u64).into()),
        ("data", Value::Binary(data)),
    ])
}

#[tokio::test]
async fn batch_items_are_handled_and_oversize_batch_gets_413() {
    let node = Node::start();
    let mut c = node.client().await;

    // Valid items are handled one by one; a broken one is skipped.
    c.send(&batch(&[
        encode(&ping(11.0)),
        vec![0x93, 1, 2, 3],
        encode(&ping(12.0)),
    ]))
    .await;
    for ts in [11, 12] {
        let pong = c.recv().await.expect("PONG of a batch item");
        assert_eq!(msg_type(&pong), "PONG");
        assert_eq!(get(&pong, "timestamp").and_then(Value::as_u64), Some(ts));
    }

    // 8,192 items: accepted (CLIENT_APPLY_ACK has no reply).
    let ack = encode(&map(&[
        ("type", "CLIENT_APPLY_ACK".into()),
        ("cursor", 1.into()),
    ]));
    c.send(&batch(&vec![ack.clone(); 8192])).await;
    assert_alive(&mut c, 13.0).await;

    // 8,193 items: the whole frame refused with ERROR 413.
    c.send(&batch(&vec![ack; 8193])).await;
    let err = c.recv().await.expect("ERROR 413");
    assert_eq!(msg_type(&err), "ERROR", "{err:?}");
    let p = payload(&err);
    assert_eq!(get(p, "code").and_then(Value::as_u64), Some(413));
    assert_eq!(
        get(p, "message").and_then(Value::as_str),
        Some("batch exceeds maximum inner item count")
    );
    assert_alive(&mut c, 14.0).await;
    node.wait_metric(
        "topgun_invalid_messages_total",
        &[("reason", "batch_too_large")],
        1.0,
    );
}

#[tokio::test]
async fn token_bucket_answers_429_and_counts_exactly() {
    let node = Node::start_with(NodeOptions::default().args(&[
        "--client-rate",
        "1",
        "--client-burst",
        "5",
    ]));
    let mut c = node.client().await;
    for i in 0..10 {
        c.send(&ping(i as f64)).await;
    }
    let (mut pongs, mut refusals) = (0, 0);
    for _ in 0..10 {
        let m = c.recv().await.expect("a reply per PING");
        match msg_type(&m) {
            "PONG" => pongs += 1,
            "ERROR" => {
                let p = payload(&m);
                assert_eq!(get(p, "code").and_then(Value::as_u64), Some(429), "{m:?}");
                assert_eq!(
                    get(p, "message").and_then(Value::as_str),
                    Some("rate limit exceeded, slow down")
                );
                refusals += 1;
            }
            other => panic!("unexpected {other}: {m:?}"),
        }
    }
    assert!(pongs >= 5, "the burst of 5 is served: {pongs} PONGs");
    assert!(refusals >= 1, "some PINGs refused: {refusals}");
    node.wait_metric("topgun_client_rate_limited_total", &[], refusals as f64);
    assert!(c.closed.is_none(), "rate limiting keeps the connection");
}

#[tokio::test]
async fn client_close_is_answered_with_close() {
    let node = Node::start();
    let mut c = node.client().await;
    assert_alive(&mut c, 1.0).await;
    c.ws.send(Message::Close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "bye".into(),
    })))
    .await
    .expect("send Close");
    let (code, _) = c.expect_close(Duration::from_secs(5)).await;
    assert_eq!(code, 1000);
    node.wait_metric(
        "topgun_connections_closed_total",
        &[("reason", "client")],
        1.0,
    );
    node.wait_metric("topgun_connected_clients", &[], 0.0);
}

/// A client whose TCP connection just ends (no Close frame: a closed laptop lid, a killed
/// tab) has disconnected; it did not send an invalid frame and was not evicted.
#[tokio::test]
async fn client_vanishing_without_close_is_a_plain_disconnect() {
    let node = Node::start();
    let mut c = node.client().await;
    assert_alive(&mut c, 1.0).await;
    drop(c);
    let s = node.wait_metric(
        "topgun_connections_closed_total",
        &[("reason", "client")],
        1.0,
    );
    assert_eq!(
        invalid_total(&s),
        0.0,
        "a vanished client is not an invalid frame"
    );
    assert_eq!(
        s.value_or_zero(
            "topgun_connections_closed_total",
            &[("reason", "protocol_error")]
        ),
        0.0
    );
    let line = node.wait_log("client disconnected", |_| true);
    assert_eq!(line["reason"], "client", "{line}");
    assert!(
        !node.logs().iter().any(|l| l["msg"] == "client evicted"),
        "a vanished client is not evicted"
    );
}

/// Text frames are ignored, whatever they hold, even bytes that are not UTF-8.
#[tokio::test]
async fn text_frame_with_invalid_utf8_is_ignored_like_any_text_frame() {
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    let node = Node::start();
    let mut c = node.client().await;
    let frame = Frame::message(vec![0xff, 0xfe, 0xfd], OpCode::Data(Data::Text), true);
    c.ws.send(Message::Frame(frame)).await.expect("send");
    assert_alive(&mut c, 1.0).await;
    node.wait_metric(
        "topgun_invalid_messages_total",
        &[("reason", "text_frame")],
        1.0,
    );
    assert!(c.closed.is_none());
}
