//! Standing-query state for live updates (protocol.md 6.3): given a changed key and its new
//! visible value, decides which `QUERY_UPDATE`s (ENTER / UPDATE / LEAVE) one subscription gets.
//! Owns the subscription's result membership and, for `limit` queries, the sorted top-N window
//! plus a bounded reserve of rows seen outside it (refills come only from rows already seen, as
//! in the reference). Fan-out (which connection, writer exclusion) is the caller's.
//!
//! Cost per change is O(log(window + reserve)) with no scan: membership is a hash set, the
//! window and reserve are ordered sets keyed by the query's total order (`SortKey`).
use std::collections::{BTreeSet, HashMap, HashSet};

use rmpv::Value;

use crate::shard::query::{CompiledQuery, PartialResult, SortKey};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeType {
    Enter,
    Update,
    Leave,
}

impl ChangeType {
    /// The wire spelling of `QUERY_UPDATE.changeType`.
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeType::Enter => "ENTER",
            ChangeType::Update => "UPDATE",
            ChangeType::Leave => "LEAVE",
        }
    }
}

/// One `QUERY_UPDATE`. `value` is projected by the query's `fields`; `Nil` for LEAVE.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveEvent {
    pub key: String,
    pub change: ChangeType,
    pub value: Value,
}

#[derive(Debug, Clone)]
struct Row {
    sort_key: SortKey,
    /// Projected: only ever sent, never re-sorted.
    value: Value,
    in_window: bool,
}

#[derive(Debug, Clone)]
struct Window {
    limit: usize,
    /// Rows kept outside the window for refills; the worst are forgotten beyond this.
    reserve_cap: usize,
    window: BTreeSet<SortKey>,
    reserve: BTreeSet<SortKey>,
    rows: HashMap<Box<str>, Row>,
}

#[derive(Debug, Clone)]
enum State {
    /// No limit: just which keys the subscriber holds.
    Members(HashSet<Box<str>>),
    Window(Window),
}

/// One subscription's live state.
#[derive(Debug, Clone)]
pub struct LiveQuery {
    query: CompiledQuery,
    state: State,
}

impl LiveQuery {
    /// A subscription whose client holds nothing yet. `reserve_cap` bounds how many rows outside
    /// a `limit` window are remembered for refills (ignored without a limit); the window holds
    /// at most `max_window` rows, whatever the limit (the snapshot was cut to as many).
    pub fn new(query: CompiledQuery, reserve_cap: usize, max_window: usize) -> Self {
        let state = match query.limit() {
            None => State::Members(HashSet::new()),
            Some(limit) => State::Window(Window {
                limit: limit.min(max_window),
                reserve_cap,
                window: BTreeSet::new(),
                reserve: BTreeSet::new(),
                rows: HashMap::new(),
            }),
        };
        LiveQuery { query, state }
    }

    pub fn query(&self) -> &CompiledQuery {
        &self.query
    }

    /// Records what the initial `QUERY_RESP` sent: pass the same shares given to
    /// `CompiledQuery::merge` with the same `cap`, so membership equals the rows the client got.
    pub fn seed(&mut self, parts: &[PartialResult], cap: usize) {
        let (rows, _) = self.query.merged_rows(parts, cap);
        match &mut self.state {
            State::Members(m) => m.extend(rows.iter().map(|(sk, _)| sk.key().into())),
            State::Window(w) => {
                for (sk, v) in rows {
                    w.window.insert(sk.clone());
                    w.rows.insert(
                        sk.key().into(),
                        Row {
                            sort_key: sk.clone(),
                            value: self.query.project(v),
                            in_window: true,
                        },
                    );
                }
            }
        }
    }

    /// Keys the subscriber currently holds.
    pub fn len(&self) -> usize {
        match &self.state {
            State::Members(m) => m.len(),
            State::Window(w) => w.window.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn contains(&self, key: &str) -> bool {
        match &self.state {
            State::Members(m) => m.contains(key),
            State::Window(w) => w.rows.get(key).is_some_and(|r| r.in_window),
        }
    }

    /// Processes one applied write to `key`: `new` is its visible value afterwards, `None` if
    /// it was deleted, expired or swept. Returns the events to send, in order (at most two:
    /// the key's own, and a push-out LEAVE or a refill ENTER of another key).
    pub fn on_change(&mut self, key: &str, new: Option<&Value>) -> Vec<LiveEvent> {
        let new = new.filter(|v| self.query.matches(v));
        match &mut self.state {
            State::Members(members) => {
                let was_in = members.contains(key);
                match (was_in, new) {
                    (false, Some(v)) => {
                        members.insert(key.into());
                        vec![event(key, ChangeType::Enter, self.query.project(v))]
                    }
                    (true, Some(v)) => vec![event(key, ChangeType::Update, self.query.project(v))],
                    (true, None) => {
                        members.remove(key);
                        vec![event(key, ChangeType::Leave, Value::Nil)]
                    }
                    (false, None) => Vec::new(),
                }
            }
            State::Window(w) => {
                let new = new.map(|v| (self.query.sort_key(key, v), self.query.project(v)));
                w.on_change(key, new)
            }
        }
    }
}

fn event(key: &str, change: ChangeType, value: Value) -> LiveEvent {
    LiveEvent {
        key: key.to_string(),
        change,
        value,
    }
}

impl Window {
    fn on_change(&mut self, key: &str, new: Option<(SortKey, Value)>) -> Vec<LiveEvent> {
        let was_in = match self.rows.remove(key) {
            Some(old) => {
                if old.in_window {
                    self.window.remove(&old.sort_key);
                } else {
                    self.reserve.remove(&old.sort_key);
                }
                old.in_window
            }
            None => false,
        };
        if let Some((sort_key, value)) = new {
            self.reserve.insert(sort_key.clone());
            self.rows.insert(
                key.into(),
                Row {
                    sort_key,
                    value,
                    in_window: false,
                },
            );
        }
        // Restore "window = the best `limit` rows, every window row before every reserve row".
        // Only one row moved, so each loop runs at most once or twice.
        let mut flipped: Vec<(Box<str>, bool)> = Vec::new();
        while self.window.len() < self.limit {
            let Some(best) = self.reserve.pop_first() else {
                break;
            };
            self.flip(&best, true, &mut flipped);
            self.window.insert(best);
        }
        while let (Some(r), Some(w)) = (self.reserve.first(), self.window.last()) {
            if r >= w {
                break;
            }
            let (Some(r), Some(w)) = (self.reserve.pop_first(), self.window.pop_last()) else {
                break;
            };
            self.flip(&r, true, &mut flipped);
            self.flip(&w, false, &mut flipped);
            self.window.insert(r);
            self.reserve.insert(w);
        }
        while self.reserve.len() > self.reserve_cap {
            if let Some(worst) = self.reserve.pop_last() {
                self.rows.remove(worst.key());
            }
        }

        let mut events = Vec::new();
        let is_in = self.rows.get(key).filter(|r| r.in_window);
        match (was_in, is_in) {
            (false, Some(r)) => events.push(event(key, ChangeType::Enter, r.value.clone())),
            (true, Some(r)) => events.push(event(key, ChangeType::Update, r.value.clone())),
            (true, None) => events.push(event(key, ChangeType::Leave, Value::Nil)),
            (false, None) => {}
        }
        // Other rows that crossed the window edge: refills enter, pushed-out rows leave. A row
        // that moved twice (in then out) ends where it started and sends nothing.
        for (k, entered) in flipped {
            if &*k == key {
                continue;
            }
            let now_in = self.rows.get(&*k).is_some_and(|r| r.in_window);
            if now_in != entered {
                continue;
            }
            match self.rows.get(&*k) {
                Some(r) if entered => {
                    events.push(event(&k, ChangeType::Enter, r.value.clone()));
                }
                _ => events.push(event(&k, ChangeType::Leave, Value::Nil)),
            }
        }
        events
    }

    fn flip(&mut self, sk: &SortKey, into_window: bool, flipped: &mut Vec<(Box<str>, bool)>) {
        if let Some(r) = self.rows.get_mut(sk.key()) {
            r.in_window = into_window;
        }
        flipped.push((sk.key().into(), into_window));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard::query::{
        Filter, Predicate, PredicateOp, QuerySpec, SortDirection, SortField,
    };

    fn val(n: i64) -> Value {
        Value::Map(vec![
            (Value::from("n"), Value::from(n)),
            (Value::from("other"), Value::from("x")),
        ])
    }

    fn changes(events: &[LiveEvent]) -> Vec<(&str, ChangeType)> {
        events.iter().map(|e| (e.key.as_str(), e.change)).collect()
    }

    /// `n >= 10`, optionally with a limit sorted by n descending, projected to `n`.
    fn live(limit: Option<u32>, reserve_cap: usize) -> LiveQuery {
        let spec = QuerySpec {
            filter: Filter::Predicate(Predicate::leaf(PredicateOp::Gte, "n", 10)),
            sort: vec![SortField {
                field: "n".into(),
                direction: SortDirection::Desc,
            }],
            limit,
            fields: Some(vec!["n".into()]),
            ..Default::default()
        };
        LiveQuery::new(CompiledQuery::new(&spec), reserve_cap, usize::MAX)
    }

    #[test]
    fn table_of_6_3_without_limit() {
        use ChangeType::*;
        let mut q = live(None, 0);
        // no → yes: ENTER with the (projected) new value.
        let e = q.on_change("a", Some(&val(10)));
        assert_eq!(changes(&e), vec![("a", Enter)]);
        assert_eq!(
            e[0].value,
            Value::Map(vec![(Value::from("n"), Value::from(10))])
        );
        // yes → yes: UPDATE.
        assert_eq!(
            changes(&q.on_change("a", Some(&val(11)))),
            vec![("a", Update)]
        );
        // yes → no: LEAVE with nil.
        let e = q.on_change("a", Some(&val(1)));
        assert_eq!(changes(&e), vec![("a", Leave)]);
        assert_eq!(e[0].value, Value::Nil);
        // no → no: nothing.
        assert!(q.on_change("a", Some(&val(2))).is_empty());
        // yes → removed: LEAVE.
        q.on_change("b", Some(&val(20)));
        assert_eq!(changes(&q.on_change("b", None)), vec![("b", Leave)]);
        assert!(q.on_change("b", None).is_empty());
        assert!(q.is_empty());
    }

    #[test]
    fn seed_then_updates() {
        let q0 = live(None, 0);
        let data = [("a", val(10)), ("b", val(1))];
        let part = q0.query().select(data.iter().map(|(k, v)| (*k, v)), 100);
        let mut q = q0;
        q.seed(&[part], 100);
        assert!(q.contains("a") && !q.contains("b"));
        assert_eq!(
            changes(&q.on_change("a", Some(&val(12)))),
            vec![("a", ChangeType::Update)]
        );
    }

    #[test]
    fn limit_window_push_out_and_refill() {
        use ChangeType::*;
        let mut q = live(Some(2), 10);
        assert_eq!(
            changes(&q.on_change("a", Some(&val(10)))),
            vec![("a", Enter)]
        );
        assert_eq!(
            changes(&q.on_change("b", Some(&val(20)))),
            vec![("b", Enter)]
        );
        // c sorts first (desc): enters and pushes out the last row, a.
        assert_eq!(
            changes(&q.on_change("c", Some(&val(30)))),
            vec![("c", Enter), ("a", Leave)]
        );
        // A row below the window enters nothing, but is remembered.
        assert!(q.on_change("d", Some(&val(15))).is_empty());
        // b leaves: the best remembered row (d, 15) refills the slot.
        assert_eq!(
            changes(&q.on_change("b", None)),
            vec![("b", Leave), ("d", Enter)]
        );
        // An update that keeps c in the window is an UPDATE.
        assert_eq!(
            changes(&q.on_change("c", Some(&val(31)))),
            vec![("c", Update)]
        );
        // c sinks to 12: still above the best remembered row (a, 10), so it stays: UPDATE.
        assert_eq!(
            changes(&q.on_change("c", Some(&val(12)))),
            vec![("c", Update)]
        );
        // a jumps to 40: enters, pushes c (12) out.
        assert_eq!(
            changes(&q.on_change("a", Some(&val(40)))),
            vec![("a", Enter), ("c", Leave)]
        );
        assert_eq!(q.len(), 2);
        assert!(q.contains("a") && q.contains("d") && !q.contains("c"));
        // d stops matching: refilled by c from the reserve.
        assert_eq!(
            changes(&q.on_change("d", Some(&val(0)))),
            vec![("d", Leave), ("c", Enter)]
        );
    }

    #[test]
    fn update_sinking_below_reserve_swaps() {
        use ChangeType::*;
        let mut q = live(Some(1), 10);
        q.on_change("a", Some(&val(50)));
        q.on_change("b", Some(&val(40))); // reserve
                                          // a sinks below b: a leaves, b enters.
        assert_eq!(
            changes(&q.on_change("a", Some(&val(30)))),
            vec![("a", Leave), ("b", Enter)]
        );
    }

    #[test]
    fn no_refill_from_unseen_rows_and_reserve_is_bounded() {
        use ChangeType::*;
        let mut q = live(Some(1), 1);
        q.on_change("a", Some(&val(50)));
        q.on_change("b", Some(&val(40))); // reserve: b
        q.on_change("c", Some(&val(30))); // reserve over cap: c forgotten (worst)
        assert_eq!(
            changes(&q.on_change("a", None)),
            vec![("a", Leave), ("b", Enter)]
        );
        // c was forgotten, so nothing refills.
        assert_eq!(changes(&q.on_change("b", None)), vec![("b", Leave)]);
        assert!(q.is_empty());
    }

    #[test]
    fn window_seeded_from_snapshot() {
        let q0 = live(Some(2), 4);
        let data: Vec<(String, Value)> = (0..6).map(|i| (format!("k{i}"), val(10 + i))).collect();
        let part = q0
            .query()
            .select(data.iter().map(|(k, v)| (k.as_str(), v)), 100);
        let mut q = q0;
        q.seed(&[part], 100);
        assert!(q.contains("k5") && q.contains("k4") && q.len() == 2);
        // No reserve after a seed (the snapshot only holds the page): a leave is not refilled.
        assert_eq!(
            changes(&q.on_change("k5", None)),
            vec![("k5", ChangeType::Leave)]
        );
    }

    #[test]
    fn a_window_holds_no_more_rows_than_its_cap_whatever_the_limit() {
        let spec = QuerySpec {
            sort: vec![SortField {
                field: "n".into(),
                direction: SortDirection::Desc,
            }],
            limit: Some(1_000_000_000),
            ..Default::default()
        };
        let mut q = LiveQuery::new(CompiledQuery::new(&spec), 0, 3);
        for i in 0..10 {
            q.on_change(&format!("k{i}"), Some(&val(i)));
        }
        assert_eq!(q.len(), 3);
        for k in ["k9", "k8", "k7"] {
            assert!(q.contains(k), "{k} in the capped window");
        }
    }
}
