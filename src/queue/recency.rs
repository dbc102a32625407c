//! Which change of a key a stripe has routed last, so a change that arrives again is dropped:
//! with partitioned placement every holder of a partition (owner and backups) sends its
//! changes to the nodes with subscribers, so a subscriber's node gets each change from each
//! holder (and, while a rebalance moves the partition here, from its own shard too). An LWW
//! change is new when its timestamp is newer than the last one routed for the key; an OR add
//! when its tag's timestamp is; an OR remove once per tag. Entries live for [`WINDOW`]: the
//! copies of one change arrive within a round trip of each other.
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Change, ChangeEvent};
use crate::protocol::types::Timestamp;

pub const WINDOW: Duration = Duration::from_secs(5);

/// (map, key, OR tag or `!tag` for a remove; none for LWW).
type Slot = (Arc<str>, Arc<str>, Option<String>);

#[derive(Default)]
pub struct Recency {
    seen: HashMap<Slot, (Option<Timestamp>, Instant)>,
}

impl Recency {
    /// Records a change routed here; `false` when an equal or newer one was routed already.
    pub fn fresh(&mut self, ev: &ChangeEvent, now: Instant) -> bool {
        let (tag, ts) = match &ev.change {
            Change::Lww(r) => (None, Some(&r.timestamp)),
            Change::OrAdd(r) => (Some(r.tag.clone()), Some(&r.timestamp)),
            Change::OrRemove { tag } => (Some(format!("!{tag}")), None),
        };
        let slot = (ev.map.clone(), ev.key.clone(), tag);
        match self.seen.get_mut(&slot) {
            Some((seen, at)) => {
                let newer = match (seen.as_ref(), ts) {
                    (Some(s), Some(t)) => t > s,
                    // An OR remove of a tag is one change, however often it comes.
                    _ => false,
                };
                if newer {
                    *seen = ts.cloned();
                    *at = now;
                }
                newer
            }
            None => {
                self.seen.insert(slot, (ts.cloned(), now));
                true
            }
        }
    }

    /// Forgets what is older than [`WINDOW`].
    pub fn expire(&mut self, now: Instant) {
        self.seen
            .retain(|_, (_, at)| now.saturating_duration_since(*at) < WINDOW);
    }

    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::types::{LwwRecord, OrMapRecord};

    fn ts(millis: u64) -> Timestamp {
        Timestamp {
            millis,
            counter: 0,
            node_id: "w".into(),
        }
    }

    fn ev(key: &str, change: Change) -> ChangeEvent {
        ChangeEvent {
            map: "m".into(),
            key: key.into(),
            change,
            writer: 0,
            shard: super::super::REMOTE_SHARD,
            seq: 0,
            origin: None,
            from_peer: true,
            expiry: false,
        }
    }

    fn lww(millis: u64) -> Change {
        Change::Lww(LwwRecord {
            value: rmpv::Value::from(1),
            timestamp: ts(millis),
            ttl_ms: None,
        })
    }

    #[test]
    fn each_change_passes_once_and_newer_ones_pass_too() {
        let mut r = Recency::default();
        let now = Instant::now();
        assert!(r.fresh(&ev("k", lww(10)), now));
        assert!(!r.fresh(&ev("k", lww(10)), now), "the backup's copy");
        assert!(!r.fresh(&ev("k", lww(9)), now), "an older change");
        assert!(r.fresh(&ev("k", lww(11)), now));
        assert!(r.fresh(&ev("other", lww(10)), now));
        let add = |millis| {
            Change::OrAdd(OrMapRecord {
                value: rmpv::Value::from(1),
                timestamp: ts(millis),
                tag: "t".into(),
                ttl_ms: None,
            })
        };
        assert!(
            r.fresh(&ev("k", add(10)), now),
            "an OR add has another slot than the key's LWW change"
        );
        assert!(!r.fresh(&ev("k", add(10)), now));
        let remove = || Change::OrRemove { tag: "t".into() };
        assert!(r.fresh(&ev("k", remove()), now));
        assert!(!r.fresh(&ev("k", remove()), now));
    }

    #[test]
    fn entries_are_forgotten_after_the_window() {
        let mut r = Recency::default();
        let t0 = Instant::now();
        r.fresh(&ev("k", lww(10)), t0);
        r.expire(t0 + WINDOW / 2);
        assert_eq!(r.len(), 1);
        r.expire(t0 + WINDOW * 2);
        assert!(r.is_empty());
    }
}
