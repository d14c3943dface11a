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
    match dir.parent() {
        // A relative name like "data" has the empty path as its parent.
        Some(parent) if parent.as_os_str().is_empty() => sync_dir(Path::new(".")),
        Some(parent) => sync_dir(parent),
        None => Ok(()),
    }
}

/// Writes `bytes` durably as `path`: `path.tmp`, fsync, rename, fsync of
/// the directory. A crash leaves the old file or the new one, never half.
pub fn write_durable(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let mut name = path.file_name().ok_or_else(|| io::Error::other("not a file name"))?.to_owned();
    name.push(".tmp");
    let tmp = path.with_file_name(name);
    let mut file = File::create(&tmp)?;
    file.write_all(bytes)?;
    // IMPORTANT: fsync before the rename makes the name point at whole data.
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    match path.parent() {
        Some(parent) if parent.as_os_str().is_empty() => sync_dir(Path::new(".")),
        Some(parent) => sync_dir(parent),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn creates_relative_and_nested_directories() {
        let dir = tempfile::tempdir().unwrap();
        let nested = dir.path().join("a/b/c");
        super::create_dir_durable(&nested).unwrap();
        assert!(nested.is_dir());
        // A bare relative name (parent is the empty path).
        let cwd = std::env::current_dir().unwrap();
        let name = format!("kvd-fsutil-test-{}", std::process::id());
        super::create_dir_durable(std::path::Path::new(&name)).unwrap();
        assert!(cwd.join(&name).is_dir());
        std::fs::remove_dir(cwd.join(&name)).unwrap();
    }
}
