//! Membership over foca: seeds resolved and announced to, datagrams in and out (sealed with the
//! cluster secret), foca's timers, and what its notifications mean for this node (joined, down,
//! left, rejoined, split healed; live queries told to resubscribe).
use super::*;

impl ClusterActor {
    /// Resolves the seeds off the actor (host names may take a while), then announces: to
    /// every seed address and former member when this node is alone, else to one of them that
    /// is not a member now ([`ClusterActor::probe_outside`]). One resolution at a time.
    pub(super) fn announce_to_seeds(&mut self, ctx: &mut Context<Self>) {
        if self.resolving {
            return;
        }
        if self.seeds.is_empty() {
            self.announce_resolved(Vec::new(), ctx);
            return;
        }
        self.resolving = true;
        let seeds = self.seeds.clone();
        let resolve = async move {
            let mut out = Vec::with_capacity(seeds.len());
            for seed in seeds {
                let addrs = tokio::net::lookup_host(seed.as_str())
                    .await
                    .map(|a| a.collect::<Vec<SocketAddr>>());
                out.push((seed, addrs));
            }
            out
        };
        ctx.spawn(resolve.into_actor(self).map(|resolved, act, ctx| {
            act.resolving = false;
            act.announce_resolved(resolved, ctx);
        }));
    }

    pub(super) fn announce_resolved(
        &mut self,
        resolved: Vec<(String, std::io::Result<Vec<SocketAddr>>)>,
        ctx: &mut Context<Self>,
    ) {
        if self.leaving {
            return;
        }
        let mut seed_addrs = Vec::new();
        for (seed, addrs) in resolved {
            match addrs {
                // Every address of a seed: a name may stand for many.
                Ok(addrs) => seed_addrs.extend(addrs.into_iter().filter(|a| !self.is_self(*a))),
                Err(e) => {
                    let suppressed = self.seed_log.check(Instant::now());
                    ev::SeedUnresolved {
                        seed: &seed,
                        suppressed: suppressed.unwrap_or(0),
                        err: ErrField::new("resolve", e),
                    }
                    .emit_if(&self.log, suppressed.is_some());
                }
            }
        }
        seed_addrs.sort();
        seed_addrs.dedup();
        self.seed_addrs = seed_addrs;
        if self.foca.num_members() == 0 {
            // Alone: everyone it may find, former members too, so a split heals without seeds.
            let mut all: BTreeSet<SocketAddr> = self.seed_addrs.iter().copied().collect();
            all.extend(self.known_addrs.keys().copied());
            for addr in all {
                debug!(self.log, "announcing while alone"; "addr" => %addr);
                self.announce_to(addr);
            }
            self.probe_seeds_secret(ctx);
        } else {
            self.probe_outside();
        }
        self.drain(ctx);
    }

    /// Alone past the join timeout with a cluster secret: a handshake with each seed address
    /// tells whether it shares the secret, and the probe logs an error when it does not.
    pub(super) fn probe_seeds_secret(&mut self, ctx: &mut Context<Self>) {
        let now = Instant::now();
        if self.node.cluster.keys.is_none()
            || self.seed_addrs.is_empty()
            || now < self.secret_probe_after
            || self.secret_probe.check(now).is_none()
        {
            return;
        }
        for addr in self.seed_addrs.clone() {
            let node = self.node.clone();
            let connect = async move { dial_link(&node, addr).await };
            ctx.spawn(connect.into_actor(self).map(|res, act, _| {
                if let Ok(stream) = res {
                    PeerConn::start(act.node.clone(), stream, Direction::SecretProbe);
                }
            }));
        }
    }

    /// Announces to one seed address or former member that is not a member now. After a split
    /// longer than foca keeps down members (`remove_down_after`) the two sides have forgotten
    /// each other, and nothing else would ever cross: this finds the other side again.
    pub(super) fn probe_outside(&mut self) {
        let members: BTreeSet<SocketAddr> = self.foca.iter_members().map(|m| m.id().addr).collect();
        let outside: Vec<SocketAddr> = self
            .seed_addrs
            .iter()
            .chain(self.known_addrs.keys())
            .copied()
            .filter(|a| !members.contains(a) && !self.is_self(*a))
            .collect();
        if outside.is_empty() {
            return;
        }
        let addr = outside[rand::random_range(0..outside.len())];
        debug!(self.log, "announcing to an address outside the membership"; "addr" => %addr);
        self.announce_to(addr);
    }

    /// Announces to `addr` unless it is this node.
    pub(super) fn announce_to(&mut self, addr: SocketAddr) {
        if self.is_self(addr) {
            return;
        }
        if let Err(e) = self
            .foca
            .announce(NodeIdentity::seed(addr), &mut self.runtime)
        {
            ev::AnnounceFailed {
                addr: Shown(&addr),
                err: ErrField::new("foca", e),
            }
            .emit(&self.log);
        }
    }

    pub(super) fn is_self(&self, addr: SocketAddr) -> bool {
        let me = self.identity.addr;
        let local = self.socket.local_addr().ok();
        addr == me
            || local == Some(addr)
            || (addr.port() == me.port()
                && (addr.ip().is_loopback() || addr.ip().is_unspecified())
                && local.is_some_and(|l| l.ip().is_unspecified() || l.ip().is_loopback()))
    }

    /// Carries out what foca asked for: datagrams, timers, notifications (which may ask for
    /// more: a rejoin announces).
    pub(super) fn drain(&mut self, ctx: &mut Context<Self>) {
        loop {
            let mut busy = false;
            let mut notes = Vec::new();
            while let Some(n) = self.runtime.to_notify() {
                notes.push(n);
            }
            if notes
                .iter()
                .any(|n| matches!(n, OwnedNotification::Rejoin(_)))
            {
                // What foca queued with the rejoin carries its old view (the other side of a
                // split as down) under the new identity: the rebuilt membership announces
                // instead.
                while self.runtime.to_send().is_some() {}
                while self.runtime.to_schedule().is_some() {}
            }
            while let Some((to, data)) = self.runtime.to_send() {
                busy = true;
                self.send(to.addr, data);
            }
            while let Some((after, timer)) = self.runtime.to_schedule() {
                busy = true;
                let epoch = self.epoch;
                ctx.run_later(after, move |act, ctx| {
                    if act.epoch == epoch {
                        act.timer(timer, ctx);
                    }
                });
            }
            for n in notes {
                busy = true;
                self.notified(n, ctx);
            }
            if !busy {
                break;
            }
        }
        self.watch_states();
        self.refresh_table(ctx);
    }

    /// `data` as it goes on the wire: sealed with the cluster secret when there is one.
    pub(super) fn sealed(&self, data: Bytes) -> Bytes {
        match &self.node.cluster.keys {
            Some(keys) => Bytes::from(keys.seal(&data)),
            None => data,
        }
    }

    pub(super) fn send(&self, to: SocketAddr, data: Bytes) {
        let data = self.sealed(data);
        match self.socket.try_send_to(&data, to) {
            Ok(_) => {}
            // A fresh socket may not be writable until the reactor polled it once.
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                let socket = self.socket.clone();
                actix_rt::spawn(async move {
                    let _ = socket.send_to(&data, to).await;
                });
            }
            Err(e) => {
                debug!(self.log, "cluster send failed"; "addr" => %to, "err" => err_kv("send", e));
            }
        }
    }

    pub(super) fn timer(&mut self, timer: Timer<NodeIdentity>, ctx: &mut Context<Self>) {
        if self.leaving {
            return;
        }
        let t0 = self.stats.begin_item();
        if let Err(e) = self.foca.handle_timer(timer, &mut self.runtime) {
            debug!(self.log, "membership timer failed"; "err" => err_kv("foca", e));
        }
        self.drain(ctx);
        self.stats.end(t0);
    }

    pub(super) fn notified(&mut self, n: OwnedNotification<NodeIdentity>, ctx: &mut Context<Self>) {
        let states = &self.states;
        let change = classify(n, &self.identity.node_id, |id| states.get(id).copied());
        match change {
            Change::Joined { member, clash } => {
                if clash {
                    ev::NodeIdClash {
                        peer: &member.node_id,
                        addr: Shown(&member.addr),
                        own_addr: Shown(&self.identity.addr),
                        err: ErrField::fixed(
                            "node_id_clash",
                            "another member announces this node's id",
                        ),
                    }
                    .emit(&self.log);
                }
                ev::MemberJoined {
                    peer: &member.node_id,
                    addr: Shown(&member.addr),
                    generation: member.generation,
                    members: self.members(),
                }
                .emit(&self.log);
                self.back_from_down(&member);
            }
            Change::Down(id) => {
                ev::MemberDown {
                    peer: &id.node_id,
                    addr: Shown(&id.addr),
                    generation: id.generation,
                    members: self.members(),
                    err: ErrField::fixed(
                        "member_down",
                        "the member stopped answering probes and was declared down",
                    ),
                }
                .emit(&self.log);
                if self.down.len() < MAX_REMEMBERED_DOWN {
                    self.down
                        .insert(id.node_id.clone(), (Instant::now(), id.generation));
                }
            }
            Change::Left(id) => {
                ev::MemberLeft {
                    peer: &id.node_id,
                    addr: Shown(&id.addr),
                    generation: id.generation,
                    members: self.members(),
                }
                .emit(&self.log);
                self.left.insert(id);
            }
            Change::Renamed { old, new } => {
                ev::MemberRejoined {
                    peer: &new.node_id,
                    addr: Shown(&new.addr),
                    generation: new.generation,
                    previous_peer: &old.node_id,
                    previous_generation: old.generation,
                    members: self.members(),
                }
                .emit(&self.log);
                self.back_from_down(&new);
            }
            Change::Rejoined(id) => {
                ev::RejoinedAsNewGeneration {
                    generation: id.generation,
                    previous_generation: self.identity.generation,
                    members: self.members(),
                    err: ErrField::fixed(
                        "declared_down",
                        "the other members had declared this node down",
                    ),
                }
                .emit(&self.log);
                // The others declared this node down and it reaches them again: from this
                // side, the split (or the pause) healed.
                self.heals += 1;
                self.resync.get_or_insert(("rejoined", Instant::now()));
                ev::SplitHealed {
                    side: "rejoined",
                    generation: Some(id.generation),
                    members: self.members(),
                    ..Default::default()
                }
                .emit(&self.log);
                self.rejoin(id, ctx);
            }
            Change::Active => {
                ev::ClusterActive {
                    members: self.members(),
                }
                .emit(&self.log);
            }
            Change::Idle => {
                ev::ClusterIdle { members: 1 }.emit(&self.log);
            }
            Change::Defunct => {
                ev::MembershipDefunct {
                    err: ErrField::fixed("defunct", "the other members declared this node down"),
                }
                .emit(&self.log);
            }
            Change::Other => {}
        }
    }

    /// Tells every connection with a live query to subscribe again, when something made it
    /// miss changes (see `resync`).
    pub(super) fn resync_live_queries(&mut self) {
        // The catch-ups the reconnections ask for are scheduled a moment after them.
        let Some((reason, _)) = self
            .resync
            .take_if(|(_, since)| since.elapsed() >= RESYNC_SETTLE)
        else {
            return;
        };
        for stripe in self.node.queue.stripes.iter() {
            stripe.mailbox.do_send(ResyncLiveQueries);
        }
        ev::LiveQueriesResynced {
            reason,
            members: self.members(),
        }
        .emit(&self.log);
    }

    /// A member this node saw declared down is back. With its next generation (foca renews an
    /// identity by one) it was cut off or paused, not restarted (a restart's generation is its
    /// start time): the split healed.
    pub(super) fn back_from_down(&mut self, id: &NodeIdentity) {
        let Some((since, generation)) = self.down.remove(&id.node_id) else {
            return;
        };
        if !back_from_split(generation, id.generation) {
            return;
        }
        self.heals += 1;
        // Its side took writes meanwhile, and their changes never reached this side.
        self.resync.get_or_insert(("member back", Instant::now()));
        ev::SplitHealed {
            side: "stayed",
            peer: Some(&id.node_id),
            apart_ms: Some(since.elapsed().as_millis() as u64),
            members: self.members(),
            ..Default::default()
        }
        .emit(&self.log);
    }

    /// The cluster declared this node down and foca renewed its identity: continue as that
    /// generation with a fresh membership view. The old view holds the other side of a split
    /// as down, and would tell them so the moment they accept the new identity, making them
    /// rejoin too; a fresh one learns the cluster from the members' own answers.
    pub(super) fn rejoin(&mut self, id: NodeIdentity, ctx: &mut Context<Self>) {
        let known: Vec<SocketAddr> = self
            .foca
            .iter_membership_state()
            .map(|m| m.id().addr)
            .collect();
        self.remember(known);
        let rng = StdRng::seed_from_u64(rand::random());
        self.foca = Foca::new(id.clone(), foca_config(self.probe), rng, WireCodec);
        self.epoch += 1;
        self.states.clear();
        self.left.clear();
        // Counted as healed once, as "rejoined": the members it held down come back with it.
        self.down.clear();
        // Every peer dials the new generation again, and each of those connections asks for
        // its catch-up: the ones asked for before the rejoin would only come first, for nothing.
        self.catchups = CatchUps::default();
        self.node.cluster.set_generation(id.generation);
        self.identity = id;
        // The fresh view has no members yet: keep the table (and the links) until it has, so
        // writes are not acknowledged by this node alone meanwhile.
        self.rejoined_at = Some(Instant::now());
        self.fresh_since = self.rejoined_at;
        self.verdicts_ignored.clear();
        let addrs: Vec<SocketAddr> = self.known_addrs.keys().copied().collect();
        for addr in addrs {
            self.announce_to(addr);
        }
        self.announce_to_seeds(ctx);
    }

    /// Notes `addrs` as member addresses seen now; forgets those unseen for a long time.
    pub(super) fn remember(&mut self, addrs: impl IntoIterator<Item = SocketAddr>) {
        let now = Instant::now();
        self.known_addrs
            .retain(|_, seen| now.duration_since(*seen) < KNOWN_ADDR_TTL);
        for addr in addrs {
            if self.known_addrs.len() < MAX_KNOWN_ADDRS || self.known_addrs.contains_key(&addr) {
                self.known_addrs.insert(addr, now);
            }
        }
    }

    /// A datagram foca must not see: a member this node holds down, telling this node that it
    /// is the one down, while this node's side is a majority (see [`heeds_down_verdict`]) and
    /// for at most a few probe periods per sender (the other side rejoins within one round
    /// trip; if it does not, it thinks it is the majority too, and this node gives way).
    pub(super) fn is_ignored_verdict(&mut self, data: &[u8]) -> bool {
        let Ok(header) = WireCodec.decode_header(data) else {
            return false;
        };
        if header.message != FocaMessage::TurnUndead {
            return false;
        }
        let (mut known, mut alive, mut sender_down) = (1, 1, false);
        for m in self.foca.iter_membership_state() {
            match m.state() {
                State::Alive | State::Suspect => alive += 1,
                State::Down => sender_down |= m.id() == &header.src,
            }
            // A member that left on purpose is not part of any side.
            if !self.left.contains(m.id()) {
                known += 1;
            }
        }
        if !sender_down || heeds_down_verdict(alive, known) {
            return false;
        }
        let now = Instant::now();
        let grace = self.probe * 3;
        self.verdicts_ignored
            .retain(|_, since| now.duration_since(*since) < grace * 10);
        let since = *self.verdicts_ignored.entry(header.src).or_insert(now);
        now.duration_since(since) < grace
    }

    /// What foca gets of a datagram: as it came, or for a few probe periods after a rejoin
    /// without its down claims (see [`without_down_claims`]).
    pub(super) fn believed(&mut self, data: Vec<u8>) -> Vec<u8> {
        match self.fresh_since {
            Some(at) if at.elapsed() < self.probe * 5 => without_down_claims(&data).unwrap_or(data),
            Some(_) => {
                self.fresh_since = None;
                data
            }
            None => data,
        }
    }

    /// Logs members newly suspected and keeps the state table for the next notification.
    pub(super) fn watch_states(&mut self) {
        let addrs: Vec<SocketAddr> = self.foca.iter_members().map(|m| m.id().addr).collect();
        self.remember(addrs);
        if !self.left.is_empty() {
            let known: HashSet<&NodeIdentity> =
                self.foca.iter_membership_state().map(|m| m.id()).collect();
            self.left.retain(|id| known.contains(id));
        }
        let mut now: HashMap<NodeIdentity, State> = HashMap::with_capacity(self.states.len());
        for m in self.foca.iter_membership_state() {
            let before = self.states.get(m.id());
            if m.state() == State::Suspect && before != Some(&State::Suspect) {
                ev::MemberSuspected {
                    peer: &m.id().node_id,
                    addr: Shown(&m.id().addr),
                    generation: m.id().generation,
                }
                .emit(&self.log);
            }
            now.insert(m.id().clone(), m.state());
        }
        self.states = now;
    }

    /// A datagram for foca, its seal (if any) checked and taken off.
    pub(super) fn membership_datagram(&mut self, data: Vec<u8>, from: SocketAddr) {
        if self.is_ignored_verdict(&data) {
            debug!(self.log, "down verdict of a minority ignored"; "from" => %from);
        } else {
            let len = data.len();
            let data = self.believed(data);
            if let Err(e) = self.foca.handle_data(&data, &mut self.runtime) {
                self.invalid_datagram(Some(from), refusal_code(&e), len);
            }
        }
    }

    /// A datagram without the seal of this node's cluster secret: counted, and logged once a
    /// minute per address.
    pub(super) fn unsealed_datagram(&mut self, from: SocketAddr, e: &SealError, len: usize) {
        self.invalid += 1;
        let suppressed = self.node.cluster.may_log_refused(from.ip(), "datagram");
        ev::DatagramUnsealed {
            from: Shown(&from),
            reason: e.code(),
            bytes: len,
            suppressed: suppressed.unwrap_or(0),
            err: ErrField::new(e.code(), e),
        }
        .emit_if(&self.log, suppressed.is_some());
    }

    pub(super) fn invalid_datagram(
        &mut self,
        from: Option<SocketAddr>,
        reason: &'static str,
        len: usize,
    ) {
        self.invalid += 1;
        let suppressed = self.invalid_log.check(Instant::now());
        ev::DatagramInvalid {
            from: from.map(|a| a.to_string()),
            reason,
            bytes: len,
            suppressed: suppressed.unwrap_or(0),
            err: ErrField::fixed(reason, "the datagram was dropped"),
        }
        .emit_if(&self.log, suppressed.is_some());
    }
}
