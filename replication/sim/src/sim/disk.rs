//! A simulated disk: files whose writes become durable only when synced,
//! and a crash that keeps what was durable plus an arbitrary, possibly torn
//! part of what was not.
//!
//! What the model assumes of a real disk (and of kvd's use of it):
//! - a write or size change is durable once `fdatasync` of its file
//!   returned; until then a crash keeps any subset of the 512-byte sectors
//!   it wrote (a torn write), independently per sector;
//! - a file's creation, rename or removal is durable once its directory was
//!   fsynced; until then a crash may undo it;
//! - after a failed fdatasync the unsynced data may be gone (the kernel can
//!   drop dirty pages), so a crash keeps each sector or not, as above.
//!
//! Snapshot files are written whole and durable in one step
//! (`put_durable`): kvd writes them to a temporary name, fdatasyncs, renames
//! and fsyncs the directory, so a crash leaves either no file or all of it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::rng::Rng;

/// Sector size for torn writes.
const SECTOR_BYTES: usize = 512;

#[derive(Debug, Clone)]
enum Pending {
    Write { offset: usize, bytes: Vec<u8> },
    SetLen(usize),
}

#[derive(Debug, Default, Clone)]
struct File {
    /// What reads see now.
    data: Vec<u8>,
    /// What a crash keeps for sure.
    durable: Vec<u8>,
    /// Changes since the last sync, in order.
    pending: Vec<Pending>,
    /// The directory entry survives a crash.
    entry_durable: bool,
    /// Removed; the removal is not durable yet.
    removed: bool,
}

#[derive(Debug, Default)]
pub struct SimFs {
    files: BTreeMap<PathBuf, File>,
}

impl SimFs {
    pub fn exists(&self, path: &Path) -> bool {
        self.files.get(path).is_some_and(|f| !f.removed)
    }

    /// Files directly in `dir`, by name order.
    pub fn list(&self, dir: &Path) -> Vec<PathBuf> {
        self.files.iter().filter(|(p, f)| !f.removed && p.parent() == Some(dir)).map(|(p, _)| p.clone()).collect()
    }

    pub fn read(&self, path: &Path) -> Option<&[u8]> {
        self.files.get(path).filter(|f| !f.removed).map(|f| f.data.as_slice())
    }

    /// Creates an empty file; its entry is durable after `sync_dir`.
    pub fn create(&mut self, path: &Path) {
        assert!(!self.exists(path), "create of existing {}", path.display());
        self.files.insert(path.to_path_buf(), File::default());
    }

    pub fn set_len(&mut self, path: &Path, len: usize) {
        let f = self.file(path);
        f.data.resize(len, 0);
        f.pending.push(Pending::SetLen(len));
    }

    pub fn write_at(&mut self, path: &Path, offset: usize, bytes: &[u8]) {
        let f = self.file(path);
        let write = Pending::Write { offset, bytes: bytes.to_vec() };
        apply(&mut f.data, &write);
        f.pending.push(write);
    }

    /// Makes the file's data durable.
    pub fn fdatasync(&mut self, path: &Path) {
        let f = self.file(path);
        for p in std::mem::take(&mut f.pending) {
            apply(&mut f.durable, &p);
        }
    }

    /// A failed fdatasync: the data stays visible, but what a crash keeps
    /// of it is no longer promised.
    pub fn failed_sync(&mut self, _path: &Path) {}

    /// Makes the creation and removal of the files in `dir` durable.
    pub fn sync_dir(&mut self, dir: &Path) {
        self.files.retain(|p, f| p.parent() != Some(dir) || !f.removed);
        for (p, f) in &mut self.files {
            if p.parent() == Some(dir) {
                f.entry_durable = true;
            }
        }
    }

    pub fn remove(&mut self, path: &Path) {
        if let Some(f) = self.files.get_mut(path) {
            f.removed = true;
        }
    }

    /// Writes a whole file durably in one step (see the module docs).
    pub fn put_durable(&mut self, path: &Path, bytes: Vec<u8>) {
        let file =
            File { data: bytes.clone(), durable: bytes, pending: Vec::new(), entry_durable: true, removed: false };
        self.files.insert(path.to_path_buf(), file);
    }

    /// A power loss: every file becomes what the disk kept.
    pub fn crash(&mut self, rng: &mut Rng) {
        let files = std::mem::take(&mut self.files);
        for (path, mut f) in files {
            if !f.entry_durable {
                continue;
            }
            let mut kept = std::mem::take(&mut f.durable);
            for p in std::mem::take(&mut f.pending) {
                match p {
                    Pending::SetLen(_) if rng.chance(0.5) => apply(&mut kept, &p),
                    Pending::SetLen(_) => {}
                    Pending::Write { offset, bytes } => torn_write(&mut kept, offset, &bytes, rng),
                }
            }
            let file =
                File { data: kept.clone(), durable: kept, pending: Vec::new(), entry_durable: true, removed: false };
            self.files.insert(path, file);
        }
    }

    fn file(&mut self, path: &Path) -> &mut File {
        self.files.get_mut(path).filter(|f| !f.removed).unwrap_or_else(|| panic!("no file {}", path.display()))
    }
}

fn apply(data: &mut Vec<u8>, p: &Pending) {
    match p {
        Pending::SetLen(len) => data.resize(*len, 0),
        Pending::Write { offset, bytes } => {
            if data.len() < offset + bytes.len() {
                data.resize(offset + bytes.len(), 0);
            }
            data[*offset..offset + bytes.len()].copy_from_slice(bytes);
        }
    }
}

/// Keeps a write whole (most often), not at all, or sector by sector.
fn torn_write(data: &mut Vec<u8>, offset: usize, bytes: &[u8], rng: &mut Rng) {
    match rng.below(3) {
        0 => {}
        1 => apply(data, &Pending::Write { offset, bytes: bytes.to_vec() }),
        _ => {
            for (i, sector) in bytes.chunks(SECTOR_BYTES).enumerate() {
                if rng.chance(0.5) {
                    let at = offset + i * SECTOR_BYTES;
                    apply(data, &Pending::Write { offset: at, bytes: sector.to_vec() });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_crash_keeps_synced_data_and_durable_entries_only() {
        let mut fs = SimFs::default();
        let dir = Path::new("d");
        let (a, b) = (dir.join("a"), dir.join("b"));
        fs.create(&a);
        fs.sync_dir(dir);
        fs.write_at(&a, 0, b"synced");
        fs.fdatasync(&a);
        fs.create(&b);
        fs.write_at(&b, 0, b"lost");
        let mut rng = Rng::new(1);
        fs.crash(&mut rng);
        assert_eq!(fs.read(&a), Some(&b"synced"[..]));
        assert!(!fs.exists(&b), "an entry never synced is gone");
        fs.remove(&a);
        assert!(!fs.exists(&a));
        fs.crash(&mut rng);
        assert!(fs.exists(&a), "an unsynced removal is undone");
    }

    #[test]
    fn unsynced_writes_survive_whole_torn_or_not_at_all() {
        let mut outcomes = std::collections::BTreeSet::new();
        for seed in 0..64 {
            let mut fs = SimFs::default();
            let p = Path::new("d/f");
            fs.create(p);
            fs.sync_dir(Path::new("d"));
            fs.write_at(p, 0, &[1u8; 2048]);
            fs.crash(&mut Rng::new(seed));
            let data = fs.read(p).unwrap();
            let sectors = data.chunks(SECTOR_BYTES).filter(|s| s[0] == 1).count();
            outcomes.insert(sectors);
        }
        assert!(outcomes.contains(&0) && outcomes.contains(&4), "{outcomes:?}");
        assert!(outcomes.iter().any(|&n| n > 0 && n < 4), "some writes tear: {outcomes:?}");
    }
}
