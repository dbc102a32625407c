//! Wire-exact tests of the codec against hand-written MessagePack.
//!
//! Guards against the incompatibilities protocol.md 10 ranks highest: flat versus wrapped
//! layouts, float64 integers from JS, nil where a key must be omitted (and the reverse in LWW
//! records), signed hashes, and the nesting / BATCH limits. Expected bytes are built by the
//! tiny [`W`] writer below or written as hex, never by rmp-serde, so a test cannot pass just
//! because encoder and decoder share a mistake.
use std::collections::BTreeMap;

use rmpv::Value;

use super::codec::*;
use super::messages::*;
use super::types::{LwwRecord, OrMapRecord, Timestamp};

// ------------------------------------------------------------------------------------------
// A minimal MessagePack writer (smallest encodings, as the spec requires of the server).

#[derive(Default)]
struct W(Vec<u8>);

impl W {
    fn new() -> Self {
        Self::default()
    }
    fn raw(mut self, b: &[u8]) -> Self {
        self.0.extend_from_slice(b);
        self
    }
    fn map(mut self, n: usize) -> Self {
        if n < 16 {
            self.0.push(0x80 | n as u8);
        } else {
            self.0.push(0xde);
            self.0.extend_from_slice(&(n as u16).to_be_bytes());
        }
        self
    }
    fn arr(mut self, n: usize) -> Self {
        if n < 16 {
            self.0.push(0x90 | n as u8);
        } else if n < 65_536 {
            self.0.push(0xdc);
            self.0.extend_from_slice(&(n as u16).to_be_bytes());
        } else {
            self.0.push(0xdd);
            self.0.extend_from_slice(&(n as u32).to_be_bytes());
        }
        self
    }
    fn s(mut self, s: &str) -> Self {
        let n = s.len();
        if n < 32 {
            self.0.push(0xa0 | n as u8);
        } else if n < 256 {
            self.0.extend_from_slice(&[0xd9, n as u8]);
        } else {
            self.0.push(0xda);
            self.0.extend_from_slice(&(n as u16).to_be_bytes());
        }
        self.0.extend_from_slice(s.as_bytes());
        self
    }
    fn u(mut self, v: u64) -> Self {
        if v < 128 {
            self.0.push(v as u8);
        } else if v < 256 {
            self.0.extend_from_slice(&[0xcc, v as u8]);
        } else if v < 65_536 {
            self.0.push(0xcd);
            self.0.extend_from_slice(&(v as u16).to_be_bytes());
        } else if v < 1 << 32 {
            self.0.push(0xce);
            self.0.extend_from_slice(&(v as u32).to_be_bytes());
        } else {
            self.0.push(0xcf);
            self.0.extend_from_slice(&v.to_be_bytes());
        }
        self
    }
    fn f64(mut self, v: f64) -> Self {
        self.0.push(0xcb);
        self.0.extend_from_slice(&v.to_bits().to_be_bytes());
        self
    }
    fn nil(self) -> Self {
        self.raw(&[0xc0])
    }
    fn b(self, v: bool) -> Self {
        self.raw(&[if v { 0xc3 } else { 0xc2 }])
    }
    fn bin(mut self, b: &[u8]) -> Self {
        self.0.push(0xc6);
        self.0.extend_from_slice(&(b.len() as u32).to_be_bytes());
        self.0.extend_from_slice(b);
        self
    }
    /// `{millis, counter, nodeId}` with millis as a JS client sends it (float64).
    fn ts_f(self, millis: f64, counter: u64, node: &str) -> Self {
        self.map(3)
            .s("millis")
            .f64(millis)
            .s("counter")
            .u(counter)
            .s("nodeId")
            .s(node)
    }
    /// The same with an integer millis, as the server writes it.
    fn ts(self, millis: u64, counter: u64, node: &str) -> Self {
        self.map(3)
            .s("millis")
            .u(millis)
            .s("counter")
            .u(counter)
            .s("nodeId")
            .s(node)
    }
    fn done(self) -> Vec<u8> {
        self.0
    }
}

fn hex(b: &[u8]) -> String {
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn from_hex(s: &str) -> Vec<u8> {
    s.split_whitespace()
        .map(|h| u8::from_str_radix(h, 16).unwrap())
        .collect()
}

fn assert_encodes(msg: ServerMessage, expected: Vec<u8>) {
    let got = encode(&msg);
    assert_eq!(hex(&got), hex(&expected), "encoding of {}", msg.tag());
    // And the test-side decoder reads it back to the same value.
    assert_eq!(decode_server(&got).unwrap(), msg);
}

fn ok(frame: &[u8]) -> ClientMessage {
    match decode(frame) {
        Ok(m) => m,
        Err(e) => panic!("decode failed: {e} ({}) for {}", e.code(), hex(frame)),
    }
}

fn err(frame: &[u8]) -> &'static str {
    match decode(frame) {
        Ok(m) => panic!("decoded {m:?} from {}", hex(frame)),
        Err(e) => e.code(),
    }
}

fn ts(millis: u64, counter: u32, node: &str) -> Timestamp {
    Timestamp {
        millis,
        counter,
        node_id: node.into(),
    }
}

const MILLIS: u64 = 1_700_000_000_000;

/// A wrapped frame `{type, payload: <body>}`.
fn wrapped(tag: &str, body: W) -> Vec<u8> {
    W::new()
        .map(2)
        .s("type")
        .s(tag)
        .s("payload")
        .raw(&body.done())
        .done()
}

/// A CLIENT_OP payload the way the real client writes it: float64 millis and the extra
/// `timestamp` and `synced` keys.
fn real_client_op(id: &str, map: &str, key: &str) -> W {
    W::new()
        .map(7)
        .s("id")
        .s(id)
        .s("mapName")
        .s(map)
        .s("key")
        .s(key)
        .s("opType")
        .s("PUT")
        .s("record")
        .raw(
            &W::new()
                .map(3)
                .s("value")
                .raw(&W::new().map(1).s("n").u(1).done())
                .s("timestamp")
                .ts_f(MILLIS as f64, 2, "client-1")
                .s("ttlMs")
                .nil()
                .done(),
        )
        .s("timestamp")
        .ts_f(MILLIS as f64, 2, "client-1")
        .s("synced")
        .b(false)
}

// ------------------------------------------------------------------------------------------
// Client → server: every message of section 2.

#[test]
fn auth_flat() {
    let f = W::new()
        .map(4)
        .s("type")
        .s("AUTH")
        .s("token")
        .s("jwt")
        .s("protocolVersion")
        .u(1)
        .s("deviceToken")
        .s("dt")
        .done();
    assert_eq!(
        ok(&f),
        ClientMessage::Auth(Auth {
            token: "jwt".into(),
            protocol_version: Some(1),
            device_token: Some("dt".into()),
        })
    );
    // Token is required.
    let f = W::new().map(1).s("type").s("AUTH").done();
    assert_eq!(err(&f), "malformed");
}

#[test]
fn device_hello_flat() {
    let f = W::new().map(1).s("type").s("DEVICE_HELLO").done();
    assert_eq!(ok(&f), ClientMessage::DeviceHello(DeviceHello::default()));
    let f = W::new()
        .map(2)
        .s("type")
        .s("DEVICE_HELLO")
        .s("deviceToken")
        .s("x")
        .done();
    assert_eq!(
        ok(&f),
        ClientMessage::DeviceHello(DeviceHello {
            device_token: Some("x".into())
        })
    );
}

#[test]
fn ping_accepts_float64_whole_and_rejects_fraction() {
    // Exactly what msgpackr sends for {type: "PING", timestamp: 1700000000000}.
    let f = from_hex(
        "82 a4 74 79 70 65 a4 50 49 4e 47 a9 74 69 6d 65 73 74 61 6d 70 cb 42 78 bc fe 56 80 00 00",
    );
    assert_eq!(ok(&f), ClientMessage::Ping(Ping { timestamp: MILLIS }));
    let f = W::new()
        .map(2)
        .s("type")
        .s("PING")
        .s("timestamp")
        .f64(1.5)
        .done();
    assert_eq!(err(&f), "fractional_integer");
    let f = W::new()
        .map(2)
        .s("type")
        .s("PING")
        .s("timestamp")
        .u(42)
        .done();
    assert_eq!(ok(&f), ClientMessage::Ping(Ping { timestamp: 42 }));
    // Negative and non-numbers are malformed, not fractional.
    let f = W::new()
        .map(2)
        .s("type")
        .s("PING")
        .s("timestamp")
        .raw(&[0xff])
        .done();
    assert_eq!(err(&f), "malformed");
    let f = W::new()
        .map(2)
        .s("type")
        .s("PING")
        .s("timestamp")
        .f64(f64::NAN)
        .done();
    assert_eq!(err(&f), "malformed");
}

#[test]
fn client_op_wrapped_with_real_client_extras() {
    let f = wrapped("CLIENT_OP", real_client_op("17", "todos", "a"));
    let ClientMessage::ClientOp(op) = ok(&f) else {
        panic!("not a CLIENT_OP")
    };
    assert_eq!(op.id.as_deref(), Some("17"));
    assert_eq!(op.map_name, "todos");
    assert_eq!(op.key, "a");
    assert_eq!(op.kind(), OpKind::Put);
    let rec = op.lww_record().unwrap();
    assert_eq!(rec.timestamp, ts(MILLIS, 2, "client-1"));
    assert_eq!(rec.ttl_ms, None);
    assert_eq!(
        rec.value,
        Value::Map(vec![(Value::from("n"), Value::from(1))])
    );
    // The same op flat (wrong layout) is refused, as the peer would.
    let flat = W::new()
        .map(3)
        .s("type")
        .s("CLIENT_OP")
        .s("mapName")
        .s("m")
        .s("key")
        .s("k")
        .done();
    assert_eq!(err(&flat), "malformed");
}

#[test]
fn client_op_record_absent_vs_nil() {
    let base = |record: Option<W>| {
        let n = if record.is_some() { 3 } else { 2 };
        let mut p = W::new().map(n).s("mapName").s("m").s("key").s("k");
        if let Some(r) = record {
            p = p.s("record").raw(&r.done());
        }
        wrapped("CLIENT_OP", p)
    };
    let ClientMessage::ClientOp(absent) = ok(&base(None)) else {
        panic!()
    };
    assert_eq!(absent.record, None);
    assert_eq!(absent.kind(), OpKind::Put);
    let ClientMessage::ClientOp(nil) = ok(&base(Some(W::new().nil()))) else {
        panic!()
    };
    assert_eq!(nil.record, Some(None));
    assert_eq!(nil.kind(), OpKind::Remove);
    // A record without `value` is a tombstone-valued PUT (missing value = nil), not a REMOVE.
    let rec = W::new().map(1).s("timestamp").ts(1, 0, "n");
    let ClientMessage::ClientOp(no_value) = ok(&base(Some(rec))) else {
        panic!()
    };
    assert_eq!(no_value.kind(), OpKind::Put);
    assert!(no_value.lww_record().unwrap().is_tombstone());
}

#[test]
fn client_op_kinds_follow_4_3_order() {
    let or_rec = W::new()
        .map(3)
        .s("value")
        .u(1)
        .s("timestamp")
        .ts(1, 0, "n")
        .s("tag")
        .s("t1");
    let f = wrapped(
        "CLIENT_OP",
        W::new()
            .map(5)
            .s("mapName")
            .s("m")
            .s("key")
            .s("k")
            .s("opType")
            .s("OR_ADD")
            .s("orRecord")
            .raw(&or_rec.done())
            .s("orTag")
            .nil(),
    );
    let ClientMessage::ClientOp(op) = ok(&f) else {
        panic!()
    };
    assert_eq!(op.kind(), OpKind::OrAdd);
    assert_eq!(op.or_tag, None);
    assert_eq!(op.or_record.as_ref().unwrap().ttl_ms, None);

    let f = wrapped(
        "CLIENT_OP",
        W::new()
            .map(5)
            .s("mapName")
            .s("m")
            .s("key")
            .s("k")
            .s("orTag")
            .s("1:0:n")
            .s("writeConcern")
            .s("PERSISTED")
            .s("timeout")
            .f64(5000.0),
    );
    let ClientMessage::ClientOp(op) = ok(&f) else {
        panic!()
    };
    assert_eq!(op.kind(), OpKind::OrRemove);
    assert_eq!(op.write_concern, Some(WriteConcern::Persisted));
    assert_eq!(op.timeout, Some(5000));

    let f = wrapped(
        "CLIENT_OP",
        W::new()
            .map(3)
            .s("mapName")
            .s("m")
            .s("key")
            .s("k")
            .s("opType")
            .s("REMOVE"),
    );
    let ClientMessage::ClientOp(op) = ok(&f) else {
        panic!()
    };
    assert_eq!(op.kind(), OpKind::Remove);
}

#[test]
fn client_op_rejects_node_id_with_colon() {
    let rec = W::new()
        .map(2)
        .s("value")
        .u(1)
        .s("timestamp")
        .ts(1, 0, "a:b");
    let f = wrapped(
        "CLIENT_OP",
        W::new()
            .map(3)
            .s("mapName")
            .s("m")
            .s("key")
            .s("k")
            .s("record")
            .raw(&rec.done()),
    );
    assert_eq!(err(&f), "bad_node_id");
    let or_rec = W::new()
        .map(3)
        .s("value")
        .u(1)
        .s("timestamp")
        .ts(1, 0, "a:b")
        .s("tag")
        .s("t");
    let f = wrapped(
        "CLIENT_OP",
        W::new()
            .map(3)
            .s("mapName")
            .s("m")
            .s("key")
            .s("k")
            .s("orRecord")
            .raw(&or_rec.done()),
    );
    assert_eq!(err(&f), "bad_node_id");
}

#[test]
fn client_op_fractional_millis_rejected() {
    let rec = W::new()
        .map(2)
        .s("value")
        .u(1)
        .s("timestamp")
        .ts_f(1.25, 0, "n");
    let f = wrapped(
        "CLIENT_OP",
        W::new()
            .map(3)
            .s("mapName")
            .s("m")
            .s("key")
            .s("k")
            .s("record")
            .raw(&rec.done()),
    );
    assert_eq!(err(&f), "fractional_integer");
}

#[test]
fn map_names_validated() {
    let op = |name: &str| {
        wrapped(
            "CLIENT_OP",
            W::new().map(2).s("mapName").s(name).s("key").s("k"),
        )
    };
    assert_eq!(err(&op("")), "bad_map_name");
    assert_eq!(err(&op(&"x".repeat(257))), "bad_map_name");
    assert!(matches!(
        ok(&op(&"x".repeat(256))),
        ClientMessage::ClientOp(_)
    ));
    assert_eq!(err(&op("a\nb")), "bad_map_name");
    assert_eq!(err(&op("a\u{7f}")), "bad_map_name");
    assert_eq!(err(&op("_topgun_meta")), "reserved_map_name");
    assert_eq!(err(&op("__topgun_meta")), "reserved_map_name");
    assert!(matches!(ok(&op("topgun_ok")), ClientMessage::ClientOp(_)));
    assert!(matches!(ok(&op("_topgunx")), ClientMessage::ClientOp(_)));

    // Every message that carries a map name checks it.
    let sync = W::new()
        .map(2)
        .s("type")
        .s("SYNC_INIT")
        .s("mapName")
        .s("_topgun_x")
        .done();
    assert_eq!(err(&sync), "reserved_map_name");
    let merkle = wrapped(
        "MERKLE_REQ_BUCKET",
        W::new().map(2).s("mapName").s("").s("path").s(""),
    );
    assert_eq!(err(&merkle), "bad_map_name");
    let q = wrapped(
        "QUERY_SUB",
        W::new()
            .map(3)
            .s("queryId")
            .s("q")
            .s("mapName")
            .s("__topgun_x")
            .s("query")
            .map(0),
    );
    assert_eq!(err(&q), "reserved_map_name");
    let batch = wrapped(
        "OP_BATCH",
        W::new()
            .map(1)
            .s("ops")
            .arr(2)
            .map(2)
            .s("mapName")
            .s("ok")
            .s("key")
            .s("k")
            .map(2)
            .s("mapName")
            .s("_topgun_")
            .s("key")
            .s("k"),
    );
    assert_eq!(err(&batch), "reserved_map_name");
    let f = wrapped(
        "ORMAP_MERKLE_REQ_BUCKET",
        W::new().map(2).s("mapName").s("\u{1}").s("path").s(""),
    );
    assert_eq!(err(&f), "bad_map_name");
    let f = wrapped(
        "ORMAP_DIFF_REQUEST",
        W::new().map(2).s("mapName").s("_topgun_a").s("keys").arr(0),
    );
    assert_eq!(err(&f), "reserved_map_name");
    let f = wrapped(
        "ORMAP_PUSH_DIFF",
        W::new().map(2).s("mapName").s("").s("entries").arr(0),
    );
    assert_eq!(err(&f), "bad_map_name");
    let f = W::new()
        .map(4)
        .s("type")
        .s("ORMAP_SYNC_INIT")
        .s("mapName")
        .s("_topgun_a")
        .s("rootHash")
        .u(0)
        .s("bucketHashes")
        .map(0)
        .done();
    assert_eq!(err(&f), "reserved_map_name");
}

#[test]
fn op_batch_wrapped_and_cost() {
    let f = wrapped(
        "OP_BATCH",
        W::new()
            .map(3)
            .s("ops")
            .arr(2)
            .raw(&real_client_op("1", "m", "a").done())
            .raw(&real_client_op("2", "m", "b").done())
            .s("writeConcern")
            .s("APPLIED")
            .s("timeout")
            .u(1000),
    );
    let msg = ok(&f);
    assert_eq!(frame_cost(&msg), 2);
    let ClientMessage::OpBatch(b) = msg else {
        panic!()
    };
    assert_eq!(b.ops.len(), 2);
    assert_eq!(b.ops[1].id.as_deref(), Some("2"));
    assert_eq!(b.write_concern, Some(WriteConcern::Applied));
    assert_eq!(b.timeout, Some(1000));

    let empty = ok(&wrapped("OP_BATCH", W::new().map(1).s("ops").arr(0)));
    assert_eq!(empty.cost(), 1, "cost is at least 1");
    // An unknown write concern fails the whole message.
    let f = wrapped(
        "OP_BATCH",
        W::new()
            .map(2)
            .s("ops")
            .arr(0)
            .s("writeConcern")
            .s("applied"),
    );
    assert_eq!(err(&f), "malformed");
}

/// `data` per 1.6: big-endian u32 length, item, repeated; no count.
fn batch_data(items: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for it in items {
        out.extend_from_slice(&(it.len() as u32).to_be_bytes());
        out.extend_from_slice(it);
    }
    out
}

#[test]
fn batch_flat_and_items_walk() {
    let ping = W::new()
        .map(2)
        .s("type")
        .s("PING")
        .s("timestamp")
        .u(1)
        .done();
    let garbage = vec![0xc1];
    let data = batch_data(&[&ping, &garbage, &ping]);
    // `count` lies; cost and items follow the walk.
    let f = W::new()
        .map(3)
        .s("type")
        .s("BATCH")
        .s("count")
        .u(99)
        .s("data")
        .bin(&data)
        .done();
    let msg = ok(&f);
    assert_eq!(frame_cost(&msg), 3);
    let ClientMessage::Batch(b) = msg else {
        panic!()
    };
    assert_eq!(b.count, 99);
    let items = batch_items(&b.data).unwrap();
    assert_eq!(items, vec![&ping[..], &garbage[..], &ping[..]]);
    assert!(matches!(ok(items[0]), ClientMessage::Ping(_)));
    assert_eq!(err(items[1]), "not_a_map");
}

#[test]
fn batch_walk_is_big_endian_and_stops_at_truncation() {
    // 00 00 00 02 = 2 bytes (a little-endian reader would see 32 MiB).
    assert_eq!(
        batch_items(&[0, 0, 0, 2, 0xaa, 0xbb]).unwrap(),
        vec![&[0xaa, 0xbb][..]]
    );
    // Truncated trailing prefix.
    assert_eq!(
        batch_items(&[0, 0, 0, 1, 0xaa, 0, 0]).unwrap(),
        vec![&[0xaa][..]]
    );
    // Truncated trailing item.
    assert_eq!(
        batch_items(&[0, 0, 0, 1, 0xaa, 0, 0, 0, 5, 1, 2]).unwrap(),
        vec![&[0xaa][..]]
    );
    // Zero-length items count (and later fail to decode).
    assert_eq!(batch_items(&[0, 0, 0, 0]).unwrap(), vec![&[][..] as &[u8]]);
    assert!(batch_items(&[]).unwrap().is_empty());
    assert_eq!(batch_item_count(&[0, 0, 0, 1, 7, 0, 0, 0]), 1);
}

#[test]
fn batch_over_8192_items_is_refused() {
    let one = [0u8, 0, 0, 1, 0xc0];
    let at_limit: Vec<u8> = one.repeat(MAX_BATCH_ITEMS);
    assert_eq!(batch_items(&at_limit).unwrap().len(), 8_192);
    let over: Vec<u8> = one.repeat(MAX_BATCH_ITEMS + 1);
    assert!(batch_items(&over).is_err());
    // The cost still counts every item actually sent.
    assert_eq!(batch_item_count(&over), 8_193);
}

#[test]
fn sync_init_flat() {
    let f = W::new()
        .map(3)
        .s("type")
        .s("SYNC_INIT")
        .s("mapName")
        .s("todos")
        .s("lastSyncTimestamp")
        .f64(MILLIS as f64)
        .done();
    assert_eq!(
        ok(&f),
        ClientMessage::SyncInit(SyncInit {
            map_name: "todos".into(),
            last_sync_timestamp: Some(MILLIS),
        })
    );
    // Wrapped is the wrong layout for SYNC_INIT.
    let f = wrapped("SYNC_INIT", W::new().map(1).s("mapName").s("todos"));
    assert_eq!(err(&f), "malformed");
}

#[test]
fn merkle_req_bucket_wrapped() {
    let f = wrapped(
        "MERKLE_REQ_BUCKET",
        W::new().map(2).s("mapName").s("todos").s("path").s("8a"),
    );
    assert_eq!(
        ok(&f),
        ClientMessage::MerkleReqBucket(MerkleReqBucket {
            map_name: "todos".into(),
            path: "8a".into(),
        })
    );
    // Flat is the wrong layout.
    let f = W::new()
        .map(3)
        .s("type")
        .s("MERKLE_REQ_BUCKET")
        .s("mapName")
        .s("todos")
        .s("path")
        .s("")
        .done();
    assert_eq!(err(&f), "malformed");
}

fn query_sub(query: W) -> Vec<u8> {
    wrapped(
        "QUERY_SUB",
        W::new()
            .map(4)
            .s("queryId")
            .s("q1")
            .s("mapName")
            .s("todos")
            .s("query")
            .raw(&query.done())
            .s("fields")
            .arr(1)
            .s("title"),
    )
}

#[test]
fn query_sub_full() {
    let pred = W::new()
        .map(2)
        .s("op")
        .s("and")
        .s("children")
        .arr(3)
        .map(3)
        .s("op")
        .s("eq")
        .s("attribute")
        .s("done")
        .s("value")
        .b(false)
        .map(2)
        .s("op")
        .s("isNull")
        .s("attribute")
        .s("a.b")
        .map(3)
        .s("op")
        .s("eq")
        .s("attribute")
        .s("x")
        .s("value")
        .nil();
    let q = W::new()
        .map(7)
        .s("where")
        .map(1)
        .s("owner")
        .s("me")
        .s("predicate")
        .raw(&pred.done())
        .s("sort")
        .arr(2)
        .map(2)
        .s("field")
        .s("prio")
        .s("direction")
        .s("desc")
        .map(2)
        .s("field")
        .s("title")
        .s("direction")
        .s("asc")
        .s("limit")
        .f64(10.0)
        .s("cursor")
        .s("abc")
        .s("groupBy")
        .arr(1)
        .s("owner")
        .s("aggregations")
        .arr(2)
        .map(1)
        .s("func")
        .s("count")
        .map(2)
        .s("func")
        .s("sum")
        .s("field")
        .s("price");
    let ClientMessage::QuerySub(sub) = ok(&query_sub(q)) else {
        panic!()
    };
    assert_eq!(sub.query_id, "q1");
    assert_eq!(sub.fields, Some(vec!["title".to_string()]));
    let q = sub.query;
    assert_eq!(
        q.where_,
        Some(BTreeMap::from([("owner".to_string(), Value::from("me"))]))
    );
    let p = q.predicate.unwrap();
    assert_eq!(p.op, PredicateOp::And);
    let kids = p.children.unwrap();
    assert_eq!(kids[0].value, Some(Value::Boolean(false)));
    assert_eq!(kids[1].op, PredicateOp::IsNull);
    assert_eq!(kids[1].value, None, "absent value stays absent");
    assert_eq!(kids[2].value, Some(Value::Nil), "explicit nil stays nil");
    assert_eq!(
        q.sort,
        Some(vec![
            SortField {
                field: "prio".into(),
                direction: SortDirection::Desc
            },
            SortField {
                field: "title".into(),
                direction: SortDirection::Asc
            },
        ])
    );
    assert_eq!(q.limit, Some(10));
    assert_eq!(q.cursor.as_deref(), Some("abc"));
    assert_eq!(q.group_by, Some(vec!["owner".to_string()]));
    assert_eq!(
        q.aggregations,
        Some(vec![
            Aggregation {
                func: AggregateFunc::Count,
                field: None
            },
            Aggregation {
                func: AggregateFunc::Sum,
                field: Some("price".into())
            },
        ])
    );
}

#[test]
fn sort_object_and_array_decode_alike() {
    let as_array = W::new()
        .map(1)
        .s("sort")
        .arr(2)
        .map(2)
        .s("field")
        .s("b")
        .s("direction")
        .s("desc")
        .map(2)
        .s("field")
        .s("a")
        .s("direction")
        .s("asc");
    // Object form in a non-alphabetical order: wire order is the priority.
    let as_object = W::new()
        .map(1)
        .s("sort")
        .map(2)
        .s("b")
        .s("desc")
        .s("a")
        .s("asc");
    let get = |q: W| match ok(&query_sub(q)) {
        ClientMessage::QuerySub(s) => s.query.sort,
        other => panic!("{other:?}"),
    };
    let a = get(as_array);
    assert_eq!(a, get(as_object));
    assert_eq!(a.unwrap()[0].field, "b");
    // nil sort is no sort; a bad direction is malformed.
    assert_eq!(get(W::new().map(1).s("sort").nil()), None);
    let bad = W::new().map(1).s("sort").map(1).s("a").s("up");
    assert_eq!(err(&query_sub(bad)), "malformed");
}

#[test]
fn predicate_ops_are_exact() {
    let with_op = |op: &str| query_sub(W::new().map(1).s("predicate").map(1).s("op").s(op));
    for op in [
        "eq",
        "neq",
        "gt",
        "gte",
        "lt",
        "lte",
        "like",
        "regex",
        "and",
        "or",
        "not",
        "in",
        "between",
        "isNull",
        "isNotNull",
        "containsAll",
        "containsAny",
        "startsWith",
        "endsWith",
    ] {
        assert!(
            matches!(ok(&with_op(op)), ClientMessage::QuerySub(_)),
            "{op}"
        );
    }
    assert_eq!(err(&with_op("EQ")), "unknown_operator");
    assert_eq!(err(&with_op("isnull")), "unknown_operator");
    assert_eq!(err(&with_op("near")), "unknown_operator");
    // Deep in the tree as well.
    let nested = W::new()
        .map(1)
        .s("predicate")
        .map(2)
        .s("op")
        .s("not")
        .s("children")
        .arr(1)
        .map(1)
        .s("op")
        .s("xor");
    assert_eq!(err(&query_sub(nested)), "unknown_operator");
}

#[test]
fn query_unsub_and_sync_init() {
    let f = wrapped("QUERY_UNSUB", W::new().map(1).s("queryId").s("q1"));
    assert_eq!(
        ok(&f),
        ClientMessage::QueryUnsub(QueryUnsub {
            query_id: "q1".into()
        })
    );
    // A hash above 2^31 arrives as uint32 (0xce).
    let f = wrapped(
        "QUERY_SYNC_INIT",
        W::new()
            .map(2)
            .s("queryId")
            .s("q1")
            .s("rootHash")
            .u(0xdead_beef),
    );
    assert_eq!(
        ok(&f),
        ClientMessage::QuerySyncInit(QuerySyncInit {
            query_id: "q1".into(),
            root_hash: 0xdead_beef,
        })
    );
}

#[test]
fn topics_wrapped_with_any_data() {
    let f = wrapped("TOPIC_SUB", W::new().map(1).s("topic").s("chat"));
    assert_eq!(
        ok(&f),
        ClientMessage::TopicSub(TopicSub {
            topic: "chat".into()
        })
    );
    let f = wrapped("TOPIC_UNSUB", W::new().map(1).s("topic").s("chat"));
    assert_eq!(
        ok(&f),
        ClientMessage::TopicUnsub(TopicUnsub {
            topic: "chat".into()
        })
    );
    let data = W::new().arr(3).nil().map(1).s("k").arr(1).u(1).bin(&[1, 2]);
    let f = wrapped(
        "TOPIC_PUB",
        W::new()
            .map(2)
            .s("topic")
            .s("chat")
            .s("data")
            .raw(&data.done()),
    );
    let ClientMessage::TopicPub(p) = ok(&f) else {
        panic!()
    };
    assert_eq!(
        p.data,
        Value::Array(vec![
            Value::Nil,
            Value::Map(vec![(Value::from("k"), Value::Array(vec![Value::from(1)]))]),
            Value::Binary(vec![1, 2]),
        ])
    );
    let f = wrapped("TOPIC_PUB", W::new().map(1).s("topic").s("chat"));
    let ClientMessage::TopicPub(p) = ok(&f) else {
        panic!()
    };
    assert_eq!(p.data, Value::Nil, "missing data is nil");
    assert!(is_valid_topic("a-b_c.d:e/f"));
    assert!(!is_valid_topic(""));
    assert!(!is_valid_topic("a b"));
    assert!(!is_valid_topic(&"a".repeat(257)));
}

#[test]
fn client_apply_ack_flat() {
    let f = W::new()
        .map(2)
        .s("type")
        .s("CLIENT_APPLY_ACK")
        .s("cursor")
        .f64(5e12)
        .done();
    assert_eq!(
        ok(&f),
        ClientMessage::ClientApplyAck(ClientApplyAck {
            cursor: 5_000_000_000_000
        })
    );
}

#[test]
fn ormap_client_messages() {
    let f = W::new()
        .map(5)
        .s("type")
        .s("ORMAP_SYNC_INIT")
        .s("mapName")
        .s("tags")
        .s("rootHash")
        .u(0x8000_0000)
        .s("bucketHashes")
        .map(1)
        .s("a")
        .u(7)
        .s("lastSyncTimestamp")
        .f64(MILLIS as f64)
        .done();
    assert_eq!(
        ok(&f),
        ClientMessage::OrmapSyncInit(OrmapSyncInit {
            map_name: "tags".into(),
            root_hash: 0x8000_0000,
            bucket_hashes: BTreeMap::from([("a".to_string(), 7)]),
            last_sync_timestamp: Some(MILLIS),
            claimed_epoch: None,
        })
    );
    let f = wrapped(
        "ORMAP_MERKLE_REQ_BUCKET",
        W::new().map(2).s("mapName").s("tags").s("path").s("0"),
    );
    assert_eq!(
        ok(&f),
        ClientMessage::OrmapMerkleReqBucket(MerkleReqBucket {
            map_name: "tags".into(),
            path: "0".into()
        })
    );
    let f = wrapped(
        "ORMAP_DIFF_REQUEST",
        W::new()
            .map(2)
            .s("mapName")
            .s("tags")
            .s("keys")
            .arr(1)
            .s("k"),
    );
    assert_eq!(
        ok(&f),
        ClientMessage::OrmapDiffRequest(OrmapDiffRequest {
            map_name: "tags".into(),
            keys: vec!["k".into()]
        })
    );
    let entry = |node: &str| {
        W::new()
            .arr(1)
            .map(3)
            .s("key")
            .s("k")
            .s("records")
            .arr(1)
            .map(4)
            .s("value")
            .s("v")
            .s("timestamp")
            .ts_f(MILLIS as f64, 0, node)
            .s("tag")
            .s("t")
            .s("ttlMs")
            .u(100)
            .s("tombstones")
            .arr(1)
            .s("old")
            .done()
    };
    let f = wrapped(
        "ORMAP_PUSH_DIFF",
        W::new()
            .map(2)
            .s("mapName")
            .s("tags")
            .s("entries")
            .raw(&entry("n")),
    );
    assert_eq!(
        ok(&f),
        ClientMessage::OrmapPushDiff(OrmapPushDiff {
            map_name: "tags".into(),
            entries: vec![OrMapEntry {
                key: "k".into(),
                records: vec![OrMapRecord {
                    value: Value::from("v"),
                    timestamp: ts(MILLIS, 0, "n"),
                    tag: "t".into(),
                    ttl_ms: Some(100),
                }],
                tombstones: vec!["old".into()],
            }],
        })
    );
    let f = wrapped(
        "ORMAP_PUSH_DIFF",
        W::new()
            .map(2)
            .s("mapName")
            .s("tags")
            .s("entries")
            .raw(&entry("x:y")),
    );
    assert_eq!(err(&f), "bad_node_id");
}

#[test]
fn partition_map_request_payload_optional() {
    let f = W::new().map(1).s("type").s("PARTITION_MAP_REQUEST").done();
    assert_eq!(
        ok(&f),
        ClientMessage::PartitionMapRequest(PartitionMapRequest::default())
    );
    let f = wrapped(
        "PARTITION_MAP_REQUEST",
        W::new().map(1).s("currentVersion").u(3),
    );
    assert_eq!(
        ok(&f),
        ClientMessage::PartitionMapRequest(PartitionMapRequest {
            current_version: Some(3)
        })
    );
}

#[test]
fn known_but_unimplemented_and_unknown_types() {
    for tag in [
        "LOCK_REQUEST",
        "COUNTER_SYNC",
        "SEARCH",
        "HYBRID_QUERY_SUBSCRIBE",
        "SQL_QUERY",
    ] {
        let f = wrapped(tag, W::new().map(1).s("anything").arr(0));
        assert_eq!(ok(&f), ClientMessage::Unsupported(tag));
        assert_eq!(ok(&f).tag(), tag);
    }
    let f = W::new().map(1).s("type").s("NOPE").done();
    assert_eq!(err(&f), "unknown_type");
    // Server-only tags are not client messages.
    let f = W::new().map(1).s("type").s("AUTH_ACK").done();
    assert_eq!(err(&f), "unknown_type");
    // Tags are case-sensitive.
    let f = W::new()
        .map(2)
        .s("type")
        .s("ping")
        .s("timestamp")
        .u(1)
        .done();
    assert_eq!(err(&f), "unknown_type");
}

#[test]
fn framing_errors() {
    assert_eq!(err(&[]), "not_a_map");
    assert_eq!(err(&W::new().arr(1).s("PING").done()), "not_a_map");
    assert_eq!(err(&W::new().s("PING").done()), "not_a_map");
    assert_eq!(err(&W::new().map(0).done()), "missing_type");
    let f = W::new().map(1).s("type").u(1).done();
    assert_eq!(err(&f), "missing_type");
    let f = W::new().map(1).s("kind").s("PING").done();
    assert_eq!(err(&f), "missing_type");
    // `type` nested inside a value does not count.
    let f = W::new()
        .map(1)
        .s("payload")
        .map(1)
        .s("type")
        .s("PING")
        .done();
    assert_eq!(err(&f), "missing_type");

    let ping = W::new()
        .map(2)
        .s("type")
        .s("PING")
        .s("timestamp")
        .u(1)
        .done();
    for cut in 1..ping.len() {
        assert_eq!(err(&ping[..cut]), "truncated", "cut at {cut}");
    }
    let mut trailing = ping.clone();
    trailing.push(0xc0);
    assert_eq!(err(&trailing), "trailing_bytes");
    // Length headers that promise more than the frame holds.
    assert_eq!(err(&[0x81, 0xdb, 0xff, 0xff, 0xff, 0xff]), "truncated");
    assert_eq!(err(&[0xdf, 0xff, 0xff, 0xff, 0xff]), "truncated");
    let f = W::new()
        .map(2)
        .s("type")
        .s("PING")
        .s("x")
        .raw(&[0xc1])
        .done();
    assert_eq!(err(&f), "invalid_msgpack");
    // Unknown keys are ignored, including ext and bin values.
    let f = W::new()
        .map(4)
        .s("type")
        .s("PING")
        .s("timestamp")
        .u(1)
        .s("e")
        .raw(&[0xd6, 0x01, 1, 2, 3, 4])
        .s("b")
        .bin(&[0xc1])
        .done();
    assert_eq!(ok(&f), ClientMessage::Ping(Ping { timestamp: 1 }));
}

/// A PING whose ignored `x` holds `arrays` nested one-element arrays; the innermost holds an
/// empty array and an empty map, which must not count.
fn ping_with_depth(arrays: usize) -> Vec<u8> {
    let mut w = W::new()
        .map(3)
        .s("type")
        .s("PING")
        .s("timestamp")
        .u(1)
        .s("x");
    for _ in 0..arrays.saturating_sub(1) {
        w = w.arr(1);
    }
    if arrays > 0 {
        w = w.arr(2);
    }
    w.arr(0).map(0).done()
}

#[test]
fn depth_256_accepted_257_rejected() {
    // The outer map is level 1: 255 arrays inside make 256 open containers.
    assert!(matches!(ok(&ping_with_depth(255)), ClientMessage::Ping(_)));
    assert_eq!(err(&ping_with_depth(256)), "too_deep");
    // Siblings do not add up: two 200-deep values side by side are fine.
    let mut w = W::new().map(4).s("type").s("PING").s("timestamp").u(1);
    for key in ["a", "b"] {
        w = w.s(key);
        for _ in 0..200 {
            w = w.arr(1);
        }
        w = w.nil();
    }
    assert!(matches!(ok(&w.done()), ClientMessage::Ping(_)));
    // Maps count like arrays.
    let mut w = W::new().map(2).s("type").s("PING").s("x");
    for _ in 0..256 {
        w = w.map(1).s("k");
    }
    assert_eq!(err(&w.nil().done()), "too_deep");
}

#[test]
fn hostile_depth_is_rejected_without_recursion() {
    let mut f = W::new().map(2).s("type").s("PING").s("x").done();
    f.extend(std::iter::repeat_n(0x91u8, 500_000));
    f.push(0xc0);
    assert_eq!(err(&f), "too_deep");
}

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

#[test]
fn random_and_mutated_input_never_panics() {
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    for _ in 0..20_000 {
        let len = (rng.next() % 64) as usize;
        let mut f: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        // Bias towards maps so the deserializers get exercised, not just the scan.
        if !f.is_empty() && rng.next().is_multiple_of(2) {
            f[0] = 0x80 | (f[0] & 0x0f);
        }
        let _ = decode(&f);
        let _ = decode_server(&f);
        let _ = batch_items(&f);
    }
    let seeds = [
        wrapped("CLIENT_OP", real_client_op("1", "m", "k")),
        query_sub(
            W::new()
                .map(2)
                .s("predicate")
                .map(2)
                .s("op")
                .s("or")
                .s("children")
                .arr(1)
                .map(1)
                .s("op")
                .s("eq")
                .s("sort")
                .map(1)
                .s("a")
                .s("asc"),
        ),
        encode(&ServerMessage::pong(1, 2)),
    ];
    for seed in &seeds {
        for _ in 0..5_000 {
            let mut f = seed.clone();
            for _ in 0..=(rng.next() % 4) {
                let i = (rng.next() as usize) % f.len();
                f[i] = rng.next() as u8;
            }
            if rng.next().is_multiple_of(4) {
                f.truncate((rng.next() as usize) % f.len());
            }
            let _ = decode(&f);
            let _ = decode_server(&f);
        }
    }
}

#[test]
fn client_messages_round_trip_through_encode_client() {
    let op = match ok(&wrapped("CLIENT_OP", real_client_op("1", "m", "k"))) {
        ClientMessage::ClientOp(op) => op,
        _ => unreachable!(),
    };
    let mut nil_record = op.clone();
    nil_record.record = Some(None);
    let msgs = vec![
        ClientMessage::Auth(Auth {
            token: "t".into(),
            protocol_version: None,
            device_token: None,
        }),
        ClientMessage::Ping(Ping { timestamp: MILLIS }),
        ClientMessage::ClientOp(op.clone()),
        ClientMessage::ClientOp(nil_record),
        ClientMessage::OpBatch(OpBatch {
            ops: vec![op],
            write_concern: None,
            timeout: None,
        }),
        ClientMessage::Batch(Batch {
            count: 1,
            data: vec![0, 0, 0, 1, 0xc0],
        }),
        ClientMessage::SyncInit(SyncInit {
            map_name: "m".into(),
            last_sync_timestamp: None,
        }),
        ClientMessage::QuerySub(QuerySub {
            query_id: "q".into(),
            map_name: "m".into(),
            query: Query {
                sort: Some(vec![SortField {
                    field: "a".into(),
                    direction: SortDirection::Asc,
                }]),
                ..Query::default()
            },
            fields: None,
        }),
        ClientMessage::TopicPub(TopicPub {
            topic: "t".into(),
            data: Value::Nil,
        }),
        ClientMessage::PartitionMapRequest(PartitionMapRequest::default()),
    ];
    for m in msgs {
        let bytes = encode_client(&m).unwrap();
        assert_eq!(ok(&bytes), m);
    }
    assert!(encode_client(&ClientMessage::Unsupported("LOCK_REQUEST")).is_none());
}

// ------------------------------------------------------------------------------------------
// Server → client: exact bytes.

#[test]
fn auth_required_exact_bytes() {
    assert_encodes(
        ServerMessage::AuthRequired,
        from_hex("81 a4 74 79 70 65 ad 41 55 54 48 5f 52 45 51 55 49 52 45 44"),
    );
}

#[test]
fn auth_ack_fail_device_ack_flat() {
    assert_encodes(
        ServerMessage::AuthAck(AuthAck::default()),
        W::new().map(1).s("type").s("AUTH_ACK").done(),
    );
    assert_encodes(
        ServerMessage::AuthAck(AuthAck {
            user_id: Some("u1".into()),
            device_id: Some("d".into()),
            device_token: Some("dt".into()),
            protocol_version: Some(1),
        }),
        W::new()
            .map(5)
            .s("type")
            .s("AUTH_ACK")
            .s("userId")
            .s("u1")
            .s("deviceId")
            .s("d")
            .s("deviceToken")
            .s("dt")
            .s("protocolVersion")
            .u(1)
            .done(),
    );
    assert_encodes(
        ServerMessage::AuthFail(AuthFail {
            error: Some("Authentication failed".into()),
            code: None,
        }),
        W::new()
            .map(2)
            .s("type")
            .s("AUTH_FAIL")
            .s("error")
            .s("Authentication failed")
            .done(),
    );
    assert_encodes(
        ServerMessage::DeviceAck(DeviceAck {
            device_id: Some("d".into()),
            device_token: None,
        }),
        W::new()
            .map(2)
            .s("type")
            .s("DEVICE_ACK")
            .s("deviceId")
            .s("d")
            .done(),
    );
}

#[test]
fn pong_flat_with_uint64_millis() {
    let bytes = encode(&ServerMessage::pong(MILLIS, MILLIS + 5));
    assert_eq!(
        hex(&bytes),
        "83 a4 74 79 70 65 a4 50 4f 4e 47 a9 74 69 6d 65 73 74 61 6d 70 cf 00 00 01 8b cf e5 68 00 \
         aa 73 65 72 76 65 72 54 69 6d 65 cf 00 00 01 8b cf e5 68 05"
    );
    assert_eq!(
        decode_server(&bytes).unwrap(),
        ServerMessage::pong(MILLIS, MILLIS + 5)
    );
}

#[test]
fn op_ack_rejected_error_wrapped() {
    assert_encodes(
        ServerMessage::op_ack_applied(Some("42")),
        wrapped(
            "OP_ACK",
            W::new()
                .map(2)
                .s("lastId")
                .s("42")
                .s("achievedLevel")
                .s("APPLIED"),
        ),
    );
    assert_encodes(
        ServerMessage::op_ack_applied(None),
        wrapped(
            "OP_ACK",
            W::new()
                .map(2)
                .s("lastId")
                .s("unknown")
                .s("achievedLevel")
                .s("APPLIED"),
        ),
    );
    assert_encodes(
        ServerMessage::OpAck {
            payload: OpAck {
                last_id: "2".into(),
                achieved_level: None,
                results: Some(vec![OpResult {
                    op_id: "2".into(),
                    success: false,
                    achieved_level: WriteConcern::FireAndForget,
                    error: Some("boom".into()),
                }]),
            },
        },
        wrapped(
            "OP_ACK",
            W::new()
                .map(2)
                .s("lastId")
                .s("2")
                .s("results")
                .arr(1)
                .map(4)
                .s("opId")
                .s("2")
                .s("success")
                .b(false)
                .s("achievedLevel")
                .s("FIRE_AND_FORGET")
                .s("error")
                .s("boom"),
        ),
    );
    assert_encodes(
        ServerMessage::OpRejected {
            payload: OpRejected {
                op_id: "3".into(),
                reason: "forbidden".into(),
                code: Some(403),
            },
        },
        wrapped(
            "OP_REJECTED",
            W::new()
                .map(3)
                .s("opId")
                .s("3")
                .s("reason")
                .s("forbidden")
                .s("code")
                .u(403),
        ),
    );
    assert_encodes(
        ServerMessage::error(429, "rate limit exceeded, slow down"),
        wrapped(
            "ERROR",
            W::new()
                .map(2)
                .s("code")
                .u(429)
                .s("message")
                .s("rate limit exceeded, slow down"),
        ),
    );
    assert_encodes(
        ServerMessage::Error {
            payload: ErrorPayload {
                code: 501,
                message: "not implemented".into(),
                details: Some(Value::from("LOCK_REQUEST")),
            },
        },
        wrapped(
            "ERROR",
            W::new()
                .map(3)
                .s("code")
                .u(501)
                .s("message")
                .s("not implemented")
                .s("details")
                .s("LOCK_REQUEST"),
        ),
    );
}

fn lww(value: Value, ttl: Option<u64>) -> LwwRecord {
    LwwRecord {
        value,
        timestamp: ts(MILLIS, 1, "srv"),
        ttl_ms: ttl,
    }
}

/// An LWW record as the reference writes it: `value` and `ttlMs` always present.
fn lww_bytes(value: W, ttl: Option<u64>) -> W {
    let w = W::new()
        .map(3)
        .s("value")
        .raw(&value.done())
        .s("timestamp")
        .ts(MILLIS, 1, "srv")
        .s("ttlMs");
    match ttl {
        Some(t) => w.u(t),
        None => w.nil(),
    }
}

#[test]
fn server_event_and_batch_event() {
    let put = ServerEvent {
        map_name: "m".into(),
        event_type: EventType::Put,
        key: "k".into(),
        record: Some(lww(Value::from(7), None)),
        or_record: None,
        or_tag: None,
    };
    let put_bytes = W::new()
        .map(4)
        .s("mapName")
        .s("m")
        .s("eventType")
        .s("PUT")
        .s("key")
        .s("k")
        .s("record")
        .raw(&lww_bytes(W::new().u(7), None).done());
    assert_encodes(
        ServerMessage::ServerEvent {
            payload: put.clone(),
        },
        wrapped("SERVER_EVENT", put_bytes),
    );
    // REMOVE carries no record: the key is omitted, not nil.
    let remove = ServerEvent {
        map_name: "m".into(),
        event_type: EventType::Remove,
        key: "k".into(),
        record: None,
        or_record: None,
        or_tag: None,
    };
    let remove_bytes = W::new()
        .map(3)
        .s("mapName")
        .s("m")
        .s("eventType")
        .s("REMOVE")
        .s("key")
        .s("k");
    assert_encodes(
        ServerMessage::ServerEvent {
            payload: remove.clone(),
        },
        wrapped("SERVER_EVENT", remove_bytes),
    );
    let or_add = ServerEvent {
        map_name: "m".into(),
        event_type: EventType::OrAdd,
        key: "k".into(),
        record: None,
        or_record: Some(OrMapRecord {
            value: Value::from("v"),
            timestamp: ts(MILLIS, 1, "srv"),
            tag: "1700000000000:1:srv".into(),
            ttl_ms: None,
        }),
        or_tag: Some("1700000000000:1:srv".into()),
    };
    assert_encodes(
        ServerMessage::ServerEvent { payload: or_add },
        wrapped(
            "SERVER_EVENT",
            W::new()
                .map(5)
                .s("mapName")
                .s("m")
                .s("eventType")
                .s("OR_ADD")
                .s("key")
                .s("k")
                .s("orRecord")
                // OR records omit an unset ttlMs.
                .map(3)
                .s("value")
                .s("v")
                .s("timestamp")
                .ts(MILLIS, 1, "srv")
                .s("tag")
                .s("1700000000000:1:srv")
                .s("orTag")
                .s("1700000000000:1:srv"),
        ),
    );
    assert_encodes(
        ServerMessage::ServerBatchEvent {
            payload: ServerBatchEvent {
                events: vec![remove],
            },
        },
        wrapped(
            "SERVER_BATCH_EVENT",
            W::new()
                .map(1)
                .s("events")
                .arr(1)
                .map(3)
                .s("mapName")
                .s("m")
                .s("eventType")
                .s("REMOVE")
                .s("key")
                .s("k"),
        ),
    );
}

#[test]
fn sync_responses_with_unsigned_hashes() {
    assert_encodes(
        ServerMessage::SyncRespRoot {
            payload: SyncRespRoot {
                map_name: "m".into(),
                root_hash: 0xdead_beef,
                timestamp: ts(MILLIS, 0, "srv"),
            },
        },
        wrapped(
            "SYNC_RESP_ROOT",
            W::new()
                .map(3)
                .s("mapName")
                .s("m")
                .s("rootHash")
                .raw(&[0xce, 0xde, 0xad, 0xbe, 0xef])
                .s("timestamp")
                .ts(MILLIS, 0, "srv"),
        ),
    );
    // The worked vector of 5.2: root buckets {"8": 2370988415}.
    assert_encodes(
        ServerMessage::SyncRespBuckets {
            payload: SyncRespBuckets {
                map_name: "m".into(),
                path: "".into(),
                buckets: BTreeMap::from([('8', 2_370_988_415), ('a', 1)]),
            },
        },
        wrapped(
            "SYNC_RESP_BUCKETS",
            W::new()
                .map(3)
                .s("mapName")
                .s("m")
                .s("path")
                .s("")
                .s("buckets")
                .map(2)
                .s("8")
                .raw(&[0xce, 0x8d, 0x52, 0x69, 0x7f])
                .s("a")
                .u(1),
        ),
    );
    assert_encodes(
        ServerMessage::SyncRespLeaf {
            payload: SyncRespLeaf {
                map_name: "m".into(),
                path: "8a1".into(),
                records: vec![
                    LeafRecord {
                        key: "k".into(),
                        record: lww(Value::Nil, None),
                    },
                    LeafRecord {
                        key: "j".into(),
                        record: lww(Value::from(true), Some(60_000)),
                    },
                ],
            },
        },
        wrapped(
            "SYNC_RESP_LEAF",
            W::new()
                .map(3)
                .s("mapName")
                .s("m")
                .s("path")
                .s("8a1")
                .s("records")
                .arr(2)
                .map(2)
                .s("key")
                .s("k")
                .s("record")
                // Tombstone: `value: nil` and `ttlMs: nil` both written.
                .raw(&lww_bytes(W::new().nil(), None).done())
                .map(2)
                .s("key")
                .s("j")
                .s("record")
                .raw(&lww_bytes(W::new().b(true), Some(60_000)).done()),
        ),
    );
    assert_encodes(
        ServerMessage::SyncResetRequired {
            payload: SyncResetRequired {
                map_name: "m".into(),
                reason: "gc".into(),
            },
        },
        wrapped(
            "SYNC_RESET_REQUIRED",
            W::new().map(2).s("mapName").s("m").s("reason").s("gc"),
        ),
    );
}

#[test]
fn query_resp_omits_merkle_root_hash_and_update_writes_nil() {
    assert_encodes(
        ServerMessage::QueryResp {
            payload: QueryResp {
                query_id: "q1".into(),
                results: vec![QueryResultItem {
                    key: "a".into(),
                    value: Value::Map(vec![(Value::from("t"), Value::from("x"))]),
                }],
                next_cursor: None,
                has_more: None,
                cursor_status: Some(CursorStatus::None),
                merkle_root_hash: None,
                error: None,
                code: None,
            },
        },
        wrapped(
            "QUERY_RESP",
            W::new()
                .map(3)
                .s("queryId")
                .s("q1")
                .s("results")
                .arr(1)
                .map(2)
                .s("key")
                .s("a")
                .s("value")
                .map(1)
                .s("t")
                .s("x")
                .s("cursorStatus")
                .s("none"),
        ),
    );
    assert_encodes(
        ServerMessage::QueryResp {
            payload: QueryResp {
                query_id: "q1".into(),
                results: vec![],
                next_cursor: Some("c".into()),
                has_more: Some(true),
                cursor_status: Some(CursorStatus::Valid),
                merkle_root_hash: Some(0xffff_ffff),
                error: Some("e".into()),
                code: Some("c1".into()),
            },
        },
        wrapped(
            "QUERY_RESP",
            W::new()
                .map(8)
                .s("queryId")
                .s("q1")
                .s("results")
                .arr(0)
                .s("nextCursor")
                .s("c")
                .s("hasMore")
                .b(true)
                .s("cursorStatus")
                .s("valid")
                .s("merkleRootHash")
                .u(0xffff_ffff)
                .s("error")
                .s("e")
                .s("code")
                .s("c1"),
        ),
    );
    assert_encodes(
        ServerMessage::QueryUpdate {
            payload: QueryUpdate {
                query_id: "q1".into(),
                key: "a".into(),
                value: Value::Nil,
                change_type: ChangeType::Leave,
            },
        },
        wrapped(
            "QUERY_UPDATE",
            W::new()
                .map(4)
                .s("queryId")
                .s("q1")
                .s("key")
                .s("a")
                .s("value")
                .nil()
                .s("changeType")
                .s("LEAVE"),
        ),
    );
}

#[test]
fn topic_message_and_gc_prune() {
    assert_encodes(
        ServerMessage::TopicMessage {
            payload: TopicMessage {
                topic: "chat".into(),
                data: Value::Array(vec![Value::Nil, Value::Binary(vec![1])]),
                publisher_id: None,
                timestamp: MILLIS,
            },
        },
        wrapped(
            "TOPIC_MESSAGE",
            W::new()
                .map(3)
                .s("topic")
                .s("chat")
                .s("data")
                .arr(2)
                .nil()
                .raw(&[0xc4, 0x01, 0x01])
                .s("timestamp")
                .u(MILLIS),
        ),
    );
    assert_encodes(
        ServerMessage::GcPrune {
            payload: GcPrune {
                older_than: ts(MILLIS, 0, "srv"),
            },
        },
        wrapped(
            "GC_PRUNE",
            W::new().map(1).s("olderThan").ts(MILLIS, 0, "srv"),
        ),
    );
}

#[test]
fn ormap_server_messages() {
    let entry = OrMapEntry {
        key: "k".into(),
        records: vec![OrMapRecord {
            value: Value::from(1),
            timestamp: ts(5, 0, "n"),
            tag: "5:0:n".into(),
            ttl_ms: Some(9),
        }],
        tombstones: vec!["4:0:n".into()],
    };
    let entry_bytes = || {
        W::new()
            .map(3)
            .s("key")
            .s("k")
            .s("records")
            .arr(1)
            .map(4)
            .s("value")
            .u(1)
            .s("timestamp")
            .ts(5, 0, "n")
            .s("tag")
            .s("5:0:n")
            .s("ttlMs")
            .u(9)
            .s("tombstones")
            .arr(1)
            .s("4:0:n")
            .done()
    };
    assert_encodes(
        ServerMessage::OrmapSyncRespRoot {
            payload: OrmapSyncRespRoot {
                map_name: "m".into(),
                root_hash: 0x8000_0001,
                timestamp: ts(5, 0, "n"),
                covering_epoch: None,
                full_resync: Some(true),
            },
        },
        wrapped(
            "ORMAP_SYNC_RESP_ROOT",
            W::new()
                .map(4)
                .s("mapName")
                .s("m")
                .s("rootHash")
                .u(0x8000_0001)
                .s("timestamp")
                .ts(5, 0, "n")
                .s("fullResync")
                .b(true),
        ),
    );
    assert_encodes(
        ServerMessage::OrmapSyncRespBuckets {
            payload: SyncRespBuckets {
                map_name: "m".into(),
                path: "1".into(),
                buckets: BTreeMap::from([('f', 3)]),
            },
        },
        wrapped(
            "ORMAP_SYNC_RESP_BUCKETS",
            W::new()
                .map(3)
                .s("mapName")
                .s("m")
                .s("path")
                .s("1")
                .s("buckets")
                .map(1)
                .s("f")
                .u(3),
        ),
    );
    assert_encodes(
        ServerMessage::OrmapSyncRespLeaf {
            payload: OrmapSyncRespLeaf {
                map_name: "m".into(),
                path: "123".into(),
                entries: vec![entry.clone()],
                covering_epoch: Some(2),
            },
        },
        wrapped(
            "ORMAP_SYNC_RESP_LEAF",
            W::new()
                .map(4)
                .s("mapName")
                .s("m")
                .s("path")
                .s("123")
                .s("entries")
                .arr(1)
                .raw(&entry_bytes())
                .s("coveringEpoch")
                .u(2),
        ),
    );
    assert_encodes(
        ServerMessage::OrmapDiffResponse {
            payload: OrmapDiffResponse {
                map_name: "m".into(),
                entries: vec![entry],
            },
        },
        wrapped(
            "ORMAP_DIFF_RESPONSE",
            W::new()
                .map(2)
                .s("mapName")
                .s("m")
                .s("entries")
                .arr(1)
                .raw(&entry_bytes()),
        ),
    );
}

#[test]
fn partition_map() {
    assert_encodes(
        ServerMessage::PartitionMap {
            payload: PartitionMap {
                version: 1,
                partition_count: 271,
                nodes: vec![PartitionMapNode {
                    node_id: "n1".into(),
                    endpoints: NodeEndpoints {
                        websocket: "ws://h:1/ws".into(),
                        http: None,
                    },
                    status: "ACTIVE".into(),
                }],
                partitions: vec![PartitionOwner {
                    partition_id: 0,
                    owner_node_id: "n1".into(),
                    backup_node_ids: vec![],
                }],
                generated_at: MILLIS,
            },
        },
        wrapped(
            "PARTITION_MAP",
            W::new()
                .map(5)
                .s("version")
                .u(1)
                .s("partitionCount")
                .u(271)
                .s("nodes")
                .arr(1)
                .map(3)
                .s("nodeId")
                .s("n1")
                .s("endpoints")
                .map(1)
                .s("websocket")
                .s("ws://h:1/ws")
                .s("status")
                .s("ACTIVE")
                .s("partitions")
                .arr(1)
                .map(3)
                .s("partitionId")
                .u(0)
                .s("ownerNodeId")
                .s("n1")
                .s("backupNodeIds")
                .arr(0)
                .s("generatedAt")
                .u(MILLIS),
        ),
    );
}

#[test]
fn encode_into_appends() {
    let mut buf = vec![0xaa];
    encode_into(&ServerMessage::AuthRequired, &mut buf);
    assert_eq!(buf[0], 0xaa);
    assert_eq!(&buf[1..], &encode(&ServerMessage::AuthRequired)[..]);
}

/// The deepest frames the limit lets through must decode on an ordinary 2 MiB thread (actix
/// workers use the default size), including in debug builds where frames are fattest: the
/// predicate tree and `any` values are the recursive shapes a client controls.
#[test]
fn deepest_allowed_frames_fit_a_default_stack() {
    std::thread::Builder::new()
        .stack_size(2 * 1024 * 1024)
        .spawn(|| {
            // QUERY_SUB: outer map, payload, query, then nested `not` nodes, each a map plus
            // its `children` array (2 levels per node).
            let nodes = (MAX_DEPTH - 3) / 2;
            let mut w = W::new();
            for _ in 0..nodes - 1 {
                w = w.map(2).s("op").s("not").s("children").arr(1);
            }
            w = w.map(1).s("op").s("isNull");
            let q = W::new().map(1).s("predicate").raw(&w.done());
            assert!(matches!(ok(&query_sub(q)), ClientMessage::QuerySub(_)));

            // TOPIC_PUB data: outer map, payload, then arrays down to the limit.
            let mut data = W::new();
            for _ in 0..MAX_DEPTH - 2 {
                data = data.arr(1);
            }
            let f = wrapped(
                "TOPIC_PUB",
                W::new()
                    .map(2)
                    .s("topic")
                    .s("t")
                    .s("data")
                    .raw(&data.nil().done()),
            );
            let ClientMessage::TopicPub(p) = ok(&f) else {
                panic!()
            };
            // Re-encoding the deep value for TOPIC_MESSAGE must fit too.
            let out = encode(&ServerMessage::TopicMessage {
                payload: TopicMessage {
                    topic: p.topic,
                    data: p.data,
                    publisher_id: None,
                    timestamp: 1,
                },
            });
            assert!(out.len() > MAX_DEPTH);
        })
        .unwrap()
        .join()
        .unwrap();
}
