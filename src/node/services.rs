//! Start steps around the data plane: what the node announces, client auth, the metrics
//! actor, the connection gate, the HTTP servers and the cluster.
use std::cell::Cell;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use actix_http::body::MessageBody;
use actix_http::{HttpService, KeepAlive, Request, TlsAcceptorConfig};
use actix_service::{
    fn_service, map_config, IntoServiceFactory, Service, ServiceFactory, ServiceFactoryExt,
};
use actix_tls::accept::TlsError as AcceptError;
use actix_web::dev::{AppConfig, Server, ServerHandle};
use actix_web::{web, App, HttpServer};
use slog::Logger;

use super::events as ev;
use super::ports::advertised_cluster_addr;
use super::ports::Ports;
use super::StartError;
use crate::cluster::actor::ClusterActor;
use crate::cluster::membership::NodeIdentity;
use crate::cluster::plane::DataPlane;
use crate::cluster::secret::ClusterKeys;
use crate::cluster::state::ClusterState;
use crate::cluster::table::TableMember;
use crate::cluster::tls::ClusterTls;
use crate::config::{AuthMode, Config, KeySource};
use crate::data::budget::MemoryBudget;
use crate::data::slots::BatchSlots;
use crate::http;
use crate::net::auth::Verifier;
use crate::net::gate::{ConnectionGateActor, PartitionTableChanged};
use crate::net::jwks::{self, KeysSource};
use crate::net::keyset::{KeySet, KeyStore};
use crate::net::socket;
use crate::net::tls::{self, ClientTls};
use crate::net::NodeContext;
use crate::shard::catalog::MapCatalog;
use crate::telemetry::event::{ErrField, Event, Shown};
use crate::telemetry::lag::LagProbe;
use crate::telemetry::logging::Logging;
use crate::telemetry::mailbox::{DeadLetters, Mailbox};
use crate::telemetry::metrics::{Metrics, MetricsActor};
use crate::telemetry::report::{ActorKind, ActorStats};

/// The effective configuration, one line (never a secret: see `AuthMode`'s Debug).
pub(super) fn announce(config: &Config, log: &Logger) {
    ev::NodeStarting {
        version: env!("CARGO_PKG_VERSION"),
        port: config.port,
        host: Shown(&config.host),
        metrics_port: config.metrics_port,
        cluster_port: config.cluster_port,
        seed_nodes: config.seed_nodes.join(","),
        storage: Shown(&config.storage_backend),
        data_dir: Shown(&config.data_dir.display()),
        auth: format!("{:?}", config.auth),
        log_level: Shown(&config.log_level),
        log_dest: Shown(&config.log_dest),
        workers: config.workers,
        report_interval_ms: config.report_interval.as_millis() as u64,
        actor_telemetry: config.actor_telemetry,
        connection_rate: config.connection_rate,
        max_pending_connections: config.max_pending_connections,
        max_frame_bytes: config.max_frame_bytes,
        shutdown_timeout_ms: config.shutdown_timeout.as_millis() as u64,
        drain_delay_ms: config.drain_delay.as_millis() as u64,
        drain_spread_ms: config.drain_spread.as_millis() as u64,
    }
    .emit(log);
}

/// Many clients means many sockets: take the hard limit up front.
pub(super) fn raise_open_files_limit(log: &Logger) {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => ev::OpenFilesRaised { limit }.emit(log),
        Err(e) => ev::OpenFilesNotRaised {
            err: ErrField::new("rlimit", e),
        }
        .emit(log),
    }
}

/// How clients authenticate, settled before anything binds.
pub(super) enum ClientAuth {
    Off,
    /// `JWT_SECRET`.
    Secret(Verifier),
    /// `--jwt-keys-file` or `--jwks-url`, loaded.
    Keys {
        source: Arc<KeysSource>,
        set: KeySet,
    },
}

/// Checks the secret, or reads the keys of `--jwt-keys-file` or `--jwks-url` (a file that
/// cannot be read, an IdP that cannot be reached, a set with no usable key: the node does not
/// start, exit 2).
pub(super) async fn client_auth(config: &Config, log: &Logger) -> Result<ClientAuth, StartError> {
    match &config.auth {
        AuthMode::Jwt { secret } => Verifier::new(
            secret,
            config.jwt_issuer.as_deref(),
            config.jwt_audience.as_deref(),
        )
        .map(ClientAuth::Secret)
        .map_err(StartError::Config),
        AuthMode::Keys(settings) => {
            let source = Arc::new(KeysSource::new(settings)?);
            let reading = source.clone();
            // A fetch blocks for up to its timeout: off the runtime's thread.
            let set = actix_rt::task::spawn_blocking(move || reading.load())
                .await
                .map_err(|e| StartError::Runtime(std::io::Error::other(e)))??;
            let (every, url) = match settings {
                KeySource::File {
                    reload_interval, ..
                } => (*reload_interval, None),
                KeySource::Url(jwks) => (jwks.refresh_interval, Some(jwks.url.as_str())),
            };
            ev::JwtKeysOn {
                source: Shown(&source.describe()),
                keys: set.len(),
                kids: jwks::kids_line(&set),
                reload_interval_ms: every.map_or(0, |d| d.as_millis() as u64),
            }
            .emit(log);
            jwks::log_skipped(&set, log);
            if let Some(url) = url.filter(|u| plain_http_beyond_loopback(u)) {
                ev::JwksPlainHttp {
                    url: Shown(&crate::config::shown_url(url)),
                }
                .emit(log);
            }
            Ok(ClientAuth::Keys { source, set })
        }
        AuthMode::Off { explicit } => {
            if !explicit {
                ev::AuthOff {
                    host: Shown(&config.host),
                }
                .emit(log);
            }
            Ok(ClientAuth::Off)
        }
    }
}

/// `http://` to anything but this machine: whoever answers in the IdP's place can sign tokens.
fn plain_http_beyond_loopback(url: &str) -> bool {
    let Some(rest) = url
        .get(..7)
        .filter(|s| s.eq_ignore_ascii_case("http://"))
        .and_then(|_| url.get(7..))
    else {
        return false;
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    !(host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback()))
}

/// The verifier of the clients' AUTH (`None`: authentication is off) and, for keys from a
/// file or URL, the actor that keeps them current. Like the gate, the actor's address exists
/// now (the verifier asks it for a fresh set on an unknown `kid`) and it runs once both ports
/// are bound ([`KeysReloader::run`]).
pub(super) fn verifier(
    config: &Config,
    log: &Logger,
    metrics: &Mailbox<MetricsActor>,
    auth: ClientAuth,
) -> (Option<Verifier>, Option<KeysReloader>) {
    let (source, set) = match auth {
        ClientAuth::Off => return (None, None),
        ClientAuth::Secret(verifier) => return (Some(verifier), None),
        ClientAuth::Keys { source, set } => (source, set),
    };
    let (every, min_refresh) = match &config.auth {
        AuthMode::Keys(KeySource::Url(jwks)) => (jwks.refresh_interval, jwks.min_refresh_interval),
        AuthMode::Keys(KeySource::File {
            reload_interval, ..
        }) => (*reload_interval, Duration::MAX),
        _ => (None, Duration::MAX),
    };
    let store = Arc::new(KeyStore::new(set));
    let stats = ActorStats::new(ActorKind::Keys, config.actor_telemetry);
    let ctx = Context::<jwks::KeysActor>::new();
    let mailbox = Mailbox::new(ctx.address(), stats.tap(), metrics.dead_letters());
    let refresher = source.is_url().then(|| mailbox.clone());
    let verifier = Verifier::with_keys(
        store.clone(),
        config.jwt_issuer.as_deref(),
        config.jwt_audience.as_deref(),
        refresher,
    );
    let actor = jwks::KeysActor::new(
        source,
        store,
        log,
        metrics.clone(),
        stats,
        jwks::ReloadTimes {
            every,
            min_refresh,
            report: config.report_interval,
        },
    );
    (
        Some(verifier),
        Some(KeysReloader {
            actor,
            ctx,
            mailbox,
        }),
    )
}

/// The keys' reloader, its address handed out before it runs.
pub(super) struct KeysReloader {
    actor: jwks::KeysActor,
    ctx: Context<jwks::KeysActor>,
    mailbox: Mailbox<jwks::KeysActor>,
}

impl KeysReloader {
    pub fn run(self) -> Mailbox<jwks::KeysActor> {
        self.ctx.run(self.actor);
        self.mailbox
    }
}

/// The registry with every label value known up front, so each series exists at 0.
pub(super) fn registry(config: &Config) -> Result<Metrics, StartError> {
    Ok(Metrics::new(config.map_label_cap, config.summary_window)?
        .with_peer_error_reasons(&crate::cluster::peer_error::PeerError::codes())
        .with_events(ev::every_event()))
}

/// Who can reach the cluster port, said once at start.
pub(super) fn warn_cluster_exposure(config: &Config, log: &Logger) {
    let host = config.cluster_host();
    if config.cluster_secret.is_none() && !host.is_loopback() {
        ev::ClusterInsecure { host: Shown(&host) }.emit(log);
    } else if host != config.host {
        ev::ClusterLoopbackOnly { host: Shown(&host) }.emit(log);
    }
    if let Some(files) = &config.cluster_tls {
        ev::ClusterTlsOn {
            cert: Shown(&files.cert.display()),
            ca: Shown(&files.ca.display()),
        }
        .emit(log);
    }
}

/// This node as its peers and clients will know it.
pub(super) fn cluster_identity(
    config: &Config,
    node_id: &str,
    ports: &Ports,
) -> Result<NodeIdentity, StartError> {
    let ws_url = crate::cluster::advertised_url(
        config.advertise_host.as_deref(),
        config.host,
        ports.client.local_addr().map_or(config.port, |a| a.port()),
    );
    Ok(NodeIdentity {
        node_id: node_id.to_owned(),
        addr: advertised_cluster_addr(config, ports.cluster.port())?,
        generation: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
        ws_url,
    })
}

pub(super) fn cluster_state(
    config: &Config,
    identity: &NodeIdentity,
    tls: Option<ClusterTls>,
) -> Arc<ClusterState> {
    Arc::new(ClusterState::new(
        TableMember {
            node_id: identity.node_id.clone(),
            peer_addr: identity.addr,
            generation: identity.generation,
            ws_url: identity.ws_url.clone(),
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
        tls,
    ))
}

/// The metrics actor on its own thread, and the shared state it samples.
pub(super) struct Telemetry {
    pub metrics: Mailbox<MetricsActor>,
    pub budget: Arc<MemoryBudget>,
    pub maps: Arc<MapCatalog>,
    pub write_slots: Arc<BatchSlots>,
}

pub(super) fn start_telemetry(
    config: &Config,
    log: &Logger,
    logging: &Logging,
    registry: Metrics,
) -> Telemetry {
    let write_slots = Arc::new(BatchSlots::new());
    let budget = Arc::new(MemoryBudget::new(super::data::memory_budget(config, log)));
    let maps = Arc::new(MapCatalog::new(config.max_maps));
    // Node-wide: every mailbox counts what it could not deliver here (see `DeadLetters`).
    let dead_letters = Arc::new(DeadLetters::default());
    let actor = MetricsActor::new(
        registry,
        log,
        logging.dropped.clone(),
        config.report_interval,
        config.actor_telemetry,
        dead_letters.clone(),
    )
    .sample_pending_batches(write_slots.gauge())
    .sample_limits(budget.clone(), maps.clone());
    let tap = actor.tap();
    let arbiter = Arbiter::new();
    let metrics = Mailbox::new(
        MetricsActor::start_in_arbiter(&arbiter.handle(), move |_| actor),
        tap,
        dead_letters,
    );
    let (m, every) = (metrics.clone(), config.report_interval);
    LagProbe::start_in_arbiter(&arbiter.handle(), move |_| {
        LagProbe::new("metrics", m, every)
    });
    Telemetry {
        metrics,
        budget,
        maps,
        write_slots,
    }
}

/// The connection gate: its address exists before the actor runs, because the HTTP factories
/// need it, but the actor starts only once both ports are bound: an actor started on this
/// arbiter and then dropped unpolled by an early return (a busy port) would run `started`
/// during runtime teardown and panic.
pub(super) struct Gate {
    actor: ConnectionGateActor,
    ctx: Context<ConnectionGateActor>,
    pub mailbox: Mailbox<ConnectionGateActor>,
}

impl Gate {
    pub fn new(config: &Config, log: &Logger, metrics: &Mailbox<MetricsActor>) -> Gate {
        let actor = ConnectionGateActor::new(
            config.connection_rate,
            config.max_pending_connections,
            log,
            metrics.clone(),
            config.report_interval,
            config.actor_telemetry,
        );
        let ctx = Context::<ConnectionGateActor>::new();
        let mailbox = Mailbox::new(ctx.address(), actor.stats().tap(), metrics.dead_letters());
        Gate {
            actor,
            ctx,
            mailbox,
        }
    }

    /// Starts the actor, and pushes every new partition table to it for cluster clients,
    /// which route by it.
    pub fn run(self, data_plane: &DataPlane) -> Mailbox<ConnectionGateActor> {
        self.ctx.run(self.actor);
        let mut changes = data_plane.cluster.table_changes();
        let gate = self.mailbox.clone();
        actix_rt::spawn(async move {
            while changes.changed().await.is_ok() {
                gate.do_send(PartitionTableChanged);
            }
        });
        self.mailbox
    }
}

/// The client server (WebSocket, `/sync`, health, and `/metrics` unless it has its own port)
/// and the metrics server, bound and built; they accept once [`HttpServers::run`] spawns them.
pub(super) struct HttpServers {
    client: Server,
    metrics: Option<Server>,
    pub port: u16,
    pub metrics_port: Option<u16>,
}

impl HttpServers {
    pub fn new(
        config: &Config,
        node: &Arc<NodeContext>,
        metrics: &Mailbox<MetricsActor>,
        client: std::net::TcpListener,
        metrics_listener: Option<std::net::TcpListener>,
        client_tls: Option<&ClientTls>,
    ) -> Result<HttpServers, StartError> {
        let with_metrics = metrics_listener.is_none();
        let port = client.local_addr().map_or(config.port, |a| a.port());
        let data = web::Data::new(node.clone());
        let worker_number = Arc::new(AtomicUsize::new(0));
        let max_body = config.max_frame_bytes;
        let client_app = {
            let (data, metrics, every) = (data.clone(), metrics.clone(), config.report_interval);
            move || {
                start_worker_probe(&worker_number, &metrics, every);
                App::new()
                    .app_data(data.clone())
                    // POST /sync bodies may be as large as a frame (protocol.md 1.4).
                    .app_data(web::PayloadConfig::new(max_body))
                    .configure(|c| http::client_routes(c, with_metrics))
            }
        };
        let send_timeout = config.client_send_timeout;
        let client = match client_tls {
            None => HttpServer::new(client_app)
                .on_connect(move |conn, _| {
                    if let Some(tcp) = conn.downcast_ref::<actix_rt::net::TcpStream>() {
                        socket::set_send_timeout(tcp, send_timeout);
                    }
                })
                .workers(config.workers)
                .disable_signals()
                .shutdown_timeout(3)
                .listen(client)?
                .run(),
            Some(tls) => tls_server(config, client, client_app, tls)?,
        };
        let metrics = match metrics_listener {
            None => None,
            Some(listener) => Some(
                HttpServer::new(move || {
                    App::new()
                        .app_data(data.clone())
                        .configure(http::metrics_routes)
                })
                .workers(1)
                .disable_signals()
                .shutdown_timeout(1)
                .listen(listener)?,
            ),
        };
        let metrics_port = metrics
            .as_ref()
            .and_then(|s| s.addrs().first().map(|a| a.port()));
        Ok(HttpServers {
            client,
            metrics: metrics.map(HttpServer::run),
            port,
            metrics_port,
        })
    }

    /// Spawns the servers; their handles stop them, client server first.
    pub fn run(self) -> Vec<ServerHandle> {
        let mut handles = Vec::with_capacity(2);
        for server in std::iter::once(self.client).chain(self.metrics) {
            handles.push(server.handle());
            actix_rt::spawn(server);
        }
        handles
    }
}

/// The client server with TLS: what `HttpServer::listen_rustls_0_23` builds, with each
/// connection screened before its handshake ([`tls::screen`]: plain text gets a 400) and
/// failed handshakes counted.
fn tls_server<F, I, S, B>(
    config: &Config,
    listener: std::net::TcpListener,
    client_app: F,
    tls: &ClientTls,
) -> Result<Server, StartError>
where
    F: Fn() -> I + Send + Clone + 'static,
    I: IntoServiceFactory<S, Request>,
    S: ServiceFactory<Request, Config = AppConfig> + 'static,
    S::Error: Into<actix_web::Error> + 'static,
    S::InitError: std::fmt::Debug,
    S::Response: Into<actix_http::Response<B>> + 'static,
    <S::Service as Service<Request>>::Future: 'static,
    S::Service: 'static,
    B: MessageBody + 'static,
{
    let server_config = (*tls.server_config).clone();
    let send_timeout = config.client_send_timeout;
    let tally = tls.tally.clone();
    let server = actix_server::Server::build()
        .workers(config.workers)
        .disable_signals()
        .shutdown_timeout(3)
        .listen("topgun-client-tls", listener, move || {
            let screened = {
                let tally = tally.clone();
                fn_service(move |io: actix_rt::net::TcpStream| {
                    socket::set_send_timeout(&io, send_timeout);
                    tls::screen(io, tally.clone())
                })
            };
            let app = client_app()
                .into_factory()
                .map_err(|err| err.into().error_response());
            // actix-web's `HttpServer` defaults.
            let https = HttpService::build()
                .keep_alive(KeepAlive::Timeout(Duration::from_secs(5)))
                .client_request_timeout(Duration::from_secs(5))
                .client_disconnect_timeout(Duration::from_secs(1))
                .finish(map_config(app, |_| AppConfig::default()))
                .rustls_0_23_with_config(
                    server_config.clone(),
                    TlsAcceptorConfig::default().handshake_timeout(tls::HANDSHAKE_TIMEOUT),
                );
            let tally = tally.clone();
            screened.and_then(https.map_err(move |e| match e {
                AcceptError::Timeout => tally.timed_out(),
                AcceptError::Tls(_) => tally.handshake_failed(),
                // A request that went wrong after the handshake: HTTP's business, not TLS's.
                AcceptError::Service(_) => {}
            }))
        })?
        .run();
    Ok(server)
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

/// The membership actor and the listener for peers' connections.
#[allow(clippy::too_many_arguments)]
pub(super) fn start_cluster(
    config: &Config,
    log: &Logger,
    metrics: &Mailbox<MetricsActor>,
    identity: NodeIdentity,
    socket: tokio::net::UdpSocket,
    peer_listener: std::net::TcpListener,
    cluster_addr: SocketAddr,
    data_plane: &Arc<DataPlane>,
) -> Result<Mailbox<ClusterActor>, StartError> {
    let listener =
        tokio::net::TcpListener::from_std(peer_listener).map_err(|source| StartError::Bind {
            addr: cluster_addr,
            source,
        })?;
    let actor = ClusterActor::new(
        identity,
        socket,
        config.seed_nodes.clone(),
        config.cluster_probe,
        log,
        metrics.clone(),
        config.report_interval,
        config.actor_telemetry,
        data_plane.clone(),
    );
    let tap = actor.tap();
    let cluster = Mailbox::new(actor.start(), tap, metrics.dead_letters());
    actix_rt::spawn(crate::cluster::peer::accept_peers(
        listener,
        data_plane.clone(),
        cluster.addr.clone(),
    ));
    Ok(cluster)
}

/// The contract with scripts: exactly `PORT=<n>`, flushed, before any log line on stdout.
pub(super) fn print_ports(
    config: &Config,
    port: u16,
    cluster_port: u16,
    metrics_port: Option<u16>,
) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "PORT={port}");
    if config.cluster_port == 0 {
        let _ = writeln!(out, "CLUSTER_PORT={cluster_port}");
    }
    if config.metrics_port == Some(0) {
        if let Some(p) = metrics_port {
            let _ = writeln!(out, "METRICS_PORT={p}");
        }
    }
    let _ = out.flush();
}

/// Starts the client TLS reloader, which also checks the files for changes if
/// `--tls-reload-interval-ms` is not 0.
pub(super) fn start_tls_reloads(
    config: &Config,
    log: &Logger,
    metrics: &Mailbox<MetricsActor>,
    tls: Arc<ClientTls>,
) -> Mailbox<tls::TlsActor> {
    ev::ClientTlsOn {
        cert: Shown(&tls.cert_path().display()),
        reload_interval_ms: config
            .tls_reload_interval
            .map_or(0, |d| d.as_millis() as u64),
    }
    .emit(log);
    let actor = tls::TlsActor::new(
        tls,
        log,
        metrics.clone(),
        config.report_interval,
        config.tls_reload_interval,
        config.actor_telemetry,
    );
    let tap = actor.stats().tap();
    Mailbox::new(actor.start(), tap, metrics.dead_letters())
}

/// SIGHUP reloads what can be reloaded (the client TLS files, the JWT keys) instead of ending
/// the process, its default.
pub(super) fn reload_on_hangup(
    log: &Logger,
    tls: Option<Mailbox<tls::TlsActor>>,
    keys: Option<Mailbox<jwks::KeysActor>>,
) -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangup = signal(SignalKind::hangup())?;
    let log = log.clone();
    let reloads = match (&tls, &keys) {
        (Some(_), Some(_)) => "client_tls,jwt_keys",
        (Some(_), None) => "client_tls",
        (None, Some(_)) => "jwt_keys",
        (None, None) => "",
    };
    actix_rt::spawn(async move {
        while hangup.recv().await.is_some() {
            ev::ReloadRequested { reloads }.emit(&log);
            if let Some(tls) = &tls {
                tls.do_send(tls::Reload(tls::ReloadCause::Signal));
            }
            if let Some(keys) = &keys {
                keys.do_send(jwks::Reload(jwks::ReloadCause::Signal));
            }
        }
    });
    Ok(())
}
