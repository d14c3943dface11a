//! A simulated node: the real state machine of each of its cores over a
//! simulated disk, with the node's own clocks. This file is the simulator's
//! counterpart of the glommio glue (`kv_replication::Core`): it feeds the
//! machine and carries out its outputs, with simulated time and IO.
//!
//! The WAL is the engine's own logic (`WalState`): its flush plans are
//! carried out on the simulated disk, and recovery scans the simulated
//! files with the engine's recovery code, so torn tails, rotation,
//! checkpoints and compaction are those of a real node.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use kv_engine::snapshot::{self, SnapshotMeta};
use kv_engine::wal::recovery::{self, Repair};
use kv_engine::wal::state::{FlushPlan, WalState};
use kv_engine::wal::{segment, FlushStats, FsyncPolicy, WalError};
use kv_replication::machine::{Machine, MachineConfig, SnapshotSource};
use kv_replication::restore::{RestoreConfig, Restorer};
use kv_replication::{Bugs, Layout, Now, LOG_RETAIN_ENTRIES_DEFAULT, TICK_INTERVAL_DEFAULT};

use super::disk::SimFs;
use super::rng::Rng;
use super::scenario::ClockSpec;

/// Who waits for an answer: (client, operation id).
pub type Waiter = (usize, u64);

/// WAL segments in the simulation: the smallest the WAL allows, so that
/// rotation and compaction happen within a run.
const SIM_SEGMENT_BYTES: u64 = segment::SEGMENT_BYTES_MIN;
/// The WAL batch cap of even-numbered nodes: a few records, so that
/// bursts split across flushes.
const SIM_WAL_BATCH_BYTES_MAX: u64 = 2048;
/// Applied entries each group keeps for lagging followers: small, so that
/// followers that fall behind need snapshots.
const SIM_LOG_RETAIN_ENTRIES: u64 = 64;
const _: () = assert!(SIM_LOG_RETAIN_ENTRIES < LOG_RETAIN_ENTRIES_DEFAULT);
/// Values at least this long are proposed compressed: the workload's long
/// values are, so compressed entries go through logs, snapshots and restarts.
const SIM_COMPRESS_MIN_BYTES: usize = 128;
/// The true-time origin of every node's wall clock (2026-01-01).
const WALL_EPOCH_MS: u64 = 1_767_225_600_000;

/// One core of a running node.
pub struct SimCore {
    pub machine: Machine<Waiter>,
    pub wal: WalState,
    /// The flush whose fdatasync is under way.
    pub flushing: Option<FlushPlan>,
    pub snapshotting: bool,
    pub drive_scheduled: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeState {
    Up,
    Down,
    Paused,
}

pub struct SimNode {
    pub id: u64,
    pub layout: Layout,
    pub state: NodeState,
    /// Bumped at every crash: events of an earlier life are ignored.
    pub incarnation: u64,
    pub cores: Vec<SimCore>,
    pub fs: SimFs,
    pub clock: ClockSpec,
    /// fdatasyncs fail now and then, and some are slow.
    pub disk_faults: bool,
    /// Leader changes counted by machines that crashed since.
    pub leader_changes_before_restarts: u64,
    /// Snapshots installed from a map loaded ahead, by machines that
    /// crashed since.
    pub loaded_ahead_before_restarts: u64,
    /// The node crashes while its next WAL flush is in flight.
    pub crash_armed: bool,
    /// Leaders' snapshots being loaded, per (core, group) (`transfer.rs`).
    pub loading: BTreeMap<(u32, u32), u32>,
    /// Over its memory limit: evicting under this policy.
    pub evicting: Option<kv_engine::evict::Policy>,
    /// Its data directory's incarnation: a new number for a new disk.
    pub directory: u64,
    /// The directory incarnation it first met for each peer (kept on its
    /// disk: durable, and lost with it).
    pub known: BTreeMap<u64, u64>,
}

impl SimNode {
    pub fn new(id: u64, layout: Layout, clock: ClockSpec) -> SimNode {
        SimNode {
            id,
            layout,
            state: NodeState::Down,
            incarnation: 0,
            cores: Vec::new(),
            fs: SimFs::default(),
            clock,
            disk_faults: false,
            leader_changes_before_restarts: 0,
            loaded_ahead_before_restarts: 0,
            crash_armed: false,
            loading: BTreeMap::new(),
            evicting: None,
            directory: 1,
            known: BTreeMap::new(),
        }
    }

    /// The node's clocks at true time `t_us`.
    pub fn now(&self, t_us: u64) -> Now {
        let local_ms = (t_us as f64 * self.clock.rate / 1000.0) as u64;
        let wall_ms = (WALL_EPOCH_MS + local_ms) as i64 + self.clock.wall_offset_ms;
        Now { monotonic_ms: local_ms, wall_ms: wall_ms as u64 }
    }

    /// The true time between two of the node's ticks.
    pub fn tick_interval_us(&self) -> u64 {
        (TICK_INTERVAL_DEFAULT.as_micros() as f64 / self.clock.rate) as u64
    }

    pub fn core_dir(&self, core: u32) -> PathBuf {
        PathBuf::from(format!("node-{}/core-{core}", self.id))
    }

    /// Snapshots the running machines installed from maps loaded ahead.
    pub fn loaded_ahead(&self) -> u64 {
        self.cores.iter().map(|c| c.machine.stats().snapshots_loaded_ahead).sum()
    }

    /// Leader changes the running machines counted.
    pub fn leader_changes(&self) -> u64 {
        self.cores.iter().map(|c| c.machine.stats().leader_changes).sum()
    }

    /// Starts the node from its disk, as `Core::open` does. Returns the
    /// number of repairs recovery made to the WAL.
    pub fn start(&mut self, bugs: Bugs) -> Result<u64, String> {
        let mut cores = Vec::new();
        let mut repairs = 0;
        for core in 0..self.layout.cores {
            let dir = self.core_dir(core);
            let (c, r) =
                recover_core(&mut self.fs, &self.layout, core, &dir).map_err(|e| format!("core {core}: {e}"))?;
            cores.push(c);
            repairs += r;
        }
        for c in &mut cores {
            c.machine.set_bugs(bugs);
        }
        self.cores = cores;
        self.state = NodeState::Up;
        Ok(repairs)
    }

    /// Power loss: the machines are gone, the disk keeps what it must.
    /// Returns how many commit-only hard states were waiting for a flush
    /// (lost with the machines: they were never written).
    pub fn crash(&mut self, rng: &mut Rng) -> u64 {
        let waiting = self.cores.iter().map(|c| c.machine.commit_records_waiting() as u64).sum();
        self.leader_changes_before_restarts += self.leader_changes();
        self.loaded_ahead_before_restarts += self.loaded_ahead();
        self.crash_armed = false;
        self.loading.clear();
        self.cores.clear();
        self.fs.crash(rng);
        self.state = NodeState::Down;
        self.incarnation += 1;
        waiting
    }
}

impl SimNode {
    /// The disk dies: the node crashes and comes back (on `Restart`) on an
    /// empty one, as a node started with `kvd --join`.
    pub fn wipe(&mut self, rng: &mut Rng) -> u64 {
        let lost = self.crash(rng);
        self.fs = SimFs::default();
        self.known.clear();
        self.directory += 1;
        self.layout = self.layout.clone().joining();
        lost
    }
}

fn wal_dir(core_dir: &Path) -> PathBuf {
    core_dir.join("wal")
}

fn snap_dir(core_dir: &Path) -> PathBuf {
    core_dir.join("snap")
}

/// Rebuilds one core from the simulated disk with the real restore path:
/// newest snapshot per shard, WAL scan (repairs applied to the disk), then
/// the Raft nodes.
fn recover_core(fs: &mut SimFs, layout: &Layout, core: u32, dir: &Path) -> Result<(SimCore, u64), String> {
    let mut restorer = Restorer::new(core, layout.shards_of_core(core));
    let (wal_dir, snap_dir) = (wal_dir(dir), snap_dir(dir));
    let mut newest = std::collections::BTreeMap::new();
    for path in fs.list(&snap_dir) {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if let Some((group, index)) = snapshot::parse_file_name(name) {
            let e = newest.entry(group).or_insert((index, path.clone()));
            if index > e.0 {
                *e = (index, path.clone());
            }
        }
    }
    for (_, path) in newest.values() {
        let data = fs.read(path).expect("listed file exists");
        let (meta, entries) = snapshot::decode(data, path).map_err(|e| e.to_string())?;
        restorer.load_snapshot(meta, entries, path).map_err(|e| e.to_string())?;
    }
    let segments: Vec<(u64, Vec<u8>)> = fs
        .list(&wal_dir)
        .into_iter()
        .filter_map(|p| {
            let seq = segment::parse_name(p.file_name()?.to_str()?)?;
            Some((seq, fs.read(&p).expect("listed").to_vec()))
        })
        .collect();
    let (recovered, repairs) =
        recovery::scan(core, &wal_dir, segments, |record| restorer.replay(record)).map_err(|e| e.to_string())?;
    let repaired = repairs.len() as u64;
    for repair in repairs {
        apply_repair(fs, &wal_dir, repair);
    }
    let wal = WalState::new(core, SIM_SEGMENT_BYTES, FsyncPolicy::Always, wal_dir, recovered);
    // Half the nodes cap their WAL batches small, so that both a capped
    // flush (readies left staged behind it) and an unbounded one run.
    let wal_batch_bytes_max = if layout.node_id.is_multiple_of(2) { SIM_WAL_BATCH_BYTES_MAX } else { 0 };
    let machine_config = MachineConfig { node_id: layout.node_id, core, durable: true, wal_batch_bytes_max };
    let config = RestoreConfig {
        machine: machine_config,
        tick: TICK_INTERVAL_DEFAULT,
        log_retain_entries: SIM_LOG_RETAIN_ENTRIES,
        compress_min_bytes: SIM_COMPRESS_MIN_BYTES,
    };
    let machine =
        restorer.finish(config, |shard| layout.replicas_of(shard), layout.joined).map_err(|e| e.to_string())?;
    let core = SimCore { machine, wal, flushing: None, snapshotting: false, drive_scheduled: false };
    Ok((core, repaired))
}

fn apply_repair(fs: &mut SimFs, wal_dir: &Path, repair: Repair) {
    match repair {
        Repair::RemoveSegment { path, .. } => {
            fs.remove(&path);
            fs.sync_dir(wal_dir);
        }
        Repair::ZeroTail { path, from, to, .. } => {
            fs.write_at(&path, from as usize, &vec![0u8; (to - from) as usize]);
            fs.fdatasync(&path);
        }
        Repair::RestoreLength { path, capacity, .. } => {
            fs.set_len(&path, capacity as usize);
            fs.fdatasync(&path);
        }
    }
}

impl SimCore {
    /// Starts a flush: snapshots installed from a leader are written first
    /// (durably), the records are staged and the WAL's plan is carried out
    /// up to its fdatasync, which [`SimCore::finish_flush`] completes.
    /// Returns an error to report at once (a poisoned WAL).
    pub fn start_flush(
        &mut self,
        fs: &mut SimFs,
        dir: &Path,
        job: kv_replication::machine::FlushJob,
    ) -> Result<(), String> {
        for (meta, bytes) in &job.installs {
            put_snapshot(fs, dir, meta, bytes.to_vec());
        }
        for record in &job.records {
            self.wal.append(record);
        }
        let plan = match self.wal.begin_flush() {
            Ok(Some(plan)) => plan,
            Ok(None) => {
                self.flushing = None;
                return Ok(());
            }
            Err(e) => return Err(e.to_string()),
        };
        let wal_dir = wal_dir(dir);
        if let Some(rotation) = &plan.rotate {
            if let Some(old) = rotation.sync_old {
                fs.fdatasync(&segment::path(&wal_dir, old));
            }
            fs.create(&rotation.path);
            fs.set_len(&rotation.path, rotation.capacity as usize);
            fs.sync_dir(&wal_dir);
        }
        let path = segment::path(&wal_dir, plan.write_seq);
        fs.write_at(&path, plan.write_offset as usize, &plan.write_bytes);
        self.flushing = Some(plan);
        Ok(())
    }

    /// The fdatasync of the flush in flight returns (`failed`: with an
    /// error). Returns what to report to the machine.
    pub fn finish_flush(&mut self, fs: &mut SimFs, dir: &Path, failed: bool) -> Result<FlushStats, String> {
        let Some(plan) = self.flushing.take() else { return Ok(FlushStats::default()) };
        let path = segment::path(&wal_dir(dir), plan.write_seq);
        let result = if failed {
            fs.failed_sync(&path);
            Err(WalError::Io {
                path: path.clone(),
                op: "fdatasync segment",
                source: std::io::Error::other("simulated EIO"),
            })
        } else {
            if plan.sync {
                fs.fdatasync(&path);
            }
            Ok(())
        };
        let stats = FlushStats {
            records_bytes: plan.records_bytes,
            written_bytes: plan.write_bytes.len() as u64,
            synced: plan.sync,
            rotated: plan.rotate.is_some(),
            ..FlushStats::default()
        };
        self.wal.finish_flush(plan, result).map_err(|e| e.to_string())?;
        Ok(stats)
    }

    /// Deletes the WAL segments every shard's snapshot covers.
    /// Returns the number of segments deleted.
    pub fn compact(&mut self, fs: &mut SimFs, dir: &Path) -> u64 {
        let machine = &self.machine;
        let doomed = self.wal.take_compactable(|g| machine.snapshot_index(g));
        for segment in &doomed {
            // IMPORTANT, as in `Wal::compact`: one directory fsync per
            // removal, so a crash never keeps an older segment without a
            // younger one.
            fs.remove(&segment.path);
            fs.sync_dir(&wal_dir(dir));
        }
        doomed.len() as u64
    }

    /// Encodes periodic snapshots of every shard that moved (written by the
    /// caller after a delay, with [`put_snapshot`]).
    pub fn take_snapshots(&mut self) -> Vec<(SnapshotMeta, Vec<u8>)> {
        self.snapshotting = true;
        self.machine
            .take_snapshots()
            .into_iter()
            .map(|SnapshotSource { meta, entries, .. }| {
                let bytes = snapshot::encode_blocking(&meta, &entries);
                (meta, bytes)
            })
            .collect()
    }
}

/// Writes snapshot files durably and removes older ones, as
/// `snapshot::write` + `remove_older` do.
pub fn put_snapshot(fs: &mut SimFs, dir: &Path, meta: &SnapshotMeta, bytes: Vec<u8>) {
    let snap_dir = snap_dir(dir);
    fs.put_durable(&snap_dir.join(snapshot::file_name(meta.group, meta.index)), bytes);
    for path in fs.list(&snap_dir) {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if let Some((group, index)) = snapshot::parse_file_name(name) {
            if group == meta.group && index < meta.index {
                fs.remove(&path);
            }
        }
    }
    fs.sync_dir(&snap_dir);
}
