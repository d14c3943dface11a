//! The per-core write-ahead log: the Raft log store of every group on a core.
//!
//! Records (see [`record`]) are staged in memory by [`Wal::append`] and
//! written by [`Wal::flush`]: one io_uring O_DIRECT write of everything
//! staged, then one `fdatasync` under [`FsyncPolicy::Always`]. Only one flush
//! runs at a time; records appended while it is in flight go out together in
//! the next one — group commit falls out of that.
//!
//! Durability protocol of a flush (what a crash at each step leaves):
//! 1. rotation only: fdatasync the old segment (whatever the policy), rename
//!    the zeroed spare to the new segment's name (or, without one ready,
//!    create and preallocate it; see [`spare`]), fsync the directory — a
//!    crash leaves an unwritten segment, which recovery removes;
//! 2. write — a crash leaves a torn tail, which recovery truncates;
//! 3. fdatasync (policy `always`) — after it returns, the batch is durable
//!    and its records may be acknowledged.
//!
//! A failed write or fdatasync *poisons* the WAL: every later flush fails
//! with [`WalError::Poisoned`]. It is never retried, because after a failed
//! fsync the kernel may have dropped the dirty pages and a retry that
//! "succeeds" would lie.
//!
//! Each new segment starts with a checkpoint: the latest hard state and conf
//! state of every group as of the previous batch. Older segments therefore
//! never hold the only copy of a group's metadata, and a segment can be
//! deleted as soon as every group has a snapshot covering its entries.
//!
//! Everything the WAL decides — staging, batch numbers, the checkpoint,
//! rotation, the exact bytes of each write, poisoning, what compaction may
//! delete — lives in the sans-IO [`WalState`] ([`state`]); [`Wal`] only runs
//! its [`FlushPlan`]s against files with glommio, and a simulator can run
//! the same plans against a simulated disk. Recovery is split the same way:
//! [`scan`] judges segment bytes and lists the [`Repair`]s, [`recover`]
//! reads the files and applies them.

pub mod record;
pub mod recovery;
pub mod segment;
mod spare;
pub mod state;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

use glommio::io::{Directory, DmaFile, OpenOptions};

pub use record::Record;
pub use recovery::{recover, scan, Recovered, Repair, SegmentMeta, Tail};
pub use state::{FlushPlan, Rotation, WalState};

/// When the WAL calls fdatasync.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// After every flush, before anything in it is acknowledged.
    Always,
    /// Every interval; writes are acknowledged once written.
    Interval(Duration),
    /// Never per flush: records are written, and synced only when a segment
    /// fills up and at clean shutdown.
    Never,
}

impl FsyncPolicy {
    fn syncs_each_flush(self) -> bool {
        self == FsyncPolicy::Always
    }
}

#[derive(Debug, Clone)]
pub struct WalConfig {
    /// `<data-dir>/core-<n>/wal`.
    pub dir: PathBuf,
    pub core: u32,
    pub segment_bytes: u64,
    pub fsync: FsyncPolicy,
}

#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("{op} {}: {source}", path.display())]
    Io { path: PathBuf, op: &'static str, source: std::io::Error },
    #[error("WAL corrupt in {} at offset {offset}: {reason}. {hint}", path.display())]
    Corrupt { path: PathBuf, offset: u64, reason: String, hint: &'static str },
    #[error("WAL is poisoned and refuses writes: {0}")]
    Poisoned(String),
}

impl WalError {
    pub(crate) fn io(path: &Path, op: &'static str, source: std::io::Error) -> WalError {
        WalError::Io { path: path.to_path_buf(), op, source }
    }
}

/// What one flush did, for metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FlushStats {
    pub records_bytes: u64,
    pub written_bytes: u64,
    pub write_micros: u64,
    pub sync_micros: u64,
    /// Whether the flush ended with an fdatasync (policy `always`).
    pub synced: bool,
    pub rotated: bool,
}

/// One core's WAL. Not `Send`: it lives on its core's executor.
///
/// All decisions are [`WalState`]'s; this type runs its plans against
/// segment files with glommio.
pub struct Wal {
    config: WalConfig,
    dir: Directory,
    state: RefCell<WalState>,
    /// Open segment files: the current segment's, and during a rotation the
    /// new one's too. A file nothing writes to any more is dropped (glommio
    /// closes it) once the flush that rotated away from it is recorded.
    files: RefCell<BTreeMap<u64, Rc<DmaFile>>>,
    /// The next segment's file, zeroed ahead of the rotation that uses it.
    spare: spare::Spare,
}

impl Wal {
    /// Opens the WAL for writing where recovery left it. The directory must
    /// exist; `recovered` must come from [`recover`] on the same directory.
    pub async fn open(config: WalConfig, recovered: Recovered) -> Result<Wal, WalError> {
        let tail = recovered.tail.as_ref().map(|t| t.seq);
        let state = WalState::new(config.core, config.segment_bytes, config.fsync, config.dir.clone(), recovered);
        let dir = Directory::open(&config.dir)
            .await
            .map_err(|e| WalError::io(&config.dir, "open wal directory", e.into()))?;
        let mut files = BTreeMap::new();
        if let Some(seq) = tail {
            // The partial last block came with `recovered`: nothing to read.
            let path = segment::path(&config.dir, seq);
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .dma_open(&path)
                .await
                .map_err(|e| WalError::io(&path, "open segment", e.into()))?;
            files.insert(seq, Rc::new(file));
        }
        spare::remove_leftover(&config.dir).map_err(|e| WalError::io(&config.dir, "remove the spare segment", e))?;
        let spare = spare::Spare::default();
        Ok(Wal { config, dir, state: RefCell::new(state), files: RefCell::new(files), spare })
    }

    pub fn config(&self) -> &WalConfig {
        &self.config
    }

    /// Stages a record for the next flush.
    pub fn append(&self, record: &Record) {
        self.state.borrow_mut().append(record);
    }

    pub fn staged_bytes(&self) -> usize {
        self.state.borrow().staged_bytes()
    }

    pub fn is_flushing(&self) -> bool {
        self.state.borrow().is_flushing()
    }

    /// Why the WAL refuses writes, if it does.
    pub fn poisoned(&self) -> Option<String> {
        self.state.borrow().poisoned()
    }

    /// WAL bytes written since the last [`Wal::compact`].
    pub fn bytes_since_compaction(&self) -> u64 {
        self.state.borrow().bytes_since_compaction()
    }

    /// Whether the next segment's file is zeroed and waiting (see `spare`).
    pub fn spare_ready(&self) -> bool {
        self.spare.is_ready()
    }

    /// Number of segment files the WAL holds.
    pub fn segment_count(&self) -> usize {
        self.state.borrow().segment_count()
    }

    /// Writes everything staged so far, and syncs it under policy `always`.
    /// Callers MUST NOT run two flushes at once. When this returns `Ok`,
    /// every record appended before the call is durable under the policy.
    pub async fn flush(&self) -> Result<FlushStats, WalError> {
        let Some(plan) = self.state.borrow_mut().begin_flush()? else {
            return Ok(FlushStats::default());
        };
        let mut stats = FlushStats { records_bytes: plan.records_bytes, ..FlushStats::default() };
        let result = self.execute(&plan, &mut stats).await;
        let current = plan.write_seq;
        self.state.borrow_mut().finish_flush(plan, result)?;
        if self.state.borrow().half_full() {
            // Zeroed while the second half fills; a WAL that never gets
            // this far (a short-lived node) writes no spare.
            self.spare.prepare(&self.config.dir, self.config.segment_bytes);
        }
        // After a rotation the old segment is synced and never written again.
        self.files.borrow_mut().retain(|&seq, _| seq == current);
        Ok(stats)
    }

    /// Runs a plan's IO in the plan's order, stopping at the first failure.
    async fn execute(&self, plan: &FlushPlan, stats: &mut FlushStats) -> Result<(), WalError> {
        if let Some(rotation) = &plan.rotate {
            self.rotate(rotation).await?;
            stats.rotated = true;
        }
        let file = self.file(plan.write_seq);
        // Crash during the write: a torn tail, which recovery zeroes; none
        // of this batch has been acknowledged.
        self.write(&file, plan, stats).await?;
        if plan.sync {
            let started = std::time::Instant::now();
            fdatasync(&file, &self.config.dir).await?;
            stats.sync_micros = started.elapsed().as_micros() as u64;
            stats.synced = true;
            // Crash point: durable, but not yet reported to anyone.
            fail::fail_point!("wal::after_fdatasync");
        }
        Ok(())
    }

    /// Writes the plan's block-aligned bytes at its offset.
    async fn write(&self, file: &DmaFile, plan: &FlushPlan, stats: &mut FlushStats) -> Result<(), WalError> {
        let len = plan.write_bytes.len();
        let mut buf = file.alloc_dma_buffer(len);
        buf.as_bytes_mut().copy_from_slice(&plan.write_bytes);
        let started = std::time::Instant::now();
        fail::fail_point!("wal::write", |_| Err(injected(&self.config.dir, "write")));
        let written = file
            .write_at(buf, plan.write_offset)
            .await
            .map_err(|e| WalError::io(&self.config.dir, "write segment", e.into()))?;
        if written != len {
            return Err(WalError::io(
                &self.config.dir,
                "write segment",
                std::io::Error::other(format!("short write: {written} of {len} bytes")),
            ));
        }
        stats.write_micros = started.elapsed().as_micros() as u64;
        stats.written_bytes = len as u64;
        Ok(())
    }

    /// Starts the rotation's new segment (see [`Rotation`] for what a crash
    /// at each step leaves).
    async fn rotate(&self, rotation: &Rotation) -> Result<(), WalError> {
        if let Some(old) = rotation.sync_old {
            // Under every policy, `never` included: only the newest segment
            // may end in a torn write, or recovery could not tell a power
            // loss from damage.
            fdatasync(&self.file(old), &self.config.dir).await?;
        }
        let path = &rotation.path;
        let spare = self.spare.take(&self.config.dir, path, rotation.capacity).await;
        let file = match spare.map_err(|e| WalError::io(path, "rename the spare segment", e))? {
            Some(zeroed) => zeroed,
            None => Rc::new(self.create_segment(path, rotation.capacity).await?),
        };
        self.files.borrow_mut().insert(rotation.seq, file);
        // Crash from here to the write: an unwritten (all zero) segment,
        // which recovery removes.
        // IMPORTANT: fsync folder — the new segment must survive a crash once
        // records in it are acknowledged.
        self.dir.sync().await.map_err(|e| WalError::io(&self.config.dir, "fsync wal directory", e.into()))
    }

    /// Creates a segment file and preallocates it (the way without a spare).
    async fn create_segment(&self, path: &Path, capacity: u64) -> Result<DmaFile, WalError> {
        // Readable too: glommio probes the device with a read on open.
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .dma_open(path)
            .await
            .map_err(|e| WalError::io(path, "create segment", e.into()))?;
        file.pre_allocate(capacity, false).await.map_err(|e| WalError::io(path, "preallocate segment", e.into()))?;
        Ok(file)
    }

    /// The open file of segment `seq`, which must be the current segment or
    /// the one a rotation in flight created.
    fn file(&self, seq: u64) -> Rc<DmaFile> {
        self.files.borrow().get(&seq).cloned().unwrap_or_else(|| panic!("segment {seq} is not open"))
    }

    /// fdatasyncs the current segment now (policy `interval`, shutdown).
    pub async fn sync(&self) -> Result<(), WalError> {
        let file = match self.state.borrow().sync_target()? {
            Some(seq) => self.file(seq),
            None => return Ok(()),
        };
        if let Err(e) = fdatasync(&file, &self.config.dir).await {
            let why = e.to_string();
            self.state.borrow_mut().poison(why.clone());
            return Err(WalError::Poisoned(why));
        }
        Ok(())
    }

    /// Deletes the oldest segments whose entries every group has covered with
    /// a snapshot (`snapshot_index(group)`). Only a prefix is deleted, and
    /// never the newest segment, so a gap in segment numbers always means
    /// damage. Waits for a flush in flight to end first: a rotation may be
    /// creating a segment the bookkeeping does not know yet. Returns the
    /// count deleted.
    pub async fn compact(&self, snapshot_index: impl Fn(u32) -> u64) -> Result<usize, WalError> {
        let doomed = self.state.borrow_mut().take_compactable(&snapshot_index);
        for meta in &doomed {
            self.files.borrow_mut().remove(&meta.seq);
            glommio::io::remove(&meta.path).await.map_err(|e| WalError::io(&meta.path, "remove segment", e.into()))?;
            // IMPORTANT: fsync folder — after each unlink, oldest first: POSIX
            // does not order unlinks, and a crash that kept an older segment
            // but not a younger one would leave a gap, which recovery
            // rightly reports as damage. The newest segment, with every
            // group's checkpoint, is never among them.
            self.dir.sync().await.map_err(|e| WalError::io(&self.config.dir, "fsync wal directory", e.into()))?;
        }
        Ok(doomed.len())
    }
}

async fn fdatasync(file: &DmaFile, dir: &Path) -> Result<(), WalError> {
    fail::fail_point!("wal::fdatasync", |_| Err(injected(dir, "fdatasync")));
    // IMPORTANT: fsync — this is the durability point of a batch.
    file.fdatasync().await.map_err(|e| WalError::io(dir, "fdatasync segment", e.into()))
}

#[cfg_attr(not(feature = "failpoints"), allow(dead_code))]
fn injected(dir: &Path, op: &'static str) -> WalError {
    WalError::io(dir, op, std::io::Error::other("injected fault (failpoint)"))
}

#[cfg(test)]
mod sansio_tests;
#[cfg(test)]
pub(crate) mod tests;
