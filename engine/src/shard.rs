//! One shard's state machine: a hash map from key to (value, version), plus
//! the Raft index of the last command applied to it.
//!
//! Invariants:
//! - a stored value's version is the Raft index of the command that wrote
//!   it, so versions of one shard strictly increase with every write;
//! - commands are applied in index order, each exactly once
//!   (`apply` asserts `index > applied_index`);
//! - `data_bytes` is the sum of key and value lengths of all live entries.

use std::collections::HashMap;
use std::mem::size_of;

use bytes::Bytes;

use crate::command::{Command, Condition, Outcome};

/// Never shrink a map below this many buckets: tiny maps are not worth the
/// rehash, and it keeps shrink/grow from oscillating around small sizes.
const SHRINK_CAPACITY_MIN: usize = 1024;
/// Shrink when fewer than 1/SHRINK_RATIO of the buckets are used. The rehash
/// costs O(len), paid for by the (ratio - 1) × len deletes before it.
const SHRINK_RATIO: usize = 4;

/// A value as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub value: Bytes,
    /// Raft index of the write that stored this value.
    pub version: u64,
}

/// The in-memory map of one shard.
#[derive(Debug, Default)]
pub struct ShardMap {
    entries: HashMap<Bytes, Stored, ahash::RandomState>,
    data_bytes: u64,
    applied_index: u64,
}

impl ShardMap {
    pub fn new() -> ShardMap {
        ShardMap::default()
    }

    pub fn get(&self, key: &[u8]) -> Option<&Stored> {
        self.entries.get(key)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Index of the last command applied (or of the snapshot restored).
    pub fn applied_index(&self) -> u64 {
        self.applied_index
    }

    /// Bytes of keys and values held.
    pub fn data_bytes(&self) -> u64 {
        self.data_bytes
    }

    /// Estimated heap bytes: data plus the map's own table.
    pub fn memory_bytes(&self) -> u64 {
        let slot = size_of::<(Bytes, Stored)>() + 1;
        self.data_bytes + (self.entries.capacity() * slot) as u64
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

    /// Applies a committed command at Raft index `index`.
    pub fn apply(&mut self, index: u64, command: Command) -> Outcome {
        self.apply_noop(index);
        match command {
            Command::Put { key, value, condition } => self.put(index, key, value, condition),
            Command::Delete { key, condition } => self.delete(&key, condition),
        }
    }

    fn put(&mut self, index: u64, key: Bytes, value: Bytes, condition: Condition) -> Outcome {
        let current = self.entries.get(&key[..]).map(|s| s.version);
        if !holds(condition, current) {
            return Outcome::ConditionFailed { current_version: current };
        }
        let added = (key.len() + value.len()) as u64;
        match self.entries.get_mut(&key[..]) {
            Some(stored) => {
                self.data_bytes -= stored.value.len() as u64;
                self.data_bytes += value.len() as u64;
                *stored = Stored { value, version: index };
            }
            None => {
                self.data_bytes += added;
                self.entries.insert(key, Stored { value, version: index });
            }
        }
        Outcome::Written { version: index }
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
        let (key, stored) = self.entries.remove_entry(key).expect("present: checked above");
        self.data_bytes -= (key.len() + stored.value.len()) as u64;
        self.maybe_shrink();
        Outcome::Deleted { version: stored.version }
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
        let mut map = HashMap::with_capacity_and_hasher(entries.len(), ahash::RandomState::new());
        let mut data_bytes = 0u64;
        for (key, stored) in entries {
            assert!(stored.version <= applied_index, "snapshot entry newer than the snapshot");
            data_bytes += (key.len() + stored.value.len()) as u64;
            map.insert(key, stored);
        }
        self.entries = map;
        self.data_bytes = data_bytes;
        self.applied_index = applied_index;
    }
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
            assert_eq!(m.apply(i as u64 + 1, cmd), want, "step {}", i + 1);
        }
        assert_eq!(m.get(b"b").unwrap(), &Stored { value: Bytes::from_static(b"x"), version: 11 });
        assert!(m.get(b"a").is_none());
        assert_eq!(m.applied_index(), 11);
        assert_eq!(m.data_bytes(), 2);
    }

    #[test]
    #[should_panic(expected = "apply out of order")]
    fn refuses_out_of_order_apply() {
        let mut m = ShardMap::new();
        m.apply(5, put("a", "1", Condition::Always));
        m.apply(5, put("a", "1", Condition::Always));
    }

    #[test]
    fn memory_is_reclaimed_after_deletes() {
        let mut m = ShardMap::new();
        let n = 100_000u64;
        for i in 0..n {
            m.apply(i + 1, put(&format!("key-{i}"), "0123456789", Condition::Always));
        }
        let full_memory = m.memory_bytes();
        let full_capacity = m.capacity();
        for i in 0..n - 10 {
            m.apply(n + i + 1, del(&format!("key-{i}"), Condition::Always));
        }
        assert_eq!(m.len(), 10);
        assert!(m.capacity() <= SHRINK_CAPACITY_MIN * 2, "capacity {} of {full_capacity}", m.capacity());
        assert!(m.memory_bytes() * 20 < full_memory, "{} vs {full_memory}", m.memory_bytes());
    }

    #[test]
    fn overwrite_keeps_accounting_exact() {
        let mut m = ShardMap::new();
        m.apply(1, put("k", "12345", Condition::Always));
        m.apply(2, put("k", "1", Condition::Always));
        assert_eq!(m.data_bytes(), 2);
        m.apply(3, del("k", Condition::Always));
        assert_eq!(m.data_bytes(), 0);
    }
}
