//! Small synchronous filesystem helpers for startup and recovery paths (the
//! serving path uses glommio's io_uring files instead).

use std::fs::File;
use std::io;
use std::path::Path;

/// fsyncs a directory so that creates, renames and unlinks in it are durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    // IMPORTANT: directory fsync — without it a new or renamed file may vanish
    // after a power failure even though its data was synced.
    File::open(dir)?.sync_all()
}

/// Creates `dir` and its parents, and syncs the parent so the new directory
/// entry is durable.
pub fn create_dir_durable(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::create_dir_all(dir)?;
    if let Some(parent) = dir.parent() {
        sync_dir(parent)?;
    }
    Ok(())
}
