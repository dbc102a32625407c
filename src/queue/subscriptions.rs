//! One stripe's view of who listens: query subscriptions (with their live membership for the
//! keys of this stripe), map listeners (connections with a query on a map get `SERVER_EVENT`s)
//! and topic subscribers. Plain logic: given a change, it decides which frames go to which
//! connection (protocol.md 6.3, 6.4); the stripe actor sends them and counts.
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use bytes::Bytes;
use indexmap::IndexSet;
use rmpv::Value;

use super::{Change, ChangeEvent, ConnId};
use crate::protocol::{self, ChangeType, EventType, QueryUpdate, ServerEvent, ServerMessage};
use crate::shard::lww::is_visible;
use crate::shard::query::CompiledQuery;

/// (connection, client's query id): a subscription is keyed per connection, so two clients may
/// reuse a query id.
pub type SubKey = (ConnId, Arc<str>);

struct Subscription {
    map: Arc<str>,
    query: Arc<CompiledQuery>,
    /// A `limit` query: its window needs the global order, which only the connection has, so
    /// this stripe forwards the key's change instead of deciding the update itself.
    windowed: bool,
    /// Keys of this stripe currently in the subscriber's result set.
    members: HashSet<Arc<str>>,
    /// Until the snapshot is known: events that arrived meanwhile, replayed after it.
    pending: Option<Vec<ChangeEvent>>,
}

/// What goes to one connection.
#[derive(Debug)]
pub enum Delivery {
    /// An encoded frame for the client.
    Frame(Bytes),
    /// Several frames of one event for the same client (its `SERVER_EVENT`, then its
    /// `QUERY_UPDATE`s): one mailbox message and one socket write instead of several.
    Frames(Vec<Bytes>),
    /// A change of a windowed subscription's key, for the connection's window to judge:
    /// the key's value if it now matches, `None` if it no longer does.
    WindowChange {
        query_id: Arc<str>,
        key: Arc<str>,
        value: Option<Value>,
        /// The subscriber wrote it: update the window, send nothing (writer exclusion).
        own: bool,
    },
    /// The node may have missed changes for this subscriber's live queries (it was cut off
    /// from the grid): its client must subscribe again from fresh snapshots.
    Resync,
}

/// Deliveries for one event, and how many distinct connections they go to.
#[derive(Default, Debug)]
pub struct Routed {
    pub deliveries: Vec<(ConnId, Delivery)>,
    pub recipients: usize,
}

/// Every index is kept so that removing one subscription or topic costs O(1): a connection
/// with 100,000 live queries closes in time linear in their number, in slices
/// ([`Registry::connection_closed`]), while the stripe's thread also applies writes.
#[derive(Default)]
pub struct Registry {
    subs: HashMap<SubKey, Subscription>,
    by_map: HashMap<Arc<str>, IndexSet<SubKey>>,
    /// Query ids per connection.
    by_conn: HashMap<ConnId, HashSet<Arc<str>>>,
    topics: HashMap<Arc<str>, IndexSet<ConnId>>,
    topics_of: HashMap<ConnId, HashSet<Arc<str>>>,
}

impl Registry {
    /// Registers (or replaces) a subscription whose snapshot is still being taken: its events
    /// are buffered until [`Registry::snapshot_loaded`]. `true` when the set of maps with
    /// subscriptions changed.
    pub fn subscribe(&mut self, key: SubKey, map: Arc<str>, query: Arc<CompiledQuery>) -> bool {
        let mut maps_changed = self.unsubscribe(&key);
        let subs_of_map = self.by_map.entry(map.clone()).or_default();
        maps_changed |= subs_of_map.is_empty();
        subs_of_map.insert(key.clone());
        self.by_conn.entry(key.0).or_default().insert(key.1.clone());
        self.subs.insert(
            key,
            Subscription {
                map,
                // Grouped queries too: any change of the map can change a group.
                windowed: query.limit().is_some() || query.group().is_some(),
                query,
                members: HashSet::new(),
                pending: Some(Vec::new()),
            },
        );
        maps_changed
    }

    /// The snapshot is out: `members` are this stripe's keys of it, `seen[shard]` the apply
    /// sequence each shard had reached when it answered. Buffered events the snapshot already
    /// contains are skipped, the others are routed now (for this subscription only).
    pub fn snapshot_loaded(
        &mut self,
        key: &SubKey,
        members: Vec<Arc<str>>,
        seen: &[u64],
        now_ms: u64,
    ) -> Routed {
        let Some(sub) = self.subs.get_mut(key) else {
            return Routed::default();
        };
        sub.members = members.into_iter().collect();
        let buffered = sub.pending.take().unwrap_or_default();
        let mut routed = Routed::default();
        for ev in buffered {
            let already_in_snapshot = seen
                .get(usize::from(ev.shard))
                .is_some_and(|s| ev.seq <= *s);
            if already_in_snapshot {
                continue;
            }
            if let Some(delivery) =
                live_update(sub, key, &ev, now_ms, &mut UpdateEncoder::default())
            {
                routed.deliveries.push((key.0, delivery));
            }
        }
        routed.recipients = usize::from(!routed.deliveries.is_empty());
        routed
    }

    /// Maps with at least one subscription.
    pub fn maps(&self) -> impl Iterator<Item = &Arc<str>> + '_ {
        self.by_map.keys()
    }

    /// Removes one subscription; `true` when its map has no subscription left here.
    pub fn unsubscribe(&mut self, key: &SubKey) -> bool {
        let Some(sub) = self.subs.remove(key) else {
            return false;
        };
        if let Some(ids) = self.by_conn.get_mut(&key.0) {
            ids.remove(&key.1);
            if ids.is_empty() {
                self.by_conn.remove(&key.0);
            }
        }
        let Some(subs_of_map) = self.by_map.get_mut(&sub.map) else {
            return false;
        };
        subs_of_map.swap_remove(key);
        if subs_of_map.is_empty() {
            self.by_map.remove(&sub.map);
            return true;
        }
        false
    }

    pub fn topic_subscribe(&mut self, conn: ConnId, topic: Arc<str>) {
        if self
            .topics_of
            .entry(conn)
            .or_default()
            .insert(topic.clone())
        {
            self.topics.entry(topic).or_default().insert(conn);
        }
    }

    pub fn topic_unsubscribe(&mut self, conn: ConnId, topic: &str) {
        if let Some(set) = self.topics_of.get_mut(&conn) {
            if set.remove(topic) {
                self.drop_topic_subscriber(topic, conn);
            }
        }
    }

    fn drop_topic_subscriber(&mut self, topic: &str, conn: ConnId) {
        if let Some(subscribers) = self.topics.get_mut(topic) {
            subscribers.swap_remove(&conn);
            if subscribers.is_empty() {
                self.topics.remove(topic);
            }
        }
    }

    /// Connections with at least one live query here.
    pub fn live_connections(&self) -> impl Iterator<Item = ConnId> + '_ {
        self.by_conn
            .iter()
            .filter(|(_, ids)| !ids.is_empty())
            .map(|(conn, _)| *conn)
    }

    /// Removes at most `budget` of `conn`'s subscriptions and topics: `(done, maps_changed)`,
    /// `done` once nothing of it is left. The caller continues later with what remains, so a
    /// connection with very many subscriptions never holds the thread for long.
    pub fn connection_closed(&mut self, conn: ConnId, budget: usize) -> (bool, bool) {
        let mut left = budget;
        let mut maps_changed = false;
        let ids: Vec<Arc<str>> = self
            .by_conn
            .get(&conn)
            .map(|ids| ids.iter().take(left).cloned().collect())
            .unwrap_or_default();
        left -= ids.len();
        for id in ids {
            maps_changed |= self.unsubscribe(&(conn, id));
        }
        if let Some(topics) = self.topics_of.get_mut(&conn) {
            let some: Vec<Arc<str>> = topics.iter().take(left).cloned().collect();
            for t in &some {
                topics.remove(t);
            }
            if topics.is_empty() {
                self.topics_of.remove(&conn);
            }
            for t in some {
                self.drop_topic_subscriber(&t, conn);
            }
        }
        let done = !self.by_conn.contains_key(&conn) && !self.topics_of.contains_key(&conn);
        (done, maps_changed)
    }

    /// Subscribers of a topic other than the publisher.
    pub fn topic_recipients(&self, topic: &str, publisher: ConnId) -> Vec<ConnId> {
        self.topics
            .get(topic)
            .map(|l| l.iter().copied().filter(|c| *c != publisher).collect())
            .unwrap_or_default()
    }

    pub fn subscription_count(&self) -> usize {
        self.subs.len()
    }

    /// Frames for one change: a `SERVER_EVENT` to each connection with a query on the map, a
    /// `QUERY_UPDATE` per subscription whose result set it changes; never to the writer.
    pub fn route(&mut self, ev: &ChangeEvent, now_ms: u64) -> Routed {
        let Some(keys) = self.by_map.get(&ev.map) else {
            return Routed::default();
        };
        let mut routed = Routed::default();
        // A set, not a scan of the list: with M subscriptions a scan per subscription made
        // each write cost O(M²).
        let mut seen: HashSet<ConnId> = HashSet::with_capacity(keys.len());
        let mut listeners: Vec<ConnId> = Vec::new();
        let mut encoder = UpdateEncoder::default();
        for key in keys {
            let Some(sub) = self.subs.get_mut(key) else {
                continue;
            };
            if key.0 != ev.writer && seen.insert(key.0) {
                listeners.push(key.0);
            }
            if let Some(pending) = &mut sub.pending {
                pending.push(ev.clone());
                continue;
            }
            if let Some(delivery) = live_update(sub, key, ev, now_ms, &mut encoder) {
                routed.deliveries.push((key.0, delivery));
            }
        }
        if !listeners.is_empty() {
            let event = protocol::encode(&ServerMessage::ServerEvent {
                payload: server_event(ev),
            });
            let event = Bytes::from(event);
            // SERVER_EVENT first, then the query updates, per connection (the client merges the
            // record, then sees its query change).
            let mut grouped: Vec<(ConnId, Delivery)> = Vec::with_capacity(listeners.len());
            let mut slot: HashMap<ConnId, usize> = HashMap::with_capacity(listeners.len());
            for c in &listeners {
                slot.insert(*c, grouped.len());
                grouped.push((*c, Delivery::Frames(vec![event.clone()])));
            }
            for (c, d) in std::mem::take(&mut routed.deliveries) {
                match (d, slot.get(&c)) {
                    (Delivery::Frame(frame), Some(&i)) => {
                        if let Delivery::Frames(frames) = &mut grouped[i].1 {
                            frames.push(frame);
                        }
                    }
                    (other, _) => grouped.push((c, other)),
                }
            }
            routed.deliveries = grouped;
        }
        routed.recipients = {
            let mut distinct: Vec<ConnId> = routed.deliveries.iter().map(|(c, _)| *c).collect();
            distinct.sort_unstable();
            distinct.dedup();
            distinct.len()
        };
        routed
    }
}

fn server_event(ev: &ChangeEvent) -> ServerEvent {
    let (event_type, record, or_record, or_tag) = match &ev.change {
        Change::Lww(r) if r.is_tombstone() => (EventType::Remove, Some(r.clone()), None, None),
        Change::Lww(r) => (EventType::Put, Some(r.clone()), None, None),
        Change::OrAdd(r) => (EventType::OrAdd, None, Some(r.clone()), Some(r.tag.clone())),
        Change::OrRemove { tag } => (EventType::OrRemove, None, None, Some(tag.clone())),
    };
    ServerEvent {
        map_name: ev.map.to_string(),
        event_type,
        key: ev.key.to_string(),
        record,
        or_record,
        or_tag,
    }
}

/// The 6.3 table for one subscription and one LWW change; updates the membership. The
/// writer's own subscriptions track membership too, they just get no echo (6.4); a windowed
/// subscription gets every change of its map, since a write elsewhere can move its window.
fn live_update(
    sub: &mut Subscription,
    key: &SubKey,
    ev: &ChangeEvent,
    now_ms: u64,
    encoder: &mut UpdateEncoder,
) -> Option<Delivery> {
    let Change::Lww(record) = &ev.change else {
        return None; // queries run over LWW maps only
    };
    let was_in = sub.members.contains(&ev.key);
    let now_in = is_visible(record, now_ms) && sub.query.matches(&record.value);
    if sub.windowed {
        if now_in {
            sub.members.insert(ev.key.clone());
        } else {
            sub.members.remove(&ev.key);
        }
        return Some(Delivery::WindowChange {
            query_id: key.1.clone(),
            key: ev.key.clone(),
            value: now_in.then(|| record.value.clone()),
            own: key.0 == ev.writer,
        });
    }
    if key.0 == ev.writer {
        // Membership follows below, but no frame for the writer.
        match (was_in, now_in) {
            (false, true) => {
                sub.members.insert(ev.key.clone());
            }
            (true, false) => {
                sub.members.remove(&ev.key);
            }
            _ => {}
        }
        return None;
    }
    let (change_type, value) = match (was_in, now_in) {
        (false, true) => {
            sub.members.insert(ev.key.clone());
            (ChangeType::Enter, sub.query.project(&record.value))
        }
        (true, true) => (ChangeType::Update, sub.query.project(&record.value)),
        (true, false) => {
            sub.members.remove(&ev.key);
            (ChangeType::Leave, Value::Nil)
        }
        (false, false) => return None,
    };
    Some(Delivery::Frame(encoder.frame(
        &key.1,
        &ev.key,
        value,
        change_type,
    )))
}

/// Encodes one event's `QUERY_UPDATE`s. Subscriptions of a fan-out mostly send the same
/// change with the same (projected) value and differ only in `queryId`, so the frame is encoded
/// once around an empty query id and each subscription's id is spliced in.
#[derive(Default)]
struct UpdateEncoder {
    last: Option<(ChangeType, Value, Vec<u8>, Vec<u8>)>,
}

impl UpdateEncoder {
    fn frame(&mut self, query_id: &str, key: &str, value: Value, change_type: ChangeType) -> Bytes {
        let reusable =
            matches!(&self.last, Some((ct, v, _, _)) if *ct == change_type && *v == value);
        if !reusable {
            let template = protocol::encode(&ServerMessage::QueryUpdate {
                payload: QueryUpdate {
                    query_id: String::new(),
                    key: key.to_owned(),
                    value: value.clone(),
                    change_type,
                },
            });
            // `queryId` as a fixstr key followed by the empty string 0xa0.
            let marker: &[u8] = b"\xa7queryId\xa0";
            match template.windows(marker.len()).position(|w| w == marker) {
                Some(at) => {
                    let split = at + marker.len() - 1;
                    let (prefix, rest) = template.split_at(split);
                    self.last = Some((change_type, value, prefix.to_vec(), rest[1..].to_vec()));
                }
                None => {
                    self.last = None;
                    return Bytes::from(protocol::encode(&ServerMessage::QueryUpdate {
                        payload: QueryUpdate {
                            query_id: query_id.to_owned(),
                            key: key.to_owned(),
                            value,
                            change_type,
                        },
                    }));
                }
            }
        }
        let Some((_, _, prefix, suffix)) = &self.last else {
            return Bytes::new();
        };
        let mut out = Vec::with_capacity(prefix.len() + query_id.len() + 5 + suffix.len());
        out.extend_from_slice(prefix);
        write_str_header(&mut out, query_id.len());
        out.extend_from_slice(query_id.as_bytes());
        out.extend_from_slice(suffix);
        Bytes::from(out)
    }
}

/// The MessagePack string header for `len` bytes (smallest form, as rmp does).
fn write_str_header(out: &mut Vec<u8>, len: usize) {
    match len {
        0..=31 => out.push(0xa0 | len as u8),
        32..=255 => out.extend_from_slice(&[0xd9, len as u8]),
        256..=65_535 => {
            out.push(0xda);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            out.push(0xdb);
            out.extend_from_slice(&(len as u32).to_be_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::types::{LwwRecord, Timestamp};
    use crate::shard::query::{Filter, PredicateOp, QuerySpec};

    fn put(key: &str, value: Value, writer: ConnId, seq: u64) -> ChangeEvent {
        ChangeEvent {
            map: "m".into(),
            key: key.into(),
            change: Change::Lww(LwwRecord {
                value,
                timestamp: Timestamp {
                    millis: 1,
                    counter: seq as u32,
                    node_id: "n".into(),
                },
                ttl_ms: None,
            }),
            writer,
            shard: 0,
            seq,
            origin: None,
            from_peer: false,
            expiry: false,
        }
    }

    fn decode(b: &Bytes) -> Value {
        rmpv::decode::read_value(&mut &b[..]).unwrap()
    }

    fn field<'a>(v: &'a Value, k: &str) -> &'a Value {
        v.as_map()
            .unwrap()
            .iter()
            .find(|(key, _)| key.as_str() == Some(k))
            .map(|(_, v)| v)
            .unwrap()
    }

    fn change_types(r: &Routed) -> Vec<(ConnId, String)> {
        r.deliveries
            .iter()
            .flat_map(|(c, d)| match d {
                Delivery::Frame(b) => vec![(*c, b.clone())],
                Delivery::Frames(bs) => bs.iter().map(|b| (*c, b.clone())).collect(),
                Delivery::WindowChange { .. } | Delivery::Resync => Vec::new(),
            })
            .map(|(c, b)| {
                let v = decode(&b);
                let t = field(&v, "type").as_str().unwrap().to_owned();
                let p = field(&v, "payload");
                let ct = if t == "QUERY_UPDATE" {
                    field(p, "changeType").as_str().unwrap().to_owned()
                } else {
                    t
                };
                (c, ct)
            })
            .collect()
    }

    fn active_query() -> Arc<CompiledQuery> {
        let spec = QuerySpec {
            filter: Filter::Predicate(crate::shard::query::Predicate::leaf(
                PredicateOp::Eq,
                "active",
                true,
            )),
            ..Default::default()
        };
        Arc::new(CompiledQuery::new(&spec))
    }

    fn obj(active: bool) -> Value {
        Value::Map(vec![("active".into(), active.into())])
    }

    #[test]
    fn enter_update_leave_and_writer_exclusion() {
        let mut r = Registry::default();
        let k1: SubKey = (1, "q".into());
        r.subscribe(k1.clone(), "m".into(), active_query());
        r.snapshot_loaded(&k1, vec![], &[0], 0);

        let routed = r.route(&put("a", obj(true), 2, 1), 0);
        assert_eq!(
            change_types(&routed),
            vec![(1, "SERVER_EVENT".into()), (1, "ENTER".into())]
        );
        assert_eq!(routed.recipients, 1);
        assert_eq!(
            change_types(&r.route(&put("a", obj(true), 2, 2), 0))[1].1,
            "UPDATE"
        );
        assert_eq!(
            change_types(&r.route(&put("a", obj(false), 2, 3), 0))[1].1,
            "LEAVE"
        );
        // Not in, not matching: only the SERVER_EVENT.
        assert_eq!(
            change_types(&r.route(&put("a", obj(false), 2, 4), 0)).len(),
            1
        );
        // The subscriber's own write: nothing sent, but membership follows.
        let own = r.route(&put("b", obj(true), 1, 5), 0);
        assert_eq!(own.recipients, 0);
        assert_eq!(
            change_types(&r.route(&put("b", Value::Nil, 2, 6), 0))[1].1,
            "LEAVE"
        );
    }

    #[test]
    fn spliced_query_updates_equal_direct_encoding() {
        let mut enc = UpdateEncoder::default();
        for id in [
            "q",
            "a-much-longer-query-id-over-31-bytes",
            &"x".repeat(300),
        ] {
            for value in [obj(true), obj(true), Value::Nil] {
                let got = enc.frame(id, "k", value.clone(), ChangeType::Update);
                let want = protocol::encode(&ServerMessage::QueryUpdate {
                    payload: QueryUpdate {
                        query_id: id.to_owned(),
                        key: "k".into(),
                        value,
                        change_type: ChangeType::Update,
                    },
                });
                assert_eq!(&got[..], &want[..]);
            }
        }
    }

    #[test]
    fn no_listener_means_no_delivery() {
        let mut r = Registry::default();
        let routed = r.route(&put("a", obj(true), 2, 1), 0);
        assert_eq!(routed.recipients, 0);
        assert!(routed.deliveries.is_empty());
    }

    #[test]
    fn events_during_the_snapshot_are_replayed_unless_contained() {
        let mut r = Registry::default();
        let k: SubKey = (1, "q".into());
        r.subscribe(k.clone(), "m".into(), active_query());
        // Seq 1 is in the snapshot (shard 0 had reached 1), seq 2 is not.
        assert!(r.route(&put("a", obj(true), 2, 1), 0).deliveries.len() == 1);
        assert!(r.route(&put("b", obj(true), 2, 2), 0).deliveries.len() == 1);
        let replayed = r.snapshot_loaded(&k, vec!["a".into()], &[1], 0);
        assert_eq!(change_types(&replayed), vec![(1, "ENTER".into())]);
    }

    #[test]
    fn topics_exclude_the_publisher_and_close_cleans_up() {
        let mut r = Registry::default();
        r.topic_subscribe(1, "t".into());
        r.topic_subscribe(2, "t".into());
        r.topic_subscribe(2, "t".into());
        assert_eq!(r.topic_recipients("t", 1), vec![2]);
        assert_eq!(r.connection_closed(2, 10), (true, false));
        assert!(r.topic_recipients("t", 1).is_empty());
        r.topic_unsubscribe(1, "t");
        assert!(r.topics.is_empty());
    }

    #[test]
    fn a_closed_connection_is_torn_down_in_slices_and_only_its_own() {
        let mut r = Registry::default();
        let q = Arc::new(CompiledQuery::new(&QuerySpec::default()));
        for i in 0..2_500 {
            let map: Arc<str> = if i % 2 == 0 {
                "even".into()
            } else {
                "m".into()
            };
            r.subscribe((7, format!("q{i}").into()), map, q.clone());
        }
        r.subscribe((8, "mine".into()), "m".into(), q.clone());
        r.topic_subscribe(7, "t".into());
        r.topic_subscribe(8, "t".into());
        let mut slices = 0;
        let mut maps_changed = false;
        loop {
            slices += 1;
            let (done, changed) = r.connection_closed(7, 1_000);
            maps_changed |= changed;
            if done {
                break;
            }
            assert!(slices < 10, "never done");
        }
        assert_eq!(
            slices, 3,
            "2,501 subscriptions and topics in slices of 1,000"
        );
        assert!(maps_changed, "map `even` lost its last subscription");
        assert_eq!(r.subscription_count(), 1);
        assert_eq!(r.maps().collect::<Vec<_>>(), vec![&Arc::<str>::from("m")]);
        assert_eq!(r.topic_recipients("t", 0), vec![8]);
        // The one left still gets its map's changes.
        r.snapshot_loaded(&(8, "mine".into()), Vec::new(), &[0], 0);
        assert_eq!(r.route(&put("k", obj(true), 1, 1), 0).recipients, 1);
    }

    #[test]
    fn subscribe_and_unsubscribe_say_when_the_maps_change() {
        let mut r = Registry::default();
        let q = Arc::new(CompiledQuery::new(&QuerySpec::default()));
        assert!(r.subscribe((1, "a".into()), "m".into(), q.clone()));
        assert!(!r.subscribe((2, "a".into()), "m".into(), q.clone()));
        assert!(!r.unsubscribe(&(1, "a".into())));
        assert!(r.unsubscribe(&(2, "a".into())));
        assert!(!r.unsubscribe(&(2, "a".into())), "twice is nothing");
    }
}
