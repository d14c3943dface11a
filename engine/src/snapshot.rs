//! Per-shard point-in-time snapshots.
//!
//! A snapshot holds one shard's whole map as of a Raft index. It lets the WAL
//! drop segments (see `Wal::compact`) and, later, lets a lagging replica catch
//! up by receiving the file.
//!
//! File `<snap-dir>/<group, 5 digits>-<index, 20 digits>.snap`, little-endian:
//!
//! ```text
//! 0  8  magic "KVDSNAP\x01"
//! 8  4  format version (3; 2 is read too)
//! 12 4  group
//! 16 8  index (last Raft index the snapshot includes)
//! 24 8  term of that index
//! 32 8  entry count N
//! 40 8  total file length in bytes, trailer included
//! 48 4  conf state length C
//! 52 C  conf state (opaque, encoded by the replication layer)
//! then N × { u32 key length K, u32 value length V (bit 31: the value is
//!             a zstd frame, format 3), u64 version, u64 expires-at (Unix
//!             ms, 0 = never), K bytes, V bytes }
//! then trailer: u32 crc32 of every byte before it, 8 bytes "KVDSEND\x01"
//! ```
//!
//! Write protocol: write `<name>.tmp`, fdatasync, rename to `<name>`, fsync
//! the directory. A crash leaves either no snapshot or a complete one; stray
//! `.tmp` files are removed at startup.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures_lite::{AsyncWrite, AsyncWriteExt};
use glommio::io::{DmaFile, DmaStreamWriter, DmaStreamWriterBuilder, OpenOptions};

use crate::evict::Tracking;
use crate::shard::{MapBuilder, ShardMap, Stored};

const MAGIC: &[u8; 8] = b"KVDSNAP\x01";
const TRAILER_MAGIC: &[u8; 8] = b"KVDSEND\x01";
const FORMAT_VERSION: u32 = 3;
/// The format before compressed values; read the same way.
const FORMAT_VERSION_PLAIN: u32 = 2;
/// Bit of an entry's value length set when the value is a zstd frame.
const VALUE_COMPRESSED_BIT: u32 = 1 << 31;
const _: () = assert!(crate::limits::VALUE_BYTES_LIMIT < VALUE_COMPRESSED_BIT as usize);
const HEADER_BYTES: usize = 52;
const ENTRY_HEADER_BYTES: usize = 24;
const TRAILER_BYTES: usize = 12;
/// Write buffer of the snapshot writer.
const WRITE_BUFFER_BYTES: usize = 256 * 1024;
/// Entries serialised between cooperative yields, so a big snapshot does not
/// stall requests on the core.
const ENTRIES_PER_YIELD_CHECK: usize = 256;

/// What a snapshot is of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotMeta {
    pub group: u32,
    pub index: u64,
    pub term: u64,
    pub conf_state: Bytes,
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("{op} {}: {source}", path.display())]
    Io { path: PathBuf, op: &'static str, source: std::io::Error },
    #[error("snapshot {} is corrupt: {reason}. Move it aside to fall back to an older snapshot, or restore the node from a replica", path.display())]
    Corrupt { path: PathBuf, reason: String },
}

fn io_err<'a>(path: &'a Path, op: &'static str) -> impl FnOnce(std::io::Error) -> SnapshotError + 'a {
    move |source| SnapshotError::Io { path: path.to_path_buf(), op, source }
}

pub fn file_name(group: u32, index: u64) -> String {
    format!("{group:05}-{index:020}.snap")
}

/// The (group, index) a snapshot file name stands for.
pub fn parse_file_name(name: &str) -> Option<(u32, u64)> {
    let stem = name.strip_suffix(".snap")?;
    let (group, index) = stem.split_once('-')?;
    Some((group.parse().ok()?, index.parse().ok()?))
}

/// Snapshot files in `dir` by group, oldest first. Removes stray `.tmp` files
/// left by a crash mid-write.
pub fn list(dir: &Path) -> Result<BTreeMap<u32, Vec<(u64, PathBuf)>>, SnapshotError> {
    let mut out: BTreeMap<u32, Vec<(u64, PathBuf)>> = BTreeMap::new();
    for entry in std::fs::read_dir(dir).map_err(io_err(dir, "list snapshot directory"))? {
        let entry = entry.map_err(io_err(dir, "list snapshot directory"))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".snap.tmp") {
            std::fs::remove_file(entry.path()).map_err(io_err(&entry.path(), "remove partial snapshot"))?;
            continue;
        }
        if let Some((group, index)) = parse_file_name(&name) {
            out.entry(group).or_default().push((index, entry.path()));
        }
    }
    for files in out.values_mut() {
        files.sort();
    }
    Ok(out)
}

fn total_len(meta: &SnapshotMeta, entries: &[(Bytes, Stored)]) -> u64 {
    let body: usize = entries.iter().map(|(k, s)| ENTRY_HEADER_BYTES + k.len() + s.value.len()).sum();
    (HEADER_BYTES + meta.conf_state.len() + body + TRAILER_BYTES) as u64
}

fn header_bytes(meta: &SnapshotMeta, entries: &[(Bytes, Stored)]) -> Vec<u8> {
    let mut header = Vec::with_capacity(HEADER_BYTES + meta.conf_state.len());
    header.extend_from_slice(MAGIC);
    header.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    header.extend_from_slice(&meta.group.to_le_bytes());
    header.extend_from_slice(&meta.index.to_le_bytes());
    header.extend_from_slice(&meta.term.to_le_bytes());
    header.extend_from_slice(&(entries.len() as u64).to_le_bytes());
    header.extend_from_slice(&total_len(meta, entries).to_le_bytes());
    header.extend_from_slice(&(meta.conf_state.len() as u32).to_le_bytes());
    header.extend_from_slice(&meta.conf_state);
    header
}

fn entry_head(key: &Bytes, stored: &Stored) -> [u8; ENTRY_HEADER_BYTES] {
    let mut head = [0u8; ENTRY_HEADER_BYTES];
    head[0..4].copy_from_slice(&(key.len() as u32).to_le_bytes());
    let compressed = if stored.is_compressed() { VALUE_COMPRESSED_BIT } else { 0 };
    head[4..8].copy_from_slice(&(stored.value.len() as u32 | compressed).to_le_bytes());
    head[8..16].copy_from_slice(&stored.version.to_le_bytes());
    head[16..24].copy_from_slice(&stored.expires_at_ms.to_le_bytes());
    head
}

fn trailer_bytes(crc: crc32fast::Hasher) -> [u8; TRAILER_BYTES] {
    let mut trailer = [0u8; TRAILER_BYTES];
    trailer[0..4].copy_from_slice(&crc.finalize().to_le_bytes());
    trailer[4..12].copy_from_slice(TRAILER_MAGIC);
    trailer
}

/// Streams the encoding of a snapshot into `out`, yielding to other tasks
/// between entries so a large shard does not stall its core.
async fn encode_into<W: AsyncWrite + Unpin>(
    meta: &SnapshotMeta,
    entries: &[(Bytes, Stored)],
    out: &mut W,
) -> std::io::Result<()> {
    let mut crc = crc32fast::Hasher::new();
    // Entries gather in `pending` and are checksummed and written a
    // buffer at a time: per part, small checksum updates and writes cost
    // more than the bytes.
    let mut pending = Vec::with_capacity(ENCODE_BUFFER_BYTES + ENTRY_HEADER_BYTES);
    pending.extend_from_slice(&header_bytes(meta, entries));
    for (i, (key, stored)) in entries.iter().enumerate() {
        if i == entries.len() / 2 {
            flush_pending(&mut crc, &mut pending, out).await?;
            // Crash point: half a snapshot written.
            fail::fail_point!("snapshot::mid_write");
        }
        put_entry(&mut pending, key, stored);
        if pending.len() >= ENCODE_BUFFER_BYTES {
            flush_pending(&mut crc, &mut pending, out).await?;
        }
        if i % ENTRIES_PER_YIELD_CHECK == 0 {
            glommio::yield_if_needed().await;
        }
    }
    flush_pending(&mut crc, &mut pending, out).await?;
    out.write_all(&trailer_bytes(crc)).await
}

/// Bytes of encoded entries checksummed and written at a time.
const ENCODE_BUFFER_BYTES: usize = 64 * 1024;

fn put_entry(out: &mut Vec<u8>, key: &Bytes, stored: &Stored) {
    out.extend_from_slice(&entry_head(key, stored));
    out.extend_from_slice(key);
    out.extend_from_slice(&stored.value);
}

async fn flush_pending<W: AsyncWrite + Unpin>(
    crc: &mut crc32fast::Hasher,
    pending: &mut Vec<u8>,
    out: &mut W,
) -> std::io::Result<()> {
    crc.update(pending);
    out.write_all(pending).await?;
    pending.clear();
    Ok(())
}

/// A snapshot's bytes in memory, encoded in one go without yielding (the
/// simulator's way; on a core, [`encode`] lets other tasks run meanwhile).
/// The same bytes as [`encode`].
pub fn encode_blocking(meta: &SnapshotMeta, entries: &[(Bytes, Stored)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(total_len(meta, entries) as usize);
    out.extend_from_slice(&header_bytes(meta, entries));
    for (key, stored) in entries {
        put_entry(&mut out, key, stored);
    }
    let mut crc = crc32fast::Hasher::new();
    crc.update(&out);
    out.extend_from_slice(&trailer_bytes(crc));
    out
}

/// A snapshot's bytes in memory (what a leader sends a lagging follower).
pub async fn encode(meta: &SnapshotMeta, entries: &[(Bytes, Stored)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(total_len(meta, entries) as usize);
    encode_into(meta, entries, &mut out).await.expect("writing to memory cannot fail");
    out
}

/// Writes a snapshot durably and returns its path. `entries` is the shard's
/// content at `meta.index` (a cheap copy: values are reference-counted).
pub async fn write(dir: &Path, meta: &SnapshotMeta, entries: Vec<(Bytes, Stored)>) -> Result<PathBuf, SnapshotError> {
    let (tmp, mut writer) = create_tmp(dir, meta).await?;
    encode_into(meta, &entries, &mut writer).await.map_err(io_err(&tmp, "write snapshot"))?;
    commit(dir, meta, tmp, writer).await
}

/// Writes a snapshot received as bytes (already verified with [`decode`])
/// durably and returns its path.
pub async fn write_encoded(dir: &Path, meta: &SnapshotMeta, bytes: &[u8]) -> Result<PathBuf, SnapshotError> {
    let (tmp, mut writer) = create_tmp(dir, meta).await?;
    writer.write_all(bytes).await.map_err(io_err(&tmp, "write snapshot"))?;
    commit(dir, meta, tmp, writer).await
}

async fn create_tmp(dir: &Path, meta: &SnapshotMeta) -> Result<(PathBuf, DmaStreamWriter), SnapshotError> {
    let tmp = dir.join(format!("{}.tmp", file_name(meta.group, meta.index)));
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .dma_open(&tmp)
        .await
        .map_err(|e| io_err(&tmp, "create snapshot")(e.into()))?;
    Ok((tmp, DmaStreamWriterBuilder::new(file).with_buffer_size(WRITE_BUFFER_BYTES).build()))
}

/// Makes the temporary file durable and renames it into place.
async fn commit(
    dir: &Path,
    meta: &SnapshotMeta,
    tmp: PathBuf,
    mut writer: DmaStreamWriter,
) -> Result<PathBuf, SnapshotError> {
    let path = dir.join(file_name(meta.group, meta.index));
    // close() fdatasyncs, then truncates the block padding away.
    writer.close().await.map_err(io_err(&tmp, "write snapshot"))?;
    // IMPORTANT: fsync — make the truncated length durable too.
    let reopened = DmaFile::open(&tmp).await.map_err(|e| io_err(&tmp, "reopen snapshot")(e.into()))?;
    reopened.fdatasync().await.map_err(|e| io_err(&tmp, "fdatasync snapshot")(e.into()))?;
    reopened.close().await.map_err(|e| io_err(&tmp, "close snapshot")(e.into()))?;
    glommio::io::rename(&tmp, &path).await.map_err(|e| io_err(&path, "rename snapshot")(e.into()))?;
    // IMPORTANT: fsync folder — the rename is the commit point.
    let d = glommio::io::Directory::open(dir).await.map_err(|e| io_err(dir, "open snapshot directory")(e.into()))?;
    d.sync().await.map_err(|e| io_err(dir, "fsync snapshot directory")(e.into()))?;
    Ok(path)
}

/// Reads and verifies a snapshot file.
pub fn read(path: &Path) -> Result<(SnapshotMeta, Vec<(Bytes, Stored)>), SnapshotError> {
    let data = std::fs::read(path).map_err(io_err(path, "read snapshot"))?;
    decode(&data, path)
}

/// Verifies and decodes a snapshot's bytes; `path` names where they came
/// from in errors.
pub fn decode(data: &[u8], path: &Path) -> Result<(SnapshotMeta, Vec<(Bytes, Stored)>), SnapshotError> {
    let body = verified_body(data, path)?;
    let (meta, mut entries) = parse(body, path)?;
    let mut out = Vec::with_capacity(entries.count.min(1 << 24) as usize);
    while let Some((key, stored)) = entries.next_entry()? {
        out.push((Bytes::copy_from_slice(key), stored));
    }
    Ok((meta, out))
}

/// Bytes checksummed between cooperative yields by [`load_map`].
const CHECKSUM_BYTES_PER_YIELD_CHECK: usize = 1 << 20;

/// Verifies a snapshot's bytes and builds its shard map, yielding to
/// other tasks every few entries: how a follower loads what its leader
/// sent without holding its core (the map is then swapped in whole with
/// [`ShardMap::replace_with`]). The same checks as [`decode`].
/// `tracking` is what the map it will replace records for eviction.
pub async fn load_map(data: &[u8], path: &Path, tracking: Tracking) -> Result<(SnapshotMeta, ShardMap), SnapshotError> {
    let (total, claimed) = trailer_of(data, path)?;
    let mut crc = crc32fast::Hasher::new();
    for piece in data[..total - TRAILER_BYTES].chunks(CHECKSUM_BYTES_PER_YIELD_CHECK) {
        crc.update(piece);
        glommio::yield_if_needed().await;
    }
    if crc.finalize() != claimed {
        return Err(corrupt(path, "checksum mismatch"));
    }
    let (meta, mut entries) = parse(&data[..total - TRAILER_BYTES], path)?;
    let mut built = MapBuilder::new(meta.index, entries.count.min(1 << 24) as usize).tracking(tracking);
    let mut i = 0usize;
    while let Some((key, stored)) = entries.next_entry()? {
        if stored.version > meta.index {
            // Bytes from a peer: an error, not the assertion in `add`.
            return Err(corrupt(path, "an entry is newer than the snapshot"));
        }
        built.add(key, &stored);
        i += 1;
        if i.is_multiple_of(ENTRIES_PER_YIELD_CHECK) {
            glommio::yield_if_needed().await;
        }
    }
    Ok((meta, built.finish()))
}

fn corrupt(path: &Path, reason: &str) -> SnapshotError {
    SnapshotError::Corrupt { path: path.to_path_buf(), reason: reason.to_string() }
}

/// The length a snapshot's header claims (checked against `data`) and the
/// checksum its trailer holds.
fn trailer_of(data: &[u8], path: &Path) -> Result<(usize, u32), SnapshotError> {
    if data.len() < HEADER_BYTES + TRAILER_BYTES || &data[0..8] != MAGIC {
        return Err(corrupt(path, "not a kvd snapshot (bad magic or too short)"));
    }
    let u32_at = |at: usize| u32::from_le_bytes(data[at..at + 4].try_into().expect("4 bytes"));
    if u32_at(8) != FORMAT_VERSION && u32_at(8) != FORMAT_VERSION_PLAIN {
        return Err(corrupt(path, &format!("format version {} is not supported", u32_at(8))));
    }
    let total = u64::from_le_bytes(data[40..48].try_into().expect("8 bytes")) as usize;
    if total > data.len() || total < HEADER_BYTES + TRAILER_BYTES {
        return Err(corrupt(path, &format!("header says {total} bytes, file has {}", data.len())));
    }
    if &data[total - TRAILER_BYTES + 4..total] != TRAILER_MAGIC {
        return Err(corrupt(path, "checksum mismatch"));
    }
    Ok((total, u32_at(total - TRAILER_BYTES)))
}

/// The body (header and entries, no trailer) of a snapshot whose checksum
/// holds.
fn verified_body<'a>(data: &'a [u8], path: &Path) -> Result<&'a [u8], SnapshotError> {
    let (total, claimed) = trailer_of(data, path)?;
    let body = &data[..total - TRAILER_BYTES];
    if crc32fast::hash(body) != claimed {
        return Err(corrupt(path, "checksum mismatch"));
    }
    Ok(body)
}

/// A verified body's metadata, and a reader of its entries.
fn parse<'a>(body: &'a [u8], path: &'a Path) -> Result<(SnapshotMeta, Entries<'a>), SnapshotError> {
    let u32_at = |at: usize| u32::from_le_bytes(body[at..at + 4].try_into().expect("4 bytes"));
    let u64_at = |at: usize| u64::from_le_bytes(body[at..at + 8].try_into().expect("8 bytes"));
    let conf_len = u32_at(48) as usize;
    let meta = SnapshotMeta {
        group: u32_at(12),
        index: u64_at(16),
        term: u64_at(24),
        conf_state: Bytes::copy_from_slice(
            body.get(HEADER_BYTES..HEADER_BYTES + conf_len).ok_or_else(|| corrupt(path, "conf state overruns"))?,
        ),
    };
    let entries = Entries { body, path, at: HEADER_BYTES + conf_len, count: u64_at(32), read: 0 };
    Ok((meta, entries))
}

/// The entries of a snapshot body, read one at a time.
struct Entries<'a> {
    body: &'a [u8],
    path: &'a Path,
    at: usize,
    /// Entries the header announces, and how many were read.
    count: u64,
    read: u64,
}

impl<'a> Entries<'a> {
    /// The next entry's key and value; `None` after the last, once the
    /// body is used up exactly.
    fn next_entry(&mut self) -> Result<Option<(&'a [u8], Stored)>, SnapshotError> {
        let (body, path) = (self.body, self.path);
        if self.read == self.count {
            return match self.at == body.len() {
                true => Ok(None),
                false => Err(corrupt(path, "bytes left after the last entry")),
            };
        }
        let head = body.get(self.at..self.at + ENTRY_HEADER_BYTES).ok_or_else(|| corrupt(path, "entry overruns"))?;
        let k = u32::from_le_bytes(head[0..4].try_into().expect("4 bytes")) as usize;
        let v = u32::from_le_bytes(head[4..8].try_into().expect("4 bytes"));
        let (compressed, v) = (v & VALUE_COMPRESSED_BIT != 0, (v & !VALUE_COMPRESSED_BIT) as usize);
        let version = u64::from_le_bytes(head[8..16].try_into().expect("8 bytes"));
        let expires_at_ms = u64::from_le_bytes(head[16..24].try_into().expect("8 bytes"));
        self.at += ENTRY_HEADER_BYTES;
        let kv = body.get(self.at..self.at + k + v).ok_or_else(|| corrupt(path, "entry overruns"))?;
        let value = Bytes::copy_from_slice(&kv[k..]);
        let stored = match compressed {
            true if zstd::zstd_safe::get_frame_content_size(&value).ok().flatten().is_none() => {
                return Err(corrupt(path, "a compressed value is not a zstd frame"));
            }
            true => Stored::compressed(value, version, expires_at_ms),
            false => Stored::with_expiry(value, version, expires_at_ms),
        };
        self.at += k + v;
        self.read += 1;
        Ok(Some((&kv[..k], stored)))
    }
}

/// Removes the snapshots of `group` older than `keep_index`.
pub async fn remove_older(dir: &Path, group: u32, keep_index: u64) -> Result<usize, SnapshotError> {
    let mut removed = 0;
    for (index, path) in list(dir)?.remove(&group).unwrap_or_default() {
        if index < keep_index {
            glommio::io::remove(&path).await.map_err(|e| io_err(&path, "remove old snapshot")(e.into()))?;
            removed += 1;
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::tests::run;

    fn sample(n: usize) -> Vec<(Bytes, Stored)> {
        (0..n)
            .map(|i| {
                let value = Bytes::from(vec![i as u8; i % 300]);
                (Bytes::from(format!("key-{i}")), Stored::with_expiry(value, i as u64 + 1, i as u64 * 7))
            })
            .collect()
    }

    #[test]
    fn write_read_round_trip_and_cleanup() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_path_buf();
        let meta = SnapshotMeta { group: 3, index: 5000, term: 7, conf_state: Bytes::from_static(b"cs") };
        let m = meta.clone();
        run(move || async move {
            write(&d, &SnapshotMeta { index: 10, ..m.clone() }, sample(3)).await.unwrap();
            write(&d, &m, sample(5000)).await.unwrap();
            assert_eq!(remove_older(&d, 3, 5000).await.unwrap(), 1);
        });
        std::fs::write(dir.path().join("00003-00000000000000009999.snap.tmp"), b"partial").unwrap();
        let listed = list(dir.path()).unwrap();
        assert_eq!(listed[&3].len(), 1);
        assert_eq!(parse_file_name(&file_name(3, 5000)), Some((3, 5000)));
        assert_eq!(parse_file_name("00003-x.snap"), None);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "tmp file removed");
        let (got_meta, got) = read(&listed[&3][0].1).unwrap();
        assert_eq!(got_meta, meta);
        assert_eq!(got, sample(5000));
    }

    #[test]
    fn encoded_bytes_decode_and_install_as_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_path_buf();
        let meta = SnapshotMeta { group: 1, index: 77, term: 2, conf_state: Bytes::from_static(b"c") };
        let m = meta.clone();
        let path = run(move || async move {
            let bytes = encode(&m, &sample(300)).await;
            assert_eq!(decode(&bytes, Path::new("memory")).unwrap(), (m.clone(), sample(300)));
            assert_eq!(encode_blocking(&m, &sample(300)), bytes, "both encoders write the same bytes");
            // Loading builds the map restoring the decoded entries builds.
            let at_1000 = SnapshotMeta { index: 1000, ..m.clone() };
            let (loaded_meta, loaded) =
                load_map(&encode_blocking(&at_1000, &sample(300)), Path::new("memory"), Tracking::None).await.unwrap();
            let mut restored = ShardMap::new();
            restored.restore(1000, sample(300));
            assert_eq!(loaded_meta, at_1000);
            assert_eq!(loaded.applied_index(), 1000);
            let pairs = |map: &ShardMap| {
                let mut p = map.pairs();
                p.sort_by(|a, b| a.0.cmp(&b.0));
                p
            };
            assert_eq!(pairs(&loaded), pairs(&restored));
            assert_eq!(pairs(&loaded).len(), 300);
            assert_eq!(loaded.data_bytes(), restored.data_bytes());
            // Versions 1..=300 at index 77: bytes a peer sent are refused,
            // not asserted on.
            let newer = load_map(&bytes, Path::new("memory"), Tracking::None).await.map(|_| ());
            assert!(matches!(newer, Err(SnapshotError::Corrupt { .. })), "{newer:?}");
            write_encoded(&d, &m, &bytes).await.unwrap()
        });
        assert_eq!(read(&path).unwrap(), (meta, sample(300)));
    }

    #[test]
    fn corruption_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_path_buf();
        let path = run(move || async move {
            let meta = SnapshotMeta { group: 0, index: 1, term: 1, conf_state: Bytes::new() };
            write(&d, &meta, sample(50)).await.unwrap()
        });
        let good = std::fs::read(&path).unwrap();
        for at in [0, 20, 60, good.len() / 2, good.len() - 1] {
            let mut bad = good.clone();
            bad[at] ^= 1;
            std::fs::write(&path, &bad).unwrap();
            assert!(matches!(read(&path), Err(SnapshotError::Corrupt { .. })), "flip at {at}");
            let loaded =
                run(move || async move { load_map(&bad, Path::new("memory"), Tracking::Lru).await.map(|_| ()) });
            assert!(matches!(loaded, Err(SnapshotError::Corrupt { .. })), "flip at {at}, loaded");
        }
        std::fs::write(&path, &good[..good.len() - 1]).unwrap();
        assert!(matches!(read(&path), Err(SnapshotError::Corrupt { .. })));
    }
}
