//! Guards the log contract (node.md, Logs) on the real binary: every line is one Pino-shaped
//! JSON object (numeric `level`, `time` in epoch ms, `pid`, `hostname`, `msg`, `nodeId`);
//! on stdout `PORT=<n>` is the first line and everything after it is JSON; connection lines
//! carry their actor context; errors sit under `err` as `{type, message}`; repeated warnings
//! are rate-limited; an overflowing log drain drops and counts lines instead of blocking; and
//! a parent that stops reading stdout after `PORT=` stalls neither the node, its scrapes nor
//! its shutdown.
mod common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

use rmpv::Value;

use common::*;

fn assert_pino(line: &serde_json::Value, pid: u32, node_id: &str) {
    let level = line["level"]
        .as_u64()
        .unwrap_or_else(|| panic!("level: {line}"));
    assert!(
        [10, 20, 30, 40, 50, 60].contains(&level),
        "level {level}: {line}"
    );
    let time = line["time"]
        .as_u64()
        .unwrap_or_else(|| panic!("time: {line}"));
    assert!(
        time.abs_diff(now_millis()) < 600_000,
        "time is not epoch ms: {line}"
    );
    assert_eq!(line["pid"].as_u64(), Some(u64::from(pid)), "{line}");
    assert!(
        line["hostname"].as_str().is_some_and(|h| !h.is_empty()),
        "{line}"
    );
    assert!(
        line["msg"].as_str().is_some_and(|m| !m.is_empty()),
        "{line}"
    );
    assert_eq!(line["nodeId"].as_str(), Some(node_id), "{line}");
}

/// The top-level keys of a JSON object line, in order, duplicates kept (serde_json's `Value`
/// would silently keep only the last of two equal keys, which Loki/ELK may not).
struct Keys(Vec<String>);

impl<'de> serde::Deserialize<'de> for Keys {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Keys, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Keys;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut m: A) -> Result<Keys, A::Error> {
                let mut keys = Vec::new();
                while let Some((k, _)) = m.next_entry::<String, serde::de::IgnoredAny>()? {
                    keys.push(k);
                }
                Ok(Keys(keys))
            }
        }
        d.deserialize_map(V)
    }
}

/// Pino's first keys in Pino's order, and no key twice.
fn assert_keys(raw: &str) {
    let Keys(keys) = serde_json::from_str(raw).unwrap_or_else(|e| panic!("{e}: {raw}"));
    assert_eq!(
        keys[..6],
        ["level", "time", "pid", "hostname", "msg", "nodeId"],
        "{raw}"
    );
    let mut seen = std::collections::HashSet::new();
    for k in &keys {
        assert!(seen.insert(k), "key {k:?} twice in {raw}");
    }
}

/// (soft, hard) "Max open files" of a process, from /proc.
fn nofile_limits(pid: u32) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("/proc limits");
    let line = text
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("Max open files line");
    let nums: Vec<u64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    (nums[0], nums[1])
}

fn node_id(node: &Node) -> String {
    let (_, body) = node.get("/ready");
    let v: serde_json::Value = serde_json::from_str(&body).expect("/ready JSON");
    v["nodeId"].as_str().expect("nodeId").to_owned()
}

/// 8,192 SYNC_INIT items in one BATCH: each is answered ERROR 501 and logged at debug
/// ("operation not implemented"), one line per item, as fast as one actor can go.
fn flood_batch() -> Value {
    // A real TopGun message this node does not implement: each one is answered ERROR 501 and
    // logged at debug, so the flood is 8,192 log lines.
    let item = encode(&map(&[
        ("type", "LOCK_REQUEST".into()),
        ("name", "l".into()),
    ]));
    let mut data = Vec::new();
    for _ in 0..8192 {
        data.extend_from_slice(&(item.len() as u32).to_be_bytes());
        data.extend_from_slice(&item);
    }
    map(&[
        ("type", "BATCH".into()),
        ("count", 8192.into()),
        ("data", Value::Binary(data)),
    ])
}

#[tokio::test]
async fn every_line_is_pino_json_with_node_id_and_context() {
    let mut node = Node::start_with(NodeOptions::jwt().arg("--log-level").arg("debug"));
    let id = node_id(&node);
    let pid = node.pid();
    let nofile = nofile_limits(pid);

    // Activity that logs at several levels and from several actors.
    let mut ok = node.authed_client().await;
    ok.send(&ping(1.0)).await;
    ok.recv_type("PONG").await.expect("PONG");
    ok.send_raw(vec![0x93, 1, 2, 3]).await; // debug: invalid frame dropped
    ok.send(&ping(2.0)).await;
    ok.recv_type("PONG").await.expect("PONG");
    let mut bad = node.client().await;
    bad.recv().await.expect("AUTH_REQUIRED");
    bad.send(&auth(&token("wrong", "u", 60))).await; // warn: client auth failed
    bad.expect_close(Duration::from_secs(5)).await;

    let connected = node.wait_log("client connected", |_| true);
    assert_eq!(connected["actor"], "connection", "{connected}");
    let client_id = connected["clientId"]
        .as_str()
        .unwrap_or_else(|| panic!("clientId: {connected}"))
        .to_owned();
    assert!(connected["peer"].as_str().is_some(), "{connected}");
    let failed = node.wait_log("client auth failed", |_| true);
    assert_eq!(failed["level"], 40);
    assert_eq!(failed["actor"], "connection");
    assert_eq!(failed["reason"], "bad_signature");
    assert!(failed["clientId"].is_string(), "{failed}");
    let dropped = node.wait_log("invalid frame dropped", |_| true);
    assert_eq!(dropped["level"], 20);
    assert_eq!(dropped["reason"], "not_a_map");
    let authed = node.wait_log("client authenticated", |l| l["userId"] == "user-1");
    assert_eq!(authed["actor"], "connection");

    drop(ok);
    drop(bad);
    let status = node.sigterm(Duration::from_secs(10)).expect("exits");
    assert!(status.success());

    let raw = std::fs::read_to_string(&node.log_path).expect("log file");
    for line in raw.lines() {
        assert_keys(line);
    }
    let logs = node.logs();
    assert!(logs.len() >= 8, "{logs:#?}");
    for line in &logs {
        assert_pino(line, pid, &id);
        if line["actor"] == "connection" {
            assert!(line["clientId"].is_string(), "no clientId: {line}");
        }
    }
    // The same connection keeps its clientId through its life.
    assert!(
        logs.iter()
            .filter(|l| l["clientId"] == client_id.as_str())
            .count()
            >= 2
    );
    let start = logs
        .iter()
        .find(|l| l["msg"] == "node starting")
        .expect("start line");
    assert_eq!(start["level"], 30);
    assert!(
        start["port"].is_number(),
        "effective config logged: {start}"
    );
    let raised = logs
        .iter()
        .find(|l| l["msg"] == "open files limit raised")
        .expect("the raised open-files limit is logged");
    let (soft, hard) = nofile;
    assert_eq!(soft, hard, "soft open-files limit raised to the hard limit");
    assert_eq!(raised["limit"].as_u64(), Some(soft), "{raised}");
    for msg in ["listening", "shutdown started", "shutdown complete"] {
        assert!(logs.iter().any(|l| l["msg"] == msg), "no {msg:?} line");
    }
    assert!(
        logs.iter().any(|l| l["actor"] == "gate"),
        "gate lines carry actor=gate"
    );
}

/// `--log-dest stdout` (the default): `PORT=<n>` first, exactly, then only JSON lines.
#[test]
fn stdout_has_port_line_first_then_json() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = command(dir.path())
        .env("TOPGUN_NO_AUTH", "1")
        .env("STORAGE_BACKEND", "memory")
        .env("LOG_LEVEL", "trace")
        .args(["--port", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).expect("read first line");
    let port: u16 = first
        .strip_suffix('\n')
        .and_then(|l| l.strip_prefix("PORT="))
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("first stdout line is not PORT=<n>: {first:?}"));
    let deadline = Instant::now() + Duration::from_secs(15);
    while http_get(port, "/ready").ok().map(|r| r.0) != Some(200) {
        assert!(Instant::now() < deadline, "not ready");
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let mut lines = Vec::new();
    // With --cluster-port 0 (the harness default) the second line is CLUSTER_PORT=<n>.
    let mut second = String::new();
    out.read_line(&mut second).expect("read second line");
    assert!(second.starts_with("CLUSTER_PORT="), "{second:?}");
    for line in out.lines() {
        lines.push(line.expect("read stdout"));
    }
    let status = child.wait().expect("wait");
    assert!(status.success(), "{status:?}");
    assert!(lines.len() >= 4, "{lines:#?}");
    for l in &lines {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}"));
        assert!(v["level"].is_number() && v["nodeId"].is_string(), "{l}");
        assert_keys(l);
    }
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(stderr, "", "nothing on stderr");
}

/// `--log-dest stderr`: stdout carries only the `PORT=` line.
#[test]
fn stderr_destination_leaves_stdout_to_the_port_line() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = command(dir.path())
        .env("TOPGUN_NO_AUTH", "1")
        .env("STORAGE_BACKEND", "memory")
        .args(["--port", "0", "--log-dest", "stderr"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let port = read_port(&mut out, "PORT").expect("PORT=");
    let deadline = Instant::now() + Duration::from_secs(15);
    while http_get(port, "/ready").ok().map(|r| r.0) != Some(200) {
        assert!(Instant::now() < deadline, "not ready");
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let rest: Vec<String> = out.lines().map(|l| l.expect("stdout")).collect();
    // Only the CLUSTER_PORT=<n> line of --cluster-port 0 (the harness default) may follow.
    assert!(
        rest.iter().all(|l| l.starts_with("CLUSTER_PORT=")) && rest.len() <= 1,
        "stdout after PORT=: {rest:#?}"
    );
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(child.wait().expect("wait").success());
    let lines: Vec<_> = stderr.lines().collect();
    assert!(lines.len() >= 3, "{stderr}");
    for l in lines {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}"));
        assert!(v["level"].is_number() && v["nodeId"].is_string(), "{l}");
        assert_keys(l);
    }
}

/// A start-up failure is logged with `err: {type, message}` (and still one stderr line).
#[test]
fn errors_are_logged_under_err_with_type_and_message() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("node.log");
    let (_l, busy) = busy_port();
    let out = run_to_exit(
        command(dir.path())
            .env("TOPGUN_NO_AUTH", "1")
            .env("STORAGE_BACKEND", "memory")
            .args(["--port", &busy.to_string(), "--log-dest"])
            .arg(&log),
        Duration::from_secs(10),
    );
    assert!(!out.status.success());
    assert_eq!(out.stderr_lines().len(), 1, "{}", out.stderr);
    let text = std::fs::read_to_string(&log).expect("log file");
    let failed: serde_json::Value = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON"))
        .find(|l: &serde_json::Value| l["err"].is_object())
        .unwrap_or_else(|| panic!("no line with err: {text}"));
    assert_eq!(failed["level"], 50, "{failed}");
    let err = failed["err"].as_object().unwrap();
    assert!(
        err["type"].as_str().is_some_and(|t| !t.is_empty()),
        "{failed}"
    );
    assert!(
        err["message"]
            .as_str()
            .is_some_and(|m| m.contains(&busy.to_string())),
        "{failed}"
    );
    assert_eq!(err.len(), 2, "err is exactly {{type, message}}: {failed}");
}

/// A flood of refused frames costs one warning line (with its `suppressed` count), not one
/// line per refusal.
#[tokio::test]
async fn repeated_warnings_are_rate_limited() {
    let node = Node::start_with(NodeOptions::default().args(&[
        "--client-rate",
        "1",
        "--client-burst",
        "1",
    ]));
    let mut c = node.client().await;
    for i in 0..50 {
        c.send(&ping(i as f64)).await;
    }
    let mut refused = 0;
    for _ in 0..50 {
        if msg_type(&c.recv().await.expect("reply")) == "ERROR" {
            refused += 1;
        }
    }
    assert!(refused >= 40, "{refused}");
    node.wait_metric("topgun_client_rate_limited_total", &[], refused as f64);
    // One more event logged after the flood, to know the writer got that far.
    drop(c);
    node.wait_log("client disconnected", |_| true);
    let lines: Vec<_> = node
        .logs()
        .into_iter()
        .filter(|l| l["msg"] == "client rate-limited")
        .collect();
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert_eq!(lines[0]["level"], 40);
    assert!(lines[0]["suppressed"].is_number(), "{}", lines[0]);
    assert_eq!(lines[0]["err"]["type"], "rate_limited", "{}", lines[0]);
    // One line, but the event's series counts every refusal.
    let events = node.scrape();
    assert_eq!(
        events.value(
            "topgun_events_total",
            &[("event", "client_rate_limited"), ("level", "warn")]
        ),
        Some(refused as f64)
    );
    assert_eq!(
        events.value(
            "topgun_events_total",
            &[("event", "node_starting"), ("level", "info")]
        ),
        Some(1.0)
    );
    assert_eq!(
        events.value(
            "topgun_events_total",
            &[("event", "member_down"), ("level", "warn")]
        ),
        Some(0.0),
        "every event's series exists before it happens"
    );
}

#[tokio::test]
async fn log_overflow_is_counted_not_blocking() {
    let node = Node::start_with(NodeOptions::default().args(&[
        "--log-buffer",
        "1",
        "--log-level",
        "debug",
    ]));
    let mut c = node.client().await;
    c.send(&flood_batch()).await;
    // The connection goes on: its PING is answered after the 8,192 ERROR 501 replies.
    c.send(&ping(1.0)).await;
    let t0 = Instant::now();
    let mut n = 0;
    while t0.elapsed() < Duration::from_secs(10) {
        if let Some(m) = c.recv_within(Duration::from_secs(5)).await {
            if msg_type(&m) == "PONG" {
                break;
            }
            n += 1;
        } else {
            panic!("PONG missing after {n} replies");
        }
    }
    assert_eq!(node.get("/health").0, 200);
    let deadline = Instant::now() + Duration::from_secs(10);
    let dropped = loop {
        let d = node
            .scrape()
            .value("topgun_log_records_dropped_total", &[])
            .expect("family present");
        if d > 0.0 {
            break d;
        }
        assert!(Instant::now() < deadline, "no log line counted as dropped");
        std::thread::sleep(Duration::from_millis(50));
    };
    // Every op line was either written or counted as dropped.
    let written = node
        .logs()
        .iter()
        .filter(|l| l["msg"] == "operation not implemented")
        .count() as f64;
    assert!(
        written + dropped >= 8192.0,
        "written {written} + dropped {dropped} < 8192"
    );
    assert!(written < 8192.0, "nothing of the flood was dropped");
}

/// The parent reads `PORT=` and then never reads stdout again; the node logs at trace into
/// the full pipe. It must keep serving, keep scraping, and still exit 0 within 10 s.
#[tokio::test]
async fn unread_stdout_never_stalls_the_node() {
    let mut node = Node::start_with(
        NodeOptions {
            log_to_stdout: true,
            ..NodeOptions::default()
        }
        .args(&["--log-level", "trace"]),
    );
    // Far more than a 64 KiB pipe holds: 3 x 8,192 debug lines, plus connection churn.
    for _ in 0..3 {
        let mut c = node.client().await;
        c.send(&flood_batch()).await;
        c.send(&ping(1.0)).await;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let m = c.recv().await.expect("replies keep coming");
            if msg_type(&m) == "PONG" {
                break;
            }
            assert!(Instant::now() < deadline, "no PONG after the flood");
        }
    }
    for i in 0..50 {
        let mut c = node.client().await;
        c.send(&ping(i as f64)).await;
        assert_eq!(msg_type(&c.recv().await.expect("PONG")), "PONG");
    }
    // Still serving: health, a scrape that shows the drops, a new client.
    let t0 = Instant::now();
    assert_eq!(node.get("/health").0, 200);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = node.scrape();
        if s.value("topgun_log_records_dropped_total", &[]) > Some(0.0) {
            break;
        }
        assert!(Instant::now() < deadline, "drops not counted");
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("health + scrape with a blocked stdout: {:?}", t0.elapsed());
    let mut c = node.client().await;
    c.send(&ping(7.0)).await;
    assert_eq!(msg_type(&c.recv().await.expect("PONG")), "PONG");

    let t0 = Instant::now();
    node.signal("TERM");
    let (code, _) = c.expect_close(Duration::from_secs(5)).await;
    assert_eq!(code, 1001);
    let status = node
        .wait_exit(Duration::from_secs(10).saturating_sub(t0.elapsed()))
        .expect("exits within 10 s of SIGTERM although nobody reads its stdout");
    assert!(status.success(), "{status:?}");
    eprintln!("shutdown with a blocked stdout took {:?}", t0.elapsed());
    assert!(node.stdout.is_some(), "stdout was held, never read");
}
