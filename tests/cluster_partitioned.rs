//! Partitioned placement (`--placement partitioned`): each node keeps only the partitions it
//! owns or backs up, and any node answers reads for all of them by gathering from the holders.
//! Real node processes on 127.0.0.1, real WebSockets, `/metrics` and `POST /sync` over HTTP.
mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::cluster::*;
use common::proto::*;
use common::*;
use rmpv::Value;

const PARTITIONED: [&str; 2] = ["--placement", "partitioned"];
const KEYS: usize = 600;
const GROUPS: usize = 5;

/// Distinct for every key (919 and 1000 are coprime), so a sort by it is total.
fn score(i: usize) -> i64 {
    ((i * 919) % 1000) as i64
}

fn record(i: usize) -> Value {
    map(&[
        ("n", Value::from(i as i64)),
        ("group", Value::from(format!("g{}", i % GROUPS))),
        ("score", Value::from(score(i))),
    ])
}

/// Writes `KEYS` records spread over every node, each batch acknowledged.
async fn seed(members: &[&Member], map_name: &str) -> BTreeMap<String, Value> {
    let mut clients = Vec::new();
    for m in members {
        clients.push(connect(m).await);
    }
    let mut want = BTreeMap::new();
    for (b, chunk) in (0..KEYS).collect::<Vec<_>>().chunks(50).enumerate() {
        let ops: Vec<Value> = chunk
            .iter()
            .map(|&i| put(&format!("s-{i}"), map_name, &key(i), &record(i), i as u32))
            .collect();
        let last = format!("s-{}", chunk[chunk.len() - 1]);
        let who = b % clients.len();
        write_acked(&mut clients[who], &members[who].id, &op_batch(ops), &last).await;
        for &i in chunk {
            want.insert(key(i), record(i));
        }
    }
    want
}

fn key(i: usize) -> String {
    format!("k{i:04}")
}

fn sorted_top10() -> Value {
    map(&[
        (
            "sort",
            Value::Array(vec![map(&[
                ("field", "score".into()),
                ("direction", "desc".into()),
            ])]),
        ),
        ("limit", Value::from(10)),
    ])
}

fn by_group() -> Value {
    map(&[
        ("groupBy", Value::Array(vec!["group".into()])),
        (
            "aggregations",
            Value::Array(vec![
                map(&[("func", "count".into())]),
                map(&[("func", "sum".into()), ("field", "score".into())]),
                map(&[("func", "max".into()), ("field", "score".into())]),
            ]),
        ),
    ])
}

fn num(v: &Value, field: &str) -> Option<i64> {
    match get(v, field)? {
        Value::Integer(i) => i.as_i64(),
        Value::F64(f) => Some(*f as i64),
        _ => None,
    }
}

/// `POST /sync` with one query: its result rows.
fn http_query(m: &Member, map_name: &str, query: Value) -> Vec<Value> {
    let body = map(&[
        ("clientId", "http-client".into()),
        ("clientHlc", Ts::new(now_millis(), 0, "http").wire()),
        (
            "queries",
            Value::Array(vec![map(&[
                ("queryId", "hq".into()),
                ("mapName", map_name.into()),
                ("query", query),
            ])]),
        ),
    ]);
    let (status, resp) = http_bytes(
        m.node.http_addr(),
        "POST",
        "/sync",
        &[("Content-Type", "application/msgpack")],
        &encode(&body),
    )
    .expect("POST /sync");
    assert_eq!(status, 200, "{}", m.id);
    let resp = rmpv::decode::read_value(&mut &resp[..]).expect("MessagePack body");
    assert_eq!(get(&resp, "errors"), None, "{}: {resp:?}", m.id);
    get(&resp, "queryResults")
        .and_then(Value::as_array)
        .and_then(|q| q.first())
        .and_then(|q| get(q, "results"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_record_lives_on_its_owner_and_backup_and_every_node_answers_for_all() {
    let [a, b, c] = cluster::<3>(&PARTITIONED);
    let all = [&a, &b, &c];
    let want = seed(&all, "grid").await;

    // Placement: K(1+b) records in all, about K(1+b)/N = 400 on each node, never a full copy.
    let each = wait_held_sum(&all, "grid", (KEYS * (1 + BACKUPS)) as f64);
    eprintln!("records held per node: {each:?}");
    for (m, n) in all.iter().zip(&each) {
        assert!(
            (300.0..=500.0).contains(n),
            "{} holds {n} of {KEYS} records (expected about 400)",
            m.id
        );
    }

    // Snapshots from every node: every record, whichever nodes hold it.
    for m in all {
        let found = read_map(m, "grid").await;
        assert_eq!(diff(&want, &found), None, "{}", m.id);
        assert_eq!(found.len(), KEYS, "{}", m.id);
    }

    // Sort + limit: the top 10 of the whole map, from every node, with hasMore.
    let mut by_score: Vec<usize> = (0..KEYS).collect();
    by_score.sort_by_key(|&i| std::cmp::Reverse(score(i)));
    let top10: Vec<String> = by_score[..10].iter().map(|&i| key(i)).collect();
    for m in all {
        let mut cl = connect(m).await;
        let resp = cl.subscribe("top", "grid", sorted_top10()).await;
        assert_eq!(pstr(&resp, "error"), None, "{}: {resp:?}", m.id);
        assert_eq!(result_keys(&resp), top10, "{}", m.id);
        assert_eq!(
            get(payload(&resp), "hasMore").and_then(Value::as_bool),
            Some(true),
            "{}",
            m.id
        );
    }

    // Group by with aggregations: partial groups merged into the single-node answer.
    let mut expected: BTreeMap<String, (i64, i64, i64)> = BTreeMap::new();
    for i in 0..KEYS {
        let g = expected.entry(format!("g{}", i % GROUPS)).or_default();
        g.0 += 1;
        g.1 += score(i);
        g.2 = g.2.max(score(i));
    }
    for m in all {
        let mut cl = connect(m).await;
        let resp = cl.subscribe("groups", "grid", by_group()).await;
        assert_eq!(pstr(&resp, "error"), None, "{}: {resp:?}", m.id);
        let rows: BTreeMap<String, Value> = results(&resp).into_iter().collect();
        assert_eq!(rows.len(), GROUPS, "{}: {rows:?}", m.id);
        for (g, (count, sum, max)) in &expected {
            let row = &rows[&format!("S{}:{g}", g.len())];
            assert_eq!(num(row, "__count"), Some(*count), "{} {g}", m.id);
            assert_eq!(num(row, "__sum_score"), Some(*sum), "{} {g}", m.id);
            assert_eq!(num(row, "__max_score"), Some(*max), "{} {g}", m.id);
        }
    }

    // POST /sync gathers too.
    for m in all {
        let rows = http_query(m, "grid", map(&[]));
        assert_eq!(rows.len(), KEYS, "{}: POST /sync rows", m.id);
        let top = http_query(m, "grid", sorted_top10());
        let keys: Vec<String> = top
            .iter()
            .filter_map(|r| get(r, "key").and_then(Value::as_str).map(str::to_owned))
            .collect();
        assert_eq!(keys, top10, "{}: POST /sync top 10", m.id);
    }

    for m in all {
        let s = wait_scrape(&m.node, "gathered reads counted", |s| {
            s.value_or_zero("topgun_cluster_gathers_total", &[("outcome", "ok")]) >= 5.0
        });
        assert_eq!(
            s.value_or_zero("topgun_cluster_gathers_total", &[("outcome", "failed")]),
            0.0,
            "{}",
            m.id
        );
    }
}

/// Writes up to `max_ops` through `writers`, kills `victim` with -9 once `at` were sent, lets
/// the writers finish; every acknowledged key → value (at least `at` of them).
async fn kill_under_load(
    writers: &[&Member],
    map_name: &str,
    max_ops: usize,
    at: usize,
    victim: &mut Member,
) -> BTreeMap<String, Value> {
    let load = Load::start(writers, map_name, max_ops, Duration::from_secs(20));
    wait_for("writes under way", Duration::from_secs(10), || {
        if load.sent() >= at {
            Ok(())
        } else {
            Err(format!("{} sent", load.sent()))
        }
    });
    victim.node.kill9();
    let acked = load.join().await;
    assert!(
        acked.len() >= at,
        "only {} writes acknowledged",
        acked.len()
    );
    acked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_holder_loses_no_acknowledged_write_and_its_copies_are_made_again() {
    let [a, mut b, c] = cluster::<3>(&PARTITIONED);
    let acked = kill_under_load(&[&a, &c], "ledger", 3_000, 500, &mut b).await;
    wait_members(&[&a, &c], 2, Duration::from_secs(15));

    // Every partition is back to 1 + backup-count copies: with two nodes, each holds every
    // acknowledged record. (A write refused with ERROR while its owner died may have been
    // applied on one survivor only: nothing promises its copies until anti-entropy.)
    let each = wait_for(
        "a and c holding every acknowledged record",
        Duration::from_secs(20),
        || {
            let each = [held(&a, "ledger"), held(&c, "ledger")];
            if each.iter().all(|n| *n >= acked.len() as f64) {
                Ok(each)
            } else {
                Err(format!("held: {each:?}, acknowledged: {}", acked.len()))
            }
        },
    )
    .0;
    eprintln!("records held by a and c after the kill: {each:?}");
    for m in [&a, &c] {
        let found = read_map(m, "ledger").await;
        assert_eq!(diff(&acked, &found), None, "{} after the kill", m.id);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_the_other_placement_is_refused_and_counted() {
    let a = start("node-a", None, 0, &PARTITIONED);
    let full = start(
        "node-b",
        Some(a.cluster_port),
        0,
        &["--placement", "full", "--cluster-join-timeout-ms", "1000"],
    );
    wait_for(
        "the placement refusal counted",
        Duration::from_secs(10),
        || {
            let n = a.node.scrape().value_or_zero(
                "topgun_cluster_peer_errors_total",
                &[("reason", "placement")],
            ) + full.node.scrape().value_or_zero(
                "topgun_cluster_peer_errors_total",
                &[("reason", "placement")],
            );
            if n > 0.0 {
                Ok(())
            } else {
                Err("no placement refusal yet".into())
            }
        },
    );
    let refused = lines_with(&a, "peer refused")
        .into_iter()
        .chain(lines_with(&full, "peer refused"))
        .find(|l| l["reason"] == "placement")
        .expect("a `peer refused` line with reason placement");
    assert!(
        refused["detail"]
            .as_str()
            .is_some_and(|d| d.contains("partitioned") && d.contains("full")),
        "{refused}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joining_node_takes_its_share_and_the_others_drop_what_they_handed_over() {
    let a = start("node-a", None, 0, &PARTITIONED);
    let b = start("node-b", Some(a.cluster_port), 0, &PARTITIONED);
    wait_settled(&[&a, &b], Duration::from_secs(10));
    let want = seed(&[&a, &b], "spread").await;
    // Two nodes with one backup: each keeps every partition.
    wait_held_sum(&[&a, &b], "spread", (2 * KEYS) as f64);

    let load = Load::start(
        &[&a, &b],
        "joined-under-writes",
        5_000,
        Duration::from_secs(15),
    );
    let c = start("node-c", Some(a.cluster_port), 0, &PARTITIONED);
    wait_settled(&[&a, &b, &c], Duration::from_secs(15));
    let acked = load.join().await;
    assert!(!acked.is_empty(), "no write acknowledged during the join");

    // a and b handed c's share over and dropped what they no longer keep: K(1+b)/N each.
    let all = [&a, &b, &c];
    let each = wait_held_sum(&all, "spread", (KEYS * (1 + BACKUPS)) as f64);
    eprintln!("records held per node after the join: {each:?}");
    for (m, n) in all.iter().zip(&each) {
        assert!(
            (300.0..=500.0).contains(n),
            "{} holds {n} of {KEYS} records after the join",
            m.id
        );
    }
    let released: f64 = [&a, &b]
        .iter()
        .map(|m| {
            m.node
                .scrape()
                .value_or_zero("topgun_partitions_released_total", &[])
        })
        .sum();
    assert!(released > 0.0, "no partition handed over and dropped");
    let handed = lines_with(&a, "partitions handed over")
        .into_iter()
        .chain(lines_with(&b, "partitions handed over"))
        .next()
        .expect("a `partitions handed over` line");
    assert!(
        handed["records"].as_u64().is_some_and(|r| r > 0),
        "{handed}"
    );

    for m in all {
        let found = read_map(m, "spread").await;
        assert_eq!(diff(&want, &found), None, "{}: seeded records", m.id);
        let found = read_map(m, "joined-under-writes").await;
        assert_eq!(
            diff(&acked, &found),
            None,
            "{}: writes during the join",
            m.id
        );
    }
    // Records by role: what a node stores is what it owns or backs up, nothing waits.
    for m in all {
        let s = wait_scrape(&m.node, "no records left to hand over", |s| {
            s.value_or_zero("topgun_partition_records", &[("role", "replica")]) == 0.0
                && s.value_or_zero("topgun_partition_records", &[("role", "owner")]) > 0.0
        });
        assert!(s.value_or_zero("topgun_partition_records", &[("role", "backup")]) > 0.0);
    }
}

/// Writes the same LWW records (fixed timestamps) and OR adds and removes through `via`.
async fn sync_data(via: &[&Member]) {
    for (n, m) in via.iter().enumerate() {
        let mut c = connect(m).await;
        let ops: Vec<Value> = (0..300)
            .filter(|i| i % via.len() == n)
            .map(|i| {
                put_op(
                    &format!("m-{i}"),
                    "synced",
                    &format!("doc-{i}"),
                    Value::from(i as i64),
                    &Ts::new(1_700_000_000_000 + i as u64, 0, "writer"),
                )
            })
            .collect();
        let last = ops
            .last()
            .and_then(|op| get(op, "id"))
            .and_then(Value::as_str)
            .map(str::to_owned);
        write_acked(&mut c, &m.id, &op_batch(ops), &last.expect("ops")).await;
        for i in (0..60).filter(|i| i % via.len() == n) {
            let t = Ts::new(1_700_000_000_000 + i as u64, 1, "writer");
            c.send_acked(&or_add(
                &format!("tag-{i}"),
                &format!("t{i}"),
                Value::from(i as i64),
                &t,
            ))
            .await;
            if i % 4 == 0 {
                c.send_acked(&or_remove(&format!("tag-{i}"), &format!("t{i}")))
                    .await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merkle_and_ormap_sync_from_any_node_are_those_of_one_node_holding_everything() {
    let [a, b, c] = cluster::<3>(&PARTITIONED);
    let solo = start("solo", None, 0, &["--placement", "full"]);
    sync_data(&[&a, &b, &c]).await;
    sync_data(&[&solo]).await;
    let mut model = Tree::default();
    for i in 0..300 {
        model.insert(
            &format!("doc-{i}"),
            &Ts::new(1_700_000_000_000 + i as u64, 0, "writer"),
        );
    }
    let mut solo_client = connect(&solo).await;
    let solo_root = solo_client.sync_root("synced").await;
    assert_eq!(
        solo_root,
        model.root(),
        "the single node's root is the client's"
    );
    let solo_or = or_walk(&mut solo_client).await;
    assert_eq!(solo_or.len(), 60);
    for m in [&a, &b, &c] {
        let mut cl = connect(m).await;
        assert_eq!(
            cl.sync_root("synced").await,
            solo_root,
            "{}: LWW root",
            m.id
        );
        let walk = cl.walk("synced").await;
        assert_eq!(walk.records.len(), 300, "{}: records walked", m.id);
        assert_eq!(walk.tree().root(), model.root(), "{}", m.id);
        assert_eq!(walk.buckets[""], model.buckets(""), "{}: top buckets", m.id);
        assert_eq!(or_walk(&mut cl).await, solo_or, "{}: OR-Map walk", m.id);
    }
    for m in [&a, &b, &c] {
        let s = m.node.scrape();
        assert_eq!(
            s.value_or_zero("topgun_cluster_gathers_total", &[("outcome", "failed")]),
            0.0,
            "{}",
            m.id
        );
    }
}

/// Reads QUERY_UPDATEs of `query_id` until `stop`: how many arrived per key.
async fn count_updates(
    mut c: Client,
    query_id: &'static str,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        let Some(v) = c.recv_within(Duration::from_millis(200)).await else {
            continue;
        };
        if msg_type(&v) == "QUERY_UPDATE" && pstr(&v, "queryId") == Some(query_id) {
            let key = pstr(&v, "key").unwrap_or_default().to_owned();
            *seen.entry(key).or_insert(0) += 1;
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_queries_on_any_node_get_every_change_once_through_an_owner_kill() {
    let [a, mut b, c] = cluster::<3>(&PARTITIONED);
    // A subscriber on c, and on a a writer that subscribes too (it must get no echo).
    let mut sub = connect(&c).await;
    let resp = sub.subscribe("watch", "live", map(&[])).await;
    assert_eq!(pstr(&resp, "error"), None, "{resp:?}");
    let mut writer = connect(&a).await;
    writer.subscribe("own", "live", map(&[])).await;
    // Ready when a probe written through a reaches the subscriber on c.
    let probe = put("probe-0", "live", "probe", &Value::from(1), 0);
    write_acked(&mut writer, "node-a", &op_batch(vec![probe]), "probe-0").await;
    assert!(
        sub.recv_type_within("QUERY_UPDATE", Duration::from_secs(10))
            .await
            .is_some(),
        "the subscriber on c never heard of a write through a"
    );
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let counting = tokio::spawn(count_updates(sub, "watch", stop.clone()));
    let echoes = tokio::spawn(count_updates(writer, "own", stop.clone()));

    let acked = kill_under_load(&[&a, &c], "live", 1_500, 400, &mut b).await;
    // Every acknowledged write reaches the subscriber (give the last ones a moment).
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let seen = counting.await.expect("subscriber task");
    let missed: Vec<&String> = acked.keys().filter(|k| !seen.contains_key(*k)).collect();
    let doubled: Vec<(&String, &usize)> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        missed.is_empty(),
        "{} of {} acknowledged writes never reached the subscriber (e.g. {:?})",
        missed.len(),
        acked.len(),
        &missed[..missed.len().min(5)]
    );
    assert!(
        doubled.is_empty(),
        "{} keys delivered more than once (e.g. {:?})",
        doubled.len(),
        &doubled[..doubled.len().min(5)]
    );
    // The probe connection wrote nothing else: whatever it heard came from the load.
    let echoed = echoes.await.expect("writer task");
    assert!(
        !echoed.contains_key("probe"),
        "the writer heard its own write back"
    );
    // Both holders of a partition c does not keep sent each change; c routed it once.
    let s = wait_scrape(&c.node, "live events counted", |s| {
        s.value_or_zero(
            "topgun_cluster_live_events_total",
            &[("outcome", "duplicate")],
        ) > 0.0
    });
    let received = s.value_or_zero(
        "topgun_cluster_live_events_total",
        &[("outcome", "received")],
    );
    assert!(received > 0.0);
    assert_eq!(
        s.value_or_zero(
            "topgun_cluster_live_events_total",
            &[("outcome", "dropped")]
        ),
        0.0
    );
}
