//! Histograms that actors fill locally and the metrics actor merges.
//!
//! The `prometheus` crate's histogram only takes single observations; replaying every
//! observation an actor made would be a message (or a loop) per operation. Instead an actor
//! keeps a [`LocalHistogram`] (plain counts, no atomics), ships it in its report, and the
//! [`HistogramFamily`] collector adds the bucket counts up.
use std::collections::BTreeMap;
use std::sync::Mutex;

use prometheus::core::{Collector, Desc};
use prometheus::proto::{self, MetricFamily, MetricType};

/// Time to handle one actor message: 1 µs … 5 s.
pub const HANDLE_SECONDS: &[f64] = &[
    1e-6, 5e-6, 1e-5, 5e-5, 1e-4, 5e-4, 1e-3, 5e-3, 1e-2, 5e-2, 0.1, 0.5, 1.0, 5.0,
];

/// Time a message waited in an actor's mailbox: a hand-off to an idle actor on another thread
/// takes a few microseconds, a backlog milliseconds, an overloaded actor seconds.
pub const WAIT_SECONDS: &[f64] = &[
    1e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Duration of one durable commit (fsync included): 50 µs … 2.5 s.
pub const COMMIT_SECONDS: &[f64] = &[
    5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// Records in one commit group.
pub const COMMIT_RECORDS: &[f64] = &[
    1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0,
];

/// Bucket counts since the last report; `counts` has one extra slot for +Inf.
#[derive(Clone, Debug, PartialEq)]
pub struct LocalHistogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl LocalHistogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        LocalHistogram {
            bounds,
            counts: vec![0; bounds.len() + 1],
            sum: 0.0,
            count: 0,
        }
    }

    #[inline]
    pub fn observe(&mut self, v: f64) {
        let slot = self.bounds.partition_point(|b| *b < v);
        self.counts[slot] += 1;
        self.sum += v;
        self.count += 1;
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn sum(&self) -> f64 {
        self.sum
    }

    /// Returns what was observed since the last take and starts afresh.
    pub fn take(&mut self) -> LocalHistogram {
        let fresh = LocalHistogram::new(self.bounds);
        std::mem::replace(self, fresh)
    }

    pub fn merge(&mut self, other: &LocalHistogram) {
        if other.bounds != self.bounds {
            // Two families never share a series; a mismatch is a wiring bug, not input.
            debug_assert!(false, "merging histograms with different buckets");
            return;
        }
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.sum += other.sum;
        self.count += other.count;
    }
}

/// A histogram family whose series are sums of reported [`LocalHistogram`]s.
pub struct HistogramFamily {
    desc: Desc,
    bounds: &'static [f64],
    label_names: Vec<String>,
    series: Mutex<BTreeMap<Vec<String>, LocalHistogram>>,
}

impl HistogramFamily {
    pub fn new(
        name: &str,
        help: &str,
        label_names: &[&str],
        bounds: &'static [f64],
    ) -> prometheus::Result<Self> {
        let label_names: Vec<String> = label_names.iter().map(|s| s.to_string()).collect();
        Ok(HistogramFamily {
            desc: Desc::new(
                name.into(),
                help.into(),
                label_names.clone(),
                Default::default(),
            )?,
            bounds,
            label_names,
            series: Mutex::new(BTreeMap::new()),
        })
    }

    pub fn bounds(&self) -> &'static [f64] {
        self.bounds
    }

    /// A series at zero, so that it is exported before its first observation.
    pub fn declare(&self, label_values: &[&str]) {
        self.merge_always(label_values, &LocalHistogram::new(self.bounds));
    }

    pub fn merge(&self, label_values: &[&str], delta: &LocalHistogram) {
        if !delta.is_empty() {
            self.merge_always(label_values, delta);
        }
    }

    fn merge_always(&self, label_values: &[&str], delta: &LocalHistogram) {
        let key: Vec<String> = label_values.iter().map(|s| s.to_string()).collect();
        if let Ok(mut series) = self.series.lock() {
            series
                .entry(key)
                .or_insert_with(|| LocalHistogram::new(self.bounds))
                .merge(delta);
        }
    }

    /// (count, sum) of one series, for tests and `/debug/actors`.
    pub fn totals(&self, label_values: &[&str]) -> Option<(u64, f64)> {
        let key: Vec<String> = label_values.iter().map(|s| s.to_string()).collect();
        let series = self.series.lock().ok()?;
        series.get(&key).map(|h| (h.count, h.sum))
    }
}

impl Collector for HistogramFamily {
    fn desc(&self) -> Vec<&Desc> {
        vec![&self.desc]
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let Ok(series) = self.series.lock() else {
            return Vec::new();
        };
        let metrics: Vec<proto::Metric> = series
            .iter()
            .map(|(values, h)| {
                let mut cumulative = 0;
                let buckets = self
                    .bounds
                    .iter()
                    .zip(&h.counts)
                    .map(|(bound, n)| {
                        cumulative += n;
                        let mut b = proto::Bucket::default();
                        b.set_upper_bound(*bound);
                        b.set_cumulative_count(cumulative);
                        b
                    })
                    .collect();
                let mut ph = proto::Histogram::default();
                ph.set_bucket(buckets);
                ph.set_sample_count(h.count);
                ph.set_sample_sum(h.sum);
                let mut m = proto::Metric::default();
                m.set_label(label_pairs(&self.label_names, values));
                m.set_histogram(ph);
                m
            })
            .collect();
        let mut mf = MetricFamily::default();
        mf.set_name(self.desc.fq_name.clone());
        mf.set_help(self.desc.help.clone());
        mf.set_field_type(MetricType::HISTOGRAM);
        mf.set_metric(metrics);
        vec![mf]
    }
}

pub(crate) fn label_pairs(names: &[String], values: &[String]) -> Vec<proto::LabelPair> {
    names
        .iter()
        .zip(values)
        .map(|(n, v)| {
            let mut p = proto::LabelPair::default();
            p.set_name(n.clone());
            p.set_value(v.clone());
            p
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_le_buckets() {
        let mut h = LocalHistogram::new(&[1.0, 2.0]);
        h.observe(0.5);
        h.observe(1.0);
        h.observe(1.5);
        h.observe(9.0);
        assert_eq!(h.counts, vec![2, 1, 1]);
        assert_eq!(h.count(), 4);
        assert_eq!(h.sum(), 12.0);
    }

    #[test]
    fn family_sums_reports_cumulatively() {
        let f = HistogramFamily::new("t_seconds", "help", &["actor"], &[1.0, 2.0]).unwrap();
        let mut h = LocalHistogram::new(&[1.0, 2.0]);
        h.observe(0.5);
        f.merge(&["a"], &h.take());
        h.observe(1.5);
        h.observe(3.0);
        f.merge(&["a"], &h.take());
        let mf = f.collect();
        let m = &mf[0].get_metric()[0];
        let hist = m.get_histogram();
        assert_eq!(hist.get_sample_count(), 3);
        let cum: Vec<u64> = hist
            .get_bucket()
            .iter()
            .map(|b| b.cumulative_count())
            .collect();
        assert_eq!(cum, vec![1, 2]);
    }
}
