//! Which shard owns a slot, which nodes hold a shard's replicas, and which
//! core holds a shard on a node.
//!
//! The 16384 slots are split into `shards` contiguous ranges; shard `s` lives
//! on core `s % cores` of every node that holds it (so nodes must have the
//! same core count, and core `c` only ever talks to core `c` of a peer).
//! A shard's replicas are the `replicas` nodes with the highest rendezvous
//! score `mix(shard, node)`; the first is its preferred leader, which
//! spreads leaders evenly and moves about 1/N of the shards when a node is
//! added or removed. The layout is fixed when a data directory is created and
//! stored in `<data-dir>/layout.toml`; a start that disagrees is refused.

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

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layout {
    pub format: u32,
    pub node_id: u64,
    pub cores: u32,
    pub shards: u32,
    /// Every node of the cluster, sorted (just this node for a single node).
    pub nodes: Vec<u64>,
    /// Replicas per shard (the replication factor).
    pub replicas: u32,
    /// The directory was made for a node joining a running cluster (`kvd
    /// --join`): its peers readmit it, and its groups start as learners
    /// (see `restore.rs`, `first_conf_state`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub joined: bool,
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
    #[error(
        "the data directory {dir} was created for nodes {stored:?} with {stored_replicas} replicas per shard; \
         this start has nodes {wanted:?} with {wanted_replicas}. Changing the cluster's members needs \
         a membership change, which this version cannot do: start with the same --peers and \
         --replication-factor"
    )]
    Members { dir: String, stored: Vec<u64>, stored_replicas: u32, wanted: Vec<u64>, wanted_replicas: u32 },
}

/// The shard of `slot` among `shards` contiguous slot ranges (what clients
/// that route by themselves compute too).
pub fn shard_of_slot(slot: u16, shards: u32) -> u32 {
    debug_assert!(slot < SLOT_COUNT && shards > 0);
    (slot as u32 * shards) / SLOT_COUNT as u32
}

pub fn shard_of_key(key: &[u8], shards: u32) -> u32 {
    shard_of_slot(slot::slot_of(key), shards)
}

/// The fixed rendezvous score of a node for a shard (splitmix64 finaliser):
/// it must agree on every node and across versions, so no random hashing.
pub fn rendezvous_score(shard: u32, node: u64) -> u64 {
    let mut z = (shard as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ node.wrapping_mul(0xD6E8_FEB8_6659_FD93);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Layout {
    /// A single node: every shard has one replica, this node.
    pub fn new(node_id: u64, cores: u32, shards_per_core: u32) -> Layout {
        Layout::cluster(node_id, vec![node_id], 1, cores, shards_per_core)
    }

    /// A node of a cluster of `nodes` with `replicas` replicas per shard.
    pub fn cluster(node_id: u64, mut nodes: Vec<u64>, replicas: u32, cores: u32, shards_per_core: u32) -> Layout {
        assert!(cores > 0 && shards_per_core > 0);
        nodes.sort_unstable();
        nodes.dedup();
        assert!(nodes.contains(&node_id), "a node is a member of its own cluster");
        assert!(replicas >= 1 && replicas as usize <= nodes.len(), "replicas within 1..=nodes");
        let shards = (cores * shards_per_core).min(SHARDS_MAX);
        Layout { format: FORMAT, node_id, cores, shards, nodes, replicas, joined: false }
    }

    /// The same layout, for a data directory of a node joining a running
    /// cluster (see [`Layout::joined`]).
    pub fn joining(self) -> Layout {
        Layout { joined: true, ..self }
    }

    /// The nodes holding `shard`, preferred leader first.
    pub fn replicas_of(&self, shard: u32) -> Vec<u64> {
        let mut ranked: Vec<u64> = self.nodes.clone();
        ranked.sort_by_key(|&n| std::cmp::Reverse((rendezvous_score(shard, n), n)));
        ranked.truncate(self.replicas as usize);
        ranked
    }

    /// Whether this node holds a replica of `shard`.
    pub fn hosts(&self, shard: u32) -> bool {
        self.replicas_of(shard).contains(&self.node_id)
    }

    pub fn is_single_node(&self) -> bool {
        self.nodes.len() == 1
    }

    pub fn shard_of_slot(&self, slot: u16) -> u32 {
        shard_of_slot(slot, self.shards)
    }

    pub fn shard_of_key(&self, key: &[u8]) -> u32 {
        shard_of_key(key, self.shards)
    }

    pub fn core_of_shard(&self, shard: u32) -> u32 {
        shard % self.cores
    }

    /// The shards this node holds on `core`.
    pub fn shards_of_core(&self, core: u32) -> impl Iterator<Item = u32> + '_ {
        (0..self.shards).filter(move |s| self.core_of_shard(*s) == core && self.hosts(*s))
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
            kv_engine::fsutil::write_durable(&path, text.as_bytes()).map_err(|e| io(e.to_string()))?;
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
        if stored.nodes != wanted.nodes || stored.replicas != wanted.replicas {
            return Err(LayoutError::Members {
                dir,
                stored: stored.nodes,
                stored_replicas: stored.replicas,
                wanted: wanted.nodes,
                wanted_replicas: wanted.replicas,
            });
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
            assert!((0..l.shards).all(|s| l.hosts(s)));
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
        let grown = Layout::cluster(1, vec![1, 2, 3], 3, 2, 8);
        assert!(matches!(Layout::load_or_create(dir.path(), grown), Err(LayoutError::Members { .. })));
    }

    #[test]
    fn a_joined_directory_stays_joined_and_an_old_one_does_not_become_one() {
        let dir = tempfile::tempdir().unwrap();
        let joined = Layout::load_or_create(dir.path(), Layout::new(1, 2, 8).joining()).unwrap();
        assert!(joined.joined);
        assert!(Layout::load_or_create(dir.path(), Layout::new(1, 2, 8)).unwrap().joined, "kept across starts");
        let old = tempfile::tempdir().unwrap();
        Layout::load_or_create(old.path(), Layout::new(1, 2, 8)).unwrap();
        let text = std::fs::read_to_string(old.path().join(FILE_NAME)).unwrap();
        assert!(!text.contains("joined"), "a layout file of a created node is unchanged:\n{text}");
        assert!(!Layout::load_or_create(old.path(), Layout::new(1, 2, 8).joining()).unwrap().joined);
    }

    #[test]
    fn placement_is_fixed_balanced_and_moves_little() {
        let nodes: Vec<u64> = (1..=5).collect();
        let l = Layout::cluster(1, nodes.clone(), 3, 4, 64);
        // Known values pin the hash: it must never change.
        assert_eq!(rendezvous_score(0, 1), 0xb55a_8fa0_6753_7a73);
        assert_eq!(rendezvous_score(1, 1), 0x2095_214b_ec52_7c99);
        assert_eq!(rendezvous_score(5, 3), 0x8c5b_973b_559f_0061);
        let mut replicas = std::collections::BTreeMap::<u64, usize>::new();
        let mut leaders = std::collections::BTreeMap::<u64, usize>::new();
        for s in 0..l.shards {
            let r = l.replicas_of(s);
            assert_eq!(r.len(), 3);
            let mut unique = r.clone();
            unique.sort();
            unique.dedup();
            assert_eq!(unique.len(), 3, "no two replicas on one node");
            *leaders.entry(r[0]).or_default() += 1;
            for n in r {
                *replicas.entry(n).or_default() += 1;
            }
        }
        // 256 shards × 3 replicas over 5 nodes: about 154 each; leaders about 51.
        assert!(replicas.values().all(|&n| (115..=195).contains(&n)), "{replicas:?}");
        assert!(leaders.values().all(|&n| (30..=75).contains(&n)), "{leaders:?}");
        // Adding a sixth node moves only the replicas it takes over.
        let grown = Layout::cluster(1, (1..=6).collect(), 3, 4, 64);
        let moved: usize = (0..l.shards)
            .map(|s| {
                let (a, b) = (l.replicas_of(s), grown.replicas_of(s));
                a.iter().filter(|n| !b.contains(n)).count()
            })
            .sum();
        let taken: usize = (0..l.shards).filter(|&s| grown.replicas_of(s).contains(&6)).count();
        assert_eq!(moved, taken, "only replicas displaced by the new node move");
        assert!(taken < (l.shards as usize * 3) / 4, "about 1/6 of the replicas move, not all: {taken}");
    }
}
