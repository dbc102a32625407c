//! Every metric the node exports (name, type, HELP, labels) and the `MetricsActor` that owns
//! the registry, applies the actors' reports and renders `/metrics`.
//!
//! This file is the one place a metric is defined: grep finds each full name here. Families
//! with labels are declared even before their first series exists (the `prometheus` crate
//! would omit them), so an operator sees every family, with HELP and TYPE, from the start.
use std::collections::HashSet;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use prometheus::{
    Encoder, GaugeVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};
use slog::Logger;

use super::debug::{ActorTable, ActorsSnapshot};
use super::event::{ErrField, Event, EventInfo};
use super::events::{ExpositionFailed, MemoryBudgetExceeded, MemoryBudgetRecovered};
use super::histogram::{
    HistogramFamily, COMMIT_RECORDS, COMMIT_SECONDS, HANDLE_SECONDS, WAIT_SECONDS,
};
use super::mailbox::{mailbox_handlers, DeadLetters};
use super::report::{ActorKind, ActorStats, Report, Reported, UNBOUNDED_MAILBOX};
use super::sampled::{resident_bytes, Crossing, SampledBudget, SampledCount};
use super::summary::SlidingSummary;

/// Label value that absorbs maps beyond the label cap.
pub const OTHER_MAP: &str = "__other__";

/// Reasons a connection is refused at authentication (`topgun_auth_failures_total{reason}`).
pub const AUTH_FAILURE_REASONS: &[&str] = &[
    "bad_signature",
    "expired",
    "malformed",
    "missing_claim",
    "bad_algorithm",
    "bad_issuer",
    "bad_audience",
    "too_large",
    "not_yet_valid",
    "unknown_kid",
    "missing_kid",
    "timeout",
];

/// Reasons a frame is dropped or refused (`topgun_invalid_messages_total{reason}`).
pub const INVALID_MESSAGE_REASONS: &[&str] = &[
    "not_a_map",
    "truncated",
    "trailing_bytes",
    "invalid_msgpack",
    "too_deep",
    "invalid_msgpack",
    "missing_type",
    "unknown_type",
    "malformed",
    "fractional_integer",
    "bad_node_id",
    "bad_map_name",
    "reserved_map_name",
    "bad_merkle_path",
    "unknown_operator",
    "text_frame",
    "frame_too_large",
    "batch_too_large",
    "protocol_error",
    "before_auth",
];

/// Limits a client ran into (`topgun_limits_exceeded_total{limit}`): what it asked for was
/// refused with an answer, or (`live_window`) cut to the limit. `memory` and `maps` count
/// write ops refused node-wide (`--max-memory`, `--max-maps`).
pub const LIMITS: &[&str] = &["live_queries", "topics", "live_window", "memory", "maps"];

/// Why a client TLS handshake failed (`topgun_tls_handshake_failures_total{reason}`): plain
/// text sent to the TLS port (answered with a 400), a handshake rustls refused, or no
/// handshake in time.
pub const TLS_HANDSHAKE_FAILURES: [&str; 3] = ["plaintext", "handshake", "timeout"];

/// Why the node closed a connection, or saw it closed (`topgun_connections_closed_total`).
pub const CLOSE_REASONS: &[&str] = &[
    "client",
    "auth_failed",
    "auth_timeout",
    "idle_timeout",
    "frame_too_large",
    "protocol_error",
    "slow_consumer",
    "resync",
    "shutdown",
];

/// All families, registered. Fields are public so a [`Report`] can apply itself.
pub struct Metrics {
    registry: Registry,
    /// (name, help, type) of every family, for declaring the empty ones.
    catalogue: Vec<(String, String, &'static str)>,
    map_labels: HashSet<String>,
    map_label_cap: usize,

    // The seed's twenty (../shared/seed/observability.txt, ../shared/spec/metrics.md).
    pub connected_clients: IntGauge,
    pub map_size_items: IntGaugeVec,
    pub ops_total: IntCounterVec,
    pub memory_usage_bytes: IntGauge,
    pub cluster_members: IntGauge,
    pub events_routed_total: IntCounter,
    pub events_filtered_by_subscription: IntCounter,
    pub subscribers_per_event: Arc<SlidingSummary>,
    pub event_queue_size: IntGauge,
    pub event_queue_enqueued_total: IntCounter,
    pub event_queue_dequeued_total: IntCounter,
    pub event_queue_rejected_total: IntCounter,
    pub backpressure_sync_forced_total: IntCounter,
    pub backpressure_pending_ops: IntGauge,
    pub backpressure_waits_total: IntCounter,
    pub backpressure_timeouts_total: IntCounter,
    pub connections_accepted_total: IntCounter,
    pub connections_rejected_total: IntCounter,
    pub connections_pending: IntGauge,
    pub connection_rate_per_second: IntGauge,

    // Beyond the seed.
    pub map_tombstones: IntGaugeVec,
    pub event_queue_capacity: IntGauge,
    pub event_queue_stripe_size: IntGaugeVec,
    pub outbound_dropped_total: IntCounter,
    pub auth_failures_total: IntCounterVec,
    pub invalid_messages_total: IntCounterVec,
    pub limits_exceeded_total: IntCounterVec,
    pub tls_reloads_total: IntCounterVec,
    pub tls_handshake_failures_total: IntCounterVec,
    pub jwks_refresh_failures_total: IntCounter,
    pub jwt_keys: IntGauge,
    pub memory_budget_bytes: IntGauge,
    pub memory_budget_used_bytes: IntGauge,
    pub memory_budget_exceeded: IntGauge,
    pub draining: IntGauge,
    pub maps: IntGauge,
    pub client_rate_limited_total: IntCounter,
    pub connections_closed_total: IntCounterVec,
    pub log_records_dropped_total: IntCounter,
    pub events_total: IntCounterVec,
    /// Every declared event, its count copied into `events_total` before each scrape.
    events: Vec<&'static EventInfo>,
    pub cluster_invalid_datagrams_total: IntCounter,
    pub partitions_owned: IntGauge,
    pub partitions_backup: IntGauge,
    pub partition_table_version: IntGauge,
    pub rebalance_total: IntCounter,
    pub migration_partitions_pending: IntGauge,
    pub migration_records_total: IntCounter,
    pub cluster_forwarded_total: IntCounter,
    pub cluster_applied_total: IntCounterVec,
    pub replication_lag_seconds: prometheus::Gauge,
    pub cluster_peer_errors_total: IntCounterVec,
    pub cluster_peer_links: IntGauge,
    pub cluster_catch_ups_total: IntCounterVec,
    pub cluster_handoffs_total: IntCounterVec,
    pub cluster_handoffs_pending: IntGauge,
    pub cluster_link_unsent_bytes: IntGauge,
    pub antientropy_rounds_total: prometheus::IntCounter,
    pub cluster_heals_total: prometheus::IntCounter,
    pub antientropy_repaired_total: prometheus::IntCounter,
    pub cluster_gathers_total: IntCounterVec,
    pub cluster_live_events_total: IntCounterVec,
    pub partition_records: IntGaugeVec,
    pub partitions_released_total: IntCounter,
    pub actor_messages_total: IntCounterVec,
    pub actor_mailbox_depth: IntGaugeVec,
    pub actor_handle_seconds: Arc<HistogramFamily>,
    pub actor_mailbox_wait_seconds: Arc<HistogramFamily>,
    pub actor_dead_letters_total: IntCounterVec,
    pub actor_restarts_total: IntCounterVec,
    pub runtime_lag_seconds: GaugeVec,
    pub storage_commit_seconds: Arc<HistogramFamily>,
    pub storage_commit_records: Arc<HistogramFamily>,
    pub storage_errors_total: IntCounterVec,
    pub storage_size_bytes: IntGauge,

    /// Not exported: the rows of `/debug/actors`, fed by the same reports.
    pub actors: ActorTable,
}

impl Metrics {
    pub fn new(map_label_cap: usize, summary_window: Duration) -> prometheus::Result<Metrics> {
        let mut b = Builder {
            registry: Registry::new(),
            catalogue: Vec::new(),
        };
        let m = Metrics {
            connected_clients: b.gauge(
                "topgun_connected_clients",
                "Open client WebSocket connections, authenticated or not.",
            )?,
            map_size_items: b.gauge_vec(
                "topgun_map_size_items",
                "Live entries of a map on this node (tombstones excluded).",
                &["map"],
            )?,
            ops_total: b.counter_vec(
                "topgun_ops_total",
                "Client operations received by this node, one per op (each op of an OP_BATCH counts): PUT, DELETE, GET, SUBSCRIBE.",
                &["type", "map"],
            )?,
            memory_usage_bytes: b.gauge(
                "topgun_memory_usage_bytes",
                "Bytes currently allocated on the process heap (allocator statistics).",
            )?,
            cluster_members: b.gauge(
                "topgun_cluster_members",
                "Active cluster members as this node sees them, itself included.",
            )?,
            events_routed_total: b.counter(
                "topgun_events_routed_total",
                "Change events that entered subscription routing (one per changed key).",
            )?,
            events_filtered_by_subscription: b.counter(
                "topgun_events_filtered_by_subscription",
                "Routed events not sent to anyone because no client was subscribed.",
            )?,
            subscribers_per_event: {
                let s = Arc::new(SlidingSummary::new(
                    "topgun_subscribers_per_event",
                    "Subscribers of each routed event that had any (quantiles over a sliding window).",
                    summary_window,
                )?);
                b.collector(s.clone(), "summary")?;
                s
            },
            event_queue_size: b.gauge(
                "topgun_event_queue_size",
                "Events waiting in the bounded event queue, all stripes.",
            )?,
            event_queue_enqueued_total: b.counter(
                "topgun_event_queue_enqueued_total",
                "Events accepted into the event queue.",
            )?,
            event_queue_dequeued_total: b.counter(
                "topgun_event_queue_dequeued_total",
                "Events taken out of the event queue for routing.",
            )?,
            event_queue_rejected_total: b.counter(
                "topgun_event_queue_rejected_total",
                "Events refused because their stripe was full (the write itself is kept).",
            )?,
            backpressure_sync_forced_total: b.counter(
                "topgun_backpressure_sync_forced_total",
                "Times a connection was forced to wait until its in-flight writes were applied.",
            )?,
            backpressure_pending_ops: b.gauge(
                "topgun_backpressure_pending_ops",
                "Write batches accepted from clients and not yet applied, node-wide.",
            )?,
            backpressure_waits_total: b.counter(
                "topgun_backpressure_waits_total",
                "Times a connection stopped reading because pending writes were at the limit.",
            )?,
            backpressure_timeouts_total: b.counter(
                "topgun_backpressure_timeouts_total",
                "Backpressure waits that exceeded the backoff timeout (the client got an error).",
            )?,
            connections_accepted_total: b.counter(
                "topgun_connections_accepted_total",
                "Client connections let through by the connection rate limiter.",
            )?,
            connections_rejected_total: b.counter(
                "topgun_connections_rejected_total",
                "Client connections refused by the connection rate limiter.",
            )?,
            connections_pending: b.gauge(
                "topgun_connections_pending",
                "Accepted connections whose handshake/authentication has not finished.",
            )?,
            connection_rate_per_second: b.gauge(
                "topgun_connection_rate_per_second",
                "Connections accepted during the last full second.",
            )?,

            map_tombstones: b.gauge_vec(
                "topgun_map_tombstones",
                "Tombstones (deleted keys kept for sync) of a map on this node.",
                &["map"],
            )?,
            event_queue_capacity: b.gauge(
                "topgun_event_queue_capacity",
                "Capacity of the event queue, all stripes.",
            )?,
            event_queue_stripe_size: b.gauge_vec(
                "topgun_event_queue_stripe_size",
                "Events waiting in one stripe of the event queue.",
                &["stripe"],
            )?,
            outbound_dropped_total: b.counter(
                "topgun_outbound_dropped_total",
                "Live broadcasts dropped because a client's outbound queue was full.",
            )?,
            auth_failures_total: b.counter_vec(
                "topgun_auth_failures_total",
                "Authentication attempts refused, by reason.",
                &["reason"],
            )?,
            invalid_messages_total: b.counter_vec(
                "topgun_invalid_messages_total",
                "Client frames dropped or refused as invalid, by reason.",
                &["reason"],
            )?,
            limits_exceeded_total: b.counter_vec(
                "topgun_limits_exceeded_total",
                "Requests that ran into a limit, by limit: live_queries and topics per connection (refused with an answer), live_window (a live limit window cut to --query-max-results rows), memory and maps (write ops refused with OP_REJECTED past --max-memory or --max-maps).",
                &["limit"],
            )?,
            tls_reloads_total: b.counter_vec(
                "topgun_tls_reloads_total",
                "Reloads of the client TLS certificate and key (SIGHUP or changed files), by result: ok, or error (the certificate in use stays).",
                &["result"],
            )?,
            tls_handshake_failures_total: b.counter_vec(
                "topgun_tls_handshake_failures_total",
                "Client connections to the TLS port that never completed a handshake, by reason: plaintext (answered with a 400), handshake (refused by TLS), timeout.",
                &["reason"],
            )?,
            jwks_refresh_failures_total: b.counter(
                "topgun_jwks_refresh_failures_total",
                "Reloads of the JWT verification keys (a fetch of --jwks-url, a read of --jwt-keys-file) that failed: unreachable, an HTTP error, garbage, no usable key, over 1 MiB. The keys in use stay.",
            )?,
            jwt_keys: b.gauge(
                "topgun_jwt_keys",
                "JWT verification keys in use from --jwt-keys-file or --jwks-url (0 with JWT_SECRET or without authentication).",
            )?,
            memory_budget_bytes: b.gauge(
                "topgun_memory_budget_bytes",
                "The memory budget (--max-memory): resident memory above which writes that add data are refused; 0 when there is none.",
            )?,
            memory_budget_used_bytes: b.gauge(
                "topgun_memory_budget_used_bytes",
                "Resident memory of the process as the budget last sampled it (every 100 ms).",
            )?,
            memory_budget_exceeded: b.gauge(
                "topgun_memory_budget_exceeded",
                "1 while the memory budget is exceeded and writes that add data are refused, else 0.",
            )?,
            draining: b.gauge(
                "topgun_draining",
                "1 from SIGTERM on: /ready answers 503, new connections are turned away and the open ones are closed over the drain spread; else 0.",
            )?,
            maps: b.gauge(
                "topgun_maps",
                "Maps this node holds (bounded by --max-maps for maps clients name).",
            )?,
            client_rate_limited_total: b.counter(
                "topgun_client_rate_limited_total",
                "Client frames refused by the per-connection token bucket (ERROR 429).",
            )?,
            connections_closed_total: b.counter_vec(
                "topgun_connections_closed_total",
                "Client connections closed, by reason.",
                &["reason"],
            )?,
            cluster_invalid_datagrams_total: b.counter(
                "topgun_cluster_invalid_datagrams_total",
                "Datagrams on the cluster port that were not valid membership messages (garbage, another protocol version, truncated); each is dropped.",
            )?,
            partitions_owned: b.gauge(
                "topgun_partitions_owned",
                "Partitions (of 271) this node owns in its current partition table.",
            )?,
            partitions_backup: b.gauge(
                "topgun_partitions_backup",
                "Partitions this node is a synchronous backup of in its current partition table.",
            )?,
            partition_table_version: b.gauge(
                "topgun_partition_table_version",
                "Version of this node's partition table; it grows by one on every rebalance.",
            )?,
            rebalance_total: b.counter(
                "topgun_rebalance_total",
                "Partition-table changes this node applied (a member joined, left, failed or restarted).",
            )?,
            migration_partitions_pending: b.gauge(
                "topgun_migration_partitions_pending",
                "Partitions this node is still pulling from peers after a rebalance (0 when migration is done).",
            )?,
            migration_records_total: b.counter(
                "topgun_migration_records_total",
                "Records (LWW entries, OR records and removed OR tags) received from peers by migration.",
            )?,
            cluster_forwarded_total: b.counter(
                "topgun_cluster_forwarded_total",
                "Client ops this node forwarded to another node owning their partition.",
            )?,
            cluster_applied_total: b.counter_vec(
                "topgun_cluster_applied_total",
                "Ops this node applied on behalf of a peer, by this node's role: owner (forwarded to it), backup (synchronous replica) or replica (asynchronous copy).",
                &["role"],
            )?,
            replication_lag_seconds: {
                let g = prometheus::Gauge::new(
                    "topgun_replication_lag_seconds",
                    "Replication lag: the longest a forwarded or replicated write sent by this node waited for a peer's confirmation over the last report interval, including writes still waiting (0 when idle).",
                )?;
                b.register(
                    Box::new(g.clone()),
                    "topgun_replication_lag_seconds",
                    "gauge",
                    "Replication lag: the longest a forwarded or replicated write sent by this node waited for a peer's confirmation over the last report interval, including writes still waiting (0 when idle).",
                )?;
                g
            },
            cluster_peer_errors_total: b.counter_vec(
                "topgun_cluster_peer_errors_total",
                "Trouble on node-to-node connections, by reason: version (another protocol version), placement (the peer keeps another placement), bad_frame (undecodable), bad_hello, node_id_clash, connect (dial failed), lost (connection dropped), timeout (a peer did not answer in time).",
                &["reason"],
            )?,
            cluster_peer_links: b.gauge(
                "topgun_cluster_peer_links",
                "Node-to-node connections this node has open to other members (outbound).",
            )?,
            cluster_catch_ups_total: b.counter_vec(
                "topgun_cluster_catch_ups_total",
                "Catch-ups from a peer that (re)connected to this node (a pull of every partition it holds, merged), by outcome: ok or failed (retried).",
                &["outcome"],
            )?,
            cluster_handoffs_total: b.counter_vec(
                "topgun_cluster_handoffs_total",
                "Forwards that failed (their client heard ERROR) and were sent to the owner again in the background, by outcome: delivered, or dropped (too many waiting, or not delivered within 2 minutes).",
                &["outcome"],
            )?,
            cluster_handoffs_pending: b.gauge(
                "topgun_cluster_handoffs_pending",
                "Failed forwards waiting to be handed to their owner again.",
            )?,
            cluster_heals_total: b.counter(
                "topgun_cluster_heals_total",
                "Splits and pauses healed, as this node saw them: a member it saw declared down came back as its next generation (not a restart), or this node, declared down by the others, rejoined them.",
            )?,
            antientropy_rounds_total: b.counter(
                "topgun_antientropy_rounds_total",
                "Anti-entropy rounds this node ran as owner: its partitions' digests compared with each backup's (every --anti-entropy-interval-ms).",
            )?,
            antientropy_repaired_total: b.counter(
                "topgun_antientropy_repaired_total",
                "Partitions this node found different from a backup's copy (both unchanged since the previous round) and merged both ways.",
            )?,
            cluster_link_unsent_bytes: b.gauge(
                "topgun_cluster_link_unsent_bytes",
                "Bytes written to node-to-node links that the kernel has not taken yet, over every link: a peer that does not read makes it grow, and a link past --cluster-link-buffer-bytes is cut (peer errors, reason backlog).",
            )?,
            partition_records: b.gauge_vec(
                "topgun_partition_records",
                "Records (LWW keys, tombstones included, and OR-Map keys) stored on this node, by its role for their partition: owner, backup, or replica (full placement: the copy every node keeps; partitioned: records waiting to be handed over). Counted every 5 s.",
                &["role"],
            )?,
            partitions_released_total: b.counter(
                "topgun_partitions_released_total",
                "Partitions this node no longer keeps that it handed to their holders (each holder confirmed every record durably) and then dropped (partitioned placement).",
            )?,
            cluster_live_events_total: b.counter_vec(
                "topgun_cluster_live_events_total",
                "Changes sent between nodes for live subscribers (partitioned placement: every holder of a partition sends what it applies to the nodes with subscribers on the map that do not keep it), by outcome: sent, received, duplicate (a copy from another holder, routed once), dropped (the sending channel or a stripe was full).",
                &["outcome"],
            )?,
            cluster_gathers_total: b.counter_vec(
                "topgun_cluster_gathers_total",
                "Reads gathered from the partitions' holders (partitioned placement), by outcome: ok (answered whole), failed (answered with an error: a partition had no holder that answered), retried (a member's share asked again of another holder).",
                &["outcome"],
            )?,
            log_records_dropped_total: b.counter(
                "topgun_log_records_dropped_total",
                "Log lines dropped because the log writer could not keep up.",
            )?,
            events_total: b.counter_vec(
                "topgun_events_total",
                "Notable events (each with its own log line), by event and level; counted \
                 even when the line was not written (throttled, or below the log level).",
                &["event", "level"],
            )?,
            events: Vec::new(),
            actor_messages_total: b.counter_vec(
                "topgun_actor_messages_total",
                "Messages handled, by actor kind.",
                &["actor"],
            )?,
            actor_mailbox_depth: b.gauge_vec(
                "topgun_actor_mailbox_depth",
                "Messages sent to actors of a kind and not yet handled.",
                &["actor"],
            )?,
            actor_handle_seconds: {
                let h = Arc::new(HistogramFamily::new(
                    "topgun_actor_handle_seconds",
                    "Time to handle one message, by actor kind.",
                    &["actor"],
                    HANDLE_SECONDS,
                )?);
                b.collector(h.clone(), "histogram")?;
                h
            },
            actor_mailbox_wait_seconds: {
                let h = Arc::new(HistogramFamily::new(
                    "topgun_actor_mailbox_wait_seconds",
                    "Time a message waited in an actor's mailbox before its handler started, by actor kind (messages sent through a mailbox; stream items such as WebSocket frames never wait in one).",
                    &["actor"],
                    WAIT_SECONDS,
                )?);
                b.collector(h.clone(), "histogram")?;
                h
            },
            actor_dead_letters_total: b.counter_vec(
                "topgun_actor_dead_letters_total",
                "Messages sent to an actor that had stopped (or left in its mailbox when it stopped), never handled, by actor kind.",
                &["actor"],
            )?,
            actor_restarts_total: b.counter_vec(
                "topgun_actor_restarts_total",
                "Supervised actor restarts, by actor kind.",
                &["actor"],
            )?,
            runtime_lag_seconds: {
                let g = GaugeVec::new(
                    Opts::new(
                        "topgun_runtime_lag_seconds",
                        "How late a periodic tick ran on an arbiter thread (max over the last report interval).",
                    ),
                    &["arbiter"],
                )?;
                b.register(Box::new(g.clone()), "topgun_runtime_lag_seconds", "gauge", "How late a periodic tick ran on an arbiter thread (max over the last report interval).")?;
                g
            },
            storage_commit_seconds: {
                let h = Arc::new(HistogramFamily::new(
                    "topgun_storage_commit_seconds",
                    "Duration of one durable storage commit (a group of writes), fsync included.",
                    &[],
                    COMMIT_SECONDS,
                )?);
                b.collector(h.clone(), "histogram")?;
                h
            },
            storage_commit_records: {
                let h = Arc::new(HistogramFamily::new(
                    "topgun_storage_commit_records",
                    "Records per storage commit group.",
                    &[],
                    COMMIT_RECORDS,
                )?);
                b.collector(h.clone(), "histogram")?;
                h
            },
            storage_errors_total: b.counter_vec(
                "topgun_storage_errors_total",
                "Failed storage operations, by operation.",
                &["op"],
            )?,
            storage_size_bytes: b.gauge(
                "topgun_storage_size_bytes",
                "Size of the storage files on disk (0 for the memory backend).",
            )?,
            registry: Registry::new(),
            catalogue: Vec::new(),
            map_labels: HashSet::new(),
            map_label_cap,
            actors: ActorTable::new(Duration::from_secs(1)),
        };
        let build_info = IntGaugeVec::new(
            Opts::new(
                "topgun_build_info",
                "Version of the running node (value 1).",
            ),
            &["version"],
        )?;
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        b.register(
            Box::new(build_info),
            "topgun_build_info",
            "gauge",
            "Version of the running node (value 1).",
        )?;
        #[cfg(target_os = "linux")]
        b.registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::new(
                std::process::id() as i32,
                "topgun",
            ),
        ))?;

        // Bounded label sets start at 0 so rate() and alerts work from the first scrape.
        for kind in ActorKind::ALL {
            m.actor_messages_total.with_label_values(&[kind.label()]);
            m.actor_mailbox_depth.with_label_values(&[kind.label()]);
            m.actor_restarts_total.with_label_values(&[kind.label()]);
            m.actor_dead_letters_total
                .with_label_values(&[kind.label()]);
            m.actor_mailbox_wait_seconds.declare(&[kind.label()]);
        }
        for reason in AUTH_FAILURE_REASONS {
            m.auth_failures_total.with_label_values(&[reason]);
        }
        for reason in INVALID_MESSAGE_REASONS {
            m.invalid_messages_total.with_label_values(&[reason]);
        }
        for limit in LIMITS {
            m.limits_exceeded_total.with_label_values(&[limit]);
        }
        for result in ["ok", "error"] {
            m.tls_reloads_total.with_label_values(&[result]);
        }
        for reason in TLS_HANDSHAKE_FAILURES {
            m.tls_handshake_failures_total.with_label_values(&[reason]);
        }
        m.storage_errors_total.with_label_values(&["commit"]);
        // A standalone node is a cluster of one (metrics.md: itself included).
        m.cluster_members.set(1);
        m.partitions_owned
            .set(i64::from(crate::protocol::PARTITION_COUNT));
        m.partition_table_version.set(1);
        for role in ["owner", "backup", "replica"] {
            m.cluster_applied_total.with_label_values(&[role]);
        }
        for reason in CLOSE_REASONS {
            m.connections_closed_total.with_label_values(&[reason]);
        }
        for outcome in ["ok", "failed"] {
            m.cluster_catch_ups_total.with_label_values(&[outcome]);
        }
        for outcome in ["delivered", "dropped"] {
            m.cluster_handoffs_total.with_label_values(&[outcome]);
        }
        for outcome in ["ok", "failed", "retried"] {
            m.cluster_gathers_total.with_label_values(&[outcome]);
        }
        for role in ["owner", "backup", "replica"] {
            m.partition_records.with_label_values(&[role]);
        }
        for outcome in ["sent", "received", "duplicate", "dropped"] {
            m.cluster_live_events_total.with_label_values(&[outcome]);
        }
        Ok(Metrics {
            registry: b.registry,
            catalogue: b.catalogue,
            ..m
        })
    }

    /// The `map` label for a map name: itself while under the cap, `__other__` after.
    pub fn map_label<'a>(&mut self, map: &'a str) -> &'a str {
        if self.map_labels.contains(map) {
            return map;
        }
        if self.map_labels.len() < self.map_label_cap {
            self.map_labels.insert(map.to_owned());
            return map;
        }
        OTHER_MAP
    }

    /// The text exposition: everything gathered, plus HELP/TYPE of families with no series.
    /// Exports every `reason` of `topgun_cluster_peer_errors_total` at zero from the start; the
    /// cluster owns the list (telemetry imports nothing from the layers above it).
    pub fn with_peer_error_reasons(self, reasons: &[&str]) -> Metrics {
        for reason in reasons {
            self.cluster_peer_errors_total.with_label_values(&[reason]);
        }
        self
    }

    /// The events to count, each series created at 0.
    pub fn with_events(mut self, events: impl IntoIterator<Item = &'static EventInfo>) -> Metrics {
        for info in events {
            self.events_total
                .with_label_values(&[info.name, info.level_label()]);
            self.events.push(info);
        }
        self
    }

    /// Copies each event's count into its series (the counts live beside the declarations).
    fn copy_event_counts(&self) {
        for info in &self.events {
            let series = self
                .events_total
                .with_label_values(&[info.name, info.level_label()]);
            let (now, shown) = (info.count(), series.get());
            if now > shown {
                series.inc_by(now - shown);
            }
        }
    }

    pub fn render(&self) -> Result<String, prometheus::Error> {
        self.copy_event_counts();
        let families = self.registry.gather();
        let mut buf = Vec::with_capacity(16 * 1024);
        TextEncoder::new().encode(&families, &mut buf)?;
        let mut text = String::from_utf8(buf).unwrap_or_default();
        for (name, help, kind) in &self.catalogue {
            if !families.iter().any(|f| f.name() == name) {
                let _ = write!(text, "# HELP {name} {help}\n# TYPE {name} {kind}\n");
            }
        }
        Ok(text)
    }
}

struct Builder {
    registry: Registry,
    catalogue: Vec<(String, String, &'static str)>,
}

impl Builder {
    fn register(
        &mut self,
        c: Box<dyn prometheus::core::Collector>,
        name: &str,
        kind: &'static str,
        help: &str,
    ) -> prometheus::Result<()> {
        self.registry.register(c)?;
        self.catalogue.push((name.into(), help.into(), kind));
        Ok(())
    }

    fn collector<C: prometheus::core::Collector + 'static>(
        &mut self,
        c: Arc<C>,
        kind: &'static str,
    ) -> prometheus::Result<()> {
        let desc = c.desc()[0].clone();
        self.registry.register(Box::new(ArcCollector(c)))?;
        self.catalogue.push((desc.fq_name, desc.help, kind));
        Ok(())
    }

    fn counter(&mut self, name: &str, help: &str) -> prometheus::Result<IntCounter> {
        let c = IntCounter::new(name, help)?;
        self.register(Box::new(c.clone()), name, "counter", help)?;
        Ok(c)
    }

    fn gauge(&mut self, name: &str, help: &str) -> prometheus::Result<IntGauge> {
        let g = IntGauge::new(name, help)?;
        self.register(Box::new(g.clone()), name, "gauge", help)?;
        Ok(g)
    }

    fn counter_vec(
        &mut self,
        name: &str,
        help: &str,
        labels: &[&str],
    ) -> prometheus::Result<IntCounterVec> {
        let c = IntCounterVec::new(Opts::new(name, help), labels)?;
        self.register(Box::new(c.clone()), name, "counter", help)?;
        Ok(c)
    }

    fn gauge_vec(
        &mut self,
        name: &str,
        help: &str,
        labels: &[&str],
    ) -> prometheus::Result<IntGaugeVec> {
        let g = IntGaugeVec::new(Opts::new(name, help), labels)?;
        self.register(Box::new(g.clone()), name, "gauge", help)?;
        Ok(g)
    }
}

/// Lets the metrics actor keep a typed handle on a custom collector it also registered.
struct ArcCollector<C>(Arc<C>);

impl<C: prometheus::core::Collector> prometheus::core::Collector for ArcCollector<C> {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        self.0.desc()
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        self.0.collect()
    }
}

/// Reads `/metrics`.
#[derive(Message)]
#[rtype(result = "String")]
pub struct Scrape;

/// Reads the `/debug/actors` rows, with the `top` busiest actors of each kind.
#[derive(Message)]
#[rtype(result = "ActorsSnapshot")]
pub struct DebugActors {
    pub top: usize,
}

/// Counts a lag probe's measurement (see `telemetry::lag`).
pub struct LagReport {
    pub arbiter: String,
    pub seconds: f64,
}

impl Report for LagReport {
    fn apply(self: Box<Self>, m: &mut Metrics) {
        m.runtime_lag_seconds
            .with_label_values(&[&self.arbiter])
            .set(self.seconds);
        m.actors.record_lag(&self.arbiter, self.seconds);
    }
}

/// Owns the registry. Runs on its own arbiter so that a saturated worker never delays a scrape.
pub struct MetricsActor {
    metrics: Metrics,
    stats: ActorStats,
    log: Logger,
    log_records_dropped: Arc<AtomicU64>,
    log_records_seen: u64,
    report_interval: Duration,
    /// Sampled at scrape time: exact, and no actor needs to report it.
    pending_batches: Option<Arc<std::sync::atomic::AtomicI64>>,
    /// Sampled every [`BUDGET_SAMPLE`] (writes are refused on it), shown at scrape time.
    budget: Option<Arc<dyn SampledBudget>>,
    maps: Option<Arc<dyn SampledCount>>,
    /// Counted by every mailbox, node-wide; `dead_letters_seen` is what the exported counter
    /// already holds of them, per kind.
    dead_letters: Arc<DeadLetters>,
    dead_letters_seen: [u64; ActorKind::ALL.len()],
}

/// How often resident memory is measured against the budget: a client writing as fast as it
/// can adds a few MB between samples, well within the headroom the default budget leaves.
pub const BUDGET_SAMPLE: Duration = Duration::from_millis(100);

impl MetricsActor {
    pub fn new(
        metrics: Metrics,
        log: &Logger,
        log_records_dropped: Arc<AtomicU64>,
        report_interval: Duration,
        timed: bool,
        dead_letters: Arc<DeadLetters>,
    ) -> Self {
        let mut metrics = metrics;
        metrics.actors = ActorTable::new(report_interval);
        MetricsActor {
            metrics,
            stats: ActorStats::new(ActorKind::Metrics, timed),
            log: log.new(slog::o!("actor" => "metrics")),
            log_records_dropped,
            log_records_seen: 0,
            report_interval,
            pending_batches: None,
            budget: None,
            maps: None,
            dead_letters,
            dead_letters_seen: [0; ActorKind::ALL.len()],
        }
    }

    /// The memory budget to sample (and log crossings of), and the map catalog to show.
    pub fn sample_limits(
        mut self,
        budget: Arc<dyn SampledBudget>,
        maps: Arc<dyn SampledCount>,
    ) -> Self {
        self.budget = Some(budget);
        self.maps = Some(maps);
        self
    }

    fn sample_budget(&mut self) {
        let Some(budget) = &self.budget else {
            return;
        };
        let Some(used) = resident_bytes() else {
            return;
        };
        match budget.observe(used) {
            Some(Crossing::Exceeded { used }) => {
                MemoryBudgetExceeded {
                    used_bytes: used,
                    budget_bytes: budget.limit(),
                    err: ErrField::fixed(
                        "memory_budget_exceeded",
                        "resident memory reached --max-memory",
                    ),
                }
                .emit(&self.log);
            }
            Some(Crossing::Recovered { used }) => {
                MemoryBudgetRecovered {
                    used_bytes: used,
                    budget_bytes: budget.limit(),
                }
                .emit(&self.log);
            }
            None => {}
        }
    }

    /// The node-wide count behind `topgun_backpressure_pending_ops`.
    pub fn sample_pending_batches(mut self, pending: Arc<std::sync::atomic::AtomicI64>) -> Self {
        self.pending_batches = Some(pending);
        self
    }

    pub fn tap(&self) -> super::mailbox::Tap {
        self.stats.tap()
    }

    /// Moves `topgun_actor_dead_letters_total` up to what the mailboxes counted.
    fn sample_dead_letters(&mut self) {
        for kind in ActorKind::ALL {
            let now = self.dead_letters.get(kind);
            let seen = &mut self.dead_letters_seen[kind.index()];
            if now > *seen {
                self.metrics
                    .actor_dead_letters_total
                    .with_label_values(&[kind.label()])
                    .inc_by(now - *seen);
                *seen = now;
            }
        }
    }

    fn refresh_sampled(&mut self) {
        // jemalloc caches its statistics until the epoch advances.
        if tikv_jemalloc_ctl::epoch::advance().is_ok() {
            if let Ok(bytes) = tikv_jemalloc_ctl::stats::allocated::read() {
                self.metrics.memory_usage_bytes.set(bytes as i64);
            }
        }
        if let Some(p) = &self.pending_batches {
            self.metrics
                .backpressure_pending_ops
                .set(p.load(Ordering::Acquire));
        }
        if let Some(b) = &self.budget {
            let m = &self.metrics;
            m.memory_budget_bytes.set(b.limit() as i64);
            m.memory_budget_used_bytes.set(b.used() as i64);
            m.memory_budget_exceeded.set(i64::from(b.exceeded()));
        }
        if let Some(maps) = &self.maps {
            self.metrics.maps.set(maps.count() as i64);
        }
        self.sample_dead_letters();
        let dropped = self.log_records_dropped.load(Ordering::Relaxed);
        if dropped > self.log_records_seen {
            self.metrics
                .log_records_dropped_total
                .inc_by(dropped - self.log_records_seen);
            self.log_records_seen = dropped;
        }
    }
}

impl Actor for MetricsActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        // Reports are never refused: they are what the scrape shows.
        ctx.set_mailbox_capacity(UNBOUNDED_MAILBOX);
        ctx.run_interval(self.report_interval, |act, _| {
            let delta = act.stats.take();
            delta.apply(&mut act.metrics);
            act.sample_dead_letters();
            act.metrics.actors.prune(std::time::Instant::now());
        });
        if self.budget.as_ref().is_some_and(|b| b.limit() > 0) {
            self.sample_budget();
            ctx.run_interval(BUDGET_SAMPLE, |act, _| act.sample_budget());
        }
    }
}

impl Handler<Reported> for MetricsActor {
    type Result = ();

    fn handle(&mut self, msg: Reported, _: &mut Context<Self>) {
        let t0 = self.stats.begin();
        msg.0.apply(&mut self.metrics);
        self.stats.end(t0);
    }
}

impl Handler<Scrape> for MetricsActor {
    type Result = String;

    fn handle(&mut self, _: Scrape, _: &mut Context<Self>) -> String {
        let t0 = self.stats.begin();
        self.refresh_sampled();
        let text = self.metrics.render().unwrap_or_else(|e| {
            ExpositionFailed {
                err: ErrField::new("encode_failed", e),
            }
            .emit(&self.log);
            String::new()
        });
        self.stats.end(t0);
        text
    }
}

impl Handler<DebugActors> for MetricsActor {
    type Result = MessageResult<DebugActors>;

    fn handle(&mut self, msg: DebugActors, _: &mut Context<Self>) -> Self::Result {
        let t0 = self.stats.begin();
        let snapshot = self
            .metrics
            .actors
            .snapshot(std::time::Instant::now(), msg.top);
        self.stats.end(t0);
        MessageResult(snapshot)
    }
}

mailbox_handlers!(MetricsActor, stats);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_seed_family_is_declared_from_the_start() {
        let m = Metrics::new(10, Duration::from_secs(60)).unwrap();
        let text = m.render().unwrap();
        for (name, kind) in [
            ("topgun_connected_clients", "gauge"),
            ("topgun_map_size_items", "gauge"),
            ("topgun_ops_total", "counter"),
            ("topgun_subscribers_per_event", "summary"),
            ("topgun_events_filtered_by_subscription", "counter"),
            ("topgun_connection_rate_per_second", "gauge"),
            ("topgun_actor_handle_seconds", "histogram"),
            ("topgun_process_cpu_seconds_total", "counter"),
        ] {
            assert!(
                text.contains(&format!("# TYPE {name} {kind}\n")),
                "{name} missing in\n{text}"
            );
        }
        assert!(text.contains("topgun_event_queue_rejected_total 0\n"));
    }

    #[test]
    fn map_labels_are_capped() {
        let mut m = Metrics::new(2, Duration::from_secs(60)).unwrap();
        assert_eq!(m.map_label("a"), "a");
        assert_eq!(m.map_label("b"), "b");
        assert_eq!(m.map_label("c"), OTHER_MAP);
        assert_eq!(m.map_label("a"), "a");
    }
}
