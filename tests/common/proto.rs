//! Hand-built protocol messages (protocol.md section 2), a client-side Merkle tree computed from
//! the spec's formulas (5.1, 5.2) and a client-side Merkle walker, for the scenario tests.
//!
//! Nothing here uses the node's own code: the hashing is written again from the spec text so
//! that a root equality proves the node agrees with the client, not with itself.
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rmpv::Value;

use super::{get, map, msg_type, now_millis, payload, Client, Node, Scrape};

// ---- shapes ---------------------------------------------------------------------------------

/// An HLC timestamp as the JS client sends it: `millis` as float64.
pub fn ts(millis: u64, counter: u32, node: &str) -> Value {
    map(&[
        ("millis", Value::F64(millis as f64)),
        ("counter", counter.into()),
        ("nodeId", node.into()),
    ])
}

/// A timestamp the test keeps to compute item hashes.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Ts {
    pub millis: u64,
    pub counter: u32,
    pub node: String,
}

impl Ts {
    pub fn new(millis: u64, counter: u32, node: &str) -> Ts {
        Ts {
            millis,
            counter,
            node: node.into(),
        }
    }

    pub fn wire(&self) -> Value {
        ts(self.millis, self.counter, &self.node)
    }

    /// From a server record's `timestamp` (millis may be an int or a whole float).
    pub fn from_wire(v: &Value) -> Ts {
        let millis = get(v, "millis").map(as_u64).expect("millis");
        let counter = get(v, "counter").map(as_u64).expect("counter") as u32;
        let node = get(v, "nodeId")
            .and_then(Value::as_str)
            .expect("nodeId")
            .to_owned();
        Ts {
            millis,
            counter,
            node,
        }
    }
}

/// A MessagePack number as u64 (int, or a whole float64).
pub fn as_u64(v: &Value) -> u64 {
    match v {
        Value::F64(f) => *f as u64,
        Value::F32(f) => *f as u64,
        other => other
            .as_u64()
            .unwrap_or_else(|| panic!("not a u64: {other:?}")),
    }
}

/// A wrapped message `{type, payload}`.
pub fn wrapped(tag: &str, p: Value) -> Value {
    map(&[("type", tag.into()), ("payload", p)])
}

/// The ClientOp of a PUT (extra `synced`/`timestamp` keys, as the real client sends them).
pub fn put_op(id: &str, map_name: &str, key: &str, value: Value, t: &Ts) -> Value {
    map(&[
        ("id", id.into()),
        ("mapName", map_name.into()),
        ("key", key.into()),
        ("opType", "PUT".into()),
        ("record", map(&[("value", value), ("timestamp", t.wire())])),
        ("timestamp", t.wire()),
        ("synced", false.into()),
    ])
}

/// A PUT with a `ttlMs`.
pub fn put_ttl_op(id: &str, map_name: &str, key: &str, value: Value, t: &Ts, ttl: u64) -> Value {
    map(&[
        ("id", id.into()),
        ("mapName", map_name.into()),
        ("key", key.into()),
        ("opType", "PUT".into()),
        (
            "record",
            map(&[
                ("value", value),
                ("timestamp", t.wire()),
                ("ttlMs", Value::F64(ttl as f64)),
            ]),
        ),
    ])
}

/// The ClientOp of a REMOVE with the client's timestamp (a tombstone record).
pub fn remove_op(id: &str, map_name: &str, key: &str, t: &Ts) -> Value {
    map(&[
        ("id", id.into()),
        ("mapName", map_name.into()),
        ("key", key.into()),
        ("opType", "REMOVE".into()),
        (
            "record",
            map(&[("value", Value::Nil), ("timestamp", t.wire())]),
        ),
    ])
}

pub fn client_op(op: Value) -> Value {
    wrapped("CLIENT_OP", op)
}

pub fn op_batch(ops: Vec<Value>) -> Value {
    wrapped("OP_BATCH", map(&[("ops", Value::Array(ops))]))
}

pub fn query_sub(query_id: &str, map_name: &str, query: Value) -> Value {
    wrapped(
        "QUERY_SUB",
        map(&[
            ("queryId", query_id.into()),
            ("mapName", map_name.into()),
            ("query", query),
        ]),
    )
}

pub fn query_sub_fields(query_id: &str, map_name: &str, query: Value, fields: &[&str]) -> Value {
    wrapped(
        "QUERY_SUB",
        map(&[
            ("queryId", query_id.into()),
            ("mapName", map_name.into()),
            ("query", query),
            (
                "fields",
                Value::Array(fields.iter().map(|f| Value::from(*f)).collect()),
            ),
        ]),
    )
}

pub fn query_unsub(query_id: &str) -> Value {
    wrapped("QUERY_UNSUB", map(&[("queryId", query_id.into())]))
}

pub fn sync_init(map_name: &str) -> Value {
    map(&[("type", "SYNC_INIT".into()), ("mapName", map_name.into())])
}

pub fn merkle_req(map_name: &str, path: &str) -> Value {
    wrapped(
        "MERKLE_REQ_BUCKET",
        map(&[("mapName", map_name.into()), ("path", path.into())]),
    )
}

pub fn topic_sub(topic: &str) -> Value {
    wrapped("TOPIC_SUB", map(&[("topic", topic.into())]))
}

pub fn topic_unsub(topic: &str) -> Value {
    wrapped("TOPIC_UNSUB", map(&[("topic", topic.into())]))
}

pub fn topic_pub(topic: &str, data: Value) -> Value {
    wrapped("TOPIC_PUB", map(&[("topic", topic.into()), ("data", data)]))
}

/// A string field of a wrapped message's payload.
pub fn pstr<'a>(msg: &'a Value, key: &str) -> Option<&'a str> {
    get(payload(msg), key).and_then(Value::as_str)
}

/// The `results` of a QUERY_RESP as (key, value) pairs, in wire order.
pub fn results(resp: &Value) -> Vec<(String, Value)> {
    get(payload(resp), "results")
        .and_then(Value::as_array)
        .expect("results array")
        .iter()
        .map(|r| {
            (
                get(r, "key")
                    .and_then(Value::as_str)
                    .expect("key")
                    .to_owned(),
                get(r, "value").cloned().unwrap_or(Value::Nil),
            )
        })
        .collect()
}

pub fn result_keys(resp: &Value) -> Vec<String> {
    results(resp).into_iter().map(|(k, _)| k).collect()
}

// ---- client calls ---------------------------------------------------------------------------

/// Writes `n` new keys `{prefix}{i}` of `map_name` in one OP_BATCH; what came before its ack,
/// the ack last.
pub async fn write_batch(c: &mut Client, map_name: &str, prefix: &str, n: usize) -> Vec<Value> {
    let t = Ts::new(now_millis(), 0, "w");
    let ops = (0..n)
        .map(|i| {
            put_op(
                &i.to_string(),
                map_name,
                &format!("{prefix}{i}"),
                (i as u64).into(),
                &t,
            )
        })
        .collect();
    c.send_acked(&op_batch(ops)).await
}

impl Client {
    /// Sends a frame and waits for the OP_ACK (skipping live events); returns every message
    /// received before the ack, the ack last.
    pub async fn send_acked(&mut self, msg: &Value) -> Vec<Value> {
        self.send(msg).await;
        let mut seen = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let v = self
                .recv_within(left)
                .await
                .unwrap_or_else(|| panic!("no OP_ACK; got {seen:?}"));
            let done = msg_type(&v) == "OP_ACK";
            seen.push(v);
            if done {
                return seen;
            }
        }
    }

    /// QUERY_SUB, then its QUERY_RESP (matched on queryId).
    pub async fn subscribe(&mut self, query_id: &str, map_name: &str, query: Value) -> Value {
        self.send(&query_sub(query_id, map_name, query)).await;
        self.recv_query_resp(query_id).await
    }

    pub async fn recv_query_resp(&mut self, query_id: &str) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let v = self
                .recv_within(left)
                .await
                .unwrap_or_else(|| panic!("no QUERY_RESP for {query_id}"));
            if msg_type(&v) == "QUERY_RESP" && pstr(&v, "queryId") == Some(query_id) {
                return v;
            }
        }
    }

    /// Next message of type `t` within `limit`, skipping others.
    pub async fn recv_type_within(&mut self, t: &str, limit: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let v = self.recv_within(left).await?;
            if msg_type(&v) == t {
                return Some(v);
            }
        }
    }

    /// Everything that arrives within `limit` (used to assert that nothing more comes).
    pub async fn drain(&mut self, limit: Duration) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + limit;
        let mut out = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return out;
            }
            match self.recv_within(left).await {
                Some(v) => out.push(v),
                None => return out,
            }
        }
    }

    /// PING → PONG round trip: proves the connection is alive and every earlier frame of it
    /// was processed (frames are handled in order, replies leave in order).
    pub async fn ping_pong(&mut self) -> Vec<Value> {
        self.send(&super::ping(1_700_000_000_000.0)).await;
        let mut seen = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let v = self
                .recv_within(left)
                .await
                .unwrap_or_else(|| panic!("no PONG; got {seen:?}"));
            if msg_type(&v) == "PONG" {
                return seen;
            }
            seen.push(v);
        }
    }

    /// SYNC_INIT → SYNC_RESP_ROOT's `rootHash`.
    pub async fn sync_root(&mut self, map_name: &str) -> u32 {
        self.send(&sync_init(map_name)).await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let v = self
                .recv_within(left)
                .await
                .unwrap_or_else(|| panic!("no SYNC_RESP_ROOT for {map_name}"));
            if msg_type(&v) == "SYNC_RESP_ROOT" && pstr(&v, "mapName") == Some(map_name) {
                let h = get(payload(&v), "rootHash").expect("rootHash");
                return u32::try_from(as_u64(h)).expect("rootHash is an unsigned 32-bit int");
            }
        }
    }

    /// MERKLE_REQ_BUCKET and the reply whose mapName and path match.
    pub async fn merkle(&mut self, map_name: &str, path: &str) -> Value {
        self.send(&merkle_req(map_name, path)).await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let v = self
                .recv_within(left)
                .await
                .unwrap_or_else(|| panic!("no reply to MERKLE_REQ_BUCKET {map_name} {path:?}"));
            let t = msg_type(&v);
            if (t == "SYNC_RESP_BUCKETS" || t == "SYNC_RESP_LEAF")
                && pstr(&v, "mapName") == Some(map_name)
                && pstr(&v, "path") == Some(path)
            {
                return v;
            }
        }
    }

    /// The client's walk (protocol.md 5.4): from `""` down every listed bucket to the leaves;
    /// returns every leaf record by key (tombstones included, value nil) and the bucket hashes
    /// seen per path.
    pub async fn walk(&mut self, map_name: &str) -> Walk {
        let mut out = Walk::default();
        let mut todo = vec![String::new()];
        while let Some(path) = todo.pop() {
            let v = self.merkle(map_name, &path).await;
            if path.len() < 3 {
                assert_eq!(msg_type(&v), "SYNC_RESP_BUCKETS", "{v:?}");
                let buckets = get(payload(&v), "buckets")
                    .and_then(Value::as_map)
                    .expect("buckets map");
                let mut seen = BTreeMap::new();
                for (c, h) in buckets {
                    let c = c.as_str().expect("bucket key is a string");
                    assert_eq!(c.chars().count(), 1, "bucket key is one hex char: {c:?}");
                    let h = u32::try_from(as_u64(h)).expect("bucket hash is u32");
                    seen.insert(c.to_owned(), h);
                    if h != 0 {
                        todo.push(format!("{path}{c}"));
                    }
                }
                out.buckets.insert(path, seen);
            } else {
                assert_eq!(msg_type(&v), "SYNC_RESP_LEAF", "{v:?}");
                for r in get(payload(&v), "records")
                    .and_then(Value::as_array)
                    .expect("records")
                {
                    let key = get(r, "key").and_then(Value::as_str).expect("key");
                    let rec = get(r, "record").expect("record").clone();
                    assert!(
                        out.records.insert(key.to_owned(), rec).is_none(),
                        "key {key} listed twice"
                    );
                }
            }
        }
        out
    }
}

#[derive(Default, Debug)]
pub struct Walk {
    pub records: BTreeMap<String, Value>,
    pub buckets: BTreeMap<String, BTreeMap<String, u32>>,
}

impl Walk {
    /// The walked records as a tree, computed by the test.
    pub fn tree(&self) -> Tree {
        let mut t = Tree::default();
        for (k, r) in &self.records {
            t.insert(k, &Ts::from_wire(get(r, "timestamp").expect("timestamp")));
        }
        t
    }

    pub fn value(&self, key: &str) -> Option<&Value> {
        self.records.get(key).and_then(|r| get(r, "value"))
    }
}

// ---- spec 5.1 / 5.2, written again from the text ---------------------------------------------

/// FNV-1a over UTF-16 code units.
pub fn fnv1a(s: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for unit in s.encode_utf16() {
        h ^= u32::from(unit);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// MurmurHash3 fmix32.
pub fn mix(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^= h >> 16;
    h
}

pub fn combine(hashes: impl IntoIterator<Item = u32>) -> u32 {
    hashes
        .into_iter()
        .fold(0u32, |acc, h| acc.wrapping_add(mix(h)))
}

pub fn item_hash(key: &str, t: &Ts) -> u32 {
    fnv1a(&format!("{key}:{}:{}:{}", t.millis, t.counter, t.node))
}

pub fn route(key: &str) -> String {
    format!("{:08x}", fnv1a(key))
}

/// The TS client's depth-3 tree, as the set of records it holds (key → item hash).
#[derive(Default, Clone, Debug)]
pub struct Tree {
    pub items: BTreeMap<String, u32>,
}

impl Tree {
    pub fn insert(&mut self, key: &str, t: &Ts) {
        self.items.insert(key.to_owned(), item_hash(key, t));
    }

    pub fn remove(&mut self, key: &str) {
        self.items.remove(key);
    }

    /// Hash of the node at `path` (0..=3 hex chars).
    pub fn hash(&self, path: &str) -> u32 {
        if path.len() == 3 {
            return combine(
                self.items
                    .iter()
                    .filter(|(k, _)| route(k)[..3] == *path)
                    .map(|(_, h)| *h),
            );
        }
        combine(self.buckets(path).into_values())
    }

    pub fn root(&self) -> u32 {
        self.hash("")
    }

    /// Children of an internal node: hex char → hash, for children that hold any key.
    pub fn buckets(&self, path: &str) -> BTreeMap<String, u32> {
        let mut chars: Vec<char> = self
            .items
            .keys()
            .map(|k| route(k))
            .filter(|r| r.starts_with(path))
            .filter_map(|r| r[path.len()..].chars().next())
            .collect();
        chars.sort_unstable();
        chars.dedup();
        chars
            .into_iter()
            .map(|c| (c.to_string(), self.hash(&format!("{path}{c}"))))
            .collect()
    }
}

// ---- node helpers ---------------------------------------------------------------------------

/// Polls `/metrics` until `pred` holds (reports arrive on an interval).
pub fn wait_scrape(node: &Node, what: &str, pred: impl Fn(&Scrape) -> bool) -> Scrape {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = node.scrape();
        if pred(&s) {
            return s;
        }
        if Instant::now() > deadline {
            panic!("metrics never satisfied: {what}\n{}", s.text);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `topgun_invalid_messages_total{reason}` (0 when absent).
pub fn invalid(s: &Scrape, reason: &str) -> f64 {
    s.value_or_zero("topgun_invalid_messages_total", &[("reason", reason)])
}

/// Sum of `topgun_invalid_messages_total` over every reason.
pub fn invalid_sum(s: &Scrape) -> f64 {
    s.samples
        .iter()
        .filter(|x| x.metric == "topgun_invalid_messages_total")
        .map(|x| match x.value {
            prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum()
}

/// An HTTP request whose response body is kept as bytes (MessagePack from `POST /sync`).
pub fn http_bytes(
    port: impl Into<super::HttpTarget>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<(u16, Vec<u8>)> {
    let raw = super::http_exchange(port, method, path, headers, body)?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(raw.len());
    let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let mut body = raw.get(split + 4..).unwrap_or_default().to_vec();
    if head.contains("transfer-encoding: chunked") {
        let mut out = Vec::new();
        let mut rest = &body[..];
        while let Some(p) = rest.windows(2).position(|w| w == b"\r\n") {
            let n =
                usize::from_str_radix(String::from_utf8_lossy(&rest[..p]).trim(), 16).unwrap_or(0);
            if n == 0 || rest.len() < p + 2 + n {
                break;
            }
            out.extend_from_slice(&rest[p + 2..p + 2 + n]);
            rest = &rest[(p + 4 + n).min(rest.len())..];
        }
        body = out;
    }
    Ok((status, body))
}

/// `POST /sync` with a MessagePack body; the decoded answer of a 200.
pub fn post_sync(port: impl Into<super::HttpTarget>, body: &Value) -> Value {
    let (status, resp) = http_bytes(
        port,
        "POST",
        "/sync",
        &[("Content-Type", "application/msgpack")],
        &super::encode(body),
    )
    .expect("POST /sync");
    assert_eq!(status, 200);
    rmpv::decode::read_value(&mut &resp[..]).expect("MessagePack body")
}

/// An OR_ADD on map `tags` (the OR-Map and cluster suites share these helpers).
pub fn or_add(key: &str, tag: &str, value: Value, t: &Ts) -> Value {
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

/// An OR_REMOVE of `tag` on map `tags`.
pub fn or_remove(key: &str, tag: &str) -> Value {
    client_op(map(&[
        ("id", "2".into()),
        ("mapName", "tags".into()),
        ("key", key.into()),
        ("opType", "OR_REMOVE".into()),
        ("orTag", tag.into()),
    ]))
}

/// Walks the OR tree from the root to every leaf: key → (live tags, removed tags).
pub async fn or_walk(c: &mut Client) -> BTreeMap<String, (Vec<String>, Vec<String>)> {
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
