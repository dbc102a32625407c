//! What the rest of the node reads of the cluster, shared without messages: the current
//! partition table, the open links to peers, the write settings, readiness, and the counters the
//! `ClusterActor` reports. Connections (on HTTP worker threads) and peer connections read it on
//! every write, so reads are a lock and an `Arc` clone, never a round trip to an actor.
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use super::catchup::PullLog;
use super::peer::PeerConn;
use super::peer_error::PeerError;
use super::secret::ClusterKeys;
use super::table::{PartitionTable, TableMember};
use crate::config::{Placement, WriteAck};
use crate::protocol::types::Timestamp;
use crate::shard::fnv::PARTITION_COUNT;
use crate::shard::hlc::{system_millis, Hlc};
use crate::telemetry::mailbox::Mailbox;
use crate::telemetry::throttle::Throttle;

/// A held lock even if a panicking holder poisoned it: the data behind these locks stays
/// consistent between statements.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One line per reason of a repeating warning per this interval; the rest are counted in it.
const REPEAT_LOG_EVERY: Duration = Duration::from_secs(10);
/// A peer refused for the cluster secret or TLS is logged at most once per this, per IP
/// address and kind of refusal.
const AUTH_LOG_EVERY: Duration = Duration::from_secs(60);
/// Addresses remembered for [`AUTH_LOG_EVERY`] at most: a flood from many addresses forgets
/// them all at once rather than growing.
const AUTH_LOG_ADDRS: usize = 4096;

/// Counters bumped where things happen (any thread) and reported as deltas by the ClusterActor.
#[derive(Default)]
pub struct ClusterCounters {
    pub forwarded: AtomicU64,
    pub applied_owner: AtomicU64,
    pub applied_backup: AtomicU64,
    pub applied_replica: AtomicU64,
    pub migration_records: AtomicU64,
    pub migration_pending: AtomicI64,
    pub catch_ups_ok: AtomicU64,
    pub catch_ups_failed: AtomicU64,
    pub handoffs_pending: AtomicI64,
    pub handoff_bytes: AtomicI64,
    pub handoffs_delivered: AtomicU64,
    pub handoffs_dropped: AtomicU64,
    /// Live events sent to peers and received from them (partitioned placement).
    pub live_sent: AtomicU64,
    pub live_received: AtomicU64,
    /// Gathered reads answered whole, failed, and shares asked again of another holder.
    pub gathers_ok: AtomicU64,
    pub gathers_failed: AtomicU64,
    pub gathers_retried: AtomicU64,
    pub antientropy_rounds: AtomicU64,
    /// Partitions found different from a backup's copy and merged both ways.
    pub antientropy_repaired: AtomicU64,
    /// Bytes written to peer links and not taken by the kernel yet, over every link.
    pub link_unsent: AtomicI64,
    peer_errors: [AtomicU64; PeerError::ALL.len()],
    /// Longest wait for a peer's answer since the last report, µs.
    lag_us: AtomicU64,
}

impl ClusterCounters {
    pub fn peer_error(&self, reason: PeerError) {
        self.peer_errors[reason.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub fn take_peer_errors(&self) -> Vec<(&'static str, u64)> {
        PeerError::ALL
            .iter()
            .zip(&self.peer_errors)
            .map(|(r, c)| (r.code(), c.swap(0, Ordering::Relaxed)))
            .collect()
    }

    pub fn observe_lag(&self, waited: Duration) {
        let us = u64::try_from(waited.as_micros()).unwrap_or(u64::MAX);
        self.lag_us.fetch_max(us, Ordering::Relaxed);
    }

    pub fn take_lag(&self) -> Duration {
        Duration::from_micros(self.lag_us.swap(0, Ordering::Relaxed))
    }
}

/// A member that membership sees alive while this node has no link to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MissingLink {
    pub node_id: String,
    pub since: Instant,
}

impl MissingLink {
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "nodeId": self.node_id,
            "downForMs": self.since.elapsed().as_millis() as u64,
        })
    }
}

/// The maps each peer has live subscriptions on, by node id.
pub type PeerInterest = HashMap<String, Arc<HashSet<Arc<str>>>>;

pub struct ClusterState {
    pub node_id: String,
    /// This node's membership generation: its start time in ms, one more after each time the
    /// cluster declared it down and it rejoined. The peer handshake announces it.
    generation: AtomicU64,
    pub ws_url: String,
    pub ack: WriteAck,
    /// Longest wait for a peer's answer to a write.
    pub timeout: Duration,
    pub backups: usize,
    pub placement: Placement,
    /// The cluster secrets: `None`, peers are not authenticated.
    pub keys: Option<ClusterKeys>,
    /// The links' mutual TLS: `None`, links are plain TCP.
    pub tls: Option<super::tls::ClusterTls>,
    /// When each address was last logged as refused for the cluster secret.
    auth_log: Mutex<HashMap<(IpAddr, &'static str), Throttle>>,
    /// Per partition: this node gained a role for it and is still pulling it, so it must not
    /// answer a gathered read for it yet (its copy may be missing records).
    arriving: Vec<AtomicBool>,
    /// The maps each peer has live subscriptions on (its last `INTEREST`).
    peer_interest: RwLock<Arc<PeerInterest>>,
    table: RwLock<Arc<PartitionTable>>,
    /// The version of every new table, for whoever must know (cluster clients get it pushed).
    table_changes: tokio::sync::watch::Sender<u32>,
    links: RwLock<HashMap<String, Mailbox<PeerConn>>>,
    /// Woken on every change of `links`, so a writer waiting for a link needs no polling.
    links_changed: tokio::sync::Notify,
    /// Members that membership sees alive and that have had no link for longer than the grace
    /// period: `/ready` reports them, the ClusterActor keeps the list.
    missing_links: RwLock<Vec<MissingLink>>,
    /// Repeating warnings (`peer refused`, handoffs dropped), at most one per reason per
    /// [`REPEAT_LOG_EVERY`].
    repeat_log: Mutex<HashMap<&'static str, Throttle>>,
    /// Stamps REMOVEs that came without a record before they leave this node, so every replica
    /// stores the same tombstone.
    clock: Mutex<Hlc>,
    /// Joined (or alone by choice) and the first pull from peers done: `/ready` may say yes.
    data_ready: AtomicBool,
    /// Which pulls cover which catch-ups.
    pulls: Mutex<PullLog>,
    pub counters: ClusterCounters,
}

impl ClusterState {
    pub fn new(
        me: TableMember,
        ack: WriteAck,
        timeout: Duration,
        backups: usize,
        placement: Placement,
        keys: Option<ClusterKeys>,
        tls: Option<super::tls::ClusterTls>,
    ) -> Self {
        let table = PartitionTable::compute(vec![me.clone()], backups, 1);
        ClusterState {
            clock: Mutex::new(Hlc::new(me.node_id.clone(), u64::MAX / 4)),
            node_id: me.node_id,
            generation: AtomicU64::new(me.generation),
            ws_url: me.ws_url,
            ack,
            timeout,
            backups,
            placement,
            keys,
            tls,
            auth_log: Mutex::new(HashMap::new()),
            arriving: (0..PARTITION_COUNT)
                .map(|_| AtomicBool::new(false))
                .collect(),
            peer_interest: RwLock::new(Arc::new(HashMap::new())),
            table_changes: tokio::sync::watch::Sender::new(table.version),
            table: RwLock::new(Arc::new(table)),
            links: RwLock::new(HashMap::new()),
            links_changed: tokio::sync::Notify::new(),
            missing_links: RwLock::new(Vec::new()),
            repeat_log: Mutex::new(HashMap::new()),
            data_ready: AtomicBool::new(false),
            pulls: Mutex::new(PullLog::default()),
            counters: ClusterCounters::default(),
        }
    }

    /// Whether this node keeps only the partitions it owns or backs up.
    pub fn partitioned(&self) -> bool {
        self.placement == Placement::Partitioned
    }

    /// Whether this node keeps `partition` under `table` (always, with full placement).
    pub fn keeps(&self, table: &PartitionTable, partition: u16) -> bool {
        !self.partitioned() || table.role(partition, &self.node_id) != super::table::Role::Replica
    }

    /// Whether this node can answer a read for `partition` now: it keeps it and is not still
    /// pulling it.
    pub fn serves(&self, table: &PartitionTable, partition: u16) -> bool {
        self.keeps(table, partition) && !self.is_arriving(partition)
    }

    pub fn is_arriving(&self, partition: u16) -> bool {
        self.arriving
            .get(usize::from(partition))
            .is_some_and(|a| a.load(Ordering::Acquire))
    }

    pub(super) fn set_arriving(&self, partitions: &[u16], arriving: bool) {
        for &p in partitions {
            if let Some(a) = self.arriving.get(usize::from(p)) {
                a.store(arriving, Ordering::Release);
            }
        }
    }

    /// Records `peer`'s interest; returns the union of every peer's maps.
    pub fn set_peer_interest(&self, peer: &str, maps: HashSet<Arc<str>>) -> HashSet<Arc<str>> {
        let mut all = match self.peer_interest.write() {
            Ok(a) => a,
            Err(poisoned) => poisoned.into_inner(),
        };
        let mut next: PeerInterest = (**all).clone();
        next.insert(peer.to_owned(), Arc::new(maps));
        let union = next.values().flat_map(|m| m.iter().cloned()).collect();
        *all = Arc::new(next);
        union
    }

    pub fn peer_interest(&self) -> Arc<PeerInterest> {
        match self.peer_interest.read() {
            Ok(a) => a.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub(super) fn set_generation(&self, generation: u64) {
        self.generation.store(generation, Ordering::Release);
    }

    pub fn table(&self) -> Arc<PartitionTable> {
        match self.table.read() {
            Ok(t) => t.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Wakes on every new partition table.
    pub fn table_changes(&self) -> tokio::sync::watch::Receiver<u32> {
        self.table_changes.subscribe()
    }

    pub(super) fn set_table(&self, table: PartitionTable) {
        let version = table.version;
        let table = Arc::new(table);
        match self.table.write() {
            Ok(mut t) => *t = table,
            Err(poisoned) => *poisoned.into_inner() = table,
        }
        // After the store: whoever wakes reads this table or a newer one.
        self.table_changes.send_replace(version);
    }

    /// The open link to `node_id`, if its handshake finished.
    pub fn link(&self, node_id: &str) -> Option<Mailbox<PeerConn>> {
        let links = match self.links.read() {
            Ok(l) => l,
            Err(poisoned) => poisoned.into_inner(),
        };
        links.get(node_id).cloned()
    }

    /// The link to `node_id`, waiting up to `within` for it while it is a member: right after
    /// a rebalance a new member's link may still be in its handshake.
    pub async fn wait_link(&self, node_id: &str, within: Duration) -> Option<Mailbox<PeerConn>> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            // Registered before the check, so a change between the check and the wait wakes it.
            let changed = self.links_changed.notified();
            if let Some(link) = self.link(node_id) {
                return Some(link);
            }
            // Not a member (any more): nothing to wait for.
            self.table().member(node_id)?;
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return self.link(node_id);
            }
        }
    }

    /// `peer`'s connection to this node was accepted (its HELLO).
    pub fn peer_connected(&self, peer: &str) {
        lock(&self.pulls).connected(peer, Instant::now());
        self.links_changed.notify_waiters();
    }

    /// A pull will ask `peer` for `partitions` once [`ClusterState::wait_connected`] returns.
    pub fn pull_planned(&self, peer: &str, partitions: &[u16]) {
        lock(&self.pulls).planned(peer, partitions);
    }

    /// Waits up to `within` for `peer` to have connected to this node, and then until
    /// [`super::catchup::SETTLE`] after that (however late it connected): a pull asked then
    /// covers the catch-up its connection triggers (`catchup::PullLog`).
    pub async fn wait_connected(&self, peer: &str, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let changed = self.links_changed.notified();
            // Bound first: the lock must not be held across the sleep.
            let connected = lock(&self.pulls).connected_at(peer);
            if let Some(at) = connected {
                let settled = tokio::time::Instant::from_std(at + super::catchup::SETTLE);
                tokio::time::sleep_until(settled).await;
                return;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return;
            }
        }
    }

    /// A pull is asking `peer` for `partitions` now.
    pub fn pull_asked(&self, peer: &str, partitions: &[u16]) {
        lock(&self.pulls).asked(peer, partitions, Instant::now());
    }

    /// A pull of `partitions` from `peer` did not complete them.
    pub fn pull_incomplete(&self, peer: &str, partitions: &[u16]) {
        lock(&self.pulls).forget(peer, partitions);
    }

    /// Of `partitions`, the ones no pull asked `peer` for since its latest connection.
    pub fn not_pulled_since_connected(&self, peer: &str, partitions: &[u16]) -> Vec<u16> {
        lock(&self.pulls).not_covered(peer, partitions)
    }

    /// Every open link but the ones to `except`.
    pub fn links_except(&self, except: &[&str]) -> Vec<(String, Mailbox<PeerConn>)> {
        let links = match self.links.read() {
            Ok(l) => l,
            Err(poisoned) => poisoned.into_inner(),
        };
        links
            .iter()
            .filter(|(id, _)| !except.contains(&id.as_str()))
            .map(|(id, a)| (id.clone(), a.clone()))
            .collect()
    }

    pub(super) fn with_links<R>(
        &self,
        f: impl FnOnce(&mut HashMap<String, Mailbox<PeerConn>>) -> R,
    ) -> R {
        let out = match self.links.write() {
            Ok(mut l) => f(&mut l),
            Err(poisoned) => f(&mut poisoned.into_inner()),
        };
        self.links_changed.notify_waiters();
        out
    }

    /// `Some(suppressed)` when a warning for `reason` may be logged now, with the number of
    /// warnings for it not logged since the last line.
    pub fn may_log(&self, reason: &'static str) -> Option<u64> {
        lock(&self.repeat_log)
            .entry(reason)
            .or_insert_with(|| Throttle::new(REPEAT_LOG_EVERY))
            .check(Instant::now())
    }

    /// `Some(suppressed)` when a refusal of `ip` for the cluster secret or TLS may be logged
    /// now (once per [`AUTH_LOG_EVERY`] per address and `kind`, the line's own: a datagram, a
    /// handshake, a link this node dialled), with the refusals of it not logged since.
    pub fn may_log_refused(&self, ip: IpAddr, kind: &'static str) -> Option<u64> {
        let mut log = lock(&self.auth_log);
        if log.len() >= AUTH_LOG_ADDRS && !log.contains_key(&(ip, kind)) {
            log.clear();
        }
        log.entry((ip, kind))
            .or_insert_with(|| Throttle::new(AUTH_LOG_EVERY))
            .check(Instant::now())
    }

    /// Members alive without a link past the grace period (empty when the grid is whole).
    pub fn missing_links(&self) -> Vec<MissingLink> {
        match self.missing_links.read() {
            Ok(m) => m.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    pub(super) fn set_missing_links(&self, missing: Vec<MissingLink>) {
        match self.missing_links.write() {
            Ok(mut m) => *m = missing,
            Err(poisoned) => *poisoned.into_inner() = missing,
        }
    }

    /// A timestamp for a REMOVE that came without a record.
    pub fn stamp(&self) -> Timestamp {
        lock(&self.clock).now(system_millis())
    }

    pub fn data_ready(&self) -> bool {
        self.data_ready.load(Ordering::Acquire)
    }

    pub(super) fn set_data_ready(&self) {
        self.data_ready.store(true, Ordering::Release);
    }

    /// What `GET /debug/cluster` shows: the table as this node sees it, each member's share
    /// and whether this node's link to it is up, the write settings and migration progress.
    pub fn describe(&self) -> serde_json::Value {
        let table = self.table();
        let members: Vec<serde_json::Value> = table
            .members()
            .iter()
            .map(|m| {
                let (owned, backup) = table.counts(&m.node_id);
                let link = if m.node_id == self.node_id {
                    "self"
                } else if self.link(&m.node_id).is_some() {
                    "up"
                } else {
                    "down"
                };
                serde_json::json!({
                    "nodeId": m.node_id,
                    "generation": m.generation,
                    "peerAddr": m.peer_addr.to_string(),
                    "websocket": m.ws_url,
                    "owned": owned,
                    "backup": backup,
                    "link": link,
                })
            })
            .collect();
        serde_json::json!({
            "nodeId": self.node_id,
            "generation": self.generation(),
            "tableVersion": table.version,
            "members": members,
            "backupCount": self.backups,
            "writeAck": self.ack.to_string(),
            "placement": self.placement.to_string(),
            "timeoutMs": self.timeout.as_millis() as u64,
            "migrationPendingPartitions":
                self.counters.migration_pending.load(Ordering::Relaxed),
            "dataReady": self.data_ready(),
            "missingLinks": self.missing_links().iter().map(MissingLink::to_json)
                .collect::<Vec<_>>(),
        })
    }
}
