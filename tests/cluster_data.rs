//! Cluster data layer (issue 8: partitions, routing, replication) through real node processes
//! on 127.0.0.1. Guards the promises a TopGun app relies on once it runs on more than one node:
//!
//! - every node computes the same owner and backup for each of the 271 partitions and says so
//!   in PARTITION_MAP, with endpoints a client can actually connect to;
//! - a write sent to any node is readable on every node and fires live queries and topics
//!   there, and `topgun_ops_total` counts it once, on the node the client sent it to;
//! - a forwarded write can be followed by its `requestId` from origin to owner to backup;
//! - an OP_ACK means the write survives `kill -9` of any one node, and a node that comes back
//!   (same id, same cluster port, empty memory store) gets every acked write back;
//! - a node joining a loaded cluster takes partitions without losing writes;
//! - garbage on the node-to-node TCP port is counted and harms nothing;
//! - `--write-ack owner+backup` never acknowledges what a silent backup did not confirm, and
//!   `owner` does not wait for it;
//! - a node restarted on its own redb directory keeps its disk and pulls what it missed;
//! - OR-Map ops and `POST /sync` writes reach every node like CLIENT_OPs;
//! - with `--backup-count 2` on three nodes every node is a synchronous copy.
//!
//! A lost acked write, a key readable on one node and not another, or a live query that misses
//! a write made elsewhere are exactly the bugs a single-node test suite cannot see.
//!
//! Every wait is bounded and panics with what it saw last. A short probe period
//! (`--cluster-probe-ms 200`) keeps each test well under 30 s. Values are strings so the
//! comparisons cannot trip over MessagePack integer widths.
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::cluster::*;
use common::proto::*;
use common::*;
use rmpv::Value;

// ---- the partition table --------------------------------------------------------------------

/// A PARTITION_MAP as one node answered it.
#[derive(Debug, Clone)]
struct Table {
    from: String,
    version: u64,
    /// nodeId → (websocket endpoint, status)
    nodes: BTreeMap<String, (String, String)>,
    /// By partition id.
    owners: Vec<String>,
    backups: Vec<Vec<String>>,
}

impl Table {
    fn parse(from: &str, p: &Value) -> Table {
        let field = |v: &'_ Value, k: &str| -> Value {
            get(v, k)
                .cloned()
                .unwrap_or_else(|| panic!("{from}: PARTITION_MAP without {k}: {v:?}"))
        };
        let text = |v: &Value, k: &str| -> String {
            field(v, k)
                .as_str()
                .unwrap_or_else(|| panic!("{from}: PARTITION_MAP {k} is not a string: {v:?}"))
                .to_owned()
        };
        assert_eq!(
            as_u64(&field(p, "partitionCount")),
            PARTITIONS as u64,
            "{from}: partitionCount"
        );
        let version = as_u64(&field(p, "version"));
        as_u64(&field(p, "generatedAt"));
        let mut nodes = BTreeMap::new();
        for n in field(p, "nodes").as_array().expect("nodes is an array") {
            let ws = text(&field(n, "endpoints"), "websocket");
            let id = text(n, "nodeId");
            let dup = nodes.insert(id.clone(), (ws, text(n, "status")));
            assert!(
                dup.is_none(),
                "{from}: node {id} listed twice in PARTITION_MAP"
            );
        }
        let list = field(p, "partitions");
        let list = list.as_array().expect("partitions is an array");
        assert_eq!(list.len(), PARTITIONS, "{from}: PARTITION_MAP partitions");
        let mut slots: Vec<Option<(String, Vec<String>)>> = vec![None; PARTITIONS];
        for e in list {
            let id = as_u64(&field(e, "partitionId")) as usize;
            assert!(id < PARTITIONS, "{from}: partitionId {id}");
            let backups = field(e, "backupNodeIds")
                .as_array()
                .unwrap_or_else(|| panic!("{from}: backupNodeIds of {id} is not an array"))
                .iter()
                .map(|b| b.as_str().expect("backup node id is a string").to_owned())
                .collect();
            let dup = slots[id].replace((text(e, "ownerNodeId"), backups));
            assert!(dup.is_none(), "{from}: partition {id} listed twice");
        }
        let (owners, backups) = slots
            .into_iter()
            .map(|s| s.expect("all 271 ids present: 271 entries, none twice"))
            .unzip();
        Table {
            from: from.to_owned(),
            version,
            nodes,
            owners,
            backups,
        }
    }

    fn owner_of(&self, key: &str) -> &str {
        &self.owners[fnv1a(key) as usize % PARTITIONS]
    }

    fn backups_of(&self, key: &str) -> &[String] {
        &self.backups[fnv1a(key) as usize % PARTITIONS]
    }

    fn owned_by(&self, id: &str) -> usize {
        self.owners.iter().filter(|o| *o == id).count()
    }

    fn backed_up_by(&self, id: &str) -> usize {
        self.backups
            .iter()
            .filter(|b| b.iter().any(|x| x == id))
            .count()
    }

    /// Every owner and backup is a listed node; `BACKUPS` distinct backups, never the owner.
    fn check_shape(&self) {
        let from = &self.from;
        for (p, (owner, backups)) in self.owners.iter().zip(&self.backups).enumerate() {
            assert!(
                self.nodes.contains_key(owner),
                "{from}: partition {p} owned by unlisted {owner}"
            );
            assert_eq!(
                backups.len(),
                BACKUPS.min(self.nodes.len() - 1),
                "{from}: backups of partition {p}: {backups:?}"
            );
            assert!(
                !backups.contains(owner),
                "{from}: partition {p}: owner {owner} is its own backup"
            );
            let distinct: BTreeSet<_> = backups.iter().collect();
            assert_eq!(
                distinct.len(),
                backups.len(),
                "{from}: partition {p}: {backups:?}"
            );
            for b in backups {
                assert!(
                    self.nodes.contains_key(b),
                    "{from}: partition {p} backed up by unlisted {b}"
                );
            }
        }
    }
}

async fn partition_map(m: &Member) -> Table {
    let reply = request_partition_map(m).await;
    Table::parse(&m.id, payload(&reply))
}

/// Why two nodes' tables differ, or `None` when they list the same nodes, owners and backups.
fn disagreement(a: &Table, b: &Table) -> Option<String> {
    let (an, bn): (BTreeSet<_>, BTreeSet<_>) = (a.nodes.keys().collect(), b.nodes.keys().collect());
    if an != bn {
        return Some(format!("{} lists {an:?}, {} lists {bn:?}", a.from, b.from));
    }
    let differ: Vec<usize> = (0..PARTITIONS)
        .filter(|&p| a.owners[p] != b.owners[p] || a.backups[p] != b.backups[p])
        .collect();
    let p = *differ.first()?;
    Some(format!(
        "{} and {} differ on {} partitions, e.g. {p}: owner {} / {}, backups {:?} / {:?} \
         (versions {} / {})",
        a.from,
        b.from,
        differ.len(),
        a.owners[p],
        b.owners[p],
        a.backups[p],
        b.backups[p],
        a.version,
        b.version
    ))
}

/// Polls PARTITION_MAP on every member until all list exactly these members and agree on the
/// owner and backups of every partition. Returns each member's table, in `ms` order, each
/// checked for shape (`Table::check_shape`).
async fn agreed_tables(ms: &[&Member], within: Duration) -> Vec<Table> {
    let ids: BTreeSet<&str> = ms.iter().map(|m| m.id.as_str()).collect();
    let t0 = Instant::now();
    loop {
        let mut tables = Vec::new();
        for m in ms {
            tables.push(partition_map(m).await);
        }
        let wrong_nodes = tables.iter().find_map(|t| {
            let listed: BTreeSet<&str> = t.nodes.keys().map(String::as_str).collect();
            (listed != ids).then(|| format!("{} lists {listed:?}, want {ids:?}", t.from))
        });
        let problem =
            wrong_nodes.or_else(|| tables[1..].iter().find_map(|t| disagreement(&tables[0], t)));
        match problem {
            None => {
                eprintln!("partition tables agree after {:?}", t0.elapsed());
                for t in &tables {
                    t.check_shape();
                }
                return tables;
            }
            Some(p) if t0.elapsed() >= within => {
                panic!("partition tables do not agree within {within:?}: {p}")
            }
            Some(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

// ---- 1 --------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_agree_on_the_partition_table() {
    let [a, b, c] = cluster::<3>(&["--debug-token", "debug-secret"]);
    let all = [&a, &b, &c];
    let tables = agreed_tables(&all, Duration::from_secs(10)).await;

    for (m, t) in all.iter().zip(&tables) {
        for other in all {
            let (ws, st) = &t.nodes[&other.id];
            assert_eq!(
                *ws,
                other.url(),
                "{}: websocket endpoint of {} is not its real URL",
                m.id,
                other.id
            );
            assert_eq!(st, "ACTIVE", "{}: status of {}", m.id, other.id);
        }
    }
    // The metrics say what the table says, node by node.
    let table = &tables[0];
    for m in all {
        let (owned, backup) = (table.owned_by(&m.id), table.backed_up_by(&m.id));
        let what = format!(
            "{}: topgun_partitions_owned == {owned} and topgun_partitions_backup == {backup} \
             (its share of the agreed table)",
            m.id
        );
        wait_for(&what, Duration::from_secs(5), || {
            let s = status(m);
            if s.owned == Some(owned as f64) && s.backup == Some(backup as f64) {
                Ok(())
            } else {
                Err(format!("{s:?}"))
            }
        });
    }

    // node-a saw two joins: at least one table change, logged with what it now holds.
    let s = a.node.scrape();
    let rebalances = s.value("topgun_rebalance_total", &[]);
    assert!(
        rebalances.is_some_and(|r| r >= 1.0),
        "node-a: topgun_rebalance_total {rebalances:?} after two nodes joined"
    );
    let version = s.value("topgun_partition_table_version", &[]);
    assert_eq!(
        version,
        Some(tables[0].version as f64),
        "node-a: topgun_partition_table_version vs the version of its PARTITION_MAP"
    );
    for m in [&b, &c] {
        let v = status(m).version;
        assert!(v.is_some_and(|v| v >= 1.0), "{}: table version {v:?}", m.id);
    }
    let lines = lines_with(&a, "partitions rebalanced");
    let last = lines
        .last()
        .unwrap_or_else(|| panic!("node-a: no 'partitions rebalanced' line"));
    let members = last["members"]
        .as_u64()
        .or_else(|| last["members"].as_array().map(|l| l.len() as u64));
    assert_eq!(members, Some(3), "node-a: last rebalance line: {last}");
    assert_eq!(
        last["owned"].as_u64(),
        Some(table.owned_by("node-a") as u64),
        "node-a: last rebalance line: {last}"
    );
    assert_eq!(
        last["backup"].as_u64(),
        Some(table.backed_up_by("node-a") as u64),
        "node-a: last rebalance line: {last}"
    );
    assert_eq!(
        last["version"].as_u64(),
        Some(tables[0].version),
        "node-a: last rebalance line vs its PARTITION_MAP: {last}"
    );

    // GET /debug/cluster: the same table for an operator, with the state of every link.
    let (status, body) = http_bytes(
        a.node.port,
        "GET",
        "/debug/cluster",
        &[("Authorization", "Bearer debug-secret")],
        &[],
    )
    .expect("GET /debug/cluster");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let view: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
    assert_eq!(
        view["tableVersion"].as_u64(),
        Some(tables[0].version),
        "{view}"
    );
    assert_eq!(view["dataReady"], true, "{view}");
    let members = view["members"].as_array().expect("members");
    assert_eq!(members.len(), 3, "{view}");
    for m in members {
        let id = m["nodeId"].as_str().expect("nodeId");
        assert_eq!(m["owned"].as_u64(), Some(table.owned_by(id) as u64), "{m}");
        assert_eq!(
            m["backup"].as_u64(),
            Some(table.backed_up_by(id) as u64),
            "{m}"
        );
        let want_link = if id == "node-a" { "self" } else { "up" };
        assert_eq!(m["link"], want_link, "{m}");
    }
    let (status, _) =
        http_bytes(a.node.port, "GET", "/debug/cluster", &[], &[]).expect("GET /debug/cluster");
    assert_eq!(status, 401, "/debug/cluster without the token");
}

// ---- 2 --------------------------------------------------------------------------------------

/// Reads QUERY_UPDATEs of `query_id` until every wanted key was announced once.
async fn collect_updates(
    c: &mut Client,
    who: &str,
    query_id: &str,
    want: &BTreeMap<String, Value>,
    within: Duration,
) {
    let deadline = tokio::time::Instant::now() + within;
    let mut got: BTreeMap<String, Value> = BTreeMap::new();
    let mut twice = Vec::new();
    while !want.keys().all(|k| got.contains_key(k)) {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let Some(v) = c.recv_within(left).await else {
            panic!(
                "{who}: QUERY_UPDATEs for writes made on node-a: {} of {} keys within {within:?}; \
                 {}",
                got.len(),
                want.len(),
                diff(want, &got).unwrap_or_default()
            );
        };
        if msg_type(&v) != "QUERY_UPDATE" || pstr(&v, "queryId") != Some(query_id) {
            continue;
        }
        let key = pstr(&v, "key").expect("QUERY_UPDATE key").to_owned();
        assert_eq!(
            pstr(&v, "changeType"),
            Some("ENTER"),
            "{who}: a new key enters the query: {v:?}"
        );
        let value = get(payload(&v), "value").cloned().unwrap_or(Value::Nil);
        if got.insert(key.clone(), value).is_some() {
            twice.push(key);
        }
    }
    assert!(
        twice.is_empty(),
        "{who}: one write, several QUERY_UPDATEs for {twice:?}"
    );
    if let Some(d) = diff(want, &got) {
        panic!("{who}: QUERY_UPDATE values: {d}");
    }
    let extra: Vec<_> = got.keys().filter(|k| !want.contains_key(*k)).collect();
    assert!(
        extra.is_empty(),
        "{who}: updates for keys never written: {extra:?}"
    );
}

/// Reads TOPIC_MESSAGEs until `0..n` and the "end" marker arrived; returns the `seq`s in
/// arrival order (probe messages of the warm-up are skipped).
async fn read_topic(c: &mut Client, who: &str, topic: &str, n: u64) -> Vec<u64> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut seqs = Vec::new();
    let mut end = false;
    while !(end && (0..n).all(|i| seqs.contains(&i))) {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let Some(v) = c.recv_within(left).await else {
            panic!("{who}: TOPIC_MESSAGEs published on node-a: seqs {seqs:?}, end {end}");
        };
        if msg_type(&v) != "TOPIC_MESSAGE" {
            continue;
        }
        assert_eq!(pstr(&v, "topic"), Some(topic), "{who}: {v:?}");
        let data = get(payload(&v), "data").cloned().unwrap_or(Value::Nil);
        if let Some(s) = get(&data, "seq") {
            seqs.push(as_u64(s));
        } else if data == Value::from("end") {
            end = true;
        }
    }
    seqs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_through_one_node_are_read_and_live_on_the_others() {
    const MAP: &str = "cluster-live";
    const N: usize = 30;
    let [a, b, c] = cluster::<3>(&[]);
    let table = agreed_tables(&[&a, &b, &c], Duration::from_secs(10))
        .await
        .remove(0);

    let mut sub_b = connect(&b).await;
    let mut sub_c = connect(&c).await;
    for (s, who) in [(&mut sub_b, "node-b"), (&mut sub_c, "node-c")] {
        let resp = s.subscribe("live", MAP, map(&[])).await;
        assert!(
            results(&resp).is_empty(),
            "{who}: {MAP} not empty: {resp:?}"
        );
    }

    let want: BTreeMap<String, Value> = (0..N)
        .map(|i| {
            (
                format!("item-{i:02}"),
                Value::from(format!("value-{i}-via-a")),
            )
        })
        .collect();
    let remote = want
        .keys()
        .filter(|k| table.owner_of(k) != "node-a")
        .count();
    assert!(
        remote > 0,
        "precondition: some of the keys are owned elsewhere"
    );
    eprintln!("{remote} of {N} keys are owned by node-b or node-c");
    let mut w = connect(&a).await;
    for (i, (key, value)) in want.iter().enumerate() {
        let id = format!("op-{i}");
        write_acked(
            &mut w,
            "node-a",
            &client_op(put(&id, MAP, key, value, i as u32)),
            &id,
        )
        .await;
    }

    collect_updates(&mut sub_b, "node-b", "live", &want, Duration::from_secs(10)).await;
    collect_updates(&mut sub_c, "node-c", "live", &want, Duration::from_secs(10)).await;
    for m in [&b, &c] {
        let took = wait_keys(m, MAP, &want, Duration::from_secs(5)).await;
        eprintln!("{}: every key readable after {took:?}", m.id);
    }

    // Counted once, where the client sent it.
    let put_on = |m: &Member| {
        m.node
            .scrape()
            .value_or_zero("topgun_ops_total", &[("type", "PUT"), ("map", MAP)])
    };
    wait_for(
        &format!("node-a: topgun_ops_total{{type=PUT,map={MAP}}} == {N}"),
        Duration::from_secs(5),
        || match put_on(&a) {
            v if v == N as f64 => Ok(()),
            v => Err(v.to_string()),
        },
    );
    for m in [&b, &c] {
        // Its own SUBSCRIBEs (the live query and the reads, all after the writes arrived) are
        // reported: so would a PUT counted for a replicated write be.
        wait_for(
            &format!(
                "{}: topgun_ops_total{{type=SUBSCRIBE,map={MAP}}} >= 2",
                m.id
            ),
            Duration::from_secs(5),
            || {
                let s = m.node.scrape();
                let v = s.value_or_zero("topgun_ops_total", &[("type", "SUBSCRIBE"), ("map", MAP)]);
                if v >= 2.0 {
                    Ok(())
                } else {
                    Err(v.to_string())
                }
            },
        );
    }
    // Over a few report intervals (100 ms), for a late report of replicated ops.
    for m in [&b, &c] {
        holds(
            &format!(
                "{}: counts no PUT of {MAP} it only received from peers",
                m.id
            ),
            Duration::from_millis(300),
            || match put_on(m) {
                0.0 => Ok(()),
                v => Err(v.to_string()),
            },
        );
    }
    wait_for(
        "node-a: topgun_cluster_forwarded_total > 0",
        Duration::from_secs(5),
        || match family_sum(&a.node.scrape(), "topgun_cluster_forwarded_total") {
            v if v > 0.0 => Ok(()),
            v => Err(format!("{v} (wanted > 0: {remote} keys owned elsewhere)")),
        },
    );
    for m in [&b, &c] {
        let v = family_sum(&m.node.scrape(), "topgun_cluster_forwarded_total");
        assert_eq!(v, 0.0, "{}: forwarded ops no client sent to it", m.id);
    }

    // Topics: a publish on node-a reaches subscribers on node-b and node-c, exactly once.
    const TOPIC: &str = "cluster/news";
    let mut subs = [(connect(&b).await, "node-b"), (connect(&c).await, "node-c")];
    for (s, _) in &mut subs {
        s.send(&topic_sub(TOPIC)).await;
        s.ping_pong().await;
    }
    let mut p = connect(&a).await;
    // Warm-up: how soon another node learns of a subscription is not promised, so probe until
    // each subscriber got one (bounded), then check a numbered run.
    let t0 = Instant::now();
    let mut reached = [false, false];
    let mut probe = 0u64;
    while !reached.iter().all(|r| *r) {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "TOPIC_PUB on node-a reached (node-b, node-c) = {reached:?} within 5 s"
        );
        p.send(&topic_pub(TOPIC, map(&[("probe", probe.into())])))
            .await;
        probe += 1;
        for (i, (s, _)) in subs.iter_mut().enumerate() {
            if !reached[i] {
                reached[i] = s
                    .recv_type_within("TOPIC_MESSAGE", Duration::from_millis(100))
                    .await
                    .is_some();
            }
        }
    }
    eprintln!(
        "topic subscriptions reached node-a after {:?}",
        t0.elapsed()
    );
    const MSGS: u64 = 20;
    for i in 0..MSGS {
        p.send(&topic_pub(TOPIC, map(&[("seq", i.into())]))).await;
    }
    p.send(&topic_pub(TOPIC, "end".into())).await;
    for (s, who) in &mut subs {
        let mut seqs = read_topic(s, who, TOPIC, MSGS).await;
        seqs.sort_unstable();
        assert_eq!(
            seqs,
            (0..MSGS).collect::<Vec<_>>(),
            "{who}: every message once"
        );
    }
}

// ---- 3 --------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarded_write_is_traced_by_request_id_on_origin_and_owner() {
    const MAP: &str = "traced";
    let [a, b, c] = cluster::<3>(&["--log-level", "debug"]);
    let table = agreed_tables(&[&a, &b, &c], Duration::from_secs(10))
        .await
        .remove(0);
    let by_id = |id: &str| {
        [&a, &b, &c]
            .into_iter()
            .find(|m| m.id == id)
            .expect("a member")
    };

    // Keys whose owner and backup are both other nodes: node-a must forward, and only
    // forwards (no role of its own to blur the trace). Two of them on the same owner for a
    // batch.
    let chain = |k: &String| {
        table.owner_of(k) != "node-a" && !table.backups_of(k).iter().any(|x| x == "node-a")
    };
    let first = (0..)
        .map(|i| format!("trace-{i}"))
        .find(chain)
        .expect("a key node-a neither owns nor backs up");
    let owner_id = table.owner_of(&first).to_owned();
    let backup_id = table.backups_of(&first)[0].clone();
    let mut same = (0..)
        .map(|i| format!("trace-batch-{i}"))
        .filter(|k| chain(k) && table.owner_of(k) == owner_id);
    let (k1, k2) = (same.next().unwrap(), same.next().unwrap());
    eprintln!("{first}: owner {owner_id}, backup {backup_id}; batch keys {k1}, {k2}");

    let mut w = connect(&a).await;
    write_acked(
        &mut w,
        "node-a",
        &client_op(put("req-single-17", MAP, &first, &"one".into(), 1)),
        "req-single-17",
    )
    .await;
    write_acked(
        &mut w,
        "node-a",
        &op_batch(vec![
            put("req-batch-1", MAP, &k1, &"b1".into(), 2),
            put("req-batch-2", MAP, &k2, &"b2".into(), 3),
        ]),
        "req-batch-2",
    )
    .await;

    for request_id in ["req-single-17", "req-batch-2"] {
        let fwd = wait_line(
            &a,
            "write forwarded",
            &format!("requestId {request_id}"),
            |l| l["requestId"] == request_id,
        );
        assert_eq!(fwd["owner"], owner_id.as_str(), "node-a: {fwd}");
        let client_id = fwd["clientId"]
            .as_str()
            .unwrap_or_else(|| panic!("node-a: no clientId: {fwd}"))
            .to_owned();
        assert!(
            log_lines(&a)
                .iter()
                .any(|l| l["msg"] == "client connected" && l["clientId"] == client_id.as_str()),
            "node-a: clientId {client_id} of 'write forwarded' is not a connection's id"
        );
        for (m, role) in [(by_id(&owner_id), "owner"), (by_id(&backup_id), "backup")] {
            let applied = wait_line(
                m,
                "write applied for peer",
                &format!("requestId {request_id}, role {role}"),
                |l| l["requestId"] == request_id && l["role"] == role,
            );
            assert_eq!(applied["originNodeId"], "node-a", "{}: {applied}", m.id);
            assert_eq!(
                applied["clientId"],
                client_id.as_str(),
                "{}: the clientId of origin's line: {applied}",
                m.id
            );
        }
    }
    // One batch, one trace: named by its last op, forwarded once.
    let forwarded = lines_with(&a, "write forwarded");
    let batch_lines = forwarded
        .iter()
        .filter(|l| l["requestId"] == "req-batch-2")
        .count();
    assert_eq!(
        batch_lines, 1,
        "node-a: 'write forwarded' lines for the batch"
    );
    assert!(
        !forwarded.iter().any(|l| l["requestId"] == "req-batch-1"),
        "node-a: requestId is the batch's last op id, not each op's"
    );
}

// ---- 4 --------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_loses_no_acked_write() {
    const MAP: &str = "under-load";
    let [a, mut b, c] = cluster::<3>(&[]);
    let b_cluster_port = b.cluster_port;

    let load = Load::start(&[&a, &c], MAP, 2_000, Duration::from_secs(2));
    let t0 = Instant::now();
    while load.sent() < 1_000 && t0.elapsed() < Duration::from_secs(1) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    eprintln!("kill -9 node-b after {} ops sent", load.sent());
    b.node.kill9();
    let killed = Instant::now();
    let acked = load.join().await;
    assert!(!acked.is_empty(), "no write was acked around the kill");
    eprintln!("{} writes acked", acked.len());

    let took = wait_members(&[&a, &c], 2, Duration::from_secs(10));
    eprintln!("node-b seen gone {took:?} after the writers stopped");
    let left = Duration::from_secs(10).saturating_sub(killed.elapsed());
    wait_owned_sum(&[&a, &c], left);
    eprintln!(
        "partitions all owned again {:?} after the kill",
        killed.elapsed()
    );
    for m in [&a, &c] {
        let took = wait_keys(m, MAP, &acked, Duration::from_secs(10)).await;
        eprintln!("{}: every acked write readable after {took:?}", m.id);
    }

    // Back with the same id and cluster port, an empty memory store: it must pull everything
    // before it calls itself ready.
    let b = start("node-b", Some(a.cluster_port), b_cluster_port, &[]);
    let all = [&a, &b, &c];
    wait_members(&all, 3, Duration::from_secs(10));
    let (_, took) = wait_for(
        "node-b: topgun_partitions_owned > 0 after the restart",
        Duration::from_secs(10),
        || {
            let s = status(&b);
            if s.owned.is_some_and(|o| o > 0.0) {
                Ok(())
            } else {
                Err(format!("{s:?}"))
            }
        },
    );
    eprintln!("restarted node-b owns partitions after {took:?}");
    assert_eq!(
        http_get(b.node.port, "/ready").expect("GET /ready").0,
        200,
        "node-b: /ready"
    );
    let found = read_map(&b, MAP).await;
    if let Some(d) = diff(&acked, &found) {
        panic!("node-b: acked writes not there right after /ready answered 200: {d}");
    }
    wait_for(
        &format!(
            "node-b: topgun_migration_records_total >= {} (it started empty)",
            acked.len()
        ),
        Duration::from_secs(5),
        || {
            let v = b.node.scrape().value("topgun_migration_records_total", &[]);
            match v {
                Some(v) if v >= acked.len() as f64 => Ok(()),
                v => Err(format!("{v:?}")),
            }
        },
    );
    let line = wait_line(&b, "migration finished", "partitions and records", |l| {
        l["partitions"].is_u64() && l["records"].is_u64()
    });
    eprintln!("node-b: {line}");
}

// ---- 5 --------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fourth_node_triggers_a_rebalance_without_losing_writes() {
    const MAP: &str = "growing";
    let [a, b, c] = cluster::<3>(&[]);

    let mut want: BTreeMap<String, Value> = BTreeMap::new();
    let mut w = connect(&a).await;
    for batch in 0..10 {
        let mut ops = Vec::new();
        for i in 0..10 {
            let n = batch * 10 + i;
            let (key, value) = (format!("before-{n:03}"), Value::from(format!("v{n}")));
            ops.push(put(&format!("before-op-{n}"), MAP, &key, &value, n));
            want.insert(key, value);
        }
        let last = format!("before-op-{}", batch * 10 + 9);
        write_acked(&mut w, "node-a", &op_batch(ops), &last).await;
    }
    let rebalances = |m: &Member| m.node.scrape().value("topgun_rebalance_total", &[]);
    let before = rebalances(&a).unwrap_or(0.0);

    // node-d joins while writes keep arriving through node-a and node-c.
    let load = Load::start(&[&a, &c], MAP, 2_000, Duration::from_secs(8));
    let a_port = a.cluster_port;
    let d = tokio::task::spawn_blocking(move || start("node-d", Some(a_port), 0, &[]))
        .await
        .expect("start node-d");
    let all = [&a, &b, &c, &d];
    let took = wait_settled(&all, Duration::from_secs(10));
    eprintln!(
        "4 nodes settled {took:?} after node-d was ready ({} ops sent)",
        load.sent()
    );
    agreed_tables(&all, Duration::from_secs(10)).await;
    let acked = load.finish().await;
    assert!(!acked.is_empty(), "no write acked while node-d joined");

    let after = rebalances(&a);
    assert!(
        after.is_some_and(|r| r > before),
        "node-a: topgun_rebalance_total {before} before node-d, {after:?} after"
    );
    let owned_d = status(&d).owned;
    assert!(owned_d.is_some_and(|o| o > 0.0), "node-d owns {owned_d:?}");
    wait_line(&a, "partitions rebalanced", "members 4", |l| {
        l["members"] == 4 || l["members"].as_array().is_some_and(|m| m.len() == 4)
    });
    let migrated = d.node.scrape().value("topgun_migration_records_total", &[]);
    assert!(
        migrated.is_some_and(|v| v > 0.0),
        "node-d: topgun_migration_records_total {migrated:?}: it joined a cluster holding data"
    );

    want.extend(acked);
    for m in [&d, &a] {
        let took = wait_keys(m, MAP, &want, Duration::from_secs(10)).await;
        eprintln!(
            "{}: all {} acked writes readable after {took:?}",
            m.id,
            want.len()
        );
    }
}

// ---- 6 --------------------------------------------------------------------------------------

/// Opens a TCP connection to a cluster port, sends `bytes`, and says what the node did.
fn poke(port: u16, bytes: &[u8]) -> String {
    let mut s = match TcpStream::connect(("127.0.0.1", port)) {
        Ok(s) => s,
        Err(e) => return format!("connect refused: {e}"),
    };
    let _ = s.set_write_timeout(Some(Duration::from_secs(2)));
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if let Err(e) = s.write_all(bytes) {
        return format!("write failed: {e}");
    }
    let mut buf = [0u8; 4096];
    let mut answered = 0;
    loop {
        match s.read(&mut buf) {
            Ok(0) => return format!("closed by the node after {answered} bytes back"),
            Ok(n) => answered += n,
            Err(e) => return format!("{answered} bytes back, then: {e}"),
        }
    }
}

fn frame(body: &[u8]) -> Vec<u8> {
    let mut f = (body.len() as u32).to_be_bytes().to_vec();
    f.extend_from_slice(body);
    f
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_peer_input_is_counted_and_harmless() {
    const MAP: &str = "after-garbage";
    let [mut a, b] = cluster::<2>(&[]);

    // The frame format is the implementation's own; these are wrong under any of them.
    let future_hello = encode(&map(&[
        ("type", "HELLO".into()),
        ("version", 99.into()),
        ("nodeId", "intruder".into()),
    ]));
    let mut huge = vec![0xff, 0xff, 0xff, 0xff];
    huge.extend_from_slice(b"not four gigabytes");
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "garbage frame",
            frame(&[0xde, 0xad, 0xbe, 0xef, 0x00, 0x01, 0x7f, 0xc1]),
        ),
        (
            "future version header",
            frame(b"TG\x63\x00rest-of-a-future-version"),
        ),
        ("future version hello", frame(&future_hello)),
        ("length 0xFFFFFFFF", huge),
        (
            "empty frame then garbage",
            [frame(b""), vec![0x13; 64]].concat(),
        ),
        (
            "HTTP request",
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        ),
    ];
    for (what, bytes) in &cases {
        eprintln!("{what}: {}", poke(a.cluster_port, bytes));
    }

    let (errors, _) = wait_for(
        "node-a: sum of topgun_cluster_peer_errors_total > 0",
        Duration::from_secs(10),
        || {
            let s = a.node.scrape();
            match family_sum(&s, "topgun_cluster_peer_errors_total") {
                v if v > 0.0 => Ok(s),
                v => Err(v.to_string()),
            }
        },
    );
    let series: Vec<_> = errors
        .samples
        .iter()
        .filter(|x| x.metric == "topgun_cluster_peer_errors_total")
        .collect();
    for x in &series {
        assert!(
            x.labels.get("reason").is_some_and(|r| !r.is_empty()),
            "a peer error series without a reason: {:?}",
            x.labels
        );
    }
    eprintln!(
        "peer errors: {:?}",
        series
            .iter()
            .map(|x| (x.labels.get("reason"), &x.value))
            .collect::<Vec<_>>()
    );

    // Harmless: still running, ready, in the cluster, and forwarding writes to its peer.
    assert!(
        a.node.wait_exit(Duration::ZERO).is_none(),
        "node-a exited after garbage on its cluster port"
    );
    assert_eq!(http_get(a.node.port, "/ready").expect("GET /ready").0, 200);
    wait_members(&[&a, &b], 2, Duration::from_secs(5));
    let table = agreed_tables(&[&a, &b], Duration::from_secs(10))
        .await
        .remove(0);
    let key = (0..)
        .map(|i| format!("probe-{i}"))
        .find(|k| table.owner_of(k) == "node-b")
        .expect("a key owned by node-b");
    let want = BTreeMap::from([(key.clone(), Value::from("still-works"))]);
    let mut w = connect(&a).await;
    write_acked(
        &mut w,
        "node-a",
        &client_op(put("after-garbage-1", MAP, &key, &want[&key], 1)),
        "after-garbage-1",
    )
    .await;
    for m in [&a, &b] {
        wait_keys(m, MAP, &want, Duration::from_secs(5)).await;
    }
}

// ---- 7 --------------------------------------------------------------------------------------

/// `--write-ack`: with a frozen backup (SIGSTOP, so its TCP connections stay open but nothing
/// answers), `owner+backup` must not acknowledge a write that backup never confirmed, while
/// `owner` acknowledges at once. The long probe keeps membership from declaring the frozen
/// node down during the test; the short cluster timeout bounds the wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_ack_owner_backup_waits_for_the_backup_and_owner_does_not() {
    for (mode, acked_expected) in [("owner+backup", false), ("owner", true)] {
        let extra = [
            "--write-ack",
            mode,
            "--cluster-timeout-ms",
            "700",
            "--cluster-probe-ms",
            "3000",
        ];
        let [a, b, c] = cluster::<3>(&extra);
        let table = agreed_tables(&[&a, &b, &c], Duration::from_secs(10))
            .await
            .remove(0);
        // A key owned by node-c and backed up by node-b: written through node-a, it needs
        // node-b's confirmation under owner+backup.
        let key = (0..)
            .map(|i| format!("ack-{i}"))
            .find(|k| table.owner_of(k) == "node-c" && table.backups_of(k)[0] == "node-b")
            .expect("a key owned by node-c, backed up by node-b");
        let mut w = connect(&a).await;
        let stopped = std::process::Command::new("kill")
            .args(["-STOP", &b.node.pid().to_string()])
            .status()
            .expect("kill -STOP");
        assert!(stopped.success());
        let t0 = Instant::now();
        w.send(&client_op(put("ack-op", "acks", &key, &"v".into(), 1)))
            .await;
        let answer = await_ack(&mut w, "ack-op").await;
        let took = t0.elapsed();
        let _ = std::process::Command::new("kill")
            .args(["-CONT", &b.node.pid().to_string()])
            .status();
        match (answer, acked_expected) {
            (Ack::Acked, true) => assert!(
                took < Duration::from_millis(600),
                "{mode}: the ack waited {took:?} although the frozen node is only a backup"
            ),
            (Ack::Refused(error), false) => {
                let message = get(&error, "payload")
                    .and_then(|p| get(p, "message"))
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned();
                assert!(
                    message.contains("backup node-b"),
                    "{mode}: the refusal should name the silent backup: {message}"
                );
                assert!(
                    took >= Duration::from_millis(650),
                    "{mode}: refused after {took:?}, before the 700 ms cluster timeout"
                );
                wait_for(
                    "a timeout counted on node-c",
                    Duration::from_secs(5),
                    || {
                        let s = c.node.scrape();
                        let n = s.value_or_zero(
                            "topgun_cluster_peer_errors_total",
                            &[("reason", "timeout")],
                        );
                        if n >= 1.0 {
                            Ok(())
                        } else {
                            Err(format!("timeouts {n}"))
                        }
                    },
                );
            }
            (Ack::Acked, false) => panic!("{mode}: acknowledged without the backup's confirmation"),
            (Ack::Refused(e), true) => panic!("{mode}: refused: {e:?}"),
            (Ack::Lost(why), _) => panic!("{mode}: no answer: {why}"),
        }
        // Either way the owner has the write, and the backup gets it once it runs again.
        wait_keys(
            &b,
            "acks",
            &BTreeMap::from([(key.clone(), Value::from("v"))]),
            Duration::from_secs(10),
        )
        .await;
    }
}

// ---- 8 --------------------------------------------------------------------------------------

/// Starts `id` on redb in `dir` (a fresh one when `None`), like [`start`] otherwise.
fn start_durable(
    id: &str,
    seed: Option<u16>,
    cluster_port: u16,
    dir: Option<tempfile::TempDir>,
) -> Member {
    let options = NodeOptions {
        memory_storage: false,
        ..Default::default()
    };
    launch(id, seed, cluster_port, &[], options, dir)
}

/// A node killed and restarted on its own redb directory comes back with what its disk held
/// and what it missed while down (pulled from the peer), the newer value winning where both
/// wrote the same key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_keeps_its_disk_and_pulls_what_it_missed() {
    const MAP: &str = "durable";
    let a = start_durable("node-a", None, 0, None);
    let b = start_durable("node-b", Some(a.cluster_port), 0, None);
    wait_settled(&[&a, &b], Duration::from_secs(10));

    let mut want = BTreeMap::new();
    let mut via_b = connect(&b).await;
    for i in 0..50 {
        let key = format!("disk-{i:02}");
        let id = format!("disk-op-{i}");
        let frame = client_op(put(&id, MAP, &key, &"from-b".into(), 0));
        write_acked(&mut via_b, "node-b", &frame, &id).await;
        want.insert(key, Value::from("from-b"));
    }
    let frame = client_op(put("both-1", MAP, "both", &"old".into(), 0));
    write_acked(&mut via_b, "node-b", &frame, "both-1").await;
    drop(via_b);

    let b_port = b.cluster_port;
    let b_dir = b.node.into_dir();
    wait_members(&[&a], 1, Duration::from_secs(10));
    let mut via_a = connect(&a).await;
    for i in 0..50 {
        let key = format!("missed-{i:02}");
        let id = format!("missed-op-{i}");
        let frame = client_op(put(&id, MAP, &key, &"from-a".into(), 0));
        write_acked(&mut via_a, "node-a", &frame, &id).await;
        want.insert(key, Value::from("from-a"));
    }
    let frame = client_op(put("both-2", MAP, "both", &"new".into(), 1));
    write_acked(&mut via_a, "node-a", &frame, "both-2").await;
    want.insert("both".into(), Value::from("new"));

    let b = start_durable("node-b", Some(a.cluster_port), b_port, Some(b_dir));
    let opened = wait_line(&b, "storage opened", "redb records recovered", |l| {
        l["backend"] == "redb" && l["lwwRecords"].as_u64().is_some_and(|n| n >= 51)
    });
    eprintln!("node-b: {opened}");
    // Ready means joined and pulled: everything is there at once, no polling.
    let found = read_map(&b, MAP).await;
    if let Some(d) = diff(&want, &found) {
        panic!("node-b after its restart on its own disk: {d}");
    }
    wait_keys(&a, MAP, &want, Duration::from_secs(5)).await;
}

// ---- 9 --------------------------------------------------------------------------------------

/// The other write paths reach every node too: OR-Map adds and removals sent to node-a are
/// walked the same through OR sync on node-b, and a `POST /sync` batch sent to node-c is read
/// on node-b.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn or_map_and_http_sync_writes_reach_every_node() {
    let [a, b, c] = cluster::<3>(&[]);
    let t = Ts::new(now_millis(), 0, "cluster-test");
    let mut via_a = connect(&a).await;
    for (key, tag) in [("k1", "t1"), ("k1", "t2"), ("k2", "t3"), ("k3", "t4")] {
        via_a.send_acked(&or_add(key, tag, "x".into(), &t)).await;
    }
    via_a.send_acked(&or_remove("k1", "t1")).await;
    let want: BTreeMap<String, (Vec<String>, Vec<String>)> = BTreeMap::from([
        ("k1".into(), (vec!["t2".into()], vec!["t1".into()])),
        ("k2".into(), (vec!["t3".into()], vec![])),
        ("k3".into(), (vec!["t4".into()], vec![])),
    ]);
    let mut on_b = connect(&b).await;
    let t0 = Instant::now();
    loop {
        let seen = or_walk(&mut on_b).await;
        if seen == want {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "node-b's OR map: want {want:?}, saw {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let body = map(&[
        ("clientId", "http-client".into()),
        ("clientHlc", t.wire()),
        (
            "operations",
            Value::Array(vec![
                put_op("h1", "http", "h1", "one".into(), &t),
                put_op("h2", "http", "h2", "two".into(), &t),
            ]),
        ),
    ]);
    let resp = post_sync(c.node.port, &body);
    assert_eq!(
        get(&resp, "ack")
            .and_then(|a| get(a, "lastId"))
            .and_then(Value::as_str),
        Some("h2"),
        "{resp:?}"
    );
    let want = BTreeMap::from([
        ("h1".to_owned(), Value::from("one")),
        ("h2".to_owned(), Value::from("two")),
    ]);
    wait_keys(&b, "http", &want, Duration::from_secs(5)).await;
}

// ---- 10 -------------------------------------------------------------------------------------

/// `--backup-count 2` on three nodes: every node is owner or synchronous backup of every
/// partition (docs/cluster.md's recipe for read-your-writes everywhere), so an ack waits for
/// all three: with node-c frozen, a write node-b owns is refused, where with one backup it
/// would not need node-c.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_backups_make_every_node_a_synchronous_copy() {
    const MAP: &str = "everywhere";
    let extra = [
        "--backup-count",
        "2",
        "--cluster-timeout-ms",
        "700",
        "--cluster-probe-ms",
        "3000",
    ];
    let a = start("node-a", None, 0, &extra);
    let b = start("node-b", Some(a.cluster_port), 0, &extra);
    let c = start("node-c", Some(a.cluster_port), 0, &extra);
    let all = [&a, &b, &c];
    wait_for(
        "owned sum 271 and backup sum 542 on 3 members",
        Duration::from_secs(10),
        || {
            let seen: Vec<Status> = all.iter().map(|m| status(m)).collect();
            let owned: f64 = seen.iter().filter_map(|s| s.owned).sum();
            let backup: f64 = seen.iter().filter_map(|s| s.backup).sum();
            if seen.iter().all(|s| s.members == Some(3.0)) && owned == 271.0 && backup == 542.0 {
                Ok(())
            } else {
                Err(format!("owned {owned}, backup {backup}; {seen:?}"))
            }
        },
    );
    let owner = |k: &str| fnv1a(k) as usize % PARTITIONS;
    let map = partition_map(&a).await;
    for (p, backups) in map.backups.iter().enumerate() {
        let mut copies: Vec<&String> = backups.iter().chain([&map.owners[p]]).collect();
        copies.sort();
        assert_eq!(copies, ["node-a", "node-b", "node-c"], "partition {p}");
    }
    let key = (0..)
        .map(|i| format!("e-{i}"))
        .find(|k| map.owners[owner(k)] == "node-b")
        .expect("a key node-b owns");

    let mut via_a = connect(&a).await;
    let ok = client_op(put("e-ok", MAP, "warm", &"v".into(), 0));
    write_acked(&mut via_a, "node-a", &ok, "e-ok").await;
    let pid = c.node.pid().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-STOP", &pid])
        .status()
        .expect("kill -STOP")
        .success());
    via_a
        .send(&client_op(put("e-frozen", MAP, &key, &"v".into(), 1)))
        .await;
    let answer = await_ack(&mut via_a, "e-frozen").await;
    let _ = std::process::Command::new("kill")
        .args(["-CONT", &pid])
        .status();
    match answer {
        Ack::Refused(e) => assert!(
            format!("{e:?}").contains("backup node-c"),
            "refused, but not for node-c: {e:?}"
        ),
        Ack::Acked => panic!("acknowledged while node-c, a synchronous backup, was frozen"),
        Ack::Lost(why) => panic!("no answer: {why}"),
    }
}

// ---- 11 -------------------------------------------------------------------------------------

/// The next PARTITION_MAP pushed to `c` (or answered) that `pred` accepts; panics after
/// `within` with the versions and members of the ones seen.
async fn next_map(
    c: &mut Client,
    who: &str,
    within: Duration,
    pred: impl Fn(&Table) -> bool,
) -> Table {
    let deadline = tokio::time::Instant::now() + within;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let Some(v) = c.recv_type_within("PARTITION_MAP", left).await else {
            panic!("{who}: no fitting PARTITION_MAP within {within:?}; saw {seen:?}");
        };
        let t = Table::parse(who, payload(&v));
        if pred(&t) {
            return t;
        }
        seen.push((t.version, t.nodes.keys().cloned().collect::<Vec<_>>()));
    }
}

/// TopGun's cluster client routes by PARTITION_MAP and only takes a map with a higher version
/// than its own. After a node stops, clients connected to the others get, without asking, a
/// map with a higher version that no longer names it, within 15 s at the default probe period;
/// and versions are comparable across nodes, so the new map is higher than any old one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_clients_get_a_newer_map_without_a_stopped_node() {
    let [a, b, mut c] = cluster::<3>(&["--cluster-probe-ms", "1000"]);
    let mut clients = Vec::new();
    let mut before = 0;
    for m in [&a, &b] {
        let mut client = connect(m).await;
        client
            .send(&map(&[("type", "PARTITION_MAP_REQUEST".into())]))
            .await;
        let t = next_map(&mut client, &m.id, Duration::from_secs(10), |t| {
            t.nodes.len() == 3
        })
        .await;
        before = before.max(t.version);
        clients.push((m.id.clone(), client));
    }
    c.node.kill9();
    let killed = Instant::now();
    for (id, client) in &mut clients {
        let t = next_map(client, id, Duration::from_secs(15), |t| {
            !t.nodes.contains_key("node-c")
        })
        .await;
        assert!(
            t.version > before,
            "{id}: the map without node-c has version {} <= {before} of the maps before it",
            t.version
        );
        assert_eq!(t.nodes.len(), 2, "{id}: {:?}", t.nodes);
        t.check_shape();
        eprintln!(
            "{id}: map v{} without node-c pushed {:?} after the kill",
            t.version,
            killed.elapsed()
        );
    }
}
