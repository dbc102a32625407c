//! The operator kit (config/, docs/operations.md) against the real node.
//!
//! The bug this guards: dashboards and alerts written against metric names the node does not
//! export (the seed's server shipped six metrics that never moved; a panel on a missing family
//! is just as silent), log lines that only look like Pino's, and introspection endpoints open
//! to anyone. So every dashboard and alert expression is parsed by promtool and checked against
//! a live scrape, every exported family has a panel, the live scrape passes `promtool check
//! metrics`, real log lines render through `pino-pretty`, and `/debug/*` is tested end to end.
//!
//! promtool (Debian `prometheus`) and pino-pretty (npm) are external: a test without them says
//! so and passes, unless `TOPGUN_REQUIRE_TOOLS=1` (CI, scripts/check-operator-kit) makes a
//! missing tool a failure.
mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{http_request, Node, NodeOptions};

const TOKEN: &str = "operator-kit-test-token";

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// `Some(program)` when the tool runs; `None` (with a note) when it is missing and not required.
fn tool(name: &str) -> Option<&str> {
    let found = Command::new(name)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if found {
        return Some(name);
    }
    if std::env::var("TOPGUN_REQUIRE_TOOLS").as_deref() == Ok("1") {
        panic!("{name} is required (TOPGUN_REQUIRE_TOOLS=1) but not on PATH");
    }
    eprintln!("SKIPPED: {name} is not installed (apt-get install prometheus / npm install -g pino-pretty)");
    None
}

/// Families named by `# TYPE` lines of a scrape.
fn families(scrape: &str) -> BTreeSet<String> {
    scrape
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// `topgun_*` names in a text (PromQL, a rules file).
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("topgun_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        out.insert(tail[..end].to_owned());
        rest = &tail[end..];
    }
    out
}

/// The family a series name belongs to (histogram and summary series carry suffixes).
fn family_of<'a>(name: &str, families: &'a BTreeSet<String>) -> Option<&'a String> {
    families.get(name).or_else(|| {
        ["_bucket", "_sum", "_count"]
            .iter()
            .filter_map(|s| name.strip_suffix(s))
            .find_map(|base| families.get(base))
    })
}

fn dashboard_exprs() -> Vec<String> {
    let text = std::fs::read_to_string(repo("config/grafana/topgun-node.json")).unwrap();
    let dash: serde_json::Value = serde_json::from_str(&text).expect("dashboard is JSON");
    let mut out = Vec::new();
    fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                if let Some(serde_json::Value::String(e)) = m.get("expr") {
                    out.push(e.clone());
                }
                m.values().for_each(|v| walk(v, out));
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    walk(&dash, &mut out);
    out
}

fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().expect("run tool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn dashboard_and_alerts_name_only_exported_families_and_cover_every_family() {
    let node = Node::start();
    let (_, scrape) = node.get("/metrics");
    let exported = families(&scrape);
    assert!(exported.len() > 40, "{exported:?}");

    let exprs = dashboard_exprs();
    assert!(exprs.len() > 40, "dashboard has {} queries", exprs.len());
    let dash_names: BTreeSet<String> = exprs.iter().flat_map(|e| metric_names(e)).collect();
    let alerts = std::fs::read_to_string(repo("config/prometheus/alerts.yml")).unwrap();
    for name in dash_names.iter().chain(&metric_names(&alerts)) {
        assert!(
            family_of(name, &exported).is_some(),
            "{name} is used by the operator kit but the node does not export it"
        );
    }
    let covered: BTreeSet<&String> = dash_names
        .iter()
        .filter_map(|n| family_of(n, &exported))
        .collect();
    let missing: Vec<&String> = exported.iter().filter(|f| !covered.contains(f)).collect();
    assert!(missing.is_empty(), "families without a panel: {missing:?}");

    // Every expression parses: wrapped as recording rules and checked by promtool.
    let Some(promtool) = tool("promtool") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("dashboard_rules.yml");
    let mut f = std::fs::File::create(&rules).unwrap();
    writeln!(f, "groups:\n  - name: dashboard\n    rules:").unwrap();
    for (i, e) in exprs.iter().enumerate() {
        let e = e
            .replace("$__rate_interval", "5m")
            .replace("$__interval", "1m")
            .replace("$node", ".*")
            .replace("$job", ".*");
        let quoted = serde_json::to_string(&e).unwrap();
        writeln!(
            f,
            "      - record: dashboard_panel_{i}\n        expr: {quoted}"
        )
        .unwrap();
    }
    drop(f);
    let (ok, out) = run(Command::new(promtool).arg("check").arg("rules").arg(&rules));
    assert!(ok, "a dashboard expression does not parse:\n{out}");
}

#[test]
fn live_scrape_passes_promtool_check_metrics() {
    let Some(promtool) = tool("promtool") else {
        return;
    };
    let node = Node::start();
    let (_, scrape) = node.get("/metrics");
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(scrape.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The seed's name has no `_total` and must stay exact (spec/metrics.md); that lint only.
    let problems: Vec<&str> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .filter(|l| !l.starts_with("topgun_events_filtered_by_subscription counter metrics should have \"_total\" suffix"))
        .collect();
    assert!(problems.is_empty(), "promtool check metrics:\n{text}");
}

#[test]
fn alert_rules_and_scrape_config_pass_promtool() {
    let Some(promtool) = tool("promtool") else {
        return;
    };
    let (ok, out) = run(Command::new(promtool)
        .args(["check", "config"])
        .arg(repo("config/prometheus/prometheus.yml")));
    assert!(ok, "{out}");
    let (ok, out) = run(Command::new(promtool)
        .args(["test", "rules"])
        .arg(repo("config/prometheus/tests/alerts_test.yml")));
    assert!(ok, "{out}");
}

#[test]
fn every_alert_has_a_test_and_a_runbook_section() {
    let alerts = std::fs::read_to_string(repo("config/prometheus/alerts.yml")).unwrap();
    let tests = std::fs::read_to_string(repo("config/prometheus/tests/alerts_test.yml")).unwrap();
    let runbook = std::fs::read_to_string(repo("docs/operations.md")).unwrap();
    let names: Vec<&str> = alerts
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .collect();
    assert!(names.len() >= 12, "{names:?}");
    for name in names {
        let fired = format!("alertname: {name}\n        exp_alerts:\n          - exp_labels");
        let quiet = format!("alertname: {name}\n        exp_alerts: []");
        assert!(tests.contains(&fired), "{name}: no firing test");
        assert!(tests.contains(&quiet), "{name}: no not-firing test");
        let anchor = format!("#{}", name.to_lowercase());
        assert!(
            alerts.contains(&format!("operations.md{anchor}\"")),
            "{name}: runbook_url"
        );
        assert!(
            runbook.contains(&format!("\n### {name}\n")),
            "{name}: no `### {name}` section in docs/operations.md"
        );
    }
}

#[test]
fn real_log_lines_render_through_pino_pretty() {
    let Some(pretty) = tool("pino-pretty") else {
        return;
    };
    let node = Node::start();
    node.wait_log("listening", |_| true);
    let text = std::fs::read_to_string(&node.log_path).unwrap();
    let out = Command::new(pretty)
        .args(["--colorize", "false"])
        .stdin(Stdio::from(std::fs::File::open(&node.log_path).unwrap()))
        .output()
        .unwrap();
    assert!(out.status.success());
    let rendered = String::from_utf8_lossy(&out.stdout);
    // pino-pretty passes non-Pino lines through untouched; rendered ones read
    // `[HH:MM:SS.mmm] INFO (<pid>): <msg>` followed by the other keys, one per line.
    let pid = node.pid();
    for msg in ["node starting", "storage opened", "listening"] {
        assert!(
            rendered.contains(&format!("] INFO ({pid}): {msg}\n")),
            "{msg:?} not rendered:\n{rendered}\nfrom\n{text}"
        );
    }
    assert!(rendered.contains("    nodeId: \"node-"), "{rendered}");
    assert!(
        !rendered.contains("{\"level\""),
        "a line was not recognised:\n{rendered}"
    );
}

fn request(
    node: &Node,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    http_request(node.port, method, path, headers, body.as_bytes()).expect("HTTP request")
}

#[test]
fn debug_endpoints_do_not_exist_without_a_token() {
    let node = Node::start();
    let bearer = format!("Bearer {TOKEN}");
    let auth = [("Authorization", bearer.as_str())];
    assert_eq!(request(&node, "GET", "/debug/actors", &auth, "").0, 404);
    assert_eq!(request(&node, "GET", "/debug/log-level", &auth, "").0, 404);
    assert_eq!(
        request(&node, "PUT", "/debug/log-level", &auth, "debug").0,
        404
    );
}

fn start_with_token() -> Node {
    Node::start_with(NodeOptions::default().args(&["--debug-token", TOKEN, "--shards", "2"]))
}

#[test]
fn debug_actors_lists_kinds_and_members_behind_the_token() {
    let node = start_with_token();
    assert_eq!(request(&node, "GET", "/debug/actors", &[], "").0, 401);
    let wrong = [("Authorization", "Bearer nope")];
    assert_eq!(request(&node, "GET", "/debug/actors", &wrong, "").0, 401);
    let bearer = format!("Bearer {TOKEN}");
    let auth = [("Authorization", bearer.as_str())];

    // Rows appear as the actors report (every 100 ms in tests); scrapes give the metrics
    // actor messages to count.
    let deadline = Instant::now() + Duration::from_secs(10);
    let body = loop {
        node.get("/metrics");
        let (status, body) = request(&node, "GET", "/debug/actors", &auth, "");
        assert_eq!(status, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        let rows = v["actors"].as_array().cloned().unwrap_or_default();
        let has = |actor: &str, member: Option<&str>| {
            rows.iter()
                .any(|r| r["actor"] == actor && r["member"].as_str() == member)
        };
        let metrics_busy = rows
            .iter()
            .any(|r| r["actor"] == "metrics" && r["messagesTotal"].as_u64() > Some(0));
        if has("shard", Some("shard-0"))
            && has("shard", Some("shard-1"))
            && has("event_queue", Some("stripe-0"))
            && has("gate", None)
            && metrics_busy
        {
            break v;
        }
        assert!(Instant::now() < deadline, "rows never complete: {body}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(body["nodeId"].as_str().is_some_and(|s| !s.is_empty()));
    assert_eq!(body["windowSeconds"], 10.0);
    let metrics = body["actors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["actor"] == "metrics")
        .unwrap();
    for key in [
        "mailboxDepth",
        "messagesPerSecond",
        "handleMeanSeconds",
        "handleMaxSeconds",
        "busyPercent",
        "restartsTotal",
    ] {
        assert!(metrics.get(key).is_some(), "{key} missing in {metrics}");
    }
    let arbiters = body["arbiters"].as_array().unwrap();
    assert!(
        arbiters.iter().any(|a| a["arbiter"] == "shard-0"),
        "{arbiters:?}"
    );

    let text_auth = [("Authorization", bearer.as_str()), ("Accept", "text/plain")];
    let (status, table) = request(&node, "GET", "/debug/actors", &text_auth, "");
    assert_eq!(status, 200);
    assert!(table.starts_with("ACTOR "), "{table}");
    assert!(
        table.contains("shard-1") && table.contains("stripe-0"),
        "{table}"
    );
    assert!(table.contains("ARBITER"), "{table}");
}

/// Invalid frames are counted under a reason the codec picks; the total is what matters here.
fn wait_invalid_frames(node: &Node, want: f64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let total: f64 = node
            .scrape()
            .samples
            .iter()
            .filter(|s| s.metric == "topgun_invalid_messages_total")
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v) => v,
                _ => 0.0,
            })
            .sum();
        if total >= want {
            return;
        }
        assert!(Instant::now() < deadline, "invalid frames counted: {total}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test]
async fn log_level_changes_at_run_time() {
    let node = start_with_token();
    let bearer = format!("Bearer {TOKEN}");
    let auth = [("Authorization", bearer.as_str())];
    assert_eq!(
        request(&node, "PUT", "/debug/log-level", &[], "debug").0,
        401
    );
    let (status, body) = request(&node, "GET", "/debug/log-level", &auth, "");
    assert_eq!((status, body.as_str()), (200, r#"{"level":"info"}"#));

    // At info, an invalid frame is counted but its (debug) line is not written.
    let mut quiet = node.client().await;
    quiet.send_raw(vec![0xc1]).await;
    wait_invalid_frames(&node, 1.0);
    assert!(!node
        .logs()
        .iter()
        .any(|l| l["msg"] == "invalid frame dropped"));

    let (status, body) = request(&node, "PUT", "/debug/log-level", &auth, "debug\n");
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (v["level"].as_str(), v["previous"].as_str()),
        (Some("debug"), Some("info"))
    );
    node.wait_log("log level changed", |l| {
        l["from"] == "info" && l["to"] == "debug"
    });

    let mut loud = node.client().await;
    loud.send_raw(vec![0xc1]).await;
    let line = node.wait_log("invalid frame dropped", |_| true);
    assert_eq!(line["level"], 20);
    assert!(line["reason"].as_str().is_some(), "{line}");
    assert!(line["clientId"].as_str().is_some(), "{line}");

    let (status, _) = request(&node, "PUT", "/debug/log-level", &auth, "loud");
    assert_eq!(status, 400);
    let (status, body) = request(&node, "PUT", "/debug/log-level", &auth, "warn");
    assert_eq!(status, 200, "{body}");
    let (_, body) = request(&node, "GET", "/debug/log-level", &auth, "");
    assert_eq!(body, r#"{"level":"warn"}"#);
}
