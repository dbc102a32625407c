//! Wiring: the node's start as named steps, in dependency order, then its shutdown.
//!
//! Everything that can fail happens before the first actor starts (ports, storage, TLS files,
//! the registry): a node either starts whole or exits with one line, never half-started.
pub mod commands;
mod data;
mod error;
pub mod events;
mod identity;
mod ports;
mod services;
mod shutdown;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub use error::StartError;
pub use identity::resolve_node_id;

use crate::config::Config;
use crate::net::NodeContext;
use crate::telemetry::event::{ErrField, Event, Shown};
use actix::Actor;

use crate::telemetry::lag::LagProbe;
use crate::telemetry::logging::Logging;

/// Runs the node until a signal stops it. Takes ownership of logging to finish it last.
pub fn run(config: Config, logging: Logging, node_id: String) -> Result<(), StartError> {
    let config = Arc::new(config);
    let result = actix_rt::System::new().block_on(serve(config, &logging, node_id));
    if let Err(e) = &result {
        // The PORT line may never come; release held-back lines so the failure is explained.
        logging.port_line_printed();
        events::NodeFailed {
            err: ErrField::new(e.code(), e),
        }
        .emit(&logging.root);
    }
    logging.finish(Duration::from_secs(1));
    result
}

async fn serve(config: Arc<Config>, logging: &Logging, node_id: String) -> Result<(), StartError> {
    let log = logging.root.clone();
    services::announce(&config, &log);
    shutdown::announce_drain(&config, &log);
    services::raise_open_files_limit(&log);
    let auth = services::client_auth(&config, &log).await?;

    // What can fail, before any actor.
    let registry = services::registry(&config)?;
    let backend = data::open_backend(&config, &log)?;
    let ports = ports::bind_ports(&config)?;
    services::warn_cluster_exposure(&config, &log);
    let cluster_tls = config
        .cluster_tls
        .as_ref()
        .map(crate::cluster::tls::ClusterTls::load)
        .transpose()?;
    let client_tls = config
        .client_tls
        .as_ref()
        .map(crate::net::tls::ClientTls::load)
        .transpose()?
        .map(Arc::new);
    let identity = services::cluster_identity(&config, &node_id, &ports)?;

    // The actors, each step starting what the next one needs.
    let telemetry = services::start_telemetry(&config, &log, logging, registry);
    let gate = services::Gate::new(&config, &log, &telemetry.metrics);
    let (data_plane, storage) = data::start_data_plane(
        &config,
        &node_id,
        &log,
        &telemetry,
        backend,
        services::cluster_state(&config, &identity, cluster_tls),
    );
    let (verifier, keys) = services::verifier(&config, &log, &telemetry.metrics, auth);
    let ready = Arc::new(AtomicBool::new(false));
    let draining = Arc::new(AtomicBool::new(false));
    let node = Arc::new(NodeContext {
        data: data_plane.clone(),
        verifier,
        gate: gate.mailbox.clone(),
        log_level: logging.level_handle(),
        ready: ready.clone(),
        draining: draining.clone(),
        public_url: identity.ws_url.clone(),
    });
    let http = services::HttpServers::new(
        &config,
        &node,
        &telemetry.metrics,
        ports.client,
        ports.metrics,
        client_tls.as_deref(),
    )?;

    // Both ports are bound: nothing can fail half-started any more.
    let gate_mailbox = gate.run(&data_plane);
    crate::cluster::live::start(&data_plane);
    let cluster = services::start_cluster(
        &config,
        &log,
        &telemetry.metrics,
        identity,
        ports.cluster_socket,
        ports.peer_listener,
        ports.cluster,
        &data_plane,
    )?;
    let tls_reloads =
        client_tls.map(|tls| services::start_tls_reloads(&config, &log, &telemetry.metrics, tls));
    let keys_reloads = keys.map(services::KeysReloader::run);
    services::reload_on_hangup(&log, tls_reloads, keys_reloads)?;
    let mut signals = shutdown::Signals::listen()?;
    LagProbe::new("main", telemetry.metrics.clone(), config.report_interval).start();
    let (port, metrics_port) = (http.port, http.metrics_port);
    services::print_ports(&config, port, ports.cluster.port(), metrics_port);
    logging.port_line_printed();
    let handles = http.run();
    ready.store(true, Ordering::Release);
    events::Listening {
        port,
        host: Shown(&config.host),
        metrics_port: metrics_port.unwrap_or(port),
    }
    .emit(&log);

    let signal = signals.next().await;
    shutdown::shut_down(
        shutdown::Running {
            config,
            log,
            ready,
            draining,
            gate: gate_mailbox,
            http: handles,
            data_plane,
            cluster,
            storage,
        },
        signal,
        signals,
    )
    .await;
    Ok(())
}
