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

use std::collections::{BTreeSet, HashMap};
use std::mem::size_of;

use bytes::{Bytes, BytesMut};

use crate::command::{Command, Condition, ExpireWhen, Expiry, Outcome, Refusal};

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

/// A value as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub value: Bytes,
    /// Raft index of the write that stored this value.
    pub version: u64,
    /// When the key expires, Unix milliseconds; 0 = never.
    pub expires_at_ms: u64,
}

impl Stored {
    pub fn new(value: Bytes, version: u64) -> Stored {
        Stored { value, version, expires_at_ms: 0 }
    }

    /// Whether the key still exists at `now_ms`.
    pub fn is_live(&self, now_ms: u64) -> bool {
        self.expires_at_ms == 0 || self.expires_at_ms > now_ms
    }
}

/// The in-memory map of one shard.
#[derive(Debug, Default)]
pub struct ShardMap {
    entries: HashMap<Bytes, Stored, ahash::RandomState>,
    expiries: BTreeSet<(u64, Bytes)>,
    data_bytes: u64,
    applied_index: u64,
}

impl ShardMap {
    pub fn new() -> ShardMap {
        ShardMap::default()
    }

    /// The entry as stored, expired or not.
    pub fn get(&self, key: &[u8]) -> Option<&Stored> {
        self.entries.get(key)
    }

    /// The entry if it has not expired by `now_ms`.
    pub fn live(&self, key: &[u8], now_ms: u64) -> Option<&Stored> {
        self.entries.get(key).filter(|s| s.is_live(now_ms))
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

    /// Applies a committed command at Raft index `index`, proposed at `now_ms`.
    pub fn apply(&mut self, index: u64, now_ms: u64, command: Command) -> Outcome {
        self.apply_noop(index);
        if let Command::Rename { to, .. } = &command {
            self.drop_if_expired(to, now_ms);
        }
        if let Command::MultiPut { pairs, .. } = &command {
            for (k, _) in pairs {
                self.drop_if_expired(k, now_ms);
            }
        }
        match &command {
            Command::Clear | Command::Reap { .. } | Command::MultiPut { .. } => {}
            other => self.drop_if_expired(other.key(), now_ms),
        }
        match command {
            Command::Put { key, value, condition } => self.set(index, key, value, condition, Expiry::Clear, false),
            Command::Set { key, value, condition, expiry, get } => self.set(index, key, value, condition, expiry, get),
            Command::Delete { key, condition } => self.delete(&key, condition),
            Command::Expire { key, expiry, when, get } => self.expire(now_ms, &key, expiry, when, get),
            Command::Incr { key, by } => self.incr(index, key, by),
            Command::IncrFloat { key, by } => self.incr_float(index, key, by),
            Command::Append { key, value, length_max } => {
                let old = self.entries.get(&key[..]).map_or(0, |s| s.value.len()) as u64;
                self.splice(index, key, old, value, length_max)
            }
            Command::SetRange { key, offset, value, length_max } => {
                if value.is_empty() {
                    return Outcome::Integer(self.entries.get(&key[..]).map_or(0, |s| s.value.len()) as i64);
                }
                self.splice(index, key, offset, value, length_max)
            }
            Command::Rename { from, to, if_absent } => self.rename(index, from, to, if_absent),
            Command::MultiPut { pairs, if_absent } => self.multi_put(index, pairs, if_absent),
            Command::Clear => self.clear(),
            Command::Reap { keys } => self.reap(now_ms, &keys),
        }
    }

    fn set(&mut self, index: u64, key: Bytes, value: Bytes, cond: Condition, expiry: Expiry, get: bool) -> Outcome {
        let current = self.entries.get(&key[..]);
        let (version, old_expiry) = (current.map(|s| s.version), current.map_or(0, |s| s.expires_at_ms));
        let old_value = if get { current.map(|s| s.value.clone()) } else { None };
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
        self.store(key, Stored { value, version: index, expires_at_ms });
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
        let (current, value) = (stored.expires_at_ms, get.then(|| stored.value.clone()));
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
            let mut stored = self.remove(key).expect("present: checked above");
            stored.expires_at_ms = new;
            self.store(key.clone(), stored);
        }
        answer(true, value)
    }

    fn incr(&mut self, index: u64, key: Bytes, by: i64) -> Outcome {
        let current = match self.entries.get(&key[..]) {
            None => 0,
            Some(s) => match parse_integer(&s.value) {
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
            Some(s) => match parse_float(&s.value) {
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
        let old = self.entries.get(&key[..]).map(|s| s.value.clone()).unwrap_or_default();
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
        self.store(to, Stored { version: index, ..stored });
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
        self.entries = HashMap::default();
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
        self.store(key, Stored { value, version: index, expires_at_ms });
    }

    /// Inserts or replaces an entry, keeping the byte count and the expiry
    /// index exact.
    fn store(&mut self, key: Bytes, stored: Stored) {
        if let Some(old) = self.entries.get(&key[..]) {
            if old.expires_at_ms != 0 {
                self.expiries.remove(&(old.expires_at_ms, key.clone()));
            }
            self.data_bytes -= old.value.len() as u64;
            self.data_bytes += stored.value.len() as u64;
        } else {
            self.data_bytes += (key.len() + stored.value.len()) as u64;
        }
        if stored.expires_at_ms != 0 {
            self.expiries.insert((stored.expires_at_ms, key.clone()));
        }
        self.entries.insert(key, stored);
    }

    fn remove(&mut self, key: &[u8]) -> Option<Stored> {
        let (key, stored) = self.entries.remove_entry(key)?;
        self.data_bytes -= (key.len() + stored.value.len()) as u64;
        if stored.expires_at_ms != 0 {
            self.expiries.remove(&(stored.expires_at_ms, key));
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
        *self = ShardMap::new();
        self.entries.reserve(entries.len());
        for (key, stored) in entries {
            assert!(stored.version <= applied_index, "snapshot entry newer than the snapshot");
            self.store(key, stored);
        }
        self.applied_index = applied_index;
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

fn holds(condition: Condition, current: Option<u64>) -> bool {
    match condition {
        Condition::Always => true,
        Condition::IfAbsent => current.is_none(),
        Condition::IfExists => current.is_some(),
        Condition::IfVersion(v) => current == Some(v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str, value: &str, condition: Condition) -> Command {
        Command::Put {
            key: Bytes::copy_from_slice(key.as_bytes()),
            value: Bytes::copy_from_slice(value.as_bytes()),
            condition,
        }
    }

    fn del(key: &str, condition: Condition) -> Command {
        Command::Delete { key: Bytes::copy_from_slice(key.as_bytes()), condition }
    }

    #[test]
    fn conditional_writes() {
        let mut m = ShardMap::new();
        // (command, expected outcome) applied at indexes 1, 2, ...
        let steps = [
            (put("a", "1", Condition::IfExists), Outcome::ConditionFailed { current_version: None }),
            (put("a", "1", Condition::IfAbsent), Outcome::Written { version: 2 }),
            (put("a", "2", Condition::IfAbsent), Outcome::ConditionFailed { current_version: Some(2) }),
            (put("a", "3", Condition::IfExists), Outcome::Written { version: 4 }),
            (put("a", "4", Condition::IfVersion(2)), Outcome::ConditionFailed { current_version: Some(4) }),
            (put("a", "5", Condition::IfVersion(4)), Outcome::Written { version: 6 }),
            (del("a", Condition::IfVersion(4)), Outcome::ConditionFailed { current_version: Some(6) }),
            (del("a", Condition::IfVersion(6)), Outcome::Deleted { version: 6 }),
            (del("a", Condition::Always), Outcome::NotFound),
            (put("b", "x", Condition::IfVersion(1)), Outcome::ConditionFailed { current_version: None }),
            (put("b", "x", Condition::Always), Outcome::Written { version: 11 }),
        ];
        for (i, (cmd, want)) in steps.into_iter().enumerate() {
            assert_eq!(m.apply(i as u64 + 1, 0, cmd), want, "step {}", i + 1);
        }
        assert_eq!(m.get(b"b").unwrap(), &Stored::new(Bytes::from_static(b"x"), 11));
        assert!(m.get(b"a").is_none());
        assert_eq!(m.applied_index(), 11);
        assert_eq!(m.data_bytes(), 2);
    }

    #[test]
    #[should_panic(expected = "apply out of order")]
    fn refuses_out_of_order_apply() {
        let mut m = ShardMap::new();
        m.apply(5, 0, put("a", "1", Condition::Always));
        m.apply(5, 0, put("a", "1", Condition::Always));
    }

    #[test]
    fn memory_is_reclaimed_after_deletes() {
        let mut m = ShardMap::new();
        let n = 100_000u64;
        for i in 0..n {
            m.apply(i + 1, 0, put(&format!("key-{i}"), "0123456789", Condition::Always));
        }
        let full_memory = m.memory_bytes();
        let full_capacity = m.capacity();
        for i in 0..n - 10 {
            m.apply(n + i + 1, 0, del(&format!("key-{i}"), Condition::Always));
        }
        assert_eq!(m.len(), 10);
        assert!(m.capacity() <= SHRINK_CAPACITY_MIN * 2, "capacity {} of {full_capacity}", m.capacity());
        assert!(m.memory_bytes() * 20 < full_memory, "{} vs {full_memory}", m.memory_bytes());
    }

    #[test]
    fn overwrite_keeps_accounting_exact() {
        let mut m = ShardMap::new();
        m.apply(1, 0, put("k", "12345", Condition::Always));
        m.apply(2, 0, put("k", "1", Condition::Always));
        assert_eq!(m.data_bytes(), 2);
        m.apply(3, 0, del("k", Condition::Always));
        assert_eq!(m.data_bytes(), 0);
    }

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    /// Applies `steps` of (now_ms, command, expected outcome) at indexes 1, 2, ...
    fn run(m: &mut ShardMap, steps: Vec<(u64, Command, Outcome)>) {
        let base = m.applied_index();
        for (i, (now, cmd, want)) in steps.into_iter().enumerate() {
            assert_eq!(m.apply(base + i as u64 + 1, now, cmd.clone()), want, "step {}: {cmd:?}", i + 1);
        }
    }

    fn set(key: &str, value: &str, condition: Condition, expiry: Expiry, get: bool) -> Command {
        Command::Set { key: b(key), value: b(value), condition, expiry, get }
    }

    fn expire(key: &str, expiry: Expiry, when: ExpireWhen) -> Command {
        Command::Expire { key: b(key), expiry, when, get: false }
    }

    #[test]
    fn expiry_is_decided_by_the_command_clock() {
        let mut m = ShardMap::new();
        run(
            &mut m,
            vec![
                (100, set("k", "v", Condition::Always, Expiry::At(200), false), Outcome::Written { version: 1 }),
                // Before the expiry, NX fails; at it, the key counts as gone.
                (199, put("k", "w", Condition::IfAbsent), Outcome::ConditionFailed { current_version: Some(1) }),
                (200, put("k", "w", Condition::IfAbsent), Outcome::Written { version: 3 }),
            ],
        );
        assert_eq!(m.get(b"k").unwrap().expires_at_ms, 0, "put clears the TTL");
        assert_eq!(m.expires_len(), 0);
        assert!(m.live(b"k", u64::MAX - 1).is_some());
    }

    #[test]
    fn expire_options_follow_redis() {
        let mut m = ShardMap::new();
        let (one, zero) = (Outcome::Integer(1), Outcome::Integer(0));
        run(
            &mut m,
            vec![
                (0, put("k", "v", Condition::Always), Outcome::Written { version: 1 }),
                (0, expire("k", Expiry::At(500), ExpireWhen::IfSome), zero.clone()),
                (0, expire("k", Expiry::At(500), ExpireWhen::IfLater), zero.clone()),
                (0, expire("k", Expiry::At(500), ExpireWhen::IfNone), one.clone()),
                (0, expire("k", Expiry::At(400), ExpireWhen::IfLater), zero.clone()),
                (0, expire("k", Expiry::At(600), ExpireWhen::IfLater), one.clone()),
                (0, expire("k", Expiry::At(700), ExpireWhen::IfEarlier), zero.clone()),
                (0, expire("k", Expiry::At(300), ExpireWhen::IfEarlier), one.clone()),
                (0, expire("missing", Expiry::At(300), ExpireWhen::Always), zero.clone()),
                (0, expire("k", Expiry::Clear, ExpireWhen::Always), one.clone()),
                (0, expire("k", Expiry::Clear, ExpireWhen::Always), zero.clone()),
                (0, expire("k", Expiry::At(300), ExpireWhen::Always), one.clone()),
                // An expiry in the past (of the command's clock) deletes the key.
                (250, expire("k", Expiry::At(200), ExpireWhen::Always), one),
                (0, expire("k", Expiry::At(900), ExpireWhen::Always), zero.clone()),
                (0, put("k", "v", Condition::Always), Outcome::Written { version: 15 }),
                (0, expire("k", Expiry::At(300), ExpireWhen::Always), Outcome::Integer(1)),
                // At 400 the key has expired: it counts as absent.
                (400, expire("k", Expiry::At(900), ExpireWhen::Always), zero),
            ],
        );
        assert!(m.get(b"k").is_none());
        assert_eq!((m.len(), m.expires_len(), m.data_bytes()), (0, 0, 0));
    }

    #[test]
    fn set_options_and_get() {
        let mut m = ShardMap::new();
        let prev = |v: Option<&str>, version: Option<u64>| Outcome::Previous { value: v.map(b), version };
        run(
            &mut m,
            vec![
                (0, set("k", "1", Condition::Always, Expiry::At(900), true), prev(None, Some(1))),
                (0, set("k", "2", Condition::IfAbsent, Expiry::Clear, true), prev(Some("1"), None)),
                (0, set("k", "3", Condition::IfExists, Expiry::Keep, true), prev(Some("1"), Some(3))),
                (0, Command::Incr { key: b("k"), by: 4 }, Outcome::Integer(7)),
                (0, Command::Delete { key: b("k"), condition: Condition::Always }, Outcome::Deleted { version: 4 }),
            ],
        );
        assert!(m.is_empty());
    }

    #[test]
    fn counters_keep_the_ttl_and_refuse_non_numbers() {
        let mut m = ShardMap::new();
        run(
            &mut m,
            vec![
                (0, Command::Incr { key: b("n"), by: -3 }, Outcome::Integer(-3)),
                (0, expire("n", Expiry::At(1_000), ExpireWhen::Always), Outcome::Integer(1)),
                (0, Command::Incr { key: b("n"), by: 10 }, Outcome::Integer(7)),
                (0, Command::Incr { key: b("n"), by: i64::MAX }, Outcome::Refused(Refusal::Overflow)),
                (0, put("s", "05", Condition::Always), Outcome::Written { version: 5 }),
                (0, Command::Incr { key: b("s"), by: 1 }, Outcome::Refused(Refusal::NotInteger)),
                (0, Command::IncrFloat { key: b("f"), by: 10.5 }, Outcome::Bulk(b("10.5"))),
                (0, Command::IncrFloat { key: b("f"), by: 0.1 }, Outcome::Bulk(b("10.6"))),
                (0, Command::IncrFloat { key: b("s"), by: f64::MAX }, Outcome::Bulk(b(&format!("{}", f64::MAX)))),
                (0, Command::IncrFloat { key: b("s"), by: f64::MAX }, Outcome::Refused(Refusal::NotFloat)),
            ],
        );
        assert_eq!(m.get(b"n").unwrap().expires_at_ms, 1_000);
        assert_eq!(m.get(b"n").unwrap().value, b("7"));
        for (text, want) in [("0", Some(0)), ("-0", None), ("+1", None), (" 1", None), ("-12", Some(-12))] {
            assert_eq!(parse_integer(text.as_bytes()), want, "{text:?}");
        }
        assert_eq!(parse_integer(i64::MIN.to_string().as_bytes()), Some(i64::MIN));
        assert_eq!(parse_integer(b"9223372036854775808"), None);
    }

    #[test]
    fn append_setrange_rename_multiput_clear() {
        let mut m = ShardMap::new();
        let len = |n| Outcome::Integer(n);
        run(
            &mut m,
            vec![
                (0, Command::Append { key: b("a"), value: b("xy"), length_max: 10 }, len(2)),
                (0, Command::Append { key: b("a"), value: b("z"), length_max: 10 }, len(3)),
                (
                    0,
                    Command::Append { key: b("a"), value: b("12345678"), length_max: 10 },
                    Outcome::Refused(Refusal::TooLarge),
                ),
                (0, Command::SetRange { key: b("r"), offset: 3, value: b("ab"), length_max: 10 }, len(5)),
                (0, Command::SetRange { key: b("r"), offset: 0, value: b("Z"), length_max: 10 }, len(5)),
                (0, Command::SetRange { key: b("e"), offset: 3, value: b(""), length_max: 10 }, len(0)),
                (0, Command::Rename { from: b("a"), to: b("r"), if_absent: true }, len(0)),
                (0, Command::Rename { from: b("a"), to: b("b"), if_absent: false }, len(1)),
                (
                    0,
                    Command::Rename { from: b("a"), to: b("c"), if_absent: false },
                    Outcome::Refused(Refusal::NoSuchKey),
                ),
                (0, Command::MultiPut { pairs: vec![(b("m1"), b("1")), (b("b"), b("2"))], if_absent: true }, len(0)),
                (0, Command::MultiPut { pairs: vec![(b("m1"), b("1")), (b("m2"), b("2"))], if_absent: true }, len(1)),
            ],
        );
        assert_eq!(m.get(b"r").unwrap().value, Bytes::from_static(b"Z\0\0ab"));
        assert_eq!(m.get(b"b").unwrap().value, b("xyz"));
        assert!(m.get(b"e").is_none(), "an empty SETRANGE creates nothing");
        assert_eq!(m.len(), 4);
        run(&mut m, vec![(0, Command::Clear, len(4))]);
        assert_eq!((m.len(), m.data_bytes()), (0, 0));
    }

    #[test]
    fn reap_removes_only_what_has_expired() {
        let mut m = ShardMap::new();
        for i in 0..10u64 {
            m.apply(i + 1, 0, set(&format!("k{i}"), "v", Condition::Always, Expiry::At(100 + i * 10), false));
        }
        let due = m.expired(135, 100);
        assert_eq!(due, vec![b("k0"), b("k1"), b("k2"), b("k3")]);
        assert_eq!(m.expired(135, 2).len(), 2);
        // k1 gets a new TTL before the reap is applied: it survives.
        m.apply(11, 0, expire("k1", Expiry::At(1_000), ExpireWhen::Always));
        assert_eq!(m.apply(12, 135, Command::Reap { keys: due }), Outcome::Integer(3));
        assert_eq!((m.len(), m.expires_len()), (7, 7));
        assert!(m.live(b"k4", 139).is_some() && m.live(b"k4", 140).is_none());
        let restored = {
            let mut r = ShardMap::new();
            r.restore(12, m.iter().map(|(k, s)| (k.clone(), s.clone())).collect());
            r
        };
        assert_eq!((restored.len(), restored.expires_len(), restored.data_bytes()), (7, 7, m.data_bytes()));
    }
}
