//! One shard replica on this core: its Raft node, its log window, its map,
//! and the requests waiting for their entries to apply.
//!
//! Ready handling follows raft-rs's contract (see `handle_ready`): messages
//! a leader may send at once go out immediately; entries and hard state are
//! appended to the WAL and handed back to raft only once that WAL batch is
//! durable (`on_persist_ready`), and the messages that must wait for
//! persistence wait with them.

use std::collections::BTreeMap;

use bytes::Bytes;
use kv_engine::snapshot::{self, SnapshotMeta};
use kv_engine::wal::{Record, Wal};
use kv_engine::{Command, Outcome, ShardMap, Stored};
use protobuf::Message as _;
use raft::eraftpb::{ConfChange, ConfChangeV2, ConfState, Entry, EntryType, Message, Snapshot};
use raft::{RawNode, StateRole};

use crate::oneshot;
use crate::storage::GroupStorage;
use crate::CoreError;

/// Entries kept in memory after they are applied by default, so a follower
/// that is a little behind can be served from memory instead of a snapshot.
pub const LOG_RETAIN_ENTRIES_DEFAULT: u64 = 4096;

pub(crate) type Reply = oneshot::Sender<Result<Outcome, CoreError>>;
pub(crate) type ReadReply = oneshot::Sender<Result<(), CoreError>>;

/// Strict reads waiting on one group before new ones get `Busy`.
pub const READS_WAITING_MAX: usize = 65_536;

struct Pending {
    term: u64,
    reply: Reply,
}

pub(crate) struct Group {
    pub id: u32,
    pub node: RawNode<GroupStorage>,
    pub storage: GroupStorage,
    pub map: ShardMap,
    /// Index of the newest durable snapshot of `map` (0 if none).
    pub snapshot_index: u64,
    log_retain_entries: u64,
    pending: BTreeMap<u64, Pending>,
    /// Strict reads that asked raft for a read index, by request context.
    reads_waiting_index: BTreeMap<u64, ReadReply>,
    /// Strict reads that know their read index, waiting for it to apply.
    reads_waiting_apply: Vec<(u64, ReadReply)>,
    next_read_ctx: u64,
}

/// What handling one Ready left for the driver.
pub(crate) struct Handled {
    pub number: u64,
    /// Messages that may only be sent once this Ready is persisted.
    pub after_persist: Vec<(u32, Message)>,
    /// A snapshot installed from the leader, to be written before the Ready
    /// counts as persisted.
    pub installed: Option<(SnapshotMeta, Bytes)>,
    /// How far the commit index advanced, and entries applied (metrics).
    pub committed: u64,
    pub applied: u64,
}

impl Group {
    pub fn new(
        id: u32,
        node: RawNode<GroupStorage>,
        storage: GroupStorage,
        map: ShardMap,
        snapshot_index: u64,
        log_retain_entries: u64,
    ) -> Group {
        Group {
            id,
            node,
            storage,
            map,
            snapshot_index,
            log_retain_entries,
            pending: BTreeMap::new(),
            reads_waiting_index: BTreeMap::new(),
            reads_waiting_apply: Vec::new(),
            next_read_ctx: 1,
        }
    }

    pub fn is_leader(&self) -> bool {
        self.node.raft.state == StateRole::Leader
    }

    pub fn leader_id(&self) -> Option<u64> {
        Some(self.node.raft.leader_id).filter(|&id| id != raft::INVALID_ID)
    }

    pub fn pending_count(&self) -> usize {
        self.pending.len()
    }

    /// Hands leadership to the most caught-up voter. Returns whether a
    /// transfer started.
    pub fn transfer_leadership(&mut self) -> bool {
        let me = self.node.raft.id;
        if !self.is_leader() {
            return false;
        }
        let target = self
            .node
            .raft
            .prs()
            .iter()
            .filter(|(id, _)| **id != me)
            .max_by_key(|(_, pr)| pr.matched)
            .map(|(id, _)| *id);
        match target {
            Some(t) => {
                self.node.transfer_leader(t);
                true
            }
            None => false,
        }
    }

    /// Hands leadership back to `preferred` if it is fully caught up (this
    /// is how leaders return to their preferred replicas after a failover).
    pub fn yield_to(&mut self, preferred: u64) -> bool {
        if !self.is_leader() || preferred == self.node.raft.id {
            return false;
        }
        let last = self.node.raft.raft_log.last_index();
        let caught_up = self.node.raft.prs().get(preferred).is_some_and(|pr| pr.matched == last && pr.recent_active);
        if caught_up {
            self.node.transfer_leader(preferred);
        }
        caught_up
    }

    /// Whether a read served from this replica's map now is linearizable
    /// under the lease rule: it leads, and it has committed an entry of its
    /// own term (so its map holds every write acknowledged by any leader).
    /// With check_quorum, a leader cut off from the majority steps down
    /// within an election timeout; that timeout is the lease.
    pub fn lease_valid(&self) -> bool {
        self.is_leader() && self.node.raft.commit_to_current_term()
    }

    /// Starts a ReadIndex round (a strict read); the receiver resolves once
    /// the map has applied everything committed when the read began.
    pub fn read_index(&mut self) -> Result<oneshot::Receiver<Result<(), CoreError>>, CoreError> {
        if !self.is_leader() {
            return Err(CoreError::NotLeader { leader: self.leader_id() });
        }
        if self.reads_waiting_index.len() + self.reads_waiting_apply.len() >= READS_WAITING_MAX {
            return Err(CoreError::Busy);
        }
        let ctx = self.next_read_ctx;
        self.next_read_ctx += 1;
        let (tx, rx) = oneshot::channel();
        self.reads_waiting_index.insert(ctx, tx);
        self.node.read_index(ctx.to_le_bytes().to_vec());
        Ok(rx)
    }

    fn release_reads(&mut self) {
        let applied = self.map.applied_index();
        let (ready, waiting): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.reads_waiting_apply).into_iter().partition(|(index, _)| *index <= applied);
        self.reads_waiting_apply = waiting;
        for (_, reply) in ready {
            reply.send(Ok(()));
        }
    }

    fn fail_reads(&mut self, err: CoreError) {
        for (_, reply) in std::mem::take(&mut self.reads_waiting_index) {
            reply.send(Err(err.clone()));
        }
        for (_, reply) in std::mem::take(&mut self.reads_waiting_apply) {
            reply.send(Err(err.clone()));
        }
    }

    /// Proposes a command; the receiver resolves when it is applied.
    pub fn propose(&mut self, command: &Command) -> Result<oneshot::Receiver<Result<Outcome, CoreError>>, CoreError> {
        if !self.is_leader() {
            return Err(CoreError::NotLeader { leader: self.leader_id() });
        }
        let before = self.node.raft.raft_log.last_index();
        // Refused before it was appended (e.g. a leadership transfer is under
        // way): nothing happened, so another node may take it.
        self.node
            .propose(Vec::new(), command.encode(crate::keyspace::wall_clock_ms()))
            .map_err(|_| CoreError::NotLeader { leader: None })?;
        let index = self.node.raft.raft_log.last_index();
        assert_eq!(index, before + 1, "one proposal appends one entry");
        let (tx, rx) = oneshot::channel();
        self.pending.insert(index, Pending { term: self.node.raft.term, reply: tx });
        Ok(rx)
    }

    /// Handles one Ready (the caller checked `has_ready`). Messages that may
    /// go out now are pushed to `outbox`.
    pub fn handle_ready(&mut self, wal: Option<&Wal>, outbox: &mut Vec<(u32, Message)>) -> Handled {
        let mut rd = self.node.ready();
        let id = self.id;
        outbox.extend(rd.take_messages().into_iter().map(|m| (id, m)));
        for rs in rd.take_read_states() {
            let ctx = u64::from_le_bytes(rs.request_ctx.as_slice().try_into().expect("kvd read contexts are 8 bytes"));
            if let Some(reply) = self.reads_waiting_index.remove(&ctx) {
                self.reads_waiting_apply.push((rs.index, reply));
            }
        }
        let installed = (!rd.snapshot().is_empty()).then(|| self.install_snapshot(rd.snapshot()));
        let committed = rd.take_committed_entries();
        let applied = committed.len() as u64;
        self.apply(committed, wal);
        self.release_reads();
        let entries = rd.take_entries();
        if !entries.is_empty() {
            self.storage.append(&entries);
            if let Some(wal) = wal {
                for e in &entries {
                    wal.append(&entry_record(self.id, e));
                }
            }
        }
        let mut commit_advance = 0;
        if let Some(hs) = rd.hs() {
            commit_advance = hs.commit.saturating_sub(self.storage.hard_state().commit);
            self.storage.set_hard_state(hs.clone());
            if let Some(wal) = wal {
                wal.append(&Record::HardState { group: self.id, term: hs.term, vote: hs.vote, commit: hs.commit });
            }
        }
        let after_persist = rd.take_persisted_messages().into_iter().map(|m| (id, m)).collect();
        let handled = Handled { number: rd.number(), after_persist, installed, committed: commit_advance, applied };
        self.node.advance_append_async(rd);
        if !self.is_leader() {
            self.fail_reads(CoreError::NotLeader { leader: self.leader_id() });
        }
        handled
    }

    /// Replaces the map and the log with a snapshot the leader sent. The
    /// snapshot's bytes are returned so the driver writes them as this
    /// shard's snapshot file before the Ready counts as persisted.
    fn install_snapshot(&mut self, snap: &Snapshot) -> (SnapshotMeta, Bytes) {
        let meta = snap.get_metadata();
        let origin = format!("the snapshot of shard {} sent by its leader", self.id);
        let (smeta, entries) = snapshot::decode(&snap.data, std::path::Path::new(&origin))
            .unwrap_or_else(|e| panic!("a checksummed snapshot from the leader does not decode: {e}"));
        assert_eq!(
            (smeta.group, smeta.index, smeta.term),
            (self.id, meta.index, meta.term),
            "snapshot metadata agrees"
        );
        tracing::info!(
            group = self.id,
            index = meta.index,
            keys = entries.len(),
            "installing a snapshot from the leader"
        );
        self.map.restore(meta.index, entries);
        self.storage.apply_snapshot(meta);
        // Writes waiting here were overtaken by the leader's history.
        for (_, p) in std::mem::take(&mut self.pending) {
            p.reply.send(Err(CoreError::Dropped));
        }
        (smeta, snap.data.clone())
    }

    /// A point-in-time copy of the shard at its applied index, encoded as a
    /// snapshot for a lagging follower. The copy is of reference-counted
    /// values; the encoding runs later, yielding to other tasks.
    pub fn snapshot_source(&self) -> (SnapshotMeta, Vec<(Bytes, Stored)>, ConfState) {
        let index = self.map.applied_index();
        let term = self.storage.term_of(index).expect("the applied index is in the log window");
        let conf_state = self.storage.conf_state();
        let meta = SnapshotMeta {
            group: self.id,
            index,
            term,
            conf_state: conf_state.write_to_bytes().expect("encodes").into(),
        };
        (meta, self.map.iter().map(|(k, v)| (k.clone(), v.clone())).collect(), conf_state)
    }

    /// Applies committed entries to the map and answers their proposers.
    fn apply(&mut self, entries: Vec<Entry>, wal: Option<&Wal>) {
        let Some(last) = entries.last().map(|e| e.index) else { return };
        // Crash point: committed (and durable) but not applied.
        fail::fail_point!("raft::before_apply");
        for entry in entries {
            let outcome = match entry.get_entry_type() {
                EntryType::EntryNormal if entry.data.is_empty() => {
                    self.map.apply_noop(entry.index);
                    None
                }
                EntryType::EntryNormal => {
                    let (now_ms, command) =
                        Command::decode(&entry.data).expect("committed entries were encoded by kvd");
                    Some(self.map.apply(entry.index, now_ms, command))
                }
                EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => {
                    self.apply_conf_change(&entry, wal);
                    self.map.apply_noop(entry.index);
                    None
                }
            };
            if let Some(p) = self.pending.remove(&entry.index) {
                // Another leader's entry at our index means ours was dropped.
                let result = match outcome {
                    Some(o) if p.term == entry.term => Ok(o),
                    _ => Err(CoreError::Dropped),
                };
                p.reply.send(result);
            }
        }
        self.node.advance_apply_to(last);
        if last > self.storage.first_index() + 2 * self.log_retain_entries {
            self.storage.compact(last - self.log_retain_entries);
        }
    }

    fn apply_conf_change(&mut self, entry: &Entry, wal: Option<&Wal>) {
        let cs = if entry.get_entry_type() == EntryType::EntryConfChange {
            let cc = ConfChange::parse_from_bytes(&entry.data).expect("committed conf change decodes");
            self.node.apply_conf_change(&cc)
        } else {
            let cc = ConfChangeV2::parse_from_bytes(&entry.data).expect("committed conf change decodes");
            self.node.apply_conf_change(&cc)
        }
        .expect("committed conf change applies");
        self.storage.set_conf_state(cs.clone());
        if let Some(wal) = wal {
            wal.append(&conf_state_record(self.id, entry.index, &cs));
        }
    }

    /// Answers every waiting request with `err` (shutdown, poisoned WAL).
    pub fn fail_pending(&mut self, err: CoreError) {
        for (_, p) in std::mem::take(&mut self.pending) {
            p.reply.send(Err(err.clone()));
        }
        self.fail_reads(err);
    }
}

pub(crate) fn entry_record(group: u32, e: &Entry) -> Record {
    assert!(e.context.is_empty(), "kvd never proposes with a context");
    let entry_type = match e.get_entry_type() {
        EntryType::EntryNormal => 0,
        EntryType::EntryConfChange => 1,
        EntryType::EntryConfChangeV2 => 2,
    };
    Record::Entry { group, term: e.term, index: e.index, entry_type, data: e.data.clone() }
}

/// Rebuilds a raft entry from its WAL record.
pub(crate) fn entry_from_record(term: u64, index: u64, entry_type: u8, data: bytes::Bytes) -> Result<Entry, String> {
    let mut e = Entry::default();
    e.set_entry_type(match entry_type {
        0 => EntryType::EntryNormal,
        1 => EntryType::EntryConfChange,
        2 => EntryType::EntryConfChangeV2,
        t => return Err(format!("unknown entry type {t}")),
    });
    e.term = term;
    e.index = index;
    e.data = data;
    Ok(e)
}

pub(crate) fn conf_state_record(group: u32, index: u64, cs: &ConfState) -> Record {
    let data = cs.write_to_bytes().expect("conf state encodes");
    Record::ConfState { group, index, data: data.into() }
}

pub(crate) fn conf_state_from_bytes(data: &[u8]) -> Result<ConfState, String> {
    ConfState::parse_from_bytes(data).map_err(|e| format!("conf state does not decode: {e}"))
}
