//! A latency histogram that records with atomic adds only.
//!
//! prometheus-client's own `Histogram` takes a mutex per observation; a
//! histogram shared by every core (latency by op) would make the cores
//! contend on it. This one keeps one `AtomicU64` per bucket and the sum in
//! nanoseconds, so `observe` is two relaxed adds. The total count is the sum
//! of the buckets, computed when encoding; under concurrent observations the
//! sum may lead or trail the count by a few samples, which Prometheus
//! tolerates (it is a scrape-time snapshot either way).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};

/// Upper bounds of the latency buckets, in seconds: from 50 µs (a cached
/// read on loopback) to 10 s (a request that waited out an election).
pub const LATENCY_BUCKETS_SECONDS: [f64; 17] =
    [0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

#[derive(Debug)]
struct Inner {
    /// Bucket upper bounds in nanoseconds, ascending.
    bounds_nanos: Vec<u64>,
    bounds_seconds: &'static [f64],
    /// One count per bound, then the +Inf bucket. Not cumulative.
    counts: Vec<AtomicU64>,
    sum_nanos: AtomicU64,
}

/// Cheap to clone: clones share the counts.
#[derive(Debug, Clone)]
pub struct DurationHistogram(Arc<Inner>);

impl DurationHistogram {
    pub fn new(bounds_seconds: &'static [f64]) -> DurationHistogram {
        assert!(bounds_seconds.windows(2).all(|w| w[0] < w[1]), "bucket bounds ascend");
        assert!(bounds_seconds.iter().all(|b| b.is_finite() && *b > 0.0), "bucket bounds are positive");
        let bounds_nanos = bounds_seconds.iter().map(|s| (s * 1e9).round() as u64).collect();
        let counts = (0..=bounds_seconds.len()).map(|_| AtomicU64::new(0)).collect();
        DurationHistogram(Arc::new(Inner { bounds_nanos, bounds_seconds, counts, sum_nanos: AtomicU64::new(0) }))
    }

    /// A histogram with [`LATENCY_BUCKETS_SECONDS`].
    pub fn latency() -> DurationHistogram {
        DurationHistogram::new(&LATENCY_BUCKETS_SECONDS)
    }

    pub fn observe(&self, d: Duration) {
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let bucket = self.0.bounds_nanos.partition_point(|bound| *bound < nanos);
        self.0.counts[bucket].fetch_add(1, Ordering::Relaxed);
        self.0.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.0.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// (upper bound in seconds, observations in that bucket alone), the
    /// last bound being +Inf.
    fn buckets(&self) -> Vec<(f64, u64)> {
        let bounds = self.0.bounds_seconds.iter().copied().chain(std::iter::once(f64::INFINITY));
        bounds.zip(self.0.counts.iter().map(|c| c.load(Ordering::Relaxed))).collect()
    }
}

impl TypedMetric for DurationHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for DurationHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let buckets = self.buckets();
        let count = buckets.iter().map(|(_, n)| n).sum();
        let sum = self.0.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_the_first_bucket_that_holds_them() {
        let h = DurationHistogram::new(&[0.001, 0.01]);
        h.observe(Duration::from_micros(1000)); // exactly on a bound: le="0.001"
        h.observe(Duration::from_micros(1001));
        h.observe(Duration::from_secs(5));
        assert_eq!(h.buckets(), vec![(0.001, 1), (0.01, 1), (f64::INFINITY, 1)]);
        assert_eq!(h.count(), 3);
    }

    #[test]
    fn encodes_as_a_cumulative_openmetrics_histogram() {
        let mut registry = prometheus_client::registry::Registry::default();
        let h = DurationHistogram::new(&[0.5]);
        registry.register("wait", "How long.", h.clone());
        h.observe(Duration::from_millis(250));
        h.observe(Duration::from_millis(750));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(text.contains("wait_sum 1.0\n"), "{text}");
        assert!(text.contains("wait_count 2\n"), "{text}");
        assert!(text.contains("wait_bucket{le=\"0.5\"} 1\n"), "{text}");
        assert!(text.contains("wait_bucket{le=\"+Inf\"} 2\n"), "{text}");
    }
}
