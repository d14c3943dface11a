//! A latency histogram that records with atomic adds only.
//!
//! prometheus-client's own `Histogram` takes a mutex per observation; a
//! histogram shared by every core (latency by op) would make the cores
//! contend on it. This one keeps, per core slot (see [`super::sharded`]),
//! one `AtomicU64` per bucket and the sum in nanoseconds, so `observe` is
//! two relaxed adds on the core's own cache lines. Scrapes sum the slots;
//! the total count is the sum of the buckets. Under concurrent observations
//! the sum may lead or trail the count by a few samples, which Prometheus
//! tolerates (it is a scrape-time snapshot either way).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};

use super::sharded::{slot_of_thread, Padded};

/// Upper bounds of the latency buckets, in seconds: from 50 µs (a cached
/// read on loopback) to 10 s (a request that waited out an election).
pub const LATENCY_BUCKETS_SECONDS: [f64; 17] =
    [0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Most bucket bounds a histogram may have (the counts live inline in each
/// core's slot, so they share no cache line with another core's).
pub const BUCKETS_MAX: usize = 24;

const _: () = assert!(LATENCY_BUCKETS_SECONDS.len() <= BUCKETS_MAX);

/// One core's counts: one per bound, then the +Inf bucket (not cumulative).
#[derive(Debug, Default)]
struct Slot {
    counts: [AtomicU64; BUCKETS_MAX + 1],
    sum_nanos: AtomicU64,
}

#[derive(Debug)]
struct Inner {
    /// Bucket upper bounds in nanoseconds, ascending.
    bounds_nanos: Vec<u64>,
    bounds_seconds: &'static [f64],
    slots: Box<[Padded<Slot>]>,
}

/// Cheap to clone: clones share the counts.
#[derive(Debug, Clone)]
pub struct DurationHistogram(Arc<Inner>);

impl DurationHistogram {
    /// A histogram with these bucket bounds and `slots` core slots.
    pub fn new(bounds_seconds: &'static [f64], slots: usize) -> DurationHistogram {
        assert!(bounds_seconds.len() <= BUCKETS_MAX, "at most {BUCKETS_MAX} buckets");
        assert!(bounds_seconds.windows(2).all(|w| w[0] < w[1]), "bucket bounds ascend");
        assert!(bounds_seconds.iter().all(|b| b.is_finite() && *b > 0.0), "bucket bounds are positive");
        assert!(slots > 0, "a histogram needs a slot");
        let bounds_nanos = bounds_seconds.iter().map(|s| (s * 1e9).round() as u64).collect();
        let slots = (0..slots).map(|_| Padded::default()).collect();
        DurationHistogram(Arc::new(Inner { bounds_nanos, bounds_seconds, slots }))
    }

    /// A histogram with [`LATENCY_BUCKETS_SECONDS`].
    pub fn latency(slots: usize) -> DurationHistogram {
        DurationHistogram::new(&LATENCY_BUCKETS_SECONDS, slots)
    }

    pub fn observe(&self, d: Duration) {
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let bucket = self.0.bounds_nanos.partition_point(|bound| *bound < nanos);
        let slot = &self.0.slots[slot_of_thread(self.0.slots.len())].0;
        slot.counts[bucket].fetch_add(1, Ordering::Relaxed);
        slot.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.buckets().iter().map(|(_, n)| n).sum()
    }

    /// (upper bound in seconds, observations in that bucket alone), the
    /// last bound being +Inf, summed over the slots.
    fn buckets(&self) -> Vec<(f64, u64)> {
        let bounds = self.0.bounds_seconds.iter().copied().chain(std::iter::once(f64::INFINITY));
        bounds
            .enumerate()
            .map(|(i, bound)| (bound, self.0.slots.iter().map(|s| s.0.counts[i].load(Ordering::Relaxed)).sum()))
            .collect()
    }

    fn sum_seconds(&self) -> f64 {
        let nanos: u64 = self.0.slots.iter().map(|s| s.0.sum_nanos.load(Ordering::Relaxed)).sum();
        nanos as f64 / 1e9
    }
}

impl TypedMetric for DurationHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for DurationHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let buckets = self.buckets();
        let count = buckets.iter().map(|(_, n)| n).sum();
        encoder.encode_histogram::<NoLabelSet>(self.sum_seconds(), count, &buckets, None)
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
        let h = DurationHistogram::new(&[0.001, 0.01], 1);
        h.observe(Duration::from_micros(1000)); // exactly on a bound: le="0.001"
        h.observe(Duration::from_micros(1001));
        h.observe(Duration::from_secs(5));
        assert_eq!(h.buckets(), vec![(0.001, 1), (0.01, 1), (f64::INFINITY, 1)]);
        assert_eq!(h.count(), 3);
    }

    #[test]
    fn encodes_as_a_cumulative_openmetrics_histogram() {
        let mut registry = prometheus_client::registry::Registry::default();
        let h = DurationHistogram::new(&[0.5], 3);
        registry.register("wait", "How long.", h.clone());
        h.observe(Duration::from_millis(250));
        let h2 = h.clone();
        std::thread::spawn(move || {
            super::super::sharded::bind_thread_to_slot(2);
            h2.observe(Duration::from_millis(750));
        })
        .join()
        .unwrap();
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(text.contains("wait_sum 1.0\n"), "{text}");
        assert!(text.contains("wait_count 2\n"), "{text}");
        assert!(text.contains("wait_bucket{le=\"0.5\"} 1\n"), "{text}");
        assert!(text.contains("wait_bucket{le=\"+Inf\"} 2\n"), "{text}");
    }
}
