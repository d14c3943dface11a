//! The per-core write-ahead log: the Raft log store of every group on a core.
//!
//! Records (see [`record`]) are staged in memory by [`Wal::append`] and
//! written by [`Wal::flush`]: one io_uring O_DIRECT write of everything
//! staged, then one `fdatasync` under [`FsyncPolicy::Always`]. Only one flush
//! runs at a time; records appended while it is in flight go out together in
//! the next one — group commit falls out of that.
//!
//! Durability protocol of a flush (what a crash at each step leaves):
//! 1. rotation only: fdatasync the old segment (whatever the policy), create and preallocate the
//!    new one, fsync the directory — a crash leaves an unwritten segment,
//!    which recovery removes;
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

pub mod record;
pub mod recovery;
pub mod segment;

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

use glommio::io::{Directory, DmaFile, OpenOptions};

pub use record::Record;
pub use recovery::{recover, Recovered, SegmentMeta, Tail};
use segment::SEGMENT_HEADER_BYTES;

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

struct Segment {
    file: Rc<DmaFile>,
    seq: u64,
    /// Offset just past the last record written.
    end: u64,
    capacity: u64,
    /// Bytes from the last block boundary up to `end`: O_DIRECT writes whole
    /// blocks, so each flush rewrites this partial block with new records.
    tail: Vec<u8>,
}

struct Inner {
    current: Option<Segment>,
    segments: VecDeque<SegmentMeta>,
    staged: Vec<u8>,
    staged_max_index: HashMap<u32, u64>,
    /// Hard and conf state records staged in the current batch.
    staged_meta: Vec<Record>,
    /// Latest hard/conf state per (group, kind) as of the last taken batch.
    checkpoint: BTreeMap<(u32, u8), Record>,
    next_batch: u64,
    flushing: bool,
    poisoned: Option<String>,
    bytes_since_compaction: u64,
}

/// One core's WAL. Not `Send`: it lives on its core's executor.
pub struct Wal {
    config: WalConfig,
    dir: Directory,
    inner: RefCell<Inner>,
}

/// A batch taken out of the staging buffer, written by `Wal::run_flush`.
struct FlushJob {
    records: Vec<u8>,
    checkpoint: Vec<u8>,
    max_index: HashMap<u32, u64>,
}

impl Wal {
    /// Opens the WAL for writing where recovery left it. The directory must
    /// exist; `recovered` must come from [`recover`] on the same directory.
    pub async fn open(config: WalConfig, recovered: Recovered) -> Result<Wal, WalError> {
        assert!(config.segment_bytes >= segment::SEGMENT_BYTES_MIN, "segment size below minimum");
        let dir = Directory::open(&config.dir)
            .await
            .map_err(|e| WalError::io(&config.dir, "open wal directory", e.into()))?;
        let current = match &recovered.tail {
            Some(tail) => Some(open_tail(&config.dir, tail).await?),
            None => None,
        };
        let inner = Inner {
            current,
            segments: recovered.segments.into_iter().collect(),
            staged: Vec::new(),
            staged_max_index: HashMap::new(),
            staged_meta: Vec::new(),
            checkpoint: recovered.latest_meta.into_iter().map(|r| (meta_key(&r), r)).collect(),
            next_batch: recovered.next_batch,
            flushing: false,
            poisoned: None,
            bytes_since_compaction: 0,
        };
        Ok(Wal { config, dir, inner: RefCell::new(inner) })
    }

    pub fn config(&self) -> &WalConfig {
        &self.config
    }

    /// Stages a record for the next flush.
    pub fn append(&self, record: &Record) {
        let mut inner = self.inner.borrow_mut();
        let batch = inner.next_batch;
        record.encode_into(batch, self.config.fsync.syncs_each_flush(), &mut inner.staged);
        match record {
            Record::Entry { group, index, .. } => {
                let max = inner.staged_max_index.entry(*group).or_insert(0);
                *max = (*max).max(*index);
            }
            Record::HardState { .. } | Record::ConfState { .. } => inner.staged_meta.push(record.clone()),
        }
    }

    pub fn staged_bytes(&self) -> usize {
        self.inner.borrow().staged.len()
    }

    pub fn is_flushing(&self) -> bool {
        self.inner.borrow().flushing
    }

    /// Why the WAL refuses writes, if it does.
    pub fn poisoned(&self) -> Option<String> {
        self.inner.borrow().poisoned.clone()
    }

    /// WAL bytes written since the last [`Wal::compact`].
    pub fn bytes_since_compaction(&self) -> u64 {
        self.inner.borrow().bytes_since_compaction
    }

    /// Writes everything staged so far, and syncs it under policy `always`.
    /// Callers MUST NOT run two flushes at once. When this returns `Ok`,
    /// every record appended before the call is durable under the policy.
    pub async fn flush(&self) -> Result<FlushStats, WalError> {
        let job = {
            let mut inner = self.inner.borrow_mut();
            assert!(!inner.flushing, "two WAL flushes at once");
            if let Some(why) = &inner.poisoned {
                return Err(WalError::Poisoned(why.clone()));
            }
            if inner.staged.is_empty() {
                return Ok(FlushStats::default());
            }
            inner.flushing = true;
            self.take_job(&mut inner)
        };
        let result = self.run_flush(&job).await;
        let mut inner = self.inner.borrow_mut();
        inner.flushing = false;
        match result {
            Ok(stats) => {
                inner.bytes_since_compaction += stats.records_bytes;
                let seq = inner.current.as_ref().expect("a flush leaves a current segment").seq;
                let meta = inner.segments.back_mut().filter(|m| m.seq == seq).expect("current segment tracked");
                for (group, index) in job.max_index {
                    let max = meta.max_index.entry(group).or_insert(0);
                    *max = (*max).max(index);
                }
                Ok(stats)
            }
            Err(e) => {
                let why = e.to_string();
                tracing::error!(core = self.config.core, "WAL poisoned: {why}");
                inner.poisoned = Some(why.clone());
                Err(WalError::Poisoned(why))
            }
        }
    }

    fn take_job(&self, inner: &mut Inner) -> FlushJob {
        let batch = inner.next_batch;
        inner.next_batch += 1;
        let mut checkpoint = Vec::new();
        for record in inner.checkpoint.values() {
            record.encode_into(batch, self.config.fsync.syncs_each_flush(), &mut checkpoint);
        }
        for record in std::mem::take(&mut inner.staged_meta) {
            inner.checkpoint.insert(meta_key(&record), record);
        }
        FlushJob {
            records: std::mem::take(&mut inner.staged),
            checkpoint,
            max_index: std::mem::take(&mut inner.staged_max_index),
        }
    }

    async fn run_flush(&self, job: &FlushJob) -> Result<FlushStats, WalError> {
        let (needs_rotation, first) = {
            let inner = self.inner.borrow();
            match &inner.current {
                Some(seg) => (seg.end + job.records.len() as u64 > seg.capacity, seg.seq + 1),
                None => (true, inner.segments.back().map_or(1, |m| m.seq + 1)),
            }
        };
        let mut stats = FlushStats { records_bytes: job.records.len() as u64, ..FlushStats::default() };
        if needs_rotation {
            self.rotate(first, job).await?;
            stats.rotated = true;
        }
        let file = self.write_records(job, needs_rotation, &mut stats).await?;
        if self.config.fsync.syncs_each_flush() {
            let started = std::time::Instant::now();
            fdatasync(&file, &self.config.dir).await?;
            stats.sync_micros = started.elapsed().as_micros() as u64;
            stats.synced = true;
            // Crash point: durable, but not yet reported to anyone.
            fail::fail_point!("wal::after_fdatasync");
        }
        Ok(stats)
    }

    /// Writes the job's records after the current end of the current segment.
    async fn write_records(
        &self,
        job: &FlushJob,
        fresh_segment: bool,
        stats: &mut FlushStats,
    ) -> Result<Rc<DmaFile>, WalError> {
        let (file, pos, mut bytes) = {
            let inner = self.inner.borrow();
            let seg = inner.current.as_ref().expect("rotation leaves a current segment");
            let mut bytes = Vec::with_capacity(seg.tail.len() + job.checkpoint.len() + job.records.len());
            if fresh_segment {
                assert_eq!(seg.end, 0, "fresh segment");
                bytes.extend_from_slice(&segment::encode_header(self.config.core, seg.seq, seg.capacity));
                bytes.extend_from_slice(&job.checkpoint);
            } else {
                bytes.extend_from_slice(&seg.tail);
            }
            (seg.file.clone(), seg.end - seg.tail.len() as u64, bytes)
        };
        bytes.extend_from_slice(&job.records);
        let logical_end = pos + bytes.len() as u64;
        let padded = align_block(bytes.len());
        let mut buf = file.alloc_dma_buffer(padded);
        buf.as_bytes_mut()[..bytes.len()].copy_from_slice(&bytes);
        buf.as_bytes_mut()[bytes.len()..].fill(0);
        let started = std::time::Instant::now();
        fail::fail_point!("wal::write", |_| Err(injected(&self.config.dir, "write")));
        let written =
            file.write_at(buf, pos).await.map_err(|e| WalError::io(&self.config.dir, "write segment", e.into()))?;
        if written != padded {
            return Err(WalError::io(
                &self.config.dir,
                "write segment",
                std::io::Error::other(format!("short write: {written} of {padded} bytes")),
            ));
        }
        stats.write_micros = started.elapsed().as_micros() as u64;
        stats.written_bytes = padded as u64;
        let mut inner = self.inner.borrow_mut();
        let seg = inner.current.as_mut().expect("current segment");
        let tail_start = logical_end - logical_end % SEGMENT_HEADER_BYTES as u64;
        seg.tail = bytes.split_off((tail_start - pos) as usize);
        seg.end = logical_end;
        Ok(file)
    }

    /// Closes the current segment and starts segment `seq`.
    async fn rotate(&self, seq: u64, job: &FlushJob) -> Result<(), WalError> {
        let old = self.inner.borrow_mut().current.take();
        if let Some(old) = old {
            // Under every policy, `never` included: only the newest segment
            // may end in a torn write, or recovery could not tell a power
            // loss from damage.
            fdatasync(&old.file, &self.config.dir).await?;
        }
        let path = segment::path(&self.config.dir, seq);
        let needed = (SEGMENT_HEADER_BYTES + job.checkpoint.len() + job.records.len()) as u64;
        let capacity = self.config.segment_bytes.max(align_block(needed as usize) as u64);
        // Readable too: glommio probes the device with a read on open.
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .dma_open(&path)
            .await
            .map_err(|e| WalError::io(&path, "create segment", e.into()))?;
        file.pre_allocate(capacity, false).await.map_err(|e| WalError::io(&path, "preallocate segment", e.into()))?;
        // IMPORTANT: fsync folder — the new segment must survive a crash once
        // records in it are acknowledged.
        self.dir.sync().await.map_err(|e| WalError::io(&self.config.dir, "fsync wal directory", e.into()))?;
        let mut inner = self.inner.borrow_mut();
        inner.segments.push_back(SegmentMeta { seq, path, max_index: HashMap::new() });
        inner.current = Some(Segment { file: Rc::new(file), seq, end: 0, capacity, tail: Vec::new() });
        Ok(())
    }

    /// fdatasyncs the current segment now (policy `interval`, shutdown).
    pub async fn sync(&self) -> Result<(), WalError> {
        let file = {
            let inner = self.inner.borrow();
            if let Some(why) = &inner.poisoned {
                return Err(WalError::Poisoned(why.clone()));
            }
            match &inner.current {
                Some(seg) => seg.file.clone(),
                None => return Ok(()),
            }
        };
        if let Err(e) = fdatasync(&file, &self.config.dir).await {
            let why = e.to_string();
            self.inner.borrow_mut().poisoned = Some(why.clone());
            return Err(WalError::Poisoned(why));
        }
        Ok(())
    }

    /// Deletes the oldest segments whose entries every group has covered with
    /// a snapshot (`snapshot_index(group)`). Only a prefix is deleted, so a
    /// gap in segment numbers always means damage. Returns the count deleted.
    pub async fn compact(&self, snapshot_index: impl Fn(u32) -> u64) -> Result<usize, WalError> {
        let doomed: Vec<PathBuf> = {
            let mut inner = self.inner.borrow_mut();
            inner.bytes_since_compaction = 0;
            let current = inner.current.as_ref().map(|s| s.seq);
            let mut doomed = Vec::new();
            // Never the newest segment: during a rotation `current` is empty
            // while the old segment is still the last one on disk.
            while inner.segments.len() > 1 {
                let front = inner.segments.front().expect("len > 1");
                let covered = front.max_index.iter().all(|(g, max)| *max <= snapshot_index(*g));
                if Some(front.seq) == current || !covered {
                    break;
                }
                doomed.push(inner.segments.pop_front().expect("front exists").path);
            }
            doomed
        };
        for path in &doomed {
            glommio::io::remove(path).await.map_err(|e| WalError::io(path, "remove segment", e.into()))?;
        }
        if !doomed.is_empty() {
            // IMPORTANT: fsync folder — make the unlinks durable.
            self.dir.sync().await.map_err(|e| WalError::io(&self.config.dir, "fsync wal directory", e.into()))?;
        }
        Ok(doomed.len())
    }

    /// Number of segment files the WAL holds.
    pub fn segment_count(&self) -> usize {
        self.inner.borrow().segments.len()
    }
}

/// Checkpoint key of a hard or conf state record: (group, kind).
fn meta_key(record: &Record) -> (u32, u8) {
    (record.group(), if matches!(record, Record::HardState { .. }) { 0 } else { 1 })
}

async fn open_tail(dir: &Path, tail: &Tail) -> Result<Segment, WalError> {
    let path = segment::path(dir, tail.seq);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .dma_open(&path)
        .await
        .map_err(|e| WalError::io(&path, "open segment", e.into()))?;
    let tail_start = tail.end - tail.end % SEGMENT_HEADER_BYTES as u64;
    let mut tail_bytes = Vec::new();
    if tail.end > tail_start {
        let read = file
            .read_at_aligned(tail_start, SEGMENT_HEADER_BYTES)
            .await
            .map_err(|e| WalError::io(&path, "read segment tail", e.into()))?;
        tail_bytes.extend_from_slice(&read[..(tail.end - tail_start) as usize]);
    }
    Ok(Segment { file: Rc::new(file), seq: tail.seq, end: tail.end, capacity: tail.capacity, tail: tail_bytes })
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

fn align_block(n: usize) -> usize {
    n.div_ceil(SEGMENT_HEADER_BYTES) * SEGMENT_HEADER_BYTES
}

#[cfg(test)]
pub(crate) mod tests;
