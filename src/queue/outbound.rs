//! A subscriber's outbound queue as the event queue sees it: where a live event for one
//! client goes, and the slow-consumer bookkeeping every stripe shares for it. The receiver is
//! any actor handling [`Deliver`] (the client connection), so the queue knows nothing of
//! connections.
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use actix::prelude::*;

use super::subscriptions::Delivery;
use crate::telemetry::mailbox::MailboxRecipient;

/// A live event for one client.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Deliver(pub Delivery);

/// After this many live broadcasts in a row found the outbound queue full, the subscriber is
/// to be closed, so that its client reconnects and resyncs instead of silently missing events.
const MAX_CONSECUTIVE_DROPS: u32 = 256;

pub struct Outbound {
    /// The receiver, with a bounded mailbox (the queue): its depth gauge, mailbox waits and
    /// dead letters count what is sent here.
    recipient: MailboxRecipient<Deliver>,
    consecutive_drops: AtomicU32,
    evict: AtomicBool,
}

/// What became of a live broadcast.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivered {
    Queued,
    /// The outbound queue was full: dropped (`topgun_outbound_dropped_total`).
    Full,
    /// The receiver had stopped (its client left): a dead letter, counted by the mailbox.
    Gone,
}

impl Outbound {
    pub fn new(recipient: MailboxRecipient<Deliver>) -> Self {
        Outbound {
            recipient,
            consecutive_drops: AtomicU32::new(0),
            evict: AtomicBool::new(false),
        }
    }

    /// A live broadcast: best effort.
    pub fn deliver(&self, delivery: Delivery) -> Delivered {
        match self.recipient.try_send(Deliver(delivery)) {
            Ok(()) => {
                self.consecutive_drops.store(0, Ordering::Relaxed);
                Delivered::Queued
            }
            Err(SendError::Full(_)) => {
                let n = self.consecutive_drops.fetch_add(1, Ordering::Relaxed) + 1;
                if n >= MAX_CONSECUTIVE_DROPS {
                    self.evict.store(true, Ordering::Relaxed);
                }
                Delivered::Full
            }
            Err(SendError::Closed(_)) => Delivered::Gone,
        }
    }

    /// Too many broadcasts in a row were dropped: the receiver should close its client.
    pub fn must_evict(&self) -> bool {
        self.evict.load(Ordering::Relaxed)
    }
}
