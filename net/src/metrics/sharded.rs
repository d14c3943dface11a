//! Metrics that every core updates without sharing a cache line with
//! another core: one slot per core, summed when Prometheus scrapes.
//!
//! A counter or histogram for a label set such as `{protocol="native",
//! op="get"}` is hit by every core; a single atomic would bounce its cache
//! line between them on every request. Each core instead writes its own
//! 128-byte-aligned slot (two 64-byte lines: adjacent-line prefetchers pull
//! pairs). The slot of the calling thread is set once per executor with
//! [`bind_thread_to_slot`]; threads that never call it use slot 0.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};

thread_local! {
    static SLOT: Cell<usize> = const { Cell::new(0) };
}

/// Makes the calling thread (a core's executor) record into slot `slot`
/// (taken modulo each metric's slot count).
pub fn bind_thread_to_slot(slot: usize) {
    SLOT.with(|s| s.set(slot));
}

/// The calling thread's slot among `slots`.
pub(crate) fn slot_of_thread(slots: usize) -> usize {
    SLOT.with(Cell::get) % slots
}

/// An atomic on cache lines of its own.
#[derive(Debug, Default)]
#[repr(align(128))]
pub(crate) struct Padded<T>(pub T);

/// A monotonic counter with one slot per core.
#[derive(Debug, Clone)]
pub struct ShardedCounter(Arc<[Padded<AtomicU64>]>);

impl ShardedCounter {
    pub fn new(slots: usize) -> ShardedCounter {
        assert!(slots > 0, "a sharded counter needs a slot");
        ShardedCounter((0..slots).map(|_| Padded::default()).collect())
    }

    pub fn inc(&self) {
        self.0[slot_of_thread(self.0.len())].0.fetch_add(1, Ordering::Relaxed);
    }

    /// The sum over all slots.
    pub fn get(&self) -> u64 {
        self.0.iter().map(|s| s.0.load(Ordering::Relaxed)).sum()
    }
}

impl TypedMetric for ShardedCounter {
    const TYPE: MetricType = MetricType::Counter;
}

impl EncodeMetric for ShardedCounter {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_counter::<NoLabelSet, _, u64>(&self.get(), None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threads_count_into_their_own_slots_and_reads_sum_them() {
        let c = ShardedCounter::new(2);
        c.inc();
        let c2 = c.clone();
        std::thread::spawn(move || {
            bind_thread_to_slot(3); // 3 % 2 = slot 1
            c2.inc();
            c2.inc();
        })
        .join()
        .unwrap();
        assert_eq!((c.0[0].0.load(Ordering::Relaxed), c.0[1].0.load(Ordering::Relaxed)), (1, 2));
        assert_eq!(c.get(), 3);
    }
}
