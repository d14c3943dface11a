//! Rebuilding a core's state machine from what its disk holds, sans IO:
//! each shard's newest snapshot, then every WAL record in order, then the
//! Raft nodes. The real node feeds it from files (`open.rs`), the simulator
//! from its simulated disk.
//!
//! Invariants: a record or snapshot of a shard this core does not own is a
//! layout mismatch (refused); entries a snapshot covers are skipped; a gap
//! in a group's entries is refused (the WAL lost something).

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use kv_engine::snapshot::{SnapshotError, SnapshotMeta};
use kv_engine::wal::{Record, WalError};
use kv_engine::{ShardMap, Stored};
use raft::eraftpb::{ConfState, HardState};
use raft::RawNode;

use crate::group::{Group, GroupConfig};
use crate::logger::raft_logger;
use crate::machine::{Machine, MachineConfig};
use crate::records;
use crate::storage::GroupStorage;
use crate::{ELECTION_TICKS, HEARTBEAT_TICKS, LEASE_TICKS};

/// Largest batch of entries in one AppendEntries message.
const MAX_SIZE_PER_MSG_BYTES: u64 = 1024 * 1024;
/// AppendEntries in flight per follower.
const MAX_INFLIGHT_MSGS: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Wal(#[from] WalError),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error("{path}: {why}")]
    Dir { path: String, why: String },
    #[error("{0}")]
    Layout(String),
    #[error("raft refused group {group}: {why}")]
    Raft { group: u32, why: String },
}

/// What a restored machine is and how its groups run.
#[derive(Debug, Clone, Copy)]
pub struct RestoreConfig {
    pub machine: MachineConfig,
    /// Interval of raft's logical clock: leases are counted in it.
    pub tick: Duration,
    /// Applied entries each group keeps in memory for lagging followers.
    pub log_retain_entries: u64,
    /// Values of puts at least this long are proposed compressed (0: never).
    pub compress_min_bytes: usize,
}

/// What is known about a shard before its Raft node exists.
struct Restored {
    map: ShardMap,
    storage: GroupStorage,
}

/// Collects a core's snapshots and WAL records, then builds its machine.
pub struct Restorer {
    core: u32,
    restored: BTreeMap<u32, Restored>,
}

impl Restorer {
    /// A restorer for a core that owns `shards`.
    pub fn new(core: u32, shards: impl IntoIterator<Item = u32>) -> Restorer {
        let empty = || Restored { map: ShardMap::new(), storage: GroupStorage::new(0, 0, ConfState::default()) };
        Restorer { core, restored: shards.into_iter().map(|s| (s, empty())).collect() }
    }

    /// Loads a shard's newest snapshot (`origin` names it in errors).
    pub fn load_snapshot(
        &mut self,
        meta: SnapshotMeta,
        entries: Vec<(Bytes, Stored)>,
        origin: &std::path::Path,
    ) -> Result<(), StartError> {
        let (core, group) = (self.core, meta.group);
        let Some(r) = self.restored.get_mut(&group) else {
            return Err(StartError::Layout(format!(
                "{} holds a snapshot of shard {group}, which core {core} does not own: the data directory's layout does not match",
                origin.display()
            )));
        };
        let conf_state = records::conf_state_from_bytes(&meta.conf_state)
            .map_err(|why| SnapshotError::Corrupt { path: origin.to_path_buf(), reason: why })?;
        r.map.restore(meta.index, entries);
        r.storage = GroupStorage::new(meta.index, meta.term, conf_state);
        tracing::info!(group, index = meta.index, keys = r.map.len(), "snapshot loaded");
        Ok(())
    }

    /// Applies one WAL record to the shard it belongs to.
    pub fn replay(&mut self, record: Record) -> Result<(), String> {
        let group = record.group();
        let r = self
            .restored
            .get_mut(&group)
            .ok_or_else(|| format!("record of shard {group}, which this core does not own: layout mismatch"))?;
        let snapshot_index = r.map.applied_index();
        match record {
            Record::Entry { term, index, entry_type, data, .. } => {
                let entry = records::entry_from_record(term, index, entry_type, data)?;
                r.storage.replay(group, entry).map_err(|e| e.to_string())
            }
            Record::HardState { term, vote, commit, .. } => {
                r.storage.set_hard_state(HardState { term, vote, commit, ..HardState::default() });
                Ok(())
            }
            Record::ConfState { index, data, .. } => {
                // Membership as of the snapshot: changes after it are in the
                // log and are applied again when raft re-applies them.
                if index <= snapshot_index {
                    r.storage.set_conf_state(records::conf_state_from_bytes(&data)?);
                }
                Ok(())
            }
        }
    }

    /// Builds the Raft nodes and the machine. `replicas_of(shard)` lists a
    /// shard's wanted replicas, preferred leader first (a new shard's first
    /// voters). The preferred leader stands for election at once, unless
    /// the node `joined` a running cluster: its groups start from the same
    /// first configuration as everyone's, and learn the rest from their
    /// leaders' logs or snapshots once readmitted.
    pub fn finish<T>(
        self,
        config: RestoreConfig,
        replicas_of: impl Fn(u32) -> Vec<u64>,
        joined: bool,
    ) -> Result<Machine<T>, StartError> {
        let mut groups = BTreeMap::new();
        let mut bootstrap = Vec::new();
        for (id, r) in self.restored {
            groups.insert(id, build_group(&config, id, r, replicas_of(id), &mut bootstrap, joined)?);
        }
        Ok(Machine::new(config.machine, groups, bootstrap))
    }
}

fn build_group<T>(
    config: &RestoreConfig,
    id: u32,
    r: Restored,
    replicas: Vec<u64>,
    bootstrap: &mut Vec<Record>,
    joined: bool,
) -> Result<Group<T>, StartError> {
    let node_id = config.machine.node_id;
    let Restored { map, storage } = r;
    if storage.conf_state().voters.is_empty() {
        storage.set_conf_state(first_conf_state(&replicas, node_id, joined));
        bootstrap.push(records::conf_state_record(id, 0, &storage.conf_state()));
    }
    raise_hard_state_to_snapshot(&storage, map.applied_index());
    let raft_config = raft::Config {
        id: node_id,
        applied: map.applied_index(),
        election_tick: ELECTION_TICKS,
        heartbeat_tick: HEARTBEAT_TICKS,
        max_size_per_msg: MAX_SIZE_PER_MSG_BYTES,
        max_inflight_msgs: MAX_INFLIGHT_MSGS,
        check_quorum: true,
        pre_vote: true,
        ..raft::Config::default()
    };
    let raft_err = |e: raft::Error| StartError::Raft { group: id, why: e.to_string() };
    raft_config.validate().map_err(raft_err)?;
    let node = RawNode::new(&raft_config, storage.clone(), &raft_logger(id)).map_err(raft_err)?;
    let group_config = GroupConfig {
        log_retain_entries: config.log_retain_entries,
        lease_ms: (config.tick * LEASE_TICKS as u32).as_millis() as u64,
        compress_min_bytes: config.compress_min_bytes,
    };
    let mut group = Group::new(id, node, storage.clone(), map, group_config);
    group.set_wanted(replicas.clone());
    // The preferred leader (first replica) stands at once instead of waiting
    // an election timeout; pre-vote keeps this from disturbing a leader
    // that is already in office.
    if !joined && replicas.first() == Some(&node_id) && storage.conf_state().voters.contains(&node_id) {
        group.campaign().map_err(raft_err)?;
    }
    Ok(group)
}

/// A new shard's first configuration: every replica starts the group with
/// the same voters (on a single node, just us), like a statically
/// bootstrapped etcd. A node that joined a running cluster (its directory
/// replaces a lost one) starts as a learner of that same configuration: it
/// applies the same log from index 1, but never counts itself a voter (it
/// neither stands for election nor votes for itself) until a leader has
/// removed its lost directory, added it back and promoted it.
fn first_conf_state(replicas: &[u64], node_id: u64, joined: bool) -> ConfState {
    let others: Vec<u64> = replicas.iter().copied().filter(|&n| n != node_id).collect();
    if joined && !others.is_empty() && others.len() < replicas.len() {
        ConfState { voters: others, learners: vec![node_id], ..ConfState::default() }
    } else {
        ConfState { voters: replicas.to_vec(), ..ConfState::default() }
    }
}

/// The snapshot may be newer than the last hard state that reached the WAL
/// (under `fsync never`/`interval` after a power loss): everything in it
/// was committed, in a term at least the snapshot's.
fn raise_hard_state_to_snapshot(storage: &GroupStorage, snapshot_index: u64) {
    let mut hs = storage.hard_state();
    let snapshot_term = storage.term_of(snapshot_index).expect("the snapshot point is the log's start");
    if hs.commit < snapshot_index || hs.term < snapshot_term {
        hs.commit = hs.commit.max(snapshot_index);
        if hs.term < snapshot_term {
            // A vote belongs to its term; it does not carry over.
            hs.term = snapshot_term;
            hs.vote = raft::INVALID_ID;
        }
        storage.set_hard_state(hs);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_joined_node_starts_as_a_learner_of_the_first_configuration() {
        let cs = |voters: &[u64], learners: &[u64]| ConfState {
            voters: voters.to_vec(),
            learners: learners.to_vec(),
            ..ConfState::default()
        };
        assert_eq!(first_conf_state(&[1, 2, 3], 3, false), cs(&[1, 2, 3], &[]));
        assert_eq!(first_conf_state(&[1, 2, 3], 3, true), cs(&[1, 2], &[3]));
        assert_eq!(first_conf_state(&[2, 3, 1], 2, true), cs(&[3, 1], &[2]), "the others keep their order");
        // Nothing to learn from: a sole replica stays its own voter.
        assert_eq!(first_conf_state(&[3], 3, true), cs(&[3], &[]));
    }
}
