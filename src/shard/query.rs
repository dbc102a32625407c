//! Query evaluation (protocol.md 6.1) over plain model types: the filter (`where` or a predicate
//! tree with every op of 2.1), the sort order, `limit` with `has_more`, an opaque cursor, and the
//! `fields` projection. The wire types live in `protocol/`; the caller maps them into
//! [`QuerySpec`], compiles it once ([`CompiledQuery::new`]: regexes, paths, cursor) and reuses it
//! for the snapshot and for every live update (`live.rs`). Which records take part (visible LWW
//! values only) is the store's business; this file sees `(key, value)` pairs.
//!
//! Decisions where 6.1 leaves room:
//! - Results are always totally ordered: by the sort fields, then by key (byte order). That
//!   makes `limit`, the cursor and live windows deterministic; without `sort` the order is by key.
//! - Cursor: lowercase hex of a small binary encoding of the last returned row's sort values and
//!   key, prefixed by a fingerprint of the sort spec. The next page holds the rows strictly after
//!   that position, so it stays correct when rows change between pages. A cursor that does not
//!   decode or was made for another sort is `Invalid` and the query starts from the beginning.
//! - `like`: SQL LIKE (`%` any run, `_` one char), whole string, case-insensitive (the
//!   reference's rule). `regex`: unanchored search, case-sensitive, compiled once with size
//!   limits; a pattern that does not compile matches nothing (as the reference).
//! - `containsAll` / `containsAny`: the field must be an array; the operand is an array of
//!   values (a single non-array operand counts as a one-element list); elements compare with `eq`.
//! - `valueRef`: `data.<path>` resolves against the record itself; any other namespace
//!   (`auth.*`) resolves to nothing, making the leaf false.
//! - Map equality (`eq` on two maps) is order-insensitive; maps beyond 4,096 entries with
//!   differently ordered keys compare unequal rather than cost a quadratic scan.
//! - Not implemented: `groupBy` / `aggregations` (6.1 "advanced"); the caller should answer
//!   such queries with an error.
use std::cmp::Ordering;
use std::fmt::Write as _;
use std::sync::Arc;

use regex::{Regex, RegexBuilder};
use rmpv::Value;

use crate::shard::aggregate::GroupSpec;
use crate::shard::fnv::Fnv1a;

/// Compiled regexes may use at most this much memory (the pattern comes from a client).
const REGEX_SIZE_LIMIT: usize = 1 << 20;
/// Cursors longer than this (in hex chars) are refused without decoding.
const MAX_CURSOR_LEN: usize = 64 * 1024;
/// Above this many entries, differently ordered maps are not compared pairwise.
const MAX_UNORDERED_MAP_EQ: usize = 4_096;
const CURSOR_VERSION: u8 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortDirection {
    Asc,
    Desc,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SortField {
    pub field: String,
    pub direction: SortDirection,
}

/// The `op` of a predicate node, exactly the spellings of protocol.md 2.1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PredicateOp {
    Eq,
    Neq,
    Gt,
    Gte,
    Lt,
    Lte,
    Like,
    Regex,
    In,
    Between,
    IsNull,
    IsNotNull,
    ContainsAll,
    ContainsAny,
    StartsWith,
    EndsWith,
    And,
    Or,
    Not,
}

impl PredicateOp {
    /// Parses the wire spelling (case-sensitive); `None` for anything else.
    pub fn parse(s: &str) -> Option<Self> {
        use PredicateOp::*;
        Some(match s {
            "eq" => Eq,
            "neq" => Neq,
            "gt" => Gt,
            "gte" => Gte,
            "lt" => Lt,
            "lte" => Lte,
            "like" => Like,
            "regex" => Regex,
            "in" => In,
            "between" => Between,
            "isNull" => IsNull,
            "isNotNull" => IsNotNull,
            "containsAll" => ContainsAll,
            "containsAny" => ContainsAny,
            "startsWith" => StartsWith,
            "endsWith" => EndsWith,
            "and" => And,
            "or" => Or,
            "not" => Not,
            _ => return None,
        })
    }
}

/// A predicate node, shaped like the wire `PredicateNode` so the mapping is field by field.
#[derive(Debug, Clone, PartialEq)]
pub struct Predicate {
    pub op: PredicateOp,
    /// Dot path into the value (`a.b.c`); leaves without one are false.
    pub attribute: Option<String>,
    pub value: Option<Value>,
    /// Takes precedence over `value` when set (see the module header).
    pub value_ref: Option<String>,
    pub children: Vec<Predicate>,
}

impl Predicate {
    /// A leaf `attribute op value`.
    pub fn leaf(op: PredicateOp, attribute: &str, value: impl Into<Value>) -> Self {
        Predicate {
            op,
            attribute: Some(attribute.to_string()),
            value: Some(value.into()),
            value_ref: None,
            children: Vec::new(),
        }
    }

    /// `and` / `or` / `not` over `children`.
    pub fn node(op: PredicateOp, children: Vec<Predicate>) -> Self {
        Predicate {
            op,
            attribute: None,
            value: None,
            value_ref: None,
            children,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Default)]
pub enum Filter {
    /// Neither `where` nor `predicate`: every record matches.
    #[default]
    All,
    /// `where`: every (dot path, value) must be `eq`; a non-map record never matches.
    Where(Vec<(String, Value)>),
    Predicate(Predicate),
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct QuerySpec {
    pub filter: Filter,
    pub sort: Vec<SortField>,
    pub limit: Option<u32>,
    pub cursor: Option<String>,
    /// Top-level keys to keep in map values (`QUERY_SUB.payload.fields`).
    pub fields: Option<Vec<String>>,
    /// `groupBy`/`aggregations`: the filter picks records, then sort, limit, cursor and
    /// fields apply to the group rows.
    pub group: Option<GroupSpec>,
}

/// `QUERY_RESP.cursorStatus` (`expired` is never produced: cursors do not expire).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CursorStatus {
    Valid,
    Invalid,
    None,
}

impl CursorStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CursorStatus::Valid => "valid",
            CursorStatus::Invalid => "invalid",
            CursorStatus::None => "none",
        }
    }
}

/// One sort column of a row, normalized per 6.1 so rows order without looking at values again.
#[derive(Debug, Clone)]
pub enum SortValue {
    Num(f64),
    /// The string form of any non-number (strings as they are).
    Str(String),
    /// Nil or missing: last in both directions.
    Missing,
}

#[derive(Debug, Clone)]
struct SortPart {
    value: SortValue,
    desc: bool,
}

/// A row's position in the query's total order: its sort columns, then its key.
#[derive(Debug, Clone)]
pub struct SortKey {
    parts: Vec<SortPart>,
    key: Box<str>,
}

impl SortKey {
    pub fn key(&self) -> &str {
        &self.key
    }
}

fn cmp_f64(a: f64, b: f64) -> Ordering {
    // NaN (not producible from JSON, but MessagePack allows it) sorts after every number.
    a.partial_cmp(&b)
        .unwrap_or_else(|| a.is_nan().cmp(&b.is_nan()))
}

fn cmp_part(a: &SortPart, b: &SortPart) -> Ordering {
    use SortValue::*;
    let base = match (&a.value, &b.value) {
        (Missing, Missing) => return Ordering::Equal,
        (Missing, _) => return Ordering::Greater,
        (_, Missing) => return Ordering::Less,
        (Num(x), Num(y)) => cmp_f64(*x, *y),
        (Num(_), Str(_)) => Ordering::Less,
        (Str(_), Num(_)) => Ordering::Greater,
        (Str(x), Str(y)) => x.cmp(y),
    };
    if a.desc {
        base.reverse()
    } else {
        base
    }
}

impl Ord for SortKey {
    fn cmp(&self, other: &Self) -> Ordering {
        for (a, b) in self.parts.iter().zip(&other.parts) {
            let c = cmp_part(a, b);
            if c != Ordering::Equal {
                return c;
            }
        }
        self.parts
            .len()
            .cmp(&other.parts.len())
            .then_with(|| self.key.as_bytes().cmp(other.key.as_bytes()))
    }
}

impl PartialOrd for SortKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for SortKey {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for SortKey {}

#[derive(Debug, Clone, PartialEq)]
pub struct QueryRow {
    pub key: String,
    /// Projected by `fields`.
    pub value: Value,
}

/// What `QUERY_RESP` needs.
#[derive(Debug, Clone, PartialEq)]
pub struct QueryPage {
    pub rows: Vec<QueryRow>,
    /// Rows were cut by `limit` or by the snapshot cap.
    pub has_more: bool,
    /// Set iff `has_more` and a row was returned: resumes after the last row.
    pub next_cursor: Option<String>,
    pub cursor_status: CursorStatus,
}

/// One store's share of a query: matching rows after the cursor, in query order, cut to the
/// page size, values not yet projected (the merge needs the sort fields).
#[derive(Debug, Clone, Default)]
pub struct PartialResult {
    rows: Vec<(SortKey, Value)>,
    has_more: bool,
}

impl PartialResult {
    /// The rows as (key, value), in query order, and whether rows were cut: what a node sends
    /// for its share of a gathered query.
    pub fn into_rows(self) -> (Vec<(String, Value)>, bool) {
        let rows = self
            .rows
            .into_iter()
            .map(|(sk, v)| (sk.key.into_string(), v))
            .collect();
        (rows, self.has_more)
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
}

#[derive(Debug, Clone)]
enum Expected {
    Literal(Value),
    /// `valueRef: "data.<path>"`.
    DataRef(Vec<String>),
    /// No operand, or an unresolvable reference: the leaf is false.
    Nothing,
}

#[derive(Debug, Clone)]
enum Node {
    And(Vec<Node>),
    Or(Vec<Node>),
    /// `not` negates its first child; true without one.
    Not(Option<Box<Node>>),
    Leaf {
        op: PredicateOp,
        path: Vec<String>,
        expected: Expected,
        /// `like` / `regex` with a literal operand, compiled once. `None` inside `Some` would be
        /// a pattern that failed to compile: represented as `Some(None)`.
        pattern: Option<Option<Regex>>,
    },
    /// `where`: implicit AND of equalities, false for non-map values.
    Where(Vec<(Vec<String>, Value)>),
    All,
}

#[derive(Debug, Clone)]
enum CursorState {
    None,
    Invalid,
    After(SortKey),
}

/// A [`QuerySpec`] ready to run: paths split, regexes compiled, cursor decoded.
#[derive(Debug, Clone)]
pub struct CompiledQuery {
    filter: Node,
    sort: Vec<(Vec<String>, bool)>,
    limit: Option<usize>,
    cursor: CursorState,
    fields: Option<Vec<String>>,
    group: Option<Arc<GroupSpec>>,
    /// Ties cursors to the sort spec they were made for.
    fingerprint: u32,
}

pub(crate) fn split_path(p: &str) -> Vec<String> {
    p.split('.').map(str::to_string).collect()
}

fn compile_regex(pattern: &str) -> Option<Regex> {
    RegexBuilder::new(pattern)
        .size_limit(REGEX_SIZE_LIMIT)
        .dfa_size_limit(REGEX_SIZE_LIMIT)
        .build()
        .ok()
}

fn like_regex(pattern: &str) -> Option<Regex> {
    let mut re = String::with_capacity(pattern.len() + 8);
    re.push_str("(?is)^");
    let mut buf = [0u8; 4];
    for c in pattern.chars() {
        match c {
            '%' => re.push_str(".*"),
            '_' => re.push('.'),
            c => re.push_str(&regex::escape(c.encode_utf8(&mut buf))),
        }
    }
    re.push('$');
    compile_regex(&re)
}

fn compile_pattern(op: PredicateOp, pattern: &Value) -> Option<Regex> {
    let p = pattern.as_str()?;
    match op {
        PredicateOp::Like => like_regex(p),
        _ => compile_regex(p),
    }
}

fn compile_node(p: &Predicate) -> Node {
    use PredicateOp::*;
    match p.op {
        And => Node::And(p.children.iter().map(compile_node).collect()),
        Or => Node::Or(p.children.iter().map(compile_node).collect()),
        Not => Node::Not(p.children.first().map(|c| Box::new(compile_node(c)))),
        op => {
            let expected = match (&p.value_ref, &p.value) {
                (Some(r), _) => match r.strip_prefix("data.") {
                    Some(path) => Expected::DataRef(split_path(path)),
                    None if r == "data" => Expected::DataRef(Vec::new()),
                    None => Expected::Nothing,
                },
                (None, Some(v)) => Expected::Literal(v.clone()),
                (None, None) => Expected::Nothing,
            };
            let pattern = match (&expected, op) {
                (Expected::Literal(v), Like | Regex) => Some(compile_pattern(op, v)),
                _ => None,
            };
            Node::Leaf {
                op,
                path: p.attribute.as_deref().map(split_path).unwrap_or_default(),
                expected,
                pattern,
            }
        }
    }
}

/// Follows a dot path through nested maps (string keys). The empty path is the value itself.
pub(crate) fn resolve<'a>(mut v: &'a Value, path: &[String]) -> Option<&'a Value> {
    for seg in path {
        v = v
            .as_map()?
            .iter()
            .find(|(k, _)| k.as_str() == Some(seg.as_str()))
            .map(|(_, v)| v)?;
    }
    Some(v)
}

#[allow(clippy::cast_precision_loss)] // 6.1: numbers compare as f64, like JS.
pub(crate) fn as_f64(v: &Value) -> Option<f64> {
    match v {
        Value::Integer(i) => i
            .as_i64()
            .map(|n| n as f64)
            .or_else(|| i.as_u64().map(|n| n as f64)),
        Value::F64(f) => Some(*f),
        Value::F32(f) => Some(f64::from(*f)),
        _ => None,
    }
}

/// `eq` of 6.1: numbers as f64 across int/float, then strings, booleans, nil, then structure
/// (recursively with the same rule).
#[allow(clippy::float_cmp)] // JS `===` on numbers is exact.
pub fn values_equal(a: &Value, b: &Value) -> bool {
    if let (Some(x), Some(y)) = (as_f64(a), as_f64(b)) {
        return x == y;
    }
    match (a, b) {
        (Value::String(x), Value::String(y)) => x.as_bytes() == y.as_bytes(),
        (Value::Boolean(x), Value::Boolean(y)) => x == y,
        (Value::Nil, Value::Nil) => true,
        (Value::Binary(x), Value::Binary(y)) => x == y,
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| values_equal(p, q))
        }
        (Value::Map(x), Value::Map(y)) => {
            if x.len() != y.len() {
                return false;
            }
            let same_order = x
                .iter()
                .zip(y)
                .all(|((k1, v1), (k2, v2))| values_equal(k1, k2) && values_equal(v1, v2));
            same_order
                || (x.len() <= MAX_UNORDERED_MAP_EQ
                    && x.iter().all(|(k1, v1)| {
                        y.iter()
                            .any(|(k2, v2)| values_equal(k1, k2) && values_equal(v1, v2))
                    }))
        }
        (Value::Ext(t1, d1), Value::Ext(t2, d2)) => t1 == t2 && d1 == d2,
        _ => false,
    }
}

/// Ordered comparison for `gt gte lt lte between`: both numbers or both strings, else none.
fn compare_ordered(a: &Value, b: &Value) -> Option<Ordering> {
    if let (Some(x), Some(y)) = (as_f64(a), as_f64(b)) {
        return x.partial_cmp(&y);
    }
    match (a, b) {
        (Value::String(x), Value::String(y)) => Some(x.as_bytes().cmp(y.as_bytes())),
        _ => None,
    }
}

fn operand_list(v: &Value) -> &[Value] {
    match v {
        Value::Array(items) => items,
        other => std::slice::from_ref(other),
    }
}

fn leaf_matches(
    op: PredicateOp,
    actual: &Value,
    expected: &Value,
    pattern: Option<&Option<Regex>>,
) -> bool {
    use PredicateOp::*;
    let ord = || compare_ordered(actual, expected);
    match op {
        Eq => values_equal(actual, expected),
        Neq => !values_equal(actual, expected),
        Gt => ord() == Some(Ordering::Greater),
        Gte => matches!(ord(), Some(Ordering::Greater | Ordering::Equal)),
        Lt => ord() == Some(Ordering::Less),
        Lte => matches!(ord(), Some(Ordering::Less | Ordering::Equal)),
        Like | Regex => {
            let Some(text) = actual.as_str() else {
                return false;
            };
            match pattern {
                Some(compiled) => compiled.as_ref().is_some_and(|re| re.is_match(text)),
                // A `valueRef` operand: only known now, compiled per evaluation.
                None => compile_pattern(op, expected).is_some_and(|re| re.is_match(text)),
            }
        }
        In => match expected {
            Value::Array(items) => items.iter().any(|i| values_equal(actual, i)),
            _ => false,
        },
        Between => match expected {
            Value::Array(r) if r.len() == 2 => {
                matches!(
                    compare_ordered(actual, &r[0]),
                    Some(Ordering::Greater | Ordering::Equal)
                ) && matches!(
                    compare_ordered(actual, &r[1]),
                    Some(Ordering::Less | Ordering::Equal)
                )
            }
            _ => false,
        },
        ContainsAll | ContainsAny => {
            let Value::Array(have) = actual else {
                return false;
            };
            let want = operand_list(expected);
            let has = |w: &Value| have.iter().any(|h| values_equal(h, w));
            if op == ContainsAll {
                want.iter().all(has)
            } else {
                want.iter().any(has)
            }
        }
        StartsWith | EndsWith => match (actual, expected) {
            (Value::String(a), Value::String(e)) => {
                let (a, e) = (a.as_bytes(), e.as_bytes());
                if op == StartsWith {
                    a.starts_with(e)
                } else {
                    a.ends_with(e)
                }
            }
            _ => false,
        },
        // Handled by `eval` before reaching here.
        IsNull | IsNotNull | And | Or | Not => false,
    }
}

fn eval(node: &Node, record: &Value) -> bool {
    match node {
        Node::All => true,
        Node::And(c) => c.iter().all(|n| eval(n, record)),
        Node::Or(c) => c.iter().any(|n| eval(n, record)),
        Node::Not(c) => c.as_ref().is_none_or(|n| !eval(n, record)),
        Node::Where(entries) => {
            record.is_map()
                && entries.iter().all(|(path, want)| {
                    resolve(record, path).is_some_and(|have| values_equal(have, want))
                })
        }
        Node::Leaf {
            op,
            path,
            expected,
            pattern,
        } => {
            let actual = if path.is_empty() {
                None
            } else {
                resolve(record, path).filter(|v| !v.is_nil())
            };
            match op {
                PredicateOp::IsNull => return actual.is_none(),
                PredicateOp::IsNotNull => return actual.is_some(),
                _ => {}
            }
            let Some(actual) = actual else {
                return false;
            };
            let expected = match expected {
                Expected::Literal(v) => v,
                Expected::DataRef(p) => match resolve(record, p) {
                    Some(v) => v,
                    None => return false,
                },
                Expected::Nothing => return false,
            };
            leaf_matches(*op, actual, expected, pattern.as_ref())
        }
    }
}

/// JS-like string form of a non-number, non-nil value, for sorting (6.1).
pub(crate) fn string_form(v: &Value, out: &mut String) {
    match v {
        Value::String(s) => match s.as_str() {
            Some(s) => out.push_str(s),
            None => out.push_str(&String::from_utf8_lossy(s.as_bytes())),
        },
        Value::Boolean(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Integer(i) => {
            let _ = write!(out, "{i}");
        }
        Value::F64(f) => {
            let _ = write!(out, "{f}");
        }
        Value::F32(f) => {
            let _ = write!(out, "{f}");
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                if !item.is_nil() {
                    string_form(item, out);
                }
            }
        }
        Value::Binary(bytes) => {
            for (i, b) in bytes.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                let _ = write!(out, "{b}");
            }
        }
        Value::Map(_) => out.push_str("[object Object]"),
        Value::Nil | Value::Ext(..) => {}
    }
}

fn sort_value(v: Option<&Value>) -> SortValue {
    match v {
        None | Some(Value::Nil) => SortValue::Missing,
        Some(v) => match as_f64(v) {
            Some(n) => SortValue::Num(n),
            None => {
                let mut s = String::new();
                string_form(v, &mut s);
                SortValue::Str(s)
            }
        },
    }
}

impl CompiledQuery {
    pub fn new(spec: &QuerySpec) -> Self {
        let filter = match &spec.filter {
            Filter::All => Node::All,
            Filter::Where(entries) => Node::Where(
                entries
                    .iter()
                    .map(|(k, v)| (split_path(k), v.clone()))
                    .collect(),
            ),
            Filter::Predicate(p) => compile_node(p),
        };
        let sort: Vec<(Vec<String>, bool)> = spec
            .sort
            .iter()
            .map(|s| (split_path(&s.field), s.direction == SortDirection::Desc))
            .collect();
        let mut fp = Fnv1a::new();
        for s in &spec.sort {
            fp.write_str(&s.field);
            fp.write_char_ascii(if s.direction == SortDirection::Desc {
                b'-'
            } else {
                b'+'
            });
        }
        if spec.group.is_some() {
            // A cursor over group rows is not one over records.
            fp.write_char_ascii(b'G');
        }
        let fingerprint = fp.finish();
        let cursor = match &spec.cursor {
            None => CursorState::None,
            Some(c) => match decode_cursor(c, fingerprint, &sort) {
                Some(k) => CursorState::After(k),
                None => CursorState::Invalid,
            },
        };
        CompiledQuery {
            filter,
            sort,
            limit: spec.limit.map(|l| l as usize),
            cursor,
            fields: spec.fields.clone(),
            group: spec.group.clone().map(Arc::new),
            fingerprint,
        }
    }

    /// The grouping of a `groupBy`/`aggregations` query.
    pub fn group(&self) -> Option<&Arc<GroupSpec>> {
        self.group.as_ref()
    }

    /// For a grouped query: the query its group rows go through (no filter, no grouping; the
    /// same sort, limit, cursor and fields).
    pub fn rows_query(&self) -> CompiledQuery {
        CompiledQuery {
            filter: Node::All,
            group: None,
            ..self.clone()
        }
    }

    /// Whether a (visible) record value passes the filter.
    pub fn matches(&self, value: &Value) -> bool {
        eval(&self.filter, value)
    }

    /// The row's position in the query order.
    pub fn sort_key(&self, key: &str, value: &Value) -> SortKey {
        SortKey {
            parts: self
                .sort
                .iter()
                .map(|(path, desc)| SortPart {
                    value: sort_value(resolve(value, path)),
                    desc: *desc,
                })
                .collect(),
            key: key.into(),
        }
    }

    pub fn limit(&self) -> Option<usize> {
        self.limit
    }

    pub fn cursor_status(&self) -> CursorStatus {
        match self.cursor {
            CursorState::None => CursorStatus::None,
            CursorState::Invalid => CursorStatus::Invalid,
            CursorState::After(_) => CursorStatus::Valid,
        }
    }

    /// `fields` projection: keeps only the listed top-level keys of a map; other values pass.
    pub fn project(&self, value: &Value) -> Value {
        match (&self.fields, value) {
            (Some(fields), Value::Map(entries)) => Value::Map(
                entries
                    .iter()
                    .filter(|(k, _)| k.as_str().is_some_and(|k| fields.iter().any(|f| f == k)))
                    .cloned()
                    .collect(),
            ),
            _ => value.clone(),
        }
    }

    fn page_size(&self, cap: usize) -> usize {
        self.limit.map_or(cap, |l| l.min(cap))
    }

    /// This store's share: rows passing the filter and after the cursor, ordered, cut to
    /// `min(limit, cap)`. `cap` is the node's snapshot maximum (6.1, default 10,000).
    /// O(n + k log k) for n matches and a page of k.
    pub fn select<'a>(
        &self,
        entries: impl IntoIterator<Item = (&'a str, &'a Value)>,
        cap: usize,
    ) -> PartialResult {
        let after = match &self.cursor {
            CursorState::After(k) => Some(k),
            _ => None,
        };
        let mut rows: Vec<(SortKey, &Value)> = entries
            .into_iter()
            .filter(|(_, v)| self.matches(v))
            .map(|(k, v)| (self.sort_key(k, v), v))
            .filter(|(sk, _)| after.is_none_or(|a| sk > a))
            .collect();
        let k = self.page_size(cap);
        let has_more = rows.len() > k;
        if has_more {
            if k == 0 {
                rows.clear();
            } else {
                rows.select_nth_unstable_by(k - 1, |a, b| a.0.cmp(&b.0));
                rows.truncate(k);
            }
        }
        rows.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        PartialResult {
            rows: rows.into_iter().map(|(k, v)| (k, v.clone())).collect(),
            has_more,
        }
    }

    /// Merges the shares of several stores (disjoint keys) into the final page: ordered, cut
    /// to `min(limit, cap)`, projected, with `has_more` and the next cursor. Takes the shares by
    /// reference so a live query can be seeded from the same ones ([`crate::shard::live`]).
    pub fn merge(&self, parts: &[PartialResult], cap: usize) -> QueryPage {
        let (rows, has_more) = self.merged_rows(parts, cap);
        let next_cursor = if has_more {
            rows.last()
                .map(|(sk, _)| encode_cursor(sk, self.fingerprint))
        } else {
            None
        };
        QueryPage {
            rows: rows
                .iter()
                .map(|(sk, v)| QueryRow {
                    key: sk.key.to_string(),
                    value: self.project(v),
                })
                .collect(),
            has_more,
            next_cursor,
            cursor_status: self.cursor_status(),
        }
    }

    /// The rows `merge` returns, unprojected, in order, and whether rows were cut.
    pub(crate) fn merged_rows<'p>(
        &self,
        parts: &'p [PartialResult],
        cap: usize,
    ) -> (Vec<&'p (SortKey, Value)>, bool) {
        let mut has_more = parts.iter().any(|p| p.has_more);
        let mut rows: Vec<&(SortKey, Value)> = parts.iter().flat_map(|p| &p.rows).collect();
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        let k = self.page_size(cap);
        if rows.len() > k {
            has_more = true;
            rows.truncate(k);
        }
        (rows, has_more)
    }

    /// Several stores' shares as one share, cut to the page size: a node's answer for its
    /// partitions of a gathered query.
    pub fn combine(&self, parts: Vec<PartialResult>, cap: usize) -> PartialResult {
        let mut has_more = parts.iter().any(|p| p.has_more);
        let mut rows: Vec<(SortKey, Value)> = parts.into_iter().flat_map(|p| p.rows).collect();
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        let k = self.page_size(cap);
        if rows.len() > k {
            has_more = true;
            rows.truncate(k);
        }
        PartialResult { rows, has_more }
    }

    /// Another node's share, selected again here: a peer's answer cannot bring rows this
    /// query would not select, or more than a page of them.
    pub fn share_from_peer(
        &self,
        rows: &[(String, Value)],
        has_more: bool,
        cap: usize,
    ) -> PartialResult {
        let mut part = self.select(rows.iter().map(|(k, v)| (k.as_str(), v)), cap);
        part.has_more |= has_more;
        part
    }

    /// `select` + `merge` for a single store.
    pub fn run<'a>(
        &self,
        entries: impl IntoIterator<Item = (&'a str, &'a Value)>,
        cap: usize,
    ) -> QueryPage {
        let part = self.select(entries, cap);
        self.merge(&[part], cap)
    }
}

// Cursor encoding: version u8, fingerprint u32, part count u8, then per part a tag (0 missing,
// 1 number + f64 bits, 2 string + u32 length + bytes), then the key as u32 length + bytes; all
// big-endian, then lowercase hex.

fn encode_cursor(sk: &SortKey, fingerprint: u32) -> String {
    let mut b = Vec::with_capacity(16 + sk.key.len());
    b.push(CURSOR_VERSION);
    b.extend_from_slice(&fingerprint.to_be_bytes());
    // At most 255 sort fields fit a cursor; longer sorts get a cursor that fails to decode
    // (`Invalid`), which restarts the listing rather than skipping rows.
    b.push(u8::try_from(sk.parts.len()).unwrap_or(u8::MAX));
    let push_bytes = |b: &mut Vec<u8>, s: &[u8]| {
        b.extend_from_slice(&u32::try_from(s.len()).unwrap_or(u32::MAX).to_be_bytes());
        b.extend_from_slice(s);
    };
    for p in &sk.parts {
        match &p.value {
            SortValue::Missing => b.push(0),
            SortValue::Num(n) => {
                b.push(1);
                b.extend_from_slice(&n.to_bits().to_be_bytes());
            }
            SortValue::Str(s) => {
                b.push(2);
                push_bytes(&mut b, s.as_bytes());
            }
        }
    }
    push_bytes(&mut b, sk.key.as_bytes());
    let mut out = String::with_capacity(b.len() * 2);
    for byte in b {
        let _ = write!(out, "{byte:02x}");
    }
    out
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }
    fn str(&mut self) -> Option<&'a str> {
        let len = usize::try_from(self.u32()?).ok()?;
        std::str::from_utf8(self.take(len)?).ok()
    }
}

fn decode_cursor(c: &str, fingerprint: u32, sort: &[(Vec<String>, bool)]) -> Option<SortKey> {
    if c.len() > MAX_CURSOR_LEN || !c.len().is_multiple_of(2) {
        return None;
    }
    let bytes: Vec<u8> = c
        .as_bytes()
        .chunks_exact(2)
        .map(|pair| {
            let s = std::str::from_utf8(pair).ok()?;
            u8::from_str_radix(s, 16).ok()
        })
        .collect::<Option<_>>()?;
    let mut r = Reader(&bytes);
    if r.u8()? != CURSOR_VERSION || r.u32()? != fingerprint {
        return None;
    }
    if usize::from(r.u8()?) != sort.len() {
        return None;
    }
    let mut parts = Vec::with_capacity(sort.len());
    for (_, desc) in sort {
        let value = match r.u8()? {
            0 => SortValue::Missing,
            1 => SortValue::Num(f64::from_bits(u64::from_be_bytes(
                r.take(8)?.try_into().ok()?,
            ))),
            2 => SortValue::Str(r.str()?.to_string()),
            _ => return None,
        };
        parts.push(SortPart { value, desc: *desc });
    }
    let key = r.str()?.into();
    if !r.0.is_empty() {
        return None;
    }
    Some(SortKey { parts, key })
}

#[cfg(test)]
mod tests {
    use super::*;
    use PredicateOp::*;

    fn map(entries: &[(&str, Value)]) -> Value {
        Value::Map(
            entries
                .iter()
                .map(|(k, v)| (Value::from(*k), v.clone()))
                .collect(),
        )
    }

    fn person(name: &str, age: i64) -> Value {
        map(&[
            ("name", name.into()),
            ("age", age.into()),
            ("addr", map(&[("city", "Oslo".into())])),
            ("tags", Value::Array(vec!["a".into(), "b".into()])),
            ("nothing", Value::Nil),
        ])
    }

    fn pred(p: Predicate) -> CompiledQuery {
        CompiledQuery::new(&QuerySpec {
            filter: Filter::Predicate(p),
            ..Default::default()
        })
    }

    fn m(p: Predicate, v: &Value) -> bool {
        pred(p).matches(v)
    }

    #[test]
    fn parse_every_wire_op() {
        for s in [
            "eq",
            "neq",
            "gt",
            "gte",
            "lt",
            "lte",
            "like",
            "regex",
            "and",
            "or",
            "not",
            "in",
            "between",
            "isNull",
            "isNotNull",
            "containsAll",
            "containsAny",
            "startsWith",
            "endsWith",
        ] {
            assert!(PredicateOp::parse(s).is_some(), "{s}");
        }
        assert_eq!(PredicateOp::parse("EQ"), None);
        assert_eq!(PredicateOp::parse("contains"), None);
    }

    #[test]
    fn equality_and_numbers() {
        let v = person("ann", 30);
        assert!(m(Predicate::leaf(Eq, "age", 30.0), &v), "int vs float");
        assert!(m(Predicate::leaf(Eq, "addr.city", "Oslo"), &v), "dot path");
        assert!(
            !m(Predicate::leaf(Eq, "age", "30"), &v),
            "no string coercion"
        );
        assert!(m(Predicate::leaf(Neq, "age", 31), &v));
        assert!(
            !m(Predicate::leaf(Neq, "missing", 31), &v),
            "missing field: false"
        );
        assert!(
            !m(Predicate::leaf(Neq, "nothing", 31), &v),
            "null field: false"
        );
        assert!(
            !m(Predicate::leaf(Eq, "name.x", "a"), &v),
            "path through a string"
        );
        assert!(m(
            Predicate::leaf(Eq, "tags", Value::Array(vec!["a".into(), "b".into()])),
            &v
        ));
        let shuffled = map(&[("city", "Oslo".into())]);
        assert!(m(Predicate::leaf(Eq, "addr", shuffled), &v));
    }

    #[test]
    fn ordered_ops() {
        let v = person("bob", 30);
        assert!(m(Predicate::leaf(Gt, "age", 29.5), &v));
        assert!(m(Predicate::leaf(Gte, "age", 30), &v));
        assert!(!m(Predicate::leaf(Lt, "age", 30), &v));
        assert!(m(Predicate::leaf(Lte, "age", 30u64), &v));
        assert!(m(Predicate::leaf(Gt, "name", "alice"), &v), "strings");
        assert!(!m(Predicate::leaf(Gt, "name", 1), &v), "mixed types: false");
        assert!(!m(Predicate::leaf(Lt, "name", 1), &v));
        let between =
            |lo: Value, hi: Value| Predicate::leaf(Between, "age", Value::Array(vec![lo, hi]));
        assert!(m(between(30.into(), 40.into()), &v), "inclusive low");
        assert!(m(between(20.into(), 30.into()), &v), "inclusive high");
        assert!(!m(between(31.into(), 40.into()), &v));
        assert!(!m(Predicate::leaf(Between, "age", 30), &v), "not a pair");
    }

    #[test]
    fn like_regex_strings() {
        let v = person("Alice_Smith", 1);
        assert!(
            m(Predicate::leaf(Like, "name", "ali%"), &v),
            "case-insensitive"
        );
        assert!(m(Predicate::leaf(Like, "name", "%smith"), &v));
        assert!(m(Predicate::leaf(Like, "name", "Alic__Smith"), &v));
        assert!(
            !m(Predicate::leaf(Like, "name", "Alice"), &v),
            "whole string"
        );
        assert!(
            !m(Predicate::leaf(Like, "name", "Alice.Smith"), &v),
            "dot is literal"
        );
        assert!(
            m(Predicate::leaf(Like, "name", "(%"), &person("(x", 1)),
            "regex chars escaped"
        );
        assert!(m(Predicate::leaf(Regex, "name", "ce_S"), &v), "unanchored");
        assert!(
            !m(Predicate::leaf(Regex, "name", "^smith"), &v),
            "case-sensitive"
        );
        assert!(
            !m(Predicate::leaf(Regex, "name", "(("), &v),
            "bad pattern matches nothing"
        );
        assert!(
            !m(Predicate::leaf(Regex, "age", "1"), &v),
            "non-string field"
        );
        assert!(m(Predicate::leaf(StartsWith, "name", "Alice"), &v));
        assert!(!m(Predicate::leaf(StartsWith, "name", "alice"), &v));
        assert!(m(Predicate::leaf(EndsWith, "name", "Smith"), &v));
        assert!(!m(Predicate::leaf(EndsWith, "age", "1"), &v));
    }

    #[test]
    fn membership_ops() {
        let v = person("a", 5);
        let arr = |xs: &[&str]| Value::Array(xs.iter().map(|&x| Value::from(x)).collect());
        assert!(m(Predicate::leaf(In, "name", arr(&["x", "a"])), &v));
        assert!(!m(Predicate::leaf(In, "name", arr(&["x"])), &v));
        assert!(m(
            Predicate::leaf(In, "age", Value::Array(vec![5.0.into()])),
            &v
        ));
        assert!(m(
            Predicate::leaf(ContainsAll, "tags", arr(&["b", "a"])),
            &v
        ));
        assert!(!m(
            Predicate::leaf(ContainsAll, "tags", arr(&["a", "z"])),
            &v
        ));
        assert!(m(
            Predicate::leaf(ContainsAny, "tags", arr(&["z", "a"])),
            &v
        ));
        assert!(!m(Predicate::leaf(ContainsAny, "tags", arr(&["z"])), &v));
        assert!(
            m(Predicate::leaf(ContainsAny, "tags", "b"), &v),
            "scalar operand"
        );
        assert!(
            !m(Predicate::leaf(ContainsAny, "name", arr(&["a"])), &v),
            "field not an array"
        );
    }

    #[test]
    fn null_checks_and_logic() {
        let v = person("a", 5);
        let is_null = |a: &str| Predicate {
            op: IsNull,
            attribute: Some(a.into()),
            value: None,
            value_ref: None,
            children: vec![],
        };
        assert!(m(is_null("missing"), &v));
        assert!(m(is_null("nothing"), &v));
        assert!(!m(is_null("age"), &v));
        let mut not_null = is_null("age");
        not_null.op = IsNotNull;
        assert!(m(not_null, &v));
        let t = Predicate::leaf(Eq, "age", 5);
        let f = Predicate::leaf(Eq, "age", 6);
        assert!(m(Predicate::node(And, vec![t.clone(), t.clone()]), &v));
        assert!(!m(Predicate::node(And, vec![t.clone(), f.clone()]), &v));
        assert!(m(Predicate::node(And, vec![]), &v));
        assert!(m(Predicate::node(Or, vec![f.clone(), t.clone()]), &v));
        assert!(!m(Predicate::node(Or, vec![]), &v));
        assert!(m(Predicate::node(Not, vec![f.clone()]), &v));
        assert!(
            !m(Predicate::node(Not, vec![t.clone(), f.clone()]), &v),
            "first child only"
        );
        assert!(m(Predicate::node(Not, vec![]), &v));
        // A leaf without attribute or value is false.
        let mut no_attr = t.clone();
        no_attr.attribute = None;
        assert!(!m(no_attr, &v));
        let mut no_value = t;
        no_value.value = None;
        assert!(!m(no_value, &v));
    }

    #[test]
    fn value_ref_data_namespace() {
        let v = map(&[("a", 5.into()), ("b", 5.0.into()), ("c", 6.into())]);
        let leaf = |r: &str| Predicate {
            op: Eq,
            attribute: Some("a".into()),
            value: Some(99.into()),
            value_ref: Some(r.into()),
            children: vec![],
        };
        assert!(m(leaf("data.b"), &v), "valueRef wins over value");
        assert!(!m(leaf("data.c"), &v));
        assert!(!m(leaf("data.zzz"), &v));
        assert!(!m(leaf("auth.sub"), &v));
    }

    #[test]
    fn where_clause() {
        let q = |entries: Vec<(String, Value)>| {
            CompiledQuery::new(&QuerySpec {
                filter: Filter::Where(entries),
                ..Default::default()
            })
        };
        let v = person("a", 5);
        assert!(q(vec![
            ("name".into(), "a".into()),
            ("age".into(), 5.0.into())
        ])
        .matches(&v));
        assert!(q(vec![("addr.city".into(), "Oslo".into())]).matches(&v));
        assert!(!q(vec![("name".into(), "b".into())]).matches(&v));
        assert!(!q(vec![]).matches(&Value::from(3)), "non-map never matches");
        assert!(q(vec![]).matches(&v));
        assert!(CompiledQuery::new(&QuerySpec::default()).matches(&Value::from(3)));
    }

    fn run(spec: &QuerySpec, data: &[(&str, Value)]) -> QueryPage {
        CompiledQuery::new(spec).run(data.iter().map(|(k, v)| (*k, v)), 10_000)
    }

    fn keys(p: &QueryPage) -> Vec<&str> {
        p.rows.iter().map(|r| r.key.as_str()).collect()
    }

    fn sorted_by(field: &str, dir: SortDirection) -> QuerySpec {
        QuerySpec {
            sort: vec![SortField {
                field: field.into(),
                direction: dir,
            }],
            ..Default::default()
        }
    }

    #[test]
    fn sort_rules_of_6_1() {
        let data = [
            ("nil", map(&[("x", Value::Nil)])),
            ("missing", map(&[])),
            ("s_b", map(&[("x", "b".into())])),
            ("n10", map(&[("x", 10.into())])),
            ("f2_5", map(&[("x", 2.5.into())])),
            ("s_a", map(&[("x", "a".into())])),
            ("bool", map(&[("x", true.into())])),
            ("not_a_map", Value::from(7)),
        ];
        let asc = run(&sorted_by("x", SortDirection::Asc), &data);
        assert_eq!(
            keys(&asc),
            vec![
                "f2_5",
                "n10",
                "s_a",
                "s_b",
                "bool",
                "missing",
                "nil",
                "not_a_map"
            ]
        );
        let desc = run(&sorted_by("x", SortDirection::Desc), &data);
        assert_eq!(
            keys(&desc),
            vec![
                "bool",
                "s_b",
                "s_a",
                "n10",
                "f2_5",
                "missing",
                "nil",
                "not_a_map"
            ],
            "desc reverses all but nil/missing last; ties by key"
        );
        assert_eq!(asc.cursor_status, CursorStatus::None);
        assert!(!asc.has_more);
    }

    #[test]
    fn multi_key_sort_is_stable_in_field_order() {
        let data = [
            ("a", map(&[("g", 1.into()), ("n", 3.into())])),
            ("b", map(&[("g", 2.into()), ("n", 1.into())])),
            ("c", map(&[("g", 1.into()), ("n", 5.into())])),
        ];
        let spec = QuerySpec {
            sort: vec![
                SortField {
                    field: "g".into(),
                    direction: SortDirection::Asc,
                },
                SortField {
                    field: "n".into(),
                    direction: SortDirection::Desc,
                },
            ],
            ..Default::default()
        };
        assert_eq!(keys(&run(&spec, &data)), vec!["c", "a", "b"]);
    }

    fn numbered(n: i64) -> Vec<(String, Value)> {
        (0..n)
            .map(|i| {
                (
                    format!("k{i:03}"),
                    map(&[("n", i.into()), ("pad", "x".into())]),
                )
            })
            .collect()
    }

    #[test]
    fn limit_cursor_pagination_and_projection() {
        let data = numbered(25);
        let refs: Vec<(&str, Value)> = data.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        let mut spec = sorted_by("n", SortDirection::Desc);
        spec.limit = Some(10);
        spec.fields = Some(vec!["n".into()]);
        let mut seen = Vec::new();
        let mut pages = 0;
        loop {
            let page = run(&spec, &refs);
            pages += 1;
            for r in &page.rows {
                assert_eq!(
                    r.value,
                    map(&[("n", r.value.as_map().unwrap()[0].1.clone())])
                );
            }
            seen.extend(keys(&page).into_iter().map(str::to_string));
            if spec.cursor.is_some() {
                assert_eq!(page.cursor_status, CursorStatus::Valid);
            }
            match page.next_cursor {
                Some(c) => {
                    assert!(page.has_more);
                    spec.cursor = Some(c);
                }
                None => {
                    assert!(!page.has_more);
                    break;
                }
            }
        }
        assert_eq!(pages, 3);
        let want: Vec<String> = (0..25).rev().map(|i| format!("k{i:03}")).collect();
        assert_eq!(seen, want);
    }

    #[test]
    fn cap_and_zero_limit_set_has_more() {
        let data = numbered(5);
        let q = CompiledQuery::new(&QuerySpec::default());
        let page = q.run(data.iter().map(|(k, v)| (k.as_str(), v)), 3);
        assert_eq!(page.rows.len(), 3);
        assert!(page.has_more, "cut by the snapshot cap");
        let q = CompiledQuery::new(&QuerySpec {
            limit: Some(0),
            ..Default::default()
        });
        let page = q.run(data.iter().map(|(k, v)| (k.as_str(), v)), 100);
        assert!(page.rows.is_empty() && page.has_more && page.next_cursor.is_none());
    }

    #[test]
    fn bad_cursors_are_invalid_and_restart() {
        let data = numbered(3);
        let refs: Vec<(&str, Value)> = data.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        for bad in ["", "zz", "abc", "00", &"0".repeat(MAX_CURSOR_LEN + 2), "é"] {
            let mut spec = sorted_by("n", SortDirection::Asc);
            spec.cursor = Some(bad.to_string());
            let page = run(&spec, &refs);
            assert_eq!(page.cursor_status, CursorStatus::Invalid, "{bad:?}");
            assert_eq!(page.rows.len(), 3);
        }
        // A cursor made for another sort is invalid too.
        let mut spec = sorted_by("n", SortDirection::Asc);
        spec.limit = Some(1);
        let c = run(&spec, &refs).next_cursor.unwrap();
        let mut other = sorted_by("n", SortDirection::Desc);
        other.cursor = Some(c.clone());
        assert_eq!(run(&other, &refs).cursor_status, CursorStatus::Invalid);
        spec.cursor = Some(c);
        assert_eq!(keys(&run(&spec, &refs)), vec!["k001"]);
    }

    #[test]
    fn merge_of_store_shares_equals_single_run() {
        let data = numbered(40);
        let mut spec = sorted_by("n", SortDirection::Asc);
        spec.limit = Some(7);
        let q = CompiledQuery::new(&spec);
        let single = q.run(data.iter().map(|(k, v)| (k.as_str(), v)), 10_000);
        let parts: Vec<PartialResult> = (0..3)
            .map(|s| {
                q.select(
                    data.iter()
                        .enumerate()
                        .filter(|(i, _)| i % 3 == s)
                        .map(|(_, (k, v))| (k.as_str(), v)),
                    10_000,
                )
            })
            .collect();
        assert_eq!(q.merge(&parts, 10_000), single);
    }

    #[test]
    fn odd_value_shapes_never_panic() {
        let weird = [
            Value::Nil,
            Value::F64(f64::NAN),
            Value::Binary(vec![1, 2]),
            Value::Ext(3, vec![9]),
            Value::Array(vec![Value::Nil, Value::Map(vec![])]),
            Value::Map(vec![(Value::from(1), Value::from(2))]),
            // A MessagePack str holding invalid UTF-8.
            rmpv::decode::read_value(&mut &[0xa2u8, 0xff, 0xfe][..]).unwrap(),
        ];
        let data: Vec<(String, Value)> = weird
            .iter()
            .enumerate()
            .map(|(i, v)| (format!("k{i}"), map(&[("x", v.clone())])))
            .collect();
        for op in [
            Eq,
            Neq,
            Gt,
            Like,
            Regex,
            In,
            Between,
            ContainsAll,
            StartsWith,
        ] {
            for operand in &weird {
                let q = pred(Predicate::leaf(op, "x", operand.clone()));
                for (_, v) in &data {
                    let _ = q.matches(v);
                }
            }
        }
        let p = run(
            &sorted_by("x", SortDirection::Asc),
            &data
                .iter()
                .map(|(k, v)| (k.as_str(), v.clone()))
                .collect::<Vec<_>>(),
        );
        assert_eq!(p.rows.len(), weird.len());
    }
}
