//! The bounded, striped event queue: the path from an applied write to the clients that must
//! hear of it, and of topic messages to their subscribers.
//!
//! A key always maps to the same stripe (`fnv1a(key) % stripes`), a topic too, so events of one
//! key (messages of one topic) reach every client in order. Each stripe is an actor on a shard's
//! data thread (stripe i on thread i % shards), holding, for its keys, the live membership of
//! every query subscription.
//!
//! Bounds: a stripe holds at most `capacity / stripes` change events. Shards reserve room
//! before handing a batch over ([`StripeHandle::reserve`], a lock-free counter shared with the
//! stripe); what does not fit is rejected for routing and counted, while the write itself stays
//! applied and acknowledged (subscribers recover through Merkle sync). Topic messages go through
//! the same stripes (for their order) but are not change events: they are not counted in the
//! event-queue families and are bounded by the publisher's token bucket instead.
pub mod actor;
pub mod cross;
pub mod events;
pub mod outbound;
pub mod recency;
pub mod subscriptions;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::protocol::types::{LwwRecord, OrMapRecord};
use crate::shard::fnv::fnv1a;
use crate::telemetry::report::Mailbox;
use actor::StripeActor;

/// A connection, as the queue knows it: its number (for writer exclusion) and its outbound
/// mailbox.
pub type ConnId = u64;

/// What changed.
#[derive(Clone, Debug)]
pub enum Change {
    /// An LWW write; a tombstone (nil value) is a REMOVE.
    Lww(LwwRecord),
    OrAdd(OrMapRecord),
    OrRemove {
        tag: String,
    },
}

/// One changed key, as a shard hands it to the queue.
#[derive(Clone, Debug)]
pub struct ChangeEvent {
    pub map: Arc<str>,
    pub key: Arc<str>,
    pub change: Change,
    /// The connection that wrote it (gets no echo); 0 for writes with no client.
    pub writer: ConnId,
    /// The shard that applied it and its apply sequence number there, so a subscription
    /// seeded from a snapshot can tell which events the snapshot already contains
    /// ([`REMOTE_SHARD`] for an event another node applied).
    pub shard: u16,
    pub seq: u64,
    /// The node and connection a peer's write came from, when a peer sent it here.
    pub origin: Option<Arc<Origin>>,
    /// Another node applied it (partitioned placement) and sent it here: every holder of the
    /// partition does, so a copy may arrive more than once.
    pub from_peer: bool,
    /// A TTL ran out (the sweep): announced with the old record's timestamp.
    pub expiry: bool,
}

/// The `shard` of events another node applied: no local snapshot sequence covers them.
pub const REMOTE_SHARD: u16 = u16::MAX;

/// Where a peer's write came from: its origin node and the client connection there, so the
/// writer gets no echo of its own write from any node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    pub node: String,
    pub writer: ConnId,
}

/// The sending side of one stripe: its mailbox and the shared count of events in it.
#[derive(Clone)]
pub struct StripeHandle {
    pub mailbox: Mailbox<StripeActor>,
    queued: Arc<AtomicUsize>,
    capacity: usize,
}

impl StripeHandle {
    pub fn new(mailbox: Mailbox<StripeActor>, queued: Arc<AtomicUsize>, capacity: usize) -> Self {
        StripeHandle {
            mailbox,
            queued,
            capacity,
        }
    }

    /// Reserves room for up to `n` events; returns how many fit.
    pub fn reserve(&self, n: usize) -> usize {
        reserve_room(&self.queued, self.capacity, n)
    }

    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

/// All stripes. Cloned into every shard and connection.
#[derive(Clone)]
pub struct EventQueue {
    pub stripes: Arc<[StripeHandle]>,
    /// Live events across nodes (partitioned placement).
    pub cross: Arc<cross::CrossNode>,
}

impl EventQueue {
    pub fn stripe_of_key(&self, key: &str) -> usize {
        fnv1a(key) as usize % self.stripes.len()
    }

    pub fn stripe_of_topic(&self, topic: &str) -> usize {
        // Topics and keys share stripes; that only mixes their loads, never their orders.
        fnv1a(topic) as usize % self.stripes.len()
    }

    pub fn capacity(&self) -> usize {
        self.stripes.iter().map(StripeHandle::capacity).sum()
    }
}

/// Lock-free: bumps `queued` by as much of `n` as fits under `capacity`.
fn reserve_room(queued: &AtomicUsize, capacity: usize, n: usize) -> usize {
    let mut current = queued.load(Ordering::Acquire);
    loop {
        let take = n.min(capacity.saturating_sub(current));
        if take == 0 {
            return 0;
        }
        match queued.compare_exchange_weak(
            current,
            current + take,
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => return take,
            Err(actual) => current = actual,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserve_never_exceeds_capacity() {
        let queued = AtomicUsize::new(0);
        assert_eq!(reserve_room(&queued, 10, 4), 4);
        assert_eq!(reserve_room(&queued, 10, 4), 4);
        assert_eq!(reserve_room(&queued, 10, 4), 2);
        assert_eq!(reserve_room(&queued, 10, 1), 0);
        queued.fetch_sub(3, Ordering::AcqRel);
        assert_eq!(reserve_room(&queued, 10, 5), 3);
    }

    #[test]
    fn reserve_is_exact_under_contention() {
        let queued = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let q = queued.clone();
                std::thread::spawn(move || {
                    (0..1000).map(|_| reserve_room(&q, 1500, 1)).sum::<usize>()
                })
            })
            .collect();
        let total: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(total, 1500);
        assert_eq!(queued.load(Ordering::Acquire), 1500);
    }
}
