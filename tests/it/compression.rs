//! Compression of large values, invisible to every protocol: a value over
//! `--compress-min-bytes` is held as a zstd frame (the metrics say how
//! much it saves), yet GET, STRLEN, GETRANGE, APPEND, versions and TTLs
//! behave as before over RESP, the native protocol and HTTP, and after a
//! restart from the WAL and from a snapshot.

use std::time::Duration;

use kv_engine::Condition;
use kv_net::client::Client;

use crate::harness::{data_dir, Kvd};
use crate::http_client;
use crate::resp::cli_ok;

fn text(n: usize) -> String {
    (0..n).map(|i| ["alpha ", "beta ", "gamma ", "delta "][i % 4]).collect::<String>()[..n].to_string()
}

/// The sum of a metric's series, once it is non-zero (gauges are
/// refreshed every second; bounded wait).
fn metric(kvd: &Kvd, name: &str) -> u64 {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let body = http_client::get(kvd.http_addr, "/metrics").body;
        let sum = String::from_utf8(body)
            .unwrap()
            .lines()
            .filter(|l| l.starts_with(name) && !l.starts_with('#'))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
            .sum();
        if sum > 0 || std::time::Instant::now() > deadline {
            return sum;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn check_value(kvd: &Kvd, key: &str, want: &str) {
    let a = kvd.resp_addr;
    assert_eq!(cli_ok(a, &["GET", key]), want);
    assert_eq!(cli_ok(a, &["STRLEN", key]), want.len().to_string());
    assert_eq!(cli_ok(a, &["GETRANGE", key, "6", "15"]), want[6..16]);
    let mut native = Client::connect(&[kvd.endpoint()], Duration::from_secs(10)).unwrap();
    assert_eq!(native.get(key.as_bytes()).unwrap().unwrap().0, want.as_bytes());
    let http = http_client::get(kvd.http_addr, &format!("/v1/kv/{key}"));
    assert_eq!((http.status, http.body.as_slice()), (200, want.as_bytes()));
}

#[test]
fn compressed_values_behave_as_before_over_every_protocol_and_restart() {
    let dir = data_dir();
    // Small segments and snapshots: the restart reads both.
    let flags = ["--cores", "0", "--snapshot-wal-bytes", "65536", "--wal-segment-bytes", "65536"];
    let kvd = Kvd::start(dir.path(), &flags);
    let big = text(20_000);
    let a = kvd.resp_addr;
    assert_eq!(cli_ok(a, &["SET", "big", &big, "EX", "3600"]), "OK");
    check_value(&kvd, "big", &big);
    let (plain, stored) =
        (metric(&kvd, "kvd_compressed_values_plain_bytes"), metric(&kvd, "kvd_compressed_values_stored_bytes"));
    assert!(plain >= 20_000 && stored > 0 && stored < plain / 4, "plain {plain}, stored {stored}");
    let ttl: u64 = cli_ok(a, &["TTL", "big"]).parse().unwrap();
    assert!((3000..=3600).contains(&ttl), "TTL kept: {ttl}");
    // Below the threshold: stored as it is.
    assert_eq!(cli_ok(a, &["SET", "small", "hello"]), "OK");
    // A conditional write on the compressed value's version.
    let mut native = Client::connect(&[kvd.endpoint()], Duration::from_secs(10)).unwrap();
    let version = native.get(b"big").unwrap().unwrap().1;
    let other = text(30_000);
    native.put(b"big2", other.as_bytes(), Condition::Always).unwrap();
    let cas = native.put(b"big", other.as_bytes(), Condition::IfVersion(version)).unwrap();
    assert!(cas > version);
    check_value(&kvd, "big", &other);
    // APPEND reads the frame and stores the result plain.
    assert_eq!(cli_ok(a, &["APPEND", "big2", "!"]), "30001");
    check_value(&kvd, "big2", &format!("{other}!"));
    // Enough writes for a snapshot, then a restart from snapshot and WAL.
    for i in 0..40 {
        assert_eq!(cli_ok(a, &["SET", &format!("filler-{i}"), &text(4000 + i)]), "OK");
    }
    drop(native);
    assert!(kvd.stop().success());
    let kvd = Kvd::start(dir.path(), &flags);
    check_value(&kvd, "big", &other);
    check_value(&kvd, "big2", &format!("{other}!"));
    check_value(&kvd, "filler-7", &text(4007));
    assert_eq!(cli_ok(kvd.resp_addr, &["GET", "small"]), "hello");
    assert!(
        metric(&kvd, "kvd_compressed_values_plain_bytes") > 40 * 4000,
        "compressed values are back after the restart"
    );
}
