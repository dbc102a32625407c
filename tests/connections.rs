//! Guards the connection gate and the connection-count families: a storm over the rate limit
//! is split into accepted and refused (HTTP 429) connections whose counts the metrics report
//! exactly, while `/health` keeps answering; the pending-handshake limit refuses too;
//! `topgun_connected_clients` and `topgun_connections_pending` come back to 0 when clients
//! leave and pending counts only unauthenticated connections;
//! `topgun_connection_rate_per_second` shows the last full second; SIGTERM closes every
//! client (authenticated or not) with 1001 and the process exits 0 within 10 s.
mod common;

use std::time::{Duration, Instant};

use tokio_tungstenite::tungstenite::Error as WsError;

use common::*;

enum Outcome {
    Open(Box<Client>),
    Refused,
}

async fn try_open(url: String) -> Outcome {
    match Client::try_connect(&url).await {
        Ok(c) => Outcome::Open(Box::new(c)),
        Err(WsError::Http(resp)) if resp.status().as_u16() == 429 => Outcome::Refused,
        Err(e) => panic!("connection failed other than by a 429: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storm_over_the_rate_limit_is_counted_exactly() {
    let node = Node::start_with(NodeOptions::default().args(&["--connection-rate", "20"]));
    let port = node.port;
    let health = tokio::task::spawn_blocking(move || {
        (0..5)
            .map(|_| http_get(port, "/health").map(|(s, _)| s).unwrap_or(0))
            .collect::<Vec<_>>()
    });
    let tasks: Vec<_> = (0..60)
        .map(|_| tokio::spawn(try_open(node.url())))
        .collect();
    let mut open = Vec::new();
    let mut refused = 0;
    for t in tasks {
        match t.await.expect("task") {
            Outcome::Open(c) => open.push(c),
            Outcome::Refused => refused += 1,
        }
    }
    let statuses = health.await.expect("health task");
    assert_eq!(statuses, vec![200; 5], "/health during the storm");

    let accepted = open.len();
    assert_eq!(accepted + refused, 60);
    assert!(accepted >= 20, "the first 20 fit the limit: {accepted}");
    assert!(refused > 0, "a storm of 60 at 20/s is refused in part");
    node.wait_metric("topgun_connections_accepted_total", &[], accepted as f64);
    let s = node.wait_metric("topgun_connections_rejected_total", &[], refused as f64);
    assert_eq!(
        s.value("topgun_connections_accepted_total", &[]),
        Some(accepted as f64)
    );
    node.wait_metric("topgun_connected_clients", &[], accepted as f64);

    // The accepted ones work.
    for (i, c) in open.iter_mut().enumerate() {
        c.send(&ping(i as f64)).await;
        assert_eq!(msg_type(&c.recv().await.expect("PONG")), "PONG");
    }
    drop(open);
    node.wait_metric("topgun_connected_clients", &[], 0.0);
    node.wait_metric("topgun_connections_pending", &[], 0.0);
}

#[tokio::test]
async fn pending_counts_unauthenticated_connections() {
    let node = Node::start_with(NodeOptions::jwt());
    let mut clients = Vec::new();
    for _ in 0..3 {
        let mut c = node.client().await;
        assert_eq!(
            msg_type(&c.recv().await.expect("AUTH_REQUIRED")),
            "AUTH_REQUIRED"
        );
        clients.push(c);
    }
    node.wait_metric("topgun_connections_pending", &[], 3.0);
    node.wait_metric("topgun_connected_clients", &[], 3.0);

    clients[0].send(&auth(&token(SECRET, "u", 3600))).await;
    assert_eq!(
        msg_type(&clients[0].recv().await.expect("AUTH_ACK")),
        "AUTH_ACK"
    );
    node.wait_metric("topgun_connections_pending", &[], 2.0);
    node.wait_metric("topgun_connected_clients", &[], 3.0);

    // One pending client leaves: pending 1.
    clients.pop();
    node.wait_metric("topgun_connections_pending", &[], 1.0);
    node.wait_metric("topgun_connected_clients", &[], 2.0);
    drop(clients);
    node.wait_metric("topgun_connections_pending", &[], 0.0);
    node.wait_metric("topgun_connected_clients", &[], 0.0);
    let s = node.scrape();
    assert_eq!(s.value("topgun_connections_accepted_total", &[]), Some(3.0));
    assert_eq!(s.value("topgun_connections_rejected_total", &[]), Some(0.0));
}

#[tokio::test]
async fn pending_handshake_limit_refuses_with_429() {
    let node = Node::start_with(NodeOptions::jwt().args(&["--max-pending-connections", "2"]));
    let mut a = node.client().await;
    let _b = node.client().await;
    node.wait_metric("topgun_connections_pending", &[], 2.0);
    assert!(matches!(try_open(node.url()).await, Outcome::Refused));
    node.wait_metric("topgun_connections_rejected_total", &[], 1.0);
    // One finishes its handshake: room again.
    assert_eq!(
        msg_type(&a.recv().await.expect("AUTH_REQUIRED")),
        "AUTH_REQUIRED"
    );
    a.send(&auth(&token(SECRET, "u", 3600))).await;
    assert_eq!(msg_type(&a.recv().await.expect("AUTH_ACK")), "AUTH_ACK");
    node.wait_metric("topgun_connections_pending", &[], 1.0);
    assert!(matches!(try_open(node.url()).await, Outcome::Open(_)));
    let s = node.wait_metric("topgun_connections_accepted_total", &[], 3.0);
    assert_eq!(s.value("topgun_connections_rejected_total", &[]), Some(1.0));
}

/// A burst of 5 is read back from the gauge during the next second, then 0. A burst that
/// happens to straddle a second boundary is legitimately split over two seconds; then the
/// burst is repeated (at most 3 times).
#[tokio::test]
async fn rate_gauge_shows_the_last_full_second() {
    let node = Node::start();
    let mut saw_five = false;
    for _attempt in 0..3 {
        node.wait_metric("topgun_connection_rate_per_second", &[], 0.0);
        let mut burst = Vec::new();
        for _ in 0..5 {
            burst.push(node.client().await);
        }
        let deadline = Instant::now() + Duration::from_millis(2500);
        let mut seen = Vec::new();
        while Instant::now() < deadline {
            let v = node
                .scrape()
                .value("topgun_connection_rate_per_second", &[])
                .expect("gauge present");
            if seen.last() != Some(&v) {
                seen.push(v);
            }
            if v == 5.0 {
                saw_five = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        assert!(
            seen.iter().all(|v| *v <= 5.0),
            "more than the burst shown: {seen:?}"
        );
        if saw_five {
            break;
        }
        assert!(
            seen.iter().any(|v| *v > 0.0),
            "the burst never showed: {seen:?}"
        );
    }
    assert!(saw_five, "gauge never read 5 after a burst of 5");
    // Later: no connections in the last full second.
    node.wait_metric("topgun_connection_rate_per_second", &[], 0.0);
}

#[tokio::test]
async fn sigterm_closes_every_client_with_1001_and_exits_0() {
    let mut node = Node::start_with(NodeOptions::jwt());
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(node.authed_client().await);
    }
    for _ in 0..2 {
        // Still in the handshake.
        let mut c = node.client().await;
        assert_eq!(
            msg_type(&c.recv().await.expect("AUTH_REQUIRED")),
            "AUTH_REQUIRED"
        );
        clients.push(c);
    }
    node.wait_metric("topgun_connected_clients", &[], 5.0);
    let t0 = Instant::now();
    node.signal("TERM");
    for (i, c) in clients.iter_mut().enumerate() {
        let (code, reason) = c.expect_close(Duration::from_secs(5)).await;
        assert_eq!(code, 1001, "client {i}: {reason}");
    }
    let status = node
        .wait_exit(Duration::from_secs(10).saturating_sub(t0.elapsed()))
        .expect("exits within 10 s of SIGTERM");
    assert!(status.success(), "{status:?}");
    let logs = node.logs();
    assert!(
        logs.iter().any(|l| l["msg"] == "shutdown complete"),
        "no 'shutdown complete' line"
    );
}

#[tokio::test]
async fn sigint_is_a_graceful_shutdown_too() {
    let mut node = Node::start();
    let mut c = node.authed_client().await;
    node.signal("INT");
    let (code, _) = c.expect_close(Duration::from_secs(5)).await;
    assert_eq!(code, 1001);
    let status = node
        .wait_exit(Duration::from_secs(10))
        .expect("exits within 10 s of SIGINT");
    assert!(status.success(), "{status:?}");
}

/// `/` is the same WebSocket endpoint as `/ws`; a plain GET there (a browser, a probe) is
/// answered without counting against the connection limiter.
#[tokio::test]
async fn root_path_upgrades_and_plain_get_is_not_counted() {
    let node = Node::start();
    let mut c = Client::connect(&format!("ws://127.0.0.1:{}/", node.port)).await;
    c.send(&ping(1.0)).await;
    assert_eq!(msg_type(&c.recv().await.expect("PONG")), "PONG");
    node.wait_metric("topgun_connections_accepted_total", &[], 1.0);
    for path in ["/", "/ws"] {
        let (status, _) = node.get(path);
        assert_eq!(status, 400, "plain GET {path}");
    }
    let s = node.scrape();
    assert_eq!(s.value("topgun_connections_accepted_total", &[]), Some(1.0));
    assert_eq!(s.value("topgun_connections_rejected_total", &[]), Some(0.0));
}
