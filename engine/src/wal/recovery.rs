//! Reading a core's WAL back at startup.
//!
//! Segments are read in sequence order and every record is checksummed.
//! How a bad spot is judged (see also ARCHITECTURE.md, "Durability"):
//!
//! - In any segment but the last, a bad record or header is corruption:
//!   later segments exist, so the bad bytes were once written whole.
//! - In the last segment, a bad record (or non-zero bytes after the end) is a
//!   torn tail — truncated with a warning — unless a valid record of a
//!   *later synced batch* follows it. Flushes are strictly sequential and a
//!   SYNCED batch starts only after the previous flush's fdatasync returned,
//!   so such a record proves the bad one was durable once: corruption.
//! - A gap in segment numbers is corruption; an unwritten last segment (a
//!   crash between creating it and the first write) is removed.
//!
//! Corruption refuses startup with the file, the offset and what to do.
//!
//! The judgement is pure: [`scan`] takes segment bytes and returns what was
//! recovered plus the [`Repair`]s (remove an unwritten last segment, zero a
//! torn tail, restore a cut segment's length) that must be applied and made
//! durable before anything is written after them. [`recover`] is the IO
//! around it: it lists and reads the files, scans, and applies the repairs.
//! A simulated disk calls [`scan`] and applies the repairs itself.

use std::collections::{BTreeMap, HashMap};
use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use tracing::warn;

use super::record::{self, Decoded, Record, RECORD_ALIGN_BYTES, RECORD_HEADER_BYTES};
use super::segment::{self, HeaderProblem, SEGMENT_HEADER_BYTES};
use super::WalError;
use crate::fsutil;

const CORRUPTION_HINT: &str = "this is not a torn write: acknowledged data was damaged after it was \
     written. Restore this node's data directory from a backup or rebuild the node from a \
     replica; or, accepting the loss of every write from this point on, move this segment and \
     all later segments of this core out of the wal directory and start again";

/// What recovery learned about one surviving segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentMeta {
    pub seq: u64,
    pub path: PathBuf,
    /// Highest entry index per group in this segment.
    pub max_index: HashMap<u32, u64>,
}

/// Where the writer continues after recovery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tail {
    pub seq: u64,
    /// Logical end: the offset just after the last valid record.
    pub end: u64,
    /// Size of the segment file.
    pub capacity: u64,
    /// The segment's bytes from the last `SEGMENT_HEADER_BYTES` boundary up
    /// to `end`: the partial block the next write rewrites (O_DIRECT writes
    /// whole blocks), so opening the WAL for writing reads nothing.
    pub last_block: Vec<u8>,
}

/// The result of reading a WAL directory.
#[derive(Debug, Default)]
pub struct Recovered {
    pub segments: Vec<SegmentMeta>,
    pub tail: Option<Tail>,
    /// The batch number the writer uses next.
    pub next_batch: u64,
    pub records: u64,
    /// The newest hard state and conf state record of each group: the
    /// checkpoint the next new segment starts with.
    pub latest_meta: Vec<Record>,
    /// Human-readable notes about torn tails truncated or files removed.
    pub warnings: Vec<String>,
}

/// A change [`scan`] found necessary. Each must be applied, and made
/// durable, in the order given, before anything is written to the WAL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Repair {
    /// The last segment was created but never written (or is shorter than
    /// its header): remove the file, then fsync the directory.
    RemoveSegment { seq: u64, path: PathBuf },
    /// A torn write at the tail of the last segment: write zeros over
    /// `from..to`, then fdatasync — so that stale bytes can never be
    /// mistaken for records written later.
    ZeroTail { seq: u64, path: PathBuf, from: u64, to: u64 },
    /// The last segment was cut shorter than it was created: give it its
    /// length back (the cut part reads as zeros), then fsync, so the repair
    /// is reported once, not at every start.
    RestoreLength { seq: u64, path: PathBuf, capacity: u64 },
}

/// Reads every segment in `dir` (which must exist) in order and hands each
/// valid record to `visit`. Applies the repairs [`scan`] asks for — removes
/// an unwritten last segment, zeroes a torn tail, restores a cut segment's
/// length — each made durable, before returning.
pub fn recover(dir: &Path, core: u32, visit: impl FnMut(Record) -> Result<(), String>) -> Result<Recovered, WalError> {
    let seqs = list_segments(dir)?;
    // One segment in memory at a time.
    let read = |path: &Path| std::fs::read(path).map_err(|e| WalError::io(path, "read segment", e));
    let (recovered, repairs) = scan_each(core, dir, &seqs, read, visit)?;
    for repair in &repairs {
        apply(dir, repair)?;
    }
    Ok(recovered)
}

/// The judgement of [`recover`] without its IO: reads the `(seq, bytes)` of
/// every segment file of `dir` (in any order), hands each valid record to
/// `visit` in log order, and returns what was recovered with the repairs
/// the caller must apply. `dir` only names the files in errors, warnings
/// and repairs.
pub fn scan(
    core: u32,
    dir: &Path,
    mut segments: Vec<(u64, Vec<u8>)>,
    visit: impl FnMut(Record) -> Result<(), String>,
) -> Result<(Recovered, Vec<Repair>), WalError> {
    segments.sort_unstable_by_key(|&(seq, _)| seq);
    let seqs: Vec<u64> = segments.iter().map(|&(seq, _)| seq).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "each segment given once");
    let mut bytes = segments.into_iter().map(|(_, data)| data);
    scan_each(core, dir, &seqs, |_| Ok(bytes.next().expect("one buffer per segment")), visit)
}

/// What the scan carries from segment to segment.
struct Scan<V> {
    out: Recovered,
    repairs: Vec<Repair>,
    last_batch: u64,
    latest_meta: BTreeMap<(u32, u8), Record>,
    visit: V,
}

/// [`scan`] over segments `seqs` (ascending), each read when its turn comes.
fn scan_each<V: FnMut(Record) -> Result<(), String>>(
    core: u32,
    dir: &Path,
    seqs: &[u64],
    mut read: impl FnMut(&Path) -> Result<Vec<u8>, WalError>,
    visit: V,
) -> Result<(Recovered, Vec<Repair>), WalError> {
    let mut scan = Scan {
        out: Recovered { next_batch: 1, ..Recovered::default() },
        repairs: Vec::new(),
        last_batch: 0,
        latest_meta: BTreeMap::new(),
        visit,
    };
    for (i, &seq) in seqs.iter().enumerate() {
        if i > 0 && seq != seqs[i - 1] + 1 {
            return Err(WalError::Corrupt {
                path: segment::path(dir, seqs[i - 1] + 1),
                offset: 0,
                reason: format!("segment {} is missing (found {} and {seq})", seqs[i - 1] + 1, seqs[i - 1]),
                hint: CORRUPTION_HINT,
            });
        }
        let path = segment::path(dir, seq);
        let data = read(&path)?;
        if !scan.segment(core, seq, path, &data, i + 1 == seqs.len())? {
            break;
        }
    }
    let mut out = scan.out;
    out.next_batch = scan.last_batch + 1;
    out.latest_meta = scan.latest_meta.into_values().collect();
    Ok((out, scan.repairs))
}

impl<V: FnMut(Record) -> Result<(), String>> Scan<V> {
    /// Scans one segment. Returns false if it was an unwritten last segment
    /// (to be removed), which ends the scan.
    fn segment(&mut self, core: u32, seq: u64, path: PathBuf, data: &[u8], is_last: bool) -> Result<bool, WalError> {
        let capacity = match segment::check_header(data, core, seq) {
            Ok(capacity) => capacity,
            Err(problem @ (HeaderProblem::Unwritten | HeaderProblem::Truncated)) if is_last => {
                let note = match problem {
                    HeaderProblem::Unwritten => {
                        format!("{}: segment was created but never written; removed it", path.display())
                    }
                    _ => format!(
                        "{}: segment was cut to {} bytes, shorter than its header; removed it",
                        path.display(),
                        data.len()
                    ),
                };
                self.warn(note);
                self.repairs.push(Repair::RemoveSegment { seq, path });
                return Ok(false);
            }
            Err(HeaderProblem::Unwritten) => {
                return Err(corrupt(&path, 0, "segment header was never written, but later segments exist"));
            }
            Err(HeaderProblem::Truncated) => return Err(corrupt(&path, 0, "segment is shorter than its header")),
            Err(HeaderProblem::Invalid(why)) => return Err(corrupt(&path, 0, &why)),
        };
        if (data.len() as u64) < capacity {
            // Preallocated files never shrink by themselves: this one was cut.
            let why =
                format!("segment is {} bytes, but was created with {capacity}: the file was truncated", data.len());
            if !is_last {
                return Err(corrupt(&path, data.len(), &why));
            }
            self.warn(format!("{}: {why}; records past the cut, if there were any, are lost", path.display()));
            self.repairs.push(Repair::RestoreLength { seq, path: path.clone(), capacity });
        }
        let mut meta = SegmentMeta { seq, path, max_index: HashMap::new() };
        let end = self.records(data, is_last, &mut meta)?;
        let block_start = end - end % SEGMENT_HEADER_BYTES;
        let last_block = data[block_start..end].to_vec();
        self.out.tail = Some(Tail { seq, end: end as u64, capacity, last_block });
        self.out.segments.push(meta);
        Ok(true)
    }

    /// Walks the records of one segment; returns the logical end offset.
    fn records(&mut self, data: &[u8], is_last: bool, meta: &mut SegmentMeta) -> Result<usize, WalError> {
        let path = meta.path.clone();
        let mut at = SEGMENT_HEADER_BYTES;
        loop {
            let problem = match record::decode(&data[at..]) {
                Decoded::Record { record, batch, encoded_len, .. } => {
                    if batch < self.last_batch {
                        return Err(corrupt(&path, at, "batch numbers go backwards"));
                    }
                    self.last_batch = batch;
                    match &record {
                        Record::Entry { group, index, .. } => {
                            let max = meta.max_index.entry(*group).or_insert(0);
                            *max = (*max).max(*index);
                        }
                        // The checkpoint the next new segment starts with.
                        Record::HardState { group, .. } => {
                            self.latest_meta.insert((*group, 0), record.clone());
                        }
                        Record::ConfState { group, .. } => {
                            self.latest_meta.insert((*group, 1), record.clone());
                        }
                    }
                    (self.visit)(record).map_err(|why| corrupt(&path, at, &why))?;
                    self.out.records += 1;
                    at += encoded_len;
                    continue;
                }
                Decoded::End if data[at..].iter().all(|&b| b == 0) => return Ok(at),
                Decoded::End => "non-zero bytes after the end of the log",
                Decoded::Invalid(why) => why,
            };
            if !is_last {
                return Err(corrupt(&path, at, problem));
            }
            if let Some(later) = later_synced_record(data, at, self.last_batch) {
                let why = format!("{problem}; a valid record of a later synced batch follows at offset {later}");
                return Err(corrupt(&path, at, &why));
            }
            self.torn_tail(meta.seq, path, data, at, problem);
            return Ok(at);
        }
    }

    /// Discards a torn tail: every byte from `at` to the last non-zero one
    /// is zeroed by the repair.
    fn torn_tail(&mut self, seq: u64, path: PathBuf, data: &[u8], at: usize, problem: &str) {
        let dirty_end = at + data[at..].iter().rposition(|&b| b != 0).map_or(0, |p| p + 1);
        self.warn(format!(
            "{}: torn write at the tail (offset {at}: {problem}); discarded {} bytes that were never acknowledged",
            path.display(),
            dirty_end - at
        ));
        self.repairs.push(Repair::ZeroTail { seq, path, from: at as u64, to: dirty_end as u64 });
    }

    fn warn(&mut self, note: String) {
        warn!("{note}");
        self.out.warnings.push(note);
    }
}

/// Offset of a valid record after `from` whose batch was written after the
/// batch containing `from` had been synced.
fn later_synced_record(data: &[u8], from: usize, last_batch: u64) -> Option<usize> {
    let mut at = from + RECORD_ALIGN_BYTES;
    while at + RECORD_HEADER_BYTES <= data.len() {
        let batch = u64::from_le_bytes(data[at + 32..at + 40].try_into().expect("8 bytes"));
        let synced = data[at + 9] & record::FLAG_SYNCED != 0;
        if synced && batch >= last_batch + 2 {
            if let Decoded::Record { .. } = record::decode(&data[at..]) {
                return Some(at);
            }
        }
        at += RECORD_ALIGN_BYTES;
    }
    None
}

/// Applies one repair to the files and makes it durable.
fn apply(dir: &Path, repair: &Repair) -> Result<(), WalError> {
    match repair {
        Repair::RemoveSegment { path, .. } => {
            std::fs::remove_file(path).map_err(|e| WalError::io(path, "remove unwritten segment", e))?;
            // IMPORTANT: fsync folder — the removal must be durable before a
            // new segment with the same number can be created.
            fsutil::sync_dir(dir).map_err(|e| WalError::io(dir, "fsync directory", e))
        }
        Repair::ZeroTail { path, from, to, .. } => {
            let file = OpenOptions::new().write(true).open(path).map_err(|e| WalError::io(path, "open segment", e))?;
            let zeros = vec![0u8; (to - from) as usize];
            file.write_all_at(&zeros, *from).map_err(|e| WalError::io(path, "zero torn tail", e))?;
            // IMPORTANT: fsync — the repaired tail must be durable before new
            // records are appended after it.
            file.sync_data().map_err(|e| WalError::io(path, "fdatasync repaired segment", e))
        }
        Repair::RestoreLength { path, capacity, .. } => {
            let file = OpenOptions::new().write(true).open(path).map_err(|e| WalError::io(path, "open segment", e))?;
            file.set_len(*capacity).map_err(|e| WalError::io(path, "restore segment length", e))?;
            // IMPORTANT: fsync — the restored length must be durable before
            // new records are written into it.
            file.sync_all().map_err(|e| WalError::io(path, "fsync segment", e))
        }
    }
}

fn list_segments(dir: &Path) -> Result<Vec<u64>, WalError> {
    let mut seqs = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| WalError::io(dir, "list wal directory", e))? {
        let entry = entry.map_err(|e| WalError::io(dir, "list wal directory", e))?;
        if let Some(seq) = entry.file_name().to_str().and_then(segment::parse_name) {
            seqs.push(seq);
        }
    }
    seqs.sort_unstable();
    Ok(seqs)
}

fn corrupt(path: &Path, offset: usize, reason: &str) -> WalError {
    WalError::Corrupt {
        path: path.to_path_buf(),
        offset: offset as u64,
        reason: reason.to_string(),
        hint: CORRUPTION_HINT,
    }
}
