//! Guards the handshake of protocol.md section 3 against the real binary: AUTH_REQUIRED comes
//! first with its exact bytes; a good token gets AUTH_ACK with `userId` = `sub`, also when
//! AUTH arrives before the client read AUTH_REQUIRED (the TS client does that) and with the
//! duplicate AUTH ignored; a bad signature, an expired token, `alg: none`, a missing `sub` and
//! garbage each get AUTH_FAIL, a Close 4001 and their own `topgun_auth_failures_total{reason}`;
//! a client that never authenticates is closed with 1000 "authentication timeout"; frames
//! before AUTH are dropped and counted; no-auth mode still answers an AUTH with AUTH_ACK.
mod common;

use std::time::Duration;

use base64::Engine;
use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::Message;

use common::*;

const AUTH_REQUIRED_BYTES: [u8; 20] = [
    0x81, 0xa4, 0x74, 0x79, 0x70, 0x65, 0xad, 0x41, 0x55, 0x54, 0x48, 0x5f, 0x52, 0x45, 0x51, 0x55,
    0x49, 0x52, 0x45, 0x44,
];

/// The next binary frame as raw bytes.
async fn recv_bytes(c: &mut Client) -> Vec<u8> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match tokio::time::timeout_at(deadline, c.ws.next()).await {
            Ok(Some(Ok(Message::Binary(b)))) => return b.to_vec(),
            Ok(Some(Ok(Message::Close(f)))) => panic!("closed: {f:?}"),
            Ok(Some(Ok(_))) => continue,
            other => panic!("no binary frame: {other:?}"),
        }
    }
}

fn b64(v: &serde_json::Value) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
}

fn signed(secret: &str, claims: serde_json::Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("sign token")
}

fn exp_in(secs: i64) -> i64 {
    (now_millis() / 1000) as i64 + secs
}

#[tokio::test]
async fn auth_required_first_then_ack_with_user_id() {
    let node = Node::start_with(NodeOptions::jwt());
    let mut c = node.client().await;
    assert_eq!(recv_bytes(&mut c).await, AUTH_REQUIRED_BYTES);
    c.send(&auth(&token(SECRET, "alice", 3600))).await;
    let ack = c.recv().await.expect("AUTH_ACK");
    assert_eq!(msg_type(&ack), "AUTH_ACK", "{ack:?}");
    assert_eq!(get(&ack, "userId").and_then(|v| v.as_str()), Some("alice"));
    c.send(&ping(5.0)).await;
    assert_eq!(msg_type(&c.recv().await.expect("PONG")), "PONG");
    let s = node.scrape();
    for reason in ["bad_signature", "expired", "bad_algorithm", "missing_claim"] {
        assert_eq!(
            s.value_or_zero("topgun_auth_failures_total", &[("reason", reason)]),
            0.0
        );
    }
}

/// The TS client sends AUTH as soon as the socket opens and again on AUTH_REQUIRED.
#[tokio::test]
async fn early_auth_works_and_second_auth_is_ignored() {
    let node = Node::start_with(NodeOptions::jwt());
    let mut c = node.client().await;
    let t = token(SECRET, "bob", 3600);
    c.send(&auth(&t)).await; // before reading anything
    assert_eq!(recv_bytes(&mut c).await, AUTH_REQUIRED_BYTES);
    let ack = c.recv().await.expect("AUTH_ACK");
    assert_eq!(msg_type(&ack), "AUTH_ACK", "{ack:?}");
    assert_eq!(get(&ack, "userId").and_then(|v| v.as_str()), Some("bob"));

    // The duplicate AUTH: ignored. Frames are processed in order, so had it produced an
    // AUTH_ACK, that would arrive before the PONG.
    c.send(&auth(&t)).await;
    c.send(&ping(7.0)).await;
    let next = c.recv().await.expect("a reply");
    assert_eq!(
        msg_type(&next),
        "PONG",
        "second AUTH must be ignored: {next:?}"
    );
    assert!(
        c.recv_within(Duration::from_millis(300)).await.is_none(),
        "nothing else is sent"
    );
    assert!(c.closed.is_none(), "connection stays open");
}

/// Sends `token` as AUTH; expects AUTH_FAIL, Close 4001 and the counter of `reason` at 1.
async fn refused(tok: &str, reason: &str) {
    let node = Node::start_with(NodeOptions::jwt());
    let mut c = node.client().await;
    assert_eq!(
        msg_type(&c.recv().await.expect("AUTH_REQUIRED")),
        "AUTH_REQUIRED"
    );
    c.send(&auth(tok)).await;
    let fail = c.recv().await.expect("AUTH_FAIL");
    assert_eq!(msg_type(&fail), "AUTH_FAIL", "{reason}: {fail:?}");
    let (code, text) = c.expect_close(Duration::from_secs(5)).await;
    assert_eq!(code, 4001, "{reason}: close reason {text:?}");
    let s = node.wait_metric("topgun_auth_failures_total", &[("reason", reason)], 1.0);
    for other in [
        "bad_signature",
        "expired",
        "bad_algorithm",
        "missing_claim",
        "malformed",
    ] {
        if other != reason {
            assert_eq!(
                s.value_or_zero("topgun_auth_failures_total", &[("reason", other)]),
                0.0,
                "{reason} also counted as {other}"
            );
        }
    }
    node.wait_metric(
        "topgun_connections_closed_total",
        &[("reason", "auth_failed")],
        1.0,
    );
    // The node is fine: the next client authenticates.
    node.authed_client().await;
}

#[tokio::test]
async fn bad_signature_is_refused() {
    refused(&token("not-the-secret", "u", 3600), "bad_signature").await;
}

#[tokio::test]
async fn expired_token_is_refused() {
    // Beyond the 60 s leeway.
    refused(&token(SECRET, "u", -3600), "expired").await;
}

#[tokio::test]
async fn alg_none_is_refused() {
    let header = b64(&serde_json::json!({"alg": "none", "typ": "JWT"}));
    let claims = b64(&serde_json::json!({"sub": "mallory", "exp": exp_in(3600)}));
    refused(&format!("{header}.{claims}."), "bad_algorithm").await;
}

#[tokio::test]
async fn missing_sub_is_refused() {
    refused(
        &signed(SECRET, serde_json::json!({"exp": exp_in(3600)})),
        "missing_claim",
    )
    .await;
}

#[tokio::test]
async fn garbage_token_is_refused() {
    refused("not a jwt", "malformed").await;
}

#[tokio::test]
async fn auth_timeout_closes_with_1000() {
    let node = Node::start_with(NodeOptions::jwt().args(&["--auth-timeout-ms", "300"]));
    let mut c = node.client().await;
    assert_eq!(
        msg_type(&c.recv().await.expect("AUTH_REQUIRED")),
        "AUTH_REQUIRED"
    );
    let (code, reason) = c.expect_close(Duration::from_secs(5)).await;
    assert_eq!((code, reason.as_str()), (1000, "authentication timeout"));
    node.wait_metric("topgun_auth_failures_total", &[("reason", "timeout")], 1.0);
    node.wait_metric(
        "topgun_connections_closed_total",
        &[("reason", "auth_timeout")],
        1.0,
    );
    // An authenticated client is not subject to the auth timeout.
    let mut ok = node.authed_client().await;
    assert!(ok.recv_within(Duration::from_millis(600)).await.is_none());
    assert!(ok.closed.is_none(), "authenticated client was closed");
    ok.send(&ping(1.0)).await;
    assert_eq!(msg_type(&ok.recv().await.expect("PONG")), "PONG");
}

#[tokio::test]
async fn frames_before_auth_are_dropped_and_counted() {
    let node = Node::start_with(NodeOptions::jwt());
    let mut c = node.client().await;
    assert_eq!(
        msg_type(&c.recv().await.expect("AUTH_REQUIRED")),
        "AUTH_REQUIRED"
    );
    c.send(&ping(1.0)).await;
    c.send(&map(&[("type", "DEVICE_HELLO".into())])).await;
    c.send(&auth(&token(SECRET, "carol", 3600))).await;
    // In order: had the PING been answered, its PONG would come before the AUTH_ACK.
    let next = c.recv().await.expect("AUTH_ACK");
    assert_eq!(
        msg_type(&next),
        "AUTH_ACK",
        "PING before auth answered: {next:?}"
    );
    node.wait_metric(
        "topgun_invalid_messages_total",
        &[("reason", "before_auth")],
        2.0,
    );
    c.send(&ping(2.0)).await;
    assert_eq!(msg_type(&c.recv().await.expect("PONG")), "PONG");
}

#[tokio::test]
async fn no_auth_mode_answers_auth_with_ack() {
    let node = Node::start();
    let mut c = node.client().await;
    // No AUTH_REQUIRED: the first thing the node sends is the PONG.
    c.send(&ping(3.0)).await;
    assert_eq!(msg_type(&c.recv().await.expect("PONG")), "PONG");
    c.send(&auth("any-token")).await;
    let ack = c.recv().await.expect("AUTH_ACK");
    assert_eq!(msg_type(&ack), "AUTH_ACK", "{ack:?}");
}
