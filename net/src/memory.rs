//! The node's memory limit (`--max-memory`, `--eviction-policy`).
//!
//! Memory is what the allocator says the process holds (jemalloc's
//! `stats.allocated`, read by the binary and handed in as a function), not
//! an estimate of the maps: core 0 refreshes it every [`MEMORY_CYCLE`].
//! Every core then looks at it:
//!
//! - under `noeviction`, a node over its limit refuses writes that need
//!   memory (`OOM`); reads and deletes go on;
//! - under the other policies, each core evicts its share of the excess
//!   (by its share of the node's data bytes) from the shards it leads: the
//!   victims are sampled as Redis samples them (`kv_engine::evict`) and
//!   proposed as one `Evict` command per shard, so every replica removes
//!   the same keys. Eviction runs behind the writes (it goes through the
//!   log), so a node further than [`HARD_LIMIT_RATIO`] over its limit also
//!   holds writes back until eviction catches up: a write that finds its
//!   core over that line waits for eviction (at most [`EVICTION_WAIT`],
//!   see `route::execute`), and only then is refused (`OOM`), or at once
//!   when eviction found nothing to evict (a `volatile-*` policy with no
//!   key that has a TTL). Memory stays bounded whatever the write rate, and
//!   a fast writer is slowed to the pace of eviction instead of failing.
//!
//! Followers do not evict on their own: a node holding only followers of
//! shards led elsewhere relies on those leaders' nodes, which hold the
//! same data, being over their limits too.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use kv_engine::evict::Policy;
use kv_engine::Command;
use kv_replication::Core;

/// How often memory is measured and eviction runs.
pub const MEMORY_CYCLE: Duration = Duration::from_millis(10);
/// Memory above the limit, as a share of it, past which writes are refused
/// under every policy (eviction is behind).
pub const HARD_LIMIT_RATIO: f64 = 1.25;
/// How long a write waits for eviction to bring memory back under the
/// hard limit before it is refused.
pub const EVICTION_WAIT: Duration = Duration::from_secs(2);
/// Evict down to this share of the limit, so that a node does not evict a
/// handful of keys on every cycle at the limit.
const EVICT_TARGET_RATIO: f64 = 0.98;
/// Keys one core evicts per cycle at most (spread over its shards): bounds
/// the work one cycle adds to the log.
const EVICT_KEYS_PER_CYCLE_MAX: usize = 4096;
/// Per-entry bytes beyond key and value (map slot, `Stored`, allocator
/// rounding), used to turn bytes to free into a number of keys.
const ENTRY_OVERHEAD_BYTES: u64 = 96;

/// Reads the allocator's statistics: bytes the process holds.
pub type MemorySource = Box<dyn Fn() -> Option<u64> + Send + Sync>;

/// The node's memory limit and what is known of its memory, shared by
/// every core.
pub struct Memory {
    /// Bytes the node may hold; `None`: no limit.
    pub limit: Option<u64>,
    pub policy: Policy,
    source: MemorySource,
    used: AtomicU64,
    evicted: AtomicU64,
    /// Each core's data bytes (keys and values it holds), for its share.
    core_data: Vec<AtomicU64>,
    /// Per core: its last eviction round wanted to evict and found no key
    /// it may evict, so waiting for it is in vain.
    stalled: Vec<AtomicBool>,
}

impl Memory {
    pub fn new(limit: Option<u64>, policy: Policy, cores: usize, source: MemorySource) -> Memory {
        Memory {
            limit,
            policy,
            source,
            used: AtomicU64::new(0),
            evicted: AtomicU64::new(0),
            core_data: (0..cores).map(|_| AtomicU64::new(0)).collect(),
            stalled: (0..cores).map(|_| AtomicBool::new(false)).collect(),
        }
    }

    /// Without a limit, and without statistics (tests).
    pub fn unlimited(cores: usize) -> Memory {
        Memory::new(None, Policy::NoEviction, cores, Box::new(|| None))
    }

    /// Reads the allocator again.
    pub fn refresh(&self) {
        if let Some(bytes) = (self.source)() {
            self.used.store(bytes, Ordering::Relaxed);
        }
    }

    /// Bytes the process holds, as of the last refresh.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    pub fn evicted(&self) -> u64 {
        self.evicted.load(Ordering::Relaxed)
    }

    /// Bytes over the limit (0 when under it or without one).
    pub fn excess(&self) -> u64 {
        self.limit.map_or(0, |l| self.used().saturating_sub(l))
    }

    /// The bytes of writes that need memory one core may admit until the
    /// next measurement: its share of the room left under the line past
    /// which writes are refused (`None`: no limit).
    pub fn write_allowance(&self) -> Option<u64> {
        let limit = self.limit?;
        let line = match self.policy {
            Policy::NoEviction => limit,
            _ => (limit as f64 * HARD_LIMIT_RATIO) as u64,
        };
        Some(line.saturating_sub(self.used()) / self.core_data.len().max(1) as u64)
    }

    /// Whether writes that need memory are refused now.
    pub fn refuses_writes(&self) -> bool {
        let Some(limit) = self.limit else { return false };
        match self.policy {
            Policy::NoEviction => self.used() > limit,
            _ => self.used() as f64 > limit as f64 * HARD_LIMIT_RATIO,
        }
    }

    /// Bytes core `core` should free now: its share of the excess over the
    /// eviction target.
    /// Whether a write refused for memory on `core` should wait: the
    /// policy evicts and the core's eviction is making progress.
    pub fn write_waits_for_eviction(&self, core: usize) -> bool {
        self.limit.is_some()
            && self.policy != Policy::NoEviction
            && !self.stalled.get(core).is_some_and(|s| s.load(Ordering::Relaxed))
    }

    fn core_share_to_free(&self, core: usize) -> u64 {
        let (Some(limit), true) = (self.limit, self.policy != Policy::NoEviction) else { return 0 };
        let target = (limit as f64 * EVICT_TARGET_RATIO) as u64;
        let excess = self.used().saturating_sub(target);
        if excess == 0 || self.used() <= limit {
            return 0;
        }
        let total: u64 = self.core_data.iter().map(|c| c.load(Ordering::Relaxed)).sum();
        let mine = self.core_data[core].load(Ordering::Relaxed);
        if total == 0 {
            return 0;
        }
        (excess as u128 * mine as u128 / total as u128) as u64
    }
}

/// One core's admission of writes, until `stopped` says so: core 0
/// measures the node's memory, and every core gets its share of the room
/// left as a write allowance (`Core::set_write_allowance`): writes that
/// need memory past it are refused until the next measurement. With a
/// flag instead of an allowance, a busy core admitted writes for as long
/// as the next measurement was late: with a 24 MiB limit under
/// `noeviction`, the node reached 33 MiB. Measuring is cheap and runs
/// among the requests, so that it is not late behind them.
pub async fn admission_cycle(core: Core, index: usize, memory: std::sync::Arc<Memory>, stopped: impl Fn() -> bool) {
    if memory.limit.is_none() {
        return;
    }
    while !stopped() {
        glommio::timer::sleep(MEMORY_CYCLE).await;
        if index == 0 {
            memory.refresh();
        }
        core.set_write_allowance(memory.write_allowance());
        core.set_memory_pressure(memory.excess() > 0);
    }
}

/// One core's eviction, until `stopped` says so: every cycle it evicts
/// its share of the excess from the shards it leads (background work).
pub async fn eviction_cycle(core: Core, index: usize, memory: std::sync::Arc<Memory>, stopped: impl Fn() -> bool) {
    if memory.limit.is_none() {
        return;
    }
    core.set_tracking(memory.policy.tracking());
    if memory.policy == Policy::NoEviction {
        return;
    }
    while !stopped() {
        glommio::timer::sleep(MEMORY_CYCLE).await;
        let (data, keys) = core.data_size();
        memory.core_data[index].store(data, Ordering::Relaxed);
        let to_free = memory.core_share_to_free(index);
        let stalled = if to_free > 0 && keys > 0 {
            let per_key = data / keys + ENTRY_OVERHEAD_BYTES;
            let wanted = (to_free / per_key.max(1) + 1).min(EVICT_KEYS_PER_CYCLE_MAX as u64) as usize;
            !evict(&core, &memory, wanted).await
        } else {
            // Over the line with nothing of its own to evict: this core
            // cannot help (its keys are gone, or led elsewhere).
            memory.refuses_writes() && keys == 0
        };
        memory.stalled[index].store(stalled, Ordering::Relaxed);
    }
}

/// Proposes the eviction of about `wanted` keys from the shards this core
/// leads, and waits for those proposals to apply. Returns whether it
/// found any key to evict.
async fn evict(core: &Core, memory: &Memory, wanted: usize) -> bool {
    let leading = core.leading_shards().max(1);
    let per_shard = wanted.div_ceil(leading);
    let victims = core.eviction_victims(memory.policy, per_shard);
    let found = victims.iter().any(|(_, keys)| !keys.is_empty());
    for (shard, keys) in victims {
        // No timeout: a proposal always ends (applied, or dropped when its
        // leader is lost), and an eviction that applied is counted.
        match core.write(shard, &Command::Evict { keys }).await {
            Ok(kv_engine::Outcome::Integer(n)) => {
                memory.evicted.fetch_add(n as u64, Ordering::Relaxed);
            }
            other => tracing::debug!(shard, "eviction did not go through: {other:?}"),
        }
    }
    found
}

/// Parses a size: a number of bytes, or with a unit `kb`, `mb`, `gb`, `tb`
/// (powers of 1024, Redis's convention; case-insensitive, `b` optional).
pub fn parse_size(text: &str) -> Option<u64> {
    let t = text.trim().to_ascii_lowercase();
    let digits_end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(digits_end);
    let n: u64 = number.parse().ok()?;
    let scale: u64 = match unit.trim() {
        "" | "b" => 1,
        "k" | "kb" => 1 << 10,
        "m" | "mb" => 1 << 20,
        "g" | "gb" => 1 << 30,
        "t" | "tb" => 1 << 40,
        _ => return None,
    };
    n.checked_mul(scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_like_redis() {
        assert_eq!(parse_size("4gb"), Some(4 << 30));
        assert_eq!(parse_size("512MB"), Some(512 << 20));
        assert_eq!(parse_size("100"), Some(100));
        assert_eq!(parse_size("7k"), Some(7 << 10));
        for bad in ["", "gb", "1.5gb", "-1", "10 parsecs", "99999999999999999999tb"] {
            assert_eq!(parse_size(bad), None, "{bad}");
        }
    }

    #[test]
    fn writes_are_refused_past_the_limit_or_far_past_it() {
        let used = std::sync::Arc::new(AtomicU64::new(0));
        let u = used.clone();
        let source: MemorySource = Box::new(move || Some(u.load(Ordering::Relaxed)));
        let strict = Memory::new(Some(1000), Policy::NoEviction, 2, source);
        used.store(999, Ordering::Relaxed);
        strict.refresh();
        assert!(!strict.refuses_writes());
        assert_eq!(strict.write_allowance(), Some(0), "1 byte of room, shared by 2 cores");
        used.store(600, Ordering::Relaxed);
        strict.refresh();
        assert_eq!(strict.write_allowance(), Some(200));
        used.store(1001, Ordering::Relaxed);
        strict.refresh();
        assert!(strict.refuses_writes());
        assert_eq!(strict.write_allowance(), Some(0));
        assert_eq!(strict.core_share_to_free(0), 0, "noeviction evicts nothing");
        let u = used.clone();
        let lru = Memory::new(Some(1000), Policy::AllKeysLru, 2, Box::new(move || Some(u.load(Ordering::Relaxed))));
        lru.core_data[0].store(300, Ordering::Relaxed);
        lru.core_data[1].store(100, Ordering::Relaxed);
        used.store(1100, Ordering::Relaxed);
        lru.refresh();
        assert!(!lru.refuses_writes(), "evicting, not refusing");
        assert_eq!(lru.write_allowance(), Some(75), "room up to 1250");
        // Down to 980: 120 bytes, three quarters of them on core 0.
        assert_eq!((lru.core_share_to_free(0), lru.core_share_to_free(1)), (90, 30));
        used.store(1300, Ordering::Relaxed);
        lru.refresh();
        assert!(lru.refuses_writes(), "far over the limit, writes wait for eviction");
        assert_eq!(lru.write_allowance(), Some(0));
        assert!(lru.write_waits_for_eviction(0));
        lru.stalled[0].store(true, Ordering::Relaxed);
        assert!(!lru.write_waits_for_eviction(0), "nothing to evict: refused at once");
        assert!(!strict.write_waits_for_eviction(0), "noeviction never waits");
        assert_eq!(Memory::unlimited(2).write_allowance(), None);
    }
}
