//! Guards the basic contract end to end: a node started with `--port 0` prints its port,
//! answers health and a scrape, speaks PING/PONG over a real WebSocket, and on SIGTERM closes
//! its clients with 1001 and exits 0.
mod common;

use std::time::Duration;

use common::*;

#[tokio::test]
async fn ping_pong_and_graceful_shutdown() {
    let mut node = Node::start();
    assert_eq!(node.get("/health").0, 200);
    let scrape = node.scrape();
    assert_eq!(
        scrape.type_of("topgun_connected_clients").as_deref(),
        Some("gauge")
    );

    let mut c = node.authed_client().await;
    let ts = 1_700_000_000_123.0;
    c.send(&ping(ts)).await;
    let pong = c.recv_type("PONG").await.expect("PONG");
    assert_eq!(
        get(&pong, "timestamp").and_then(|v| v.as_u64()),
        Some(1_700_000_000_123)
    );
    assert!(get(&pong, "serverTime").and_then(|v| v.as_u64()).unwrap() > 1_700_000_000_000);
    node.wait_metric("topgun_connected_clients", &[], 1.0);

    node.signal("TERM");
    let (code, reason) = c.expect_close(Duration::from_secs(5)).await;
    assert_eq!(code, 1001, "{reason}");
    let status = node
        .wait_exit(Duration::from_secs(10))
        .expect("exits within 10 s");
    assert!(status.success(), "{status:?}");
    for line in node.logs() {
        for key in ["level", "time", "pid", "hostname", "msg", "nodeId"] {
            assert!(line.get(key).is_some(), "{key} missing in {line}");
        }
    }
}
