//! Unit tests of the shard state machine: every command, conditions,
//! expiry decided at apply time, byte accounting.

use super::*;
use crate::evict::{Policy, Tracking};

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
    assert_eq!(m.get(b"b").unwrap(), Stored::new(Bytes::from_static(b"x"), 11));
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
            (0, Command::Rename { from: b("a"), to: b("c"), if_absent: false }, Outcome::Refused(Refusal::NoSuchKey)),
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
        r.restore(12, m.pairs());
        r
    };
    assert_eq!((restored.len(), restored.expires_len(), restored.data_bytes()), (7, 7, m.data_bytes()));
}

/// A put decoded from an entry whose value was compressed at proposal.
fn compressed_put(key: &str, value: &Bytes) -> Decoded {
    let cmd = Command::Put {
        key: Bytes::copy_from_slice(key.as_bytes()),
        value: value.clone(),
        condition: Condition::Always,
    };
    let decoded = Command::decode(&Bytes::from(cmd.encode_compressing(0, 1024))).unwrap();
    assert!(decoded.compressed, "the test value compresses");
    decoded
}

#[test]
fn compressed_values_are_held_as_frames_and_read_plain() {
    let text = Bytes::from("0123456789".repeat(500));
    let mut m = ShardMap::new();
    assert_eq!(m.apply_entry(1, compressed_put("z", &text)), Outcome::Written { version: 1 });
    let held = m.get(b"z").unwrap();
    assert!(held.is_compressed() && held.value.len() < text.len() / 4);
    assert_eq!(held.plain_len(), text.len());
    assert_eq!(m.read(b"z", 0).unwrap(), Stored::new(text.clone(), 1), "reads see the plain bytes");
    assert_eq!(m.data_bytes(), 1 + held.value.len() as u64, "memory counts the frame");
    assert_eq!(m.compression_bytes(), (text.len() as u64, held.value.len() as u64));
    // Commands that read the old value see it plain; their result is plain.
    let append = Command::Append { key: b("z"), value: b("!"), length_max: 1 << 20 };
    assert_eq!(m.apply(2, 0, append), Outcome::Integer(text.len() as i64 + 1));
    let after = m.get(b"z").unwrap();
    assert!(!after.is_compressed());
    assert_eq!(after.value.len(), text.len() + 1);
    assert_eq!(m.compression_bytes(), (0, 0));
    assert_eq!(m.apply_entry(3, compressed_put("y", &text)), Outcome::Written { version: 3 });
    let getset =
        Command::Set { key: b("y"), value: b("small"), condition: Condition::Always, expiry: Expiry::Clear, get: true };
    assert_eq!(m.apply(4, 0, getset), Outcome::Previous { value: Some(text.clone()), version: Some(4) });
    // A rename keeps the frame; a snapshot round trip keeps the flag.
    assert_eq!(m.apply_entry(5, compressed_put("{t}a", &text)), Outcome::Written { version: 5 });
    let rename = Command::Rename { from: b("{t}a"), to: b("{t}b"), if_absent: false };
    assert_eq!(m.apply(6, 0, rename), Outcome::Integer(1));
    assert!(m.get(b"{t}b").unwrap().is_compressed());
    let entries: Vec<(Bytes, Stored)> = m.pairs();
    let meta = crate::snapshot::SnapshotMeta { group: 0, index: 6, term: 1, conf_state: Bytes::new() };
    let bytes = crate::snapshot::encode_blocking(&meta, &entries);
    let (_, back) = crate::snapshot::decode(&bytes, std::path::Path::new("memory")).unwrap();
    let mut restored = ShardMap::new();
    restored.restore(6, back);
    assert!(restored.get(b"{t}b").unwrap().is_compressed());
    assert_eq!(restored.read(b"{t}b", 0).unwrap().value, text);
    assert_eq!(restored.compression_bytes(), m.compression_bytes());
}

#[test]
fn eviction_samples_victims_by_policy_and_evict_removes_them() {
    let mut m = ShardMap::new();
    m.set_tracking(Tracking::Lru);
    let minute = 60_000;
    // k0..k99 written at t = 0; the even ones read again an hour later.
    for i in 0..100u64 {
        m.apply(i + 1, 0, put(&format!("k{i}"), "v", Condition::Always));
    }
    for i in (0..100).step_by(2) {
        assert!(m.read(format!("k{i}").as_bytes(), 60 * minute).is_some());
    }
    // Each victim is the idlest of 5 sampled keys: a recently read one only
    // when all 5 were (1 in 32).
    let victims = m.eviction_victims(Policy::AllKeysLru, 60 * minute, 10);
    assert!(victims.len() >= 8, "{} victims", victims.len());
    let recent = victims.iter().filter(|v| std::str::from_utf8(&v[1..]).unwrap().parse::<u64>().unwrap() % 2 == 0);
    assert!(recent.count() <= 2, "recently read keys were chosen: {victims:?}");
    // Nothing has a TTL: volatile policies find no victim.
    assert!(m.eviction_victims(Policy::VolatileLru, 60 * minute, 8).is_empty());
    assert!(m.eviction_victims(Policy::VolatileTtl, 60 * minute, 8).is_empty());
    let ttl = |key: &str, at: u64| Command::Set {
        key: b(key),
        value: b("t"),
        condition: Condition::Always,
        expiry: Expiry::At(at),
        get: false,
    };
    m.apply(101, 0, ttl("late", 10 * 60 * minute));
    m.apply(102, 0, ttl("soon", 2 * 60 * minute));
    assert_eq!(m.eviction_victims(Policy::VolatileTtl, 60 * minute, 1), vec![b("soon")]);
    let random = m.eviction_victims(Policy::AllKeysRandom, 60 * minute, 5);
    assert_eq!(random.len(), 5);
    let evict = Command::Evict { keys: [random.clone(), vec![b("no-such-key")]].concat() };
    assert_eq!(m.apply(103, 0, evict), Outcome::Integer(5));
    assert_eq!(m.len(), 97);
    assert!(random.iter().all(|k| m.get(k).is_none()));
}

/// Keys and values are copied into the map's own blocks: the map must not
/// keep the buffer they arrived in (an applied log entry) alive.
#[test]
fn entries_do_not_pin_the_buffer_they_arrived_in() {
    let mut buffer = vec![b'h'; 64];
    buffer.extend_from_slice(b"short-key");
    buffer.extend_from_slice(&[b's'; 16]);
    buffer.extend(std::iter::repeat_n(b'L', 10_000));
    let buffer = Bytes::from(buffer);
    let range = buffer.as_ptr() as usize..buffer.as_ptr() as usize + buffer.len();
    let inside = |b: &[u8]| range.contains(&(b.as_ptr() as usize));
    let mut m = ShardMap::new();
    let short = Command::Put { key: buffer.slice(64..73), value: buffer.slice(73..89), condition: Condition::Always };
    m.apply(1, 0, short);
    let long =
        Command::Put { key: Bytes::from_static(b"long"), value: buffer.slice(89..), condition: Condition::Always };
    m.apply(2, 0, long);
    let e = m.find(b"short-key").expect("stored");
    assert_eq!((e.key(), e.value()), (&b"short-key"[..], &[b's'; 16][..]));
    assert!(!inside(e.key()) && !inside(e.value()) && !inside(m.find(b"long").expect("stored").value()));
    assert!(buffer.is_unique(), "the map holds a reference to the entry's buffer");
}

/// Prefetching is a hint, so nothing else would notice if its idea of
/// hashbrown's layout went stale: a key's bucket must lie within one probe
/// group (16 buckets) of where the prefetch looks for it, for nearly every
/// key (a wrong layout would put them anywhere in the table).
#[test]
fn prefetch_looks_where_the_table_keeps_each_key() {
    let mut m = ShardMap::new();
    m.prefetch([&b"a"[..], b""].into_iter());
    let n = 2000u64;
    for i in 0..n {
        let put = Command::Put { key: Bytes::from(format!("k{i}")), value: b("v"), condition: Condition::Always };
        m.apply(i + 1, 0, put);
    }
    let near = (0..n)
        .filter(|i| {
            let key = format!("k{i}").into_bytes();
            let hash = hash_key(&m.hasher, &key);
            let bucket = m.entries.find(hash, |e| e.key() == &key[..]).expect("present");
            let (_, start) = m.probe_start(hash);
            let distance = (bucket.as_ptr() as isize - start as isize).unsigned_abs() / size_of::<Entry>();
            distance < 16
        })
        .count() as u64;
    assert!(near * 10 >= n * 9, "only {near} of {n} keys lie where the prefetch looks");
    let keys: Vec<Vec<u8>> = (0..2 * n).map(|i| format!("k{i}").into_bytes()).collect();
    m.prefetch(keys.iter().map(|k| &k[..]));
    assert_eq!(m.get(b"k1999").expect("present").value, b("v"));
}

#[test]
fn a_map_built_apart_records_what_the_map_it_replaces_records() {
    let entries: Vec<(Bytes, Stored)> =
        (0..50u64).map(|i| (Bytes::from(format!("k{i}")), Stored::with_expiry("v".into(), i + 1, 0))).collect();
    let clocks = |m: &ShardMap| m.iter().map(|e| e.clock()).collect::<Vec<u32>>();
    let mut restored = ShardMap::new();
    restored.set_tracking(Tracking::Lfu);
    restored.restore(50, entries.clone());
    assert!(clocks(&restored).iter().all(|&c| c == crate::evict::lfu_new(0)), "LFU's first access");
    // Built recording the same: swapped in as it is. Built recording
    // nothing: stamped on the swap. Either way what a restore records.
    for built_with in [Tracking::Lfu, Tracking::None] {
        let mut b = MapBuilder::new(50, entries.len()).tracking(built_with);
        for (k, s) in &entries {
            b.add(k, s);
        }
        let mut swapped = ShardMap::new();
        swapped.set_tracking(Tracking::Lfu);
        swapped.replace_with(b.finish());
        assert_eq!(swapped.tracking(), Tracking::Lfu);
        assert_eq!(clocks(&swapped).len(), 50);
        assert!(clocks(&swapped).iter().all(|&c| c == crate::evict::lfu_new(0)), "built with {built_with:?}");
    }
}
