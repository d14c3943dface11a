//! The backup file: every shard's snapshot in one file, written by `kvctl
//! snapshot save` and read by `kvd restore` (`crate::restore`).
//!
//! Little-endian throughout:
//!
//! ```text
//! header (48 bytes)
//!  0  8  magic "KVDBACK\x01"
//!  8  4  format version (1)
//! 12  4  shard count S (the layout's shards; a restore keeps it)
//! 16  4  slot count (16384; a file with another is refused)
//! 20  4  nodes of the cluster it was taken from        (for information)
//! 24  4  replicas per shard of that cluster             (for information)
//! 28  4  cores per node of that cluster                 (for information)
//! 32  8  node id that answered STATUS                  (for information)
//! 40  8  when the save began, Unix milliseconds         (for information)
//! then S shard records, shard 0 first (32 bytes + L each)
//!  0  4  shard
//!  4  4  reserved, 0
//!  8  8  Raft index the copy is as of
//! 16  8  term of that index
//! 24  8  length L of the snapshot
//! 32  L  the shard's snapshot, in the format of engine/src/snapshot.rs
//!        (its own header, entries and checksummed trailer)
//! then the trailer (12 bytes)
//!  0  4  crc32 (crc32fast, IEEE) of every byte before the trailer
//!  4  8  magic "KVDBEND\x01"
//! ```
//!
//! A file is valid only as a whole: [`verify`] checks the header, every
//! shard record (in order, each snapshot decoded and checksummed, its
//! shard, index, term and length matching the record), the trailer's
//! checksum, and that nothing follows it. [`Writer`] writes `FILE.tmp`,
//! fsyncs it, renames it to `FILE` and fsyncs the directory.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use kv_engine::snapshot;

pub const MAGIC: &[u8; 8] = b"KVDBACK\x01";
pub const TRAILER_MAGIC: &[u8; 8] = b"KVDBEND\x01";
pub const FORMAT_VERSION: u32 = 1;
pub const HEADER_BYTES: usize = 48;
pub const SHARD_HEADER_BYTES: usize = 32;
pub const TRAILER_BYTES: usize = 12;
/// Where a snapshot keeps its own total length (engine/src/snapshot.rs).
const SNAPSHOT_LENGTH_AT: usize = 40;

/// What the header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub shards: u32,
    pub slots: u32,
    pub nodes: u32,
    pub replicas: u32,
    pub cores: u32,
    pub node_id: u64,
    pub created_ms: u64,
}

impl Header {
    pub fn encode(&self) -> [u8; HEADER_BYTES] {
        let mut b = [0u8; HEADER_BYTES];
        b[0..8].copy_from_slice(MAGIC);
        b[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&self.shards.to_le_bytes());
        b[16..20].copy_from_slice(&self.slots.to_le_bytes());
        b[20..24].copy_from_slice(&self.nodes.to_le_bytes());
        b[24..28].copy_from_slice(&self.replicas.to_le_bytes());
        b[28..32].copy_from_slice(&self.cores.to_le_bytes());
        b[32..40].copy_from_slice(&self.node_id.to_le_bytes());
        b[40..48].copy_from_slice(&self.created_ms.to_le_bytes());
        b
    }
}

/// One shard of a verified backup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardCopy<'a> {
    pub shard: u32,
    pub index: u64,
    pub term: u64,
    /// Entries in its snapshot.
    pub keys: u64,
    /// The snapshot file's bytes.
    pub snapshot: &'a [u8],
}

/// A verified backup file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backup<'a> {
    pub header: Header,
    pub shards: Vec<ShardCopy<'a>>,
}

impl Backup<'_> {
    pub fn keys(&self) -> u64 {
        self.shards.iter().map(|s| s.keys).sum()
    }
}

/// Why a backup file is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

fn shard_record_header(shard: u32, index: u64, term: u64, len: u64) -> [u8; SHARD_HEADER_BYTES] {
    let mut b = [0u8; SHARD_HEADER_BYTES];
    b[0..4].copy_from_slice(&shard.to_le_bytes());
    b[8..16].copy_from_slice(&index.to_le_bytes());
    b[16..24].copy_from_slice(&term.to_le_bytes());
    b[24..32].copy_from_slice(&len.to_le_bytes());
    b
}

fn trailer(crc: crc32fast::Hasher) -> [u8; TRAILER_BYTES] {
    let mut b = [0u8; TRAILER_BYTES];
    b[0..4].copy_from_slice(&crc.finalize().to_le_bytes());
    b[4..12].copy_from_slice(TRAILER_MAGIC);
    b
}

/// A whole backup in memory (what [`Writer`] writes, for tests and tools).
pub fn encode(header: &Header, shards: &[(u32, u64, u64, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut crc = crc32fast::Hasher::new();
    let mut put = |bytes: &[u8]| {
        crc.update(bytes);
        out.extend_from_slice(bytes);
    };
    put(&header.encode());
    for (shard, index, term, snap) in shards {
        put(&shard_record_header(*shard, *index, *term, snap.len() as u64));
        put(snap);
    }
    let t = trailer(crc);
    out.extend_from_slice(&t);
    out
}

/// Verifies a whole backup file's bytes (see the module docs); the error
/// says what is wrong and where.
pub fn verify(data: &[u8]) -> Result<Backup<'_>, Invalid> {
    let bad = |why: String| Err(Invalid(why));
    let u32_at = |at: usize| u32::from_le_bytes(data[at..at + 4].try_into().expect("4 bytes"));
    let u64_at = |at: usize| u64::from_le_bytes(data[at..at + 8].try_into().expect("8 bytes"));
    if data.len() < 8 || &data[0..8] != MAGIC {
        return bad("not a kvd backup (no KVDBACK magic at its start)".into());
    }
    if data.len() < HEADER_BYTES + TRAILER_BYTES {
        return bad(format!("truncated: {} bytes, shorter than a header and a trailer", data.len()));
    }
    if u32_at(8) != FORMAT_VERSION {
        return bad(format!("format version {} is not supported (this kvd reads {FORMAT_VERSION})", u32_at(8)));
    }
    let header = Header {
        shards: u32_at(12),
        slots: u32_at(16),
        nodes: u32_at(20),
        replicas: u32_at(24),
        cores: u32_at(28),
        node_id: u64_at(32),
        created_ms: u64_at(40),
    };
    if header.slots != kv_engine::slot::SLOT_COUNT as u32 {
        return bad(format!("the header says {} slots; kvd has {}", header.slots, kv_engine::slot::SLOT_COUNT));
    }
    if header.shards == 0 || header.shards > kv_replication::layout::SHARDS_MAX {
        return bad(format!("the header says {} shards (1..={})", header.shards, kv_replication::layout::SHARDS_MAX));
    }
    let body_end = data.len() - TRAILER_BYTES;
    let mut at = HEADER_BYTES;
    let mut shards = Vec::with_capacity(header.shards as usize);
    for expected in 0..header.shards {
        if at + SHARD_HEADER_BYTES > body_end {
            return bad(format!(
                "truncated: the file ends before shard {expected} of {} (at byte {at})",
                header.shards
            ));
        }
        let (shard, index, term, len) = (u32_at(at), u64_at(at + 8), u64_at(at + 16), u64_at(at + 24));
        if shard != expected || u32_at(at + 4) != 0 {
            return bad(format!(
                "corrupt: the record at byte {at} should be shard {expected}'s, its header says {shard}"
            ));
        }
        at += SHARD_HEADER_BYTES;
        let Some(end) = usize::try_from(len).ok().and_then(|l| at.checked_add(l)).filter(|&e| e <= body_end) else {
            return bad(format!(
                "truncated or corrupt: shard {shard}'s snapshot of {len} bytes at byte {at} runs past the end \
                 of the file ({} bytes)",
                data.len()
            ));
        };
        let snap = &data[at..end];
        let origin = PathBuf::from(format!("<shard {shard} at byte {at} of the backup>"));
        let (meta, entries) =
            snapshot::decode(snap, &origin).map_err(|e| Invalid(format!("shard {shard}'s snapshot: {e}")))?;
        let own_len =
            snap.get(SNAPSHOT_LENGTH_AT..SNAPSHOT_LENGTH_AT + 8).map(|b| u64::from_le_bytes(b.try_into().expect("8")));
        if own_len != Some(len) {
            return bad(format!("corrupt: shard {shard}'s snapshot says it is {own_len:?} bytes, its record {len}"));
        }
        if (meta.group, meta.index, meta.term) != (shard, index, term) {
            return bad(format!(
                "corrupt: shard {shard}'s record says index {index} term {term}, its snapshot is of shard {} at \
                 index {} term {}",
                meta.group, meta.index, meta.term
            ));
        }
        shards.push(ShardCopy { shard, index, term, keys: entries.len() as u64, snapshot: snap });
        at = end;
    }
    if at != body_end {
        return bad(format!(
            "corrupt: {} bytes between the last shard and the trailer (or a trailer missing)",
            body_end as i64 - at as i64
        ));
    }
    let stored_crc = u32_at(body_end);
    if &data[body_end + 4..] != TRAILER_MAGIC {
        return bad("truncated or corrupt: no KVDBEND trailer at the end of the file".into());
    }
    if crc32fast::hash(&data[..body_end]) != stored_crc {
        return bad("corrupt: the file's checksum does not match (it changed after it was written)".into());
    }
    Ok(Backup { header, shards })
}

/// Writes a backup file durably: `FILE.tmp`, fsync, rename to `FILE`,
/// fsync the directory. Dropped unfinished, it removes `FILE.tmp`.
pub struct Writer {
    path: PathBuf,
    tmp: PathBuf,
    out: Option<BufWriter<File>>,
    crc: crc32fast::Hasher,
    bytes: u64,
    shards_left: u32,
    next_shard: u32,
}

impl Writer {
    /// Starts `path` with `header`; the shards follow with [`Writer::shard`].
    pub fn create(path: &Path, header: &Header) -> std::io::Result<Writer> {
        let mut name = path.file_name().ok_or_else(|| std::io::Error::other("the file name is missing"))?.to_owned();
        name.push(".tmp");
        let tmp = path.with_file_name(name);
        let file = File::create(&tmp)?;
        let mut w = Writer {
            path: path.to_path_buf(),
            tmp,
            out: Some(BufWriter::with_capacity(1 << 20, file)),
            crc: crc32fast::Hasher::new(),
            bytes: 0,
            shards_left: header.shards,
            next_shard: 0,
        };
        w.put(&header.encode())?;
        Ok(w)
    }

    fn put(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.crc.update(bytes);
        self.bytes += bytes.len() as u64;
        self.out.as_mut().expect("not finished").write_all(bytes)
    }

    /// Appends the next shard's record (shards go in order, from 0).
    pub fn shard(&mut self, shard: u32, index: u64, term: u64, snapshot: &[u8]) -> std::io::Result<()> {
        assert!(self.shards_left > 0 && shard == self.next_shard, "shards are written in order, each once");
        self.put(&shard_record_header(shard, index, term, snapshot.len() as u64))?;
        self.put(snapshot)?;
        self.shards_left -= 1;
        self.next_shard += 1;
        Ok(())
    }

    /// Writes the trailer and makes the file durable under its name;
    /// returns its length.
    pub fn finish(mut self) -> std::io::Result<u64> {
        assert_eq!(self.shards_left, 0, "every shard of the header is written");
        let t = trailer(self.crc.clone());
        let mut out = self.out.take().expect("not finished");
        out.write_all(&t)?;
        let file = out.into_inner().map_err(|e| e.into_error())?;
        // IMPORTANT: fsync, then rename, then fsync the directory: a crash
        // leaves the old FILE or the whole new one, never part of it.
        file.sync_all()?;
        drop(file);
        std::fs::rename(&self.tmp, &self.path)?;
        let dir = match self.path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        kv_engine::fsutil::sync_dir(&dir)?;
        Ok(self.bytes + TRAILER_BYTES as u64)
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        if self.out.take().is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use kv_engine::snapshot::SnapshotMeta;
    use kv_engine::Stored;

    fn header(shards: u32) -> Header {
        Header { shards, slots: 16384, nodes: 3, replicas: 3, cores: 2, node_id: 2, created_ms: 1_700_000_000_000 }
    }

    fn snap(shard: u32, keys: usize) -> (u64, u64, Vec<u8>) {
        let (index, term) = (100 + shard as u64, 3);
        let meta = SnapshotMeta { group: shard, index, term, conf_state: Bytes::from_static(b"\x08\x01") };
        let entries: Vec<(Bytes, Stored)> = (0..keys)
            .map(|i| {
                let value = Bytes::from(vec![i as u8; i % 50]);
                (Bytes::from(format!("s{shard}-k{i}")), Stored::with_expiry(value, i as u64 + 1, (i % 3) as u64 * 1000))
            })
            .collect();
        (index, term, snapshot::encode_blocking(&meta, &entries))
    }

    fn sample(shards: u32) -> Vec<u8> {
        let snaps: Vec<(u64, u64, Vec<u8>)> = (0..shards).map(|s| snap(s, 3 + s as usize * 2)).collect();
        let refs: Vec<(u32, u64, u64, &[u8])> =
            snaps.iter().enumerate().map(|(s, (i, t, b))| (s as u32, *i, *t, b.as_slice())).collect();
        encode(&header(shards), &refs)
    }

    #[test]
    fn round_trip() {
        let data = sample(4);
        let b = verify(&data).unwrap();
        assert_eq!(b.header, header(4));
        assert_eq!(b.shards.len(), 4);
        for (s, copy) in b.shards.iter().enumerate() {
            let (index, term, bytes) = snap(s as u32, 3 + s * 2);
            assert_eq!((copy.shard, copy.index, copy.term, copy.keys), (s as u32, index, term, 3 + s as u64 * 2));
            assert_eq!(copy.snapshot, bytes.as_slice());
        }
        assert_eq!(b.keys(), 3 + 5 + 7 + 9);
    }

    #[test]
    fn the_writer_writes_what_encode_does_and_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("backup.kvd");
        let mut w = Writer::create(&path, &header(2)).unwrap();
        for s in 0..2 {
            let (index, term, bytes) = snap(s, 3 + s as usize * 2);
            w.shard(s, index, term, &bytes).unwrap();
        }
        let len = w.finish().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), sample(2));
        assert_eq!(len, sample(2).len() as u64);
        assert!(!dir.path().join("backup.kvd.tmp").exists());
        // An unfinished writer leaves nothing behind.
        let other = dir.path().join("other.kvd");
        let w = Writer::create(&other, &header(2)).unwrap();
        assert!(dir.path().join("other.kvd.tmp").exists());
        drop(w);
        assert!(!dir.path().join("other.kvd.tmp").exists() && !other.exists());
    }

    #[test]
    fn every_truncation_is_refused() {
        let data = sample(3);
        for len in 0..data.len() {
            let err = verify(&data[..len]).expect_err(&format!("cut at {len}"));
            assert!(!err.0.is_empty());
        }
        // And bytes after the trailer.
        let mut longer = data.clone();
        longer.push(0);
        assert!(verify(&longer).is_err());
    }

    #[test]
    fn every_flipped_byte_is_refused() {
        let data = sample(2);
        for at in 0..data.len() {
            // Header bytes "for information" are covered by the file's checksum.
            let mut bad = data.clone();
            bad[at] ^= 0x10;
            assert!(verify(&bad).is_err(), "flip at {at}");
        }
    }

    #[test]
    fn messages_name_what_is_wrong() {
        let data = sample(3);
        let mid = data.len() / 2;
        let mut flipped = data.clone();
        flipped[mid] ^= 1;
        let err = verify(&flipped).unwrap_err().0;
        assert!(err.contains("shard") || err.contains("checksum"), "{err}");
        let err = verify(&data[..data.len() - 100]).unwrap_err().0;
        assert!(err.contains("truncated"), "{err}");
        assert!(verify(b"hello world").unwrap_err().0.contains("not a kvd backup"));
    }
}
