//! Guards issue 5: every one of the twenty metrics of `seed/observability.txt` moves when the
//! thing it counts happens, with the exact value (the seed registered six of them and never
//! updated them, so alerts on them could never fire). One test per seed metric, driven through
//! the real binary, plus the slow-consumer cut-off (`topgun_outbound_dropped_total`) and the
//! per-actor invariants at rest.
mod common;

use std::time::{Duration, Instant};

use common::proto::*;
use common::*;
use tokio_tungstenite::MaybeTlsStream;

fn opts(args: &[&str]) -> NodeOptions {
    NodeOptions::default().args(args)
}

fn v(s: &Scrape, name: &str) -> f64 {
    s.value_or_zero(name, &[])
}

/// Writes `n` new keys of `map_name` in one OP_BATCH; nothing but its ack comes back.
async fn write_alone(c: &mut Client, map_name: &str, prefix: &str, n: usize) {
    let replies = write_batch(c, map_name, prefix, n).await;
    assert_eq!(replies.len(), 1, "{replies:?}");
}

/// At rest: enqueued = dequeued + size, size 0, every mailbox empty.
fn assert_at_rest(node: &Node) -> Scrape {
    wait_scrape(node, "queue and mailboxes drained", |s| {
        let enq = v(s, "topgun_event_queue_enqueued_total");
        let deq = v(s, "topgun_event_queue_dequeued_total");
        let size = v(s, "topgun_event_queue_size");
        let mailboxes_empty = s
            .samples
            .iter()
            .filter(|x| x.metric == "topgun_actor_mailbox_depth")
            .all(|x| matches!(x.value, prometheus_parse::Value::Gauge(g) if g == 0.0));
        enq == deq + size && size == 0.0 && mailboxes_empty
    })
}

// ---- connections ------------------------------------------------------------------------------

#[tokio::test]
async fn connected_clients_follows_open_sockets() {
    let node = Node::start();
    node.wait_metric("topgun_connected_clients", &[], 0.0);
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(node.authed_client().await);
    }
    node.wait_metric("topgun_connected_clients", &[], 3.0);
    let _ = clients.pop().unwrap().ws.close(None).await;
    node.wait_metric("topgun_connected_clients", &[], 2.0);
    drop(clients.pop()); // TCP gone without a Close frame
    node.wait_metric("topgun_connected_clients", &[], 1.0);
}

#[tokio::test]
async fn connections_accepted_total_counts_every_admitted_socket() {
    let node = Node::start();
    let mut clients = Vec::new();
    for _ in 0..5 {
        clients.push(node.authed_client().await);
    }
    drop(clients);
    node.wait_metric("topgun_connections_accepted_total", &[], 5.0);
    let _c = node.authed_client().await;
    node.wait_metric("topgun_connections_accepted_total", &[], 6.0);
    assert_eq!(v(&node.scrape(), "topgun_connections_rejected_total"), 0.0);
}

#[tokio::test]
async fn connections_rejected_total_counts_rate_limited_sockets() {
    let node = Node::start_with(opts(&["--connection-rate", "3"]));
    let mut ok = Vec::new();
    let mut refused = 0;
    for _ in 0..5 {
        match Client::try_connect(&node.url()).await {
            Ok(mut c) => {
                // Admitted, or closed with 1013 right after the upgrade.
                c.send(&ping(1.0)).await;
                match c.recv_within(Duration::from_secs(2)).await {
                    Some(p) if msg_type(&p) == "PONG" => ok.push(c),
                    _ => refused += 1,
                }
            }
            Err(_) => refused += 1,
        }
    }
    assert_eq!(ok.len(), 3, "3 per second admitted");
    assert_eq!(refused, 2);
    node.wait_metric("topgun_connections_rejected_total", &[], 2.0);
    node.wait_metric("topgun_connections_accepted_total", &[], 3.0);
}

#[tokio::test]
async fn connections_pending_counts_unfinished_handshakes() {
    let node = Node::start_with(NodeOptions::jwt());
    let mut a = node.client().await;
    let mut b = node.client().await;
    assert_eq!(msg_type(&a.recv().await.unwrap()), "AUTH_REQUIRED");
    assert_eq!(msg_type(&b.recv().await.unwrap()), "AUTH_REQUIRED");
    node.wait_metric("topgun_connections_pending", &[], 2.0);
    a.send(&auth(&token(SECRET, "user-1", 3600))).await;
    assert_eq!(msg_type(&a.recv().await.unwrap()), "AUTH_ACK");
    node.wait_metric("topgun_connections_pending", &[], 1.0);
    drop(b);
    node.wait_metric("topgun_connections_pending", &[], 0.0);
    node.wait_metric("topgun_connected_clients", &[], 1.0);
}

#[tokio::test]
async fn connection_rate_per_second_is_the_last_full_second() {
    let node = Node::start();
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(node.authed_client().await);
    }
    // The three may straddle a second boundary of the node's window: then the gauge shows the
    // two parts one after the other. Either way the non-zero runs add up to 3.
    let deadline = Instant::now() + Duration::from_millis(2_600);
    let mut runs: Vec<f64> = Vec::new();
    while Instant::now() < deadline {
        let g = v(&node.scrape(), "topgun_connection_rate_per_second");
        if runs.last() != Some(&g) {
            runs.push(g);
        }
        std::thread::sleep(Duration::from_millis(30));
    }
    let nonzero: Vec<f64> = runs.iter().copied().filter(|g| *g > 0.0).collect();
    assert_eq!(nonzero.iter().sum::<f64>(), 3.0, "runs {runs:?}");
    assert!(nonzero.len() <= 2, "runs {runs:?}");
    assert_eq!(
        runs.last(),
        Some(&0.0),
        "trailing window falls back to 0: {runs:?}"
    );
}

// ---- data -------------------------------------------------------------------------------------

#[tokio::test]
async fn map_size_items_counts_live_entries() {
    let node = Node::start();
    let mut c = node.authed_client().await;
    write_alone(&mut c, "inventory", "item", 7).await;
    node.wait_metric("topgun_map_size_items", &[("map", "inventory")], 7.0);
    let t = Ts::new(now_millis() + 1, 0, "w");
    c.send_acked(&client_op(remove_op("x", "inventory", "item3", &t)))
        .await;
    node.wait_metric("topgun_map_size_items", &[("map", "inventory")], 6.0);
    node.wait_metric("topgun_map_tombstones", &[("map", "inventory")], 1.0);
}

#[tokio::test]
async fn ops_total_counts_each_op() {
    let node = Node::start();
    let mut c = node.authed_client().await;
    write_alone(&mut c, "m", "k", 12).await;
    c.sync_root("m").await;
    c.subscribe("q", "m", map(&[])).await;
    node.wait_metric("topgun_ops_total", &[("type", "PUT"), ("map", "m")], 12.0);
    node.wait_metric("topgun_ops_total", &[("type", "GET"), ("map", "m")], 1.0);
    node.wait_metric(
        "topgun_ops_total",
        &[("type", "SUBSCRIBE"), ("map", "m")],
        1.0,
    );
}

#[tokio::test]
async fn memory_usage_bytes_follows_the_heap() {
    let node = Node::start();
    let before = wait_scrape(&node, "memory reported", |s| {
        v(s, "topgun_memory_usage_bytes") > 0.0
    });
    let before = v(&before, "topgun_memory_usage_bytes");
    let mut c = node.authed_client().await;
    let blob = "x".repeat(4_000);
    for b in 0..10 {
        let t = Ts::new(now_millis(), 0, "w");
        let ops = (0..400)
            .map(|i| {
                put_op(
                    &i.to_string(),
                    "blobs",
                    &format!("b{b}-{i}"),
                    blob.as_str().into(),
                    &t,
                )
            })
            .collect();
        c.send_acked(&op_batch(ops)).await;
    }
    // 16 MB of values stored: the heap grew by at least half of that.
    wait_scrape(&node, "heap grew by 8 MB", |s| {
        v(s, "topgun_memory_usage_bytes") > before + 8_000_000.0
    });
}

#[tokio::test]
async fn cluster_members_is_one_standalone() {
    let node = Node::start();
    node.wait_metric("topgun_cluster_members", &[], 1.0);
    assert_eq!(
        node.scrape().type_of("topgun_cluster_members").as_deref(),
        Some("gauge")
    );
}

// ---- routing ----------------------------------------------------------------------------------

async fn three_subscribers(node: &Node, map_name: &str) -> Vec<Client> {
    let mut subs = Vec::new();
    for i in 0..3 {
        let mut c = node.authed_client().await;
        c.subscribe(&format!("q{i}"), map_name, map(&[])).await;
        subs.push(c);
    }
    subs
}

#[tokio::test]
async fn events_routed_total_one_per_changed_key() {
    let node = Node::start();
    let mut subs = three_subscribers(&node, "watched").await;
    let mut w = node.authed_client().await;
    write_alone(&mut w, "watched", "k", 1).await;
    for s in &mut subs {
        s.recv_type("QUERY_UPDATE").await.expect("delivered");
    }
    node.wait_metric("topgun_events_routed_total", &[], 1.0);
    let s = node.scrape();
    assert_eq!(
        s.count_sum("topgun_subscribers_per_event", &[]),
        Some((1.0, 3.0))
    );
    assert_eq!(v(&s, "topgun_events_filtered_by_subscription"), 0.0);

    write_alone(&mut w, "watched", "j", 4).await;
    node.wait_metric("topgun_events_routed_total", &[], 5.0);
    let s = node.scrape();
    assert_eq!(
        s.count_sum("topgun_subscribers_per_event", &[]),
        Some((5.0, 15.0))
    );
}

#[tokio::test]
async fn events_filtered_by_subscription_when_nobody_watches() {
    let node = Node::start();
    let _subs = three_subscribers(&node, "watched").await;
    let mut w = node.authed_client().await;
    write_alone(&mut w, "unwatched", "k", 1).await;
    node.wait_metric("topgun_events_filtered_by_subscription", &[], 1.0);
    let s = node.wait_metric("topgun_events_routed_total", &[], 1.0);
    assert_eq!(
        s.count_sum("topgun_subscribers_per_event", &[]),
        Some((0.0, 0.0)),
        "an event without subscribers is not observed"
    );
    assert_eq!(
        s.type_of("topgun_events_filtered_by_subscription")
            .as_deref(),
        Some("counter")
    );
}

#[tokio::test]
async fn subscribers_per_event_summary_counts_and_quantiles() {
    let node = Node::start();
    let mut subs = three_subscribers(&node, "watched").await;
    let mut one = node.authed_client().await;
    one.subscribe("solo", "solo-map", map(&[])).await;
    let mut w = node.authed_client().await;
    write_alone(&mut w, "watched", "k", 1).await;
    write_alone(&mut w, "solo-map", "k", 1).await;
    for s in &mut subs {
        s.recv_type("QUERY_UPDATE").await.unwrap();
    }
    one.recv_type("QUERY_UPDATE").await.unwrap();
    let s = wait_scrape(&node, "two observations", |s| {
        s.count_sum("topgun_subscribers_per_event", &[]) == Some((2.0, 4.0))
    });
    assert_eq!(
        s.type_of("topgun_subscribers_per_event").as_deref(),
        Some("summary")
    );
    let q = s.quantiles("topgun_subscribers_per_event");
    let qs: Vec<f64> = q.iter().map(|(q, _)| *q).collect();
    assert_eq!(qs, [0.5, 0.9, 0.99]);
    for (quantile, value) in q {
        assert!(
            value == 1.0 || value == 3.0,
            "q{quantile} = {value}: not an observed subscriber count"
        );
    }
}

#[tokio::test]
async fn event_queue_enqueued_total_one_per_applied_write() {
    let node = Node::start();
    let mut w = node.authed_client().await;
    write_alone(&mut w, "m", "k", 40).await;
    // A stale write changes nothing and is no event.
    let old = Ts::new(1_600_000_000_000, 0, "w");
    w.send_acked(&client_op(put_op("s", "m", "k1", 0.into(), &old)))
        .await;
    node.wait_metric("topgun_event_queue_enqueued_total", &[], 40.0);
    assert_at_rest(&node);
}

#[tokio::test]
async fn event_queue_dequeued_total_matches_enqueued_at_rest() {
    let node = Node::start_with(opts(&["--event-queue-stripes", "3"]));
    let _subs = three_subscribers(&node, "m").await;
    let mut w = node.authed_client().await;
    for i in 0..5 {
        write_alone(&mut w, "m", &format!("b{i}-"), 20).await;
    }
    node.wait_metric("topgun_event_queue_dequeued_total", &[], 100.0);
    let s = assert_at_rest(&node);
    assert_eq!(v(&s, "topgun_event_queue_enqueued_total"), 100.0);
}

#[tokio::test]
async fn event_queue_size_and_capacity_gauges() {
    let node = Node::start_with(opts(&[
        "--event-queue-capacity",
        "400",
        "--event-queue-stripes",
        "4",
    ]));
    let s = node.wait_metric("topgun_event_queue_capacity", &[], 400.0);
    assert_eq!(v(&s, "topgun_event_queue_size"), 0.0);
    let mut w = node.authed_client().await;
    write_alone(&mut w, "m", "k", 50).await;
    let s = assert_at_rest(&node);
    for stripe in ["0", "1", "2", "3"] {
        assert_eq!(
            s.value("topgun_event_queue_stripe_size", &[("stripe", stripe)]),
            Some(0.0),
            "stripe {stripe}"
        );
    }
    assert_eq!(
        s.type_of("topgun_event_queue_size").as_deref(),
        Some("gauge")
    );
}

#[tokio::test]
async fn event_queue_rejected_total_with_a_tiny_queue_keeps_every_write() {
    let node = Node::start_with(opts(&[
        "--event-queue-capacity",
        "8",
        "--event-queue-stripes",
        "1",
        "--shards",
        "1",
    ]));
    let mut sub = node.authed_client().await;
    sub.subscribe("all", "burst", map(&[])).await;
    let mut w = node.authed_client().await;
    let t = Ts::new(now_millis(), 0, "w");
    let ops = (0..500)
        .map(|i| put_op(&i.to_string(), "burst", &format!("k{i:03}"), i.into(), &t))
        .collect();
    let replies = w.send_acked(&op_batch(ops)).await;
    assert_eq!(replies.len(), 1, "acked, nothing rejected: {replies:?}");
    assert_eq!(pstr(&replies[0], "lastId"), Some("499"));

    // One shard, one stripe of 8: the batch's 500 events, 8 fit, 492 are refused.
    node.wait_metric("topgun_event_queue_rejected_total", &[], 492.0);
    node.wait_metric("topgun_event_queue_enqueued_total", &[], 8.0);
    assert_at_rest(&node);
    // The subscriber heard of exactly the routed ones...
    let mut heard = 0;
    while let Some(u) = sub
        .recv_type_within("QUERY_UPDATE", Duration::from_millis(500))
        .await
    {
        assert_eq!(pstr(&u, "changeType"), Some("ENTER"));
        heard += 1;
    }
    assert_eq!(heard, 8);
    // ...and every write is applied and readable.
    let mut r = node.authed_client().await;
    let resp = r.subscribe("check", "burst", map(&[])).await;
    assert_eq!(results(&resp).len(), 500);
    node.wait_metric("topgun_map_size_items", &[("map", "burst")], 500.0);

    let near_full: Vec<_> = node
        .logs()
        .into_iter()
        .filter(|l| l["msg"] == "event queue stripe near full")
        .collect();
    assert_eq!(near_full.len(), 1, "{near_full:#?}");
    assert_eq!(near_full[0]["level"], 40);
    let rejecting: Vec<_> = node
        .logs()
        .into_iter()
        .filter(|l| l["msg"] == "event queue stripe rejecting events")
        .collect();
    assert_eq!(rejecting.len(), 1, "rate-limited: {rejecting:#?}");
}

// ---- backpressure -----------------------------------------------------------------------------

#[tokio::test]
async fn backpressure_sync_forced_total_every_nth_batch() {
    let node = Node::start_with(opts(&["--backpressure-sync-every", "10"]));
    let mut c = node.authed_client().await;
    let t = Ts::new(now_millis(), 0, "w");
    for b in 0..25 {
        c.send(&op_batch(vec![put_op(
            &b.to_string(),
            "m",
            &format!("k{b}"),
            b.into(),
            &t,
        )]))
        .await;
    }
    for b in 0..25 {
        let ack = c.recv_type("OP_ACK").await.expect("ack");
        assert_eq!(
            pstr(&ack, "lastId"),
            Some(b.to_string().as_str()),
            "acks in order"
        );
    }
    node.wait_metric("topgun_backpressure_sync_forced_total", &[], 2.0);
    let s = node.wait_metric("topgun_backpressure_pending_ops", &[], 0.0);
    assert_eq!(v(&s, "topgun_backpressure_waits_total"), 0.0);
    assert_eq!(v(&s, "topgun_backpressure_timeouts_total"), 0.0);
}

/// What one flooding client saw: acks and 429 errors (one reply per batch, nothing silent).
#[derive(Debug, Default)]
struct Flood {
    acks: usize,
    overloaded: usize,
}

/// `clients` connections each send `batches` OP_BATCHes of `ops` new keys without waiting,
/// then read one reply per batch.
async fn flood(node: &Node, clients: usize, batches: usize, ops: usize) -> Vec<Flood> {
    // Connect everyone first: an upgrade must not queue behind the flood's decoding.
    let mut conns = Vec::new();
    for _ in 0..clients {
        conns.push(node.authed_client().await);
    }
    let t = Ts::new(now_millis(), 0, "f");
    let mut tasks = Vec::new();
    for (ci, mut c) in conns.into_iter().enumerate() {
        let frames: Vec<Vec<u8>> = (0..batches)
            .map(|b| {
                let ops = (0..ops)
                    .map(|i| {
                        map(&[
                            ("id", i.to_string().into()),
                            ("mapName", "flood".into()),
                            ("key", format!("{ci}.{b}.{i}").into()),
                            (
                                "record",
                                map(&[("value", 1.into()), ("timestamp", t.wire())]),
                            ),
                        ])
                    })
                    .collect();
                let f = encode(&op_batch(ops));
                assert!(f.len() < 2 * 1024 * 1024, "frame of {} bytes", f.len());
                f
            })
            .collect();
        tasks.push(tokio::spawn(async move {
            for f in frames {
                c.send_raw(f).await;
            }
            let mut seen = Flood::default();
            while seen.acks + seen.overloaded < batches {
                let v = c
                    .recv_within(Duration::from_secs(30))
                    .await
                    .unwrap_or_else(|| panic!("client {ci}: a batch got no reply: {seen:?}"));
                match msg_type(&v) {
                    "OP_ACK" => seen.acks += 1,
                    "ERROR" => {
                        let code = get(payload(&v), "code").map(as_u64);
                        assert_eq!(code, Some(429), "{v:?}");
                        let m = pstr(&v, "message").unwrap_or("");
                        assert!(
                            m.contains("overloaded"),
                            "backpressure, not rate limit: {m}"
                        );
                        seen.overloaded += 1;
                    }
                    other => panic!("unexpected {other}: {v:?}"),
                }
            }
            seen
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.expect("flood task"));
    }
    out
}

fn flood_node() -> Node {
    Node::start_with(opts(&[
        "--backpressure-limit",
        "2",
        "--backpressure-timeout-ms",
        "50",
        "--shards",
        "1",
        "--client-rate",
        "10000000",
        "--client-burst",
        "10000000",
    ]))
}

const FLOOD: (usize, usize, usize) = (5, 4, 3_000);

#[tokio::test]
async fn backpressure_timeouts_total_equals_errors_clients_received() {
    let node = flood_node();
    let mut bystander = node.authed_client().await;
    let started = Instant::now();
    let pinger = tokio::spawn(async move {
        // The node answers another client throughout.
        let mut worst = Duration::ZERO;
        for _ in 0..5 {
            let t0 = Instant::now();
            assert!(bystander.ping_pong().await.is_empty());
            worst = worst.max(t0.elapsed());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        worst
    });
    let seen = flood(&node, FLOOD.0, FLOOD.1, FLOOD.2).await;
    let worst_ping = pinger.await.unwrap();
    let errors: usize = seen.iter().map(|s| s.overloaded).sum();
    let acks: usize = seen.iter().map(|s| s.acks).sum();
    assert_eq!(
        acks + errors,
        FLOOD.0 * FLOOD.1,
        "one reply per batch: {seen:?}"
    );
    assert!(
        errors > 0,
        "no timeout in {:?}: {seen:?}",
        started.elapsed()
    );
    assert!(
        worst_ping < Duration::from_secs(2),
        "PING took {worst_ping:?}"
    );

    let s = node.wait_metric("topgun_backpressure_timeouts_total", &[], errors as f64);
    assert!(v(&s, "topgun_backpressure_waits_total") >= errors as f64);
    // Timed-out batches were not applied; acked ones were, entirely.
    node.wait_metric(
        "topgun_map_size_items",
        &[("map", "flood")],
        (acks * FLOOD.2) as f64,
    );
    node.wait_metric("topgun_backpressure_pending_ops", &[], 0.0);
}

#[tokio::test]
async fn backpressure_waits_total_counts_connections_held_at_the_limit() {
    let node = flood_node();
    let seen = flood(&node, FLOOD.0, FLOOD.1, FLOOD.2).await;
    let errors: usize = seen.iter().map(|s| s.overloaded).sum();
    let s = wait_scrape(&node, "waits reported", |s| {
        v(s, "topgun_backpressure_waits_total") > 0.0
            && v(s, "topgun_backpressure_timeouts_total") == errors as f64
    });
    let waits = v(&s, "topgun_backpressure_waits_total");
    // At most one wait per batch that arrived while others were pending.
    assert!(waits <= (FLOOD.0 * FLOOD.1) as f64, "waits {waits}");
    assert!(waits >= errors as f64);
}

#[tokio::test]
async fn backpressure_pending_ops_moves_and_returns_to_zero() {
    let node = flood_node();
    let port = node.port;
    let watcher = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut max: f64 = 0.0;
        while Instant::now() < deadline && max == 0.0 {
            if let Ok((200, body)) = http_get(port, "/metrics") {
                max = max.max(v(&Scrape::parse(&body), "topgun_backpressure_pending_ops"));
            }
        }
        max
    });
    flood(&node, FLOOD.0, FLOOD.1, FLOOD.2).await;
    let max = watcher.join().unwrap();
    assert!(max > 0.0, "pending batches never seen while flooding");
    node.wait_metric("topgun_backpressure_pending_ops", &[], 0.0);
    assert_at_rest(&node);
}

// ---- slow consumers ---------------------------------------------------------------------------

/// A WebSocket whose receive buffer is tiny, so that not reading it backs the node up fast.
async fn slow_client(node: &Node) -> Client {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let tcp = sock
        .connect(format!("127.0.0.1:{}", node.port).parse().unwrap())
        .await
        .unwrap();
    let (ws, _) = tokio_tungstenite::client_async(node.url(), MaybeTlsStream::Plain(tcp))
        .await
        .expect("upgrade");
    Client { ws, closed: None }
}

#[tokio::test]
async fn slow_consumer_is_dropped_then_cut_off_without_hurting_a_fast_one() {
    const EVENTS: usize = 1_000;
    let node = Node::start_with(opts(&["--outbound-queue", "8"]));
    let mut slow = slow_client(&node).await;
    slow.subscribe("q", "feed", map(&[])).await;
    // From here on `slow` is not read until the writes are done.
    let mut fast = node.authed_client().await;
    fast.subscribe("q", "feed", map(&[])).await;
    let mut w = node.authed_client().await;
    let blob = "y".repeat(4_000);
    // Lockstep: each event reaches the fast subscriber before the next write, so its own small
    // queue never fills; the slow one's does.
    for i in 0..EVENTS {
        let t = Ts::new(now_millis(), 0, "w");
        let key = format!("k{i:04}");
        w.send_acked(&client_op(put_op(
            &i.to_string(),
            "feed",
            &key,
            map(&[("blob", blob.as_str().into()), ("i", (i as u64).into())]),
            &t,
        )))
        .await;
        let u = fast
            .recv_type_within("QUERY_UPDATE", Duration::from_secs(10))
            .await
            .unwrap_or_else(|| panic!("fast subscriber missed event {i}"));
        assert_eq!(pstr(&u, "key"), Some(key.as_str()));
        assert_eq!(pstr(&u, "changeType"), Some("ENTER"));
    }
    let s = wait_scrape(&node, "drops counted", |s| {
        v(s, "topgun_outbound_dropped_total") >= 256.0
    });
    let dropped = v(&s, "topgun_outbound_dropped_total");

    // The slow one reads again: what was queued, then a 1013 close.
    let (code, reason) = slow.expect_close(Duration::from_secs(20)).await;
    assert_eq!(code, 1013, "{reason}");
    node.wait_metric(
        "topgun_connections_closed_total",
        &[("reason", "slow_consumer")],
        1.0,
    );
    assert!(dropped <= (2 * EVENTS) as f64, "{dropped}");
    // The writer and the fast subscriber remain.
    node.wait_metric("topgun_connected_clients", &[], 2.0);
}

// ---- per-actor invariants -----------------------------------------------------------------------

#[tokio::test]
async fn actor_mailboxes_are_empty_at_rest_and_messages_counted() {
    let node = Node::start_with(opts(&["--shards", "2", "--event-queue-stripes", "2"]));
    let _subs = three_subscribers(&node, "m").await;
    let mut w = node.authed_client().await;
    for i in 0..5 {
        write_alone(&mut w, "m", &format!("b{i}-"), 30).await;
    }
    w.sync_root("m").await;
    let s = assert_at_rest(&node);
    let depths: Vec<_> = s
        .samples
        .iter()
        .filter(|x| x.metric == "topgun_actor_mailbox_depth")
        .collect();
    assert!(!depths.is_empty());
    // Message counts arrive with each actor's next report. Shards handled at least one
    // ApplyOps per batch and the Merkle request of the SYNC_INIT (one per shard).
    wait_scrape(&node, "every actor kind reported its messages", |s| {
        let n = |actor: &str| {
            s.value("topgun_actor_messages_total", &[("actor", actor)])
                .unwrap_or(0.0)
        };
        n("connection") > 0.0 && n("event_queue") > 0.0 && n("gate") > 0.0 && n("shard") >= 7.0
    });
}
