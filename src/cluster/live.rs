//! Live queries across nodes (partitioned placement): a subscriber's node does not keep most
//! partitions of the map, so the changes come from the nodes that do.
//!
//! - Every node tells every peer which maps it has live subscriptions on (`INTEREST`, when the
//!   set changes and every [`INTEREST_EVERY`], so a new or reconnected peer learns it too).
//! - Every holder of a partition (owner and backups alike) sends the changes it applies to the
//!   nodes that want the map and do not keep the partition (`EVENTS`). Sending from every
//!   holder is what keeps a subscriber from missing a change when an owner dies or the table
//!   moves: while one holder applies it, some holder sends it. The receiving stripes route each
//!   change once (`queue::recency`), so the copies are not seen twice.
//! - An event names the write's origin node and client connection: the writer's own
//!   connection is excluded on its node, as on one node.
//!
//! Interest follows nodes, not partitions: a rebalance or an owner failure changes who sends,
//! never what a subscriber registered.
use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::peer::Cast;
use super::plane::DataPlane;
use super::table::Role;
use super::wire::{self, Event, Events, Interest, Kind};
use crate::queue::actor::RouteEvents;
use crate::queue::cross::OUT_CAPACITY;
use crate::queue::{Change, ChangeEvent, REMOTE_SHARD};
use crate::shard::fnv::partition_of;

/// How often the interest is sent again even when it did not change.
pub const INTEREST_EVERY: Duration = Duration::from_secs(2);

/// Starts the sending side (with partitioned placement only: with full placement every node
/// applies every write and its own shards raise the events).
pub fn start(node: &Arc<DataPlane>) {
    if !node.cluster.partitioned() {
        return;
    }
    let (tx, rx) = mpsc::channel(OUT_CAPACITY);
    node.queue.cross.connect(tx);
    actix_rt::spawn(forward(node.clone(), rx));
    actix_rt::spawn(announce(node.clone()));
}

/// Sends this node's interest to every peer on change and every [`INTEREST_EVERY`].
async fn announce(node: Arc<DataPlane>) {
    let mut changes = node.queue.cross.local_changes();
    loop {
        changes.mark_unchanged();
        let body = interest_body(&node);
        for (_, link) in node.cluster.links_except(&[]) {
            link.do_send(Cast {
                kind: Kind::Interest,
                body: body.clone(),
            });
        }
        if tokio::time::timeout(INTEREST_EVERY, changes.changed())
            .await
            .is_ok_and(|r| r.is_err())
        {
            return; // The queue is gone: the node is stopping.
        }
    }
}

/// This node's `INTEREST` as it is now. Also sent on every connection a peer opens to this
/// node, right after the handshake: a node that just joined must know at once whom to send
/// the changes of its new partitions to, not [`INTEREST_EVERY`] later.
pub fn interest_body(node: &DataPlane) -> bytes::Bytes {
    let maps = node.queue.cross.local_changes().borrow().clone();
    wire::body(&Interest {
        maps: maps.iter().map(|m| m.to_string()).collect(),
    })
}

/// Sends the changes this node applied, for partitions it keeps, to the peers that want them.
async fn forward(node: Arc<DataPlane>, mut rx: mpsc::Receiver<Vec<ChangeEvent>>) {
    let cluster = &node.cluster;
    while let Some(batch) = rx.recv().await {
        let table = cluster.table();
        let interest = cluster.peer_interest();
        let mut per_peer: BTreeMap<&str, Vec<Event>> = BTreeMap::new();
        for ev in &batch {
            let p = partition_of(&ev.key);
            if !cluster.keeps(&table, p) {
                // A stray copy (a stale forward): the holders send their own.
                continue;
            }
            for (peer, maps) in interest.iter() {
                let keeps_it = table.role(p, peer) != Role::Replica;
                if keeps_it || !maps.contains(&ev.map) || table.member(peer).is_none() {
                    continue;
                }
                per_peer
                    .entry(peer.as_str())
                    .or_default()
                    .push(to_wire(&node, ev));
            }
        }
        for (peer, events) in per_peer {
            let Some(link) = cluster.link(peer) else {
                continue;
            };
            cluster
                .counters
                .live_sent
                .fetch_add(events.len() as u64, Ordering::Relaxed);
            link.do_send(Cast {
                kind: Kind::Events,
                body: wire::body(&Events { events }),
            });
        }
    }
}

fn to_wire(node: &DataPlane, ev: &ChangeEvent) -> Event {
    let (lww, or_add, or_remove) = match &ev.change {
        Change::Lww(r) => (Some(r.clone()), None, None),
        Change::OrAdd(r) => (None, Some(r.clone()), None),
        Change::OrRemove { tag } => (None, None, Some(tag.clone())),
    };
    let origin = match &ev.origin {
        Some(o) => Some((o.node.clone(), o.writer)),
        None if ev.writer != 0 => Some((node.node_id.clone(), ev.writer)),
        None => None,
    };
    Event {
        map: ev.map.to_string(),
        key: ev.key.to_string(),
        lww,
        or_add,
        or_remove,
        origin,
        expiry: ev.expiry,
    }
}

/// A peer's `INTEREST`: remembered, and the union of every peer's maps is what shards offer.
pub fn interest_received(node: &DataPlane, peer: &str, interest: Interest) {
    let maps: HashSet<Arc<str>> = interest.maps.into_iter().map(Arc::from).collect();
    let union = node.cluster.set_peer_interest(peer, maps);
    node.queue.cross.set_wanted(union);
}

/// A peer's `EVENTS`: routed by this node's stripes to its subscribers, like its own shards'.
pub fn events_received(node: &DataPlane, events: Events) {
    let queue = &node.queue;
    let mut per_stripe: Vec<Vec<ChangeEvent>> = vec![Vec::new(); queue.stripes.len()];
    let mut received = 0u64;
    for e in events.events {
        let change = match (e.lww, e.or_add, e.or_remove) {
            (Some(r), None, None) => Change::Lww(r),
            (None, Some(r), None) => Change::OrAdd(r),
            (None, None, Some(tag)) => Change::OrRemove { tag },
            // Not one change: nothing to route.
            _ => continue,
        };
        let writer = match e.origin {
            Some((origin, conn)) if origin == node.node_id => conn,
            _ => 0,
        };
        received += 1;
        let ev = ChangeEvent {
            map: Arc::from(e.map),
            key: Arc::from(e.key),
            change,
            writer,
            shard: REMOTE_SHARD,
            seq: 0,
            origin: None,
            from_peer: true,
            expiry: e.expiry,
        };
        per_stripe[queue.stripe_of_key(&ev.key)].push(ev);
    }
    node.cluster
        .counters
        .live_received
        .fetch_add(received, Ordering::Relaxed);
    for (s, mut batch) in per_stripe.into_iter().enumerate() {
        if batch.is_empty() {
            continue;
        }
        let stripe = &queue.stripes[s];
        let fits = stripe.reserve(batch.len());
        if fits < batch.len() {
            queue
                .cross
                .dropped
                .fetch_add((batch.len() - fits) as u64, Ordering::Relaxed);
            batch.truncate(fits);
        }
        if fits > 0 {
            stripe.mailbox.do_send(RouteEvents(batch));
        }
    }
}
