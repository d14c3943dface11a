//! Counters INFO reports, kept per core without sharing a cache line: each
//! core adds only to its own slot (an uncontended atomic), and INFO, on any
//! core, sums the slots. The board is process-wide because INFO on one
//! core must see every core's clients, and the mesh carries only shard
//! operations.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Instant, SystemTime};

/// Slots on the board. Cores beyond it share slots (`core % CORES_MAX`),
/// which costs only contention: the sums stay right.
pub const CORES_MAX: usize = 1024;

/// One core's counters. Aligned so that two cores never write one line.
#[repr(align(128))]
#[derive(Debug, Default)]
pub struct CoreCounters {
    /// RESP connections open now.
    pub clients: AtomicU64,
    pub connections_total: AtomicU64,
    pub rejected_connections: AtomicU64,
    pub commands_total: AtomicU64,
    pub error_replies: AtomicU64,
    pub keyspace_hits: AtomicU64,
    pub keyspace_misses: AtomicU64,
    pub net_input_bytes: AtomicU64,
    pub net_output_bytes: AtomicU64,
}

impl CoreCounters {
    const fn new() -> CoreCounters {
        CoreCounters {
            clients: AtomicU64::new(0),
            connections_total: AtomicU64::new(0),
            rejected_connections: AtomicU64::new(0),
            commands_total: AtomicU64::new(0),
            error_replies: AtomicU64::new(0),
            keyspace_hits: AtomicU64::new(0),
            keyspace_misses: AtomicU64::new(0),
            net_input_bytes: AtomicU64::new(0),
            net_output_bytes: AtomicU64::new(0),
        }
    }
}

static BOARD: [CoreCounters; CORES_MAX] = [const { CoreCounters::new() }; CORES_MAX];
static STARTED: OnceLock<(Instant, SystemTime)> = OnceLock::new();

/// The counters core `core` adds to.
pub fn of_core(core: u32) -> &'static CoreCounters {
    &BOARD[core as usize % CORES_MAX]
}

pub fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

pub fn sub(counter: &AtomicU64, n: u64) {
    counter.fetch_sub(n, Ordering::Relaxed);
}

/// When the RESP front end started (the first call wins).
pub fn started() -> (Instant, SystemTime) {
    *STARTED.get_or_init(|| (Instant::now(), SystemTime::now()))
}

/// Every core's counters added up.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Totals {
    pub clients: u64,
    pub connections_total: u64,
    pub rejected_connections: u64,
    pub commands_total: u64,
    pub error_replies: u64,
    pub keyspace_hits: u64,
    pub keyspace_misses: u64,
    pub net_input_bytes: u64,
    pub net_output_bytes: u64,
}

pub fn totals() -> Totals {
    let mut t = Totals::default();
    for c in &BOARD {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        t.clients += get(&c.clients);
        t.connections_total += get(&c.connections_total);
        t.rejected_connections += get(&c.rejected_connections);
        t.commands_total += get(&c.commands_total);
        t.error_replies += get(&c.error_replies);
        t.keyspace_hits += get(&c.keyspace_hits);
        t.keyspace_misses += get(&c.keyspace_misses);
        t.net_input_bytes += get(&c.net_input_bytes);
        t.net_output_bytes += get(&c.net_output_bytes);
    }
    t
}

/// CONFIG RESETSTAT: zeroes every counter but the open connections.
pub fn reset() {
    for c in &BOARD {
        for a in [
            &c.connections_total,
            &c.rejected_connections,
            &c.commands_total,
            &c.error_replies,
            &c.keyspace_hits,
            &c.keyspace_misses,
            &c.net_input_bytes,
            &c.net_output_bytes,
        ] {
            a.store(0, Ordering::Relaxed);
        }
    }
}
