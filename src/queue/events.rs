//! The event queue's notable events: a stripe filling up, and refusing.
use crate::events;
use crate::telemetry::event::ErrField;

events! {
    Warning StripeNearFull = "event_queue_near_full", "event queue stripe near full" {
        queued: usize => "queued",
        capacity: usize => "capacity",
    }
    Info StripeDrained = "event_queue_below_threshold", "event queue stripe below 80 %" {
        queued: usize => "queued",
    }
    /// A shard found the stripe full: those change events are not delivered (counted in
    /// `topgun_event_queue_rejected_total`), their subscribers are told to resubscribe.
    Warning StripeRejecting = "event_queue_rejecting", "event queue stripe rejecting events" {
        stripe: usize => "stripe",
        rejected: usize => "rejected",
        capacity: usize => "capacity",
        suppressed: u64 => "suppressed",
        err: ErrField => "err",
    }
}
