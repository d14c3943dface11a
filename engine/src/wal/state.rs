//! Everything the WAL decides, without doing any IO: the sans-IO core that
//! the glommio [`Wal`](super::Wal) runs against real files and a
//! deterministic simulator can run against a simulated disk.
//!
//! [`WalState`] stages records, numbers batches, keeps the checkpoint (the
//! latest hard and conf state of every group) and the segment bookkeeping,
//! decides when a batch starts a new segment, builds the exact block-aligned
//! bytes a flush writes, and decides which segments compaction may delete.
//! A flush is a [`FlushPlan`] from [`WalState::begin_flush`], executed by the
//! caller in the order the plan's fields are documented, and reported back
//! with [`WalState::finish_flush`].
//!
//! Invariants (asserted, in release too):
//! - at most one flush is in flight; batch numbers increase by one per plan;
//! - bookkeeping only ever describes IO that completed: a plan's rotation and
//!   write are recorded by `finish_flush(.., Ok)`, never before, so while a
//!   flush is in flight the newest segment recorded is still the newest
//!   complete one on disk;
//! - the current segment, if any, is the newest recorded segment, and the
//!   kept partial block is byte for byte what the file holds from the last
//!   block boundary up to the logical end;
//! - once poisoned, always poisoned: no plan is handed out again;
//! - compaction takes only a prefix of the segments, never the newest one,
//!   and nothing while a flush is in flight.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;

use super::record::Record;
use super::recovery::{Recovered, SegmentMeta};
use super::segment::{self, SEGMENT_HEADER_BYTES};
use super::{FsyncPolicy, WalError};

/// The segment new records go into.
#[derive(Debug)]
struct Current {
    seq: u64,
    /// Offset just past the last record written.
    end: u64,
    capacity: u64,
    /// Bytes from the last block boundary up to `end`: O_DIRECT writes whole
    /// blocks, so each flush rewrites this partial block with new records.
    tail: Vec<u8>,
}

/// The WAL's decisions and bookkeeping. Not thread-safe, no IO, no clock.
#[derive(Debug)]
pub struct WalState {
    core: u32,
    segment_bytes: u64,
    fsync: FsyncPolicy,
    dir: PathBuf,
    current: Option<Current>,
    /// Every segment on disk, oldest first; the last one is `current`.
    segments: VecDeque<SegmentMeta>,
    staged: Vec<u8>,
    staged_max_index: HashMap<u32, u64>,
    /// Hard and conf state records staged in the current batch.
    staged_meta: Vec<Record>,
    /// Latest hard/conf state per (group, kind) as of the last taken batch.
    checkpoint: BTreeMap<(u32, u8), Record>,
    next_batch: u64,
    /// The batch number of the flush in flight.
    in_flight: Option<u64>,
    poisoned: Option<String>,
    bytes_since_compaction: u64,
}

/// One flush, decided by [`WalState::begin_flush`]. The caller performs, in
/// this order, stopping at the first failure, and reports the outcome with
/// [`WalState::finish_flush`]:
/// 1. the rotation, if any (see [`Rotation`]) — a crash leaves an unwritten
///    newest segment, which recovery removes;
/// 2. the write — a crash leaves a torn tail, which recovery zeroes;
/// 3. the fdatasync, if `sync` — once it returns the batch is durable, and
///    only after `finish_flush` may its records be acknowledged.
#[derive(Debug)]
#[must_use = "a plan must be executed and reported with finish_flush"]
pub struct FlushPlan {
    /// The batch number every record of the plan carries.
    pub batch: u64,
    /// Present when the batch starts a new segment.
    pub rotate: Option<Rotation>,
    /// One write of `write_bytes` at offset `write_offset` of segment
    /// `write_seq`. Both the offset and the length are multiples of
    /// `SEGMENT_HEADER_BYTES`: the bytes start with the kept partial block
    /// (or, in a fresh segment, the header and the checkpoint), then the
    /// new records, then zeros.
    pub write_seq: u64,
    pub write_offset: u64,
    pub write_bytes: Vec<u8>,
    /// Whether an fdatasync of segment `write_seq` follows the write
    /// (policy `always`).
    pub sync: bool,
    /// Bytes of the staged records (header, checkpoint and padding excluded).
    pub records_bytes: u64,
    /// Logical end of the segment once the write landed.
    end: u64,
    /// The partial block kept for the next flush once the write landed.
    next_tail: Vec<u8>,
    max_index: HashMap<u32, u64>,
}

impl FlushPlan {
    /// Offset just past the plan's last record once it is written.
    pub fn end(&self) -> u64 {
        self.end
    }
}

/// A new segment a flush starts with. Steps, in order:
/// 1. fdatasync `sync_old` — under every policy, so that only the newest
///    segment can ever end in a torn write (recovery could not tell a torn
///    write in an older segment from damage). A crash before it returns
///    leaves the old segment as the newest: a torn tail at worst;
/// 2. create segment `seq` (it must not exist) and preallocate `capacity`
///    bytes — a crash leaves an unwritten or short segment, which recovery
///    removes (its header, which records `capacity`, is not written yet);
/// 3. fsync the directory — the new segment must survive a crash once
///    records in it are acknowledged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotation {
    /// The old segment to fdatasync before anything else (under every
    /// policy), if there is one.
    pub sync_old: Option<u64>,
    /// The new segment: create it (it must not exist), preallocate
    /// `capacity` bytes, fsync the directory.
    pub seq: u64,
    pub path: PathBuf,
    pub capacity: u64,
}

impl WalState {
    /// The state of a WAL that continues where recovery left it;
    /// `recovered` must come from scanning the segments of `dir`.
    pub fn new(core: u32, segment_bytes: u64, fsync: FsyncPolicy, dir: PathBuf, recovered: Recovered) -> WalState {
        assert!(segment_bytes >= segment::SEGMENT_BYTES_MIN, "segment size below minimum");
        assert!(recovered.next_batch >= 1, "batch numbers start at 1");
        let current = recovered.tail.map(|tail| {
            let block_start = tail.end - tail.end % SEGMENT_HEADER_BYTES as u64;
            assert_eq!(tail.last_block.len() as u64, tail.end - block_start, "tail block of segment {}", tail.seq);
            Current { seq: tail.seq, end: tail.end, capacity: tail.capacity, tail: tail.last_block }
        });
        assert_eq!(
            current.as_ref().map(|c| c.seq),
            recovered.segments.last().map(|m| m.seq),
            "the recovered tail is the newest recovered segment"
        );
        WalState {
            core,
            segment_bytes,
            fsync,
            dir,
            current,
            segments: recovered.segments.into_iter().collect(),
            staged: Vec::new(),
            staged_max_index: HashMap::new(),
            staged_meta: Vec::new(),
            checkpoint: recovered.latest_meta.into_iter().map(|r| (meta_key(&r), r)).collect(),
            next_batch: recovered.next_batch,
            in_flight: None,
            poisoned: None,
            bytes_since_compaction: 0,
        }
    }

    /// Stages a record for the next flush.
    pub fn append(&mut self, record: &Record) {
        record.encode_into(self.next_batch, self.fsync.syncs_each_flush(), &mut self.staged);
        match record {
            Record::Entry { group, index, .. } => {
                let max = self.staged_max_index.entry(*group).or_insert(0);
                *max = (*max).max(*index);
            }
            Record::HardState { .. } | Record::ConfState { .. } => self.staged_meta.push(record.clone()),
        }
    }

    pub fn staged_bytes(&self) -> usize {
        self.staged.len()
    }

    pub fn is_flushing(&self) -> bool {
        self.in_flight.is_some()
    }

    /// Why the WAL refuses writes, if it does.
    pub fn poisoned(&self) -> Option<String> {
        self.poisoned.clone()
    }

    /// WAL bytes written since the last compaction.
    pub fn bytes_since_compaction(&self) -> u64 {
        self.bytes_since_compaction
    }

    /// The segment new records go into, once one exists.
    pub fn current_segment(&self) -> Option<u64> {
        self.current.as_ref().map(|c| c.seq)
    }

    /// Whether the current segment is at least half full (time to make
    /// the next one ready).
    pub fn half_full(&self) -> bool {
        self.current.as_ref().is_some_and(|c| c.end >= c.capacity / 2)
    }

    /// Number of segment files the WAL holds.
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// The segments on disk, oldest first.
    pub fn segments(&self) -> impl ExactSizeIterator<Item = &SegmentMeta> {
        self.segments.iter()
    }

    /// The batch number the next plan carries.
    pub fn next_batch(&self) -> u64 {
        self.next_batch
    }

    /// Takes everything staged as the next batch. `Err` if poisoned;
    /// `Ok(None)` if nothing is staged. Panics if a flush is in flight.
    pub fn begin_flush(&mut self) -> Result<Option<FlushPlan>, WalError> {
        assert!(self.in_flight.is_none(), "two WAL flushes at once");
        if let Some(why) = &self.poisoned {
            return Err(WalError::Poisoned(why.clone()));
        }
        if self.staged.is_empty() {
            return Ok(None);
        }
        let batch = self.next_batch;
        self.next_batch += 1;
        self.in_flight = Some(batch);
        let records = std::mem::take(&mut self.staged);
        let max_index = std::mem::take(&mut self.staged_max_index);
        let fits = self.current.as_ref().is_some_and(|c| c.end + records.len() as u64 <= c.capacity);
        // Encoded before this batch's hard and conf states join the
        // checkpoint: a new segment starts with the state as of the previous
        // batch, and this batch's records follow it.
        let plan = if fits { self.append_plan(batch, &records) } else { self.rotation_plan(batch, &records) };
        for record in std::mem::take(&mut self.staged_meta) {
            self.checkpoint.insert(meta_key(&record), record);
        }
        Ok(Some(FlushPlan { max_index, ..plan }))
    }

    /// A plan that appends `records` to the current segment: the kept
    /// partial block is written again, followed by the records.
    fn append_plan(&self, batch: u64, records: &[u8]) -> FlushPlan {
        let seg = self.current.as_ref().expect("appending needs a current segment");
        let offset = seg.end - seg.tail.len() as u64;
        let mut bytes = Vec::with_capacity(align_block(seg.tail.len() + records.len()));
        bytes.extend_from_slice(&seg.tail);
        bytes.extend_from_slice(records);
        self.plan(batch, None, seg.seq, offset, bytes, records.len())
    }

    /// A plan that starts segment `seq`: header, checkpoint, records.
    fn rotation_plan(&self, batch: u64, records: &[u8]) -> FlushPlan {
        // Without a current segment there is no segment at all (asserted in
        // `new`, kept by `finish_flush`): the WAL starts at 1.
        let seq = self.current.as_ref().map_or(1, |c| c.seq + 1);
        let mut checkpoint = Vec::new();
        for record in self.checkpoint.values() {
            record.encode_into(batch, self.fsync.syncs_each_flush(), &mut checkpoint);
        }
        let needed = SEGMENT_HEADER_BYTES + checkpoint.len() + records.len();
        // A batch bigger than a segment gets a segment of its own size.
        let capacity = self.segment_bytes.max(align_block(needed) as u64);
        let mut bytes = Vec::with_capacity(align_block(needed));
        bytes.extend_from_slice(&segment::encode_header(self.core, seq, capacity));
        bytes.extend_from_slice(&checkpoint);
        bytes.extend_from_slice(records);
        let rotation = Rotation {
            sync_old: self.current.as_ref().map(|c| c.seq),
            seq,
            path: segment::path(&self.dir, seq),
            capacity,
        };
        self.plan(batch, Some(rotation), seq, 0, bytes, records.len())
    }

    /// Pads `bytes` (which start at block boundary `offset`) to whole blocks
    /// and remembers the partial block the next flush must rewrite.
    fn plan(
        &self,
        batch: u64,
        rotate: Option<Rotation>,
        seq: u64,
        offset: u64,
        mut bytes: Vec<u8>,
        records_bytes: usize,
    ) -> FlushPlan {
        assert_eq!(offset % SEGMENT_HEADER_BYTES as u64, 0, "writes start at a block boundary");
        let end = offset + bytes.len() as u64;
        let block_start = end - end % SEGMENT_HEADER_BYTES as u64;
        let next_tail = bytes[(block_start - offset) as usize..].to_vec();
        bytes.resize(align_block(bytes.len()), 0);
        FlushPlan {
            batch,
            rotate,
            write_seq: seq,
            write_offset: offset,
            write_bytes: bytes,
            sync: self.fsync.syncs_each_flush(),
            records_bytes: records_bytes as u64,
            end,
            next_tail,
            max_index: HashMap::new(),
        }
    }

    /// Reports how the plan's IO went. `Ok`: the rotation and the write
    /// happened (and the fdatasync, if the plan asked for one), so the
    /// bookkeeping advances. `Err`: the WAL is poisoned for good and
    /// `WalError::Poisoned` is returned — what the failed step left on disk
    /// is unknown, so nothing may be written after it.
    pub fn finish_flush(&mut self, plan: FlushPlan, result: Result<(), WalError>) -> Result<(), WalError> {
        assert_eq!(self.in_flight, Some(plan.batch), "finish_flush of a plan that is not in flight");
        self.in_flight = None;
        if let Err(e) = result {
            let why = e.to_string();
            self.poison(why.clone());
            return Err(WalError::Poisoned(why));
        }
        if let Some(rotation) = plan.rotate {
            assert_eq!(rotation.seq, plan.write_seq, "a rotating flush writes the new segment");
            self.segments.push_back(SegmentMeta { seq: rotation.seq, path: rotation.path, max_index: HashMap::new() });
            self.current = Some(Current { seq: rotation.seq, end: 0, capacity: rotation.capacity, tail: Vec::new() });
        }
        let seg = self.current.as_mut().expect("a flush leaves a current segment");
        assert_eq!(seg.seq, plan.write_seq, "the plan wrote the current segment");
        seg.end = plan.end;
        seg.tail = plan.next_tail;
        self.bytes_since_compaction += plan.records_bytes;
        let meta = self.segments.back_mut().filter(|m| m.seq == plan.write_seq).expect("current segment tracked");
        for (group, index) in plan.max_index {
            let max = meta.max_index.entry(group).or_insert(0);
            *max = (*max).max(index);
        }
        Ok(())
    }

    /// Refuses every later flush and sync. The first reason is kept.
    pub fn poison(&mut self, why: String) {
        tracing::error!(core = self.core, "WAL poisoned: {why}");
        self.poisoned.get_or_insert(why);
    }

    /// The segment an explicit sync (policy `interval`, shutdown) must
    /// fdatasync: `Err` if poisoned, `None` before the first segment exists.
    /// While a rotation is in flight this is still the old segment, which
    /// holds every record reported written so far.
    pub fn sync_target(&self) -> Result<Option<u64>, WalError> {
        match &self.poisoned {
            Some(why) => Err(WalError::Poisoned(why.clone())),
            None => Ok(self.current_segment()),
        }
    }

    /// Takes the oldest segments whose entries every group's snapshot covers
    /// (`snapshot_index(group)`) out of the bookkeeping, for the caller to
    /// delete (then fsync the directory), and resets `bytes_since_compaction`.
    /// Only a prefix, never the newest segment it knows (it holds the latest
    /// checkpoint and is where writing continues), so a gap in segment
    /// numbers is always damage. Safe while a flush is in flight: a segment
    /// a rotation is creating joins the bookkeeping only when that flush
    /// finishes, so until then the segment it rotates out stays the newest
    /// known one, and is kept.
    pub fn take_compactable(&mut self, snapshot_index: impl Fn(u32) -> u64) -> Vec<SegmentMeta> {
        self.bytes_since_compaction = 0;
        let mut doomed = Vec::new();
        while self.segments.len() > 1 {
            let front = self.segments.front().expect("len > 1");
            if !front.max_index.iter().all(|(g, max)| *max <= snapshot_index(*g)) {
                break;
            }
            doomed.push(self.segments.pop_front().expect("front exists"));
        }
        assert!(
            self.current.is_none() || self.current_segment() == self.segments.back().map(|m| m.seq),
            "compaction kept the current segment"
        );
        doomed
    }
}

/// Checkpoint key of a hard or conf state record: (group, kind).
fn meta_key(record: &Record) -> (u32, u8) {
    (record.group(), if matches!(record, Record::HardState { .. }) { 0 } else { 1 })
}

fn align_block(n: usize) -> usize {
    n.div_ceil(SEGMENT_HEADER_BYTES) * SEGMENT_HEADER_BYTES
}
