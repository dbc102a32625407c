//! What the cluster actor reports to the metrics actor: membership, partitions, data moves.
use super::*;

impl ClusterActor {
    pub(super) fn report(&mut self) {
        let report = ClusterReport {
            stats: self.stats.take(),
            members: self.members() as i64,
            invalid: std::mem::take(&mut self.invalid),
            data: self.data_report(),
        };
        self.metrics.do_send(Reported(Box::new(report)));
    }

    /// The last report of a stopping actor: its share of the gauges goes back.
    pub(super) fn report_final(&mut self) {
        let report = ClusterReport {
            stats: self.stats.take_final(),
            members: 1,
            invalid: std::mem::take(&mut self.invalid),
            data: self.data_report(),
        };
        self.metrics.do_send(Reported(Box::new(report)));
    }

    fn data_report(&mut self) -> DataReport {
        let cluster = &self.node.cluster;
        let table = cluster.table();
        let (owned, backup) = table.counts(&cluster.node_id);
        let c = &cluster.counters;
        let take =
            |a: &std::sync::atomic::AtomicU64| a.swap(0, std::sync::atomic::Ordering::Relaxed);
        DataReport {
            owned: owned as i64,
            backup: backup as i64,
            version: i64::from(table.version),
            rebalances: std::mem::take(&mut self.rebalances),
            heals: std::mem::take(&mut self.heals),
            migration_pending: c
                .migration_pending
                .load(std::sync::atomic::Ordering::Relaxed),
            migration_records: take(&c.migration_records),
            forwarded: take(&c.forwarded),
            applied: [
                take(&c.applied_owner),
                take(&c.applied_backup),
                take(&c.applied_replica),
            ],
            lag: c.take_lag().as_secs_f64(),
            peer_errors: c.take_peer_errors(),
            links: self.dialled.values().filter(|d| d.link.is_some()).count() as i64,
            catch_ups: [take(&c.catch_ups_ok), take(&c.catch_ups_failed)],
            handoffs: [take(&c.handoffs_delivered), take(&c.handoffs_dropped)],
            records_by_role: self
                .records_by_role
                .map(|n| i64::try_from(n).unwrap_or(i64::MAX)),
            live: [
                take(&c.live_sent),
                take(&c.live_received),
                take(&self.node.queue.cross.dropped),
            ],
            released: std::mem::take(&mut self.released),
            gathers: [
                take(&c.gathers_ok),
                take(&c.gathers_failed),
                take(&c.gathers_retried),
            ],
            handoffs_pending: c
                .handoffs_pending
                .load(std::sync::atomic::Ordering::Relaxed),
            link_unsent: c.link_unsent.load(std::sync::atomic::Ordering::Relaxed),
            antientropy: [take(&c.antientropy_rounds), take(&c.antientropy_repaired)],
        }
    }
}

/// The data side of the cluster: partition counts, migration, routing counters.
struct DataReport {
    owned: i64,
    backup: i64,
    version: i64,
    rebalances: u64,
    heals: u64,
    migration_pending: i64,
    migration_records: u64,
    forwarded: u64,
    /// owner, backup, replica.
    applied: [u64; 3],
    lag: f64,
    peer_errors: Vec<(&'static str, u64)>,
    links: i64,
    /// finished, failed.
    catch_ups: [u64; 2],
    /// delivered, dropped.
    handoffs: [u64; 2],
    /// ok, failed, retried.
    gathers: [u64; 3],
    /// owner, backup, replica.
    records_by_role: [i64; 3],
    /// Live events sent, received, dropped.
    live: [u64; 3],
    released: u64,
    handoffs_pending: i64,
    link_unsent: i64,
    /// Rounds, partitions repaired.
    antientropy: [u64; 2],
}

impl DataReport {
    fn apply(self, m: &mut Metrics) {
        m.partitions_owned.set(self.owned);
        m.partitions_backup.set(self.backup);
        m.partition_table_version.set(self.version);
        m.rebalance_total.inc_by(self.rebalances);
        m.cluster_heals_total.inc_by(self.heals);
        m.migration_partitions_pending.set(self.migration_pending);
        m.migration_records_total.inc_by(self.migration_records);
        m.cluster_forwarded_total.inc_by(self.forwarded);
        for (role, n) in ["owner", "backup", "replica"].iter().zip(self.applied) {
            m.cluster_applied_total.with_label_values(&[role]).inc_by(n);
        }
        m.replication_lag_seconds.set(self.lag);
        for (reason, n) in self.peer_errors {
            m.cluster_peer_errors_total
                .with_label_values(&[reason])
                .inc_by(n);
        }
        m.cluster_peer_links.set(self.links);
        for (outcome, n) in ["ok", "failed"].iter().zip(self.catch_ups) {
            m.cluster_catch_ups_total
                .with_label_values(&[outcome])
                .inc_by(n);
        }
        for (outcome, n) in ["delivered", "dropped"].iter().zip(self.handoffs) {
            m.cluster_handoffs_total
                .with_label_values(&[outcome])
                .inc_by(n);
        }
        m.cluster_handoffs_pending.set(self.handoffs_pending);
        m.cluster_link_unsent_bytes.set(self.link_unsent);
        m.antientropy_rounds_total.inc_by(self.antientropy[0]);
        m.antientropy_repaired_total.inc_by(self.antientropy[1]);
        for (role, n) in ["owner", "backup", "replica"]
            .iter()
            .zip(self.records_by_role)
        {
            m.partition_records.with_label_values(&[role]).set(n);
        }
        m.partitions_released_total.inc_by(self.released);
        for (outcome, n) in ["sent", "received", "dropped"].iter().zip(self.live) {
            m.cluster_live_events_total
                .with_label_values(&[outcome])
                .inc_by(n);
        }
        for (outcome, n) in ["ok", "failed", "retried"].iter().zip(self.gathers) {
            m.cluster_gathers_total
                .with_label_values(&[outcome])
                .inc_by(n);
        }
    }
}

/// Membership numbers: the members gauge (this actor is its only source) and counter deltas.
struct ClusterReport {
    stats: StatsDelta,
    members: i64,
    invalid: u64,
    data: DataReport,
}

impl Report for ClusterReport {
    fn apply(self: Box<Self>, m: &mut Metrics) {
        self.stats.apply(m);
        m.cluster_members.set(self.members);
        m.cluster_invalid_datagrams_total.inc_by(self.invalid);
        self.data.apply(m);
    }
}
