//! One shard replica: its Raft node, its log window, its map, and the
//! requests waiting on it. This is the only place that touches raft-rs:
//! the core above asks questions (`is_leader`, `status`) and gives
//! commands (`propose`, `step`, `tick`, `handle_ready`), and never reaches
//! into the raw node.
//!
//! A waiting request is an opaque `T` (the core's glue keeps a reply
//! channel there, the simulator an operation id) that comes back out with
//! its [`Answer`] once the entry is applied or the read is served.
//!
//! - `ready.rs`: Ready handling (raft-rs's contract), applying entries,
//!   installing a leader's snapshot.
//! - `reads.rs`: strict reads (ReadIndex) and the time-bounded leader lease.
//! - `membership.rs`: conf changes toward the wanted replicas.

mod membership;
mod reads;
mod ready;

use std::collections::BTreeMap;

use bytes::Bytes;
use kv_engine::snapshot::SnapshotMeta;
use kv_engine::{Command, ShardMap, Stored};
use raft::eraftpb::{ConfState, Message, MessageType};
use raft::{RawNode, StateRole};

use crate::storage::GroupStorage;
use crate::types::{Answer, Bugs, Now};
use crate::{records, CoreError, GroupStatus};

pub use membership::MembershipStep;
use reads::Reads;
pub(crate) use ready::ReadyCtx;

/// Entries kept in memory after they are applied by default, so a follower
/// that is a little behind can be served from memory instead of a snapshot.
pub const LOG_RETAIN_ENTRIES_DEFAULT: u64 = 4096;

/// Strict reads waiting on one group before new ones get `Busy`.
pub const READS_WAITING_MAX: usize = 65_536;

struct Pending<T> {
    term: u64,
    waiter: T,
}

/// How a group runs (the same for every group of a core).
#[derive(Debug, Clone, Copy)]
pub(crate) struct GroupConfig {
    /// Applied entries kept in memory for lagging followers.
    pub log_retain_entries: u64,
    /// How long after a quorum confirmed its leadership this replica may
    /// answer lease reads alone (see `reads.rs`).
    pub lease_ms: u64,
    /// Values of puts at least this long are proposed compressed (0: never).
    pub compress_min_bytes: usize,
}

pub(crate) struct Group<T> {
    pub id: u32,
    node: RawNode<GroupStorage>,
    storage: GroupStorage,
    pub map: ShardMap,
    /// Index of the newest durable snapshot of `map` (0 if none).
    pub snapshot_index: u64,
    log_retain_entries: u64,
    compress_min_bytes: usize,
    /// Writes proposed here, by log index, waiting to be applied.
    pending: BTreeMap<u64, Pending<T>>,
    reads: Reads<T>,
    bugs: Bugs,
    /// Whether this replica led when `take_role_change` last looked.
    led: bool,
    /// The node is over its memory limit: keep no applied entries.
    pub memory_pressure: bool,
    /// The nodes that should hold this shard (`membership.rs`).
    wanted: Vec<u64>,
    /// Members the configurations applied since the last look dropped.
    dropped_members: Vec<u64>,
    /// A leader's snapshot loaded into a map ahead of its message
    /// ([`Group::stage_snapshot_map`]).
    staged: Option<(SnapshotMeta, ShardMap)>,
}

impl<T> Group<T> {
    pub fn new(
        id: u32,
        node: RawNode<GroupStorage>,
        storage: GroupStorage,
        map: ShardMap,
        config: GroupConfig,
    ) -> Group<T> {
        let snapshot_index = map.applied_index();
        Group {
            id,
            node,
            storage,
            map,
            snapshot_index,
            log_retain_entries: config.log_retain_entries.max(1),
            compress_min_bytes: config.compress_min_bytes,
            pending: BTreeMap::new(),
            reads: Reads::new(config.lease_ms),
            bugs: Bugs::default(),
            led: false,
            memory_pressure: false,
            wanted: Vec::new(),
            dropped_members: Vec::new(),
            staged: None,
        }
    }

    pub fn node_id(&self) -> u64 {
        self.node.raft.id
    }

    pub fn is_leader(&self) -> bool {
        self.node.raft.state == StateRole::Leader
    }

    pub fn leader_id(&self) -> Option<u64> {
        Some(self.node.raft.leader_id).filter(|&id| id != raft::INVALID_ID)
    }

    pub fn term(&self) -> u64 {
        self.node.raft.term
    }

    pub fn commit_index(&self) -> u64 {
        self.node.raft.raft_log.committed
    }

    pub fn last_index(&self) -> u64 {
        self.node.raft.raft_log.last_index()
    }

    /// Whether this replica is the group's only voter.
    pub fn is_alone(&self) -> bool {
        self.storage.is_sole_voter(self.node_id())
    }

    pub fn pending_count(&self) -> usize {
        self.pending.len()
    }

    /// Whether this replica gained or lost leadership since the last call.
    pub fn take_role_change(&mut self) -> bool {
        let leads = self.is_leader();
        leads != std::mem::replace(&mut self.led, leads)
    }

    pub fn has_ready(&self) -> bool {
        self.node.has_ready()
    }

    /// Whether this group has replayed its log: applied everything it knew
    /// to be committed; a group that is its own only voter must also lead
    /// and have committed its whole log (its first entry as leader proves
    /// the WAL writable).
    pub fn is_ready(&self) -> bool {
        let replayed = self.map.applied_index() >= self.commit_index();
        replayed && (!self.is_alone() || (self.is_leader() && self.commit_index() >= self.last_index()))
    }

    /// Raft's view of this group, for status reports.
    pub fn status(&self) -> GroupStatus {
        let raft = &self.node.raft;
        let last_index = self.last_index();
        let follower_lag = if self.is_leader() {
            raft.prs()
                .iter()
                .filter(|(id, _)| **id != raft.id)
                .map(|(id, pr)| (*id, last_index.saturating_sub(pr.matched)))
                .collect()
        } else {
            Vec::new()
        };
        let (voters, learners) = self.membership();
        GroupStatus {
            shard: self.id,
            leader: self.leader_id(),
            is_leader: self.is_leader(),
            term: raft.term,
            commit: self.commit_index(),
            applied: self.map.applied_index(),
            last_index,
            keys: self.map.len(),
            expires: self.map.expires_len(),
            memory_bytes: self.map.memory_bytes(),
            follower_lag,
            voters,
            learners,
        }
    }

    /// One tick of raft's logical clock; leaders also renew their lease.
    pub fn tick(&mut self, now: Now) {
        self.node.tick();
        self.renew_lease(now);
        // A staged snapshot raft-rs did not install (this replica got
        // there from the log first) holds a copy of the shard: drop it.
        if self.staged.as_ref().is_some_and(|(meta, _)| meta.index <= self.map.applied_index()) {
            self.staged = None;
        }
    }

    /// Keeps `map`, loaded from the snapshot `meta` of a leader's
    /// MsgSnapshot about to be stepped, for [`Group::install_snapshot`] to
    /// swap in instead of decoding the same bytes again on this core.
    pub fn stage_snapshot_map(&mut self, meta: SnapshotMeta, map: ShardMap) {
        assert_eq!(meta.group, self.id, "a snapshot staged for its own shard");
        self.staged = Some((meta, map));
    }

    /// Delivers a peer's message.
    pub fn step(&mut self, message: Message) -> Result<(), String> {
        let last = self.node.raft.raft_log.last_index();
        if message.get_msg_type() == MessageType::MsgHeartbeat && message.commit > last {
            // A leader only sends a commit index this replica acknowledged
            // having: this log lost entries it had persisted (a replaced
            // data directory). raft-rs would panic; refuse the message.
            return Err(format!(
                "a heartbeat from {} commits up to {} but this log ends at {last}: entries acknowledged here were lost",
                message.from, message.commit
            ));
        }
        self.node.step(message).map_err(|e| e.to_string())
    }

    /// Starts an election at once (the preferred leader at startup).
    pub fn campaign(&mut self) -> Result<(), raft::Error> {
        self.node.campaign()
    }

    /// Proposes `command` stamped with the proposer's clock; `waiter` comes
    /// back with the outcome once the entry is applied. Refused (and
    /// `waiter` dropped) when this replica does not lead.
    pub fn propose(&mut self, command: &Command, waiter: T, now: Now) -> Result<u64, CoreError> {
        if !self.is_leader() {
            return Err(CoreError::NotLeader { leader: self.leader_id() });
        }
        let before = self.last_index();
        // Refused before it was appended (e.g. a leadership transfer is under
        // way): nothing happened, so another node may take it.
        self.node.propose(Vec::new(), self.encode(command, now)).map_err(|_| CoreError::NotLeader { leader: None })?;
        let index = self.last_index();
        assert_eq!(index, before + 1, "one proposal appends one entry");
        self.pending.insert(index, Pending { term: self.term(), waiter });
        Ok(index)
    }

    fn encode(&self, command: &Command, now: Now) -> Vec<u8> {
        match self.compress_min_bytes {
            0 => command.encode(now.wall_ms),
            min => command.encode_compressing(now.wall_ms, min),
        }
    }

    /// Hands leadership to the most caught-up voter, except those `lost`
    /// says this group still counts as a lost data directory. Returns
    /// whether a transfer started.
    pub fn transfer_leadership(&mut self, lost: impl Fn(u64) -> bool) -> bool {
        let me = self.node_id();
        if !self.is_leader() {
            return false;
        }
        // Learners cannot lead (raft-rs ignores a transfer to one).
        let voters = self.storage.conf_state().voters;
        let target = self
            .node
            .raft
            .prs()
            .iter()
            .filter(|(id, _)| **id != me && voters.contains(id) && !lost(**id))
            .max_by_key(|(_, pr)| pr.matched)
            .map(|(id, _)| *id);
        match target {
            Some(t) => {
                self.start_transfer(t);
                true
            }
            None => false,
        }
    }

    /// Hands leadership back to `preferred` if it is fully caught up (this
    /// is how leaders return to their preferred replicas after a failover).
    pub fn yield_to(&mut self, preferred: u64) -> bool {
        if !self.is_leader() || preferred == self.node_id() || !self.has_voter(preferred) {
            return false;
        }
        let last = self.last_index();
        let caught_up = self.node.raft.prs().get(preferred).is_some_and(|pr| pr.matched == last && pr.recent_active);
        if caught_up {
            self.start_transfer(preferred);
        }
        caught_up
    }

    fn start_transfer(&mut self, to: u64) {
        // The target may be elected at once, without waiting out the
        // followers' election timeouts: the lease cannot hold past this.
        self.reads.end_lease_for_term(self.term());
        self.node.transfer_leader(to);
    }

    /// Tells raft whether a snapshot message reached the transport.
    pub fn report_snapshot(&mut self, to: u64, sent: bool) {
        let status = if sent { raft::SnapshotStatus::Finish } else { raft::SnapshotStatus::Failure };
        self.node.report_snapshot(to, status);
    }

    /// Whether raft-rs asked for a snapshot to send a lagging follower.
    pub fn take_snapshot_wanted(&self) -> bool {
        self.storage.take_snapshot_wanted()
    }

    /// Offers raft-rs a snapshot for lagging followers.
    pub fn set_prepared(&self, snapshot: raft::eraftpb::Snapshot) {
        self.storage.set_prepared(snapshot);
    }

    pub fn drop_prepared(&self) {
        self.storage.drop_prepared();
    }

    /// A point-in-time copy of the shard at its applied index, with the
    /// membership to send along. The copy is of reference-counted values.
    pub fn snapshot_source(&self) -> (SnapshotMeta, Vec<(Bytes, Stored)>, ConfState) {
        let index = self.map.applied_index();
        let term = self.storage.term_of(index).expect("the applied index is in the log window");
        let conf_state = self.storage.conf_state();
        let meta = SnapshotMeta { group: self.id, index, term, conf_state: records::conf_state_bytes(&conf_state) };
        (meta, self.map.pairs(), conf_state)
    }

    /// A snapshot installed from the leader is durable: raft may count it
    /// applied, and WAL segments it covers may go.
    pub fn snapshot_persisted(&mut self, index: u64) {
        self.node.advance_apply_to(index);
        self.snapshot_index = self.snapshot_index.max(index);
    }

    /// The Ready numbered `number` is durable.
    pub fn on_persist_ready(&mut self, number: u64) {
        self.node.on_persist_ready(number);
    }

    /// Answers every waiting request with `err` (shutdown, poisoned WAL).
    pub fn fail_pending(&mut self, err: CoreError, answers: &mut Vec<(T, Answer)>) {
        for (_, p) in std::mem::take(&mut self.pending) {
            answers.push((p.waiter, Answer::Write(Err(err.clone()))));
        }
        self.reads.fail_all(&err, answers);
    }

    /// Breaks a guarantee on purpose (the simulator's seeded bugs).
    pub fn set_bugs(&mut self, bugs: Bugs) {
        self.bugs = bugs;
    }
}
