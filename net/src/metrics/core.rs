//! One core's series: resolved once when the core starts, then updated
//! without locks. Counters the raft driver keeps in plain cells
//! ([`kv_replication::CoreStats`]) and gauges that mirror the core's state
//! are copied out once per [`REFRESH_INTERVAL`] by a task of the core; WAL
//! flush latencies are observed as each flush completes.

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use kv_engine::wal::FlushStats;
use kv_replication::Core;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;

use super::{CoreLabels, DurationHistogram, Metrics};
use crate::service::Service;

/// How often gauges and raft counters are refreshed from the core. Scrapes
/// see values at most this old.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(1);

/// Handles on one core's series.
pub struct CoreMetrics {
    keys: Gauge,
    expiring_keys: Gauge,
    memory_bytes: Gauge,
    connections: Gauge,
    leaders: Gauge,
    leaderless: Gauge,
    follower_lag: Gauge,
    proposals: Counter,
    commits: Counter,
    applies: Counter,
    leader_changes: Counter,
    snapshots: Counter,
    compressed_plain: Gauge,
    compressed_stored: Gauge,
    /// The core's counters as of the last refresh, to add only the change.
    last: Cell<[u64; 5]>,
    /// Keys evicted as of the last refresh (core 0 keeps the node's count).
    evicted: Cell<u64>,
}

impl CoreMetrics {
    /// Resolves core `core`'s series and starts observing its WAL flushes.
    pub fn start(metrics: &Metrics, core: &Core, index: u32) -> CoreMetrics {
        let f = &metrics.cores;
        let labels: CoreLabels = [("core", index.to_string())];
        let wal_bytes = f.wal_written_bytes.get_or_create_owned(&labels);
        let append = f.wal_append.get_or_create_owned(&labels);
        let fsync = f.wal_fsync.get_or_create_owned(&labels);
        core.on_flush(Box::new(move |s| observe_flush(s, &wal_bytes, &append, &fsync)));
        CoreMetrics {
            keys: f.keys.get_or_create_owned(&labels),
            expiring_keys: f.expiring_keys.get_or_create_owned(&labels),
            memory_bytes: f.memory_bytes.get_or_create_owned(&labels),
            connections: f.connections.get_or_create_owned(&labels),
            leaders: f.leaders.get_or_create_owned(&labels),
            leaderless: f.leaderless.get_or_create_owned(&labels),
            follower_lag: f.follower_lag.get_or_create_owned(&labels),
            proposals: f.proposals.get_or_create_owned(&labels),
            commits: f.commits.get_or_create_owned(&labels),
            applies: f.applies.get_or_create_owned(&labels),
            leader_changes: f.leader_changes.get_or_create_owned(&labels),
            snapshots: f.snapshots.get_or_create_owned(&labels),
            compressed_plain: f.compressed_plain_bytes.get_or_create_owned(&labels),
            compressed_stored: f.compressed_stored_bytes.get_or_create_owned(&labels),
            evicted: Cell::new(0),
            last: Cell::new([0; 5]),
        }
    }

    /// Copies the core's state into the series.
    pub fn refresh(&self, core: &Core, connections: usize) {
        let (mut keys, mut bytes) = (0i64, 0i64);
        for (_, k, b) in core.shard_sizes() {
            keys += k as i64;
            bytes += b as i64;
        }
        self.keys.set(keys);
        self.memory_bytes.set(bytes);
        self.connections.set(connections as i64);
        let (plain, stored) = core.compression_bytes();
        self.compressed_plain.set(plain as i64);
        self.compressed_stored.set(stored as i64);
        let groups = core.group_status();
        self.expiring_keys.set(groups.iter().map(|g| g.expires as i64).sum());
        self.leaders.set(groups.iter().filter(|g| g.is_leader).count() as i64);
        self.leaderless.set(groups.iter().filter(|g| g.leader.is_none()).count() as i64);
        let lag = groups.iter().flat_map(|g| g.follower_lag.iter().map(|(_, l)| *l)).max().unwrap_or(0);
        self.follower_lag.set(lag as i64);
        let s = core.stats();
        let now = [s.proposals, s.committed_entries, s.applied_entries, s.leader_changes, s.snapshots];
        let last = self.last.replace(now);
        let counters = [&self.proposals, &self.commits, &self.applies, &self.leader_changes, &self.snapshots];
        for ((counter, now), last) in counters.into_iter().zip(now).zip(last) {
            // The core's cells only grow.
            counter.inc_by(now - last);
        }
    }
}

impl CoreMetrics {
    /// The node's memory series (one core does it).
    pub fn refresh_node(&self, metrics: &Metrics, memory: &crate::memory::Memory) {
        let m = &metrics.memory;
        m.allocated_bytes.set(memory.used() as i64);
        m.max_bytes.set(memory.limit.unwrap_or(0) as i64);
        let evicted = memory.evicted();
        m.evicted_keys.inc_by(evicted - self.evicted.replace(evicted));
    }
}

fn observe_flush(s: &FlushStats, wal_bytes: &Counter, append: &DurationHistogram, fsync: &DurationHistogram) {
    if s.written_bytes > 0 {
        wal_bytes.inc_by(s.written_bytes);
        append.observe(Duration::from_micros(s.write_micros));
    }
    if s.synced {
        fsync.observe(Duration::from_micros(s.sync_micros));
    }
}

/// Refreshes this core's series every [`REFRESH_INTERVAL`] until the core
/// shuts down.
pub async fn refresh_loop(svc: Rc<Service>, metrics: CoreMetrics) {
    loop {
        metrics.refresh(&svc.owner.core, svc.connections.get());
        if svc.core_index == 0 {
            metrics.refresh_node(&svc.metrics, &svc.memory);
        }
        let stopped = futures_lite::future::or(
            async {
                glommio::timer::sleep(REFRESH_INTERVAL).await;
                false
            },
            async {
                svc.shutdown.wait().await;
                true
            },
        );
        if stopped.await {
            return;
        }
    }
}
