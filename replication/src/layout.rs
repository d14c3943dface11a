//! Which shard owns a slot, and which core owns a shard.
//!
//! The 16384 slots are split into `shards` contiguous ranges; shard `s` lives
//! on core `s % cores`. The layout is fixed when a data directory is created
//! and stored in `<data-dir>/layout.toml`, so a key lands on the same core
//! across restarts; starting with a different core count is refused.

use std::ops::Range;
use std::path::Path;

use kv_engine::slot::{self, SLOT_COUNT};
use serde::{Deserialize, Serialize};

/// Shards per core in a new data directory. More shards make snapshots and
/// future shard moves finer-grained; each costs one Raft group's ticks.
pub const SHARDS_PER_CORE_DEFAULT: u32 = 8;
/// Every shard needs at least one slot.
pub const SHARDS_MAX: u32 = SLOT_COUNT as u32;
const FILE_NAME: &str = "layout.toml";
const FORMAT: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layout {
    pub format: u32,
    pub node_id: u64,
    pub cores: u32,
    pub shards: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error("{path}: {why}")]
    Io { path: String, why: String },
    #[error(
        "the data directory {dir} was created with {stored} cores and this start has {wanted}; \
         kvd keeps each key on the core that wrote it, so start with {stored} cores (e.g. --cores \
         0-{last}), or start from an empty data directory"
    )]
    CoreCount { dir: String, stored: u32, wanted: u32, last: u32 },
    #[error("the data directory {dir} belongs to node {stored}, not node {wanted}")]
    NodeId { dir: String, stored: u64, wanted: u64 },
}

impl Layout {
    pub fn new(node_id: u64, cores: u32, shards_per_core: u32) -> Layout {
        assert!(cores > 0 && shards_per_core > 0);
        let shards = (cores * shards_per_core).min(SHARDS_MAX);
        Layout { format: FORMAT, node_id, cores, shards }
    }

    pub fn shard_of_slot(&self, slot: u16) -> u32 {
        debug_assert!(slot < SLOT_COUNT);
        (slot as u32 * self.shards) / SLOT_COUNT as u32
    }

    pub fn shard_of_key(&self, key: &[u8]) -> u32 {
        self.shard_of_slot(slot::slot_of(key))
    }

    pub fn core_of_shard(&self, shard: u32) -> u32 {
        shard % self.cores
    }

    pub fn shards_of_core(&self, core: u32) -> impl Iterator<Item = u32> + '_ {
        (0..self.shards).filter(move |s| self.core_of_shard(*s) == core)
    }

    /// The slots shard `shard` owns: the inverse of `shard_of_slot`.
    pub fn slots_of_shard(&self, shard: u32) -> Range<u32> {
        let start = |s: u32| (s * SLOT_COUNT as u32).div_ceil(self.shards);
        start(shard)..start(shard + 1)
    }

    /// Loads the layout stored in `data_dir`, or stores `wanted` there if the
    /// directory is new. Refuses a mismatch in core count or node id.
    pub fn load_or_create(data_dir: &Path, wanted: Layout) -> Result<Layout, LayoutError> {
        let path = data_dir.join(FILE_NAME);
        let io = |why: String| LayoutError::Io { path: path.display().to_string(), why };
        if !path.exists() {
            let text = toml::to_string(&wanted).expect("layout serialises");
            let tmp = data_dir.join(format!("{FILE_NAME}.tmp"));
            std::fs::write(&tmp, text).map_err(|e| io(e.to_string()))?;
            std::fs::File::open(&tmp).and_then(|f| f.sync_all()).map_err(|e| io(e.to_string()))?;
            std::fs::rename(&tmp, &path).map_err(|e| io(e.to_string()))?;
            kv_engine::fsutil::sync_dir(data_dir).map_err(|e| io(e.to_string()))?;
            return Ok(wanted);
        }
        let text = std::fs::read_to_string(&path).map_err(|e| io(e.to_string()))?;
        let stored: Layout = toml::from_str(&text).map_err(|e| io(format!("not a valid layout file: {e}")))?;
        if stored.format != FORMAT {
            return Err(io(format!("layout format {} is not supported", stored.format)));
        }
        let dir = data_dir.display().to_string();
        if stored.cores != wanted.cores {
            let (stored, wanted) = (stored.cores, wanted.cores);
            return Err(LayoutError::CoreCount { dir, stored, wanted, last: stored - 1 });
        }
        if stored.node_id != wanted.node_id {
            return Err(LayoutError::NodeId { dir, stored: stored.node_id, wanted: wanted.node_id });
        }
        Ok(stored)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_slot_maps_into_its_shards_range() {
        for (cores, per) in [(1, 1), (2, 8), (3, 8), (7, 5), (64, 256)] {
            let l = Layout::new(1, cores, per);
            let mut covered = 0;
            for shard in 0..l.shards {
                let range = l.slots_of_shard(shard);
                assert!(!range.is_empty(), "shard {shard} of {}", l.shards);
                for slot in range.clone() {
                    assert_eq!(l.shard_of_slot(slot as u16), shard);
                }
                covered += range.len();
            }
            assert_eq!(covered, SLOT_COUNT as usize);
            let per_core: Vec<usize> = (0..cores).map(|c| l.shards_of_core(c).count()).collect();
            assert!(per_core.iter().all(|&n| n == per_core[0]), "{per_core:?}");
        }
    }

    #[test]
    fn stored_layout_wins_and_mismatches_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let first = Layout::load_or_create(dir.path(), Layout::new(1, 2, 8)).unwrap();
        assert_eq!(first.shards, 16);
        // A later start with another shards-per-core keeps the stored layout.
        assert_eq!(Layout::load_or_create(dir.path(), Layout::new(1, 2, 4)).unwrap(), first);
        let err = Layout::load_or_create(dir.path(), Layout::new(1, 3, 8)).unwrap_err();
        assert!(err.to_string().contains("created with 2 cores"), "{err}");
        assert!(matches!(Layout::load_or_create(dir.path(), Layout::new(2, 2, 8)), Err(LayoutError::NodeId { .. })));
    }
}
