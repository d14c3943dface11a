//! One shard's state machine: a hash map from key to (value, version,
//! expiry), plus the Raft index of the last command applied to it.
//!
//! Invariants:
//! - a stored value's version is the Raft index of the command that wrote
//!   it, so versions of one shard strictly increase with every write
//!   (changing only a key's TTL keeps its version);
//! - commands are applied in index order, each exactly once
//!   (`apply` asserts `index > applied_index`);
//! - `data_bytes` is the sum of key and value lengths of all entries;
//! - `expiries` holds exactly the (expiry, key) of every entry with a TTL.
//!
//! Time: applying uses only the command's `now_ms` (the proposer's clock), so
//! every replica makes the same decision about which keys have expired.
//! Readers pass their own clock to [`ShardMap::live`]; a key whose expiry has
//! passed is never returned, even before a reap command removes it.

use std::cell::Cell;
use std::collections::BTreeSet;
use std::mem::size_of;

use bytes::{Bytes, BytesMut};
use hashbrown::HashMap;

use crate::command::{Command, Condition, Decoded, ExpireWhen, Expiry, Outcome, Refusal};
use crate::evict::{self, Policy, Tracking};
pub use crate::stored::Stored;

/// Never shrink a map below this many buckets: tiny maps are not worth the
/// rehash, and it keeps shrink/grow from oscillating around small sizes.
const SHRINK_CAPACITY_MIN: usize = 1024;
/// Shrink when fewer than 1/SHRINK_RATIO of the buckets are used. The rehash
/// costs O(len), paid for by the (ratio - 1) × len deletes before it.
const SHRINK_RATIO: usize = 4;
/// Longest decimal text INCR accepts (Redis's limit: `-9223372036854775808`).
const INTEGER_TEXT_BYTES_MAX: usize = 20;
/// Longest text INCRBYFLOAT accepts as a number.
const FLOAT_TEXT_BYTES_MAX: usize = 5 * 1024;

thread_local! {
    /// Fixed hash keys for the maps a simulation creates (see
    /// `ShardMap::set_thread_hash_seed`).
    static HASH_SEED: Cell<Option<u64>> = const { Cell::new(None) };
}

/// The in-memory map of one shard.
#[derive(Debug, Default)]
pub struct ShardMap {
    entries: HashMap<Bytes, Stored, ahash::RandomState>,
    expiries: BTreeSet<(u64, Bytes)>,
    data_bytes: u64,
    applied_index: u64,
    /// Of the compressed values: their plain bytes, and what they take.
    compressed_plain_bytes: u64,
    compressed_stored_bytes: u64,
    /// What reads and writes record for eviction (this replica only).
    tracking: Tracking,
    /// Random numbers for LFU increments and eviction sampling (xorshift;
    /// local bookkeeping, nothing replicated depends on it).
    rng: Cell<u64>,
    /// The clock of the command being applied: the access time writes
    /// record.
    clock_ms: u64,
}

impl ShardMap {
    pub fn new() -> ShardMap {
        let hasher = match HASH_SEED.with(Cell::get) {
            // A deterministic simulation: the same layout, so the same
            // sampled eviction victims, in every run of a seed.
            Some(seed) => ahash::RandomState::with_seeds(seed, seed ^ 1, seed ^ 2, seed ^ 3),
            None => ahash::RandomState::new(),
        };
        ShardMap { entries: HashMap::with_hasher(hasher), ..ShardMap::default() }
    }

    /// Makes the maps this thread creates from now on hash with fixed keys
    /// (`None`: random keys, as a server's must be against hash flooding).
    /// For deterministic simulation only.
    pub fn set_thread_hash_seed(seed: Option<u64>) {
        HASH_SEED.with(|s| s.set(seed));
    }

    /// The entry as stored, expired or not.
    pub fn get(&self, key: &[u8]) -> Option<&Stored> {
        self.entries.get(key)
    }

    /// The entry if it has not expired by `now_ms`.
    pub fn live(&self, key: &[u8], now_ms: u64) -> Option<&Stored> {
        self.entries.get(key).filter(|s| s.is_live(now_ms))
    }

    /// A live entry as a client reads it (value decompressed), recording
    /// the access for eviction.
    pub fn read(&self, key: &[u8], now_ms: u64) -> Option<Stored> {
        let stored = self.live(key, now_ms)?;
        self.touch(stored, now_ms);
        Some(stored.to_plain())
    }

    /// What accesses record from now on (the eviction policy's need).
    pub fn set_tracking(&mut self, tracking: Tracking) {
        self.tracking = tracking;
    }

    fn touch(&self, stored: &Stored, now_ms: u64) {
        match self.tracking {
            Tracking::None => {}
            Tracking::Lru => stored.set_clock(evict::lru_clock(now_ms)),
            Tracking::Lfu => stored.set_clock(evict::lfu_touch(stored.clock(), now_ms, self.next_random())),
        }
    }

    fn next_random(&self) -> u64 {
        // xorshift64*; seeded lazily (0 is its one fixed point).
        let mut x = self.rng.get();
        if x == 0 {
            x = 0x9E37_79B9_7F4A_7C15;
        }
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng.set(x);
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Up to `pick` keys to evict under `policy`: for each, the best victim
    /// among `EVICTION_SAMPLES` sampled entries (see `evict.rs`).
    pub fn eviction_victims(&self, policy: Policy, now_ms: u64, pick: usize) -> Vec<Bytes> {
        if policy == Policy::VolatileTtl {
            return self.expiries.iter().take(pick).map(|(_, k)| k.clone()).collect();
        }
        let mut victims: Vec<Bytes> = Vec::with_capacity(pick);
        for _ in 0..pick {
            let sampled = self.sample(evict::EVICTION_SAMPLES);
            let fresh = sampled.into_iter().filter(|(k, _)| !victims.contains(k)).collect();
            match evict::best_victims(policy, fresh, now_ms, 1, &mut || self.next_random()).pop() {
                Some(v) => victims.push(v),
                None if policy.volatile_only() => break,
                None => {}
            }
        }
        victims
    }

    /// About `n` entries drawn at random (repeats possible): a random
    /// bucket of the table, then the first full one from there, as Redis
    /// samples its dictionary.
    fn sample(&self, n: usize) -> Vec<(&Bytes, &Stored)> {
        let table = self.entries.raw_table();
        let buckets = table.buckets();
        if self.entries.is_empty() {
            return Vec::new();
        }
        (0..n)
            .map(|_| {
                let mut i = self.next_random() as usize & (buckets - 1);
                // SAFETY: `i` stays below `buckets` (a power of two), the
                // table is not empty so a full bucket exists within one
                // turn, and the map is borrowed for the entries' lifetime.
                unsafe {
                    while !table.is_bucket_full(i) {
                        i = (i + 1) & (buckets - 1);
                    }
                    let (k, v) = table.bucket(i).as_ref();
                    (k, v)
                }
            })
            .collect()
    }

    /// Plain and stored bytes of the compressed values.
    pub fn compression_bytes(&self) -> (u64, u64) {
        (self.compressed_plain_bytes, self.compressed_stored_bytes)
    }

    /// Entries, expired ones not yet reaped included.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Entries with a TTL.
    pub fn expires_len(&self) -> usize {
        self.expiries.len()
    }

    /// Up to `max` keys that have expired by `now_ms`, soonest first: what an
    /// active expiry cycle proposes to reap. O(max · log n).
    pub fn expired(&self, now_ms: u64, max: usize) -> Vec<Bytes> {
        self.expiries.iter().take_while(|(at, _)| *at <= now_ms).take(max).map(|(_, k)| k.clone()).collect()
    }

    /// Index of the last command applied (or of the snapshot restored).
    pub fn applied_index(&self) -> u64 {
        self.applied_index
    }

    /// Bytes of keys and values held.
    pub fn data_bytes(&self) -> u64 {
        self.data_bytes
    }

    /// Estimated heap bytes: data plus the map's own table and the expiry index.
    pub fn memory_bytes(&self) -> u64 {
        let slot = size_of::<(Bytes, Stored)>() + 1;
        let expiry = size_of::<(u64, Bytes)>() * 2;
        self.data_bytes + (self.entries.capacity() * slot + self.expiries.len() * expiry) as u64
    }

    pub fn capacity(&self) -> usize {
        self.entries.capacity()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&Bytes, &Stored)> {
        self.entries.iter()
    }

    /// Records that entry `index` was applied without changing the map (an
    /// empty entry of a new leader, a membership change).
    pub fn apply_noop(&mut self, index: u64) {
        assert!(index > self.applied_index, "apply out of order: {index} after {}", self.applied_index);
        self.applied_index = index;
    }

    /// Applies a decoded log entry at Raft index `index` (its values may be
    /// compressed frames, see [`Decoded`]).
    pub fn apply_entry(&mut self, index: u64, entry: Decoded) -> Outcome {
        let Decoded { now_ms, command, compressed } = entry;
        self.clock_ms = now_ms;
        match command {
            Command::Put { key, value, condition } if compressed => {
                self.apply_noop(index);
                self.drop_if_expired(&key, now_ms);
                self.set(index, key, Value::Frame(value), condition, Expiry::Clear, false)
            }
            Command::Set { key, value, condition, expiry, get } if compressed => {
                self.apply_noop(index);
                self.drop_if_expired(&key, now_ms);
                self.set(index, key, Value::Frame(value), condition, expiry, get)
            }
            command => {
                assert!(!compressed, "only puts carry compressed values");
                self.apply(index, now_ms, command)
            }
        }
    }

    /// Applies a committed command at Raft index `index`, proposed at `now_ms`.
    pub fn apply(&mut self, index: u64, now_ms: u64, command: Command) -> Outcome {
        self.apply_noop(index);
        self.clock_ms = now_ms;
        if let Command::Rename { to, .. } = &command {
            self.drop_if_expired(to, now_ms);
        }
        if let Command::MultiPut { pairs, .. } = &command {
            for (k, _) in pairs {
                self.drop_if_expired(k, now_ms);
            }
        }
        match &command {
            Command::Clear | Command::Reap { .. } | Command::Evict { .. } | Command::MultiPut { .. } => {}
            other => self.drop_if_expired(other.key(), now_ms),
        }
        match command {
            Command::Put { key, value, condition } => {
                self.set(index, key, Value::Plain(value), condition, Expiry::Clear, false)
            }
            Command::Set { key, value, condition, expiry, get } => {
                self.set(index, key, Value::Plain(value), condition, expiry, get)
            }
            Command::Delete { key, condition } => self.delete(&key, condition),
            Command::Expire { key, expiry, when, get } => self.expire(now_ms, &key, expiry, when, get),
            Command::Incr { key, by } => self.incr(index, key, by),
            Command::IncrFloat { key, by } => self.incr_float(index, key, by),
            Command::Append { key, value, length_max } => {
                let old = self.entries.get(&key[..]).map_or(0, |s| s.plain_len()) as u64;
                self.splice(index, key, old, value, length_max)
            }
            Command::SetRange { key, offset, value, length_max } => {
                if value.is_empty() {
                    return Outcome::Integer(self.entries.get(&key[..]).map_or(0, |s| s.plain_len()) as i64);
                }
                self.splice(index, key, offset, value, length_max)
            }
            Command::Rename { from, to, if_absent } => self.rename(index, from, to, if_absent),
            Command::MultiPut { pairs, if_absent } => self.multi_put(index, pairs, if_absent),
            Command::Clear => self.clear(),
            Command::Reap { keys } => self.reap(now_ms, &keys),
            Command::Evict { keys } => self.evict(&keys),
        }
    }

    fn set(&mut self, index: u64, key: Bytes, value: Value, cond: Condition, expiry: Expiry, get: bool) -> Outcome {
        let current = self.entries.get(&key[..]);
        let (version, old_expiry) = (current.map(|s| s.version), current.map_or(0, |s| s.expires_at_ms));
        let old_value = if get { current.map(|s| s.plain()) } else { None };
        if !holds(cond, version) {
            return match get {
                true => Outcome::Previous { value: old_value, version: None },
                false => Outcome::ConditionFailed { current_version: version },
            };
        }
        let expires_at_ms = match expiry {
            Expiry::Clear => 0,
            Expiry::Keep => old_expiry,
            Expiry::At(ms) => ms,
        };
        let stored = match value {
            Value::Plain(v) => Stored::with_expiry(v, index, expires_at_ms),
            Value::Frame(f) => Stored::compressed(f, index, expires_at_ms),
        };
        self.store(key, stored);
        match get {
            true => Outcome::Previous { value: old_value, version: Some(index) },
            false => Outcome::Written { version: index },
        }
    }

    fn delete(&mut self, key: &[u8], condition: Condition) -> Outcome {
        let current = self.entries.get(key).map(|s| s.version);
        if current.is_none() {
            return match condition {
                Condition::Always | Condition::IfExists => Outcome::NotFound,
                _ => Outcome::ConditionFailed { current_version: None },
            };
        }
        if !holds(condition, current) {
            return Outcome::ConditionFailed { current_version: current };
        }
        let stored = self.remove(key).expect("present: checked above");
        Outcome::Deleted { version: stored.version }
    }

    fn expire(&mut self, now_ms: u64, key: &Bytes, expiry: Expiry, when: ExpireWhen, get: bool) -> Outcome {
        let answer = |applied: bool, value: Option<Bytes>| match get {
            true => Outcome::Previous { value, version: None },
            false => Outcome::Integer(applied as i64),
        };
        let Some(stored) = self.entries.get(&key[..]) else {
            return answer(false, None);
        };
        let (current, value) = (stored.expires_at_ms, get.then(|| stored.plain()));
        let new = match expiry {
            Expiry::Keep => return answer(false, value),
            Expiry::Clear if current == 0 => return answer(false, value),
            Expiry::Clear => 0,
            Expiry::At(ms) => ms,
        };
        let holds = match when {
            ExpireWhen::Always => true,
            ExpireWhen::IfNone => current == 0,
            ExpireWhen::IfSome => current != 0,
            ExpireWhen::IfLater => current != 0 && new > current,
            ExpireWhen::IfEarlier => current == 0 || new < current,
        };
        if !holds {
            return answer(false, value);
        }
        if new != 0 && new <= now_ms {
            self.remove(key);
        } else {
            let stored = self.remove(key).expect("present: checked above");
            self.store(key.clone(), stored.rewritten(stored.version, new));
        }
        answer(true, value)
    }

    fn incr(&mut self, index: u64, key: Bytes, by: i64) -> Outcome {
        let current = match self.entries.get(&key[..]) {
            None => 0,
            Some(s) => match parse_integer(&s.plain()) {
                Some(n) => n,
                None => return Outcome::Refused(Refusal::NotInteger),
            },
        };
        let Some(new) = current.checked_add(by) else {
            return Outcome::Refused(Refusal::Overflow);
        };
        self.replace_value(index, key, Bytes::from(new.to_string()));
        Outcome::Integer(new)
    }

    fn incr_float(&mut self, index: u64, key: Bytes, by: f64) -> Outcome {
        let current = match self.entries.get(&key[..]) {
            None => 0.0,
            Some(s) => match parse_float(&s.plain()) {
                Some(n) => n,
                None => return Outcome::Refused(Refusal::NotFloat),
            },
        };
        let new = current + by;
        if !new.is_finite() {
            return Outcome::Refused(Refusal::NotFloat);
        }
        let text = Bytes::from(format!("{new}"));
        self.replace_value(index, key, text.clone());
        Outcome::Bulk(text)
    }

    /// Writes `value` at `offset` of the key's value (zero-padded), keeping its TTL.
    fn splice(&mut self, index: u64, key: Bytes, offset: u64, value: Bytes, length_max: u64) -> Outcome {
        let end = offset.saturating_add(value.len() as u64);
        let old = self.entries.get(&key[..]).map(|s| s.plain()).unwrap_or_default();
        let new_len = end.max(old.len() as u64);
        if new_len > length_max {
            return Outcome::Refused(Refusal::TooLarge);
        }
        let mut buf = BytesMut::with_capacity(new_len as usize);
        buf.extend_from_slice(&old);
        buf.resize(new_len as usize, 0);
        buf[offset as usize..end as usize].copy_from_slice(&value);
        self.replace_value(index, key, buf.freeze());
        Outcome::Integer(new_len as i64)
    }

    fn rename(&mut self, index: u64, from: Bytes, to: Bytes, if_absent: bool) -> Outcome {
        if !self.entries.contains_key(&from[..]) {
            return Outcome::Refused(Refusal::NoSuchKey);
        }
        if from == to {
            return Outcome::Integer(!if_absent as i64);
        }
        if if_absent && self.entries.contains_key(&to[..]) {
            return Outcome::Integer(0);
        }
        let stored = self.remove(&from).expect("present: checked above");
        self.remove(&to);
        self.store(to, stored.rewritten(index, stored.expires_at_ms));
        Outcome::Integer(1)
    }

    fn multi_put(&mut self, index: u64, pairs: Vec<(Bytes, Bytes)>, if_absent: bool) -> Outcome {
        if if_absent && pairs.iter().any(|(k, _)| self.entries.contains_key(&k[..])) {
            return Outcome::Integer(0);
        }
        for (key, value) in pairs {
            self.store(key, Stored::new(value, index));
        }
        Outcome::Integer(1)
    }

    fn clear(&mut self) -> Outcome {
        let removed = self.entries.len();
        self.entries = HashMap::with_hasher(self.entries.hasher().clone());
        self.expiries.clear();
        self.data_bytes = 0;
        Outcome::Integer(removed as i64)
    }

    fn reap(&mut self, now_ms: u64, keys: &[Bytes]) -> Outcome {
        let mut removed = 0;
        for key in keys {
            if self.entries.get(&key[..]).is_some_and(|s| !s.is_live(now_ms)) {
                self.remove(key);
                removed += 1;
            }
        }
        Outcome::Integer(removed)
    }

    fn evict(&mut self, keys: &[Bytes]) -> Outcome {
        let removed = keys.iter().filter(|k| self.remove(k).is_some()).count();
        Outcome::Integer(removed as i64)
    }

    /// Removes `key` if it has expired by `now_ms`, so that the command
    /// applied next sees it absent, on every replica alike.
    fn drop_if_expired(&mut self, key: &[u8], now_ms: u64) {
        if self.entries.get(key).is_some_and(|s| !s.is_live(now_ms)) {
            self.remove(key);
        }
    }

    /// A new value for the key at this version, keeping its TTL.
    fn replace_value(&mut self, index: u64, key: Bytes, value: Bytes) {
        let expires_at_ms = self.entries.get(&key[..]).map_or(0, |s| s.expires_at_ms);
        self.store(key, Stored::with_expiry(value, index, expires_at_ms));
    }

    /// Inserts or replaces an entry, keeping the byte count and the expiry
    /// index exact.
    fn store(&mut self, key: Bytes, mut stored: Stored) {
        stored.value = owned(std::mem::take(&mut stored.value));
        let key = match self.entries.get(&key[..]) {
            Some(old) => {
                if old.expires_at_ms != 0 {
                    self.expiries.remove(&(old.expires_at_ms, key.clone()));
                }
                self.data_bytes -= old.value.len() as u64;
                self.data_bytes += stored.value.len() as u64;
                if old.is_compressed() {
                    let counts = compressed_counts(old);
                    self.count_compressed(counts, false);
                }
                // The map keeps its own copy of the key.
                key
            }
            None => {
                self.data_bytes += (key.len() + stored.value.len()) as u64;
                owned(key)
            }
        };
        if stored.expires_at_ms != 0 {
            self.expiries.insert((stored.expires_at_ms, key.clone()));
        }
        if stored.is_compressed() {
            self.count_compressed(compressed_counts(&stored), true);
        }
        match self.tracking {
            Tracking::None => {}
            Tracking::Lru => stored.set_clock(evict::lru_clock(self.clock_ms)),
            Tracking::Lfu => stored.set_clock(evict::lfu_new(self.clock_ms)),
        }
        self.entries.insert(key, stored);
    }

    fn count_compressed(&mut self, (plain, held): (u64, u64), added: bool) {
        if added {
            self.compressed_plain_bytes += plain;
            self.compressed_stored_bytes += held;
        } else {
            self.compressed_plain_bytes -= plain;
            self.compressed_stored_bytes -= held;
        }
    }

    fn remove(&mut self, key: &[u8]) -> Option<Stored> {
        let (key, stored) = self.entries.remove_entry(key)?;
        self.data_bytes -= (key.len() + stored.value.len()) as u64;
        if stored.expires_at_ms != 0 {
            self.expiries.remove(&(stored.expires_at_ms, key));
        }
        if stored.is_compressed() {
            self.count_compressed(compressed_counts(&stored), false);
        }
        self.maybe_shrink();
        Some(stored)
    }

    /// Gives memory back after many deletes (hash maps never shrink alone).
    fn maybe_shrink(&mut self) {
        let capacity = self.entries.capacity();
        if capacity > SHRINK_CAPACITY_MIN && self.entries.len() * SHRINK_RATIO < capacity {
            self.entries.shrink_to((self.entries.len() * 2).max(SHRINK_CAPACITY_MIN));
        }
    }

    /// Replaces the whole state with a snapshot's content.
    pub fn restore(&mut self, applied_index: u64, entries: Vec<(Bytes, Stored)>) {
        let tracking = self.tracking;
        *self = ShardMap::new();
        self.tracking = tracking;
        self.entries.reserve(entries.len());
        for (key, stored) in entries {
            assert!(stored.version <= applied_index, "snapshot entry newer than the snapshot");
            self.store(key, stored);
        }
        self.applied_index = applied_index;
    }
}

/// Keys and values at most this long are copied out of the buffer they
/// arrived in when stored (the applied entry, or a snapshot): a slice
/// would keep the whole buffer (the entry's header and its other fields,
/// or every key of the snapshot) alive as long as the key lives.
const OWNED_BYTES_MAX: usize = 4096;

fn owned(b: Bytes) -> Bytes {
    if b.len() <= OWNED_BYTES_MAX {
        Bytes::copy_from_slice(&b)
    } else {
        b
    }
}

/// Redis's integer syntax: an optional minus, no leading zeros, no plus
/// sign, no spaces, and within i64.
pub fn parse_integer(text: &[u8]) -> Option<i64> {
    if text.is_empty() || text.len() > INTEGER_TEXT_BYTES_MAX {
        return None;
    }
    let digits = text.strip_prefix(b"-").unwrap_or(text);
    let canonical = digits == b"0" && text.len() == 1 || digits.first().is_some_and(|d| (b'1'..=b'9').contains(d));
    if !canonical || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(text).ok()?.parse().ok()
}

/// A finite float in decimal or exponent notation, no spaces.
pub fn parse_float(text: &[u8]) -> Option<f64> {
    if text.is_empty() || text.len() > FLOAT_TEXT_BYTES_MAX || text[0].is_ascii_whitespace() {
        return None;
    }
    let value: f64 = std::str::from_utf8(text).ok()?.parse().ok()?;
    value.is_finite().then_some(value)
}

/// Plain and held bytes of a compressed value.
fn compressed_counts(stored: &Stored) -> (u64, u64) {
    (stored.plain_len() as u64, stored.value.len() as u64)
}

/// A value to store: as the client gave it, or as a zstd frame.
enum Value {
    Plain(Bytes),
    Frame(Bytes),
}

fn holds(condition: Condition, current: Option<u64>) -> bool {
    match condition {
        Condition::Always => true,
        Condition::IfAbsent => current.is_none(),
        Condition::IfExists => current.is_some(),
        Condition::IfVersion(v) => current == Some(v),
    }
}

#[cfg(test)]
mod tests;
