#!/usr/bin/env python3
"""Writes config/grafana/topgun-node.json, the Grafana dashboard of topgun-node.

The JSON is what operators import; this file is where it is edited (panels as data, one line
each, instead of 2,000 lines of JSON). After a change: `python3 config/grafana/build_dashboard.py`
and commit both. `scripts/check-operator-kit` fails when the JSON is not what this produces, and
`tests/operator_kit.rs` checks that every expression parses and names only metric families the
node exports, and that every family has a panel.

Every query filters on `job=~"$job", instance=~"$node"` (the `S` selector below).
"""
import json
import pathlib
import sys

# The selector every query carries: the dashboard's job and node variables.
S = 'job=~"$job", instance=~"$node"'
R = "$__rate_interval"

# (row title, [panels]); a panel is (title, kind, unit, [(expr, legend)], description).
# kind: "ts" time series, "stat" single value, "text" a note (exprs = markdown).
ROWS = [
    ("Overview", [
        ("Nodes up", "stat", "none",
         [(f'sum(up{{{S}}})', "up"), (f'count(up{{{S}}})', "scraped")],
         "Nodes answering scrapes, of the nodes Prometheus scrapes."),
        ("Cluster members (min seen by a node)", "stat", "none",
         [(f'min(topgun_cluster_members{{{S}}})', "members")],
         "Active members as the most pessimistic node sees them, itself included."),
        ("Connected clients", "stat", "none",
         [(f'sum(topgun_connected_clients{{{S}}})', "clients")], ""),
        ("Ops per second", "stat", "ops",
         [(f'sum(rate(topgun_ops_total{{{S}}}[{R}]))', "ops/s")], ""),
        ("Event queue fill (max)", "stat", "percentunit",
         [(f'max(topgun_event_queue_size{{{S}}} / topgun_event_queue_capacity{{{S}}})', "fill")],
         "Alert TopGunEventQueueNearCapacity fires above 80 % for 2 minutes."),
        ("Partitions owned (of 271)", "stat", "none",
         [(f'sum(topgun_partitions_owned{{{S}}} and on (instance, job) (up{{{S}}} == 1))', "owned")],
         "Summed over the nodes answering scrapes; 271 once every node agrees on the table (all nodes selected). Alert TopGunPartitionOwnershipMismatch."),
        ("Version", "stat", "none",
         [(f'count by (version) (topgun_build_info{{{S}}})', "{{version}}")],
         "Nodes per running version."),
        ("Uptime", "stat", "s",
         [(f'time() - topgun_process_start_time_seconds{{{S}}}', "{{instance}}")], ""),
    ]),
    ("Connections and rate limiter", [
        ("Connected clients", "ts", "none",
         [(f'topgun_connected_clients{{{S}}}', "{{instance}}")], "Open client WebSockets."),
        ("Connections accepted / rejected", "ts", "cps",
         [(f'sum by (instance) (rate(topgun_connections_accepted_total{{{S}}}[{R}]))', "accepted {{instance}}"),
          (f'sum by (instance) (rate(topgun_connections_rejected_total{{{S}}}[{R}]))', "rejected {{instance}}")],
         "Rejected = refused by the connection rate limiter (HTTP 429 or close 1013)."),
        ("Pending handshakes and connection rate", "ts", "none",
         [(f'topgun_connections_pending{{{S}}}', "pending {{instance}}"),
          (f'topgun_connection_rate_per_second{{{S}}}', "accepted last second {{instance}}")], ""),
        ("Draining nodes, connections turned away", "ts", "none",
         [(f'topgun_draining{{{S}}}', "draining {{instance}}"),
          (f'sum by (instance) (rate(topgun_events_total{{{S},event="connection_refused_draining"}}[{R}]))', "turned away/s {{instance}}")],
         "1 from SIGTERM until the node exits: /ready is 503, new connections get a 503 and the open ones are closed over the drain spread (closed_by_reason shutdown). A node stuck at 1 is not exiting."),
        ("Connections closed by reason", "ts", "cps",
         [(f'sum by (reason) (rate(topgun_connections_closed_total{{{S}}}[{R}]))', "{{reason}}")], ""),
        ("Auth failures by reason", "ts", "cps",
         [(f'sum by (reason) (rate(topgun_auth_failures_total{{{S}}}[{R}]))', "{{reason}}")],
         "Alert TopGunAuthFailureSpike: more than 50 in 5 minutes."),
        ("JWT keys: in use, failed refreshes", "ts", "none",
         [(f'topgun_jwt_keys{{{S}}}', "keys {{instance}}"),
          (f'sum by (instance) (increase(topgun_jwks_refresh_failures_total{{{S}}}[{R}]))', "failed refreshes {{instance}}")],
         "Keys by kid from --jwt-keys-file or --jwks-url (0 with JWT_SECRET). A failed refresh keeps the keys in use; alert TopGunJwksRefreshFailing."),
        ("Invalid frames by reason, client rate limiting", "ts", "cps",
         [(f'sum by (reason) (rate(topgun_invalid_messages_total{{{S}}}[{R}]))', "{{reason}}"),
          (f'sum(rate(topgun_client_rate_limited_total{{{S}}}[{R}]))', "rate-limited frames (429)")], ""),
        ("Client TLS: failed handshakes and reloads", "ts", "cps",
         [(f'sum by (reason) (rate(topgun_tls_handshake_failures_total{{{S}}}[{R}]))', "failed handshake: {{reason}}"),
          (f'sum by (result) (increase(topgun_tls_reloads_total{{{S}}}[{R}]))', "reloads: {{result}}")],
         "plaintext: a plain-text client on the TLS port (answered 400). Alert TopGunTlsReloadFailed: a reload failed, the old certificate is still served."),
        ("Per-connection limits exceeded", "ts", "cps",
         [(f'sum by (limit) (rate(topgun_limits_exceeded_total{{{S}}}[{R}]))', "{{limit}}")],
         "live_queries and topics: refused with an answer; live_window: a live limit window cut to --query-max-results rows."),
    ]),
    ("Operations and maps", [
        ("Ops by type", "ts", "ops",
         [(f'sum by (type) (rate(topgun_ops_total{{{S}}}[{R}]))', "{{type}}")],
         "One per op, each op of an OP_BATCH counted."),
        ("Ops by map (top 10)", "ts", "ops",
         [(f'topk(10, sum by (map) (rate(topgun_ops_total{{{S}}}[{R}])))', "{{map}}")],
         "Maps beyond the label cap are folded into __other__."),
        ("Map size (top 10)", "ts", "none",
         [(f'topk(10, sum by (map) (topgun_map_size_items{{{S}}}))', "{{map}}")],
         "Live entries, summed over the selected nodes."),
        ("Tombstones (top 10)", "ts", "none",
         [(f'topk(10, sum by (map) (topgun_map_tombstones{{{S}}}))', "{{map}}")], ""),
    ]),
    ("Event queue and routing", [
        ("Event queue fill", "ts", "percentunit",
         [(f'topgun_event_queue_size{{{S}}} / topgun_event_queue_capacity{{{S}}}', "{{instance}}")],
         "Size over capacity, all stripes."),
        ("Events per stripe", "ts", "none",
         [(f'topgun_event_queue_stripe_size{{{S}}}', "{{instance}} stripe {{stripe}}")],
         "One hot stripe rejects while the queue as a whole looks fine."),
        ("Enqueued / dequeued / rejected", "ts", "ops",
         [(f'sum by (instance) (rate(topgun_event_queue_enqueued_total{{{S}}}[{R}]))', "enqueued {{instance}}"),
          (f'sum by (instance) (rate(topgun_event_queue_dequeued_total{{{S}}}[{R}]))', "dequeued {{instance}}"),
          (f'sum by (instance) (rate(topgun_event_queue_rejected_total{{{S}}}[{R}]))', "rejected {{instance}}")], ""),
        ("Events routed / filtered", "ts", "ops",
         [(f'sum by (instance) (rate(topgun_events_routed_total{{{S}}}[{R}]))', "routed {{instance}}"),
          (f'sum by (instance) (rate(topgun_events_filtered_by_subscription{{{S}}}[{R}]))', "no subscriber {{instance}}")], ""),
        ("Subscribers per event", "ts", "none",
         [(f'max by (quantile) (topgun_subscribers_per_event{{{S}}})', "p{{quantile}}"),
          (f'sum(rate(topgun_subscribers_per_event_sum{{{S}}}[{R}])) / sum(rate(topgun_subscribers_per_event_count{{{S}}}[{R}]))', "mean")],
         "Quantiles over the node's sliding window (10 min by default)."),
        ("Outbound drops (slow clients)", "ts", "ops",
         [(f'sum by (instance) (rate(topgun_outbound_dropped_total{{{S}}}[{R}]))', "{{instance}}")], ""),
    ]),
    ("Backpressure", [
        ("Pending write batches", "ts", "none",
         [(f'topgun_backpressure_pending_ops{{{S}}}', "{{instance}}")],
         "Accepted and not yet applied; connections wait at the limit (1,000 by default)."),
        ("Waits, forced syncs, timeouts", "ts", "ops",
         [(f'sum by (instance) (rate(topgun_backpressure_waits_total{{{S}}}[{R}]))', "waits {{instance}}"),
          (f'sum by (instance) (rate(topgun_backpressure_sync_forced_total{{{S}}}[{R}]))', "sync forced {{instance}}"),
          (f'sum by (instance) (rate(topgun_backpressure_timeouts_total{{{S}}}[{R}]))', "timeouts {{instance}}")], ""),
    ]),
    ("Actors", [
        ("Mailbox depth by actor kind", "ts", "none",
         [(f'sum by (actor) (topgun_actor_mailbox_depth{{{S}}})', "{{actor}}")],
         "Messages sent and not yet handled. A kind whose depth keeps rising is the bottleneck."),
        ("Messages per second by actor kind", "ts", "ops",
         [(f'sum by (actor) (rate(topgun_actor_messages_total{{{S}}}[{R}]))', "{{actor}}")], ""),
        ("Handle time p99 by actor kind", "ts", "s",
         [(f'histogram_quantile(0.99, sum by (actor, le) (rate(topgun_actor_handle_seconds_bucket{{{S}}}[{R}])))', "{{actor}}")], ""),
        ("Busy time by actor kind", "ts", "percentunit",
         [(f'sum by (instance, actor) (rate(topgun_actor_handle_seconds_sum{{{S}}}[{R}]))', "{{instance}} {{actor}}")],
         "Seconds spent handling per second: 1 = one thread fully busy. Per member: GET /debug/actors."),
        ("Mean handle time by actor kind", "ts", "s",
         [(f'sum by (actor) (rate(topgun_actor_handle_seconds_sum{{{S}}}[{R}])) / sum by (actor) (rate(topgun_actor_handle_seconds_count{{{S}}}[{R}]))', "{{actor}}")], ""),
        ("Mailbox wait p99 by actor kind", "ts", "s",
         [(f'histogram_quantile(0.99, sum by (actor, le) (rate(topgun_actor_mailbox_wait_seconds_bucket{{{S}}}[{R}])))', "p99 {{actor}}"),
          (f'sum by (actor) (rate(topgun_actor_mailbox_wait_seconds_sum{{{S}}}[{R}])) / sum by (actor) (rate(topgun_actor_mailbox_wait_seconds_count{{{S}}}[{R}]))', "mean {{actor}}")],
         "Time a message waited in the mailbox before its handler started: rising with the depth = the kind cannot keep up. Which actor: GET /debug/actors (top by mailbox wait)."),
        ("Dead letters by actor kind", "ts", "ops",
         [(f'sum by (actor) (rate(topgun_actor_dead_letters_total{{{S}}}[{R}]))', "{{actor}}")],
         "Messages sent to an actor that had stopped: live events for a client that just left (connection), requests on a peer link that just dropped (cluster). Steady growth without disconnects is a bug."),
        ("Restarts by actor kind", "ts", "none",
         [(f'sum by (actor) (increase(topgun_actor_restarts_total{{{S}}}[1h]))', "{{actor}}")],
         "Supervised restarts in the last hour."),
    ]),
    ("Runtime and process", [
        ("Runtime lag by arbiter", "ts", "s",
         [(f'max by (arbiter) (topgun_runtime_lag_seconds{{{S}}})', "{{arbiter}}")],
         "How late a periodic tick ran on each thread. Alert TopGunRuntimeLag: above 100 ms for 5 minutes."),
        ("CPU", "ts", "percentunit",
         [(f'rate(topgun_process_cpu_seconds_total{{{S}}}[{R}])', "{{instance}}")], "Cores used."),
        ("Threads and file descriptors", "ts", "none",
         [(f'topgun_process_threads{{{S}}}', "threads {{instance}}"),
          (f'topgun_process_open_fds{{{S}}}', "open fds {{instance}}"),
          (f'topgun_process_max_fds{{{S}}}', "max fds {{instance}}")], ""),
        ("Log lines dropped", "ts", "ops",
         [(f'rate(topgun_log_records_dropped_total{{{S}}}[{R}])', "{{instance}}")],
         "Lines the log writer could not keep up with (logging never blocks the node)."),
        ("Warning and error events", "ts", "ops",
         [(f'topk(10, sum by (event) (rate(topgun_events_total{{{S},level=~"warn|error|fatal"}}[{R}])))', "{{event}}")],
         "Notable events at warn and above, the ten most frequent (docs/events.md lists every event; each has its log line)."),
    ]),
    ("Storage", [
        ("Commit duration", "ts", "s",
         [(f'histogram_quantile(0.5, sum by (instance, le) (rate(topgun_storage_commit_seconds_bucket{{{S}}}[{R}])))', "p50 {{instance}}"),
          (f'histogram_quantile(0.99, sum by (instance, le) (rate(topgun_storage_commit_seconds_bucket{{{S}}}[{R}])))', "p99 {{instance}}")],
         "One durable group commit, fsync included. Alert TopGunStorageCommitSlow: p99 above 250 ms."),
        ("Commits per second and records per commit", "ts", "none",
         [(f'sum by (instance) (rate(topgun_storage_commit_seconds_count{{{S}}}[{R}]))', "commits/s {{instance}}"),
          (f'sum by (instance) (rate(topgun_storage_commit_records_sum{{{S}}}[{R}])) / sum by (instance) (rate(topgun_storage_commit_records_count{{{S}}}[{R}]))', "records/commit {{instance}}"),
          (f'histogram_quantile(0.99, sum by (instance, le) (rate(topgun_storage_commit_records_bucket{{{S}}}[{R}])))', "p99 records/commit {{instance}}")], ""),
        ("Storage errors by operation", "ts", "ops",
         [(f'sum by (instance, op) (rate(topgun_storage_errors_total{{{S}}}[{R}]))', "{{op}} {{instance}}")], ""),
        ("Storage size on disk", "ts", "bytes",
         [(f'topgun_storage_size_bytes{{{S}}}', "{{instance}}")], "0 with the memory backend."),
    ]),
    ("Memory", [
        ("Heap and resident memory", "ts", "bytes",
         [(f'topgun_memory_usage_bytes{{{S}}}', "heap {{instance}}"),
          (f'topgun_process_resident_memory_bytes{{{S}}}', "resident {{instance}}"),
          (f'topgun_process_virtual_memory_bytes{{{S}}}', "virtual {{instance}}")],
         "Heap = bytes allocated (allocator statistics). Alert TopGunHeapGrowth: 1.5x in an hour."),
        ("Memory budget", "ts", "bytes",
         [(f'topgun_memory_budget_used_bytes{{{S}}}', "resident {{instance}}"),
          (f'topgun_memory_budget_bytes{{{S}}}', "budget {{instance}}")],
         "--max-memory; at the budget, writes that add data are refused until resident memory is under 95% of it."),
        ("Over memory budget", "ts", "none",
         [(f'topgun_memory_budget_exceeded{{{S}}}', "{{instance}}")],
         "1 while writes that add data are refused. Alert TopGunMemoryBudgetExceeded."),
        ("Maps held", "ts", "none",
         [(f'topgun_maps{{{S}}}', "{{instance}}")],
         "Maps on the node; clients may name new ones up to --max-maps."),
    ]),
    ("Cluster", [
        ("Cluster members seen by each node", "ts", "none",
         [(f'topgun_cluster_members{{{S}}}', "{{instance}}"),
          (f'count(up{{{S}}})', "scraped nodes (expected)")],
         "Itself included. Every node should see as many members as Prometheus scrapes."),
        ("Invalid datagrams on the cluster port", "ts", "pps",
         [(f'rate(topgun_cluster_invalid_datagrams_total{{{S}}}[{R}])', "{{instance}}")],
         "Garbage, truncated or other-version datagrams dropped by the membership (logged once per 10 s)."),
    ]),
    ("Cluster data", [
        ("Partitions owned / backed up per node", "ts", "none",
         [(f'topgun_partitions_owned{{{S}}}', "owned {{instance}}"),
          (f'topgun_partitions_backup{{{S}}}', "backup {{instance}}")],
         "From each node's own partition table: about 271/n owned and backup-count x 271/n backed up each."),
        ("Partitions owned, all nodes (271 expected)", "ts", "none",
         [(f'sum(topgun_partitions_owned{{{S}}} and on (instance, job) (up{{{S}}} == 1))', "owned (nodes up)"),
          ('vector(271)', "expected")],
         "Only nodes answering scrapes count. Below 271: partitions nobody owns; above: nodes with diverging tables (split brain). Alert TopGunPartitionOwnershipMismatch: not 271 for 1 minute."),
        ("Partition table version, rebalances in the last hour", "ts", "none",
         [(f'topgun_partition_table_version{{{S}}}', "version {{instance}}"),
          (f'sum by (instance) (increase(topgun_rebalance_total{{{S}}}[1h]))', "rebalances {{instance}}")],
         "The version is the second of the last change (since 2024-01-01): nodes show the same or nearby numbers for the same placement, a later change a higher one."),
        ("Migration: partitions pending", "ts", "none",
         [(f'topgun_migration_partitions_pending{{{S}}}', "{{instance}}")],
         "Partitions still being pulled after a rebalance. Alert TopGunMigrationStuck: above 0 for 10 minutes."),
        ("Migration: records received", "ts", "ops",
         [(f'sum by (instance) (rate(topgun_migration_records_total{{{S}}}[{R}]))', "records/s {{instance}}")],
         "LWW entries, OR records and removed OR tags pulled from peers."),
        ("Ops forwarded / applied for peers", "ts", "ops",
         [(f'sum by (instance) (rate(topgun_cluster_forwarded_total{{{S}}}[{R}]))', "forwarded {{instance}}"),
          (f'sum by (role) (rate(topgun_cluster_applied_total{{{S}}}[{R}]))', "applied as {{role}}")],
         "Forwarded: client ops sent to their partition's owner. Applied: ops applied for a peer as owner, synchronous backup or asynchronous replica."),
        ("Replication lag", "ts", "s",
         [(f'topgun_replication_lag_seconds{{{S}}}', "{{instance}}")],
         "Longest wait for a peer's confirmation per report interval, still-waiting writes included. Alert TopGunReplicationLagHigh: above 1 s for 2 minutes."),
        ("Peer links", "ts", "none",
         [(f'topgun_cluster_peer_links{{{S}}}', "links {{instance}}"),
          (f'topgun_cluster_members{{{S}}} - 1', "expected (members - 1) {{instance}}")],
         "Open outbound TCP connections to other members. Alert TopGunPeerLinksMissing: fewer than members - 1 for a minute (the node also logs 'peer link missing while the member is alive' and /ready says degraded)."),
        ("Peer errors by reason", "ts", "cps",
         [(f'sum by (instance, reason) (rate(topgun_cluster_peer_errors_total{{{S}}}[{R}]))', "{{reason}} {{instance}}")],
         "Refused, failed or lost node-to-node connections and timed-out requests. Alert TopGunPeerErrors: lost, timeout, version or node_id_clash in every 5 minutes for 5 minutes."),
        ("Unsent bytes on peer links", "ts", "bytes",
         [(f'topgun_cluster_link_unsent_bytes{{{S}}}', "unsent {{instance}}"),
          (f'sum by (instance) (increase(topgun_cluster_peer_errors_total{{{S},reason="backlog"}}[5m]))', "links cut in 5m {{instance}}")],
         "Bytes written to node-to-node links and not yet taken by the kernel, summed over links. A peer that stops reading (frozen, overloaded) makes it grow; past --cluster-link-buffer-bytes (64 MiB) per link the link is cut (peer errors, reason backlog) and the peer catches up when it reconnects."),
        ("Splits healed", "ts", "none",
         [(f'sum by (instance) (increase(topgun_cluster_heals_total{{{S}}}[5m]))', "healed in 5m {{instance}}")],
         "A member this node saw declared down came back as its next generation (a network split or a pause healed, not a restart), or this node rejoined the others after they declared it down. Each is logged: 'cluster split healed' (side stayed, with the peer and how long it was apart, or side rejoined)."),
        ("Anti-entropy", "ts", "none",
         [(f'sum by (instance) (increase(topgun_antientropy_rounds_total{{{S}}}[5m]))', "rounds in 5m {{instance}}"),
          (f'sum by (instance) (increase(topgun_antientropy_repaired_total{{{S}}}[5m]))', "partitions repaired in 5m {{instance}}")],
         "Every --anti-entropy-interval-ms (30 s) the owner of partitions compares their digests with each backup's and merges, both ways, the partitions that differ while neither holder wrote to them since the last round. Repairs should be rare: each one is logged ('anti-entropy repair', with the partition and records); a steady rate means replicas keep diverging."),
        ("Catch-ups from reconnected peers", "ts", "cps",
         [(f'sum by (instance, outcome) (rate(topgun_cluster_catch_ups_total{{{S}}}[{R}]))', "{{outcome}} {{instance}}")],
         "A full pull from a peer each time it (re)connects: a few after a rejoin or a broken link. A steady rate means a link that keeps breaking; failed ones are retried with backoff."),
        ("Failed forwards handed off", "ts", "none",
         [(f'topgun_cluster_handoffs_pending{{{S}}}', "pending {{instance}}"),
          (f'sum by (instance, outcome) (increase(topgun_cluster_handoffs_total{{{S}}}[5m]))', "{{outcome}} in 5m {{instance}}")],
         "Forwards that failed (their client got ERROR) sent to the owner again in the background. Dropped ones (more than 10,000 or 64 MiB waiting, or 2 minutes without success) are left to the client's resend and the next catch-up."),
        ("Records by role", "ts", "none",
         [(f'sum by (instance, role) (topgun_partition_records{{{S}}})', "{{role}} {{instance}}"),
          (f'sum by (instance) (increase(topgun_partitions_released_total{{{S}}}[5m]))', "partitions handed over in 5m {{instance}}")],
         "Records stored on each node by its role for their partition. Full placement: every node stores every record (replica = the copies of partitions it neither owns nor backs up). Partitioned: owner + backup only, about records x (1 + backups) / nodes each; replica is what waits to be handed over after a rebalance and returns to 0."),
        ("Gathered reads", "ts", "cps",
         [(f'sum by (instance, outcome) (rate(topgun_cluster_gathers_total{{{S}}}[{R}]))', "{{outcome}} {{instance}}")],
         "Partitioned placement: query snapshots and POST /sync queries read from the partitions' holders. retried = a member's share asked again of another holder (it was down, slow or no longer held it); failed = the client got an error because no holder answered for a partition."),
        ("Live events between nodes", "ts", "cps",
         [(f'sum by (instance, outcome) (rate(topgun_cluster_live_events_total{{{S}}}[{R}]))', "{{outcome}} {{instance}}")],
         "Partitioned placement: changes every holder sends to nodes with live subscribers on the map. duplicate = a copy from a second holder, routed once (about one per sent change with one backup); dropped = a full channel or stripe, subscribers elsewhere then recover by sync."),
    ]),
]


def panel(pid, title, kind, unit, exprs, desc, x, y, w, h):
    ds = {"type": "prometheus", "uid": "${datasource}"}
    p = {"id": pid, "title": title, "description": desc,
         "gridPos": {"h": h, "w": w, "x": x, "y": y}}
    if kind == "text":
        p.update({"type": "text", "options": {"mode": "markdown", "content": exprs[0]}})
        return p
    p.update({
        "type": "stat" if kind == "stat" else "timeseries",
        "datasource": ds,
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "targets": [{"refId": chr(ord("A") + i), "datasource": ds, "expr": e,
                     "legendFormat": legend}
                    for i, (e, legend) in enumerate(exprs)],
    })
    if kind == "stat":
        p["options"] = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                        "colorMode": "value", "graphMode": "area", "textMode": "auto"}
    else:
        p["options"] = {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                        "tooltip": {"mode": "multi", "sort": "desc"}}
        p["fieldConfig"]["defaults"]["custom"] = {"lineWidth": 1, "fillOpacity": 10}
    return p


def build():
    panels, pid, y = [], 1, 0
    for title, items in ROWS:
        panels.append({"id": pid, "type": "row", "title": title, "collapsed": False,
                       "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []})
        pid, y = pid + 1, y + 1
        stats = all(k == "stat" for _, k, *_ in items)
        w, h = (24 // len(items) if stats else 8), (4 if stats else 8)
        x = 0
        for (ptitle, kind, unit, exprs, desc) in items:
            if x + w > 24:
                x, y = 0, y + h
            panels.append(panel(pid, ptitle, kind, unit, exprs, desc, x, y, w, h))
            pid, x = pid + 1, x + w
        y += h
    ds = {"type": "prometheus", "uid": "${datasource}"}
    return {
        "title": "topgun-node",
        "uid": "topgun-node",
        "description": "TopGun cluster nodes: connections, ops, event queue, backpressure, actors, runtime, storage, memory, cluster, cluster data. Generated by config/grafana/build_dashboard.py.",
        "tags": ["topgun"],
        "editable": True,
        "schemaVersion": 39,
        "version": 1,
        "time": {"from": "now-1h", "to": "now"},
        "refresh": "30s",
        "timezone": "",
        "graphTooltip": 1,
        "links": [],
        "annotations": {"list": []},
        "templating": {"list": [
            {"name": "datasource", "label": "Data source", "type": "datasource",
             "query": "prometheus", "current": {}, "hide": 0, "refresh": 1, "regex": ""},
            {"name": "job", "label": "Job", "type": "query", "datasource": ds,
             "definition": "label_values(topgun_build_info, job)",
             "query": {"query": "label_values(topgun_build_info, job)", "refId": "job"},
             "refresh": 1, "includeAll": False, "multi": False, "current": {}, "hide": 0,
             "sort": 1},
            {"name": "node", "label": "Node", "type": "query", "datasource": ds,
             "definition": 'label_values(topgun_build_info{job=~"$job"}, instance)',
             "query": {"query": 'label_values(topgun_build_info{job=~"$job"}, instance)',
                       "refId": "node"},
             "refresh": 2, "includeAll": True, "multi": True, "allValue": ".*",
             "current": {}, "hide": 0, "sort": 1},
        ]},
        "panels": panels,
    }


if __name__ == "__main__":
    out = json.dumps(build(), indent=2, ensure_ascii=False) + "\n"
    target = pathlib.Path(__file__).with_name("topgun-node.json")
    if sys.argv[1:] == ["--check"]:
        if target.read_text() != out:
            sys.exit(f"{target} is stale: run python3 {__file__}")
        sys.exit(0)
    target.write_text(out)
