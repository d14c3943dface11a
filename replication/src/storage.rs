//! The Raft log store of one group as raft-rs sees it: an in-memory window
//! of entries plus hard state and conf state. The durable copy is the core's
//! WAL; this window is rebuilt from it at startup.
//!
//! Invariants:
//! - `entries` are contiguous and start right after `(compacted_index,
//!   compacted_term)`, the last entry dropped from memory (or the snapshot
//!   point);
//! - entries are only dropped from memory once applied (see `compact`).

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;

use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, StorageError};

#[derive(Debug, Default)]
struct LogState {
    hard_state: HardState,
    conf_state: ConfState,
    compacted_index: u64,
    compacted_term: u64,
    entries: VecDeque<Entry>,
    /// Bytes of entry data in `entries`.
    window_bytes: u64,
    /// A snapshot of the shard ready to send to a lagging follower.
    prepared: Option<Snapshot>,
    /// raft-rs asked for a snapshot that is not prepared yet.
    snapshot_wanted: bool,
}

impl LogState {
    fn first_index(&self) -> u64 {
        self.compacted_index + 1
    }

    fn last_index(&self) -> u64 {
        self.compacted_index + self.entries.len() as u64
    }
}

/// Shared handle: the raw node owns one clone, the driver another. Single
/// threaded by construction (it lives on one core), hence `Rc<RefCell<_>>`.
#[derive(Debug, Clone, Default)]
pub struct GroupStorage(Rc<RefCell<LogState>>);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReplayError {
    #[error("entry {index} of group {group} follows entry {last}: entries are missing")]
    Gap { group: u32, index: u64, last: u64 },
}

impl GroupStorage {
    /// Starts the log after a snapshot (or at 0 for a new group).
    pub fn new(compacted_index: u64, compacted_term: u64, conf_state: ConfState) -> GroupStorage {
        let hard_state = HardState { term: compacted_term, commit: compacted_index, ..HardState::default() };
        let state = LogState {
            hard_state,
            conf_state,
            compacted_index,
            compacted_term,
            entries: VecDeque::new(),
            window_bytes: 0,
            prepared: None,
            snapshot_wanted: false,
        };
        GroupStorage(Rc::new(RefCell::new(state)))
    }

    /// Appends entries, first dropping any existing entries at or after the
    /// first new index (a new leader overwrote them).
    pub fn append(&self, entries: &[Entry]) {
        let Some(first) = entries.first() else { return };
        let mut s = self.0.borrow_mut();
        assert!(first.index > s.compacted_index, "append of compacted index {}", first.index);
        assert!(first.index <= s.last_index() + 1, "gap: append {} after {}", first.index, s.last_index());
        let keep = (first.index - s.first_index()) as usize;
        let dropped: u64 = s.entries.range(keep..).map(|e| e.data.len() as u64).sum();
        s.entries.truncate(keep);
        s.window_bytes -= dropped;
        s.window_bytes += entries.iter().map(|e| e.data.len() as u64).sum::<u64>();
        s.entries.extend(entries.iter().cloned());
    }

    /// Replays one entry read back from the WAL. Entries the snapshot covers
    /// are skipped; a gap is an error (the WAL lost something).
    pub fn replay(&self, group: u32, entry: Entry) -> Result<(), ReplayError> {
        let last = self.last_index();
        if entry.index <= self.0.borrow().compacted_index {
            return Ok(());
        }
        if entry.index > last + 1 {
            return Err(ReplayError::Gap { group, index: entry.index, last });
        }
        self.append(std::slice::from_ref(&entry));
        Ok(())
    }

    pub fn set_hard_state(&self, hs: HardState) {
        self.0.borrow_mut().hard_state = hs;
    }

    pub fn hard_state(&self) -> HardState {
        self.0.borrow().hard_state.clone()
    }

    pub fn set_conf_state(&self, cs: ConfState) {
        self.0.borrow_mut().conf_state = cs;
    }

    pub fn conf_state(&self) -> ConfState {
        self.0.borrow().conf_state.clone()
    }

    /// Whether `id` is the group's only voter (no copy of the conf state:
    /// lease reads ask on every read).
    pub fn is_sole_voter(&self, id: u64) -> bool {
        self.0.borrow().conf_state.voters == [id]
    }

    pub fn last_index(&self) -> u64 {
        self.0.borrow().last_index()
    }

    pub fn first_index(&self) -> u64 {
        self.0.borrow().first_index()
    }

    pub fn entry_count(&self) -> usize {
        self.0.borrow().entries.len()
    }

    /// Bytes of entry data the window holds.
    pub fn window_bytes(&self) -> u64 {
        self.0.borrow().window_bytes
    }

    /// Term of `index` if it is in the window (or is the compaction point).
    pub fn term_of(&self, index: u64) -> Option<u64> {
        let s = self.0.borrow();
        if index == s.compacted_index {
            return Some(s.compacted_term);
        }
        if index < s.first_index() || index > s.last_index() {
            return None;
        }
        Some(s.entries[(index - s.first_index()) as usize].term)
    }

    /// Whether raft-rs asked for a snapshot since the last call.
    pub fn take_snapshot_wanted(&self) -> bool {
        std::mem::take(&mut self.0.borrow_mut().snapshot_wanted)
    }

    /// Offers a snapshot for raft-rs to send to lagging followers.
    pub fn set_prepared(&self, snapshot: Snapshot) {
        self.0.borrow_mut().prepared = Some(snapshot);
    }

    /// Forgets the prepared snapshot (it holds a copy of the shard).
    pub fn drop_prepared(&self) {
        self.0.borrow_mut().prepared = None;
    }

    pub fn has_prepared(&self) -> bool {
        self.0.borrow().prepared.is_some()
    }

    /// Replaces the log with a snapshot's point (a follower installing what
    /// its leader sent): everything up to `meta.index` is in the snapshot.
    pub fn apply_snapshot(&self, meta: &SnapshotMetadata) {
        let mut s = self.0.borrow_mut();
        assert!(
            meta.index >= s.compacted_index,
            "snapshot {} older than the log start {}",
            meta.index,
            s.compacted_index
        );
        s.entries.clear();
        s.window_bytes = 0;
        s.compacted_index = meta.index;
        s.compacted_term = meta.term;
        s.conf_state = meta.get_conf_state().clone();
        s.hard_state.commit = s.hard_state.commit.max(meta.index);
        s.hard_state.term = s.hard_state.term.max(meta.term);
    }

    /// Drops entries up to and including `index` from memory. The caller
    /// MUST only pass an index that has been applied.
    pub fn compact(&self, index: u64) {
        let mut s = self.0.borrow_mut();
        if index <= s.compacted_index {
            return;
        }
        assert!(index <= s.last_index(), "compact {index} beyond last {}", s.last_index());
        let drop = (index - s.compacted_index) as usize;
        let freed: u64 = s.entries.range(..drop).map(|e| e.data.len() as u64).sum();
        s.window_bytes -= freed;
        let last_dropped = s.entries.drain(..drop).last().expect("drop ≥ 1 entry");
        s.compacted_index = last_dropped.index;
        s.compacted_term = last_dropped.term;
    }
}

impl raft::Storage for GroupStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        let s = self.0.borrow();
        Ok(RaftState { hard_state: s.hard_state.clone(), conf_state: s.conf_state.clone() })
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        let s = self.0.borrow();
        if low < s.first_index() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        assert!(high <= s.last_index() + 1, "entries up to {high} asked, last is {}", s.last_index());
        let offset = s.first_index();
        let mut out: Vec<Entry> = s.entries.range((low - offset) as usize..(high - offset) as usize).cloned().collect();
        raft::util::limit_size(&mut out, max_size.into());
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        let s = self.0.borrow();
        if idx == s.compacted_index {
            return Ok(s.compacted_term);
        }
        if idx < s.first_index() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if idx > s.last_index() {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        Ok(s.entries[(idx - s.first_index()) as usize].term)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.0.borrow().first_index())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.0.borrow().last_index())
    }

    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        // A follower is too far behind for the log window. The core's driver
        // prepares a snapshot of the shard map off the request path; raft-rs
        // asks again on its next attempt to replicate.
        let mut s = self.0.borrow_mut();
        if let Some(snap) = &s.prepared {
            // One prepared before a membership change would give a new
            // replica a configuration without itself, which it refuses.
            let meta = snap.get_metadata();
            if meta.index >= request_index && meta.index >= s.compacted_index && *meta.get_conf_state() == s.conf_state
            {
                return Ok(snap.clone());
            }
        }
        s.snapshot_wanted = true;
        Err(raft::Error::Store(StorageError::SnapshotTemporarilyUnavailable))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::Storage;

    fn ent(index: u64, term: u64) -> Entry {
        Entry { index, term, ..Entry::default() }
    }

    #[test]
    fn append_overwrites_conflicting_suffix() {
        let s = GroupStorage::new(0, 0, ConfState::default());
        s.append(&[ent(1, 1), ent(2, 1), ent(3, 1)]);
        s.append(&[ent(2, 2)]);
        assert_eq!(s.last_index(), 2);
        assert_eq!(s.term(2).unwrap(), 2);
        assert_eq!(s.term(1).unwrap(), 1);
        assert_eq!(s.term(3), Err(raft::Error::Store(StorageError::Unavailable)));
    }

    #[test]
    fn compaction_keeps_the_boundary_term() {
        let s = GroupStorage::new(10, 3, ConfState::default());
        assert_eq!(s.first_index(), 11);
        s.append(&[ent(11, 3), ent(12, 4), ent(13, 4)]);
        s.compact(12);
        assert_eq!(s.first_index(), 13);
        assert_eq!(s.term(12).unwrap(), 4);
        assert_eq!(s.term(11), Err(raft::Error::Store(StorageError::Compacted)));
        let got = s.entries(13, 14, None, GetEntriesContext::empty(false)).unwrap();
        assert_eq!(got, vec![ent(13, 4)]);
        assert!(s.entries(12, 14, None, GetEntriesContext::empty(false)).is_err());
    }

    #[test]
    fn replay_skips_covered_entries_and_refuses_gaps() {
        let s = GroupStorage::new(5, 1, ConfState::default());
        s.replay(0, ent(4, 1)).unwrap();
        s.replay(0, ent(6, 1)).unwrap();
        assert_eq!(s.replay(0, ent(8, 1)), Err(ReplayError::Gap { group: 0, index: 8, last: 6 }));
        s.replay(0, ent(6, 2)).unwrap();
        assert_eq!(s.term_of(6), Some(2));
    }
}
