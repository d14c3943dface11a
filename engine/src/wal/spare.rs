//! The spare segment: the next segment's file, zero-filled in the
//! background before a rotation needs it.
//!
//! Why: `fallocate` reserves a segment's blocks as *unwritten* extents. The
//! first O_DIRECT write into each of them makes ext4 (and XFS) convert the
//! extent to written, a journaled metadata change that the following
//! fdatasync must commit too: every flush paid for a journal commit.
//! Writing zeros over the whole file first leaves only written extents, so
//! a flush's fdatasync has data to sync and no metadata. Measured: fsync
//! 153 → 100 µs and write 360 → 275 µs under 50 durable writers, +30%
//! SET/s (bench/RESULTS.md). Zeroing a 64 MiB segment takes a while, so it
//! happens off the flush path, once the current segment is half full; a
//! rotation that finds no spare ready (the first one of a new WAL, or one
//! that filled a segment faster than a spare could be zeroed) creates its
//! segment the old way (fallocate).
//!
//! Crash story: the spare lives under a name recovery ignores
//! ([`SPARE_NAME`], not a segment name) and is deleted on open. A rotation
//! renames it to the new segment's name and then fsyncs the directory,
//! exactly where it used to create the file: a crash before the directory
//! fsync leaves either no segment or an all-zero one, which recovery
//! removes as unwritten, as it removes a preallocated one.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use glommio::io::{DmaFile, OpenOptions};

/// The spare's file name in the WAL directory (no segment name ends so).
pub const SPARE_NAME: &str = "next-segment.spare";
/// Bytes zeroed per write: large enough to stream, small next to glommio's
/// io memory (`--io-memory-bytes`, at least 1 MiB).
const ZERO_CHUNK_BYTES: usize = 128 * 1024;
const _: () = assert!(ZERO_CHUNK_BYTES.is_multiple_of(4096), "O_DIRECT writes are block-aligned");

/// Where the spare stands.
#[derive(Default)]
enum State {
    /// None, and none being made.
    #[default]
    Absent,
    Zeroing,
    /// Zeroing failed (a full disk, say): not tried again before the next
    /// rotation, so a failing disk does not cost an attempt and a warning
    /// per flush.
    Failed,
    /// Zeroed and synced: a file of `capacity` bytes.
    Ready {
        file: Rc<DmaFile>,
        capacity: u64,
    },
}

/// The spare of one WAL. Cheap to clone (shared with its zeroing task).
#[derive(Clone, Default)]
pub struct Spare(Rc<RefCell<State>>);

impl Spare {
    /// Starts zeroing a spare of `capacity` bytes in `dir` in the
    /// background, unless one exists or is being made. A failure is only
    /// logged: rotations then fall back to creating their segment.
    pub fn prepare(&self, dir: &Path, capacity: u64) {
        if !matches!(*self.0.borrow(), State::Absent) {
            return;
        }
        *self.0.borrow_mut() = State::Zeroing;
        let (spare, path) = (self.clone(), dir.join(SPARE_NAME));
        glommio::spawn_local(async move {
            let state = match zeroed_file(&path, capacity).await {
                Ok(file) => State::Ready { file: Rc::new(file), capacity },
                Err(e) => {
                    tracing::warn!(path = %path.display(), "could not prepare the next WAL segment: {e}");
                    // Best effort: give back what a half-made spare holds.
                    let _ = std::fs::remove_file(&path);
                    State::Failed
                }
            };
            *spare.0.borrow_mut() = state;
        })
        .detach();
    }

    /// The spare, renamed to `path`, if one of `capacity` bytes is ready.
    /// Either way, the next segment may have a spare again.
    /// The caller MUST fsync the directory before relying on the name.
    pub async fn take(&self, dir: &Path, path: &Path, capacity: u64) -> std::io::Result<Option<Rc<DmaFile>>> {
        let state = std::mem::take(&mut *self.0.borrow_mut());
        let file = match state {
            State::Ready { file, capacity: c } if c == capacity => file,
            // Not ready (or for another size): leave a zeroing one alone.
            State::Zeroing => {
                *self.0.borrow_mut() = State::Zeroing;
                return Ok(None);
            }
            _ => return Ok(None),
        };
        // A segment is never replaced (creating one refuses an existing
        // file); rename would replace it silently, so look first. Only this
        // core writes to this directory.
        if std::fs::symlink_metadata(path).is_ok() {
            let what = format!("segment {} exists already", path.display());
            return Err(std::io::Error::new(std::io::ErrorKind::AlreadyExists, what));
        }
        glommio::io::rename(dir.join(SPARE_NAME), path).await.map_err(std::io::Error::from)?;
        Ok(Some(file))
    }
}

impl Spare {
    /// Whether a zeroed spare waits for the next rotation.
    pub fn is_ready(&self) -> bool {
        matches!(*self.0.borrow(), State::Ready { .. })
    }
}

/// Deletes a spare an earlier run left (it may be half zeroed).
pub fn remove_leftover(dir: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(dir.join(SPARE_NAME)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

async fn zeroed_file(path: &PathBuf, capacity: u64) -> glommio::Result<DmaFile, ()> {
    // Readable too: glommio probes the device with a read on open.
    let file = OpenOptions::new().read(true).write(true).create(true).truncate(true).dma_open(path).await?;
    file.pre_allocate(capacity, false).await?;
    let mut at = 0u64;
    while at < capacity {
        let len = ZERO_CHUNK_BYTES.min((capacity - at) as usize);
        let mut buf = file.alloc_dma_buffer(len);
        buf.as_bytes_mut().fill(0);
        file.write_at(buf, at).await?;
        at += len as u64;
    }
    file.fdatasync().await?;
    Ok(file)
}
