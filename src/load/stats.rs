//! Latency histograms and counters. Each connection task keeps its own (no sharing on the hot
//! path) and the scenario merges them at the end.
use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde_json::{json, Value};

/// Microseconds, 1 µs to 10 min, 3 significant digits: ~0.1 % error at any latency, and a
/// value above the range is clamped instead of lost.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("static bounds are valid")
}

pub fn record(h: &mut Histogram<u64>, micros: u64) {
    h.saturating_record(micros.max(1));
}

/// Whole microseconds as milliseconds: exact to the third decimal.
fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// `{count, p50_ms, p99_ms, p999_ms, max_ms, mean_ms}`; the percentiles are null when empty.
pub fn latency_json(h: &Histogram<u64>) -> Value {
    if h.is_empty() {
        return json!({"count": 0, "p50_ms": null, "p99_ms": null, "p999_ms": null,
                      "max_ms": null, "mean_ms": null});
    }
    json!({
        "count": h.len(),
        "p50_ms": ms(h.value_at_quantile(0.5)),
        "p99_ms": ms(h.value_at_quantile(0.99)),
        "p999_ms": ms(h.value_at_quantile(0.999)),
        "max_ms": ms(h.max()),
        "mean_ms": h.mean().round() / 1000.0,
    })
}

/// ERROR replies by code, and connection-level failures by label.
#[derive(Default, Debug, Clone)]
pub struct Tally(pub BTreeMap<String, u64>);

impl Tally {
    pub fn add(&mut self, key: impl Into<String>, n: u64) {
        *self.0.entry(key.into()).or_default() += n;
    }

    pub fn merge(&mut self, other: &Tally) {
        for (k, v) in &other.0 {
            self.add(k.clone(), *v);
        }
    }

    pub fn total(&self) -> u64 {
        self.0.values().sum()
    }

    pub fn json(&self) -> Value {
        Value::Object(self.0.iter().map(|(k, v)| (k.clone(), json!(v))).collect())
    }
}

/// Rounds a rate for the report.
pub fn per_sec(n: u64, secs: f64) -> f64 {
    if secs <= 0.0 {
        0.0
    } else {
        (n as f64 / secs * 10.0).round() / 10.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_in_ms() {
        let mut h = histogram();
        for us in [1000, 2000, 3000] {
            record(&mut h, us);
        }
        let j = latency_json(&h);
        assert_eq!(j["count"], 3);
        assert_eq!(j["p50_ms"], 2.0);
        assert!(latency_json(&histogram())["p50_ms"].is_null());
    }

    #[test]
    fn tally_merges() {
        let mut a = Tally::default();
        a.add("429", 2);
        let mut b = Tally::default();
        b.add("429", 1);
        b.add("500", 1);
        a.merge(&b);
        assert_eq!(a.total(), 4);
        assert_eq!(a.json()["429"], 3);
    }
}
