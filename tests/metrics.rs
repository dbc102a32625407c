//! Guards the metrics contract (metrics.md) on a live scrape: the 20 seed families exist from
//! the start with their exact names and types (the seed's server registered six that never
//! moved; ours must at least all be there), every family has HELP and TYPE, unlabelled ones
//! read 0, the content type is Prometheus text 0.0.4, `--metrics-port` moves `/metrics` off
//! the client port, the per-actor and runtime-lag families have their series and move,
//! process metrics carry the `topgun_` prefix, and counters are exact within about one report
//! interval after activity stops.
mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::*;

/// The seed's twenty (../shared/tools/smoke.py), with their types.
const SEED: [(&str, &str); 20] = [
    ("topgun_connected_clients", "gauge"),
    ("topgun_map_size_items", "gauge"),
    ("topgun_ops_total", "counter"),
    ("topgun_memory_usage_bytes", "gauge"),
    ("topgun_cluster_members", "gauge"),
    ("topgun_events_routed_total", "counter"),
    ("topgun_events_filtered_by_subscription", "counter"),
    ("topgun_subscribers_per_event", "summary"),
    ("topgun_event_queue_size", "gauge"),
    ("topgun_event_queue_enqueued_total", "counter"),
    ("topgun_event_queue_dequeued_total", "counter"),
    ("topgun_event_queue_rejected_total", "counter"),
    ("topgun_backpressure_sync_forced_total", "counter"),
    ("topgun_backpressure_pending_ops", "gauge"),
    ("topgun_backpressure_waits_total", "counter"),
    ("topgun_backpressure_timeouts_total", "counter"),
    ("topgun_connections_accepted_total", "counter"),
    ("topgun_connections_rejected_total", "counter"),
    ("topgun_connections_pending", "gauge"),
    ("topgun_connection_rate_per_second", "gauge"),
];

#[test]
fn seed_families_types_help_and_content_type() {
    let node = Node::start();
    let (status, headers, body) = http_get_full(node.port, "/metrics").expect("scrape");
    assert_eq!(status, 200);
    let ct = headers
        .iter()
        .find(|(k, _)| k == "content-type")
        .map(|(_, v)| v.as_str())
        .expect("content-type header");
    assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
    let s = Scrape::parse(&body);

    for (name, kind) in SEED {
        assert_eq!(s.type_of(name).as_deref(), Some(kind), "TYPE of {name}");
    }
    // Every TYPE has a HELP with text, and no family is declared twice.
    let mut typed = HashSet::new();
    for line in body.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let name = rest.split(' ').next().unwrap();
            assert!(typed.insert(name.to_owned()), "{name} declared twice");
            let help = format!("# HELP {name} ");
            assert!(
                body.lines()
                    .any(|l| l.starts_with(&help) && l.len() > help.len()),
                "{name} has no HELP"
            );
        }
    }
    // Unlabelled seed counters and gauges are there with a value from the start; the ones
    // nothing moves yet are 0.
    for (name, kind) in SEED {
        if kind == "summary" || name == "topgun_map_size_items" || name == "topgun_ops_total" {
            continue;
        }
        assert!(s.value(name, &[]).is_some(), "{name} has no sample");
    }
    for name in [
        "topgun_events_routed_total",
        "topgun_events_filtered_by_subscription",
        "topgun_event_queue_rejected_total",
        "topgun_backpressure_timeouts_total",
        "topgun_connections_rejected_total",
        "topgun_connections_pending",
        "topgun_connected_clients",
        "topgun_draining",
    ] {
        assert_eq!(s.value(name, &[]), Some(0.0), "{name}");
    }
    // The summary is a real summary: _sum and _count (0 so far).
    assert_eq!(
        s.count_sum("topgun_subscribers_per_event", &[]),
        Some((0.0, 0.0))
    );
    // Beyond the seed, declared from the start.
    for (name, kind) in [
        ("topgun_auth_failures_total", "counter"),
        ("topgun_invalid_messages_total", "counter"),
        ("topgun_client_rate_limited_total", "counter"),
        ("topgun_connections_closed_total", "counter"),
        ("topgun_log_records_dropped_total", "counter"),
        ("topgun_actor_messages_total", "counter"),
        ("topgun_actor_mailbox_depth", "gauge"),
        ("topgun_actor_handle_seconds", "histogram"),
        ("topgun_actor_mailbox_wait_seconds", "histogram"),
        ("topgun_actor_dead_letters_total", "counter"),
        ("topgun_actor_restarts_total", "counter"),
        ("topgun_tls_handshake_failures_total", "counter"),
        ("topgun_tls_reloads_total", "counter"),
        ("topgun_draining", "gauge"),
        ("topgun_jwks_refresh_failures_total", "counter"),
        ("topgun_jwt_keys", "gauge"),
        ("topgun_runtime_lag_seconds", "gauge"),
        ("topgun_process_cpu_seconds_total", "counter"),
        ("topgun_process_resident_memory_bytes", "gauge"),
        ("topgun_process_open_fds", "gauge"),
        ("topgun_process_max_fds", "gauge"),
        ("topgun_process_start_time_seconds", "gauge"),
        ("topgun_process_threads", "gauge"),
    ] {
        assert_eq!(s.type_of(name).as_deref(), Some(kind), "TYPE of {name}");
    }
    assert!(s.value("topgun_process_cpu_seconds_total", &[]).is_some());
    assert!(
        s.value("topgun_memory_usage_bytes", &[]).unwrap_or(0.0) > 0.0,
        "heap bytes from the allocator"
    );
}

#[test]
fn metrics_port_serves_metrics_and_client_port_does_not() {
    let mut node = Node::start_with(NodeOptions::default().args(&["--metrics-port", "0"]));
    let out = node.stdout.as_mut().expect("stdout kept");
    let metrics_port = read_port(out, "METRICS_PORT").expect("METRICS_PORT= after PORT=");
    assert_ne!(metrics_port, node.port);
    let (status, headers, body) = http_get_full(metrics_port, "/metrics").expect("scrape");
    assert_eq!(status, 200);
    assert!(headers
        .iter()
        .any(|(k, v)| k == "content-type" && v.starts_with("text/plain; version=0.0.4")));
    let s = Scrape::parse(&body);
    assert_eq!(
        s.type_of("topgun_connected_clients").as_deref(),
        Some("gauge")
    );
    assert_eq!(node.get("/metrics").0, 404, "client port has no /metrics");
    assert_eq!(http_get(metrics_port, "/health").unwrap().0, 200);
    assert_eq!(node.get("/health").0, 200);
}

fn actor_messages(s: &Scrape, actor: &str) -> f64 {
    s.value("topgun_actor_messages_total", &[("actor", actor)])
        .unwrap_or_else(|| panic!("no topgun_actor_messages_total{{actor={actor:?}}}"))
}

#[tokio::test]
async fn per_actor_and_runtime_lag_series() {
    let node = Node::start_with(NodeOptions::default().args(&["--workers", "2"]));
    let s = node.scrape();
    for actor in ["gate", "metrics", "connection"] {
        actor_messages(&s, actor);
        assert!(
            s.value("topgun_actor_mailbox_depth", &[("actor", actor)])
                .is_some(),
            "mailbox depth of {actor}"
        );
        assert!(
            s.value("topgun_actor_restarts_total", &[("actor", actor)])
                .is_some(),
            "restarts of {actor}"
        );
    }

    // Frames handled by a connection count as its messages, and are timed.
    let before = actor_messages(&s, "connection");
    let mut c = node.client().await;
    for i in 0..20 {
        c.send(&ping(i as f64)).await;
        c.recv_type("PONG").await.expect("PONG");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let s = loop {
        let s = node.scrape();
        if actor_messages(&s, "connection") >= before + 20.0 {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "connection messages did not grow"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let (count, _) = s
        .count_sum("topgun_actor_handle_seconds", &[("actor", "connection")])
        .expect("handle-time histogram of connections");
    assert!(count >= 20.0, "{count}");
    assert!(actor_messages(&s, "gate") >= 1.0, "the gate admitted one");

    // One lag series per arbiter: main, metrics, and each HTTP worker.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = node.scrape();
        let missing: Vec<_> = ["main", "metrics", "http-0", "http-1"]
            .into_iter()
            .filter(|a| {
                s.value("topgun_runtime_lag_seconds", &[("arbiter", a)])
                    .is_none()
            })
            .collect();
        if missing.is_empty() {
            for a in ["main", "metrics", "http-0", "http-1"] {
                let lag = s
                    .value("topgun_runtime_lag_seconds", &[("arbiter", a)])
                    .unwrap();
                assert!((0.0..60.0).contains(&lag), "{a}: {lag}");
            }
            break;
        }
        assert!(Instant::now() < deadline, "no lag series for {missing:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test]
async fn mailboxes_are_empty_at_rest() {
    let node = Node::start();
    {
        let mut c = node.client().await;
        for i in 0..10 {
            c.send(&ping(i as f64)).await;
        }
        for _ in 0..10 {
            c.recv_type("PONG").await.expect("PONG");
        }
    }
    node.wait_metric("topgun_connected_clients", &[], 0.0);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = node.scrape();
        let busy: Vec<_> = s
            .samples
            .iter()
            .filter(|x| x.metric == "topgun_actor_mailbox_depth")
            .filter(|x| !matches!(x.value, prometheus_parse::Value::Gauge(v) if v == 0.0))
            .map(|x| format!("{:?}={:?}", x.labels, x.value))
            .collect();
        if busy.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "mailboxes not empty at rest: {busy:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// With the default 1 s report interval, a counter is exact about one interval after the
/// activity stops. Measured against a generous bound (no tight timing asserts).
#[tokio::test]
async fn counters_are_exact_after_one_report_interval() {
    let node = Node::start_with(NodeOptions::default().env("TOPGUN_REPORT_INTERVAL_MS", "1000"));
    let mut c = node.client().await;
    for _ in 0..25 {
        c.send_raw(vec![0x93, 1, 2, 3]).await;
    }
    c.send(&ping(1.0)).await;
    c.recv_type("PONG").await.expect("PONG");
    let t0 = Instant::now();
    node.wait_metric(
        "topgun_invalid_messages_total",
        &[("reason", "not_a_map")],
        25.0,
    );
    let took = t0.elapsed();
    eprintln!("invalid-frame counter exact {took:?} after the last frame (interval 1 s)");
    assert!(took < Duration::from_secs(3), "took {took:?}");
}

/// Measured and reported; the bound is generous so a loaded CI box does not flake.
#[test]
fn idle_scrape_is_fast() {
    let node = Node::start();
    node.scrape();
    let mut times = Vec::new();
    for _ in 0..10 {
        let t0 = Instant::now();
        let (status, _) = http_get(node.port, "/metrics").expect("scrape");
        times.push(t0.elapsed());
        assert_eq!(status, 200);
    }
    times.sort();
    eprintln!(
        "idle scrape: median {:?}, max {:?}",
        times[times.len() / 2],
        times[times.len() - 1]
    );
    assert!(times[times.len() / 2] < Duration::from_secs(2));
}
