//! Starting a core: restore each shard from its newest snapshot, replay the
//! WAL into the groups' log windows, build the Raft nodes, bootstrap groups
//! that are new, and start the driver.

use std::collections::BTreeMap;
use std::rc::Rc;

use kv_engine::snapshot::{self, SnapshotError};
use kv_engine::wal::{self, Record, Wal, WalConfig, WalError};
use kv_engine::ShardMap;
use raft::eraftpb::{ConfState, HardState};
use raft::RawNode;

use crate::core::Core;
use crate::group::{self, Group};
use crate::logger::raft_logger;
use crate::storage::GroupStorage;
use crate::transport::Transport;
use crate::{CoreConfig, ELECTION_TICKS, HEARTBEAT_TICKS};

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

/// What is known about a shard before its Raft node exists.
struct Restored {
    map: ShardMap,
    storage: GroupStorage,
}

impl Core {
    /// Opens (or creates) the core's data and starts its driver.
    pub async fn open(config: CoreConfig, transport: Box<dyn Transport>) -> Result<Core, StartError> {
        let shards: Vec<u32> = config.layout.shards_of_core(config.core).collect();
        let mut restored: BTreeMap<u32, Restored> = shards
            .iter()
            .map(|&s| (s, Restored { map: ShardMap::new(), storage: GroupStorage::new(0, 0, ConfState::default()) }))
            .collect();
        let mut wal = None;
        if let Some(p) = &config.persistence {
            let (wal_dir, snap_dir) = (p.dir.join("wal"), p.dir.join("snap"));
            for dir in [&p.dir, &wal_dir, &snap_dir] {
                kv_engine::fsutil::create_dir_durable(dir)
                    .map_err(|e| StartError::Dir { path: dir.display().to_string(), why: e.to_string() })?;
            }
            restore_snapshots(&snap_dir, config.core, &mut restored)?;
            let recovered = wal::recover(&wal_dir, config.core, |record| replay(&mut restored, record))?;
            tracing::info!(
                core = config.core,
                records = recovered.records,
                segments = recovered.segments.len(),
                "WAL replayed"
            );
            let wal_config =
                WalConfig { dir: wal_dir, core: config.core, segment_bytes: p.segment_bytes, fsync: p.fsync };
            wal = Some(Rc::new(Wal::open(wal_config, recovered).await?));
        }
        let mut groups = BTreeMap::new();
        for (id, r) in restored {
            groups.insert(id, build_group(&config, id, r, wal.as_deref())?);
        }
        Ok(Core::start(config, groups, wal, transport))
    }
}

fn restore_snapshots(
    dir: &std::path::Path,
    core: u32,
    restored: &mut BTreeMap<u32, Restored>,
) -> Result<(), StartError> {
    for (group, files) in snapshot::list(dir)? {
        let Some(r) = restored.get_mut(&group) else {
            return Err(StartError::Layout(format!(
                "{} holds a snapshot of shard {group}, which core {core} does not own: the data directory's layout does not match",
                dir.display()
            )));
        };
        let (index, path) = files.last().expect("listed groups have files");
        let (meta, entries) = snapshot::read(path)?;
        if meta.group != group || meta.index != *index {
            let reason =
                format!("file name says shard {group} at {index}, content says shard {} at {}", meta.group, meta.index);
            return Err(SnapshotError::Corrupt { path: path.clone(), reason }.into());
        }
        let conf_state = group::conf_state_from_bytes(&meta.conf_state)
            .map_err(|why| SnapshotError::Corrupt { path: path.clone(), reason: why })?;
        r.map.restore(meta.index, entries);
        r.storage = GroupStorage::new(meta.index, meta.term, conf_state);
        tracing::info!(group, index = meta.index, keys = r.map.len(), "snapshot loaded");
    }
    Ok(())
}

/// Applies one WAL record to the shard it belongs to.
fn replay(restored: &mut BTreeMap<u32, Restored>, record: Record) -> Result<(), String> {
    let group = record.group();
    let r = restored
        .get_mut(&group)
        .ok_or_else(|| format!("record of shard {group}, which this core does not own: layout mismatch"))?;
    let snapshot_index = r.map.applied_index();
    match record {
        Record::Entry { term, index, entry_type, data, .. } => {
            let entry = group::entry_from_record(term, index, entry_type, data)?;
            r.storage.replay(group, entry).map_err(|e| e.to_string())
        }
        Record::HardState { term, vote, commit, .. } => {
            r.storage.set_hard_state(HardState { term, vote, commit, ..HardState::default() });
            Ok(())
        }
        Record::ConfState { index, data, .. } => {
            // Membership as of the snapshot: changes after it are in the log
            // and are applied again when raft re-applies those entries.
            if index <= snapshot_index {
                r.storage.set_conf_state(group::conf_state_from_bytes(&data)?);
            }
            Ok(())
        }
    }
}

fn build_group(config: &CoreConfig, id: u32, r: Restored, wal: Option<&Wal>) -> Result<Group, StartError> {
    let node_id = config.layout.node_id;
    let Restored { map, storage } = r;
    let replicas = config.layout.replicas_of(id);
    if storage.conf_state().voters.is_empty() {
        // A new shard: every replica starts the group with the same voters
        // (on a single node, just us), like a statically bootstrapped etcd.
        let cs = ConfState { voters: replicas.clone(), ..ConfState::default() };
        storage.set_conf_state(cs.clone());
        if let Some(wal) = wal {
            wal.append(&group::conf_state_record(id, 0, &cs));
        }
    }
    let mut hs = storage.hard_state();
    // The snapshot may be newer than the last hard state that reached the
    // WAL (under `fsync never`/`interval` after a power loss): everything in
    // it was committed, in a term at least the snapshot's.
    let snapshot_term = storage.term_of(map.applied_index()).expect("the snapshot point is the log's start");
    if hs.commit < map.applied_index() || hs.term < snapshot_term {
        hs.commit = hs.commit.max(map.applied_index());
        if hs.term < snapshot_term {
            // A vote belongs to its term; it does not carry over.
            hs.term = snapshot_term;
            hs.vote = raft::INVALID_ID;
        }
        storage.set_hard_state(hs);
    }
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
    let mut node = RawNode::new(&raft_config, storage.clone(), &raft_logger(id)).map_err(raft_err)?;
    // The preferred leader (first replica) stands at once instead of waiting
    // an election timeout; pre-vote keeps this from disturbing a leader
    // that is already in office.
    if replicas.first() == Some(&node_id) && storage.conf_state().voters.contains(&node_id) {
        node.campaign().map_err(raft_err)?;
    }
    let snapshot_index = map.applied_index();
    Ok(Group::new(id, node, storage, map, snapshot_index, config.log_retain_entries.max(1)))
}
