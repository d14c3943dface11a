//! The memory limit through real processes: writes far past `--max-memory`
//! (loaded with `redis-cli --pipe`) keep the process's resident memory
//! within a stated margin of the limit under every eviction policy, on a
//! single node and on a 3-node cluster; `noeviction` (and a `volatile-*`
//! policy with no TTL keys) refuses writes with `OOM` and keeps serving reads and deletes; LRU keeps the keys that are
//! read; INFO, CONFIG GET and /metrics report it.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::{RngCore, SeedableRng};

use crate::cluster::Cluster;
use crate::harness::{data_dir, seed, stdout, Kvd};
use crate::resp::{cli_ok, encode, redis_cli};

/// The limit the tests set, and how much is written past it.
const LIMIT_BYTES: u64 = 24 << 20;
const WRITTEN_BYTES: u64 = 4 * LIMIT_BYTES;
const VALUE_BYTES: usize = 4096;
/// What a node may hold beyond the limit in resident memory: its idle
/// resident set (the binary, thread stacks, io_uring buffers: measured per
/// node before loading), plus the quarter past the limit at which writes
/// wait for eviction, plus allocator slack (freed pages not yet returned).
const SLACK_RATIO: f64 = 1.25;
const ALLOCATOR_SLACK_BYTES: u64 = 16 << 20;

fn rss_bytes(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("the process runs");
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status");
    kb * 1024
}

/// `count` SETs of incompressible values under `prefix`, as a RESP stream;
/// with `ttl`, each with `EX 3600`.
fn set_stream(prefix: &str, count: u64, ttl: bool, seed: u64) -> Vec<u8> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut value = vec![0u8; VALUE_BYTES];
    let mut out = Vec::new();
    for i in 0..count {
        rng.fill_bytes(&mut value);
        let key = format!("{prefix}{i}");
        let mut args: Vec<&[u8]> = vec![b"SET", key.as_bytes(), &value];
        if ttl {
            args.extend([&b"EX"[..], b"3600"]);
        }
        out.extend(encode(&args));
    }
    out
}

/// Loads `stream` with `redis-cli --pipe`; returns its errors count.
fn pipe(addr: SocketAddr, stream: &[u8]) -> u64 {
    let out = redis_cli(addr, &["--pipe"], stream);
    let text = stdout(&out);
    text.split("errors: ")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("redis-cli --pipe said: {text}"))
}

fn info_field(addr: SocketAddr, section: &str, field: &str) -> String {
    let info = cli_ok(addr, &["INFO", section]);
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("INFO {section} has no {field}: {info}"))
        .trim()
        .to_string()
}

/// (DBSIZE, evicted_keys) once eviction has stopped (writes end with the
/// node up to a quarter over its limit, and eviction goes on for a while):
/// the same pair read twice in a row, 200 ms apart. Equal DBSIZEs mean no
/// eviction landed between the reads, so the pair is consistent.
fn settled_counts(addr: SocketAddr) -> (u64, u64) {
    let read = || -> (u64, u64) {
        let evicted = info_field(addr, "stats", "evicted_keys").parse().unwrap();
        let keys = cli_ok(addr, &["DBSIZE"]).parse().unwrap();
        (keys, evicted)
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = read();
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let now = read();
        if now == last {
            return now;
        }
        assert!(Instant::now() < deadline, "eviction still running after 60 s: {now:?}");
        last = now;
    }
}

/// One more value at a time until the node, at its limit, refuses one
/// with Redis's OOM error (a node a little under its limit still admits
/// the writes that fit). Returns how many it admitted first.
fn refused_at_the_limit(addr: SocketAddr) -> u64 {
    // Random letters: compression saves little (a repeated byte would
    // shrink to a few bytes and take a long time to fill the room).
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let value: String = (0..VALUE_BYTES).map(|_| char::from(b'a' + (rng.next_u32() % 26) as u8)).collect();
    for admitted in 0..1000 {
        let set = redis_cli(addr, &["SET", &format!("one-more-{admitted}"), &value], b"");
        let reply = stdout(&set);
        if reply.starts_with("OOM command not allowed") {
            return admitted;
        }
        assert_eq!(reply.trim(), "OK", "neither stored nor refused");
    }
    panic!("1000 more values of {VALUE_BYTES} bytes admitted past the limit");
}

fn start_limited(policy: &str) -> (tempfile::TempDir, Kvd) {
    let dir = data_dir();
    let limit = LIMIT_BYTES.to_string();
    let args = ["--cores", "0", "--persistence", "none", "--max-memory", &limit, "--eviction-policy", policy];
    let kvd = Kvd::start(&dir.path().join("d"), &args);
    (dir, kvd)
}

/// Writes 4× the limit; the node's resident memory must stay within the
/// margin over its idle size, and it must have evicted.
fn bounded_under(policy: &str, seed: u64) {
    let (_dir, kvd) = start_limited(policy);
    let idle = rss_bytes(kvd.pid());
    let volatile = policy.starts_with("volatile");
    let count = WRITTEN_BYTES / VALUE_BYTES as u64;
    let (mut peak, mut refused) = (0, 0);
    for part in 0..8 {
        let errors = pipe(kvd.resp_addr, &set_stream(&format!("{part}-"), count / 8, volatile, seed + part));
        peak = peak.max(rss_bytes(kvd.pid()));
        // Writes past the hard ratio wait for eviction, boundedly, then
        // are refused (OOM): allowed, as long as most went through.
        assert!(errors < count / 16, "{policy}: {errors} of {} writes refused", count / 8);
        refused += errors;
    }
    let margin = idle + (LIMIT_BYTES as f64 * SLACK_RATIO) as u64 + ALLOCATOR_SLACK_BYTES;
    assert!(
        peak <= margin,
        "{policy}: resident {} MiB, over {} MiB (idle {} MiB)",
        peak >> 20,
        margin >> 20,
        idle >> 20
    );
    let (keys, evicted) = settled_counts(kvd.resp_addr);
    assert!(evicted > count / 2, "{policy}: only {evicted} of {count} keys evicted");
    assert_eq!(info_field(kvd.resp_addr, "memory", "maxmemory_policy"), policy);
    // Every write was refused, or stored and then kept or evicted.
    let stored = count - refused;
    assert_eq!(keys + evicted, stored, "{policy}: {keys} left, {evicted} evicted, {stored} stored");
    assert!(keys < count / 2, "{policy}: {keys} keys left");
}

#[test]
fn every_eviction_policy_keeps_memory_bounded() {
    let seed = seed("every_eviction_policy_keeps_memory_bounded");
    for policy in [
        "allkeys-lru",
        "allkeys-lfu",
        "allkeys-random",
        "volatile-lru",
        "volatile-lfu",
        "volatile-ttl",
        "volatile-random",
    ] {
        bounded_under(policy, seed);
    }
}

#[test]
fn noeviction_refuses_writes_with_oom_and_serves_reads_and_deletes() {
    let seed = seed("noeviction_refuses_writes_with_oom_and_serves_reads_and_deletes");
    let (_dir, kvd) = start_limited("noeviction");
    let idle = rss_bytes(kvd.pid());
    let addr = kvd.resp_addr;
    let count = WRITTEN_BYTES / VALUE_BYTES as u64;
    let errors = pipe(addr, &set_stream("k", count, false, seed));
    assert!(errors > count / 2, "only {errors} of {count} writes refused");
    let margin = idle + LIMIT_BYTES + ALLOCATOR_SLACK_BYTES;
    assert!(rss_bytes(kvd.pid()) <= margin, "resident {} MiB over {} MiB", rss_bytes(kvd.pid()) >> 20, margin >> 20);
    refused_at_the_limit(addr);
    assert_eq!(cli_ok(addr, &["STRLEN", "k0"]), VALUE_BYTES.to_string(), "reads are served");
    assert_eq!(cli_ok(addr, &["CONFIG", "GET", "maxmemory"]), format!("maxmemory\n{LIMIT_BYTES}"));
    assert_eq!(info_field(addr, "stats", "evicted_keys"), "0");
    // Deleting makes room; writes come back once the allocator says so.
    let kept: u64 = cli_ok(addr, &["DBSIZE"]).parse().unwrap();
    let mut deletes = Vec::new();
    for i in 0..count {
        deletes.extend(encode(&[b"DEL", format!("k{i}").as_bytes()]));
    }
    assert_eq!(pipe(addr, &deletes), 0, "deletes are never refused");
    assert!(kept > 0);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let reply = cli_ok(addr, &["SET", "after", "deletes"]);
        if reply == "OK" {
            break;
        }
        assert!(Instant::now() < deadline, "writes still refused after deleting everything: {reply}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Under a `volatile-*` policy with no key that has a TTL, eviction finds
/// nothing: writes past the limit are refused with OOM, as under
/// `noeviction`, instead of waiting for an eviction that cannot come.
#[test]
fn volatile_policy_without_ttl_keys_refuses_writes() {
    let seed = seed("volatile_policy_without_ttl_keys_refuses_writes");
    let (_dir, kvd) = start_limited("volatile-lru");
    let addr = kvd.resp_addr;
    let count = WRITTEN_BYTES / VALUE_BYTES as u64;
    let errors = pipe(addr, &set_stream("k", count, false, seed));
    assert!(errors > count / 2, "only {errors} of {count} writes refused");
    let admitted = refused_at_the_limit(addr);
    assert_eq!(info_field(addr, "stats", "evicted_keys"), "0");
    let keys: u64 = cli_ok(addr, &["DBSIZE"]).parse().unwrap();
    assert_eq!(keys, count - errors + admitted, "every write not refused was kept");
}

#[test]
fn lru_keeps_the_keys_that_are_read() {
    let seed = seed("lru_keeps_the_keys_that_are_read");
    let (_dir, kvd) = start_limited("allkeys-lru");
    let addr = kvd.resp_addr;
    // 200 hot keys, read between every batch of new writes.
    assert_eq!(pipe(addr, &set_stream("hot-", 200, false, seed)), 0);
    let mut reads = Vec::new();
    for i in 0..200 {
        reads.extend(encode(&[b"GET", format!("hot-{i}").as_bytes()]));
    }
    let count = WRITTEN_BYTES / VALUE_BYTES as u64;
    for part in 0..16 {
        // The LRU clock counts seconds: let the hot keys' reads be newer.
        std::thread::sleep(Duration::from_millis(1100));
        assert_eq!(pipe(addr, &reads), 0);
        pipe(addr, &set_stream(&format!("cold{part}-"), count / 16, false, seed + part));
    }
    let mut hot_left = 0;
    for i in 0..200 {
        hot_left += usize::from(cli_ok(addr, &["EXISTS", &format!("hot-{i}")]) == "1");
    }
    let keys: u64 = cli_ok(addr, &["DBSIZE"]).parse().unwrap();
    let survival = keys as f64 / (count + 200) as f64;
    assert!(
        hot_left as f64 / 200.0 > 2.0 * survival,
        "{hot_left} of 200 hot keys left, against {:.0}% of all keys",
        survival * 100.0
    );
}

#[test]
fn a_cluster_evicts_through_the_log_and_its_replicas_agree() {
    let seed = seed("a_cluster_evicts_through_the_log_and_its_replicas_agree");
    let limit = LIMIT_BYTES.to_string();
    let c = Cluster::start(3, &["--max-memory", &limit, "--eviction-policy", "allkeys-random"]);
    let idle: Vec<u64> = c.ids().iter().map(|&id| rss_bytes(c.node(id).pid())).collect();
    let count = WRITTEN_BYTES / VALUE_BYTES as u64;
    for part in 0..8 {
        let via = c.node((part % 3) + 1).resp_addr;
        let errors = pipe(via, &set_stream(&format!("{part}-"), count / 8, false, seed + part));
        assert!(errors < count / 16, "{errors} writes refused");
    }
    c.wait_converged();
    for (i, id) in c.ids().into_iter().enumerate() {
        let rss = rss_bytes(c.node(id).pid());
        let margin = idle[i] + (LIMIT_BYTES as f64 * SLACK_RATIO) as u64 + ALLOCATOR_SLACK_BYTES;
        assert!(rss <= margin, "node {id}: resident {} MiB over {} MiB", rss >> 20, margin >> 20);
    }
    // Every replica holds the same keys: evictions went through the log.
    let sizes: Vec<String> = c.ids().iter().map(|&id| cli_ok(c.node(id).resp_addr, &["DBSIZE"])).collect();
    assert!(sizes.windows(2).all(|w| w[0] == w[1]), "replicas disagree: {sizes:?}");
    let left: u64 = sizes[0].parse().unwrap();
    assert!(left < count / 2, "{left} of {count} keys left");
}
