//! TLS of the client port (`--tls-cert`, `--tls-key`) with the real binary and certificates made
//! here: a TopGun client over `wss://`, `/health` and `/metrics` over `https://`, a plain-text
//! client told what is wrong, broken and silent handshakes counted, a renewed certificate taken
//! up on SIGHUP and on changed files while open connections stay, and bad files refused.
mod common;

use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::proto::*;
use common::tls::TestCa as Ca;
use common::*;
use rcgen::KeyPair;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::MaybeTlsStream;

const SECRET: &str = "client-tls-test-secret-0123456789";

/// The names the node's certificates carry: what the clients dial.
const NAMES: [&str; 2] = ["localhost", "127.0.0.1"];

/// A node serving TLS on its client port; its stdout is kept so the pipe stays open.
struct TlsNode {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
    cert: PathBuf,
    key: PathBuf,
    _stdout: BufReader<std::process::ChildStdout>,
}

impl TlsNode {
    fn start(ca: &Ca, dir: tempfile::TempDir, extra: &[&str]) -> TlsNode {
        let (cert, key) = (dir.path().join("tls.pem"), dir.path().join("tls-key.pem"));
        ca.sign_into(&NAMES, &cert, &key);
        let mut cmd = command(dir.path());
        cmd.args(["--port", "0", "--storage-backend", "memory", "--log-dest"])
            .arg(dir.path().join("node.log"))
            .arg("--tls-cert")
            .arg(&cert)
            .arg("--tls-key")
            .arg(&key)
            .args(extra)
            .env("JWT_SECRET", SECRET)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd.spawn().expect("spawn topgun-node");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let port = read_port(&mut stdout, "PORT").expect("PORT=");
        TlsNode {
            child,
            port,
            dir,
            cert,
            key,
            _stdout: stdout,
        }
    }

    fn logs(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.dir.path().join("node.log"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON log line"))
            .collect()
    }

    fn signal(&self, sig: &str) {
        let ok = std::process::Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill {sig}");
    }
}

impl Drop for TlsNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TLS connection to the node trusting only `ca`, and the certificate the node presented.
async fn tls_connect(
    port: u16,
    ca: &Path,
) -> Result<
    (
        tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
        CertificateDer<'static>,
    ),
    String,
> {
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).expect("CA file") {
        roots.add(c.expect("CA pem")).expect("CA cert");
    }
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let name = ServerName::try_from("localhost").expect("name");
    let tls = tokio::time::timeout(Duration::from_secs(5), connector.connect(name, tcp))
        .await
        .map_err(|_| "handshake timed out".to_owned())?
        .map_err(|e| format!("handshake: {e}"))?;
    let presented = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .expect("a server certificate")
        .clone()
        .into_owned();
    Ok((tls, presented))
}

/// GET over https: (status, body).
async fn https_get(port: u16, ca: &Path, path: &str) -> (u16, String) {
    let (mut tls, _) = tls_connect(port, ca).await.expect("TLS");
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    tls.write_all(request.as_bytes()).await.expect("request");
    let mut raw = Vec::new();
    let _ = tls.read_to_end(&mut raw).await;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status in {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    (status, body)
}

async fn https_scrape(node: &TlsNode, ca: &Path) -> Scrape {
    let (status, body) = https_get(node.port, ca, "/metrics").await;
    assert_eq!(status, 200, "{body}");
    Scrape::parse(&body)
}

/// Polls `/metrics` over https until `probe` holds (reports arrive on an interval).
async fn wait_scrape(node: &TlsNode, ca: &Path, what: &str, probe: impl Fn(&Scrape) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = https_scrape(node, ca).await;
        if probe(&s) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: not within 10 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A TopGun client over wss://, authenticated.
async fn wss_client(port: u16, ca: &Path) -> Client {
    let (tls, _) = tls_connect(port, ca).await.expect("TLS");
    let (ws, _) = tokio_tungstenite::client_async(
        format!("wss://localhost:{port}/ws"),
        MaybeTlsStream::Rustls(tls),
    )
    .await
    .expect("WebSocket upgrade over TLS");
    let mut c = Client { ws, closed: None };
    let first = c.recv().await.expect("AUTH_REQUIRED");
    assert_eq!(msg_type(&first), "AUTH_REQUIRED");
    c.send(&auth(&token(SECRET, "user-1", 3600))).await;
    let ack = c.recv().await.expect("AUTH_ACK");
    assert_eq!(msg_type(&ack), "AUTH_ACK", "{ack:?}");
    c
}

/// One acknowledged write of `key` (fails the test when no OP_ACK comes).
async fn write_one(c: &mut Client, key: &str) {
    let t = Ts::new(now_millis(), 0, "tls-test");
    let value = map(&[("v", key.into())]);
    c.send_acked(&client_op(put_op(key, "tls", key, value, &t)))
        .await;
}

fn failures(s: &Scrape, reason: &str) -> f64 {
    s.value_or_zero("topgun_tls_handshake_failures_total", &[("reason", reason)])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topgun_client_works_over_wss_and_health_and_metrics_over_https() {
    let dir = tempfile::tempdir().expect("dir");
    let ca = Ca::new(dir.path(), "main");
    let node = TlsNode::start(&ca, tempfile::tempdir().expect("dir"), &[]);

    let (status, body) = https_get(node.port, &ca.ca_file(), "/health").await;
    assert_eq!((status, body.trim()), (200, r#"{"status":"ok"}"#));

    let mut writer = wss_client(node.port, &ca.ca_file()).await;
    for i in 0..20 {
        write_one(&mut writer, &format!("k{i}")).await;
    }
    let mut reader = wss_client(node.port, &ca.ca_file()).await;
    let resp = reader.subscribe("q", "tls", map(&[])).await;
    let rows = results(&resp);
    assert_eq!(rows.len(), 20, "every write read back over wss: {resp:?}");

    let s = https_scrape(&node, &ca.ca_file()).await;
    for reason in ["plaintext", "handshake", "timeout"] {
        assert_eq!(failures(&s, reason), 0.0, "{reason}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_text_client_is_told_the_port_speaks_tls_and_counted() {
    let dir = tempfile::tempdir().expect("dir");
    let ca = Ca::new(dir.path(), "main");
    let node = TlsNode::start(&ca, tempfile::tempdir().expect("dir"), &[]);

    // Plain HTTP gets a 400 it can read, saying what to do.
    let (status, body) = http_get(node.port, "/health").expect("a plain-text answer");
    assert_eq!(status, 400);
    assert!(
        body.contains("wss://") && body.contains("https://"),
        "{body}"
    );

    // A plain WebSocket client fails its upgrade at once with that 400, no hang.
    let started = Instant::now();
    let err = tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{}/ws", node.port))
        .await
        .expect_err("a plain ws:// upgrade on the TLS port");
    assert!(err.to_string().contains("400"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );

    wait_scrape(
        &node,
        &ca.ca_file(),
        "two plain-text clients counted",
        |s| failures(s, "plaintext") == 2.0,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_and_silent_handshakes_are_counted_logged_and_cost_nothing() {
    let dir = tempfile::tempdir().expect("dir");
    let ca = Ca::new(dir.path(), "main");
    let node = TlsNode::start(&ca, tempfile::tempdir().expect("dir"), &[]);
    let mut steady = wss_client(node.port, &ca.ca_file()).await;

    // A TLS record header followed by garbage, then a connection that never sends a byte.
    let mut garbage = tokio::net::TcpStream::connect(("127.0.0.1", node.port))
        .await
        .expect("connect");
    garbage
        .write_all(b"\x16\x03\x01\x00\x20not a client hello at all, really")
        .await
        .expect("write");
    let mut buf = [0u8; 256];
    let read = tokio::time::timeout(Duration::from_secs(5), garbage.read(&mut buf)).await;
    assert!(
        read.is_ok(),
        "the node answered or closed the broken handshake"
    );
    let silent = tokio::net::TcpStream::connect(("127.0.0.1", node.port))
        .await
        .expect("connect");

    wait_scrape(&node, &ca.ca_file(), "both counted", |s| {
        failures(s, "handshake") == 1.0 && failures(s, "timeout") == 1.0
    })
    .await;
    drop(silent);
    // The established client and new ones are served all along.
    write_one(&mut steady, "after").await;
    let mut fresh = wss_client(node.port, &ca.ca_file()).await;
    write_one(&mut fresh, "fresh").await;

    let line = node
        .logs()
        .into_iter()
        .find(|l| l["msg"] == "client TLS handshakes failed")
        .expect("a line about the failed handshakes");
    assert_eq!(line["level"], 40, "{line}");
    assert_eq!(line["err"]["type"], "tls", "{line}");
    assert!(line["handshake"].as_u64().is_some(), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_serves_a_renewed_certificate_and_open_connections_stay() {
    let dir = tempfile::tempdir().expect("dir");
    let (old_ca, new_ca) = (Ca::new(dir.path(), "old"), Ca::new(dir.path(), "new"));
    // Files are not watched: only the signal reloads.
    let node = TlsNode::start(
        &old_ca,
        tempfile::tempdir().expect("dir"),
        &["--tls-reload-interval-ms", "0"],
    );
    let mut open = wss_client(node.port, &old_ca.ca_file()).await;

    new_ca.sign_into(&NAMES, &node.cert, &node.key);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        tls_connect(node.port, &old_ca.ca_file()).await.is_ok(),
        "without a signal the certificate in use stays"
    );

    node.signal("-HUP");
    let deadline = Instant::now() + Duration::from_secs(5);
    while tls_connect(node.port, &new_ca.ca_file()).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "the renewed certificate within 5 s of SIGHUP"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let refused = tls_connect(node.port, &old_ca.ca_file()).await;
    assert!(
        refused.is_err(),
        "new handshakes present the renewed certificate"
    );

    // The connection made with the old certificate goes on.
    write_one(&mut open, "still-here").await;
    wait_scrape(&node, &new_ca.ca_file(), "the reload counted", |s| {
        s.value_or_zero("topgun_tls_reloads_total", &[("result", "ok")]) == 1.0
    })
    .await;
    let logs = node.logs();
    assert!(
        logs.iter()
            .any(|l| l["msg"] == "client TLS certificate reloaded" && l["cause"] == "sighup"),
        "a line says why it reloaded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_files_are_taken_up_and_a_bad_key_keeps_the_certificate_in_use() {
    let dir = tempfile::tempdir().expect("dir");
    let (old_ca, new_ca) = (Ca::new(dir.path(), "old"), Ca::new(dir.path(), "new"));
    let node = TlsNode::start(
        &old_ca,
        tempfile::tempdir().expect("dir"),
        &["--tls-reload-interval-ms", "100"],
    );
    let (_, first) = tls_connect(node.port, &old_ca.ca_file())
        .await
        .expect("TLS");

    // A key file without a key: refused, counted, logged; the certificate in use stays.
    std::fs::write(&node.key, "not a key\n").expect("write");
    wait_scrape(&node, &old_ca.ca_file(), "the failed reload counted", |s| {
        s.value_or_zero("topgun_tls_reloads_total", &[("result", "error")]) >= 1.0
    })
    .await;
    let (_, still) = tls_connect(node.port, &old_ca.ca_file())
        .await
        .expect("TLS with the old certificate after a failed reload");
    assert_eq!(still, first);
    let line = node
        .logs()
        .into_iter()
        .find(|l| l["msg"] == "client TLS reload failed; the certificate in use stays")
        .expect("a line about the failed reload");
    assert_eq!(line["level"], 50, "{line}");
    assert_eq!(line["err"]["type"], "tls_empty", "{line}");
    assert_eq!(line["cause"], "files_changed", "{line}");

    // Good files again, from another CA: taken up without a signal.
    new_ca.sign_into(&NAMES, &node.cert, &node.key);
    let deadline = Instant::now() + Duration::from_secs(5);
    while tls_connect(node.port, &new_ca.ca_file()).await.is_err() {
        assert!(Instant::now() < deadline, "the changed files within 5 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[test]
fn unusable_tls_files_stop_the_node_with_exit_2_and_one_line() {
    let dir = tempfile::tempdir().expect("dir");
    let d = dir.path();
    let junk = d.join("junk.pem");
    std::fs::write(&junk, "not a certificate\n").expect("write");
    let ca = Ca::new(d, "main");
    let (cert, key) = (d.join("c.pem"), d.join("k.pem"));
    ca.sign_into(&NAMES, &cert, &key);
    let missing = d.join("missing.pem");
    let other_key = d.join("other-key.pem");
    std::fs::write(
        &other_key,
        KeyPair::generate().expect("key").serialize_pem(),
    )
    .expect("write");

    let cases: [(Vec<&Path>, &[&str]); 4] = [
        (vec![&junk, &key], &["[tls_empty]", "junk.pem"]),
        (vec![&cert, &junk], &["[tls_empty]", "junk.pem"]),
        (vec![&cert, &missing], &["[tls_unreadable]", "missing.pem"]),
        (vec![&cert, &other_key], &["[tls_invalid]", "client TLS"]),
    ];
    for (files, names) in cases {
        let out = run_to_exit(
            command(d)
                .args(["--port", "0", "--storage-backend", "memory"])
                .env("TOPGUN_NO_AUTH", "1")
                .arg("--tls-cert")
                .arg(files[0])
                .arg("--tls-key")
                .arg(files[1]),
            Duration::from_secs(10),
        );
        assert_eq!(out.status.code(), Some(2), "{files:?}: {}", out.stderr);
        let lines = out.stderr_lines();
        assert_eq!(lines.len(), 1, "{files:?}: one stderr line, got {lines:#?}");
        for name in names {
            assert!(
                lines[0].contains(name),
                "{:?} does not name {name}",
                lines[0]
            );
        }
    }
    // One of the two alone is a configuration error.
    let out = run_to_exit(
        command(d)
            .args(["--port", "0"])
            .env("TOPGUN_NO_AUTH", "1")
            .arg("--tls-cert")
            .arg(&cert),
        Duration::from_secs(10),
    );
    assert_eq!(out.status.code(), Some(2), "{}", out.stderr);
    assert!(out.stderr.contains("tls_key"), "{}", out.stderr);
}
