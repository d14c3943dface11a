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
use hashbrown::raw::RawTable;

use crate::command::{Command, Condition, Decoded, ExpireWhen, Expiry, Outcome, Refusal};
use crate::entry::Entry;
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
#[derive(Default)]
pub struct ShardMap {
    /// One 8-byte bucket per entry (a thin pointer to its block), found by
    /// the hash of the key the block holds.
    entries: RawTable<Entry>,
    hasher: ahash::RandomState,
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
        ShardMap { hasher, ..ShardMap::default() }
    }

    fn find(&self, key: &[u8]) -> Option<&Entry> {
        self.entries.get(hash_key(&self.hasher, key), |e| e.key() == key)
    }

    /// Starts loading what looking `keys` up will touch, so that the
    /// lookups of a batch wait for memory once, together, instead of once
    /// each in turn (a map larger than the caches misses twice per key: the
    /// table's control bytes and bucket, then the entry's block). Changes
    /// nothing; a hint only.
    pub fn prefetch<'k>(&self, keys: impl Iterator<Item = &'k [u8]>) {
        let hashes: Vec<u64> = keys.map(|k| hash_key(&self.hasher, k)).collect();
        if self.entries.is_empty() {
            return;
        }
        // Pass 1: the control bytes and the bucket where each probe starts.
        for hash in &hashes {
            let (control, bucket) = self.probe_start(*hash);
            crate::entry::prefetch(control);
            crate::entry::prefetch(bucket as *const u8);
        }
        // Pass 2: the blocks of the buckets whose tag matches (a probe that
        // compares no key, so it waits for no block).
        for hash in hashes {
            self.entries.find(hash, |e| {
                e.prefetch();
                false
            });
        }
    }

    /// Where a probe for `hash` starts: its control byte and its bucket.
    /// hashbrown keeps the buckets just before the control bytes, bucket i
    /// at `data_end - i - 1`, and starts at `hash & (buckets - 1)`; a wrong
    /// guess would only waste the prefetch (a test pins the guess).
    fn probe_start(&self, hash: u64) -> (*const u8, *const Entry) {
        let at = hash as usize & (self.entries.buckets() - 1);
        let end = self.entries.data_end().as_ptr() as *const Entry;
        ((end as *const u8).wrapping_add(at), end.wrapping_sub(at + 1))
    }

    fn contains(&self, key: &[u8]) -> bool {
        self.find(key).is_some()
    }

    /// Makes the maps this thread creates from now on hash with fixed keys
    /// (`None`: random keys, as a server's must be against hash flooding).
    /// For deterministic simulation only.
    pub fn set_thread_hash_seed(seed: Option<u64>) {
        HASH_SEED.with(|s| s.set(seed));
    }

    /// The entry as stored (its value compressed or not), expired or not.
    pub fn get(&self, key: &[u8]) -> Option<Stored> {
        self.find(key).map(Entry::to_stored)
    }

    /// The entry if it has not expired by `now_ms`.
    pub fn live(&self, key: &[u8], now_ms: u64) -> Option<&Entry> {
        self.find(key).filter(|e| e.is_live(now_ms))
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

    pub fn tracking(&self) -> Tracking {
        self.tracking
    }

    fn touch(&self, stored: &Entry, now_ms: u64) {
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
            let fresh = sampled.into_iter().filter(|e| !victims.iter().any(|v| v[..] == *e.key())).collect();
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
    fn sample(&self, n: usize) -> Vec<&Entry> {
        let table = &self.entries;
        let buckets = table.buckets();
        if table.is_empty() {
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
                    table.bucket(i).as_ref()
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

    /// Estimated heap bytes: data and each block's head, the table's
    /// buckets (a pointer and a control byte each) and the expiry index.
    pub fn memory_bytes(&self) -> u64 {
        let head = crate::entry::HEAD_BYTES;
        let bucket = size_of::<Entry>() + 1;
        let expiry = size_of::<(u64, Bytes)>() * 2;
        let overhead = self.entries.len() * head + self.entries.buckets() * bucket + self.expiries.len() * expiry;
        self.data_bytes + overhead as u64
    }

    pub fn capacity(&self) -> usize {
        self.entries.capacity()
    }

    /// Every entry, expired ones not yet reaped included, in no order.
    pub fn iter(&self) -> impl Iterator<Item = &Entry> {
        // SAFETY: the iterator borrows the map, so no bucket is freed or
        // moved while its entries are in use.
        unsafe { self.entries.iter().map(|bucket| bucket.as_ref()) }
    }

    /// A copy of every entry as the engine hands entries out (what a
    /// snapshot holds): cheap, long values are lent, not copied.
    pub fn pairs(&self) -> Vec<(Bytes, Stored)> {
        self.iter().map(|e| (Bytes::copy_from_slice(e.key()), e.to_stored())).collect()
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
                let old = self.find(&key).map_or(0, Entry::plain_len) as u64;
                self.splice(index, key, old, value, length_max)
            }
            Command::SetRange { key, offset, value, length_max } => {
                if value.is_empty() {
                    return Outcome::Integer(self.find(&key).map_or(0, Entry::plain_len) as i64);
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
        let current = self.find(&key);
        let (version, old_expiry) = (current.map(Entry::version), current.map_or(0, Entry::expires_at_ms));
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
        let compressed = matches!(value, Value::Frame(_));
        let (Value::Plain(v) | Value::Frame(v)) = value;
        self.store(Entry::new(&key, &v, index, expires_at_ms, compressed));
        match get {
            true => Outcome::Previous { value: old_value, version: Some(index) },
            false => Outcome::Written { version: index },
        }
    }

    fn delete(&mut self, key: &[u8], condition: Condition) -> Outcome {
        let current = self.find(key).map(Entry::version);
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
        Outcome::Deleted { version: stored.version() }
    }

    fn expire(&mut self, now_ms: u64, key: &Bytes, expiry: Expiry, when: ExpireWhen, get: bool) -> Outcome {
        let answer = |applied: bool, value: Option<Bytes>| match get {
            true => Outcome::Previous { value, version: None },
            false => Outcome::Integer(applied as i64),
        };
        let Some(stored) = self.find(key) else {
            return answer(false, None);
        };
        let (current, value) = (stored.expires_at_ms(), get.then(|| stored.plain()));
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
            self.store(stored.rewritten(key, stored.version(), new));
        }
        answer(true, value)
    }

    fn incr(&mut self, index: u64, key: Bytes, by: i64) -> Outcome {
        let current = match self.find(&key) {
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
        let current = match self.find(&key) {
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
        let old = self.find(&key).map(Entry::plain).unwrap_or_default();
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
        if !self.contains(&from) {
            return Outcome::Refused(Refusal::NoSuchKey);
        }
        if from == to {
            return Outcome::Integer(!if_absent as i64);
        }
        if if_absent && self.contains(&to) {
            return Outcome::Integer(0);
        }
        let stored = self.remove(&from).expect("present: checked above");
        self.remove(&to);
        self.store(stored.rewritten(&to, index, stored.expires_at_ms()));
        Outcome::Integer(1)
    }

    fn multi_put(&mut self, index: u64, pairs: Vec<(Bytes, Bytes)>, if_absent: bool) -> Outcome {
        if if_absent && pairs.iter().any(|(k, _)| self.contains(k)) {
            return Outcome::Integer(0);
        }
        for (key, value) in pairs {
            self.store(Entry::new(&key, &value, index, 0, false));
        }
        Outcome::Integer(1)
    }

    fn clear(&mut self) -> Outcome {
        let removed = self.entries.len();
        self.entries = RawTable::new();
        self.expiries.clear();
        self.data_bytes = 0;
        Outcome::Integer(removed as i64)
    }

    fn reap(&mut self, now_ms: u64, keys: &[Bytes]) -> Outcome {
        let mut removed = 0;
        for key in keys {
            if self.find(key).is_some_and(|s| !s.is_live(now_ms)) {
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
        if self.find(key).is_some_and(|s| !s.is_live(now_ms)) {
            self.remove(key);
        }
    }

    /// A new value for the key at this version, keeping its TTL.
    fn replace_value(&mut self, index: u64, key: Bytes, value: Bytes) {
        let expires_at_ms = self.find(&key).map_or(0, Entry::expires_at_ms);
        self.store(Entry::new(&key, &value, index, expires_at_ms, false));
    }

    /// Inserts or replaces an entry, keeping the byte count, the expiry
    /// index and the compression counts exact.
    /// Records a new entry's first access for eviction.
    fn stamp_new(&self, entry: &Entry) {
        match self.tracking {
            Tracking::None => {}
            Tracking::Lru => entry.set_clock(evict::lru_clock(self.clock_ms)),
            Tracking::Lfu => entry.set_clock(evict::lfu_new(self.clock_ms)),
        }
    }

    fn store(&mut self, entry: Entry) {
        self.stamp_new(&entry);
        // What the new entry counts for, taken before the table owns it;
        // added after the old entry's is taken away (both may hold the
        // same expiry).
        let counts = Counts::of(&entry);
        let hash = hash_key(&self.hasher, entry.key());
        let hasher = &self.hasher;
        let old = match self.entries.find_or_find_insert_slot(
            hash,
            |e| e.key() == entry.key(),
            |e| hash_key(hasher, e.key()),
        ) {
            // SAFETY: the bucket was just found in this table, which is
            // borrowed mutably until the swap is done.
            Ok(bucket) => Some(std::mem::replace(unsafe { bucket.as_mut() }, entry)),
            Err(slot) => {
                // SAFETY: the slot was just found for this hash, and the
                // table has not changed since.
                unsafe { self.entries.insert_in_slot(hash, slot, entry) };
                None
            }
        };
        if let Some(old) = old {
            self.count(Counts::of(&old), false);
        }
        self.count(counts, true);
    }

    /// Adds (or takes away) what an entry counts for.
    fn count(&mut self, counts: Counts, added: bool) {
        let Counts { bytes, expiry, compressed } = counts;
        if added {
            self.data_bytes += bytes;
            expiry.map(|e| self.expiries.insert(e));
        } else {
            self.data_bytes -= bytes;
            expiry.map(|e| self.expiries.remove(&e));
        }
        if let Some((plain, held)) = compressed {
            self.count_compressed((plain, held), added);
        }
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

    fn remove(&mut self, key: &[u8]) -> Option<Entry> {
        let entry = self.entries.remove_entry(hash_key(&self.hasher, key), |e| e.key() == key)?;
        self.count(Counts::of(&entry), false);
        self.maybe_shrink();
        Some(entry)
    }

    /// Gives memory back after many deletes (hash maps never shrink alone).
    fn maybe_shrink(&mut self) {
        let capacity = self.entries.capacity();
        if capacity > SHRINK_CAPACITY_MIN && self.entries.len() * SHRINK_RATIO < capacity {
            let hasher = &self.hasher;
            let min = (self.entries.len() * 2).max(SHRINK_CAPACITY_MIN);
            self.entries.shrink_to(min, |e| hash_key(hasher, e.key()));
        }
    }

    /// Replaces the whole state with a snapshot's content.
    pub fn restore(&mut self, applied_index: u64, entries: Vec<(Bytes, Stored)>) {
        let mut built = MapBuilder::new(applied_index, entries.len());
        for (key, stored) in &entries {
            built.add(key, stored);
        }
        self.replace_with(built.finish());
    }

    /// Replaces the whole state with a map built from a snapshot
    /// ([`MapBuilder`]); what this replica records for eviction stays.
    pub fn replace_with(&mut self, built: ShardMap) {
        let (tracking, stamped) = (self.tracking, built.tracking);
        *self = built;
        self.tracking = tracking;
        // Built recording something else: stamp what storing them here
        // would have (one pass over the map, on this path).
        if tracking != stamped && tracking != Tracking::None {
            for e in self.iter() {
                self.stamp_new(e);
            }
        }
    }
}

/// A shard map built from a snapshot's entries a few at a time (so the
/// building can yield to other work), then swapped in whole with
/// [`ShardMap::replace_with`].
#[derive(Debug)]
pub struct MapBuilder {
    map: ShardMap,
}

impl MapBuilder {
    /// Entries added from now on get the first access `tracking` records
    /// (so that swapping the map in need not stamp them).
    pub fn tracking(mut self, tracking: Tracking) -> MapBuilder {
        self.map.tracking = tracking;
        self
    }

    /// A map at `applied_index`, with room for `len` entries.
    pub fn new(applied_index: u64, len: usize) -> MapBuilder {
        let mut map = ShardMap::new();
        let hasher = &map.hasher;
        map.entries.reserve(len, |e| hash_key(hasher, e.key()));
        map.applied_index = applied_index;
        MapBuilder { map }
    }

    pub fn add(&mut self, key: &[u8], stored: &Stored) {
        assert!(stored.version <= self.map.applied_index, "snapshot entry newer than the snapshot");
        self.map.store(Entry::from_stored(key, stored));
    }

    pub fn finish(self) -> ShardMap {
        self.map
    }
}

impl std::fmt::Debug for ShardMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardMap")
            .field("len", &self.entries.len())
            .field("data_bytes", &self.data_bytes)
            .field("applied_index", &self.applied_index)
            .finish_non_exhaustive()
    }
}

/// The bucket hash of a key: the map's random keys (fixed in a
/// simulation), over the key's bytes.
fn hash_key(hasher: &ahash::RandomState, key: &[u8]) -> u64 {
    hasher.hash_one(key)
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

/// What an entry adds to the map's counts: its bytes, its place in the
/// expiry index, its plain and held bytes if compressed.
struct Counts {
    bytes: u64,
    expiry: Option<(u64, Bytes)>,
    compressed: Option<(u64, u64)>,
}

impl Counts {
    fn of(entry: &Entry) -> Counts {
        let at = entry.expires_at_ms();
        Counts {
            bytes: entry.data_len() as u64,
            expiry: (at != 0).then(|| (at, Bytes::copy_from_slice(entry.key()))),
            compressed: entry.is_compressed().then(|| (entry.plain_len() as u64, entry.value().len() as u64)),
        }
    }
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
