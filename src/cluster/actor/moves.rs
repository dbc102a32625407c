//! Partitions on the move: a new table from the membership, the migration it starts, catch-ups
//! after a link comes back, anti-entropy rounds and the release of partitions no longer held.
use super::*;

impl ClusterActor {
    /// Recomputes the partition table when the member list changed (by id or generation):
    /// publishes it, dials new members, drops links to gone ones, and starts the migration.
    pub(super) fn refresh_table(&mut self, ctx: &mut Context<Self>) {
        if self.leaving {
            return;
        }
        if let Some(at) = self.rejoined_at {
            if self.foca.num_members() == 0 && at.elapsed() < self.probe * 5 {
                return;
            }
            self.rejoined_at = None;
        }
        let me = TableMember {
            node_id: self.identity.node_id.clone(),
            peer_addr: self.identity.addr,
            generation: self.identity.generation,
            ws_url: self.identity.ws_url.clone(),
        };
        let mut members = vec![me];
        members.extend(self.foca.iter_members().map(|m| {
            let id = m.id();
            TableMember {
                node_id: id.node_id.clone(),
                peer_addr: id.addr,
                generation: id.generation,
                ws_url: id.ws_url.clone(),
            }
        }));
        let cluster = self.node.cluster.clone();
        let old = cluster.table();
        if old.has_members(members.clone()) {
            return;
        }
        let now_secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let candidate = PartitionTable::compute(
            members,
            cluster.backups,
            next_version(old.version, now_secs),
        );
        let moved = candidate.moved_owners(&old);
        let (owned, backup) = candidate.counts(&cluster.node_id);
        self.rebalances += 1;
        ev::PartitionsRebalanced {
            version: candidate.version,
            previous_version: old.version,
            members: candidate.members().len(),
            owned,
            backup,
            moved_owners: moved,
            member_ids: candidate
                .members()
                .iter()
                .map(|m| m.node_id.as_str())
                .collect::<Vec<_>>()
                .join(","),
        }
        .emit(&self.log);
        cluster.set_table(candidate.clone());
        self.sync_links(&candidate, ctx);
        self.start_migration(&old, &candidate, ctx);
    }

    /// Pulls, from the peers that had them, the partitions this node newly holds a role for
    /// (after joining: every partition). Runs in the background; the node serves meanwhile.
    pub(super) fn start_migration(
        &mut self,
        old: &PartitionTable,
        new: &PartitionTable,
        ctx: &mut Context<Self>,
    ) {
        let initial = !self.synced && new.members().len() > 1;
        let cluster = &self.node.cluster;
        let plan = migration::plan(old, new, &self.identity.node_id, initial, |p| {
            cluster.keeps(new, p)
        });
        if plan.is_empty() {
            if initial {
                self.synced = true;
            }
            self.ready_if_synced();
            return;
        }
        let partitions: usize = plan.values().map(Vec::len).sum();
        let round = self
            .rounds
            .start(plan.len(), partitions, initial, Instant::now());
        self.node
            .cluster
            .counters
            .migration_pending
            .fetch_add(partitions as i64, std::sync::atomic::Ordering::Relaxed);
        ev::MigrationStarted {
            round,
            partitions,
            sources: plan.keys().cloned().collect::<Vec<_>>().join(","),
            initial,
        }
        .emit(&self.log);
        for (source, parts) in plan {
            self.node.cluster.set_arriving(&parts, true);
            self.pull(round, source, parts, 1, ctx);
        }
    }

    pub(super) fn pull(
        &mut self,
        round: u64,
        source: String,
        partitions: Vec<u16>,
        attempt: u32,
        ctx: &mut Context<Self>,
    ) {
        let node = self.node.clone();
        let me = ctx.address();
        actix_rt::spawn(async move {
            // Progress per partition: the pending gauge falls as the pull goes.
            let pending = &node.cluster.counters.migration_pending;
            let merge = if node.cluster.partitioned() {
                migration::Merge::Quiet
            } else {
                migration::Merge::Announced
            };
            let pulled = migration::pull(&node, &source, &partitions, merge, |p| {
                pending.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                node.cluster.set_arriving(&[p], false);
            })
            .await;
            me.do_send(PullEnded {
                round,
                source,
                partitions,
                pulled,
                attempt,
            });
        });
    }

    pub(super) fn schedule_catch_up(&mut self, peer: String, at: Instant, ctx: &mut Context<Self>) {
        let after = at.saturating_duration_since(Instant::now());
        ctx.run_later(after, move |act, ctx| act.catch_up(peer, ctx));
    }

    /// Pulls from `peer` every partition this node keeps and merges it.
    pub(super) fn catch_up(&mut self, peer: String, ctx: &mut Context<Self>) {
        let table = self.node.cluster.table();
        let is_member = table.member(&peer).is_some();
        let now = Instant::now();
        if self.leaving || !self.catchups.begin(&peer, is_member, now) {
            return;
        }
        let kept: Vec<u16> = (0..PARTITION_COUNT)
            .filter(|&p| self.node.cluster.keeps(&table, p))
            .collect();
        // A migration pull asked the peer for some of them since it connected: those come
        // whole with it.
        let partitions = self.node.cluster.not_pulled_since_connected(&peer, &kept);
        ev::CatchUpStarted {
            peer: &peer,
            partitions: partitions.len(),
            covered_by_pull: kept.len() - partitions.len(),
        }
        .emit(&self.log);
        let node = self.node.clone();
        let me = ctx.address();
        actix_rt::spawn(async move {
            let pulled = migration::pull(
                &node,
                &peer,
                &partitions,
                migration::Merge::Announced,
                |_| {},
            )
            .await;
            let result = match pulled.failure {
                None => Ok(pulled.records),
                Some(f) => Err(f),
            };
            me.do_send(CatchUpEnded {
                peer,
                started: now,
                result,
            });
        });
    }

    /// Compares the partitions this node owns with their backups and repairs what differs
    /// (`antientropy.rs`); not while a migration runs (partitions are still moving).
    pub(super) fn anti_entropy(&mut self, ctx: &mut Context<Self>) {
        if self.comparing || self.leaving || !self.rounds.is_empty() {
            return;
        }
        self.comparing = true;
        let node = self.node.clone();
        let me = ctx.address();
        actix_rt::spawn(async move {
            let round = crate::cluster::antientropy::round(node).await;
            me.do_send(AntiEntropyEnded(round));
        });
    }

    /// Counts records by role, and with partitioned placement hands over the partitions this
    /// node no longer keeps (not while a migration runs: the table is still moving).
    pub(super) fn release(&mut self, ctx: &mut Context<Self>) {
        if self.releasing || self.leaving {
            return;
        }
        self.releasing = true;
        let hand_over = self.node.cluster.partitioned() && self.rounds.is_empty();
        let node = self.node.clone();
        let me = ctx.address();
        actix_rt::spawn(async move {
            let released = crate::cluster::release::release(&node, hand_over).await;
            me.do_send(ReleaseEnded(released));
        });
    }

    pub(super) fn ready_if_synced(&self) {
        if self.synced && !self.node.cluster.data_ready() {
            self.node.cluster.set_data_ready();
            ev::DataReady {
                members: self.node.cluster.table().members().len(),
            }
            .emit(&self.log);
        }
    }
}

impl Handler<CatchUpEnded> for ClusterActor {
    type Result = ();

    fn handle(&mut self, msg: CatchUpEnded, ctx: &mut Context<Self>) {
        let t0 = self.stats.begin_item();
        let took = msg.started.elapsed().as_millis() as u64;
        let ok = msg.result.is_ok();
        let counters = &self.node.cluster.counters;
        match &msg.result {
            Ok(records) => {
                counters
                    .catch_ups_ok
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                ev::CatchUpFinished {
                    peer: &msg.peer,
                    records: *records,
                    took_ms: took,
                }
                .emit(&self.log);
            }
            Err(e) => {
                counters
                    .catch_ups_failed
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let attempt = self.catchups.failures(&msg.peer) + 1;
                let suppressed = self.node.cluster.may_log("catch_up_failed");
                ev::CatchUpFailed {
                    peer: &msg.peer,
                    attempt,
                    took_ms: took,
                    suppressed: suppressed.unwrap_or(0),
                    err: ErrField::new(e.code(), e),
                }
                .emit_if(&self.log, suppressed.is_some());
            }
        }
        if let Some(at) = self.catchups.ended(&msg.peer, ok, Instant::now()) {
            self.schedule_catch_up(msg.peer, at, ctx);
        }
        self.stats.end(t0);
    }
}

impl Handler<PullEnded> for ClusterActor {
    type Result = ();

    fn handle(&mut self, msg: PullEnded, ctx: &mut Context<Self>) {
        let t0 = self.stats.begin_item();
        let still_member = self.node.cluster.table().member(&msg.source).is_some();
        self.rounds.merged(msg.round, msg.pulled.records);
        let left = msg.partitions[msg.pulled.partitions_done.min(msg.partitions.len())..].to_vec();
        match msg.pulled.failure {
            Some(e) if migration::retries(msg.attempt, still_member) => {
                // Resumed where it stopped: the merged partitions are not pulled again.
                ev::PullFailed {
                    peer: &msg.source,
                    partitions: left.len(),
                    attempt: msg.attempt,
                    err: ErrField::new(e.code(), &e),
                }
                .emit(&self.log);
                let (round, source, attempt) = (msg.round, msg.source, msg.attempt + 1);
                ctx.run_later(REDIAL_AFTER * attempt, move |act, ctx| {
                    act.pull(round, source, left, attempt, ctx)
                });
                self.stats.end(t0);
                return;
            }
            failure => {
                // What was given up no longer counts as pending, and is served as it is.
                self.node
                    .cluster
                    .counters
                    .migration_pending
                    .fetch_sub(left.len() as i64, std::sync::atomic::Ordering::Relaxed);
                self.node.cluster.set_arriving(&left, false);
                if let Some(e) = &failure {
                    ev::PullGivenUp {
                        peer: &msg.source,
                        partitions: left.len(),
                        err: ErrField::new(e.code(), e),
                    }
                    .emit(&self.log);
                }
                if !left.is_empty() {
                    // A catch-up from the source may have skipped these for this pull.
                    if let Some(at) = self.catchups.request(&msg.source, Instant::now()) {
                        self.schedule_catch_up(msg.source.clone(), at, ctx);
                    }
                }
                if let Some(round) = self.rounds.source_ended(msg.round, failure.is_some()) {
                    ev::MigrationFinished {
                        round: msg.round,
                        partitions: round.partitions,
                        records: round.records,
                        failed_sources: round.failed,
                        took_ms: round.started.elapsed().as_millis() as u64,
                    }
                    .emit(&self.log);
                    if round.makes_ready() {
                        self.synced = true;
                        self.ready_if_synced();
                    }
                    if self.rounds.is_empty() && self.node.cluster.partitioned() {
                        // What this node gave up can be handed over now.
                        self.release(ctx);
                    }
                }
            }
        }
        self.stats.end(t0);
    }
}

impl Handler<AntiEntropyEnded> for ClusterActor {
    type Result = ();

    fn handle(&mut self, msg: AntiEntropyEnded, _: &mut Context<Self>) {
        let r = msg.0;
        self.comparing = false;
        debug!(self.log, "anti-entropy round"; "compared" => r.compared, "busy" => r.busy,
            "repaired" => r.repaired, "failed" => r.failed,
            "tookMs" => r.took.as_secs_f64() * 1000.0);
    }
}

impl Handler<ReleaseEnded> for ClusterActor {
    type Result = ();

    fn handle(&mut self, msg: ReleaseEnded, _: &mut Context<Self>) {
        let r = msg.0;
        self.releasing = false;
        self.records_by_role = r.records_by_role;
        self.released += r.partitions as u64;
        if r.partitions > 0 {
            ev::PartitionsHandedOver {
                partitions: r.partitions,
                records: r.records,
                kept_back: r.kept_back,
            }
            .emit(&self.log);
        }
        if let Some(e) = &r.failure {
            let suppressed = self.release_log.check(Instant::now());
            ev::HandoverIncomplete {
                kept_back: r.kept_back,
                suppressed: suppressed.unwrap_or(0),
                err: ErrField::new(e.code(), e),
            }
            .emit_if(&self.log, suppressed.is_some());
        }
    }
}
