//! The machine's part in the memory limit: what reads record for eviction,
//! refusing writes that need memory, and the leaders' choice of victims.
//! Whether the node is over its limit is the caller's to measure (the
//! allocator's statistics) and to tell; victims go through the log as
//! `Evict` commands the caller proposes, so every replica removes them.

use bytes::Bytes;
use kv_engine::evict::{Policy, Tracking};

use super::Machine;
use crate::types::Now;

impl<T> Machine<T> {
    /// What every shard's reads and writes record from now on.
    pub fn set_tracking(&mut self, tracking: Tracking) {
        for g in self.groups.values_mut() {
            g.map.set_tracking(tracking);
        }
    }

    /// What `group`'s map records for eviction (what a map built to
    /// replace it should record).
    pub fn tracking(&self, group: u32) -> Tracking {
        self.groups.get(&group).map_or(Tracking::None, |g| g.map.tracking())
    }

    /// While set, groups keep no applied entries in their in-memory logs.
    pub fn set_memory_pressure(&mut self, pressure: bool) {
        for g in self.groups.values_mut() {
            g.memory_pressure = pressure;
        }
    }

    /// While set, writes that need memory are refused with `OutOfMemory`.
    pub fn set_out_of_memory(&mut self, over: bool) {
        self.write_allowance = over.then_some(0);
    }

    /// Admits writes that need memory until their encoded bytes add up to
    /// `allowance`, then refuses them with `OutOfMemory` until told again
    /// (`None`: admits every write). The caller measures memory
    /// periodically; the allowance bounds what the writes between two
    /// measurements add, however late the next one comes.
    pub fn set_write_allowance(&mut self, allowance: Option<u64>) {
        self.write_allowance = allowance;
    }

    pub fn out_of_memory(&self) -> bool {
        self.write_allowance == Some(0)
    }

    /// For each shard this core leads, up to `per_shard` keys to evict
    /// under `policy` (sampled, see `kv_engine::evict`).
    pub fn eviction_victims(&self, policy: Policy, per_shard: usize, now: Now) -> Vec<(u32, Vec<Bytes>)> {
        self.groups
            .values()
            .filter(|g| g.is_leader())
            .map(|g| (g.id, g.map.eviction_victims(policy, now.wall_ms, per_shard)))
            .filter(|(_, keys)| !keys.is_empty())
            .collect()
    }

    /// Bytes of keys and values held by every shard on this core.
    pub fn data_bytes(&self) -> u64 {
        self.groups.values().map(|g| g.map.data_bytes()).sum()
    }

    /// Of the compressed values on this core: their plain bytes and what
    /// they take.
    pub fn compression_bytes(&self) -> (u64, u64) {
        self.groups.values().map(|g| g.map.compression_bytes()).fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
    }
}
