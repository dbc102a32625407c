//! Guards the promise of OP_ACK: a write the node acknowledged survives `kill -9` and a restart
//! on the same data dir, with its value and its timestamp; tombstones and TTLs too. Also the
//! faults around it: a data dir locked by another node or holding a corrupt file is refused
//! with one clear line, and a failing commit answers with an error instead of an ack.
mod common;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use common::*;
use rmpv::Value;

fn ts(millis: u64, counter: u32) -> Value {
    map(&[
        ("millis", Value::F64(millis as f64)),
        ("counter", counter.into()),
        ("nodeId", "writer".into()),
    ])
}

fn op(id: u64, key: &str, value: Value, millis: u64, counter: u32, ttl: Option<u64>) -> Value {
    let mut record = vec![("value", value), ("timestamp", ts(millis, counter))];
    if let Some(t) = ttl {
        record.push(("ttlMs", t.into()));
    }
    map(&[
        ("id", id.to_string().into()),
        ("mapName", "durable".into()),
        ("key", key.into()),
        ("record", map(&record)),
    ])
}

fn batch(ops: Vec<Value>) -> Value {
    map(&[
        ("type", "OP_BATCH".into()),
        ("payload", map(&[("ops", Value::Array(ops))])),
    ])
}

fn redb_node(dir: tempfile::TempDir, port: Option<u16>, extra: &[(&str, &str)]) -> Node {
    // `port`: the port of the killed node; the restart must bind it at once.
    let mut opts = NodeOptions {
        memory_storage: false,
        port,
        ..Default::default()
    };
    for (k, v) in extra {
        opts = opts.env(k, v);
    }
    Node::start_in(dir, opts)
}

/// The root a client computes from its acked writes (protocol.md 5.2), with the suite's own
/// hashing (tests/common/proto.rs), grouped level by level so 10,000 keys stay cheap.
fn client_root(acked: &HashMap<String, (i64, u64, u32)>) -> u32 {
    let mut level: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    for (key, (_, millis, counter)) in acked {
        let t = proto::Ts::new(*millis, *counter, "writer");
        level
            .entry(proto::route(key)[..3].to_owned())
            .or_default()
            .push(proto::item_hash(key, &t));
    }
    for depth in (0..3).rev() {
        let mut up: BTreeMap<String, Vec<u32>> = BTreeMap::new();
        for (path, hashes) in level {
            up.entry(path[..depth].to_owned())
                .or_default()
                .push(proto::combine(hashes));
        }
        level = up;
    }
    level.remove("").map_or(0, proto::combine)
}

/// Every record of a map, with its stored timestamp, through the suite's client walk.
async fn walk(c: &mut Client, map_name: &str) -> BTreeMap<String, (Value, u64, u64)> {
    c.walk(map_name)
        .await
        .records
        .into_iter()
        .map(|(key, rec)| {
            let t = proto::Ts::from_wire(get(&rec, "timestamp").expect("timestamp"));
            let value = get(&rec, "value").cloned().unwrap_or(Value::Nil);
            (key, (value, t.millis, u64::from(t.counter)))
        })
        .collect()
}

/// The SYNC_INIT root and every record.
async fn walk_with_root(
    c: &mut Client,
    map_name: &str,
) -> (u32, BTreeMap<String, (Value, u64, u64)>) {
    let root = c.sync_root(map_name).await;
    (root, walk(c, map_name).await)
}

/// Writes batches from `writers` connections until told to stop; returns every acked op as
/// key → (value, millis, counter).
async fn write_until(
    node: &Node,
    prefix: &str,
    writers: usize,
    per_batch: usize,
    limit: usize,
    deadline: Instant,
) -> HashMap<String, (i64, u64, u32)> {
    let base = now_millis();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let mut c = node.authed_client().await;
        let prefix = prefix.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut acked = HashMap::new();
            let mut id = 0u64;
            let mut n = 0usize;
            while n < limit && Instant::now() < deadline {
                let mut ops = Vec::new();
                let mut sent = Vec::new();
                for _ in 0..per_batch {
                    id += 1;
                    let key = format!("{prefix}w{w}-{n}");
                    let value = (w * 1_000_000 + n) as i64;
                    let counter = (n % 1000) as u32;
                    ops.push(op(id, &key, value.into(), base, counter, None));
                    sent.push((key, value, counter));
                    n += 1;
                }
                c.send(&batch(ops)).await;
                match c.recv_within(Duration::from_secs(5)).await {
                    Some(v) if msg_type(&v) == "OP_ACK" => {
                        for (key, value, counter) in sent {
                            acked.insert(key, (value, base, counter));
                        }
                    }
                    // Killed mid-batch: whatever was not acked need not survive.
                    _ => break,
                }
            }
            acked
        }));
    }
    let mut all = HashMap::new();
    for t in tasks {
        all.extend(t.await.expect("writer task"));
    }
    all
}

fn check_all_present(
    acked: &HashMap<String, (i64, u64, u32)>,
    found: &BTreeMap<String, (Value, u64, u64)>,
) {
    let mut missing = 0;
    for (key, (value, millis, counter)) in acked {
        match found.get(key) {
            Some((v, m, c)) => {
                assert_eq!(v.as_i64(), Some(*value), "{key}");
                assert_eq!((*m, *c), (*millis, u64::from(*counter)), "{key}");
            }
            None => missing += 1,
        }
    }
    assert_eq!(missing, 0, "{missing} of {} acked writes lost", acked.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acked_writes_survive_kill_9() {
    let node = redb_node(tempfile::tempdir().unwrap(), None, &[]);
    let port = node.port;
    // 4 writers x 2,600 = 10,400 records, all acked before the kill.
    let acked = write_until(
        &node,
        "",
        4,
        100,
        2_600,
        Instant::now() + Duration::from_secs(60),
    )
    .await;
    assert!(acked.len() >= 10_000, "only {} acked", acked.len());
    let dir = node.into_dir();

    let node = redb_node(dir, Some(port), &[]);
    assert_eq!(node.port, port);
    let pid = node.pid();
    let line = node.wait_log("storage opened", |l| l["pid"] == pid);
    assert_eq!(
        line["lwwRecords"].as_u64(),
        Some(acked.len() as u64),
        "{line}"
    );
    let mut c = node.authed_client().await;
    let (root, found) = walk_with_root(&mut c, "durable").await;
    check_all_present(&acked, &found);
    // Every write was acked before the kill, so the node's root after recovery is exactly
    // the root a client computes from its acked writes.
    assert_eq!(root, client_root(&acked));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_random_moments_loses_no_acked_write() {
    let mut dir = tempfile::tempdir().unwrap();
    let mut port = None;
    let mut all_acked: HashMap<String, (i64, u64, u32)> = HashMap::new();
    // Bounded: 3 rounds of writing for a random 100-600 ms, then kill -9 while writing.
    for round in 0..3u64 {
        let node = redb_node(dir, port, &[]);
        port = Some(node.port);
        let pid = node.pid();
        let killer = tokio::spawn(async move {
            let delay = 100 + (now_millis() * 7919 + round * 131) % 500;
            tokio::time::sleep(Duration::from_millis(delay)).await;
            let _ = std::process::Command::new("kill")
                .args(["-9", &pid.to_string()])
                .status();
        });
        let prefix = format!("r{round}-");
        let acked = write_until(
            &node,
            &prefix,
            3,
            20,
            usize::MAX,
            Instant::now() + Duration::from_secs(5),
        )
        .await;
        killer.await.unwrap();
        all_acked.extend(acked);
        dir = node.into_dir();
        let node = redb_node(dir, port, &[]);
        let mut c = node.authed_client().await;
        let found = walk(&mut c, "durable").await;
        check_all_present(&all_acked, &found);
        dir = node.into_dir();
    }
    assert!(!all_acked.is_empty(), "nothing was acked before the kills");
}

#[tokio::test]
async fn tombstones_and_ttls_survive_a_restart() {
    let node = redb_node(tempfile::tempdir().unwrap(), None, &[]);
    let mut c = node.authed_client().await;
    let now = now_millis();
    c.send(&batch(vec![
        op(1, "kept", 1.into(), now, 0, None),
        op(2, "deleted", 2.into(), now, 0, None),
        op(3, "short", 3.into(), now, 0, Some(600_000)),
    ]))
    .await;
    assert_eq!(msg_type(&c.recv().await.unwrap()), "OP_ACK");
    c.send(&batch(vec![op(4, "deleted", Value::Nil, now, 1, None)]))
        .await;
    assert_eq!(msg_type(&c.recv().await.unwrap()), "OP_ACK");
    let dir = node.into_dir();

    let node = redb_node(dir, None, &[]);
    let mut c = node.authed_client().await;
    let found = walk(&mut c, "durable").await;
    assert_eq!(found["kept"].0, Value::from(1));
    // The tombstone is still there (value nil, its own timestamp), so offline clients learn
    // of the delete through sync.
    assert_eq!(found["deleted"].0, Value::Nil);
    assert_eq!(found["deleted"].2, 1);
    assert_eq!(found["short"].0, Value::from(3));
    node.wait_metric("topgun_map_tombstones", &[("map", "durable")], 1.0);
    node.wait_metric("topgun_map_size_items", &[("map", "durable")], 2.0);
}

#[test]
fn a_locked_data_dir_is_refused_with_one_line() {
    let node = redb_node(tempfile::tempdir().unwrap(), None, &[]);
    let out = command(node.dir.path())
        .env("STORAGE_BACKEND", "redb")
        .env("TOPGUN_NO_AUTH", "1")
        .args(["--port", "0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<_> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(lines[0].contains("locked"), "{err}");
}

#[test]
fn a_corrupt_database_is_refused_not_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let garbage = vec![0x5au8; 64 * 1024];
    std::fs::write(data.join("topgun.redb"), &garbage).unwrap();
    let out = command(dir.path())
        .env("STORAGE_BACKEND", "redb")
        .env("TOPGUN_NO_AUTH", "1")
        .args(["--port", "0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        err.lines().filter(|l| !l.trim().is_empty()).count(),
        1,
        "{err}"
    );
    assert!(err.contains("corrupt"), "{err}");
    // Never a silent fresh start over old data.
    assert_eq!(std::fs::read(data.join("topgun.redb")).unwrap(), garbage);
}

#[tokio::test]
async fn a_failed_commit_is_an_error_reply_not_an_ack() {
    // Debug builds honour a fault hook: commits from the 2nd on fail.
    let node = redb_node(
        tempfile::tempdir().unwrap(),
        None,
        &[("TOPGUN_FAULT_FAIL_COMMITS_FROM", "2")],
    );
    let mut c = node.authed_client().await;
    let now = now_millis();
    c.send(&batch(vec![op(1, "a", 1.into(), now, 0, None)]))
        .await;
    assert_eq!(msg_type(&c.recv().await.unwrap()), "OP_ACK");
    c.send(&batch(vec![op(2, "b", 2.into(), now, 0, None)]))
        .await;
    let reply = c.recv().await.unwrap();
    assert_eq!(msg_type(&reply), "ERROR", "{reply:?}");
    assert_eq!(
        get(payload(&reply), "code").and_then(Value::as_u64),
        Some(500)
    );
    // The node keeps serving reads.
    c.send(&ping(1.0)).await;
    assert!(c.recv_type("PONG").await.is_some());
    node.wait_metric("topgun_storage_errors_total", &[("op", "commit")], 1.0);
    let line = node.wait_log("storage commit failed", |_| true);
    assert_eq!(line["err"]["type"], "commit");
}
