//! Start steps of the data plane: storage opened and read back, the memory budget, the event
//! queue's stripes and the shards on their data threads.
use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;
use actix_rt::ArbiterHandle;
use slog::Logger;

use super::events as ev;
use super::services::Telemetry;
use super::StartError;
use crate::cluster::plane::DataPlane;
use crate::cluster::state::ClusterState;
use crate::config::{Config, MemoryLimit, StorageBackend};
use crate::data::budget::{self, LimitSource};
use crate::queue::actor::StripeActor;
use crate::queue::{EventQueue, StripeHandle};
use crate::shard::actor::{ShardActor, ShardLinks, ShardRecovery, ShardSettings};
use crate::shard::fnv::partition_of;
use crate::shard::router::{partitions_of, shard_of_partition, Shards};
use crate::storage::actor::StorageActor;
use crate::storage::redb::RedbBackend;
use crate::storage::{Mutation, Recovered};
use crate::telemetry::event::{Event, Shown};
use crate::telemetry::lag::LagProbe;
use crate::telemetry::mailbox::Mailbox;
use crate::telemetry::metrics::MetricsActor;

/// Storage, the event queue's stripes and the shards, wired into the data plane.
pub(super) fn start_data_plane(
    config: &Arc<Config>,
    node_id: &str,
    log: &Logger,
    telemetry: &Telemetry,
    backend: Option<(RedbBackend, Recovered)>,
    cluster: Arc<ClusterState>,
) -> (Arc<DataPlane>, Option<Mailbox<StorageActor>>) {
    let metrics = &telemetry.metrics;
    let (storage, recovered) = start_storage(config, log, metrics, backend);
    // One data thread per shard; the event-queue stripes live on them too.
    let data_threads: Vec<ArbiterHandle> = (0..config.shards)
        .map(|_| Arbiter::new().handle())
        .collect();
    let queue = start_event_queue(config, log, metrics, &data_threads);
    let links = ShardLinks {
        queue: queue.clone(),
        metrics: metrics.clone(),
        storage: storage.clone(),
        catalog: telemetry.maps.clone(),
    };
    let shards = start_shards(config, node_id, links, log, recovered, &data_threads);
    ev::DataPlaneStarted {
        shards: shards.len(),
        stripes: queue.stripes.len(),
        event_queue_capacity: queue.capacity(),
    }
    .emit(log);
    let plane = DataPlane {
        config: config.clone(),
        node_id: node_id.to_owned(),
        metrics: metrics.clone(),
        log: log.clone(),
        shards,
        queue,
        write_slots: telemetry.write_slots.clone(),
        cluster,
        budget: telemetry.budget.clone(),
        maps: telemetry.maps.clone(),
    };
    (Arc::new(plane), storage)
}

/// The budget's limit in bytes (0: none), logged with where it came from.
pub(super) fn memory_budget(config: &Config, log: &Logger) -> u64 {
    let found = match config.max_memory {
        MemoryLimit::Off => None,
        MemoryLimit::Bytes(n) => Some((n, LimitSource::Configured)),
        MemoryLimit::Auto => budget::default_limit(),
    };
    match found {
        Some((limit, source)) => {
            ev::MemoryBudgetSet {
                budget_bytes: limit,
                source: source.as_str(),
                resume_percent: budget::RESUME_PERCENT,
            }
            .emit(log);
            limit
        }
        None => {
            ev::MemoryBudgetNone {
                source: match config.max_memory {
                    MemoryLimit::Off => "configured",
                    _ => "unknown machine memory",
                },
            }
            .emit(log);
            0
        }
    }
}

/// Stripes of the event queue, on the shards' threads (stripe i on data thread i % shards): a
/// shard hands its events to a stripe without waking another thread, and a 2-core machine is
/// not asked to juggle a thread per stripe.
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
            StripeHandle::new(
                Mailbox::new(addr, tap, metrics.dead_letters()),
                queued,
                per_stripe,
            )
        })
        .collect();
    EventQueue {
        stripes: stripes.into(),
        cross,
    }
}

/// Opens the configured backend and reads it back (`None` for memory).
pub(super) fn open_backend(
    config: &Config,
    log: &Logger,
) -> Result<Option<(RedbBackend, Recovered)>, StartError> {
    if config.storage_backend == StorageBackend::Memory {
        ev::StorageOpened {
            backend: "memory",
            ..Default::default()
        }
        .emit(log);
        return Ok(None);
    }
    let t0 = Instant::now();
    let (backend, recovered) = RedbBackend::open(&config.data_dir)?;
    ev::StorageOpened {
        backend: "redb",
        data_dir: Some(Shown(&config.data_dir.display())),
        lww_records: recovered.lww.len(),
        or_records: recovered.or_records.len(),
        or_removed_tags: recovered.or_removed.len(),
        hlc: recovered.hlc.as_ref().map(|t| t.to_string()),
        took_ms: t0.elapsed().as_millis() as u64,
    }
    .emit(log);
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
    (
        Some(Mailbox::new(addr, tap, metrics.dead_letters())),
        recovered,
    )
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
