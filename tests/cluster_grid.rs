//! The grid as one node: a partitioned cluster answers every read and streams every live change
//! the way one node holding everything does, through a join too. Where answers are compared, a
//! single node started with `--placement full` beside the cluster is the reference ("solo"):
//! both get the same writes with the same HLC timestamps, and what a client gets from each must
//! agree. Real node processes on 127.0.0.1, real WebSockets, `/metrics` and `POST /sync` over
//! HTTP.
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::cluster::*;
use common::proto::*;
use common::*;
use futures_util::SinkExt;
use rmpv::Value;
use tokio_tungstenite::tungstenite::Message;

const PARTITIONED: [&str; 2] = ["--placement", "partitioned"];
/// HLC millis the test's writes start from: fixed, so the cluster and the solo node get the
/// same timestamps (Merkle roots and LWW outcomes agree), and in the past (never drift).
const BASE: u64 = 1_700_000_000_000;

/// The reference: one node holding every record.
fn solo() -> Member {
    start("solo", None, 0, &["--placement", "full"])
}

// ---- comparing answers -----------------------------------------------------------------------

/// `v` with the keys of every map sorted (a client reads fields by name, not by position).
fn canon(v: &Value) -> Value {
    match v {
        Value::Map(m) => {
            let mut entries: Vec<(Value, Value)> =
                m.iter().map(|(k, v)| (k.clone(), canon(v))).collect();
            entries.sort_by_key(|(k, _)| k.to_string());
            Value::Map(entries)
        }
        Value::Array(a) => Value::Array(a.iter().map(canon).collect()),
        other => other.clone(),
    }
}

/// `rows` (an array of `{key, ...}` maps) sorted by `key`: for answers whose order is
/// unspecified.
fn sorted_by_key(rows: &Value) -> Value {
    let mut rows = rows.as_array().cloned().unwrap_or_default();
    rows.sort_by_key(|r| get(r, "key").and_then(Value::as_str).map(str::to_owned));
    Value::Array(rows)
}

/// `v` with the array under `field` sorted by key.
fn with_sorted(v: &Value, field: &str) -> Value {
    let Value::Map(m) = v else {
        return v.clone();
    };
    Value::Map(
        m.iter()
            .map(|(k, x)| {
                if k.as_str() == Some(field) {
                    (k.clone(), sorted_by_key(x))
                } else {
                    (k.clone(), x.clone())
                }
            })
            .collect(),
    )
}

/// Where `got` first differs from `want`, as a path and the two values; `None` when equal.
fn difference(path: &str, want: &Value, got: &Value) -> Option<String> {
    if want == got {
        return None;
    }
    match (want, got) {
        (Value::Map(w), Value::Map(g)) => {
            for (k, wv) in w {
                let at = format!("{path}.{}", k.as_str().unwrap_or("?"));
                match g.iter().find(|(gk, _)| gk == k) {
                    None => return Some(format!("{at}: missing (want {wv})")),
                    Some((_, gv)) => {
                        if let Some(d) = difference(&at, wv, gv) {
                            return Some(d);
                        }
                    }
                }
            }
            let extra = g.iter().find(|(gk, _)| !w.iter().any(|(wk, _)| wk == gk));
            Some(match extra {
                Some((k, v)) => format!("{path}.{k}: not in the reference (got {v})"),
                None => format!("{path}: maps differ"),
            })
        }
        (Value::Array(w), Value::Array(g)) => {
            for (i, (wv, gv)) in w.iter().zip(g).enumerate() {
                if let Some(d) = difference(&format!("{path}[{i}]"), wv, gv) {
                    return Some(d);
                }
            }
            Some(format!("{path}: {} elements, want {}", g.len(), w.len()))
        }
        _ => Some(format!("{path}: got {got}, want {want}")),
    }
}

fn assert_same(who: &str, what: &str, reference: &Value, got: &Value) {
    if let Some(d) = difference("", reference, got) {
        panic!("{who}: {what} differs from the single node's answer: {d}");
    }
}

// ---- 1: every read from every node of five --------------------------------------------------

const K: usize = 600;
const GROUPS: usize = 7;

/// Distinct for every key (919 and 1000 are coprime), so a sort by it is total.
fn score(i: usize) -> i64 {
    ((i * 919) % 1000) as i64
}

/// Integers, a float (quarters: every sum of them is exact, whatever the order), a boolean, a
/// group, and a `rank` with ties that every eleventh record lacks.
fn grid_record(i: usize) -> Value {
    let mut fields = vec![
        ("n", Value::from(i as i64)),
        ("group", Value::from(format!("g{}", i % GROUPS))),
        ("score", Value::from(score(i))),
        ("price", Value::F64((i % 40) as f64 * 0.25)),
        ("active", Value::from(!i.is_multiple_of(3))),
    ];
    if !i.is_multiple_of(11) {
        fields.push(("rank", Value::from(((i * 37) % 101) as i64)));
    }
    map(&fields)
}

fn grid_key(i: usize) -> String {
    format!("k{i:04}")
}

/// Writes the `K` LWW records (fixed timestamps) in batches of 50 spread over `targets`, then
/// 60 OR-Map keys (map `tags`), every fourth tag removed again; every op acknowledged.
async fn write_grid(targets: &[&Member], map_name: &str) -> BTreeMap<String, Value> {
    let mut clients = Vec::new();
    for m in targets {
        clients.push(connect(m).await);
    }
    let mut want = BTreeMap::new();
    for (b, chunk) in (0..K).collect::<Vec<_>>().chunks(50).enumerate() {
        let ops: Vec<Value> = chunk
            .iter()
            .map(|&i| {
                put_op(
                    &format!("g-{i}"),
                    map_name,
                    &grid_key(i),
                    grid_record(i),
                    &Ts::new(BASE + i as u64, 0, "writer"),
                )
            })
            .collect();
        let last = format!("g-{}", chunk[chunk.len() - 1]);
        let who = b % clients.len();
        write_acked(&mut clients[who], &targets[who].id, &op_batch(ops), &last).await;
        want.extend(chunk.iter().map(|&i| (grid_key(i), grid_record(i))));
    }
    for i in 0..60usize {
        let c = &mut clients[i % targets.len()];
        let t = Ts::new(BASE + i as u64, 1, "writer");
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
    want
}

fn sort_by(field: &str, direction: &str) -> Value {
    Value::Array(vec![map(&[
        ("field", field.into()),
        ("direction", direction.into()),
    ])])
}

fn agg(func: &str, field: Option<&str>) -> Value {
    let mut m = vec![("func", Value::from(func))];
    if let Some(f) = field {
        m.push(("field", f.into()));
    }
    map(&m)
}

fn where_eq(field: &str, value: Value) -> (&'static str, Value) {
    ("where", map(&[(field, value)]))
}

fn top_active(cursor: Option<&str>) -> Value {
    let mut q = vec![
        where_eq("active", true.into()),
        ("sort", sort_by("score", "desc")),
        ("limit", Value::from(10)),
    ];
    if let Some(c) = cursor {
        q.push(("cursor", c.into()));
    }
    map(&q)
}

fn grid_groups() -> Value {
    map(&[
        ("groupBy", Value::Array(vec!["group".into()])),
        (
            "aggregations",
            Value::Array(vec![
                agg("count", None),
                agg("sum", Some("score")),
                agg("min", Some("score")),
                agg("max", Some("score")),
                agg("avg", Some("score")),
                agg("sum", Some("price")),
                agg("min", Some("price")),
                agg("max", Some("price")),
                agg("avg", Some("price")),
            ]),
        ),
    ])
}

/// One read of the battery: a QUERY_SUB and whether its rows have a defined order.
struct Ask {
    name: &'static str,
    query: Value,
    fields: Option<&'static [&'static str]>,
    ordered: bool,
}

fn battery() -> Vec<Ask> {
    vec![
        Ask {
            name: "all",
            query: map(&[]),
            fields: None,
            ordered: false,
        },
        Ask {
            name: "where",
            query: map(&[where_eq("group", "g3".into())]),
            fields: None,
            ordered: false,
        },
        // No limit: the whole group in rank order, the records without a rank last.
        Ask {
            name: "where-sorted",
            query: map(&[
                where_eq("group", "g5".into()),
                ("sort", sort_by("rank", "asc")),
            ]),
            fields: None,
            ordered: true,
        },
        Ask {
            name: "top-active",
            query: top_active(None),
            fields: None,
            ordered: true,
        },
        // Ties on `group`: broken the same way everywhere.
        Ask {
            name: "ties",
            query: map(&[
                ("sort", sort_by("group", "desc")),
                ("limit", Value::from(10)),
            ]),
            fields: None,
            ordered: true,
        },
        Ask {
            name: "projected",
            query: map(&[where_eq("group", "g1".into())]),
            fields: Some(&["n", "group"]),
            ordered: false,
        },
        Ask {
            name: "groups",
            query: grid_groups(),
            fields: None,
            ordered: false,
        },
        Ask {
            name: "groups-2col-top",
            query: map(&[
                (
                    "groupBy",
                    Value::Array(vec!["group".into(), "active".into()]),
                ),
                (
                    "aggregations",
                    Value::Array(vec![agg("count", None), agg("sum", Some("score"))]),
                ),
                ("sort", sort_by("__count", "desc")),
                ("limit", Value::from(4)),
            ]),
            fields: None,
            ordered: true,
        },
    ]
}

/// QUERY_SUB and its QUERY_RESP payload, normalized: map keys sorted, rows sorted by key when
/// the query gives them no order.
async fn ask(
    c: &mut Client,
    qid: &str,
    query: Value,
    fields: Option<&[&str]>,
    ordered: bool,
) -> Value {
    let frame = match fields {
        Some(f) => query_sub_fields(qid, "grid", query, f),
        None => query_sub(qid, "grid", query),
    };
    c.send(&frame).await;
    let resp = c.recv_query_resp(qid).await;
    let p = canon(payload(&resp));
    if ordered {
        p
    } else {
        with_sorted(&p, "results")
    }
}

/// Every answer of the battery from one node, by name; plus the second page of `top-active`
/// through that node's own `nextCursor`.
async fn answers(m: &Member) -> BTreeMap<String, Value> {
    let mut c = connect(m).await;
    let mut out = BTreeMap::new();
    for a in battery() {
        let v = ask(&mut c, a.name, a.query, a.fields, a.ordered).await;
        out.insert(a.name.to_owned(), v);
    }
    let cursor = get(&out["top-active"], "nextCursor")
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("{}: top-active without nextCursor", m.id))
        .to_owned();
    let page2 = ask(
        &mut c,
        "top-active-2",
        top_active(Some(&cursor)),
        None,
        true,
    )
    .await;
    out.insert("top-active-2".to_owned(), page2);
    out
}

/// `POST /sync` with the battery's queries (without `fields`, which it does not take): each
/// `queryResults` entry, normalized, by query id.
fn http_answers(m: &Member) -> BTreeMap<String, Value> {
    let asks: Vec<Ask> = battery()
        .into_iter()
        .filter(|a| a.fields.is_none())
        .collect();
    let queries = asks
        .iter()
        .map(|a| {
            map(&[
                ("queryId", a.name.into()),
                ("mapName", "grid".into()),
                ("query", a.query.clone()),
            ])
        })
        .collect();
    let body = map(&[
        ("clientId", "http-client".into()),
        ("clientHlc", Ts::new(now_millis(), 0, "http").wire()),
        ("queries", Value::Array(queries)),
    ]);
    let (status, resp) = http_bytes(
        m.node.http_addr(),
        "POST",
        "/sync",
        &[("Content-Type", "application/msgpack")],
        &encode(&body),
    )
    .expect("POST /sync");
    assert_eq!(status, 200, "{}: POST /sync", m.id);
    let resp = rmpv::decode::read_value(&mut &resp[..]).expect("MessagePack body");
    assert_eq!(get(&resp, "errors"), None, "{}: POST /sync {resp:?}", m.id);
    let results = get(&resp, "queryResults")
        .and_then(Value::as_array)
        .unwrap_or_else(|| panic!("{}: POST /sync without queryResults: {resp:?}", m.id));
    assert_eq!(results.len(), asks.len(), "{}: POST /sync results", m.id);
    asks.iter()
        .zip(results)
        .map(|(a, r)| {
            assert_eq!(pstr_flat(r, "queryId"), Some(a.name), "{}: order", m.id);
            let r = canon(r);
            let r = if a.ordered {
                r
            } else {
                with_sorted(&r, "results")
            };
            (a.name.to_owned(), r)
        })
        .collect()
}

fn pstr_flat<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    get(v, key).and_then(Value::as_str)
}

/// The LWW Merkle root, the top-level buckets and one leaf (records sorted by key), and the
/// OR-Map walk, from one node.
async fn sync_view(
    m: &Member,
) -> (
    u32,
    Value,
    Value,
    BTreeMap<String, (Vec<String>, Vec<String>)>,
) {
    let mut c = connect(m).await;
    let root = c.sync_root("grid").await;
    let top = canon(payload(&c.merkle("grid", "").await));
    let leaf_path = &route(&grid_key(0))[..3];
    let leaf = canon(payload(&c.merkle("grid", leaf_path).await));
    let leaf = Value::Map(
        leaf.as_map()
            .expect("leaf payload")
            .iter()
            .map(|(k, v)| {
                if k.as_str() == Some("records") {
                    let mut rs = v.as_array().cloned().unwrap_or_default();
                    rs.sort_by_key(|r| get(r, "key").and_then(Value::as_str).map(str::to_owned));
                    (k.clone(), Value::Array(rs))
                } else {
                    (k.clone(), v.clone())
                }
            })
            .collect(),
    );
    let or = or_walk(&mut c).await;
    (root, top, leaf, or)
}

fn rows_of(answer: &Value) -> Vec<Value> {
    get(answer, "results")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

fn keys_of(answer: &Value) -> Vec<String> {
    rows_of(answer)
        .iter()
        .filter_map(|r| get(r, "key").and_then(Value::as_str).map(str::to_owned))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_answer_every_read_as_one_node_would() {
    let t0 = Instant::now();
    let nodes = cluster::<5>(&PARTITIONED);
    let all: Vec<&Member> = nodes.iter().collect();
    let solo = solo();
    let want = write_grid(&all, "grid").await;
    write_grid(&[&solo], "grid").await;

    // Placement: every record twice in all (owner and backup), about K(1+b)/N = 240 per node.
    let each = wait_held_sum(&all, "grid", (K * (1 + BACKUPS)) as f64);
    let share = (K * (1 + BACKUPS)) as f64 / all.len() as f64;
    eprintln!("records held per node: {each:?} (K(1+b)/N = {share})");
    for (m, n) in all.iter().zip(&each) {
        assert!(
            (share * 0.75..=share * 1.25).contains(n),
            "{} holds {n} of {K} records (expected about {share})",
            m.id
        );
    }
    wait_held_sum(&[&solo], "grid", K as f64);

    // The reference answers, checked for substance so that equality means something.
    let reference = answers(&solo).await;
    for (name, a) in &reference {
        assert_eq!(get(a, "error"), None, "solo: {name}: {a}");
    }
    let all_rows: BTreeMap<String, Value> = rows_of(&reference["all"])
        .iter()
        .map(|r| {
            (
                get(r, "key").and_then(Value::as_str).unwrap().to_owned(),
                get(r, "value").cloned().unwrap(),
            )
        })
        .collect();
    let want: BTreeMap<String, Value> = want.iter().map(|(k, v)| (k.clone(), canon(v))).collect();
    assert_eq!(diff(&want, &all_rows), None, "solo: the full snapshot");
    assert_eq!(all_rows.len(), K);
    let in_group = |g: usize| (0..K).filter(|i| i % GROUPS == g).count();
    assert_eq!(rows_of(&reference["where"]).len(), in_group(3));
    assert_eq!(rows_of(&reference["where-sorted"]).len(), in_group(5));
    assert_eq!(rows_of(&reference["projected"]).len(), in_group(1));
    let mut active: Vec<usize> = (0..K).filter(|i| i % 3 != 0).collect();
    active.sort_by_key(|&i| std::cmp::Reverse(score(i)));
    let top: Vec<String> = active[..10].iter().map(|&i| grid_key(i)).collect();
    let next: Vec<String> = active[10..20].iter().map(|&i| grid_key(i)).collect();
    assert_eq!(keys_of(&reference["top-active"]), top);
    assert_eq!(keys_of(&reference["top-active-2"]), next);
    for page in ["top-active", "top-active-2", "ties", "groups-2col-top"] {
        assert_eq!(
            get(&reference[page], "hasMore"),
            Some(&Value::from(true)),
            "solo: {page}"
        );
    }
    let groups = rows_of(&reference["groups"]);
    assert_eq!(groups.len(), GROUPS);
    for row in &groups {
        let value = get(row, "value").expect("group row value");
        assert_eq!(
            value.as_map().map(Vec::len),
            Some(11),
            "__key, __count, eight aggregations and the column: {value}"
        );
        assert!(get(value, "__avg_price").is_some_and(|v| v.as_f64().is_some()));
    }
    for row in rows_of(&reference["projected"]) {
        let value = get(&row, "value").expect("projected row value");
        let names: Vec<&str> = value
            .as_map()
            .expect("a map")
            .iter()
            .filter_map(|(k, _)| k.as_str())
            .collect();
        assert_eq!(names, ["group", "n"], "projected to `fields`: {value}");
    }
    assert_eq!(rows_of(&reference["groups-2col-top"]).len(), 4);
    let http_reference = http_answers(&solo);
    assert_eq!(
        rows_of(&http_reference["all"]).len(),
        K,
        "solo: POST /sync all"
    );
    let (root, top_buckets, leaf, or) = sync_view(&solo).await;
    assert_ne!(root, 0);
    assert!(
        get(&leaf, "records")
            .and_then(Value::as_array)
            .is_some_and(|r| !r.is_empty()),
        "solo: the leaf of {} is empty: {leaf}",
        grid_key(0)
    );
    assert_eq!(or.len(), 60, "solo: OR-Map keys");

    // Every node of the five answers exactly that.
    for m in &all {
        let got = answers(m).await;
        for (name, r) in &reference {
            assert_same(&m.id, &format!("QUERY_RESP {name}"), r, &got[name]);
        }
        let http = http_answers(m);
        for (name, r) in &http_reference {
            assert_same(&m.id, &format!("POST /sync {name}"), r, &http[name]);
        }
        let (m_root, m_top, m_leaf, m_or) = sync_view(m).await;
        assert_eq!(m_root, root, "{}: SYNC_RESP_ROOT rootHash", m.id);
        assert_same(&m.id, "SYNC_RESP_BUCKETS at the root", &top_buckets, &m_top);
        assert_same(&m.id, "SYNC_RESP_LEAF", &leaf, &m_leaf);
        assert_eq!(m_or, or, "{}: OR-Map walk", m.id);
    }
    for m in &all {
        let s = m.node.scrape();
        assert_eq!(
            s.value_or_zero("topgun_cluster_gathers_total", &[("outcome", "failed")]),
            0.0,
            "{}: failed gathers",
            m.id
        );
        assert!(
            s.value_or_zero("topgun_cluster_gathers_total", &[("outcome", "ok")]) > 0.0,
            "{}: no gathered read counted",
            m.id
        );
    }
    eprintln!("five nodes compared in {:?}", t0.elapsed());
}

// ---- 2: live queries through a join --------------------------------------------------------

const JOIN_MAP: &str = "joined-live";

/// QUERY_UPDATEs heard per key.
type Heard = Arc<Mutex<BTreeMap<String, usize>>>;

/// A subscribing writer's task: what it wrote, and its connection back.
type Writing = (
    String,
    Heard,
    tokio::task::JoinHandle<(LiveWritten, Client)>,
);

fn note(v: &Value, query_id: &str, heard: &Heard) {
    if msg_type(v) == "QUERY_UPDATE" && pstr(v, "queryId") == Some(query_id) {
        let key = pstr(v, "key").unwrap_or_default().to_owned();
        *heard.lock().unwrap().entry(key).or_insert(0) += 1;
    }
}

/// Notes QUERY_UPDATEs of `query_id` until `stop` (or the connection ends: then why).
async fn listen(
    mut c: Client,
    query_id: &'static str,
    heard: Heard,
    stop: Arc<AtomicBool>,
) -> String {
    while !stop.load(Ordering::SeqCst) {
        let t = Instant::now();
        match c.recv_within(Duration::from_millis(200)).await {
            Some(v) => note(&v, query_id, &heard),
            // A timeout takes the whole 200 ms; an ended stream answers at once.
            None if t.elapsed() < Duration::from_millis(150) => {
                return format!("connection ended ({:?})", c.closed)
            }
            None => {}
        }
    }
    "stopped".into()
}

/// What one subscribing writer did.
#[derive(Default)]
struct LiveWritten {
    acked: BTreeMap<String, Value>,
    /// When each key's batch was sent and when it was acknowledged.
    sent_at: BTreeMap<String, Instant>,
    acked_at: BTreeMap<String, Instant>,
    /// Every key it sent, acknowledged or not.
    written: BTreeSet<String>,
    refused: usize,
    ended: String,
}

/// Writes batches of `BATCH` PUTs (`label-00000`, ...) through `c`, which also has the live
/// query `own` on the map, until `stop`, out of time or out of ops; every QUERY_UPDATE of `own`
/// that arrives meanwhile is noted in `heard`. Gives the connection back for more listening.
async fn write_subscribed(
    label: String,
    mut c: Client,
    heard: Heard,
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicUsize>,
    max_ops: usize,
    deadline: Instant,
) -> (LiveWritten, Client) {
    let mut w = LiveWritten::default();
    let mut n = 0usize;
    w.ended = 'writing: loop {
        if stop.load(Ordering::SeqCst) {
            break "stopped".into();
        }
        if Instant::now() >= deadline {
            break "time budget used".into();
        }
        if sent.fetch_add(BATCH, Ordering::SeqCst) + BATCH > max_ops {
            break "op budget used".into();
        }
        let (ops, batch, last_id) = next_batch(&label, JOIN_MAP, &mut n);
        let at = Instant::now();
        for (k, _) in &batch {
            w.written.insert(k.clone());
            w.sent_at.insert(k.clone(), at);
        }
        let frame = Message::Binary(encode(&op_batch(ops)).into());
        if let Err(e) = c.ws.send(frame).await {
            break format!("send failed: {e}");
        }
        let ack_by = tokio::time::Instant::now() + ACK_WAIT;
        loop {
            let left = ack_by.saturating_duration_since(tokio::time::Instant::now());
            let Some(v) = c.recv_within(left).await else {
                break 'writing format!("no OP_ACK within {ACK_WAIT:?} (closed: {:?})", c.closed);
            };
            note(&v, "own", &heard);
            match msg_type(&v) {
                "OP_ACK" if pstr(&v, "lastId") == Some(last_id.as_str()) => {
                    let now = Instant::now();
                    for (k, v) in batch {
                        w.acked_at.insert(k.clone(), now);
                        w.acked.insert(k, v);
                    }
                    break;
                }
                "ERROR" => {
                    w.refused += 1;
                    break;
                }
                _ => {}
            }
        }
    };
    (w, c)
}

/// Async `wait_for`: polls `probe` every 50 ms until `Ok`, panics with the last `Err` after
/// `within`.
async fn until<T>(what: &str, within: Duration, mut probe: impl FnMut() -> Result<T, String>) -> T {
    let t0 = Instant::now();
    loop {
        match probe() {
            Ok(v) => return v,
            Err(seen) if t0.elapsed() >= within => {
                panic!("{what}: not within {within:?}; last seen: {seen}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Reads `c` until every key of `keys` was heard on `query_id` (bounded).
async fn hear_all(who: &str, c: &mut Client, query_id: &str, heard: &Heard, keys: &[String]) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let missing: Vec<&String> = {
            let h = heard.lock().unwrap();
            keys.iter().filter(|k| !h.contains_key(*k)).collect()
        };
        if missing.is_empty() {
            return;
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let Some(v) = c.recv_within(left).await else {
            panic!(
                "{who}: never heard {} probes, e.g. {:?}",
                missing.len(),
                &missing[..missing.len().min(3)]
            );
        };
        note(&v, query_id, heard);
    }
}

/// Every key of `want` heard exactly once and no key heard more than once; `None` when so.
fn exactly_once(heard: &BTreeMap<String, usize>, want: &BTreeSet<String>) -> Option<String> {
    let missed: Vec<&String> = want.iter().filter(|k| !heard.contains_key(*k)).collect();
    let doubled: Vec<(&String, &usize)> = heard.iter().filter(|(_, n)| **n > 1).collect();
    if missed.is_empty() && doubled.is_empty() {
        return None;
    }
    Some(format!(
        "{} of {} keys never heard (e.g. {:?}), {} heard more than once (e.g. {:?})",
        missed.len(),
        want.len(),
        &missed[..missed.len().min(5)],
        doubled.len(),
        &doubled[..doubled.len().min(5)]
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_queries_on_any_node_get_every_change_once_through_a_join() {
    let [a, b, c] = cluster::<3>(&PARTITIONED);

    // A subscriber on each node, and a writer on a and on b that subscribes too.
    let mut subs: Vec<(String, Client, Heard)> = Vec::new();
    for m in [&a, &b, &c] {
        let mut s = connect(m).await;
        let resp = s.subscribe("watch", JOIN_MAP, map(&[])).await;
        assert_eq!(pstr(&resp, "error"), None, "{}: {resp:?}", m.id);
        subs.push((format!("subscriber on {}", m.id), s, Heard::default()));
    }
    let mut writers: Vec<(String, Client, Heard)> = Vec::new();
    for (label, m) in [("wa", &a), ("wb", &b)] {
        let mut w = connect(m).await;
        let resp = w.subscribe("own", JOIN_MAP, map(&[])).await;
        assert_eq!(pstr(&resp, "error"), None, "{}: {resp:?}", m.id);
        writers.push((label.to_owned(), w, Heard::default()));
    }
    // Live everywhere once probes written through c (30 keys: partitions of every holder
    // pair) reached every listener.
    let probes: Vec<String> = (0..30).map(|i| format!("probe-{i:02}")).collect();
    let mut pc = connect(&c).await;
    let ops = probes
        .iter()
        .enumerate()
        .map(|(i, k)| {
            put(
                &format!("probe-op-{i}"),
                JOIN_MAP,
                k,
                &Value::from(i as i64),
                i as u32,
            )
        })
        .collect();
    write_acked(&mut pc, "node-c", &op_batch(ops), "probe-op-29").await;
    for (who, cl, heard) in &mut subs {
        hear_all(who, cl, "watch", heard, &probes).await;
    }
    for (who, cl, heard) in &mut writers {
        hear_all(who, cl, "own", heard, &probes).await;
    }

    let stop_writing = Arc::new(AtomicBool::new(false));
    let stop_listening = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let budget = Instant::now() + Duration::from_secs(40);
    let listeners: Vec<(String, Heard, tokio::task::JoinHandle<String>)> = subs
        .into_iter()
        .map(|(who, cl, heard)| {
            let task = tokio::spawn(listen(cl, "watch", heard.clone(), stop_listening.clone()));
            (who, heard, task)
        })
        .collect();
    let writing: Vec<Writing> = writers
        .into_iter()
        .map(|(label, cl, heard)| {
            let task = tokio::spawn(write_subscribed(
                label.clone(),
                cl,
                heard.clone(),
                stop_writing.clone(),
                sent.clone(),
                6_000,
                budget,
            ));
            (label, heard, task)
        })
        .collect();

    // The join, under the writes.
    until("writes under way", Duration::from_secs(10), || {
        let n = sent.load(Ordering::SeqCst);
        if n >= 1_000 {
            Ok(())
        } else {
            Err(format!("{n} sent"))
        }
    })
    .await;
    let table_before = holders(&a).await;
    let join_started = Instant::now();
    let join_started_ms = now_millis();
    let d = tokio::task::block_in_place(|| start("node-d", Some(a.cluster_port), 0, &PARTITIONED));
    let took =
        tokio::task::block_in_place(|| wait_settled(&[&a, &b, &c, &d], Duration::from_secs(15)));
    let settled = Instant::now();
    eprintln!(
        "node-d ready {:?} after its start, 4 nodes settled {took:?} later",
        settled - join_started - took
    );
    let table_after = holders(&a).await;
    // A subscriber on the node that joined, from now on.
    let mut sd = connect(&d).await;
    let resp = sd.subscribe("watch", JOIN_MAP, map(&[])).await;
    assert_eq!(pstr(&resp, "error"), None, "node-d: {resp:?}");
    let d_subscribed = Instant::now();
    let heard_d = Heard::default();
    let listen_d = tokio::spawn(listen(sd, "watch", heard_d.clone(), stop_listening.clone()));
    // Writes after the join: 400 more ops or 3 s.
    let after = sent.load(Ordering::SeqCst);
    let t = Instant::now();
    while sent.load(Ordering::SeqCst) < after + 400 && t.elapsed() < Duration::from_secs(3) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop_writing.store(true, Ordering::SeqCst);

    let mut written: Vec<(String, LiveWritten, Heard, tokio::task::JoinHandle<String>)> =
        Vec::new();
    for (label, heard, task) in writing {
        let (w, cl) = task.await.expect("writer task");
        eprintln!(
            "writer {label}: {} keys acked, {} batches refused, ended: {}",
            w.acked.len(),
            w.refused,
            w.ended
        );
        let listening = tokio::spawn(listen(cl, "own", heard.clone(), stop_listening.clone()));
        written.push((label, w, heard, listening));
    }
    let acked: BTreeMap<String, Value> = written
        .iter()
        .flat_map(|(_, w, _, _)| w.acked.clone())
        .collect();
    let acked_keys: BTreeSet<String> = acked.keys().cloned().collect();
    let acked_at: BTreeMap<&String, Instant> = written
        .iter()
        .flat_map(|(_, w, _, _)| w.acked_at.iter().map(|(k, t)| (k, *t)))
        .collect();
    let before = acked_at.values().filter(|t| **t < join_started).count();
    let during = acked_at
        .values()
        .filter(|t| **t >= join_started && **t < settled)
        .count();
    let later = acked_at.values().filter(|t| **t >= settled).count();
    eprintln!(
        "acknowledged: {before} before the join, {during} while node-d joined, {later} after"
    );
    assert!(
        before > 0 && later > 0,
        "the writes did not span the join: {before} / {during} / {later}"
    );
    // What the subscriber on d must have: every write sent after its QUERY_RESP.
    let for_d: BTreeSet<String> = written
        .iter()
        .flat_map(|(_, w, _, _)| {
            w.sent_at
                .iter()
                .filter(|(k, t)| **t > d_subscribed && w.acked.contains_key(*k))
                .map(|(k, _)| k.clone())
        })
        .collect();
    assert!(
        !for_d.is_empty(),
        "no write acknowledged after the subscription on node-d"
    );

    // Every listener hears every acknowledged write (the writers: the other's).
    let mut expect: Vec<(String, Heard, BTreeSet<String>)> = listeners
        .iter()
        .map(|(who, heard, _)| (who.clone(), heard.clone(), acked_keys.clone()))
        .collect();
    expect.push((
        "subscriber on node-d".into(),
        heard_d.clone(),
        for_d.clone(),
    ));
    for (label, _, heard, _) in &written {
        let others: BTreeSet<String> = written
            .iter()
            .filter(|(l, _, _, _)| l != label)
            .flat_map(|(_, w, _, _)| w.acked.keys().cloned())
            .collect();
        expect.push((format!("writer {label}"), heard.clone(), others));
    }
    let t0 = Instant::now();
    loop {
        let behind: Vec<(String, Vec<String>)> = expect
            .iter()
            .filter_map(|(who, heard, want)| {
                let h = heard.lock().unwrap();
                let missing: Vec<String> = want
                    .iter()
                    .filter(|k| !h.contains_key(*k))
                    .cloned()
                    .collect();
                (!missing.is_empty()).then(|| (who.clone(), missing))
            })
            .collect();
        if behind.is_empty() {
            break;
        }
        if t0.elapsed() < Duration::from_secs(15) {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        // What is known of each missed write, for the report.
        let sent_at: BTreeMap<&String, Instant> = written
            .iter()
            .flat_map(|(_, w, _, _)| w.sent_at.iter().map(|(k, t)| (k, *t)))
            .collect();
        let ms = |t: Option<&Instant>| {
            t.map(|t| t.saturating_duration_since(join_started).as_millis() as i64)
        };
        let mut report = String::new();
        for (who, missing) in &behind {
            report.push_str(&format!(
                "\n{who}: {} of the acknowledged writes never arrived:",
                missing.len()
            ));
            for k in missing.iter().take(5) {
                let p = fnv1a(k) as usize % PARTITIONS;
                report.push_str(&format!(
                    "\n  {k}: partition {p}, holders {:?} before the join, {:?} after; \
                     sent {:?} ms and acknowledged {:?} ms after node-d started",
                    table_before[p],
                    table_after[p],
                    ms(sent_at.get(k)),
                    ms(acked_at.get(k)),
                ));
            }
        }
        report.push_str(&format!(
            "\nnode-d started at {join_started_ms}, settled {} ms later; cluster log lines since:",
            (settled - join_started).as_millis()
        ));
        for m in [&a, &b, &c, &d] {
            for l in log_lines(m) {
                let msg = l["msg"].as_str().unwrap_or_default();
                let when = l["time"].as_u64().unwrap_or(0);
                let wanted = [
                    "partitions rebalanced",
                    "migration started",
                    "migration finished",
                    "partitions handed over",
                    "catch-up started",
                    "catch-up finished",
                    "member joined",
                    "member suspected",
                    "member down",
                    "cluster rejoined as a new generation",
                    "peer link lost; redialling",
                ];
                if when >= join_started_ms && wanted.contains(&msg) {
                    report.push_str(&format!("\n  {} +{} ms {l}", m.id, when - join_started_ms));
                }
            }
        }
        panic!("not every listener heard every acknowledged write within 15 s:{report}");
    }
    // Late copies would show up now.
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop_listening.store(true, Ordering::SeqCst);
    for (who, _, task) in listeners {
        let ended = task.await.expect("listener");
        assert_eq!(ended, "stopped", "{who}");
    }
    assert_eq!(listen_d.await.expect("listener on d"), "stopped");
    for (label, _, _, task) in written {
        assert_eq!(
            task.await.expect("writer listener"),
            "stopped",
            "writer {label}"
        );
    }
    for (who, heard, want) in &expect {
        let h = heard.lock().unwrap();
        if let Some(d) = exactly_once(&h, want) {
            panic!("{who}: {d}");
        }
    }
    // No echo: a writer that subscribes hears none of its own writes.
    for (who, heard, want) in expect.iter().filter(|(w, _, _)| w.starts_with("writer ")) {
        let label = who.trim_start_matches("writer ");
        let own: Vec<String> = heard
            .lock()
            .unwrap()
            .keys()
            .filter(|k| k.starts_with(&format!("{label}-")))
            .cloned()
            .collect();
        assert!(
            own.is_empty(),
            "{who} heard {} of its own writes back (e.g. {:?}); it should hear only the {} others'",
            own.len(),
            &own[..own.len().min(5)],
            want.len()
        );
    }

    // The table moved: node-d pulled partitions and owns some.
    let s = d.node.scrape();
    assert!(
        s.value_or_zero("topgun_migration_records_total", &[]) > 0.0,
        "node-d pulled nothing"
    );
    assert!(s.value_or_zero("topgun_partitions_owned", &[]) > 0.0);
    // Every acknowledged write reads back from every node, the new one included.
    for m in [&a, &b, &c, &d] {
        let found = read_map(m, JOIN_MAP).await;
        assert_eq!(
            diff(&acked, &found),
            None,
            "{}: writes through the join",
            m.id
        );
    }
}

// ---- 3: a live limit window and live groups on a node that holds none of the keys ----------

const BOARD: &str = "board";

fn board_row(score: i64, active: bool, group: &str) -> Value {
    map(&[
        ("score", Value::from(score)),
        ("active", Value::from(active)),
        ("group", Value::from(group)),
    ])
}

/// The top 5 active rows by score.
fn window_query() -> Value {
    map(&[
        where_eq("active", true.into()),
        ("sort", sort_by("score", "desc")),
        ("limit", Value::from(5)),
    ])
}

fn board_groups() -> Value {
    map(&[
        where_eq("active", true.into()),
        ("groupBy", Value::Array(vec!["group".into()])),
        (
            "aggregations",
            Value::Array(vec![
                agg("count", None),
                agg("sum", Some("score")),
                agg("min", Some("score")),
                agg("max", Some("score")),
                agg("avg", Some("score")),
            ]),
        ),
    ])
}

/// What a client holds of its two live queries, from QUERY_RESP and QUERY_UPDATEs.
#[derive(Default)]
struct Held {
    window: BTreeMap<String, Value>,
    groups: BTreeMap<String, Value>,
    /// Updates that do not fit what the client holds (ENTER of a held key, UPDATE or LEAVE of
    /// one it does not hold).
    odd: Vec<String>,
    log: Vec<String>,
}

impl Held {
    fn seed(&mut self, query_id: &str, resp: &Value) {
        let rows: BTreeMap<String, Value> = results(resp).into_iter().collect();
        match query_id {
            "top5" => self.window = rows,
            _ => self.groups = rows,
        }
    }

    /// Applies a QUERY_UPDATE; false for anything else.
    fn apply(&mut self, v: &Value) -> bool {
        if msg_type(v) != "QUERY_UPDATE" {
            return false;
        }
        let qid = pstr(v, "queryId").unwrap_or_default().to_owned();
        let key = pstr(v, "key").unwrap_or_default().to_owned();
        let change = pstr(v, "changeType").unwrap_or_default().to_owned();
        let value = get(payload(v), "value").cloned().unwrap_or(Value::Nil);
        let model = match qid.as_str() {
            "top5" => &mut self.window,
            "groups" => &mut self.groups,
            _ => return false,
        };
        let had = model.contains_key(&key);
        match (change.as_str(), had) {
            ("ENTER", false) | ("UPDATE", true) => {
                model.insert(key.clone(), value);
            }
            ("LEAVE", true) => {
                model.remove(&key);
            }
            _ => {
                self.odd.push(format!("{qid} {change} {key} (held: {had})"));
                if change == "LEAVE" {
                    model.remove(&key);
                } else {
                    model.insert(key.clone(), value);
                }
            }
        }
        self.log.push(format!("{qid} {change} {key}"));
        true
    }
}

/// A subscriber connection and what it holds.
struct Watcher {
    who: &'static str,
    c: Client,
    held: Held,
}

impl Watcher {
    async fn new(who: &'static str, m: &Member) -> Watcher {
        let mut c = connect(m).await;
        let mut held = Held::default();
        for (qid, q) in [("top5", window_query()), ("groups", board_groups())] {
            let resp = c.subscribe(qid, BOARD, q).await;
            assert_eq!(pstr(&resp, "error"), None, "{who}: {resp:?}");
            held.seed(qid, &resp);
        }
        Watcher { who, c, held }
    }

    /// Applies whatever arrives within `wait`; whether anything did.
    async fn pump(&mut self, wait: Duration) -> bool {
        let mut any = false;
        while let Some(v) = self.c.recv_within(wait).await {
            any |= self.held.apply(&v);
        }
        any
    }
}

/// Reads both watchers until they hold the same window and group rows and nothing arrived for
/// 300 ms; panics after 5 s with both models and their last updates.
async fn settle(step: &str, grid: &mut Watcher, one: &mut Watcher) {
    let t0 = Instant::now();
    let mut quiet_since = Instant::now();
    loop {
        let a = grid.pump(Duration::from_millis(20)).await;
        let b = one.pump(Duration::from_millis(20)).await;
        if a || b {
            quiet_since = Instant::now();
        }
        let same = grid.held.window == one.held.window && grid.held.groups == one.held.groups;
        if same && quiet_since.elapsed() >= Duration::from_millis(300) {
            return;
        }
        if t0.elapsed() > Duration::from_secs(5) {
            panic!(
                "after {step}: what the client holds differs within 5 s\n\
                 {}: window {:?}\n  groups {:?}\n  last updates {:?}\n\
                 {}: window {:?}\n  groups {:?}\n  last updates {:?}",
                grid.who,
                grid.held.window,
                grid.held.groups,
                &grid.held.log[grid.held.log.len().saturating_sub(8)..],
                one.who,
                one.held.window,
                one.held.groups,
                &one.held.log[one.held.log.len().saturating_sub(8)..],
            );
        }
    }
}

/// Per partition, its holders (owner first) in `m`'s PARTITION_MAP.
async fn holders(m: &Member) -> Vec<Vec<String>> {
    let reply = request_partition_map(m).await;
    let mut out = vec![Vec::new(); PARTITIONS];
    for p in get(payload(&reply), "partitions")
        .and_then(Value::as_array)
        .expect("partitions")
    {
        let id = as_u64(get(p, "partitionId").expect("partitionId")) as usize;
        let owner = get(p, "ownerNodeId").and_then(Value::as_str).unwrap_or("?");
        out[id].push(owner.to_owned());
        for b in get(p, "backupNodeIds")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
        {
            out[id].push(b.as_str().unwrap_or("?").to_owned());
        }
    }
    out
}

/// The partitions `node` owns or backs up, from `m`'s PARTITION_MAP.
async fn partitions_of(m: &Member, node: &str) -> BTreeSet<usize> {
    holders(m)
        .await
        .iter()
        .enumerate()
        .filter(|(_, h)| h.iter().any(|n| n == node))
        .map(|(p, _)| p)
        .collect()
}

enum Step {
    Put(&'static str, i64, bool, &'static str),
    Remove(&'static str),
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_limit_window_and_live_groups_on_a_non_holder_match_one_node() {
    let [a, b, c] = cluster::<3>(&PARTITIONED);
    let solo = solo();

    // Every key of the test lives in a partition node-a neither owns nor backs up.
    let kept_by_a = partitions_of(&a, "node-a").await;
    assert!(!kept_by_a.is_empty() && kept_by_a.len() < PARTITIONS);
    let key_of = |name: &str| -> String {
        (0..)
            .map(|j| format!("{name}-{j}"))
            .find(|k| !kept_by_a.contains(&((fnv1a(k) as usize) % PARTITIONS)))
            .expect("a key outside node-a's partitions")
    };

    let mut via_b = connect(&b).await;
    let mut via_c = connect(&c).await;
    let mut to_solo = connect(&solo).await;
    // Op ids op-1, op-2, ...: each op goes to the cluster (through b or c) and, the same op with
    // the same timestamp, to the single node.
    let mut seq = 0u64;
    let mut next_id = move || {
        seq += 1;
        format!("op-{seq}")
    };

    // Twelve active rows, scores 100, 95, ..., 45, groups g0..g2.
    for i in 0..12i64 {
        let id = next_id();
        let op = put_op(
            &id,
            BOARD,
            &key_of(&format!("K{i}")),
            board_row(100 - 5 * i, true, &format!("g{}", i % 3)),
            &Ts::new(BASE + i as u64, 0, "writer"),
        );
        let (cl, who) = if i % 2 == 0 {
            (&mut via_b, "node-b")
        } else {
            (&mut via_c, "node-c")
        };
        write_acked(cl, who, &op_batch(vec![op.clone()]), &id).await;
        write_acked(&mut to_solo, "solo", &op_batch(vec![op]), &id).await;
    }

    let mut grid = Watcher::new("subscriber on node-a", &a).await;
    let mut one = Watcher::new("subscriber on the single node", &solo).await;
    assert_eq!(grid.held.window, one.held.window, "the window's QUERY_RESP");
    assert_eq!(grid.held.groups, one.held.groups, "the groups' QUERY_RESP");
    let names = |held: &Held| -> BTreeSet<String> {
        held.window
            .keys()
            .map(|k| k.rsplit_once('-').map_or(k.clone(), |(n, _)| n.to_owned()))
            .collect()
    };
    let set =
        |names: &[&str]| -> BTreeSet<String> { names.iter().map(|s| s.to_string()).collect() };
    assert_eq!(names(&one.held), set(&["K0", "K1", "K2", "K3", "K4"]));
    assert_eq!(one.held.groups.len(), 3);

    // Each step, and the window the reference semantics give after it (refills only from rows
    // the window has seen since the subscription; the snapshot gave only the top 5).
    use Step::*;
    let steps: Vec<(&str, Step, &[&str])> = vec![
        (
            "a new top row pushes K4 out",
            Put("N1", 120, true, "g0"),
            &["N1", "K0", "K1", "K2", "K3"],
        ),
        (
            "a row below the window is remembered",
            Put("N2", 52, true, "g1"),
            &["N1", "K0", "K1", "K2", "K3"],
        ),
        (
            "K1 stops matching: refilled by K4",
            Put("K1", 95, false, "g1"),
            &["N1", "K0", "K2", "K3", "K4"],
        ),
        (
            "an update inside the window",
            Put("K0", 98, true, "g0"),
            &["N1", "K0", "K2", "K3", "K4"],
        ),
        (
            "K2 sinks below N2: they swap",
            Put("K2", 10, true, "g2"),
            &["N1", "K0", "K3", "K4", "N2"],
        ),
        (
            "N1 removed: refilled by K2",
            Remove("N1"),
            &["K0", "K3", "K4", "N2", "K2"],
        ),
        (
            "K3 removed: nothing seen to refill",
            Remove("K3"),
            &["K0", "K4", "N2", "K2"],
        ),
        (
            "K7 written: enters the free slot",
            Put("K7", 65, true, "g1"),
            &["K0", "K4", "K7", "N2", "K2"],
        ),
        (
            "a new group below the window",
            Put("N3", 5, true, "g9"),
            &["K0", "K4", "K7", "N2", "K2"],
        ),
        (
            "K1 matches again: pushes K2 out",
            Put("K1", 99, true, "g1"),
            &["K1", "K0", "K4", "K7", "N2"],
        ),
        (
            "N3 removed: its group empties",
            Remove("N3"),
            &["K1", "K0", "K4", "K7", "N2"],
        ),
        (
            "K9 jumps to the top: pushes N2 out",
            Put("K9", 200, true, "g0"),
            &["K9", "K1", "K0", "K4", "K7"],
        ),
        (
            "K0 stops matching: refilled by N2",
            Put("K0", 98, false, "g0"),
            &["K9", "K1", "K4", "K7", "N2"],
        ),
    ];
    let mut groups_seen = BTreeSet::new();
    for (i, (what, step, want)) in steps.into_iter().enumerate() {
        let t = Ts::new(BASE + 1_000 + i as u64, 0, "writer");
        let id = next_id();
        let op = match step {
            Put(name, score, active, group) => put_op(
                &id,
                BOARD,
                &key_of(name),
                board_row(score, active, group),
                &t,
            ),
            Remove(name) => remove_op(&id, BOARD, &key_of(name), &t),
        };
        let (cl, who) = if i % 2 == 0 {
            (&mut via_b, "node-b")
        } else {
            (&mut via_c, "node-c")
        };
        write_acked(cl, who, &op_batch(vec![op.clone()]), &id).await;
        write_acked(&mut to_solo, "solo", &op_batch(vec![op]), &id).await;
        let step_name = format!("step {} ({what})", i + 1);
        settle(&step_name, &mut grid, &mut one).await;
        assert_eq!(names(&one.held), set(want), "single node, {step_name}");
        assert_eq!(grid.held.window, one.held.window, "{step_name}: window");
        assert_eq!(grid.held.groups, one.held.groups, "{step_name}: groups");
        groups_seen.extend(one.held.groups.keys().cloned());
    }
    assert!(
        groups_seen.contains("S2:g9"),
        "the group g9 never entered: {groups_seen:?}"
    );
    assert!(
        !one.held.groups.contains_key("S2:g9"),
        "the group g9 never left"
    );
    assert!(
        grid.held.odd.is_empty(),
        "{}: {:?}",
        grid.who,
        grid.held.odd
    );
    assert!(one.held.odd.is_empty(), "{}: {:?}", one.who, one.held.odd);

    // The live group rows are those a fresh query gives, on both.
    for (m, held) in [(&a, &grid.held), (&solo, &one.held)] {
        let mut cl = connect(m).await;
        let resp = cl.subscribe("fresh", BOARD, board_groups()).await;
        let fresh: BTreeMap<String, Value> = results(&resp).into_iter().collect();
        assert_eq!(held.groups, fresh, "{}: live groups vs a fresh query", m.id);
    }
    eprintln!(
        "updates: {} on node-a, {} on the single node",
        grid.held.log.len(),
        one.held.log.len()
    );
}

// ---- 4: pulls that outlive a join -------------------------------------------------------------

/// Records in partitions 0..200, written to node-a alone: they make the pulls between node-a
/// and node-b (begun with the two-node table, every partition) outlive the join of node-c.
const BULK: usize = 20_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_under_a_pull_announces_nothing_for_partitions_given_up() {
    let a = start("node-a", None, 0, &PARTITIONED);
    let mut to_a = connect(&a).await;
    let bulk: Vec<String> = (0..BULK)
        .map(|i| format!("bulk-{i}"))
        .filter(|k| (fnv1a(k) as usize % PARTITIONS) < 200)
        .collect();
    for (n, chunk) in bulk.chunks(500).enumerate() {
        let ops: Vec<Value> = chunk
            .iter()
            .enumerate()
            .map(|(i, k)| {
                let t = Ts::new(BASE, 0, "writer");
                put_op(&format!("b{n}-{i}"), "bulk", k, Value::from(i as i64), &t)
            })
            .collect();
        let last = format!("b{n}-{}", chunk.len() - 1);
        write_acked(&mut to_a, "node-a", &op_batch(ops), &last).await;
    }
    // node-b joins: the two pull from each other over the two-node table (each keeps all 271).
    let b = tokio::task::block_in_place(|| start("node-b", Some(a.cluster_port), 0, &PARTITIONED));
    // node-c joins while those pulls run.
    let seed = a.cluster_port;
    let joining = tokio::task::spawn_blocking(move || start("node-c", Some(seed), 0, &PARTITIONED));
    let t0 = Instant::now();
    let kept_by_a = loop {
        let kept = partitions_of(&a, "node-a").await;
        if kept.len() < PARTITIONS && partitions_of(&b, "node-a").await == kept {
            break kept;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "node-c not in the tables of node-a and node-b within 15 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    // node-a's pull from node-b (its first sync) asked every partition after node-b
    // connected to it: its catch-up from node-b has nothing left to pull, so node-a gets the
    // data once and merges nothing it may have given up meanwhile.
    let catch_up = wait_line(&a, "catch-up started", "from node-b", |l| {
        l["peer"] == "node-b"
    });
    assert_eq!(catch_up["coveredByPull"], PARTITIONS, "{catch_up}");
    assert_eq!(catch_up["partitions"], 0, "{catch_up}");

    // Records of partitions node-a no longer keeps, written through node-b and acknowledged
    // (node-b and node-c hold them), then a subscriber on node-a whose snapshot has them.
    let late: Vec<String> = (0..)
        .map(|j| format!("late-{j}"))
        .filter(|k| {
            let p = fnv1a(k) as usize % PARTITIONS;
            p >= 200 && !kept_by_a.contains(&p)
        })
        .take(20)
        .collect();
    let ops: Vec<Value> = late
        .iter()
        .enumerate()
        .map(|(i, k)| {
            let t = Ts::new(BASE + 1, 0, "writer");
            put_op(&format!("late-{i}"), "quiet", k, Value::from(i as i64), &t)
        })
        .collect();
    let mut to_b = connect(&b).await;
    write_acked(&mut to_b, "node-b", &op_batch(ops), "late-19").await;
    let mut sub = connect(&a).await;
    let resp = sub.subscribe("quiet", "quiet", map(&[])).await;
    assert_eq!(result_keys(&resp).len(), late.len(), "{resp:?}");

    // Nothing is written after the subscription: nothing may be announced, once the catch-up
    // from node-b is over.
    let (finished, _) = wait_for(
        "node-a's catch-up from node-b over",
        Duration::from_secs(30),
        || {
            lines_with(&a, "catch-up finished")
                .into_iter()
                .find(|l| l["peer"] == "node-b")
                .ok_or_else(|| "still running".to_owned())
        },
    );
    let heard: Vec<String> = sub
        .drain(Duration::from_secs(1))
        .await
        .iter()
        .filter(|v| msg_type(v) == "QUERY_UPDATE")
        .map(|v| {
            format!(
                "{} {}",
                pstr(v, "changeType").unwrap_or_default(),
                pstr(v, "key").unwrap_or_default()
            )
        })
        .collect();
    // node-a stores them now too, though it holds none of their partitions.
    let stored = held(&a, "quiet");
    assert!(
        heard.is_empty(),
        "nothing was written after the subscription, yet the subscriber on node-a heard {} \
         updates (e.g. {:?}) for keys of partitions node-a does not keep, merged by its \
         catch-up from node-b ({catch_up} ... {finished}); node-a stores {stored} records of \
         the map",
        heard.len(),
        &heard[..heard.len().min(3)]
    );
    drop(joining.await);
}

// ---- 5: the copies of the records written through a join ------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_record_written_through_a_join_ends_on_its_owner_and_its_backup_only() {
    let [a, b, c] = cluster::<3>(&PARTITIONED);
    let load = Load::start(&[&a, &b, &c], "copies", 4_000, Duration::from_secs(30));
    until("writes under way", Duration::from_secs(10), || {
        if load.sent() >= 1_000 {
            Ok(())
        } else {
            Err(format!("{} sent", load.sent()))
        }
    })
    .await;
    let d = tokio::task::block_in_place(|| start("node-d", Some(a.cluster_port), 0, &PARTITIONED));
    tokio::task::block_in_place(|| wait_settled(&[&a, &b, &c, &d], Duration::from_secs(15)));
    let after = load.sent();
    until("writes after the join", Duration::from_secs(10), || {
        if load.sent() >= after + 600 {
            Ok(())
        } else {
            Err(format!("{} sent", load.sent()))
        }
    })
    .await;
    let acked = load.finish().await;
    let all = [&a, &b, &c, &d];
    // Every record the grid has (a refused batch may have left some: a failed forward is
    // handed to the owner again, so they end with their copies too), as one node answers.
    let found = read_map(&a, "copies").await;
    assert_eq!(diff(&acked, &found), None, "node-a: acknowledged writes");
    // 1 + backup-count copies of each, and none elsewhere once the handovers are done.
    let each = tokio::task::block_in_place(|| {
        wait_held_sum(&all, "copies", (found.len() * (1 + BACKUPS)) as f64)
    });
    eprintln!("{} records, held per node {each:?}", found.len());
    // Each node answers the partitions it keeps from its own copy: a copy short of a record
    // shows here.
    for m in &all {
        let own = read_map(m, "copies").await;
        assert_eq!(diff(&acked, &own), None, "{}: acknowledged writes", m.id);
    }
}
