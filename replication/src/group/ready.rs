//! Handling one Ready, following raft-rs's contract: messages a leader may
//! send at once go out immediately; entries and hard state become WAL
//! records and are handed back to raft as persisted (`on_persist_ready`)
//! only once the WAL batch carrying them is durable, and the messages that
//! must wait for persistence wait with them. Committed entries are applied
//! to the map in index order, exactly once, and answer their proposers.

use std::collections::VecDeque;

use bytes::Bytes;
use kv_engine::snapshot::{self, SnapshotMeta};
use kv_engine::wal::Record;
use kv_engine::{Command, Decoded, ShardMap};
use protobuf::Message as _;
use raft::eraftpb::{ConfChange, ConfChangeV2, Entry, EntryType, Message, Snapshot};

use super::Group;
use crate::records::{conf_state_record, entry_record};
use crate::types::{Answer, Now};
use crate::CoreError;

/// Committed entries decoded, and their keys loaded, together before they
/// are applied: enough to overlap the memory waits of a pipelined batch
/// (a CPU keeps about 10-12 cache misses in flight), few enough that the
/// first window's lines are still cached when it is applied.
const APPLY_PREFETCH_ENTRIES: usize = 16;

/// Most bytes of entry data a group's in-memory log window keeps for
/// lagging followers.
pub const LOG_RETAIN_BYTES_MAX: u64 = 16 << 20;

/// Where handling a Ready puts what it produces.
pub(crate) struct ReadyCtx<'a, T> {
    /// Records for the next WAL flush; `None` without persistence.
    pub records: Option<&'a mut VecDeque<Record>>,
    /// Messages that may leave now.
    pub messages: &'a mut Vec<(u32, Message)>,
    pub answers: &'a mut Vec<(T, Answer)>,
    pub now: Now,
}

/// What handling one Ready left for the core.
pub(crate) struct Handled {
    pub number: u64,
    /// Messages that may only be sent once this Ready is persisted.
    pub after_persist: Vec<(u32, Message)>,
    /// A snapshot installed from the leader, to be written before the Ready
    /// counts as persisted.
    pub installed: Option<(SnapshotMeta, Bytes)>,
    /// Whether that snapshot's map was loaded ahead (staged) rather than
    /// decoded here.
    pub loaded_ahead: bool,
    /// How far the commit index advanced, and entries applied (metrics).
    pub committed: u64,
    pub applied: u64,
    /// A hard state in which only the commit index moved: it needs no
    /// flush of its own and rides the next one (see `Machine::drive`).
    pub commit_record: Option<Record>,
    /// Whether a whole hard state (term or vote moved) was staged.
    pub hard_state_staged: bool,
}

impl<T> Group<T> {
    /// Handles one Ready (the caller checked `has_ready`).
    pub fn handle_ready(&mut self, cx: &mut ReadyCtx<'_, T>) -> Handled {
        let mut rd = self.node.ready();
        let id = self.id;
        cx.messages.extend(rd.take_messages().into_iter().map(|m| (id, m)));
        self.confirm_reads(rd.take_read_states());
        let installed = (!rd.snapshot().is_empty()).then(|| self.install_snapshot(rd.snapshot(), cx.answers));
        let loaded_ahead = installed.as_ref().is_some_and(|(_, _, ahead)| *ahead);
        let installed = installed.map(|(meta, data, _)| (meta, data));
        let committed = rd.take_committed_entries();
        let applied = committed.len() as u64;
        self.apply(committed, cx);
        let entries = rd.take_entries();
        if !entries.is_empty() {
            self.storage.append(&entries);
            if let Some(records) = cx.records.as_deref_mut() {
                records.extend(entries.iter().map(|e| entry_record(id, e)));
            }
        }
        let (mut commit_advance, mut commit_record, mut hard_state_staged) = (0, None, false);
        if let Some(hs) = rd.hs() {
            let before = self.storage.hard_state();
            commit_advance = hs.commit.saturating_sub(before.commit);
            self.storage.set_hard_state(hs.clone());
            if let Some(records) = cx.records.as_deref_mut() {
                let record = Record::HardState { group: id, term: hs.term, vote: hs.vote, commit: hs.commit };
                // Term and vote must be durable before anything acts on
                // them; a commit index need not be (ARCHITECTURE.md,
                // "Durability protocol"): it is deferred. Not with an
                // installed snapshot (`before` already has its term): that
                // hard state goes with the snapshot's own flush.
                if (hs.term, hs.vote) == (before.term, before.vote) && installed.is_none() {
                    commit_record = Some(record);
                } else {
                    records.push_back(record);
                    hard_state_staged = true;
                }
            }
        }
        let after_persist = rd.take_persisted_messages().into_iter().map(|m| (id, m)).collect();
        let number = rd.number();
        let handled = Handled {
            number,
            after_persist,
            installed,
            loaded_ahead,
            committed: commit_advance,
            applied,
            commit_record,
            hard_state_staged,
        };
        self.node.advance_append_async(rd);
        self.release_reads(cx.now, cx.answers);
        handled
    }

    /// Replaces the map and the log with a snapshot the leader sent. Its
    /// bytes are returned so the core writes them as this shard's snapshot
    /// file before the Ready counts as persisted, with whether the map was
    /// the one loaded ahead.
    fn install_snapshot(&mut self, snap: &Snapshot, answers: &mut Vec<(T, Answer)>) -> (SnapshotMeta, Bytes, bool) {
        let meta = snap.get_metadata();
        // Loaded ahead by the transport (off this path) if it staged it;
        // else decoded here, in one go.
        let staged = self.staged.take().filter(|(s, _)| (s.index, s.term) == (meta.index, meta.term));
        let loaded_ahead = staged.is_some();
        let (smeta, map) = staged.unwrap_or_else(|| {
            let origin = format!("the snapshot of shard {} sent by its leader", self.id);
            let (smeta, entries) = snapshot::decode(&snap.data, std::path::Path::new(&origin))
                .unwrap_or_else(|e| panic!("a checksummed snapshot from the leader does not decode: {e}"));
            let mut map = ShardMap::new();
            map.restore(smeta.index, entries);
            (smeta, map)
        });
        assert_eq!(
            (smeta.group, smeta.index, smeta.term),
            (self.id, meta.index, meta.term),
            "snapshot metadata agrees"
        );
        tracing::info!(
            group = self.id,
            index = meta.index,
            keys = map.len(),
            loaded_ahead,
            "installing a snapshot from the leader"
        );
        self.map.replace_with(map);
        self.set_conf_state(meta.get_conf_state().clone());
        self.storage.apply_snapshot(meta);
        // Writes waiting here were overtaken by the leader's history.
        for (_, p) in std::mem::take(&mut self.pending) {
            answers.push((p.waiter, Answer::Write(Err(CoreError::Dropped))));
        }
        (smeta, snap.data.clone(), loaded_ahead)
    }

    /// Applies committed entries to the map and answers their proposers.
    fn apply(&mut self, entries: Vec<Entry>, cx: &mut ReadyCtx<'_, T>) {
        let Some(last) = entries.last().map(|e| e.index) else { return };
        // Crash point: committed (and durable) but not applied.
        fail::fail_point!("raft::before_apply");
        let mut entries = entries.into_iter().peekable();
        while entries.peek().is_some() {
            // Decoded a window at a time, so the map can load the window's
            // keys together before they are applied one by one.
            let window: Vec<(Entry, Option<Decoded>)> = entries
                .by_ref()
                .take(APPLY_PREFETCH_ENTRIES)
                .map(|e| {
                    let normal = e.get_entry_type() == EntryType::EntryNormal && !e.data.is_empty();
                    let decoded =
                        normal.then(|| Command::decode(&e.data).expect("committed entries were encoded by kvd"));
                    (e, decoded)
                })
                .collect();
            self.map.prefetch(window.iter().filter_map(|(_, d)| d.as_ref()).map(|d| &d.command.key()[..]));
            for (entry, decoded) in window {
                self.apply_one(entry, decoded, cx);
            }
        }
        self.node.advance_apply_to(last);
        self.compact_log(last);
    }

    fn apply_one(&mut self, entry: Entry, decoded: Option<Decoded>, cx: &mut ReadyCtx<'_, T>) {
        let outcome = match (entry.get_entry_type(), decoded) {
            (EntryType::EntryNormal, Some(decoded)) => Some(self.map.apply_entry(entry.index, decoded)),
            (EntryType::EntryNormal, None) => {
                self.map.apply_noop(entry.index);
                None
            }
            (EntryType::EntryConfChange | EntryType::EntryConfChangeV2, _) => {
                self.apply_conf_change(&entry, cx.records.as_deref_mut());
                self.map.apply_noop(entry.index);
                None
            }
        };
        if let Some(p) = self.pending.remove(&entry.index) {
            // Another leader's entry at our index means ours was dropped.
            let result = match outcome {
                Some(o) if p.term == entry.term => Ok(o),
                // The seeded bug: claim the write the new leader replaced.
                _ if self.bugs.ack_overwritten_entry => Ok(kv_engine::Outcome::Written { version: entry.index }),
                _ => Err(CoreError::Dropped),
            };
            cx.answers.push((p.waiter, Answer::Write(result)));
        }
    }

    /// Drops applied entries from the in-memory log window. The window
    /// serves followers that are a little behind (past it they get a
    /// snapshot): a group without other voters keeps nothing; others keep
    /// `log_retain_entries`, but at most `LOG_RETAIN_BYTES_MAX` of entry
    /// data, and nothing applied under memory pressure (the window's
    /// entries hold copies of the values: memory eviction could not free).
    fn compact_log(&mut self, applied: u64) {
        let first = self.storage.first_index();
        let keep_none = self.is_alone() || self.memory_pressure || self.storage.window_bytes() > LOG_RETAIN_BYTES_MAX;
        if keep_none && applied >= first {
            self.storage.compact(applied);
        } else if applied > first + 2 * self.log_retain_entries {
            self.storage.compact(applied - self.log_retain_entries);
        }
    }

    fn apply_conf_change(&mut self, entry: &Entry, records: Option<&mut VecDeque<Record>>) {
        let cs = if entry.get_entry_type() == EntryType::EntryConfChange {
            let cc = ConfChange::parse_from_bytes(&entry.data).expect("committed conf change decodes");
            self.node.apply_conf_change(&cc)
        } else {
            let cc = ConfChangeV2::parse_from_bytes(&entry.data).expect("committed conf change decodes");
            self.node.apply_conf_change(&cc)
        }
        .expect("committed conf change applies");
        self.set_conf_state(cs.clone());
        if let Some(records) = records {
            records.push_back(conf_state_record(self.id, entry.index, &cs));
        }
    }
}
