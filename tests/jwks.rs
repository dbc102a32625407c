//! Guards key rotation without a restart (issue 18, item 3) against the real binary: keys by
//! `kid` from `--jwt-keys-file` and from `--jwks-url` (a real HTTP and HTTPS server started by
//! the test, its key set changed while the node runs), tokens signed by the test with HS256,
//! RS256, ES256 and EdDSA keys. The bugs it guards: a token signed by a retired key still
//! accepted after the reload; a new key not taken up until a restart; an HS256 token made with
//! an RSA public key as its secret accepted (algorithm confusion); a flood of made-up `kid`s
//! turned into a flood of fetches at the IdP; an IdP outage (or garbage, or a huge body)
//! wiping the keys in use; a node that starts without keys it was told to use.
mod common;

use std::time::{Duration, Instant};

use common::jwks::{jwks, replace_file, Answer, JwksServer, SigningKey, RSA_PUBLIC_PEM};
use common::*;

/// A node that checks tokens with keys by kid: no JWT_SECRET, and TOPGUN_NO_AUTH (which the
/// harness sets without a secret) turned off again.
fn keys_node(args: &[&str]) -> Node {
    Node::start_with(NodeOptions {
        jwt_secret: None,
        args: args.iter().map(|a| a.to_string()).collect(),
        env: vec![("TOPGUN_NO_AUTH".into(), "0".into())],
        ..Default::default()
    })
}

/// Connects, sends AUTH with `token`: `Ok(userId)` on AUTH_ACK, `Err(type)` otherwise.
async fn try_auth(node: &Node, token: &str) -> Result<String, String> {
    let mut c = node.client().await;
    let first = c.recv().await.expect("AUTH_REQUIRED");
    assert_eq!(msg_type(&first), "AUTH_REQUIRED");
    c.send(&auth(token)).await;
    let answer = c
        .recv_within(Duration::from_secs(8))
        .await
        .expect("an answer to AUTH");
    match msg_type(&answer) {
        "AUTH_ACK" => Ok(get(&answer, "userId")
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_owned()),
        other => Err(other.to_owned()),
    }
}

async fn accepted(node: &Node, token: &str, sub: &str) {
    assert_eq!(try_auth(node, token).await, Ok(sub.to_owned()));
}

/// Refused, and counted under `reason` (the counter reaches `count`).
async fn refused(node: &Node, token: &str, reason: &str, count: f64) {
    assert_eq!(try_auth(node, token).await, Err("AUTH_FAIL".to_owned()));
    node.wait_metric("topgun_auth_failures_total", &[("reason", reason)], count);
}

fn failures(node: &Node) -> f64 {
    node.scrape()
        .value_or_zero("topgun_jwks_refresh_failures_total", &[])
}

/// Waits until `topgun_jwks_refresh_failures_total` reaches `n`.
fn wait_failures(node: &Node, n: f64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while failures(node) < n {
        assert!(
            Instant::now() < deadline,
            "{} refresh failures, want {n}",
            failures(node)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits for a `JWT keys reload failed` line with this `err.type` (a warning).
fn wait_reload_failure(node: &Node, err_type: &str) -> serde_json::Value {
    let line = node.wait_log("JWT keys reload failed; the keys in use stay", |l| {
        l["err"]["type"] == err_type
    });
    assert_eq!(line["level"], 40, "{line}");
    line
}

fn reloads(node: &Node, cause: &str) -> usize {
    node.logs()
        .iter()
        .filter(|l| l["msg"] == "JWT keys reloaded" && l["cause"] == cause)
        .count()
}

fn wait_reloads(node: &Node, cause: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while reloads(node, cause) < n {
        assert!(
            Instant::now() < deadline,
            "{} reloads ({cause}), want {n}",
            reloads(node, cause)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test]
async fn every_algorithm_verifies_by_kid_and_the_key_decides_the_algorithm() {
    let (hs, rs, es, ed) = (
        SigningKey::hs256("hs", b"a shared secret of thirty-two bytes"),
        SigningKey::rs256("rs"),
        SigningKey::es256("es"),
        SigningKey::eddsa("ed"),
    );
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("jwks.json");
    let mut doc: serde_json::Value =
        serde_json::from_str(&jwks(&[&hs, &rs, &es, &ed])).expect("JSON");
    // A key of a type the node does not know is skipped, not fatal.
    doc["keys"]
        .as_array_mut()
        .expect("keys")
        .push(serde_json::json!({"kty": "XYZ", "kid": "odd"}));
    std::fs::write(&file, doc.to_string()).expect("write");
    let node = keys_node(&["--jwt-keys-file", file.to_str().expect("path")]);

    for key in [&hs, &rs, &es, &ed] {
        accepted(
            &node,
            &key.token(&format!("user-{}", key.kid)),
            &format!("user-{}", key.kid),
        )
        .await;
    }
    node.wait_metric("topgun_jwt_keys", &[], 4.0);
    let skipped = node.wait_log("JWT key skipped", |l| l["kid"] == "odd");
    assert_eq!(skipped["reason"], "unknown_kty");
    let on = node.wait_log(
        "client tokens are checked with keys by kid; SIGHUP reloads them",
        |_| true,
    );
    assert_eq!(on["keys"], 4);
    assert_eq!(on["kids"], "hs,rs,es,ed");

    // Algorithm confusion: an HS256 token whose "secret" is the RSA public key, naming the
    // RSA key's kid. The RSA key verifies RS/PS algorithms only.
    let confused = SigningKey::hs256("rs", RSA_PUBLIC_PEM.as_bytes());
    refused(&node, &confused.token("mallory"), "bad_algorithm", 1.0).await;
    // The EC key's kid with a token of another algorithm: refused the same way.
    refused(&node, &hs.token_as("es", "mallory"), "bad_algorithm", 2.0).await;
    // A kid the set lacks; no kid while the set has several keys.
    refused(&node, &hs.token_as("nope", "mallory"), "unknown_kid", 1.0).await;
    refused(&node, &hs.token_without_kid("mallory"), "missing_kid", 1.0).await;
    // A key of the set under another key's kid: its signature does not verify.
    let other_ec = SigningKey::es256("es");
    refused(&node, &other_ec.token("mallory"), "bad_signature", 1.0).await;
    // From a file, an unknown kid fetches nothing: no refresh, no failure.
    assert_eq!(failures(&node), 0.0);
}

#[tokio::test]
async fn a_keys_file_is_taken_up_when_it_changes_and_a_retired_key_is_refused() {
    let (a, b) = (SigningKey::es256("a"), SigningKey::eddsa("b"));
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("jwks.json");
    std::fs::write(&file, jwks(&[&a])).expect("write");
    let node = keys_node(&[
        "--jwt-keys-file",
        file.to_str().expect("path"),
        "--jwt-keys-reload-interval-ms",
        "100",
    ]);
    let (token_a, token_b) = (a.token("alice"), b.token("bob"));
    accepted(&node, &token_a, "alice").await;
    // One key: a token without kid is fine.
    accepted(&node, &a.token_without_kid("alice"), "alice").await;

    // Rotation, step 1: the new key is published beside the old one.
    replace_file(&file, &jwks(&[&a, &b]));
    wait_reloads(&node, "file_changed", 1);
    let line = node.wait_log("JWT keys reloaded", |_| true);
    assert_eq!(
        (line["added"].as_u64(), line["removed"].as_u64()),
        (Some(1), Some(0))
    );
    accepted(&node, &token_b, "bob").await;
    accepted(&node, &token_a, "alice").await;
    node.wait_metric("topgun_jwt_keys", &[], 2.0);

    // A broken file (a half-finished edit) keeps the keys in use.
    replace_file(&file, "{\"keys\": [");
    wait_reload_failure(&node, "jwks_invalid");
    wait_failures(&node, 1.0);
    accepted(&node, &token_a, "alice").await;

    // Step 2: the old key is retired; its tokens are refused from the reload on.
    replace_file(&file, &jwks(&[&b]));
    wait_reloads(&node, "file_changed", 2);
    refused(&node, &token_a, "unknown_kid", 1.0).await;
    accepted(&node, &token_b, "bob").await;
    node.wait_metric("topgun_jwt_keys", &[], 1.0);
}

#[tokio::test]
async fn sighup_reloads_the_keys_file() {
    let (a, b) = (
        SigningKey::hs256("a", b"first secret, 32 bytes at least"),
        SigningKey::rs256("b"),
    );
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("jwks.json");
    std::fs::write(&file, jwks(&[&a])).expect("write");
    // 0: no check on a timer, only SIGHUP.
    let node = keys_node(&[
        "--jwt-keys-file",
        file.to_str().expect("path"),
        "--jwt-keys-reload-interval-ms",
        "0",
    ]);
    accepted(&node, &a.token("alice"), "alice").await;
    replace_file(&file, &jwks(&[&b]));
    // Not read yet: the old key still verifies, the new one is unknown.
    accepted(&node, &a.token("alice"), "alice").await;
    refused(&node, &b.token("bob"), "unknown_kid", 1.0).await;

    node.signal("HUP");
    wait_reloads(&node, "sighup", 1);
    node.wait_log("reload requested (SIGHUP)", |l| l["reloads"] == "jwt_keys");
    accepted(&node, &b.token("bob"), "bob").await;
    refused(&node, &a.token("alice"), "unknown_kid", 2.0).await;
}

#[tokio::test]
async fn a_jwks_url_rotates_keys_on_an_unknown_kid_and_refuses_a_flood_of_them_cheaply() {
    let (a, b) = (SigningKey::es256("key-1"), SigningKey::eddsa("key-2"));
    let server = JwksServer::start(Answer::Keys(jwks(&[&a])));
    // Long enough for the flood below to fit in one window on a slow machine.
    let min_refresh = Duration::from_millis(1500);
    let node = keys_node(&[
        "--jwks-url",
        &server.url(),
        // No timer: every fetch below is one a kid caused.
        "--jwks-refresh-interval-ms",
        "0",
        "--jwks-min-refresh-interval-ms",
        &min_refresh.as_millis().to_string(),
    ]);
    assert_eq!(server.requests(), 1, "fetched once at start");
    let token_a = a.token("alice");
    accepted(&node, &token_a, "alice").await;

    // The IdP publishes key-2 and signs with it: the first token naming it makes the node
    // fetch the set, and is accepted once the fetch is in.
    server.answer(Answer::Keys(jwks(&[&a, &b])));
    std::thread::sleep(min_refresh);
    accepted(&node, &b.token("bob"), "bob").await;
    assert_eq!(server.requests(), 2);
    let line = node.wait_log("JWT keys reloaded", |l| l["cause"] == "unknown_kid");
    assert_eq!(line["kids"], "key-1,key-2");

    // A flood of made-up kids within the window, all at once: refused, and not one fetch more.
    let forger = SigningKey::hs256("x", b"nobody's secret, 32 bytes or so");
    let flood: Vec<String> = (0..20)
        .map(|i| forger.token_as(&format!("made-up-{i}"), "mallory"))
        .collect();
    let answers = futures_util::future::join_all(flood.iter().map(|t| try_auth(&node, t))).await;
    assert!(
        answers
            .iter()
            .all(|a| matches!(a, Err(t) if t == "AUTH_FAIL")),
        "{answers:?}"
    );
    node.wait_metric(
        "topgun_auth_failures_total",
        &[("reason", "unknown_kid")],
        20.0,
    );
    assert_eq!(
        server.requests(),
        2,
        "made-up kids fetched within the window"
    );

    // key-1 is retired. Its tokens still verify until the next fetch; after it (here caused
    // by one more unknown kid, past the window), they are refused.
    server.answer(Answer::Keys(jwks(&[&b])));
    accepted(&node, &token_a, "alice").await;
    std::thread::sleep(min_refresh);
    refused(
        &node,
        &forger.token_as("made-up-last", "mallory"),
        "unknown_kid",
        21.0,
    )
    .await;
    assert_eq!(server.requests(), 3);
    refused(&node, &token_a, "unknown_kid", 22.0).await;
    accepted(&node, &b.token("bob"), "bob").await;
    node.wait_metric("topgun_jwt_keys", &[], 1.0);
}

#[tokio::test]
async fn a_failed_refresh_keeps_the_keys_in_use_is_counted_and_logged() {
    let (a, b) = (SigningKey::rs256("a"), SigningKey::es256("b"));
    let server = JwksServer::start(Answer::Keys(jwks(&[&a])));
    let node = keys_node(&[
        "--jwks-url",
        &server.url(),
        "--jwks-refresh-interval-ms",
        "200",
    ]);
    let token_a = a.token("alice");
    accepted(&node, &token_a, "alice").await;
    assert_eq!(failures(&node), 0.0);

    let bad_answers = [
        (Answer::Status(503), "jwks_http_status"),
        (
            Answer::Keys("<html>maintenance</html>".into()),
            "jwks_invalid",
        ),
        (
            Answer::Keys(r#"{"keys": [{"kty": "XYZ"}]}"#.into()),
            "jwks_no_usable_key",
        ),
        (Answer::Keys(" ".repeat((1 << 20) + 1)), "jwks_too_large"),
        (Answer::Hangup, "jwks_unreachable"),
    ];
    for (answer, err_type) in bad_answers {
        let before = failures(&node);
        server.answer(answer);
        let failed = wait_reload_failure(&node, err_type);
        assert_eq!(failed["cause"], "interval");
        assert_eq!(failed["source"], server.url());
        wait_failures(&node, before + 1.0);
        // The cached keys still verify.
        accepted(&node, &token_a, "alice").await;
    }

    // The IdP is back, with a new key: taken up on the next refresh.
    server.answer(Answer::Keys(jwks(&[&a, &b])));
    wait_reloads(&node, "interval", 1);
    accepted(&node, &b.token("bob"), "bob").await;
    node.wait_metric("topgun_jwt_keys", &[], 2.0);
}

#[tokio::test]
async fn an_https_jwks_url_is_checked_against_the_given_ca() {
    let dir = tempfile::tempdir().expect("dir");
    let ca = tls::TestCa::new(dir.path(), "idp");
    let (cert, key) = (dir.path().join("idp.pem"), dir.path().join("idp-key.pem"));
    ca.sign_into(&["127.0.0.1"], &cert, &key);
    let a = SigningKey::eddsa("a");
    let server = JwksServer::start_tls(Answer::Keys(jwks(&[&a])), &cert, &key);
    let node = keys_node(&[
        "--jwks-url",
        &server.url(),
        "--jwks-ca",
        ca.ca_file().to_str().expect("path"),
    ]);
    accepted(&node, &a.token("alice"), "alice").await;

    // Another CA's certificate: the node does not trust the server and does not start.
    let other = tls::TestCa::new(dir.path(), "other");
    let out = start_to_exit(&[
        "--jwks-url",
        &server.url(),
        "--jwks-ca",
        other.ca_file().to_str().expect("path"),
    ]);
    assert_one_line(&out, &["[jwks_tls]", &server.url()]);
    // Without --jwks-ca the system's roots decide, and they do not know the test's CA.
    let out = start_to_exit(&["--jwks-url", &server.url()]);
    assert_one_line(&out, &["[jwks_tls]", &server.url()]);
}

/// Runs a node that should not start, with keys from `args`.
fn start_to_exit(args: &[&str]) -> Exited {
    let dir = tempfile::tempdir().expect("dir");
    run_to_exit(
        command(dir.path())
            .args(["--port", "0", "--storage-backend", "memory"])
            .args(args),
        Duration::from_secs(15),
    )
}

fn assert_one_line(out: &Exited, names: &[&str]) {
    assert_eq!(out.status.code(), Some(2), "{}", out.stderr);
    let lines = out.stderr_lines();
    assert_eq!(lines.len(), 1, "one stderr line, got {lines:#?}");
    for name in names {
        assert!(
            lines[0].contains(name),
            "{:?} does not name {name}",
            lines[0]
        );
    }
}

#[test]
fn keys_that_cannot_be_had_at_start_stop_the_node_with_exit_2_and_one_line() {
    // Nothing listens there.
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/jwks");
    let out = start_to_exit(&["--jwks-url", &url]);
    assert_one_line(&out, &["[jwks_unreachable]", &url]);

    let bad: [(Answer, &str); 4] = [
        (Answer::Keys("garbage".into()), "[jwks_invalid]"),
        (
            Answer::Keys(r#"{"keys": [{"kty": "XYZ", "kid": "k"}]}"#.into()),
            "[jwks_no_usable_key]",
        ),
        (Answer::Status(404), "[jwks_http_status]"),
        (Answer::Keys(" ".repeat((1 << 20) + 1)), "[jwks_too_large]"),
    ];
    for (answer, code) in bad {
        let server = JwksServer::start(answer);
        let out = start_to_exit(&["--jwks-url", &server.url()]);
        assert_one_line(&out, &[code, &server.url()]);
    }

    let dir = tempfile::tempdir().expect("dir");
    let missing = dir.path().join("missing.json");
    let out = start_to_exit(&["--jwt-keys-file", missing.to_str().expect("path")]);
    assert_one_line(&out, &["[jwt_keys_unreadable]", "missing.json"]);
    let garbage = dir.path().join("garbage.json");
    std::fs::write(&garbage, "{]").expect("write");
    let out = start_to_exit(&["--jwt-keys-file", garbage.to_str().expect("path")]);
    assert_one_line(&out, &["[jwks_invalid]", "garbage.json"]);

    // Two sources at once is a configuration error, before anything is read.
    let out = start_to_exit(&[
        "--jwt-keys-file",
        garbage.to_str().expect("path"),
        "--jwks-url",
        &url,
    ]);
    assert_one_line(
        &out,
        &[
            "[config_invalid]",
            "JWT_SECRET, --jwt-keys-file and --jwks-url",
        ],
    );
}
