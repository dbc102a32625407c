//! A Prometheus summary of integer observations over a sliding time window.
//!
//! The `prometheus` crate has no summary type. `topgun_subscribers_per_event` needs quantiles
//! 0.5/0.9/0.99 over the last `window` (default 10 minutes) plus `_sum`/`_count` since start.
//! Observations are small integers (subscriber counts), so the window keeps exact frequencies
//! per value in a ring of time slots (`SLOTS` per window, like client_golang's age buckets):
//! quantiles are exact (nearest rank) and memory is bounded by the number of distinct values
//! per slot, not by the number of observations. Old slots fall out as time passes.
use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use prometheus::core::{Collector, Desc};
use prometheus::proto::{self, MetricFamily, MetricType};

/// The quantiles the node publishes.
pub const QUANTILES: [f64; 3] = [0.5, 0.9, 0.99];

/// Slots per window: the window slides in steps of window/SLOTS.
const SLOTS: u32 = 10;

/// The plain, unit-testable part: a windowed frequency table.
#[derive(Debug)]
pub struct WindowedCounts {
    slot_len: Duration,
    origin: Instant,
    /// (slot number, value → count), oldest first.
    slots: VecDeque<(u64, BTreeMap<u64, u64>)>,
    total_count: u64,
    total_sum: u64,
}

impl WindowedCounts {
    pub fn new(window: Duration, origin: Instant) -> Self {
        let slot_len = (window / SLOTS).max(Duration::from_millis(1));
        WindowedCounts {
            slot_len,
            origin,
            slots: VecDeque::new(),
            total_count: 0,
            total_sum: 0,
        }
    }

    fn slot_of(&self, now: Instant) -> u64 {
        (now.saturating_duration_since(self.origin).as_nanos() / self.slot_len.as_nanos()) as u64
    }

    fn expire(&mut self, now: Instant) {
        let current = self.slot_of(now);
        while let Some((slot, _)) = self.slots.front() {
            if current.saturating_sub(*slot) >= u64::from(SLOTS) {
                self.slots.pop_front();
            } else {
                break;
            }
        }
    }

    /// Records `count` observations of `value`.
    pub fn observe(&mut self, value: u64, count: u64, now: Instant) {
        if count == 0 {
            return;
        }
        self.expire(now);
        let slot = self.slot_of(now);
        match self.slots.back_mut() {
            Some((s, table)) if *s == slot => *table.entry(value).or_default() += count,
            _ => {
                let mut table = BTreeMap::new();
                table.insert(value, count);
                self.slots.push_back((slot, table));
            }
        }
        self.total_count += count;
        self.total_sum = self.total_sum.saturating_add(value.saturating_mul(count));
    }

    /// Nearest-rank quantile over the window: the smallest value v such that at least
    /// ceil(q·n) observations are ≤ v. `None` when the window is empty.
    pub fn quantiles(&mut self, qs: &[f64], now: Instant) -> Vec<Option<u64>> {
        self.expire(now);
        let mut merged: BTreeMap<u64, u64> = BTreeMap::new();
        for (_, table) in &self.slots {
            for (v, c) in table {
                *merged.entry(*v).or_default() += c;
            }
        }
        let n: u64 = merged.values().sum();
        qs.iter()
            .map(|q| {
                if n == 0 {
                    return None;
                }
                let rank = ((q * n as f64).ceil() as u64).clamp(1, n);
                let mut seen = 0;
                merged.iter().find_map(|(v, c)| {
                    seen += c;
                    (seen >= rank).then_some(*v)
                })
            })
            .collect()
    }

    pub fn count(&self) -> u64 {
        self.total_count
    }

    pub fn sum(&self) -> u64 {
        self.total_sum
    }
}

/// The collector registered with the registry.
pub struct SlidingSummary {
    desc: Desc,
    inner: Mutex<WindowedCounts>,
}

impl SlidingSummary {
    pub fn new(name: &str, help: &str, window: Duration) -> prometheus::Result<Self> {
        Ok(SlidingSummary {
            desc: Desc::new(name.into(), help.into(), vec![], Default::default())?,
            inner: Mutex::new(WindowedCounts::new(window, Instant::now())),
        })
    }

    /// Adds a report's frequencies (value → number of observations).
    pub fn observe_counts(&self, counts: impl IntoIterator<Item = (u64, u64)>) {
        let now = Instant::now();
        if let Ok(mut inner) = self.inner.lock() {
            for (value, count) in counts {
                inner.observe(value, count, now);
            }
        }
    }

    pub fn totals(&self) -> (u64, u64) {
        self.inner
            .lock()
            .map(|i| (i.count(), i.sum()))
            .unwrap_or((0, 0))
    }
}

impl Collector for SlidingSummary {
    fn desc(&self) -> Vec<&Desc> {
        vec![&self.desc]
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let Ok(mut inner) = self.inner.lock() else {
            return Vec::new();
        };
        let values = inner.quantiles(&QUANTILES, Instant::now());
        let quantiles = QUANTILES
            .iter()
            .zip(values)
            .map(|(q, v)| {
                let mut pq = proto::Quantile::default();
                pq.set_quantile(*q);
                // Prometheus convention for an empty window is NaN.
                pq.set_value(v.map_or(f64::NAN, |v| v as f64));
                pq
            })
            .collect();
        let mut s = proto::Summary::default();
        s.set_quantile(quantiles);
        s.set_sample_count(inner.count());
        s.set_sample_sum(inner.sum() as f64);
        let mut m = proto::Metric::default();
        m.set_summary(s);
        let mut mf = MetricFamily::default();
        mf.set_name(self.desc.fq_name.clone());
        mf.set_help(self.desc.help.clone());
        mf.set_field_type(MetricType::SUMMARY);
        mf.set_metric(vec![m]);
        vec![mf]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_quantiles() {
        let t0 = Instant::now();
        let mut w = WindowedCounts::new(Duration::from_secs(600), t0);
        for v in 1..=100 {
            w.observe(v, 1, t0);
        }
        assert_eq!(
            w.quantiles(&QUANTILES, t0),
            vec![Some(50), Some(90), Some(99)]
        );
        assert_eq!(w.count(), 100);
        assert_eq!(w.sum(), 5050);
    }

    #[test]
    fn frequencies_count_as_repeated_observations() {
        let t0 = Instant::now();
        let mut w = WindowedCounts::new(Duration::from_secs(600), t0);
        w.observe(3, 9, t0);
        w.observe(1000, 1, t0);
        assert_eq!(
            w.quantiles(&QUANTILES, t0),
            vec![Some(3), Some(3), Some(1000)]
        );
    }

    #[test]
    fn old_observations_leave_the_window_but_not_the_totals() {
        let t0 = Instant::now();
        let mut w = WindowedCounts::new(Duration::from_secs(10), t0);
        w.observe(7, 1, t0);
        w.observe(1, 1, t0 + Duration::from_secs(5));
        assert_eq!(
            w.quantiles(&[0.99], t0 + Duration::from_secs(5)),
            vec![Some(7)]
        );
        // 7 was observed in slot 0; at t=10 s slot 0 is ten slots old and gone.
        assert_eq!(
            w.quantiles(&[0.99], t0 + Duration::from_secs(10)),
            vec![Some(1)]
        );
        assert_eq!(
            w.quantiles(&[0.5], t0 + Duration::from_secs(16)),
            vec![None]
        );
        assert_eq!((w.count(), w.sum()), (2, 8));
    }

    #[test]
    fn single_observation_is_every_quantile() {
        let t0 = Instant::now();
        let mut w = WindowedCounts::new(Duration::from_secs(600), t0);
        w.observe(3, 1, t0);
        assert_eq!(w.quantiles(&QUANTILES, t0), vec![Some(3), Some(3), Some(3)]);
    }

    #[test]
    fn collector_emits_sum_count_and_nan_when_empty() {
        let s = SlidingSummary::new("s", "h", Duration::from_secs(60)).unwrap();
        let mf = s.collect();
        assert!(mf[0].get_metric()[0].get_summary().get_quantile()[0]
            .value()
            .is_nan());
        s.observe_counts([(3, 1)]);
        assert_eq!(s.totals(), (1, 3));
    }
}
