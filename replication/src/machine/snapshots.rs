//! Snapshots, as the machine sees them: copies of shards for lagging
//! followers (encoded by the caller, handed back to raft-rs), and the
//! periodic snapshots that let the WAL be compacted.
//!
//! A copy is of reference-counted values, taken at the shard's applied
//! index in one synchronous call, so it is a consistent point in time; the
//! encoding and writing happen outside, while the machine goes on.

use raft::eraftpb::{Snapshot, SnapshotMetadata};

use kv_engine::snapshot::SnapshotMeta;

use super::{Machine, SnapshotSource};
use crate::types::Now;

/// How long a snapshot prepared for lagging followers is kept (it holds a
/// copy of the shard) before it is dropped.
pub const PREPARED_SNAPSHOT_TTL_MS: u64 = 60_000;

impl<T> Machine<T> {
    /// Asks the caller to encode a copy of `group` for a lagging follower,
    /// unless one is being encoded already.
    pub(super) fn prepare_snapshot(&mut self, group: u32) {
        if matches!(self.preparing.get(&group), Some(None)) {
            return;
        }
        let Some(g) = self.groups.get(&group) else { return };
        let (meta, entries, conf_state) = g.snapshot_source();
        self.preparing.insert(group, None);
        self.out.prepare.push(SnapshotSource { meta, entries, conf_state });
    }

    /// A snapshot asked for with [`super::Outputs::prepare`] is encoded:
    /// `data` is the snapshot file's bytes for `source`.
    pub fn snapshot_prepared(&mut self, source: &SnapshotSource, data: Vec<u8>, now: Now) {
        let metadata = SnapshotMetadata {
            conf_state: Some(source.conf_state.clone()).into(),
            index: source.meta.index,
            term: source.meta.term,
            ..Default::default()
        };
        let snap = Snapshot { data: data.into(), metadata: Some(metadata).into(), ..Default::default() };
        let group = source.meta.group;
        if let Some(g) = self.groups.get(&group) {
            g.set_prepared(snap);
            tracing::debug!(
                core = self.config.core,
                group,
                index = source.meta.index,
                "snapshot prepared for a follower"
            );
        }
        self.preparing.insert(group, Some(now.monotonic_ms));
    }

    /// Keeps `map`, loaded (off the machine) from the snapshot `meta` a
    /// leader sent, for the group to swap in when raft-rs installs that
    /// snapshot: step the MsgSnapshot next. Unknown groups drop it.
    pub fn stage_snapshot_map(&mut self, meta: SnapshotMeta, map: kv_engine::ShardMap) {
        if let Some(g) = self.groups.get_mut(&meta.group) {
            g.stage_snapshot_map(meta, map);
        }
    }

    /// Whether a leader's snapshot of `group` at `index` could be installed
    /// here: raft-rs refuses one at or below the group's commit index, so
    /// loading that one would be wasted work.
    pub fn would_install(&self, group: u32, index: u64) -> bool {
        self.groups.get(&group).is_some_and(|g| index > g.commit_index())
    }

    /// Drops snapshots prepared for followers that are long caught up.
    pub(super) fn expire_prepared(&mut self, now: Now) {
        let expired: Vec<u32> = self
            .preparing
            .iter()
            .filter(|(_, made)| made.is_some_and(|t| now.monotonic_ms.saturating_sub(t) > PREPARED_SNAPSHOT_TTL_MS))
            .map(|(g, _)| *g)
            .collect();
        for g in expired {
            self.preparing.remove(&g);
            if let Some(group) = self.groups.get(&g) {
                group.drop_prepared();
            }
        }
    }

    /// Copies of every shard whose map moved since its last snapshot, to be
    /// written as periodic snapshots; report each with `snapshot_written`.
    pub fn take_snapshots(&self) -> Vec<SnapshotSource> {
        self.groups
            .values()
            .filter(|g| g.map.applied_index() > g.snapshot_index)
            .map(|g| {
                let (meta, entries, conf_state) = g.snapshot_source();
                SnapshotSource { meta, entries, conf_state }
            })
            .collect()
    }

    /// A point-in-time copy of `shard` at its applied index, taken in this
    /// one synchronous call (values are reference-counted): what a backup
    /// encodes. The caller confirms leadership first if it must (see
    /// `Core::backup`).
    pub fn shard_copy(&self, shard: u32) -> Result<SnapshotSource, crate::CoreError> {
        let (meta, entries, conf_state) = self.group(shard)?.snapshot_source();
        Ok(SnapshotSource { meta, entries, conf_state })
    }

    /// A periodic snapshot of `group` at `index` is durable.
    pub fn snapshot_written(&mut self, group: u32, index: u64) {
        if let Some(g) = self.groups.get_mut(&group) {
            g.snapshot_index = g.snapshot_index.max(index);
            self.stats.snapshots += 1;
        }
    }

    /// The index the newest durable snapshot of `group` covers (0: none):
    /// WAL segments whose entries of every group are covered may go.
    pub fn snapshot_index(&self, group: u32) -> u64 {
        self.groups.get(&group).map_or(0, |g| g.snapshot_index)
    }
}
