//! HDR histograms (microseconds), error counts by kind, and their JSON form.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

const SHARDS: usize = 16;

fn new_hist() -> Histogram<u64> {
    // 1 µs to 10 minutes at 3 significant digits.
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("histogram bounds")
}

/// A histogram of durations in microseconds, sharded so that thousands of
/// session tasks can record without queueing on one lock.
#[derive(Debug)]
pub struct Hist {
    shards: Vec<Mutex<Histogram<u64>>>,
    next: AtomicUsize,
}

impl Default for Hist {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(new_hist())).collect(),
            next: AtomicUsize::new(0),
        }
    }
}

impl Hist {
    /// Record one duration.
    pub fn record(&self, d: Duration) {
        self.record_us(d.as_micros() as u64);
    }

    /// Record one value in microseconds.
    pub fn record_us(&self, us: u64) {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % SHARDS;
        self.shards[i]
            .lock()
            .expect("hist")
            .saturating_record(us.max(1));
    }

    /// Merge of all shards.
    pub fn snapshot(&self) -> Histogram<u64> {
        let mut h = new_hist();
        for s in &self.shards {
            h.add(&*s.lock().expect("hist")).expect("same bounds");
        }
        h
    }

    /// Merge of all shards, emptying them (for per-interval figures).
    pub fn take(&self) -> Histogram<u64> {
        let mut h = new_hist();
        for s in &self.shards {
            let mut g = s.lock().expect("hist");
            h.add(&*g).expect("same bounds");
            g.reset();
        }
        h
    }
}

/// Percentiles of a histogram, in microseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Summary {
    /// Values recorded.
    pub count: u64,
    /// Mean.
    pub mean_us: f64,
    /// Median.
    pub p50_us: u64,
    /// 90th percentile.
    pub p90_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// 99.9th percentile.
    pub p999_us: u64,
    /// Largest.
    pub max_us: u64,
}

/// Summarise a histogram.
pub fn summary(h: &Histogram<u64>) -> Summary {
    if h.is_empty() {
        return Summary::default();
    }
    Summary {
        count: h.len(),
        mean_us: h.mean(),
        p50_us: h.value_at_quantile(0.5),
        p90_us: h.value_at_quantile(0.9),
        p99_us: h.value_at_quantile(0.99),
        p999_us: h.value_at_quantile(0.999),
        max_us: h.max(),
    }
}

/// Errors counted by kind (`setup:refused:desk_offline`, `data:io`, …).
#[derive(Debug, Default)]
pub struct Errors(Mutex<BTreeMap<String, u64>>);

impl Errors {
    /// Count one error of `kind`.
    pub fn add(&self, kind: impl Into<String>) {
        *self
            .0
            .lock()
            .expect("errors")
            .entry(kind.into())
            .or_default() += 1;
    }

    /// Current counts.
    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        self.0.lock().expect("errors").clone()
    }

    /// Total.
    pub fn total(&self) -> u64 {
        self.0.lock().expect("errors").values().sum()
    }
}

/// Median of a list (mean of the two middle values for an even count).
pub fn median(v: &[f64]) -> f64 {
    let mut v: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}
