//! Keys with a time to live, through the native protocol and kvctl: reads
//! never return an expired value, expired keys are reclaimed without being
//! read (active expiry through the Raft log, so on every replica), and TTLs
//! survive a restart (WAL replay and snapshots).

use std::time::{Duration, Instant};

use kv_engine::Condition;
use kv_net::client::Client;
use kv_replication::Consistency;

use crate::cluster::Cluster;
use crate::harness::{data_dir, kvctl, stdout, Kvd};

/// Generous bound on how long an expired key may take to disappear.
const GONE_TIMEOUT: Duration = Duration::from_secs(30);
const LONG_TTL: Duration = Duration::from_secs(3600);
const SHORT_TTL: Duration = Duration::from_millis(300);

fn client(endpoint: &str) -> Client {
    let mut c = Client::connect(&[endpoint.to_string()], Duration::from_secs(10)).expect("connects");
    c.set_timeout(Some(Duration::from_secs(10))).unwrap();
    c
}

/// Sum of a status field over every shard group the node reports.
fn total(status: &str, field: &str) -> u64 {
    let status: serde_json::Value = serde_json::from_str(status).expect("status is JSON");
    let cores = status["cores"].as_array().expect("cores");
    cores.iter().flat_map(|c| c["groups"].as_array().unwrap()).map(|g| g[field].as_u64().unwrap()).sum()
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + GONE_TIMEOUT;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn put(c: &mut Client, key: &str, ttl: Option<Duration>) {
    let r = c.put_with_ttl(key.as_bytes(), b"value", Condition::Always, ttl).expect("put");
    assert!(matches!(r, kv_net::client::WriteResult::Written { .. }), "{r:?}");
}

#[test]
fn expired_keys_vanish_for_readers_and_from_memory() {
    let dir = data_dir();
    let kvd = Kvd::start(dir.path(), &["--fsync", "never"]);
    let mut c = client(&kvd.endpoint());
    put(&mut c, "kept", Some(LONG_TTL));
    put(&mut c, "forever", None);
    for i in 0..200 {
        put(&mut c, &format!("short-{i}"), Some(SHORT_TTL));
    }
    assert!(c.get(b"kept").unwrap().is_some());
    // Nobody reads the short keys: only active expiry can remove them.
    wait_until("the short keys are reaped", || total(&c.status().unwrap(), "keys") == 2);
    assert_eq!(total(&c.status().unwrap(), "expires"), 1, "only `kept` still has a TTL");
    for i in (0..200).step_by(17) {
        assert_eq!(c.get(format!("short-{i}").as_bytes()).unwrap(), None);
    }
    // The native protocol reports expiries (GET_TTL), and so does kvctl.
    let before = unix_ms();
    let (_, at) = c.expiry(b"kept", Consistency::Strict).unwrap().expect("kept exists");
    let at = at.expect("kept has a TTL");
    assert!(at > before && at <= before + LONG_TTL.as_millis() as u64, "{at} vs {before}");
    assert_eq!(c.expiry(b"forever", Consistency::Lease).unwrap().map(|(_, at)| at), Some(None));
    assert_eq!(c.expiry(b"short-3", Consistency::Lease).unwrap(), None);
    let left: f64 = stdout(&kvctl(&kvd.endpoint(), &["ttl", "kept"], b"")).trim().parse().unwrap();
    assert!(left > 3000.0 && left <= 3600.0, "{left}");
    assert_eq!(stdout(&kvctl(&kvd.endpoint(), &["ttl", "forever"], b"")).trim(), "none");
    let missing = kvctl(&kvd.endpoint(), &["ttl", "short-3"], b"");
    assert_eq!(missing.status.code(), Some(1), "a missing key is not found");
    let json: serde_json::Value =
        serde_json::from_str(&stdout(&kvctl(&kvd.endpoint(), &["-o", "json", "ttl", "kept"], b""))).unwrap();
    assert_eq!(json["expires_at_ms"], at);
    // A put without a TTL clears one; kvctl sets one.
    put(&mut c, "kept", None);
    assert_eq!(c.expiry(b"kept", Consistency::Lease).unwrap().map(|(_, at)| at), Some(None));
    assert_eq!(total(&c.status().unwrap(), "expires"), 0);
    let out = kvctl(&kvd.endpoint(), &["put", "cli-key", "v", "--ttl", "400ms"], b"");
    assert!(out.status.success(), "{}", crate::harness::stderr(&out));
    let bad = kvctl(&kvd.endpoint(), &["put", "cli-key", "v", "--ttl", "5 parsecs"], b"");
    assert!(!bad.status.success());
    wait_until("the kvctl key expires", || {
        let out = kvctl(&kvd.endpoint(), &["get", "cli-key"], b"");
        !out.status.success() && stdout(&out).is_empty()
    });
    assert!(kvd.stop().success());
}

#[test]
fn ttls_survive_restart_through_wal_and_snapshot() {
    let dir = data_dir();
    // Small snapshot threshold: the restart loads snapshots, then the WAL tail.
    let flags = ["--snapshot-wal-bytes", "65536"];
    let kvd = Kvd::start(dir.path(), &flags);
    let mut c = client(&kvd.endpoint());
    for i in 0..2000 {
        put(&mut c, &format!("long-{i}"), Some(LONG_TTL));
    }
    put(&mut c, "short", Some(Duration::from_secs(2)));
    assert!(kvd.stop().success());
    let snapshots = std::fs::read_dir(dir.path().join("core-0/snap")).expect("snapshot dir").count();
    assert!(snapshots > 0, "the test meant to restore from a snapshot");
    let kvd = Kvd::start(dir.path(), &flags);
    let mut c = client(&kvd.endpoint());
    assert_eq!(total(&c.status().unwrap(), "expires"), 2001, "every TTL came back");
    assert!(c.get(b"long-7").unwrap().is_some());
    wait_until("the short key expires after the restart", || {
        c.get(b"short").unwrap().is_none() && total(&c.status().unwrap(), "keys") == 2000
    });
    assert!(kvd.stop().success());
}

#[test]
fn expiry_reaches_every_replica() {
    let cluster = Cluster::start(3, &["--fsync", "never"]);
    let mut c = cluster.client(1);
    for i in 0..50 {
        put(&mut c, &format!("k{i}"), Some(SHORT_TTL));
    }
    put(&mut c, "stays", Some(LONG_TTL));
    cluster.wait_converged();
    let mut expiries = Vec::new();
    for id in cluster.ids() {
        let mut c = cluster.client(id);
        expiries.push(c.expiry(b"stays", Consistency::Stale).unwrap().expect("stays is everywhere"));
        // Stale reads are local: each replica filters expired keys itself,
        // and each removes them when the leaders' reap commands arrive.
        wait_until("replica reaped the keys", || {
            c.get_with(b"k3", Consistency::Stale).unwrap().is_none() && total(&c.status().unwrap(), "keys") == 1
        });
        assert!(c.get_with(b"stays", Consistency::Stale).unwrap().is_some(), "node {id}");
        assert_eq!(total(&c.status().unwrap(), "expires"), 1, "node {id}");
    }
    // The leader fixed the expiry once; every replica holds the same.
    assert!(expiries.iter().all(|e| *e == expiries[0] && e.1.is_some()), "{expiries:?}");
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

/// One redis-cli command against `addr`; its output, trimmed.
fn redis_cli(addr: std::net::SocketAddr, args: &[&str]) -> String {
    let mut cmd = std::process::Command::new("redis-cli");
    cmd.args(["-h", &addr.ip().to_string(), "-p", &addr.port().to_string()]).args(args);
    let out = crate::harness::run_bounded(cmd, b"");
    assert!(out.status.success(), "redis-cli {args:?}: {}", crate::harness::stderr(&out));
    stdout(&out).trim().to_string()
}

#[test]
fn ttl_over_resp_matches_redis() {
    let dir = data_dir();
    let kvd = Kvd::start(dir.path(), &["--fsync", "never"]);
    let r = |args: &[&str]| redis_cli(kvd.resp_addr, args);
    assert_eq!(r(&["SET", "k", "v", "EX", "100"]), "OK");
    let ttl: i64 = r(&["TTL", "k"]).parse().unwrap();
    assert!((1..=100).contains(&ttl), "{ttl}");
    assert_eq!(r(&["TTL", "missing"]), "-2");
    assert_eq!(r(&["SET", "forever", "v"]), "OK");
    assert_eq!(r(&["TTL", "forever"]), "-1");
    let info = r(&["INFO", "keyspace"]);
    assert!(info.contains("db0:keys=2,expires=1,"), "{info}");
    assert_eq!(r(&["EXPIRE", "forever", "100", "GT"]), "0", "GT never holds for a key without a TTL");
    assert_eq!(r(&["EXPIRE", "forever", "100", "LT"]), "1");
    assert_eq!(r(&["PERSIST", "forever"]), "1");
    assert_eq!(r(&["PERSIST", "forever"]), "0");
    // The native protocol sees what RESP set.
    let mut c = client(&kvd.endpoint());
    assert!(c.get(b"k").unwrap().is_some());
    assert_eq!(r(&["PEXPIRE", "k", "200"]), "1");
    assert_eq!(r(&["SET", "gone", "v", "PX", "200"]), "OK");
    assert_eq!(r(&["EXPIRE", "now", "-1"]), "0", "no such key");
    assert_eq!(r(&["SET", "now", "v"]), "OK");
    assert_eq!(r(&["EXPIRE", "now", "-1"]), "1", "a time in the past deletes");
    assert_eq!(r(&["EXISTS", "now"]), "0");
    wait_until("both keys expire", || r(&["EXISTS", "k", "gone"]) == "0");
    assert_eq!(c.get(b"k").unwrap(), None);
    assert_eq!(r(&["SET", "e", "v", "EX", "0"]), "ERR invalid expire time in 'set' command");
    let expire_at: i64 = r(&["EXPIRETIME", "forever"]).parse().unwrap();
    assert_eq!(expire_at, -1);
    assert!(kvd.stop().success());
}
