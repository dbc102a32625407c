//! Bad input on the node-to-node transport (TCP on the cluster port): a peer speaking another
//! protocol version, a second process claiming this node's id, an oversized frame, a request
//! before the handshake. Each is answered `REFUSED` (where a frame can still be sent), counted in
//! `topgun_cluster_peer_errors_total{reason}`, logged, and costs nothing else: the node keeps
//! serving clients. Frames are built here by hand from docs/cluster.md, not with the node's
//! own encoder.
mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::proto::{client_op, put_op, Ts};
use common::{read_port, Node, NodeOptions};
use rmpv::Value;

fn start() -> (Node, u16) {
    start_with(&[])
}

/// `node-x` on an OS-chosen cluster port, with `extra` flags: the node and that port.
fn start_with(extra: &[&str]) -> (Node, u16) {
    let mut node = Node::start_with(
        NodeOptions::default()
            .args(&["--node-id", "node-x", "--cluster-port", "0"])
            .args(extra),
    );
    let out = node.stdout.as_mut().expect("stdout kept");
    let port = read_port(out, "CLUSTER_PORT").expect("CLUSTER_PORT= after PORT=");
    (node, port)
}

/// One frame: length, kind, correlation id, MessagePack body.
fn frame(kind: u8, corr: u64, body: &Value) -> Vec<u8> {
    let mut payload = vec![kind];
    payload.extend_from_slice(&corr.to_be_bytes());
    rmpv::encode::write_value(&mut payload, body).unwrap();
    let mut out = (payload.len() as u32).to_be_bytes().to_vec();
    out.extend(payload);
    out
}

/// The node-to-node format version the node speaks (`PEER_VERSION` in src/cluster/wire.rs).
const PEER_VERSION: u64 = 2;

fn hello(version: u64, node_id: &str, generation: u64) -> Vec<u8> {
    let body = Value::Map(vec![
        ("magic".into(), "topgun-peer".into()),
        ("version".into(), version.into()),
        ("nodeId".into(), node_id.into()),
        ("generation".into(), generation.into()),
        // The placement the nodes under test keep (a member must agree to be heard at all).
        (
            "placement".into(),
            std::env::var("TOPGUN_TEST_PLACEMENT")
                .unwrap_or_else(|_| "partitioned".into())
                .into(),
        ),
    ]);
    frame(1, 0, &body)
}

/// Sends `bytes` and reads what comes back until the node closes the connection.
fn exchange(port: u16, bytes: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("cluster TCP port accepts");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(bytes).unwrap();
    let mut back = Vec::new();
    // The node closes after refusing; a read timeout would mean it kept a bad peer open.
    s.read_to_end(&mut back)
        .expect("the node closes the connection after refusing");
    back
}

/// The kind and body of the first frame in `bytes`.
fn first_frame(bytes: &[u8]) -> (u8, Value) {
    assert!(bytes.len() >= 13, "no frame came back: {bytes:?}");
    let len = u32::from_be_bytes(bytes[0..4].try_into().unwrap()) as usize;
    let payload = &bytes[4..4 + len];
    let body = rmpv::decode::read_value(&mut &payload[9..]).unwrap();
    (payload[0], body)
}

fn reason(body: &Value) -> String {
    body.as_map()
        .and_then(|m| m.iter().find(|(k, _)| k.as_str() == Some("reason")))
        .and_then(|(_, v)| v.as_str())
        .unwrap_or_default()
        .to_owned()
}

fn errors(node: &Node, reason: &str) -> f64 {
    node.scrape()
        .value_or_zero("topgun_cluster_peer_errors_total", &[("reason", reason)])
}

fn wait_errors(node: &Node, reason: &str, want: f64) {
    let t0 = std::time::Instant::now();
    while errors(node, reason) < want {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "topgun_cluster_peer_errors_total{{reason={reason}}}: want {want}, saw {}",
            errors(node, reason)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A write and its ack still work: the bad peer cost nothing else.
fn still_serves(node: &Node) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut c = common::Client::connect(&node.url()).await;
        c.send(&client_op(put_op(
            "after",
            "m",
            "k",
            Value::from(1),
            &Ts::new(1, 0, "t"),
        )))
        .await;
        let ack = c.recv_type("OP_ACK").await;
        assert!(ack.is_some(), "no OP_ACK after bad peer input");
    });
}

#[test]
fn another_protocol_version_is_refused_and_counted() {
    let (node, port) = start();
    let back = exchange(port, &hello(99, "node-y", 1));
    let (kind, body) = first_frame(&back);
    assert_eq!(kind, 2, "REFUSED");
    assert!(reason(&body).starts_with("version"), "{body:?}");
    wait_errors(&node, "version", 1.0);
    assert!(node
        .logs()
        .iter()
        .any(|l| l["msg"] == "peer refused" && l["reason"] == "version"));
    still_serves(&node);
}

#[test]
fn a_second_process_with_this_node_id_is_refused_and_counted() {
    let (node, port) = start();
    let back = exchange(port, &hello(PEER_VERSION, "node-x", 12345));
    let (kind, body) = first_frame(&back);
    assert_eq!(kind, 2, "REFUSED");
    assert!(reason(&body).starts_with("node_id_clash"), "{body:?}");
    wait_errors(&node, "node_id_clash", 1.0);
    still_serves(&node);
}

#[test]
fn oversized_frames_and_requests_before_hello_end_the_connection() {
    let (node, port) = start();
    // 4 GiB announced: the node must not try to buffer it.
    exchange(port, &[0xff, 0xff, 0xff, 0xff, 1, 2, 3]);
    wait_errors(&node, "bad_frame", 1.0);
    // A pull before any HELLO.
    let pull = Value::Map(vec![("partitions".into(), Value::Array(vec![1.into()]))]);
    let back = exchange(port, &frame(7, 1, &pull));
    assert_eq!(first_frame(&back).0, 2, "REFUSED");
    wait_errors(&node, "bad_hello", 1.0);
    // A well-formed HELLO, then a frame of an unknown kind.
    let mut bytes = hello(PEER_VERSION, "node-z", 1);
    bytes.extend(frame(200, 0, &Value::Nil));
    let back = exchange(port, &bytes);
    assert_eq!(first_frame(&back).0, 1, "the node answered the HELLO first");
    wait_errors(&node, "bad_frame", 2.0);
    still_serves(&node);
}

/// A peer refused again and again (a misconfigured node redialling, a scanner) is counted every
/// time but logged once per 10 s, the line carrying `err {type, message}`.
#[test]
fn repeated_refusals_are_counted_each_and_logged_once() {
    let (node, port) = start();
    for _ in 0..30 {
        let back = exchange(port, &hello(99, "node-y", 1));
        assert_eq!(first_frame(&back).0, 2, "REFUSED");
    }
    wait_errors(&node, "version", 30.0);
    let lines: Vec<_> = node
        .logs()
        .into_iter()
        .filter(|l| l["msg"] == "peer refused" && l["reason"] == "version")
        .collect();
    assert_eq!(lines.len(), 1, "one line for 30 refusals: {lines:#?}");
    assert_eq!(lines[0]["level"], 40, "{}", lines[0]);
    assert_eq!(lines[0]["err"]["type"], "version", "{}", lines[0]);
    assert!(
        lines[0]["err"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("version 99")),
        "{}",
        lines[0]
    );
    still_serves(&node);
}

/// Frames read off `s` until `until` says stop (or 5 s pass): (kind, correlation id, body).
fn read_frames(
    s: &mut TcpStream,
    until: impl Fn(&[(u8, u64, Value)]) -> bool,
) -> Vec<(u8, u64, Value)> {
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let t0 = std::time::Instant::now();
    let mut buf = Vec::new();
    let mut frames = Vec::new();
    while !until(&frames) && t0.elapsed() < Duration::from_secs(5) {
        let mut chunk = [0u8; 65536];
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => continue,
        }
        while buf.len() >= 4 {
            let len = u32::from_be_bytes(buf[0..4].try_into().unwrap()) as usize;
            if buf.len() < 4 + len {
                break;
            }
            let payload: Vec<u8> = buf.drain(..4 + len).skip(4).collect();
            let corr = u64::from_be_bytes(payload[1..9].try_into().unwrap());
            let body = rmpv::decode::read_value(&mut &payload[9..]).unwrap();
            frames.push((payload[0], corr, body));
        }
    }
    frames
}

/// A handshake as peer `node-p`, then `pulls` (correlation id, partitions, window) as PULLs.
fn pull_session(port: u16, pulls: &[(u64, Vec<u16>, u32)]) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("cluster TCP port accepts");
    let mut bytes = hello(PEER_VERSION, "node-p", 1);
    for (corr, partitions, window) in pulls {
        let body = Value::Map(vec![
            (
                "partitions".into(),
                Value::Array(partitions.iter().map(|&p| Value::from(p)).collect()),
            ),
            ("window".into(), Value::from(*window)),
        ]);
        bytes.extend(frame(7, *corr, &body));
    }
    s.write_all(&bytes).unwrap();
    s
}

const PULL_CHUNK: u8 = 8;
const PULL_DONE: u8 = 9;

#[test]
fn a_pull_naming_a_partition_many_times_exports_it_once() {
    let (node, port) = start();
    let mut s = pull_session(port, &[(1, vec![5; 1_000], 64)]);
    let frames = read_frames(&mut s, |f| f.iter().any(|(k, _, _)| *k == PULL_DONE));
    let chunks = frames
        .iter()
        .filter(|(k, c, _)| *k == PULL_CHUNK && *c == 1)
        .count();
    assert_eq!(
        chunks, 1,
        "one chunk for partition 5, whatever the repeats: {frames:?}"
    );
    assert!(
        frames.iter().any(|(k, c, _)| *k == PULL_DONE && *c == 1),
        "{frames:?}"
    );
    still_serves(&node);
}

#[test]
fn more_pulls_at_once_than_a_peer_needs_are_refused_and_counted() {
    let (node, port) = start();
    let every: Vec<u16> = (0..271).collect();
    // Window 1 and no grant: each export stalls after its first chunk and keeps its slot.
    let pulls: Vec<(u64, Vec<u16>, u32)> = (1..=5).map(|c| (c, every.clone(), 1)).collect();
    let mut s = pull_session(port, &pulls);
    let frames = read_frames(&mut s, |f| {
        f.iter().any(|(k, _, _)| *k == PULL_DONE)
            && f.iter().filter(|(k, _, _)| *k == PULL_CHUNK).count() >= 4
    });
    let done: Vec<&(u8, u64, Value)> = frames.iter().filter(|(k, _, _)| *k == PULL_DONE).collect();
    assert_eq!(done.len(), 1, "{frames:?}");
    let (_, corr, body) = done[0];
    assert_eq!(*corr, 5, "the fifth pull is the one refused: {frames:?}");
    let failure = body
        .as_map()
        .and_then(|m| m.iter().find(|(k, _)| k.as_str() == Some("failure")))
        .and_then(|(_, v)| v.as_str())
        .unwrap_or_default();
    assert!(failure.contains("pulls at once"), "{body:?}");
    // The four others each sent their one granted chunk and wait.
    for c in 1..=4 {
        assert_eq!(
            frames
                .iter()
                .filter(|(k, cc, _)| *k == PULL_CHUNK && *cc == c)
                .count(),
            1,
            "pull {c}: {frames:?}"
        );
    }
    wait_errors(&node, "bad_frame", 1.0);
    still_serves(&node);
}

/// A node whose cluster timeout (handshakes, stalled frames) is 1 s.
fn start_impatient() -> (Node, u16) {
    start_with(&["--cluster-timeout-ms", "1000"])
}

/// Whether the node closed `s` within `limit` (EOF or reset); what it sends meanwhile is read
/// and dropped.
fn closed_within(s: &TcpStream, limit: Duration) -> bool {
    let deadline = std::time::Instant::now() + limit;
    let mut reader = s;
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return false;
        }
        s.set_read_timeout(Some(left)).unwrap();
        match reader.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) => {
                return !matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                )
            }
        }
    }
}

#[test]
fn a_flood_of_silent_connections_is_capped_and_timed_out_and_the_node_keeps_serving() {
    let (node, port) = start_impatient();
    let held: Vec<TcpStream> = (0..150)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).expect("connect"))
        .collect();
    // Beyond the 64 in their handshake at once, connections are closed at once and counted.
    wait_errors(&node, "capacity", 150.0 - 64.0);
    let refused = held
        .iter()
        .filter(|s| closed_within(s, Duration::from_millis(200)))
        .count();
    assert!(refused >= 150 - 64, "{refused} of 150 closed at once");
    // The others are closed by the handshake timeout.
    std::thread::sleep(Duration::from_millis(1_500));
    let open = held
        .iter()
        .filter(|s| !closed_within(s, Duration::from_millis(100)))
        .count();
    assert_eq!(
        open, 0,
        "silent connections still held after the handshake timeout"
    );
    assert!(errors(&node, "timeout") >= 1.0);
    // Room again, and clients were served all along.
    let late = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    assert!(
        !closed_within(&late, Duration::from_millis(200)),
        "a new peer is heard again"
    );
    still_serves(&node);
    assert!(node
        .logs()
        .iter()
        .any(|l| l["msg"] == "cluster connection refused: too many"));
}

#[test]
fn a_frame_begun_and_never_finished_ends_the_connection() {
    let (node, port) = start_impatient();
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let mut bytes = hello(PEER_VERSION, "node-p", 1);
    // A length prefix of 64 MiB - 1 and ten bytes of its body, then nothing.
    bytes.extend_from_slice(&((64u32 << 20) - 1).to_be_bytes());
    bytes.extend_from_slice(&[0u8; 10]);
    s.write_all(&bytes).unwrap();
    let t0 = std::time::Instant::now();
    assert!(
        closed_within(&s, Duration::from_secs(5)),
        "the connection was held with a stalled frame"
    );
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(900),
        "closed before the timeout: {took:?}"
    );
    wait_errors(&node, "timeout", 1.0);
    still_serves(&node);
}

/// Before its HELLO is accepted a stranger may not announce a large frame: the decoder would
/// reserve a buffer of that size for every such connection. A 1 MiB length prefix is refused at
/// once, not after the stall timeout.
#[test]
fn a_large_frame_before_hello_ends_the_connection_at_once() {
    let (node, port) = start_impatient();
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let mut bytes = (1u32 << 20).to_be_bytes().to_vec();
    bytes.extend_from_slice(&[0u8; 10]);
    s.write_all(&bytes).unwrap();
    let t0 = std::time::Instant::now();
    assert!(
        closed_within(&s, Duration::from_secs(5)),
        "the connection was held"
    );
    let took = t0.elapsed();
    assert!(
        took < Duration::from_millis(900),
        "closed by the stall timeout, not refused: {took:?}"
    );
    wait_errors(&node, "bad_frame", 1.0);
    still_serves(&node);
}

// ---- the cluster secret ---------------------------------------------------------------------
// The handshake as docs/cluster.md describes it, computed here with the secret the node was
// given: HMAC-SHA256 over a label, then each part as a u32 big-endian length and its bytes.

const SECRET: &str = "the grid's shared secret";

fn mac(secret: &str, label: &str, parts: &[&[u8]]) -> Vec<u8> {
    use hmac::Mac;
    let mut m = <hmac::Hmac<sha2::Sha256> as Mac>::new_from_slice(secret.as_bytes()).unwrap();
    m.update(label.as_bytes());
    for p in parts {
        m.update(&(p.len() as u32).to_be_bytes());
        m.update(p);
    }
    m.finalize().into_bytes().to_vec()
}

/// A HELLO of `node_id` carrying the challenge `nonce`.
fn hello_with_nonce(node_id: &str, nonce: &[u8]) -> Vec<u8> {
    let mut bytes = hello(PEER_VERSION, node_id, 1);
    // Re-encode with the nonce: the body is the map after the 13-byte frame head.
    let mut body = rmpv::decode::read_value(&mut &bytes[13..]).unwrap();
    if let Value::Map(m) = &mut body {
        m.push(("nonce".into(), Value::Binary(nonce.to_vec())));
    }
    bytes = frame(1, 0, &body);
    bytes
}

fn field<'a>(body: &'a Value, key: &str) -> Option<&'a Value> {
    body.as_map()?
        .iter()
        .find(|(k, _)| k.as_str() == Some(key))
        .map(|(_, v)| v)
}

/// Dials the node as `node-p` with nonce `nd`: the node's answer (its HELLO) and the stream.
fn challenge(port: u16, nd: &[u8]) -> (TcpStream, Value) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.write_all(&hello_with_nonce("node-p", nd)).unwrap();
    let frames = read_frames(&mut s, |f| !f.is_empty());
    let (kind, _, body) = frames.first().cloned().expect("an answer to the HELLO");
    assert_eq!(kind, 1, "HELLO back: {body:?}");
    (s, body)
}

fn auth_frame(proof: Vec<u8>) -> Vec<u8> {
    frame(
        17,
        0,
        &Value::Map(vec![(
            "proofs".into(),
            Value::Array(vec![Value::Binary(proof)]),
        )]),
    )
}

fn pull_one() -> Vec<u8> {
    let body = Value::Map(vec![
        ("partitions".into(), Value::Array(vec![Value::from(5)])),
        ("window".into(), Value::from(4)),
    ]);
    frame(7, 1, &body)
}

fn refused_auth(s: &mut TcpStream) -> bool {
    let frames = read_frames(s, |f| !f.is_empty());
    frames
        .first()
        .is_some_and(|(k, _, b)| *k == 2 && reason(b).starts_with("auth"))
}

#[test]
fn with_a_cluster_secret_only_a_peer_that_proves_it_is_served() {
    let (node, port) = start_with(&["--cluster-secret", SECRET]);
    let nd = [7u8; 32];

    // The full handshake: the node proves the secret over our nonce and its own, we prove it
    // back, and a request is then served.
    let (mut s, answer) = challenge(port, &nd);
    let nl = match field(&answer, "nonce") {
        Some(Value::Binary(n)) => n.clone(),
        other => panic!("no nonce in the answer: {other:?}"),
    };
    assert_eq!(nl.len(), 32);
    let proofs = match field(&answer, "proofs") {
        Some(Value::Array(p)) => p.clone(),
        other => panic!("no proofs in the answer: {other:?}"),
    };
    let expected = mac(
        SECRET,
        "topgun-peer-accept",
        &[&nd, &nl, b"node-x", b"node-p"],
    );
    assert_eq!(proofs, vec![Value::Binary(expected)], "the node's proof");
    let auth = auth_frame(mac(
        SECRET,
        "topgun-peer-dial",
        &[&nl, &nd, b"node-p", b"node-x"],
    ));
    s.write_all(&auth).unwrap();
    s.write_all(&pull_one()).unwrap();
    let frames = read_frames(&mut s, |f| f.iter().any(|(k, _, _)| *k == PULL_DONE));
    assert!(
        frames.iter().any(|(k, c, _)| *k == PULL_DONE && *c == 1),
        "the authenticated peer's pull was served: {frames:?}"
    );
    drop(s);
    assert_eq!(errors(&node, "auth"), 0.0);

    // Replayed: the same HELLO and the recorded AUTH on a new connection. The node's nonce is
    // fresh, so the old proof does not cover it.
    let (mut s, again) = challenge(port, &nd);
    assert_ne!(
        field(&again, "nonce"),
        Some(&Value::Binary(nl)),
        "a fresh nonce"
    );
    s.write_all(&auth).unwrap();
    s.write_all(&pull_one()).unwrap();
    assert!(refused_auth(&mut s), "a replayed AUTH is refused");
    wait_errors(&node, "auth", 1.0);

    // A peer with another secret.
    let (mut s, answer) = challenge(port, &nd);
    let Some(Value::Binary(nl)) = field(&answer, "nonce").cloned() else {
        panic!("no nonce: {answer:?}")
    };
    let wrong = mac(
        "another secret, 16+",
        "topgun-peer-dial",
        &[&nl, &nd, b"node-p", b"node-x"],
    );
    s.write_all(&auth_frame(wrong)).unwrap();
    assert!(refused_auth(&mut s), "a wrong proof is refused");
    wait_errors(&node, "auth", 2.0);

    // A request instead of the AUTH, and a HELLO without a challenge (a node with no secret).
    let (mut s, _) = challenge(port, &nd);
    s.write_all(&pull_one()).unwrap();
    assert!(refused_auth(&mut s), "nothing is served before the AUTH");
    let back = exchange(port, &hello(PEER_VERSION, "node-q", 1));
    let (kind, body) = first_frame(&back);
    assert_eq!(kind, 2, "REFUSED");
    assert!(reason(&body).starts_with("auth"), "{body:?}");
    wait_errors(&node, "auth", 4.0);

    // Four refusals from one address within the minute: one line, with `err`.
    let lines: Vec<_> = node
        .logs()
        .into_iter()
        .filter(|l| l["msg"] == "peer refused" && l["reason"] == "auth")
        .collect();
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert_eq!(lines[0]["err"]["type"], "auth", "{:?}", lines[0]);
    still_serves(&node);
}

#[test]
fn membership_datagrams_without_the_secrets_mac_are_refused_before_decoding() {
    let (node, port) = start_with(&["--cluster-secret", SECRET]);
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    // A well-formed membership header would be decoded by a node without a secret; here it
    // is refused for its missing seal, then for a seal made with another secret.
    let plain = b"TG\x02garbage that never reaches the decoder".to_vec();
    let mut forged = b"TA\x01".to_vec();
    forged.extend(mac("another secret, 16+", "topgun-membership", &[&plain]));
    forged.extend(&plain);
    let mut truncated = b"TA\x02".to_vec();
    truncated.extend([0u8; 40]);
    for d in [&plain, &forged, &truncated] {
        udp.send_to(d, ("127.0.0.1", port)).unwrap();
    }
    let t0 = std::time::Instant::now();
    while node
        .scrape()
        .value_or_zero("topgun_cluster_invalid_datagrams_total", &[])
        < 3.0
    {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "datagrams not counted"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let lines: Vec<_> = node
        .logs()
        .into_iter()
        .filter(|l| {
            l["msg"]
                == "cluster datagram refused: the sender does not share this node's cluster secret"
        })
        .collect();
    assert_eq!(
        lines.len(),
        1,
        "one line per address per minute: {lines:#?}"
    );
    assert_eq!(lines[0]["reason"], "auth");
    still_serves(&node);
}
