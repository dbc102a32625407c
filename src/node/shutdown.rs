//! The shutdown sequence (SIGTERM or SIGINT): stop reporting ready, close every client with
//! 1001, stop the HTTP servers, hand this node's partitions over and leave the cluster, flush
//! storage; each step logged. A watchdog ends the process if a step hangs, so the node always
//! exits within `shutdown_timeout`.
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::dev::ServerHandle;
use slog::Logger;

use super::events as ev;
use super::StartError;
use crate::cluster::actor::{ClusterActor, Leave};
use crate::cluster::plane::DataPlane;
use crate::config::Config;
use crate::net::gate::{AllClosed, CloseAll, ConnectionGateActor, OpenConnections};
use crate::storage::actor::{Flush, StorageActor};
use crate::telemetry::event::{ErrField, Event};
use crate::telemetry::mailbox::Mailbox;

/// How long client connections get to close after the 1001 before the server stops anyway.
const CLIENT_CLOSE_GRACE: Duration = Duration::from_secs(2);
/// Shutdown time kept for leaving the cluster and flushing storage after the handover.
const LEAVE_RESERVE: Duration = Duration::from_secs(2);
/// How long a node that left still answers its peers: their forwards routed here before they
/// heard of the leave.
const LEAVE_LINGER: Duration = Duration::from_millis(500);

/// What the shutdown sequence stops, in its order.
pub(super) struct Running {
    pub config: Arc<Config>,
    pub log: Logger,
    pub ready: Arc<AtomicBool>,
    pub gate: Mailbox<ConnectionGateActor>,
    /// The client server first, then the metrics server if it has its own port.
    pub http: Vec<ServerHandle>,
    pub data_plane: Arc<DataPlane>,
    pub cluster: Mailbox<ClusterActor>,
    pub storage: Option<Mailbox<StorageActor>>,
}

pub(super) async fn wait_for_signal() -> Result<&'static str, StartError> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    })
}

pub(super) async fn shut_down(node: Running, signal: &'static str) {
    let log = &node.log;
    let started = Instant::now();
    ev::ShutdownStarted { signal }.emit(log);
    start_watchdog(node.config.shutdown_timeout, log.clone());
    node.ready.store(false, Ordering::Release);

    close_clients(&node).await;
    for server in &node.http {
        server.stop(true).await;
    }
    ev::HttpStopped {}.emit(log);
    leave_cluster(&node).await;
    if let Some(storage) = &node.storage {
        let _ = storage.send(Flush).await;
        ev::StorageFlushed {}.emit(log);
    }
    ev::ShutdownComplete {
        took_ms: started.elapsed().as_millis() as u64,
    }
    .emit(log);
}

async fn close_clients(node: &Running) {
    let told = node.gate.send(CloseAll).await.unwrap_or(0);
    let _ = tokio::time::timeout(CLIENT_CLOSE_GRACE, node.gate.send(AllClosed)).await;
    let still_open = node.gate.send(OpenConnections).await.unwrap_or(0);
    ev::ClientsClosed { told, still_open }.emit(&node.log);
}

async fn leave_cluster(node: &Running) {
    let leave = || tokio::time::timeout(Duration::from_secs(1), node.cluster.send(Leave));
    if node.data_plane.cluster.table().members().len() <= 1 {
        let _ = leave().await;
        return;
    }
    // The backups of this node's partitions become their owners: they get what they lack of
    // it first, so that nothing this node acknowledged depends on a copy in flight.
    let budget = node
        .config
        .shutdown_timeout
        .saturating_sub(CLIENT_CLOSE_GRACE + LEAVE_RESERVE);
    let h = crate::cluster::leaving::hand_over(&node.data_plane, budget).await;
    let took_ms = h.took.as_millis() as u64;
    match &h.failure {
        None => ev::HandedOverBeforeLeaving {
            compared: h.compared,
            sent: h.sent,
            records: h.records,
            took_ms,
        }
        .emit(&node.log),
        Some(e) => ev::HandoverBeforeLeavingIncomplete {
            compared: h.compared,
            sent: h.sent,
            records: h.records,
            took_ms,
            err: ErrField::new(e.code(), e),
        }
        .emit(&node.log),
    }
    // Then the others take over at once, not after failure detection. Forwards they routed
    // here before they heard it are still answered while the node lingers.
    let _ = leave().await;
    tokio::time::sleep(LEAVE_LINGER).await;
}

/// If a shutdown step hangs, the process still ends: the operator was promised an exit.
fn start_watchdog(limit: Duration, log: Logger) {
    let _ = std::thread::Builder::new()
        .name("topgun-shutdown-watchdog".into())
        .spawn(move || {
            std::thread::sleep(limit);
            ev::ShutdownTimedOut {
                limit_ms: limit.as_millis() as u64,
                err: ErrField::fixed("shutdown_timeout", "a shutdown step did not finish in time"),
            }
            .emit(&log);
            std::thread::sleep(Duration::from_millis(200));
            std::process::exit(1);
        });
}
