//! Guards live queries (protocol.md 6): a QUERY_SUB snapshot filtered by `where` or a predicate
//! tree, sorted (array and object forms), paged by `limit` + cursor and projected by `fields`,
//! then live ENTER/UPDATE/LEAVE as other clients write, with writer exclusion, `limit` window
//! push-out, QUERY_UNSUB, per-connection query ids and SERVER_EVENT fan-out. A query that
//! silently misses a change leaves a TopGun app's screen wrong until the next reload.
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::proto::*;
use common::*;
use rmpv::Value;

/// One stripe: live events of every key leave in write order, so a sentinel write's event
/// proves that everything written before it was delivered (or never will be).
fn node() -> Node {
    Node::start_with(NodeOptions::default().args(&["--event-queue-stripes", "1"]))
}

fn leaf(op: &str, attr: &str, value: Value) -> Value {
    map(&[
        ("op", op.into()),
        ("attribute", attr.into()),
        ("value", value),
    ])
}

fn node_of(op: &str, children: Vec<Value>) -> Value {
    map(&[("op", op.into()), ("children", Value::Array(children))])
}

fn predicate(p: Value) -> Value {
    map(&[("predicate", p)])
}

fn person(name: &str, age: Option<i64>, city: &str) -> Value {
    let mut m = vec![("name", Value::from(name)), ("city", Value::from(city))];
    if let Some(a) = age {
        m.push(("age", Value::from(a)));
    }
    map(&m)
}

fn people() -> Vec<(&'static str, Value)> {
    vec![
        ("p1", person("Alice Smith", Some(30), "Paris")),
        ("p2", person("Bob Jones", Some(25), "Berlin")),
        ("p3", person("Carol Smith", Some(41), "Paris")),
        ("p4", person("Dave Brown", Some(35), "Rome")),
        ("p5", person("Eve Adams", Some(19), "Berlin")),
        ("p6", person("Frank", None, "Paris")),
    ]
}

/// Writes `people()` through `c` in one OP_BATCH.
async fn seed(c: &mut Client) {
    let base = now_millis() - 10_000;
    let ops = people()
        .into_iter()
        .enumerate()
        .map(|(i, (k, v))| put_op(&i.to_string(), "people", k, v, &Ts::new(base, 0, "seed")))
        .collect();
    c.send_acked(&op_batch(ops)).await;
}

struct Writer {
    c: Client,
    n: u32,
}

impl Writer {
    async fn put(&mut self, key: &str, value: Value) {
        self.n += 1;
        let t = Ts::new(now_millis(), self.n, "writer");
        self.c
            .send_acked(&client_op(put_op(
                &self.n.to_string(),
                "people",
                key,
                value,
                &t,
            )))
            .await;
    }

    async fn remove(&mut self, key: &str) {
        self.n += 1;
        let t = Ts::new(now_millis(), self.n, "writer");
        self.c
            .send_acked(&client_op(remove_op(
                &self.n.to_string(),
                "people",
                key,
                &t,
            )))
            .await;
    }
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// QUERY_UPDATEs of `query_id` (key, changeType, value) until the sentinel key's update of
/// `sentinel_query`; every other message is returned in `others`.
async fn updates_until(
    c: &mut Client,
    query_id: &str,
    sentinel_query: &str,
    sentinel: &str,
) -> (Vec<(String, String, Value)>, Vec<Value>) {
    let mut out = Vec::new();
    let mut others = Vec::new();
    loop {
        let v = c
            .recv_within(Duration::from_secs(5))
            .await
            .unwrap_or_else(|| panic!("no sentinel; got {out:?} {others:?}"));
        if msg_type(&v) == "QUERY_UPDATE" {
            let q = pstr(&v, "queryId").unwrap();
            let k = pstr(&v, "key").unwrap().to_owned();
            if q == sentinel_query && k == sentinel {
                return (out, others);
            }
            if q == query_id {
                out.push((
                    k,
                    pstr(&v, "changeType").unwrap().to_owned(),
                    get(payload(&v), "value").cloned().unwrap_or(Value::Nil),
                ));
                continue;
            }
        }
        others.push(v);
    }
}

#[tokio::test]
async fn snapshot_where_and_predicates() {
    let node = node();
    let mut c = node.authed_client().await;
    seed(&mut c).await;
    let cases: Vec<(&str, Value, Vec<&str>)> = vec![
        (
            "where",
            map(&[("where", map(&[("city", "Paris".into())]))]),
            vec!["p1", "p3", "p6"],
        ),
        (
            "gt",
            predicate(leaf("gt", "age", 30.into())),
            vec!["p3", "p4"],
        ),
        (
            "and",
            predicate(node_of(
                "and",
                vec![
                    leaf("gte", "age", 25.into()),
                    leaf("eq", "city", "Paris".into()),
                ],
            )),
            vec!["p1", "p3"],
        ),
        (
            "or",
            predicate(node_of(
                "or",
                vec![
                    leaf("eq", "city", "Rome".into()),
                    leaf("lt", "age", 20.into()),
                ],
            )),
            vec!["p4", "p5"],
        ),
        (
            "like",
            predicate(leaf("like", "name", "%smith".into())),
            vec!["p1", "p3"],
        ),
        (
            "in",
            predicate(leaf(
                "in",
                "city",
                Value::Array(vec!["Rome".into(), "Berlin".into()]),
            )),
            vec!["p2", "p4", "p5"],
        ),
        (
            "not",
            predicate(node_of("not", vec![leaf("eq", "city", "Paris".into())])),
            vec!["p2", "p4", "p5"],
        ),
        ("all", map(&[]), vec!["p1", "p2", "p3", "p4", "p5", "p6"]),
    ];
    for (id, query, want) in cases {
        let resp = c.subscribe(id, "people", query).await;
        assert_eq!(sorted(result_keys(&resp)), want, "query {id}: {resp:?}");
        assert_eq!(pstr(&resp, "cursorStatus"), Some("none"), "{id}");
        assert!(get(payload(&resp), "hasMore").is_none(), "{id}: not cut");
        assert!(
            get(payload(&resp), "merkleRootHash").is_none(),
            "merkleRootHash omitted"
        );
    }
}

#[tokio::test]
async fn snapshot_sort_limit_cursor_and_fields() {
    let node = node();
    let mut c = node.authed_client().await;
    seed(&mut c).await;

    // Array form; missing `age` sorts last in both directions.
    let by_age_desc = map(&[(
        "sort",
        Value::Array(vec![map(&[
            ("field", "age".into()),
            ("direction", "desc".into()),
        ])]),
    )]);
    let resp = c.subscribe("desc", "people", by_age_desc).await;
    assert_eq!(result_keys(&resp), ["p3", "p4", "p1", "p2", "p5", "p6"]);

    // Object form: keys in wire order give the priority.
    let obj = map(&[(
        "sort",
        map(&[("city", "asc".into()), ("age", "desc".into())]),
    )]);
    let resp = c.subscribe("obj", "people", obj).await;
    assert_eq!(result_keys(&resp), ["p2", "p5", "p3", "p1", "p6", "p4"]);

    // limit + cursor: three pages of 2.
    let page = |cursor: Option<&str>| {
        let mut q = vec![
            (
                "sort",
                Value::Array(vec![map(&[
                    ("field", "age".into()),
                    ("direction", "asc".into()),
                ])]),
            ),
            ("limit", Value::F64(2.0)),
        ];
        if let Some(c) = cursor {
            q.push(("cursor", c.into()));
        }
        map(&q)
    };
    let r1 = c.subscribe("page1", "people", page(None)).await;
    assert_eq!(result_keys(&r1), ["p5", "p2"]);
    assert_eq!(get(payload(&r1), "hasMore"), Some(&Value::from(true)));
    let cur1 = pstr(&r1, "nextCursor").expect("nextCursor").to_owned();
    let r2 = c.subscribe("page2", "people", page(Some(&cur1))).await;
    assert_eq!(result_keys(&r2), ["p1", "p4"]);
    assert_eq!(pstr(&r2, "cursorStatus"), Some("valid"));
    assert_eq!(get(payload(&r2), "hasMore"), Some(&Value::from(true)));
    let cur2 = pstr(&r2, "nextCursor").expect("nextCursor").to_owned();
    let r3 = c.subscribe("page3", "people", page(Some(&cur2))).await;
    assert_eq!(result_keys(&r3), ["p3", "p6"]);
    assert_ne!(get(payload(&r3), "hasMore"), Some(&Value::from(true)));
    assert!(get(payload(&r3), "nextCursor").is_none());

    // fields: only the named top-level keys of each value.
    c.send(&query_sub_fields(
        "proj",
        "people",
        map(&[("where", map(&[("city", "Rome".into())]))]),
        &["name"],
    ))
    .await;
    let resp = c.recv_query_resp("proj").await;
    assert_eq!(
        results(&resp),
        vec![("p4".to_owned(), map(&[("name", "Dave Brown".into())]))]
    );
}

#[tokio::test]
async fn snapshot_cap_sets_has_more() {
    let node = Node::start_with(NodeOptions::default().args(&["--query-max-results", "3"]));
    let mut c = node.authed_client().await;
    seed(&mut c).await;
    let resp = c.subscribe("all", "people", map(&[])).await;
    assert_eq!(result_keys(&resp).len(), 3);
    assert_eq!(get(payload(&resp), "hasMore"), Some(&Value::from(true)));
}

#[tokio::test]
async fn live_enter_update_leave_with_writer_exclusion_and_server_events() {
    let node = node();
    let mut w = Writer {
        c: node.authed_client().await,
        n: 0,
    };
    seed(&mut w.c).await;
    let paris = || map(&[("where", map(&[("city", "Paris".into())]))]);
    let mut sub = node.authed_client().await;
    sub.send(&query_sub_fields(
        "paris",
        "people",
        paris(),
        &["name", "age"],
    ))
    .await;
    assert_eq!(
        sorted(result_keys(&sub.recv_query_resp("paris").await)),
        ["p1", "p3", "p6"]
    );
    // The writer watches the same query; it must hear nothing of its own writes.
    w.c.subscribe("paris", "people", paris()).await;
    // A client watching another map gets no event of this one.
    let mut elsewhere = node.authed_client().await;
    elsewhere.subscribe("o", "other-map", map(&[])).await;

    w.put("p7", person("Gina", Some(50), "Paris")).await; // ENTER
    w.put("p7", person("Gina", Some(51), "Paris")).await; // UPDATE
    w.put("p7", person("Gina", Some(51), "Rome")).await; // LEAVE
    w.remove("p1").await; // LEAVE
    w.put("p8", person("Hal", Some(60), "Rome")).await; // nothing for the query

    // The sentinel comes from a third client, so the writer's subscription gets it too.
    let mut s = Writer {
        c: node.authed_client().await,
        n: 100,
    };
    s.put("zz", person("Sentinel", Some(1), "Paris")).await;

    let (updates, others) = updates_until(&mut sub, "paris", "paris", "zz").await;
    assert_eq!(
        updates,
        vec![
            (
                "p7".into(),
                "ENTER".into(),
                map(&[("name", "Gina".into()), ("age", 50.into())])
            ),
            (
                "p7".into(),
                "UPDATE".into(),
                map(&[("name", "Gina".into()), ("age", 51.into())])
            ),
            ("p7".into(), "LEAVE".into(), Value::Nil),
            ("p1".into(), "LEAVE".into(), Value::Nil),
        ]
    );
    // SERVER_EVENT for every write to the map (the subscriber has a query on it), each
    // before the key's QUERY_UPDATE.
    let events: Vec<(String, String)> = others
        .iter()
        .filter(|v| msg_type(v) == "SERVER_EVENT")
        .map(|v| {
            (
                pstr(v, "eventType").unwrap().to_owned(),
                pstr(v, "key").unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        events,
        [
            ("PUT", "p7"),
            ("PUT", "p7"),
            ("PUT", "p7"),
            ("REMOVE", "p1"),
            ("PUT", "p8"),
            ("PUT", "zz")
        ]
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
    );
    let ev = others
        .iter()
        .find(|v| msg_type(v) == "SERVER_EVENT")
        .unwrap();
    assert_eq!(pstr(ev, "mapName"), Some("people"));
    assert!(
        get(payload(ev), "record").is_some(),
        "PUT carries its record"
    );

    // Writer exclusion: its own subscription saw only the sentinel, no SERVER_EVENT echo.
    let (own, own_others) = updates_until(&mut w.c, "paris", "paris", "zz").await;
    assert!(own.is_empty(), "writer got its own updates: {own:?}");
    let echoes: Vec<_> = own_others
        .iter()
        .filter(|v| msg_type(v) == "SERVER_EVENT" && pstr(v, "key") != Some("zz"))
        .collect();
    assert!(echoes.is_empty(), "writer got its own events: {echoes:?}");

    // Nothing reached the client of the other map.
    let stray = elsewhere.ping_pong().await;
    assert!(stray.is_empty(), "{stray:?}");
}

#[tokio::test]
async fn limit_window_push_out_and_refill() {
    let node = node();
    let mut w = Writer {
        c: node.authed_client().await,
        n: 0,
    };
    seed(&mut w.c).await;
    let mut sub = node.authed_client().await;
    let q = map(&[
        (
            "sort",
            Value::Array(vec![map(&[
                ("field", "age".into()),
                ("direction", "asc".into()),
            ])]),
        ),
        ("limit", 3.into()),
    ]);
    let resp = sub.subscribe("young", "people", q).await;
    assert_eq!(result_keys(&resp), ["p5", "p2", "p1"]);
    // A sentinel subscription that sees every key.
    sub.subscribe("all", "people", map(&[])).await;

    // p9 (20) sorts before the last row p1 (30): ENTER p9, LEAVE p1.
    w.put("p9", person("Ida", Some(20), "Oslo")).await;
    w.put("s1", person("Sentinel", None, "x")).await;
    let (u, _) = updates_until(&mut sub, "young", "all", "s1").await;
    let got: BTreeSet<(String, String)> =
        u.iter().map(|(k, t, _)| (k.clone(), t.clone())).collect();
    assert_eq!(
        got,
        BTreeSet::from([
            ("p9".to_owned(), "ENTER".to_owned()),
            ("p1".to_owned(), "LEAVE".to_owned())
        ]),
        "{u:?}"
    );
    assert_eq!(u.len(), 2, "{u:?}");

    // A row sorting after the window changes nothing.
    w.put("p10", person("Jon", Some(70), "Oslo")).await;
    // Deleting p9 frees a slot: refilled with p1, which the window had seen.
    w.remove("p9").await;
    w.put("s2", person("Sentinel", None, "x")).await;
    let (u, _) = updates_until(&mut sub, "young", "all", "s2").await;
    let got: BTreeSet<(String, String)> =
        u.iter().map(|(k, t, _)| (k.clone(), t.clone())).collect();
    assert_eq!(
        got,
        BTreeSet::from([
            ("p9".to_owned(), "LEAVE".to_owned()),
            ("p1".to_owned(), "ENTER".to_owned())
        ]),
        "{u:?}"
    );
    assert_eq!(u.len(), 2, "{u:?}");
}

#[tokio::test]
async fn unsub_stops_updates() {
    let node = node();
    let mut w = Writer {
        c: node.authed_client().await,
        n: 0,
    };
    let mut sub = node.authed_client().await;
    sub.subscribe("q", "people", map(&[])).await;
    w.put("a", 1.into()).await;
    let v = sub.recv_type("QUERY_UPDATE").await.unwrap();
    assert_eq!(pstr(&v, "changeType"), Some("ENTER"));

    sub.send(&query_unsub("q")).await;
    sub.subscribe(
        "q2",
        "people",
        map(&[("where", map(&[("s", true.into())]))]),
    )
    .await;
    w.put("a", 2.into()).await;
    w.put("b", 3.into()).await;
    w.put("zz", map(&[("s", true.into())])).await;
    let (u, _) = updates_until(&mut sub, "q", "q2", "zz").await;
    assert!(u.is_empty(), "updates after QUERY_UNSUB: {u:?}");
}

#[tokio::test]
async fn two_clients_reuse_one_query_id_independently() {
    let node = node();
    let mut w = Writer {
        c: node.authed_client().await,
        n: 0,
    };
    let mut a = node.authed_client().await;
    let mut b = node.authed_client().await;
    a.subscribe(
        "q",
        "people",
        map(&[("where", map(&[("city", "Paris".into())]))]),
    )
    .await;
    b.subscribe(
        "q",
        "people",
        map(&[("where", map(&[("city", "Rome".into())]))]),
    )
    .await;
    for c in [&mut a, &mut b] {
        c.subscribe("all", "people", map(&[])).await;
    }
    w.put("x", person("X", Some(1), "Paris")).await;
    w.put("y", person("Y", Some(1), "Rome")).await;
    w.put("s1", 0.into()).await;
    let (ua, _) = updates_until(&mut a, "q", "all", "s1").await;
    let (ub, _) = updates_until(&mut b, "q", "all", "s1").await;
    assert_eq!(
        ua.iter()
            .map(|u| (u.0.as_str(), u.1.as_str()))
            .collect::<Vec<_>>(),
        [("x", "ENTER")]
    );
    assert_eq!(
        ub.iter()
            .map(|u| (u.0.as_str(), u.1.as_str()))
            .collect::<Vec<_>>(),
        [("y", "ENTER")]
    );

    // A's QUERY_UNSUB of "q" leaves B's "q" alone.
    a.send(&query_unsub("q")).await;
    a.ping_pong().await;
    w.put("y2", person("Y2", Some(1), "Rome")).await;
    w.put("x2", person("X2", Some(1), "Paris")).await;
    w.put("s2", 0.into()).await;
    let (ua, _) = updates_until(&mut a, "q", "all", "s2").await;
    let (ub, _) = updates_until(&mut b, "q", "all", "s2").await;
    assert!(ua.is_empty(), "{ua:?}");
    assert_eq!(
        ub.iter()
            .map(|u| (u.0.as_str(), u.1.as_str()))
            .collect::<Vec<_>>(),
        [("y2", "ENTER")]
    );
}

#[tokio::test]
async fn server_event_reaches_every_connection_with_a_query_on_the_map() {
    let node = node();
    let mut w = Writer {
        c: node.authed_client().await,
        n: 0,
    };
    let mut listeners = Vec::new();
    for i in 0..3 {
        let mut c = node.authed_client().await;
        // Queries that never match: SERVER_EVENT still comes (6.4), QUERY_UPDATE does not.
        c.subscribe(
            &format!("q{i}"),
            "people",
            map(&[("where", map(&[("never", true.into())]))]),
        )
        .await;
        listeners.push(c);
    }
    let mut bystander = node.authed_client().await;
    w.put("k", map(&[("v", 1.into())])).await;
    w.remove("k").await;
    for c in &mut listeners {
        let mut got = BTreeMap::new();
        for _ in 0..2 {
            let v = c.recv_type("SERVER_EVENT").await.expect("SERVER_EVENT");
            assert_eq!(pstr(&v, "key"), Some("k"));
            let rec = get(payload(&v), "record").cloned();
            got.insert(pstr(&v, "eventType").unwrap().to_owned(), rec);
        }
        let put = got["PUT"].as_ref().expect("PUT record");
        assert_eq!(get(put, "value"), Some(&map(&[("v", 1.into())])));
        assert!(got.contains_key("REMOVE"));
    }
    assert!(bystander.ping_pong().await.is_empty());
}

// ---- groupBy and aggregations (protocol.md 6.1) ------------------------------------------------

fn agg(func: &str, field: Option<&str>) -> Value {
    let mut m = vec![("func", Value::from(func))];
    if let Some(f) = field {
        m.push(("field", f.into()));
    }
    map(&m)
}

fn grouped(by: &[&str], aggs: Vec<Value>, extra: &[(&str, Value)]) -> Value {
    let mut m = vec![
        (
            "groupBy",
            Value::Array(by.iter().map(|b| Value::from(*b)).collect()),
        ),
        ("aggregations", Value::Array(aggs)),
    ];
    m.extend(extra.iter().cloned());
    map(&m)
}

/// A row value's field, as f64 when numeric (the comparison does not care for int widths).
fn num(row: &Value, field: &str) -> Option<f64> {
    match get(row, field)? {
        Value::Integer(i) => i.as_f64(),
        Value::F64(f) => Some(*f),
        _ => None,
    }
}

/// Rows of a QUERY_RESP: bucket id → value.
fn grouped_rows(resp: &Value) -> BTreeMap<String, Value> {
    results(resp).into_iter().collect()
}

#[tokio::test]
async fn group_by_with_aggregations_answers_one_row_per_group_and_stays_live() {
    let n = node();
    let mut c = n.authed_client().await;
    seed(&mut c).await;
    let aggs = || {
        vec![
            agg("count", None),
            agg("sum", Some("age")),
            agg("min", Some("age")),
            agg("max", Some("age")),
            agg("avg", Some("age")),
        ]
    };
    // Snapshot: Paris (30, 41, none), Berlin (25, 19), Rome (35).
    let resp = c
        .subscribe("g1", "people", grouped(&["city"], aggs(), &[]))
        .await;
    assert_eq!(pstr(&resp, "error"), None, "{resp:?}");
    let rows = grouped_rows(&resp);
    assert_eq!(
        rows.keys().cloned().collect::<Vec<_>>(),
        ["S4:Rome", "S5:Paris", "S6:Berlin"]
            .iter()
            .map(|s| s.to_string())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect::<Vec<_>>()
    );
    let paris = &rows["S5:Paris"];
    assert_eq!(
        get(paris, "__key").and_then(Value::as_str),
        Some("S5:Paris")
    );
    assert_eq!(
        get(paris, "city").and_then(Value::as_str),
        Some("Paris"),
        "the column, typed"
    );
    assert_eq!(num(paris, "__count"), Some(3.0));
    assert_eq!(num(paris, "__sum_age"), Some(71.0));
    assert_eq!(num(paris, "__min_age"), Some(30.0));
    assert_eq!(num(paris, "__max_age"), Some(41.0));
    assert_eq!(num(paris, "__avg_age"), Some(35.5));
    assert_eq!(
        paris.as_map().map(Vec::len),
        Some(7),
        "__key, __count, four aggregations and the column, nothing else: {paris:?}"
    );
    assert_eq!(num(&rows["S6:Berlin"], "__avg_age"), Some(22.0));

    // Sort and limit apply to the groups: the two largest by count.
    let top = c
        .subscribe(
            "g2",
            "people",
            grouped(
                &["city"],
                vec![agg("count", None)],
                &[
                    (
                        "sort",
                        Value::Array(vec![map(&[
                            ("field", "__count".into()),
                            ("direction", "desc".into()),
                        ])]),
                    ),
                    ("limit", 2.into()),
                ],
            ),
        )
        .await;
    assert_eq!(
        result_keys(&top),
        ["S5:Paris", "S6:Berlin"],
        "sorted by __count desc, cut at 2: {top:?}"
    );
    assert_eq!(get(payload(&top), "hasMore"), Some(&Value::from(true)));

    // A filter picks the records that are grouped.
    let adults = c
        .subscribe(
            "g3",
            "people",
            grouped(
                &["city"],
                vec![agg("count", None)],
                &[("predicate", leaf("gte", "age", 30.into()))],
            ),
        )
        .await;
    let adults = grouped_rows(&adults);
    assert_eq!(num(&adults["S5:Paris"], "__count"), Some(2.0));
    assert!(!adults.contains_key("S6:Berlin"), "{adults:?}");

    // Live, for the writer too: an update, a new group, a group that empties.
    let mut w = Writer {
        c: n.authed_client().await,
        n: 100,
    };
    w.put("p7", person("Gina", Some(50), "Oslo")).await;
    w.put("p4", person("Dave Brown", Some(36), "Paris")).await;
    let mut seen: Vec<(String, String, Value)> = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let want = |seen: &[(String, String, Value)]| {
        let last = |k: &str| seen.iter().rev().find(|(key, _, _)| key == k);
        last("S4:Oslo").is_some_and(|(_, t, v)| t == "ENTER" && num(v, "__max_age") == Some(50.0))
            && last("S4:Rome").is_some_and(|(_, t, _)| t == "LEAVE")
            && last("S5:Paris").is_some_and(|(_, t, v)| {
                t == "UPDATE"
                    && num(v, "__count") == Some(4.0)
                    && num(v, "__sum_age") == Some(107.0)
            })
    };
    while !want(&seen) {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let Some(v) = c.recv_within(left).await else {
            panic!("grouped live updates incomplete within 5 s: {seen:?}");
        };
        if msg_type(&v) == "QUERY_UPDATE" && pstr(&v, "queryId") == Some("g1") {
            seen.push((
                pstr(&v, "key").unwrap_or_default().to_owned(),
                pstr(&v, "changeType").unwrap_or_default().to_owned(),
                get(payload(&v), "value").cloned().unwrap_or(Value::Nil),
            ));
        }
    }
    assert!(
        !seen
            .iter()
            .any(|(k, t, _)| k == "S6:Berlin" && t != "UPDATE"),
        "Berlin did not change: {seen:?}"
    );

    // Aggregations without groupBy: one row over every matching record.
    let all = c
        .subscribe(
            "g4",
            "people",
            map(&[("aggregations", Value::Array(vec![agg("sum", Some("age"))]))]),
        )
        .await;
    let all = grouped_rows(&all);
    assert_eq!(all.len(), 1, "{all:?}");
    assert_eq!(num(&all["*"], "__count"), Some(7.0));
    assert_eq!(
        num(&all["*"], "__sum_age"),
        Some(30.0 + 25.0 + 41.0 + 36.0 + 19.0 + 50.0)
    );
}

/// `POST /sync` answers a grouped query with the same rows as `QUERY_SUB`.
#[tokio::test]
async fn post_sync_answers_grouped_queries_too() {
    let n = node();
    let mut c = n.authed_client().await;
    seed(&mut c).await;
    let body = map(&[
        ("clientId", "http-client".into()),
        ("clientHlc", Ts::new(now_millis(), 0, "http").wire()),
        (
            "queries",
            Value::Array(vec![map(&[
                ("queryId", "hg".into()),
                ("mapName", "people".into()),
                (
                    "query",
                    grouped(&["city"], vec![agg("max", Some("age"))], &[]),
                ),
            ])]),
        ),
    ]);
    let resp = post_sync(n.port, &body);
    let results = get(&resp, "queryResults")
        .and_then(Value::as_array)
        .and_then(|q| q.first())
        .and_then(|q| get(q, "results"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_else(|| panic!("no grouped results: {resp:?}"));
    let rows: BTreeMap<String, Value> = results
        .iter()
        .map(|r| {
            (
                get(r, "key")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned(),
                get(r, "value").cloned().unwrap_or(Value::Nil),
            )
        })
        .collect();
    assert_eq!(rows.len(), 3, "{rows:?}");
    assert_eq!(num(&rows["S5:Paris"], "__max_age"), Some(41.0));
    assert_eq!(num(&rows["S4:Rome"], "__count"), Some(1.0));
}
