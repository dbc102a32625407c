//! A subscriber's outbound queue as the event queue sees it: where a live event for one
//! client goes, and the slow-consumer bookkeeping every stripe shares for it. The receiver is
//! any actor handling [`Deliver`] (the client connection), so the queue knows nothing of
//! connections.
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, Ordering};
use std::sync::Arc;

use actix::prelude::*;

use super::subscriptions::Delivery;

/// A live event for one client.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Deliver(pub Delivery);

/// After this many live broadcasts in a row found the outbound queue full, the subscriber is
/// to be closed, so that its client reconnects and resyncs instead of silently missing events.
const MAX_CONSECUTIVE_DROPS: u32 = 256;

pub struct Outbound {
    recipient: Recipient<Deliver>,
    /// The receiver's mailbox-depth gauge (what is sent and not yet handled).
    depth: Arc<AtomicI64>,
    consecutive_drops: AtomicU32,
    evict: AtomicBool,
}

impl Outbound {
    /// `recipient` with a bounded mailbox (the queue), counted in `depth`.
    pub fn new(recipient: Recipient<Deliver>, depth: Arc<AtomicI64>) -> Self {
        Outbound {
            recipient,
            depth,
            consecutive_drops: AtomicU32::new(0),
            evict: AtomicBool::new(false),
        }
    }

    /// A live broadcast: best effort. False when it was dropped (queue full or receiver gone).
    pub fn deliver(&self, delivery: Delivery) -> bool {
        self.depth.fetch_add(1, Ordering::Relaxed);
        match self.recipient.try_send(Deliver(delivery)) {
            Ok(()) => {
                self.consecutive_drops.store(0, Ordering::Relaxed);
                true
            }
            Err(SendError::Full(_)) => {
                self.depth.fetch_sub(1, Ordering::Relaxed);
                let n = self.consecutive_drops.fetch_add(1, Ordering::Relaxed) + 1;
                if n >= MAX_CONSECUTIVE_DROPS {
                    self.evict.store(true, Ordering::Relaxed);
                }
                false
            }
            Err(SendError::Closed(_)) => {
                self.depth.fetch_sub(1, Ordering::Relaxed);
                false
            }
        }
    }

    /// Too many broadcasts in a row were dropped: the receiver should close its client.
    pub fn must_evict(&self) -> bool {
        self.evict.load(Ordering::Relaxed)
    }
}
