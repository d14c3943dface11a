//! Prometheus metrics (prometheus-client), one registry per process.
//!
//! `kvd` builds one [`Metrics`] before starting the cores and hands every
//! core an `Arc` of it; `GET /metrics` encodes it in the OpenMetrics text
//! format. Every name starts with `kvd_` and carries its unit (`_seconds`,
//! `_bytes`; counters get `_total` from the encoder).
//!
//! Hot path rule: recording takes no lock and shares no cache line between
//! cores. A labelled handle is looked up in its family (a read-write lock)
//! once, the first time that label set is used, and kept in a table of
//! `OnceLock`s indexed by the labels' discriminants; after that, recording
//! is a load and an atomic add into the calling core's slot of the metric
//! ([`sharded`]). Per-core series are resolved once when the core starts
//! ([`core::CoreMetrics`]).
//!
//! Front ends call [`Metrics::request`] once per answered request.

pub mod core;
pub mod histogram;
pub mod labels;
pub mod sharded;

use std::sync::OnceLock;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

pub use self::core::CoreMetrics;
pub use histogram::DurationHistogram;
pub use labels::{OpLabel, Protocol, StatusLabel};
pub use sharded::{bind_thread_to_slot, ShardedCounter};

/// The OpenMetrics content type that `GET /metrics` answers with.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

type RequestLabels = [(&'static str, &'static str); 3];
type OpLabels = [(&'static str, &'static str); 2];
pub(crate) type CoreLabels = [(&'static str, String); 1];

/// Builds latency histograms with this many core slots, for
/// [`Family::new_with_constructor`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Latency(usize);

impl MetricConstructor<DurationHistogram> for Latency {
    fn new_metric(&self) -> DurationHistogram {
        DurationHistogram::latency(self.0)
    }
}

/// Builds counters with this many core slots.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sharded(usize);

impl MetricConstructor<ShardedCounter> for Sharded {
    fn new_metric(&self) -> ShardedCounter {
        ShardedCounter::new(self.0)
    }
}

/// Per-core series, one labelled child per core.
#[derive(Debug)]
pub(crate) struct CoreFamilies {
    pub keys: Family<CoreLabels, Gauge>,
    pub expiring_keys: Family<CoreLabels, Gauge>,
    pub memory_bytes: Family<CoreLabels, Gauge>,
    pub connections: Family<CoreLabels, Gauge>,
    pub leaders: Family<CoreLabels, Gauge>,
    pub leaderless: Family<CoreLabels, Gauge>,
    pub follower_lag: Family<CoreLabels, Gauge>,
    pub proposals: Family<CoreLabels, Counter>,
    pub commits: Family<CoreLabels, Counter>,
    pub applies: Family<CoreLabels, Counter>,
    pub leader_changes: Family<CoreLabels, Counter>,
    pub snapshots: Family<CoreLabels, Counter>,
    pub wal_written_bytes: Family<CoreLabels, Counter>,
    pub wal_append: Family<CoreLabels, DurationHistogram, Latency>,
    pub wal_fsync: Family<CoreLabels, DurationHistogram, Latency>,
    pub compressed_plain_bytes: Family<CoreLabels, Gauge>,
    pub compressed_stored_bytes: Family<CoreLabels, Gauge>,
}

/// Node-wide memory series (refreshed by core 0).
#[derive(Debug, Default)]
pub(crate) struct NodeMemory {
    pub allocated_bytes: Gauge,
    pub max_bytes: Gauge,
    pub evicted_keys: Counter,
}

const REQUEST_SLOTS: usize = Protocol::ALL.len() * OpLabel::ALL.len() * StatusLabel::ALL.len();
const LATENCY_SLOTS: usize = Protocol::ALL.len() * OpLabel::ALL.len();

/// The process-wide registry and its metric families.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, ShardedCounter, Sharded>,
    request_seconds: Family<OpLabels, DurationHistogram, Latency>,
    request_handles: Box<[OnceLock<ShardedCounter>]>,
    latency_handles: Box<[OnceLock<DurationHistogram>]>,
    pub(crate) cores: CoreFamilies,
    pub(crate) memory: NodeMemory,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// A registry for a process of `cores` cores (each calls
    /// [`bind_thread_to_slot`] with its index).
    pub fn new(cores: usize) -> Metrics {
        let mut registry = Registry::with_prefix("kvd");
        let requests = Family::new_with_constructor(Sharded(cores));
        let request_seconds = Family::new_with_constructor(Latency(cores));
        registry.register("requests", "Requests answered, by protocol, operation and outcome", requests.clone());
        registry.register_with_unit(
            "request_duration",
            "Time from a decoded request to its answer, by protocol and operation",
            Unit::Seconds,
            request_seconds.clone(),
        );
        let cores = CoreFamilies {
            keys: Family::default(),
            expiring_keys: Family::default(),
            memory_bytes: Family::default(),
            connections: Family::default(),
            leaders: Family::default(),
            leaderless: Family::default(),
            follower_lag: Family::default(),
            proposals: Family::default(),
            commits: Family::default(),
            applies: Family::default(),
            leader_changes: Family::default(),
            snapshots: Family::default(),
            wal_written_bytes: Family::default(),
            // Written by their own core only.
            wal_append: Family::new_with_constructor(Latency(1)),
            wal_fsync: Family::new_with_constructor(Latency(1)),
            compressed_plain_bytes: Family::default(),
            compressed_stored_bytes: Family::default(),
        };
        register_core_families(&mut registry, &cores);
        let memory = NodeMemory::default();
        registry.register_with_unit(
            "memory_allocated",
            "Bytes the process holds by its allocator's statistics (what --max-memory limits; 0 without a limit)",
            Unit::Bytes,
            memory.allocated_bytes.clone(),
        );
        registry.register_with_unit(
            "memory_max",
            "The node's memory limit (--max-memory; 0: none)",
            Unit::Bytes,
            memory.max_bytes.clone(),
        );
        registry.register(
            "evicted_keys",
            "Keys evicted by this node's leaders to stay under --max-memory",
            memory.evicted_keys.clone(),
        );
        Metrics {
            registry,
            requests,
            request_seconds,
            request_handles: (0..REQUEST_SLOTS).map(|_| OnceLock::new()).collect(),
            latency_handles: (0..LATENCY_SLOTS).map(|_| OnceLock::new()).collect(),
            cores,
            memory,
        }
    }

    /// Records one answered request: its count by outcome and its latency.
    pub fn request(&self, protocol: Protocol, op: OpLabel, status: StatusLabel, latency: Duration) {
        let (p, o, s) = (protocol as usize, op as usize, status as usize);
        let counter = self.request_handles[(p * OpLabel::ALL.len() + o) * StatusLabel::ALL.len() + s]
            .get_or_init(|| self.requests.get_or_create_owned(&request_labels(protocol, op, status)));
        counter.inc();
        let histogram = self.latency_handles[p * OpLabel::ALL.len() + o].get_or_init(|| {
            self.request_seconds.get_or_create_owned(&[("protocol", protocol.as_str()), ("op", op.as_str())])
        });
        histogram.observe(latency);
    }

    /// Requests counted so far with these labels (tests, debugging).
    pub fn requests_counted(&self, protocol: Protocol, op: OpLabel, status: StatusLabel) -> u64 {
        self.requests.get(&request_labels(protocol, op, status)).map_or(0, |c| c.get())
    }

    /// The registry in the OpenMetrics text format (ends with `# EOF`).
    pub fn encode(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("encoding into a String cannot fail");
        text
    }
}

fn request_labels(protocol: Protocol, op: OpLabel, status: StatusLabel) -> RequestLabels {
    [("protocol", protocol.as_str()), ("op", op.as_str()), ("status", status.as_str())]
}

fn register_core_families(r: &mut Registry, c: &CoreFamilies) {
    r.register("keys", "Keys held by the shards of a core (all replicas, leader or not)", c.keys.clone());
    r.register(
        "expiring_keys",
        "Keys with a TTL held by the shards of a core (expired ones not yet reaped included)",
        c.expiring_keys.clone(),
    );
    r.register_with_unit(
        "memory",
        "Bytes of keys and values held by a core's shards",
        Unit::Bytes,
        c.memory_bytes.clone(),
    );
    r.register("connections", "Open client connections on a core (all protocols)", c.connections.clone());
    r.register("raft_leader_groups", "Raft groups (shards) a core leads", c.leaders.clone());
    r.register("raft_leaderless_groups", "Raft groups on a core that know no leader", c.leaderless.clone());
    r.register(
        "raft_follower_lag_entries",
        "Largest number of log entries a follower lacks, over the groups a core leads",
        c.follower_lag.clone(),
    );
    r.register("raft_proposals", "Writes proposed to Raft", c.proposals.clone());
    r.register("raft_commits", "Log entries learned to be committed", c.commits.clone());
    r.register("raft_applies", "Log entries applied to the shard maps", c.applies.clone());
    r.register("raft_leader_changes", "Times a group on a core gained or lost leadership", c.leader_changes.clone());
    r.register("snapshots", "Shard snapshots written", c.snapshots.clone());
    r.register_with_unit(
        "wal_written",
        "Bytes written to the write-ahead log (block-padded)",
        Unit::Bytes,
        c.wal_written_bytes.clone(),
    );
    r.register_with_unit(
        "compressed_values_plain",
        "Bytes the compressed values on a core's shards stand for",
        Unit::Bytes,
        c.compressed_plain_bytes.clone(),
    );
    r.register_with_unit(
        "compressed_values_stored",
        "Bytes the compressed values on a core's shards take",
        Unit::Bytes,
        c.compressed_stored_bytes.clone(),
    );
    r.register_with_unit("wal_append_duration", "Time of one WAL batch write", Unit::Seconds, c.wal_append.clone());
    r.register_with_unit(
        "wal_fsync_duration",
        "Time of one WAL fdatasync (per batch under fsync always, per interval otherwise)",
        Unit::Seconds,
        c.wal_fsync.clone(),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_count_and_time_by_label() {
        let m = Metrics::new(2);
        m.request(Protocol::Http, OpLabel::Get, StatusLabel::Ok, Duration::from_micros(80));
        m.request(Protocol::Http, OpLabel::Get, StatusLabel::Ok, Duration::from_micros(80));
        m.request(Protocol::Resp, OpLabel::Set, StatusLabel::Conflict, Duration::from_millis(2));
        assert_eq!(m.requests_counted(Protocol::Http, OpLabel::Get, StatusLabel::Ok), 2);
        assert_eq!(m.requests_counted(Protocol::Native, OpLabel::Get, StatusLabel::Ok), 0);
        let text = m.encode();
        assert!(text.contains(r#"kvd_requests_total{protocol="http",op="get",status="ok"} 2"#), "{text}");
        assert!(text.contains(r#"kvd_requests_total{protocol="resp",op="set",status="conflict"} 1"#), "{text}");
        assert!(text.contains(r#"kvd_request_duration_seconds_count{protocol="http",op="get"} 2"#), "{text}");
        assert!(text.ends_with("# EOF\n"));
    }
}
