//! redis-cli and redis-benchmark against a single kvd.

use std::process::Command;
use std::time::Duration;

use super::{cli_ok, redis_cli, redis_tool, Raw, Reply};
use crate::harness::{data_dir, run_bounded_for, stderr, stdout, Kvd};

#[test]
fn redis_cli_basic_commands() {
    let dir = data_dir();
    let kvd = Kvd::start(dir.path(), &["--cores", "0,1"]);
    let a = kvd.resp_addr;
    assert_eq!(cli_ok(a, &["PING"]), "PONG");
    assert_eq!(cli_ok(a, &["ping", "hello"]), "hello");
    assert_eq!(cli_ok(a, &["SET", "greeting", "hello world"]), "OK");
    assert_eq!(cli_ok(a, &["GET", "greeting"]), "hello world");
    assert_eq!(cli_ok(a, &["STRLEN", "greeting"]), "11");
    assert_eq!(cli_ok(a, &["GETRANGE", "greeting", "-5", "-1"]), "world");
    assert_eq!(cli_ok(a, &["TYPE", "greeting"]), "string");
    assert_eq!(cli_ok(a, &["TYPE", "missing"]), "none");
    assert_eq!(cli_ok(a, &["MSET", "a", "1", "b", "2", "c", "3"]), "OK");
    assert_eq!(cli_ok(a, &["MGET", "a", "missing", "c"]), "1\n\n3");
    assert_eq!(cli_ok(a, &["EXISTS", "a", "b", "missing", "a"]), "3");
    assert_eq!(cli_ok(a, &["DBSIZE"]), "4");
    assert_eq!(cli_ok(a, &["DEL", "a", "b", "missing", "b"]), "2");
    assert_eq!(cli_ok(a, &["UNLINK", "c"]), "1");
    assert_eq!(cli_ok(a, &["SET", "greeting", "hi", "NX"]), "");
    assert_eq!(cli_ok(a, &["SET", "greeting", "hi", "XX", "GET"]), "hello world");
    assert_eq!(cli_ok(a, &["SET", "fresh", "v", "XX"]), "");
    assert_eq!(cli_ok(a, &["SETNX", "fresh", "v"]), "1");
    assert_eq!(cli_ok(a, &["SETNX", "fresh", "w"]), "0");
    assert_eq!(cli_ok(a, &["GETSET", "fresh", "w"]), "v");
    assert_eq!(cli_ok(a, &["DBSIZE"]), "2");
    assert_eq!(cli_ok(a, &["SELECT", "0"]), "OK");
    assert_eq!(cli_ok(a, &["SELECT", "1"]), "ERR DB index is out of range");
    assert_eq!(cli_ok(a, &["SET", "k", "v", "EX", "100"]), "OK");
    let ttl: i64 = cli_ok(a, &["TTL", "k"]).parse().unwrap();
    assert!((1..=100).contains(&ttl), "{ttl}");
    assert_eq!(cli_ok(a, &["SET", "k", "v", "EX", "0"]), "ERR invalid expire time in 'set' command");
    assert_eq!(cli_ok(a, &["DEL", "k"]), "1");
    assert_eq!(cli_ok(a, &["SET", "k", "v", "NX", "XX"]), "ERR syntax error");
    assert_eq!(cli_ok(a, &["DEBUG", "SLEEP", "0"]), "OK");
    assert_eq!(cli_ok(a, &["CONFIG", "SET", "save", ""]), "OK");
    assert!(cli_ok(a, &["CONFIG", "SET", "appendonly", "no"]).starts_with("ERR CONFIG SET 'appendonly' cannot change"));
    assert_eq!(cli_ok(a, &["CONFIG", "GET", "appendfsync"]), "appendfsync\nalways");
    assert_eq!(
        cli_ok(a, &["CONFIG", "GET", "maxmemory*"]),
        "maxmemory\n0\nmaxmemory-policy\nnoeviction\nmaxmemory-samples\n5"
    );
    assert_eq!(cli_ok(a, &["CONFIG", "GET", "requirepass"]), "requirepass");
    assert_eq!(cli_ok(a, &["CONFIG", "GET", "port"]), format!("port\n{}", a.port()));
    assert_eq!(cli_ok(a, &["CLUSTER", "KEYSLOT", "{user1000}.following"]), "3443");
    assert_eq!(cli_ok(a, &["CONFIG", "RESETSTAT"]), "OK");
    let time: Vec<u64> = cli_ok(a, &["TIME"]).lines().map(|l| l.parse().unwrap()).collect();
    assert_eq!(time.len(), 2);
    let count: usize = cli_ok(a, &["COMMAND", "COUNT"]).parse().unwrap();
    assert!(count >= 30, "{count}");
    assert!(cli_ok(a, &["COMMAND", "INFO", "get"]).starts_with("get\n2\nreadonly"));

    let info = cli_ok(a, &["INFO"]);
    for needle in [
        "# Server",
        "redis_version:7.2.0",
        "# Clients",
        "connected_clients:1",
        "# Memory",
        "maxmemory:0",
        "maxmemory_policy:noeviction",
        "# Persistence",
        "aof_enabled:1",
        "# Stats",
        "# Replication",
        "role:master",
        "# Cluster",
        "cluster_enabled:0",
        "# Keyspace",
        "db0:keys=2,expires=0,avg_ttl=0",
    ] {
        assert!(info.contains(needle), "INFO lacks {needle:?}:\n{info}");
    }
    let used: u64 = info.lines().find_map(|l| l.strip_prefix("used_memory:")).unwrap().parse().unwrap();
    assert!(used > 0);
    assert_eq!(cli_ok(a, &["INFO", "keyspace"]), "# Keyspace\r\ndb0:keys=2,expires=0,avg_ttl=0");

    // Errors keep the connection open.
    let mut raw = Raw::connect(a);
    assert_eq!(
        raw.cmd(&["NOSUCH", "x", "y"]),
        Reply::Error("ERR unknown command 'NOSUCH', with args beginning with: 'x' 'y' ".into())
    );
    assert_eq!(raw.cmd(&["GET"]), Reply::Error("ERR wrong number of arguments for 'get' command".into()));
    assert_eq!(raw.cmd(&["CONFIG", "NOPE"]), Reply::Error("ERR unknown subcommand 'NOPE'. Try CONFIG HELP.".into()));
    assert_eq!(raw.cmd(&["GET", "greeting"]), Reply::bulk("hi"));
    assert_eq!(raw.cmd(&["QUIT"]), Reply::ok());
    assert!(raw.closed_by_server());
    assert!(kvd.stop().success());
}

/// `redis-cli --pipe`: Redis's mass-insertion mode.
#[test]
fn redis_cli_pipe_mass_insertion() {
    let dir = data_dir();
    let kvd = Kvd::start(dir.path(), &["--cores", "0,1"]);
    const KEYS: usize = 10_000;
    let mut input = Vec::new();
    for i in 0..KEYS {
        input.extend_from_slice(&super::encode(&[
            b"SET",
            format!("mass:{i}").as_bytes(),
            format!("value-{i}").as_bytes(),
        ]));
    }
    let out = redis_cli(kvd.resp_addr, &["--pipe"], &input);
    let text = stdout(&out);
    assert!(out.status.success(), "{text}{}", stderr(&out));
    assert!(text.contains(&format!("errors: 0, replies: {KEYS}")), "{text}");
    assert_eq!(cli_ok(kvd.resp_addr, &["DBSIZE"]), KEYS.to_string());
    for i in [0, 1, 4999, KEYS - 1] {
        assert_eq!(cli_ok(kvd.resp_addr, &["GET", &format!("mass:{i}")]), format!("value-{i}"));
    }
    // And the native protocol sees the same data.
    let got = crate::harness::kvctl(&kvd.endpoint(), &["get", "mass:42"], b"");
    assert_eq!(stdout(&got).trim(), "value-42");
    assert!(kvd.stop().success());
}

#[test]
fn redis_benchmark_runs_without_errors() {
    let dir = data_dir();
    let kvd = Kvd::start(dir.path(), &["--cores", "0,1", "--fsync", "never"]);
    let a = kvd.resp_addr;
    let tests = ["ping", "set", "get", "incr", "mset"];
    let mut cmd = Command::new(redis_tool("redis-benchmark"));
    cmd.args(["-h", &a.ip().to_string(), "-p", &a.port().to_string()]).args([
        "-t",
        &tests.join(","),
        "-n",
        "20000",
        "-P",
        "16",
        "-q",
        "--csv",
    ]);
    let out = run_bounded_for(cmd, b"", Duration::from_secs(300));
    let (text, err) = (stdout(&out), stderr(&out));
    assert!(out.status.success(), "{text}{err}");
    assert!(!text.contains("rror") && !err.contains("rror"), "{text}{err}");
    let rows: Vec<Vec<String>> =
        text.lines().skip(1).map(|l| l.split(',').map(|f| f.trim_matches('"').to_string()).collect()).collect();
    let names: Vec<&str> = rows.iter().map(|r| r[0].as_str()).collect();
    assert_eq!(names.len(), tests.len() + 1, "one row per test (PING twice):\n{text}");
    for row in &rows {
        let rps: f64 = row[1].parse().unwrap_or_else(|_| panic!("rps in {row:?}"));
        assert!(rps > 0.0, "{row:?}");
    }
    assert!(
        names.contains(&"SET") && names.contains(&"GET") && names.iter().any(|n| n.starts_with("MSET")),
        "{names:?}"
    );
    assert_eq!(cli_ok(a, &["GET", "key:__rand_int__"]), "VXK");
    assert!(kvd.stop().success());
}

/// Connections over the limit get Redis's refusal; the limit counts native
/// and RESP connections together.
#[test]
fn connection_limit_is_shared_with_the_native_protocol() {
    let dir = data_dir();
    let kvd = Kvd::start(dir.path(), &["--cores", "0", "--max-connections", "2"]);
    let mut first = Raw::connect(kvd.resp_addr);
    assert_eq!(first.cmd(&["PING"]), Reply::Simple("PONG".into()));
    let _native = kv_net::client::Client::connect(&[kvd.endpoint()], Duration::from_secs(10)).expect("native client");
    let mut third = Raw::connect(kvd.resp_addr);
    assert_eq!(third.read().unwrap(), Reply::Error("ERR max number of clients reached".into()));
    assert!(third.closed_by_server());
    drop(first);
    // A freed slot is taken again (the close is seen asynchronously).
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let mut again = Raw::connect(kvd.resp_addr);
        // A refused connection may be closed before the PING gets there.
        let _ = std::io::Write::write_all(&mut again.writer, &super::encode(&[b"PING"]));
        match again.read() {
            Ok(Reply::Simple(s)) if s == "PONG" => break,
            other => assert!(std::time::Instant::now() < deadline, "still refused: {other:?}"),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(kvd.stop().success());
}
