//! Links to the other members: which to dial or close for a new table, dialling (over TLS when
//! configured), redialling, and which missing links are faults.
use super::*;

impl ClusterActor {
    /// One outbound link per other member: a link to an older generation than the table's is
    /// closed and the member dialled again; a link to a newer one (the member rejoined and the
    /// table here has not caught up) is kept.
    pub(super) fn sync_links(&mut self, table: &PartitionTable, ctx: &mut Context<Self>) {
        let me = self.identity.node_id.as_str();
        let dialled = self
            .dialled
            .iter()
            .map(|(id, d)| (id.as_str(), d.generation));
        let LinkChanges { close, dial } = link_changes(table, me, dialled);
        for id in close {
            if let Some(dial) = self.dialled.remove(&id) {
                if let Some(link) = &dial.link {
                    self.node.cluster.with_links(|l| {
                        if l.get(&id).map(|m| &m.addr) == Some(link) {
                            l.remove(&id);
                        }
                    });
                }
                // Stopping it fails its waiting requests now rather than at the timeout.
                dial.close();
            }
        }
        for m in dial {
            self.dialled
                .insert(m.node_id.clone(), Dial::new(m.generation));
            self.dial(m.clone(), ctx);
        }
        let now = Instant::now();
        for m in table.members() {
            if m.node_id == self.identity.node_id {
                continue;
            }
            if let Some(at) = self.catchups.member_now(&m.node_id, now) {
                self.schedule_catch_up(m.node_id.clone(), at, ctx);
            }
        }
    }

    /// Starts an attempt to link to `member`, unless one is under way or the link is up.
    pub(super) fn dial(&mut self, member: TableMember, ctx: &mut Context<Self>) {
        let attempt = self.next_attempt;
        match self.dialled.get_mut(&member.node_id) {
            Some(dial) if dial.link.is_none() && dial.attempt.is_none() => {
                dial.attempt = Some(attempt);
            }
            _ => return,
        }
        self.next_attempt += 1;
        let node = self.node.clone();
        let addr = member.peer_addr;
        let connect = async move { dial_link(&node, addr).await };
        ctx.spawn(connect.into_actor(self).map(move |res, act, ctx| {
            let leaving = act.leaving;
            let Some(dial) = act
                .dialled
                .get_mut(&member.node_id)
                .filter(|d| d.attempt == Some(attempt))
            else {
                // Replaced (the member restarted or left meanwhile): the stream just drops.
                return;
            };
            let (reason, failure) = match res {
                Ok(_) if leaving => return,
                Ok(stream) => {
                    let conn = PeerConn::start(
                        act.node.clone(),
                        stream,
                        Direction::Outbound {
                            node_id: member.node_id.clone(),
                            generation: dial.generation,
                            manager: ctx.address(),
                        },
                    );
                    dial.handshake = Some(conn);
                    return;
                }
                Err(failure) => failure,
            };
            dial.attempt = None;
            act.node.cluster.counters.peer_error(reason);
            let refused = reason == PeerError::Tls;
            match refused.then(|| {
                act.node
                    .cluster
                    .may_log_refused(member.peer_addr.ip(), "tls_dial")
            }) {
                // A peer whose certificate this node does not trust (or the reverse) is a
                // misconfiguration an operator must see; a peer not listening yet is not.
                Some(suppressed) => ev::DialTlsFailed {
                    peer: &member.node_id,
                    addr: Shown(&member.peer_addr),
                    suppressed: suppressed.unwrap_or(0),
                    err: ErrField::new(reason.code(), failure),
                }
                .emit_if(&act.log, suppressed.is_some()),
                None => {
                    debug!(act.log, "peer dial failed"; "peer" => &member.node_id,
                        "addr" => %member.peer_addr, "err" => err_kv(reason.code(), failure));
                }
            }
            let id = member.node_id.clone();
            ctx.run_later(REDIAL_AFTER, move |act, ctx| act.redial(&id, ctx));
        }));
    }

    /// Dials `node_id` again if it is still a member, has no link and no attempt under way.
    pub(super) fn redial(&mut self, node_id: &str, ctx: &mut Context<Self>) {
        let idle = self
            .dialled
            .get(node_id)
            .is_some_and(|d| d.link.is_none() && d.attempt.is_none());
        if self.leaving || !idle {
            return;
        }
        if let Some(member) = self.node.cluster.table().member(node_id).cloned() {
            self.dial(member, ctx);
        }
    }

    /// Members alive without a link for longer than [`super::links::LINK_GRACE`]: logged
    /// (once, then every [`MISSING_LINK_LOG_EVERY`]) and published for `/ready`.
    pub(super) fn check_links(&mut self) {
        if self.leaving {
            return;
        }
        let table = self.node.cluster.table();
        let now = Instant::now();
        let mut missing = Vec::new();
        for (id, dial) in &mut self.dialled {
            let Some(since) = missing_since(dial.down_since, table.member(id).is_some(), now)
            else {
                continue;
            };
            dial.reported = true;
            let suppressed = dial.missing_log.check(now);
            ev::LinkMissing {
                peer: id,
                down_for_ms: now.duration_since(since).as_millis() as u64,
                suppressed: suppressed.unwrap_or(0),
                err: ErrField::fixed(
                    "link_missing",
                    "no node-to-node connection to a live member",
                ),
            }
            .emit_if(&self.log, suppressed.is_some());
            missing.push(MissingLink {
                node_id: id.clone(),
                since,
            });
        }
        missing.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        let whole = missing.is_empty();
        self.node.cluster.set_missing_links(missing);
        if whole && self.rounds.is_empty() && self.catchups.idle() {
            self.resync_live_queries();
        }
    }
}

/// How long a link to a member that left still waits for the answers to its requests.
const LINK_DRAIN: Duration = Duration::from_secs(1);

/// Closes an outbound link whose member left the table.
#[derive(Message)]
#[rtype(result = "()")]
pub struct StopLink;

impl Handler<StopLink> for PeerConn {
    type Result = ();

    fn handle(&mut self, _: StopLink, ctx: &mut Context<PeerConn>) {
        // A member that left gracefully still answers for a moment (it lingers): requests
        // already on the link get their answers instead of failing with the connection.
        if self.has_pending() {
            ctx.run_later(LINK_DRAIN, |_, ctx| ctx.stop());
        } else {
            ctx.stop();
        }
    }
}

impl Handler<LinkUp> for ClusterActor {
    type Result = ();

    fn handle(&mut self, msg: LinkUp, _: &mut Context<Self>) {
        let t0 = self.stats.begin_item();
        match self.dialled.get_mut(&msg.node_id) {
            Some(dial)
                if dial.handshake.as_ref() == Some(&msg.link.addr)
                    && msg.generation >= dial.generation =>
            {
                dial.generation = msg.generation;
                dial.handshake = None;
                dial.attempt = None;
                dial.link = Some(msg.link.addr.clone());
                if dial.reported {
                    let down = dial
                        .down_since
                        .map_or(0, |t| t.elapsed().as_millis() as u64);
                    ev::LinkRestored {
                        peer: &msg.node_id,
                        down_for_ms: down,
                    }
                    .emit(&self.log);
                }
                dial.down_since = None;
                let was_reported = std::mem::take(&mut dial.reported);
                self.node
                    .cluster
                    .with_links(|l| l.insert(msg.node_id, msg.link));
                if was_reported {
                    self.check_links();
                }
            }
            // The member left or restarted meanwhile: this connection is not its link.
            _ => msg.link.do_send(StopLink),
        }
        self.stats.end(t0);
    }
}

impl Handler<LinkDown> for ClusterActor {
    type Result = ();

    /// A link lost, or an attempt that connected and then failed its handshake (refused,
    /// reset, timed out): either way the member is dialled again.
    fn handle(&mut self, msg: LinkDown, ctx: &mut Context<Self>) {
        let t0 = self.stats.begin_item();
        self.node.cluster.with_links(|l| {
            if l.get(&msg.node_id).map(|m| &m.addr) == Some(&msg.link) {
                l.remove(&msg.node_id);
            }
        });
        if let Some(dial) = self.dialled.get_mut(&msg.node_id) {
            let redial = if dial.link.as_ref() == Some(&msg.link) {
                dial.link = None;
                dial.down_since = Some(Instant::now());
                ev::LinkLost { peer: &msg.node_id }.emit(&self.log);
                true
            } else if dial.handshake.as_ref() == Some(&msg.link) {
                dial.handshake = None;
                dial.attempt = None;
                true
            } else {
                false
            };
            if redial {
                let id = msg.node_id.clone();
                ctx.run_later(REDIAL_AFTER, move |act, ctx| act.redial(&id, ctx));
            }
        }
        self.stats.end(t0);
    }
}

impl Handler<PeerConnected> for ClusterActor {
    type Result = ();

    fn handle(&mut self, msg: PeerConnected, ctx: &mut Context<Self>) {
        let t0 = self.stats.begin_item();
        if !self.leaving && msg.node_id != self.identity.node_id {
            debug!(self.log, "peer connected: catch-up requested"; "peer" => &msg.node_id,
                "generation" => msg.generation);
            if self.inbound_generation.len() >= MAX_REMEMBERED_DOWN {
                self.inbound_generation.clear();
            }
            let before = self
                .inbound_generation
                .insert(msg.node_id.clone(), msg.generation);
            if before == Some(msg.generation) {
                self.resync.get_or_insert(("link restored", Instant::now()));
            }
            if let Some(at) = self.catchups.request(&msg.node_id, Instant::now()) {
                self.schedule_catch_up(msg.node_id, at, ctx);
            }
        }
        self.stats.end(t0);
    }
}
