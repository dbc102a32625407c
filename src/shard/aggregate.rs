//! `groupBy` and `aggregations` of a query (protocol.md 6.1): plain data, no actix.
//!
//! Each store folds its matching records into [`Groups`]: per group the group-by columns, the
//! record count, and one accumulator per requested aggregation. Groups of several stores (the
//! shards of a node, later the owners of a grid) merge without loss: counts and sums add,
//! minima and maxima compare, averages carry their sum and count. The result is one row per
//! group: its key is the group's bucket id (`S1:a` for the string `"a"`), its value a map of
//! `__key`, `__count`, one `__<func>_<field>` per non-count aggregation, and each group-by
//! column with its original typed value.
use std::collections::BTreeMap;
use std::fmt::Write;

use rmpv::Value;
use serde::{Deserialize, Serialize};

use super::query::{as_f64, resolve, split_path, string_form};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AggFunc {
    Count,
    Sum,
    Min,
    Max,
    Avg,
}

impl AggFunc {
    fn name(self) -> &'static str {
        match self {
            AggFunc::Count => "count",
            AggFunc::Sum => "sum",
            AggFunc::Min => "min",
            AggFunc::Max => "max",
            AggFunc::Avg => "avg",
        }
    }
}

/// What to group by and what to compute per group.
#[derive(Clone, Debug, PartialEq)]
pub struct GroupSpec {
    /// (column name as the client gave it, its dot path).
    columns: Vec<(String, Vec<String>)>,
    /// Non-count aggregations, once per output name: (func, field, output name, path).
    aggs: Vec<(AggFunc, String, Vec<String>)>,
}

impl GroupSpec {
    /// `group_by` columns (dot paths) and `(func, field)` aggregations. A count, with or
    /// without a field, is the `__count` every row has; another func without a field
    /// aggregates nothing and is left out, like the reference.
    pub fn new(group_by: &[String], aggregations: &[(AggFunc, Option<String>)]) -> Self {
        let columns = group_by
            .iter()
            .map(|c| (c.clone(), split_path(c)))
            .collect();
        let mut aggs: Vec<(AggFunc, String, Vec<String>)> = Vec::new();
        for (func, field) in aggregations {
            let Some(field) = field else { continue };
            if *func == AggFunc::Count || aggs.iter().any(|(f, n, _)| f == func && n == field) {
                continue;
            }
            aggs.push((*func, field.clone(), split_path(field)));
        }
        GroupSpec { columns, aggs }
    }

    /// The bucket id of a record's group: per column a type tag, the length of its string
    /// form and the form (`S1:a`, `N2:42`, `B4:true`, `Z0:` for nil or missing), joined by
    /// `|`; `*` without columns. Length-prefixed, so two groups never share an id.
    fn bucket(&self, value: &Value) -> (String, Vec<Value>) {
        if self.columns.is_empty() {
            return ("*".to_owned(), Vec::new());
        }
        let mut id = String::new();
        let mut columns = Vec::with_capacity(self.columns.len());
        for (i, (_, path)) in self.columns.iter().enumerate() {
            if i > 0 {
                id.push('|');
            }
            let column = resolve(value, path).cloned().unwrap_or(Value::Nil);
            let tag = match &column {
                Value::Nil => 'Z',
                Value::String(_) => 'S',
                Value::Boolean(_) => 'B',
                v if as_f64(v).is_some() => 'N',
                _ => 'V',
            };
            let mut form = String::new();
            match as_f64(&column) {
                // One number, one group: 1 and 1.0 are the same JS number.
                Some(n) => {
                    let _ = write!(form, "{n}");
                }
                None => string_form(&column, &mut form),
            }
            let _ = write!(id, "{tag}{}:{form}", form.chars().count());
            columns.push(column);
        }
        (id, columns)
    }
}

/// A number with the value it came as (min and max answer the original).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Num {
    n: f64,
    value: Value,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
enum Acc {
    /// The sum as f64, and exactly while every input was an integer and it fits.
    Sum {
        sum: f64,
        exact: Option<i64>,
    },
    Min(Option<Num>),
    Max(Option<Num>),
    Avg {
        sum: f64,
        n: u64,
    },
}

impl Acc {
    fn new(func: AggFunc) -> Self {
        match func {
            AggFunc::Sum | AggFunc::Count => Acc::Sum {
                sum: 0.0,
                exact: Some(0),
            },
            AggFunc::Min => Acc::Min(None),
            AggFunc::Max => Acc::Max(None),
            AggFunc::Avg => Acc::Avg { sum: 0.0, n: 0 },
        }
    }

    /// Folds one record's field in; non-numbers are not aggregated.
    fn add(&mut self, v: Option<&Value>) {
        let Some(v) = v else { return };
        let Some(n) = as_f64(v) else { return };
        match self {
            Acc::Sum { sum, exact } => {
                *sum += n;
                *exact = match (*exact, v) {
                    (Some(e), Value::Integer(i)) => i.as_i64().and_then(|i| e.checked_add(i)),
                    _ => None,
                };
            }
            Acc::Min(m) => {
                if m.as_ref().is_none_or(|m| n < m.n) {
                    *m = Some(Num {
                        n,
                        value: v.clone(),
                    });
                }
            }
            Acc::Max(m) => {
                if m.as_ref().is_none_or(|m| n > m.n) {
                    *m = Some(Num {
                        n,
                        value: v.clone(),
                    });
                }
            }
            Acc::Avg { sum, n: count } => {
                *sum += n;
                *count += 1;
            }
        }
    }

    fn merge(&mut self, other: Acc) {
        match (self, other) {
            (Acc::Sum { sum, exact }, Acc::Sum { sum: s2, exact: e2 }) => {
                *sum += s2;
                *exact = exact.zip(e2).and_then(|(a, b)| a.checked_add(b));
            }
            (Acc::Min(m), Acc::Min(Some(o))) if m.as_ref().is_none_or(|m| o.n < m.n) => {
                *m = Some(o);
            }
            (Acc::Max(m), Acc::Max(Some(o))) if m.as_ref().is_none_or(|m| o.n > m.n) => {
                *m = Some(o);
            }
            (Acc::Avg { sum, n }, Acc::Avg { sum: s2, n: n2 }) => {
                *sum += s2;
                *n += n2;
            }
            _ => {}
        }
    }

    fn value(&self) -> Value {
        match self {
            Acc::Sum { exact: Some(e), .. } => Value::from(*e),
            Acc::Sum { sum, .. } => Value::F64(*sum),
            Acc::Min(m) | Acc::Max(m) => m.as_ref().map_or(Value::Nil, |m| m.value.clone()),
            #[allow(clippy::cast_precision_loss)]
            Acc::Avg { sum, n } if *n > 0 => Value::F64(sum / *n as f64),
            Acc::Avg { .. } => Value::Nil,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Group {
    columns: Vec<Value>,
    count: u64,
    accs: Vec<Acc>,
}

/// The groups of some records, mergeable with the groups of others (also across nodes: it
/// travels as MessagePack in a gathered query's answer).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Groups {
    groups: BTreeMap<String, Group>,
}

impl Groups {
    /// Whether every group has the shape `spec` gives (one column per `groupBy` field, one
    /// accumulator of the right kind per aggregation): a peer's groups are checked before
    /// they are merged.
    pub fn fits(&self, spec: &GroupSpec) -> bool {
        self.groups.values().all(|g| {
            g.columns.len() == spec.columns.len()
                && g.accs.len() == spec.aggs.len()
                && g.accs.iter().zip(&spec.aggs).all(|(acc, (f, _, _))| {
                    std::mem::discriminant(acc) == std::mem::discriminant(&Acc::new(*f))
                })
        })
    }

    /// Folds one matching record in.
    pub fn add(&mut self, spec: &GroupSpec, value: &Value) {
        let (id, columns) = spec.bucket(value);
        let group = self.groups.entry(id).or_insert_with(|| Group {
            columns,
            count: 0,
            accs: spec.aggs.iter().map(|(f, _, _)| Acc::new(*f)).collect(),
        });
        group.count += 1;
        for (acc, (_, _, path)) in group.accs.iter_mut().zip(&spec.aggs) {
            acc.add(resolve(value, path));
        }
    }

    /// Adds another store's groups (disjoint records) to these.
    pub fn merge(&mut self, other: Groups) {
        for (id, group) in other.groups {
            match self.groups.get_mut(&id) {
                Some(mine) => {
                    mine.count += group.count;
                    for (a, b) in mine.accs.iter_mut().zip(group.accs) {
                        a.merge(b);
                    }
                }
                None => {
                    self.groups.insert(id, group);
                }
            }
        }
    }

    pub fn len(&self) -> usize {
        self.groups.len()
    }

    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    /// One row per group, in bucket id order: (bucket id, row value).
    pub fn rows(&self, spec: &GroupSpec) -> Vec<(String, Value)> {
        self.groups
            .iter()
            .map(|(id, g)| {
                let mut row: Vec<(Value, Value)> = Vec::with_capacity(2 + g.accs.len());
                row.push(("__key".into(), Value::from(id.as_str())));
                row.push(("__count".into(), Value::from(g.count)));
                for (acc, (func, field, _)) in g.accs.iter().zip(&spec.aggs) {
                    row.push((format!("__{}_{field}", func.name()).into(), acc.value()));
                }
                for ((name, _), column) in spec.columns.iter().zip(&g.columns) {
                    row.push((name.as_str().into(), column.clone()));
                }
                (id.clone(), Value::Map(row))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(owner: &str, price: Value) -> Value {
        Value::Map(vec![
            ("owner".into(), owner.into()),
            ("price".into(), price),
        ])
    }

    fn field<'a>(row: &'a Value, name: &str) -> &'a Value {
        row.as_map()
            .and_then(|m| m.iter().find(|(k, _)| k.as_str() == Some(name)))
            .map(|(_, v)| v)
            .unwrap_or_else(|| panic!("no {name} in {row}"))
    }

    fn spec() -> GroupSpec {
        GroupSpec::new(
            &["owner".into()],
            &[
                (AggFunc::Count, None),
                (AggFunc::Sum, Some("price".into())),
                (AggFunc::Min, Some("price".into())),
                (AggFunc::Max, Some("price".into())),
                (AggFunc::Avg, Some("price".into())),
            ],
        )
    }

    #[test]
    fn groups_travel_as_messagepack_and_are_checked_against_the_spec() {
        let s = spec();
        let mut g = Groups::default();
        for r in [rec("a", 10.into()), rec("b", Value::F64(2.5))] {
            g.add(&s, &r);
        }
        let bytes = rmp_serde::to_vec_named(&g).unwrap();
        let back: Groups = rmp_serde::from_slice(&bytes).unwrap();
        assert_eq!(back, g);
        assert!(back.fits(&s));
        let other = GroupSpec::new(&["owner".into()], &[(AggFunc::Count, None)]);
        assert!(!back.fits(&other), "another aggregation list");
        let mut merged = Groups::default();
        merged.merge(back);
        merged.merge(g.clone());
        let row = &merged.rows(&s)[0].1;
        assert_eq!(field(row, "__count"), &Value::from(2));
    }

    #[test]
    fn one_row_per_group_with_count_and_each_aggregation() {
        let s = spec();
        let mut g = Groups::default();
        for r in [
            rec("a", 10.into()),
            rec("a", 30.into()),
            rec("b", Value::F64(2.5)),
            rec("a", "not a number".into()),
        ] {
            g.add(&s, &r);
        }
        let rows = g.rows(&s);
        assert_eq!(
            rows.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
            ["S1:a", "S1:b"]
        );
        let a = &rows[0].1;
        assert_eq!(field(a, "__key"), &Value::from("S1:a"));
        assert_eq!(field(a, "__count"), &Value::from(3u64));
        assert_eq!(field(a, "__sum_price"), &Value::from(40));
        assert_eq!(field(a, "__min_price"), &Value::from(10));
        assert_eq!(field(a, "__max_price"), &Value::from(30));
        assert_eq!(field(a, "__avg_price"), &Value::F64(20.0));
        assert_eq!(field(a, "owner"), &Value::from("a"));
        assert_eq!(a.as_map().map(Vec::len), Some(7), "nothing else: {a}");
        assert_eq!(field(&rows[1].1, "__sum_price"), &Value::F64(2.5));
    }

    #[test]
    fn groups_of_disjoint_stores_merge_to_the_groups_of_all() {
        let s = spec();
        let records: Vec<Value> = (0..40)
            .map(|i| rec(["x", "y", "z"][i % 3], Value::from(i as i64 - 7)))
            .collect();
        let mut whole = Groups::default();
        for r in &records {
            whole.add(&s, r);
        }
        let mut parts = [Groups::default(), Groups::default(), Groups::default()];
        for (i, r) in records.iter().enumerate() {
            parts[i % 4 % 3].add(&s, r);
        }
        let mut merged = Groups::default();
        for p in parts {
            merged.merge(p);
        }
        assert_eq!(merged.rows(&s), whole.rows(&s));
    }

    #[test]
    fn bucket_ids_are_typed_and_length_prefixed() {
        let s = GroupSpec::new(&["a".into(), "b".into()], &[]);
        let id = |v: Value| s.bucket(&v).0;
        let m = |a: Value, b: Value| Value::Map(vec![("a".into(), a), ("b".into(), b)]);
        assert_eq!(id(m("x|y".into(), 1.into())), "S3:x|y|N1:1");
        // A separator inside a value cannot make two groups collide.
        assert_ne!(
            id(m("x".into(), "y|z".into())),
            id(m("x|y".into(), "z".into()))
        );
        assert_eq!(id(m(1.into(), Value::F64(1.0))), "N1:1|N1:1");
        assert_eq!(id(m(true.into(), Value::Nil)), "B4:true|Z0:");
        assert_eq!(id(Value::Map(vec![])), "Z0:|Z0:", "missing columns are nil");
        assert_eq!(GroupSpec::new(&[], &[]).bucket(&Value::Nil).0, "*");
    }

    #[test]
    fn a_sum_past_i64_or_over_floats_is_a_float() {
        let s = GroupSpec::new(&[], &[(AggFunc::Sum, Some("n".into()))]);
        let mut g = Groups::default();
        for n in [i64::MAX, 1] {
            g.add(&s, &Value::Map(vec![("n".into(), Value::from(n))]));
        }
        let rows = g.rows(&s);
        assert!(matches!(field(&rows[0].1, "__sum_n"), Value::F64(_)));
    }

    #[test]
    fn counts_and_fieldless_aggregations_add_no_columns() {
        let s = GroupSpec::new(
            &[],
            &[
                (AggFunc::Count, Some("price".into())),
                (AggFunc::Sum, None),
                (AggFunc::Sum, Some("price".into())),
                (AggFunc::Sum, Some("price".into())),
            ],
        );
        let mut g = Groups::default();
        g.add(&s, &rec("a", 1.into()));
        let row = &g.rows(&s)[0].1;
        // __key, __count, __sum_price once.
        assert_eq!(row.as_map().map(Vec::len), Some(3), "{row}");
        assert_eq!(field(row, "__sum_price"), &Value::from(1));
    }
}
