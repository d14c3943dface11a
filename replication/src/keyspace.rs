//! Reading a shard's keys as a whole: the wall clock reads compare expiries
//! with, cursor-paged key listing (SCAN), and the choice of keys an active
//! expiry cycle reaps.
//!
//! A scan cursor is a position in a fixed hash order of keys (FNV-1a 64,
//! the same on every node and version), so a cursor stays meaningful while
//! the map grows or shrinks and on any replica. A page holds the keys whose
//! hash is at least the cursor, lowest hashes first; the next cursor is the
//! hash of the first key left out. A key present for the whole scan is
//! returned at least once (twice only if its hash equals a page boundary's).
//! Each page costs O(keys in the shard): paging trades that for holding no
//! state between calls.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use kv_engine::ShardMap;

/// The largest page a scan returns, whatever the client asks for.
pub const SCAN_PAGE_KEYS_MAX: usize = 10_000;

/// Now, in Unix milliseconds.
pub fn wall_clock_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// FNV-1a, 64 bits: the documented, fixed scan order.
pub fn scan_hash(key: &[u8]) -> u64 {
    key.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ *b as u64).wrapping_mul(0x0000_0100_0000_01b3))
}

/// One page of a scan: up to `count` live keys from `cursor` on, and the
/// cursor of the next page (`None` when the shard is done).
pub fn scan_page(map: &ShardMap, cursor: u64, count: usize, now_ms: u64) -> (Vec<Bytes>, Option<u64>) {
    let count = count.clamp(1, SCAN_PAGE_KEYS_MAX);
    let mut found: Vec<(u64, &[u8])> = map
        .iter()
        .filter(|e| e.is_live(now_ms))
        .map(|e| (scan_hash(e.key()), e.key()))
        .filter(|(h, _)| *h >= cursor)
        .collect();
    let next = if found.len() > count {
        found.select_nth_unstable_by_key(count, |(h, _)| *h);
        let next = found[count].0;
        found.truncate(count);
        Some(next)
    } else {
        None
    };
    found.sort_unstable_by_key(|(h, _)| *h);
    (found.into_iter().map(|(_, k)| Bytes::copy_from_slice(k)).collect(), next)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kv_engine::{Command, Condition, Expiry};

    #[test]
    fn pages_cover_every_key_once_and_skip_expired() {
        let mut m = ShardMap::new();
        for i in 0..1000u64 {
            let expiry = if i % 10 == 0 { Expiry::At(50) } else { Expiry::Clear };
            let key = Bytes::from(format!("key-{i}"));
            let cmd = Command::Set { key, value: Bytes::new(), condition: Condition::Always, expiry, get: false };
            m.apply(i + 1, 0, cmd);
        }
        let (mut cursor, mut seen, mut pages) = (0, Vec::new(), 0);
        loop {
            let (keys, next) = scan_page(&m, cursor, 37, 100);
            assert!(keys.len() <= 37);
            seen.extend(keys);
            pages += 1;
            match next {
                Some(n) => cursor = n,
                None => break,
            }
            assert!(pages < 100, "scan does not end");
        }
        seen.sort();
        let mut want: Vec<Bytes> = (0..1000).filter(|i| i % 10 != 0).map(|i| Bytes::from(format!("key-{i}"))).collect();
        want.sort();
        assert_eq!(seen, want);
        assert_eq!(scan_hash(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(scan_hash(b"a"), 0xaf63_dc4c_8601_ec8c, "FNV-1a 64 reference value");
    }
}
