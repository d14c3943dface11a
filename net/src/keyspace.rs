//! Whole-keyspace operations any protocol front end needs: cursor scans
//! over every shard (SCAN, KEYS), key counts (DBSIZE), removing every key
//! (FLUSHDB) and picking a random key (RANDOMKEY), plus Redis's glob
//! patterns.
//!
//! A node-wide scan cursor is `(shard + 1) << 48 | position`, where
//! `position` is the top 48 bits of the shard-level cursor (a position in
//! the shard's fixed key-hash order, `kv_replication::keyspace`). Truncating
//! the position can only move a page boundary back, so keys are repeated
//! (allowed) but never skipped. Cursor 0 starts a scan and is returned when
//! it is over, as in Redis.

use std::collections::BTreeSet;

use bytes::Bytes;
use kv_engine::Command;
use kv_replication::{Consistency, CoreError, ScanPage};

use crate::mesh::{Op, Reply};
use crate::service::Service;

const POSITION_BITS: u32 = 48;
const POSITION_MASK: u64 = (1 << POSITION_BITS) - 1;
/// Keys a KEYS command gathers at most: past this it fails rather than
/// build an unbounded reply (SCAN pages through any number).
pub const KEYS_REPLY_MAX: usize = 1_000_000;
/// Keys asked of one shard per page by KEYS.
const KEYS_PAGE: u32 = 10_000;
const _: () = assert!(KEYS_PAGE as usize <= kv_replication::keyspace::SCAN_PAGE_KEYS_MAX);

/// A scan position: which shard, and where in it.
fn split(cursor: u64) -> (u32, u64) {
    if cursor == 0 {
        return (0, 0);
    }
    (((cursor >> POSITION_BITS) - 1) as u32, (cursor & POSITION_MASK) << (64 - POSITION_BITS))
}

fn join(shard: u32, position: u64) -> u64 {
    ((shard as u64 + 1) << POSITION_BITS) | (position >> (64 - POSITION_BITS))
}

/// One shard's page, from wherever the shard lives.
async fn shard_page(svc: &Service, shard: u32, position: u64, count: u32) -> Result<ScanPage, CoreError> {
    let op = Op::Scan { cursor: position, count, consistency: Consistency::Lease };
    match svc.execute_on(shard, svc.layout.core_of_shard(shard), op).await? {
        Reply::Keys(page) => Ok(page),
        other => unreachable!("a scan answered {other:?}"),
    }
}

/// One SCAN call: at least `count` keys matching `pattern` unless the scan
/// ends first (fewer when a page's keys do not match), and the next cursor.
/// `only` limits the scan to those shards (the others are skipped).
pub async fn scan(
    svc: &Service,
    cursor: u64,
    count: u32,
    pattern: Option<&[u8]>,
    only: Option<&BTreeSet<u32>>,
) -> Result<(u64, Vec<Bytes>), CoreError> {
    let (mut shard, mut position) = split(cursor);
    let mut keys = Vec::new();
    let mut visited = 0u32;
    while shard < svc.layout.shards && (keys.len() as u32) < count.max(1) {
        if only.is_some_and(|s| !s.contains(&shard)) {
            (shard, position) = (shard + 1, 0);
            continue;
        }
        let page = shard_page(svc, shard, position, count.max(1)).await?;
        keys.extend(page.keys.into_iter().filter(|k| pattern.is_none_or(|p| glob_match(p, k))));
        match page.next {
            Some(next) => position = next,
            None => (shard, position) = (shard + 1, 0),
        }
        visited += 1;
        // Bound one call's work: a sparse match may leave the page short.
        if visited >= 16 {
            break;
        }
    }
    let next = if shard >= svc.layout.shards { 0 } else { join(shard, position) };
    Ok((next, keys))
}

/// Every key matching `pattern` (KEYS). Fails past [`KEYS_REPLY_MAX`].
/// `only` limits it to those shards.
pub async fn keys(svc: &Service, pattern: &[u8], only: Option<&BTreeSet<u32>>) -> Result<Vec<Bytes>, CoreError> {
    let mut keys = Vec::new();
    for shard in (0..svc.layout.shards).filter(|s| only.is_none_or(|o| o.contains(s))) {
        let mut position = 0;
        loop {
            let page = shard_page(svc, shard, position, KEYS_PAGE).await?;
            keys.extend(page.keys.into_iter().filter(|k| glob_match(pattern, k)));
            if keys.len() > KEYS_REPLY_MAX {
                return Err(CoreError::Unavailable(format!(
                    "KEYS would return more than {KEYS_REPLY_MAX} keys; use SCAN"
                )));
            }
            match page.next {
                Some(next) => position = next,
                None => break,
            }
        }
    }
    Ok(keys)
}

/// (keys, keys with a TTL) over every shard; expired keys not yet reaped
/// are counted, as Redis counts them.
pub async fn dbsize(svc: &Service) -> Result<(u64, u64), CoreError> {
    let (mut keys, mut expires) = (0, 0);
    for shard in 0..svc.layout.shards {
        let page = shard_page(svc, shard, 0, 0).await?;
        keys += page.keys_total;
        expires += page.expires_total;
    }
    Ok((keys, expires))
}

/// Removes every key of every shard; returns how many there were.
pub async fn flush(svc: &Service) -> Result<u64, CoreError> {
    let mut removed = 0;
    for shard in 0..svc.layout.shards {
        let op = Op::Write(Command::Clear);
        match svc.execute_on(shard, svc.layout.core_of_shard(shard), op).await? {
            Reply::Outcome(kv_engine::Outcome::Integer(n)) => removed += n as u64,
            other => unreachable!("a clear answered {other:?}"),
        }
    }
    Ok(removed)
}

/// A random key, or `None` when there are none.
pub async fn random_key(svc: &Service, seed: u64) -> Result<Option<Bytes>, CoreError> {
    let shards = svc.layout.shards;
    for i in 0..shards {
        let shard = ((seed as u32).wrapping_add(i)) % shards;
        for position in [seed.rotate_left(17), 0] {
            if let Some(key) = shard_page(svc, shard, position, 1).await?.keys.pop() {
                return Ok(Some(key));
            }
        }
    }
    Ok(None)
}

/// Redis's glob: `*`, `?`, `[abc]`, `[^a-z]`, and `\` to escape.
pub fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    // Where to resume after the last `*`: (pattern index, text index).
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        let step = match pattern.get(p) {
            Some(b'*') => {
                star = Some((p + 1, t));
                p += 1;
                continue;
            }
            Some(b'?') => Some(1),
            Some(b'[') => class(&pattern[p..], text[t]),
            Some(b'\\') if p + 1 < pattern.len() => (pattern[p + 1] == text[t]).then_some(2),
            Some(c) => (*c == text[t]).then_some(1),
            None => None,
        };
        match (step, star) {
            (Some(n), _) => {
                p += n;
                t += 1;
            }
            (None, Some((sp, st))) => {
                star = Some((sp, st + 1));
                (p, t) = (sp, st + 1);
            }
            (None, None) => return false,
        }
    }
    pattern[p..].iter().all(|c| *c == b'*')
}

/// Matches `c` against the class at the start of `pattern` (`[...]`);
/// returns the class's length if it matches.
fn class(pattern: &[u8], c: u8) -> Option<usize> {
    let mut i = 1;
    let negate = pattern.get(1) == Some(&b'^');
    if negate {
        i += 1;
    }
    let mut matched = false;
    while i < pattern.len() && pattern[i] != b']' {
        if pattern[i] == b'\\' && i + 1 < pattern.len() {
            matched |= pattern[i + 1] == c;
            i += 2;
        } else if i + 2 < pattern.len() && pattern[i + 1] == b'-' && pattern[i + 2] != b']' {
            let (lo, hi) = (pattern[i].min(pattern[i + 2]), pattern[i].max(pattern[i + 2]));
            matched |= (lo..=hi).contains(&c);
            i += 3;
        } else {
            matched |= pattern[i] == c;
            i += 1;
        }
    }
    // An unclosed class ends with the pattern, as in Redis.
    let len = (i + 1).min(pattern.len());
    (matched != negate).then_some(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_follow_redis() {
        let cases: &[(&str, &str, bool)] = &[
            ("*", "", true),
            ("*", "anything", true),
            ("h?llo", "hello", true),
            ("h?llo", "hllo", false),
            ("h*llo", "heeeello", true),
            ("h[ae]llo", "hallo", true),
            ("h[ae]llo", "hillo", false),
            ("h[^e]llo", "hallo", true),
            ("h[^e]llo", "hello", false),
            ("h[a-b]llo", "hbllo", true),
            ("h[a-b]llo", "hcllo", false),
            ("user:*:name", "user:42:name", true),
            ("user:*:name", "user:42:names", false),
            ("a\\*b", "a*b", true),
            ("a\\*b", "axb", false),
            ("*a*b*", "xxaxxbxx", true),
            ("*a*b*", "xxbxxaxx", false),
            ("key", "key", true),
            ("key", "keys", false),
            // CONFIG GET's patterns use the same matcher.
            ("max*", "maxmemory-policy", true),
            ("*memory*", "maxmemory", true),
            ("[abs]ave", "save", true),
            ("\\save", "save", true),
            ("*a*b*c*", "xaxbxc", true),
            ("max", "maxmemory", false),
            ("?", "", false),
            ("a*b", "acbx", false),
            ("", "x", false),
        ];
        for (pattern, text, want) in cases {
            assert_eq!(glob_match(pattern.as_bytes(), text.as_bytes()), *want, "{pattern} vs {text}");
        }
        // Many stars on a long miss stay fast (no exponential backtracking).
        let pattern = "*a".repeat(30);
        assert!(!glob_match(pattern.as_bytes(), "a".repeat(29).as_bytes()));
    }

    #[test]
    fn cursors_round_trip_and_never_skip() {
        for (shard, position) in [(0u32, 0u64), (3, 0xffff_ffff_ffff_0000), (65_000, 1 << 16)] {
            assert_eq!(split(join(shard, position)), (shard, position));
        }
        // A position that is not on a 2^16 boundary moves back, never forward.
        let (_, p) = split(join(2, 0x1234_5678_9abc_def0));
        assert!(p <= 0x1234_5678_9abc_def0);
        assert_ne!(join(0, 0), 0, "only a finished scan answers cursor 0");
        assert_eq!(split(0), (0, 0));
    }
}
