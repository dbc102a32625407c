//! Wiring: the actors in dependency order (metrics, gate, then the HTTP workers that host the
//! connections), the `PORT=` line, and the shutdown sequence.
//!
//! Shutdown (SIGTERM or SIGINT): stop reporting ready, close every client with 1001, stop the
//! HTTP server, log each step, and give the log writer at most a second. A watchdog ends the
//! process if a step hangs, so the node always exits within `shutdown_timeout`.
use std::cell::Cell;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use actix_rt::ArbiterHandle;
use actix_web::{web, App, HttpServer};
use slog::{error, info, warn, Logger};

use crate::cluster::actor::{ClusterActor, Leave};
use crate::cluster::membership::NodeIdentity;
use crate::cluster::secret::ClusterKeys;
use crate::cluster::state::ClusterState;
use crate::cluster::table::TableMember;
use crate::config::{AuthMode, Config, MemoryLimit, StorageBackend};
use crate::data::budget::{self, LimitSource, MemoryBudget};
use crate::data::DataPlane;
use crate::http;
use crate::net::auth::Verifier;
use crate::net::gate::{CloseAll, ConnectionGateActor, OpenConnections};
use crate::net::NodeContext;
use crate::queue::actor::StripeActor;
use crate::queue::{EventQueue, StripeHandle};
use crate::shard::actor::{ShardActor, ShardLinks, ShardRecovery, ShardSettings};
use crate::shard::catalog::MapCatalog;
use crate::shard::fnv::partition_of;
use crate::shard::router::{partitions_of, shard_of_partition, Shards};
use crate::storage::actor::{Flush, StorageActor};
use crate::storage::redb::RedbBackend;
use crate::storage::{Mutation, Recovered};
use crate::telemetry::lag::LagProbe;
use crate::telemetry::logging::{err_kv, Logging};
use crate::telemetry::mailbox::{DeadLetters, Mailbox};
use crate::telemetry::metrics::{Metrics, MetricsActor};

/// A reason the node could not start (or run). `main` prints it as one line.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("data dir {path} is not usable: {message}")]
    DataDir { path: PathBuf, message: String },
    #[error("cannot open log destination {dest}: {source}")]
    LogDest {
        dest: String,
        source: std::io::Error,
    },
    #[error("storage: {0}")]
    Storage(#[from] crate::storage::OpenError),
    #[error("metrics registry: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("runtime: {0}")]
    Runtime(#[from] std::io::Error),
    #[error("cluster TLS: {0}")]
    ClusterTls(#[from] crate::cluster::tls::TlsError),
}

impl StartError {
    /// Stable, printed with the exit line: what went wrong, for a script or an alert to match.
    pub fn code(&self) -> &'static str {
        match self {
            StartError::Config(_) => "config",
            StartError::Bind { .. } => "bind",
            StartError::DataDir { .. } => "data_dir",
            StartError::LogDest { .. } => "log_dest",
            StartError::Storage(e) => e.code(),
            StartError::Metrics(_) => "metrics_registry",
            StartError::Runtime(_) => "runtime",
            StartError::ClusterTls(e) => e.code(),
        }
    }
}

/// How long client connections get to close after the 1001 before the server stops anyway.
const CLIENT_CLOSE_GRACE: Duration = Duration::from_secs(2);
/// Shutdown time kept for leaving the cluster and flushing storage after the handover.
const LEAVE_RESERVE: Duration = Duration::from_secs(2);
/// How long a node that left still answers its peers: their forwards routed here before they
/// heard of the leave.
const LEAVE_LINGER: Duration = Duration::from_millis(500);

/// The node id: the configured one, or the one kept in the data dir (written on first start).
/// With the memory backend nothing is written and an unset id is generated per run.
/// With the durable backend the data dir is checked (created, writable) even when the id is
/// configured: an unusable data dir must stop the node at start, not at its first write.
pub fn resolve_node_id(config: &Config) -> Result<String, StartError> {
    if config.storage_backend == StorageBackend::Memory {
        return Ok(config.node_id.clone().unwrap_or_else(generate_node_id));
    }
    let dir = &config.data_dir;
    let data_dir_error = |message: String| StartError::DataDir {
        path: dir.clone(),
        message,
    };
    std::fs::create_dir_all(dir).map_err(|e| data_dir_error(e.to_string()))?;
    let probe = dir.join(".write-probe");
    write_atomically(&probe, b"ok")
        .and_then(|()| std::fs::remove_file(&probe))
        .map_err(|e| data_dir_error(format!("not writable: {e}")))?;
    if let Some(id) = &config.node_id {
        return Ok(id.clone());
    }
    let path = dir.join("node_id");
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let id = text.trim().to_owned();
            crate::config::validate_node_id(&id).map_err(|m| {
                data_dir_error(format!("{} holds a bad node id: {m}", path.display()))
            })?;
            Ok(id)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let id = generate_node_id();
            write_atomically(&path, id.as_bytes()).map_err(|e| data_dir_error(e.to_string()))?;
            Ok(id)
        }
        Err(e) => Err(data_dir_error(format!(
            "cannot read {}: {e}",
            path.display()
        ))),
    }
}

fn generate_node_id() -> String {
    let uuid = uuid::Uuid::new_v4().simple().to_string();
    format!("node-{}", &uuid[..12])
}

/// Write-then-rename, so a crash mid-write never leaves a half-written id behind.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Runs the node until a signal stops it. Takes ownership of logging to finish it last.
pub fn run(config: Config, logging: Logging, node_id: String) -> Result<(), StartError> {
    let config = Arc::new(config);
    let result = actix_rt::System::new().block_on(serve(config, &logging, node_id));
    if let Err(e) = &result {
        // The PORT line may never come; release held-back lines so the failure is explained.
        logging.port_line_printed();
        error!(logging.root, "node failed"; "err" => err_kv("start_failed", e));
    }
    logging.finish(Duration::from_secs(1));
    result
}

async fn serve(config: Arc<Config>, logging: &Logging, node_id: String) -> Result<(), StartError> {
    let log = logging.root.clone();
    info!(log, "node starting";
        "version" => env!("CARGO_PKG_VERSION"),
        "port" => config.port, "host" => %config.host, "metricsPort" => config.metrics_port,
        "clusterPort" => config.cluster_port, "seedNodes" => config.seed_nodes.join(","),
        "storage" => %config.storage_backend, "dataDir" => %config.data_dir.display(),
        "auth" => ?config.auth, "logLevel" => %config.log_level, "logDest" => %config.log_dest,
        "workers" => config.workers, "reportIntervalMs" => config.report_interval.as_millis() as u64,
        "actorTelemetry" => config.actor_telemetry,
        "connectionRate" => config.connection_rate,
        "maxPendingConnections" => config.max_pending_connections,
        "maxFrameBytes" => config.max_frame_bytes);
    raise_open_files_limit(&log);

    let verifier = match &config.auth {
        AuthMode::Jwt { secret } => Some(
            Verifier::new(
                secret,
                config.jwt_issuer.as_deref(),
                config.jwt_audience.as_deref(),
            )
            .map_err(StartError::Config)?,
        ),
        AuthMode::Off { explicit } => {
            if !explicit {
                warn!(log, "authentication is off: no JWT_SECRET is set, so the node only listens on loopback";
                    "host" => %config.host);
            }
            None
        }
    };

    // Everything that can fail happens before the first actor starts: a node either starts
    // whole or exits with one line, never half-started.
    let registry = Metrics::new(config.map_label_cap, config.summary_window)?
        .with_peer_error_reasons(&crate::cluster::peer_error::PeerError::codes());
    let backend = open_backend(&config, &log)?;
    let client_addr = SocketAddr::new(config.host, config.port);
    let client_listener = bind(client_addr)?;
    let metrics_listener = config
        .metrics_port
        .map(|p| bind(SocketAddr::new(config.host, p)))
        .transpose()?;
    let cluster_host = config.cluster_host();
    if config.cluster_secret.is_none() && !cluster_host.is_loopback() {
        warn!(log, "cluster peers are not authenticated: --cluster-insecure lets anyone who reaches the cluster port join";
            "host" => %cluster_host);
    } else if cluster_host != config.host {
        warn!(log, "cluster port on loopback only: no cluster secret is set (TOPGUN_CLUSTER_SECRET, or --cluster-insecure)";
            "host" => %cluster_host);
    }
    let cluster_tls = config
        .cluster_tls
        .as_ref()
        .map(crate::cluster::tls::ClusterTls::load)
        .transpose()?;
    if let Some(files) = &config.cluster_tls {
        info!(log, "cluster links use mutual TLS: peers need a certificate of the cluster CA";
            "cert" => %files.cert.display(), "ca" => %files.ca.display());
    }
    let (cluster_socket, peer_listener) =
        bind_cluster(SocketAddr::new(cluster_host, config.cluster_port))?;
    let cluster_port = cluster_socket
        .local_addr()
        .map_or(config.cluster_port, |a| a.port());
    let public_url = crate::cluster::advertised_url(
        config.advertise_host.as_deref(),
        config.host,
        client_listener
            .local_addr()
            .map_or(config.port, |a| a.port()),
    );
    let cluster_identity = NodeIdentity {
        node_id: node_id.clone(),
        addr: advertised_cluster_addr(&config, cluster_port)?,
        generation: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
        ws_url: public_url.clone(),
    };
    let cluster_state = Arc::new(ClusterState::new(
        TableMember {
            node_id: node_id.clone(),
            peer_addr: cluster_identity.addr,
            generation: cluster_identity.generation,
            ws_url: public_url.clone(),
        },
        config.write_ack,
        config.cluster_timeout,
        usize::from(config.backup_count),
        config.placement,
        config.cluster_secret.as_ref().map(|s| {
            ClusterKeys::new(
                s.current.as_bytes(),
                s.previous.as_ref().map(String::as_bytes),
            )
        }),
        cluster_tls,
    ));

    let timed = config.actor_telemetry;
    let write_slots = Arc::new(crate::data::slots::BatchSlots::new());
    let metrics_arbiter = Arbiter::new();
    let budget = Arc::new(MemoryBudget::new(memory_budget(&config, &log)));
    let maps = Arc::new(MapCatalog::new(config.max_maps));
    // Node-wide: every mailbox counts what it could not deliver here (see `DeadLetters`).
    let dead_letters = Arc::new(DeadLetters::default());
    let metrics_actor = MetricsActor::new(
        registry,
        &log,
        logging.dropped.clone(),
        config.report_interval,
        timed,
        dead_letters.clone(),
    )
    .sample_pending_batches(write_slots.gauge())
    .sample_limits(budget.clone(), maps.clone());
    let tap = metrics_actor.tap();
    let metrics = Mailbox::new(
        MetricsActor::start_in_arbiter(&metrics_arbiter.handle(), move |_| metrics_actor),
        tap,
        dead_letters,
    );
    {
        let (m, every) = (metrics.clone(), config.report_interval);
        LagProbe::start_in_arbiter(&metrics_arbiter.handle(), move |_| {
            LagProbe::new("metrics", m, every)
        });
    }
    let gate_actor = ConnectionGateActor::new(
        config.connection_rate,
        config.max_pending_connections,
        &log,
        metrics.clone(),
        config.report_interval,
        timed,
    );
    let tap = gate_actor.stats().tap();
    // The gate's address is needed by the HTTP factories, but the actor itself starts only
    // once both ports are bound: an actor started on this arbiter and then dropped unpolled by
    // an early return (a busy port) would run `started` during runtime teardown and panic.
    let gate_ctx = Context::<ConnectionGateActor>::new();
    let gate = Mailbox::new(gate_ctx.address(), tap, metrics.dead_letters());

    let (storage, recovered) = start_storage(&config, &log, &metrics, backend);
    // One data thread per shard; the event-queue stripes live on them too.
    let data_threads: Vec<ArbiterHandle> = (0..config.shards)
        .map(|_| Arbiter::new().handle())
        .collect();
    let queue = start_event_queue(&config, &log, &metrics, &data_threads);
    let links = ShardLinks {
        queue: queue.clone(),
        metrics: metrics.clone(),
        storage: storage.clone(),
        catalog: maps.clone(),
    };
    let shards = start_shards(&config, &node_id, links, &log, recovered, &data_threads);
    info!(log, "data plane started";
        "shards" => shards.len(), "stripes" => queue.stripes.len(),
        "eventQueueCapacity" => queue.capacity());

    let ready = Arc::new(AtomicBool::new(false));
    let data_plane = Arc::new(DataPlane {
        config: config.clone(),
        node_id: node_id.clone(),
        metrics: metrics.clone(),
        log: log.clone(),
        shards,
        queue,
        write_slots,
        cluster: cluster_state,
        budget,
        maps,
    });
    let node = Arc::new(NodeContext {
        data: data_plane.clone(),
        verifier,
        gate: gate.clone(),
        log_level: logging.level_handle(),
        ready: ready.clone(),
        public_url,
    });

    let with_metrics = config.metrics_port.is_none();
    let data = web::Data::new(node.clone());
    let worker_number = Arc::new(AtomicUsize::new(0));
    let max_body = config.max_frame_bytes;
    let client_server = {
        let (data, metrics, every) = (data.clone(), metrics.clone(), config.report_interval);
        HttpServer::new(move || {
            start_worker_probe(&worker_number, &metrics, every);
            App::new()
                .app_data(data.clone())
                // POST /sync bodies may be as large as a frame (protocol.md 1.4).
                .app_data(web::PayloadConfig::new(max_body))
                .configure(|c| http::client_routes(c, with_metrics))
        })
        .workers(config.workers)
        .disable_signals()
        .shutdown_timeout(3)
        .listen(client_listener)?
    };
    let port = client_server
        .addrs()
        .first()
        .map_or(config.port, |a| a.port());

    let metrics_server = match metrics_listener {
        None => None,
        Some(listener) => {
            let data = data.clone();
            let server = HttpServer::new(move || {
                App::new()
                    .app_data(data.clone())
                    .configure(http::metrics_routes)
            })
            .workers(1)
            .disable_signals()
            .shutdown_timeout(1)
            .listen(listener)?;
            Some(server)
        }
    };
    let bound_metrics_port = metrics_server
        .as_ref()
        .and_then(|s| s.addrs().first().map(|a| a.port()));

    // Both ports are bound: nothing can fail half-started any more.
    gate_ctx.run(gate_actor);
    // Cluster clients route by the partition map: every new table is pushed to them.
    {
        let mut changes = data_plane.cluster.table_changes();
        let gate = gate.clone();
        actix_rt::spawn(async move {
            while changes.changed().await.is_ok() {
                gate.do_send(crate::net::gate::PartitionTableChanged);
            }
        });
    }
    // Partitioned placement: live events of other nodes' partitions come from their holders.
    crate::cluster::live::start(&data_plane);
    let cluster = {
        let actor = ClusterActor::new(
            cluster_identity,
            cluster_socket,
            config.seed_nodes.clone(),
            config.cluster_probe,
            &log,
            metrics.clone(),
            config.report_interval,
            timed,
            data_plane.clone(),
        );
        let tap = actor.tap();
        Mailbox::new(actor.start(), tap, metrics.dead_letters())
    };
    match tokio::net::TcpListener::from_std(peer_listener) {
        Ok(listener) => {
            actix_rt::spawn(crate::cluster::peer::accept_peers(
                listener,
                data_plane.clone(),
                cluster.addr.clone(),
            ));
        }
        Err(e) => {
            return Err(StartError::Bind {
                addr: SocketAddr::new(cluster_host, cluster_port),
                source: e,
            })
        }
    }
    LagProbe::new("main", metrics.clone(), config.report_interval).start();

    // The contract with scripts: exactly `PORT=<n>`, flushed, before any log line on stdout.
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "PORT={port}");
        if config.cluster_port == 0 {
            let _ = writeln!(out, "CLUSTER_PORT={cluster_port}");
        }
        if config.metrics_port == Some(0) {
            if let Some(p) = bound_metrics_port {
                let _ = writeln!(out, "METRICS_PORT={p}");
            }
        }
        let _ = out.flush();
    }
    logging.port_line_printed();

    let client_server = client_server.run();
    let client_handle = client_server.handle();
    actix_rt::spawn(client_server);
    let metrics_handle = metrics_server.map(|s| {
        let s = s.run();
        let h = s.handle();
        actix_rt::spawn(s);
        h
    });
    ready.store(true, Ordering::Release);
    info!(log, "listening"; "port" => port, "host" => %config.host,
        "metricsPort" => bound_metrics_port.unwrap_or(port));

    let signal = wait_for_signal().await?;
    let started = Instant::now();
    info!(log, "shutdown started"; "signal" => signal);
    start_watchdog(config.shutdown_timeout, log.clone());
    ready.store(false, Ordering::Release);

    let told = gate.send(CloseAll).await.unwrap_or(0);
    let deadline = Instant::now() + CLIENT_CLOSE_GRACE;
    while Instant::now() < deadline {
        match gate.send(OpenConnections).await {
            Ok(0) | Err(_) => break,
            Ok(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    let left = gate.send(OpenConnections).await.unwrap_or(0);
    info!(log, "clients closed"; "told" => told, "stillOpen" => left);

    client_handle.stop(true).await;
    if let Some(h) = metrics_handle {
        h.stop(true).await;
    }
    info!(log, "http server stopped");
    if data_plane.cluster.table().members().len() > 1 {
        // The backups of this node's partitions become their owners: they get what they
        // lack of it first, so that nothing this node acknowledged depends on a copy in flight.
        let budget = config
            .shutdown_timeout
            .saturating_sub(CLIENT_CLOSE_GRACE + LEAVE_RESERVE);
        let h = crate::cluster::leaving::hand_over(&data_plane, budget).await;
        match &h.failure {
            None => info!(log, "partitions handed over before leaving";
                "compared" => h.compared, "sent" => h.sent, "records" => h.records,
                "tookMs" => h.took.as_millis() as u64),
            Some(e) => warn!(log, "handover before leaving incomplete: leaving anyway";
                "compared" => h.compared, "sent" => h.sent, "records" => h.records,
                "tookMs" => h.took.as_millis() as u64, "err" => err_kv("handover", e)),
        }
        // Then the others take over at once, not after failure detection. Forwards they
        // routed here before they heard it are still answered while the node lingers.
        let _ = tokio::time::timeout(Duration::from_secs(1), cluster.send(Leave)).await;
        tokio::time::sleep(LEAVE_LINGER).await;
    } else {
        let _ = tokio::time::timeout(Duration::from_secs(1), cluster.send(Leave)).await;
    }
    if let Some(storage) = &storage {
        let _ = storage.send(Flush).await;
        info!(log, "storage flushed");
    }
    info!(log, "shutdown complete"; "tookMs" => started.elapsed().as_millis() as u64);
    Ok(())
}

/// Stripes of the event queue, on the shards' threads (stripe i on data thread i % shards): a
/// shard hands its events to a stripe without waking another thread, and a 2-core machine is
/// not asked to juggle a thread per stripe.
/// The budget's limit in bytes (0: none), logged with where it came from.
fn memory_budget(config: &Config, log: &Logger) -> u64 {
    let found = match config.max_memory {
        MemoryLimit::Off => None,
        MemoryLimit::Bytes(n) => Some((n, LimitSource::Configured)),
        MemoryLimit::Auto => budget::default_limit(),
    };
    match found {
        Some((limit, source)) => {
            info!(log, "memory budget"; "budgetBytes" => limit, "source" => source.as_str(),
                "resumePercent" => budget::RESUME_PERCENT);
            limit
        }
        None => {
            info!(log, "memory budget: none"; "source" => match config.max_memory {
                MemoryLimit::Off => "configured",
                _ => "unknown machine memory",
            });
            0
        }
    }
}

fn start_event_queue(
    config: &Config,
    log: &Logger,
    metrics: &Mailbox<MetricsActor>,
    data_threads: &[ArbiterHandle],
) -> EventQueue {
    let n = config.event_queue_stripes;
    let per_stripe = config.event_queue_capacity / n;
    let cross = Arc::new(crate::queue::cross::CrossNode::default());
    let partitioned = config.placement == crate::config::Placement::Partitioned;
    let stripes: Vec<StripeHandle> = (0..n)
        .map(|i| {
            let arbiter = &data_threads[i % data_threads.len()];
            let actor = StripeActor::new(
                i,
                n,
                per_stripe,
                log,
                metrics.clone(),
                config.report_interval,
                config.actor_telemetry,
                cross.clone(),
                partitioned,
            );
            let queued = actor.queued_counter();
            let tap = actor.tap();
            let addr = StripeActor::start_in_arbiter(arbiter, move |_| actor);
            let mailbox = Mailbox::new(addr, tap, metrics.dead_letters());
            StripeHandle::new(mailbox, queued, per_stripe)
        })
        .collect();
    EventQueue {
        stripes: stripes.into(),
        cross,
    }
}

/// A listening socket with SO_REUSEADDR (a restart right after a kill binds at once) and a
/// backlog that absorbs a connection storm while the rate limiter decides.
fn bind(addr: SocketAddr) -> Result<std::net::TcpListener, StartError> {
    use socket2::{Domain, Protocol, Socket, Type};
    let err = |source| StartError::Bind { addr, source };
    let socket =
        Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP)).map_err(err)?;
    socket.set_reuse_address(true).map_err(err)?;
    socket.bind(&addr.into()).map_err(err)?;
    socket.listen(2048).map_err(err)?;
    socket.set_nonblocking(true).map_err(err)?;
    Ok(socket.into())
}

/// The cluster port, bound before any actor starts (a busy port stops the node whole): UDP
/// for membership and TCP, on the same number, for the node-to-node transport. With port 0
/// the OS picks the UDP port, and a few picks are tried until TCP is free on it too.
fn bind_cluster(
    addr: SocketAddr,
) -> Result<(tokio::net::UdpSocket, std::net::TcpListener), StartError> {
    let udp = |addr: SocketAddr| -> Result<tokio::net::UdpSocket, StartError> {
        let err = |source| StartError::Bind { addr, source };
        let socket = std::net::UdpSocket::bind(addr).map_err(err)?;
        socket.set_nonblocking(true).map_err(err)?;
        tokio::net::UdpSocket::from_std(socket).map_err(err)
    };
    if addr.port() != 0 {
        return Ok((udp(addr)?, bind(addr)?));
    }
    let mut last = None;
    for _ in 0..20 {
        let socket = udp(addr)?;
        let port = socket.local_addr().map_or(0, |a| a.port());
        match bind(SocketAddr::new(addr.ip(), port)) {
            Ok(listener) => return Ok((socket, listener)),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| StartError::Config("no free cluster port".into())))
}

/// Where peers reach this node's cluster port: `--advertise-host` (an IP or a name resolved
/// now), else the bind address when it is specific, else the host name resolved.
fn advertised_cluster_addr(config: &Config, port: u16) -> Result<SocketAddr, StartError> {
    use std::net::ToSocketAddrs;
    let host = match &config.advertise_host {
        Some(h) => h.clone(),
        None if !config.cluster_host().is_unspecified() => {
            return Ok(SocketAddr::new(config.cluster_host(), port))
        }
        None => hostname::get()
            .map(|h| h.to_string_lossy().into_owned())
            .map_err(|e| StartError::Config(format!("cannot read the host name: {e}")))?,
    };
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    (host.as_str(), port)
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| {
            StartError::Config(format!(
                "advertise host {host:?} does not resolve (set --advertise-host)"
            ))
        })
}

/// Opens the configured backend and reads it back (`None` for memory).
fn open_backend(
    config: &Config,
    log: &Logger,
) -> Result<Option<(RedbBackend, Recovered)>, StartError> {
    if config.storage_backend == StorageBackend::Memory {
        info!(log, "storage opened"; "backend" => "memory", "lwwRecords" => 0);
        return Ok(None);
    }
    let t0 = Instant::now();
    let (backend, recovered) = RedbBackend::open(&config.data_dir)?;
    info!(log, "storage opened"; "backend" => "redb", "dataDir" => %config.data_dir.display(),
        "lwwRecords" => recovered.lww.len(), "orRecords" => recovered.or_records.len(),
        "orRemovedTags" => recovered.or_removed.len(),
        "hlc" => recovered.hlc.as_ref().map(|t| t.to_string()),
        "tookMs" => t0.elapsed().as_millis() as u64);
    Ok(Some((backend, recovered)))
}

/// With redb, the storage actor on its own arbiter. Memory: no actor, shards acknowledge as
/// soon as they applied.
fn start_storage(
    config: &Config,
    log: &Logger,
    metrics: &Mailbox<MetricsActor>,
    backend: Option<(RedbBackend, Recovered)>,
) -> (Option<Mailbox<StorageActor>>, Recovered) {
    let Some((backend, recovered)) = backend else {
        return (None, Recovered::default());
    };
    let actor = StorageActor::new(
        Box::new(backend),
        config.storage_group_max_records,
        config.storage_group_max_delay,
        log,
        metrics.clone(),
        config.report_interval,
        config.actor_telemetry,
    );
    let tap = actor.tap();
    let arbiter = Arbiter::new();
    let addr = StorageActor::start_in_arbiter(&arbiter.handle(), move |_| actor);
    let (m, every) = (metrics.clone(), config.report_interval);
    LagProbe::start_in_arbiter(&arbiter.handle(), move |_| {
        LagProbe::new("storage", m, every)
    });
    let mailbox = Mailbox::new(addr, tap, metrics.dead_letters());
    (Some(mailbox), recovered)
}

/// Splits what storage held by the shard owning each key.
fn recovery_per_shard(recovered: Recovered, shards: usize) -> Vec<ShardRecovery> {
    let mut out: Vec<ShardRecovery> = (0..shards)
        .map(|_| ShardRecovery {
            mutations: Vec::new(),
            hlc: recovered.hlc.clone(),
        })
        .collect();
    let owner = |key: &str| shard_of_partition(partition_of(key), shards);
    for (map, key, record) in recovered.lww {
        out[owner(&key)]
            .mutations
            .push(Mutation::Lww { map, key, record });
    }
    for (map, key, record) in recovered.or_records {
        out[owner(&key)]
            .mutations
            .push(Mutation::OrAdd { map, key, record });
    }
    for (map, key, tag) in recovered.or_removed {
        out[owner(&key)]
            .mutations
            .push(Mutation::OrRemove { map, key, tag });
    }
    out
}

/// Shards, each on its own arbiter (thread) with its lag probe.
fn start_shards(
    config: &Config,
    node_id: &str,
    links: ShardLinks,
    log: &Logger,
    recovered: Recovered,
    data_threads: &[ArbiterHandle],
) -> Shards {
    let n = data_threads.len();
    let mut recovery = recovery_per_shard(recovered, n).into_iter();
    let metrics = &links.metrics;
    let settings = ShardSettings {
        max_drift_ms: config.max_drift_ms,
        tombstone_max_age_ms: config.tombstone_max_age.as_millis() as u64,
        sweep_interval: config.sweep_interval,
        report_interval: config.report_interval,
        timed: config.actor_telemetry,
    };
    let mailboxes: Vec<Mailbox<ShardActor>> = (0..n)
        .map(|i| {
            let arbiter = &data_threads[i];
            let actor = ShardActor::new(
                i as u16,
                partitions_of(i, n),
                node_id,
                settings.clone(),
                links.clone(),
                log,
                recovery.next().unwrap_or_default(),
            );
            let tap = actor.tap();
            let addr = ShardActor::start_in_arbiter(arbiter, move |_| actor);
            let (m, every) = (metrics.clone(), config.report_interval);
            // `shard-i` is the data thread: shard i and the stripes placed on it.
            LagProbe::start_in_arbiter(arbiter, move |_| {
                LagProbe::new(format!("shard-{i}"), m, every)
            });
            Mailbox::new(addr, tap, metrics.dead_letters())
        })
        .collect();
    Shards {
        mailboxes: mailboxes.into(),
    }
}

/// Each HTTP worker thread is an arbiter hosting connection actors; give it a lag probe once.
fn start_worker_probe(counter: &AtomicUsize, metrics: &Mailbox<MetricsActor>, every: Duration) {
    thread_local! {
        static PROBED: Cell<bool> = const { Cell::new(false) };
    }
    PROBED.with(|probed| {
        if !probed.get() {
            probed.set(true);
            let n = counter.fetch_add(1, Ordering::Relaxed);
            LagProbe::new(format!("http-{n}"), metrics.clone(), every).start();
        }
    });
}

async fn wait_for_signal() -> Result<&'static str, StartError> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    })
}

/// If a shutdown step hangs, the process still ends: the operator was promised an exit.
fn start_watchdog(limit: Duration, log: Logger) {
    let _ = std::thread::Builder::new()
        .name("topgun-shutdown-watchdog".into())
        .spawn(move || {
            std::thread::sleep(limit);
            error!(log, "shutdown timed out; exiting"; "limitMs" => limit.as_millis() as u64);
            std::thread::sleep(Duration::from_millis(200));
            std::process::exit(1);
        });
}

/// Many clients means many sockets: take the hard limit up front.
fn raise_open_files_limit(log: &Logger) {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => info!(log, "open files limit raised"; "limit" => limit),
        Err(e) => warn!(log, "cannot raise the open files limit"; "err" => err_kv("rlimit", e)),
    }
}
