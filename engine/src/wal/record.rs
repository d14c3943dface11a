//! WAL record format. Every record is self-describing and checksummed, so a
//! reader can tell a clean end, a torn tail and corruption apart.
//!
//! ```text
//! offset size field
//! 0      4    crc32 (crc32fast, IEEE) of bytes 4..len
//! 4      4    len: header + payload bytes, padding excluded (0 = end of log)
//! 8      1    kind: 1 entry, 2 hard state, 3 conf state
//! 9      1    flags: bit 0 = SYNCED (the batch was written under fsync always)
//! 10     1    entry type (kind 1; Raft's EntryType), else 0
//! 11     1    reserved, 0
//! 12     4    group (Raft group = shard id)
//! 16     8    term
//! 24     8    index (entry: log index; hard state: commit; conf state: index)
//! 32     8    batch: number of the flush that wrote the record
//! 40     …    payload (entry: data; hard state: u64 vote; conf state: opaque)
//!        …    zero padding to a multiple of 8
//! ```
//!
//! A record never spans segments. Padding keeps every record 8-aligned so a
//! recovery scan for valid records after a bad one can step 8 bytes at a time.

use bytes::Bytes;

pub const RECORD_HEADER_BYTES: usize = 40;
/// Records start and end on this alignment.
pub const RECORD_ALIGN_BYTES: usize = 8;
/// The largest record: a maximal value plus key plus command header, with
/// room to spare. Anything claiming more is corrupt.
pub const RECORD_BYTES_MAX: usize = 600 * 1024 * 1024;

const _: () = assert!(RECORD_HEADER_BYTES.is_multiple_of(RECORD_ALIGN_BYTES));
const _: () = assert!(
    RECORD_BYTES_MAX
        > crate::limits::VALUE_BYTES_LIMIT
            + crate::limits::KEY_BYTES_MAX_DEFAULT
            + crate::limits::COMMAND_OVERHEAD_BYTES
            + RECORD_HEADER_BYTES
);
const _: () = assert!(RECORD_BYTES_MAX < u32::MAX as usize);

const KIND_ENTRY: u8 = 1;
const KIND_HARD_STATE: u8 = 2;
const KIND_CONF_STATE: u8 = 3;
pub(crate) const FLAG_SYNCED: u8 = 1;

/// One logical WAL record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// A Raft log entry of `group`.
    Entry { group: u32, term: u64, index: u64, entry_type: u8, data: Bytes },
    /// A Raft hard state of `group`.
    HardState { group: u32, term: u64, vote: u64, commit: u64 },
    /// A group's membership as of `index`, encoded by the replication layer.
    ConfState { group: u32, index: u64, data: Bytes },
}

impl Record {
    pub fn group(&self) -> u32 {
        match self {
            Record::Entry { group, .. } | Record::HardState { group, .. } | Record::ConfState { group, .. } => *group,
        }
    }

    fn payload_len(&self) -> usize {
        match self {
            Record::Entry { data, .. } | Record::ConfState { data, .. } => data.len(),
            Record::HardState { .. } => 8,
        }
    }

    /// Bytes this record occupies on disk, padding included.
    pub fn encoded_len(&self) -> usize {
        align_up(RECORD_HEADER_BYTES + self.payload_len())
    }

    /// Appends the record to `out`. `batch` and `synced` describe the flush
    /// that will write it.
    pub fn encode_into(&self, batch: u64, synced: bool, out: &mut Vec<u8>) {
        let start = out.len();
        let len = RECORD_HEADER_BYTES + self.payload_len();
        assert!(len <= RECORD_BYTES_MAX, "record of {len} bytes exceeds RECORD_BYTES_MAX");
        let (kind, entry_type, group, term, index) = match self {
            Record::Entry { group, term, index, entry_type, .. } => (KIND_ENTRY, *entry_type, *group, *term, *index),
            Record::HardState { group, term, commit, .. } => (KIND_HARD_STATE, 0, *group, *term, *commit),
            Record::ConfState { group, index, .. } => (KIND_CONF_STATE, 0, *group, 0, *index),
        };
        out.extend_from_slice(&[0u8; 4]); // crc, filled below
        out.extend_from_slice(&(len as u32).to_le_bytes());
        out.extend_from_slice(&[kind, if synced { FLAG_SYNCED } else { 0 }, entry_type, 0]);
        out.extend_from_slice(&group.to_le_bytes());
        out.extend_from_slice(&term.to_le_bytes());
        out.extend_from_slice(&index.to_le_bytes());
        out.extend_from_slice(&batch.to_le_bytes());
        match self {
            Record::Entry { data, .. } | Record::ConfState { data, .. } => out.extend_from_slice(data),
            Record::HardState { vote, .. } => out.extend_from_slice(&vote.to_le_bytes()),
        }
        let crc = crc32fast::hash(&out[start + 4..start + len]);
        out[start..start + 4].copy_from_slice(&crc.to_le_bytes());
        out.resize(start + align_up(len), 0);
    }
}

/// What is found at an offset of a segment.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    /// A valid record, its batch and flags, and its on-disk length.
    Record { record: Record, batch: u64, synced: bool, encoded_len: usize },
    /// A zero length field: the writer never wrote here.
    End,
    /// Not a valid record (bad length, checksum, or kind).
    Invalid(&'static str),
}

/// Decodes the record at the start of `buf`. Entry data is copied, so the
/// caller may drop `buf` (a whole segment) afterwards.
pub fn decode(buf: &[u8]) -> Decoded {
    if buf.len() < 8 {
        return if buf.iter().all(|&b| b == 0) { Decoded::End } else { Decoded::Invalid("truncated header") };
    }
    let len = u32::from_le_bytes(buf[4..8].try_into().expect("4 bytes")) as usize;
    if len == 0 && buf[0..4] == [0; 4] {
        return Decoded::End;
    }
    if !(RECORD_HEADER_BYTES..=RECORD_BYTES_MAX).contains(&len) {
        return Decoded::Invalid("length out of range");
    }
    if len > buf.len() {
        return Decoded::Invalid("record extends past the end of the segment");
    }
    let crc = u32::from_le_bytes(buf[0..4].try_into().expect("4 bytes"));
    if crc32fast::hash(&buf[4..len]) != crc {
        return Decoded::Invalid("checksum mismatch");
    }
    let u64_at = |at: usize| u64::from_le_bytes(buf[at..at + 8].try_into().expect("8 bytes"));
    let group = u32::from_le_bytes(buf[12..16].try_into().expect("4 bytes"));
    let (term, index, batch) = (u64_at(16), u64_at(24), u64_at(32));
    let payload = &buf[RECORD_HEADER_BYTES..len];
    let record = match buf[8] {
        KIND_ENTRY => Record::Entry { group, term, index, entry_type: buf[10], data: Bytes::copy_from_slice(payload) },
        KIND_HARD_STATE if payload.len() == 8 => {
            Record::HardState { group, term, vote: u64_at(RECORD_HEADER_BYTES), commit: index }
        }
        KIND_CONF_STATE => Record::ConfState { group, index, data: Bytes::copy_from_slice(payload) },
        _ => return Decoded::Invalid("unknown record kind"),
    };
    Decoded::Record { record, batch, synced: buf[9] & FLAG_SYNCED != 0, encoded_len: align_up(len) }
}

pub(crate) fn align_up(n: usize) -> usize {
    n.div_ceil(RECORD_ALIGN_BYTES) * RECORD_ALIGN_BYTES
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples() -> Vec<Record> {
        vec![
            Record::Entry { group: 3, term: 7, index: 42, entry_type: 0, data: Bytes::from_static(b"hello") },
            Record::Entry { group: 0, term: 1, index: 1, entry_type: 2, data: Bytes::new() },
            Record::HardState { group: u32::MAX, term: 9, vote: 2, commit: 40 },
            Record::ConfState { group: 1, index: 0, data: Bytes::from_static(&[1, 0, 0, 0]) },
        ]
    }

    #[test]
    fn round_trip() {
        let mut buf = Vec::new();
        for (i, r) in samples().iter().enumerate() {
            r.encode_into(i as u64, i % 2 == 0, &mut buf);
        }
        let mut at = 0;
        for (i, want) in samples().into_iter().enumerate() {
            match decode(&buf[at..]) {
                Decoded::Record { record, batch, synced, encoded_len } => {
                    assert_eq!(record, want);
                    assert_eq!((batch, synced), (i as u64, i % 2 == 0));
                    assert_eq!(encoded_len % RECORD_ALIGN_BYTES, 0);
                    at += encoded_len;
                }
                other => panic!("record {i}: {other:?}"),
            }
        }
        assert_eq!(at, buf.len());
        assert_eq!(decode(&[0u8; 64]), Decoded::End);
    }

    #[test]
    fn every_flipped_bit_is_detected() {
        let mut buf = Vec::new();
        samples()[0].encode_into(5, true, &mut buf);
        let len = RECORD_HEADER_BYTES + 5;
        for bit in 0..len * 8 {
            let mut bad = buf.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(matches!(decode(&bad), Decoded::Invalid(_)), "bit {bit} undetected");
        }
    }

    #[test]
    fn every_truncation_is_detected() {
        let mut buf = Vec::new();
        samples()[0].encode_into(5, true, &mut buf);
        for cut in 1..RECORD_HEADER_BYTES + 5 {
            assert!(matches!(decode(&buf[..cut]), Decoded::Invalid(_)), "cut {cut}");
        }
    }
}
