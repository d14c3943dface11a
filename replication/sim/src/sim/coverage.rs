//! What a run exercised, counted: evidence that the simulator reaches the
//! paths it claims to test (the CI test requires every counter to move
//! over its seeds), and a summary `kvsim` prints.

use std::fmt;

/// How many counters a coverage has.
pub const COUNTERS: usize = 18;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Coverage {
    /// Power losses, and starts from a disk that had been running.
    pub crashes: u64,
    pub restarts: u64,
    /// Torn or unwritten WAL tails repaired by recovery.
    pub wal_repairs: u64,
    /// fdatasyncs that failed (each poisons its core).
    pub fsync_failures: u64,
    /// Snapshots written periodically, and WAL segments compaction deleted.
    pub snapshots_written: u64,
    pub segments_compacted: u64,
    /// Snapshots a follower installed from its leader.
    pub snapshots_installed: u64,
    /// Leaders' snapshots loaded off the machine's path and stepped, those
    /// installed by swapping in the loaded map, and MsgAppends dropped
    /// while a snapshot of their group loaded (`transfer.rs`).
    pub snapshots_loaded: u64,
    pub snapshots_loaded_ahead: u64,
    pub appends_dropped_loading: u64,
    /// Leaders elected (role changes to leader or away, over all replicas).
    pub leader_changes: u64,
    /// Reads answered at once under a lease, and after a ReadIndex round.
    pub lease_reads: u64,
    pub read_index_reads: u64,
    /// Operations whose outcome stayed unknown.
    pub unknown_outcomes: u64,
    /// Keys leaders proposed to evict under memory pressure.
    pub evictions: u64,
    /// Commit-only hard states a crash lost while they waited to ride the
    /// next flush (see ARCHITECTURE.md, "Durability protocol"): recovery
    /// must rebuild the commit index from the log and the peers.
    pub commit_records_lost: u64,
    /// Disks lost (nodes restarted on empty ones), and nodes on new disks
    /// a peer admitted again after removing their old ones.
    pub wipes: u64,
    pub readmissions: u64,
}

impl Coverage {
    pub fn add(&mut self, o: &Coverage) {
        let Coverage {
            crashes,
            restarts,
            wal_repairs,
            fsync_failures,
            snapshots_written,
            segments_compacted,
            snapshots_installed,
            snapshots_loaded,
            snapshots_loaded_ahead,
            appends_dropped_loading,
            leader_changes,
            lease_reads,
            read_index_reads,
            unknown_outcomes,
            evictions,
            commit_records_lost,
            wipes,
            readmissions,
        } = o;
        self.crashes += crashes;
        self.restarts += restarts;
        self.wal_repairs += wal_repairs;
        self.fsync_failures += fsync_failures;
        self.snapshots_written += snapshots_written;
        self.segments_compacted += segments_compacted;
        self.snapshots_installed += snapshots_installed;
        self.snapshots_loaded += snapshots_loaded;
        self.snapshots_loaded_ahead += snapshots_loaded_ahead;
        self.appends_dropped_loading += appends_dropped_loading;
        self.leader_changes += leader_changes;
        self.lease_reads += lease_reads;
        self.read_index_reads += read_index_reads;
        self.unknown_outcomes += unknown_outcomes;
        self.evictions += evictions;
        self.commit_records_lost += commit_records_lost;
        self.wipes += wipes;
        self.readmissions += readmissions;
    }

    /// Every counter by name.
    pub fn named(&self) -> [(&'static str, u64); COUNTERS] {
        [
            ("crashes", self.crashes),
            ("restarts", self.restarts),
            ("wal_repairs", self.wal_repairs),
            ("fsync_failures", self.fsync_failures),
            ("snapshots_written", self.snapshots_written),
            ("segments_compacted", self.segments_compacted),
            ("snapshots_installed", self.snapshots_installed),
            ("snapshots_loaded", self.snapshots_loaded),
            ("snapshots_loaded_ahead", self.snapshots_loaded_ahead),
            ("appends_dropped_loading", self.appends_dropped_loading),
            ("leader_changes", self.leader_changes),
            ("lease_reads", self.lease_reads),
            ("read_index_reads", self.read_index_reads),
            ("unknown_outcomes", self.unknown_outcomes),
            ("evictions", self.evictions),
            ("commit_records_lost", self.commit_records_lost),
            ("wipes", self.wipes),
            ("readmissions", self.readmissions),
        ]
    }
}

impl Coverage {
    /// The counters in the order of [`Coverage::named`].
    pub fn from_counts(c: [u64; COUNTERS]) -> Coverage {
        Coverage {
            crashes: c[0],
            restarts: c[1],
            wal_repairs: c[2],
            fsync_failures: c[3],
            snapshots_written: c[4],
            segments_compacted: c[5],
            snapshots_installed: c[6],
            snapshots_loaded: c[7],
            snapshots_loaded_ahead: c[8],
            appends_dropped_loading: c[9],
            leader_changes: c[10],
            lease_reads: c[11],
            read_index_reads: c[12],
            unknown_outcomes: c[13],
            evictions: c[14],
            commit_records_lost: c[15],
            wipes: c[16],
            readmissions: c[17],
        }
    }
}

impl fmt::Display for Coverage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.named().iter().map(|(n, v)| format!("{n}={v}")).collect();
        f.write_str(&parts.join(" "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_round_trip_in_order() {
        let counts: [u64; COUNTERS] = std::array::from_fn(|i| i as u64 * 3 + 1);
        let c = Coverage::from_counts(counts);
        assert_eq!(c.named().map(|(_, v)| v), counts);
        assert_eq!(c.named()[10], ("leader_changes", 31));
    }
}
