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

use std::collections::HashMap;
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

/// Reads every segment in `dir` (which must exist) in order and hands each
/// valid record to `visit`. Repairs a torn tail in place.
pub fn recover(
    dir: &Path,
    core: u32,
    mut visit: impl FnMut(Record) -> Result<(), String>,
) -> Result<Recovered, WalError> {
    let seqs = list_segments(dir)?;
    let mut out = Recovered { next_batch: 1, ..Recovered::default() };
    let mut last_batch = 0u64;
    let mut latest_meta = std::collections::BTreeMap::new();
    let mut visit = |record: Record| {
        match &record {
            Record::HardState { group, .. } => latest_meta.insert((*group, 0u8), record.clone()),
            Record::ConfState { group, .. } => latest_meta.insert((*group, 1u8), record.clone()),
            Record::Entry { .. } => None,
        };
        visit(record)
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
        let is_last = i + 1 == seqs.len();
        let path = segment::path(dir, seq);
        let data = std::fs::read(&path).map_err(|e| WalError::io(&path, "read segment", e))?;
        let capacity = match segment::check_header(&data, core, seq) {
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
                warn!("{note}");
                out.warnings.push(note);
                std::fs::remove_file(&path).map_err(|e| WalError::io(&path, "remove unwritten segment", e))?;
                fsutil::sync_dir(dir).map_err(|e| WalError::io(dir, "fsync directory", e))?;
                break;
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
            let note = format!("{}: {why}; records past the cut, if there were any, are lost", path.display());
            warn!("{note}");
            out.warnings.push(note);
            restore_length(&path, capacity)?;
        }
        let mut meta = SegmentMeta { seq, path: path.clone(), max_index: HashMap::new() };
        let end = read_records(&data, &path, is_last, &mut last_batch, &mut meta, &mut out, &mut visit)?;
        out.tail = Some(Tail { seq, end: end as u64, capacity });
        out.segments.push(meta);
    }
    out.next_batch = last_batch + 1;
    out.latest_meta = latest_meta.into_values().collect();
    Ok(out)
}

/// Walks the records of one segment; returns the logical end offset.
fn read_records(
    data: &[u8],
    path: &Path,
    is_last: bool,
    last_batch: &mut u64,
    meta: &mut SegmentMeta,
    out: &mut Recovered,
    visit: &mut impl FnMut(Record) -> Result<(), String>,
) -> Result<usize, WalError> {
    let mut at = SEGMENT_HEADER_BYTES;
    loop {
        let problem = match record::decode(&data[at..]) {
            Decoded::Record { record, batch, encoded_len, .. } => {
                if batch < *last_batch {
                    return Err(corrupt(path, at, "batch numbers go backwards"));
                }
                *last_batch = batch;
                if let Record::Entry { group, index, .. } = record {
                    let max = meta.max_index.entry(group).or_insert(0);
                    *max = (*max).max(index);
                }
                visit(record).map_err(|why| corrupt(path, at, &why))?;
                out.records += 1;
                at += encoded_len;
                continue;
            }
            Decoded::End if data[at..].iter().all(|&b| b == 0) => return Ok(at),
            Decoded::End => "non-zero bytes after the end of the log",
            Decoded::Invalid(why) => why,
        };
        if !is_last {
            return Err(corrupt(path, at, problem));
        }
        if let Some(later) = later_synced_record(data, at, *last_batch) {
            let why = format!("{problem}; a valid record of a later synced batch follows at offset {later}");
            return Err(corrupt(path, at, &why));
        }
        truncate_tail(path, data, at, problem, out)?;
        return Ok(at);
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

/// Zeros a torn tail so that the next recovery sees a clean end, and so that
/// stale bytes can never be mistaken for records written later.
fn truncate_tail(path: &Path, data: &[u8], at: usize, problem: &str, out: &mut Recovered) -> Result<(), WalError> {
    let dirty_end = at + data[at..].iter().rposition(|&b| b != 0).map_or(0, |p| p + 1);
    let note = format!(
        "{}: torn write at the tail (offset {at}: {problem}); discarded {} bytes that were never acknowledged",
        path.display(),
        dirty_end - at
    );
    warn!("{note}");
    out.warnings.push(note);
    let file = OpenOptions::new().write(true).open(path).map_err(|e| WalError::io(path, "open segment", e))?;
    file.write_all_at(&vec![0u8; dirty_end - at], at as u64).map_err(|e| WalError::io(path, "zero torn tail", e))?;
    // IMPORTANT: fsync — the repaired tail must be durable before new records
    // are appended after it.
    file.sync_data().map_err(|e| WalError::io(path, "fdatasync repaired segment", e))
}

/// Gives a cut segment its size back (the cut part reads as zeros), so the
/// repair is reported once, not at every start.
fn restore_length(path: &Path, capacity: u64) -> Result<(), WalError> {
    let file = OpenOptions::new().write(true).open(path).map_err(|e| WalError::io(path, "open segment", e))?;
    file.set_len(capacity).map_err(|e| WalError::io(path, "restore segment length", e))?;
    // IMPORTANT: fsync — the restored length must be durable before new
    // records are written into it.
    file.sync_all().map_err(|e| WalError::io(path, "fsync segment", e))
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
