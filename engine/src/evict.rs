//! Choosing keys to evict when a node is over its memory limit, with
//! Redis's policies and, like Redis, sampled approximations: a few random
//! entries are drawn and the best victims among them are taken, instead of
//! keeping the whole key space ordered.
//!
//! The access clock each [`Entry`] carries (24 bits) means, by policy:
//! - LRU: the time of the last access in seconds (wrapping every ~194
//!   days, as Redis's LRU clock does);
//! - LFU: Redis's scheme — the minutes of the last decrement in the high 16
//!   bits and a logarithmic access counter in the low 8, which grows with
//!   probability 1/((counter - 5) × 10 + 1) on each access and loses one per
//!   minute without access.
//!
//! Only a shard's leader tracks accesses (reads are served there) and
//! decides evictions; the victims go through the Raft log as one `Evict`
//! command, so every replica removes the same keys.

use bytes::Bytes;

use crate::entry::{Entry, META_CLOCK_MASK};

/// Entries sampled per victim (Redis's `maxmemory-samples` default).
pub const EVICTION_SAMPLES: usize = 5;
/// LFU counter of a new key (Redis's LFU_INIT_VAL).
const LFU_INIT: u32 = 5;
/// LFU log factor (Redis's lfu-log-factor default).
const LFU_LOG_FACTOR: u32 = 10;

/// What to do when the node is over its memory limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Policy {
    /// Refuse writes that need memory (`OOM`); reads and deletes work.
    #[default]
    NoEviction,
    AllKeysLru,
    AllKeysLfu,
    VolatileLru,
    VolatileLfu,
    /// Keys with a TTL, soonest expiry first.
    VolatileTtl,
    AllKeysRandom,
    VolatileRandom,
}

/// What a shard records on each access.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Tracking {
    #[default]
    None,
    Lru,
    Lfu,
}

impl Policy {
    pub const NAMES: [&'static str; 8] = [
        "noeviction",
        "allkeys-lru",
        "allkeys-lfu",
        "volatile-lru",
        "volatile-lfu",
        "volatile-ttl",
        "allkeys-random",
        "volatile-random",
    ];

    const ALL: [Policy; 8] = [
        Policy::NoEviction,
        Policy::AllKeysLru,
        Policy::AllKeysLfu,
        Policy::VolatileLru,
        Policy::VolatileLfu,
        Policy::VolatileTtl,
        Policy::AllKeysRandom,
        Policy::VolatileRandom,
    ];

    /// The policy Redis calls `name`.
    pub fn parse(name: &str) -> Option<Policy> {
        Policy::NAMES.iter().position(|n| *n == name).map(|i| Policy::ALL[i])
    }

    pub fn name(self) -> &'static str {
        Policy::NAMES[Policy::ALL.iter().position(|p| *p == self).expect("every policy is listed")]
    }

    pub fn tracking(self) -> Tracking {
        match self {
            Policy::AllKeysLru | Policy::VolatileLru => Tracking::Lru,
            Policy::AllKeysLfu | Policy::VolatileLfu => Tracking::Lfu,
            _ => Tracking::None,
        }
    }

    /// Only keys with a TTL may be evicted.
    pub fn volatile_only(self) -> bool {
        matches!(self, Policy::VolatileLru | Policy::VolatileLfu | Policy::VolatileTtl | Policy::VolatileRandom)
    }
}

/// The LRU clock at `now_ms`.
pub fn lru_clock(now_ms: u64) -> u32 {
    ((now_ms / 1000) as u32) & META_CLOCK_MASK
}

/// Seconds since the access recorded in `clock`, at `now_ms`.
fn lru_idle(clock: u32, now_ms: u64) -> u32 {
    lru_clock(now_ms).wrapping_sub(clock) & META_CLOCK_MASK
}

fn minutes(now_ms: u64) -> u32 {
    ((now_ms / 60_000) as u32) & 0xFFFF
}

/// An LFU counter after the minutes that passed since `clock` was set.
fn lfu_decayed(clock: u32, now_ms: u64) -> u32 {
    let elapsed = minutes(now_ms).wrapping_sub(clock >> 8) & 0xFFFF;
    (clock & 0xFF).saturating_sub(elapsed)
}

/// The LFU clock of a new key at `now_ms`.
pub fn lfu_new(now_ms: u64) -> u32 {
    (minutes(now_ms) << 8) | LFU_INIT
}

/// The LFU clock after one access at `now_ms`; `coin` is a uniform random
/// number (the logarithmic increment is probabilistic).
pub fn lfu_touch(clock: u32, now_ms: u64, coin: u64) -> u32 {
    let mut counter = lfu_decayed(clock, now_ms);
    if counter < 255 {
        let base = counter.saturating_sub(LFU_INIT);
        let odds = (base * LFU_LOG_FACTOR + 1) as u64;
        if coin.is_multiple_of(odds) {
            counter += 1;
        }
    }
    (minutes(now_ms) << 8) | counter
}

/// How good a victim `stored` is under `policy` at `now_ms` (higher:
/// evict sooner), or `None` if the policy may not evict it.
pub fn victim_score(policy: Policy, stored: &Entry, now_ms: u64, coin: u64) -> Option<u64> {
    if policy.volatile_only() && stored.expires_at_ms() == 0 {
        return None;
    }
    Some(match policy {
        Policy::NoEviction => return None,
        Policy::AllKeysLru | Policy::VolatileLru => lru_idle(stored.clock(), now_ms) as u64,
        Policy::AllKeysLfu | Policy::VolatileLfu => 255 - lfu_decayed(stored.clock(), now_ms) as u64,
        Policy::VolatileTtl => u64::MAX - stored.expires_at_ms(),
        Policy::AllKeysRandom | Policy::VolatileRandom => coin,
    })
}

/// The `pick` best victims among `sampled` entries, best first.
pub fn best_victims(
    policy: Policy,
    sampled: Vec<&Entry>,
    now_ms: u64,
    pick: usize,
    coins: &mut impl FnMut() -> u64,
) -> Vec<Bytes> {
    let mut scored: Vec<(u64, &[u8])> =
        sampled.into_iter().filter_map(|e| victim_score(policy, e, now_ms, coins()).map(|v| (v, e.key()))).collect();
    scored.sort_unstable_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1)));
    scored.dedup_by(|a, b| a.1 == b.1);
    scored.into_iter().take(pick).map(|(_, k)| Bytes::copy_from_slice(k)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_have_redis_names() {
        for name in Policy::NAMES {
            assert_eq!(Policy::parse(name).unwrap().name(), name);
        }
        assert_eq!(Policy::parse("allkeys-lru").unwrap().tracking(), Tracking::Lru);
        assert!(Policy::parse("volatile-random").unwrap().volatile_only());
        assert_eq!(Policy::parse("lru"), None);
    }

    #[test]
    fn lru_prefers_the_longest_idle_and_lfu_the_least_used() {
        let now = 10_000_000;
        let old = Entry::new(b"old", b"", 1, 0, false);
        old.set_clock(lru_clock(now - 500_000));
        let fresh = Entry::new(b"fresh", b"", 2, 0, false);
        fresh.set_clock(lru_clock(now));
        let (a, b) = (Bytes::from_static(b"old"), Bytes::from_static(b"fresh"));
        let victims = best_victims(Policy::AllKeysLru, vec![&fresh, &old], now, 1, &mut || 0);
        assert_eq!(victims, vec![a.clone()]);
        // LFU: many touches raise the counter; a new key starts at LFU_INIT.
        let mut clock = lfu_new(now);
        for i in 0..10_000u64 {
            clock = lfu_touch(clock, now, i.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        }
        assert!((clock & 0xFF) > LFU_INIT + 5, "counter {}", clock & 0xFF);
        let hot = Entry::new(b"old", b"", 3, 0, false);
        hot.set_clock(clock);
        let cold = Entry::new(b"fresh", b"", 4, 0, false);
        cold.set_clock(lfu_new(now));
        let victims = best_victims(Policy::AllKeysLfu, vec![&hot, &cold], now, 1, &mut || 0);
        assert_eq!(victims, vec![b.clone()]);
        // An hour later, the counter has decayed.
        assert!(lfu_decayed(clock, now + 3_600_000) < (clock & 0xFF));
        // Volatile policies skip keys without a TTL.
        assert!(best_victims(Policy::VolatileLru, vec![&old], now, 1, &mut || 0).is_empty());
    }
}
