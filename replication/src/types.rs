//! The vocabulary the replication core shares with its callers: the time it
//! is given, read levels, what it answers, what it reports about itself,
//! and the switches that break it on purpose for the simulator.

use kv_engine::{Outcome, Stored};

/// The time, as the caller tells it to the core (the core reads no clock).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Now {
    /// A monotonic clock in milliseconds from an arbitrary origin: leases.
    pub monotonic_ms: u64,
    /// The wall clock in Unix milliseconds: TTLs (stamped into commands,
    /// compared with expiries on reads).
    pub wall_ms: u64,
}

/// How fresh a read must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Consistency {
    /// Linearizable: the leader confirms with a quorum first (ReadIndex).
    Strict,
    /// Linearizable: answered by the leader alone while its time-bounded
    /// lease holds, else through ReadIndex (see `group/reads.rs`).
    #[default]
    Lease,
    /// Whatever this replica has applied; may be behind.
    Stale,
}

/// What a waiting request gets back.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// A proposed write was applied (or failed).
    Write(Result<Outcome, crate::CoreError>),
    /// A read that waited for a ReadIndex round: the value when served.
    Read(Result<Option<Stored>, crate::CoreError>),
}

/// One group as raft sees it, for `cluster status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupStatus {
    pub shard: u32,
    pub leader: Option<u64>,
    pub is_leader: bool,
    pub term: u64,
    pub commit: u64,
    pub applied: u64,
    pub last_index: u64,
    pub keys: usize,
    /// Keys with a TTL.
    pub expires: usize,
    pub memory_bytes: u64,
    /// On a leader: (follower, entries it lacks).
    pub follower_lag: Vec<(u64, u64)>,
    /// The configuration this replica applied: who votes, who only learns.
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
}

/// One page of a shard's keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanPage {
    pub keys: Vec<bytes::Bytes>,
    /// Where the next page starts; `None` when the shard is done.
    pub next: Option<u64>,
    /// Keys and keys with a TTL in the shard (expired ones not yet reaped included).
    pub keys_total: u64,
    pub expires_total: u64,
}

/// Counters a core keeps about itself (exported as metrics); they only grow.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CoreStats {
    pub proposals: u64,
    /// Entries this replica learned to be committed (commit index advances).
    pub committed_entries: u64,
    /// Entries applied to the shard maps.
    pub applied_entries: u64,
    pub flushes: u64,
    pub wal_bytes: u64,
    pub fsync_micros_total: u64,
    pub snapshots: u64,
    pub leader_changes: u64,
    /// Leaders' snapshots installed by swapping in a map the transport
    /// loaded ahead, off the machine's path (the rest are decoded there).
    pub snapshots_loaded_ahead: u64,
}

/// Guarantees broken on purpose, one switch each: the simulator's seeded
/// bugs, which it must catch (`kvsim --bug NAME`). kvd never sets them.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Bugs {
    /// Reports a WAL batch persisted when its flush starts, before the
    /// write and fdatasync: writes are acknowledged before they are durable.
    pub ack_before_fsync: bool,
    /// Answers a write as applied when a new leader replaced its log entry
    /// with another: the client is told of a write that never happened.
    pub ack_overwritten_entry: bool,
    /// Lease reads on any leader that has committed in its term, with no
    /// bound in time (a leader cut off keeps answering).
    pub unbounded_lease: bool,
    /// Lets a node back on a new data directory in at once, as the voter
    /// its old directory was, instead of removing it first.
    pub readmit_without_removal: bool,
}

impl Bugs {
    /// Every seeded bug, by the name `kvsim --bug` takes.
    pub const NAMES: [&'static str; 4] =
        ["ack-before-fsync", "ack-overwritten-entry", "unbounded-lease", "readmit-without-removal"];

    /// The switch named `name` alone, or `None` for an unknown name.
    pub fn named(name: &str) -> Option<Bugs> {
        let mut bugs = Bugs::default();
        match name {
            "ack-before-fsync" => bugs.ack_before_fsync = true,
            "ack-overwritten-entry" => bugs.ack_overwritten_entry = true,
            "unbounded-lease" => bugs.unbounded_lease = true,
            "readmit-without-removal" => bugs.readmit_without_removal = true,
            _ => return None,
        }
        Some(bugs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_bug_name_is_one_switch() {
        for name in Bugs::NAMES {
            let bugs = Bugs::named(name).expect("named bug");
            assert_ne!(bugs, Bugs::default(), "{name} switches something");
        }
        assert_eq!(Bugs::named("no-such-bug"), None);
    }
}
