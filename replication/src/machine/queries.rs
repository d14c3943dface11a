//! Questions the machine answers without waiting: reads its level allows
//! here and now, key listings, keys due for expiry, and status.

use bytes::Bytes;
use kv_engine::Stored;

use super::Machine;
use crate::keyspace;
use crate::types::{Consistency, GroupStatus, Now, ScanPage};
use crate::CoreError;

impl<T> Machine<T> {
    /// Reads a key without waiting, if `consistency` allows it here:
    /// `Stale` on any replica, `Lease` on a leader whose lease holds.
    /// `Strict` never answers here (see [`Machine::read`]).
    pub fn read_now(
        &self,
        shard: u32,
        key: &[u8],
        consistency: Consistency,
        now: Now,
    ) -> Result<Option<Stored>, CoreError> {
        let group = self.group(shard)?;
        let allowed = match consistency {
            Consistency::Stale => true,
            Consistency::Lease => group.lease_valid(now),
            Consistency::Strict => false,
        };
        if !allowed {
            return Err(CoreError::NotLeader { leader: group.leader_id() });
        }
        Ok(group.read_local(key, now))
    }

    /// Commit-only hard states waiting to ride the next flush (a crash
    /// now loses them; the simulator counts how often it does).
    pub fn commit_records_waiting(&self) -> usize {
        self.commit_records.len()
    }

    /// Starts loading the map entries of `keys` (each with its shard), so
    /// the reads of a pipelined batch wait for memory together (see
    /// `ShardMap::prefetch`). A hint: shards not on this core are skipped.
    pub fn prefetch(&self, keys: &[(u32, &[u8])]) {
        let mut shards: Vec<u32> = keys.iter().map(|(s, _)| *s).collect();
        shards.sort_unstable();
        shards.dedup();
        for shard in shards {
            if let Some(g) = self.groups.get(&shard) {
                g.map.prefetch(keys.iter().filter(|(s, _)| *s == shard).map(|(_, k)| *k));
            }
        }
    }

    /// A page of the shard's live keys from `cursor` on (see [`keyspace`]),
    /// the next cursor, and the shard's key count; readable where
    /// `consistency` allows, like [`Machine::read_now`] (strict as lease).
    pub fn scan(
        &self,
        shard: u32,
        cursor: u64,
        count: usize,
        consistency: Consistency,
        now: Now,
    ) -> Result<ScanPage, CoreError> {
        let group = self.group(shard)?;
        let allowed = match consistency {
            Consistency::Stale => true,
            Consistency::Lease | Consistency::Strict => group.lease_valid(now),
        };
        if !allowed {
            return Err(CoreError::NotLeader { leader: group.leader_id() });
        }
        // A count of 0 asks only for the totals.
        let (keys, next) = match count {
            0 => (Vec::new(), None),
            _ => keyspace::scan_page(&group.map, cursor, count, now.wall_ms),
        };
        let map = &group.map;
        Ok(ScanPage { keys, next, keys_total: map.len() as u64, expires_total: map.expires_len() as u64 })
    }

    /// For each shard this core leads, up to `max` keys whose expiry has
    /// passed by `now`: what the active expiry cycle proposes to reap.
    pub fn expired_keys(&self, max: usize, now: Now) -> Vec<(u32, Vec<Bytes>)> {
        self.groups
            .values()
            .filter(|g| g.is_leader())
            .map(|g| (g.id, g.map.expired(now.wall_ms, max)))
            .filter(|(_, keys)| !keys.is_empty())
            .collect()
    }

    /// A broken invariant of some group, if any: a replica never applies
    /// past what it knows committed, nor commits past its log.
    pub fn invariant_violation(&self) -> Option<String> {
        self.groups.values().find_map(|g| {
            let (applied, commit, last) = (g.map.applied_index(), g.commit_index(), g.last_index());
            (applied > commit || commit > last)
                .then(|| format!("group {}: applied {applied}, committed {commit}, last index {last}", g.id))
        })
    }

    /// Whether this core leads any group that has other voters.
    pub fn leads_replicated_group(&self) -> bool {
        self.groups.values().any(|g| g.is_leader() && !g.is_alone())
    }

    /// The leader this core knows for `shard`, if any.
    pub fn leader_of(&self, shard: u32) -> Option<u64> {
        self.groups.get(&shard).and_then(|g| g.leader_id())
    }

    /// Raft's view of every group on this core, for status reports.
    pub fn group_status(&self) -> Vec<GroupStatus> {
        self.groups.values().map(|g| g.status()).collect()
    }

    /// Whether every group has replayed its log (see `Group::is_ready`).
    pub fn is_ready(&self) -> bool {
        self.groups.values().all(|g| g.is_ready())
    }

    /// Number of keys and bytes per shard (for status and metrics).
    pub fn shard_sizes(&self) -> Vec<(u32, usize, u64)> {
        self.groups.values().map(|g| (g.id, g.map.len(), g.map.memory_bytes())).collect()
    }

    /// Writes waiting for their entries to apply, over all groups.
    pub fn pending_count(&self) -> usize {
        self.groups.values().map(|g| g.pending_count()).sum()
    }

    /// The shards this core holds.
    pub fn shards(&self) -> impl Iterator<Item = u32> + '_ {
        self.groups.keys().copied()
    }

    /// A shard's map as this replica holds it (the simulator compares
    /// replicas with it).
    pub fn map(&self, shard: u32) -> Option<&kv_engine::ShardMap> {
        self.groups.get(&shard).map(|g| &g.map)
    }
}
