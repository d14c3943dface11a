//! Segment files: naming and the header block.
//!
//! A segment is `<wal-dir>/<seq, 20 digits>.wal`. Its first
//! [`SEGMENT_HEADER_BYTES`] hold the header; records follow back to back.
//! Segments are preallocated, so the unwritten rest of a segment reads as
//! zeros, which decodes as the end of the log.
//!
//! ```text
//! 0  8  magic "KVDWAL\0\x01"
//! 8  4  format version (1)
//! 12 4  core index
//! 16 8  segment sequence number
//! 24 8  capacity: the preallocated file size
//! 32 4  crc32 of bytes 0..32
//! 36 …  zeros up to SEGMENT_HEADER_BYTES
//! ```
//!
//! The capacity lets recovery tell a truncated file (damage: a torn write
//! never shortens a preallocated file) from a clean one.
//!
//! ```text
//! ```

use std::path::{Path, PathBuf};

/// The header takes one whole block so records can be written with O_DIRECT
/// without ever rewriting the header.
pub const SEGMENT_HEADER_BYTES: usize = 4096;
/// Default segment size. Bigger segments mean fewer rotations (each costs a
/// file create and a directory fsync); smaller ones free space sooner after a
/// snapshot.
pub const SEGMENT_BYTES_DEFAULT: u64 = 64 * 1024 * 1024;
/// Smallest allowed segment (tests use small segments to force rotation).
pub const SEGMENT_BYTES_MIN: u64 = 64 * 1024;

const MAGIC: &[u8; 8] = b"KVDWAL\0\x01";
const FORMAT_VERSION: u32 = 1;
const SUFFIX: &str = ".wal";

const _: () = assert!(SEGMENT_BYTES_MIN as usize > 2 * SEGMENT_HEADER_BYTES);
const _: () = assert!(SEGMENT_BYTES_DEFAULT >= SEGMENT_BYTES_MIN);

pub fn file_name(seq: u64) -> String {
    format!("{seq:020}{SUFFIX}")
}

pub fn path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(file_name(seq))
}

/// The sequence number of a segment file name, or None for other files.
pub fn parse_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

pub fn encode_header(core: u32, seq: u64, capacity: u64) -> [u8; SEGMENT_HEADER_BYTES] {
    let mut h = [0u8; SEGMENT_HEADER_BYTES];
    h[0..8].copy_from_slice(MAGIC);
    h[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h[12..16].copy_from_slice(&core.to_le_bytes());
    h[16..24].copy_from_slice(&seq.to_le_bytes());
    h[24..32].copy_from_slice(&capacity.to_le_bytes());
    let crc = crc32fast::hash(&h[0..32]);
    h[32..36].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Why a header did not check out.
#[derive(Debug, PartialEq, Eq)]
pub enum HeaderProblem {
    /// Empty or all zeros: created, never written.
    Unwritten,
    /// Shorter than a header block but not empty: the file was cut.
    Truncated,
    /// Written, but not by this format, this core, or with this name.
    Invalid(String),
}

/// Checks a segment's header; returns the capacity it records.
pub fn check_header(buf: &[u8], core: u32, seq: u64) -> Result<u64, HeaderProblem> {
    if buf[..buf.len().min(SEGMENT_HEADER_BYTES)].iter().all(|&b| b == 0) {
        return Err(HeaderProblem::Unwritten);
    }
    if buf.len() < SEGMENT_HEADER_BYTES {
        return Err(HeaderProblem::Truncated);
    }
    let u32_at = |at: usize| u32::from_le_bytes(buf[at..at + 4].try_into().expect("4 bytes"));
    if &buf[0..8] != MAGIC {
        return Err(HeaderProblem::Invalid("bad magic: not a kvd WAL segment".into()));
    }
    if crc32fast::hash(&buf[0..32]) != u32_at(32) {
        return Err(HeaderProblem::Invalid("header checksum mismatch".into()));
    }
    if u32_at(8) != FORMAT_VERSION {
        return Err(HeaderProblem::Invalid(format!("format version {} is not supported", u32_at(8))));
    }
    if u32_at(12) != core {
        return Err(HeaderProblem::Invalid(format!("segment belongs to core {}, not {core}", u32_at(12))));
    }
    let found = u64::from_le_bytes(buf[16..24].try_into().expect("8 bytes"));
    if found != seq {
        return Err(HeaderProblem::Invalid(format!("header says segment {found}, file name says {seq}")));
    }
    Ok(u64::from_le_bytes(buf[24..32].try_into().expect("8 bytes")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        assert_eq!(parse_name(&file_name(7)), Some(7));
        assert_eq!(parse_name(&file_name(u64::MAX)), Some(u64::MAX));
        assert_eq!(parse_name("7.wal"), None);
        assert_eq!(parse_name("00000000000000000007.wal.tmp"), None);
    }

    #[test]
    fn header_checks() {
        let h = encode_header(1, 9, 1 << 20);
        assert_eq!(check_header(&h, 1, 9), Ok(1 << 20));
        assert_eq!(check_header(&h[..100], 1, 9), Err(HeaderProblem::Truncated));
        assert_eq!(check_header(&[], 1, 9), Err(HeaderProblem::Unwritten));
        assert!(matches!(check_header(&h, 2, 9), Err(HeaderProblem::Invalid(_))));
        assert!(matches!(check_header(&h, 1, 8), Err(HeaderProblem::Invalid(_))));
        assert_eq!(check_header(&[0u8; SEGMENT_HEADER_BYTES], 1, 9), Err(HeaderProblem::Unwritten));
        let mut bad = h;
        bad[20] ^= 4;
        assert!(matches!(check_header(&bad, 1, 9), Err(HeaderProblem::Invalid(_))));
    }
}
