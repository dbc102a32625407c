//! Guards issue 17 (item 4): the per-actor telemetry that mature actor runtimes have (Akka's
//! mailbox time and dead letters, BEAM's per-process view). Before it, an operator saw how
//! long a message took to handle but not how long it sat in a mailbox first (the latency a
//! backlog adds), messages for actors that had gone vanished without a trace, and
//! `/debug/actors` could not say which of thousands of connections was the busy one.
//! Driven through the real binary: its `/metrics` and `/debug/actors`.
mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::proto::*;
use common::*;

const TOKEN: &str = "actor-telemetry-debug-token";

const KINDS: [&str; 9] = [
    "connection",
    "gate",
    "shard",
    "event_queue",
    "cluster",
    "storage",
    "metrics",
    "tls",
    "keys",
];

fn wait_count(s: &Scrape, actor: &str) -> f64 {
    s.count_sum("topgun_actor_mailbox_wait_seconds", &[("actor", actor)])
        .map_or(0.0, |(count, _)| count)
}

fn dead_letters(s: &Scrape, actor: &str) -> f64 {
    s.value_or_zero("topgun_actor_dead_letters_total", &[("actor", actor)])
}

#[test]
fn both_families_exist_at_zero_for_every_kind_from_the_start() {
    let node = Node::start();
    let s = node.scrape();
    assert_eq!(
        s.type_of("topgun_actor_mailbox_wait_seconds").as_deref(),
        Some("histogram")
    );
    assert_eq!(
        s.type_of("topgun_actor_dead_letters_total").as_deref(),
        Some("counter")
    );
    for actor in KINDS {
        assert!(
            s.count_sum("topgun_actor_mailbox_wait_seconds", &[("actor", actor)])
                .is_some(),
            "no wait series for {actor}"
        );
        assert_eq!(
            s.value("topgun_actor_dead_letters_total", &[("actor", actor)]),
            Some(0.0),
            "dead letters of {actor}"
        );
    }
}

#[tokio::test]
async fn mailbox_waits_are_timed_for_connections_shards_and_stripes() {
    let node = Node::start_with(NodeOptions::default().args(&["--shards", "2"]));
    let mut sub = node.authed_client().await;
    sub.subscribe("q", "feed", map(&[])).await;
    let mut w = node.authed_client().await;
    let before = node.scrape();

    // Writes go to the shards (ApplyOps), their changes to the stripes (RouteEvents) and on to
    // the subscriber's connection (a live event): three mailboxes.
    for b in 0..5 {
        write_batch(&mut w, "feed", &format!("b{b}-"), 20).await;
    }
    let got = sub.drain(Duration::from_millis(500)).await;
    assert!(
        got.iter().any(|m| msg_type(m) == "QUERY_UPDATE"),
        "the subscriber heard of the writes: {got:?}"
    );

    let s = wait_scrape(&node, "mailbox waits counted", |s| {
        ["connection", "shard", "event_queue"]
            .iter()
            .all(|a| wait_count(s, a) > wait_count(&before, a))
    });
    for actor in ["connection", "shard", "event_queue"] {
        let (count, sum) = s
            .count_sum("topgun_actor_mailbox_wait_seconds", &[("actor", actor)])
            .expect("series");
        let grew = count - wait_count(&before, actor);
        // Five acknowledged batches: each reached a shard, a stripe and the subscriber in at
        // least one message (a stripe may hand a connection several events in one).
        assert!(grew >= 5.0, "{actor}: {grew}");
        assert!(
            sum >= 0.0 && sum / count < 1.0,
            "{actor}: mean wait {}",
            sum / count
        );
    }
}

#[tokio::test]
async fn telemetry_off_counts_no_waits() {
    let node = Node::start_with(NodeOptions::default().args(&["--actor-telemetry", "false"]));
    let mut sub = node.authed_client().await;
    sub.subscribe("q", "feed", map(&[])).await;
    let mut w = node.authed_client().await;
    write_batch(&mut w, "feed", "k", 20).await;
    sub.drain(Duration::from_millis(300)).await;
    // The messages are counted (they always are), their waits are not measured.
    let s = wait_scrape(&node, "shard messages counted", |s| {
        s.value_or_zero("topgun_actor_messages_total", &[("actor", "shard")]) >= 1.0
    });
    for actor in KINDS {
        assert_eq!(wait_count(&s, actor), 0.0, "{actor}");
    }
}

/// Subscribers that leave while writes keep fanning out: the stripes route events to their
/// connections until they hear of the close, and what reaches a connection actor that has
/// stopped is a dead letter, counted instead of vanishing.
#[tokio::test]
async fn live_events_for_clients_that_left_are_dead_letters() {
    // A test task starved by a loaded machine must not read its subscribers so slowly that the
    // node evicts them as slow consumers before their QUERY_RESP: a deep outbound queue.
    let node = Node::start_with(NodeOptions::default().args(&[
        "--event-queue-stripes",
        "1",
        "--outbound-queue",
        "8192",
    ]));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (url, stop) = (node.url(), stop.clone());
        tokio::spawn(async move {
            let mut w = Client::connect(&url).await;
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                // The same 1,000 keys over and over: every write is a change to route, and a
                // new subscriber's snapshot stays small.
                write_batch(&mut w, "feed", &format!("w{}-", i % 5), 200).await;
                i += 1;
            }
            i
        })
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut rounds = 0;
    let counted = loop {
        rounds += 1;
        let mut subs = Vec::new();
        for n in 0..10 {
            let mut c = node.client().await;
            c.subscribe(&format!("q{n}"), "feed", map(&[])).await;
            subs.push(c);
        }
        // Gone without a Close frame, as a client whose network drops.
        drop(subs);
        node.wait_metric("topgun_connected_clients", &[], 1.0);
        // Every closed connection sent its final report: what it left behind is counted.
        let s = node.scrape();
        if dead_letters(&s, "connection") > 0.0 {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "no dead letter after {rounds} rounds of 10 subscribers leaving"
        );
    };
    stop.store(true, Ordering::Relaxed);
    let batches = writer.await.expect("writer");
    assert!(batches > 0);
    // Only connections stopped; every other kind kept its letters.
    for actor in KINDS.iter().filter(|a| **a != "connection") {
        assert_eq!(dead_letters(&counted, actor), 0.0, "{actor}");
    }
}

fn debug_get(node: &Node, path: &str, text: bool) -> (u16, String) {
    let bearer = format!("Bearer {TOKEN}");
    let mut headers = vec![("Authorization", bearer.as_str())];
    if text {
        headers.push(("Accept", "text/plain"));
    }
    http_request(node.port, "GET", path, &headers, b"").expect("HTTP request")
}

/// A JWT client of user `sub`, and its clientId as the node's log names it.
async fn client_of(node: &Node, sub: &str) -> (Client, String) {
    let mut c = node.client().await;
    let first = c.recv().await.expect("AUTH_REQUIRED");
    assert_eq!(msg_type(&first), "AUTH_REQUIRED");
    c.send(&auth(&token(SECRET, sub, 3600))).await;
    let ack = c.recv().await.expect("AUTH_ACK");
    assert_eq!(msg_type(&ack), "AUTH_ACK", "{ack:?}");
    let line = node.wait_log("client authenticated", |l| l["userId"] == sub);
    let id = line["clientId"].as_str().expect("clientId").to_owned();
    (c, id)
}

#[tokio::test]
async fn debug_actors_top_names_the_busiest_connection_by_its_client_id() {
    let node = Node::start_with(NodeOptions::jwt().args(&["--debug-token", TOKEN]));
    let (mut busy, busy_id) = client_of(&node, "busy-user").await;
    let mut quiet = Vec::new();
    for n in 0..3 {
        let (mut c, _) = client_of(&node, &format!("quiet-{n}")).await;
        c.ping_pong().await;
        quiet.push(c);
    }
    for b in 0..30 {
        write_batch(&mut busy, "hot", &format!("b{b}-"), 50).await;
    }
    for _ in 0..200 {
        busy.ping_pong().await;
    }

    // Every actor reports on its own timer: wait until the busy connection's, the quiet
    // ones' and the shards' reports are all in.
    let deadline = Instant::now() + Duration::from_secs(10);
    let top = loop {
        let (status, body) = debug_get(&node, "/debug/actors?top=3", false);
        assert_eq!(status, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        let conns = &v["top"]["connection"];
        let shards_busy = v["top"]["shard"]["byBusy"]
            .as_array()
            .is_some_and(|l| !l.is_empty());
        if conns["byBusy"][0]["id"] == busy_id.as_str()
            && conns["reporting"].as_u64() >= Some(4)
            && shards_busy
        {
            break v;
        }
        assert!(
            Instant::now() < deadline,
            "busiest connection not first, or reports missing: {body}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let conns = &top["top"]["connection"];
    let by_busy = conns["byBusy"].as_array().expect("byBusy");
    assert!(!by_busy.is_empty() && by_busy.len() <= 3, "{by_busy:?}");
    assert!(conns["reporting"].as_u64() >= Some(4), "{conns}");
    assert!(
        by_busy[0]["busyPercent"].as_f64() > Some(0.0),
        "{by_busy:?}"
    );
    for list in ["byMailboxDepth", "byMailboxWait"] {
        assert!(
            conns[list].as_array().is_some_and(|l| l.len() <= 3),
            "{list}: {conns}"
        );
    }
    // Shards are listed by member name, and the rows carry mailbox waits.
    let shard_ids: Vec<&str> = top["top"]["shard"]["byBusy"]
        .as_array()
        .expect("shard tops")
        .iter()
        .filter_map(|e| e["id"].as_str())
        .collect();
    assert!(
        !shard_ids.is_empty() && shard_ids.iter().all(|id| id.starts_with("shard-")),
        "{shard_ids:?}"
    );
    let rows = top["actors"].as_array().expect("rows");
    assert!(
        rows.iter().all(|r| r.get("waitMeanSeconds").is_some()),
        "{rows:?}"
    );

    // The same in the table a person reads.
    let (status, table) = debug_get(&node, "/debug/actors?top=3", true);
    assert_eq!(status, 200);
    assert!(table.contains("TOP connection BY BUSY"), "{table}");
    assert!(table.contains(&busy_id), "{table}");

    // top=0 lists nothing; a top that is not a number is refused.
    let (_, body) = debug_get(&node, "/debug/actors?top=0", false);
    let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(v["top"], serde_json::json!({}), "{body}");
    assert_eq!(debug_get(&node, "/debug/actors?top=many", false).0, 400);
    drop(quiet);
}
