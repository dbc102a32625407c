//! The node's own notable events: start, the exposure warnings an operator must read, the
//! steps of a shutdown. Declared once here (see `telemetry::event`).
use crate::events;
use crate::telemetry::event::{ErrField, EventInfo, Shown};

events! {
    Info NodeStarting<'a> = "node_starting", "node starting" {
        version: &'static str => "version",
        port: u16 => "port",
        host: Shown<'a> => "host",
        metrics_port: Option<u16> => "metricsPort",
        cluster_port: u16 => "clusterPort",
        seed_nodes: String => "seedNodes",
        storage: Shown<'a> => "storage",
        data_dir: Shown<'a> => "dataDir",
        auth: String => "auth",
        log_level: Shown<'a> => "logLevel",
        log_dest: Shown<'a> => "logDest",
        workers: usize => "workers",
        report_interval_ms: u64 => "reportIntervalMs",
        actor_telemetry: bool => "actorTelemetry",
        connection_rate: u32 => "connectionRate",
        max_pending_connections: u32 => "maxPendingConnections",
        max_frame_bytes: usize => "maxFrameBytes",
        shutdown_timeout_ms: u64 => "shutdownTimeoutMs",
        drain_delay_ms: u64 => "drainDelayMs",
        drain_spread_ms: u64 => "drainSpreadMs",
    }
    /// At start: the drain delay and spread configured leave the steps after them less than
    /// they need within the shutdown timeout, so both were cut by the same factor.
    Warning DrainShortened = "drain_shortened",
        "drain delay and spread shortened to fit the shutdown timeout" {
        configured_delay_ms: u64 => "configuredDelayMs",
        configured_spread_ms: u64 => "configuredSpreadMs",
        delay_ms: u64 => "delayMs",
        spread_ms: u64 => "spreadMs",
        shutdown_timeout_ms: u64 => "shutdownTimeoutMs",
        reserved_ms: u64 => "reservedMs",
    }
    /// The node could not start, or stopped running with an error.
    Error NodeFailed = "node_failed", "node failed" {
        err: ErrField => "err",
    }
    Info OpenFilesRaised = "open_files_raised", "open files limit raised" {
        limit: u64 => "limit",
    }
    Warning OpenFilesNotRaised = "open_files_not_raised", "cannot raise the open files limit" {
        err: ErrField => "err",
    }
    Warning AuthOff<'a> = "auth_off",
        "authentication is off: no JWT_SECRET is set, so the node only listens on loopback" {
        host: Shown<'a> => "host",
    }
    Warning ClusterInsecure<'a> = "cluster_insecure",
        "cluster peers are not authenticated: --cluster-insecure lets anyone who reaches the cluster port join" {
        host: Shown<'a> => "host",
    }
    Warning ClusterLoopbackOnly<'a> = "cluster_loopback_only",
        "cluster port on loopback only: no cluster secret is set (TOPGUN_CLUSTER_SECRET, or --cluster-insecure)" {
        host: Shown<'a> => "host",
    }
    Info ClusterTlsOn<'a> = "cluster_tls_on",
        "cluster links use mutual TLS: peers need a certificate of the cluster CA" {
        cert: Shown<'a> => "cert",
        ca: Shown<'a> => "ca",
    }
    Info ClientTlsOn<'a> = "client_tls_on",
        "client port serves TLS (wss://, https://); SIGHUP or changed files reload the certificate" {
        cert: Shown<'a> => "cert",
        reload_interval_ms: u64 => "reloadIntervalMs",
    }
    /// Client tokens are checked with the keys of `--jwt-keys-file` or `--jwks-url`, loaded.
    /// `reloadIntervalMs`: the file's check for a change, or the URL's refresh (0: SIGHUP and
    /// unknown `kid`s only).
    Info JwtKeysOn<'a> = "jwt_keys_on",
        "client tokens are checked with keys by kid; SIGHUP reloads them" {
        source: Shown<'a> => "source",
        keys: usize => "keys",
        kids: String => "kids",
        reload_interval_ms: u64 => "reloadIntervalMs",
    }
    Warning JwksPlainHttp<'a> = "jwks_plain_http",
        "the JWKS URL is plain http:// to another host: whoever answers in its place can sign tokens" {
        url: Shown<'a> => "url",
    }
    /// SIGHUP: what it reloads (`reloads` empty: nothing is configured to reload).
    Info ReloadRequested = "reload_requested", "reload requested (SIGHUP)" {
        reloads: &'static str => "reloads",
    }
    /// `budget_bytes` 0 and `source` why: `configured` off or `unknown machine memory`.
    Info MemoryBudgetSet = "memory_budget", "memory budget" {
        budget_bytes: u64 => "budgetBytes",
        source: &'static str => "source",
        resume_percent: u64 => "resumePercent",
    }
    Info MemoryBudgetNone = "memory_budget_none", "memory budget: none" {
        source: &'static str => "source",
    }
    Info StorageOpened<'a> = "storage_opened", "storage opened" {
        backend: &'static str => "backend",
        data_dir: Option<Shown<'a>> => "dataDir",
        lww_records: usize => "lwwRecords",
        or_records: usize => "orRecords",
        or_removed_tags: usize => "orRemovedTags",
        hlc: Option<String> => "hlc",
        took_ms: u64 => "tookMs",
    }
    Info DataPlaneStarted = "data_plane_started", "data plane started" {
        shards: usize => "shards",
        stripes: usize => "stripes",
        event_queue_capacity: usize => "eventQueueCapacity",
    }
    Info Listening<'a> = "listening", "listening" {
        port: u16 => "port",
        host: Shown<'a> => "host",
        metrics_port: u16 => "metricsPort",
    }
    Info ShutdownStarted = "shutdown_started", "shutdown started" {
        signal: &'static str => "signal",
        timeout_ms: u64 => "timeoutMs",
    }
    /// From here `/ready` answers 503 and new connections get a 503; the `connections` open
    /// are served for `delayMs`, then closed over `spreadMs`. `atMs`: since the signal.
    Info DrainStarted = "drain_started",
        "draining: /ready answers 503 and new connections are turned away" {
        connections: usize => "connections",
        delay_ms: u64 => "delayMs",
        spread_ms: u64 => "spreadMs",
        at_ms: u64 => "atMs",
    }
    Info DrainDelayOver = "drain_delay_over", "drain delay over: closing clients" {
        connections: usize => "connections",
        at_ms: u64 => "atMs",
    }
    /// A second SIGTERM or SIGINT during the drain: the rest of the delay (`phase` `delay`) or
    /// of the spread (`spread`) is skipped and every client is closed now; the handover and
    /// the flush still run.
    Info DrainInterrupted = "drain_interrupted",
        "second signal: the rest of the drain is skipped, every client is closed now" {
        signal: &'static str => "signal",
        phase: &'static str => "phase",
        at_ms: u64 => "atMs",
    }
    /// `told` of them were told to close (1001); `stillOpen` had not closed after the grace.
    Info ClientsClosed = "clients_closed", "clients closed" {
        told: usize => "told",
        still_open: usize => "stillOpen",
        at_ms: u64 => "atMs",
    }
    Info HttpStopped = "http_stopped", "http server stopped" {
        at_ms: u64 => "atMs",
    }
    Info HandedOverBeforeLeaving = "handed_over_before_leaving",
        "partitions handed over before leaving" {
        compared: usize => "compared",
        sent: usize => "sent",
        records: u64 => "records",
        took_ms: u64 => "tookMs",
        at_ms: u64 => "atMs",
    }
    Warning HandoverBeforeLeavingIncomplete = "handover_before_leaving_incomplete",
        "handover before leaving incomplete: leaving anyway" {
        compared: usize => "compared",
        sent: usize => "sent",
        records: u64 => "records",
        took_ms: u64 => "tookMs",
        at_ms: u64 => "atMs",
        err: ErrField => "err",
    }
    Info StorageFlushed = "storage_flushed", "storage flushed" {
        at_ms: u64 => "atMs",
    }
    Info ShutdownComplete = "shutdown_complete", "shutdown complete" {
        took_ms: u64 => "tookMs",
    }
    Error ShutdownTimedOut = "shutdown_timed_out", "shutdown timed out; exiting" {
        limit_ms: u64 => "limitMs",
        err: ErrField => "err",
    }
    /// `PUT /debug/log-level`.
    Info LogLevelChanged<'a> = "log_level_changed", "log level changed" {
        from: Shown<'a> => "from",
        to: Shown<'a> => "to",
    }
}

/// Every event the node declares, for the metrics registry and the test that walks them.
pub fn every_event() -> impl Iterator<Item = &'static EventInfo> {
    [
        &EVENTS[..],
        &crate::cluster::events::EVENTS[..],
        &crate::net::events::EVENTS[..],
        &crate::queue::events::EVENTS[..],
        &crate::storage::events::EVENTS[..],
        &crate::telemetry::events::EVENTS[..],
    ]
    .into_iter()
    .flatten()
}

/// `docs/events.md`: every event as an operator filters for it. A test keeps the file equal
/// to this (`UPDATE_EVENTS_DOC=1 cargo test --lib events_doc` rewrites it).
pub fn events_doc() -> String {
    use std::fmt::Write as _;
    let mut out = String::from(
        "# Notable events\n\n\
         Generated from the declarations (`src/*/events.rs`) by `cargo test --lib events_doc` \
         with `UPDATE_EVENTS_DOC=1`; a test fails when this file and the code differ.\n\n\
         Each event is one log line (`msg` below, fixed text) and one series of \
         `topgun_events_total{event,level}`, counted even when the line is not written (a \
         throttled repeat, or a level below `--log-level`). Lines about a failure carry \
         `err: {type, message}`.\n\n\
         | event | level | msg | keys |\n|---|---|---|---|\n",
    );
    for info in every_event() {
        let keys: Vec<String> = info.keys.iter().map(|k| format!("`{k}`")).collect();
        let _ = writeln!(
            out,
            "| `{}` | {} | {} | {} |",
            info.name,
            info.level_label(),
            info.msg,
            keys.join(", ")
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::time::Duration;

    use super::every_event;
    use crate::config::{LogDest, LogLevel};
    use crate::telemetry::logging::{pino_level, Logging};
    use crate::telemetry::metrics::Metrics;

    #[test]
    fn every_event_writes_a_pino_line_with_its_keys_and_counts() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("events.json");
        let logging = Logging::init(&LogDest::File(path.clone()), LogLevel::Trace, 4096, "n1")
            .expect("log file");
        let events: Vec<_> = every_event().collect();
        let before: Vec<u64> = events.iter().map(|e| e.count()).collect();
        for info in &events {
            (info.emit_sample)(&logging.root);
        }
        logging.finish(Duration::from_secs(5));

        let text = std::fs::read_to_string(&path).expect("log written");
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
        assert_eq!(lines.len(), events.len(), "one line per event");
        for ((info, line), before) in events.iter().zip(&lines).zip(before) {
            assert_eq!(line["msg"], info.msg, "{}", info.name);
            assert_eq!(line["level"], pino_level(info.level), "{}", info.name);
            assert_eq!(line["nodeId"], "n1", "{}", info.name);
            for key in info.keys {
                assert!(
                    line.get(key).is_some(),
                    "{}: no key {key} in {line}",
                    info.name
                );
            }
            if info.has_err() {
                assert!(line["err"]["type"].is_string(), "{}: {line}", info.name);
                assert!(line["err"]["message"].is_string(), "{}: {line}", info.name);
            }
            // Other tests of this process may emit the same event meanwhile.
            assert!(info.count() > before, "{} did not count", info.name);
        }
    }

    #[test]
    fn names_are_unique_snake_case_and_failures_carry_err() {
        let mut names = HashSet::new();
        for info in every_event() {
            assert!(names.insert(info.name), "{} declared twice", info.name);
            assert!(
                info.name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                "{} is not snake_case",
                info.name
            );
            let failure = [
                "failed",
                "refused",
                "timed out",
                "given up",
                "cut",
                "dropped",
            ]
            .iter()
            .any(|w| info.msg.contains(w));
            if info.level <= slog::Level::Error || failure {
                assert!(
                    info.has_err(),
                    "{} is about a failure but has no err",
                    info.name
                );
            }
        }
    }

    #[test]
    fn events_doc_matches_the_declarations() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/events.md");
        let expected = super::events_doc();
        if std::env::var_os("UPDATE_EVENTS_DOC").is_some() {
            std::fs::write(&path, &expected).expect("write docs/events.md");
        }
        let found = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            found == expected,
            "docs/events.md differs from the declared events: run \
             UPDATE_EVENTS_DOC=1 cargo test --lib events_doc"
        );
    }

    #[test]
    fn every_event_is_a_series_at_zero_before_it_happens() {
        let metrics = Metrics::new(16, Duration::from_secs(60))
            .expect("registry")
            .with_events(every_event());
        let text = metrics.render().expect("render");
        for info in every_event() {
            let series = format!(
                "topgun_events_total{{event=\"{}\",level=\"{}\"}}",
                info.name,
                info.level_label()
            );
            assert!(text.contains(&series), "{series} missing");
        }
    }
}
