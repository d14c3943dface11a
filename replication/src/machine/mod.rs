//! The per-core replication state machine, sans IO.
//!
//! A [`Machine`] owns the Raft groups of one core and decides everything
//! about them; it reads no clock, spawns nothing, draws no randomness and
//! touches no file or socket. Its inputs are method calls: a client
//! proposal or read, a peer message (`step`), a tick, a WAL flush completed
//! or failed (`flushed`), a snapshot for followers encoded
//! (`snapshot_prepared`), a periodic snapshot written (`snapshot_written`).
//! Its outputs accumulate in [`Outputs`], which the caller drains with
//! [`Machine::take_outputs`] after each call to [`Machine::drive`]:
//! messages to send, answers to release, at most one WAL batch to write
//! (the caller MUST report it with `flushed`), and shard copies to encode
//! for lagging followers.
//!
//! Two callers drive it: the glommio glue of a real node (`core.rs`), and
//! the deterministic simulator (`kvsim`), which runs the same machine
//! against a simulated disk, network and clock.
//!
//! - `drive.rs`: Ready handling across groups, group commit, persistence.
//! - `snapshots.rs`: snapshots for followers, periodic snapshots.
//! - `queries.rs`: reads that need no waiting, status, scans, expiry.
//! - `membership.rs`: readmitting a node on a new data directory, conf
//!   changes toward each group's wanted replicas.
//!
//! Architecture Invariant: an answer to a write is released only after the
//! WAL batch carrying its entry was reported durable (`flushed(Ok)`) on a
//! quorum and the entry applied; a poisoned machine never reports a Ready
//! persisted again.

mod drive;
mod membership;
mod memory;
mod queries;
mod snapshots;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use bytes::Bytes;
use kv_engine::snapshot::SnapshotMeta;
use kv_engine::wal::Record;
use kv_engine::{Command, Stored};
use raft::eraftpb::{ConfState, Message};

use crate::group::Group;
use crate::types::{Answer, Bugs, Consistency, CoreStats, Now};
use crate::{CoreError, PENDING_PER_GROUP_MAX};

/// Who the machine is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MachineConfig {
    pub node_id: u64,
    pub core: u32,
    /// Whether records go to a WAL (`false`: `--persistence none`, where
    /// Readies count as persisted at once).
    pub durable: bool,
    /// Record bytes one WAL flush carries at most (0: everything staged):
    /// bounds the time of one write + fdatasync, so a burst of large
    /// writes does not hold back the answers of small ones behind it.
    /// A single Ready bigger than this still goes out whole.
    pub wal_batch_bytes_max: u64,
}

/// A WAL batch the caller must write: first every snapshot in `installs`
/// (durably: file, then directory fsync), then `records` in one WAL flush.
/// Report the result with [`Machine::flushed`].
#[derive(Debug, Default)]
pub struct FlushJob {
    pub records: Vec<Record>,
    pub installs: Vec<(SnapshotMeta, Bytes)>,
}

/// A point-in-time copy of a shard, to encode as a snapshot.
#[derive(Debug)]
pub struct SnapshotSource {
    pub meta: SnapshotMeta,
    pub entries: Vec<(Bytes, Stored)>,
    pub conf_state: ConfState,
}

/// What the machine asks of its caller.
#[derive(Debug)]
pub struct Outputs<T> {
    /// Raft messages to other nodes, by group; they may be dropped.
    pub messages: Vec<(u32, Message)>,
    /// Waiting requests to answer.
    pub answers: Vec<(T, Answer)>,
    /// The WAL batch to write now, if one should start.
    pub flush: Option<FlushJob>,
    /// Shards to encode for lagging followers (`snapshot_prepared`).
    pub prepare: Vec<SnapshotSource>,
}

impl<T> Default for Outputs<T> {
    fn default() -> Self {
        Outputs { messages: Vec::new(), answers: Vec::new(), flush: None, prepare: Vec::new() }
    }
}

impl<T> Outputs<T> {
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty() && self.answers.is_empty() && self.flush.is_none() && self.prepare.is_empty()
    }
}

/// A Ready waiting for its WAL flush.
struct Persisting {
    group: u32,
    number: u64,
    /// Messages that may only leave once the Ready is durable.
    after_persist: Vec<(u32, Message)>,
    /// A snapshot installed from the leader: its file is written first.
    installed: Option<(SnapshotMeta, Bytes)>,
    /// The records this Ready staged (they follow the previous Ready's in
    /// `staged`), and their encoded bytes.
    records: usize,
    records_bytes: u64,
}

/// How a read started.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadStart {
    /// Answered at once (stale, or a lease read under a valid lease).
    Answered(Option<Stored>),
    /// Waits for a ReadIndex round; the answer comes out as [`Answer::Read`].
    Queued,
}

pub struct Machine<T> {
    config: MachineConfig,
    groups: BTreeMap<u32, Group<T>>,
    /// Records for the next flushes, in order: first `unattributed` ones
    /// no Ready staged (new groups' first membership), then each Ready's.
    staged: std::collections::VecDeque<Record>,
    unattributed: usize,
    /// Per group, its newest hard state in which only the commit index
    /// moved since the last one staged: written at the end of the next
    /// flush that writes anything, never flushed on its own.
    commit_records: BTreeMap<u32, Record>,
    /// Readies handled since the last flush started.
    unpersisted: Vec<Persisting>,
    /// Readies of the flush in flight.
    in_flight: Option<Vec<Persisting>>,
    poisoned: Option<String>,
    stopping: bool,
    stopped: bool,
    /// Groups whose snapshot for followers is being encoded (`None`), or
    /// when one was prepared (monotonic ms).
    preparing: BTreeMap<u32, Option<u64>>,
    stats: CoreStats,
    bugs: Bugs,
    out: Outputs<T>,
    /// The node is over its memory limit: writes that need memory fail.
    /// Bytes of writes that need memory this core may still admit before
    /// the caller measures again (`None`: no limit).
    write_allowance: Option<u64>,
    /// Nodes back on new data directories, being readmitted.
    readmissions: membership::Readmissions,
}

impl<T> Machine<T> {
    /// A machine over restored groups (see `restore.rs`). `bootstrap` holds
    /// records the restore produced (the first membership of new groups),
    /// written with the first flush.
    pub(crate) fn new(config: MachineConfig, groups: BTreeMap<u32, Group<T>>, bootstrap: Vec<Record>) -> Machine<T> {
        assert!(groups.values().all(|g| g.node_id() == config.node_id), "every group is this node's");
        Machine {
            config,
            groups,
            unattributed: if config.durable { bootstrap.len() } else { 0 },
            staged: if config.durable { bootstrap.into() } else { Default::default() },
            commit_records: BTreeMap::new(),
            unpersisted: Vec::new(),
            in_flight: None,
            poisoned: None,
            stopping: false,
            stopped: false,
            preparing: BTreeMap::new(),
            stats: CoreStats::default(),
            bugs: Bugs::default(),
            out: Outputs::default(),
            write_allowance: None,
            readmissions: Default::default(),
        }
    }

    pub fn config(&self) -> MachineConfig {
        self.config
    }

    pub fn stats(&self) -> CoreStats {
        self.stats
    }

    /// Breaks guarantees on purpose (the simulator's seeded bugs).
    pub fn set_bugs(&mut self, bugs: Bugs) {
        self.bugs = bugs;
        for g in self.groups.values_mut() {
            g.set_bugs(bugs);
        }
    }

    /// Everything produced since the last call.
    pub fn take_outputs(&mut self) -> Outputs<T> {
        self.silence_readmitted();
        std::mem::take(&mut self.out)
    }

    /// Like [`Machine::take_outputs`], but swaps with `spent`, which MUST be
    /// empty (drained): its buffers are reused, so a busy core does not
    /// grow fresh vectors after every drive.
    pub fn swap_outputs(&mut self, spent: &mut Outputs<T>) {
        assert!(spent.is_empty(), "swap_outputs with outputs not carried out");
        self.silence_readmitted();
        std::mem::swap(&mut self.out, spent);
    }

    /// Why this machine refuses writes, if it does.
    pub fn poisoned(&self) -> Option<&str> {
        self.poisoned.as_deref()
    }

    fn group_mut(&mut self, shard: u32) -> Result<&mut Group<T>, CoreError> {
        self.groups.get_mut(&shard).ok_or(CoreError::WrongCore(shard))
    }

    fn group(&self, shard: u32) -> Result<&Group<T>, CoreError> {
        self.groups.get(&shard).ok_or(CoreError::WrongCore(shard))
    }

    /// Proposes `command` to the shard's group; `waiter` comes back in an
    /// [`Answer::Write`] once the entry is durable on a quorum and applied.
    /// On an error nothing was proposed (and `waiter` is dropped).
    pub fn propose(&mut self, shard: u32, command: &Command, waiter: T, now: Now) -> Result<(), CoreError> {
        if let Some(why) = &self.poisoned {
            return Err(CoreError::Poisoned(why.clone()));
        }
        if self.stopping {
            return Err(CoreError::ShuttingDown);
        }
        let memory = match self.write_allowance {
            Some(allowance) if command.needs_memory() => Some((allowance, command.encoded_len() as u64)),
            _ => None,
        };
        let group = self.group_mut(shard)?;
        if group.pending_count() >= PENDING_PER_GROUP_MAX {
            return Err(CoreError::Busy);
        }
        // Only a leader refuses for memory: elsewhere the write is
        // forwarded, and the leader's node decides.
        if matches!(memory, Some((allowance, need)) if need > allowance) && group.is_leader() {
            return Err(CoreError::OutOfMemory);
        }
        group.propose(command, waiter, now)?;
        if let Some((allowance, need)) = memory {
            self.write_allowance = Some(allowance.saturating_sub(need));
        }
        self.stats.proposals += 1;
        Ok(())
    }

    /// Starts a read at `consistency`: answered at once where allowed, else
    /// queued for a ReadIndex round on the leader (its answer then comes
    /// out as an [`Answer::Read`] for `waiter`).
    pub fn read(
        &mut self,
        shard: u32,
        key: Bytes,
        consistency: Consistency,
        waiter: T,
        now: Now,
    ) -> Result<ReadStart, CoreError> {
        if self.stopping {
            return Err(CoreError::ShuttingDown);
        }
        match self.read_now(shard, &key, consistency, now) {
            Ok(value) => Ok(ReadStart::Answered(value)),
            Err(CoreError::NotLeader { .. }) if consistency != Consistency::Stale => {
                self.group_mut(shard)?.queue_read(waiter, key)?;
                Ok(ReadStart::Queued)
            }
            Err(e) => Err(e),
        }
    }

    /// Delivers a message from a peer to `group`. Unknown groups and
    /// messages raft refuses are dropped (Raft tolerates loss).
    pub fn step(&mut self, group: u32, message: Message) -> Result<(), String> {
        if self.unheard(group, message.from, message.get_msg_type()) {
            return Err(format!(
                "group {group} still counts node {}'s lost data directory as a voter: its {:?} does not count",
                message.from,
                message.get_msg_type()
            ));
        }
        match self.groups.get_mut(&group) {
            Some(g) => g.step(message),
            None => Err(format!("no group {group} on this core")),
        }
    }

    /// One tick of every group's logical clock.
    pub fn tick(&mut self, now: Now) {
        for g in self.groups.values_mut() {
            g.tick(now);
        }
        self.expire_prepared(now);
        self.reconfigure();
    }

    /// Starts handing every group this core leads to another voter (a
    /// graceful stop). Returns how many transfers started.
    pub fn transfer_leadership(&mut self) -> usize {
        let readmissions = &self.readmissions;
        self.groups
            .values_mut()
            .map(|g| {
                let id = g.id;
                g.transfer_leadership(|n| membership::counts_lost_directory(readmissions, id, n))
            })
            .filter(|started| *started)
            .count()
    }

    /// Hands groups back to their preferred leaders where those are caught
    /// up. Returns how many transfers started.
    pub fn rebalance_leaders(&mut self, preferred: impl Fn(u32) -> Option<u64>) -> usize {
        let readmissions = &self.readmissions;
        self.groups
            .values_mut()
            .filter_map(|g| {
                let p = preferred(g.id)?;
                // Never to a directory this group still counts as lost.
                (!membership::counts_lost_directory(readmissions, g.id, p)).then(|| g.yield_to(p))
            })
            .filter(|started| *started)
            .count()
    }

    /// Tells raft whether a snapshot message reached the transport.
    pub fn report_snapshot(&mut self, group: u32, to: u64, sent: bool) {
        if let Some(g) = self.groups.get_mut(&group) {
            g.report_snapshot(to, sent);
        }
    }

    /// Stops taking writes and reads; what is in flight may finish.
    pub fn stop_accepting(&mut self) {
        self.stopping = true;
    }

    /// Stops for good: every waiting request is answered `ShuttingDown`
    /// and nothing is driven any more.
    pub fn halt(&mut self) {
        self.stopping = true;
        self.stopped = true;
        self.fail_all(CoreError::ShuttingDown);
    }

    /// Refuses writes from now on: records of a failed flush may be lost,
    /// so nothing staged since may be reported persisted.
    pub fn poison(&mut self, why: String) {
        tracing::error!(core = self.config.core, "core stops accepting writes: {why}");
        self.poisoned = Some(why.clone());
        self.fail_all(CoreError::Poisoned(why));
    }

    fn fail_all(&mut self, err: CoreError) {
        for g in self.groups.values_mut() {
            g.fail_pending(err.clone(), &mut self.out.answers);
        }
    }
}
